//! The softmax's element-wise passes: `exp(x − max)` with its sum, `max` and `scale`, and the
//! online-softmax step of a block of rows built from them.

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
        let e = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO)), e);
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HI));
        _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), over)
    }
}

/// [`exp8`] for the softmax's arguments `s − max`: equal to it wherever `x <= 0` or `x` is NaN.
/// Not beyond: [`exp8n_nonpos`] forms `2ⁿ` as a float, which overflows for `x` above ~88.38.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[inline(always)]
unsafe fn exp8_nonpos(x: __m256) -> __m256 {
    // SAFETY: the caller guarantees AVX2 and FMA.
    unsafe { exp8n_nonpos::<1, true>([x])[0] }
}

/// [`exp8_nonpos`] of `N` vectors, stage by stage: each step of the chain (~14 dependent
/// operations, ~45 cycles) is issued for all `N` before the next, so the scheduler holds `N`
/// chains at one depth instead of a few chains at every depth. The operations, and so the
/// results, are those of one vector at a time.
///
/// Two changes from [`exp8`]'s sequence leave every result bit unchanged for `x <= 0`:
/// - `2ⁿ` multiplies, fused into the last step: `fma(y − 1, 2ⁿ, 2ⁿ)` rounds `y·2ⁿ` once, as
///   rounding `y` and then adding `n` to its exponent does wherever the result is normal.
///   `2ⁿ` is the bits of `x·log₂e + ROUND_MAGIC + 127` shifted left by 23, which drops the
///   magic and leaves `n + 127` in the exponent field (no conversion). `n = 128` would give
///   `+inf`, which is why [`exp8`] keeps the exponent addition.
/// - The constants are full 32-byte lanes in memory, reached through a pointer the compiler
///   cannot see through, so each is an operand of its FMA. As splats the compiler kept them in
///   registers, broadcast them again in the loop and spilled the chains' values to the stack.
///
/// Without `FLUSH` the lanes below [`LO`] (and so `exp(-inf)`) are not set to 0: only for callers
/// that know every argument is `>= LO` or NaN. A 72 × 96 tile of [`softmax_cols`] on Zen 4,
/// median of 7: 0.36 ns per score before these changes, 0.30–0.32 after.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn exp8n_nonpos<const N: usize, const FLUSH: bool>(x: [__m256; N]) -> [__m256; N] {
    // SAFETY: the caller guarantees AVX2 and FMA; the aligned loads read `EXP_LANES`.
    unsafe {
        // (Loops, not closures or `map`: a closure would not inherit the caller's target
        // features, and every intrinsic in it would become a call.)
        // The pointer is hidden here, in every step, not once in the callers: known outside
        // their loops, the loads are hoisted into registers again.
        let k = core::hint::black_box(&EXP_LANES);
        let mut t = x;
        for i in 0..N {
            t[i] = _mm256_fmadd_ps(x[i], k.lane(1), k.lane(2));
        }
        let mut scale = x;
        for i in 0..N {
            scale[i] = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(t[i])));
        }
        for v in &mut t {
            *v = _mm256_sub_ps(*v, k.lane(2));
        }
        let mut r = x;
        for i in 0..N {
            r[i] = _mm256_fnmadd_ps(t[i], k.lane(3), x[i]);
        }
        for i in 0..N {
            r[i] = _mm256_fnmadd_ps(t[i], k.lane(4), r[i]);
        }
        let mut p = [k.lane(5); N];
        for j in 6..11 {
            for i in 0..N {
                p[i] = _mm256_fmadd_ps(p[i], r[i], k.lane(j));
            }
        }
        let mut e = x;
        for i in 0..N {
            let y = _mm256_fmadd_ps(p[i], _mm256_mul_ps(r[i], r[i]), r[i]);
            let v = _mm256_fmadd_ps(y, scale[i], scale[i]);
            e[i] = if FLUSH { _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x[i], k.lane(0)), v) } else { v };
        }
        e
    }
}

