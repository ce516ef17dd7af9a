//! Serialization: exact round trips of every object, seeded sizes, public/secret contexts, and
//! hostile input (truncated, mutated, wrong version/kind/parameters, unreduced residues, length
//! bombs) rejected with typed errors and no panic.

use std::sync::{Arc, OnceLock};

use hetensor::backend::{default_backend, Backend};
use hetensor::bfv::{self, BfvChain, BfvContext, BfvParams, PlainModulus};
use hetensor::ckks::{CkksContext, CkksParams, KeySet, SinglePrimeChain};
use hetensor::rlwe::{Ciphertext, GaloisKeys, PublicKey, RelinKey, Security};
use hetensor::serialize::{
    self, DecodeOptions, Encode, PublicContext, SecretContext, WriteOptions, CHECKSUM_LEN,
    FORMAT_VERSION, HEADER_LEN,
};
use hetensor::Error;
use proptest::prelude::*;

/// The fixture's parameters are insecure on purpose, so its contexts are read with the opt-in.
const INSECURE_OK: DecodeOptions = DecodeOptions {
    allow_insecure: true,
};

struct Fixture {
    ctx: CkksContext,
    keys: KeySet,
    galois: GaloisKeys,
}

/// N = 2^12, 3 levels (insecure on purpose: the format does not depend on N, and small objects
/// keep the every-prefix and mutation tests fast).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let params = CkksParams::single_prime(SinglePrimeChain {
            log_n: 12,
            levels: 3,
            scale_bits: 25,
            dnum: 2,
            security: Security::InsecureForTestingOnly,
            ..Default::default()
        })
        .unwrap();
        let ctx = CkksContext::with_seed(params, [9; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let galois = ctx.gen_galois_keys(&keys.secret, &[1, -3], true).unwrap();
        Fixture { ctx, keys, galois }
    })
}

fn words(p: &hetensor::backend::PolyBatch) -> Vec<u32> {
    default_backend().download(p).unwrap()
}

fn values(len: usize) -> Vec<f64> {
    (0..len)
        .map(|i| ((i * 37 % 101) as f64 - 50.0) / 16.0)
        .collect()
}

fn fresh_symmetric() -> Ciphertext {
    let f = fixture();
    let pt = f
        .ctx
        .encode(&values(64), f.ctx.default_scale(), f.ctx.max_level())
        .unwrap();
    f.ctx.encrypt_symmetric(&pt, &f.keys.secret).unwrap()
}

#[test]
fn ciphertexts_round_trip_word_for_word() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let seeded = fresh_symmetric();
    let pt = f
        .ctx
        .encode(&values(64), f.ctx.default_scale(), f.ctx.max_level())
        .unwrap();
    let public = f.ctx.encrypt(&pt, &f.keys.public).unwrap();
    let product = f.ctx.multiply(&seeded, &public).unwrap(); // size 3
    let lowered = f
        .ctx
        .rescale(&f.ctx.relinearize(&product, &f.keys.relin).unwrap())
        .unwrap();
    for (name, ct) in [
        ("seeded", &seeded),
        ("public", &public),
        ("size 3", &product),
        ("rescaled", &lowered),
    ] {
        for opts in [
            WriteOptions::default(),
            WriteOptions {
                compression: Some(3),
                seeded: true,
            },
            WriteOptions {
                compression: None,
                seeded: false,
            },
        ] {
            let bytes = serialize::to_bytes(ctx, ct, opts).unwrap();
            if opts.compression.is_none() {
                // The length writers reserve is the length written.
                assert_eq!(
                    bytes.len(),
                    HEADER_LEN + ct.body_len(ctx, &opts) + CHECKSUM_LEN,
                    "{name} {opts:?}"
                );
            }
            let back: Ciphertext = serialize::from_bytes(ctx, &bytes).unwrap();
            assert_eq!(words(back.polys()), words(ct.polys()), "{name} {opts:?}");
            assert_eq!(back.level(), ct.level());
            assert_eq!(back.size(), ct.size());
            assert_eq!(back.scale(), ct.scale());
        }
    }
    let got = f
        .ctx
        .decrypt_decode(
            &serialize::from_bytes(
                ctx,
                &serialize::to_bytes(ctx, &seeded, WriteOptions::default()).unwrap(),
            )
            .unwrap(),
            &f.keys.secret,
        )
        .unwrap();
    for (a, b) in values(64).iter().zip(&got) {
        assert!((a - b).abs() < 1e-2, "{a} vs {b}");
    }
}

#[test]
fn seeded_ciphertexts_are_about_half_size_and_tightly_packed() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let ct = fresh_symmetric();
    let seeded = serialize::to_bytes(ctx, &ct, WriteOptions::default()).unwrap();
    let full = serialize::to_bytes(
        ctx,
        &ct,
        WriteOptions {
            compression: None,
            seeded: false,
        },
    )
    .unwrap();
    // Residue bits: each limb at its prime's bit length.
    let bits: usize = f
        .ctx
        .params()
        .rlwe()
        .q_primes()
        .iter()
        .map(|&q| (32 - q.leading_zeros()) as usize)
        .sum();
    let poly_bytes = bits * ctx.n() / 8;
    assert!(
        seeded.len() <= poly_bytes + 32 + 64,
        "seeded {} vs one poly {poly_bytes}",
        seeded.len()
    );
    assert!(full.len() >= 2 * poly_bytes && full.len() <= 2 * poly_bytes + 64);
    let ratio = seeded.len() as f64 / full.len() as f64;
    assert!((0.49..0.52).contains(&ratio), "seeded/unseeded = {ratio}");
    // Any operation on c_1 drops the seed: the result serializes at full size.
    let sum = f.ctx.add(&ct, &ct).unwrap();
    assert!(!sum.is_seeded());
    assert!(
        serialize::to_bytes(ctx, &sum, WriteOptions::default())
            .unwrap()
            .len()
            >= 2 * poly_bytes
    );
}

