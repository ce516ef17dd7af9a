//! The crate's one error type. Every failure a user, a file or a device can cause lands here
//! with a message that says what happened and what to do about it.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hetensor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Parameters that cannot work (wrong degree, no suitable primes, bad plaintext modulus...).
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),

    /// Parameters below 128-bit security without the explicit opt-in.
    #[error(
        "insecure parameters: log2(QP) = {log_qp} exceeds {max_log_qp} bits allowed for N = {n} at \
         128-bit security (HomomorphicEncryption.org standard, ternary secret); use fewer/smaller \
         primes or a larger N; for tests only, `hetensor::rlwe::Security::InsecureForTestingOnly` \
         skips this check (never use it for real data)"
    )]
    InsecureParameters {
        n: usize,
        log_qp: u32,
        max_log_qp: u32,
    },

    /// Operands created under different parameter sets (or contexts).
    #[error("parameter mismatch: {0}")]
    ParameterMismatch(String),

    /// CKKS operands at different levels where the operation cannot align them.
    #[error("level mismatch: {op} got operands at levels {left} and {right}; bring them to the same level with `mod_switch_to` or `rescale` first")]
    LevelMismatch {
        op: &'static str,
        left: usize,
        right: usize,
    },

    /// CKKS operands whose scales differ by more than rounding.
    #[error("scale mismatch: {op} got scales 2^{left:.3} and 2^{right:.3}; rescale or re-encode so the scales agree")]
    ScaleMismatch {
        op: &'static str,
        left: f64,
        right: f64,
    },

    /// No modulus left to rescale or mod-switch.
    #[error("out of levels: {op} needs level > 0 but the ciphertext is at level {level}; choose parameters with a longer modulus chain")]
    OutOfLevels { op: &'static str, level: usize },

    /// A computation deeper than the levels a ciphertext has left (checked before any work).
    #[error("out of levels: {op} needs {need} levels but the ciphertext is at level {level}; choose parameters with a longer modulus chain ({need} more levels from here)")]
    TooDeep {
        op: String,
        need: usize,
        level: usize,
    },

    /// The encoded value would not fit under the ciphertext modulus.
    #[error("scale overflow: {0}")]
    ScaleOverflow(String),

    /// Too many values for the number of slots.
    #[error("too many values: got {got}, but only {slots} slots are available")]
    TooManyValues { got: usize, slots: usize },

    /// A rotation or conjugation was asked for without the key generated.
    #[error("missing Galois key for {} (Galois element {galois_element}); generate it with the other keys (Rust: `gen_galois_keys`; Python: the `rotations=` of `Context.ckks` / `Context.bfv`, where `hetensor.sum_rotations(slots)` covers every rotation and sum)", rotation_name(.step))]
    MissingGaloisKey {
        galois_element: usize,
        step: Option<i64>,
    },

    /// A value that is out of its allowed domain (e.g. a plaintext value >= t).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A ciphertext of unexpected size (e.g. degree 2 where a relinearized one is needed).
    #[error("ciphertext size: {0}")]
    CiphertextSize(String),

    /// Tensor or layer shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// A model that cannot be loaded or run (missing/misshaped weights, NaN, unsupported layer).
    #[error("model error: {0}")]
    Model(String),

    /// A model operation that homomorphic evaluation cannot run (ReLU, max pooling, softmax...)
    /// or that hetensor does not implement; `hint` names the HE-friendly replacement.
    #[error("unsupported op: node {node:?} is {op}, which {hint}")]
    UnsupportedOp {
        /// The node's name in the model file.
        node: String,
        /// Its operator type.
        op: String,
        /// What to use instead.
        hint: String,
    },

    /// A data file that cannot be read or parsed.
    #[error("data error: {0}")]
    Data(String),

    /// A backend (device) failure.
    #[error("backend error: {0}")]
    Backend(String),

    /// A backend that is not compiled in, or whose driver or device is missing.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),

    /// Serialized bytes that are malformed, truncated, from another format version or for other
    /// parameters. Nothing is loaded from such input.
    #[error("cannot decode: {0}")]
    Decode(String),

    /// Serialized bytes that end inside the object: an interrupted transfer or a cut file.
    /// Reading the whole object again from its source may succeed; nothing was loaded.
    #[error("truncated input: the bytes end inside the {what}; the object was cut short (an interrupted transfer or file), nothing was loaded")]
    Truncated {
        /// The part of the object that was being read.
        what: String,
    },

    /// Serialized bytes whose checksum does not match: corrupted in storage or transit.
    /// Sending or reading them again may succeed; nothing was loaded.
    #[error("checksum mismatch ({stored:08x} stored, {computed:08x} computed): the {what} was corrupted in storage or transit; nothing was loaded")]
    ChecksumMismatch {
        /// The kind of object.
        what: String,
        /// The checksum in the bytes.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },

    /// Serialized bytes of another format version than this build reads: re-serialize them
    /// with this version of hetensor (or read them with the one that wrote them).
    #[error("format version {found}: this build reads version {supported}; re-serialize the object with this version of hetensor")]
    FormatVersion {
        /// The version in the bytes.
        found: u16,
        /// The one version this build reads.
        supported: u16,
    },

    /// Serialized input larger than the reader allows (`LoadOptions::max_bytes`, a worker's
    /// limit): raise the limit if the input is trusted. Nothing was read past the limit.
    #[error("input too large: the {what} has at least {size} bytes, more than the {limit} allowed; raise the limit (e.g. LoadOptions::max_bytes) if the input is trusted")]
    InputTooLarge {
        /// What was being read.
        what: String,
        /// Its size in bytes (at least this much).
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// An input tensor of the wrong shape for a model, layer or operation: reshape or
    /// re-batch the input. `expected` is the shape or pattern it takes.
    #[error("input shape: {op} expects {expected}, got shape {got:?}")]
    InputShape {
        /// The model, layer or operation.
        op: String,
        /// The shape it takes, e.g. `[batch, 1, 28, 28]`.
        expected: String,
        /// The shape it was given.
        got: Vec<usize>,
    },

    /// A weights file without a tensor the model needs: export the model with that tensor
    /// name, or load a file made for this architecture.
    #[error("model error: tensor {name:?} is missing from the weights file (it has: {available})")]
    MissingWeight {
        /// The tensor's name (`layer.param`).
        name: String,
        /// The names the file has, comma-separated.
        available: String,
    },

    /// A weights tensor of another shape than the model's parameter: the file was made for
    /// another architecture or layer size.
    #[error("model error: tensor {name:?} has shape {got:?}, the model expects {expected:?}")]
    WeightShape {
        /// The tensor's name (`layer.param`).
        name: String,
        /// The model parameter's shape.
        expected: Vec<usize>,
        /// The file's shape.
        got: Vec<usize>,
    },

    /// Intact serialized bytes of another kind of object than the call reads (a public key
    /// read as a ciphertext, a BFV context read as a CKKS one): read them with the call for
    /// `found` instead. Nothing was loaded.
    #[error("wrong object: this reads {expected}, but the bytes hold {found}")]
    WrongObject {
        /// What the call reads.
        expected: String,
        /// What the bytes hold.
        found: String,
    },

    /// Underlying I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// Objects of different key sets combined (a ciphertext decrypted with another key set's
    /// secret key, two key sets' ciphertexts added, a ciphertext relinearized with another
    /// key set's key): the result would be garbage with no error.
    #[error("key-set mismatch: {0}")]
    KeyMismatch(String),

    /// A BFV result with no noise budget left: its decryption would be wrong. `budget_bits` is
    /// the evaluator's conservative estimate (`basis = "estimated"`, no secret key needed) or the
    /// noise decryption measured (`basis = "measured"`).
    #[error(
        "noise budget exhausted: {op} leaves {budget_bits:.1} bits of noise budget ({basis}), so \
         decryption would be wrong; use more ciphertext primes (larger Q), fewer sequential \
         multiplications (mod-switch or decrypt and re-encrypt between stages), a smaller \
         plaintext modulus t (several small ones with `BfvCrt` for large integers) or a larger N"
    )]
    NoiseBudgetExhausted {
        op: &'static str,
        budget_bits: f64,
        basis: &'static str,
    },

    /// A peer broke the worker pipe protocol (unknown tag, oversized or truncated frame, a
    /// frame that stopped arriving); the worker answers this, then exits.
    #[error("worker protocol error: {0}")]
    Protocol(String),

    /// A multiparty protocol misused or fed the wrong message: a share for another protocol,
    /// round, run, level or key set, a second share for the same run (a retry can leak the
    /// secret share), a round out of order, or no shares at all. Nothing was computed.
    #[error("multiparty protocol: {0}")]
    Multiparty(String),

    /// A party of a multiparty run that did not connect, answer or stay connected within the
    /// timeout. With a t-out-of-N threshold the others can go on without it.
    #[error("missing party: {0}")]
    MissingParty(String),

    /// A request that would take a worker past one of its configured limits (stored slots or
    /// bytes); nothing was changed.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
}

impl Error {
    /// Whether reading untrusted bytes failed because of the bytes themselves (malformed,
    /// truncated, corrupted, another version or kind of object), as opposed to the source
    /// (`Io`) or a limit: every such failure loaded nothing.
    pub fn is_decode_failure(&self) -> bool {
        matches!(
            self,
            Error::Decode(_)
                | Error::Truncated { .. }
                | Error::ChecksumMismatch { .. }
                | Error::FormatVersion { .. }
                | Error::WrongObject { .. }
        )
    }
}

/// A rotation step for [`Error::MissingGaloisKey`]'s message.
fn rotation_name(step: &Option<i64>) -> String {
    match step {
        Some(s) => format!("rotation step {s}"),
        None => "an automorphism other than a rotation (BFV's row swap, CKKS's conjugation)".into(),
    }
}
