//! One lowering from a [`Graph`] to encrypted evaluation.
//!
//! [`Plan::new`] walks the graph once and decides everything that does not depend on the
//! data or the keys: which ops are free and which cost a level, where rescales and
//! relinearizations go, and the multiplicative depth. Back ends execute the schedule:
//! [`CkksBatched`] (CKKS, one sample per slot), [`CkksPacked`] (CKKS, one sample's features
//! in the slots, rotations) and [`Bfv`] (the plan quantized to integers, exact BFV over CRT
//! primes, one sample per slot).
//!
//! The planning rules:
//! * **Shapes** are the graph's (checked when it was built); every op becomes a sparse affine
//!   map over its inputs' features, an element-wise product, or an element-wise polynomial.
//! * **Folds.** Each feature carries a plaintext factor not yet applied to its ciphertext.
//!   Pooling, `MulConst`, BatchNorm scales, layout changes and sums whose terms share one
//!   factor cost no level: the factor is carried, and a later dense map multiplies it into its
//!   weights (`(f·x)² = f²·x²` carries it through squares). A graph output's factor is applied
//!   to its ciphertext's scale, for free.
//! * **Natural scales.** A ciphertext at level ℓ has the context's natural scale Δ_ℓ, so
//!   values computed along different paths (a residual connection) add without fix-ups; a
//!   shallower operand is brought down by one plaintext multiplication (which also applies its
//!   fold).
//! * **Deferred rescaling.** A product's rescale waits past the sums that follow it (pooling)
//!   and is paid before the next dense map, a product, or the output: fewer ciphertexts.
//! * **Lazy relinearization.** Products stay at 3 polynomials through those sums and are
//!   relinearized where their rescale is paid, just before it: rescaling a 3-polynomial
//!   ciphertext would multiply its rounding error by the size of s² (~100x at N = 2^13;
//!   measured: CryptoNets-shaped logits 5e-2 off instead of 3e-4 at Δ = 2^25).

pub mod bfv;
mod ckks;
mod packed;
mod params;

pub use bfv::{Bfv, QuantizedPlan};
pub use ckks::{CkksBatched, LayerTiming};
pub use packed::{packed_rotation_steps, CkksPacked};
pub use params::{choose_ckks_params, ParamChoice};

use std::collections::HashMap;

use crate::ckks::CkksContext;
use crate::graph::eval::{conv_taps, pool_window};
use crate::graph::{Conv, Graph, Op, Pool, ValueId};
use crate::nn::{Layer, Sequential};
use crate::{Error, Result};

/// Degree-2 polynomials cost one level; higher degrees go through
/// [`CkksContext::evaluate_polynomial_at`].
const QUADRATIC: usize = 2;

/// One output feature of an affine map: `Σ w · x[flat] + bias`, `flat` indexing the
/// concatenated features of the op's inputs.
#[derive(Clone, Debug)]
struct Row {
    terms: Vec<(u32, f64)>,
    bias: f64,
}

/// One output of a free sum: `Σ k·x[flat] + add` with small integers `k` (usually ±1; the
/// common factor goes to the fold).
#[derive(Clone, Debug)]
pub(crate) struct SumRow {
    pub terms: Vec<(u32, i64)>,
    pub add: f64,
}

/// Outputs of a dense map that read the same inputs (a convolution's output channels at one
/// position), computed together so that each input is read once.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub inputs: Vec<u32>,
    /// (output feature, one weight per input).
    pub outputs: Vec<(u32, Vec<f64>)>,
}

/// Sum rows of an [`Instr::Fused`] and the dense groups they read, which no other part reads.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    pub groups: Vec<u32>,
    pub rows: Vec<u32>,
}

/// A dense map's groups as one row per output feature: its (input, weight) pairs and its bias
/// (what the packed and BFV back ends compile, which do not share inputs across outputs).
pub(crate) fn dense_rows(
    groups: &[Group],
    bias: &[f64],
    outputs: usize,
) -> Vec<(Vec<(u32, f64)>, f64)> {
    let mut rows = vec![(Vec::new(), 0.0); outputs];
    for g in groups {
        for (j, ws) in &g.outputs {
            rows[*j as usize].0 = g.inputs.iter().copied().zip(ws.iter().copied()).collect();
        }
    }
    for (r, &b) in rows.iter_mut().zip(bias) {
        r.1 = b;
    }
    rows
}

/// Where a windowed map (convolution, pooling) reads: output `(o, oy, ox)` of `output` anchors
/// at input `(stride · (oy, ox) + offset)` of `input` (both `[C, H, W]`). The packed layout
/// places outputs by it, so that one rotation per kernel tap serves every position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub stride: [usize; 2],
    pub offset: [i64; 2],
}

impl Window {
    fn of(op: &Op, x: &[usize], out: &[usize]) -> Option<Self> {
        let (&[c, h, w], &[o, oh, ow]) = (x, out) else {
            return None;
        };
        let (stride, pads) = match op {
            Op::Conv2d(cv) => (cv.stride, cv.pads),
            Op::AvgPool(p) => (p.stride, p.pads),
            Op::GlobalAvgPool => ([h, w], [0; 4]),
            _ => return None,
        };
        Some(Window {
            input: [c, h, w],
            output: [o, oh, ow],
            stride,
            offset: [-(pads[0] as i64), -(pads[1] as i64)],
        })
    }
}

