//! Big-integer BFV by CRT over several plaintext moduli (CryptoNets style).
//!
//! One BFV computation modulo `t` wraps around as soon as an intermediate value exceeds
//! `t/2`. Running the same computation modulo k coprime plaintext primes `t_1..t_k` and
//! recombining by CRT gives the exact integer result as long as it stays below
//! `T/2 = (t_1···t_k)/2`, which can reach 2^126. All k contexts share one RLWE context (the
//! same primes, auxiliary basis sized for the largest `t_i`), so one set of keys serves them all.

use std::sync::Arc;

use crate::backend::{default_backend, Backend};
use crate::bfv::context::{BfvContext, Ciphertext, Plaintext};
use crate::bfv::params::{resolve_plain_modulus, rlwe_for_bfv, BfvParams, PlainModulus};
use crate::error::{Error, Result};
use crate::math::modular::{mul_mod_u64, pow_mod_u64};
use crate::math::sampler::Sampler;
use crate::rlwe::{GaloisKeys, KeySet, PublicKey, RelinKey, RlweContext, Security};
use crate::rlwe::{RlweParams, SecretKey};

/// A ciphertext of a [`BfvCrt`]: one BFV ciphertext per plaintext modulus.
#[derive(Clone, Debug)]
pub struct CrtCiphertext {
    parts: Vec<Ciphertext>,
}

impl CrtCiphertext {
    /// The per-modulus ciphertexts, in the order of [`BfvCrt::contexts`].
    pub fn parts(&self) -> &[Ciphertext] {
        &self.parts
    }

    /// Level of the parts (they move together).
    pub fn level(&self) -> usize {
        self.parts.iter().map(|p| p.level()).min().unwrap_or(0)
    }
}

/// Builds a [`BfvCrt`] from intent; see [`BfvCrt::builder`]. Depth, slots, ring and chain mean
/// what they mean for [`BfvParams::builder`].
#[derive(Clone, Debug)]
pub struct BfvCrtBuilder {
    t_bits: Vec<u32>,
    single: crate::bfv::BfvParamsBuilder,
}

impl BfvCrtBuilder {
    /// Sequential ciphertext products (each relinearized) the result must survive (default 1).
    pub fn depth(mut self, depth: usize) -> Self {
        self.single = self.single.depth(depth);
        self
    }

    /// At least this many slots (N ≥ slots).
    pub fn slots(mut self, slots: usize) -> Self {
        self.single = self.single.slots(slots);
        self
    }

    /// Fixes N = 2^log_n instead of choosing the smallest that fits.
    pub fn log_n(mut self, log_n: u32) -> Self {
        self.single = self.single.log_n(log_n);
        self
    }

    /// Fixes the chain: `q_count` ciphertext primes and `dnum` key-switching digits.
    pub fn chain(mut self, q_count: usize, dnum: usize) -> Self {
        self.single = self.single.chain(q_count, dnum);
        self
    }

    /// Security requirement (default 128-bit).
    pub fn security(mut self, security: Security) -> Self {
        self.single = self.single.security(security);
        self
    }

    /// The contexts (fresh OS randomness), or why no parameters fit.
    pub fn build(&self) -> Result<BfvCrt> {
        let largest = self.t_bits.iter().copied().max().ok_or_else(|| {
            Error::InvalidParameters("BfvCrt needs at least one plaintext modulus".into())
        })?;
        // The noise grows with t: the largest prime's ring and chain serve every residue.
        let p = self
            .single
            .clone()
            .plain_modulus(PlainModulus::Bits(largest))
            .build()?;
        BfvCrt::build(
            p.n().trailing_zeros(),
            &self.t_bits,
            p.rlwe.q_primes().len(),
            p.rlwe.dnum(),
            p.rlwe.security(),
            None,
            default_backend(),
        )
    }
}

/// k BFV contexts with distinct plaintext primes over one shared RLWE context, encoding signed
/// integers (up to 127 bits) as their residues and decoding by CRT.
///
/// Every operation runs k times, so it costs k times a single-modulus one; use it when the
/// integers really outgrow one 60-bit `t` (e.g. dot products of large fixed-point values).
#[derive(Debug)]
pub struct BfvCrt {
    rlwe: Arc<RlweContext>,
    contexts: Vec<BfvContext>,
    /// Product T of the plaintext moduli (< 2^127).
    product: u128,
    /// Garner constants: `inv[i] = (t_0···t_{i-1})^{-1} mod t_i`.
    garner_inv: Vec<u64>,
}

