//! The bound checks every kernel runs once per call before its unchecked loops: the shapes a
//! kernel method is given must fit the slices it is given.

/// Panics unless a row-major `rows × cols` matrix with leading dimension `ld` fits in `len`.
#[inline(always)]
pub(crate) fn assert_fits(len: usize, rows: usize, cols: usize, ld: usize) {
    if rows > 0 && cols > 0 {
        assert!(cols <= ld || rows == 1, "leading dimension shorter than a row");
    }
    assert_fits_read(len, rows, cols, ld);
}

/// [`assert_fits`] for an operand that is only read: its rows may overlap (`ld < cols`, e.g. a
/// key row broadcast over the sequence with stride 0), as long as the last one fits. Every row
/// `r < rows` then lies in `r·ld + cols ≤ (rows − 1)·ld + cols ≤ len`.
#[inline(always)]
pub(crate) fn assert_fits_read(len: usize, rows: usize, cols: usize, ld: usize) {
    if rows > 0 && cols > 0 {
        let end = (rows - 1).checked_mul(ld).and_then(|x| x.checked_add(cols));
        assert!(end.is_some_and(|end| end <= len), "matrix does not fit its slice");
    }
}

/// The shared start of `dot_rows`: bounds checks, then the empty shapes. Returns false when
/// nothing is left to compute (`out` already holds the result).
#[inline(always)]
pub(crate) fn dot_rows_prologue(
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    lda: usize,
    b_len: usize,
    ldb: usize,
    out: &mut [f32],
    ldo: usize,
) -> bool {
    assert_fits_read(a_len, m, k, lda);
    assert_fits_read(b_len, n, k, ldb);
    assert_fits(out.len(), m, n, ldo);
    if m == 0 || n == 0 {
        return false;
    }
    if k == 0 {
        for i in 0..m {
            out[i * ldo..i * ldo + n].fill(0.0);
        }
        return false;
    }
    true
}

/// Panics unless the rows `b[j·ldb + h·ldh ..][..k]`, `j < n`, `h < heads`, fit in `len`.
#[inline(always)]
pub(crate) fn assert_heads_fit(len: usize, n: usize, heads: usize, k: usize, ldb: usize, ldh: usize) {
    if n > 0 && heads > 0 && k > 0 {
        let last = (n - 1).checked_mul(ldb).and_then(|x| x.checked_add((heads - 1).checked_mul(ldh)?));
        assert!(last.and_then(|x| x.checked_add(k)).is_some_and(|end| end <= len), "rows do not fit their slice");
    }
}
