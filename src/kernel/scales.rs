//! One factor per (key, KV head) on transposed scores: the per-row scales of an int8 tile (K's
//! on the scores, V's on the probabilities).

/// Factors `f[j·ld + h·hs]` for key `j` and head `h`, as `(f, ld, hs)`.
pub(crate) type HeadScales<'a> = (&'a [f32], usize, usize);

/// Panics unless `scales`, if any, hold the factors of `n` keys of `heads` heads (what every
/// `Kernel::dot_heads` checks before it reads them).
pub(crate) fn assert_scales_fit(scales: Option<HeadScales<'_>>, n: usize, heads: usize) {
    if let Some((f, ld, hs)) = scales {
        super::bounds::assert_heads_fit(f.len(), n, heads, 1, ld, hs);
    }
}

/// Multiplies the transposed scores `st` (`n × ld`, the `hr` columns of head `hl` from `hl·hr`
/// on) of key `jj` and head `hl` by `scales.0[jj·scales.1 + hl·scales.2]`.
pub(crate) fn scale_heads(st: &mut [f32], ld: usize, hr: usize, n: usize, heads: usize, scales: HeadScales<'_>) {
    // PERF: a constant run length unrolls the runs into vector multiplies (decode has
    // hr = group size: 1, 2, 4 or 8 in every common model); measured 4× faster than the loop
    // with a run-time length on D2.
    match hr {
        1 => scale_runs::<1>(st, ld, n, heads, scales),
        2 => scale_runs::<2>(st, ld, n, heads, scales),
        4 => scale_runs::<4>(st, ld, n, heads, scales),
        8 => scale_runs::<8>(st, ld, n, heads, scales),
        _ => {
            let (f, f_ld, f_hs) = scales;
            for (jj, row) in st.chunks_mut(ld).take(n).enumerate() {
                for (hl, cols) in row[..heads * hr].chunks_exact_mut(hr).enumerate() {
                    let s = f[jj * f_ld + hl * f_hs];
                    cols.iter_mut().for_each(|x| *x *= s);
                }
            }
        }
    }
}

/// [`scale_heads`] with runs of `HR` columns.
#[inline(always)]
fn scale_runs<const HR: usize>(st: &mut [f32], ld: usize, n: usize, heads: usize, scales: HeadScales<'_>) {
    let (f, f_ld, f_hs) = scales;
    for jj in 0..n {
        let row = &mut st[jj * ld..jj * ld + heads * HR];
        let fr = &f[jj * f_ld..];
        for (hl, cols) in row.chunks_exact_mut(HR).enumerate() {
            let s = fr[hl * f_hs];
            for x in cols {
                *x *= s;
            }
        }
    }
}
