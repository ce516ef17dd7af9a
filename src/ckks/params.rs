//! CKKS parameter sets: base prime(s), one group of `t` scale primes per level (composite
//! scaling when `t > 1`), and special primes; and a builder that picks them from what the
//! computation needs (depth, scale, slots, security).

use std::fmt;

use crate::error::{Error, Result};
use crate::math::primes::{is_prime, ntt_primes, ntt_primes_near};
use crate::rlwe::params::max_log_qp_128;
use crate::rlwe::{LevelShape, RlweParams, Security};

/// Largest prime size the 32-bit kernels take (Barrett/Shoup leave two spare bits).
const MAX_PRIME_BITS: u32 = 30;
/// Size of the special primes (the largest word keeps their count, and so QP, small).
const SPECIAL_BITS: u32 = 30;
/// Special primes beyond one digit's worth, by default
/// ([`CkksParamsBuilder::extra_special_primes`]). Key switching adds noise of about N·σ·D/P for a
/// digit modulus D; with P ≈ D that is ~2^15, which a rotation (no rescale follows) leaves at
/// 2^-20 relative to a 2^40 scale. One more 30-bit prime puts it 2^30 lower: measured at
/// N = 2^13, Δ = 2^40, a rotation keeps 26.7 bits instead of 20.4 (as SEAL's 60-bit special
/// prime over 40-bit digits does). Where a 30-bit one would not fit under the security bound
/// at the fewest digits, the extra prime is sized to what the bound leaves (at N = 2^13,
/// depth 2: 17 bits, still 26.8 bits after a rotation) rather than doubling the digits.
const EXTRA_SPECIAL_PRIMES: usize = 1;
/// Default precision headroom of the base modulus over the scale: level-0 values up to about
/// 2^(headroom − 1) in magnitude decrypt without wrapping around.
const DEFAULT_HEADROOM_BITS: u32 = 20;
/// Largest scale Δ = 2^bits a chain may have. Above 2^62 an encoding's coefficients pass the
/// 64-bit words and are reduced from 128-bit integers; 2^100 leaves values of up to ~2^25 under
/// that type's 2^126. Scales that large exist for outputs that must stay precise under
/// 40-bit statistical smudging (`crate::mhe`), which takes ~60 bits of the scale.
pub const MAX_SCALE_BITS: u32 = 100;

/// What a CKKS context is built from. Read-only once built (the primes, the chain's shape and
/// the scales must agree): make one with [`Self::builder`], [`Self::single_prime`],
/// [`Self::preset`] or from explicit primes.
#[derive(Clone, Debug)]
pub struct CkksParams {
    /// The underlying RLWE parameters (their [`LevelShape`] groups the scale primes).
    pub(crate) rlwe: RlweParams,
    /// log2 of the default scale Δ (each level's primes multiply to about 2^scale_bits). On
    /// a two-segment chain, the scale of the low (computation) segment.
    pub(crate) scale_bits: u32,
    /// log2 of the scale of the levels above the low segment, on a two-segment chain
    /// ([`LevelShape::is_segmented`]; bootstrapping's CoeffsToSlots and EvalMod run there).
    pub(crate) upper_scale_bits: Option<u32>,
}

/// A chain of one prime per level near 2^`scale_bits` (below 2^30), what
/// [`CkksParams::single_prime`] builds: SEAL's layout on 30-bit words, for scales under the
/// word size. `..Default::default()` fills in a 30-bit base prime, one digit per level and
/// 128-bit security.
///
/// ```
/// use hetensor::ckks::{CkksParams, SinglePrimeChain};
/// # fn main() -> hetensor::Result<()> {
/// let p = CkksParams::single_prime(SinglePrimeChain { log_n: 13, levels: 5, scale_bits: 25, ..Default::default() })?;
/// assert_eq!((p.levels(), p.scale_bits()), (5, 25));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinglePrimeChain {
    /// log2 N, 10 to 16.
    pub log_n: u32,
    /// Rescalings (one prime each).
    pub levels: usize,
    /// log2 of the scale, below the base's size.
    pub scale_bits: u32,
    /// Size of the base prime `q_0` in bits, at most 30: level-0 values stay below about
    /// 2^(base_bits − scale_bits − 1).
    pub base_bits: u32,
    /// Key-switching digits (clamped to 1..=levels + 1; `ceil((levels + 1)/dnum)` special
    /// 30-bit primes).
    pub dnum: usize,
    /// Security requirement.
    pub security: Security,
}

