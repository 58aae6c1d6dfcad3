//! Blocks of neighbouring query rows that attend over the union of their key lists.
//!
//! A sparse attention unit is one such block and one KV head: each gathered K/V row is then
//! scored against every query row of the block (masked to `-inf` for the rows that do not list
//! it), so it is loaded once per block instead of once per row, and the tile body runs with
//! `g · rows` rows like a dense tile. A block grows over consecutive rows while the union of
//! their visible listed keys stays within [`UNION_NUM`]`/`[`UNION_DEN`] of the block's longest
//! list, so lists that barely overlap (random ones) stay single rows and never cost more than
//! `1.5×` the per-row work, while lists with causal structure (an indexer's over neighbouring
//! queries) share most keys and form long blocks. Each list is partitioned in segments of
//! [`SEGMENT_ROWS`] rows, in parallel, no block crossing a segment's end: the partition is a pure
//! function of the lists and the mask, so it does not depend on the thread count.
//!
//! Each block's union (its keys and their row bits) is built once, while the rows are
//! partitioned, and read by every unit of the block: with shared lists a block has one unit per
//! KV head, which would otherwise each rebuild it (measured: 15% of sparse attention's time at L
//! 16384, top-k 2048, 32/8 heads). The unions hold at most `UNION_NUM / UNION_DEN` times the
//! listed keys, two `u32` per key.

use alloc::vec::Vec;

use crate::error::{Error, Operand};
use crate::mask::RowKeys;
use crate::plan::Plan;
use crate::sparse::indices::SparseIndices;
use crate::sparse::PAD;

/// Most rows per block: a key's rows are the bits of a `u32`.
pub(crate) const MAX_BLOCK_ROWS: usize = 32;
/// A block's union may hold up to `UNION_NUM / UNION_DEN` times its longest list.
pub(crate) const UNION_NUM: usize = 3;
/// See [`UNION_NUM`].
pub(crate) const UNION_DEN: usize = 2;
/// Most union entries (`rows · k`) a worker's union set holds: long lists get shorter blocks.
const UNION_BUDGET: usize = 1 << 16;

/// Rows per block at most, for GQA groups of `g` query heads, a kernel aiming at `rows_target`
/// rows per unit and lists of `k` slots (1: no union, every unit is one row).
pub(crate) fn block_rows_cap(g: usize, rows_target: usize, k: usize) -> usize {
    let by_tile = (rows_target / g.max(1)).max(1);
    let by_budget = (UNION_BUDGET / k.max(1)).max(1);
    by_tile.min(by_budget).min(MAX_BLOCK_ROWS)
}

/// True when row `rk` sees key entry `e` of its list (not [`PAD`], not hidden by the mask).
#[inline]
pub(crate) fn visible(rk: &RowKeys, e: i32) -> bool {
    let j = e as usize;
    e != PAD && (j < rk.sinks_end || (rk.lo <= j && j < rk.hi))
}

/// A set of keys with a bit set of rows per key, in `u32` scratch: open addressing over a
/// power-of-two table of positions (`0` empty, else position + 1), the keys in insertion order.
pub(crate) struct UnionSet<'s> {
    table: &'s mut [u32],
    /// `table.len()` or less, a power of two: the part in use (see [`UnionSet::begin`]).
    active: usize,
    keys: &'s mut [u32],
    masks: &'s mut [u32],
    /// The table slot of each key, to clear the table in `O(len)`.
    slots: &'s mut [u32],
    len: usize,
}

impl<'s> UnionSet<'s> {
    /// `u32`s of scratch for a set of up to `entries` keys, or `None` on overflow.
    pub fn scratch_len(entries: usize) -> Option<usize> {
        let table = entries.checked_mul(2)?.checked_next_power_of_two()?.max(2);
        table.checked_add(entries.checked_mul(3)?)
    }

