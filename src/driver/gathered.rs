//! Sparse attention's units: a block of neighbouring query rows and one KV head over the union
//! of the rows' key lists ([`crate::sparse::blocks`]), the listed K/V rows gathered, widened,
//! into contiguous tiles.
//!
//! A tile's scores are those of every row of the block against every gathered key; a key that
//! row `i` does not list is hidden from it ([`Hidden::Unlisted`]), exactly as a dense tile at a
//! mask's edge hides the keys outside a row's segments: `-inf` after the score options, and P·V
//! summing each row's own keys when the tile holds a non-finite V row, so such a value never
//! reaches a row that does not list its key. Few rows per KV head run the decode tile body
//! ([`tile_body`], as dense decode does); more score with a gemm against the transposed queries
//! and share the epilogue, softmax and P·V of dense prefill tiles.

use super::{
    epilogue_t, finish_rows, load_queries, pv_block, tile_body, Hidden, Inputs, Keys, PvBlock, RowState, Scratch,
    TileQueries, TileRows, TileScratch, Tiling, Unit,
};
use crate::element::Storage;
use crate::kernel::geometry::MAX_GATHER_BC;
use crate::kernel::Kernel;
use crate::mask::RowKeys;
use crate::plan::Plan;
use crate::sink::Sink;
use crate::sparse::blocks::{visible, MAX_BLOCK_ROWS};

/// One unit: rows `q0..q0 + tq` of batch `b` against KV head `kvh`, and with several rows the
/// union of their visible listed keys with each key's row bits ([`Blocks::union`]).
///
/// [`Blocks::union`]: crate::sparse::blocks::Blocks::union
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockUnit<'a> {
    pub b: usize,
    pub kvh: usize,
    pub q0: usize,
    pub tq: usize,
    pub union: (&'a [u32], &'a [u32]),
}

impl BlockUnit<'_> {
    /// The driver's unit of one KV head (`q_tile` is unused by the gathered path).
    fn unit(&self) -> Unit {
        Unit { b: self.b, kvh: self.kvh, nh: 1, q_tile: self.q0 }
    }
}

/// Computes block unit `bu` into `sc.state` (reset first): `list` is the list of its first row
/// (read when the unit is a single row).
pub(crate) fn run_block_unit<K: Kernel, KE: Storage, VE: Storage>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    bu: &BlockUnit<'_>,
    list: &[i32],
    sc: &mut Scratch<'_>,
) {
    let d = &plan.dims;
    let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
    let (tq, hr) = (bu.tq, g * bu.tq);
    debug_assert!(tq <= MAX_BLOCK_ROWS && hr <= t.rows);
    let u = bu.unit();
    let mut rks = [RowKeys { sinks_end: 0, lo: 0, hi: 0 }; MAX_BLOCK_ROWS];
    for (i, rk) in rks.iter_mut().enumerate().take(tq) {
        *rk = plan.mask.row(bu.q0 + i);
    }
    let span = TileQueries { q0: bu.q0, tq, keys: &rks[..tq] };
    sc.state.reset(hr, dv);
    load_queries(kernel, plan, &inp.q, &u, (bu.q0, tq), sc.qs);
    let dot = hr <= t.geo.dot_rows_max;
    if !dot {
        // Scores as a gemm, Sᵀ = K·(scale·Q)ᵀ: Qᵀ made once per unit.
        kernel.transpose_widen(hr, dk, &sc.qs[..hr * dk], dk, sc.qt, hr);
    }
    let bc = if dot { t.geo.gather_bc } else { t.bc }.min(MAX_GATHER_BC);
    let tile = TileCtx { plan, inp, u: &u, span: &span, dot, adjust: super::adjusts_scores(plan) };
    let mut keys = [0usize; MAX_GATHER_BC];
    if tq == 1 {
        // One row: its visible listed keys in list order, no mask.
        let rk = &rks[0];
        let row = list;
        let mut n = 0;
        for (slot, &e) in row.iter().enumerate() {
            if visible(rk, e) {
                keys[n] = e as usize;
                n += 1;
            }
            if n == bc || (slot + 1 == row.len() && n > 0) {
                // The next tile's rows are scattered beyond the hardware prefetchers' reach:
                // request them now, to arrive while this tile is computed.
                let next = row[slot + 1..].iter().filter(|&&e| visible(rk, e)).take(bc).map(|&e| e as usize);
                prefetch_rows(kernel, inp, &u, (dk, dv), next);
                tile.run(kernel, sc, &keys[..n], None);
                n = 0;
            }
        }
        return;
    }
    let (all, masks) = bu.union;
    let mut masks_buf = [0u32; MAX_GATHER_BC];
    for (c, (kc, mc)) in all.chunks(bc).zip(masks.chunks(bc)).enumerate() {
        let next = all.get((c + 1) * bc..).unwrap_or(&[]).iter().take(bc).map(|&e| e as usize);
        prefetch_rows(kernel, inp, &u, (dk, dv), next);
        for (dst, &e) in keys.iter_mut().zip(kc) {
            *dst = e as usize;
        }
        masks_buf[..mc.len()].copy_from_slice(mc);
        tile.run(kernel, sc, &keys[..kc.len()], Some(&masks_buf[..mc.len()]));
    }
}

