//! The attention loop nest, generic over the ISA kernel and the K/V element types.
//!
//! Work is cut into units `(batch, kv-head block, q_tile, kv_chunk)`. A unit's rows are the query
//! heads of its KV heads' GQA groups times the queries of its tile (head-major: row
//! `r = (hl·g + hg)·tq + i` for the `hl`-th KV head of the block), so every K/V tile is loaded and
//! widened once per group. Scores are kept transposed (`Sᵀ`, keys × rows): the softmax then
//! runs down the columns, eight rows per vector, and P·V reads P as a transposed A operand.
//! Prefill units hold one KV head and span the whole KV range; their scores are a gemm,
//! `Sᵀ = K·(scale·Q)ᵀ`, with K as it lies (widened) and Qᵀ made once per unit. Decode units (a few
//! rows per KV head) hold a block of KV heads and score every head of the block key by key, so a
//! BSHD cache is read in address order; their KV range is cut into fixed chunks whose partial
//! states are merged in chunk order. Sparse attention's units (a block of neighbouring query rows
//! and one KV head, [`gathered`]) run the same steps on the union of the rows' listed keys,
//! gathered into contiguous tiles and masked per row. Nothing here depends on the number of
//! threads, so results are bit-identical for every thread count.

use crate::element::{Elems, Storage};
use crate::error::{Error, Operand};
use crate::exec::StateShape;
use crate::kernel::geometry::MAX_ROWS_TARGET;
use crate::kernel::scales::scale_heads;
use crate::kernel::{Geometry, Kernel, PvHeads};
use crate::mask::RowKeys;
use crate::plan::Plan;
use crate::sink::Sink;
use crate::softmax::{add_sink, finish_row};
use crate::tensor::{Layout, Tensor};
use panel::{Panel, PanelKey};

#[cfg(feature = "alloc")]
pub(crate) mod gathered;
pub(crate) mod panel;

/// Most keys per chunk when a single query tile splits the KV range (flash decoding).
pub(crate) const SPLIT_CHUNK: usize = 1024;
/// Fewest keys per chunk.
const SPLIT_MIN: usize = 256;
/// Units × chunks a split call aims for, so that a few threads balance.
const SPLIT_TASKS: usize = 16;
/// Most KV chunks per query tile. Beyond `MAX_CHUNKS · SPLIT_CHUNK` keys the chunks grow
/// instead, so the split-KV partials (one state per unit and chunk) stay a bounded multiple of
/// the output however long the (possibly stride-0) key sequence is, and a unit's loop over its
/// chunks stays short when the mask shows it only a few keys of a huge sequence.
const MAX_CHUNKS: usize = 256;

/// A decode unit whose KV heads' rows lie apart in memory (a head-major cache, where each head's
/// keys and values are streams of their own) covers the fewest heads whose key rows add up to at
/// least this many bytes, but never fewer than [`APART_UNIT_MIN_HEADS`]: 2 heads of every type
/// at D 128 (int8 at D 64 takes 4). With all 8 heads of the D1/D2 shape in one unit, each thread
/// read 16 streams at once. On the Zen 3 host of stop 23, paired call by call on head-major K/V
/// (D2 shape, 32768 keys, cold, 2 threads), against 8 heads per unit: f16 (2 heads) 1.27–1.39×
/// faster, bf16 (2) 1.07×, f32 (2) 1.06–1.17×, int8 (4) 1.09–1.16×, D1 f16 (8192 keys) 1.15×,
/// one thread f16 1.09×; f16 with 2 heads against 4 1.11–1.12×; int8 with 4 against 2 the same;
/// from cache (512 keys on 1 thread, 2048 on 2) the same time (`benches/README.md`, stop 23).
/// The bytes went from 512 to 256 in stop 27, on a Zen 3 host again: int8 at D 128 from 4 heads
/// to 2 (with its P·V chunks of 8 keys, [`PV_CHUNK_KEYS`]: an `Int8KvCache` at 8192 and 32768
/// keys, cold, 2 threads, 1.04–1.27× faster in eight runs, 1 thread 1.04×, from cache
/// 1.02–1.14×; each change alone 1.04–1.12×). At D 64 f16 and bf16 went from 4 heads to 2
/// (1.04–1.06× faster cold, 0.99× from cache) and int8 from 8 to 4 (1.05–1.13× cold); f32
/// stayed at 2 (its control: 1.01×).
const APART_UNIT_KEY_BYTES: usize = 256;

/// The fewest KV heads of a decode unit on head-major K/V ([`APART_UNIT_KEY_BYTES`]). One head
/// per unit measured 1.03–1.06× faster than two with f32 on the Zen 3 host of stop 23, but on
/// the faster-memory host of 2026-11-30 (`benches/README.md`, "Issue 11's rows, 2026-11-30,
/// later") units of one head took 1.27–1.28× the time of eight on the f16 and int8 caches, and
/// of two heads 0.95× (f16) and 1.06× (int8).
const APART_UNIT_MIN_HEADS: usize = 2;

/// How a call is cut into units; a pure function of the sizes, the K/V storage's bytes per value
/// and whether the K/V layouts are head-major ([`heads_apart`]), never of the thread count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiling {
    /// Queries per tile.
    pub tq: usize,
    /// Query tiles per (batch, kv-head block).
    pub q_tiles: usize,
    /// KV heads per unit (the last block of a batch may hold fewer).
    pub hb: usize,
    /// KV-head blocks per batch.
    pub blocks: usize,
    /// KV chunks per query tile.
    pub chunks: usize,
    /// Keys per chunk (a multiple of `bc`), or the whole range when `chunks == 1`.
    pub chunk_len: usize,
    /// Rows of the largest unit (`hb · g · tq`).
    pub rows: usize,
    /// Keys per KV tile (`geo.bc`, or `geo.decode_keys(..)` when the rows score keys from memory,
    /// `geo.bc` for gathered keys, of which few-row units use `geo.gather_bc`).
    pub bc: usize,
    /// The tiles of the kernel that runs the call.
    pub geo: Geometry,
    /// f32 elements of one unit's scratch, besides its online-softmax state (0 when the call
    /// has no unit).
    pub unit_scratch: usize,
    /// f32 elements of the calling thread's scratch: `unit_scratch` and two states (a chunk's and
    /// the merged one; see [`crate::exec::split_scratch_len`]).
    pub scratch: usize,
}

impl Tiling {
    /// Cuts a validated plan into units, with K and V stored in `kv_bytes`-byte values, whose
    /// KV heads' rows lie apart when `heads_apart` ([`heads_apart`]); [`Error::ShapeOverflow`]
    /// for the scratch when one worker's scratch cannot be counted in `usize` (or allocated as
    /// f32s). A call with `heads_apart` never needs more scratch than one without.
    pub fn new(plan: &Plan<'_>, geo: Geometry, kv_bytes: usize, heads_apart: bool) -> Result<Tiling, Error> {
        let d = &plan.dims;
        let g = d.group();
        let tq = (geo.rows_target / g).max(1).min(d.q_len.max(1));
        let q_tiles = d.q_len.div_ceil(tq);
        let head_rows = tq * g;
        let decode = head_rows <= geo.dot_rows_max;
        let mut hb = if decode { (geo.rows_target / head_rows).clamp(1, d.kv_heads.max(1)) } else { 1 };
        if decode && heads_apart {
            // Saturating: a call without keys accepts any head_dim.
            let heads = APART_UNIT_KEY_BYTES.div_ceil(d.head_dim.saturating_mul(kv_bytes).max(1));
            hb = hb.min(heads.max(APART_UNIT_MIN_HEADS));
        }
        let blocks = d.kv_heads.div_ceil(hb);
        let bc = if decode { geo.decode_keys(kv_bytes, streams_bytes(plan, kv_bytes, kv_bytes)) } else { geo.bc };
        let (mut chunks, mut chunk_len) = (1, d.kv_len.max(1));
        if q_tiles == 1 && d.kv_len > SPLIT_MIN {
            // With q_len ≥ 1, batch · blocks ≤ batch · q_heads ≤ Q's element count ≤ isize::MAX.
            let want = SPLIT_TASKS.div_ceil((d.batch * blocks).max(1));
            let len = d.kv_len.div_ceil(want).clamp(SPLIT_MIN, SPLIT_CHUNK);
            // kv_len ≤ isize::MAX, so rounding up to a multiple of bc cannot overflow.
            let len = len.max(d.kv_len.div_ceil(MAX_CHUNKS)).next_multiple_of(bc);
            if len < d.kv_len {
                (chunks, chunk_len) = (d.kv_len.div_ceil(len), len);
            }
        }
        let rows = hb * head_rows;
        Tiling { tq, q_tiles, hb, blocks, chunks, chunk_len, rows, bc, geo, unit_scratch: 0, scratch: 0 }.sized(plan)
    }

