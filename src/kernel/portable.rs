//! The portable kernel: `wide::f32x8`, whose implementation `wide` picks at compile time (two
//! SSE2 halves on a default x86_64 build, NEON on aarch64, AVX with `-C target-cpu=native`).
//!
//! Numerics: without `+fma` in the build, `f32x8::mul_add` is `a·b + c` with two roundings,
//! so results can differ from the AVX2 kernel (and from [`super::exp::exp_f32`]) in the last
//! bits. The algorithms are the AVX2 kernel's with simpler blocking, all in safe code except
//! one slice reinterpretation in [`widen_slice`].

use half::f16;
use wide::{f32x8, i32x8, CmpGt, CmpLt};

use super::bounds::{assert_fits, assert_fits_read, dot_rows_prologue};
use super::exp::{HI, LN2_HI, LN2_LO, LO, LOG2E, P, ROUND_MAGIC};
use super::{Geometry, Isa, Kernel};
use crate::element::{Kind, Storage};

/// `wide` vectors; always available.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Portable;

/// Rows per gemm microkernel: 4 accumulators (8 SSE2 registers) plus B and the broadcast.
const MR: usize = 4;
/// Keys per `dot_rows` group.
const NK: usize = 4;
/// Key dimensions staged (widened) per `dot_rows` pass: `NK · KC` floats is 4 KiB of stack.
const KC: usize = 256;

#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    f32x8::new(s[..8].try_into().unwrap())
}

/// Loads `s.len() <= 8` floats, zero-filling the other lanes.
#[inline(always)]
fn load_partial(s: &[f32]) -> f32x8 {
    let mut buf = [0.0f32; 8];
    buf[..s.len()].copy_from_slice(s);
    f32x8::new(buf)
}

#[inline(always)]
fn store(s: &mut [f32], v: f32x8) {
    s[..8].copy_from_slice(v.as_array_ref());
}

/// `dst[i] = src[i]` widened; the lengths must match.
pub(crate) fn widen_slice<E: Storage>(src: &[E], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: length mismatch");
    if E::KIND == Kind::F16 {
        // SAFETY: `Storage` has exactly four impls and only `half::f16` has `KIND == F16`, so `src` is a
        // `&[f16]` already; the pointer and length come from that slice.
        let src = unsafe { core::slice::from_raw_parts(src.as_ptr().cast::<f16>(), src.len()) };
        // PERF: `half` converts slices with F16C when the CPU has it (run-time detected).
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    } else {
        // f32 copies and bf16 shifts; both vectorise as written.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.as_f32();
        }
    }
}

#[inline(always)]
fn to_bits(v: f32x8) -> i32x8 {
    i32x8::from(v.to_array().map(|x| x.to_bits() as i32))
}

#[inline(always)]
fn from_bits(v: i32x8) -> f32x8 {
    f32x8::new(v.to_array().map(|x| f32::from_bits(x as u32)))
}

/// `exp` of 8 lanes, [`super::exp::exp_f32`]'s sequence with `wide`'s `mul_add`.
#[inline(always)]
pub(crate) fn exp8(x: f32x8) -> f32x8 {
    let magic = f32x8::splat(ROUND_MAGIC);
    let nf = x.mul_add(f32x8::splat(LOG2E), magic) - magic;
    let r = nf.mul_neg_add(f32x8::splat(LN2_HI), x);
    let r = nf.mul_neg_add(f32x8::splat(LN2_LO), r);
    let mut p = f32x8::splat(P[0]);
    for &c in &P[1..] {
        p = p.mul_add(r, f32x8::splat(c));
    }
    let y = p.mul_add(r * r, r) + f32x8::ONE;
    // NaN lanes: `fast_round_int` gives i32::MIN (x86) or 0, whose shifted bits are 0.
    let e = from_bits(to_bits(y) + (nf.fast_round_int() << 23));
    // Ordered compares are false for NaN, so neither fix-up touches a NaN lane.
    let e = x.cmp_lt(f32x8::splat(LO)).blend(f32x8::ZERO, e);
    x.cmp_gt(f32x8::splat(HI)).blend(f32x8::splat(f32::INFINITY), e)
}

impl Kernel for Portable {
    const GEOMETRY: Geometry = Geometry::TUNED.with_gemm_mr(MR).check();

    fn isa(self) -> Isa {
        Isa::Portable
    }

    fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        assert_fits_read(a.len(), m, k, lda);
        assert_fits_read(b.len(), k, n, ldb);
        assert_fits(c.len(), m, n, ldc);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    c[i * ldc..i * ldc + n].fill(0.0);
                }
            }
            return;
        }
        let g = Gemm { k, a, lda, b, ldb, ldc, accumulate };
        let mut j = 0;
        // LOOP 1: 8-column strips of B (the last one narrower); LOOP 2: 4-row blocks of A.
        while j < n {
            let w = (n - j).min(8);
            if w == 8 {
                g.strip::<true>(m, j, w, c);
            } else {
                g.strip::<false>(m, j, w, c);
            }
            j += w;
        }
    }

    fn dot_rows<E: Storage>(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        if !dot_rows_prologue(m, n, k, a.len(), lda, b.len(), ldb, out, ldo) {
            return;
        }
        let mut buf = [0.0f32; NK * KC];
        // LOOP 1: groups of NK keys; LOOP 2: KC dimensions of them, widened once into `buf`;
        // LOOP 3: every query row against the staged keys.
        for j in (0..n).step_by(NK) {
            let nk = (n - j).min(NK);
            for p0 in (0..k).step_by(KC) {
                let kc = (k - p0).min(KC);
                for t in 0..nk {
                    let row = (j + t) * ldb + p0;
                    widen_slice(&b[row..row + kc], &mut buf[t * KC..t * KC + kc]);
                }
                let keys: [&[f32]; NK] = core::array::from_fn(|t| &buf[t * KC..t * KC + kc]);
                for i in 0..m {
                    let q = &a[i * lda + p0..i * lda + p0 + kc];
                    let mut acc = [f32x8::ZERO; NK];
                    let kc8 = kc & !7;
                    for p in (0..kc8).step_by(8) {
                        let qv = load(&q[p..]);
                        for (acc, key) in acc.iter_mut().zip(&keys) {
                            *acc = qv.mul_add(load(&key[p..]), *acc);
                        }
                    }
                    for (t, (acc, key)) in acc.iter().zip(&keys).enumerate().take(nk) {
                        let tail: f32 = q[kc8..].iter().zip(&key[kc8..]).map(|(x, y)| x * y).sum();
                        let s = acc.reduce_add() + tail;
                        let o = &mut out[i * ldo + j + t];
                        *o = if p0 == 0 { s } else { *o + s };
                    }
                }
            }
        }
    }

    fn transpose_widen<E: Storage>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize) {
        assert_fits_read(b.len(), n, k, ldb);
        assert_fits(dst.len(), k, n, ldd);
        let (n8, k8) = (n & !7, k & !7);
        for j in (0..n8).step_by(8) {
            for p in (0..k8).step_by(8) {
                let mut rows = [[0.0f32; 8]; 8];
                for (t, row) in rows.iter_mut().enumerate() {
                    let s = (j + t) * ldb + p;
                    widen_slice(&b[s..s + 8], row);
                }
                let cols = f32x8::transpose(rows.map(f32x8::new));
                for (t, col) in cols.iter().enumerate() {
                    store(&mut dst[(p + t) * ldd + j..], *col);
                }
            }
        }
        // The k tail of the full key blocks, then the keys left over.
        for j in 0..n {
            let p_start = if j < n8 { k8 } else { 0 };
            for p in p_start..k {
                dst[p * ldd + j] = b[j * ldb + p].as_f32();
            }
        }
    }

    fn widen<E: Storage>(self, src: &[E], dst: &mut [f32]) {
        widen_slice(src, dst);
    }

    fn exp_sum(self, x: &mut [f32], max: f32) -> f32 {
        let m = f32x8::splat(max);
        let mut acc = f32x8::ZERO;
        let mut chunks = x.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let e = exp8(load(chunk) - m);
            store(chunk, e);
            acc += e;
        }
        let tail = chunks.into_remainder();
        let e = exp8(load_partial(tail) - m);
        let e = &e.as_array_ref()[..tail.len()];
        tail.copy_from_slice(e);
        acc.reduce_add() + e.iter().sum::<f32>()
    }

    fn max(self, x: &[f32]) -> f32 {
        let mut acc = f32x8::splat(f32::NEG_INFINITY);
        let mut chunks = x.chunks_exact(8);
        for chunk in &mut chunks {
            acc = acc.fast_max(load(chunk));
        }
        acc.as_array_ref().iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    }

    fn scale(self, x: &mut [f32], alpha: f32) {
        let a = f32x8::splat(alpha);
        let mut chunks = x.chunks_exact_mut(8);
        for chunk in &mut chunks {
            store(chunk, load(chunk) * a);
        }
        for v in chunks.into_remainder() {
            *v *= alpha;
        }
    }
}

/// The operands of one gemm call.
struct Gemm<'a> {
    k: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    ldc: usize,
    accumulate: bool,
}

impl Gemm<'_> {
    /// Columns `j..j + w` of C, all `m` rows; `FULL` means `w == 8`.
    #[inline(always)]
    fn strip<const FULL: bool>(&self, m: usize, j: usize, w: usize, c: &mut [f32]) {
        let mut i = 0;
        while i + MR <= m {
            self.micro::<MR, FULL>(i, j, w, c);
            i += MR;
        }
        match m - i {
            0 => {}
            1 => self.micro::<1, FULL>(i, j, w, c),
            2 => self.micro::<2, FULL>(i, j, w, c),
            _ => self.micro::<3, FULL>(i, j, w, c),
        }
    }

    /// Rows `i..i + R` × columns `j..j + w` of C.
    #[inline(always)]
    fn micro<const R: usize, const FULL: bool>(&self, i: usize, j: usize, w: usize, c: &mut [f32]) {
        let k = self.k;
        let a_rows: [&[f32]; R] = core::array::from_fn(|r| &self.a[(i + r) * self.lda..][..k]);
        let mut acc = [f32x8::ZERO; R];
        for p in 0..k {
            let b_row = &self.b[p * self.ldb + j..];
            let bv = if FULL { load(b_row) } else { load_partial(&b_row[..w]) };
            for (acc, a_row) in acc.iter_mut().zip(&a_rows) {
                *acc = f32x8::splat(a_row[p]).mul_add(bv, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let c_row = &mut c[(i + r) * self.ldc + j..][..w];
            let acc = &acc.as_array_ref()[..w];
            if self.accumulate {
                for (c, &x) in c_row.iter_mut().zip(acc) {
                    *c += x;
                }
            } else {
                c_row.copy_from_slice(acc);
            }
        }
    }
}
