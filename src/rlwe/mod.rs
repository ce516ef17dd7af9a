//! Ring-LWE machinery shared by BFV and CKKS: parameters and the security check, keys,
//! encryption, hybrid key switching (configurable dnum and special primes), relinearization
//! and Galois automorphisms.

pub mod builder;
pub mod ciphertext;
pub mod context;
pub mod keys;
pub mod params;

pub use builder::{ContextBuilder, SchemeParams};
pub use ciphertext::Ciphertext;
pub use context::RlweContext;
pub use keys::{GaloisKeys, KeySet, KeySwitchKey, PublicKey, RelinKey, SecretKey};
pub use params::{LevelShape, RlweParams, Security};