    /// Keys per tile the scratch holds: `geo.bc`, or the decode tiles' length where a streaming
    /// call's exceeds it ([`Geometry::decode_keys`]).
    fn scratch_keys(&self) -> usize {
        self.geo.bc.max(self.bc)
    }

    /// Fills in the scratch sizes of a call that has units.
    fn sized(mut self, plan: &Plan<'_>) -> Result<Tiling, Error> {
        if self.units(plan) > 0 {
            let overflow = Error::ShapeOverflow { operand: Operand::Scratch };
            self.unit_scratch = unit_scratch_len(plan, &self).ok_or(overflow.clone())?;
            self.scratch = crate::exec::split_scratch_len(self.state(plan), self.unit_scratch)
                .filter(|&n| n <= isize::MAX as usize / core::mem::size_of::<f32>())
                .ok_or(overflow)?;
        }
        Ok(self)
    }

    /// Units that produce output rows: `(batch, kv-head block, q_tile)`. With a query, the
    /// product is at most `batch · kv_heads · q_len` ≤ Q's element count, so it fits; without
    /// one, `batch · blocks` alone may not.
    pub fn units(&self, plan: &Plan<'_>) -> usize {
        if self.q_tiles == 0 {
            return 0;
        }
        plan.dims.batch * self.blocks * self.q_tiles
    }

    /// Sparse attention's cut: units of up to `block_rows` query rows and one KV head (rows: the
    /// head's GQA group times the block's rows), each over the keys the rows list, gathered
    /// `geo.bc` (few rows: `geo.gather_bc`) at a time. Never split. `q_tiles` counts rows, so
    /// [`Tiling::units`] is non-zero exactly when the call has rows; the units themselves are the
    /// blocks'.
    #[cfg(feature = "alloc")]
    pub fn gathered(plan: &Plan<'_>, geo: Geometry, block_rows: usize) -> Result<Tiling, Error> {
        let d = &plan.dims;
        let rows = d.group().checked_mul(block_rows).ok_or(Error::ShapeOverflow { operand: Operand::Scratch })?;
        let t = Tiling {
            tq: block_rows,
            q_tiles: d.q_len,
            hb: 1,
            blocks: d.kv_heads,
            chunks: 1,
            chunk_len: d.kv_len.max(1),
            rows,
            bc: geo.bc,
            geo,
            unit_scratch: 0,
            scratch: 0,
        };
        t.sized(plan)
    }

    /// The layout of a unit's online-softmax state.
    pub fn state(&self, plan: &Plan<'_>) -> StateShape {
        StateShape { rows: self.rows, dv: plan.dims.v_head_dim }
    }
}

/// True when `layout` is head-major: a head's rows of successive keys lie closer together than
/// one key's rows of successive heads, so each head's keys are a stream of their own. In a
/// key-major layout (BSHD, padded or not) a key's rows of every head lie together.
pub(crate) fn heads_apart(layout: &Layout) -> bool {
    layout.shape[2] > 1 && layout.strides[2] > layout.strides[1]
}

/// Scratch of one worker, carved out of one f32 slice.
pub(crate) struct Scratch<'s> {
    qs: &'s mut [f32],
    /// Prefill: the queries transposed (`dk × rows`), B of the scores' gemm.
    qt: &'s mut [f32],
    /// Prefill: the K tile widened (`BC × dk`), A of the scores' gemm.
    ks: &'s mut [f32],
    /// The transposed scores (`BC × rows`).
    s: &'s mut [f32],
    /// Scratch for kernels that rearrange operands first (`rows · BC + BC · dv`).
    tmp: &'s mut [f32],
    vs: &'s mut [f32],
    alpha: &'s mut [f32],
    state: RowState<'s>,
}

/// `(m, l, acc)` of the rows of one unit.
pub(crate) struct RowState<'s> {
    pub m: &'s mut [f32],
    pub l: &'s mut [f32],
    pub acc: &'s mut [f32],
}

impl<'s> RowState<'s> {
    /// The state laid out as `shape` in `flat`.
    pub fn of(shape: StateShape, flat: &'s mut [f32]) -> RowState<'s> {
        let (m, l, acc) = shape.split(flat);
        RowState { m, l, acc }
    }

    pub fn reset(&mut self, rows: usize, dv: usize) {
        self.m[..rows].fill(f32::NEG_INFINITY);
        self.l[..rows].fill(0.0);
        self.acc[..rows * dv].fill(0.0);
    }
}

/// f32 elements of one unit's scratch (the slices [`Scratch::carve`] takes from it), or `None`
/// when the count overflows or the bytes would exceed `isize::MAX`. The head dimensions are
/// bounded only by `isize::MAX` here (a call without queries may name any), so every step is checked.
fn unit_scratch_len(plan: &Plan<'_>, t: &Tiling) -> Option<usize> {
    let (dk, dv, rows, bc) = (plan.dims.head_dim, plan.dims.v_head_dim, t.rows, t.scratch_keys());
    let terms = [
        2usize.checked_mul(rows)?.checked_mul(dk)?,
        bc.checked_mul(dk)?,
        2usize.checked_mul(rows)?.checked_mul(bc)?,
        2usize.checked_mul(bc)?.checked_mul(dv)?,
        rows,
        // Each of the seven slices may skip up to a line to start on one (see `split`).
        7 * (crate::exec::LINE - 1),
    ];
    let n = terms.iter().try_fold(0usize, |a, &x| a.checked_add(x))?;
    (n <= isize::MAX as usize / core::mem::size_of::<f32>()).then_some(n)
}

/// The next `n` floats of `buf` from its next cache line on: a 16-float row of an operand the
/// microkernels stream (Qᵀ, the K and V tiles, the scores) is then one line, not two.
fn split<'s>(buf: &mut &'s mut [f32], n: usize) -> &'s mut [f32] {
    let (head, tail) = crate::exec::line_aligned(core::mem::take(buf)).split_at_mut(n);
    *buf = tail;
    head
}

impl<'s> Scratch<'s> {
    /// Carves a unit's scratch from `buf`, with `state` (of [`Tiling::state`]'s layout) as its state.
    pub fn carve(plan: &Plan<'_>, t: &Tiling, mut buf: &'s mut [f32], state: &'s mut [f32]) -> Scratch<'s> {
        let (dk, dv, rows, bc) = (plan.dims.head_dim, plan.dims.v_head_dim, t.rows, t.scratch_keys());
        let qs = split(&mut buf, rows * dk);
        let qt = split(&mut buf, dk * rows);
        let ks = split(&mut buf, bc * dk);
        let s = split(&mut buf, rows * bc);
        let tmp = split(&mut buf, rows * bc + bc * dv);
        let vs = split(&mut buf, bc * dv);
        let alpha = split(&mut buf, rows);
        let state = RowState::of(t.state(plan), state);
        Scratch { qs, qt, ks, s, tmp, vs, alpha, state }
    }
}

/// Identifies one unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unit {
    pub b: usize,
    /// First KV head.
    pub kvh: usize,
    /// KV heads.
    pub nh: usize,
    pub q_tile: usize,
}

impl Unit {
    pub fn from_index(idx: usize, plan: &Plan<'_>, t: &Tiling) -> Unit {
        let q_tile = idx % t.q_tiles;
        let rest = idx / t.q_tiles;
        let kvh = (rest % t.blocks) * t.hb;
        Unit { b: rest / t.blocks, kvh, nh: t.hb.min(plan.dims.kv_heads - kvh), q_tile }
    }

    /// Queries of the unit's tile.
    pub fn tq(&self, plan: &Plan<'_>, t: &Tiling) -> usize {
        t.tq.min(plan.dims.q_len - self.q_tile * t.tq)
    }

    /// Rows of the unit.
    pub fn rows(&self, plan: &Plan<'_>, t: &Tiling) -> usize {
        self.nh * plan.dims.group() * self.tq(plan, t)
    }
}

/// The read-only inputs of a call with K and V of known storage types.
pub(crate) struct Inputs<'a, KE: Storage, VE: Storage> {
    pub q: Tensor<'a>,
    pub k: &'a [KE],
    pub k_layout: Layout,
    pub v: &'a [VE],
    pub v_layout: Layout,
    /// The row scales of int8 K and V; `None` for float storage.
    pub scales: Option<KvScales<'a>>,
    /// The call's id for the threads' K/V panels ([`panel`]); `None` stages every tile in the
    /// unit's scratch.
    #[cfg(feature = "std")]
    pub panel_call: Option<u64>,
}

