//! `hetensor.Context`: parameters and keys of one key set, with or without its secret key.

use std::sync::{Arc, Mutex, Weak};

use hetensor::backend::default_backend;
use hetensor::bfv::{BfvChain, BfvContext, BfvParams, PlainModulus};
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::rlwe::{GaloisKeys, PublicKey, RelinKey, RlweContext, SecretKey};
use hetensor::serialize::{PublicContext, SchemeContext, SecretContext, WriteOptions};
use hetensor::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zeroize::Zeroize;

use crate::{heavy, tensor, HetensorError};

/// The scheme a key set belongs to.
pub(crate) enum Scheme {
    Ckks(Arc<CkksContext>),
    Bfv(Arc<BfvContext>),
}

/// The keys anyone may hold.
pub(crate) struct PublicKeys {
    pub public: PublicKey,
    pub relin: RelinKey,
    pub galois: Option<GaloisKeys>,
}

/// One key set: what a `Context` (and every tensor made under it) shares.
pub(crate) struct Inner {
    pub scheme: Scheme,
    pub keys: Arc<PublicKeys>,
    pub secret: Option<Arc<SecretKey>>,
}

impl Scheme {
    /// `ckks(ctx)` or `bfv(ctx)`, whichever this is.
    pub fn pick<'a, T>(
        &'a self,
        ckks: impl FnOnce(&'a CkksContext) -> T,
        bfv: impl FnOnce(&'a BfvContext) -> T,
    ) -> T {
        match self {
            Scheme::Ckks(c) => ckks(c),
            Scheme::Bfv(c) => bfv(c),
        }
    }
}

impl Inner {
    pub fn rlwe(&self) -> &Arc<RlweContext> {
        self.scheme.pick(|c| c.rlwe(), |c| c.rlwe())
    }

    pub fn key_id(&self) -> u64 {
        self.keys.public.key_id()
    }

    pub fn fingerprint(&self) -> u64 {
        self.rlwe().fingerprint()
    }

    pub fn secret(&self) -> Result<&SecretKey> {
        self.secret.as_deref().ok_or_else(|| {
            Error::KeyMismatch(
                "this context holds no secret key (a public context): decrypt with the key \
                 holder's context"
                    .into(),
            )
        })
    }

    pub fn galois(&self) -> Result<&GaloisKeys> {
        self.keys.galois.as_ref().ok_or_else(|| {
            Error::KeyMismatch(
                "this context has no rotation (Galois) keys; create it with rotations".into(),
            )
        })
    }
}

/// Every live context of this process, so that an unpickled tensor finds its key set.
static REGISTRY: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

fn register(inner: Inner) -> Arc<Inner> {
    let arc = Arc::new(inner);
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    reg.push(Arc::downgrade(&arc));
    arc
}

/// The live context of key set `key_id` under parameters `fingerprint`, the one with the
/// secret key if this process has it.
pub(crate) fn lookup(fingerprint: u64, key_id: u64) -> Result<Arc<Inner>> {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<Arc<Inner>> = reg
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|c| c.key_id() == key_id && c.fingerprint() == fingerprint)
        .collect();
    found.sort_by_key(|c| c.secret.is_none());
    found.into_iter().next().ok_or_else(|| {
        Error::Decode(format!(
            "no context of key set {key_id:016x} is loaded in this process; load the context \
             (Context.from_bytes, or unpickle it) before the tensors made under it"
        ))
    })
}

/// Galois steps for rotations by any amount below `width` (the powers of two) and for
/// radix-4 sums over all of it (`3·4^k` besides).
fn power_steps(width: usize) -> Vec<i64> {
    CkksContext::sum_steps(width, 4)
}

/// Galois keys for `steps`, or none for no steps.
fn rotation_keys(
    steps: &[i64],
    generate: impl FnOnce(&[i64]) -> Result<GaloisKeys>,
) -> Result<Option<GaloisKeys>> {
    (!steps.is_empty()).then(|| generate(steps)).transpose()
}

/// The key holder's view of a fresh key set.
fn owner(scheme: Scheme, secret: SecretKey, keys: PublicKeys) -> Inner {
    Inner {
        scheme,
        keys: Arc::new(keys),
        secret: Some(Arc::new(secret)),
    }
}

