//! Weight import/export in the [safetensors](https://github.com/huggingface/safetensors)
//! format.
//!
//! # Tensor names
//! Each parameter is stored as `"{layer name}.{param}"` with `param` ∈ {`weight`, `bias`}, in
//! PyTorch's layout, i.e. exactly the keys of a PyTorch `state_dict`. For
//! [`Sequential::lenet1`]:
//!
//! | name          | shape             |
//! |---------------|-------------------|
//! | `conv1.weight`| `[4, 1, 5, 5]`    |
//! | `conv1.bias`  | `[4]`             |
//! | `conv2.weight`| `[12, 4, 5, 5]`   |
//! | `conv2.bias`  | `[12]`            |
//! | `fc.weight`   | `[10, 192]`       |
//! | `fc.bias`     | `[10]`            |
//!
//! which is what `safetensors.torch.save_file(model.state_dict(), path)` writes for a PyTorch
//! module with attributes `conv1`, `conv2`, `fc` (see `scripts/export_pytorch_lenet1.py`).
//!
//! # Rules when loading
//! * dtype `F32` or `F64` (converted to `f64`); anything else is rejected;
//! * every parameter of the model must be present with exactly its shape;
//! * tensors the model does not have are rejected (they usually mean a different
//!   architecture or a naming mismatch);
//! * NaN or infinite values are rejected;
//! * on any error the model is left unchanged.
//!
//! All failures are [`Error::Model`] with a message naming the tensor.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::Sequential;
use crate::{Error, Result};

/// Path of the trained LeNet-1 shipped with the repository (absolute, fixed at build time).
pub const LENET1_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lenet1.safetensors");

/// The trained LeNet-1 weights, embedded in the library.
pub const LENET1_BYTES: &[u8] = include_bytes!("../../data/lenet1.safetensors");

/// Element type used when saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DType {
    /// 32-bit floats (what PyTorch produces by default; values are rounded).
    F32,
    /// 64-bit floats (exact round trip).
    #[default]
    F64,
}

