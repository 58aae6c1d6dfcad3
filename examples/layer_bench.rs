//! One `GatedAttention` layer's decode step against the bytes it must read, with the machine's
//! read bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release --example layer_bench -- [--reps N] [--context L]
//! ```
//! Two shapes: the demo's toy layer (hidden 512, 8/2 heads, head_dim 64, elementwise gate) and a
//! Qwen3-Next full-attention layer (hidden 2048, 16/2 heads, head_dim 256, its query-fused
//! elementwise gate), each with f32 and bf16 projection weights and an f32 and an f16 KV cache.
//! Each case prefills `L` tokens (default 1024), then times `N` pairs of single-token steps
//! (default 32): one with `forward` (which allocates its buffers per call) and one with
//! `forward_with` and a reused `LayerWorkspace` (allocation-free), alternating so that both see
//! the same machine state, and reports the medians and their ratio. A step must read every
//! projection weight once and the cache's K and V once, so `(weight bytes + KV bytes) / median`
//! (of the `forward_with` steps) is the bandwidth the step achieves, given as a share of the read
//! bandwidth (2 threads, best of 3 passes over 512 MiB, before and after the cases).

#[path = "bench/limits.rs"]
mod limits;

use std::time::Instant;

use gated_attention::layer::{GateConfig, GateGranularity, GatedAttention, GatedAttentionConfig, LayerWorkspace};
use gated_attention::{DType, Isa};

struct Args {
    reps: usize,
    context: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { reps: 32, context: 1024 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = v.parse().map_err(|_| format!("{flag}: {v:?} is not a number"))?;
        match flag.as_str() {
            "--reps" => a.reps = n,
            "--context" => a.context = n,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if a.reps == 0 || a.context == 0 {
        return Err("--reps and --context must be > 0".into());
    }
    Ok(a)
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

struct Case {
    name: &'static str,
    config: GatedAttentionConfig,
}

fn cases(context: usize, steps: usize) -> Vec<Case> {
    let mut demo = GatedAttentionConfig::new(512, 8, 2, 64);
    demo.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
    let mut qwen = GatedAttentionConfig::new(2048, 16, 2, 256);
    qwen.gate = Some(GateConfig::qwen3_next());
    let mut out = vec![
        Case { name: "demo 512, 8/2 x 64", config: demo },
        Case { name: "Qwen3-Next 2048, 16/2 x 256", config: qwen },
    ];
    for c in &mut out {
        c.config.max_position_embeddings = context + 2 * steps + 1;
    }
    out
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: cargo run --release --example layer_bench -- [--reps N] [--context L]");
            std::process::exit(2);
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let buf = limits::BwBuffer::new(512, threads);
    let bw_before = buf.read_gbps(threads, 3);
    println!(
        "layer_bench: decode steps after a {}-token context, median of {} steps, ISA {}, {threads} threads",
        args.context,
        args.reps,
        Isa::selected().name()
    );
    println!(
        "| layer | weights | KV | forward µs | forward_with µs | ratio | weights MB | KV MB | GB/s | of read BW |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in cases(args.context, args.reps) {
        let cfg = &case.config;
        let f32_layer = GatedAttention::seeded(cfg.clone(), 7).expect("valid config");
        for weights in [DType::F32, DType::BF16] {
            let layer = f32_layer.clone().with_weight_dtype(weights).expect("weights");
            let weight_bytes = layer.weight_bytes();
            for (dtype, size) in [(DType::F32, 4), (DType::F16, 2)] {
                // Two steps per rep: the cache holds both.
                let mut cache = layer.new_cache(1, args.context + 2 * args.reps, dtype).expect("cache");
                let prompt = values(args.context * cfg.hidden_size, 11);
                layer.forward(&prompt, 1, &mut cache, None).expect("prefill");
                let tokens = values(2 * args.reps * cfg.hidden_size, 13);
                let mut ws = LayerWorkspace::new();
                let (mut plain, mut reused) = (Vec::with_capacity(args.reps), Vec::with_capacity(args.reps));
                let mut kv_bytes = 0;
                for pair in tokens.chunks_exact(2 * cfg.hidden_size) {
                    let (a, b) = pair.split_at(cfg.hidden_size);
                    let t = Instant::now();
                    std::hint::black_box(layer.forward(a, 1, &mut cache, None).expect("decode step"));
                    plain.push(t.elapsed().as_secs_f64());
                    // The step reads every cached key and value, its own included.
                    kv_bytes = (cache.len(0) + 1) * cfg.num_kv_heads * cfg.head_dim * 2 * size;
                    let t = Instant::now();
                    std::hint::black_box(layer.forward_with(&mut ws, b, 1, &mut cache, None).expect("decode step"));
                    reused.push(t.elapsed().as_secs_f64());
                }
                let (plain, reused) = (median(plain), median(reused));
                let gbps = (weight_bytes + kv_bytes) as f64 / reused / 1e9;
                println!(
                    "| {} | {weights:?} | {dtype:?} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0}% |",
                    case.name,
                    plain * 1e6,
                    reused * 1e6,
                    plain / reused,
                    weight_bytes as f64 / 1e6,
                    kv_bytes as f64 / 1e6,
                    gbps,
                    100.0 * gbps / bw_before
                );
            }
        }
    }
    let bw_after = buf.read_gbps(threads, 3);
    println!("read bandwidth: {bw_before:.1} GB/s before, {bw_after:.1} after (shares divide by the first)");
}
