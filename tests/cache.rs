//! KV cache: prefill then token-by-token decode equals one-shot attention over the whole sequence
//! for every policy, dtype and GQA ratio; eviction keeps exactly what the policy promises.

mod common;
use common::*;
use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
use gated_attention::reference;
use gated_attention::rope::{Positions, RopeConfig, RopeTable};
use gated_attention::{AttentionOptions, DType, Error, Tensor, TensorMut};

const D: usize = 32;
const HQ: usize = 8;

struct Seq {
    q: Vec<f32>, // [L, HQ, D], pre-RoPE
    k: Vec<f32>, // [L, hkv, D], pre-RoPE
    v: Vec<f32>,
}

fn seq(len: usize, hkv: usize, seed: u64) -> Seq {
    let mut rng = Rng::new(seed);
    let mut g = |n: usize| (0..n).map(|_| rng.uniform() * 2.0).collect::<Vec<f32>>();
    Seq { q: g(len * HQ * D), k: g(len * hkv * D), v: g(len * hkv * D) }
}

fn round(x: &[f32], dtype: DType) -> Vec<f32> {
    let b = Buf::from_f32(x, dtype);
    (0..x.len()).map(|i| b.get(i)).collect()
}

/// Output rows `[a, b)` of the reference over keys `[0, b)` (keys rotated at absolute positions,
/// then rounded to the cache dtype, as the cache stores them).
fn reference_rows(
    s: &Seq,
    hkv: usize,
    table: &RopeTable,
    dtype: DType,
    a: usize,
    b: usize,
    opts: &AttentionOptions<'_>,
) -> Vec<f64> {
    let mut k = s.k[..b * hkv * D].to_vec();
    table.rotate(TensorMut::bshd(&mut k[..], 1, b, hkv, D), Positions::Offset(0)).unwrap();
    let k = round(&k, dtype);
    let v = round(&s.v[..b * hkv * D], dtype);
    let q = &s.q[a * HQ * D..b * HQ * D];
    let o = opts.rope_q(table, Positions::Offset(a));
    reference::attention(
        &Tensor::bshd(q, 1, b - a, HQ, D),
        &Tensor::bshd(&k[..], 1, b, hkv, D),
        &Tensor::bshd(&v[..], 1, b, hkv, D),
        &o,
    )
    .unwrap()
    .out
}

/// StreamingLLM's expected output for the last query of a cache holding positions `kept`: keys
/// rounded to the dtype, then rotated by their index among the kept tokens.
fn streaming_expected(s: &Seq, hkv: usize, table: &RopeTable, dtype: DType, kept: &[usize], q_pos: usize) -> Vec<f64> {
    let n = kept.len();
    let mut k = Vec::new();
    let mut v = Vec::new();
    for &p in kept {
        k.extend(round(&s.k[p * hkv * D..(p + 1) * hkv * D], dtype));
        v.extend(round(&s.v[p * hkv * D..(p + 1) * hkv * D], dtype));
    }
    table.rotate(TensorMut::bshd(&mut k[..], 1, n, hkv, D), Positions::Offset(0)).unwrap();
    let q = &s.q[q_pos * HQ * D..(q_pos + 1) * HQ * D];
    let o = AttentionOptions::new().causal().rope_q(table, Positions::Offset(n - 1));
    reference::attention(
        &Tensor::bshd(q, 1, 1, HQ, D),
        &Tensor::bshd(&k[..], 1, n, hkv, D),
        &Tensor::bshd(&v[..], 1, n, hkv, D),
        &o,
    )
    .unwrap()
    .out
}

fn assert_close(got: &[f32], want: &[f64], label: &str) {
    let (atol, rtol) = tolerance(DType::F32);
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= atol + rtol * w.abs(), "{label}: element {i}: {g} vs {w}");
    }
}

