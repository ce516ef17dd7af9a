//! CKKS: every homomorphic operation against the plaintext computation, within a bound derived
//! from the parameters; the full modulus chain; and every misuse returning a typed error.

use hetensor::ckks::{precision_bits, CkksContext, CkksParams, SinglePrimeChain};
use hetensor::rlwe::Security;
use hetensor::Error;
use proptest::prelude::*;
use std::sync::OnceLock;

/// N = 2^13 preset at scale 2^25: 5 levels, 128-bit secure.
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
        let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [3; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let gk = ctx
            .gen_galois_keys(&keys.secret, &[1, -1, 5, 100], true)
            .unwrap();
        (ctx, keys, gk)
    })
}

// Error bounds derived from the parameters (N = 2^13, Δ = 2^25, inputs |x| ≤ AMP = 8).
// Public-key encryption is done over QP and divided by P, so fresh noise is rounding:
// per coefficient std ≈ sqrt((1 + 2N/3)/12) ≈ 21, per slot ≈ sqrt(N)·21 ≈ 2^11, and 6σ/Δ ≈ 2^-11.5.
const FRESH: f64 = 1.0 / 1024.0;
// A product of two fresh values adds |a|·e_b + |b|·e_a ≤ 2·AMP·FRESH = 2^-6, plus the
// relinearization and rescale rounding (each ≈ fresh noise): 2^-5 bounds it.
const MUL: f64 = 1.0 / 32.0;
// Rescaling a size-3 ciphertext multiplies the rounding error by s² (coefficients ≈ 60): 2^-3.
const SIZE3_RESCALE: f64 = 1.0 / 8.0;
const AMP: f64 = 8.0;

fn vals(seed: u64, len: usize, amp: f64) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn close(want: &[f64], got: &[f64], bound: f64) {
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert!((a - b).abs() < bound, "slot {i}: want {a}, got {b}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn ops_match_plaintext(seed in any::<u64>()) {
        let (ctx, keys, gk) = ctx();
        let slots = ctx.slots();
        let a = vals(seed, slots, AMP);
        let b = vals(seed ^ 0x55, slots, AMP);
        let s = ctx.default_scale();
        let top = ctx.max_level();
        let ca = ctx.encrypt(&ctx.encode(&a, s, top).unwrap(), &keys.public).unwrap();
        let cb = ctx.encrypt_symmetric(&ctx.encode(&b, s, top).unwrap(), &keys.secret).unwrap();
        let dec = |c: &hetensor::rlwe::Ciphertext| ctx.decrypt_decode(c, &keys.secret).unwrap();

        close(&a, &dec(&ca), FRESH);
        close(&b, &dec(&cb), FRESH);
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        close(&sum, &dec(&ctx.add(&ca, &cb).unwrap()), 2.0 * FRESH);
        let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        close(&diff, &dec(&ctx.sub(&ca, &cb).unwrap()), 2.0 * FRESH);
        let neg: Vec<f64> = a.iter().map(|x| -x).collect();
        close(&neg, &dec(&ctx.negate(&ca).unwrap()), 2.0 * FRESH);

        let prod: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let m = ctx.rescale(&ctx.relinearize(&ctx.multiply(&ca, &cb).unwrap(), &keys.relin).unwrap()).unwrap();
        prop_assert_eq!(m.level(), top - 1);
        close(&prod, &dec(&m), MUL);
        // The fused relinearize-and-rescale: same level and scale, within the same bound.
        let f = ctx.relinearize_rescale(&ctx.multiply(&ca, &cb).unwrap(), &keys.relin).unwrap();
        prop_assert_eq!((f.level(), f.size()), (top - 1, 2));
        prop_assert!((f.scale() - m.scale()).abs() / m.scale() < 1e-12);
        close(&prod, &dec(&f), MUL);
        // In one call: the same words (the CPU computes the size-3 product; device backends
        // never write it), the left operand one level lower (aligned first).
        let o = ctx.multiply_relinearize_rescale(&ca, &cb, &keys.relin).unwrap();
        let words = |c: &hetensor::rlwe::Ciphertext| ctx.rlwe().backend().download(c.polys()).unwrap();
        prop_assert_eq!(words(&o), words(&f));
        prop_assert!((o.scale() - f.scale()).abs() / f.scale() < 1e-12);
        let low = ctx.mod_switch_to(&ca, top - 1).unwrap();
        let ol = ctx.multiply_relinearize_rescale(&low, &cb, &keys.relin).unwrap();
        let fl = ctx.relinearize_rescale(&ctx.multiply(&low, &cb).unwrap(), &keys.relin).unwrap();
        prop_assert_eq!((ol.level(), words(&ol)), (top - 2, words(&fl)));
        // Unrelinearized (size 3) decrypts too.
        close(&prod, &dec(&ctx.rescale(&ctx.multiply(&ca, &cb).unwrap()).unwrap()), SIZE3_RESCALE);

        let pm = ctx.rescale(&ctx.multiply_plain(&ca, &ctx.encode(&b, s, top).unwrap()).unwrap()).unwrap();
        close(&prod, &dec(&pm), MUL);
        let c = 0.7321;
        let sm = ctx.rescale(&ctx.multiply_scalar(&ca, c, ctx.level_modulus(top)).unwrap()).unwrap();
        prop_assert!((sm.scale() - s).abs() / s < 1e-12);
        close(&a.iter().map(|x| x * c).collect::<Vec<_>>(), &dec(&sm), 2.0 * FRESH);
        close(&a.iter().map(|x| x + 1.25).collect::<Vec<_>>(), &dec(&ctx.add_scalar(&ca, 1.25).unwrap()), FRESH);
        close(&sum, &dec(&ctx.add_plain(&ca, &ctx.encode(&b, s, top).unwrap()).unwrap()), FRESH);

        for step in [1i64, -1, 5, 100] {
            let r = ctx.rotate(&ca, step, gk).unwrap();
            let want: Vec<f64> = (0..slots).map(|j| a[(j as i64 + step).rem_euclid(slots as i64) as usize]).collect();
            close(&want, &dec(&r), 2.0 * FRESH);
        }
    }
}