/// The per-row scales of int8 K and V: row `(b, j, h)` of K stands for
/// `k[k_layout.offset(b, j, h)] · K[b, j, h, ..]` (V likewise). The loop nest applies them where
/// they cost least and change no masking: a prefill unit dequantises its staged K and V tiles; a
/// decode tile scales its scores by K's (before the score options, as the reference sees them)
/// and its probabilities by V's (after the row sums, which are over the unscaled ones), or its
/// staged V rows when the tile has hidden keys (so that the NaN containment sees the values).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvScales<'a> {
    pub k: &'a [f32],
    pub k_layout: Layout,
    pub v: &'a [f32],
    pub v_layout: Layout,
}

/// The geometry of a unit: its queries and the keys any of its rows may see.
struct UnitSpan {
    q0: usize,
    tq: usize,
    /// Visible keys per query of the tile.
    keys: [RowKeys; MAX_ROWS_TARGET],
    /// Ranges of keys to visit, in order, as `[start, end)`.
    ranges: [(usize, usize); 2],
}

impl UnitSpan {
    /// The queries, for the tiles.
    fn queries(&self) -> TileQueries<'_> {
        TileQueries { q0: self.q0, tq: self.tq, keys: &self.keys[..self.tq] }
    }
}

/// The queries of a unit as its tiles see them: `tq` queries from `q0`, and the keys each may see.
#[derive(Clone, Copy)]
struct TileQueries<'a> {
    q0: usize,
    tq: usize,
    keys: &'a [RowKeys],
}

fn unit_span(plan: &Plan<'_>, t: &Tiling, u: &Unit) -> UnitSpan {
    let q0 = u.q_tile * t.tq;
    let tq = u.tq(plan, t);
    let mut keys = [RowKeys { sinks_end: 0, lo: 0, hi: 0 }; MAX_ROWS_TARGET];
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
    UnitSpan { q0, tq, keys, ranges }
}

/// Widens the unit's queries `q0..q0 + tq` into `qs` (head-major rows), rotated when the options
/// ask, multiplied by the scale.
pub(crate) fn load_queries<K: Kernel>(
    kernel: K,
    plan: &Plan<'_>,
    q: &Tensor<'_>,
    u: &Unit,
    (q0, tq): (usize, usize),
    qs: &mut [f32],
) {
    let (g, dk) = (plan.dims.group(), plan.dims.head_dim);
    for (r, h, i) in head_rows(u, g, tq) {
        let off = q.layout.offset(u.b, q0 + i, h);
        let dst = &mut qs[r * dk..(r + 1) * dk];
        match q.data {
            Elems::F32(d) => kernel.widen(&d[off..off + dk], dst),
            Elems::F16(d) => kernel.widen(&d[off..off + dk], dst),
            Elems::BF16(d) => kernel.widen(&d[off..off + dk], dst),
        }
        #[cfg(feature = "alloc")]
        if let Some(rope) = &plan.opts.rope_q {
            let p = rope.positions.get(u.b, q0 + i, plan.dims.q_len);
            rope.table.rotate_row(dst, p);
        }
        kernel.scale(dst, plan.scale);
    }
}

/// Requests from memory, towards L2, what follows the KV tiles of unit `u` (number `idx`): its
/// output rows, which its finish writes, and the queries of unit `idx + 1`, which the thread most
/// likely loads next (a pool task is a run of consecutive units). In a BSHD layout a head's rows
/// lie 4 KiB or more apart, one row per page, and the hardware prefetchers do not follow them: P3
/// spent ~6% of its time in the queries' loads and the output's stores before the prefill units
/// requested them during their last tile.
///
/// # Safety
/// No other thread writes unit `u`'s rows during the call (as [`finish_into`]).
pub(crate) unsafe fn prefetch_after_tiles<K: Kernel>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    q: &Tensor<'_>,
    (idx, u): (usize, &Unit),
    sink: &Sink<'_>,
) {
    let (g, dk, dv) = (plan.dims.group(), plan.dims.head_dim, plan.dims.v_head_dim);
    if idx + 1 < t.units(plan) {
        let next = Unit::from_index(idx + 1, plan, t);
        let q0 = next.q_tile * t.tq;
        for (_, h, i) in head_rows(&next, g, next.tq(plan, t)) {
            let off = q.layout.offset(next.b, q0 + i, h);
            match q.data {
                Elems::F32(d) => kernel.prefetch(&d[off..off + dk], 1, dk, dk),
                Elems::F16(d) => kernel.prefetch(&d[off..off + dk], 1, dk, dk),
                Elems::BF16(d) => kernel.prefetch(&d[off..off + dk], 1, dk, dk),
            }
        }
    }
    let q0 = u.q_tile * t.tq;
    for (_, h, i) in head_rows(u, g, u.tq(plan, t)) {
        // SAFETY: row (b, q0 + i, h) is one of unit `u`'s, which no other thread writes.
        unsafe { sink.prefetch_row(kernel, u.b, q0 + i, h, dv) };
    }
}

/// The rows of unit `u`'s query heads for `tq` queries of a tile, in the order of its state:
/// `(r, h, i)`, with `r` the row's index in the state, `h` its query head and `i` its query in
/// the tile.
fn head_rows(u: &Unit, g: usize, tq: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let kvh = u.kvh;
    (0..u.nh * g).flat_map(move |hu| (0..tq).map(move |i| (hu * tq + i, kvh * g + hu, i)))
}

/// Computes the unit's state over the keys of chunk `chunk` into `sc.state` (reset first).
/// A prefill unit (more rows than `dot_heads` takes) calls `after_tiles` once, during its last
/// KV tile, after the scores' gemm: the place to request what the caller reads or writes next
/// ([`prefetch_after_tiles`]).
pub(crate) fn run_unit<K: Kernel, KE: Storage, VE: Storage>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    u: &Unit,
    chunk: usize,
    sc: &mut Scratch<'_>,
    after_tiles: impl Fn(),
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let span = unit_span(plan, t, u);
    let hr = g * span.tq;
    sc.state.reset(u.nh * hr, dv);
    let (k_begin, k_end) = (chunk * t.chunk_len, ((chunk + 1) * t.chunk_len).min(d.kv_len));
    // A chunk that no row of the unit can see leaves the reset state (m = -inf, l = 0): with a
    // sliding window over a long split-KV sequence that is most chunks, so skip even the queries.
    if !span.ranges.iter().any(|&(r0, r1)| r0.max(k_begin) < r1.min(k_end)) {
        return;
    }
    load_queries(kernel, plan, &inp.q, u, (span.q0, span.tq), sc.qs);
    let adjust = adjusts_scores(plan);
    // The KV tiles: the (at most two) key ranges the unit's rows can see, clipped to the chunk,
    // cut every `t.bc` keys.
    let tiles = span.ranges.iter().flat_map(|&(r0, r1)| {
        let (r0, r1) = (r0.max(k_begin), r1.min(k_end));
        (r0..r1).step_by(t.bc).map(move |j0| (j0, (j0 + t.bc).min(r1), (r0, r1)))
    });
    if hr <= t.geo.dot_rows_max {
        for (j0, j1, _) in tiles {
            let boundary = !span.keys[..span.tq].iter().all(|rk| rk.covers(j0, j1));
            let hidden = if boundary { Hidden::Outside(j0) } else { Hidden::None };
            decode_tile(kernel, plan, inp, u, &span.queries(), sc, j0, j1 - j0, hidden, adjust);
        }
        return;
    }
    // The scores are computed transposed, Sᵀ = K·(scale·Q)ᵀ (`n × hr`): K is the A operand as
    // it lies (no transpose per tile), Qᵀ is made once per unit, and the softmax runs down the
    // columns of Sᵀ, eight rows per vector, with no horizontal reductions.
    kernel.transpose_widen(hr, dk, &sc.qs[..hr * dk], dk, sc.qt, hr);
    #[cfg(feature = "std")]
    if let Some(call) = inp.panel_call {
        let key = PanelKey { call, b: u.b, kvh: u.kvh };
        return panel::with(|p| prefill_tiles(kernel, plan, t, inp, u, &span, tiles, sc, Some((p, key)), &after_tiles));
    }
    prefill_tiles(kernel, plan, t, inp, u, &span, tiles, sc, None, &after_tiles);
}

