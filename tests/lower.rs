//! The lowering (graph → plan → CKKS batched) against the plaintext graph interpreter, on the
//! ONNX test models (scripts/make_test_onnx.py), with automatically chosen parameters.

use hetensor::ckks::CkksContext;
use hetensor::graph::{Graph, Op};
use hetensor::lower::{choose_ckks_params, CkksBatched, LayerTiming, Plan};
use hetensor::progress::{Progress, ProgressEvent};
use hetensor::tensor::{CipherTensor, EncryptionKey};
use hetensor::{onnx, Error};
use ndarray::{ArrayD, IxDyn};
use std::sync::{Arc, Mutex};

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

/// Encrypted output of `name` on 12 random inputs in [0, 1), next to the interpreter's; the
/// parameters come from 32 other random inputs.
fn run(name: &str) -> (Plan, ArrayD<f64>, ArrayD<f64>, LayerTiming, u64) {
    let g = onnx::load(format!("{DIR}/{name}.onnx")).unwrap();
    let plan = Plan::new(&g).unwrap();
    let (params, choice) = choose_ckks_params(&plan, &g, &inputs(&g, 32, 1)).unwrap();
    println!("{name}: {}", choice.description);
    assert_eq!(choice.depth, plan.depth());
    let ctx = CkksContext::with_seed(params, [9; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let x = inputs(&g, 12, 2);
    let ct = CipherTensor::encrypt_batched(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
    let mut timing = LayerTiming::default();
    let steps = Arc::new(Mutex::new(0u64));
    let counter = steps.clone();
    let progress = Progress::new(move |e| {
        if e == ProgressEvent::Advance {
            *counter.lock().unwrap() += 1;
        }
    });
    let out = CkksBatched::new(&plan, &ctx, &keys.relin)
        .unwrap()
        .with_output_bound(choice.output_bound)
        .forward_with(&ct, &progress, Some(&mut timing))
        .unwrap();
    assert_eq!(out.shape(), plan.output_shape());
    let got = out.decrypt(&ctx, &keys.secret).unwrap();
    let want = g.run(&[x]).unwrap().remove(0);
    let advanced = *steps.lock().unwrap();
    (plan, got, want, timing, advanced)
}

/// `fused`: dense → quadratic → sum chains the plan runs part by part (conv → x² → pool).
fn check(name: &str, depth: usize, fused: usize) {
    let (plan, got, want, timing, steps) = run(name);
    assert_eq!(got.shape(), want.shape());
    let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let span = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!(
        "{name}: depth {}, max |encrypted - plaintext| = {err:.2e} (outputs up to {span:.2}), {:?}",
        plan.depth(),
        plan.counts()
    );
    assert_eq!(plan.depth(), depth, "{name}");
    assert_eq!(plan.counts().fused_chains, fused, "{name}");
    assert!(err < 1e-3 * span.max(1.0), "{name}: error {err}");
    assert!(steps > 0 && !timing.layers.is_empty());
}

#[test]
fn cryptonets_matches_interpreter() {
    // conv → x² → fc → x² → fc: 5 levels.
    // The first x² is read only by the flatten (a free sum): fused.
    check("cryptonets", 5, 1);
}

#[test]
fn lenet1_square_matches_interpreter() {
    // conv, x², (pool is free), conv, x², fc.
    check("lenet1_square", 5, 2);
}

#[test]
fn lenet1_quadratic_matches_interpreter() {
    // 0.125x² + 0.5x + 0.25 costs one level, like x²: its leading coefficient is carried into
    // the next layer's weights.
    check("lenet1_quadratic", 5, 2);
}

#[test]
fn residual_bn_matches_interpreter() {
    // conv (+BN folded) → x² → depthwise conv + residual add → 1x1 conv + concat → Sub,
    // pool, transpose, global pool (free) → gemm: the residual's shallower operand is brought
    // down to the deeper one's level.
    // Its x² has two readers (a depthwise convolution and the residual sum): nothing to fuse.
    check("residual_bn", 5, 0);
}

#[test]
fn plan_rejects_what_it_cannot_lower() {
    let mut g = Graph::new();
    let x = g.add_input("x", &[4]).unwrap();
    let y = g
        .push("c", Op::MulConst(ArrayD::zeros(IxDyn(&[4]))), &[x])
        .unwrap();
    g.add_output(y).unwrap();
    // A zero factor cannot be carried as a fold (its inverse shifts constants): the product
    // is computed, at the cost of a level.
    assert_eq!(Plan::new(&g).unwrap().depth(), 1);
    g.add_output(x).unwrap();
    assert!(matches!(Plan::new(&g), Err(Error::Model(_))));
}

#[test]
fn too_short_chain_and_wrong_input_are_errors() {
    let g = onnx::load(format!("{DIR}/cryptonets.onnx")).unwrap();
    let plan = Plan::new(&g).unwrap();
    let params = hetensor::ckks::CkksParams::builder()
        .depth(3)
        .scale_bits(25)
        .build()
        .unwrap();
    let ctx = CkksContext::with_seed(params, [3; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    assert!(matches!(
        CkksBatched::new(&plan, &ctx, &keys.relin),
        Err(Error::InvalidParameters(_))
    ));
    // The right depth, the wrong sample shape.
    let params = hetensor::ckks::CkksParams::builder()
        .depth(5)
        .scale_bits(25)
        .base_bits(30)
        .build()
        .unwrap();
    let ctx = CkksContext::with_seed(params, [3; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5; 6]).unwrap();
    let ct = CipherTensor::encrypt_batched(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
    let run = CkksBatched::new(&plan, &ctx, &keys.relin).unwrap();
    match run.forward(&ct) {
        Err(Error::InputShape { got, .. }) => assert_eq!(got, vec![3]),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A calibration set with NaN or ±inf is refused by naming the sample: a NaN would otherwise
/// drop out of the maxima (`f64::max` skips it) and leave parameters measured on the rest.
#[test]
fn non_finite_calibration_is_refused() {
    let g = onnx::load(format!("{DIR}/cryptonets.onnx")).unwrap();
    let plan = Plan::new(&g).unwrap();
    let per_sample: usize = g.shape(g.inputs()[0]).iter().product();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut calib = inputs(&g, 4, 2);
        calib.as_slice_mut().unwrap()[2 * per_sample + 7] = bad;
        match choose_ckks_params(&plan, &g, &calib) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("sample 2"), "{m}"),
            other => panic!("{bad}: {:?}", other.map(|(_, c)| c.description)),
        }
    }
    assert!(choose_ckks_params(&plan, &g, &inputs(&g, 4, 2)).is_ok());
}

/// Ops the ONNX test models do not reach: a product of two different tensors with
/// broadcasting, a sum of a product not yet rescaled with a shallower value (aligned onto the
/// product's scale), a degree-3 polynomial on a carried fold, padding excluded from a pooling
/// divisor, broadcast constants, concatenation, a degree-1 polynomial and a transpose.
#[test]
fn other_ops_match_interpreter() {
    use hetensor::graph::Pool;
    let mut g = Graph::new();
    let x = g.add_input("x", &[2, 4, 4]).unwrap();
    let c = |shape: &[usize], f: fn(usize) -> f64| {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap()
    };
    // Per-channel gates [2, 1, 1] times x: a tensor product with broadcasting.
    let gate = g.push("gate", Op::GlobalAvgPool, &[x]).unwrap();
    let gated = g.push("gated", Op::Mul, &[x, gate]).unwrap();
    // x² + x: the product's rescale is still owed when x joins it.
    let sq = g.push("sq", Op::Poly(vec![0.0, 0.0, 1.0]), &[x]).unwrap();
    let res = g.push("res", Op::Add, &[sq, x]).unwrap();
    let sum = g.push("sum", Op::Add, &[res, gated]).unwrap();
    let pool = Pool {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [1, 1, 1, 1],
        count_include_pad: false,
    };
    let p = g.push("pool", Op::AvgPool(pool), &[sum]).unwrap();
    let scaled = g
        .push(
            "scaled",
            Op::MulConst(c(&[2, 1, 1], |i| 0.5 + i as f64)),
            &[p],
        )
        .unwrap();
    let shifted = g
        .push(
            "shifted",
            Op::AddConst(c(&[2], |i| 0.1 * i as f64 - 0.05)),
            &[scaled],
        )
        .unwrap();
    let cubic = g
        .push("cubic", Op::Poly(vec![0.1, 0.5, 0.0, -0.05]), &[shifted])
        .unwrap();
    let lin = g
        .push("lin", Op::Poly(vec![0.2, -1.5]), &[shifted])
        .unwrap();
    let cat = g.push("cat", Op::Concat(0), &[cubic, lin]).unwrap();
    let t = g.push("t", Op::Transpose(vec![2, 0, 1]), &[cat]).unwrap();
    let out = g.push("flat", Op::Reshape(vec![16]), &[t]).unwrap();
    g.add_output(out).unwrap();
    let plan = Plan::new(&g).unwrap();
    let calib = inputs(&g, 16, 5);
    let (params, choice) = choose_ckks_params(&plan, &g, &calib).unwrap();
    println!("depth {}: {}", plan.depth(), choice.description);
    let ctx = CkksContext::with_seed(params, [4; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let x = inputs(&g, 8, 6);
    let ct = CipherTensor::encrypt_batched(&ctx, EncryptionKey::Secret(&keys.secret), &x).unwrap();
    let got = CkksBatched::new(&plan, &ctx, &keys.relin)
        .unwrap()
        .forward(&ct)
        .unwrap()
        .decrypt(&ctx, &keys.secret)
        .unwrap();
    let want = g.run(&[x]).unwrap().remove(0);
    let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let span = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!(
        "max error {err:.2e}, outputs up to {span:.2}, {:?}",
        plan.counts()
    );
    // Products: gate·x and x² (1 level); the residual sum of x² + x (factor 1) and gate·x
    // (factor 1/16, from the global pooling) is free: 16·(x² + x) is an integer product. The
    // pooling's 1/9 .. 1/4 on top would carry factors near 1/144 into the cubic's
    // coefficients (c·f³ rounds away), so that pooling is applied as a dense map (1 level),
    // then the cubic (3 levels).
    assert_eq!(plan.depth(), 5);
    assert_eq!(plan.counts().dense_maps, 1);
    assert!(err < 1e-3 * span.max(1.0), "error {err}");
}
