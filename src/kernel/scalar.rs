//! The scalar kernel: plain loops, the baseline every other kernel is tested against.

use super::bounds::{assert_fits, assert_fits_read, dot_rows_prologue};
use super::{Geometry, Isa, Kernel};
use crate::element::Storage;

/// One lane at a time; always available.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scalar;

impl Kernel for Scalar {
    const GEOMETRY: Geometry = Geometry::TUNED.with_gemm_mr(1).check();

    fn isa(self) -> Isa {
        Isa::Scalar
    }

    fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        assert_fits_read(a.len(), m, k, lda);
        assert_fits_read(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        if m == 0 || n == 0 {
            return;
        }
        for i in 0..m {
            let c_row = &mut c[i * ldc..i * ldc + n];
            if !accumulate {
                c_row.fill(0.0);
            }
            for p in 0..k {
                let a_ip = a[i * lda + p];
                let b_row = &b[p * ldb..p * ldb + n];
                for (c_ij, &b_pj) in c_row.iter_mut().zip(b_row) {
                    *c_ij += a_ip * b_pj;
                }
            }
        }
    }

    fn dot_rows<E: Storage>(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        if !dot_rows_prologue(m, n, k, a.len(), lda, b.len(), ldb, out, ldo) {
            return;
        }
        for i in 0..m {
            let a_row = &a[i * lda..i * lda + k];
            for j in 0..n {
                let b_row = &b[j * ldb..j * ldb + k];
                let mut acc = 0.0f32;
                for (&x, &y) in a_row.iter().zip(b_row) {
                    acc += x * y.as_f32();
                }
                out[i * ldo + j] = acc;
            }
        }
    }

    fn transpose_widen<E: Storage>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        assert_fits_read(b.len(), n, k, ldb);
        assert_fits(dst.len(), k, n, ldd);
        if n == 0 || k == 0 {
            return;
        }
        for j in 0..n {
            for p in 0..k {
                dst[p * ldd + j] = b[j * ldb + p].as_f32();
            }
        }
    }

    fn widen<E: Storage>(self, src: &[E], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: length mismatch");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.as_f32();
        }
    }

    fn exp_sum(self, x: &mut [f32], max: f32) -> f32 {
        let mut sum = 0.0f32;
        for v in x.iter_mut() {
            *v = libm::expf(*v - max);
            sum += *v;
        }
        sum
    }

    fn max(self, x: &[f32]) -> f32 {
        x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m || v.is_nan() { v } else { m })
    }

    fn scale(self, x: &mut [f32], alpha: f32) {
        for v in x.iter_mut() {
            *v *= alpha;
        }
    }
}