/// A fresh CKKS key set under `ctx`, with rotation keys for `steps`.
pub(crate) fn ckks_key_set(ctx: CkksContext, steps: &[i64]) -> Result<Inner> {
    let keys = ctx.keygen()?;
    let galois = rotation_keys(steps, |s| ctx.gen_galois_keys(&keys.secret, s, false))?;
    Ok(owner(
        Scheme::Ckks(Arc::new(ctx)),
        keys.secret,
        PublicKeys {
            public: keys.public,
            relin: keys.relin,
            galois,
        },
    ))
}

/// The fixed chain `CkksParams::preset(log_n, scale_bits)`, refusing what it cannot honour
/// (a deeper circuit, more slots, or a key-switching choice: the preset fixes all three)
/// instead of ignoring it.
fn preset_params(
    log_n: u32,
    scale_bits: u32,
    depth: Option<usize>,
    slots: Option<usize>,
    extra_special_primes: Option<usize>,
) -> Result<CkksParams> {
    let params = CkksParams::preset(log_n, scale_bits)?;
    let refuse = |what: String| {
        Err(Error::InvalidParameters(format!(
            "preset=True fixes the chain for log_n={log_n}: {what}; drop preset=True to have \
             the builder choose parameters"
        )))
    };
    let (levels, max_slots) = (params.computation_levels(), params.n() / 2);
    if let Some(d) = depth.filter(|&d| d > levels) {
        return refuse(format!("it has {levels} levels, not depth={d}"));
    }
    if let Some(s) = slots.filter(|&s| s > max_slots) {
        return refuse(format!("it has {max_slots} slots, not slots={s}"));
    }
    if extra_special_primes.is_some() {
        return refuse("its key-switching primes are fixed (extra_special_primes)".into());
    }
    Ok(params)
}

/// Parameters and keys of one key set. A context made by `Context.ckks` or `Context.bfv` holds
/// the secret key; `ctx.public()` is the same key set without it, safe to send to workers.
#[pyclass(frozen, module = "hetensor")]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

impl Context {
    pub(crate) fn wrap(inner: Inner) -> Self {
        Self {
            inner: register(inner),
        }
    }

    fn write<C: SchemeContext>(&self, c: &C, secret_key: bool) -> Result<Vec<u8>> {
        let k = &self.inner.keys;
        let mut out = Vec::new();
        PublicContext::write_parts(
            &mut out,
            c,
            &k.public,
            Some(&k.relin),
            k.galois.as_ref(),
            WriteOptions::default(),
        )?;
        if secret_key {
            SecretContext::write_parts(&mut out, c, self.inner.secret()?)?;
        }
        Ok(out)
    }

    fn read<C: SchemeContext>(bytes: &[u8], scheme: impl FnOnce(C) -> Scheme) -> Result<Inner> {
        let mut r = bytes;
        let p = PublicContext::<C>::read_from(&mut r, default_backend())?;
        let relin = p
            .relin_key
            .ok_or_else(|| Error::Decode("the context has no relinearization key".into()))?;
        let secret = if r.is_empty() {
            None
        } else {
            let s = SecretContext::<C>::from_bytes(r, default_backend())?;
            if s.secret_key.key_id() != p.public_key.key_id()
                || s.context.rlwe_context().fingerprint() != p.context.rlwe_context().fingerprint()
            {
                return Err(Error::KeyMismatch(
                    "the secret key after the public context belongs to another key set".into(),
                ));
            }
            Some(Arc::new(s.secret_key))
        };
        Ok(Inner {
            scheme: scheme(p.context),
            keys: Arc::new(PublicKeys {
                public: p.public_key,
                relin,
                galois: p.galois_keys,
            }),
            secret,
        })
    }

    fn from_bytes_impl(bytes: &[u8]) -> Result<Inner> {
        match Self::read::<CkksContext>(bytes, |c| Scheme::Ckks(Arc::new(c))) {
            Err(Error::WrongObject { found, .. }) if found == hetensor::serialize::BFV_CONTEXT => {
                Self::read::<BfvContext>(bytes, |c| Scheme::Bfv(Arc::new(c)))
            }
            other => other,
        }
    }
}

