//! Neural-network layers with a plaintext (f32/f64 ndarray) forward and backward pass.
