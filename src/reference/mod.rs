//! A deliberately naive f64 attention: the oracle every kernel is tested against.
//!
//! It evaluates the mask as an explicit per-(query, key) predicate in exact integer arithmetic,
//! repeats KV heads for GQA, and computes each row's softmax in f64 with the textbook
//! max-subtraction. Inputs are widened exactly from their storage type. It shares no code with
//! the kernels beyond the public option and tensor types: it validates its arguments itself
//! (returning the same [`Error`] as the kernels for the same input), and recomputes RoPE
//! frequencies from their definitions ([`rotary`]). A kernel author can verify a kernel of their own
//! against it:
//!
//! ```
//! use gated_attention::{reference, AttentionOptions, Tensor};
//! let (q, k, v) = (vec![1.0f32; 4], vec![0.5f32; 8], vec![2.0f32; 8]);
//! // batch 1, 1 query, 2 keys, 1 head, head_dim 4
//! let q = Tensor::bshd(&q[..], 1, 1, 1, 4);
//! let k = Tensor::bshd(&k[..], 1, 2, 1, 4);
//! let v = Tensor::bshd(&v[..], 1, 2, 1, 4);
//! let r = reference::attention(&q, &k, &v, &AttentionOptions::new().causal()).unwrap();
//! assert!((r.out[0] - 2.0).abs() < 1e-12);
//! ```

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Operand};
use crate::gate::{Gate, GateActivation, GateMode};
use crate::options::AttentionOptions;
use crate::rope::RopeTable;
use crate::tensor::Tensor;
use crate::Dims;

mod check;
pub mod error_model;
mod math;
pub mod rotary;
pub mod sparse;
mod stats;
#[cfg(test)]
mod tests;
mod visibility;

pub use check::{validate, OutputDesc};
pub use stats::{ElemStats, RowStats, Stats};

/// The reference result.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The sizes it was computed for.
    pub dims: Dims,
    /// Output, contiguous `[batch, q_len, q_heads, v_head_dim]`.
    pub out: Vec<f64>,
    /// Natural-log LSE of each row's softmax denominator (learned sink included),
    /// `[batch, q_heads, q_len]`; `-inf` for a row with no visible key and no sink.
    pub lse: Vec<f64>,
    /// The quantities an error model needs, when asked for ([`attention_with_stats`]).
    pub stats: Option<Stats>,
}

impl Reference {
    /// Output element `(b, i, h, d)`.
    pub fn out_at(&self, b: usize, i: usize, h: usize, d: usize) -> f64 {
        let n = &self.dims;
        self.out[((b * n.q_len + i) * n.q_heads + h) * n.v_head_dim + d]
    }
    /// LSE of `(b, h, i)`.
    pub fn lse_at(&self, b: usize, h: usize, i: usize) -> f64 {
        let n = &self.dims;
        self.lse[(b * n.q_heads + h) * n.q_len + i]
    }
}

