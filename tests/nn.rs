//! Tests of the plaintext neural-network layer (`hetensor::nn`): gradients against finite
//! differences, forward passes against naive references, the MNIST IDX loader, safetensors
//! import/export, and the shipped LeNet-1.

use std::io::Write;

use hetensor::nn::layers::{AvgPool2d, Conv2d, Flatten, Layer, Linear, Square};
use hetensor::nn::loss::{mse_one_hot, softmax_cross_entropy};
use hetensor::nn::train::{
    augment_batch, batch_gradients, train, Augment, LrSchedule, TrainConfig,
};
use hetensor::nn::{mnist, weights, Dataset, Loss, PolyActivation, Sequential, Tensor};
use hetensor::Error;
use ndarray::{array, Array1, Array2, Array4, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn random_tensor(shape: &[usize], r: &mut ChaCha20Rng) -> Tensor {
    ArrayD::from_shape_fn(IxDyn(shape), |_| 2.0 * r.random::<f64>() - 1.0)
}

// ---------------------------------------------------------------------------------------------
// Finite-difference gradient checks
// ---------------------------------------------------------------------------------------------

/// `L = Σ r ⊙ layer(x)`; checks ∂L/∂x and ∂L/∂params from `backward` against central
/// differences.
fn grad_check(layer: &Layer, x: &Tensor, seed: u64) {
    let mut r = rng(seed);
    let y = layer.forward(x).unwrap();
    let w = random_tensor(y.shape(), &mut r);
    let loss = |l: &Layer, x: &Tensor| -> f64 { (l.forward(x).unwrap() * &w).sum() };
    let (gx, gp) = layer.backward(x, &w).unwrap();
    assert_eq!(
        gx.shape(),
        x.shape(),
        "{}: input gradient shape",
        layer.kind()
    );
    let eps = 1e-6;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()));
    for i in 0..x.len() {
        let mut xp = x.clone();
        let mut xm = x.clone();
        xp.as_slice_mut().unwrap()[i] += eps;
        xm.as_slice_mut().unwrap()[i] -= eps;
        let num = (loss(layer, &xp) - loss(layer, &xm)) / (2.0 * eps);
        let ana = gx.as_slice().unwrap()[i];
        assert!(
            close(num, ana),
            "{}: dL/dx[{i}] analytic {ana} vs numeric {num}",
            layer.kind()
        );
    }
    assert_eq!(
        gp.len(),
        layer.params().len(),
        "{}: one gradient per parameter",
        layer.kind()
    );
    for (j, g) in gp.iter().enumerate() {
        assert_eq!(g.shape(), layer.params()[j].shape());
        for i in 0..g.len() {
            let mut lp = layer.clone();
            let mut lm = layer.clone();
            *lp.params_mut()[j].iter_mut().nth(i).unwrap() += eps;
            *lm.params_mut()[j].iter_mut().nth(i).unwrap() -= eps;
            let num = (loss(&lp, x) - loss(&lm, x)) / (2.0 * eps);
            let ana = *g.iter().nth(i).unwrap();
            assert!(
                close(num, ana),
                "{}: dL/dparam{j}[{i}] analytic {ana} vs numeric {num}",
                layer.kind()
            );
        }
    }
}

#[test]
fn grad_conv2d() {
    let mut r = rng(1);
    for &(stride, padding, h, w) in &[(1, 0, 6, 7), (2, 1, 7, 6), (1, 2, 4, 5), (3, 0, 8, 8)] {
        let mut c = Conv2d::new(2, 3, 3, stride, padding).unwrap();
        c.init_uniform(&mut r, 0.5);
        let x = random_tensor(&[2, 2, h, w], &mut r);
        grad_check(&Layer::Conv2d(c), &x, 10 + stride as u64);
    }
}

#[test]
fn grad_avgpool_flatten_linear_square_poly() {
    let mut r = rng(2);
    // 5x7 is not divisible by 2: the dropped row/column must get zero gradient.
    grad_check(
        &AvgPool2d::new(2).unwrap().into(),
        &random_tensor(&[2, 3, 5, 7], &mut r),
        3,
    );
    grad_check(
        &AvgPool2d::new(3).unwrap().into(),
        &random_tensor(&[1, 2, 6, 6], &mut r),
        4,
    );
    grad_check(&Flatten.into(), &random_tensor(&[2, 3, 2, 2], &mut r), 5);
    let mut lin = Linear::new(6, 4).unwrap();
    lin.init_uniform(&mut r, 0.5);
    grad_check(&lin.into(), &random_tensor(&[3, 6], &mut r), 6);
    grad_check(&Square.into(), &random_tensor(&[2, 5], &mut r), 7);
    let poly = PolyActivation::new(vec![0.1, -0.5, 0.25, 0.3, -0.05]).unwrap();
    grad_check(&poly.into(), &random_tensor(&[2, 2, 3], &mut r), 8);
    grad_check(
        &PolyActivation::sigmoid(3, (-8.0, 8.0)).unwrap().into(),
        &random_tensor(&[4, 3], &mut r),
        9,
    );
}

