//! CKKS bootstrapping: a ciphertext at level 0 comes back at a high level with the same
//! message, so computations of any depth can continue without the key holder.
//!
//! The pipeline (Cheon–Han–Kim–Kim–Song 2018, with the refinements of Chen–Chillotti–Song
//! 2019 and Bossuat et al. 2021/2022):
//!
//! 1. **Sparse-secret encapsulation** — key switch at level 0 from the (dense) secret `s` to an
//!    ephemeral sparse secret `s'` of Hamming weight `h` (default 32). The key for it exists
//!    only over `q_0` and the fewest special primes that keep its noise negligible (2^116 at
//!    the N = 2^16 preset), a modulus at which a sparse secret is safe (see `low_key_shape`
//!    and `scripts/sparse_secret_security.py`).
//! 2. **ModRaise** — the level-0 residues are lifted exactly (centered) to every prime. The
//!    ciphertext now decrypts to `t = Δ·m + q_0·I` with `|I| ≤ (h+1)/2` coefficient-wise, a
//!    bound that holds for every ciphertext, not with some probability. A second key switch,
//!    at the top, returns to `s`.
//! 3. **CoeffsToSlots** — the inverse of the decoding FFT, factored into its `log2(N/2)`
//!    butterfly stages and merged into [`BootstrapParams::cts_levels`] groups; each group is a
//!    matrix with few diagonals, applied with baby-step giant-step and hoisted rotations, one
//!    level each. The bit reversal is skipped: the slots then hold the coefficients in
//!    bit-reversed order, which EvalMod (slot-wise) does not mind and SlotsToCoeffs undoes.
//!    Real and imaginary halves are split with one conjugation.
//! 4. **EvalMod** — `sin(2πx)/(2π) ≈ x mod 1` for `x = t/q_0`: a Chebyshev interpolant of
//!    `cos(2π(x − 1/4)/2^r)` on `[−K, K]`, then `r` double-angle steps `c ← 2c² − 1`.
//! 5. **SlotsToCoeffs** — the decoding FFT's stages, grouped the same way.
//!
//! Two options ([`BootstrapParams::sparse`], [`BootstrapParams::with_arcsine`]):
//! * **Sparse slots.** A message whose slots repeat with period `n ≤ N/4` lives in the subring
//!   `Z[X^(N/2n)]`. After ModRaise a trace (`log2(N/2n)` rotate-and-adds) removes the raised
//!   ciphertext's other coefficients; the transforms then work on `n`-periodic vectors
//!   (`log2 n` stages, diagonals of period `n` or `2n`), and the real and imaginary halves share
//!   one ciphertext (`[re | im]` over a period of `2n`), so EvalMod runs once, not twice.
//! * **Arcsine.** `y + y³/6` after EvalMod (2 levels) turns `sin(2πx)` back into `2πx` to third
//!   order, for messages whose coefficients are large (constants, short periods).
//!
//! The linear transforms' diagonals are computed once in `f64` and cached as plaintexts at
//! the level where they are used. Everything runs through the [`crate::backend::Backend`]
//! trait, so it runs on CPU, wgpu and CUDA alike.
//!
//! ```no_run
//! use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
//! use hetensor::ckks::CkksContext;
//! # fn main() -> hetensor::Result<()> {
//! let bp = BootstrapParams::n16()?;
//! let ctx = CkksContext::new(bp.ckks().clone())?;
//! let keys = ctx.keygen()?;
//! let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin)?;
//! let level = bk.output_level();
//! let ct = ctx.encrypt(&ctx.encode(&[0.5, -0.25], ctx.natural_scale(0), 0)?, &keys.public)?;
//! let fresh = ctx.bootstrap(&ct, &bk)?;
//! assert_eq!(fresh.level(), level);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::sync::{Arc, OnceLock};

use num_complex::Complex64;

use crate::backend::PolyBatch;
use crate::ckks::{CkksContext, CkksParams};
use crate::error::{Error, Result};
use crate::rlwe::ciphertext as ct_ops;
use crate::rlwe::keys::{ckks_galois_element, galois_element_conjugate, KeySwitchKey};
use crate::rlwe::{Ciphertext, GaloisKeys, RelinKey, SecretKey, Security};
use crate::serialize::objects::{key_set, read_ksk_over, write_ksk};
use crate::serialize::{self, Decode, Decoder, Encode, Encoder, Kind, WriteOptions};

/// How a bootstrap spends its levels, and the chain it runs on. Read-only: a preset
/// ([`Self::n16`], [`Self::n15`], [`Self::insecure_test_ring`]) fixes the chain and the level
/// budget together, and [`Self::sparse`] / [`Self::with_arcsine`] derive checked variants.
#[derive(Clone, Debug)]
pub struct BootstrapParams {
    /// The CKKS chain: computation levels at the bottom, bootstrapping's on top.
    pub(crate) ckks: CkksParams,
    /// Levels (merged FFT groups) CoeffsToSlots uses: fewer levels, more rotations each.
    pub(crate) cts_levels: usize,
    /// Levels SlotsToCoeffs uses.
    pub(crate) stc_levels: usize,
    /// Degree of the Chebyshev interpolant of the scaled cosine.
    pub(crate) cheb_degree: usize,
    /// Double-angle steps after it (each halves the interpolation interval).
    pub(crate) double_angles: usize,
    /// Hamming weight of the ephemeral sparse secret; `|I| ≤ (h+1)/2` sets EvalMod's interval.
    pub(crate) ephemeral_hamming: usize,
    /// Complex slots bootstrapped: `N/2` (full), or a power of two `n ≤ N/4` for a
    /// **sparse-slot** bootstrap of a ciphertext whose slots repeat with period `n` (see
    /// [`Self::sparse`]).
    pub(crate) slots: usize,
    /// Correct EvalMod's sine by the arcsine's first terms (see [`Self::with_arcsine`]).
    pub(crate) arcsine: bool,
}

impl BootstrapParams {
    /// The CKKS chain: computation levels at the bottom, bootstrapping's on top.
    pub fn ckks(&self) -> &CkksParams {
        &self.ckks
    }

    /// Levels (merged FFT groups) CoeffsToSlots uses.
    pub fn cts_levels(&self) -> usize {
        self.cts_levels
    }

    /// Levels SlotsToCoeffs uses.
    pub fn stc_levels(&self) -> usize {
        self.stc_levels
    }

    /// EvalMod's Chebyshev degree and double-angle steps.
    pub fn eval_mod(&self) -> (usize, usize) {
        (self.cheb_degree, self.double_angles)
    }

    /// Hamming weight of the ephemeral sparse secret.
    pub fn ephemeral_hamming(&self) -> usize {
        self.ephemeral_hamming
    }

    /// Complex slots bootstrapped: `N/2`, or the period of a sparse-slot bootstrap.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether EvalMod's sine is corrected by the arcsine's first terms.
    pub fn arcsine(&self) -> bool {
        self.arcsine
    }

    /// Levels EvalMod consumes: the Chebyshev series ([`chebyshev_depth`]: 6 at degree 39)
    /// and the double angles.
    pub fn eval_mod_levels(&self) -> usize {
        eval_mod_depth(self.cheb_degree, self.double_angles)
    }

    /// Levels the arcsine correction takes (0 or 2), below EvalMod's.
    pub fn arcsine_levels(&self) -> usize {
        2 * usize::from(self.arcsine)
    }

    /// Levels one bootstrap consumes.
    pub fn depth(&self) -> usize {
        self.cts_levels + self.eval_mod_levels() + self.arcsine_levels() + self.stc_levels
    }

    /// Levels left for computation after a bootstrap (its output level).
    pub fn output_level(&self) -> usize {
        self.ckks.levels().saturating_sub(self.depth())
    }

    /// The same bootstrap for ciphertexts whose slots repeat with period `slots` (a power of
    /// two ≤ N/4): a vector of `slots` values encoded replicated, like a model's weights
    /// replicated in blocks. A trace (`log2(N/(2·slots))` rotate-and-adds at the top) keeps
    /// only the subring the message lives in; the transforms then have `log2(slots)` stages
    /// instead of `log2(N/2)`, real and imaginary parts share one ciphertext, so EvalMod
    /// runs once instead of twice, and SlotsToCoeffs amplifies EvalMod's error by
    /// `√slots` instead of `√(N/2)`. The output repeats with the same period.
    pub fn sparse(mut self, slots: usize) -> Result<Self> {
        let full = self.ckks.n() / 2;
        if !slots.is_power_of_two() || slots > full / 2 {
            return Err(Error::InvalidParameters(format!(
                "a sparse-slot bootstrap takes a power-of-two period ≤ N/4 = {} slots, not {slots}",
                full / 2
            )));
        }
        self.slots = slots;
        self.check()?;
        Ok(self)
    }

    /// The same bootstrap with EvalMod's output `y = sin(2πx)` corrected to `y + y³/6`, the
    /// arcsine's first terms: `sin(2πx)/(2π)` is `x` only up to `(2π)²x³/6`, which is what limits
    /// the precision of messages whose coefficients are large (a constant or a short period:
    /// `x = Δ·m/q_0` up to `2^-8`, error up to `2^-13.3`); the correction leaves `~(2πx)^5/12`.
    /// Costs 2 levels, taken from the computation levels (the preset's 8 become 6), on the same
    /// chain.
    pub fn with_arcsine(mut self) -> Result<Self> {
        self.arcsine = true;
        self.check()?;
        Ok(self)
    }

    /// Whether this bootstraps fewer than the ring's `N/2` slots.
    pub fn is_sparse(&self) -> bool {
        self.slots < self.ckks.n() / 2
    }

    /// EvalMod's interval half-width: the bound `(h+1)/2` on `I` plus room for the message.
    pub fn k_bound(&self) -> f64 {
        (self.ephemeral_hamming as f64 + 1.0) / 2.0 + 0.5
    }

    /// Bootstrapping at N = 2^16, 128-bit (HE-standard bound on log2 QP), 2^15 complex slots,
    /// on a two-segment chain: 8 computation levels at Δ = 2^48 (two ~24-bit primes each;
    /// the NTT primes ≡ 1 mod 2^17 below 2^23 are too few for 2^40 levels) over a ~2^56 base,
    /// SlotsToCoeffs's 3 levels at 2^48 too, and on top CoeffsToSlots (3) and EvalMod (9:
    /// degree 39, 3 double angles) at 2^56 (two ~28-bit primes), where the raised
    /// ciphertext's large values need the precision; 3 key-switching digits balanced by bits
    /// (log2 QP = 1736 of 1770). A bootstrapped ciphertext comes back at level 8 with about
    /// 18 bits over random full slots.
    ///
    /// [`Self::n15`] is the smaller, less precise alternative.
    pub fn n16() -> Result<Self> {
        Self::with_chain(ChainSpec {
            log_n: 16,
            computation: N16_COMPUTATION_LEVELS,
            cts_levels: 3,
            stc_levels: 3,
            scale_bits: COMPUTATION_SCALE_BITS,
            upper_bits: UPPER_SCALE_BITS,
            eval_mod: DEFAULT_EVAL_MOD,
            dnum: Some(3),
            security: Security::Bits128,
        })
    }

    /// Bootstrapping at N = 2^15, 128-bit (log2 QP ≤ 881), 2^14 complex slots: half the ring
    /// of [`Self::n16`], at a price. With 32-bit words the whole pipeline has to fit in 881
    /// bits, so it takes 2 + 2 transform levels (groups of 7 FFT stages), EvalMod's 9 levels
    /// at 2^52, 10 key-switching digits (keys ~3.2 GB, no smaller than at N = 2^16), and
    /// leaves **one** computation level (Δ = 2^44) at about 15.5 bits over full slots: a
    /// product, or a plaintext layer, between refreshes. Two levels fit only at 2^48 for
    /// EvalMod, which costs 3.5 bits (`search_n15_chains` in this module's tests).
    pub fn n15() -> Result<Self> {
        Self::with_chain(ChainSpec {
            log_n: 15,
            computation: 1,
            cts_levels: 2,
            stc_levels: 2,
            scale_bits: 44,
            upper_bits: 52,
            eval_mod: DEFAULT_EVAL_MOD,
            dnum: Some(10),
            security: Security::Bits128,
        })
    }

    /// The 128-bit preset for N = 2^`log_n` ([`Self::n15`], [`Self::n16`]), or an error that
    /// says which rings have one.
    pub fn preset(log_n: u32) -> Result<Self> {
        match log_n {
            15 => Self::n15(),
            16 => Self::n16(),
            _ => Err(Error::InvalidParameters(format!(
                "no 128-bit bootstrapping preset at N = 2^{log_n}: N = 2^15 and 2^16 have one (smaller rings cannot hold a bootstrap's levels at 128-bit security)"
            ))),
        }
    }

