//! # hetensor
//!
//! A homomorphic tensor engine: RNS/NTT-based **BFV** and **CKKS** over 32-bit residue words,
//! a backend trait over device-resident batches of RNS polynomials (CPU/rayon always built;
//! CUDA and wgpu behind features), and a tensor / layer API for encrypted CNN inference.
//!
//! Layers, each depending only on those above it (see `ARCHITECTURE.md`):
//! `math` → `backend` → `rlwe` → `bfv` / `ckks` → `tensor` → `nn` → `graph` → `onnx` → `lower` → CLI.
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod backend;
pub mod bfv;
pub mod ckks;
pub mod data;
pub mod error;
pub mod graph;
pub mod lower;
pub mod math;
pub mod memory;
pub mod mhe;
pub mod nn;
pub mod onnx;
pub mod progress;
pub mod rlwe;
pub mod serialize;
pub mod tensor;
pub mod threads;
pub mod train;
pub mod workers;

pub use error::{Error, Result};
