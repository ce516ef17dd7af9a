//! Multiparty HE (`hetensor::mhe`): collective keys, collective decryption, re-encryption and
//! refresh, checked against independent references — the plaintext computation (exact for
//! BFV), and the ideal secret key `Σ s_i` decrypting directly — plus statistical tests that a
//! strict subset of the shares decrypts to noise, and that no transcript byte string contains a
//! share's secret coefficients.
//!
//! Runs at the 128-bit presets (N = 2^13). Run with `cargo test --release --test mhe`.

use std::sync::Arc;

use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{self, Crs, Party, RefreshParams, ShamirShare, Share, Smudging};
use hetensor::rlwe::ciphertext::decrypt_to_poly;
use hetensor::rlwe::keys::{ckks_galois_element, galois_element_for_step};
use hetensor::rlwe::{GaloisKeys, PublicKey, RelinKey, RlweContext, SecretKey};
use hetensor::serialize::{self, WriteOptions};
use hetensor::Error;

#[path = "support/secrets.rs"]
mod secrets;
use secrets::{leaks, secret_windows};

fn parties(ctx: &Arc<RlweContext>, k: usize, seed: u8) -> (Crs, Vec<Party>) {
    let crs = Crs::new([seed; 32]);
    let ps = (0..k)
        .map(|i| {
            Party::new(
                ctx.clone(),
                crs,
                Sampler::from_seed([seed ^ (i as u8 + 1); 32]),
            )
        })
        .collect::<hetensor::Result<Vec<_>>>()
        .unwrap();
    (crs, ps)
}

fn agg(ctx: &RlweContext, shares: Vec<Share>) -> Share {
    mhe::aggregate(ctx, &shares).unwrap()
}

/// Runs CKG, RKG (two rounds) and RTG for `galois` among all parties.
fn collective_keys(
    ctx: &RlweContext,
    crs: &Crs,
    ps: &mut [Party],
    galois: &[usize],
) -> (PublicKey, RelinKey, GaloisKeys) {
    let ckg = agg(ctx, ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect());
    let pk = mhe::ckg_finalize(ctx, crs, &ckg).unwrap();
    let r1 = agg(
        ctx,
        ps.iter_mut().map(|p| p.rkg_round1().unwrap()).collect(),
    );
    let r2 = agg(
        ctx,
        ps.iter_mut().map(|p| p.rkg_round2(&r1).unwrap()).collect(),
    );
    let rk = mhe::rkg_finalize(ctx, &r1, &r2).unwrap();
    let rtg: Vec<Share> = galois
        .iter()
        .map(|&g| {
            agg(
                ctx,
                ps.iter_mut().map(|p| p.rtg_share(g).unwrap()).collect(),
            )
        })
        .collect();
    let gk = mhe::rtg_finalize(ctx, crs, &rtg).unwrap();
    (pk, rk, gk)
}

fn ideal(ctx: &RlweContext, ps: &[Party]) -> SecretKey {
    let shares: Vec<&SecretKey> = ps.iter().map(|p| p.secret_share()).collect();
    mhe::ideal_secret_key(ctx, &shares).unwrap()
}

fn values(seed: u64, n: usize, t: u64) -> Vec<u64> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % t
        })
        .collect()
}

fn rotate_rows_plain(v: &[u64], step: i64) -> Vec<u64> {
    let half = v.len() / 2;
    (0..v.len())
        .map(|i| {
            let (r, c) = (i / half, i % half);
            v[r * half + (c as i64 + step).rem_euclid(half as i64) as usize]
        })
        .collect()
}

