//! Plaintext layers: forward and backward passes on batched `f64` tensors.
//!
//! Every layer offers the same four operations (also reachable through the [`Layer`] enum):
//!
//! * `output_shape(input_shape)`: shape inference with a clear [`Error::Shape`] on mismatch,
//! * `forward(x)`: `x` is `[batch, ...]`, the result keeps the batch axis,
//! * `backward(x, grad_out)`: given the layer's forward **input** `x` and the gradient of a
//!   scalar loss with respect to the layer's output, returns the gradient with respect to `x`
//!   and the gradients with respect to the layer's parameters, in the order of
//!   [`Layer::params`] (`weight`, then `bias`),
//! * `params()` / `params_mut()`: views of the trainable parameters.
//!
//! The loops are written directly over contiguous slices (no im2col). They are single-threaded
//! on purpose: parallelism happens one level up, over chunks of the batch (see
//! [`Sequential::forward_par`](super::Sequential::forward_par) and [`train`](super::train)).

use ndarray::{
    Array1, Array2, Array4, ArrayView2, ArrayView4, ArrayViewD, ArrayViewMutD, Ix2, Ix4,
};
use rand::Rng;

use super::activation::PolyActivation;
use super::Tensor;
use crate::{Error, Result};

/// Views `x` as a 4-D `NCHW` tensor or explains what was expected.
fn view4<'a>(x: &'a Tensor, layer: &str) -> Result<ArrayView4<'a, f64>> {
    x.view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| Error::InputShape {
            op: layer.into(),
            expected: "a 4-D input [batch, channels, height, width]".into(),
            got: x.shape().to_vec(),
        })
}

/// Views `x` as a 2-D `[batch, features]` tensor or explains what was expected.
fn view2<'a>(x: &'a Tensor, layer: &str) -> Result<ArrayView2<'a, f64>> {
    x.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::InputShape {
            op: layer.into(),
            expected: "a 2-D input [batch, features] (put a Flatten layer in front of it)".into(),
            got: x.shape().to_vec(),
        })
}

/// Checks that `grad_out` has the shape the forward pass produces for `x`.
fn check_grad_shape(layer: &str, expected: &[usize], grad_out: &Tensor) -> Result<()> {
    if grad_out.shape() != expected {
        return Err(Error::Shape(format!(
            "{layer} backward: output gradient has shape {:?} but the forward output has shape \
             {expected:?}",
            grad_out.shape()
        )));
    }
    Ok(())
}

/// Fills `a` with independent draws from `U(-bound, bound)`, in logical (row-major) order.
fn fill_uniform<'a, R: Rng + ?Sized>(
    a: impl IntoIterator<Item = &'a mut f64>,
    rng: &mut R,
    bound: f64,
) {
    for v in a {
        *v = (2.0 * rng.random::<f64>() - 1.0) * bound;
    }
}

// ---------------------------------------------------------------------------------------------
// Conv2d
// ---------------------------------------------------------------------------------------------

/// 2-D convolution (cross-correlation, as in PyTorch) over `NCHW` inputs, with a square
/// kernel, equal stride and zero padding on both axes.
///
/// `out[n, o, y, x] = bias[o] + Σ_{c, ky, kx} weight[o, c, ky, kx] ·
/// in[n, c, y·stride + ky − padding, x·stride + kx − padding]` (out-of-range input reads as 0).
/// Output size per axis: `(size + 2·padding − kernel) / stride + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Kernel size (the kernel is `kernel × kernel`).
    pub kernel: usize,
    /// Stride on both axes (≥ 1).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// `[out_ch, in_ch, kernel, kernel]`.
    pub weight: Array4<f64>,
    /// `[out_ch]`.
    pub bias: Array1<f64>,
}

