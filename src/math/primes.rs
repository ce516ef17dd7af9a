//! NTT-friendly primes: `q ≡ 1 (mod 2N)`, so that `Z_q` has the primitive 2N-th roots of unity
//! a negacyclic NTT of length N needs.

use crate::error::{Error, Result};
use crate::math::modular::{mul_mod_u64, pow_mod_u64};

/// Deterministic Miller-Rabin for all `u64`.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let mut d = n - 1;
    let mut s = 0;
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = pow_mod_u64(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod_u64(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// `count` distinct primes `q ≡ 1 (mod modulus_step)` of exactly `bits` bits, largest first,
/// skipping those in `exclude`.
pub fn ntt_primes(bits: u32, modulus_step: u64, count: usize, exclude: &[u32]) -> Result<Vec<u32>> {
    if !(10..=30).contains(&bits) {
        return Err(Error::InvalidParameters(format!(
            "prime size {bits} bits is outside the supported 10..=30"
        )));
    }
    let lo = 1u64 << (bits - 1);
    let hi = 1u64 << bits;
    let mut out = Vec::with_capacity(count);
    // Largest candidate < 2^bits with candidate ≡ 1 mod step.
    let mut c = ((hi - 1) / modulus_step) * modulus_step + 1;
    while out.len() < count {
        if c >= hi {
            c = c.saturating_sub(modulus_step);
            continue;
        }
        if c <= lo {
            return Err(Error::InvalidParameters(format!(
                "only {} primes of {bits} bits are ≡ 1 mod {modulus_step}; {count} requested",
                out.len()
            )));
        }
        if is_prime(c) && !exclude.contains(&(c as u32)) {
            out.push(c as u32);
        }
        c -= modulus_step;
    }
    Ok(out)
}

/// Up to `count` primes `≡ 1 (mod step)` as close as possible to `2^target_log`, alternately just
/// above and just below it, so that a product of consecutive primes stays near a power of two
/// (CKKS rescaling divides by these primes and wants the scale to stay put).
pub fn ntt_primes_near(
    target_log: u32,
    step: u64,
    count: usize,
    exclude: &[u32],
) -> Result<Vec<u32>> {
    if !(11..=29).contains(&target_log) {
        return Err(Error::InvalidParameters(format!(
            "scale primes near 2^{target_log} are outside the supported 2^11..2^29"
        )));
    }
    let center = 1u64 << target_log;
    let mut up = (center / step) * step + 1;
    if up < center {
        up += step;
    }
    let mut down = up - step;
    let mut out = Vec::with_capacity(count);
    let mut take_up = true;
    let limit = 1u64 << 30;
    while out.len() < count {
        if take_up {
            while up < limit
                && (!is_prime(up) || exclude.contains(&(up as u32)) || out.contains(&(up as u32)))
            {
                up += step;
            }
            if up >= limit {
                return Err(Error::InvalidParameters("ran out of NTT primes".into()));
            }
            out.push(up as u32);
            up += step;
        } else {
            while down > step
                && (!is_prime(down)
                    || exclude.contains(&(down as u32))
                    || out.contains(&(down as u32)))
            {
                down -= step;
            }
            if down <= step {
                return Err(Error::InvalidParameters("ran out of NTT primes".into()));
            }
            out.push(down as u32);
            down -= step;
        }
        take_up = !take_up;
    }
    Ok(out)
}

/// Smallest-generator primitive `order`-th root of unity mod prime `q` (order a power of two
/// dividing q-1). Deterministic, so every backend and every run derives the same tables.
pub fn primitive_root_of_unity(q: u64, order: u64) -> Result<u64> {
    if order == 0 || !(q - 1).is_multiple_of(order) || !order.is_power_of_two() {
        return Err(Error::InvalidParameters(format!(
            "{q} has no primitive {order}-th root of unity"
        )));
    }
    for g in 2..q {
        let r = pow_mod_u64(g, (q - 1) / order, q);
        if pow_mod_u64(r, order / 2, q) == q - 1 {
            return Ok(r);
        }
    }
    Err(Error::InvalidParameters(format!(
        "no root of unity found mod {q}"
    )))
}

/// A prime plaintext modulus `t ≡ 1 (mod 2N)` with `bits` bits (up to 60), for BFV batching.
pub fn batching_prime(bits: u32, n: usize, exclude: &[u64]) -> Result<u64> {
    if !(14..=60).contains(&bits) {
        return Err(Error::InvalidParameters(format!(
            "plaintext modulus of {bits} bits is outside 14..=60"
        )));
    }
    let step = 2 * n as u64;
    let hi = 1u64 << bits;
    let mut c = ((hi - 1) / step) * step + 1;
    while c > (1u64 << (bits - 1)) {
        if is_prime(c) && !exclude.contains(&c) {
            return Ok(c);
        }
        c -= step;
    }
    Err(Error::InvalidParameters(format!(
        "no {bits}-bit prime ≡ 1 mod {step}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_are_ntt_friendly() {
        for log_n in [10u32, 13, 16] {
            let step = 2u64 << log_n;
            let ps = ntt_primes(30, step, 5, &[]).unwrap();
            for &p in &ps {
                assert!(is_prime(p as u64));
                assert_eq!((p as u64 - 1) % step, 0);
                assert!(p < (1 << 30) && p > (1 << 29));
            }
            let near = ntt_primes_near(25, step, 4, &ps).unwrap();
            for &p in &near {
                assert!(is_prime(p as u64) && (p as u64 - 1).is_multiple_of(step));
                assert!(!ps.contains(&p));
            }
        }
        assert!(is_prime(1_152_921_504_606_584_833));
        assert!(!is_prime(561));
    }

    #[test]
    fn root_of_unity_has_exact_order() {
        let q = ntt_primes(30, 1 << 14, 1, &[]).unwrap()[0] as u64;
        let r = primitive_root_of_unity(q, 1 << 14).unwrap();
        assert_eq!(pow_mod_u64(r, 1 << 14, q), 1);
        assert_eq!(pow_mod_u64(r, 1 << 13, q), q - 1);
    }
}
