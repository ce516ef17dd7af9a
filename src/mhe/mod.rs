//! Multiparty homomorphic encryption: no single key holder.
//!
//! `K` parties each hold a secret share `s_i` (an ordinary ternary [`SecretKey`]); the *ideal*
//! secret key `s = Σ s_i` exists nowhere. Every operation that needs `s` is a protocol in which
//! each party sends one [`Share`] and anyone (a *combiner*, who learns nothing secret) adds
//! them up ([`aggregate`]) and finishes the result. These are the protocols of Mouchet,
//! Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic Encryption from
//! Ring-Learning-With-Errors" (PETS 2021), as Lattigo's `multiparty` package implements them,
//! over this crate's RLWE types and [`crate::backend::Backend`] (so they run on every backend):
//!
//! | protocol | rounds | each party sends | result |
//! |---|---|---|---|
//! | CKG ([`Party::ckg_share`]) | 1 | `−a·s_i + e` (1 poly over `QP`; `a` from the CRS) | [`crate::rlwe::PublicKey`] (seeded) |
//! | RKG ([`Party::rkg_round1`], [`Party::rkg_round2`]) | 2 | per digit: `(−u_i·a_j + s_i·w_j + e, s_i·a_j + e)`, then `s_i·h0_j + (u_i − s_i)·h1_j + e` | [`crate::rlwe::RelinKey`] |
//! | RTG ([`Party::rtg_share`]) | 1 | per digit: `−a_j·s_i + s_i(X^g)·w_j + e` | [`crate::rlwe::GaloisKeys`] (seeded) |
//! | CKS ([`Party::cks_share`]) | 1 | `(s_i − s'_i)·c_1 + e_smudge` (1 poly at the ciphertext's level) | ciphertext under `s'`, or the phase (`s' = 0`) |
//! | PCKS ([`Party::pcks_share`]) | 1 | `(s_i·c_1 + u_i·p_0 + e_smudge, u_i·p_1 + e)` | ciphertext under a receiver's public key |
//! | Refresh ([`Party::refresh_share`]) | 1 | `(c_1·s_i − M_i + e` at level ℓ, `−a·s_i + M_i + e` at the top) | the ciphertext at the top level |
//!
//! `w_j` is the gadget of hybrid key switching ([`crate::rlwe::KeySwitchKey`]: `[P]_{q}` on
//! digit `j`'s primes, 0 elsewhere), so the collective keys have exactly the single-key format
//! (dnum digits over the ciphertext and special primes) and the existing `relinearize` and
//! rotations use them unchanged. The relinearization key's second half is computed (`Σ s_i·a_j
//! + e`), so it is stored in full; the public and Galois keys keep their CRS seeds.
//!
//! **Common reference string.** All parties share a public 32-byte seed ([`Crs`]); each common
//! random polynomial is the expansion of a seed derived from it per protocol, digit, Galois
//! element and run ([`Sampler::derive_seed`], ChaCha20 streams). The collective key-set
//! identifier is derived from it as well, so every party's objects agree on it.
//!
//! **Security model** (as in the paper): passive (honest-but-curious) parties, any `K − 1` of
//! which may collude; the shares travel over authenticated channels. A [`Party`] refuses a
//! second share for the same protocol and run ([`Error::Multiparty`]): re-sending a share for
//! the same common random polynomial with fresh noise can reveal the secret share (ePrint
//! 2024/194). Decrypting the *same* ciphertext twice with fresh smudging lets the receiver
//! average the smudging away, which the run identifiers cannot prevent: do not.
//!
//! **Smudging** ([`Smudging`]): a decryption share reveals the ciphertext's noise `e` (which
//! depends on the secret) unless it is hidden by a much larger noise. The shares add uniform
//! noise in `[−B, B)` with `B = 2^b`, `b = ⌈λ + log2 N + log2 B_e⌉`, where `B_e` bounds
//! `‖e‖∞`: by the smudging lemma each coefficient of `e + U[−B, B)` is within statistical
//! distance `B_e / B` of `U[−B, B)`, so the whole polynomial is within `N·B_e/B ≤ 2^−λ`
//! (union bound). The default is `λ = 40` ([`Smudging::DEFAULT_LAMBDA`]). The price is
//! `b + log2 K` bits of noise in the result: BFV at the presets has that room (its
//! ciphertexts carry a noise bound, [`bfv_smudging`]); CKKS at the usual scales (≤ 2^29,
//! ~20 bits of precision) does not, since hiding the noise costs `λ + log2 N + log2 B_e ≈ 70`
//! bits of the scale ([`ckks_smudging`] sizes it and refuses when the scale leaves no room).
//! A CKKS output to a party (CKS or PCKS: the receiver sees `m + e` plus the smudging) at
//! λ = 40 is therefore computed at a scale of ~2^84 — composite levels of three ~28-bit
//! primes, whose encodings pass 64 bits ([`crate::ckks::MAX_SCALE_BITS`];
//! [`crate::train::precise_training_params`], what `hetensor train credit-federated
//! --parties K` trains on). On a smaller scale it takes an explicitly weaker bound
//! ([`Smudging::bits`]), whose statistical guarantee [`Smudging::lambda_for`] states; refresh,
//! which outputs nothing, keeps the full `λ` (below; its masks for a 2^84 scale are ~150-bit
//! integers).
//!
//! **t-out-of-N** ([`Party::shamir_shares`], [`Party::threshold_secret`],
//! [`Party::activate_threshold`]): after the N-out-of-N key generation each party Shamir-shares
//! its `s_i` (degree `t − 1` over `R_QP`, public points `1..=N`); any `t` parties turn their
//! threshold secrets into Lagrange-weighted additive shares of the same ideal key and run the
//! protocols above among themselves, so a computation survives up to `N − t` absent parties.
//!
//! **Refresh** masks the message with `M_i` uniform in `[−2^b_M, 2^b_M)`,
//! `b_M = ⌈λ + log2 N + log2 B_m⌉` (`B_m` bounds the coefficients of `m + e`), which hides it
//! within `2^−λ` by the same lemma, and needs `log2 Q_ℓ ≥ b_M + log2 K + 2` at the input
//! level so that `m + e − Σ M_i` does not wrap ([`RefreshParams`], [`min_refresh_level`]).
//!
//! ```
//! use hetensor::ckks::{CkksContext, CkksParams};
//! use hetensor::math::sampler::Sampler;
//! use hetensor::mhe::{self, Crs, Party, Smudging};
//! # fn main() -> hetensor::Result<()> {
//! let ckks = CkksContext::new(CkksParams::preset(13, 25)?)?;
//! let ctx = ckks.rlwe().clone();
//! let crs = Crs::new(Sampler::from_os().seed()); // public, agreed by all parties
//! let mut parties: Vec<Party> = (0..3)
//!     .map(|_| Party::new(ctx.clone(), crs, Sampler::from_os()))
//!     .collect::<hetensor::Result<_>>()?;
//! // Collective public key: one seeded polynomial per party.
//! let shares = parties.iter_mut().map(|p| p.ckg_share()).collect::<hetensor::Result<Vec<_>>>()?;
//! let pk = mhe::ckg_finalize(&ctx, &crs, &mhe::aggregate(&ctx, &shares)?)?;
//! let ct = ckks.encrypt(&ckks.encode(&[0.5, -1.25], ckks.default_scale(), 2)?, &pk)?;
//! // Decryption to party 0: the others send smudged shares, party 0 adds its own locally.
//! let smudging = Smudging::bits(8)?; // weak: CKKS at 2^25 has no room for 40 bits (see above)
//! let others = parties[1..].iter_mut().map(|p| p.cks_share(&ct, None, &smudging, 1))
//!     .collect::<hetensor::Result<Vec<_>>>()?;
//! let phase = parties[0].decrypt_with(&ct, &mhe::aggregate(&ctx, &others)?)?;
//! let out = ckks.decode_poly(&phase, ct.scale())?;
//! assert!((out[0].re - 0.5).abs() < 1e-2 && (out[1].re + 1.25).abs() < 1e-2);
//! # Ok(()) }
//! ```

