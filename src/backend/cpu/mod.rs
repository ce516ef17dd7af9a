//! The CPU backend: the reference every other backend is compared with, word for word.
//! Parallel with rayon across polynomials and limbs (one task per `N`-word limb).

#[cfg(target_arch = "x86_64")]
mod dot_avx512;
mod fused;
mod scratch;

use std::mem::MaybeUninit;
use std::sync::Arc;

use rayon::prelude::*;

use super::{
    check_automorphism, check_base_convert, check_concat, check_concat_limbs, check_key_switch,
    check_mul_acc, check_ntt, check_phase, check_ring, check_scale_and_round, check_slice,
    check_tensor_product, key_switch_ext_reference, key_switch_reference, limb_positions,
    limb_scalars, mod_up_reference, Backend, Buffer, HoistedRotation, KeySwitchPlan, PolyBatch,
    Repr,
};
use crate::error::{Error, Result};
use crate::math::{BaseConverter, RingContext, ScaleRounder};

/// Rayon-parallel CPU backend.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    /// Creates the backend (uses rayon's global pool; set `RAYON_NUM_THREADS` to bound it).
    pub fn new() -> Self {
        Self
    }
}

fn host(p: &PolyBatch) -> Result<&Vec<u32>> {
    match &p.buf {
        Buffer::Host(v) => Ok(v),
        #[allow(unreachable_patterns)]
        _ => Err(Error::Backend(
            "CPU backend got a buffer from another backend".into(),
        )),
    }
}

fn host_mut(p: &mut PolyBatch) -> Result<&mut Vec<u32>> {
    match &mut p.buf {
        Buffer::Host(v) => Ok(v),
        #[allow(unreachable_patterns)]
        _ => Err(Error::Backend(
            "CPU backend got a buffer from another backend".into(),
        )),
    }
}

/// Applies `f(limb_prime_index, a_chunk, b_chunk)` over every (poly, limb) chunk, broadcasting b.
fn zip_limbs<F>(
    ring: &RingContext,
    a: &mut PolyBatch,
    b: &PolyBatch,
    op: &'static str,
    f: F,
) -> Result<()>
where
    F: Fn(usize, &mut [u32], &[u32]) + Sync,
{
    a.check_compatible(b, op)?;
    check_ring(ring, a)?;
    let n = a.n;
    let limbs = a.limbs.clone();
    let per_poly = b.poly_words();
    let bw = host(b)?;
    let broadcast = b.count == 1;
    let aw = host_mut(a)?;
    let body = |(idx, chunk): (usize, &mut [u32])| {
        let l = idx % limbs.len();
        let off = if broadcast { l * n } else { idx * n };
        debug_assert!(off + n <= per_poly * if broadcast { 1 } else { idx / limbs.len() + 1 });
        f(limbs[l], chunk, &bw[off..off + n]);
    };
    if aw.len() <= SEQUENTIAL_WORDS {
        aw.chunks_mut(n).enumerate().for_each(body);
    } else {
        aw.par_chunks_mut(n).enumerate().for_each(body);
    }
    Ok(())
}

/// Element-wise passes over at most this many words run on the calling thread: handing ~0.5 MB
/// of additions to other threads costs more than the work (a 2^13 ciphertext of 8 limbs), and
/// a caller outside any rayon pool (one ciphertext's add from Python) then never waits on one.
const SEQUENTIAL_WORDS: usize = 1 << 17;

