//! The error model: how far an f32 attention kernel may be from the f64 reference, per output
//! element and per LSE entry, as a function of the problem (see [`bounds`]).
//!
//! The crate's own tests, its fuzz targets and the Python package's `assert_attention_close`
//! check the kernels with it; a kernel author can check a kernel of their own the same way:
//! ```
//! use gated_attention::reference::{attention_with_stats, error_model};
//! use gated_attention::{attention, AttentionOptions, DType, Tensor, TensorMut};
//! let q: Vec<f32> = (0..2 * 4 * 8).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
//! let kv: Vec<f32> = (0..2 * 6 * 8).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
//! // batch 1, 4 queries, 6 keys, 2 heads, head_dim 8
//! let (q, k, v) = (Tensor::bshd(&q[..], 1, 4, 2, 8), Tensor::bshd(&kv[..], 1, 6, 2, 8), Tensor::bshd(&kv[..], 1, 6, 2, 8));
//! let opts = AttentionOptions::new().causal();
//! let mut out = vec![0.0f32; 4 * 2 * 8];
//! attention(&q, &k, &v, TensorMut::bshd(&mut out[..], 1, 4, 2, 8), None, &opts)?;
//! let r = attention_with_stats(&q, &k, &v, &opts)?;
//! let bounds = error_model::bounds(&r, DType::F32).expect("attention_with_stats keeps its stats");
//! for ((&got, &want), &bound) in out.iter().zip(&r.out).zip(&bounds.out) {
//!     assert!((got as f64 - want).abs() <= bound);
//! }
//! # Ok::<(), gated_attention::Error>(())
//! ```

use alloc::vec;
use alloc::vec::Vec;

use super::math;
use super::{ElemStats, Reference, RowStats, Stats};
use crate::DType;

/// Unit roundoff of f32.
pub const U: f64 = f32::EPSILON as f64 / 2.0;

/// Confidence multiplier of the probabilistic terms: an error term that is a sum of independent,
/// mean-zero rounding errors `δ_k` with `|δ_k| <= a_k` exceeds `LAMBDA · sqrt(Σ a_k²)` with
/// probability at most `2·exp(-LAMBDA²/2) ≈ 3e-8` (Hoeffding; Higham & Mary 2019, "A new approach
/// to probabilistic rounding error analysis").
pub const LAMBDA: f64 = 6.0;

/// `γ(k)`: relative error of a length-`k` f32 recursive sum, `k·u` in the worst case and
/// `LAMBDA·sqrt(k)·u` with high probability; the smaller of the two.
pub fn gamma(k: usize) -> f64 {
    let k = k.max(1) as f64;
    U * k.min(LAMBDA * math::sqrt(k))
}

/// Error bounds for every output element and every LSE entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// One per output element, contiguous `[batch, q_len, q_heads, v_head_dim]` like
    /// [`Reference::out`].
    pub out: Vec<f64>,
    /// One per LSE entry, `[batch, q_heads, q_len]` like [`Reference::lse`].
    pub lse: Vec<f64>,
}

