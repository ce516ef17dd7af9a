//! BFV parameter sets: a batching plaintext modulus `t`, 30-bit ciphertext and special primes,
//! and the auxiliary basis that multiplication extends into.

use crate::error::{Error, Result};
use crate::math::primes::{batching_prime, is_prime, ntt_primes};
use crate::rlwe::params::max_log_qp_128;
use crate::rlwe::{RlweParams, Security};

/// Largest supported plaintext modulus, in bits.
pub const MAX_PLAIN_BITS: u32 = 60;

/// Extra bits the auxiliary basis keeps above the worst-case size of `t·(c ⊗ c')/Q`, so that
/// the exact (centered) base conversions of the product never meet their rounding boundary.
const AUX_MARGIN_BITS: f64 = 4.0;

/// How the plaintext modulus is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlainModulus {
    /// The largest batching prime (`t ≡ 1 mod 2N`) of exactly this many bits (14..=60).
    Bits(u32),
    /// This exact prime, which must be `≡ 1 (mod 2N)` and below 2^60.
    Prime(u64),
}

/// Everything a [`crate::bfv::BfvContext`] is built from: the RLWE parameters (with the auxiliary
/// primes for multiplication) and the plaintext modulus.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BfvParams {
    /// The ring, prime chains, dnum and security setting.
    pub(crate) rlwe: RlweParams,
    /// The plaintext modulus `t` (a prime ≡ 1 mod 2N, so that N slots are available).
    pub(crate) plain_modulus: u64,
}

/// `(ciphertext primes, dnum)` of the 128-bit presets: the most ciphertext primes that fit the
/// HE-standard bound together with their `ceil(L+1 / dnum)` special primes, with dnum kept small
/// (6 or 9) so that key-switching keys stay a few digits long. 30-bit primes, so log2 Q ≈ 30·L.
fn preset_shape(log_n: u32) -> Option<(usize, usize)> {
    match log_n {
        // 6 + 1 = 7 primes ≈ 210 bits ≤ 218
        13 => Some((6, 6)),
        // 12 + 2 = 14 primes ≈ 420 bits ≤ 438
        14 => Some((12, 6)),
        // 26 + 3 = 29 primes ≈ 870 bits ≤ 881
        15 => Some((26, 9)),
        // 50 + 9 = 59 primes ≈ 1770 bits ≤ 1770
        16 => Some((50, 6)),
        _ => None,
    }
}

/// Resolves and validates the plaintext modulus for ring degree `n`.
pub(crate) fn resolve_plain_modulus(plain: PlainModulus, n: usize, exclude: &[u64]) -> Result<u64> {
    match plain {
        PlainModulus::Bits(bits) => {
            if bits > MAX_PLAIN_BITS {
                return Err(Error::InvalidParameters(format!(
                    "plaintext modulus of {bits} bits exceeds the supported {MAX_PLAIN_BITS}; use several \
                     moduli with `BfvCrt` for larger integers"
                )));
            }
            batching_prime(bits, n, exclude)
        }
        PlainModulus::Prime(t) => {
            if t >= 1 << MAX_PLAIN_BITS || !is_prime(t) || (t - 1) % (2 * n as u64) != 0 {
                return Err(Error::InvalidParameters(format!(
                    "plaintext modulus {t} must be a prime ≡ 1 mod 2N = {} below 2^{MAX_PLAIN_BITS} so that \
                     the batch encoder has N slots; `PlainModulus::Bits(b)` picks one",
                    2 * n
                )));
            }
            Ok(t)
        }
    }
}

/// log2 of the auxiliary basis BFV multiplication needs for a ciphertext modulus of `log_q` bits:
/// the tensor `d = c ⊗ c'` of centered ciphertexts has `|d| ≤ N·Q²/2`, and `round(t·d/Q)`, of size
/// up to `t·N·Q/2`, must be represented (centered) in the auxiliary basis B.
pub(crate) fn aux_bits_needed(log_q: f64, n: usize, t: u64) -> f64 {
    log_q + (n as f64).log2() + (t as f64).log2() + AUX_MARGIN_BITS
}

