//! Encrypted training with CKKS: logistic regression ([`logistic`]) and federated averaging
//! ([`federated`]), and transfer learning of a linear head on encrypted CNN features
//! ([`transfer`]).
//!
//! # Parties
//! * The **key holder** ([`KeyHolder`]) owns the secret key. It encrypts (or lets data owners
//!   encrypt under its public key), and it is the only party that can decrypt. When a
//!   ciphertext runs out of levels it performs the **refresh** ([`Refresh`]): decrypt and
//!   re-encrypt at the top of the chain. The refresh is explicit in the API and counted in
//!   every report. [`Bootstrapper`] implements the same [`Refresh`] trait without the key
//!   holder: it bootstraps on public keys only, so training can run with 0 decryptions.
//! * The **server** (or the workers of a data-parallel step) holds only the public material
//!   ([`PublicEval`]: context, relinearization and Galois keys) and computes on ciphertexts.
//!   The shards of a step run on rayon threads or on `hetensor worker` processes
//!   ([`logistic::ShardRunner`]), with the same code ([`logistic::shard_gradient`]) and
//!   word-identical results.
//!
//! # Packing: the block layout ([`BlockLayout`])
//! The slot vector (`S = N/2` slots) is cut into `k` blocks of `B` slots (`k·B = S`, both
//! powers of two). A mini-batch ciphertext holds **feature `j` of sample `t` in slot
//! `j·B + t`** (block `k−1`... are zero padding, the last used block is the constant 1 of the
//! bias); the weights ciphertext holds `w_j` replicated over block `j`. The features (and the
//! bias column) are divided by the sigmoid's bound `A` before encryption, so the logits come
//! out as `z/A` in the ciphertext's content, which [`eval_poly`] needs to stay precise. Then
//! * logits: `Z = Σ_blocks rot(W ⊙ X)` — `log2 k` rotations by `B, 2B, …, S/2` leave `z_t` in
//!   slot `t` of **every** block (the sum over blocks is cyclic over the whole vector, so no
//!   mask is needed); the sum runs before the product's rescale, so it adds one rounding
//!   error, not `k`;
//! * the sigmoid and the error `E = p(Z) − Y` are slot-wise (labels replicated in every block);
//! * gradient: `P = E ⊙ X`, then `log2 B` rotations by `1, 2, …, B/2` put `Σ_t P[j·B+t]` in
//!   the first slot of block `j`, a 0/1 mask (1 level) keeps those heads, and `log2 B`
//!   rotations by `−1, …, −B/2` replicate each head over its block: the gradient comes out in
//!   the layout of the weights.
//!
//! Rotations per step: `log2 k` per batch ciphertext plus `2·log2 B` once (the partial
//! products of all ciphertexts and data-parallel shards are added first), i.e. about
//! `log2 S + log2 B` — against `d·log2 S` for one ciphertext per feature with replicated
//! scalar weights, which needs no mask but costs 10-40x more rotations here. Levels per step:
//! 1 (`W⊙X`) + depth of the sigmoid + 1 (`E⊙X`) + 1 (mask) — the learning rate is folded into
//! the mask, and the momentum multiplication runs off the critical path. With [`eval_poly`] the sigmoid costs `floor(log2 d) + 1` levels: 2 for degree 3, 3
//! for degrees 5 and 7, so a step costs 5 or 6 levels.

pub mod federated;
pub mod logistic;
pub mod multiparty;
pub mod packed_head;
pub mod transfer;

use std::sync::Arc;

use rayon::prelude::*;

use crate::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
use crate::ckks::{CkksContext, CkksParams, KeySet, SinglePrimeChain};
use crate::rlwe::{Ciphertext, GaloisKeys, PublicKey, RelinKey};
use crate::serialize::PublicContext;
use crate::{Error, Result};

