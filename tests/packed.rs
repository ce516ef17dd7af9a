//! The packed back end of the lowering (one sample, rotations) against the plaintext graph
//! interpreter and the plaintext LeNet-1.

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::graph::{Graph, Op};
use hetensor::lower::{choose_ckks_params, packed_rotation_steps, CkksPacked, Plan};
use hetensor::nn::{mnist, weights};
use hetensor::tensor::{CipherTensor, EncryptionKey, Layout};
use hetensor::{onnx, Error};
use ndarray::{s, ArrayD, IxDyn};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx");

fn inputs(g: &Graph, n: usize, seed: u64) -> ArrayD<f64> {
    // Values in [0, 1) from a multiplicative hash of the index (no generator needed).
    let mut shape = vec![n];
    shape.extend(g.shape(g.inputs()[0]));
    let len = shape.iter().product::<usize>() as u64;
    let v = (0..len)
        .map(|i| {
            ((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed) >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap()
}

/// Max |encrypted − interpreter| over `samples` one-sample runs of `g` in the packed layout
/// (parameters chosen on 32 other inputs), and the largest |output|.
fn packed_error(g: &Graph, samples: usize) -> (f64, f64, usize) {
    let plan = Plan::new(g).unwrap();
    let (params, choice) = choose_ckks_params(&plan, g, &inputs(g, 32, 1)).unwrap();
    let ctx = CkksContext::with_seed(params, [7; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let steps = packed_rotation_steps(&plan, ctx.slots()).unwrap();
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
    let run = CkksPacked::new(&plan, &ctx, &keys.relin, &gk)
        .unwrap()
        .with_output_bound(choice.output_bound);
    let (mut err, mut span) = (0.0f64, 0.0f64);
    for i in 0..samples {
        let x = inputs(g, 1, 10 + i as u64);
        let ct =
            CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
        assert_eq!(ct.layout(), Layout::Packed);
        let out = run.forward(&ct).unwrap();
        assert_eq!(out.shape(), plan.output_shape());
        let got = out.decrypt(&ctx, &keys.secret).unwrap();
        let want = g.run(&[x]).unwrap().remove(0);
        assert_eq!(got.shape(), want.shape());
        err = (&got - &want).iter().fold(err, |m, v| m.max(v.abs()));
        span = want.iter().fold(span, |m, v| m.max(v.abs()));
    }
    (err, span, steps.len())
}

fn check(name: &str, samples: usize) {
    let g = onnx::load(format!("{DIR}/{name}.onnx")).unwrap();
    let (err, span, keys) = packed_error(&g, samples);
    println!("{name}: packed max error {err:.2e}, outputs up to {span:.2}, {keys} Galois keys");
    // Rotations add key-switching noise: measured 1.2e-4 (lenet1_square) .. 1.2e-3
    // (lenet1_quadratic) on outputs up to 0.2 .. 0.6.
    assert!(err < 4e-3 * span.max(1.0), "{name}: error {err}");
}

#[test]
fn packed_lenet1_square_matches_interpreter() {
    check("lenet1_square", 2);
}

#[test]
fn packed_lenet1_quadratic_matches_interpreter() {
    // The polynomial's linear and constant terms: per-ciphertext scalars.
    check("lenet1_quadratic", 1);
}

#[test]
fn packed_cryptonets_matches_interpreter() {
    // Stride 2 and padding 1: the edge outputs lack taps, so their weights are masks.
    check("cryptonets", 1);
}

#[test]
fn packed_residual_bn_matches_interpreter() {
    // Depthwise conv, residual add, concat, transpose, global pooling on [3, 8, 8].
    check("residual_bn", 2);
}

#[test]
fn packed_bundled_lenet1_matches_plaintext() {
    let model = weights::pretrained_lenet1().unwrap();
    let test = mnist::load_test(mnist::DEFAULT_DIR).unwrap();
    let plan = Plan::from_sequential(&model, &[1, 28, 28]).unwrap();
    let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [9; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let steps = packed_rotation_steps(&plan, ctx.slots()).unwrap();
    // conv1 taps, pool1, conv2 taps at doubled strides, pool2, the fc's rotate-and-sum.
    assert!(steps.contains(&29) && steps.contains(&(4 * 56 + 4 * 2)) && steps.contains(&256));
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
    let run = CkksPacked::new(&plan, &ctx, &keys.relin, &gk)
        .unwrap()
        .with_output_bound(60.0);
    for i in 0..2 {
        let x = test
            .inputs
            .slice(s![i..i + 1, .., .., ..])
            .to_owned()
            .into_dyn();
        let plain = model.forward(&x).unwrap();
        let ct =
            CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
        let got = run
            .forward(&ct)
            .unwrap()
            .decrypt(&ctx, &keys.secret)
            .unwrap();
        for (j, (a, b)) in got.iter().zip(plain.iter()).enumerate() {
            assert!((a - b).abs() < 0.1, "image {i} logit {j}: {a} vs {b}");
        }
    }
    // A missing rotation key is reported, not a panic.
    let few = ctx.gen_galois_keys(&keys.secret, &[1], false).unwrap();
    let x = ArrayD::from_elem(IxDyn(&[1, 1, 28, 28]), 0.5);
    let ct = CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
    assert!(matches!(
        CkksPacked::new(&plan, &ctx, &keys.relin, &few)
            .unwrap()
            .forward(&ct),
        Err(Error::MissingGaloisKey { .. })
    ));
    // A batched tensor is not a packed one.
    let b = CipherTensor::encrypt_batched(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
    assert!(matches!(
        CkksPacked::new(&plan, &ctx, &keys.relin, &gk)
            .unwrap()
            .forward(&b),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn packed_rejects_what_it_cannot_do() {
    // A broadcast product (per-channel gates times the map) has no slot-wise packed form.
    let mut g = Graph::new();
    let x = g.add_input("x", &[2, 4, 4]).unwrap();
    let gate = g.push("gate", Op::GlobalAvgPool, &[x]).unwrap();
    let gated = g.push("gated", Op::Mul, &[x, gate]).unwrap();
    g.add_output(gated).unwrap();
    let plan = Plan::new(&g).unwrap();
    match packed_rotation_steps(&plan, 4096) {
        Err(Error::UnsupportedOp { node, .. }) => assert_eq!(node, "gated"),
        other => panic!("{other:?}"),
    }
    // More values per channel than slots.
    let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [2; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let big = ArrayD::from_elem(IxDyn(&[1, 1, 100, 100]), 0.0);
    assert!(matches!(
        CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &big),
        Err(Error::TooManyValues { .. })
    ));
    let two = ArrayD::from_elem(IxDyn(&[2, 1, 4, 4]), 0.0);
    assert!(matches!(
        CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &two),
        Err(Error::InputShape { got, .. }) if got == [2, 1, 4, 4]
    ));
}