/// The KV tiles `(j0, j1, (r0, r1))` of a prefill unit (`r0..r1`: the tile's key range), with
/// its queries transposed in `sc.qt`: scores, softmax and P·V into `sc.state`. K and V are
/// staged contiguous f32 (in place, a head-interleaved layout puts a head's rows a multiple of
/// 4 KiB apart, where they evict each other from L1 between the gemm's column strips): into the
/// thread's K/V panel when one is given and has room, where the head's next query tiles find
/// them, else into `sc`.
#[allow(clippy::too_many_arguments)]
fn prefill_tiles<K: Kernel, KE: Storage, VE: Storage>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    u: &Unit,
    span: &UnitSpan,
    tiles: impl Iterator<Item = (usize, usize, (usize, usize))>,
    sc: &mut Scratch<'_>,
    mut panel: Option<(&mut Panel, PanelKey)>,
    after_tiles: &impl Fn(),
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let hr = g * span.tq;
    let adjust = adjusts_scores(plan);
    let (k_ld, v_ld) = (inp.k_layout.strides[1], inp.v_layout.strides[1]);
    let (b, kvh) = (u.b, u.kvh);
    let k_src =
        RowSource { data: inp.k, layout: &inp.k_layout, scales: inp.scales.as_ref().map(|s| (s.k, &s.k_layout)) };
    let v_src =
        RowSource { data: inp.v, layout: &inp.v_layout, scales: inp.scales.as_ref().map(|s| (s.v, &s.v_layout)) };
    let mut tiles = tiles.peekable();
    // LOOP: KV tiles.
    while let Some((j0, j1, (r0, r1))) = tiles.next() {
        let last = tiles.peek().is_none();
        let n = j1 - j0;
        let boundary = !span.keys[..span.tq].iter().all(|rk| rk.covers(j0, j1));
        let hidden = if boundary { Hidden::Outside(j0) } else { Hidden::None };
        let (c0, c1) = if boundary { live_columns(span, g, j0, j1) } else { (0, hr) };
        let st = &mut sc.s[..t.bc * hr];
        // The keys `fresh` of the tile are read from K and V and staged; the panel holds the rest.
        let reserved = panel.as_mut().and_then(|(p, key)| p.reserve(*key, r0, (j0, j1), dk, dv));
        let fresh = reserved.map_or(j0..j1, |r| r.first..r.end);
        // This tile's V arrives during the scores, the next tile's K after them.
        match &panel {
            Some((p, _)) if fresh.is_empty() => kernel.prefetch(p.v_rows((j0, j1), dv), n, dv, dv),
            _ if fresh.is_empty() => {}
            _ => kernel.prefetch(&inp.v[inp.v_layout.offset(b, fresh.start, kvh)..], fresh.len(), dv, v_ld),
        }
        let ks: &[f32] = match (&mut panel, reserved) {
            (Some((p, _)), Some(r)) => {
                stage_rows(kernel, k_src, (b, kvh), r.first..r.end, dk, p.rows_mut(r, dk, dv).0);
                p.k_rows((j0, j1), dk)
            }
            _ => {
                stage_rows(kernel, k_src, (b, kvh), j0..j1, dk, &mut sc.ks[..n * dk]);
                &sc.ks[..n * dk]
            }
        };
        if boundary {
            // Piece by piece, each only for the columns that see one of its keys: the epilogue
            // below sets every score the gemm skips to -inf, as it does every hidden one.
            let piece = boundary_piece::<K>();
            for a in (0..n).step_by(piece) {
                let e = (a + piece).min(n);
                if let Some((d0, d1)) = seen_columns(span, g, j0 + a, j0 + e) {
                    let st = &mut st[a * hr + d0..];
                    kernel.gemm(e - a, d1 - d0, dk, &ks[a * dk..], dk, &sc.qt[d0..], hr, st, hr, false);
                }
            }
        } else {
            kernel.gemm(n, hr, dk, ks, dk, sc.qt, hr, st, hr, false);
        }
        let next = (j1, (j1 + t.bc).min(r1));
        if next.0 < next.1 {
            match &panel {
                Some((p, key)) if p.holds(*key, next) => kernel.prefetch(p.k_rows(next, dk), next.1 - next.0, dk, dk),
                _ => kernel.prefetch(&inp.k[inp.k_layout.offset(b, j1, kvh)..], next.1 - next.0, dk, k_ld),
            }
        }
        if last {
            after_tiles();
        }
        // Score epilogue (only with options, or on tiles some row cannot fully see).
        if adjust || boundary {
            epilogue_t(plan, u, &span.queries(), st, hr, Keys::Run(j0), n, hidden, adjust, sc.tmp);
        }
        // Online softmax: P = exp(S - m_new), alpha = exp(m_old - m_new), l updated.
        let (m, l, alpha) = (&mut sc.state.m[c0..c1], &mut sc.state.l[c0..c1], &mut sc.alpha[c0..c1]);
        kernel.softmax_cols(&mut st[c0..], hr, n, c1 - c0, m, l, alpha, sc.tmp);
        // O = alpha·O + P·V.
        let vs: &[f32] = match (&mut panel, reserved) {
            (Some((p, _)), Some(r)) => {
                stage_rows(kernel, v_src, (b, kvh), r.first..r.end, dv, p.rows_mut(r, dk, dv).1);
                p.commit(r);
                p.v_rows((j0, j1), dv)
            }
            _ => {
                stage_rows(kernel, v_src, (b, kvh), j0..j1, dv, &mut sc.vs[..n * dv]);
                &sc.vs[..n * dv]
            }
        };
        let acc = &mut sc.state.acc[..hr * dv];
        let pv = PvBlock { w: n, rescale: Some(&sc.alpha[..hr]), ld: hr, live: (c0, c1) };
        pv_block(kernel, &span.queries(), g, dv, st, vs, acc, hidden, &pv, sc.tmp);
    }
}

/// Keys (of the scores' gemm) or rows (of P·V) per piece of a tile on the mask's boundary: two
/// blocks of the kernel's gemm rows. Each piece is computed over what its keys or rows can see,
/// not over the whole tile's live columns and keys: on the diagonal of a causal mask that is
/// a staircase under the triangle the mask leaves. P3 (causal L 2048, one query head per KV
/// head) computes 0.6% more scores than its rows see, instead of 2.7% with whole tiles, and
/// measured 1.3–2.1% faster (1 thread, 6 runs of each, alternating).
const BOUNDARY_PIECE_BLOCKS: usize = 2;

/// [`BOUNDARY_PIECE_BLOCKS`] in keys or rows, for kernel `K`.
fn boundary_piece<K: Kernel>() -> usize {
    BOUNDARY_PIECE_BLOCKS * K::GEOMETRY.gemm_mr
}

/// The columns `c0..c1` of a prefill unit's transposed scores (rows `hg·tq + i`, `g` heads)
/// outside which no row sees a key of the tile `j0..j1` ([`seen_columns`]), or all of them
/// when no row sees one (no mask the driver builds tiles for does this). A causal tile on the
/// diagonal is hidden from its tile's first queries, and a sliding window's oldest tile from
/// the last ones: those rows' states stay as they are (a tile they cannot see leaves `m`, `l`
/// and the output unchanged), so the gemms and the softmax skip them. With one query head per
/// KV head (P3, causal L 2048) that skipped 1.8% of the scores; measured 0.5% faster (medians
/// of 8 paired runs on 1 thread).
fn live_columns(span: &UnitSpan, g: usize, j0: usize, j1: usize) -> (usize, usize) {
    seen_columns(span, g, j0, j1).unwrap_or((0, g * span.tq))
}

/// From the first query that sees a key of `j0..j1`, in the first head, to the last that does,
/// in the last head, widened to whole vectors of 8; `None` when no query sees one.
fn seen_columns(span: &UnitSpan, g: usize, j0: usize, j1: usize) -> Option<(usize, usize)> {
    let tq = span.tq;
    let sees = |i: &usize| visible_segments(&span.keys[*i], j0, j1).next().is_some();
    let (first, last) = ((0..tq).find(sees)?, (0..tq).rev().find(sees)?);
    let c1 = (g - 1) * tq + last + 1;
    Some((first & !7, c1.next_multiple_of(8).min(g * tq)))
}

