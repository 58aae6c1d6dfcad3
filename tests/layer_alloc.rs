//! A steady decode step of `GatedAttention::forward_with` allocates nothing. This test binary
//! installs its own global allocator, which counts the allocations (and reallocations and frees)
//! of the threads that ask it to, so the tests of the binary, running in parallel, do not see
//! each other's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gated_attention::cache::{CachePolicy, DecodeCache, KvCache, KvCacheConfig};
use gated_attention::layer::{
    GateConfig, GateGranularity, GatePosition, GateSharing, GatedAttention, GatedAttentionConfig, LayerWorkspace,
    QkNorm,
};
use gated_attention::{DType, Parallelism};

struct Counting;

std::thread_local! {
    /// Whether this thread's allocator calls are counted, and how many were.
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note() {
    // `try_with`: a thread whose locals are gone still allocates (and is not counted).
    let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// `note` touches a const-initialised thread-local (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above; `ptr` came from this allocator, which is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocator calls made by this thread during `f`.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

/// Deterministic inputs in [-1, 1).
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Prefills 6 tokens, takes 3 warm-up steps, then counts 6 steps (on the calling thread).
fn steady_allocations<C: DecodeCache>(layer: &GatedAttention, cache: &mut C, batch: usize, explicit: bool) -> usize {
    let dm = layer.config().hidden_size;
    let mut ws = LayerWorkspace::new();
    let prompt = inputs(batch * 6 * dm, 1);
    let pos: Vec<usize> = (0..batch).flat_map(|_| 0..6).collect();
    layer.forward_with(&mut ws, &prompt, batch, cache, explicit.then_some(&pos[..])).unwrap();
    let steps = inputs(9 * batch * dm, 2);
    let positions: Vec<Vec<usize>> = (0..9).map(|s| vec![6 + s; batch]).collect();
    let step = |s: usize, ws: &mut LayerWorkspace, cache: &mut C| {
        let x = &steps[s * batch * dm..(s + 1) * batch * dm];
        let y = layer.forward_with(ws, x, batch, cache, explicit.then_some(&positions[s][..])).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
    };
    for s in 0..3 {
        step(s, &mut ws, cache);
    }
    allocations(|| {
        for s in 3..9 {
            step(s, &mut ws, cache);
        }
    })
}

fn configs() -> Vec<(&'static str, GatedAttentionConfig)> {
    // q_proj 1024 → 2048 (8 MiB in f32, 4 MiB in bf16): one row's products are shared among
    // rayon's threads.
    let mut qwen = GatedAttentionConfig::new(1024, 8, 2, 128);
    qwen.gate = Some(GateConfig::qwen3_next());
    qwen.qk_norm = QkNorm::Qwen3Next;
    let mut dense = GatedAttentionConfig::new(64, 4, 2, 16);
    dense.gate = Some(GateConfig::separate(GatePosition::Dense, GateGranularity::Headwise, GateSharing::HeadSpecific));
    dense.qkv_bias = true;
    let mut value = GatedAttentionConfig::new(64, 4, 2, 16);
    value.gate = Some(GateConfig::separate(GatePosition::Value, GateGranularity::Elementwise, GateSharing::HeadShared));
    // A window shorter than the steps: the cache compacts during the counted steps.
    value.sliding_window = Some(8);
    let mut rotated = GatedAttentionConfig::new(64, 4, 4, 16);
    rotated.gate = Some(GateConfig::rotated_query());
    rotated.qk_norm = QkNorm::None;
    vec![("qwen3-next", qwen), ("separate dense", dense), ("value, window", value), ("rotated query", rotated)]
}

/// The 15 tokens of [`steady_allocations`], or fewer for a window (which then compacts).
fn capacity(cfg: &GatedAttentionConfig) -> usize {
    if cfg.sliding_window.is_some() {
        10
    } else {
        16
    }
}

/// On the calling thread ([`Parallelism::Sequential`]): nothing at all is allocated, for every
/// gate source, weight storage type, cache type, batch and default or explicit positions.
#[test]
fn a_sequential_decode_step_allocates_nothing() {
    for (name, cfg) in configs() {
        for weights in [DType::F32, DType::BF16] {
            let layer = GatedAttention::seeded(cfg.clone(), 7)
                .unwrap()
                .with_weight_dtype(weights)
                .unwrap()
                .with_parallelism(Parallelism::Sequential);
            for (cache_dtype, batch, explicit) in
                [(DType::F32, 1, false), (DType::F16, 2, false), (DType::BF16, 1, true)]
            {
                let mut cache = layer.new_cache(batch, capacity(&cfg), cache_dtype).unwrap();
                let n = steady_allocations(&layer, &mut cache, batch, explicit);
                assert_eq!(
                    n, 0,
                    "{name}, {weights:?} weights, {cache_dtype:?} cache, batch {batch}, explicit {explicit}"
                );
            }
            let mut int8 = layer.new_int8_cache(2, capacity(&cfg)).unwrap();
            let n = steady_allocations(&layer, &mut int8, 2, false);
            assert_eq!(n, 0, "{name}, {weights:?} weights, int8 cache, batch 2");
        }
    }
}

/// With rayon: inside a one-thread pool (so that every task runs on the counted thread; the
/// pool's workers keep their scratch between calls) a step allocates nothing either.
#[test]
fn a_rayon_decode_step_allocates_nothing() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        for (name, cfg) in configs() {
            for weights in [DType::F32, DType::BF16] {
                let layer = GatedAttention::seeded(cfg.clone(), 7)
                    .unwrap()
                    .with_weight_dtype(weights)
                    .unwrap()
                    .with_parallelism(Parallelism::Rayon);
                let mut cache = layer.new_cache(1, capacity(&cfg), DType::F16).unwrap();
                assert_eq!(steady_allocations(&layer, &mut cache, 1, false), 0, "{name}, {weights:?} weights");
            }
        }
    });
}

/// The counter sees what it should (else the tests above could not fail): a step of `forward`,
/// which allocates its buffers, a StreamingLLM cache, which gathers its visible keys per call,
/// and a plain allocation are counted.
#[test]
fn the_counter_counts() {
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 2);
    let (_, cfg) = configs().swap_remove(1);
    let layer = GatedAttention::seeded(cfg, 7).unwrap().with_parallelism(Parallelism::Sequential);
    let mut cache = layer.new_cache(1, 16, DType::F32).unwrap();
    let x = inputs(64, 3);
    layer.forward(&x, 1, &mut cache, None).unwrap();
    assert!(allocations(|| drop(layer.forward(&x, 1, &mut cache, None).unwrap())) > 0);
    let c = layer.config();
    let streaming = KvCacheConfig::new(1, c.num_kv_heads, c.head_dim, 12, DType::F32)
        .policy(CachePolicy::StreamingLlm { sink_tokens: 2, recent: 8 });
    let mut cache = KvCache::new(streaming).unwrap();
    assert!(steady_allocations(&layer, &mut cache, 1, false) > 0);
}
