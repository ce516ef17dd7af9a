//! BFV end-to-end tests: every homomorphic operation is checked slot by slot against the same
//! operation on plaintext integers mod t, exactly.
//!
//! Arithmetic tests run on small insecure parameters (N = 2^12) for speed; the 128-bit presets
//! (N = 2^13 and 2^14) get their own tests, including a multiplicative-depth run that spends the
//! whole noise budget.

use std::sync::OnceLock;

use hetensor::bfv::{BfvChain, BfvContext, BfvCrt, BfvParams, Ciphertext, PlainModulus};
use hetensor::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey, Security};
use hetensor::Error;
use proptest::prelude::*;

/// A chain at a test ring (not 128-bit secure): N = 2^`log_n`, `primes` ciphertext primes,
/// `dnum` digits.
fn insecure(
    log_n: u32,
    plain: PlainModulus,
    primes: usize,
    dnum: usize,
) -> hetensor::Result<BfvParams> {
    BfvParams::from_chain(BfvChain {
        log_n,
        plain,
        primes,
        dnum,
        security: Security::InsecureForTestingOnly,
    })
}

/// Steps with Galois keys in the shared fixture.
const STEPS: [i64; 5] = [1, -1, 3, -17, 700];

struct Fixture {
    ctx: BfvContext,
    sk: SecretKey,
    pk: PublicKey,
    rk: RelinKey,
    gk: GaloisKeys,
}

/// N = 2^12, 20-bit t, 4 ciphertext primes (insecure on purpose: these tests are about
/// arithmetic, and small N keeps them fast).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let params = insecure(12, PlainModulus::Bits(20), 4, 2).unwrap();
        let ctx = BfvContext::with_seed(params, [7; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
        let gk = ctx.gen_galois_keys(&sk, &STEPS).unwrap();
        Fixture {
            ctx,
            sk,
            pk,
            rk,
            gk,
        }
    })
}

/// `len` pseudo-random values below `t` from `seed` (xorshift; proptest only picks the seed so
/// that shrinking stays cheap).
fn values(seed: u64, len: usize, t: u64) -> Vec<u64> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % t
        })
        .collect()
}

fn padded(v: &[u64], n: usize) -> Vec<u64> {
    let mut out = v.to_vec();
    out.resize(n, 0);
    out
}

fn mulmod(a: u64, b: u64, t: u64) -> u64 {
    ((a as u128 * b as u128) % t as u128) as u64
}

fn dec(f: &Fixture, ct: &Ciphertext) -> Vec<u64> {
    f.ctx.decode(&f.ctx.decrypt(ct, &f.sk).unwrap()).unwrap()
}

