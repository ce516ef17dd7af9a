//! Key switching on a device backend against the CPU backend, word for word: the one sweep
//! that `tests/cuda_parity.rs` and `tests/wgpu_parity.rs` both run, so that every GPU backend
//! is held to the same cases (ModDown layouts, fused key switching with and without `onto`,
//! the unfinished `key_switch_ext` with 0–2 lifted polynomials, relinearization finished by
//! one ModDown (`relinearize_mod_down`), ModUp for hoisting and the
//! hoisted inner product with and without an automorphism).

use std::sync::Arc;

use hetensor::backend::{Backend, CpuBackend, KeySwitchPlan, KsDigit, PolyBatch, Repr};
use hetensor::math::primes::ntt_primes;
use hetensor::math::{BaseConverter, Modulus, RingContext};

/// xorshift64: reproducible inputs without the crate's samplers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A ring of degree n with 30-bit primes followed by 24-bit and 29-bit ones (so that base
/// conversion and scale-and-round take every reduction branch). 24 bits, not 20: there are not
/// two 20-bit primes ≡ 1 mod 2N for N ≥ 2^15.
pub fn mixed_ring(n: usize) -> RingContext {
    let mut ps = ntt_primes(30, 2 * n as u64, 5, &[]).unwrap();
    ps.extend(ntt_primes(24, 2 * n as u64, 2, &ps).unwrap());
    ps.extend(ntt_primes(29, 2 * n as u64, 2, &ps).unwrap());
    RingContext::new(n, &ps).unwrap()
}

/// Random reduced words for `count` polynomials over `limbs`.
pub fn random_words(rng: &mut Rng, ring: &RingContext, limbs: &[usize], count: usize) -> Vec<u32> {
    let n = ring.n();
    let mut v = Vec::with_capacity(count * limbs.len() * n);
    for _ in 0..count {
        for &l in limbs {
            let q = ring.modulus(l).value() as u64;
            v.extend((0..n).map(|_| (rng.next() % q) as u32));
        }
    }
    v
}

/// The same words on the CPU and on the device.
pub struct Pair {
    pub cpu: PolyBatch,
    pub dev: PolyBatch,
}

pub fn pair(
    dev: &dyn Backend,
    words: Vec<u32>,
    limbs: &[usize],
    count: usize,
    n: usize,
    repr: Repr,
) -> Pair {
    let l: Arc<[usize]> = limbs.into();
    Pair {
        cpu: CpuBackend::new()
            .upload(words.clone(), l.clone(), count, n, repr)
            .unwrap(),
        dev: dev.upload(words, l, count, n, repr).unwrap(),
    }
}

/// A key-switching plan over ciphertext limbs `q` and special primes `p`, digits of `alpha`
/// consecutive limbs (the last one shorter), as `RlweContext` builds them.
pub fn ks_plan(r: &RingContext, q: &[usize], p: &[usize], alpha: usize) -> KeySwitchPlan {
    let ms = |ls: &[usize]| ls.iter().map(|&l| *r.modulus(l)).collect::<Vec<Modulus>>();
    let conv = |a: &[usize], b: &[usize]| Arc::new(BaseConverter::new(&ms(a), &ms(b)));
    let qp: Vec<usize> = q.iter().chain(p).copied().collect();
    let digits = q
        .chunks(alpha)
        .map(|limbs| {
            let rest: Vec<usize> = qp.iter().copied().filter(|l| !limbs.contains(l)).collect();
            KsDigit {
                limbs: limbs.into(),
                up: conv(limbs, &rest),
                rest: rest.into(),
            }
        })
        .collect();
    KeySwitchPlan {
        digits,
        qp: qp.into(),
        q: q.into(),
        p: p.into(),
        down: conv(p, q),
    }
}

/// Asserts that the device batch holds the CPU batch's words.
#[track_caller]
pub fn same(dev: &dyn Backend, cpu: &PolyBatch, got: &PolyBatch, what: &str) {
    assert_eq!(cpu.limbs(), got.limbs(), "{what}: limbs");
    assert_eq!(
        (cpu.count(), cpu.n(), cpu.repr()),
        (got.count(), got.n(), got.repr()),
        "{what}: shape"
    );
    let (a, b) = (
        CpuBackend::new().download(cpu).unwrap(),
        dev.download(got).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: length");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at word {i}: cpu {} {} {}",
            a[i],
            dev.name(),
            b[i]
        );
    }
}

/// The CPU's result (`got.0`) against the operation's definition computed on the CPU
/// (`want`), then the device's (`got.1`) against the CPU's, word for word.
#[track_caller]
pub fn same_as_definition(
    dev: &dyn Backend,
    want: &PolyBatch,
    got: (&PolyBatch, &PolyBatch),
    what: &str,
) {
    same(
        &CpuBackend::new(),
        want,
        got.0,
        &format!("{what}: CPU against its definition"),
    );
    same(dev, got.0, got.1, what);
}