/// [`exp8n_nonpos`]'s constants, in the order it reads them: [`LO`], `log₂e`, the rounding
/// magic plus 127, `ln 2` in two parts, then `P`.
#[repr(C, align(32))]
struct ExpLanes([[f32; 8]; 11]);

impl ExpLanes {
    /// Constant `i` as a vector: a plain aligned load, which the compiler folds into the FMA
    /// that reads it (no AVX instruction of its own, so no target feature is needed here).
    #[inline(always)]
    fn lane(&self, i: usize) -> __m256 {
        // SAFETY: `self.0[i]` is 8 floats on a 32-byte boundary (`repr(align(32))`, and each
        // entry is 32 bytes), so the read is in bounds and aligned.
        unsafe { core::ptr::read(self.0[i].as_ptr().cast::<__m256>()) }
    }
}
static EXP_LANES: ExpLanes = ExpLanes([
    [LO; 8],
    [LOG2E; 8],
    [ROUND_MAGIC + 127.0; 8],
    [LN2_HI; 8],
    [LN2_LO; 8],
    [P[0]; 8],
    [P[1]; 8],
    [P[2]; 8],
    [P[3]; 8],
    [P[4]; 8],
    [P[5]; 8],
]);

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
    unsafe { exp_sum_with::<false>(x, max) }
}

/// `exp_sum` whose arguments `x[i] − max` are known to be `<= 0` or NaN when `NONPOS`.
///
/// Four vectors go per step: the exp chains are long (about 16 dependent operations), so
/// independent ones side by side keep both FMA pipes busy.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[inline(always)]
unsafe fn exp_sum_with<const NONPOS: bool>(x: &mut [f32], max: f32) -> f32 {
    #[inline(always)]
    unsafe fn e<const NONPOS: bool>(v: __m256) -> __m256 {
        // SAFETY: the caller guarantees AVX2 and FMA.
        unsafe {
            if NONPOS {
                exp8_nonpos(v)
            } else {
                exp8(v)
            }
        }
    }
    let len = x.len();
    let p = x.as_mut_ptr();
    // SAFETY: the caller guarantees AVX2 and FMA; every access below is inside `x`: the steps
    // cover `i + 32 <= len`, then `i + 8 <= len`, then a masked tail of `len − i < 8` lanes.
    unsafe {
        let m = _mm256_set1_ps(max);
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 32 <= len {
            let e0 = e::<NONPOS>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            let e1 = e::<NONPOS>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8)), m));
            let e2 = e::<NONPOS>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 16)), m));
            let e3 = e::<NONPOS>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 24)), m));
            _mm256_storeu_ps(p.add(i), e0);
            _mm256_storeu_ps(p.add(i + 8), e1);
            _mm256_storeu_ps(p.add(i + 16), e2);
            _mm256_storeu_ps(p.add(i + 24), e3);
            a0 = _mm256_add_ps(a0, e0);
            a1 = _mm256_add_ps(a1, e1);
            a2 = _mm256_add_ps(a2, e2);
            a3 = _mm256_add_ps(a3, e3);
            i += 32;
        }
        while i + 8 <= len {
            let e0 = e::<NONPOS>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e0);
            a0 = _mm256_add_ps(a0, e0);
            i += 8;
        }
        if i < len {
            // The mask covers exactly the `len − i < 8` floats left; the other lanes are
            // neither read nor written, and are zeroed before the sum.
            let mask = lane_mask(len - i);
            let e0 = e::<NONPOS>(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), mask), m));
            _mm256_maskstore_ps(p.add(i), mask, e0);
            a1 = _mm256_add_ps(a1, _mm256_and_ps(e0, _mm256_castsi256_ps(mask)));
        }
        hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
    }
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
    let rest = chunks.remainder();
    if rest.len() >= 8 {
        // SAFETY: `rest` holds at least 8 floats.
        m0 = unsafe { _mm256_max_ps(m0, _mm256_loadu_ps(rest.as_ptr())) };
    }
    // SAFETY: AVX is available (caller); no memory is touched.
    let m = unsafe {
        let v = _mm256_max_ps(m0, m1);
        let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
    };
    rest[rest.len() & 8..].iter().fold(m, |m, &v| m.max(v))
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

