//! The plaintext `f64` interpreter: direct loops, no tricks, since it is the oracle (samples
//! run in parallel; each output sums its taps in the same order whatever the thread).

use ndarray::{Axis, Ix2, IxDyn};
use rayon::prelude::*;

use super::{Conv, Graph, Op, Pool};
use crate::nn::Tensor;
use crate::{Error, Result};

impl Graph {
    /// [`Self::run`] on `chunk` samples at a time, the outputs concatenated: the same values,
    /// with intermediates the size of one chunk instead of the whole batch (every op acts on
    /// each sample alone).
    pub fn run_chunked(&self, inputs: &[Tensor], chunk: usize) -> Result<Vec<Tensor>> {
        let batch = inputs
            .first()
            .map_or(0, |t| t.shape().first().copied().unwrap_or(0));
        if batch <= chunk || inputs.iter().any(|t| t.shape().first() != Some(&batch)) {
            return self.run(inputs);
        }
        let mut parts: Vec<Vec<Tensor>> = Vec::new();
        for start in (0..batch).step_by(chunk.max(1)) {
            let end = (start + chunk.max(1)).min(batch);
            let slice: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.slice_axis(Axis(0), (start..end).into()).to_owned())
                .collect();
            parts.push(self.run(&slice)?);
        }
        (0..self.outputs.len())
            .map(|o| {
                let views: Vec<_> = parts.iter().map(|p| p[o].view()).collect();
                ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
            })
            .collect()
    }

    /// Runs the graph on one tensor per input (`[batch, ...shape]`, one batch for all) and
    /// returns one tensor per output.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Shape(format!(
                "the graph takes {} inputs, got {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let batch = inputs
            .first()
            .map_or(1, |t| t.shape().first().copied().unwrap_or(0));
        let mut vals: Vec<Option<Tensor>> = vec![None; self.shapes.len()];
        for (id, t) in self.inputs.iter().zip(inputs) {
            let want: Vec<usize> = std::iter::once(batch)
                .chain(self.shape(*id).iter().copied())
                .collect();
            if t.shape() != want.as_slice() {
                return Err(Error::InputShape {
                    op: format!("the graph's input {:?}", self.name(*id)),
                    expected: format!("{want:?} (batch first)"),
                    got: t.shape().to_vec(),
                });
            }
            vals[id.0] = Some(t.clone());
        }
        // Free each value after its last reader.
        let mut last_use = vec![usize::MAX; self.shapes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use[v.0] = i;
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let args: Vec<&Tensor> = n
                .inputs
                .iter()
                .map(|v| vals[v.0].as_ref().expect("topological order"))
                .collect();
            let y = eval_op(&n.op, &args)?;
            debug_assert_eq!(&y.shape()[1..], self.shape(n.output), "node {}", n.name);
            vals[n.output.0] = Some(y);
            for v in &n.inputs {
                if last_use[v.0] == i && !self.outputs.contains(v) {
                    vals[v.0] = None;
                }
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|v| vals[v.0].clone().expect("computed"))
            .collect())
    }
}

fn eval_op(op: &Op, x: &[&Tensor]) -> Result<Tensor> {
    let a = x[0];
    let batch = a.shape()[0];
    Ok(match op {
        Op::Conv2d(cv) => conv(cv, a),
        Op::AvgPool(p) => avg_pool(p, a),
        Op::GlobalAvgPool => {
            let hw = (a.shape()[2] * a.shape()[3]) as f64;
            let s = a.sum_axis(Axis(3)).sum_axis(Axis(2)) / hw;
            let c = s.shape()[1];
            s.into_shape_with_order(IxDyn(&[batch, c, 1, 1]))
                .map_err(|e| Error::Shape(e.to_string()))?
        }
        Op::Linear { weight, bias } => {
            let x2 = a
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| Error::Shape(e.to_string()))?;
            (x2.dot(&weight.t()) + bias).into_dyn()
        }
        Op::Add => a + x[1],
        Op::Sub => a - x[1],
        Op::Mul => a * x[1],
        Op::AddConst(c) => a + c,
        Op::MulConst(c) => a * c,
        Op::ChannelAffine { scale, shift } => {
            let mut y = a.clone();
            for (ch, mut plane) in y.axis_iter_mut(Axis(1)).enumerate() {
                plane.mapv_inplace(|v| scale[ch] * v + shift[ch]);
            }
            y
        }
        Op::Reshape(s) => {
            let shape: Vec<usize> = std::iter::once(batch).chain(s.iter().copied()).collect();
            a.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| Error::Shape(e.to_string()))?
        }
        Op::Transpose(perm) => {
            let axes: Vec<usize> = std::iter::once(0)
                .chain(perm.iter().map(|p| p + 1))
                .collect();
            a.clone()
                .permuted_axes(IxDyn(&axes))
                .as_standard_layout()
                .into_owned()
        }
        Op::Poly(c) => a.mapv(|v| c.iter().rev().fold(0.0, |acc, &ci| acc * v + ci)),
        Op::Concat(axis) => {
            let views: Vec<_> = x.iter().map(|t| t.view()).collect();
            ndarray::concatenate(Axis(axis + 1), &views).map_err(|e| Error::Shape(e.to_string()))?
        }
    })
}