/// Row-wise left rotation of the 2 × N/2 slot matrix.
fn rotate_rows_plain(v: &[u64], step: i64) -> Vec<u64> {
    let half = v.len() / 2;
    (0..v.len())
        .map(|i| {
            let (r, c) = (i / half, i % half);
            v[r * half + (c as i64 + step).rem_euclid(half as i64) as usize]
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_roundtrip(seed in any::<u64>(), len in 0usize..=4096) {
        let f = fixture();
        let t = f.ctx.plain_modulus();
        let n = f.ctx.slots();
        let v = values(seed, len, t);
        let pt = f.ctx.encode(&v).unwrap();
        prop_assert_eq!(f.ctx.decode(&pt).unwrap(), padded(&v, n));
        let half = ((t - 1) / 2) as i64;
        let signed: Vec<i64> = v.iter().map(|&x| x as i64 - half).collect();
        let pt = f.ctx.encode_signed(&signed).unwrap();
        let mut want = signed.clone();
        want.resize(n, 0);
        prop_assert_eq!(f.ctx.decode_signed(&pt).unwrap(), want);
        // Encrypt/decrypt both ways.
        let ct = f.ctx.encrypt_symmetric(&pt, &f.sk).unwrap();
        prop_assert!(ct.inner().is_seeded());
        prop_assert_eq!(f.ctx.decrypt(&ct, &f.sk).unwrap(), pt.clone());
        let ct = f.ctx.encrypt(&pt, &f.pk).unwrap();
        prop_assert_eq!(f.ctx.decrypt(&ct, &f.sk).unwrap(), pt);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arithmetic_matches_plaintext(sa in any::<u64>(), sb in any::<u64>(), k in any::<i64>()) {
        let f = fixture();
        let ctx = &f.ctx;
        let t = ctx.plain_modulus();
        let n = ctx.slots();
        let (a, b) = (values(sa, n, t), values(sb, n, t));
        let (pa, pb) = (ctx.encode(&a).unwrap(), ctx.encode(&b).unwrap());
        let ca = ctx.encrypt(&pa, &f.pk).unwrap();
        let cb = ctx.encrypt_symmetric(&pb, &f.sk).unwrap();
        let zip = |g: &dyn Fn(u64, u64) -> u64| a.iter().zip(&b).map(|(&x, &y)| g(x, y)).collect::<Vec<u64>>();

        let add = zip(&|x, y| (x + y) % t);
        let sub = zip(&|x, y| (x + t - y) % t);
        let mul = zip(&|x, y| mulmod(x, y, t));
        prop_assert_eq!(dec(f, &ctx.add(&ca, &cb).unwrap()), add.clone());
        prop_assert_eq!(dec(f, &ctx.sub(&ca, &cb).unwrap()), sub.clone());
        prop_assert_eq!(dec(f, &ctx.negate(&ca).unwrap()), a.iter().map(|&x| (t - x) % t).collect::<Vec<_>>());
        prop_assert_eq!(dec(f, &ctx.add_plain(&ca, &pb).unwrap()), add);
        prop_assert_eq!(dec(f, &ctx.sub_plain(&ca, &pb).unwrap()), sub);
        prop_assert_eq!(dec(f, &ctx.multiply_plain(&ca, &pb).unwrap()), mul.clone());
        let km = k.rem_euclid(t as i64) as u64;
        prop_assert_eq!(dec(f, &ctx.multiply_scalar(&ca, k).unwrap()), a.iter().map(|&x| mulmod(x, km, t)).collect::<Vec<_>>());

        // Ciphertext product: size 3 decrypts with s², relinearized with s.
        let prod = ctx.multiply(&ca, &cb).unwrap();
        prop_assert_eq!(prod.size(), 3);
        prop_assert_eq!(dec(f, &prod), mul.clone());
        let relin = ctx.relinearize(&prod, &f.rk).unwrap();
        prop_assert_eq!(relin.size(), 2);
        prop_assert_eq!(dec(f, &relin), mul.clone());
        prop_assert_eq!(dec(f, &ctx.square(&ca).unwrap()), a.iter().map(|&x| mulmod(x, x, t)).collect::<Vec<_>>());
        // Degree-2 terms accumulate before one relinearization; plaintext ops work on them too.
        let acc = ctx.add(&prod, &ctx.multiply(&cb, &cb).unwrap()).unwrap();
        let acc = ctx.add_plain(&acc, &pa).unwrap();
        let want = a.iter().zip(&b).map(|(&x, &y)| (mulmod(x, y, t) + mulmod(y, y, t) + x) % t).collect::<Vec<_>>();
        prop_assert_eq!(dec(f, &ctx.relinearize(&acc, &f.rk).unwrap()), want);
        // (a·b)·a after relinearization: depth 2.
        prop_assert_eq!(
            dec(f, &ctx.multiply_relin(&relin, &ca, &f.rk).unwrap()),
            mul.iter().zip(&a).map(|(&x, &y)| mulmod(x, y, t)).collect::<Vec<_>>()
        );
        prop_assert!(ctx.invariant_noise_budget(&relin, &f.sk).unwrap() > 0.0);
    }

    #[test]
    fn rotations_match_plaintext(seed in any::<u64>(), which in 0usize..STEPS.len()) {
        let f = fixture();
        let ctx = &f.ctx;
        let n = ctx.slots();
        let a = values(seed, n, ctx.plain_modulus());
        let ca = ctx.encrypt(&ctx.encode(&a).unwrap(), &f.pk).unwrap();
        let step = STEPS[which];
        prop_assert_eq!(dec(f, &ctx.rotate_rows(&ca, step, &f.gk).unwrap()), rotate_rows_plain(&a, step));
        // Steps are taken mod N/2: step + N/2 uses the same key.
        let wrapped = step + (n / 2) as i64;
        prop_assert_eq!(dec(f, &ctx.rotate_rows(&ca, wrapped, &f.gk).unwrap()), rotate_rows_plain(&a, step));
        prop_assert_eq!(dec(f, &ctx.rotate_rows(&ca, 0, &f.gk).unwrap()), a.clone());
        let half = n / 2;
        let swapped: Vec<u64> = (0..n).map(|i| a[(i + half) % n]).collect();
        prop_assert_eq!(dec(f, &ctx.rotate_columns(&ca, &f.gk).unwrap()), swapped);
        // Left then right by one is the identity.
        let back = ctx.rotate_rows(&ctx.rotate_rows(&ca, 1, &f.gk).unwrap(), -1, &f.gk).unwrap();
        prop_assert_eq!(dec(f, &back), a);
    }

    #[test]
    fn mod_switch_preserves_plaintext(sa in any::<u64>(), sb in any::<u64>(), level in 0usize..4) {
        let f = fixture();
        let ctx = &f.ctx;
        let t = ctx.plain_modulus();
        let n = ctx.slots();
        let (a, b) = (values(sa, n, t), values(sb, n, t));
        let ca = ctx.encrypt(&ctx.encode(&a).unwrap(), &f.pk).unwrap();
        let cb = ctx.encrypt(&ctx.encode(&b).unwrap(), &f.pk).unwrap();
        let low = ctx.mod_switch_to(&ca, level).unwrap();
        prop_assert_eq!(low.level(), level);
        prop_assert_eq!(dec(f, &low), a.clone());
        let budget_top = ctx.invariant_noise_budget(&ca, &f.sk).unwrap();
        let budget_low = ctx.invariant_noise_budget(&low, &f.sk).unwrap();
        prop_assert!(budget_low <= budget_top + 1.0);
        // Mixed levels are aligned automatically.
        let sum = ctx.add(&low, &cb).unwrap();
        prop_assert_eq!(sum.level(), level);
        prop_assert_eq!(dec(f, &sum), a.iter().zip(&b).map(|(&x, &y)| (x + y) % t).collect::<Vec<_>>());
        if level >= 2 {
            // Enough modulus left for a product.
            let prod = ctx.multiply_relin(&low, &cb, &f.rk).unwrap();
            prop_assert_eq!(prod.level(), level);
            prop_assert_eq!(dec(f, &prod), a.iter().zip(&b).map(|(&x, &y)| mulmod(x, y, t)).collect::<Vec<_>>());
            let next = ctx.mod_switch_to_next(&prod).unwrap();
            prop_assert_eq!(dec(f, &next), a.iter().zip(&b).map(|(&x, &y)| mulmod(x, y, t)).collect::<Vec<_>>());
        }
    }
}

/// Repeated multiplication at the 128-bit N = 2^13 preset until the noise budget is spent: every
/// product the evaluator accepts decrypts correctly, the budget falls every time, and the
/// product it refuses really had (almost) no budget left.
#[test]
fn preset_2_13_depth_until_budget_exhausted() {
    let params = BfvParams::preset(13, PlainModulus::Bits(20)).unwrap();
    assert_eq!(params.rlwe().security(), Security::Bits128);
    let ctx = BfvContext::with_seed(params, [13; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let t = ctx.plain_modulus();
    let n = ctx.slots();
    let x = values(99, n, t);
    let y = values(1234, n, t);
    let cx = ctx.encrypt(&ctx.encode(&x).unwrap(), &pk).unwrap();
    let cy = ctx.encrypt(&ctx.encode(&y).unwrap(), &pk).unwrap();
    let mut budget = ctx.invariant_noise_budget(&cx, &sk).unwrap();
    println!("N=2^13 t={t}: fresh noise budget {budget:.1} bits");
    assert!(budget > 100.0, "fresh budget {budget}");
    let (mut c, mut v) = (cx, x);
    let mut depth = 0;
    loop {
        let next = match ctx.multiply_relin(&c, &cy, &rk) {
            Ok(next) => next,
            Err(Error::NoiseBudgetExhausted { budget_bits, .. }) => {
                // Refused: the real budget of that product is (nearly) gone.
                let over = ctx.multiply_relin_unchecked(&c, &cy, &rk).unwrap();
                let b = ctx.invariant_noise_budget(&over, &sk).unwrap();
                println!(
                    "  multiplication {} refused: estimate {budget_bits:.1} bits, measured {b:.1}",
                    depth + 1
                );
                assert!(b < 8.0, "refused with {b:.1} bits left");
                break;
            }
            Err(e) => panic!("multiplication {}: {e:?}", depth + 1),
        };
        c = next;
        v = v.iter().zip(&y).map(|(&a, &b)| mulmod(a, b, t)).collect();
        let b = ctx.invariant_noise_budget(&c, &sk).unwrap();
        println!("  after {} multiplications: {b:.1} bits", depth + 1);
        assert!(b >= 1.0, "accepted a product with {b:.2} bits");
        assert!(b < budget, "budget must decrease: {b} after {budget}");
        assert_eq!(
            ctx.decode(&ctx.decrypt(&c, &sk).unwrap()).unwrap(),
            v,
            "wrong at depth {}",
            depth + 1
        );
        budget = b;
        depth += 1;
        assert!(depth < 20, "noise budget never ran out");
    }
    assert!(
        depth >= 4,
        "only {depth} multiplications fit at the N = 2^13 preset"
    );
}

/// The N = 2^14 preset: product, relinearization, rotation, and their noise budgets.
#[test]
fn preset_2_14_multiply_and_rotate() {
    let ctx = BfvContext::with_seed(
        BfvParams::preset(14, PlainModulus::Bits(20)).unwrap(),
        [14; 32],
    )
    .unwrap();
    let keys = ctx.keygen().unwrap();
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let gk = ctx.gen_galois_keys(&sk, &[1]).unwrap();
    let t = ctx.plain_modulus();
    let n = ctx.slots();
    let (a, b) = (values(5, n, t), values(6, n, t));
    let ca = ctx.encrypt(&ctx.encode(&a).unwrap(), &pk).unwrap();
    let cb = ctx.encrypt(&ctx.encode(&b).unwrap(), &pk).unwrap();
    let fresh = ctx.invariant_noise_budget(&ca, &sk).unwrap();
    let prod = ctx.multiply_relin(&ca, &cb, &rk).unwrap();
    let after = ctx.invariant_noise_budget(&prod, &sk).unwrap();
    println!("N=2^14 t={t}: fresh {fresh:.1} bits, after one multiplication {after:.1} bits");
    assert!(fresh > 300.0 && after > 250.0 && after < fresh);
    let want: Vec<u64> = a.iter().zip(&b).map(|(&x, &y)| mulmod(x, y, t)).collect();
    assert_eq!(ctx.decode(&ctx.decrypt(&prod, &sk).unwrap()).unwrap(), want);
    let rot = ctx.rotate_rows(&prod, 1, &gk).unwrap();
    assert_eq!(
        ctx.decode(&ctx.decrypt(&rot, &sk).unwrap()).unwrap(),
        rotate_rows_plain(&want, 1)
    );
}

/// A 60-bit plaintext modulus (the largest supported): the auxiliary basis grows with t and
/// products stay exact for full-range values.
#[test]
fn sixty_bit_plain_modulus() {
    let params = insecure(12, PlainModulus::Bits(60), 6, 6).unwrap();
    let ctx = BfvContext::with_seed(params, [60; 32]).unwrap();
    let t = ctx.plain_modulus();
    assert!(t > 1 << 59);
    let keys = ctx.keygen().unwrap();
    let (sk, rk) = (keys.secret, keys.relin);
    let n = ctx.slots();
    let (a, b) = (values(11, n, t), values(12, n, t));
    let ca = ctx
        .encrypt_symmetric(&ctx.encode(&a).unwrap(), &sk)
        .unwrap();
    let cb = ctx
        .encrypt_symmetric(&ctx.encode(&b).unwrap(), &sk)
        .unwrap();
    let prod = ctx.multiply_relin(&ca, &cb, &rk).unwrap();
    let want: Vec<u64> = a.iter().zip(&b).map(|(&x, &y)| mulmod(x, y, t)).collect();
    assert_eq!(ctx.decode(&ctx.decrypt(&prod, &sk).unwrap()).unwrap(), want);
    let budget = ctx.invariant_noise_budget(&prod, &sk).unwrap();
    println!("N=2^12, 60-bit t, 6 primes: budget after one product {budget:.1} bits");
    assert!(budget > 0.0);
}

/// CRT over three 30-bit plaintext primes: an encrypted integer dot product whose terms and
/// result (~2^83) would wrap any single t, recovered exactly as i128.
#[test]
fn crt_integer_dot_product() {
    let crt = BfvCrt::with_seed(
        12,
        &[30, 30, 30],
        5,
        5,
        Security::InsecureForTestingOnly,
        [3; 32],
    )
    .unwrap();
    assert_eq!(crt.contexts().len(), 3);
    let ts = crt.plain_moduli();
    assert!(ts[0] != ts[1] && ts[1] != ts[2] && ts[0] != ts[2]);
    let keys = crt.keygen().unwrap();
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let gk = crt.gen_galois_keys(&sk, &[1, 2, 4]).unwrap();
    let x: Vec<i64> = (0..8).map(|i| (1i64 << 40) - 12345 * i * i - 7).collect();
    let y: Vec<i64> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                -(1i64 << 40) + 999 * i
            } else {
                (1 << 39) + i
            }
        })
        .collect();
    let cx = crt.encrypt_i64(&x, &pk).unwrap();
    let cy = crt.encrypt_i64(&y, &pk).unwrap();
    let prod = crt.multiply_relin(&cx, &cy, &rk).unwrap();
    let products: Vec<i128> = x
        .iter()
        .zip(&y)
        .map(|(&a, &b)| a as i128 * b as i128)
        .collect();
    let got = crt.decrypt(&prod, &sk).unwrap();
    assert_eq!(&got[..8], &products[..]);
    assert!(got[8..].iter().all(|&v| v == 0));
    // Rotate-and-sum over 8 slots.
    let mut acc = prod;
    for step in [4, 2, 1] {
        acc = crt
            .add(&acc, &crt.rotate_rows(&acc, step, &gk).unwrap())
            .unwrap();
    }
    let dot: i128 = products.iter().sum();
    assert!(
        dot.unsigned_abs() > (1u128 << 80) && ts.iter().all(|&t| dot.unsigned_abs() > t as u128)
    );
    let got = crt.decrypt(&acc, &sk).unwrap();
    assert_eq!(got[0], dot);
    // Scalar and plaintext products and subtraction on top.
    let scaled = crt.multiply_scalar(&cx, -3_000_000).unwrap();
    let scaled = crt.multiply_plain(&scaled, &[1i128 << 20; 8]).unwrap();
    let diff = crt.sub(&scaled, &cx).unwrap();
    let got = crt.decrypt(&diff, &sk).unwrap();
    for i in 0..8 {
        assert_eq!(
            got[i],
            x[i] as i128 * -3_000_000 * (1i128 << 20) - x[i] as i128
        );
    }
    assert!(crt.invariant_noise_budget(&acc, &sk).unwrap() > 0.0);
    // Values beyond ±T/2 are rejected.
    let too_big = crt.plain_modulus_product() as i128;
    assert!(matches!(
        crt.encode(&[too_big]),
        Err(Error::InvalidInput(_))
    ));
}

/// Same seed, same parameters → identical ciphertext words, products included: the integer-only
/// pipeline is deterministic, which is what lets other backends be checked word for word.
#[test]
fn seeded_contexts_are_bit_identical() {
    let make = || {
        let params = insecure(12, PlainModulus::Bits(20), 3, 3).unwrap();
        let ctx = BfvContext::with_seed(params, [42; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let (pk, rk) = (keys.public, keys.relin);
        let t = ctx.plain_modulus();
        let a = ctx
            .encrypt(&ctx.encode(&values(1, 4096, t)).unwrap(), &pk)
            .unwrap();
        let b = ctx
            .encrypt(&ctx.encode(&values(2, 4096, t)).unwrap(), &pk)
            .unwrap();
        let p = ctx.multiply_relin(&a, &b, &rk).unwrap();
        ctx.rlwe().backend().download(p.inner().polys()).unwrap()
    };
    assert_eq!(make(), make());
}

#[test]
fn errors_are_reported() {
    let f = fixture();
    let ctx = &f.ctx;
    let t = ctx.plain_modulus();
    let n = ctx.slots();
    // Plaintext domain.
    assert!(matches!(ctx.encode(&[0, t]), Err(Error::InvalidInput(_))));
    assert!(
        matches!(ctx.encode(&vec![1; n + 1]), Err(Error::TooManyValues { got, slots }) if got == n + 1 && slots == n)
    );
    assert!(matches!(
        ctx.encode_signed(&[(t / 2 + 1) as i64]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        ctx.plaintext_from_coeffs(&[t]),
        Err(Error::InvalidInput(_))
    ));
    // Missing Galois key: steps 2 has none.
    let ct = ctx
        .encrypt(&ctx.encode(&[1, 2, 3]).unwrap(), &f.pk)
        .unwrap();
    match ctx.rotate_rows(&ct, 2, &f.gk) {
        Err(Error::MissingGaloisKey { step, .. }) => assert_eq!(step, Some(2)),
        other => panic!("expected MissingGaloisKey, got {other:?}"),
    }
    assert!(matches!(
        ctx.rotate_columns(&ct, &GaloisKeys::default()),
        Err(Error::MissingGaloisKey { step: None, .. })
    ));
    // Size-3 ciphertexts must be relinearized before rotation or another product.
    let sq = ctx.square(&ct).unwrap();
    assert!(matches!(
        ctx.rotate_rows(&sq, 1, &f.gk),
        Err(Error::CiphertextSize(_))
    ));
    assert!(matches!(
        ctx.multiply(&sq, &ct),
        Err(Error::CiphertextSize(_))
    ));
    // Levels.
    assert!(matches!(
        ctx.mod_switch_to_next(&ctx.mod_switch_to(&ct, 0).unwrap()),
        Err(Error::OutOfLevels { .. })
    ));
    assert!(matches!(
        ctx.mod_switch_to(&ctx.mod_switch_to(&ct, 1).unwrap(), 2),
        Err(Error::InvalidInput(_))
    ));
    // Parameters: 8 + 1 primes exceed 218 bits at N = 2^13 without the opt-in.
    assert!(matches!(
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Bits(20),
            primes: 8,
            dnum: 8,
            ..Default::default()
        }),
        Err(Error::InsecureParameters { .. })
    ));
    assert!(insecure(13, PlainModulus::Bits(20), 8, 8).is_ok());
    assert!(matches!(
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Prime(97),
            primes: 6,
            dnum: 6,
            ..Default::default()
        }),
        Err(Error::InvalidParameters(_))
    ));
    // 65537 ≡ 1 mod 2^14 is a batching prime for N = 2^13 (OpenFHE's default t).
    assert_eq!(
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Prime(65537),
            primes: 6,
            dnum: 6,
            ..Default::default()
        })
        .unwrap()
        .plain_modulus(),
        65537
    );
    assert!(matches!(
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Bits(61),
            primes: 6,
            dnum: 6,
            ..Default::default()
        }),
        Err(Error::InvalidParameters(_))
    ));
    assert!(matches!(
        BfvParams::from_chain(BfvChain {
            log_n: 13,
            plain: PlainModulus::Bits(20),
            primes: 6,
            dnum: 0,
            ..Default::default()
        }),
        Err(Error::InvalidParameters(_))
    ));
    assert!(matches!(
        BfvParams::preset(12, PlainModulus::Bits(20)),
        Err(Error::InvalidParameters(_))
    ));
    // A plaintext modulus too large for the ciphertext modulus leaves no budget.
    assert!(matches!(
        insecure(12, PlainModulus::Bits(60), 2, 1),
        Err(Error::InvalidParameters(_))
    ));
}