impl Default for SinglePrimeChain {
    /// N = 2^13, 1 level at 2^25 over a 30-bit base, one digit per level, 128-bit.
    fn default() -> Self {
        Self {
            log_n: 13,
            levels: 1,
            scale_bits: 25,
            base_bits: 30,
            dnum: usize::MAX,
            security: Security::Bits128,
        }
    }
}

/// An explicit CKKS chain, what [`CkksParams::from_primes`] builds: `q` holds `shape.base`
/// base primes, then the levels' primes (`shape` groups them: one prime per level, composite
/// levels of `width` primes, or a low segment below wider levels), `p` the special primes of
/// hybrid key switching over `dnum` digits. Every prime is an NTT prime `≡ 1 (mod 2N)` below
/// 2^30, all distinct. `..Default::default()` fills in one prime per level, 128-bit security
/// and one digit per prime.
///
/// ```
/// use hetensor::ckks::{CkksParams, ExplicitChain};
/// use hetensor::math::primes::ntt_primes;
/// # fn main() -> hetensor::Result<()> {
/// let step = 2 << 13; // primes ≡ 1 mod 2N for N = 2^13
/// let primes = ntt_primes(30, step, 4, &[])?;
/// let p = CkksParams::from_primes(ExplicitChain {
///     q: primes[..3].to_vec(), // a base prime and two levels
///     p: primes[3..].to_vec(),
///     scale_bits: 30,
///     dnum: 3,
///     ..Default::default()
/// })?;
/// assert_eq!(p.levels(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplicitChain {
    /// log2 N, 10 to 16.
    pub log_n: u32,
    /// Ciphertext primes, base first.
    pub q: Vec<u32>,
    /// Special primes.
    pub p: Vec<u32>,
    /// How `q` is grouped into levels.
    pub shape: LevelShape,
    /// log2 of the scale (of the low segment on a two-segment shape).
    pub scale_bits: u32,
    /// log2 of the upper segment's scale: `Some` exactly when `shape` is two-segment.
    pub upper_scale_bits: Option<u32>,
    /// Key-switching digits (more than `q.len()` counts as one digit per prime).
    pub dnum: usize,
    /// Security requirement.
    pub security: Security,
}

impl Default for ExplicitChain {
    /// N = 2^13, no primes yet, one prime per level, scale 2^25, one digit per prime, 128-bit.
    fn default() -> Self {
        Self {
            log_n: 13,
            q: Vec::new(),
            p: Vec::new(),
            shape: LevelShape::SINGLE,
            scale_bits: 25,
            upper_scale_bits: None,
            dnum: usize::MAX,
            security: Security::Bits128,
        }
    }
}

impl CkksParams {
    /// The underlying RLWE parameters: ring, primes, chain shape, digits, security.
    pub fn rlwe(&self) -> &RlweParams {
        &self.rlwe
    }

    /// log2 of the default scale Δ (on a two-segment chain, the computation levels').
    pub fn scale_bits(&self) -> u32 {
        self.scale_bits
    }

    /// log2 of the upper segment's scale on a two-segment chain (bootstrapping's levels).
    pub fn upper_scale_bits(&self) -> Option<u32> {
        self.upper_scale_bits
    }

    /// Builds a single-prime chain ([`SinglePrimeChain`]): a `base_bits`-bit prime `q_0` (the
    /// precision headroom left at level 0 is `base_bits − scale_bits` bits), `levels` primes
    /// near `2^scale_bits`, and `ceil((levels+1)/dnum)` special 30-bit primes. For scales of
    /// 30 bits and more (composite levels) use [`CkksParams::builder`].
    pub fn single_prime(chain: SinglePrimeChain) -> Result<Self> {
        let SinglePrimeChain {
            log_n,
            levels,
            scale_bits,
            base_bits,
            dnum,
            security,
        } = chain;
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
        Ok(Self {
            rlwe,
            scale_bits,
            upper_scale_bits: None,
        })
    }

