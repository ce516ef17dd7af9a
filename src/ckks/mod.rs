//! CKKS: approximate arithmetic on vectors of real or complex numbers.
//!
//! Each level has one scale prime, or `t` of them with composite scaling (a scale above the
//! 30-bit word, e.g. 2^40 from two ~2^20 primes); [`CkksContext::rescale`] divides by the
//! level's modulus in one pass. Parameters come from [`CkksParams::builder`] (by depth and
//! scale) or [`CkksParams::preset`]. Operands at different
//! levels are brought to the lower one automatically (dropping primes keeps the value and the
//! scale); operands at different scales are rejected with [`Error::ScaleMismatch`].
//!
//! ```
//! use hetensor::ckks::{CkksContext, CkksParams};
//! # fn main() -> hetensor::Result<()> {
//! let ctx = CkksContext::new(CkksParams::preset(13, 25)?)?;
//! let keys = ctx.keygen()?;
//! let a = ctx.encrypt(&ctx.encode(&[1.5, -2.0, 3.25], ctx.default_scale(), ctx.max_level())?, &keys.public)?;
//! let b = ctx.encrypt(&ctx.encode(&[2.0, 0.5, -1.0], ctx.default_scale(), ctx.max_level())?, &keys.public)?;
//! let prod = ctx.rescale(&ctx.relinearize(&ctx.multiply(&a, &b)?, &keys.relin)?)?;
//! let out = ctx.decrypt_decode(&prod, &keys.secret)?;
//! assert!((out[0] - 3.0).abs() < 1e-3 && (out[1] + 1.0).abs() < 1e-3 && (out[2] + 3.25).abs() < 1e-3);
//! // The same product in one call: one key switch and one ModDown for the relinearization and
//! // the rescale (on a GPU backend the size-3 product is never written).
//! let fused = ctx.multiply_relinearize_rescale(&a, &b, &keys.relin)?;
//! assert_eq!(fused.level(), prod.level());
//! let out = ctx.decrypt_decode(&fused, &keys.secret)?;
//! assert!((out[0] - 3.0).abs() < 1e-3 && (out[2] + 3.25).abs() < 1e-3);
//! # Ok(()) }
//! ```

pub mod bootstrap;
pub mod encoder;
pub mod params;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use num_complex::Complex64;

use crate::backend::{Backend, PolyBatch};
use crate::error::{Error, Result};
use crate::math::rns::CenteredLift;
use crate::math::sampler::Sampler;
use crate::rlwe::ciphertext as ct_ops;
use crate::rlwe::keys::{ckks_galois_element, galois_element_conjugate};
use crate::rlwe::{
    Ciphertext, ContextBuilder, GaloisKeys, PublicKey, RelinKey, RlweContext, RlweParams,
    SchemeParams, SecretKey,
};

pub use crate::rlwe::keys::KeySet;
pub use encoder::CkksEncoder;
pub use params::{CkksParams, CkksParamsBuilder, ExplicitChain, SinglePrimeChain, MAX_SCALE_BITS};

/// An encoded (unencrypted) CKKS message at some level and scale, NTT domain.
#[derive(Clone, Debug)]
pub struct Plaintext {
    pub(crate) poly: PolyBatch,
    pub(crate) scale: f64,
    pub(crate) level: usize,
}

impl Plaintext {
    /// Level of the plaintext.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Scale of the plaintext.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The encoded polynomial (NTT form, over the level's primes).
    pub fn poly(&self) -> &PolyBatch {
        &self.poly
    }
}

/// A CKKS context: parameters, ring, encoder and randomness.
#[derive(Debug)]
pub struct CkksContext {
    rlwe: Arc<RlweContext>,
    params: CkksParams,
    encoder: CkksEncoder,
    sampler: Mutex<Sampler>,
}

/// Relative tolerance under which two scales count as equal (float bookkeeping only).
const SCALE_TOLERANCE: f64 = 1e-9;
/// `round(c · scale)` as an integer (a constant's encoding), or why it has none: it must be
/// finite and below 2^126 (scales above 2^62 give constants past 64 bits).
fn scaled_integer(what: &str, c: f64, scale: f64) -> Result<i128> {
    if !c.is_finite() {
        // Not a scale problem: NaN and ±inf have no encoding at any scale.
        return Err(Error::InvalidInput(format!("{what} {c} is not finite")));
    }
    let v = (c * scale).round();
    if !v.is_finite() || v.abs() >= 126f64.exp2() {
        return Err(Error::ScaleOverflow(format!(
            "{what} {c:e} at scale 2^{:.1} is 2^{:.1}, beyond 126 bits",
            scale.log2(),
            // From the logarithms: the product itself may have overflowed to inf.
            c.abs().log2() + scale.log2()
        )));
    }
    Ok(v as i128)
}

/// What [`CkksContext::polynomial_input`] leaves the evaluators.
enum PolynomialInput {
    /// A constant polynomial, already evaluated.
    Constant(Ciphertext),
    /// The (relinearized) input and the degree, with the levels for it checked.
    Ready { x: Ciphertext, degree: usize },
}

/// Coefficients below 2^62 in magnitude are encoded from 64-bit integers.
const WORD_LIMIT: f64 = 4_611_686_018_427_387_904.0;

/// The value of `values` when they fill all `slots` with one real number (a broadcast).
fn real_constant(values: &[Complex64], slots: usize) -> Option<f64> {
    let first = *values.first()?;
    (values.len() == slots && first.im == 0.0 && values.iter().all(|&v| v == first))
        .then_some(first.re)
}

impl CkksContext {
    /// Builds a context on the default (CPU) backend, with randomness from the OS.
    pub fn new(params: CkksParams) -> Result<Self> {
        Self::builder(params).build()
    }

    /// Builds a context on a chosen backend (see [`crate::backend::create_backend`]), with
    /// randomness from the OS.
    pub fn with_backend(params: CkksParams, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::builder(params).backend(backend).build()
    }

    /// Builds a context with a fixed seed: reproducible keys and ciphertexts, for tests only.
    pub fn with_seed(params: CkksParams, seed: [u8; 32]) -> Result<Self> {
        Self::builder(params).seed(seed).build()
    }