    /// A set of up to `entries` keys in `buf` (at least [`UnionSet::scratch_len`] long, any
    /// contents), to be started with [`UnionSet::begin`].
    pub fn carve(buf: &'s mut [u32], entries: usize) -> UnionSet<'s> {
        let table_len = (2 * entries).next_power_of_two().max(2);
        let (table, rest) = buf.split_at_mut(table_len);
        let (keys, rest) = rest.split_at_mut(entries);
        let (masks, rest) = rest.split_at_mut(entries);
        UnionSet { table, active: 0, keys, masks, slots: &mut rest[..entries], len: 0 }
    }

    /// Empties the set for up to `bound` (at most `entries`) distinct keys, clearing only the
    /// part of the table that many keys need.
    pub fn begin(&mut self, bound: usize) {
        self.active = (2 * bound).next_power_of_two().clamp(2, self.table.len());
        self.table[..self.active].fill(0);
        self.len = 0;
    }

    /// The table slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn slot(&self, key: u32) -> (usize, bool) {
        let mask = self.active - 1;
        // Fibonacci hashing: neighbouring keys land far apart.
        let mut s = (key.wrapping_mul(0x9E37_79B9) as usize) & mask;
        loop {
            match self.table[s] {
                0 => return (s, false),
                p if self.keys[p as usize - 1] == key => return (s, true),
                _ => s = (s + 1) & mask,
            }
        }
    }

    /// True when `key` is in the set.
    #[inline]
    pub fn contains(&self, key: u32) -> bool {
        self.slot(key).1
    }

    /// Adds `key` for the rows of `bits` (or those bits to a key already there).
    #[inline]
    pub fn insert(&mut self, key: u32, bits: u32) {
        let (s, found) = self.slot(key);
        if found {
            self.masks[self.table[s] as usize - 1] |= bits;
        } else {
            self.push(s, key, bits);
        }
    }

    /// Adds `key` with no row bits and returns true, or returns false when it is already there.
    #[inline]
    pub fn add(&mut self, key: u32) -> bool {
        let (s, found) = self.slot(key);
        if !found {
            self.push(s, key, 0);
        }
        !found
    }

    /// Puts a new key in empty table slot `s`.
    #[inline]
    fn push(&mut self, s: usize, key: u32, bits: u32) {
        // At most `entries` distinct keys are inserted (the caller's bound), so the table
        // (twice as long) always has an empty slot.
        let p = self.len;
        self.keys[p] = key;
        self.masks[p] = bits;
        self.slots[p] = s as u32;
        self.table[s] = p as u32 + 1;
        self.len += 1;
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        for &s in &self.slots[..self.len] {
            self.table[s as usize] = 0;
        }
        self.len = 0;
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The keys, in insertion order, and their row bits.
    pub fn entries(&self) -> (&[u32], &[u32]) {
        (&self.keys[..self.len], &self.masks[..self.len])
    }
}

/// The units of a sparse call: blocks of rows, each with every KV head its lists serve, and each
/// block's union of keys, built once and shared by its KV heads.
pub(crate) struct Blocks {
    spans: Vec<Span>,
    /// `(batch, KV head, block)` of each unit: per batch, KV-head-major, so one head's keys stay
    /// in cache across its consecutive blocks.
    units: Vec<(usize, usize, usize)>,
    /// The unions of the blocks of several rows, one [`Unions`] per segment of a list.
    unions: Vec<Unions>,
}

/// Rows of one list that are partitioned on their own, in parallel with the other segments: no
/// block crosses a segment's end. A fixed length, so the blocks do not depend on the thread
/// count; long enough that the blocks cut short at the ends (one per segment at most) cost
/// nothing measurable, short enough that L 4096 makes four segments.
const SEGMENT_ROWS: usize = 1024;

/// The unions of a segment's blocks: each block's visible listed keys in the order its rows
/// first list them, and per key the bits of the rows that list it.
#[derive(Default)]
struct Unions {
    keys: Vec<u32>,
    masks: Vec<u32>,
}

/// One block: rows `q0..q0 + rows` of one list, its union `unions[part]`'s entries
/// `union.0..union.1` (empty for a single row, which reads its list directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    q0: usize,
    rows: usize,
    part: usize,
    union: (usize, usize),
}

/// One segment's blocks, before they join the call's.
#[derive(Default)]
struct Segment {
    spans: Vec<Span>,
    unions: Unions,
}