/// The error model of an f32 kernel against the f64 reference `r`, for outputs stored as
/// `out_dtype`; `None` when `r` carries no [`Stats`] (it must come from
/// [`attention_with_stats`](super::attention_with_stats)).
///
/// Derivation (first order in `u = 2⁻²⁴`; `n` = the row's visible keys, `p̂_j` its softmax weights,
/// `o_d` the ungated output; every quantity named here is a field of [`RowStats`]/[`ElemStats`]):
///
/// 1. **Scores.** Each f32 score `s_j` is off by at most `δ = (γ(head_dim) + 2u)·dot_abs + u·r`:
///    the length-`head_dim` dot product and the rounded scale (`dot_abs = max_j |scale|·Σ_e|q_e
///    k_je|`), and `r = 4·(score_abs + |m|) + 2·alibi_abs (+ 8·dot_abs with RoPE: the f32 rotation
///    and its f32 tables) (+ 6c with softcap c)` for the single roundings after it (scale, tanh,
///    ALiBi product, bias add, `s − m`). tanh's derivative is at most 1, so the dot error passes
///    through the softcap undamped.
/// 2. **Weights.** A weight off by a factor `e^ε_j` moves `o_d` by `Σ_j p̂_j ε_j (v_jd − o_d)` to
///    first order (the sink counts as a key with value 0). Worst case: `expm1(2δ)·spread`. With
///    every rounding of step 1 independent (different numbers, different keys), the same sum is a
///    sum of independent terms: Hoeffding bounds it by `LAMBDA·u·(dot_spread + r·spread_rms)`,
///    where `dot_spread` weighs each key's dot-product rounding scale `Q_j` (running sums, see
///    [`ElemStats::dot_spread`]). `exp` costs at most 2 ulp (`4u`, measured; `kernel::exp`), a
///    deterministic function of its argument, so that part stays worst case. Hence
///    `T_w = min(expm1(2δ)·spread, LAMBDA·u·(dot_spread + r·spread_rms)·(1 + δ)) + expm1(8u)·spread`.
/// 3. **P·V sum.** `Σ_j p_j v_jd` is accumulated in key order (restarted per split, rescaled per
///    tile); each step rounds by at most `u·|running sum|` and the running sums are at most
///    `2·prefix` (a restarted chunk's sum is a difference of two prefixes). Worst case
///    `γ(n+1)·magnitude`; with independent roundings `LAMBDA·u·(sqrt(n)·2·prefix + magnitude)`
///    (the second term for the products). `T_s` is the smaller.
/// 4. **Denominator and normalisation.** `l = Σ p_j` is a sum of positive terms: relative
///    `γ(n+1)`; the division and the final conversion to f32 add `2u`. `T_l = (γ(n+1) + 2u)·|o_d|`.
///    Weights below `f32::MIN_POSITIVE` flush to 0: `T_u = 2n·MIN_POSITIVE·value_abs`.
/// 5. **Output gate.** Multiplies the pre-gate error by `gain` and adds `8u·(|out| + |o_d|)` for
///    the f32 activation and product.
/// 6. **Storage.** An f16/bf16 output adds half an ulp: `u_s·|out|` (`u_s = 2⁻¹¹` for f16, `2⁻⁸`
///    for bf16) plus half the smallest subnormal.
///
/// The pre-gate total `T_w + T_s + T_l + T_u` is capped at `2·value_abs` (an output is a convex
/// combination of the values, shrunk by the sink), and a floor of `(head_dim + n + 4)` times
/// `f32::MIN_POSITIVE` covers subnormal intermediates.
///
/// LSE `= m + ln l`: `min(expm1(δ), LAMBDA·u·(dot_weight + r·sqrt(weight_sq))·(1 + δ)) + 4u` from the scores,
/// `γ(n+1)` from `l`, `4u·(2|lse| + |m| + 1)` from the log and the sum.
///
/// With unit-magnitude inputs (q, k in [-2, 2), v in [-1, 1), head_dim 64, 4 rows × 8 heads) the
/// output bounds at 32768 keys have median 2.1e-6 and maximum 7.1e-6 (`tests/mutations.rs` prints
/// them); the fixed `2e-5` they replace is 3–10× larger, and one dropped key at that length moves
/// an output by about 1e-5 for a key of average weight.
pub fn bounds(r: &Reference, out_dtype: DType) -> Option<Bounds> {
    let st: &Stats = r.stats.as_ref()?;
    let d = &r.dims;
    let (u_s, abs_s) = match out_dtype {
        DType::F32 => (0.0, 0.0),
        // Half an ulp relative (2⁻¹¹, 2⁻⁸), and half the smallest subnormal (2⁻²⁵, 2⁻¹³⁴).
        DType::F16 => (1.0 / 2048.0, f64::from_bits(0x3E60_0000_0000_0000)),
        DType::BF16 => (1.0 / 256.0, f64::from_bits(0x3790_0000_0000_0000)),
    };
    let mut out = vec![0.0; r.out.len()];
    let mut lse = vec![0.0; r.lse.len()];
    for b in 0..d.batch {
        for h in 0..d.q_heads {
            for i in 0..d.q_len {
                let ri = (b * d.q_heads + h) * d.q_len + i;
                let row: &RowStats = &st.rows[ri];
                let n = row.keys;
                let m = if row.max_logit.is_finite() { row.max_logit.abs() } else { 0.0 };
                // Roundings after the dot product, per key: scale, softcap, ALiBi, bias, s - m.
                let mut r_max = 4.0 * (row.score_abs + m) + 2.0 * row.alibi_abs;
                if st.rope {
                    r_max += 8.0 * row.dot_abs;
                }
                if let Some(c) = st.softcap {
                    r_max += 6.0 * c;
                }
                let delta = (gamma(d.head_dim) + 2.0 * U) * row.dot_abs + U * r_max;
                let e_worst = math::exp_m1(2.0 * delta);
                let e_det = math::exp_m1(8.0 * U);
                let floor = f32::MIN_POSITIVE as f64 * (d.head_dim + n + 4) as f64;
                let g_n = gamma(n + 1);
                let rl = r.lse[ri];
                lse[ri] = math::exp_m1(delta)
                    .min(LAMBDA * U * (row.dot_weight + r_max * math::sqrt(row.weight_sq)) * (1.0 + delta))
                    + 4.0 * U
                    + g_n
                    + 4.0 * U * (2.0 * rl.abs() + m + 1.0)
                    + floor;
                for e in 0..d.v_head_dim {
                    let oi = ((b * d.q_len + i) * d.q_heads + h) * d.v_head_dim + e;
                    let x: &ElemStats = &st.elems[oi];
                    let t_w = (e_worst * x.spread)
                        .min(LAMBDA * U * (x.dot_spread + r_max * x.spread_rms) * (1.0 + delta))
                        + e_det * x.spread;
                    let t_s =
                        (g_n * x.magnitude).min(LAMBDA * U * (math::sqrt(n as f64) * 2.0 * x.prefix + x.magnitude));
                    let t_l = (g_n + 2.0 * U) * x.ungated.abs();
                    let t_u = 2.0 * n as f64 * f32::MIN_POSITIVE as f64 * x.value_abs;
                    let pre = (t_w + t_s + t_l + t_u).min(2.0 * x.value_abs) + floor;
                    let gated = r.out[oi].abs();
                    let mut t = if st.gated { x.gain.abs() * pre + 8.0 * U * (gated + x.ungated.abs()) } else { pre };
                    t += u_s * (t + gated) + abs_s;
                    out[oi] = t;
                }
            }
        }
    }
    Some(Bounds { out, lse })
}
