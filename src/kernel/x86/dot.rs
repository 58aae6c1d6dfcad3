//! `out ← A·Bᵀ` for a few query rows against many key rows: the decode-shaped QKᵀ.
//!
//! With f16 keys this is memory-bound, so each key row is read from memory once: keys go in
//! chunks of 8 (a few KiB, which stay in L1) and every block of query rows passes over a
//! chunk. A block keeps `MR × NK = 8` accumulators (one per query/key pair) summing 8-lane
//! partial dot products, so each converted key vector feeds `MR` FMAs and each query vector,
//! a memory operand, feeds `NK`. One hadd tree then turns the 8 accumulators into one vector.

use core::arch::x86_64::*;

use super::convert::{load8, load_partial};
use super::prefetch::prefetch_lines;
use crate::element::Storage;

/// Keys per chunk; a multiple of every `NK` below.
const KEY_CHUNK: usize = 8;

/// How far ahead along the keys [`dot_heads`] requests the rows it will score, in bytes of what it
/// reads per key (the key's rows of every head it scores): two f32 or four f16 keys of a BSHD cache
/// with 8 heads of 128; in a head-major cache, where each head's rows are a stream of their own and
/// a decode unit scores 2 heads at D 128 (`driver`'s `APART_UNIT_KEY_BYTES`), 8 f32, 16 f16 or 32
/// int8 keys down each head's rows (16 while int8 units held 4 heads, before stop 27). The cores'
/// stream prefetchers stop at 4 KiB pages and start over behind the loads, so without the requests
/// the decode call waits on its keys: they made D1/D2-shaped calls (2048–32768 keys, cold, 2
/// threads) 1.19–1.27× faster with f32 BSHD keys, 1.05–1.09× with f16 BSHD, 1.07× with a head-major
/// f16 cache and 1.01–1.03× with int8, and cost 4–6% when the keys are already in cache. 4 to 16
/// KiB measure the same with BSHD keys, 2 KiB 0.89×. Counted per head's row instead (8 KiB down
/// each head's stream, 64 KiB in all for 8 heads), the head-major cache's requests ran too far
/// ahead: counted over the heads, cold D2-shaped calls on it ran 1.14× faster with f16, 1.13× with
/// bf16, 1.06–1.11× with f32 and 1.04–1.07× with int8, D1 (8192 keys, f16) 1.13× (paired call by
/// call; `benches/README.md`, stop 23).
const KEY_AHEAD_BYTES: usize = 8192;

/// See [`crate::kernel::Kernel::dot_rows`].
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `a` holds an `m × k` matrix (`lda`) and `b` an `n × k`
/// one (`ldb`) in the sense of [`crate::kernel::bounds::assert_fits_read`] (rows may overlap),
/// `out` an `m × n` one (`ldo`) in the sense of [`crate::kernel::bounds::assert_fits`].
#[inline(always)]
pub(super) unsafe fn dot_rows<E: Storage>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row `i < m` of `out` holds `n` elements.
            unsafe { core::ptr::write_bytes(out.add(i * ldo), 0, n) };
        }
        return;
    }
    let mut j = 0;
    // LOOP 1: chunks of keys, read from memory once.
    while j < n {
        let j_end = (j + KEY_CHUNK).min(n);
        let mut i = 0;
        // LOOP 2: blocks of query rows over the chunk: 4 rows × 2 keys, 2 × 4, or 1 × 8.
        while i + 4 <= m {
            // SAFETY: rows `i..i + MR` of A and `out` and keys `j..j_end` exist.
            unsafe { keys::<E, 4, 2>(i, j, j_end, k, a, lda, b, ldb, out, ldo) };
            i += 4;
        }
        while i + 2 <= m {
            // SAFETY: as above.
            unsafe { keys::<E, 2, 4>(i, j, j_end, k, a, lda, b, ldb, out, ldo) };
            i += 2;
        }
        if i < m {
            // SAFETY: as above.
            unsafe { keys::<E, 1, 8>(i, j, j_end, k, a, lda, b, ldb, out, ldo) };
        }
        j = j_end;
    }
}

