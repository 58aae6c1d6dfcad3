//! The sparse attention kernel: each query row attends to its listed keys only.
//!
//! A work unit is one query row and one KV head, with the query heads of the head's GQA group as
//! its rows (they share the list). The listed keys that the mask options also allow are gathered
//! `BC` at a time into contiguous f32 tiles (K and V widened once per group), scored with the
//! kernel's dot products, folded into the online-softmax state and multiplied into the output
//! with the same microkernels as dense attention. Only visible keys are gathered, so no masking
//! happens inside a tile and a hidden key's non-finite value can never reach a row. Units are
//! independent and visit their lists in order, so results do not depend on the thread count.

use crate::driver::{Inputs, Sink};
use crate::element::{Element, Elems};
use crate::error::{Error, Operand};
use crate::kernel::{dispatch_kv, Kernel, KvVisitor};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::softmax::{add_sink, finish_row};
use crate::sparse::indices::{SparseIndices, PAD};
use crate::tensor::{Tensor, TensorMut};
use crate::Dims;

/// Keys gathered per tile.
const BC: usize = 64;

/// Sparse attention: `O ← softmax(scale · Q Kᵀ) V` per query row over the keys its list names.
///
/// A listed key is used when the mask options (causal, window, right window, sink tokens) also
/// let the row see it, so DeepSeek's "top-k plus causal mask" is `indices` with
/// `AttentionOptions::new().causal()`. Every other option of [`AttentionOptions`] applies as in
/// [`attention`](crate::attention): scale, softcap, ALiBi, bias, learned sinks, the fused query
/// RoPE and the output gate (G1). A row whose list names no visible key gets zeros and LSE
/// `-inf` (the sink logit with learned sinks). Cost `O(rows · k · head_dim)`; results are
/// bit-identical for every thread count. On `Err` nothing has been written.
///
/// # Errors
/// Those of [`attention_with_scratch`](crate::attention_with_scratch) (the size contract of
/// [`Dims::validate`] included: a stride-0 K/V of any logical `kv_len` up to `isize::MAX` is
/// accepted and costs only the listed keys), then the index list's [`Error::ShapeMismatch`],
/// [`Error::ShapeOverflow`], [`Error::IndexOutOfRange`] and [`Error::DuplicateIndex`],
/// [`Error::ShapeOverflow`] for a worker scratch that cannot be counted, and the ISA errors of
/// [`AttentionOptions::resolved_isa`] (the ISA the call runs).
///
/// ```
/// use gated_attention::sparse::{sparse_attention, SparseIndices, PAD};
/// use gated_attention::{AttentionOptions, Tensor, TensorMut};
/// // 2 queries, 4 keys, 1 head, head_dim 2; values are the key numbers.
/// let q = [0.0f32; 4];
/// let k = [0.0f32; 8];
/// let v = [0.0f32, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
/// // Query 0 lists keys 1 and 3, query 1 lists key 2 and a padding slot.
/// let idx = [1, 3, 2, PAD];
/// let mut o = [0.0f32; 4];
/// sparse_attention(
///     &Tensor::bshd(&q[..], 1, 2, 1, 2),
///     &Tensor::bshd(&k[..], 1, 4, 1, 2),
///     &Tensor::bshd(&v[..], 1, 4, 1, 2),
///     &SparseIndices::shared(&idx, 1, 2, 2),
///     TensorMut::bshd(&mut o[..], 1, 2, 1, 2),
///     None,
///     &AttentionOptions::new(),
/// )?;
/// assert_eq!(o, [2.0, 2.0, 2.0, 2.0]); // mean of keys 1 and 3; key 2 alone
/// # Ok::<(), gated_attention::Error>(())
/// ```
pub fn sparse_attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    indices: &SparseIndices<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
) -> Result<(), Error> {
    let plan = Plan::new(Dims::from_tensors(q, k, v)?, opts)?;
    plan.check_buffers(q, k, v, &out, lse.as_deref())?;
    indices.validate(&plan.dims)?;
    let d = &plan.dims;
    // With a query row, batch · q_len · kv_heads ≤ Q's element count ≤ isize::MAX.
    let units = if d.q_len == 0 { 0 } else { d.batch * d.q_len * d.kv_heads };
    let scratch =
        if units == 0 { 0 } else { scratch_len(d).ok_or(Error::ShapeOverflow { operand: Operand::Scratch })? };
    let isa = opts.resolved_isa()?;
    if units == 0 {
        return Ok(());
    }
    let sink = Sink { out_layout: out.layout, out: out.data, lse };
    dispatch_kv(isa, Call { plan: &plan, q, k, v, indices, sink, units, scratch }, k.data, v.data);
    Ok(())
}

