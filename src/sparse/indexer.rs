//! Indexers: a cheap score per (query, key) whose top entries choose the keys sparse attention
//! reads (spec/GATING.md §5 DeepSeek-V3.2's lightning indexer, §6 GSA's gated indexer).
//!
//! Scores are computed one query row at a time into `O(kv_len)` scratch, so choosing the keys
//! never materialises an `L × L` matrix (unless the caller asks for it with [`indexer_scores`]).

use crate::element::{Element, Elems};
use crate::error::{Error, Operand};
use crate::exec::{for_each_unit, Workers};
use crate::kernel::{dispatch, Isa, Kernel, KernelVisitor};
use crate::sink::SharedOut;
use crate::sparse::indices::PAD;
use crate::tensor::Tensor;

/// How the per-head products `x(t, s, h) = scale · q(t, h) · k(s)` become one score.
#[derive(Clone, Copy, Debug)]
pub enum IndexerKind<'a> {
    /// DeepSeek-V3.2's lightning indexer: `I(t, s) = Σ_h w(t, h) · ReLU(x(t, s, h))`, with
    /// `w` the `weights_proj` output as it is and a default scale `1/√(d_I · H_I)` (DeepSeek
    /// folds `H_I^-½` into `w` and `d_I^-½` into the query's quantisation scale).
    Lightning,
    /// GSA's gated indexer: `I(t, s) = Σ_h σ(w(t, h)) · σ(x(t, s, h) + bias(h))`, with `w` the
    /// weight logits, one bias per indexer head and a default scale `1/√d_I`.
    Gated {
        /// `[H_I]` biases inside the per-head sigmoid.
        bias: &'a [f32],
    },
}

/// An indexer: its kind, scale and mask.
///
/// The mask is causal or none. Causal queries are aligned bottom-right like
/// [`AttentionOptions`](crate::AttentionOptions)'s default: query row `t` of `S` against `T` keys
/// sits at position `T − S + t` and sees keys up to it (GSA masks only when `S == T`, where the
/// two agree; DeepSeek's prefill and decode masks are this one).
#[derive(Clone, Copy, Debug)]
pub struct Indexer<'a> {
    /// The scoring rule.
    pub kind: IndexerKind<'a>,
    /// The factor on `q · k`; `None` for the kind's default.
    pub scale: Option<f32>,
    /// Hide the keys after each query's position.
    pub causal: bool,
    /// The ISA whose kernel computes the scores; `None` chooses automatically, as
    /// [`AttentionOptions::isa`](crate::AttentionOptions::isa) does (see
    /// [`Indexer::resolved_isa`]).
    pub isa: Option<Isa>,
}

impl<'a> Indexer<'a> {
    /// DeepSeek-V3.2's lightning indexer, unmasked, default scale.
    pub fn lightning() -> Self {
        Indexer { kind: IndexerKind::Lightning, scale: None, causal: false, isa: None }
    }

    /// GSA's gated indexer with `bias` (`[H_I]`), unmasked, default scale.
    pub fn gated(bias: &'a [f32]) -> Self {
        Indexer { kind: IndexerKind::Gated { bias }, scale: None, causal: false, isa: None }
    }

    /// The same indexer with a causal mask.
    pub fn causal(self) -> Self {
        Indexer { causal: true, ..self }
    }

    /// The same indexer with `scale` on `q · k` (finite and > 0).
    pub fn scale(self, scale: f32) -> Self {
        Indexer { scale: Some(scale), ..self }
    }

    /// The same indexer on `isa`'s kernel.
    pub fn isa(self, isa: Isa) -> Self {
        Indexer { isa: Some(isa), ..self }
    }

    /// The ISA an indexer call ([`indexer_scores`], [`top_k_indices`],
    /// [`adaptive_top_k_indices`](crate::sparse::adaptive_top_k_indices)) runs:
    /// [`Isa::resolve`] of [`Indexer::isa`], with the errors and the `GATED_ATTENTION_ISA` rule of
    /// [`AttentionOptions::resolved_isa`](crate::AttentionOptions::resolved_isa).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] with `option: "isa"`, then `"GATED_ATTENTION_ISA"`.
    pub fn resolved_isa(&self) -> Result<Isa, Error> {
        Isa::resolve(self.isa)
    }

