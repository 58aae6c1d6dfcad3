//! The machine's limits, measured in the same run as the workloads: f32 FMA peak (prefill is
//! compute-bound) and streaming read bandwidth (decode is memory-bound).
#![allow(dead_code)] // shared by several targets (bench, decode_sweep, benches/attention), each using a part

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Independent FMA chains per thread. Zen 3 has two 4-cycle FMA pipes, so 8 chains saturate it;
/// 12 leaves room for cores with longer latency or more pipes without spilling (14 of 16 ymm).
pub const FMA_CHAINS: usize = 12;

/// FLOPs per inner iteration: chains × 8 lanes × 2 (multiply and add).
const FLOPS_PER_ITER: f64 = (FMA_CHAINS * 8 * 2) as f64;

/// Which FMA loop ran.
pub fn fma_kernel_name() -> &'static str {
    if has_avx2_fma() {
        "avx2-fma-12x256"
    } else {
        "scalar-fallback"
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `iters` iterations of 12 independent 256-bit FMA chains; returns a value that depends on all.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees AVX2 and FMA; the only memory access, the final store, writes
    // 8 floats into the local `[f32; 8]`.
    unsafe {
        // acc ← acc·a + b converges to b / (1 - a) = 0.1: no overflow, no denormals. The
        // constants pass through black_box, or LLVM folds a chain that starts at its fixed point.
        let a = _mm256_set1_ps(black_box(0.999_99));
        let b = _mm256_set1_ps(black_box(1e-6));
        let s0 = black_box(0.0f32);
        let mut c0 = _mm256_set1_ps(s0 + 0.00);
        let mut c1 = _mm256_set1_ps(s0 + 0.01);
        let mut c2 = _mm256_set1_ps(s0 + 0.02);
        let mut c3 = _mm256_set1_ps(s0 + 0.03);
        let mut c4 = _mm256_set1_ps(s0 + 0.04);
        let mut c5 = _mm256_set1_ps(s0 + 0.05);
        let mut c6 = _mm256_set1_ps(s0 + 0.06);
        let mut c7 = _mm256_set1_ps(s0 + 0.07);
        let mut c8 = _mm256_set1_ps(s0 + 0.08);
        let mut c9 = _mm256_set1_ps(s0 + 0.09);
        let mut c10 = _mm256_set1_ps(s0 + 0.10);
        let mut c11 = _mm256_set1_ps(s0 + 0.11);
        for _ in 0..iters {
            c0 = _mm256_fmadd_ps(c0, a, b);
            c1 = _mm256_fmadd_ps(c1, a, b);
            c2 = _mm256_fmadd_ps(c2, a, b);
            c3 = _mm256_fmadd_ps(c3, a, b);
            c4 = _mm256_fmadd_ps(c4, a, b);
            c5 = _mm256_fmadd_ps(c5, a, b);
            c6 = _mm256_fmadd_ps(c6, a, b);
            c7 = _mm256_fmadd_ps(c7, a, b);
            c8 = _mm256_fmadd_ps(c8, a, b);
            c9 = _mm256_fmadd_ps(c9, a, b);
            c10 = _mm256_fmadd_ps(c10, a, b);
            c11 = _mm256_fmadd_ps(c11, a, b);
        }
        let s = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
            _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)),
        );
        let s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        lanes.iter().sum()
    }
}

/// The same arithmetic without AVX2: 12 chains of 8-lane arrays the compiler may vectorize with
/// whatever the build targets (the number it gives is that build's peak, not the machine's).
fn fma_chains_portable(iters: u64) -> f32 {
    let a = black_box(0.999_99f32);
    let b = black_box(1e-6f32);
    let mut c = [[0.0f32; 8]; FMA_CHAINS];
    for (i, chain) in c.iter_mut().enumerate() {
        *chain = [i as f32 * 0.01; 8];
    }
    for _ in 0..iters {
        for chain in c.iter_mut() {
            for x in chain.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
    }
    c.iter().flatten().sum()
}

fn fma_chains(iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time just above.
            return unsafe { fma_chains_avx2(iters) };
        }
    }
    fma_chains_portable(iters)
}

/// Runs `work(thread_index)` on `threads` scoped threads released together by a barrier and
/// returns the time from the first thread's start to the last thread's end. Each thread reads the
/// clock itself: with as many workers as cores, a coordinating thread that timed the run would
/// wait for a core and start its clock late.
fn timed_on_threads<F: Fn(usize) + Sync>(threads: usize, work: F) -> Duration {
    let start = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, work) = (&start, &work);
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    work(t);
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("limit thread panicked")).collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("at least one thread");
    let last = spans.iter().map(|s| s.1).max().expect("at least one thread");
    last - first
}

