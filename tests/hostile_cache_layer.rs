//! Hostile inputs to the KV cache, the layer, RoPE positions and the measurements (issue 9,
//! findings 3, 4, 5, 6, 8, 9 and 11): each is an `Error` (never a panic or an abort) with nothing
//! written, checked with NaN canaries; the valid neighbour of each case still matches the f64
//! reference.

mod common;
use common::*;
use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
use gated_attention::gate::Gate;
use gated_attention::layer::{GatedAttention, GatedAttentionConfig, MAX_LAYER_PARAMETERS};
use gated_attention::measure::{first_token_probabilities, sink_share_per_head};
use gated_attention::rope::{Positions, RopeConfig, RopeTable};
use gated_attention::{reference, Alignment, AttentionOptions, Bias, DType, Error, Layout, Operand, Tensor, TensorMut};

const D: usize = 8;
const HQ: usize = 4;
const HKV: usize = 2;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform()).collect()
}

/// A two-row cache whose rows hold `lens[0]` and `lens[1]` tokens.
fn cache_with(lens: [usize; 2], policy: CachePolicy, rope: Option<&RopeTable>) -> KvCache {
    let mut cache = KvCache::new(KvCacheConfig::new(2, HKV, D, 16, DType::F32).policy(policy)).unwrap();
    for (b, &len) in lens.iter().enumerate() {
        let (k, v) = (values(len * HKV * D, 10 + b as u64), values(len * HKV * D, 20 + b as u64));
        cache
            .append_row(b, &Tensor::bshd(&k[..], 1, len, HKV, D), &Tensor::bshd(&v[..], 1, len, HKV, D), rope)
            .unwrap();
    }
    cache
}

/// The reference for row `b`'s `t` newest queries over the row's cached keys.
fn reference_row(cache: &KvCache, q: &[f32], b: usize, t: usize, opts: &AttentionOptions<'_>) -> reference::Reference {
    let qb = Tensor::bshd(&q[b * t * HQ * D..(b + 1) * t * HQ * D], 1, t, HQ, D);
    let o = opts.causal().alignment(Alignment::BottomRight);
    reference::attention(&qb, &cache.keys(b), &cache.values(b), &o).unwrap()
}

fn assert_untouched(buf: &[f32], label: &str) {
    assert!(buf.iter().all(|x| x.is_nan()), "{label}: an Err must leave every canary in place");
}

fn assert_matches(got: &[f32], want: &[f64], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}");
    let tol = tolerance(DType::F32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g as f64, w, tol), "{label}: element {i}: {g} vs reference {w}");
    }
}

