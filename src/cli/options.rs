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
    Refresh,
    OutputSmudging
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

/// How `train credit-federated --parties K` protects the final model's collective
/// decryption (`--output-smudging`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputSmudging {
    /// 40-bit statistical smudging: trains on a chain precise enough to keep ~10 bits under
    /// it (scale 2^84, N = 2^15; several times slower).
    Statistical,
    /// 2^14 per share on the faster 2^26 chain (N = 2^14): the weights stay within ~1e-2,
    /// but the noise is hidden far below 40 bits.
    Weak,
}

/// Fails on the first flag that was given although none of the `selected` choices reads it
/// (a flag that would be ignored): `flags` holds each flag's name, whether it was given, and
/// the choices that read it. The error names the flag, the choices selected and those that
/// read it (each after `prefix`, e.g. `--scheme `).
pub fn reject_unused<W: Copy + PartialEq + std::fmt::Display>(
    prefix: &str,
    selected: &[W],
    flags: &[(&str, bool, &[W])],
) -> hetensor::Result<()> {
    for &(flag, given, users) in flags {
        if given && !selected.iter().any(|w| users.contains(w)) {
            let selected = selected.iter().map(W::to_string).collect::<Vec<_>>();
            return Err(hetensor::Error::InvalidInput(format!(
                "{flag} does not apply to {prefix}{} (it is used by {prefix}{})",
                selected.join(","),
                words(users)
            )));
        }
    }
    Ok(())
}

/// `a`, `a and b`, `a, b and c`.
fn words<W: std::fmt::Display>(items: &[W]) -> String {
    let names: Vec<String> = items.iter().map(W::to_string).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
