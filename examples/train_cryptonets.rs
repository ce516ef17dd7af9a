//! Trains the CryptoNets-shaped network (conv 5×5 stride 2 padding 1, 5 maps → x² → fc 845→100
//! → x² → fc 100→10) on the 10,000 MNIST training digits in `data/mnist` (plaintext) and
//! writes it as ONNX (float32 weights, opset 17), the way a PyTorch user would bring a model to
//! `hetensor infer`:
//!
//! ```text
//! cargo run --release --example train_cryptonets -- [--out data/cryptonets.onnx] [--epochs N]
//! hetensor infer --model data/cryptonets.onnx
//! ```
//!
//! The recipe is LeNet-1's ([`TrainConfig::lenet1`], fewer epochs), then the square activations
//! are balanced to inputs of about ±3 on the training digits (`Sequential::balance_squares`).
//! Before writing, the file is read back with `hetensor::onnx::load` and its interpreter must
//! match the trained model on the test digits (up to float32 rounding of the weights).

use std::process::ExitCode;

use hetensor::nn::train::{train, TrainConfig};
use hetensor::nn::{mnist, Conv2d, Flatten, Layer, Linear, Sequential, Square};
use hetensor::onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use hetensor::{Error, Result};
use prost::Message;
use rand::SeedableRng;

const FLOAT: i32 = 1;

fn float_tensor(name: &str, dims: &[usize], values: impl Iterator<Item = f64>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: values.flat_map(|v| (v as f32).to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            dim_value: *d,
            dim_param: d.is_none().then(|| "N".to_string()),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

/// The ONNX model of a `Sequential` of Conv2d, Square, Flatten and Linear layers on
/// `[N, 1, 28, 28]` inputs.
fn to_onnx(model: &Sequential) -> Result<ModelProto> {
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    let mut x = "input".to_string();
    for (name, layer) in model.iter() {
        let out = format!("{name}_out");
        let node = |op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        };
        nodes.push(match layer {
            Layer::Conv2d(c) => {
                let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
                inits.push(float_tensor(&w, c.weight.shape(), c.weight.iter().copied()));
                inits.push(float_tensor(&b, c.bias.shape(), c.bias.iter().copied()));
                let k = c.kernel as i64;
                node(
                    "Conv",
                    vec![x.clone(), w, b],
                    vec![
                        ints("kernel_shape", &[k, k]),
                        ints("strides", &[c.stride as i64; 2]),
                        ints("pads", &[c.padding as i64; 4]),
                    ],
                )
            }
            Layer::Square(_) => node("Mul", vec![x.clone(), x.clone()], vec![]),
            Layer::Flatten(_) => node("Flatten", vec![x.clone()], vec![int("axis", 1)]),
            Layer::Linear(l) => {
                let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
                inits.push(float_tensor(&w, l.weight.shape(), l.weight.iter().copied()));
                inits.push(float_tensor(&b, l.bias.shape(), l.bias.iter().copied()));
                node("Gemm", vec![x.clone(), w, b], vec![int("transB", 1)])
            }
            other => {
                return Err(Error::Model(format!(
                    "{} is not written by this example",
                    other.kind()
                )))
            }
        });
        x = out;
    }
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "hetensor examples/train_cryptonets.rs".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "cryptonets".into(),
            initializer: inits,
            input: vec![value("input", &[None, Some(1), Some(28), Some(28)])],
            output: vec![value(&x, &[None, Some(10)])],
        }),
    })
}

fn cryptonets(seed: u64) -> Result<Sequential> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut conv = Conv2d::new(1, 5, 5, 2, 1)?;
    conv.init_uniform(&mut rng, 1.0 / 5.0);
    let mut fc1 = Linear::new(845, 100)?;
    fc1.init_uniform(&mut rng, 1.0 / 845f64.sqrt());
    let mut fc2 = Linear::new(100, 10)?;
    fc2.init_uniform(&mut rng, 1.0 / 10.0);
    Sequential::new()
        .with("conv", conv)?
        .with("act1", Square)?
        .with("flatten", Flatten)?
        .with("fc1", fc1)?
        .with("act2", Square)?
        .with("fc2", fc2)
}

fn run(out: &str, epochs: usize) -> Result<()> {
    let train_set = mnist::load_train(mnist::DEFAULT_DIR)?;
    let test = mnist::load_test(mnist::DEFAULT_DIR)?;
    let mut cfg = TrainConfig::lenet1();
    cfg.epochs = epochs;
    let mut model = cryptonets(cfg.seed)?;
    train(&mut model, &train_set, Some(&test), &cfg)?;
    model.balance_squares(&train_set.inputs, 3.0)?;
    println!("test accuracy: {:.2}%", 100.0 * model.accuracy(&test)?);
    let bytes = to_onnx(&model)?.encode_to_vec();
    std::fs::write(out, &bytes)?;
    // The file as hetensor reads it must be the trained model (float32 weights).
    let g = hetensor::onnx::load(out)?;
    let x = test
        .inputs
        .slice(ndarray::s![0..1000, .., .., ..])
        .to_owned()
        .into_dyn();
    let want = model.forward(&x)?;
    let got = g.run(&[x])?.remove(0);
    let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!(
        "wrote {out} ({} bytes); read back: max |difference| {err:.1e} on 1,000 digits",
        bytes.len()
    );
    if err > 1e-3 {
        return Err(Error::Model(format!("the written model differs by {err}")));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut out, mut epochs) = ("data/cryptonets.onnx".to_string(), 10usize);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--out", Some(v)) => out = v,
            ("--epochs", Some(v)) => match v.parse() {
                Ok(e) if e > 0 => epochs = e,
                _ => {
                    eprintln!("--epochs: a whole number ≥ 1");
                    return ExitCode::FAILURE;
                }
            },
            _ => {
                eprintln!("usage: train_cryptonets [--out FILE] [--epochs N]");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(&out, epochs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
