//! CKKS bootstrapping against the plaintext, at an insecure test ring (the same pipeline as
//! the 128-bit presets, which `hetensor bench --scheme bootstrap --log-n 15/16` runs):
//! a level-0 ciphertext comes back at the output level with the same slots.

use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
use hetensor::ckks::{precision_bits, CkksContext, KeySet};
use hetensor::Error;

fn message(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed * 97) % 2001) as f64 / 1000.0 - 1.0)
        .collect()
}

fn setup(log_n: u32, levels: usize) -> (BootstrapParams, CkksContext, KeySet, BootstrapKeys) {
    let bp = BootstrapParams::insecure_test_ring(log_n, levels).unwrap();
    let ctx = CkksContext::with_seed(bp.ckks().clone(), [3; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin).unwrap();
    (bp, ctx, keys, bk)
}

/// Full-slot bootstrap from level 0: the output sits at the promised level and matches the
/// plaintext to 18 bits over every slot (measured 22.8 at this ring); the input ciphertext is
/// left untouched (Lattigo #476).
#[test]
fn bootstrap_restores_levels_and_keeps_the_message() {
    let (bp, ctx, keys, bk) = setup(10, 2);
    assert_eq!(bk.output_level(), 2);
    assert_eq!(bp.output_level(), 2);
    let m = message(ctx.slots(), 1);
    let ct = ctx
        .encrypt(
            &ctx.encode(&m, ctx.natural_scale(0), 0).unwrap(),
            &keys.public,
        )
        .unwrap();
    let before = ct.clone();
    let out = ctx.bootstrap(&ct, &bk).unwrap();
    assert_eq!(out.level(), 2);
    let bits = precision_bits(&m, &ctx.decrypt_decode(&out, &keys.secret).unwrap());
    assert!(bits > 18.0, "precision {bits:.2} bits");
    assert_eq!(
        ctx.decrypt_decode(&ct, &keys.secret).unwrap(),
        ctx.decrypt_decode(&before, &keys.secret).unwrap()
    );
    // Computation continues on the output: a product with a fresh ciphertext.
    let m2 = message(ctx.slots(), 2);
    let z = ctx
        .encrypt(&ctx.encode(&m2, out.scale(), 2).unwrap(), &keys.public)
        .unwrap();
    let prod = ctx
        .rescale(
            &ctx.relinearize(&ctx.multiply(&out, &z).unwrap(), &keys.relin)
                .unwrap(),
        )
        .unwrap();
    let want: Vec<f64> = m.iter().zip(&m2).map(|(a, b)| a * b).collect();
    let bits = precision_bits(&want, &ctx.decrypt_decode(&prod, &keys.secret).unwrap());
    assert!(bits > 17.0, "after a product: {bits:.2} bits");
}

/// A ciphertext above level 0, at a scale other than the natural one, and one with complex
/// slots and values up to 4 in magnitude, all come back right.
#[test]
fn bootstrap_accepts_any_level_and_complex_slots() {
    use num_complex::Complex64;
    let (_, ctx, keys, bk) = setup(10, 2);
    let n = ctx.slots();
    let z: Vec<Complex64> = (0..n)
        .map(|i| Complex64::new(4.0 * (i as f64 * 0.3).sin(), (i as f64 * 0.7).cos()))
        .collect();
    let ct = ctx
        .encrypt(
            &ctx.encode_complex(&z, ctx.natural_scale(3) * 1.5, 3)
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    let out = ctx.bootstrap(&ct, &bk).unwrap();
    let got = ctx.decrypt_complex(&out, &keys.secret).unwrap();
    let err = z
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).norm())
        .fold(0.0f64, f64::max);
    assert!(err < 2f64.powi(-14), "max error 2^{:.1}", err.log2());
}