    /// Every way to build a context (backend, seed, a shared RLWE context), the same for BFV
    /// ([`crate::bfv::BfvContext::builder`]); see [`ContextBuilder`].
    pub fn builder(params: CkksParams) -> ContextBuilder<CkksParams> {
        ContextBuilder::new(params)
    }

    /// The RLWE context underneath.
    pub fn rlwe(&self) -> &Arc<RlweContext> {
        &self.rlwe
    }

    /// Parameters.
    pub fn params(&self) -> &CkksParams {
        &self.params
    }

    /// Number of slots (N/2).
    pub fn slots(&self) -> usize {
        self.encoder.slots()
    }

    /// Highest level a fresh ciphertext gets: the top of the chain, or on a two-segment
    /// (bootstrapping) chain the top of its computation levels.
    pub fn max_level(&self) -> usize {
        self.params.computation_levels()
    }

    /// The top of the whole chain (on a two-segment chain, above [`Self::max_level`]:
    /// bootstrapping's levels).
    pub fn chain_top(&self) -> usize {
        self.rlwe.max_level()
    }

    /// 2^scale_bits.
    pub fn default_scale(&self) -> f64 {
        (self.params.scale_bits as f64).exp2()
    }

    /// The natural scale of `level`: Δ at the top, and below it what squaring a ciphertext at
    /// the natural scale one level up and rescaling gives (Δ_{ℓ−1} = Δ_ℓ² / q_ℓ). The chain's
    /// primes keep every natural scale within half a bit of Δ; encoding a fresh operand for
    /// level ℓ at this scale lets it meet results computed down to ℓ without a scale fix-up.
    ///
    /// On a two-segment chain each segment has its own: Δ at the top of the computation
    /// levels, and the upper scale at the top of the chain for the levels above them.
    pub fn natural_scale(&self, level: usize) -> f64 {
        let (top, scale) = match self.params.upper_scale_bits {
            Some(bits) if level > self.max_level() => (self.chain_top(), (bits as f64).exp2()),
            _ => (self.max_level(), self.default_scale()),
        };
        (level + 1..=top)
            .rev()
            .fold(scale, |s, l| s * s / self.level_modulus(l))
    }

    /// What rescaling at `level` divides by: the product of that level's primes (one prime,
    /// or `t` with composite scaling). Passing it as a constant's scale makes the next
    /// rescale restore the current scale exactly.
    pub fn level_modulus(&self, level: usize) -> f64 {
        self.level_primes(level)
            .iter()
            .map(|&l| self.rlwe.ring().modulus(l).value() as f64)
            .product()
    }

    /// The limbs a rescale at `level` (≥ 1) drops.
    fn level_primes(&self, level: usize) -> Vec<usize> {
        let below = self.rlwe.q_limbs(level.saturating_sub(1)).len();
        self.rlwe.q_limbs(level)[below..].to_vec()
    }

    fn with_sampler<T>(&self, f: impl FnOnce(&mut Sampler) -> Result<T>) -> Result<T> {
        let mut s = self.sampler.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// Generates secret, public and relinearization keys.
    pub fn keygen(&self) -> Result<KeySet> {
        self.with_sampler(|s| KeySet::generate(&self.rlwe, s))
    }

    /// The public key of `sk` (e.g. a secret key read back from a file).
    pub fn gen_public_key(&self, sk: &SecretKey) -> Result<PublicKey> {
        self.rlwe.check_fingerprint(sk.fingerprint, "secret key")?;
        self.with_sampler(|s| PublicKey::generate(&self.rlwe, sk, s))
    }

    /// The relinearization key of `sk`.
    pub fn gen_relin_key(&self, sk: &SecretKey) -> Result<RelinKey> {
        self.rlwe.check_fingerprint(sk.fingerprint, "secret key")?;
        self.with_sampler(|s| RelinKey::generate(&self.rlwe, sk, s))
    }

    /// The Galois element of a rotation by `step` slots, which [`GaloisKeys`] are keyed by
    /// (CKKS slots use generator 5; BFV rows use 3, `rlwe::keys::galois_element_for_step`).
    pub fn galois_element(&self, step: i64) -> usize {
        ckks_galois_element(self.rlwe.n(), step)
    }

    /// Galois keys for rotations by the given slot steps (and conjugation if asked).
    pub fn gen_galois_keys(
        &self,
        sk: &SecretKey,
        steps: &[i64],
        conjugation: bool,
    ) -> Result<GaloisKeys> {
        let n = self.rlwe.n();
        let mut els: Vec<usize> = steps.iter().map(|&s| ckks_galois_element(n, s)).collect();
        if conjugation {
            els.push(galois_element_conjugate(n));
        }
        self.with_sampler(|s| GaloisKeys::generate(&self.rlwe, sk, &els, s))
    }

    /// [`Self::gen_galois_keys`] for ciphertexts at `level` and below only: keys over that
    /// level's primes ([`GaloisKeys::generate_below`]), a fraction of a full key's memory when
    /// the rotations run low in the chain (computation levels under a bootstrap's).
    pub fn gen_galois_keys_below(
        &self,
        sk: &SecretKey,
        steps: &[i64],
        level: usize,
    ) -> Result<GaloisKeys> {
        let n = self.rlwe.n();
        let q_count = self.rlwe.q_limbs(level.min(self.chain_top())).len();
        let els: Vec<(usize, usize)> = steps
            .iter()
            .map(|&s| (ckks_galois_element(n, s), q_count))
            .collect();
        self.with_sampler(|s| GaloisKeys::generate_below(&self.rlwe, sk, &els, s))
    }

    /// Encodes real values into slots at `scale` and `level`.
    pub fn encode(&self, values: &[f64], scale: f64, level: usize) -> Result<Plaintext> {
        let z: Vec<Complex64> = values.iter().map(|&v| Complex64::new(v, 0.0)).collect();
        self.encode_complex(&z, scale, level)
    }

    /// Encodes complex values into slots at `scale` and `level`.
    pub fn encode_complex(
        &self,
        values: &[Complex64],
        scale: f64,
        level: usize,
    ) -> Result<Plaintext> {
        let poly = self.encode_complex_over(values, scale, level, self.rlwe.q_limbs(level))?;
        Ok(Plaintext { poly, scale, level })
    }

    /// [`Self::encode_complex`] bounded by `level`'s modulus but uploaded to `limbs` (NTT
    /// form): the level's limbs plus the special primes for products in the key-switching
    /// basis.
    pub(crate) fn encode_complex_over(
        &self,
        values: &[Complex64],
        scale: f64,
        level: usize,
        limbs: Arc<[usize]>,
    ) -> Result<PolyBatch> {
        if values.len() > self.slots() {
            return Err(Error::TooManyValues {
                got: values.len(),
                slots: self.slots(),
            });
        }
        if level > self.chain_top() {
            return Err(Error::InvalidInput(format!(
                "level {level} above the chain's top {}",
                self.chain_top()
            )));
        }
        if let Some(i) = values
            .iter()
            .position(|v| !v.re.is_finite() || !v.im.is_finite())
        {
            return Err(Error::InvalidInput(format!(
                "cannot encode the value {} in slot {i}: values must be finite",
                values[i]
            )));
        }
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(Error::InvalidInput(format!(
                "cannot encode at scale {scale:e}: the scale must be finite and ≥ 1"
            )));
        }
        let limit = self.coefficient_limit(level);
        let check = |v: f64| {
            if v.abs() >= limit {
                return Err(Error::ScaleOverflow(format!(
                    "encoding at scale 2^{:.1} gives a coefficient of 2^{:.1}, beyond the 2^{:.1} that level {level} holds; lower the scale or the values",
                    scale.log2(),
                    v.abs().log2(),
                    limit.log2()
                )));
            }
            Ok(v)
        };
        // One real value in every slot is the constant polynomial: no embedding, no NTT.
        if let Some(c) = real_constant(values, self.slots()) {
            let v = check((c * scale).round())?;
            return self.rlwe.upload_constant_ntt(v as i128, limbs);
        }
        let scaled = self
            .encoder
            .embed_inverse(values)
            .into_iter()
            .map(|c| check((c * scale).round()))
            .collect::<Result<Vec<f64>>>()?;
        // Scales above 2^62 (precise outputs, `MAX_SCALE_BITS`) give coefficients past the
        // 64-bit words: those are reduced from 128-bit integers (exact for an integral f64).
        if scaled.iter().all(|v| v.abs() < WORD_LIMIT) {
            let ints: Vec<i64> = scaled.iter().map(|&v| v as i64).collect();
            self.rlwe.upload_signed_ntt(&ints, limbs)
        } else {
            let ints: Vec<i128> = scaled.iter().map(|&v| v as i128).collect();
            self.rlwe.upload_wide_ntt(&ints, limbs)
        }
    }

