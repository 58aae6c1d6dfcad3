//! Gated sparse attention against dense attention on prefill shapes, with the machine's FMA
//! peak and read bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release --example sparse_bench -- [--threads N] [--reps N] [--len L] [--top-k K]
//!     [--heads HQ/HKV] [--lists random|local] [--sweep]
//! ```
//! Shape: batch 1, 32 query heads over 8 KV heads (`--heads`), head_dim 128, causal, `L` tokens
//! (default 4096); a lightning indexer with 16 heads of dimension 64 picks `K` keys per query
//! (default 512). `--lists random` (the default) feeds the indexer random queries, keys and
//! weights, so neighbouring rows' lists are nearly independent samples of the visible keys (the
//! worst case for sparse attention's row blocks); `--lists local` makes the indexer's queries and
//! weights vary slowly along the sequence, so neighbouring rows rank keys alike and their lists
//! overlap (the printed overlap says how much), as an indexer's lists over a real text do.
//! `--sweep` runs L 4096 (top-k 512), 8192 (1024), 16384 (2048) and 32768 (2048, 8/2 heads so
//! that dense attention's L² work fits a run; said in the output), fewer repetitions for the
//! long ones.
//!
//! Reported: the indexer's time and GFLOP/s (`2 · Σ visible · H_I · d_I`), sparse attention's
//! time and GFLOP/s (`4 · Σ listed · heads · d`), dense causal attention's, each as a share of
//! the FMA peak, and sparse alone and sparse + indexer against dense as speed-ups (ratios of
//! medians measured in the same run). Sparse attention's gathered bytes (`Σ listed · Hkv · 2 · D
//! · 4`, each row's keys counted once) are given per second against the read bandwidth.

#[path = "bench/limits.rs"]
mod limits;

use std::time::Instant;

use gated_attention::sparse::{sparse_attention, top_k_indices, Indexer, SparseIndices, PAD};
use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};

const D: usize = 128;
const HI: usize = 16;
const DI: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Lists {
    Random,
    Local,
}

