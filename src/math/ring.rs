//! The ring `Z_Q[X]/(X^N+1)` as a table of limb primes with their NTT plans.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::math::modular::Modulus;
use crate::math::ntt::NttPlan;

/// Degree `N` and every prime a scheme may use (ciphertext primes followed by special primes),
/// each with its NTT plan. Polynomials name their limbs by index into this table.
#[derive(Debug)]
pub struct RingContext {
    n: usize,
    moduli: Vec<Modulus>,
    plans: Vec<NttPlan>,
}

impl RingContext {
    /// Builds plans for every prime (in parallel; each needs a root-of-unity search).
    pub fn new(n: usize, primes: &[u32]) -> Result<Self> {
        let mut seen = primes.to_vec();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != primes.len() {
            return Err(Error::InvalidParameters(
                "limb primes must be distinct".into(),
            ));
        }
        let moduli = primes
            .iter()
            .map(|&q| Modulus::new(q))
            .collect::<Result<Vec<_>>>()?;
        let plans = moduli
            .par_iter()
            .map(|&m| NttPlan::new(n, m))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { n, moduli, plans })
    }

    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// All limb moduli.
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    /// Modulus of limb index `i`.
    pub fn modulus(&self, i: usize) -> &Modulus {
        &self.moduli[i]
    }

    /// NTT plan of limb index `i`.
    pub fn plan(&self, i: usize) -> &NttPlan {
        &self.plans[i]
    }

    /// Number of primes in the table.
    pub fn len(&self) -> usize {
        self.moduli.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.moduli.is_empty()
    }
}
