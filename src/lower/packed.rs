//! The CKKS packed back end of a [`Plan`]: one sample, each stored tensor's features at
//! (ciphertext, slot) positions; rotations bring them together (latency, not throughput).
//!
//! [`Schedule`] places every tensor once per plan and slot count, so the key owner knows the
//! Galois keys before any data ([`packed_rotation_steps`]):
//! * a windowed map (convolution, pooling) on a grid puts output channel `o` in a ciphertext of
//!   its own, position `(oy, ox)` at the slot of its window's anchor in the input grid: the grid
//!   strides grow by the window's stride (no data moves) and each kernel tap is one rotation of
//!   each input ciphertext, shared by every position and output channel;
//! * a map whose outputs each start from a different input (layout changes, element-wise sums,
//!   carried factors) keeps its first input's positions;
//! * any other map (a dense layer) gives each output a ciphertext of its own, slot 0: the
//!   inputs are multiplied by masks (the weights at the input slots, zero elsewhere) and a
//!   rotate-and-sum collects them;
//! * products, polynomials and alignments work slot-wise and keep positions.
//!
//! A slot that holds no feature carries garbage that never reaches a feature: a coefficient
//! that is the same at every feature of an output ciphertext is applied as a scalar (to the
//! garbage too, which only lands on garbage), any other as a mask that is zero where no
//! feature is. What this cannot do without a level the plan did not budget (sums of windows of
//! different sizes, broadcast products) is an [`Error::UnsupportedOp`] naming the node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rayon::prelude::*;

use super::ckks::{
    align_one, check_input, dense_scale, drive, get, int_combination, polynomials, products,
    rescale_all, take, unfold,
};
use super::{Instr, LayerTiming, Plan, Window};
use crate::ckks::CkksContext;
use crate::progress::Progress;
use crate::rlwe::{Ciphertext, GaloisKeys, RelinKey};
use crate::tensor::{packed_input_positions, CipherTensor, Layout};
use crate::{Error, Result};

type Tensor = Vec<Arc<Ciphertext>>;

/// Positions of a stored tensor: `cts` ciphertexts, feature `f` at `pos[f]`.
#[derive(Clone, Debug)]
struct Lay {
    cts: usize,
    pos: Vec<(u32, u32)>,
}

impl Lay {
    /// For each ciphertext, its features' slots and `value(feature)` there.
    fn per_ct(&self, value: impl Fn(usize) -> f64) -> Vec<Vec<(u32, f64)>> {
        let mut out = vec![Vec::new(); self.cts];
        for (f, &(c, s)) in self.pos.iter().enumerate() {
            out[c as usize].push((s, value(f)));
        }
        out
    }
}

/// A coefficient on one ciphertext: the same at every feature, or per slot (zero elsewhere).
#[derive(Clone, Debug)]
enum Coef {
    Scalar(f64),
    Mask(Vec<(u32, f64)>),
}

impl Coef {
    /// The coefficient of `entries` (slot, value) over a ciphertext whose features sit at
    /// `valid`; `None` when it is zero everywhere.
    fn of(valid: &[u32], entries: &HashMap<u32, f64>) -> Option<Coef> {
        let first = *entries.get(valid.first()?).unwrap_or(&0.0);
        if first != 0.0 && valid.iter().all(|s| entries.get(s) == Some(&first)) {
            return Some(Coef::Scalar(first));
        }
        let mask: Vec<(u32, f64)> = valid
            .iter()
            .filter_map(|s| entries.get(s).filter(|v| **v != 0.0).map(|&v| (*s, v)))
            .collect();
        (!mask.is_empty()).then_some(Coef::Mask(mask))
    }

    /// [`Self::of`] for values given per feature.
    fn from_values(vals: &[(u32, f64)]) -> Option<Coef> {
        let valid: Vec<u32> = vals.iter().map(|v| v.0).collect();
        Coef::of(&valid, &vals.iter().copied().collect())
    }

    fn scalar(&self) -> Option<f64> {
        match self {
            Coef::Scalar(v) => Some(*v),
            Coef::Mask(_) => None,
        }
    }
}

/// One term of an output ciphertext: input ciphertext (among the map's inputs, concatenated),
/// rotation, coefficient.
#[derive(Clone, Debug)]
struct Term {
    input: u32,
    rot: i64,
    coef: Coef,
}