fn each_limb<F>(a: &mut PolyBatch, f: F) -> Result<()>
where
    F: Fn(usize, usize, &mut [u32]) + Sync,
{
    let n = a.n;
    let limbs = a.limbs.clone();
    let words = host_mut(a)?;
    let body = |(idx, chunk): (usize, &mut [u32])| {
        let l = idx % limbs.len();
        f(l, limbs[l], chunk)
    };
    if words.len() <= SEQUENTIAL_WORDS {
        words.chunks_mut(n).enumerate().for_each(body);
    } else {
        words.par_chunks_mut(n).enumerate().for_each(body);
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(
        &self,
        words: Vec<u32>,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> Result<PolyBatch> {
        super::check_upload(words.len(), &limbs, count, n)?;
        Ok(PolyBatch::from_parts(
            Buffer::Host(words),
            limbs,
            count,
            n,
            repr,
        ))
    }

    fn download(&self, p: &PolyBatch) -> Result<Vec<u32>> {
        Ok(host(p)?.clone())
    }

    fn zeros(&self, limbs: Arc<[usize]>, count: usize, n: usize, repr: Repr) -> Result<PolyBatch> {
        let len = count * limbs.len() * n;
        Ok(PolyBatch::from_parts(
            Buffer::Host(vec![0; len]),
            limbs,
            count,
            n,
            repr,
        ))
    }

    fn ntt_forward(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, true)?;
        check_ring(ring, p)?;
        each_limb(p, |_, li, c| ring.plan(li).forward(c))?;
        p.set_repr(Repr::Ntt);
        Ok(())
    }

    fn ntt_inverse(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, false)?;
        check_ring(ring, p)?;
        each_limb(p, |_, li, c| ring.plan(li).inverse(c))?;
        p.set_repr(Repr::Coeff);
        Ok(())
    }

    fn add_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        zip_limbs(ring, a, b, "add", |li, x, y| {
            let m = ring.modulus(li);
            x.iter_mut().zip(y).for_each(|(x, &y)| *x = m.add(*x, y));
        })
    }

    fn add_new(
        &self,
        ring: &RingContext,
        a: &PolyBatch,
        b: &PolyBatch,
        subtract: bool,
    ) -> Result<PolyBatch> {
        a.check_compatible(b, if subtract { "sub" } else { "add" })?;
        check_ring(ring, a)?;
        let n = a.n;
        let limbs = a.limbs.clone();
        let (aw, bw) = (host(a)?, host(b)?);
        let broadcast = b.count == 1;
        let len = aw.len();
        let mut out: Vec<u32> = Vec::with_capacity(len);
        let body = |(idx, (o, x)): (usize, (&mut [MaybeUninit<u32>], &[u32]))| {
            let l = idx % limbs.len();
            let off = if broadcast { l * n } else { idx * n };
            let (m, y) = (ring.modulus(limbs[l]), &bw[off..off + n]);
            let words = o.iter_mut().zip(x).zip(y);
            if subtract {
                words.for_each(|((o, &x), &y)| {
                    o.write(m.sub(x, y));
                });
            } else {
                words.for_each(|((o, &x), &y)| {
                    o.write(m.add(x, y));
                });
            }
        };
        let spare = &mut out.spare_capacity_mut()[..len];
        if len <= SEQUENTIAL_WORDS {
            spare
                .chunks_mut(n)
                .zip(aw.chunks(n))
                .enumerate()
                .for_each(body);
        } else {
            spare
                .par_chunks_mut(n)
                .zip(aw.par_chunks(n))
                .enumerate()
                .for_each(body);
        }
        // SAFETY: every chunk of `out[..len]` was written word for word from the chunk of `a`
        // of the same length (`b`'s limbs hold n words each, checked by `check_compatible`).
        unsafe { out.set_len(len) };
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            a.limbs.clone(),
            a.count,
            n,
            a.repr,
        ))
    }

    fn decrypt_phase(
        &self,
        ring: &RingContext,
        ct: &PolyBatch,
        s: &PolyBatch,
    ) -> Result<PolyBatch> {
        check_phase(ct, s)?;
        check_ring(ring, ct)?;
        let pos = limb_positions(s, &ct.limbs)?;
        let (n, nl) = (ct.n, ct.limbs.len());
        let (cw, sw) = (host(ct)?, host(s)?);
        let limbs = &ct.limbs;
        let mut out: Vec<u32> = Vec::with_capacity(nl * n);
        // One limb at a time: its phase is written and inverse-transformed while in cache.
        let body = |(l, o): (usize, &mut [MaybeUninit<u32>])| {
            let m = ring.modulus(limbs[l]);
            let (c0, c1) = (&cw[l * n..][..n], &cw[(nl + l) * n..][..n]);
            let key = &sw[pos[l] * n..][..n];
            for (((o, &a), &b), &k) in o.iter_mut().zip(c0).zip(c1).zip(key) {
                o.write(m.mul_add_reduced(b, k, a));
            }
            // SAFETY: the loop above wrote all n words of `o` (c0, c1 and key hold n each).
            let o = unsafe { &mut *(o as *mut [MaybeUninit<u32>] as *mut [u32]) };
            ring.plan(limbs[l]).inverse(o);
        };
        let spare = &mut out.spare_capacity_mut()[..nl * n];
        if nl * n <= SEQUENTIAL_WORDS {
            spare.chunks_mut(n).enumerate().for_each(body);
        } else {
            spare.par_chunks_mut(n).enumerate().for_each(body);
        }
        // SAFETY: every limb's chunk of `out[..nl·n]` was fully written by `body`.
        unsafe { out.set_len(nl * n) };
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            ct.limbs.clone(),
            1,
            n,
            Repr::Coeff,
        ))
    }

    fn sub_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        zip_limbs(ring, a, b, "sub", |li, x, y| {
            let m = ring.modulus(li);
            x.iter_mut().zip(y).for_each(|(x, &y)| *x = m.sub(*x, y));
        })
    }

    fn neg_assign(&self, ring: &RingContext, a: &mut PolyBatch) -> Result<()> {
        check_ring(ring, a)?;
        each_limb(a, |_, li, c| {
            let m = ring.modulus(li);
            c.iter_mut().for_each(|x| *x = m.neg(*x));
        })
    }

    fn mul_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        zip_limbs(ring, a, b, "mul", |li, x, y| {
            let m = ring.modulus(li);
            x.iter_mut()
                .zip(y)
                .for_each(|(x, &y)| *x = m.mul_reduced(*x, y));
        })
    }

    fn mul_acc(
        &self,
        ring: &RingContext,
        acc: &mut PolyBatch,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<()> {
        check_mul_acc(acc, a, b)?;
        check_ring(ring, acc)?;
        let n = acc.n;
        let nl = acc.limbs.len();
        let limbs = acc.limbs.clone();
        let (aw, bw) = (host(a)?, host(b)?);
        let (ab, bb) = (a.count == 1, b.count == 1);
        host_mut(acc)?
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(idx, c)| {
                let l = idx % nl;
                let oa = if ab { l * n } else { idx * n };
                let ob = if bb { l * n } else { idx * n };
                let m = ring.modulus(limbs[l]);
                for ((z, &x), &y) in c.iter_mut().zip(&aw[oa..oa + n]).zip(&bw[ob..ob + n]) {
                    *z = m.mul_add_reduced(x, y, *z);
                }
            });
        Ok(())
    }

    fn mul_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        let s = limb_scalars("mul_scalar", ring, a, s)?;
        each_limb(a, |l, li, c| {
            let m = ring.modulus(li);
            let (w, ws) = s[l];
            c.iter_mut().for_each(|x| *x = m.mul_shoup(*x, w, ws));
        })
    }

    fn linear_combinations(
        &self,
        ring: &RingContext,
        inputs: &[&PolyBatch],
        weights: &[u32],
        outputs: usize,
    ) -> Result<Vec<PolyBatch>> {
        let (first, nl, ni) = super::check_linear_combinations(inputs, weights, outputs)?;
        check_ring(ring, first)?;
        let words = inputs.iter().map(|x| host(x)).collect::<Result<Vec<_>>>()?;
        let n = first.n;
        let limbs = first.limbs.clone();
        let chunks = first.count * nl;
        // Blocks of BLOCK coefficients keep the K accumulators in L2 while each input block is
        // read once for all of them.
        const BLOCK: usize = 1024;
        let block = BLOCK.min(n);
        let per_chunk: Vec<Vec<u32>> = (0..chunks)
            .into_par_iter()
            .map(|idx| {
                let l = idx % nl;
                let m = ring.modulus(limbs[l]);
                let mut out = vec![0u32; outputs * n];
                let mut acc = vec![0u64; outputs * block];
                let w = |k: usize, i: usize| weights[(k * ni + i) * nl + l] as u64;
                for start in (0..n).step_by(block) {
                    acc.iter_mut().for_each(|a| *a = 0);
                    for (i, x) in words.iter().enumerate() {
                        let xs = &x[idx * n + start..idx * n + start + block];
                        for (k, a) in acc.chunks_exact_mut(block).enumerate() {
                            let wk = w(k, i);
                            // Products are < 2^60: 15 of them (plus a reduced remainder) fit.
                            for (a, &v) in a.iter_mut().zip(xs) {
                                *a += v as u64 * wk;
                            }
                        }
                        if i % 15 == 14 {
                            acc.iter_mut().for_each(|a| *a = m.reduce_u64(*a) as u64);
                        }
                    }
                    for (k, a) in acc.chunks_exact(block).enumerate() {
                        for (o, &v) in out[k * n + start..k * n + start + block].iter_mut().zip(a) {
                            *o = m.reduce_u64(v);
                        }
                    }
                }
                out
            })
            .collect();
        // Scatter [chunk][output][coeff] into one batch per output.
        (0..outputs)
            .map(|k| {
                let mut v = Vec::with_capacity(chunks * n);
                for c in &per_chunk {
                    v.extend_from_slice(&c[k * n..(k + 1) * n]);
                }
                Ok(PolyBatch::from_parts(
                    Buffer::Host(v),
                    limbs.clone(),
                    first.count,
                    n,
                    first.repr,
                ))
            })
            .collect()
    }

    fn tensor_product(
        &self,
        ring: &RingContext,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<PolyBatch> {
        check_tensor_product(a, b)?;
        check_ring(ring, a)?;
        let n = a.n;
        let nl = a.limbs.len();
        let w = nl * n;
        let (aw, bw) = (host(a)?, host(b)?);
        let limbs = a.limbs.clone();
        let mut out = vec![0u32; 3 * w];
        let (d0, rest) = out.split_at_mut(w);
        let (d1, d2) = rest.split_at_mut(w);
        d0.par_chunks_mut(n)
            .zip(d1.par_chunks_mut(n))
            .zip(d2.par_chunks_mut(n))
            .enumerate()
            .for_each(|(l, ((o0, o1), o2))| {
                let m = ring.modulus(limbs[l]);
                let r = l * n..(l + 1) * n;
                let (a0, a1) = (&aw[r.clone()], &aw[w + r.start..w + r.end]);
                let (b0, b1) = (&bw[r.clone()], &bw[w + r.start..w + r.end]);
                for k in 0..n {
                    o0[k] = m.mul_reduced(a0[k], b0[k]);
                    o1[k] = m.mul_add_reduced(a0[k], b1[k], m.mul_reduced(a1[k], b0[k]));
                    o2[k] = m.mul_reduced(a1[k], b1[k]);
                }
            });
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            limbs,
            3,
            n,
            Repr::Ntt,
        ))
    }

    fn add_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        let s = limb_scalars("add_scalar", ring, a, s)?;
        each_limb(a, |l, li, c| {
            let m = ring.modulus(li);
            let w = s[l].0;
            c.iter_mut().for_each(|x| *x = m.add(*x, w));
        })
    }

    fn base_convert(
        &self,
        _ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        conv: &BaseConverter,
        exact: bool,
    ) -> Result<PolyBatch> {
        check_base_convert(p, &to, conv)?;
        let mut out = vec![0u32; p.count * to.len() * p.n];
        fused::convert_polys(conv, host(p)?, &mut out, p.n, exact);
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            to,
            p.count,
            p.n,
            Repr::Coeff,
        ))
    }

    fn scale_and_round(
        &self,
        _ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        rounder: &ScaleRounder,
    ) -> Result<PolyBatch> {
        check_scale_and_round(p, &to, rounder)?;
        let n = p.n;
        let input = host(p)?;
        let in_words = p.poly_words();
        let kc = to.len();
        // The rounding terms are per polynomial; the output limbs are independent tasks.
        let rounds: Vec<Vec<u64>> = input
            .par_chunks(in_words)
            .map(|i| rounder.rounding_terms(i, n))
            .collect();
        let mut out = vec![0u32; p.count * kc * n];
        out.par_chunks_mut(n).enumerate().for_each(|(idx, o)| {
            let (c, j) = (idx / kc, idx % kc);
            let poly = &input[c * in_words..(c + 1) * in_words];
            rounder.output_limb(j, poly, &rounds[c], o, n);
        });
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            to,
            p.count,
            n,
            Repr::Coeff,
        ))
    }

    fn automorphism(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Coeff)?;
        check_ring(ring, p)?;
        let n = p.n;
        let two_n = 2 * n;
        let limbs = p.limbs.clone();
        let input = host(p)?;
        let mut out = vec![0u32; input.len()];
        out.par_chunks_mut(n)
            .zip(input.par_chunks(n))
            .enumerate()
            .for_each(|(idx, (o, i))| {
                let m = ring.modulus(limbs[idx % limbs.len()]);
                let mut k = 0usize;
                for &x in i.iter() {
                    // X^j -> X^{j g mod 2N}; X^N = -1.
                    if k < n {
                        o[k] = x;
                    } else {
                        o[k - n] = m.neg(x);
                    }
                    k = (k + g) % two_n;
                }
            });
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            p.limbs.clone(),
            p.count,
            n,
            Repr::Coeff,
        ))
    }

    fn automorphism_ntt(&self, _ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Ntt)?;
        let n = p.n;
        let map = crate::math::ntt::automorphism_ntt_map_shared(n, g);
        let input = host(p)?;
        let len = input.len();
        assert_eq!(map.len(), n);
        // Written straight into the output, without zeroing it first: every word of
        // `out[..len]` is written exactly once (limb chunks of n words, n entries of `map`).
        let mut out: Vec<u32> = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(n)
            .zip(input.par_chunks(n))
            .for_each(|(o, i)| {
                for (ok, &j) in o.iter_mut().zip(map.iter()) {
                    ok.write(i[j as usize]);
                }
            });
        // SAFETY: the loop above initialized all `len` words (every chunk has ≤ n = map.len()).
        unsafe { out.set_len(len) };
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            p.limbs.clone(),
            p.count,
            n,
            Repr::Ntt,
        ))
    }

    fn select_limbs(&self, p: &PolyBatch, limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let pos = limb_positions(p, &limbs)?;
        let n = p.n;
        let input = host(p)?;
        let mut out = Vec::with_capacity(p.count * limbs.len() * n);
        for c in 0..p.count {
            for &j in &pos {
                let off = (c * p.limbs.len() + j) * n;
                out.extend_from_slice(&input[off..off + n]);
            }
        }
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            limbs,
            p.count,
            n,
            p.repr,
        ))
    }

    fn slice_polys(&self, p: &PolyBatch, start: usize, len: usize) -> Result<PolyBatch> {
        check_slice(p, start, len)?;
        let w = p.poly_words();
        let v = host(p)?[start * w..(start + len) * w].to_vec();
        Ok(PolyBatch::from_parts(
            Buffer::Host(v),
            p.limbs.clone(),
            len,
            p.n,
            p.repr,
        ))
    }

    fn concat(&self, parts: &[&PolyBatch]) -> Result<PolyBatch> {
        let (first, count) = check_concat(parts)?;
        let mut out = Vec::with_capacity(count * first.poly_words());
        for p in parts {
            out.extend_from_slice(host(p)?);
        }
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            first.limbs.clone(),
            count,
            first.n,
            first.repr,
        ))
    }

    fn concat_limbs(&self, a: &PolyBatch, b: &PolyBatch) -> Result<PolyBatch> {
        let limbs = check_concat_limbs(a, b)?;
        let (aw, bw) = (host(a)?, host(b)?);
        let (wa, wb) = (a.poly_words(), b.poly_words());
        let mut out = Vec::with_capacity(aw.len() + bw.len());
        for c in 0..a.count {
            out.extend_from_slice(&aw[c * wa..(c + 1) * wa]);
            out.extend_from_slice(&bw[c * wb..(c + 1) * wb]);
        }
        Ok(PolyBatch::from_parts(
            Buffer::Host(out),
            limbs,
            a.count,
            a.n,
            a.repr,
        ))
    }

    fn mod_down(
        &self,
        ring: &RingContext,
        x: &PolyBatch,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        check_ring(ring, x)?;
        if x.repr != Repr::Ntt {
            return Err(Error::InvalidInput("mod_down needs the NTT domain".into()));
        }
        let words = fused::mod_down_words(
            ring,
            host(x)?,
            &x.limbs,
            x.count,
            x.n,
            &keep,
            &drop,
            conv,
            None,
        )?;
        Ok(PolyBatch::from_parts(
            Buffer::Host(words),
            keep,
            x.count,
            x.n,
            Repr::Ntt,
        ))
    }

    fn key_switch_ext(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        lift: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        match fused::key_switch_ext_words(ring, d, keys, plan, lift)? {
            Some(acc) => Ok(PolyBatch::from_parts(
                Buffer::Host(acc),
                plan.qp.clone(),
                2,
                d.n,
                Repr::Ntt,
            )),
            None => key_switch_ext_reference(self, ring, d, keys, plan, lift),
        }
    }

    fn mod_up(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        plan: &KeySwitchPlan,
    ) -> Result<Vec<PolyBatch>> {
        match fused::mod_up_words(ring, d, plan)? {
            Some(digits) => Ok(digits
                .into_iter()
                .map(|w| PolyBatch::from_parts(Buffer::Host(w), plan.qp.clone(), 1, d.n, Repr::Ntt))
                .collect()),
            None => mod_up_reference(self, ring, d, plan),
        }
    }

    fn key_inner_hoisted(
        &self,
        ring: &RingContext,
        ups: &[&PolyBatch],
        keys: &[&PolyBatch],
        g: Option<usize>,
        lift: Option<&PolyBatch>,
        p: &Arc<[usize]>,
    ) -> Result<PolyBatch> {
        self.key_inner_hoisted_sum(ring, ups, &[(keys, g)], lift, p)
    }

    fn key_inner_hoisted_sum(
        &self,
        ring: &RingContext,
        ups: &[&PolyBatch],
        rotations: &[HoistedRotation<'_>],
        lift: Option<&PolyBatch>,
        p: &Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let words = fused::key_inner_hoisted_words(ring, ups, rotations, lift, p)?;
        Ok(PolyBatch::from_parts(
            Buffer::Host(words),
            ups[0].limbs.clone(),
            2,
            ups[0].n,
            Repr::Ntt,
        ))
    }

    fn key_switch(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        onto: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        check_key_switch(d, keys, plan, onto)?;
        let Some(acc) = fused::key_switch_ext_words(ring, d, keys, plan, None)? else {
            return key_switch_reference(self, ring, d, keys, plan, onto);
        };
        // `onto`'s first two polynomials, over the same limbs as the result.
        let onto = onto
            .map(|c| host(c).map(|w| &w[..2 * c.poly_words()]))
            .transpose()?;
        let words = fused::mod_down_words(
            ring, &acc, &plan.qp, 2, d.n, &plan.q, &plan.p, &plan.down, onto,
        )?;
        Ok(PolyBatch::from_parts(
            Buffer::Host(words),
            plan.q.clone(),
            2,
            d.n,
            Repr::Ntt,
        ))
    }
}
