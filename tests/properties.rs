//! Invariants: thread-count independence (bit-exact), chunked prefill + decode equals one-shot,
//! GQA equals MHA with repeated KV heads, probability rows sum to one.

mod common;
use common::*;
use gated_attention::{attention, AttentionOptions, DType, Layout, Parallelism, Tensor, TensorMut};

fn bits(b: &Buf) -> Vec<u32> {
    (0..b.len()).map(|i| b.get(i).to_bits()).collect()
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let cases = [
        (Case::new(1, 130, 130, 8, 2, 32), AttentionOptions::new().causal()),
        (Case::new(2, 1, 5000, 8, 2, 64), AttentionOptions::new().causal()),
        (
            Case::new(1, 2, 3100, 4, 4, 16).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]),
            AttentionOptions::new().causal().window(2000),
        ),
        (Case::new(1, 70, 300, 4, 1, 16), AttentionOptions::new().causal().window(40).sink_tokens(3)),
    ];
    for (c, opts) in &cases {
        let inp = make_inputs(c);
        let (base, base_lse) = run_kernel(&inp, c, opts, Entry::Scratch);
        let base_bits = bits(&base);
        let lse_bits: Vec<u32> = base_lse.iter().map(|x| x.to_bits()).collect();
        for threads in [1usize, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for entry in [Entry::Sequential, Entry::Rayon] {
                let (out, lse) = pool.install(|| run_kernel(&inp, c, opts, entry));
                assert_eq!(bits(&out), base_bits, "{threads} threads, {entry:?}, case {c:?}");
                let l: Vec<u32> = lse.iter().map(|x| x.to_bits()).collect();
                assert_eq!(l, lse_bits, "lse: {threads} threads, {entry:?}");
            }
        }
    }
}

/// A thread keeps the staged K/V rows of a call's KV head for the head's next query tiles (the
/// driver's K/V panel). A later call on that thread, here over the same buffers with new
/// contents, must see the new keys and values: with one KV head and batch row (the first case)
/// the call's last unit leaves the very rows the next call's first unit reads. A head longer
/// than the panel (8 MiB of rows: 1024 keys at D 1024) keeps its first keys there and stages
/// the rest per tile; both entry points (the pool and the caller's scratch) share the thread's
/// panel.
#[test]
fn staged_kv_rows_never_outlive_their_call() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let opts = AttentionOptions::new().causal();
    let cases =
        [Case::new(1, 300, 300, 2, 1, 32), Case::new(2, 300, 300, 4, 2, 32), Case::new(1, 100, 1100, 1, 1, 1024)];
    for c in cases {
        let mut inp = make_inputs(&c);
        for round in 0..3 {
            for entry in [Entry::Rayon, Entry::Scratch] {
                let (out, lse) = pool.install(|| run_kernel(&inp, &c, &opts, entry));
                check(&inp, &c, &opts, &out, &lse, &format!("round {round}, {entry:?}, {c:?}"));
            }
            // New keys and values in the same buffers.
            let mut rng = Rng::new(100 + round);
            for i in 0..inp.k.len() {
                inp.k.set(i, rng.uniform() * 2.0);
            }
            for i in 0..inp.v.len() {
                inp.v.set(i, rng.uniform());
            }
        }
    }
}

/// Runs attention for query rows `[a, b)` against keys `[0, b)` of contiguous bshd buffers.
fn run_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hq: usize,
    hkv: usize,
    d: usize,
    a: usize,
    b: usize,
    opts: &AttentionOptions<'_>,
) -> Vec<f32> {
    let q_view = Tensor::new(&q[a * hq * d..b * hq * d], Layout::bshd(1, b - a, hq, d));
    let k_view = Tensor::new(&k[..b * hkv * d], Layout::bshd(1, b, hkv, d));
    let v_view = Tensor::new(&v[..b * hkv * d], Layout::bshd(1, b, hkv, d));
    let mut o = vec![0.0f32; (b - a) * hq * d];
    attention(&q_view, &k_view, &v_view, TensorMut::bshd(&mut o[..], 1, b - a, hq, d), None, opts).unwrap();
    o
}

