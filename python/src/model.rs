//! `hetensor.Model`: the bundled LeNet-1 run encrypted on a `CKKSTensor`.

use hetensor::lower::{forward_sequential, Plan};
use hetensor::nn::{weights, Sequential};
use hetensor::tensor::CipherTensor;
use numpy::{IntoPyArray, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::kernel::Kernel;
use crate::tensor::{CKKSTensor, Core};
use crate::{heavy, to_py};

/// A model that runs on encrypted batches (CKKS, batched layout: one image per slot).
#[pyclass(frozen, module = "hetensor")]
pub struct Model {
    net: Sequential,
}

#[pymethods]
impl Model {
    /// LeNet-1 with square activations and its trained weights (bundled): input
    /// `[batch, 1, 28, 28]` in [0, 1], output 10 logits. Needs `model.levels` levels, e.g.
    /// `Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[])`.
    #[staticmethod]
    fn lenet1() -> PyResult<Self> {
        Ok(Self {
            net: weights::pretrained_lenet1().map_err(to_py)?,
        })
    }

    /// Levels (rescalings) an encrypted forward pass consumes.
    #[getter]
    fn levels(&self) -> PyResult<usize> {
        Ok(Plan::from_sequential(&self.net, &[1, 28, 28])
            .map_err(to_py)?
            .depth())
    }

    /// Runs the model on an encrypted batch. `output_bound` is the largest output magnitude
    /// to expect (the last layer sizes level 0 for it).
    #[pyo3(signature = (x, output_bound=50.0))]
    fn __call__(&self, py: Python<'_>, x: &CKKSTensor, output_bound: f64) -> PyResult<CKKSTensor> {
        let core = x.core.clone();
        let inner = core.k.inner().clone();
        let out = heavy(py, || {
            let batch = core.batch.ok_or_else(|| {
                hetensor::Error::Shape("the model needs a batch (axis 0 = images)".into())
            })?;
            let ctx = match &inner.scheme {
                crate::context::Scheme::Ckks(c) => c.clone(),
                crate::context::Scheme::Bfv(_) => unreachable!("a CKKSTensor has a CKKS context"),
            };
            let input =
                CipherTensor::from_ciphertexts(core.shape.clone(), batch, core.cts.to_vec())?;
            let y = forward_sequential(&ctx, &self.net, &input, &inner.keys.relin, output_bound)?;
            Ok(Core {
                k: core.k.clone(),
                shape: y.shape().to_vec(),
                batch: Some(batch),
                clean: false,
                cts: std::sync::Arc::new(y.into_ciphertexts()),
            })
        })?;
        Ok(CKKSTensor::from_core(out))
    }

    /// The same model in plaintext (f64), for comparison: `[batch, 1, 28, 28]` → `[batch, 10]`.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = x.as_array().to_owned();
        let y = heavy(py, || self.net.forward(&x))?;
        Ok(y.into_pyarray(py).into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({} layers, {} parameters)",
            self.net.len(),
            self.net.num_params()
        )
    }
}
