//! u32 modular arithmetic with Barrett reduction for general products and Shoup's method for
//! products by precomputed constants (twiddles, CRT factors).

use crate::error::{Error, Result};

/// An odd modulus `q < 2^30` with its precomputed reduction constants.
///
/// The 30-bit bound (rather than 31) lets lazy NTT butterflies hold values in `[0, 4q)` in a
/// `u32`, which every backend (WGSL included) can do without wider words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    q: u32,
    /// floor(2^64 / q), for Barrett reduction of any u64.
    barrett: u64,
    /// Bit length k of q, and floor(2^(2k) / q) < 2^31: the 32-bit-lane Barrett constant for
    /// products of reduced operands (vectorizes: every multiply is 32x32->64).
    bits: u32,
    mu32: u32,
    /// 2^32 mod q, for [`Self::reduce_u64_lanes`].
    two32: u32,
}

impl Modulus {
    /// Largest supported bit size of a limb prime.
    pub const MAX_BITS: u32 = 30;

    /// Creates a modulus, rejecting even or out-of-range values.
    pub fn new(q: u32) -> Result<Self> {
        if q < 3 || q.is_multiple_of(2) || q >= (1 << Self::MAX_BITS) {
            return Err(Error::InvalidParameters(format!(
                "modulus {q} must be odd and in [3, 2^{})",
                Self::MAX_BITS
            )));
        }
        let bits = 32 - q.leading_zeros();
        Ok(Self {
            q,
            barrett: u64::MAX / q as u64,
            bits,
            mu32: ((1u64 << (2 * bits)) / q as u64) as u32,
            two32: ((1u64 << 32) % q as u64) as u32,
        })
    }

    /// The modulus value.
    #[inline(always)]
    pub fn value(&self) -> u32 {
        self.q
    }

    /// Barrett constant floor(2^64/q) (exposed for device tables).
    #[inline(always)]
    pub fn barrett_constant(&self) -> u64 {
        self.barrett
    }

    /// The 32-bit-lane Barrett constants `(k, floor(2^(2k)/q))` of [`Self::mul_add_reduced`]
    /// (exposed for device tables).
    #[inline(always)]
    pub fn barrett32(&self) -> (u32, u32) {
        (self.bits, self.mu32)
    }

    /// `a + b mod q` for `a, b < q`.
    #[inline(always)]
    pub fn add(&self, a: u32, b: u32) -> u32 {
        let s = a + b;
        if s >= self.q {
            s - self.q
        } else {
            s
        }
    }

    /// `a - b mod q` for `a, b < q`.
    #[inline(always)]
    pub fn sub(&self, a: u32, b: u32) -> u32 {
        if a >= b {
            a - b
        } else {
            a + self.q - b
        }
    }

    /// `-a mod q` for `a < q`.
    #[inline(always)]
    pub fn neg(&self, a: u32) -> u32 {
        if a == 0 {
            0
        } else {
            self.q - a
        }
    }

    /// Reduces any u64 into `[0, q)` (Barrett).
    #[inline(always)]
    pub fn reduce_u64(&self, x: u64) -> u32 {
        let qhat = ((x as u128 * self.barrett as u128) >> 64) as u64;
        let mut r = x.wrapping_sub(qhat.wrapping_mul(self.q as u64));
        // r < 2q holds for floor(2^64/q) (one correction suffices; two kept for x near 2^64).
        while r >= self.q as u64 {
            r -= self.q as u64;
        }
        r as u32
    }

    /// Whether [`Self::reduce_u64_lanes`] applies: `q ≥ 2^15`, so that a 32-bit half of a word
    /// is below `2^(2k)`.
    #[inline(always)]
    pub fn lanes_reduce_u64(&self) -> bool {
        self.bits >= 16
    }

    /// Reduces any u64 into `[0, q)` as `[hi]·2^32 + [lo]` with three 32-bit-lane Barrett
    /// steps: unlike [`Self::reduce_u64`]'s 128-bit product, it vectorizes. Needs
    /// [`Self::lanes_reduce_u64`].
    #[inline(always)]
    pub fn reduce_u64_lanes(&self, x: u64) -> u32 {
        debug_assert!(self.lanes_reduce_u64());
        let hi = self.mul_add_reduced((x >> 32) as u32, 1, 0);
        let lo = self.mul_add_reduced(x as u32, 1, 0);
        self.mul_add_reduced(hi, self.two32, lo)
    }

    /// `a·b + c mod q` for `a, b, c < q`, with 32-bit-lane Barrett reduction (HAC 14.42):
    /// the estimate is at most 2 below the true quotient, so two conditional subtractions.
    /// Correct whenever `a·b + c < 2^(2k)` (k = bit length of q), e.g. `(x, 1, 0)` reduces any
    /// `x < 2^(2k)`.
    #[inline(always)]
    pub fn mul_add_reduced(&self, a: u32, b: u32, c: u32) -> u32 {
        let x = a as u64 * b as u64 + c as u64;
        let q1 = (x >> (self.bits - 1)) as u32;
        let q3 = ((q1 as u64 * self.mu32 as u64) >> (self.bits + 1)) as u32;
        let r = (x as u32).wrapping_sub(q3.wrapping_mul(self.q));
        let r = r.min(r.wrapping_sub(self.q));
        r.min(r.wrapping_sub(self.q))
    }