mod keygen;
mod keyswitch;
mod refresh;
mod share;
mod threshold;

use std::collections::HashSet;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::keys::SecretPoly;
use crate::rlwe::{RlweContext, SecretKey};

pub use keygen::{ckg_finalize, rkg_finalize, rtg_finalize};
pub use keyswitch::{bfv_smudging, ckks_smudging, cks_finalize, decrypt_finalize, pcks_finalize};
pub use refresh::{min_refresh_level, refresh_finalize, RefreshParams};
pub(crate) use share::shape as share_shape;
pub use share::{aggregate, Protocol, Share};
pub use threshold::{shamir_points, ShamirShare, ThresholdSecret};

/// The common reference string: a public 32-byte seed all parties agree on before key
/// generation. Every common random polynomial and the collective key-set identifier derive
/// from it, so two runs with different CRSs produce incompatible objects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Crs {
    seed: [u8; 32],
}

impl std::fmt::Debug for Crs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crs(key set {:016x})", self.key_id())
    }
}

/// ChaCha20 stream numbers of the derived seeds: the protocol in the top 4 bits.
const STREAM_KEY_ID: u64 = 0;
const STREAM_CKG: u64 = 1 << 60;
const STREAM_RKG: u64 = 2 << 60;
const STREAM_RTG: u64 = 3 << 60;
const STREAM_REFRESH: u64 = 4 << 60;