/// Input index of output position `o` under kernel tap `k`, or `None` in the padding.
fn tap(o: usize, k: usize, stride: usize, pad: usize, n: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < n)
}

/// The taps of output `(oc, oy, ox)` of `cv` on a `[C, h, w]` input: (flat input index,
/// weight), padding skipped. Shared with the encrypted lowering, which this interpreter is
/// checked against (and which onnxruntime checks, tests/onnx.rs).
pub(crate) fn conv_taps(
    cv: &Conv,
    h: usize,
    w: usize,
    oc: usize,
    oy: usize,
    ox: usize,
) -> Vec<(usize, f64)> {
    let (o, cg, kh, kw) = cv.weight.dim();
    let g = oc / (o / cv.groups);
    let mut taps = Vec::with_capacity(cg * kh * kw);
    for ci in 0..cg {
        let ic = g * cg + ci;
        for ky in 0..kh {
            let Some(iy) = tap(oy, ky, cv.stride[0], cv.pads[0], h) else {
                continue;
            };
            for kx in 0..kw {
                if let Some(ix) = tap(ox, kx, cv.stride[1], cv.pads[1], w) {
                    taps.push((ic * h * w + iy * w + ix, cv.weight[[oc, ci, ky, kx]]));
                }
            }
        }
    }
    taps
}

/// The flat input indices of the pooling window at `(ch, oy, ox)` on a `[C, h, w]` input, and
/// its divisor.
pub(crate) fn pool_window(
    p: &Pool,
    h: usize,
    w: usize,
    ch: usize,
    oy: usize,
    ox: usize,
) -> (Vec<usize>, f64) {
    let [kh, kw] = p.kernel;
    let mut idx = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            let iy = tap(oy, ky, p.stride[0], p.pads[0], h);
            let ix = tap(ox, kx, p.stride[1], p.pads[1], w);
            if let (Some(iy), Some(ix)) = (iy, ix) {
                idx.push(ch * h * w + iy * w + ix);
            }
        }
    }
    let div = if p.count_include_pad {
        kh * kw
    } else {
        idx.len().max(1)
    };
    (idx, div as f64)
}

/// Each sample's `[C, H, W]` values, row-major, and the output `[batch, C', oh, ow]` filled by
/// `f(channel, oy, ox)`, a function of one sample's values. The functions are built once and
/// run sample by sample (a sample's values stay in cache), samples in parallel.
fn per_output(x: &Tensor, out: [usize; 3], f: impl Fn(usize, usize, usize) -> OutputFn) -> Tensor {
    let b = x.shape()[0];
    let [c, oh, ow] = out;
    let per_sample = c * oh * ow;
    let fs: Vec<OutputFn> = (0..c)
        .flat_map(|ch| (0..oh).flat_map(move |oy| (0..ow).map(move |ox| (ch, oy, ox))))
        .map(|(ch, oy, ox)| f(ch, oy, ox))
        .collect();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("a standard-layout array is contiguous");
    let per = xs.len() / b.max(1);
    let mut y = vec![0.0; b * per_sample];
    if per > 0 && per_sample > 0 {
        y.par_chunks_mut(per_sample)
            .zip(xs.par_chunks(per))
            .for_each(|(ys, sample)| {
                for (v, g) in ys.iter_mut().zip(&fs) {
                    *v = g(sample);
                }
            });
    }
    Tensor::from_shape_vec(IxDyn(&[b, c, oh, ow]), y).expect("b·c·oh·ow values")
}

/// One output value as a function of one sample's values.
type OutputFn = Box<dyn Fn(&[f64]) -> f64 + Send + Sync>;

