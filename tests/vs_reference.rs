//! Every kernel path against the f64 reference: lengths around tile edges, masks, GQA ratios,
//! layouts, dtypes, sinks, softcap, ALiBi and bias.

mod common;
use common::*;
use gated_attention::{Alignment, AttentionOptions, Bias, DType};

const LENGTHS: [usize; 11] = [0, 1, 7, 31, 63, 64, 65, 97, 127, 128, 129];

#[test]
fn lengths_dense_and_causal() {
    for &q_len in &[0usize, 1, 7, 63, 64, 65, 129] {
        for &kv_len in &LENGTHS {
            let c = Case::new(1, q_len, kv_len, 2, 1, 16).seed((q_len * 1000 + kv_len) as u64);
            check_case(&c, &AttentionOptions::new());
            check_case(&c, &AttentionOptions::new().causal());
        }
    }
}

#[test]
fn gqa_ratios() {
    for &(hq, hkv) in &[(1usize, 1usize), (2, 1), (4, 2), (8, 1), (8, 8), (16, 2)] {
        for &(lq, lk) in &[(1usize, 200usize), (37, 37), (70, 150)] {
            let c = Case::new(2, lq, lk, hq, hkv, 32).seed((hq * 100 + lk) as u64);
            check_case(&c, &AttentionOptions::new().causal());
        }
    }
}

#[test]
fn windows_and_sink_tokens() {
    for &w in &[1usize, 2, 17, 64, 65, 500] {
        for &(lq, lk) in &[(1usize, 300usize), (150, 150), (40, 200)] {
            let c = Case::new(1, lq, lk, 4, 2, 16).seed((w * 7 + lk) as u64);
            check_case(&c, &AttentionOptions::new().causal().window(w));
            check_case(&c, &AttentionOptions::new().causal().window(w).sink_tokens(4));
            check_case(&c, &AttentionOptions::new().window(w).right_window(3));
        }
    }
}

#[test]
fn fully_masked_rows_give_zeros_and_neg_inf_lse() {
    // Bottom-right alignment with more queries than keys: the first rows see nothing.
    let c = Case::new(1, 40, 10, 2, 2, 8);
    check_case(&c, &AttentionOptions::new().causal());
    // Top-left alignment, keys shorter than queries.
    check_case(&c, &AttentionOptions::new().causal().alignment(Alignment::TopLeft));
    // No keys at all.
    let c = Case::new(1, 5, 0, 2, 1, 8);
    check_case(&c, &AttentionOptions::new());
}

#[test]
fn rows_masked_in_early_tiles_only() {
    // A window far from the start: early KV tiles are dead for every row, later ones live.
    let c = Case::new(1, 20, 700, 4, 1, 16);
    check_case(&c, &AttentionOptions::new().causal().window(30));
}

#[test]
fn layouts() {
    for (mem, out_mem) in
        [(Mem::Bshd, Mem::Bhsd), (Mem::Bhsd, Mem::Bshd), (Mem::Padded, Mem::Padded), (Mem::Bhsd, Mem::Padded)]
    {
        for &(lq, lk) in &[(1usize, 100usize), (65, 130)] {
            let c = Case::new(2, lq, lk, 4, 2, 24).mem(mem, out_mem);
            check_case(&c, &AttentionOptions::new().causal());
        }
    }
}

#[test]
fn every_dtype_combination() {
    let all = [DType::F32, DType::F16, DType::BF16];
    for &qd in &all {
        for &kd in &all {
            for &vd in &all {
                for &od in &all {
                    let c = Case::new(1, 9, 70, 4, 2, 16).dtypes([qd, kd, vd, od]);
                    check_case(&c, &AttentionOptions::new().causal());
                }
            }
        }
    }
    // decode-shaped too (dot-product QK path)
    for &kd in &all {
        let c = Case::new(1, 1, 1500, 4, 1, 64).dtypes([DType::F32, kd, kd, DType::F32]);
        check_case(&c, &AttentionOptions::new().causal());
    }
}

#[test]
fn v_head_dim_differs_and_odd_head_dims() {
    for &(dk, dv) in &[(16usize, 8usize), (8, 40), (1, 1), (3, 5), (129, 65), (256, 256)] {
        let c = Case::new(1, 17, 90, 2, 1, dk).v_dim(dv);
        check_case(&c, &AttentionOptions::new().causal());
    }
}

#[test]
fn scale_softcap_alibi_bias_sinks() {
    let c = Case::new(1, 33, 77, 4, 2, 16);
    check_case(&c, &AttentionOptions::new().causal().scale(0.7));
    check_case(&c, &AttentionOptions::new().causal().softcap(1.5));
    let slopes = [0.5f32, 0.25, 0.125, 0.0625];
    check_case(&c, &AttentionOptions::new().causal().alibi_slopes(&slopes));
    check_case(&c, &AttentionOptions::new().alibi_slopes(&slopes));
    let sinks = [0.3f32, -2.0, 5.0, f32::NEG_INFINITY];
    check_case(&c, &AttentionOptions::new().causal().sinks(&sinks));
    check_case(&c, &AttentionOptions::new().causal().window(8).sinks(&sinks));
    let mut rng = Rng::new(5);
    let bias: Vec<f32> = (0..33 * 77).map(|_| rng.uniform() * 3.0).collect();
    // One [q_len, kv_len] bias broadcast over batch and heads.
    let b = Bias::new(&bias, [0, 0, 77, 1]);
    check_case(&c, &AttentionOptions::new().bias(b));
    check_case(&c, &AttentionOptions::new().causal().softcap(2.0).bias(b).sinks(&sinks).alibi_slopes(&slopes));
    // Sinks on rows with no visible key: output 0, LSE = sink logit.
    let c = Case::new(1, 12, 4, 4, 2, 8);
    check_case(&c, &AttentionOptions::new().causal().sinks(&sinks));
}

#[test]
fn split_kv_decode_long_cache() {
    for &lk in &[1023usize, 1024, 1025, 3000, 5000] {
        for &(hq, hkv) in &[(8usize, 2usize), (4, 4), (16, 2)] {
            let c = Case::new(1, 1, lk, hq, hkv, 64).seed(lk as u64);
            check_case(&c, &AttentionOptions::new().causal());
        }
    }
    let c = Case::new(2, 3, 2500, 8, 2, 32);
    check_case(&c, &AttentionOptions::new().causal().window(1500).sink_tokens(4));
}
