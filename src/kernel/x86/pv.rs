//! A decode tile's P·V over its KV heads in one call ([`crate::kernel::Kernel::pv_heads`]).
//!
//! The loop is the trait's default, chunk by chunk and head by head, but each head's product is
//! the gemm's microkernel run straight down the 16-column strips of its output rows, in blocks
//! of up to 4 rows: no checked and dispatched `gemm_at` per chunk and head (a chunk of 8 keys is
//! 4096 FMAs per head at GQA 4 and D 128, and such a call cost about 15 ns of them,
//! `benches/README.md`, stop 27), and none of the gemm's choices of path per product. Against that loop, paired call by call (32/8 heads, D 128, stop 28): a
//! `KvCache` step from cache (2048 keys, 1 thread) took 0.92–0.94× the time with f16, 0.87–0.93×
//! with bf16, 0.97–0.98× with int8 and 1.03× with f32 (memory-bound, 16 MiB); cold (2 threads,
//! 32768 keys) 0.94–1.01× with f16, 0.93× bf16, 0.94× int8, 1.00× f32, BSHD f16 0.97×.
//!
//! The sums are the gemm's, element for element (the same FMAs in the same order), so the
//! result is bit-identical to the loop's.

use core::arch::x86_64::_mm256_set1_epi32;

use super::gemm::{self, Acc};
use super::prefetch::prefetch_lines;
use crate::element::Storage;
use crate::kernel::PvHeads;

/// Output rows per microkernel block: 4 rows × 2 vectors are 8 accumulators, and an 8-row head
/// (GQA 8) is two blocks, each reading the strip's V vectors from L1 again, as the gemm's 6 + 2
/// did.
const ROWS: usize = 4;

/// See [`crate::kernel::Kernel::pv_heads`].
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; with `rows = heads·hr`, `p` holds an `n × rows` matrix
/// (leading dimension `rows`) in the sense of [`crate::kernel::bounds::assert_fits_read`], `v`
/// the rows `v[j·v_ld + h·v_hs ..][..dv]` for `j < n`, `h < heads`, `acc` a `rows × dv` matrix
/// (leading dimension `dv`) and `alpha` `rows` floats.
#[inline(always)]
pub(super) unsafe fn pv_heads<E: Storage>(s: PvHeads, p: *const f32, v: *const E, acc: *mut f32, alpha: *const f32) {
    // The strips need whole vectors; V rows 4 KiB apart go to the gemm, which reads them in
    // passes of a few keys (its `ALIASED_KC`), and so does a tile without keys (the gemm's
    // rescale of C by itself, `-0` and all).
    let strips = s.dv % 16 == 0 && !gemm::rows_alias::<E>(s.n, s.v_ld) && s.n > 0;
    // SAFETY: the caller's contract.
    unsafe {
        if strips {
            chunks::<E, true>(s, p, v, acc, alpha);
        } else {
            chunks::<E, false>(s, p, v, acc, alpha);
        }
    }
}