/// One instruction of the schedule; `slot`s name stored tensors (vectors of ciphertexts).
/// Depths count levels below the input's.
#[derive(Clone, Debug)]
pub(crate) enum Instr {
    /// Pays a deferred rescale (relinearizing first), in place.
    Rescale { slot: usize },
    /// `dst[j] = src[j] · factors[j]` at depth `depth` and its natural scale (or, `pending`,
    /// at the scale of a product not yet rescaled).
    Align {
        src: usize,
        dst: usize,
        factors: Vec<f64>,
        depth: usize,
        pending: bool,
    },
    /// Additions only.
    Sum {
        args: Vec<usize>,
        rows: Vec<SumRow>,
        dst: usize,
        window: Option<Window>,
    },
    /// Linear combinations, one rescale, then the bias (one level). `terminal`: the output is
    /// the graph's, so its scale may be lowered to hold the output bound at its level.
    Dense {
        args: Vec<usize>,
        groups: Vec<Group>,
        bias: Vec<f64>,
        outputs: usize,
        dst: usize,
        terminal: bool,
        window: Option<Window>,
    },
    /// `dst[j] = a[pairs[j].0] · b[pairs[j].1]`, not rescaled, not relinearized.
    Mul {
        a: usize,
        b: usize,
        pairs: Vec<(u32, u32)>,
        dst: usize,
    },
    /// `dst[j] = x_j² + b_j·x_j + c_j`, not rescaled.
    Quad {
        src: usize,
        rows: Vec<(f64, f64)>,
        dst: usize,
    },
    /// A dense map, a quadratic of each of its outputs and a sum of those (conv → square →
    /// pool) whose intermediate tensors have no other reader, run part by part (each part's
    /// sum rows share no dense group with another part's): only the sums are ever stored
    /// whole. `rescale`: the sums' deferred rescale is paid here too (it came right after).
    Fused {
        args: Vec<usize>,
        groups: Vec<Group>,
        bias: Vec<f64>,
        quad: Vec<(f64, f64)>,
        rows: Vec<SumRow>,
        parts: Vec<Part>,
        dst: usize,
        rescale: bool,
    },
    /// A polynomial of degree ≥ 3 per feature (its coefficients, fold included), ending at
    /// `depth` at the natural scale.
    Poly {
        src: usize,
        coeffs: Vec<Vec<f64>>,
        depth: usize,
        dst: usize,
    },
}

/// What the planner knows about a stored tensor.
#[derive(Clone, Debug)]
struct State {
    slot: usize,
    fold: Vec<f64>,
    depth: usize,
    pending: bool,
}

/// The schedule of a graph: instructions, where values live, and the depth it needs.
#[derive(Clone, Debug)]
pub struct Plan {
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    /// (graph node index, instruction).
    instrs: Vec<(usize, Instr)>,
    node_names: Vec<String>,
    /// Slots to free after each instruction.
    frees: Vec<Vec<usize>>,
    /// The batched back end's schedule: `instrs` with dense → quadratic → sum chains fused
    /// ([`Instr::Fused`], which only that back end runs), and its frees.
    fused_instrs: Vec<(usize, Instr)>,
    fused_frees: Vec<Vec<usize>>,
    slots: usize,
    output_slot: usize,
    output_fold: Vec<f64>,
    depth: usize,
    /// Depth of each graph value where it is computed (`None`: not computed).
    value_depths: Vec<Option<usize>>,
    counts: Counts,
}

/// How much of each kind of work the plan schedules (per sample batch), for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Ciphertext products (squares included).
    pub products: usize,
    /// Rescales of whole ciphertexts (dense maps' and deferred ones).
    pub rescales: usize,
    /// Relinearizations (one per rescale of a product).
    pub relinearizations: usize,
    /// Dense maps (one level each).
    pub dense_maps: usize,
    /// Ops that cost no level (sums, folds, layout changes).
    pub free_ops: usize,
    /// Dense → quadratic → sum chains run part by part ([`Plan`] keeps their intermediate
    /// tensors from ever being stored whole).
    pub fused_chains: usize,
}

struct Planner<'g> {
    graph: &'g Graph,
    instrs: Vec<(usize, Instr)>,
    states: Vec<Option<State>>,
    slots: usize,
    node: usize,
    value_depths: Vec<Option<usize>>,
    counts: Counts,
}

