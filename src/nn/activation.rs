//! Polynomial activations, the non-linearities that homomorphic encryption can evaluate.
//!
//! A [`PolyActivation`] is `p(x) = c0 + c1·x + c2·x² + …` applied element-wise. Its
//! coefficients are fixed (chosen or fitted up front), not trained.
//!
//! [`PolyActivation::sigmoid`] and [`PolyActivation::relu`] fit the coefficients by least
//! squares: they minimise `Σ (p(x_i) − f(x_i))²` over [`FIT_POINTS`] equally spaced points
//! `x_i` covering the closed interval `[lo, hi]`, endpoints included. Inside the interval the
//! fit is good (see the tests for the error of common choices); **outside it the polynomial
//! diverges quickly**, so pick an interval that contains the pre-activation values the model
//! actually produces (see [`Sequential::activation_ranges`](super::Sequential::activation_ranges)).
//!
//! Numerics: the fit is solved in the variable `t = (x − mid)/half ∈ [−1, 1]` with Householder
//! QR (no normal equations), then expanded back into powers of `x`.

use super::Tensor;
use crate::{Error, Result};

/// Number of equally spaced grid points used by the least-squares fits.
pub const FIT_POINTS: usize = 4001;

/// Highest degree accepted by [`PolyActivation::fit`]; higher degrees are numerically
/// meaningless in the monomial basis and far too deep for encrypted evaluation anyway.
pub const MAX_FIT_DEGREE: usize = 31;

/// Element-wise polynomial `c0 + c1·x + … + c_d·x^d`.
#[derive(Clone, Debug, PartialEq)]
pub struct PolyActivation {
    /// Coefficients in increasing powers: `coeffs[i]` multiplies `x^i`. Non-empty, finite.
    pub coeffs: Vec<f64>,
    /// The interval the coefficients were fitted on, if they come from a fit. Informational:
    /// evaluation works everywhere, but the approximation only holds inside it.
    pub interval: Option<(f64, f64)>,
}

impl PolyActivation {
    /// A polynomial with user-given coefficients (`coeffs[i]` multiplies `x^i`).
    pub fn new(coeffs: Vec<f64>) -> Result<Self> {
        let p = Self {
            coeffs,
            interval: None,
        };
        p.validate()?;
        Ok(p)
    }

    /// Least-squares polynomial fit of the logistic sigmoid `1 / (1 + e^(−x))` of the given
    /// degree on `[interval.0, interval.1]` (e.g. degree 3 on `(-8.0, 8.0)`, the classic
    /// choice for encrypted logistic regression).
    pub fn sigmoid(degree: usize, interval: (f64, f64)) -> Result<Self> {
        Self::fit(|x| 1.0 / (1.0 + (-x).exp()), degree, interval)
    }

    /// Least-squares polynomial fit of `max(0, x)` of the given degree on
    /// `[interval.0, interval.1]` (e.g. degree 2 on `(-4.0, 4.0)`).
    pub fn relu(degree: usize, interval: (f64, f64)) -> Result<Self> {
        Self::fit(|x| x.max(0.0), degree, interval)
    }