#[test]
fn mismatched_contexts_are_rejected() {
    let f = fixture();
    // Other primes (3 instead of 4): keys and ciphertexts do not mix.
    let params = insecure(12, PlainModulus::Bits(20), 3, 3).unwrap();
    let other = BfvContext::with_seed(params, [1; 32]).unwrap();
    let other_sk = other.keygen().unwrap().secret;
    let ct = f.ctx.encrypt(&f.ctx.encode(&[5]).unwrap(), &f.pk).unwrap();
    let ct_other = other
        .encrypt_symmetric(&other.encode(&[5]).unwrap(), &other_sk)
        .unwrap();
    assert!(matches!(
        f.ctx.add(&ct, &ct_other),
        Err(Error::ParameterMismatch(_))
    ));
    assert!(matches!(
        other.decrypt(&ct, &other_sk),
        Err(Error::ParameterMismatch(_))
    ));
    assert!(matches!(
        f.ctx.decrypt(&ct, &other_sk),
        Err(Error::ParameterMismatch(_))
    ));
    assert!(matches!(
        other.gen_public_key(&f.sk),
        Err(Error::ParameterMismatch(_))
    ));
    // Same RLWE parameters, different t: the plaintext modulus tag catches it.
    let crt = BfvCrt::with_seed(
        12,
        &[20, 20],
        4,
        2,
        Security::InsecureForTestingOnly,
        [2; 32],
    )
    .unwrap();
    let (c0, c1) = (&crt.contexts()[0], &crt.contexts()[1]);
    let sk = crt.keygen().unwrap().secret;
    let x0 = c0
        .encrypt_symmetric(&c0.encode(&[1]).unwrap(), &sk)
        .unwrap();
    let x1 = c1
        .encrypt_symmetric(&c1.encode(&[1]).unwrap(), &sk)
        .unwrap();
    assert!(matches!(c0.add(&x0, &x1), Err(Error::ParameterMismatch(_))));
    assert!(matches!(
        c1.multiply_plain(&x1, &c0.encode(&[1]).unwrap()),
        Err(Error::ParameterMismatch(_))
    ));
}