    /// A bootstrap at a small ring for tests (`log_n` 10..=13): the same pipeline and code
    /// paths, **not secure** (the chain is far beyond what such an N allows).
    pub fn insecure_test_ring(log_n: u32, computation_levels: usize) -> Result<Self> {
        Self::with_chain(ChainSpec {
            log_n,
            computation: computation_levels,
            cts_levels: 3,
            stc_levels: 2,
            scale_bits: COMPUTATION_SCALE_BITS,
            upper_bits: UPPER_SCALE_BITS,
            eval_mod: DEFAULT_EVAL_MOD,
            dnum: Some(4),
            security: Security::InsecureForTestingOnly,
        })
    }

    /// The chain `spec` describes, with an ephemeral secret of weight h = 32: a two-segment
    /// chain with `computation` + SlotsToCoeffs levels at `spec.scale_bits` over a base
    /// [`MESSAGE_RATIO_BITS`] above it, and CoeffsToSlots + EvalMod at `spec.upper_bits` on top.
    fn with_chain(spec: ChainSpec) -> Result<Self> {
        let (cheb_degree, double_angles) = spec.eval_mod;
        let mut builder = CkksParams::builder()
            .log_n(spec.log_n)
            .scale_bits(spec.scale_bits)
            .base_bits(spec.scale_bits + MESSAGE_RATIO_BITS)
            .depth(spec.computation + spec.stc_levels)
            .upper_levels(
                spec.cts_levels + eval_mod_depth(cheb_degree, double_angles),
                spec.upper_bits,
            )
            .security(spec.security);
        if let Some(d) = spec.dnum {
            builder = builder.dnum(d);
        }
        let ckks = builder.build()?;
        Ok(Self {
            ckks,
            cts_levels: spec.cts_levels,
            stc_levels: spec.stc_levels,
            cheb_degree,
            double_angles,
            ephemeral_hamming: 32,
            slots: 1 << (spec.log_n - 1),
            arcsine: false,
        })
    }

    fn check(&self) -> Result<()> {
        let slots = self.slots;
        let full = self.ckks.n() / 2;
        if !slots.is_power_of_two() || (slots != full && slots > full / 2) {
            return Err(Error::InvalidParameters(format!(
                "bootstrapping takes N/2 = {full} slots or a power of two ≤ N/4, not {slots}"
            )));
        }
        let stages = slots.trailing_zeros() as usize;
        if self.cts_levels == 0 || self.stc_levels == 0 {
            return Err(Error::InvalidParameters(
                "CoeffsToSlots and SlotsToCoeffs need at least one level each".into(),
            ));
        }
        if slots == full && (self.cts_levels > stages || self.stc_levels > stages) {
            return Err(Error::InvalidParameters(format!(
                "at most {stages} levels per linear transform at {slots} slots (one per FFT stage)"
            )));
        }
        if self.depth() > self.ckks.levels() {
            return Err(Error::InvalidParameters(format!(
                "bootstrapping needs {} levels ({} CoeffsToSlots + {} EvalMod + {} arcsine + {} SlotsToCoeffs) but the chain has {}",
                self.depth(),
                self.cts_levels,
                self.eval_mod_levels(),
                self.arcsine_levels(),
                self.stc_levels,
                self.ckks.levels()
            )));
        }
        let shape = self.ckks.rlwe.level_shape();
        let upper = self.ckks.levels() - self.ckks.computation_levels();
        if shape.is_segmented()
            && (upper != self.cts_levels + self.eval_mod_levels()
                || shape.low_levels < self.stc_levels + self.arcsine_levels())
        {
            return Err(Error::InvalidParameters(format!(
                "on a two-segment chain CoeffsToSlots and EvalMod ({} + {} levels) must fill the {upper} upper levels and the arcsine and SlotsToCoeffs ({} + {}) fit in the {} below",
                self.cts_levels,
                self.eval_mod_levels(),
                self.arcsine_levels(),
                self.stc_levels,
                shape.low_levels
            )));
        }
        if self.cheb_degree < 2 || self.ephemeral_hamming == 0 || self.ephemeral_hamming > full {
            return Err(Error::InvalidParameters(format!(
                "bootstrapping needs a Chebyshev degree ≥ 2 and a Hamming weight in 1..={full}"
            )));
        }
        Ok(())
    }
}

/// The shape of a bootstrapping chain (what [`BootstrapParams::with_chain`] builds).
#[derive(Clone, Copy, Debug)]
struct ChainSpec {
    log_n: u32,
    /// Levels left for computation after a bootstrap.
    computation: usize,
    cts_levels: usize,
    stc_levels: usize,
    /// Scale of the computation and SlotsToCoeffs levels (the base is
    /// [`MESSAGE_RATIO_BITS`] above it).
    scale_bits: u32,
    /// Scale of CoeffsToSlots's and EvalMod's levels.
    upper_bits: u32,
    /// EvalMod's Chebyshev degree and double-angle steps.
    eval_mod: (usize, usize),
    /// Key-switching digits (`None`: the fewest that fit the security bound).
    dnum: Option<usize>,
    security: Security,
}

/// log2 of `q_0/Δ`: the headroom a level-0 message has. Every bit of it costs a bit of
/// output precision (SlotsToCoeffs multiplies EvalMod's error by `q_0/(2πΔ)`); too little
/// makes `sin(2πx)/(2π)` a poor `x` for large coefficients (error `(2π)²x³/6`).
const MESSAGE_RATIO_BITS: u32 = 8;

/// Levels the N = 2^16 preset leaves for computation: the most that fit the 128-bit bound
/// with 3 key-switching digits (more digits would multiply the ~40 rotation keys' size).
const N16_COMPUTATION_LEVELS: usize = 8;

/// Scale of the computation levels (and SlotsToCoeffs's): precision after a rescale there
/// is about 2^-26, well below what bootstrapping leaves.
const COMPUTATION_SCALE_BITS: u32 = 48;

/// Scale of CoeffsToSlots's and EvalMod's levels. The gap to the base modulus
/// (2^(56−48) here) is made up inside CoeffsToSlots, a few bits per group, which keeps its
/// plaintexts' coefficients under the encoder's 2^62.
const UPPER_SCALE_BITS: u32 = 56;

/// EvalMod's Chebyshev degree and double angles: degree 39 over `[−K, K]/2^3` with `K = 17`
/// (h = 32) interpolates the cosine to ~2^-43, each double angle doubles the noise it gets.
const DEFAULT_EVAL_MOD: (usize, usize) = (39, 3);

fn eval_mod_depth(cheb_degree: usize, double_angles: usize) -> usize {
    chebyshev_depth(cheb_degree) + double_angles
}

/// Babies `T_1 … T_{b−1}` of [`CkksContext::evaluate_chebyshev`] at this degree: `b = 2^l`
/// with `l` one more than half of `ceil(log2 d)` (see there why).
fn chebyshev_babies(degree: usize) -> usize {
    1 << (ceil_log2(degree).div_ceil(2) + 1)
}

/// Levels [`CkksContext::evaluate_chebyshev`] consumes for a series of degree `d`: the
/// deepest path of its baby-step giant-step recursion, where `T_k` sits `ceil(log2 k)`
/// levels down, a combination of babies costs one rescale after its deepest term, and a
/// product `q·T_M` one after the deeper of the two. At most `ceil(log2 d) + 1`; one less for
/// degrees such as 9 or 39 (EvalMod's), whose quotients are shallow enough to meet their giant.
pub fn chebyshev_depth(degree: usize) -> usize {
    fn piece(d: usize, babies: usize) -> usize {
        if d < babies {
            return ceil_log2(d) + 1;
        }
        let m = 1usize << d.ilog2();
        let quotient = if d == m { 0 } else { piece(d - m, babies) };
        (ceil_log2(m).max(quotient) + 1).max(piece(m - 1, babies))
    }
    piece(degree.max(1), chebyshev_babies(degree.max(1)))
}

fn ceil_log2(x: usize) -> usize {
    (usize::BITS - x.saturating_sub(1).leading_zeros()) as usize
}

/// A slot-vector linear map as its cyclic diagonals: `out[r] = Σ_d diag_d[r] · in[r + d]`.
type Diagonals = BTreeMap<usize, Vec<Complex64>>;

/// `a ∘ b` (apply `b` first).
fn compose(a: &Diagonals, b: &Diagonals, n: usize) -> Diagonals {
    let mut out = Diagonals::new();
    for (&da, va) in a {
        for (&db, vb) in b {
            let d = (da + db) % n;
            let acc = out
                .entry(d)
                .or_insert_with(|| vec![Complex64::new(0.0, 0.0); n]);
            for r in 0..n {
                acc[r] += va[r] * vb[(r + da) % n];
            }
        }
    }
    out.retain(|_, v| v.iter().any(|c| c.norm() > 1e-300));
    out
}

/// The root the special FFT multiplies by at position `j` of a stage with half-length `h`:
/// `exp(2πi · (5^j mod 8h) / 8h)` (HEAAN's `ksiPows[(rotGroup[j] % lenq) · M / lenq]`).
fn stage_root(j: usize, h: usize) -> Complex64 {
    let lenq = 8 * h;
    let mut g = 1usize;
    for _ in 0..j {
        g = g * 5 % lenq;
    }
    Complex64::from_polar(1.0, 2.0 * PI * g as f64 / lenq as f64)
}

/// One butterfly stage of the decoding FFT (`inverse = false`) or of its inverse, with
/// half-length `h`, times `factor`.
fn fft_stage(n: usize, h: usize, inverse: bool, factor: f64) -> Diagonals {
    let zero = Complex64::new(0.0, 0.0);
    let mut d0 = vec![zero; n];
    let mut up = vec![zero; n];
    let mut down = vec![zero; n];
    for r in 0..n {
        let pos = r % (2 * h);
        let j = pos % h;
        let w = stage_root(j, h);
        let f = Complex64::new(factor, 0.0);
        match (pos < h, inverse) {
            // out[r] = in[r] + w·in[r+h]
            (true, false) => {
                d0[r] = f;
                up[r] = w * f;
            }
            // out[r] = in[r−h] − w·in[r]
            (false, false) => {
                down[r] = f;
                d0[r] = -w * f;
            }
            // out[r] = in[r] + in[r+h]
            (true, true) => {
                d0[r] = f;
                up[r] = f;
            }
            // out[r] = (in[r−h] − in[r])·conj(w)
            (false, true) => {
                down[r] = w.conj() * f;
                d0[r] = -w.conj() * f;
            }
        }
    }
    let mut m = Diagonals::new();
    m.insert(0, d0);
    let add = |m: &mut Diagonals, d: usize, v: Vec<Complex64>| {
        let e = m.entry(d).or_insert_with(|| vec![zero; n]);
        e.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    };
    add(&mut m, h % n, up);
    add(&mut m, (n - h) % n, down);
    m
}

/// The decoding FFT's stages in the order they apply (`h = 1, 2, …, n/2`) or the inverse's
/// (`h = n/2, …, 1`), merged into `groups` consecutive groups, the product of all scaled by
/// `total` (spread evenly so each group's constants keep the same precision).
fn grouped_transform(n: usize, inverse: bool, groups: usize, total: f64) -> Vec<Diagonals> {
    let stages = n.trailing_zeros() as usize;
    let mut hs: Vec<usize> = (0..stages).map(|k| 1usize << k).collect();
    if inverse {
        hs.reverse();
    }
    let per_stage = total.abs().powf(1.0 / stages as f64) * if inverse { 0.5 } else { 1.0 };
    let sign_fix = total.signum();
    let base = stages / groups;
    let extra = stages % groups;
    let mut out = Vec::with_capacity(groups);
    let mut it = hs.into_iter();
    for g in 0..groups {
        let count = base + usize::from(g < extra);
        // More groups than stages (a sparse bootstrap of few slots on a chain planned for
        // more): the spare groups are the identity, a level spent on one product.
        // (With no stage at all, one slot, the first carries the whole factor.)
        let identity = if stages == 0 && g == 0 {
            total.abs()
        } else {
            1.0
        };
        let mut m: Option<Diagonals> =
            (count == 0).then(|| Diagonals::from([(0, vec![Complex64::new(identity, 0.0); n])]));
        for _ in 0..count {
            let h = it.next().expect("stage count");
            let s = fft_stage(n, h, inverse, per_stage);
            m = Some(match m {
                None => s,
                Some(prev) => compose(&s, &prev, n),
            });
        }
        let mut m = m.expect("non-empty group");
        if g == 0 && sign_fix < 0.0 {
            m.values_mut().flatten().for_each(|c| *c = -*c);
        }
        out.push(m);
    }
    out
}

/// A diagonal under one giant step: the index of its baby rotation, and its values.
type BabyDiagonal = (usize, Vec<Complex64>);

/// One linear-transform group, planned for baby-step giant-step evaluation.
#[derive(Debug)]
struct LinearStep {
    /// Baby rotations (slot steps, shared by every giant step).
    babies: Vec<i64>,
    /// Per giant step: its rotation and, per baby, the diagonal pre-rotated by `−giant`.
    giants: Vec<(i64, Vec<BabyDiagonal>)>,
    /// The level it runs at, and the diagonals encoded at first use over the level's limbs
    /// and the special primes (they multiply rotations still in the key-switching basis).
    level: usize,
    encoded: OnceLock<Vec<Vec<EncodedDiagonal>>>,
    /// The scale the plaintexts were encoded for (input ct scale → output scale).
    in_scale: f64,
    out_scale: f64,
}

