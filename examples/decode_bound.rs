//! Which limit binds the decode step: the decode call against three loops over the same K and V
//! bytes, each from a cold last-level cache, in one run.
//!
//! ```text
//! cargo run --release --example decode_bound -- [--threads 2] [--reps 21] [--len 32768]
//! ```
//! Shape: Hq = 32, Hkv = 8, D = 128, one query token, BSHD K and V (D2 at `--len 32768`).
//! For f32, f16 and bf16 K/V, each thread takes half the keys and:
//! - **read**: sums its K half, then its V half: the memory's streaming rate;
//! - **same arithmetic**: per 64 keys, widens each K row and feeds every 8 values to 4 FMAs (the 4
//!   query rows of a KV head), requesting the row 8 KiB ahead and the key's V row, then does
//!   the same over the 64 V rows. These are the decode step's FMAs and widenings per byte, and
//!   the order of requests it used for every call until 2026-12-01, without its softmax,
//!   horizontal sums or P·V blocking;
//! - **own phase**: the same arithmetic, but each tile's V rows are requested 8 KiB ahead as the
//!   V pass reads them, instead of alongside the K rows: each pass streams its own bytes, where
//!   the other order has the K pass stream both and the V pass read from L2 (the decode kernel's
//!   order until 2026-12-01, and still for calls with at most 4 MiB of K/V; larger ones now
//!   stream V during P·V);
//! - **decode**: `attention` with the 32 query rows against the same K and V.
//!
//! Each is reported in GB/s of K and V read (median of `reps` calls, the caches evicted before
//! each on every pool thread), the decode call as a fraction of the first two, and what the
//! V pass's own requests gain over that older order. See
//! `benches/README.md`, "Issue 11's rows, 2026-11-30, stop 16" and "Issue 11 item 2 (decode),
//! stop 22".

#[path = "bench/limits.rs"]
mod limits;

use std::hint::black_box;
use std::time::Instant;

use gated_attention::{attention, bf16, f16, AttentionOptions, Tensor, TensorMut};

/// MiB read between calls to evict the last-level cache (32 MiB L3 here).
const EVICT_MIB: usize = 128;
/// Query heads, KV heads, head dimension (D1/D2).
const HQ: usize = 32;
const HKV: usize = 8;
const D: usize = 128;
/// Keys per tile of the same-arithmetic loop (the decode tile of 2-byte K/V).
const TILE: usize = 64;