/// Finding 3: a bias, a gate or a RoPE table that is fine for row 0 but not for row 1 is an Err
/// before row 0 is written; main returned the Err after writing row 0.
#[test]
fn finding3_attend_checks_every_row_before_writing() {
    let t = 1;
    let q = values(2 * t * HQ * D, 1);
    // Row 0 holds 3 keys, row 1 holds 5: a bias with batch stride 12 covers row 0's
    // [HQ, 1, 3] (12 elements) but not row 1's [HQ, 1, 5] from offset 12.
    let cache = cache_with([3, 5], CachePolicy::Full, None);
    let bias = values(24, 2);
    let short_bias = AttentionOptions::new().bias(Bias::new(&bias[..], [12, 3, 3, 1]));
    let mut o = vec![f32::NAN; 2 * t * HQ * D];
    let mut lse = vec![f32::NAN; 2 * HQ * t];
    let err = cache.attend(
        &Tensor::bshd(&q[..], 2, t, HQ, D),
        TensorMut::bshd(&mut o[..], 2, t, HQ, D),
        Some(&mut lse),
        &short_bias,
    );
    assert!(matches!(err, Err(Error::BufferTooSmall { operand: Operand::Bias, .. })), "{err:?}");
    assert_untouched(&o, "bias too small for row 1");
    assert_untouched(&lse, "bias too small for row 1 (lse)");

    // A RoPE table covering row 0's query position (2) but not row 1's (4).
    let table = RopeTable::new(&RopeConfig::new(D, 10_000.0), 4).unwrap();
    let roped = cache_with([3, 4], CachePolicy::Full, Some(&table));
    let mut grown = cache_with([3, 4], CachePolicy::Full, Some(&table));
    let (k, v) = (values(HKV * D, 30), values(HKV * D, 31));
    assert!(grown
        .append_row(1, &Tensor::bshd(&k[..], 1, 1, HKV, D), &Tensor::bshd(&v[..], 1, 1, HKV, D), None)
        .is_ok());
    let err = grown.attend_with_rope(
        &Tensor::bshd(&q[..], 2, t, HQ, D),
        TensorMut::bshd(&mut o[..], 2, t, HQ, D),
        Some(&mut lse),
        &AttentionOptions::new(),
        Some(&table),
    );
    assert!(matches!(err, Err(Error::InvalidOption { option: "positions", .. })), "{err:?}");
    assert_untouched(&o, "RoPE table short for row 1");
    assert_untouched(&lse, "RoPE table short for row 1 (lse)");

    // Gate logits for one row where the cache has two.
    let logits = values(t * HQ * D, 3);
    let gate = AttentionOptions::new().output_gate(Gate::sigmoid(Tensor::bshd(&logits[..], 1, t, HQ, D)));
    let err = cache.attend(&Tensor::bshd(&q[..], 2, t, HQ, D), TensorMut::bshd(&mut o[..], 2, t, HQ, D), None, &gate);
    assert!(matches!(err, Err(Error::ShapeMismatch { operand: Operand::Gate, dim: "batch", .. })), "{err:?}");
    assert_untouched(&o, "gate for one row");

    // The valid neighbours: a bias long enough for both rows, and the table covering both.
    let bias = values(12 + HQ * 5, 4);
    let opts = AttentionOptions::new().bias(Bias::new(&bias[..], [12, 5, 5, 1]));
    cache
        .attend(&Tensor::bshd(&q[..], 2, t, HQ, D), TensorMut::bshd(&mut o[..], 2, t, HQ, D), Some(&mut lse), &opts)
        .unwrap();
    for b in 0..2 {
        let row_bias = AttentionOptions::new().bias(Bias::new(&bias[b * 12..], [12, 5, 5, 1]));
        let r = reference_row(&cache, &q, b, t, &row_bias);
        assert_matches(&o[b * t * HQ * D..(b + 1) * t * HQ * D], &r.out, &format!("bias row {b}"));
        assert_matches(&lse[b * HQ * t..(b + 1) * HQ * t], &r.lse, &format!("bias row {b} lse"));
    }
    let mut o = vec![f32::NAN; 2 * t * HQ * D];
    roped
        .attend_with_rope(
            &Tensor::bshd(&q[..], 2, t, HQ, D),
            TensorMut::bshd(&mut o[..], 2, t, HQ, D),
            None,
            &AttentionOptions::new(),
            Some(&table),
        )
        .unwrap();
    for b in 0..2 {
        let first = roped.next_position(b) - t;
        let r = reference_row(&roped, &q, b, t, &AttentionOptions::new().rope_q(&table, Positions::Offset(first)));
        assert_matches(&o[b * t * HQ * D..(b + 1) * t * HQ * D], &r.out, &format!("rope row {b}"));
    }
}

