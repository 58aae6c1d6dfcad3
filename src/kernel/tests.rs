//! Every vector kernel against [`Scalar`], `exp` against f64, and the panics on short slices.
//!
//! Each check is a generic fn over [`Kernel`]; `kernel_tests!` makes one `#[test]` per ISA, and
//! the AVX2 ones print a note and pass when the CPU lacks the features. Timing runs are
//! `#[ignore]`d: `cargo test --release --lib kernel::tests::bench -- --ignored --nocapture`.
//!
//! Also compiled without libtest (`--cfg gated_attention_selftest`): then [`run_all`] calls the
//! same checks one after another on the calling thread, for `tests/emulated.rs` under qemu.
// Without libtest the `#[test]` fns vanish, and with them the only users of some helpers.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

extern crate std;

use half::{bf16, f16};
use std::{format, println, vec, vec::Vec};

use super::exp::{exp_f32, HI, LO};
use super::portable::{self, Portable};
use super::scalar::Scalar;
use super::Kernel;
use crate::element::{Element, Storage};
use crate::splitmix::SplitMix64 as Rng;

/// gemm: `|c − c_scalar| ≤ GEMM_RTOL · √k · (Σₚ |a·b| + |c₀|)`.
const GEMM_RTOL: f64 = 1e-5;
/// dot_rows: `|o − o_scalar| ≤ DOT_RTOL · √k · Σₚ |a·b|`.
const DOT_RTOL: f64 = 1e-5;
/// exp: the largest error against f64, in units in the last place of the f32 result.
const EXP_MAX_ULP: f64 = 2.0;
/// exp_sum's sum against an f64 sum of the values it wrote, relative, times `√len`.
const SUM_RTOL: f64 = 1e-6;

/// The sizes every m/n/k sweep covers: 0, 1, the tile edges and their neighbours.
const SIZES: [usize; 15] = [0, 1, 5, 6, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129];