#[test]
fn chunked_prefill_then_decode_equals_one_shot() {
    let (l, hq, hkv, d) = (300usize, 8usize, 2usize, 32usize);
    let mut rng = Rng::new(11);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform() * 2.0).collect::<Vec<f32>>();
    let (q, k, v) = (gen(l * hq * d), gen(l * hkv * d), gen(l * hkv * d));
    for opts in [AttentionOptions::new().causal(), AttentionOptions::new().causal().window(50).sink_tokens(2)] {
        let full = run_rows(&q, &k, &v, hq, hkv, d, 0, l, &opts);
        // prefill in uneven chunks, then one token at a time
        let mut bounds = vec![0usize, 37, 64, 150, 250];
        bounds.extend(251..=l);
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            let part = run_rows(&q, &k, &v, hq, hkv, d, a, b, &opts);
            let (atol, rtol) = tolerance(DType::F32);
            for (idx, (&x, &r)) in part.iter().zip(&full[a * hq * d..b * hq * d]).enumerate() {
                assert!(
                    (x - r).abs() as f64 <= atol + rtol * r.abs() as f64,
                    "rows {a}..{b}, element {idx}: {x} vs one-shot {r}"
                );
            }
        }
    }
}

#[test]
fn gqa_equals_mha_with_repeated_kv() {
    let (lq, lk, hq, hkv, d) = (40usize, 90usize, 8usize, 2usize, 16usize);
    let g = hq / hkv;
    let mut rng = Rng::new(3);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
    let (q, k, v) = (gen(lq * hq * d), gen(lk * hkv * d), gen(lk * hkv * d));
    let repeat = |x: &[f32]| {
        let mut r = Vec::with_capacity(lk * hq * d);
        for j in 0..lk {
            for h in 0..hq {
                let kvh = h / g;
                r.extend_from_slice(&x[(j * hkv + kvh) * d..(j * hkv + kvh + 1) * d]);
            }
        }
        r
    };
    let (k_rep, v_rep) = (repeat(&k), repeat(&v));
    let opts = AttentionOptions::new().causal();
    let mut o_gqa = vec![0.0f32; lq * hq * d];
    let mut o_mha = vec![0.0f32; lq * hq * d];
    attention(
        &Tensor::bshd(&q[..], 1, lq, hq, d),
        &Tensor::bshd(&k[..], 1, lk, hkv, d),
        &Tensor::bshd(&v[..], 1, lk, hkv, d),
        TensorMut::bshd(&mut o_gqa[..], 1, lq, hq, d),
        None,
        &opts,
    )
    .unwrap();
    attention(
        &Tensor::bshd(&q[..], 1, lq, hq, d),
        &Tensor::bshd(&k_rep[..], 1, lk, hq, d),
        &Tensor::bshd(&v_rep[..], 1, lk, hq, d),
        TensorMut::bshd(&mut o_mha[..], 1, lq, hq, d),
        None,
        &opts,
    )
    .unwrap();
    let (atol, rtol) = tolerance(DType::F32);
    for (i, (&a, &b)) in o_gqa.iter().zip(&o_mha).enumerate() {
        assert!((a - b).abs() as f64 <= atol + rtol * b.abs() as f64, "element {i}: gqa {a} vs mha {b}");
    }
}

#[test]
fn probability_rows_sum_to_one() {
    // With V = 1 everywhere the output is the sum of each probability row.
    let (lq, lk, hq, hkv, d) = (50usize, 200usize, 4usize, 2usize, 16usize);
    let mut rng = Rng::new(9);
    let q: Vec<f32> = (0..lq * hq * d).map(|_| rng.uniform() * 4.0).collect();
    let k: Vec<f32> = (0..lk * hkv * d).map(|_| rng.uniform() * 4.0).collect();
    let v = vec![1.0f32; lk * hkv * d];
    let sinks = [0.5f32, 1.0, -1.0, 3.0];
    for (opts, with_sinks) in [
        (AttentionOptions::new().causal(), false),
        (AttentionOptions::new().causal().window(33).softcap(5.0), false),
        (AttentionOptions::new().causal().sinks(&sinks), true),
    ] {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let mut o = vec![0.0f32; lq * hq * d];
            let mut lse = vec![0.0f32; hq * lq];
            attention(
                &Tensor::bshd(&q[..], 1, lq, hq, d),
                &Tensor::bshd(&k[..], 1, lk, hkv, d),
                &Tensor::bshd(&v[..], 1, lk, hkv, d),
                TensorMut::bshd(&mut o[..], 1, lq, hq, d),
                Some(&mut lse),
                &opts.parallelism(par),
            )
            .unwrap();
            for i in 0..lq {
                for h in 0..hq {
                    let expect = if with_sinks {
                        // Σ p = 1 - exp(sink - lse)
                        1.0 - (sinks[h] - lse[h * lq + i]).exp()
                    } else {
                        1.0
                    };
                    for e in 0..d {
                        let x = o[(i * hq + h) * d + e];
                        assert!((x - expect).abs() <= 1e-5, "row ({i}, {h}) sums to {x}, expected {expect}");
                    }
                }
            }
        }
    }
}
