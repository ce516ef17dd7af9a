//! Encrypted (CKKS, batched layout) layers and LeNet-1 against the plaintext model.

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::lower::{forward_sequential, Plan};
use hetensor::nn::{
    mnist, weights, AvgPool2d, Conv2d, Flatten, Linear, PolyActivation, Sequential, Square,
};
use hetensor::tensor::{CipherTensor, EncryptionKey};
use hetensor::Error;
use ndarray::{s, Array1, Array2, Array4, ArrayD, Axis, IxDyn};
use std::sync::OnceLock;

fn ctx() -> &'static (CkksContext, hetensor::ckks::KeySet) {
    static C: OnceLock<(CkksContext, hetensor::ckks::KeySet)> = OnceLock::new();
    C.get_or_init(|| {
        let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [5; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        (ctx, keys)
    })
}

fn pseudo(seed: u64, len: usize, amp: f64) -> Vec<f64> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn run(model: &Sequential, x: &ArrayD<f64>) -> (ArrayD<f64>, ArrayD<f64>) {
    let (ctx, keys) = ctx();
    let plain = model.forward(x).unwrap();
    let bound = 2.0 * plain.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let ct = CipherTensor::encrypt_batched(ctx, EncryptionKey::Secret(&keys.secret), x).unwrap();
    let out = forward_sequential(ctx, model, &ct, &keys.relin, bound).unwrap();
    (out.decrypt(ctx, &keys.secret).unwrap(), plain)
}

/// Levels the plan of `model` needs on `[batch, ...shape]` inputs (`shape` = `dims[1..]`).
fn depth(model: &Sequential, dims: &[usize]) -> usize {
    Plan::from_sequential(model, &dims[1..]).unwrap().depth()
}