#[test]
fn keys_round_trip_and_work() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    for seeded in [true, false] {
        let opts = WriteOptions {
            compression: None,
            seeded,
        };
        let pk: PublicKey = serialize::from_bytes(
            ctx,
            &serialize::to_bytes(ctx, &f.keys.public, opts).unwrap(),
        )
        .unwrap();
        let rk: RelinKey =
            serialize::from_bytes(ctx, &serialize::to_bytes(ctx, &f.keys.relin, opts).unwrap())
                .unwrap();
        let gk: GaloisKeys =
            serialize::from_bytes(ctx, &serialize::to_bytes(ctx, &f.galois, opts).unwrap())
                .unwrap();
        assert_eq!(gk.elements(), f.galois.elements());
        // Loaded keys give exactly the same results as the originals.
        let a = fresh_symmetric();
        let sq = f.ctx.multiply(&a, &a).unwrap();
        let r1 = f.ctx.relinearize(&sq, &f.keys.relin).unwrap();
        let r2 = f.ctx.relinearize(&sq, &rk).unwrap();
        assert_eq!(words(r1.polys()), words(r2.polys()));
        let rot1 = f.ctx.rotate(&a, 1, &f.galois).unwrap();
        let rot2 = f.ctx.rotate(&a, 1, &gk).unwrap();
        assert_eq!(words(rot1.polys()), words(rot2.polys()));
        let pt = f.ctx.encode(&values(16), f.ctx.default_scale(), 1).unwrap();
        let enc = f.ctx.encrypt(&pt, &pk).unwrap();
        let got = f.ctx.decrypt_decode(&enc, &f.keys.secret).unwrap();
        assert!((got[3] - values(16)[3]).abs() < 1e-2);
    }
}

#[test]
fn public_context_lets_a_worker_compute_and_only_the_owner_decrypt() {
    let f = fixture();
    let mut bytes = Vec::new();
    PublicContext::write_parts(
        &mut bytes,
        &f.ctx,
        &f.keys.public,
        Some(&f.keys.relin),
        Some(&f.galois),
        WriteOptions::default(),
    )
    .unwrap();
    let worker =
        PublicContext::<CkksContext>::from_bytes_with(&bytes, default_backend(), INSECURE_OK)
            .unwrap();
    assert_eq!(
        worker.context.rlwe().fingerprint(),
        f.ctx.rlwe().fingerprint()
    );
    let w = &worker.context;
    let x = values(32);
    let ct = w
        .encrypt(
            &w.encode(&x, w.default_scale(), w.max_level()).unwrap(),
            &worker.public_key,
        )
        .unwrap();
    let sq = w
        .rescale(
            &w.relinearize(&w.square(&ct).unwrap(), worker.relin_key.as_ref().unwrap())
                .unwrap(),
        )
        .unwrap();
    let rot = w
        .rotate(&sq, 1, worker.galois_keys.as_ref().unwrap())
        .unwrap();
    let wire = serialize::to_bytes(w.rlwe(), &rot, WriteOptions::default()).unwrap();
    // Back at the owner.
    let back: Ciphertext = serialize::from_bytes(f.ctx.rlwe(), &wire).unwrap();
    let got = f.ctx.decrypt_decode(&back, &f.keys.secret).unwrap();
    for i in 0..31 {
        assert!(
            (got[i] - x[i + 1] * x[i + 1]).abs() < 0.1,
            "slot {i}: {} vs {}",
            got[i],
            x[i + 1] * x[i + 1]
        );
    }
    // Compressed public contexts decode to the same keys.
    let z = worker
        .to_bytes(WriteOptions {
            compression: Some(3),
            seeded: true,
        })
        .unwrap();
    let again =
        PublicContext::<CkksContext>::from_bytes_with(&z, default_backend(), INSECURE_OK).unwrap();
    let unseeded = WriteOptions {
        compression: None,
        seeded: false,
    };
    assert_eq!(
        serialize::to_bytes(again.context.rlwe(), &again.public_key, unseeded).unwrap(),
        serialize::to_bytes(w.rlwe(), &worker.public_key, unseeded).unwrap()
    );
    // A CKKS context is not a BFV one.
    assert!(matches!(
        PublicContext::<BfvContext>::from_bytes_with(&bytes, default_backend(), INSECURE_OK),
        Err(Error::WrongObject { found, .. }) if found == "a CKKS context"
    ));
}

#[test]
fn secret_context_round_trips_and_decrypts() {
    let f = fixture();
    let mut bytes = Vec::new();
    SecretContext::write_parts(&mut bytes, &f.ctx, &f.keys.secret).unwrap();
    // 2 bits per coefficient plus parameters.
    assert!(
        bytes.len() < f.ctx.rlwe().n() / 4 + 200,
        "{} bytes",
        bytes.len()
    );
    let owner =
        SecretContext::<CkksContext>::from_bytes_with(&bytes, default_backend(), INSECURE_OK)
            .unwrap();
    let got = owner
        .context
        .decrypt_decode(&fresh_symmetric(), &owner.secret_key)
        .unwrap();
    assert!((got[5] - values(64)[5]).abs() < 1e-2);
    assert!(!format!("{owner:?}").contains("coeffs"));
    // A public-context reader refuses a secret context, and vice versa.
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes_with(&bytes, default_backend(), INSECURE_OK),
        Err(Error::WrongObject { .. })
    ));
}

