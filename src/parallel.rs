//! rayon execution. Units are independent and each output row is written by exactly one unit;
//! split-KV partials are merged in chunk order, so the bits match the sequential path.

use alloc::vec;
use rayon::prelude::*;

use crate::driver::{self, finish_unit, merge_unit, run_unit, Inputs, RowState, Scratch, Sink, Tiling, Unit};
use crate::element::{Element, ElemsMut};
use crate::kernel::Kernel;
use crate::plan::Plan;
use crate::tensor::Layout;

/// Raw destination shared by the workers.
struct SharedSink {
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
    fn new(sink: Sink<'_>) -> SharedSink {
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
    unsafe fn write(&self, plan: &Plan<'_>, b: usize, i: usize, h: usize, row: &[f32], lse: f32) {
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

pub(crate) fn run<K: Kernel, KE: Element, VE: Element>(
    kernel: K,
    plan: &Plan<'_>,
    t: &Tiling,
    inp: &Inputs<'_, KE, VE>,
    sink: Sink<'_>,
) {
    let shared = SharedSink::new(sink);
    let scratch_len = driver::worker_scratch_len(plan, t);
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
        (0..units).into_par_iter().for_each_init(
            || vec![0.0f32; scratch_len],
            |buf, idx| {
                let mut sc = Scratch::carve(plan, t, buf);
                let u = Unit::from_index(idx, plan, t);
                run_unit(kernel, plan, t, inp, &u, 0, &mut sc);
                write(&u, &mut sc.state);
            },
        );
        return;
    }
    // Split-KV: all (unit, chunk) partials in parallel, then an ordered merge per unit.
    let part_len = rows * (dv + 2);
    let mut partials = vec![0.0f32; units * t.chunks * part_len];
    partials.par_chunks_mut(part_len).enumerate().for_each_init(
        || vec![0.0f32; scratch_len],
        |buf, (idx, part)| {
            let mut sc = Scratch::carve(plan, t, buf);
            let u = Unit::from_index(idx / t.chunks, plan, t);
            run_unit(kernel, plan, t, inp, &u, idx % t.chunks, &mut sc);
            let (m, rest) = part.split_at_mut(rows);
            let (l, acc) = rest.split_at_mut(rows);
            m.copy_from_slice(&sc.state.m[..rows]);
            l.copy_from_slice(&sc.state.l[..rows]);
            acc.copy_from_slice(&sc.state.acc[..rows * dv]);
        },
    );
    partials.par_chunks(t.chunks * part_len).enumerate().for_each_init(
        || vec![0.0f32; part_len],
        |buf, (idx, parts)| {
            let u = Unit::from_index(idx, plan, t);
            let (m, rest) = buf.split_at_mut(rows);
            let (l, acc) = rest.split_at_mut(rows);
            let mut total = RowState { m, l, acc };
            total.reset(rows, dv);
            for part in parts.chunks(part_len) {
                let (pm, rest) = part.split_at(rows);
                let (pl, pacc) = rest.split_at(rows);
                merge_unit(rows, dv, &mut total, pm, pl, pacc);
            }
            write(&u, &mut total);
        },
    );
}

