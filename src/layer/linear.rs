//! `y = x Wᵀ + b`, with the weight stored `[out, in]` as PyTorch does: a few rows (a decode step)
//! as dot products of each input row with the weight rows, in place, on the selected ISA's kernel;
//! more rows through matrixmultiply's packed gemm. A layer may keep a half-precision copy of a
//! [`Linear`]'s weight ([`GatedAttention::with_weight_dtype`](super::GatedAttention::with_weight_dtype)):
//! the kernels then widen it in registers, so a decode step reads half the bytes, and the packed
//! gemm widens it a block of rows at a time.

use crate::element::{DType, Element, Elems};
use crate::error::Error;
use crate::kernel::{dispatch, Kernel, KernelVisitor};
use crate::Isa;
use alloc::vec;
use alloc::vec::Vec;
use half::{bf16, f16};

/// Most input rows that are multiplied row by row. matrixmultiply packs the whole weight on
/// every call (a read and a write of it), which for one row costs as much as the product itself;
/// the rows' dot products read each weight row once, where it lies.
const DOT_ROWS_MAX: usize = 4;

/// Most input rows multiplied row by row over a small weight ([`SMALL_WEIGHT`] values or fewer:
/// the rotated-query gate's `[head_dim, head_dim]` applied to every head of a decode step). Such a
/// weight stays in the caches, and matrixmultiply's packing buffers would be an allocation per
/// call.
const SMALL_WEIGHT_ROWS_MAX: usize = 64;

/// Values of a weight that counts as small for [`SMALL_WEIGHT_ROWS_MAX`] (256 KiB of f32).
const SMALL_WEIGHT: usize = 1 << 16;

/// Weight rows a half-precision weight is widened to f32 at a time for the packed gemm (more
/// input rows than [`DOT_ROWS_MAX`]): the block, not the whole weight, is held in f32.
const WIDEN_ROWS: usize = 256;

/// A projection's weight matrix in its storage type (a layer's half-precision copy of a
/// [`Linear`]'s weight). Arithmetic is f32 whatever the storage: a half-precision weight is
/// widened (exactly) where it is read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LinearWeight {
    /// f32 values.
    F32(Vec<f32>),
    /// f16 values.
    F16(Vec<f16>),
    /// bf16 values.
    BF16(Vec<bf16>),
}

impl LinearWeight {
    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.elems().dtype()
    }
    /// The values, borrowed.
    pub fn elems(&self) -> Elems<'_> {
        match self {
            LinearWeight::F32(v) => Elems::F32(v),
            LinearWeight::F16(v) => Elems::F16(v),
            LinearWeight::BF16(v) => Elems::BF16(v),
        }
    }
    /// Value `i`, widened to f32.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get_f32(&self, i: usize) -> f32 {
        self.elems().get_f32(i)
    }

    /// `values` stored as `dtype` (rounded to nearest-even when narrowing), reserved fallibly: a
    /// refused allocation is an [`Error::AllocationFailed`], not an abort.
    pub fn from_f32(values: &[f32], dtype: DType) -> Result<LinearWeight, Error> {
        Self::from_elems(Elems::F32(values), dtype)
    }

    fn from_elems(src: Elems<'_>, dtype: DType) -> Result<LinearWeight, Error> {
        fn convert<E: Element>(src: Elems<'_>) -> Result<Vec<E>, Error> {
            let n = src.len();
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| Error::AllocationFailed {
                operand: crate::error::Operand::Weights,
                bytes: n.saturating_mul(core::mem::size_of::<E>()),
            })?;
            v.extend((0..n).map(|i| E::from_f32(src.get_f32(i))));
            Ok(v)
        }
        Ok(match dtype {
            DType::F32 => LinearWeight::F32(convert(src)?),
            DType::F16 => LinearWeight::F16(convert(src)?),
            DType::BF16 => LinearWeight::BF16(convert(src)?),
        })
    }
}

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
        let mut y = vec![0.0f32; rows * self.out_features];
        self.forward_into(x, rows, Isa::selected(), true, &mut y);
        y
    }

    /// The projection as the kernels read it, with `weight` (the same values in another storage
    /// type: a layer's half-precision copy) in place of its own f32 weight when given.
    pub(crate) fn with_weight<'a>(&'a self, weight: Option<&'a LinearWeight>) -> Projection<'a> {
        let weight = weight.map_or(Elems::F32(&self.weight), LinearWeight::elems);
        Projection { weight, bias: self.bias.as_deref(), k: self.in_features, n: self.out_features }
    }

    /// [`Linear::forward`] into `y` (`rows · out_features` values); see
    /// [`Projection::forward_into`].
    pub(crate) fn forward_into(&self, x: &[f32], rows: usize, isa: Isa, parallel: bool, y: &mut [f32]) {
        self.with_weight(None).forward_into(x, rows, isa, parallel, y)
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

/// A projection's weight (in its storage type), bias and sizes, borrowed: what the kernels read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Projection<'a> {
    weight: Elems<'a>,
    bias: Option<&'a [f32]>,
    /// Input features.
    k: usize,
    /// Output features.
    n: usize,
}