/// Widens the rows of `keys` (of KV head `kvh` in batch row `b`) into the consecutive `dim`-float
/// rows of `dst`, each times its scale when the storage is int8.
fn stage_rows<K: Kernel, E: Storage>(
    kernel: K,
    src: RowSource<'_, E>,
    (b, kvh): (usize, usize),
    keys: core::ops::Range<usize>,
    dim: usize,
    dst: &mut [f32],
) {
    for (j, row) in keys.zip(dst.chunks_exact_mut(dim)) {
        let off = src.layout.offset(b, j, kvh);
        kernel.widen(&src.data[off..off + dim], row);
        if let Some((s, sl)) = src.scales {
            kernel.scale(row, s[sl.offset(b, j, kvh)]);
        }
    }
}

/// K or V of a call as [`stage_rows`] reads it: the values, their layout, and for int8 the row
/// scales with theirs.
#[derive(Clone, Copy)]
struct RowSource<'a, E> {
    data: &'a [E],
    layout: &'a Layout,
    scales: Option<(&'a [f32], &'a Layout)>,
}

/// The score options and, on a tile some row cannot fully see, the mask, on transposed
/// scores (`n × ld`, row `r` of the unit is column `r`).
#[allow(clippy::too_many_arguments)]
fn epilogue_t(
    plan: &Plan<'_>,
    u: &Unit,
    span: &TileQueries<'_>,
    st: &mut [f32],
    ld: usize,
    keys: Keys<'_>,
    n: usize,
    hidden: Hidden<'_>,
    adjust: bool,
    tmp: &mut [f32],
) {
    let g = plan.dims.group();
    if adjust {
        for hu in 0..u.nh * g {
            let h = u.kvh * g + hu;
            for i in 0..span.tq {
                let r = hu * span.tq + i;
                let row = &mut tmp[..n];
                for (jj, x) in row.iter_mut().enumerate() {
                    *x = st[jj * ld + r];
                }
                adjust_scores(plan, u.b, h, span.q0 + i, keys, row);
                for (jj, &x) in row.iter().enumerate() {
                    st[jj * ld + r] = x;
                }
            }
        }
    }
    if let Hidden::Unlisted(masks) = hidden {
        // After the score options, as below. Key by key: its scores are a row of `st`, one
        // column per (head, query) pair, and the queries whose bit is clear do not list it. A
        // branch-free pass over each row (most keys are listed by most of a block's queries)
        // instead of the runs of each query down the columns.
        let (heads, tq) = (u.nh * g, span.tq);
        let full = all_rows(tq);
        for (jj, &m) in masks[..n].iter().enumerate() {
            if m == full {
                continue;
            }
            let row = &mut st[jj * ld..jj * ld + heads * tq];
            for lane in row.chunks_exact_mut(tq) {
                for (i, x) in lane.iter_mut().enumerate() {
                    *x = if m >> i & 1 != 0 { *x } else { f32::NEG_INFINITY };
                }
            }
        }
    } else if hidden.any() {
        // After the score options (a softcap would turn -inf into -c): everything outside each
        // query's visible runs, found once per query for all the heads that share its keys.
        let heads = u.nh * g;
        for i in 0..span.tq {
            let mut hide = |a: usize, b: usize| {
                for jj in a..b {
                    for hu in 0..heads {
                        st[jj * ld + hu * span.tq + i] = f32::NEG_INFINITY;
                    }
                }
            };
            let mut next = 0;
            hidden.visible_runs(&span.keys[i], i, n, |a, b| {
                hide(next, a);
                next = b;
            });
            hide(next, n);
        }
    }
}

/// The K and V rows of a decode tile: row `jj` of KV head `hl` of the unit is
/// `k[jj·k_ld + hl·k_hs..][..dk]` (V likewise).
struct TileRows<'a, KT: Storage, VT: Storage> {
    k: &'a [KT],
    k_ld: usize,
    k_hs: usize,
    v: &'a [VT],
    v_ld: usize,
    v_hs: usize,
    /// The same V rows already staged contiguous in f32 (a gathered tile's, one head), which the
    /// NaN containment of a tile with hidden keys then reads instead of staging them again.
    staged_v: Option<&'a [f32]>,
    /// The rows' int8 scales (see [`KvScales`]).
    scales: Option<TileScales<'a>>,
}

/// [`KvScales`] from a tile's first key on: key `jj` of KV head `hl` of the unit has the scales
/// `k[jj·k_ld + hl·k_hs]` and `v[jj·v_ld + hl·v_hs]`.
struct TileScales<'a> {
    k: &'a [f32],
    k_ld: usize,
    k_hs: usize,
    v: &'a [f32],
    v_ld: usize,
    v_hs: usize,
}

/// The scratch a decode tile's body writes.
struct TileScratch<'a, 's> {
    qs: &'a [f32],
    s: &'a mut [f32],
    tmp: &'a mut [f32],
    alpha: &'a mut [f32],
    state: &'a mut RowState<'s>,
    /// V rows staged for a boundary tile's NaN containment.
    vs: &'a mut [f32],
}

/// One tile of the `n` keys `j0..j0 + n` of a decode unit (a few rows per KV head, every head of
/// the block), read in place from the call's K/V: the scores, their options, the online softmax
/// and P·V.
#[allow(clippy::too_many_arguments)]
fn decode_tile<K: Kernel, KE: Storage, VE: Storage>(
    kernel: K,
    plan: &Plan<'_>,
    inp: &Inputs<'_, KE, VE>,
    u: &Unit,
    span: &TileQueries<'_>,
    sc: &mut Scratch<'_>,
    j0: usize,
    n: usize,
    hidden: Hidden<'_>,
    adjust: bool,
) {
    let (kl, vl) = (&inp.k_layout, &inp.v_layout);
    let body = TileScratch { qs: sc.qs, s: sc.s, tmp: sc.tmp, alpha: sc.alpha, state: &mut sc.state, vs: sc.vs };
    let rows = TileRows {
        k: &inp.k[kl.offset(u.b, j0, u.kvh)..],
        k_ld: kl.strides[1],
        k_hs: kl.strides[2],
        v: &inp.v[vl.offset(u.b, j0, u.kvh)..],
        v_ld: vl.strides[1],
        v_hs: vl.strides[2],
        staged_v: None,
        scales: inp.scales.map(|s| TileScales {
            k: &s.k[s.k_layout.offset(u.b, j0, u.kvh)..],
            k_ld: s.k_layout.strides[1],
            k_hs: s.k_layout.strides[2],
            v: &s.v[s.v_layout.offset(u.b, j0, u.kvh)..],
            v_ld: s.v_layout.strides[1],
            v_hs: s.v_layout.strides[2],
        }),
    };
    tile_body(kernel, plan, u, span, body, Keys::Run(j0), n, &rows, hidden, adjust);
}

/// [`decode_tile`] once its rows are located.
#[allow(clippy::too_many_arguments)]
fn tile_body<K: Kernel, KT: Storage, VT: Storage>(
    kernel: K,
    plan: &Plan<'_>,
    u: &Unit,
    span: &TileQueries<'_>,
    sc: TileScratch<'_, '_>,
    keys: Keys<'_>,
    n: usize,
    kv: &TileRows<'_, KT, VT>,
    hidden: Hidden<'_>,
    adjust: bool,
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let hr = g * span.tq;
    let rows = u.nh * hr;
    // Transposed scores `n × rows`: a block of 8 scores of one key is one store, and the softmax
    // runs down the columns.
    let st = &mut sc.s[..n * rows];
    // V read in place from a call that streams its K/V from memory is requested during P·V
    // ([`pv_chunks`]); any other tile's V rows are requested alongside the K rows.
    let stream_v = !hidden.any() && kv.staged_v.is_none() && streams_kv::<KT, VT>(plan);
    let pf = (kv.v, kv.v_ld, kv.v_hs, if stream_v { 0 } else { dv });
    let qs = &sc.qs[..rows * dk];
    let key_scales = kv.scales.as_ref().map(|s| (s.k, s.k_ld, s.k_hs));
    kernel.dot_heads(u.nh, hr, n, dk, qs, dk, kv.k, kv.k_ld, kv.k_hs, st, rows, pf, key_scales, sc.tmp);
    if adjust || hidden.any() {
        epilogue_t(plan, u, span, st, rows, keys, n, hidden, adjust, sc.tmp);
    }
    let (m, l) = (&mut sc.state.m[..rows], &mut sc.state.l[..rows]);
    kernel.softmax_cols(st, rows, n, rows, m, l, sc.alpha, sc.tmp);
    if let Some(s) = kv.scales.as_ref().filter(|_| !hidden.any()) {
        // After the row sums: V's scales weight the probabilities, as V is read in place below.
        scale_heads(st, rows, hr, n, u.nh, (s.v, s.v_ld, s.v_hs));
    }
    if !hidden.any() {
        let (acc, alpha) = (&mut sc.state.acc[..rows * dv], &sc.alpha[..rows]);
        pv_chunks(kernel, kv, (u.nh, hr, dv), n, stream_v, st, acc, alpha, sc.tmp);
        return;
    }
    for hl in 0..u.nh {
        let (r0, r1) = (hl * hr, (hl + 1) * hr);
        let p_h = &st[r0..];
        let acc = &mut sc.state.acc[r0 * dv..r1 * dv];
        let alpha = &sc.alpha[r0..r1];
        let v_h = &kv.v[hl * kv.v_hs..];
        // Staged, for the NaN containment of `pv_block`.
        let vs = match kv.staged_v {
            Some(staged) => staged,
            None => {
                for (t, dst) in sc.vs[..n * dv].chunks_exact_mut(dv).enumerate() {
                    kernel.widen(&v_h[t * kv.v_ld..t * kv.v_ld + dv], dst);
                    if let Some(s) = &kv.scales {
                        kernel.scale(dst, s.v[t * s.v_ld + hl * s.v_hs]);
                    }
                }
                &sc.vs[..n * dv]
            }
        };
        let pv = PvBlock { w: n, rescale: Some(alpha), ld: rows, live: (0, hr) };
        pv_block(kernel, span, g, dv, p_h, vs, acc, hidden, &pv, sc.tmp);
    }
}

