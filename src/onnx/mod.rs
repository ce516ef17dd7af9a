//! ONNX import: a `.onnx` file (e.g. from `torch.onnx.export`) to a [`Graph`].
//!
//! ```no_run
//! let g = hetensor::onnx::load("tests/data/onnx/cryptonets.onnx")?;
//! let x = ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[2, 1, 28, 28]));
//! let logits = g.run(&[x])?; // the plaintext oracle of any encrypted evaluation
//! # Ok::<(), hetensor::Error>(())
//! ```
//!
//! * The protobuf wire format is decoded by prost ([`proto`] declares the part of the ONNX
//!   schema that is read). Files are untrusted: the file size is capped
//!   ([`LoadOptions::max_bytes`]) before anything is decoded, so decoding allocates at most a
//!   constant multiple of that; a tensor's element count must match the data the file holds
//!   before its array is allocated; every value's shape is bounded ([`graph::MAX_ELEMENTS`]).
//! * Ops map to the graph's HE op set (Conv, Gemm/MatMul, Add/Sub/Mul/Div by constants and
//!   between tensors, Pow, AveragePool, GlobalAveragePool, Flatten/Reshape/Transpose,
//!   BatchNormalization, Concat, Identity/Dropout, Constant); then [`passes::simplify`] folds
//!   BatchNorm into the preceding layer and fuses PyTorch's polynomial patterns (`x*x`,
//!   `Pow(x, 2)`, `a*x**2 + b*x + c`) into one polynomial node.
//! * Any other op is [`Error::UnsupportedOp`], naming the node and the HE-friendly
//!   replacement: nothing is substituted silently.

pub mod proto;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use ndarray::{Array1, Array2, Array4, ArrayD, Ix2, Ix4, IxDyn};
use prost::Message;

use crate::graph::{self, passes, Conv, Graph, Op, Pool, ValueId};
use crate::{Error, Result};
use proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

/// Limits for reading untrusted files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Largest file accepted, in bytes (default 64 MiB: HE-sized models are far smaller, the
    /// CryptoNets shape is 0.35 MB).
    pub max_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
        }
    }
}

/// Reads, imports and simplifies the model at `path` with the default [`LoadOptions`].
pub fn load(path: impl AsRef<Path>) -> Result<Graph> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with explicit limits.
pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Graph> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot open ONNX model {}: {e}", path.display()),
        ))
    })?;
    let mut bytes = Vec::new();
    file.take(opts.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| {
            // e.g. a directory: opening works on Linux, reading does not.
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read ONNX model {}: {e}", path.display()),
            ))
        })?;
    if bytes.len() as u64 > opts.max_bytes {
        return Err(Error::InputTooLarge {
            what: format!("ONNX model {}", path.display()),
            size: bytes.len() as u64,
            limit: opts.max_bytes,
        });
    }
    from_bytes(&bytes).map_err(|e| match e {
        Error::Decode(m) => Error::Decode(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Decodes, imports and simplifies a model held in memory (no size cap: the caller has
/// already allocated `bytes`).
pub fn from_bytes(bytes: &[u8]) -> Result<Graph> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::Decode(format!("not an ONNX model (protobuf: {e})")))?;
    passes::simplify(&import(&model)?)
}

/// Maps a decoded model to a [`Graph`], op by op, without simplifying it.
pub fn import(model: &ModelProto) -> Result<Graph> {
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(0);
    if opset < 7 {
        return Err(Error::Model(format!(
            "the model imports ONNX opset {opset}; hetensor reads opsets 7 and later (re-export with a newer opset_version)"
        )));
    }
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Decode("the model has no graph".into()))?;
    let mut im = Importer {
        graph: Graph::new(),
        env: HashMap::new(),
    };
    for t in &g.initializer {
        im.env.insert(t.name.clone(), Val::Const(tensor(t)?));
    }
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !im.env.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(Error::Model(format!(
            "hetensor imports models with one input tensor; this one has {}",
            inputs.len()
        )));
    };
    let shape = input_shape(input)?;
    let id = im.graph.add_input(&input.name, &shape)?;
    im.env.insert(input.name.clone(), Val::Value(id));
    for (i, n) in g.node.iter().enumerate() {
        im.node(i, n)?;
    }
    for o in &g.output {
        match im.env.get(&o.name) {
            Some(Val::Value(v)) => im.graph.add_output(*v)?,
            Some(Val::Const(_)) => {
                return Err(Error::Model(format!(
                    "output {:?} is a constant, not computed from the input",
                    o.name
                )))
            }
            None => {
                return Err(Error::Model(format!(
                    "output {:?} is produced by no node",
                    o.name
                )))
            }
        }
    }
    if im.graph.outputs().is_empty() {
        return Err(Error::Model("the model has no outputs".into()));
    }
    Ok(im.graph)
}