/// See [`crate::kernel::Kernel::softmax_rows`].
///
/// Rows go in blocks of 8: per row one `max` pass and one `exp_sum` pass (the row stays in L1),
/// then the block's `alpha = exp(m_old − m_new)` and `l` update as one vector each.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `s` holds `rows` rows of `n` floats with stride `ld` (in the
/// sense of [`crate::kernel::bounds::assert_fits`]), and `m`, `l`, `alpha` hold `rows` floats.
#[inline(always)]
pub(super) unsafe fn softmax_rows(
    s: *mut f32,
    ld: usize,
    rows: usize,
    n: usize,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
) {
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(8);
        let mut m_old = [f32::NEG_INFINITY; 8];
        let mut m_new = [f32::NEG_INFINITY; 8];
        let mut l_old = [0.0f32; 8];
        let mut sums = [0.0f32; 8];
        for i in 0..nr {
            let r = r0 + i;
            // SAFETY: row `r < rows` holds `n` floats at `s + r·ld`, and no other reference to
            // them is live; `m` and `l` hold `rows` floats.
            let (row, mo, lo) = unsafe { (core::slice::from_raw_parts_mut(s.add(r * ld), n), *m.add(r), *l.add(r)) };
            // SAFETY: the caller guarantees AVX2 and FMA.
            let tile_max = unsafe { max(row) };
            let mut mn = if tile_max > mo || tile_max.is_nan() { tile_max } else { mo };
            if mn == f32::NEG_INFINITY && row.iter().any(|x| x.is_nan()) {
                // Every score NaN or -inf and `max` skipped the NaNs: poison the row's state.
                mn = f32::NAN;
            }
            (m_old[i], m_new[i], l_old[i]) = (mo, mn, lo);
            if mn == f32::NEG_INFINITY {
                // Nothing visible so far: the row adds nothing and its state stays empty.
                row.fill(0.0);
            } else if mn.is_nan() {
                row.fill(f32::NAN);
                sums[i] = f32::NAN;
            } else {
                // SAFETY: the caller guarantees AVX2 and FMA; `s − mn <= 0` or NaN.
                sums[i] = unsafe { exp_sum_with::<true>(row, mn) };
            }
        }
        let (mut a_out, mut l_out) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: the caller guarantees AVX2 and FMA; the arrays hold 8 floats each.
        unsafe {
            let mo = _mm256_loadu_ps(m_old.as_ptr());
            let mn = _mm256_loadu_ps(m_new.as_ptr());
            // Empty rows (m_new = -inf, so m_old = -inf too) keep their state: alpha = 1
            // (exp8 would see -inf - -inf = NaN there).
            let empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(mn, _mm256_set1_ps(f32::NEG_INFINITY));
            let a = _mm256_blendv_ps(exp8(_mm256_sub_ps(mo, mn)), _mm256_set1_ps(1.0), empty);
            let lv = _mm256_fmadd_ps(_mm256_loadu_ps(l_old.as_ptr()), a, _mm256_loadu_ps(sums.as_ptr()));
            _mm256_storeu_ps(a_out.as_mut_ptr(), a);
            _mm256_storeu_ps(l_out.as_mut_ptr(), lv);
        }
        for i in 0..nr {
            // SAFETY: `r0 + i < rows`, and the three arrays hold `rows` floats.
            unsafe {
                *alpha.add(r0 + i) = a_out[i];
                *l.add(r0 + i) = l_out[i];
                *m.add(r0 + i) = m_new[i];
            }
        }
        r0 += nr;
    }
}