struct Call<'p, 'a, 't, 'o> {
    plan: &'p Plan<'a>,
    q: &'t Tensor<'t>,
    k: &'t Tensor<'t>,
    v: &'t Tensor<'t>,
    indices: &'t SparseIndices<'t>,
    sink: Sink<'o>,
    /// Units `(batch, query row, KV head)`, at least one.
    units: usize,
    /// f32 scratch of one worker.
    scratch: usize,
}

/// The read-only operands of a call with K and V of known element types.
struct Operands<'a, KE: Element, VE: Element> {
    tensors: Inputs<'a, KE, VE>,
    indices: SparseIndices<'a>,
}

impl KvVisitor for Call<'_, '_, '_, '_> {
    fn visit<K: Kernel, KE: Element, VE: Element>(self, kernel: K, k: &[KE], v: &[VE]) {
        let tensors = Inputs { q: *self.q, k, k_layout: self.k.layout, v, v_layout: self.v.layout };
        let ops = Operands { tensors, indices: *self.indices };
        let plan = self.plan;
        let (units, len) = (self.units, self.scratch);
        match plan.opts.parallelism {
            #[cfg(feature = "rayon")]
            crate::Parallelism::Rayon => {
                use rayon::prelude::*;
                let shared = crate::parallel::SharedSink::new(self.sink);
                (0..units).into_par_iter().with_min_len(4).for_each(|unit| {
                    crate::parallel::with_scratch(len, |buf| {
                        run_unit(kernel, plan, &ops, unit, buf, |b, i, h, row, lse| {
                            // SAFETY: unit (b, i, kvh) alone writes the rows of its group's heads
                            // at (b, i); `shared` was built from a live, checked `Sink`.
                            unsafe { shared.write(plan, b, i, h, row, lse) }
                        })
                    })
                });
            }
            _ => {
                let mut sink = self.sink;
                let mut buf = alloc::vec![0.0f32; len];
                for unit in 0..units {
                    run_unit(kernel, plan, &ops, unit, &mut buf, |b, i, h, row, lse| {
                        sink.write(plan, b, i, h, row, lse)
                    });
                }
            }
        }
    }
}

/// f32 scratch of one worker (the slices `run_unit` takes), or `None` when it cannot be
/// counted or would span more than `isize::MAX` bytes.
fn scratch_len(d: &Dims) -> Option<usize> {
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let terms = [
        g.checked_mul(dk)?,
        BC.checked_mul(dk)?,
        BC.checked_mul(dv)?,
        g.checked_mul(BC)?,
        g.checked_mul(3)?,
        g.checked_mul(dv)?,
    ];
    let n = terms.iter().try_fold(0usize, |a, &x| a.checked_add(x))?;
    (n <= isize::MAX as usize / core::mem::size_of::<f32>()).then_some(n)
}

fn take<'s>(buf: &mut &'s mut [f32], n: usize) -> &'s mut [f32] {
    let (head, tail) = core::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
}

/// Computes unit `unit` = (batch, query row, KV head) and hands its finished rows to `write`.
fn run_unit<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    ops: &Operands<'_, KE, VE>,
    unit: usize,
    mut buf: &mut [f32],
    mut write: impl FnMut(usize, usize, usize, &[f32], f32),
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let kvh = unit % d.kv_heads;
    let i = (unit / d.kv_heads) % d.q_len;
    let b = unit / (d.kv_heads * d.q_len);
    let qs = take(&mut buf, g * dk);
    let ks = take(&mut buf, BC * dk);
    let vs = take(&mut buf, BC * dv);
    let s = take(&mut buf, g * BC);
    let m = take(&mut buf, g);
    let l = take(&mut buf, g);
    let alpha = take(&mut buf, g);
    let acc = take(&mut buf, g * dv);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    acc.fill(0.0);
    load_queries(kernel, plan, &ops.tensors.q, b, i, kvh, qs);
    let rk = plan.mask.row(i);
    let visible = |j: usize| j < rk.sinks_end || (rk.lo <= j && j < rk.hi);
    let mut keys = [0usize; BC];
    let mut n = 0;
    let list = ops.indices.row(b, i, kvh);
    for (slot, &e) in list.iter().enumerate() {
        if e != PAD && visible(e as usize) {
            keys[n] = e as usize;
            n += 1;
        }
        if n == BC || (slot + 1 == list.len() && n > 0) {
            // The next tile's rows are scattered beyond the hardware prefetchers' reach: request
            // them now, to arrive while this tile is computed (faster in 4 of 5 alternating runs of
            // sparse_bench at L 4096, by about 8%).
            let t = &ops.tensors;
            for &e in list[slot + 1..].iter().take(BC) {
                if e != PAD && visible(e as usize) {
                    kernel.prefetch(&t.k[t.k_layout.offset(b, e as usize, kvh)..], 1, dk, 0);
                    kernel.prefetch(&t.v[t.v_layout.offset(b, e as usize, kvh)..], 1, dv, 0);
                }
            }
            let tile = Tile { b, i, kvh, keys: &keys[..n] };
            attend_tile(kernel, plan, ops, &tile, qs, ks, vs, s, m, l, alpha, acc);
            n = 0;
        }
    }
    for r in 0..g {
        let h = kvh * g + r;
        let acc_r = &mut acc[r * dv..(r + 1) * dv];
        if let Some(sinks) = plan.opts.sinks {
            add_sink(&mut m[r], &mut l[r], acc_r, sinks[h]);
        }
        let lse = finish_row(m[r], l[r], acc_r);
        if let Some(gate) = &plan.opts.output_gate {
            gate.apply_row(b, i, h, acc_r);
        }
        write(b, i, h, acc_r, lse);
    }
}