    /// `a·b mod q` for `a, b < q` (vectorizable Barrett, see [`Self::mul_add_reduced`]).
    #[inline(always)]
    pub fn mul_reduced(&self, a: u32, b: u32) -> u32 {
        self.mul_add_reduced(a, b, 0)
    }

    /// Reduces a signed value into `[0, q)`.
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u32 {
        if x >= 0 {
            self.reduce_u64(x as u64)
        } else {
            self.neg(self.reduce_u64(x.unsigned_abs()))
        }
    }

    /// `a * b mod q` for `a, b < 2^32` (Barrett).
    #[inline(always)]
    pub fn mul(&self, a: u32, b: u32) -> u32 {
        self.reduce_u64(a as u64 * b as u64)
    }

    /// Shoup's precomputed companion of a constant `w < q`: floor(w * 2^32 / q).
    #[inline(always)]
    pub fn shoup(&self, w: u32) -> u32 {
        debug_assert!(w < self.q);
        (((w as u64) << 32) / self.q as u64) as u32
    }

    /// `a * w mod q` in `[0, 2q)` for any `a < 2^32`, given `w_shoup = shoup(w)`.
    #[inline(always)]
    pub fn mul_shoup_lazy(&self, a: u32, w: u32, w_shoup: u32) -> u32 {
        let qhat = ((a as u64 * w_shoup as u64) >> 32) as u32;
        a.wrapping_mul(w).wrapping_sub(qhat.wrapping_mul(self.q))
    }

    /// `a * w mod q` in `[0, q)` for any `a < 2^32`, given `w_shoup = shoup(w)`.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u32, w: u32, w_shoup: u32) -> u32 {
        let r = self.mul_shoup_lazy(a, w, w_shoup);
        if r >= self.q {
            r - self.q
        } else {
            r
        }
    }

    /// `a^e mod q`.
    pub fn pow(&self, a: u32, mut e: u64) -> u32 {
        let mut base = a % self.q;
        let mut acc = 1u32;
        while e > 0 {
            if e & 1 == 1 {
                acc = self.mul(acc, base);
            }
            base = self.mul(base, base);
            e >>= 1;
        }
        acc
    }

    /// `a^{-1} mod q` (q prime), or `None` for `a ≡ 0`.
    pub fn inv(&self, a: u32) -> Option<u32> {
        let a = a % self.q;
        if a == 0 {
            None
        } else {
            Some(self.pow(a, self.q as u64 - 2))
        }
    }

    /// Centered lift of `a < q` to `(-q/2, q/2]`.
    #[inline(always)]
    pub fn center(&self, a: u32) -> i64 {
        if a > self.q / 2 {
            a as i64 - self.q as i64
        } else {
            a as i64
        }
    }
}

/// `a * b mod m` for 64-bit moduli (host-side plaintext arithmetic).
#[inline(always)]
pub fn mul_mod_u64(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

/// `a^e mod m` for 64-bit moduli.
pub fn pow_mod_u64(a: u64, mut e: u64, m: u64) -> u64 {
    let mut base = a % m;
    let mut acc = 1 % m;
    while e > 0 {
        if e & 1 == 1 {
            acc = mul_mod_u64(acc, base, m);
        }
        base = mul_mod_u64(base, base, m);
        e >>= 1;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ops_match_u128(a in any::<u32>(), b in any::<u32>(), qi in 0usize..4) {
            let qs = [3u32, 65537, 1_073_479_681, 998_244_353];
            let m = Modulus::new(qs[qi]).unwrap();
            let q = qs[qi] as u64;
            prop_assert_eq!(m.mul(a, b) as u64, (a as u64 * b as u64) % q);
            let c = (a ^ b) % qs[qi];
            prop_assert_eq!(m.mul_add_reduced(a % qs[qi], b % qs[qi], c) as u64, ((a as u64 % q) * (b as u64 % q) + c as u64) % q);
            prop_assert_eq!(m.mul_reduced(qs[qi] - 1, qs[qi] - 1) as u64, ((q - 1) * (q - 1)) % q);
            let (ra, rb) = (a % qs[qi], b % qs[qi]);
            prop_assert_eq!(m.add(ra, rb) as u64, (ra as u64 + rb as u64) % q);
            prop_assert_eq!(m.sub(ra, rb) as u64, (ra as u64 + q - rb as u64) % q);
            let ws = m.shoup(rb);
            prop_assert_eq!(m.mul_shoup(a, rb, ws) as u64, (a as u64 * rb as u64) % q);
            let lazy = m.mul_shoup_lazy(a, rb, ws) as u64;
            prop_assert!(lazy < 2 * q);
            prop_assert_eq!(lazy % q, (a as u64 * rb as u64) % q);
        }

        #[test]
        fn reduce_any_u64(x in any::<u64>()) {
            let m = Modulus::new(1_073_479_681).unwrap();
            prop_assert_eq!(m.reduce_u64(x) as u64, x % 1_073_479_681);
        }
    }

    #[test]
    fn rejects_bad_moduli() {
        assert!(Modulus::new(2).is_err());
        assert!(Modulus::new(1 << 30).is_err());
        assert!(Modulus::new(1_073_741_827).is_err());
        assert!(Modulus::new(65536).is_err());
    }
}
