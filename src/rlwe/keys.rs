//! Secret, public, relinearization and Galois keys; hybrid key switching.

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use crate::backend::{KeySwitchPlan, KsDigit, PolyBatch, Repr};
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::math::BaseConverter;
use crate::rlwe::context::RlweContext;

/// A backend-resident copy of the secret, of one of its powers or automorphisms, or of a value
/// that reveals it (`a·s`, a key's error): its words are overwritten with zeros
/// ([`crate::backend::Buffer`]'s wipe) when it is dropped, before the allocator (mimalloc keeps
/// freed pages for reuse) or a GPU buffer pool hands the memory out again. Every temporary that
/// holds such a value has this type.
pub(crate) type SecretPoly = Zeroizing<PolyBatch>;

/// A ternary secret key. Zeroized on drop, never printed, never part of a public context.
pub struct SecretKey {
    pub(crate) coeffs: Vec<i8>,
    /// s in the NTT domain over every ciphertext and special prime.
    pub(crate) ntt: PolyBatch,
    pub(crate) fingerprint: u64,
    /// Key-set identifier, drawn at generation and inherited by every key and ciphertext made
    /// from this key.
    pub(crate) key_id: u64,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(<redacted>, params {:016x})", self.fingerprint)
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.coeffs.zeroize();
        self.ntt.buf.wipe();
    }
}

impl SecretKey {
    /// Samples a uniform ternary secret.
    ///
    /// The widened copy of the coefficients is wiped. The residues `upload_signed_ntt` builds
    /// become the key's own buffer on the CPU backend (wiped with the key); a GPU backend
    /// copies them to the device and frees the host staging vector unwiped (as it does for the
    /// serialized-key path), which this crate cannot reach.
    pub fn generate(ctx: &RlweContext, sampler: &mut Sampler) -> Result<Self> {
        let coeffs = sampler.ternary(ctx.n());
        Self::from_coeffs(ctx, coeffs, new_key_id(sampler))
    }

    /// Samples a sparse ternary secret with exactly `hamming` nonzero coefficients, in the key
    /// set `key_id` (bootstrapping's ephemeral key, which never encrypts user data).
    pub(crate) fn generate_sparse(
        ctx: &RlweContext,
        hamming: usize,
        key_id: u64,
        sampler: &mut Sampler,
    ) -> Result<Self> {
        let coeffs = sampler.sparse_ternary(ctx.n(), hamming);
        Self::from_coeffs(ctx, coeffs, key_id)
    }

    fn from_coeffs(ctx: &RlweContext, mut coeffs: Vec<i8>, key_id: u64) -> Result<Self> {
        let wide: Zeroizing<Vec<i64>> = Zeroizing::new(coeffs.iter().map(|&c| c as i64).collect());
        let ntt = match ctx.upload_signed_ntt(&wide, ctx.qp_limbs(ctx.max_level())) {
            Ok(ntt) => ntt,
            Err(e) => {
                coeffs.zeroize();
                return Err(e);
            }
        };
        Ok(Self {
            coeffs,
            ntt,
            fingerprint: ctx.fingerprint(),
            key_id,
        })
    }

    /// Identifier of this key set: 64 random bits drawn when the secret key was generated,
    /// carried by its public, relinearization and Galois keys and by every ciphertext
    /// encrypted under them (and serialized with them). It is random rather than a hash of key
    /// material because a secret key exists before its public key (symmetric encryption, BFV's
    /// separate key generation) and a hash of the secret would be published with every
    /// ciphertext.
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// s restricted to the given limbs (NTT domain), wiped on drop.
    pub(crate) fn on_limbs(&self, ctx: &RlweContext, limbs: Arc<[usize]>) -> Result<SecretPoly> {
        Ok(Zeroizing::new(
            ctx.backend().select_limbs(&self.ntt, limbs)?,
        ))
    }

    /// `s²` over every ciphertext and special prime (NTT domain), wiped on drop.
    pub(crate) fn square(&self, ctx: &RlweContext) -> Result<SecretPoly> {
        let mut s2 = Zeroizing::new(self.ntt.clone());
        ctx.backend().mul_assign(ctx.ring(), &mut s2, &self.ntt)?;
        Ok(s2)
    }

    /// `s(X^g)` over every ciphertext and special prime (NTT domain), wiped on drop, as is the
    /// coefficient-domain copy it is made from.
    pub(crate) fn automorphism(&self, ctx: &RlweContext, g: usize) -> Result<SecretPoly> {
        let be = ctx.backend();
        let ring = ctx.ring();
        let mut s = Zeroizing::new(self.ntt.clone());
        be.ntt_inverse(ring, &mut s)?;
        let mut sg = Zeroizing::new(be.automorphism(ring, &s, g)?);
        be.ntt_forward(ring, &mut sg)?;
        Ok(sg)
    }
}

/// The keys a key owner generates in one go (`keygen` on every scheme's context): the same
/// secret, public and relinearization keys for CKKS and BFV.
#[derive(Debug)]
pub struct KeySet {
    /// Secret key (keep it).
    pub secret: SecretKey,
    /// Public encryption key.
    pub public: PublicKey,
    /// Relinearization key.
    pub relin: RelinKey,
}

impl KeySet {
    /// A fresh secret key and its public and relinearization keys, drawn from `s` in that
    /// order (what every scheme's `keygen` does).
    pub(crate) fn generate(ctx: &RlweContext, s: &mut Sampler) -> Result<Self> {
        let secret = SecretKey::generate(ctx, s)?;
        let public = PublicKey::generate(ctx, &secret, s)?;
        let relin = RelinKey::generate(ctx, &secret, s)?;
        Ok(Self {
            secret,
            public,
            relin,
        })
    }
}

