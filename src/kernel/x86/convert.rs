//! Stored-value loads widened to f32 (f16 by F16C, bf16 by a byte shuffle, i8 by
//! `vpmovsxbd`), `widen` and the staged K-tile transpose.
//!
//! `Storage` has exactly four impls (f32, f16, bf16, i8) with distinct `KIND`s, so matching on
//! `E::KIND` identifies `E` and the pointer casts below reinterpret nothing but `E` itself.
//! The match is on a constant and folds away in each monomorphisation.

use core::arch::x86_64::*;

use crate::element::{Kind, Storage};

/// Loads 8 consecutive elements at `p`, widened to f32.
///
/// # Safety
/// The CPU supports AVX2 and F16C, and `p..p + 8` is readable.
#[inline(always)]
pub(super) unsafe fn load8<E: Storage>(p: *const E) -> __m256 {
    // SAFETY: the caller guarantees the features and that 8 elements of `E` are readable; the
    // casts follow `E::KIND` (see the module docs): f16/bf16 are 2 bytes, so 8 of them are
    // exactly the 16 bytes `_mm_loadu_si128` reads, and 8 i8 are the 8 bytes `_mm_loadl_epi64`
    // reads.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm256_loadu_ps(p.cast::<f32>()),
            Kind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())),
            // bf16 is the upper half of an f32: one byte shuffle moves each value into the upper
            // half of its lane and zeroes the lower. The broadcast is a plain load, so this is one
            // vector operation per 8 values where zero-extending then shifting took two beside
            // the FMAs: bf16 decode 1.06–1.14× faster cold, 1.06–1.13× from cache (Zen 3, paired
            // call by call; `benches/README.md`, stop 26).
            Kind::BF16 => {
                // Byte `2i` and `2i + 1` of the 16 loaded go to bytes 2 and 3 of lane `i`; -128
                // (high bit set) zeroes a byte. Each 128-bit half shuffles within itself, so both
                // halves hold all 16 bytes (the broadcast) and pick their own four values.
                let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast::<__m128i>()));
                let to_lanes = _mm256_setr_epi8(
                    -128, -128, 0, 1, -128, -128, 2, 3, -128, -128, 4, 5, -128, -128, 6, 7, //
                    -128, -128, 8, 9, -128, -128, 10, 11, -128, -128, 12, 13, -128, -128, 14, 15,
                );
                _mm256_castsi256_ps(_mm256_shuffle_epi8(x, to_lanes))
            }
            // Sign-extend to i32 (`vpmovsxbd`), then convert (exact: |x| ≤ 128).
            Kind::I8 => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast::<__m128i>()))),
        }
    }
}

/// Loads `len < 8` elements at `p`, widened to f32, with the other lanes 0.
///
/// # Safety
/// The CPU supports AVX2 and F16C, and `p..p + len` is readable.
#[inline(always)]
pub(super) unsafe fn load_partial<E: Storage>(p: *const E, len: usize) -> __m256 {
    debug_assert!(len < 8);
    // All-zero bits are +0.0 in f32, f16 and bf16 (and 0 in i8), so a zeroed buffer of 8 f32s (enough bytes
    // for 8 elements of any `E`) pads every type. PERF: a few cycles once per row tail; AVX2
    // has no 16-bit masked load.
    let mut buf = [0u32; 8];
    // SAFETY: the caller guarantees `len` readable elements; `buf` holds 32 bytes, at least
    // `len · size_of::<E>()`, and is aligned for every `E`.
    unsafe {
        core::ptr::copy_nonoverlapping(p.cast::<u8>(), buf.as_mut_ptr().cast::<u8>(), len * size_of::<E>());
        load8(buf.as_ptr().cast::<E>())
    }
}

/// A mask with the first `len` (≤ 8) 32-bit lanes set.
///
/// # Safety
/// The CPU supports AVX2.
#[inline(always)]
pub(super) unsafe fn lane_mask(len: usize) -> __m256i {
    // SAFETY: the caller guarantees AVX2; no memory is touched.
    unsafe {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), lanes)
    }
}

/// `dst[i] = src[i]` widened, for `i < len`.
///
/// # Safety
/// The CPU supports AVX2 and F16C; `src` and `dst` are valid for `len` elements.
#[inline(always)]
pub(super) unsafe fn widen<E: Storage>(src: *const E, dst: *mut f32, len: usize) {
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: `i + 16 <= len`, and the caller guarantees the features.
        unsafe {
            let lo = load8(src.add(i));
            let hi = load8(src.add(i + 8));
            _mm256_storeu_ps(dst.add(i), lo);
            _mm256_storeu_ps(dst.add(i + 8), hi);
        }
        i += 16;
    }
    while i < len {
        let w = (len - i).min(8);
        // SAFETY: `i + w <= len`; the masked store writes only the first `w` lanes.
        unsafe {
            let v = if w == 8 { load8(src.add(i)) } else { load_partial(src.add(i), w) };
            _mm256_maskstore_ps(dst.add(i), lane_mask(w), v);
        }
        i += w;
    }
}

/// Transposes 8 rows of 8 lanes in registers.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn transpose8(r: &mut [__m256; 8]) {
    // SAFETY: the caller guarantees AVX; no memory is touched.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
        r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
        r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
        r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
        r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
        r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
        r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
        r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
    }
}

/// `dst[p·ldd + j] = b[j·ldb + p]` widened, for `j < n`, `p < k`.
///
/// # Safety
/// The CPU supports AVX2 and F16C; `b` holds an `n × k` matrix with leading dimension `ldb`
/// and `dst` a `k × n` one with leading dimension `ldd`.
#[inline(always)]
pub(super) unsafe fn transpose_widen<E: Storage>(
    n: usize,
    k: usize,
    b: *const E,
    ldb: usize,
    dst: *mut f32,
    ldd: usize,
) {
    let k8 = k & !7;
    let mut j = 0;
    // LOOP: 8 keys at a time; their rows stream once, each 8×8 block transposed in registers.
    while j + 8 <= n {
        let mut p = 0;
        while p < k8 {
            // SAFETY: AVX is available (caller); no memory is touched.
            let mut r = [unsafe { _mm256_setzero_ps() }; 8];
            for (t, row) in r.iter_mut().enumerate() {
                // SAFETY: key `j + t < n`, dims `p..p + 8 <= k`.
                *row = unsafe { load8(b.add((j + t) * ldb + p)) };
            }
            // SAFETY: AVX is available (caller).
            unsafe { transpose8(&mut r) };
            for (t, row) in r.iter().enumerate() {
                // SAFETY: dim `p + t < k`, keys `j..j + 8 <= n`.
                unsafe { _mm256_storeu_ps(dst.add((p + t) * ldd + j), *row) };
            }
            p += 8;
        }
        for t in 0..8 {
            for p in k8..k {
                // SAFETY: key `j + t < n`, dim `p < k`.
                unsafe { *dst.add(p * ldd + j + t) = (*b.add((j + t) * ldb + p)).as_f32() };
            }
        }
        j += 8;
    }
    for j in j..n {
        for p in 0..k {
            // SAFETY: key `j < n`, dim `p < k`.
            unsafe { *dst.add(p * ldd + j) = (*b.add(j * ldb + p)).as_f32() };
        }
    }
}
