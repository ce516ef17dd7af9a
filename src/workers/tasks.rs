//! The encrypted computations a worker runs on its shard. Each is a plain function of the
//! public context and the shard's ciphertexts, so the same code runs in a worker process and
//! in-process on a rayon thread.
//!
//! Data layout ([`RowLayout`]): every ciphertext packs `slots / block` rows, row `r` in slots
//! `r·block .. r·block + features` (zeros up to the block's end, and in unused rows). Work is
//! therefore proportional to the number of rows, and shards of rows split it evenly.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::rlwe::{Ciphertext, GaloisKeys, RelinKey};
use crate::serialize::PublicContext;
use crate::train::logistic::{self, BatchCt};
use crate::train::{BlockLayout, Eval};

/// Rows packed into slots, `block` slots per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowLayout {
    /// Slots per row: the feature count rounded up to a power of two.
    pub block: usize,
    /// Slots per ciphertext.
    pub slots: usize,
}

impl RowLayout {
    /// The layout for rows of `features` values in ciphertexts of `slots` slots.
    pub fn new(features: usize, slots: usize) -> Result<Self> {
        let block = features.max(1).next_power_of_two();
        if block > slots {
            return Err(Error::Shape(format!(
                "{features} features do not fit {slots} slots"
            )));
        }
        Ok(Self { block, slots })
    }

    /// Rows per ciphertext.
    pub fn rows_per_ciphertext(&self) -> usize {
        self.slots / self.block
    }

    /// Slot vectors, one per ciphertext, holding `rows` (each at most `block` long).
    pub fn pack(&self, rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
        rows.chunks(self.rows_per_ciphertext())
            .map(|chunk| {
                let mut v = vec![0.0; chunk.len() * self.block];
                for (r, row) in chunk.iter().enumerate() {
                    v[r * self.block..r * self.block + row.len()].copy_from_slice(row);
                }
                v
            })
            .collect()
    }

    /// One value per row, repeated over the row's whole block (labels: they meet every
    /// feature of their row in `x · (σ̃(z) − y)`).
    pub fn pack_replicated(&self, values: &[f64]) -> Vec<Vec<f64>> {
        values
            .chunks(self.rows_per_ciphertext())
            .map(|chunk| {
                chunk
                    .iter()
                    .flat_map(|&y| std::iter::repeat_n(y, self.block))
                    .collect()
            })
            .collect()
    }

    /// Steps summing the `block` slots of each row into its first slot (1, 2, …, block/2).
    fn within_block(&self) -> Vec<i64> {
        CkksContext::power_of_two_steps(self.block)
    }

    /// Steps adding all rows' blocks together (block, 2·block, …, slots/2).
    fn across_blocks(&self) -> Vec<i64> {
        let b = self.block as i64;
        CkksContext::power_of_two_steps(self.rows_per_ciphertext())
            .into_iter()
            .map(|s| s * b)
            .collect()
    }
}

/// Work on one shard of row-packed ciphertexts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// Inputs: row-packed feature ciphertexts. Output (after [`Task::finish`]): one ciphertext
    /// whose slots `0..block` hold the column sums over every row of every input.
    ColumnSums {
        /// The inputs' layout.
        layout: RowLayout,
    },
    /// The logistic-regression gradient with a polynomial sigmoid `σ̃`. Inputs: pairs
    /// (row-packed features — include a column of ones for the bias —, labels packed with
    /// [`RowLayout::pack_replicated`]). Output (after [`Task::finish`]): one ciphertext whose slot `j < block` holds
    /// `Σ_i x_ij·(σ̃(w·x_i) − y_i)` over every row of every shard (divide by the row count for the mean).
    LogisticGradient {
        /// The inputs' layout.
        layout: RowLayout,
        /// Current weights, one per feature column (plaintext: the model is public here).
        weights: Vec<f64>,
        /// Coefficients of `σ̃`, constant term first.
        sigmoid: Vec<f64>,
    },
    /// One shard of an encrypted logistic-regression training step with **encrypted** weights
    /// ([`logistic::shard_gradient`], block layout of [`crate::train`]). Inputs: the weights,
    /// then `(x, y)` for each batch ciphertext of the shard ([`BatchCt`]). Outputs: the
    /// shard's partial gradient (size 2, not rescaled), then the encrypted logits (`z/bound`)
    /// of each batch ciphertext.
    LogisticStep {
        /// The block layout of the inputs.
        layout: BlockLayout,
        /// Coefficients of `σ̃`, constant term first.
        sigmoid: Vec<f64>,
        /// Half-width of the sigmoid's fit interval (the features are divided by it).
        bound: f64,
    },
}

