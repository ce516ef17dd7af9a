//! The BFV context: RLWE context, plaintext modulus tables, key generation, encryption and
//! decryption, and the invariant noise budget.

use std::sync::{Arc, Mutex, OnceLock};

use num_bigint::{BigInt, BigUint};
use num_traits::{One, Signed, ToPrimitive};
use rayon::prelude::*;

use crate::backend::{Backend, PolyBatch, Repr};
use crate::bfv::noise::NoiseModel;
use crate::bfv::params::{aux_bits_needed, resolve_plain_modulus, BfvParams, PlainModulus};
use crate::error::{Error, Result};
use crate::math::modular::Modulus;
use crate::math::ntt64::NttPlan64;
use crate::math::sampler::Sampler;
use crate::math::{RnsBasis, ScaleRounder};
use crate::rlwe::ciphertext as rct;
use crate::rlwe::keys::{galois_element_conjugate, galois_element_for_step};
use crate::rlwe::{
    ContextBuilder, GaloisKeys, KeySet, PublicKey, RelinKey, RlweContext, RlweParams, SchemeParams,
    SecretKey,
};

/// Decryption refuses (`Error::NoiseBudgetExhausted`) a ciphertext whose measured noise leaves
/// less than this many bits of budget, where a wrapped-around noise cannot be told apart.
pub const MIN_DECRYPT_BUDGET_BITS: f64 = 1.0;

/// A BFV plaintext: a polynomial with coefficients in `[0, t)` (what the batch encoder produces
/// from N slot values, or raw coefficients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plaintext {
    pub(crate) coeffs: Vec<u64>,
    pub(crate) plain_modulus: u64,
}

impl Plaintext {
    /// The coefficients, each in `[0, t)`.
    pub fn coeffs(&self) -> &[u64] {
        &self.coeffs
    }

    /// The plaintext modulus t it was made for.
    pub fn plain_modulus(&self) -> u64 {
        self.plain_modulus
    }
}

/// A BFV ciphertext: an RLWE ciphertext (NTT domain over the primes of its level) tagged with
/// the plaintext modulus, so that ciphertexts of contexts sharing one RLWE context but using
/// different `t` (as in [`crate::bfv::BfvCrt`]) cannot be mixed by accident, and with an
/// estimate of its noise that every operation updates (see [`crate::bfv::noise`]).
#[derive(Clone, Debug)]
pub struct Ciphertext {
    pub(crate) inner: rct::Ciphertext,
    pub(crate) plain_modulus: u64,
    /// log2 of a (conservative, CLT-heuristic) bound on the standard deviation of the
    /// coefficients of the invariant noise `v` (`t·x/Q = m + v + t·k`); BFV-only, so it lives
    /// here rather than on the scheme-independent RLWE ciphertext.
    pub(crate) noise_log2: f64,
}

impl Ciphertext {
    /// Level: number of ciphertext primes − 1 (lowered by [`BfvContext::mod_switch_to`]).
    pub fn level(&self) -> usize {
        self.inner.level()
    }

    /// Number of polynomials: 2, or 3 after a multiplication without relinearization.
    pub fn size(&self) -> usize {
        self.inner.size()
    }

    /// The underlying RLWE ciphertext.
    pub fn inner(&self) -> &rct::Ciphertext {
        &self.inner
    }

    /// The plaintext modulus t.
    pub fn plain_modulus(&self) -> u64 {
        self.plain_modulus
    }

    /// log2 of the evaluator's bound on the standard deviation of the invariant noise's
    /// coefficients; [`BfvContext::noise_budget_estimate`] turns it into bits of budget.
    pub fn noise_log2(&self) -> f64 {
        self.noise_log2
    }
}

/// Per-level constants for encoding (`Δ = floor(Q_l/t)`) and decryption.
#[derive(Clone, Debug)]
pub(crate) struct LevelTables {
    /// `[floor(Q_l/t)]_{q_i}`.
    pub(crate) delta: Vec<u32>,
    /// `Q_l mod t`.
    pub(crate) q_mod_t: u64,
    /// `floor(t·w_i/q_i)` (< t) with `w_i = [(Q_l/q_i)^{-1}]_{q_i}`.
    pub(crate) dec_int: Vec<u64>,
    /// `floor(frac(t·w_i/q_i)·2^64)`.
    pub(crate) dec_frac: Vec<u64>,
    /// log2 Q_l.
    pub(crate) log_q: f64,
}

