//! The attention loop nest, generic over the ISA kernel and the K/V element types.
//!
//! Work is cut into units `(batch, kv_head, q_tile, kv_chunk)`. A unit's rows are all query heads
//! of one GQA group times the queries of its tile (head-major: row `r = g·tq + i`), so every K/V
//! tile is loaded and widened once per group. Prefill units span the whole KV range; when the
//! queries fit one tile (decode) the KV range is cut into fixed chunks whose partial states are
//! merged in chunk order. Nothing here depends on the number of threads, so results are
//! bit-identical for every thread count.

use crate::element::{Element, Elems, ElemsMut};
use crate::kernel::Kernel;
use crate::mask::RowKeys;
use crate::plan::Plan;
use crate::softmax::{add_sink, finish_row, merge_row};
use crate::tensor::{Layout, Tensor};

/// Keys per KV tile.
pub(crate) const BC: usize = 64;
/// Rows (query heads × queries) a prefill unit aims for.
const ROWS_TARGET: usize = 64;
/// At most this many rows score keys straight from memory (decode); more rows stage K transposed.
const DOT_ROWS_MAX: usize = 8;
/// Keys per chunk when a single query tile splits the KV range (flash decoding).
pub(crate) const SPLIT_CHUNK: usize = 1024;

/// How a call is cut into units; a pure function of the sizes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiling {
    /// Queries per tile.
    pub tq: usize,
    /// Query tiles per (batch, kv_head).
    pub q_tiles: usize,
    /// KV chunks per query tile.
    pub chunks: usize,
    /// Keys per chunk (a multiple of `BC`), or the whole range when `chunks == 1`.
    pub chunk_len: usize,
    /// Rows of the largest unit.
    pub rows: usize,
}

impl Tiling {
    pub fn new(plan: &Plan<'_>) -> Tiling {
        let d = &plan.dims;
        let g = d.group();
        let tq = (ROWS_TARGET / g).max(1).min(d.q_len.max(1));
        let q_tiles = d.q_len.div_ceil(tq);
        let (chunks, chunk_len) = if q_tiles == 1 && d.kv_len > SPLIT_CHUNK {
            (d.kv_len.div_ceil(SPLIT_CHUNK), SPLIT_CHUNK)
        } else {
            (1, d.kv_len.max(1))
        };
        Tiling { tq, q_tiles, chunks, chunk_len, rows: tq * g }
    }

    /// Units that produce output rows: `(batch, kv_head, q_tile)`.
    pub fn units(&self, plan: &Plan<'_>) -> usize {
        plan.dims.batch * plan.dims.kv_heads * self.q_tiles
    }
}

/// Scratch of one worker, carved out of one f32 slice.
pub(crate) struct Scratch<'s> {
    qs: &'s mut [f32],
    kt: &'s mut [f32],
    s: &'s mut [f32],
    vs: &'s mut [f32],
    pub state: RowState<'s>,
    pub total: RowState<'s>,
}

/// `(m, l, acc)` of the rows of one unit.
pub(crate) struct RowState<'s> {
    pub m: &'s mut [f32],
    pub l: &'s mut [f32],
    pub acc: &'s mut [f32],
}

impl RowState<'_> {
    pub fn reset(&mut self, rows: usize, dv: usize) {
        self.m[..rows].fill(f32::NEG_INFINITY);
        self.l[..rows].fill(0.0);
        self.acc[..rows * dv].fill(0.0);
    }
}

/// f32 elements of one worker's scratch.
pub(crate) fn worker_scratch_len(plan: &Plan<'_>, t: &Tiling) -> usize {
    let (dk, dv) = (plan.dims.head_dim, plan.dims.v_head_dim);
    t.rows * dk + dk * BC + t.rows * BC + BC * dv + 2 * t.rows * (dv + 2)
}

fn split<'s>(buf: &mut &'s mut [f32], n: usize) -> &'s mut [f32] {
    let (head, tail) = core::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
}

impl<'s> Scratch<'s> {
    pub fn carve(plan: &Plan<'_>, t: &Tiling, mut buf: &'s mut [f32]) -> Scratch<'s> {
        let (dk, dv, rows) = (plan.dims.head_dim, plan.dims.v_head_dim, t.rows);
        let qs = split(&mut buf, rows * dk);
        let kt = split(&mut buf, dk * BC);
        let s = split(&mut buf, rows * BC);
        let vs = split(&mut buf, BC * dv);
        let mut state = || RowState { m: split(&mut buf, rows), l: split(&mut buf, rows), acc: split(&mut buf, rows * dv) };
        let state_a = state();
        let total = state();
        Scratch { qs, kt, s, vs, state: state_a, total }
    }
}