/// An encryption of zero under the secret key, for public-key encryption.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// (b, a) with b = -a·s + e, NTT domain over the ciphertext and special primes.
    pub(crate) polys: PolyBatch,
    pub(crate) fingerprint: u64,
    /// The seed `a` expands from (serialization stores it instead of `a`).
    pub(crate) seed: Option<[u8; 32]>,
    /// Key set (the secret key's [`SecretKey::key_id`]).
    pub(crate) key_id: u64,
}

/// A fresh key-set identifier (never 0, which marks objects of no key set).
fn new_key_id(sampler: &mut Sampler) -> u64 {
    let s = sampler.seed();
    u64::from_le_bytes(s[..8].try_into().expect("8 bytes")).max(1)
}

/// `(-a·s + e + m, a)` over the given limbs (NTT domain); `a` is the expansion of `seed`
/// (a fresh one from the sampler for keys and symmetric encryption, a common reference
/// string's for the multiparty shares in [`crate::mhe`]).
pub(crate) fn rlwe_sample(
    ctx: &RlweContext,
    s: &PolyBatch,
    m: Option<&PolyBatch>,
    seed: [u8; 32],
    sampler: &mut Sampler,
) -> Result<PolyBatch> {
    let be = ctx.backend();
    let ring = ctx.ring();
    let limbs = s.limbs_arc();
    let moduli: Vec<_> = limbs.iter().map(|&l| *ring.modulus(l)).collect();
    let a_words = Sampler::uniform_from_seed(seed, &moduli, ctx.n());
    let a = be.upload(a_words, limbs.clone(), 1, ctx.n(), Repr::Ntt)?;
    // The error reveals s given the sample (s = (e + m − b)/a), so its copies are wiped; the
    // buffer it is uploaded to becomes b itself, which is public once a·s is subtracted.
    let e_small = Zeroizing::new(sampler.cbd(ctx.n()));
    let e: Zeroizing<Vec<i64>> = Zeroizing::new(e_small.iter().map(|&x| x as i64).collect());
    let mut b = ctx.upload_signed_ntt(&e, limbs)?;
    if let Some(m) = m {
        be.add_assign(ring, &mut b, m)?;
    }
    let mut as_: SecretPoly = Zeroizing::new(a.clone());
    be.mul_assign(ring, &mut as_, s)?;
    be.sub_assign(ring, &mut b, &as_)?;
    be.concat(&[&b, &a])
}

/// The gadget factor of digit `range` over `limbs` (some of `QP`'s): `[P]_{q_i}` on the
/// digit's primes and 0 elsewhere, so that `factor ⊙ s'` is the message
/// `P·[Q/Q_j]·[(Q/Q_j)^{-1}]_{Q_j}·s'` a key-switching key's digit encrypts.
fn gadget_factor(ctx: &RlweContext, range: &std::ops::Range<usize>, limbs: &[usize]) -> Vec<u32> {
    let ring = ctx.ring();
    limbs
        .iter()
        .map(|&l| {
            if range.contains(&l) {
                let m = ring.modulus(l);
                ctx.p_limbs().iter().fold(1u32, |acc, &p| {
                    m.mul(acc, ring.modulus(p).value() % m.value())
                })
            } else {
                0
            }
        })
        .collect()
}

/// One RLWE sample per key-switching digit under `s` (NTT over the full `QP`), digit `j`
/// encrypting the gadget message of `s_from` with `a_j` expanded from `seed(j)`: a
/// key-switching key's digits ([`KeySwitchKey::generate`], fresh seeds) and a party's share of
/// a collective one ([`crate::mhe`], seeds from the common reference string), by one code path.
pub(crate) fn gadget_samples(
    ctx: &RlweContext,
    s: &PolyBatch,
    s_from: &PolyBatch,
    seed: impl FnMut(usize, &mut Sampler) -> [u8; 32],
    sampler: &mut Sampler,
) -> Result<Vec<(PolyBatch, [u8; 32])>> {
    let all = ctx.params().q_primes().len();
    gadget_samples_below(ctx, s, s_from, all, seed, sampler)
}

/// [`gadget_samples`] for a key used only with ciphertexts of at most `q_count` primes: over
/// the first `q_count` ciphertext primes and the special primes, with the digits that meet
/// them (the first ones). Its words are the full key's at those limbs except for the `a_j`,
/// which are expanded from the seeds over these limbs, so it serializes seeded.
fn gadget_samples_below(
    ctx: &RlweContext,
    s: &PolyBatch,
    s_from: &PolyBatch,
    q_count: usize,
    mut seed: impl FnMut(usize, &mut Sampler) -> [u8; 32],
    sampler: &mut Sampler,
) -> Result<Vec<(PolyBatch, [u8; 32])>> {
    let be = ctx.backend();
    let limbs = ctx.qp_first(q_count);
    let full = limbs.len() == s.limbs().len();
    let (s_here, from_here);
    let (s, s_from): (&PolyBatch, &PolyBatch) = if full {
        (s, s_from)
    } else {
        s_here = Zeroizing::new(be.select_limbs(s, limbs.clone())?);
        from_here = Zeroizing::new(be.select_limbs(s_from, limbs.clone())?);
        (&s_here, &from_here)
    };
    let mut out = Vec::new();
    for (j, range) in ctx.digits().iter().enumerate() {
        if range.start >= q_count {
            break;
        }
        let mut m: SecretPoly = Zeroizing::new(s_from.clone());
        be.mul_scalar_assign(ctx.ring(), &mut m, &gadget_factor(ctx, range, &limbs))?;
        let seed = seed(j, sampler);
        out.push((rlwe_sample(ctx, s, Some(&m), seed, sampler)?, seed));
    }
    Ok(out)
}