/// Keys per chunk of a decode tile's P·V when it streams V ([`pv_chunks`]), whatever the type.
/// f16, bf16 and f32 chunks of 16 measured 0.87–0.95× against 8, of 12 0.93–1.01× (stop 25).
/// Int8 chunks held 16 keys from stop 25 to 27: on that Zen 4 host (1 MiB L2 per core) 16 against
/// 8 measured 1.01–1.05× (`Int8KvCache`, eight runs at 32768 keys, three at 8192) and BSHD int8
/// 1.03–1.04×, but on the Zen 3 host of stop 27 (512 KiB L2) 8 against 16 measured 1.04–1.12×
/// cold (`Int8KvCache`, 1 and 2 threads, five runs) and BSHD int8 1.02–1.07× (four runs; from
/// cache 0.96–0.98×). The chunk length follows the host; 8 is the one length for every type,
/// and with the int8 cache's units of 2 heads ([`APART_UNIT_KEY_BYTES`]) it measured 1.04–1.27×.
const PV_CHUNK_KEYS: usize = 8;

/// Chunks ahead of the one being multiplied whose V rows a streaming P·V requests when the
/// tile's heads lie apart (head-major K/V, as in `KvCache`): each head's rows are a stream of
/// their own, 2 KiB per chunk for f16 at D 128, and one chunk ahead left too little in flight.
/// Two against one, paired call by call (32/8 heads, D 128, 8192 and 32768 keys, cold, 2
/// threads, six runs of 61–101 pairs): f16 cache 1.05–1.08×, bf16 1.02–1.06×, f32 0.99–1.04×,
/// int8 0.99–1.02× (its chunks then held 8 keys; its 16-key chunks were measured with two
/// ahead); BSHD f16 K/V, one stream of 16 KiB per chunk, measured 0.98–0.99× with two
/// and keeps one (its unchanged runs moved 0.99–1.01× in the same pairs); three and four
/// chunks were no better than two (`benches/README.md`, stop 25).
const PV_CHUNKS_AHEAD_APART: usize = 2;

/// A call whose K and V hold more than this many bytes (counted as `batch · kv_heads` times the
/// keys some query sees ([`keys_read`]) rows of K and V elements, a heuristic) streams them from
/// memory: its decode tiles
/// request V during P·V ([`pv_chunks`]). Below it they may sit in the caches, where the chunks'
/// extra trips to L1 cost more than streaming gains: f16 cache, 32/8 heads, D 128, 1 thread,
/// warm, chunks against one pass (medians of 501 calls): 512 keys (2 MiB) 1.08–1.21× slower,
/// 1024 keys (4 MiB) anywhere from 1.33× faster to 1.17× slower, 2048 keys (8 MiB, beyond what
/// stayed cached) 1.28–1.44× faster (the head-major cache; the BSHD D2 shape gained 1.09–1.25×,
/// see [`pv_chunks`]). A layer's cache below this size that a model's other work evicted misses
/// the gain.
const STREAM_KV_MIN_BYTES: usize = 4 << 20;

/// True when the K and V rows the call reads exceed [`STREAM_KV_MIN_BYTES`].
fn streams_kv<KT: Storage, VT: Storage>(plan: &Plan<'_>) -> bool {
    streams_bytes(plan, size_of::<KT>(), size_of::<VT>())
}

/// [`streams_kv`] for K and V values of `k_bytes` and `v_bytes` bytes.
fn streams_bytes(plan: &Plan<'_>, k_bytes: usize, v_bytes: usize) -> bool {
    let d = &plan.dims;
    let row = d.head_dim.saturating_mul(k_bytes).saturating_add(d.v_head_dim.saturating_mul(v_bytes));
    d.batch.saturating_mul(keys_read(plan)).saturating_mul(d.kv_heads).saturating_mul(row) > STREAM_KV_MIN_BYTES
}

/// How many keys of each (batch row, KV head) some query of the call sees, at most: the sink
/// prefix of its last query and the keys from its first query's lowest to its last query's
/// highest (both bounds rise with the query's position). A sliding window reads its window, not
/// the whole cache: counted as the whole cache, a window of 512 or 1024 keys over a 32768-key f16
/// or int8 cache streamed its V in chunks, which from the caches ran 1.10–1.18× slower than one
/// pass (1 and 2 threads, warm, paired call by call; cold, 0.99–1.16×; stop 24).
fn keys_read(plan: &Plan<'_>) -> usize {
    let (d, mask) = (&plan.dims, &plan.mask);
    if d.q_len == 0 {
        return 0;
    }
    let (first, last) = (mask.row(0), mask.row(d.q_len - 1));
    (last.sinks_end + last.hi.saturating_sub(first.lo)).min(d.kv_len)
}

/// `acc ← diag(alpha)·acc + P·V` for every head of a tile whose rows see all its keys, V read
/// where it lies. With `stream`, [`PV_CHUNK_KEYS`] keys at a time, every head of the unit per
/// chunk, the V rows of the next chunk (of the one after it where the heads lie apart:
/// [`PV_CHUNKS_AHEAD_APART`]) requested as this one is multiplied, a share of them before each
/// head's product; without, one pass over the tile per head, its V requested already.
///
/// Why chunks: the scores' pass streams the K rows; requested alongside them, the V rows too
/// made the scores wait on twice the bytes while P·V read from L2 with nothing in flight, so a
/// cold decode took about the sum of its memory and arithmetic times. A per-head P·V over the
/// whole tile cannot stream V itself: in a key-major layout (BSHD) it walks one head's 256 bytes
/// of every key row, and requests in that order measured 0.76–0.85× (f16). Chunks across the
/// heads read V in key order (in a head-major cache, as runs of a chunk's rows per head); their
/// price is the accumulators' trip to L1 and back per chunk. Requested a whole chunk at once,
/// the rows measured 0.95–1.02× against the old order (f16), a share per head 1.23–1.25× (f16),
/// 1.15–1.24× (bf16), 1.09–1.12× (f32); chunks of 4 and 16 keys of those types were slower than
/// 8 (D2 shape, cold, paired call by call; `benches/README.md`, stop 22), and int8 follows the
/// host ([`PV_CHUNK_KEYS`]).
///
/// `kv` holds the tile's `n` key rows, `shape` is (heads, rows per head, dv), `st` the
/// transposed probabilities (`n × heads·hr`), `acc` the heads' `heads·hr` output rows of `dv`,
/// `alpha` their rescale factors, `tmp` the scratch of [`Kernel::pv_heads`], which runs the
/// chunks (one call per tile: a call per chunk and head cost about 5% of a step from cache).
#[allow(clippy::too_many_arguments)]
fn pv_chunks<K: Kernel, KT: Storage, VT: Storage>(
    kernel: K,
    kv: &TileRows<'_, KT, VT>,
    shape: (usize, usize, usize),
    n: usize,
    stream: bool,
    st: &[f32],
    acc: &mut [f32],
    alpha: &[f32],
    tmp: &mut [f32],
) {
    let (heads, hr, dv) = shape;
    // A head-major tile's heads are streams of their own (see [`PV_CHUNKS_AHEAD_APART`]).
    let ahead = if !stream {
        0
    } else if kv.v_hs > kv.v_ld {
        PV_CHUNKS_AHEAD_APART
    } else {
        1
    };
    let chunk = if stream { PV_CHUNK_KEYS } else { n };
    let pv = PvHeads { heads, hr, dv, n, v_ld: kv.v_ld, v_hs: kv.v_hs, chunk, ahead };
    kernel.pv_heads(pv, st, kv.v, acc, alpha, tmp);
}