    /// Parameters from explicit primes ([`ExplicitChain`]): what the builder and the presets
    /// produce, for a caller that chose its own primes (e.g. to match another library's chain).
    pub fn from_primes(chain: ExplicitChain) -> Result<Self> {
        let ExplicitChain {
            log_n,
            q,
            p,
            shape,
            scale_bits,
            upper_scale_bits,
            dnum,
            security,
        } = chain;
        for b in std::iter::once(scale_bits).chain(upper_scale_bits) {
            if !(1..=MAX_SCALE_BITS).contains(&b) {
                return Err(Error::InvalidParameters(format!(
                    "scale 2^{b} outside 2^1..=2^{MAX_SCALE_BITS}"
                )));
            }
        }
        if shape.is_segmented() != upper_scale_bits.is_some() {
            return Err(Error::InvalidParameters(format!(
                "a two-segment chain needs the upper segment's scale and a uniform one has none \
                 (shape {shape:?}, upper_scale_bits {upper_scale_bits:?})"
            )));
        }
        if !(10..=16).contains(&log_n) {
            return Err(Error::InvalidParameters(format!(
                "log2 N = {log_n} outside 10..=16"
            )));
        }
        let dnum = dnum.min(q.len().max(1));
        let rlwe = RlweParams::with_shape(1 << log_n, q, p, vec![], dnum, security, shape)?;
        Ok(Self {
            rlwe,
            scale_bits,
            upper_scale_bits,
        })
    }

    /// Chooses parameters from what the computation needs; see [`CkksParamsBuilder`].
    ///
    /// ```
    /// use hetensor::ckks::CkksParams;
    /// # fn main() -> hetensor::Result<()> {
    /// let p = CkksParams::builder().depth(4).scale_bits(40).build()?;
    /// assert_eq!(p.levels(), 4);
    /// assert_eq!(p.composition(), 2); // 2^40 = two ~2^20 primes per level
    /// println!("{p}"); // what was chosen, and the 128-bit bound it meets
    /// # Ok(()) }
    /// ```
    pub fn builder() -> CkksParamsBuilder {
        CkksParamsBuilder::default()
    }

