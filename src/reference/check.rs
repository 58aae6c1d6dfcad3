//! The reference's own argument checks, written from the documented contract (README "Errors",
//! the size contract, the option docs) and sharing no code with the kernels' validation.
//!
//! They return the same [`Error`] as the kernels for the same input, in the same order:
//!
//! 1. shapes agree (K and V batch, V kv_len and heads, K head_dim against the queries);
//! 2. head counts divide and head dims are nonzero;
//! 3. size contract (a): every extent and every operand's element count (Q, K, V, O, LSE, in
//!    that order) is at most `isize::MAX`;
//! 4. option domains and option operands (scale, softcap, window, right_window with causal,
//!    ALiBi slopes, sinks, query RoPE, output gate, bias);
//! 5. Q, K, V buffers cover their strides;
//! 6. when an output is described: its shape, buffer, aliasing, and the LSE length.

use crate::error::{Error, Operand};
use crate::options::AttentionOptions;
use crate::rope::Positions;
use crate::tensor::{Layout, Tensor};
use crate::Dims;

/// An output to check along with the inputs: its layout, buffer length, and the LSE's length.
#[derive(Clone, Copy, Debug)]
pub struct OutputDesc {
    /// The output's layout.
    pub layout: Layout,
    /// Elements in the output buffer.
    pub len: usize,
    /// Elements in the LSE buffer, if one is passed.
    pub lse_len: Option<usize>,
}

fn mismatch(operand: Operand, dim: &'static str, expected: usize, found: usize) -> Result<(), Error> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { operand, dim, expected, found })
    }
}

/// Checks one attention call; returns its sizes.
pub fn validate(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    out: Option<OutputDesc>,
) -> Result<Dims, Error> {
    // 1. Shapes: [batch, seq, heads, dim] of each view.
    let [qb, ql, qh, qd] = q.layout.shape;
    let [kb, kl, kh, kd] = k.layout.shape;
    let [vb, vl, vh, vd] = v.layout.shape;
    mismatch(Operand::Key, "batch", qb, kb)?;
    mismatch(Operand::Value, "batch", qb, vb)?;
    mismatch(Operand::Value, "kv_len", kl, vl)?;
    mismatch(Operand::Value, "heads", kh, vh)?;
    mismatch(Operand::Key, "head_dim", qd, kd)?;
    let dims = Dims { batch: qb, q_len: ql, kv_len: kl, q_heads: qh, kv_heads: kh, head_dim: qd, v_head_dim: vd };

    // 2. Grouping and head dims.
    if kh == 0 || qh == 0 || qh % kh != 0 {
        return Err(Error::HeadsNotDivisible { q_heads: qh, kv_heads: kh });
    }
    if qd == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::Key });
    }
    if vd == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::Value });
    }

    // 3. Size contract (a).
    let counts: [(Operand, [usize; 4]); 5] = [
        (Operand::Query, [qb, ql, qh, qd]),
        (Operand::Key, [qb, kl, kh, qd]),
        (Operand::Value, [qb, kl, kh, vd]),
        (Operand::Output, [qb, ql, qh, vd]),
        (Operand::Lse, [qb, qh, ql, 1]),
    ];
    for (operand, extents) in counts {
        if element_count(extents).is_none() {
            return Err(Error::ShapeOverflow { operand });
        }
    }

    // 4. Options.
    check_options(&dims, opts)?;

    // 5. Input buffers.
    for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (v, Operand::Value)] {
        check_buffer(&t.layout, t.data.len(), operand)?;
    }

    // 6. Output and LSE.
    if let Some(o) = out {
        let [ob, os, oh, od] = o.layout.shape;
        mismatch(Operand::Output, "batch", qb, ob)?;
        mismatch(Operand::Output, "q_len", ql, os)?;
        mismatch(Operand::Output, "heads", qh, oh)?;
        mismatch(Operand::Output, "head_dim", vd, od)?;
        check_buffer(&o.layout, o.len, Operand::Output)?;
        check_no_overlap(&o.layout)?;
        if let Some(n) = o.lse_len {
            // Cannot overflow: bounded by size contract (a) above (batch and q_len, the only
            // extents that may be 0, multiplied first).
            mismatch(Operand::Lse, "batch * q_heads * q_len", qb * ql * qh, n)?;
        }
    }
    Ok(dims)
}