/// See [`crate::kernel::Kernel::softmax_cols`].
///
/// Eight rows (columns of `s`) per step, all vertical: one pass of `max` (and `min`) down the
/// keys, then one of `exp` with the sums, then `alpha`, `l` and `m` as one vector each; no
/// horizontal reduction. The `exp` pass skips the flush to 0 below [`LO`] (a compare and two
/// masks per vector) where the eight columns' minima show that no argument needs it: in every
/// tile but the mask's boundary tiles, unless the scores of a row span more than 87.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `s` holds `n` rows of `rows` floats with stride `ld` (in the
/// sense of [`crate::kernel::bounds::assert_fits`]), and `m`, `l`, `alpha` hold `rows` floats.
#[inline(always)]
pub(super) unsafe fn softmax_cols(
    s: *mut f32,
    ld: usize,
    n: usize,
    rows: usize,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
) {
    if ld == rows && matches!(rows, 1 | 2 | 4) {
        // SAFETY: forwarded from this function's contract (`ld == rows`).
        return unsafe { softmax_cols_packed(s, n, rows, m, l, alpha) };
    }
    let mut c0 = 0;
    while c0 < rows {
        let w = (rows - c0).min(8);
        // SAFETY: the caller guarantees AVX2 and FMA; every access is to columns `c0..c0 + w`
        // (masked to `w` lanes) of rows `j < n` of `s`, or to entries `c0..c0 + w` of the state.
        unsafe {
            let mask = lane_mask(w);
            let m_old = ld8(m.add(c0), w, mask);
            let (mut mx, mut my) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
            let (mut nx, mut ny) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::INFINITY));
            let mut j = 0;
            while j + 2 <= n {
                let (a, b) = (ld8(s.add(j * ld + c0), w, mask), ld8(s.add((j + 1) * ld + c0), w, mask));
                (mx, my) = (_mm256_max_ps(a, mx), _mm256_max_ps(b, my));
                (nx, ny) = (_mm256_min_ps(a, nx), _mm256_min_ps(b, ny));
                j += 2;
            }
            if j < n {
                let a = ld8(s.add(j * ld + c0), w, mask);
                (mx, nx) = (_mm256_max_ps(a, mx), _mm256_min_ps(a, nx));
            }
            // None holds a NaN: `max(x, m)` and `min(x, m)` keep `m` where `x` is NaN.
            let (mx, mn) = (_mm256_max_ps(my, mx), _mm256_min_ps(ny, nx));
            // `tile_max > m_old ? tile_max : m_old`, lane by lane.
            let mut m_new = _mm256_max_ps(mx, m_old);
            let mut empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, _mm256_set1_ps(f32::NEG_INFINITY));
            let lanes = _mm256_movemask_ps(empty) & ((1 << w) - 1);
            if lanes != 0 {
                // Rare path: a column whose scores are all NaN or -inf. `max` skipped any NaN, so
                // look for one and poison that row's state (m = NaN) instead of calling it empty.
                let mut mv = [0.0f32; 8];
                _mm256_storeu_ps(mv.as_mut_ptr(), m_new);
                for (i, v) in mv.iter_mut().enumerate().take(w) {
                    if lanes & (1 << i) != 0 && (0..n).any(|j| (*s.add(j * ld + c0 + i)).is_nan()) {
                        *v = f32::NAN;
                    }
                }
                m_new = _mm256_loadu_ps(mv.as_ptr());
                empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, _mm256_set1_ps(f32::NEG_INFINITY));
            }
            // Rows that have seen nothing (m_new = -inf) keep their state: p = 0, alpha = 1.
            let base = _mm256_andnot_ps(empty, m_new);
            let a = _mm256_blendv_ps(exp8(_mm256_sub_ps(m_old, m_new)), _mm256_set1_ps(1.0), empty);
            let low = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(mn, base), _mm256_set1_ps(LO));
            let flush = _mm256_movemask_ps(low) & ((1 << w) - 1) != 0;
            let sum = match (w == 8, flush) {
                (true, true) => exp_cols::<false, true>(s.add(c0), ld, n, mask, base, empty),
                (true, false) => exp_cols::<false, false>(s.add(c0), ld, n, mask, base, empty),
                (false, true) => exp_cols::<true, true>(s.add(c0), ld, n, mask, base, empty),
                (false, false) => exp_cols::<true, false>(s.add(c0), ld, n, mask, base, empty),
            };
            let l_new = _mm256_fmadd_ps(ld8(l.add(c0), w, mask), a, sum);
            st8(m.add(c0), m_new, w, mask);
            st8(l.add(c0), l_new, w, mask);
            st8(alpha.add(c0), a, w, mask);
        }
        c0 += w;
    }
}