/// CKKS parameters for training: ring degree `2^log_n`, scale `2^26`, a 30-bit base prime,
/// and the longest chain that fits 128-bit security with two special primes (N = 2^14: 13
/// levels; N = 2^13: 5 levels with one special prime).
pub fn training_params(log_n: u32) -> Result<CkksParams> {
    let scale_bits = 26;
    let max = crate::rlwe::params::max_log_qp_128(1usize << log_n)
        .ok_or_else(|| Error::InvalidParameters(format!("no parameters for log2 N = {log_n}")))?
        as usize;
    // Prefer two special primes (cheaper key switching), fall back to one.
    for alpha in [2usize, 1] {
        let levels = (max.saturating_sub(30 + 30 * alpha)) / scale_bits as usize;
        if levels < 2 {
            continue;
        }
        let dnum = (levels + 1).div_ceil(alpha);
        let chain = |levels| SinglePrimeChain {
            log_n,
            levels,
            scale_bits,
            dnum,
            ..Default::default()
        };
        match CkksParams::single_prime(chain(levels)) {
            Ok(p) => return Ok(p),
            Err(Error::InsecureParameters { .. }) => {
                if let Ok(p) = CkksParams::single_prime(chain(levels - 1)) {
                    return Ok(p);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::InvalidParameters(format!(
        "no training chain fits N = 2^{log_n} at 128-bit security"
    )))
}

/// Scale of [`precise_training_params`]: 40-bit statistical smudging of a decryption costs
/// `40 + log2 N + log2 B_e = 73` bits at N = 2^15 for a noise bound `B_e = 2^18` (the trained
/// weights' noise measures ~2^14.5), which leaves ~9 bits of the scale per coefficient for the
/// result, and weights within ~1e-2 of the single-key run once their replicas are averaged
/// (`crate::mhe::ckks_smudging`).
pub const PRECISE_SCALE_BITS: u32 = 84;

/// Levels of [`precise_training_params`]: one logistic step with a sigmoid of degree ≤ 7
/// (6 levels, [`logistic::levels_per_step`]) above the lowest level the weights may reach,
/// where a collective refresh restores them. More levels would go unused (a step needs all 6)
/// and would take the room of special primes: at N = 2^15, 8 levels leave 3 special primes and
/// 14 key-switching digits, 7 leave 6 and 5.
pub const PRECISE_LEVELS: usize = 7;

/// CKKS parameters for training whose result is decrypted collectively under 40-bit
/// statistical smudging: scale 2^[`PRECISE_SCALE_BITS`] in composite levels (three ~28-bit
/// primes each), [`PRECISE_LEVELS`] levels, ring degree `2^log_n` (N = 2^15: 25 limbs, 6
/// special primes, 5 digits; log2 QP = 872 ≤ 881).
pub fn precise_training_params(log_n: u32) -> Result<CkksParams> {
    CkksParams::builder()
        .log_n(log_n)
        .scale_bits(PRECISE_SCALE_BITS)
        .depth(PRECISE_LEVELS)
        .build()
}

/// The settings `hetensor train <workload>` runs with when no flag overrides them, for
/// `titanic`, `credit` and `credit-federated`; the tests train with these same values.
///
/// Chosen on the plaintext run with the polynomial sigmoid over the split seeds 1-10
/// (BENCHMARKS.md): degree 7 on [-12, 12] tracks the true sigmoid within a point on average
/// with the largest learning rates that keep the logits inside the interval. For
/// `credit-federated` (2 owners, 5 rounds of 3 local epochs) the same fit and rate as
/// `credit` keep every owner's logits within ±9.9 on all ten seeds (84.6 % mean test
/// accuracy); the former degree 3 on [-8, 8] at rate 0.5 diverged on 8 of the 10 seeds (seed
/// 1: logits up to 29.9 after round 1, where that cubic is −37, then overflow in round 2).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDefaults {
    /// Degree of the least-squares sigmoid fit.
    pub degree: usize,
    /// Half-width `A` of the fit interval `[-A, A]`.
    pub interval: f64,
    /// Epochs (local epochs per round for federated training).
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Mini-batch size.
    pub batch: usize,
    /// Federated rounds (federated training only).
    pub rounds: usize,
    /// Data owners (federated training), or shards per step (one: no data parallelism).
    pub owners: usize,
    /// log2 of the ring degree.
    pub log_n: u32,
    /// Seed of the split and the batches.
    pub seed: u64,
}

impl TrainDefaults {
    /// The defaults of `workload` (`titanic`, `credit` or `credit-federated`).
    pub fn for_workload(workload: &str) -> Result<Self> {
        let base = TrainDefaults {
            degree: 7,
            interval: 12.0,
            epochs: 8,
            lr: 0.5,
            momentum: 0.9,
            batch: 128,
            rounds: 5,
            owners: 1,
            log_n: 14,
            seed: 1,
        };
        match workload {
            "titanic" => Ok(base),
            "credit" => Ok(TrainDefaults {
                epochs: 10,
                lr: 0.2,
                ..base
            }),
            "credit-federated" => Ok(TrainDefaults {
                epochs: 3,
                lr: 0.2,
                owners: 2,
                ..base
            }),
            w => Err(Error::InvalidInput(format!(
                "no training defaults for workload {w:?} (titanic, credit or credit-federated)"
            ))),
        }
    }

    /// The optimizer settings (no progress bar).
    pub fn train_config(&self) -> crate::nn::TrainConfig {
        crate::nn::TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: 0.0,
            seed: self.seed,
            ..crate::nn::TrainConfig::default()
        }
    }
}

/// The slot layout of [`logistic`]: `blocks` blocks of `block` slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockLayout {
    /// Number of blocks `k` (a power of two).
    pub blocks: usize,
    /// Slots per block `B` (a power of two): the samples one ciphertext holds.
    pub block: usize,
}