/// Builds the RLWE parameters for BFV with every plaintext modulus in `ts` usable: `q_count`
/// 30-bit ciphertext primes, `ceil(q_count/dnum)` special primes, and auxiliary primes for the
/// largest `t`. Primes equal to a plaintext modulus are skipped.
pub(crate) fn rlwe_for_bfv(
    n: usize,
    ts: &[u64],
    q_count: usize,
    dnum: usize,
    security: Security,
) -> Result<RlweParams> {
    if q_count == 0 {
        return Err(Error::InvalidParameters(
            "BFV needs at least one ciphertext prime".into(),
        ));
    }
    if dnum == 0 || dnum > q_count {
        return Err(Error::InvalidParameters(format!(
            "dnum = {dnum} must be in 1..={q_count} (the number of ciphertext primes)"
        )));
    }
    let step = 2 * n as u64;
    let mut exclude: Vec<u32> = ts
        .iter()
        .filter(|&&t| t < 1 << 30)
        .map(|&t| t as u32)
        .collect();
    let q = ntt_primes(30, step, q_count, &exclude)?;
    exclude.extend(&q);
    let p = ntt_primes(30, step, q_count.div_ceil(dnum), &exclude)?;
    exclude.extend(&p);
    let log_q: f64 = q.iter().map(|&x| (x as f64).log2()).sum();
    let t_max = ts.iter().copied().max().unwrap_or(2);
    let need = aux_bits_needed(log_q, n, t_max);
    let candidates = ntt_primes(30, step, (need / 29.0).ceil() as usize + 1, &exclude)?;
    let mut aux = Vec::new();
    let mut have = 0.0;
    for c in candidates {
        if have >= need {
            break;
        }
        have += (c as f64).log2();
        aux.push(c);
    }
    RlweParams::new(n, q, p, aux, dnum, security)
}

/// An explicit BFV chain, what [`BfvParams::from_chain`] builds: `primes` 30-bit ciphertext
/// primes (the depth grows with them), `ceil(primes / dnum)` 30-bit special primes for hybrid
/// key switching over `dnum` digits, and the auxiliary primes multiplication needs. The BFV
/// counterpart of [`crate::ckks::SinglePrimeChain`]; `..Default::default()` fills in the
/// N = 2^13 preset's chain (6 primes, 6 digits, a 20-bit `t`, 128-bit security).
///
/// ```
/// use hetensor::bfv::{BfvChain, BfvParams, PlainModulus};
/// # fn main() -> hetensor::Result<()> {
/// let p = BfvParams::from_chain(BfvChain { log_n: 14, primes: 8, dnum: 4, ..Default::default() })?;
/// assert_eq!((p.n(), p.rlwe().q_primes().len()), (1 << 14, 8));
/// // Too many primes for N = 2^13 at 128 bits: a typed error that says the bound.
/// let err = BfvParams::from_chain(BfvChain { primes: 8, dnum: 8, ..Default::default() });
/// assert!(matches!(err, Err(hetensor::Error::InsecureParameters { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BfvChain {
    /// log2 N, 10 to 16.
    pub log_n: u32,
    /// The plaintext modulus.
    pub plain: PlainModulus,
    /// Number of 30-bit ciphertext primes.
    pub primes: usize,
    /// Key-switching digits (1..=primes).
    pub dnum: usize,
    /// Security requirement; [`Security::InsecureForTestingOnly`] skips the HE-standard check
    /// (tests only).
    pub security: Security,
}

impl Default for BfvChain {
    /// The N = 2^13 preset's chain: 6 primes, 6 digits, the largest 20-bit `t`, 128-bit.
    fn default() -> Self {
        Self {
            log_n: 13,
            plain: PlainModulus::Bits(20),
            primes: 6,
            dnum: 6,
            security: Security::Bits128,
        }
    }
}