/// Query rows `i..i + MR` against keys `j..j_end`, `NK` keys at a time, then 2, then 1.
///
/// # Safety
/// As [`dot_rows`], with rows `i..i + MR` and keys `j..j_end` in range and `k > 0`.
#[inline(always)]
unsafe fn keys<E: Storage, const MR: usize, const NK: usize>(
    i: usize,
    j: usize,
    j_end: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
) {
    let (a, out) = (a.wrapping_add(i * lda), out.wrapping_add(i * ldo));
    let mut j = j;
    while j + NK <= j_end {
        // SAFETY: keys `j..j + NK` are in range (caller).
        unsafe { block::<E, MR, NK>(k, a, lda, b.wrapping_add(j * ldb), ldb, out.wrapping_add(j), ldo) };
        j += NK;
    }
    // Pairs, then singles: fewer accumulators, but a short last chunk keeps some in flight.
    while NK > 2 && j + 2 <= j_end {
        // SAFETY: keys `j..j + 2` are in range (caller).
        unsafe { block::<E, MR, 2>(k, a, lda, b.wrapping_add(j * ldb), ldb, out.wrapping_add(j), ldo) };
        j += 2;
    }
    while j < j_end {
        // SAFETY: key `j` is in range (caller).
        unsafe { block::<E, MR, 1>(k, a, lda, b.wrapping_add(j * ldb), ldb, out.wrapping_add(j), ldo) };
        j += 1;
    }
}