/// Elements a `rows × cols` matrix with leading dimension `ld` needs.
fn fit_len(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// What the checks need of a stored type: [`Storage`] and a value from f32. The three float
/// types round; i8 takes `127·x` rounded and clamped (x in [-1, 1) gives the full range), and,
/// holding no NaN or infinity, 0 for NaN and ±127 beyond (so an i8 gap poisons nothing; the float
/// types' gaps still do).
trait TestElem: Storage {
    fn from_f32(x: f32) -> Self;
}
impl<E: Element> TestElem for E {
    fn from_f32(x: f32) -> Self {
        <E as Element>::from_f32(x)
    }
}
impl TestElem for i8 {
    fn from_f32(x: f32) -> Self {
        if x.is_nan() {
            0
        } else {
            libm::rintf(x * 127.0).clamp(-127.0, 127.0) as i8
        }
    }
}

/// A random `rows × cols` matrix, exactly as long as it must be, with NaN in the gaps between
/// rows so that a kernel reading them poisons its result.
fn matrix<E: TestElem>(rng: &mut Rng, rows: usize, cols: usize, ld: usize) -> Vec<E> {
    (0..fit_len(rows, cols, ld))
        .map(|i| <E as TestElem>::from_f32(if i % ld.max(1) < cols { rng.uniform() } else { f32::NAN }))
        .collect()
}

fn is_gap(i: usize, cols: usize, ld: usize) -> bool {
    i % ld.max(1) >= cols
}

macro_rules! kernel_tests {
    ($($check:ident),* $(,)?) => {
        mod portable_kernel {
            $(#[test] fn $check() { super::$check(super::Portable) })*
        }
        #[cfg(target_arch = "x86_64")]
        mod avx2_fma_kernel {
            $(#[test] fn $check() {
                match super::super::x86::Avx2Fma::try_new() {
                    Some(k) => super::$check(k),
                    None => super::println!("skipped: this CPU lacks AVX2/FMA/F16C"),
                }
            })*
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        mod neon_kernel {
            $(#[test] fn $check() {
                let k = super::super::aarch64::Neon::try_new().expect("NEON is part of the target");
                super::$check(k)
            })*
        }

        /// Every check for one kernel, each under `catch_unwind`: its name (`isa/check`) and
        /// whether it passed.
        #[cfg(all(gated_attention_selftest, feature = "std"))]
        fn run_checks<K: Kernel>(kern: K, report: &mut dyn FnMut(&str, bool)) {
            $(
                let name = format!("kernel/{}/{}", kern.isa().name(), stringify!($check));
                report(&name, !panics(|| $check(kern)));
            )*
        }
    };
}

/// The kernel checks for every vector kernel this build has, then the `exp` lanes against
/// `exp_f32`, on the calling thread (see the module docs).
#[cfg(all(gated_attention_selftest, feature = "std"))]
pub(crate) fn run_all(report: &mut dyn FnMut(&str, bool)) {
    run_checks(Portable, report);
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::x86::Avx2Fma::try_new() {
        run_checks(k, report);
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        let k = super::aarch64::Neon::try_new().expect("NEON is part of the target");
        run_checks(k, report);
        report("kernel/neon/exp_is_exp_f32", !panics(neon_exp_is_exp_f32));
    }
    report("kernel/exp_f32_accuracy", !panics(exp_f32_accuracy));
}

kernel_tests!(
    gemm_matches_scalar,
    gemm_variants_match_scalar,
    dot_rows_matches_scalar,
    dot_heads_matches_scalar,
    pv_heads_matches_reference,
    softmax_matches_scalar,
    conversions_exact,
    exp_sum_matches,
    max_scale_exact,
    short_slices_panic
);

/// `Scalar` indexes B and C rows even when a dimension is 0 and the slices are empty, so the
/// degenerate shapes get their answer here.
fn scalar_gemm(
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
    if m * n * k > 0 {
        Scalar.gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
    } else if !accumulate {
        fill_rows(c, m, n, ldc);
    }
}

/// Zeroes the `m × n` part of `c`.
fn fill_rows(c: &mut [f32], m: usize, n: usize, ldc: usize) {
    for i in 0..if n > 0 { m } else { 0 } {
        c[i * ldc..i * ldc + n].fill(0.0);
    }
}

fn check_gemm<K: Kernel>(
    kern: K,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    lds: (usize, usize, usize),
    accumulate: bool,
) {
    let (lda, ldb, ldc) = lds;
    let a = matrix::<f32>(rng, m, k, lda);
    let b = matrix::<f32>(rng, k, n, ldb);
    // With `accumulate == false` the whole of C is NaN: a kernel that reads it fails.
    let c0: Vec<f32> = if accumulate { matrix(rng, m, n, ldc) } else { vec![f32::NAN; fit_len(m, n, ldc)] };
    let (mut c, mut want) = (c0.clone(), c0.clone());
    kern.gemm(m, n, k, &a, lda, &b, ldb, &mut c, ldc, accumulate);
    scalar_gemm(m, n, k, &a, lda, &b, ldb, &mut want, ldc, accumulate);
    // Σₚ |a·b|, the size the rounding errors scale with.
    let abs = |x: &[f32]| x.iter().map(|v| v.abs()).collect::<Vec<f32>>();
    let mut mag = vec![0.0f32; c0.len()];
    scalar_gemm(m, n, k, &abs(&a), lda, &abs(&b), ldb, &mut mag, ldc, false);
    for (idx, (&got, &want)) in c.iter().zip(&want).enumerate() {
        let (i, j) = (idx / ldc.max(1), idx % ldc.max(1));
        if is_gap(idx, n, ldc) {
            assert_eq!(got.to_bits(), c0[idx].to_bits(), "gemm wrote outside C at ({i},{j})");
            continue;
        }
        let c_abs = if accumulate { c0[idx].abs() } else { 0.0 };
        let tol = GEMM_RTOL * (k.max(1) as f64).sqrt() * (mag[idx] + c_abs) as f64;
        assert!(
            ((got - want) as f64).abs() <= tol,
            "gemm {m}x{n}x{k} lds {lds:?} acc {accumulate} at ({i},{j}): {got} vs {want}"
        );
    }
}

fn gemm_matches_scalar<K: Kernel>(kern: K) {
    let mut rng = Rng(1);
    for (t, &m) in SIZES.iter().enumerate() {
        for &n in &SIZES {
            for &k in &[0, 1, 5, 8, 17, 64, 129] {
                check_gemm(kern, &mut rng, (m, n, k), (k + 3, n + 5, n + 2), (t + n + k) % 2 == 0);
            }
        }
    }
    for &k in &SIZES {
        for &(m, n) in &[(6, 16), (7, 17), (13, 40), (64, 64)] {
            for accumulate in [false, true] {
                check_gemm(kern, &mut rng, (m, n, k), (k + 1, n + 7, n + 3), accumulate);
                check_gemm(kern, &mut rng, (m, n, k), (k, n, n), accumulate);
            }
        }
    }
    // B strides that are 4 KiB multiples take the packed path, in chunks of 256 rows.
    for accumulate in [false, true] {
        check_gemm(kern, &mut rng, (13, 40, 300), (300, 1024, 41), accumulate);
        check_gemm(kern, &mut rng, (7, 33, 5), (6, 2048, 33), accumulate);
        // Under a single row block, passes of a few rows (the last one short).
        check_gemm(kern, &mut rng, (5, 40, 19), (19, 1024, 41), accumulate);
    }
    // A single row (or a single k step) may have any leading dimension, even 0.
    check_gemm(kern, &mut rng, (1, 37, 19), (0, 40, 0), false);
    check_gemm(kern, &mut rng, (11, 37, 1), (1, 0, 37), true);
}

/// Which of the rescaling gemms [`check_gemm_variant`] runs.
#[derive(Clone, Copy, Debug)]
enum Variant {
    /// `gemm_rescale`.
    Rescale,
    /// `gemm_at` with B of the given type, rescaling or not.
    Transposed(DTypeTag, bool),
}

/// The element type of a [`Variant::Transposed`] B.
#[derive(Clone, Copy, Debug)]
enum DTypeTag {
    F32,
    F16,
    BF16,
    I8,
}

/// `gemm_rescale` and `gemm_at` against `alpha·C + A·B` from the scalar gemm (B widened, A
/// transposed back), with the gemm tolerance plus `|alpha·c0|` in the size.
fn check_gemm_variant<K: Kernel>(
    kern: K,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    (lda, ldb, ldc): (usize, usize, usize),
    v: Variant,
) {
    let transposed = matches!(v, Variant::Transposed(..));
    // A as the kernel reads it (transposed: `k × m`), and row-major `m × k` for the reference.
    let a = if transposed { matrix::<f32>(rng, k, m, lda) } else { matrix::<f32>(rng, m, k, lda) };
    let mut a_rm = vec![0.0f32; m * k];
    for i in 0..m {
        for p in 0..k {
            a_rm[i * k + p] = if transposed { a[p * lda + i] } else { a[i * lda + p] };
        }
    }
    let b32 = matrix::<f32>(rng, k, n, ldb);
    let c0: Vec<f32> = matrix(rng, m, n, ldc);
    let alpha: Vec<f32> = (0..m).map(|i| [0.0, 1.0, 0.25, 0.9, 1e-3][i % 5]).collect();
    let rescale = match v {
        Variant::Rescale => true,
        Variant::Transposed(_, r) => r,
    };
    // B rounded to the variant's type, so the reference sees the values the kernel widens.
    let (b16, bb16): (Vec<f16>, Vec<bf16>) =
        (b32.iter().map(|&x| f16::from_f32(x)).collect(), b32.iter().map(|&x| bf16::from_f32(x)).collect());
    let b8: Vec<i8> = b32.iter().map(|&x| <i8 as TestElem>::from_f32(x)).collect();
    let b_ref: Vec<f32> = match v {
        Variant::Transposed(DTypeTag::F16, _) => b16.iter().map(|x| x.to_f32()).collect(),
        Variant::Transposed(DTypeTag::BF16, _) => bb16.iter().map(|x| x.to_f32()).collect(),
        Variant::Transposed(DTypeTag::I8, _) => b8.iter().map(|&x| x as f32).collect(),
        _ => b32.clone(),
    };
    let mut c = c0.clone();
    let mut stage = vec![f32::NAN; m * k + k * n];
    let al = rescale.then_some(&alpha[..]);
    match v {
        Variant::Rescale => kern.gemm_rescale(m, n, k, &a, lda, &b32, ldb, &mut c, ldc, &alpha),
        Variant::Transposed(DTypeTag::F32, _) => kern.gemm_at(m, n, k, &a, lda, &b32, ldb, &mut c, ldc, al, &mut stage),
        Variant::Transposed(DTypeTag::F16, _) => kern.gemm_at(m, n, k, &a, lda, &b16, ldb, &mut c, ldc, al, &mut stage),
        Variant::Transposed(DTypeTag::BF16, _) => {
            kern.gemm_at(m, n, k, &a, lda, &bb16, ldb, &mut c, ldc, al, &mut stage)
        }
        Variant::Transposed(DTypeTag::I8, _) => kern.gemm_at(m, n, k, &a, lda, &b8, ldb, &mut c, ldc, al, &mut stage),
    }
    let mut want = c0.clone();
    if rescale && n > 0 {
        for i in 0..m {
            for x in &mut want[i * ldc..i * ldc + n] {
                *x *= alpha[i];
            }
        }
    }
    scalar_gemm(m, n, k, &a_rm, k, &b_ref, ldb, &mut want, ldc, true);
    let abs = |x: &[f32]| x.iter().map(|v| v.abs()).collect::<Vec<f32>>();
    let mut mag = vec![0.0f32; c0.len()];
    scalar_gemm(m, n, k, &abs(&a_rm), k, &abs(&b_ref), ldb, &mut mag, ldc, false);
    for (idx, (&got, &want)) in c.iter().zip(&want).enumerate() {
        let (i, j) = (idx / ldc.max(1), idx % ldc.max(1));
        if is_gap(idx, n, ldc) {
            assert_eq!(got.to_bits(), c0[idx].to_bits(), "{v:?} wrote outside C at ({i},{j})");
            continue;
        }
        let scaled = if rescale { (alpha[i] * c0[idx]).abs() } else { c0[idx].abs() };
        let tol = GEMM_RTOL * (k.max(1) as f64).sqrt() * (mag[idx] + scaled) as f64;
        assert!(((got - want) as f64).abs() <= tol, "{v:?} {m}x{n}x{k} at ({i},{j}): {got} vs {want}");
    }
}

fn gemm_variants_match_scalar<K: Kernel>(kern: K) {
    let mut rng = Rng(11);
    let variants = [
        Variant::Rescale,
        Variant::Transposed(DTypeTag::F32, true),
        Variant::Transposed(DTypeTag::F32, false),
        Variant::Transposed(DTypeTag::F16, true),
        Variant::Transposed(DTypeTag::F16, false),
        Variant::Transposed(DTypeTag::BF16, true),
        Variant::Transposed(DTypeTag::I8, true),
        Variant::Transposed(DTypeTag::I8, false),
    ];
    for v in variants {
        for &m in &[0, 1, 4, 5, 6, 7, 13, 96] {
            for &n in &[0, 1, 7, 8, 16, 17, 40, 128] {
                for &k in &[0, 1, 5, 16, 33, 72] {
                    check_gemm_variant(kern, &mut rng, (m, n, k), (m.max(k) + 3, n + 5, n + 2), v);
                }
            }
        }
        // Strides that are 4 KiB multiples (packed when more than one row block reads B, else read
        // a few rows per pass).
        check_gemm_variant(kern, &mut rng, (13, 40, 70), (100, 1024, 41), v);
        check_gemm_variant(kern, &mut rng, (4, 128, 32), (200, 2048, 128), v);
        check_gemm_variant(kern, &mut rng, (6, 24, 13), (20, 1024, 30), v);
    }
}

/// The K scales `dot_heads` may take, laid out as int8 scale tensors are.
#[derive(Clone, Copy)]
enum Factors {
    None,
    /// Key `j`, head `h` at `j·(heads + 1) + h` (BSHD scales, padded).
    KeyMajor,
    /// At `j + h·(n + 2)` (head-major scales, as an `Int8KvCache` holds them, padded).
    HeadMajor,
}

/// `dot_heads` against an f64 dot product per (head, row, key), times the key's factor where
/// `factors` gives some (NaN in the slots between them).
fn check_dot_heads<K: Kernel, E: TestElem>(
    kern: K,
    rng: &mut Rng,
    heads: usize,
    (m, n, k): (usize, usize, usize),
    (ldb, ldh): (usize, usize),
    factors: Factors,
) {
    let lda = k + 3;
    let ldo = heads * m + 2;
    let a = matrix::<f32>(rng, heads * m, k, lda);
    let b_len = if n * heads * k == 0 { 0 } else { (n - 1) * ldb + (heads - 1) * ldh + k };
    let b: Vec<E> = (0..b_len).map(|_| <E as TestElem>::from_f32(rng.uniform())).collect();
    let pf: Vec<f16> = vec![f16::ZERO; b_len];
    let o0 = vec![f32::NAN; fit_len(n, heads * m, ldo)];
    let mut o = o0.clone();
    let mut tmp = vec![0.0f32; m * n];
    let (f_ld, f_hs) = match factors {
        Factors::KeyMajor => (heads + 1, 1),
        _ => (1, n + 2),
    };
    // NaN between the factors: a read of the wrong one poisons its scores.
    let mut f = vec![f32::NAN; n * f_ld + heads * f_hs];
    for j in 0..n {
        for h in 0..heads {
            f[j * f_ld + h * f_hs] = 0.25 + rng.uniform().abs() * 4.0;
        }
    }
    let scaled = !matches!(factors, Factors::None);
    let key_scales = scaled.then_some((&f[..], f_ld, f_hs));
    let pf = (&pf[..], ldb, ldh, k);
    kern.dot_heads(heads, m, n, k, &a, lda, &b, ldb, ldh, &mut o, ldo, pf, key_scales, &mut tmp);
    for h in 0..heads {
        for i in 0..m {
            for j in 0..n {
                let factor = if scaled { f[j * f_ld + h * f_hs] as f64 } else { 1.0 };
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a[(h * m + i) * lda + p] as f64 * b[j * ldb + h * ldh + p].as_f32() as f64 * factor;
                    want += x;
                    mag += x.abs();
                }
                let got = o[j * ldo + h * m + i] as f64;
                let tol = DOT_RTOL * (k.max(1) as f64).sqrt() * mag;
                assert!(
                    (got - want).abs() <= tol,
                    "dot_heads<{:?}> h{heads} {m}x{n}x{k} at ({h},{i},{j}): {got} vs {want}",
                    E::KIND
                );
            }
        }
    }
    for (idx, &x) in o.iter().enumerate() {
        if is_gap(idx, heads * m, ldo) {
            assert!(x.is_nan(), "dot_heads wrote outside out at {idx}");
        }
    }
}