    /// 128-bit preset for N = 2^`log_n`: the deepest chain (dnum = 3) that fits the HE-standard
    /// bound at the given scale. Scales below 2^30 use one prime per level and a 30-bit base
    /// prime; larger scales use composite levels and the builder's defaults.
    pub fn preset(log_n: u32, scale_bits: u32) -> Result<Self> {
        let max = max_log_qp_128(1usize << log_n.min(20)).ok_or_else(|| {
            Error::InvalidParameters(format!(
                "no CKKS preset for log2 N = {log_n} (supported: 10..=16)"
            ))
        })?;
        let dnum = 3;
        if scale_bits >= MAX_PRIME_BITS {
            let mut depth = max as usize / scale_bits as usize;
            loop {
                if depth == 0 {
                    return Err(Error::InvalidParameters(format!(
                        "no level fits N = 2^{log_n} at scale 2^{scale_bits} with 128-bit security"
                    )));
                }
                let built = Self::builder()
                    .log_n(log_n)
                    .depth(depth)
                    .scale_bits(scale_bits)
                    .dnum(dnum)
                    .build();
                match built {
                    Err(Error::InsecureParameters { .. } | Error::InvalidParameters(_)) => {
                        depth -= 1
                    }
                    other => return other,
                }
            }
        }
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
            let chain = SinglePrimeChain {
                log_n,
                levels,
                scale_bits,
                dnum,
                ..SinglePrimeChain::default()
            };
            match Self::single_prime(chain) {
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

    /// Primes per level (the composition degree t; 1 for single-prime chains). On a
    /// two-segment chain, the low (computation) segment's.
    pub fn composition(&self) -> usize {
        let shape = self.rlwe.level_shape();
        if shape.is_segmented() {
            shape.low_width
        } else {
            shape.width
        }
    }

    /// Levels a fresh ciphertext gets for computation: the whole chain, or on a two-segment
    /// chain the low segment (the levels above it belong to bootstrapping).
    pub fn computation_levels(&self) -> usize {
        let shape = self.rlwe.level_shape();
        if shape.is_segmented() {
            shape.low_levels
        } else {
            self.levels()
        }
    }

    /// log2 of the primes that rescaling at each level 1..=L divides by (their product).
    pub fn level_bits(&self) -> Vec<f64> {
        let shape = self.rlwe.level_shape();
        let q = self.rlwe.q_primes();
        (1..=self.levels())
            .map(|l| {
                q[shape.limbs(l - 1)..shape.limbs(l)]
                    .iter()
                    .map(|&x| (x as f64).log2())
                    .sum()
            })
            .collect()
    }
}

impl fmt::Display for CkksParams {
    /// One paragraph: ring, chain, key switching and the security bound it meets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.rlwe;
        let shape = r.level_shape();
        let q = r.q_primes();
        let bits = |xs: &[u32]| xs.iter().map(|&x| (x as f64).log2()).sum::<f64>();
        let level_bits = self.level_bits();
        let (lo, hi) = level_bits
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        write!(
            f,
            "CKKS N = 2^{} ({} slots), depth {}, scale 2^{}: ",
            r.n().trailing_zeros(),
            r.n() / 2,
            self.levels(),
            self.scale_bits
        )?;
        if let (Some(upper), true) = (self.upper_scale_bits, shape.is_segmented()) {
            write!(
                f,
                "{} computation level(s) of {} prime(s), {} level(s) of {} prime(s) at 2^{upper} above (levels of 2^{lo:.2}..2^{hi:.2}), ",
                shape.low_levels,
                shape.low_width,
                self.levels() - shape.low_levels,
                shape.width
            )?;
        } else if !level_bits.is_empty() {
            write!(
                f,
                "{} prime(s) per level (levels of 2^{lo:.2}..2^{hi:.2}), ",
                shape.width
            )?;
        }
        write!(
            f,
            "base {} prime(s) = 2^{:.1}, {} limbs in all; dnum {} with {} special prime(s); log2 QP = {:.1}",
            shape.base,
            bits(&q[..shape.base]),
            q.len(),
            r.dnum(),
            r.p_primes().len(),
            r.log_qp()
        )?;
        match (r.security(), max_log_qp_128(r.n())) {
            (Security::Bits128, Some(max)) => write!(f, " ≤ {max} (128-bit, HE standard)"),
            _ => write!(f, " (security check disabled)"),
        }
    }
}

/// Picks CKKS parameters from what a computation needs: the multiplicative depth, the scale,
/// optionally the slot count and ring degree, the composition degree, the base size and the
/// key-switching digits. [`Self::build`] returns the smallest ring that meets the security
/// bound, or an error that names the bound and what would fit.
#[derive(Clone, Debug)]
pub struct CkksParamsBuilder {
    depth: usize,
    scale_bits: u32,
    slots: Option<usize>,
    log_n: Option<u32>,
    composition: Option<usize>,
    base_bits: Option<u32>,
    dnum: Option<usize>,
    security: Security,
    upper: Option<(usize, u32)>,
    extra_special: Option<usize>,
}

impl Default for CkksParamsBuilder {
    fn default() -> Self {
        Self {
            depth: 1,
            scale_bits: 40,
            slots: None,
            log_n: None,
            composition: None,
            base_bits: None,
            dnum: None,
            security: Security::Bits128,
            upper: None,
            extra_special: None,
        }
    }
}

impl CkksParamsBuilder {
    /// Rescalings the computation needs (default 1).
    pub fn depth(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }

    /// log2 of the scale Δ (default 40); precision is about `scale_bits − 20` bits.
    pub fn scale_bits(mut self, bits: u32) -> Self {
        self.scale_bits = bits;
        self
    }

    /// At least this many slots (N ≥ 2·slots).
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Fixes N = 2^log_n instead of choosing the smallest that fits.
    pub fn log_n(mut self, log_n: u32) -> Self {
        self.log_n = Some(log_n);
        self
    }

    /// Fixes the number of primes per level (default: the fewest that keep each under 2^30).
    pub fn composition(mut self, t: usize) -> Self {
        self.composition = Some(t);
        self
    }

    /// Size of the base modulus in bits (default scale + 20): level-0 values must stay below
    /// about 2^(base_bits − scale_bits − 1).
    pub fn base_bits(mut self, bits: u32) -> Self {
        self.base_bits = Some(bits);
        self
    }

    /// Fixes the number of key-switching digits (default: the fewest that fit the bound, which
    /// makes key switching fastest). Each digit's worth of special primes gets one more, so
    /// that key-switching noise stays far below the scale.
    pub fn dnum(mut self, dnum: usize) -> Self {
        self.dnum = Some(dnum);
        self
    }