    /// The scale in effect for head dimension `d` and `heads` indexer heads.
    pub fn effective_scale(&self, heads: usize, d: usize) -> f32 {
        self.scale.unwrap_or_else(|| {
            let n = match self.kind {
                IndexerKind::Lightning => d as f64 * heads as f64,
                IndexerKind::Gated { .. } => d as f64,
            };
            (1.0 / libm::sqrt(n)) as f32
        })
    }
}

/// The sizes of an indexer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerDims {
    /// Batch size.
    pub batch: usize,
    /// Query rows per batch element.
    pub q_len: usize,
    /// Keys per batch element.
    pub kv_len: usize,
    /// Indexer heads `H_I`.
    pub heads: usize,
    /// Indexer head dimension `d_I`.
    pub dim: usize,
}

impl IndexerDims {
    /// Query rows in all (`batch · q_len`).
    pub fn rows(&self) -> usize {
        self.batch.saturating_mul(self.q_len)
    }

    /// Keys query row `t` may see under `indexer`'s mask: a prefix `0..visible`.
    pub fn visible(&self, indexer: &Indexer<'_>, t: usize) -> usize {
        if indexer.causal {
            // In i128 every usize difference is exact; the result lies in 0..=kv_len.
            (self.kv_len as i128 - self.q_len as i128 + t as i128 + 1).clamp(0, self.kv_len as i128) as usize
        } else {
            self.kv_len
        }
    }
}

/// Checks an indexer call's operands: queries `[batch, q_len, H_I, d_I]`, one key head
/// `[batch, kv_len, 1, d_I]` and weights `[batch, q_len, 1, H_I]`.
pub fn check_indexer(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &Indexer<'_>,
) -> Result<IndexerDims, Error> {
    let (ql, kl, wl) = (&q.layout, &k.layout, &w.layout);
    let d = IndexerDims { batch: ql.batch(), q_len: ql.seq(), kv_len: kl.seq(), heads: ql.heads(), dim: ql.dim() };
    let expect = |operand, dim, expected: usize, found: usize| {
        if expected == found {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { operand, dim, expected, found })
        }
    };
    expect(Operand::Key, "batch", d.batch, kl.batch())?;
    expect(Operand::Key, "heads (one shared key head)", 1, kl.heads())?;
    expect(Operand::Key, "head_dim", d.dim, kl.dim())?;
    expect(Operand::IndexerWeights, "batch", d.batch, wl.batch())?;
    expect(Operand::IndexerWeights, "q_len", d.q_len, wl.seq())?;
    expect(Operand::IndexerWeights, "heads", 1, wl.heads())?;
    expect(Operand::IndexerWeights, "dim (indexer heads)", d.heads, wl.dim())?;
    if d.heads == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::IndexerWeights });
    }
    if d.dim == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::Query });
    }
    // The size contract of `Dims::validate`: extents and the operands' logical element counts
    // at most isize::MAX, so positions convert to i64 and offsets cannot wrap.
    let operands = [
        (Operand::Query, [d.batch, d.q_len, d.heads, d.dim]),
        (Operand::Key, [d.batch, d.kv_len, 1, d.dim]),
        (Operand::IndexerWeights, [d.batch, d.q_len, 1, d.heads]),
    ];
    for (operand, extents) in operands {
        if crate::plan::checked_count(&extents).is_none() {
            return Err(Error::ShapeOverflow { operand });
        }
    }
    // Each thread's scratch (`row_scratch_len`) must be countable and allocatable as f32s.
    let overflow = Error::ShapeOverflow { operand: Operand::Query };
    checked_row_scratch_len(&d).filter(|&n| n <= isize::MAX as usize / core::mem::size_of::<f32>()).ok_or(overflow)?;
    for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (w, Operand::IndexerWeights)] {
        t.layout.check(operand, t.data.len())?;
    }
    if let IndexerKind::Gated { bias } = indexer.kind {
        expect(Operand::Bias, "len (indexer heads)", d.heads, bias.len())?;
    }
    let scale = indexer.effective_scale(d.heads, d.dim);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::InvalidOption { option: "indexer scale", reason: "must be finite and > 0" });
    }
    Ok(d)
}