/// `s[j·ld] ← exp(s[j·ld] − base)` for the `n` keys `j` of one group of 8 columns (the lanes of
/// `mask` with `MASKED`, else all 8), 0 in the lanes of `empty`; returns the column sums.
///
/// Six keys per step, their exps stage by stage ([`exp8n_nonpos`]), and the lane mask resolved
/// at compile time (a run-time `w == 8` test branched twice per key). Measured on a 72 × 96 tile
/// of P1 on Zen 3: four keys per step took 0.83× the time of four exps written one after the
/// other with the run-time mask test. On Zen 4 (72 × 96 tile, best of runs, ns per score): 2
/// keys 0.33, 3 0.31, 4 0.30, 5 0.30, 6 0.28, 8 0.29, 12 0.34. Six keep more exp chains in
/// flight than four, although the compiler now keeps a few of their values on the stack; a tile
/// of 72 keys is 12 steps. Four against six in alternating runs: 0.302 against 0.287 at best,
/// and six faster in each of 4 pairs; P3 moved within its noise. The exps of a step are added
/// pairwise into one running sum: a running sum per key of the step left too few registers for
/// the exp chains and the compiler kept them on the stack (0.38 → 0.35 ns per score with four
/// keys, P3 about 1.5% faster, paired runs).
///
/// # Safety
/// The CPU supports AVX2 and FMA; `s` holds `n` rows (stride `ld`) of 8 floats, or of the lanes of
/// `mask` with `MASKED`. Without `FLUSH`, every `s − base` is `>= LO` or NaN (so no lane of
/// `empty` is set).
#[inline(always)]
unsafe fn exp_cols<const MASKED: bool, const FLUSH: bool>(
    s: *mut f32,
    ld: usize,
    n: usize,
    mask: __m256i,
    base: __m256,
    empty: __m256,
) -> __m256 {
    // SAFETY: the caller guarantees AVX2, FMA and the rows; masked lanes are neither read nor
    // written.
    unsafe {
        const KS: usize = 6;
        let mut sum = _mm256_setzero_ps();
        let mut j = 0;
        while j + KS <= n {
            let mut x = [base; KS];
            for (t, x) in x.iter_mut().enumerate() {
                let p = s.add((j + t) * ld);
                *x = _mm256_sub_ps(if MASKED { _mm256_maskload_ps(p, mask) } else { _mm256_loadu_ps(p) }, base);
            }
            let mut e = exp8n_nonpos::<KS, FLUSH>(x);
            for (t, e) in e.iter_mut().enumerate() {
                let p = s.add((j + t) * ld);
                if FLUSH {
                    *e = _mm256_andnot_ps(empty, *e);
                }
                if MASKED {
                    _mm256_maskstore_ps(p, mask, *e);
                } else {
                    _mm256_storeu_ps(p, *e);
                }
            }
            let (e01, e23, e45) = (_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3]), _mm256_add_ps(e[4], e[5]));
            sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(e01, e23), e45));
            j += KS;
        }
        while j < n {
            let p = s.add(j * ld);
            let x = if MASKED { _mm256_maskload_ps(p, mask) } else { _mm256_loadu_ps(p) };
            let e = _mm256_andnot_ps(empty, exp8_nonpos(_mm256_sub_ps(x, base)));
            if MASKED {
                _mm256_maskstore_ps(p, mask, e);
            } else {
                _mm256_storeu_ps(p, e);
            }
            sum = _mm256_add_ps(sum, e);
            j += 1;
        }
        sum
    }
}