#[test]
fn bfv_ciphertexts_round_trip_and_do_not_pass_for_ckks() {
    let params = BfvParams::from_chain(BfvChain {
        log_n: 12,
        plain: PlainModulus::Bits(20),
        primes: 3,
        dnum: 1,
        security: Security::InsecureForTestingOnly,
    })
    .unwrap();
    let ctx = BfvContext::with_seed(params, [5; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let (sk, pk) = (keys.secret, keys.public);
    let v: Vec<u64> = (0..100).collect();
    let ct = ctx.encrypt(&ctx.encode(&v).unwrap(), &pk).unwrap();
    let bytes = serialize::to_bytes(ctx.rlwe(), &ct, WriteOptions::default()).unwrap();
    assert_eq!(
        bytes.len(),
        HEADER_LEN + ct.body_len(ctx.rlwe(), &WriteOptions::default()) + CHECKSUM_LEN
    );
    let back: bfv::Ciphertext = serialize::from_bytes(ctx.rlwe(), &bytes).unwrap();
    assert_eq!(
        &ctx.decode(&ctx.decrypt(&back, &sk).unwrap()).unwrap()[..100],
        &v[..]
    );
    match serialize::from_bytes::<Ciphertext>(ctx.rlwe(), &bytes) {
        Err(Error::WrongObject { expected, found }) => {
            assert!(
                expected.contains("CKKS") && found.contains("BFV"),
                "{expected} / {found}"
            )
        }
        other => panic!("a BFV ciphertext read as a CKKS one: {other:?}"),
    }
    // Another key set's secret key is refused, and so is a BFV scale other than 1.
    let other = ctx.keygen().unwrap().secret;
    assert!(matches!(
        ctx.decrypt(&back, &other),
        Err(Error::KeyMismatch(_))
    ));
    let mut edited = bytes.clone();
    edited[HEADER_LEN + 10..HEADER_LEN + 18].copy_from_slice(&2.0f64.to_le_bytes());
    reseal(&mut edited);
    assert!(matches!(
        serialize::from_bytes::<bfv::Ciphertext>(ctx.rlwe(), &edited),
        Err(Error::Decode(m)) if m.contains("scale")
    ));
    // Secret contexts work for BFV too, and a BFV context read as a CKKS one says which it is.
    let mut sbytes = Vec::new();
    SecretContext::write_parts(&mut sbytes, &ctx, &sk).unwrap();
    match SecretContext::<CkksContext>::from_bytes_with(&sbytes, default_backend(), INSECURE_OK) {
        Err(Error::WrongObject { found, .. }) => assert_eq!(found, serialize::BFV_CONTEXT),
        other => panic!("a BFV context read as CKKS: {:?}", other.err()),
    }
    let owner =
        SecretContext::<BfvContext>::from_bytes_with(&sbytes, default_backend(), INSECURE_OK)
            .unwrap();
    assert_eq!(
        owner.context.params().plain_modulus(),
        ctx.params().plain_modulus()
    );
    assert_eq!(
        &owner
            .context
            .decode(&owner.context.decrypt(&back, &owner.secret_key).unwrap())
            .unwrap()[..100],
        &v[..]
    );
}

#[test]
fn objects_of_other_parameters_are_refused() {
    let f = fixture();
    let other = CkksContext::with_seed(
        CkksParams::single_prime(SinglePrimeChain {
            log_n: 12,
            levels: 2,
            scale_bits: 25,
            dnum: 1,
            security: Security::InsecureForTestingOnly,
            ..Default::default()
        })
        .unwrap(),
        [1; 32],
    )
    .unwrap();
    let bytes =
        serialize::to_bytes(f.ctx.rlwe(), &fresh_symmetric(), WriteOptions::default()).unwrap();
    assert!(matches!(
        serialize::from_bytes::<Ciphertext>(other.rlwe(), &bytes),
        Err(Error::ParameterMismatch(_))
    ));
    // Serializing an object under the wrong context is refused too.
    assert!(
        serialize::to_bytes(other.rlwe(), &fresh_symmetric(), WriteOptions::default()).is_err()
    );
}

#[test]
fn every_truncation_and_bad_header_is_a_decode_error() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap(); // small: one limb
    for opts in [
        WriteOptions::default(),
        WriteOptions {
            compression: Some(1),
            seeded: false,
        },
    ] {
        let bytes = serialize::to_bytes(ctx, &low, opts).unwrap();
        for cut in 0..bytes.len() {
            match serialize::from_bytes::<Ciphertext>(ctx, &bytes[..cut]) {
                // An uncompressed prefix ends inside some field: typed as truncation. A cut
                // zstd body may instead fail inside the decompressor.
                Err(Error::Truncated { .. }) => {}
                Err(Error::Decode(_)) if opts.compression.is_some() => {}
                other => panic!("prefix of {cut}/{} bytes: {other:?}", bytes.len()),
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(
            matches!(serialize::from_bytes::<Ciphertext>(ctx, &long), Err(e) if e.is_decode_failure())
        );
    }
    let good = serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap();
    let with = |i: usize, v: u8| {
        let mut b = good.clone();
        b[i] = v;
        serialize::from_bytes::<Ciphertext>(ctx, &b)
    };
    assert!(matches!(with(0, b'X'), Err(Error::Decode(m)) if m.contains("magic")));
    for old_or_new in [1, 3] {
        assert!(matches!(
            with(4, old_or_new),
            Err(Error::FormatVersion { found, supported: serialize::FORMAT_VERSION }) if found == old_or_new as u16
        ));
    }
    assert!(matches!(with(6, 4), Err(Error::WrongObject { .. })));
    assert!(matches!(with(6, 200), Err(Error::Decode(m)) if m.contains("kind")));
    assert!(matches!(with(7, 0x80), Err(Error::Decode(m)) if m.contains("flags")));
    assert!(matches!(
        with(8, good[8] ^ 1),
        Err(Error::ParameterMismatch(_))
    ));
    // Body: plaintext modulus (8 bytes), level, size, scale, seed flag.
    assert!(matches!(with(HEADER_LEN + 8, 200), Err(Error::Decode(m)) if m.contains("level")));
    assert!(matches!(with(HEADER_LEN + 9, 7), Err(Error::Decode(m)) if m.contains("polynomials")));
    assert!(matches!(with(HEADER_LEN + 18, 2), Err(Error::Decode(m)) if m.contains("flag")));
}

#[test]
fn unreduced_residues_are_rejected() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap();
    let mut bytes = serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap();
    // First residue of c_0 (after header, 19 body bytes and the 32-byte seed) set to all ones,
    // which is ≥ q because q < 2^bits(q).
    let start = HEADER_LEN + 19 + 32;
    bytes[start] = 0xff;
    bytes[start + 1] = 0xff;
    bytes[start + 2] = 0xff;
    bytes[start + 3] |= 0x3f;
    assert!(matches!(
        serialize::from_bytes::<Ciphertext>(ctx, &bytes),
        Err(Error::Decode(m)) if m.contains("not reduced")
    ));
}

#[test]
fn length_fields_cannot_make_the_decoder_allocate() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    // A compressed body claiming 2^64-1 bytes with none behind it.
    let mut b = serialize::to_bytes(
        ctx,
        &fresh_symmetric(),
        WriteOptions {
            compression: Some(1),
            seeded: true,
        },
    )
    .unwrap();
    b.truncate(HEADER_LEN);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(
        matches!(serialize::from_bytes::<Ciphertext>(ctx, &b), Err(e) if e.is_decode_failure())
    );
    // Galois key sets claiming 2^32-1 keys.
    let mut g = serialize::to_bytes(ctx, &f.galois, WriteOptions::default()).unwrap();
    g[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        matches!(serialize::from_bytes::<GaloisKeys>(ctx, &g), Err(Error::Decode(m)) if m.contains("Galois keys"))
    );
    // A zstd bomb: a tiny frame that inflates to far more than a ciphertext.
    let zeros = vec![0u8; 64 << 20];
    let frame = zstd::bulk::compress(&zeros, 19).unwrap();
    let mut bomb = b[..HEADER_LEN].to_vec();
    bomb.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    bomb.extend_from_slice(&frame);
    assert!(frame.len() < 1 << 16);
    assert!(
        matches!(serialize::from_bytes::<Ciphertext>(ctx, &bomb), Err(e) if e.is_decode_failure())
    );
}

#[test]
fn parameters_from_bytes_are_validated() {
    let f = fixture();
    let mut bytes = Vec::new();
    PublicContext::write_parts(
        &mut bytes,
        &f.ctx,
        &f.keys.public,
        None,
        None,
        WriteOptions::default(),
    )
    .unwrap();
    // Body: scheme, log n, dnum, security, #q, q_0 (u32) ...: make q_0 composite.
    let q0 = HEADER_LEN + 5;
    let mut bad = bytes.clone();
    bad[q0..q0 + 4].copy_from_slice(&(1u32 << 29).to_le_bytes());
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes_with(&bad, default_backend(), INSECURE_OK),
        Err(Error::Decode(m)) if m.contains("prime")
    ));
    // Claiming 128-bit security for insecure parameters fails the security check, opt-in or
    // not (the opt-in accepts only what its writer declared insecure).
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 3] = 0;
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes_with(&bad, default_backend(), INSECURE_OK),
        Err(Error::InsecureParameters { .. })
    ));
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 1] = 30; // log2 N
    assert!(
        PublicContext::<CkksContext>::from_bytes_with(&bad, default_backend(), INSECURE_OK)
            .is_err()
    );
}