    /// Least-squares fit of any function `f` with a polynomial of degree `degree` over
    /// [`FIT_POINTS`] equally spaced points of `[interval.0, interval.1]`.
    pub fn fit(f: impl Fn(f64) -> f64, degree: usize, interval: (f64, f64)) -> Result<Self> {
        let (lo, hi) = interval;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::Model(format!(
                "polynomial fit needs a finite interval with lo < hi, got [{lo}, {hi}]"
            )));
        }
        if degree > MAX_FIT_DEGREE {
            return Err(Error::Model(format!(
                "polynomial fit of degree {degree} requested; at most {MAX_FIT_DEGREE} is supported"
            )));
        }
        let (mid, half) = (0.5 * (lo + hi), 0.5 * (hi - lo));
        let m = FIT_POINTS;
        let n = degree + 1;
        // Column-major Vandermonde matrix in t = (x − mid)/half.
        let mut a = vec![0.0; m * n];
        let mut b = vec![0.0; m];
        for i in 0..m {
            let t = -1.0 + 2.0 * i as f64 / (m - 1) as f64;
            let x = mid + half * t;
            b[i] = f(x);
            if !b[i].is_finite() {
                return Err(Error::Model(format!(
                    "polynomial fit: the target function is not finite at x = {x}"
                )));
            }
            let mut pw = 1.0;
            for j in 0..n {
                a[j * m + i] = pw;
                pw *= t;
            }
        }
        let coeffs_t = least_squares(&mut a, &mut b, m, n);
        // Expand Σ a_i t^i with t = (x − mid)/half into powers of x.
        let mut coeffs = vec![0.0; n];
        let mut pow = vec![1.0]; // t^i as a polynomial in x
        for (i, &ai) in coeffs_t.iter().enumerate() {
            for (c, &p) in coeffs.iter_mut().zip(&pow) {
                *c += ai * p;
            }
            if i + 1 < n {
                let mut next = vec![0.0; pow.len() + 1];
                for (j, &p) in pow.iter().enumerate() {
                    next[j] += p * (-mid / half);
                    next[j + 1] += p / half;
                }
                pow = next;
            }
        }
        let p = Self {
            coeffs,
            interval: Some(interval),
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks that there is at least one coefficient and all are finite.
    pub fn validate(&self) -> Result<()> {
        if self.coeffs.is_empty() {
            return Err(Error::Model(
                "PolyActivation needs at least one coefficient".into(),
            ));
        }
        if let Some((i, c)) = self.coeffs.iter().enumerate().find(|(_, c)| !c.is_finite()) {
            return Err(Error::Model(format!(
                "PolyActivation coefficient c{i} = {c} is not finite"
            )));
        }
        Ok(())
    }

    /// Degree (number of coefficients minus one).
    pub fn degree(&self) -> usize {
        self.coeffs.len().saturating_sub(1)
    }

    /// `p(x)` by Horner's rule.
    pub fn eval(&self, x: f64) -> f64 {
        self.coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c)
    }

    /// `p'(x)` by Horner's rule.
    pub fn derivative(&self, x: f64) -> f64 {
        self.coeffs
            .iter()
            .enumerate()
            .skip(1)
            .rev()
            .fold(0.0, |acc, (i, &c)| acc * x + i as f64 * c)
    }

    /// Forward pass (element-wise, any shape).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.validate()?;
        Ok(x.mapv(|v| self.eval(v)))
    }

    /// Backward pass: `∂L/∂x = p'(x) · ∂L/∂y`; no trainable parameters.
    pub fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        self.validate()?;
        if grad_out.shape() != x.shape() {
            return Err(Error::Shape(format!(
                "PolyActivation backward: output gradient has shape {:?} but the input has shape \
                 {:?}",
                grad_out.shape(),
                x.shape()
            )));
        }
        let mut gx = grad_out.to_owned();
        gx.zip_mut_with(x, |g, &v| *g *= self.derivative(v));
        Ok((gx, Vec::new()))
    }
}

/// Solves `min ‖A c − b‖₂` for a column-major `m × n` matrix `A` (`m ≥ n`) by Householder QR.
/// `a` and `b` are overwritten. A (numerically) rank-deficient column gets coefficient 0.
fn least_squares(a: &mut [f64], b: &mut [f64], m: usize, n: usize) -> Vec<f64> {
    let mut diag = vec![0.0; n];
    for j in 0..n {
        // Householder reflector for column j, rows j..m.
        let norm = a[j * m + j..(j + 1) * m]
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            diag[j] = 0.0;
            continue;
        }
        let alpha = if a[j * m + j] > 0.0 { -norm } else { norm };
        a[j * m + j] -= alpha; // v = x − alpha·e1, stored in place
        let vnorm2: f64 = a[j * m + j..(j + 1) * m].iter().map(|v| v * v).sum();
        diag[j] = alpha;
        if vnorm2 == 0.0 {
            continue;
        }
        // Apply H = I − 2 v vᵀ / (vᵀv) to the remaining columns and to b.
        for k in j + 1..n {
            let dot: f64 = (j..m).map(|i| a[j * m + i] * a[k * m + i]).sum();
            let f = 2.0 * dot / vnorm2;
            for i in j..m {
                a[k * m + i] -= f * a[j * m + i];
            }
        }
        let dot: f64 = (j..m).map(|i| a[j * m + i] * b[i]).sum();
        let f = 2.0 * dot / vnorm2;
        for i in j..m {
            b[i] -= f * a[j * m + i];
        }
    }
    // Back substitution with R (diagonal in `diag`, strict upper part in a[k*m + j], j < k).
    let scale = diag.iter().fold(0.0f64, |s, d| s.max(d.abs()));
    let mut c = vec![0.0; n];
    for j in (0..n).rev() {
        let mut s = b[j];
        for k in j + 1..n {
            s -= a[k * m + j] * c[k];
        }
        c[j] = if diag[j].abs() > scale * 1e-13 {
            s / diag[j]
        } else {
            0.0
        };
    }
    c
}
