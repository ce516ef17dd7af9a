//! The CUDA backend returns exactly the CPU backend's words, op by op (random inputs, several
//! ring degrees, limb subsets, batch sizes and broadcasts) and scheme by scheme (CKKS multiply +
//! relinearize + rescale, rotation; BFV multiply; an encrypted LeNet-1 batch), with fixed seeds.
//! Every test needs a CUDA device, so all are `#[ignore]`d: `cargo test --features cuda --test
//! cuda_parity -- --ignored` runs them, and a missing device, driver or NVRTC then fails them
//! (scripts/test.sh runs them when `nvidia-smi` lists a GPU or `HETENSOR_REQUIRE_CUDA=1`).
#![cfg(feature = "cuda")]

use std::sync::{Arc, OnceLock};

use hetensor::backend::cuda::CudaBackend;
use hetensor::backend::{Backend, CpuBackend, PolyBatch, Repr};
use hetensor::math::{BaseConverter, Modulus, RingContext, ScaleRounder};

#[path = "support/key_switching.rs"]
mod key_switching;
use key_switching::{ks_plan, mixed_ring, pair, random_words, same, Pair, Rng};

/// The device backend; without one the test fails (these tests are ignored by default).
fn gpu() -> Arc<CudaBackend> {
    static G: OnceLock<Result<Arc<CudaBackend>, String>> = OnceLock::new();
    match G.get_or_init(|| CudaBackend::new().map(Arc::new).map_err(|e| e.to_string())) {
        Ok(b) => b.clone(),
        Err(e) => panic!("no CUDA device for the CUDA parity tests: {e}"),
    }
}