/// A named ONNX value: a constant (initializer, `Constant`, or folded) or a graph value.
#[derive(Clone, Debug)]
enum Val {
    Const(ArrayD<f64>),
    Value(ValueId),
}

struct Importer {
    graph: Graph,
    env: HashMap<String, Val>,
}

/// The HE-friendly replacement for an op that cannot be evaluated.
fn hint(op: &str) -> &'static str {
    match op {
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Gelu" | "Celu" | "Softplus"
        | "HardSwish" | "Mish" => {
            "is not a polynomial; replace it by x² (x*x) or a low-degree polynomial fit (e.g. hetensor::nn::PolyActivation::relu) and retrain"
        }
        "Sigmoid" | "Tanh" | "HardSigmoid" | "Softsign" => {
            "is not a polynomial; use a polynomial approximation (hetensor::nn::PolyActivation::sigmoid) written as Mul/Add/Pow"
        }
        "MaxPool" | "GlobalMaxPool" | "LpPool" => {
            "needs comparisons; use AveragePool / GlobalAveragePool"
        }
        "Softmax" | "LogSoftmax" | "ArgMax" => {
            "is monotone for classification; drop it from the exported model and apply it after decryption"
        }
        "Shape" | "Gather" | "Unsqueeze" | "Squeeze" | "Slice" | "Expand" => {
            "computes shapes at run time; export with static shapes and constant folding (torch.onnx.export(..., do_constant_folding=True)) or use x.flatten(1)"
        }
        "Div" => "divides by a tensor; only division by a constant is a linear map",
        "MatMul" => "multiplies two computed tensors; only products with constant weights are supported",
        _ => "is not in hetensor's HE op set (Conv, Gemm, MatMul, Add, Sub, Mul, Div by a constant, Pow with a small integer, AveragePool, GlobalAveragePool, Flatten, Reshape, Transpose, BatchNormalization, Concat, Identity, Dropout, Constant)",
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}

fn attr_ints<'a>(n: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    attr(n, name).map(|a| a.ints.as_slice())
}

fn attr_str(n: &NodeProto, name: &str) -> String {
    attr(n, name).map_or(String::new(), |a| {
        String::from_utf8_lossy(&a.s).into_owned()
    })
}

