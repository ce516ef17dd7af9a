//! Serialization: exact round trips of every object, seeded sizes, public/secret contexts, and
//! hostile input (truncated, mutated, wrong version/kind/parameters, unreduced residues, length
//! bombs) rejected with typed errors and no panic.

use std::sync::{Arc, OnceLock};

use hetensor::backend::{default_backend, Backend};
use hetensor::bfv::{self, BfvContext, BfvParams, PlainModulus};
use hetensor::ckks::{CkksContext, CkksParams, KeySet};
use hetensor::rlwe::{Ciphertext, GaloisKeys, PublicKey, RelinKey, Security};
use hetensor::serialize::{self, PublicContext, SecretContext, WriteOptions, HEADER_LEN};
use hetensor::Error;
use proptest::prelude::*;

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
        let params = CkksParams::new(12, 3, 25, 30, 2, Security::InsecureForTestingOnly).unwrap();
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
        .rlwe
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
    let worker = PublicContext::<CkksContext>::from_bytes(&bytes, default_backend()).unwrap();
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
    let again = PublicContext::<CkksContext>::from_bytes(&z, default_backend()).unwrap();
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
        PublicContext::<BfvContext>::from_bytes(&bytes, default_backend()),
        Err(Error::Decode(_))
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
    let owner = SecretContext::<CkksContext>::from_bytes(&bytes, default_backend()).unwrap();
    let got = owner
        .context
        .decrypt_decode(&fresh_symmetric(), &owner.secret_key)
        .unwrap();
    assert!((got[5] - values(64)[5]).abs() < 1e-2);
    assert!(!format!("{owner:?}").contains("coeffs"));
    // A public-context reader refuses a secret context, and vice versa.
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes(&bytes, default_backend()),
        Err(Error::Decode(_))
    ));
}

#[test]
fn bfv_ciphertexts_round_trip_and_do_not_pass_for_ckks() {
    let params = BfvParams::with_security(
        12,
        PlainModulus::Bits(20),
        3,
        1,
        Security::InsecureForTestingOnly,
    )
    .unwrap();
    let ctx = BfvContext::with_seed(params, [5; 32]).unwrap();
    let sk = ctx.gen_secret_key().unwrap();
    let pk = ctx.gen_public_key(&sk).unwrap();
    let v: Vec<u64> = (0..100).collect();
    let ct = ctx.encrypt(&ctx.encode(&v).unwrap(), &pk).unwrap();
    let bytes = serialize::to_bytes(ctx.rlwe(), &ct, WriteOptions::default()).unwrap();
    let back: bfv::Ciphertext = serialize::from_bytes(ctx.rlwe(), &bytes).unwrap();
    assert_eq!(
        &ctx.decode(&ctx.decrypt(&back, &sk).unwrap()).unwrap()[..100],
        &v[..]
    );
    assert!(matches!(
        serialize::from_bytes::<Ciphertext>(ctx.rlwe(), &bytes),
        Err(Error::Decode(_))
    ));
    // Secret contexts work for BFV too.
    let mut sbytes = Vec::new();
    SecretContext::write_parts(&mut sbytes, &ctx, &sk).unwrap();
    let owner = SecretContext::<BfvContext>::from_bytes(&sbytes, default_backend()).unwrap();
    assert_eq!(
        owner.context.params().plain_modulus,
        ctx.params().plain_modulus
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
        CkksParams::new(12, 2, 25, 30, 1, Security::InsecureForTestingOnly).unwrap(),
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
                Err(Error::Decode(_)) => {}
                other => panic!("prefix of {cut}/{} bytes: {other:?}", bytes.len()),
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            serialize::from_bytes::<Ciphertext>(ctx, &long),
            Err(Error::Decode(_))
        ));
    }
    let good = serialize::to_bytes(ctx, &low, WriteOptions::default()).unwrap();
    let with = |i: usize, v: u8| {
        let mut b = good.clone();
        b[i] = v;
        serialize::from_bytes::<Ciphertext>(ctx, &b)
    };
    assert!(matches!(with(0, b'X'), Err(Error::Decode(m)) if m.contains("magic")));
    assert!(matches!(with(4, 2), Err(Error::Decode(m)) if m.contains("version")));
    assert!(matches!(with(6, 4), Err(Error::Decode(m)) if m.contains("expected")));
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
    assert!(matches!(
        serialize::from_bytes::<Ciphertext>(ctx, &b),
        Err(Error::Decode(_))
    ));
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
    assert!(matches!(
        serialize::from_bytes::<Ciphertext>(ctx, &bomb),
        Err(Error::Decode(_))
    ));
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
        PublicContext::<CkksContext>::from_bytes(&bad, default_backend()),
        Err(Error::Decode(m)) if m.contains("prime")
    ));
    // Claiming 128-bit security for insecure parameters fails the security check.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 3] = 0;
    assert!(matches!(
        PublicContext::<CkksContext>::from_bytes(&bad, default_backend()),
        Err(Error::Decode(m)) if m.contains("insecure")
    ));
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 1] = 30; // log2 N
    assert!(PublicContext::<CkksContext>::from_bytes(&bad, default_backend()).is_err());
}

fn arc_backend() -> Arc<dyn Backend> {
    default_backend()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic any decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), kind in 1u8..=9) {
        let f = fixture();
        let ctx = f.ctx.rlwe();
        let mut b = bytes;
        if b.len() >= HEADER_LEN && kind % 2 == 0 {
            // Give half the cases a valid header so that the bodies are exercised.
            b[..4].copy_from_slice(b"HETN");
            b[4..6].copy_from_slice(&1u16.to_le_bytes());
            b[6] = kind;
            b[7] &= 1;
            b[8..16].copy_from_slice(&ctx.fingerprint().to_le_bytes());
        }
        let _ = serialize::from_bytes::<Ciphertext>(ctx, &b);
        let _ = serialize::from_bytes::<PublicKey>(ctx, &b);
        let _ = serialize::from_bytes::<GaloisKeys>(ctx, &b);
        let _ = serialize::from_bytes::<hetensor::ckks::Plaintext>(ctx, &b);
        let _ = PublicContext::<CkksContext>::from_bytes(&b, arc_backend());
        let _ = SecretContext::<CkksContext>::from_bytes(&b, arc_backend());
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
            2 => { let _ = PublicContext::<CkksContext>::from_bytes(&b, arc_backend()); }
            _ => { let _ = SecretContext::<CkksContext>::from_bytes(&b, arc_backend()); }
        }
    }
}