/// Keys made for other parameters, and a plan for another context, are refused.
#[test]
fn bootstrap_rejects_mismatched_parameters() {
    let (bp, _, _, _) = setup(10, 2);
    let other = BootstrapParams::insecure_test_ring(10, 3).unwrap();
    let ctx = CkksContext::with_seed(other.ckks().clone(), [4; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    match BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin) {
        Err(Error::ParameterMismatch(_)) => {}
        other => panic!("expected a parameter mismatch, got {other:?}"),
    }
    // (Budgets that do not fit the chain are refused too: `check_refuses_budgets_the_chain_cannot_hold`
    // in the library's tests; the fields are read-only from here.)
}

/// 12 sequential multiplications on a chain of 2 levels: 5 bootstraps along the way, and the
/// result still matches the plaintext product.
#[test]
fn deep_chain_bootstraps_along_the_way() {
    let (_, ctx, keys, bk) = setup(10, 2);
    let n = ctx.slots();
    let mut want = message(n, 5);
    let top = bk.output_level();
    let mut y = ctx
        .encrypt(
            &ctx.encode(&want, ctx.natural_scale(top), top).unwrap(),
            &keys.public,
        )
        .unwrap();
    let mut boots = 0;
    for k in 0..12 {
        if y.level() == 0 {
            y = ctx.bootstrap(&y, &bk).unwrap();
            boots += 1;
        }
        let u: Vec<f64> = (0..n)
            .map(|i| 1.0 + 0.1 * ((i * 3 + k) as f64).cos())
            .collect();
        let z = ctx
            .encrypt(&ctx.encode(&u, y.scale(), y.level()).unwrap(), &keys.public)
            .unwrap();
        y = ctx
            .rescale(
                &ctx.relinearize(&ctx.multiply(&y, &z).unwrap(), &keys.relin)
                    .unwrap(),
            )
            .unwrap();
        want.iter_mut().zip(&u).for_each(|(w, u)| *w *= u);
    }
    assert_eq!(boots, 5);
    let bits = precision_bits(&want, &ctx.decrypt_decode(&y, &keys.secret).unwrap());
    assert!(
        bits > 14.0,
        "after 12 products and {boots} bootstraps: {bits:.2} bits"
    );
}

/// The keys survive the compact format: read back, they bootstrap to the very same words;
/// truncated or altered bytes are errors, not panics.
#[test]
fn bootstrap_keys_round_trip_the_compact_format() {
    use hetensor::serialize::WriteOptions;
    let (_, ctx, keys, bk) = setup(10, 1);
    let bytes = bk.to_bytes(&ctx, WriteOptions::default()).unwrap();
    let back = BootstrapKeys::from_bytes(&ctx, &bytes).unwrap();
    assert_eq!(back.output_level(), bk.output_level());
    let m = message(ctx.slots(), 7);
    let ct = ctx
        .encrypt(
            &ctx.encode(&m, ctx.natural_scale(0), 0).unwrap(),
            &keys.public,
        )
        .unwrap();
    let a = ctx.bootstrap(&ct, &bk).unwrap();
    let b = ctx.bootstrap(&ct, &back).unwrap();
    let words = |c: &hetensor::rlwe::Ciphertext| ctx.rlwe().backend().download(c.polys()).unwrap();
    assert!(
        words(&a) == words(&b),
        "read-back keys bootstrap differently"
    );
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(BootstrapKeys::from_bytes(&ctx, &bytes[..cut]).is_err());
    }
    let mut bad = bytes.clone();
    let mid = bad.len() / 3;
    bad[mid] ^= 0x40;
    assert!(BootstrapKeys::from_bytes(&ctx, &bad).is_err());
    // Keys for another chain are refused by their parameter fingerprint.
    let other = BootstrapParams::insecure_test_ring(10, 2).unwrap();
    let octx = CkksContext::with_seed(other.ckks().clone(), [8; 32]).unwrap();
    assert!(BootstrapKeys::from_bytes(&octx, &bytes).is_err());
}