impl Conv2d {
    /// A convolution with all-zero parameters; see [`Conv2d::init_uniform`].
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let c = Self {
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
            weight: Array4::zeros((out_ch, in_ch, kernel, kernel)),
            bias: Array1::zeros(out_ch),
        };
        c.validate()?;
        Ok(c)
    }

    /// A convolution with the given parameters; the sizes are read off `weight`
    /// (`[out, in, k, k]`).
    pub fn from_weights(
        weight: Array4<f64>,
        bias: Array1<f64>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (out_ch, in_ch, kernel, _) = weight.dim();
        let c = Self {
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
            weight,
            bias,
        };
        c.validate()?;
        Ok(c)
    }

    /// Output height and width for an `h × w` input (an error if the kernel does not fit).
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if h + 2 * self.padding < self.kernel
            || w + 2 * self.padding < self.kernel
            || self.stride == 0
        {
            return Err(Error::Shape(format!(
                "conv kernel {} (stride {}) does not fit the padded input {h}x{w}",
                self.kernel, self.stride
            )));
        }
        Ok((
            (h + 2 * self.padding - self.kernel) / self.stride + 1,
            (w + 2 * self.padding - self.kernel) / self.stride + 1,
        ))
    }

    /// The receptive field of output position `(y, x)` on an `h × w` input: every tap
    /// `(channel, ky, kx, flat input index)` that falls inside the image (zero padding drops
    /// the rest). Shared by every output channel, which is what lets encrypted evaluation read
    /// each input once for all of them.
    pub fn taps_at(
        &self,
        h: usize,
        w: usize,
        y: usize,
        x: usize,
    ) -> Vec<(usize, usize, usize, usize)> {
        let mut taps = Vec::with_capacity(self.in_ch * self.kernel * self.kernel);
        for ci in 0..self.in_ch {
            for ky in 0..self.kernel {
                for kx in 0..self.kernel {
                    let iy = (y * self.stride + ky) as isize - self.padding as isize;
                    let ix = (x * self.stride + kx) as isize - self.padding as isize;
                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                        taps.push((ci, ky, kx, ci * h * w + iy as usize * w + ix as usize));
                    }
                }
            }
        }
        taps
    }

    /// Number of inputs feeding one output: `in_ch · kernel²`.
    pub fn fan_in(&self) -> usize {
        self.in_ch * self.kernel * self.kernel
    }

    /// Draws weights and biases from `U(-bound, bound)`. PyTorch's default is
    /// `bound = 1 / sqrt(fan_in)`.
    pub fn init_uniform<R: Rng + ?Sized>(&mut self, rng: &mut R, bound: f64) {
        fill_uniform(self.weight.iter_mut(), rng, bound);
        fill_uniform(self.bias.iter_mut(), rng, bound);
    }

    /// Checks that the hyper-parameters are usable and the parameter shapes agree with them.
    pub fn validate(&self) -> Result<()> {
        if self.in_ch == 0 || self.out_ch == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(Error::Shape(format!(
                "Conv2d needs in_ch, out_ch, kernel and stride >= 1, got in_ch={} out_ch={} \
                 kernel={} stride={}",
                self.in_ch, self.out_ch, self.kernel, self.stride
            )));
        }
        let want = [self.out_ch, self.in_ch, self.kernel, self.kernel];
        if self.weight.shape() != want {
            return Err(Error::Shape(format!(
                "Conv2d weight has shape {:?}, expected [out_ch, in_ch, kernel, kernel] = {want:?}",
                self.weight.shape()
            )));
        }
        if self.bias.len() != self.out_ch {
            return Err(Error::Shape(format!(
                "Conv2d bias has {} entries, expected out_ch = {}",
                self.bias.len(),
                self.out_ch
            )));
        }
        Ok(())
    }

    /// Output shape for an `NCHW` input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.validate()?;
        let &[n, c, h, w] = input else {
            return Err(Error::InputShape {
                op: "Conv2d".into(),
                expected: "a 4-D input [batch, channels, height, width]".into(),
                got: input.to_vec(),
            });
        };
        if c != self.in_ch {
            return Err(Error::InputShape {
                op: "Conv2d".into(),
                expected: format!(
                    "[batch, {}, height, width] ({} input channels)",
                    self.in_ch, self.in_ch
                ),
                got: input.to_vec(),
            });
        }
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        if hp < self.kernel || wp < self.kernel {
            return Err(Error::Shape(format!(
                "Conv2d kernel {k}x{k} does not fit the {h}x{w} input (padding {p})",
                k = self.kernel,
                p = self.padding
            )));
        }
        Ok(vec![
            n,
            self.out_ch,
            (hp - self.kernel) / self.stride + 1,
            (wp - self.kernel) / self.stride + 1,
        ])
    }

    /// Output positions `o` (along one axis) whose input coordinate `o·stride + k − padding`
    /// falls inside `0..size`, as a half-open range.
    fn valid_range(&self, k: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        // o·s + k >= p
        let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
        // o·s + k − p <= size − 1
        if size + p < k + 1 {
            return (0, 0);
        }
        let hi = ((size - 1 + p - k) / s + 1).min(out);
        (lo.min(hi), hi)
    }

    /// Forward pass on `[batch, in_ch, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out_shape = self.output_shape(x.shape())?;
        let x = view4(x, "Conv2d")?;
        let x = x.as_standard_layout();
        let xs = x.as_slice().unwrap_or(&[]);
        let (n, c, h, w) = x.dim();
        let (o, oh, ow) = (self.out_ch, out_shape[2], out_shape[3]);
        let k = self.kernel;
        let wt = self.weight.as_standard_layout();
        let wt = wt.as_slice().unwrap_or(&[]);
        let mut out = vec![0.0; n * o * oh * ow];
        for ni in 0..n {
            for oi in 0..o {
                let out_plane = &mut out[(ni * o + oi) * oh * ow..][..oh * ow];
                out_plane.fill(self.bias[oi]);
                for ci in 0..c {
                    let in_plane = &xs[(ni * c + ci) * h * w..][..h * w];
                    for ky in 0..k {
                        let (y0, y1) = self.valid_range(ky, h, oh);
                        for kx in 0..k {
                            let wv = wt[((oi * c + ci) * k + ky) * k + kx];
                            let (x0, x1) = self.valid_range(kx, w, ow);
                            for oy in y0..y1 {
                                let iy = oy * self.stride + ky - self.padding;
                                let in_row = &in_plane[iy * w..][..w];
                                let out_row = &mut out_plane[oy * ow..][..ow];
                                if x0 >= x1 {
                                    continue;
                                }
                                if self.stride == 1 {
                                    // ix = ox + kx − p; x0 + kx >= p by construction.
                                    let start = x0 + kx - self.padding;
                                    let src = &in_row[start..start + (x1 - x0)];
                                    for (a, &b) in out_row[x0..x1].iter_mut().zip(src) {
                                        *a += wv * b;
                                    }
                                } else {
                                    for (ox, a) in out_row.iter_mut().enumerate().take(x1).skip(x0)
                                    {
                                        *a += wv * in_row[ox * self.stride + kx - self.padding];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_shape_vec(out_shape, out).map_err(|e| Error::Shape(e.to_string()))
    }

    /// Backward pass: returns `(∂L/∂x, [∂L/∂weight, ∂L/∂bias])`.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let out_shape = self.output_shape(x.shape())?;
        check_grad_shape("Conv2d", &out_shape, grad_out)?;
        let x = view4(x, "Conv2d")?;
        let x = x.as_standard_layout();
        let xs = x.as_slice().unwrap_or(&[]);
        let g = grad_out.as_standard_layout();
        let gs = g.as_slice().unwrap_or(&[]);
        let (n, c, h, w) = x.dim();
        let (o, oh, ow) = (self.out_ch, out_shape[2], out_shape[3]);
        let k = self.kernel;
        let wt = self.weight.as_standard_layout();
        let wt = wt.as_slice().unwrap_or(&[]);
        let mut gx = vec![0.0; n * c * h * w];
        let mut gw = vec![0.0; o * c * k * k];
        let mut gb = vec![0.0; o];
        for ni in 0..n {
            for oi in 0..o {
                let g_plane = &gs[(ni * o + oi) * oh * ow..][..oh * ow];
                gb[oi] += g_plane.iter().sum::<f64>();
                for ci in 0..c {
                    let in_plane = &xs[(ni * c + ci) * h * w..][..h * w];
                    let gin_plane = &mut gx[(ni * c + ci) * h * w..][..h * w];
                    for ky in 0..k {
                        let (y0, y1) = self.valid_range(ky, h, oh);
                        for kx in 0..k {
                            let widx = ((oi * c + ci) * k + ky) * k + kx;
                            let wv = wt[widx];
                            let (x0, x1) = self.valid_range(kx, w, ow);
                            if x0 >= x1 {
                                continue;
                            }
                            let mut acc = 0.0;
                            for oy in y0..y1 {
                                let iy = oy * self.stride + ky - self.padding;
                                let g_row = &g_plane[oy * ow + x0..oy * ow + x1];
                                let base = iy * w;
                                if self.stride == 1 {
                                    // ix = ox + kx − p; x0 + kx >= p by construction.
                                    let start = base + x0 + kx - self.padding;
                                    let in_row = &in_plane[start..start + g_row.len()];
                                    acc +=
                                        g_row.iter().zip(in_row).map(|(g, v)| g * v).sum::<f64>();
                                    let gin_row = &mut gin_plane[start..start + g_row.len()];
                                    for (gi, &gv) in gin_row.iter_mut().zip(g_row) {
                                        *gi += wv * gv;
                                    }
                                } else {
                                    for (j, &gv) in g_row.iter().enumerate() {
                                        let ix = base + (x0 + j) * self.stride + kx - self.padding;
                                        acc += gv * in_plane[ix];
                                        gin_plane[ix] += wv * gv;
                                    }
                                }
                            }
                            gw[widx] += acc;
                        }
                    }
                }
            }
        }
        let gx = Tensor::from_shape_vec(vec![n, c, h, w], gx)
            .map_err(|e| Error::Shape(e.to_string()))?;
        let gw = Tensor::from_shape_vec(vec![o, c, k, k], gw)
            .map_err(|e| Error::Shape(e.to_string()))?;
        Ok((gx, vec![gw, Array1::from(gb).into_dyn()]))
    }
}

// ---------------------------------------------------------------------------------------------
// AvgPool2d
// ---------------------------------------------------------------------------------------------

/// Average pooling over non-overlapping `kernel × kernel` windows (stride = kernel, no
/// padding), as PyTorch's `nn.AvgPool2d(kernel)`: an input of `h × w` gives
/// `⌊h/kernel⌋ × ⌊w/kernel⌋`; trailing rows/columns that do not fill a window are dropped.
///
/// For encrypted inference the pool is additions only; its `1/kernel²` factor can be folded
/// into the next linear layer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window size and stride (≥ 1).
    pub kernel: usize,
}

impl AvgPool2d {
    /// Average pooling with windows of `kernel × kernel`.
    pub fn new(kernel: usize) -> Result<Self> {
        if kernel == 0 {
            return Err(Error::Shape("AvgPool2d needs kernel >= 1".into()));
        }
        Ok(Self { kernel })
    }

    /// Output shape for an `NCHW` input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let &[n, c, h, w] = input else {
            return Err(Error::InputShape {
                op: "AvgPool2d".into(),
                expected: "a 4-D input [batch, channels, height, width]".into(),
                got: input.to_vec(),
            });
        };
        if self.kernel == 0 {
            return Err(Error::Shape("AvgPool2d needs kernel >= 1".into()));
        }
        if h < self.kernel || w < self.kernel {
            return Err(Error::Shape(format!(
                "AvgPool2d window {k}x{k} does not fit the {h}x{w} input",
                k = self.kernel
            )));
        }
        Ok(vec![n, c, h / self.kernel, w / self.kernel])
    }

    /// Forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out_shape = self.output_shape(x.shape())?;
        let x = view4(x, "AvgPool2d")?;
        let k = self.kernel;
        let (oh, ow) = (out_shape[2], out_shape[3]);
        let inv = 1.0 / (k * k) as f64;
        let mut out = Array4::<f64>::zeros((out_shape[0], out_shape[1], oh, ow));
        for ((ni, ci, oy, ox), o) in out.indexed_iter_mut() {
            let mut s = 0.0;
            for dy in 0..k {
                for dx in 0..k {
                    s += x[[ni, ci, oy * k + dy, ox * k + dx]];
                }
            }
            *o = s * inv;
        }
        Ok(out.into_dyn())
    }

    /// Backward pass: returns `(∂L/∂x, [])` (no parameters).
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let out_shape = self.output_shape(x.shape())?;
        check_grad_shape("AvgPool2d", &out_shape, grad_out)?;
        let g = view4(grad_out, "AvgPool2d")?;
        let k = self.kernel;
        let inv = 1.0 / (k * k) as f64;
        let mut gx = Array4::<f64>::zeros(view4(x, "AvgPool2d")?.dim());
        for ((ni, ci, oy, ox), &gv) in g.indexed_iter() {
            for dy in 0..k {
                for dx in 0..k {
                    gx[[ni, ci, oy * k + dy, ox * k + dx]] = gv * inv;
                }
            }
        }
        Ok((gx.into_dyn(), Vec::new()))
    }
}

