//! Negacyclic NTT modulo a 64-bit prime `t < 2^62`, for BFV batch encoding on the host.
//!
//! Ciphertext arithmetic never touches this: only encoding and decoding of plaintext slots.
//! Same ordering convention as [`crate::math::ntt::NttPlan`]: bit-reversed evaluations.

use crate::error::{Error, Result};
use crate::math::modular::{mul_mod_u64, pow_mod_u64};
use crate::math::ntt::bit_reverse;
use crate::math::primes::{is_prime, primitive_root_of_unity};

/// Tables for the plaintext-modulus NTT.
#[derive(Clone, Debug)]
pub struct NttPlan64 {
    n: usize,
    t: u64,
    psi_rev: Vec<(u64, u64)>,
    ipsi_rev: Vec<(u64, u64)>,
    n_inv: (u64, u64),
}

#[inline(always)]
fn shoup64(w: u64, t: u64) -> u64 {
    (((w as u128) << 64) / t as u128) as u64
}

#[inline(always)]
fn mul_shoup64(a: u64, (w, ws): (u64, u64), t: u64) -> u64 {
    let qhat = ((a as u128 * ws as u128) >> 64) as u64;
    let r = a.wrapping_mul(w).wrapping_sub(qhat.wrapping_mul(t));
    if r >= t {
        r - t
    } else {
        r
    }
}

impl NttPlan64 {
    /// Builds the plan; `t` must be a prime ≡ 1 (mod 2n), below 2^62.
    pub fn new(n: usize, t: u64) -> Result<Self> {
        if t >= (1 << 62) || !is_prime(t) || !(t - 1).is_multiple_of(2 * n as u64) {
            return Err(Error::InvalidParameters(format!(
                "plaintext modulus {t} must be a prime ≡ 1 mod {} below 2^62 for batching",
                2 * n
            )));
        }
        let psi = primitive_root_of_unity(t, 2 * n as u64)?;
        let psi_inv = pow_mod_u64(psi, t - 2, t);
        let log_n = n.trailing_zeros();
        let mut psi_rev = vec![(0, 0); n];
        let mut ipsi_rev = vec![(0, 0); n];
        let (mut p, mut ip) = (1u64, 1u64);
        let mut pows = vec![(0u64, 0u64); n];
        for pw in pows.iter_mut() {
            *pw = (p, ip);
            p = mul_mod_u64(p, psi, t);
            ip = mul_mod_u64(ip, psi_inv, t);
        }
        for k in 0..n {
            let (a, b) = pows[bit_reverse(k, log_n)];
            psi_rev[k] = (a, shoup64(a, t));
            ipsi_rev[k] = (b, shoup64(b, t));
        }
        let ni = pow_mod_u64(n as u64 % t, t - 2, t);
        Ok(Self {
            n,
            t,
            psi_rev,
            ipsi_rev,
            n_inv: (ni, shoup64(ni, t)),
        })
    }

    /// The plaintext modulus.
    pub fn modulus(&self) -> u64 {
        self.t
    }

    /// Forward transform (coefficients → bit-reversed evaluations), inputs in `[0, t)`.
    pub fn forward(&self, a: &mut [u64]) {
        let t = self.t;
        let mut len = self.n;
        let mut m = 1;
        while m < self.n {
            len >>= 1;
            for i in 0..m {
                let w = self.psi_rev[m + i];
                let (x, y) = a[2 * i * len..2 * (i + 1) * len].split_at_mut(len);
                for (xj, yj) in x.iter_mut().zip(y.iter_mut()) {
                    let u = *xj;
                    let v = mul_shoup64(*yj, w, t);
                    let s = u + v;
                    *xj = if s >= t { s - t } else { s };
                    *yj = if u >= v { u - v } else { u + t - v };
                }
            }
            m <<= 1;
        }
    }

    /// Inverse transform (bit-reversed evaluations → coefficients).
    pub fn inverse(&self, a: &mut [u64]) {
        let t = self.t;
        let mut len = 1;
        let mut m = self.n;
        while m > 1 {
            let h = m >> 1;
            for i in 0..h {
                let w = self.ipsi_rev[h + i];
                let (x, y) = a[2 * i * len..2 * (i + 1) * len].split_at_mut(len);
                for (xj, yj) in x.iter_mut().zip(y.iter_mut()) {
                    let (u, v) = (*xj, *yj);
                    let s = u + v;
                    *xj = if s >= t { s - t } else { s };
                    *yj = mul_shoup64(if u >= v { u - v } else { u + t - v }, w, t);
                }
            }
            len <<= 1;
            m = h;
        }
        for x in a.iter_mut() {
            *x = mul_shoup64(*x, self.n_inv, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::batching_prime;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn roundtrip_and_convolution_60_bit() {
        let n = 64;
        let t = batching_prime(60, n, &[]).unwrap();
        let plan = NttPlan64::new(n, t).unwrap();
        let a: Vec<u64> = (0..n as u64)
            .map(|i| (i * 0x1234_5678_9abc + 7) % t)
            .collect();
        let b: Vec<u64> = (0..n as u64)
            .map(|i| (i * i * 0x0fed_cba9 + 3) % t)
            .collect();
        // schoolbook negacyclic reference
        let mut want = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = mul_mod_u64(a[i], b[j], t);
                let k = (i + j) % n;
                want[k] = if i + j < n {
                    (want[k] + p) % t
                } else {
                    (want[k] + t - p) % t
                };
            }
        }
        let (mut fa, mut fb) = (a.clone(), b.clone());
        plan.forward(&mut fa);
        plan.forward(&mut fb);
        let mut prod: Vec<u64> = fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| mul_mod_u64(*x, *y, t))
            .collect();
        plan.inverse(&mut prod);
        assert_eq!(prod, want);
        plan.inverse(&mut fa);
        assert_eq!(fa, a);
    }
}
