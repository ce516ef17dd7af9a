//! RLWE parameters shared by BFV and CKKS, with the 128-bit security check.

use crate::error::{Error, Result};

/// Maximum log2(QP) for 128-bit classical security with a ternary secret
/// (HomomorphicEncryption.org standard, Table 1; 2^16 extrapolated as is common practice).
pub fn max_log_qp_128(n: usize) -> Option<u32> {
    match n {
        1024 => Some(27),
        2048 => Some(54),
        4096 => Some(109),
        8192 => Some(218),
        16384 => Some(438),
        32768 => Some(881),
        65536 => Some(1770),
        _ => None,
    }
}

/// `dnum` contiguous ranges of primes (sizes `bits`, in bits) with sums as equal as the
/// primes allow: each range ends where its running sum comes closest to its share.
pub fn balanced_digits(bits: &[f64], dnum: usize) -> Vec<std::ops::Range<usize>> {
    let total: f64 = bits.iter().sum();
    let mut out = Vec::with_capacity(dnum);
    let (mut start, mut acc) = (0usize, 0.0f64);
    for j in 1..=dnum {
        let goal = total * j as f64 / dnum as f64;
        let mut end = start;
        while end < bits.len()
            && (j == dnum || (acc + bits[end] - goal).abs() <= (acc - goal).abs())
        {
            acc += bits[end];
            end += 1;
        }
        if end > start {
            out.push(start..end);
        }
        start = end;
    }
    out
}

/// How the parameters are allowed to relate to the security standard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Security {
    /// Must meet 128-bit security (the default).
    Bits128,
    /// Skips the check. For tests and experiments only: ciphertexts may be breakable.
    InsecureForTestingOnly,
}

/// How the ciphertext primes group into levels: `base` primes remain at level 0, and each
/// level above adds `width` primes. CKKS composite scaling uses `width > 1` so that a scale
/// larger than one word (e.g. 2^40 from two ~2^20 primes) is divided out by one rescale;
/// BFV and single-prime CKKS chains use [`LevelShape::SINGLE`].
///
/// A chain may have **two segments**: its bottom `low_levels` levels hold `low_width`
/// primes each and the levels above them `width`. Bootstrapping chains use it: the
/// computation levels (and SlotsToCoeffs) run at a moderate scale such as 2^40, while
/// CoeffsToSlots and EvalMod, which need more precision, use wider levels on top, so that
/// more levels remain for computation under the same security bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LevelShape {
    /// Primes at level 0.
    pub base: usize,
    /// Primes each rescale drops above the low segment (the composition degree t).
    pub width: usize,
    /// Levels of the low segment (0: the chain is uniform).
    pub low_levels: usize,
    /// Primes per level in the low segment.
    pub low_width: usize,
}

impl LevelShape {
    /// One prime per level, one base prime.
    pub const SINGLE: Self = Self::uniform(1, 1);

    /// `base` primes, then levels of `width` primes each.
    pub const fn uniform(base: usize, width: usize) -> Self {
        Self {
            base,
            width,
            low_levels: 0,
            low_width: width,
        }
    }

    /// `base` primes, `low_levels` levels of `low_width` primes, then levels of `width`.
    pub const fn two_segment(
        base: usize,
        low_levels: usize,
        low_width: usize,
        width: usize,
    ) -> Self {
        Self {
            base,
            width,
            low_levels,
            low_width,
        }
    }

    /// True when the chain has a low segment of its own width.
    pub fn is_segmented(&self) -> bool {
        self.low_levels > 0
    }

    /// Number of ciphertext primes at `level`.
    pub fn limbs(&self, level: usize) -> usize {
        let low = level.min(self.low_levels);
        self.base + low * self.low_width + (level - low) * self.width
    }

    /// The level that holds exactly `limbs` primes, if one does.
    pub fn level_of(&self, limbs: usize) -> Option<usize> {
        let above = limbs.checked_sub(self.base)?;
        let low_primes = self.low_levels * self.low_width;
        if above <= low_primes {
            (self.low_width > 0 && above % self.low_width == 0).then(|| above / self.low_width)
        } else {
            let rest = above - low_primes;
            (self.width > 0 && rest.is_multiple_of(self.width))
                .then(|| self.low_levels + rest / self.width)
        }
    }

    /// Primes per level at `level` (≥ 1): what a rescale there drops.
    pub fn width_at(&self, level: usize) -> usize {
        if level <= self.low_levels {
            self.low_width
        } else {
            self.width
        }
    }
}