impl PublicKey {
    /// Identifier of the key set (see [`SecretKey::key_id`]).
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// Generates the public key for `sk`.
    pub fn generate(ctx: &RlweContext, sk: &SecretKey, sampler: &mut Sampler) -> Result<Self> {
        ctx.check_fingerprint(sk.fingerprint, "secret key")?;
        let seed = sampler.seed();
        let polys = rlwe_sample(ctx, &sk.ntt, None, seed, sampler)?;
        Ok(Self {
            polys,
            fingerprint: ctx.fingerprint(),
            seed: Some(seed),
            key_id: sk.key_id,
        })
    }
}

/// A hybrid key-switching key from some `s'` to `s`: one RLWE sample per digit, over all
/// ciphertext and special primes, encrypting `P·[Q/Q_j]·[(Q/Q_j)^{-1}]_{Q_j}·s'`.
#[derive(Clone, Debug)]
pub struct KeySwitchKey {
    /// One batch of 2 polynomials (b_j, a_j) per digit.
    pub(crate) digits: Vec<PolyBatch>,
    pub(crate) fingerprint: u64,
    /// Per digit, the seed `a_j` expands from (serialization stores it instead of `a_j`).
    pub(crate) seeds: Vec<Option<[u8; 32]>>,
    /// Key set (the secret key's [`SecretKey::key_id`]).
    pub(crate) key_id: u64,
}

impl KeySwitchKey {
    /// Identifier of the key set (see [`SecretKey::key_id`]).
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// Ciphertext primes its digits cover (the chain's for a full key; a key over all
    /// special primes, as every Galois and relinearization key is).
    pub fn q_count(&self, ctx: &RlweContext) -> usize {
        let limbs = self.digits.first().map_or(0, |d| d.limbs().len());
        limbs.saturating_sub(ctx.p_limbs().len())
    }

    /// Bytes its words occupy in memory (every digit's two polynomials, 32-bit words).
    pub fn memory_bytes(&self) -> usize {
        self.digits
            .iter()
            .map(|d| d.count() * d.limbs().len() * d.n() * 4)
            .sum()
    }

    /// Generates a key switching `s_from` (NTT over QP at full level) to `sk`.
    pub fn generate(
        ctx: &RlweContext,
        sk: &SecretKey,
        s_from: &PolyBatch,
        sampler: &mut Sampler,
    ) -> Result<Self> {
        Self::generate_below(ctx, sk, s_from, ctx.params().q_primes().len(), sampler)
    }

    /// A key switching `s_from` to `sk` for ciphertexts of at most `q_count` primes only
    /// (a level below the top): the full key's limbs and digits beyond them are not made, so
    /// it takes `(q_count + |P|)/(|Q| + |P|)` of the memory, fewer digits included. Switching a
    /// ciphertext with more primes fails with a limb error.
    pub fn generate_below(
        ctx: &RlweContext,
        sk: &SecretKey,
        s_from: &PolyBatch,
        q_count: usize,
        sampler: &mut Sampler,
    ) -> Result<Self> {
        if q_count == 0 || q_count > ctx.params().q_primes().len() {
            return Err(Error::InvalidParameters(format!(
                "a key for ciphertexts of {q_count} primes; the chain has {}",
                ctx.params().q_primes().len()
            )));
        }
        let (digits, seeds) =
            gadget_samples_below(ctx, &sk.ntt, s_from, q_count, |_, s| s.seed(), sampler)?
                .into_iter()
                .map(|(d, seed)| (d, Some(seed)))
                .unzip();
        Ok(Self {
            digits,
            fingerprint: ctx.fingerprint(),
            seeds,
            key_id: sk.key_id,
        })
    }

    /// A one-digit key switching `s_from` to `s_to` (both NTT over the full `QP`) over only the
    /// first `q_count` ciphertext primes `Q_0` and the first `p_count` special primes `P'`:
    /// bootstrapping's switch to its sparse ephemeral key. An RLWE sample under a sparse
    /// secret is only safe at a small modulus, so `Q_0·P'` is kept as small as the noise
    /// allows (`P'` not far below `Q_0`; OpenFHE #1248), far below the chain's `Q·P`.
    /// Use it with [`Self::switch_low`].
    pub(crate) fn generate_low(
        ctx: &RlweContext,
        s_to: &SecretKey,
        s_from: &PolyBatch,
        (q_count, p_count): (usize, usize),
        sampler: &mut Sampler,
    ) -> Result<Self> {
        let be = ctx.backend();
        let ring = ctx.ring();
        let plan = low_plan(ctx, q_count, p_count)?;
        let s = Zeroizing::new(be.select_limbs(&s_to.ntt, plan.qp.clone())?);
        let mut m: SecretPoly = Zeroizing::new(be.select_limbs(s_from, plan.qp.clone())?);
        // Gadget factor of the one digit Q_0: [P']_{q_i} on Q_0's limbs, 0 on P''s.
        let factor: Vec<u32> = plan
            .qp
            .iter()
            .map(|&l| {
                if l < q_count {
                    let md = ring.modulus(l);
                    plan.p.iter().fold(1u32, |acc, &p| {
                        md.mul(acc, ring.modulus(p).value() % md.value())
                    })
                } else {
                    0
                }
            })
            .collect();
        be.mul_scalar_assign(ring, &mut m, &factor)?;
        let seed = sampler.seed();
        Ok(Self {
            digits: vec![rlwe_sample(ctx, &s, Some(&m), seed, sampler)?],
            fingerprint: ctx.fingerprint(),
            seeds: vec![Some(seed)],
            key_id: s_to.key_id,
        })
    }