/// BFV, K = 2 and 3, 128-bit preset: add, multiply + relinearize (collective key), rotate
/// (collective Galois key); then collective decryption (all parties, λ = 40 smudging from the
/// ciphertext's noise bound), decryption to one designated party, re-encryption to a receiver's
/// public key, and the ideal key — all exactly equal to the plaintext computation mod t.
#[test]
fn bfv_collective_keys_compute_and_decrypt_exactly() {
    let params = BfvParams::preset(13, PlainModulus::Bits(20)).unwrap();
    for k in [2usize, 3] {
        let bfv = BfvContext::with_seed(params.clone(), [40 + k as u8; 32]).unwrap();
        let ctx = bfv.rlwe().clone();
        let (crs, mut ps) = parties(&ctx, k, 10 + k as u8);
        let g = galois_element_for_step(ctx.n(), 1);
        let (pk, rk, gk) = collective_keys(&ctx, &crs, &mut ps, &[g]);
        let t = bfv.plain_modulus();
        let n = bfv.slots();
        let (a, b) = (values(1 + k as u64, n, t), values(99 + k as u64, n, t));
        let ca = bfv.encrypt(&bfv.encode(&a).unwrap(), &pk).unwrap();
        let cb = bfv.encrypt(&bfv.encode(&b).unwrap(), &pk).unwrap();
        let sum = bfv.add(&ca, &cb).unwrap();
        let prod = bfv.multiply_relin(&ca, &cb, &rk).unwrap();
        let rot = bfv.rotate_rows(&prod, 1, &gk).unwrap();
        let want_sum: Vec<u64> = a.iter().zip(&b).map(|(x, y)| (x + y) % t).collect();
        let want_prod: Vec<u64> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| ((x as u128 * y as u128) % t as u128) as u64)
            .collect();
        let want_rot = rotate_rows_plain(&want_prod, 1);
        let sk = ideal(&ctx, &ps);
        for (i, (ct, want)) in [(&sum, &want_sum), (&prod, &want_prod), (&rot, &want_rot)]
            .into_iter()
            .enumerate()
        {
            // The ideal key decrypts directly.
            assert_eq!(&bfv.decode(&bfv.decrypt(ct, &sk).unwrap()).unwrap(), want);
            // Collective decryption by all parties.
            let smudging = mhe::bfv_smudging(&bfv, ct, 40, k).unwrap();
            let run = 10 * i as u64;
            let shares = ps
                .iter_mut()
                .map(|p| p.cks_share(ct.inner(), None, &smudging, run).unwrap())
                .collect();
            let phase = mhe::decrypt_finalize(&ctx, ct.inner(), &agg(&ctx, shares)).unwrap();
            let got = bfv.decode(&bfv.decode_phase(&phase).unwrap()).unwrap();
            assert_eq!(&got, want, "K = {k}, collective decryption {i}");
            eprintln!(
                "K = {k} op {i}: smudging 2^{} (λ = 40) at level {}, estimated budget {:.1} bits before",
                smudging.bound_bits(),
                ct.level(),
                bfv.noise_budget_estimate(ct)
            );
            // Decryption to party 0: the others send shares, party 0 finishes locally.
            let others = ps[1..]
                .iter_mut()
                .map(|p| p.cks_share(ct.inner(), None, &smudging, run + 1).unwrap())
                .collect();
            let phase = ps[0].decrypt_with(ct.inner(), &agg(&ctx, others)).unwrap();
            assert_eq!(
                &bfv.decode(&bfv.decode_phase(&phase).unwrap()).unwrap(),
                want
            );
            // Re-encryption to a receiver outside the group (its own key set).
            let keys = bfv.keygen().unwrap();
            let (rsk, rpk) = (keys.secret, keys.public);
            let shares = ps
                .iter_mut()
                .map(|p| p.pcks_share(ct.inner(), &rpk, &smudging, run + 2).unwrap())
                .collect();
            let moved = mhe::pcks_finalize(&ctx, ct.inner(), &agg(&ctx, shares), &rpk).unwrap();
            assert_eq!(moved.key_id(), rpk.key_id());
            let x = decrypt_to_poly(&ctx, &rsk, &moved).unwrap();
            assert_eq!(&bfv.decode(&bfv.decode_phase(&x).unwrap()).unwrap(), want);
            // A single share cannot decrypt: the key sets match but the result is wrong.
            let one = bfv.decrypt(ct, ps[0].secret_share());
            assert!(one.is_err() || &bfv.decode(&one.unwrap()).unwrap() != want);
        }
    }
}

/// CKKS, K = 3: the same computation with collective keys (rescaled product, rotation),
/// checked against the plaintext computation through the ideal key and through collective
/// decryption. The decryption shares use a deliberately small smudging bound: at Δ = 2^25 a
/// 40-bit bound leaves no precision (see `hetensor::mhe`), so this checks the protocol's
/// arithmetic, not the 40-bit claim (which the BFV test exercises).
#[test]
fn ckks_collective_keys_compute_and_decrypt() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [5; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let k = 3;
    let (crs, mut ps) = parties(&ctx, k, 77);
    let g = ckks_galois_element(ctx.n(), 1);
    let (pk, rk, gk) = collective_keys(&ctx, &crs, &mut ps, &[g]);
    let slots = ckks.slots();
    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
        .collect();
    let y: Vec<f64> = (0..slots)
        .map(|i| ((i * 53 % 89) as f64 / 44.0) - 1.0)
        .collect();
    let enc = |v: &[f64]| {
        ckks.encrypt(
            &ckks
                .encode(v, ckks.default_scale(), ckks.max_level())
                .unwrap(),
            &pk,
        )
        .unwrap()
    };
    let (cx, cy) = (enc(&x), enc(&y));
    let sum = ckks.add(&cx, &cy).unwrap();
    let prod = ckks
        .rescale(
            &ckks
                .relinearize(&ckks.multiply(&cx, &cy).unwrap(), &rk)
                .unwrap(),
        )
        .unwrap();
    let rot = ckks.rotate(&prod, 1, &gk).unwrap();
    let want_sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let want_prod: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    let want_rot: Vec<f64> = (0..slots).map(|i| want_prod[(i + 1) % slots]).collect();
    let sk = ideal(&ctx, &ps);
    // The same computation under a single key: the collective keys (K noises summed, a
    // secret with coefficients in [−K, K]) may cost a little precision, not more.
    let single = ckks.keygen().unwrap();
    let sgk = ckks.gen_galois_keys(&single.secret, &[1], false).unwrap();
    let enc1 = |v: &[f64]| {
        ckks.encrypt(
            &ckks
                .encode(v, ckks.default_scale(), ckks.max_level())
                .unwrap(),
            &single.public,
        )
        .unwrap()
    };
    let (sx, sy) = (enc1(&x), enc1(&y));
    let sprod = ckks
        .rescale(
            &ckks
                .relinearize(&ckks.multiply(&sx, &sy).unwrap(), &single.relin)
                .unwrap(),
        )
        .unwrap();
    let single_cts = [
        ckks.add(&sx, &sy).unwrap(),
        sprod.clone(),
        ckks.rotate(&sprod, 1, &sgk).unwrap(),
    ];
    let smudging = Smudging::bits(10).unwrap();
    for (i, (ct, want)) in [(&sum, &want_sum), (&prod, &want_prod), (&rot, &want_rot)]
        .into_iter()
        .enumerate()
    {
        let max_err = |got: Vec<f64>| {
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let err = max_err(ckks.decrypt_decode(ct, &sk).unwrap());
        let single_err = max_err(ckks.decrypt_decode(&single_cts[i], &single.secret).unwrap());
        eprintln!("CKKS op {i}: ideal-key error {err:.2e}, single-key run {single_err:.2e}");
        assert!(
            err < 4.0 * single_err + 1e-4,
            "op {i}: ideal-key error {err} vs single key {single_err}"
        );
        let shares = ps
            .iter_mut()
            .map(|p| p.cks_share(ct, None, &smudging, i as u64).unwrap())
            .collect();
        let phase = mhe::decrypt_finalize(&ctx, ct, &agg(&ctx, shares)).unwrap();
        let got = ckks.decode_poly(&phase, ct.scale()).unwrap();
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a.re - b).abs())
            .fold(0.0, f64::max);
        eprintln!("CKKS op {i}: collective decryption max error {err:.2e} (smudging 2^10)");
        assert!(err < 5e-2, "op {i}: collective-decryption error {err}");
    }
    // Collective key switching to another collective key set (each party holds a share of
    // both): the result decrypts under the new ideal key, not the old one.
    let (crs2, ps2) = parties(&ctx, k, 78);
    let shares = ps
        .iter_mut()
        .zip(&ps2)
        .map(|(p, q)| {
            p.cks_share(&rot, Some(q.secret_share()), &smudging, 9)
                .unwrap()
        })
        .collect();
    let moved = mhe::cks_finalize(&ctx, &rot, &agg(&ctx, shares), crs2.key_id()).unwrap();
    let got = ckks.decrypt_decode(&moved, &ideal(&ctx, &ps2)).unwrap();
    let err = got
        .iter()
        .zip(&want_rot)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 5e-2, "key-switched to group 2: error {err}");
    assert!(matches!(
        ckks.decrypt_decode(&moved, &sk),
        Err(Error::KeyMismatch(_))
    ));
    // Encryption under the collective key, decryption with the ideal key (the shares' sum).
    assert_eq!(pk.key_id(), crs.key_id());
    assert_eq!(sk.key_id(), crs.key_id());
}