impl Blocks {
    /// Partitions every list's rows into blocks of at most `cap` rows, the segments of the lists
    /// on rayon's pool when `parallel`.
    ///
    /// # Errors
    /// [`Error::AllocationFailed`] when the unit table, the unions or the partition's scratch
    /// cannot be had.
    pub fn new(plan: &Plan<'_>, indices: &SparseIndices<'_>, cap: usize, parallel: bool) -> Result<Blocks, Error> {
        let d = &plan.dims;
        let lists = if indices.is_shared() { 1 } else { d.kv_heads };
        let per_list = d.q_len.div_ceil(SEGMENT_ROWS);
        let jobs = d.batch * lists * per_list;
        let entries = if cap > 1 { cap * indices.k() } else { 0 };
        // Job `n`: segment `n % per_list` of list `n / per_list` (batch-major, then list head).
        let job = |n: usize, buf: &mut Vec<u32>| -> Result<Segment, Error> {
            let (g, seg) = (n / per_list, n % per_list);
            let (b, lh) = (g / lists, g % lists);
            let rows = seg * SEGMENT_ROWS..((seg + 1) * SEGMENT_ROWS).min(d.q_len);
            if buf.is_empty() {
                let len = UnionSet::scratch_len(entries).unwrap_or(usize::MAX);
                alloc_n(buf, len)?;
                buf.resize(len, 0u32);
            }
            let mut set = UnionSet::carve(buf, entries);
            set.begin(entries);
            let mut out = Segment::default();
            out.partition(rows, |i| plan.mask.row(i), |i| indices.row(b, i, lh), cap, &mut set)?;
            Ok(out)
        };
        let in_order = || -> Vec<Result<Segment, Error>> {
            let mut buf = Vec::new();
            (0..jobs).map(|n| job(n, &mut buf)).collect()
        };
        #[cfg(feature = "rayon")]
        let segments: Vec<Result<Segment, Error>> = if parallel {
            use rayon::prelude::*;
            (0..jobs).into_par_iter().map_init(Vec::new, |buf, n| job(n, buf)).collect()
        } else {
            in_order()
        };
        #[cfg(not(feature = "rayon"))]
        let segments = {
            let _ = parallel;
            in_order()
        };
        let mut blocks = Blocks { spans: Vec::new(), units: Vec::new(), unions: Vec::new() };
        alloc_n(&mut blocks.unions, jobs)?;
        let mut starts = Vec::new();
        alloc_n(&mut starts, d.batch * lists + 1)?;
        for (n, segment) in segments.into_iter().enumerate() {
            let segment = segment?;
            if n % per_list == 0 {
                starts.push(blocks.spans.len());
            }
            alloc_n(&mut blocks.spans, segment.spans.len())?;
            blocks.spans.extend(segment.spans.iter().map(|&s| Span { part: n, ..s }));
            blocks.unions.push(segment.unions);
        }
        // With no rows there are no segments: every list starts (and ends) at 0.
        starts.resize(d.batch * lists, 0);
        starts.push(blocks.spans.len());
        // Shared lists serve every KV head; a list per KV head serves its own.
        let spans = blocks.spans.len();
        let count = if lists == 1 { spans.saturating_mul(d.kv_heads) } else { spans };
        alloc_n(&mut blocks.units, count)?;
        for b in 0..d.batch {
            for kvh in 0..d.kv_heads {
                let g = b * lists + if lists == 1 { 0 } else { kvh };
                blocks.units.extend((starts[g]..starts[g + 1]).map(|s| (b, kvh, s)));
            }
        }
        Ok(blocks)
    }

    /// Units of the call.
    pub fn units(&self) -> usize {
        self.units.len()
    }

    /// Unit `u`: its batch, KV head, first row and rows.
    pub fn unit(&self, u: usize) -> (usize, usize, usize, usize) {
        let (b, kvh, s) = self.units[u];
        let span = &self.spans[s];
        (b, kvh, span.q0, span.rows)
    }

    /// Unit `u`'s union: its keys and their row bits (empty for a single row).
    pub fn union(&self, u: usize) -> (&[u32], &[u32]) {
        let span = &self.spans[self.units[u].2];
        let (lo, hi) = span.union;
        let part = &self.unions[span.part];
        (&part.keys[lo..hi], &part.masks[lo..hi])
    }
}