#[test]
fn complex_slots_and_conjugation() {
    let (ctx, keys, gk) = ctx();
    use num_complex::Complex64;
    let z: Vec<Complex64> = (0..64)
        .map(|i| Complex64::new(i as f64 / 10.0, 1.0 - i as f64 / 32.0))
        .collect();
    let ct = ctx
        .encrypt(
            &ctx.encode_complex(&z, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    let conj = ctx
        .decrypt_complex(&ctx.conjugate(&ct, gk).unwrap(), &keys.secret)
        .unwrap();
    for (a, b) in z.iter().zip(&conj) {
        assert!((a.conj() - b).norm() < 2.0 * FRESH, "{a} vs {b}");
    }
}

#[test]
fn full_chain_depth() {
    // x -> x^2 through every level. Level 0 holds |m| < q_0 / (2Δ) = 2^4, so values start in
    // [0.95, 1.05] and end in [0.19, 4.8].
    let (ctx, keys, _) = ctx();
    let slots = ctx.slots();
    let x: Vec<f64> = vals(9, slots, 0.05).iter().map(|v| 1.0 + v).collect();
    let mut ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    let mut want = x.clone();
    let mut bits = Vec::new();
    while ct.level() > 0 {
        ct = ctx
            .rescale(
                &ctx.relinearize(&ctx.square(&ct).unwrap(), &keys.relin)
                    .unwrap(),
            )
            .unwrap();
        want.iter_mut().for_each(|v| *v *= *v);
        let got = ctx.decrypt_decode(&ct, &keys.secret).unwrap();
        bits.push(precision_bits(&want, &got));
    }
    // Each squaring doubles the relative error and adds ~MUL-size noise: after 5 levels the
    // absolute error stays below 2^-4 for values ≤ 4.8.
    assert_eq!(bits.len(), ctx.max_level());
    assert!(
        bits.iter().all(|&b| b > 4.0),
        "precision bits per level {bits:?}"
    );
    assert_eq!(
        ctx.rescale(&ct).unwrap_err().to_string(),
        Error::OutOfLevels {
            op: "rescale",
            level: 0
        }
        .to_string()
    );
}

#[test]
fn misuse_returns_typed_errors() {
    let (ctx, keys, gk) = ctx();
    let s = ctx.default_scale();
    let top = ctx.max_level();
    // too many values
    assert!(matches!(
        ctx.encode(&vec![1.0; ctx.slots() + 1], s, top),
        Err(Error::TooManyValues { .. })
    ));
    // scale overflow at encoding (level 0 holds 30 bits)
    assert!(matches!(
        ctx.encode(&[1e6], s, 0),
        Err(Error::ScaleOverflow(_))
    ));
    let a = ctx
        .encrypt(&ctx.encode(&[1.0, 2.0], s, top).unwrap(), &keys.public)
        .unwrap();
    // a non-finite constant is bad input, not a scale overflow; a huge one overflows, and the
    // message gives its size (2^1037.6: 1e300 · 2^40), not the inf the product rounds to
    for c in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = ctx.add_scalar(&a, c).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains("not finite")),
            "{e}"
        );
        let e = ctx.multiply_scalar(&a, c, s).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains("not finite")),
            "{e}"
        );
    }
    let e = ctx.multiply_scalar(&a, 1e300, s).unwrap_err();
    assert!(
        matches!(&e, Error::ScaleOverflow(m) if m.contains(&format!("is 2^{:.1}", 1e300f64.log2() + s.log2()))),
        "{e}"
    );
    // scale mismatch
    let b = ctx
        .encrypt(&ctx.encode(&[1.0], s * 2.0, top).unwrap(), &keys.public)
        .unwrap();
    assert!(matches!(ctx.add(&a, &b), Err(Error::ScaleMismatch { .. })));
    // levels are aligned automatically for add; plaintext below the ciphertext's level is rejected
    let low = ctx.mod_switch_to(&a, top - 2).unwrap();
    let sum = ctx.add(&a, &low).unwrap();
    assert_eq!(sum.level(), top - 2);
    let got = ctx.decrypt_decode(&sum, &keys.secret).unwrap();
    assert!((got[1] - 4.0).abs() < 2.0 * FRESH);
    let pt_low = ctx.encode(&[1.0], s, 1).unwrap();
    assert!(matches!(
        ctx.multiply_plain(&a, &pt_low),
        Err(Error::LevelMismatch { .. })
    ));
    // scale overflow on multiply without rescale at a low level
    let a1 = ctx.mod_switch_to(&a, 1).unwrap();
    let sq = ctx.multiply(&a1, &a1).unwrap();
    assert!(matches!(
        ctx.multiply(&sq, &a1),
        Err(Error::ScaleOverflow(_)) | Err(Error::CiphertextSize(_))
    ));
    let sq2 = ctx
        .rescale(&ctx.relinearize(&sq, &keys.relin).unwrap())
        .unwrap();
    // the one-call product: size-2 operands only, and a level to rescale into
    assert!(matches!(
        ctx.multiply_relinearize_rescale(&ctx.multiply(&a, &a).unwrap(), &a, &keys.relin),
        Err(Error::CiphertextSize(_))
    ));
    let a0 = ctx.mod_switch_to(&a, 0).unwrap();
    assert!(matches!(
        ctx.multiply_relinearize_rescale(&a0, &a0, &keys.relin),
        Err(Error::OutOfLevels { .. }) | Err(Error::ScaleOverflow(_))
    ));
    assert!(matches!(
        ctx.multiply(&sq2, &sq2),
        Err(Error::ScaleOverflow(_))
    ));
    // missing rotation key: the message names the step and how to make its key
    let missing = ctx.rotate(&a, 3, gk);
    assert!(matches!(
        missing,
        Err(Error::MissingGaloisKey { step: Some(3), .. })
    ));
    let msg = missing.unwrap_err().to_string();
    assert!(
        msg.contains("rotation step 3") && msg.contains("rotations="),
        "{msg}"
    );
    // ciphertext from another parameter set
    let other = CkksContext::new(
        CkksParams::single_prime(SinglePrimeChain {
            log_n: 13,
            levels: 3,
            scale_bits: 25,
            dnum: 2,
            security: Security::Bits128,
            ..Default::default()
        })
        .unwrap(),
    )
    .unwrap();
    let okeys = other.keygen().unwrap();
    let oc = other
        .encrypt(&other.encode(&[1.0], s, 3).unwrap(), &okeys.public)
        .unwrap();
    assert!(matches!(
        ctx.add(&a, &oc),
        Err(Error::ParameterMismatch(_)) | Err(Error::LevelMismatch { .. })
    ));
    assert!(matches!(
        ctx.decrypt_decode(&oc, &keys.secret),
        Err(Error::ParameterMismatch(_))
    ));
    // insecure parameters need the opt-in
    assert!(matches!(
        CkksParams::single_prime(SinglePrimeChain {
            log_n: 13,
            levels: 8,
            scale_bits: 28,
            dnum: 1,
            security: Security::Bits128,
            ..Default::default()
        }),
        Err(Error::InsecureParameters { .. })
    ));
    assert!(CkksParams::single_prime(SinglePrimeChain {
        log_n: 13,
        levels: 8,
        scale_bits: 28,
        dnum: 1,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .is_ok());
}

#[test]
fn presets_fit_the_security_bound() {
    for (log_n, max) in [(13u32, 218.0), (14, 438.0), (15, 881.0)] {
        let p = CkksParams::preset(log_n, 25).unwrap();
        assert!(p.rlwe().log_qp() <= max, "{log_n}: {}", p.rlwe().log_qp());
        assert!(p.levels() >= 5);
    }
}

#[test]
fn secret_key_debug_is_redacted() {
    let (_, keys, _) = ctx();
    let shown = format!("{:?}", keys.secret);
    assert!(shown.contains("redacted"), "{shown}");
    // Nothing but the redaction note and the parameter fingerprint.
    assert!(shown.len() < 80, "{shown}");
    let all = format!("{keys:?}");
    assert!(all.contains("SecretKey(<redacted>"));
}

#[test]
fn hoisted_rotations_match_single_rotations() {
    let (ctx, keys, gk) = ctx();
    let slots = ctx.slots();
    let a = vals(77, slots, AMP);
    let ca = ctx
        .encrypt(
            &ctx.encode(&a, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    let steps = [1i64, 0, -1, 5, 100];
    let many = ctx.rotate_many(&ca, &steps, gk).unwrap();
    for (r, &step) in many.iter().zip(&steps) {
        let want: Vec<f64> = (0..slots)
            .map(|j| a[(j as i64 + step).rem_euclid(slots as i64) as usize])
            .collect();
        close(
            &want,
            &ctx.decrypt_decode(r, &keys.secret).unwrap(),
            2.0 * FRESH,
        );
    }
    assert!(matches!(
        ctx.rotate_many(&ca, &[1, 3], gk),
        Err(Error::MissingGaloisKey { step: Some(3), .. })
    ));
}

#[test]
fn ntt_domain_automorphism_is_the_coefficient_one_transformed() {
    let (ctx, _, _) = ctx();
    let rlwe = ctx.rlwe();
    let (be, ring) = (rlwe.backend(), rlwe.ring());
    let n = rlwe.n();
    let coeffs: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 2003 - 1000).collect();
    let a = rlwe.upload_signed(&coeffs, rlwe.q_limbs(2)).unwrap();
    for g in [3usize, 5, 2 * n - 1, 3usize.pow(7) % (2 * n)] {
        let mut via_coeff = be.automorphism(ring, &a, g).unwrap();
        be.ntt_forward(ring, &mut via_coeff).unwrap();
        let mut a_ntt = a.clone();
        be.ntt_forward(ring, &mut a_ntt).unwrap();
        let via_ntt = be.automorphism_ntt(ring, &a_ntt, g).unwrap();
        assert_eq!(
            be.download(&via_coeff).unwrap(),
            be.download(&via_ntt).unwrap(),
            "g = {g}"
        );
    }
}

#[test]
fn upload_signed_reduces_small_and_large_coefficients_alike() {
    // Small coefficients take a branch-free path; any one beyond a modulus forces the general
    // Barrett path. Both must give each limb's true residue.
    let (ctx, _, _) = ctx();
    let rlwe = ctx.rlwe();
    let n = rlwe.n();
    let limbs = rlwe.q_limbs(2);
    for big in [false, true] {
        let coeffs: Vec<i64> = (0..n as i64)
            .map(|i| match (big, i) {
                (true, 0) => -(1 << 40) - 3,
                (true, 1) => i64::MIN + 1,
                _ => (i * 7919) % 2003 - 1000,
            })
            .collect();
        let words = rlwe
            .backend()
            .download(&rlwe.upload_signed(&coeffs, limbs.clone()).unwrap())
            .unwrap();
        for (j, &l) in limbs.iter().enumerate() {
            let q = rlwe.ring().modulus(l).value() as i128;
            for (i, &c) in coeffs.iter().enumerate() {
                assert_eq!(
                    words[j * n + i] as i128,
                    (c as i128).rem_euclid(q),
                    "big {big}, limb {l}, coeff {i}"
                );
            }
        }
    }
}

#[test]
fn a_broadcast_value_encodes_as_the_constant_polynomial() {
    // One real value in every slot skips the embedding and the NTT. Its words must be the
    // transform of the constant coefficient the embedding gives (checked to round to it),
    // at every level, for both signs and for an overflowing value.
    let (ctx, keys, _) = ctx();
    let rlwe = ctx.rlwe();
    let (n, slots, scale) = (rlwe.n(), ctx.slots(), ctx.default_scale());
    for &c in &[0.1, -3.7, 0.0, 12.3456, -1e-6] {
        let embedded = hetensor::ckks::CkksEncoder::new(n)
            .embed_inverse(&vec![num_complex::Complex64::new(c, 0.0); slots]);
        let coeffs: Vec<i64> = embedded
            .iter()
            .map(|&x| (x * scale).round() as i64)
            .collect();
        assert_eq!(coeffs[0], (c * scale).round() as i64, "{c}");
        assert!(coeffs[1..].iter().all(|&x| x == 0), "{c}");
        for level in [0, ctx.max_level()] {
            let pt = ctx.encode(&vec![c; slots], scale, level).unwrap();
            let want = rlwe
                .upload_signed_ntt(&coeffs, rlwe.q_limbs(level))
                .unwrap();
            let be = rlwe.backend();
            assert_eq!(
                be.download(pt.poly()).unwrap(),
                be.download(&want).unwrap(),
                "{c} at {level}"
            );
            let ct = ctx.encrypt_symmetric(&pt, &keys.secret).unwrap();
            let got = ctx.decrypt_decode(&ct, &keys.secret).unwrap();
            close(&vec![c; slots], &got[..slots], FRESH);
        }
    }
    assert!(matches!(
        ctx.encode(&vec![1e30; slots], scale, 0),
        Err(Error::ScaleOverflow(_))
    ));
}

/// N = 2^12, 3 levels at 2^25, 2 digits: small enough for key-set tests (not secure).
fn small_insecure_params() -> CkksParams {
    CkksParams::single_prime(SinglePrimeChain {
        log_n: 12,
        levels: 3,
        scale_bits: 25,
        dnum: 2,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap()
}

/// Two key sets under the same parameters: every operation that combines a ciphertext with
/// another key set's ciphertext or key is a typed error, not a silently wrong result (decrypting
/// under the wrong key used to give values of ~1e16 with no error).
#[test]
fn key_sets_cannot_be_mixed() {
    let params = small_insecure_params();
    let ctx = CkksContext::with_seed(params, [21; 32]).unwrap();
    let a = ctx.keygen().unwrap();
    let b = ctx.keygen().unwrap();
    assert_ne!(a.secret.key_id(), b.secret.key_id());
    assert_eq!(a.public.key_id(), a.secret.key_id());
    assert_eq!(a.relin.key_switch_key().key_id(), a.secret.key_id());
    let x = [1.5, -2.0, 0.25];
    let pt = ctx
        .encode(&x, ctx.default_scale(), ctx.max_level())
        .unwrap();
    let ca = ctx.encrypt(&pt, &a.public).unwrap();
    let cb = ctx.encrypt(&pt, &b.public).unwrap();
    let sa = ctx.encrypt_symmetric(&pt, &a.secret).unwrap();
    assert_eq!(ca.key_id(), a.secret.key_id());
    assert_eq!(sa.key_id(), a.secret.key_id());
    fn mismatch<T>(r: hetensor::Result<T>) -> bool {
        matches!(r, Err(Error::KeyMismatch(_)))
    }
    assert!(mismatch(ctx.decrypt_decode(&ca, &b.secret)));
    assert!(mismatch(ctx.add(&ca, &cb)));
    assert!(mismatch(ctx.sub(&cb, &sa)));
    assert!(mismatch(ctx.multiply(&ca, &cb)));
    assert!(mismatch(ctx.linear_combination(
        &[&ca, &cb],
        &[1.0, 1.0],
        1.0
    )));
    let sq = ctx.square(&ca).unwrap();
    assert!(mismatch(ctx.relinearize(&sq, &b.relin)));
    let gb = ctx.gen_galois_keys(&b.secret, &[1], false).unwrap();
    assert!(mismatch(ctx.rotate(&ca, 1, &gb)));
    assert!(mismatch(ctx.rotate_many(&ca, &[1], &gb)));
    // The same operations within one key set work, and their results keep the key set.
    let ga = ctx.gen_galois_keys(&a.secret, &[1], false).unwrap();
    let r = ctx
        .rescale(
            &ctx.relinearize(&ctx.multiply(&ca, &sa).unwrap(), &a.relin)
                .unwrap(),
        )
        .unwrap();
    let r = ctx.rotate(&r, 1, &ga).unwrap();
    assert_eq!(r.key_id(), a.secret.key_id());
    let got = ctx.decrypt_decode(&r, &a.secret).unwrap();
    assert!((got[0] - x[1] * x[1]).abs() < 1e-2, "{}", got[0]);
    assert!((got[1] - x[2] * x[2]).abs() < 1e-2, "{}", got[1]);
}

/// `gen_public_key` / `gen_relin_key` (the names BFV has too) make working keys for a secret
/// key held apart from its `KeySet`: a product relinearized with them decrypts right, and the
/// keys belong to that secret's key set.
#[test]
fn public_and_relin_keys_from_a_secret_key() {
    let params = small_insecure_params();
    let ctx = CkksContext::with_seed(params, [22; 32]).unwrap();
    let sk = ctx.keygen().unwrap().secret;
    let pk = ctx.gen_public_key(&sk).unwrap();
    let rk = ctx.gen_relin_key(&sk).unwrap();
    assert_eq!(pk.key_id(), sk.key_id());
    let x = [1.5, -2.0, 0.25];
    let ct = ctx
        .encrypt(
            &ctx.encode(&x, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &pk,
        )
        .unwrap();
    let sq = ctx
        .rescale(&ctx.relinearize(&ctx.square(&ct).unwrap(), &rk).unwrap())
        .unwrap();
    let got = ctx.decrypt_decode(&sq, &sk).unwrap();
    close(&[2.25, 4.0, 0.0625], &got[..3], 1e-2);
}

/// One context builder for both schemes: a seed reproduces the keys, an RLWE context is shared
/// only with the parameters it was built for, and a backend and an RLWE context together are
/// refused rather than one silently ignored. Explicit chains build what the builder built.
#[test]
fn context_builder_is_shared_by_both_schemes() {
    use hetensor::backend::CpuBackend;
    use hetensor::bfv::{BfvChain, BfvContext, BfvParams, PlainModulus};
    use hetensor::ckks::ExplicitChain;
    use std::sync::Arc;

    let params = small_insecure_params();
    let a = CkksContext::builder(params.clone())
        .seed([4; 32])
        .build()
        .unwrap();
    let b = CkksContext::builder(params.clone())
        .backend(Arc::new(CpuBackend::new()))
        .seed([4; 32])
        .build()
        .unwrap();
    let pk = |c: &CkksContext| {
        let k = c.keygen().unwrap().public;
        hetensor::serialize::to_bytes(c.rlwe(), &k, Default::default()).unwrap()
    };
    assert_eq!(pk(&a), pk(&b), "the same seed gives the same keys");
    let shared = CkksContext::builder(params.clone())
        .rlwe(a.rlwe().clone())
        .build()
        .unwrap();
    assert!(Arc::ptr_eq(a.rlwe(), shared.rlwe()));
    let other = CkksParams::preset(13, 25).unwrap();
    assert!(matches!(
        CkksContext::builder(other).rlwe(a.rlwe().clone()).build(),
        Err(Error::ParameterMismatch(_))
    ));
    assert!(matches!(
        CkksContext::builder(params.clone())
            .rlwe(a.rlwe().clone())
            .backend(Arc::new(CpuBackend::new()))
            .build(),
        Err(Error::InvalidInput(_))
    ));

    let bfv = BfvParams::from_chain(BfvChain {
        log_n: 12,
        plain: PlainModulus::Bits(20),
        primes: 3,
        dnum: 3,
        security: Security::InsecureForTestingOnly,
    })
    .unwrap();
    let x = BfvContext::builder(bfv.clone())
        .seed([5; 32])
        .build()
        .unwrap();
    let y = BfvContext::with_seed(bfv, [5; 32]).unwrap();
    let bpk = |c: &BfvContext| {
        let k = c.keygen().unwrap().public;
        hetensor::serialize::to_bytes(c.rlwe(), &k, Default::default()).unwrap()
    };
    assert_eq!(bpk(&x), bpk(&y));

    // The builder's chain, rebuilt from its own primes, is the same parameter set.
    let built = CkksParams::builder()
        .depth(3)
        .scale_bits(40)
        .build()
        .unwrap();
    let r = built.rlwe();
    let again = CkksParams::from_primes(ExplicitChain {
        log_n: r.n().trailing_zeros(),
        q: r.q_primes().to_vec(),
        p: r.p_primes().to_vec(),
        shape: r.level_shape(),
        scale_bits: built.scale_bits(),
        upper_scale_bits: built.upper_scale_bits(),
        dnum: r.dnum(),
        security: r.security(),
    })
    .unwrap();
    assert_eq!(again.rlwe(), built.rlwe());
    assert!(matches!(
        CkksParams::from_primes(ExplicitChain {
            upper_scale_bits: Some(50),
            ..ExplicitChain {
                q: r.q_primes().to_vec(),
                p: r.p_primes().to_vec(),
                shape: r.level_shape(),
                ..Default::default()
            }
        }),
        Err(Error::InvalidParameters(_))
    ));
}

/// The CPU's fused decryption (`decrypt_phase`: `c_0 + c_1·s` read in place, each limb
/// inverse-transformed while in cache) returns the words of the composition every other
/// backend runs (select the key's limbs, copy, `mul_acc`, inverse NTT), on the sequential and
/// the parallel path, for a ciphertext below the top level against a key on all limbs.
#[test]
fn fused_decrypt_phase_matches_its_composition() {
    use hetensor::backend::{Backend, CpuBackend, Repr};
    let cpu = CpuBackend::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for log_n in [10, 13, 16] {
        let params = CkksParams::single_prime(SinglePrimeChain {
            log_n,
            levels: 4,
            scale_bits: 25,
            security: Security::InsecureForTestingOnly,
            ..Default::default()
        })
        .unwrap();
        let ctx = CkksContext::new(params).unwrap();
        let ring = ctx.rlwe().ring();
        let n = 1usize << log_n;
        let all: Vec<usize> = (0..ring.moduli().len()).collect();
        let mut words = |limbs: &[usize], count: usize| -> Vec<u32> {
            (0..count)
                .flat_map(|_| limbs.iter())
                .flat_map(|&l| {
                    let q = ring.modulus(l).value() as u64;
                    (0..n).map(|_| (next() % q) as u32).collect::<Vec<_>>()
                })
                .collect()
        };
        let key = cpu
            .upload(words(&all, 1), all.clone().into(), 1, n, Repr::Ntt)
            .unwrap();
        for limbs in [vec![0, 1, 2], vec![1, 3, 4], vec![0, 1, 2, 3, 4]] {
            let ct = cpu
                .upload(words(&limbs, 2), limbs.clone().into(), 2, n, Repr::Ntt)
                .unwrap();
            let fused = cpu.decrypt_phase(ring, &ct, &key).unwrap();
            let s = cpu.select_limbs(&key, limbs.clone().into()).unwrap();
            let mut want = cpu.slice_polys(&ct, 0, 1).unwrap();
            let c1 = cpu.slice_polys(&ct, 1, 1).unwrap();
            cpu.mul_acc(ring, &mut want, &c1, &s).unwrap();
            cpu.ntt_inverse(ring, &mut want).unwrap();
            assert_eq!(fused.repr(), Repr::Coeff);
            assert_eq!(
                cpu.download(&fused).unwrap(),
                cpu.download(&want).unwrap(),
                "N = 2^{log_n}, limbs {limbs:?}"
            );
        }
        // A coefficient-domain ciphertext is refused, not decrypted wrongly.
        let coeff = cpu
            .upload(words(&[0], 2), vec![0].into(), 2, n, Repr::Coeff)
            .unwrap();
        assert!(cpu.decrypt_phase(ring, &coeff, &key).is_err());
    }
}

/// `sum_slots` against the plaintext window sums, with the keys of every radix it takes:
/// radix 8 and 4 rounds (hoisted rotations, one ModDown per round), the power-of-two doubling
/// when only those keys exist, and a window that ends in a radix-2 round (2^7 = 4·4·8 would
/// not fit 4^k; with radix-4 keys it is 4·4·4·2). The hoisted rounds give the doubling's values.
#[test]
fn sum_slots_in_hoisted_rounds_matches_the_plaintext_sums() {
    let ctx = CkksContext::with_seed(small_insecure_params(), [5; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let slots = ctx.slots();
    let a = vals(31, slots, 1.0);
    let ca = ctx
        .encrypt(
            &ctx.encode(&a, ctx.default_scale(), ctx.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    assert_eq!(CkksContext::sum_steps(16, 4), vec![1, 2, 3, 4, 8, 12]);
    assert_eq!(
        CkksContext::sum_steps(64, 8),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40, 48, 56]
    );
    for (radix, width) in [(8, 512), (4, 2048), (4, 128), (2, 64)] {
        let steps = CkksContext::sum_steps(width, radix);
        let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
        let got = ctx
            .decrypt_decode(&ctx.sum_slots(&ca, width, &gk).unwrap(), &keys.secret)
            .unwrap();
        let want: Vec<f64> = (0..slots)
            .map(|i| (0..width).map(|k| a[(i + k) % slots]).sum())
            .collect();
        // Each round adds one key switch's noise (~fresh) to a sum of up to `width` values.
        close(&want, &got, 8.0 * FRESH);
        let doubling = ctx
            .rotate_and_add(&ca, &CkksContext::power_of_two_steps(width), &gk)
            .unwrap();
        close(
            &ctx.decrypt_decode(&doubling, &keys.secret).unwrap(),
            &got,
            8.0 * FRESH,
        );
    }
}

/// `encrypt_many` and `encrypt_symmetric_many` (parallel, one seeded stream per ciphertext):
/// every ciphertext decrypts to its own plaintext's values, two encryptions of one plaintext
/// differ (fresh randomness each), and a seeded context repeats its words.
#[test]
fn encryptions_in_parallel_decrypt_to_their_plaintexts_with_fresh_randomness() {
    let ctx = CkksContext::with_seed(small_insecure_params(), [6; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let slots = ctx.slots();
    let values: Vec<Vec<f64>> = (0..3).map(|k| vals(40 + k, slots, 1.0)).collect();
    let pts: Vec<_> = values
        .iter()
        .map(|v| ctx.encode(v, ctx.default_scale(), ctx.max_level()).unwrap())
        .collect();
    let mut pts: Vec<_> = pts.iter().collect();
    pts.push(pts[0]);
    let words = |cts: &[hetensor::rlwe::Ciphertext]| -> Vec<Vec<u32>> {
        cts.iter()
            .map(|c| ctx.rlwe().backend().download(c.polys()).unwrap())
            .collect()
    };
    // Each decrypts to its plaintext; the first plaintext, encrypted twice, differs.
    let check = |cts: &[hetensor::rlwe::Ciphertext]| {
        assert_eq!(cts.len(), 4);
        for (ct, want) in cts.iter().zip(values.iter().chain([&values[0]])) {
            close(want, &ctx.decrypt_decode(ct, &keys.secret).unwrap(), FRESH);
        }
        let w = words(cts);
        assert_ne!(
            w[0], w[3],
            "one plaintext encrypted twice gave the same words"
        );
    };
    let public = ctx.encrypt_many(&pts, &keys.public).unwrap();
    let secret = ctx.encrypt_symmetric_many(&pts, &keys.secret).unwrap();
    check(&public);
    check(&secret);
    // The same calls on a context with the same seed give the same words.
    let again = CkksContext::with_seed(small_insecure_params(), [6; 32]).unwrap();
    let keys2 = again.keygen().unwrap();
    let public2 = again.encrypt_many(&pts, &keys2.public).unwrap();
    let secret2 = again.encrypt_symmetric_many(&pts, &keys2.secret).unwrap();
    assert_eq!(words(&public2), words(&public));
    assert_eq!(words(&secret2), words(&secret));
    // Single encryptions hold the context's lock only to fork a sampler: on several threads
    // at once they decrypt to their plaintexts, and no two share their randomness.
    let single: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = pts
            .iter()
            .map(|pt| {
                let (ctx, keys) = (&ctx, &keys);
                scope.spawn(move || {
                    (
                        ctx.encrypt(pt, &keys.public).unwrap(),
                        ctx.encrypt_symmetric(pt, &keys.secret).unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (public1, secret1): (Vec<_>, Vec<_>) = single.into_iter().unzip();
    check(&public1);
    check(&secret1);
}

#[test]
fn galois_keys_made_in_parallel_rotate_and_repeat_under_a_seed() {
    // Each key has its own sampler forked in order from the context's, so a seeded context
    // repeats the same keys however the threads ran; every key must rotate correctly.
    let steps = [1, 2, 3, -1, 7];
    let make = || {
        let ctx = CkksContext::with_seed(small_insecure_params(), [8; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
        (ctx, keys, gk)
    };
    let (ctx, keys, gk) = make();
    let (ctx2, _, gk2) = make();
    let all_words = hetensor::serialize::WriteOptions {
        compression: None,
        seeded: false,
    };
    assert_eq!(gk.elements(), gk2.elements());
    assert_eq!(
        hetensor::serialize::to_bytes(ctx.rlwe(), &gk, all_words).unwrap(),
        hetensor::serialize::to_bytes(ctx2.rlwe(), &gk2, all_words).unwrap()
    );
    let slots = ctx.slots();
    let v = vals(77, slots, 1.0);
    let pt = ctx
        .encode(&v, ctx.default_scale(), ctx.max_level())
        .unwrap();
    let ct = ctx.encrypt(&pt, &keys.public).unwrap();
    for &k in &steps {
        let got = ctx
            .decrypt_decode(&ctx.rotate(&ct, k, &gk).unwrap(), &keys.secret)
            .unwrap();
        let want: Vec<f64> = (0..slots)
            .map(|i| v[(i as i64 + k).rem_euclid(slots as i64) as usize])
            .collect();
        close(&want, &got, FRESH);
    }
}
