//! The f64 oracle of [`crate::sparse`]: sparse attention as dense attention with every unlisted
//! key masked, and the indexers' scores as the textbook double sum.

use alloc::vec::Vec;

use super::check::check_indexer;
use super::{compute, math, validate, Reference};
use crate::error::{Error, Operand};
use crate::options::AttentionOptions;
use crate::sparse::{AdaptiveTopK, Indexer, IndexerKind, SparseIndices, PAD};
use crate::tensor::Tensor;

/// [`sparse_attention`](crate::sparse::sparse_attention) in f64: [`attention`](super::attention)
/// with key `j` hidden from every row whose list does not name it. [`Reference::stats`] is `Some`.
pub fn sparse_attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    indices: &SparseIndices<'_>,
    opts: &AttentionOptions<'_>,
) -> Result<Reference, Error> {
    let dims = validate(q, k, v, opts, None)?;
    let (data, [batch, q_len, heads, slots]) = indices.raw();
    check_lists(data, [batch, q_len, heads, slots], &dims)?;
    let list = |b: usize, i: usize, kvh: usize| {
        let start = ((b * q_len + i) * heads + if heads == 1 { 0 } else { kvh }) * slots;
        &data[start..start + slots]
    };
    let listed =
        |b: usize, kvh: usize, i: usize, j: usize| list(b, i, kvh).iter().any(|&e| e != PAD && e as usize == j);
    let mut stats = super::Stats::default();
    let mut r = compute(q, k, v, opts, dims, Some(&listed), Some(&mut stats))?;
    r.stats = Some(stats);
    Ok(r)
}

/// The index lists' contract, checked again independently of `SparseIndices::validate`: the shape
/// `[batch, q_len, 1 or kv_heads, k]` against the call, then the lists in order; the first bad list
/// decides, and within it the smallest offending entry (a negative non-padding entry, else the
/// smallest repeated key, else the smallest entry `>= kv_len`).
fn check_lists(data: &[i32], [batch, q_len, heads, k]: [usize; 4], dims: &crate::Dims) -> Result<(), Error> {
    let mismatch = |dim, expected, found| Error::ShapeMismatch { operand: Operand::Indices, dim, expected, found };
    if batch != dims.batch {
        return Err(mismatch("batch", dims.batch, batch));
    }
    if q_len != dims.q_len {
        return Err(mismatch("q_len", dims.q_len, q_len));
    }
    if heads != 1 && heads != dims.kv_heads {
        return Err(mismatch("heads (1 or kv_heads)", dims.kv_heads, heads));
    }
    let len = batch
        .checked_mul(q_len)
        .and_then(|n| n.checked_mul(heads))
        .and_then(|n| n.checked_mul(k))
        .ok_or(Error::ShapeOverflow { operand: Operand::Indices })?;
    if data.len() != len {
        return Err(mismatch("batch * q_len * heads * k", len, data.len()));
    }
    if k == 0 {
        return Ok(());
    }
    let kv_len = dims.kv_len;
    for list in data.chunks_exact(k) {
        let mut counts = alloc::collections::BTreeMap::new();
        for &e in list.iter().filter(|&&e| e != PAD) {
            *counts.entry(e).or_insert(0usize) += 1;
        }
        let out_of_range = |e: i32| Error::IndexOutOfRange { index: e as i64, kv_len };
        if let Some((&e, _)) = counts.iter().find(|(&e, _)| e < 0) {
            return Err(out_of_range(e));
        }
        if let Some((&e, _)) = counts.iter().find(|(&e, &n)| (e as usize) < kv_len && n > 1) {
            return Err(Error::DuplicateIndex { index: e as usize });
        }
        if let Some((&e, _)) = counts.iter().find(|(&e, _)| e as usize >= kv_len) {
            return Err(out_of_range(e));
        }
    }
    Ok(())
}