impl BfvParams {
    /// Parameters for an explicit chain ([`BfvChain`]); for parameters chosen from what a
    /// computation needs use [`Self::builder`], for the 128-bit presets [`Self::preset`].
    pub fn from_chain(chain: BfvChain) -> Result<Self> {
        let BfvChain {
            log_n,
            plain,
            primes,
            dnum,
            security,
        } = chain;
        if !(10..=16).contains(&log_n) {
            return Err(Error::InvalidParameters(format!(
                "log2 N = {log_n} outside the supported 10..=16"
            )));
        }
        let n = 1usize << log_n;
        let t = resolve_plain_modulus(plain, n, &[])?;
        let rlwe = rlwe_for_bfv(n, &[t], primes, dnum, security)?;
        let me = Self {
            rlwe,
            plain_modulus: t,
        };
        me.check_budget()?;
        Ok(me)
    }

    /// The 128-bit preset for N = 2^`log_n` (13..=16): 6/12/26/50 ciphertext primes with
    /// dnum = 6/6/9/6 (log2 QP = 210/420/870/1767 of the allowed 218/438/881/1770). With a
    /// 20-bit `t` that allows 4 (2^13), 9 (2^14) and 21 (2^15) sequential multiplications
    /// (measured with public-key encryption; about 40 at 2^16 by extrapolation). Each extra bit
    /// of `t` costs one bit of fresh budget and about one more bit per multiplication.
    pub fn preset(log_n: u32, plain: PlainModulus) -> Result<Self> {
        let (q_count, dnum) = preset_shape(log_n).ok_or_else(|| {
            Error::InvalidParameters(format!(
                "no BFV preset for log2 N = {log_n} (presets: 13..=16)"
            ))
        })?;
        let me = Self::from_chain(BfvChain {
            log_n,
            plain,
            primes: q_count,
            dnum,
            security: Security::Bits128,
        })?;
        debug_assert!(me.rlwe.log_qp() <= max_log_qp_128(me.rlwe.n()).unwrap_or(0) as f64);
        Ok(me)
    }

    /// Picks parameters from what a computation needs (plaintext modulus, multiplicative
    /// depth, slots), as [`crate::ckks::CkksParams::builder`] does for CKKS: the smallest
    /// 128-bit preset ring whose noise estimate still decrypts after `depth` sequential
    /// products, or an error that says what would fit.
    ///
    /// ```
    /// use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
    /// # fn main() -> hetensor::Result<()> {
    /// let params = BfvParams::builder().plain_modulus(PlainModulus::Bits(20)).depth(6).build()?;
    /// assert_eq!(params.n(), 1 << 14); // 2^13 holds 4 products of a 20-bit t, 2^14 holds 9
    /// let ctx = BfvContext::new(params)?;
    /// let keys = ctx.keygen()?;
    /// let x = ctx.encrypt(&ctx.encode_signed(&[3, -2])?, &keys.public)?;
    /// let y = ctx.multiply_relin(&x, &x, &keys.relin)?;
    /// assert_eq!(&ctx.decode_signed(&ctx.decrypt(&y, &keys.secret)?)?[..2], &[9, 4]);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> BfvParamsBuilder {
        BfvParamsBuilder::default()
    }

    /// Rejects a plaintext modulus that leaves no room for noise.
    pub(crate) fn check_budget(&self) -> Result<()> {
        let log_t = (self.plain_modulus as f64).log2();
        let log_q = self.rlwe.log_q();
        // A fresh ciphertext's noise is ~2^(log2 N / 2 + 5); below that nothing decrypts.
        let floor = log_t + (self.rlwe.n() as f64).log2() / 2.0 + 8.0;
        if log_q < floor {
            return Err(Error::InvalidParameters(format!(
                "log2 Q = {log_q:.1} leaves no noise budget for a {log_t:.1}-bit plaintext modulus; use more \
                 ciphertext primes or a smaller t"
            )));
        }
        Ok(())
    }

    /// Ring degree N (also the number of slots).
    pub fn n(&self) -> usize {
        self.rlwe.n()
    }

    /// The underlying RLWE parameters: ring, primes, digits, security.
    pub fn rlwe(&self) -> &RlweParams {
        &self.rlwe
    }

    /// The plaintext modulus t.
    pub fn plain_modulus(&self) -> u64 {
        self.plain_modulus
    }
}

/// Builds [`BfvParams`] from intent; see [`BfvParams::builder`].
#[derive(Clone, Debug)]
pub struct BfvParamsBuilder {
    plain: PlainModulus,
    depth: usize,
    slots: Option<usize>,
    log_n: Option<u32>,
    chain: Option<(usize, usize)>,
    security: Security,
}

