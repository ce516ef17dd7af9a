//! CKKS parameters chosen from a plan and a plaintext calibration set.

use serde::Serialize;

use super::Plan;
use crate::ckks::CkksParams;
use crate::graph::Graph;
use crate::nn::Tensor;
use crate::{Error, Result};

/// The smallest scale considered: below it the logits of the test models lose agreement.
const MIN_SCALE_BITS: u32 = 25;
/// The largest with one prime per level: composite levels (2^30 and up) double the limbs, and
/// so the time, for precision the test models do not need (`hetensor mnist --precision high`
/// shows that trade).
const MAX_SCALE_BITS: u32 = 29;

/// What [`choose_ckks_params`] saw on the calibration set and what it chose.
#[derive(Clone, Debug, Serialize)]
pub struct ParamChoice {
    /// Levels the plan consumes (= the chain's depth).
    pub depth: usize,
    /// log2 of the scale Δ.
    pub scale_bits: u32,
    /// Bits of the base modulus (what level 0 can hold: about 2^(base − scale − 1)).
    pub base_bits: u32,
    /// log2 N.
    pub log_n: u32,
    /// Slots per ciphertext (samples per batch).
    pub slots: usize,
    /// Twice the largest |output| on the calibration set.
    pub output_bound: f64,
    /// Largest |value| on the calibration set among the values at the last level.
    pub bottom_max: f64,
    /// Calibration samples.
    pub calibration_samples: usize,
    /// The parameters in words (ring, chain, key switching, security bound).
    pub description: String,
}

/// Chooses 128-bit CKKS parameters for `plan` (planned from `graph`): the plan's depth; the
/// smallest ring that holds it at scale 2^25, then the largest scale (up to 2^29) that ring
/// still holds; a base modulus large enough for the values that end at the last level
/// (measured on `calibration`, `[n, ...input shape]`, with a factor 2 of headroom) unless the
/// output's dense map lowers its scale to hold them.
pub fn choose_ckks_params(
    plan: &Plan,
    graph: &Graph,
    calibration: &Tensor,
) -> Result<(CkksParams, ParamChoice)> {
    if calibration.shape().first().copied().unwrap_or(0) == 0 {
        return Err(Error::InvalidInput(
            "the calibration set for the parameter choice is empty".into(),
        ));
    }
    // A NaN would vanish from the maxima below (f64::max skips it) and leave parameters
    // measured on the other values: name the sample instead.
    if let Some((i, v)) = crate::data::first_non_finite_sample(calibration) {
        return Err(Error::InvalidInput(format!(
            "calibration sample {i} holds a non-finite value ({v})"
        )));
    }
    let depth = plan.depth().max(1);
    // Every value at the last level, and the output, on the calibration set.
    let mut probe = graph.clone();
    let bottom = plan.bottom_values();
    for &v in &bottom {
        probe.add_output(v)?;
    }
    let outs = probe.run(std::slice::from_ref(calibration))?;
    // NaN-propagating: a non-finite value anywhere makes the maximum non-finite (refused below).
    let max_abs = |t: &Tensor| {
        t.iter().fold(
            0.0f64,
            |m, v| {
                if v.is_nan() {
                    f64::NAN
                } else {
                    m.max(v.abs())
                }
            },
        )
    };
    let output_max = max_abs(&outs[0]);
    let skip_output = plan.output_scale_adjustable();
    let bottom_max = bottom
        .iter()
        .zip(&outs[1..])
        .filter(|(v, _)| !(skip_output && graph.outputs().contains(v)))
        .map(|(_, t)| max_abs(t))
        .fold(0.0f64, f64::max);
    if !output_max.is_finite() || !bottom_max.is_finite() {
        return Err(Error::Model(
            "the model's outputs on the calibration set are not finite".into(),
        ));
    }
    let headroom = |scale: u32| {
        // 2·max below Q_0 / (2Δ), and at least 5 bits.
        let need = (4.0 * bottom_max.max(1.0)).log2().ceil() as u32;
        scale + need.max(5)
    };
    let build = |scale: u32, log_n: Option<u32>| {
        let mut b = CkksParams::builder()
            .depth(depth)
            .scale_bits(scale)
            .base_bits(headroom(scale));
        if let Some(l) = log_n {
            b = b.log_n(l);
        }
        b.build()
    };
    let smallest = build(MIN_SCALE_BITS, None)?;
    let log_n = smallest.n().trailing_zeros();
    let (params, scale_bits) = (MIN_SCALE_BITS + 1..=MAX_SCALE_BITS)
        .rev()
        .find_map(|s| build(s, Some(log_n)).ok().map(|p| (p, s)))
        .unwrap_or((smallest, MIN_SCALE_BITS));
    let choice = ParamChoice {
        depth,
        scale_bits,
        base_bits: headroom(scale_bits),
        log_n,
        slots: params.n() / 2,
        output_bound: 2.0 * output_max,
        bottom_max,
        calibration_samples: calibration.shape()[0],
        description: params.to_string(),
    };
    Ok((params, choice))
}