/// Identifies one unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unit {
    pub b: usize,
    pub kvh: usize,
    pub q_tile: usize,
}

impl Unit {
    pub fn from_index(idx: usize, plan: &Plan<'_>, t: &Tiling) -> Unit {
        let q_tile = idx % t.q_tiles;
        let rest = idx / t.q_tiles;
        Unit { b: rest / plan.dims.kv_heads, kvh: rest % plan.dims.kv_heads, q_tile }
    }
}

/// The read-only inputs of a call with K and V of known element types.
pub(crate) struct Inputs<'a, KE: Element, VE: Element> {
    pub q: Tensor<'a>,
    pub k: &'a [KE],
    pub k_layout: Layout,
    pub v: &'a [VE],
    pub v_layout: Layout,
}

/// The geometry of a unit: its queries and the keys any of its rows may see.
struct UnitSpan {
    q0: usize,
    tq: usize,
    rows: usize,
    /// Visible keys per query of the tile.
    keys: [RowKeys; ROWS_TARGET],
    /// Ranges of keys to visit, in order, as `[start, end)`.
    ranges: [(usize, usize); 2],
}

fn unit_span(plan: &Plan<'_>, t: &Tiling, u: &Unit) -> UnitSpan {
    let g = plan.dims.group();
    let q0 = u.q_tile * t.tq;
    let tq = t.tq.min(plan.dims.q_len - q0);
    let mut keys = [RowKeys { sinks_end: 0, lo: 0, hi: 0 }; ROWS_TARGET];
    let (mut sinks_end, mut lo, mut hi) = (0usize, usize::MAX, 0usize);
    for (i, key) in keys.iter_mut().enumerate().take(tq) {
        *key = plan.mask.row(q0 + i);
        sinks_end = sinks_end.max(key.sinks_end);
        if key.lo < key.hi {
            lo = lo.min(key.lo);
            hi = hi.max(key.hi);
        }
    }
    let ranges = if lo >= hi {
        [(0, sinks_end), (0, 0)]
    } else if sinks_end >= lo {
        [(0, hi), (0, 0)]
    } else {
        [(0, sinks_end), (lo, hi)]
    };
    UnitSpan { q0, tq, rows: tq * g, keys, ranges }
}

/// Widens the unit's queries into `qs` (head-major rows), multiplied by the scale.
fn load_queries<K: Kernel>(kernel: K, plan: &Plan<'_>, q: &Tensor<'_>, u: &Unit, span: &UnitSpan, qs: &mut [f32]) {
    let (g, dk) = (plan.dims.group(), plan.dims.head_dim);
    for hg in 0..g {
        let h = u.kvh * g + hg;
        for i in 0..span.tq {
            let r = hg * span.tq + i;
            let off = q.layout.offset(u.b, span.q0 + i, h);
            let dst = &mut qs[r * dk..(r + 1) * dk];
            match q.data {
                Elems::F32(d) => kernel.widen(&d[off..off + dk], dst),
                Elems::F16(d) => kernel.widen(&d[off..off + dk], dst),
                Elems::BF16(d) => kernel.widen(&d[off..off + dk], dst),
            }
            #[cfg(feature = "alloc")]
            if let Some(rope) = &plan.opts.rope_q {
                let p = rope.positions.get(u.b, span.q0 + i, plan.dims.q_len);
                rope.table.rotate_row(dst, p);
            }
            kernel.scale(dst, plan.scale);
        }
    }
}