/// `pv_heads` against `alpha·C + Pᵀ·V` per head summed in f64 (the gemm tolerance), and
/// bit for bit against the kernel's own `gemm_at` chunk by chunk (the loop it stands for), over
/// head-major, key-major and 4 KiB-strided V (which the AVX2 kernel leaves to its gemm), a key
/// whose row stride's bytes overflow, head widths that are and are not multiples of 16, and with
/// and without requests ahead.
fn pv_heads_matches_reference<K: Kernel>(kern: K) {
    let mut rng = Rng(23);
    for heads in [1, 3] {
        for hr in [1, 3, 4, 8] {
            for dv in [16, 24, 128] {
                for n in [0, 1, 13] {
                    for (chunk, ahead) in [(8, 2), (8, 0), (n.max(1), 0)] {
                        // Layout 3, a row stride whose bytes overflow, is a legal layout for one key.
                        for layout in (0..3).chain((n <= 1).then_some(3)) {
                            let shape = (heads, hr, dv, n, chunk, ahead, layout);
                            check_pv_heads::<K, f32>(kern, &mut rng, shape);
                            check_pv_heads::<K, f16>(kern, &mut rng, shape);
                            check_pv_heads::<K, bf16>(kern, &mut rng, shape);
                            check_pv_heads::<K, i8>(kern, &mut rng, shape);
                        }
                    }
                }
            }
        }
    }
}

