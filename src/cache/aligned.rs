//! A cache's K or V values, starting on a cache line.
//!
//! The decode kernels read a cache's rows in place, 8 floats per load. From the allocator's
//! address (16 bytes past a line at a cache's sizes) every other load of an f32 row spanned two
//! lines: decode from L2 (32/8 heads, D 128, 512 keys, 1 thread) measured 1.08× faster from
//! 64-byte-aligned rows. The values are taken a line's worth longer from the allocator's zeroed
//! memory, which keeps a large cache's untouched pages lazy (an over-aligned allocation would be
//! zeroed by writing every byte), and start at the first line boundary inside.

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use super::{zeros, ZeroBits};
use crate::error::{Error, Operand};

/// Bytes of a cache line.
const LINE_BYTES: usize = 64;

/// `len` zero-initialised values from the first line boundary of `buf` on.
#[derive(Debug)]
pub(super) struct LineAligned<E> {
    buf: Vec<E>,
    off: usize,
    len: usize,
}

impl<E: ZeroBits> LineAligned<E> {
    /// `n` zeros, or an `Err` when the allocator refuses or the size overflows.
    pub fn zeroed(n: usize) -> Result<LineAligned<E>, Error> {
        // The element types are 1, 2 or 4 bytes, so a line holds a whole number of them.
        let pad = LINE_BYTES / core::mem::size_of::<E>();
        let buf = zeros::<E>(n.checked_add(pad).ok_or(Error::ShapeOverflow { operand: Operand::Cache })?)?;
        // `align_offset` counts elements and is below `pad` for a pointer aligned for `E`; any
        // other answer (it may decline) leaves the values where the allocator put them.
        let off = match buf.as_ptr().align_offset(LINE_BYTES) {
            o if o < pad => o,
            _ => 0,
        };
        Ok(LineAligned { buf, off, len: n })
    }
}

impl<E: ZeroBits> Clone for LineAligned<E> {
    /// A copy in a new allocation, aligned there (a `Vec`'s clone would keep the offset of the
    /// original's address).
    fn clone(&self) -> Self {
        let mut copy = LineAligned::zeroed(self.len).expect("cloning a KV cache: allocation failed");
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

    #[test]
    fn values_start_on_a_line_and_are_zero() {
        for n in [0usize, 1, 15, 16, 1000, 1 << 20] {
            let v = LineAligned::<f32>::zeroed(n).unwrap();
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
            if n > 0 {
                assert_eq!(v.as_ptr() as usize % LINE_BYTES, 0, "n = {n}");
            }
            let h = LineAligned::<half::f16>::zeroed(n).unwrap();
            assert_eq!((h.len(), n > 0 && h.as_ptr() as usize % LINE_BYTES != 0), (n, false));
        }
    }

    #[test]
    fn a_clone_holds_the_same_values_on_a_line() {
        let mut v = LineAligned::<i8>::zeroed(300).unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            *x = (i % 100) as i8;
        }
        let c = v.clone();
        assert_eq!(&c[..], &v[..]);
        assert_eq!(c.as_ptr() as usize % LINE_BYTES, 0);
    }
}
