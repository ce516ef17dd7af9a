//! The CKKS batched back end of a [`Plan`]: one ciphertext per feature, one slot per sample.
//!
//! Every instruction runs in parallel over its output features; each group of dense outputs
//! that share inputs is one backend `linear_combinations` call. Tensors are vectors of shared
//! ciphertexts, so layout changes copy pointers, not polynomials, and a tensor is freed after
//! the last instruction that reads it. A caller's input can be borrowed ([`Ct::Input`]): the
//! Python binding keeps its tensor, so nothing is copied for the call.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::{Group, Instr, Plan, SumRow};
use crate::ckks::CkksContext;
use crate::progress::{Progress, ProgressEvent};
use crate::rlwe::{Ciphertext, RelinKey};
use crate::tensor::CipherTensor;
use crate::{Error, Result};

/// A ciphertext in a plan slot: one the plan computed (shared by the slot's readers), or one
/// of the caller's inputs, borrowed for the call.
#[derive(Clone, Debug)]
pub(super) enum Ct<'a> {
    /// Computed by the plan.
    Own(Arc<Ciphertext>),
    /// The caller's.
    Input(&'a Ciphertext),
}

impl Deref for Ct<'_> {
    type Target = Ciphertext;
    fn deref(&self) -> &Ciphertext {
        match self {
            Ct::Own(c) => c,
            Ct::Input(c) => c,
        }
    }
}

impl Ct<'_> {
    /// The ciphertext as a shared one (a borrowed input is copied: only when a plan returns
    /// its input unchanged).
    fn into_arc(self) -> Arc<Ciphertext> {
        match self {
            Ct::Own(c) => c,
            Ct::Input(c) => Arc::new(c.clone()),
        }
    }
}

type Tensor<'a> = Vec<Ct<'a>>;

/// What the shared steps return (the packed back end's tensors, too).
pub(super) type Computed = Vec<Arc<Ciphertext>>;

/// Computed ciphertexts as slot entries.
fn own<'a>(cts: Vec<Arc<Ciphertext>>) -> Tensor<'a> {
    cts.into_iter().map(Ct::Own).collect()
}

/// Seconds spent per graph node in an encrypted forward pass, in execution order.
#[derive(Clone, Debug, Default)]
pub struct LayerTiming {
    /// (node name, seconds).
    pub layers: Vec<(String, f64)>,
}

impl LayerTiming {
    pub(super) fn add(&mut self, name: &str, secs: f64) {
        match self.layers.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 += secs,
            None => self.layers.push((name.to_string(), secs)),
        }
    }
}

/// A [`Plan`] bound to a CKKS context and relinearization key.
pub struct CkksBatched<'a> {
    plan: &'a Plan,
    ctx: &'a CkksContext,
    rk: &'a RelinKey,
    output_bound: Option<f64>,
}

impl<'a> CkksBatched<'a> {
    /// Binds `plan` to `ctx`; an error if the chain is shorter than the plan's depth.
    pub fn new(plan: &'a Plan, ctx: &'a CkksContext, rk: &'a RelinKey) -> Result<Self> {
        plan.check_fits(ctx, 1)?;
        Ok(Self {
            plan,
            ctx,
            rk,
            output_bound: None,
        })
    }

    /// The largest output magnitude to expect (e.g. twice the largest plaintext output on
    /// calibration data): a dense map that produces the output lowers its scale so that its
    /// level holds it, which lets a short chain's small base prime hold large logits.
    pub fn with_output_bound(mut self, bound: f64) -> Self {
        self.output_bound = Some(bound.abs().max(1.0));
        self
    }