impl Crs {
    /// The CRS with this public seed (drawn by one party from the OS and published, or agreed
    /// by a coin-flipping protocol).
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed }
    }

    /// The public seed.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// The collective key set's identifier (see [`SecretKey::key_id`]): never 0.
    pub fn key_id(&self) -> u64 {
        let s = Sampler::derive_seed(self.seed, STREAM_KEY_ID);
        u64::from_le_bytes(s[..8].try_into().expect("8 bytes")).max(1)
    }

    pub(crate) fn ckg_seed(&self) -> [u8; 32] {
        Sampler::derive_seed(self.seed, STREAM_CKG)
    }

    pub(crate) fn rkg_seed(&self, digit: usize) -> [u8; 32] {
        Sampler::derive_seed(self.seed, STREAM_RKG | digit as u64)
    }

    pub(crate) fn rtg_seed(&self, galois: usize, digit: usize) -> [u8; 32] {
        Sampler::derive_seed(self.seed, STREAM_RTG | (galois as u64) << 8 | digit as u64)
    }

    pub(crate) fn refresh_seed(&self, run: u64) -> [u8; 32] {
        Sampler::derive_seed(self.seed, STREAM_REFRESH | run)
    }
}

/// The largest run identifier (runs share the CRS stream space with the protocol tag).
pub const MAX_RUN: u64 = (1 << 60) - 1;

/// Smudging (noise flooding) for decryption and re-encryption shares: uniform noise in
/// `[−2^b, 2^b)` per coefficient. See the [module docs](self) for the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smudging {
    bits: u32,
}

impl Smudging {
    /// Statistical security the crate aims at: 40 bits.
    pub const DEFAULT_LAMBDA: u32 = 40;

    /// Smudging within statistical distance `2^−λ` of the simulated transcript for a
    /// ciphertext noise bounded by `2^noise_log2`: `b = ⌈λ + log2 N + noise_log2⌉`.
    pub fn statistical(lambda: u32, n: usize, noise_log2: f64) -> Result<Self> {
        if !noise_log2.is_finite() {
            return Err(Error::InvalidInput(format!(
                "noise bound 2^{noise_log2} is not finite"
            )));
        }
        let bits = (lambda as f64 + (n as f64).log2() + noise_log2.max(0.0)).ceil();
        Self::bits(bits as u32)
    }

    /// Smudging with an explicit bound `2^bits` (≤ 2^126). Its statistical guarantee is
    /// [`Self::lambda_for`] the ciphertext's noise.
    pub fn bits(bits: u32) -> Result<Self> {
        if bits > 126 {
            return Err(Error::InvalidInput(format!(
                "smudging bound 2^{bits} beyond 2^126"
            )));
        }
        Ok(Self { bits })
    }

    /// log2 of the bound `B`.
    pub fn bound_bits(&self) -> u32 {
        self.bits
    }

    /// The `λ` this smudging gives for a noise bound `2^noise_log2` at ring degree `n`:
    /// `b − log2 N − noise_log2` (statistical distance `≤ 2^−λ`; ≤ 0 means no guarantee).
    pub fn lambda_for(&self, n: usize, noise_log2: f64) -> f64 {
        self.bits as f64 - (n as f64).log2() - noise_log2
    }

    /// The noise polynomial, NTT domain over `limbs` (its host copy is wiped); the buffer
    /// becomes the share it is added to.
    pub(crate) fn sample(
        &self,
        ctx: &RlweContext,
        limbs: Arc<[usize]>,
        sampler: &mut Sampler,
    ) -> Result<crate::backend::PolyBatch> {
        let e = Zeroizing::new(sampler.uniform_signed_bits(ctx.n(), self.bits));
        ctx.upload_wide_ntt(&e, limbs)
    }
}

