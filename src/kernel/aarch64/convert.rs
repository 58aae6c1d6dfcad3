//! Stored-value loads widened to f32 (f16 by `FCVTL`, bf16 by a shift, i8 by two `SXTL`), `widen`, and the staged
//! K-tile transpose.
//!
//! `Element` is sealed with exactly three impls and distinct `DTYPE`s, so matching on
//! `E::KIND` identifies `E` and the pointer casts below reinterpret nothing but `E` itself.
//! The match is on a constant and folds away in each monomorphisation.
//!
//! f16: `FCVTL Vd.4S, Vn.4H` (half to single) is part of the base ARMv8.0 Advanced SIMD set
//! (the `fp16` extension adds half-precision *arithmetic*, which no path here uses), so it
//! needs no run-time detection. It is issued with `asm!` because `core::arch`'s
//! `vcvt_f32_f16` takes `float16x4_t`, whose element type is not stable Rust (MSRV 1.85).

use core::arch::aarch64::*;
use core::arch::asm;

use crate::element::{Kind, Storage};

/// Four f16 bit patterns widened to f32, exactly (every f16, subnormals included, is an f32).
#[inline(always)]
pub(super) fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: FCVTL (half to single) is base ARMv8.0 AdvSIMD, present wherever this module is
    // compiled (`target_feature = "neon"`); it reads and writes registers only.
    unsafe {
        asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// Loads 4 consecutive elements at `p`, widened to f32.
///
/// # Safety
/// `p..p + 4` is readable.
#[inline(always)]
pub(super) unsafe fn load4<E: Storage>(p: *const E) -> float32x4_t {
    // SAFETY: the caller guarantees that 4 elements of `E` are readable; the casts follow
    // `E::KIND` (see the module docs): f16/bf16 are 2 bytes, so 4 of them are exactly the
    // 8 bytes `vld1_u16` reads, and 4 i8 the 4 bytes of the unaligned `i32` read. NEON is
    // baseline here.
    unsafe {
        match E::KIND {
            Kind::F32 => vld1q_f32(p.cast::<f32>()),
            Kind::F16 => cvt_f16x4(vld1_u16(p.cast::<u16>())),
            // bf16 is the upper half of an f32: widen the 16 bits and shift them into place.
            Kind::BF16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast::<u16>()))),
            // Sign-extend twice (i8 → i16 → i32), then convert (exact: |x| ≤ 128).
            Kind::I8 => {
                let bytes = vreinterpret_s8_s32(vdup_n_s32(p.cast::<i32>().read_unaligned()));
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(bytes))))
            }
        }
    }
}

/// Loads `len < 4` elements at `p`, widened to f32, with the other lanes 0.
///
/// # Safety
/// `p..p + len` is readable.
#[inline(always)]
pub(super) unsafe fn load_partial<E: Storage>(p: *const E, len: usize) -> float32x4_t {
    debug_assert!(len < 4);
    // All-zero bits are +0.0 in f32, f16 and bf16 (and 0 in i8), so a zeroed buffer of 4 f32s (enough bytes
    // for 4 elements of any `E`) pads every type. PERF: once per row tail.
    let mut buf = [0u32; 4];
    // SAFETY: the caller guarantees `len` readable elements; `buf` holds 16 bytes, at least
    // `len · size_of::<E>()`, and is aligned for every `E`.
    unsafe {
        core::ptr::copy_nonoverlapping(p.cast::<u8>(), buf.as_mut_ptr().cast::<u8>(), len * size_of::<E>());
        load4(buf.as_ptr().cast::<E>())
    }
}

/// Stores the first `len <= 4` lanes of `v` at `p`.
///
/// # Safety
/// `p..p + len` is writable.
#[inline(always)]
pub(super) unsafe fn store_partial(p: *mut f32, v: float32x4_t, len: usize) {
    let mut buf = [0.0f32; 4];
    // SAFETY: `buf` holds 4 floats; the caller guarantees `len <= 4` writable floats at `p`.
    unsafe {
        vst1q_f32(buf.as_mut_ptr(), v);
        core::ptr::copy_nonoverlapping(buf.as_ptr(), p, len);
    }
}

/// See [`crate::kernel::Kernel::widen`].
///
/// # Safety
/// `src` holds `len` readable elements and `dst` `len` writable floats.
#[inline(always)]
pub(super) unsafe fn widen<E: Storage>(src: *const E, dst: *mut f32, len: usize) {
    let mut i = 0;
    // SAFETY: every access is inside the `len` elements the caller guarantees: full vectors while
    // `i + 8 <= len` (then `i + 4`), then a partial one of `len − i < 4`.
    unsafe {
        while i + 8 <= len {
            let (x0, x1) = (load4(src.add(i)), load4(src.add(i + 4)));
            vst1q_f32(dst.add(i), x0);
            vst1q_f32(dst.add(i + 4), x1);
            i += 8;
        }
        if i + 4 <= len {
            vst1q_f32(dst.add(i), load4(src.add(i)));
            i += 4;
        }
        if i < len {
            store_partial(dst.add(i), load_partial(src.add(i), len - i), len - i);
        }
    }
}

/// See [`crate::kernel::Kernel::transpose_widen`]: 4×4 blocks transposed in registers (two
/// rounds of `TRN1`/`TRN2`), the edges element by element.
///
/// # Safety
/// `b` holds an `n × k` matrix with leading dimension `ldb` (rows may overlap, as in
/// [`crate::kernel::bounds::assert_fits_read`]) and `dst` a `k × n` one with `ldd` (as in
/// [`crate::kernel::bounds::assert_fits`]).
#[inline(always)]
pub(super) unsafe fn transpose_widen<E: Storage>(
    n: usize,
    k: usize,
    b: *const E,
    ldb: usize,
    dst: *mut f32,
    ldd: usize,
) {
    let (n4, k4) = (n & !3, k & !3);
    // SAFETY: blocks cover keys `j..j + 4 <= n4` and dimensions `p..p + 4 <= k4`, inside both
    // matrices; the edge loop reads element `(j, p)` of B and writes `(p, j)` of `dst`, `j < n`,
    // `p < k`.
    unsafe {
        let mut j = 0;
        while j < n4 {
            let mut p = 0;
            while p < k4 {
                let r0 = load4(b.add(j * ldb + p));
                let r1 = load4(b.add((j + 1) * ldb + p));
                let r2 = load4(b.add((j + 2) * ldb + p));
                let r3 = load4(b.add((j + 3) * ldb + p));
                let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1));
                let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
                let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3));
                let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
                vst1q_f32(dst.add(p * ldd + j), vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
                vst1q_f32(dst.add((p + 1) * ldd + j), vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
                vst1q_f32(dst.add((p + 2) * ldd + j), vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
                vst1q_f32(dst.add((p + 3) * ldd + j), vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
                p += 4;
            }
            j += 4;
        }
        // The k tail of the full key blocks, then the keys left over.
        for j in 0..n {
            let p_start = if j < n4 { k4 } else { 0 };
            for p in p_start..k {
                *dst.add(p * ldd + j) = (*b.add(j * ldb + p)).as_f32();
            }
        }
    }
}