    /// log2 Q_level.
    fn log_q(&self, level: usize) -> f64 {
        self.rlwe
            .q_limbs(level)
            .iter()
            .map(|&i| (self.rlwe.ring().modulus(i).value() as f64).log2())
            .sum()
    }

    /// Largest coefficient magnitude an encoding may have at a level (min of Q_l/2 and 2^126,
    /// what a 128-bit integer holds).
    fn coefficient_limit(&self, level: usize) -> f64 {
        (self.log_q(level) - 1.0).min(126.0).exp2()
    }

    /// Decodes a plaintext polynomial (coefficient form) into real slot values.
    pub fn decode_poly(&self, poly: &PolyBatch, scale: f64) -> Result<Vec<Complex64>> {
        let words = self.rlwe.backend().download(poly)?;
        let n = self.rlwe.n();
        let limbs = poly.limbs();
        let moduli: Vec<_> = limbs
            .iter()
            .map(|&l| *self.rlwe.ring().modulus(l))
            .collect();
        let coeffs: Vec<f64> = if moduli.len() == 1 {
            words
                .iter()
                .map(|&w| moduli[0].center(w) as f64 / scale)
                .collect()
        } else {
            use rayon::prelude::*;
            let lift = CenteredLift::new(&moduli);
            let l = moduli.len();
            let mut coeffs = vec![0f64; n];
            coeffs
                .par_chunks_mut(1024)
                .enumerate()
                .for_each(|(c, out)| {
                    let (mut residues, mut scratch) = (vec![0u32; l], vec![0u32; l]);
                    for (j, o) in out.iter_mut().enumerate() {
                        let k = c * 1024 + j;
                        for (i, r) in residues.iter_mut().enumerate() {
                            *r = words[i * n + k];
                        }
                        *o = lift.to_f64(&residues, &mut scratch) / scale;
                    }
                });
            coeffs
        };
        Ok(self.encoder.embed(&coeffs))
    }

    /// Encrypts with the public key.
    pub fn encrypt(&self, pt: &Plaintext, pk: &PublicKey) -> Result<Ciphertext> {
        let mut s = self.fork_sampler()?;
        ct_ops::encrypt_public(&self.rlwe, pk, &pt.poly, pt.scale, &mut s)
    }

    /// Encrypts with the secret key (seeded: `c_1` is stored as 32 bytes when serialized).
    pub fn encrypt_symmetric(&self, pt: &Plaintext, sk: &SecretKey) -> Result<Ciphertext> {
        let mut s = self.fork_sampler()?;
        ct_ops::encrypt_symmetric(&self.rlwe, sk, &pt.poly, pt.scale, &mut s)
    }

    /// [`Self::encrypt`] of every plaintext, in parallel ([`Self::encrypt_symmetric_many`]).
    pub fn encrypt_many(&self, pts: &[&Plaintext], pk: &PublicKey) -> Result<Vec<Ciphertext>> {
        self.in_parallel(pts, |pt, s| {
            ct_ops::encrypt_public(&self.rlwe, pk, &pt.poly, pt.scale, s)
        })
    }

    /// [`Self::encrypt_symmetric`] of every plaintext, in parallel: each ciphertext gets its
    /// own ChaCha20 stream, seeded with 32 bytes drawn from the context's, so that only the
    /// seeds are drawn in turn (a 2^14 encryption spends a third of its time sampling).
    pub fn encrypt_symmetric_many(
        &self,
        pts: &[&Plaintext],
        sk: &SecretKey,
    ) -> Result<Vec<Ciphertext>> {
        self.in_parallel(pts, |pt, s| {
            ct_ops::encrypt_symmetric(&self.rlwe, sk, &pt.poly, pt.scale, s)
        })
    }