fn decode_matches_one_shot(policy: CachePolicy, capacity: usize, prompt: usize, total: usize) {
    let table = RopeTable::new(&RopeConfig::new(D, 10_000.0), total).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for hkv in [8usize, 4, 2, 1] {
            let s = seq(total, hkv, (hkv * 31 + capacity) as u64);
            let mut cache = KvCache::new(KvCacheConfig::new(1, hkv, D, capacity, dtype).policy(policy)).unwrap();
            let label = format!("{policy:?} {dtype:?} hkv={hkv}");
            let mut a = 0;
            while a < total {
                let b = if a == 0 { prompt } else { a + 1 };
                let t = b - a;
                cache
                    .append(
                        &Tensor::bshd(&s.k[a * hkv * D..b * hkv * D], 1, t, hkv, D),
                        &Tensor::bshd(&s.v[a * hkv * D..b * hkv * D], 1, t, hkv, D),
                        Some(&table),
                    )
                    .unwrap();
                let mut o = vec![f32::NAN; t * HQ * D];
                cache
                    .attend_with_rope(
                        &Tensor::bshd(&s.q[a * HQ * D..b * HQ * D], 1, t, HQ, D),
                        TensorMut::bshd(&mut o[..], 1, t, HQ, D),
                        None,
                        &AttentionOptions::new(),
                        Some(&table),
                    )
                    .unwrap();
                let want = match policy {
                    CachePolicy::Full => {
                        reference_rows(&s, hkv, &table, dtype, a, b, &AttentionOptions::new().causal())
                    }
                    CachePolicy::SlidingWindow { window, sink_tokens } => reference_rows(
                        &s,
                        hkv,
                        &table,
                        dtype,
                        a,
                        b,
                        &AttentionOptions::new().causal().window(window).sink_tokens(sink_tokens),
                    ),
                    CachePolicy::StreamingLlm { sink_tokens, recent } => {
                        assert_eq!(t, 1, "streaming test decodes one token at a time after the prompt");
                        let p = a;
                        let mut kept: Vec<usize> = (0..sink_tokens.min(p + 1)).collect();
                        kept.extend((p + 1).saturating_sub(recent).max(kept.len())..=p);
                        streaming_expected(&s, hkv, &table, dtype, &kept, p)
                    }
                };
                assert_close(&o, &want, &format!("{label} rows {a}..{b}"));
                assert!(cache.len(0) <= capacity);
                a = b;
            }
        }
    }
}

#[test]
fn full_cache_decode_equals_one_shot() {
    decode_matches_one_shot(CachePolicy::Full, 80, 30, 70);
}

#[test]
fn sliding_window_decode_equals_one_shot() {
    decode_matches_one_shot(CachePolicy::SlidingWindow { window: 16, sink_tokens: 0 }, 24, 20, 90);
    decode_matches_one_shot(CachePolicy::SlidingWindow { window: 16, sink_tokens: 4 }, 30, 20, 90);
    decode_matches_one_shot(CachePolicy::SlidingWindow { window: 1, sink_tokens: 2 }, 30, 20, 60);
}

#[test]
fn streaming_llm_decode_equals_reindexed_attention() {
    decode_matches_one_shot(CachePolicy::StreamingLlm { sink_tokens: 4, recent: 12 }, 40, 1, 70);
    decode_matches_one_shot(CachePolicy::StreamingLlm { sink_tokens: 4, recent: 12 }, 20, 1, 70);
}