/// The absolute position of query row `i` (saturated to the `i64` range, which every position of
/// a call that passes validation is within).
pub fn query_position(opts: &AttentionOptions<'_>, q_len: usize, kv_len: usize, i: usize) -> i64 {
    let p = visibility::position(opts, q_len, kv_len, i);
    p.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The mask predicate, written as the documentation states it: may query row `i` see key `j`?
/// Exact for every `usize` option value (a window past every reachable distance hides nothing).
pub fn visible(opts: &AttentionOptions<'_>, q_len: usize, kv_len: usize, i: usize, j: usize) -> bool {
    visibility::sees(opts, visibility::position(opts, q_len, kv_len, i), j)
}

/// Rotates an f64 head row at position `pos` in f64 throughout, with frequencies recomputed from
/// the table's parameters by [`rotary::frequencies`] (the table's own frequencies are not read).
pub fn rope_f64(table: &RopeTable, pos: usize, row: &mut [f64]) {
    rotary::rotate(table.pairing(), &rotary::table_frequencies(table), pos, row);
}

/// The gate of element `(b, s, h, d)` applied to `y`, in f64.
pub fn gate_f64(gate: &Gate<'_>, b: usize, s: usize, h: usize, d: usize, y: f64) -> f64 {
    let g = gate_value(gate, b, s, h, d);
    match gate.mode {
        GateMode::Multiplicative => y * g,
        GateMode::Additive => y + g,
    }
}

/// The activated gate `act(g)` of element `(b, s, h, d)`, in f64.
fn gate_value(gate: &Gate<'_>, b: usize, s: usize, h: usize, d: usize) -> f64 {
    let l = &gate.logits.layout;
    let h = if l.shape[2] == 1 { 0 } else { h };
    let d = if l.shape[3] == 1 { 0 } else { d };
    let x = gate.logits.data.get_f32(b * l.strides[0] + s * l.strides[1] + h * l.strides[2] + d) as f64;
    let sigmoid = 1.0 / (1.0 + math::exp(-x));
    match gate.activation {
        GateActivation::Sigmoid => sigmoid,
        GateActivation::Silu => x * sigmoid,
        GateActivation::NsSigmoid => 0.5 + 0.5 * sigmoid,
    }
}

/// Rows `[seq, dim]` of head `h` of batch `b`, widened to f64 and made contiguous.
fn widen(t: &Tensor<'_>, b: usize, h: usize, operand: Operand) -> Result<Vec<f64>, Error> {
    let [_, seq, _, dim] = t.layout.shape;
    let st = t.layout.strides;
    // seq * dim is within the size contract (isize::MAX elements); its f64 bytes may not be.
    let mut out = Vec::new();
    out.try_reserve_exact(seq * dim)
        .map_err(|_| Error::AllocationFailed { operand, bytes: (seq * dim).saturating_mul(8) })?;
    for s in 0..seq {
        let off = b * st[0] + s * st[1] + h * st[2];
        out.extend((off..off + dim).map(|e| t.data.get_f32(e) as f64));
    }
    Ok(out)
}

/// Keys hidden beyond the mask: `keep(b, kv_head, i, j)` false hides key `j` from row `i`.
type Keep<'k> = Option<&'k dyn Fn(usize, usize, usize, usize) -> bool>;

/// One call's fixed parameters.
struct Call<'c, 'a> {
    q: &'c Tensor<'a>,
    opts: &'c AttentionOptions<'a>,
    dims: Dims,
    scale: f64,
    rope: Option<rotary::Frequencies>,
}

impl<'c, 'a> Call<'c, 'a> {
    fn new(q: &'c Tensor<'a>, opts: &'c AttentionOptions<'a>, dims: Dims) -> Self {
        let scale = match opts.scale {
            Some(s) => s as f64,
            None => 1.0 / math::sqrt(dims.head_dim as f64),
        };
        let rope = opts.rope_q.as_ref().map(|r| rotary::table_frequencies(r.table));
        Call { q, opts, dims, scale, rope }
    }

    /// Query row `(b, i, h)` in f64, rotated when the options ask for it.
    fn query(&self, b: usize, i: usize, h: usize, row: &mut Vec<f64>) {
        let l = &self.q.layout;
        let off = b * l.strides[0] + i * l.strides[1] + h * l.strides[2];
        row.clear();
        row.extend((off..off + self.dims.head_dim).map(|e| self.q.data.get_f32(e) as f64));
        if let (Some(r), Some(f)) = (&self.opts.rope_q, &self.rope) {
            rotary::rotate(r.table.pairing(), f, r.positions.get(b, i, self.dims.q_len), row);
        }
    }

    /// The scores of row `(b, h, i)` against keys `k` (`[kv_len, head_dim]`), `-inf` where hidden.
    /// With `row_stats`, also fills its dot, score, ALiBi and bias magnitudes.
    #[allow(clippy::too_many_arguments)]
    fn score_row(
        &self,
        k: &[f64],
        b: usize,
        h: usize,
        i: usize,
        keep: Keep<'_>,
        q_row: &[f64],
        s: &mut [f64],
        mut row_stats: Option<(&mut RowStats, &mut [f64])>,
    ) {
        let d = &self.dims;
        let (hd, kvh) = (d.head_dim, h / (d.q_heads / d.kv_heads));
        let pos = visibility::position(self.opts, d.q_len, d.kv_len, i);
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = f64::NEG_INFINITY;
            if !visibility::sees(self.opts, pos, j) || !keep.is_none_or(|f| f(b, kvh, i, j)) {
                continue;
            }
            let kj = &k[j * hd..(j + 1) * hd];
            // With stats, the running sums of the products come in the same pass.
            let (mut dot, mut abs, mut run_sq, mut sq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            if row_stats.is_some() {
                for (a, b) in q_row.iter().zip(kj) {
                    let p = a * b;
                    dot += p;
                    abs += p.abs();
                    run_sq += dot * dot;
                    sq += p * p;
                }
            } else {
                dot = q_row.iter().zip(kj).map(|(a, b)| a * b).sum();
            }
            let mut x = dot * self.scale;
            if let Some(c) = self.opts.softcap {
                let c = c as f64;
                x = c * math::tanh(x / c);
            }
            let mut alibi = 0.0;
            if let Some(slopes) = self.opts.alibi_slopes {
                alibi = slopes[h] as f64 * visibility::distance(pos, j);
                x -= alibi;
            }
            let mut bias = 0.0;
            if let Some(bs) = &self.opts.bias {
                let st = bs.strides;
                bias = bs.data[b * st[0] + h * st[1] + i * st[2] + j * st[3]] as f64;
                x += bias;
            }
            *sj = x;
            if let Some((rs, dot_sq)) = row_stats.as_mut() {
                if x.is_finite() {
                    let dot_abs = abs * self.scale.abs();
                    dot_sq[j] = self.scale * self.scale * (run_sq + hd as f64 * sq);
                    rs.keys += 1;
                    rs.dot_abs = rs.dot_abs.max(dot_abs);
                    rs.score_abs = rs.score_abs.max(x.abs());
                    rs.alibi_abs = rs.alibi_abs.max(alibi.abs());
                    rs.bias_abs = rs.bias_abs.max(bias.abs());
                }
            }
        }
    }
}

/// The post-mask scores of one (batch, head) as an `[q_len, kv_len]` matrix, `-inf` where masked.
/// Learned sinks are not included.
///
/// # Errors
/// The errors of [`validate`] for `q`, `k` and `opts` (with `k` standing in for the values);
/// [`Error::ShapeMismatch`] when `dims` is not what the tensors say (its `v_head_dim` is not read)
/// or `b`/`h` is outside the batch or the query heads; [`Error::AllocationFailed`] when the
/// `q_len × kv_len` matrix does not fit in memory.
pub fn scores(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    dims: &Dims,
    b: usize,
    h: usize,
) -> Result<Vec<f64>, Error> {
    let found = validate(q, k, k, opts, None)?;
    let mismatch = |dim, expected, found| Error::ShapeMismatch { operand: Operand::Query, dim, expected, found };
    let fields = |d: &Dims| [d.batch, d.q_len, d.kv_len, d.q_heads, d.kv_heads, d.head_dim];
    const NAMES: [&str; 6] = ["batch", "q_len", "kv_len", "q_heads", "kv_heads", "head_dim"];
    for ((name, e), f) in NAMES.iter().zip(fields(&found)).zip(fields(dims)) {
        if e != f {
            return Err(mismatch(name, e, f));
        }
    }
    if b >= found.batch {
        return Err(mismatch("batch row (must be < batch)", found.batch, b));
    }
    if h >= found.q_heads {
        return Err(mismatch("head (must be < q_heads)", found.q_heads, h));
    }
    let dims = found;
    let len = dims.q_len.checked_mul(dims.kv_len).ok_or(Error::ShapeOverflow { operand: Operand::Query })?;
    let mut s = filled(len, f64::NEG_INFINITY, Operand::Query)?;
    let call = Call::new(q, opts, dims);
    let keys = widen(k, b, h / (dims.q_heads / dims.kv_heads), Operand::Key)?;
    let mut q_row = Vec::with_capacity(dims.head_dim);
    for (i, row) in s.chunks_exact_mut(dims.kv_len.max(1)).enumerate().take(dims.q_len) {
        call.query(b, i, h, &mut q_row);
        call.score_row(&keys, b, h, i, None, &q_row, &mut row[..dims.kv_len], None);
    }
    Ok(s)
}

/// Naive attention over all batches and heads.
///
/// Rows with no visible key give zeros and LSE `-inf` (or the sink logit with learned sinks).
/// Returns the same `Err` as the kernels' entry points for arguments they reject.
pub fn attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
) -> Result<Reference, Error> {
    let dims = validate(q, k, v, opts, None)?;
    compute(q, k, v, opts, dims, None, None)
}

