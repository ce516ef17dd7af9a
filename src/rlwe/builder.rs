//! One way to build a context of either scheme: `BfvContext::builder(params)` and
//! `CkksContext::builder(params)` return the same [`ContextBuilder`], which chooses the backend,
//! the randomness, or an existing RLWE context to share. The plain constructors (`new`,
//! `with_backend`, `with_seed`) are shortcuts for its common cases.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;

use super::{RlweContext, RlweParams};

/// Parameters of a scheme whose context a [`ContextBuilder`] builds. Implemented by
/// [`crate::bfv::BfvParams`] and [`crate::ckks::CkksParams`] only.
pub trait SchemeParams: sealed::Sealed + Sized {
    /// The context these parameters build.
    type Context;
    /// The RLWE parameters underneath (ring, primes, digits, security).
    fn rlwe_params(&self) -> &RlweParams;
    /// The scheme's context over a ready RLWE context whose parameters are `self`'s.
    fn assemble(self, rlwe: Arc<RlweContext>, sampler: Sampler) -> Result<Self::Context>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::bfv::BfvParams {}
    impl Sealed for crate::ckks::CkksParams {}
}

/// Builds a [`crate::bfv::BfvContext`] or a [`crate::ckks::CkksContext`] from its parameters.
///
/// ```
/// use std::sync::Arc;
/// use hetensor::backend::CpuBackend;
/// use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
/// use hetensor::ckks::{CkksContext, CkksParams};
/// # fn main() -> hetensor::Result<()> {
/// // The same calls for both schemes: a backend, and (tests only) a fixed seed.
/// let bfv = BfvContext::builder(BfvParams::preset(13, PlainModulus::Bits(20))?)
///     .backend(Arc::new(CpuBackend::new()))
///     .seed([7; 32])
///     .build()?;
/// let params = CkksParams::builder().depth(2).build()?;
/// let ckks = CkksContext::builder(params.clone()).seed([7; 32]).build()?;
/// // A second context over the first one's RLWE context: keys of one work in the other.
/// let twin = CkksContext::builder(params).rlwe(ckks.rlwe().clone()).build()?;
/// assert!(Arc::ptr_eq(ckks.rlwe(), twin.rlwe()));
/// # let _ = bfv;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct ContextBuilder<P> {
    params: P,
    backend: Option<Arc<dyn Backend>>,
    rlwe: Option<Arc<RlweContext>>,
    seed: Option<[u8; 32]>,
}

impl<P: SchemeParams> ContextBuilder<P> {
    /// A builder for `params` on the default (CPU) backend with randomness from the OS.
    pub fn new(params: P) -> Self {
        Self {
            params,
            backend: None,
            rlwe: None,
            seed: None,
        }
    }

    /// Runs on `backend` (see [`crate::backend::create_backend`]).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Shares an existing RLWE context (its backend, tables and key material's ring): keys made
    /// under it work in the new context. Its parameters must be the builder's.
    pub fn rlwe(mut self, rlwe: Arc<RlweContext>) -> Self {
        self.rlwe = Some(rlwe);
        self
    }

    /// Draws keys and encryption randomness from a fixed seed: reproducible keys and
    /// ciphertexts on every backend, for tests only. Never use a fixed seed on real data.
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The context, or why it cannot be built (a backend that cannot take the ring, an RLWE
    /// context of other parameters, both a backend and an RLWE context given).
    pub fn build(self) -> Result<P::Context> {
        let rlwe = match (self.rlwe, self.backend) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidInput(
                    "give a context builder either a backend or an RLWE context (which has its \
                     own backend), not both"
                        .into(),
                ))
            }
            (Some(rlwe), None) => {
                if rlwe.params() != self.params.rlwe_params() {
                    return Err(Error::ParameterMismatch(
                        "the RLWE context was built for other parameters than the scheme's".into(),
                    ));
                }
                rlwe
            }
            (None, Some(backend)) => {
                RlweContext::with_backend(self.params.rlwe_params().clone(), backend)?
            }
            (None, None) => RlweContext::new(self.params.rlwe_params().clone())?,
        };
        let sampler = self.seed.map_or_else(Sampler::from_os, Sampler::from_seed);
        self.params.assemble(rlwe, sampler)
    }
}