/// Centered residue of limb 0 of a phase, as a fraction of q_0 in (−1/2, 1/2].
fn phase_fractions(ctx: &RlweContext, phase: &hetensor::backend::PolyBatch) -> Vec<f64> {
    let words = ctx.backend().download(phase).unwrap();
    let q = ctx.ring().modulus(0).value() as f64;
    words[..ctx.n()]
        .iter()
        .map(|&w| {
            let w = w as f64;
            if w > q / 2.0 {
                (w - q) / q
            } else {
                w / q
            }
        })
        .collect()
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Decrypting with any strict subset of the shares (one share, or K − 1 of K) gives a phase
/// that is uniform modulo q (mean ≈ 0, mean |x| ≈ q/4, flat histogram) and decoded values
/// uncorrelated with the plaintext; the full set gives the plaintext back.
#[test]
fn strict_subsets_of_shares_decrypt_to_noise() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [9; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    for k in [2usize, 3] {
        let (crs, mut ps) = parties(&ctx, k, 30 + k as u8);
        let ckg = agg(
            &ctx,
            ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect(),
        );
        let pk = mhe::ckg_finalize(&ctx, &crs, &ckg).unwrap();
        let slots = ckks.slots();
        let x: Vec<f64> = (0..slots)
            .map(|i| ((i * 29 % 97) as f64 / 48.0) - 1.0)
            .collect();
        let ct = ckks
            .encrypt(&ckks.encode(&x, ckks.default_scale(), 2).unwrap(), &pk)
            .unwrap();
        for mask in 1..(1u32 << k) {
            let subset: Vec<&SecretKey> = (0..k)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| ps[i].secret_share())
                .collect();
            let key = mhe::ideal_secret_key(&ctx, &subset).unwrap();
            let phase = decrypt_to_poly(&ctx, &key, &ct).unwrap();
            let fr = phase_fractions(&ctx, &phase);
            let n = fr.len() as f64;
            let mean = fr.iter().sum::<f64>() / n;
            let mean_abs = fr.iter().map(|f| f.abs()).sum::<f64>() / n;
            let decoded: Vec<f64> = ckks
                .decode_poly(&phase, ct.scale())
                .unwrap()
                .iter()
                .map(|c| c.re)
                .collect();
            let r = correlation(&decoded, &x);
            if subset.len() == k {
                assert!(
                    mean_abs < 1e-3,
                    "the full key must decrypt (mean |x|/q = {mean_abs})"
                );
                assert!(r > 0.999, "full key: correlation {r}");
                continue;
            }
            // Uniform on (−1/2, 1/2]: mean 0 (sd 0.29/√N ≈ 0.003), mean |x| 1/4 (sd 0.0016).
            assert!(mean.abs() < 0.02, "K = {k}, subset {mask:b}: mean {mean}");
            assert!(
                (mean_abs - 0.25).abs() < 0.01,
                "K = {k}, subset {mask:b}: mean |x| {mean_abs}"
            );
            let mut hist = [0usize; 16];
            for f in &fr {
                hist[(((f + 0.5) * 16.0) as usize).min(15)] += 1;
            }
            let expect = n / 16.0;
            let chi2: f64 = hist
                .iter()
                .map(|&h| (h as f64 - expect).powi(2) / expect)
                .sum();
            // 15 degrees of freedom: P(χ² > 50) ≈ 1e-5.
            assert!(
                chi2 < 50.0,
                "K = {k}, subset {mask:b}: χ² = {chi2}, {hist:?}"
            );
            // 4096 samples: |r| of independent data has sd 1/64.
            assert!(r.abs() < 0.1, "K = {k}, subset {mask:b}: correlation {r}");
        }
    }
}

