//! CKKS with composite levels (several primes per level, scale above the 30-bit word): the
//! parameter builder, the chain's shape and natural scales, and every operation against the
//! plaintext computation at a precision single-prime chains cannot reach.

use hetensor::backend::default_backend;
use hetensor::ckks::{precision_bits, CkksContext, CkksParams};
use hetensor::rlwe::{Ciphertext, RlweParams, Security};
use hetensor::serialize::{self, PublicContext, WriteOptions};
use std::sync::OnceLock;

/// N = 2^14, Δ = 2^40 in two ~2^20 primes per level, depth 4, 128-bit.
fn ctx() -> &'static (
    CkksContext,
    hetensor::ckks::KeySet,
    hetensor::rlwe::GaloisKeys,
) {
    static C: OnceLock<(
        CkksContext,
        hetensor::ckks::KeySet,
        hetensor::rlwe::GaloisKeys,
    )> = OnceLock::new();
    C.get_or_init(|| {
        let params = CkksParams::builder()
            .depth(4)
            .scale_bits(40)
            .log_n(14)
            .build()
            .unwrap();
        let ctx = CkksContext::with_seed(params, [7; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let gk = ctx.gen_galois_keys(&keys.secret, &[1, -3], true).unwrap();
        (ctx, keys, gk)
    })
}

fn vals(seed: u64, len: usize) -> Vec<f64> {
    (0..len)
        .map(|i| ((i as f64 + 1.0) * 0.618 * (seed as f64 + 1.0)).sin())
        .collect()
}

// Error bounds at Δ = 2^40, N = 2^14, |x| ≤ 1. Fresh public-key noise is rounding after the
// division by P: per slot ≈ sqrt(N)·sqrt((1 + 2N/3)/12) ≈ 2^13, i.e. 2^-27 relative to Δ; 2^-24
// leaves a factor 8 (> 6σ). A product adds |a|·e_b + |b|·e_a plus relinearization and rescale
// rounding of the same order: 2^-22 bounds it, far below the 2^-12 of today's 2^25 chains.
const FRESH_BITS: f64 = 24.0;
const MUL_BITS: f64 = 22.0;

#[test]
fn builder_picks_the_smallest_ring_and_says_what_it_chose() {
    let p = CkksParams::builder()
        .depth(5)
        .scale_bits(40)
        .build()
        .unwrap();
    // Q ≈ 60 + 5·40 = 260 bits is beyond N = 2^13's 218.
    assert_eq!(p.n(), 1 << 14);
    assert_eq!(p.levels(), 5);
    assert_eq!(p.composition(), 2);
    let q = p.rlwe().q_primes();
    assert!(q.iter().all(|&x| x < 1 << 30));
    assert!(q
        .iter()
        .chain(p.rlwe().p_primes())
        .all(|&x| (x as u64 - 1).is_multiple_of(2 * p.n() as u64)));
    let mut distinct = q.to_vec();
    distinct.extend(p.rlwe().p_primes());
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), q.len() + p.rlwe().p_primes().len());
    for bits in p.level_bits() {
        assert!((bits - 40.0).abs() < 1.0, "level modulus 2^{bits}");
    }
    assert!(p.rlwe().log_qp() <= 438.0);
    let shown = p.to_string();
    assert!(
        shown.contains("N = 2^14") && shown.contains("128-bit"),
        "{shown}"
    );
    // Scales that fit one word keep one prime per level.
    let single = CkksParams::builder()
        .depth(3)
        .scale_bits(25)
        .build()
        .unwrap();
    assert_eq!(single.composition(), 1);
    // An expert can fix the composition degree.
    let t3 = CkksParams::builder()
        .depth(2)
        .scale_bits(60)
        .composition(3)
        .log_n(13)
        .security(Security::InsecureForTestingOnly)
        .build()
        .unwrap();
    assert_eq!(t3.composition(), 3);
}