/// [`softmax_cols`] for 1, 2 or 4 columns stored without a gap (`ld == rows`, a gathered or
/// single-head decode tile's GQA group): the `n × rows` scores are one run of floats, read
/// `8 / rows` keys per vector, so no lane idles (column by column, 4 of 8 lanes would, and
/// the exponentials would cost twice as much).
///
/// # Safety
/// The CPU supports AVX2 and FMA; `s` holds `n · rows` floats, and `m`, `l`, `alpha` hold
/// `rows` floats; `rows` is 1, 2 or 4.
#[inline(always)]
unsafe fn softmax_cols_packed(s: *mut f32, n: usize, rows: usize, m: *mut f32, l: *mut f32, alpha: *mut f32) {
    let len = n * rows;
    let full = len & !7;
    let tail = len - full;
    // (No closures here: they would not inherit the caller's target features, and every
    // intrinsic in them would become a call.)
    // SAFETY: the caller guarantees AVX2 and FMA; loads and stores touch the first `len` floats
    // of `s` (the tail masked to its `tail` lanes) and the first `rows` of the state.
    unsafe {
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let tail_mask = lane_mask(tail);
        let (mut mx, mut my) = (neg_inf, neg_inf);
        let mut i = 0;
        while i + 16 <= full {
            mx = _mm256_max_ps(_mm256_loadu_ps(s.add(i)), mx);
            my = _mm256_max_ps(_mm256_loadu_ps(s.add(i + 8)), my);
            i += 16;
        }
        if i < full {
            mx = _mm256_max_ps(_mm256_loadu_ps(s.add(i)), mx);
        }
        if tail > 0 {
            let t = _mm256_maskload_ps(s.add(full), tail_mask);
            my = _mm256_max_ps(_mm256_blendv_ps(neg_inf, t, _mm256_castsi256_ps(tail_mask)), my);
        }
        // Neither holds a NaN: `max(x, m)` keeps `m` where `x` is NaN.
        let mx = fold_max(_mm256_max_ps(my, mx), rows);
        let m_old = column_pattern(m, rows);
        let mut m_new = _mm256_max_ps(mx, m_old);
        let mut empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, neg_inf);
        if _mm256_movemask_ps(empty) != 0 {
            // Rare path, as in `softmax_cols`: a column of NaN and -inf poisons its row's state.
            let mut mv = [0.0f32; 8];
            _mm256_storeu_ps(mv.as_mut_ptr(), m_new);
            for (lane, v) in mv.iter_mut().enumerate() {
                let c = lane % rows;
                if *v == f32::NEG_INFINITY && (0..n).any(|j| (*s.add(j * rows + c)).is_nan()) {
                    *v = f32::NAN;
                }
            }
            m_new = _mm256_loadu_ps(mv.as_ptr());
            empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, neg_inf);
        }
        // Columns that have seen nothing (m_new = -inf) keep their state: p = 0, alpha = 1.
        let base = _mm256_andnot_ps(empty, m_new);
        let a = _mm256_blendv_ps(exp8(_mm256_sub_ps(m_old, m_new)), _mm256_set1_ps(1.0), empty);
        // Four vectors per step: independent exp chains side by side (see `exp_sum_with`).
        let mut sums = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= full {
            for (t, sum) in sums.iter_mut().enumerate() {
                let q = s.add(i + 8 * t);
                let e = _mm256_andnot_ps(empty, exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(q), base)));
                _mm256_storeu_ps(q, e);
                *sum = _mm256_add_ps(*sum, e);
            }
            i += 32;
        }
        while i < full {
            let e = _mm256_andnot_ps(empty, exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s.add(i)), base)));
            _mm256_storeu_ps(s.add(i), e);
            sums[0] = _mm256_add_ps(sums[0], e);
            i += 8;
        }
        if tail > 0 {
            let x = _mm256_maskload_ps(s.add(full), tail_mask);
            let e = _mm256_andnot_ps(empty, exp8_nonpos(_mm256_sub_ps(x, base)));
            let e = _mm256_and_ps(e, _mm256_castsi256_ps(tail_mask));
            _mm256_maskstore_ps(s.add(full), tail_mask, e);
            sums[1] = _mm256_add_ps(sums[1], e);
        }
        let sum = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
        let l_new = _mm256_fmadd_ps(column_pattern(l, rows), a, fold_add(sum, rows));
        let mut out = [[0.0f32; 8]; 3];
        _mm256_storeu_ps(out[0].as_mut_ptr(), m_new);
        _mm256_storeu_ps(out[1].as_mut_ptr(), l_new);
        _mm256_storeu_ps(out[2].as_mut_ptr(), a);
        core::ptr::copy_nonoverlapping(out[0].as_ptr(), m, rows);
        core::ptr::copy_nonoverlapping(out[1].as_ptr(), l, rows);
        core::ptr::copy_nonoverlapping(out[2].as_ptr(), alpha, rows);
    }
}

