//! Software prefetch of a row's cache lines into L2, shared by the kernel's loops that stream
//! K and V ahead of their use (the key blocks of `dot`, the P·V chunks of `pv`, and
//! [`crate::kernel::Kernel::prefetch`]).
//!
//! Into L2 (`T1`), not L1: the rows arrive while the current keys stream through L1, and a
//! tile's K or V rows outgrow it before they are read (36 KiB at 72 keys of D 128 for a prefill
//! tile, against a 32 KiB L1). Measured against `T0`: on Zen 4, 1 thread, P3 1.2% faster with
//! f32 K/V and 2.5% with f16, P1 0.3% and 1–2%, sparse attention at L 4096 4%; the decode V rows
//! 3–9% faster on D2, cold.

use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};

/// Cache line bytes of every x86-64 CPU this kernel runs on.
const LINE: usize = 64;

/// Requests into L2 every cache line that the `bytes` bytes at `p` touch, from the line its
/// first byte lies in (a row that starts inside a line may touch one line more than the same
/// row on a line boundary). Nothing for `bytes == 0`.
///
/// Safe for any address: a prefetch has no architectural effect and never faults, and the
/// address arithmetic wraps.
#[inline(always)]
pub(super) fn prefetch_lines(p: *const i8, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let lead = p as usize % LINE;
    let line = p.wrapping_sub(lead);
    let end = lead.saturating_add(bytes);
    let mut off = 0;
    while off < end {
        // SAFETY: SSE is part of x86-64, and a prefetch never faults whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(off)) };
        off += LINE;
    }
}