/// Every message of every protocol (serialized as it would travel) and every collective
/// object: no 16-byte run of any share's encodings appears in it. A transcript with a share
/// appended is caught (the check can fail).
#[test]
fn transcripts_contain_no_secret_share() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [3; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let k = 3;
    let (crs, mut ps) = parties(&ctx, k, 55);
    let opts = WriteOptions::default();
    let mut transcript = Vec::new();
    let send = |s: &Share, t: &mut Vec<u8>| t.extend(serialize::to_bytes(&ctx, s, opts).unwrap());
    let ckg: Vec<Share> = ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect();
    ckg.iter().for_each(|s| send(s, &mut transcript));
    let pk = mhe::ckg_finalize(&ctx, &crs, &mhe::aggregate(&ctx, &ckg).unwrap()).unwrap();
    let r1: Vec<Share> = ps.iter_mut().map(|p| p.rkg_round1().unwrap()).collect();
    r1.iter().for_each(|s| send(s, &mut transcript));
    let r1 = mhe::aggregate(&ctx, &r1).unwrap();
    let r2: Vec<Share> = ps.iter_mut().map(|p| p.rkg_round2(&r1).unwrap()).collect();
    r2.iter().for_each(|s| send(s, &mut transcript));
    let rk = mhe::rkg_finalize(&ctx, &r1, &mhe::aggregate(&ctx, &r2).unwrap()).unwrap();
    let g = galois_element_for_step(ctx.n(), 1);
    let rtg: Vec<Share> = ps.iter_mut().map(|p| p.rtg_share(g).unwrap()).collect();
    rtg.iter().for_each(|s| send(s, &mut transcript));
    let gk = mhe::rtg_finalize(&ctx, &crs, &[mhe::aggregate(&ctx, &rtg).unwrap()]).unwrap();
    let ct = ckks
        .encrypt(
            &ckks.encode(&[0.25, 0.5], ckks.default_scale(), 3).unwrap(),
            &pk,
        )
        .unwrap();
    let sm = Smudging::bits(20).unwrap();
    for p in ps.iter_mut() {
        send(&p.cks_share(&ct, None, &sm, 1).unwrap(), &mut transcript);
        let rpk = PublicKey::generate(
            &ctx,
            &SecretKey::generate(&ctx, &mut Sampler::from_seed([1; 32])).unwrap(),
            &mut Sampler::from_seed([2; 32]),
        )
        .unwrap();
        send(&p.pcks_share(&ct, &rpk, &sm, 2).unwrap(), &mut transcript);
        send(
            &p.refresh_share(&ct, 3, &RefreshParams::new(k, 27.0))
                .unwrap(),
            &mut transcript,
        );
    }
    transcript.extend(serialize::to_bytes(&ctx, &pk, opts).unwrap());
    transcript.extend(serialize::to_bytes(&ctx, &rk, opts).unwrap());
    transcript.extend(serialize::to_bytes(&ctx, &gk, opts).unwrap());
    transcript.extend(serialize::to_bytes(&ctx, &ct, opts).unwrap());
    eprintln!("transcript: {} bytes", transcript.len());
    for (i, p) in ps.iter().enumerate() {
        let w = secret_windows(&ctx, p.secret_share());
        assert!(
            !leaks(&transcript, &w),
            "party {i}'s share appears in the transcript"
        );
        // Positive control: the share itself, in the transcript, is found.
        let mut bad = transcript[..1000].to_vec();
        bad.extend(serialize::to_bytes(&ctx, p.secret_share(), opts).unwrap());
        assert!(leaks(&bad, &w), "the check must see a serialized share");
    }
}

