//! `C ← A·B`, `C + A·B` or `diag(alpha)·C + A·B` with register-blocked NEON microkernels.
//!
//! AArch64 has 32 vector registers of 4 floats. A full block is 6 rows of C by 12 columns
//! (3 vectors, 18 accumulators) when A is stored by rows, 6 by 16 (4 vectors, 24 accumulators)
//! when A is stored transposed (`gemm_at`, the P·V product):
//! - by rows, the loop takes 4 steps of k at once: one 4-float load per row of A (6 registers)
//!   holds its next 4 elements, and each product is `FMLA Vacc.4S, Vb.4S, Va.S[lane]`
//!   (`vfmaq_laneq_f32`), so no broadcast instruction competes with the FMAs for the vector
//!   pipes: per 4 steps 72 FMAs, 12 B loads and 6 A loads;
//! - transposed, one step of k reads a column of A: 4 + 2 floats (a Q and a D register), and 4
//!   B vectors: per step 24 FMAs and 6 loads.
//!
//! Both leave enough independent accumulators (≥ 8) to cover a 4-cycle FMA latency on two
//! pipes (Cortex-A76, Neoverse-N1). `scripts/neon_mca.sh` models the inner loops with
//! `llvm-mca` (see `benches/README.md`). The edges (fewer rows, the last columns, the k steps
//! left over) use broadcasts (`LD1R`) and partial vectors.

use core::arch::aarch64::*;

use super::convert::{load4, load_partial, store_partial};
use crate::element::Storage;

/// Rows per full microkernel.
pub(super) const MR: usize = 6;

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
    fn at_row(self, i: usize) -> Acc {
        match self {
            Acc::Rescale(alpha) => Acc::Rescale(alpha.wrapping_add(i)),
            other => other,
        }
    }
}

/// Vectors per full strip: 3 with A by rows, 4 with A transposed (see the module docs).
const fn strip_vectors(at: bool) -> usize {
    if at {
        4
    } else {
        3
    }
}

/// See [`crate::kernel::Kernel::gemm`] and [`crate::kernel::Kernel::gemm_at`].
///
/// # Safety
/// `a` holds an `m × k` matrix with leading dimension `lda` and `b` a `k × n` one (`ldb`) in
/// the sense of [`crate::kernel::bounds::assert_fits_read`] (rows may overlap; B's elements are
/// widened as they are loaded), `c` an `m × n` one (`ldc`) in the sense of
/// [`crate::kernel::bounds::assert_fits`]; with [`Acc::Rescale`], its pointer holds `m` floats.
/// With `AT`, A is stored transposed: element `(i, p)` is `a[p·lda + i]` and `a` holds a
/// `k × m` matrix.
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
    let nr = 4 * strip_vectors(AT);
    let mut j = 0;
    // LOOP 1: full strips of B; LOOP 2 (in `strip`): blocks of MR rows of A.
    while j + nr <= n {
        // SAFETY: columns `j..j + nr` lie inside B and C; the caller guarantees the rest.
        unsafe {
            if AT {
                strip::<E, AT, 4, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 4, acc)
            } else {
                strip::<E, AT, 3, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 4, acc)
            }
        };
        j += nr;
    }
    // The columns left: single vectors, the last one partial.
    while j < n {
        let w = (n - j).min(4);
        // SAFETY: columns `j..j + w` lie inside B and C, and the partial kernel touches no others.
        unsafe {
            if w == 4 {
                strip::<E, AT, 1, false>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, 4, acc)
            } else {
                strip::<E, AT, 1, true>(m, k, a, lda, b.add(j), ldb, c.add(j), ldc, w, acc)
            }
        };
        j += w;
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

