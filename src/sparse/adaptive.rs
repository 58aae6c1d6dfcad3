//! GSA's adaptive top-k: rows whose indexer scores vary less than the call's average keep more
//! keys (spec/GATING.md §6, `AdaptiveTopKSelector`, method "variance").

use alloc::vec;

use crate::error::Error;
use crate::sparse::indexer::{
    check_indexer, check_indices_out, for_each_row, probe_row_scratch, select_top, Indexer, RowOps,
};
use crate::tensor::Tensor;

/// The parameters of the variance rule
/// `k_t = min(⌊clamp(k_base · (0.5 + 1 / (1 + v_t · temperature)), k_min, k_max)⌋, visible_t)`,
/// where `v_t` is row `t`'s score variance divided by the mean variance of all rows of the call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveTopK {
    /// Keys of a row with average variance (before clamping: `k_base · 1.0`).
    pub k_base: usize,
    /// Fewest keys a row keeps (when it sees that many).
    pub k_min: usize,
    /// Most keys a row keeps; the index output holds `min(k_max, kv_len)` slots per row.
    pub k_max: usize,
    /// How strongly the variance moves `k_t`.
    pub temperature: f32,
}

impl AdaptiveTopK {
    /// GSA's defaults: `k_base` 2048, `k_min` 256, `k_max` 4096, temperature 1.
    pub fn gsa() -> Self {
        AdaptiveTopK { k_base: 2048, k_min: 256, k_max: 4096, temperature: 1.0 }
    }

    /// Slots per row of the index output for `kv_len` keys.
    pub fn width(&self, kv_len: usize) -> usize {
        self.k_max.min(kv_len)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |reason| Err(Error::InvalidOption { option: "adaptive top-k", reason });
        if self.k_min > self.k_max {
            return bad("k_min must not exceed k_max");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be finite and >= 0");
        }
        Ok(())
    }

    /// `k_t` before truncation and before the cap at the visible keys, for a row whose
    /// variance is `ratio` times the call's mean (a non-finite ratio counts as 1, the mean).
    pub fn real_k(&self, ratio: f64) -> f64 {
        let ratio = if ratio.is_finite() { ratio } else { 1.0 };
        let k = self.k_base as f64 * (0.5 + 1.0 / (1.0 + ratio * self.temperature as f64));
        k.clamp(self.k_min as f64, self.k_max as f64)
    }
}

/// The unbiased variance of a row of scores over all `kv_len` keys, hidden keys counting as 0
/// (GSA fills them with 0 before `var`); 0 for fewer than two keys.
pub(crate) fn row_variance(scores: &[f32]) -> f64 {
    let n = scores.len();
    if n < 2 {
        return 0.0;
    }
    let val = |x: f32| if x == f32::NEG_INFINITY { 0.0 } else { x as f64 };
    let mean = scores.iter().map(|&x| val(x)).sum::<f64>() / n as f64;
    scores.iter().map(|&x| (val(x) - mean) * (val(x) - mean)).sum::<f64>() / (n - 1) as f64
}

/// The mean of the finite entries (0 when there are none).
pub(crate) fn finite_mean(x: &[f64]) -> f64 {
    let (sum, n) = x.iter().filter(|v| v.is_finite()).fold((0.0, 0usize), |(s, n), &v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Chooses each row's best `k_t` keys by GSA's variance rule into `out`
/// (`[batch, q_len, cfg.width(kv_len)]`, best first, [`PAD`](crate::sparse::PAD) after the
/// `k_t`-th), and writes `k_t` into `counts` (`[batch, q_len]`) when given.
///
/// The mean variance is taken over the call's rows, so the indexer runs twice (once for the
/// variances, once to select) instead of keeping the `L × L` scores. Where GSA's PyTorch code
/// is silent or fragile this function decides: variances and `k_t` are computed in f64 (so a
/// `k_t` right at an integer may truncate one lower or higher than PyTorch's f32); a row of
/// fewer than two keys has variance 0 (PyTorch: NaN); a row whose variance is not finite (NaN
/// inputs) is left out of the mean and treated as average (in PyTorch it would make every
/// row's `k_t` NaN). Ties and NaN scores rank as in [`top_k_indices`](crate::sparse::top_k_indices).
pub fn adaptive_top_k_indices(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &Indexer<'_>,
    cfg: &AdaptiveTopK,
    out: &mut [i32],
    counts: Option<&mut [usize]>,
) -> Result<(), Error> {
    cfg.validate()?;
    let d = check_indexer(q, k, w, indexer)?;
    let width = cfg.width(d.kv_len);
    check_indices_out(&d, width, out.len())?;
    if let Some(c) = counts.as_deref() {
        if c.len() != d.rows() {
            return Err(Error::ShapeMismatch {
                operand: crate::Operand::Output,
                dim: "counts: batch * q_len",
                expected: d.rows(),
                found: c.len(),
            });
        }
    }
    let isa = indexer.resolved_isa()?;
    if width == 0 {
        // No key to keep (kv_len or k_max is 0): every k_t is 0, no variance is needed.
        if let Some(c) = counts {
            c.fill(0);
        }
        return Ok(());
    }
    probe_row_scratch(&d)?;
    let ops = RowOps { q, k, w, indexer, dims: d, isa };
    let mut variance = vec![0.0f64; d.rows()];
    for_each_row(&ops, &mut variance, 1, &|_, scores, _, v| v[0] = row_variance(scores));
    let mean = finite_mean(&variance);
    let k_of = |row: usize| {
        let visible = d.visible(indexer, row % d.q_len);
        (cfg.real_k(variance[row] / (mean + 1e-8)) as usize).min(visible)
    };
    for_each_row(&ops, out, width, &|row, scores, spare, dst| {
        let visible = d.visible(indexer, row % d.q_len);
        select_top(&scores[..visible], k_of(row), spare, dst);
    });
    if let Some(c) = counts {
        for (row, c) in c.iter_mut().enumerate() {
            *c = k_of(row);
        }
    }
    Ok(())
}