/// The chunks and heads of [`pv_heads`], each head's share of a chunk through [`strip_rows`]
/// with `STRIPS` (`dv` a multiple of 16), else through the gemm, a call of its own: inlined here,
/// its paths made this function seven times as long, and the int8 loop spilled its registers
/// (1.05–1.10× slower from the caches than the `gemm_at` loop, stop 28).
///
/// # Safety
/// As [`pv_heads`], and with `STRIPS`, `dv` is a multiple of 16.
#[inline(always)]
unsafe fn chunks<E: Storage, const STRIPS: bool>(
    s: PvHeads,
    p: *const f32,
    v: *const E,
    acc: *mut f32,
    alpha: *const f32,
) {
    let PvHeads { heads, hr, dv, n, v_ld, v_hs, chunk, ahead } = s;
    let ld = heads * hr;
    let chunk = chunk.max(1);
    let row_bytes = dv * size_of::<E>();
    // Requests the V rows of keys `j0..j1`, every head's.
    let request = |j0: usize, j1: usize| {
        for h in 0..heads {
            for j in j0..j1 {
                prefetch_lines(v.wrapping_add(j * v_ld + h * v_hs).cast::<i8>(), row_bytes);
            }
        }
    };
    if ahead > 0 {
        request(0, (ahead * chunk).min(n));
    }
    let mut j0 = 0;
    // LOOP: chunks of keys, every head per chunk; at least one, so that `n == 0` still rescales.
    loop {
        let j1 = (j0 + chunk).min(n);
        // The chunk `ahead` chunks on, a share before each head's product.
        let next = ((j0 + ahead * chunk).min(n), (j1 + ahead * chunk).min(n));
        let share = (next.1 - next.0).div_ceil(heads.max(1));
        for h in 0..heads {
            if ahead > 0 {
                let a = (next.0 + h * share).min(next.1);
                request(a, (a + share).min(next.1));
            }
            let r0 = h * hr;
            // The rescale rides on the first chunk; later chunks add.
            let mode = if j0 == 0 { Acc::Rescale(alpha.wrapping_add(r0)) } else { Acc::Add };
            let (p_h, v_h) = (p.wrapping_add(j0 * ld + r0), v.wrapping_add(j0 * v_ld + h * v_hs));
            let (k, c) = (j1 - j0, acc.wrapping_add(r0 * dv));
            // SAFETY: keys `j0..j1` of head `h` lie in `p` (columns `r0..r0 + hr`, `ld` apart)
            // and `v`, its `hr` output rows in `acc` and their factors in `alpha` (caller).
            unsafe {
                if STRIPS {
                    strip_rows(hr, dv, k, p_h, ld, v_h, v_ld, c, mode);
                } else {
                    super::gemm_avx2_fma::<E, true>(hr, dv, k, p_h, ld, v_h, v_ld, c, dv, mode);
                }
            }
        }
        j0 = j1;
        if j0 >= n {
            break;
        }
    }
}

/// `C ← C + Pᵀ·V` (or its rescale, `mode`) for `hr` rows of `dv` columns, `dv` a multiple of 16,
/// over `k` keys: blocks of up to [`ROWS`] rows, each down every 16-column strip.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `p` holds the `k × hr` transposed probabilities
/// (leading dimension `ld`), `v` `k` rows of `dv` elements (`v_ld`) and `c` `hr` rows of `dv`
/// floats (leading dimension `dv`); a `Rescale` pointer holds `hr` factors.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_rows<E: Storage>(
    hr: usize,
    dv: usize,
    k: usize,
    p: *const f32,
    ld: usize,
    v: *const E,
    v_ld: usize,
    c: *mut f32,
    mode: Acc,
) {
    let mut r = 0;
    while r < hr {
        let (p, c, mode) = (p.wrapping_add(r), c.wrapping_add(r * dv), mode.at_row(r));
        // SAFETY: rows `r..r + R` of the block exist (`R <= hr - r`); the rest is the caller's.
        unsafe {
            match hr - r {
                1 => strips::<E, 1>(dv, k, p, ld, v, v_ld, c, mode),
                2 => strips::<E, 2>(dv, k, p, ld, v, v_ld, c, mode),
                3 => strips::<E, 3>(dv, k, p, ld, v, v_ld, c, mode),
                _ => strips::<E, ROWS>(dv, k, p, ld, v, v_ld, c, mode),
            }
        }
        r += ROWS;
    }
}

/// [`strip_rows`] for one block of `R` rows.
///
/// # Safety
/// As [`strip_rows`], for `R` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strips<E: Storage, const R: usize>(
    dv: usize,
    k: usize,
    p: *const f32,
    ld: usize,
    v: *const E,
    v_ld: usize,
    c: *mut f32,
    mode: Acc,
) {
    // SAFETY: AVX is available (caller); the unmasked microkernel ignores the mask.
    let all = unsafe { _mm256_set1_epi32(-1) };
    let mut j = 0;
    while j < dv {
        // SAFETY: columns `j..j + 16` lie inside every row of V and C (`dv` is a multiple of 16).
        unsafe {
            gemm::micro::<E, true, R, 2, false>(k, p, ld, v.wrapping_add(j), v_ld, c.wrapping_add(j), dv, all, 16, mode)
        };
        j += 16;
    }
}
