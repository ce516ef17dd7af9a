//! ONNX import and the graph interpreter against onnxruntime (reference outputs written by
//! scripts/make_test_onnx.py), the import's simplifications, refusals, and hostile bytes.

use hetensor::graph::{Graph, Op};
use hetensor::onnx::{self, proto};
use hetensor::Error;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use prost::Message;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx");
const MODELS: [&str; 4] = [
    "lenet1_square",
    "lenet1_quadratic",
    "cryptonets",
    "residual_bn",
];

fn path(name: &str) -> String {
    format!("{DIR}/{name}.onnx")
}

/// The reference input and onnxruntime's output for model `name`.
fn reference(name: &str) -> (ArrayD<f64>, ArrayD<f64>) {
    let text = std::fs::read_to_string(format!("{DIR}/{name}.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let arr = |k: &str| {
        let shape: Vec<usize> = serde_json::from_value(j[format!("{k}_shape")].clone()).unwrap();
        let data: Vec<f64> = serde_json::from_value(j[k].clone()).unwrap();
        ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
    };
    (arr("input"), arr("output"))
}

fn max_abs_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn raw_import(name: &str) -> Graph {
    let bytes = std::fs::read(path(name)).unwrap();
    onnx::import(&proto::ModelProto::decode(bytes.as_slice()).unwrap()).unwrap()
}

/// The target: the f64 interpreter matches onnxruntime (float32) to 1e-5 on every model, with
/// and without the import's simplifications (BatchNorm folding, polynomial fusion).
#[test]
fn interpreter_matches_onnxruntime() {
    for name in MODELS {
        let (x, want) = reference(name);
        let g = onnx::load(path(name)).unwrap();
        let got = g.run(std::slice::from_ref(&x)).unwrap().remove(0);
        let d = max_abs_diff(&got, &want);
        let raw = raw_import(name).run(&[x]).unwrap().remove(0);
        let d_raw = max_abs_diff(&raw, &want);
        println!("{name}: max |hetensor - onnxruntime| = {d:.2e} (unsimplified {d_raw:.2e})");
        assert!(d < 1e-5 && d_raw < 1e-5, "{name}: {d} / {d_raw}");
        // Chunked runs (bounded intermediates) give the same words as one run of the batch.
        let x = reference(name).0;
        let many = ndarray::concatenate(
            ndarray::Axis(0),
            &(0..7).map(|_| x.view()).collect::<Vec<_>>(),
        )
        .unwrap()
        .mapv(|v| v * 0.9 + 0.01);
        let whole = g.run(std::slice::from_ref(&many)).unwrap().remove(0);
        for chunk in [1, 3, 1000] {
            let parts = g
                .run_chunked(std::slice::from_ref(&many), chunk)
                .unwrap()
                .remove(0);
            assert_eq!(parts, whole, "{name}, chunks of {chunk}");
        }
    }
}

fn polys(g: &Graph) -> Vec<Vec<f64>> {
    g.nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Poly(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn kinds(g: &Graph) -> Vec<&'static str> {
    g.nodes().iter().map(|n| n.op.kind()).collect()
}

#[test]
fn pytorch_polynomial_patterns_become_one_node() {
    // x*x and Pow(x, 2).
    let g = onnx::load(path("lenet1_square")).unwrap();
    assert_eq!(polys(&g), vec![vec![0.0, 0.0, 1.0]; 2]);
    // Pow, Mul, Mul, Add, Add (PyTorch's a*x**2 + b*x + c) fuse into 0.25 + 0.5x + 0.125x².
    let g = onnx::load(path("lenet1_quadratic")).unwrap();
    assert_eq!(polys(&g), vec![vec![0.25, 0.5, 0.125]; 2]);
    assert_eq!(
        kinds(&g),
        [
            "Conv2d", "Poly", "AvgPool", "Conv2d", "Poly", "AvgPool", "Reshape", "Linear",
            "AddConst"
        ]
    );
    assert_eq!(g.multiplicative_depth(), 2);
    assert_eq!(g.shape(g.outputs()[0]), &[10]);
}

#[test]
fn cryptonets_shape_and_batchnorm_folding() {
    let g = onnx::load(path("cryptonets")).unwrap();
    assert_eq!(
        kinds(&g),
        ["Conv2d", "Poly", "Reshape", "Linear", "Poly", "Linear"]
    );
    assert_eq!(g.shape(g.nodes()[0].output), &[5, 13, 13]);
    assert_eq!(g.shape(g.nodes()[2].output), &[845]);
    // The BatchNorm is folded into the convolution before it; the residual Add stays a
    // tensor-tensor sum; Concat, Transpose and pooling keep their places.
    let g = onnx::load(path("residual_bn")).unwrap();
    let k = kinds(&g);
    assert!(!k.contains(&"ChannelAffine"), "{k:?}");
    assert_eq!(k.iter().filter(|&&k| k == "Add").count(), 1, "{k:?}");
    for op in ["Concat", "Transpose", "GlobalAvgPool", "AvgPool"] {
        assert!(k.contains(&op), "{op} missing in {k:?}");
    }
}

#[test]
fn unsupported_op_names_the_node_and_the_replacement() {
    match onnx::load(path("relu_unsupported")) {
        Err(Error::UnsupportedOp { node, op, hint }) => {
            assert_eq!(op, "Relu");
            assert_eq!(node, "Relu_2");
            assert!(hint.contains("polynomial"), "{hint}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
    let e = onnx::load(path("relu_unsupported"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Relu_2") && e.contains("x²"), "{e}");
}

/// A one-node model `Conv(input, w)` around a hand-made weight tensor.
fn conv_model(w: proto::TensorProto) -> proto::ModelProto {
    one_node_model("Conv", vec![w], &[1, 1, 4, 4])
}

/// A one-node model `op(input, initializers...)` on an input of shape `input`.
fn one_node_model(
    op: &str,
    initializers: Vec<proto::TensorProto>,
    input: &[i64],
) -> proto::ModelProto {
    let dim = |v: i64| proto::Dimension {
        dim_value: Some(v),
        dim_param: None,
    };
    let info = |name: &str, dims: Vec<proto::Dimension>| proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type: 1,
                shape: Some(proto::TensorShapeProto { dim: dims }),
            }),
        }),
    };
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "test".into(),
        graph: Some(proto::GraphProto {
            node: vec![proto::NodeProto {
                input: std::iter::once("input".to_string())
                    .chain(initializers.iter().map(|t| t.name.clone()))
                    .collect(),
                output: vec!["y".into()],
                name: op.to_lowercase(),
                op_type: op.into(),
                ..Default::default()
            }],
            name: "g".into(),
            initializer: initializers,
            input: vec![info("input", input.iter().map(|&d| dim(d)).collect())],
            output: vec![info("y", vec![])],
        }),
    }
}

#[test]
fn tensors_must_hold_the_data_their_dims_claim() {
    let w = |dims: Vec<i64>, data: Vec<f32>| proto::TensorProto {
        dims,
        data_type: 1,
        float_data: data,
        name: "w".into(),
        ..Default::default()
    };
    let ok = conv_model(w(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0])).encode_to_vec();
    let g = onnx::from_bytes(&ok).unwrap();
    assert_eq!(g.shape(g.outputs()[0]), &[1, 3, 3]);
    // 2^62 elements claimed, 4 present: refused before anything is allocated.
    for dims in [
        vec![1 << 31, 1 << 31, 1, 1],
        vec![1, 1, 2, -2],
        vec![i64::MAX, 2, 1, 1],
    ] {
        let bytes = conv_model(w(dims.clone(), vec![1.0; 4])).encode_to_vec();
        assert!(
            matches!(onnx::from_bytes(&bytes), Err(Error::Decode(_))),
            "{dims:?}"
        );
    }
    // A kernel larger than the image is a shape error, not a panic.
    let big = conv_model(w(vec![1, 1, 5, 5], vec![0.5; 25])).encode_to_vec();
    assert!(matches!(onnx::from_bytes(&big), Err(Error::Shape(_))));
    // The file-size cap applies before decoding.
    let opts = onnx::LoadOptions { max_bytes: 1000 };
    assert!(matches!(
        onnx::load_with(path("cryptonets"), &opts),
        Err(Error::InputTooLarge {
            size: 1001,
            limit: 1000,
            ..
        })
    ));
}