/// One case of [`pv_heads_matches_reference`]; `layout` 0 is head-major V, 1 key-major, 2
/// key-major with rows 4 KiB apart, 3 rows `usize::MAX` apart (at most one key). V's gaps hold
/// NaN, so a read outside the rows poisons a sum.
fn check_pv_heads<K: Kernel, E: TestElem>(
    kern: K,
    rng: &mut Rng,
    (heads, hr, dv, n, chunk, ahead, layout): (usize, usize, usize, usize, usize, usize, usize),
) {
    let rows = heads * hr;
    let (v_ld, v_hs) = match layout {
        0 => (dv + 3, (n + 1) * (dv + 3)),
        1 => (heads * dv + 5, dv),
        3 => (usize::MAX, dv),
        _ => ((heads * dv).div_ceil(4096 / size_of::<E>()) * (4096 / size_of::<E>()), dv),
    };
    let v_len = if n == 0 { 0 } else { (n - 1) * v_ld + (heads - 1) * v_hs + dv };
    let mut v = vec![<E as TestElem>::from_f32(f32::NAN); v_len];
    let mut v_ref = vec![0.0f64; n * heads * dv];
    for j in 0..n {
        for h in 0..heads {
            for c in 0..dv {
                let x = <E as TestElem>::from_f32(rng.uniform());
                v[j * v_ld + h * v_hs + c] = x;
                v_ref[(j * heads + h) * dv + c] = f64::from(x.as_f32());
            }
        }
    }
    let p: Vec<f32> = (0..n * rows).map(|_| rng.uniform().abs()).collect();
    let c0: Vec<f32> = (0..rows * dv).map(|_| rng.uniform()).collect();
    let alpha: Vec<f32> = (0..rows).map(|i| [0.0, 1.0, 0.25, 0.9, 1e-3][i % 5]).collect();
    let shape = super::PvHeads { heads, hr, dv, n, v_ld, v_hs, chunk, ahead };
    let mut got = c0.clone();
    let mut tmp = vec![f32::NAN; (hr + dv) * chunk.max(n).max(1)];
    kern.pv_heads(shape, &p, &v, &mut got, &alpha, &mut tmp);
    // The loop `pv_heads` stands for, through the kernel's own `gemm_at`.
    let mut looped = c0.clone();
    for j0 in (0..n.max(1)).step_by(chunk) {
        let j1 = (j0 + chunk).min(n);
        for h in 0..heads {
            let (r0, r1) = (h * hr, (h + 1) * hr);
            let rescale = (j0 == 0).then(|| &alpha[r0..r1]);
            let vh = if n == 0 { &v[..0] } else { &v[j0 * v_ld + h * v_hs..] };
            let c = &mut looped[r0 * dv..r1 * dv];
            kern.gemm_at(
                hr,
                dv,
                j1 - j0,
                &p[(j0 * rows + r0).min(p.len())..],
                rows,
                vh,
                v_ld,
                c,
                dv,
                rescale,
                &mut tmp,
            );
        }
    }
    let case = format!(
        "{:?}: heads {heads}, {hr} rows, dv {dv}, {n} keys, chunk {chunk}, ahead {ahead}, layout {layout}",
        E::KIND
    );
    for r in 0..rows {
        let h = r / hr;
        for c in 0..dv {
            let (mut sum, mut mag) = (f64::from(alpha[r]) * f64::from(c0[r * dv + c]), 0.0f64);
            mag += sum.abs();
            for j in 0..n {
                let term = f64::from(p[j * rows + r]) * v_ref[(j * heads + h) * dv + c];
                sum += term;
                mag += term.abs();
            }
            let (g, l) = (got[r * dv + c], looped[r * dv + c]);
            let tol = GEMM_RTOL * (n.max(1) as f64).sqrt() * mag;
            assert!((f64::from(g) - sum).abs() <= tol, "{case} at ({r},{c}): {g} vs {sum}");
            assert_eq!(g.to_bits(), l.to_bits(), "{case} at ({r},{c}): {g} against the gemm_at loop's {l}");
        }
    }
}

fn dot_heads_matches_scalar<K: Kernel>(kern: K) {
    let mut rng = Rng(12);
    for &heads in &[1, 2, 3, 8] {
        for &m in &[1, 2, 3, 4, 5, 6, 7, 8, 9] {
            for &(n, k) in &[(0, 8), (4, 0), (1, 1), (5, 7), (17, 64), (32, 128), (3, 129)] {
                // Head-interleaved (BSHD) and head-major (BHSD) key rows.
                let none = Factors::None;
                check_dot_heads::<K, f16>(kern, &mut rng, heads, (m, n, k), (heads * (k + 1), k + 1), none);
                check_dot_heads::<K, f32>(kern, &mut rng, heads, (m, n, k), (k + 2, n * (k + 2) + 1), none);
                check_dot_heads::<K, bf16>(kern, &mut rng, heads, (m, n, k), (heads * k, k), none);
                check_dot_heads::<K, i8>(kern, &mut rng, heads, (m, n, k), (heads * (k + 3), k + 3), none);
                // With int8's K scales, laid out as the BSHD and head-major scale tensors are.
                for factors in [Factors::KeyMajor, Factors::HeadMajor] {
                    let ld = (heads * (k + 3), k + 3);
                    check_dot_heads::<K, i8>(kern, &mut rng, heads, (m, n, k), ld, factors);
                }
            }
        }
    }
}

/// One row's online-softmax step in f64 from the f32 differences the kernels exponentiate:
/// `(p, alpha, l, m)`.
fn softmax_row_f64(row: &[f32], m_old: f32, l_old: f32) -> (Vec<f64>, f64, f64, f32) {
    let tile_max = row.iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    let m_new = if tile_max > m_old { tile_max } else { m_old };
    if m_new == f32::NEG_INFINITY {
        return (vec![0.0; row.len()], 1.0, l_old as f64, m_old);
    }
    let p: Vec<f64> = row.iter().map(|&x| ((x - m_new) as f64).exp()).collect();
    let alpha = ((m_old - m_new) as f64).exp();
    (p.clone(), alpha, l_old as f64 * alpha + p.iter().sum::<f64>(), m_new)
}

/// `softmax_rows`, or `softmax_cols` when `transposed` with `pad` floats between the columns'
/// rows (0: the packed layout of a gathered tile).
fn check_softmax<K: Kernel>(kern: K, rng: &mut Rng, rows: usize, n: usize, transposed: bool, pad: usize) {
    // Rows: random scores with some masked (-inf) keys, some fully masked rows, and states
    // that are fresh (m = -inf), below, or above the tile's maximum.
    let ld = if transposed { rows + pad } else { n + 2 };
    let mut s = vec![f32::NAN; if transposed { fit_len(n, rows, ld) } else { fit_len(rows, n, ld) }];
    let at = |r: usize, j: usize| if transposed { j * ld + r } else { r * ld + j };
    for r in 0..rows {
        for j in 0..n {
            s[at(r, j)] = match (r % 5, j % 3) {
                (4, _) => f32::NEG_INFINITY,
                (_, 0) if r % 2 == 0 => f32::NEG_INFINITY,
                _ => rng.uniform() * 8.0,
            };
        }
    }
    let m0: Vec<f32> = (0..rows).map(|r| [f32::NEG_INFINITY, -3.0, 20.0, 1.0][r % 4]).collect();
    let l0: Vec<f32> = (0..rows).map(|r| if m0[r] == f32::NEG_INFINITY { 0.0 } else { 1.5 + r as f32 }).collect();
    let (mut m, mut l, mut alpha) = (m0.clone(), l0.clone(), vec![f32::NAN; rows]);
    let mut got = s.clone();
    if transposed {
        let mut tmp = vec![0.0; n];
        kern.softmax_cols(&mut got, ld, n, rows, &mut m, &mut l, &mut alpha, &mut tmp);
    } else {
        kern.softmax_rows(&mut got, ld, rows, n, &mut m, &mut l, &mut alpha);
    }
    for r in 0..rows {
        let row: Vec<f32> = (0..n).map(|j| s[at(r, j)]).collect();
        let (p, a, lw, mw) = softmax_row_f64(&row, m0[r], l0[r]);
        let ctx = format!("softmax transposed={transposed} {rows}x{n} row {r}");
        assert_eq!(m[r].to_bits(), mw.to_bits(), "{ctx}: m");
        assert!((alpha[r] as f64 - a).abs() <= 4e-7 * a, "{ctx}: alpha {} vs {a}", alpha[r]);
        assert!(
            (l[r] as f64 - lw).abs() <= SUM_RTOL * (n.max(1) as f64).sqrt() * lw + 4e-7 * lw,
            "{ctx}: l {} vs {lw}",
            l[r]
        );
        for (j, &pw) in p.iter().enumerate() {
            let g = got[at(r, j)] as f64;
            assert!((g - pw).abs() <= 4e-7 * pw, "{ctx}: p[{j}] {g} vs {pw}");
        }
    }
    for (idx, x) in got.iter().enumerate() {
        let inside = if transposed { !is_gap(idx, rows, ld) } else { !is_gap(idx, n, ld) };
        if !inside {
            assert!(x.is_nan(), "softmax wrote outside the scores at {idx}");
        }
    }
}