fn arc_backend() -> Arc<dyn Backend> {
    default_backend()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic any decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), kind in 1u8..=10) {
        let f = fixture();
        let ctx = f.ctx.rlwe();
        let mut b = bytes;
        if b.len() >= HEADER_LEN && kind % 2 == 0 {
            // Give half the cases a valid header so that the bodies are exercised.
            b[..4].copy_from_slice(b"HETN");
            b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            b[6] = kind;
            b[7] &= 1;
            b[8..16].copy_from_slice(&ctx.fingerprint().to_le_bytes());
        }
        let _ = serialize::from_bytes::<Ciphertext>(ctx, &b);
        let _ = serialize::from_bytes::<PublicKey>(ctx, &b);
        let _ = serialize::from_bytes::<GaloisKeys>(ctx, &b);
        let _ = serialize::from_bytes::<hetensor::ckks::Plaintext>(ctx, &b);
        let _ = serialize::from_bytes::<hetensor::mhe::Share>(ctx, &b);
        let _ = PublicContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK);
        let _ = SecretContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK);
    }

    /// Valid objects with a few bytes changed decode to an error or to a well-formed object,
    /// never a panic.
    #[test]
    fn mutated_objects_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), which in 0usize..4) {
        static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let f = fixture();
        let ctx = f.ctx.rlwe();
        let samples = SAMPLES.get_or_init(|| {
            let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap();
            let mut pc = Vec::new();
            PublicContext::write_parts(&mut pc, &f.ctx, &f.keys.public, None, None, WriteOptions::default()).unwrap();
            let mut sc = Vec::new();
            SecretContext::write_parts(&mut sc, &f.ctx, &f.keys.secret).unwrap();
            vec![
                serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap(),
                serialize::to_bytes(ctx, &low, WriteOptions { compression: Some(1), seeded: false }).unwrap(),
                pc,
                sc,
            ]
        });
        let mut b = samples[which].clone();
        for (i, v) in flips {
            let i = i % b.len();
            b[i] ^= v | 1;
        }
        match which {
            0 | 1 => { let _ = serialize::from_bytes::<Ciphertext>(ctx, &b); }
            2 => { let _ = PublicContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK); }
            _ => { let _ = SecretContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK); }
        }
    }

    /// The same mutations with the checksum recomputed (a deliberate edit), so that they reach
    /// the body decoders: still an error or a well-formed object, never a panic; and a
    /// compressed body never decodes to more than the expansion limit allows.
    #[test]
    fn resealed_mutations_reach_the_decoders_and_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), which in 0usize..7) {
        static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let f = fixture();
        let ctx = f.ctx.rlwe();
        let samples = SAMPLES.get_or_init(|| {
            let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap();
            let mut pc = Vec::new();
            PublicContext::write_parts(&mut pc, &f.ctx, &f.keys.public, None, Some(&f.galois), WriteOptions::default()).unwrap();
            let mut sc = Vec::new();
            SecretContext::write_parts(&mut sc, &f.ctx, &f.keys.secret).unwrap();
            vec![
                serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap(),
                serialize::to_bytes(ctx, &low, WriteOptions { compression: Some(1), seeded: false }).unwrap(),
                pc,
                sc,
                serialize::to_bytes(ctx, &f.galois, WriteOptions { compression: Some(1), seeded: true }).unwrap(),
                serialize::to_bytes(ctx, &mhe_samples()[0], WriteOptions::default()).unwrap(),
                serialize::to_bytes(ctx, &mhe_samples()[1], WriteOptions { compression: Some(1), seeded: true }).unwrap(),
            ]
        });
        let mut b = samples[which].clone();
        let body = b.len() - serialize::CHECKSUM_LEN;
        for (i, v) in flips {
            let i = i % body;
            b[i] ^= v | 1;
        }
        reseal(&mut b);
        match which {
            0 | 1 => {
                if let Ok(ct) = serialize::from_bytes::<Ciphertext>(ctx, &b) {
                    let round = serialize::to_bytes(ctx, &ct, WriteOptions::default()).unwrap();
                    prop_assert!(serialize::from_bytes::<Ciphertext>(ctx, &round).is_ok());
                }
            }
            2 => { let _ = PublicContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK); }
            3 => { let _ = SecretContext::<CkksContext>::from_bytes_with(&b, arc_backend(), INSECURE_OK); }
            5 | 6 => {
                // A decoded share always has its protocol's shape: it aggregates with itself.
                if let Ok(sh) = serialize::from_bytes::<hetensor::mhe::Share>(ctx, &b) {
                    prop_assert!(hetensor::mhe::aggregate(ctx, &[sh.clone(), sh]).is_ok());
                }
            }
            _ => {
                if let Ok(g) = serialize::from_bytes::<GaloisKeys>(ctx, &b) {
                    let raw = serialize::to_bytes(ctx, &g, WriteOptions { compression: None, seeded: true }).unwrap();
                    prop_assert!(raw.len() as u64 <= 2 * b.len() as u64 + 1024 + 64);
                }
            }
        }
    }
}