/// Finding 4: the output view is checked as attention() checks its own: a batch stride of 0
/// (rows aliasing) and a one-row view for a two-row cache were accepted on main, the latter
/// writing row 1 outside the view.
#[test]
fn finding4_attend_checks_the_output_view() {
    let t = 2;
    let q = values(2 * t * HQ * D, 5);
    let cache = cache_with([3, 5], CachePolicy::Full, None);
    let qt = Tensor::bshd(&q[..], 2, t, HQ, D);
    let opts = AttentionOptions::new();
    let n = t * HQ * D;
    let mut o = vec![f32::NAN; 2 * n];
    let aliased = Layout { shape: [2, t, HQ, D], strides: [0, HQ * D, D] };
    let err = cache.attend(&qt, TensorMut::new(&mut o[..], aliased), None, &opts);
    assert_eq!(err, Err(Error::AliasedOutput { operand: Operand::Output }));
    assert_untouched(&o, "batch stride 0");
    let err = cache.attend(&qt, TensorMut::new(&mut o[..], Layout::bshd(1, t, HQ, D)), None, &opts);
    assert_eq!(err, Err(Error::ShapeMismatch { operand: Operand::Output, dim: "batch", expected: 2, found: 1 }));
    assert_untouched(&o, "one-row view");
    for (shape, dim) in [([2, t + 1, HQ, D], "q_len"), ([2, t, HQ / 2, D], "heads"), ([2, t, HQ, D / 2], "head_dim")] {
        let l = Layout::bshd(shape[0], shape[1], shape[2], shape[3]);
        let err = cache.attend(&qt, TensorMut::new(&mut o[..], l), None, &opts);
        assert!(
            matches!(err, Err(Error::ShapeMismatch { operand: Operand::Output, dim: d, .. }) if d == dim),
            "{err:?}"
        );
        assert_untouched(&o, dim);
    }
    let err = cache.attend(&qt, TensorMut::bshd(&mut o[..2 * n - 1], 2, t, HQ, D), None, &opts);
    assert!(matches!(err, Err(Error::BufferTooSmall { operand: Operand::Output, .. })), "{err:?}");
    assert_untouched(&o, "buffer one short");
    // The valid neighbour: a strided [batch, heads, seq, dim] output.
    cache.attend(&qt, TensorMut::bhsd(&mut o[..], 2, HQ, t, D), None, &opts).unwrap();
    for b in 0..2 {
        let r = reference_row(&cache, &q, b, t, &opts);
        let got: Vec<f32> = (0..t)
            .flat_map(|i| (0..HQ).map(move |h| (i, h)))
            .flat_map(|(i, h)| o[b * n + (h * t + i) * D..b * n + (h * t + i + 1) * D].to_vec())
            .collect();
        assert_matches(&got, &r.out, &format!("bhsd row {b}"));
    }
}

/// Finding 5: a cache whose size overflows is an Err (main panicked with "capacity overflow"),
/// one the allocator refuses is an Err (not an abort), and `storage_bytes` saturates (main
/// wrapped to 0).
#[test]
fn finding5_huge_caches_are_errors() {
    let cfg = KvCacheConfig::new(1, 1, 1, 1 << 62, DType::F32);
    assert_eq!(cfg.storage_bytes(), usize::MAX);
    assert!(matches!(KvCache::new(cfg), Err(Error::ShapeOverflow { operand: Operand::Cache })));
    let cfg = KvCacheConfig::new(1 << 20, 1 << 20, 1 << 20, 1 << 20, DType::BF16);
    assert_eq!(cfg.storage_bytes(), usize::MAX);
    assert!(matches!(KvCache::new(cfg), Err(Error::ShapeOverflow { operand: Operand::Cache })));
    // 2^55 bytes fits isize but no address space: the allocator refuses it.
    let cfg = KvCacheConfig::new(1, 1, 1, 1 << 52, DType::F32);
    assert_eq!(cfg.storage_bytes(), 1 << 55);
    assert!(KvCache::new(cfg).is_err());
    // The valid neighbour allocates exactly its formula, zeroed.
    let cfg = KvCacheConfig::new(2, 3, 4, 5, DType::F16).v_head_dim(6);
    let cache = KvCache::new(cfg).unwrap();
    assert_eq!(cache.allocated_bytes(), cfg.storage_bytes());
    assert_eq!(cfg.storage_bytes(), 2 * 3 * 5 * (4 + 6) * 2);
}

/// Finding 6 (RoPE positions): `batch · seq` of explicit ids is checked; on main it wrapped, so
/// two ids passed for 2^63 + 1 rows.
#[test]
fn finding6_position_count_overflow_is_an_error() {
    let ids = [5usize, 7];
    assert_eq!(
        Positions::Explicit(&ids).check((1 << 63) | 1, 2),
        Err(Error::ShapeOverflow { operand: Operand::Positions })
    );
    assert_eq!(
        Positions::Explicit(&ids).check(usize::MAX, usize::MAX),
        Err(Error::ShapeOverflow { operand: Operand::Positions })
    );
    assert!(matches!(Positions::Offset(usize::MAX).check(1, 2), Err(Error::InvalidOption { option: "positions", .. })));
    // The valid neighbours.
    assert_eq!(Positions::Explicit(&ids).check(1, 2), Ok(8));
    assert_eq!(Positions::Explicit(&ids).range(2, 1), Ok(Some((5, 8))));
    assert_eq!(Positions::PerBatch(&[3, 9]).check(2, 4), Ok(13));
}