// ---------------------------------------------------------------------------------------------
// Flatten
// ---------------------------------------------------------------------------------------------

/// Flattens every axis after the batch axis, row-major (for `NCHW`: feature index
/// `(c·H + y)·W + x`, as `torch.flatten(x, 1)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten;

impl Flatten {
    /// Output shape `[batch, product of the other axes]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::Shape(
                "Flatten needs an input with a batch axis, got a scalar".into(),
            ));
        }
        Ok(vec![input[0], input[1..].iter().product()])
    }

    /// Forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = self.output_shape(x.shape())?;
        let data: Vec<f64> = x.iter().copied().collect(); // logical (row-major) order
        Tensor::from_shape_vec(shape, data).map_err(|e| Error::Shape(e.to_string()))
    }

    /// Backward pass: reshapes the gradient back to the input's shape.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        check_grad_shape("Flatten", &self.output_shape(x.shape())?, grad_out)?;
        let data: Vec<f64> = grad_out.iter().copied().collect();
        let gx =
            Tensor::from_shape_vec(x.shape(), data).map_err(|e| Error::Shape(e.to_string()))?;
        Ok((gx, Vec::new()))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------------

/// Fully connected layer on `[batch, in]`: `y = x · weightᵀ + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]` (PyTorch layout).
    pub weight: Array2<f64>,
    /// `[out]`.
    pub bias: Array1<f64>,
}