/// Writes the scores of every (query, key) into `out` (`[batch, q_len, kv_len]`), `-inf` where
/// the mask hides the key. `O(L²)` memory by design; [`top_k_indices`] chooses keys without it.
pub fn indexer_scores(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &Indexer<'_>,
    out: &mut [f32],
) -> Result<(), Error> {
    let d = check_indexer(q, k, w, indexer)?;
    let len = d.rows().checked_mul(d.kv_len).ok_or(Error::ShapeOverflow { operand: Operand::Output })?;
    if out.len() != len {
        return Err(Error::ShapeMismatch {
            operand: Operand::Output,
            dim: "batch * q_len * kv_len",
            expected: len,
            found: out.len(),
        });
    }
    let isa = indexer.resolved_isa()?;
    probe_row_scratch(&d)?;
    let ops = RowOps { q, k, w, indexer, dims: d, isa };
    for_each_row(&ops, out, d.kv_len, &|_, scores, _, dst| dst.copy_from_slice(scores));
    Ok(())
}

/// Chooses, for every query row, the `top_k` visible keys with the highest scores, best first,
/// into `out` (`[batch, q_len, top_k]`, the [`SparseIndices::shared`](crate::sparse::SparseIndices::shared)
/// layout). Rows that see fewer than `top_k` keys list all of them and pad with
/// [`PAD`]. Equal scores rank the lower key first; a NaN score ranks as `-inf` (such a key is
/// still listed when the row has no better one left). Each thread holds
/// `5 · kv_len + 4 + H_I · (2 · d_I + 257) + 256 · d_I` floats of scratch; with the `rayon` feature rows always run
/// in parallel (the indexer has no `Parallelism` switch).
///
/// ```
/// use gated_attention::sparse::{top_k_indices, Indexer};
/// use gated_attention::Tensor;
/// // 2 queries, 3 keys, one indexer head of dimension 1.
/// let (q, k, w) = ([1.0f32, -1.0], [1.0f32, 3.0, 2.0], [1.0f32, 1.0]);
/// let mut idx = [0i32; 4];
/// top_k_indices(
///     &Tensor::bshd(&q[..], 1, 2, 1, 1),
///     &Tensor::bshd(&k[..], 1, 3, 1, 1),
///     &Tensor::bshd(&w[..], 1, 2, 1, 1),
///     &Indexer::lightning().causal(),
///     2,
///     &mut idx,
/// )?;
/// // Query 0 (position 1) sees keys 0 and 1 and prefers 1; query 1's scores are all
/// // ReLU(negative) = 0, so the lower keys win the tie.
/// assert_eq!(idx, [1, 0, 0, 1]);
/// # Ok::<(), gated_attention::Error>(())
/// ```
pub fn top_k_indices(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &Indexer<'_>,
    top_k: usize,
    out: &mut [i32],
) -> Result<(), Error> {
    let d = check_indexer(q, k, w, indexer)?;
    check_indices_out(&d, top_k, out.len())?;
    let isa = indexer.resolved_isa()?;
    probe_row_scratch(&d)?;
    let ops = RowOps { q, k, w, indexer, dims: d, isa };
    for_each_row(&ops, out, top_k, &|row, scores, spare, dst| {
        let visible = d.visible(indexer, row % d.q_len);
        select_top(&scores[..visible], top_k.min(visible), spare, dst);
    });
    Ok(())
}

/// Checks that an index output of `len` entries holds `top_k` per row and that keys fit `i32`.
pub(crate) fn check_indices_out(d: &IndexerDims, top_k: usize, len: usize) -> Result<(), Error> {
    if d.kv_len > i32::MAX as usize {
        return Err(Error::InvalidOption { option: "kv_len", reason: "key indices must fit in i32" });
    }
    let need = d.rows().checked_mul(top_k).ok_or(Error::ShapeOverflow { operand: Operand::Indices })?;
    if len != need {
        return Err(Error::ShapeMismatch {
            operand: Operand::Indices,
            dim: "batch * q_len * k",
            expected: need,
            found: len,
        });
    }
    Ok(())
}

