//! CKKS parameter sets: a base prime, one scale prime per level, and special primes.

use crate::error::{Error, Result};
use crate::math::primes::{ntt_primes, ntt_primes_near};
use crate::rlwe::{RlweParams, Security};

/// What a CKKS context is built from.
#[derive(Clone, Debug)]
pub struct CkksParams {
    /// The underlying RLWE parameters.
    pub rlwe: RlweParams,
    /// log2 of the default scale Δ (each scale prime is close to 2^scale_bits).
    pub scale_bits: u32,
}

impl CkksParams {
    /// Builds a chain for `levels` rescalings: a `base_bits`-bit prime `q_0` (the precision
    /// headroom left at level 0 is `base_bits − scale_bits` bits), `levels` primes near
    /// `2^scale_bits`, and `ceil((levels+1)/dnum)` special 30-bit primes.
    pub fn new(
        log_n: u32,
        levels: usize,
        scale_bits: u32,
        base_bits: u32,
        dnum: usize,
        security: Security,
    ) -> Result<Self> {
        if !(10..=16).contains(&log_n) {
            return Err(Error::InvalidParameters(format!(
                "log2 N = {log_n} outside 10..=16"
            )));
        }
        if base_bits <= scale_bits || base_bits > 30 {
            return Err(Error::InvalidParameters(format!(
                "base prime bits {base_bits} must exceed the scale bits {scale_bits} and be at most 30"
            )));
        }
        let n = 1usize << log_n;
        let step = 2 * n as u64;
        let dnum = dnum.clamp(1, levels + 1);
        let alpha = (levels + 1).div_ceil(dnum);
        let special = ntt_primes(30, step, alpha, &[])?;
        let base = ntt_primes(base_bits, step, 1, &special)?;
        let mut excl = special.clone();
        excl.extend(&base);
        let scale_primes = ntt_primes_near(scale_bits, step, levels, &excl)?;
        let mut q = base;
        q.extend(scale_primes);
        let rlwe = RlweParams::new(n, q, special, vec![], dnum, security)?;
        Ok(Self { rlwe, scale_bits })
    }

    /// 128-bit preset for N = 2^`log_n`: the deepest chain (30-bit base prime, dnum = 3) that
    /// fits the HE-standard bound at the given scale.
    pub fn preset(log_n: u32, scale_bits: u32) -> Result<Self> {
        let max =
            crate::rlwe::params::max_log_qp_128(1usize << log_n.min(20)).ok_or_else(|| {
                Error::InvalidParameters(format!(
                    "no CKKS preset for log2 N = {log_n} (supported: 10..=16)"
                ))
            })?;
        let dnum = 3;
        let estimate = |l: usize| 30 + l * scale_bits as usize + (l + 1).div_ceil(dnum) * 30;
        let mut levels = (1..200)
            .take_while(|&l| estimate(l) <= max as usize)
            .last()
            .unwrap_or(0);
        loop {
            if levels == 0 {
                return Err(Error::InvalidParameters(format!(
                    "no level fits N = 2^{log_n} at scale 2^{scale_bits} with 128-bit security"
                )));
            }
            match Self::new(log_n, levels, scale_bits, 30, dnum, Security::Bits128) {
                Err(Error::InsecureParameters { .. }) => levels -= 1,
                other => return other,
            }
        }
    }

    /// Ring degree.
    pub fn n(&self) -> usize {
        self.rlwe.n()
    }

    /// Number of rescalings available.
    pub fn levels(&self) -> usize {
        self.rlwe.max_level()
    }
}