impl Linear {
    /// A layer with all-zero parameters; see [`Linear::init_uniform`].
    pub fn new(in_features: usize, out_features: usize) -> Result<Self> {
        let l = Self {
            weight: Array2::zeros((out_features, in_features)),
            bias: Array1::zeros(out_features),
        };
        l.validate()?;
        Ok(l)
    }

    /// A layer with the given parameters (`weight` is `[out, in]`).
    pub fn from_weights(weight: Array2<f64>, bias: Array1<f64>) -> Result<Self> {
        let l = Self { weight, bias };
        l.validate()?;
        Ok(l)
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.nrows()
    }

    /// Draws weights and biases from `U(-bound, bound)`; PyTorch's default is
    /// `bound = 1 / sqrt(in_features)`.
    pub fn init_uniform<R: Rng + ?Sized>(&mut self, rng: &mut R, bound: f64) {
        fill_uniform(self.weight.iter_mut(), rng, bound);
        fill_uniform(self.bias.iter_mut(), rng, bound);
    }

    /// Checks that the shapes agree and are non-empty.
    pub fn validate(&self) -> Result<()> {
        let (o, i) = self.weight.dim();
        if o == 0 || i == 0 {
            return Err(Error::Shape(format!(
                "Linear needs at least one input and one output feature, weight shape is [{o}, {i}]"
            )));
        }
        if self.bias.len() != o {
            return Err(Error::Shape(format!(
                "Linear bias has {} entries but weight [{o}, {i}] has {o} outputs",
                self.bias.len()
            )));
        }
        Ok(())
    }

