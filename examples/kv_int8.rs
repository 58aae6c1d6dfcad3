//! Int8 against f16 KV caches on the decode step, measured in pairs: the same step through an
//! `Int8KvCache` and through an f16 `KvCache` holding the same tokens, one right after the other,
//! each from a cold last-level cache. The ratio of each pair is taken, and the median of those
//! ratios reported, so slow drifts of a shared host (which move single timings by 2× here) cancel.
//! Also: bytes per token, the read bandwidth of the run, and the quantisation's effect on the
//! output against f32 K/V.
//!
//! ```text
//! cargo run --release --example kv_int8 -- [--threads 2] [--pairs 31] [--len 32768] [--warm]
//! ```
//! `--warm` leaves the caches as the previous call left them (no eviction): with a short cache
//! that fits the last-level cache, this measures the kernels' arithmetic alone.
//! Shape: Hq = 32, Hkv = 8, D = 128, one query token (DESIGN.md §6 D2 at `--len 32768`, D1 at
//! 8192). See `benches/README.md`, "Int8 KV".

#[path = "bench/limits.rs"]
mod limits;
/// The repository's one SplitMix64.
#[path = "../src/splitmix.rs"]
mod splitmix;

use std::time::Instant;

use gated_attention::cache::{Int8KvCache, KvCache, KvCacheConfig};
use gated_attention::{AttentionOptions, DType, Tensor, TensorMut};

/// MiB read between calls to evict the last-level cache (32 MiB L3 here).
const EVICT_MIB: usize = 128;

