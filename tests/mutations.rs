//! The error model bites: kernel outputs of deliberately wrong calls (one key dropped, the window
//! one key too wide, the learned sinks ignored) are rejected against the reference of the intended
//! call, at 32k keys as at 256, while the kernel's output for the intended call is accepted.
//!
//! `cargo test --release --test mutations -- --nocapture` prints the table recorded in
//! tests/README.md: the largest `|kernel - reference| / bound` over the outputs and over the LSE
//! (> 1 is a rejection), and the same ratio against the fixed `(2e-5, 2e-5)` budget.

mod common;
use common::*;
use gated_attention::{reference, AttentionOptions, Bias, Tensor};

/// `max |x - r| / (atol + rtol·|r|)` over the outputs and the LSE, with the fixed budgets.
fn legacy_margin(r: &reference::Reference, inp: &Inputs, c: &Case, out: &Buf, lse: &[f32]) -> f64 {
    let d = &c.dims;
    let (atol, rtol) = tolerance(c.dtypes[3]);
    let mut worst = 0.0f64;
    for b in 0..d.batch {
        for i in 0..d.q_len {
            for h in 0..d.q_heads {
                let base = b * inp.ol.strides[0] + i * inp.ol.strides[1] + h * inp.ol.strides[2];
                for e in 0..d.v_head_dim {
                    let rv = r.out_at(b, i, h, e);
                    worst = worst.max((out.get(base + e) as f64 - rv).abs() / (atol + rtol * rv.abs()));
                }
                let rl = r.lse_at(b, h, i);
                let xl = lse[(b * d.q_heads + h) * d.q_len + i] as f64;
                worst = worst.max((xl - rl).abs() / (LSE_TOL.0 + LSE_TOL.1 * rl.abs()));
            }
        }
    }
    worst
}

struct Row {
    what: String,
    kv_len: usize,
    model: (f64, f64),
    legacy: f64,
}

/// Runs the kernel with `actual` and scores it against the reference of `intended`.
fn score(c: &Case, inp: &Inputs, intended: &AttentionOptions<'_>, actual: &AttentionOptions<'_>, what: &str) -> Row {
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let r = reference::attention_with_stats(&q, &k, &v, intended).unwrap();
    let (out, lse) = run_kernel(inp, c, actual, Entry::Rayon);
    let model = model_margin(&r, inp, c, &out, &lse);
    let legacy = legacy_margin(&r, inp, c, &out, &lse);
    Row { what: what.to_string(), kv_len: c.dims.kv_len, model, legacy }
}

fn mutants(kv_len: usize) -> Vec<(Row, bool)> {
    // Decode-like: a few query rows at the end of a long cache, GQA, head_dim 64.
    let c = Case::new(1, 4, kv_len, 8, 2, 64).seed(kv_len as u64 + 7);
    let inp = make_inputs(&c);
    let causal = AttentionOptions::new().causal();
    let mut rows = vec![(score(&c, &inp, &causal, &causal, "correct (causal)"), false)];
    for (name, j) in [("first", 0), ("middle", kv_len / 2), ("last", kv_len - 1)] {
        let mut bias = vec![0.0f32; kv_len];
        bias[j] = f32::NEG_INFINITY;
        let drop = causal.bias(Bias::new(&bias, [0, 0, 0, 1]));
        rows.push((score(&c, &inp, &causal, &drop, &format!("key {j} ({name}) dropped")), true));
    }
    let w = kv_len / 2;
    let window = causal.window(w);
    rows.push((score(&c, &inp, &window, &window, &format!("correct (window {w})")), false));
    rows.push((score(&c, &inp, &window, &causal.window(w + 1), &format!("window {} for {w}", w + 1)), true));
    // gpt-oss-like learned sink logits.
    let sinks = [0.5f32, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0];
    let with_sinks = causal.sinks(&sinks);
    rows.push((score(&c, &inp, &with_sinks, &with_sinks, "correct (learned sinks)"), false));
    rows.push((score(&c, &inp, &with_sinks, &causal, "learned sinks ignored"), true));
    rows
}

/// The median and largest output bound of the correct causal call.
fn bound_size(kv_len: usize) -> (f64, f64) {
    let c = Case::new(1, 4, kv_len, 8, 2, 64).seed(kv_len as u64 + 7);
    let inp = make_inputs(&c);
    let (q, k, v) =
        (Tensor::new(inp.q.elems(), inp.ql), Tensor::new(inp.k.elems(), inp.kl), Tensor::new(inp.v.elems(), inp.vl));
    let r = reference::attention_with_stats(&q, &k, &v, &AttentionOptions::new().causal()).unwrap();
    let mut b = error_model::bounds(&r, c.dtypes[3]).expect("stats").out;
    b.sort_by(f64::total_cmp);
    (b[b.len() / 2], b[b.len() - 1])
}