/// The rank of a score: NaN as `-inf`, then `f32::total_cmp`.
fn rank(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// The sort key of a score: keys ascend as [`rank`]s descend (`f32::total_cmp`'s order), so the
/// smallest key is the best score.
#[inline]
fn descending_key(x: f32) -> u32 {
    let bits = rank(x).to_bits();
    // total_cmp's order as unsigned bits: a negative value flips every bit, any other sets the
    // sign bit.
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    !ascending
}

/// Floats of `spare` that [`select_top`] needs for `len` scores: a `u32` key per score, then
/// (in the same place) two `u64`s per chosen key and one more, at any alignment.
pub(crate) const fn select_scratch_len(len: usize) -> usize {
    4 * len + 4
}

/// Writes the `n` best keys of `scores` (ties: lower key first) into `dst`, best first, and
/// pads the rest of `dst` with [`PAD`]. `spare` is scratch of at least
/// [`select_scratch_len`]`(scores.len())` floats; `scores.len()` is below `2^31` (key indices
/// fit in `i32`).
pub(crate) fn select_top(scores: &[f32], n: usize, spare: &mut [f32], dst: &mut [i32]) {
    dst.fill(PAD);
    if n == 0 {
        return;
    }
    let len = scores.len();
    debug_assert!(n <= len && spare.len() >= select_scratch_len(len));
    // SAFETY: u32 has f32's size and alignment and every bit pattern is valid for both, so the
    // view is exact (no prefix or suffix).
    let (_, keys, _) = unsafe { spare.align_to_mut::<u32>() };
    let keys = &mut keys[..len];
    for (k, &x) in keys.iter_mut().zip(scores) {
        *k = descending_key(x);
    }
    // The n-th best key, selected in O(len) on integers; the n best are the keys below it and
    // the first of its ties in key order.
    let (better, &mut threshold, worse) = keys.select_nth_unstable(n - 1);
    let mut ties = n - better.iter().filter(|&&k| k < threshold).count();
    // No other key equals the threshold's: exactly the n keys up to it are chosen.
    let unique = ties == 1 && !worse.contains(&threshold);
    // SAFETY: every bit pattern is a valid u64; `align_to_mut` leaves a prefix of at most one
    // float, so the middle holds at least `2 · len + 1` u64s (`select_scratch_len`).
    let (_, wide, _) = unsafe { spare.align_to_mut::<u64>() };
    let (packed, sorted) = wide.split_at_mut(n + 1);
    // Each chosen key and its index in one u64: sorted as integers they list the best first and
    // equal scores by index, with no comparison that reads the scores. The store is
    // unconditional (at `count <= n < packed.len()`), only the count depends on the test.
    let mut count = 0;
    if unique {
        // The usual case, without the loop-carried count of ties: `select_top` went from 13.0%
        // to 10.5% of the indexer's samples (L 4096, top-k 512, 2 threads).
        for (j, &x) in scores.iter().enumerate() {
            let k = descending_key(x);
            packed[count] = u64::from(k) << 32 | j as u64;
            count += usize::from(k <= threshold);
        }
    } else {
        for (j, &x) in scores.iter().enumerate() {
            let k = descending_key(x);
            let tie = k == threshold && ties > 0;
            packed[count] = u64::from(k) << 32 | j as u64;
            count += usize::from(k < threshold || tie);
            ties -= usize::from(tie);
        }
    }
    debug_assert_eq!(count, n);
    let best_first = radix_sort_by_key(&mut packed[..n], &mut sorted[..n]);
    for (d, &p) in dst.iter_mut().zip(best_first.iter()) {
        // The low half is the index, below 2^31.
        *d = p as u32 as i32;
    }
}

/// Sorts `v` by the high halves of its elements, stably, and returns the sorted slice (`v` or
/// `tmp`, as long as `v`). With `v` in index order, as [`select_top`] collects it, this is the
/// order of the whole `u64`s: an LSD radix sort, 8 bits per pass, each pass skipped when all keys
/// share its digit (most scores share their sign and top exponent bits). Against
/// `sort_unstable` the indexer at L 16384, top-k 2048 took 1712–1737 ms instead of 1780–1792
/// (paired runs, 2 threads), with the same lists.
fn radix_sort_by_key<'a>(v: &'a mut [u64], tmp: &'a mut [u64]) -> &'a [u64] {
    let mut counts = [[0u32; 256]; 4];
    for &x in v.iter() {
        let key = (x >> 32) as u32;
        for (pass, c) in counts.iter_mut().enumerate() {
            c[(key >> (8 * pass)) as usize & 255] += 1;
        }
    }
    let (mut src, mut dst) = (v, tmp);
    for (pass, c) in counts.iter().enumerate() {
        if c.iter().any(|&n| n as usize == src.len()) {
            continue;
        }
        let mut next = [0u32; 256];
        let mut sum = 0;
        for (o, &n) in next.iter_mut().zip(c) {
            *o = sum;
            sum += n;
        }
        for &x in src.iter() {
            let digit = ((x >> 32) as u32 >> (8 * pass)) as usize & 255;
            dst[next[digit] as usize] = x;
            next[digit] += 1;
        }
        core::mem::swap(&mut src, &mut dst);
    }
    src
}

/// The operands of a validated call.
pub(crate) struct RowOps<'a> {
    pub q: &'a Tensor<'a>,
    pub k: &'a Tensor<'a>,
    pub w: &'a Tensor<'a>,
    pub indexer: &'a Indexer<'a>,
    pub dims: IndexerDims,
    /// The call's resolved ISA.
    pub isa: Isa,
}

