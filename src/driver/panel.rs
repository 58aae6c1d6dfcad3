//! A thread's K/V panel: the staged rows (widened to f32, int8 dequantised) of one KV head of
//! one call, kept between the prefill units of that call that run on the thread.
//!
//! A prefill unit stages every KV tile it visits into contiguous f32 rows before its gemms (in
//! place, a head-interleaved layout puts a head's rows a multiple of 4 KiB apart, where they
//! evict each other from L1). The query tiles of one KV head visit the same keys, and the
//! scheduler hands a thread consecutive units, which are consecutive query tiles of one head:
//! with the rows kept, a causal prefill stages each key about once per head and thread instead
//! of once per query tile. Only f32 K/V use it ([`pays_for`]).
//!
//! Measured against staging every tile (paired runs, old time / new): P3 1.056–1.072 on one
//! thread, 1.01–1.07 on two; P1 1.014–1.025 and 0.99–1.01; causal L 8192 (P1's heads) 1.16 on
//! two threads with a 2 MiB panel, and 1.07–1.09 more with [`MAX_FLOATS`]; P2 (window 512) 1.00.
//!
//! The panel holds a contiguous range of keys, grown at its end. A unit's run of tiles of
//! another call, head or batch row, or one that starts before the panel or past its end, starts
//! it afresh; a tile that would grow it past [`MAX_FLOATS`] is staged in the unit's scratch as
//! before, and the panel keeps its rows: a long causal head keeps its first keys, which every
//! query tile visits, and a sliding window passes the panel's end and starts it again further
//! on.
//!
//! The rows are the values the scratch would hold, read by the same kernels with the same
//! leading dimension, so results do not depend on whether, or on which thread, a tile came from
//! the panel.

#[cfg(feature = "std")]
use crate::aligned::LineAligned;
#[cfg(feature = "std")]
use crate::error::Operand;
#[cfg(feature = "std")]
use core::cell::Cell;
#[cfg(feature = "std")]
use core::sync::atomic::{AtomicU64, Ordering};

/// Most f32s (K and V rows together) a thread's panel holds: 8 MiB, a whole head of 8192 keys at
/// D 128 (a causal L 8192 prefill measured 7–8% faster than with 2 MiB, on 1 and 2 threads).
/// Like its scratch (up to 16 MiB), a thread keeps the panel between calls.
#[cfg(feature = "std")]
pub(crate) const MAX_FLOATS: usize = 1 << 21;

/// Identifies the rows of one call's KV head: no two calls share an id, so a panel left by an
/// earlier call (whose K and V may have changed since) is never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PanelKey {
    pub call: u64,
    pub b: usize,
    pub kvh: usize,
}

/// True when K and V are stored as 4-byte values. A panel row is f32: rows of narrower storage
/// would be read back at 2–4× the bytes their source takes, which measured slower than
/// widening the source again (P3 with f16 K/V, 1 thread: 1.3% slower; with f32: 6.4% faster).
#[cfg(feature = "std")]
pub(crate) fn pays_for<KE, VE>() -> bool {
    core::mem::size_of::<KE>() == 4 && core::mem::size_of::<VE>() == 4
}

/// A fresh call id (wrapping after 2⁶⁴ calls, which no process reaches).
#[cfg(feature = "std")]
pub(crate) fn next_call() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    CALLS.fetch_add(1, Ordering::Relaxed)
}

/// The staged rows of keys `start..start + rows` of `key`: row `j` of K at
/// `k[(j - start)·dk..]`, of V at `v[(j - start)·dv..]`.
#[cfg(feature = "std")]
#[derive(Debug, Default)]
pub(crate) struct Panel {
    key: Option<PanelKey>,
    start: usize,
    rows: usize,
    /// On a cache line ([`LineAligned`]): P·V loads 8 floats of a V row at a time.
    k: LineAligned<f32>,
    v: LineAligned<f32>,
}

/// The keys of a tile to stage into the panel, `first..end` (empty when it holds them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reserved {
    pub first: usize,
    pub end: usize,
}

/// Without `std` a thread keeps no panel: the type has no value, so every tile is staged in its
/// unit's scratch.
#[cfg(not(feature = "std"))]
#[derive(Debug)]
pub(crate) enum Panel {}

#[cfg(not(feature = "std"))]
impl Panel {
    pub fn reserve(&mut self, _: PanelKey, _: usize, _: (usize, usize), _: usize, _: usize) -> Option<Reserved> {
        match *self {}
    }
    pub fn commit(&mut self, _: Reserved) {
        match *self {}
    }
    pub fn holds(&self, _: PanelKey, _: (usize, usize)) -> bool {
        match *self {}
    }
    pub fn rows_mut(&mut self, _: Reserved, _: usize, _: usize) -> (&mut [f32], &mut [f32]) {
        match *self {}
    }
    pub fn k_rows(&self, _: (usize, usize), _: usize) -> &[f32] {
        match *self {}
    }
    pub fn v_rows(&self, _: (usize, usize), _: usize) -> &[f32] {
        match *self {}
    }
}