impl Segment {
    /// Greedy blocks over `rows` of one list (`list(i)` is row `i`'s, `keys(i)` the keys its
    /// mask shows), appended with their unions.
    fn partition<'l>(
        &mut self,
        rows: core::ops::Range<usize>,
        keys: impl Fn(usize) -> RowKeys,
        list: impl Fn(usize) -> &'l [i32],
        cap: usize,
        set: &mut UnionSet<'_>,
    ) -> Result<(), Error> {
        if cap <= 1 {
            alloc_n(&mut self.spans, rows.len())?;
            self.spans.extend(rows.map(|q0| Span { q0, rows: 1, part: 0, union: (0, 0) }));
            return Ok(());
        }
        set.clear();
        let end = rows.end;
        let (mut q0, mut longest) = (rows.start, 0usize);
        for i in rows {
            let rk = keys(i);
            let row = list(i);
            let (mut len, mut new) = (0usize, 0usize);
            for &e in row.iter().filter(|&&e| visible(&rk, e)) {
                len += 1;
                new += usize::from(!set.contains(e as u32));
            }
            let longest_with = longest.max(len);
            let fits = i - q0 < cap && UNION_DEN * (set.len() + new) <= UNION_NUM * longest_with;
            if i > q0 && !fits {
                self.close(q0, i - q0, set)?;
                (q0, longest) = (i, len);
            } else {
                longest = longest_with;
            }
            // `i - q0 < cap <= 32`: the row's bit fits.
            let bit = 1u32 << (i - q0);
            for &e in row.iter().filter(|&&e| visible(&rk, e)) {
                set.insert(e as u32, bit);
            }
        }
        if end > q0 {
            self.close(q0, end - q0, set)?;
        }
        Ok(())
    }

    /// Appends the block of `rows` rows from `q0` whose union `set` holds, and empties `set`.
    fn close(&mut self, q0: usize, rows: usize, set: &mut UnionSet<'_>) -> Result<(), Error> {
        let u = &mut self.unions;
        let lo = u.keys.len();
        if rows > 1 {
            let (keys, masks) = set.entries();
            alloc_n(&mut u.keys, keys.len())?;
            alloc_n(&mut u.masks, masks.len())?;
            u.keys.extend_from_slice(keys);
            u.masks.extend_from_slice(masks);
        }
        set.clear();
        // `part` is set when the segment joins the call's blocks.
        push(&mut self.spans, Span { q0, rows, part: 0, union: (lo, u.keys.len()) })
    }
}

/// Reserves room for `n` more elements (growing geometrically, so that appends stay linear), or
/// [`Error::AllocationFailed`].
fn alloc_n<T>(v: &mut Vec<T>, n: usize) -> Result<(), Error> {
    v.try_reserve(n).map_err(|_| Error::AllocationFailed {
        operand: Operand::Scratch,
        bytes: n.saturating_mul(core::mem::size_of::<T>()),
    })
}