    /// Key switching with a key from [`Self::generate_low`]: `d` over exactly the key's
    /// `Q_0` limbs, ModUp to `P'`, inner product, ModDown by `P'`.
    pub(crate) fn switch_low(&self, ctx: &RlweContext, d: &PolyBatch) -> Result<PolyBatch> {
        ctx.check_fingerprint(self.fingerprint, "key-switching key")?;
        let key = match self.digits.as_slice() {
            [k] => k,
            _ => {
                return Err(Error::InvalidInput(
                    "not a one-digit low key-switching key".into(),
                ))
            }
        };
        let q_count = d.limbs().len();
        let p_count = key.limbs().len().saturating_sub(q_count);
        let plan = low_plan(ctx, q_count, p_count)?;
        if *key.limbs() != *plan.qp || d.limbs() != &*plan.q {
            return Err(Error::LevelMismatch {
                op: "low key switch",
                left: key.limbs().len(),
                right: d.limbs().len(),
            });
        }
        ctx.backend().key_switch(ctx.ring(), d, &[key], &plan, None)
    }

    /// Key switching: given `d` (one polynomial, NTT form, at some level), returns
    /// `(u0, u1)` in the NTT domain at the same level with `u0 + u1·s ≈ d·s'`.
    pub fn switch(&self, ctx: &RlweContext, d: &PolyBatch) -> Result<PolyBatch> {
        self.switch_onto(ctx, d, None)
    }

    /// [`Self::switch`] plus the first two polynomials of `onto` (relinearization's
    /// `(c0, c1)`), which device backends add inside the key switch.
    pub(crate) fn switch_onto(
        &self,
        ctx: &RlweContext,
        d: &PolyBatch,
        onto: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        ctx.check_fingerprint(self.fingerprint, "key-switching key")?;
        let (index, plan) = key_switch_plan(ctx, d)?;
        let keys = self.digits_at(&index)?;
        ctx.backend().key_switch(ctx.ring(), d, &keys, &plan, onto)
    }

    /// Key switching without its ModDown ([`crate::backend::Backend::key_switch_ext`]):
    /// `(u_0, u_1)` over `d`'s limbs and the special primes, `P` times the switched value,
    /// with `P·lift` added to its first `lift.count()` polynomials. One ModDown (or one
    /// ModDown-and-rescale) finishes it.
    pub fn switch_ext(
        &self,
        ctx: &RlweContext,
        d: &PolyBatch,
        lift: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        ctx.check_fingerprint(self.fingerprint, "key-switching key")?;
        let (index, plan) = key_switch_plan(ctx, d)?;
        let keys = self.digits_at(&index)?;
        ctx.backend()
            .key_switch_ext(ctx.ring(), d, &keys, &plan, lift)
    }

    /// Relinearization of the size-3 `product` finished by one ModDown to `keep`, the first
    /// limbs of the product's: `P` and the product's limbs after `keep` are divided out
    /// ([`crate::backend::Backend::relinearize_mod_down`]).
    pub fn switch_product_mod_down(
        &self,
        ctx: &RlweContext,
        product: &PolyBatch,
        keep: Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let m = self.mod_down_switch(ctx, product.limbs().len(), &keep)?;
        ctx.backend().relinearize_mod_down(
            ctx.ring(),
            product,
            &m.keys,
            &m.plan,
            keep,
            m.drop,
            &m.conv,
        )
    }

    /// [`Self::switch_product_mod_down`] of the tensor product of the size-2 `a` and `b`,
    /// which device backends never write
    /// ([`crate::backend::Backend::multiply_relinearize_mod_down`]).
    pub fn switch_tensor_mod_down(
        &self,
        ctx: &RlweContext,
        (a, b): (&PolyBatch, &PolyBatch),
        keep: Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let m = self.mod_down_switch(ctx, a.limbs().len(), &keep)?;
        ctx.backend().multiply_relinearize_mod_down(
            ctx.ring(),
            (a, b),
            &m.keys,
            &m.plan,
            keep,
            m.drop,
            &m.conv,
        )
    }