/// Rotations only SlotsToCoeffs applies get keys over its primes, not the whole chain's: the
/// keys take less memory than as many full keys, the same bootstrap still works (the tests
/// above), and the serialized form keeps each key's primes.
#[test]
fn slots_to_coeffs_keys_stop_at_their_level() {
    use hetensor::serialize::WriteOptions;
    let (_, ctx, keys, bk) = setup(10, 1);
    let rlwe = ctx.rlwe();
    let all = rlwe.q_limbs(rlwe.max_level()).len();
    let shapes = bk.galois().q_counts(rlwe);
    let low: Vec<_> = shapes.iter().filter(|s| s.1 < all).collect();
    assert!(!low.is_empty(), "no key below the top: {shapes:?}");
    assert!(low.len() < shapes.len(), "CoeffsToSlots needs full keys");
    let full_key = bk
        .galois()
        .get(shapes.iter().find(|s| s.1 == all).unwrap().0)
        .unwrap()
        .memory_bytes();
    assert!(bk.galois().memory_bytes() < shapes.len() * full_key);
    let back =
        BootstrapKeys::from_bytes(&ctx, &bk.to_bytes(&ctx, WriteOptions::default()).unwrap())
            .unwrap();
    assert_eq!(back.galois().q_counts(rlwe), shapes);
    // A Galois key set on its own holds full keys only: writing low ones is refused.
    assert!(hetensor::serialize::to_bytes(rlwe, bk.galois(), WriteOptions::default()).is_err());
    // A key too low for the rotation at a higher level is an error, not a wrong result.
    let g = low[0].0;
    let at_top = ctx
        .encrypt(
            &ctx.encode(&[0.5], ctx.default_scale(), ctx.chain_top())
                .unwrap(),
            &keys.public,
        )
        .unwrap();
    let step = (1..ctx.slots() as i64)
        .find(|&r| ctx.galois_element(r) == g)
        .unwrap();
    assert!(ctx.rotate(&at_top, step, bk.galois()).is_err());
}

/// `values` repeated to fill every slot: the sparse packing a sparse-slot bootstrap takes.
fn replicated(values: &[f64], slots: usize) -> Vec<f64> {
    (0..slots).map(|i| values[i % values.len()]).collect()
}

/// Sparse-slot bootstrap: a ciphertext whose slots repeat with period 4, 16, 128 or N/4 comes
/// back at the full-slot bootstrap's output level, still periodic, matching the plaintext,
/// and no less precisely than the full-slot bootstrap of the same ciphertext. (SlotsToCoeffs
/// amplifies EvalMod's error by √slots instead of √(N/2): at this small ring that gains
/// 0.1-0.4 bits; at N = 2^16 it gains 1-3, BENCHMARKS.md §6.)
#[test]
fn sparse_slot_bootstrap_keeps_a_periodic_message() {
    let (bp, ctx, keys, full_bk) = setup(10, 2);
    let n = ctx.slots();
    for period in [4usize, 16, 128, 256] {
        let sp = bp.clone().sparse(period).unwrap();
        assert!(sp.is_sparse());
        let bk = BootstrapKeys::generate(&ctx, &sp, &keys.secret, &keys.relin).unwrap();
        assert_eq!(bk.output_level(), full_bk.output_level());
        // Values of small magnitude (as a model's weights are): EvalMod's sine is then
        // linear to well below the noise.
        let vals: Vec<f64> = message(period, period as u64)
            .iter()
            .map(|v| 0.25 * v)
            .collect();
        let want = replicated(&vals, n);
        let ct = ctx
            .encrypt(
                &ctx.encode(&want, ctx.natural_scale(0), 0).unwrap(),
                &keys.public,
            )
            .unwrap();
        let out = ctx.bootstrap(&ct, &bk).unwrap();
        assert_eq!(out.level(), full_bk.output_level());
        let got = ctx.decrypt_decode(&out, &keys.secret).unwrap();
        let sparse_bits = precision_bits(&want, &got);
        let full_bits = precision_bits(
            &want,
            &ctx.decrypt_decode(&ctx.bootstrap(&ct, &full_bk).unwrap(), &keys.secret)
                .unwrap(),
        );
        eprintln!("period {period}: sparse {sparse_bits:.2} bits, full-slot {full_bits:.2}");
        assert!(
            sparse_bits > 18.0 && sparse_bits > full_bits - 0.25,
            "period {period}: sparse {sparse_bits:.2} bits, full {full_bits:.2}"
        );
    }
}