/// The product of `extents` if every extent and the product are at most `isize::MAX` (exactly 0
/// when an extent is 0, whatever the others).
fn element_count(extents: [usize; 4]) -> Option<usize> {
    let limit = isize::MAX as usize;
    if extents.iter().any(|&e| e > limit) {
        return None;
    }
    if extents.contains(&0) {
        return Some(0);
    }
    extents.iter().try_fold(1usize, |n, &e| n.checked_mul(e)).filter(|&n| n <= limit)
}

/// One past the largest element offset `layout` reaches, or `None` if that overflows `usize`.
fn extent_in_memory(layout: &Layout) -> Option<usize> {
    if layout.shape.contains(&0) {
        return Some(0);
    }
    let mut last = layout.shape[3] - 1;
    for axis in 0..3 {
        last = last.checked_add((layout.shape[axis] - 1).checked_mul(layout.strides[axis])?)?;
    }
    last.checked_add(1)
}

fn check_buffer(layout: &Layout, len: usize, operand: Operand) -> Result<(), Error> {
    let needed = extent_in_memory(layout).ok_or(Error::ShapeOverflow { operand })?;
    if needed > len {
        return Err(Error::BufferTooSmall { operand, needed, len });
    }
    Ok(())
}

/// An output's axes must nest: taken by increasing stride, each axis of length > 1 must step over
/// everything the smaller axes (and the contiguous head dimension) span. This is the documented
/// sufficient condition for distinct logical elements at distinct offsets.
fn check_no_overlap(layout: &Layout) -> Result<(), Error> {
    if layout.shape.contains(&0) {
        return Ok(());
    }
    let mut axes: [(usize, usize); 3] = [0, 1, 2].map(|a| (layout.strides[a], layout.shape[a]));
    axes.sort_unstable();
    let mut spanned = layout.shape[3];
    for (stride, len) in axes.into_iter().filter(|&(_, len)| len > 1) {
        if stride < spanned {
            return Err(Error::AliasedOutput { operand: Operand::Output });
        }
        spanned = stride.checked_mul(len).ok_or(Error::ShapeOverflow { operand: Operand::Output })?;
    }
    Ok(())
}

fn invalid(option: &'static str, reason: &'static str) -> Result<(), Error> {
    Err(Error::InvalidOption { option, reason })
}