impl LinearStep {
    /// The giant steps in two Horner chains, each ordered away from 0: the positive giants
    /// ascending and the negative ones descending, as indices into `giants` (the zero giant,
    /// if any, needs no rotation). `Σ_j rot_{g_j}(S_j)` over one chain is
    /// `rot_{g_1}(S_1 + rot_{g_2 − g_1}(S_2 + …))`, so a chain of evenly spaced giants needs
    /// one key (`±n1·stride`) instead of one per giant, for as many key switches.
    fn giant_chains(&self) -> [Vec<usize>; 2] {
        let mut up: Vec<usize> = Vec::new();
        let mut down: Vec<usize> = Vec::new();
        for (i, (g, _)) in self.giants.iter().enumerate() {
            match g.signum() {
                1 => up.push(i),
                -1 => down.push(i),
                _ => {}
            }
        }
        // `giants` is sorted ascending: the negative ones come out farthest first.
        down.reverse();
        [up, down]
    }

    /// Rotation steps a chain applies: to its first giant, then between neighbours.
    fn chain_steps(&self, chain: &[usize]) -> Vec<i64> {
        let mut prev = 0;
        chain
            .iter()
            .map(|&i| {
                let g = self.giants[i].0;
                let step = g - prev;
                prev = g;
                step
            })
            .collect()
    }

    /// Every rotation step this group applies: its babies and its giant chains' steps.
    fn rotations(&self) -> impl Iterator<Item = i64> + '_ {
        let giants: Vec<i64> = self
            .giant_chains()
            .iter()
            .flat_map(|c| self.chain_steps(c))
            .collect();
        self.babies.iter().copied().chain(giants)
    }
}

/// A transform diagonal encoded over its step's limbs (NTT form), kept compact when it
/// repeats. A diagonal whose slots have period `p` is fixed by the rotation by `p`, so it
/// encodes to a polynomial in `X^(n/p)`; with the NTT's bit-reversed output order its words
/// then come in runs of `n/p` equal values. Two of the three groups of each transform have
/// periods 32 and 1024 at N = 2^16, so storing one word per run cut the resident diagonals
/// there from ~5.5 to ~2.2 GiB (measured); a use writes the runs out again (one pass over
/// the words, cheaper than the product that reads them).
#[derive(Debug)]
enum EncodedDiagonal {
    Full(PolyBatch),
    Runs {
        /// One word per run, limb-major.
        words: Vec<u32>,
        /// Run length (a power of two > 1).
        run: usize,
        limbs: Arc<[usize]>,
        n: usize,
    },
}

impl EncodedDiagonal {
    /// Stores `full` (one polynomial) by runs when its words repeat in every limb.
    fn compact(be: &dyn crate::backend::Backend, full: PolyBatch) -> Result<Self> {
        let n = full.n();
        let words = be.download(&full)?;
        let run = longest_runs(&words, n);
        if run < 2 {
            return Ok(Self::Full(full));
        }
        Ok(Self::Runs {
            words: words.iter().step_by(run).copied().collect(),
            run,
            limbs: full.limbs_arc(),
            n,
        })
    }

    /// The diagonal as a polynomial batch: borrowed, or written out from its runs.
    fn expand(&self, be: &dyn crate::backend::Backend) -> Result<std::borrow::Cow<'_, PolyBatch>> {
        match self {
            Self::Full(p) => Ok(std::borrow::Cow::Borrowed(p)),
            Self::Runs {
                words,
                run,
                limbs,
                n,
            } => {
                let mut out = Vec::with_capacity(words.len() * run);
                for &w in words {
                    out.extend(std::iter::repeat_n(w, *run));
                }
                let p = be.upload(out, limbs.clone(), 1, *n, crate::backend::Repr::Ntt)?;
                Ok(std::borrow::Cow::Owned(p))
            }
        }
    }
}

/// The longest power-of-two run length `r` (≤ `n`) such that every limb's words (`n` per
/// limb in `words`) are constant on each aligned block of `r`: the lowest set bit over all
/// positions where a word differs from its predecessor.
fn longest_runs(words: &[u32], n: usize) -> usize {
    let mut changes = 0usize;
    for limb in words.chunks_exact(n) {
        for (i, pair) in limb.windows(2).enumerate() {
            if pair[0] != pair[1] {
                changes |= i + 1;
            }
        }
    }
    if changes == 0 {
        n
    } else {
        1 << changes.trailing_zeros()
    }
}

/// CoeffsToSlots's last group for a sparse bootstrap: the `n`-slot map `m` on an
/// `n`-periodic input, written as a `2n`-periodic map whose second half is zero, so that the
/// imaginary parts can be moved there (one rotation by `n`) and share the ciphertext.
fn widen_zero_upper(m: Diagonals, n: usize) -> Diagonals {
    let zero = Complex64::new(0.0, 0.0);
    m.into_iter()
        .map(|(d, mut v)| {
            v.resize(2 * n, zero);
            // The same shift, signed as before: `d − n` is `d + n` modulo `2n`.
            (if d > n / 2 { d + n } else { d }, v)
        })
        .collect()
}

/// SlotsToCoeffs's first group for a sparse bootstrap: reads a `2n`-periodic real input
/// `[a | b]` as the complex vector `a + i·b` and applies the `n`-slot map `m` to it, with an
/// `n`-periodic output. Each diagonal of `m` splits into the two `2n`-diagonals that reach
/// the halves.
fn widen_join_halves(m: &Diagonals, n: usize) -> Diagonals {
    let zero = Complex64::new(0.0, 0.0);
    let i = Complex64::new(0.0, 1.0);
    let mut out = Diagonals::new();
    for (&d, v) in m {
        for r in 0..2 * n {
            let col = (r % n + d) % n;
            for (half, factor) in [(0, Complex64::new(1.0, 0.0)), (n, i)] {
                let diag = (col + half + 2 * n - r) % (2 * n);
                out.entry(diag).or_insert_with(|| vec![zero; 2 * n])[r] += v[r % n] * factor;
            }
        }
    }
    out
}

/// Plans one group for baby-step giant-step. The diagonals have length `period` (the slot
/// period of the vectors they act on; `n` for a full-slot bootstrap) and are written out
/// periodically to the ring's `n` slots: on a `period`-periodic vector a rotation by `s`
/// and by `s mod period` agree.
fn plan_step(
    m: Diagonals,
    period: usize,
    n: usize,
    level: usize,
    in_scale: f64,
    out_scale: f64,
) -> LinearStep {
    let signed = |d: usize| -> i64 {
        if d > period / 2 {
            d as i64 - period as i64
        } else {
            d as i64
        }
    };
    let shifts: Vec<i64> = m.keys().map(|&d| signed(d)).collect();
    let stride = shifts
        .iter()
        .filter(|&&s| s != 0)
        .map(|s| s.unsigned_abs())
        .min()
        .unwrap_or(1) as i64;
    let span = shifts.iter().map(|s| s.abs() / stride).max().unwrap_or(0) as usize;
    // Baby steps: about the square root of the diagonal count, a power of two. (A sparse
    // bootstrap's joining group has its diagonals in two clusters, near 0 and near ±period/2:
    // counted by what is there, not by the span, its babies stay few.)
    let count = (2 * span + 1).min(2 * m.len());
    let n1 = ((count as f64).sqrt().ceil() as usize)
        .next_power_of_two()
        .max(1) as i64;
    let mut babies: Vec<i64> = Vec::new();
    let mut giants: BTreeMap<i64, Vec<BabyDiagonal>> = BTreeMap::new();
    for (d, diag) in m {
        let k = signed(d) / stride;
        let b = k.rem_euclid(n1);
        let mut giant = (k - b) * stride;
        // ±period/2 are the same map on these vectors: a sparse bootstrap takes the positive
        // one, whose key its trace already has.
        if period < n && giant == -(period as i64 / 2) {
            giant = -giant;
        }
        let baby = b * stride;
        let bi = match babies.iter().position(|&x| x == baby) {
            Some(i) => i,
            None => {
                babies.push(baby);
                babies.len() - 1
            }
        };
        // diag'[r] = diag[r − giant]: rotating the sum by `giant` afterwards restores it.
        let g = giant.rem_euclid(period as i64) as usize;
        let rotated: Vec<Complex64> = (0..n)
            .map(|r| diag[(r % period + period - g) % period])
            .collect();
        giants.entry(giant).or_default().push((bi, rotated));
    }
    LinearStep {
        babies,
        giants: giants.into_iter().collect(),
        level,
        encoded: OnceLock::new(),
        in_scale,
        out_scale,
    }
}

/// Everything a bootstrap precomputes from the parameters: the transform plans and EvalMod's
/// polynomial. Shared by [`BootstrapKeys`] through an `Arc`.
#[derive(Debug)]
pub struct BootstrapPlan {
    params: BootstrapParams,
    cts: Vec<LinearStep>,
    stc: Vec<LinearStep>,
    /// Chebyshev coefficients of `cos(2π(K·u − 1/4)/2^r)` on `u ∈ [−1, 1]`.
    cheb: Vec<f64>,
    /// The scale the Chebyshev sum lands on.
    cheb_target: f64,
    /// The message scale StC's constants assume (the natural scale of level 0).
    message_scale: f64,
    /// `i` as the monomial `X^{N/2}` at EvalMod's input and output levels (NTT form).
    i_at_eval_in: PolyBatch,
    i_at_eval_out: PolyBatch,
}

impl BootstrapPlan {
    /// Plans a bootstrap for a context built from `params.ckks`.
    pub fn new(ctx: &CkksContext, params: &BootstrapParams) -> Result<Self> {
        params.check()?;
        if ctx.params().rlwe != params.ckks.rlwe {
            return Err(Error::ParameterMismatch(
                "the context was not built from these bootstrapping parameters".into(),
            ));
        }
        let n = ctx.slots();
        // The transforms act on `slots`-periodic vectors (all `n` slots when full).
        let slots = params.slots;
        let sparse = params.is_sparse();
        let top = ctx.chain_top();
        let q0 = ctx.base_modulus();
        let k = params.k_bound();
        let eval_level = top - params.cts_levels;
        // EvalMod ends at `mod_out`; the arcsine (if any) takes it down to SlotsToCoeffs's.
        let mod_out = eval_level - params.eval_mod_levels();
        let stc_level = mod_out - params.arcsine_levels();
        // CoeffsToSlots: the raised ciphertext has scale q0 (slots = embed(t)/q0); the output
        // slots are bit-reversed (t_k + i·t_{k+slots}) / (2·K·q0), halves then split by
        // conjugation. A sparse bootstrap's trace multiplies by n/slots first; the last group
        // leaves the upper half of a 2·slots period empty for the imaginary parts.
        let trace_gain = (n / slots) as f64;
        let cts_groups =
            grouped_transform(slots, true, params.cts_levels, 1.0 / (2.0 * k * trace_gain));
        // The raised slots are large (embed(I), hundreds) next to the result (|u| ≤ 1), so
        // the constants need all the precision a level gives: each group's plaintexts are
        // encoded near its level's modulus, and the scale climbs from q0 to EvalMod's natural
        // scale geometrically, the same few bits per group.
        let gain = ctx.natural_scale(eval_level) / q0;
        let last_cts = params.cts_levels - 1;
        let cts = cts_groups
            .into_iter()
            .enumerate()
            .map(|(g, m)| {
                let at = |j: usize| q0 * gain.powf(j as f64 / params.cts_levels as f64);
                let (m, period) = if sparse && g == last_cts {
                    (widen_zero_upper(m, slots), 2 * slots)
                } else {
                    (m, slots)
                };
                plan_step(m, period, n, top - g, at(g), at(g + 1))
            })
            .collect();
        // SlotsToCoeffs: EvalMod leaves sin(2π t/q0) ≈ 2π·Δ·m_k/q0 in the slots; the decoding
        // FFT times q0/(2π·Δ) gives the message's slots back. A sparse bootstrap's first group
        // joins the real and imaginary halves of the 2·slots period.
        let message_scale = ctx.natural_scale(0);
        let stc_groups = grouped_transform(
            slots,
            false,
            params.stc_levels,
            q0 / (2.0 * PI * message_scale),
        );
        let mut stc = Vec::new();
        // EvalMod's Chebyshev sum lands on the scale from which its double angles (each a
        // square and a rescale) end exactly on the natural scale of their output level.
        let cheb_target = (1..=params.double_angles).fold(ctx.natural_scale(mod_out), |s, j| {
            (s * ctx.level_modulus(mod_out + j)).sqrt()
        });
        let mut scale = ctx.natural_scale(stc_level);
        for (g, m) in stc_groups.into_iter().enumerate() {
            let level = stc_level - g;
            // The last group lands on Δ, the scale fresh encryptions have at any level, so
            // that a bootstrapped ciphertext meets freshly encoded operands without a fix-up.
            let out = if g + 1 == params.stc_levels {
                ctx.default_scale()
            } else {
                ctx.natural_scale(level - 1)
            };
            let (m, period) = if sparse && g == 0 {
                (widen_join_halves(&m, slots), 2 * slots)
            } else {
                (m, slots)
            };
            stc.push(plan_step(m, period, n, level, scale, out));
            scale = out;
        }
        let r = params.double_angles as i32;
        let cheb = chebyshev_interpolant(params.cheb_degree, |u| {
            (2.0 * PI * (k * u - 0.25) / 2f64.powi(r)).cos()
        });
        let monomial = |level: usize| -> Result<PolyBatch> {
            let mut c = vec![0i64; 2 * n];
            c[n] = 1;
            ctx.rlwe().upload_signed_ntt(&c, ctx.rlwe().q_limbs(level))
        };
        Ok(Self {
            params: params.clone(),
            cts,
            stc,
            cheb,
            cheb_target,
            message_scale,
            i_at_eval_in: monomial(eval_level)?,
            i_at_eval_out: monomial(stc_level)?,
        })
    }