impl Plan {
    /// Plans `graph` (one input, one output).
    pub fn new(graph: &Graph) -> Result<Self> {
        let (&[input], &[output]) = (graph.inputs(), graph.outputs()) else {
            return Err(Error::Model(format!(
                "the encrypted lowering takes a graph with one input and one output, not {} and {}",
                graph.inputs().len(),
                graph.outputs().len()
            )));
        };
        let values = graph
            .nodes()
            .iter()
            .map(|n| n.output.0 + 1)
            .max()
            .unwrap_or(0)
            .max(input.0 + 1);
        let mut p = Planner {
            graph,
            instrs: Vec::new(),
            states: vec![None; values],
            slots: 1,
            node: 0,
            value_depths: vec![None; values],
            counts: Counts::default(),
        };
        p.states[input.0] = Some(State {
            slot: 0,
            fold: vec![1.0; features(graph.shape(input))],
            depth: 0,
            pending: false,
        });
        let readers = |v: ValueId| {
            graph
                .nodes()
                .iter()
                .filter(|n| n.inputs.contains(&v))
                .count()
        };
        for (i, n) in graph.nodes().iter().enumerate() {
            p.node = i;
            let terminal = n.output == output && readers(output) == 0;
            p.lower_node(&n.name, &n.op, &n.inputs, n.output, terminal)?;
        }
        // The output: deferred rescale paid; its folds go to the ciphertexts' scales.
        p.node = graph.nodes().len().saturating_sub(1);
        p.rescale(output)?;
        let out = p.state(output)?;
        if out.fold.iter().any(|&f| f == 0.0 || !f.is_finite()) {
            return Err(Error::Model(format!(
                "output {:?}: a feature is a constant (a zero factor), which the encrypted lowering does not produce",
                graph.name(output)
            )));
        }
        let slots = p.slots;
        let value_depths = p.value_depths;
        let mut node_names: Vec<String> = graph.nodes().iter().map(|n| n.name.clone()).collect();
        let fused_instrs = fuse_chains(&p.instrs, out.slot, &mut node_names);
        let mut counts = p.counts;
        counts.fused_chains = fused_instrs
            .iter()
            .filter(|(_, i)| matches!(i, Instr::Fused { .. }))
            .count();
        let frees = lifetimes(&p.instrs, slots, out.slot);
        let fused_frees = lifetimes(&fused_instrs, slots, out.slot);
        Ok(Plan {
            input_shape: graph.shape(input).to_vec(),
            output_shape: graph.shape(output).to_vec(),
            node_names,
            instrs: p.instrs,
            frees,
            fused_instrs,
            fused_frees,
            slots,
            output_slot: out.slot,
            output_fold: out.fold,
            depth: out.depth,
            value_depths,
            counts,
        })
    }

    /// The instructions and the slots each frees: the batched back end's (`fused`) or the
    /// plain schedule every back end can run.
    pub(crate) fn schedule(&self, fused: bool) -> (&[(usize, Instr)], &[Vec<usize>]) {
        if fused {
            (&self.fused_instrs, &self.fused_frees)
        } else {
            (&self.instrs, &self.frees)
        }
    }

    /// Plans a [`Sequential`] model on inputs of per-sample shape `input_shape`.
    pub fn from_sequential(model: &Sequential, input_shape: &[usize]) -> Result<Self> {
        Self::new(&sequential_graph(model, input_shape)?)
    }

    /// Levels (rescalings) the schedule consumes.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The graph values computed at the plan's full depth: they live at the last level (or,
    /// products not yet rescaled, one above at twice the scale), where the base modulus alone
    /// must hold them.
    pub fn bottom_values(&self) -> Vec<ValueId> {
        (0..self.value_depths.len())
            .filter(|&v| self.value_depths[v] == Some(self.depth))
            .map(ValueId)
            .collect()
    }