fn check_options(dims: &Dims, opts: &AttentionOptions<'_>) -> Result<(), Error> {
    if matches!(opts.scale, Some(s) if !s.is_finite()) {
        return invalid("scale", "must be finite");
    }
    // Size contract (c): any finite c > 0, subnormals included.
    if matches!(opts.softcap, Some(c) if !(c.is_finite() && c > 0.0)) {
        return invalid("softcap", "must be finite and > 0");
    }
    if opts.window == Some(0) {
        return invalid("window", "must be >= 1 (it counts the query's own key)");
    }
    if opts.causal && opts.right_window.is_some() {
        return invalid("right_window", "contradicts causal");
    }
    if let Some(s) = opts.alibi_slopes {
        mismatch(Operand::AlibiSlopes, "heads", dims.q_heads, s.len())?;
    }
    if let Some(s) = opts.sinks {
        mismatch(Operand::Sinks, "heads", dims.q_heads, s.len())?;
    }
    if let Some(r) = &opts.rope_q {
        mismatch(Operand::Query, "head_dim", r.table.head_dim(), dims.head_dim)?;
        let end = positions_end(&r.positions, dims.batch, dims.q_len)?;
        if end > r.table.positions() {
            return invalid("positions", "beyond the RoPE table");
        }
    }
    if let Some(g) = &opts.output_gate {
        let l = &g.logits.layout;
        mismatch(Operand::Gate, "batch", dims.batch, l.shape[0])?;
        mismatch(Operand::Gate, "seq", dims.q_len, l.shape[1])?;
        // Heads and dim may be broadcast (extent 1).
        if l.shape[2] != 1 {
            mismatch(Operand::Gate, "heads", dims.q_heads, l.shape[2])?;
        }
        if l.shape[3] != 1 {
            mismatch(Operand::Gate, "dim", dims.v_head_dim, l.shape[3])?;
        }
        check_buffer(l, g.logits.data.len(), Operand::Gate)?;
    }
    if let Some(bias) = &opts.bias {
        let extents = [dims.batch, dims.q_heads, dims.q_len, dims.kv_len];
        if !extents.contains(&0) {
            let overflow = Error::ShapeOverflow { operand: Operand::Bias };
            let mut last = 0usize;
            for (e, s) in extents.into_iter().zip(bias.strides) {
                last = (e - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or(overflow.clone())?;
            }
            let needed = last.checked_add(1).ok_or(overflow)?;
            if needed > bias.data.len() {
                return Err(Error::BufferTooSmall { operand: Operand::Bias, needed, len: bias.data.len() });
            }
        }
    }
    Ok(())
}

/// One past the largest position `positions` gives a `[batch, seq]` call (0 when empty).
fn positions_end(positions: &Positions<'_>, batch: usize, seq: usize) -> Result<usize, Error> {
    if batch == 0 || seq == 0 {
        return Ok(0);
    }
    let entries = |expected: usize, found: usize| mismatch(Operand::Positions, "entries", expected, found);
    let overflow = Error::InvalidOption { option: "positions", reason: "overflow" };
    let last = match *positions {
        Positions::Offset(o) => o.checked_add(seq - 1),
        Positions::PerBatch(offsets) => {
            entries(batch, offsets.len())?;
            offsets.iter().map(|&o| o.checked_add(seq - 1)).try_fold(0usize, |m, x| x.map(|x| m.max(x)))
        }
        Positions::Explicit(ids) => {
            // batch · seq cannot overflow: the queries' element count is bounded by contract (a).
            entries(batch * seq, ids.len())?;
            ids.iter().copied().max()
        }
    };
    last.and_then(|l| l.checked_add(1)).ok_or(overflow)
}

/// The sizes of an indexer call, as the reference's own checks found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerSizes {
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

/// Checks an indexer call from its documented contract (`sparse::top_k_indices`, "Errors"):
/// queries `[batch, q_len, H_I, d_I]`, one key head `[batch, kv_len, 1, d_I]`, weights
/// `[batch, q_len, 1, H_I]`; then `H_I` and `d_I` nonzero; the size contract on the three
/// operands; their buffers; the gated indexer's bias length; and the scale's domain, in that order.
pub fn check_indexer(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    w: &Tensor<'_>,
    indexer: &crate::sparse::Indexer<'_>,
) -> Result<IndexerSizes, Error> {
    use crate::sparse::IndexerKind;
    let [batch, q_len, heads, dim] = q.layout.shape;
    let [kb, kv_len, kh, kd] = k.layout.shape;
    let [wb, wl, wh, wd] = w.layout.shape;
    mismatch(Operand::Key, "batch", batch, kb)?;
    mismatch(Operand::Key, "heads (one shared key head)", 1, kh)?;
    mismatch(Operand::Key, "head_dim", dim, kd)?;
    mismatch(Operand::IndexerWeights, "batch", batch, wb)?;
    mismatch(Operand::IndexerWeights, "q_len", q_len, wl)?;
    mismatch(Operand::IndexerWeights, "heads", 1, wh)?;
    mismatch(Operand::IndexerWeights, "dim (indexer heads)", heads, wd)?;
    if heads == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::IndexerWeights });
    }
    if dim == 0 {
        return Err(Error::ZeroHeadDim { operand: Operand::Query });
    }
    for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (w, Operand::IndexerWeights)] {
        element_count(t.layout.shape).ok_or(Error::ShapeOverflow { operand })?;
    }
    for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (w, Operand::IndexerWeights)] {
        check_buffer(&t.layout, t.data.len(), operand)?;
    }
    if let IndexerKind::Gated { bias } = indexer.kind {
        mismatch(Operand::Bias, "len (indexer heads)", heads, bias.len())?;
    }
    if let Some(s) = indexer.scale {
        if !(s.is_finite() && s > 0.0) {
            invalid("indexer scale", "must be finite and > 0")?;
        }
    }
    Ok(IndexerSizes { batch, q_len, kv_len, heads, dim })
}