    /// `encrypt(pt, sampler)` for every plaintext in parallel, each with a sampler forked from
    /// the context's ([`Sampler::fork`]).
    fn in_parallel(
        &self,
        pts: &[&Plaintext],
        encrypt: impl Fn(&Plaintext, &mut Sampler) -> Result<Ciphertext> + Sync,
    ) -> Result<Vec<Ciphertext>> {
        use rayon::prelude::*;
        let mut samplers =
            self.with_sampler(|s| Ok(pts.iter().map(|_| s.fork()).collect::<Vec<_>>()))?;
        pts.par_iter()
            .zip(samplers.par_iter_mut())
            .map(|(pt, s)| encrypt(pt, s))
            .collect()
    }

    /// A sampler of its own for one operation ([`Sampler::fork`]): the context's lock is held
    /// for the 32 bytes of its seed only.
    fn fork_sampler(&self) -> Result<Sampler> {
        self.with_sampler(|s| Ok(s.fork()))
    }

    /// Decrypts to complex slot values.
    pub fn decrypt_complex(&self, ct: &Ciphertext, sk: &SecretKey) -> Result<Vec<Complex64>> {
        let poly = ct_ops::decrypt_to_poly(&self.rlwe, sk, ct)?;
        self.decode_poly(&poly, ct.scale)
    }

    /// Decrypts to the real parts of the slot values.
    pub fn decrypt_decode(&self, ct: &Ciphertext, sk: &SecretKey) -> Result<Vec<f64>> {
        Ok(self
            .decrypt_complex(ct, sk)?
            .into_iter()
            .map(|c| c.re)
            .collect())
    }

    fn check_scales(op: &'static str, a: f64, b: f64) -> Result<()> {
        if ((a - b) / a).abs() > SCALE_TOLERANCE {
            return Err(Error::ScaleMismatch {
                op,
                left: a.log2(),
                right: b.log2(),
            });
        }
        Ok(())
    }