impl BlockLayout {
    /// A layout with at least `min_blocks` blocks of at least `min_block` slots each (the
    /// rest of the slots go to larger blocks, so the slots are all used).
    pub fn new(slots: usize, min_blocks: usize, min_block: usize) -> Result<Self> {
        let blocks = min_blocks.max(1).next_power_of_two();
        let block = slots / blocks;
        if blocks > slots || block < min_block.max(1) {
            return Err(Error::InvalidParameters(format!(
                "{min_blocks} blocks of {min_block} samples do not fit {slots} slots; use a \
                 larger ring (log2 N) or fewer samples per ciphertext"
            )));
        }
        Ok(Self { blocks, block })
    }

    /// Total slots `k·B`.
    pub fn slots(&self) -> usize {
        self.blocks * self.block
    }

    /// Rotation steps the layout needs: `1, 2, …, B/2`, their negatives, and `B, 2B, …, S/2`.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let mut steps = Vec::new();
        let mut s = 1;
        while s < self.block {
            steps.push(s as i64);
            steps.push(-(s as i64));
            s *= 2;
        }
        let mut s = self.block;
        while s < self.slots() {
            steps.push(s as i64);
            s *= 2;
        }
        steps
    }

    /// Sum over blocks (cyclic): slot `j·B + t` gets `Σ_j' ct[j'·B + t]`. `log2 k` rotations.
    pub fn sum_blocks(&self, ev: Eval<'_>, ct: &Ciphertext) -> Result<Ciphertext> {
        let mut acc = ct.clone();
        let mut s = self.block;
        while s < self.slots() {
            acc = ev
                .ctx
                .add(&acc, &ev.ctx.rotate(&acc, s as i64, ev.galois)?)?;
            s *= 2;
        }
        Ok(acc)
    }

    /// Slot `j·B` gets `Σ_{t<B} ct[j·B + t]` (other slots: partial sums). `log2 B` rotations.
    pub fn sum_within_blocks(&self, ev: Eval<'_>, ct: &Ciphertext) -> Result<Ciphertext> {
        let mut acc = ct.clone();
        let mut s = 1;
        while s < self.block {
            acc = ev
                .ctx
                .add(&acc, &ev.ctx.rotate(&acc, s as i64, ev.galois)?)?;
            s *= 2;
        }
        Ok(acc)
    }

    /// From a ciphertext that is zero except at block heads `j·B`, copies each head over its
    /// block. `log2 B` rotations.
    pub fn replicate_heads(&self, ev: Eval<'_>, ct: &Ciphertext) -> Result<Ciphertext> {
        let mut acc = ct.clone();
        let mut s = 1;
        while s < self.block {
            acc = ev
                .ctx
                .add(&acc, &ev.ctx.rotate(&acc, -(s as i64), ev.galois)?)?;
            s *= 2;
        }
        Ok(acc)
    }

    /// The gradient reduction: sums every block of `p` (size 2, a product not yet rescaled),
    /// rescales, keeps the block heads with a `0/factor` mask encoded so that the result has
    /// scale `target`, replicates them and rescales: the output holds `factor·Σ_t p[j·B+t]` in
    /// every slot of block `j`. 2 levels (the product's rescale and the mask's), `2·log2 B`
    /// rotations. The step size rides on the mask because every rescale adds an absolute
    /// error (~5e-5 at Δ = 2^26): applied to the sum, not to the small `(η/n)·x` of every
    /// sample, it stays that small.
    ///
    /// Both rotation sums run **before** their rescale, at scale ≈ Δ², where the rotations'
    /// noise is negligible: summing `B` slots after a rescale would add up `B` independent
    /// rounding errors (≈ `√B` times the precision of one slot).
    pub fn reduce_blocks(
        &self,
        ev: Eval<'_>,
        p: &Ciphertext,
        target: f64,
        factor: f64,
    ) -> Result<Ciphertext> {
        let r = ev.ctx.rescale(&self.sum_within_blocks(ev, p)?)?;
        let l = r.level();
        if l == 0 {
            return Err(Error::OutOfLevels {
                op: "gradient mask",
                level: 0,
            });
        }
        let mut mask = vec![0.0; self.slots()];
        for j in 0..self.blocks {
            mask[j * self.block] = factor;
        }
        let c = ev.ctx.level_modulus(l) * target / r.scale();
        let pt = ev.ctx.encode(&self.tile(&mask, ev.ctx.slots())?, c, l)?;
        let m = ev.ctx.multiply_plain(&r, &pt)?;
        ev.ctx.rescale(&self.replicate_heads(ev, &m)?)
    }

    /// `values` (one period of this layout: [`Self::slots`] values) repeated over a ring of
    /// `ring_slots` slots. A layout smaller than the ring is encoded this way, so that a
    /// rotation by fewer than its slots acts on every period cyclically, as on the layout
    /// alone, and the ciphertexts suit a sparse-slot bootstrap of that period.
    pub fn tile(&self, values: &[f64], ring_slots: usize) -> Result<Vec<f64>> {
        let p = self.slots();
        if values.len() != p || !ring_slots.is_multiple_of(p) {
            return Err(Error::Shape(format!(
                "{} values of a {p}-slot layout cannot tile {ring_slots} slots",
                values.len()
            )));
        }
        Ok(values.repeat(ring_slots / p))
    }

    /// Packs rows `x[t]` (t < B, each with ≤ k features) as slot `j·B + t`.
    pub fn pack_rows(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>> {
        if rows.len() > self.block {
            return Err(Error::TooManyValues {
                got: rows.len(),
                slots: self.block,
            });
        }
        let mut v = vec![0.0; self.slots()];
        for (t, row) in rows.iter().enumerate() {
            if row.len() > self.blocks {
                return Err(Error::Shape(format!(
                    "{} features for {} blocks",
                    row.len(),
                    self.blocks
                )));
            }
            for (j, &x) in row.iter().enumerate() {
                v[j * self.block + t] = x;
            }
        }
        Ok(v)
    }

    /// Replicates `values[t]` (t < B) into slot `t` of every block; the unused slots
    /// `t ≥ values.len()` get `pad`.
    pub fn replicate_samples(&self, values: &[f64], pad: f64) -> Result<Vec<f64>> {
        if values.len() > self.block {
            return Err(Error::TooManyValues {
                got: values.len(),
                slots: self.block,
            });
        }
        let mut v = vec![pad; self.slots()];
        for j in 0..self.blocks {
            v[j * self.block..j * self.block + values.len()].copy_from_slice(values);
        }
        Ok(v)
    }

    /// Replicates `w[j]` over block `j`.
    pub fn replicate_blocks(&self, w: &[f64]) -> Result<Vec<f64>> {
        if w.len() > self.blocks {
            return Err(Error::Shape(format!(
                "{} values for {} blocks",
                w.len(),
                self.blocks
            )));
        }
        let mut v = vec![0.0; self.slots()];
        for (j, &x) in w.iter().enumerate() {
            v[j * self.block..(j + 1) * self.block].fill(x);
        }
        Ok(v)
    }
}

