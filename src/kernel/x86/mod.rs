//! The AVX2 + FMA + F16C kernel, through `core::arch`, selected at run time.
//!
//! Each safe [`Kernel`] method checks its slices once, then calls a `#[target_feature]` shell
//! (`*_avx2_fma`) whose only extra precondition is the CPU feature the token proves. The
//! shells call `#[inline(always)]` bodies in `gemm`, `dot`, `convert` and `reduce`, which are
//! compiled with the shell's features once inlined into it.

mod convert;
mod dot;
mod gemm;
mod reduce;

use super::{scalar::assert_fits, Isa, Kernel};
use crate::element::Element;

/// Proof that the CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    /// The token, if this CPU (or this build's target features) supports the kernel.
    pub(crate) fn try_new() -> Option<Self> {
        (super::detect::has_avx2_fma() && super::detect::has_f16c()).then_some(Avx2Fma(()))
    }

    /// The token, without checking.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[allow(dead_code)] // for callers that detected the features themselves
    pub(crate) const unsafe fn new_unchecked() -> Self {
        Avx2Fma(())
    }
}

impl Kernel for Avx2Fma {
    fn isa(self) -> Isa {
        Isa::Avx2Fma
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
        assert_fits(a.len(), m, k, lda);
        assert_fits(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        // SAFETY: the token proves the features; the three matrices fit their slices.
        unsafe { gemm_avx2_fma(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) }
    }

    fn dot_rows<E: Element>(
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
        assert_fits(a.len(), m, k, lda);
        assert_fits(b.len(), n, k, ldb);
        assert_fits(out.len(), m, n, ldo);
        // SAFETY: the token proves the features; the three matrices fit their slices.
        unsafe { dot_rows_avx2_fma(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, out.as_mut_ptr(), ldo) }
    }

    fn transpose_widen<E: Element>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        assert_fits(b.len(), n, k, ldb);
        assert_fits(dst.len(), k, n, ldd);
        // SAFETY: the token proves the features; both matrices fit their slices.
        unsafe { transpose_widen_avx2_fma(n, k, b.as_ptr(), ldb, dst.as_mut_ptr(), ldd) }
    }

    fn widen<E: Element>(self, src: &[E], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: length mismatch");
        // SAFETY: the token proves the features; both slices hold `src.len()` elements.
        unsafe { widen_avx2_fma(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
    }

    fn exp_sum(self, x: &mut [f32], max: f32) -> f32 {
        // SAFETY: the token proves the features.
        unsafe { exp_sum_avx2_fma(x, max) }
    }

    fn max(self, x: &[f32]) -> f32 {
        // SAFETY: the token proves the features.
        unsafe { max_avx2_fma(x) }
    }

    fn scale(self, x: &mut [f32], alpha: f32) {
        // SAFETY: the token proves the features.
        unsafe { scale_avx2_fma(x, alpha) }
    }
}

// The shells. Each has the safety contract of the body it calls, plus "the CPU supports AVX2,
// FMA and F16C", which is what makes the `#[target_feature]` sound to call.

/// # Safety
/// See [`gemm::gemm`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_avx2_fma(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { gemm::gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate) }
}

/// # Safety
/// See [`dot::dot_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2_fma<E: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { dot::dot_rows(m, n, k, a, lda, b, ldb, out, ldo) }
}

/// # Safety
/// See [`convert::transpose_widen`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_widen_avx2_fma<E: Element>(n: usize, k: usize, b: *const E, ldb: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { convert::transpose_widen(n, k, b, ldb, dst, ldd) }
}

/// # Safety
/// See [`convert::widen`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2_fma<E: Element>(src: *const E, dst: *mut f32, len: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { convert::widen(src, dst, len) }
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sum_avx2_fma(x: &mut [f32], max: f32) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::exp_sum(x, max) }
}

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max_avx2_fma(x: &[f32]) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::max(x) }
}

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_avx2_fma(x: &mut [f32], alpha: f32) {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::scale(x, alpha) }
}

/// Lane-wise `exp`, for tests that compare it with [`crate::kernel::exp::exp_f32`].
#[cfg(test)]
pub(crate) fn exp8_for_test(_token: Avx2Fma, x: [f32; 8]) -> [f32; 8] {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn go(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: the caller guarantees the features; both arrays hold 8 floats.
        unsafe {
            use core::arch::x86_64::*;
            _mm256_storeu_ps(out.as_mut_ptr(), reduce::exp8(_mm256_loadu_ps(x.as_ptr())));
        }
        out
    }
    // SAFETY: the token proves the features.
    unsafe { go(x) }
}