#[test]
fn grad_sequential_with_losses() {
    // A small LeNet-like model end to end, checking dLoss/dparams for both losses.
    let mut r = rng(3);
    let mut c1 = Conv2d::new(1, 2, 3, 1, 1).unwrap();
    c1.init_uniform(&mut r, 0.5);
    let mut c2 = Conv2d::new(2, 3, 3, 1, 0).unwrap();
    c2.init_uniform(&mut r, 0.5);
    let mut fc = Linear::new(3 * 2 * 2, 4).unwrap();
    fc.init_uniform(&mut r, 0.5);
    let model = Sequential::new()
        .with("conv1", c1)
        .and_then(|m| m.with("act1", Square))
        .and_then(|m| m.with("pool1", AvgPool2d::new(2).unwrap()))
        .and_then(|m| m.with("conv2", c2))
        .and_then(|m| m.with("act2", PolyActivation::relu(2, (-4.0, 4.0)).unwrap()))
        .and_then(|m| m.with("flatten", Flatten))
        .and_then(|m| m.with("fc", fc))
        .unwrap();
    let x = random_tensor(&[3, 1, 8, 8], &mut r);
    let labels = [0usize, 3, 1];
    for loss in [
        Loss::CrossEntropy,
        Loss::SmoothedCrossEntropy(0.1),
        Loss::Mse,
    ] {
        let (_, _, g) = batch_gradients(&model, &x, &labels, loss, 2).unwrap();
        let f = |m: &Sequential| loss.eval(&m.forward(&x).unwrap(), &labels).unwrap().0;
        let eps = 1e-6;
        for (li, layer) in model.layers().iter().enumerate() {
            for (pj, p) in layer.params().iter().enumerate() {
                for i in (0..p.len()).step_by(3) {
                    let mut mp = model.clone();
                    let mut mm = model.clone();
                    *mp.layers_mut()[li].params_mut()[pj]
                        .iter_mut()
                        .nth(i)
                        .unwrap() += eps;
                    *mm.layers_mut()[li].params_mut()[pj]
                        .iter_mut()
                        .nth(i)
                        .unwrap() -= eps;
                    let num = (f(&mp) - f(&mm)) / (2.0 * eps);
                    let ana = *g.per_layer[li][pj].iter().nth(i).unwrap();
                    assert!(
                        (num - ana).abs() <= 1e-5 * (1.0 + num.abs()),
                        "{loss:?} layer {li} param {pj}[{i}]: analytic {ana} vs numeric {num}"
                    );
                }
            }
        }
    }
}

#[test]
fn loss_gradients() {
    let z = array![[1.0, -2.0, 0.5], [0.1, 0.2, 3.0]];
    let labels = [2usize, 0];
    let (l, g) = softmax_cross_entropy(z.view(), &labels).unwrap();
    // Hand-computed: −log softmax.
    let lse0 = (1f64.exp() + (-2f64).exp() + 0.5f64.exp()).ln();
    let lse1 = (0.1f64.exp() + 0.2f64.exp() + 3f64.exp()).ln();
    assert!((l - ((lse0 - 0.5) + (lse1 - 0.1))).abs() < 1e-12);
    assert!(g.sum_axis(ndarray::Axis(1)).iter().all(|s| s.abs() < 1e-12));
    let (l2, g2) = mse_one_hot(z.view(), &labels).unwrap();
    assert!((l2 - 0.5 * (1.0 + 4.0 + 0.25 + 0.81 + 0.04 + 9.0)).abs() < 1e-12);
    assert_eq!(g2[[0, 2]], -0.5);
    assert!(matches!(
        softmax_cross_entropy(z.view(), &[3, 0]),
        Err(Error::Data(_))
    ));
    assert!(matches!(mse_one_hot(z.view(), &[0]), Err(Error::Shape(_))));
}