/// One participant: its secret share (never serialized into any message), its randomness and
/// the record of the protocol runs it has already answered.
pub struct Party {
    pub(crate) ctx: Arc<RlweContext>,
    pub(crate) crs: Crs,
    pub(crate) secret: SecretKey,
    pub(crate) sampler: Sampler,
    used: HashSet<Protocol>,
    /// RKG's ephemeral secret `u_i` between the two rounds (NTT over `QP`), wiped on drop.
    pub(crate) rkg_u: Option<SecretPoly>,
    /// Whether this party has Shamir-shared its secret (allowed once).
    pub(crate) shamir_done: bool,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Party(<share redacted>, {:?})", self.crs)
    }
}

impl Party {
    /// A new party with a fresh ternary secret share (from `sampler`, which should be seeded
    /// from the OS) in the collective key set of `crs`.
    pub fn new(ctx: Arc<RlweContext>, crs: Crs, mut sampler: Sampler) -> Result<Self> {
        let mut secret = SecretKey::generate(&ctx, &mut sampler)?;
        secret.key_id = crs.key_id();
        Self::from_share(ctx, crs, secret, sampler)
    }

    /// A party around an existing share (e.g. one loaded from its owner's disk); the share must
    /// belong to the collective key set of `crs`.
    pub fn from_share(
        ctx: Arc<RlweContext>,
        crs: Crs,
        secret: SecretKey,
        sampler: Sampler,
    ) -> Result<Self> {
        ctx.check_fingerprint(secret.fingerprint, "secret share")?;
        if secret.key_id != crs.key_id() {
            return Err(Error::KeyMismatch(format!(
                "secret share of key set {:016x}, the CRS's is {:016x}",
                secret.key_id,
                crs.key_id()
            )));
        }
        Ok(Self {
            ctx,
            crs,
            secret,
            sampler,
            used: HashSet::new(),
            rkg_u: None,
            shamir_done: false,
        })
    }

    /// This party's secret share: keep it (it serializes as a [`SecretKey`]), never send it.
    /// After [`Self::activate_threshold`] it is the Lagrange-weighted threshold share, which
    /// is uniform modulo `QP` and cannot be serialized.
    pub fn secret_share(&self) -> &SecretKey {
        &self.secret
    }

    /// The common reference string.
    pub fn crs(&self) -> &Crs {
        &self.crs
    }

    /// Records that this party answers `p`; a second answer is refused.
    pub(crate) fn begin(&mut self, p: Protocol) -> Result<()> {
        if !self.used.insert(p) {
            return Err(Error::Multiparty(format!(
                "this party already sent its share for {p:?}; a retry with fresh noise can \
                 reveal the secret share, so start a new run (new run id or CRS) instead"
            )));
        }
        Ok(())
    }

    /// The share's limbs at a level: `s_i` restricted to them, wiped on drop.
    pub(crate) fn share_on(&self, limbs: Arc<[usize]>) -> Result<SecretPoly> {
        self.secret.on_limbs(&self.ctx, limbs)
    }
}

/// The ideal secret key `Σ s_i`, which no party ever computes: for tests and for checking a
/// deployment's results offline. Its coefficients lie in `[−K, K]`, so it is not ternary and
/// cannot be serialized.
pub fn ideal_secret_key(ctx: &RlweContext, shares: &[&SecretKey]) -> Result<SecretKey> {
    let first = shares
        .first()
        .ok_or_else(|| Error::Multiparty("no shares to add".into()))?;
    let mut coeffs = Zeroizing::new(vec![0i64; ctx.n()]);
    for s in shares {
        ctx.check_fingerprint(s.fingerprint, "secret share")?;
        if s.coeffs.len() != ctx.n() {
            return Err(Error::InvalidInput(
                "a threshold party's additive share has no small coefficients to add".into(),
            ));
        }
        crate::rlwe::ciphertext::check_key_id(first.key_id, s.key_id, "secret share")?;
        for (c, &x) in coeffs.iter_mut().zip(&s.coeffs) {
            *c += x as i64;
        }
    }
    if shares.len() > 127 {
        return Err(Error::InvalidInput("more than 127 shares".into()));
    }
    let ntt = ctx.upload_signed_ntt(&coeffs, ctx.qp_limbs(ctx.max_level()))?;
    Ok(SecretKey {
        coeffs: coeffs.iter().map(|&c| c as i8).collect(),
        ntt,
        fingerprint: ctx.fingerprint(),
        key_id: first.key_id,
    })
}