/// Finding 8: the measurements and the layer's reference validate their arguments; main panicked
/// (index out of bounds, division by zero). Softcap with a subnormal cap scores as the kernel
/// does, without NaN.
#[test]
fn finding8_measure_and_reference_forward_validate() {
    assert!(matches!(sink_share_per_head(&[], 1, 1, 1, 0), Err(Error::ShapeMismatch { operand: Operand::Lse, .. })));
    assert!(matches!(sink_share_per_head(&[0.5; 4], 1, 1, 4, 4), Err(Error::InvalidOption { .. })));
    assert!(matches!(sink_share_per_head(&[], 0, 3, 2, 0), Err(Error::InvalidOption { .. })));
    assert!(matches!(
        sink_share_per_head(&[], usize::MAX, 2, 2, 0),
        Err(Error::ShapeOverflow { operand: Operand::Lse })
    ));
    assert_eq!(sink_share_per_head(&[1.0, 0.5, 0.25, 0.0, 0.0, 0.5], 1, 2, 3, 1), Ok(vec![0.375, 0.25]));

    let layer = GatedAttention::seeded(GatedAttentionConfig::new(16, 2, 2, 8), 1).unwrap();
    let x = values(3 * 16, 6);
    assert!(matches!(layer.reference_forward(&x, 0), Err(Error::InvalidConfig { .. })));
    assert!(matches!(layer.reference_forward(&x[..47], 1), Err(Error::InvalidConfig { .. })));
    assert!(matches!(
        layer.reference_forward_chunked(&x, 1, &[1, 1]),
        Err(Error::InvalidConfig { field: "chunks", .. })
    ));
    assert!(layer.reference_forward_chunked(&x, 1, &[usize::MAX, 4]).is_err());
    let want = layer.reference_forward(&x, 1).unwrap();
    let mut cache = layer.new_cache(1, 4, DType::F32).unwrap();
    let got = layer.forward(&x, 1, &mut cache, None).unwrap();
    assert_matches(&got, &want, "layer vs its reference");

    // first_token_probabilities scores as the kernels do, c·tanh(s·min(1/c, f32::MAX)): a
    // subnormal cap gives scores ±c ≈ 0, so every visible key gets 1/visible, never NaN. The LSE
    // comes from the f64 reference, so only the measurement is under test here.
    let (lq, lk) = (3usize, 5usize);
    let (q, k, v) = (values(lq * HQ * D, 9), values(lk * HKV * D, 7), values(lk * HKV * D, 8));
    let (qt, kt, vt) =
        (Tensor::bshd(&q[..], 1, lq, HQ, D), Tensor::bshd(&k[..], 1, lk, HKV, D), Tensor::bshd(&v[..], 1, lk, HKV, D));
    let opts = AttentionOptions::new().causal().softcap(1e-40);
    let lse: Vec<f32> = reference::attention(&qt, &kt, &vt, &opts).unwrap().lse.iter().map(|&x| x as f32).collect();
    let p = first_token_probabilities(&qt, &kt, &lse, &opts).unwrap();
    for h in 0..HQ {
        for i in 0..lq {
            let want = 1.0 / (lk - lq + i + 1) as f64;
            let got = p[h * lq + i];
            assert!((got - want).abs() <= 1e-5, "head {h} row {i}: p(first key) {got}, want {want}");
        }
    }
    assert!(matches!(first_token_probabilities(&qt, &kt, &lse[1..], &opts), Err(Error::ShapeMismatch { .. })));
}

/// Finding 9: the per-row accessors keep their slice-like panics, and each has a twin returning
/// `None`; every computing method returns an Err for a row outside the batch.
#[test]
fn finding9_rows_outside_the_batch() {
    let mut cache = cache_with([3, 5], CachePolicy::Full, None);
    assert_eq!((cache.get_len(1), cache.get_len(2)), (Some(5), None));
    assert_eq!((cache.get_next_position(0), cache.get_next_position(usize::MAX)), (Some(3), None));
    assert_eq!(cache.get_positions(1).map(|p| p.collect::<Vec<_>>()), Some(vec![0, 1, 2, 3, 4]));
    assert!(cache.get_positions(2).is_none() && cache.get_keys(2).is_none() && cache.get_values(2).is_none());
    assert_eq!(cache.get_keys(1).unwrap().layout, cache.keys(1).layout);
    assert_eq!(cache.get_values(0).unwrap().layout, cache.values(0).layout);
    assert!(std::panic::catch_unwind(|| cache.len(2)).is_err(), "len(b >= batch) panics like indexing");
    let (k, v) = (values(HKV * D, 1), values(HKV * D, 2));
    let before = cache.clone().get_len(0);
    for b in [2usize, usize::MAX] {
        let row_err = |r: Result<(), Error>| matches!(r, Err(Error::ShapeMismatch { operand: Operand::Cache, .. }));
        assert!(row_err(cache.append_row(
            b,
            &Tensor::bshd(&k[..], 1, 1, HKV, D),
            &Tensor::bshd(&v[..], 1, 1, HKV, D),
            None
        )));
        assert!(row_err(cache.rollback(b, 0)));
        assert!(row_err(cache.rollback(b, 1)));
        assert!(row_err(cache.truncate(b, 0)));
        assert!(row_err(cache.truncate(b, 1)));
    }
    assert_eq!((cache.get_len(0), cache.get_len(1)), (before, Some(5)));
    cache.truncate(1, 2).unwrap();
    assert_eq!(cache.get_len(1), Some(2));
}

