//! `hetensor.Model`: a graph (an ONNX file, or the bundled LeNet-1) planned once by the Rust
//! lowering and run encrypted on a `CKKSTensor` (CKKS, batched: one sample per slot).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hetensor::ckks::CkksContext;
use hetensor::graph::Graph;
use hetensor::lower::{choose_ckks_params, sequential_graph, CkksBatched, Plan};
use hetensor::nn::{weights, Sequential};
use hetensor::progress::Progress;
use hetensor::tensor::CipherTensor;
use hetensor::{onnx, Error};
use numpy::{IntoPyArray, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::context::{self, Context, Scheme};
use crate::kernel::Kernel;
use crate::tensor::{CKKSTensor, Core};
use crate::{heavy, to_py};

/// The output bound `Model.lenet1()` runs with: about twice its largest logit on the MNIST test set
/// (23.4).
const LENET1_OUTPUT_BOUND: f64 = 50.0;

/// A model that runs on encrypted batches (CKKS, batched layout: one sample per slot).
#[pyclass(frozen, module = "hetensor")]
pub struct Model {
    graph: Graph,
    /// The network the graph was built from, for the bundled model: `forward` runs it, as
    /// `hetensor mnist` runs its reference, chunked in parallel on numpy's buffer.
    net: Option<Sequential>,
    plan: Plan,
    /// The output bound `__call__` uses by default: the bundled model's, or the last
    /// `context(calibration)`'s (twice the largest calibration output).
    bound: Mutex<Option<f64>>,
    what: String,
}

impl Model {
    fn planned(
        graph: Graph,
        net: Option<Sequential>,
        bound: Option<f64>,
        what: String,
    ) -> hetensor::Result<Self> {
        Ok(Self {
            plan: Plan::new(&graph)?,
            graph,
            net,
            bound: Mutex::new(bound),
            what,
        })
    }

    fn bound(&self) -> Option<f64> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Model {
    /// LeNet-1 with square activations and its trained weights (bundled): input
    /// `[batch, 1, 28, 28]` in [0, 1], output 10 logits. Needs `model.levels` levels, e.g.
    /// `Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[])`.
    #[staticmethod]
    fn lenet1() -> PyResult<Self> {
        let build = || {
            let net = weights::pretrained_lenet1()?;
            let graph = sequential_graph(&net, &[1, 28, 28])?;
            Self::planned(
                graph,
                Some(net),
                Some(LENET1_OUTPUT_BOUND),
                "LeNet-1".into(),
            )
        };
        build().map_err(to_py)
    }

    /// Loads an ONNX model (the ops `hetensor infer` lowers: Conv, Gemm/MatMul, polynomial
    /// activations, average pooling, BatchNorm, Add, reshapes; see the README) and plans its
    /// encrypted evaluation. An op the lowering cannot run encrypted (ReLU, max pooling) is a
    /// `ModelError` here, not later; a missing file is a `FileNotFoundError`. Pick parameters
    /// with `model.context(calibration)`.
    #[staticmethod]
    fn from_onnx(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        heavy(py, || {
            let graph = onnx::load(&path)?;
            Self::planned(graph, None, None, path.display().to_string())
        })
    }

    /// A fresh CKKS key set (with its secret key) whose parameters fit this model, chosen as
    /// `hetensor infer` does from plaintext `calibration` samples `[n, *input_shape]`: the
    /// plan's depth, the smallest 128-bit ring at scale 2^25..2^29, and a base modulus that
    /// holds the values the calibration set reaches. Also sets the output bound `model(x)`
    /// uses to twice the largest calibration output. `rotations` as for `Context.ckks`
    /// (default none: the batched layout never rotates).
    #[pyo3(signature = (calibration, rotations=None))]
    fn context(
        &self,
        py: Python<'_>,
        calibration: PyReadonlyArrayDyn<'_, f64>,
        rotations: Option<Vec<i64>>,
    ) -> PyResult<Context> {
        let calib = calibration.as_array().to_owned();
        let (inner, bound) = heavy(py, || {
            if calib.ndim() < 1 || calib.shape()[1..] != *self.plan.input_shape() {
                return Err(Error::Shape(format!(
                    "calibration samples of shape {:?}; the model takes [n, {:?}]",
                    calib.shape(),
                    self.plan.input_shape()
                )));
            }
            let (params, choice) = choose_ckks_params(&self.plan, &self.graph, &calib)?;
            let ctx = CkksContext::new(params)?;
            let inner = context::ckks_key_set(ctx, &rotations.unwrap_or_default())?;
            Ok((inner, choice.output_bound))
        })?;
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
        Ok(Context::wrap(inner))
    }

    /// Levels (rescalings) an encrypted forward pass consumes.
    #[getter]
    fn levels(&self) -> usize {
        self.plan.depth()
    }

    /// Per-sample input shape (the tensor's shape without the batch axis).
    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.plan.input_shape().to_vec()
    }

    /// Per-sample output shape.
    #[getter]
    fn output_shape(&self) -> Vec<usize> {
        self.plan.output_shape().to_vec()
    }

    /// The output bound `model(x)` uses when none is given (None: no bound, the output keeps
    /// its natural scale).
    #[getter]
    fn output_bound(&self) -> Option<f64> {
        self.bound()
    }

    /// Runs the model on an encrypted batch `[batch, *input_shape]`. `output_bound` is the
    /// largest output magnitude to expect (the last dense map lowers its scale so that level
    /// 0 holds it); default: `model.output_bound`. `donate=True` hands `x`'s ciphertexts to
    /// the call (as JAX's buffer donation does): they are freed as soon as the first layer has
    /// read them, which lowers the pass's peak memory by up to the input's size, and `x` is
    /// unusable afterwards (`x.donated`; its methods raise `ValueError`). Input the model
    /// refuses is not given away; if another thread is still reading `x` (e.g. encoding it),
    /// its ciphertexts live until both calls are done.
    #[pyo3(signature = (x, output_bound=None, donate=false))]
    fn __call__(
        &self,
        py: Python<'_>,
        x: &CKKSTensor,
        output_bound: Option<f64>,
        donate: bool,
    ) -> PyResult<CKKSTensor> {
        if let Some(b) = output_bound.filter(|b| !(b.is_finite() && *b > 0.0)) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "output_bound must be a positive finite number, not {b}"
            )));
        }
        let core = x.core()?;
        let bound = output_bound.or_else(|| self.bound());
        let inner = core.k.inner().clone();
        let checked = || {
            let batch = core.batch.ok_or_else(|| {
                Error::Shape(
                    "the model needs a batch (axis 0 = samples), not a broadcast tensor".into(),
                )
            })?;
            let Scheme::Ckks(ctx) = &inner.scheme else {
                return Err(Error::InvalidInput("the model runs on CKKS tensors".into()));
            };
            let mut runner = CkksBatched::new(&self.plan, ctx.as_ref(), &inner.keys.relin)?;
            if let Some(b) = bound {
                runner = runner.with_output_bound(b);
            }
            runner.check(&core.shape, batch, &core.cts)?;
            Ok((runner, batch))
        };
        let (runner, batch) = checked().map_err(to_py)?;
        // Refused input was not given away; from here on, a donated input is the call's.
        let core = if donate {
            drop(core);
            x.donate()?
        } else {
            core
        };
        let out = heavy(py, || {
            let (k, shape) = (core.k.clone(), core.shape.clone());
            let y = match Arc::try_unwrap(core.cts) {
                // Donated and not shared: the lowering owns the input and frees it early.
                Ok(cts) => runner.forward_owned(
                    CipherTensor::from_ciphertexts(shape.clone(), batch, cts)?,
                    &Progress::none(),
                    None,
                )?,
                // Borrowed: the input stays Python's, and is not copied for the call.
                Err(cts) => {
                    runner.forward_ciphertexts(&shape, batch, &cts, &Progress::none(), None)?
                }
            };
            Ok(Core {
                k,
                shape: y.shape().to_vec(),
                batch: Some(batch),
                clean: false,
                cts: Arc::new(y.into_ciphertexts()),
            })
        })?;
        Ok(CKKSTensor::from_core(out))
    }

    /// The same model in plaintext (f64), for comparison: `[batch, *input_shape]` →
    /// `[batch, *output_shape]`. An ONNX model runs in the graph interpreter; the bundled
    /// LeNet-1 in the network its graph was built from (the interpreter's results within
    /// 1e-12 relative: the same model, summed in another order).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let y = match &self.net {
            Some(net) => {
                let x = x.as_array();
                heavy(py, || net.forward_par(x, 256))?
            }
            None => {
                let x = x.as_array().to_owned();
                heavy(py, || {
                    let mut out = self.graph.run_chunked(&[x], 512)?;
                    Ok(out.swap_remove(0))
                })?
            }
        };
        Ok(y.into_pyarray(py).into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({}: input {:?}, output {:?}, {} levels)",
            self.what,
            self.plan.input_shape(),
            self.plan.output_shape(),
            self.plan.depth()
        )
    }
}