/// What the server side holds: the context and the evaluation keys, no secret.
pub struct PublicEval {
    /// The CKKS context.
    pub ctx: Arc<CkksContext>,
    /// Relinearization key.
    pub relin: RelinKey,
    /// Galois keys for the layout's rotations.
    pub galois: GaloisKeys,
    /// Public encryption key (data owners encrypt with it).
    pub public: PublicKey,
}

impl PublicEval {
    /// The borrowed view the computations take.
    pub fn eval(&self) -> Eval<'_> {
        Eval {
            ctx: &self.ctx,
            relin: &self.relin,
            galois: &self.galois,
        }
    }
}

/// Borrowed evaluation material: the context, relinearization and Galois keys. Built from the
/// key holder's [`PublicEval`] or from a worker's deserialized [`PublicContext`], so both run
/// the same step code without copying keys.
#[derive(Clone, Copy)]
pub struct Eval<'a> {
    /// The CKKS context.
    pub ctx: &'a CkksContext,
    /// Relinearization key.
    pub relin: &'a RelinKey,
    /// Galois keys for the layout's rotations.
    pub galois: &'a GaloisKeys,
}

impl<'a> Eval<'a> {
    /// The view of a public context; an error if it lacks the relinearization or Galois keys.
    pub fn from_public_context(pc: &'a PublicContext<CkksContext>) -> Result<Self> {
        let missing = |what: &str| {
            Error::InvalidInput(format!(
                "the public context has no {what}; encrypted training needs it"
            ))
        };
        Ok(Self {
            ctx: &pc.context,
            relin: pc
                .relin_key
                .as_ref()
                .ok_or_else(|| missing("relinearization key"))?,
            galois: pc
                .galois_keys
                .as_ref()
                .ok_or_else(|| missing("Galois keys"))?,
        })
    }
}