/// Finding 11: the largest config.json main accepted asks for ~2^43 weights; validation now
/// bounds the layer at MAX_LAYER_PARAMETERS, so `from_json`, `seeded` and `load_weights` return
/// an Err instead of aborting in the allocator.
#[test]
fn finding11_huge_layers_are_errors() {
    let huge =
        r#"{"hidden_size": 1048576, "num_attention_heads": 8192, "num_key_value_heads": 8192, "head_dim": 1024}"#;
    assert!(matches!(GatedAttentionConfig::from_json(huge), Err(Error::InvalidConfig { field: "hidden_size", .. })));
    let mut cfg = GatedAttentionConfig::new(1 << 20, 8192, 8192, 1024);
    cfg.max_position_embeddings = 16;
    assert!(cfg.parameter_count().unwrap() > MAX_LAYER_PARAMETERS);
    assert!(matches!(cfg.validate(), Err(Error::InvalidConfig { field: "hidden_size", .. })));
    assert!(matches!(GatedAttention::seeded(cfg.clone(), 1), Err(Error::InvalidConfig { .. })));
    assert!(matches!(gated_attention::layer::load_weights(cfg, b"", ""), Err(Error::InvalidConfig { .. })));
    // The valid neighbour: the parameter count is the weights seeded actually holds.
    let cfg = GatedAttentionConfig::new(32, 4, 2, 8);
    let layer = GatedAttention::seeded(cfg.clone(), 1).unwrap();
    let w = layer.weights();
    let held = [&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj]
        .iter()
        .map(|l| l.weight.len() + l.bias.as_ref().map_or(0, Vec::len))
        .sum::<usize>()
        + w.q_norm.as_ref().map_or(0, Vec::len)
        + w.k_norm.as_ref().map_or(0, Vec::len);
    assert_eq!(cfg.parameter_count(), Some(held));
}

/// StreamingLLM rotates its gathered keys at cache indices 0..n: a query table that covers the
/// queries' positions but starts later (`RopeTable::with_range`) is an Err with nothing written,
/// not a panic in the gather (found by the CUDA backend's device-cache tests).
#[test]
fn streaming_keys_need_a_table_from_position_zero() {
    let policy = CachePolicy::StreamingLlm { sink_tokens: 2, recent: 6 };
    let cache = cache_with([5, 7], policy, None);
    let config = RopeConfig::new(D, 10_000.0);
    let (t, q) = (1, values(2 * HQ * D, 3));
    let late = RopeTable::with_range(&config, 64, 4..64).unwrap();
    let mut out = vec![f32::NAN; 2 * t * HQ * D];
    let qt = Tensor::bshd(&q[..], 2, t, HQ, D);
    let r = cache.attend_with_rope(
        &qt,
        TensorMut::bshd(&mut out[..], 2, t, HQ, D),
        None,
        &AttentionOptions::new(),
        Some(&late),
    );
    assert!(matches!(r, Err(Error::InvalidOption { option: "positions", .. })), "{r:?}");
    assert_untouched(&out, "late table");
    // The same call with a table from position 0 is fine.
    let full = RopeTable::with_range(&config, 64, 0..64).unwrap();
    let qt = Tensor::bshd(&q[..], 2, t, HQ, D);
    cache
        .attend_with_rope(&qt, TensorMut::bshd(&mut out[..], 2, t, HQ, D), None, &AttentionOptions::new(), Some(&full))
        .unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
}
