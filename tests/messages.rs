//! Error messages say what happened and what to do, in words that match the API: each test
//! provokes one error through the public API and checks its text (#13).

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::rlwe::Security;
use hetensor::serialize::SecretContext;

/// N = 2^12 with one level, insecure (fast): the base prime and one 25-bit scale prime.
fn small() -> CkksContext {
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 12,
        levels: 1,
        scale_bits: 25,
        dnum: 2,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap();
    CkksContext::with_seed(params, [5; 32]).unwrap()
}

#[test]
fn insecure_parameters_name_the_real_opt_out() {
    // 20 levels of 25 bits do not fit N = 2^13 at 128 bits.
    let err = CkksParams::single_prime(SinglePrimeChain {
        log_n: 13,
        levels: 20,
        scale_bits: 25,
        dnum: 3,
        security: Security::Bits128,
        ..Default::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, hetensor::Error::InsecureParameters { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("Security::InsecureForTestingOnly"),
        "the message names the opt-out that exists: {msg}"
    );
    assert!(!msg.contains("allow_insecure"), "{msg}");
}

#[test]
fn multiplying_at_level_0_says_no_level_is_left() {
    let ctx = small();
    let keys = ctx.keygen().unwrap();
    let s = ctx.default_scale();
    let a = ctx
        .encrypt(&ctx.encode(&[1.5], s, 1).unwrap(), &keys.public)
        .unwrap();
    // At level 1 a second product without a rescale overflows: rescaling is the remedy.
    let sq = ctx.multiply(&a, &a).unwrap();
    let at1 = ctx.multiply(&ctx.relinearize(&sq, &keys.relin).unwrap(), &a);
    let msg = at1.unwrap_err().to_string();
    assert!(msg.contains("rescale first"), "{msg}");
    // At level 0 there is nothing to rescale by.
    let low = ctx
        .rescale(&ctx.relinearize(&sq, &keys.relin).unwrap())
        .unwrap();
    assert_eq!(low.level(), 0);
    let msg = ctx.multiply(&low, &low).unwrap_err().to_string();
    assert!(
        msg.contains("no level is left") && msg.contains("longer modulus chain"),
        "{msg}"
    );
    assert!(!msg.contains("rescale first"), "{msg}");
}

#[test]
fn overflowing_constants_are_printed_short() {
    let ctx = small();
    let keys = ctx.keygen().unwrap();
    let s = ctx.default_scale();
    let a = ctx
        .encrypt(&ctx.encode(&[1.0], s, 1).unwrap(), &keys.public)
        .unwrap();
    for msg in [
        ctx.multiply_scalar(&a, 1e300, 1024.0)
            .unwrap_err()
            .to_string(),
        ctx.add_scalar(&a, -1e300).unwrap_err().to_string(),
        ctx.linear_combination(&[&a], &[1e300], 1024.0)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(msg.contains("e300"), "{msg}");
        assert!(msg.len() < 200 && !msg.contains("0000000000"), "{msg}");
    }
}

#[test]
fn encoding_a_nan_names_the_slot() {
    let ctx = small();
    let msg = ctx
        .encode(&[0.5, f64::NAN], ctx.default_scale(), 1)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("slot 1") && msg.contains("NaN"), "{msg}");
    let msg = ctx.encode(&[0.5], 0.5, 1).unwrap_err().to_string();
    assert!(msg.contains("scale"), "{msg}");
}

/// Stored parameters that fail validation: one `invalid parameters:` prefix, not two.
#[test]
fn rejected_stored_parameters_have_one_prefix() {
    let ctx = small();
    let keys = ctx.keygen().unwrap();
    let mut bytes = Vec::new();
    SecretContext::write_parts(&mut bytes, &ctx, &keys.secret).unwrap();
    // The first ciphertext prime, little-endian, is in the parameters; make it even.
    let q0 = ctx.params().rlwe().q_primes()[0];
    let at = bytes
        .windows(4)
        .position(|w| w == q0.to_le_bytes())
        .expect("q0 is stored");
    bytes[at..at + 4].copy_from_slice(&(q0 + 1).to_le_bytes());
    let err = SecretContext::<CkksContext>::from_bytes(&bytes, default_backend()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, hetensor::Error::Decode(_)), "{msg}");
    assert_eq!(msg.matches("invalid parameters").count(), 1, "{msg}");
}