/// A block of P·V: the tile's first `w` keys, the first `w` rows of the transposed scores.
struct PvBlock<'a> {
    w: usize,
    /// Rescale the output rows by these factors first.
    rescale: Option<&'a [f32]>,
    /// Leading dimension of the transposed scores.
    ld: usize,
    /// The rows `r0..r1` that may see a key of the block ([`live_columns`]); the others are
    /// left as they are.
    live: (usize, usize),
}

/// `acc (= alpha·acc) += P · V_block` for one KV head's rows, with `vs` the block's `w` V rows
/// staged contiguous and `s` the transposed scores from the head's first row (column) on.
#[allow(clippy::too_many_arguments)]
fn pv_block<K: Kernel>(
    kernel: K,
    span: &TileQueries<'_>,
    g: usize,
    dv: usize,
    s: &[f32],
    vs: &[f32],
    acc: &mut [f32],
    hidden: Hidden<'_>,
    pv: &PvBlock<'_>,
    tmp: &mut [f32],
) {
    let w = pv.w;
    let (r0, r1) = pv.live;
    if hidden.any() && !tile_is_finite(vs, w, dv, dv) {
        // 0·NaN would leak a hidden key's non-finite value into rows that cannot see it:
        // multiply each row by its visible keys only.
        if let Some(alpha) = pv.rescale {
            for (r, &a) in alpha.iter().enumerate().take(r1).skip(r0) {
                kernel.scale(&mut acc[r * dv..(r + 1) * dv], a);
            }
        }
        for (i, rk) in span.keys[..span.tq].iter().enumerate() {
            hidden.visible_runs(rk, i, w, |a, b| {
                for hg in 0..g {
                    let r = hg * span.tq + i;
                    let acc_r = &mut acc[r * dv..(r + 1) * dv];
                    let p = &s[a * pv.ld + r..];
                    kernel.gemm_at(1, dv, b - a, p, pv.ld, &vs[a * dv..], dv, acc_r, dv, None, tmp);
                }
            });
        }
    } else if let Hidden::Outside(j0) = hidden {
        // Piece by piece, each up to the last key one of its rows sees: the probabilities after
        // it are all 0, and adding `0·v` changes no sum.
        // The tile position after row `row`'s last visible key (0 when it sees none).
        let seen_end =
            |row: usize| visible_segments(&span.keys[row % span.tq], j0, j0 + w).last().map_or(0, |(_, b)| b - j0);
        let piece = boundary_piece::<K>();
        for r in (r0..r1).step_by(piece) {
            let e = (r + piece).min(r1);
            let k = (r..e).map(seen_end).fold(0, usize::max);
            let rescale = pv.rescale.map(|alpha| &alpha[r..e]);
            kernel.gemm_at(e - r, dv, k, &s[r..], pv.ld, vs, dv, &mut acc[r * dv..e * dv], dv, rescale, tmp);
        }
    } else {
        let rescale = pv.rescale.map(|alpha| &alpha[r0..r1]);
        kernel.gemm_at(r1 - r0, dv, w, &s[r0..], pv.ld, vs, dv, &mut acc[r0 * dv..r1 * dv], dv, rescale, tmp);
    }
}

/// True when the `n × dv` tile holds no NaN or infinity.
///
/// `x − x` is 0 for a finite `x` and NaN otherwise; summed into 8 independent lanes it is a pass
/// the compiler vectorises, with no branch per element (a tile is almost always finite, so an
/// early exit would not pay: the scalar test with one was 4% of a sparse call's time).
#[allow(clippy::eq_op)] // `x - x` is the test, not a slip.
fn tile_is_finite(v: &[f32], n: usize, dv: usize, ld: usize) -> bool {
    let mut lanes = [0.0f32; 8];
    for j in 0..n {
        let mut chunks = v[j * ld..j * ld + dv].chunks_exact(8);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += x - x;
            }
        }
        for (l, &x) in lanes.iter_mut().zip(chunks.remainder()) {
            *l += x - x;
        }
    }
    lanes.iter().all(|&l| l == 0.0)
}

/// Which keys of a tile some of its rows may not see, so that their scores become `-inf` and
/// P·V keeps a hidden key's non-finite value out of them: one description for dense tiles at the
/// edge of a mask and for gathered tiles over the union of several rows' key lists.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Hidden<'m> {
    /// Every row sees every key of the tile.
    None,
    /// The tile holds the keys `j0..` (its first is the payload): a row sees those inside its
    /// visible segments ([`RowKeys`]).
    Outside(usize),
    /// A gathered tile: row `i` of the unit's block sees key `jj` when bit `i` of `masks[jj]` is
    /// set (the row lists the key).
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    Unlisted(&'m [u32]),
}

/// The row bits of a gathered tile's key that all `rows` (1 to 32) rows of the block list.
pub(crate) fn all_rows(rows: usize) -> u32 {
    debug_assert!((1..=32).contains(&rows));
    u32::MAX >> (32 - rows)
}

impl Hidden<'_> {
    /// True when some row may not see some key.
    fn any(self) -> bool {
        !matches!(self, Hidden::None)
    }

    /// Calls `f(a, b)` for each maximal run `a..b` (tile positions, in order) of the first `n`
    /// keys of the tile that row `i` (with keys `rk`) sees.
    fn visible_runs(self, rk: &RowKeys, i: usize, n: usize, mut f: impl FnMut(usize, usize)) {
        match self {
            Hidden::None => f(0, n),
            Hidden::Outside(j0) => {
                for (a, b) in visible_segments(rk, j0, j0 + n) {
                    f(a - j0, b - j0);
                }
            }
            Hidden::Unlisted(masks) => {
                let bit = 1u32 << i;
                let mut jj = 0;
                while jj < n {
                    if masks[jj] & bit == 0 {
                        jj += 1;
                        continue;
                    }
                    let a = jj;
                    while jj < n && masks[jj] & bit != 0 {
                        jj += 1;
                    }
                    f(a, jj);
                }
            }
        }
    }
}

/// The visible sub-ranges of `[j0, j1)` for one row.
fn visible_segments(rk: &RowKeys, j0: usize, j1: usize) -> impl Iterator<Item = (usize, usize)> {
    let a = (j0, rk.sinks_end.min(j1));
    let b = (rk.lo.max(j0), rk.hi.min(j1));
    [a, b].into_iter().filter(|(x, y)| x < y)
}

/// `1/c` for the softcap `c · tanh(s/c)`, clamped to `f32::MAX`: for a subnormal `c` the exact
/// reciprocal overflows to infinity, and `0 · inf` would turn a zero score into NaN. With the
/// clamp a zero score stays 0, a score of magnitude ≥ ~1e-37 still saturates tanh to ±1, and
/// every result stays in `[-c, c]` like the exact one, so the error is at most `2c` (< 2.4e-38).
/// For normal `c` the reciprocal is unchanged.
#[inline]
fn softcap_reciprocal(c: f32) -> f32 {
    (1.0 / c).min(f32::MAX)
}

/// The keys of a row of scores: a run of consecutive keys (dense tiles) or the keys a list names
/// (gathered tiles).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keys<'k> {
    /// Keys `j0, j0 + 1, ...`.
    Run(usize),
    /// These keys, in order.
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    Listed(&'k [usize]),
}

impl Keys<'_> {
    /// The `jj`-th key.
    #[inline]
    fn key(self, jj: usize) -> usize {
        match self {
            Keys::Run(j0) => j0 + jj,
            Keys::Listed(keys) => keys[jj],
        }
    }
}

/// True when the options change scores ([`adjust_scores`] has work).
fn adjusts_scores(plan: &Plan<'_>) -> bool {
    let o = &plan.opts;
    o.softcap.is_some() || o.alibi_slopes.is_some() || o.bias.is_some()
}

