//! The closed choices of the command line, as clap value enums: the spelling on the command
//! line is the variant's kebab-case name, and a doc comment is the value's help text. An
//! unknown value is clap's error, which lists the possible values.

use clap::ValueEnum;

/// Prints a choice as it is spelled on the command line.
macro_rules! display_as_flag_value {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = self.to_possible_value().expect("no variant is skipped");
                f.write_str(v.get_name())
            }
        }
    )*};
}

display_as_flag_value!(
    Backend,
    Scheme,
    BenchScheme,
    Layout,
    Precision,
    Workload,
    PartyWorkload,
    Refresh
);

/// What the encrypted operations compute on (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The CPU (always available).
    Cpu,
    /// NVIDIA GPUs (a build with the `cuda` feature).
    Cuda,
    /// Any GPU through wgpu (a build with the `wgpu` feature).
    Wgpu,
    /// The best available: cuda, then a hardware wgpu adapter, then the CPU.
    Auto,
}

impl Backend {
    /// The library's name for it.
    pub fn kind(self) -> hetensor::backend::BackendKind {
        use hetensor::backend::BackendKind;
        match self {
            Self::Cpu => BackendKind::Cpu,
            Self::Cuda => BackendKind::Cuda,
            Self::Wgpu => BackendKind::Wgpu,
            Self::Auto => BackendKind::Auto,
        }
    }

    /// Creates the backend (an error, never a panic, where it is not built in or has no
    /// device).
    pub fn create(self) -> hetensor::Result<std::sync::Arc<dyn hetensor::backend::Backend>> {
        hetensor::backend::create_backend(self.kind())
    }
}

/// Which encryption scheme runs a model (`mnist`, `infer`: `--scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// Approximate arithmetic on reals.
    Ckks,
    /// Exact integers (the model quantized).
    Bfv,
}

/// What `bench --scheme` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchScheme {
    /// CKKS operations.
    Ckks,
    /// BFV operations.
    Bfv,
    /// CKKS bootstrapping.
    Bootstrap,
}

/// How samples map to slots (`--layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// One sample per slot (throughput).
    Batched,
    /// One sample at a time, with rotations (latency; ckks only).
    Packed,
}

/// The CKKS chain of `mnist`'s batched layout (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// One 25-bit prime per level, N = 2^13.
    Fast,
    /// One 29-bit prime per level, N = 2^14.
    High,
}

/// What `train` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Logistic regression on Titanic.
    Titanic,
    /// Logistic regression on UCI credit approval.
    Credit,
    /// Federated averaging on UCI credit approval.
    CreditFederated,
    /// A new LeNet-1 head for digits 5-9 on encrypted features.
    MnistTransfer,
}

/// The session a `party` process serves (`--workload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PartyWorkload {
    /// A data owner with its slice of the credit data.
    CreditFederated,
    /// A key-share holder only.
    MnistTransfer,
}

/// How `train` gives the weights their levels back (`--refresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Refresh {
    /// The key holder decrypts and re-encrypts them.
    KeyHolder,
    /// Bootstrapping on public keys.
    Bootstrap,
}