    /// Output shape for a `[batch, in]` input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.validate()?;
        let &[n, f] = input else {
            return Err(Error::InputShape {
                op: "Linear".into(),
                expected: "a 2-D input [batch, features] (put a Flatten layer in front of it)"
                    .into(),
                got: input.to_vec(),
            });
        };
        if f != self.in_features() {
            return Err(Error::InputShape {
                op: "Linear".into(),
                expected: format!("[batch, {}]", self.in_features()),
                got: input.to_vec(),
            });
        }
        Ok(vec![n, self.out_features()])
    }

    /// Forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let x = view2(x, "Linear")?;
        Ok((x.dot(&self.weight.t()) + &self.bias).into_dyn())
    }

    /// Backward pass: returns `(∂L/∂x, [∂L/∂weight, ∂L/∂bias])`.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        check_grad_shape("Linear", &self.output_shape(x.shape())?, grad_out)?;
        let x = view2(x, "Linear")?;
        let g = view2(grad_out, "Linear")?;
        let gx = g.dot(&self.weight);
        let gw = g.t().dot(&x);
        let gb = g.sum_axis(ndarray::Axis(0));
        Ok((gx.into_dyn(), vec![gw.into_dyn(), gb.into_dyn()]))
    }
}

// ---------------------------------------------------------------------------------------------
// Square
// ---------------------------------------------------------------------------------------------

/// Element-wise square `x ↦ x²`: the cheapest non-linearity under homomorphic encryption
/// (one multiplication, one level).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Square;

impl Square {
    /// Forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.mapv(|v| v * v))
    }

    /// Backward pass: `∂L/∂x = 2x · ∂L/∂y`.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        check_grad_shape("Square", x.shape(), grad_out)?;
        let mut gx = grad_out.to_owned();
        gx.zip_mut_with(x, |g, &v| *g *= 2.0 * v);
        Ok((gx, Vec::new()))
    }
}

