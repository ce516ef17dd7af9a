//! The BFV scheme: exact integer arithmetic modulo a plaintext prime `t` on N slots at once.
//!
//! - [`BfvParams`]: ring degree, plaintext modulus (a batching prime `t ≡ 1 mod 2N`, up to 60
//!   bits), 30-bit ciphertext primes, hybrid key switching (`dnum`), and the auxiliary primes
//!   multiplication needs; 128-bit presets for N = 2^13..2^16 ([`BfvParams::preset`]).
//! - [`BfvContext`]: key generation, encryption/decryption, the batch encoder (SEAL's 2 × N/2
//!   slot matrix), the evaluator (add, plaintext and scalar products, ciphertext products with
//!   relinearization, row rotations, column swap, modulus switching) and the invariant noise
//!   budget.
//! - [`noise`]: the noise estimate every ciphertext carries (no secret key needed). An operation
//!   whose result would have no budget left returns `Error::NoiseBudgetExhausted` instead of a
//!   ciphertext that decrypts to wrong values, and decryption checks the real noise it measures
//!   ([`MIN_DECRYPT_BUDGET_BITS`]).
//! - [`BfvCrt`]: several plaintext moduli combined by CRT, for integers beyond 60 bits.
//!
//! Everything between encryption and decryption is integer-exact RNS arithmetic on the
//! backend, so every backend produces the same ciphertext words: multiplication uses the
//! Halevi-Polyakov-Shoup scale-and-round ([`crate::math::ScaleRounder`]) rather than floating
//! point. The plaintext modulus lives on the host (u64); only encoding, decoding, and
//! decryption's final rounding touch it.

pub mod context;
pub mod crt;
pub mod encoder;
pub mod evaluator;
pub mod noise;
pub mod params;

pub use crate::rlwe::keys::KeySet;
pub use context::{BfvContext, Ciphertext, Plaintext, MIN_DECRYPT_BUDGET_BITS};
pub use crt::{BfvCrt, BfvCrtBuilder, CrtCiphertext};
pub use params::{BfvChain, BfvParams, BfvParamsBuilder, PlainModulus, MAX_PLAIN_BITS};
