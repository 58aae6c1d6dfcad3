//! `C ← A·B`, `C + A·B` or `diag(alpha)·C + A·B` with a 6×16 register-blocked FMA microkernel.
//!
//! The attention driver stages Q, Kᵀ and V tiles that fit L1/L2, so the microkernel reads A
//! and B where they lie; only B strips with a 4 KiB-multiple row stride are first copied to a
//! contiguous stack buffer (see [`PACK_STRIDE_BYTES`]), or, under a single row block, read a
//! few rows at a time ([`ALIASED_KC`]). Per k step it loads two B vectors,
//! broadcasts six A elements and issues twelve FMAs into twelve accumulators: 15 of the 16 ymm
//! registers, and enough independent chains to cover FMA latency (4 cycles × 2 pipes).
//! The online-softmax rescale of the output rows rides on the store of C ([`Acc::Rescale`]).

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::convert::{lane_mask, load8, load_partial};
use crate::element::{Kind, Storage};

/// Rows per full microkernel.
pub(super) const MR: usize = 6;
/// Rows of B packed per 16-column strip: 16 KiB of stack.
const KC: usize = 256;
/// B strips whose row stride is a multiple of this many bytes (4 KiB) are packed when more than
/// one row block reads them: their rows all fall in one L1 set (8 ways) and a few L2 sets, so in
/// place they are re-read from L3 by every row block (70 instead of 85 GFLOP/s measured at m=64,
/// n=128, k=64, ldb=1024 f32). Any other stride measured as fast in place as packed, or faster
/// (no copy).
const PACK_STRIDE_BYTES: usize = 4096;
/// Rows of such a B per pass of a single row block (the L1's ways). One row block reads B once,
/// so packing would not pay for its copy, but a pass down a whole strip still brings its rows
/// into one L1 set faster than they are used: the accumulators go to C and back every
/// `ALIASED_KC` rows instead. Decode's P·V over a BSHD f32 cache of 8 heads of 128 (V rows
/// 4 KiB apart) measured 1.06–1.07× faster this way (D2, 32768 keys, cold, 2 threads), when it
/// ran one pass per tile; calls that large now pass it chunks of 8 keys (`driver::pv_chunks`),
/// and it serves the smaller ones.
const ALIASED_KC: usize = 8;

/// Whether `rows` rows of `E`, `ld` elements apart, fall in the same L1 set ([`PACK_STRIDE_BYTES`]).
/// One row aliases nothing, whatever its stride, even one whose bytes overflow (a single row
/// addresses no second one, so its stride is unchecked by the slice it lies in).
pub(super) fn rows_alias<E>(rows: usize, ld: usize) -> bool {
    rows > 1 && ld.checked_mul(size_of::<E>()).is_some_and(|bytes| bytes % PACK_STRIDE_BYTES == 0)
}

/// What a gemm does with the C it finds.
#[derive(Clone, Copy)]
pub(super) enum Acc {
    /// `C ← A·B` (C is not read).
    Zero,
    /// `C ← C + A·B`.
    Add,
    /// `C[i] ← alpha[i]·C[i] + A·B` row by row, one rounding (FMA); the pointer holds `m`
    /// factors.
    Rescale(*const f32),
}

impl Acc {
    /// The mode for the rows from `i` on.
    #[inline(always)]
    pub(super) fn at_row(self, i: usize) -> Acc {
        match self {
            Acc::Rescale(alpha) => Acc::Rescale(alpha.wrapping_add(i)),
            other => other,
        }
    }
}