/// One strip of `NV` vectors (or, with `PARTIAL`, one vector of `width < 4` columns) for all
/// `m` rows.
///
/// # Safety
/// As [`gemm`], for the strip's columns; `k > 0`.
#[inline(always)]
unsafe fn strip<E: Storage, const AT: bool, const NV: usize, const PARTIAL: bool>(
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
    let mut i = 0;
    // LOOP 2: MR-row blocks of A over the strip, then one block of the 1..MR rows left.
    while i + MR <= m {
        // SAFETY: rows `i..i + MR` lie inside A and C.
        unsafe {
            micro::<E, AT, MR, NV, PARTIAL>(
                k,
                a_at::<AT>(a, i, 0, lda),
                lda,
                b,
                ldb,
                c.add(i * ldc),
                ldc,
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
            1 => micro::<E, AT, 1, NV, PARTIAL>(k, a, lda, b, ldb, c, ldc, width, acc),
            2 => micro::<E, AT, 2, NV, PARTIAL>(k, a, lda, b, ldb, c, ldc, width, acc),
            3 => micro::<E, AT, 3, NV, PARTIAL>(k, a, lda, b, ldb, c, ldc, width, acc),
            4 => micro::<E, AT, 4, NV, PARTIAL>(k, a, lda, b, ldb, c, ldc, width, acc),
            _ => micro::<E, AT, 5, NV, PARTIAL>(k, a, lda, b, ldb, c, ldc, width, acc),
        }
    }
}

/// The `NV` vectors of B in row `p` of the strip (`width` columns when `PARTIAL`, then `NV` is 1).
///
/// # Safety
/// Row `p` of B holds the strip's columns.
#[inline(always)]
unsafe fn load_b<E: Storage, const NV: usize, const PARTIAL: bool>(
    b: *const E,
    p: usize,
    ldb: usize,
    width: usize,
) -> [float32x4_t; NV] {
    // SAFETY: the caller guarantees the row's `4·NV` (or `width`) columns are readable.
    core::array::from_fn(|v| unsafe {
        let bp = b.add(p * ldb + v * 4);
        if PARTIAL {
            load_partial(bp, width)
        } else {
            load4(bp)
        }
    })
}

/// `acc[r][v] += b[v] · a[LANE]` for one row `r`: `FMLA Vacc.4S, Vb.4S, Va.S[LANE]`.
#[inline(always)]
fn fma_row<const LANE: i32, const NV: usize>(acc: &mut [float32x4_t; NV], b: &[float32x4_t; NV], a: float32x4_t) {
    for (acc, &b) in acc.iter_mut().zip(b) {
        // SAFETY: NEON is baseline wherever this module is compiled; registers only.
        *acc = unsafe { vfmaq_laneq_f32::<LANE>(*acc, b, a) };
    }
}

/// [`fma_row`] with a 2-lane A.
#[inline(always)]
fn fma_row_d<const LANE: i32, const NV: usize>(acc: &mut [float32x4_t; NV], b: &[float32x4_t; NV], a: float32x2_t) {
    for (acc, &b) in acc.iter_mut().zip(b) {
        // SAFETY: NEON is baseline wherever this module is compiled; registers only.
        *acc = unsafe { vfmaq_lane_f32::<LANE>(*acc, b, a) };
    }
}

/// `R` rows × `NV` vectors of C. With `PARTIAL`, `NV` is 1 and only the first `width` columns
/// are read or written, in B and in C.
///
/// # Safety
/// `a` points at `R` rows of `k > 0` elements (stride `lda`, or transposed with `AT`), `b` at
/// `k` rows of the block's columns (stride `ldb`) and `c` at `R` rows of them (`ldc`); a
/// `Rescale` pointer holds `R` factors.
#[inline(always)]
unsafe fn micro<E: Storage, const AT: bool, const R: usize, const NV: usize, const PARTIAL: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    width: usize,
    mode: Acc,
) {
    // SAFETY: NEON is baseline; registers only.
    let zero = unsafe { vdupq_n_f32(0.0) };
    let mut acc = [[zero; NV]; R];
    let mut p = 0;
    if !AT {
        // Four steps of k per pass: lane `l` of row `r`'s vector is `a(r, p + l)`.
        while p + 4 <= k {
            // SAFETY: elements `(r, p..p + 4)` of A exist (`r < R`, `p + 4 <= k`), and rows
            // `p..p + 4` of B hold the block's columns.
            unsafe {
                let av: [float32x4_t; R] = core::array::from_fn(|r| vld1q_f32(a.add(r * lda + p)));
                let bv = load_b::<E, NV, PARTIAL>(b, p, ldb, width);
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    fma_row::<0, NV>(acc, &bv, a);
                }
                let bv = load_b::<E, NV, PARTIAL>(b, p + 1, ldb, width);
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    fma_row::<1, NV>(acc, &bv, a);
                }
                let bv = load_b::<E, NV, PARTIAL>(b, p + 2, ldb, width);
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    fma_row::<2, NV>(acc, &bv, a);
                }
                let bv = load_b::<E, NV, PARTIAL>(b, p + 3, ldb, width);
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    fma_row::<3, NV>(acc, &bv, a);
                }
            }
            p += 4;
        }
    } else if R == MR {
        // A transposed, a full block: column `p` of A is 6 consecutive floats.
        while p < k {
            // SAFETY: elements `(0..6, p)` of A are `a[p·lda ..][..6]`, and row `p` of B holds
            // the block's columns.
            unsafe {
                let a03 = vld1q_f32(a.add(p * lda));
                let a45 = vld1_f32(a.add(p * lda + 4));
                let bv = load_b::<E, NV, PARTIAL>(b, p, ldb, width);
                fma_row::<0, NV>(&mut acc[0], &bv, a03);
                fma_row::<1, NV>(&mut acc[1], &bv, a03);
                fma_row::<2, NV>(&mut acc[2], &bv, a03);
                fma_row::<3, NV>(&mut acc[3], &bv, a03);
                fma_row_d::<0, NV>(&mut acc[4], &bv, a45);
                fma_row_d::<1, NV>(&mut acc[5], &bv, a45);
            }
            p += 1;
        }
    }
    // The steps left (and every step of a transposed block of fewer rows): broadcasts.
    while p < k {
        // SAFETY: element `(r, p)` of A exists (`r < R`, `p < k`), and row `p` of B holds the
        // block's columns.
        unsafe {
            let bv = load_b::<E, NV, PARTIAL>(b, p, ldb, width);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = vld1q_dup_f32(a_at::<AT>(a, r, p, lda));
                for (acc, &b) in acc.iter_mut().zip(&bv) {
                    *acc = vfmaq_f32(*acc, b, av);
                }
            }
        }
        p += 1;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let alpha = match mode {
            // SAFETY: `Rescale` holds a factor for each of the `R` rows.
            Acc::Rescale(al) => Some(unsafe { vld1q_dup_f32(al.add(r)) }),
            _ => None,
        };
        for (v, &x) in acc_r.iter().enumerate() {
            let cp = c.wrapping_add(r * ldc + v * 4);
            // SAFETY: row `r < R` of C holds this block's columns (`width` of them when
            // partial); `Acc::Zero` reads nothing.
            unsafe {
                let x = if matches!(mode, Acc::Zero) {
                    x
                } else {
                    let old = if PARTIAL { load_partial(cp.cast_const(), width) } else { vld1q_f32(cp) };
                    match alpha {
                        Some(f) => vfmaq_f32(x, old, f),
                        None => vaddq_f32(old, x),
                    }
                };
                if PARTIAL {
                    store_partial(cp, x, width);
                } else {
                    vst1q_f32(cp, x);
                }
            }
        }
    }
}
