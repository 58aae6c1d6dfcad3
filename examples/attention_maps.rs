//! Writes the attention map (post-softmax probabilities, rows = queries, columns = keys) of one
//! head of every layer of the demo model as a grayscale PNG, as the official Gated Attention
//! repository's demo plots them. The maps are materialised here for the picture only; the
//! crate's own measurements never form them.
//!
//! ```text
//! cargo run --release --example attention_maps -- [--head 0] [--tokens 64] [--layers 4] [--gate elementwise|none] [--out maps]
//! ```

use gated_attention::layer::{GateConfig, GateGranularity, GatedAttention, GatedAttentionConfig};
use gated_attention::{reference, AttentionOptions, DType, Dims, Tensor};

fn main() {
    let mut head = 0usize;
    let mut tokens = 64usize;
    let mut n_layers = 4usize;
    let mut gate = Some(GateGranularity::Elementwise);
    let mut out = String::from("attention_maps");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--head" => head = v.parse().unwrap_or_else(|_| fail("--head")),
            "--tokens" => tokens = v.parse().unwrap_or_else(|_| fail("--tokens")),
            "--layers" => n_layers = v.parse().unwrap_or_else(|_| fail("--layers")),
            "--gate" => gate = if v == "none" { None } else { Some(GateGranularity::Elementwise) },
            "--out" => out = v,
            _ => fail(&format!("unknown argument {flag}")),
        }
    }
    let (dm, heads, kv_heads, d) = (256, 4, 2, 64);
    if head >= heads || tokens == 0 {
        fail("--head must be < 4 and --tokens >= 1");
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{out}: {e}")));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut x: Vec<f32> = (0..tokens * dm)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let positions: Vec<usize> = (0..tokens).collect();
    for li in 0..n_layers {
        let mut cfg = GatedAttentionConfig::new(dm, heads, kv_heads, d);
        cfg.gate = gate.map(GateConfig::qiu);
        cfg.max_position_embeddings = tokens;
        let layer = GatedAttention::seeded(cfg, 1000 + li as u64).expect("config");
        let normed: Vec<f32> = x
            .chunks_exact(dm)
            .flat_map(|r| {
                let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f32>() / dm as f32 + 1e-6).sqrt();
                r.iter().map(move |v| v * inv)
            })
            .collect();
        let (q, k) = layer.queries_and_keys(&normed, 1, &positions).expect("projections");
        let (qt, kt) = (Tensor::bshd(&q[..], 1, tokens, heads, d), Tensor::bshd(&k[..], 1, tokens, kv_heads, d));
        let dims =
            Dims { batch: 1, q_len: tokens, kv_len: tokens, q_heads: heads, kv_heads, head_dim: d, v_head_dim: d };
        let s =
            reference::scores(&qt, &kt, &AttentionOptions::new().causal(), &dims, 0, head).expect("valid arguments");
        let mut pixels = vec![0u8; tokens * tokens];
        for i in 0..tokens {
            let row = &s[i * tokens..(i + 1) * tokens];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for j in 0..tokens {
                // sqrt stretches the small probabilities so the structure is visible
                pixels[i * tokens + j] = (((row[j] - m).exp() / z).sqrt() * 255.0).round() as u8;
            }
        }
        // each probability as a SCALE × SCALE block so small maps stay visible
        const SCALE: usize = 4;
        let side = tokens * SCALE;
        let big: Vec<u8> = (0..side * side).map(|p| pixels[(p / side / SCALE) * tokens + (p % side) / SCALE]).collect();
        let path = format!("{out}/layer{li}_head{head}.png");
        std::fs::write(&path, png_gray(&big, side, side)).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
        println!("wrote {path}");
        // next layer's input: residual + this layer's output through a cache
        let mut cache = layer.new_cache(1, tokens, DType::F32).expect("cache");
        let y = layer.forward(&normed, 1, &mut cache, None).expect("forward");
        for (a, b) in x.iter_mut().zip(&y) {
            *a += b;
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// A minimal 8-bit grayscale PNG: zlib "stored" (uncompressed) deflate blocks, CRC-32, Adler-32.
fn png_gray(pixels: &[u8], w: usize, h: usize) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut raw = Vec::with_capacity(h * (w + 1));
    for row in pixels.chunks_exact(w) {
        raw.push(0); // filter: none
        raw.extend(row);
    }
    let mut z = vec![0x78, 0x01];
    for (i, block) in raw.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= raw.len();
        z.push(last as u8);
        z.extend((block.len() as u16).to_le_bytes());
        z.extend((!(block.len() as u16)).to_le_bytes());
        z.extend(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend((w as u32).to_be_bytes());
    ihdr.extend((h as u32).to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grayscale
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}