fn main() {
    let (mut threads, mut reps, mut len) = (2usize, 21usize, 32768usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: decode_bound [--threads N] [--reps N] [--len N]");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--threads" => threads = v.max(1),
            "--reps" => reps = v.max(1),
            "--len" => len = v.max(1),
            _ => {
                eprintln!("unknown argument {flag}");
                std::process::exit(2)
            }
        }
    }
    if !loops::available() {
        println!("decode_bound: the comparison loops need AVX2, FMA and F16C (x86_64); nothing measured");
        return;
    }
    // Whole tiles per thread, so that every loop reads exactly the decode call's bytes.
    let len = len.div_ceil(TILE * threads).max(1) * TILE * threads;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool");
    let buf = limits::BwBuffer::new(512.min(limits::mem_available_mib().unwrap_or(2048) / 4), threads);
    let n = len * HKV * D;
    let q: Vec<f32> = (0..HQ * D).map(|i| ((i % 37) as f32 - 18.0) * 0.01).collect();
    let mut out = vec![0.0f32; HQ * D];
    println!("decode_bound: {threads} threads, {len} keys, {HQ}/{HKV} heads, D {D}, cold, median of {reps}");
    println!(
        "| K/V | read GB/s | same arithmetic GB/s | own phase GB/s | decode GB/s | decode / read | decode / same arithmetic | own phase / same arithmetic |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kv in ["f32", "f16", "bf16"] {
        let (kx, vx) = (|i: usize| ((i % 29) as f32 - 14.0) * 0.01, |i: usize| ((i % 31) as f32) * 0.01);
        let pick = |want: &str| if kv == want { n } else { 0 };
        let (k32, v32): (Vec<f32>, Vec<f32>) = ((0..pick("f32")).map(kx).collect(), (0..pick("f32")).map(vx).collect());
        let (k16, v16): (Vec<f16>, Vec<f16>) = (
            (0..pick("f16")).map(|i| f16::from_f32(kx(i))).collect(),
            (0..pick("f16")).map(|i| f16::from_f32(vx(i))).collect(),
        );
        let (kb, vb): (Vec<bf16>, Vec<bf16>) = (
            (0..pick("bf16")).map(|i| bf16::from_f32(kx(i))).collect(),
            (0..pick("bf16")).map(|i| bf16::from_f32(vx(i))).collect(),
        );
        let bytes = (2 * n * if kv == "f32" { 4 } else { 2 }) as f64;
        let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        pool.install(|| {
            for _ in 0..reps + 1 {
                for (which, t) in times.iter_mut().enumerate() {
                    buf.evict_caches_on_pool(EVICT_MIB);
                    let start = Instant::now();
                    match which {
                        0..=2 => {
                            let pass = [loops::Pass::Read, loops::Pass::Arith, loops::Pass::OwnPhase][which];
                            rayon::broadcast(|ctx| {
                                let keys = len / ctx.num_threads();
                                let rows = (ctx.index() * keys * HKV * D)..((ctx.index() + 1) * keys * HKV * D);
                                let s = match kv {
                                    "f32" => loops::run(&k32[rows.clone()], &v32[rows], pass),
                                    "f16" => loops::run(&k16[rows.clone()], &v16[rows], pass),
                                    _ => loops::run(&kb[rows.clone()], &vb[rows], pass),
                                };
                                black_box(s);
                            });
                        }
                        _ => {
                            let o = TensorMut::bshd(&mut out[..], 1, 1, HQ, D);
                            let qt = Tensor::bshd(&q[..], 1, 1, HQ, D);
                            let (k, v) = match kv {
                                "f32" => {
                                    (Tensor::bshd(&k32[..], 1, len, HKV, D), Tensor::bshd(&v32[..], 1, len, HKV, D))
                                }
                                "f16" => {
                                    (Tensor::bshd(&k16[..], 1, len, HKV, D), Tensor::bshd(&v16[..], 1, len, HKV, D))
                                }
                                _ => (Tensor::bshd(&kb[..], 1, len, HKV, D), Tensor::bshd(&vb[..], 1, len, HKV, D)),
                            };
                            let r = attention(&qt, &k, &v, o, None, &AttentionOptions::new());
                            r.expect("decode call");
                        }
                    }
                    t.push(start.elapsed().as_secs_f64());
                }
            }
        });
        let gbps: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.remove(0); // the first pass warms the pool and the page tables
                t.sort_by(f64::total_cmp);
                bytes / t[t.len() / 2] / 1e9
            })
            .collect();
        println!(
            "| {kv} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            gbps[0],
            gbps[1],
            gbps[2],
            gbps[3],
            gbps[3] / gbps[0],
            gbps[3] / gbps[1],
            gbps[2] / gbps[1]
        );
    }
}