/// `out[r·ldo + t] = a_r · b_t` for `r < MR`, `t < NK`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `a` points at `MR` rows of `k > 0` elements (`lda`),
/// `b` at `NK` rows of `k` elements (`ldb`), and `out` at `MR` rows of `NK` elements (`ldo`).
#[inline(always)]
unsafe fn block<E: Storage, const MR: usize, const NK: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
) {
    const { assert!(MR * NK <= 8) };
    // SAFETY: AVX is available (caller); no memory is touched.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut acc = [[zero; NK]; MR];
    let k8 = k & !7;
    let mut p = 0;
    while p < k8 {
        let mut kv = [zero; NK];
        for (t, x) in kv.iter_mut().enumerate() {
            // SAFETY: key row `t < NK` holds `k >= p + 8` elements.
            *x = unsafe { load8(b.add(t * ldb + p)) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: query row `r < MR` holds `k >= p + 8` elements; FMA is available.
            unsafe {
                let q = _mm256_loadu_ps(a.add(r * lda + p));
                for (acc_rt, &kv) in acc_r.iter_mut().zip(&kv) {
                    *acc_rt = _mm256_fmadd_ps(q, kv, *acc_rt);
                }
            }
        }
        p += 8;
    }
    if p < k {
        let w = k - p;
        // SAFETY: AVX2 is available (caller).
        let mask = unsafe { super::convert::lane_mask(w) };
        let mut kv = [zero; NK];
        for (t, x) in kv.iter_mut().enumerate() {
            // SAFETY: key row `t` holds `p + w = k` elements; the rest of the lanes are 0.
            *x = unsafe { load_partial(b.add(t * ldb + p), w) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: query row `r` holds `p + w` elements; masked lanes are not read.
            unsafe {
                let q = _mm256_maskload_ps(a.add(r * lda + p), mask);
                for (acc_rt, &kv) in acc_r.iter_mut().zip(&kv) {
                    *acc_rt = _mm256_fmadd_ps(q, kv, *acc_rt);
                }
            }
        }
    }
    let mut flat = [zero; 8];
    for (r, acc_r) in acc.iter().enumerate() {
        flat[r * NK..(r + 1) * NK].copy_from_slice(acc_r);
    }
    let mut sums = [0.0f32; 8];
    // SAFETY: AVX is available (caller); `sums` holds 8 floats.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(&flat)) };
    for r in 0..MR {
        for t in 0..NK {
            // SAFETY: row `r < MR` of `out` holds `NK` elements.
            unsafe { *out.add(r * ldo + t) = sums[r * NK + t] };
        }
    }
}

/// See [`crate::kernel::Kernel::dot_heads`].
///
/// Keys go in blocks of `KB` (8 / `M` for `M` ≤ 2 query rows per head, 2 for 3 rows, 3 for 4
/// rows, else 1) and, per block, the heads in order: a block of `KB` keys × `M` rows holds
/// `M·KB` accumulators, each query vector loaded once feeds `KB` FMAs, and each widened key
/// vector `M`. At 4 rows per head (GQA 4, the common decode shape), 3 keys give 12
/// accumulators, which keep both FMA pipes busy past their 4-cycle latency where 8 left them
/// waiting: decode from L2 (`kv_int8 --warm --len 512 --threads 1`) 1.06–1.07× faster with
/// f16 and int8 K/V, cold D2 int8 1.03–1.05×. Blocking heads instead (one
/// key, `8 / M` heads) loads every query vector for a single FMA; at 4 rows per head that is
/// 10 loads per 8 FMAs against 6 with 2 keys, which measured 1.45× slower from L1. Each head's row
/// of the key [`KEY_AHEAD_BYTES`] further along (counted over the heads) is requested as its
/// block is scored, so the reads, a few keys' rows at a time, do not wait on the hardware
/// prefetchers.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `a` holds `heads·m` rows of `k` floats (`lda`), `b` the
/// key rows `b[j·ldb + h·ldh ..][..k]` for `j < n`, `h < heads`, `out` `n` rows of `heads·m`
/// floats (`ldo`), `pf` the rows `pf[j·pf_ld + h·pf_lh ..][..pf_len]` (or `pf_len == 0`), and
/// `ks`, if any, the factors `ks.f[j·ks.ld + h·ks.hs]`.
#[inline(always)]
pub(super) unsafe fn dot_heads<E: Storage, F: Storage>(
    heads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    ldh: usize,
    out: *mut f32,
    ldo: usize,
    pf: (*const F, usize, usize, usize),
    ks: Option<KeyScales>,
) {
    if heads == 0 || m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // Every sum is 0, times its factor as the other kernels take it (0·NaN is NaN).
        for j in 0..n {
            for h in 0..heads {
                // SAFETY: key `j < n` of head `h < heads` has its factor (caller).
                let f = ks.map_or(1.0, |s| unsafe { *s.f.add(j * s.ld + h * s.hs) });
                // SAFETY: row `j < n` of `out` holds `heads·m` elements.
                let row = unsafe { core::slice::from_raw_parts_mut(out.add(j * ldo + h * m), m) };
                row.fill(0.0 * f);
            }
        }
        return;
    }
    let mut r0 = 0;
    // LOOP: groups of at most 8 rows of every head (decode has at most 8).
    while r0 < m {
        let g = HeadRows { m, a: a.wrapping_add(r0 * lda), out: out.wrapping_add(r0) };
        // SAFETY: rows `r0..r0 + M` of every head exist; the rest is the caller's contract.
        unsafe {
            match m - r0 {
                1 => heads_rows::<E, F, 1, 8>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                2 => heads_rows::<E, F, 2, 4>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                3 => heads_rows::<E, F, 3, 2>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                4 => heads_rows::<E, F, 4, 3>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                5 => heads_rows::<E, F, 5, 1>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                6 => heads_rows::<E, F, 6, 1>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                7 => heads_rows::<E, F, 7, 1>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
                _ => heads_rows::<E, F, 8, 1>(heads, n, k, &g, lda, b, ldb, ldh, ldo, pf, ks),
            }
        }
        r0 += 8;
    }
}

/// An int8 tile's K scales: key `j`'s sums of head `h` are multiplied by `f[j·ld + h·hs]`
/// before they are stored, so that no pass over the scores follows (the separate pass was part of
/// the 5–6.5% the two scale passes took of a decode call from L2, `benches/README.md`, stop 24).
#[derive(Clone, Copy)]
pub(super) struct KeyScales {
    pub f: *const f32,
    pub ld: usize,
    pub hs: usize,
}

/// A group of rows of every head: rows `r0..` of head `h` start at `a + h·m·lda` (queries)
/// and at column `h·m` of `out` (transposed scores; `out` points at column `r0`).
struct HeadRows {
    m: usize,
    a: *const f32,
    out: *mut f32,
}

/// `M` rows of every head against keys `0..n`, `KB` keys per block, with the rows of the keys
/// [`KEY_AHEAD_BYTES`] ahead (counted over the heads) and the block's prefetch rows requested as
/// it is read.
///
/// # Safety
/// As [`dot_heads`], for the `M` rows of each head that `g` points at; `k > 0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn heads_rows<E: Storage, F: Storage, const M: usize, const KB: usize>(
    heads: usize,
    n: usize,
    k: usize,
    g: &HeadRows,
    lda: usize,
    b: *const E,
    ldb: usize,
    ldh: usize,
    ldo: usize,
    pf: (*const F, usize, usize, usize),
    ks: Option<KeyScales>,
) {
    let (pf_p, pf_ld, pf_lh, pf_len) = pf;
    let pf_bytes = pf_len * size_of::<F>();
    // Keys ahead, from the bytes one key's rows of the heads take (heads that share their rows,
    // `ldh == 0`, read one).
    let k_bytes = k * size_of::<E>();
    let ahead = KEY_AHEAD_BYTES.div_ceil(if ldh == 0 { k_bytes } else { heads.saturating_mul(k_bytes) }.max(1));
    let mut j = 0;
    // LOOP: blocks of `KB` keys (single keys at the end), every head of each.
    while j < n {
        let kb = if j + KB <= n { KB } else { 1 };
        for h in 0..heads {
            let (a, bj, o) = (
                g.a.wrapping_add(h * g.m * lda),
                b.wrapping_add(j * ldb + h * ldh),
                g.out.wrapping_add(j * ldo + h * g.m),
            );
            for t in j..j + kb {
                // Wrapping: the row ahead may lie past the keys, where only the address is formed.
                let ahead_row = (t + ahead).wrapping_mul(ldb).wrapping_add(h * ldh);
                prefetch_lines(b.wrapping_add(ahead_row).cast::<i8>(), k_bytes);
            }
            let f = ks.map(|s| (s.f.wrapping_add(j * s.ld + h * s.hs), s.ld));
            // SAFETY: keys `j..j + kb` of head `h` exist (rows `ldb` apart, their scores `ldo`
            // apart, their factors, if any, `ks.ld`), and so do the head's `M` query rows; see
            // `key_block`.
            unsafe {
                if kb == KB {
                    key_block::<E, M, KB>(k, a, lda, bj, ldb, o, ldo, f);
                } else {
                    key_block::<E, M, 1>(k, a, lda, bj, ldb, o, ldo, f);
                }
            }
            for t in j..j + kb {
                prefetch_lines(pf_p.wrapping_add(t * pf_ld + h * pf_lh).cast::<i8>(), pf_bytes);
            }
        }
        j += kb;
    }
}