// ----- integrity (issue #13): bounded decompression, error kinds, checksums, key sets,
// ----- scales, insecure parameters

/// Packed bytes of one polynomial over `primes` (each residue at its prime's bit length).
fn poly_bytes(primes: &[u32], n: usize) -> usize {
    primes
        .iter()
        .map(|&q| n * (32 - q.leading_zeros()) as usize / 8)
        .sum()
}

/// The ciphertext and special primes of the fixture (what keys live on).
fn qp_primes() -> Vec<u32> {
    let p = &fixture().ctx.params().rlwe();
    p.q_primes().iter().chain(p.p_primes()).copied().collect()
}

/// Frames a body the way the format does (header, optional zstd with its length, CRC-32C),
/// so that tests can build objects the writer never would.
fn framed(
    kind: u8,
    fingerprint: u64,
    key_id: u64,
    compress: bool,
    body: impl FnOnce(&mut dyn std::io::Write),
) -> Vec<u8> {
    let mut out = b"HETN".to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind);
    out.push(compress as u8);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&key_id.to_le_bytes());
    if compress {
        let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        body(&mut z);
        let frame = z.finish().unwrap();
        out.extend_from_slice(&(frame.len() as u64).to_le_bytes());
        out.extend_from_slice(&frame);
    } else {
        body(&mut out);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Recomputes the CRC-32C trailer after an edit (what a deliberate editor would do).
fn reseal(b: &mut [u8]) {
    let n = b.len() - serialize::CHECKSUM_LEN;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// A Galois key set body of `count` keys whose key material is all zero (seeded digits).
fn zero_galois_body(w: &mut dyn std::io::Write, count: u32, digits: u8, poly: usize) {
    let zeros = vec![0u8; poly];
    w.write_all(&count.to_le_bytes()).unwrap();
    for k in 0..count {
        w.write_all(&(2 * k + 3).to_le_bytes()).unwrap();
        w.write_all(&[digits]).unwrap();
        for _ in 0..digits {
            w.write_all(&[1]).unwrap();
            w.write_all(&[0; 32]).unwrap();
            w.write_all(&zeros).unwrap();
        }
    }
}

#[test]
fn zstd_bombs_are_refused_before_they_inflate() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let n = ctx.n();
    let poly = poly_bytes(&qp_primes(), n);
    let digits = ctx.digits().len() as u8;
    // 512 all-zero Galois keys: ~95 MB of key material in a frame of a few hundred KB.
    let bomb = framed(6, ctx.fingerprint(), 7, true, |w| {
        zero_galois_body(w, 512, digits, poly)
    });
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    match serialize::from_bytes::<GaloisKeys>(ctx, &bomb) {
        Err(Error::Decode(m)) => assert!(m.contains("Galois"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Even one zero key is more than its compressed frame can legitimately expand to.
    let one = framed(6, ctx.fingerprint(), 7, true, |w| {
        zero_galois_body(w, 1, digits, poly)
    });
    assert!(
        matches!(serialize::from_bytes::<GaloisKeys>(ctx, &one), Err(e) if e.is_decode_failure())
    );
    // A zero ciphertext has no count to check: decompression stops at the expansion limit.
    let q = f.ctx.params().rlwe().q_primes().to_vec();
    let zero_ct = framed(2, ctx.fingerprint(), 7, true, |w| {
        w.write_all(&0u64.to_le_bytes()).unwrap();
        w.write_all(&[(q.len() - 1) as u8, 2]).unwrap();
        w.write_all(&f.ctx.default_scale().to_le_bytes()).unwrap();
        w.write_all(&[0]).unwrap();
        w.write_all(&vec![0u8; 2 * poly_bytes(&q, n)]).unwrap();
    });
    match serialize::from_bytes::<Ciphertext>(ctx, &zero_ct) {
        Err(Error::Decode(m)) => assert!(m.contains("larger than"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The same key uncompressed is well-formed: what is refused is the expansion.
    let raw = framed(6, ctx.fingerprint(), 7, false, |w| {
        zero_galois_body(w, 1, digits, poly)
    });
    assert_eq!(
        serialize::from_bytes::<GaloisKeys>(ctx, &raw)
            .unwrap()
            .elements(),
        vec![3]
    );
    // A public context of zero keys: parameters, a zero public key, 512 zero Galois keys.
    let mut params = Vec::new();
    serialize::write_params_only(
        &mut params,
        &hetensor::serialize::SchemeParams::Ckks(f.ctx.params().clone()),
    )
    .unwrap();
    let params = params[HEADER_LEN..params.len() - serialize::CHECKSUM_LEN].to_vec();
    let pc = framed(8, ctx.fingerprint(), 7, true, |w| {
        w.write_all(&params).unwrap();
        w.write_all(&[2, 1]).unwrap(); // Galois keys only; seeded public key
        w.write_all(&[0; 32]).unwrap();
        w.write_all(&vec![0u8; poly]).unwrap();
        zero_galois_body(w, 512, digits, poly);
    });
    assert!(
        matches!(PublicContext::<CkksContext>::from_bytes_with(&pc, default_backend(), INSECURE_OK), Err(e) if e.is_decode_failure())
    );
    // A worker's STORE frame of such ciphertexts, each a few dozen compressed bytes.
    let count = 200u32;
    let mut store = 0u32.to_le_bytes().to_vec();
    store.extend_from_slice(&count.to_le_bytes());
    for _ in 0..count {
        store.extend_from_slice(&zero_ct);
    }
    let mut public = Vec::new();
    PublicContext::write_parts(
        &mut public,
        &f.ctx,
        &f.keys.public,
        None,
        None,
        WriteOptions::default(),
    )
    .unwrap();
    let mut input = worker_frame(1, &public);
    input.extend(worker_frame(6, &store));
    input.extend(worker_frame(5, &[]));
    let mut out = Vec::new();
    hetensor::workers::serve_with(
        std::io::Cursor::new(input.clone()),
        &mut out,
        default_backend(),
        hetensor::workers::WorkerLimits {
            decode: INSECURE_OK,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out[0], 4, "the STORE is answered with ERROR");
    let msg = String::from_utf8_lossy(&out[9..]);
    assert!(msg.contains("larger than"), "{msg}");
}

/// Multiparty shares of the fixture's parameters: a refresh share at level 1 and an RKG
/// round-1 share (the largest kind: 2·dnum polynomials over QP).
fn mhe_samples() -> &'static [hetensor::mhe::Share] {
    static S: OnceLock<Vec<hetensor::mhe::Share>> = OnceLock::new();
    S.get_or_init(|| {
        use hetensor::math::sampler::Sampler;
        use hetensor::mhe::{Crs, Party, RefreshParams};
        let f = fixture();
        let ctx = f.ctx.rlwe().clone();
        let crs = Crs::new([3; 32]);
        let mut p = Party::new(ctx.clone(), crs, Sampler::from_seed([4; 32])).unwrap();
        let pk = hetensor::mhe::ckg_finalize(&ctx, &crs, &p.ckg_share().unwrap()).unwrap();
        let pt = f.ctx.encode(&values(16), f.ctx.default_scale(), 1).unwrap();
        let ct = f.ctx.encrypt(&pt, &pk).unwrap();
        let mut params = RefreshParams::new(1, 26.0);
        params.lambda = 0; // the fixture's 55-bit level 1 cannot hold 40-bit masks
        vec![
            p.refresh_share(&ct, 1, &params).unwrap(),
            p.rkg_round1().unwrap(),
        ]
    })
}

/// A compressed share body of zeros claiming the largest share kind is refused before it
/// inflates, and shares whose header names an impossible protocol, index or level are
/// decode errors.
#[test]
fn mhe_share_bombs_and_bad_headers_are_refused() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let poly = poly_bytes(&qp_primes(), ctx.n());
    let digits = ctx.digits().len();
    let top = ctx.max_level() as u8;
    let body = |tag: u8, index: u64, level: u8, polys: usize| {
        move |w: &mut dyn std::io::Write| {
            w.write_all(&[tag]).unwrap();
            w.write_all(&index.to_le_bytes()).unwrap();
            w.write_all(&[level]).unwrap();
            w.write_all(&vec![0u8; polys * poly]).unwrap();
        }
    };
    let bomb = framed(10, ctx.fingerprint(), 7, true, body(2, 0, top, 2 * digits));
    assert!(bomb.len() < 4096, "{} bytes", bomb.len());
    match serialize::from_bytes::<hetensor::mhe::Share>(ctx, &bomb) {
        Err(Error::Decode(m)) => assert!(m.contains("RkgRound1"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The same, uncompressed, is a well-formed (all-zero) share.
    let raw = framed(10, ctx.fingerprint(), 7, false, body(2, 0, top, 2 * digits));
    assert!(serialize::from_bytes::<hetensor::mhe::Share>(ctx, &raw).is_ok());
    for (tag, index, level, what) in [
        (9u8, 0u64, top, "unknown protocol"),
        (1, 5, top, "index on a key generation"),
        (1, 0, 0, "key generation below the top"),
        (4, 4, top, "even Galois element"),
        (5, 1, top + 1, "level above the top"),
        (7, u64::MAX, 0, "run id out of range"),
    ] {
        let b = framed(
            10,
            ctx.fingerprint(),
            7,
            false,
            body(tag, index, level, 2 * digits),
        );
        assert!(
            matches!(serialize::from_bytes::<hetensor::mhe::Share>(ctx, &b), Err(e) if e.is_decode_failure()),
            "{what}"
        );
    }
    // Key-set identifier 0 is reserved for plaintexts.
    let zero_id = framed(10, ctx.fingerprint(), 0, false, body(2, 0, top, 2 * digits));
    assert!(
        matches!(serialize::from_bytes::<hetensor::mhe::Share>(ctx, &zero_id), Err(e) if e.is_decode_failure())
    );
}

/// A worker frame: tag, u64 length, payload.
fn worker_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn corrupt_compressed_frames_are_decode_errors_and_source_failures_io_errors() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap();
    let opts = WriteOptions {
        compression: Some(1),
        seeded: false,
    };
    let good = serialize::to_bytes(ctx, &low, opts).unwrap();
    assert_eq!(good[7], 1, "compressed");
    let frame = HEADER_LEN + 8..good.len() - serialize::CHECKSUM_LEN;
    for i in frame.clone() {
        for v in [0xff, 0x01, 0x80] {
            let mut b = good.clone();
            b[i] ^= v;
            match serialize::from_bytes::<Ciphertext>(ctx, &b) {
                Err(e) if e.is_decode_failure() => {}
                other => panic!("byte {i} ^ {v:#x}: {other:?}"),
            }
            // The same corruption with a valid checksum still fails in the decompressor or
            // decoder, as a decode error.
            reseal(&mut b);
            match serialize::from_bytes::<Ciphertext>(ctx, &b) {
                Err(e) if e.is_decode_failure() => {}
                Ok(ct) => assert_eq!(words(ct.polys()).len(), words(low.polys()).len()),
                other => panic!("resealed byte {i} ^ {v:#x}: {other:?}"),
            }
        }
    }
    // A compressed length that runs past the end, and a frame cut short.
    let mut long = good.clone();
    long[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&(frame.len() as u64 + 100).to_le_bytes());
    assert!(
        matches!(serialize::from_bytes::<Ciphertext>(ctx, &long), Err(e) if e.is_decode_failure())
    );
    let mut cut = good[..frame.end - 5].to_vec();
    cut[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&(frame.len() as u64 - 5).to_le_bytes());
    reseal_append(&mut cut);
    assert!(
        matches!(serialize::from_bytes::<Ciphertext>(ctx, &cut), Err(e) if e.is_decode_failure())
    );
    // A source that fails is an I/O error, not a decode error.
    struct Failing<'a>(&'a [u8]);
    impl std::io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("device gone"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    for upto in [HEADER_LEN, HEADER_LEN + 20, good.len() - 2] {
        match serialize::read::<Ciphertext>(ctx, Failing(&good[..upto])) {
            Err(Error::Io(_)) => {}
            other => panic!("source failing after {upto} bytes: {other:?}"),
        }
    }
}

/// Appends a CRC-32C trailer to bytes that lack one.
fn reseal_append(b: &mut Vec<u8>) {
    let crc = crc32c::crc32c(b);
    b.extend_from_slice(&crc.to_le_bytes());
}

#[test]
fn random_bit_flips_are_all_detected() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let raw = WriteOptions::default();
    let zstd = WriteOptions {
        compression: Some(3),
        seeded: false,
    };
    let ct = fresh_symmetric();
    let sq = f.ctx.multiply(&ct, &ct).unwrap();
    let pt = f.ctx.encode(&values(8), f.ctx.default_scale(), 1).unwrap();
    let mut pc = Vec::new();
    PublicContext::write_parts(
        &mut pc,
        &f.ctx,
        &f.keys.public,
        Some(&f.keys.relin),
        None,
        raw,
    )
    .unwrap();
    let mut sc = Vec::new();
    SecretContext::write_parts(&mut sc, &f.ctx, &f.keys.secret).unwrap();
    type Redo = Box<dyn Fn(&[u8]) -> hetensor::Result<Vec<u8>>>;
    let samples: Vec<(&str, Vec<u8>, Redo)> = vec![
        (
            "seeded ciphertext",
            serialize::to_bytes(ctx, &ct, raw).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<Ciphertext>(ctx, b)?, raw)
            }),
        ),
        (
            "compressed ciphertext",
            serialize::to_bytes(ctx, &ct, zstd).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<Ciphertext>(ctx, b)?, zstd)
            }),
        ),
        (
            "size-3 ciphertext",
            serialize::to_bytes(ctx, &sq, raw).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<Ciphertext>(ctx, b)?, raw)
            }),
        ),
        (
            "plaintext",
            serialize::to_bytes(ctx, &pt, zstd).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(
                    ctx,
                    &serialize::from_bytes::<hetensor::ckks::Plaintext>(ctx, b)?,
                    zstd,
                )
            }),
        ),
        (
            "public key",
            serialize::to_bytes(ctx, &f.keys.public, raw).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<PublicKey>(ctx, b)?, raw)
            }),
        ),
        (
            "relinearization key",
            serialize::to_bytes(ctx, &f.keys.relin, raw).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<RelinKey>(ctx, b)?, raw)
            }),
        ),
        (
            "Galois keys",
            serialize::to_bytes(ctx, &f.galois, raw).unwrap(),
            Box::new(move |b| {
                serialize::to_bytes(ctx, &serialize::from_bytes::<GaloisKeys>(ctx, b)?, raw)
            }),
        ),
        (
            "public context",
            pc,
            Box::new(move |b| {
                PublicContext::<CkksContext>::from_bytes_with(b, default_backend(), INSECURE_OK)?
                    .to_bytes(raw)
            }),
        ),
        (
            "secret context",
            sc,
            Box::new(move |b| {
                let s = SecretContext::<CkksContext>::from_bytes_with(
                    b,
                    default_backend(),
                    INSECURE_OK,
                )?;
                let mut out = Vec::new();
                s.write_to(&mut out)?;
                Ok(out)
            }),
        ),
    ];
    for (name, bytes, redo) in &samples {
        assert_eq!(&redo(bytes).unwrap(), bytes, "{name} round trip");
    }
    // xorshift64*: a fixed, reproducible sequence of positions.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let (mut rejected, mut identical) = (0, 0);
    for i in 0..3000 {
        let (name, bytes, redo) = &samples[i % samples.len()];
        let bit = (next() % (bytes.len() as u64 * 8)) as usize;
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        match redo(&b) {
            Err(Error::Io(e)) => panic!("{name}, bit {bit}: I/O error {e}"),
            Err(_) => rejected += 1,
            Ok(again) => {
                assert_eq!(&again, bytes, "{name}, bit {bit}: accepted and changed");
                identical += 1;
            }
        }
    }
    assert_eq!(rejected + identical, 3000);
    // CRC-32C detects every single-bit error, so no flip is even accepted unchanged.
    assert_eq!(rejected, 3000);
}