const DEGREES: &[usize] = &[16, 1024, 4096, 8192, 1 << 15];

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn upload_download_zeros_clone() {
    let g = gpu();
    let mut rng = Rng(1);
    for &n in &[16, 4096] {
        let r = mixed_ring(n);
        let limbs = [0, 2, 5];
        let w = random_words(&mut rng, &r, &limbs, 3);
        let p = g
            .upload(w.clone(), limbs.as_slice().into(), 3, n, Repr::Coeff)
            .unwrap();
        assert_eq!(g.download(&p).unwrap(), w);
        let c = p.clone();
        let mut p2 = p;
        g.neg_assign(&r, &mut p2).unwrap();
        assert_eq!(g.download(&c).unwrap(), w, "clone is a deep copy");
        let z = g.zeros(limbs.as_slice().into(), 2, n, Repr::Ntt).unwrap();
        assert_eq!(g.download(&z).unwrap(), vec![0; 2 * 3 * n]);
        let e = g.zeros(limbs.as_slice().into(), 0, n, Repr::Ntt).unwrap();
        assert!(g.download(&e).unwrap().is_empty());
        assert!(g
            .upload(vec![0; 5], limbs.as_slice().into(), 1, n, Repr::Coeff)
            .is_err());
    }
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn trace_counts_launches_copies_and_allocations() {
    use hetensor::backend::TraceCounts;
    // A backend of its own, so that no other test adds to its counters; each call is checked
    // against what it must do, exactly.
    gpu();
    let g = CudaBackend::new().unwrap();
    let n = 4096;
    let r = mixed_ring(n);
    let limbs = [0usize, 1];
    let words = random_words(&mut Rng(11), &r, &limbs, 1);
    let bytes = 4 * words.len() as u64;
    let upload = |g: &CudaBackend| {
        g.upload(words.clone(), limbs.as_slice().into(), 1, n, Repr::Coeff)
            .unwrap()
    };
    // Warm-up: the ring tables and the limb list are uploaded once, then cached.
    g.ntt_forward(&r, &mut upload(&g)).unwrap();
    let mut last = g.trace_counts().expect("the CUDA backend counts its work");
    let mut delta = |g: &CudaBackend| {
        let now = g.trace_counts().unwrap();
        let d = now.since(&last);
        last = now;
        d
    };
    let mut p = upload(&g);
    let want = TraceCounts {
        uploads: 1,
        upload_bytes: bytes,
        allocations: 1,
        alloc_bytes: bytes,
        ..Default::default()
    };
    assert_eq!(delta(&g), want, "upload");
    g.ntt_forward(&r, &mut p).unwrap();
    let want = TraceCounts {
        launches: 2,                 // N = 4096 > 2048: columns + rows
        kernel_bytes: 2 * 2 * bytes, // each kernel reads and writes the batch once
        ..Default::default()
    };
    assert_eq!(delta(&g), want, "NTT");
    let c = p.clone();
    let want = TraceCounts {
        device_copies: 1,
        device_copy_bytes: bytes,
        allocations: 1,
        alloc_bytes: bytes,
        ..Default::default()
    };
    assert_eq!(delta(&g), want, "clone");
    g.download(&c).unwrap();
    let want = TraceCounts {
        download_bytes: bytes,
        ..Default::default()
    };
    assert_eq!(delta(&g), want, "download");
    // A key switch without its ModDown, 3 digits, (c0, c1) lifted: the fused path's inverse
    // NTT (2), the first kernel of ModUp's converting forward NTT (1) and its last fused with
    // the inner product (1), where the reference composition would launch ~20 kernels.
    let (q, sp) = ([0usize, 1, 2], [3usize]);
    let plan = ks_plan(&r, &q, &sp, 1);
    let key_limbs: Vec<usize> = q.iter().chain(&sp).copied().collect();
    let mut rng = Rng(12);
    let mut up = |limbs: &[usize], count: usize| {
        let w = random_words(&mut rng, &r, limbs, count);
        g.upload(w, limbs.into(), count, n, Repr::Ntt).unwrap()
    };
    let keys: Vec<PolyBatch> = (0..3).map(|_| up(&key_limbs, 2)).collect();
    let (d, lift) = (up(&q, 1), up(&q, 2));
    let keys: Vec<&PolyBatch> = keys.iter().collect();
    g.key_switch_ext(&r, &d, &keys, &plan, Some(&lift)).unwrap(); // tables uploaded once
    delta(&g);
    g.key_switch_ext(&r, &d, &keys, &plan, Some(&lift)).unwrap();
    let ks = delta(&g);
    assert_eq!(ks.launches, 4, "key_switch_ext");
    // Modelled traffic, in words of one limb (N): the inverse NTT of d reads and writes its
    // 3 limbs twice; the converting columns kernel writes the 3 digits' 3 new limbs (9) and
    // reads d's 3; the fused kernel reads, per digit, one limb of each of the 4 rows and the
    // key's 2 × 4, the lift's 2 × 3, and writes 2 × 4.
    let limb = 4 * n as u64;
    assert_eq!(
        ks.kernel_bytes,
        (2 * 2 * 3 + 9 + 3 + 4 * (3 * 3 + 2) + 6) * limb
    );
    // Relinearization finished by one ModDown of P·q_last (CKKS's relinearize-and-rescale):
    // the key switch's 4 launches with c2 read in place from the size-3 product, which
    // writes the dropped rows with their inverse rows stages done; then the ModDown's inverse
    // columns kernel (1) and its converting forward NTT (2). No copies: nothing is sliced.
    let prod = up(&q, 3);
    let ms = |ls: &[usize]| ls.iter().map(|&l| *r.modulus(l)).collect::<Vec<Modulus>>();
    let (keep, drop): (Arc<[usize]>, Arc<[usize]>) = ([0usize, 1].into(), [2usize, 3].into());
    let conv = BaseConverter::new(&ms(&drop), &ms(&keep));
    let relin = |g: &CudaBackend| {
        g.relinearize_mod_down(&r, &prod, &keys, &plan, keep.clone(), drop.clone(), &conv)
            .unwrap()
    };
    relin(&g); // tables uploaded once
    delta(&g);
    relin(&g);
    let rl = delta(&g);
    assert_eq!(
        (rl.launches, rl.device_copies),
        (7, 0),
        "relinearize_mod_down"
    );
    // In limbs: c2's inverse NTT 2 × 2 × 3; the converting columns kernel 9 + 3; the fused
    // kernel 4 × (3 · 3 + 2) and the lift 2 × 3; the ModDown's inverse columns kernel over
    // the 2 × 2 dropped rows 2 × 4; its converting columns kernel writes 2 × 2 and reads the
    // 4 dropped rows; its rows kernel reads the tile and x's and writes out, 3 × 4.
    assert_eq!(
        rl.kernel_bytes,
        (12 + 12 + 4 * (3 * 3 + 2) + 6 + 8 + 8 + 12) * limb
    );
    // The same of a product never written: the tensor product computed where ModUp's inverse
    // NTT reads c2 (a1 and b1: one limb more per row of its first kernel), where the fused
    // kernel reads the own limbs (3 more) and lifts (c0, c1) (a and b: 4 × 3 instead of
    // 2 × 3). Still 7 launches, and no tensor product (7 × 3 limbs) before them.
    let (fa, fb) = (up(&q, 2), up(&q, 2));
    let mul_relin = |g: &CudaBackend| {
        g.multiply_relinearize_mod_down(
            &r,
            (&fa, &fb),
            &keys,
            &plan,
            keep.clone(),
            drop.clone(),
            &conv,
        )
        .unwrap()
    };
    mul_relin(&g);
    delta(&g);
    mul_relin(&g);
    let ml = delta(&g);
    assert_eq!(
        (ml.launches, ml.device_copies),
        (7, 0),
        "multiply_relinearize_mod_down"
    );
    assert_eq!(
        ml.kernel_bytes,
        (12 + 3 + 12 + 4 * (3 * 3 + 2) + 12 + 3 + 8 + 8 + 12) * limb
    );
    // Its hoisted form for one rotation of shared digits: one launch (the reference permutes,
    // multiplies and accumulates digit by digit, then lifts).
    g.mod_up(&r, &d, &plan).unwrap(); // its tables uploaded once
    delta(&g);
    let ups = g.mod_up(&r, &d, &plan).unwrap();
    // The inverse NTT (2), the converting forward NTT over all digits' new limbs (2), and
    // one gather of every digit's batch.
    assert_eq!(delta(&g).launches, 5, "mod_up");
    let ups: Vec<&PolyBatch> = ups.iter().collect();
    let sp: Arc<[usize]> = sp.as_slice().into();
    g.key_inner_hoisted(&r, &ups, &keys, Some(5), Some(&lift), &sp)
        .unwrap();
    delta(&g);
    g.key_inner_hoisted(&r, &ups, &keys, Some(5), Some(&lift), &sp)
        .unwrap();
    assert_eq!(delta(&g).launches, 1, "key_inner_hoisted");
    assert!(CpuBackend::new().trace_counts().is_none());
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn ntt_forward_and_inverse() {
    let g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng(2);
    for &n in DEGREES.iter().chain(&[2usize, 2048, 1 << 16, 1 << 17]) {
        let r = mixed_ring(n);
        for (limbs, count) in [(vec![0usize, 3, 5, 8], 3usize), (vec![6], 1)] {
            let w = random_words(&mut rng, &r, &limbs, count);
            let mut p = pair(&*g, w, &limbs, count, n, Repr::Coeff);
            cpu.ntt_forward(&r, &mut p.cpu).unwrap();
            g.ntt_forward(&r, &mut p.dev).unwrap();
            same(&*g, &p.cpu, &p.dev, &format!("forward NTT N={n}"));
            // The inverse of random NTT-domain words (not only of a forward transform).
            let w = random_words(&mut rng, &r, &limbs, count);
            let mut q = pair(&*g, w, &limbs, count, n, Repr::Ntt);
            cpu.ntt_inverse(&r, &mut q.cpu).unwrap();
            g.ntt_inverse(&r, &mut q.dev).unwrap();
            same(&*g, &q.cpu, &q.dev, &format!("inverse NTT N={n}"));
            cpu.ntt_inverse(&r, &mut p.cpu).unwrap();
            g.ntt_inverse(&r, &mut p.dev).unwrap();
            same(&*g, &p.cpu, &p.dev, &format!("round trip N={n}"));
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn elementwise_ops_with_broadcast() {
    let g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng(3);
    for &n in DEGREES {
        let r = mixed_ring(n);
        let limbs = vec![1usize, 4, 5, 7];
        for (ca, cb) in [(3usize, 3usize), (4, 1), (1, 1)] {
            let wa = random_words(&mut rng, &r, &limbs, ca);
            let wb = random_words(&mut rng, &r, &limbs, cb);
            let b = pair(&*g, wb, &limbs, cb, n, Repr::Ntt);
            type Op = fn(&dyn Backend, &RingContext, &mut PolyBatch, &PolyBatch);
            let ops: [(&str, Op); 3] = [
                ("add", |be, r, a, b| be.add_assign(r, a, b).unwrap()),
                ("sub", |be, r, a, b| be.sub_assign(r, a, b).unwrap()),
                ("mul", |be, r, a, b| be.mul_assign(r, a, b).unwrap()),
            ];
            for (name, op) in ops {
                let mut a = pair(&*g, wa.clone(), &limbs, ca, n, Repr::Ntt);
                op(&cpu, &r, &mut a.cpu, &b.cpu);
                op(&*g, &r, &mut a.dev, &b.dev);
                same(&*g, &a.cpu, &a.dev, &format!("{name} N={n} {ca}x{cb}"));
            }
            let mut a = pair(&*g, wa.clone(), &limbs, ca, n, Repr::Ntt);
            cpu.neg_assign(&r, &mut a.cpu).unwrap();
            g.neg_assign(&r, &mut a.dev).unwrap();
            same(&*g, &a.cpu, &a.dev, "neg");
            let s: Vec<u32> = (0..limbs.len()).map(|_| rng.next() as u32).collect();
            cpu.mul_scalar_assign(&r, &mut a.cpu, &s).unwrap();
            g.mul_scalar_assign(&r, &mut a.dev, &s).unwrap();
            same(&*g, &a.cpu, &a.dev, "mul_scalar");
            cpu.add_scalar_assign(&r, &mut a.cpu, &s).unwrap();
            g.add_scalar_assign(&r, &mut a.dev, &s).unwrap();
            same(&*g, &a.cpu, &a.dev, "add_scalar");
            // mul_acc with every broadcast combination.
            for (cx, cy) in [(ca, cb), (cb, ca), (1, 1)] {
                let x = pair(
                    &*g,
                    random_words(&mut rng, &r, &limbs, cx),
                    &limbs,
                    cx,
                    n,
                    Repr::Ntt,
                );
                let y = pair(
                    &*g,
                    random_words(&mut rng, &r, &limbs, cy),
                    &limbs,
                    cy,
                    n,
                    Repr::Ntt,
                );
                let mut acc = pair(&*g, wa.clone(), &limbs, ca, n, Repr::Ntt);
                let ok_cpu = cpu.mul_acc(&r, &mut acc.cpu, &x.cpu, &y.cpu).is_ok();
                let ok_gpu = g.mul_acc(&r, &mut acc.dev, &x.dev, &y.dev).is_ok();
                assert_eq!(ok_cpu, ok_gpu, "mul_acc acceptance {ca} {cx} {cy}");
                if ok_cpu {
                    same(&*g, &acc.cpu, &acc.dev, &format!("mul_acc {ca}/{cx}/{cy}"));
                }
            }
        }
        // Mismatched operands are rejected as on the CPU.
        let a1 = pair(
            &*g,
            random_words(&mut rng, &r, &[0, 1], 2),
            &[0, 1],
            2,
            n,
            Repr::Ntt,
        );
        let mut a2 = pair(
            &*g,
            random_words(&mut rng, &r, &[0, 2], 2),
            &[0, 2],
            2,
            n,
            Repr::Ntt,
        );
        assert!(g.add_assign(&r, &mut a2.dev, &a1.dev).is_err());
    }
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn linear_combinations_and_tensor_product() {
    let g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng(4);
    for &n in &[16usize, 4096, 8192] {
        let r = mixed_ring(n);
        let limbs = vec![0usize, 1, 2, 6];
        for (ni, outputs, count) in [
            (1usize, 1usize, 2usize),
            (20, 3, 2),
            (31, 10, 1),
            (4, 17, 3),
        ] {
            let ins: Vec<Pair> = (0..ni)
                .map(|_| {
                    let w = random_words(&mut rng, &r, &limbs, count);
                    pair(&*g, w, &limbs, count, n, Repr::Ntt)
                })
                .collect();
            let mut weights = Vec::with_capacity(outputs * ni * limbs.len());
            for _ in 0..outputs * ni {
                for &l in &limbs {
                    weights.push((rng.next() % r.modulus(l).value() as u64) as u32);
                }
            }
            let xc: Vec<&PolyBatch> = ins.iter().map(|p| &p.cpu).collect();
            let xg: Vec<&PolyBatch> = ins.iter().map(|p| &p.dev).collect();
            let yc = cpu.linear_combinations(&r, &xc, &weights, outputs).unwrap();
            let yg = g.linear_combinations(&r, &xg, &weights, outputs).unwrap();
            assert_eq!(yc.len(), yg.len());
            for (k, (a, b)) in yc.iter().zip(&yg).enumerate() {
                same(&*g, a, b, &format!("lincomb N={n} ni={ni} k={k}/{outputs}"));
            }
        }
        let a = pair(
            &*g,
            random_words(&mut rng, &r, &limbs, 2),
            &limbs,
            2,
            n,
            Repr::Ntt,
        );
        let b = pair(
            &*g,
            random_words(&mut rng, &r, &limbs, 2),
            &limbs,
            2,
            n,
            Repr::Ntt,
        );
        let tc = cpu.tensor_product(&r, &a.cpu, &b.cpu).unwrap();
        let tg = g.tensor_product(&r, &a.dev, &b.dev).unwrap();
        same(&*g, &tc, &tg, &format!("tensor product N={n}"));
    }
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn base_conversion_and_scale_and_round() {
    let g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng(5);
    for &n in &[16usize, 4096, 8192] {
        let r = mixed_ring(n);
        let ms = |ls: &[usize]| ls.iter().map(|&l| *r.modulus(l)).collect::<Vec<Modulus>>();
        // 30-bit -> mixed, mixed -> 30-bit, 24-bit-heavy sources: every reduction branch.
        for (from, to, count) in [
            (vec![0usize, 1, 2], vec![3usize, 4, 5, 6], 3usize),
            (vec![5, 6, 7], vec![0, 1], 2),
            (vec![4], vec![5, 6, 8], 1),
            (vec![0, 1, 2, 3, 4, 7, 8], vec![5, 6], 2),
        ] {
            let conv = BaseConverter::new(&ms(&from), &ms(&to));
            let p = pair(
                &*g,
                random_words(&mut rng, &r, &from, count),
                &from,
                count,
                n,
                Repr::Coeff,
            );
            for exact in [false, true] {
                let to_arc: Arc<[usize]> = to.as_slice().into();
                let c = cpu
                    .base_convert(&r, &p.cpu, to_arc.clone(), &conv, exact)
                    .unwrap();
                let d = g.base_convert(&r, &p.dev, to_arc, &conv, exact).unwrap();
                same(
                    &*g,
                    &c,
                    &d,
                    &format!("base_convert N={n} {from:?}->{to:?} exact={exact}"),
                );
            }
        }
        for (q, c, t) in [
            (vec![0usize, 1, 2], vec![3usize, 4, 5], 65537u64),
            (vec![0, 1], vec![5, 6, 2], (1 << 40) + 15),
            (vec![3, 4, 7, 8], vec![0, 1, 2, 5, 6], 1_000_003),
        ] {
            let rounder = ScaleRounder::new(&ms(&q), &ms(&c), t);
            let all: Vec<usize> = q.iter().chain(&c).copied().collect();
            let p = pair(
                &*g,
                random_words(&mut rng, &r, &all, 2),
                &all,
                2,
                n,
                Repr::Coeff,
            );
            let to: Arc<[usize]> = c.as_slice().into();
            let a = cpu
                .scale_and_round(&r, &p.cpu, to.clone(), &rounder)
                .unwrap();
            let b = g.scale_and_round(&r, &p.dev, to, &rounder).unwrap();
            same(
                &*g,
                &a,
                &b,
                &format!("scale_and_round N={n} {q:?}/{c:?} t={t}"),
            );
        }
    }
}

/// The fused ModDown and key switching against the CPU's reference composition: random
/// words, every level of a 7-prime chain with 2 special primes, 1 to 3 digits (the last one
/// partial below the top), batches of 1 to 3 for ModDown, and a layout the fused ModDown does
/// not take (its fallback).
#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn mod_down_and_key_switch() {
    key_switching::key_switching_matches_cpu(&*gpu(), &[16, 4096, 1 << 15], 11);
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn automorphisms_and_copies() {
    let g = gpu();
    let cpu = CpuBackend::new();
    let mut rng = Rng(6);
    for &n in DEGREES {
        let r = mixed_ring(n);
        let limbs = vec![0usize, 2, 3, 7];
        let p = pair(
            &*g,
            random_words(&mut rng, &r, &limbs, 3),
            &limbs,
            3,
            n,
            Repr::Coeff,
        );
        let pn = pair(
            &*g,
            random_words(&mut rng, &r, &limbs, 3),
            &limbs,
            3,
            n,
            Repr::Ntt,
        );
        for gal in [1usize, 3, 5, 2 * n - 1, 2 * n + 5, 25] {
            let a = cpu.automorphism(&r, &p.cpu, gal).unwrap();
            let b = g.automorphism(&r, &p.dev, gal).unwrap();
            same(&*g, &a, &b, &format!("automorphism N={n} g={gal}"));
            let a = cpu.automorphism_ntt(&r, &pn.cpu, gal).unwrap();
            let b = g.automorphism_ntt(&r, &pn.dev, gal).unwrap();
            same(&*g, &a, &b, &format!("automorphism_ntt N={n} g={gal}"));
        }
        assert!(g.automorphism(&r, &p.dev, 4).is_err());
        for sel in [vec![2usize, 3], vec![7, 0], vec![0, 2, 3, 7], vec![3]] {
            let s: Arc<[usize]> = sel.as_slice().into();
            for src in [
                &p,
                &pair(
                    &*g,
                    random_words(&mut rng, &r, &limbs, 1),
                    &limbs,
                    1,
                    n,
                    Repr::Ntt,
                ),
            ] {
                let a = cpu.select_limbs(&src.cpu, s.clone()).unwrap();
                let b = g.select_limbs(&src.dev, s.clone()).unwrap();
                same(&*g, &a, &b, &format!("select_limbs {sel:?}"));
            }
        }
        assert!(g.select_limbs(&p.dev, [1usize].as_slice().into()).is_err());
        for (start, len) in [(0usize, 3usize), (1, 2), (2, 1), (1, 0)] {
            let a = cpu.slice_polys(&p.cpu, start, len).unwrap();
            let b = g.slice_polys(&p.dev, start, len).unwrap();
            same(&*g, &a, &b, &format!("slice_polys {start}+{len}"));
        }
        let q = pair(
            &*g,
            random_words(&mut rng, &r, &limbs, 2),
            &limbs,
            2,
            n,
            Repr::Coeff,
        );
        let a = cpu.concat(&[&p.cpu, &q.cpu, &p.cpu]).unwrap();
        let b = g.concat(&[&p.dev, &q.dev, &p.dev]).unwrap();
        same(&*g, &a, &b, "concat");
        let other = vec![1usize, 4];
        let o = pair(
            &*g,
            random_words(&mut rng, &r, &other, 3),
            &other,
            3,
            n,
            Repr::Coeff,
        );
        let a = cpu.concat_limbs(&p.cpu, &o.cpu).unwrap();
        let b = g.concat_limbs(&p.dev, &o.dev).unwrap();
        same(&*g, &a, &b, "concat_limbs");
    }
}

// ---- scheme level: same seeds on both backends must give the same ciphertext words ----

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::rlwe::RlweContext;

fn ckks_on(backend: Arc<dyn Backend>, params: CkksParams) -> CkksContext {
    let rlwe = RlweContext::with_backend(params.rlwe().clone(), backend).unwrap();
    CkksContext::builder(params)
        .rlwe(rlwe)
        .seed([9; 32])
        .build()
        .unwrap()
}

fn ct_words(ctx: &CkksContext, ct: &hetensor::rlwe::Ciphertext) -> Vec<u32> {
    ctx.rlwe().backend().download(ct.polys()).unwrap()
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn ckks_multiply_relinearize_rescale_rotate() {
    ckks_ops_match_cpu(CkksParams::preset(13, 25).unwrap());
}

/// Composite levels: scale 2^40 in two primes per level, one rescale drops both.
#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn ckks_composite_multiply_relinearize_rescale_rotate() {
    let params = CkksParams::builder()
        .depth(2)
        .scale_bits(40)
        .log_n(13)
        .build()
        .unwrap();
    assert_eq!(params.composition(), 2);
    ckks_ops_match_cpu(params);
}

fn ckks_ops_match_cpu(params: CkksParams) {
    let g = gpu();
    let cc = ckks_on(Arc::new(CpuBackend::new()), params.clone());
    let cg = ckks_on(g.clone(), params);
    let (kc, kg) = (cc.keygen().unwrap(), cg.keygen().unwrap());
    let galc = cc
        .gen_galois_keys(&kc.secret, &[1, 2, 3, -3, 17], true)
        .unwrap();
    let galg = cg
        .gen_galois_keys(&kg.secret, &[1, 2, 3, -3, 17], true)
        .unwrap();
    let vals: Vec<f64> = (0..cc.rlwe().n() / 2)
        .map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0)
        .collect();
    let scale = cc.default_scale();
    let level = cc.max_level();
    let enc = |c: &CkksContext, k: &hetensor::ckks::KeySet| {
        let pt = c.encode(&vals, scale, level).unwrap();
        (
            c.encrypt(&pt, &k.public).unwrap(),
            c.encrypt_symmetric(&pt, &k.secret).unwrap(),
        )
    };
    let (a_c, b_c) = enc(&cc, &kc);
    let (a_g, b_g) = enc(&cg, &kg);
    assert_eq!(
        ct_words(&cc, &a_c),
        ct_words(&cg, &a_g),
        "public-key encryption"
    );
    assert_eq!(
        ct_words(&cc, &b_c),
        ct_words(&cg, &b_g),
        "symmetric encryption"
    );
    let m_c = cc
        .rescale(
            &cc.relinearize(&cc.multiply(&a_c, &b_c).unwrap(), &kc.relin)
                .unwrap(),
        )
        .unwrap();
    let m_g = cg
        .rescale(
            &cg.relinearize(&cg.multiply(&a_g, &b_g).unwrap(), &kg.relin)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        ct_words(&cc, &m_c),
        ct_words(&cg, &m_g),
        "multiply + relinearize + rescale"
    );
    // Once more one level down: key switching with the key's limbs indexed below the top.
    let sq = |c: &CkksContext, m: &hetensor::rlwe::Ciphertext, k: &hetensor::ckks::KeySet| {
        c.rescale(&c.relinearize(&c.multiply(m, m).unwrap(), &k.relin).unwrap())
            .unwrap()
    };
    assert_eq!(
        ct_words(&cc, &sq(&cc, &m_c, &kc)),
        ct_words(&cg, &sq(&cg, &m_g, &kg)),
        "multiply + relinearize + rescale below the top level"
    );
    // The fused form the lowering and bootstrapping run: one ModDown by P·q_l for the key
    // switch and the rescale, c2 read in place; at the top and one level down.
    let fused = |c: &CkksContext, x: &hetensor::rlwe::Ciphertext, y, k: &hetensor::ckks::KeySet| {
        c.relinearize_rescale(&c.multiply(x, y).unwrap(), &k.relin)
            .unwrap()
    };
    let (f_c, f_g) = (fused(&cc, &a_c, &b_c, &kc), fused(&cg, &a_g, &b_g, &kg));
    assert_eq!(
        ct_words(&cc, &f_c),
        ct_words(&cg, &f_g),
        "multiply + relinearize_rescale"
    );
    assert_eq!(
        ct_words(&cc, &fused(&cc, &f_c, &m_c, &kc)),
        ct_words(&cg, &fused(&cg, &f_g, &m_g, &kg)),
        "multiply + relinearize_rescale below the top level"
    );
    // And with the product never written (the CPU's two calls as the reference).
    let one = |c: &CkksContext, x: &hetensor::rlwe::Ciphertext, y, k: &hetensor::ckks::KeySet| {
        c.multiply_relinearize_rescale(x, y, &k.relin).unwrap()
    };
    let o_g = one(&cg, &a_g, &b_g, &kg);
    assert_eq!(
        ct_words(&cc, &f_c),
        ct_words(&cg, &o_g),
        "multiply_relinearize_rescale"
    );
    assert_eq!(
        ct_words(&cc, &fused(&cc, &f_c, &m_c, &kc)),
        ct_words(&cg, &one(&cg, &o_g, &m_g, &kg)),
        "multiply_relinearize_rescale below the top level"
    );
    for step in [1i64, -3, 17] {
        let r_c = cc.rotate(&m_c, step, &galc).unwrap();
        let r_g = cg.rotate(&m_g, step, &galg).unwrap();
        assert_eq!(ct_words(&cc, &r_c), ct_words(&cg, &r_g), "rotate {step}");
    }
    let many_c = cc.rotate_many(&a_c, &[1, -3, 17], &galc).unwrap();
    let many_g = cg.rotate_many(&a_g, &[1, -3, 17], &galg).unwrap();
    for (x, y) in many_c.iter().zip(&many_g) {
        assert_eq!(ct_words(&cc, x), ct_words(&cg, y), "hoisted rotations");
    }
    // A radix-4 round of slot sums: three hoisted rotations summed before one ModDown (the
    // CPU's fused sum against the device's composition).
    assert_eq!(
        ct_words(&cc, &cc.sum_slots(&m_c, 4, &galc).unwrap()),
        ct_words(&cg, &cg.sum_slots(&m_g, 4, &galg).unwrap()),
        "sum_slots"
    );
    let d_c = cc.decrypt_decode(&m_c, &kc.secret).unwrap();
    let d_g = cg.decrypt_decode(&m_g, &kg.secret).unwrap();
    assert_eq!(d_c, d_g);
    assert!((d_g[3] - vals[3] * vals[3]).abs() < 1e-2);
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn bfv_multiply_relinearize() {
    use hetensor::bfv::{BfvChain, BfvContext, BfvParams, PlainModulus};
    use hetensor::rlwe::Security;
    let g = gpu();
    let params = |_: ()| {
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Bits(20),
            primes: 4,
            dnum: 2,
            security: Security::InsecureForTestingOnly,
        })
        .unwrap()
    };
    let bc = BfvContext::builder(params(()))
        .backend(Arc::new(CpuBackend::new()))
        .seed([3; 32])
        .build()
        .unwrap();
    let bg = BfvContext::builder(params(()))
        .backend(g.clone())
        .seed([3; 32])
        .build()
        .unwrap();
    let run = |c: &BfvContext| {
        let keys = c.keygen().unwrap();
        let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
        let t = c.plain_modulus();
        let v: Vec<u64> = (0..c.slots() as u64).map(|i| (i * i + 7) % t).collect();
        let pt = c.encode(&v).unwrap();
        let a = c.encrypt(&pt, &pk).unwrap();
        let b = c.encrypt_symmetric(&pt, &sk).unwrap();
        let m = c.multiply_relin(&a, &b, &rk).unwrap();
        let m2 = c.multiply(&m, &a).unwrap();
        let words =
            |x: &hetensor::bfv::Ciphertext| c.rlwe().backend().download(x.inner().polys()).unwrap();
        let out = c.decode(&c.decrypt(&m2, &sk).unwrap()).unwrap();
        let want: Vec<u64> = v
            .iter()
            .map(|&x| ((x as u128).pow(3) % t as u128) as u64)
            .collect();
        assert_eq!(out, want);
        (words(&m), words(&m2))
    };
    let (c1, c2) = run(&bc);
    let (g1, g2) = run(&bg);
    assert_eq!(c1, g1, "BFV multiply + relinearize");
    assert_eq!(c2, g2, "BFV multiply (size 3)");
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn encrypted_lenet1_batch() {
    use hetensor::lower::forward_sequential;
    use hetensor::nn::{mnist, weights};
    use hetensor::tensor::{CipherTensor, EncryptionKey};
    use ndarray::s;
    let g = gpu();
    let model = weights::pretrained_lenet1().unwrap();
    // HETENSOR_MNIST_DIR: scripts/gpu_check.sh runs this binary where the build path is absent.
    let dir = std::env::var("HETENSOR_MNIST_DIR").unwrap_or(mnist::DEFAULT_DIR.into());
    let test = mnist::load_test(&dir).unwrap();
    let x = test
        .inputs
        .slice(s![0..8, .., .., ..])
        .to_owned()
        .into_dyn();
    let bound = 2.0
        * model
            .forward(&x)
            .unwrap()
            .iter()
            .fold(1.0f64, |m, v| m.max(v.abs()));
    // One encryption thread: encrypt_batched encrypts columns in parallel from one shared
    // sampler, so with several threads the noise each column gets depends on the schedule and
    // two runs (even both on the CPU) differ in their last bits.
    let serial = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let run = |c: &CkksContext| {
        let keys = c.keygen().unwrap();
        let ct = serial
            .install(|| CipherTensor::encrypt_batched(c, EncryptionKey::Secret(&keys.secret), &x))
            .unwrap();
        let out = forward_sequential(c, &model, &ct, &keys.relin, bound).unwrap();
        out.decrypt(c, &keys.secret).unwrap()
    };
    let t0 = std::time::Instant::now();
    let lc = run(&ckks_on(
        Arc::new(CpuBackend::new()),
        CkksParams::preset(13, 25).unwrap(),
    ));
    let t1 = std::time::Instant::now();
    let lg = run(&ckks_on(g.clone(), CkksParams::preset(13, 25).unwrap()));
    let t2 = std::time::Instant::now();
    eprintln!(
        "LeNet-1, 8 images: cpu {:.2} s, cuda {:.2} s (includes keygen and table uploads)",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
    // Identical words give identical decrypted logits, bit for bit.
    assert_eq!(lc.shape(), lg.shape());
    assert!(lc
        .iter()
        .zip(lg.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// A whole bootstrap at an insecure test ring, full-slot and sparse-slot (period 16): the
/// CUDA backend's output words equal the CPU's (under the shim in CI, on a device with
/// --ignored there).
#[test]
#[ignore = "needs a CUDA device: run with --ignored (HETENSOR_REQUIRE_CUDA=1 in scripts/test.sh; a missing device fails)"]
fn bootstrap_matches_cpu() {
    use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
    let g = gpu();
    let full = BootstrapParams::insecure_test_ring(10, 1).unwrap();
    for bp in [full.clone(), full.sparse(16).unwrap()] {
        let vals: Vec<f64> = (0..512)
            .map(|i| ((i % bp.slots()) * 37 % 101) as f64 / 50.0 - 1.0)
            .collect();
        let run = |be: Arc<dyn Backend>| {
            let ctx = ckks_on(be, bp.ckks().clone());
            let keys = ctx.keygen().unwrap();
            let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin).unwrap();
            let pt = ctx.encode(&vals, ctx.natural_scale(0), 0).unwrap();
            let ct = ctx.encrypt(&pt, &keys.public).unwrap();
            let out = ctx.bootstrap(&ct, &bk).unwrap();
            let dec = ctx.decrypt_decode(&out, &keys.secret).unwrap();
            (ct_words(&ctx, &out), dec)
        };
        let (cw, cd) = run(Arc::new(CpuBackend::new()));
        let (gw, gd) = run(g.clone());
        assert!(cw == gw, "bootstrap output words differ");
        assert_eq!(cd, gd);
        let bits = hetensor::ckks::precision_bits(&vals, &gd[..vals.len()]);
        assert!(bits > 18.0, "{bits:.1} bits");
    }
}
