//! Scores key by key: `dot_rows` (a few query rows against keys read in place) and
//! `dot_heads` (the decode case: every head's rows against each key, transposed output).
//!
//! Both reduce to [`dot_block`]: up to 4 query rows against one key row, the key widened once
//! per 4 elements and shared by the rows, two accumulators per row (8 independent FMA chains at
//! 4 rows) so the adds' latency is covered.

use core::arch::aarch64::*;

use super::convert::{load4, load_partial};
use crate::element::Storage;

/// Query rows per [`dot_block`].
const RB: usize = 4;

/// `out[r] = Σₚ q[r][p] · key[p]` for `p < k`, `r < R`.
///
/// # Safety
/// Each `q[r]` points at `k` readable floats and `key` at `k` readable elements.
#[inline(always)]
unsafe fn dot_block<E: Storage, const R: usize>(q: [*const f32; R], key: *const E, k: usize) -> [f32; R] {
    // SAFETY: every access is at `p + 8 <= k`, `p + 4 <= k` or a partial `k − p < 4` elements,
    // inside the rows the caller guarantees; NEON is baseline.
    unsafe {
        let zero = vdupq_n_f32(0.0);
        let (mut acc0, mut acc1) = ([zero; R], [zero; R]);
        let mut p = 0;
        while p + 8 <= k {
            let (k0, k1) = (load4(key.add(p)), load4(key.add(p + 4)));
            for r in 0..R {
                acc0[r] = vfmaq_f32(acc0[r], vld1q_f32(q[r].add(p)), k0);
                acc1[r] = vfmaq_f32(acc1[r], vld1q_f32(q[r].add(p + 4)), k1);
            }
            p += 8;
        }
        if p + 4 <= k {
            let k0 = load4(key.add(p));
            for r in 0..R {
                acc0[r] = vfmaq_f32(acc0[r], vld1q_f32(q[r].add(p)), k0);
            }
            p += 4;
        }
        if p < k {
            // Zero lanes in both operands past the row's end.
            let k1 = load_partial(key.add(p), k - p);
            for r in 0..R {
                acc1[r] = vfmaq_f32(acc1[r], load_partial(q[r].add(p), k - p), k1);
            }
        }
        core::array::from_fn(|r| vaddvq_f32(vaddq_f32(acc0[r], acc1[r])))
    }
}

/// `m` rows starting at `a` (stride `lda`) against one key: `out[i·ldo_i] = a_i · key`.
///
/// # Safety
/// `a` holds `m` rows of `k` floats (stride `lda`), `key` `k` elements, and `out + i·ldo_i` is
/// writable for `i < m`.
#[inline(always)]
unsafe fn rows_vs_key<E: Storage>(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    key: *const E,
    out: *mut f32,
    ldo_i: usize,
) {
    let mut i = 0;
    // SAFETY: rows `i..i + RB` (then `i..m`) exist; the writes go to `out + (i + r)·ldo_i`.
    unsafe {
        while i + RB <= m {
            let d = dot_block::<E, RB>(core::array::from_fn(|r| a.add((i + r) * lda)), key, k);
            for (r, d) in d.into_iter().enumerate() {
                *out.add((i + r) * ldo_i) = d;
            }
            i += RB;
        }
        let rows = |r| a.add((i + r) * lda);
        match m - i {
            0 => {}
            1 => *out.add(i * ldo_i) = dot_block::<E, 1>([rows(0)], key, k)[0],
            2 => {
                let d = dot_block::<E, 2>([rows(0), rows(1)], key, k);
                *out.add(i * ldo_i) = d[0];
                *out.add((i + 1) * ldo_i) = d[1];
            }
            _ => {
                let d = dot_block::<E, 3>([rows(0), rows(1), rows(2)], key, k);
                for (r, d) in d.into_iter().enumerate() {
                    *out.add((i + r) * ldo_i) = d;
                }
            }
        }
    }
}

/// See [`crate::kernel::Kernel::dot_rows`].
///
/// # Safety
/// `a` holds an `m × k` matrix with leading dimension `lda`, `b` an `n × k` one (`ldb`), both
/// in the sense of [`crate::kernel::bounds::assert_fits_read`], and `out` an `m × n` one
/// (`ldo`) in the sense of [`crate::kernel::bounds::assert_fits`].
#[inline(always)]
pub(super) unsafe fn dot_rows<E: Storage>(
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
    if m == 0 || n == 0 {
        return;
    }
    for j in 0..n {
        // SAFETY: key `j < n` is row `j` of B; its scores are column `j` of `out`.
        unsafe { rows_vs_key(m, k, a, lda, b.add(j * ldb), out.add(j), ldo) };
    }
}

/// See [`crate::kernel::Kernel::dot_heads`]. The prefetch request is not used: the keys are read
/// in address order, which the cores' stream prefetchers follow.
///
/// # Safety
/// `a` holds `heads·m` rows of `k` floats (`lda`), the key rows `b[j·ldb + h·ldh ..][..k]`
/// exist for `j < n`, `h < heads`, and `out` holds an `n × heads·m` matrix (`ldo`) in the sense
/// of [`crate::kernel::bounds::assert_fits`].
#[inline(always)]
pub(super) unsafe fn dot_heads<E: Storage>(
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
) {
    if m == 0 || n == 0 || heads == 0 {
        return;
    }
    if k == 0 {
        // A and B may be empty: no pointer into them may be formed.
        for j in 0..n {
            // SAFETY: row `j < n` of `out` holds `heads·m` floats.
            unsafe { core::ptr::write_bytes(out.add(j * ldo), 0, heads * m) };
        }
        return;
    }
    for j in 0..n {
        for h in 0..heads {
            // SAFETY: head `h`'s rows start at row `h·m` of A; its key row exists; its scores
            // are `out[j·ldo + h·m ..][..m]`.
            unsafe {
                rows_vs_key(m, k, a.add(h * m * lda), lda, b.add(j * ldb + h * ldh), out.add(j * ldo + h * m), 1)
            };
        }
    }
}
