//! Ring arithmetic against independent references: the NTT product against schoolbook
//! negacyclic multiplication for every supported N, CRT and base-conversion round trips.

use hetensor::math::ntt::negacyclic_schoolbook;
use hetensor::math::primes::ntt_primes;
use hetensor::math::sampler::Sampler;
use hetensor::math::{BaseConverter, Modulus, NttPlan, RnsBasis};
use num_bigint::{BigInt, BigUint};
use proptest::prelude::*;

fn ntt_product(plan: &NttPlan, a: &[u32], b: &[u32]) -> Vec<u32> {
    let m = plan.modulus();
    let (mut fa, mut fb) = (a.to_vec(), b.to_vec());
    plan.forward(&mut fa);
    plan.forward(&mut fb);
    let mut c: Vec<u32> = fa.iter().zip(&fb).map(|(&x, &y)| m.mul(x, y)).collect();
    plan.inverse(&mut c);
    c
}

/// One coefficient of the negacyclic product, computed directly (O(N)).
fn schoolbook_coeff(a: &[u32], b: &[u32], k: usize, m: &Modulus) -> u32 {
    let n = a.len();
    let mut acc = 0u32;
    for i in 0..n {
        if i <= k {
            acc = m.add(acc, m.mul(a[i], b[k - i]));
        } else {
            acc = m.sub(acc, m.mul(a[i], b[n + k - i]));
        }
    }
    acc
}

#[test]
fn ntt_matches_schoolbook_for_every_n() {
    let mut s = Sampler::from_seed([11; 32]);
    for log_n in 10..=16u32 {
        let n = 1usize << log_n;
        for &q in &ntt_primes(30, 2 * n as u64, 2, &[]).unwrap() {
            let m = Modulus::new(q).unwrap();
            let plan = NttPlan::new(n, m).unwrap();
            let a = s.uniform(&[m], n);
            let b = s.uniform(&[m], n);
            let c = ntt_product(&plan, &a, &b);
            if log_n <= 12 {
                assert_eq!(
                    c,
                    negacyclic_schoolbook(&a, &b, &m),
                    "N = 2^{log_n}, q = {q}"
                );
            } else {
                // Full schoolbook is O(N^2); check 48 coefficients spread over the output.
                for t in 0..48 {
                    let k = (t * 7919 + 13) % n;
                    assert_eq!(
                        c[k],
                        schoolbook_coeff(&a, &b, k, &m),
                        "N = 2^{log_n}, coeff {k}"
                    );
                }
            }
            let mut rt = a.clone();
            plan.forward(&mut rt);
            plan.inverse(&mut rt);
            assert_eq!(rt, a);
        }
    }
}

#[test]
fn ntt_accepts_lazy_inputs_up_to_4q() {
    let n = 1024;
    let q = ntt_primes(30, 2048, 1, &[]).unwrap()[0];
    let m = Modulus::new(q).unwrap();
    let plan = NttPlan::new(n, m).unwrap();
    let a: Vec<u32> = (0..n as u32).map(|i| (i * 2654435761) % q).collect();
    let lazy: Vec<u32> = a
        .iter()
        .enumerate()
        .map(|(i, &x)| x + (i as u32 % 4) * q)
        .collect();
    let (mut x, mut y) = (a.clone(), lazy);
    plan.forward(&mut x);
    plan.forward(&mut y);
    assert_eq!(x, y);
    assert!(x.iter().all(|&v| v < q));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn crt_and_base_conversion_roundtrip(vals in proptest::collection::vec(any::<i64>(), 16), k in 1usize..8, to_bits in prop::sample::select(vec![29u32, 25, 20])) {
        let n = vals.len();
        let from: Vec<Modulus> = ntt_primes(30, 1 << 11, k, &[]).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let excl: Vec<u32> = from.iter().map(|m| m.value()).collect();
        // 25- and 20-bit targets take the path for source primes far above the target.
        // Enough target primes to hold every value of the source range.
        let kt = (30 * k as u32).div_ceil(to_bits - 1) as usize + 1;
        let to: Vec<Modulus> = ntt_primes(to_bits, 1 << 11, kt, &excl).unwrap().into_iter().map(|q| Modulus::new(q).unwrap()).collect();
        let bf = RnsBasis::new(&from);
        let bt = RnsBasis::new(&to);
        // Random values of ~30k bits reduced into |x| < Q/4.
        let quarter = BigInt::from(bf.product().clone() >> 2usize);
        let xs: Vec<BigInt> = vals.iter().map(|&v| {
            let mag = BigUint::from(v.unsigned_abs()).pow(k as u32 + 1);
            let r = BigInt::from(mag) % &quarter;
            if v < 0 { -r } else { r }
        }).collect();
        let mut input = vec![0u32; k * n];
        for (c, x) in xs.iter().enumerate() {
            let res = bf.decompose_signed(x);
            prop_assert_eq!(&bf.compose_centered(&res), x);
            for (i, r) in res.into_iter().enumerate() { input[i * n + c] = r; }
        }
        // B -> C exact, then C -> B exact: the same residues come back.
        let mut mid = vec![0u32; kt * n];
        BaseConverter::new(&from, &to).convert(&input, &mut mid, n, true);
        for (c, x) in xs.iter().enumerate() {
            let got: Vec<u32> = (0..kt).map(|j| mid[j * n + c]).collect();
            prop_assert_eq!(bt.compose_centered(&got), x.clone());
        }
        let mut back = vec![0u32; k * n];
        BaseConverter::new(&to, &from).convert(&mid, &mut back, n, true);
        prop_assert_eq!(back, input);
    }
}