/// `out[t·ldo + r] = a[r·lda ..] · b[t·ldb ..]` (length `k`) for `t < KB`, `r < M`: `M` query
/// rows of one head against `KB` of its keys, each key's sums times `f.0[t·f.1]` with `f`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; the rows named exist with `k > 0` elements, and so do
/// the `KB` factors of `f`.
#[inline(always)]
unsafe fn key_block<E: Storage, const M: usize, const KB: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const E,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
    f: Option<(*const f32, usize)>,
) {
    // Key `t`'s factor (1 without `f`: a product by 1 is exact, and the branch is the same for
    // the whole call).
    let factor = |t: usize| {
        debug_assert!(t < KB);
        // SAFETY: key `t < KB` has its factor (caller); every call below passes a key of the
        // block.
        f.map_or(1.0, |(f, ld)| unsafe { *f.add(t * ld) })
    };
    // 12 accumulators and `min(M, KB)` vectors beside them fill the 16 ymm registers.
    const { assert!(M * KB <= 12) };
    // SAFETY: AVX is available (caller); no memory is touched.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut acc = [[zero; M]; KB];
    let k8 = k & !7;
    let mut p = 0;
    while p < k8 {
        // SAFETY: query row `r` and key row `t` hold `k >= p + 8` elements.
        unsafe {
            if M < KB {
                // The `M` query vectors stay in registers, one key vector at a time beside them.
                let mut q = [zero; M];
                for (r, q_r) in q.iter_mut().enumerate() {
                    *q_r = _mm256_loadu_ps(a.add(r * lda + p));
                }
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let kv = load8(b.add(t * ldb + p));
                    for (acc_tr, &q_r) in acc_t.iter_mut().zip(&q) {
                        *acc_tr = _mm256_fmadd_ps(q_r, kv, *acc_tr);
                    }
                }
            } else {
                // The `KB` widened key vectors stay in registers, one query vector at a time:
                // `M` query vectors beside `M·KB` accumulators would not fit (8 rows per head
                // spilled: 1.16–1.18× slower from L2 with f16 and int8 K/V, 64/8 heads, in a
                // one-off harness).
                let mut kv = [zero; KB];
                for (t, kv_t) in kv.iter_mut().enumerate() {
                    *kv_t = load8(b.add(t * ldb + p));
                }
                for r in 0..M {
                    let q_r = _mm256_loadu_ps(a.add(r * lda + p));
                    for (acc_t, &kv_t) in acc.iter_mut().zip(&kv) {
                        acc_t[r] = _mm256_fmadd_ps(q_r, kv_t, acc_t[r]);
                    }
                }
            }
        }
        p += 8;
    }
    if p < k {
        let w = k - p;
        // SAFETY: rows hold `p + w = k` elements; masked lanes are not read (0 in `kv`).
        unsafe {
            let mask = super::convert::lane_mask(w);
            let mut q = [zero; M];
            for (r, q_r) in q.iter_mut().enumerate() {
                *q_r = _mm256_maskload_ps(a.add(r * lda + p), mask);
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let kv = load_partial(b.add(t * ldb + p), w);
                for (acc_tr, &q_r) in acc_t.iter_mut().zip(&q) {
                    *acc_tr = _mm256_fmadd_ps(q_r, kv, *acc_tr);
                }
            }
        }
    }
    let mut flat = [zero; 16];
    for (t, acc_t) in acc.iter().enumerate() {
        flat[t * M..(t + 1) * M].copy_from_slice(acc_t);
    }
    // Lanes `c..c + 8` of the `M·KB` sums (key `t`, row `r` at `t·M + r`), 8 at a time.
    let mut c = 0;
    while c < M * KB {
        if M * KB - c <= 4 {
            // The last (or only) four or fewer sums: half the reduction of eight, and the same
            // additions in the same order. At 4 rows per head (12 sums per block) padding them to
            // eight reduced four vectors of zeros: decode from L2 (256 keys, 1 thread, f16 and
            // int8 K/V) measured 1.6–2.3% faster without (paired call by call, stop 24).
            // SAFETY: AVX is available (caller); `flat` holds 16 vectors and `c + 4 <= 16`.
            let sums = unsafe { hsum4(&*flat[c..c + 4].as_ptr().cast::<[__m256; 4]>()) };
            let t0 = c / M;
            if M == 4 {
                // SAFETY: key `t0`'s 4 sums go to the 4 adjacent floats at `out + t0·ldo`.
                unsafe {
                    let sums = if f.is_some() { _mm_mul_ps(sums, _mm_set1_ps(factor(t0))) } else { sums };
                    _mm_storeu_ps(out.add(t0 * ldo), sums);
                }
            } else {
                let mut lanes = [0.0f32; 4];
                // SAFETY: SSE is available (caller); `lanes` holds 4 floats.
                unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sums) };
                for (i, &x) in lanes.iter().enumerate().take(M * KB - c) {
                    let (t, r) = ((c + i) / M, (c + i) % M);
                    // SAFETY: the score of row `r` against key `t` is at `out + t·ldo + r`.
                    unsafe { *out.add(t * ldo + r) = x * factor(t) };
                }
            }
            break;
        }
        // SAFETY: AVX is available (caller); `flat` holds 16 vectors and `c + 8 <= 16`.
        let sums = unsafe { hsum8(&*flat[c..c + 8].as_ptr().cast::<[__m256; 8]>()) };
        let t0 = c / M;
        if M == 8 {
            // SAFETY: key `t0`'s 8 sums go to the 8 adjacent floats at `out + t0·ldo`.
            unsafe {
                let sums = if f.is_some() { _mm256_mul_ps(sums, _mm256_set1_ps(factor(t0))) } else { sums };
                _mm256_storeu_ps(out.add(t0 * ldo), sums);
            }
        } else if M == 4 {
            // SAFETY: keys `t0` and `t0 + 1` (if in the block) take lanes 0..4 and 4..8, 4 floats
            // each at `out + t·ldo`.
            unsafe {
                let (lo, hi) = (_mm256_castps256_ps128(sums), _mm256_extractf128_ps::<1>(sums));
                let lo = if f.is_some() { _mm_mul_ps(lo, _mm_set1_ps(factor(t0))) } else { lo };
                _mm_storeu_ps(out.add(t0 * ldo), lo);
                if t0 + 1 < KB {
                    let hi = if f.is_some() { _mm_mul_ps(hi, _mm_set1_ps(factor(t0 + 1))) } else { hi };
                    _mm_storeu_ps(out.add((t0 + 1) * ldo), hi);
                }
            }
        } else {
            let mut lanes = [0.0f32; 8];
            // SAFETY: AVX is available (caller); `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
            for (i, &x) in lanes.iter().enumerate().take(M * KB - c) {
                let (t, r) = ((c + i) / M, (c + i) % M);
                // SAFETY: the score of row `r` against key `t` is at `out + t·ldo + r`.
                unsafe { *out.add(t * ldo + r) = x * factor(t) };
            }
        }
        c += 8;
    }
}

/// Lane `i` of the result is the sum of the 8 lanes of `v[i]`, added in [`hsum8`]'s order.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn hsum4(v: &[__m256; 4]) -> __m128 {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        let h0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        _mm_add_ps(_mm256_castps256_ps128(h0123), _mm256_extractf128_ps::<1>(h0123))
    }
}

/// Lane `i` of the result is the sum of the 8 lanes of `v[i]`.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        // Each hadd level halves the vectors; lanes end up as [0 1 2 3 | 0 1 2 3] and
        // [4 5 6 7 | 4 5 6 7] halves of the per-vector sums, which one cross-lane add joins.
        let h01 = _mm256_hadd_ps(v[0], v[1]);
        let h23 = _mm256_hadd_ps(v[2], v[3]);
        let h45 = _mm256_hadd_ps(v[4], v[5]);
        let h67 = _mm256_hadd_ps(v[6], v[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let lo = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
        let hi = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
        _mm256_add_ps(lo, hi)
    }
}