/// Asserts that the evaluator's noise estimate never claims more budget than the secret-key
/// measurement (`invariant_noise_budget`, big-integer CRT: an independent computation) and,
/// while budget is really left, is at most `slack` bits more pessimistic. Returns
/// `(estimated, measured)`.
fn check_estimate(
    ctx: &BfvContext,
    ct: &Ciphertext,
    sk: &SecretKey,
    what: &str,
    slack: f64,
) -> (f64, f64) {
    let est = ctx.noise_budget_estimate(ct);
    let measured = ctx.invariant_noise_budget(ct, sk).unwrap();
    println!("  {what:<34} estimated {est:7.1} bits, measured {measured:7.1} bits");
    assert!(
        est <= measured,
        "{what}: the estimate claims {est:.2} bits but only {measured:.2} are left"
    );
    if measured >= 1.0 {
        assert!(
            est >= measured - slack,
            "{what}: estimate {est:.2} bits is more than {slack} bits below the measured {measured:.2}"
        );
    }
    (est, measured)
}

/// Issue #13: repeated squaring at the 128-bit N = 2^13 preset (t of 20 bits, public-key
/// encryption). The 5th squaring leaves no budget: it must be an error, not a ciphertext that
/// decrypts to wrong values, and so must every operation after it and its decryption.
///
/// Each row compares the estimate with the measured budget of the same ciphertext, made with
/// `multiply_relin_unchecked` so that the chain can go past the point where the checked
/// operation refuses.
#[test]
fn squaring_until_the_budget_is_gone_is_an_error() {
    let ctx = BfvContext::with_seed(
        BfvParams::preset(13, PlainModulus::Bits(20)).unwrap(),
        [13; 32],
    )
    .unwrap();
    let keys = ctx.keygen().unwrap();
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let t = ctx.plain_modulus();
    let n = ctx.slots();
    let mut v = values(2024, n, t);
    let mut c = ctx.encrypt(&ctx.encode(&v).unwrap(), &pk).unwrap();
    println!("N=2^13 preset, t={t}: squarings, estimated vs measured budget");
    check_estimate(&ctx, &c, &sk, "fresh (public key)", 12.0);
    let mut refused_at = None;
    for i in 1..=6 {
        let checked = ctx.multiply_relin(&c, &c, &rk);
        let next = ctx.multiply_relin_unchecked(&c, &c, &rk).unwrap();
        v = v.iter().map(|&a| mulmod(a, a, t)).collect();
        let (est, measured) =
            check_estimate(&ctx, &next, &sk, &format!("after squaring {i}"), 12.0);
        match checked {
            Ok(ct) => {
                assert!(est >= 0.0, "squaring {i} accepted with estimate {est}");
                assert_eq!(ctx.decode(&ctx.decrypt(&ct, &sk).unwrap()).unwrap(), v);
            }
            Err(Error::NoiseBudgetExhausted {
                op, budget_bits, ..
            }) => {
                assert!(est < 0.0 && budget_bits < 0.0, "squaring {i}: {est}");
                assert!(op == "multiply" || op == "relinearize", "{op}");
                refused_at.get_or_insert(i);
            }
            Err(other) => panic!("squaring {i}: {other:?}"),
        }
        // Decryption measures the noise itself: right values, or an error, never garbage.
        match ctx.decrypt(&next, &sk) {
            Ok(pt) => {
                assert!(
                    measured >= 1.0,
                    "squaring {i} decrypted at {measured:.2} bits"
                );
                assert_eq!(ctx.decode(&pt).unwrap(), v, "squaring {i}");
            }
            Err(Error::NoiseBudgetExhausted { op, .. }) => {
                assert_eq!(op, "decrypt");
                assert!(measured < 1.0, "squaring {i} refused at {measured:.2} bits");
            }
            Err(other) => panic!("decrypting squaring {i}: {other:?}"),
        }
        c = next;
        if i == 5 {
            // The point: the 5th squaring has no budget left.
            assert!(measured < 1.0, "5th squaring still has {measured:.2} bits");
            // Nothing continues from it.
            assert!(matches!(
                ctx.multiply_relin(&c, &c, &rk),
                Err(Error::NoiseBudgetExhausted { .. })
            ));
            assert!(matches!(
                ctx.add(&c, &c),
                Err(Error::NoiseBudgetExhausted { op: "add", .. })
            ));
            assert!(matches!(
                ctx.multiply_scalar(&c, 3),
                Err(Error::NoiseBudgetExhausted { .. })
            ));
        }
    }
    // The estimate refuses no later than the real budget runs out (5), and not before the
    // last squaring that really has a few bits left.
    assert!(
        matches!(refused_at, Some(4..=5)),
        "refused at {refused_at:?}"
    );
}