/// A way to bring ciphertexts back to the top of the modulus chain.
pub trait Refresh: Sync {
    /// Returns fresh encryptions of the same values at the default scale: at the top level
    /// (key holder) or at the bootstrap's output level ([`Bootstrapper`]).
    fn refresh(&self, cts: &[Ciphertext]) -> Result<Vec<Ciphertext>>;
    /// A short description for reports (`"key holder: decrypt + re-encrypt"`).
    fn describe(&self) -> &'static str;
    /// The lowest level a ciphertext may be refreshed from (a collective refresh needs room
    /// for its masks, [`crate::mhe::min_refresh_level`]); 0 by default.
    fn min_level(&self) -> usize {
        0
    }
    /// Fresh encryptions for use at `level` and below: a refresh that can produce them that
    /// low costs fewer limbs. By default [`Self::refresh`] (the caller switches down).
    fn refresh_to(&self, cts: &[Ciphertext], level: usize) -> Result<Vec<Ciphertext>> {
        let _ = level;
        self.refresh(cts)
    }
}

/// The party that owns the secret key.
pub struct KeyHolder {
    ctx: Arc<CkksContext>,
    keys: KeySet,
}

impl KeyHolder {
    /// Generates keys for `ctx`.
    pub fn new(ctx: Arc<CkksContext>) -> Result<Self> {
        let keys = ctx.keygen()?;
        Ok(Self { ctx, keys })
    }