/// See [`crate::kernel::Kernel::gemm`] and [`crate::kernel::Kernel::gemm_rescale`].
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (B's elements are widened by `load8`, which needs F16C
/// for f16); `a` holds an `m × k` matrix with leading dimension `lda` and
/// `b` a `k × n` one (`ldb`) in the sense of [`crate::kernel::bounds::assert_fits_read`] (rows
/// may overlap; B's elements are widened as they are loaded), `c` an `m × n` one (`ldc`) in the
/// sense of [`crate::kernel::bounds::assert_fits`]; with
/// [`Acc::Rescale`], its pointer holds `m` floats. With `AT`, A is stored transposed: element
/// `(i, p)` is `a[p·lda + i]` and `a` holds a `k × m` matrix.
#[inline(always)]
pub(super) unsafe fn gemm<E: Storage, const AT: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: Acc,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // A and B may be empty here, so no pointer into them may be formed.
        for i in 0..m {
            // SAFETY: row `i < m` of C holds `n` elements; `Rescale` holds `m` factors.
            unsafe {
                match acc {
                    Acc::Zero => core::ptr::write_bytes(c.add(i * ldc), 0, n),
                    Acc::Add => {}
                    Acc::Rescale(alpha) => {
                        let f = *alpha.add(i);
                        for j in 0..n {
                            *c.add(i * ldc + j) *= f;
                        }
                    }
                }
            }
        }
        return;
    }
    if !rows_alias::<E>(k, ldb) {
        // SAFETY: the caller's contract.
        unsafe { in_place::<E, AT>(m, n, k, a, lda, b, ldb, c, ldc, acc) };
        return;
    }
    if m <= MR {
        let mut p0 = 0;
        // LOOP: `ALIASED_KC` rows of B at a time; later passes add to what the first stored.
        while p0 < k {
            let kc = ALIASED_KC.min(k - p0);
            let mode = if p0 > 0 { Acc::Add } else { acc };
            // SAFETY: rows `p0..p0 + kc` of B and columns `p0..p0 + kc` of A exist.
            unsafe { in_place::<E, AT>(m, n, kc, a_at::<AT>(a, 0, p0, lda), lda, b.add(p0 * ldb), ldb, c, ldc, mode) };
            p0 += kc;
        }
        return;
    }
    let mut packed = MaybeUninit::<[f32; KC * 16]>::uninit();
    let pb = packed.as_mut_ptr().cast::<f32>();
    let mut j = 0;
    // LOOP 1: 16-column strips of B.
    while j + 16 <= n {
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
                    _mm256_storeu_ps(pb.add(p * 16), load8(src));
                    _mm256_storeu_ps(pb.add(p * 16 + 8), load8(src.add(8)));
                }
            }
            // Later row blocks add to what the first one stored.
            let mode = if p0 > 0 { Acc::Add } else { acc };
            // SAFETY: columns `j..j + 16` lie inside C, columns `p0..p0 + kc` inside A, and
            // the first `kc` rows of `pb` were written above.
            unsafe {
                strip::<f32, AT, 2, false>(m, kc, a_at::<AT>(a, 0, p0, lda), lda, pb, 16, c.add(j), ldc, 8, mode)
            };
            p0 += kc;
        }
        j += 16;
    }
    // SAFETY: columns `j..n` lie inside B and C.
    unsafe { in_place::<E, AT>(m, n - j, k, a, lda, b.add(j), ldb, c.add(j), ldc, acc) };
}

/// [`gemm`] with B read where it lies, in 16-column strips.
///
/// # Safety
/// As [`gemm`], with `m > 0` and `k > 0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn in_place<E: Storage, const AT: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: Acc,
) {
    let mut j = 0;
    // LOOP: 16-column strips, then one of 8 and one masked.
    while j + 16 <= n {
        // SAFETY: columns `j..j + 16` lie inside B and C; the caller guarantees the rest.
        unsafe { strip::<E, AT, 2, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 8, acc) };
        j += 16;
    }
    if j + 8 <= n {
        // SAFETY: columns `j..j + 8` lie inside B and C.
        unsafe { strip::<E, AT, 1, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 8, acc) };
        j += 8;
    }
    if j < n {
        // SAFETY: columns `j..n` lie inside B and C, and the masked kernel touches no others.
        unsafe { strip::<E, AT, 1, true>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, n - j, acc) };
    }
}