/// Computes the unit's state over the keys `[k_begin, k_end)` into `st` (reset first).
pub(crate) fn run_unit<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    u: &Unit,
    chunk: usize,
    sc: &mut Scratch<'_>,
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let span = unit_span(plan, t, u);
    let rows = span.rows;
    sc.state.reset(rows, dv);
    let (k_begin, k_end) = (chunk * t.chunk_len, ((chunk + 1) * t.chunk_len).min(d.kv_len));
    if k_begin >= k_end {
        return;
    }
    load_queries(kernel, plan, &inp.q, u, &span, sc.qs);
    let k_ld = inp.k_layout.strides[1];
    let v_ld = inp.v_layout.strides[1];
    // LOOP 1: the (at most two) key ranges the unit's rows can see, clipped to the chunk.
    for &(r0, r1) in &span.ranges {
        let (r0, r1) = (r0.max(k_begin), r1.min(k_end));
        let mut j0 = r0;
        // LOOP 2: KV tiles.
        while j0 < r1 {
            let j1 = (j0 + BC).min(r1);
            let n = j1 - j0;
            let boundary = !span.keys[..span.tq].iter().all(|rk| rk.covers(j0, j1));
            let s = &mut sc.s[..rows * BC];
            // S = (scale·Q)·Kᵀ
            let k_off = inp.k_layout.offset(u.b, j0, u.kvh);
            let k_tile = &inp.k[k_off..];
            if rows <= DOT_ROWS_MAX {
                kernel.dot_rows(rows, n, dk, sc.qs, dk, k_tile, k_ld, s, BC);
            } else {
                kernel.transpose_widen(n, dk, k_tile, k_ld, sc.kt, BC);
                kernel.gemm(rows, n, dk, sc.qs, dk, sc.kt, BC, s, BC, false);
            }
            // Score epilogue and online softmax, row by row.
            for hg in 0..g {
                let h = u.kvh * g + hg;
                for i in 0..span.tq {
                    let r = hg * span.tq + i;
                    let row = &mut s[r * BC..r * BC + n];
                    adjust_scores(plan, u.b, h, span.q0 + i, j0, row);
                    if boundary {
                        mask_row(&span.keys[i], j0, row);
                    }
                    let m_old = sc.state.m[r];
                    let tile_max = kernel.max(row);
                    let m_new = if tile_max > m_old || tile_max.is_nan() { tile_max } else { m_old };
                    if m_new == f32::NEG_INFINITY {
                        // Either nothing is visible yet, or every visible score is NaN and the
                        // kernel's max skipped them: NaN must reach the row, not vanish as zeros.
                        if row.iter().any(|x| x.is_nan()) {
                            sc.state.l[r] = f32::NAN;
                            row.fill(f32::NAN);
                        } else {
                            row.fill(0.0);
                        }
                        continue;
                    }
                    let alpha = libm::expf(m_old - m_new);
                    let sum = kernel.exp_sum(row, m_new);
                    sc.state.l[r] = sc.state.l[r] * alpha + sum;
                    if alpha != 1.0 {
                        kernel.scale(&mut sc.state.acc[r * dv..(r + 1) * dv], alpha);
                    }
                    sc.state.m[r] = m_new;
                }
            }
            // O += P·V, V staged contiguous: read in place, head-interleaved layouts put rows a
            // multiple of 4 KiB apart, where the B strip of the microkernel thrashes L1.
            let v_off = inp.v_layout.offset(u.b, j0, u.kvh);
            for jj in 0..n {
                let src = &inp.v[v_off + jj * v_ld..v_off + jj * v_ld + dv];
                kernel.widen(src, &mut sc.vs[jj * dv..(jj + 1) * dv]);
            }
            let (v_tile, ld): (&[f32], usize) = (&sc.vs[..], dv);
            if boundary && !tile_is_finite(v_tile, n, dv, ld) {
                // 0·NaN would leak a hidden key's non-finite value into rows that cannot see
                // it: multiply each row by its visible keys only.
                for (i, rk) in span.keys[..span.tq].iter().enumerate() {
                    for (a, b) in visible_segments(rk, j0, j1) {
                        for hg in 0..g {
                            let r = hg * span.tq + i;
                            let p = &s[r * BC + (a - j0)..];
                            let acc = &mut sc.state.acc[r * dv..(r + 1) * dv];
                            kernel.gemm(1, dv, b - a, p, BC, &v_tile[(a - j0) * ld..], ld, acc, dv, true);
                        }
                    }
                }
            } else {
                kernel.gemm(rows, dv, n, s, BC, v_tile, ld, sc.state.acc, dv, true);
            }
            j0 = j1;
        }
    }
}

/// True when the `n × dv` tile holds no NaN or infinity.
fn tile_is_finite(v: &[f32], n: usize, dv: usize, ld: usize) -> bool {
    (0..n).all(|j| v[j * ld..j * ld + dv].iter().all(|x| x.is_finite()))
}

