//! The AVX2 + FMA + F16C kernel, through `core::arch`, selected at run time.
//!
//! Each safe [`Kernel`] method checks its slices once, then calls a `#[target_feature]` shell
//! (`*_avx2_fma`) whose only extra precondition is the CPU feature the token proves. The
//! shells call `#[inline(always)]` bodies in `gemm`, `dot`, `convert` and `reduce`, which are
//! compiled with the shell's features once inlined into it.

mod convert;
mod dot;
mod gemm;
mod prefetch;
mod pv;
mod reduce;

use super::{
    bounds::{assert_fits, assert_fits_read, assert_heads_fit},
    scales::HeadScales,
    Geometry, Isa, Kernel, PvHeads,
};
use crate::element::Storage;

/// Proof that the CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    /// The token, if this CPU (or this build's target features) supports the kernel.
    pub(crate) fn try_new() -> Option<Self> {
        (super::detect::has_avx2_fma() && super::detect::has_f16c()).then_some(Avx2Fma(()))
    }
}

impl Kernel for Avx2Fma {
    const GEOMETRY: Geometry = Geometry::TUNED.with_gemm_mr(gemm::MR).check();

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
        assert_fits_read(a.len(), m, k, lda);
        assert_fits_read(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        let acc = if accumulate { gemm::Acc::Add } else { gemm::Acc::Zero };
        // SAFETY: the token proves the features; the three matrices fit their slices.
        unsafe { gemm_avx2_fma::<_, false>(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) }
    }

    fn gemm_rescale(
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
        alpha: &[f32],
    ) {
        assert_fits_read(a.len(), m, k, lda);
        assert_fits_read(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        assert!(alpha.len() >= m, "gemm_rescale: fewer factors than rows");
        let acc = gemm::Acc::Rescale(alpha.as_ptr());
        // SAFETY: the token proves the features; the three matrices fit their slices and
        // `alpha` holds `m` factors.
        unsafe { gemm_avx2_fma::<_, false>(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) }
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
        assert_fits_read(a.len(), m, k, lda);
        assert_fits_read(b.len(), n, k, ldb);
        assert_fits(out.len(), m, n, ldo);
        // SAFETY: the token proves the features; the three matrices fit their slices.
        unsafe { dot_rows_avx2_fma(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, out.as_mut_ptr(), ldo) }
    }

    fn dot_heads<E: Storage, F: Storage>(
        self,
        heads: usize,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        ldh: usize,
        out: &mut [f32],
        ldo: usize,
        pf: (&[F], usize, usize, usize),
        key_scales: Option<HeadScales<'_>>,
        _tmp: &mut [f32],
    ) {
        assert_fits_read(a.len(), heads * m, k, lda);
        assert_fits(out.len(), n, heads * m, ldo);
        super::bounds::assert_heads_fit(b.len(), n, heads, k, ldb, ldh);
        let (pf_s, pf_ld, pf_lh, pf_len) = pf;
        super::bounds::assert_heads_fit(pf_s.len(), n, heads, pf_len, pf_ld, pf_lh);
        let pf = (pf_s.as_ptr(), pf_ld, pf_lh, pf_len);
        super::scales::assert_scales_fit(key_scales, n, heads);
        let ks = key_scales.map(|(f, ld, hs)| dot::KeyScales { f: f.as_ptr(), ld, hs });
        let (a, b, out) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // SAFETY: the token proves the features; every matrix fits its slice (checked above).
        unsafe { dot_heads_avx2_fma(heads, m, n, k, a, lda, b, ldb, ldh, out, ldo, pf, ks) }
    }

    fn transpose_widen<E: Storage>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        assert_fits_read(b.len(), n, k, ldb);
        assert_fits(dst.len(), k, n, ldd);
        // SAFETY: the token proves the features; both matrices fit their slices.
        unsafe { transpose_widen_avx2_fma(n, k, b.as_ptr(), ldb, dst.as_mut_ptr(), ldd) }
    }