/// ModDown (several keep/drop layouts, one permuted), then for dnum 1–3 and 7 and 7, 5, 3 or 1
/// ciphertext limbs over 2 special primes: `key_switch` (alone and onto a size-3 batch),
/// `key_switch_ext` with 0, 1 and 2 lifted polynomials (and a size-3 lift, of which the first
/// two count) followed by a ModDown by P·q_last, `relinearize_mod_down` dropping P and P·q_last,
/// `mod_up`, and `key_inner_hoisted` with no automorphism and with 5 and 2N−1. `seed` fixes
/// the inputs.
pub fn key_switching_matches_cpu(dev: &dyn Backend, degrees: &[usize], seed: u64) {
    let cpu = CpuBackend::new();
    let mut rng = Rng(seed);
    for &n in degrees {
        let r = mixed_ring(n);
        let ms = |ls: &[usize]| ls.iter().map(|&l| *r.modulus(l)).collect::<Vec<Modulus>>();
        let conv = |a: &[usize], b: &[usize]| Arc::new(BaseConverter::new(&ms(a), &ms(b)));
        let arc = |v: &[usize]| -> Arc<[usize]> { v.into() };
        for (keep, drop, count, x_limbs) in [
            (vec![0usize, 1, 2, 3], vec![4usize], 2usize, None),
            (vec![0, 1, 5, 6], vec![7, 8], 3, None),
            (vec![0], vec![1, 2, 3], 1, None),
            (vec![0, 1, 2], vec![3], 2, Some(vec![0usize, 3, 1, 2])),
        ] {
            let xl = x_limbs.unwrap_or_else(|| keep.iter().chain(&drop).copied().collect());
            let x = pair(
                dev,
                random_words(&mut rng, &r, &xl, count),
                &xl,
                count,
                n,
                Repr::Ntt,
            );
            let c = conv(&drop, &keep);
            let a = cpu
                .mod_down(&r, &x.cpu, arc(&keep), arc(&drop), &c)
                .unwrap();
            let b = dev
                .mod_down(&r, &x.dev, arc(&keep), arc(&drop), &c)
                .unwrap();
            same(dev, &a, &b, &format!("mod_down N={n} {xl:?} -> {keep:?}"));
        }
        let (q_all, p): (Vec<usize>, Vec<usize>) = ((0..7).collect(), vec![7, 8]);
        let key_limbs: Vec<usize> = q_all.iter().chain(&p).copied().collect();
        // dnum 7: more digits than a wgpu dispatch binds (3), so the passes accumulate.
        for dnum in [1usize, 2, 3, 7] {
            let alpha = q_all.len().div_ceil(dnum);
            let keys: Vec<Pair> = (0..dnum)
                .map(|_| {
                    let w = random_words(&mut rng, &r, &key_limbs, 2);
                    pair(dev, w, &key_limbs, 2, n, Repr::Ntt)
                })
                .collect();
            for nq in [7usize, 5, 3, 1] {
                let q: Vec<usize> = (0..nq).collect();
                let plan = ks_plan(&r, &q, &p, alpha);
                let used = &keys[..plan.digits.len()];
                let d = pair(dev, random_words(&mut rng, &r, &q, 1), &q, 1, n, Repr::Ntt);
                let kc: Vec<&PolyBatch> = used.iter().map(|k| &k.cpu).collect();
                let kd: Vec<&PolyBatch> = used.iter().map(|k| &k.dev).collect();
                let a = cpu.key_switch(&r, &d.cpu, &kc, &plan, None).unwrap();
                let b = dev.key_switch(&r, &d.dev, &kd, &plan, None).unwrap();
                same(
                    dev,
                    &a,
                    &b,
                    &format!("key_switch N={n} dnum={dnum} nq={nq}"),
                );
                // Onto a size-3 batch's first two polynomials (relinearization).
                let c = pair(dev, random_words(&mut rng, &r, &q, 3), &q, 3, n, Repr::Ntt);
                let a = cpu
                    .key_switch(&r, &d.cpu, &kc, &plan, Some(&c.cpu))
                    .unwrap();
                let b = dev
                    .key_switch(&r, &d.dev, &kd, &plan, Some(&c.dev))
                    .unwrap();
                let what = format!("key_switch onto N={n} dnum={dnum} nq={nq}");
                same(dev, &a, &b, &what);
                // A whole size-3 product as the lift (relinearize_ext's): its first two
                // polynomials are lifted, as if sliced out.
                let a = cpu
                    .key_switch_ext(&r, &d.cpu, &kc, &plan, Some(&c.cpu))
                    .unwrap();
                let b = dev
                    .key_switch_ext(&r, &d.dev, &kd, &plan, Some(&c.dev))
                    .unwrap();
                let two = cpu.slice_polys(&c.cpu, 0, 2).unwrap();
                let want = cpu
                    .key_switch_ext(&r, &d.cpu, &kc, &plan, Some(&two))
                    .unwrap();
                let what = format!("key_switch_ext lift 3 N={n} dnum={dnum} nq={nq}");
                same_as_definition(dev, &want, (&a, &b), &what);
                // Relinearization finished by one ModDown: of P alone, and of P·q_last
                // (relinearize-and-rescale), c's c2 switched with P·(c0, c1) lifted in.
                for nk in [nq, nq - 1].into_iter().filter(|&k| k > 0) {
                    let keep = arc(&q[..nk]);
                    let drop: Arc<[usize]> = q[nk..].iter().chain(&p).copied().collect();
                    let cv = conv(&drop, &keep);
                    let a = cpu
                        .relinearize_mod_down(
                            &r,
                            &c.cpu,
                            &kc,
                            &plan,
                            keep.clone(),
                            drop.clone(),
                            &cv,
                        )
                        .unwrap();
                    let b = dev
                        .relinearize_mod_down(
                            &r,
                            &c.dev,
                            &kd,
                            &plan,
                            keep.clone(),
                            drop.clone(),
                            &cv,
                        )
                        .unwrap();
                    let c2 = cpu.slice_polys(&c.cpu, 2, 1).unwrap();
                    let two = cpu.slice_polys(&c.cpu, 0, 2).unwrap();
                    let ext = cpu.key_switch_ext(&r, &c2, &kc, &plan, Some(&two)).unwrap();
                    let want = cpu
                        .mod_down(&r, &ext, keep.clone(), drop.clone(), &cv)
                        .unwrap();
                    let what = format!("relinearize_mod_down keep {nk} N={n} dnum={dnum} nq={nq}");
                    same_as_definition(dev, &want, (&a, &b), &what);
                    // The same of a product never written: the tensor product of two size-2
                    // batches computed where the key switch reads it.
                    let (x, y) = (
                        pair(dev, random_words(&mut rng, &r, &q, 2), &q, 2, n, Repr::Ntt),
                        pair(dev, random_words(&mut rng, &r, &q, 2), &q, 2, n, Repr::Ntt),
                    );
                    let a = cpu
                        .multiply_relinearize_mod_down(
                            &r,
                            (&x.cpu, &y.cpu),
                            &kc,
                            &plan,
                            keep.clone(),
                            drop.clone(),
                            &cv,
                        )
                        .unwrap();
                    let b = dev
                        .multiply_relinearize_mod_down(
                            &r,
                            (&x.dev, &y.dev),
                            &kd,
                            &plan,
                            keep.clone(),
                            drop.clone(),
                            &cv,
                        )
                        .unwrap();
                    let prod = cpu.tensor_product(&r, &x.cpu, &y.cpu).unwrap();
                    let want = cpu
                        .relinearize_mod_down(&r, &prod, &kc, &plan, keep, drop, &cv)
                        .unwrap();
                    let what = format!(
                        "multiply_relinearize_mod_down keep {nk} N={n} dnum={dnum} nq={nq}"
                    );
                    same_as_definition(dev, &want, (&a, &b), &what);
                }
                // Without its ModDown, with P·(c0, c1) or P·c0 lifted in (relinearize-and-
                // rescale, rotations), then one ModDown over P·q_last as the rescale does.
                for k in [0usize, 1, 2] {
                    let lift = (k > 0)
                        .then(|| pair(dev, random_words(&mut rng, &r, &q, k), &q, k, n, Repr::Ntt));
                    let (lc, ld) = (lift.as_ref().map(|x| &x.cpu), lift.as_ref().map(|x| &x.dev));
                    let a = cpu.key_switch_ext(&r, &d.cpu, &kc, &plan, lc).unwrap();
                    let b = dev.key_switch_ext(&r, &d.dev, &kd, &plan, ld).unwrap();
                    let what = format!("key_switch_ext lift {k} N={n} dnum={dnum} nq={nq}");
                    same(dev, &a, &b, &what);
                    // The hoisted form: the same ModUp shared by several rotations, each an
                    // automorphism of the digits (or none) and an inner product.
                    let ups_c = cpu.mod_up(&r, &d.cpu, &plan).unwrap();
                    let ups_d = dev.mod_up(&r, &d.dev, &plan).unwrap();
                    for (u, v) in ups_c.iter().zip(&ups_d) {
                        same(dev, u, v, &format!("ModUp N={n} dnum={dnum} nq={nq}"));
                    }
                    let ups_c: Vec<&PolyBatch> = ups_c.iter().collect();
                    let ups_d: Vec<&PolyBatch> = ups_d.iter().collect();
                    let pa = arc(&p);
                    for gal in [None, Some(5usize), Some(2 * n - 1)] {
                        let a = cpu
                            .key_inner_hoisted(&r, &ups_c, &kc, gal, lc, &pa)
                            .unwrap();
                        let b = dev
                            .key_inner_hoisted(&r, &ups_d, &kd, gal, ld, &pa)
                            .unwrap();
                        same(dev, &a, &b, &format!("key_inner_hoisted g={gal:?}, {what}"));
                    }
                    if nq > 1 {
                        let keep = arc(&q[..nq - 1]);
                        let drop: Vec<usize> = [nq - 1].iter().chain(&p).copied().collect();
                        let c = conv(&drop, &q[..nq - 1]);
                        let a = cpu.mod_down(&r, &a, keep.clone(), arc(&drop), &c).unwrap();
                        let b = dev.mod_down(&r, &b, keep, arc(&drop), &c).unwrap();
                        same(dev, &a, &b, &format!("{what}, then ModDown by P·q_last"));
                    }
                }
            }
        }
    }
}
