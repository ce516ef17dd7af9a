//! The CPU's fused key switching and ModDown: the same words as [`key_switch_reference`] and
//! [`mod_down_reference`] (which compose backend primitives and stay the definition), with
//! the work kept limb by limb while it is in cache.
//!
//! Why fused: the composed form copies every extended digit twice (`concat_limbs`,
//! `select_limbs`), selects the key's limbs at every level below the top, reads and writes
//! the accumulator once per digit, and makes ModDown's subtraction, scaling and `onto`
//! addition three more passes. Here each target limb is produced in one task: the NTT of the
//! digits' extended limbs, `Σ_j key_j·up_j` summed in 64 bits and reduced once, and the lifted
//! operand added; ModDown writes `(x − lift)·P^{-1} (+ onto)` in the pass that transforms the
//! converted tail. The per-rotation half of a hoisted key switch reads the automorphism as a
//! gather inside the same products.
//!
//! [`key_switch_reference`]: crate::backend::key_switch_reference
//! [`mod_down_reference`]: crate::backend::mod_down_reference

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::scratch::Scratch;
use super::{host, PolyBatch};
use crate::backend::{
    check_key_inner_hoisted, check_key_switch_ext, lifted_count, mod_down_factors, HoistedRotation,
    KeySwitchPlan, Repr,
};
use crate::error::{Error, Result};
use crate::math::ntt::automorphism_ntt_map_shared;
use crate::math::rns::{convert_blocks, ConvertScratch};
use crate::math::{simd, BaseConverter, Modulus, RingContext};

/// Converts `count` polynomials (each `conv.from().len()` limbs of `n` words, in `input`)
/// into `output` (each `conv.to().len()` limbs), in (polynomial, coefficient block) tasks: a
/// key switch converts one polynomial at a time, which would otherwise run on one thread.
pub(super) fn convert_polys(
    conv: &BaseConverter,
    input: &[u32],
    output: &mut [u32],
    n: usize,
    exact: bool,
) {
    let (in_words, out_words) = (conv.from().len() * n, conv.to().len() * n);
    let tasks: Vec<_> = output
        .chunks_mut(out_words)
        .zip(input.chunks(in_words))
        .flat_map(|(o, i)| {
            convert_blocks(o, n)
                .into_iter()
                .map(move |(lo, block)| (i, lo, block))
        })
        .collect();
    tasks
        .into_par_iter()
        .for_each_init(ConvertScratch::default, |scratch, (i, lo, mut block)| {
            conv.convert_block(i, n, lo, &mut block, exact, scratch)
        });
}

/// Positions of `limbs` in `within`, or an error naming the missing limb.
fn positions(within: &[usize], limbs: &[usize], what: &str) -> Result<Vec<usize>> {
    limbs
        .iter()
        .map(|l| {
            within
                .iter()
                .position(|x| x == l)
                .ok_or_else(|| Error::InvalidInput(format!("{what}: limb {l} not present")))
        })
        .collect()
}

/// `[Π p_k]_{q_i}` for every limb of `limbs` (0 on the special primes themselves), with its
/// Shoup companion: what "times `P`" multiplies by.
fn p_factors(ring: &RingContext, limbs: &[usize], p: &[usize]) -> Vec<(u32, u32)> {
    limbs
        .iter()
        .map(|&l| {
            let m = ring.modulus(l);
            let f = p.iter().fold(1u32, |acc, &pi| {
                m.mul(acc, ring.modulus(pi).value() % m.value())
            });
            (f, m.shoup(f))
        })
        .collect()
}