// ---------------------------------------------------------------------------------------------
// Layer
// ---------------------------------------------------------------------------------------------

/// Any layer a [`Sequential`](super::Sequential) can hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// See [`Conv2d`].
    Conv2d(Conv2d),
    /// See [`AvgPool2d`].
    AvgPool2d(AvgPool2d),
    /// See [`Flatten`].
    Flatten(Flatten),
    /// See [`Linear`].
    Linear(Linear),
    /// See [`Square`].
    Square(Square),
    /// See [`PolyActivation`]. Its coefficients are fixed, not trained.
    Poly(PolyActivation),
}

impl Layer {
    /// The layer's type name, e.g. `"Conv2d"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d(_) => "Conv2d",
            Layer::AvgPool2d(_) => "AvgPool2d",
            Layer::Flatten(_) => "Flatten",
            Layer::Linear(_) => "Linear",
            Layer::Square(_) => "Square",
            Layer::Poly(_) => "PolyActivation",
        }
    }

    /// Output shape for an input shape (batch axis included).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match self {
            Layer::Conv2d(l) => l.output_shape(input),
            Layer::AvgPool2d(l) => l.output_shape(input),
            Layer::Flatten(l) => l.output_shape(input),
            Layer::Linear(l) => l.output_shape(input),
            Layer::Square(_) => Ok(input.to_vec()),
            Layer::Poly(l) => {
                l.validate()?;
                Ok(input.to_vec())
            }
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv2d(l) => l.forward(x),
            Layer::AvgPool2d(l) => l.forward(x),
            Layer::Flatten(l) => l.forward(x),
            Layer::Linear(l) => l.forward(x),
            Layer::Square(l) => l.forward(x),
            Layer::Poly(l) => l.forward(x),
        }
    }

    /// Backward pass: `(∂L/∂x, parameter gradients in the order of [`Layer::params`])`.
    /// `x` is the input the forward pass saw.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        match self {
            Layer::Conv2d(l) => l.backward(x, grad_out),
            Layer::AvgPool2d(l) => l.backward(x, grad_out),
            Layer::Flatten(l) => l.backward(x, grad_out),
            Layer::Linear(l) => l.backward(x, grad_out),
            Layer::Square(l) => l.backward(x, grad_out),
            Layer::Poly(l) => l.backward(x, grad_out),
        }
    }

    /// Names of the trainable parameters, in the order of [`Layer::params`]:
    /// `["weight", "bias"]` for `Conv2d` and `Linear`, none for the others.
    pub fn param_names(&self) -> &'static [&'static str] {
        match self {
            Layer::Conv2d(_) | Layer::Linear(_) => &["weight", "bias"],
            _ => &[],
        }
    }

    /// Views of the trainable parameters.
    pub fn params(&self) -> Vec<ArrayViewD<'_, f64>> {
        match self {
            Layer::Conv2d(l) => vec![l.weight.view().into_dyn(), l.bias.view().into_dyn()],
            Layer::Linear(l) => vec![l.weight.view().into_dyn(), l.bias.view().into_dyn()],
            _ => Vec::new(),
        }
    }

    /// Mutable views of the trainable parameters (same order as [`Layer::params`]).
    pub fn params_mut(&mut self) -> Vec<ArrayViewMutD<'_, f64>> {
        match self {
            Layer::Conv2d(l) => vec![l.weight.view_mut().into_dyn(), l.bias.view_mut().into_dyn()],
            Layer::Linear(l) => vec![l.weight.view_mut().into_dyn(), l.bias.view_mut().into_dyn()],
            _ => Vec::new(),
        }
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.len()).sum()
    }
}

impl From<Conv2d> for Layer {
    fn from(l: Conv2d) -> Self {
        Layer::Conv2d(l)
    }
}
impl From<AvgPool2d> for Layer {
    fn from(l: AvgPool2d) -> Self {
        Layer::AvgPool2d(l)
    }
}
impl From<Flatten> for Layer {
    fn from(l: Flatten) -> Self {
        Layer::Flatten(l)
    }
}
impl From<Linear> for Layer {
    fn from(l: Linear) -> Self {
        Layer::Linear(l)
    }
}
impl From<Square> for Layer {
    fn from(l: Square) -> Self {
        Layer::Square(l)
    }
}
impl From<PolyActivation> for Layer {
    fn from(l: PolyActivation) -> Self {
        Layer::Poly(l)
    }
}
