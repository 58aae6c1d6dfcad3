//! `y = x Wᵀ + b`, with the weight stored `[out, in]` as PyTorch does, in f32, f16 or bf16: a few
//! rows (a decode step) as dot products of each input row with the weight rows, in place, on the
//! selected ISA's kernel (a half-precision weight is widened in registers, so a step reads half
//! the bytes); more rows through matrixmultiply's packed gemm (half-precision weights widened a
//! block of rows at a time).

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

/// A projection's weight matrix in its storage type. Arithmetic is f32 whatever the storage: a
/// half-precision weight is widened (exactly) where it is read.
#[derive(Clone, Debug, PartialEq)]
pub enum LinearWeight {
    /// f32 values.
    F32(Vec<f32>),
    /// f16 values.
    F16(Vec<f16>),
    /// bf16 values.
    BF16(Vec<bf16>),
}

impl LinearWeight {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.elems().len()
    }
    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.elems().dtype()
    }
    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size()
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

    /// The same values stored as `dtype` (rounded to nearest-even when narrowing), reserved
    /// fallibly: a refused allocation is an [`Error::AllocationFailed`], not an abort.
    ///
    /// ```
    /// use gated_attention::layer::LinearWeight;
    /// use gated_attention::DType;
    /// let w = LinearWeight::from(vec![1.0f32, 1.0 + 1e-3, -2.5]);
    /// let b = w.to_dtype(DType::BF16).unwrap();
    /// assert_eq!((b.dtype(), b.bytes()), (DType::BF16, 6));
    /// assert_eq!([b.get_f32(0), b.get_f32(1), b.get_f32(2)], [1.0, 1.0, -2.5]); // 1.001 rounds to 1
    /// ```
    pub fn to_dtype(&self, dtype: DType) -> Result<LinearWeight, Error> {
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
        let src = self.elems();
        Ok(match dtype {
            DType::F32 => LinearWeight::F32(convert(src)?),
            DType::F16 => LinearWeight::F16(convert(src)?),
            DType::BF16 => LinearWeight::BF16(convert(src)?),
        })
    }
}

impl From<Vec<f32>> for LinearWeight {
    fn from(v: Vec<f32>) -> Self {
        LinearWeight::F32(v)
    }
}
impl From<Vec<f16>> for LinearWeight {
    fn from(v: Vec<f16>) -> Self {
        LinearWeight::F16(v)
    }
}
impl From<Vec<bf16>> for LinearWeight {
    fn from(v: Vec<bf16>) -> Self {
        LinearWeight::BF16(v)
    }
}

/// A dense projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]`, row-major, in its storage type.
    pub weight: LinearWeight,
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

    /// The same projection with its weight stored as `dtype` (biases stay f32); see
    /// [`LinearWeight::to_dtype`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Linear, Error> {
        let weight = self.weight.to_dtype(dtype)?;
        Ok(Linear { weight, bias: self.bias.clone(), in_features: self.in_features, out_features: self.out_features })
    }

    /// [`Linear::forward`] into `y` (`rows · out_features` values), a few rows' products on the
    /// kernel of `isa` (available: resolved by the caller), one row's products over a large weight
    /// shared among rayon's threads when `parallel`. Allocates nothing for up to
    /// [`DOT_ROWS_MAX`] rows ([`SMALL_WEIGHT_ROWS_MAX`] over a small weight).
    pub(crate) fn forward_into(&self, x: &[f32], rows: usize, isa: Isa, parallel: bool, y: &mut [f32]) {
        let (k, n) = (self.in_features, self.out_features);
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
            match self.weight.elems() {
                Elems::F32(w) => dispatch(isa, RowProducts { p, w }),
                Elems::F16(w) => dispatch(isa, RowProducts { p, w }),
                Elems::BF16(w) => dispatch(isa, RowProducts { p, w }),
            }
        } else {
            match self.weight.elems() {
                Elems::F32(w) => sgemm_into(x, w, rows, k, n, 0, y),
                Elems::F16(w) => widened_gemm(x, w, rows, k, n, y),
                Elems::BF16(w) => widened_gemm(x, w, rows, k, n, y),
            }
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(n) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }

    /// The same projection in f64 (for the reference forward), on the stored weight values.
    pub fn forward_f64(&self, x: &[f64], rows: usize) -> Vec<f64> {
        fn run<E: Element>(l: &Linear, w: &[E], x: &[f64], rows: usize) -> Vec<f64> {
            let (k, n) = (l.in_features, l.out_features);
            let mut y = vec![0.0f64; rows * n];
            for r in 0..rows {
                for o in 0..n {
                    let w = &w[o * k..(o + 1) * k];
                    let mut acc = l.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                    for (xi, &wi) in x[r * k..(r + 1) * k].iter().zip(w) {
                        acc += xi * wi.to_f32() as f64;
                    }
                    y[r * n + o] = acc;
                }
            }
            y
        }
        match self.weight.elems() {
            Elems::F32(w) => run(self, w, x, rows),
            Elems::F16(w) => run(self, w, x, rows),
            Elems::BF16(w) => run(self, w, x, rows),
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
            weight: (0..n * k).map(|_| rnd()).collect::<Vec<f32>>().into(),
            bias: Some((0..n).map(|_| rnd()).collect()),
            in_features: k,
            out_features: n,
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let lin = f32_lin.to_dtype(dtype).unwrap();
            assert_eq!(lin.weight.dtype(), dtype);
            let abs = Linear {
                weight: LinearWeight::F32((0..n * k).map(|i| lin.weight.get_f32(i).abs()).collect()),
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
                        lin.forward_into(&x, rows, isa, parallel, &mut got);
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
        let half = Linear { weight: LinearWeight::F32(w), bias: None, in_features: k, out_features: n }
            .to_dtype(DType::BF16)
            .unwrap();
        let wide = half.to_dtype(DType::F32).unwrap();
        for rows in [1, 3, DOT_ROWS_MAX + 3] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0).collect();
            for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
                let (mut a, mut b) = (vec![0.0f32; rows * n], vec![0.0f32; rows * n]);
                half.forward_into(&x, rows, isa, true, &mut a);
                wide.forward_into(&x, rows, isa, true, &mut b);
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{isa:?} rows {rows}");
            }
        }
    }
}