/// Refresh: a ciphertext worn down to the lowest level that 40-bit masking allows comes back
/// at the top level with its value, and multiplies again; a lower level is a typed error; a
/// refresh straight after multiply + relinearize (scale Δ², Lattigo #187) is right.
#[test]
fn refresh_restores_the_top_level() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [8; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let k = 3;
    let (crs, mut ps) = parties(&ctx, k, 66);
    let (pk, rk, _) = collective_keys(&ctx, &crs, &mut ps, &[]);
    let sk = ideal(&ctx, &ps);
    let slots = ckks.slots();
    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 31 % 103) as f64 / 52.0) - 1.0)
        .collect();
    let mut ct = ckks
        .encrypt(
            &ckks
                .encode(&x, ckks.default_scale(), ckks.max_level())
                .unwrap(),
            &pk,
        )
        .unwrap();
    // |values| ≤ 1 at scale ≈ 2^25: coefficients below 2^26, one bit of slack.
    let params = RefreshParams::new(k, 27.0);
    let min = mhe::min_refresh_level(&ctx, &params).unwrap().unwrap();
    eprintln!(
        "refresh: masks of 2^{} bits, min log2 Q {:.1}, min level {min} of {}",
        params.mask_bits(ctx.n()).unwrap(),
        params.min_log_q(ctx.n()).unwrap(),
        ctx.max_level()
    );
    let mut want = x.clone();
    while ct.level() > min {
        ct = ckks
            .rescale(&ckks.relinearize(&ckks.square(&ct).unwrap(), &rk).unwrap())
            .unwrap();
        want.iter_mut().for_each(|v| *v *= *v);
    }
    // Below the minimum the masks cannot hide the message: refused.
    let low = ckks.mod_switch_to(&ct, min - 1).unwrap();
    match ps[0].refresh_share(&low, 1, &params) {
        Err(Error::Multiparty(m)) => assert!(m.contains("cannot mask"), "{m}"),
        other => panic!("expected a multiparty error, got {other:?}"),
    }
    let shares = ps
        .iter_mut()
        .map(|p| p.refresh_share(&ct, 2, &params).unwrap())
        .collect();
    let fresh = mhe::refresh_finalize(&ctx, &crs, &ct, &agg(&ctx, shares), 2).unwrap();
    assert_eq!(fresh.level(), ctx.max_level());
    assert!(fresh.is_seeded());
    let err = |ct: &hetensor::rlwe::Ciphertext, want: &[f64]| {
        ckks.decrypt_decode(ct, &sk)
            .unwrap()
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let before = err(&ct, &want);
    let after = err(&fresh, &want);
    eprintln!("refresh: error before {before:.2e}, after {after:.2e}");
    assert!(
        after < before + 1e-4,
        "refresh added error: {before} → {after}"
    );
    // And it multiplies again.
    let sq = ckks
        .rescale(
            &ckks
                .relinearize(&ckks.square(&fresh).unwrap(), &rk)
                .unwrap(),
        )
        .unwrap();
    let want_sq: Vec<f64> = want.iter().map(|v| v * v).collect();
    // Squaring doubles the relative error the value already carries.
    let after_sq = err(&sq, &want_sq);
    assert!(
        after_sq < 2.5 * after + 1e-3,
        "after refresh + square: {after_sq}"
    );

    // Lattigo #187: refresh right after multiply + relinearize, before rescaling.
    let top = ckks
        .encrypt(
            &ckks
                .encode(&x, ckks.default_scale(), ckks.max_level())
                .unwrap(),
            &pk,
        )
        .unwrap();
    let unscaled = ckks.relinearize(&ckks.square(&top).unwrap(), &rk).unwrap();
    let params2 = RefreshParams::new(k, unscaled.scale().log2() + 2.0);
    let shares = ps
        .iter_mut()
        .map(|p| p.refresh_share(&unscaled, 3, &params2).unwrap())
        .collect();
    let fresh2 = mhe::refresh_finalize(&ctx, &crs, &unscaled, &agg(&ctx, shares), 3).unwrap();
    let want2: Vec<f64> = x.iter().map(|v| v * v).collect();
    assert!(
        err(&fresh2, &want2) < 1e-3,
        "refresh after relinearize: {}",
        err(&fresh2, &want2)
    );
}

/// Misuse is a typed error: a retried share, shares of different runs or key sets, round 2
/// before round 1, a share decoded under other parameters.
#[test]
fn misuse_is_refused() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [4; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let (crs, mut ps) = parties(&ctx, 2, 21);
    ps[0].ckg_share().unwrap();
    assert!(matches!(ps[0].ckg_share(), Err(Error::Multiparty(_))));
    let r1 = ps[1].rkg_round1().unwrap();
    assert!(matches!(ps[0].rkg_round2(&r1), Err(Error::Multiparty(_))));
    let ckg = agg(&ctx, vec![ps[1].ckg_share().unwrap()]);
    let pk = mhe::ckg_finalize(&ctx, &crs, &ckg).unwrap();
    let ct = ckks
        .encrypt(&ckks.encode(&[1.0], ckks.default_scale(), 2).unwrap(), &pk)
        .unwrap();
    let sm = Smudging::bits(10).unwrap();
    let a = ps[0].cks_share(&ct, None, &sm, 1).unwrap();
    let b = ps[1].cks_share(&ct, None, &sm, 2).unwrap();
    assert!(matches!(
        mhe::aggregate(&ctx, &[a.clone(), b]),
        Err(Error::Multiparty(_))
    ));
    assert!(matches!(
        ps[0].cks_share(&ct, None, &sm, 1),
        Err(Error::Multiparty(_))
    ));
    // A party of another CRS (another key set) cannot join.
    let (_, mut other) = parties(&ctx, 1, 99);
    assert!(matches!(
        other[0].cks_share(&ct, None, &sm, 1),
        Err(Error::KeyMismatch(_))
    ));
    let foreign = other[0].ckg_share().unwrap();
    assert!(matches!(
        mhe::ckg_finalize(&ctx, &crs, &foreign),
        Err(Error::KeyMismatch(_))
    ));
    // A share is the wrong protocol for another finalizer.
    assert!(matches!(
        mhe::ckg_finalize(&ctx, &crs, &a),
        Err(Error::Multiparty(_))
    ));
    // Serialized shares round-trip and are refused under other parameters.
    let bytes = serialize::to_bytes(&ctx, &a, WriteOptions::default()).unwrap();
    let back: Share = serialize::from_bytes(&ctx, &bytes).unwrap();
    assert_eq!(back.protocol(), a.protocol());
    let other_ctx = CkksContext::new(CkksParams::preset(12, 25).unwrap()).unwrap();
    assert!(matches!(
        serialize::from_bytes::<Share>(other_ctx.rlwe(), &bytes),
        Err(Error::ParameterMismatch(_))
    ));
    // The ideal key (not ternary) cannot be serialized.
    let sk = ideal(&ctx, &ps);
    assert!(serialize::to_bytes(&ctx, &sk, WriteOptions::default()).is_err());
}