#[test]
fn scales_the_chain_cannot_produce_are_refused() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let low = f.ctx.mod_switch_to(&fresh_symmetric(), 0).unwrap();
    let good = serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap();
    // Body: plaintext modulus (8 bytes), level, size, then the scale.
    let at = HEADER_LEN + 10;
    let with_scale = |s: f64, seal: bool| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&s.to_le_bytes());
        if seal {
            reseal(&mut b);
        }
        serialize::from_bytes::<Ciphertext>(ctx, &b)
    };
    let log_q0 = (f.ctx.level_modulus(0)).log2();
    let doubled = 2.0 * low.scale();
    // An accidental change is caught by the checksum.
    assert!(matches!(
        with_scale(doubled, false),
        Err(Error::ChecksumMismatch { stored, computed, .. }) if stored != computed
    ));
    // Deliberate edits (checksum recomputed) to scales no computation reaches at this level.
    for bad in [
        0.5,
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        (log_q0 - 1.0).exp2(),
    ] {
        assert!(
            matches!(with_scale(bad, true), Err(Error::Decode(m)) if m.contains("scale")),
            "scale {bad}"
        );
    }
    // Inside the chain's range a deliberate edit is not detectable (documented: ciphertexts
    // are malleable; whoever can edit the bytes can also multiply the value by ½).
    assert_eq!(with_scale(doubled, true).unwrap().scale(), doubled);
    // Legitimate scales at every level of a real pipeline decode.
    let x = fresh_symmetric();
    let mut c = x.clone();
    while c.level() > 0 {
        let b = serialize::to_bytes(ctx, &c, WriteOptions::default()).unwrap();
        assert_eq!(
            serialize::from_bytes::<Ciphertext>(ctx, &b)
                .unwrap()
                .scale(),
            c.scale()
        );
        let p = f
            .ctx
            .relinearize(
                &f.ctx
                    .multiply(&c, &f.ctx.mod_switch_to(&x, c.level()).unwrap())
                    .unwrap(),
                &f.keys.relin,
            )
            .unwrap();
        let b = serialize::to_bytes(ctx, &p, WriteOptions::default()).unwrap();
        assert_eq!(
            serialize::from_bytes::<Ciphertext>(ctx, &b)
                .unwrap()
                .scale(),
            p.scale()
        );
        c = f.ctx.rescale(&p).unwrap();
    }
}