    /// The public evaluation material for a layout (Galois keys for its rotations).
    pub fn public_eval(&self, layout: &BlockLayout) -> Result<PublicEval> {
        self.public_eval_steps(&layout.rotation_steps())
    }

    /// The public evaluation material with Galois keys for the given rotation steps.
    pub fn public_eval_steps(&self, steps: &[i64]) -> Result<PublicEval> {
        let galois = self.ctx.gen_galois_keys(&self.keys.secret, steps, false)?;
        Ok(PublicEval {
            ctx: self.ctx.clone(),
            relin: self.keys.relin.clone(),
            galois,
            public: self.keys.public.clone(),
        })
    }

    /// [`Self::public_eval_steps`] with Galois keys for ciphertexts at `level` and below only
    /// ([`CkksContext::gen_galois_keys_below`]): the computation levels under a bootstrap's
    /// need a fraction of the chain's primes.
    pub fn public_eval_steps_below(&self, steps: &[i64], level: usize) -> Result<PublicEval> {
        let galois = self
            .ctx
            .gen_galois_keys_below(&self.keys.secret, steps, level)?;
        Ok(PublicEval {
            galois,
            ..self.public_eval_steps(&[])?
        })
    }

    /// The public encryption key (e.g. for a collective re-encryption to this holder).
    pub fn public_key(&self) -> &PublicKey {
        &self.keys.public
    }

    /// The context.
    pub fn ctx(&self) -> &Arc<CkksContext> {
        &self.ctx
    }

    /// Encrypts slot values at the top level and default scale (seeded symmetric encryption).
    pub fn encrypt(&self, values: &[f64]) -> Result<Ciphertext> {
        let pt = self
            .ctx
            .encode(values, self.ctx.default_scale(), self.ctx.max_level())?;
        self.ctx.encrypt_symmetric(&pt, &self.keys.secret)
    }

    /// Encrypts slot values at `level` (≤ the top) and the default scale: a refresh whose
    /// result is only used that low costs fewer limbs to encrypt, store and compute on.
    pub fn encrypt_at(&self, values: &[f64], level: usize) -> Result<Ciphertext> {
        let pt = self.ctx.encode(
            values,
            self.ctx.default_scale(),
            level.min(self.ctx.max_level()),
        )?;
        self.ctx.encrypt_symmetric(&pt, &self.keys.secret)
    }

    /// [`Refresh::refresh`] straight to `level`: decrypt + re-encrypt at that level.
    pub fn refresh_at(&self, cts: &[Ciphertext], level: usize) -> Result<Vec<Ciphertext>> {
        cts.par_iter()
            .map(|c| self.encrypt_at(&self.decrypt(c)?, level))
            .collect()
    }

    /// Decrypts to real slot values.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        self.ctx.decrypt_decode(ct, &self.keys.secret)
    }
}

impl Refresh for KeyHolder {
    fn refresh(&self, cts: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        cts.par_iter()
            .map(|c| self.encrypt(&self.decrypt(c)?))
            .collect()
    }

    fn describe(&self) -> &'static str {
        "key holder: decrypt + re-encrypt"
    }

    fn refresh_to(&self, cts: &[Ciphertext], level: usize) -> Result<Vec<Ciphertext>> {
        self.refresh_at(cts, level)
    }
}

impl KeyHolder {
    /// The key holder's one contribution to a bootstrapped run: public bootstrapping keys
    /// for `params` (which must be the parameters of this holder's context). After this,
    /// the returned [`Bootstrapper`] refreshes ciphertexts with no decryption.
    pub fn bootstrapper(&self, params: &BootstrapParams) -> Result<Bootstrapper> {
        let keys = BootstrapKeys::generate(&self.ctx, params, &self.keys.secret, &self.keys.relin)?;
        Ok(Bootstrapper {
            ctx: self.ctx.clone(),
            keys,
        })
    }
}

