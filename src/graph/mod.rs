//! A model as a graph: a small DAG of typed, shaped operations between importers (ONNX) and
//! the encrypted back ends.
//!
//! * **Values** carry a per-sample shape: axis 0 of every runtime tensor is the batch and is
//!   never part of a shape here, because the batched encrypted layout keeps one sample per
//!   slot and no op may mix samples. Importers reject ops that would (a Flatten at axis 0, a
//!   Concat or Transpose over the batch axis).
//! * **Nodes** are kept in topological order: [`Graph::push`] only accepts inputs that exist,
//!   and infers (and checks) the output shape at once, so a [`Graph`] is always well-shaped.
//! * The op set is what HE can evaluate: linear maps (convolutions, dense layers, pooling,
//!   constants, residual sums), layout changes, and polynomials. [`Graph::run`] is the
//!   plaintext `f64` interpreter, the oracle of the tests and of any encrypted lowering.
//! * [`passes`] simplify an imported graph: BatchNorm folded into the preceding linear op,
//!   chains of scalar `Mul`/`Add`/`Pow` on one input fused into one polynomial.

pub(crate) mod eval;
pub mod passes;

use ndarray::{Array1, Array2, Array4, ArrayD};

use crate::{Error, Result};

/// Most elements one sample of one value may hold: a bound on what an untrusted model can
/// make the interpreter allocate (16 M f64 = 128 MiB per sample).
pub const MAX_ELEMENTS: usize = 1 << 24;

/// A value (the output of a node, or a graph input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// A 2-D convolution (cross-correlation, as PyTorch and ONNX define it), on `[C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// `[out, in / groups, kh, kw]`.
    pub weight: Array4<f64>,
    /// `[out]`.
    pub bias: Array1<f64>,
    /// `[sy, sx]`, each ≥ 1.
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Channel groups (`in` for a depthwise convolution).
    pub groups: usize,
}

/// An average pooling window on `[C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sy, sx]`.
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Whether padded positions count in the divisor (ONNX `count_include_pad`).
    pub count_include_pad: bool,
}

/// One operation. Shapes below are per sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// See [`Conv`]: `[C, H, W] → [O, H', W']`.
    Conv2d(Conv),
    /// `y = W x + b` on `[in]`; `weight` is `[out, in]` (PyTorch's `Linear`, ONNX `Gemm`).
    Linear {
        /// `[out, in]`.
        weight: Array2<f64>,
        /// `[out]`.
        bias: Array1<f64>,
    },
    /// Element-wise sum of two values (a residual connection); shapes broadcast.
    Add,
    /// Element-wise difference of two values.
    Sub,
    /// Element-wise product of two values (degree 2: costs a level when encrypted).
    Mul,
    /// `x + c`, `c` broadcast against the value (right-aligned, numpy rules).
    AddConst(ArrayD<f64>),
    /// `x · c`, `c` broadcast against the value.
    MulConst(ArrayD<f64>),
    /// `y[c, ...] = scale[c] · x[c, ...] + shift[c]`: an inference-mode BatchNorm, which
    /// [`passes::fold_channel_affine`] folds into the preceding linear op.
    ChannelAffine {
        /// `[C]`.
        scale: Array1<f64>,
        /// `[C]`.
        shift: Array1<f64>,
    },
    /// See [`Pool`]: `[C, H, W] → [C, H', W']`.
    AvgPool(Pool),
    /// Mean over each channel: `[C, H, W] → [C, 1, 1]` (ONNX keeps the unit axes).
    GlobalAvgPool,
    /// Row-major reinterpretation as another shape with as many elements (Flatten, Reshape).
    Reshape(Vec<usize>),
    /// Axis permutation of the per-sample axes.
    Transpose(Vec<usize>),
    /// `Σ coeffs[i] · x^i`, element-wise (x², quadratic activations).
    Poly(Vec<f64>),
    /// Concatenation of the inputs along a per-sample axis.
    Concat(usize),
}

impl Op {
    /// The op's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::Linear { .. } => "Linear",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::AddConst(_) => "AddConst",
            Op::MulConst(_) => "MulConst",
            Op::ChannelAffine { .. } => "ChannelAffine",
            Op::AvgPool(_) => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Reshape(_) => "Reshape",
            Op::Transpose(_) => "Transpose",
            Op::Poly(_) => "Poly",
            Op::Concat(_) => "Concat",
        }
    }

    /// Polynomial degree of the op in its inputs (1 for linear maps and layout changes): what
    /// a lowering spends multiplicative depth on.
    pub fn degree(&self) -> usize {
        match self {
            Op::Mul => 2,
            Op::Poly(c) => c.len().saturating_sub(1).max(1),
            _ => 1,
        }
    }
}

