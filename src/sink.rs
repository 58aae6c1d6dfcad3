//! Output shared by the units of one call.
//!
//! Every computation is cut into units that each write output elements no other unit writes
//! (see [`crate::exec`]). The units may run on several threads, so they cannot each hold a `&mut`
//! to the output; they hold a [`SharedOut`], which keeps the caller's exclusive borrow alive for
//! as long as it exists and hands out the elements a unit owns. The soundness argument for that
//! sharing is here and nowhere else: [`SharedOut::slice`] is the only place that turns the shared
//! pointer back into a slice.

use core::marker::PhantomData;

use crate::element::{Element, ElemsMut, Storage};
use crate::kernel::Kernel;
use crate::plan::Plan;
use crate::tensor::Layout;

/// A `&'o mut [T]` that units on several threads write through, each to its own elements.
pub(crate) struct SharedOut<'o, T> {
    ptr: *mut T,
    len: usize,
    /// The exclusive borrow this was made from: nothing else can read or write the buffer while a
    /// `SharedOut` lives.
    _borrow: PhantomData<&'o mut [T]>,
}

// SAFETY: a `SharedOut` is a `&mut [T]` split among threads; sending it is sending that borrow,
// sound when `T` may be sent.
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
// SAFETY: shared use only reaches the elements through `slice`, whose contract is that no two
// live slices overlap; each element is then accessed by one thread at a time, as through a
// `&mut [T]`, so `T: Send` suffices.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'o, T> SharedOut<'o, T> {
    /// Takes over `data` for the lifetime `'o`.
    pub fn new(data: &'o mut [T]) -> Self {
        SharedOut { ptr: data.as_mut_ptr(), len: data.len(), _borrow: PhantomData }
    }

    /// Elements `[off, off + n)`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    ///
    /// # Safety
    /// While the returned slice lives, no other slice obtained from this `SharedOut` (on any
    /// thread) may overlap it. The schedulers guarantee this by giving each output element to
    /// exactly one unit and running each unit once.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, off: usize, n: usize) -> &mut [T] {
        assert!(off <= self.len && n <= self.len - off, "unit output out of bounds");
        // SAFETY: in bounds by the assert, within the allocation `'o` borrows exclusively (alive
        // as long as `self`); no overlapping slice is alive, by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(off), n) }
    }
}

impl<T: Storage> SharedOut<'_, T> {
    /// A hint that elements `[off, off + n)` are written soon; changes nothing.
    ///
    /// # Safety
    /// As [`SharedOut::slice`].
    pub unsafe fn prefetch<K: Kernel>(&self, kernel: K, off: usize, n: usize) {
        // SAFETY: the caller's contract is `slice`'s; the slice lives for the call alone.
        kernel.prefetch(unsafe { &*self.slice(off, n) }, 1, n, n);
    }
}

/// The attention output in one of its element types.
enum OutRows<'o> {
    F32(SharedOut<'o, f32>),
    F16(SharedOut<'o, half::f16>),
    BF16(SharedOut<'o, half::bf16>),
}

/// Destination of finished attention rows: the output tensor and the optional LSE.
pub(crate) struct Sink<'o> {
    out: OutRows<'o>,
    layout: Layout,
    lse: Option<SharedOut<'o, f32>>,
}

impl<'o> Sink<'o> {
    /// The output `out` (of a checked layout: in bounds and unaliased) and LSE `[batch, q_heads, q_len]`.
    pub fn new(out: ElemsMut<'o>, layout: Layout, lse: Option<&'o mut [f32]>) -> Self {
        let out = match out {
            ElemsMut::F32(o) => OutRows::F32(SharedOut::new(o)),
            ElemsMut::F16(o) => OutRows::F16(SharedOut::new(o)),
            ElemsMut::BF16(o) => OutRows::BF16(SharedOut::new(o)),
        };
        Sink { out, layout, lse: lse.map(SharedOut::new) }
    }

    /// Requests output row `(b, i, h)` (its first `len` elements) from memory ahead of its
    /// [`write`](Self::write).
    ///
    /// # Safety
    /// As [`write`](Self::write).
    pub unsafe fn prefetch_row<K: Kernel>(&self, kernel: K, b: usize, i: usize, h: usize, len: usize) {
        let off = self.layout.offset(b, i, h);
        // SAFETY: the row belongs to the caller's unit (the caller's contract).
        unsafe {
            match &self.out {
                OutRows::F32(o) => o.prefetch(kernel, off, len),
                OutRows::F16(o) => o.prefetch(kernel, off, len),
                OutRows::BF16(o) => o.prefetch(kernel, off, len),
            }
        }
    }

    /// Writes row `(b, i, h)` and its LSE.
    ///
    /// # Safety
    /// No other thread writes row `(b, i, h)` during the call: each row belongs to one unit.
    /// (The output layout was checked unaliased, so distinct rows are distinct elements, and the
    /// LSE entry `(b, h, i)` belongs to the row alone.)
    pub unsafe fn write(&self, plan: &Plan<'_>, b: usize, i: usize, h: usize, row: &[f32], lse: f32) {
        let off = self.layout.offset(b, i, h);
        fn put<E: Element>(out: &SharedOut<'_, E>, off: usize, row: &[f32]) {
            // SAFETY: the row's elements belong to the caller's unit (the caller's contract).
            let dst = unsafe { out.slice(off, row.len()) };
            for (d, &x) in dst.iter_mut().zip(row) {
                *d = E::from_f32(x);
            }
        }
        match &self.out {
            OutRows::F32(o) => put(o, off, row),
            OutRows::F16(o) => put(o, off, row),
            OutRows::BF16(o) => put(o, off, row),
        }
        if let Some(l) = &self.lse {
            let d = &plan.dims;
            // SAFETY: LSE entry (b, h, i) belongs to row (b, i, h) alone.
            unsafe { l.slice((b * d.q_heads + h) * d.q_len + i, 1)[0] = lse };
        }
    }
}