    fn widen<E: Storage>(self, src: &[E], dst: &mut [f32]) {
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

    fn gemm_at<E: Storage>(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        alpha: Option<&[f32]>,
        _stage: &mut [f32],
    ) {
        assert_fits_read(a.len(), k, m, lda);
        assert_fits_read(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        let acc = match alpha {
            Some(alpha) => {
                assert!(alpha.len() >= m, "gemm_at: fewer factors than rows");
                gemm::Acc::Rescale(alpha.as_ptr())
            }
            None => gemm::Acc::Add,
        };
        // SAFETY: the token proves the features; Aᵀ (`k × m`), B and C fit their slices and a
        // `Rescale` pointer holds `m` factors.
        unsafe { gemm_avx2_fma::<_, true>(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) }
    }

    fn pv_heads<E: Storage>(
        self,
        shape: PvHeads,
        p: &[f32],
        v: &[E],
        acc: &mut [f32],
        alpha: &[f32],
        _tmp: &mut [f32],
    ) {
        let rows = shape.heads * shape.hr;
        assert_fits_read(p.len(), shape.n, rows, rows);
        assert_heads_fit(v.len(), shape.n, shape.heads, shape.dv, shape.v_ld, shape.v_hs);
        assert_fits(acc.len(), rows, shape.dv, shape.dv);
        assert!(alpha.len() >= rows, "pv_heads: fewer factors than rows");
        // SAFETY: the token proves the features; P, every head's V rows and the output rows fit
        // their slices, and `alpha` holds a factor per row.
        unsafe { pv_heads_avx2_fma(shape, p.as_ptr(), v.as_ptr(), acc.as_mut_ptr(), alpha.as_ptr()) }
    }

    fn softmax_cols(
        self,
        s: &mut [f32],
        ld: usize,
        n: usize,
        rows: usize,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
        _tmp: &mut [f32],
    ) {
        assert_fits(s.len(), n, rows, ld);
        assert!(m.len() >= rows && l.len() >= rows && alpha.len() >= rows, "softmax_cols: short state");
        // SAFETY: the token proves the features; `s` holds the `n × rows` scores and the state
        // `rows` floats.
        unsafe {
            softmax_cols_avx2_fma(s.as_mut_ptr(), ld, n, rows, m.as_mut_ptr(), l.as_mut_ptr(), alpha.as_mut_ptr())
        }
    }

    fn softmax_rows(
        self,
        s: &mut [f32],
        ld: usize,
        rows: usize,
        n: usize,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
    ) {
        assert_fits(s.len(), rows, n, ld);
        assert!(m.len() >= rows && l.len() >= rows && alpha.len() >= rows, "softmax_rows: short state");
        // SAFETY: the token proves the features; `s` holds the rows and the state `rows` floats.
        unsafe {
            softmax_rows_avx2_fma(s.as_mut_ptr(), ld, rows, n, m.as_mut_ptr(), l.as_mut_ptr(), alpha.as_mut_ptr())
        }
    }

    /// Into L2 ([`prefetch::prefetch_lines`], which says why not L1).
    fn prefetch<E: Storage>(self, b: &[E], rows: usize, len: usize, ld: usize) {
        for j in 0..rows {
            let Some(row) = b.get(j * ld..j * ld + len) else { break };
            prefetch::prefetch_lines(row.as_ptr().cast::<i8>(), size_of_val(row));
        }
    }
}

// The shells. Each has the safety contract of the body it calls, plus "the CPU supports AVX2,
// FMA and F16C", which is what makes the `#[target_feature]` sound to call.

/// # Safety
/// See [`pv::pv_heads`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv_heads_avx2_fma<E: Storage>(s: PvHeads, p: *const f32, v: *const E, acc: *mut f32, alpha: *const f32) {
    // SAFETY: the caller's contract.
    unsafe { pv::pv_heads(s, p, v, acc, alpha) }
}

/// # Safety
/// See [`gemm::gemm`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_avx2_fma<E: Storage, const AT: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: gemm::Acc,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { gemm::gemm::<E, AT>(m, n, k, a, lda, b, ldb, c, ldc, acc) }
}

/// # Safety
/// See [`dot::dot_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2_fma<E: Storage>(
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
/// See [`dot::dot_heads`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_heads_avx2_fma<E: Storage, F: Storage>(
    heads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    ldh: usize,
    out: *mut f32,
    ldo: usize,
    pf: (*const F, usize, usize, usize),
    ks: Option<dot::KeyScales>,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { dot::dot_heads(heads, m, n, k, a, lda, b, ldb, ldh, out, ldo, pf, ks) }
}

/// # Safety
/// See [`convert::transpose_widen`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_widen_avx2_fma<E: Storage>(n: usize, k: usize, b: *const E, ldb: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { convert::transpose_widen(n, k, b, ldb, dst, ldd) }
}

/// # Safety
/// See [`convert::widen`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2_fma<E: Storage>(src: *const E, dst: *mut f32, len: usize) {
    // SAFETY: forwarded from this function's contract.
    unsafe { convert::widen(src, dst, len) }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C (the features this function enables).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sum_avx2_fma(x: &mut [f32], max: f32) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::exp_sum(x, max) }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C (the features this function enables).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max_avx2_fma(x: &[f32]) -> f32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::max(x) }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C (the features this function enables).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_avx2_fma(x: &mut [f32], alpha: f32) {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::scale(x, alpha) }
}

/// # Safety
/// See [`reduce::softmax_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_rows_avx2_fma(
    s: *mut f32,
    ld: usize,
    rows: usize,
    n: usize,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::softmax_rows(s, ld, rows, n, m, l, alpha) }
}

/// # Safety
/// See [`reduce::softmax_cols`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_cols_avx2_fma(
    s: *mut f32,
    ld: usize,
    n: usize,
    rows: usize,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { reduce::softmax_cols(s, ld, n, rows, m, l, alpha) }
}

/// Lane-wise `exp`, for tests that compare it with [`crate::kernel::exp::exp_f32`]: the
/// general form ([`reduce::exp8`]), then the softmax's forms for arguments `<= 0`, with and
/// without the flush below [`crate::kernel::exp::LO`].
#[cfg(test)]
pub(crate) fn exp8_for_test(_token: Avx2Fma, x: [f32; 8]) -> [[f32; 8]; 3] {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn go(x: [f32; 8]) -> [[f32; 8]; 3] {
        let mut out = [[0.0f32; 8]; 3];
        // SAFETY: the caller guarantees the features; every array holds 8 floats.
        unsafe {
            use core::arch::x86_64::*;
            let v = _mm256_loadu_ps(x.as_ptr());
            _mm256_storeu_ps(out[0].as_mut_ptr(), reduce::exp8(v));
            _mm256_storeu_ps(out[1].as_mut_ptr(), reduce::exp8n_nonpos::<1, true>([v])[0]);
            _mm256_storeu_ps(out[2].as_mut_ptr(), reduce::exp8n_nonpos::<1, false>([v])[0]);
        }
        out
    }
    // SAFETY: the token proves the features.
    unsafe { go(x) }
}
