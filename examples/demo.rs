//! The crate's demo: a small multi-layer gated-attention model with seeded weights, run through a
//! prompt (prefill) and then token by token (decode) with a KV cache per layer.
//!
//! It prints throughput, the largest error of the cached, tiled path against the f64 reference
//! forward, the first-token ("attention sink") share per layer and the gate statistics.
//!
//! ```text
//! cargo run --release --example demo -- [--layers 4] [--prompt 256] [--decode 64] [--gate elementwise|headwise|none]
//! ```

use std::time::Instant;

use gated_attention::cache::DecodeCache;
use gated_attention::layer::{ForwardStats, GateConfig, GateGranularity, GatedAttention, GatedAttentionConfig};
use gated_attention::{DType, Isa};

struct Args {
    layers: usize,
    prompt: usize,
    decode: usize,
    gate: Option<GateGranularity>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { layers: 4, prompt: 256, decode: 64, gate: Some(GateGranularity::Elementwise) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--layers" => a.layers = value()?.parse().map_err(|e| format!("--layers: {e}"))?,
            "--prompt" => a.prompt = value()?.parse().map_err(|e| format!("--prompt: {e}"))?,
            "--decode" => a.decode = value()?.parse().map_err(|e| format!("--decode: {e}"))?,
            "--gate" => {
                a.gate = match value()?.as_str() {
                    "elementwise" => Some(GateGranularity::Elementwise),
                    "headwise" => Some(GateGranularity::Headwise),
                    "none" => None,
                    other => return Err(format!("--gate: unknown {other}")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.prompt == 0 {
        return Err("--prompt must be >= 1".into());
    }
    Ok(a)
}

/// Pre-attention RMSNorm with unit weight, per token.
fn rms_norm(x: &[f32], dm: usize) -> Vec<f32> {
    x.chunks_exact(dm)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / dm as f32 + 1e-6).sqrt();
            row.iter().map(move |v| v * inv)
        })
        .collect()
}

/// Prefill `prompt` tokens, then decode the rest of `x` one token at a time, through `layers`
/// with pre-norm residuals; returns the hidden states and the prefill and decode seconds.
fn generate<C: DecodeCache>(
    layers: &[GatedAttention],
    x: &[f32],
    prompt: usize,
    dm: usize,
    caches: &mut [C],
    stats: &mut [ForwardStats],
) -> (Vec<f32>, f64, f64) {
    let mut hidden = x.to_vec();
    let mut run = |range: std::ops::Range<usize>, hidden: &mut Vec<f32>| {
        let mut h = hidden[range.start * dm..range.end * dm].to_vec();
        for (li, layer) in layers.iter().enumerate() {
            let y =
                layer.forward_with_stats(&rms_norm(&h, dm), 1, &mut caches[li], None, &mut stats[li]).expect("forward");
            for (a, b) in h.iter_mut().zip(&y) {
                *a += b;
            }
        }
        hidden[range.start * dm..range.end * dm].copy_from_slice(&h);
    };
    let t0 = Instant::now();
    run(0..prompt, &mut hidden);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for t in prompt..x.len() / dm {
        run(t..t + 1, &mut hidden);
    }
    (hidden, prefill, t1.elapsed().as_secs_f64())
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("usage: cargo run --release --example demo -- [--layers N] [--prompt N] [--decode N] [--gate elementwise|headwise|none]");
            std::process::exit(2);
        }
    };
    let (dm, heads, kv_heads, head_dim) = (512, 8, 2, 64);
    let total = args.prompt + args.decode;
    let mut layers = Vec::new();
    for i in 0..args.layers {
        let mut cfg = GatedAttentionConfig::new(dm, heads, kv_heads, head_dim);
        cfg.gate = args.gate.map(GateConfig::qiu);
        cfg.max_position_embeddings = total.max(1);
        layers.push(GatedAttention::seeded(cfg, 1000 + i as u64).expect("valid config"));
    }
    // Token inputs: seeded, with token 0 larger, as a BOS embedding often is.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut x: Vec<f32> = (0..total * dm).map(|_| next()).collect();
    for v in &mut x[..dm] {
        *v *= 4.0;
    }
    println!(
        "gated-attention demo: {} layers, hidden {dm}, {heads} heads / {kv_heads} KV heads, head_dim {head_dim}, gate {:?}, ISA {}",
        args.layers,
        args.gate,
        Isa::selected().name()
    );

    // Cached, tiled path: prefill, then one token at a time.
    let mut caches: Vec<_> = layers.iter().map(|l| l.new_cache(1, total, DType::F32).expect("cache")).collect();
    let mut stats: Vec<ForwardStats> = vec![ForwardStats::default(); args.layers];
    let (hidden, prefill, decode) = generate(&layers, &x, args.prompt, dm, &mut caches, &mut stats);
    // The same through int8 KV caches (one i8 per element and an f32 scale per row).
    let mut int8: Vec<_> = layers.iter().map(|l| l.new_int8_cache(1, total).expect("cache")).collect();
    let mut int8_stats = vec![ForwardStats::default(); args.layers];
    let (hidden8, _, decode8) = generate(&layers, &x, args.prompt, dm, &mut int8, &mut int8_stats);

    // The f64 reference: the whole sequence at once through every layer.
    let mut reference = x.clone();
    for layer in &layers {
        let y = layer.reference_forward(&rms_norm(&reference, dm), 1).expect("reference forward");
        for (a, b) in reference.iter_mut().zip(&y) {
            *a += *b as f32;
        }
    }
    let max_err = hidden.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let max_abs = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));

    println!(
        "prefill: {} tokens in {:.1} ms ({:.0} tokens/s)",
        args.prompt,
        prefill * 1e3,
        args.prompt as f64 / prefill
    );
    if args.decode > 0 {
        println!(
            "decode : {} tokens in {:.1} ms ({:.0} tokens/s)",
            args.decode,
            decode * 1e3,
            args.decode as f64 / decode
        );
    }
    println!(
        "max |cached - f64 reference| over all {total} tokens and layers: {max_err:.2e} (max |value| {max_abs:.2})"
    );
    let err8 = hidden8.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let bytes = |c: &dyn Fn() -> usize| c() as f64 / total as f64 / 1024.0;
    println!(
        "int8 KV cache: decode {:.0} tokens/s, {:.2} KiB per token per layer (f32 {:.2}), max |int8 - f64 reference| {err8:.2e}",
        args.decode as f64 / decode8,
        bytes(&|| int8[0].allocated_bytes()),
        bytes(&|| caches[0].allocated_bytes()),
    );
    println!();
    println!(
        "layer  first-token share  gate mean  gate std  <0.1    <0.5    min     max    max|attn out|  max|layer out|"
    );
    for (i, s) in stats.iter().enumerate() {
        let share = s.first_token_mass.iter().map(|(sum, n)| sum / *n as f64).sum::<f64>()
            / s.first_token_mass.len().max(1) as f64;
        let g = &s.gate;
        if g.count > 0 {
            println!(
                "{i:>5}  {:>17.4}  {:>9.4}  {:>8.4}  {:>5.3}  {:>5.3}  {:>6.3}  {:>6.3}  {:>13.3}  {:>14.3}",
                share,
                g.mean(),
                g.std(),
                g.fraction_below_0_1(),
                g.fraction_below_0_5(),
                g.min,
                g.max,
                s.probes.attn_out_max_abs,
                s.probes.out_max_abs
            );
        } else {
            println!(
                "{i:>5}  {share:>17.4}  {:>9}  {:>8}  {:>5}  {:>5}  {:>6}  {:>6}  {:>13.3}  {:>14.3}",
                "-", "-", "-", "-", "-", "-", s.probes.attn_out_max_abs, s.probes.out_max_abs
            );
        }
    }
    println!("(first-token share: mean attention probability on position 0 over every query row, heads averaged)");
    if max_err > 1e-3 {
        eprintln!("error: the cached path disagrees with the reference");
        std::process::exit(1);
    }
}