fn softmax_matches_scalar<K: Kernel>(kern: K) {
    let mut rng = Rng(13);
    for &rows in &[1, 2, 3, 4, 5, 8, 9, 17, 96] {
        for &n in &[1, 2, 3, 7, 8, 31, 32, 64, 72] {
            check_softmax(kern, &mut rng, rows, n, false, 0);
            check_softmax(kern, &mut rng, rows, n, true, 3);
            check_softmax(kern, &mut rng, rows, n, true, 0);
        }
    }
}

fn check_dot<K: Kernel, E: TestElem>(
    kern: K,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    (lda, ldb, ldo): (usize, usize, usize),
) {
    let a = matrix::<f32>(rng, m, k, lda);
    let b = matrix::<E>(rng, n, k, ldb);
    let o0 = vec![f32::NAN; fit_len(m, n, ldo)];
    let (mut o, mut want) = (o0.clone(), o0.clone());
    kern.dot_rows(m, n, k, &a, lda, &b, ldb, &mut o, ldo);
    let mut mag = o0.clone();
    if m * n * k > 0 {
        Scalar.dot_rows(m, n, k, &a, lda, &b, ldb, &mut want, ldo);
        // Σₚ |a·b|, the size the rounding errors scale with.
        let abs_a: Vec<f32> = a.iter().map(|v| v.abs()).collect();
        let abs_b: Vec<f32> = b.iter().map(|v| v.as_f32().abs()).collect();
        Scalar.dot_rows(m, n, k, &abs_a, lda, &abs_b, ldb, &mut mag, ldo);
    } else {
        fill_rows(&mut want, m, n, ldo);
        fill_rows(&mut mag, m, n, ldo);
    }
    for (idx, (&got, &want)) in o.iter().zip(&want).enumerate() {
        let (i, j) = (idx / ldo.max(1), idx % ldo.max(1));
        if is_gap(idx, n, ldo) {
            assert!(got.is_nan(), "dot_rows wrote outside out at ({i},{j})");
            continue;
        }
        let tol = DOT_RTOL * (k.max(1) as f64).sqrt() * mag[idx] as f64;
        assert!(
            ((got - want) as f64).abs() <= tol,
            "dot_rows<{:?}> {m}x{n}x{k} at ({i},{j}): {got} vs {want}",
            E::KIND
        );
    }
}

fn dot_rows_matches_scalar<K: Kernel>(kern: K) {
    let mut rng = Rng(2);
    for &m in &[0, 1, 2, 3, 4, 5, 8, 16] {
        for &n in &SIZES {
            for &k in &SIZES {
                let lds = (k + 3, k + 1, n + 2);
                check_dot::<K, f32>(kern, &mut rng, (m, n, k), lds);
                check_dot::<K, f16>(kern, &mut rng, (m, n, k), lds);
                check_dot::<K, bf16>(kern, &mut rng, (m, n, k), lds);
                check_dot::<K, i8>(kern, &mut rng, (m, n, k), lds);
            }
        }
    }
    check_dot::<K, f16>(kern, &mut rng, (4, 300, 64), (64, 64, 300));
    check_dot::<K, f32>(kern, &mut rng, (1, 9, 700), (0, 700, 9));
}

/// Values whose conversion has edges: signed zeros, infinities, f16 subnormals and extremes.
fn special<E: TestElem>() -> Vec<E> {
    let v = [0.0, -0.0, 1.0, -2.5, f32::INFINITY, f32::NEG_INFINITY, 6.0e-8, -6.1e-5, 65504.0, 1e-30, 3.0e38];
    v.iter().map(|&x| <E as TestElem>::from_f32(x)).collect()
}

fn same_bits(x: f32, y: f32) -> bool {
    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
}

fn check_conversions<K: Kernel, E: TestElem>(kern: K, rng: &mut Rng) {
    for len in (0..=40).chain([63, 64, 65, 127, 128, 129]) {
        let mut src: Vec<E> = (0..len).map(|_| <E as TestElem>::from_f32(rng.uniform() * 100.0)).collect();
        for (s, x) in src.iter_mut().zip(special::<E>().into_iter().chain([<E as TestElem>::from_f32(f32::NAN)])) {
            *s = x;
        }
        let mut dst = vec![f32::NAN; len];
        kern.widen(&src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            assert!(same_bits(s.as_f32(), *d), "widen<{:?}> len {len}: {d} vs {}", E::KIND, s.as_f32());
        }
    }
    for &n in &SIZES {
        for &k in &SIZES {
            let (ldb, ldd) = (k + 3, n + 5);
            let mut b = matrix::<E>(rng, n, k, ldb);
            for (i, x) in special::<E>().into_iter().enumerate() {
                if let Some(v) = b.get_mut(i * 7 % ldb.max(1)) {
                    *v = x;
                }
            }
            let mut dst = vec![f32::NAN; fit_len(k, n, ldd)];
            let mut want = dst.clone();
            kern.transpose_widen(n, k, &b, ldb, &mut dst, ldd);
            Scalar.transpose_widen(n, k, &b, ldb, &mut want, ldd);
            for (idx, (d, w)) in dst.iter().zip(&want).enumerate() {
                assert!(same_bits(*d, *w), "transpose_widen<{:?}> {n}x{k} at {idx}: {d} vs {w}", E::KIND);
            }
        }
    }
}

fn conversions_exact<K: Kernel>(kern: K) {
    let mut rng = Rng(3);
    check_conversions::<K, f32>(kern, &mut rng);
    check_conversions::<K, f16>(kern, &mut rng);
    check_conversions::<K, bf16>(kern, &mut rng);
    check_conversions::<K, i8>(kern, &mut rng);
    // Every bit pattern of the narrow types, in one row (so every lane position sees many).
    let every_f16: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let every_bf16: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let every_i8: Vec<i8> = (i8::MIN..=i8::MAX).collect();
    check_every::<K, f16>(kern, &every_f16);
    check_every::<K, bf16>(kern, &every_bf16);
    check_every::<K, i8>(kern, &every_i8);
}