/// How one output ciphertext of a map is made: `Σ coef · rotate(input, rot)`, then (dense
/// maps) a rotate-and-sum over `width` slots, the rescale, and the bias.
#[derive(Clone, Debug)]
struct OutCt {
    terms: Vec<Term>,
    width: usize,
    bias: Option<Coef>,
}

/// What the packed layout does for one instruction of the plan.
#[derive(Clone, Debug)]
enum Step {
    /// Rescale (and relinearize), per ciphertext.
    Rescale,
    /// Align: one factor per ciphertext.
    Scale(Vec<Option<Coef>>),
    /// A sum or a dense map: the rotations of each input ciphertext, then the outputs.
    Map {
        rotations: Vec<Vec<i64>>,
        outs: Vec<OutCt>,
    },
    /// Products of pairs of input ciphertexts.
    Mul(Vec<(u32, u32)>),
    /// `x² + b·x + c` per ciphertext: `b`, `c`.
    Quad(Vec<(Option<Coef>, Option<Coef>)>),
    /// One polynomial per ciphertext.
    Poly(Vec<Vec<f64>>),
}

/// The placement of every tensor of a plan in the packed layout, and the step of each
/// instruction.
#[derive(Clone, Debug)]
struct Schedule {
    input: Lay,
    steps: Vec<Step>,
    output: Lay,
    /// The output's carried factor, per ciphertext.
    output_fold: Vec<f64>,
    rotations: BTreeSet<i64>,
}

fn unsupported(node: &str, op: &str, why: &str) -> Error {
    Error::UnsupportedOp {
        node: node.to_string(),
        op: op.to_string(),
        hint: format!("{why}; use the batched layout"),
    }
}