#[test]
fn key_sets_travel_with_objects_and_are_checked() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let other = f.ctx.keygen().unwrap();
    assert_ne!(other.secret.key_id(), f.keys.secret.key_id());
    let ct = fresh_symmetric();
    assert_eq!(ct.key_id(), f.keys.secret.key_id());
    let bytes = serialize::to_bytes(ctx, &ct, WriteOptions::default()).unwrap();
    let back: Ciphertext = serialize::from_bytes(ctx, &bytes).unwrap();
    assert_eq!(back.key_id(), ct.key_id());
    assert!(matches!(
        f.ctx.decrypt_decode(&back, &other.secret),
        Err(Error::KeyMismatch(_))
    ));
    // Keys keep theirs too.
    let pk: PublicKey = serialize::from_bytes(
        ctx,
        &serialize::to_bytes(ctx, &other.public, WriteOptions::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(pk.key_id(), other.secret.key_id());
    let mut sc = Vec::new();
    SecretContext::write_parts(&mut sc, &f.ctx, &other.secret).unwrap();
    let owner =
        SecretContext::<CkksContext>::from_bytes_with(&sc, default_backend(), INSECURE_OK).unwrap();
    assert_eq!(owner.secret_key.key_id(), other.secret.key_id());
    // A header whose key-set identifier was rewritten (checksum recomputed) still cannot be
    // decrypted by the original key; 0 (no key set) is refused outright.
    let mut b = bytes.clone();
    b[16..24].copy_from_slice(&other.secret.key_id().to_le_bytes());
    reseal(&mut b);
    let moved: Ciphertext = serialize::from_bytes(ctx, &b).unwrap();
    assert!(matches!(
        f.ctx.decrypt_decode(&moved, &f.keys.secret),
        Err(Error::KeyMismatch(_))
    ));
    b[16..24].copy_from_slice(&0u64.to_le_bytes());
    reseal(&mut b);
    assert!(
        matches!(serialize::from_bytes::<Ciphertext>(ctx, &b), Err(Error::Decode(m)) if m.contains("key-set"))
    );
    // A public context mixing key sets cannot be written.
    let mut out = Vec::new();
    assert!(matches!(
        PublicContext::write_parts(
            &mut out,
            &f.ctx,
            &f.keys.public,
            Some(&other.relin),
            None,
            WriteOptions::default()
        ),
        Err(Error::KeyMismatch(_))
    ));
}

#[test]
fn insecure_parameters_need_an_explicit_opt_in() {
    // N = 2^10 with log2 QP ≈ 216: far beyond the 27 bits 128-bit security allows.
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 10,
        levels: 6,
        scale_bits: 26,
        dnum: 7,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap();
    assert!(params.rlwe().log_qp() > 200.0);
    let ctx = CkksContext::with_seed(params.clone(), [4; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let mut public = Vec::new();
    PublicContext::write_parts(
        &mut public,
        &ctx,
        &keys.public,
        Some(&keys.relin),
        None,
        WriteOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes(&public, default_backend()),
        Err(Error::InsecureParameters {
            n: 1024,
            max_log_qp: 27,
            ..
        })
    ));
    let pc = PublicContext::<CkksContext>::from_bytes_with(
        &public,
        default_backend(),
        DecodeOptions::allow_insecure(),
    )
    .unwrap();
    assert_eq!(pc.context.rlwe().fingerprint(), ctx.rlwe().fingerprint());
    let mut secret = Vec::new();
    SecretContext::write_parts(&mut secret, &ctx, &keys.secret).unwrap();
    assert!(matches!(
        SecretContext::<CkksContext>::from_bytes(&secret, default_backend()),
        Err(Error::InsecureParameters { .. })
    ));
    assert!(SecretContext::<CkksContext>::from_bytes_with(
        &secret,
        default_backend(),
        DecodeOptions::allow_insecure()
    )
    .is_ok());
    let mut p = Vec::new();
    serialize::write_params_only(&mut p, &hetensor::serialize::SchemeParams::Ckks(params)).unwrap();
    assert!(matches!(
        serialize::read_params_only(&mut p.as_slice()),
        Err(Error::InsecureParameters { .. })
    ));
    assert!(
        serialize::read_params_only_with(&mut p.as_slice(), DecodeOptions::allow_insecure())
            .is_ok()
    );
    // A worker refuses the context unless it was started with the opt-in.
    let mut input = worker_frame(1, &public);
    input.extend(worker_frame(5, &[]));
    let mut out = Vec::new();
    let refused = hetensor::workers::serve(
        std::io::Cursor::new(input.clone()),
        &mut out,
        default_backend(),
    );
    assert!(
        matches!(&refused, Err(Error::Protocol(m)) if m.contains("insecure parameters")),
        "{refused:?}"
    );
    assert_eq!(out[0], 4, "the refusal is answered with an ERROR frame");
    let mut out = Vec::new();
    assert!(hetensor::workers::serve_with(
        std::io::Cursor::new(input),
        &mut out,
        default_backend(),
        hetensor::workers::WorkerLimits {
            decode: DecodeOptions::allow_insecure(),
            ..Default::default()
        },
    )
    .is_ok());
}

#[test]
fn compressible_ciphertexts_are_stored_raw_and_plaintexts_compressed() {
    let f = fixture();
    let ctx = f.ctx.rlwe();
    let z = WriteOptions {
        compression: Some(3),
        seeded: true,
    };
    // A ciphertext of zeros (a product by 0) would exceed the expansion limit compressed: the
    // writer stores it uncompressed, so everything written can be read.
    let zero = f.ctx.multiply_scalar(&fresh_symmetric(), 0.0, 1.0).unwrap();
    let b = serialize::to_bytes(ctx, &zero, z).unwrap();
    assert_eq!(b[7], 0, "stored uncompressed");
    let back: Ciphertext = serialize::from_bytes(ctx, &b).unwrap();
    assert_eq!(words(back.polys()), words(zero.polys()));
    // Plaintexts are bounded by their parameters only, and may compress freely.
    let pt = f
        .ctx
        .encode(&[], f.ctx.default_scale(), f.ctx.max_level())
        .unwrap();
    let b = serialize::to_bytes(ctx, &pt, z).unwrap();
    assert_eq!(b[7], 1, "compressed");
    assert!(b.len() < 1000, "{}", b.len());
    let back: hetensor::ckks::Plaintext = serialize::from_bytes(ctx, &b).unwrap();
    assert_eq!(back.scale(), pt.scale());
}