/// `widen` of each value in `src` against the scalar widening, bit for bit (any NaN for a NaN).
fn check_every<K: Kernel, E: Storage>(kern: K, src: &[E]) {
    let mut dst = vec![0.0f32; src.len()];
    kern.widen(src, &mut dst);
    for (s, d) in src.iter().zip(&dst) {
        assert!(same_bits(s.as_f32(), *d), "widen<{:?}>: {d:e} vs {:e}", E::KIND, s.as_f32());
    }
}

/// `|got − exp(x)|` in units in the last place of the f32 nearest `exp(x)`; 0 when both are
/// flushed to 0 or overflow to infinity.
fn exp_ulp(x: f32, got: f32) -> f64 {
    let exact = (x as f64).exp();
    if exact < f32::MIN_POSITIVE as f64 {
        return if got == 0.0 { 0.0 } else { f64::INFINITY };
    }
    if exact as f32 == f32::INFINITY {
        return if got == f32::INFINITY { 0.0 } else { f64::INFINITY };
    }
    let ulp = 2f64.powi(exact.log2().floor() as i32 - 23);
    (got as f64 - exact).abs() / ulp
}

/// Inputs around every edge of `exp`, for the exact-value checks.
fn exp_edges() -> Vec<(f32, Option<f32>)> {
    // The next f32 away from zero.
    let next = |x: f32| f32::from_bits(x.to_bits() + 1);
    vec![
        (f32::NEG_INFINITY, Some(0.0)),
        (-1e30, Some(0.0)),
        (-104.0, Some(0.0)),
        (-88.0, Some(0.0)),
        (next(LO), Some(0.0)),
        (LO, None),
        (-0.0, Some(1.0)),
        (0.0, Some(1.0)),
        (1e-30, Some(1.0)),
        (HI, None),
        (next(HI), Some(f32::INFINITY)),
        (1e30, Some(f32::INFINITY)),
        (f32::INFINITY, Some(f32::INFINITY)),
    ]
}

/// The f32s in `[LO, HI]`, every `stride`-th bit pattern, plus dense runs at the ends and at 0.
fn exp_sweep(stride: usize) -> impl Iterator<Item = f32> {
    let neg = (0x8000_0000u32..=LO.to_bits()).step_by(stride);
    let pos = (0u32..=HI.to_bits()).step_by(stride);
    let dense = |x: f32| (x.to_bits() - 2000..x.to_bits()).map(f32::from_bits);
    neg.chain(pos).map(f32::from_bits).chain(dense(LO)).chain(dense(HI)).chain(dense(1e-3)).chain(dense(-1e-3))
}

#[cfg_attr(test, test)]
fn exp_f32_accuracy() {
    let mut worst = (0.0, 0.0f32);
    for x in exp_sweep(4099) {
        let u = exp_ulp(x, exp_f32(x));
        if u > worst.0 {
            worst = (u, x);
        }
    }
    println!("exp_f32: max error {:.3} ulp at x = {:e}", worst.0, worst.1);
    assert!(worst.0 <= EXP_MAX_ULP, "exp_f32: {} ulp at {}", worst.0, worst.1);
    for (x, want) in exp_edges() {
        let got = exp_f32(x);
        match want {
            Some(w) => assert_eq!(got.to_bits(), w.to_bits(), "exp_f32({x:e}) = {got:e}"),
            None => assert!(got.is_finite() && got >= f32::MIN_POSITIVE, "exp_f32({x:e}) = {got:e}"),
        }
    }
    assert!(exp_f32(f32::NAN).is_nan());
}

/// The portable lanes against f64 (they may differ from `exp_f32` without `+fma`).
#[test]
fn portable_exp_accuracy() {
    let xs: Vec<f32> = exp_sweep(4099).collect();
    let mut worst = (0.0, 0.0f32);
    for chunk in xs.chunks_exact(8) {
        let got = portable::exp8(wide::f32x8::new(chunk.try_into().unwrap())).to_array();
        for (&x, &y) in chunk.iter().zip(&got) {
            let u = exp_ulp(x, y);
            if u > worst.0 {
                worst = (u, x);
            }
        }
    }
    println!("portable exp8: max error {:.3} ulp at x = {:e}", worst.0, worst.1);
    // With fused multiply-adds (an x86 build with +avx,+fma) the lanes are exp_f32's.
    if cfg!(all(target_arch = "x86_64", target_feature = "avx", target_feature = "fma")) {
        for chunk in xs.chunks_exact(8) {
            let got = portable::exp8(wide::f32x8::new(chunk.try_into().unwrap())).to_array();
            for (&x, &y) in chunk.iter().zip(&got) {
                assert!(same_bits(y, exp_f32(x)), "portable exp({x:e}) = {y:e}, exp_f32 = {:e}", exp_f32(x));
            }
        }
    }
    assert!(worst.0 <= EXP_MAX_ULP, "portable exp8: {} ulp at {}", worst.0, worst.1);
}

/// A vector kernel's `exp` forms (`forms(lanes)`: the general one, then the softmax's for
/// arguments `<= 0` with and without the flush below `LO`) against `exp_f32`, bit for bit, over
/// the sweep and the edges.
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
fn exp_forms_are_exp_f32<const L: usize>(isa: &str, forms: impl Fn([f32; L]) -> [[f32; L]; 3]) {
    let xs: Vec<f32> = exp_sweep(4099).chain(exp_edges().into_iter().map(|e| e.0)).collect();
    for chunk in xs.chunks(L) {
        let mut lanes = [f32::NAN; L];
        lanes[..chunk.len()].copy_from_slice(chunk);
        let [general, nonpos, unflushed] = forms(lanes);
        for (i, &x) in lanes.iter().enumerate() {
            let want = exp_f32(x);
            assert!(same_bits(general[i], want), "{isa} exp({x:e}) = {:e}, exp_f32 = {want:e}", general[i]);
            // The softmax's forms: arguments `<= 0`; without the flush, only those `>= LO`.
            if x.is_nan() || x <= 0.0 {
                assert!(same_bits(nonpos[i], want), "{isa} softmax exp({x:e}) = {:e}, exp_f32 = {want:e}", nonpos[i]);
            }
            if x.is_nan() || (LO..=0.0).contains(&x) {
                let got = unflushed[i];
                assert!(same_bits(got, want), "{isa} unflushed softmax exp({x:e}) = {got:e}, exp_f32 = {want:e}");
            }
        }
    }
}

/// The AVX2 lanes agree with `exp_f32` bit for bit: same operations, all fused.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_exp_is_exp_f32() {
    let Some(token) = super::x86::Avx2Fma::try_new() else {
        println!("skipped: this CPU lacks AVX2/FMA/F16C");
        return;
    };
    exp_forms_are_exp_f32("avx2", |lanes| super::x86::exp8_for_test(token, lanes));
}