fn elem(t: &Tensor<'_>, b: usize, s: usize, h: usize, d: usize) -> f64 {
    t.data.get_f32(t.layout.offset(b, s, h) + d) as f64
}

/// The indexer's scores `[batch, q_len, kv_len]` in f64, `-inf` where the mask hides a key.
pub fn indexer_scores(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &Indexer<'_>,
) -> Result<Vec<f64>, Error> {
    let d = check_indexer(q, k, w, indexer)?;
    // The defaults and the mask written out again, not taken from the code under test.
    let scale = match (indexer.scale, indexer.kind) {
        (Some(s), _) => s as f64,
        (None, IndexerKind::Lightning) => 1.0 / math::sqrt((d.dim * d.heads) as f64),
        (None, IndexerKind::Gated { .. }) => 1.0 / math::sqrt(d.dim as f64),
    };
    let sigmoid = |x: f64| 1.0 / (1.0 + math::exp(-x));
    // `batch` and `q_len` may be 0 and are multiplied first; a count beyond memory is an Error.
    let n = (d.batch * d.q_len).checked_mul(d.kv_len).filter(|&n| n <= isize::MAX as usize / 8);
    let bytes = n.map_or(usize::MAX, |n| n * 8);
    let mut out = Vec::new();
    n.and_then(|n| out.try_reserve_exact(n).ok()).ok_or(Error::AllocationFailed { operand: Operand::Output, bytes })?;
    out.resize(n.unwrap_or(0), f64::NEG_INFINITY);
    for b in 0..d.batch {
        for t in 0..d.q_len {
            let position = d.kv_len as i64 - d.q_len as i64 + t as i64;
            for s in (0..d.kv_len).filter(|&s| !indexer.causal || s as i64 <= position) {
                let mut score = 0.0;
                for h in 0..d.heads {
                    let dot: f64 = (0..d.dim).map(|e| elem(q, b, t, h, e) * elem(k, b, s, 0, e)).sum::<f64>() * scale;
                    let w = elem(w, b, t, 0, h);
                    score += match indexer.kind {
                        IndexerKind::Lightning => w * if dot < 0.0 { 0.0 } else { dot },
                        IndexerKind::Gated { bias } => sigmoid(w) * sigmoid(dot + bias[h] as f64),
                    };
                }
                out[(b * d.q_len + t) * d.kv_len + s] = score;
            }
        }
    }
    Ok(out)
}

/// GSA's `k_t` for each of the `rows` rows of `scores` (`[rows, kv_len]`, `-inf` where hidden)
/// before truncation and before the cap at the row's visible keys, in f64.
pub fn adaptive_k(scores: &[f64], rows: usize, kv_len: usize, cfg: &AdaptiveTopK) -> Vec<f64> {
    let variance: Vec<f64> = (0..rows)
        .map(|r| {
            let row = &scores[r * kv_len..(r + 1) * kv_len];
            let n = row.len();
            if n < 2 {
                return 0.0;
            }
            let z = |x: f64| if x == f64::NEG_INFINITY { 0.0 } else { x };
            let mean = row.iter().map(|&x| z(x)).sum::<f64>() / n as f64;
            row.iter().map(|&x| (z(x) - mean) * (z(x) - mean)).sum::<f64>() / (n - 1) as f64
        })
        .collect();
    let finite: Vec<f64> = variance.iter().copied().filter(|v| v.is_finite()).collect();
    let mean = if finite.is_empty() { 0.0 } else { finite.iter().sum::<f64>() / finite.len() as f64 };
    variance
        .iter()
        .map(|v| {
            let ratio = v / (mean + 1e-8);
            let ratio = if ratio.is_finite() { ratio } else { 1.0 };
            let k = cfg.k_base as f64 * (0.5 + 1.0 / (1.0 + ratio * cfg.temperature as f64));
            k.max(cfg.k_min as f64).min(cfg.k_max as f64)
        })
        .collect()
}