#[test]
fn builder_errors_name_the_bound_and_what_fits() {
    // Depth 10 at 2^50 needs ≈ 570 bits of Q: too much for N = 2^14 (438).
    let err = CkksParams::builder()
        .depth(10)
        .scale_bits(50)
        .log_n(14)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs N ≥ 2^15"), "{err}");
    assert!(err.contains("N = 2^14 allows depth"), "{err}");
    // Too many slots for the supported rings.
    let err = CkksParams::builder()
        .slots(1 << 16)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("2^17"), "{err}");
    // 2^40 needs one prime ≤ 2^20 per level: at N = 2^16 there are almost none.
    let err = CkksParams::builder()
        .depth(8)
        .scale_bits(40)
        .log_n(16)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("too few"), "{err}");
}

#[test]
fn rescale_drops_a_whole_level_in_one_step() {
    let (ctx, keys, _) = ctx();
    let top = ctx.max_level();
    assert_eq!(top, 4);
    let x = vals(1, ctx.slots());
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), top).unwrap(),
            &keys.public,
        )
        .unwrap();
    let limbs = ct.polys().limbs().len();
    assert_eq!(limbs, 2 + 2 * top);
    let sq = ctx
        .rescale(
            &ctx.relinearize(&ctx.square(&ct).unwrap(), &keys.relin)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(sq.level(), top - 1);
    assert_eq!(sq.polys().limbs().len(), limbs - 2);
    // Squaring at the natural scale lands exactly on the next natural scale.
    assert_eq!(sq.scale(), ctx.natural_scale(top - 1));
    for l in 0..=top {
        assert!((ctx.natural_scale(l).log2() - 40.0).abs() < 0.5);
    }
}

#[test]
fn fresh_and_multiplied_precision_beats_twenty_bits() {
    let (ctx, keys, _) = ctx();
    let top = ctx.max_level();
    let (a, b) = (vals(2, ctx.slots()), vals(3, ctx.slots()));
    let pa = ctx.encode(&a, ctx.default_scale(), top).unwrap();
    let ca = ctx.encrypt(&pa, &keys.public).unwrap();
    let cb = ctx
        .encrypt_symmetric(
            &ctx.encode(&b, ctx.default_scale(), top).unwrap(),
            &keys.secret,
        )
        .unwrap();
    let bits = precision_bits(&a, &ctx.decrypt_decode(&ca, &keys.secret).unwrap());
    assert!(
        bits > FRESH_BITS,
        "fresh public-key precision {bits:.1} bits"
    );
    let bits = precision_bits(&b, &ctx.decrypt_decode(&cb, &keys.secret).unwrap());
    assert!(
        bits > FRESH_BITS,
        "fresh secret-key precision {bits:.1} bits"
    );
    // A chain of products down to level 0: a·b, then ·a at every level.
    let mut c = ctx
        .rescale(
            &ctx.relinearize(&ctx.multiply(&ca, &cb).unwrap(), &keys.relin)
                .unwrap(),
        )
        .unwrap();
    let mut want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let bits = precision_bits(&want, &ctx.decrypt_decode(&c, &keys.secret).unwrap());
    assert!(bits > MUL_BITS, "after one product: {bits:.1} bits");
    while c.level() > 0 {
        let lifted = ctx.match_scale(&ca, c.level(), c.scale()).unwrap();
        c = ctx
            .rescale(
                &ctx.relinearize(&ctx.multiply(&c, &lifted).unwrap(), &keys.relin)
                    .unwrap(),
            )
            .unwrap();
        want.iter_mut().zip(&a).for_each(|(w, x)| *w *= x);
        let bits = precision_bits(&want, &ctx.decrypt_decode(&c, &keys.secret).unwrap());
        assert!(bits > MUL_BITS - 2.0, "level {}: {bits:.1} bits", c.level());
    }
    // Plaintext ops and constants at the composite level's modulus.
    let pt = ctx.encode(&b, ctx.level_modulus(top), top).unwrap();
    let prod = ctx.rescale(&ctx.multiply_plain(&ca, &pt).unwrap()).unwrap();
    assert!((prod.scale() - ctx.default_scale()).abs() < 1e-6 * ctx.default_scale());
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let bits = precision_bits(&want, &ctx.decrypt_decode(&prod, &keys.secret).unwrap());
    assert!(bits > MUL_BITS, "plaintext product: {bits:.1} bits");
}