impl Projection<'_> {
    /// `y = x Wᵀ + b` into `y` (`rows · n` values), a few rows' products on the kernel of `isa`
    /// (available: resolved by the caller), one row's products over a large weight shared among
    /// rayon's threads when `parallel`. Allocates nothing for up to [`DOT_ROWS_MAX`] rows
    /// ([`SMALL_WEIGHT_ROWS_MAX`] over a small weight).
    ///
    /// # Panics
    /// If `x`, `y` or the weight do not match the sizes (the layer checks them when it is built
    /// and before every call).
    pub(crate) fn forward_into(self, x: &[f32], rows: usize, isa: Isa, parallel: bool, y: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert_eq!(x.len(), rows * k, "linear: input length");
        assert_eq!(self.weight.len(), n * k, "linear: weight length");
        assert_eq!(y.len(), rows * n, "linear: output length");
        if rows == 0 || n == 0 {
            return;
        }
        if k == 0 {
            y.fill(0.0);
        } else if rows <= DOT_ROWS_MAX || (rows <= SMALL_WEIGHT_ROWS_MAX && n * k <= SMALL_WEIGHT) {
            let p = Products { x, rows, k, n, y, parallel };
            match self.weight {
                Elems::F32(w) => dispatch(isa, RowProducts { p, w }),
                Elems::F16(w) => dispatch(isa, RowProducts { p, w }),
                Elems::BF16(w) => dispatch(isa, RowProducts { p, w }),
            }
        } else {
            match self.weight {
                Elems::F32(w) => sgemm_into(x, w, rows, k, n, 0, y),
                Elems::F16(w) => widened_gemm(x, w, rows, k, n, y),
                Elems::BF16(w) => widened_gemm(x, w, rows, k, n, y),
            }
        }
        if let Some(b) = self.bias {
            for row in y.chunks_exact_mut(n) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }
}

/// `y[:, col0 .. col0 + n_w] = x · w_blockᵀ` through matrixmultiply, `w_block` the `[n_w, k]`
/// weight rows of output features `col0..`, `y` the whole `[rows, n]` output.
fn sgemm_into(x: &[f32], w_block: &[f32], rows: usize, k: usize, n: usize, col0: usize, y: &mut [f32]) {
    let n_w = w_block.len() / k;
    assert!(x.len() == rows * k && w_block.len() == n_w * k && col0 + n_w <= n && y.len() == rows * n);
    // SAFETY: A is `rows × k` row-major (x.len() checked), B = Wᵀ is `k × n_w` read through the
    // block's `[n_w, k]` storage with strides (1, k) (its length checked), C is columns
    // `col0..col0 + n_w` of the `rows × n` row-major y (inside it: checked); beta = 0 so C is not
    // read; no two C elements alias.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            n_w,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            w_block.as_ptr(),
            1,
            k as isize,
            0.0,
            y.as_mut_ptr().add(col0),
            n as isize,
            1,
        );
    }
}

/// The packed gemm of a half-precision weight: [`WIDEN_ROWS`] weight rows at a time widened to
/// f32 (exactly) and multiplied into their output columns: the block, not the whole weight, is
/// held in f32 (a prefill's cost; decode steps take the row products).
fn widened_gemm<E: Element>(x: &[f32], w: &[E], rows: usize, k: usize, n: usize, y: &mut [f32]) {
    let mut block = vec![0.0f32; WIDEN_ROWS.min(n) * k];
    let mut col0 = 0;
    for wb in w.chunks(WIDEN_ROWS * k) {
        let b = &mut block[..wb.len()];
        for (d, &s) in b.iter_mut().zip(wb) {
            *d = s.to_f32();
        }
        sgemm_into(x, b, rows, k, n, col0, y);
        col0 += wb.len() / k;
    }
}

/// `y[r·n + o] = x[r·k ..] · w[o·k ..]` for `r < rows`, `o < n`.
struct Products<'a> {
    x: &'a [f32],
    rows: usize,
    k: usize,
    n: usize,
    y: &'a mut [f32],
    parallel: bool,
}

/// [`Products`] with weights of one storage type, on a kernel.
struct RowProducts<'a, E> {
    p: Products<'a>,
    w: &'a [E],
}

/// Output features per task when one row's products are shared among threads.
#[cfg(feature = "rayon")]
const FEATURES_PER_TASK: usize = 256;