/// What [`for_each_row`] does with one row: `(row, scores, spare, out)`.
pub(crate) type RowFn<'a, O> = dyn Fn(usize, &mut [f32], &mut [f32], &mut [O]) + Sync + 'a;

/// Keys scored per tile.
const BK: usize = 256;

/// Computes each query row's scores (`-inf` past its visible keys) and hands them, with
/// `kv_len` floats of scratch and the row's `width` elements of `out`, to `f`; rows run in
/// parallel with rayon.
pub(crate) fn for_each_row<O: Send>(ops: &RowOps<'_>, out: &mut [O], width: usize, f: &RowFn<'_, O>) {
    if width == 0 || ops.dims.rows() == 0 {
        return;
    }
    dispatch(ops.isa, RowVisitor { ops, out, width, f });
}

struct RowVisitor<'a, 'o, O> {
    ops: &'a RowOps<'a>,
    out: &'o mut [O],
    width: usize,
    f: &'a RowFn<'a, O>,
}

impl<O: Send> KernelVisitor for RowVisitor<'_, '_, O> {
    type Output = ();
    fn visit<K: Kernel>(self, kernel: K) {
        match self.ops.k.data {
            Elems::F32(k) => self.typed(kernel, k),
            Elems::F16(k) => self.typed(kernel, k),
            Elems::BF16(k) => self.typed(kernel, k),
        }
    }
}

impl<O: Send> RowVisitor<'_, '_, O> {
    fn typed<K: Kernel, KE: Element>(self, kernel: K, k: &[KE]) {
        let d = self.ops.dims;
        let len = row_scratch_len(&d);
        let (ops, f, width) = (self.ops, self.f, self.width);
        let out = SharedOut::new(self.out);
        #[cfg(feature = "rayon")]
        let workers = Workers::Pool;
        #[cfg(not(feature = "rayon"))]
        let mut buf = alloc::vec![0.0f32; len];
        #[cfg(not(feature = "rayon"))]
        let workers = Workers::Calling(&mut buf);
        for_each_unit(workers, d.rows(), len, |r, buf| {
            let (scores, rest) = buf.split_at_mut(d.kv_len);
            let (spare, tmp) = rest.split_at_mut(select_scratch_len(d.kv_len));
            score_row(kernel, ops, k, r, scores, tmp);
            // SAFETY: row r's `width` outputs belong to unit r alone, run once.
            let dst = unsafe { out.slice(r * width, width) };
            f(r, scores, spare, dst);
        });
    }
}

