//! `y = x Wᵀ + b`, with the weight stored `[out, in]` as PyTorch does: a few rows (a decode
//! step) as dot products of each input row with the weight rows, in place, on the selected ISA's
//! kernel; more rows through matrixmultiply's packed gemm.

use crate::kernel::{dispatch, Kernel, KernelVisitor};
use crate::Isa;
use alloc::vec;
use alloc::vec::Vec;

/// Most input rows that are multiplied row by row. matrixmultiply packs the whole weight on
/// every call (a read and a write of it), which for one row costs as much as the product itself;
/// the rows' dot products read each weight row once, where it lies.
const DOT_ROWS_MAX: usize = 4;

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
        self.forward_on(x, rows, Isa::selected())
    }

    /// [`Linear::forward`] with a few rows' products on the kernel of `isa` (available: resolved
    /// by the caller).
    pub(crate) fn forward_on(&self, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
        let (k, n) = (self.in_features, self.out_features);
        assert_eq!(x.len(), rows * k, "linear: input length");
        assert_eq!(self.weight.len(), n * k, "linear: weight length");
        let mut y = vec![0.0f32; rows * n];
        if rows > 0 && n > 0 && k > 0 && rows <= DOT_ROWS_MAX {
            dispatch(isa, RowProducts { x, w: &self.weight, rows, k, n, y: &mut y });
        } else if rows > 0 && n > 0 && k > 0 {
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

/// `y[r·n + o] = x[r·k ..] · w[o·k ..]` for `r < rows`, `o < n` on a kernel.
struct RowProducts<'a> {
    x: &'a [f32],
    w: &'a [f32],
    rows: usize,
    k: usize,
    n: usize,
    y: &'a mut [f32],
}

/// Output features per task when one row's products are shared among threads.
#[cfg(feature = "rayon")]
const FEATURES_PER_TASK: usize = 256;

/// Weights (elements, 4 MiB of f32) from which one row's products are shared among threads: a
/// decode step reads its weights once, and one core alone does not reach the read bandwidth.
/// Smaller weights stay in the caches, where the split costs more than it saves (the demo's
/// layer was measured slower with the split from 1 MiB).
#[cfg(feature = "rayon")]
const PARALLEL_WEIGHTS: usize = 1 << 20;

impl KernelVisitor for RowProducts<'_> {
    type Output = ();
    fn visit<K: Kernel>(self, kernel: K) {
        let RowProducts { x, w, rows, k, n, y } = self;
        #[cfg(feature = "rayon")]
        if rows == 1 && n * k >= PARALLEL_WEIGHTS {
            use rayon::prelude::*;
            // Each task owns a run of output features (and reads only their weight rows), so
            // the result does not depend on the thread count.
            y.par_chunks_mut(FEATURES_PER_TASK).enumerate().for_each(|(c, yc)| {
                let w_c = &w[c * FEATURES_PER_TASK * k..];
                kernel.dot_rows(1, yc.len(), k, x, k, w_c, k, yc, yc.len());
            });
            return;
        }
        kernel.dot_rows(rows, n, k, x, k, w, k, y, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path (row products up to `DOT_ROWS_MAX` rows, shared among threads for one row of
    /// a large weight; the packed gemm beyond) on every available ISA against the f64
    /// projection: `|y − y₆₄| ≤ 1e-5 · √k · Σ |x·w|` (the kernels' dot-product bound,
    /// `kernel::tests::DOT_RTOL`), plus the bias.
    #[test]
    fn every_row_count_and_isa_matches_f64() {
        check_sizes(67, 37);
        // 1.1 M weights: one row's products are shared among threads (with rayon).
        check_sizes(1024, 1100);
    }

    fn check_sizes(k: usize, n: usize) {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let lin = Linear {
            weight: (0..n * k).map(|_| rnd()).collect(),
            bias: Some((0..n).map(|_| rnd()).collect()),
            in_features: k,
            out_features: n,
        };
        let abs = Linear {
            weight: lin.weight.iter().map(|w| w.abs()).collect(),
            bias: None,
            in_features: k,
            out_features: n,
        };
        for rows in 0..=DOT_ROWS_MAX + 2 {
            let x: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let want = lin.forward_f64(&x64, rows);
            let mag = abs.forward_f64(&x64.iter().map(|v| v.abs()).collect::<Vec<_>>(), rows);
            for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
                let got = lin.forward_on(&x, rows, isa);
                assert_eq!(got.len(), rows * n);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (k as f64).sqrt() * mag[i] + 1e-7;
                    assert!((g as f64 - w).abs() <= tol, "{isa:?} rows {rows} at {i}: {g} vs {w}");
                }
            }
        }
    }
}