/// Widens the group's query rows at `(b, i)` into `qs`, rotated when asked, times the scale.
fn load_queries<K: Kernel>(kernel: K, plan: &Plan<'_>, q: &Tensor<'_>, b: usize, i: usize, kvh: usize, qs: &mut [f32]) {
    let (g, dk) = (plan.dims.group(), plan.dims.head_dim);
    for (r, dst) in qs.chunks_exact_mut(dk).enumerate() {
        let off = q.layout.offset(b, i, kvh * g + r);
        match q.data {
            Elems::F32(x) => kernel.widen(&x[off..off + dk], dst),
            Elems::F16(x) => kernel.widen(&x[off..off + dk], dst),
            Elems::BF16(x) => kernel.widen(&x[off..off + dk], dst),
        }
        if let Some(rope) = &plan.opts.rope_q {
            rope.table.rotate_row(dst, rope.positions.get(b, i, plan.dims.q_len));
        }
        kernel.scale(dst, plan.scale);
    }
}

/// The keys of one gathered tile.
struct Tile<'k> {
    b: usize,
    i: usize,
    kvh: usize,
    keys: &'k [usize],
}

/// Folds one tile of gathered keys into the group's state `(m, l, acc)`.
#[allow(clippy::too_many_arguments)]
fn attend_tile<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    ops: &Operands<'_, KE, VE>,
    tile: &Tile<'_>,
    qs: &[f32],
    ks: &mut [f32],
    vs: &mut [f32],
    s: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
    acc: &mut [f32],
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let n = tile.keys.len();
    let t = &ops.tensors;
    for (&j, dst) in tile.keys.iter().zip(ks.chunks_exact_mut(dk)) {
        let off = t.k_layout.offset(tile.b, j, tile.kvh);
        kernel.widen(&t.k[off..off + dk], dst);
    }
    for (&j, dst) in tile.keys.iter().zip(vs.chunks_exact_mut(dv)) {
        let off = t.v_layout.offset(tile.b, j, tile.kvh);
        kernel.widen(&t.v[off..off + dv], dst);
    }
    let s = &mut s[..g * n];
    kernel.dot_rows(g, n, dk, qs, dk, &ks[..n * dk], dk, s, n);
    let o = &plan.opts;
    if o.softcap.is_some() || o.alibi_slopes.is_some() || o.bias.is_some() {
        for (r, row) in s.chunks_exact_mut(n).enumerate() {
            adjust_scores(plan, tile, tile.kvh * g + r, row);
        }
    }
    kernel.softmax_rows(s, n, g, n, m, l, alpha);
    kernel.gemm_rescale(g, dv, n, s, n, &vs[..n * dv], dv, acc, dv, alpha);
}

/// Softcap, ALiBi and bias on head `h`'s scores of the tile's keys.
fn adjust_scores(plan: &Plan<'_>, tile: &Tile<'_>, h: usize, row: &mut [f32]) {
    let o = &plan.opts;
    if let Some(c) = o.softcap {
        let inv = crate::driver::softcap_reciprocal(c);
        for x in row.iter_mut() {
            *x = c * libm::tanhf(*x * inv);
        }
    }
    if let Some(slopes) = o.alibi_slopes {
        // Validated sizes keep positions and keys within ±isize::MAX: exact in i64.
        let pos = plan.mask.q_offset + tile.i as i64;
        for (x, &j) in row.iter_mut().zip(tile.keys) {
            *x -= slopes[h] * pos.abs_diff(j as i64) as f32;
        }
    }
    if let Some(bias) = &o.bias {
        for (x, &j) in row.iter_mut().zip(tile.keys) {
            *x += bias.data[bias.offset(tile.b, h, tile.i, j)];
        }
    }
}
