//! The oracle checked against the kernels' parameters and validation, and against the size and
//! mask-bound contract.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::error::Operand;
use crate::gate::Gate;
use crate::options::{Alignment, Bias};
use crate::rope::{Positions, RopeConfig, RopePairing, RopeScaling};
use crate::tensor::{Layout, TensorMut};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn frequencies_agree_with_rope_table_for_every_scaling() {
    let short: Vec<f64> = (0..32).map(|i| 1.0 + 0.05 * i as f64).collect();
    let long: Vec<f64> = (0..32).map(|i| 1.0 + 0.5 * i as f64).collect();
    let yarn = |truncate, mscale, mscale_all_dim, attention_factor| RopeScaling::Yarn {
        factor: 32.0,
        original_max_position: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale,
        mscale_all_dim,
        attention_factor,
        truncate,
    };
    let longrope = |factor| RopeScaling::LongRope {
        short_factor: &short,
        long_factor: &long,
        original_max_position: 4096,
        factor,
        attention_factor: None,
    };
    let scalings = [
        RopeScaling::Default,
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 2048 },
        RopeScaling::yarn(4.0, 2048),
        yarn(false, None, None, None),
        yarn(true, Some(1.0), Some(0.707), None),
        yarn(true, None, None, Some(1.3)),
        RopeScaling::llama3_1(),
        RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 256 },
        longrope(None),
        longrope(Some(8.0)),
    ];
    let mut checked = 0;
    for scaling in scalings {
        for (base, pairing) in [(10_000.0, RopePairing::NeoxHalf), (500_000.0, RopePairing::GptjInterleaved)] {
            // Table lengths on both sides of every original context (dynamic NTK and LongRoPE
            // switch there).
            for positions in [1, 300, 2048, 5000] {
                let config = RopeConfig::new(80, base)
                    .partial(64)
                    .pairing(pairing)
                    .scaling(scaling)
                    .max_position_embeddings(131_072);
                let table = RopeTable::new(&config, positions).unwrap();
                let ours = rotary::frequencies(&config, positions).unwrap();
                assert_eq!(ours, rotary::table_frequencies(&table), "{scaling:?}: the table's parameters round-trip");
                assert_eq!(ours.inv_freq.len(), table.inv_freq().len());
                for (i, (a, b)) in ours.inv_freq.iter().zip(table.inv_freq()).enumerate() {
                    assert!(rel(*a, *b) < 1e-12, "{scaling:?} at {positions}: inv_freq[{i}] {a} vs table {b}");
                }
                let (a, b) = (ours.attention_factor, table.attention_factor());
                assert!(rel(a, b) < 1e-12, "{scaling:?}: attention factor {a} vs table {b}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 11 * 2 * 4);
}

#[test]
fn rotation_matches_the_table_in_both_pairings_with_partial_dims() {
    for pairing in [RopePairing::NeoxHalf, RopePairing::GptjInterleaved] {
        let config = RopeConfig::new(10, 10_000.0).partial(6).pairing(pairing).scaling(RopeScaling::yarn(4.0, 64));
        let table = RopeTable::new(&config, 200).unwrap();
        let x: Vec<f32> = (0..10).map(|i| 0.3 * i as f32 - 1.0).collect();
        for pos in [0usize, 1, 77, 199] {
            let mut got = x.clone();
            table.rotate(TensorMut::bshd(&mut got[..], 1, 1, 1, 10), Positions::Offset(pos)).unwrap();
            let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            rope_f64(&table, pos, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{pairing:?} at {pos}: {g} vs {w}");
            }
            assert_eq!(&want[6..], &x[6..].iter().map(|&v| v as f64).collect::<Vec<_>>()[..], "pass-through");
        }
    }
}

/// A call: sizes and buffers, mutated per table row.
#[derive(Clone)]
struct Args {
    q: Layout,
    k: Layout,
    v: Layout,
    out: Layout,
    lens: [usize; 4],
    lse: Option<usize>,
}

fn args(b: usize, lq: usize, lk: usize, hq: usize, hkv: usize, d: usize, dv: usize) -> Args {
    let q = Layout::bshd(b, lq, hq, d);
    let k = Layout::bshd(b, lk, hkv, d);
    let v = Layout::bshd(b, lk, hkv, dv);
    let out = Layout::bshd(b, lq, hq, dv);
    // Saturating: the size-contract cases pass extents whose products overflow (their buffers are
    // stride-0 views over a few elements, and they set `lens` themselves).
    let n = |x: [usize; 4]| x.iter().fold(1usize, |a, &e| a.saturating_mul(e));
    let lens = [n([b, lq, hq, d]), n([b, lk, hkv, d]), n([b, lk, hkv, dv]), n([b, lq, hq, dv])];
    Args { q, k, v, out, lens, lse: None }
}

/// The kernel's and the reference's verdicts on one call.
fn verdicts(a: &Args, opts: &AttentionOptions<'_>) -> (Result<(), Error>, Result<(), Error>) {
    let data: Vec<Vec<f32>> = a.lens[..3].iter().map(|&n| vec![0.25f32; n]).collect();
    let mut out = vec![0.0f32; a.lens[3]];
    let mut lse = a.lse.map(|n| vec![0.0f32; n]);
    let q = Tensor::new(&data[0][..], a.q);
    let k = Tensor::new(&data[1][..], a.k);
    let v = Tensor::new(&data[2][..], a.v);
    let desc = OutputDesc { layout: a.out, len: out.len(), lse_len: a.lse };
    let ours = validate(&q, &k, &v, opts, Some(desc)).map(|_| ());
    let theirs = crate::attention(&q, &k, &v, TensorMut::new(&mut out[..], a.out), lse.as_deref_mut(), opts);
    (theirs, ours)
}

#[test]
fn validation_gives_the_kernels_error_for_every_bad_input() {
    let base = args(2, 3, 5, 4, 2, 8, 6);
    let o = AttentionOptions::new();
    let (slopes3, sinks5, bias_small) = ([0.5f32; 3], [0.0f32; 5], [0.0f32; 10]);
    let bias_ok = vec![0.0f32; 2 * 4 * 3 * 5];
    let table = RopeTable::new(&RopeConfig::new(8, 10_000.0), 16).unwrap();
    let table_short = RopeTable::new(&RopeConfig::new(8, 10_000.0), 4).unwrap();
    let table_d6 = RopeTable::new(&RopeConfig::new(6, 10_000.0), 16).unwrap();
    let ids_bad = [1usize, 2];
    let ids_huge = [usize::MAX; 6];
    let per_batch = [0usize, 3];
    let gate_ok = vec![0.0f32; 2 * 3 * 4 * 6];
    let gate_small = [0.0f32; 4];
    let with = |f: &dyn Fn(&mut Args)| {
        let mut a = base.clone();
        f(&mut a);
        a
    };
    let mut cases: Vec<(&str, Args, AttentionOptions<'_>, Option<Error>)> = vec![
        ("valid", base.clone(), o, None),
        ("valid, every option", base.clone(), o.causal().window(2).sink_tokens(1).softcap(5.0).scale(0.3), None),
        (
            "k batch",
            with(&|a| a.k.shape[0] = 1),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Key, dim: "batch", expected: 2, found: 1 }),
        ),
        (
            "v batch",
            with(&|a| a.v.shape[0] = 3),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Value, dim: "batch", expected: 2, found: 3 }),
        ),
        (
            "v kv_len",
            with(&|a| a.v.shape[1] = 4),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Value, dim: "kv_len", expected: 5, found: 4 }),
        ),
        (
            "v heads",
            with(&|a| a.v.shape[2] = 1),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Value, dim: "heads", expected: 2, found: 1 }),
        ),
        (
            "k head_dim",
            with(&|a| a.k.shape[3] = 7),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Key, dim: "head_dim", expected: 8, found: 7 }),
        ),
        (
            "heads not divisible",
            with(&|a| {
                a.k.shape[2] = 3;
                a.v.shape[2] = 3
            }),
            o,
            Some(Error::HeadsNotDivisible { q_heads: 4, kv_heads: 3 }),
        ),
        (
            "zero kv heads",
            with(&|a| {
                a.k.shape[2] = 0;
                a.v.shape[2] = 0
            }),
            o,
            Some(Error::HeadsNotDivisible { q_heads: 4, kv_heads: 0 }),
        ),
        (
            "zero head dim",
            with(&|a| {
                a.q.shape[3] = 0;
                a.k.shape[3] = 0
            }),
            o,
            Some(Error::ZeroHeadDim { operand: Operand::Key }),
        ),
        ("zero v head dim", with(&|a| a.v.shape[3] = 0), o, Some(Error::ZeroHeadDim { operand: Operand::Value })),
        (
            "nan scale",
            base.clone(),
            o.scale(f32::NAN),
            Some(Error::InvalidOption { option: "scale", reason: "must be finite" }),
        ),
        (
            "zero softcap",
            base.clone(),
            o.softcap(0.0),
            Some(Error::InvalidOption { option: "softcap", reason: "must be finite and > 0" }),
        ),
        (
            "inf softcap",
            base.clone(),
            o.softcap(f32::INFINITY),
            Some(Error::InvalidOption { option: "softcap", reason: "must be finite and > 0" }),
        ),
        ("subnormal softcap", base.clone(), o.softcap(1e-40), None),
        (
            "window 0",
            base.clone(),
            o.window(0),
            Some(Error::InvalidOption { option: "window", reason: "must be >= 1 (it counts the query's own key)" }),
        ),
        (
            "right window with causal",
            base.clone(),
            o.causal().right_window(1),
            Some(Error::InvalidOption { option: "right_window", reason: "contradicts causal" }),
        ),
        ("huge window", base.clone(), o.causal().window(usize::MAX).sink_tokens(usize::MAX), None),
        ("huge right window", base.clone(), o.right_window(usize::MAX).window(1 << 63), None),
        (
            "alibi length",
            base.clone(),
            o.alibi_slopes(&slopes3),
            Some(Error::ShapeMismatch { operand: Operand::AlibiSlopes, dim: "heads", expected: 4, found: 3 }),
        ),
        (
            "sinks length",
            base.clone(),
            o.sinks(&sinks5),
            Some(Error::ShapeMismatch { operand: Operand::Sinks, dim: "heads", expected: 4, found: 5 }),
        ),
        ("rope ok", base.clone(), o.rope_q(&table, Positions::Offset(13)), None),
        ("rope per batch ok", base.clone(), o.rope_q(&table, Positions::PerBatch(&per_batch)), None),
        (
            "rope head dim",
            base.clone(),
            o.rope_q(&table_d6, Positions::Offset(0)),
            Some(Error::ShapeMismatch { operand: Operand::Query, dim: "head_dim", expected: 6, found: 8 }),
        ),
        (
            "rope beyond table",
            base.clone(),
            o.rope_q(&table_short, Positions::Offset(2)),
            Some(Error::InvalidOption { option: "positions", reason: "beyond the RoPE table" }),
        ),
        (
            "rope ids length",
            base.clone(),
            o.rope_q(&table, Positions::Explicit(&ids_bad)),
            Some(Error::ShapeMismatch { operand: Operand::Positions, dim: "entries", expected: 6, found: 2 }),
        ),
        (
            "rope ids overflow",
            base.clone(),
            o.rope_q(&table, Positions::Explicit(&ids_huge)),
            Some(Error::InvalidOption { option: "positions", reason: "overflow" }),
        ),
        (
            "rope offset overflow",
            base.clone(),
            o.rope_q(&table, Positions::Offset(usize::MAX - 1)),
            Some(Error::InvalidOption { option: "positions", reason: "overflow" }),
        ),
        (
            "rope per batch length",
            base.clone(),
            o.rope_q(&table, Positions::PerBatch(&ids_bad[..1])),
            Some(Error::ShapeMismatch { operand: Operand::Positions, dim: "entries", expected: 2, found: 1 }),
        ),
        (
            "bias too small",
            base.clone(),
            o.bias(Bias::new(&bias_small, [60, 15, 5, 1])),
            Some(Error::BufferTooSmall { operand: Operand::Bias, needed: 120, len: 10 }),
        ),
        ("bias broadcast", base.clone(), o.bias(Bias::new(&bias_small, [0, 0, 0, 1])), None),
        ("bias ok", base.clone(), o.bias(Bias::new(&bias_ok, [60, 15, 5, 1])), None),
        (
            "bias stride overflow",
            base.clone(),
            o.bias(Bias::new(&bias_small, [usize::MAX, 0, 0, 1])),
            Some(Error::ShapeOverflow { operand: Operand::Bias }),
        ),
        ("gate ok", base.clone(), o.output_gate(Gate::sigmoid(Tensor::bshd(&gate_ok[..], 2, 3, 4, 6))), None),
        ("gate headwise", base.clone(), o.output_gate(Gate::sigmoid(Tensor::bshd(&gate_ok[..], 2, 3, 4, 1))), None),
        (
            "gate seq",
            base.clone(),
            o.output_gate(Gate::sigmoid(Tensor::bshd(&gate_ok[..], 2, 2, 4, 6))),
            Some(Error::ShapeMismatch { operand: Operand::Gate, dim: "seq", expected: 3, found: 2 }),
        ),
        (
            "gate dim",
            base.clone(),
            o.output_gate(Gate::sigmoid(Tensor::bshd(&gate_ok[..], 2, 3, 4, 3))),
            Some(Error::ShapeMismatch { operand: Operand::Gate, dim: "dim", expected: 6, found: 3 }),
        ),
        (
            "gate buffer",
            base.clone(),
            o.output_gate(Gate::sigmoid(Tensor::bshd(&gate_small[..], 2, 3, 1, 1))),
            Some(Error::BufferTooSmall { operand: Operand::Gate, needed: 6, len: 4 }),
        ),
        (
            "q buffer",
            with(&|a| a.lens[0] -= 1),
            o,
            Some(Error::BufferTooSmall { operand: Operand::Query, needed: 192, len: 191 }),
        ),
        (
            "v buffer",
            with(&|a| a.v.strides[0] += 1),
            o,
            Some(Error::BufferTooSmall { operand: Operand::Value, needed: 121, len: 120 }),
        ),
        (
            "k stride overflow",
            with(&|a| a.k.strides[1] = usize::MAX / 2),
            o,
            Some(Error::ShapeOverflow { operand: Operand::Key }),
        ),
        ("stride-0 keys", with(&|a| a.k.strides = [0, 0, 8]), o, None),
        (
            "out heads",
            with(&|a| a.out.shape[2] = 2),
            o,
            Some(Error::ShapeMismatch { operand: Operand::Output, dim: "heads", expected: 4, found: 2 }),
        ),
        (
            "out buffer",
            with(&|a| a.lens[3] = 7),
            o,
            Some(Error::BufferTooSmall { operand: Operand::Output, needed: 144, len: 7 }),
        ),
        ("out aliased", with(&|a| a.out.strides[0] = 0), o, Some(Error::AliasedOutput { operand: Operand::Output })),
        ("out bhsd", with(&|a| a.out = Layout::bhsd(2, 4, 3, 6)), o, None),
        ("lse ok", with(&|a| a.lse = Some(24)), o, None),
        (
            "lse length",
            with(&|a| a.lse = Some(23)),
            o,
            Some(Error::ShapeMismatch {
                operand: Operand::Lse,
                dim: "batch * q_heads * q_len",
                expected: 24,
                found: 23,
            }),
        ),
        ("empty q_len", args(2, 0, 5, 4, 2, 8, 6), o.causal(), None),
        ("empty kv_len", args(2, 3, 0, 4, 2, 8, 6), o.causal(), None),
        ("empty batch", args(0, 3, 5, 4, 2, 8, 6), o, None),
        ("top-left", base.clone(), o.causal().alignment(Alignment::TopLeft), None),
    ];
    // An error found earlier wins: a bad option and a bad buffer report the option.
    cases.push((
        "option before buffer",
        with(&|a| a.lens[0] = 0),
        o.softcap(-1.0),
        Some(Error::InvalidOption { option: "softcap", reason: "must be finite and > 0" }),
    ));
    for (name, a, opts, want) in &cases {
        let (theirs, ours) = verdicts(a, opts);
        assert_eq!(ours, theirs, "{name}: reference and kernel disagree");
        assert_eq!(ours.err(), *want, "{name}");
    }
}