// ---------------------------------------------------------------------------------------------
// Forward passes against naive references
// ---------------------------------------------------------------------------------------------

#[test]
fn conv_forward_hand_computed() {
    let x = Array4::from_shape_vec((1, 1, 3, 3), (1..=9).map(f64::from).collect()).unwrap();
    let w = Array4::from_shape_vec((1, 1, 2, 2), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let c = Conv2d::from_weights(w, array![0.5], 1, 0).unwrap();
    let y = c.forward(&x.into_dyn()).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(
        y.iter().copied().collect::<Vec<_>>(),
        vec![37.5, 47.5, 67.5, 77.5]
    );
}

/// Direct definition of a padded, strided convolution.
fn naive_conv(x: &Array4<f64>, c: &Conv2d) -> Array4<f64> {
    let (n, ci, h, w) = x.dim();
    let (k, s, p) = (c.kernel as isize, c.stride as isize, c.padding as isize);
    let oh = ((h as isize + 2 * p - k) / s + 1) as usize;
    let ow = ((w as isize + 2 * p - k) / s + 1) as usize;
    Array4::from_shape_fn((n, c.out_ch, oh, ow), |(b, o, y, xx)| {
        let mut acc = c.bias[o];
        for ch in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    let iy = y as isize * s + ky - p;
                    let ix = xx as isize * s + kx - p;
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        acc += c.weight[[o, ch, ky as usize, kx as usize]]
                            * x[[b, ch, iy as usize, ix as usize]];
                    }
                }
            }
        }
        acc
    })
}

#[test]
fn conv_forward_matches_naive() {
    let mut r = rng(4);
    for &(k, stride, padding, h, w) in &[
        (3, 1, 0, 5, 6),
        (3, 2, 1, 7, 7),
        (5, 1, 2, 6, 5),
        (2, 3, 1, 9, 8),
    ] {
        let mut c = Conv2d::new(3, 2, k, stride, padding).unwrap();
        c.init_uniform(&mut r, 1.0);
        let x = random_tensor(&[2, 3, h, w], &mut r)
            .into_dimensionality::<ndarray::Ix4>()
            .unwrap();
        let got = c.forward(&x.clone().into_dyn()).unwrap();
        let want = naive_conv(&x, &c).into_dyn();
        assert_eq!(got.shape(), want.shape());
        for (a, b) in got.iter().zip(want.iter()) {
            assert!(
                (a - b).abs() < 1e-12,
                "k{k} s{stride} p{padding}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn pool_flatten_linear_hand_computed() {
    let x = Array4::from_shape_vec((1, 1, 4, 5), (0..20).map(f64::from).collect())
        .unwrap()
        .into_dyn();
    let y = AvgPool2d::new(2).unwrap().forward(&x).unwrap();
    // Windows {0,1,5,6}, {2,3,7,8}, {10,11,15,16}, {12,13,17,18}; column 4 is dropped.
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(
        y.iter().copied().collect::<Vec<_>>(),
        vec![3.0, 5.0, 13.0, 15.0]
    );

    let f = Flatten
        .forward(
            &Array4::from_shape_fn((2, 2, 1, 2), |(n, c, _, w)| (n * 100 + c * 10 + w) as f64)
                .into_dyn(),
        )
        .unwrap();
    assert_eq!(f.shape(), &[2, 4]);
    assert_eq!(
        f.index_axis(ndarray::Axis(0), 0)
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0.0, 1.0, 10.0, 11.0]
    );
    assert_eq!(
        f.index_axis(ndarray::Axis(0), 1)
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![100.0, 101.0, 110.0, 111.0]
    );

    let lin =
        Linear::from_weights(array![[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]], array![0.5, -0.5]).unwrap();
    let y = lin
        .forward(&array![[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]].into_dyn())
        .unwrap();
    assert_eq!(y, array![[6.5, -0.5], [-0.5, -3.5]].into_dyn());
}

#[test]
fn shape_errors_are_clear() {
    let c = Conv2d::new(1, 4, 5, 1, 0).unwrap();
    let e = c
        .forward(&Tensor::zeros(IxDyn(&[2, 3, 28, 28])))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { expected, got, .. }
            if expected.contains("1 input channels") && got == &[2, 3, 28, 28]),
        "{e}"
    );
    let e = c.forward(&Tensor::zeros(IxDyn(&[2, 28, 28]))).unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { op, expected, got }
            if op == "Conv2d" && expected.contains("4-D") && got == &[2, 28, 28]),
        "{e}"
    );
    let e = c.forward(&Tensor::zeros(IxDyn(&[2, 1, 4, 4]))).unwrap_err();
    assert!(
        matches!(&e, Error::Shape(m) if m.contains("does not fit")),
        "{e}"
    );
    let bad = Conv2d {
        weight: Array4::zeros((4, 1, 3, 3)),
        ..c.clone()
    };
    assert!(matches!(
        bad.forward(&Tensor::zeros(IxDyn(&[1, 1, 8, 8]))),
        Err(Error::Shape(_))
    ));
    assert!(Conv2d::new(1, 1, 3, 0, 0).is_err());
    assert!(Linear::from_weights(Array2::zeros((3, 2)), Array1::zeros(2)).is_err());
    let lin = Linear::new(192, 10).unwrap();
    let e = lin
        .forward(&Tensor::zeros(IxDyn(&[1, 12, 4, 4])))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { expected, .. } if expected.contains("Flatten")),
        "{e}"
    );
    // The model reports which layer failed.
    let e = Sequential::lenet1()
        .forward(&Tensor::zeros(IxDyn(&[1, 1, 32, 32])))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InputShape { op, expected, got }
            if op.contains("\"fc\"") && expected.contains("192") && got == &[1, 300]),
        "{e}"
    );
    let g = Square.backward(
        &Tensor::zeros(IxDyn(&[2, 3])),
        &Tensor::zeros(IxDyn(&[3, 2])),
    );
    assert!(matches!(g, Err(Error::Shape(_))));
    assert!(Sequential::new().with("a.b", Square).is_err());
    assert!(Sequential::new()
        .with("a", Square)
        .and_then(|m| m.with("a", Flatten))
        .is_err());
}