/// Softcap, ALiBi and bias on one row of scores of query `i` and head `h` against `keys`: the
/// one place the score options are applied (dense tiles, gathered tiles and the measurements).
#[inline]
pub(crate) fn adjust_scores(plan: &Plan<'_>, b: usize, h: usize, i: usize, keys: Keys<'_>, row: &mut [f32]) {
    let o = &plan.opts;
    if let Some(c) = o.softcap {
        let inv = softcap_reciprocal(c);
        for x in row.iter_mut() {
            *x = c * libm::tanhf(*x * inv);
        }
    }
    if let Some(slopes) = o.alibi_slopes {
        let slope = slopes[h];
        // Positions and keys are below isize::MAX in magnitude (validated sizes): exact in i64,
        // and `abs_diff` cannot overflow.
        let pos = plan.mask.q_offset + i as i64;
        for (jj, x) in row.iter_mut().enumerate() {
            let dist = pos.abs_diff(keys.key(jj) as i64) as f32;
            *x -= slope * dist;
        }
    }
    if let Some(bias) = &o.bias {
        for (jj, x) in row.iter_mut().enumerate() {
            *x += bias.data[bias.offset(b, h, i, keys.key(jj))];
        }
    }
}

/// [`finish_unit`] into `sink`.
///
/// # Safety
/// No other thread writes unit `u`'s rows during the call (the schedulers run each unit's finish
/// once, and units own disjoint rows).
pub(crate) unsafe fn finish_into(plan: &Plan<'_>, t: &Tiling, u: &Unit, state: &mut [f32], sink: &Sink<'_>) {
    let mut st = RowState::of(t.state(plan), state);
    finish_unit(plan, t, u, &mut st, |b, i, h, row, lse| {
        // SAFETY: row (b, i, h) is one of unit `u`'s, which no other thread writes (the contract).
        unsafe { sink.write(plan, b, i, h, row, lse) }
    });
}

/// Applies learned sinks, normalises the unit's rows in `st` and hands each to `write`.
pub(crate) fn finish_unit(
    plan: &Plan<'_>,
    t: &Tiling,
    u: &Unit,
    st: &mut RowState<'_>,
    write: impl FnMut(usize, usize, usize, &[f32], f32),
) {
    finish_rows(plan, u, (u.q_tile * t.tq, u.tq(plan, t)), st, write);
}

/// [`finish_unit`] for the query rows `q0..q0 + tq` of a unit's KV heads (a gathered block's
/// rows are its own, not a query tile's): learned sinks, normalisation, the output gate, and
/// `write(b, i, h, row, lse)` for each row.
pub(crate) fn finish_rows(
    plan: &Plan<'_>,
    u: &Unit,
    (q0, tq): (usize, usize),
    st: &mut RowState<'_>,
    mut write: impl FnMut(usize, usize, usize, &[f32], f32),
) {
    let d = &plan.dims;
    let (g, dv) = (d.group(), d.v_head_dim);
    for (r, h, i) in head_rows(u, g, tq) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_lie_apart_in_head_major_layouts_only() {
        assert!(!heads_apart(&Layout::bshd(1, 9, 4, 8)));
        assert!(heads_apart(&Layout::bhsd(1, 4, 9, 8)));
        // A padded key-major layout: a key's rows of the heads still lie together.
        assert!(!heads_apart(&Layout { shape: [1, 9, 4, 8], strides: [400, 44, 11] }));
        // One head, or heads that share their rows, make one stream.
        assert!(!heads_apart(&Layout::bhsd(1, 1, 9, 8)));
        assert!(!heads_apart(&Layout { shape: [1, 9, 4, 8], strides: [72, 8, 0] }));
    }

    /// Decode units on head-major K/V cover the fewest heads whose key rows make
    /// `APART_UNIT_KEY_BYTES`, at least `APART_UNIT_MIN_HEADS`; key-major ones every head of the
    /// group block. D1/D2's heads (32 over 8, D 128, one query).
    #[test]
    fn head_major_decode_units_cover_few_heads() {
        let dims =
            crate::Dims { batch: 1, q_len: 1, kv_len: 8192, q_heads: 32, kv_heads: 8, head_dim: 128, v_head_dim: 128 };
        let opts = crate::AttentionOptions::new();
        let plan = Plan::new(dims, &opts).unwrap();
        let plan64 = Plan::new(crate::Dims { head_dim: 64, v_head_dim: 64, ..dims }, &opts).unwrap();
        let hb = |plan: &Plan<'_>, bytes: usize, apart: bool| {
            let t = Tiling::new(plan, Geometry::TUNED, bytes, apart).unwrap();
            assert_eq!(t.blocks, dims.kv_heads.div_ceil(t.hb));
            t.hb
        };
        // (bytes per value, heads per unit at D 128, at D 64): rows of at least 256 bytes take the
        // two-head minimum; int8 at D 64 (64-byte rows) takes four.
        for (bytes, heads, heads64) in [(4, 2, 2), (2, 2, 2), (1, 2, 4)] {
            assert_eq!(hb(&plan, bytes, true), heads, "{bytes}-byte values, head-major");
            assert_eq!(hb(&plan64, bytes, true), heads64, "{bytes}-byte values, head-major, D 64");
            assert_eq!(hb(&plan, bytes, false), 8, "{bytes}-byte values, key-major");
        }
        // The scratch of the key-major cut bounds the head-major one (`scratch_len` uses it).
        let (a, b) = (Tiling::new(&plan, Geometry::TUNED, 2, true), Tiling::new(&plan, Geometry::TUNED, 2, false));
        assert!(a.unwrap().scratch <= b.unwrap().scratch);
    }

    #[test]
    fn decode_tiles_are_longer_when_the_call_streams() {
        let tiling = |kv_len: usize, opts: crate::AttentionOptions, bytes: usize| {
            let dims =
                crate::Dims { batch: 1, q_len: 1, kv_len, q_heads: 32, kv_heads: 8, head_dim: 128, v_head_dim: 128 };
            Tiling::new(&Plan::new(dims, &opts).unwrap(), Geometry::TUNED, bytes, false).unwrap()
        };
        let new = crate::AttentionOptions::new;
        // 512 f32 keys of 8 heads of 128 are 4 MiB of K and V, which stay in the caches; 513 stream.
        assert_eq!(tiling(512, new(), 4).bc, 32);
        assert_eq!(tiling(513, new(), 4).bc, 128);
        assert_eq!(tiling(32768, new().window(256), 4).bc, 32);
        // f16 streams from 1025 keys, int8 from 2049.
        for (bytes, kv_len) in [(2, 1024), (1, 2048)] {
            assert_eq!(tiling(kv_len, new(), bytes).bc, 64);
            assert_eq!(tiling(kv_len + 1, new(), bytes).bc, 256);
        }
        // The scratch holds the longer tiles, and `scratch_len` the longest any type makes.
        for kv_len in [512, 513, 1025, 2049, 32768] {
            let needs = [1, 2, 4].map(|bytes| tiling(kv_len, new(), bytes).scratch);
            let dims =
                crate::Dims { batch: 1, q_len: 1, kv_len, q_heads: 32, kv_heads: 8, head_dim: 128, v_head_dim: 128 };
            let bound = crate::scratch_len(&dims, &new()).unwrap();
            assert_eq!(bound, needs.into_iter().max().unwrap(), "{kv_len} keys");
        }
        assert!(tiling(32768, new(), 2).scratch > tiling(512, new(), 2).scratch);
    }

    #[test]
    fn calls_read_the_keys_their_mask_shows() {
        let dims =
            crate::Dims { batch: 1, q_len: 4, kv_len: 8192, q_heads: 32, kv_heads: 8, head_dim: 128, v_head_dim: 128 };
        let keys = |opts: crate::AttentionOptions| keys_read(&Plan::new(dims, &opts).unwrap());
        let new = crate::AttentionOptions::new;
        assert_eq!(keys(new()), 8192);
        assert_eq!(keys(new().causal()), 8192);
        // The last query (position 8191) sees 8191 - 511..=8191, the first 8188 - 511..=8188.
        assert_eq!(keys(new().window(512)), 515);
        assert_eq!(keys(new().window(512).causal()), 515);
        assert_eq!(keys(new().window(512).sink_tokens(4)), 519);
        assert_eq!(keys(new().window(usize::MAX)), 8192);
        assert_eq!(keys(new().window(512).sink_tokens(usize::MAX)), 8192);
        // A window of 512 f16 keys (2 MiB) is read in one pass; the whole cache (32 MiB) streams.
        let streams =
            |opts: crate::AttentionOptions| streams_kv::<half::f16, half::f16>(&Plan::new(dims, &opts).unwrap());
        assert!(!streams(new().window(512)));
        assert!(streams(new()));
        let no_queries = crate::Dims { q_len: 0, ..dims };
        assert_eq!(keys_read(&Plan::new(no_queries, &new().window(512)).unwrap()), 0);
    }
}