/// The estimate after every kind of operation (N = 2^12 fixture, both encryptions, at the top
/// level and after modulus switching) against the measured budget, and the results against
/// plaintext arithmetic mod t.
#[test]
fn noise_estimate_tracks_every_operation() {
    let f = fixture();
    let ctx = &f.ctx;
    let t = ctx.plain_modulus();
    let n = ctx.slots();
    let (x, y, p) = (values(1, n, t), values(2, n, t), values(3, n, t));
    let slack = 12.0;
    let chk = |ct: &Ciphertext, what: &str| check_estimate(ctx, ct, &f.sk, what, slack);
    let a = ctx.encrypt(&ctx.encode(&x).unwrap(), &f.pk).unwrap();
    let b = ctx
        .encrypt_symmetric(&ctx.encode(&y).unwrap(), &f.sk)
        .unwrap();
    println!("N=2^12, 4 primes, t={t}:");
    chk(&a, "fresh public key");
    chk(&b, "fresh symmetric");
    let sum = ctx.add(&a, &b).unwrap();
    chk(&sum, "a + b");
    assert_eq!(
        dec(f, &sum),
        x.iter()
            .zip(&y)
            .map(|(&u, &w)| (u + w) % t)
            .collect::<Vec<_>>()
    );
    let pt = ctx.encode(&p).unwrap();
    let ap = ctx.multiply_plain(&a, &pt).unwrap();
    chk(&ap, "a · plaintext");
    let xp: Vec<u64> = x.iter().zip(&p).map(|(&u, &w)| mulmod(u, w, t)).collect();
    assert_eq!(dec(f, &ap), xp);
    let ak = ctx.multiply_scalar(&a, -4321).unwrap();
    chk(&ak, "a · (−4321)");
    let plus = ctx.add_plain(&ak, &pt).unwrap();
    chk(&plus, "a · (−4321) + plaintext");
    let rot = ctx.rotate_rows(&ap, 3, &f.gk).unwrap();
    chk(&rot, "rotate_rows(a · plaintext, 3)");
    assert_eq!(dec(f, &rot), rotate_rows_plain(&xp, 3));
    let col = ctx.rotate_columns(&rot, &f.gk).unwrap();
    chk(&col, "rotate_columns");
    let ab = ctx.multiply(&a, &b).unwrap();
    chk(&ab, "a · b (size 3)");
    let abr = ctx.relinearize(&ab, &f.rk).unwrap();
    chk(&abr, "relinearize(a · b)");
    let xy: Vec<u64> = x.iter().zip(&y).map(|(&u, &w)| mulmod(u, w, t)).collect();
    assert_eq!(dec(f, &abr), xy);
    let low = ctx.mod_switch_to(&abr, 2).unwrap();
    chk(&low, "mod_switch_to(a · b, level 2)");
    let prod = ctx.multiply_relin(&low, &ap, &f.rk).unwrap();
    chk(&prod, "(a · b) · (a · p) at level 2");
    assert_eq!(
        dec(f, &prod),
        xy.iter()
            .zip(&xp)
            .map(|(&u, &w)| mulmod(u, w, t))
            .collect::<Vec<_>>()
    );
    let bottom = ctx.mod_switch_to(&prod, 0).unwrap();
    chk(&bottom, "mod_switch_to(…, level 0)");
    let fresh_low = ctx.mod_switch_to(&b, 0).unwrap();
    chk(&fresh_low, "fresh symmetric at level 0");
    // A sum of many scaled terms (the quantized network's affine layers).
    let mut acc = ctx.multiply_scalar(&a, 97).unwrap();
    for k in 0..24 {
        let term = ctx.multiply_scalar(&b, 31 - 7 * k).unwrap();
        acc = ctx.add(&acc, &term).unwrap();
    }
    chk(&acc, "97·a + Σ (31 − 7k)·b, 25 terms");
    let sq = ctx.multiply_relin(&acc, &acc, &f.rk).unwrap();
    chk(&sq, "square of that sum");
}