fn main() {
    let (mut threads, mut pairs, mut len, mut warm) = (2usize, 31usize, 32768usize, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--warm" {
            warm = true;
            continue;
        }
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: kv_int8 [--threads N] [--pairs N] [--len N] [--warm]");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--threads" => threads = v.max(1),
            "--pairs" => pairs = v.max(1),
            "--len" => len = v.max(1),
            _ => {
                eprintln!("unknown argument {flag}");
                std::process::exit(2)
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool");
    let (hq, hkv, d) = (32usize, 8usize, 128usize);
    let buf = limits::BwBuffer::new(512.min(limits::mem_available_mib().unwrap_or(2048) / 4), threads);

    // The same tokens into both caches (and kept in f32 for the quantisation's error).
    let cfg = |dt| KvCacheConfig::new(1, hkv, d, len, dt);
    let (mut int8, mut f16) = (Int8KvCache::new(cfg(DType::F16)).unwrap(), KvCache::new(cfg(DType::F16)).unwrap());
    let mut f32c = KvCache::new(cfg(DType::F32)).unwrap();
    let mut rng = splitmix::SplitMix64::new(0x1A7);
    let chunk = 512.min(len);
    let mut appended = 0;
    while appended < len {
        let t = chunk.min(len - appended);
        // Gaussian-like rows (sum of uniforms), as K and V are.
        let mut g = || (0..t * hkv * d).map(|_| (0..4).map(|_| rng.uniform()).sum::<f32>()).collect::<Vec<f32>>();
        let (k, v) = (g(), g());
        let (kt, vt) = (Tensor::bshd(&k[..], 1, t, hkv, d), Tensor::bshd(&v[..], 1, t, hkv, d));
        int8.append(&kt, &vt, None).unwrap();
        f16.append(&kt, &vt, None).unwrap();
        f32c.append(&kt, &vt, None).unwrap();
        appended += t;
    }
    assert_eq!(int8.allocated_bytes(), Int8KvCache::storage_bytes(int8.config()), "int8 memory = its formula");
    assert_eq!(f16.allocated_bytes(), f16.config().storage_bytes(), "f16 memory = its formula");
    let q: Vec<f32> = (0..hq * d).map(|_| rng.uniform()).collect();
    let qt = Tensor::bshd(&q[..], 1, 1, hq, d);
    let opts = AttentionOptions::new();
    let step = |which: usize, out: &mut [f32]| {
        let o = TensorMut::bshd(out, 1, 1, hq, d);
        match which {
            0 => f16.attend(&qt, o, None, &opts),
            1 => int8.attend(&qt, o, None, &opts),
            _ => f32c.attend(&qt, o, None, &opts),
        }
        .unwrap()
    };

    // The quantisation's effect on the output (f32 K/V as the reference point).
    let (mut o32, mut o8, mut o16) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
    pool.install(|| {
        step(2, &mut o32);
        step(1, &mut o8);
        step(0, &mut o16);
    });
    let err = |o: &[f32]| o.iter().zip(&o32).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = o32.iter().fold(0.0f32, |m, x| m.max(x.abs()));

    let read_bw = buf.read_gbps(threads, 5);
    let (mut t16, mut t8, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = vec![0.0f32; hq * d];
    pool.install(|| {
        for p in 0..pairs + 2 {
            let mut pair = [0.0f64; 2];
            // Alternate which goes first, so neither always follows the eviction's own traffic.
            for k in 0..2 {
                let which = (k + p) % 2;
                if !warm {
                    buf.evict_caches_on_pool(EVICT_MIB);
                }
                let t = Instant::now();
                step(which, &mut out);
                pair[which] = t.elapsed().as_secs_f64();
            }
            if p >= 2 {
                t16.push(pair[0]);
                t8.push(pair[1]);
                ratios.push(pair[1] / pair[0]);
            }
        }
    });
    let read_bw_end = buf.read_gbps(threads, 5);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m16, m8, mr) = (median(&mut t16), median(&mut t8), median(&mut ratios));
    let (lo, hi) = (ratios[ratios.len() / 4], ratios[3 * ratios.len() / 4]);
    let bytes = |row: usize| (2 * len * hkv * row) as f64;
    let (b16, b8) = (bytes(2 * d), bytes(d + 4));
    let bw = read_bw.max(read_bw_end);
    let mode = if warm { "warm" } else { "cold" };
    println!(
        "int8 vs f16 KV cache, decode step: Hq={hq} Hkv={hkv} D={d}, {len} tokens, {threads} threads, {pairs} pairs, \
         {mode}"
    );
    println!("  read bandwidth of the run {bw:.1} GB/s (start {read_bw:.1}, end {read_bw_end:.1})");
    println!(
        "  bytes per token per layer: f16 {} B, int8 {} B ({:.3}×)",
        hkv * 2 * d * 2,
        hkv * 2 * (d + 4),
        (d + 4) as f64 / (2 * d) as f64
    );
    println!(
        "  f16 : median {:.3} ms, {:.1} GB/s ({:.0}% of read bandwidth)",
        m16 * 1e3,
        b16 / m16 / 1e9,
        100.0 * b16 / m16 / 1e9 / bw
    );
    println!(
        "  int8: median {:.3} ms, {:.1} GB/s ({:.0}% of read bandwidth)",
        m8 * 1e3,
        b8 / m8 / 1e9,
        100.0 * b8 / m8 / 1e9 / bw
    );
    println!("  int8 / f16 time, median of {pairs} paired ratios: {mr:.3} (quartiles {lo:.3} … {hi:.3})");
    println!("  output error against f32 K/V (max |o|·{scale:.3e}): int8 {:.3e}, f16 {:.3e}", err(&o8), err(&o16));
    println!(
        "{{\"bench\":\"kv_int8\",\"cache\":\"{mode}\",\"len\":{len},\"threads\":{threads},\"pairs\":{pairs},\"f16_ms\":{:.4},\"int8_ms\":{:.4},\"ratio_median\":{mr:.4},\"ratio_q1\":{lo:.4},\"ratio_q3\":{hi:.4},\"read_bw\":{bw:.2},\"err_int8\":{:.3e},\"err_f16\":{:.3e},\"out_max\":{scale:.3e}}}",
        m16 * 1e3,
        m8 * 1e3,
        err(&o8),
        err(&o16)
    );
}