impl Schedule {
    fn new(plan: &Plan, slots: usize) -> Result<Self> {
        let input = Lay {
            pos: packed_input_positions(plan.input_shape(), slots)?,
            cts: 0,
        };
        let input = Lay {
            cts: input
                .pos
                .iter()
                .map(|p| p.0 as usize + 1)
                .max()
                .unwrap_or(0),
            ..input
        };
        let mut lays: Vec<Option<Lay>> = vec![None; plan.slots];
        lays[0] = Some(input.clone());
        let mut steps = Vec::with_capacity(plan.instrs.len());
        let mut rotations = BTreeSet::new();
        let lay = |lays: &[Option<Lay>], s: usize| -> Result<Lay> {
            lays[s]
                .clone()
                .ok_or_else(|| Error::Model(format!("plan slot {s} read before it is written")))
        };
        for (node, ins) in &plan.instrs {
            let name = &plan.node_names[*node];
            let step = match ins {
                Instr::Rescale { .. } => Step::Rescale,
                Instr::Align {
                    src, dst, factors, ..
                } => {
                    let l = lay(&lays, *src)?;
                    let coefs = l
                        .per_ct(|f| factors[f])
                        .iter()
                        .map(|v| Coef::from_values(v))
                        .collect();
                    lays[*dst] = Some(l);
                    Step::Scale(coefs)
                }
                Instr::Sum {
                    args,
                    rows,
                    dst,
                    window,
                } => {
                    let rows: Vec<(Vec<(u32, f64)>, f64)> = rows
                        .iter()
                        .map(|r| (r.terms.iter().map(|&(i, k)| (i, k as f64)).collect(), r.add))
                        .collect();
                    let ins: Vec<Lay> =
                        args.iter().map(|&a| lay(&lays, a)).collect::<Result<_>>()?;
                    let (out, l) = map(name, &ins, &rows, *window, slots, true)?;
                    lays[*dst] = Some(l);
                    out
                }
                Instr::Dense {
                    args,
                    groups,
                    bias,
                    outputs,
                    dst,
                    window,
                    ..
                } => {
                    let rows = super::dense_rows(groups, bias, *outputs);
                    let ins: Vec<Lay> =
                        args.iter().map(|&a| lay(&lays, a)).collect::<Result<_>>()?;
                    let (out, l) = map(name, &ins, &rows, *window, slots, false)?;
                    lays[*dst] = Some(l);
                    out
                }
                Instr::Mul { a, b, pairs, dst } => {
                    let (la, lb) = (lay(&lays, *a)?, lay(&lays, *b)?);
                    let mut cts: Vec<(u32, u32)> = Vec::new();
                    let mut index: HashMap<(u32, u32), u32> = HashMap::new();
                    let mut pos = Vec::with_capacity(pairs.len());
                    for &(i, j) in pairs {
                        let ((ca, sa), (cb, sb)) = (la.pos[i as usize], lb.pos[j as usize]);
                        if sa != sb {
                            return Err(unsupported(
                                name,
                                "Mul",
                                "the packed layout multiplies features at the same slot only (not a broadcast)",
                            ));
                        }
                        let k = *index.entry((ca, cb)).or_insert_with(|| {
                            cts.push((ca, cb));
                            cts.len() as u32 - 1
                        });
                        pos.push((k, sa));
                    }
                    lays[*dst] = Some(distinct(
                        name,
                        "Mul",
                        Lay {
                            cts: cts.len(),
                            pos,
                        },
                    )?);
                    Step::Mul(cts)
                }
                Instr::Quad { src, rows, dst } => {
                    let l = lay(&lays, *src)?;
                    let b = l.per_ct(|f| rows[f].0);
                    let c = l.per_ct(|f| rows[f].1);
                    let coefs = b
                        .iter()
                        .zip(&c)
                        .map(|(b, c)| (Coef::from_values(b), Coef::from_values(c)))
                        .collect();
                    lays[*dst] = Some(l);
                    Step::Quad(coefs)
                }
                Instr::Fused { .. } => return Err(super::fused_is_batched()),
                Instr::Poly {
                    src, coeffs, dst, ..
                } => {
                    let l = lay(&lays, *src)?;
                    let mut per: Vec<Option<&Vec<f64>>> = vec![None; l.cts];
                    for (f, &(c, _)) in l.pos.iter().enumerate() {
                        match per[c as usize] {
                            Some(p) if p != &coeffs[f] => {
                                return Err(unsupported(
                                    name,
                                    "Poly",
                                    "features in one ciphertext carry different polynomials",
                                ))
                            }
                            _ => per[c as usize] = Some(&coeffs[f]),
                        }
                    }
                    let polys = per
                        .into_iter()
                        .map(|p| p.cloned().unwrap_or_else(|| vec![0.0]))
                        .collect();
                    lays[*dst] = Some(l);
                    Step::Poly(polys)
                }
            };
            if let Step::Map { rotations: r, outs } = &step {
                rotations.extend(r.iter().flatten().copied());
                for o in outs {
                    rotations.extend(
                        CkksContext::power_of_two_steps(o.width)
                            .into_iter()
                            .filter(|_| o.width > 1),
                    );
                }
            }
            steps.push(step);
        }
        let output = lay(&lays, plan.output_slot)?;
        let mut output_fold = vec![None; output.cts];
        for (f, &(c, _)) in output.pos.iter().enumerate() {
            let want = plan.output_fold[f];
            match output_fold[c as usize] {
                Some(g) if g != want => {
                    return Err(unsupported(
                        plan.node_names.last().map_or("output", |s| s),
                        "output",
                        "output features in one ciphertext carry different factors",
                    ))
                }
                _ => output_fold[c as usize] = Some(want),
            }
        }
        Ok(Schedule {
            input,
            steps,
            output,
            output_fold: output_fold.into_iter().map(|f| f.unwrap_or(1.0)).collect(),
            rotations,
        })
    }
}

/// Errors unless no two features share a position.
fn distinct(name: &str, op: &str, l: Lay) -> Result<Lay> {
    let mut seen = std::collections::HashSet::with_capacity(l.pos.len());
    if l.pos.iter().all(|p| seen.insert(*p)) {
        Ok(l)
    } else {
        Err(unsupported(
            name,
            op,
            "two different features would share a slot (a broadcast)",
        ))
    }
}

/// Per channel its ciphertext and the slot of `(0, 0)`, then the row and column strides.
type Grid = (Vec<(u32, i64)>, i64, i64);

/// The grid of a `[C, H, W]` tensor; `None` unless every position is `base + y·rs + x·cs`.
fn grid(l: &Lay, [c, h, w]: [usize; 3]) -> Option<Grid> {
    if l.pos.len() != c * h * w || c * h * w == 0 {
        return None;
    }
    let at = |ch: usize, y: usize, x: usize| l.pos[(ch * h + y) * w + x];
    let cs = if w > 1 {
        at(0, 0, 1).1 as i64 - at(0, 0, 0).1 as i64
    } else {
        1
    };
    let rs = if h > 1 {
        at(0, 1, 0).1 as i64 - at(0, 0, 0).1 as i64
    } else {
        cs * w as i64
    };
    let bases: Vec<(u32, i64)> = (0..c)
        .map(|ch| (at(ch, 0, 0).0, at(ch, 0, 0).1 as i64))
        .collect();
    for (ch, &(ct, base)) in bases.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let (pc, ps) = at(ch, y, x);
                if pc != ct || ps as i64 != base + y as i64 * rs + x as i64 * cs {
                    return None;
                }
            }
        }
    }
    Some((bases, rs, cs))
}

