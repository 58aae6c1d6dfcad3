//! The softmax's element-wise passes: `exp(x − max)` with its sum, `max` and `scale`.

use core::arch::x86_64::*;

use super::convert::lane_mask;
use crate::kernel::exp::{HI, LN2_HI, LN2_LO, LO, LOG2E, P, ROUND_MAGIC};

/// `exp` of 8 lanes: [`crate::kernel::exp::exp_f32`] operation for operation, so the two agree
/// bit for bit.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the caller guarantees AVX2 and FMA; no memory is touched.
    unsafe {
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        let nf = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), magic), magic);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        // A NaN `nf` converts to i32::MIN, whose shifted bits are 0: NaN lanes keep `y = NaN`.
        let n = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(nf));
        let e = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), n));
        // Ordered compares are false for NaN, so neither fix-up touches a NaN lane.
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HI));
        _mm256_blendv_ps(_mm256_andnot_ps(under, e), _mm256_set1_ps(f32::INFINITY), over)
    }
}

/// The sum of the 8 lanes of `v`.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// See [`crate::kernel::Kernel::exp_sum`].
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn exp_sum(x: &mut [f32], max: f32) -> f32 {
    // SAFETY: the caller guarantees AVX2 and FMA.
    let (mut acc, m) = unsafe { (_mm256_setzero_ps(), _mm256_set1_ps(max)) };
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr();
        // SAFETY: `chunk` holds exactly 8 floats.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
            _mm256_storeu_ps(p, e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let p = tail.as_mut_ptr();
        // SAFETY: the mask covers exactly the `tail.len() < 8` floats of `tail`; the other
        // lanes are neither read nor written, and are zeroed before the sum.
        unsafe {
            let mask = lane_mask(tail.len());
            let e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p, mask), m));
            _mm256_maskstore_ps(p, mask, e);
            acc = _mm256_add_ps(acc, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
        }
    }
    // SAFETY: AVX is available (caller).
    unsafe { hsum(acc) }
}

/// See [`crate::kernel::Kernel::max`].
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
pub(super) unsafe fn max(x: &[f32]) -> f32 {
    // SAFETY: the caller guarantees AVX.
    let (mut m0, mut m1) = unsafe { (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::NEG_INFINITY)) };
    let mut chunks = x.chunks_exact(16);
    for chunk in &mut chunks {
        // SAFETY: `chunk` holds exactly 16 floats.
        unsafe {
            m0 = _mm256_max_ps(m0, _mm256_loadu_ps(chunk.as_ptr()));
            m1 = _mm256_max_ps(m1, _mm256_loadu_ps(chunk.as_ptr().add(8)));
        }
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m0, m1)) };
    lanes.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// See [`crate::kernel::Kernel::scale`].
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
pub(super) unsafe fn scale(x: &mut [f32], alpha: f32) {
    // SAFETY: the caller guarantees AVX.
    let a = unsafe { _mm256_set1_ps(alpha) };
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr();
        // SAFETY: `chunk` holds exactly 8 floats.
        unsafe { _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), a)) };
    }
    for v in chunks.into_remainder() {
        *v *= alpha;
    }
}