fn max_err(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

fn small_conv(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
) -> Conv2d {
    let w = Array4::from_shape_vec(
        (out_ch, in_ch, k, k),
        pseudo(seed, out_ch * in_ch * k * k, 0.5),
    )
    .unwrap();
    let b = Array1::from_vec(pseudo(seed + 1, out_ch, 0.3));
    Conv2d::from_weights(w, b, stride, pad).unwrap()
}

#[test]
fn each_layer_matches_plaintext() {
    let x = ArrayD::from_shape_vec(IxDyn(&[16, 2, 8, 8]), pseudo(1, 16 * 128, 1.0)).unwrap();
    // Fresh symmetric noise is ~2^-15 per slot at Δ = 2^25; a conv over 18 inputs with |w| ≤ 0.5
    // and one rescale stays below 2^-10.
    let conv = Sequential::new()
        .with("c", small_conv(2, 3, 3, 1, 1, 7))
        .unwrap();
    let (e, p) = run(&conv, &x);
    assert!(max_err(&e, &p) < 1e-3, "conv {}", max_err(&e, &p));
    let strided = Sequential::new()
        .with("c", small_conv(2, 2, 3, 2, 0, 9))
        .unwrap();
    let (e, p) = run(&strided, &x);
    assert!(max_err(&e, &p) < 1e-3, "strided conv {}", max_err(&e, &p));
    // Square, then pool (trailing pool costs one multiplication by 1/4).
    let sq = Sequential::new()
        .with("s", Square)
        .unwrap()
        .with("p", AvgPool2d::new(2).unwrap())
        .unwrap();
    let (e, p) = run(&sq, &x);
    assert_eq!(e.shape(), &[16, 2, 4, 4]);
    // Size-3 rescale noise is ~2^-6 (rounding times s²); pooling averages it.
    assert!(
        max_err(&e, &p) < 1.0 / 16.0,
        "square+pool {}",
        max_err(&e, &p)
    );
    let lin = Sequential::new()
        .with("f", Flatten)
        .unwrap()
        .with(
            "l",
            Linear::from_weights(
                Array2::from_shape_vec((5, 128), pseudo(3, 640, 0.2)).unwrap(),
                Array1::from_vec(pseudo(4, 5, 1.0)),
            )
            .unwrap(),
        )
        .unwrap();
    let (e, p) = run(&lin, &x);
    assert_eq!(e.shape(), &[16, 5]);
    assert!(max_err(&e, &p) < 1e-2, "linear {}", max_err(&e, &p));
}

#[test]
fn polynomial_activations_match_plaintext() {
    // conv → pool → sigmoid (degree 3, least squares on [-4, 4]) → pool → dense: the pooling
    // factor before the polynomial is folded into its coefficients.
    let x = ArrayD::from_shape_vec(IxDyn(&[8, 1, 8, 8]), pseudo(21, 8 * 64, 1.0)).unwrap();
    let model = Sequential::new()
        .with("c", small_conv(1, 2, 3, 1, 0, 13))
        .unwrap()
        .with("p1", AvgPool2d::new(2).unwrap())
        .unwrap()
        .with("s", PolyActivation::sigmoid(3, (-4.0, 4.0)).unwrap())
        .unwrap()
        .with("f", Flatten)
        .unwrap()
        .with(
            "l",
            Linear::from_weights(
                Array2::from_shape_vec((3, 18), pseudo(5, 54, 0.5)).unwrap(),
                Array1::from_vec(pseudo(6, 3, 0.5)),
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(depth(&model, x.shape()), 1 + 3 + 1);
    let (e, p) = run(&model, &x);
    assert!(max_err(&e, &p) < 1e-2, "poly model {}", max_err(&e, &p));
    // Degree 5 and a plain polynomial straight on the input (no fold), two levels of headroom.
    let model = Sequential::new()
        .with(
            "q",
            PolyActivation::new(vec![0.1, -0.5, 0.25, 0.0, 0.0, 0.05]).unwrap(),
        )
        .unwrap();
    let (e, p) = run(&model, &x);
    assert!(max_err(&e, &p) < 1e-2, "degree 5 {}", max_err(&e, &p));
}

#[test]
fn lenet1_agrees_with_plaintext_on_mnist() {
    let model = weights::pretrained_lenet1().unwrap();
    let test = mnist::load_test(mnist::DEFAULT_DIR).unwrap();
    let n = 48;
    let x = test
        .inputs
        .slice(s![0..n, .., .., ..])
        .to_owned()
        .into_dyn();
    let (e, p) = run(&model, &x);
    let argmax = |a: &ArrayD<f64>| -> Vec<usize> {
        a.axis_iter(Axis(0))
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            })
            .collect()
    };
    let (ae, ap) = (argmax(&e), argmax(&p));
    let agree = ae.iter().zip(&ap).filter(|(a, b)| a == b).count();
    let correct = ae
        .iter()
        .zip(&test.labels[..n])
        .filter(|(a, b)| a == b)
        .count();
    let err = max_err(&e, &p);
    assert_eq!(
        agree, n,
        "argmax agreement {agree}/{n}, max logit error {err}"
    );
    assert!(correct >= n - 2, "encrypted accuracy {correct}/{n}");
    // Logits reach ~23; 5 levels at Δ = 2^25, each product relinearized before its rescale,
    // keep them within ~3e-3 (0.4 when 3-polynomial products were rescaled).
    assert!(err < 0.05, "max logit error {err}");
}

#[test]
fn models_that_do_not_fit_are_rejected() {
    let (ctx, keys) = ctx();
    // Too deep: 7 levels on a 5-level chain.
    let mut deep = Sequential::new();
    for i in 0..3 {
        deep.push(format!("l{i}"), Linear::new(4, 4).unwrap())
            .unwrap();
        deep.push(format!("s{i}"), Square).unwrap();
    }
    deep.push("out", Linear::new(4, 2).unwrap()).unwrap();
    assert_eq!(depth(&deep, &[1, 4]), 7);
    assert!(matches!(
        Plan::from_sequential(&deep, &[4])
            .unwrap()
            .check_fits(ctx, 10),
        Err(Error::InvalidParameters(_))
    ));
    // Too many samples for the slots.
    let small = Sequential::new()
        .with("l", Linear::new(4, 2).unwrap())
        .unwrap();
    assert!(matches!(
        Plan::from_sequential(&small, &[4])
            .unwrap()
            .check_fits(ctx, ctx.slots() + 1),
        Err(Error::TooManyValues { .. })
    ));
    // A degree-7 activation costs 4 levels: with two affine layers it needs 6 > 5.
    let poly = Sequential::new()
        .with("l1", Linear::new(4, 4).unwrap())
        .unwrap()
        .with("p", PolyActivation::sigmoid(7, (-8.0, 8.0)).unwrap())
        .unwrap()
        .with("l2", Linear::new(4, 2).unwrap())
        .unwrap();
    assert_eq!(depth(&poly, &[1, 4]), 6);
    assert!(matches!(
        Plan::from_sequential(&poly, &[4])
            .unwrap()
            .check_fits(ctx, 10),
        Err(Error::InvalidParameters(_))
    ));
    // Input shape that does not match the layer.
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.0; 6]).unwrap();
    let ct = CipherTensor::encrypt_batched(ctx, EncryptionKey::Public(&keys.public), &x).unwrap();
    assert!(matches!(
        forward_sequential(ctx, &small, &ct, &keys.relin, 10.0),
        Err(Error::Shape(_))
    ));
    // A batch larger than the slots.
    let big =
        ArrayD::from_shape_vec(IxDyn(&[ctx.slots() + 1, 1]), vec![0.0; ctx.slots() + 1]).unwrap();
    assert!(matches!(
        CipherTensor::encrypt_batched(ctx, EncryptionKey::Secret(&keys.secret), &big),
        Err(Error::TooManyValues { .. })
    ));
    // An empty batch is a shape error, not "too many values".
    let empty = ArrayD::from_shape_vec(IxDyn(&[0, 3]), vec![]).unwrap();
    assert!(matches!(
        CipherTensor::encrypt_batched(ctx, EncryptionKey::Secret(&keys.secret), &empty),
        Err(Error::InputShape { ref got, .. }) if got == &[0, 3]
    ));
}
