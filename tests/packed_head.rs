//! The packed transfer head (`hetensor::train::packed_head`): trained on encrypted data with
//! refreshes by sparse-slot bootstrapping only, against the same steps in plaintext.
//! Runs at the insecure test ring N = 2^13 (the same code paths as the 128-bit N = 2^16).

use std::sync::Arc;

use hetensor::ckks::bootstrap::BootstrapParams;
use hetensor::ckks::CkksContext;
use hetensor::nn::TrainConfig;
use hetensor::train::packed_head::{self as ph, PackedConfig, PackedLayout};
use hetensor::train::transfer as tr;
use hetensor::train::KeyHolder;
use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Three Gaussian clusters in `d` dimensions.
fn clusters(n: usize, d: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let centers: Vec<Vec<f64>> = (0..3)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        centers[labels[i]][j] + 0.5 * rng.random_range(-1.0..1.0)
    });
    (x, labels)
}

#[test]
fn packed_head_trained_through_bootstraps_matches_plaintext() -> hetensor::Result<()> {
    let (n, d, classes, batch, epochs) = (700, 10, 3, 250, 2);
    let base = BootstrapParams::insecure_test_ring(13, 8)?;
    let ctx = Arc::new(CkksContext::new(base.ckks().clone())?);
    // 10 features + bias + 3 labels = 14 coordinates in 2 chunks of 8; 512 samples per
    // ciphertext, so the 700 samples take 2 groups and batches straddle them.
    let layout = PackedLayout::new(ctx.slots(), 8, d, classes)?;
    assert_eq!((layout.chunks, layout.samples_per_ct), (2, 512));
    let holder = KeyHolder::new(ctx.clone())?;
    let boot = holder.bootstrapper(&ph::bootstrap_params(base, &layout)?)?;
    let ev =
        holder.public_eval_steps_below(&layout.rotation_steps(), ph::state_level(boot.keys()))?;

    let (x, labels) = clusters(n, d, 3);
    let order = ph::sample_order(n, 5);
    let x = x.select(Axis(0), &order);
    let labels: Vec<usize> = order.iter().map(|&i| labels[i]).collect();
    let level = ph::state_level(boot.keys());
    let set = ph::encrypt_packed(&ev, &layout, &x, &labels, level)?;
    let init = ph::encrypt_head(
        &ev,
        &layout,
        &Array2::zeros((classes, d)),
        &Array1::zeros(classes),
        level,
    )?;
    let cfg = PackedConfig {
        epochs,
        batch,
        lr: 0.2,
        momentum: 0.9,
        progress: Default::default(),
    };
    let (head, report) = ph::train_packed(&ev, boot.keys(), &set, init, &cfg)?;
    // 6 steps of 3 levels from level 7: a refresh before steps 3 and 5.
    assert_eq!(report.steps.len(), 6);
    assert_eq!(report.refreshes, 2);
    assert_eq!(report.decryptions, 0);
    assert!(report.steps[2].refreshed && report.steps[4].refreshed && !report.steps[3].refreshed);
    let (w, b) = ph::decrypt_head(&holder, &layout, &head)?;

    let mut plain = tr::head(d, classes)?;
    let batches: Vec<Vec<usize>> = (0..epochs)
        .flat_map(|_| ph::epoch_ranges(n, batch).into_iter().map(|r| r.collect()))
        .collect();
    let tcfg = TrainConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        ..TrainConfig::default()
    };
    tr::train_head_plain_batches(&mut plain, &x, &labels, &batches, &tcfg)?;
    let (wp, bp) = tr::head_weights(&plain)?;
    let wmax = wp
        .iter()
        .chain(bp.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = (&w - &wp)
        .iter()
        .chain((&b - &bp).iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!("max |w_enc − w_plain| = {diff:.2e} (max |w| = {wmax:.3})");
    assert!(wmax > 0.05, "the plaintext head barely moved: {wmax}");
    assert!(
        diff < 1e-3 * wmax.max(1.0),
        "encrypted head off by {diff:.2e}"
    );
    Ok(())
}

#[test]
fn packed_layout_rejects_what_it_cannot_hold() {
    assert!(PackedLayout::new(4096, 6, 10, 3).is_err());
    assert!(PackedLayout::new(4096, 8, 0, 3).is_err());
    assert!(PackedLayout::new(4096, 8, 10, 1).is_err());
    let l = PackedLayout::new(1 << 15, 64, 192, 5).unwrap();
    // The transfer workload: 198 coordinates in 4 chunks, 40 state chunks in one 4096-periodic
    // bootstrap.
    assert_eq!((l.chunks, l.samples_per_ct), (4, 512));
    assert_eq!((l.refresh_period(), l.bootstraps_per_refresh()), (4096, 1));
}