    /// The operands of a key switch over the first `nq` ciphertext primes finished by one
    /// ModDown to `keep`: the key digits, the plan, the limbs dropped (the rest of the plan's
    /// basis) and their converter to `keep`.
    fn mod_down_switch(
        &self,
        ctx: &RlweContext,
        nq: usize,
        keep: &[usize],
    ) -> Result<ModDownSwitch<'_>> {
        ctx.check_fingerprint(self.fingerprint, "key-switching key")?;
        let (index, plan) = plan_over(ctx, nq)?;
        let keys = self.digits_at(&index)?;
        let drop: Arc<[usize]> = plan.qp.get(keep.len()..).unwrap_or(&[]).into();
        let conv = ctx.converter(&drop, keep);
        Ok(ModDownSwitch {
            keys,
            plan,
            drop,
            conv,
        })
    }

    /// The key's digits at the given indices (a level's digits, from its plan).
    fn digits_at(&self, index: &[usize]) -> Result<Vec<&PolyBatch>> {
        index
            .iter()
            .map(|&j| {
                self.digits
                    .get(j)
                    .ok_or_else(|| Error::InvalidInput(format!("key has no digit {j}")))
            })
            .collect()
    }

    /// The second half of key switching, on digits from [`decompose`]: inner product with the
    /// key and ModDown. With `galois = Some(g)` the digits are first permuted by `X → X^g` in
    /// the NTT domain, which is how hoisted rotations reuse one decomposition for many steps.
    pub fn switch_decomposed(
        &self,
        ctx: &RlweContext,
        digits: &[(usize, PolyBatch)],
        galois: Option<usize>,
    ) -> Result<PolyBatch> {
        let acc = self.switch_decomposed_ext(ctx, digits, galois)?;
        let nq = acc.limbs().len() - ctx.p_limbs().len();
        ctx.mod_down(&acc, ctx.q_first(nq), ctx.p_limbs())
    }

    /// [`Self::switch_decomposed`] without its ModDown: `(u0, u1)` over the digits' limbs
    /// and the special primes, `P` times the switched value. Sums of such products (and of
    /// anything else in that basis) need one ModDown in all, which is how a hoisted linear
    /// transform saves one per rotation.
    pub fn switch_decomposed_ext(
        &self,
        ctx: &RlweContext,
        digits: &[(usize, PolyBatch)],
        galois: Option<usize>,
    ) -> Result<PolyBatch> {
        self.switch_hoisted(ctx, digits, galois, None)
    }

    /// [`Self::switch_decomposed_ext`] plus `P·σ_g(lift)` on the first `lift.count()`
    /// polynomials (`lift` over the digits' ciphertext limbs): a rotated ciphertext's
    /// `σ_g(c_0)` joins its switched `σ_g(c_1)` in the same pass.
    pub(crate) fn switch_hoisted(
        &self,
        ctx: &RlweContext,
        digits: &[(usize, PolyBatch)],
        galois: Option<usize>,
        lift: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        switch_hoisted_sum(ctx, digits, &[(self, galois)], lift)
    }
}

/// `Σ_r` [`KeySwitchKey::switch_hoisted`] over `rotations` (`(key_r, g_r)`), summed in the
/// extended basis in one pass ([`crate::backend::Backend::key_inner_hoisted_sum`]).
pub(crate) fn switch_hoisted_sum(
    ctx: &RlweContext,
    digits: &[(usize, PolyBatch)],
    rotations: &[(&KeySwitchKey, Option<usize>)],
    lift: Option<&PolyBatch>,
) -> Result<PolyBatch> {
    let index: Vec<usize> = digits.iter().map(|(j, _)| *j).collect();
    let keys = rotations
        .iter()
        .map(|&(key, _)| {
            ctx.check_fingerprint(key.fingerprint, "key-switching key")?;
            key.digits_at(&index)
        })
        .collect::<Result<Vec<_>>>()?;
    let rotations: Vec<_> = keys
        .iter()
        .zip(rotations)
        .map(|(keys, &(_, g))| (keys.as_slice(), g))
        .collect();
    let ups: Vec<&PolyBatch> = digits.iter().map(|(_, up)| up).collect();
    ctx.backend()
        .key_inner_hoisted_sum(ctx.ring(), &ups, &rotations, lift, &ctx.p_limbs())
}

/// The first half of hybrid key switching: splits `d` (one polynomial, NTT form) into its
/// digits, extends each to the ciphertext and special primes (ModUp) and returns it in the
/// NTT domain as `(digit index, extended digit)`. Only the new limbs are transformed: a
/// digit's own limbs are already in `d`.
pub fn decompose(ctx: &RlweContext, d: &PolyBatch) -> Result<Vec<(usize, PolyBatch)>> {
    let (index, plan) = key_switch_plan(ctx, d)?;
    let ups = ctx.backend().mod_up(ctx.ring(), d, &plan)?;
    Ok(index.into_iter().zip(ups).collect())
}

/// The digits of `d`'s level (with their indices into the key) and their bases: what
/// [`decompose`] and [`crate::backend::Backend::key_switch`] work from.
fn key_switch_plan(ctx: &RlweContext, d: &PolyBatch) -> Result<(Vec<usize>, KeySwitchPlan)> {
    if d.repr() != Repr::Ntt || d.count() != 1 {
        return Err(Error::InvalidInput(
            "key switch input must be one polynomial in NTT form".into(),
        ));
    }
    plan_over(ctx, d.limbs().len())
}

/// What [`KeySwitchKey::mod_down_switch`] gathers for a relinearization finished by one ModDown.
struct ModDownSwitch<'a> {
    keys: Vec<&'a PolyBatch>,
    plan: KeySwitchPlan,
    drop: Arc<[usize]>,
    conv: Arc<BaseConverter>,
}