/// The noise estimate travels with a serialized BFV ciphertext (a loaded product is refused
/// exactly when the original would be), and a decoded estimate that is not a finite value in
/// range is a decode error.
#[test]
fn noise_estimate_is_serialized_and_validated() {
    use hetensor::serialize::{self, WriteOptions};
    let f = fixture();
    let ctx = &f.ctx;
    let ct = ctx
        .encrypt(&ctx.encode(&[1, 2, 3]).unwrap(), &f.pk)
        .unwrap();
    let prod = ctx.multiply_relin(&ct, &ct, &f.rk).unwrap();
    let opts = WriteOptions {
        compression: None,
        seeded: false,
    };
    let bytes = serialize::to_bytes(ctx.rlwe(), &prod, opts).unwrap();
    let back: Ciphertext = serialize::from_bytes(ctx.rlwe(), &bytes).unwrap();
    assert_eq!(back.noise_log2(), prod.noise_log2());
    assert_eq!(
        ctx.noise_budget_estimate(&back),
        ctx.noise_budget_estimate(&prod)
    );
    // The estimate is stored as a little-endian f64: replace it with invalid values.
    let pat = prod.noise_log2().to_le_bytes();
    let at = bytes
        .windows(8)
        .rposition(|w| w == pat)
        .expect("the estimate is in the bytes");
    for bad in [f64::NAN, f64::INFINITY, 1e9, -1e9] {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&bad.to_le_bytes());
        assert!(
            matches!(
                serialize::from_bytes::<Ciphertext>(ctx.rlwe(), &b),
                Err(Error::Decode(_))
            ),
            "{bad} accepted"
        );
    }
}