    /// Runs the plan on an encrypted batch.
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
        self.forward_ciphertexts(x.shape(), x.batch(), x.ciphertexts(), progress, timing)
    }

    /// [`Self::forward_with`] on the ciphertexts of a tensor of per-sample `shape` and `batch`
    /// samples, borrowed for the call, not copied: a caller that keeps its input (the Python
    /// binding) adds nothing to the pass's memory but the input it holds anyway.
    pub fn forward_ciphertexts(
        &self,
        shape: &[usize],
        batch: usize,
        cts: &[Ciphertext],
        progress: &Progress,
        timing: Option<&mut LayerTiming>,
    ) -> Result<CipherTensor> {
        let input = cts.iter().map(Ct::Input).collect();
        self.run(shape, batch, input, progress, timing)
    }

    /// The checks a forward pass makes before it starts (input shape, levels, scale, batch
    /// size), on their own: a caller about to hand over its input (Python's `donate=True`)
    /// runs them first, so that bad input is refused before it is given away.
    pub fn check(&self, shape: &[usize], batch: usize, cts: &[Ciphertext]) -> Result<()> {
        check_input(self.plan, self.ctx, shape, cts.first())?;
        self.plan.check_fits(self.ctx, batch)
    }

    /// [`Self::forward_with`] on an input it may free: its ciphertexts go as soon as the first
    /// layer has read them, instead of being copied and kept by the caller.
    pub fn forward_owned(
        &self,
        x: CipherTensor,
        progress: &Progress,
        timing: Option<&mut LayerTiming>,
    ) -> Result<CipherTensor> {
        let (shape, batch) = (x.shape().to_vec(), x.batch());
        let input = x
            .into_ciphertexts()
            .into_iter()
            .map(|c| Ct::Own(Arc::new(c)))
            .collect();
        self.run(&shape, batch, input, progress, timing)
    }

    /// The forward pass on an input held in the plan's slot 0 (freed after its last reader).
    fn run(
        &self,
        shape: &[usize],
        batch: usize,
        cts: Tensor<'_>,
        progress: &Progress,
        timing: Option<&mut LayerTiming>,
    ) -> Result<CipherTensor> {
        let (ctx, plan) = (self.ctx, self.plan);
        let top = check_input(plan, ctx, shape, cts.first().map(|c| &**c))?;
        plan.check_fits(ctx, batch)?;
        let out = drive(plan, true, cts, progress, timing, |ins, slots| {
            self.exec(ins, top, slots)
        })?;
        let cts = out
            .into_par_iter()
            .zip(&plan.output_fold)
            .map(|(c, &f)| unfold(ctx, c.into_arc(), f))
            .collect::<Result<Vec<_>>>()?;
        CipherTensor::from_ciphertexts(plan.output_shape().to_vec(), batch, cts)
    }

    fn exec<'i>(&self, ins: &Instr, top: usize, slots: &mut [Option<Tensor<'i>>]) -> Result<()> {
        let ctx = self.ctx;
        match ins {
            Instr::Rescale { slot } => {
                let t = take(slots, *slot)?;
                slots[*slot] = Some(own(rescale_all(ctx, self.rk, &t)?));
            }
            Instr::Align {
                src,
                dst,
                factors,
                depth,
                pending,
            } => {
                let x = get(slots, *src)?;
                let out = x
                    .par_iter()
                    .zip(factors)
                    .map(|(c, &f)| {
                        align_one(ctx, c, top - depth, *pending, |up, cs| {
                            ctx.multiply_scalar(up, f, cs)
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(own(out));
            }
            Instr::Sum {
                args, rows, dst, ..
            } => {
                let feats = gather(slots, args)?;
                let out = rows
                    .par_iter()
                    .map(|r| self.sum_row(|i| Ok(feats[i as usize]), r))
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            Instr::Dense {
                args,
                groups,
                bias,
                outputs,
                dst,
                terminal,
                ..
            } => {
                let feats = gather(slots, args)?;
                let out = self.dense(&feats, groups, bias, *outputs, *terminal)?;
                slots[*dst] = Some(out);
            }
            Instr::Mul { a, b, pairs, dst } => {
                let out = products(ctx, get(slots, *a)?, get(slots, *b)?, pairs)?;
                slots[*dst] = Some(own(out));
            }
            Instr::Quad { src, rows, dst } => {
                let x = get(slots, *src)?;
                let out = x
                    .par_iter()
                    .zip(rows)
                    .map(|(c, &q)| self.quad(c, q).map(|c| Ct::Own(Arc::new(c))))
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(out);
            }
            Instr::Fused {
                args,
                groups,
                bias,
                quad,
                rows,
                parts,
                dst,
                rescale,
            } => {
                let feats = gather(slots, args)?;
                let const_scale = self.dense_scale(&feats, false)?;
                let computed = parts
                    .par_iter()
                    .map(|p| {
                        // This part's squares, by dense output.
                        let mut sq: Vec<(u32, Ct<'i>)> = Vec::new();
                        for &g in &p.groups {
                            for (j, c) in
                                self.dense_group(&feats, &groups[g as usize], bias, const_scale)?
                            {
                                sq.push((j, Ct::Own(Arc::new(self.quad(&c, quad[j as usize])?))));
                            }
                        }
                        let feat = |i: u32| {
                            sq.iter().find(|e| e.0 == i).map(|e| &e.1).ok_or_else(|| {
                                Error::Model("a fused sum reads a square of another part".into())
                            })
                        };
                        p.rows
                            .iter()
                            .map(|&r| {
                                let s = self.sum_row(feat, &rows[r as usize])?;
                                Ok((
                                    r as usize,
                                    if *rescale {
                                        Ct::Own(Arc::new(self.pay(&s)?))
                                    } else {
                                        s
                                    },
                                ))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                slots[*dst] = Some(scatter(computed.into_iter().flatten(), rows.len())?);
            }
            Instr::Poly {
                src,
                coeffs,
                depth,
                dst,
            } => {
                let out = polynomials(ctx, self.rk, get(slots, *src)?, coeffs, top - depth)?;
                slots[*dst] = Some(own(out));
            }
        }
        Ok(())
    }

    /// A deferred rescale (relinearizing a product first).
    fn pay(&self, c: &Ciphertext) -> Result<Ciphertext> {
        self.ctx.pay_rescale(c, self.rk)
    }

    /// `x² + b·x + k`, not rescaled.
    fn quad(&self, c: &Ciphertext, (b, k): (f64, f64)) -> Result<Ciphertext> {
        let ctx = self.ctx;
        let mut acc = ctx.square(c)?;
        if b != 0.0 {
            // b·x at the square's scale: the sum needs no rescale of its own.
            let lin = ctx.multiply_scalar(c, b, acc.scale() / c.scale())?;
            acc = ctx.add(&acc, &lin)?;
        }
        if k != 0.0 {
            acc = ctx.add_scalar(&acc, k)?;
        }
        Ok(acc)
    }

    /// One row of a free sum; `feat(i)` is the row's `i`-th input feature.
    fn sum_row<'f, 'i: 'f>(
        &self,
        feat: impl Fn(u32) -> Result<&'f Ct<'i>>,
        r: &SumRow,
    ) -> Result<Ct<'i>> {
        let (first, k) = r.terms[0];
        let first = feat(first)?;
        if r.terms.len() == 1 && k == 1 && r.add == 0.0 {
            return Ok(first.clone());
        }
        let terms = r
            .terms
            .iter()
            .map(|&(i, k)| Ok((&**feat(i)?, k)))
            .collect::<Result<Vec<(&Ciphertext, i64)>>>()?;
        let acc = int_combination(self.ctx, &terms)?;
        Ok(Ct::Own(Arc::new(if r.add != 0.0 {
            self.ctx.add_scalar(&acc, r.add)?
        } else {
            acc
        })))
    }

    /// The constant scale of a dense map's weights on `feats`: what makes its rescale land on
    /// the next level's natural scale (or, `terminal`, lower, to hold the output bound).
    fn dense_scale(&self, feats: &[&Ct<'_>], terminal: bool) -> Result<f64> {
        let first = feats
            .first()
            .ok_or_else(|| Error::Shape("a dense map of no inputs".into()))?;
        dense_scale(
            self.ctx,
            first,
            terminal.then_some(self.output_bound).flatten(),
        )
    }

    /// One group of a dense map's outputs, rescaled, bias added: (output feature, ciphertext).
    fn dense_group(
        &self,
        feats: &[&Ct<'_>],
        g: &Group,
        bias: &[f64],
        const_scale: f64,
    ) -> Result<Vec<(u32, Ciphertext)>> {
        let ctx = self.ctx;
        let refs: Vec<&Ciphertext> = g.inputs.iter().map(|&i| &**feats[i as usize]).collect();
        let ws: Vec<Vec<f64>> = g.outputs.iter().map(|o| o.1.clone()).collect();
        let accs = ctx.linear_combinations(&refs, &ws, const_scale)?;
        accs.into_iter()
            .zip(&g.outputs)
            .map(|(acc, (j, _))| {
                let mut out = ctx.rescale(&acc)?;
                let b = bias[*j as usize];
                if b != 0.0 {
                    out = ctx.add_scalar(&out, b)?;
                }
                Ok((*j, out))
            })
            .collect()
    }

    fn dense<'i>(
        &self,
        feats: &[&Ct<'_>],
        groups: &[Group],
        bias: &[f64],
        outputs: usize,
        terminal: bool,
    ) -> Result<Tensor<'i>> {
        let const_scale = self.dense_scale(feats, terminal)?;
        let computed = groups
            .par_iter()
            .map(|g| {
                let outs = self.dense_group(feats, g, bias, const_scale)?;
                Ok(outs
                    .into_iter()
                    .map(|(j, c)| (j as usize, Ct::Own(Arc::new(c))))
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?;
        scatter(computed.into_iter().flatten(), outputs)
    }
}

/// `outputs` ciphertexts from (index, ciphertext) pairs; an error if one is missing.
fn scatter<T: Clone>(items: impl Iterator<Item = (usize, T)>, outputs: usize) -> Result<Vec<T>> {
    let mut out: Vec<Option<T>> = vec![None; outputs];
    for (j, c) in items {
        out[j] = Some(c);
    }
    out.into_iter()
        .map(|c| {
            c.ok_or_else(|| Error::Model("an output of the plan step was not computed".into()))
        })
        .collect()
}

/// Pays deferred rescales ([`CkksContext::pay_rescale`]: a product's relinearization and
/// rescale share one ModDown).
pub(super) fn rescale_all<C>(ctx: &CkksContext, rk: &RelinKey, t: &[C]) -> Result<Computed>
where
    C: Deref<Target = Ciphertext> + Sync,
{
    par_map(t, |c| ctx.pay_rescale(c, rk))
}

/// `c` brought to `level` with a factor applied by `times(c at level + 1, const_scale)`: at
/// the natural scale of `level` (one rescale), or, `pending`, at the scale of a product at
/// `level + 1` not yet rescaled.
pub(super) fn align_one(
    ctx: &CkksContext,
    c: &Ciphertext,
    level: usize,
    pending: bool,
    times: impl Fn(&Ciphertext, f64) -> Result<Ciphertext>,
) -> Result<Arc<Ciphertext>> {
    let up = ctx.mod_switch_to(c, level + 1)?;
    let above = ctx.natural_scale(level + 1);
    if pending {
        times(&up, above * above / up.scale())
    } else {
        let q = ctx.level_modulus(level + 1);
        ctx.rescale(&times(&up, q * ctx.natural_scale(level) / up.scale())?)
    }
    .map(Arc::new)
}

/// `xa[i] · xb[j]` for each pair, not relinearized (a square when both are one ciphertext).
pub(super) fn products<C>(
    ctx: &CkksContext,
    xa: &[C],
    xb: &[C],
    pairs: &[(u32, u32)],
) -> Result<Computed>
where
    C: Deref<Target = Ciphertext> + Sync,
{
    pairs
        .par_iter()
        .map(|&(i, j)| {
            let (ca, cb) = (&xa[i as usize], &xb[j as usize]);
            if std::ptr::eq::<Ciphertext>(&**ca, &**cb) {
                ctx.square(ca)
            } else {
                ctx.multiply(ca, cb)
            }
            .map(Arc::new)
        })
        .collect()
}

/// One polynomial per ciphertext, ending at `level` at its natural scale.
pub(super) fn polynomials<C>(
    ctx: &CkksContext,
    rk: &RelinKey,
    x: &[C],
    coeffs: &[Vec<f64>],
    level: usize,
) -> Result<Computed>
where
    C: Deref<Target = Ciphertext> + Sync,
{
    let target = ctx.natural_scale(level);
    x.par_iter()
        .zip(coeffs)
        .map(|(c, cs)| {
            let y = ctx.evaluate_polynomial_at(c, cs, rk, target)?;
            ctx.mod_switch_to(&y, level).map(Arc::new)
        })
        .collect()
}

/// `Σ k·c` with small integers `k`: no level, no scale change (an integer is encoded at
/// scale 1).
pub(super) fn int_combination(
    ctx: &CkksContext,
    terms: &[(&Ciphertext, i64)],
) -> Result<Ciphertext> {
    let times = |c: &Ciphertext, k: i64| match k {
        1 => Ok(c.clone()),
        -1 => ctx.negate(c),
        k => ctx.multiply_scalar(c, k as f64, 1.0),
    };
    let ((first, k), rest) = terms
        .split_first()
        .ok_or_else(|| Error::Model("a sum of no terms".into()))?;
    let mut acc = times(first, *k)?;
    for &(c, k) in rest {
        acc = match k {
            1 => ctx.add(&acc, c)?,
            -1 => ctx.sub(&acc, c)?,
            k => ctx.add(&acc, &times(c, k)?)?,
        };
    }
    Ok(acc)
}

/// The constant scale of a dense map's weights on `input`: the prime the following rescale
/// drops times the next level's natural scale, lowered when the map makes the graph's output
/// (`output_bound`) so that its level holds that bound.
pub(super) fn dense_scale(
    ctx: &CkksContext,
    input: &Ciphertext,
    output_bound: Option<f64>,
) -> Result<f64> {
    let level = input.level();
    if level == 0 {
        return Err(Error::OutOfLevels {
            op: "dense map",
            level,
        });
    }
    let mut target = ctx.natural_scale(level - 1);
    if let Some(bound) = output_bound {
        target = target.min(ctx.capacity(level - 1, 1.0) / (2.0 * bound));
    }
    Ok(ctx.level_modulus(level) * target / input.scale())
}

/// Checks that an input of per-sample `shape` whose ciphertexts start with `first` is what
/// `plan` takes: its shape, enough levels, the natural scale of its level (which the plan's
/// alignments assume); returns its level.
pub(super) fn check_input(
    plan: &Plan,
    ctx: &CkksContext,
    shape: &[usize],
    first: Option<&Ciphertext>,
) -> Result<usize> {
    if shape != plan.input_shape() {
        return Err(Error::InputShape {
            op: "the model".into(),
            expected: format!("samples of shape {:?}", plan.input_shape()),
            got: shape.to_vec(),
        });
    }
    let first = first.ok_or_else(|| Error::Shape("an encrypted input of no ciphertexts".into()))?;
    let top = first.level();
    if plan.depth > top {
        return Err(Error::OutOfLevels {
            op: "encrypted forward (input below the plan's depth)",
            level: top,
        });
    }
    let natural = ctx.natural_scale(top);
    if ((first.scale() - natural) / natural).abs() > 1e-9 {
        return Err(Error::ScaleMismatch {
            op: "encrypted forward input (not at its level's natural scale)",
            left: first.scale().log2(),
            right: natural.log2(),
        });
    }
    Ok(top)
}

/// Runs the schedule of `plan` (`fused`: the batched back end's, with fused chains) from
/// `input` (slot 0) with `exec`, freeing each tensor after its last reader, reporting progress
/// and per-node seconds; returns the output tensor.
pub(super) fn drive<T>(
    plan: &Plan,
    fused: bool,
    input: T,
    progress: &Progress,
    mut timing: Option<&mut LayerTiming>,
    mut exec: impl FnMut(&Instr, &mut [Option<T>]) -> Result<()>,
) -> Result<T> {
    let (instrs, frees) = plan.schedule(fused);
    let mut slots: Vec<Option<T>> = (0..plan.slots).map(|_| None).collect();
    slots[0] = Some(input);
    progress.emit(ProgressEvent::Start {
        total: instrs.len() as u64,
        unit: "steps",
    });
    for (k, (node, ins)) in instrs.iter().enumerate() {
        let name = &plan.node_names[*node];
        if progress.is_active() {
            progress.emit(ProgressEvent::Status(name));
        }
        let t0 = Instant::now();
        exec(ins, &mut slots)?;
        for &s in &frees[k] {
            slots[s] = None;
        }
        if let Some(t) = timing.as_deref_mut() {
            t.add(name, t0.elapsed().as_secs_f64());
        }
        progress.emit(ProgressEvent::Advance);
    }
    progress.emit(ProgressEvent::Finish);
    take(&mut slots, plan.output_slot)
}

/// An output ciphertext with its carried factor `f` moved into its scale (value = decoded ·
/// f): free.
pub(super) fn unfold(ctx: &CkksContext, c: Arc<Ciphertext>, f: f64) -> Result<Ciphertext> {
    let c = Arc::try_unwrap(c).unwrap_or_else(|a| (*a).clone());
    if f == 1.0 {
        return Ok(c);
    }
    let c = if f < 0.0 { ctx.negate(&c)? } else { c };
    let scale = c.scale() / f.abs();
    Ok(c.derive(c.polys().clone(), scale))
}

pub(super) fn take<T>(slots: &mut [Option<T>], s: usize) -> Result<T> {
    slots[s]
        .take()
        .ok_or_else(|| Error::Model(format!("plan slot {s} read before it is written")))
}

pub(super) fn get<T>(slots: &[Option<T>], s: usize) -> Result<&T> {
    slots[s]
        .as_ref()
        .ok_or_else(|| Error::Model(format!("plan slot {s} read before it is written")))
}

/// The features of `args`, concatenated.
fn gather<'s, 'a>(slots: &'s [Option<Tensor<'a>>], args: &[usize]) -> Result<Vec<&'s Ct<'a>>> {
    let mut out = Vec::new();
    for &a in args {
        out.extend(get(slots, a)?.iter());
    }
    Ok(out)
}

fn par_map<C, F>(t: &[C], f: F) -> Result<Computed>
where
    C: Deref<Target = Ciphertext> + Sync,
    F: Fn(&Ciphertext) -> Result<Ciphertext> + Sync + Send,
{
    t.par_iter().map(|c| f(c).map(Arc::new)).collect()
}