    /// Special primes beyond one digit's worth (default 1). Each one puts key switching's
    /// noise lower by its size, ~2^30: with the default, a rotation at Δ = 2^40 keeps the
    /// precision of a fresh encryption (26.8 bits at N = 2^13); with 0 it keeps about what
    /// SEAL's single special prime does (20 bits). Where 30-bit extra primes would not fit
    /// under the 128-bit bound at the fewest digits, they are sized to what the bound leaves
    /// (at least 12 bits and 2N; at N = 2^13, depth 2: one 17-bit prime, 3 digits) rather
    /// than taking more digits; a chain with no room even for that takes more digits.
    pub fn extra_special_primes(mut self, count: usize) -> Self {
        self.extra_special = Some(count);
        self
    }

    /// Security requirement (default 128-bit).
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Adds `count` levels at scale 2^`scale_bits` above the `depth` computation levels: a
    /// two-segment chain ([`LevelShape::two_segment`]). Bootstrapping spends those levels;
    /// a fresh ciphertext starts at the top of the computation levels.
    pub fn upper_levels(mut self, count: usize, scale_bits: u32) -> Self {
        self.upper = (count > 0).then_some((count, scale_bits));
        self
    }

    fn composition_degree(&self) -> usize {
        self.composition
            .unwrap_or_else(|| (self.scale_bits as usize).div_ceil(MAX_PRIME_BITS as usize - 1))
            .max(1)
    }

    /// The parameters, or why none fit.
    pub fn build(&self) -> Result<CkksParams> {
        if self.depth == 0 || self.depth > 120 {
            return Err(Error::InvalidParameters(format!(
                "depth {} outside 1..=120",
                self.depth
            )));
        }
        if !(10..=MAX_SCALE_BITS).contains(&self.scale_bits) {
            return Err(Error::InvalidParameters(format!(
                "scale 2^{} outside 2^10..=2^{MAX_SCALE_BITS}",
                self.scale_bits
            )));
        }
        let min_log_n = self
            .slots
            .map(|s| (2 * s.max(1)).next_power_of_two().trailing_zeros())
            .unwrap_or(10)
            .max(10);
        if min_log_n > 16 {
            return Err(Error::InvalidParameters(format!(
                "{} slots need N = 2^{min_log_n}; at most 2^16 is supported",
                self.slots.unwrap_or(0)
            )));
        }
        let candidates: Vec<u32> = match self.log_n {
            Some(l) if !(10..=16).contains(&l) => {
                return Err(Error::InvalidParameters(format!(
                    "log2 N = {l} outside 10..=16"
                )))
            }
            Some(l) if l < min_log_n => {
                return Err(Error::InvalidParameters(format!(
                    "{} slots do not fit N = 2^{l} (need 2^{min_log_n})",
                    self.slots.unwrap_or(0)
                )))
            }
            Some(l) => vec![l],
            None => (min_log_n..=16).collect(),
        };
        let mut last_err = None;
        for &log_n in &candidates {
            match self.build_at(log_n) {
                Ok(p) => return Ok(p),
                Err(e) => last_err = Some(e),
            }
        }
        let err = last_err.unwrap_or_else(|| Error::InvalidParameters("no ring degree".into()));
        // Say what would fit: a larger ring for this depth, or the depth this ring allows.
        let hint = match self.log_n {
            Some(l) => {
                let larger = (l + 1..=16).find(|&m| self.build_at(m).is_ok());
                let deepest = (1..self.depth).rev().find(|&d| {
                    let mut b = self.clone();
                    b.depth = d;
                    b.build_at(l).is_ok()
                });
                let mut h = String::new();
                if let Some(m) = larger {
                    h += &format!(
                        "depth {} at 2^{} needs N ≥ 2^{m}",
                        self.depth, self.scale_bits
                    );
                }
                if let Some(d) = deepest {
                    if !h.is_empty() {
                        h += "; ";
                    }
                    h += &format!("N = 2^{l} allows depth {d} at 2^{}", self.scale_bits);
                }
                h
            }
            None => String::new(),
        };
        Err(match (err, hint.is_empty()) {
            (Error::InsecureParameters { n, log_qp, .. }, _) => {
                let max = max_log_qp_128(n).unwrap_or(0);
                Error::InvalidParameters(format!(
                    "depth {} at scale 2^{} needs log2 QP = {log_qp} at N = {n}, beyond the {max} that 128-bit security allows{}",
                    self.depth,
                    self.scale_bits,
                    if hint.is_empty() { String::new() } else { format!(": {hint}") }
                ))
            }
            (Error::InvalidParameters(m), _) if !hint.is_empty() => {
                Error::InvalidParameters(format!("{m}: {hint}"))
            }
            (e, _) => e,
        })
    }