/// The key-switching plan of a polynomial over the first `nq` ciphertext primes, with the
/// indices of the key digits it uses.
fn plan_over(ctx: &RlweContext, nq: usize) -> Result<(Vec<usize>, KeySwitchPlan)> {
    if nq == 0 || nq > ctx.params().q_primes().len() {
        return Err(Error::InvalidInput(format!(
            "key switch input over {nq} limbs; this context has {}",
            ctx.params().q_primes().len()
        )));
    }
    let qp = ctx.qp_first(nq);
    let q = ctx.q_first(nq);
    let mut index = Vec::new();
    let mut digits = Vec::new();
    for (j, range) in ctx.digits().into_iter().enumerate() {
        let limbs: Arc<[usize]> = range.filter(|&l| l < nq).collect();
        if limbs.is_empty() {
            continue;
        }
        let rest: Arc<[usize]> = qp.iter().copied().filter(|l| !limbs.contains(l)).collect();
        let up = ctx.converter(&limbs, &rest);
        index.push(j);
        digits.push(KsDigit { limbs, rest, up });
    }
    let p = ctx.p_limbs();
    let down = ctx.converter(&p, &q);
    Ok((
        index,
        KeySwitchPlan {
            digits,
            qp,
            q,
            p,
            down,
        },
    ))
}

/// The plan of a one-digit key switch over the first `q_count` ciphertext primes and the first
/// `p_count` special primes ([`KeySwitchKey::generate_low`]).
fn low_plan(ctx: &RlweContext, q_count: usize, p_count: usize) -> Result<KeySwitchPlan> {
    let specials = ctx.p_limbs();
    if q_count == 0
        || q_count > ctx.params().q_primes().len()
        || p_count == 0
        || p_count > specials.len()
    {
        return Err(Error::InvalidInput(format!(
            "a low key switch over {q_count} ciphertext and {p_count} special primes does not fit the chain"
        )));
    }
    let q = ctx.q_first(q_count);
    let p: Arc<[usize]> = specials[..p_count].into();
    let qp: Arc<[usize]> = q.iter().chain(p.iter()).copied().collect();
    Ok(KeySwitchPlan {
        digits: vec![KsDigit {
            limbs: q.clone(),
            rest: p.clone(),
            up: ctx.converter(&q, &p),
        }],
        down: ctx.converter(&p, &q),
        qp,
        q,
        p,
    })
}

/// Relinearization key: switches `s²` to `s`.
#[derive(Clone, Debug)]
pub struct RelinKey(pub(crate) KeySwitchKey);

impl RelinKey {
    /// The underlying key-switching key.
    pub fn key_switch_key(&self) -> &KeySwitchKey {
        &self.0
    }

    /// Generates the relinearization key.
    pub fn generate(ctx: &RlweContext, sk: &SecretKey, sampler: &mut Sampler) -> Result<Self> {
        let s2 = sk.square(ctx)?;
        Ok(Self(KeySwitchKey::generate(ctx, sk, &s2, sampler)?))
    }
}

/// Galois keys, one key-switching key per Galois element `g` (switching `s(X^g)` to `s`).
#[derive(Clone, Debug, Default)]
pub struct GaloisKeys {
    pub(crate) keys: HashMap<usize, KeySwitchKey>,
}

impl GaloisKeys {
    /// Generates keys for the given Galois elements.
    pub fn generate(
        ctx: &RlweContext,
        sk: &SecretKey,
        elements: &[usize],
        sampler: &mut Sampler,
    ) -> Result<Self> {
        let all = ctx.params().q_primes().len();
        let with_count: Vec<(usize, usize)> = elements.iter().map(|&g| (g, all)).collect();
        Self::generate_below(ctx, sk, &with_count, sampler)
    }

