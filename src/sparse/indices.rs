//! The per-query key lists of sparse attention.

use alloc::vec::Vec;

use crate::error::{Error, Operand};
use crate::sparse::blocks::UnionSet;
use crate::Dims;

/// The entry that fills a list's unused slots (FlashMLA's convention).
pub const PAD: i32 = -1;

/// For each query row, the keys it may attend to: `k` slots per row, each a key index in
/// `0..kv_len` or [`PAD`].
///
/// Contiguous `[batch, q_len, k]` when one list serves every head ([`SparseIndices::shared`],
/// DeepSeek's and GSA's indexers), or `[batch, q_len, kv_heads, k]` with a list per KV head
/// ([`SparseIndices::per_kv_head`]). A key may appear at most once per list; the order of a list
/// does not change the result beyond rounding.
#[derive(Clone, Copy, Debug)]
pub struct SparseIndices<'a> {
    data: &'a [i32],
    batch: usize,
    q_len: usize,
    heads: usize,
    k: usize,
}

impl<'a> SparseIndices<'a> {
    /// One list of `k` slots per query row, shared by all heads: `data` is `[batch, q_len, k]`.
    pub fn shared(data: &'a [i32], batch: usize, q_len: usize, k: usize) -> Self {
        SparseIndices { data, batch, q_len, heads: 1, k }
    }

    /// One list per query row and KV head: `data` is `[batch, q_len, kv_heads, k]` (with one KV
    /// head this is [`SparseIndices::shared`]).
    pub fn per_kv_head(data: &'a [i32], batch: usize, q_len: usize, kv_heads: usize, k: usize) -> Self {
        SparseIndices { data, batch, q_len, heads: kv_heads, k }
    }

    /// Slots per list.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The entries and their sizes `[batch, q_len, heads, k]` (heads 1 when shared), as given,
    /// unchecked: for the reference, which checks them its own way.
    pub(crate) fn raw(&self) -> (&'a [i32], [usize; 4]) {
        (self.data, [self.batch, self.q_len, self.heads, self.k])
    }

    /// True when one list serves every head.
    pub fn is_shared(&self) -> bool {
        self.heads == 1
    }

    /// The list of query row `i` of batch `b` for KV head `kvh` (ignored when shared).
    /// Valid only after [`SparseIndices::validate`].
    pub(crate) fn row(&self, b: usize, i: usize, kvh: usize) -> &'a [i32] {
        let h = if self.heads == 1 { 0 } else { kvh };
        // In bounds of the validated `data` (its length is the checked product of the sizes).
        let start = ((b * self.q_len + i) * self.heads + h) * self.k;
        &self.data[start..start + self.k]
    }

    /// Checks the shape against `dims`, every entry's range and that no list repeats a key.
    pub fn validate(&self, dims: &Dims) -> Result<(), Error> {
        let mismatch = |dim, expected, found| Error::ShapeMismatch { operand: Operand::Indices, dim, expected, found };
        if self.batch != dims.batch {
            return Err(mismatch("batch", dims.batch, self.batch));
        }
        if self.q_len != dims.q_len {
            return Err(mismatch("q_len", dims.q_len, self.q_len));
        }
        if self.heads != 1 && self.heads != dims.kv_heads {
            return Err(mismatch("heads (1 or kv_heads)", dims.kv_heads, self.heads));
        }
        let len = [self.batch, self.q_len, self.heads, self.k]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or(Error::ShapeOverflow { operand: Operand::Indices })?;
        if self.data.len() != len {
            return Err(mismatch("batch * q_len * heads * k", len, self.data.len()));
        }
        if self.k == 0 {
            return Ok(());
        }
        let kv_len = dims.kv_len;
        // The first bad list decides the error, whatever the number of threads.
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let first_bad = self
                .data
                .par_chunks_exact(self.k)
                .map_init(|| ListCheck::new(self.k), |check, list| check.list(list, kv_len))
                .enumerate()
                .filter_map(|(n, r)| r.err().map(|e| (n, e)))
                .min_by_key(|(n, _)| *n);
            if let Some((_, e)) = first_bad {
                return Err(e);
            }
        }
        #[cfg(not(feature = "rayon"))]
        {
            let mut check = ListCheck::new(self.k);
            for list in self.data.chunks_exact(self.k) {
                check.list(list, kv_len)?;
            }
        }
        Ok(())
    }
}