    /// Parameters at N = 2^log_n, trying digit counts from the fastest (fewest) up.
    fn build_at(&self, log_n: u32) -> Result<CkksParams> {
        let n = 1usize << log_n;
        let t = self.composition_degree();
        let per_prime_check = |scale_bits: u32, t: usize| -> Result<()> {
            let per_prime = scale_bits as f64 / t as f64;
            if per_prime >= MAX_PRIME_BITS as f64 || per_prime <= (2.0 * n as f64).log2() {
                return Err(Error::InvalidParameters(format!(
                    "scale 2^{scale_bits} in {t} prime(s) per level needs primes of 2^{per_prime:.1}, outside (2N = 2^{}, 2^{MAX_PRIME_BITS})",
                    log_n + 1
                )));
            }
            Ok(())
        };
        per_prime_check(self.scale_bits, t)?;
        // The upper segment (if any): its own scale, the fewest primes per level under 2^30.
        let (upper_count, upper_bits) = self.upper.unwrap_or((0, self.scale_bits));
        let tu = (upper_bits as usize)
            .div_ceil(MAX_PRIME_BITS as usize - 1)
            .max(1);
        if upper_count > 0 {
            if !(10..=MAX_SCALE_BITS).contains(&upper_bits) {
                return Err(Error::InvalidParameters(format!(
                    "upper scale 2^{upper_bits} outside 2^10..=2^{MAX_SCALE_BITS}"
                )));
            }
            per_prime_check(upper_bits, tu)?;
        }
        let base_bits = self
            .base_bits
            .unwrap_or(self.scale_bits + DEFAULT_HEADROOM_BITS);
        if base_bits <= self.scale_bits {
            return Err(Error::InvalidParameters(format!(
                "base modulus of {base_bits} bits must exceed the scale 2^{}",
                self.scale_bits
            )));
        }
        let base_count = base_bits.div_ceil(MAX_PRIME_BITS) as usize;
        let base_each = base_bits.div_ceil(base_count as u32).max(log_n + 2);
        let limbs = base_count + t * self.depth + tu * upper_count;
        // Estimated prime sizes, bottom up (what the digits are balanced over).
        let estimated_bits: Vec<f64> = std::iter::repeat_n(base_each as f64, base_count)
            .chain(std::iter::repeat_n(
                self.scale_bits as f64 / t as f64,
                t * self.depth,
            ))
            .chain(std::iter::repeat_n(
                upper_bits as f64 / tu as f64,
                tu * upper_count,
            ))
            .collect();
        let bound = max_log_qp_128(n).unwrap_or(0) as f64;
        let step = 2 * n as u64;
        let dnums: Vec<usize> = match self.dnum {
            Some(d) => vec![d.clamp(1, limbs)],
            None => (1..=limbs).collect(),
        };
        let extra_special = self.extra_special.unwrap_or(EXTRA_SPECIAL_PRIMES);
        // Q alone is fixed by depth and scale; fail fast when it exceeds the bound.
        let log_q_estimate: f64 = estimated_bits.iter().sum();
        let mut last = None;
        for dnum in dnums {
            let alpha = if upper_count > 0 {
                // Digits are balanced by bits: enough special primes to cover the largest.
                let largest = crate::rlwe::params::balanced_digits(&estimated_bits, dnum)
                    .into_iter()
                    .map(|r| estimated_bits[r].iter().sum::<f64>())
                    .fold(0.0, f64::max);
                (largest / (SPECIAL_BITS as f64 - 0.05)).ceil() as usize + extra_special
            } else {
                limbs.div_ceil(dnum) + extra_special
            };
            let estimate = log_q_estimate + alpha as f64 * SPECIAL_BITS as f64;
            let insecure = Error::InsecureParameters {
                n,
                log_qp: estimate.ceil() as u32,
                max_log_qp: bound as u32,
            };
            let bounded = self.security == Security::Bits128;
            // Where full-size extra primes do not fit, extra primes that fill what the bound
            // leaves (added below, once Q's real size is known) still lower the noise by
            // their size, at this digit count's speed.
            let room_for_extra =
                bound - (log_q_estimate + (alpha - extra_special) as f64 * SPECIAL_BITS as f64);
            let smaller_extra = bounded
                && estimate > bound + 1.0
                && extra_special > 0
                && room_for_extra / extra_special as f64 >= min_extra_bits(step) as f64;
            if bounded && estimate > bound + 1.0 && self.dnum.is_none() && !smaller_extra {
                last = Some(insecure);
                continue;
            }
            let full_special = if smaller_extra {
                alpha - extra_special
            } else {
                alpha
            };
            let mut special = ntt_primes(SPECIAL_BITS, step, full_special, &[])?;
            // Too few primes of that size exist for a large N: take the next sizes up.
            let base = (base_each..=MAX_PRIME_BITS)
                .find_map(|bits| ntt_primes(bits, step, base_count, &special).ok())
                .ok_or_else(|| {
                    Error::InvalidParameters(format!(
                        "no {base_count} base primes of {base_each}..={MAX_PRIME_BITS} bits are ≡ 1 mod {step}"
                    ))
                })?;
            let mut used = special.clone();
            used.extend(&base);
            let scale_primes =
                composite_scale_primes(self.scale_bits as f64, t, self.depth, step, &used)?;
            used.extend(&scale_primes);
            let upper_primes = if upper_count > 0 {
                composite_scale_primes(upper_bits as f64, tu, upper_count, step, &used)?
            } else {
                Vec::new()
            };
            let mut q = base;
            q.extend(scale_primes);
            q.extend(upper_primes);
            if smaller_extra {
                let log2_sum = |xs: &[u32]| xs.iter().map(|&x| (x as f64).log2()).sum::<f64>();
                let room = bound - log2_sum(&q) - log2_sum(&special);
                let taken: Vec<u32> = q.iter().chain(&special).copied().collect();
                match extra_special_primes(room, extra_special, step, &taken) {
                    Some(extra) => special.extend(extra),
                    None => {
                        last = Some(insecure);
                        continue;
                    }
                }
            }
            let segmented = upper_count > 0;
            let built = CkksParams::from_primes(ExplicitChain {
                log_n: n.trailing_zeros(),
                q,
                p: special,
                shape: if segmented {
                    LevelShape::two_segment(base_count, self.depth, t, tu)
                } else {
                    LevelShape::uniform(base_count, t)
                },
                scale_bits: self.scale_bits,
                upper_scale_bits: segmented.then_some(upper_bits),
                dnum,
                security: self.security,
            });
            match built {
                Err(e @ Error::InsecureParameters { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidParameters("no digit count fits".into())))
    }
}

/// Smallest extra special prime worth adding: the NTT primes ≡ 1 mod `step` start just above
/// `step`, and one of ~12 bits or more already lowers key-switching noise below a fresh
/// encryption's at the scales the builder takes.
fn min_extra_bits(step: u64) -> u32 {
    (step.ilog2() + 2).max(12)
}

/// `count` extra special primes, the largest size (≤ [`SPECIAL_BITS`]) whose `count` primes
/// fit in `room` bits, avoiding `taken`; `None` when not even [`min_extra_bits`] fit.
fn extra_special_primes(room: f64, count: usize, step: u64, taken: &[u32]) -> Option<Vec<u32>> {
    let most = (room / count as f64).floor().min(SPECIAL_BITS as f64);
    if most < min_extra_bits(step) as f64 {
        return None;
    }
    (min_extra_bits(step)..=most as u32)
        .rev()
        .find_map(|bits| ntt_primes(bits, step, count, taken).ok())
}

/// How far a level's natural scale may be from Δ (see [`composite_scale_primes`]).
const LEVEL_TOLERANCE_BITS: f64 = 0.5;
/// Scale primes lie within this many bits of 2^(scale_bits / t).
const WINDOW_BITS: f64 = 6.0;

/// `depth` groups of `t` distinct primes ≡ 1 mod `step`, in chain order (level 1's group
/// first). The groups are chosen from the top level down so that squaring a ciphertext at a
/// level's natural scale and rescaling lands on the next level's natural scale, and every
/// natural scale stays within [`LEVEL_TOLERANCE_BITS`] of Δ = 2^scale_bits: with Δ_L = Δ,
/// level ℓ's group targets Δ_ℓ² / Δ, and Δ_{ℓ−1} = Δ_ℓ² / q_ℓ (as OpenFHE's FLEXIBLEAUTO
/// chains do). Errors therefore never compound down the chain, which matters because
/// products of NTT primes near 2^20 cannot hit 2^40 exactly: `q ≡ 1 mod 2N` makes them
/// multiples of a coarse grid.
///
/// Primes come from a window of ±[`WINDOW_BITS`] around 2^(scale_bits/t): the first `t − 2`
/// closest to the bits still needed divided by the primes left, the last two as the pair
/// that completes the product best (among near-equal products, the more balanced pair).
fn composite_scale_primes(
    scale_bits: f64,
    t: usize,
    depth: usize,
    step: u64,
    exclude: &[u32],
) -> Result<Vec<u32>> {
    let per = scale_bits / t as f64;
    let lo = (per - WINDOW_BITS).exp2().max(step as f64 + 1.0) as u64;
    let hi = ((per + WINDOW_BITS).exp2() as u64).min(1 << MAX_PRIME_BITS);
    // Ascending, so the free list below stays sorted by size.
    let pool: Vec<(u32, f64)> = (lo.div_ceil(step)..=hi / step)
        .map(|k| k * step + 1)
        .filter(|&c| c < hi && is_prime(c) && !exclude.contains(&(c as u32)))
        .map(|c| (c as u32, (c as f64).log2()))
        .collect();
    let short = |what: String| {
        Error::InvalidParameters(format!(
            "{what}: the NTT primes (≡ 1 mod {step}) near 2^{per:.1} are too few for depth {depth} at scale 2^{scale_bits} with {t} prime(s) per level; choose a larger scale (primes near 2^25 are plentiful) or a smaller depth or ring"
        ))
    };
    let mut used = vec![false; pool.len()];
    let mut groups = Vec::with_capacity(depth);
    let mut natural = scale_bits; // log2 Δ_ℓ, from the top level down
    for level in (1..=depth).rev() {
        let target = 2.0 * natural - scale_bits;
        let mut remaining = target;
        let mut group = Vec::with_capacity(t);
        for i in 0..t.saturating_sub(2) {
            let want = remaining / (t - i) as f64;
            let best = (0..pool.len())
                .filter(|&j| !used[j])
                .min_by(|&a, &b| {
                    (pool[a].1 - want)
                        .abs()
                        .total_cmp(&(pool[b].1 - want).abs())
                })
                .ok_or_else(|| short(format!("level {level}")))?;
            used[best] = true;
            group.push(best);
            remaining -= pool[best].1;
        }
        let free: Vec<usize> = (0..pool.len()).filter(|&j| !used[j]).collect();
        // (distance of the product from the target, imbalance, picks)
        let mut best: Option<(f64, f64, Vec<usize>)> = None;
        let mut consider = |picks: Vec<usize>| {
            let sum: f64 = picks.iter().map(|&j| pool[j].1).sum();
            let dist = (sum - remaining).abs();
            let imbalance = picks
                .iter()
                .map(|&j| (pool[j].1 - remaining / picks.len() as f64).abs())
                .fold(0.0, f64::max);
            // Products within a thousandth of a bit count as equal; then balance decides.
            let wins = best.as_ref().is_none_or(|(d, i, _)| {
                if (dist - d).abs() > 1e-3 {
                    dist < *d
                } else {
                    imbalance < *i
                }
            });
            if wins {
                best = Some((dist, imbalance, picks));
            }
        };
        if t == 1 {
            free.iter().for_each(|&a| consider(vec![a]));
        } else {
            for (x, &a) in free.iter().enumerate() {
                // The partners whose size completes the product best sit around `need`.
                let need = remaining - pool[a].1;
                let at = free.partition_point(|&j| pool[j].1 < need);
                for y in [at.wrapping_sub(1), at, at + 1] {
                    if let Some(&b) = free.get(y) {
                        if y > x {
                            consider(vec![a, b]);
                        }
                    }
                }
            }
        }
        let (dist, _, picks) = best.ok_or_else(|| short(format!("level {level}")))?;
        let got: f64 = picks.iter().map(|&j| pool[j].1).sum::<f64>() + target - remaining;
        let next = 2.0 * natural - got;
        if dist > LEVEL_TOLERANCE_BITS || (next - scale_bits).abs() > LEVEL_TOLERANCE_BITS {
            return Err(short(format!(
                "level {level}'s primes can only come within {dist:.3} bits of their target"
            )));
        }
        picks.iter().for_each(|&j| used[j] = true);
        group.extend(picks);
        groups.push(group);
        natural = next;
    }
    Ok(groups
        .into_iter()
        .rev()
        .flat_map(|g| g.into_iter().map(|j| pool[j].0))
        .collect())
}