/// Direct convolution, sample by sample (samples in parallel). Each output sums the taps of
/// [`conv_taps`] in their order (input channel, kernel row, kernel column; padding skipped)
/// and then adds the bias, as the per-output form would; here a tap is applied to all the
/// outputs it reaches at once (a contiguous run of the input row at stride 1).
fn conv(cv: &Conv, x: &Tensor) -> Tensor {
    let (b, h, w) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = cv.weight.dim();
    let ([sy, sx], [py, px]) = (cv.stride, [cv.pads[0], cv.pads[1]]);
    let oh = (h + cv.pads[0] + cv.pads[2] - kh) / sy + 1;
    let ow = (w + cv.pads[1] + cv.pads[3] - kw) / sx + 1;
    // The outputs a kernel offset reaches without padding: a contiguous range.
    let reach = |k: usize, stride: usize, pad: usize, n: usize, outs: usize| {
        let mut r = (0..outs).filter(|&o| tap(o, k, stride, pad, n).is_some());
        let first = r.next();
        first.map_or((0, 0), |f| (f, r.next_back().unwrap_or(f) + 1))
    };
    let rows: Vec<(usize, usize)> = (0..kh).map(|k| reach(k, sy, py, h, oh)).collect();
    let cols: Vec<(usize, usize)> = (0..kw).map(|k| reach(k, sx, px, w, ow)).collect();
    let plane = oh * ow;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("a standard-layout array is contiguous");
    let per = xs.len() / b.max(1);
    let mut y = vec![0.0; b * o * plane];
    if per > 0 && plane > 0 {
        y.par_chunks_mut(o * plane)
            .zip(xs.par_chunks(per))
            .for_each(|(ys, sample)| {
                let mut acc = vec![0.0; plane];
                for (oc, out) in ys.chunks_mut(plane).enumerate() {
                    let g = oc / (o / cv.groups);
                    acc.fill(0.0);
                    for ci in 0..cg {
                        let input = &sample[(g * cg + ci) * h * w..][..h * w];
                        for (ky, &(y0, y1)) in rows.iter().enumerate() {
                            for (kx, &(x0, x1)) in cols.iter().enumerate() {
                                let wt = cv.weight[[oc, ci, ky, kx]];
                                for oy in y0..y1 {
                                    let iy = oy * sy + ky - py;
                                    let row = &input[iy * w..][..w];
                                    let out_row = &mut acc[oy * ow..][x0..x1];
                                    if sx == 1 {
                                        let src = &row[x0 + kx - px..][..x1 - x0];
                                        for (a, &v) in out_row.iter_mut().zip(src) {
                                            *a += wt * v;
                                        }
                                    } else {
                                        for (a, ox) in out_row.iter_mut().zip(x0..x1) {
                                            *a += wt * row[ox * sx + kx - px];
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for (v, a) in out.iter_mut().zip(&acc) {
                        *v = cv.bias[oc] + a;
                    }
                }
            });
    }
    Tensor::from_shape_vec(IxDyn(&[b, o, oh, ow]), y).expect("b·o·oh·ow values")
}

fn avg_pool(p: &Pool, x: &Tensor) -> Tensor {
    let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
    let [kh, kw] = p.kernel;
    let oh = (h + p.pads[0] + p.pads[2] - kh) / p.stride[0] + 1;
    let ow = (w + p.pads[1] + p.pads[3] - kw) / p.stride[1] + 1;
    per_output(x, [c, oh, ow], |ch, oy, ox| {
        let (idx, div) = pool_window(p, h, w, ch, oy, ox);
        Box::new(move |xs| idx.iter().map(|&i| xs[i]).sum::<f64>() / div)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array4};

    /// The plane-at-a-time convolution gives each output exactly the per-output sum over
    /// [`conv_taps`] (the form the lowering shares), at strides 1 and 2, asymmetric padding
    /// and grouped channels.
    #[test]
    fn conv_equals_the_per_output_sum_of_its_taps() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        for (stride, pads, groups) in [
            ([1, 1], [0, 0, 0, 0], 1),
            ([2, 1], [1, 2, 0, 1], 1),
            ([2, 2], [2, 1, 2, 0], 2),
        ] {
            let (b, c, h, w, o, k) = (3, 4, 9, 8, 6, 3);
            let cv = Conv {
                weight: Array4::from_shape_fn((o, c / groups, k, k), |_| next()),
                bias: Array1::from_shape_fn(o, |_| next()),
                stride,
                pads,
                groups,
            };
            let x = Tensor::from_shape_fn(IxDyn(&[b, c, h, w]), |_| next());
            let y = conv(&cv, &x);
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            let xs: Vec<f64> = x.iter().copied().collect();
            for n in 0..b {
                let sample = &xs[n * c * h * w..][..c * h * w];
                for oc in 0..o {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let taps = conv_taps(&cv, h, w, oc, oy, ox);
                            let want = cv.bias[oc]
                                + taps.iter().map(|&(i, wt)| wt * sample[i]).sum::<f64>();
                            assert_eq!(y[[n, oc, oy, ox]], want, "{stride:?} {pads:?} {groups}");
                        }
                    }
                }
            }
        }
    }
}