#[pymethods]
impl Context {
    /// A CKKS key set (approximate arithmetic on real numbers) from the parameter builder:
    /// the smallest 128-bit-secure ring with `depth` rescalings at scale 2^`scale_bits`
    /// (precision about `scale_bits - 20` bits). `log_n` fixes N = 2^log_n; `slots` asks for at
    /// least that many samples per ciphertext. `rotations`: the slot rotations to make keys for
    /// (default: `sum_rotations(slots)`, the powers of two and `3·4^k`: any `rotate`, and
    /// `sum(axis=0)` in radix-4 rounds); `[]` for none.
    /// `preset=True` takes the fixed 128-bit chain of single primes near 2^scale_bits for
    /// N = 2^log_n instead (what `hetensor mnist` runs LeNet-1 on: log_n=13, scale_bits=25,
    /// 5 levels); a `depth` or `slots` that chain cannot hold, or `extra_special_primes`, is
    /// then a `ParameterError`. `depth` defaults to 3. `extra_special_primes` (default 1):
    /// key-switching primes beyond one digit's worth; 0 makes rotations and relinearization
    /// faster where it lets the chain fit fewer digits (N = 2^13, depth 2: 3 instead of 6), at
    /// about SEAL's rotation precision (20 bits at 2^40) instead of a fresh encryption's.
    #[staticmethod]
    #[pyo3(signature = (depth=None, scale_bits=40, log_n=None, slots=None, rotations=None, preset=false, extra_special_primes=None))]
    // Python keyword arguments, all optional: a builder would not be Pythonic here.
    #[allow(clippy::too_many_arguments)]
    fn ckks(
        py: Python<'_>,
        depth: Option<usize>,
        scale_bits: u32,
        log_n: Option<u32>,
        slots: Option<usize>,
        rotations: Option<Vec<i64>>,
        preset: bool,
        extra_special_primes: Option<usize>,
    ) -> PyResult<Self> {
        let inner = heavy(py, || {
            let params = if preset {
                preset_params(
                    log_n.unwrap_or(13),
                    scale_bits,
                    depth,
                    slots,
                    extra_special_primes,
                )?
            } else {
                let mut b = CkksParams::builder()
                    .depth(depth.unwrap_or(3))
                    .scale_bits(scale_bits);
                if let Some(l) = log_n {
                    b = b.log_n(l);
                }
                if let Some(s) = slots {
                    b = b.slots(s);
                }
                if let Some(k) = extra_special_primes {
                    b = b.extra_special_primes(k);
                }
                b.build()?
            };
            let ctx = CkksContext::new(params)?;
            let steps = rotations.unwrap_or_else(|| power_steps(ctx.slots()));
            ckks_key_set(ctx, &steps)
        })?;
        Ok(Self::wrap(inner))
    }

    /// A BFV key set (exact arithmetic on integers modulo a prime t of `plain_bits` bits, shown
    /// centered). `q_primes` 30-bit ciphertext primes (default: the 128-bit preset for
    /// N = 2^log_n) over `dnum` key-switching digits (default: the preset's, or one per prime
    /// with `q_primes`; fewer digits make smaller keys and need a larger special modulus).
    /// `rotations` as for `Context.ckks` (rows of N/2 slots; the row swap key is always made
    /// with them).
    #[staticmethod]
    #[pyo3(signature = (log_n=13, plain_bits=20, q_primes=None, dnum=None, rotations=None))]
    fn bfv(
        py: Python<'_>,
        log_n: u32,
        plain_bits: u32,
        q_primes: Option<usize>,
        dnum: Option<usize>,
        rotations: Option<Vec<i64>>,
    ) -> PyResult<Self> {
        let inner = heavy(py, || {
            let plain = PlainModulus::Bits(plain_bits);
            let params = match (q_primes, dnum) {
                (None, None) => BfvParams::preset(log_n, plain)?,
                // `dnum` alone re-splits the preset's primes (was silently ignored).
                (None, Some(d)) => BfvParams::from_chain(BfvChain {
                    log_n,
                    plain,
                    primes: BfvParams::preset(log_n, plain)?.rlwe().q_primes().len(),
                    dnum: d,
                    ..Default::default()
                })?,
                (Some(q), d) => BfvParams::from_chain(BfvChain {
                    log_n,
                    plain,
                    primes: q,
                    dnum: d.unwrap_or(q),
                    ..Default::default()
                })?,
            };
            let ctx = BfvContext::new(params)?;
            let generated = ctx.keygen()?;
            let secret = generated.secret;
            let steps = rotations.unwrap_or_else(|| power_steps(ctx.n() / 2));
            let keys = PublicKeys {
                public: generated.public,
                relin: generated.relin,
                galois: rotation_keys(&steps, |s| ctx.gen_galois_keys(&secret, s))?,
            };
            Ok(owner(Scheme::Bfv(Arc::new(ctx)), secret, keys))
        })?;
        Ok(Self::wrap(inner))
    }

