//! `Int8KvCache`: token-by-token decode against the f64 reference on the cache's own dequantised
//! rows (every policy, compaction and rollback included), StreamingLLM bit for bit against a float
//! cache holding the same dequantised rows, the memory formula, and errors that write nothing.

mod common;
use common::*;
use gated_attention::cache::{CachePolicy, Int8KvCache, KvCache, KvCacheConfig};
use gated_attention::int8::quantize_row;
use gated_attention::reference;
use gated_attention::rope::{Positions, RopeConfig, RopeTable};
use gated_attention::{AttentionOptions, DType, Error, Layout, Tensor, TensorMut};

const D: usize = 32;
const HQ: usize = 8;
const HKV: usize = 2;

fn gen(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * 2.0).collect()
}

fn dequantised(t: &gated_attention::Int8Tensor<'_>) -> Vec<f32> {
    let [b, s, h, d] = t.layout.shape;
    let mut out = vec![0.0f32; b * s * h * d];
    t.dequantize_into(&mut out).unwrap();
    out
}

/// Attends the newest `t` queries (rotated at their absolute positions) over batch row 0 and
/// checks the result against the reference over the cache's dequantised rows, with the cache's
/// mask (causal, bottom-right, and the window policy's window and sinks).
fn check_step(cache: &Int8KvCache, q: &[f32], t: usize, table: &RopeTable, label: &str) {
    let len = cache.len(0);
    let first = cache.next_position(0) - t;
    let mut out = vec![f32::NAN; t * HQ * D];
    let mut lse = vec![f32::NAN; HQ * t];
    let qt = Tensor::bshd(q, 1, t, HQ, D);
    cache
        .attend_with_rope(
            &qt,
            TensorMut::bshd(&mut out[..], 1, t, HQ, D),
            Some(&mut lse),
            &AttentionOptions::new(),
            Some(table),
        )
        .unwrap();
    let (k, v) = (dequantised(&cache.keys(0)), dequantised(&cache.values(0)));
    let mut opts = AttentionOptions::new().causal().rope_q(table, Positions::Offset(first));
    if let CachePolicy::SlidingWindow { window, sink_tokens } = cache.config().policy {
        opts = opts.window(window).sink_tokens(sink_tokens);
    }
    let c = Case::new(1, t, len, HQ, HKV, D);
    let inp = Inputs {
        q: Buf::F32(q.to_vec()),
        k: Buf::F32(k),
        v: Buf::F32(v),
        ql: Layout::bshd(1, t, HQ, D),
        kl: Layout::bshd(1, len, HKV, D),
        vl: Layout::bshd(1, len, HKV, D),
        ol: Layout::bshd(1, t, HQ, D),
    };
    let r = reference::attention_with_stats(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(inp.k.elems(), inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        &opts,
    )
    .unwrap();
    check_against(&r, &inp, &c, &Buf::F32(out), &lse, label);
}

/// Prefill, then decode token by token (past the capacity for the window policy, so rows are
/// compacted), with a rollback of three tokens half-way; every step against the reference.
#[test]
fn int8_cache_decode_matches_the_reference_on_its_rows() {
    let table = RopeTable::new(&RopeConfig::new(D, 10_000.0), 256).unwrap();
    for (policy, capacity) in [(CachePolicy::Full, 64), (CachePolicy::SlidingWindow { window: 12, sink_tokens: 2 }, 20)]
    {
        let mut rng = Rng::new(3);
        let mut cache =
            Int8KvCache::new(KvCacheConfig::new(1, HKV, D, capacity, DType::F32).policy(policy).max_rollback(3))
                .unwrap();
        let prompt = 9;
        let (k, v, q) =
            (gen(&mut rng, prompt * HKV * D), gen(&mut rng, prompt * HKV * D), gen(&mut rng, prompt * HQ * D));
        cache
            .append(&Tensor::bshd(&k[..], 1, prompt, HKV, D), &Tensor::bshd(&v[..], 1, prompt, HKV, D), Some(&table))
            .unwrap();
        check_step(&cache, &q, prompt, &table, &format!("{policy:?} prefill"));
        for step in 0..40 {
            if step == 20 {
                cache.rollback(0, 3).unwrap();
            }
            let (k, v, q) = (gen(&mut rng, HKV * D), gen(&mut rng, HKV * D), gen(&mut rng, HQ * D));
            cache
                .append(&Tensor::bshd(&k[..], 1, 1, HKV, D), &Tensor::bshd(&v[..], 1, 1, HKV, D), Some(&table))
                .unwrap();
            check_step(&cache, &q, 1, &table, &format!("{policy:?} step {step}"));
        }
        assert!(cache.len(0) < cache.next_position(0) || matches!(policy, CachePolicy::Full));
    }
}

/// The cache quantises each row as `quantize_row` does, after RoPE: its keys are the rotated rows
/// quantised, its values the rows quantised.
#[test]
fn rows_are_quantised_after_rope_as_quantize_row_does() {
    let table = RopeTable::new(&RopeConfig::new(D, 10_000.0), 64).unwrap();
    let mut rng = Rng::new(8);
    let n = 5;
    let (k, v) = (gen(&mut rng, n * HKV * D), gen(&mut rng, n * HKV * D));
    let mut cache = Int8KvCache::new(KvCacheConfig::new(1, HKV, D, 16, DType::BF16)).unwrap();
    cache.append(&Tensor::bshd(&k[..], 1, n, HKV, D), &Tensor::bshd(&v[..], 1, n, HKV, D), Some(&table)).unwrap();
    let mut rotated = k.clone();
    table.rotate(TensorMut::bshd(&mut rotated[..], 1, n, HKV, D), Positions::Offset(0)).unwrap();
    for (src, t) in [(&rotated, cache.keys(0)), (&v, cache.values(0))] {
        for s in 0..n {
            for h in 0..HKV {
                let mut q = [0i8; D];
                let scale = quantize_row(&src[(s * HKV + h) * D..][..D], &mut q).unwrap();
                let off = t.layout.offset_of(0, s, h);
                let soff = t.scale_layout.offset_of(0, s, h);
                assert_eq!((&t.data[off..off + D], t.scales[soff]), (&q[..], scale), "row {s} head {h}");
            }
        }
    }
}

trait OffsetOf {
    fn offset_of(&self, b: usize, s: usize, h: usize) -> usize;
}
impl OffsetOf for Layout {
    fn offset_of(&self, b: usize, s: usize, h: usize) -> usize {
        b * self.strides[0] + s * self.strides[1] + h * self.strides[2]
    }
}

/// StreamingLLM gathers its visible rows dequantised: bit for bit what a float cache holding the
/// same dequantised rows computes.
#[test]
fn streaming_llm_equals_a_float_cache_of_the_dequantised_rows() {
    let table = RopeTable::new(&RopeConfig::new(D, 10_000.0), 256).unwrap();
    let policy = CachePolicy::StreamingLlm { sink_tokens: 2, recent: 10 };
    let cfg = KvCacheConfig::new(1, HKV, D, 16, DType::F32).policy(policy);
    let (mut int8, mut float) = (Int8KvCache::new(cfg).unwrap(), KvCache::new(cfg).unwrap());
    let mut rng = Rng::new(11);
    let deq = |x: &[f32]| {
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(D) {
            let mut q = [0i8; D];
            let s = quantize_row(row, &mut q).unwrap();
            row.iter_mut().zip(q).for_each(|(r, q)| *r = s * q as f32);
        }
        out
    };
    for step in 0..30 {
        let (k, v, q) = (gen(&mut rng, HKV * D), gen(&mut rng, HKV * D), gen(&mut rng, HQ * D));
        int8.append(&Tensor::bshd(&k[..], 1, 1, HKV, D), &Tensor::bshd(&v[..], 1, 1, HKV, D), Some(&table)).unwrap();
        let (kd, vd) = (deq(&k), deq(&v));
        float.append(&Tensor::bshd(&kd[..], 1, 1, HKV, D), &Tensor::bshd(&vd[..], 1, 1, HKV, D), Some(&table)).unwrap();
        let qt = Tensor::bshd(&q[..], 1, 1, HQ, D);
        let (mut a, mut b) = (vec![0.0f32; HQ * D], vec![1.0f32; HQ * D]);
        let opts = AttentionOptions::new();
        int8.attend_with_rope(&qt, TensorMut::bshd(&mut a[..], 1, 1, HQ, D), None, &opts, Some(&table)).unwrap();
        float.attend_with_rope(&qt, TensorMut::bshd(&mut b[..], 1, 1, HQ, D), None, &opts, Some(&table)).unwrap();
        assert_eq!(a, b, "step {step}");
        assert_eq!(int8.len(0), float.len(0));
    }
}

/// Memory per token per layer is `kv_heads · (head_dim + v_head_dim + 8)` bytes: one i8 per
/// element and one f32 scale per key row and per value row.
#[test]
fn memory_per_token_equals_its_formula() {
    for (batch, hkv, dk, dv, cap) in
        [(1usize, 8usize, 128usize, 128usize, 4096usize), (3, 2, 64, 48, 100), (1, 1, 1, 1, 1)]
    {
        let cfg = KvCacheConfig::new(batch, hkv, dk, cap, DType::F16).v_head_dim(dv);
        let cache = Int8KvCache::new(cfg).unwrap();
        let per_token = hkv * (dk + dv + 8);
        assert_eq!(Int8KvCache::storage_bytes(&cfg), batch * cap * per_token);
        assert_eq!(cache.allocated_bytes(), batch * cap * per_token);
        let f16 = KvCache::new(cfg).unwrap();
        assert_eq!(f16.allocated_bytes(), batch * cap * hkv * (dk + dv) * 2);
    }
    // 128-dim heads: 264 bytes per KV head and token against 512 in f16 (0.52×).
    let cfg = KvCacheConfig::new(1, 1, 128, 1, DType::F16);
    assert_eq!(Int8KvCache::storage_bytes(&cfg), 264);
    // Sizes that do not fit are errors, not aborts.
    let huge = KvCacheConfig::new(1, 1, usize::MAX / 2, 4, DType::F32);
    assert!(matches!(Int8KvCache::new(huge), Err(Error::ShapeOverflow { .. })));
    assert_eq!(Int8KvCache::storage_bytes(&huge), usize::MAX);
}

#[test]
fn bad_arguments_are_errors_and_write_nothing() {
    let cfg = KvCacheConfig::new(2, HKV, D, 4, DType::F32);
    assert!(matches!(Int8KvCache::new(KvCacheConfig::new(2, HKV, D, 0, DType::F32)), Err(Error::InvalidOption { .. })));
    let mut cache = Int8KvCache::new(cfg).unwrap();
    let x = vec![0.5f32; 2 * 3 * HKV * D];
    cache.append(&Tensor::bshd(&x[..], 2, 3, HKV, D), &Tensor::bshd(&x[..], 2, 3, HKV, D), None).unwrap();
    let before = (cache.keys(1).data.to_vec(), cache.keys(1).scales.to_vec(), cache.len(1));
    // Two more tokens do not fit a full cache of 4.
    let y = vec![9.0f32; 2 * 2 * HKV * D];
    let full = cache.append(&Tensor::bshd(&y[..], 2, 2, HKV, D), &Tensor::bshd(&y[..], 2, 2, HKV, D), None);
    assert!(matches!(full, Err(Error::CacheFull { .. })));
    // Wrong head dim.
    let z = vec![1.0f32; 2 * HKV * (D + 1)];
    let bad = cache.append(&Tensor::bshd(&z[..], 2, 1, HKV, D + 1), &Tensor::bshd(&z[..], 2, 1, HKV, D + 1), None);
    assert!(matches!(bad, Err(Error::ShapeMismatch { .. })));
    assert_eq!((cache.keys(1).data.to_vec(), cache.keys(1).scales.to_vec(), cache.len(1)), before);
    assert!(cache.get_keys(2).is_none() && cache.get_values(2).is_none() && cache.get_len(2).is_none());
    // A query for tokens not yet appended; an output of the wrong shape.
    let q = vec![0.1f32; 2 * 4 * HQ * D];
    let mut out = vec![7.0f32; 2 * 4 * HQ * D];
    let r = cache.attend(
        &Tensor::bshd(&q[..], 2, 4, HQ, D),
        TensorMut::bshd(&mut out[..], 2, 4, HQ, D),
        None,
        &AttentionOptions::new(),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = cache.attend(
        &Tensor::bshd(&q[..2 * HQ * D], 2, 1, HQ, D),
        TensorMut::bshd(&mut out[..], 2, 1, HQ, D - 1),
        None,
        &AttentionOptions::new(),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    assert!(out.iter().all(|&o| o == 7.0), "nothing written on Err");
    assert!(matches!(cache.rollback(0, 4), Err(Error::RollbackTooFar { .. })));
}

/// The layer decodes through an int8 cache as through a float one: its output stays within the
/// quantisation's effect of the f32 cache's (a bound measured with a margin, as in `tests/int8.rs`),
/// `forward_with` equals `forward` bit for bit, and the statistics see the int8 first key.
#[test]
fn the_layer_decodes_through_an_int8_cache() {
    use gated_attention::layer::{ForwardStats, GateConfig, GatedAttention, GatedAttentionConfig, LayerWorkspace};
    let mut cfg = GatedAttentionConfig::new(128, 8, 2, 32);
    cfg.gate = Some(GateConfig::qwen3_next());
    let layer = GatedAttention::seeded(cfg, 3).unwrap();
    let (mut c8, mut c8b, mut c32) = (
        layer.new_int8_cache(2, 32).unwrap(),
        layer.new_int8_cache(2, 32).unwrap(),
        layer.new_cache(2, 32, DType::F32).unwrap(),
    );
    let mut rng = Rng::new(4);
    let mut ws = LayerWorkspace::new();
    let mut stats = ForwardStats::default();
    let mut worst = 0.0f32;
    for step in 0..10 {
        let l = if step == 0 { 6 } else { 1 };
        let x: Vec<f32> = (0..2 * l * 128).map(|_| rng.uniform()).collect();
        let y8 = layer.forward(&x, 2, &mut c8, None).unwrap();
        let y8b = layer.forward_with(&mut ws, &x, 2, &mut c8b, None).unwrap();
        assert_eq!(&y8[..], y8b, "step {step}");
        let y32 = layer.forward_with_stats(&x, 2, &mut c32, None, &mut stats).unwrap();
        let scale = y32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = y8.iter().zip(&y32).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / scale);
    }
    println!("layer output, int8 cache against f32 cache: max |Δ| / max |y| = {worst:.2e}");
    assert!(worst > 0.0 && worst < 0.03, "int8 cache moves the layer output by {worst:e} of its scale");
    let mut st8 = ForwardStats::default();
    let x: Vec<f32> = (0..2 * 128).map(|_| rng.uniform()).collect();
    layer.forward_with_stats(&x, 2, &mut c8, None, &mut st8).unwrap();
    assert!(st8.first_token_mass.iter().all(|&(p, n)| n == 2 && p > 0.0 && p < 2.0));
    assert_eq!(c8.len(0), 16);
}