/// One strip of `NV` vectors (or `width < 8` masked columns) for all `m` rows.
///
/// # Safety
/// As [`gemm`], for the strip's columns; `k > 0`.
#[inline(always)]
unsafe fn strip<E: Storage, const AT: bool, const NV: usize, const MASKED: bool>(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    width: usize,
    acc: Acc,
) {
    // SAFETY: AVX2 is available (caller).
    let mask = unsafe { lane_mask(width) };
    let mut i = 0;
    // LOOP 3: 6-row blocks of A over the strip, then one block of the 1..=5 rows left.
    while i + MR <= m {
        // SAFETY: rows `i..i + 6` lie inside A and C.
        unsafe {
            micro::<E, AT, MR, NV, MASKED>(
                k,
                a_at::<AT>(a, i, 0, lda),
                lda,
                b,
                ldb,
                c.add(i * ldc),
                ldc,
                mask,
                width,
                acc.at_row(i),
            )
        };
        i += MR;
    }
    let (a, c, acc) = (a_at::<AT>(a, i, 0, lda), c.wrapping_add(i * ldc), acc.at_row(i));
    // SAFETY: rows `i..m` lie inside A and C, and `a`, `c` point at row `i`.
    unsafe {
        match m - i {
            0 => {}
            1 => micro::<E, AT, 1, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, width, acc),
            2 => micro::<E, AT, 2, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, width, acc),
            3 => micro::<E, AT, 3, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, width, acc),
            4 => micro::<E, AT, 4, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, width, acc),
            _ => micro::<E, AT, 5, NV, MASKED>(k, a, lda, b, ldb, c, ldc, mask, width, acc),
        }
    }
}

/// Element `(i, p)` of A: `a[i·lda + p]`, or `a[p·lda + i]` when A is stored transposed.
#[inline(always)]
fn a_at<const AT: bool>(a: *const f32, i: usize, p: usize, lda: usize) -> *const f32 {
    if AT {
        a.wrapping_add(p * lda + i)
    } else {
        a.wrapping_add(i * lda + p)
    }
}

/// `R` rows × `NV` vectors of C. With `MASKED`, `NV` is 1 and only the first `width` lanes
/// (those set in `mask`) are read or written, in B and in C.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` points at `R` rows of `k > 0` elements (stride `lda`,
/// or transposed with `AT`),
/// `b` at `k` rows of the block's columns (stride `ldb`) and `c` at `R` rows of them (`ldc`).
#[inline(always)]
pub(super) unsafe fn micro<E: Storage, const AT: bool, const R: usize, const NV: usize, const MASKED: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mask: __m256i,
    width: usize,
    mode: Acc,
) {
    // SAFETY: AVX is available (caller); no memory is touched.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut acc = [[zero; NV]; R];
    for p in 0..k {
        let mut bv = [zero; NV];
        for (v, x) in bv.iter_mut().enumerate() {
            let bp = b.wrapping_add(p * ldb + v * 8);
            // SAFETY: row `p < k` of B holds this block's columns (`width` of them when
            // masked); masked lanes are not read. `E::KIND == F32` makes `E` f32 (see
            // `convert`), so the cast reinterprets nothing.
            *x = unsafe {
                if !MASKED {
                    load8(bp)
                } else if E::KIND == Kind::F32 {
                    _mm256_maskload_ps(bp.cast::<f32>(), mask)
                } else {
                    load_partial(bp, width)
                }
            };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: element `(r, p)` of A exists (`r < R`, `p < k`); FMA is available.
            unsafe {
                let av = _mm256_broadcast_ss(&*a_at::<AT>(a, r, p, lda));
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm256_fmadd_ps(av, bv, *acc_rv);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let alpha = match mode {
            // SAFETY: `Rescale` holds a factor for each of the `R` rows; AVX is available.
            Acc::Rescale(al) => Some(unsafe { _mm256_broadcast_ss(&*al.add(r)) }),
            _ => None,
        };
        for (v, &x) in acc_r.iter().enumerate() {
            let cp = c.wrapping_add(r * ldc + v * 8);
            // SAFETY: row `r < R` of C holds this block's columns; `Acc::Zero` reads nothing,
            // and masked lanes are neither read nor written.
            unsafe {
                let x = if matches!(mode, Acc::Zero) {
                    x
                } else {
                    let old = if MASKED { _mm256_maskload_ps(cp, mask) } else { _mm256_loadu_ps(cp) };
                    match alpha {
                        Some(f) => _mm256_fmadd_ps(old, f, x),
                        None => _mm256_add_ps(old, x),
                    }
                };
                if MASKED {
                    _mm256_maskstore_ps(cp, mask, x);
                } else {
                    _mm256_storeu_ps(cp, x);
                }
            }
        }
    }
}
