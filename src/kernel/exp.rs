//! `exp` for the softmax: the constants and the scalar form shared by every vector kernel.
//!
//! `exp(x) = 2ⁿ · eʳ` with `n = round(x·log₂e)` and `r = x − n·ln 2`, so `|r| ≤ ln 2 / 2`.
//! `n·ln 2` is subtracted in two steps (Cody–Waite): `LN2_HI` has 9 significant bits, so
//! `n·LN2_HI` is exact for `|n| ≤ 2⁸` even without FMA and only `LN2_LO` contributes rounding.
//! `eʳ ≈ 1 + r + r²·P(r)` with Cephes' degree-5 `P` (`expf.c`), which measures ≤ 2 ulp over
//! the whole finite range (see the sweep in `kernel::tests`). `2ⁿ` is applied by adding `n` to
//! the exponent field of `eʳ ∈ [0.70, 1.42]`, which is exact whenever the result is normal.
//!
//! Every kernel runs the same operation sequence, so the AVX2 lanes and [`exp_f32`] agree bit
//! for bit (both fuse their multiply-adds); the `wide` kernel rounds its products separately
//! when built without `+fma` and may differ in the last bit.

/// Below this, `exp(x) < f32::MIN_POSITIVE` and the result flushes to 0 (the largest such f32
/// boundary: `exp(LO)` is still normal). `-inf` takes this path too.
pub(crate) const LO: f32 = f32::from_bits(0xC2AE_AC4F); // -87.33654
/// Above this, `exp(x)` rounds to `+inf`.
pub(crate) const HI: f32 = f32::from_bits(0x42B1_7217); // 88.72283
/// `log₂ e`.
pub(crate) const LOG2E: f32 = core::f32::consts::LOG2_E;
/// `1.5 · 2²³`: adding it rounds a float of magnitude `< 2²²` to an integer (ties to even).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// The high part of `ln 2` (9 significant bits).
pub(crate) const LN2_HI: f32 = 355.0 / 512.0;
/// `ln 2 − LN2_HI`.
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// `P(r)` coefficients, highest degree first (Cephes' last one, 0.50000001201, rounds to 0.5).
pub(crate) const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// `exp(x)` for one lane, by exactly the operations the vector kernels use: `exp(-inf) = 0`,
/// results below `f32::MIN_POSITIVE` flush to 0, overflow gives `+inf`, NaN stays NaN.
#[inline]
#[cfg_attr(not(test), allow(dead_code))] // the lane-wise oracle of the vector kernels' tests
pub(crate) fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < LO {
        return 0.0;
    }
    if x > HI {
        return f32::INFINITY;
    }
    let nf = libm::fmaf(x, LOG2E, ROUND_MAGIC) - ROUND_MAGIC;
    let r = libm::fmaf(-nf, LN2_HI, x);
    let r = libm::fmaf(-nf, LN2_LO, r);
    let mut p = P[0];
    for &c in &P[1..] {
        p = libm::fmaf(p, r, c);
    }
    let y = libm::fmaf(p, r * r, r) + 1.0;
    // `nf` is an integer in [-126, 128] here, so the cast is exact.
    let n = nf as i32;
    f32::from_bits((y.to_bits() as i32).wrapping_add(n << 23) as u32)
}
