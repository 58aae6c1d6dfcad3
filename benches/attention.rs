//! Criterion benches over the canonical workloads of DESIGN.md §6 (the same shapes, inputs and
//! options as `examples/bench.rs`, which also measures the machine's limits; use that binary for
//! reports, and these benches for criterion's change detection between commits).
//!
//! ```text
//! cargo bench --bench attention                 # all of it, about a minute
//! cargo bench --bench attention -- prefill/P1   # a filter
//! BENCH_THREADS=1 cargo bench --bench attention # rayon pool size (default 2)
//! ```
//!
//! Throughput is `Throughput::Elements(flops)`, so criterion's "elem/s" reads as FLOP/s, with
//! FLOPs = 4 · Lq · Lk_eff · D · Hq: QKᵀ and PV, one multiply-add (2 FLOPs) each per visible
//! (query, key, head, dim); Lk_eff is the mean number of keys a query sees under the causal (and
//! window) mask, counted from the mask (P1 512.5, P2 480.0625, P3 1024.5, decode Lk). Masked keys
//! and the softmax are not counted. For decode the KV bytes read per call are
//! 2 · Lk · Hkv · D · sizeof(kv); divide by criterion's time for GB/s.

#[path = "../examples/bench/workloads.rs"]
mod workloads;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use workloads::{Inputs, WORKLOADS};

fn prefill(c: &mut Criterion) {
    let mut g = c.benchmark_group("prefill");
    // Calls take 50-500 ms: a few equal-size samples, not criterion's default linear ramp.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for w in WORKLOADS.iter().filter(|w| !w.is_decode()) {
        for &dt in w.kv_dtypes {
            let mut inp = Inputs::new(*w, dt);
            // 4 · Lq · Lk_eff · D · Hq (see the module docs).
            g.throughput(Throughput::Elements(w.flops().round() as u64));
            g.bench_function(BenchmarkId::new(w.name, format!("kv-{}", dt.name())), |b| {
                b.iter(|| {
                    inp.run().expect("attention");
                    black_box(&inp.o);
                })
            });
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for w in WORKLOADS.iter().filter(|w| w.is_decode()) {
        for &dt in w.kv_dtypes {
            let mut inp = Inputs::new(*w, dt);
            // 4 · Lq · Lk_eff · D · Hq with Lq = 1 and Lk_eff = Lk (see the module docs).
            g.throughput(Throughput::Elements(w.flops().round() as u64));
            g.bench_function(BenchmarkId::new(w.name, format!("kv-{}", dt.name())), |b| {
                b.iter(|| {
                    inp.run().expect("attention");
                    black_box(&inp.o);
                })
            });
        }
    }
    g.finish();
}

fn main() {
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("rayon global pool");
    // What criterion_group!/criterion_main! expand to, after the pool is built.
    let mut c = Criterion::default().configure_from_args();
    prefill(&mut c);
    decode(&mut c);
    c.final_summary();
}