#[test]
fn rotations_polynomials_and_level_alignment() {
    let (ctx, keys, gk) = ctx();
    let top = ctx.max_level();
    let x = vals(4, ctx.slots());
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), top).unwrap(),
            &keys.public,
        )
        .unwrap();
    let n = ctx.slots();
    for step in [1i64, -3] {
        let r = ctx
            .decrypt_decode(&ctx.rotate(&ct, step, gk).unwrap(), &keys.secret)
            .unwrap();
        let want: Vec<f64> = (0..n)
            .map(|i| x[(i as i64 + step).rem_euclid(n as i64) as usize])
            .collect();
        let bits = precision_bits(&want, &r);
        assert!(bits > FRESH_BITS - 1.0, "rotate {step}: {bits:.1} bits");
    }
    // x³ − 0.5·x + 0.25 costs polynomial_depth(3) = 3 levels.
    let y = ctx
        .evaluate_polynomial(&ct, &[0.25, -0.5, 0.0, 1.0], &keys.relin)
        .unwrap();
    assert_eq!(y.level(), top - CkksContext::polynomial_depth(3));
    let want: Vec<f64> = x.iter().map(|v| v * v * v - 0.5 * v + 0.25).collect();
    let bits = precision_bits(&want, &ctx.decrypt_decode(&y, &keys.secret).unwrap());
    assert!(bits > MUL_BITS - 2.0, "polynomial: {bits:.1} bits");
    // Adding operands of different levels brings both to the lower one.
    let low = ctx.mod_switch_to(&ct, 1).unwrap();
    assert_eq!(low.polys().limbs().len(), 4);
    let sum = ctx.add(&ct, &low).unwrap();
    assert_eq!(sum.level(), 1);
    let want: Vec<f64> = x.iter().map(|v| 2.0 * v).collect();
    let bits = precision_bits(&want, &ctx.decrypt_decode(&sum, &keys.secret).unwrap());
    assert!(bits > FRESH_BITS - 1.0, "sum: {bits:.1} bits");
}

