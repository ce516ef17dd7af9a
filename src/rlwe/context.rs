//! The RLWE context: parameters, the ring tables, the backend, and cached conversion tables.
//! Shared by every key and ciphertext through an `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::{default_backend, Backend, PolyBatch, Repr};
use crate::error::{Error, Result};
use crate::math::{BaseConverter, RingContext};
use crate::rlwe::params::RlweParams;

/// Base converters cached by (source limbs, target limbs).
type ConverterCache = Mutex<HashMap<(Vec<usize>, Vec<usize>), Arc<BaseConverter>>>;

/// Parameters plus everything precomputed from them.
#[derive(Debug)]
pub struct RlweContext {
    params: RlweParams,
    ring: RingContext,
    backend: Arc<dyn Backend>,
    /// `q_prefix[k]` = limb indices 0..=k (indexed by top limb, not by level: levels of a
    /// composite chain hold several limbs, see [`crate::rlwe::LevelShape`]).
    q_prefix: Vec<Arc<[usize]>>,
    /// `qp_prefix[k]` = 0..=k followed by the special primes.
    qp_prefix: Vec<Arc<[usize]>>,
    p_limbs: Arc<[usize]>,
    aux_limbs: Arc<[usize]>,
    converters: ConverterCache,
    fingerprint: u64,
}

impl RlweContext {
    /// Builds the context on the default (CPU) backend.
    pub fn new(params: RlweParams) -> Result<Arc<Self>> {
        Self::with_backend(params, default_backend())
    }

    /// Builds the context on a chosen backend.
    pub fn with_backend(params: RlweParams, backend: Arc<dyn Backend>) -> Result<Arc<Self>> {
        let primes: Vec<u32> = params
            .q
            .iter()
            .chain(&params.p)
            .chain(&params.aux)
            .copied()
            .collect();
        let ring = RingContext::new(params.n, &primes)?;
        let nq = params.q.len();
        let np = params.p.len();
        let p_limbs: Arc<[usize]> = (nq..nq + np).collect();
        let aux_limbs: Arc<[usize]> = (nq + np..primes.len()).collect();
        let q_prefix = (0..nq).map(|l| (0..=l).collect::<Arc<[usize]>>()).collect();
        let qp_prefix = (0..nq)
            .map(|l| (0..=l).chain(nq..nq + np).collect::<Arc<[usize]>>())
            .collect();
        let fingerprint = params.fingerprint();
        Ok(Arc::new(Self {
            params,
            ring,
            backend,
            q_prefix,
            qp_prefix,
            p_limbs,
            aux_limbs,
            converters: Mutex::new(HashMap::new()),
            fingerprint,
        }))
    }

    /// Parameters.
    pub fn params(&self) -> &RlweParams {
        &self.params
    }

    /// Ring tables.
    pub fn ring(&self) -> &RingContext {
        &self.ring
    }

    /// The backend every polynomial of this context lives on.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Ring degree.
    pub fn n(&self) -> usize {
        self.params.n
    }

    /// Highest level.
    pub fn max_level(&self) -> usize {
        self.params.max_level()
    }

    /// Parameter fingerprint.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Limbs of level `l` (the first `shape.limbs(l)` ciphertext primes).
    pub fn q_limbs(&self, level: usize) -> Arc<[usize]> {
        self.q_prefix[self.params.shape.limbs(level) - 1].clone()
    }

    /// Limbs of level `l` plus the special primes.
    pub fn qp_limbs(&self, level: usize) -> Arc<[usize]> {
        self.qp_prefix[self.params.shape.limbs(level) - 1].clone()
    }

    /// The first `count` ciphertext limbs. Key switching and encryption work on limb counts,
    /// whatever level (if any) they form.
    pub(crate) fn q_first(&self, count: usize) -> Arc<[usize]> {
        self.q_prefix[count - 1].clone()
    }

    /// The first `count` ciphertext limbs followed by the special primes.
    pub(crate) fn qp_first(&self, count: usize) -> Arc<[usize]> {
        self.qp_prefix[count - 1].clone()
    }