    /// Keys for `(element, q_count)` pairs, each for ciphertexts of at most `q_count` primes
    /// ([`KeySwitchKey::generate_below`]): rotations only ever applied low in the chain (a
    /// bootstrap's SlotsToCoeffs) take a fraction of a full key's memory.
    pub fn generate_below(
        ctx: &RlweContext,
        sk: &SecretKey,
        elements: &[(usize, usize)],
        sampler: &mut Sampler,
    ) -> Result<Self> {
        use rayon::prelude::*;
        // The first request for each element, each key with its own forked sampler: the keys
        // are generated in parallel (sampling is a third of the work).
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<(usize, usize, Sampler)> = elements
            .iter()
            .filter(|&&(g, _)| seen.insert(g))
            .map(|&(g, q_count)| (g, q_count, sampler.fork()))
            .collect();
        let keys = todo
            .par_iter_mut()
            .map(|(g, q_count, s)| {
                let sg = sk.automorphism(ctx, *g)?;
                Ok((*g, KeySwitchKey::generate_below(ctx, sk, &sg, *q_count, s)?))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Self { keys })
    }

    /// Ciphertext primes each key serves (`element → q_count`; the chain's count for a full
    /// key), what serialization records for keys below the top.
    pub fn q_counts(&self, ctx: &RlweContext) -> Vec<(usize, usize)> {
        self.elements()
            .into_iter()
            .map(|g| (g, self.keys[&g].q_count(ctx)))
            .collect()
    }

    /// Bytes all its keys occupy in memory.
    pub fn memory_bytes(&self) -> usize {
        self.keys.values().map(KeySwitchKey::memory_bytes).sum()
    }

    /// The key for element `g`, if generated.
    pub fn get(&self, g: usize) -> Option<&KeySwitchKey> {
        self.keys.get(&g)
    }

    /// Galois elements that have keys.
    pub fn elements(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.keys.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Galois element of a BFV row rotation by `step` slots (generator 3, as in SEAL; negative
/// steps rotate the other way). CKKS slots use generator 5: [`ckks_galois_element`].
pub fn galois_element_for_step(n: usize, step: i64) -> usize {
    galois_element_with_generator(n, step, 3)
}

/// Galois element of a CKKS slot rotation by `step` (generator 5, see
/// [`crate::ckks::encoder`]; negative steps rotate right).
pub fn ckks_galois_element(n: usize, step: i64) -> usize {
    galois_element_with_generator(n, step, crate::ckks::encoder::SLOT_GENERATOR as u64)
}

fn galois_element_with_generator(n: usize, step: i64, generator: u64) -> usize {
    let two_n = 2 * n as u64;
    let half = (n / 2) as i64;
    let s = step.rem_euclid(half) as u64;
    crate::math::modular::pow_mod_u64(generator, s, two_n) as usize
}

/// Galois element of complex conjugation (CKKS) / row swap (BFV): `2N − 1`.
pub fn galois_element_conjugate(n: usize) -> usize {
    2 * n - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bfv::{BfvChain, BfvParams, PlainModulus};
    use crate::rlwe::Security;
    use zeroize::ZeroizeOnDrop;

    /// Compiles only for types that wipe themselves on drop.
    fn wipes_on_drop<T: ZeroizeOnDrop>(_: &T) {}

    fn context() -> Arc<RlweContext> {
        let p = BfvParams::from_chain(BfvChain {
            log_n: 12,
            plain: PlainModulus::Bits(20),
            primes: 2,
            dnum: 1,
            security: Security::InsecureForTestingOnly,
        })
        .unwrap();
        RlweContext::new(p.rlwe).unwrap()
    }

    /// Negacyclic product of integer polynomials (reference for s²).
    fn negacyclic(a: &[i64], b: &[i64]) -> Vec<i64> {
        let n = a.len();
        let mut out = vec![0i64; n];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                let k = i + j;
                if k < n {
                    out[k] += x * y;
                } else {
                    out[k - n] -= x * y;
                }
            }
        }
        out
    }

    /// The temporaries that key generation, encryption and decryption make of the secret
    /// (`s` on a level's limbs, `s²`, `s(X^g)`) are `SecretPoly`s (checked at compile time),
    /// hold the right values (against the ternary coefficients, computed independently) and
    /// are all zeros after `zeroize`, which is what their drop runs.
    #[test]
    fn secret_temporaries_hold_the_secret_and_wipe_it() {
        let ctx = context();
        let be = ctx.backend();
        let ring = ctx.ring();
        let n = ctx.n();
        let sk = SecretKey::generate(&ctx, &mut Sampler::from_seed([3; 32])).unwrap();
        let s: Vec<i64> = sk.coeffs.iter().map(|&c| c as i64).collect();
        let g = 5;
        let mut sg_want = vec![0i64; n];
        for (j, &c) in s.iter().enumerate() {
            let e = j * g % (2 * n);
            if e < n {
                sg_want[e] += c;
            } else {
                sg_want[e - n] -= c;
            }
        }
        let cases: Vec<(&str, SecretPoly, Vec<i64>)> = vec![
            ("s", sk.on_limbs(&ctx, ctx.q_limbs(1)).unwrap(), s.clone()),
            ("s²", sk.square(&ctx).unwrap(), negacyclic(&s, &s)),
            ("s(X^5)", sk.automorphism(&ctx, g).unwrap(), sg_want),
        ];
        for (what, mut p, want) in cases {
            wipes_on_drop(&p);
            let mut coeff: SecretPoly = p.clone();
            be.ntt_inverse(ring, &mut coeff).unwrap();
            let words = be.download(&coeff).unwrap();
            for (i, &l) in coeff.limbs().iter().enumerate() {
                let q = ring.modulus(l).value() as i64;
                let got = &words[i * n..(i + 1) * n];
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(&w, &c)| w as i64 == c.rem_euclid(q)),
                    "{what} on limb {l}"
                );
            }
            p.zeroize();
            let after = be.download(&p).unwrap();
            assert_eq!(after.len(), p.limbs().len() * n);
            assert!(after.iter().all(|&w| w == 0), "{what} not wiped");
        }
    }
}

/// The CPU backend's fused key switching and ModDown against their definitions, composed from
/// the CPU's primitives ([`crate::backend::key_switch_reference`] and friends).
#[cfg(test)]
mod fused_tests {
    use super::*;
    use crate::backend::{
        key_inner_hoisted_reference, key_switch_ext_reference, key_switch_reference,
        mod_down_reference, mod_up_reference, Backend, CpuBackend, HoistedRotation,
    };
    use crate::rlwe::Security;