/// `extra_special_primes` trades key-switching noise for speed: at N = 2^13, depth 2, Δ = 2^40
/// a full-size extra special prime would leave room for 6 digits only, so the default's is
/// sized to the 18 bits the bound leaves and the chain keeps 3 digits, as it does without one.
/// A rotation keeps the fresh precision with the extra prime and loses several bits without
/// it (SEAL's level, ~20 bits; measured 26.8 vs 19.9).
/// The shallow evaluator on every degree up to 15, dense, sparse (the leading term alone,
/// every other coefficient zero) and with a zero constant: `ceil(log2(d + 1))` levels, the
/// target scale, and the plaintext polynomial within the precision of a product chain.
#[test]
fn shallow_polynomials_take_ceil_log2_of_degree_plus_one_levels() {
    let (ctx, keys, _) = ctx();
    let top = ctx.max_level();
    let x = vals(9, ctx.slots());
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), top).unwrap(),
            &keys.public,
        )
        .unwrap();
    let horner = |c: &[f64], v: f64| c.iter().rev().fold(0.0, |acc, &k| acc * v + k);
    for d in 1..=15usize {
        let dense: Vec<f64> = vals(100 + d as u64, d + 1)
            .iter()
            .map(|v| v * 0.9)
            .collect();
        let mut lead = vec![0.0; d + 1];
        lead[d] = -0.75;
        let mut every_other = dense.clone();
        every_other
            .iter_mut()
            .skip(1)
            .step_by(2)
            .for_each(|c| *c = 0.0);
        every_other[d] = 0.5;
        let mut no_constant = dense.clone();
        no_constant[0] = 0.0;
        let levels = (d as f64 + 1.0).log2().ceil() as usize;
        assert_eq!(CkksContext::polynomial_depth_shallow(d), levels);
        for coeffs in [&dense, &lead, &every_other, &no_constant] {
            let y = ctx
                .evaluate_polynomial_shallow(&ct, coeffs, &keys.relin, ct.scale())
                .unwrap();
            assert_eq!(y.level(), top - levels, "degree {d}: {coeffs:?}");
            assert!(
                ((y.scale() - ct.scale()) / ct.scale()).abs() < 1e-9,
                "degree {d}"
            );
            let want: Vec<f64> = x.iter().map(|&v| horner(coeffs, v)).collect();
            // The default evaluator, where the chain holds its extra level: the same values.
            if CkksContext::polynomial_depth(d) <= top {
                let z = ctx.evaluate_polynomial(&ct, coeffs, &keys.relin).unwrap();
                assert_eq!(z.level(), top - CkksContext::polynomial_depth(d));
                let bits = precision_bits(&want, &ctx.decrypt_decode(&z, &keys.secret).unwrap());
                assert!(bits > MUL_BITS - 4.0, "default, degree {d}: {bits:.1} bits");
            }
            let bits = precision_bits(&want, &ctx.decrypt_decode(&y, &keys.secret).unwrap());
            assert!(
                bits > MUL_BITS - 4.0,
                "degree {d} {coeffs:?}: {bits:.1} bits"
            );
        }
    }
    // Aimed at another scale: the natural scale of the level it ends at.
    let target = ctx.natural_scale(top - 2);
    let y = ctx
        .evaluate_polynomial_shallow(&ct, &[0.1, 0.2, 0.3, 0.4], &keys.relin, target)
        .unwrap();
    assert_eq!(y.level(), top - 2);
    assert!(((y.scale() - target) / target).abs() < 1e-9);
    let want: Vec<f64> = x
        .iter()
        .map(|&v| horner(&[0.1, 0.2, 0.3, 0.4], v))
        .collect();
    assert!(precision_bits(&want, &ctx.decrypt_decode(&y, &keys.secret).unwrap()) > MUL_BITS - 2.0);
    // Deeper than the chain: refused before any work.
    let low = ctx.mod_switch_to(&ct, 1).unwrap();
    assert!(matches!(
        ctx.evaluate_polynomial_shallow(&low, &[0.0, 0.0, 0.0, 1.0], &keys.relin, low.scale()),
        Err(hetensor::Error::TooDeep {
            need: 2,
            level: 1,
            ..
        })
    ));
}