#[test]
fn lenet1_shapes_and_parallel_forward() {
    let m = Sequential::lenet1();
    assert_eq!(m.num_params(), 3246);
    assert_eq!(m.output_shape(&[7, 1, 28, 28]).unwrap(), vec![7, 10]);
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc.weight",
            "fc.bias"
        ]
    );
    let x = random_tensor(&[37, 1, 28, 28], &mut rng(5)).mapv(f64::abs);
    assert_eq!(m.forward(&x).unwrap(), m.forward_par(&x, 8).unwrap());
}

#[test]
fn balance_squares_keeps_the_function() {
    let mut m = Sequential::lenet1_with_rng(&mut rng(11));
    let x = random_tensor(&[20, 1, 28, 28], &mut rng(12)).mapv(|v| 3.0 * v.abs());
    let before = m.forward(&x).unwrap();
    let scales = m.balance_squares(&x, 1.5).unwrap();
    assert_eq!(scales.len(), 2, "two conv → square chains");
    let after = m.forward(&x).unwrap();
    for (a, b) in before.iter().zip(after.iter()) {
        assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{a} vs {b}");
    }
    let r = m.activation_ranges(&x).unwrap();
    for name in ["conv1", "conv2"] {
        let got = r.iter().find(|r| r.name == name).unwrap().max_abs();
        assert!((got - 1.5).abs() < 1e-9, "{name}: {got}");
    }
    assert!(m.balance_squares(&x, 0.0).is_err());
}

