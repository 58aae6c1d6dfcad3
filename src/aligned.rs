//! Zeroed buffers, and zeroed buffers that start on a cache line.
//!
//! The kernels load 8 floats at a time from a KV cache's rows (decode reads them in place) and
//! from a thread's staged K/V panel (prefill). From the allocator's address, 16 bytes past a line
//! at these sizes, every other such load spanned two lines: P·V inside P1 ran at 87% of the FMA
//! peak against 96% for the scores' gemm, and an f32 decode step from L2 measured 1.05–1.08×
//! faster from aligned rows. A [`LineAligned`] takes the allocator's zeroed memory a line longer
//! and starts at its first line boundary, which keeps a large buffer's untouched pages lazy (an
//! over-aligned allocation would be zeroed by writing every byte).

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use crate::error::{Error, Operand};
use half::{bf16, f16};

/// Bytes of a cache line.
const LINE_BYTES: usize = 64;

/// Element types whose all-zero bit pattern is the value zero (IEEE 0.0 for f32, f16, bf16; 0 for i8).
pub(crate) trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for f16 {}
impl ZeroBits for bf16 {}
impl ZeroBits for i8 {}

/// `n` zeros from the allocator's zeroed memory (untouched pages stay lazy, as with `vec!`), or an
/// `Err` naming `operand` when the size overflows or the allocator refuses: never an abort.
pub(crate) fn zeros<E: ZeroBits>(n: usize, operand: Operand) -> Result<Vec<E>, Error> {
    let layout = core::alloc::Layout::array::<E>(n).map_err(|_| Error::ShapeOverflow { operand })?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<E>();
    if ptr.is_null() {
        return Err(Error::AllocationFailed { operand, bytes: layout.size() });
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `[E; n]`, which is the
    // layout a `Vec<E>` of capacity `n` owns; its `n` elements are initialised, since all-zero
    // bytes are a valid `E` (ZeroBits: f32, f16 and bf16 zero).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// `len` values from the first line boundary of `buf` on; the rest of `buf` past them is zero.
#[derive(Debug, Default)]
pub(crate) struct LineAligned<E> {
    buf: Vec<E>,
    off: usize,
    len: usize,
}

impl<E: ZeroBits> LineAligned<E> {
    /// `n` zeros (see [`zeros`] for the errors).
    pub fn zeroed(n: usize, operand: Operand) -> Result<LineAligned<E>, Error> {
        // The element types are 1, 2 or 4 bytes, so a line holds a whole number of them.
        let pad = LINE_BYTES / core::mem::size_of::<E>();
        let buf = zeros::<E>(n.checked_add(pad).ok_or(Error::ShapeOverflow { operand })?, operand)?;
        // `align_offset` counts elements and is below `pad` for a pointer aligned for `E`; any
        // other answer (it may decline) leaves the values where the allocator put them.
        let off = match buf.as_ptr().align_offset(LINE_BYTES) {
            o if o < pad => o,
            _ => 0,
        };
        Ok(LineAligned { buf, off, len: n })
    }

    /// Grows to at least `n` values, keeping those held; new ones are 0. A new allocation takes
    /// at least twice the values held, as a `Vec` would, so growing a tile at a time copies
    /// each value a bounded number of times.
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // the K/V panel's, which needs std
    pub fn grow_to(&mut self, n: usize, operand: Operand) -> Result<(), Error> {
        if n <= self.len {
            return Ok(());
        }
        if n <= self.buf.len() - self.off {
            // Past `len` the allocation was never handed out, so it still holds zeros.
            self.len = n;
            return Ok(());
        }
        let mut grown = LineAligned::zeroed(n.max(self.len.saturating_mul(2)), operand)?;
        grown[..self.len].copy_from_slice(self);
        grown.len = n;
        *self = grown;
        Ok(())
    }
}

impl<E: ZeroBits> Clone for LineAligned<E> {
    /// A copy in a new allocation, aligned there (a `Vec`'s clone would keep the offset of the
    /// original's address). Aborts like a `Vec`'s clone when the allocator refuses.
    fn clone(&self) -> Self {
        let mut copy = LineAligned::zeroed(self.len, Operand::Cache).unwrap_or_else(|_| {
            // The original holds as many values, so only the allocator can have refused.
            let layout = core::alloc::Layout::array::<E>(self.buf.len());
            alloc::alloc::handle_alloc_error(layout.unwrap_or(core::alloc::Layout::new::<E>()))
        });
        copy.copy_from_slice(self);
        copy
    }
}

impl<E> Deref for LineAligned<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<E> DerefMut for LineAligned<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_line<E>(v: &[E]) -> bool {
        v.is_empty() || v.as_ptr() as usize % LINE_BYTES == 0
    }

    #[test]
    fn values_start_on_a_line_and_are_zero() {
        for n in [0usize, 1, 15, 16, 1000, 1 << 20] {
            let v = LineAligned::<f32>::zeroed(n, Operand::Cache).unwrap();
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0) && on_a_line(&v), "n = {n}");
            let h = LineAligned::<f16>::zeroed(n, Operand::Cache).unwrap();
            assert!(h.len() == n && on_a_line(&h), "n = {n}");
        }
    }

    #[test]
    fn growing_keeps_the_values_and_adds_zeros_on_a_line() {
        let mut v = LineAligned::<f32>::default();
        let mut held = 0;
        for n in [0usize, 72, 144, 100, 216, 5000, 5001, 40_000] {
            v.grow_to(n, Operand::Scratch).unwrap();
            let want = held.max(n);
            assert_eq!(v.len(), want);
            assert!(on_a_line(&v), "n = {n}");
            for (i, &x) in v.iter().enumerate() {
                let expect = if i < held { i as f32 + 1.0 } else { 0.0 };
                assert_eq!(x, expect, "n = {n}, value {i}");
            }
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as f32 + 1.0;
            }
            held = want;
        }
    }

    #[test]
    fn a_clone_holds_the_same_values_on_a_line() {
        let mut v = LineAligned::<i8>::zeroed(300, Operand::Cache).unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            *x = (i % 100) as i8;
        }
        let c = v.clone();
        assert_eq!(&c[..], &v[..]);
        assert!(on_a_line(&c));
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        assert!(matches!(
            LineAligned::<f32>::zeroed(usize::MAX - 3, Operand::Cache),
            Err(Error::ShapeOverflow { operand: Operand::Cache })
        ));
        let mut v = LineAligned::<f32>::zeroed(4, Operand::Scratch).unwrap();
        assert!(v.grow_to(usize::MAX / 2, Operand::Scratch).is_err());
        assert_eq!(v.len(), 4);
    }
}