/// `v[i % rows]` in lane `i`.
///
/// # Safety
/// The CPU supports AVX; `v` holds `rows` floats.
#[inline(always)]
unsafe fn column_pattern(v: *const f32, rows: usize) -> __m256 {
    let mut x = [0.0f32; 8];
    for (i, x) in x.iter_mut().enumerate() {
        // SAFETY: `i % rows < rows` (the caller).
        *x = unsafe { *v.add(i % rows) };
    }
    // SAFETY: AVX (the caller); `x` holds 8 floats.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// The maximum of the lanes of `v` that hold the same column (lanes `i` and `i + rows`, for
/// `rows` 1, 2 or 4), in each of them.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn fold_max(v: __m256, rows: usize) -> __m256 {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        let mut v = _mm256_max_ps(v, _mm256_permute2f128_ps::<1>(v, v));
        if rows <= 2 {
            v = _mm256_max_ps(v, _mm256_permute_ps::<0b01_00_11_10>(v));
        }
        if rows == 1 {
            v = _mm256_max_ps(v, _mm256_permute_ps::<0b10_11_00_01>(v));
        }
        v
    }
}

/// [`fold_max`] with sums.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn fold_add(v: __m256, rows: usize) -> __m256 {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        let mut v = _mm256_add_ps(v, _mm256_permute2f128_ps::<1>(v, v));
        if rows <= 2 {
            v = _mm256_add_ps(v, _mm256_permute_ps::<0b01_00_11_10>(v));
        }
        if rows == 1 {
            v = _mm256_add_ps(v, _mm256_permute_ps::<0b10_11_00_01>(v));
        }
        v
    }
}

/// Loads the first `w` lanes at `p` (`mask` has exactly those lanes set), the others 0.
///
/// # Safety
/// The CPU supports AVX; `p..p + w` is readable.
#[inline(always)]
unsafe fn ld8(p: *const f32, w: usize, mask: __m256i) -> __m256 {
    // SAFETY: the caller guarantees AVX and `w` readable floats; the masked load reads no others.
    unsafe {
        if w == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    }
}

/// Stores the first `w` lanes of `v` at `p` (`mask` has exactly those lanes set).
///
/// # Safety
/// The CPU supports AVX; `p..p + w` is writable.
#[inline(always)]
unsafe fn st8(p: *mut f32, v: __m256, w: usize, mask: __m256i) {
    // SAFETY: the caller guarantees AVX and `w` writable floats; the masked store writes no others.
    unsafe {
        if w == 8 {
            _mm256_storeu_ps(p, v);
        } else {
            _mm256_maskstore_ps(p, mask, v);
        }
    }
}