/// The NEON lanes agree with `exp_f32` bit for bit: same operations, all fused.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[cfg_attr(test, test)]
fn neon_exp_is_exp_f32() {
    let token = super::aarch64::Neon::try_new().expect("NEON is part of the target");
    exp_forms_are_exp_f32("neon", |lanes| super::aarch64::exp4_for_test(token, lanes));
}

fn exp_sum_matches<K: Kernel>(kern: K) {
    let mut rng = Rng(4);
    // Edges, NaN, and every tail length: each lane checked against f64, the sum against f64.
    let edges: Vec<f32> = exp_edges().iter().map(|e| e.0).collect();
    for len in (0..=17).chain([63, 64, 65, 129]) {
        for max in [0.0f32, 3.5, -20.0] {
            let x0: Vec<f32> =
                (0..len).map(|i| edges.get(i * 5 % 40).copied().unwrap_or(rng.uniform() * 30.0 - 15.0)).collect();
            let mut x = x0.clone();
            let sum = kern.exp_sum(&mut x, max);
            for (&v, &y) in x0.iter().zip(&x) {
                assert!(exp_ulp(v - max, y) <= EXP_MAX_ULP, "exp_sum({v:e} - {max}) = {y:e}");
            }
            let want: f64 = x.iter().map(|&y| y as f64).sum();
            let tol = SUM_RTOL * (len.max(1) as f64).sqrt() * want.abs();
            assert!(sum == want as f32 || (sum as f64 - want).abs() <= tol, "exp_sum len {len}: {sum} vs {want}");
        }
    }
    let mut x = vec![0.0, f32::NAN, -1.0, f32::NAN, f32::NEG_INFINITY];
    assert!(kern.exp_sum(&mut x, 0.0).is_nan());
    assert!(x[1].is_nan() && x[3].is_nan(), "NaN must survive exp_sum: {x:?}");
    assert_eq!((x[0], x[4]), (1.0, 0.0));
    assert_eq!(kern.exp_sum(&mut [], 0.0), 0.0);
}

fn max_scale_exact<K: Kernel>(kern: K) {
    let mut rng = Rng(5);
    for len in (0..=40).chain([63, 64, 65, 127, 128, 129]) {
        let x: Vec<f32> = (0..len).map(|_| rng.uniform() * 1e3).collect();
        assert_eq!(kern.max(&x).to_bits(), Scalar.max(&x).to_bits(), "max len {len}");
        let alpha = rng.uniform();
        let (mut got, mut want) = (x.clone(), x);
        kern.scale(&mut got, alpha);
        Scalar.scale(&mut want, alpha);
        assert_eq!(got, want, "scale len {len}");
    }
    assert_eq!(kern.max(&[f32::NEG_INFINITY, -3.0, f32::NEG_INFINITY]), -3.0);
}

fn panics(f: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
}

fn short_slices_panic<K: Kernel>(k: K) {
    let (a, b, mut c) = (vec![1.0f32; 64], vec![f16::ONE; 64], vec![0.0f32; 64]);
    assert!(panics(|| k.gemm(4, 4, 4, &a[..15], 4, &a, 4, &mut c, 4, false)));
    assert!(panics(|| k.gemm(4, 4, 4, &a, 4, &a[..12], 4, &mut c, 4, false)));
    assert!(panics(|| k.gemm(4, 4, 4, &a, 4, &a, 4, &mut c[..15], 4, true)));
    assert!(panics(|| k.gemm(4, 8, 4, &a, 4, &a, 4, &mut c, 4, false)), "ldc shorter than a row");
    assert!(panics(|| k.dot_rows(2, 8, 8, &a, 8, &b[..63], 8, &mut c, 8)));
    assert!(panics(|| k.dot_rows(2, 8, 8, &a[..15], 8, &b, 8, &mut c, 8)));
    assert!(panics(|| k.transpose_widen(8, 8, &b, 8, &mut c[..63], 8)));
    assert!(panics(|| k.widen(&b[..3], &mut c[..4])));
    // Two heads of 4 keys (rows 16 apart, heads 8): key-major factors take 4·2 floats.
    let (f, mut t) = (vec![1.0f32; 8], vec![0.0f32; 4]);
    let no_pf: (&[f16], usize, usize, usize) = (&[], 0, 0, 0);
    let dot_heads = |f: &[f32], c: &mut [f32], t: &mut [f32]| {
        k.dot_heads(2, 1, 4, 8, &a[..16], 8, &b, 16, 8, c, 2, no_pf, Some((f, 2, 1)), t)
    };
    assert!(panics(|| dot_heads(&f[..7], &mut c, &mut t)), "a factor short");
    // Two heads of 2 rows, 4 keys of 8 columns, head-major V (rows 8 apart, heads 32 apart).
    let pv = super::PvHeads { heads: 2, hr: 2, dv: 8, n: 4, v_ld: 8, v_hs: 32, chunk: 2, ahead: 1 };
    let (p, alpha) = (vec![0.5f32; 16], vec![1.0f32; 4]);
    let mut tmp = vec![0.0f32; 64];
    assert!(panics(|| k.pv_heads(pv, &p[..15], &b, &mut c, &alpha, &mut tmp)), "P short");
    assert!(panics(|| k.pv_heads(pv, &p, &b[..63], &mut c, &alpha, &mut tmp)), "V short");
    assert!(panics(|| k.pv_heads(pv, &p, &b, &mut c[..31], &alpha, &mut tmp)), "output short");
    assert!(panics(|| k.pv_heads(pv, &p, &b, &mut c, &alpha[..3], &mut tmp)), "a factor short");
    k.pv_heads(pv, &p, &b[..64], &mut c[..32], &alpha, &mut tmp);
    // Exactly fitting slices are fine.
    k.gemm(4, 4, 4, &a[..16], 4, &a[..16], 4, &mut c[..16], 4, false);
    k.dot_rows(2, 8, 8, &a[..16], 8, &b, 8, &mut c[..16], 8);
    dot_heads(&f, &mut c[..8], &mut t);
}