/// Size contract (a): huge logical sizes over small stride-0 buffers. The reference's verdicts
/// are checked here; the kernels' agreement on them is checked once their validation implements
/// the contract (`validation_agrees_on_the_size_contract`).
fn size_contract_cases() -> Vec<(&'static str, Args, Option<Error>)> {
    let huge = 1usize << 62;
    let stride0 = |mut a: Args| {
        for l in [&mut a.q, &mut a.k, &mut a.v, &mut a.out] {
            l.strides = [0, 0, 0];
        }
        a.out.strides = [0, 0, 0];
        a
    };
    vec![
        ("kv_len 2^62, 1 key of storage", stride0(args(1, 1, huge, 1, 1, 1, 1)), None),
        ("kv_len 2^63", stride0(args(1, 1, 1 << 63, 1, 1, 8, 8)), Some(Error::ShapeOverflow { operand: Operand::Key })),
        ("k elements", stride0(args(1, 1, huge, 2, 2, 8, 8)), Some(Error::ShapeOverflow { operand: Operand::Key })),
        (
            "v elements",
            stride0(args(1, 1, huge / 2, 1, 1, 1, 4)),
            Some(Error::ShapeOverflow { operand: Operand::Value }),
        ),
        ("q elements", stride0(args(huge, 2, 1, 1, 1, 8, 8)), Some(Error::ShapeOverflow { operand: Operand::Query })),
        ("o elements", stride0(args(1, huge, 1, 1, 1, 1, 4)), Some(Error::ShapeOverflow { operand: Operand::Output })),
        (
            "empty batch, huge kv_len",
            stride0(args(0, 1, usize::MAX, 1, 1, 1, 1)),
            Some(Error::ShapeOverflow { operand: Operand::Key }),
        ),
    ]
}

