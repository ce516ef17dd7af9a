//! The packed single-image layout (rotations) against the plaintext model.

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::nn::{mnist, packed, weights, Conv2d, Sequential, Square};
use hetensor::Error;
use ndarray::s;

#[test]
fn packed_lenet1_matches_plaintext() {
    let model = weights::pretrained_lenet1().unwrap();
    let test = mnist::load_test(mnist::DEFAULT_DIR).unwrap();
    let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [9; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let steps = packed::rotation_steps(&model, [1, 28, 28]).unwrap();
    // conv1 taps (25), pool1 (3), conv2 taps at doubled strides (24 new), pool2, fc sums.
    assert!(steps.contains(&29) && steps.contains(&(4 * 56 + 4 * 2)) && steps.contains(&256));
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
    for i in 0..4 {
        let x = test
            .inputs
            .slice(s![i..i + 1, .., .., ..])
            .to_owned()
            .into_dyn();
        let plain = model.forward(&x).unwrap();
        let pixels: Vec<f64> = x.iter().copied().collect();
        let img = packed::encrypt_image(&ctx, &keys.secret, &pixels, [1, 28, 28]).unwrap();
        let out = packed::forward(&ctx, &model, img, &keys.relin, &gk, 60.0).unwrap();
        assert_eq!(out.len(), 10);
        let got: Vec<f64> = out
            .iter()
            .map(|c| ctx.decrypt_decode(c, &keys.secret).unwrap()[0])
            .collect();
        // Same 5-level budget as the batched layout plus rotation noise: logits within 0.1.
        for (j, (a, b)) in got.iter().zip(plain.iter()).enumerate() {
            assert!((a - b).abs() < 0.1, "image {i} logit {j}: {a} vs {b}");
        }
    }
}

#[test]
fn packed_layout_rejects_what_it_cannot_do() {
    let (ctx, keys) = {
        let ctx = CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [2; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        (ctx, keys)
    };
    let padded = Sequential::new()
        .with("c", Conv2d::new(1, 2, 3, 1, 1).unwrap())
        .unwrap()
        .with("s", Square)
        .unwrap();
    assert!(matches!(
        packed::rotation_steps(&padded, [1, 8, 8]),
        Err(Error::Model(_))
    ));
    assert!(matches!(
        packed::encrypt_image(&ctx, &keys.secret, &[0.0; 10], [1, 28, 28]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        packed::encrypt_image(&ctx, &keys.secret, &vec![0.0; 100 * 100], [1, 100, 100]),
        Err(Error::TooManyValues { .. })
    ));
    // A missing rotation key is reported, not a panic.
    let model = weights::pretrained_lenet1().unwrap();
    let img = packed::encrypt_image(&ctx, &keys.secret, &[0.5; 784], [1, 28, 28]).unwrap();
    let few = ctx.gen_galois_keys(&keys.secret, &[1], false).unwrap();
    assert!(matches!(
        packed::forward(&ctx, &model, img, &keys.relin, &few, 60.0),
        Err(Error::MissingGaloisKey { .. })
    ));
}
