//! rayon execution. Units are independent and each output row is written by exactly one unit;
//! split-KV partials are merged in chunk order, so the bits match the sequential path.

use alloc::vec::Vec;
use core::cell::Cell;
use rayon::prelude::*;

use crate::driver::{finish_unit, merge_unit, run_unit, Inputs, RowState, Scratch, Sink, Tiling, Unit};
use crate::element::{Element, ElemsMut};
use crate::kernel::Kernel;
use crate::plan::Plan;
use crate::tensor::Layout;

/// Raw destination shared by the workers.
pub(crate) struct SharedSink {
    out: OutPtr,
    out_layout: Layout,
    lse: Option<(*mut f32, usize)>,
}

#[derive(Clone, Copy)]
enum OutPtr {
    F32(*mut f32, usize),
    F16(*mut half::f16, usize),
    BF16(*mut half::bf16, usize),
}

// SAFETY: the pointers come from `&mut` slices that outlive the parallel region; workers write
// disjoint elements (see `SharedSink::write`), so sharing the pointers across threads is sound.
unsafe impl Send for SharedSink {}
// SAFETY: as above; no element is read or written by two threads.
unsafe impl Sync for SharedSink {}

impl SharedSink {
    pub(crate) fn new(sink: Sink<'_>) -> SharedSink {
        let out = match sink.out {
            ElemsMut::F32(o) => OutPtr::F32(o.as_mut_ptr(), o.len()),
            ElemsMut::F16(o) => OutPtr::F16(o.as_mut_ptr(), o.len()),
            ElemsMut::BF16(o) => OutPtr::BF16(o.as_mut_ptr(), o.len()),
        };
        let lse = sink.lse.map(|l| (l.as_mut_ptr(), l.len()));
        SharedSink { out, out_layout: sink.out_layout, lse }
    }

    /// Writes row `(b, i, h)`.
    ///
    /// # Safety
    /// No other thread may write row `(b, i, h)` concurrently, the `Sink` this was built from must
    /// still be borrowed, and its layout must be checked in bounds and unaliased (the plan does).
    pub(crate) unsafe fn write(&self, plan: &Plan<'_>, b: usize, i: usize, h: usize, row: &[f32], lse: f32) {
        let off = self.out_layout.offset(b, i, h);
        let dv = row.len();
        fn put<E: Element>(ptr: *mut E, len: usize, off: usize, row: &[f32]) {
            assert!(off + row.len() <= len);
            for (k, &x) in row.iter().enumerate() {
                // SAFETY: in bounds by the assert; the caller guarantees exclusive access to
                // this row and that the buffer is alive.
                unsafe { ptr.add(off + k).write(E::from_f32(x)) };
            }
        }
        match self.out {
            OutPtr::F32(p, len) => put(p, len, off, &row[..dv]),
            OutPtr::F16(p, len) => put(p, len, off, &row[..dv]),
            OutPtr::BF16(p, len) => put(p, len, off, &row[..dv]),
        }
        if let Some((p, len)) = self.lse {
            let d = &plan.dims;
            let idx = (b * d.q_heads + h) * d.q_len + i;
            assert!(idx < len);
            // SAFETY: in bounds by the assert; LSE entry (b, h, i) belongs to this row only.
            unsafe { p.add(idx).write(lse) };
        }
    }
}

/// Buffers above this many floats (16 MiB) are freed after use instead of kept for the next call.
const KEEP_MAX: usize = 1 << 22;

std::thread_local! {
    /// A worker's scratch, kept between tasks and calls: a fresh allocation per task costs page
    /// faults that a short decode call notices.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The split-KV partials of a call, kept on the calling thread.
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a buffer of `len` floats taken from `slot` (contents unspecified), and puts the
/// buffer back for later calls on this thread unless it is large. A nested use on the same
/// thread finds the slot empty and allocates its own.
fn with_buffer<R>(
    slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    if buf.capacity() <= KEEP_MAX {
        slot.with(|s| s.set(buf));
    }
    r
}

/// Runs `f` on this worker's kept scratch of `len` floats (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

pub(crate) fn run<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    sink: Sink<'_>,
) {
    let shared = SharedSink::new(sink);
    let scratch_len = t.scratch;
    let (rows, dv) = (t.rows, plan.dims.v_head_dim);
    let units = t.units(plan);
    let write = |u: &Unit, st: &mut RowState<'_>| {
        finish_unit(plan, t, u, st, |b, i, h, row, lse| {
            // SAFETY: each unit owns the rows (b, q-tile queries, its group's heads), so no two
            // workers write the same row; `shared` was built from a live, checked `Sink`.
            unsafe { shared.write(plan, b, i, h, row, lse) }
        });
    };
    if t.chunks == 1 {
        (0..units).into_par_iter().for_each(|idx| {
            with_buffer(&SCRATCH, scratch_len, |buf| {
                let mut sc = Scratch::carve(plan, t, buf);
                let u = Unit::from_index(idx, plan, t);
                run_unit(kernel, plan, t, inp, &u, 0, &mut sc);
                write(&u, &mut sc.state);
            })
        });
        return;
    }
    // Split-KV: all (unit, chunk) partials in parallel, then an ordered merge per unit. The
    // chunks are at most `MAX_CHUNKS` whatever kv_len is, so the partials are a bounded
    // multiple of the unit states (each part is one state, no larger than the worker scratch).
    let part_len = rows * (dv + 2);
    with_buffer(&PARTIALS, units * t.chunks * part_len, |partials| {
        split_kv(kernel, plan, t, inp, partials, part_len, &write);
    });
}

/// The split-KV passes over `partials` (`units · chunks` parts of `part_len` floats).
fn split_kv<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    partials: &mut [f32],
    part_len: usize,
    write: &(impl Fn(&Unit, &mut RowState<'_>) + Sync),
) {
    let scratch_len = t.scratch;
    let (rows, dv) = (t.rows, plan.dims.v_head_dim);
    partials.par_chunks_mut(part_len).enumerate().for_each(|(idx, part)| {
        with_buffer(&SCRATCH, scratch_len, |buf| {
            let mut sc = Scratch::carve(plan, t, buf);
            let u = Unit::from_index(idx / t.chunks, plan, t);
            run_unit(kernel, plan, t, inp, &u, idx % t.chunks, &mut sc);
            let ur = u.rows(plan, t);
            let (m, rest) = part.split_at_mut(rows);
            let (l, acc) = rest.split_at_mut(rows);
            m[..ur].copy_from_slice(&sc.state.m[..ur]);
            l[..ur].copy_from_slice(&sc.state.l[..ur]);
            acc[..ur * dv].copy_from_slice(&sc.state.acc[..ur * dv]);
        })
    });
    partials.par_chunks(t.chunks * part_len).enumerate().for_each(|(idx, parts)| {
        with_buffer(&SCRATCH, part_len, |buf| {
            let u = Unit::from_index(idx, plan, t);
            let ur = u.rows(plan, t);
            let (m, rest) = buf.split_at_mut(rows);
            let (l, acc) = rest.split_at_mut(rows);
            let mut total = RowState { m, l, acc };
            total.reset(ur, dv);
            for part in parts.chunks(part_len) {
                let (pm, rest) = part.split_at(rows);
                let (pl, pacc) = rest.split_at(rows);
                merge_unit(ur, dv, &mut total, pm, pl, pacc);
            }
            write(&u, &mut total);
        })
    });
}