    /// The level of a ciphertext that has `limbs` ciphertext primes.
    pub fn level_of_limbs(&self, limbs: usize) -> Result<usize> {
        self.params.shape.level_of(limbs).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{limbs} ciphertext primes do not form a level of this chain ({:?})",
                self.params.shape
            ))
        })
    }

    /// The special primes' limbs.
    pub fn p_limbs(&self) -> Arc<[usize]> {
        self.p_limbs.clone()
    }

    /// The auxiliary primes' limbs.
    pub fn aux_limbs(&self) -> Arc<[usize]> {
        self.aux_limbs.clone()
    }

    /// Limb ranges of the key-switching digits at full level.
    pub fn digits(&self) -> Vec<std::ops::Range<usize>> {
        self.params.digit_ranges()
    }

    /// Cached base converter between two limb sets.
    pub fn converter(&self, from: &[usize], to: &[usize]) -> Arc<BaseConverter> {
        let key = (from.to_vec(), to.to_vec());
        let mut cache = self.converters.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                let m = |ls: &[usize]| {
                    ls.iter()
                        .map(|&i| *self.ring.modulus(i))
                        .collect::<Vec<_>>()
                };
                Arc::new(BaseConverter::new(&m(from), &m(to)))
            })
            .clone()
    }

    /// Uploads small signed coefficients (secrets, errors, encoded integers) to the given
    /// limbs, in coefficient form.
    pub fn upload_signed(&self, coeffs: &[i64], limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let n = self.n();
        if coeffs.len() != n {
            return Err(Error::Shape(format!(
                "{} coefficients for N = {n}",
                coeffs.len()
            )));
        }
        let mut words = Vec::with_capacity(limbs.len() * n);
        // Errors and secrets are tiny: below every modulus a residue is `c` or `c + q`, a
        // branch-free loop that vectorizes, instead of a 128-bit Barrett per word.
        let q_min = limbs
            .iter()
            .map(|&l| self.ring.modulus(l).value() as u64)
            .min()
            .unwrap_or(0);
        let small = coeffs.iter().all(|&c| c.unsigned_abs() < q_min);
        for &l in limbs.iter() {
            let m = self.ring.modulus(l);
            if small {
                let q = m.value() as i64;
                words.extend(coeffs.iter().map(|&c| (c + ((c >> 63) & q)) as u32));
            } else {
                words.extend(coeffs.iter().map(|&c| m.reduce_i64(c)));
            }
        }
        self.backend.upload(words, limbs, 1, n, Repr::Coeff)
    }

    /// Uploads wide signed coefficients (multiparty smudging noise and masks, up to 2^126) to
    /// the given limbs, NTT domain. The residues are computed on the host in a wiped buffer:
    /// these values hide secrets or messages.
    pub fn upload_wide_ntt(&self, coeffs: &[i128], limbs: Arc<[usize]>) -> Result<PolyBatch> {
        self.upload_residues_ntt(coeffs.len(), limbs, |q, k| coeffs[k].rem_euclid(q))
    }

    /// [`Self::upload_wide_ntt`] for coefficients `high·2^64 + low`, up to 2^190: refresh masks
    /// that hide a phase above 2^80 (precise CKKS outputs).
    pub fn upload_wider_ntt(
        &self,
        high: &[i128],
        low: &[u64],
        limbs: Arc<[usize]>,
    ) -> Result<PolyBatch> {
        if high.len() != low.len() {
            return Err(Error::Shape(format!(
                "{} high and {} low words",
                high.len(),
                low.len()
            )));
        }
        // (high mod q)·2^64 + low < 2^95: one reduction of a 128-bit integer.
        self.upload_residues_ntt(high.len(), limbs, |q, k| {
            ((high[k].rem_euclid(q) << 64) + low[k] as i128).rem_euclid(q)
        })
    }

    /// Uploads the residues `residue(q, k)` of coefficient `k` modulo each limb's prime `q`
    /// (computed in a wiped host buffer), then NTT.
    fn upload_residues_ntt(
        &self,
        len: usize,
        limbs: Arc<[usize]>,
        residue: impl Fn(i128, usize) -> i128,
    ) -> Result<PolyBatch> {
        let n = self.n();
        if len != n {
            return Err(Error::Shape(format!("{len} coefficients for N = {n}")));
        }
        let mut words = zeroize::Zeroizing::new(Vec::with_capacity(limbs.len() * n));
        for &l in limbs.iter() {
            let q = self.ring.modulus(l).value() as i128;
            words.extend((0..n).map(|k| residue(q, k) as u32));
        }
        let mut p = self
            .backend
            .upload(std::mem::take(&mut *words), limbs, 1, n, Repr::Coeff)?;
        self.backend.ntt_forward(&self.ring, &mut p)?;
        Ok(p)
    }

    /// The constant polynomial `c` in NTT form: `c mod q` at every evaluation point of each
    /// limb, without a transform (a CKKS plaintext with one real value in every slot is one).
    pub fn upload_constant_ntt(&self, c: i128, limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let n = self.n();
        let mut words = Vec::with_capacity(limbs.len() * n);
        for &l in limbs.iter() {
            let r = c.rem_euclid(self.ring.modulus(l).value() as i128) as u32;
            words.resize(words.len() + n, r);
        }
        self.backend.upload(words, limbs, 1, n, Repr::Ntt)
    }

    /// Same as [`Self::upload_signed`], then NTT.
    pub fn upload_signed_ntt(&self, coeffs: &[i64], limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let mut p = self.upload_signed(coeffs, limbs)?;
        self.backend.ntt_forward(&self.ring, &mut p)?;
        Ok(p)
    }

    /// Divides by the product of the `drop` limbs and rounds: the NTT-domain batch over
    /// `keep ∪ drop` becomes one over `keep`. Key switching's ModDown (drop = special primes)
    /// and CKKS rescaling (drop = the last prime) are both this.
    pub fn mod_down(
        &self,
        x: &PolyBatch,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let conv = self.converter(&drop, &keep);
        self.backend.mod_down(&self.ring, x, keep, drop, &conv)
    }

    /// Checks that an object made under `fingerprint` belongs to this context.
    pub fn check_fingerprint(&self, fingerprint: u64, what: &str) -> Result<()> {
        if fingerprint != self.fingerprint {
            return Err(Error::ParameterMismatch(format!(
                "{what} was created under other parameters (fingerprint {fingerprint:016x}, this context {:016x})",
                self.fingerprint
            )));
        }
        Ok(())
    }
}
