//! PLACEHOLDER (being replaced by the AVX2+FMA kernel): delegates to the scalar kernel.
use super::{scalar::Scalar, Isa, Kernel};
use crate::element::Element;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    pub(crate) fn try_new() -> Option<Self> {
        (super::detect::has_avx2_fma() && super::detect::has_f16c()).then_some(Avx2Fma(()))
    }
}

impl Kernel for Avx2Fma {
    fn isa(self) -> Isa { Isa::Avx2Fma }
    fn gemm(self, m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
        Scalar.gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate)
    }
    fn dot_rows<E: Element>(self, m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[E], ldb: usize, out: &mut [f32], ldo: usize) {
        Scalar.dot_rows(m, n, k, a, lda, b, ldb, out, ldo)
    }
    fn transpose_widen<E: Element>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        Scalar.transpose_widen(n, k, b, ldb, dst, ldd)
    }
    fn widen<E: Element>(self, src: &[E], dst: &mut [f32]) { Scalar.widen(src, dst) }
    fn exp_sum(self, x: &mut [f32], max: f32) -> f32 { Scalar.exp_sum(x, max) }
    fn max(self, x: &[f32]) -> f32 { Scalar.max(x) }
    fn scale(self, x: &mut [f32], alpha: f32) { Scalar.scale(x, alpha) }
}
