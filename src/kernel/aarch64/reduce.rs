//! The softmax's element-wise passes: `exp(x − max)` with its sum, `max` and `scale`, and the
//! online-softmax step of transposed scores (`softmax_cols`) built from them.

use core::arch::aarch64::*;

use super::convert::{load_partial, store_partial};
use crate::kernel::exp::{HI, LN2_HI, LN2_LO, LO, LOG2E, P, ROUND_MAGIC};

/// `exp` of 4 lanes: [`crate::kernel::exp::exp_f32`] operation for operation (every
/// multiply-add fused), so the two agree bit for bit.
#[inline(always)]
pub(super) fn exp4(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is baseline wherever this module is compiled; registers only.
    unsafe {
        let over = vcgtq_f32(x, vdupq_n_f32(HI));
        vbslq_f32(over, vdupq_n_f32(f32::INFINITY), exp4_nonpos(x))
    }
}

/// [`exp4`] without the overflow fix-up: equal to it wherever `x <= HI` or `x` is NaN (every
/// softmax argument `s − max` is `<= 0` or NaN).
#[inline(always)]
fn exp4_nonpos(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is baseline wherever this module is compiled; registers only.
    unsafe {
        let magic = vdupq_n_f32(ROUND_MAGIC);
        let nf = vsubq_f32(vfmaq_f32(magic, x, vdupq_n_f32(LOG2E)), magic);
        // `vfmsq_f32(a, b, c)` is `a − b·c` with one rounding (exp_f32's `fmaf(-nf, c, a)`).
        let r = vfmsq_f32(x, nf, vdupq_n_f32(LN2_HI));
        let r = vfmsq_f32(r, nf, vdupq_n_f32(LN2_LO));
        let mut p = vdupq_n_f32(P[0]);
        for &c in &P[1..] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        let y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
        // `nf` is integral, so truncation is exact; NaN converts to 0 (AArch64 FCVTZS), which
        // leaves a NaN `y` NaN.
        let n = vshlq_n_s32::<23>(vcvtq_s32_f32(nf));
        let e = vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(y), n));
        // Ordered compares are false for NaN, so the fix-up does not touch a NaN lane.
        let under = vcltq_f32(x, vdupq_n_f32(LO));
        vbslq_f32(under, vdupq_n_f32(0.0), e)
    }
}

/// The softmax's `exp` for arguments `<= 0`: bit for bit [`exp4_nonpos`] there, with `2ⁿ`
/// applied by the last FMA as on x86 (`fma(y − 1, 2ⁿ, 2ⁿ)`, `2ⁿ` the bits of the rounding FMA
/// shifted by 23: no conversion, no integer add, no `+ 1`). Without `FLUSH` the lanes below
/// [`LO`] are not set to 0: only for callers that know every argument is `>= LO` or NaN.
#[inline(always)]
pub(super) fn exp4_softmax<const FLUSH: bool>(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is baseline wherever this module is compiled; registers only.
    unsafe {
        // `ROUND_MAGIC + 127` leaves `n + 127` in the low bits of `t`: the exponent field of 2ⁿ.
        let magic = vdupq_n_f32(ROUND_MAGIC + 127.0);
        let t = vfmaq_f32(magic, x, vdupq_n_f32(LOG2E));
        let scale = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vreinterpretq_s32_f32(t)));
        let nf = vsubq_f32(t, magic);
        let r = vfmsq_f32(x, nf, vdupq_n_f32(LN2_HI));
        let r = vfmsq_f32(r, nf, vdupq_n_f32(LN2_LO));
        let mut p = vdupq_n_f32(P[0]);
        for &c in &P[1..] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        // A NaN lane stays NaN through `y`, whatever bits its `scale` holds.
        let e = vfmaq_f32(scale, vfmaq_f32(r, p, vmulq_f32(r, r)), scale);
        if FLUSH {
            vbslq_f32(vcltq_f32(x, vdupq_n_f32(LO)), vdupq_n_f32(0.0), e)
        } else {
            e
        }
    }
}

