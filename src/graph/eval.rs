//! The plaintext `f64` interpreter: direct loops, no tricks, since it is the oracle.

use ndarray::{Axis, Ix2, IxDyn};

use super::{Conv, Graph, Op, Pool};
use crate::nn::Tensor;
use crate::{Error, Result};

impl Graph {
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
                return Err(Error::Shape(format!(
                    "input {:?} must be {want:?} (batch first), got {:?}",
                    self.name(*id),
                    t.shape()
                )));
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
pub(crate) fn tap(o: usize, k: usize, stride: usize, pad: usize, n: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < n)
}

fn conv(cv: &Conv, x: &Tensor) -> Tensor {
    let (b, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = cv.weight.dim();
    let og = o / cv.groups;
    let oh = (h + cv.pads[0] + cv.pads[2] - kh) / cv.stride[0] + 1;
    let ow = (w + cv.pads[1] + cv.pads[3] - kw) / cv.stride[1] + 1;
    let mut y = Tensor::zeros(IxDyn(&[b, o, oh, ow]));
    for n in 0..b {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = cv.bias[oc];
                    for ci in 0..cg {
                        let ic = g * cg + ci;
                        debug_assert!(ic < c);
                        for ky in 0..kh {
                            let Some(iy) = tap(oy, ky, cv.stride[0], cv.pads[0], h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                if let Some(ix) = tap(ox, kx, cv.stride[1], cv.pads[1], w) {
                                    s += cv.weight[[oc, ci, ky, kx]] * x[[n, ic, iy, ix]];
                                }
                            }
                        }
                    }
                    y[[n, oc, oy, ox]] = s;
                }
            }
        }
    }
    y
}

fn avg_pool(p: &Pool, x: &Tensor) -> Tensor {
    let (b, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let [kh, kw] = p.kernel;
    let oh = (h + p.pads[0] + p.pads[2] - kh) / p.stride[0] + 1;
    let ow = (w + p.pads[1] + p.pads[3] - kw) / p.stride[1] + 1;
    let mut y = Tensor::zeros(IxDyn(&[b, c, oh, ow]));
    for n in 0..b {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut s, mut count) = (0.0, 0usize);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = tap(oy, ky, p.stride[0], p.pads[0], h);
                            let ix = tap(ox, kx, p.stride[1], p.pads[1], w);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                s += x[[n, ch, iy, ix]];
                                count += 1;
                            }
                        }
                    }
                    let div = if p.count_include_pad {
                        kh * kw
                    } else {
                        count.max(1)
                    };
                    y[[n, ch, oy, ox]] = s / div as f64;
                }
            }
        }
    }
    y
}