/// Longest list that [`ListCheck`] checks with a hash set (about 1.3 MiB of scratch); longer
/// ones are sorted, so that a huge `k` costs each thread one copy of a list, as it always did,
/// not the set's five `u32`s per entry.
const HASHED_MAX: usize = 1 << 16;

/// A worker's scratch for checking lists of `k` entries: O(k) memory whatever `kv_len` is.
struct ListCheck {
    /// The keys seen so far, in a [`UnionSet`] (empty: every list is sorted instead).
    set: Vec<u32>,
    /// A sorted copy of a list, to name the same error whatever the order.
    sorted: Vec<i32>,
    k: usize,
}

impl ListCheck {
    fn new(k: usize) -> ListCheck {
        let mut set = Vec::new();
        // Without the set (too long a list, or no memory for it) the lists are sorted.
        if let Some(n) = UnionSet::scratch_len(k).filter(|_| k <= HASHED_MAX) {
            if set.try_reserve_exact(n).is_ok() {
                set.resize(n, 0);
            }
        }
        ListCheck { set, sorted: Vec::new(), k }
    }

    /// Checks one list: every entry in range and no key twice. A valid list is checked in one
    /// pass over a hash set (sorting every list, 2048 keys for each query row, was 2.6% of a
    /// sparse call at L 16384); a list with an error, or one too long for the set, is sorted,
    /// so that the error named is the one at the smallest entry, as it always was.
    fn list(&mut self, list: &[i32], kv_len: usize) -> Result<(), Error> {
        if !self.set.is_empty() {
            let mut set = UnionSet::carve(&mut self.set, self.k);
            set.begin(self.k);
            let valid = list.iter().all(|&e| e == PAD || (e >= 0 && (e as usize) < kv_len && set.add(e as u32)));
            if valid {
                return Ok(());
            }
        }
        self.sorted.resize(list.len(), 0);
        check_sorted(list, kv_len, &mut self.sorted)
    }
}

/// Checks one list's entries and that no key repeats, sorting a copy in `sorted` (`list.len()`
/// long).
fn check_sorted(list: &[i32], kv_len: usize, sorted: &mut [i32]) -> Result<(), Error> {
    sorted.copy_from_slice(list);
    sorted.sort_unstable();
    for (n, &e) in sorted.iter().enumerate() {
        if e == PAD {
            continue;
        }
        if e < 0 || e as usize >= kv_len {
            return Err(Error::IndexOutOfRange { index: e as i64, kv_len });
        }
        if n > 0 && sorted[n - 1] == e {
            return Err(Error::DuplicateIndex { index: e as usize });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_its_smallest_error_whatever_its_order() {
        let mut check = ListCheck::new(6);
        assert_eq!(check.list(&[3, PAD, 0, 5, PAD, 1], 6), Ok(()));
        // Out of range above, a duplicate below it: the duplicate (smaller) is named.
        assert_eq!(check.list(&[9, 2, 4, 2, PAD, 0], 6), Err(Error::DuplicateIndex { index: 2 }));
        assert_eq!(check.list(&[2, 9, 2, 4, PAD, 0], 6), Err(Error::DuplicateIndex { index: 2 }));
        // A negative entry other than PAD sorts first.
        assert_eq!(check.list(&[1, 1, -5, 0, 2, 3], 6), Err(Error::IndexOutOfRange { index: -5, kv_len: 6 }));
        assert_eq!(check.list(&[0, 1, 2, 3, 4, 6], 6), Err(Error::IndexOutOfRange { index: 6, kv_len: 6 }));
        // The scratch holds nothing over from a bad list: a valid one after it passes.
        assert_eq!(check.list(&[5, 4, 3, 2, 1, 0], 6), Ok(()));
        assert_eq!(check.list(&[PAD; 6], 6), Ok(()));
    }

    #[test]
    fn lists_past_the_hashed_length_are_sorted_with_the_same_errors() {
        let k = HASHED_MAX + 1;
        let mut check = ListCheck::new(k);
        assert!(check.set.is_empty());
        let mut list: Vec<i32> = (0..k as i32).rev().collect();
        assert_eq!(check.list(&list, k), Ok(()));
        list[7] = 3;
        assert_eq!(check.list(&list, k), Err(Error::DuplicateIndex { index: 3 }));
        list[7] = k as i32;
        assert_eq!(check.list(&list, k), Err(Error::IndexOutOfRange { index: k as i64, kv_len: k }));
    }
}
