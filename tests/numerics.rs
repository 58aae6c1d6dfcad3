//! The numerics contract: non-finite inputs reach only the rows that see them; fully masked rows
//! give zeros and LSE -inf; the error against the f64 reference stays within the stated bound up
//! to 32k keys in every dtype.

mod common;
use common::*;
use gated_attention::{attention, reference, AttentionOptions, DType, Layout, Tensor, TensorMut};

fn poison(buf: &mut Buf, layout: &Layout, b: usize, s: usize, h: usize, e: usize, x: f32) {
    let off = b * layout.strides[0] + s * layout.strides[1] + h * layout.strides[2] + e;
    buf.set(off, x);
}

#[test]
fn non_finite_inputs_reach_only_the_rows_that_see_them() {
    // GQA, and MHA, whose 96-query tiles reach past a 72-key tile: key 80 of KV head 1 then lies
    // in a diagonal tile that the first 72 queries cannot see, which the kernel skips for them.
    for (hq, pk) in [(4usize, 70usize), (2, 80)] {
        poisoned_inputs_reach_only_the_rows_that_see_them(hq, pk);
    }
}

/// One poisoned value at key `pk` of KV head 1 (or in a query of the last head), with `hq`
/// query heads over 2 KV heads: only the rows that see it may turn non-finite.
fn poisoned_inputs_reach_only_the_rows_that_see_them(hq: usize, pk: usize) {
    let last = hq - 1; // a query head of KV group 1
    for (w, label) in [(None, "causal"), (Some(20usize), "window 20")] {
        for dt in [DType::F32, DType::F16] {
            let c = Case::new(1, 150, 150, hq, 2, 16).dtypes([dt, dt, dt, DType::F32]);
            let mut opts = AttentionOptions::new().causal();
            if let Some(w) = w {
                opts = opts.window(w);
            }
            for (which, value) in
                [("k", f32::NAN), ("v", f32::NAN), ("k", f32::INFINITY), ("v", f32::NEG_INFINITY), ("q", f32::NAN)]
            {
                let mut inp = make_inputs(&c);
                let (kl, vl, ql) = (inp.kl, inp.vl, inp.ql);
                match which {
                    // key/value pk of KV head 1: rows before pk (and, with the window, rows past
                    // pk + 19) never see it
                    "k" => poison(&mut inp.k, &kl, 0, pk, 1, 3, value),
                    "v" => poison(&mut inp.v, &vl, 0, pk, 1, 3, value),
                    _ => poison(&mut inp.q, &ql, 0, 100, last, 0, value),
                }
                for entry in [Entry::Scratch, Entry::Rayon] {
                    let (out, lse) = run_kernel(&inp, &c, &opts, entry);
                    // check() compares NaN with NaN and finite with finite, element by element
                    check(&inp, &c, &opts, &out, &lse, &format!("{hq} heads, {label} {dt:?} {which}={value}"));
                }
                // and the reference itself confines it: an unaffected row is finite
                let r = reference::attention(
                    &Tensor::new(inp.q.elems(), ql),
                    &Tensor::new(inp.k.elems(), kl),
                    &Tensor::new(inp.v.elems(), vl),
                    &opts,
                )
                .unwrap();
                assert!(r.out_at(0, 10, last, 0).is_finite() && r.out_at(0, 149, 0, 0).is_finite());
                if which != "q" {
                    assert!(
                        !r.out_at(0, pk + 5, last, 3).is_finite() || value.is_infinite(),
                        "row {} of a head of KV group 1 sees key {pk}",
                        pk + 5
                    );
                }
            }
        }
    }
}

#[test]
fn long_sequences_stay_within_the_bound() {
    // Decode against 32k keys in every dtype, and the last rows of an 8k prefill.
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let c = Case::new(1, 2, 32768, 4, 1, 64).dtypes([dt, dt, dt, dt]).seed(77);
        check_case(&c, &AttentionOptions::new().causal());
        let c = Case::new(1, 3, 32768, 2, 2, 32).dtypes([DType::F32, dt, dt, DType::F32]).seed(78);
        check_case(&c, &AttentionOptions::new().causal().window(20000).sink_tokens(4));
    }
    let (l, hq, hkv, d) = (8192usize, 4usize, 1usize, 64usize);
    let mut rng = Rng::new(99);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform() * 2.0).collect::<Vec<f32>>();
    let (q, k, v) = (gen(l * hq * d), gen(l * hkv * d), gen(l * hkv * d));
    let opts = AttentionOptions::new().causal();
    let mut o = vec![0.0f32; l * hq * d];
    attention(
        &Tensor::bshd(&q[..], 1, l, hq, d),
        &Tensor::bshd(&k[..], 1, l, hkv, d),
        &Tensor::bshd(&v[..], 1, l, hkv, d),
        TensorMut::bshd(&mut o[..], 1, l, hq, d),
        None,
        &opts,
    )
    .unwrap();
    let (atol, rtol) = tolerance(DType::F32);
    for &(a, b) in &[(0usize, 3usize), (4095, 4097), (8189, 8192)] {
        // rows [a, b) against keys [0, b), bottom-right aligned: the same rows as the one-shot call
        let r = reference::attention(
            &Tensor::new(&q[a * hq * d..b * hq * d], Layout::bshd(1, b - a, hq, d)),
            &Tensor::new(&k[..b * hkv * d], Layout::bshd(1, b, hkv, d)),
            &Tensor::new(&v[..b * hkv * d], Layout::bshd(1, b, hkv, d)),
            &opts,
        )
        .unwrap();
        for (idx, (&x, &rv)) in o[a * hq * d..b * hq * d].iter().zip(&r.out).enumerate() {
            assert!((x as f64 - rv).abs() <= atol + rtol * rv.abs(), "rows {a}..{b} element {idx}: {x} vs {rv}");
        }
    }
}