/// Sizes of the messages at the N = 2^13 CKKS preset (6 ciphertext primes, 2 special primes,
/// dnum 3), per party, and a word-for-word round trip of every share kind.
#[test]
fn share_sizes_and_round_trips() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [6; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let (crs, mut ps) = parties(&ctx, 2, 44);
    let opts = WriteOptions::default();
    let size = |s: &Share| serialize::to_bytes(&ctx, s, opts).unwrap().len();
    let check = |s: &Share| {
        let back: Share =
            serialize::from_bytes(&ctx, &serialize::to_bytes(&ctx, s, opts).unwrap()).unwrap();
        assert_eq!(back.protocol(), s.protocol());
        assert_eq!(back.level(), s.level());
        assert_eq!(
            serialize::to_bytes(&ctx, &back, opts).unwrap(),
            serialize::to_bytes(&ctx, s, opts).unwrap()
        );
    };
    let ckg: Vec<Share> = ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect();
    let r1: Vec<Share> = ps.iter_mut().map(|p| p.rkg_round1().unwrap()).collect();
    let r1a = mhe::aggregate(&ctx, &r1).unwrap();
    let r2: Vec<Share> = ps.iter_mut().map(|p| p.rkg_round2(&r1a).unwrap()).collect();
    let rk = mhe::rkg_finalize(&ctx, &r1a, &mhe::aggregate(&ctx, &r2).unwrap()).unwrap();
    let g = galois_element_for_step(ctx.n(), 1);
    let rtg = ps[0].rtg_share(g).unwrap();
    let pk = mhe::ckg_finalize(&ctx, &crs, &mhe::aggregate(&ctx, &ckg).unwrap()).unwrap();
    let ct = ckks
        .encrypt(&ckks.encode(&[1.0], ckks.default_scale(), 3).unwrap(), &pk)
        .unwrap();
    let cks = ps[0]
        .cks_share(&ct, None, &Smudging::bits(20).unwrap(), 1)
        .unwrap();
    let pcks = ps[0]
        .pcks_share(&ct, &pk, &Smudging::bits(20).unwrap(), 2)
        .unwrap();
    let refresh = ps[0]
        .refresh_share(&ct, 3, &RefreshParams::new(2, 27.0))
        .unwrap();
    for s in [&ckg[0], &r1[0], &r2[0], &rtg, &cks, &pcks, &refresh] {
        check(s);
    }
    let rk_bytes = serialize::to_bytes(&ctx, &rk, opts).unwrap().len();
    let digits = ctx.digits().len();
    eprintln!(
        "N = {}, {} q + {} p primes, dnum {digits}: CKG share {} B, RKG round 1 {} B + round 2 {} B = {} B per party; \
         relinearization key {} B; RTG share {} B per element; CKS share (level 3) {} B; PCKS {} B; refresh {} B",
        ctx.n(),
        ctx.max_level() + 1,
        ctx.p_limbs().len(),
        size(&ckg[0]),
        size(&r1[0]),
        size(&r2[0]),
        size(&r1[0]) + size(&r2[0]),
        rk_bytes,
        size(&rtg),
        size(&cks),
        size(&pcks),
        size(&refresh),
    );
    // One polynomial over QP per party for the public key, 3 per digit for RKG.
    let poly: usize = ctx
        .qp_limbs(ctx.max_level())
        .iter()
        .map(|&l| {
            (ctx.n() * (32 - ctx.ring().modulus(l).value().leading_zeros()) as usize).div_ceil(8)
        })
        .sum();
    let overhead = serialize::HEADER_LEN + serialize::CHECKSUM_LEN + 10;
    assert_eq!(size(&ckg[0]), poly + overhead);
    assert_eq!(
        size(&r1[0]) + size(&r2[0]),
        3 * digits * poly + 2 * overhead
    );
}

/// t-out-of-N: N = 4 parties generate the keys together and Shamir-share their shares with
/// t = 3; every set of 3 decrypts collectively (exactly, BFV, 40-bit smudging), a set of 2 gets
/// noise, and a threshold share cannot be serialized.
#[test]
fn threshold_any_t_of_n_decrypt() {
    let params = BfvParams::preset(13, PlainModulus::Bits(20)).unwrap();
    let bfv = BfvContext::with_seed(params, [70; 32]).unwrap();
    let ctx = bfv.rlwe().clone();
    let (n, t) = (4usize, 3usize);
    let (crs, mut ps) = parties(&ctx, n, 71);
    let ckg = agg(
        &ctx,
        ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect(),
    );
    let pk = mhe::ckg_finalize(&ctx, &crs, &ckg).unwrap();
    let sk = ideal(&ctx, &ps);
    let points = mhe::shamir_points(n);
    let mut inbox: Vec<Vec<ShamirShare>> = (0..n).map(|_| Vec::new()).collect();
    for p in ps.iter_mut() {
        for (j, s) in p.shamir_shares(t, &points).unwrap().into_iter().enumerate() {
            inbox[j].push(s);
        }
    }
    assert!(matches!(
        ps[0].shamir_shares(t, &points),
        Err(Error::Multiparty(_))
    ));
    let tsks: Vec<_> = (0..n)
        .map(|j| ps[j].threshold_secret(points[j], &inbox[j]).unwrap())
        .collect();
    let vals = values(5, bfv.slots(), bfv.plain_modulus());
    let ct = bfv.encrypt(&bfv.encode(&vals).unwrap(), &pk).unwrap();
    assert_eq!(bfv.decode(&bfv.decrypt(&ct, &sk).unwrap()).unwrap(), vals);
    let smudging = mhe::bfv_smudging(&bfv, &ct, 40, t).unwrap();
    let mut run = 0;
    for absent in 0..n {
        let active: Vec<usize> = (0..n).filter(|&j| j != absent).collect();
        let active_points: Vec<u64> = active.iter().map(|&j| points[j]).collect();
        let shares = active
            .iter()
            .map(|&j| {
                ps[j].activate_threshold(&tsks[j], &active_points).unwrap();
                ps[j].cks_share(ct.inner(), None, &smudging, run).unwrap()
            })
            .collect();
        run += 1;
        let phase = mhe::decrypt_finalize(&ctx, ct.inner(), &agg(&ctx, shares)).unwrap();
        let got = bfv.decode(&bfv.decode_phase(&phase).unwrap()).unwrap();
        assert_eq!(got, vals, "active set without party {absent}");
    }
    // Two of four (below the threshold), with their Lagrange weights: noise.
    let two = [0usize, 1];
    let two_points: Vec<u64> = two.iter().map(|&j| points[j]).collect();
    let shares = two
        .iter()
        .map(|&j| {
            ps[j].activate_threshold(&tsks[j], &two_points).unwrap();
            ps[j].cks_share(ct.inner(), None, &smudging, run).unwrap()
        })
        .collect();
    let phase = mhe::decrypt_finalize(&ctx, ct.inner(), &agg(&ctx, shares)).unwrap();
    match bfv.decode_phase(&phase) {
        Err(Error::NoiseBudgetExhausted { .. }) => {}
        Ok(pt) => assert_ne!(bfv.decode(&pt).unwrap(), vals),
        Err(e) => panic!("{e}"),
    }
    // The weighted share is uniform mod QP: no ternary coefficients to serialize.
    assert!(serialize::to_bytes(&ctx, ps[0].secret_share(), WriteOptions::default()).is_err());
    // An active set that leaves the party out is refused.
    assert!(matches!(
        ps[3].activate_threshold(&tsks[3], &two_points),
        Err(Error::Multiparty(_))
    ));
}

