//! The decode step through a KV cache against cache length 1k…32k, f32 and f16 KV, in GB/s of KV
//! read and as a fraction of the machine's read bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release --example decode_sweep -- [--threads 2] [--reps 15]
//! ```
//! Shape: Hq = 32, Hkv = 8, D = 128, one query token (DESIGN.md §6 D1/D2). KV bytes read per step
//! = 2 · len · Hkv · D · sizeof(kv); the cache's allocation equals its formula
//! (`KvCacheConfig::storage_bytes`), which is checked here too.

#[path = "bench/limits.rs"]
mod limits;

use std::time::Instant;

use gated_attention::cache::{KvCache, KvCacheConfig};
use gated_attention::{AttentionOptions, DType, Tensor, TensorMut};

fn main() {
    let mut threads = 2usize;
    let mut reps = 15usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: decode_sweep [--threads N] [--reps N]");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--threads" => threads = v.max(1),
            "--reps" => reps = v.max(1),
            _ => {
                eprintln!("unknown argument {flag}");
                std::process::exit(2)
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool");
    let (hq, hkv, d) = (32usize, 8usize, 128usize);
    let bw = limits::BwBuffer::new(512.min(limits::mem_available_mib().unwrap_or(2048) / 4), threads);
    let read_bw = bw.read_gbps(threads, 5);
    println!(
        "decode step vs cache length: Hq={hq} Hkv={hkv} D={d}, {threads} threads; read bandwidth {read_bw:.1} GB/s"
    );
    println!(
        "{:>6} {:>4} {:>10} {:>10} {:>8} {:>6} {:>12}",
        "len", "kv", "median ms", "min ms", "GB/s", "%bw", "cache MiB"
    );
    let q: Vec<f32> = (0..hq * d).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    for dtype in [DType::F32, DType::F16] {
        for len in [1024usize, 2048, 4096, 8192, 16384, 32768] {
            let cfg = KvCacheConfig::new(1, hkv, d, len, dtype);
            let mut cache = KvCache::new(cfg).expect("cache");
            assert_eq!(cache.allocated_bytes(), cfg.storage_bytes(), "cache memory must equal its formula");
            let chunk = 1024;
            let kv: Vec<f32> = (0..chunk * hkv * d).map(|i| ((i * 104_729) % 2000) as f32 / 1000.0 - 1.0).collect();
            for _ in 0..len / chunk {
                cache
                    .append(&Tensor::bshd(&kv[..], 1, chunk, hkv, d), &Tensor::bshd(&kv[..], 1, chunk, hkv, d), None)
                    .expect("append");
            }
            let mut o = vec![0.0f32; hq * d];
            let mut times = Vec::with_capacity(reps);
            pool.install(|| {
                for r in 0..reps + 2 {
                    let t = Instant::now();
                    cache
                        .attend(
                            &Tensor::bshd(&q[..], 1, 1, hq, d),
                            TensorMut::bshd(&mut o[..], 1, 1, hq, d),
                            None,
                            &AttentionOptions::new(),
                        )
                        .expect("attend");
                    if r >= 2 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
            });
            times.sort_by(|a, b| a.total_cmp(b));
            let med = times[times.len() / 2];
            let bytes = (2 * len * hkv * d * dtype.size()) as f64;
            let gbps = bytes / med / 1e9;
            println!(
                "{len:>6} {:>4} {:>10.3} {:>10.3} {:>8.2} {:>5.1}% {:>12.1}",
                format!("{dtype:?}").to_lowercase(),
                med * 1e3,
                times[0] * 1e3,
                gbps,
                100.0 * gbps / read_bw,
                cfg.storage_bytes() as f64 / (1 << 20) as f64
            );
            println!(
                "{{\"bench\":\"decode_sweep\",\"len\":{len},\"kv\":\"{dtype:?}\",\"median_ms\":{:.4},\"gbps\":{gbps:.3},\"frac_read_bw\":{:.4},\"read_bw\":{read_bw:.3}}}",
                med * 1e3,
                gbps / read_bw
            );
        }
    }
}