/// BatchNormalization's four vectors must have one length: the fuzzer found a model whose
/// mismatched vectors panicked in the folding arithmetic (`ndarray`'s broadcast).
#[test]
fn batchnorm_vectors_of_different_lengths_are_refused() {
    let v = |name: &str, data: Vec<f32>| proto::TensorProto {
        dims: vec![data.len() as i64],
        data_type: 1,
        float_data: data,
        name: name.into(),
        ..Default::default()
    };
    let bn = |lens: [usize; 4]| {
        let [g, b, m, var] = lens.map(|l| vec![1.0f32; l]);
        one_node_model(
            "BatchNormalization",
            vec![v("g", g), v("b", b), v("m", m), v("v", var)],
            &[1, 2, 3, 3],
        )
        .encode_to_vec()
    };
    let ok = onnx::from_bytes(&bn([2, 2, 2, 2])).unwrap();
    assert_eq!(ok.shape(ok.outputs()[0]), &[2, 3, 3]);
    for lens in [
        [2, 3, 2, 2],
        [2, 2, 3, 2],
        [2, 2, 2, 3],
        [3, 2, 2, 2],
        [1, 2, 2, 2],
    ] {
        match onnx::from_bytes(&bn(lens)) {
            Err(Error::Model(m)) => assert!(m.contains("lengths"), "{m}"),
            other => panic!("{lens:?}: {:?}", other.map(|_| ())),
        }
    }
    // One length, but not the input's channel count.
    assert!(onnx::from_bytes(&bn([3, 3, 3, 3])).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Mutated model files (flipped bytes, truncations, insertions) decode to a graph or an
    /// error, never a panic; a graph that imports also runs or errors.
    #[test]
    fn mutated_models_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
        which in 0usize..2,
    ) {
        let name = ["residual_bn", "lenet1_quadratic"][which];
        let mut bytes = std::fs::read(path(name)).unwrap();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes[i] ^= 1 << (byte % 8),
            }
        }
        if which == 0 {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(g) = onnx::from_bytes(&bytes) {
            let shape: Vec<usize> = std::iter::once(1).chain(g.shape(g.inputs()[0]).iter().copied()).collect();
            if shape.iter().product::<usize>() <= 1 << 16 {
                let _ = g.run(&[ArrayD::zeros(IxDyn(&shape))]);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = onnx::from_bytes(&bytes);
    }
}