/// CKKS decryption smudging sized for λ bits (`⌈λ + log2 N + log2 B_e⌉`): refused where the
/// scale leaves no room (λ = 40 at Δ = 2^25, and even at 2^60), and where it leaves room
/// (λ = 20 at 2^60) the collective decryption carries noise of the promised size — far above
/// an unsmudged decryption's, within the precision the check guaranteed.
#[test]
fn ckks_smudging_is_sized_and_refused_without_room() {
    let ckks = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [6; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let k = 2;
    let (crs, mut ps) = parties(&ctx, k, 91);
    let ckg = agg(
        &ctx,
        ps.iter_mut().map(|p| p.ckg_share().unwrap()).collect(),
    );
    let pk = mhe::ckg_finalize(&ctx, &crs, &ckg).unwrap();
    let x: Vec<f64> = (0..ckks.slots())
        .map(|i| ((i * 29 % 97) as f64 / 48.0) - 1.0)
        .collect();
    let enc = |scale: f64| {
        ckks.encrypt(&ckks.encode(&x, scale, ckks.max_level()).unwrap(), &pk)
            .unwrap()
    };
    // A fresh encryption under the ideal key of 2 shares: noise below 2^13 (measured ~2^10).
    let noise = 13.0;
    let low = enc(ckks.default_scale());
    for (ct, lambda) in [(&low, 40), (&enc(2f64.powi(60)), 40)] {
        match mhe::ckks_smudging(&ctx, ct, lambda, k, noise, 8.0) {
            Err(Error::InvalidParameters(m)) => assert!(m.contains("bits under its scale"), "{m}"),
            other => panic!("λ = {lambda} at scale {}: {other:?}", ct.scale()),
        }
    }
    let high = enc(2f64.powi(60));
    let sm = mhe::ckks_smudging(&ctx, &high, 20, k, noise, 8.0).unwrap();
    assert_eq!(sm.bound_bits(), 20 + 13 + 13);
    assert!((sm.lambda_for(ctx.n(), noise) - 20.0).abs() < 1e-9);
    let decrypt = |ps: &mut [Party], sm: &Smudging, run: u64| {
        let shares = ps
            .iter_mut()
            .map(|p| p.cks_share(&high, None, sm, run).unwrap())
            .collect();
        let phase = mhe::decrypt_finalize(&ctx, &high, &agg(&ctx, shares)).unwrap();
        let got = ckks.decode_poly(&phase, high.scale()).unwrap();
        got.iter()
            .zip(&x)
            .map(|(a, b)| (a.re - b).abs())
            .fold(0.0, f64::max)
    };
    let smudged = decrypt(&mut ps, &sm, 1);
    let plain = decrypt(&mut ps, &Smudging::bits(0).unwrap(), 2);
    eprintln!(
        "CKKS at 2^60: error {smudged:.2e} with 2^{} smudging (λ = 20), {plain:.2e} without",
        sm.bound_bits()
    );
    // Slot error ≈ √N·K·2^46/√3 / 2^60 ≈ 2^-7.6; the check promised ≥ 8 bits of precision
    // per coefficient, i.e. ≤ N·2^-8 per slot in the worst case.
    assert!(
        smudged > 1e3 * plain,
        "the smudging is missing: {smudged} vs {plain}"
    );
    assert!(smudged < 0.1, "more noise than sized: {smudged}");
}

/// A collective refresh among `k` parties on `params`: slot values encrypted under the
/// collective key at the lowest level `rp` can refresh from, and the refreshed ciphertext.
struct Refreshed {
    ckks: CkksContext,
    ctx: Arc<RlweContext>,
    ps: Vec<Party>,
    sk: SecretKey,
    x: Vec<f64>,
    level: usize,
    fresh: hetensor::rlwe::Ciphertext,
}

fn refresh_from_the_lowest_level(
    params: CkksParams,
    seed: u8,
    k: usize,
    rp: &RefreshParams,
) -> Refreshed {
    let ckks = CkksContext::with_seed(params, [seed; 32]).unwrap();
    let ctx = ckks.rlwe().clone();
    let (crs, mut ps) = parties(&ctx, k, seed ^ 0x5a);
    let (pk, _, _) = collective_keys(&ctx, &crs, &mut ps, &[]);
    let sk = ideal(&ctx, &ps);
    let x: Vec<f64> = (0..ckks.slots())
        .map(|i| ((i * 17 % 61) as f64 / 30.0) - 1.0)
        .collect();
    let level = mhe::min_refresh_level(&ctx, rp).unwrap().unwrap();
    let ct = ckks
        .encrypt(&ckks.encode(&x, ckks.default_scale(), level).unwrap(), &pk)
        .unwrap();
    let shares = ps
        .iter_mut()
        .map(|p| p.refresh_share(&ct, 1, rp).unwrap())
        .collect();
    let fresh = mhe::refresh_finalize(&ctx, &crs, &ct, &agg(&ctx, shares), 1).unwrap();
    assert_eq!(fresh.level(), ctx.max_level());
    Refreshed {
        ckks,
        ctx,
        ps,
        sk,
        x,
        level,
        fresh,
    }
}

/// Largest |got − want| over the slots.
fn max_error(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Refresh on a chain whose levels are not one prime each (a two-prime 60-bit base, as the
/// transfer's `--parties` chain): the masked phase is extended to the primes above its level
/// by limb, and the refreshed ciphertext decrypts to the same values at the top.
#[test]
fn refresh_on_a_composite_base() {
    let params = CkksParams::builder()
        .log_n(13)
        .depth(3)
        .scale_bits(26)
        .base_bits(60)
        .build()
        .unwrap();
    let rp = RefreshParams::new(2, 28.0);
    let r = refresh_from_the_lowest_level(params, 12, 2, &rp);
    assert_eq!(
        r.level, 1,
        "the 60-bit base plus one 26-bit level holds the masks"
    );
    assert!(
        r.ctx.q_limbs(r.level).len() > r.level + 1,
        "a composite base"
    );
    let err = max_error(&r.ckks.decrypt_decode(&r.fresh, &r.sk).unwrap(), &r.x);
    assert!(err < 1e-3, "refreshed error {err}");
    // And it computes on: a product at the top level.
    let sq = r
        .ckks
        .rescale(&r.ckks.multiply(&r.fresh, &r.fresh).unwrap())
        .unwrap();
    assert!(sq.level() < r.fresh.level());
}

/// The precise chain's protocols (scale 2^84, what `train credit-federated --parties` uses for
/// 40-bit statistical output): a refresh masks a phase of ~2^86 with masks wider than 126 bits
/// (drawn as a high part times 2^64 plus 64 low bits) and the refreshed ciphertext decrypts to
/// the same values under the ideal key; `ckks_smudging` finds room for λ = 40 at this scale,
/// and the collective decryption under it carries noise far above an unsmudged one's yet
/// within the precision it promised. Insecure ring so the test stays small.
#[test]
fn precise_scale_refreshes_with_wide_masks_and_decrypts_at_40_bits() {
    let params = CkksParams::builder()
        .log_n(12)
        .depth(2)
        .scale_bits(84)
        .security(hetensor::rlwe::Security::InsecureForTestingOnly)
        .build()
        .unwrap();
    let k = 3;
    let rp = RefreshParams::new(k, 86.0);
    assert!(rp.mask_bits(1 << 12).unwrap() > 126, "the wide-mask path");
    let Refreshed {
        ckks,
        ctx,
        mut ps,
        sk,
        x,
        level,
        fresh,
    } = refresh_from_the_lowest_level(params, 13, k, &rp);
    assert!(level < ctx.max_level());
    let refreshed = max_error(&ckks.decrypt_decode(&fresh, &sk).unwrap(), &x);
    assert!(refreshed < 1e-9, "refreshed error {refreshed}");

    // 40-bit statistical smudging of a noise bound 2^13: 2^65 per share, room left at 2^84.
    let noise = 13.0;
    let sm = mhe::ckks_smudging(&ctx, &fresh, 40, k, noise, 8.0).unwrap();
    assert_eq!(sm.bound_bits(), 40 + 12 + 13);
    let decrypt = |ps: &mut [Party], sm: &Smudging, run: u64| {
        let shares = ps
            .iter_mut()
            .map(|p| p.cks_share(&fresh, None, sm, run).unwrap())
            .collect();
        let phase = mhe::decrypt_finalize(&ctx, &fresh, &agg(&ctx, shares)).unwrap();
        let got: Vec<f64> = ckks
            .decode_poly(&phase, fresh.scale())
            .unwrap()
            .iter()
            .map(|c| c.re)
            .collect();
        max_error(&got, &x)
    };
    let smudged = decrypt(&mut ps, &sm, 2);
    let plain = decrypt(&mut ps, &Smudging::bits(0).unwrap(), 3);
    eprintln!(
        "CKKS at 2^84: error {smudged:.2e} with 2^{} smudging (λ = 40), {plain:.2e} without",
        sm.bound_bits()
    );
    // Slot error ≈ √(N/2)·√K·2^65/√3 / 2^84 ≈ 2^-12.5 (std); max over 2048 slots ~4σ.
    assert!(
        smudged > 1e3 * plain,
        "the smudging is missing: {smudged} vs {plain}"
    );
    assert!(smudged < 1e-2, "more noise than sized: {smudged}");
}
