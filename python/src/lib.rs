//! Python bindings of hetensor: contexts, batched encrypted tensors over numpy arrays, pickling
//! through the compact format, and models (ONNX or the bundled LeNet-1) run encrypted. Every
//! heavy call releases the GIL and runs on this module's rayon pool.

use std::sync::{Arc, Mutex};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod context;
mod kernel;
mod model;
mod tensor;

create_exception!(
    hetensor,
    HetensorError,
    PyException,
    "Base class of every hetensor error."
);
create_exception!(
    hetensor,
    ParameterError,
    HetensorError,
    "Parameters that cannot work, are insecure, or differ between operands."
);
create_exception!(hetensor, LevelError, HetensorError, "CKKS levels or scales that do not fit: out of levels, scale overflow, level or scale mismatch.");
create_exception!(
    hetensor,
    DecodeError,
    HetensorError,
    "Serialized bytes that are malformed, truncated or for other parameters."
);
create_exception!(
    hetensor,
    KeyMismatchError,
    HetensorError,
    "Objects of different key sets combined, or a key that this context does not hold."
);
create_exception!(
    hetensor,
    ShapeError,
    HetensorError,
    "Shapes or batch sizes that do not fit together, or more values than slots."
);
create_exception!(
    hetensor,
    NoiseBudgetError,
    HetensorError,
    "A BFV result with no noise budget left: its decryption would be wrong."
);
create_exception!(
    hetensor,
    ModelError,
    HetensorError,
    "A model that cannot be loaded or run encrypted."
);

/// Rust's allocations (ciphertexts) go to mimalloc, as in the CLI (see `hetensor::alloc`);
/// Python's objects keep Python's allocator.
#[global_allocator]
static GLOBAL: hetensor::alloc::MiMalloc = hetensor::alloc::MiMalloc;

/// Maps the crate's typed error to the exception hierarchy, keeping the message.
pub(crate) fn to_py(e: hetensor::Error) -> PyErr {
    use hetensor::Error as E;
    let msg = e.to_string();
    match e {
        E::InvalidParameters(_) | E::InsecureParameters { .. } | E::ParameterMismatch(_) => {
            ParameterError::new_err(msg)
        }
        E::LevelMismatch { .. }
        | E::ScaleMismatch { .. }
        | E::OutOfLevels { .. }
        | E::TooDeep { .. }
        | E::ScaleOverflow(_) => LevelError::new_err(msg),
        ref d if d.is_decode_failure() => DecodeError::new_err(msg),
        E::InputTooLarge { .. } => DecodeError::new_err(msg),
        E::KeyMismatch(_) | E::MissingGaloisKey { .. } => KeyMismatchError::new_err(msg),
        E::Shape(_) | E::InputShape { .. } | E::TooManyValues { .. } | E::CiphertextSize(_) => {
            ShapeError::new_err(msg)
        }
        E::NoiseBudgetExhausted { .. } => NoiseBudgetError::new_err(msg),
        E::Model(_) | E::UnsupportedOp { .. } | E::MissingWeight { .. } | E::WeightShape { .. } => {
            ModelError::new_err(msg)
        }
        // Python's own: `except FileNotFoundError` / `OSError` work as for `open`.
        E::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            pyo3::exceptions::PyFileNotFoundError::new_err(msg)
        }
        E::Io(_) => pyo3::exceptions::PyOSError::new_err(msg),
        _ => HetensorError::new_err(msg),
    }
}

/// The pool every heavy call runs on, with the process id that built it: a child made by
/// `fork` inherits the parent's pool without its threads, so it builds its own.
static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

/// A pool of `threads` threads (`None`: one per core); a count out of bounds is a `ValueError`.
fn build_pool(threads: Option<usize>) -> PyResult<Arc<rayon::ThreadPool>> {
    hetensor::threads::thread_pool(threads)
        .map(Arc::new)
        .map_err(value_error)
}

/// `InvalidInput` (a bad count) as Python's `ValueError`, anything else as usual.
fn value_error(e: hetensor::Error) -> PyErr {
    match e {
        hetensor::Error::InvalidInput(why) => pyo3::exceptions::PyValueError::new_err(why),
        other => to_py(other),
    }
}

fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((p, pool)) = guard.as_ref() {
        if *p == pid {
            return Ok(pool.clone());
        }
    }
    // None = rayon's default: RAYON_NUM_THREADS, else one thread per core.
    let threads = match std::env::var("HETENSOR_NUM_THREADS") {
        Ok(v) => Some(
            hetensor::threads::parse_thread_count("HETENSOR_NUM_THREADS", &v)
                .map_err(value_error)?,
        ),
        Err(_) => None,
    };
    let fresh = build_pool(threads)?;
    *guard = Some((pid, fresh.clone()));
    Ok(fresh)
}

/// Runs `f` without the GIL on the module's pool and maps its error.
pub(crate) fn heavy<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> hetensor::Result<T> + Send,
) -> PyResult<T> {
    let pool = pool()?;
    py.allow_threads(|| pool.install(f)).map_err(to_py)
}

/// Runs `f` without the GIL on the calling thread, for element-wise work on one ciphertext
/// (the CPU backend runs such passes sequentially): handing ~0.4 MB of additions to the pool
/// and waiting for it cost more than the additions (~25 % of a Python `add` in `perf`).
pub(crate) fn light<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> hetensor::Result<T> + Send,
) -> PyResult<T> {
    py.allow_threads(f).map_err(to_py)
}

/// Sets the number of threads hetensor computes with in this process (default: one per core,
/// or `HETENSOR_NUM_THREADS`). Worker processes sharing a machine should split the cores.
#[pyfunction]
fn set_num_threads(threads: usize) -> PyResult<()> {
    let fresh = build_pool(Some(threads))?;
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::process::id(), fresh));
    Ok(())
}

/// The rotation steps whose keys let `sum(axis=0)` over `width` samples run in radix-`radix`
/// rounds (`j·radix^k`, `0 < j < radix`): for radix 4 the powers of two and `3·4^k`, which
/// halve the key switches' shared work; what `Context.ckks` makes by default for all slots.
/// Pass it as `rotations=` to make keys for narrower sums only.
#[pyfunction]
#[pyo3(signature = (width, radix=4))]
fn sum_rotations(width: usize, radix: usize) -> Vec<i64> {
    hetensor::ckks::CkksContext::sum_steps(width, radix)
}

/// The number of threads hetensor computes with in this process.
#[pyfunction]
fn get_num_threads() -> PyResult<usize> {
    Ok(pool()?.current_num_threads())
}

#[pymodule]
fn _hetensor(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: at import, before this module has started any thread (the pool is built on the
    // first heavy call).
    unsafe { hetensor::alloc::keep_freed_memory() };
    let py = m.py();
    m.add("HetensorError", py.get_type::<HetensorError>())?;
    m.add("ParameterError", py.get_type::<ParameterError>())?;
    m.add("LevelError", py.get_type::<LevelError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("KeyMismatchError", py.get_type::<KeyMismatchError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("NoiseBudgetError", py.get_type::<NoiseBudgetError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(sum_rotations, m)?)?;
    m.add_class::<context::Context>()?;
    m.add_class::<tensor::CKKSTensor>()?;
    m.add_class::<tensor::BFVTensor>()?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(tensor::_tensor_from_bytes, m)?)?;
    Ok(())
}