/// After every append the cache holds every position its policy promises, in order, with the
/// values that were appended.
#[test]
fn eviction_keeps_exactly_what_the_policy_promises() {
    let (hkv, total) = (2usize, 200usize);
    let s = seq(total, hkv, 7);
    for (policy, capacity, rollback) in [
        (CachePolicy::SlidingWindow { window: 10, sink_tokens: 3 }, 17, 0),
        (CachePolicy::SlidingWindow { window: 10, sink_tokens: 0 }, 13, 2),
        (CachePolicy::StreamingLlm { sink_tokens: 4, recent: 8 }, 14, 0),
    ] {
        let cfg = KvCacheConfig::new(1, hkv, D, capacity, DType::F32).policy(policy).max_rollback(rollback);
        let mut cache = KvCache::new(cfg).unwrap();
        let (sinks, need) = match policy {
            CachePolicy::SlidingWindow { window, sink_tokens } => (sink_tokens, window - 1 + rollback),
            CachePolicy::StreamingLlm { sink_tokens, recent } => (sink_tokens, recent + rollback),
            CachePolicy::Full => unreachable!(),
        };
        let mut p = 0;
        let mut step = 1;
        while p + step <= total {
            cache
                .append(
                    &Tensor::bshd(&s.k[p * hkv * D..(p + step) * hkv * D], 1, step, hkv, D),
                    &Tensor::bshd(&s.v[p * hkv * D..(p + step) * hkv * D], 1, step, hkv, D),
                    None,
                )
                .unwrap();
            p += step;
            step = step % 2 + 1; // alternate 1- and 2-token appends
            let held: Vec<usize> = cache.positions(0).collect();
            assert!(held.windows(2).all(|w| w[0] < w[1]), "{policy:?}: positions out of order: {held:?}");
            for must in (0..sinks.min(p)).chain(p.saturating_sub(need)..p) {
                assert!(held.contains(&must), "{policy:?}: lost position {must} at length {p}: {held:?}");
            }
            let keys = cache.keys(0);
            for (slot, &pos) in held.iter().enumerate() {
                for h in 0..hkv {
                    let off = keys.layout.strides[1] * slot + keys.layout.strides[2] * h;
                    assert_eq!(
                        keys.data.get_f32(off),
                        s.k[(pos * hkv + h) * D],
                        "{policy:?}: slot {slot} holds the wrong key"
                    );
                }
            }
        }
    }
}

#[test]
fn full_cache_rejects_overflow_without_writing() {
    let mut cache = KvCache::new(KvCacheConfig::new(1, 1, 4, 5, DType::F32)).unwrap();
    let x = [1.0f32; 4 * 4];
    cache.append(&Tensor::bshd(&x[..], 1, 4, 1, 4), &Tensor::bshd(&x[..], 1, 4, 1, 4), None).unwrap();
    let y = [2.0f32; 2 * 4];
    let r = cache.append(&Tensor::bshd(&y[..], 1, 2, 1, 4), &Tensor::bshd(&y[..], 1, 2, 1, 4), None);
    assert_eq!(r, Err(Error::CacheFull { batch_row: 0, needed: 6, capacity: 5 }));
    assert_eq!(cache.len(0), 4);
    assert!(cache.positions(0).eq(0..4));
    let k = cache.keys(0);
    assert!((0..16).all(|i| k.data.get_f32((i / 4) * 4 + i % 4) == 1.0));
}

#[test]
fn rollback_and_truncate() {
    let mut cache = KvCache::new(KvCacheConfig::new(1, 1, 4, 16, DType::F16)).unwrap();
    let x: Vec<f32> = (0..10 * 4).map(|i| i as f32).collect();
    cache.append(&Tensor::bshd(&x[..], 1, 10, 1, 4), &Tensor::bshd(&x[..], 1, 10, 1, 4), None).unwrap();
    cache.rollback(0, 3).unwrap();
    assert_eq!(cache.len(0), 7);
    assert_eq!(cache.next_position(0), 7);
    cache.truncate(0, 2).unwrap();
    assert!(cache.positions(0).eq(0..2));
    assert_eq!(cache.rollback(0, 3), Err(Error::RollbackTooFar { batch_row: 0, requested: 3, available: 2 }));
    // A sliding cache can roll back what max_rollback retains, not more.
    let cfg = KvCacheConfig::new(1, 1, 4, 12, DType::F32)
        .policy(CachePolicy::SlidingWindow { window: 4, sink_tokens: 0 })
        .max_rollback(2);
    let mut cache = KvCache::new(cfg).unwrap();
    let x: Vec<f32> = (0..40 * 4).map(|i| i as f32).collect();
    for p in 0..40 {
        cache
            .append(
                &Tensor::bshd(&x[p * 4..(p + 1) * 4], 1, 1, 1, 4),
                &Tensor::bshd(&x[p * 4..(p + 1) * 4], 1, 1, 1, 4),
                None,
            )
            .unwrap();
    }
    assert!(cache.rollback(0, 2).is_ok());
    let held: Vec<usize> = cache.positions(0).collect();
    assert!(held.contains(&35) && held.contains(&37) && !held.contains(&38), "{held:?}");
    assert!(matches!(cache.rollback(0, 40), Err(Error::RollbackTooFar { .. })));
}