/// A tensor's elements as `f64`, after checking that the file holds exactly as many as its
/// dimensions say (nothing is allocated for a count the data does not back).
fn tensor(t: &TensorProto) -> Result<ArrayD<f64>> {
    let bad = |m: String| Err(Error::Decode(format!("tensor {:?}: {m}", t.name)));
    if t.data_location == 1 {
        return bad("external data files are not supported; save the model with its weights inside (onnx.save(..., save_as_external_data=False))".into());
    }
    let dims: Option<Vec<usize>> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
    let Some(dims) = dims else {
        return bad(format!("negative dimension in {:?}", t.dims));
    };
    let Some(count) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return bad(format!("dimensions {dims:?} overflow"));
    };
    let raw = |width: usize| -> Option<std::slice::ChunksExact<'_, u8>> {
        (t.raw_data.len() == count.checked_mul(width)? && !t.raw_data.is_empty())
            .then(|| t.raw_data.chunks_exact(width))
    };
    let data: Vec<f64> = match t.data_type {
        1 => match raw(4) {
            Some(c) => c
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            None if t.float_data.len() == count => t.float_data.iter().map(|&v| v as f64).collect(),
            None => return bad(format!("holds no {count} float elements")),
        },
        11 => match raw(8) {
            Some(c) => c
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
            None if t.double_data.len() == count => t.double_data.clone(),
            None => return bad(format!("holds no {count} double elements")),
        },
        7 => match raw(8) {
            Some(c) => c
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64)
                .collect(),
            None if t.int64_data.len() == count => t.int64_data.iter().map(|&v| v as f64).collect(),
            None => return bad(format!("holds no {count} int64 elements")),
        },
        6 => match raw(4) {
            Some(c) => c
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            None if t.int32_data.len() == count => t.int32_data.iter().map(|&v| v as f64).collect(),
            None => return bad(format!("holds no {count} int32 elements")),
        },
        other => {
            return bad(format!(
                "element type {other} is not float, double, int32 or int64"
            ))
        }
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::Model(format!(
            "tensor {:?} holds NaN or infinity",
            t.name
        )));
    }
    ArrayD::from_shape_vec(IxDyn(&dims), data).map_err(|e| Error::Decode(e.to_string()))
}

fn input_shape(v: &proto::ValueInfoProto) -> Result<Vec<usize>> {
    let tt = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    let dims = tt.and_then(|t| t.shape.as_ref()).map(|s| s.dim.as_slice());
    let bad = |m: &str| Error::Model(format!("input {:?}: {m}", v.name));
    match tt.map(|t| t.elem_type) {
        Some(1 | 10 | 11) => {}
        _ => return Err(bad("must be a float tensor")),
    }
    let Some([_batch, rest @ ..]) = dims else {
        return Err(bad("needs a known shape [batch, ...]"));
    };
    rest.iter()
        .map(|d| match d.dim_value {
            Some(v) if v > 0 => usize::try_from(v).map_err(|_| bad("dimension too large")),
            _ => Err(bad(
                "all dimensions but the batch must be fixed positive sizes",
            )),
        })
        .collect()
}

