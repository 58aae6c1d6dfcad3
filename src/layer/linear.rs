//! `y = x Wᵀ + b` through matrixmultiply, with the weight stored `[out, in]` as PyTorch does.

use alloc::vec;
use alloc::vec::Vec;

/// A dense projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]`, row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

impl Linear {
    /// Applies the projection to `rows` input rows of `in_features` each.
    ///
    /// # Panics
    /// If `x.len() != rows · in_features` or the weight does not match the sizes (the layer
    /// checks both when it is built and before every call).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.in_features, self.out_features);
        assert_eq!(x.len(), rows * k, "linear: input length");
        assert_eq!(self.weight.len(), n * k, "linear: weight length");
        let mut y = vec![0.0f32; rows * n];
        if rows > 0 && n > 0 && k > 0 {
            // SAFETY: A is `rows × k` row-major (x.len() checked), B = Wᵀ is `k × n` read through
            // W's `[n, k]` storage with strides (1, k) (weight.len() checked), C is `rows × n`
            // row-major and freshly allocated; beta = 0 so C is not read; no two C elements alias.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    self.weight.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    y.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(n) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        y
    }

    /// The same projection in f64 (for the reference forward).
    pub fn forward_f64(&self, x: &[f64], rows: usize) -> Vec<f64> {
        let (k, n) = (self.in_features, self.out_features);
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let w = &self.weight[o * k..(o + 1) * k];
                let mut acc = self.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                for (xi, &wi) in x[r * k..(r + 1) * k].iter().zip(w) {
                    acc += xi * wi as f64;
                }
                y[r * n + o] = acc;
            }
        }
        y
    }
}