/// One node: `output = op(inputs)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The importer's name for the node (ONNX node name), for messages.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its operands, in order.
    pub inputs: Vec<ValueId>,
    /// The value it defines.
    pub output: ValueId,
}

/// A model: inputs, nodes in topological order, outputs, and each value's shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    shapes: Vec<Vec<usize>>,
    names: Vec<String>,
    inputs: Vec<ValueId>,
    nodes: Vec<Node>,
    outputs: Vec<ValueId>,
}

fn shape_err<T>(node: &str, op: &Op, msg: impl std::fmt::Display) -> Result<T> {
    Err(Error::Shape(format!(
        "node {node:?} ({}): {msg}",
        op.kind()
    )))
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// Numpy broadcasting of two shapes (right-aligned), or `None` if they do not broadcast.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        if i + s.len() < n {
            1
        } else {
            s[i + s.len() - n]
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Output size of a window of `k` with stride `s` over `n` padded by `p0 + p1`.
fn window(n: usize, k: usize, s: usize, p0: usize, p1: usize) -> Option<usize> {
    let padded = n.checked_add(p0)?.checked_add(p1)?;
    if k == 0 || s == 0 || padded < k {
        return None;
    }
    Some((padded - k) / s + 1)
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input with a per-sample `shape` (batch axis excluded).
    pub fn add_input(&mut self, name: &str, shape: &[usize]) -> Result<ValueId> {
        if shape.contains(&0) || elements(shape).is_none() {
            return Err(Error::Shape(format!(
                "input {name:?}: shape {shape:?} is empty or larger than {MAX_ELEMENTS} elements per sample"
            )));
        }
        let id = self.new_value(name, shape.to_vec());
        self.inputs.push(id);
        Ok(id)
    }

    fn new_value(&mut self, name: &str, shape: Vec<usize>) -> ValueId {
        self.shapes.push(shape);
        self.names.push(name.to_string());
        ValueId(self.shapes.len() - 1)
    }

    /// Appends `op` on `inputs` (which must exist), checking their shapes; returns its output.
    pub fn push(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        if let Some(bad) = inputs.iter().find(|v| v.0 >= self.shapes.len()) {
            return shape_err(name, &op, format!("input {bad:?} does not exist"));
        }
        let shape = self.infer(name, &op, inputs)?;
        if shape.contains(&0) || elements(&shape).is_none() {
            return shape_err(
                name,
                &op,
                format!("output shape {shape:?} is empty or larger than {MAX_ELEMENTS} elements per sample"),
            );
        }
        let output = self.new_value(name, shape);
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            output,
        });
        Ok(output)
    }

    /// Marks `v` as a graph output.
    pub fn add_output(&mut self, v: ValueId) -> Result<()> {
        if v.0 >= self.shapes.len() {
            return Err(Error::Shape(format!("output {v:?} does not exist")));
        }
        self.outputs.push(v);
        Ok(())
    }

    /// The graph inputs.
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The per-sample shape of `v`.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.shapes[v.0]
    }

    /// The name of `v` (its producer's, or the input's).
    pub fn name(&self, v: ValueId) -> &str {
        &self.names[v.0]
    }

    /// The longest chain of multiplications from an input to an output: the multiplicative
    /// depth an encrypted evaluation needs for the nonlinear part (each degree-d op counts
    /// ⌈log2 d⌉), not counting the rescale that each linear op with constants adds.
    pub fn multiplicative_depth(&self) -> usize {
        let mut depth = vec![0usize; self.shapes.len()];
        for n in &self.nodes {
            let d = n.inputs.iter().map(|v| depth[v.0]).max().unwrap_or(0);
            let own = n.op.degree().next_power_of_two().trailing_zeros() as usize;
            depth[n.output.0] = d + own;
        }
        self.outputs.iter().map(|v| depth[v.0]).max().unwrap_or(0)
    }

    fn infer(&self, name: &str, op: &Op, inputs: &[ValueId]) -> Result<Vec<usize>> {
        let arity = match op {
            Op::Add | Op::Sub | Op::Mul => Some(2),
            Op::Concat(_) => None,
            _ => Some(1),
        };
        if let Some(a) = arity {
            if inputs.len() != a {
                return shape_err(name, op, format!("takes {a} inputs, got {}", inputs.len()));
            }
        } else if inputs.is_empty() {
            return shape_err(name, op, "takes at least one input");
        }
        let x = self.shape(inputs[0]);
        let chw = |what: &str| -> Result<[usize; 3]> {
            match *x {
                [c, h, w] => Ok([c, h, w]),
                _ => shape_err(
                    name,
                    op,
                    format!("{what} needs a [C, H, W] input, got {x:?}"),
                ),
            }
        };
        match op {
            Op::Conv2d(cv) => {
                let [c, h, w] = chw("a convolution")?;
                let (o, ci, kh, kw) = cv.weight.dim();
                if cv.groups == 0 || c % cv.groups != 0 || o % cv.groups != 0 {
                    return shape_err(
                        name,
                        op,
                        format!(
                            "{} groups do not divide {c} input and {o} output channels",
                            cv.groups
                        ),
                    );
                }
                if ci * cv.groups != c || cv.bias.len() != o {
                    return shape_err(
                        name,
                        op,
                        format!(
                            "weight {:?} and bias [{}] do not fit {c} input channels in {} groups",
                            cv.weight.shape(),
                            cv.bias.len(),
                            cv.groups
                        ),
                    );
                }
                let [pt, pl, pb, pr] = cv.pads;
                match (
                    window(h, kh, cv.stride[0], pt, pb),
                    window(w, kw, cv.stride[1], pl, pr),
                ) {
                    (Some(oh), Some(ow)) => Ok(vec![o, oh, ow]),
                    _ => shape_err(
                        name,
                        op,
                        format!(
                            "kernel {kh}x{kw}, stride {:?} and pads {:?} do not fit {h}x{w}",
                            cv.stride, cv.pads
                        ),
                    ),
                }
            }
            Op::AvgPool(p) => {
                let [c, h, w] = chw("a pooling")?;
                let [pt, pl, pb, pr] = p.pads;
                if pt.max(pb) >= p.kernel[0] || pl.max(pr) >= p.kernel[1] {
                    return shape_err(name, op, "padding must be smaller than the window");
                }
                match (
                    window(h, p.kernel[0], p.stride[0], pt, pb),
                    window(w, p.kernel[1], p.stride[1], pl, pr),
                ) {
                    (Some(oh), Some(ow)) => Ok(vec![c, oh, ow]),
                    _ => shape_err(
                        name,
                        op,
                        format!("window {:?} does not fit {h}x{w}", p.kernel),
                    ),
                }
            }
            Op::GlobalAvgPool => {
                let [c, _, _] = chw("a global pooling")?;
                Ok(vec![c, 1, 1])
            }
            Op::Linear { weight, bias } => {
                let (o, i) = weight.dim();
                if *x != [i] || bias.len() != o {
                    return shape_err(
                        name,
                        op,
                        format!(
                            "weight [{o}, {i}], bias [{}] on input {x:?} (flatten first)",
                            bias.len()
                        ),
                    );
                }
                Ok(vec![o])
            }
            Op::Add | Op::Sub | Op::Mul => {
                let y = self.shape(inputs[1]);
                match broadcast(x, y) {
                    Some(s) if x.len() == y.len() => Ok(s),
                    _ => shape_err(name, op, format!("shapes {x:?} and {y:?} do not broadcast")),
                }
            }
            Op::AddConst(c) | Op::MulConst(c) => match broadcast(x, c.shape()) {
                Some(s) => Ok(s),
                None => shape_err(
                    name,
                    op,
                    format!("constant {:?} does not broadcast with {x:?}", c.shape()),
                ),
            },
            Op::ChannelAffine { scale, shift } => {
                if x.is_empty() || scale.len() != x[0] || shift.len() != x[0] {
                    return shape_err(
                        name,
                        op,
                        format!(
                            "{} scales and {} shifts for input {x:?}",
                            scale.len(),
                            shift.len()
                        ),
                    );
                }
                Ok(x.to_vec())
            }
            Op::Reshape(s) => {
                if elements(s) != elements(x) {
                    return shape_err(name, op, format!("cannot reshape {x:?} to {s:?}"));
                }
                Ok(s.clone())
            }
            Op::Transpose(perm) => {
                let mut seen = vec![false; x.len()];
                if perm.len() != x.len()
                    || perm
                        .iter()
                        .any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true))
                {
                    return shape_err(
                        name,
                        op,
                        format!("{perm:?} is no permutation of {x:?}'s axes"),
                    );
                }
                Ok(perm.iter().map(|&p| x[p]).collect())
            }
            Op::Poly(c) => {
                if c.is_empty() || c.iter().any(|v| !v.is_finite()) {
                    return shape_err(name, op, "coefficients must be finite and non-empty");
                }
                Ok(x.to_vec())
            }
            Op::Concat(axis) => {
                let mut out = x.to_vec();
                if *axis >= x.len() {
                    return shape_err(name, op, format!("axis {axis} out of range for {x:?}"));
                }
                for v in &inputs[1..] {
                    let y = self.shape(*v);
                    let same_rest = y.len() == x.len()
                        && y.iter()
                            .zip(x)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b);
                    if !same_rest {
                        return shape_err(
                            name,
                            op,
                            format!("cannot concatenate {x:?} and {y:?} on axis {axis}"),
                        );
                    }
                    out[*axis] += y[*axis];
                }
                Ok(out)
            }
        }
    }
}