#[cfg(feature = "std")]
impl Panel {
    /// Makes room for the tile of keys `j0..j1` (`j0 < j1`) of `key`, with `dk` and `dv`
    /// floats per K and V row, in a run of consecutive tiles from key `from` on (a unit's key
    /// range: its tiles reserve in order). `None` when the tile would take the panel past its
    /// size (stage it elsewhere).
    /// The returned keys must be staged into [`Panel::rows_mut`] and [`Panel::commit`]ted
    /// before another tile reserves.
    pub fn reserve(
        &mut self,
        key: PanelKey,
        from: usize,
        (j0, j1): (usize, usize),
        dk: usize,
        dv: usize,
    ) -> Option<Reserved> {
        let max_rows = MAX_FLOATS / (dk + dv).max(1);
        if j1 - j0 > max_rows {
            return None;
        }
        let end = self.start + self.rows;
        if self.key != Some(key) || from < self.start || from > end {
            // Rows of one key share dk and dv (one call), so the key alone decides.
            (self.key, self.start, self.rows) = (Some(key), j0, 0);
        }
        if j1 - self.start > max_rows {
            // Past the panel's end: keep its rows (a causal head's first keys, which every
            // later query tile visits again) and stage this tile elsewhere.
            return None;
        }
        let need = j1 - self.start;
        // A panel that cannot grow stages the tile elsewhere, as one at its size does.
        self.k.grow_to(need * dk, Operand::Scratch).ok()?;
        self.v.grow_to(need * dv, Operand::Scratch).ok()?;
        Some(Reserved { first: (self.start + self.rows).clamp(j0, j1), end: j1 })
    }

    /// Marks the rows of `r` staged (after [`Panel::reserve`] returned it and they were written).
    pub fn commit(&mut self, r: Reserved) {
        self.rows = self.rows.max(r.end - self.start);
    }

    /// True when the panel holds keys `j0..j1` of `key`.
    pub fn holds(&self, key: PanelKey, (j0, j1): (usize, usize)) -> bool {
        self.key == Some(key) && self.start <= j0 && j1 <= self.start + self.rows
    }

    /// The K and V rows of the reserved keys `r`, to stage.
    pub fn rows_mut(&mut self, r: Reserved, dk: usize, dv: usize) -> (&mut [f32], &mut [f32]) {
        let (a, b) = (r.first - self.start, r.end - self.start);
        (&mut self.k[a * dk..b * dk], &mut self.v[a * dv..b * dv])
    }

    /// The K rows of keys `j0..j1` (held or reserved), `dk` floats each.
    pub fn k_rows(&self, (j0, j1): (usize, usize), dk: usize) -> &[f32] {
        &self.k[(j0 - self.start) * dk..(j1 - self.start) * dk]
    }