struct Args {
    threads: usize,
    reps: Option<usize>,
    len: usize,
    top_k: usize,
    heads: (usize, usize),
    lists: Lists,
    sweep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: None,
        len: 4096,
        top_k: 512,
        heads: (32, 8),
        lists: Lists::Random,
        sweep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut text = || it.next().ok_or(format!("{flag} needs a value"));
        let num =
            |v: String| -> Result<usize, String> { v.parse().map_err(|_| format!("{flag}: {v:?} is not a number")) };
        match flag.as_str() {
            "--threads" => a.threads = num(text()?)?,
            "--reps" => a.reps = Some(num(text()?)?),
            "--len" => a.len = num(text()?)?,
            "--top-k" => a.top_k = num(text()?)?,
            "--heads" => {
                let v = text()?;
                let (q, kv) = v.split_once('/').ok_or(format!("--heads: {v:?} is not HQ/HKV"))?;
                a.heads = (num(q.into())?, num(kv.into())?);
            }
            "--lists" => {
                a.lists = match text()?.as_str() {
                    "random" => Lists::Random,
                    "local" => Lists::Local,
                    v => return Err(format!("--lists: {v:?} is not random or local")),
                }
            }
            "--sweep" => a.sweep = true,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let (hq, hkv) = a.heads;
    if a.threads == 0 || a.reps == Some(0) || a.len == 0 || a.top_k == 0 || hkv == 0 || hq % hkv != 0 {
        return Err("--threads, --reps, --len, --top-k must be > 0 and HQ a multiple of HKV > 0".into());
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

/// `rows × width` values that drift slowly along the rows (a smooth part, period ~1000 rows and
/// longer, and 10% noise): neighbouring rows are alike.
fn drifting(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    let (phase, noise) = (values(width, seed), values(rows * width, seed + 100));
    (0..rows * width)
        .map(|n| {
            let (t, e) = (n / width, n % width);
            let freq = 0.006 * (1.0 + (e % 5) as f32) / 5.0;
            (t as f32 * freq + 3.0 * phase[e]).sin() + 0.1 * noise[n]
        })
        .collect()
}

/// Median milliseconds of `reps` runs of `f` (after one warm-up run when `warm`).
fn median_ms(reps: usize, warm: bool, mut f: impl FnMut()) -> f64 {
    if warm {
        f();
    }
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

/// One measured shape.
struct Row {
    len: usize,
    top_k: usize,
    heads: (usize, usize),
    reps: usize,
    /// Listed keys (not PAD) over all rows.
    listed: f64,
    /// Mean share of a row's list that the previous row also lists.
    overlap: f64,
    index_ms: f64,
    sparse_ms: f64,
    dense_ms: f64,
}

fn measure(len: usize, top_k: usize, (hq, hkv): (usize, usize), reps: usize, lists: Lists) -> Row {
    let l = len;
    let (q, k, v) = (values(l * hq * D, 1), values(l * hkv * D, 2), values(l * hkv * D, 3));
    let (qi, ki, wi) = match lists {
        Lists::Random => (values(l * HI * DI, 4), values(l * DI, 5), values(l * HI, 6)),
        Lists::Local => (drifting(l, HI * DI, 4), values(l * DI, 5), drifting(l, HI, 6)),
    };
    let (qt, kt, vt) =
        (Tensor::bshd(&q[..], 1, l, hq, D), Tensor::bshd(&k[..], 1, l, hkv, D), Tensor::bshd(&v[..], 1, l, hkv, D));
    let (qit, kit, wit) =
        (Tensor::bshd(&qi[..], 1, l, HI, DI), Tensor::bshd(&ki[..], 1, l, 1, DI), Tensor::bshd(&wi[..], 1, l, 1, HI));
    let opts = AttentionOptions::new().causal();
    let indexer = Indexer::lightning().causal();
    // Long shapes take seconds per run: no warm-up run.
    let warm = l < 16384;
    let mut idx = vec![PAD; l * top_k];
    let index_ms = median_ms(reps, warm, || top_k_indices(&qit, &kit, &wit, &indexer, top_k, &mut idx).unwrap());
    let mut out = vec![0.0f32; l * hq * D];
    let indices = SparseIndices::shared(&idx, 1, l, top_k);
    let sparse_ms = median_ms(reps, warm, || {
        sparse_attention(&qt, &kt, &vt, &indices, TensorMut::bshd(&mut out[..], 1, l, hq, D), None, &opts).unwrap()
    });
    let dense_ms = median_ms(reps, warm, || {
        attention(&qt, &kt, &vt, TensorMut::bshd(&mut out[..], 1, l, hq, D), None, &opts).unwrap()
    });
    let listed = idx.iter().filter(|&&j| j != PAD).count() as f64;
    Row { len, top_k, heads: (hq, hkv), reps, listed, overlap: overlap(&idx, l, top_k), index_ms, sparse_ms, dense_ms }
}

/// The mean share of row t's listed keys that row t − 1 lists too, over every 8th row.
fn overlap(idx: &[i32], l: usize, k: usize) -> f64 {
    let sorted = |t: usize| {
        let mut r: Vec<i32> = idx[t * k..(t + 1) * k].iter().copied().filter(|&j| j != PAD).collect();
        r.sort_unstable();
        r
    };
    let (mut sum, mut n) = (0.0, 0usize);
    for t in (1..l).step_by(8) {
        let (a, b) = (sorted(t - 1), sorted(t));
        if !b.is_empty() {
            sum += b.iter().filter(|j| a.binary_search(j).is_ok()).count() as f64 / b.len() as f64;
            n += 1;
        }
    }
    sum / n.max(1) as f64
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
    let shapes: Vec<(usize, usize, (usize, usize), usize)> = if a.sweep {
        let r = |n: usize| a.reps.unwrap_or(n);
        vec![
            (4096, 512, a.heads, r(3)),
            (8192, 1024, a.heads, r(2)),
            (16384, 2048, a.heads, r(1)),
            (32768, 2048, (a.heads.0 / 4, a.heads.1 / 4), r(1)),
        ]
    } else {
        vec![(a.len, a.top_k, a.heads, a.reps.unwrap_or(5))]
    };
    let peak = limits::fma_peak_gflops(a.threads, 7, 50);
    let lists = if a.lists == Lists::Random { "random" } else { "local" };
    let rows: Vec<Row> = shapes.iter().map(|&(l, k, h, reps)| measure(l, k, h, reps, a.lists)).collect();
    let peak_after = limits::fma_peak_gflops(a.threads, 7, 50);
    let bw = limits::BwBuffer::new(1024, a.threads).read_gbps(a.threads, 5);
    println!("sparse_bench: D {D}, causal, lightning indexer {HI}x{DI}, {lists} indexer inputs, {} threads", a.threads);
    println!("FMA peak: {peak:.1} GFLOP/s before, {peak_after:.1} after; read bandwidth {bw:.1} GB/s");
    let gf = |flops: f64, ms: f64| flops / (ms * 1e6);
    for r in &rows {
        let (l, (hq, hkv)) = (r.len, r.heads);
        let visible: f64 = (1..=l).map(|n| n as f64).sum();
        let reduced = if hq != a.heads.0 { " (heads reduced so that dense attention fits a run)" } else { "" };
        println!();
        println!("L {l}, {hq}/{hkv} heads{reduced}, top-k {}, medians of {} reps", r.top_k, r.reps);
        println!("| step | median ms | GFLOP/s | of FMA peak |");
        println!("|---|---|---|---|");
        for (name, ms, flops) in [
            ("lightning indexer + top-k", r.index_ms, 2.0 * visible * (HI * DI) as f64),
            ("sparse attention", r.sparse_ms, 4.0 * r.listed * (hq * D) as f64),
            ("dense causal attention", r.dense_ms, 4.0 * visible * (hq * D) as f64),
        ] {
            let g = gf(flops, ms);
            println!("| {name} | {ms:.1} | {g:.1} | {:.0}% |", 100.0 * g / peak);
        }
        let gathered = r.listed * (hkv * 2 * D * 4) as f64 / (r.sparse_ms * 1e6);
        println!(
            "sparse attention gathers {gathered:.1} GB/s of K and V rows, {:.0}% of the read bandwidth",
            100.0 * gathered / bw
        );
        println!(
            "keys per row: {:.0} listed on average vs {:.0} visible, {:.0}% shared with the previous row; \
             dense / sparse time {:.2}x, dense / (indexer + sparse) {:.2}x",
            r.listed / l as f64,
            visible / l as f64,
            100.0 * r.overlap,
            r.dense_ms / r.sparse_ms,
            r.dense_ms / (r.index_ms + r.sparse_ms)
        );
    }
}