/// GFLOP/s of gemm (2·m·n·k flops per call), GB/s of K through `dot_rows`, ns per element of
/// `exp_sum`, all on L1/L2-resident data, next to the measured FMA peak of one core.
#[test]
#[ignore = "timing; run in release with --nocapture"]
fn bench() {
    use std::time::Instant;
    fn time(mut f: impl FnMut()) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..7 {
            let reps = 200;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        best
    }
    fn gemm_rate<K: Kernel>(kern: K, (m, n, k): (usize, usize, usize), ldb: usize) -> f64 {
        let mut rng = Rng(6);
        let a = matrix::<f32>(&mut rng, m, k, k);
        let b = matrix::<f32>(&mut rng, k, n, ldb);
        let mut c = vec![0.0; m * n];
        let s = time(|| kern.gemm(m, n, k, std::hint::black_box(&a), k, &b, ldb, &mut c, n, false));
        2.0 * (m * n * k) as f64 / s / 1e9
    }
    fn dot_rate<K: Kernel, E: Element>(kern: K, m: usize, n: usize, k: usize) -> f64 {
        let mut rng = Rng(7);
        let a = matrix::<f32>(&mut rng, m, k, k);
        let b = matrix::<E>(&mut rng, n, k, k);
        let mut o = vec![0.0; m * n];
        let s = time(|| kern.dot_rows(m, n, k, std::hint::black_box(&a), k, &b, k, &mut o, n));
        (n * k * core::mem::size_of::<E>()) as f64 / s / 1e9
    }
    fn exp_ns<K: Kernel>(kern: K) -> f64 {
        let mut x: Vec<f32> = (0..1024).map(|i| -(i as f32) * 0.01).collect();
        let s = time(|| {
            std::hint::black_box(kern.exp_sum(&mut x, 0.0));
            x.fill(-1.0);
        });
        s / 1024.0 * 1e9
    }
    fn report<K: Kernel>(kern: K, name: &str) {
        for shape in [(64, 64, 128), (64, 128, 64), (64, 128, 128), (64, 64, 256), (66, 130, 100)] {
            println!("{name} gemm m,n,k = {shape:?}: {:.1} GFLOP/s", gemm_rate(kern, shape, shape.1));
        }
        for ldb in [136, 256, 512, 1000, 1024, 2048, 4096] {
            println!("{name} gemm (64, 128, 64), ldb = {ldb}: {:.1} GFLOP/s", gemm_rate(kern, (64, 128, 64), ldb));
        }
        for m in [1, 4, 8] {
            println!("{name} dot_rows f16 m={m} n=512 k=128: {:.1} GB/s of K", dot_rate::<K, f16>(kern, m, 512, 128));
        }
        println!("{name} dot_rows f32 m=4 n=512 k=128: {:.1} GB/s of K", dot_rate::<K, f32>(kern, 4, 512, 128));
        println!("{name} exp_sum + fill: {:.2} ns/element", exp_ns(kern));
        for shape in [(96, 64, 128), (96, 128, 64), (96, 64, 64), (96, 128, 128)] {
            println!("{name} gemm_rescale m,n,k = {shape:?}: {:.1} GFLOP/s", rescale_rate::<_, false>(kern, shape));
        }
        // A prefill tile's two gemms as the driver calls them (P1: D 128, P3: D 64), with their
        // operands hot: the ceiling for the attention's gemm time.
        for (m, n, k) in [(72, 96, 128), (72, 96, 64)] {
            println!("{name} tile scores gemm m,n,k = {m},{n},{k}: {:.1} GFLOP/s", gemm_rate(kern, (m, n, k), n));
        }
        for shape in [(96, 128, 72), (96, 64, 72)] {
            println!("{name} tile P·V gemm_at m,n,k = {shape:?}: {:.1} GFLOP/s", rescale_rate::<_, true>(kern, shape));
        }
        println!("{name} softmax_rows 96 x 64: {:.2} ns/element", softmax_ns(kern, 96, 64));
        println!("{name} softmax_cols 72 x 96: {:.2} ns/element", softmax_cols_ns(kern, 72, 96));
        for ld in [128, 1024] {
            println!(
                "{name} transpose_widen f32 64 x 128, ld {ld}: {:.2} ns/element",
                transpose_ns::<K, f32>(kern, ld)
            );
            println!(
                "{name} transpose_widen f16 64 x 128, ld {ld}: {:.2} ns/element",
                transpose_ns::<K, f16>(kern, ld)
            );
        }
    }
    /// `diag(alpha)·C + A·B`, with A as it lies (`gemm_rescale`) or, with `AT`, transposed as
    /// P·V reads the scores (`gemm_at`).
    fn rescale_rate<K: Kernel, const AT: bool>(kern: K, (m, n, k): (usize, usize, usize)) -> f64 {
        let mut rng = Rng(8);
        let a = if AT { matrix::<f32>(&mut rng, k, m, m) } else { matrix::<f32>(&mut rng, m, k, k) };
        let b = matrix::<f32>(&mut rng, k, n, n);
        let alpha: Vec<f32> = (0..m).map(|i| 1.0 - i as f32 * 1e-3).collect();
        let mut c = vec![0.0; m * n];
        let mut stage = vec![0.0; 2 * (m * k + k * n)];
        let s = time(|| {
            let a = std::hint::black_box(&a);
            if AT {
                kern.gemm_at(m, n, k, a, m, &b, n, &mut c, n, Some(&alpha), &mut stage);
            } else {
                kern.gemm_rescale(m, n, k, a, k, &b, n, &mut c, n, &alpha);
            }
        });
        2.0 * (m * n * k) as f64 / s / 1e9
    }
    fn softmax_ns<K: Kernel>(kern: K, rows: usize, n: usize) -> f64 {
        let mut rng = Rng(9);
        let src = matrix::<f32>(&mut rng, rows, n, n);
        let mut x = src.clone();
        let (mut m, mut l, mut a) = (vec![0.5f32; rows], vec![1.0f32; rows], vec![0.0f32; rows]);
        let s = time(|| {
            kern.softmax_rows(std::hint::black_box(&mut x), n, rows, n, &mut m, &mut l, &mut a);
            m.fill(0.5);
        });
        s / (rows * n) as f64 * 1e9
    }
    fn softmax_cols_ns<K: Kernel>(kern: K, n: usize, rows: usize) -> f64 {
        let mut rng = Rng(9);
        let mut x = matrix::<f32>(&mut rng, n, rows, rows);
        let (mut m, mut l, mut a, mut tmp) =
            (vec![0.5f32; rows], vec![1.0f32; rows], vec![0.0f32; rows], vec![0.0f32; n]);
        let s = time(|| {
            kern.softmax_cols(std::hint::black_box(&mut x), rows, n, rows, &mut m, &mut l, &mut a, &mut tmp);
            m.fill(0.5);
        });
        s / (rows * n) as f64 * 1e9
    }
    fn transpose_ns<K: Kernel, E: Element>(kern: K, ld: usize) -> f64 {
        let mut rng = Rng(10);
        let (n, k) = (64, 128);
        let b = matrix::<E>(&mut rng, n, k, ld);
        let mut dst = vec![0.0f32; k * 64];
        let s = time(|| kern.transpose_widen(n, k, std::hint::black_box(&b), ld, &mut dst, 64));
        s / (n * k) as f64 * 1e9
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(kern) = super::x86::Avx2Fma::try_new() {
        println!("FMA peak (12 independent ymm chains): {:.1} GFLOP/s", fma_peak());
        report(kern, "avx2");
    }
    report(Portable, "portable");
}

/// Flops per second of 12 independent FMA chains: the ceiling for gemm on this core.
#[cfg(target_arch = "x86_64")]
fn fma_peak() -> f64 {
    use core::arch::x86_64::*;
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(unused_unsafe)] // these intrinsics are safe in a target_feature fn from Rust 1.87 on
    unsafe fn chains(iters: usize) -> f32 {
        // SAFETY: the caller guarantees the features; no memory is touched.
        unsafe {
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            acc.iter().map(|&v| _mm256_cvtss_f32(v)).sum()
        }
    }
    let iters = 50_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        // SAFETY: only called after `Avx2Fma::try_new()` succeeded.
        std::hint::black_box(unsafe { chains(std::hint::black_box(iters)) });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (iters * 12 * 16) as f64 / best / 1e9
}