    /// The V rows of keys `j0..j1` (held or reserved), `dv` floats each.
    pub fn v_rows(&self, (j0, j1): (usize, usize), dv: usize) -> &[f32] {
        &self.v[(j0 - self.start) * dv..(j1 - self.start) * dv]
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    /// The calling thread's panel, kept between units and calls.
    static PANEL: Cell<Panel> = Cell::new(Panel::default());
}

/// Runs `f` with the calling thread's panel (taken out meanwhile: a nested use finds an empty
/// one, which only stages again).
#[cfg(feature = "std")]
pub(crate) fn with<R>(f: impl FnOnce(&mut Panel) -> R) -> R {
    let mut panel = PANEL.with(Cell::take);
    let r = f(&mut panel);
    PANEL.with(|p| p.set(panel));
    r
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    const KEY: PanelKey = PanelKey { call: 7, b: 0, kvh: 1 };

    /// Reserves `tile`, stages its fresh keys as `key index + 0.5` in K and `-key` in V, commits.
    fn stage(
        p: &mut Panel,
        key: PanelKey,
        from: usize,
        tile: (usize, usize),
        dk: usize,
        dv: usize,
    ) -> Option<Reserved> {
        let r = p.reserve(key, from, tile, dk, dv)?;
        let (k, v) = p.rows_mut(r, dk, dv);
        for (j, row) in (r.first..r.end).zip(k.chunks_exact_mut(dk)) {
            row.fill(j as f32 + 0.5);
        }
        for (j, row) in (r.first..r.end).zip(v.chunks_exact_mut(dv)) {
            row.fill(-(j as f32));
        }
        p.commit(r);
        Some(r)
    }

    fn assert_rows(p: &Panel, tile: (usize, usize), dk: usize, dv: usize) {
        for (j, row) in (tile.0..tile.1).zip(p.k_rows(tile, dk).chunks_exact(dk)) {
            assert!(row.iter().all(|&x| x == j as f32 + 0.5), "K row {j}");
        }
        for (j, row) in (tile.0..tile.1).zip(p.v_rows(tile, dv).chunks_exact(dv)) {
            assert!(row.iter().all(|&x| x == -(j as f32)), "V row {j}");
        }
    }

    #[test]
    fn a_query_tile_after_another_stages_only_the_new_keys() {
        let mut p = Panel::default();
        assert_eq!(stage(&mut p, KEY, 0, (0, 72), 4, 3), Some(Reserved { first: 0, end: 72 }));
        assert_eq!(stage(&mut p, KEY, 0, (72, 100), 4, 3), Some(Reserved { first: 72, end: 100 }));
        // The next query tile of the head: its first tile is held, its second partly.
        assert_eq!(stage(&mut p, KEY, 0, (0, 72), 4, 3), Some(Reserved { first: 72, end: 72 }));
        assert_eq!(stage(&mut p, KEY, 0, (72, 130), 4, 3), Some(Reserved { first: 100, end: 130 }));
        assert!(p.holds(KEY, (0, 130)) && !p.holds(KEY, (0, 131)));
        assert_rows(&p, (0, 130), 4, 3);
    }

    #[test]
    fn another_call_head_or_batch_row_starts_afresh() {
        for other in [PanelKey { call: 8, ..KEY }, PanelKey { kvh: 2, ..KEY }, PanelKey { b: 1, ..KEY }] {
            let mut p = Panel::default();
            stage(&mut p, KEY, 0, (0, 50), 2, 2);
            assert!(!p.holds(other, (0, 50)));
            assert_eq!(stage(&mut p, other, 0, (0, 50), 2, 2), Some(Reserved { first: 0, end: 50 }));
            assert!(!p.holds(KEY, (0, 1)), "the old key's rows are gone");
            assert_rows(&p, (0, 50), 2, 2);
        }
    }

    #[test]
    fn a_run_past_the_end_or_before_the_start_restarts_the_panel() {
        let mut p = Panel::default();
        stage(&mut p, KEY, 10, (10, 20), 2, 2);
        // A gap: keys 20..30 were never staged.
        assert_eq!(stage(&mut p, KEY, 30, (30, 40), 2, 2), Some(Reserved { first: 30, end: 40 }));
        assert!(!p.holds(KEY, (10, 20)) && p.holds(KEY, (30, 40)));
        // Before the panel's start (a sliding window's sink tokens).
        assert_eq!(stage(&mut p, KEY, 0, (0, 5), 2, 2), Some(Reserved { first: 0, end: 5 }));
        assert!(p.holds(KEY, (0, 5)) && !p.holds(KEY, (30, 40)));
        assert_rows(&p, (0, 5), 2, 2);
    }

    #[test]
    fn the_panel_stays_within_its_size_and_keeps_its_first_keys() {
        let (dk, dv) = (256, 256);
        let max_rows = MAX_FLOATS / (dk + dv);
        let mut p = Panel::default();
        let mut j = 0;
        // A causal head longer than the panel: the tiles up to its size go in, the rest not.
        while j + 100 <= 3 * max_rows {
            let r = stage(&mut p, KEY, 0, (j, j + 100), dk, dv);
            assert_eq!(r.is_some(), j + 100 <= max_rows, "tile at {j}");
            assert!(p.k.len() <= max_rows * dk && p.v.len() <= max_rows * dv);
            j += 100;
        }
        let kept = max_rows / 100 * 100;
        assert!(p.holds(KEY, (0, kept)) && !p.holds(KEY, (0, kept + 1)));
        assert_rows(&p, (0, kept), dk, dv);
        // The next query tile finds them.
        assert_eq!(stage(&mut p, KEY, 0, (0, 100), dk, dv), Some(Reserved { first: 100, end: 100 }));
        // A run past the panel's end starts it there (a sliding window moving on).
        let from = kept + 50;
        let r = stage(&mut p, KEY, from, (from, from + 100), dk, dv);
        assert_eq!(r, Some(Reserved { first: from, end: from + 100 }));
        assert_rows(&p, (from, from + 100), dk, dv);
        // A tile larger than the whole panel is not taken.
        assert_eq!(p.reserve(KEY, 0, (0, max_rows + 1), dk, dv), None);
        assert!(p.reserve(KEY, 0, (0, max_rows), dk, dv).is_some());
    }
}