/// Refresh by bootstrapping: public material only, nobody decrypts. A bootstrapped
/// ciphertext comes back at [`BootstrapKeys::output_level`] (the levels left for computation),
/// not at the top of the chain. The training workloads' values are real, so two ciphertexts
/// share one bootstrap ([`CkksContext::bootstrap_real_pair`]) wherever both have a level
/// above 0: refreshing weights and velocity costs one bootstrap, not two.
pub struct Bootstrapper {
    ctx: Arc<CkksContext>,
    keys: BootstrapKeys,
}

impl Bootstrapper {
    /// The level refreshed ciphertexts come back at.
    pub fn output_level(&self) -> usize {
        self.keys.output_level()
    }

    /// The bootstrapping keys.
    pub fn keys(&self) -> &BootstrapKeys {
        &self.keys
    }
}

impl Refresh for Bootstrapper {
    fn refresh(&self, cts: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        // One bootstrap at a time: each already runs its rotations and NTTs in parallel, and
        // at N = 2^16 two at once would double a multi-GB peak.
        let mut out = Vec::with_capacity(cts.len());
        for pair in cts.chunks(2) {
            match pair {
                [a, b] if a.level() > 0 && b.level() > 0 => {
                    let (a, b) = self.ctx.bootstrap_real_pair(a, b, &self.keys)?;
                    out.extend([a, b]);
                }
                _ => {
                    for c in pair {
                        out.push(self.ctx.bootstrap(c, &self.keys)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn describe(&self) -> &'static str {
        "bootstrapping (public keys, no decryption)"
    }
}

/// Encrypts slot values under the public key (what a data owner without the secret does).
pub fn encrypt_public(ev: &PublicEval, values: &[f64]) -> Result<Ciphertext> {
    let pt = ev
        .ctx
        .encode(values, ev.ctx.default_scale(), ev.ctx.max_level())?;
    ev.ctx.encrypt(&pt, &ev.public)
}

/// Levels [`eval_poly`] consumes for a degree: `floor(log2 d) + 1` (0 for a constant).
pub fn poly_depth(degree: usize) -> usize {
    if degree == 0 {
        0
    } else {
        (usize::BITS - degree.leading_zeros()) as usize
    }
}

/// Evaluates `p(x) = Σ coeffs[k]·x^k` slot-wise on a ciphertext `u` that holds `x / bound`
/// (`bound` > 0: the magnitude `x` stays under, e.g. the fit interval's half-width), with the
/// minimal depth `floor(log2 d) + 1` ([`poly_depth`]): powers `u^(2^i)` by squaring, and each
/// term `(c_k·bound^k)·u^k` as the product of the powers of `k`'s binary digits, the
/// coefficient multiplied into the lowest one. The constant each coefficient is encoded at is
/// solved for so that **every term lands on the scale `target`** exactly, whatever the primes
/// it was rescaled by; the terms are then added at the lowest level. Coefficients below
/// `1e-12` of the largest are skipped (a sigmoid fit on a symmetric interval has zero even
/// terms up to rounding).
///
/// Why `x / bound` in the ciphertext's *content* (the caller divides before encrypting, or
/// folds `1/bound` into a previous product) rather than `x`: the rescale after `c_k·x` adds
/// an absolute error of a few units of the scale's last bit, and the following products
/// multiply it by the content of `x^(k−1)`. With `|u| ≤ 1` that factor is ≤ 1; with `x`
/// itself it is `|x|^(k−1)`, measured (N = 2^13, Δ = 2^26, `|x|` up to 8) as a maximum error of
/// 3e-3 for degree 3 and 6.3 for degree 7, against ≤ 4.2e-4 here (N = 2^14: ≤ 8.4e-4; degree
/// 7 on [-16, 16]: 1.7e-3). Reading a ciphertext of `x` at the scale `Δ·bound` changes only
/// metadata, not that noise.
pub fn eval_poly(
    ctx: &CkksContext,
    u: &Ciphertext,
    coeffs: &[f64],
    rk: &RelinKey,
    target: f64,
    bound: f64,
) -> Result<Ciphertext> {
    if coeffs.iter().any(|c| !c.is_finite()) || coeffs.is_empty() {
        return Err(Error::InvalidInput(
            "polynomial coefficients must be finite and non-empty".into(),
        ));
    }
    if !(bound.is_finite() && bound > 0.0) {
        return Err(Error::InvalidInput(format!(
            "eval_poly bound must be finite and > 0, got {bound}"
        )));
    }
    let coeffs: Vec<f64> = coeffs
        .iter()
        .enumerate()
        .map(|(k, c)| c * bound.powi(k as i32))
        .collect();
    let coeffs = &coeffs[..];
    let cmax = coeffs.iter().skip(1).fold(0.0f64, |m, c| m.max(c.abs()));
    let used: Vec<usize> = (1..coeffs.len())
        .filter(|&k| coeffs[k].abs() > 1e-12 * cmax && coeffs[k] != 0.0)
        .collect();
    let Some(&degree) = used.last() else {
        return Err(Error::InvalidInput(
            "eval_poly needs a non-constant polynomial".into(),
        ));
    };
    let u = if u.size() == 3 {
        ctx.relinearize(u, rk)?
    } else {
        u.clone()
    };
    if poly_depth(degree) > u.level() {
        return Err(Error::OutOfLevels {
            op: "eval_poly",
            level: u.level(),
        });
    }
    let m = (usize::BITS - 1 - degree.leading_zeros()) as usize; // highest power 2^m
    let mut pows = vec![u];
    for i in 1..=m {
        let sq = ctx.relinearize(&ctx.square(&pows[i - 1])?, rk)?;
        pows.push(ctx.rescale(&sq)?);
    }
    let terms = used
        .par_iter()
        .map(|&k| {
            let bits: Vec<usize> = (0..=m).filter(|b| k >> b & 1 == 1).collect();
            // Scale bookkeeping with a unit constant, to solve for the constant's scale.
            let lo = &pows[bits[0]];
            let mut lvl = lo.level();
            let mut sc = lo.scale() / ctx.level_modulus(lvl);
            lvl -= 1;
            for &b in &bits[1..] {
                let p = &pows[b];
                let l = lvl.min(p.level());
                sc = sc * p.scale() / ctx.level_modulus(l);
                lvl = l - 1;
            }
            let c = target / sc;
            let mut t = ctx.rescale(&ctx.multiply_scalar(lo, coeffs[k], c)?)?;
            for &b in &bits[1..] {
                t = ctx.multiply_relinearize_rescale(&t, &pows[b], rk)?;
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    let low = terms.iter().map(|t| t.level()).min().unwrap_or(0);
    let mut acc = ctx.mod_switch_to(&terms[0], low)?;
    for t in &terms[1..] {
        acc = ctx.add(&acc, &ctx.mod_switch_to(t, low)?)?;
    }
    ctx.add_scalar(&acc, coeffs[0])
}

/// Counts of a run, for reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepStats {
    /// Global step (1-based).
    pub step: usize,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Samples in the step.
    pub samples: usize,
    /// Mean loss of the batch (key-holder monitor; NaN if not monitored).
    pub loss: f64,
    /// Accuracy on the batch (key-holder monitor; NaN if not monitored).
    pub accuracy: f64,
    /// Level of the weights before the step.
    pub level_before: usize,
    /// Level of the weights after the step.
    pub level_after: usize,
    /// True when the key holder refreshed the weights before this step.
    pub refreshed: bool,
    /// Seconds of encrypted computation in the step (without the monitor).
    pub seconds: f64,
    /// Seconds of the slowest shard's computation where it ran (a worker process or a rayon
    /// task), without transfers: `seconds` minus this is the aggregation and update, plus
    /// the transport for worker processes.
    pub shard_seconds: f64,
}

/// Logistic loss `−y log σ(z) − (1−y) log(1−σ(z))`, computed stably.
pub fn bce_logit(z: f64, y: f64) -> f64 {
    // log(1 + e^z) − y z
    let softplus = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    softplus - y * z
}
