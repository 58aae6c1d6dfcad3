//! The scheduler that every computation of the crate runs on: dense attention, sparse attention
//! and the sparse indexers.
//!
//! A computation is a number of independent units; each writes output elements that no other
//! unit writes (through [`crate::sink`]) and needs one worker's scratch. Units run on the calling
//! thread, in order, or on rayon's pool, in any order and on any thread. Attention units may also
//! be cut into KV chunks (split-KV, "flash decoding"): each chunk leaves a partial online-softmax
//! state, and the partials of a unit are merged in chunk order. Nothing a unit computes depends on
//! where or when it runs, so results are bit-identical for every thread count.

use crate::softmax::merge_row;

/// Where the units of a call run.
pub(crate) enum Workers<'s> {
    /// On the calling thread, with this scratch (at least the call's scratch length).
    Calling(&'s mut [f32]),
    /// On rayon's pool, each worker with scratch kept between calls.
    #[cfg(feature = "rayon")]
    Pool,
}

#[cfg(feature = "alloc")]
impl Workers<'_> {
    /// Runs `f` with the workers `parallelism` names; for the calling thread, with a fresh scratch
    /// of `len` floats.
    pub fn with<R>(parallelism: crate::Parallelism, len: usize, f: impl FnOnce(Workers<'_>) -> R) -> R {
        match parallelism {
            #[cfg(feature = "rayon")]
            crate::Parallelism::Rayon => f(Workers::Pool),
            crate::Parallelism::Sequential => f(Workers::Calling(&mut alloc::vec![0.0f32; len])),
        }
    }
}

/// Runs `unit(u, scratch)` for every unit `u < units`, with `scratch_len` floats of scratch
/// (contents unspecified).
#[cfg(feature = "alloc")]
pub(crate) fn for_each_unit(
    workers: Workers<'_>,
    units: usize,
    scratch_len: usize,
    unit: impl Fn(usize, &mut [f32]) + Sync,
) {
    match workers {
        Workers::Calling(buf) => {
            let buf = &mut buf[..scratch_len];
            for u in 0..units {
                unit(u, buf);
            }
        }
        #[cfg(feature = "rayon")]
        Workers::Pool => {
            use rayon::prelude::*;
            (0..units).into_par_iter().for_each(|u| pool::with_buffer(&pool::SCRATCH, scratch_len, |buf| unit(u, buf)));
        }
    }
}

/// Floats per 64-byte cache line. The states, and the buffers the scheduler hands out, start on
/// a line, so that a microkernel's 16-float row of an accumulator is one line, not two (split
/// loads and stores measured P·V 12% slower on Zen 3).
pub(crate) const LINE: usize = 16;

/// `buf` from its first cache-line boundary on (at most `LINE - 1` floats skipped; none where
/// the address cannot be aligned, which costs speed only).
pub(crate) fn line_aligned(buf: &mut [f32]) -> &mut [f32] {
    let skip = buf.as_ptr().align_offset(LINE * core::mem::size_of::<f32>());
    if skip < LINE && skip <= buf.len() {
        &mut buf[skip..]
    } else {
        buf
    }
}

/// The layout of a partial online-softmax state: the `rows` accumulators of `dv` floats, then
/// `m` and `l` of the rows, padded to whole cache lines, so that consecutive states (the split-KV
/// partials) and their accumulators start on a line wherever the first one does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateShape {
    pub rows: usize,
    pub dv: usize,
}

impl StateShape {
    /// Floats of one state, or `None` when that overflows.
    pub fn checked_len(&self) -> Option<usize> {
        self.rows.checked_mul(self.dv.checked_add(2)?)?.checked_next_multiple_of(LINE)
    }

    /// Floats of one state (the caller sized its buffers with [`checked_len`](Self::checked_len)).
    pub fn len(&self) -> usize {
        (self.rows * (self.dv + 2)).next_multiple_of(LINE)
    }

    /// Empties the first `rows` rows: `m = -inf`, `l = 0`, `acc = 0`.
    pub fn reset(&self, state: &mut [f32], rows: usize) {
        let (m, l, acc) = self.split(state);
        m[..rows].fill(f32::NEG_INFINITY);
        l[..rows].fill(0.0);
        acc[..rows * self.dv].fill(0.0);
    }

    /// `(m, l, acc)` of a state.
    pub fn split<'s>(&self, state: &'s mut [f32]) -> (&'s mut [f32], &'s mut [f32], &'s mut [f32]) {
        let (acc, rest) = state[..self.len()].split_at_mut(self.rows * self.dv);
        let (m, rest) = rest.split_at_mut(self.rows);
        let (l, _) = rest.split_at_mut(self.rows);
        (m, l, acc)
    }

    /// Merges the first `rows` rows of the partial `part` into `total`.
    fn merge(&self, total: &mut [f32], part: &mut [f32], rows: usize) {
        let (m, l, acc) = self.split(total);
        let (pm, pl, pacc) = self.split(part);
        let dv = self.dv;
        for r in 0..rows {
            merge_row(&mut m[r], &mut l[r], &mut acc[r * dv..(r + 1) * dv], pm[r], pl[r], &pacc[r * dv..(r + 1) * dv]);
        }
    }
}