/// Two real messages refreshed by one bootstrap (`bootstrap_real_pair`): each comes back at
/// the output level and Δ, as its own bootstrap would, within 1.5 bits of its precision (the
/// halving costs one), full-slot and sparse; a level-0 input, which has no level left for the
/// halving, is refused.
#[test]
fn real_pair_shares_one_bootstrap() {
    let (bp, ctx, keys, full_bk) = setup(10, 2);
    let n = ctx.slots();
    let encrypt_at_1 = |m: &[f64]| {
        ctx.encrypt(
            &ctx.encode(m, ctx.natural_scale(1), 1).unwrap(),
            &keys.public,
        )
        .unwrap()
    };
    let sparse = bp.clone().sparse(16).unwrap();
    let sparse_bk = BootstrapKeys::generate(&ctx, &sparse, &keys.secret, &keys.relin).unwrap();
    for (period, bk) in [(None, &full_bk), (Some(16usize), &sparse_bk)] {
        let period_values = |seed: u64| -> Vec<f64> {
            let p = period.unwrap_or(n);
            replicated(
                &message(p, seed).iter().map(|v| 0.5 * v).collect::<Vec<_>>(),
                n,
            )
        };
        let (ma, mb) = (period_values(5), period_values(6));
        let (a, b) = (encrypt_at_1(&ma), encrypt_at_1(&mb));
        let (ra, rb) = ctx.bootstrap_real_pair(&a, &b, bk).unwrap();
        let single = ctx.bootstrap(&a, bk).unwrap();
        for r in [&ra, &rb] {
            assert_eq!(r.level(), bk.output_level());
            assert_eq!(r.scale(), single.scale());
        }
        let bits =
            |want: &[f64], ct| precision_bits(want, &ctx.decrypt_decode(ct, &keys.secret).unwrap());
        let (pa, pb, ps) = (bits(&ma, &ra), bits(&mb, &rb), bits(&ma, &single));
        eprintln!("period {period:?}: pair {pa:.2} / {pb:.2} bits, single {ps:.2}");
        assert!(
            pa > ps - 1.5 && pb > ps - 1.5 && pa.min(pb) > 16.0,
            "period {period:?}: pair {pa:.2} / {pb:.2} bits, single {ps:.2}"
        );
    }
    let low = ctx
        .encrypt(
            &ctx.encode(&message(n, 7), ctx.natural_scale(0), 0).unwrap(),
            &keys.public,
        )
        .unwrap();
    let one = encrypt_at_1(&message(n, 8));
    assert!(matches!(
        ctx.bootstrap_real_pair(&low, &one, &full_bk),
        Err(Error::OutOfLevels { .. })
    ));
}