impl LevelTables {
    fn new(moduli: &[Modulus], t: u64) -> Self {
        let q = moduli.iter().fold(BigUint::one(), |acc, m| acc * m.value());
        let delta_big = &q / t;
        let delta = moduli
            .iter()
            .map(|m| (&delta_big % m.value()).to_u32().unwrap_or(0))
            .collect();
        let q_mod_t = (&q % t).to_u64().unwrap_or(0);
        let mut dec_int = Vec::with_capacity(moduli.len());
        let mut dec_frac = Vec::with_capacity(moduli.len());
        for m in moduli {
            let qi = m.value() as u128;
            let w = m
                .inv(((&q / m.value()) % m.value()).to_u32().unwrap_or(0))
                .unwrap_or(0) as u128;
            let num = t as u128 * w; // < 2^90
            dec_int.push((num / qi) as u64);
            dec_frac.push((((num % qi) << 64) / qi) as u64);
        }
        let log_q = moduli.iter().map(|m| (m.value() as f64).log2()).sum();
        Self {
            delta,
            q_mod_t,
            dec_int,
            dec_frac,
            log_q,
        }
    }
}

/// A BFV context: everything needed to encode, encrypt, compute on and decrypt integer vectors
/// modulo a plaintext prime `t`, N slots at a time.
///
/// Cheap to share by reference across threads (the sampler sits behind a mutex).
///
/// ```
/// use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
///
/// # fn main() -> hetensor::Result<()> {
/// // N = 2^13 at 128-bit security with a 20-bit batching prime: 8192 slots.
/// let ctx = BfvContext::new(BfvParams::preset(13, PlainModulus::Bits(20))?)?;
/// let keys = ctx.keygen()?;
/// let (sk, pk, rk) = (&keys.secret, &keys.public, &keys.relin);
///
/// let a = ctx.encrypt(&ctx.encode_signed(&[3, -4, 5])?, pk)?;
/// let b = ctx.encrypt(&ctx.encode_signed(&[10, 10, -10])?, pk)?;
/// let prod = ctx.multiply_relin(&a, &b, rk)?;
/// let sum = ctx.add(&prod, &a)?;
///
/// let out = ctx.decode_signed(&ctx.decrypt(&sum, sk)?)?;
/// assert_eq!(&out[..4], &[33, -44, -45, 0]);
/// assert!(ctx.invariant_noise_budget(&sum, sk)? > 0.0);
/// # Ok(())
/// # }
/// ```
pub struct BfvContext {
    pub(crate) params: BfvParams,
    pub(crate) rlwe: Arc<RlweContext>,
    pub(crate) t: u64,
    pub(crate) plan_t: NttPlan64,
    /// `slot_index[s]` = position of slot `s` in the bit-reversed NTT output mod t.
    pub(crate) slot_index: Vec<usize>,
    pub(crate) levels: Vec<LevelTables>,
    /// HPS scale-and-round tables per level, built on first use.
    pub(crate) mul_tables: Vec<OnceLock<Arc<ScaleRounder>>>,
    /// Constants of the noise estimate.
    pub(crate) noise: NoiseModel,
    sampler: Mutex<Sampler>,
}

impl std::fmt::Debug for BfvContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BfvContext")
            .field("n", &self.rlwe.n())
            .field("plain_modulus", &self.t)
            .field("q_primes", &self.params.rlwe.q_primes().len())
            .field("p_primes", &self.params.rlwe.p_primes().len())
            .field("aux_primes", &self.params.rlwe.aux_primes().len())
            .field("dnum", &self.params.rlwe.dnum())
            .finish()
    }
}

impl BfvContext {
    /// Builds the context on the default (CPU) backend, with randomness from the OS.
    pub fn new(params: BfvParams) -> Result<Self> {
        Self::builder(params).build()
    }

