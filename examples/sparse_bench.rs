//! Gated sparse attention against dense attention on one prefill shape, with the machine's FMA
//! peak and read bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release --example sparse_bench -- [--threads N] [--reps N] [--len L] [--top-k K]
//! ```
//! Shape: batch 1, 32 query heads over 8 KV heads, head_dim 128, causal, `L` tokens (default
//! 4096); a lightning indexer with 16 heads of dimension 64 picks `K` keys per query (default 512).
//! Reported: the indexer's time and GFLOP/s (`2 · Σ visible · H_I · d_I`), sparse attention's
//! time and GFLOP/s (`4 · Σ listed · heads · d`), dense causal attention's, each as a share of
//! the FMA peak, and sparse + indexer against dense as a speed-up. Sparse attention re-reads
//! each listed key's K and V rows for every query row, so it is also given as gathered bytes per
//! second (`Σ listed · Hkv · 2 · D · 4`) against the read bandwidth. Medians over `--reps` runs.

#[path = "bench/limits.rs"]
mod limits;

use std::time::Instant;

use gated_attention::sparse::{sparse_attention, top_k_indices, Indexer, SparseIndices, PAD};
use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};

const HQ: usize = 32;
const HKV: usize = 8;
const D: usize = 128;
const HI: usize = 16;
const DI: usize = 64;

struct Args {
    threads: usize,
    reps: usize,
    len: usize,
    top_k: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { threads: std::thread::available_parallelism().map_or(1, |n| n.get()), reps: 5, len: 4096, top_k: 512 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize, String> {
            let v = it.next().ok_or(format!("{flag} needs a value"))?;
            v.parse().map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--threads" => a.threads = value()?,
            "--reps" => a.reps = value()?,
            "--len" => a.len = value()?,
            "--top-k" => a.top_k = value()?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if a.threads == 0 || a.reps == 0 || a.len == 0 || a.top_k == 0 {
        return Err("--threads, --reps, --len and --top-k must be > 0".into());
    }
    Ok(a)
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Median milliseconds of `reps` runs of `f` (after one warm-up run).
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sparse_bench: {e}");
            std::process::exit(2);
        }
    };
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global().expect("rayon pool");
    let l = a.len;
    let (q, k, v) = (values(l * HQ * D, 1), values(l * HKV * D, 2), values(l * HKV * D, 3));
    let (qi, ki, wi) = (values(l * HI * DI, 4), values(l * DI, 5), values(l * HI, 6));
    let (qt, kt, vt) =
        (Tensor::bshd(&q[..], 1, l, HQ, D), Tensor::bshd(&k[..], 1, l, HKV, D), Tensor::bshd(&v[..], 1, l, HKV, D));
    let (qit, kit, wit) =
        (Tensor::bshd(&qi[..], 1, l, HI, DI), Tensor::bshd(&ki[..], 1, l, 1, DI), Tensor::bshd(&wi[..], 1, l, 1, HI));
    let opts = AttentionOptions::new().causal();
    let indexer = Indexer::lightning().causal();

    let peak = limits::fma_peak_gflops(a.threads, 7, 50);
    let mut idx = vec![PAD; l * a.top_k];
    let t_index = median_ms(a.reps, || top_k_indices(&qit, &kit, &wit, &indexer, a.top_k, &mut idx).unwrap());
    let mut out = vec![0.0f32; l * HQ * D];
    let indices = SparseIndices::shared(&idx, 1, l, a.top_k);
    let t_sparse = median_ms(a.reps, || {
        sparse_attention(&qt, &kt, &vt, &indices, TensorMut::bshd(&mut out[..], 1, l, HQ, D), None, &opts).unwrap()
    });
    let t_dense = median_ms(a.reps, || {
        attention(&qt, &kt, &vt, TensorMut::bshd(&mut out[..], 1, l, HQ, D), None, &opts).unwrap()
    });
    let peak_after = limits::fma_peak_gflops(a.threads, 7, 50);
    let bw = limits::BwBuffer::new(1024, a.threads).read_gbps(a.threads, 5);

    let visible: f64 = (1..=l).map(|n| n as f64).sum();
    let listed = idx.iter().filter(|&&j| j != PAD).count() as f64;
    let gf = |flops: f64, ms: f64| flops / (ms * 1e6);
    let index_gf = gf(2.0 * visible * (HI * DI) as f64, t_index);
    let sparse_gf = gf(4.0 * listed * (HQ * D) as f64, t_sparse);
    let dense_gf = gf(4.0 * visible * (HQ * D) as f64, t_dense);
    println!(
        "sparse_bench: L {l}, {HQ}/{HKV} heads, D {D}, causal, top-k {} (indexer {HI}x{DI}), {} threads, {} reps",
        a.top_k, a.threads, a.reps
    );
    println!("FMA peak: {peak:.1} GFLOP/s before, {peak_after:.1} after; read bandwidth {bw:.1} GB/s");
    println!("| step | median ms | GFLOP/s | of FMA peak |");
    println!("|---|---|---|---|");
    for (name, ms, g) in [
        ("lightning indexer + top-k", t_index, index_gf),
        ("sparse attention", t_sparse, sparse_gf),
        ("dense causal attention", t_dense, dense_gf),
    ] {
        println!("| {name} | {ms:.1} | {g:.1} | {:.0}% |", 100.0 * g / peak);
    }
    let gathered = listed * (HKV * 2 * D * 4) as f64 / (t_sparse * 1e6);
    println!(
        "sparse attention gathers {gathered:.1} GB/s of K and V rows, {:.0}% of the read bandwidth",
        100.0 * gathered / bw
    );
    println!(
        "keys per row: {:.0} listed on average vs {:.0} visible; dense / sparse time {:.2}x, dense / (indexer + sparse) {:.2}x",
        listed / l as f64,
        visible / l as f64,
        t_dense / t_sparse,
        t_dense / (t_index + t_sparse)
    );
}