/// `BfvParams::builder()` picks the smallest preset ring whose noise estimate holds the depth,
/// and the depth it promises runs: that many sequential squarings of a fresh public-key
/// encryption decrypt to the plaintext squares. A depth no ring holds is an error that says so.
#[test]
fn builder_picks_the_smallest_ring_for_the_depth() {
    let shallow = BfvParams::builder().depth(1).build().unwrap();
    assert_eq!(shallow.n(), 1 << 13);
    let deeper = BfvParams::builder().depth(6).build().unwrap();
    assert_eq!(deeper.n(), 1 << 14);
    let wide = BfvParams::builder().slots(20_000).build().unwrap();
    assert_eq!(wide.n(), 1 << 15);
    // The deepest the 2^13 preset allows, run for real.
    let mut depth = 1;
    while BfvParams::builder()
        .log_n(13)
        .depth(depth + 1)
        .build()
        .is_ok()
    {
        depth += 1;
    }
    let ctx =
        BfvContext::new(BfvParams::builder().log_n(13).depth(depth).build().unwrap()).unwrap();
    let keys = ctx.keygen().unwrap();
    let t = ctx.plain_modulus() as i128;
    let mut x = ctx
        .encrypt(&ctx.encode_signed(&[3, -2, 5]).unwrap(), &keys.public)
        .unwrap();
    let mut want: Vec<i128> = vec![3, -2, 5];
    for _ in 0..depth {
        x = ctx.multiply_relin(&x, &x, &keys.relin).unwrap();
        want.iter_mut().for_each(|w| *w = (*w * *w) % t);
    }
    let got = ctx.decode(&ctx.decrypt(&x, &keys.secret).unwrap()).unwrap();
    let want: Vec<u64> = want.iter().map(|w| w.rem_euclid(t) as u64).collect();
    assert_eq!(&got[..3], &want[..], "after {depth} squarings");
    assert!(ctx.invariant_noise_budget(&x, &keys.secret).unwrap() > 0.0);
    // Too deep for any ring, and too deep for a fixed one: errors that name the depth.
    for b in [
        BfvParams::builder().depth(150),
        BfvParams::builder().log_n(13).depth(depth + 1),
    ] {
        match b.build() {
            Err(Error::InvalidParameters(msg)) => assert!(msg.contains("does not fit"), "{msg}"),
            other => panic!("expected a depth error, got {other:?}"),
        }
    }
}