#[test]
fn validation_implements_the_size_contract() {
    let o = AttentionOptions::new().causal().window(4);
    for (name, a, want) in size_contract_cases() {
        let data = [0.5f32; 64];
        let q = Tensor::new(&data[..], a.q);
        let k = Tensor::new(&data[..], a.k);
        let v = Tensor::new(&data[..], a.v);
        let got = validate(&q, &k, &v, &o, None).err();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn validation_agrees_on_the_size_contract() {
    let o = AttentionOptions::new().causal().window(4);
    for (name, a, _) in size_contract_cases() {
        let (theirs, ours) = verdicts(&Args { lens: [64, 64, 64, 64], ..a }, &o);
        assert_eq!(ours, theirs, "{name}");
    }
}

fn run(opts: &AttentionOptions<'_>, lq: usize, lk: usize) -> Reference {
    let q: Vec<f32> = (0..lq * 4).map(|x| (x as f32 * 0.37).sin()).collect();
    let k: Vec<f32> = (0..lk * 4).map(|x| (x as f32 * 0.91).cos()).collect();
    let v: Vec<f32> = (0..lk * 2).map(|x| (x as f32 * 0.53).sin()).collect();
    let (q, k, v) =
        (Tensor::bshd(&q[..], 1, lq, 1, 4), Tensor::bshd(&k[..], 1, lk, 1, 4), Tensor::bshd(&v[..], 1, lk, 1, 2));
    attention(&q, &k, &v, opts).unwrap()
}

#[test]
fn mask_bounds_saturate() {
    let o = AttentionOptions::new();
    let same = |a: &Reference, b: &Reference, what: &str| {
        assert_eq!(a.out, b.out, "{what}");
        assert_eq!(a.lse, b.lse, "{what}");
    };
    for (lq, lk) in [(3, 7), (7, 7)] {
        same(&run(&o.causal().window(usize::MAX), lq, lk), &run(&o.causal(), lq, lk), "window(MAX) == causal");
        same(&run(&o.causal().window(1 << 63), lq, lk), &run(&o.causal(), lq, lk), "window(2^63) == causal");
        same(&run(&o.right_window(usize::MAX), lq, lk), &run(&o, lq, lk), "right_window(MAX) sees everything");
        same(
            &run(&o.causal().window(1).sink_tokens(usize::MAX), lq, lk),
            &run(&o.causal(), lq, lk),
            "sink_tokens(MAX) keeps every key up to the causal bound",
        );
        same(&run(&o.right_window(usize::MAX).window(usize::MAX), lq, lk), &run(&o, lq, lk), "both windows unbounded");
        // The query's own key stays visible with a zero right window and the smallest window.
        let r = run(&o.right_window(0).window(1), lq, lk);
        assert!(r.lse.iter().all(|x| x.is_finite()));
    }
    assert!(visible(&o.causal().window(usize::MAX), 1, 1 << 62, 0, 0));
    assert!(visible(&o.right_window(usize::MAX), 1, 5, 0, 4));
    assert!(visible(&o.causal().window(1).sink_tokens(usize::MAX), 1, usize::MAX >> 1, 0, 3));
}

#[test]
fn subnormal_softcap_gives_the_mean_of_v() {
    // c = 1e-40: every capped score is within 1e-40 of 0, so the softmax is flat.
    let r = run(&AttentionOptions::new().softcap(1e-40), 3, 9);
    let v: Vec<f64> = (0..18).map(|x| (x as f32 * 0.53).sin() as f64).collect();
    for d in 0..2 {
        let mean = (0..9).map(|j| v[j * 2 + d]).sum::<f64>() / 9.0;
        for i in 0..3 {
            assert!((r.out_at(0, i, 0, d) - mean).abs() < 1e-12, "{} vs {mean}", r.out_at(0, i, 0, d));
        }
    }
    assert!(r.lse.iter().all(|x| (x - libm::log(9.0)).abs() < 1e-12));
}