/// A sparse bootstrap's keys hold only the rotations it uses, and its layout (the period)
/// travels with them in the compact format: read back, they bootstrap to the same words.
/// An invalid period is refused with a message.
#[test]
fn sparse_bootstrap_keys_round_trip() {
    use hetensor::serialize::WriteOptions;
    let (bp, ctx, keys, full_bk) = setup(10, 1);
    assert!(matches!(
        bp.clone().sparse(3),
        Err(Error::InvalidParameters(_))
    ));
    assert!(matches!(
        bp.clone().sparse(ctx.slots()),
        Err(Error::InvalidParameters(_))
    ));
    let sp = bp.sparse(8).unwrap();
    let bk = BootstrapKeys::generate(&ctx, &sp, &keys.secret, &keys.relin).unwrap();
    assert!(bk.galois().elements().len() < full_bk.galois().elements().len());
    let bytes = bk.to_bytes(&ctx, WriteOptions::default()).unwrap();
    let back = BootstrapKeys::from_bytes(&ctx, &bytes).unwrap();
    assert_eq!(back.plan().params().slots(), 8);
    let want = replicated(&message(8, 9), ctx.slots());
    let ct = ctx
        .encrypt(
            &ctx.encode(&want, ctx.natural_scale(0), 0).unwrap(),
            &keys.public,
        )
        .unwrap();
    let words = |c: &hetensor::rlwe::Ciphertext| ctx.rlwe().backend().download(c.polys()).unwrap();
    assert!(words(&ctx.bootstrap(&ct, &bk).unwrap()) == words(&ctx.bootstrap(&ct, &back).unwrap()));
    // Full-slot keys read back as full-slot (the period field is empty).
    let full = BootstrapKeys::from_bytes(
        &ctx,
        &full_bk.to_bytes(&ctx, WriteOptions::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(full.plan().params().slots(), ctx.slots());
}

/// The arcsine correction: a constant message (all its weight in one coefficient, the case
/// where `sin(2πx)/(2π)` is furthest from `x`) loses ~8 bits to the sine without it and keeps
/// them with it, two levels lower; a random message (small coefficients) is no worse. The
/// flag travels with the keys.
#[test]
fn arcsine_correction_recovers_large_coefficients() {
    use hetensor::serialize::WriteOptions;
    let (bp, ctx, keys, plain_bk) = setup(10, 3);
    let asin = bp.with_arcsine().unwrap();
    assert_eq!(asin.output_level(), 1);
    let bk = BootstrapKeys::generate(&ctx, &asin, &keys.secret, &keys.relin).unwrap();
    assert_eq!(bk.output_level(), 1);
    let n = ctx.slots();
    let bits = |bk: &BootstrapKeys, m: &[f64]| {
        let ct = ctx
            .encrypt(
                &ctx.encode(m, ctx.natural_scale(0), 0).unwrap(),
                &keys.public,
            )
            .unwrap();
        let out = ctx.bootstrap(&ct, bk).unwrap();
        precision_bits(m, &ctx.decrypt_decode(&out, &keys.secret).unwrap())
    };
    let constant = vec![0.9; n];
    let (without, with) = (bits(&plain_bk, &constant), bits(&bk, &constant));
    eprintln!("constant 0.9: {without:.2} bits without the arcsine, {with:.2} with");
    assert!(
        without < 16.0,
        "the sine error should show: {without:.2} bits"
    );
    assert!(with > 19.0, "with the arcsine: {with:.2} bits");
    let random = message(n, 11);
    let (without, with) = (bits(&plain_bk, &random), bits(&bk, &random));
    eprintln!("random: {without:.2} bits without the arcsine, {with:.2} with");
    assert!(
        with > without - 0.5 && with > 18.0,
        "{with:.2} vs {without:.2}"
    );
    let back =
        BootstrapKeys::from_bytes(&ctx, &bk.to_bytes(&ctx, WriteOptions::default()).unwrap())
            .unwrap();
    assert!(back.plan().params().arcsine());
    assert_eq!(back.output_level(), 1);
}

/// Both 128-bit presets fit the HomomorphicEncryption.org bound for their ring and leave
/// the levels they promise; other rings are refused with the rings that have a preset.
#[test]
fn presets_fit_the_128_bit_bound() {
    use hetensor::rlwe::{params::max_log_qp_128, Security};
    for (log_n, left) in [(15u32, 1usize), (16, 8)] {
        let bp = BootstrapParams::preset(log_n).unwrap();
        let r = &bp.ckks().rlwe();
        assert_eq!(r.security(), Security::Bits128);
        assert_eq!(bp.ckks().n(), 1 << log_n);
        let bound = max_log_qp_128(1 << log_n).unwrap() as f64;
        assert!(r.log_qp() <= bound, "2^{log_n}: {} > {bound}", r.log_qp());
        assert_eq!(bp.output_level(), left);
        assert_eq!(bp.depth() + left, bp.ckks().levels());
    }
    let err = BootstrapParams::preset(14).unwrap_err().to_string();
    assert!(err.contains("2^15 and 2^16"), "{err}");
}

/// The N = 2^15 preset end to end, at 128-bit: 20-40 s and ~4.5 GB here, so it runs with
/// the benchmarks (`cargo test --release --test bootstrap -- --ignored`), not in CI. Its
/// EvalMod at 2^52 gives about 15.5 bits over full slots (measured 15.5-15.6).
#[test]
#[ignore = "128-bit N = 2^15 bootstrap: 20-40 s and ~4.5 GB; run with the benchmarks"]
fn n15_preset_bootstraps_to_fifteen_bits() {
    let bp = BootstrapParams::n15().unwrap();
    let ctx = CkksContext::new(bp.ckks().clone()).unwrap();
    let keys = ctx.keygen().unwrap();
    let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin).unwrap();
    let m = message(ctx.slots(), 5);
    let ct = ctx
        .encrypt(
            &ctx.encode(&m, ctx.natural_scale(0), 0).unwrap(),
            &keys.public,
        )
        .unwrap();
    let out = ctx.bootstrap(&ct, &bk).unwrap();
    assert_eq!(out.level(), 1);
    let got = ctx.decrypt_decode(&out, &keys.secret).unwrap();
    let bits = precision_bits(&m, &got);
    eprintln!("N = 2^15 preset: {bits:.1} bits");
    assert!(bits >= 14.5, "{bits:.1} bits");
}