fn push<T>(v: &mut Vec<T>, x: T) -> Result<(), Error> {
    alloc_n(v, 1)?;
    v.push(x);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// The blocks of `lists` (`k` slots per row, `rk` the keys each row's mask shows) with `cap`
    /// rows at most.
    fn partitioned(lists: &[i32], k: usize, cap: usize, rk: RowKeys) -> Blocks {
        let mut buf = vec![0u32; UnionSet::scratch_len(cap * k).unwrap()];
        let mut set = UnionSet::carve(&mut buf, cap * k);
        set.begin(cap * k);
        let mut segment = Segment::default();
        let q_len = lists.len() / k;
        segment.partition(0..q_len, |_| rk, |i| &lists[i * k..(i + 1) * k], cap, &mut set).unwrap();
        let units = (0..segment.spans.len()).map(|s| (0, 0, s)).collect();
        Blocks { spans: segment.spans, units, unions: vec![segment.unions] }
    }

    /// `(first row, rows)` of each block of `lists`, every key visible.
    fn blocks_of(lists: &[i32], k: usize, cap: usize) -> Vec<(usize, usize)> {
        let all = RowKeys { sinks_end: 0, lo: 0, hi: usize::MAX };
        partitioned(lists, k, cap, all).spans.iter().map(|s| (s.q0, s.rows)).collect()
    }

    #[test]
    fn identical_lists_fill_blocks_and_disjoint_ones_stay_single() {
        let same: Vec<i32> = (0..10).flat_map(|_| [3, 1, 4, 7]).collect();
        assert_eq!(blocks_of(&same, 4, 4), [(0, 4), (4, 4), (8, 2)]);
        let apart: Vec<i32> = (0..12).collect();
        assert_eq!(blocks_of(&apart, 4, 4), [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn a_block_grows_while_its_union_stays_within_one_and_a_half_lists() {
        // Rows of 4 keys, each adding one new key: unions 4, 5, 6, then 7 > 6 closes the block.
        // Empty rows join any block; a row sharing nothing starts a new one.
        let rows = [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [PAD; 4], [9, 10, 11, 12]];
        let lists: Vec<i32> = rows.concat();
        assert_eq!(blocks_of(&lists, 4, 8), [(0, 3), (3, 2), (5, 1)]);
    }

    #[test]
    fn each_block_keeps_its_union_with_the_rows_of_every_key() {
        let rows = [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [PAD; 4], [9, 10, 11, 12]];
        let lists: Vec<i32> = rows.concat();
        let all = RowKeys { sinks_end: 0, lo: 0, hi: usize::MAX };
        let blocks = partitioned(&lists, 4, 8, all);
        // Keys in the order first listed; bit i: row i of the block lists the key.
        assert_eq!(blocks.union(0), (&[0u32, 1, 2, 3, 4, 5][..], &[0b001u32, 0b011, 0b111, 0b111, 0b110, 0b100][..]));
        assert_eq!(blocks.union(1), (&[3u32, 4, 5, 6][..], &[1u32, 1, 1, 1][..]));
        // A single row reads its own list: no union is stored for it.
        assert_eq!(blocks.union(2), (&[][..], &[][..]));
        assert_eq!(blocks.unions[0].keys.len(), 10);
    }

    #[test]
    fn a_segment_starts_its_blocks_at_its_first_row() {
        // Rows 0..40 list the same keys; the segment 10..40 makes blocks of 8 from row 10 on.
        let lists: Vec<i32> = (0..40).flat_map(|_| [3, 1, 4, 7]).collect();
        let all = RowKeys { sinks_end: 0, lo: 0, hi: usize::MAX };
        let mut buf = vec![0u32; UnionSet::scratch_len(32).unwrap()];
        let mut set = UnionSet::carve(&mut buf, 32);
        set.begin(32);
        let mut segment = Segment::default();
        segment.partition(10..40, |_| all, |i| &lists[i * 4..(i + 1) * 4], 8, &mut set).unwrap();
        let spans: Vec<(usize, usize)> = segment.spans.iter().map(|s| (s.q0, s.rows)).collect();
        assert_eq!(spans, [(10, 8), (18, 8), (26, 8), (34, 6)]);
        // Row bits count from the block's first row.
        assert_eq!(segment.unions.masks[..4], [0xff; 4]);
        assert_eq!(segment.unions.masks[12..], [0x3f; 4]);
    }

    #[test]
    fn hidden_keys_do_not_count() {
        // Row 1 lists keys its mask hides (>= 4): they neither widen the union nor count as keys.
        let rows = [[0, 1, 2, 3], [0, 1, 8, 9]];
        let lists: Vec<i32> = rows.concat();
        let rk = RowKeys { sinks_end: 0, lo: 0, hi: 4 };
        let blocks = partitioned(&lists, 4, 2, rk);
        assert_eq!(blocks.spans, [Span { q0: 0, rows: 2, part: 0, union: (0, 4) }]);
        assert_eq!(blocks.union(0), (&[0u32, 1, 2, 3][..], &[3u32, 3, 1, 1][..]));
    }

    #[test]
    fn union_set_keeps_row_bits_per_key() {
        let mut buf = vec![7u32; UnionSet::scratch_len(6).unwrap()];
        let mut set = UnionSet::carve(&mut buf, 6);
        set.begin(6);
        for (bit, row) in [[5u32, 9, 2], [9, 2, 40]].iter().enumerate() {
            for &key in row {
                set.insert(key, 1 << bit);
            }
        }
        assert_eq!(set.entries(), (&[5u32, 9, 2, 40][..], &[1u32, 3, 3, 2][..]));
        assert!(set.contains(40) && !set.contains(41));
        set.clear();
        assert_eq!(set.len(), 0);
        assert!(!set.contains(9));
    }
}