    /// Brings two ciphertexts to the lower of their levels; one already there is borrowed,
    /// not copied (an add of two same-level ciphertexts copied both before).
    fn align<'a>(
        &self,
        a: &'a Ciphertext,
        b: &'a Ciphertext,
    ) -> Result<(Cow<'a, Ciphertext>, Cow<'a, Ciphertext>)> {
        let l = a.level().min(b.level());
        let at = |c: &'a Ciphertext| -> Result<Cow<'a, Ciphertext>> {
            if c.level() == l {
                Ok(Cow::Borrowed(c))
            } else {
                Ok(Cow::Owned(ct_ops::drop_to_level(&self.rlwe, c, l)?))
            }
        };
        Ok((at(a)?, at(b)?))
    }

    /// `acc ← acc + rotate(acc, s)` for each step in turn: with steps 1, 2, …, w/2
    /// ([`Self::power_of_two_steps`]) slot `i` ends up holding the sum of slots `i..i+w`; with
    /// negative steps a value in one slot is copied over the `w` slots after it.
    pub fn rotate_and_add(
        &self,
        ct: &Ciphertext,
        steps: &[i64],
        gk: &GaloisKeys,
    ) -> Result<Ciphertext> {
        steps.iter().try_fold(ct.clone(), |acc, &s| {
            let r = self.rotate(&acc, s, gk)?;
            self.add(&acc, &r)
        })
    }

    /// Every slot `i` becomes `Σ_{k < w} slot[i + k]` (indices modulo the slot count), with
    /// `w = width` rounded up to a power of two (at most the slot count): the sum of the first
    /// `w` slots lands in slot 0. Where `gk` holds keys for the steps `j·stride` of a radix-`r`
    /// round (`r` = 8 or 4: [`Self::sum_steps`]), the round's `r − 1` rotations share one
    /// decomposition and one ModDown (hoisting, the sum taken in the key-switching basis);
    /// otherwise it doubles with the power-of-two keys, as [`Self::rotate_and_add`] does.
    pub fn sum_slots(&self, ct: &Ciphertext, width: usize, gk: &GaloisKeys) -> Result<Ciphertext> {
        let n = self.rlwe.n();
        let w = width.max(1).next_power_of_two().min(self.slots());
        let have = |step: usize| gk.get(ckks_galois_element(n, step as i64)).is_some();
        let mut acc = ct.clone();
        let mut stride = 1;
        while stride < w {
            let radix = [8, 4]
                .into_iter()
                .find(|&r| stride * r <= w && (1..r).all(|j| have(j * stride)))
                .unwrap_or(2);
            if radix == 2 {
                acc = self.add(&acc, &self.rotate(&acc, stride as i64, gk)?)?;
            } else {
                let els: Vec<(usize, Option<i64>)> = (1..radix)
                    .map(|j| {
                        let step = (j * stride) as i64;
                        (ckks_galois_element(n, step), Some(step))
                    })
                    .collect();
                // The rotations' (P·σ(c_0) + u_0, u_1) summed over QP in one pass, one
                // ModDown, then `acc` itself added over Q (cheaper than lifting it to QP first).
                let sum = ct_ops::apply_galois_sum_ext(&self.rlwe, &acc, &els, gk)?;
                let q = acc.polys.limbs_arc();
                let rotated =
                    acc.derive(self.rlwe.mod_down(&sum, q, self.rlwe.p_limbs())?, acc.scale);
                acc = self.add(&acc, &rotated)?;
            }
            stride *= radix;
        }
        Ok(acc)
    }

    /// The rotation steps whose keys let [`Self::sum_slots`] sum `width` slots in radix-`radix`
    /// rounds: `j·radix^k` for `0 < j < radix` below `width` (rounded up to a power of two).
    /// For radix 4 these are the powers of two (any rotation composes from them) and
    /// `3·4^k`: 1.5× the keys, half the key switches' decompositions and ModDowns.
    pub fn sum_steps(width: usize, radix: usize) -> Vec<i64> {
        let w = width.max(1).next_power_of_two();
        let radix = radix.max(2);
        let mut steps = Vec::new();
        let mut stride = 1;
        while stride < w {
            steps.extend((1..radix).map(|j| j * stride).filter(|&s| s < w));
            stride *= radix;
        }
        steps.sort_unstable();
        steps.dedup();
        steps.into_iter().map(|s| s as i64).collect()
    }

    /// 1, 2, 4, … below `width` rounded up to a power of two.
    pub fn power_of_two_steps(width: usize) -> Vec<i64> {
        Self::sum_steps(width, 2)
    }

    /// `ct` brought to `level` and exactly `scale` (a plaintext multiplication by 1 encoded at
    /// the scale that makes the following rescale land on `scale`): how a fresh operand joins
    /// the result of a deeper computation, whose scale has drifted from Δ. Costs the one level
    /// above `level`.
    pub fn match_scale(&self, ct: &Ciphertext, level: usize, scale: f64) -> Result<Ciphertext> {
        self.match_scale_times(ct, level, scale, 1.0)
    }

    /// [`Self::match_scale`] that also multiplies the slots by `factor`, in the same
    /// plaintext multiplication (no extra level).
    pub fn match_scale_times(
        &self,
        ct: &Ciphertext,
        level: usize,
        scale: f64,
        factor: f64,
    ) -> Result<Ciphertext> {
        if level >= ct.level() {
            return Err(Error::OutOfLevels {
                op: "match_scale",
                level: ct.level(),
            });
        }
        let up = self.mod_switch_to(ct, level + 1)?;
        let q = self.level_modulus(level + 1);
        let lifted = self.linear_combination(&[&up], &[factor], scale * q / up.scale)?;
        self.rescale(&lifted)
    }

    /// Drops primes down to `level` without dividing (value and scale unchanged).
    pub fn mod_switch_to(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        if level == ct.level() {
            return Ok(ct.clone());
        }
        ct_ops::drop_to_level(&self.rlwe, ct, level)
    }

    /// `a + b`.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Self::check_scales("add", a.scale, b.scale)?;
        let (a, b) = self.align(a, b)?;
        ct_ops::add_ciphertexts(&self.rlwe, &a, &b, false)
    }

    /// `a − b`.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Self::check_scales("sub", a.scale, b.scale)?;
        let (a, b) = self.align(a, b)?;
        ct_ops::add_ciphertexts(&self.rlwe, &a, &b, true)
    }

    /// `−a`.
    pub fn negate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        ct_ops::negate(&self.rlwe, a)
    }

    /// `ct + pt` (the plaintext must have the ciphertext's scale; its level may be higher).
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        Self::check_scales("add_plain", ct.scale, pt.scale)?;
        let m = self.plain_at_level(pt, ct.level(), "add_plain")?;
        let be = self.rlwe.backend();
        let mut c0 = be.slice_polys(&ct.polys, 0, 1)?;
        be.add_assign(self.rlwe.ring(), &mut c0, &m)?;
        let rest = be.slice_polys(&ct.polys, 1, ct.size() - 1)?;
        Ok(ct.derive(be.concat(&[&c0, &rest])?, ct.scale))
    }

    fn plain_at_level(&self, pt: &Plaintext, level: usize, op: &'static str) -> Result<PolyBatch> {
        if pt.level() < level {
            return Err(Error::LevelMismatch {
                op,
                left: level,
                right: pt.level(),
            });
        }
        self.rlwe
            .backend()
            .select_limbs(&pt.poly, self.rlwe.q_limbs(level))
    }

    /// `ct · pt` (scales multiply).
    pub fn multiply_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        let m = self.plain_at_level(pt, ct.level(), "multiply_plain")?;
        let scale = ct.scale * pt.scale;
        self.check_scale_fits(scale, ct.level(), "multiply_plain")?;
        let mut out = ct.polys.clone();
        self.rlwe
            .backend()
            .mul_assign(self.rlwe.ring(), &mut out, &m)?;
        Ok(ct.derive(out, scale))
    }

    /// `ct · c` for a real constant encoded as `round(c · const_scale)`; the result's scale is
    /// `ct.scale · const_scale`. Passing `const_scale = level_modulus(level)` makes the next
    /// rescale restore the scale exactly.
    pub fn multiply_scalar(&self, ct: &Ciphertext, c: f64, const_scale: f64) -> Result<Ciphertext> {
        let v = scaled_integer("constant", c, const_scale)?;
        let scale = ct.scale * const_scale;
        self.check_scale_fits(scale, ct.level(), "multiply_scalar")?;
        let words = self.scalar_words(v, ct.level());
        let mut out = ct.polys.clone();
        self.rlwe
            .backend()
            .mul_scalar_assign(self.rlwe.ring(), &mut out, &words)?;
        Ok(ct.derive(out, scale))
    }

    /// `ct + c` for a real constant (encoded at the ciphertext's scale).
    pub fn add_scalar(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let v = scaled_integer("constant", c, ct.scale)?;
        let words = self.scalar_words(v, ct.level());
        let be = self.rlwe.backend();
        let mut c0 = be.slice_polys(&ct.polys, 0, 1)?;
        be.add_scalar_assign(self.rlwe.ring(), &mut c0, &words)?;
        let rest = be.slice_polys(&ct.polys, 1, ct.size() - 1)?;
        Ok(ct.derive(be.concat(&[&c0, &rest])?, ct.scale))
    }

    fn scalar_words(&self, v: i128, level: usize) -> Vec<u32> {
        self.rlwe
            .q_limbs(level)
            .iter()
            .map(|&i| v.rem_euclid(self.rlwe.ring().modulus(i).value() as i128) as u32)
            .collect()
    }

    /// A result at `scale` must leave at least 2 bits for the value under `Q_level / 2`.
    fn check_scale_fits(&self, scale: f64, level: usize, op: &'static str) -> Result<()> {
        if self.capacity(level, scale) < 4.0 {
            // At level 0 there is no prime left to rescale by.
            let advice = if level == 0 {
                "no level is left to rescale to (out of levels): choose parameters with a longer modulus chain, or multiply by a smaller constant scale"
            } else {
                "rescale first"
            };
            return Err(Error::ScaleOverflow(format!(
                "{op}: result scale 2^{:.1} leaves no room under the level-{level} modulus (2^{:.1}); {advice}",
                scale.log2(),
                self.capacity(level, 1.0).log2() + 1.0
            )));
        }
        Ok(())
    }

    /// `Σ_i w_i · ct_i` with each weight encoded as the integer `round(w_i · const_scale)`, in
    /// one pass over the inputs. All inputs must share level, scale and size; the result's
    /// scale is `scale · const_scale`, so passing `const_scale = level_modulus(level)` makes the
    /// following rescale restore the scale exactly.
    pub fn linear_combination(
        &self,
        cts: &[&Ciphertext],
        weights: &[f64],
        const_scale: f64,
    ) -> Result<Ciphertext> {
        self.linear_combinations(cts, &[weights.to_vec()], const_scale)?
            .pop()
            .ok_or_else(|| Error::InvalidInput("no linear combination computed".into()))
    }

    /// Several linear combinations of the same ciphertexts (`weights[k]` has one weight per
    /// input), reading every input once for all of them: a convolution's output channels
    /// share their inputs. See [`Self::linear_combination`] for scales.
    pub fn linear_combinations(
        &self,
        cts: &[&Ciphertext],
        weights: &[Vec<f64>],
        const_scale: f64,
    ) -> Result<Vec<Ciphertext>> {
        let first = *cts
            .first()
            .ok_or_else(|| Error::InvalidInput("linear combination of no ciphertexts".into()))?;
        if let Some(row) = weights.iter().find(|r| r.len() != cts.len()) {
            return Err(Error::Shape(format!(
                "{} ciphertexts but {} weights",
                cts.len(),
                row.len()
            )));
        }
        for c in cts {
            self.rlwe.check_fingerprint(c.fingerprint, "ciphertext")?;
            ct_ops::check_key_id(first.key_id, c.key_id, "ciphertext")?;
            if c.level() != first.level() {
                return Err(Error::LevelMismatch {
                    op: "linear_combination",
                    left: first.level(),
                    right: c.level(),
                });
            }
            Self::check_scales("linear_combination", first.scale, c.scale)?;
            if c.size() != first.size() {
                return Err(Error::CiphertextSize(
                    "linear_combination inputs differ in size".into(),
                ));
            }
        }
        let scale = first.scale * const_scale;
        self.check_scale_fits(scale, first.level(), "linear_combination")?;
        let level = first.level();
        let mut words = Vec::with_capacity(weights.len() * cts.len() * (level + 1));
        for &w in weights.iter().flatten() {
            let v = scaled_integer("weight", w, const_scale)?;
            words.extend(self.scalar_words(v, level));
        }
        let refs: Vec<&PolyBatch> = cts.iter().map(|c| &c.polys).collect();
        let polys = self.rlwe.backend().linear_combinations(
            self.rlwe.ring(),
            &refs,
            &words,
            weights.len(),
        )?;
        Ok(polys.into_iter().map(|p| first.derive(p, scale)).collect())
    }

    /// The plaintext magnitude a ciphertext at `level` and `scale` can hold: `Q_level / (2·scale)`.
    pub fn capacity(&self, level: usize, scale: f64) -> f64 {
        (self.log_q(level) - 1.0 - scale.log2()).exp2()
    }

    /// `a · b` without relinearization (size 3); scales multiply.
    pub fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        let scale = a.scale * b.scale;
        self.check_scale_fits(scale, a.level(), "multiply")?;
        let polys = ct_ops::tensor(&self.rlwe, &a, &b)?;
        Ok(a.derive(polys, scale))
    }

    /// Evaluates the polynomial `Σ coeffs[k]·x^k` slot-wise. Powers are built by repeated
    /// squaring (`x^k = x^{2^j}·x^{k−2^j}`, relinearized and rescaled), so degree `d` costs
    /// `ceil(log2 d) + 1` levels ([`Self::polynomial_depth`]); each term is scaled by its
    /// coefficient at exactly the scale of the others, so the terms add without error. The
    /// coefficient comes last, so it also scales down the rounding the powers carry: on
    /// inputs of large magnitude at a small scale this is the precise evaluation
    /// ([`Self::evaluate_polynomial_shallow`] saves a level and loses precision there).
    pub fn evaluate_polynomial(
        &self,
        x: &Ciphertext,
        coeffs: &[f64],
        rk: &RelinKey,
    ) -> Result<Ciphertext> {
        self.evaluate_polynomial_at(x, coeffs, rk, x.scale())
    }

    /// [`Self::evaluate_polynomial`] with the result at scale `target` instead of the input's:
    /// a caller that keeps every level at its natural scale passes that of the result's level.
    pub fn evaluate_polynomial_at(
        &self,
        x: &Ciphertext,
        coeffs: &[f64],
        rk: &RelinKey,
        target: f64,
    ) -> Result<Ciphertext> {
        let (x, degree) = match self.polynomial_input(x, coeffs, rk, Self::polynomial_depth)? {
            PolynomialInput::Constant(c) => return Ok(c),
            PolynomialInput::Ready { x, degree } => (x, degree),
        };
        // powers[k] = x^k for k = 1..=degree.
        let mut powers: Vec<Option<Ciphertext>> = vec![None; degree + 1];
        powers[1] = Some(x.clone());
        for k in 2..=degree {
            let hi = 1usize << (usize::BITS - 1 - k.leading_zeros());
            let (a, b) = if hi == k {
                (k / 2, k / 2)
            } else {
                (hi, k - hi)
            };
            let (pa, pb) = match (&powers[a], &powers[b]) {
                (Some(pa), Some(pb)) => (pa, pb),
                _ => return Err(Error::InvalidInput("internal: missing power".into())),
            };
            let prod = self.relinearize(&self.multiply(pa, pb)?, rk)?;
            powers[k] = Some(self.rescale(&prod)?);
        }
        let mut terms = Vec::new();
        for (k, &c) in coeffs.iter().enumerate().skip(1) {
            if c == 0.0 {
                continue;
            }
            let p = powers[k]
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("internal: missing power".into()))?;
            let q = self.level_modulus(p.level());
            terms.push(self.rescale(&self.multiply_scalar(p, c, q * target / p.scale())?)?);
        }
        let low = terms.iter().map(|t| t.level()).min().unwrap_or(0);
        let mut acc = self.mod_switch_to(&terms[0], low)?;
        for t in &terms[1..] {
            acc = self.add(&acc, &self.mod_switch_to(t, low)?)?;
        }
        self.add_scalar(&acc, coeffs[0])
    }

    /// What both evaluators check first: finite coefficients, a relinearized input, a
    /// constant polynomial answered at once (it keeps the input's level and scale), and the
    /// `depth(degree)` levels the evaluation will spend.
    fn polynomial_input(
        &self,
        x: &Ciphertext,
        coeffs: &[f64],
        rk: &RelinKey,
        depth: fn(usize) -> usize,
    ) -> Result<PolynomialInput> {
        if coeffs.iter().any(|c| !c.is_finite()) {
            return Err(Error::InvalidInput(
                "polynomial coefficients must be finite".into(),
            ));
        }
        let degree = coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0);
        let x = if x.size() == 3 {
            self.relinearize(x, rk)?
        } else {
            x.clone()
        };
        if degree == 0 {
            let zero = self.multiply_scalar(&x, 0.0, 1.0)?;
            let c = self.add_scalar(&zero, coeffs.first().copied().unwrap_or(0.0))?;
            return Ok(PolynomialInput::Constant(c));
        }
        let need = depth(degree);
        if need > x.level() {
            return Err(Error::TooDeep {
                op: format!("a polynomial of degree {degree}"),
                need,
                level: x.level(),
            });
        }
        Ok(PolynomialInput::Ready { x, degree })
    }

    /// Levels [`Self::evaluate_polynomial`] consumes for a polynomial of this degree.
    pub fn polynomial_depth(degree: usize) -> usize {
        match degree {
            0 => 0,
            d => (usize::BITS - (d - 1).leading_zeros()) as usize + 1,
        }
    }

    /// Evaluates the polynomial `Σ coeffs[k]·x^k` slot-wise in `ceil(log2(d + 1))` levels for
    /// degree `d` ([`Self::polynomial_depth_shallow`]: 2 for a cubic, 3 up to degree 7, one
    /// less than [`Self::evaluate_polynomial`] for most degrees), the fewest a product tree
    /// allows, at scale `target`. `p = q·x^s + r` with `s` the largest power of two not above `d`:
    /// `x^s` by repeated squaring, `q` and `r` recursively, and every coefficient enters as a
    /// scalar product on the shallower side of a product (`c₃x³ = (c₃x)·x²`), so it costs no
    /// level of its own. Each part is aimed at the scale that makes the next rescale land on
    /// the target exactly, so the parts add without error.
    ///
    /// The price: the coefficient enters first, so the rounding of its rescale (a few units of
    /// the scale's last bit) is multiplied by the content of `x^s`. Measured at N = 2^14,
    /// Δ = 2^25, the sigmoid `0.5 + 0.197x − 0.004x³` on `|x| ≤ 8`: max error 3.4e-2, against
    /// 8.0e-4 for [`Self::evaluate_polynomial`]; on `x/8` with the coefficients scaled
    /// (`|x| ≤ 1`, as [`crate::train::eval_poly`] does) 2.3e-3. Use it where the level matters
    /// and the input is normalized or the scale is large (an estimate, not a measurement: at
    /// Δ = 2^40 the same factor 64 on a rounding of ~2^-26 is ~1e-6).
    pub fn evaluate_polynomial_shallow(
        &self,
        x: &Ciphertext,
        coeffs: &[f64],
        rk: &RelinKey,
        target: f64,
    ) -> Result<Ciphertext> {
        let depth = Self::polynomial_depth_shallow;
        let (x, degree) = match self.polynomial_input(x, coeffs, rk, depth)? {
            PolynomialInput::Constant(c) => return Ok(c),
            PolynomialInput::Ready { x, degree } => (x, degree),
        };
        let need = depth(degree);
        // squares[j] = x^(2^j), at level x.level() − j.
        let mut squares = vec![x];
        while squares.len() < need {
            let last = &squares[squares.len() - 1];
            let sq = self.relinearize(&self.multiply(last, last)?, rk)?;
            squares.push(self.rescale(&sq)?);
        }
        self.polynomial_part(&squares, &coeffs[..=degree], rk, target)
    }

    /// `Σ coeffs[k]·x^k` (degree ≥ 1, the last coefficient nonzero) at scale `target`, in
    /// `polynomial_depth_shallow(degree)` levels below `squares[0]`'s. The two parts of the split run
    /// in parallel.
    fn polynomial_part(
        &self,
        squares: &[Ciphertext],
        coeffs: &[f64],
        rk: &RelinKey,
        target: f64,
    ) -> Result<Ciphertext> {
        let degree = coeffs.len() - 1;
        // `c · p` rescaled to exactly `scale`: the constant's own scale absorbs the difference.
        let scaled = |p: &Ciphertext, c: f64, scale: f64| {
            let q = self.level_modulus(p.level());
            self.rescale(&self.multiply_scalar(p, c, q * scale / p.scale())?)
        };
        // p = q·x^s + r with s = 2^j ≤ degree: deg q = degree − s < s, deg r < s (a linear
        // polynomial is c₁·x + c₀, s = 1).
        let j = Self::polynomial_depth_shallow(degree) - 1;
        let (xs, s) = (&squares[j], 1usize << j);
        let (q, r) = (&coeffs[s..], &coeffs[..s]);
        let high = || {
            if q.len() == 1 {
                return scaled(xs, q[0], target);
            }
            // The product is taken at x^s's level and rescaled by that level's modulus: q
            // must arrive at the scale that makes the result's `target`.
            let q_scale = target * self.level_modulus(xs.level()) / xs.scale();
            let qv = self.polynomial_part(squares, q, rk, q_scale)?;
            let qv = self.mod_switch_to(&qv, xs.level())?;
            self.rescale(&self.relinearize(&self.multiply(&qv, xs)?, rk)?)
        };
        match r.iter().rposition(|&c| c != 0.0) {
            None => high(),
            Some(0) => self.add_scalar(&high()?, r[0]),
            Some(d) => {
                let (h, low) =
                    rayon::join(high, || self.polynomial_part(squares, &r[..=d], rk, target));
                self.add(&h?, &low?)
            }
        }
    }

    /// Levels [`Self::evaluate_polynomial_shallow`] consumes for a polynomial of this degree:
    /// `ceil(log2(degree + 1))`.
    pub fn polynomial_depth_shallow(degree: usize) -> usize {
        (degree + 1).next_power_of_two().trailing_zeros() as usize
    }

    /// `a²` without relinearization (size 3).
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.multiply(a, a)
    }

    /// Relinearizes a size-3 ciphertext.
    pub fn relinearize(&self, ct: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
        ct_ops::relinearize(&self.rlwe, ct, rk)
    }

    /// Divides by the level's modulus (its one prime, or all `t` primes of a composite level in
    /// one ModDown): level − 1, scale / [`Self::level_modulus`].
    pub fn rescale(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        let l = ct.level();
        if l == 0 {
            return Err(Error::OutOfLevels {
                op: "rescale",
                level: 0,
            });
        }
        let polys = self.rlwe.mod_down(
            &ct.polys,
            self.rlwe.q_limbs(l - 1),
            Arc::from(self.level_primes(l)),
        )?;
        Ok(ct.derive(polys, ct.scale / self.level_modulus(l)))
    }

    /// `rescale(relinearize(ct))` in one key switch: the switched `c_2` and `P·(c_0, c_1)`
    /// meet in the key-switching basis and a single ModDown divides by `P·q_l` — one ModDown
    /// (and its NTTs over every limb) fewer than the two operations, and one rounding instead
    /// of two. Level − 1, scale / [`Self::level_modulus`].
    pub fn relinearize_rescale(&self, ct: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
        let l = ct.level();
        if l == 0 {
            return Err(Error::OutOfLevels {
                op: "relinearize_rescale",
                level: 0,
            });
        }
        let keep = self.rlwe.q_limbs(l - 1);
        let polys = ct_ops::relinearize_mod_down(&self.rlwe, ct, rk, keep)?;
        Ok(ct.derive(polys, ct.scale / self.level_modulus(l)))
    }

    /// `relinearize_rescale(multiply(a, b))`, the same words, in one call: device backends
    /// compute the tensor product where the key switch reads it and never write the size-3
    /// product (CUDA: 8 launches at N = 2^16, no copies).
    pub fn multiply_relinearize_rescale(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        rk: &RelinKey,
    ) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        let scale = a.scale * b.scale;
        self.check_scale_fits(scale, a.level(), "multiply")?;
        let l = a.level();
        if l == 0 {
            return Err(Error::OutOfLevels {
                op: "multiply_relinearize_rescale",
                level: 0,
            });
        }
        let keep = self.rlwe.q_limbs(l - 1);
        let polys = ct_ops::multiply_relinearize_mod_down(&self.rlwe, (&a, &b), rk, keep)?;
        Ok(a.derive(polys, scale / self.level_modulus(l)))
    }

    /// Pays a deferred rescale: [`Self::relinearize_rescale`] for a product still of size 3
    /// (one ModDown for both), a plain [`Self::rescale`] otherwise.
    pub fn pay_rescale(&self, ct: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
        if ct.size() == 3 {
            self.relinearize_rescale(ct, rk)
        } else {
            self.rescale(ct)
        }
    }

    /// One ModDown of `ext` (level `level`'s limbs and the special primes, `P` times a
    /// value) that divides by `P·q_level`: key switching's ModDown and the rescale at once.
    pub(crate) fn mod_down_and_rescale(&self, ext: &PolyBatch, level: usize) -> Result<PolyBatch> {
        let drop: Arc<[usize]> = self
            .level_primes(level)
            .into_iter()
            .chain(self.rlwe.p_limbs().iter().copied())
            .collect();
        self.rlwe
            .mod_down(ext, self.rlwe.q_limbs(level.saturating_sub(1)), drop)
    }

    /// Rotates slots left by `step` (negative: right).
    pub fn rotate(&self, ct: &Ciphertext, step: i64, gk: &GaloisKeys) -> Result<Ciphertext> {
        let g = ckks_galois_element(self.rlwe.n(), step);
        if g == 1 {
            return Ok(ct.clone());
        }
        ct_ops::apply_galois(&self.rlwe, ct, g, gk, Some(step))
    }

    /// Rotations of one ciphertext by several steps, sharing one key-switching decomposition
    /// (hoisting): much cheaper than separate [`Self::rotate`] calls. Step 0 returns a copy.
    pub fn rotate_many(
        &self,
        ct: &Ciphertext,
        steps: &[i64],
        gk: &GaloisKeys,
    ) -> Result<Vec<Ciphertext>> {
        let n = self.rlwe.n();
        let els: Vec<(usize, Option<i64>)> = steps
            .iter()
            .map(|&s| (ckks_galois_element(n, s), Some(s)))
            .filter(|&(g, _)| g != 1)
            .collect();
        let mut rotated = ct_ops::apply_galois_many(&self.rlwe, ct, &els, gk)?.into_iter();
        steps
            .iter()
            .map(|&s| {
                if ckks_galois_element(n, s) == 1 {
                    Ok(ct.clone())
                } else {
                    rotated
                        .next()
                        .ok_or_else(|| Error::InvalidInput("internal: rotation count".into()))
                }
            })
            .collect()
    }

    /// Complex conjugation of every slot.
    pub fn conjugate(&self, ct: &Ciphertext, gk: &GaloisKeys) -> Result<Ciphertext> {
        ct_ops::apply_galois(
            &self.rlwe,
            ct,
            galois_element_conjugate(self.rlwe.n()),
            gk,
            None,
        )
    }
}

/// Precision in bits of `got` against `want`: −log2(max |error|).
pub fn precision_bits(want: &[f64], got: &[f64]) -> f64 {
    let err = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    -err.max(f64::MIN_POSITIVE).log2()
}

impl SchemeParams for CkksParams {
    type Context = CkksContext;

    fn rlwe_params(&self) -> &RlweParams {
        &self.rlwe
    }

    fn assemble(self, rlwe: Arc<RlweContext>, sampler: Sampler) -> Result<CkksContext> {
        let encoder = CkksEncoder::new(rlwe.n());
        Ok(CkksContext {
            rlwe,
            params: self,
            encoder,
            sampler: Mutex::new(sampler),
        })
    }
}