    /// The same key set without the secret key: what workers get.
    fn public(&self) -> Self {
        Self::wrap(Inner {
            scheme: match &self.inner.scheme {
                Scheme::Ckks(c) => Scheme::Ckks(c.clone()),
                Scheme::Bfv(c) => Scheme::Bfv(c.clone()),
            },
            keys: self.inner.keys.clone(),
            secret: None,
        })
    }

    /// The context in the compact format: parameters, public, relinearization and Galois keys
    /// (seeded), and the secret key only if `secret_key=True`.
    #[pyo3(signature = (secret_key=false))]
    fn to_bytes<'py>(&self, py: Python<'py>, secret_key: bool) -> PyResult<Bound<'py, PyBytes>> {
        let mut bytes = heavy(py, || match &self.inner.scheme {
            Scheme::Ckks(c) => self.write(c.as_ref(), secret_key),
            Scheme::Bfv(c) => self.write(c.as_ref(), secret_key),
        })?;
        let out = PyBytes::new(py, &bytes);
        // The secret key's copy in Rust memory is wiped; Python's copy is the caller's.
        bytes.zeroize();
        Ok(out)
    }

    /// Loads a context written by `to_bytes` (validated; a corrupt or foreign input is a
    /// `DecodeError` and loads nothing).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = heavy(py, || Self::from_bytes_impl(data))?;
        Ok(Self::wrap(inner))
    }

    /// Pickles the public context. A context with its secret key refuses: pickle
    /// `ctx.public()`, or call `ctx.to_bytes(secret_key=True)` on purpose.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(PyObject, (Bound<'py, PyBytes>,))> {
        if self.inner.secret.is_some() {
            return Err(HetensorError::new_err(
                "refusing to pickle a context that holds the secret key; pickle ctx.public() \
                 (what workers need), or save ctx.to_bytes(secret_key=True) deliberately",
            ));
        }
        let bytes = self.to_bytes(py, false)?;
        let from = py.get_type::<Self>().getattr("from_bytes")?.unbind();
        Ok((from, (bytes,)))
    }

    /// Encrypts a numpy array in the batched layout: axis 0 is the samples (one per slot),
    /// the rest one ciphertext per feature. `broadcast=True` encrypts one sample (no batch
    /// axis) into every slot, e.g. model weights that meet every sample. Returns a
    /// `CKKSTensor` or a `BFVTensor`.
    #[pyo3(signature = (data, broadcast=false))]
    fn encrypt(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        broadcast: bool,
    ) -> PyResult<PyObject> {
        tensor::encrypt_any(py, &self.inner, data, broadcast)
    }

    /// "ckks" or "bfv".
    #[getter]
    fn scheme(&self) -> &'static str {
        match self.inner.scheme {
            Scheme::Ckks(_) => "ckks",
            Scheme::Bfv(_) => "bfv",
        }
    }

    /// Whether this context holds the secret key (can decrypt).
    #[getter]
    fn has_secret_key(&self) -> bool {
        self.inner.secret.is_some()
    }

    /// Samples per ciphertext: N/2 for CKKS, N for BFV.
    #[getter]
    fn slots(&self) -> usize {
        self.inner.scheme.pick(|c| c.slots(), |c| c.slots())
    }

    /// The ring degree N.
    #[getter]
    fn poly_modulus_degree(&self) -> usize {
        self.inner.rlwe().n()
    }

    /// The level of fresh ciphertexts (CKKS: rescalings available).
    #[getter]
    fn max_level(&self) -> usize {
        self.inner.scheme.pick(|c| c.max_level(), |c| c.max_level())
    }

    /// BFV plaintext modulus t (None for CKKS).
    #[getter]
    fn plain_modulus(&self) -> Option<u64> {
        self.inner
            .scheme
            .pick(|_| None, |c| Some(c.plain_modulus()))
    }

    /// The key set's 64-bit identifier (shared by `ctx` and `ctx.public()`).
    #[getter]
    fn key_id(&self) -> u64 {
        self.inner.key_id()
    }

    fn __repr__(&self) -> String {
        let what = match &self.inner.scheme {
            Scheme::Ckks(c) => format!("{}", c.params()),
            Scheme::Bfv(c) => format!(
                "BFV N = {}, t = {}, {} ciphertext primes",
                c.n(),
                c.plain_modulus(),
                c.params().rlwe().q_primes().len()
            ),
        };
        let who = if self.inner.secret.is_some() {
            "with secret key"
        } else {
            "public"
        };
        format!("Context({what}; {who})")
    }
}