    /// Uniform words over `limbs`, `count` polynomials (splitmix64; any fixed stream will do).
    fn words(ctx: &RlweContext, limbs: &[usize], count: usize, seed: u64) -> Vec<u32> {
        let mut x = seed;
        let n = ctx.n();
        (0..count * limbs.len() * n)
            .map(|i| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let q = ctx.ring().modulus(limbs[(i / n) % limbs.len()]).value() as u64;
                ((z ^ (z >> 31)) % q) as u32
            })
            .collect()
    }

    /// Every level of a composite chain with 2 digits and 2+ special primes: the fused key
    /// switch (with and without `onto`), the key switch without ModDown (lifting 0, 1 or 2
    /// polynomials), ModDown and the hoisted inner product (no automorphism, a rotation,
    /// conjugation) give exactly the words of their definitions: at both vector widths
    /// ([`crate::math::simd`]; the AVX-512 one where the CPU has it).
    #[test]
    fn fused_key_switching_matches_its_definition() {
        for wide in [false, true] {
            crate::math::simd::set_width(Some(wide));
            fused_key_switching_at_the_current_width();
        }
        crate::math::simd::set_width(None);
    }

    fn fused_key_switching_at_the_current_width() {
        let params = crate::ckks::CkksParams::builder()
            .log_n(11)
            .depth(3)
            .scale_bits(40)
            .dnum(2)
            .security(Security::InsecureForTestingOnly)
            .build()
            .unwrap();
        let ctx = RlweContext::new(params.rlwe().clone()).unwrap();
        let be = CpuBackend::new();
        let ring = ctx.ring();
        let n = ctx.n();
        let mut sampler = Sampler::from_seed([7; 32]);
        let sk = SecretKey::generate(&ctx, &mut sampler).unwrap();
        let s2 = sk.square(&ctx).unwrap();
        let key = KeySwitchKey::generate(&ctx, &sk, &s2, &mut sampler).unwrap();
        let key2 = KeySwitchKey::generate(&ctx, &sk, &s2, &mut sampler).unwrap();
        let get = |p: PolyBatch| be.download(&p).unwrap();
        let top = ctx.params().q_primes().len();
        assert!(ctx.p_limbs().len() >= 2 && ctx.digits().len() >= 2);
        for nq in 1..=top {
            let q = ctx.q_first(nq);
            let up = |count, seed| {
                be.upload(words(&ctx, &q, count, seed), q.clone(), count, n, Repr::Ntt)
                    .unwrap()
            };
            let d = up(1, nq as u64);
            let (index, plan) = key_switch_plan(&ctx, &d).unwrap();
            let keys: Vec<&PolyBatch> = index.iter().map(|&j| &key.digits[j]).collect();
            let onto = up(3, 100 + nq as u64);
            for onto in [None, Some(&onto)] {
                assert_eq!(
                    get(be.key_switch(ring, &d, &keys, &plan, onto).unwrap()),
                    get(key_switch_reference(&be, ring, &d, &keys, &plan, onto).unwrap()),
                    "key switch at {nq} limbs, onto {}",
                    onto.is_some()
                );
            }
            let (one, two) = (up(1, 200), up(2, 300));
            for lift in [None, Some(&one), Some(&two)] {
                let ext = be.key_switch_ext(ring, &d, &keys, &plan, lift).unwrap();
                let want = key_switch_ext_reference(&be, ring, &d, &keys, &plan, lift).unwrap();
                assert_eq!(be.download(&ext).unwrap(), get(want), "ext at {nq} limbs");
                let (keep, drop) = (plan.q.clone(), plan.p.clone());
                assert_eq!(
                    get(be
                        .mod_down(ring, &ext, keep.clone(), drop.clone(), &plan.down)
                        .unwrap()),
                    get(mod_down_reference(&be, ring, &ext, keep, drop, &plan.down).unwrap()),
                    "mod_down at {nq} limbs"
                );
            }
            let ups = mod_up_reference(&be, ring, &d, &plan).unwrap();
            let fused_ups = be.mod_up(ring, &d, &plan).unwrap();
            assert_eq!(fused_ups.len(), ups.len());
            for (a, b) in fused_ups.into_iter().zip(&ups) {
                assert_eq!(a.limbs(), b.limbs());
                assert_eq!(get(a), be.download(b).unwrap(), "ModUp at {nq} limbs");
            }
            let ups: Vec<&PolyBatch> = ups.iter().collect();
            let p = ctx.p_limbs();
            for g in [None, Some(5), Some(2 * n - 1)] {
                for lift in [None, Some(&one), Some(&two)] {
                    assert_eq!(
                        get(be
                            .key_inner_hoisted(ring, &ups, &keys, g, lift, &p)
                            .unwrap()),
                        get(
                            key_inner_hoisted_reference(&be, ring, &ups, &keys, g, lift, &p)
                                .unwrap()
                        ),
                        "hoisted at {nq} limbs, g {g:?}"
                    );
                }
            }
            assert!(be
                .key_inner_hoisted(ring, &ups, &keys, Some(4), None, &p)
                .is_err());
            // Summed rotations (two keys, the identity among them) against the sum of the
            // definitions, from one rotation up to nine (18 products a word).
            let other: Vec<&PolyBatch> = index.iter().map(|&j| &key2.digits[j]).collect();
            let all: Vec<HoistedRotation<'_>> = [None, Some(5), Some(2 * n - 1), Some(25)]
                .into_iter()
                .cycle()
                .take(9)
                .enumerate()
                .map(|(i, g)| (if i % 2 == 0 { &keys[..] } else { &other[..] }, g))
                .collect();
            for count in [1, 3, 9] {
                let rotations = &all[..count];
                for lift in [None, Some(&one), Some(&two)] {
                    let mut want =
                        key_inner_hoisted_reference(&be, ring, &ups, &keys, None, lift, &p)
                            .unwrap();
                    for &(k, g) in &rotations[1..] {
                        let r = key_inner_hoisted_reference(&be, ring, &ups, k, g, lift, &p);
                        be.add_assign(ring, &mut want, &r.unwrap()).unwrap();
                    }
                    assert_eq!(
                        get(be
                            .key_inner_hoisted_sum(ring, &ups, rotations, lift, &p)
                            .unwrap()),
                        get(want),
                        "{count} hoisted rotations summed at {nq} limbs"
                    );
                }
            }
            assert!(be.key_inner_hoisted_sum(ring, &ups, &[], None, &p).is_err());
        }
    }
}