/// [`attention`] plus the per-row and per-element quantities an error model needs
/// ([`Reference::stats`] is `Some`). About twice the work of [`attention`].
pub fn attention_with_stats(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
) -> Result<Reference, Error> {
    let dims = validate(q, k, v, opts, None)?;
    let mut stats = Stats::default();
    let mut r = compute(q, k, v, opts, dims, None, Some(&mut stats))?;
    r.stats = Some(stats);
    Ok(r)
}

/// The reference of a call whose sizes have been validated, with keys also hidden where `keep`
/// says so, and optionally the error-model quantities.
fn compute(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    dims: Dims,
    keep: Keep<'_>,
    mut stats: Option<&mut Stats>,
) -> Result<Reference, Error> {
    let d = dims;
    // The size contract bounds every count by isize::MAX elements, but a legal call (a stride-0
    // buffer under a huge kv_len) can still ask for more memory than there is: every buffer is
    // reserved fallibly, and the per-row ones only when there is a row to score.
    // batch and q_len are the only extents that may be 0 (heads and dims are not), so multiplying
    // them first keeps every partial product within the size contract.
    let rows = d.batch * d.q_len * d.q_heads;
    let (n, dv) = (d.kv_len, d.v_head_dim);
    let mut out = filled(d.batch * d.q_len * d.q_heads * d.v_head_dim, 0.0f64, Operand::Output)?;
    let mut lse = filled(rows, f64::NEG_INFINITY, Operand::Lse)?;
    if let Some(st) = stats.as_deref_mut() {
        st.rows = filled(rows, RowStats { max_logit: f64::NEG_INFINITY, ..RowStats::default() }, Operand::Lse)?;
        st.elems = filled(out.len(), ElemStats { gain: 1.0, ..ElemStats::default() }, Operand::Output)?;
        st.softcap = opts.softcap.map(|c| c as f64);
        st.rope = opts.rope_q.is_some();
        st.gated = opts.output_gate.is_some();
    }
    if rows == 0 {
        return Ok(Reference { dims, out, lse, stats: None });
    }
    let call = Call::new(q, opts, dims);
    let (mut q_row, mut s, mut p) = (Vec::new(), filled(n, 0.0f64, Operand::Key)?, filled(n, 0.0f64, Operand::Key)?);
    let mut dot_sq = filled(if stats.is_some() { n } else { 0 }, 0.0f64, Operand::Key)?;
    let mut acc = vec![0.0f64; dv];
    for b in 0..d.batch {
        for kvh in 0..d.kv_heads {
            let (keys, values) = (widen(k, b, kvh, Operand::Key)?, widen(v, b, kvh, Operand::Value)?);
            let group = d.q_heads / d.kv_heads;
            for h in kvh * group..(kvh + 1) * group {
                let sink = opts.sinks.map(|s| s[h] as f64);
                for i in 0..d.q_len {
                    let row_idx = (b * d.q_heads + h) * d.q_len + i;
                    let out_idx = ((b * d.q_len + i) * d.q_heads + h) * dv;
                    let mut rs = RowStats { max_logit: f64::NEG_INFINITY, ..RowStats::default() };
                    call.query(b, i, h, &mut q_row);
                    let rstats = stats.is_some().then_some((&mut rs, &mut dot_sq[..]));
                    call.score_row(&keys, b, h, i, keep, &q_row, &mut s, rstats);
                    // NaN propagates into the maximum, as into every sum below.
                    let mut m = s.iter().fold(f64::NEG_INFINITY, |a, &x| if x > a || x.is_nan() { x } else { a });
                    if let Some(sk) = sink {
                        m = if sk > m { sk } else { m };
                    }
                    if m == f64::NEG_INFINITY {
                        if let Some(st) = stats.as_deref_mut() {
                            st.rows[row_idx] = rs;
                        }
                        continue; // no visible key: zeros, LSE -inf
                    }
                    let mut denom = sink.map_or(0.0, |sk| math::exp(sk - m));
                    for (pj, &sj) in p.iter_mut().zip(&s) {
                        *pj = math::exp(sj - m);
                        denom += *pj;
                    }
                    lse[row_idx] = m + math::ln(denom);
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (j, &pj) in p.iter().enumerate() {
                        // A hidden key's value is never read, so a NaN there stays out of the row.
                        if s[j] == f64::NEG_INFINITY && !(call.is_visible(b, h, i, j, keep)) {
                            continue;
                        }
                        for (a, &x) in acc.iter_mut().zip(&values[j * dv..(j + 1) * dv]) {
                            *a += pj * x;
                        }
                    }
                    for (o, a) in out[out_idx..out_idx + dv].iter_mut().zip(&acc) {
                        *o = a / denom;
                    }
                    if let Some(st) = stats.as_deref_mut() {
                        rs.max_logit = m;
                        rs.sink_weight = sink.map_or(0.0, |sk| math::exp(sk - m) / denom);
                        rs.weight_sq = p.iter().map(|x| (x / denom) * (x / denom)).sum();
                        let finite = |j: &usize| s[*j].is_finite();
                        rs.dot_weight = math::sqrt(
                            (0..n).filter(finite).map(|j| (p[j] / denom) * (p[j] / denom) * dot_sq[j]).sum(),
                        );
                        st.rows[row_idx] = rs;
                        let elems = &mut st.elems[out_idx..out_idx + dv];
                        let row = RowData { s: &s, p: &p, dot_sq: &dot_sq, denom, sink_weight: rs.sink_weight };
                        element_stats(&row, &values, &out[out_idx..out_idx + dv], elems);
                    }
                    if let Some(gate) = &opts.output_gate {
                        for (e, o) in out[out_idx..out_idx + dv].iter_mut().enumerate() {
                            if let Some(st) = stats.as_deref_mut() {
                                if gate.mode == GateMode::Multiplicative {
                                    st.elems[out_idx + e].gain = gate_value(gate, b, i, h, e);
                                }
                            }
                            *o = gate_f64(gate, b, i, h, e, *o);
                        }
                    }
                }
            }
        }
    }
    // Rows with no visible key are still gated (0 · g or 0 + g).
    if let Some(gate) = &opts.output_gate {
        for b in 0..d.batch {
            for h in 0..d.q_heads {
                for i in 0..d.q_len {
                    if lse[(b * d.q_heads + h) * d.q_len + i] != f64::NEG_INFINITY {
                        continue;
                    }
                    let out_idx = ((b * d.q_len + i) * d.q_heads + h) * dv;
                    for (e, o) in out[out_idx..out_idx + dv].iter_mut().enumerate() {
                        if let Some(st) = stats.as_deref_mut() {
                            if gate.mode == GateMode::Multiplicative {
                                st.elems[out_idx + e].gain = gate_value(gate, b, i, h, e);
                            }
                        }
                        *o = gate_f64(gate, b, i, h, e, *o);
                    }
                }
            }
        }
    }
    Ok(Reference { dims, out, lse, stats: None })
}

