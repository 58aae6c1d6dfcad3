//! The per-row and per-element quantities an error model of an f32 kernel needs, computed by the
//! reference alongside its result (see [`attention_with_stats`](super::attention_with_stats)).
//!
//! They describe the problem, not a kernel: how many keys each row sums, how large the dot
//! products and logits are, and how the softmax weights spread the values. The bound built from
//! them lives with the tests (`reference::error_model`).

use alloc::vec::Vec;

/// Quantities of one query row of one head.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowStats {
    /// `n`: visible keys with a finite score (the length of the row's sums).
    pub keys: usize,
    /// `max_j |scale| · Σ_e |q_e k_je|` over those keys (queries after RoPE): the scale of a
    /// score's dot-product rounding.
    pub dot_abs: f64,
    /// `max_j |s_j|` over those keys (final scores: softcap, ALiBi and bias included).
    pub score_abs: f64,
    /// The row maximum `m` (learned sink included); `-inf` when nothing is visible.
    pub max_logit: f64,
    /// `max_j slope · |pos - j|` (0 without ALiBi).
    pub alibi_abs: f64,
    /// `max_j |bias_j|` (0 without a bias).
    pub bias_abs: f64,
    /// The learned sink's softmax weight `p̂_sink` (0 without sinks).
    pub sink_weight: f64,
    /// `Σ_j p̂_j²` over the keys: `1/n` for a flat row, 1 for a one-hot row.
    pub weight_sq: f64,
    /// `sqrt(Σ_j p̂_j² Q_j)`, with `Q_j` the dot-product rounding scale of key `j` (see
    /// [`ElemStats::dot_spread`]).
    pub dot_weight: f64,
}

/// Quantities of one output element `(b, i, h, d)`, before the output gate unless stated.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ElemStats {
    /// The ungated output `o_d = Σ_j p̂_j v_jd`.
    pub ungated: f64,
    /// `Σ_j p̂_j |v_jd - o_d| + p̂_sink |o_d|`: how far the weights' errors can move `o_d`, per unit
    /// of relative weight error (to first order).
    pub spread: f64,
    /// `sqrt(Σ_j p̂_j² (v_jd - o_d)² + p̂_sink² o_d²)`: the same for independent weight errors.
    pub spread_rms: f64,
    /// `sqrt(Σ_j p̂_j² (v_jd - o_d)² Q_j)` with `Q_j = scale²·(Σ_e S_je² + head_dim·Σ_e x_je²)`,
    /// `x_je = q_e k_je` and `S_je` its running sums: the scale of the output error from
    /// independent roundings inside the dot products (the second term covers summation orders
    /// other than the sequential one, e.g. SIMD lanes).
    pub dot_spread: f64,
    /// `max_k |Σ_{j<=k} p̂_j v_jd|` in key order: the largest running sum of the P·V product.
    pub prefix: f64,
    /// `Σ_j p̂_j |v_jd|`.
    pub magnitude: f64,
    /// `max_j |v_jd|` over the row's keys.
    pub value_abs: f64,
    /// `∂(gated output)/∂o_d`: the gate value for a multiplicative gate, 1 otherwise.
    pub gain: f64,
}

/// Everything [`attention_with_stats`](super::attention_with_stats) reports besides the result.
///
/// **Not stable**: the quantities follow the error model of the tests and may change with it.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Per row, laid out like the LSE: `[batch, q_heads, q_len]`.
    pub rows: Vec<RowStats>,
    /// Per output element, laid out like the output: `[batch, q_len, q_heads, v_head_dim]`.
    pub elems: Vec<ElemStats>,
    /// The softcap `c`, if any.
    pub softcap: Option<f64>,
    /// Whether the queries were rotated (RoPE) before the dot products.
    pub rope: bool,
    /// Whether an output gate was applied.
    pub gated: bool,
}