impl BfvCrt {
    /// Parameters from intent, as [`BfvParams::builder`] chooses them for one modulus: the
    /// smallest 128-bit preset ring whose noise estimate, judged for the largest of the plaintext
    /// primes, still decrypts after `depth` sequential products.
    ///
    /// ```
    /// use hetensor::bfv::BfvCrt;
    /// # fn main() -> hetensor::Result<()> {
    /// // Three 30-bit primes: exact integers up to ~2^89, through two products.
    /// let crt = BfvCrt::builder(&[30, 30, 30]).depth(2).build()?;
    /// assert_eq!(crt.contexts().len(), 3);
    /// let keys = crt.keygen()?;
    /// let x = crt.encrypt(&[1 << 40, -(1 << 35)], &keys.public)?;
    /// let y = crt.multiply_relin(&x, &x, &keys.relin)?;
    /// assert_eq!(&crt.decrypt(&y, &keys.secret)?[..2], &[1 << 80, 1 << 70]);
    /// # Ok(()) }
    /// ```
    pub fn builder(t_bits: &[u32]) -> BfvCrtBuilder {
        BfvCrtBuilder {
            t_bits: t_bits.to_vec(),
            single: BfvParams::builder(),
        }
    }

    /// `k = t_bits.len()` distinct batching primes of the given sizes (largest such primes),
    /// `q_count` ciphertext primes and `dnum` key-switching digits. The product of the plaintext
    /// moduli must stay below 2^127.
    pub fn new(
        log_n: u32,
        t_bits: &[u32],
        q_count: usize,
        dnum: usize,
        security: Security,
    ) -> Result<Self> {
        Self::build(
            log_n,
            t_bits,
            q_count,
            dnum,
            security,
            None,
            default_backend(),
        )
    }

    /// Same as [`Self::new`] with fixed sampler seeds (tests only).
    pub fn with_seed(
        log_n: u32,
        t_bits: &[u32],
        q_count: usize,
        dnum: usize,
        security: Security,
        seed: [u8; 32],
    ) -> Result<Self> {
        Self::build(
            log_n,
            t_bits,
            q_count,
            dnum,
            security,
            Some(seed),
            default_backend(),
        )
    }

    /// Same as [`Self::new`] on a chosen backend (see [`crate::backend::create_backend`]).
    pub fn with_backend(
        log_n: u32,
        t_bits: &[u32],
        q_count: usize,
        dnum: usize,
        security: Security,
        backend: Arc<dyn Backend>,
    ) -> Result<Self> {
        Self::build(log_n, t_bits, q_count, dnum, security, None, backend)
    }