/// See [`crate::kernel::Kernel::exp_sum`]. Four vectors per step: the exp chains are long
/// (about 16 dependent operations), so independent ones side by side keep both pipes busy.
#[inline(always)]
pub(super) fn exp_sum(x: &mut [f32], max: f32) -> f32 {
    let len = x.len();
    let p = x.as_mut_ptr();
    // SAFETY: every access below is inside `x`: the steps cover `i + 16 <= len`, then
    // `i + 4 <= len`, then a partial tail of `len − i < 4` floats.
    unsafe {
        let m = vdupq_n_f32(max);
        let zero = vdupq_n_f32(0.0);
        let mut acc = [zero; 4];
        let mut i = 0;
        while i + 16 <= len {
            let e: [float32x4_t; 4] = core::array::from_fn(|t| exp4(vsubq_f32(vld1q_f32(p.add(i + 4 * t)), m)));
            for (t, e) in e.iter().enumerate() {
                vst1q_f32(p.add(i + 4 * t), *e);
                acc[t] = vaddq_f32(acc[t], *e);
            }
            i += 16;
        }
        while i + 4 <= len {
            let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), m));
            vst1q_f32(p.add(i), e);
            acc[0] = vaddq_f32(acc[0], e);
            i += 4;
        }
        let mut sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
        if i < len {
            let w = len - i;
            let e = exp4(vsubq_f32(load_partial(p.add(i), w), m));
            store_partial(p.add(i), e, w);
            let mut lanes = [0.0f32; 4];
            vst1q_f32(lanes.as_mut_ptr(), e);
            sum += lanes[..w].iter().sum::<f32>();
        }
        sum
    }
}

/// See [`crate::kernel::Kernel::max`] (`FMAX` propagates NaN, which the contract allows).
#[inline(always)]
pub(super) fn max(x: &[f32]) -> f32 {
    let mut chunks = x.chunks_exact(8);
    // SAFETY: each chunk holds exactly 8 floats; NEON is baseline.
    let m = unsafe {
        let (mut m0, mut m1) = (vdupq_n_f32(f32::NEG_INFINITY), vdupq_n_f32(f32::NEG_INFINITY));
        for chunk in &mut chunks {
            m0 = vmaxq_f32(m0, vld1q_f32(chunk.as_ptr()));
            m1 = vmaxq_f32(m1, vld1q_f32(chunk.as_ptr().add(4)));
        }
        vmaxvq_f32(vmaxq_f32(m0, m1))
    };
    chunks.remainder().iter().fold(m, |m, &v| m.max(v))
}

/// See [`crate::kernel::Kernel::scale`].
#[inline(always)]
pub(super) fn scale(x: &mut [f32], alpha: f32) {
    let mut chunks = x.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr();
        // SAFETY: `chunk` holds exactly 4 floats.
        unsafe { vst1q_f32(p, vmulq_n_f32(vld1q_f32(p), alpha)) };
    }
    for v in chunks.into_remainder() {
        *v *= alpha;
    }
}

/// Loads the first `w <= 4` floats at `p`, the other lanes 0.
///
/// # Safety
/// `p..p + w` is readable.
#[inline(always)]
unsafe fn ld4(p: *const f32, w: usize) -> float32x4_t {
    // SAFETY: the caller guarantees `w` readable floats.
    unsafe {
        if w == 4 {
            vld1q_f32(p)
        } else {
            load_partial(p, w)
        }
    }
}

/// Stores the first `w <= 4` lanes of `v` at `p`.
///
/// # Safety
/// `p..p + w` is writable.
#[inline(always)]
unsafe fn st4(p: *mut f32, v: float32x4_t, w: usize) {
    // SAFETY: the caller guarantees `w` writable floats.
    unsafe {
        if w == 4 {
            vst1q_f32(p, v)
        } else {
            store_partial(p, v, w)
        }
    }
}

