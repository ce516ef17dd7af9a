//! Criterion benchmarks: NTT per ring size; CKKS operations at N = 2^13..2^16 with each size's
//! deepest 128-bit chain (scale 2^25); BFV operations at the 128-bit presets (20-bit t).
//! Multiparty shares at N = 2^13 (`mhe/...`). `cargo bench --bench ops -- ckks/mul_relin/13` filters. Peer comparisons: BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::math::primes::ntt_primes;
use hetensor::math::{Modulus, NttPlan};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ntt(c: &mut Criterion) {
    let mut g = c.benchmark_group("ntt");
    for log_n in 10..=16u32 {
        let n = 1usize << log_n;
        let q = ntt_primes(30, 2 * n as u64, 1, &[]).expect("prime");
        let plan = NttPlan::new(n, Modulus::new(q[0]).expect("modulus")).expect("plan");
        let mut v: Vec<u32> = (0..n as u32)
            .map(|i| i.wrapping_mul(2654435761) % q[0])
            .collect();
        g.bench_with_input(BenchmarkId::new("forward", log_n), &log_n, |b, _| {
            b.iter(|| plan.forward(&mut v))
        });
        g.bench_with_input(BenchmarkId::new("inverse", log_n), &log_n, |b, _| {
            b.iter(|| plan.inverse(&mut v))
        });
    }
    g.finish();
}

fn ckks(c: &mut Criterion) {
    let mut g = c.benchmark_group("ckks");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for log_n in 13..=16u32 {
        let ctx =
            CkksContext::new(CkksParams::preset(log_n, 25).expect("preset")).expect("context");
        let keys = ctx.keygen().expect("keys");
        let gk = ctx
            .gen_galois_keys(&keys.secret, &[1], false)
            .expect("galois");
        let top = ctx.max_level();
        let vals: Vec<f64> = (0..ctx.slots()).map(|i| (i % 7) as f64 / 7.0).collect();
        let pt = ctx.encode(&vals, ctx.default_scale(), top).expect("encode");
        let a = ctx.encrypt(&pt, &keys.public).expect("encrypt");
        let prod = ctx
            .relinearize(&ctx.multiply(&a, &a).expect("mul"), &keys.relin)
            .expect("relin");
        let id = |op: &str| BenchmarkId::new(op, log_n);
        g.bench_function(id("encrypt"), |b| {
            b.iter(|| ctx.encrypt(&pt, &keys.public).expect("encrypt"))
        });
        g.bench_function(id("decrypt"), |b| {
            b.iter(|| ctx.decrypt_decode(&a, &keys.secret).expect("decrypt"))
        });
        g.bench_function(id("add"), |b| b.iter(|| ctx.add(&a, &a).expect("add")));
        g.bench_function(id("mul_relin"), |b| {
            b.iter(|| {
                ctx.relinearize(&ctx.multiply(&a, &a).expect("mul"), &keys.relin)
                    .expect("relin")
            })
        });
        g.bench_function(id("rescale"), |b| {
            b.iter(|| ctx.rescale(&prod).expect("rescale"))
        });
        g.bench_function(id("rotate"), |b| {
            b.iter(|| ctx.rotate(&a, 1, &gk).expect("rotate"))
        });
        let rlwe = ctx.rlwe().clone();
        let be = rlwe.backend();
        let d = be.slice_polys(a.polys(), 1, 1).expect("slice");
        let ksk = keys.relin.key_switch_key();
        g.bench_function(id("key_switch"), |b| {
            b.iter(|| ksk.switch(&rlwe, &d).expect("switch"))
        });
    }
    g.finish();
}

fn bfv(c: &mut Criterion) {
    use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
    let mut g = c.benchmark_group("bfv");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for log_n in 13..=16u32 {
        let ctx =
            BfvContext::new(BfvParams::preset(log_n, PlainModulus::Bits(20)).expect("preset"))
                .expect("context");
        let keys = ctx.keygen().expect("keys");
        let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
        let gk = ctx.gen_galois_keys(&sk, &[1]).expect("gk");
        let vals: Vec<u64> = (0..ctx.slots() as u64).map(|i| i % 1000).collect();
        let pt = ctx.encode(&vals).expect("encode");
        let a = ctx.encrypt(&pt, &pk).expect("encrypt");
        let id = |op: &str| BenchmarkId::new(op, log_n);
        g.bench_function(id("encrypt"), |b| {
            b.iter(|| ctx.encrypt(&pt, &pk).expect("encrypt"))
        });
        g.bench_function(id("decrypt"), |b| {
            b.iter(|| ctx.decrypt(&a, &sk).expect("decrypt"))
        });
        g.bench_function(id("add"), |b| b.iter(|| ctx.add(&a, &a).expect("add")));
        g.bench_function(id("mul_relin"), |b| {
            b.iter(|| {
                ctx.relinearize(&ctx.multiply(&a, &a).expect("mul"), &rk)
                    .expect("relin")
            })
        });
        g.bench_function(id("rotate"), |b| {
            b.iter(|| ctx.rotate_rows(&a, 1, &gk).expect("rotate"))
        });
    }
    g.finish();
}