/// `n` copies of `value`, or [`Error::AllocationFailed`] naming what they were for.
fn filled<T: Clone>(n: usize, value: T, operand: Operand) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::AllocationFailed { operand, bytes: n.saturating_mul(core::mem::size_of::<T>()) })?;
    v.resize(n, value);
    Ok(v)
}

impl Call<'_, '_> {
    fn is_visible(&self, b: usize, h: usize, i: usize, j: usize, keep: Keep<'_>) -> bool {
        let d = &self.dims;
        let pos = visibility::position(self.opts, d.q_len, d.kv_len, i);
        visibility::sees(self.opts, pos, j) && keep.is_none_or(|f| f(b, h / (d.q_heads / d.kv_heads), i, j))
    }
}

/// One row's scores, unnormalised weights, per-key dot rounding scales and denominator.
struct RowData<'r> {
    s: &'r [f64],
    p: &'r [f64],
    dot_sq: &'r [f64],
    denom: f64,
    sink_weight: f64,
}

/// Fills the per-element quantities of one row from its data, values `[kv_len, dv]` and
/// (ungated) output.
fn element_stats(row: &RowData<'_>, values: &[f64], o: &[f64], e: &mut [ElemStats]) {
    let (s, p, denom, sink_w) = (row.s, row.p, row.denom, row.sink_weight);
    let dv = o.len();
    let mut prefix = vec![0.0f64; dv];
    for (x, &od) in e.iter_mut().zip(o) {
        x.ungated = od;
        x.spread = sink_w * od.abs();
        x.spread_rms = (sink_w * od) * (sink_w * od);
    }
    for (j, &pj) in p.iter().enumerate() {
        if !s[j].is_finite() {
            continue;
        }
        let w = pj / denom;
        for ((x, (&vjd, &od)), run) in e.iter_mut().zip(values[j * dv..(j + 1) * dv].iter().zip(o)).zip(&mut prefix) {
            let dev = (vjd - od).abs();
            x.spread += w * dev;
            x.spread_rms += (w * dev) * (w * dev);
            x.dot_spread += (w * dev) * (w * dev) * row.dot_sq[j];
            x.magnitude += w * vjd.abs();
            x.value_abs = x.value_abs.max(vjd.abs());
            *run += w * vjd;
            x.prefix = x.prefix.max(run.abs());
        }
    }
    for x in e.iter_mut() {
        x.spread_rms = math::sqrt(x.spread_rms);
        x.dot_spread = math::sqrt(x.dot_spread);
    }
}