/// Requests the K and V rows of `keys` of the unit's KV head.
fn prefetch_rows<K: Kernel, KE: Storage, VE: Storage>(
    kernel: K,
    inp: &Inputs<'_, KE, VE>,
    u: &Unit,
    (dk, dv): (usize, usize),
    keys: impl Iterator<Item = usize>,
) {
    for j in keys {
        kernel.prefetch(&inp.k[inp.k_layout.offset(u.b, j, u.kvh)..], 1, dk, 0);
        kernel.prefetch(&inp.v[inp.v_layout.offset(u.b, j, u.kvh)..], 1, dv, 0);
    }
}

/// What every tile of a unit shares.
struct TileCtx<'a, 'p, KE: Storage, VE: Storage> {
    plan: &'a Plan<'p>,
    inp: &'a Inputs<'a, KE, VE>,
    u: &'a Unit,
    span: &'a TileQueries<'a>,
    /// Score key by key ([`Kernel::dot_heads`]) rather than with a gemm.
    dot: bool,
    adjust: bool,
}

impl<KE: Storage, VE: Storage> TileCtx<'_, '_, KE, VE> {
    /// One tile of gathered `keys`; `masks[jj]` has bit `i` set when row `i` of the block lists
    /// key `jj` (`None`: every row does).
    fn run<K: Kernel>(&self, kernel: K, sc: &mut Scratch<'_>, keys: &[usize], masks: Option<&[u32]>) {
        let (plan, inp, u, span) = (self.plan, self.inp, self.u, self.span);
        let d = &plan.dims;
        let (g, dk, dv) = (d.group(), d.head_dim, d.v_head_dim);
        let (n, tq) = (keys.len(), span.tq);
        let hr = g * tq;
        let (kl, vl) = (&inp.k_layout, &inp.v_layout);
        // Scattered rows: widened once into contiguous tiles, which the microkernels then
        // stream like a dense tile.
        for (&j, dst) in keys.iter().zip(sc.ks.chunks_exact_mut(dk)) {
            let off = kl.offset(u.b, j, u.kvh);
            kernel.widen(&inp.k[off..off + dk], dst);
        }
        for (&j, dst) in keys.iter().zip(sc.vs.chunks_exact_mut(dv)) {
            let off = vl.offset(u.b, j, u.kvh);
            kernel.widen(&inp.v[off..off + dv], dst);
        }
        // The rows that do not list a key (a bit per row) are hidden from it.
        let full = super::all_rows(tq);
        let hidden = match masks {
            Some(m) if m.iter().any(|&m| m != full) => Hidden::Unlisted(m),
            _ => Hidden::None,
        };
        let keys = Keys::Listed(keys);
        if self.dot {
            let (staged, rest) = sc.vs.split_at_mut(n * dv);
            let staged = &*staged;
            let body = TileScratch { qs: sc.qs, s: sc.s, tmp: sc.tmp, alpha: sc.alpha, state: &mut sc.state, vs: rest };
            let rows = TileRows {
                k: &sc.ks[..n * dk],
                k_ld: dk,
                k_hs: 0,
                v: staged,
                v_ld: dv,
                v_hs: 0,
                staged_v: Some(staged),
                scales: None,
            };
            tile_body(kernel, plan, u, span, body, keys, n, &rows, hidden, self.adjust);
            return;
        }
        let st = &mut sc.s[..n * hr];
        kernel.gemm(n, hr, dk, &sc.ks[..n * dk], dk, sc.qt, hr, st, hr, false);
        if self.adjust || hidden.any() {
            epilogue_t(plan, u, span, st, hr, keys, n, hidden, self.adjust, sc.tmp);
        }
        let state: &mut RowState<'_> = &mut sc.state;
        let (m, l) = (&mut state.m[..hr], &mut state.l[..hr]);
        kernel.softmax_cols(st, hr, n, hr, m, l, sc.alpha, sc.tmp);
        let pv = PvBlock { w: n, rescale: Some(&sc.alpha[..hr]), ld: hr, live: (0, hr) };
        pv_block(kernel, span, g, dv, st, &sc.vs[..n * dv], &mut state.acc[..hr * dv], hidden, &pv, sc.tmp);
    }
}

/// Finishes the block unit's rows ([`finish_rows`], the arithmetic of every unit) into `sink`.
///
/// # Safety
/// No other thread writes the unit's rows during the call (units own disjoint rows: their
/// blocks partition each list's rows, and each (row, KV head) pair belongs to one unit).
pub(crate) unsafe fn finish_block(plan: &Plan<'_>, t: &Tiling, bu: &BlockUnit<'_>, state: &mut [f32], sink: &Sink<'_>) {
    let mut st = RowState::of(t.state(plan), state);
    finish_rows(plan, &bu.unit(), (bu.q0, bu.tq), &mut st, |b, i, h, row, lse| {
        // SAFETY: row (b, i, h) is this unit's, which no other thread writes (the contract).
        unsafe { sink.write(plan, b, i, h, row, lse) }
    });
}