/// The comparison loops, for AVX2, FMA and F16C.
mod loops {
    /// What a loop does with the K and V bytes.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Pass {
        /// Sums K, then V.
        Read,
        /// Per tile, the K rows with 4 FMAs per value (each K row requested 8 KiB ahead and its
        /// V row alongside), then the V rows likewise: the decode kernel's order of requests
        /// for calls with at most 4 MiB of K/V (for all calls until 2026-12-01).
        Arith,
        /// As `Arith`, but the V pass requests its own rows 8 KiB ahead and the K pass only K's.
        OwnPhase,
    }

    /// True when the CPU runs [`run`].
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// K and V values the loops widen to f32.
    pub trait Value: Copy {
        /// Reads 8 values at `p` as f32.
        ///
        /// # Safety
        /// AVX2 and F16C are available and 8 values at `p` are readable.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256;
    }

    impl Value for f32 {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> core::arch::x86_64::__m256 {
            // SAFETY: the caller guarantees 8 readable floats and AVX.
            unsafe { core::arch::x86_64::_mm256_loadu_ps(p) }
        }
    }

    impl Value for gated_attention::bf16 {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
            use core::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable bf16 (16 bytes) and AVX2. bf16 is the
            // upper half of an f32: the 16 bytes in both halves of a register, and one byte
            // shuffle moves each value into the upper half of its lane (-128 zeroes a byte), as
            // the crate's kernel does since stop 26.
            unsafe {
                let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast::<__m128i>()));
                let to_lanes = _mm256_setr_epi8(
                    -128, -128, 0, 1, -128, -128, 2, 3, -128, -128, 4, 5, -128, -128, 6, 7, //
                    -128, -128, 8, 9, -128, -128, 10, 11, -128, -128, 12, 13, -128, -128, 14, 15,
                );
                _mm256_castsi256_ps(_mm256_shuffle_epi8(x, to_lanes))
            }
        }
    }

    impl Value for gated_attention::f16 {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
            use core::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable halves (16 bytes) and F16C.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
        }
    }

    /// Reads `k` then `v` (the same number of key rows of `HKV · D` values, whole tiles): a plain
    /// sum, or the decode step's FMAs per value in tiles of [`super::TILE`] keys (see [`Pass`]).
    pub fn run<E: Value>(k: &[E], v: &[E], pass: Pass) -> f32 {
        assert!(available() && k.len() == v.len() && k.len() % (super::TILE * super::HKV * super::D) == 0);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the features were detected just above; `k` and `v` hold whole tiles.
            unsafe { run_avx2(k, v, pass) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = pass;
            unreachable!("available() is false off x86_64")
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C are available; `k` and `v` hold whole tiles of key rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2<E: Value>(k: &[E], v: &[E], pass: Pass) -> f32 {
        // SAFETY: the caller's contract; inlined here, the loop gets the features.
        unsafe { run_inline(k, v, pass) }
    }

    /// [`run_avx2`]'s body (intrinsics stay `unsafe` calls here on every Rust version).
    ///
    /// # Safety
    /// As [`run_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_inline<E: Value>(k: &[E], v: &[E], pass: Pass) -> f32 {
        use core::arch::x86_64::*;
        let row = super::HKV * super::D;
        let ahead = 8192usize.div_ceil(row * size_of::<E>());
        // SAFETY: AVX is available (caller); no memory is touched.
        let (zero, q) = unsafe {
            // Four "query rows" of weights, as a KV head's GQA group.
            (
                _mm256_setzero_ps(),
                [_mm256_set1_ps(0.5), _mm256_set1_ps(-0.25), _mm256_set1_ps(0.125), _mm256_set1_ps(1.0)],
            )
        };
        let mut acc = [zero; 8];
        let keys = k.len() / row;
        // Requests the `row` values at `p` into L2.
        let request = |p: *const E| {
            for off in (0..row * size_of::<E>()).step_by(64) {
                // SAFETY: a prefetch has no architectural effect and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>().wrapping_add(off)) };
            }
        };
        if pass == Pass::Read {
            for x in [k, v] {
                for i in (0..keys * row).step_by(16) {
                    // SAFETY: 16 values from `i` lie inside `x` (rows of `row`, a multiple of 16).
                    unsafe { step(x.as_ptr().wrapping_add(i), false, &q, &mut acc) };
                }
            }
        } else {
            let own_phase = pass == Pass::OwnPhase;
            for t0 in (0..keys).step_by(super::TILE) {
                for j in t0..t0 + super::TILE {
                    let (kr, vr) = (k.as_ptr().wrapping_add(j * row), v.as_ptr().wrapping_add(j * row));
                    // This key's row 8 KiB ahead and, as the decode kernel asks, its V row.
                    request(k.as_ptr().wrapping_add((j + ahead) * row));
                    if !own_phase {
                        request(vr);
                    } else if j + ahead >= t0 + super::TILE {
                        // The V pass's first rows, requested as the K pass ends.
                        request(v.as_ptr().wrapping_add((j + ahead - super::TILE) * row));
                    }
                    for i in (0..row).step_by(16) {
                        // SAFETY: 16 values from `i` lie inside key row `j`.
                        unsafe { step(kr.wrapping_add(i), true, &q, &mut acc) };
                    }
                }
                for j in t0..t0 + super::TILE {
                    if own_phase {
                        request(v.as_ptr().wrapping_add((j + ahead) * row));
                    }
                    for i in (j * row..(j + 1) * row).step_by(16) {
                        // SAFETY: 16 values from `i` lie inside V row `j`.
                        unsafe { step(v.as_ptr().wrapping_add(i), true, &q, &mut acc) };
                    }
                }
            }
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: AVX is available (caller); `lanes` holds 8 floats.
        unsafe {
            let s = acc.iter().fold(zero, |s, &a| _mm256_add_ps(s, a));
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        }
        lanes.iter().sum()
    }

    /// Widens 16 values at `x` and adds them to `acc`, times each of the 4 weights with `arith`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available and 16 values at `x` are readable.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn step<E: Value>(
        x: *const E,
        arith: bool,
        q: &[core::arch::x86_64::__m256; 4],
        acc: &mut [core::arch::x86_64::__m256; 8],
    ) {
        use core::arch::x86_64::*;
        // SAFETY: the caller guarantees the features and 16 readable values.
        unsafe {
            let (a, b) = (E::load8(x), E::load8(x.wrapping_add(8)));
            if arith {
                for r in 0..4 {
                    acc[r] = _mm256_fmadd_ps(q[r], a, acc[r]);
                    acc[4 + r] = _mm256_fmadd_ps(q[r], b, acc[4 + r]);
                }
            } else {
                acc[0] = _mm256_add_ps(acc[0], a);
                acc[4] = _mm256_add_ps(acc[4], b);
            }
        }
    }
}