/// Places the outputs of a linear map (`rows`: terms over the inputs' concatenated features,
/// and a bias) and plans how each output ciphertext is made. `sum`: integer coefficients that
/// must cost no level (scalars only, no rotate-and-sum).
fn map(
    name: &str,
    ins: &[Lay],
    rows: &[(Vec<(u32, f64)>, f64)],
    window: Option<Window>,
    slots: usize,
    sum: bool,
) -> Result<(Step, Lay)> {
    let op = if sum { "sum" } else { "dense map" };
    // The inputs' features and ciphertexts, concatenated.
    let mut pos: Vec<(u32, u32)> = Vec::new();
    let mut n_in = 0u32;
    for l in ins {
        pos.extend(l.pos.iter().map(|&(c, s)| (c + n_in, s)));
        n_in += l.cts as u32;
    }
    let wrap = |r: i64| r.rem_euclid(slots as i64);
    // Placement (a): windows on a grid.
    let placed: Option<Lay> = window.filter(|_| ins.len() == 1).and_then(|w| {
        let (bases, rs, cs) = grid(&ins[0], w.input)?;
        let [o, oh, ow] = w.output;
        let anchor = (bases[0].1 + w.offset[0] * rs + w.offset[1] * cs).max(0);
        let (sr, sc) = (w.stride[0] as i64 * rs, w.stride[1] as i64 * cs);
        let mut p = Vec::with_capacity(o * oh * ow);
        for ch in 0..o {
            for y in 0..oh as i64 {
                for x in 0..ow as i64 {
                    let s = anchor + y * sr + x * sc;
                    if s < 0 || s >= slots as i64 {
                        return None;
                    }
                    p.push((ch as u32, s as u32));
                }
            }
        }
        Some(Lay { cts: o, pos: p })
    });
    // (b): each output at its first input's position.
    let placed = placed.or_else(|| {
        let mut seen = std::collections::HashSet::new();
        let firsts: Option<Vec<u32>> = rows
            .iter()
            .map(|r| r.0.first().map(|t| t.0).filter(|&i| seen.insert(i)))
            .collect();
        let firsts = firsts?;
        // Compact the ciphertexts the outputs use.
        let mut ids: HashMap<u32, u32> = HashMap::new();
        let p: Vec<(u32, u32)> = firsts
            .iter()
            .map(|&i| {
                let (c, s) = pos[i as usize];
                let n = ids.len() as u32;
                (*ids.entry(c).or_insert(n), s)
            })
            .collect();
        Some(Lay {
            cts: ids.len(),
            pos: p,
        })
    });
    if let Some(out) = placed {
        let out = distinct(name, op, out)?;
        let mut per_ct: Vec<Vec<usize>> = vec![Vec::new(); out.cts];
        for (j, &(c, _)) in out.pos.iter().enumerate() {
            per_ct[c as usize].push(j);
        }
        let mut rotations: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); n_in as usize];
        let outs = per_ct
            .iter()
            .map(|feats| {
                let valid: Vec<u32> = feats.iter().map(|&j| out.pos[j].1).collect();
                let mut entries: HashMap<(u32, i64), HashMap<u32, f64>> = HashMap::new();
                let mut bias = HashMap::new();
                for &j in feats {
                    let p = out.pos[j].1;
                    for &(i, w) in &rows[j].0 {
                        let (c, q) = pos[i as usize];
                        let r = wrap(q as i64 - p as i64);
                        *entries.entry((c, r)).or_default().entry(p).or_default() += w;
                    }
                    bias.insert(p, rows[j].1);
                }
                let mut keys: Vec<(u32, i64)> = entries.keys().copied().collect();
                keys.sort_unstable();
                let mut terms = Vec::new();
                for (c, r) in keys {
                    let Some(coef) = Coef::of(&valid, &entries[&(c, r)]) else {
                        continue;
                    };
                    if sum && coef.scalar().is_none_or(|k| k.fract() != 0.0) {
                        return Err(unsupported(
                            name,
                            op,
                            "the packed layout sums windows of one size only (no level for masks)",
                        ));
                    }
                    if r != 0 {
                        rotations[c as usize].insert(r);
                    }
                    terms.push(Term {
                        input: c,
                        rot: r,
                        coef,
                    });
                }
                Ok(OutCt {
                    terms,
                    width: 1,
                    bias: Coef::of(&valid, &bias),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rotations = rotations
            .into_iter()
            .map(|s| s.into_iter().collect())
            .collect();
        return Ok((Step::Map { rotations, outs }, out));
    }
    // (c): each output alone at slot 0, masks and a rotate-and-sum.
    if sum {
        return Err(unsupported(
            name,
            op,
            "the packed layout cannot gather a sum into one slot without a level",
        ));
    }
    let width = pos.iter().map(|p| p.1 as usize + 1).max().unwrap_or(1);
    if width > slots {
        return Err(Error::TooManyValues { got: width, slots });
    }
    let outs = rows
        .iter()
        .map(|(terms, b)| {
            let mut by_ct: HashMap<u32, HashMap<u32, f64>> = HashMap::new();
            for &(i, w) in terms {
                let (c, s) = pos[i as usize];
                *by_ct.entry(c).or_default().entry(s).or_default() += w;
            }
            let mut cts: Vec<u32> = by_ct.keys().copied().collect();
            cts.sort_unstable();
            let terms = cts
                .into_iter()
                .filter_map(|c| {
                    let e = &by_ct[&c];
                    let coef = if width == 1 {
                        Coef::Scalar(*e.get(&0)?)
                    } else {
                        let mut m: Vec<(u32, f64)> = e.iter().map(|(&s, &v)| (s, v)).collect();
                        m.sort_unstable_by_key(|x| x.0);
                        Coef::Mask(m)
                    };
                    Some(Term {
                        input: c,
                        rot: 0,
                        coef,
                    })
                })
                .collect();
            OutCt {
                terms,
                width,
                bias: (*b != 0.0).then_some(Coef::Scalar(*b)),
            }
        })
        .collect();
    let out = Lay {
        cts: rows.len(),
        pos: (0..rows.len() as u32).map(|j| (j, 0)).collect(),
    };
    Ok((
        Step::Map {
            rotations: vec![Vec::new(); n_in as usize],
            outs,
        },
        out,
    ))
}

/// The Galois steps the packed back end needs for `plan` at `slots` slots (for
/// [`CkksContext::gen_galois_keys`]).
pub fn packed_rotation_steps(plan: &Plan, slots: usize) -> Result<Vec<i64>> {
    Ok(Schedule::new(plan, slots)?.rotations.into_iter().collect())
}

/// A [`Plan`] bound to a CKKS context and keys, in the packed layout: one sample per forward.
pub struct CkksPacked<'a> {
    plan: &'a Plan,
    ctx: &'a CkksContext,
    rk: &'a RelinKey,
    gk: &'a GaloisKeys,
    schedule: Schedule,
    output_bound: Option<f64>,
}

impl<'a> CkksPacked<'a> {
    /// Places the plan's tensors for `ctx`'s slots; an error if the chain is shorter than the
    /// plan's depth or an op has no packed form (naming the node). `gk` must hold
    /// [`packed_rotation_steps`].
    pub fn new(
        plan: &'a Plan,
        ctx: &'a CkksContext,
        rk: &'a RelinKey,
        gk: &'a GaloisKeys,
    ) -> Result<Self> {
        plan.check_fits(ctx, 1)?;
        Ok(Self {
            plan,
            ctx,
            rk,
            gk,
            schedule: Schedule::new(plan, ctx.slots())?,
            output_bound: None,
        })
    }

    /// See [`super::CkksBatched::with_output_bound`].
    pub fn with_output_bound(mut self, bound: f64) -> Self {
        self.output_bound = Some(bound.abs().max(1.0));
        self
    }

    /// Galois keys this back end uses.
    pub fn rotation_count(&self) -> usize {
        self.schedule.rotations.len()
    }

    /// Runs the plan on one sample encrypted by [`CipherTensor::encrypt_packed`].
    pub fn forward(&self, x: &CipherTensor) -> Result<CipherTensor> {
        self.forward_with(x, &Progress::none(), None)
    }

    /// [`Self::forward`], reporting each instruction to `progress` and the seconds per graph
    /// node to `timing`.
    pub fn forward_with(
        &self,
        x: &CipherTensor,
        progress: &Progress,
        timing: Option<&mut LayerTiming>,
    ) -> Result<CipherTensor> {
        let (ctx, plan, sch) = (self.ctx, self.plan, &self.schedule);
        if x.layout() != Layout::Packed || x.positions() != Some(&sch.input.pos[..]) {
            return Err(Error::InvalidInput(
                "the packed back end takes a sample encrypted by CipherTensor::encrypt_packed"
                    .into(),
            ));
        }
        let top = check_input(plan, ctx, x.shape(), x.ciphertexts().first())?;
        let input: Tensor = x.ciphertexts().iter().cloned().map(Arc::new).collect();
        let mut k = 0;
        let out = drive(plan, false, input, progress, timing, |ins, slots| {
            let step = &sch.steps[k];
            k += 1;
            self.exec(ins, step, top, slots)
        })?;
        let cts = out
            .into_par_iter()
            .zip(&sch.output_fold)
            .map(|(c, &f)| unfold(ctx, c, f))
            .collect::<Result<Vec<_>>>()?;
        CipherTensor::from_packed(plan.output_shape().to_vec(), cts, sch.output.pos.clone())
    }

    /// `c · coef`, the coefficient encoded at `const_scale`.
    fn times(&self, c: &Ciphertext, coef: &Coef, const_scale: f64) -> Result<Ciphertext> {
        match coef {
            Coef::Scalar(v) => self.ctx.multiply_scalar(c, *v, const_scale),
            Coef::Mask(m) => {
                let pt = self.ctx.encode(&spread(m), const_scale, c.level())?;
                self.ctx.multiply_plain(c, &pt)
            }
        }
    }

    /// `c + coef` at `c`'s scale.
    fn plus(&self, c: Ciphertext, coef: &Option<Coef>) -> Result<Ciphertext> {
        match coef {
            None => Ok(c),
            Some(Coef::Scalar(v)) => self.ctx.add_scalar(&c, *v),
            Some(Coef::Mask(m)) => {
                let pt = self.ctx.encode(&spread(m), c.scale(), c.level())?;
                self.ctx.add_plain(&c, &pt)
            }
        }
    }

    fn exec(
        &self,
        ins: &Instr,
        step: &Step,
        top: usize,
        slots: &mut [Option<Tensor>],
    ) -> Result<()> {
        let (ctx, rk) = (self.ctx, self.rk);
        match (ins, step) {
            (Instr::Rescale { slot }, Step::Rescale) => {
                let t = take(slots, *slot)?;
                slots[*slot] = Some(rescale_all(ctx, rk, &t)?);
            }
            (
                Instr::Align {
                    src,
                    dst,
                    depth,
                    pending,
                    ..
                },
                Step::Scale(coefs),
            ) => {
                let level = top - depth;
                let x = get(slots, *src)?;
                let out = x
                    .par_iter()
                    .zip(coefs)
                    .map(|(c, coef)| {
                        let coef = coef.clone().unwrap_or(Coef::Scalar(0.0));
                        align_one(ctx, c, level, *pending, |up, cs| self.times(up, &coef, cs))
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            (Instr::Sum { args, dst, .. }, Step::Map { rotations, outs }) => {
                let rotated = self.rotations(slots, args, rotations)?;
                let out = outs
                    .par_iter()
                    .map(|o| {
                        let terms: Vec<(&Ciphertext, i64)> = o
                            .terms
                            .iter()
                            .map(|t| {
                                (
                                    &*rotated[&(t.input, t.rot)],
                                    t.coef.scalar().unwrap_or(0.0) as i64,
                                )
                            })
                            .collect();
                        self.plus(int_combination(ctx, &terms)?, &o.bias)
                            .map(Arc::new)
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            (
                Instr::Dense {
                    args,
                    dst,
                    terminal,
                    ..
                },
                Step::Map { rotations, outs },
            ) => {
                let rotated = self.rotations(slots, args, rotations)?;
                let first = rotated
                    .values()
                    .next()
                    .ok_or_else(|| Error::Shape("a dense map of no inputs".into()))?;
                let bound = terminal.then_some(self.output_bound).flatten();
                let const_scale = dense_scale(ctx, first, bound)?;
                let out = outs
                    .par_iter()
                    .map(|o| {
                        let (scalars, masks): (Vec<&Term>, Vec<&Term>) =
                            o.terms.iter().partition(|t| t.coef.scalar().is_some());
                        let mut acc = if scalars.is_empty() {
                            None
                        } else {
                            let refs: Vec<&Ciphertext> = scalars
                                .iter()
                                .map(|t| &*rotated[&(t.input, t.rot)])
                                .collect();
                            let ws: Vec<f64> =
                                scalars.iter().filter_map(|t| t.coef.scalar()).collect();
                            Some(ctx.linear_combination(&refs, &ws, const_scale)?)
                        };
                        for t in masks {
                            let p =
                                self.times(&rotated[&(t.input, t.rot)], &t.coef, const_scale)?;
                            acc = Some(match acc {
                                None => p,
                                Some(a) => ctx.add(&a, &p)?,
                            });
                        }
                        let acc = acc.ok_or_else(|| {
                            Error::Model("a dense output of the packed layout reads nothing".into())
                        })?;
                        // Summed before the rescale: the key-switching noise of the rotations
                        // is then divided by the prime the rescale drops too.
                        let acc = if o.width > 1 {
                            let steps = CkksContext::power_of_two_steps(o.width);
                            ctx.rotate_and_add(&acc, &steps, self.gk)?
                        } else {
                            acc
                        };
                        self.plus(ctx.rescale(&acc)?, &o.bias).map(Arc::new)
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            (Instr::Mul { a, b, dst, .. }, Step::Mul(pairs)) => {
                let out = products(ctx, get(slots, *a)?, get(slots, *b)?, pairs)?;
                slots[*dst] = Some(out);
            }
            (Instr::Quad { src, dst, .. }, Step::Quad(coefs)) => {
                let x = get(slots, *src)?;
                let out = x
                    .par_iter()
                    .zip(coefs)
                    .map(|(c, (b, k))| {
                        let mut acc = ctx.square(c)?;
                        if let Some(b) = b {
                            let lin = self.times(c, b, acc.scale() / c.scale())?;
                            acc = ctx.add(&acc, &lin)?;
                        }
                        self.plus(acc, k).map(Arc::new)
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            (
                Instr::Poly {
                    src, depth, dst, ..
                },
                Step::Poly(coeffs),
            ) => {
                let out = polynomials(ctx, rk, get(slots, *src)?, coeffs, top - depth)?;
                slots[*dst] = Some(out);
            }
            _ => {
                return Err(Error::Model(
                    "the packed schedule does not match its plan".into(),
                ))
            }
        }
        Ok(())
    }

    /// The inputs of a map (concatenated) and their rotations, keyed by (input, step); a
    /// product not yet relinearized is relinearized first (rotations take two polynomials).
    fn rotations(
        &self,
        slots: &[Option<Tensor>],
        args: &[usize],
        steps: &[Vec<i64>],
    ) -> Result<HashMap<(u32, i64), Arc<Ciphertext>>> {
        let mut inputs: Vec<&Arc<Ciphertext>> = Vec::new();
        for &a in args {
            inputs.extend(get(slots, a)?.iter());
        }
        // Sums mix the inputs: all relinearized, or none.
        let relin = steps.iter().any(|s| !s.is_empty());
        let done = inputs
            .par_iter()
            .zip(steps)
            .enumerate()
            .map(|(i, (c, st))| {
                let c = if relin && c.size() == 3 {
                    Arc::new(self.ctx.relinearize(c, self.rk)?)
                } else {
                    (*c).clone()
                };
                let rs = if st.is_empty() {
                    Vec::new()
                } else {
                    self.ctx.rotate_many(&c, st, self.gk)?
                };
                let mut out = vec![((i as u32, 0), c)];
                out.extend(
                    st.iter()
                        .zip(rs)
                        .map(|(&s, r)| ((i as u32, s), Arc::new(r))),
                );
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(done.into_iter().flatten().collect())
    }
}

/// A mask's (slot, value) pairs as a slot vector.
fn spread(m: &[(u32, f64)]) -> Vec<f64> {
    let len = m.iter().map(|p| p.0 as usize + 1).max().unwrap_or(1);
    let mut v = vec![0.0; len];
    for &(s, x) in m {
        v[s as usize] = x;
    }
    v
}