    /// Whether the output is made by a dense map whose scale may be lowered to hold the output
    /// bound ([`CkksBatched::with_output_bound`]).
    pub fn output_scale_adjustable(&self) -> bool {
        self.instrs
            .iter()
            .any(|(_, i)| matches!(i, Instr::Dense { dst, terminal: true, .. } if *dst == self.output_slot))
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The work scheduled.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Checks that the plan fits a CKKS context at `batch` samples: levels and slots.
    pub fn check_fits(&self, ctx: &CkksContext, batch: usize) -> Result<()> {
        if self.depth > ctx.max_level() {
            return Err(Error::InvalidParameters(format!(
                "the model needs {} levels but the CKKS parameters have {}; use a longer chain \
                 (depth {} or more) or a shallower model",
                self.depth,
                ctx.max_level(),
                self.depth
            )));
        }
        if batch > ctx.slots() {
            return Err(Error::TooManyValues {
                got: batch,
                slots: ctx.slots(),
            });
        }
        Ok(())
    }
}

/// Plans `model` for the shape of `x` and runs it with CKKS, batched (one-off calls, tests):
/// `output_bound` as in [`CkksBatched::with_output_bound`].
pub fn forward_sequential(
    ctx: &CkksContext,
    model: &Sequential,
    x: &crate::tensor::CipherTensor,
    rk: &crate::rlwe::RelinKey,
    output_bound: f64,
) -> Result<crate::tensor::CipherTensor> {
    let plan = Plan::from_sequential(model, x.shape())?;
    CkksBatched::new(&plan, ctx, rk)?
        .with_output_bound(output_bound)
        .forward(x)
}

/// The graph of a [`Sequential`] model (what the lowering reads).
pub fn sequential_graph(model: &Sequential, input_shape: &[usize]) -> Result<Graph> {
    let mut g = Graph::new();
    let mut v = g.add_input("input", input_shape)?;
    for (name, layer) in model.iter() {
        let op = match layer {
            Layer::Conv2d(c) => Op::Conv2d(Conv {
                weight: c.weight.clone(),
                bias: c.bias.clone(),
                stride: [c.stride; 2],
                pads: [c.padding; 4],
                groups: 1,
            }),
            Layer::Linear(l) => {
                if g.shape(v).len() != 1 {
                    let flat = features(g.shape(v));
                    v = g.push(&format!("{name}.flatten"), Op::Reshape(vec![flat]), &[v])?;
                }
                Op::Linear {
                    weight: l.weight.clone(),
                    bias: l.bias.clone(),
                }
            }
            Layer::Square(_) => Op::Poly(vec![0.0, 0.0, 1.0]),
            Layer::Poly(p) => Op::Poly(p.coeffs.clone()),
            Layer::AvgPool2d(p) => {
                // nn's pooling drops a ragged edge: kernel = stride, no padding.
                Op::AvgPool(Pool {
                    kernel: [p.kernel; 2],
                    stride: [p.kernel; 2],
                    pads: [0; 4],
                    count_include_pad: true,
                })
            }
            Layer::Flatten(_) => Op::Reshape(vec![features(g.shape(v))]),
        };
        v = g.push(name, op, &[v])?;
    }
    g.add_output(v)?;
    Ok(g)
}

fn features(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// For each element of `out` (row-major), the flat index of the element of `inp` it reads
/// under right-aligned broadcasting.
fn broadcast_map(out: &[usize], inp: &[usize]) -> Vec<u32> {
    let n = out.len();
    let mut strides = vec![0usize; n];
    let mut s = 1;
    for i in (0..inp.len()).rev() {
        let oi = i + n - inp.len();
        strides[oi] = if inp[i] == 1 { 0 } else { s };
        s *= inp[i];
    }
    let mut map = Vec::with_capacity(features(out));
    let mut idx = vec![0usize; n];
    for _ in 0..features(out) {
        map.push(idx.iter().zip(&strides).map(|(a, b)| a * b).sum::<usize>() as u32);
        for ax in (0..n).rev() {
            idx[ax] += 1;
            if idx[ax] < out[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    map
}

fn shape_of(graph: &Graph, v: ValueId) -> &[usize] {
    graph.shape(v)
}

/// A linear op as rows over its inputs' concatenated features (`None`: not linear).
fn affine_rows(graph: &Graph, op: &Op, inputs: &[ValueId], out: &[usize]) -> Option<Vec<Row>> {
    let x = shape_of(graph, inputs[0]);
    let one = |j: u32, w: f64, bias: f64| Row {
        terms: vec![(j, w)],
        bias,
    };
    Some(match op {
        Op::Conv2d(cv) => {
            let (h, w) = (x[1], x[2]);
            let mut rows = Vec::with_capacity(features(out));
            for oc in 0..out[0] {
                for oy in 0..out[1] {
                    for ox in 0..out[2] {
                        rows.push(Row {
                            terms: conv_taps(cv, h, w, oc, oy, ox)
                                .into_iter()
                                .map(|(i, wt)| (i as u32, wt))
                                .collect(),
                            bias: cv.bias[oc],
                        });
                    }
                }
            }
            rows
        }
        Op::Linear { weight, bias } => (0..weight.nrows())
            .map(|j| Row {
                terms: (0..weight.ncols())
                    .map(|i| (i as u32, weight[[j, i]]))
                    .collect(),
                bias: bias[j],
            })
            .collect(),
        Op::AvgPool(p) => pool_rows(p, x, out),
        Op::GlobalAvgPool => {
            let hw = x[1] * x[2];
            (0..x[0])
                .map(|c| Row {
                    terms: (0..hw)
                        .map(|i| ((c * hw + i) as u32, 1.0 / hw as f64))
                        .collect(),
                    bias: 0.0,
                })
                .collect()
        }
        Op::Add | Op::Sub => {
            let y = shape_of(graph, inputs[1]);
            let off = features(x) as u32;
            let sign = if matches!(op, Op::Sub) { -1.0 } else { 1.0 };
            broadcast_map(out, x)
                .into_iter()
                .zip(broadcast_map(out, y))
                .map(|(a, b)| Row {
                    terms: vec![(a, 1.0), (off + b, sign)],
                    bias: 0.0,
                })
                .collect()
        }
        Op::AddConst(c) | Op::MulConst(c) => {
            let cs: Vec<f64> = c.iter().copied().collect();
            let add = matches!(op, Op::AddConst(_));
            broadcast_map(out, x)
                .into_iter()
                .zip(broadcast_map(out, c.shape()))
                .map(|(i, k)| {
                    let v = cs[k as usize];
                    if add {
                        one(i, 1.0, v)
                    } else {
                        one(i, v, 0.0)
                    }
                })
                .collect()
        }
        Op::ChannelAffine { scale, shift } => {
            let per = features(&x[1..]);
            (0..features(x))
                .map(|j| one(j as u32, scale[j / per], shift[j / per]))
                .collect()
        }
        Op::Reshape(_) => (0..features(x)).map(|j| one(j as u32, 1.0, 0.0)).collect(),
        Op::Transpose(perm) => {
            // Output index (row-major over `out`) → input index.
            let mut in_strides = vec![1usize; x.len()];
            for i in (0..x.len().saturating_sub(1)).rev() {
                in_strides[i] = in_strides[i + 1] * x[i + 1];
            }
            let mut rows = Vec::with_capacity(features(out));
            let mut idx = vec![0usize; out.len()];
            for _ in 0..features(out) {
                let src: usize = idx.iter().zip(perm).map(|(&o, &p)| o * in_strides[p]).sum();
                rows.push(one(src as u32, 1.0, 0.0));
                for ax in (0..out.len()).rev() {
                    idx[ax] += 1;
                    if idx[ax] < out[ax] {
                        break;
                    }
                    idx[ax] = 0;
                }
            }
            rows
        }
        Op::Concat(axis) => {
            // Each output element comes from one input: walk the output in order.
            let outer: usize = out[..*axis].iter().product();
            let inner: usize = out[axis + 1..].iter().product();
            let mut offs = Vec::new();
            let mut off = 0u32;
            for v in inputs {
                offs.push(off);
                off += features(shape_of(graph, *v)) as u32;
            }
            let mut rows = Vec::with_capacity(features(out));
            for o in 0..outer {
                for (k, v) in inputs.iter().enumerate() {
                    let a = shape_of(graph, *v)[*axis];
                    for i in 0..a * inner {
                        rows.push(one(offs[k] + (o * a * inner + i) as u32, 1.0, 0.0));
                    }
                }
            }
            rows
        }
        Op::Poly(c) => {
            let deg = c.iter().rposition(|&v| v != 0.0).unwrap_or(0);
            if deg != 1 {
                return None;
            }
            (0..features(x))
                .map(|j| one(j as u32, c[1], c[0]))
                .collect()
        }
        Op::Mul => return None,
    })
}

fn pool_rows(p: &Pool, x: &[usize], out: &[usize]) -> Vec<Row> {
    let (h, w) = (x[1], x[2]);
    let mut rows = Vec::with_capacity(features(out));
    for ch in 0..out[0] {
        for oy in 0..out[1] {
            for ox in 0..out[2] {
                let (idx, div) = pool_window(p, h, w, ch, oy, ox);
                rows.push(Row {
                    terms: idx.into_iter().map(|i| (i as u32, 1.0 / div)).collect(),
                    bias: 0.0,
                });
            }
        }
    }
    rows
}

/// Which slots die after each instruction (the output's never does).
fn lifetimes(instrs: &[(usize, Instr)], slots: usize, output: usize) -> Vec<Vec<usize>> {
    let mut last = vec![None; slots];
    for (i, (_, ins)) in instrs.iter().enumerate() {
        for s in ins.reads() {
            last[s] = Some(i);
        }
    }
    let mut frees = vec![Vec::new(); instrs.len()];
    for (s, l) in last.into_iter().enumerate() {
        if let (Some(i), true) = (l, s != output) {
            frees[i].push(s);
        }
    }
    frees
}

/// Replaces each dense map → quadratic → sum whose intermediate tensors are read by nothing
/// else with one [`Instr::Fused`] (named after its nodes, `conv1+act1+pool1`), taking along
/// the rescale of the sums when it comes next. Peak memory is then the sums, not the dense
/// map's outputs and their squares (measured on LeNet-1 at N = 2^14: 2304 + 2304 ciphertexts
/// of 2 and 3 polynomials alive at once without it).
fn fuse_chains(
    instrs: &[(usize, Instr)],
    output: usize,
    names: &mut Vec<String>,
) -> Vec<(usize, Instr)> {
    let mut readers: HashMap<usize, usize> = HashMap::new();
    for (_, ins) in instrs {
        for s in ins.reads() {
            *readers.entry(s).or_default() += 1;
        }
    }
    let private = |s: usize| s != output && readers.get(&s) == Some(&1);
    let mut out = Vec::with_capacity(instrs.len());
    let mut i = 0;
    while i < instrs.len() {
        if let [(
            n0,
            Instr::Dense {
                args,
                groups,
                bias,
                outputs,
                dst: d,
                terminal: false,
                ..
            },
        ), (
            n1,
            Instr::Quad {
                src,
                rows: quad,
                dst: e,
            },
        ), (
            n2,
            Instr::Sum {
                args: sum_args,
                rows,
                dst,
                ..
            },
        ), rest @ ..] = &instrs[i..]
        {
            if src == d && sum_args == &[*e] && private(*d) && private(*e) {
                let rescale =
                    matches!(rest.first(), Some((_, Instr::Rescale { slot })) if slot == dst);
                let mut name = names[*n0].clone();
                for n in [n1, n2] {
                    if *n != *n0 {
                        name = format!("{name}+{}", names[*n]);
                    }
                }
                names.push(name);
                out.push((
                    names.len() - 1,
                    Instr::Fused {
                        args: args.clone(),
                        groups: groups.clone(),
                        bias: bias.clone(),
                        quad: quad.clone(),
                        parts: parts(groups, *outputs, rows),
                        rows: rows.clone(),
                        dst: *dst,
                        rescale,
                    },
                ));
                i += if rescale { 4 } else { 3 };
                continue;
            }
        }
        out.push(instrs[i].clone());
        i += 1;
    }
    out
}

/// The error of a back end other than the batched one handed a fused chain: those read
/// [`Plan::schedule`]`(false)`, which has none.
pub(crate) fn fused_is_batched() -> Error {
    Error::Model(
        "a fused chain is the batched back end's; this back end runs the plain schedule".into(),
    )
}

/// The sum rows grouped by the dense groups they read: rows that share a group (through any
/// chain of rows) are one part. Pooling windows that do not overlap give one part per window
/// position; overlapping ones may give a single part (no saving, still correct).
fn parts(groups: &[Group], outputs: usize, rows: &[SumRow]) -> Vec<Part> {
    let mut group_of = vec![0usize; outputs];
    for (g, grp) in groups.iter().enumerate() {
        for (j, _) in &grp.outputs {
            group_of[*j as usize] = g;
        }
    }
    fn root(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..groups.len()).collect();
    for r in rows {
        let a = root(&mut parent, group_of[r.terms[0].0 as usize]);
        for t in &r.terms[1..] {
            let b = root(&mut parent, group_of[t.0 as usize]);
            parent[b] = a;
        }
    }
    let mut part_of: HashMap<usize, usize> = HashMap::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut seen = vec![false; groups.len()];
    for (ri, r) in rows.iter().enumerate() {
        let k = root(&mut parent, group_of[r.terms[0].0 as usize]);
        let p = *part_of.entry(k).or_insert_with(|| {
            parts.push(Part {
                groups: Vec::new(),
                rows: Vec::new(),
            });
            parts.len() - 1
        });
        parts[p].rows.push(ri as u32);
        for t in &r.terms {
            let g = group_of[t.0 as usize];
            if !seen[g] {
                seen[g] = true;
                parts[p].groups.push(g as u32);
            }
        }
    }
    parts
}

impl Instr {
    /// The slots an instruction reads.
    fn reads(&self) -> Vec<usize> {
        match self {
            Instr::Rescale { slot } => vec![*slot],
            Instr::Align { src, .. } | Instr::Quad { src, .. } | Instr::Poly { src, .. } => {
                vec![*src]
            }
            Instr::Sum { args, .. } | Instr::Dense { args, .. } | Instr::Fused { args, .. } => {
                args.clone()
            }
            Instr::Mul { a, b, .. } => vec![*a, *b],
        }
    }
}

/// How far a carried fold may stray from 1. A ciphertext holds value / fold, so a small fold
/// inflates what the modulus must hold (beyond what the calibration measures on the values)
/// and, carried into a polynomial's coefficients as c·f^k, rounds them away at the scale they
/// are encoded at. Beyond this the fold is applied (a dense map, or one product and a level).
const MAX_FOLD: f64 = 64.0;

fn fold_ok(f: f64, power: i32) -> bool {
    let m = f.abs().powi(power);
    m.is_finite() && (1.0 / MAX_FOLD..=MAX_FOLD).contains(&m)
}

/// Largest integer multiplier of a free sum: an integer product costs no level (no scale), and
/// it multiplies that term's noise, so large ones are left to a dense map.
const MAX_SUM_MULTIPLIER: f64 = 1024.0;

/// `c / g` as an integer up to [`MAX_SUM_MULTIPLIER`], if it is one up to rounding (folds of
/// pooling windows of different sizes, or 1 and 1/16 in a residual sum, differ by such ratios).
fn integer_ratio(c: f64, g: f64) -> Option<i64> {
    let r = c / g;
    let k = r.round();
    ((r - k).abs() <= 1e-9 * k.abs().max(1.0) && k != 0.0 && k.abs() <= MAX_SUM_MULTIPLIER)
        .then_some(k as i64)
}

impl Planner<'_> {
    fn emit(&mut self, i: Instr) {
        self.instrs.push((self.node, i));
    }

    fn new_slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    fn state(&self, v: ValueId) -> Result<State> {
        self.states
            .get(v.0)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Model(format!("value {:?} is used before it is computed", v)))
    }

    fn set(&mut self, v: ValueId, s: State) {
        self.value_depths[v.0].get_or_insert(s.depth);
        self.states[v.0] = Some(s);
    }

    /// Pays the rescale `s` owes (relinearizing first).
    fn pay(&mut self, s: &mut State) {
        if s.pending {
            self.emit(Instr::Rescale { slot: s.slot });
            self.counts.rescales += s.fold.len();
            self.counts.relinearizations += s.fold.len();
            s.pending = false;
        }
    }

    /// Pays the rescale value `v` owes, for every later reader.
    fn rescale(&mut self, v: ValueId) -> Result<()> {
        let mut s = self.state(v)?;
        if s.pending {
            self.pay(&mut s);
            self.set(v, s);
        }
        Ok(())
    }

    /// Brings every input to one depth (the deepest) and, unless `allow_pending`, pays
    /// deferred rescales. Shallower inputs become fresh aligned copies (their folds applied);
    /// returns the states to compute from.
    fn align(&mut self, inputs: &[ValueId], allow_pending: bool) -> Result<Vec<State>> {
        let states: Vec<State> = inputs
            .iter()
            .map(|&v| self.state(v))
            .collect::<Result<_>>()?;
        let depth = states.iter().map(|s| s.depth).max().unwrap_or(0);
        let pending = allow_pending
            && states
                .iter()
                .filter(|s| s.depth == depth)
                .all(|s| s.pending);
        let mut out = Vec::with_capacity(inputs.len());
        for &v in inputs {
            let s = self.state(v)?;
            if s.depth == depth && s.pending == pending {
                out.push(s);
                continue;
            }
            self.rescale(v)?;
            let s = self.state(v)?;
            if s.depth == depth && !pending {
                out.push(s);
                continue;
            }
            let dst = self.new_slot();
            self.emit(Instr::Align {
                src: s.slot,
                dst,
                factors: s.fold.clone(),
                depth,
                pending,
            });
            self.counts.rescales += if pending { 0 } else { s.fold.len() };
            out.push(State {
                slot: dst,
                fold: vec![1.0; s.fold.len()],
                depth,
                pending,
            });
        }
        Ok(out)
    }

    /// Applies `v`'s fold (one plaintext product and a level) if any feature's fold, raised to
    /// `power`, is out of bounds; returns the state to compute from.
    fn bounded(&mut self, v: ValueId, power: i32) -> Result<State> {
        self.rescale(v)?;
        let s = self.state(v)?;
        if s.fold.iter().all(|&f| fold_ok(f, power)) {
            return Ok(s);
        }
        let dst = self.new_slot();
        self.emit(Instr::Align {
            src: s.slot,
            dst,
            factors: s.fold.clone(),
            depth: s.depth + 1,
            pending: false,
        });
        self.counts.rescales += s.fold.len();
        let s = State {
            slot: dst,
            fold: vec![1.0; s.fold.len()],
            depth: s.depth + 1,
            pending: false,
        };
        // Later readers take the applied copy too: the same value, one level deeper.
        self.set(v, s.clone());
        Ok(s)
    }

    fn lower_node(
        &mut self,
        name: &str,
        op: &Op,
        inputs: &[ValueId],
        output: ValueId,
        terminal: bool,
    ) -> Result<()> {
        let out_shape = self.graph.shape(output).to_vec();
        if let Some(rows) = affine_rows(self.graph, op, inputs, &out_shape) {
            let window = Window::of(op, self.graph.shape(inputs[0]), &out_shape);
            return self.affine(name, inputs, rows, output, terminal, window);
        }
        match op {
            Op::Mul => self.mul(inputs, output, &out_shape),
            Op::Poly(c) => self.poly(name, inputs[0], c, output),
            _ => Err(Error::UnsupportedOp {
                node: name.to_string(),
                op: op.kind().to_string(),
                hint: "has no encrypted lowering".into(),
            }),
        }
    }

    fn affine(
        &mut self,
        name: &str,
        inputs: &[ValueId],
        rows: Vec<Row>,
        output: ValueId,
        terminal: bool,
        window: Option<Window>,
    ) -> Result<()> {
        // Distinct inputs (Add(x, x) reads one value twice).
        let mut uniq: Vec<ValueId> = Vec::new();
        for v in inputs {
            if !uniq.contains(v) {
                uniq.push(*v);
            }
        }
        let remap = |flat: u32, graph: &Graph| -> u32 {
            // Flat index over `inputs` → flat index over `uniq`.
            let mut off = 0u32;
            for v in inputs {
                let n = features(graph.shape(*v)) as u32;
                if flat < off + n {
                    let mut uoff = 0u32;
                    for u in &uniq {
                        if u == v {
                            return uoff + flat - off;
                        }
                        uoff += features(graph.shape(*u)) as u32;
                    }
                }
                off += n;
            }
            flat
        };
        let rows: Vec<Row> = if uniq.len() == inputs.len() {
            rows
        } else {
            rows.into_iter()
                .map(|r| Row {
                    terms: r
                        .terms
                        .into_iter()
                        .map(|(i, w)| (remap(i, self.graph), w))
                        .collect(),
                    bias: r.bias,
                })
                .collect()
        };
        let states = self.align(&uniq, true)?;
        let folds: Vec<f64> = states.iter().flat_map(|s| s.fold.iter().copied()).collect();
        // A free sum when each row's nonzero coefficients are integer multiples of the smallest.
        let sum: Option<Vec<(SumRow, f64)>> = rows
            .iter()
            .map(|r| {
                let coef: Vec<(u32, f64)> = r
                    .terms
                    .iter()
                    .map(|&(i, w)| (i, w * folds[i as usize]))
                    .filter(|&(_, c)| c != 0.0)
                    .collect();
                let g = coef.iter().map(|c| c.1.abs()).reduce(f64::min)?;
                let terms = coef
                    .iter()
                    .map(|&(i, c)| integer_ratio(c, g).map(|k| (i, k)))
                    .collect::<Option<Vec<_>>>()?;
                Some((
                    SumRow {
                        terms,
                        add: r.bias / g,
                    },
                    g,
                ))
            })
            .collect();
        let sum = sum.filter(|rows| rows.iter().all(|(_, g)| fold_ok(*g, 1)));
        let args: Vec<usize> = states.iter().map(|s| s.slot).collect();
        let depth = states[0].depth;
        if let Some(sum) = sum {
            let dst = self.new_slot();
            let pending = states[0].pending;
            let (rows, fold): (Vec<SumRow>, Vec<f64>) = sum.into_iter().unzip();
            self.emit(Instr::Sum {
                args,
                rows,
                dst,
                window,
            });
            self.counts.free_ops += 1;
            self.set(
                output,
                State {
                    slot: dst,
                    fold,
                    depth,
                    pending,
                },
            );
            return Ok(());
        }
        if rows.iter().any(|r| r.terms.is_empty()) {
            return Err(Error::Model(format!(
                "node {name:?}: an output feature reads no input (a constant), which the encrypted lowering does not produce"
            )));
        }
        // A dense map: deferred rescales paid first.
        let mut states = states;
        for (s, v) in states.iter_mut().zip(&uniq) {
            // An input's own tensor is paid for every reader; an aligned copy only here.
            let own = s.slot == self.state(*v)?.slot;
            self.pay(s);
            if own {
                self.set(*v, s.clone());
            }
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut by_inputs: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut bias = Vec::with_capacity(rows.len());
        for (j, r) in rows.iter().enumerate() {
            let key: Vec<u32> = r.terms.iter().map(|t| t.0).collect();
            let ws: Vec<f64> = r
                .terms
                .iter()
                .map(|&(i, w)| w * folds[i as usize])
                .collect();
            let g = *by_inputs.entry(key.clone()).or_insert_with(|| {
                groups.push(Group {
                    inputs: key,
                    outputs: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].outputs.push((j as u32, ws));
            bias.push(r.bias);
        }
        let dst = self.new_slot();
        self.emit(Instr::Dense {
            args,
            groups,
            bias,
            outputs: rows.len(),
            dst,
            terminal,
            window,
        });
        self.counts.dense_maps += 1;
        self.counts.rescales += rows.len();
        self.set(
            output,
            State {
                slot: dst,
                fold: vec![1.0; rows.len()],
                depth: depth + 1,
                pending: false,
            },
        );
        Ok(())
    }

    fn mul(&mut self, inputs: &[ValueId], output: ValueId, out: &[usize]) -> Result<()> {
        let (a, b) = (inputs[0], inputs[1]);
        let pairs: Vec<(u32, u32)> = broadcast_map(out, self.graph.shape(a))
            .into_iter()
            .zip(broadcast_map(out, self.graph.shape(b)))
            .collect();
        let uniq: Vec<ValueId> = if a == b { vec![a] } else { vec![a, b] };
        for &v in &uniq {
            self.bounded(v, 1)?;
        }
        let states = self.align(&uniq, false)?;
        let (sa, sb) = (&states[0], states.last().unwrap_or(&states[0]));
        let fold = pairs
            .iter()
            .map(|&(i, j)| sa.fold[i as usize] * sb.fold[j as usize])
            .collect();
        let dst = self.new_slot();
        self.emit(Instr::Mul {
            a: sa.slot,
            b: sb.slot,
            pairs,
            dst,
        });
        self.counts.products += out.iter().product::<usize>();
        self.set(
            output,
            State {
                slot: dst,
                fold,
                depth: sa.depth + 1,
                pending: true,
            },
        );
        Ok(())
    }

    fn poly(&mut self, name: &str, x: ValueId, c: &[f64], output: ValueId) -> Result<()> {
        let degree = c.iter().rposition(|&v| v != 0.0).unwrap_or(0);
        if degree == 0 {
            return Err(Error::Model(format!(
                "node {name:?}: a constant polynomial; the encrypted lowering does not produce constants"
            )));
        }
        let s = self.bounded(x, degree as i32)?;
        let dst = self.new_slot();
        let n = s.fold.len();
        if degree == QUADRATIC {
            let (a, b, k) = (c[2], c[1], c[0]);
            let rows = s
                .fold
                .iter()
                .map(|&f| (b / (a * f), k / (a * f * f)))
                .collect();
            self.emit(Instr::Quad {
                src: s.slot,
                rows,
                dst,
            });
            self.counts.products += n;
            self.set(
                output,
                State {
                    slot: dst,
                    fold: s.fold.iter().map(|f| a * f * f).collect(),
                    depth: s.depth + 1,
                    pending: true,
                },
            );
        } else {
            let depth = s.depth + CkksContext::polynomial_depth(degree);
            let coeffs = s
                .fold
                .iter()
                .map(|&f| {
                    c[..=degree]
                        .iter()
                        .enumerate()
                        .map(|(k, ck)| ck * f.powi(k as i32))
                        .collect()
                })
                .collect();
            self.emit(Instr::Poly {
                src: s.slot,
                coeffs,
                depth,
                dst,
            });
            self.counts.products += n * (degree + degree.ilog2() as usize);
            self.set(
                output,
                State {
                    slot: dst,
                    fold: vec![1.0; n],
                    depth,
                    pending: false,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled LeNet-1's graph, run by the interpreter, against the network it was built
    /// from: Python's `Model.lenet1().forward` runs the network, `infer` the interpreter, and
    /// both claim the same model.
    #[test]
    fn lenet1_graph_computes_what_its_network_computes() {
        use rand::{Rng, SeedableRng};
        let net = crate::nn::weights::pretrained_lenet1().unwrap();
        let graph = sequential_graph(&net, &[1, 28, 28]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let x =
            crate::nn::Tensor::from_shape_fn(vec![9, 1, 28, 28], |_| rng.random_range(0.0..1.0));
        let want = net.forward_par(&x, 4).unwrap();
        let got = graph.run(&[x]).unwrap().swap_remove(0);
        assert_eq!(got.shape(), want.shape());
        let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            top > 1.0 && err <= 1e-12 * top,
            "max error {err:e} at |logit| <= {top}"
        );
    }

    #[test]
    fn broadcast_map_right_aligns() {
        // [2, 3] against [3]: the row repeats; against [2, 1]: the column repeats.
        assert_eq!(broadcast_map(&[2, 3], &[3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_map(&[2, 3], &[2, 1]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_map(&[2, 3], &[2, 3]), vec![0, 1, 2, 3, 4, 5]);
        assert!(crate::graph::broadcast(&[2, 3], &[3]).is_some());
    }

    #[test]
    fn parts_join_rows_that_share_a_group() {
        let group = |outs: &[u32]| Group {
            inputs: vec![0],
            outputs: outs.iter().map(|&j| (j, vec![1.0])).collect(),
        };
        let row = |terms: &[u32]| SumRow {
            terms: terms.iter().map(|&i| (i, 1)).collect(),
            add: 0.0,
        };
        // Groups of outputs {0, 1}, {2}, {3}, {4}. Row 0 reads outputs 0 and 2 (groups 0 and
        // 1), row 2 output 1 (group 0 again): one part. Row 1 reads output 4 (group 3). Group
        // 2 is read by no row, so no part computes it.
        let groups = [group(&[0, 1]), group(&[2]), group(&[3]), group(&[4])];
        let rows = [row(&[0, 2]), row(&[4]), row(&[1])];
        let p = parts(&groups, 5, &rows);
        let got: Vec<(Vec<u32>, Vec<u32>)> = p.into_iter().map(|p| (p.rows, p.groups)).collect();
        assert_eq!(got, vec![(vec![0, 2], vec![0, 1]), (vec![1], vec![3])]);
    }
}
