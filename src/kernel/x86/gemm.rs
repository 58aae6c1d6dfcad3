//! `C ← (accumulate ? C : 0) + A·B` with a 6×16 register-blocked FMA microkernel.
//!
//! The attention driver stages Q, Kᵀ and V tiles that fit L1/L2, so the microkernel reads A
//! and B where they lie; only B strips with a 4 KiB-multiple row stride are first copied to a
//! contiguous stack buffer (see [`PACK_LDB`]). Per k step it loads two B vectors,
//! broadcasts six A elements and issues twelve FMAs into twelve accumulators: 15 of the 16 ymm
//! registers, and enough independent chains to cover FMA latency (4 cycles × 2 pipes).

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::convert::lane_mask;

/// Rows per full microkernel.
const MR: usize = 6;
/// Rows of B packed per 16-column strip: 16 KiB of stack.
const KC: usize = 256;
/// B strips whose row stride is a multiple of this many floats (4 KiB) are packed: their rows
/// all fall in one L1 set (8 ways) and a few L2 sets, so in place they are re-read from L3 by
/// every row block (70 instead of 85 GFLOP/s measured at m=64, n=128, k=64, ldb=1024). Any
/// other stride measured as fast in place as packed, or faster (no copy).
const PACK_LDB: usize = 1024;

/// See [`crate::kernel::Kernel::gemm`].
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds an `m × k` matrix with leading dimension `lda`,
/// `b` a `k × n` one (`ldb`) and `c` an `m × n` one (`ldc`), in the sense of
/// [`crate::kernel::scalar::assert_fits`].
#[inline(always)]
pub(super) unsafe fn gemm(
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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // A and B may be empty here, so no pointer into them may be formed.
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i < m` of C holds `n` elements.
                unsafe { core::ptr::write_bytes(c.add(i * ldc), 0, n) };
            }
        }
        return;
    }
    let mut packed = MaybeUninit::<[f32; KC * 16]>::uninit();
    let pb = packed.as_mut_ptr().cast::<f32>();
    let mut j = 0;
    // LOOP 1: 16-column strips of B.
    while j + 16 <= n {
        if ldb % PACK_LDB != 0 || k == 1 {
            // SAFETY: columns `j..j + 16` lie inside B and C; the caller guarantees the rest.
            unsafe { strip::<2, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 8, accumulate) };
            j += 16;
            continue;
        }
        let mut p0 = 0;
        // LOOP 2: up to KC rows of the strip, copied contiguous; they stay in L1 while every
        // 6-row block of A passes over them.
        while p0 < k {
            let kc = KC.min(k - p0);
            for p in 0..kc {
                // SAFETY: row `p0 + p < k` of B holds columns `j..j + 16`; `pb` holds
                // `KC * 16` floats and `p < KC`.
                unsafe {
                    let src = b.add((p0 + p) * ldb + j);
                    _mm256_storeu_ps(pb.add(p * 16), _mm256_loadu_ps(src));
                    _mm256_storeu_ps(pb.add(p * 16 + 8), _mm256_loadu_ps(src.add(8)));
                }
            }
            // Later row blocks add to what the first one stored.
            let acc = accumulate || p0 > 0;
            // SAFETY: columns `j..j + 16` lie inside C, columns `p0..p0 + kc` inside A, and
            // the first `kc` rows of `pb` were written above.
            unsafe { strip::<2, false>(m, kc, a.add(p0), lda, pb, 16, c.add(j), ldc, 8, acc) };
            p0 += kc;
        }
        j += 16;
    }
    if j + 8 <= n {
        // SAFETY: columns `j..j + 8` lie inside B and C.
        unsafe { strip::<1, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 8, accumulate) };
        j += 8;
    }
    if j < n {
        // SAFETY: columns `j..n` lie inside B and C, and the masked kernel touches no others.
        unsafe { strip::<1, true>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, n - j, accumulate) };
    }
}

/// One strip of `NV` vectors (or `width < 8` masked columns) for all `m` rows.
///
/// # Safety
/// As [`gemm`], for the strip's columns; `k > 0`.
#[inline(always)]
unsafe fn strip<const NV: usize, const MASKED: bool>(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    width: usize,
    accumulate: bool,
) {
    // SAFETY: AVX2 is available (caller).
    let mask = unsafe { lane_mask(width) };
    let mut i = 0;
    // LOOP 3: 6-row blocks of A over the strip, then one block of the 1..=5 rows left.
    while i + MR <= m {
        // SAFETY: rows `i..i + 6` lie inside A and C.
        unsafe { micro::<MR, NV, MASKED>(k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, mask, accumulate) };
        i += MR;
    }
    let (a, c) = (a.wrapping_add(i * lda), c.wrapping_add(i * ldc));
    // SAFETY: rows `i..m` lie inside A and C, and `a`, `c` point at row `i`.
    unsafe {
        match m - i {
            0 => {}
            1 => micro::<1, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, accumulate),
            2 => micro::<2, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, accumulate),
            3 => micro::<3, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, accumulate),
            4 => micro::<4, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, accumulate),
            _ => micro::<5, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, accumulate),
        }
    }
}

/// `R` rows × `NV` vectors of C. With `MASKED`, `NV` is 1 and only the lanes set in `mask`
/// are read or written, in B and in C.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` points at `R` rows of `k > 0` elements (stride `lda`),
/// `b` at `k` rows of the block's columns (stride `ldb`) and `c` at `R` rows of them (`ldc`).
#[inline(always)]
unsafe fn micro<const R: usize, const NV: usize, const MASKED: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mask: __m256i,
    accumulate: bool,
) {
    // SAFETY: AVX is available (caller); no memory is touched.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut acc = [[zero; NV]; R];
    for p in 0..k {
        let mut bv = [zero; NV];
        for (v, x) in bv.iter_mut().enumerate() {
            let bp = b.wrapping_add(p * ldb + v * 8);
            // SAFETY: row `p < k` of B holds this block's columns; masked lanes are not read.
            *x = unsafe {
                if MASKED {
                    _mm256_maskload_ps(bp, mask)
                } else {
                    _mm256_loadu_ps(bp)
                }
            };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: row `r < R` of A holds `k > p` elements; FMA is available (caller).
            unsafe {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm256_fmadd_ps(av, bv, *acc_rv);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &x) in acc_r.iter().enumerate() {
            let cp = c.wrapping_add(r * ldc + v * 8);
            // SAFETY: row `r < R` of C holds this block's columns; `accumulate == false` reads
            // nothing, and masked lanes are neither read nor written.
            unsafe {
                if MASKED {
                    let x = if accumulate { _mm256_add_ps(_mm256_maskload_ps(cp, mask), x) } else { x };
                    _mm256_maskstore_ps(cp, mask, x);
                } else {
                    let x = if accumulate { _mm256_add_ps(_mm256_loadu_ps(cp), x) } else { x };
                    _mm256_storeu_ps(cp, x);
                }
            }
        }
    }
}