/// Multiparty protocols (`hetensor::mhe`) at the N = 2^13 CKKS preset: one party's share of
/// each protocol (a fresh party per iteration, since a party answers a run once; its setup is
/// not timed) and the combiner's work for 3 parties.
fn mhe(c: &mut Criterion) {
    use criterion::BatchSize;
    use hetensor::math::sampler::Sampler;
    use hetensor::mhe::{self, Crs, Party, RefreshParams, Smudging};
    let mut g = c.benchmark_group("mhe");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let ckks = CkksContext::new(CkksParams::preset(13, 25).expect("preset")).expect("context");
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new([1; 32]);
    let party = || Party::new(ctx.clone(), crs, Sampler::from_os()).expect("party");
    let mut ps: Vec<Party> = (0..3).map(|_| party()).collect();
    let ckg: Vec<_> = ps.iter_mut().map(|p| p.ckg_share().expect("ckg")).collect();
    let pk = mhe::ckg_finalize(&ctx, &crs, &mhe::aggregate(&ctx, &ckg).expect("agg")).expect("pk");
    let r1: Vec<_> = ps.iter_mut().map(|p| p.rkg_round1().expect("r1")).collect();
    let r1 = mhe::aggregate(&ctx, &r1).expect("agg");
    let r2: Vec<_> = ps
        .iter_mut()
        .map(|p| p.rkg_round2(&r1).expect("r2"))
        .collect();
    let r2 = mhe::aggregate(&ctx, &r2).expect("agg");
    let ct = ckks
        .encrypt(
            &ckks
                .encode(&[0.5], ckks.default_scale(), 3)
                .expect("encode"),
            &pk,
        )
        .expect("encrypt");
    let rp = RefreshParams::new(3, 27.0);
    let refresh: Vec<_> = ps
        .iter_mut()
        .map(|p| p.refresh_share(&ct, 1, &rp).expect("refresh"))
        .collect();
    let sm = Smudging::bits(20).expect("smudging");
    let el = hetensor::rlwe::keys::galois_element_for_step(ctx.n(), 1);
    let batched = |b: &mut criterion::Bencher, f: &dyn Fn(&mut Party)| {
        b.iter_batched(party, |mut p| f(&mut p), BatchSize::SmallInput)
    };
    g.bench_function("ckg_share/13", |b| {
        batched(b, &|p| drop(p.ckg_share().expect("ckg")))
    });
    g.bench_function("rkg_round1/13", |b| {
        batched(b, &|p| drop(p.rkg_round1().expect("r1")))
    });
    g.bench_function("rkg_round2/13", |b| {
        batched(b, &|p| {
            p.rkg_round1().expect("r1");
            drop(p.rkg_round2(&r1).expect("r2"))
        })
    });
    g.bench_function("rtg_share/13", |b| {
        batched(b, &|p| drop(p.rtg_share(el).expect("rtg")))
    });
    g.bench_function("cks_share_level3/13", |b| {
        batched(b, &|p| drop(p.cks_share(&ct, None, &sm, 1).expect("cks")))
    });
    g.bench_function("refresh_share_level3/13", |b| {
        batched(b, &|p| drop(p.refresh_share(&ct, 1, &rp).expect("refresh")))
    });
    g.bench_function("rkg_finalize/13", |b| {
        b.iter(|| mhe::rkg_finalize(&ctx, &r1, &r2).expect("rk"))
    });
    g.bench_function("refresh_combine_3_parties/13", |b| {
        b.iter(|| {
            let agg = mhe::aggregate(&ctx, &refresh).expect("agg");
            mhe::refresh_finalize(&ctx, &crs, &ct, &agg, 1).expect("refresh")
        })
    });
    g.finish();
}

criterion_group!(benches, ntt, ckks, bfv, mhe);
criterion_main!(benches);