    /// Slot steps the transforms rotate by (conjugation comes on top).
    pub fn rotation_steps(&self) -> Vec<i64> {
        let mut steps: Vec<i64> = self
            .cts
            .iter()
            .chain(&self.stc)
            .flat_map(LinearStep::rotations)
            .chain(self.trace_steps())
            .filter(|&s| s != 0)
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    /// Each rotation step with the highest level it is applied at: the trace's at the top of
    /// the chain (right after ModRaise), a transform group's at that group's input level. A
    /// step that only SlotsToCoeffs uses never meets a ciphertext above its levels, so its
    /// key needs none of the primes above ([`GaloisKeys::generate_below`]).
    pub fn rotation_levels(&self) -> Vec<(i64, usize)> {
        let top = self.cts.first().map_or(0, |s| s.level);
        let mut at: BTreeMap<i64, usize> = BTreeMap::new();
        let groups = self
            .cts
            .iter()
            .chain(&self.stc)
            .flat_map(|s| s.rotations().map(move |r| (r, s.level)));
        for (r, level) in groups.chain(self.trace_steps().into_iter().map(|r| (r, top))) {
            if r != 0 {
                let e = at.entry(r).or_insert(level);
                *e = (*e).max(level);
            }
        }
        at.into_iter().collect()
    }

    /// A sparse bootstrap's trace: rotate-and-add by `slots, 2·slots, …, N/4` sums the
    /// `N/(2·slots)` copies of the period (the rotation by `slots` also moves the imaginary
    /// parts into the upper half before EvalMod). Empty for a full-slot bootstrap.
    fn trace_steps(&self) -> Vec<i64> {
        let full = self.i_at_eval_in.n() / 2;
        let mut steps = Vec::new();
        let mut s = self.params.slots;
        while s < full {
            steps.push(s as i64);
            s *= 2;
        }
        steps
    }

    /// The parameters planned for.
    pub fn params(&self) -> &BootstrapParams {
        &self.params
    }
}

/// Chebyshev coefficients `c_0..c_d` of `f` on `[−1, 1]` (interpolation at the Chebyshev
/// nodes), for `f(u) ≈ Σ c_k T_k(u)`.
fn chebyshev_interpolant(degree: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let m = degree + 1;
    let nodes: Vec<f64> = (0..m)
        .map(|j| (PI * (j as f64 + 0.5) / m as f64).cos())
        .collect();
    let values: Vec<f64> = nodes.iter().map(|&u| f(u)).collect();
    (0..m)
        .map(|k| {
            let s: f64 = (0..m)
                .map(|j| values[j] * (PI * k as f64 * (j as f64 + 0.5) / m as f64).cos())
                .sum();
            s * if k == 0 { 1.0 } else { 2.0 } / m as f64
        })
        .collect()
}

/// Keys for bootstrapping: rotations the transforms need, conjugation, relinearization and
/// the two encapsulation switches, with the plan they were made for.
#[derive(Debug)]
pub struct BootstrapKeys {
    plan: Arc<BootstrapPlan>,
    galois: GaloisKeys,
    relin: RelinKey,
    /// `s → s'` over `q_0·P` only, and `s' → s` over the whole chain.
    to_sparse: KeySwitchKey,
    from_sparse: KeySwitchKey,
}

impl BootstrapKeys {
    /// Plans the bootstrap and generates exactly the keys it needs. The ephemeral sparse
    /// secret lives only inside this call and is wiped when it returns.
    pub fn generate(
        ctx: &CkksContext,
        params: &BootstrapParams,
        sk: &SecretKey,
        relin: &RelinKey,
    ) -> Result<Self> {
        let plan = Arc::new(BootstrapPlan::new(ctx, params)?);
        Self::for_plan(ctx, plan, sk, relin)
    }

    /// Keys for an existing plan.
    pub fn for_plan(
        ctx: &CkksContext,
        plan: Arc<BootstrapPlan>,
        sk: &SecretKey,
        relin: &RelinKey,
    ) -> Result<Self> {
        let rlwe = ctx.rlwe().clone();
        rlwe.check_fingerprint(sk.fingerprint, "secret key")?;
        let galois = ctx.with_sampler(|s| {
            GaloisKeys::generate_below(&rlwe, sk, &galois_shapes(ctx, &plan), s)
        })?;
        let shape = low_key_shape(&rlwe)?;
        let (to_sparse, from_sparse) = ctx.with_sampler(|s| {
            let sparse =
                SecretKey::generate_sparse(&rlwe, plan.params.ephemeral_hamming, sk.key_id, s)?;
            let to = KeySwitchKey::generate_low(&rlwe, &sparse, &sk.ntt, shape, s)?;
            let from = KeySwitchKey::generate(&rlwe, sk, &sparse.ntt, s)?;
            Ok((to, from))
        })?;
        Ok(Self {
            plan,
            galois,
            relin: relin.clone(),
            to_sparse,
            from_sparse,
        })
    }

    /// The level a bootstrapped ciphertext comes back at (levels left for computation).
    pub fn output_level(&self) -> usize {
        self.plan.stc.last().map(|s| s.level - 1).unwrap_or(0)
    }

    /// The plan these keys serve.
    pub fn plan(&self) -> &Arc<BootstrapPlan> {
        &self.plan
    }

    /// Bytes the keys' words occupy in memory (every digit's two polynomials, 32-bit words).
    pub fn memory_bytes(&self) -> usize {
        self.galois.memory_bytes()
            + self.relin.key_switch_key().memory_bytes()
            + self.to_sparse.memory_bytes()
            + self.from_sparse.memory_bytes()
    }

    /// The Galois keys (rotations and conjugation).
    pub fn galois(&self) -> &GaloisKeys {
        &self.galois
    }
}

impl BootstrapKeys {
    /// Serializes the keys in the compact format (seeded: each key's uniform half is stored
    /// as its 32-byte seed). The layout (transform levels, EvalMod, Hamming weight) travels
    /// with them; the plan is rebuilt on reading.
    pub fn to_bytes(&self, ctx: &CkksContext, opts: WriteOptions) -> Result<Vec<u8>> {
        serialize::to_bytes(ctx.rlwe(), self, opts)
    }

    /// Reads keys written by [`Self::to_bytes`] for a context of the same parameters: the
    /// parameter fingerprint, key set and every size are checked before anything is
    /// allocated, and the layout must fit the chain.
    pub fn from_bytes(ctx: &CkksContext, bytes: &[u8]) -> Result<Self> {
        let parts: KeyParts = serialize::from_bytes(ctx.rlwe(), bytes)?;
        let sparse_log = (parts.layout[4] & !FLAGS) >> SPARSE_SHIFT;
        let params = BootstrapParams {
            ckks: ctx.params().clone(),
            cts_levels: parts.layout[0] as usize,
            stc_levels: parts.layout[1] as usize,
            cheb_degree: parts.layout[2] as usize,
            double_angles: parts.layout[3] as usize,
            ephemeral_hamming: (parts.layout[4] & ((1 << SPARSE_SHIFT) - 1)) as usize,
            slots: match sparse_log {
                0 => ctx.slots(),
                l => 1usize << (l - 1),
            },
            arcsine: parts.layout[4] & ARCSINE_BIT != 0,
        };
        let plan = Arc::new(BootstrapPlan::new(ctx, &params)?);
        // Every key the plan needs, each over the primes it is used with (keys written before
        // low keys existed are all full, which serves every level too; keys written before
        // the giant steps ran as chains include some the plan no longer uses).
        let want = galois_shapes(ctx, &plan);
        let have = parts.galois.q_counts(ctx.rlwe());
        let full = ctx.rlwe().q_limbs(ctx.rlwe().max_level()).len();
        let fits = want.iter().all(|w| {
            have.iter()
                .any(|h| h.0 == w.0 && (h.1 == w.1 || h.1 == full))
        });
        if !fits {
            return Err(Error::Decode(format!(
                "Galois keys (element, primes) {have:?}; this bootstrapping layout needs {want:?}"
            )));
        }
        Ok(Self {
            plan,
            galois: parts.galois,
            relin: parts.relin,
            to_sparse: parts.to_sparse,
            from_sparse: parts.from_sparse,
        })
    }