/// `BfvCrt::builder` takes the ring and chain `BfvParams::builder` picks for its largest prime,
/// and what it builds survives the depth asked for: three sequential products of values whose
/// powers outgrow any one prime come back exact. A depth no ring holds is an error naming
/// the bound, and an empty list of primes is refused.
#[test]
fn crt_builder_picks_the_ring_for_its_largest_prime() {
    let crt = BfvCrt::builder(&[20, 30]).depth(3).build().unwrap();
    let single = BfvParams::builder()
        .plain_modulus(PlainModulus::Bits(30))
        .depth(3)
        .build()
        .unwrap();
    assert_eq!(crt.slots(), single.n());
    assert_eq!(crt.contexts().len(), 2);
    let keys = crt.keygen().unwrap();
    let x: Vec<i128> = vec![3, -5, 1000, -777];
    let cx = crt.encrypt(&x, &keys.public).unwrap();
    let mut acc = cx.clone();
    for _ in 0..3 {
        acc = crt.multiply_relin(&acc, &cx, &keys.relin).unwrap();
    }
    let got = crt.decrypt(&acc, &keys.secret).unwrap();
    let want: Vec<i128> = x.iter().map(|v| v.pow(4)).collect();
    assert_eq!(&got[..4], &want[..]);
    assert!(
        want[2] > 1 << 39,
        "the result outgrows the 20- and 30-bit primes"
    );

    let err = BfvCrt::builder(&[30, 30, 30])
        .depth(150)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert!(BfvCrt::builder(&[]).build().is_err());
}