    /// Builds the context with a fixed sampler seed: reproducible keys and ciphertexts for tests.
    /// Never use a fixed seed in production.
    pub fn with_seed(params: BfvParams, seed: [u8; 32]) -> Result<Self> {
        Self::builder(params).seed(seed).build()
    }

    /// Builds the context on a chosen backend (see [`crate::backend::create_backend`]), with
    /// randomness from the OS.
    pub fn with_backend(params: BfvParams, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::builder(params).backend(backend).build()
    }

    /// Every way to build a context (backend, seed, a shared RLWE context), the same for CKKS
    /// ([`crate::ckks::CkksContext::builder`]); see [`ContextBuilder`].
    pub fn builder(params: BfvParams) -> ContextBuilder<BfvParams> {
        ContextBuilder::new(params)
    }

    /// A context for plaintext modulus `t` over an existing RLWE context (e.g. on another
    /// backend, or shared between several plaintext moduli). Keys of that RLWE context work
    /// here too. The RLWE context's auxiliary primes must be large enough for `t`.
    pub fn from_rlwe(rlwe: Arc<RlweContext>, t: u64) -> Result<Self> {
        Self::build(rlwe, t, Sampler::from_os())
    }

    pub(crate) fn build(rlwe: Arc<RlweContext>, t: u64, sampler: Sampler) -> Result<Self> {
        let n = rlwe.n();
        let t = resolve_plain_modulus(PlainModulus::Prime(t), n, &[])?;
        let params = BfvParams {
            rlwe: rlwe.params().clone(),
            plain_modulus: t,
        };
        params.check_budget()?;
        let aux_bits: f64 = params
            .rlwe
            .aux_primes()
            .iter()
            .map(|&p| (p as f64).log2())
            .sum();
        let need = aux_bits_needed(params.rlwe.log_q(), n, t);
        if aux_bits < need {
            return Err(Error::InvalidParameters(format!(
                "BFV multiplication needs an auxiliary basis of {need:.0} bits for t = {t}, but the RLWE \
                 parameters have {aux_bits:.0}; build them with `BfvParams`"
            )));
        }
        let plan_t = NttPlan64::new(n, t)?;
        let slot_index = slot_index_map(n);
        let moduli = rlwe.ring().moduli();
        let nq = params.rlwe.q_primes().len();
        let levels: Vec<LevelTables> = (0..nq)
            .map(|l| LevelTables::new(&moduli[..=l], t))
            .collect();
        let mul_tables = (0..nq).map(|_| OnceLock::new()).collect();
        let noise = noise_model(&rlwe, t, &levels);
        Ok(Self {
            params,
            rlwe,
            t,
            plan_t,
            slot_index,
            levels,
            mul_tables,
            noise,
            sampler: Mutex::new(sampler),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &BfvParams {
        &self.params
    }

    /// The underlying RLWE context (ring, backend, converters).
    pub fn rlwe(&self) -> &Arc<RlweContext> {
        &self.rlwe
    }

    /// The plaintext modulus t.
    pub fn plain_modulus(&self) -> u64 {
        self.t
    }

    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.rlwe.n()
    }

    /// Number of slots (N), arranged as 2 rows of N/2.
    pub fn slots(&self) -> usize {
        self.rlwe.n()
    }

    /// Sequential relinearized products (of fresh public-key encryptions at the top, each
    /// squared) the noise estimate allows before the budget runs out, counted up to `limit`:
    /// the depth [`BfvParams::builder`] plans with, and the one the evaluator enforces.
    pub(crate) fn depth_capacity(&self, limit: usize) -> usize {
        let top = self.max_level();
        let mut noise = self.noise.fresh_public(top);
        for depth in 0..limit {
            noise = self
                .noise
                .key_switch(self.noise.multiply(noise, noise, top), top);
            if self.noise.budget(noise) <= 0.0 {
                return depth;
            }
        }
        limit
    }

    /// Highest level (fresh ciphertexts live there).
    pub fn max_level(&self) -> usize {
        self.rlwe.max_level()
    }

    pub(crate) fn with_sampler<R>(&self, f: impl FnOnce(&mut Sampler) -> R) -> R {
        let mut s = self.sampler.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// Checks that a ciphertext belongs to this context (same RLWE parameters and same t).
    pub(crate) fn check_ct(&self, ct: &Ciphertext, what: &str) -> Result<()> {
        self.rlwe.check_fingerprint(ct.inner.fingerprint, what)?;
        if ct.plain_modulus != self.t {
            return Err(Error::ParameterMismatch(format!(
                "{what} was encrypted for plaintext modulus {}, this context uses {}",
                ct.plain_modulus, self.t
            )));
        }
        Ok(())
    }

    /// Checks that a plaintext was made for this `t` and ring degree.
    pub(crate) fn check_pt(&self, pt: &Plaintext) -> Result<()> {
        if pt.plain_modulus != self.t || pt.coeffs.len() != self.n() {
            return Err(Error::ParameterMismatch(format!(
                "plaintext for t = {} with {} coefficients used with t = {}, N = {}",
                pt.plain_modulus,
                pt.coeffs.len(),
                self.t,
                self.n()
            )));
        }
        Ok(())
    }

    pub(crate) fn wrap(&self, inner: rct::Ciphertext, noise_log2: f64) -> Ciphertext {
        Ciphertext {
            inner,
            plain_modulus: self.t,
            noise_log2,
        }
    }

    /// [`Self::wrap`], refusing a result whose estimated noise budget is below 0 bits
    /// (`Error::NoiseBudgetExhausted`): past that point decryption is no longer expected to be
    /// right, and every later result would be wrong too.
    pub(crate) fn wrap_checked(
        &self,
        inner: rct::Ciphertext,
        noise_log2: f64,
        op: &'static str,
    ) -> Result<Ciphertext> {
        let budget = self.noise.budget(noise_log2);
        if budget < 0.0 {
            return Err(Error::NoiseBudgetExhausted {
                op,
                budget_bits: budget,
                basis: "estimated",
            });
        }
        Ok(self.wrap(inner, noise_log2))
    }

    /// The noise budget in bits that the evaluator's estimate leaves `ct` (no secret key
    /// needed): `−log2(2·τ·σ)`, see [`crate::bfv::noise`]. Conservative: never more than
    /// [`Self::invariant_noise_budget`] measures (checked in `tests/bfv.rs`), typically a few bits
    /// less. Operations refuse results for which it is negative; it can only be negative for
    /// results of [`Self::multiply_relin_unchecked`].
    pub fn noise_budget_estimate(&self, ct: &Ciphertext) -> f64 {
        self.noise.budget(ct.noise_log2)
    }

    // ----- keys -----------------------------------------------------------------------------

    /// Generates secret, public and relinearization keys (as CKKS's `keygen` does).
    pub fn keygen(&self) -> Result<KeySet> {
        self.with_sampler(|s| KeySet::generate(&self.rlwe, s))
    }

    /// The public key of `sk`.
    pub fn gen_public_key(&self, sk: &SecretKey) -> Result<PublicKey> {
        self.with_sampler(|s| PublicKey::generate(&self.rlwe, sk, s))
    }

    /// The relinearization key of `sk` (needed after ciphertext multiplication).
    pub fn gen_relin_key(&self, sk: &SecretKey) -> Result<RelinKey> {
        self.with_sampler(|s| RelinKey::generate(&self.rlwe, sk, s))
    }

    /// Galois keys for rotating rows by each of `steps` (positive = left, negative = right;
    /// steps are taken mod N/2) plus the column swap. Each key costs as much as a
    /// relinearization key; rotations by other steps need combinations of these.
    pub fn gen_galois_keys(&self, sk: &SecretKey, steps: &[i64]) -> Result<GaloisKeys> {
        let n = self.n();
        let mut elements: Vec<usize> = steps
            .iter()
            .map(|&s| galois_element_for_step(n, s))
            .filter(|&g| g != 1)
            .collect();
        elements.push(galois_element_conjugate(n));
        self.with_sampler(|s| GaloisKeys::generate(&self.rlwe, sk, &elements, s))
    }

    // ----- encryption -----------------------------------------------------------------------

    /// `round(Q_l·m/t)` in the NTT domain over the primes of `level`: the scaled message a
    /// ciphertext carries. Rounding `Q·m/t` (rather than `floor(Q/t)·m`) keeps the encoding
    /// error below 1/2, where `floor(Q/t)·m` would add up to `t` of noise — 60 bits of budget
    /// for a 60-bit `t`.
    pub(crate) fn scaled_message(&self, pt: &Plaintext, level: usize) -> Result<PolyBatch> {
        self.check_pt(pt)?;
        let tabs = &self.levels[level];
        let t = self.t as u128;
        let (r, half) = (tabs.q_mod_t as u128, (t - 1) / 2);
        let corr: Vec<u64> = pt
            .coeffs
            .iter()
            .map(|&m| ((r * m as u128 + half) / t) as u64)
            .collect();
        let n = self.n();
        let limbs = self.rlwe.q_limbs(level);
        let ring = self.rlwe.ring();
        let mut words = vec![0u32; limbs.len() * n];
        words.par_chunks_mut(n).enumerate().for_each(|(i, out)| {
            let m = ring.modulus(limbs[i]);
            let d = tabs.delta[i];
            let ds = m.shoup(d);
            for ((o, &x), &c) in out.iter_mut().zip(&pt.coeffs).zip(&corr) {
                let xm = m.reduce_u64(x);
                *o = m.add(m.mul_shoup(xm, d, ds), m.reduce_u64(c));
            }
        });
        let be = self.rlwe.backend();
        let mut p = be.upload(words, limbs, 1, n, Repr::Coeff)?;
        be.ntt_forward(ring, &mut p)?;
        Ok(p)
    }

    /// The plaintext lifted to centered integers `(-t/2, t/2]` over the primes of `level`, NTT
    /// domain: the multiplicand of plaintext multiplication (centering halves its noise growth),
    /// with `Σ p_j²` of the centered coefficients (the noise estimate's factor `‖p‖₂²`).
    pub(crate) fn lifted_plain(&self, pt: &Plaintext, level: usize) -> Result<(PolyBatch, f64)> {
        self.check_pt(pt)?;
        let t = self.t;
        let centered: Vec<i64> = pt
            .coeffs
            .iter()
            .map(|&m| {
                if m > t / 2 {
                    m as i64 - t as i64
                } else {
                    m as i64
                }
            })
            .collect();
        let norm2_sq = centered.iter().map(|&c| (c as f64) * (c as f64)).sum();
        let p = self
            .rlwe
            .upload_signed_ntt(&centered, self.rlwe.q_limbs(level))?;
        Ok((p, norm2_sq))
    }

    /// Public-key encryption at the top level.
    pub fn encrypt(&self, pt: &Plaintext, pk: &PublicKey) -> Result<Ciphertext> {
        let level = self.max_level();
        let m = self.scaled_message(pt, level)?;
        let mut s = self.with_sampler(Sampler::fork);
        let inner = rct::encrypt_public(&self.rlwe, pk, &m, 1.0, &mut s)?;
        self.wrap_checked(inner, self.noise.fresh_public(level), "encrypt")
    }

    /// Symmetric (secret-key) encryption at the top level: less noise than public-key
    /// encryption, and `c_1` is the expansion of a 32-byte seed (compact serialization).
    pub fn encrypt_symmetric(&self, pt: &Plaintext, sk: &SecretKey) -> Result<Ciphertext> {
        let level = self.max_level();
        let m = self.scaled_message(pt, level)?;
        let mut s = self.with_sampler(Sampler::fork);
        let inner = rct::encrypt_symmetric(&self.rlwe, sk, &m, 1.0, &mut s)?;
        self.wrap_checked(
            inner,
            self.noise.fresh_symmetric(level),
            "encrypt_symmetric",
        )
    }

    /// Decrypts to the plaintext polynomial: `m = round(t·x/Q_l) mod t` with
    /// `x = c_0 + c_1·s (+ c_2·s²)`, computed exactly in integers (CRT with 64-bit fixed-point
    /// fractions).
    ///
    /// The fractional parts of `t·x/Q_l` that the rounding discards are the invariant noise `v`
    /// (mod 1), so decryption measures the noise for free: when the largest `|v|` leaves less
    /// than [`MIN_DECRYPT_BUDGET_BITS`] of budget (`|v| ≥ 1/4`), the result is
    /// `Error::NoiseBudgetExhausted` instead of values that are probably wrong. (A noise that has
    /// wrapped past 1/2 looks like a smaller one of the other sign, so the measurement cannot
    /// tell a right result at `1/4 ≤ ‖v‖ < 1/2` from a wrong one; over N coefficients a wrapped
    /// noise shows a largest `|v mod 1|` close to 1/2, i.e. ~0 bits. This is the same quantity
    /// [`Self::invariant_noise_budget`] computes with big integers.)
    pub fn decrypt(&self, ct: &Ciphertext, sk: &SecretKey) -> Result<Plaintext> {
        self.check_ct(ct, "ciphertext")?;
        let x = rct::decrypt_to_poly(&self.rlwe, sk, &ct.inner)?;
        self.decode_phase(&x)
    }

    /// The rounding half of [`Self::decrypt`]: `round(t·x/Q_l) mod t` of a phase
    /// `x = c_0 + c_1·s` (one coefficient-form polynomial over the primes of a level), with the
    /// same measured-noise check. Collective decryption ([`crate::mhe`]) produces the phase
    /// without any party holding `s`.
    pub fn decode_phase(&self, x: &PolyBatch) -> Result<Plaintext> {
        let level = x.limbs().len().checked_sub(1).unwrap_or(usize::MAX);
        if x.count() != 1
            || x.repr() != crate::backend::Repr::Coeff
            || level > self.max_level()
            || *x.limbs() != *self.rlwe.q_limbs(level)
        {
            return Err(Error::InvalidInput(
                "a BFV phase is one coefficient-form polynomial over a level's primes".into(),
            ));
        }
        let words = self.rlwe.backend().download(x)?;
        let tabs = &self.levels[level];
        let n = self.n();
        let t = self.t as u128;
        const CHUNK: usize = 1024;
        let mut coeffs = vec![0u64; n];
        // Largest distance of t·x/Q to the nearest integer, in units of 2^-64.
        let max_frac = coeffs
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, out)| {
                let base = c * CHUNK;
                let len = out.len();
                let mut int = vec![0u128; len];
                let mut frac = vec![0u128; len];
                for (i, (&fi, &th)) in tabs.dec_int.iter().zip(&tabs.dec_frac).enumerate() {
                    let xs = &words[i * n + base..i * n + base + len];
                    for ((a, b), &x) in int.iter_mut().zip(frac.iter_mut()).zip(xs) {
                        *a += x as u128 * fi as u128;
                        *b += x as u128 * th as u128;
                    }
                }
                let mut worst = 0u64;
                for ((o, a), b) in out.iter_mut().zip(int).zip(frac) {
                    *o = ((a + ((b + (1 << 63)) >> 64)) % t) as u64;
                    let f = b as u64;
                    worst = worst.max(if f >= 1 << 63 { f.wrapping_neg() } else { f });
                }
                worst
            })
            .max()
            .unwrap_or(0);
        // |v| = max_frac / 2^64, budget = −log2(2|v|). The fixed-point tables are exact to
        // ~2^-34 per limb, far finer than the 1-bit threshold.
        let measured = 63.0 - (max_frac.max(1) as f64).log2();
        if measured < MIN_DECRYPT_BUDGET_BITS {
            return Err(Error::NoiseBudgetExhausted {
                op: "decrypt",
                budget_bits: measured.max(0.0),
                basis: "measured",
            });
        }
        Ok(Plaintext {
            coeffs,
            plain_modulus: self.t,
        })
    }

    /// The invariant noise budget in bits, as SEAL reports it: `log2(Q_l) − log2(‖[t·x]_{Q_l}‖∞) − 1`
    /// with `x = c_0 + c_1·s (+ c_2·s²)`, clamped at 0. Decryption is correct while it is
    /// positive; each multiplication spends roughly `log2 t + log2 N` bits. Once the noise has
    /// wrapped around (decryption already wrong) the measured value is close to 0 rather than
    /// negative, so treat anything below about one bit as exhausted. A diagnostic that needs the
    /// secret key (BigInt CRT per coefficient, so tens of milliseconds).
    pub fn invariant_noise_budget(&self, ct: &Ciphertext, sk: &SecretKey) -> Result<f64> {
        self.check_ct(ct, "ciphertext")?;
        let mut x = rct::decrypt_to_poly(&self.rlwe, sk, &ct.inner)?;
        let be = self.rlwe.backend();
        let ring = self.rlwe.ring();
        let limbs = x.limbs_arc();
        let t_mod: Vec<u32> = limbs
            .iter()
            .map(|&l| ring.modulus(l).reduce_u64(self.t))
            .collect();
        be.mul_scalar_assign(ring, &mut x, &t_mod)?;
        let words = be.download(&x)?;
        let moduli: Vec<Modulus> = limbs.iter().map(|&l| *ring.modulus(l)).collect();
        let basis = RnsBasis::new(&moduli);
        let n = self.n();
        let k = moduli.len();
        let max = (0..n)
            .into_par_iter()
            .map(|c| {
                let res: Vec<u32> = (0..k).map(|i| words[i * n + c]).collect();
                basis.compose_centered(&res).abs()
            })
            .max()
            .unwrap_or_default();
        let log_q = self.levels[ct.level()].log_q;
        Ok((log_q - log2_big(&max) - 1.0).max(0.0))
    }
}

/// The noise model's constants for `rlwe` and `t`: log2 Q_l per level, the key-switching
/// digits present at each level (number of primes, log2 of their product) and log2 P.
fn noise_model(rlwe: &RlweContext, t: u64, levels: &[LevelTables]) -> NoiseModel {
    let ring = rlwe.ring();
    let log2 = |l: usize| (ring.modulus(l).value() as f64).log2();
    let log_p: f64 = rlwe.p_limbs().iter().map(|&l| log2(l)).sum();
    let digits: Vec<Vec<(usize, f64)>> = (0..levels.len())
        .map(|level| {
            rlwe.digits()
                .into_iter()
                .map(|r| r.filter(|&l| l <= level).collect::<Vec<_>>())
                .filter(|d| !d.is_empty())
                .map(|d| (d.len(), d.iter().map(|&l| log2(l)).sum()))
                .collect()
        })
        .collect();
    NoiseModel::new(
        rlwe.n(),
        t,
        levels.iter().map(|l| l.log_q).collect(),
        &digits,
        log_p,
    )
}

/// log2 of a non-negative big integer (0 for 0), accurate to f64 precision.
fn log2_big(x: &BigInt) -> f64 {
    let bits = x.bits();
    if bits == 0 {
        return 0.0;
    }
    let shift = bits.saturating_sub(64);
    let top = (x >> shift).to_u64().unwrap_or(u64::MAX);
    (top as f64).log2() + shift as f64
}

/// Slot → NTT-output position for SEAL's 2 × N/2 layout: slot `i` of the first row is the
/// evaluation at `ψ^(3^i mod 2N)`, slot `i` of the second row at `ψ^(−3^i mod 2N)`, so that the
/// automorphism `X → X^3` rotates both rows left by one and `X → X^(2N−1)` swaps the rows. The
/// forward NTT puts the evaluation at `ψ^(2j+1)` at position `bitrev(j)`.
pub(crate) fn slot_index_map(n: usize) -> Vec<usize> {
    let log_n = n.trailing_zeros();
    let two_n = 2 * n;
    let half = n / 2;
    let mut map = vec![0usize; n];
    let mut e = 1usize;
    for i in 0..half {
        map[i] = crate::math::ntt::bit_reverse((e - 1) / 2, log_n);
        map[half + i] = crate::math::ntt::bit_reverse((two_n - e - 1) / 2, log_n);
        e = e * 3 % two_n;
    }
    map
}

impl SchemeParams for BfvParams {
    type Context = BfvContext;

    fn rlwe_params(&self) -> &RlweParams {
        &self.rlwe
    }

    fn assemble(self, rlwe: Arc<RlweContext>, sampler: Sampler) -> Result<BfvContext> {
        BfvContext::build(rlwe, self.plain_modulus, sampler)
    }
}