impl Importer {
    fn get(&self, n: &NodeProto, i: usize) -> Result<Option<&Val>> {
        match n.input.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self.env.get(name).map(Some).ok_or_else(|| {
                Error::Model(format!(
                    "node {:?} reads {name:?}, which no earlier node or initializer defines",
                    n.name
                ))
            }),
        }
    }

    fn value(&self, n: &NodeProto, i: usize) -> Result<ValueId> {
        match self.get(n, i)? {
            Some(Val::Value(v)) => Ok(*v),
            _ => Err(Error::Model(format!(
                "node {:?} ({}): input {i} must be computed from the model input",
                n.name, n.op_type
            ))),
        }
    }

    fn constant(&self, n: &NodeProto, i: usize) -> Result<Option<&ArrayD<f64>>> {
        match self.get(n, i)? {
            Some(Val::Const(c)) => Ok(Some(c)),
            None => Ok(None),
            Some(Val::Value(_)) => Err(Error::Model(format!(
                "node {:?} ({}): input {i} must be a constant (weights)",
                n.name, n.op_type
            ))),
        }
    }

    fn required(&self, n: &NodeProto, i: usize) -> Result<&ArrayD<f64>> {
        self.constant(n, i)?.ok_or_else(|| {
            Error::Model(format!(
                "node {:?} ({}): input {i} is missing",
                n.name, n.op_type
            ))
        })
    }

    fn push(&mut self, n: &NodeProto, op: Op, inputs: &[ValueId]) -> Result<Val> {
        Ok(Val::Value(self.graph.push(&n.name, op, inputs)?))
    }

    /// A constant operand of an element-wise op on `x`, in per-sample form: a leading unit
    /// batch axis (ONNX broadcasts over `[N, ...]`) is dropped.
    fn per_sample(&self, n: &NodeProto, x: ValueId, c: &ArrayD<f64>) -> Result<ArrayD<f64>> {
        let rank = self.graph.shape(x).len();
        if c.ndim() <= rank {
            return Ok(c.clone());
        }
        if c.ndim() == rank + 1 && c.shape()[0] == 1 {
            return Ok(c.clone().index_axis_move(ndarray::Axis(0), 0));
        }
        Err(Error::Shape(format!(
            "node {:?} ({}): constant {:?} would broadcast over the batch axis",
            n.name,
            n.op_type,
            c.shape()
        )))
    }

    fn unsupported(n: &NodeProto) -> Error {
        Error::UnsupportedOp {
            node: n.name.clone(),
            op: n.op_type.clone(),
            hint: hint(&n.op_type).to_string(),
        }
    }

    fn node(&mut self, index: usize, n: &NodeProto) -> Result<()> {
        let mut n = n.clone();
        if n.name.is_empty() {
            n.name = format!("#{index} {} -> {}", n.op_type, n.output.join(","));
        }
        let n = &n;
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(Self::unsupported(n));
        }
        let out = match n.op_type.as_str() {
            "Conv" => self.conv(n)?,
            "Gemm" => self.gemm(n)?,
            "MatMul" => {
                let x = self.value(n, 0)?;
                let w = match self.get(n, 1)? {
                    Some(Val::Const(w)) => w.clone(),
                    _ => return Err(Self::unsupported(n)),
                };
                let w = w
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| shape(n, "weight must be 2-D [in, out]"))?;
                let bias = Array1::zeros(w.ncols());
                self.push(
                    n,
                    Op::Linear {
                        weight: w.reversed_axes().as_standard_layout().into_owned(),
                        bias,
                    },
                    &[x],
                )?
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arith(n)?,
            "Pow" => {
                let x = self.value(n, 0)?;
                let e = self.required(n, 1)?;
                let p = e.iter().copied().next().filter(|_| e.len() == 1);
                match p {
                    Some(p) if p.fract() == 0.0 && (1.0..=8.0).contains(&p) => {
                        let mut c = vec![0.0; p as usize + 1];
                        c[p as usize] = 1.0;
                        self.push(n, Op::Poly(c), &[x])?
                    }
                    _ => {
                        return Err(Error::UnsupportedOp {
                            node: n.name.clone(),
                            op: "Pow".into(),
                            hint: "has an exponent other than a small positive integer (1 to 8); only polynomials can be evaluated".into(),
                        })
                    }
                }
            }
            "AveragePool" => {
                let x = self.value(n, 0)?;
                if attr_i(n, "ceil_mode", 0) != 0 {
                    return Err(shape(n, "ceil_mode=1 is not supported; pad explicitly"));
                }
                self.check_auto_pad(n)?;
                let k = pair(n, attr_ints(n, "kernel_shape"), None)?;
                let pool = Pool {
                    kernel: k,
                    stride: pair(n, attr_ints(n, "strides"), Some([1, 1]))?,
                    pads: pads(n)?,
                    count_include_pad: attr_i(n, "count_include_pad", 0) != 0,
                };
                self.push(n, Op::AvgPool(pool), &[x])?
            }
            "GlobalAveragePool" => {
                let x = self.value(n, 0)?;
                self.push(n, Op::GlobalAvgPool, &[x])?
            }
            "Flatten" => {
                let x = self.value(n, 0)?;
                if attr_i(n, "axis", 1) != 1 {
                    return Err(shape(n, "only Flatten(axis=1) keeps the batch axis apart"));
                }
                let len = self.graph.shape(x).iter().product();
                self.push(n, Op::Reshape(vec![len]), &[x])?
            }
            "Reshape" => self.reshape(n)?,
            "Transpose" => {
                let x = self.value(n, 0)?;
                let rank = self.graph.shape(x).len();
                let perm: Vec<i64> = match attr_ints(n, "perm") {
                    Some(p) => p.to_vec(),
                    None => (0..=rank as i64).rev().collect(),
                };
                if perm.first() != Some(&0) {
                    return Err(shape(n, "a transpose must keep the batch axis first"));
                }
                let perm: Option<Vec<usize>> = perm[1..]
                    .iter()
                    .map(|&p| usize::try_from(p).ok().and_then(|p| p.checked_sub(1)))
                    .collect();
                let perm = perm.ok_or_else(|| shape(n, "bad permutation"))?;
                self.push(n, Op::Transpose(perm), &[x])?
            }
            "BatchNormalization" => {
                let x = self.value(n, 0)?;
                if attr_i(n, "training_mode", 0) != 0 {
                    return Err(shape(n, "training_mode=1; export the model in eval() mode"));
                }
                let eps = attr_f(n, "epsilon", 1e-5) as f64;
                let vec = |i| -> Result<Array1<f64>> {
                    let c = self.required(n, i)?;
                    Ok(Array1::from_iter(c.iter().copied()))
                };
                let (gamma, beta, mean, var) = (vec(1)?, vec(2)?, vec(3)?, vec(4)?);
                let lens = [gamma.len(), beta.len(), mean.len(), var.len()];
                if lens.iter().any(|&l| l != lens[0]) {
                    return Err(Error::Model(format!(
                        "node {:?}: scale, bias, mean and variance have lengths {lens:?}, not one \
                         length (one value per channel)",
                        n.name
                    )));
                }
                if var.iter().any(|&v| v + eps <= 0.0) {
                    return Err(Error::Model(format!(
                        "node {:?}: variance + epsilon must be positive",
                        n.name
                    )));
                }
                let scale = &gamma / &var.mapv(|v| (v + eps).sqrt());
                let shift = &beta - &(&mean * &scale);
                self.push(n, Op::ChannelAffine { scale, shift }, &[x])?
            }
            "Concat" => {
                let xs: Vec<ValueId> = (0..n.input.len())
                    .map(|i| self.value(n, i))
                    .collect::<Result<_>>()?;
                let rank = xs.first().map_or(0, |x| self.graph.shape(*x).len()) as i64 + 1;
                let axis = attr_i(n, "axis", 1);
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis < 1 || axis >= rank {
                    return Err(shape(n, "Concat must not run along the batch axis"));
                }
                self.push(n, Op::Concat(axis as usize - 1), &xs)?
            }
            "Identity" | "Dropout" => self
                .get(n, 0)?
                .cloned()
                .ok_or_else(|| shape(n, "missing input"))?,
            "Constant" => {
                let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                    tensor(t)?
                } else if let Some(a) = attr(n, "value_float") {
                    ArrayD::from_elem(IxDyn(&[]), a.f as f64)
                } else if let Some(a) = attr(n, "value_int") {
                    ArrayD::from_elem(IxDyn(&[]), a.i as f64)
                } else if let Some(a) = attr(n, "value_floats") {
                    ArrayD::from_shape_vec(
                        IxDyn(&[a.floats.len()]),
                        a.floats.iter().map(|&v| v as f64).collect(),
                    )
                    .map_err(|e| Error::Decode(e.to_string()))?
                } else if let Some(a) = attr(n, "value_ints") {
                    ArrayD::from_shape_vec(
                        IxDyn(&[a.ints.len()]),
                        a.ints.iter().map(|&v| v as f64).collect(),
                    )
                    .map_err(|e| Error::Decode(e.to_string()))?
                } else {
                    return Err(shape(n, "Constant without a numeric value"));
                };
                Val::Const(c)
            }
            _ => return Err(Self::unsupported(n)),
        };
        let name = n
            .output
            .first()
            .ok_or_else(|| shape(n, "node has no output"))?;
        self.env.insert(name.clone(), out);
        Ok(())
    }

    fn check_auto_pad(&self, n: &NodeProto) -> Result<()> {
        match attr_str(n, "auto_pad").as_str() {
            "" | "NOTSET" | "VALID" => Ok(()),
            other => Err(shape(
                n,
                &format!("auto_pad={other} is not supported; export with explicit pads"),
            )),
        }
    }

    fn conv(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.value(n, 0)?;
        self.check_auto_pad(n)?;
        let w = self
            .required(n, 1)?
            .clone()
            .into_dimensionality::<Ix4>()
            .map_err(|_| shape(n, "weight must be 4-D [out, in/groups, kh, kw]"))?;
        let bias = match self.constant(n, 2)? {
            Some(b) => Array1::from_iter(b.iter().copied()),
            None => Array1::zeros(w.dim().0),
        };
        if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
            return Err(shape(n, "dilated convolutions are not supported"));
        }
        let groups = usize::try_from(attr_i(n, "group", 1)).map_err(|_| shape(n, "bad group"))?;
        let cv = Conv {
            weight: Array4::from(w),
            bias,
            stride: pair(n, attr_ints(n, "strides"), Some([1, 1]))?,
            pads: pads(n)?,
            groups,
        };
        self.push(n, Op::Conv2d(cv), &[x])
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.value(n, 0)?;
        if attr_i(n, "transA", 0) != 0 {
            return Err(shape(n, "transA=1 would mix the batch axis"));
        }
        let b = self
            .required(n, 1)?
            .clone()
            .into_dimensionality::<Ix2>()
            .map_err(|_| shape(n, "B must be 2-D"))?;
        let alpha = attr_f(n, "alpha", 1.0) as f64;
        let beta = attr_f(n, "beta", 1.0) as f64;
        let w: Array2<f64> = if attr_i(n, "transB", 0) != 0 {
            b
        } else {
            b.reversed_axes()
        };
        let w = w.as_standard_layout().into_owned() * alpha;
        let out = w.nrows();
        let bias = match self.constant(n, 2)? {
            Some(c) if c.len() == out || c.len() == 1 => {
                let c: Vec<f64> = c.iter().copied().collect();
                Array1::from_iter((0..out).map(|i| beta * c[i % c.len()]))
            }
            Some(c) => return Err(shape(n, &format!("C {:?} is not [{out}]", c.shape()))),
            None => Array1::zeros(out),
        };
        self.push(n, Op::Linear { weight: w, bias }, &[x])
    }

    fn arith(&mut self, n: &NodeProto) -> Result<Val> {
        let op = n.op_type.as_str();
        let (a, b) = (
            self.get(n, 0)?
                .cloned()
                .ok_or_else(|| shape(n, "missing input"))?,
            self.get(n, 1)?
                .cloned()
                .ok_or_else(|| shape(n, "missing input"))?,
        );
        let both =
            |f: fn(&ArrayD<f64>, &ArrayD<f64>) -> ArrayD<f64>, x: &ArrayD<f64>, y: &ArrayD<f64>| {
                graph::broadcast(x.shape(), y.shape())
                    .map(|_| Val::Const(f(x, y)))
                    .ok_or_else(|| shape(n, "constants do not broadcast"))
            };
        match (a, b) {
            (Val::Const(x), Val::Const(y)) => match op {
                "Add" => both(|x, y| x + y, &x, &y),
                "Sub" => both(|x, y| x - y, &x, &y),
                "Mul" => both(|x, y| x * y, &x, &y),
                _ => both(|x, y| x / y, &x, &y),
            },
            (Val::Value(x), Val::Const(c)) => {
                let c = self.per_sample(n, x, &c)?;
                let op = match op {
                    "Add" => Op::AddConst(c),
                    "Sub" => Op::AddConst(-c),
                    "Mul" => Op::MulConst(c),
                    _ if c.iter().all(|&v| v != 0.0) => Op::MulConst(c.mapv(|v| 1.0 / v)),
                    _ => return Err(shape(n, "division by zero")),
                };
                self.push(n, op, &[x])
            }
            (Val::Const(c), Val::Value(x)) => {
                let c = self.per_sample(n, x, &c)?;
                match op {
                    "Add" => self.push(n, Op::AddConst(c), &[x]),
                    "Mul" => self.push(n, Op::MulConst(c), &[x]),
                    "Sub" => {
                        let neg = self.graph.push(
                            &format!("{} (negate)", n.name),
                            Op::MulConst(ArrayD::from_elem(IxDyn(&[]), -1.0)),
                            &[x],
                        )?;
                        self.push(n, Op::AddConst(c), &[neg])
                    }
                    _ => Err(Self::unsupported(n)),
                }
            }
            (Val::Value(x), Val::Value(y)) => match op {
                "Add" => self.push(n, Op::Add, &[x, y]),
                "Sub" => self.push(n, Op::Sub, &[x, y]),
                "Mul" => self.push(n, Op::Mul, &[x, y]),
                _ => Err(Self::unsupported(n)),
            },
        }
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.value(n, 0)?;
        let target = self.required(n, 1)?.clone();
        let xs = self.graph.shape(x).to_vec();
        let total: usize = xs.iter().product();
        let t: Vec<i64> = target.iter().map(|&v| v as i64).collect();
        // The first entry is the batch: 0 (copy), -1, or the batch size the model was traced
        // with; the per-sample shape is the rest.
        let Some((_, rest)) = t.split_first() else {
            return Err(shape(n, "empty target shape"));
        };
        let mut dims = Vec::with_capacity(rest.len());
        let mut infer = None;
        for (i, &d) in rest.iter().enumerate() {
            dims.push(match d {
                0 if attr_i(n, "allowzero", 0) == 0 => *xs
                    .get(i)
                    .ok_or_else(|| shape(n, "0 copies a missing axis"))?,
                -1 if infer.is_none() => {
                    infer = Some(i);
                    1
                }
                d if d > 0 => usize::try_from(d).map_err(|_| shape(n, "dimension too large"))?,
                _ => return Err(shape(n, &format!("bad target shape {t:?}"))),
            });
        }
        if let Some(i) = infer {
            let known: usize = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(0);
            if known == 0 || !total.is_multiple_of(known) {
                return Err(shape(n, &format!("cannot reshape {xs:?} to {t:?}")));
            }
            dims[i] = total / known;
        }
        self.push(n, Op::Reshape(dims), &[x])
    }
}

fn shape(n: &NodeProto, m: &str) -> Error {
    Error::Shape(format!("node {:?} ({}): {m}", n.name, n.op_type))
}

fn pair(n: &NodeProto, v: Option<&[i64]>, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
    match (v, default) {
        (Some(&[a, b]), _) if a > 0 && b > 0 => Ok([a as usize, b as usize]),
        (None, Some(d)) => Ok(d),
        _ => Err(shape(n, "expects two positive sizes (2-D images)")),
    }
}

/// ONNX pads `[y_begin, x_begin, y_end, x_end]` = `[top, left, bottom, right]`.
fn pads(n: &NodeProto) -> Result<[usize; 4]> {
    match attr_ints(n, "pads") {
        None => Ok([0; 4]),
        Some(&[a, b, c, d]) if [a, b, c, d].iter().all(|&p| (0..=1 << 16).contains(&p)) => {
            Ok([a as usize, b as usize, c as usize, d as usize])
        }
        Some(_) => Err(shape(n, "pads must be four non-negative sizes")),
    }
}