impl Task {
    /// Rotation steps the task needs Galois keys for.
    /// (The workers' steps; [`Self::finish_steps`] are the aggregator's.)
    pub fn rotation_steps(&self) -> Vec<i64> {
        match self {
            Task::ColumnSums { .. } => Vec::new(),
            Task::LogisticGradient { layout, .. } => {
                let within = layout.within_block();
                let mut steps = within.clone();
                steps.extend(within.iter().map(|s| -s));
                steps
            }
            Task::LogisticStep { layout, .. } => layout.rotation_steps(),
        }
    }

    /// Levels the task consumes from fresh inputs (the result needs one more level of
    /// headroom for the sums to fit).
    pub fn depth(&self) -> usize {
        match self {
            Task::ColumnSums { .. } => 0,
            // w ⊙ x, the block mask, σ̃, and x ⊙ (σ̃ − y).
            Task::LogisticGradient { sigmoid, .. } => {
                3 + CkksContext::polynomial_depth(sigmoid.len().saturating_sub(1))
            }
            // The whole step: the shard's part and the reduction after aggregation.
            Task::LogisticStep { sigmoid, .. } => {
                logistic::levels_per_step(sigmoid.len().saturating_sub(1))
            }
        }
    }

    /// Rotation steps [`Self::finish`] needs (the aggregator's Galois keys).
    pub fn finish_steps(&self) -> Vec<i64> {
        match self {
            Task::ColumnSums { layout } | Task::LogisticGradient { layout, .. } => {
                layout.across_blocks()
            }
            Task::LogisticStep { .. } => Vec::new(),
        }
    }

    /// Completes the sum of shard results (see [`compute`]): adds the row blocks together, so
    /// slots `0..block` hold the result over every row. Needs only public Galois keys.
    pub fn finish(
        &self,
        ctx: &CkksContext,
        gk: &GaloisKeys,
        total: &Ciphertext,
    ) -> Result<Ciphertext> {
        match self {
            Task::ColumnSums { layout } | Task::LogisticGradient { layout, .. } => {
                check_layout(ctx, layout)?;
                // A rotation's cost grows with the limbs it carries, and at a scale near q_1
                // level 1 still leaves about q_0 / 2 (≥ 2^28) of room for the sums: drop the
                // rest first.
                let total = ctx.mod_switch_to(total, total.level().min(1))?;
                ctx.rotate_and_add(&total, &layout.across_blocks(), gk)
            }
            // The training step reduces and updates itself (`logistic::train_encrypted_with`).
            Task::LogisticStep { .. } => Ok(total.clone()),
        }
    }
}

fn keys(pc: &PublicContext<CkksContext>) -> Result<(&RelinKey, &GaloisKeys)> {
    let gk = pc.galois_keys.as_ref().ok_or_else(|| {
        Error::InvalidInput(
            "the public context has no Galois keys; the gradient's rotations need them".into(),
        )
    })?;
    let rk = pc.relin_key.as_ref().ok_or_else(|| {
        Error::InvalidInput("the public context has no relinearization key".into())
    })?;
    Ok((rk, gk))
}

fn sum_all(ctx: &CkksContext, cts: Vec<Ciphertext>) -> Result<Ciphertext> {
    let mut it = cts.into_iter();
    let first = it
        .next()
        .ok_or_else(|| Error::InvalidInput("empty shard".into()))?;
    it.try_fold(first, |acc, c| ctx.add(&acc, &c))
}