    fn build(
        log_n: u32,
        t_bits: &[u32],
        q_count: usize,
        dnum: usize,
        security: Security,
        seed: Option<[u8; 32]>,
        backend: Arc<dyn Backend>,
    ) -> Result<Self> {
        if !(10..=16).contains(&log_n) {
            return Err(Error::InvalidParameters(format!(
                "log2 N = {log_n} outside the supported 10..=16"
            )));
        }
        if t_bits.is_empty() {
            return Err(Error::InvalidParameters(
                "BfvCrt needs at least one plaintext modulus".into(),
            ));
        }
        let n = 1usize << log_n;
        let mut ts: Vec<u64> = Vec::with_capacity(t_bits.len());
        for &b in t_bits {
            let t = resolve_plain_modulus(PlainModulus::Bits(b), n, &ts)?;
            ts.push(t);
        }
        let log_prod: f64 = ts.iter().map(|&t| (t as f64).log2()).sum();
        if log_prod >= 127.0 {
            return Err(Error::InvalidParameters(format!(
                "the plaintext moduli multiply to 2^{log_prod:.1}; BfvCrt decodes to i128 and supports at most 2^127"
            )));
        }
        let rlwe_params: RlweParams = rlwe_for_bfv(n, &ts, q_count, dnum, security)?;
        let rlwe = RlweContext::with_backend(rlwe_params, backend)?;
        let contexts = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                // Each context needs its own randomness stream: shared encryption randomness across
                // the residues of one value would leak differences between them.
                let sampler = match seed {
                    Some(mut s) => {
                        s[31] ^= i as u8 + 1;
                        Sampler::from_seed(s)
                    }
                    None => Sampler::from_os(),
                };
                BfvContext::build(rlwe.clone(), t, sampler)
            })
            .collect::<Result<Vec<_>>>()?;
        let product = ts.iter().fold(1u128, |acc, &t| acc * t as u128);
        let garner_inv = (0..ts.len())
            .map(|i| {
                let ti = ts[i];
                let prefix = ts[..i]
                    .iter()
                    .fold(1u64, |acc, &tj| mul_mod_u64(acc, tj % ti, ti));
                pow_mod_u64(prefix, ti - 2, ti)
            })
            .collect();
        Ok(Self {
            rlwe,
            contexts,
            product,
            garner_inv,
        })
    }

    /// The per-modulus contexts.
    pub fn contexts(&self) -> &[BfvContext] {
        &self.contexts
    }

    /// The shared RLWE context.
    pub fn rlwe(&self) -> &Arc<RlweContext> {
        &self.rlwe
    }

    /// The plaintext moduli.
    pub fn plain_moduli(&self) -> Vec<u64> {
        self.contexts.iter().map(|c| c.plain_modulus()).collect()
    }

    /// Their product T: results are exact while they stay within `±(T−1)/2`.
    pub fn plain_modulus_product(&self) -> u128 {
        self.product
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.rlwe.n()
    }

    fn first(&self) -> &BfvContext {
        &self.contexts[0]
    }

    /// Secret, public and relinearization keys (shared by all moduli).
    pub fn keygen(&self) -> Result<KeySet> {
        self.first().keygen()
    }

    /// The public key.
    pub fn gen_public_key(&self, sk: &SecretKey) -> Result<PublicKey> {
        self.first().gen_public_key(sk)
    }

    /// The relinearization key.
    pub fn gen_relin_key(&self, sk: &SecretKey) -> Result<RelinKey> {
        self.first().gen_relin_key(sk)
    }

    /// Galois keys for row rotations by `steps` and the column swap.
    pub fn gen_galois_keys(&self, sk: &SecretKey, steps: &[i64]) -> Result<GaloisKeys> {
        self.first().gen_galois_keys(sk, steps)
    }

    /// Encodes signed integers in `±(T−1)/2` into one plaintext per modulus.
    pub fn encode(&self, values: &[i128]) -> Result<Vec<Plaintext>> {
        let half = (self.product / 2) as i128;
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| v > half || v < -half)
        {
            return Err(Error::InvalidInput(format!(
                "value {v} at slot {i} is outside ±{half}, the range of the CRT plaintext modulus"
            )));
        }
        self.contexts
            .iter()
            .map(|c| {
                let t = c.plain_modulus() as i128;
                let res: Vec<u64> = values.iter().map(|&v| v.rem_euclid(t) as u64).collect();
                c.encode(&res)
            })
            .collect()
    }

    /// Public-key encryption of signed integers.
    pub fn encrypt(&self, values: &[i128], pk: &PublicKey) -> Result<CrtCiphertext> {
        let pts = self.encode(values)?;
        let parts = self
            .contexts
            .iter()
            .zip(&pts)
            .map(|(c, p)| c.encrypt(p, pk))
            .collect::<Result<_>>()?;
        Ok(CrtCiphertext { parts })
    }

    /// Public-key encryption of `i64` values.
    pub fn encrypt_i64(&self, values: &[i64], pk: &PublicKey) -> Result<CrtCiphertext> {
        let wide: Vec<i128> = values.iter().map(|&v| v as i128).collect();
        self.encrypt(&wide, pk)
    }

    /// Decrypts all N slots and recombines them (Garner's mixed-radix CRT) into centered
    /// integers in `±(T−1)/2`.
    pub fn decrypt(&self, ct: &CrtCiphertext, sk: &SecretKey) -> Result<Vec<i128>> {
        self.check(ct)?;
        let residues = self
            .contexts
            .iter()
            .zip(&ct.parts)
            .map(|(c, p)| c.decode(&c.decrypt(p, sk)?))
            .collect::<Result<Vec<_>>>()?;
        let ts = self.plain_moduli();
        let n = self.slots();
        let half = self.product / 2;
        Ok((0..n)
            .map(|s| {
                // x = a_0 + a_1·t_0 + a_2·t_0·t_1 + ...; a_i from x ≡ r_i (mod t_i).
                let mut x: u128 = 0;
                let mut radix: u128 = 1;
                for (i, &ti) in ts.iter().enumerate() {
                    let x_mod = (x % ti as u128) as u64;
                    let diff = (residues[i][s] + ti - x_mod) % ti;
                    let a = mul_mod_u64(diff, self.garner_inv[i], ti);
                    x += a as u128 * radix;
                    radix = radix.wrapping_mul(ti as u128);
                }
                if x > half {
                    -((self.product - x) as i128)
                } else {
                    x as i128
                }
            })
            .collect())
    }

    fn check(&self, ct: &CrtCiphertext) -> Result<()> {
        if ct.parts.len() != self.contexts.len() {
            return Err(Error::ParameterMismatch(format!(
                "CRT ciphertext has {} parts, this context {} plaintext moduli",
                ct.parts.len(),
                self.contexts.len()
            )));
        }
        Ok(())
    }

    fn zip_op(
        &self,
        a: &CrtCiphertext,
        b: &CrtCiphertext,
        f: impl Fn(&BfvContext, &Ciphertext, &Ciphertext) -> Result<Ciphertext>,
    ) -> Result<CrtCiphertext> {
        self.check(a)?;
        self.check(b)?;
        let parts = self
            .contexts
            .iter()
            .zip(a.parts.iter().zip(&b.parts))
            .map(|(c, (x, y))| f(c, x, y))
            .collect::<Result<_>>()?;
        Ok(CrtCiphertext { parts })
    }

    fn map_op(
        &self,
        a: &CrtCiphertext,
        f: impl Fn(&BfvContext, &Ciphertext) -> Result<Ciphertext>,
    ) -> Result<CrtCiphertext> {
        self.check(a)?;
        let parts = self
            .contexts
            .iter()
            .zip(&a.parts)
            .map(|(c, x)| f(c, x))
            .collect::<Result<_>>()?;
        Ok(CrtCiphertext { parts })
    }

    /// `a + b`.
    pub fn add(&self, a: &CrtCiphertext, b: &CrtCiphertext) -> Result<CrtCiphertext> {
        self.zip_op(a, b, |c, x, y| c.add(x, y))
    }

    /// `a − b`.
    pub fn sub(&self, a: &CrtCiphertext, b: &CrtCiphertext) -> Result<CrtCiphertext> {
        self.zip_op(a, b, |c, x, y| c.sub(x, y))
    }

    /// `a · b`, relinearized.
    pub fn multiply_relin(
        &self,
        a: &CrtCiphertext,
        b: &CrtCiphertext,
        rk: &RelinKey,
    ) -> Result<CrtCiphertext> {
        self.zip_op(a, b, |c, x, y| c.multiply_relin(x, y, rk))
    }

    /// `a · values` slot-wise with plaintext integers.
    pub fn multiply_plain(&self, a: &CrtCiphertext, values: &[i128]) -> Result<CrtCiphertext> {
        let pts = self.encode(values)?;
        self.check(a)?;
        let parts = self
            .contexts
            .iter()
            .zip(a.parts.iter().zip(&pts))
            .map(|(c, (x, p))| c.multiply_plain(x, p))
            .collect::<Result<_>>()?;
        Ok(CrtCiphertext { parts })
    }

    /// `a · k` for an integer scalar.
    pub fn multiply_scalar(&self, a: &CrtCiphertext, k: i128) -> Result<CrtCiphertext> {
        self.map_op(a, |c, x| {
            let t = c.plain_modulus() as i128;
            c.multiply_scalar(x, k.rem_euclid(t) as i64)
        })
    }

    /// Rotates both slot rows by `step`.
    pub fn rotate_rows(
        &self,
        a: &CrtCiphertext,
        step: i64,
        gk: &GaloisKeys,
    ) -> Result<CrtCiphertext> {
        self.map_op(a, |c, x| c.rotate_rows(x, step, gk))
    }

    /// Swaps the slot rows.
    pub fn rotate_columns(&self, a: &CrtCiphertext, gk: &GaloisKeys) -> Result<CrtCiphertext> {
        self.map_op(a, |c, x| c.rotate_columns(x, gk))
    }

    /// The smallest noise budget over the parts (decryption is exact while it is positive).
    pub fn invariant_noise_budget(&self, ct: &CrtCiphertext, sk: &SecretKey) -> Result<f64> {
        self.check(ct)?;
        let mut min = f64::INFINITY;
        for (c, p) in self.contexts.iter().zip(&ct.parts) {
            min = min.min(c.invariant_noise_budget(p, sk)?);
        }
        Ok(min)
    }
}