#[test]
fn extra_special_primes_trade_rotation_precision_for_digits() {
    let rotation_bits = |p: CkksParams| {
        let ctx = CkksContext::with_seed(p, [9; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let gk = ctx.gen_galois_keys(&keys.secret, &[1], false).unwrap();
        let x = vals(11, ctx.slots());
        let ct = ctx
            .encrypt(
                &ctx.encode(&x, ctx.default_scale(), ctx.max_level())
                    .unwrap(),
                &keys.public,
            )
            .unwrap();
        let r = ctx
            .decrypt_decode(&ctx.rotate(&ct, 1, &gk).unwrap(), &keys.secret)
            .unwrap();
        let n = x.len();
        let want: Vec<f64> = (0..n).map(|i| x[(i + 1) % n]).collect();
        precision_bits(&want, &r)
    };
    let build = |extra: Option<usize>| {
        let b = CkksParams::builder().log_n(13).depth(2).scale_bits(40);
        match extra {
            Some(k) => b.extra_special_primes(k),
            None => b,
        }
        .build()
        .unwrap()
    };
    let (precise, fast) = (build(None), build(Some(0)));
    assert_eq!(build(Some(1)).rlwe(), precise.rlwe());
    // A full-size third special prime would exceed the bound at 3 digits (2^230 > 2^218):
    // the builder takes a prime that fills what is left (~17 bits, ≡ 1 mod 2N) instead of
    // going to 6 digits, and the bound holds.
    let p = precise.rlwe().p_primes();
    assert_eq!((precise.rlwe().dnum(), p.len()), (3, 3));
    assert_eq!(&p[..2], fast.rlwe().p_primes());
    assert!((14.0..=18.0).contains(&(p[2] as f64).log2()), "{p:?}");
    assert_eq!(p[2] as usize % (2 * precise.n()), 1);
    assert!(!precise.rlwe().q_primes().contains(&p[2]));
    assert!(
        precise.rlwe().log_qp() <= 218.0,
        "{}",
        precise.rlwe().log_qp()
    );
    assert_eq!((fast.rlwe().dnum(), fast.rlwe().p_primes().len()), (3, 2));
    // Where a full-size extra prime fits, it is still what the builder takes.
    let d1 = CkksParams::builder()
        .log_n(13)
        .depth(1)
        .scale_bits(40)
        .build()
        .unwrap();
    assert!(d1.rlwe().p_primes().iter().all(|&x| x > 1 << 29));
    assert_eq!(
        fast.rlwe().q_primes().len(),
        precise.rlwe().q_primes().len()
    );
    let (bp, bf) = (rotation_bits(precise), rotation_bits(fast));
    eprintln!("rotation: {bp:.1} bits with the extra special prime, {bf:.1} without");
    assert!(
        bp > FRESH_BITS && bf > 17.0 && bp > bf + 3.0,
        "{bp:.1} vs {bf:.1} bits"
    );
}

#[test]
fn composite_objects_round_trip_and_keep_their_shape() {
    let (ctx, keys, _) = ctx();
    let mut bytes = Vec::new();
    PublicContext::write_parts(
        &mut bytes,
        ctx,
        &keys.public,
        Some(&keys.relin),
        None,
        WriteOptions::default(),
    )
    .unwrap();
    let back = PublicContext::<CkksContext>::from_bytes(&bytes, default_backend()).unwrap();
    let remote = &back.context;
    assert_eq!(remote.max_level(), ctx.max_level());
    assert_eq!(remote.params().composition(), 2);
    assert_eq!(remote.rlwe().fingerprint(), ctx.rlwe().fingerprint());
    let x = vals(5, 100);
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), 2).unwrap(),
            &keys.public,
        )
        .unwrap();
    let wire = serialize::to_bytes(ctx.rlwe(), &ct, WriteOptions::default()).unwrap();
    let got: Ciphertext = serialize::from_bytes(remote.rlwe(), &wire).unwrap();
    assert_eq!(got.level(), 2);
    assert_eq!(got.polys().limbs().len(), 6);
    // The remote side computes on it with the shipped relinearization key.
    let relin = back.relin_key.as_ref().unwrap();
    let sq = remote
        .rescale(
            &remote
                .relinearize(&remote.square(&got).unwrap(), relin)
                .unwrap(),
        )
        .unwrap();
    let wire = serialize::to_bytes(remote.rlwe(), &sq, WriteOptions::default()).unwrap();
    let home: Ciphertext = serialize::from_bytes(ctx.rlwe(), &wire).unwrap();
    let want: Vec<f64> = x.iter().map(|v| v * v).collect();
    let bits = precision_bits(
        &want,
        &ctx.decrypt_decode(&home, &keys.secret).unwrap()[..100],
    );
    assert!(bits > MUL_BITS, "{bits:.1} bits");
    // The shape is part of the fingerprint (a single-prime set with the same primes differs).
    let composite = CkksParams::builder()
        .depth(1)
        .scale_bits(40)
        .log_n(12)
        .security(Security::InsecureForTestingOnly)
        .build()
        .unwrap();
    let r = &composite.rlwe();
    let flat = RlweParams::new(
        r.n(),
        r.q_primes().to_vec(),
        r.p_primes().to_vec(),
        vec![],
        r.dnum(),
        Security::InsecureForTestingOnly,
    )
    .unwrap();
    assert_eq!(flat.max_level(), 3);
    assert_eq!(composite.levels(), 1);
    assert_ne!(flat.fingerprint(), r.fingerprint());
}