/// Serializes every parameter of `model` (names as in the module docs) to safetensors bytes.
pub fn to_bytes(model: &Sequential, dtype: DType) -> Result<Vec<u8>> {
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, p) in model.named_params() {
        let shape = p.shape().to_vec();
        let data: Vec<u8> = match dtype {
            DType::F64 => p.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F32 => p.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        };
        blobs.push((name, shape, data));
    }
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    };
    let views = blobs
        .iter()
        .map(|(n, s, d)| {
            TensorView::new(st_dtype, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Model(format!("cannot serialize {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // A single metadata entry: safetensors takes a HashMap, whose order is random, and one
    // entry keeps the file byte-for-byte reproducible.
    let mut meta = HashMap::new();
    meta.insert(LAYERS_KEY.to_string(), layer_list(model));
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Model(format!("cannot serialize weights: {e}")))
}

/// Metadata key under which hetensor records a model's layers (`name:Kind,...`).
const LAYERS_KEY: &str = "hetensor.nn.layers";

/// The architecture name `scripts/export_pytorch_lenet1.py` writes as metadata `arch`.
pub const LENET1_ARCH: &str = "lenet1-square";

fn layer_list(model: &Sequential) -> String {
    model
        .iter()
        .map(|(n, l)| format!("{n}:{}", l.kind()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The architecture safetensors bytes name in their metadata: `arch` (as PyTorch exports
/// write it), else hetensor's layer list; `None` if neither is there.
pub fn architecture(bytes: &[u8]) -> Result<Option<String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Model(format!("not a valid safetensors file: {e}")))?;
    let m = meta.metadata().clone().unwrap_or_default();
    Ok(m.get("arch").or_else(|| m.get(LAYERS_KEY)).cloned())
}

/// [`Sequential::lenet1`] with the weights of a file whose metadata names that architecture
/// (`arch` = [`LENET1_ARCH`], or the layer list hetensor writes). Tensors alone do not define
/// a model: a LeNet-1-shaped file of another network (another activation) would load and
/// compute something else, so any other file is refused.
pub fn load_lenet1(path: impl AsRef<Path>) -> Result<Sequential> {
    let path = path.as_ref();
    let mut model = Sequential::lenet1();
    let bytes = read_bounded(path, max_file_bytes(&model))?;
    let arch = architecture(&bytes).map_err(|e| with_path(path, e))?;
    if arch.as_deref() != Some(LENET1_ARCH) && arch.as_deref() != Some(&layer_list(&model)) {
        return Err(Error::Model(format!(
            "{}: the safetensors metadata names {} rather than the bundled architecture (arch = \"{LENET1_ARCH}\", LeNet-1 with x² activations, as scripts/export_pytorch_lenet1.py writes); for any other model export it to ONNX and run `hetensor infer --model model.onnx`",
            path.display(),
            arch.map_or("no architecture".to_string(), |a| format!("{a:?}"))
        )));
    }
    load_from_bytes(&mut model, &bytes).map_err(|e| with_path(path, e))?;
    Ok(model)
}

fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Model(m) => Error::Model(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Writes every parameter of `model` to a safetensors file.
pub fn save(model: &Sequential, path: impl AsRef<Path>, dtype: DType) -> Result<()> {
    let bytes = to_bytes(model, dtype)?;
    std::fs::write(path.as_ref(), bytes)?;
    Ok(())
}

/// Room for a safetensors header (JSON names, shapes, offsets, metadata) beyond the data.
const HEADER_ALLOWANCE: u64 = 1 << 20;

/// The largest weights file that can hold `model`'s parameters: every value as `F64` plus
/// `HEADER_ALLOWANCE` for the header. A larger file cannot be valid (tensors the model does
/// not have are refused), so it is refused before it is read.
pub fn max_file_bytes(model: &Sequential) -> u64 {
    let values: u64 = model
        .named_params()
        .iter()
        .map(|(_, p)| p.len() as u64)
        .sum();
    values.saturating_mul(8).saturating_add(HEADER_ALLOWANCE)
}

/// Loads parameters from safetensors bytes into `model` (rules in the module docs). More
/// bytes than [`max_file_bytes`] are refused unread.
pub fn load_from_bytes(model: &mut Sequential, bytes: &[u8]) -> Result<()> {
    let max = max_file_bytes(model);
    if bytes.len() as u64 > max {
        return Err(Error::Model(format!(
            "{} bytes of weights, more than the {max} that this model's parameters can take",
            bytes.len()
        )));
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Model(format!("not a valid safetensors file: {e}")))?;
    let mut updated = model.clone();
    let mut used = Vec::new();
    for i in 0..updated.len() {
        let lname = updated.names()[i].clone();
        let layer = &mut updated.layers_mut()[i];
        let pnames = layer.param_names();
        for (pname, mut dst) in pnames.iter().zip(layer.params_mut()) {
            let key = format!("{lname}.{pname}");
            let t = st.tensor(&key).map_err(|_| Error::MissingWeight {
                name: key.clone(),
                available: sorted_names(&st),
            })?;
            if t.shape() != dst.shape() {
                return Err(Error::WeightShape {
                    name: key,
                    expected: dst.shape().to_vec(),
                    got: t.shape().to_vec(),
                });
            }
            let values = decode(&key, &t)?;
            if let Some((j, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::Model(format!(
                    "tensor {key:?} holds a non-finite value ({v}) at flat index {j}"
                )));
            }
            for (d, v) in dst.iter_mut().zip(values) {
                *d = v;
            }
            used.push(key);
        }
    }
    let mut extra: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !used.iter().any(|u| u == n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(Error::Model(format!(
            "the weights file has tensors the model does not: {extra:?} (model parameters: {used:?})"
        )));
    }
    *model = updated;
    Ok(())
}

/// Loads parameters from a safetensors file into `model` (rules in the module docs).
pub fn load(model: &mut Sequential, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = read_bounded(path, max_file_bytes(model))?;
    load_from_bytes(model, &bytes).map_err(|e| with_path(path, e))
}

/// The bytes of a weights file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let cannot = |e: std::io::Error| {
        Error::Model(format!("cannot read weights file {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    if len > max {
        return Err(Error::Model(format!(
            "{}: {len} bytes, more than the {max} that this model's parameters can take",
            path.display()
        )));
    }
    // At most one byte past the limit, should the file grow after the check.
    crate::data::read_growing(&mut std::io::Read::take(file, max + 1), max + 1, len).map_err(cannot)
}

/// [`Sequential::lenet1`] with the trained weights shipped in `data/lenet1.safetensors`
/// (embedded in the library, see [`LENET1_BYTES`]).
pub fn pretrained_lenet1() -> Result<Sequential> {
    let mut m = Sequential::lenet1();
    load_from_bytes(&mut m, LENET1_BYTES)?;
    Ok(m)
}

fn sorted_names(st: &SafeTensors<'_>) -> String {
    let mut n = st.names();
    n.sort_unstable();
    format!("{n:?}")
}

fn decode(key: &str, t: &TensorView<'_>) -> Result<Vec<f64>> {
    let data = t.data();
    match t.dtype() {
        Dtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()),
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        other => Err(Error::Model(format!(
            "tensor {key:?} has dtype {other:?}; only F32 and F64 are supported"
        ))),
    }
}