/// The ring degree and the three prime chains every RLWE context needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RlweParams {
    pub(crate) n: usize,
    /// Ciphertext primes `q_0..q_L` (q_0 is the last one left after rescaling).
    pub(crate) q: Vec<u32>,
    /// Special primes for hybrid key switching.
    pub(crate) p: Vec<u32>,
    /// Auxiliary primes (BFV multiplication's extension basis; empty for CKKS). They never
    /// carry key material, so they do not count toward the security bound.
    pub(crate) aux: Vec<u32>,
    /// Number of key-switching digits.
    pub(crate) dnum: usize,
    pub(crate) security: Security,
    /// How `q` groups into levels.
    pub(crate) shape: LevelShape,
}

impl RlweParams {
    /// Validates and builds parameters with one prime per level.
    pub fn new(
        n: usize,
        q: Vec<u32>,
        p: Vec<u32>,
        aux: Vec<u32>,
        dnum: usize,
        security: Security,
    ) -> Result<Self> {
        Self::with_shape(n, q, p, aux, dnum, security, LevelShape::SINGLE)
    }

    /// Validates and builds parameters whose ciphertext primes group into levels by `shape`.
    pub fn with_shape(
        n: usize,
        q: Vec<u32>,
        p: Vec<u32>,
        aux: Vec<u32>,
        dnum: usize,
        security: Security,
        shape: LevelShape,
    ) -> Result<Self> {
        if !n.is_power_of_two() || !(1024..=65536).contains(&n) {
            return Err(Error::InvalidParameters(format!(
                "ring degree N = {n} must be a power of two in 2^10..=2^16"
            )));
        }
        if q.is_empty() {
            return Err(Error::InvalidParameters(
                "need at least one ciphertext prime".into(),
            ));
        }
        if dnum == 0 || dnum > q.len() {
            return Err(Error::InvalidParameters(format!(
                "dnum = {dnum} must be in 1..={} (number of ciphertext primes)",
                q.len()
            )));
        }
        for &x in q.iter().chain(&p).chain(&aux) {
            // Checked here (not only when tables are built) because parameters also arrive from
            // untrusted serialized bytes.
            if x >= 1 << 30 || !crate::math::primes::is_prime(x as u64) {
                return Err(Error::InvalidParameters(format!(
                    "limb modulus {x} must be a prime below 2^30"
                )));
            }
            if !(x as u64 - 1).is_multiple_of(2 * n as u64) {
                return Err(Error::InvalidParameters(format!(
                    "prime {x} is not ≡ 1 mod 2N = {}",
                    2 * n
                )));
            }
        }
        let me = Self {
            n,
            q,
            p,
            aux,
            dnum,
            security,
            shape: LevelShape::SINGLE,
        };
        let me = me.with_level_shape(shape)?;
        if security == Security::Bits128 {
            let max = max_log_qp_128(n).unwrap_or(0);
            let log_qp = me.log_qp().ceil() as u32;
            if log_qp > max {
                return Err(Error::InsecureParameters {
                    n,
                    log_qp,
                    max_log_qp: max,
                });
            }
        }
        Ok(me)
    }

    /// Groups the ciphertext primes into levels of `shape.width` primes above `shape.base`
    /// base primes (they must add up to the number of ciphertext primes).
    pub fn with_level_shape(mut self, shape: LevelShape) -> Result<Self> {
        let bad_low = shape.is_segmented() && shape.low_width == 0;
        if shape.base == 0
            || shape.width == 0
            || bad_low
            || shape.level_of(self.q.len()).is_none()
            || shape.level_of(self.q.len()) < Some(shape.low_levels)
        {
            return Err(Error::InvalidParameters(format!(
                "{} ciphertext primes cannot form {} base prime(s) plus {} level(s) of {} and levels of {}",
                self.q.len(),
                shape.base,
                shape.low_levels,
                shape.low_width,
                shape.width
            )));
        }
        self.shape = shape;
        self.check_special_primes()?;
        Ok(self)
    }

