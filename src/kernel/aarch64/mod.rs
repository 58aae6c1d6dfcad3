//! The AArch64 NEON kernel, through `core::arch::aarch64`.
//!
//! NEON (Advanced SIMD) is part of every AArch64 target this module is compiled for
//! (`target_feature = "neon"`, on by default for all AArch64 Linux, Apple, Windows and Android
//! targets), so the token needs no run-time detection and the bodies need no
//! `#[target_feature]` shells: each safe [`Kernel`] method checks its slices once and calls an
//! `unsafe` body in `gemm`, `dot`, `convert` or `reduce` whose only preconditions are those
//! bounds. No path uses an optional extension: f16 is widened by `FCVTL`, which is base ARMv8.0
//! (see `convert`); the half-precision arithmetic (`fp16`) and dot-product (`dotprod`)
//! extensions would only matter for f16/int8 arithmetic, which the crate does not do.
//!
//! `softmax_rows` and `gemm_rescale` (used only by the sparse gathered tile) are the trait's
//! defaults, built from this kernel's `max`, `exp_sum`, `scale` and `gemm`.

// The intrinsics are safe functions from Rust 1.87 on where `neon` is enabled, unsafe before;
// the MSRV (1.85) needs the blocks around them.
#![allow(unused_unsafe)]

mod convert;
mod dot;
mod gemm;
mod reduce;

use super::{
    bounds::{assert_fits, assert_fits_read, assert_heads_fit, dot_rows_prologue},
    scales::{assert_scales_fit, scale_heads, HeadScales},
    Geometry, Isa, Kernel,
};
use crate::element::Storage;

/// Proof that the CPU has NEON: always true where this module is compiled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    /// The token (NEON is part of the target).
    pub(crate) fn try_new() -> Option<Self> {
        Some(Neon(()))
    }
}

impl Kernel for Neon {
    /// The tuned tiles with the 6-row microkernel: 72-key tiles are 12 blocks, 96-row units 16.
    /// Not timed on hardware (see `benches/README.md`, "aarch64").
    const GEOMETRY: Geometry = Geometry::TUNED.with_gemm_mr(gemm::MR).check();

    fn isa(self) -> Isa {
        Isa::Neon
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
        // SAFETY: the three matrices fit their slices.
        unsafe { gemm::gemm::<_, false>(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) }
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
        // SAFETY: the three matrices fit their slices (checked by the prologue), and `k > 0`.
        unsafe { dot::dot_rows(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, out.as_mut_ptr(), ldo) }
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
        _pf: (&[F], usize, usize, usize),
        key_scales: Option<HeadScales<'_>>,
        _tmp: &mut [f32],
    ) {
        assert_fits_read(a.len(), heads * m, k, lda);
        assert_fits(out.len(), n, heads * m, ldo);
        assert_heads_fit(b.len(), n, heads, k, ldb, ldh);
        assert_scales_fit(key_scales, n, heads);
        // SAFETY: every matrix fits its slice (checked above).
        unsafe { dot::dot_heads(heads, m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, ldh, out.as_mut_ptr(), ldo) }
        if let Some(f) = key_scales {
            scale_heads(out, ldo, m, n, heads, f);
        }
    }

    fn transpose_widen<E: Storage>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        assert_fits_read(b.len(), n, k, ldb);
        assert_fits(dst.len(), k, n, ldd);
        // SAFETY: both matrices fit their slices.
        unsafe { convert::transpose_widen(n, k, b.as_ptr(), ldb, dst.as_mut_ptr(), ldd) }
    }

    fn widen<E: Storage>(self, src: &[E], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: length mismatch");
        // SAFETY: both slices hold `src.len()` elements.
        unsafe { convert::widen(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
    }

    fn exp_sum(self, x: &mut [f32], max: f32) -> f32 {
        reduce::exp_sum(x, max)
    }

    fn max(self, x: &[f32]) -> f32 {
        reduce::max(x)
    }

    fn scale(self, x: &mut [f32], alpha: f32) {
        reduce::scale(x, alpha)
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
        // SAFETY: Aᵀ (`k × m`), B and C fit their slices and a `Rescale` pointer holds `m`
        // factors.
        unsafe { gemm::gemm::<_, true>(m, n, k, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) }
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
        // SAFETY: `s` holds the `n × rows` scores and the state `rows` floats.
        unsafe { reduce::softmax_cols(s.as_mut_ptr(), ld, n, rows, m.as_mut_ptr(), l.as_mut_ptr(), alpha.as_mut_ptr()) }
    }
}

/// Lane-wise `exp`, for tests that compare it with [`crate::kernel::exp::exp_f32`]: the general
/// form ([`reduce::exp4`]), then the softmax's forms for arguments `<= 0`, with and without the
/// flush below [`crate::kernel::exp::LO`].
#[cfg(any(test, all(gated_attention_selftest, feature = "std")))]
pub(crate) fn exp4_for_test(_token: Neon, x: [f32; 4]) -> [[f32; 4]; 3] {
    use core::arch::aarch64::{vld1q_f32, vst1q_f32};
    let mut out = [[0.0f32; 4]; 3];
    // SAFETY: every array holds 4 floats.
    unsafe {
        let v = vld1q_f32(x.as_ptr());
        vst1q_f32(out[0].as_mut_ptr(), reduce::exp4(v));
        vst1q_f32(out[1].as_mut_ptr(), reduce::exp4_softmax::<true>(v));
        vst1q_f32(out[2].as_mut_ptr(), reduce::exp4_softmax::<false>(v));
    }
    out
}
