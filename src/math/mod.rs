//! Host-side number theory: 32-bit modular arithmetic, NTT-friendly primes, negacyclic NTTs,
//! RNS bases with CRT and fast base conversion, and ChaCha20-based samplers.
//!
//! Every limb prime is below 2^30 (see [`modular::Modulus::MAX_BITS`]) so that Harvey's lazy
//! butterflies can keep values in `[0, 4q)` inside a `u32` word on every backend.

pub mod modular;
pub mod ntt;
pub mod ntt64;
#[cfg(target_arch = "x86_64")]
mod ntt_avx512;
pub mod primes;
pub mod ring;
pub mod rns;
pub mod sampler;
pub mod scale_round;
pub mod simd;

pub use modular::Modulus;
pub use ntt::NttPlan;
pub use ring::RingContext;
pub use rns::{BaseConverter, RnsBasis};
pub use scale_round::ScaleRounder;