/// Weight bytes (4 MiB) from which one row's products are shared among threads: a decode step
/// reads its weights once, and one core alone does not reach the read bandwidth. Smaller weights
/// stay in the caches, where the split costs more than it saves (the demo's layer was measured
/// slower with the split from 1 MiB).
#[cfg(feature = "rayon")]
const PARALLEL_BYTES: usize = 4 << 20;

impl<E: Element> KernelVisitor for RowProducts<'_, E> {
    type Output = ();
    fn visit<K: Kernel>(self, kernel: K) {
        let RowProducts { p: Products { x, rows, k, n, y, parallel }, w } = self;
        #[cfg(feature = "rayon")]
        if parallel && rows == 1 && n * k * core::mem::size_of::<E>() >= PARALLEL_BYTES {
            use rayon::prelude::*;
            // Each task owns a run of output features (and reads only their weight rows), so
            // the result does not depend on the thread count.
            y.par_chunks_mut(FEATURES_PER_TASK).enumerate().for_each(|(c, yc)| {
                let w_c = &w[c * FEATURES_PER_TASK * k..];
                kernel.dot_rows(1, yc.len(), k, x, k, w_c, k, yc, yc.len());
            });
            return;
        }
        let _ = parallel;
        kernel.dot_rows(rows, n, k, x, k, w, k, y, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path (row products up to `DOT_ROWS_MAX` rows, shared among threads for one row of
    /// a large weight; the packed gemm beyond) on every available ISA and weight storage type
    /// against the f64 projection of the stored values: `|y − y₆₄| ≤ 1e-5 · √k · Σ |x·w|` (the
    /// kernels' dot-product bound, `kernel::tests::DOT_RTOL`), plus the bias. A half-precision
    /// weight is widened exactly, so the bound is the f32 one.
    #[test]
    fn every_row_count_isa_and_storage_matches_f64() {
        // 2479 values: a small weight, row by row up to SMALL_WEIGHT_ROWS_MAX rows.
        check_sizes(67, 37, &[SMALL_WEIGHT_ROWS_MAX, SMALL_WEIGHT_ROWS_MAX + 1]);
        // 1.1 M weights: one row's products are shared among threads (with rayon) for f32; 2.2 M
        // (8.4 MiB in f32, 4.2 MiB in bf16) for every storage type.
        check_sizes(1024, 1100, &[]);
        check_sizes(2048, 1100, &[]);
    }

    fn check_sizes(k: usize, n: usize, more_rows: &[usize]) {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let f32_lin = Linear {
            weight: (0..n * k).map(|_| rnd()).collect(),
            bias: Some((0..n).map(|_| rnd()).collect()),
            in_features: k,
            out_features: n,
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let stored = LinearWeight::from_f32(&f32_lin.weight, dtype).unwrap();
            assert_eq!(stored.dtype(), dtype);
            // The reference: the stored values, widened.
            let lin = Linear { weight: (0..n * k).map(|i| stored.get_f32(i)).collect(), ..f32_lin.clone() };
            let abs = Linear {
                weight: lin.weight.iter().map(|w| w.abs()).collect(),
                bias: None,
                in_features: k,
                out_features: n,
            };
            for rows in (0..=DOT_ROWS_MAX + 2).chain(more_rows.iter().copied()) {
                let x: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let want = lin.forward_f64(&x64, rows);
                let mag = abs.forward_f64(&x64.iter().map(|v| v.abs()).collect::<Vec<_>>(), rows);
                for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
                    for parallel in [false, true] {
                        let mut got = vec![f32::NAN; rows * n];
                        lin.with_weight(Some(&stored)).forward_into(&x, rows, isa, parallel, &mut got);
                        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f64).sqrt() * mag[i] + 1e-7;
                            assert!((g as f64 - w).abs() <= tol, "{dtype:?} {isa:?} rows {rows} at {i}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }

    /// A half-precision weight's products equal, bit for bit, those of an f32 weight holding the
    /// same values: the kernel widens in registers and sums in the same order.
    #[test]
    fn a_widened_weight_gives_the_same_bits() {
        let (k, n) = (300, 70);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
        let half = LinearWeight::from_f32(&w, DType::BF16).unwrap();
        let wide = Linear {
            weight: (0..n * k).map(|i| half.get_f32(i)).collect(),
            bias: None,
            in_features: k,
            out_features: n,
        };
        for rows in [1, 3, DOT_ROWS_MAX + 3] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0).collect();
            for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
                let (mut a, mut b) = (vec![0.0f32; rows * n], vec![0.0f32; rows * n]);
                wide.with_weight(Some(&half)).forward_into(&x, rows, isa, true, &mut a);
                wide.forward_into(&x, rows, isa, true, &mut b);
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{isa:?} rows {rows}");
            }
        }
    }
}