fn run(kv_len: usize) {
    let (median, max) = bound_size(kv_len);
    println!("kv_len {kv_len}: output bound median {median:.2e}, largest {max:.2e}");
    let rows = mutants(kv_len);
    println!("| kv_len | kernel output | model: out | model: LSE | verdict | fixed (2e-5, 2e-5) |");
    println!("|---|---|---|---|---|---|");
    for (row, mutant) in &rows {
        let worst = row.model.0.max(row.model.1);
        let verdict = if worst > 1.0 { "rejected" } else { "accepted" };
        let legacy = if row.legacy > 1.0 { "rejected" } else { "accepted" };
        println!(
            "| {} | {} | {:.3} | {:.3} | {verdict} | {:.3} ({legacy}) |",
            row.kv_len, row.what, row.model.0, row.model.1, row.legacy
        );
        if *mutant {
            assert!(worst > 1.0, "kv_len {kv_len}: mutant `{}` accepted (margin {worst:.3})", row.what);
        } else {
            assert!(worst <= 1.0, "kv_len {kv_len}: correct output `{}` rejected (margin {worst:.3})", row.what);
        }
    }
}

#[test]
fn mutants_are_rejected_at_256_keys() {
    run(256);
}

#[test]
fn mutants_are_rejected_at_32k_keys() {
    run(32768);
}

/// Fractions of (row, key) pairs of a causal call whose single dropped key each check detects:
/// dropping key `j` moves output `d` of a row by exactly `p̂_j (o_d - v_jd) / (1 - p̂_j)` and its LSE
/// by `ln(1 - p̂_j)`; the drop counts as detected when that shift exceeds the bound plus the
/// kernel's actual error on the element (so it is detected whatever the sign of that error).
fn drop_detection(c: &Case) -> (f64, f64) {
    let d = c.dims;
    let inp = make_inputs(c);
    let opts = AttentionOptions::new().causal();
    let (q, k, v) =
        (Tensor::new(inp.q.elems(), inp.ql), Tensor::new(inp.k.elems(), inp.kl), Tensor::new(inp.v.elems(), inp.vl));
    let r = reference::attention_with_stats(&q, &k, &v, &opts).unwrap();
    let bounds = error_model::bounds(&r, c.dtypes[3]).expect("stats");
    let (out, lse) = run_kernel(&inp, c, &opts, Entry::Rayon);
    let (atol, rtol) = tolerance(c.dtypes[3]);
    let (mut pairs, mut by_model, mut by_legacy) = (0usize, 0usize, 0usize);
    for h in 0..d.q_heads {
        let s = reference::scores(&q, &k, &opts, &d, 0, h).expect("valid arguments");
        let kvh = h / d.group();
        for i in 0..d.q_len {
            let li = h * d.q_len + i;
            let (rl, xl) = (r.lse[li], lse[li] as f64);
            let base = i * inp.ol.strides[1] + h * inp.ol.strides[2];
            for j in (0..d.kv_len).filter(|&j| s[i * d.kv_len + j].is_finite()) {
                let p = (s[i * d.kv_len + j] - rl).exp();
                let shift_lse = (1.0 - p).ln().abs();
                let lse_err = (xl - rl).abs();
                let mut model = shift_lse - lse_err > bounds.lse[li];
                let mut legacy = shift_lse - lse_err > LSE_TOL.0 + LSE_TOL.1 * rl.abs();
                for e in 0..d.v_head_dim {
                    let oi = (i * d.q_heads + h) * d.v_head_dim + e;
                    let vj = inp.v.get(j * inp.vl.strides[1] + kvh * inp.vl.strides[2] + e) as f64;
                    let shift = (p * (r.out[oi] - vj) / (1.0 - p)).abs();
                    let err = (out.get(base + e) as f64 - r.out[oi]).abs();
                    model |= shift - err > bounds.out[oi];
                    legacy |= shift - err > atol + rtol * r.out[oi].abs();
                }
                pairs += 1;
                by_model += model as usize;
                by_legacy += legacy as usize;
            }
        }
    }
    (by_model as f64 / pairs as f64, by_legacy as f64 / pairs as f64)
}

#[test]
fn most_single_key_drops_are_detected_at_32k_keys() {
    println!("| kv_len | (row, key) drops detected: model | fixed (2e-5, 2e-5) |");
    println!("|---|---|---|");
    for kv_len in [256usize, 4096, 32768] {
        let c = Case::new(1, 4, kv_len, 8, 2, 64).seed(kv_len as u64 + 7);
        let (model, legacy) = drop_detection(&c);
        println!("| {kv_len} | {:.1}% | {:.1}% |", 100.0 * model, 100.0 * legacy);
        assert!(model >= legacy, "kv_len {kv_len}: the model detects fewer drops than the fixed budget");
        if kv_len == 32768 {
            assert!(model > 0.5, "kv_len {kv_len}: the model detects only {:.1}% of single-key drops", 100.0 * model);
        }
    }
}