/// f32 FMA peak in GFLOP/s on `threads` threads: the best of `trials` runs of about
/// `trial_ms` each.
pub fn fma_peak_gflops(threads: usize, trials: usize, trial_ms: u64) -> f64 {
    // Calibrate the iteration count on one thread so a trial lasts about trial_ms.
    let mut iters = 1u64 << 16;
    loop {
        let t0 = Instant::now();
        black_box(fma_chains(black_box(iters)));
        let el = t0.elapsed();
        if el >= Duration::from_millis(trial_ms / 4).max(Duration::from_millis(5)) {
            let scale = trial_ms as f64 / 1e3 / el.as_secs_f64();
            iters = ((iters as f64 * scale) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    let mut best = 0.0f64;
    for _ in 0..trials {
        let el = timed_on_threads(threads, |_| {
            black_box(fma_chains(black_box(iters)));
        });
        let gflops = FLOPS_PER_ITER * iters as f64 * threads as f64 / el.as_secs_f64() / 1e9;
        best = best.max(gflops);
    }
    best
}

/// A large f32 buffer for the bandwidth measurement, written (so its pages exist) in parallel.
pub struct BwBuffer {
    data: Vec<f32>,
}

impl BwBuffer {
    /// `mib` MiB of f32, filled with small values.
    pub fn new(mib: usize, threads: usize) -> BwBuffer {
        let n = mib * (1 << 20) / 4;
        let mut data: Vec<f32> = Vec::with_capacity(n);
        let spare = &mut data.spare_capacity_mut()[..n];
        let chunk = n.div_ceil(threads.max(1));
        std::thread::scope(|s| {
            for (t, part) in spare.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (i, x) in part.iter_mut().enumerate() {
                        x.write(((t * chunk + i) % 1024) as f32 * 1e-3);
                    }
                });
            }
        });
        // SAFETY: the loop above wrote every one of the first `n` elements.
        unsafe { data.set_len(n) };
        BwBuffer { data }
    }

    /// Size in MiB.
    pub fn mib(&self) -> usize {
        (self.data.len() * 4) >> 20
    }

    /// Streaming read bandwidth in GB/s (1e9 bytes) on `threads` threads, each summing a
    /// contiguous share: the best of `trials` passes over the whole buffer.
    pub fn read_gbps(&self, threads: usize, trials: usize) -> f64 {
        let chunk = self.data.len().div_ceil(threads);
        let bytes = (self.data.len() * 4) as f64;
        let mut best = 0.0f64;
        for _ in 0..trials {
            let el = timed_on_threads(threads, |t| {
                let lo = (t * chunk).min(self.data.len());
                let hi = ((t + 1) * chunk).min(self.data.len());
                black_box(sum(&self.data[lo..hi]));
            });
            best = best.max(bytes / el.as_secs_f64() / 1e9);
        }
        best
    }

    /// Reads the first `mib` MiB (more than the last-level cache) on the calling thread, to evict
    /// other data from the caches.
    pub fn evict_caches(&self, mib: usize) -> f32 {
        let n = (mib * (1 << 20) / 4).min(self.data.len());
        black_box(sum(&self.data[..n]))
    }

    /// [`BwBuffer::evict_caches`] with every thread of the current rayon pool reading a
    /// contiguous share, as the other work of a model's layer runs between two attention calls.
    ///
    /// Why the decode benchmarks evict this way: after an eviction on the calling thread alone,
    /// with the pool's threads idle, the next 2-thread decode call of D1 (f16) took 2.5–4.3 ms
    /// (median of 21) instead of 1.6–2.0 ms, close to its 1-thread time, in every run. It is not
    /// the pool's wake-up (a broadcast after 5 ms idle starts within 0.1 ms), nor the cores'
    /// clocks (a 1 ms spin on every pool thread after the eviction did not help), nor the time
    /// between the two (sleeping 1–30 ms did not help); evicting on one pool thread alone did.
    /// The effect belongs to the host and its scheduler, not to the kernel, so the benchmarks
    /// measure the state a model leaves: every thread busy with the layer's other work.
    #[cfg(feature = "rayon")]
    pub fn evict_caches_on_pool(&self, mib: usize) -> f32 {
        let n = (mib * (1 << 20) / 4).min(self.data.len());
        let share = n.div_ceil(rayon::current_num_threads());
        rayon::broadcast(|ctx| {
            let lo = (ctx.index() * share).min(n);
            let hi = (lo + share).min(n);
            black_box(sum(&self.data[lo..hi]))
        })
        .iter()
        .sum()
    }
}

/// Sum of `x`, written to be bound by memory, not by add latency.
fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected at run time just above.
            return unsafe { sum_avx2(x) };
        }
    }
    sum_portable(x)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let chunks = x.chunks_exact(32);
    let tail: f32 = chunks.remainder().iter().sum();
    // SAFETY: AVX2 is guaranteed by the caller; every load reads 8 floats inside a 32-float chunk.
    unsafe {
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        for c in chunks {
            let p = c.as_ptr();
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p.add(8)));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p.add(16)));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p.add(24)));
        }
        let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        lanes.iter().sum::<f32>() + tail
    }
}

/// Lane-parallel sum the compiler can vectorize with the build's baseline (SSE2 on x86_64).
fn sum_portable(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut acc = [0.0f32; 16];
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// MemAvailable from /proc/meminfo in MiB, when readable.
pub fn mem_available_mib() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