/// Runs `task` on one shard and returns its partial result *before* the sum over row blocks
/// ([`Task::finish`]): that sum is a chain of rotations, and rotations commute with addition,
/// so the aggregator pays it once per step on the total instead of every shard paying it on
/// its part (it was the serial tail that capped the speed-up with K workers).
pub fn compute(
    pc: &PublicContext<CkksContext>,
    task: &Task,
    inputs: &[Ciphertext],
) -> Result<Vec<Ciphertext>> {
    let ctx = &pc.context;
    match task {
        Task::ColumnSums { layout } => {
            check_layout(ctx, layout)?;
            Ok(vec![sum_all(ctx, inputs.to_vec())?])
        }
        Task::LogisticGradient {
            layout,
            weights,
            sigmoid,
        } => {
            check_layout(ctx, layout)?;
            let (rk, gk) = keys(pc)?;
            if !inputs.len().is_multiple_of(2) || weights.len() > layout.block {
                return Err(Error::Shape(format!(
                    "logistic gradient: {} inputs (need feature/label pairs) and {} weights for blocks of {}",
                    inputs.len(),
                    weights.len(),
                    layout.block
                )));
            }
            let every_row = |row: Vec<f64>| {
                layout
                    .pack(&vec![row; layout.rows_per_ciphertext()])
                    .swap_remove(0)
            };
            let w_slots = every_row(weights.clone());
            let mut mask_row = vec![0.0; layout.block];
            mask_row[0] = 1.0;
            let mask_slots = every_row(mask_row);
            let within = layout.within_block();
            let back: Vec<i64> = within.iter().map(|s| -s).collect();
            let grads = inputs
                .par_chunks(2)
                .map(|pair| {
                    let (x, y) = (&pair[0], &pair[1]);
                    let l = x.level();
                    let w = ctx.encode(&w_slots, ctx.level_modulus(l), l)?;
                    let wx = ctx.rescale(&ctx.multiply_plain(x, &w)?)?;
                    // z in the first slot of each row's block, masked, then copied back over
                    // the block.
                    let z = ctx.rotate_and_add(&wx, &within, gk)?;
                    let lz = z.level();
                    let m = ctx.encode(&mask_slots, ctx.level_modulus(lz), lz)?;
                    let z = ctx.rescale(&ctx.multiply_plain(&z, &m)?)?;
                    let z = ctx.rotate_and_add(&z, &back, gk)?;
                    let s = ctx.evaluate_polynomial(&z, sigmoid, rk)?;
                    let y = ctx.match_scale(y, s.level(), s.scale())?;
                    let err = ctx.sub(&s, &y)?;
                    ctx.rescale(&ctx.relinearize(&ctx.multiply(x, &err)?, rk)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(vec![sum_all(ctx, grads)?])
        }
        Task::LogisticStep {
            layout,
            sigmoid,
            bound,
        } => logistic_step(pc, layout, sigmoid, *bound, inputs),
    }
}

fn logistic_step(
    pc: &PublicContext<CkksContext>,
    layout: &BlockLayout,
    sigmoid: &[f64],
    bound: f64,
    inputs: &[Ciphertext],
) -> Result<Vec<Ciphertext>> {
    if !pc.context.slots().is_multiple_of(layout.slots()) {
        return Err(Error::Shape(format!(
            "block layout of {} slots does not tile a context of {}",
            layout.slots(),
            pc.context.slots()
        )));
    }
    let (w, data) = inputs
        .split_first()
        .filter(|(_, d)| !d.is_empty() && d.len() % 2 == 0)
        .ok_or_else(|| {
            Error::Shape(format!(
                "logistic step: {} inputs; need the weights and (x, y) pairs",
                inputs.len()
            ))
        })?;
    let shard: Vec<BatchCt> = data
        .chunks(2)
        .map(|c| BatchCt {
            x: c[0].clone(),
            y: c[1].clone(),
            count: 0,
        })
        .collect();
    let out = logistic::shard_gradient(
        Eval::from_public_context(pc)?,
        layout,
        sigmoid,
        bound,
        w,
        &shard,
    )?;
    let mut v = vec![out.partial];
    v.extend(out.logits);
    Ok(v)
}

fn check_layout(ctx: &CkksContext, layout: &RowLayout) -> Result<()> {
    if layout.slots != ctx.slots() || !layout.block.is_power_of_two() || layout.block > layout.slots
    {
        return Err(Error::Shape(format!(
            "layout of {} slots in blocks of {} does not match a context of {} slots",
            layout.slots,
            layout.block,
            ctx.slots()
        )));
    }
    Ok(())
}

/// The same task on plaintext rows (`rows[i]` = features of row `i`, `labels[i]`), the
/// reference the decrypted result must match: column sums, or the gradient. Empty for
/// [`Task::LogisticStep`], whose weights exist only encrypted: its reference is the whole
/// plaintext training run, [`logistic::train_plain`].
pub fn compute_plain(task: &Task, rows: &[Vec<f64>], labels: &[f64]) -> Vec<f64> {
    match task {
        Task::ColumnSums { layout } => {
            let mut s = vec![0.0; layout.block];
            for row in rows {
                for (a, b) in s.iter_mut().zip(row) {
                    *a += b;
                }
            }
            s
        }
        Task::LogisticGradient {
            layout,
            weights,
            sigmoid,
        } => {
            let poly = |z: f64| sigmoid.iter().rev().fold(0.0, |acc, &c| acc * z + c);
            let mut g = vec![0.0; layout.block];
            for (row, &y) in rows.iter().zip(labels) {
                let z: f64 = row.iter().zip(weights).map(|(x, w)| x * w).sum();
                let e = poly(z) - y;
                for (a, x) in g.iter_mut().zip(row) {
                    *a += x * e;
                }
            }
            g
        }
        Task::LogisticStep { .. } => Vec::new(),
    }
}
