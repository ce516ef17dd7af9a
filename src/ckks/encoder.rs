//! The CKKS canonical-embedding encoder.
//!
//! Slot `j` is the evaluation at `ζ^{5^j}` (ζ = e^{iπ/N}); its conjugate sits at `ζ^{-5^j}`.
//! The generator is 5, as in HEAAN and Lattigo, not 3: every `5^j ≡ 1 (mod 4)`, so
//! `ζ_j^{N/2} = i` in every slot, which makes decoding a plain complex FFT of half length
//! (`t_k + i·t_{k+N/2}`) that bootstrapping can factor into sparse stages ([`super::bootstrap`]).
//! Those evaluations are exactly what a negacyclic transform over the complex numbers
//! computes, in the same bit-reversed order as the integer NTT, so encoding is a complex
//! inverse negacyclic FFT and decoding a forward one (O(N log N)). Rotating by `k` slots is
//! the automorphism `X → X^{5^k}`, conjugation is `X → X^{-1}`.

use num_complex::Complex64;

use crate::math::ntt::bit_reverse;

/// The generator of the slot group: slot `j` sits at `ζ^{5^j}`.
pub const SLOT_GENERATOR: usize = 5;

/// Complex negacyclic FFT tables and the slot ↔ evaluation index map.
#[derive(Clone, Debug)]
pub struct CkksEncoder {
    n: usize,
    /// ψ^{bitrev(k)} and ψ^{-bitrev(k)} with ψ = e^{iπ/N}.
    psi_rev: Vec<Complex64>,
    ipsi_rev: Vec<Complex64>,
    /// Position of slot j's evaluation, and of its conjugate's.
    slot_pos: Vec<usize>,
    conj_pos: Vec<usize>,
}

impl CkksEncoder {
    /// Tables for ring degree `n`.
    pub fn new(n: usize) -> Self {
        let log_n = n.trailing_zeros();
        let two_n = 2 * n;
        let root = |e: usize| {
            let a = std::f64::consts::PI * e as f64 / n as f64;
            Complex64::new(a.cos(), a.sin())
        };
        let psi_rev = (0..n).map(|k| root(bit_reverse(k, log_n))).collect();
        let ipsi_rev = (0..n).map(|k| root(bit_reverse(k, log_n)).conj()).collect();
        let mut slot_pos = Vec::with_capacity(n / 2);
        let mut conj_pos = Vec::with_capacity(n / 2);
        let mut g = 1usize;
        for _ in 0..n / 2 {
            slot_pos.push(bit_reverse((g - 1) / 2, log_n));
            conj_pos.push(bit_reverse((two_n - g - 1) / 2, log_n));
            g = g * SLOT_GENERATOR % two_n;
        }
        Self {
            n,
            psi_rev,
            ipsi_rev,
            slot_pos,
            conj_pos,
        }
    }

    /// Number of complex slots (N/2).
    pub fn slots(&self) -> usize {
        self.n / 2
    }

    fn forward(&self, a: &mut [Complex64]) {
        let mut t = self.n;
        let mut m = 1;
        while m < self.n {
            t >>= 1;
            for i in 0..m {
                let w = self.psi_rev[m + i];
                let (x, y) = a[2 * i * t..2 * (i + 1) * t].split_at_mut(t);
                for (u, v) in x.iter_mut().zip(y.iter_mut()) {
                    let p = *v * w;
                    *v = *u - p;
                    *u += p;
                }
            }
            m <<= 1;
        }
    }

    fn inverse(&self, a: &mut [Complex64]) {
        let mut t = 1;
        let mut m = self.n;
        while m > 1 {
            let h = m >> 1;
            for i in 0..h {
                let w = self.ipsi_rev[h + i];
                let (x, y) = a[2 * i * t..2 * (i + 1) * t].split_at_mut(t);
                for (u, v) in x.iter_mut().zip(y.iter_mut()) {
                    let (p, q) = (*u, *v);
                    *u = p + q;
                    *v = (p - q) * w;
                }
            }
            t <<= 1;
            m = h;
        }
        let inv = 1.0 / self.n as f64;
        a.iter_mut().for_each(|x| *x *= inv);
    }

    /// Real polynomial coefficients whose slots are `z` (missing slots are zero).
    pub fn embed_inverse(&self, z: &[Complex64]) -> Vec<f64> {
        let mut v = vec![Complex64::new(0.0, 0.0); self.n];
        for (j, &x) in z.iter().enumerate() {
            v[self.slot_pos[j]] = x;
            v[self.conj_pos[j]] = x.conj();
        }
        self.inverse(&mut v);
        v.into_iter().map(|c| c.re).collect()
    }

    /// Slots of real polynomial coefficients.
    pub fn embed(&self, coeffs: &[f64]) -> Vec<Complex64> {
        let mut v: Vec<Complex64> = coeffs.iter().map(|&c| Complex64::new(c, 0.0)).collect();
        self.forward(&mut v);
        self.slot_pos.iter().map(|&p| v[p]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn embedding_roundtrip_and_product() {
        let enc = CkksEncoder::new(64);
        let z: Vec<Complex64> = (0..32)
            .map(|i| Complex64::new(i as f64 * 0.5 - 3.0, (i % 5) as f64))
            .collect();
        let c = enc.embed_inverse(&z);
        let back = enc.embed(&c);
        for (a, b) in z.iter().zip(&back) {
            assert!((a - b).norm() < 1e-9);
        }
        // Slots multiply when polynomials multiply negacyclically.
        let w: Vec<Complex64> = (0..32)
            .map(|i| Complex64::new(1.0 / (i as f64 + 1.0), 0.25))
            .collect();
        let d = enc.embed_inverse(&w);
        let mut prod = vec![0.0; 64];
        for i in 0..64 {
            for j in 0..64 {
                let s = c[i] * d[j];
                if i + j < 64 {
                    prod[i + j] += s;
                } else {
                    prod[i + j - 64] -= s;
                }
            }
        }
        let slots = enc.embed(&prod);
        for k in 0..32 {
            assert!((slots[k] - z[k] * w[k]).norm() < 1e-9);
        }
        // Direct evaluation at zeta^{5^j} matches.
        let zeta = |e: f64| Complex64::from_polar(1.0, std::f64::consts::PI * e / 64.0);
        let mut g = 1usize;
        for j in 0..32 {
            let val: Complex64 = c
                .iter()
                .enumerate()
                .map(|(k, &ck)| ck * zeta((g * k) as f64))
                .sum();
            assert!((val - z[j]).norm() < 1e-9, "slot {j}");
            g = g * 5 % 128;
        }
    }
}