/// The visible sub-ranges of `[j0, j1)` for one row.
fn visible_segments(rk: &RowKeys, j0: usize, j1: usize) -> impl Iterator<Item = (usize, usize)> {
    let a = (j0, rk.sinks_end.min(j1));
    let b = (rk.lo.max(j0), rk.hi.min(j1));
    [a, b].into_iter().filter(|(x, y)| x < y)
}

/// Softcap, ALiBi and bias on one row of scores for query `i`, keys `j0..`.
#[inline]
fn adjust_scores(plan: &Plan<'_>, b: usize, h: usize, i: usize, j0: usize, row: &mut [f32]) {
    let o = &plan.opts;
    if let Some(c) = o.softcap {
        let inv = 1.0 / c;
        for x in row.iter_mut() {
            *x = c * libm::tanhf(*x * inv);
        }
    }
    if let Some(slopes) = o.alibi_slopes {
        let slope = slopes[h];
        let pos = plan.mask.q_offset + i as i64;
        for (jj, x) in row.iter_mut().enumerate() {
            let dist = (pos - (j0 + jj) as i64).unsigned_abs() as f32;
            *x -= slope * dist;
        }
    }
    if let Some(bias) = &o.bias {
        for (jj, x) in row.iter_mut().enumerate() {
            *x += bias.data[bias.offset(b, h, i, j0 + jj)];
        }
    }
}

/// Sets the scores of hidden keys to -inf.
#[inline]
fn mask_row(rk: &RowKeys, j0: usize, row: &mut [f32]) {
    for (jj, x) in row.iter_mut().enumerate() {
        let j = j0 + jj;
        if !(j < rk.sinks_end || (rk.lo <= j && j < rk.hi)) {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Destination of finished rows: the output tensor and the optional LSE.
pub(crate) struct Sink<'o> {
    pub out: ElemsMut<'o>,
    pub out_layout: Layout,
    pub lse: Option<&'o mut [f32]>,
}

/// Applies learned sinks, normalises the unit's rows in `st` and hands each to `write`.
pub(crate) fn finish_unit(
    plan: &Plan<'_>,
    t: &Tiling,
    u: &Unit,
    st: &mut RowState<'_>,
    mut write: impl FnMut(usize, usize, usize, &[f32], f32),
) {
    let d = &plan.dims;
    let (g, dv) = (d.group(), d.v_head_dim);
    let q0 = u.q_tile * t.tq;
    let tq = t.tq.min(d.q_len - q0);
    for hg in 0..g {
        let h = u.kvh * g + hg;
        for i in 0..tq {
            let r = hg * tq + i;
            let acc = &mut st.acc[r * dv..(r + 1) * dv];
            if let Some(sinks) = plan.opts.sinks {
                add_sink(&mut st.m[r], &mut st.l[r], acc, sinks[h]);
            }
            let lse = finish_row(st.m[r], st.l[r], acc);
            if let Some(gate) = &plan.opts.output_gate {
                gate.apply_row(u.b, q0 + i, h, acc);
            }
            write(u.b, q0 + i, h, acc, lse);
        }
    }
}

/// Merges a chunk's partial rows `(m, l, acc)` into `total`, row by row.
pub(crate) fn merge_unit(rows: usize, dv: usize, total: &mut RowState<'_>, m: &[f32], l: &[f32], acc: &[f32]) {
    for r in 0..rows {
        merge_row(
            &mut total.m[r],
            &mut total.l[r],
            &mut total.acc[r * dv..(r + 1) * dv],
            m[r],
            l[r],
            &acc[r * dv..(r + 1) * dv],
        );
    }
}

impl Sink<'_> {
    /// Writes one finished row.
    pub fn write(&mut self, plan: &Plan<'_>, b: usize, i: usize, h: usize, row: &[f32], lse: f32) {
        let off = self.out_layout.offset(b, i, h);
        let dv = row.len();
        match &mut self.out {
            ElemsMut::F32(o) => o[off..off + dv].copy_from_slice(row),
            ElemsMut::F16(o) => {
                for (d, &x) in o[off..off + dv].iter_mut().zip(row) {
                    *d = half::f16::from_f32(x);
                }
            }
            ElemsMut::BF16(o) => {
                for (d, &x) in o[off..off + dv].iter_mut().zip(row) {
                    *d = half::bf16::from_f32(x);
                }
            }
        }
        if let Some(l) = self.lse.as_deref_mut() {
            let d = &plan.dims;
            l[(b * d.q_heads + h) * d.q_len + i] = lse;
        }
    }
}