/// An attention computation: units whose KV range may be cut into chunks.
pub(crate) trait SplitWork: Sync {
    /// Units, at least one.
    fn units(&self) -> usize;
    /// KV chunks per unit (1: not split).
    fn chunks(&self) -> usize;
    /// The partial states' layout.
    fn state(&self) -> StateShape;
    /// Rows of unit `u` (at most `state().rows`).
    fn rows(&self, u: usize) -> usize;
    /// Floats of one worker's scratch, besides the states.
    fn scratch_len(&self) -> usize;
    /// Fewest units a pool task takes (units much cheaper than the pool's per-task cost ask for more).
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    fn units_per_task(&self) -> usize {
        1
    }
    /// Computes chunk `c` of unit `u` into `state` (of [`state`](Self::state)'s layout; any
    /// contents on entry).
    fn run(&self, u: usize, c: usize, state: &mut [f32], scratch: &mut [f32]);
    /// Finishes unit `u` from its merged state and writes its rows.
    fn finish(&self, u: usize, state: &mut [f32]);
}

/// Floats of calling-thread scratch [`run_split`] needs for `work`: two states (a chunk's and
/// the running total), the work's own scratch, and up to a line skipped to align them; `None`
/// when that overflows.
pub(crate) fn split_scratch_len(state: StateShape, work_scratch: usize) -> Option<usize> {
    state.checked_len()?.checked_mul(2)?.checked_add(work_scratch)?.checked_add(LINE - 1)
}

/// Runs every unit of `work`, merging split-KV partials in chunk order.
pub(crate) fn run_split(workers: Workers<'_>, work: &impl SplitWork) {
    let (units, chunks, shape) = (work.units(), work.chunks(), work.state());
    let sl = shape.len();
    match workers {
        Workers::Calling(buf) => {
            let (state, rest) = line_aligned(buf).split_at_mut(sl);
            let (total, scratch) = rest.split_at_mut(sl);
            let scratch = &mut scratch[..work.scratch_len()];
            for u in 0..units {
                if chunks == 1 {
                    work.run(u, 0, state, scratch);
                    work.finish(u, state);
                    continue;
                }
                shape.reset(total, work.rows(u));
                for c in 0..chunks {
                    work.run(u, c, state, scratch);
                    shape.merge(total, state, work.rows(u));
                }
                work.finish(u, total);
            }
        }
        #[cfg(feature = "rayon")]
        Workers::Pool => pool::run_split(work, units, chunks, shape),
    }
}

/// rayon's side: per-worker scratch kept between calls, and the split-KV partials.
#[cfg(feature = "rayon")]
mod pool {
    use alloc::vec::Vec;
    use core::cell::Cell;
    use rayon::prelude::*;

    use super::{SplitWork, StateShape, LINE};

    /// Buffers above this many floats (16 MiB) are freed after use instead of kept for the next call.
    const KEEP_MAX: usize = 1 << 22;

    std::thread_local! {
        /// A worker's scratch, kept between tasks and calls: a fresh allocation per task costs page
        /// faults that a short decode call notices.
        pub(super) static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
        /// The split-KV partials of a call, kept on the calling thread.
        static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    }

    /// Runs `f` on a buffer of `len` floats taken from `slot` (contents unspecified; it starts on
    /// a cache line), and puts the buffer back for later calls on this thread unless it is large.
    /// A nested use on the same thread finds the slot empty and allocates its own.
    pub(super) fn with_buffer<R>(
        slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
        len: usize,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> R {
        let mut buf = slot.with(Cell::take);
        // The callers' lengths are sums that fit in memory, so one line more cannot overflow.
        if buf.len() < len + LINE - 1 {
            buf.resize(len + LINE - 1, 0.0);
        }
        let r = f(&mut super::line_aligned(&mut buf)[..len]);
        if buf.capacity() <= KEEP_MAX {
            slot.with(|s| s.set(buf));
        }
        r
    }

    pub(super) fn run_split(work: &impl SplitWork, units: usize, chunks: usize, shape: StateShape) {
        let sl = shape.len();
        let len = sl + work.scratch_len();
        if chunks == 1 {
            (0..units).into_par_iter().with_min_len(work.units_per_task()).for_each(|u| {
                with_buffer(&SCRATCH, len, |buf| {
                    let (state, scratch) = buf.split_at_mut(sl);
                    work.run(u, 0, state, scratch);
                    work.finish(u, state);
                })
            });
            return;
        }
        // All (unit, chunk) partials in parallel, then an ordered merge per unit. The caller bounds
        // the chunks whatever kv_len is, so the partials are a bounded multiple of the unit states.
        with_buffer(&PARTIALS, units * chunks * sl, |partials| {
            partials.par_chunks_mut(sl).enumerate().for_each(|(idx, part)| {
                with_buffer(&SCRATCH, work.scratch_len(), |scratch| work.run(idx / chunks, idx % chunks, part, scratch))
            });
            partials.par_chunks_mut(chunks * sl).enumerate().for_each(|(u, parts)| {
                with_buffer(&SCRATCH, sl, |total| {
                    let rows = work.rows(u);
                    shape.reset(total, rows);
                    for part in parts.chunks_exact_mut(sl) {
                        shape.merge(total, part, rows);
                    }
                    work.finish(u, total);
                })
            });
        });
    }
}