/// The hot loops run through an AVX-512 copy where the CPU has one (`math::simd`): both
/// copies return the same words for NTTs of every size the crate takes and for base
/// conversion, and a product through either matches the schoolbook one. (Where the CPU lacks
/// AVX-512 both runs take the AVX2 copy; the test says so.)
#[test]
fn both_vector_widths_return_the_same_words() {
    use hetensor::math::simd;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    if !simd::wide_vectors() {
        eprintln!("this CPU has no AVX-512 (or HETENSOR_SIMD=avx2): both runs take the AVX2 copy");
    }
    let at = |wide: bool, f: &dyn Fn() -> Vec<u32>| {
        simd::set_width(Some(wide));
        let out = f();
        simd::set_width(None);
        out
    };
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    for log_n in [1u32, 2, 3, 4, 5, 9, 13, 16] {
        let n = 1usize << log_n;
        let q = ntt_primes(29, 2 * n as u64, 1, &[]).unwrap()[0];
        let m = Modulus::new(q).unwrap();
        let plan = NttPlan::new(n, m).unwrap();
        // Forward takes lazy input in [0, 4q), inverse in [0, 2q).
        let a: Vec<u32> = (0..n).map(|_| rng.random_range(0..4 * q)).collect();
        let fwd = |wide| {
            at(wide, &|| {
                let mut x = a.clone();
                plan.forward(&mut x);
                x
            })
        };
        assert_eq!(fwd(true), fwd(false), "forward, N = 2^{log_n}");
        let b: Vec<u32> = a.iter().map(|&x| x % (2 * q)).collect();
        let inv = |wide| {
            at(wide, &|| {
                let mut x = b.clone();
                plan.inverse(&mut x);
                x
            })
        };
        assert_eq!(inv(true), inv(false), "inverse, N = 2^{log_n}");
        if log_n == 9 {
            let (x, y): (Vec<u32>, Vec<u32>) = (0..n)
                .map(|_| (rng.random_range(0..q), rng.random_range(0..q)))
                .unzip();
            let want = negacyclic_schoolbook(&x, &y, &m);
            for wide in [false, true] {
                let got = at(wide, &|| {
                    let (mut fx, mut fy) = (x.clone(), y.clone());
                    plan.forward(&mut fx);
                    plan.forward(&mut fy);
                    let mut p: Vec<u32> = fx.iter().zip(&fy).map(|(&u, &v)| m.mul(u, v)).collect();
                    plan.inverse(&mut p);
                    p
                });
                assert_eq!(got, want, "product, wide = {wide}");
            }
        }
    }
    // Base conversion, approximate and exact, 5 sources into 7 targets over a partial block.
    let primes = ntt_primes(30, 1 << 12, 12, &[]).unwrap();
    let ms: Vec<Modulus> = primes.iter().map(|&p| Modulus::new(p).unwrap()).collect();
    let (from, to) = ms.split_at(5);
    let n = 1000;
    let input: Vec<u32> = (0..5 * n)
        .map(|i| rng.random_range(0..from[i / n].value()))
        .collect();
    let conv = BaseConverter::new(from, to);
    for exact in [false, true] {
        let run = |wide| {
            at(wide, &|| {
                let mut out = vec![0u32; to.len() * n];
                conv.convert(&input, &mut out, n, exact);
                out
            })
        };
        assert_eq!(run(true), run(false), "conversion, exact = {exact}");
    }
}