impl Default for BfvParamsBuilder {
    fn default() -> Self {
        Self {
            plain: PlainModulus::Bits(20),
            depth: 1,
            slots: None,
            log_n: None,
            chain: None,
            security: Security::Bits128,
        }
    }
}

impl BfvParamsBuilder {
    /// The plaintext modulus (default: the largest 20-bit batching prime).
    pub fn plain_modulus(mut self, plain: PlainModulus) -> Self {
        self.plain = plain;
        self
    }

    /// Sequential ciphertext products (each relinearized) the result must survive
    /// (default 1), judged by the noise estimate on fresh public-key encryptions.
    pub fn depth(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }

    /// At least this many slots (N ≥ slots).
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Fixes N = 2^log_n instead of choosing the smallest that fits.
    pub fn log_n(mut self, log_n: u32) -> Self {
        self.log_n = Some(log_n);
        self
    }

    /// Fixes the chain: `q_count` 30-bit ciphertext primes and `dnum` key-switching digits
    /// (default: the ring's 128-bit preset, the longest chain the bound allows).
    pub fn chain(mut self, q_count: usize, dnum: usize) -> Self {
        self.chain = Some((q_count, dnum));
        self
    }

    /// Security requirement (default 128-bit).
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The parameters, or why none fit.
    pub fn build(&self) -> Result<BfvParams> {
        if self.depth > 200 {
            return Err(Error::InvalidParameters(format!(
                "depth {} outside 0..=200",
                self.depth
            )));
        }
        let min_log_n = self
            .slots
            .map(|s| s.max(1).next_power_of_two().trailing_zeros())
            .unwrap_or(0)
            .max(if self.chain.is_some() { 10 } else { 13 });
        let candidates: Vec<u32> = match self.log_n {
            Some(l) if l < min_log_n => {
                return Err(Error::InvalidParameters(format!(
                    "N = 2^{l} is below what is asked (N ≥ 2^{min_log_n}: {} slots{})",
                    self.slots.unwrap_or(0),
                    if self.chain.is_none() {
                        ", presets from 2^13"
                    } else {
                        ""
                    }
                )))
            }
            Some(l) => vec![l],
            None => (min_log_n..=16).collect(),
        };
        let mut deepest: Option<(u32, usize)> = None;
        let mut last_err = None;
        for &log_n in &candidates {
            match self.build_at(log_n) {
                Ok((p, capacity)) if capacity >= self.depth => return Ok(p),
                Ok((_, capacity)) => deepest = Some((log_n, capacity)),
                Err(e) => last_err = Some(e),
            }
        }
        let bits = match self.plain {
            PlainModulus::Bits(b) => format!("{b}-bit"),
            PlainModulus::Prime(t) => format!("t = {t}"),
        };
        match (deepest, last_err) {
            (Some((l, cap)), _) => Err(Error::InvalidParameters(format!(
                "depth {} with a {bits} plaintext modulus does not fit: the largest ring tried, N = 2^{l}, holds depth {cap} by the noise estimate{}",
                self.depth,
                if l < 16 && self.log_n.is_some() { "; a larger N would hold more" } else { "; use a smaller plaintext modulus or split the computation" }
            ))),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::InvalidParameters("no ring degree to try".into())),
        }
    }

    /// The parameters at N = 2^log_n and the depth their noise estimate allows.
    fn build_at(&self, log_n: u32) -> Result<(BfvParams, usize)> {
        let (q_count, dnum) = match self.chain {
            Some(c) => c,
            None => preset_shape(log_n).ok_or_else(|| {
                Error::InvalidParameters(format!(
                    "no BFV preset for log2 N = {log_n} (presets: 13..=16); give the chain"
                ))
            })?,
        };
        let params = BfvParams::from_chain(BfvChain {
            log_n,
            plain: self.plain,
            primes: q_count,
            dnum,
            security: self.security,
        })?;
        let capacity = crate::bfv::BfvContext::new(params.clone())?.depth_capacity(self.depth + 1);
        Ok((params, capacity))
    }
}