    fn layout(&self) -> [u32; 5] {
        let p = &self.plan.params;
        // A sparse bootstrap's period rides in the Hamming weight's top byte (log2 + 1; 0 =
        // full slots) and the arcsine in its top bit, which keeps keys written before either
        // existed readable.
        let sparse_log = if p.is_sparse() {
            p.slots.trailing_zeros() + 1
        } else {
            0
        };
        [
            p.cts_levels as u32,
            p.stc_levels as u32,
            p.cheb_degree as u32,
            p.double_angles as u32,
            p.ephemeral_hamming as u32
                | sparse_log << SPARSE_SHIFT
                | if p.arcsine { ARCSINE_BIT } else { 0 }
                | LOW_KEYS_BIT,
        ]
    }
}

/// Bit position of a sparse bootstrap's `log2(slots) + 1` in the serialized layout's last word.
const SPARSE_SHIFT: u32 = 24;
/// The serialized layout's last word's flag for the arcsine correction.
const ARCSINE_BIT: u32 = 1 << 31;
/// The serialized layout's last word's flag for Galois keys below the top level, which then
/// follow the encapsulation keys with their prime counts (keys written before carry none).
const LOW_KEYS_BIT: u32 = 1 << 30;
/// The layout's last word without its flags.
const FLAGS: u32 = ARCSINE_BIT | LOW_KEYS_BIT;

/// `(Galois element, ciphertext primes)` of every key a plan needs: rotations at the primes of
/// the highest level they are applied at ([`BootstrapPlan::rotation_levels`]), conjugation
/// at EvalMod's input level.
fn galois_shapes(ctx: &CkksContext, plan: &BootstrapPlan) -> Vec<(usize, usize)> {
    let rlwe = ctx.rlwe();
    let n = rlwe.n();
    // Two steps can be one element (−N/4 and N/4 when a sparse period is N/4): the key serves
    // the higher of their levels.
    let mut shapes: BTreeMap<usize, usize> = BTreeMap::new();
    let rotations = plan
        .rotation_levels()
        .into_iter()
        .map(|(r, level)| (ckks_galois_element(n, r), rlwe.q_limbs(level).len()));
    // Conjugation splits CoeffsToSlots's output, at EvalMod's input level.
    let eval_in = plan.cts.last().map_or(rlwe.max_level(), |s| s.level - 1);
    let conjugation = (galois_element_conjugate(n), rlwe.q_limbs(eval_in).len());
    for (g, q) in rotations.chain([conjugation]) {
        let e = shapes.entry(g).or_insert(q);
        *e = (*e).max(q);
    }
    shapes.into_iter().collect()
}

/// What [`BootstrapKeys::from_bytes`] reads before it rebuilds the plan.
struct KeyParts {
    layout: [u32; 5],
    relin: RelinKey,
    galois: GaloisKeys,
    to_sparse: KeySwitchKey,
    from_sparse: KeySwitchKey,
}

/// The switch to the sparse key works over the base primes `Q_0` and the fewest special primes
/// `P'` that keep the noise it adds, about `(Q_0/P')·σ·√N`, 2^30 under the computation scale
/// Δ (the level-1 modulus): `P'` may be 8 bits under `Q_0` at Δ = 2^48, and must be above it
/// at a one-prime Δ = 2^29, where a 2^8 ratio costs a bootstrap 12 bits (measured at
/// N = 2^10 with SlotsToCoeffs at 2^56: 2^-7.1 error, 2^-18.9 with this rule). The presets'
/// choice is the same under both rules. This key is the only
/// object under the Hamming-weight-32 secret, so its modulus sets that secret's security:
/// `Q_0·P'` is 2^116 at the N = 2^16 preset (56 + 2 × 30 bits) instead of the chain's 2^1736,
/// where `scripts/sparse_secret_security.py` puts the primal drop-and-solve attack at 2^184
/// core-SVP and even a square-root-of-the-guesses floor at 2^98, above the 2^92 the same model
/// gives the dense secret at the 128-bit bound (README, "Security"); a smaller `Q_0·P'` is
/// harder still.
fn low_key_shape(ctx: &crate::rlwe::RlweContext) -> Result<(usize, usize)> {
    let bits = |l: usize| (ctx.ring().modulus(l).value() as f64).log2();
    let q0 = ctx.q_limbs(0);
    let log_q0: f64 = q0.iter().map(|&l| bits(l)).sum();
    let log_delta: f64 = if ctx.max_level() > 0 {
        ctx.q_limbs(1)[q0.len()..].iter().map(|&l| bits(l)).sum()
    } else {
        log_q0
    };
    let noise_bits = (crate::math::sampler::ERROR_STD_DEV * (ctx.n() as f64).sqrt()).log2();
    let need = log_q0 + noise_bits + 30.0 - log_delta;
    let mut have = 0.0;
    for (k, &p) in ctx.p_limbs().iter().enumerate() {
        have += bits(p);
        if have >= need {
            return Ok((q0.len(), k + 1));
        }
    }
    Err(Error::InvalidParameters(format!(
        "bootstrapping needs special primes of at least {need:.0} bits for its sparse-key switch; the chain has {have:.0}"
    )))
}

impl Encode for BootstrapKeys {
    const KIND: Kind = Kind::BootstrapKeys;
    fn fingerprint(&self) -> u64 {
        self.relin.key_switch_key().fingerprint
    }
    fn key_id(&self) -> u64 {
        self.relin.key_id()
    }
    fn encode(
        &self,
        ctx: &crate::rlwe::RlweContext,
        e: &mut Encoder,
        opts: &WriteOptions,
    ) -> Result<()> {
        for v in self.layout() {
            e.u32(v)?;
        }
        write_ksk(ctx, e, self.relin.key_switch_key(), opts)?;
        // Full keys as a Galois key set, then the keys below the top with their prime counts.
        let all = ctx.q_limbs(ctx.max_level()).len();
        let (full, low): (Vec<_>, Vec<_>) = self
            .galois
            .q_counts(ctx)
            .into_iter()
            .partition(|&(_, q)| q == all);
        let full = GaloisKeys {
            keys: full
                .iter()
                .map(|&(g, _)| (g, self.galois.keys[&g].clone()))
                .collect(),
        };
        full.encode(ctx, e, opts)?;
        write_ksk(ctx, e, &self.to_sparse, opts)?;
        write_ksk(ctx, e, &self.from_sparse, opts)?;
        e.u32(low.len() as u32)?;
        for (g, q) in low {
            e.u32(g as u32)?;
            e.u32(q as u32)?;
            write_ksk(ctx, e, &self.galois.keys[&g], opts)?;
        }
        Ok(())
    }
}

impl Decode for KeyParts {
    const KIND: Kind = Kind::BootstrapKeys;
    fn decode(ctx: &crate::rlwe::RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "bootstrapping keys")?;
        let mut layout = [0u32; 5];
        for (v, what) in layout.iter_mut().zip([
            "CoeffsToSlots levels",
            "SlotsToCoeffs levels",
            "Chebyshev degree",
            "double angles",
            "Hamming weight",
        ]) {
            d.allow(4);
            *v = d.u32(what)?;
        }
        // Sizes the plan will check against the chain; refuse absurd ones before planning.
        let hamming = (layout[4] & ((1 << SPARSE_SHIFT) - 1)) as usize;
        let sparse_log = (layout[4] & !FLAGS) >> SPARSE_SHIFT;
        if layout[..4].iter().any(|&v| v > 4096)
            || hamming > ctx.n()
            || sparse_log > ctx.n().trailing_zeros()
        {
            return Err(Error::Decode(format!(
                "bootstrapping layout {layout:?} is out of range for N = {}",
                ctx.n()
            )));
        }
        let relin = RelinKey::decode(ctx, d, key_id)?;
        let mut galois = GaloisKeys::decode(ctx, d, key_id)?;
        let (q_count, p_count) = low_key_shape(ctx)?;
        let limbs: Arc<[usize]> = ctx
            .q_limbs(0)
            .iter()
            .chain(&ctx.p_limbs()[..p_count])
            .copied()
            .collect();
        debug_assert_eq!(limbs.len(), q_count + p_count);
        let to_sparse = read_ksk_over(ctx, d, key_id, limbs, 1)?;
        let full = ctx.qp_limbs(ctx.max_level());
        let from_sparse = read_ksk_over(ctx, d, key_id, full, ctx.digits().len())?;
        if layout[4] & LOW_KEYS_BIT != 0 {
            read_low_keys(ctx, d, key_id, &mut galois)?;
        }
        Ok(Self {
            layout,
            relin,
            galois,
            to_sparse,
            from_sparse,
        })
    }
}

/// The Galois keys below the top ([`BootstrapKeys`]' encoding): a count, then per key its
/// element, its ciphertext primes and its digits over those primes and the special ones.
fn read_low_keys(
    ctx: &crate::rlwe::RlweContext,
    d: &mut Decoder,
    key_id: u64,
    galois: &mut GaloisKeys,
) -> Result<()> {
    d.allow(4);
    let count = d.u32("low Galois key count")? as usize;
    if count > ctx.n() {
        return Err(Error::Decode(format!(
            "{count} Galois keys for N = {} (at most N exist)",
            ctx.n()
        )));
    }
    let all = ctx.q_limbs(ctx.max_level()).len();
    let digits = ctx.digits();
    for _ in 0..count {
        d.allow(8);
        let g = d.u32("Galois element")? as usize;
        let q = d.u32("key primes")? as usize;
        if g.is_multiple_of(2) || g >= 2 * ctx.n() || galois.keys.contains_key(&g) {
            return Err(Error::Decode(format!(
                "Galois element {g} is not odd, below 2N and new"
            )));
        }
        if q == 0 || q >= all {
            return Err(Error::Decode(format!(
                "a low Galois key over {q} of the chain's {all} ciphertext primes"
            )));
        }
        let n_digits = digits.iter().take_while(|r| r.start < q).count();
        let key = read_ksk_over(ctx, d, key_id, ctx.qp_first(q), n_digits)?;
        galois.keys.insert(g, key);
    }
    Ok(())
}

impl CkksContext {
    /// Bootstraps `ct` (any level, size 2 or 3): returns an encryption of the same slots at
    /// [`BootstrapKeys::output_level`] and the default scale Δ (a level-0 input off the
    /// natural scale comes back off Δ by the same factor). Slot values must stay within about ±2^9 (the base
    /// modulus's headroom over the scale). `ct` is not modified.
    pub fn bootstrap(&self, ct: &Ciphertext, keys: &BootstrapKeys) -> Result<Ciphertext> {
        let plan = &keys.plan;
        let ct = if ct.size() == 3 {
            self.relinearize(ct, &keys.relin)?
        } else {
            ct.clone()
        };
        // Bring the input to level 0 (at any scale: the output's scale field absorbs it).
        let ct = if ct.level() > 0 {
            self.match_scale(&ct, 0, plan.message_scale)?
        } else {
            ct
        };
        let input_scale = ct.scale();
        let mut raised = self.mod_raise(&ct, keys)?;
        let trace = plan.trace_steps();
        for &step in &trace {
            raised = self.add(&raised, &self.rotate(&raised, step, &keys.galois)?)?;
        }
        let w = self.linear_steps(&raised, &plan.cts, &keys.galois)?;
        // Real and imaginary halves: (w + w̄) and −i·(w − w̄).
        let wc = self.conjugate(&w, &keys.galois)?;
        let re = self.add(&w, &wc)?;
        let im = self.negate(&self.times_i(&self.sub(&w, &wc)?, &plan.i_at_eval_in)?)?;
        let joined = match trace.first() {
            // Sparse: the imaginary parts move into the empty upper half of the period, one
            // EvalMod serves both, and SlotsToCoeffs's first group joins the halves.
            Some(&period) => {
                let both = self.add(&re, &self.rotate(&im, period, &keys.galois)?)?;
                self.eval_mod(&both, plan, &keys.relin)?
            }
            None => {
                let re = self.eval_mod(&re, plan, &keys.relin)?;
                let im = self.eval_mod(&im, plan, &keys.relin)?;
                self.add(&re, &self.times_i(&im, &plan.i_at_eval_out)?)?
            }
        };
        let out = self.linear_steps(&joined, &plan.stc, &keys.galois)?;
        let scale = out.scale() * input_scale / plan.message_scale;
        Ok(out.derive(out.polys.clone(), scale))
    }

    /// Bootstraps two ciphertexts of **real** slot values in one bootstrap: the pair travels as
    /// the complex slots `(a + i·b)/2`, and one conjugation splits the result again (`a` is
    /// `z + z̄`, `b` is `−i·(z − z̄)`). The halving rides on the plaintext multiplication that
    /// brings each input to level 0, so both need a level ≥ 1 (else [`Error::OutOfLevels`]);
    /// a full-slot bootstrap evaluates EvalMod on the real and the imaginary parts anyway, so
    /// this halves the work of refreshing real values. Each input's imaginary parts (its
    /// noise, for real data) land in the other's output; the halving costs one bit of
    /// precision. Returns `(a, b)` refreshed as [`Self::bootstrap`] would.
    pub fn bootstrap_real_pair(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        keys: &BootstrapKeys,
    ) -> Result<(Ciphertext, Ciphertext)> {
        let plan = &keys.plan;
        let half = |ct: &Ciphertext| -> Result<Ciphertext> {
            let ct = if ct.size() == 3 {
                self.relinearize(ct, &keys.relin)?
            } else {
                ct.clone()
            };
            self.match_scale_times(&ct, 0, plan.message_scale, 0.5)
        };
        let (a, b) = (half(a)?, half(b)?);
        let packed = self.add(&a, &self.times_i(&b, &plan.i_at_eval_in)?)?;
        let z = self.bootstrap(&packed, keys)?;
        let zc = self.conjugate(&z, &keys.galois)?;
        let re = self.add(&z, &zc)?;
        let im = self.negate(&self.times_i(&self.sub(&z, &zc)?, &plan.i_at_eval_out)?)?;
        Ok((re, im))
    }

    /// Encapsulation and ModRaise: level 0 under `s` → top level under `s`, decrypting to
    /// `t = Δ·m + q_0·I`; the result's scale is `q_0`, so its slots read `embed(t)/q_0`.
    fn mod_raise(&self, ct: &Ciphertext, keys: &BootstrapKeys) -> Result<Ciphertext> {
        let rlwe = self.rlwe();
        let be = rlwe.backend();
        let ring = rlwe.ring();
        let low = {
            let c1 = be.slice_polys(&ct.polys, 1, 1)?;
            let u = keys.to_sparse.switch_low(rlwe, &c1)?;
            self.add_switched(ct, u)?
        };
        let top = self.chain_top();
        let from = rlwe.q_limbs(0);
        let rest: Arc<[usize]> = rlwe.q_limbs(top)[from.len()..].into();
        let mut coeff = low.polys.clone();
        be.ntt_inverse(ring, &mut coeff)?;
        let conv = rlwe.converter(&from, &rest);
        let mut lifted = be.base_convert(ring, &coeff, rest, &conv, true)?;
        be.ntt_forward(ring, &mut lifted)?;
        let raised = be.concat_limbs(&low.polys, &lifted)?;
        let raised = Ciphertext::fresh(rlwe, raised, self.base_modulus(), ct.key_id);
        self.switch_key(&raised, &keys.from_sparse)
    }

    /// `(c0, c1) → (c0, 0) + KS(c1)`: re-encrypts under the key's target secret.
    fn switch_key(&self, ct: &Ciphertext, key: &KeySwitchKey) -> Result<Ciphertext> {
        let rlwe = self.rlwe();
        let c1 = rlwe.backend().slice_polys(&ct.polys, 1, 1)?;
        let u = key.switch(rlwe, &c1)?;
        self.add_switched(ct, u)
    }

    /// `(c0, 0) + u` for a key-switched `u = KS(c1)`.
    fn add_switched(&self, ct: &Ciphertext, u: PolyBatch) -> Result<Ciphertext> {
        let rlwe = self.rlwe();
        let be = rlwe.backend();
        let c0 = be.slice_polys(&ct.polys, 0, 1)?;
        let zero = be.zeros(c0.limbs_arc(), 1, rlwe.n(), crate::backend::Repr::Ntt)?;
        let mut out = be.concat(&[&c0, &zero])?;
        be.add_assign(rlwe.ring(), &mut out, &u)?;
        Ok(ct.derive(out, ct.scale))
    }