    /// The key-switching digits: `dnum` contiguous ranges of ciphertext primes. Uniform
    /// chains split them by count (as they always have, so stored keys stay valid); a
    /// two-segment chain, whose primes differ in size, splits them by bits, so that no digit
    /// needs more special primes than the others.
    pub fn digit_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let nq = self.q.len();
        if !self.shape.is_segmented() {
            let alpha = nq.div_ceil(self.dnum);
            return (0..self.dnum)
                .map(|j| j * alpha..((j + 1) * alpha).min(nq))
                .filter(|r| !r.is_empty())
                .collect();
        }
        let bits: Vec<f64> = self.q.iter().map(|&x| (x as f64).log2()).collect();
        balanced_digits(&bits, self.dnum)
    }

    /// log2 of the largest digit's modulus.
    pub fn max_digit_bits(&self) -> f64 {
        self.digit_ranges()
            .into_iter()
            .map(|r| self.q[r].iter().map(|&x| (x as f64).log2()).sum::<f64>())
            .fold(0.0, f64::max)
    }

    /// Hybrid key switching needs special primes that cover a digit: by count on uniform
    /// chains (whose primes are alike), by bits on two-segment chains.
    fn check_special_primes(&self) -> Result<()> {
        if self.shape.is_segmented() {
            let have: f64 = self.p.iter().map(|&x| (x as f64).log2()).sum();
            let need = self.max_digit_bits();
            if have < need {
                return Err(Error::InvalidParameters(format!(
                    "hybrid key switching with dnum = {} needs special primes of at least {need:.0} bits, got {have:.0}",
                    self.dnum
                )));
            }
            return Ok(());
        }
        let alpha = self.q.len().div_ceil(self.dnum);
        if self.p.len() < alpha {
            return Err(Error::InvalidParameters(format!(
                "hybrid key switching with dnum = {} needs at least {alpha} special primes, got {}",
                self.dnum,
                self.p.len()
            )));
        }
        Ok(())
    }

    /// How the ciphertext primes group into levels.
    pub fn level_shape(&self) -> LevelShape {
        self.shape
    }

    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Ciphertext primes.
    pub fn q_primes(&self) -> &[u32] {
        &self.q
    }

    /// Special primes.
    pub fn p_primes(&self) -> &[u32] {
        &self.p
    }

    /// Auxiliary primes.
    pub fn aux_primes(&self) -> &[u32] {
        &self.aux
    }

    /// Key-switching digits.
    pub fn dnum(&self) -> usize {
        self.dnum
    }

    /// Highest level L (number of rescalings a fresh ciphertext allows).
    pub fn max_level(&self) -> usize {
        self.shape.level_of(self.q.len()).unwrap_or(0)
    }

    /// log2 of the product of ciphertext and special primes (what the security bound limits).
    pub fn log_qp(&self) -> f64 {
        self.q
            .iter()
            .chain(&self.p)
            .map(|&x| (x as f64).log2())
            .sum()
    }

    /// log2 Q of the ciphertext primes.
    pub fn log_q(&self) -> f64 {
        self.q.iter().map(|&x| (x as f64).log2()).sum()
    }

    /// Security setting.
    pub fn security(&self) -> Security {
        self.security
    }

    /// A stable fingerprint of the parameters (FNV-1a over the primes and sizes), used to
    /// reject mixing objects from different parameter sets.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.n as u64);
        eat(self.dnum as u64);
        for (tag, list) in [(1u64, &self.q), (2, &self.p), (3, &self.aux)] {
            eat(tag);
            eat(list.len() as u64);
            list.iter().for_each(|&x| eat(x as u64));
        }
        // Only non-default shapes count, so single-prime fingerprints stay what they were.
        if self.shape != LevelShape::SINGLE {
            eat(4);
            eat(self.shape.base as u64);
            eat(self.shape.width as u64);
            if self.shape.is_segmented() {
                eat(self.shape.low_levels as u64);
                eat(self.shape.low_width as u64);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_segment_shape_counts_limbs_both_ways() {
        // 2 base primes, 3 levels of 2, then levels of 3.
        let s = LevelShape::two_segment(2, 3, 2, 3);
        let limbs: Vec<usize> = (0..=5).map(|l| s.limbs(l)).collect();
        assert_eq!(limbs, [2, 4, 6, 8, 11, 14]);
        for (l, &n) in limbs.iter().enumerate() {
            assert_eq!(s.level_of(n), Some(l));
        }
        for off_chain in [0, 1, 3, 5, 7, 9, 10, 12, 13] {
            assert_eq!(s.level_of(off_chain), None, "{off_chain}");
        }
        assert_eq!((s.width_at(3), s.width_at(4)), (2, 3));
        let u = LevelShape::uniform(1, 2);
        assert!(!u.is_segmented());
        assert_eq!(
            (u.limbs(3), u.level_of(7), u.level_of(6)),
            (7, Some(3), None)
        );
    }

    #[test]
    fn balanced_digits_split_by_bits_not_count() {
        // Small primes first, large on top: a split by count (4 + 4) would give digits of
        // 80 and 107 bits; by bits the largest is 100.
        let bits = [20.0, 20.0, 20.0, 20.0, 20.0, 29.0, 29.0, 29.0];
        let d = balanced_digits(&bits, 2);
        assert_eq!(d, vec![0..5, 5..8]);
        let sums: Vec<f64> = d.iter().map(|r| bits[r.clone()].iter().sum()).collect();
        assert_eq!(sums, [100.0, 87.0]);
        // Every prime lands in exactly one digit, in order.
        let d = balanced_digits(&[30.0; 7], 3);
        assert_eq!(d.iter().map(|r| r.len()).sum::<usize>(), 7);
        assert!(d.windows(2).all(|w| w[0].end == w[1].start));
    }
}