/// The scores of query row `r` (`b · q_len + t`) against every key into `scores`.
///
/// A tile of `BK` keys is scored against every head at once as a gemm, `Sᵀ = K·(c·Q)ᵀ`
/// (`BK × H_I`, the keys as A read in place when they are f32, widened first otherwise): with
/// `H_I` a multiple of 16 that is the prefill microkernel's shape. Each key's score is then
/// `Σ_h w_h · f(Sᵀ[j, h])`, the nonlinearity applied in place and the sum one
/// [`Kernel::dot_rows`] of the weights against the tile's rows.
fn score_row<K: Kernel, KE: Element>(
    kernel: K,
    ops: &RowOps<'_>,
    k: &[KE],
    r: usize,
    scores: &mut [f32],
    tmp: &mut [f32],
) {
    let d = ops.dims;
    let (b, t) = (r / d.q_len, r % d.q_len);
    let (hi, di) = (d.heads, d.dim);
    let (qs, rest) = tmp.split_at_mut(hi * di);
    let (qt, rest) = rest.split_at_mut(di * hi);
    let (s, rest) = rest.split_at_mut(BK * hi);
    let (kw, rest) = rest.split_at_mut(BK * di);
    let wh = &mut rest[..hi];
    let scale = ops.indexer.effective_scale(hi, di);
    // The scale is folded into the queries: it multiplies q·k before either nonlinearity
    // (the lightning kind's ReLU(c·x) and the gated kind's σ(c·x + b)).
    for (h, dst) in qs.chunks_exact_mut(di).enumerate() {
        let off = ops.q.layout.offset(b, t, h);
        match ops.q.data {
            Elems::F32(x) => kernel.widen(&x[off..off + di], dst),
            Elems::F16(x) => kernel.widen(&x[off..off + di], dst),
            Elems::BF16(x) => kernel.widen(&x[off..off + di], dst),
        }
        kernel.scale(dst, scale);
    }
    kernel.transpose_widen(hi, di, qs, di, qt, hi);
    let w_off = ops.w.layout.offset(b, t, 0);
    for (h, x) in wh.iter_mut().enumerate() {
        let w = ops.w.data.get_f32(w_off + h);
        *x = match ops.indexer.kind {
            IndexerKind::Lightning => w,
            IndexerKind::Gated { .. } => sigmoid(w),
        };
    }
    let visible = d.visible(ops.indexer, t);
    scores[visible..].fill(f32::NEG_INFINITY);
    let ldk = ops.k.layout.strides[1];
    for j0 in (0..visible).step_by(BK) {
        let n = BK.min(visible - j0);
        let off = ops.k.layout.offset(b, j0, 0);
        let (k_tile, lda): (&[f32], usize) = match ops.k.data {
            Elems::F32(x) => (&x[off..], ldk),
            _ => {
                for (jj, dst) in kw.chunks_exact_mut(di).take(n).enumerate() {
                    let o = off + jj * ldk;
                    kernel.widen(&k[o..o + di], dst);
                }
                (&kw[..n * di], di)
            }
        };
        let st = &mut s[..n * hi];
        kernel.gemm(n, hi, di, k_tile, lda, qt, hi, st, hi, false);
        match ops.indexer.kind {
            IndexerKind::Lightning => st.iter_mut().for_each(|x| *x = relu(*x)),
            IndexerKind::Gated { bias } => {
                for row in st.chunks_exact_mut(hi) {
                    for (x, &c) in row.iter_mut().zip(bias) {
                        *x = sigmoid(*x + c);
                    }
                }
            }
        }
        kernel.dot_rows(1, n, hi, wh, hi, st, hi, &mut scores[j0..j0 + n], n);
    }
}

/// Reserves (and releases) the row scratch of every thread [`for_each_row`] may run, so that a
/// size no allocator can give (a stride-0 key view makes `kv_len` as large as the size contract
/// allows) is [`Error::AllocationFailed`] before any row is written rather than an abort inside a
/// worker.
pub(crate) fn probe_row_scratch(d: &IndexerDims) -> Result<(), Error> {
    #[cfg(feature = "rayon")]
    let threads = rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    let threads = 1;
    let n = row_scratch_len(d).saturating_mul(threads);
    let mut probe: alloc::vec::Vec<f32> = alloc::vec::Vec::new();
    probe
        .try_reserve_exact(n)
        .map_err(|_| Error::AllocationFailed { operand: Operand::Scratch, bytes: n.saturating_mul(4) })
}

/// f32 scratch of one thread of [`for_each_row`] (checked not to overflow by [`check_indexer`]):
/// the scores and [`select_top`]'s scratch, then [`score_row`]'s queries, their transpose, a
/// tile's scores, a widened key tile and the weights.
fn row_scratch_len(d: &IndexerDims) -> usize {
    checked_row_scratch_len(d).unwrap_or(usize::MAX)
}

/// [`row_scratch_len`], or `None` when it overflows.
fn checked_row_scratch_len(d: &IndexerDims) -> Option<usize> {
    let per_head = d.dim.checked_mul(2)?.checked_add(BK + 1)?;
    d.kv_len
        .checked_mul(5)?
        .checked_add(4)?
        .checked_add(d.heads.checked_mul(per_head)?)?
        .checked_add(d.dim.checked_mul(BK)?)
}

/// `max(x, 0)` that keeps NaN (`f32::max` would drop it).
#[inline]
fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