/// See [`crate::kernel::Kernel::softmax_cols`].
///
/// Four rows (columns of `s`) per step, all vertical: one pass of `max` and `min` down the keys,
/// then one of `exp` with the sums, then `alpha`, `l` and `m` as one vector each; no horizontal
/// reduction. The same algorithm as the AVX2 kernel's: the column maxima skip NaN (`FMAXNM`), a
/// column whose scores are all NaN or `-inf` is then looked at again, and columns whose
/// arguments all lie above [`LO`] skip the flush to 0 ([`exp4_softmax`]). Under llvm-mca 19
/// (Neoverse-N1 / V1 models) a 4-key step of that `exp` pass takes 55.0 / 51.5 cycles, against
/// 58.5 / 54.0 with [`exp4_nonpos`] and the flush (91 instructions against 113).
///
/// # Safety
/// `s` holds `n` rows of `rows` floats with stride `ld` (in the sense of
/// [`crate::kernel::bounds::assert_fits`]), and `m`, `l`, `alpha` hold `rows` floats.
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
    let mut c0 = 0;
    while c0 < rows {
        let w = (rows - c0).min(4);
        // SAFETY: every access is to columns `c0..c0 + w` of rows `j < n` of `s`, or to entries
        // `c0..c0 + w` of the state; `ld4`/`st4` touch exactly `w` floats.
        unsafe {
            let neg_inf = vdupq_n_f32(f32::NEG_INFINITY);
            let m_old = ld4(m.add(c0), w);
            let (mut mx, mut my) = (neg_inf, neg_inf);
            let (mut nx, mut ny) = (vdupq_n_f32(f32::INFINITY), vdupq_n_f32(f32::INFINITY));
            let mut j = 0;
            while j + 2 <= n {
                let (a, b) = (ld4(s.add(j * ld + c0), w), ld4(s.add((j + 1) * ld + c0), w));
                (mx, my) = (vmaxnmq_f32(a, mx), vmaxnmq_f32(b, my));
                (nx, ny) = (vminnmq_f32(a, nx), vminnmq_f32(b, ny));
                j += 2;
            }
            if j < n {
                let a = ld4(s.add(j * ld + c0), w);
                (mx, nx) = (vmaxnmq_f32(a, mx), vminnmq_f32(a, nx));
            }
            // None holds a NaN (`FMAXNM`, `FMINNM` return the number), so this `FMAX` is NaN
            // only where the state already is.
            let (mx, mn) = (vmaxnmq_f32(my, mx), vminnmq_f32(ny, nx));
            let mut m_new = vmaxq_f32(mx, m_old);
            let mut empty = vceqq_f32(m_new, neg_inf);
            let mut flags = [0u32; 4];
            vst1q_u32(flags.as_mut_ptr(), empty);
            if flags[..w].iter().any(|&f| f != 0) {
                // Rare path: a column whose scores are all NaN or -inf. The maxima skipped any
                // NaN, so look for one and poison that row's state (m = NaN) instead of calling
                // it empty.
                let mut mv = [0.0f32; 4];
                vst1q_f32(mv.as_mut_ptr(), m_new);
                for (i, v) in mv.iter_mut().enumerate().take(w) {
                    if flags[i] != 0 && (0..n).any(|j| (*s.add(j * ld + c0 + i)).is_nan()) {
                        *v = f32::NAN;
                    }
                }
                m_new = vld1q_f32(mv.as_ptr());
                empty = vceqq_f32(m_new, neg_inf);
            }
            // Rows that have seen nothing (m_new = -inf) keep their state: p = 0, alpha = 1.
            let zero = vdupq_n_f32(0.0);
            let base = vbslq_f32(empty, zero, m_new);
            let a = vbslq_f32(empty, vdupq_n_f32(1.0), exp4(vsubq_f32(m_old, m_new)));
            // No flush to 0 where every argument of the `w` columns is `>= LO` (then no column is
            // empty either): every tile but the mask's boundary tiles.
            let mut low = [0u32; 4];
            vst1q_u32(low.as_mut_ptr(), vcltq_f32(vsubq_f32(mn, base), vdupq_n_f32(LO)));
            let sum = if low[..w].iter().any(|&f| f != 0) {
                exp_cols::<true>(s.add(c0), ld, n, w, base, empty)
            } else {
                exp_cols::<false>(s.add(c0), ld, n, w, base, empty)
            };
            let l_new = vfmaq_f32(sum, ld4(l.add(c0), w), a);
            st4(m.add(c0), m_new, w);
            st4(l.add(c0), l_new, w);
            st4(alpha.add(c0), a, w);
        }
        c0 += w;
    }
}

/// `s[j·ld] ← exp(s[j·ld] − base)` for the `n` keys `j` of `w <= 4` columns, 0 in the lanes of
/// `empty` with `FLUSH`; returns the column sums. Four keys per step: independent exp chains
/// side by side (see `exp_sum`).
///
/// # Safety
/// `s` holds `n` rows (stride `ld`) of `w` floats. Without `FLUSH`, every `s − base` is `>= LO`
/// or NaN (so no lane of `empty` is set).
#[inline(always)]
unsafe fn exp_cols<const FLUSH: bool>(
    s: *mut f32,
    ld: usize,
    n: usize,
    w: usize,
    base: float32x4_t,
    empty: uint32x4_t,
) -> float32x4_t {
    // SAFETY: the caller guarantees the rows; `ld4`/`st4` touch exactly `w` floats of each.
    unsafe {
        let zero = vdupq_n_f32(0.0);
        let e = |p: *mut f32| {
            let e = exp4_softmax::<FLUSH>(vsubq_f32(ld4(p, w), base));
            if FLUSH {
                vbslq_f32(empty, zero, e)
            } else {
                e
            }
        };
        let mut sums = [zero; 4];
        let mut j = 0;
        while j + 4 <= n {
            let ptr: [*mut f32; 4] = core::array::from_fn(|t| s.add((j + t) * ld));
            let e: [float32x4_t; 4] = core::array::from_fn(|t| e(ptr[t]));
            for t in 0..4 {
                st4(ptr[t], e[t], w);
                sums[t] = vaddq_f32(sums[t], e[t]);
            }
            j += 4;
        }
        while j < n {
            let p0 = s.add(j * ld);
            let e0 = e(p0);
            st4(p0, e0, w);
            sums[0] = vaddq_f32(sums[0], e0);
            j += 1;
        }
        vaddq_f32(vaddq_f32(sums[0], sums[1]), vaddq_f32(sums[2], sums[3]))
    }
}