/// A two-segment chain (computation levels at 2^40 under wider levels at 2^56, as
/// bootstrapping uses): fresh ciphertexts start at the top of the computation levels, each
/// segment keeps its own natural scale, the digits split by bits, and the shape survives the
/// compact format. Insecure ring so the test stays small; the shape logic is the same.
#[test]
fn two_segment_chain_levels_scales_digits_and_round_trip() {
    use hetensor::rlwe::LevelShape;
    let params = CkksParams::builder()
        .log_n(12)
        .depth(3)
        .scale_bits(40)
        .base_bits(48)
        .upper_levels(2, 56)
        .dnum(2)
        .security(Security::InsecureForTestingOnly)
        .build()
        .unwrap();
    let shape = params.rlwe().level_shape();
    assert_eq!(shape, LevelShape::two_segment(2, 3, 2, 2));
    assert_eq!(params.levels(), 5);
    assert_eq!(params.computation_levels(), 3);
    assert_eq!(params.upper_scale_bits(), Some(56));
    let bits = params.level_bits();
    assert!(bits[..3].iter().all(|b| (b - 40.0).abs() < 0.6), "{bits:?}");
    assert!(bits[3..].iter().all(|b| (b - 56.0).abs() < 0.6), "{bits:?}");
    // Digits balanced by bits, special primes covering the largest.
    let q = params.rlwe().q_primes().to_vec();
    let digit_bits: Vec<f64> = params
        .rlwe()
        .digit_ranges()
        .into_iter()
        .map(|r| q[r].iter().map(|&x| (x as f64).log2()).sum())
        .collect();
    assert_eq!(digit_bits.len(), 2);
    assert!(
        (digit_bits[0] - digit_bits[1]).abs() < 30.0,
        "{digit_bits:?}"
    );
    let p_bits: f64 = params
        .rlwe()
        .p_primes()
        .iter()
        .map(|&x| (x as f64).log2())
        .sum();
    assert!(p_bits >= params.rlwe().max_digit_bits());

    let ctx = CkksContext::with_seed(params, [9; 32]).unwrap();
    assert_eq!(ctx.max_level(), 3);
    assert_eq!(ctx.chain_top(), 5);
    assert!((ctx.natural_scale(3).log2() - 40.0).abs() < 1e-9);
    assert!((ctx.natural_scale(5).log2() - 56.0).abs() < 1e-9);
    assert!((ctx.natural_scale(4).log2() - 56.0).abs() < 0.6);
    let keys = ctx.keygen().unwrap();
    // A product at the computation top lands on the next level's natural scale.
    let x = vals(3, 64);
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    assert_eq!(ct.level(), 3);
    let sq = ctx
        .rescale(
            &ctx.relinearize(&ctx.square(&ct).unwrap(), &keys.relin)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(sq.level(), 2);
    assert!((sq.scale() / ctx.natural_scale(2) - 1.0).abs() < 1e-9);
    let want: Vec<f64> = x.iter().map(|v| v * v).collect();
    let got = ctx.decrypt_decode(&sq, &keys.secret).unwrap();
    assert!(precision_bits(&want, &got[..64]) > MUL_BITS);
    // An upper-level ciphertext rescales by a whole upper level.
    let hi = ctx
        .encrypt(
            &ctx.encode(&x, ctx.natural_scale(5), 5).unwrap(),
            &keys.public,
        )
        .unwrap();
    assert_eq!(hi.level(), 5);
    assert_eq!(ctx.rescale(&hi).unwrap().level(), 4);

    // The compact format keeps both segments and the upper scale.
    let mut bytes = Vec::new();
    PublicContext::write_parts(
        &mut bytes,
        &ctx,
        &keys.public,
        Some(&keys.relin),
        None,
        WriteOptions::default(),
    )
    .unwrap();
    let opts = serialize::DecodeOptions::allow_insecure();
    let back =
        PublicContext::<CkksContext>::from_bytes_with(&bytes, default_backend(), opts).unwrap();
    assert_eq!(back.context.params().rlwe(), ctx.params().rlwe());
    assert_eq!(back.context.params().upper_scale_bits(), Some(56));
    assert_eq!(back.context.rlwe().fingerprint(), ctx.rlwe().fingerprint());
    // The shape is part of the fingerprint.
    let uniform = RlweParams::with_shape(
        ctx.rlwe().n(),
        q,
        ctx.params().rlwe().p_primes().to_vec(),
        vec![],
        2,
        Security::InsecureForTestingOnly,
        LevelShape::uniform(2, 2),
    )
    .unwrap();
    assert_ne!(uniform.fingerprint(), ctx.rlwe().fingerprint());
}

/// Scales above 2^64 (the precise chain whose outputs survive 40-bit smudging, `train::
/// precise_training_params`): encoding reduces 128-bit coefficients, constants past 64 bits
/// multiply and add, a product rescales by its three primes, the results are as precise as a
/// double decodes, and the scale survives the compact format in a byte of its own (a wide
/// byte that names a narrow scale is refused). Insecure ring so the test stays small.
#[test]
fn scales_above_64_bits_encode_compute_and_round_trip() {
    let params = CkksParams::builder()
        .log_n(12)
        .depth(2)
        .scale_bits(84)
        .security(Security::InsecureForTestingOnly)
        .build()
        .unwrap();
    assert_eq!(params.rlwe().level_shape().width, 3);
    assert_eq!(params.scale_bits(), 84);
    let ctx = CkksContext::with_seed(params, [21; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let x = vals(5, 64);
    let top = ctx.max_level();
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), top).unwrap(),
            &keys.public,
        )
        .unwrap();
    let fresh = ctx.decrypt_decode(&ct, &keys.secret).unwrap();
    assert!(precision_bits(&x, &fresh[..64]) > 40.0);
    // A product: scale 2^168 before the rescale by three ~28-bit primes.
    let sq = ctx
        .multiply_relinearize_rescale(&ct, &ct, &keys.relin)
        .unwrap();
    assert_eq!(sq.level(), top - 1);
    let want: Vec<f64> = x.iter().map(|v| v * v).collect();
    let got = ctx.decrypt_decode(&sq, &keys.secret).unwrap();
    assert!(precision_bits(&want, &got[..64]) > 40.0);
    // Constants whose encodings pass 2^64: 0.3 at the level's natural scale (~2^84, times
    // the ciphertext's 2^84 in the product), and 1.5 added at the ciphertext's scale.
    let c = ctx
        .rescale(
            &ctx.multiply_scalar(&ct, 0.3, ctx.natural_scale(top))
                .unwrap(),
        )
        .unwrap();
    let c = ctx.add_scalar(&c, 1.5).unwrap();
    let want: Vec<f64> = x.iter().map(|v| 0.3 * v + 1.5).collect();
    let got = ctx.decrypt_decode(&c, &keys.secret).unwrap();
    assert!(precision_bits(&want, &got[..64]) > 40.0);

    let mut bytes = Vec::new();
    PublicContext::write_parts(
        &mut bytes,
        &ctx,
        &keys.public,
        None,
        None,
        WriteOptions::default(),
    )
    .unwrap();
    let opts = serialize::DecodeOptions::allow_insecure();
    let back =
        PublicContext::<CkksContext>::from_bytes_with(&bytes, default_backend(), opts).unwrap();
    assert_eq!(back.context.params().scale_bits(), 84);
    assert_eq!(back.context.rlwe().fingerprint(), ctx.rlwe().fingerprint());
    // Body: scheme, log n, dnum, security, then each prime list (count, u32s), then the scale
    // byte (0 and the composite flag: a wide scale follows), base, width, the wide scale.
    let r = ctx.params().rlwe();
    let scale_at = serialize::HEADER_LEN + 4 + 3 + 4 * (r.q_primes().len() + r.p_primes().len());
    assert_eq!(bytes[scale_at], 0x80);
    assert_eq!(bytes[scale_at + 3], 84);
    let mut bad = bytes.clone();
    bad[scale_at + 3] = 40;
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes_with(&bad, default_backend(), opts),
        Err(hetensor::Error::Decode(m)) if m.contains("wide scale")
    ));
}