#[test]
fn poly_activations() {
    let p = PolyActivation::new(vec![1.0, -2.0, 0.5]).unwrap();
    assert_eq!(p.eval(2.0), 1.0 - 4.0 + 2.0);
    assert_eq!(p.derivative(2.0), -2.0 + 2.0);
    assert_eq!(
        p.forward(&array![[0.0, 2.0]].into_dyn()).unwrap(),
        array![[1.0, -1.0]].into_dyn()
    );

    let s = PolyActivation::sigmoid(3, (-8.0, 8.0)).unwrap();
    assert_eq!(s.degree(), 3);
    // Odd symmetry about (0, 1/2): c0 = 1/2, c2 = 0.
    assert!(
        (s.coeffs[0] - 0.5).abs() < 1e-9 && s.coeffs[2].abs() < 1e-9,
        "{:?}",
        s.coeffs
    );
    let max_err = |p: &PolyActivation, f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        (0..=1000)
            .map(|i| lo + (hi - lo) * i as f64 / 1000.0)
            .map(|x| (p.eval(x) - f(x)).abs())
            .fold(0.0, f64::max)
    };
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    assert!(max_err(&s, &sig, -8.0, 8.0) < 0.12);
    let s7 = PolyActivation::sigmoid(7, (-8.0, 8.0)).unwrap();
    assert!(max_err(&s7, &sig, -8.0, 8.0) < 0.035);
    // The classic degree-3 approximation used for encrypted logistic regression
    // (0.5 + 0.15012 x − 0.0015930 x³ on [−8, 8]).
    assert!((s.coeffs[1] - 0.15012).abs() < 1e-3 && (s.coeffs[3] + 0.001593).abs() < 1e-5);
    let s15 = PolyActivation::sigmoid(15, (-8.0, 8.0)).unwrap();
    assert!(max_err(&s15, &sig, -8.0, 8.0) < 0.003);
    let r = PolyActivation::relu(2, (-4.0, 4.0)).unwrap();
    assert!(max_err(&r, &|x: f64| x.max(0.0), -4.0, 4.0) < 0.4);
    let r8 = PolyActivation::relu(8, (-1.0, 3.0)).unwrap(); // asymmetric interval
    assert!(max_err(&r8, &|x: f64| x.max(0.0), -1.0, 3.0) < 0.08);
    // A polynomial is fitted exactly.
    let cubic = PolyActivation::fit(|x| 1.0 - x + 0.25 * x * x * x, 3, (-3.0, 5.0)).unwrap();
    for (a, b) in cubic.coeffs.iter().zip([1.0, -1.0, 0.0, 0.25]) {
        assert!((a - b).abs() < 1e-9, "{:?}", cubic.coeffs);
    }
    assert!(matches!(
        PolyActivation::sigmoid(3, (2.0, 1.0)),
        Err(Error::Model(_))
    ));
    assert!(matches!(
        PolyActivation::relu(3, (f64::NAN, 1.0)),
        Err(Error::Model(_))
    ));
    assert!(matches!(PolyActivation::new(vec![]), Err(Error::Model(_))));
    assert!(matches!(
        PolyActivation::new(vec![1.0, f64::INFINITY]),
        Err(Error::Model(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// MNIST IDX loader
// ---------------------------------------------------------------------------------------------

fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(payload);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_parse_ok_and_gzip() {
    let px: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
    let img = mnist::parse_images(&idx_bytes(0x803, &[2, 2, 3], &px)).unwrap();
    assert_eq!(img.dim(), (2, 2, 3));
    assert_eq!(img[[1, 1, 2]], 220);
    let lab = mnist::parse_labels(&idx_bytes(0x801, &[2], &[7, 3])).unwrap();
    assert_eq!(lab, vec![7, 3]);
    let ds = mnist::to_dataset(&img, &lab).unwrap();
    assert_eq!(ds.inputs.shape(), &[2, 1, 2, 3]);
    assert_eq!(ds.inputs[[1, 0, 1, 2]], 220.0 / 255.0);
    assert_eq!(ds.labels, vec![7, 3]);

    let dir = std::env::temp_dir().join(format!("hetensor-nn-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tiny-images-idx3-ubyte.gz"),
        gzip(&idx_bytes(0x803, &[2, 2, 3], &px)),
    )
    .unwrap();
    std::fs::write(
        dir.join("tiny-labels-idx1-ubyte"),
        idx_bytes(0x801, &[2], &[7, 3]),
    )
    .unwrap();
    let ds2 = mnist::load_split(&dir, "tiny").unwrap();
    assert_eq!(ds, ds2);
    // Counts that disagree.
    std::fs::write(
        dir.join("bad-images-idx3-ubyte"),
        idx_bytes(0x803, &[2, 2, 3], &px),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-labels-idx1-ubyte"),
        idx_bytes(0x801, &[3], &[1, 2, 3]),
    )
    .unwrap();
    assert!(
        matches!(mnist::load_split(&dir, "bad"), Err(Error::Data(m)) if m.contains("3 labels"))
    );
    // Missing file, corrupt gzip.
    assert!(matches!(
        mnist::load_split(&dir, "nope"),
        Err(Error::Data(_))
    ));
    let mut gz = gzip(&idx_bytes(0x801, &[2], &[7, 3]));
    let half = gz.len() / 2;
    gz.truncate(half);
    std::fs::write(dir.join("cut.gz"), &gz).unwrap();
    assert!(matches!(
        mnist::load_labels(dir.join("cut.gz")),
        Err(Error::Data(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn idx_rejects_bad_files() {
    let px = vec![0u8; 2 * 2 * 3];
    let data_err = |r: Result<_, Error>, what: &str| match r {
        Err(Error::Data(m)) => assert!(m.contains(what), "message {m:?} lacks {what:?}"),
        Err(e) => panic!("expected Error::Data, got {e}"),
        Ok(_) => panic!("expected an error containing {what:?}"),
    };
    data_err(
        mnist::parse_images(&idx_bytes(0x804, &[2, 2, 3], &px)).map(|_| ()),
        "magic",
    );
    data_err(
        mnist::parse_images(&idx_bytes(0x801, &[2, 2, 3], &px)).map(|_| ()),
        "swapped",
    );
    data_err(
        mnist::parse_labels(&idx_bytes(0x803, &[2], &[1, 2])).map(|_| ()),
        "magic",
    );
    data_err(
        mnist::parse_images(&idx_bytes(0x803, &[2, 2, 3], &px[..11])).map(|_| ()),
        "truncated",
    );
    data_err(
        mnist::parse_images(&idx_bytes(
            0x803,
            &[2, 2, 3],
            &[px.clone(), vec![1]].concat(),
        ))
        .map(|_| ()),
        "trailing",
    );
    data_err(mnist::parse_images(&[0, 0, 8]).map(|_| ()), "truncated");
    data_err(
        mnist::parse_images(&idx_bytes(0x803, &[2, 2], &[])).map(|_| ()),
        "truncated",
    );
    data_err(mnist::parse_labels(&[]).map(|_| ()), "truncated");
    data_err(
        mnist::parse_images(&idx_bytes(0x803, &[u32::MAX, u32::MAX, u32::MAX], &[])).map(|_| ()),
        "",
    );
    data_err(
        mnist::parse_labels(&idx_bytes(0x801, &[3], &[1, 2])).map(|_| ()),
        "truncated",
    );
    data_err(
        mnist::to_dataset(
            &mnist::parse_images(&idx_bytes(0x803, &[1, 1, 1], &[0])).unwrap(),
            &[10],
        )
        .map(|_| ()),
        "label 10",
    );
}

#[test]
fn shipped_mnist_files_load() {
    let test = mnist::load_test(mnist::DEFAULT_DIR).unwrap();
    assert_eq!(test.inputs.shape(), &[10_000, 1, 28, 28]);
    assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
    assert!(test.inputs.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let train = mnist::load_train(mnist::DEFAULT_DIR).unwrap();
    assert_eq!(train.len(), 10_000);
    let mut counts = [0usize; 10];
    train.labels.iter().for_each(|&l| counts[l] += 1);
    // Not balanced (see data/README.md): every class is present with 800..1200 digits.
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

/// Builds a safetensors file from `(name, dtype, shape, little-endian bytes)`.
fn st_file(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32_bytes(n: usize, v: f32) -> Vec<u8> {
    (0..n).flat_map(|_| v.to_le_bytes()).collect()
}

fn lenet1_f32_tensors(v: f32) -> Vec<(&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    use safetensors::Dtype::F32;
    vec![
        ("conv1.weight", F32, vec![4, 1, 5, 5], f32_bytes(100, v)),
        ("conv1.bias", F32, vec![4], f32_bytes(4, v)),
        ("conv2.weight", F32, vec![12, 4, 5, 5], f32_bytes(1200, v)),
        ("conv2.bias", F32, vec![12], f32_bytes(12, v)),
        ("fc.weight", F32, vec![10, 192], f32_bytes(1920, v)),
        ("fc.bias", F32, vec![10], f32_bytes(10, v)),
    ]
}

#[test]
fn safetensors_round_trip() {
    let m = Sequential::lenet1_with_rng(&mut rng(6));
    let bytes = weights::to_bytes(&m, weights::DType::F64).unwrap();
    let mut m2 = Sequential::lenet1_with_rng(&mut rng(7));
    assert_ne!(m, m2);
    weights::load_from_bytes(&mut m2, &bytes).unwrap();
    assert_eq!(m, m2);
    // f32 export rounds; f32 files (PyTorch's default) load.
    let b32 = weights::to_bytes(&m, weights::DType::F32).unwrap();
    let mut m3 = Sequential::lenet1();
    weights::load_from_bytes(&mut m3, &b32).unwrap();
    for ((_, a), (_, b)) in m.named_params().iter().zip(m3.named_params()) {
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(x, y)| (x - y).abs() <= 1e-7 * x.abs().max(1e-30)));
    }
    // A PyTorch-style file written by someone else.
    let mut m4 = Sequential::lenet1();
    weights::load_from_bytes(&mut m4, &st_file(&lenet1_f32_tensors(0.25))).unwrap();
    assert!(m4
        .named_params()
        .iter()
        .all(|(_, p)| p.iter().all(|&v| v == 0.25)));
    // Files on disk.
    let path =
        std::env::temp_dir().join(format!("hetensor-nn-w-{}.safetensors", std::process::id()));
    weights::save(&m, &path, weights::DType::F64).unwrap();
    let mut m5 = Sequential::lenet1();
    weights::load(&mut m5, &path).unwrap();
    assert_eq!(m, m5);
    let _ = std::fs::remove_file(&path);
    // Positional names, as PyTorch's nn.Sequential.
    let seq = Sequential::from_layers(vec![
        Linear::new(3, 2).unwrap().into(),
        Square.into(),
        Linear::new(2, 1).unwrap().into(),
    ]);
    let names: Vec<String> = seq.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
}

#[test]
fn safetensors_rejects_bad_weights() {
    let original = Sequential::lenet1();
    let expect = |bytes: Vec<u8>, what: &str| {
        let mut m = original.clone();
        match weights::load_from_bytes(&mut m, &bytes) {
            Err(Error::Model(msg)) => assert!(msg.contains(what), "message {msg:?} lacks {what:?}"),
            Err(e) => panic!("expected Error::Model, got {e}"),
            Ok(()) => panic!("expected an error about {what}"),
        }
        assert_eq!(m, original, "a failed load must leave the model unchanged");
    };
    // Missing tensor, and a tensor of another shape (a transposed fc weight): typed, so that
    // a caller can tell a file of another architecture from a damaged one.
    let typed = |bytes: Vec<u8>| {
        let mut m = original.clone();
        let e = weights::load_from_bytes(&mut m, &bytes).unwrap_err();
        assert_eq!(m, original, "a failed load must leave the model unchanged");
        e
    };
    let mut t = lenet1_f32_tensors(0.1);
    t.retain(|x| x.0 != "fc.bias");
    match typed(st_file(&t)) {
        Error::MissingWeight { name, available } => {
            assert_eq!(name, "fc.bias");
            assert!(available.contains("fc.weight"), "{available}");
        }
        e => panic!("expected MissingWeight, got {e}"),
    }
    let mut t = lenet1_f32_tensors(0.1);
    t[4].2 = vec![192, 10];
    match typed(st_file(&t)) {
        Error::WeightShape {
            name,
            expected,
            got,
        } => assert_eq!(
            (name.as_str(), expected, got),
            ("fc.weight", vec![10, 192], vec![192, 10])
        ),
        e => panic!("expected WeightShape, got {e}"),
    }
    // NaN / inf.
    let mut t = lenet1_f32_tensors(0.1);
    t[2].3[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    expect(st_file(&t), "non-finite");
    let mut t = lenet1_f32_tensors(0.1);
    t[5].3[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    expect(st_file(&t), "fc.bias");
    // Unsupported dtype.
    let mut t = lenet1_f32_tensors(0.1);
    t[1].1 = safetensors::Dtype::I32;
    expect(st_file(&t), "dtype");
    // Extra tensor.
    let mut t = lenet1_f32_tensors(0.1);
    t.push((
        "conv3.weight",
        safetensors::Dtype::F32,
        vec![1],
        f32_bytes(1, 0.0),
    ));
    expect(st_file(&t), "conv3.weight");
    // Not a safetensors file at all.
    expect(b"definitely not safetensors".to_vec(), "safetensors");
    expect(Vec::new(), "safetensors");
    let mut m = original.clone();
    assert!(matches!(
        weights::load(&mut m, "/nonexistent/w.safetensors"),
        Err(Error::Model(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Training and the shipped model
// ---------------------------------------------------------------------------------------------

/// Two Gaussian-ish blobs of 4x4 "images": class = which half is brighter.
fn toy_dataset(n: usize, seed: u64) -> Dataset {
    let mut r = rng(seed);
    let mut x = Array4::<f64>::zeros((n, 1, 4, 4));
    let mut labels = Vec::new();
    for i in 0..n {
        let l = r.random_range(0..2usize);
        for y in 0..4 {
            for xx in 0..4 {
                let bright = (xx < 2) == (l == 0);
                x[[i, 0, y, xx]] = if bright { 0.8 } else { 0.2 } + 0.2 * (r.random::<f64>() - 0.5);
            }
        }
        labels.push(l);
    }
    Dataset::new(x.into_dyn(), labels, 2).unwrap()
}

fn toy_model(seed: u64) -> Sequential {
    let mut r = rng(seed);
    let mut c = Conv2d::new(1, 2, 3, 1, 1).unwrap();
    c.init_uniform(&mut r, 0.3);
    let mut fc = Linear::new(8, 2).unwrap();
    fc.init_uniform(&mut r, 0.3);
    Sequential::new()
        .with("conv1", c)
        .and_then(|m| m.with("act1", Square))
        .and_then(|m| m.with("pool1", AvgPool2d::new(2).unwrap()))
        .and_then(|m| m.with("flatten", Flatten))
        .and_then(|m| m.with("fc", fc))
        .unwrap()
}

#[test]
fn training_learns_and_is_deterministic() {
    let data = toy_dataset(200, 8);
    let cfg = TrainConfig {
        epochs: 8,
        batch_size: 16,
        lr: 0.1,
        chunk: 4,
        schedule: LrSchedule::Cosine { final_factor: 0.1 },
        warmup_epochs: 0.5,
        augment: Some(Augment::shifts(1)),
        seed: 9,
        ..TrainConfig::default()
    };
    let mut a = toy_model(1);
    let before = a.accuracy(&data).unwrap();
    let rep = train(&mut a, &data, Some(&data), &cfg).unwrap();
    assert_eq!(rep.epochs.len(), 8);
    assert!(
        rep.epochs[7].train_loss < rep.epochs[0].train_loss,
        "{rep:?}"
    );
    let after = a.accuracy(&data).unwrap();
    assert!(
        after > 0.95 && after >= before,
        "accuracy {before} -> {after}"
    );
    // Same seed, same weights (independently of the thread count: chunks are added in order).
    let mut b = toy_model(1);
    train(&mut b, &data, None, &cfg).unwrap();
    assert_eq!(a, b);
    // MSE works too.
    let mut c = toy_model(1);
    train(
        &mut c,
        &data,
        None,
        &TrainConfig {
            loss: Loss::Mse,
            augment: None,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(c.accuracy(&data).unwrap() > 0.9);
    // Bad configurations and mismatched data are errors.
    let mut d = toy_model(1);
    assert!(matches!(
        train(
            &mut d,
            &data,
            None,
            &TrainConfig {
                lr: -1.0,
                ..cfg.clone()
            }
        ),
        Err(Error::Model(_))
    ));
    let three = Dataset::new(data.inputs.clone(), data.labels.clone(), 3).unwrap();
    assert!(matches!(
        train(&mut d, &three, None, &cfg),
        Err(Error::Shape(_))
    ));
}

#[test]
fn augmentation_shifts_exactly() {
    let mut x = Array4::<f64>::zeros((1, 1, 5, 5));
    x[[0, 0, 2, 2]] = 1.0;
    let mut t = x.into_dyn();
    let aug = Augment::shifts(2);
    augment_batch(&mut t, &aug, &mut rng(10)).unwrap();
    // Integer shift without rotation/scale: the pixel moves, intact.
    assert_eq!(t.sum(), 1.0);
    assert_eq!(t.iter().filter(|&&v| v == 1.0).count(), 1);
    assert!(augment_batch(&mut Tensor::zeros(IxDyn(&[2, 3])), &aug, &mut rng(1)).is_err());
}

#[test]
fn pretrained_lenet1_accuracy() {
    let model = weights::pretrained_lenet1().unwrap();
    let mut from_file = Sequential::lenet1();
    weights::load(&mut from_file, weights::LENET1_PATH).unwrap();
    assert_eq!(model, from_file);
    // Saving is byte-for-byte reproducible.
    assert_eq!(
        weights::to_bytes(&model, weights::DType::F64).unwrap(),
        weights::LENET1_BYTES
    );
    let test = mnist::load_test(mnist::DEFAULT_DIR).unwrap().take(1000);
    let acc = model.accuracy(&test).unwrap();
    assert!(
        acc >= 0.97,
        "LeNet-1 accuracy on the first 1000 test digits: {acc}"
    );
    // Activations stay moderate (the encrypted CKKS evaluation depends on it).
    for r in model.activation_ranges(&test.inputs).unwrap() {
        assert!(r.max_abs() < 100.0, "{} reaches {}", r.name, r.max_abs());
    }
}