    /// `q_0`: the product of the base primes, what ModRaise lifts from.
    fn base_modulus(&self) -> f64 {
        self.rlwe()
            .q_limbs(0)
            .iter()
            .map(|&l| self.rlwe().ring().modulus(l).value() as f64)
            .product()
    }

    /// Multiplies every slot by `i` (the monomial `X^{N/2}`, exact, no level).
    fn times_i(&self, ct: &Ciphertext, monomial: &PolyBatch) -> Result<Ciphertext> {
        let be = self.rlwe().backend();
        let m = be.select_limbs(monomial, ct.polys.limbs_arc())?;
        let m = be.concat(&vec![&m; ct.size()])?;
        let mut out = ct.polys.clone();
        be.mul_assign(self.rlwe().ring(), &mut out, &m)?;
        Ok(ct.derive(out, ct.scale))
    }

    /// Applies planned linear-transform groups in turn, one level each.
    fn linear_steps(
        &self,
        ct: &Ciphertext,
        steps: &[LinearStep],
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        steps
            .iter()
            .try_fold(ct.clone(), |x, step| self.linear_step(&x, step, gk))
    }

    /// Baby-step giant-step: `Σ_g rot_g( Σ_b diag'_{g,b} ⊙ rot_b(x) )`, hoisted twice over:
    /// the babies share one decomposition of `x`, and everything stays in the key-switching
    /// basis `QP` (`P` times the value, [`ct_ops::apply_galois_many_ext`]) until a ModDown
    /// before each giant rotation and one at the end, fused with the rescale (one division by
    /// `P·q_l`) — instead of a ModDown per rotation plus a rescale. The giants run as two
    /// Horner chains ([`LinearStep::giant_chains`]): one key per direction, not per giant.
    fn linear_step(
        &self,
        x: &Ciphertext,
        step: &LinearStep,
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        use rayon::prelude::*;
        if x.level() != step.level {
            return Err(Error::LevelMismatch {
                op: "bootstrap linear transform",
                left: step.level,
                right: x.level(),
            });
        }
        let rlwe = self.rlwe();
        let (be, ring) = (rlwe.backend(), rlwe.ring());
        let n = rlwe.n();
        let q = x.polys.limbs_arc();
        let qp = rlwe.qp_limbs(step.level);
        let pt_scale = step.out_scale * self.level_modulus(step.level) / step.in_scale;
        let encoded = match step.encoded.get() {
            Some(e) => e,
            None => {
                let e = step
                    .giants
                    .par_iter()
                    .map(|(_, diags)| {
                        diags
                            .iter()
                            .map(|(_, d)| {
                                let full =
                                    self.encode_complex_over(d, pt_scale, step.level, qp.clone())?;
                                EncodedDiagonal::compact(be, full)
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let _ = step.encoded.set(e);
                step.encoded.get().expect("just set")
            }
        };
        let rotations: Vec<(usize, Option<i64>)> = step
            .babies
            .iter()
            .filter(|&&b| b != 0)
            .map(|&b| (ckks_galois_element(n, b), Some(b)))
            .collect();
        let mut rotated = ct_ops::apply_galois_many_ext(rlwe, x, &rotations, gk)?.into_iter();
        let babies = step
            .babies
            .iter()
            .map(|&b| match b {
                0 => ct_ops::lift_to_ext(rlwe, &x.polys),
                _ => rotated
                    .next()
                    .ok_or_else(|| Error::InvalidInput("internal: baby rotation count".into())),
            })
            .collect::<Result<Vec<PolyBatch>>>()?;
        // Each giant step's inner sum `S_g = Σ_b diag'_{g,b} ⊙ rot_b(x)`, in parallel.
        let mut inner = step
            .giants
            .par_iter()
            .zip(encoded)
            .map(|((_, diags), pts)| {
                let mut s = be.zeros(qp.clone(), 2, n, crate::backend::Repr::Ntt)?;
                for ((bi, _), pt) in diags.iter().zip(pts) {
                    be.mul_acc(ring, &mut s, &babies[*bi], pt.expand(be)?.as_ref())?;
                }
                Ok(Some(s))
            })
            .collect::<Result<Vec<Option<PolyBatch>>>>()?;
        // A rotation of a sum still in the key-switching basis: ModDown, then rotate (the
        // result comes back in that basis).
        let rotate = |acc: &PolyBatch, r: i64| -> Result<PolyBatch> {
            let down = rlwe.mod_down(acc, q.clone(), rlwe.p_limbs())?;
            ct_ops::apply_galois_many_ext(
                rlwe,
                &x.derive(down, x.scale),
                &[(ckks_galois_element(n, r), Some(r))],
                gk,
            )?
            .pop()
            .ok_or_else(|| Error::InvalidInput("internal: no giant rotation".into()))
        };
        // The two Horner chains, from their far ends inwards.
        let [up, down] = step.giant_chains();
        let mut chains = Vec::new();
        for chain in [&up, &down] {
            let steps = step.chain_steps(chain);
            let mut acc: Option<PolyBatch> = None;
            for (k, &i) in chain.iter().enumerate().rev() {
                let s = inner[i]
                    .take()
                    .ok_or_else(|| Error::InvalidInput("internal: giant used twice".into()))?;
                acc = Some(match acc {
                    None => s,
                    Some(a) => {
                        let mut r = rotate(&a, steps[k + 1])?;
                        be.add_assign(ring, &mut r, &s)?;
                        r
                    }
                });
            }
            if let Some(a) = acc {
                chains.push(rotate(&a, steps[0])?);
            }
        }
        // The zero giant (no rotation) and the two chains.
        let mut terms = inner.into_iter().flatten().chain(chains);
        let mut acc = terms
            .next()
            .ok_or_else(|| Error::InvalidInput("empty linear transform".into()))?;
        for t in terms {
            be.add_assign(ring, &mut acc, &t)?;
        }
        let out = self.mod_down_and_rescale(&acc, step.level)?;
        Ok(x.derive(out, step.out_scale))
    }

    /// `x mod 1` approximated by `sin(2πx)/(2π)`, scaled by 2π: the slot values `u = x/K`
    /// go through the Chebyshev interpolant of `cos(2π(K·u − 1/4)/2^r)` and `r` double angles.
    fn eval_mod(&self, u: &Ciphertext, plan: &BootstrapPlan, rk: &RelinKey) -> Result<Ciphertext> {
        let mut c = self.evaluate_chebyshev(u, &plan.cheb, plan.cheb_target, rk)?;
        for _ in 0..plan.params.double_angles {
            let sq = self.multiply_relinearize_rescale(&c, &c, rk)?;
            c = self.add_scalar(&self.add(&sq, &sq)?, -1.0)?;
        }
        if plan.params.arcsine {
            c = self.arcsine_correction(&c, rk)?;
        }
        Ok(c)
    }

    /// `y + y³/6` (`arcsin y` to third order) two levels below `y`, landing exactly on that
    /// level's natural scale, where SlotsToCoeffs's constants expect it. The `1/6` rides on
    /// the constant that sets the cube's scale.
    fn arcsine_correction(&self, y: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
        let top = y.level();
        let out = top.checked_sub(2).ok_or(Error::OutOfLevels {
            op: "bootstrap arcsine correction",
            level: top,
        })?;
        let target = self.natural_scale(out);
        let sq = self.multiply_relinearize_rescale(y, y, rk)?;
        // y/6 at level top − 1, at the scale that makes sq · (y/6) rescale onto `target`.
        let want = target * self.level_modulus(top - 1) / sq.scale();
        let sixth = self.linear_combination(
            &[y],
            &[1.0 / 6.0],
            want * self.level_modulus(top) / y.scale(),
        )?;
        let sixth = self.rescale(&sixth)?;
        let cube = self.multiply_relinearize_rescale(&sq, &sixth, rk)?;
        let y = self.match_scale(y, out, target)?;
        self.add(&y, &cube)
    }

    /// `Σ_k coeffs[k]·T_k(u)` slot-wise for `u ∈ [−1, 1]`, in the Chebyshev basis (stable
    /// where the power basis of the same polynomial cancels catastrophically), landing on
    /// exactly `target` at [`chebyshev_depth`]`(d)` levels below `u` (`d` the degree; at most
    /// `ceil(log2 d) + 1`).
    ///
    /// Baby-step giant-step (Paterson–Stockmeyer in the Chebyshev basis, as Lattigo and
    /// OpenFHE do it): the babies `T_1 … T_{2^l − 1}` and the giants `T_{2^l}, T_{2^{l+1}}, …`
    /// come from `T_{2k} = 2T_k² − 1`, `T_{2k+1} = 2T_{k+1}T_k − T_1`; then `p = q·T_{2^m} + r`
    /// (the division below) recursively until the pieces are linear combinations of babies.
    /// Degree 39 costs 18 products instead of the 38 of computing every `T_k`, and each
    /// combination of babies one rescale.
    pub fn evaluate_chebyshev(
        &self,
        u: &Ciphertext,
        coeffs: &[f64],
        target: f64,
        rk: &RelinKey,
    ) -> Result<Ciphertext> {
        let degree = coeffs.len().saturating_sub(1);
        if degree == 0 || coeffs.iter().any(|c| !c.is_finite()) {
            return Err(Error::InvalidInput(
                "a Chebyshev series needs degree ≥ 1 and finite coefficients".into(),
            ));
        }
        let depth = chebyshev_depth(degree);
        if depth > u.level() {
            return Err(Error::OutOfLevels {
                op: "evaluate_chebyshev",
                level: u.level(),
            });
        }
        // Babies below 2^l with l one more than half the depth (any l fits the depth: the
        // giants T_{2^m} sit at depth m, the babies at depth ≤ l). One more than half keeps
        // the large low-order part of an oscillating series (EvalMod's cosine) in one
        // combination of babies: splitting it at T_8 makes quotient and remainder larger
        // than the series and costs ~1.3 bits (degree 39, measured in the test below).
        let babies = chebyshev_babies(degree);
        let l = babies.trailing_zeros() as usize;
        let top_giant = degree.ilog2() as usize;
        let mut basis: BTreeMap<usize, Ciphertext> = BTreeMap::new();
        basis.insert(1, u.clone());
        let wanted = (2..(1usize << l).min(degree + 1)).chain((l..=top_giant).map(|m| 1 << m));
        for k in wanted {
            let (a, b) = (k.div_ceil(2), k / 2);
            let term = |j: usize| {
                basis
                    .get(&j)
                    .ok_or_else(|| Error::InvalidInput("internal: missing Chebyshev term".into()))
            };
            let prod = self.multiply_relinearize_rescale(term(a)?, term(b)?, rk)?;
            let twice = self.add(&prod, &prod)?;
            let tk = if a == b {
                self.add_scalar(&twice, -1.0)?
            } else {
                let lower = self.match_scale(term(a - b)?, twice.level(), twice.scale())?;
                self.sub(&twice, &lower)?
            };
            basis.insert(k, tk);
        }
        let out = ChebyshevEval {
            ctx: self,
            basis: &basis,
            babies,
            rk,
        }
        .eval(coeffs, u.level() - depth, target)?;
        Ok(out.derive(out.polys.clone(), target))
    }
}

/// The recursion of [`CkksContext::evaluate_chebyshev`] over its computed `T_k`.
struct ChebyshevEval<'a> {
    ctx: &'a CkksContext,
    basis: &'a BTreeMap<usize, Ciphertext>,
    /// Pieces of degree below this are combinations of babies.
    babies: usize,
    rk: &'a RelinKey,
}

impl ChebyshevEval<'_> {
    fn term(&self, k: usize) -> Result<&Ciphertext> {
        self.basis
            .get(&k)
            .ok_or_else(|| Error::InvalidInput("internal: missing Chebyshev term".into()))
    }

    /// `Σ c_k T_k` (degree ≥ 1) at exactly `level` and `scale`.
    fn eval(&self, c: &[f64], level: usize, scale: f64) -> Result<Ciphertext> {
        let ctx = self.ctx;
        let degree = c.len() - 1;
        if degree < self.babies {
            // One level: each T_k brought to `level + 1` and scaled to `q·scale` there, summed,
            // one rescale.
            let q = ctx.level_modulus(level + 1);
            let mut acc: Option<Ciphertext> = None;
            for (k, &ck) in c.iter().enumerate().skip(1) {
                let tk = ctx.mod_switch_to(self.term(k)?, level + 1)?;
                let x = ctx.multiply_scalar(&tk, ck, q * scale / tk.scale())?;
                acc = Some(match acc {
                    Some(a) => ctx.add(&a, &x)?,
                    None => x,
                });
            }
            let acc = acc.ok_or_else(|| Error::InvalidInput("internal: empty series".into()))?;
            return ctx.add_scalar(&ctx.rescale(&acc)?, c[0]);
        }
        // p = q·T_M + r with M = 2^m ≤ degree < 2M, from T_M·T_j = (T_{M+j} + T_{M−j})/2:
        // q = c_M + Σ_j 2c_{M+j} T_j, r = Σ_{i<M} c_i T_i − Σ_j c_{M+j} T_{M−j}.
        let big_m = 1usize << degree.ilog2();
        let mut q = vec![c[big_m]];
        q.extend(c[big_m + 1..].iter().map(|&x| 2.0 * x));
        let mut r = c[..big_m].to_vec();
        for j in 1..=degree - big_m {
            r[big_m - j] -= c[big_m + j];
        }
        let giant = ctx.mod_switch_to(self.term(big_m)?, level + 1)?;
        let up = ctx.level_modulus(level + 1);
        let prod = if q.len() == 1 {
            ctx.rescale(&ctx.multiply_scalar(&giant, q[0], up * scale / giant.scale())?)?
        } else {
            let qc = self.eval(&q, level + 1, scale * up / giant.scale())?;
            ctx.multiply_relinearize_rescale(&qc, &giant, self.rk)?
        };
        if r.len() > 1 {
            ctx.add(&prod, &self.eval(&r, level, scale)?)
        } else {
            ctx.add_scalar(&prod, r[0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckks::CkksEncoder;

    /// The sparse secret's one public sample sits at `Q_0·P'` ≈ 2^116 at the 128-bit preset
    /// (the modulus `scripts/sparse_secret_security.py` is run at), and its noise stays
    /// small: `P'` is at most 8 bits under `Q_0`.
    #[test]
    fn sparse_key_modulus_stays_small() {
        let bp = BootstrapParams::n16().unwrap();
        let ctx = CkksContext::new(bp.ckks.clone()).unwrap();
        let rlwe = ctx.rlwe();
        let (q, p) = low_key_shape(rlwe).unwrap();
        let bits = |l: usize| (rlwe.ring().modulus(l).value() as f64).log2();
        let q0: f64 = rlwe.q_limbs(0)[..q].iter().map(|&l| bits(l)).sum();
        let pp: f64 = rlwe.p_limbs()[..p].iter().map(|&l| bits(l)).sum();
        eprintln!("Q_0 2^{q0:.1}, P' 2^{pp:.1}, Q_0·P' 2^{:.1}", q0 + pp);
        assert!(q0 + pp <= 117.0, "Q_0·P' = 2^{:.1}", q0 + pp);
        assert!(pp >= q0 - 8.0);
    }

    /// Level budgets that the chain cannot hold, or that break its segments, are refused
    /// before any key is made (the fields are read-only outside the crate; a decoded layout
    /// goes through the same check).
    #[test]
    fn check_refuses_budgets_the_chain_cannot_hold() {
        let bp = BootstrapParams::insecure_test_ring(10, 3).unwrap();
        let ctx = CkksContext::with_seed(bp.ckks.clone(), [4; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let mut no_cts = bp.clone();
        no_cts.cts_levels = 0;
        let mut deep = bp.clone();
        deep.cheb_degree = 1000;
        // One more CoeffsToSlots level than the upper segment was built for.
        let mut moved = bp;
        moved.cts_levels += 1;
        for bad in [no_cts, deep, moved] {
            assert!(matches!(
                BootstrapKeys::generate(&ctx, &bad, &keys.secret, &keys.relin),
                Err(Error::InvalidParameters(_))
            ));
        }
    }

    /// The giant steps run as Horner chains: a chain's steps add up to each of its giants in
    /// turn (so `Σ rot_{g_j}(S_j)` comes out right), and evenly spaced giants need one key
    /// per direction; the full plan's keys are its groups' babies plus at most two giants.
    #[test]
    fn giant_chains_reach_every_giant_with_few_keys() {
        let bp = BootstrapParams::insecure_test_ring(13, 1).unwrap();
        let ctx = CkksContext::new(bp.ckks.clone()).unwrap();
        for slots in [4096usize, 256, 16] {
            let p = if slots == 4096 {
                bp.clone()
            } else {
                bp.clone().sparse(slots).unwrap()
            };
            let plan = BootstrapPlan::new(&ctx, &p).unwrap();
            for step in plan.cts.iter().chain(&plan.stc) {
                let chains = step.giant_chains();
                let mut reached: Vec<i64> = Vec::new();
                for chain in &chains {
                    let mut at = 0;
                    for (&i, s) in chain.iter().zip(step.chain_steps(chain)) {
                        at += s;
                        assert_eq!(at, step.giants[i].0, "{slots} slots");
                        reached.push(at);
                    }
                }
                let mut nonzero: Vec<i64> = step
                    .giants
                    .iter()
                    .map(|g| g.0)
                    .filter(|&g| g != 0)
                    .collect();
                reached.sort_unstable();
                nonzero.sort_unstable();
                assert_eq!(reached, nonzero);
                let mut keys: Vec<i64> = chains.iter().flat_map(|c| step.chain_steps(c)).collect();
                keys.sort_unstable();
                keys.dedup();
                if slots == 4096 {
                    assert!(keys.len() <= 2, "giant keys {keys:?}");
                }
            }
        }
    }

    /// A sparse bootstrap's transforms act on `slots`-periodic vectors, so they need fewer
    /// distinct rotations than the full-slot one; its trace and the joining of the real and
    /// imaginary halves add only a few keys (the joining group is planned by the diagonals it
    /// has, in two clusters, not by its span).
    #[test]
    fn sparse_plans_need_few_rotation_keys() {
        let bp = BootstrapParams::insecure_test_ring(13, 1).unwrap();
        let ctx = CkksContext::new(bp.ckks.clone()).unwrap();
        let full = BootstrapPlan::new(&ctx, &bp).unwrap().rotation_steps();
        for slots in [2usize, 16, 256, 1024] {
            let sp = BootstrapPlan::new(&ctx, &bp.clone().sparse(slots).unwrap()).unwrap();
            let steps = sp.rotation_steps();
            let trace = sp.trace_steps();
            eprintln!(
                "{slots} slots: {} steps ({} trace) vs {} full",
                steps.len(),
                trace.len(),
                full.len()
            );
            assert!(trace.iter().all(|s| steps.contains(s)));
            assert!(
                steps.len() <= full.len() + 2,
                "{slots} slots: {} rotation keys, full-slot {}",
                steps.len(),
                full.len()
            );
        }
    }

    /// The grouped stages of the decoding FFT reproduce the encoder (with the bit reversal the
    /// homomorphic version skips done by hand), and the inverse stages undo it.
    #[test]
    fn grouped_fft_stages_match_the_encoder() {
        let big_n = 64;
        let n = big_n / 2;
        let enc = CkksEncoder::new(big_n);
        let t: Vec<f64> = (0..big_n)
            .map(|k| ((k * 37 % 23) as f64 - 11.0) / 7.0)
            .collect();
        let z = enc.embed(&t);
        let log_n = n.trailing_zeros();
        let rev = |k: usize| crate::math::ntt::bit_reverse(k, log_n);
        let v_rev: Vec<Complex64> = (0..n)
            .map(|k| Complex64::new(t[rev(k)], t[rev(k) + n]))
            .collect();
        let apply = |ms: &[Diagonals], x: &[Complex64]| -> Vec<Complex64> {
            ms.iter().fold(x.to_vec(), |x, m| {
                (0..n)
                    .map(|r| m.iter().map(|(&d, v)| v[r] * x[(r + d) % n]).sum())
                    .collect()
            })
        };
        for groups in [1, 2, 3, 5] {
            let dec = grouped_transform(n, false, groups, 1.0);
            let got = apply(&dec, &v_rev);
            for (a, b) in got.iter().zip(&z) {
                assert!((a - b).norm() < 1e-9, "decode with {groups} groups");
            }
            let inv = grouped_transform(n, true, groups, 1.0);
            let back = apply(&inv, &z);
            for (a, b) in back.iter().zip(&v_rev) {
                assert!((a - b).norm() < 1e-9, "inverse with {groups} groups");
            }
        }
    }

    /// A diagonal with slot period `p` encodes to NTT words in runs of `slots/p` (what the
    /// compact cache relies on), writes back out to the very words of the full encoding, and
    /// a diagonal without a period stays whole. The transforms' groups have such periods.
    #[test]
    fn periodic_diagonals_are_stored_by_runs() {
        let bp = BootstrapParams::insecure_test_ring(10, 2).unwrap();
        let ctx = CkksContext::with_seed(bp.ckks.clone(), [5; 32]).unwrap();
        let be = ctx.rlwe().backend();
        let n = ctx.slots();
        let top = ctx.chain_top();
        let qp = ctx.rlwe().qp_limbs(top);
        for period in [1, 4, 32, n] {
            let z: Vec<Complex64> = (0..n)
                .map(|r| {
                    let k = (r % period) as f64;
                    Complex64::new((0.3 * k).sin(), (0.7 * k + 1.0).cos())
                })
                .collect();
            let full = ctx
                .encode_complex_over(&z, 2f64.powi(40), top, qp.clone())
                .unwrap();
            let words = be.download(&full).unwrap();
            let enc = EncodedDiagonal::compact(be, full).unwrap();
            match (&enc, period) {
                (EncodedDiagonal::Full(_), p) => assert_eq!(p, n, "period {p} not compacted"),
                (EncodedDiagonal::Runs { run, .. }, p) => assert_eq!(*run, n / p),
            }
            let back = be.download(&enc.expand(be).unwrap()).unwrap();
            assert_eq!(back, words, "period {period}");
        }
        let groups = grouped_transform(n, true, 3, 0.5);
        let periodic = groups
            .iter()
            .flat_map(|m| m.values())
            .filter(|d| (0..n).all(|r| (d[r] - d[r % (n / 2)]).norm() < 1e-9))
            .count();
        assert!(periodic > 0, "no CoeffsToSlots diagonal repeats");
    }

    #[test]
    fn chebyshev_interpolant_is_accurate() {
        let f = |u: f64| (2.0 * PI * (17.0 * u - 0.25) / 16.0).cos();
        let c = chebyshev_interpolant(27, f);
        for i in 0..200 {
            let u = -1.0 + 2.0 * i as f64 / 199.0;
            let (mut t0, mut t1) = (1.0, u);
            let mut s = c[0] + c[1] * u;
            for ck in &c[2..] {
                let t2 = 2.0 * u * t1 - t0;
                s += ck * t2;
                t0 = t1;
                t1 = t2;
            }
            assert!((s - f(u)).abs() < 1e-12, "u = {u}: {s} vs {}", f(u));
        }
    }

    /// The baby-step giant-step evaluation against the plaintext series, at degrees that take
    /// every path (a single combination of babies, a constant quotient, nested splits), on
    /// EvalMod's own interpolant and on arbitrary coefficients; it spends exactly
    /// [`chebyshev_depth`] levels (counted by hand below) and lands on the target scale.
    #[test]
    fn evaluate_chebyshev_matches_the_plaintext_series() {
        let bp = BootstrapParams::insecure_test_ring(10, 2).unwrap();
        let ctx = CkksContext::with_seed(bp.ckks.clone(), [5; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let top = ctx.chain_top();
        let n = ctx.slots();
        let u: Vec<f64> = (0..n)
            .map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64)
            .collect();
        let ct = ctx
            .encrypt(
                &ctx.encode(&u, ctx.natural_scale(top), top).unwrap(),
                &keys.public,
            )
            .unwrap();
        let series = |c: &[f64], x: f64| {
            let (mut t0, mut t1) = (1.0, x);
            let mut s = c[0] + c.get(1).map_or(0.0, |c1| c1 * x);
            for ck in c.iter().skip(2) {
                let t2 = 2.0 * x * t1 - t0;
                s += ck * t2;
                (t0, t1) = (t1, t2);
            }
            s
        };
        let cos = chebyshev_interpolant(39, |x| (2.0 * PI * (16.5 * x - 0.25) / 8.0).cos());
        // Counted by hand from the recursion: T_k sits ceil(log2 k) down, a combination of
        // babies rescales once, q·T_M once after the deeper factor. 9 = T_8·(c + c'·T_1) + r
        // and 39 = T_32·q(deg 7) + (T_16·q'(deg 15) + r') meet their giants a level early.
        for (d, depth) in [
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 4),
            (8, 4),
            (9, 4),
            (16, 5),
            (27, 6),
        ]
        .into_iter()
        .chain([(31, 6), (39, 6), (47, 6), (63, 7)])
        {
            assert_eq!(chebyshev_depth(d), depth, "degree {d}");
            assert!(depth <= ceil_log2(d) + 1);
        }
        let mut cases: Vec<Vec<f64>> = [1usize, 2, 3, 5, 8, 9, 16, 27, 47]
            .iter()
            .map(|&d| {
                (0..=d)
                    .map(|k| ((k * 7 % 11) as f64 - 5.0) / (10.0 * (k as f64 + 1.0)))
                    .collect()
            })
            .collect();
        cases.push(cos);
        for c in &cases {
            let d = c.len() - 1;
            let out_level = top - chebyshev_depth(d);
            let target = ctx.natural_scale(out_level);
            let got = ctx.evaluate_chebyshev(&ct, c, target, &keys.relin).unwrap();
            assert_eq!(
                (got.level(), got.scale()),
                (out_level, target),
                "degree {d}"
            );
            let max_err = |ct: &Ciphertext| {
                let dec = ctx.decrypt_decode(ct, &keys.secret).unwrap();
                u.iter()
                    .zip(&dec)
                    .map(|(&x, &y)| (series(c, x) - y).abs())
                    .fold(0.0f64, f64::max)
            };
            let err = max_err(&got);
            let naive = max_err(&naive_chebyshev(&ctx, &ct, c, target, &keys.relin));
            eprintln!(
                "degree {d}: max error 2^{:.1} (every T_k: 2^{:.1})",
                err.log2(),
                naive.log2()
            );
            assert!(err < 1e-6, "degree {d}: max error {err:e}");
            // At most a bit worse than computing every T_k (l = half the depth lost 1.3).
            assert!(
                err <= 2.0 * naive,
                "degree {d}: 2^{:.1} vs 2^{:.1}",
                err.log2(),
                naive.log2()
            );
        }
    }

    /// Every `T_k` computed, each term rescaled on its own: the evaluation the baby-step
    /// giant-step one replaced, kept as the precision reference.
    fn naive_chebyshev(
        ctx: &CkksContext,
        u: &Ciphertext,
        coeffs: &[f64],
        target: f64,
        rk: &RelinKey,
    ) -> Ciphertext {
        let d = coeffs.len() - 1;
        let mut t: Vec<Ciphertext> = vec![u.clone(), u.clone()];
        for k in 2..=d {
            let (a, b) = (k.div_ceil(2), k / 2);
            let prod = ctx
                .rescale(
                    &ctx.relinearize(&ctx.multiply(&t[a], &t[b]).unwrap(), rk)
                        .unwrap(),
                )
                .unwrap();
            let twice = ctx.add(&prod, &prod).unwrap();
            t.push(if a == b {
                ctx.add_scalar(&twice, -1.0).unwrap()
            } else {
                let lower = ctx
                    .match_scale(&t[a - b], twice.level(), twice.scale())
                    .unwrap();
                ctx.sub(&twice, &lower).unwrap()
            });
        }
        let terms: Vec<Ciphertext> = (1..=d)
            .map(|k| {
                let q = ctx.level_modulus(t[k].level());
                let x = ctx
                    .multiply_scalar(&t[k], coeffs[k], q * target / t[k].scale())
                    .unwrap();
                ctx.rescale(&x).unwrap()
            })
            .collect();
        let low = terms.iter().map(|x| x.level()).min().unwrap();
        let mut acc = ctx.mod_switch_to(&terms[0], low).unwrap();
        for x in &terms[1..] {
            acc = ctx.add(&acc, &ctx.mod_switch_to(x, low).unwrap()).unwrap();
        }
        let acc = acc.derive(acc.polys.clone(), target);
        ctx.add_scalar(&acc, coeffs[0]).unwrap()
    }

    /// Diagnostic: the error each stage adds, against the exact values the secret key shows.
    #[test]
    #[ignore = "diagnostic: prints per-stage errors"]
    fn stage_errors() {
        use crate::math::RnsBasis;
        use num_traits::ToPrimitive;
        let bp = BootstrapParams::insecure_test_ring(10, 2).unwrap();
        let ctx = CkksContext::with_seed(bp.ckks.clone(), [3; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin).unwrap();
        let n = ctx.slots();
        let m: Vec<f64> = (0..n)
            .map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0)
            .collect();
        let ct = ctx
            .encrypt(
                &ctx.encode(&m, ctx.natural_scale(0), 0).unwrap(),
                &keys.public,
            )
            .unwrap();
        let rlwe = ctx.rlwe();
        let coeffs = |c: &Ciphertext| -> Vec<f64> {
            let p = crate::rlwe::ciphertext::decrypt_to_poly(rlwe, &keys.secret, c).unwrap();
            let words = rlwe.backend().download(&p).unwrap();
            let moduli: Vec<_> = p.limbs().iter().map(|&l| *rlwe.ring().modulus(l)).collect();
            let basis = RnsBasis::new(&moduli);
            let nn = rlwe.n();
            (0..nn)
                .map(|k| {
                    let r: Vec<u32> = (0..moduli.len()).map(|i| words[i * nn + k]).collect();
                    basis.compose_centered(&r).to_f64().unwrap()
                })
                .collect()
        };
        let q0 = ctx.base_modulus();
        let k = bp.k_bound();
        let raised = ctx.mod_raise(&ct, &bk).unwrap();
        let x: Vec<f64> = coeffs(&raised).iter().map(|t| t / q0).collect();
        let xmax = x.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        eprintln!("max |x| = {xmax:.3}");
        let plan = &bk.plan;
        let mut exact = CkksEncoder::new(2 * n).embed(&x);
        let mut cur = raised.clone();
        for (g, step) in plan.cts.iter().enumerate() {
            let groups = grouped_transform(n, true, bp.cts_levels, 1.0 / (2.0 * k));
            let m = &groups[g];
            exact = (0..n)
                .map(|r| m.iter().map(|(&d, v)| v[r] * exact[(r + d) % n]).sum())
                .collect();
            cur = ctx.linear_step(&cur, step, &bk.galois).unwrap();
            let got = ctx.decrypt_complex(&cur, &keys.secret).unwrap();
            let err = (0..n)
                .map(|r| (got[r] - exact[r]).norm())
                .fold(0.0f64, f64::max);
            let mag = exact.iter().map(|c| c.norm()).fold(0.0f64, f64::max);
            eprintln!(
                "CtS group {g}: error 2^{:.1}, max magnitude {mag:.3}, diags {}",
                err.log2(),
                m.len()
            );
        }
        let w = ctx.linear_steps(&raised, &plan.cts, &bk.galois).unwrap();
        let wc = ctx.conjugate(&w, &bk.galois).unwrap();
        let re = ctx.add(&w, &wc).unwrap();
        let log_n = n.trailing_zeros();
        let rev = |r: usize| crate::math::ntt::bit_reverse(r, log_n);
        let got = ctx.decrypt_complex(&re, &keys.secret).unwrap();
        let err = (0..n)
            .map(|r| (got[r] - Complex64::new(x[rev(r)] / k, 0.0)).norm())
            .fold(0.0f64, f64::max);
        eprintln!(
            "CtS: max error in u = x/K: 2^{:.1} (scale 2^{:.1})",
            err.log2(),
            re.scale().log2()
        );
        let y = ctx.eval_mod(&re, plan, &bk.relin).unwrap();
        let got = ctx.decrypt_complex(&y, &keys.secret).unwrap();
        let err = (0..n)
            .map(|r| (got[r].re - (2.0 * PI * x[rev(r)]).sin()).abs())
            .fold(0.0f64, f64::max);
        eprintln!(
            "EvalMod: max error in sin(2πx): 2^{:.1} (level {}, scale 2^{:.1})",
            err.log2(),
            y.level(),
            y.scale().log2()
        );
        let im = ctx
            .negate(
                &ctx.times_i(&ctx.sub(&w, &wc).unwrap(), &plan.i_at_eval_in)
                    .unwrap(),
            )
            .unwrap();
        let yi = ctx.eval_mod(&im, plan, &bk.relin).unwrap();
        let joined = ctx
            .add(&y, &ctx.times_i(&yi, &plan.i_at_eval_out).unwrap())
            .unwrap();
        let got = ctx.decrypt_complex(&joined, &keys.secret).unwrap();
        let err = (0..n)
            .map(|r| {
                let want = Complex64::new(
                    (2.0 * PI * x[rev(r)]).sin(),
                    (2.0 * PI * x[rev(r) + n]).sin(),
                );
                (got[r] - want).norm()
            })
            .fold(0.0f64, f64::max);
        eprintln!("joined: max error 2^{:.1}", err.log2());
        let out = ctx.linear_steps(&joined, &plan.stc, &bk.galois).unwrap();
        let got = ctx.decrypt_complex(&out, &keys.secret).unwrap();
        let err = (0..n)
            .map(|r| (got[r].re - m[r]).abs())
            .fold(0.0f64, f64::max);
        eprintln!(
            "StC: max error vs m 2^{:.1}, scale 2^{:.2} vs in {:.2}",
            err.log2(),
            out.scale().log2(),
            ct.scale().log2()
        );
        let re = ctx
            .rescale(
                &ctx.multiply_scalar(
                    &re,
                    1.0,
                    ctx.level_modulus(re.level()) * ctx.natural_scale(re.level() - 1) / re.scale(),
                )
                .unwrap(),
            )
            .unwrap();
        let target = ctx.natural_scale(re.level() - ceil_log2(bp.cheb_degree) - 1);
        let c = ctx
            .evaluate_chebyshev(&re, &plan.cheb, target, &bk.relin)
            .unwrap();
        let got = ctx.decrypt_complex(&c, &keys.secret).unwrap();
        let r4 = 2f64.powi(bp.double_angles as i32);
        let err = (0..n)
            .map(|r| (got[r].re - (2.0 * PI * (x[rev(r)] - 0.25) / r4).cos()).abs())
            .fold(0.0f64, f64::max);
        eprintln!("Chebyshev: max error 2^{:.1}", err.log2());
    }

    /// How [`BootstrapParams::n15`] was chosen: lists the chains at N = 2^15 that fit the
    /// 128-bit bound (digits, limbs, keys); `HETENSOR_N15_RUN=i,j,…` bootstraps those and
    /// prints key size, times and precision; `HETENSOR_N15_INSECURE=1` lifts the bound (4
    /// digits) to see what limits precision apart from the key size.
    #[test]
    #[ignore = "diagnostic: searches N = 2^15 chains (minutes)"]
    fn search_n15_chains() {
        let run: Vec<usize> = std::env::var("HETENSOR_N15_RUN")
            .unwrap_or_default()
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect();
        let insecure = std::env::var("HETENSOR_N15_INSECURE").is_ok();
        let mut specs = Vec::new();
        for eval_mod in [DEFAULT_EVAL_MOD, (31, 3)] {
            for computation in 1..=4 {
                for (cts_levels, stc_levels) in [(2, 2), (3, 2), (2, 3), (3, 3)] {
                    for scale_bits in [29, 44, 46, 48] {
                        for upper_bits in [48, 50, 52, 54] {
                            specs.push(ChainSpec {
                                log_n: 15,
                                computation,
                                cts_levels,
                                stc_levels,
                                scale_bits,
                                upper_bits,
                                eval_mod,
                                dnum: insecure.then_some(4),
                                security: match insecure {
                                    true => Security::InsecureForTestingOnly,
                                    false => Security::Bits128,
                                },
                            });
                        }
                    }
                }
            }
        }
        let feasible = specs
            .into_iter()
            .filter_map(|spec| BootstrapParams::with_chain(spec).ok().map(|bp| (spec, bp)));
        for (idx, (spec, bp)) in feasible.enumerate() {
            let r = &bp.ckks.rlwe;
            let ctx = CkksContext::new(bp.ckks.clone()).unwrap();
            let plan = BootstrapPlan::new(&ctx, &bp).unwrap();
            eprintln!(
                "[{idx}] {spec:?}: dnum {} limbs {}+{} log2 QP {:.1}, {} keys",
                r.dnum(),
                r.q_primes().len(),
                r.p_primes().len(),
                r.log_qp(),
                galois_shapes(&ctx, &plan).len() + 1
            );
            if run.contains(&idx) {
                let keys = ctx.keygen().unwrap();
                let t0 = std::time::Instant::now();
                let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin).unwrap();
                let keygen_s = t0.elapsed().as_secs_f64();
                let want: Vec<f64> = (0..ctx.slots())
                    .map(|i| ((i * 7919) % 2001) as f64 / 1000.0 - 1.0)
                    .collect();
                let pt = ctx.encode(&want, ctx.natural_scale(0), 0).unwrap();
                let ct = ctx.encrypt(&pt, &keys.public).unwrap();
                let _ = ctx.bootstrap(&ct, &bk).unwrap(); // encodes the diagonals
                let t0 = std::time::Instant::now();
                let out = ctx.bootstrap(&ct, &bk).unwrap();
                let boot_s = t0.elapsed().as_secs_f64();
                let got = ctx.decrypt_decode(&out, &keys.secret).unwrap();
                let err = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f64, f64::max);
                eprintln!(
                    "    keys {:.2} GB, keygen {keygen_s:.1} s, bootstrap {boot_s:.1} s, max error 2^{:.1}, level {}",
                    bk.memory_bytes() as f64 / 1e9,
                    err.log2(),
                    out.level()
                );
            }
        }
    }

    #[test]
    #[ignore = "diagnostic: prints the presets"]
    fn print_presets() {
        for (name, p) in [
            ("n15", BootstrapParams::n15()),
            ("n16", BootstrapParams::n16()),
        ] {
            match p {
                Ok(p) => eprintln!(
                    "{name}: depth {} out {}\n{}",
                    p.depth(),
                    p.output_level(),
                    p.ckks
                ),
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
    }
}