/// ModDown of host words (see [`crate::backend::Backend::mod_down`]): `count` NTT-domain
/// polynomials over `x_limbs` become `count` over `keep`, divided by `Π drop` and rounded;
/// `onto` (the same shape as the result) is added when given.
#[allow(clippy::too_many_arguments)] // the words and their shape, as the trait passes them
pub(super) fn mod_down_words(
    ring: &RingContext,
    x: &[u32],
    x_limbs: &[usize],
    count: usize,
    n: usize,
    keep: &[usize],
    drop: &[usize],
    conv: &BaseConverter,
    onto: Option<&[u32]>,
) -> Result<Vec<u32>> {
    let (nk, nd, xw) = (keep.len(), drop.len(), x_limbs.len() * n);
    if conv.from().len() != nd || conv.to().len() != nk || x.len() != count * xw {
        return Err(Error::Shape(
            "mod_down: converter or words do not match the bases".into(),
        ));
    }
    let kpos = positions(x_limbs, keep, "mod_down")?;
    let dpos = positions(x_limbs, drop, "mod_down")?;
    let mut tail = Scratch::take(count * nd * n);
    tail.par_chunks_mut(n).enumerate().for_each(|(idx, t)| {
        let (c, i) = (idx / nd, idx % nd);
        t.copy_from_slice(&x[c * xw + dpos[i] * n..][..n]);
        ring.plan(drop[i]).inverse(t);
    });
    let len = count * nk * n;
    let mut converted = Scratch::take(len);
    convert_polys(conv, &tail, &mut converted, n, true);
    let factors: Vec<(u32, u32)> = mod_down_factors(ring, keep, drop)
        .into_iter()
        .zip(keep)
        .map(|(f, &k)| (f, ring.modulus(k).shoup(f)))
        .collect();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(n)
        .zip(converted.par_chunks_mut(n))
        .enumerate()
        .for_each(|(idx, (o, t))| {
            let (c, i) = (idx / nk, idx % nk);
            let m = ring.modulus(keep[i]);
            ring.plan(keep[i]).forward(t);
            let (f, fs) = factors[i];
            let xs = &x[c * xw + kpos[i] * n..][..n];
            match onto {
                Some(on) => {
                    let on = &on[idx * n..][..n];
                    for (((o, &t), &x), &a) in o.iter_mut().zip(&*t).zip(xs).zip(on) {
                        o.write(m.add(m.mul_shoup(m.sub(x, t), f, fs), a));
                    }
                }
                None => {
                    for ((o, &t), &x) in o.iter_mut().zip(&*t).zip(xs) {
                        o.write(m.mul_shoup(m.sub(x, t), f, fs));
                    }
                }
            }
        });
    // SAFETY: every limb of `out[..len]` was written word for word above.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// ModUp's first half, shared by the fused key switch and the fused ModUp: where each digit's
/// run of `d`'s limbs starts, and `d` (NTT words `dw` over `plan.q`) in coefficient form.
/// `None` when a digit's limbs are not a contiguous run of `d`'s.
fn digits_in_coeff_form(
    ring: &RingContext,
    plan: &KeySwitchPlan,
    dw: &[u32],
    n: usize,
) -> Result<Option<(Vec<usize>, Scratch)>> {
    let mut starts = Vec::with_capacity(plan.digits.len());
    for dg in &plan.digits {
        let pos = positions(&plan.q, &dg.limbs, "key switch")?;
        if pos.windows(2).any(|w| w[1] != w[0] + 1) {
            return Ok(None);
        }
        starts.push(pos[0]);
    }
    let mut coeff = Scratch::take(dw.len());
    coeff.copy_from_slice(dw);
    coeff
        .par_chunks_mut(n)
        .zip(plan.q.par_iter())
        .for_each(|(c, &l)| ring.plan(l).inverse(c));
    Ok(Some((starts, coeff)))
}

/// Key switching up to ModDown, fused (see [`crate::backend::Backend::key_switch_ext`]):
/// `(u_0, u_1)` over `plan.qp` with `P·lift` added to the first [`lifted_count`] polynomials.
/// `None` when a digit's limbs are not a contiguous run of `d`'s (the composed reference
/// handles that shape).
pub(super) fn key_switch_ext_words(
    ring: &RingContext,
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    lift: Option<&PolyBatch>,
) -> Result<Option<Vec<u32>>> {
    check_key_switch_ext(d, keys, plan, lift)?;
    let n = d.n;
    let (nq, nqp) = (plan.q.len(), plan.qp.len());
    if plan.qp.get(..nq) != Some(&plan.q[..]) {
        return Ok(None);
    }
    let dw = host(d)?;
    // ModUp, first half: d in coefficient form, every digit converted to its other limbs.
    let Some((starts, coeff)) = digits_in_coeff_form(ring, plan, dw, n)? else {
        return Ok(None);
    };
    let mut ext_words = Scratch::take(plan.digits.iter().map(|dg| dg.rest.len() * n).sum());
    let mut ext: Vec<&mut [u32]> = Vec::with_capacity(plan.digits.len());
    let mut rest: &mut [u32] = &mut ext_words;
    for dg in &plan.digits {
        let (e, tail) = std::mem::take(&mut rest).split_at_mut(dg.rest.len() * n);
        ext.push(e);
        rest = tail;
    }
    for ((dg, e), &s) in plan.digits.iter().zip(ext.iter_mut()).zip(&starts) {
        let input = &coeff[s * n..(s + dg.limbs.len()) * n];
        convert_polys(&dg.up, input, e, n, false);
    }
    // Per target limb: the extended limbs that land on it, in digit order.
    let mut per_limb: Vec<Vec<&mut [u32]>> = (0..nqp).map(|_| Vec::new()).collect();
    for (dg, e) in plan.digits.iter().zip(ext.iter_mut()) {
        for (&l, chunk) in dg.rest.iter().zip(e.chunks_mut(n)) {
            let p = plan.qp.iter().position(|&x| x == l).ok_or_else(|| {
                Error::InvalidInput(format!("key switch: limb {l} not in the plan"))
            })?;
            per_limb[p].push(chunk);
        }
    }
    // Every target limb needs one extended limb from each digit it is not part of.
    for (p, exts) in per_limb.iter().enumerate() {
        let owners = plan
            .digits
            .iter()
            .filter(|dg| p < nq && dg.limbs.contains(&plan.qp[p]));
        if exts.len() + owners.count() != plan.digits.len() {
            return Err(Error::InvalidInput(
                "key switch: a digit's limbs and rest do not cover the plan".into(),
            ));
        }
    }
    let keys = KeyLimbs::new(keys, &plan.qp)?;
    let lift = lift
        .map(|x| host(x).map(|w| (&w[..], lifted_count(x))))
        .transpose()?;
    let p_of = p_factors(ring, &plan.qp, &plan.p);
    let acc = write_limb_pairs(nqp, n, per_limb, |p, mut exts, outs| {
        let l = plan.qp[p];
        exts.iter_mut().for_each(|e| ring.plan(l).forward(e));
        let mut exts = exts.iter();
        let mut terms = LimbTerms::default();
        for (j, dg) in plan.digits.iter().enumerate() {
            let x = if p < nq && dg.limbs.contains(&l) {
                &dw[p * n..(p + 1) * n]
            } else {
                // Every limb a digit lacks is in its `rest`, pushed above in this order.
                exts.next().map(|e| &e[..]).unwrap_or(&[])
            };
            terms.push(x, &keys, j, p, None);
        }
        let lift = lift
            .filter(|_| p < nq)
            .map(|(w, count)| (w, count, p_of[p]));
        inner_limb(ring.modulus(l), &terms, lift, &[None], p, nq, outs);
    });
    Ok(Some(acc))
}

/// `2 · limbs` limbs of `n` words, the first `limbs` one output polynomial and the rest the
/// other, where `write(p, input_p, (limb p of each))` writes every word of limb `p` of both,
/// in parallel over the limbs. The words are never zeroed first: they are all written.
fn write_limb_pairs<T: Send>(
    limbs: usize,
    n: usize,
    inputs: Vec<T>,
    write: impl Fn(usize, T, (&mut [MaybeUninit<u32>], &mut [MaybeUninit<u32>])) + Sync,
) -> Vec<u32> {
    let len = 2 * limbs * n;
    let mut out = Vec::with_capacity(len);
    let (o0, o1) = out.spare_capacity_mut()[..len].split_at_mut(limbs * n);
    o0.par_chunks_mut(n)
        .zip(o1.par_chunks_mut(n))
        .zip(inputs.into_par_iter())
        .enumerate()
        .for_each(|(p, (outs, input))| write(p, input, outs));
    // SAFETY: `write` writes every word of the two limbs it is given, and every limb of both
    // halves is given to it once (`inputs` has one entry per limb: checked by the callers).
    unsafe { out.set_len(len) };
    out
}

/// ModUp of every digit, fused (see [`crate::backend::Backend::mod_up`]): one inverse NTT of
/// `d`, each digit converted straight from it and its new limbs transformed in place, in
/// parallel; a digit's own limbs are `d`'s. One batch of words over `plan.qp` per digit.
/// `None` for shapes the composed reference handles (a digit that is not a contiguous run of
/// `d`'s limbs, a basis that does not start with `plan.q`).
pub(super) fn mod_up_words(
    ring: &RingContext,
    d: &PolyBatch,
    plan: &KeySwitchPlan,
) -> Result<Option<Vec<Vec<u32>>>> {
    let (n, nq, nqp) = (d.n, plan.q.len(), plan.qp.len());
    if d.repr != Repr::Ntt
        || d.count != 1
        || *d.limbs != *plan.q
        || plan.qp.get(..nq) != Some(&plan.q[..])
    {
        return Ok(None);
    }
    let dw = host(d)?;
    let Some((starts, coeff)) = digits_in_coeff_form(ring, plan, dw, n)? else {
        return Ok(None);
    };
    plan.digits
        .iter()
        .zip(&starts)
        .map(|(dg, &s)| {
            let mut ext = Scratch::take(dg.rest.len() * n);
            convert_polys(
                &dg.up,
                &coeff[s * n..(s + dg.limbs.len()) * n],
                &mut ext,
                n,
                false,
            );
            // Where each limb of the basis comes from: d (the digit's own, NTT form) or ext.
            let from: Vec<(bool, usize)> = plan
                .qp
                .iter()
                .enumerate()
                .map(|(p, l)| match dg.rest.iter().position(|r| r == l) {
                    Some(i) => Ok((true, i)),
                    None if p < nq && dg.limbs.contains(l) => Ok((false, p)),
                    None => Err(Error::InvalidInput(format!(
                        "ModUp: limb {l} is in neither the digit nor its rest"
                    ))),
                })
                .collect::<Result<_>>()?;
            let len = nqp * n;
            let mut out = Vec::with_capacity(len);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(n)
                .zip(from.par_iter())
                .zip(plan.qp.par_iter())
                .for_each(|((o, &(new, i)), &l)| {
                    let src: &[u32] = if new { &ext } else { dw };
                    let src = &src[i * n..(i + 1) * n];
                    // SAFETY: `src` and `o` are `n` words each and do not overlap (`o` is in a
                    // new allocation); after the copy every word of `o` is written.
                    let o = unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), o.as_mut_ptr().cast(), n);
                        assume_init(o)
                    };
                    if new {
                        ring.plan(l).forward(o);
                    }
                });
            // SAFETY: every limb of `out[..len]` was copied in full above.
            unsafe { out.set_len(len) };
            Ok(out)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The per-element half of a hoisted key switch, fused and summed over `rotations` (see
/// [`crate::backend::Backend::key_inner_hoisted_sum`]; one rotation is
/// [`crate::backend::Backend::key_inner_hoisted`]): each automorphism is a gather inside the
/// products, the keys' limbs are indexed in place, `Σ_r P·σ_r(lift)` is added in the same pass,
/// and all rotations' products of a word are summed before its one reduction.
pub(super) fn key_inner_hoisted_words(
    ring: &RingContext,
    ups: &[&PolyBatch],
    rotations: &[HoistedRotation<'_>],
    lift: Option<&PolyBatch>,
    p: &[usize],
) -> Result<Vec<u32>> {
    let Some(&(first, _)) = rotations.first() else {
        return Err(Error::InvalidInput(
            "hoisted key switch sum of no rotations".into(),
        ));
    };
    let qp = check_key_inner_hoisted(ups, first, lift, p)?;
    for &(keys, _) in &rotations[1..] {
        check_key_inner_hoisted(ups, keys, lift, p)?;
    }
    let n = ups[0].n;
    let (nqp, nq) = (qp.len(), qp.len() - p.len());
    let maps = rotations
        .iter()
        .map(|&(_, g)| match g {
            Some(g) if g % 2 == 0 => Err(Error::InvalidInput(format!(
                "Galois element {g} must be odd"
            ))),
            Some(g) => Ok(Some(automorphism_ntt_map_shared(n, g))),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let maps: Vec<Option<&[u32]>> = maps.iter().map(|m| m.as_deref()).collect();
    let up_words = ups.iter().map(|u| host(u)).collect::<Result<Vec<_>>>()?;
    let keys = rotations
        .iter()
        .map(|&(keys, _)| KeyLimbs::new(keys, &qp))
        .collect::<Result<Vec<_>>>()?;
    let lift = lift
        .map(|x| host(x).map(|w| (&w[..], x.count)))
        .transpose()?;
    let p_of = p_factors(ring, &qp, p);
    Ok(write_limb_pairs(nqp, n, vec![(); nqp], |pos, (), outs| {
        let mut terms = LimbTerms::default();
        for (keys, &map) in keys.iter().zip(&maps) {
            for (j, w) in up_words.iter().enumerate() {
                terms.push(&w[pos * n..][..n], keys, j, pos, map);
            }
        }
        let lift = lift
            .filter(|_| pos < nq)
            .map(|(w, count)| (w, count, p_of[pos]));
        inner_limb(ring.modulus(qp[pos]), &terms, lift, &maps, pos, nq, outs);
    }))
}

/// Key digits with their limbs found by position in a basis, read in place (no copies of a
/// key restricted to a lower level).
struct KeyLimbs<'a> {
    words: Vec<&'a [u32]>,
    /// Words per polynomial of each digit.
    per_poly: Vec<usize>,
    /// `pos[j][p]`: digit `j`'s limb for the basis' limb `p`.
    pos: Vec<Vec<usize>>,
    n: usize,
}

impl<'a> KeyLimbs<'a> {
    fn new(keys: &[&'a PolyBatch], basis: &[usize]) -> Result<Self> {
        Ok(Self {
            words: keys
                .iter()
                .map(|k| host(k).map(|w| &w[..]))
                .collect::<Result<_>>()?,
            per_poly: keys.iter().map(|k| k.limbs.len() * k.n).collect(),
            pos: keys
                .iter()
                .map(|k| positions(&k.limbs, basis, "key switch key"))
                .collect::<Result<_>>()?,
            n: keys.first().map_or(0, |k| k.n),
        })
    }

    /// Digit `j`'s two polynomials at the basis' limb `p`.
    fn limb(&self, j: usize, p: usize) -> (&'a [u32], &'a [u32]) {
        let (w, n) = (self.words[j], self.n);
        let at = self.pos[j][p] * n;
        (&w[at..at + n], &w[self.per_poly[j] + at..][..n])
    }
}

/// The products of one target limb of a key inner product: `x_t·a_t` into the first output
/// and `x_t·b_t` into the second, `x_t` read through `maps[t]` when given (a hoisted
/// rotation's automorphism as a gather).
#[derive(Default)]
struct LimbTerms<'a> {
    x: Vec<&'a [u32]>,
    a: Vec<&'a [u32]>,
    b: Vec<&'a [u32]>,
    maps: Vec<Option<&'a [u32]>>,
}

impl<'a> LimbTerms<'a> {
    /// `x` times key digit `j` of `keys` at the basis' limb `p`.
    fn push(
        &mut self,
        x: &'a [u32],
        keys: &KeyLimbs<'a>,
        j: usize,
        p: usize,
        map: Option<&'a [u32]>,
    ) {
        let (a, b) = keys.limb(j, p);
        self.x.push(x);
        self.a.push(a);
        self.b.push(b);
        self.maps.push(map);
    }
}

/// One target limb `p` of a key inner product: `(o0, o1) = Σ_t` of `terms`, plus
/// `f·Σ_r σ_r(lift_c[p])` (`σ_r` the gather `lift_maps[r]`, the identity for `None`) on the
/// first `count` outputs for `lift = (words over nq limbs, count, (f, shoup f))`.
fn inner_limb(
    m: &Modulus,
    terms: &LimbTerms<'_>,
    lift: Option<(&[u32], usize, (u32, u32))>,
    lift_maps: &[Option<&[u32]>],
    p: usize,
    nq: usize,
    (o0, o1): (&mut [MaybeUninit<u32>], &mut [MaybeUninit<u32>]),
) {
    let n = o0.len();
    dot_into(m, terms, o0, o1);
    // SAFETY: `dot_into` wrote every word of both outputs.
    let (o0, o1) = unsafe { (assume_init(o0), assume_init(o1)) };
    if let Some((x, count, (f, fs))) = lift {
        // The rotated copies summed into a block first, so that the multiply-add below is
        // one straight loop in every case (gathering inside it kept it scalar: ~20 % of a
        // hoisted rotation step).
        let mut summed = (lift_maps != [None]).then(|| Scratch::take(n));
        for (c, o) in [o0, o1].into_iter().enumerate().take(count) {
            let mut xs = &x[c * nq * n + p * n..][..n];
            if let Some(s) = summed.as_deref_mut() {
                sum_gathered(m, xs, lift_maps, s);
                xs = s;
            }
            simd::dispatch(
                #[inline(always)]
                || {
                    o.iter_mut()
                        .zip(xs)
                        .for_each(|(o, &x)| *o = m.add(*o, m.mul_shoup(x, f, fs)))
                },
            );
        }
    }
}

/// `out[k] = Σ_r x[map_r[k]]` (mod m; `x[k]` for a `None` map).
fn sum_gathered(m: &Modulus, x: &[u32], maps: &[Option<&[u32]>], out: &mut [u32]) {
    for (r, map) in maps.iter().enumerate() {
        match (r, map) {
            (0, Some(map)) => out
                .iter_mut()
                .zip(*map)
                .for_each(|(o, &k)| *o = x[k as usize]),
            (0, None) => out.copy_from_slice(x),
            (_, Some(map)) => out
                .iter_mut()
                .zip(*map)
                .for_each(|(o, &k)| *o = m.add(*o, x[k as usize])),
            (_, None) => out.iter_mut().zip(x).for_each(|(o, &y)| *o = m.add(*o, y)),
        }
    }
}

/// `words` as the initialized words they now are.
///
/// # Safety
/// Every word of `words` has been written.
unsafe fn assume_init(words: &mut [MaybeUninit<u32>]) -> &mut [u32] {
    // SAFETY: `MaybeUninit<u32>` has `u32`'s layout, and the caller wrote every word.
    unsafe { &mut *(words as *mut [MaybeUninit<u32>] as *mut [u32]) }
}

/// `o0 = Σ_t x_t·a_t`, `o1 = Σ_t x_t·b_t` (mod m) over `terms`, every word summed in 64 bits
/// and reduced once per `fold` terms: plain 32×32→64 multiply-adds, which vectorize (a
/// gathered block is copied first). Writes every word of both outputs.
fn dot_into(
    m: &Modulus,
    terms: &LimbTerms<'_>,
    o0: &mut [MaybeUninit<u32>],
    o1: &mut [MaybeUninit<u32>],
) {
    let LimbTerms { x, a, b, maps } = terms;
    #[cfg(target_arch = "x86_64")]
    if simd::wide_now() && super::dot_avx512::applies(m, x.len(), o0.len()) {
        // SAFETY: `wide_now` holds only where the CPU has AVX-512.
        unsafe { super::dot_avx512::dot2(m, x, a, b, maps, o0, o1) };
        return;
    }
    simd::dispatch(
        #[inline(always)]
        || dot_words(m, x, a, b, maps, o0, o1),
    )
}

#[inline(always)]
fn dot_words(
    m: &Modulus,
    x: &[&[u32]],
    a: &[&[u32]],
    b: &[&[u32]],
    maps: &[Option<&[u32]>],
    o0: &mut [MaybeUninit<u32>],
    o1: &mut [MaybeUninit<u32>],
) {
    const BLOCK: usize = 256;
    let q = m.value() as u64;
    // The accumulator (< q after a fold) plus `fold` products (each < q²) stays below 2^64.
    let fold = ((u64::MAX - q) / ((q - 1) * (q - 1)).max(1)).max(1) as usize;
    let lanes = m.lanes_reduce_u64();
    let fold_in_place = |s: &mut [u64]| {
        if lanes {
            s.iter_mut()
                .for_each(|s| *s = u64::from(m.reduce_u64_lanes(*s)));
        } else {
            s.iter_mut().for_each(|s| *s = u64::from(m.reduce_u64(*s)));
        }
    };
    let reduce = |s: &[u64], o: &mut [MaybeUninit<u32>]| {
        if lanes {
            o.iter_mut().zip(s).for_each(|(o, &s)| {
                o.write(m.reduce_u64_lanes(s));
            });
        } else {
            o.iter_mut().zip(s).for_each(|(o, &s)| {
                o.write(m.reduce_u64(s));
            });
        }
    };
    let n = o0.len();
    let (mut s0, mut s1) = ([0u64; BLOCK], [0u64; BLOCK]);
    let mut gathered = [0u32; BLOCK];
    for lo in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - lo);
        let (s0, s1) = (&mut s0[..len], &mut s1[..len]);
        s0.fill(0);
        s1.fill(0);
        for (t, (((x, a), b), map)) in x.iter().zip(a).zip(b).zip(maps).enumerate() {
            if t > 0 && t % fold == 0 {
                fold_in_place(s0);
                fold_in_place(s1);
            }
            let x = match map {
                Some(map) => {
                    for (gk, &k) in gathered.iter_mut().zip(&map[lo..lo + len]) {
                        *gk = x[k as usize];
                    }
                    &gathered[..len]
                }
                None => &x[lo..lo + len],
            };
            let (a, b) = (&a[lo..lo + len], &b[lo..lo + len]);
            for k in 0..len {
                let xv = x[k] as u64;
                s0[k] += xv * a[k] as u64;
                s1[k] += xv * b[k] as u64;
            }
        }
        reduce(s0, &mut o0[lo..lo + len]);
        reduce(s1, &mut o1[lo..lo + len]);
    }
}