#[test]
fn per_row_lengths_and_memory_formula() {
    let cfg = KvCacheConfig::new(2, 2, 8, 32, DType::BF16).v_head_dim(4);
    assert_eq!(cfg.storage_bytes(), 2 * 2 * 32 * (8 + 4) * 2);
    let mut cache = KvCache::new(cfg).unwrap();
    assert_eq!(cache.allocated_bytes(), cfg.storage_bytes());
    let k = vec![0.5f32; 5 * 2 * 8];
    let v = [0.25f32; 5 * 2 * 4];
    cache.append_row(1, &Tensor::bshd(&k[..], 1, 5, 2, 8), &Tensor::bshd(&v[..], 1, 5, 2, 4), None).unwrap();
    cache.append_row(0, &Tensor::bshd(&k[..16 * 2], 1, 2, 2, 8), &Tensor::bshd(&v[..8 * 2], 1, 2, 2, 4), None).unwrap();
    assert_eq!((cache.len(0), cache.len(1)), (2, 5));
    let q = vec![0.1f32; 2 * 4 * 8];
    let mut o = [0.0f32; 2 * 4 * 4];
    cache
        .attend(
            &Tensor::bshd(&q[..], 2, 1, 4, 8),
            TensorMut::bshd(&mut o[..], 2, 1, 4, 4),
            None,
            &AttentionOptions::new(),
        )
        .unwrap();
    assert!(o.iter().all(|&x| (x - 0.25).abs() < 1e-6));
    assert!(matches!(
        cache.append_row(2, &Tensor::bshd(&k[..], 1, 5, 2, 8), &Tensor::bshd(&v[..], 1, 5, 2, 4), None),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn value_gate_on_append_stores_gated_values() {
    use gated_attention::gate::{apply_gate, Gate};
    let (t, hkv, d) = (3usize, 2usize, 4usize);
    let mut rng = Rng::new(21);
    let k: Vec<f32> = (0..t * hkv * d).map(|_| rng.uniform()).collect();
    let v: Vec<f32> = (0..t * hkv * d).map(|_| rng.uniform()).collect();
    let logits: Vec<f32> = (0..t * hkv).map(|_| rng.uniform() * 4.0).collect(); // headwise
    let gate = Gate::sigmoid(Tensor::bshd(&logits[..], 1, t, hkv, 1));
    let mut cache = KvCache::new(KvCacheConfig::new(1, hkv, d, 8, DType::F32)).unwrap();
    cache.append_gated(&Tensor::bshd(&k[..], 1, t, hkv, d), &Tensor::bshd(&v[..], 1, t, hkv, d), None, &gate).unwrap();
    let mut want = v.clone();
    apply_gate(TensorMut::bshd(&mut want[..], 1, t, hkv, d), &gate).unwrap();
    let vals = cache.values(0);
    for s in 0..t {
        for h in 0..hkv {
            for e in 0..d {
                let got = vals.data.get_f32(s * vals.layout.strides[1] + h * vals.layout.strides[2] + e);
                assert_eq!(got, want[(s * hkv + h) * d + e]);
            }
        }
    }
    let bad = [0.0f32; 5];
    let r = cache.append_gated(
        &Tensor::bshd(&k[..], 1, t, hkv, d),
        &Tensor::bshd(&v[..], 1, t, hkv, d),
        None,
        &Gate::sigmoid(Tensor::bshd(&bad[..], 1, 5, 1, 1)),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    assert_eq!(cache.len(0), t);
}