#[inline]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Also runs without rayon (`cargo test --no-default-features --features alloc --lib`), where
    // rows are scored sequentially.
    #[test]
    fn top_k_by_hand() {
        // One head of dimension 1, scale 1: the scores are q·k. Query 0 (position 2 of 4) sees
        // keys 0..3; query 1 sees all four.
        let (q, k, w) = ([1.0f32, -1.0], [0.5f32, 2.0, -1.0, 3.0], [1.0f32, 2.0]);
        let (qt, kt, wt) =
            (Tensor::bshd(&q[..], 1, 2, 1, 1), Tensor::bshd(&k[..], 1, 4, 1, 1), Tensor::bshd(&w[..], 1, 2, 1, 1));
        let mut idx = [9i32; 6];
        top_k_indices(&qt, &kt, &wt, &Indexer::lightning().scale(1.0).causal(), 3, &mut idx).unwrap();
        // Row 0: ReLU scores [0.5, 2, 0] -> 1, 0, 2. Row 1: 2·ReLU(-k) = [0, 0, 2, 0] -> 2, 0, 1.
        assert_eq!(idx, [1, 0, 2, 2, 0, 1]);
    }

    #[test]
    fn select_top_keeps_ties_in_key_order() {
        let scores = [1.0f32, 3.0, f32::NAN, 3.0, 1.0];
        let mut spare = [0.0f32; select_scratch_len(5)];
        let mut dst = [0i32; 5];
        select_top(&scores, 4, &mut spare, &mut dst);
        assert_eq!(dst, [1, 3, 0, 4, PAD]);
    }

    /// One xorshift64 step.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Every key, ranked by (rank descending, index ascending): what `select_top` lists first.
    fn best_first(scores: &[f32]) -> alloc::vec::Vec<i32> {
        let mut order: alloc::vec::Vec<i32> = (0..scores.len() as i32).collect();
        order.sort_by(|&a, &b| rank(scores[b as usize]).total_cmp(&rank(scores[a as usize])).then(a.cmp(&b)));
        order
    }

    #[test]
    fn select_top_matches_a_full_sort_with_distinct_scores() {
        // Distinct scores take the path without a count of ties; a second key equal to the
        // threshold (rounds 4 to 7) must not.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in [1usize, 3, 64, 257] {
            for round in 0..8 {
                let mut scores: alloc::vec::Vec<f32> = (0..len)
                    .map(|_| {
                        let x = xorshift(&mut state);
                        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect();
                let n = 1 + round * (len - 1) / 7;
                let mut order = best_first(&scores);
                if round >= 4 && n < len {
                    // Give an unchosen key (the best or the worst of them) the n-th best score:
                    // of the two equal keys, the one with the lower index is chosen.
                    let dup = order[n + (round % 2) * (len - 1 - n)] as usize;
                    scores[dup] = scores[order[n - 1] as usize];
                    order = best_first(&scores);
                }
                let mut spare = alloc::vec![0.0f32; select_scratch_len(len)];
                let mut dst = alloc::vec![0i32; n];
                select_top(&scores, n, &mut spare, &mut dst);
                assert_eq!(dst[..], order[..n], "len {len}, n {n}");
            }
        }
    }

    #[test]
    fn select_top_matches_a_full_sort() {
        // Scores drawn from a few values (many ties), with ±0, ±inf and NaN among them; the
        // reference ranks every key by (rank descending, index ascending) and takes the first n.
        let pool = [2.5f32, -1.0, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 7.0, -3.5, 1e-30];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 2, 7, 64, 300] {
            for round in 0..20 {
                let scores: alloc::vec::Vec<f32> = (0..len)
                    .map(|_| {
                        let x = xorshift(&mut state);
                        pool[(x % pool.len() as u64) as usize]
                    })
                    .collect();
                let n = 1 + round * len / 20;
                let order = best_first(&scores);
                // Every other round the scratch starts 4 bytes off, so its u64 view has a prefix.
                let mut spare = alloc::vec![0.0f32; select_scratch_len(len) + 1];
                let spare = &mut spare[round % 2..][..select_scratch_len(len)];
                let mut dst = alloc::vec![0i32; n + 2];
                select_top(&scores, n, spare, &mut dst);
                assert_eq!(dst[..n], order[..n], "len {len}, n {n}, scores {scores:?}");
                assert_eq!(dst[n..], [PAD, PAD]);
            }
        }
    }
}
