//! Links `gated-attention` into a `#![no_std]` staticlib so that a dependency that pulls in `std`
//! fails the build (std's panic handler would collide with the one below).
#![no_std]

use gated_attention::{attention_with_scratch, scratch_len, AttentionOptions, Dims, Tensor, TensorMut};

const B: usize = 1;
const LQ: usize = 5;
const LK: usize = 9;
const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = 16;
const DV: usize = 8;
const SCRATCH: usize = 16 * 1024;

/// Runs one causal GQA call on stack buffers filled from `seed` (so nothing folds away) and
/// returns the sum of the outputs plus LSEs; NaN when the call was rejected.
#[no_mangle]
pub extern "C" fn ensure_no_std_attention(seed: f32) -> f32 {
    let mut q = [0.0f32; B * LQ * HQ * D];
    let mut k = [0.0f32; B * LK * HKV * D];
    let mut v = [0.0f32; B * LK * HKV * DV];
    for (i, x) in q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()).enumerate() {
        *x = seed * ((i % 13) as f32 - 6.0);
    }
    let mut out = [0.0f32; B * LQ * HQ * DV];
    let mut lse = [0.0f32; B * HQ * LQ];
    let mut scratch = [0.0f32; SCRATCH];

    let opts = AttentionOptions::new().causal().window(4).softcap(30.0);
    let dims = Dims { batch: B, q_len: LQ, kv_len: LK, q_heads: HQ, kv_heads: HKV, head_dim: D, v_head_dim: DV };
    match scratch_len(&dims, &opts) {
        Ok(n) if n <= SCRATCH => {}
        _ => return f32::NAN,
    }
    let res = attention_with_scratch(
        &Tensor::bshd(&q[..], B, LQ, HQ, D),
        &Tensor::bshd(&k[..], B, LK, HKV, D),
        &Tensor::bshd(&v[..], B, LK, HKV, DV),
        TensorMut::bshd(&mut out[..], B, LQ, HQ, DV),
        Some(&mut lse[..]),
        &opts,
        &mut scratch[..],
    );
    match res {
        Ok(()) => out.iter().chain(lse.iter()).sum(),
        Err(_) => f32::NAN,
    }
}

/// The allocating entry point and the reference oracle also build without `std` (and with
/// `layer`, the code below uses this module's allocator).
#[cfg(feature = "alloc")]
mod with_alloc {
    extern crate alloc;

    use core::alloc::{GlobalAlloc, Layout};
    use gated_attention::{attention, reference, AttentionOptions, Tensor, TensorMut};

    /// Never called: this library only has to link. A real no_std user supplies an allocator.
    struct NoAlloc;

    // SAFETY: `alloc` always reports failure (null), which `GlobalAlloc` permits, and `dealloc`
    // is only ever handed pointers `alloc` returned, of which there are none.
    unsafe impl GlobalAlloc for NoAlloc {
        unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
            core::ptr::null_mut()
        }
        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    #[global_allocator]
    static ALLOCATOR: NoAlloc = NoAlloc;

    /// One call of the allocating entry point and of the reference; returns their difference.
    #[no_mangle]
    pub extern "C" fn ensure_no_std_attention_alloc(seed: f32) -> f32 {
        let q = [seed; 2 * 3 * 2 * 4];
        let k = [seed * 0.5; 2 * 6 * 1 * 4];
        let v = [seed * 2.0; 2 * 6 * 1 * 4];
        let mut out = [0.0f32; 2 * 3 * 2 * 4];
        let opts = AttentionOptions::new().causal();
        let (q, k, v) =
            (Tensor::bshd(&q[..], 2, 3, 2, 4), Tensor::bshd(&k[..], 2, 6, 1, 4), Tensor::bshd(&v[..], 2, 6, 1, 4));
        if attention(&q, &k, &v, TensorMut::bshd(&mut out[..], 2, 3, 2, 4), None, &opts).is_err() {
            return f32::NAN;
        }
        match reference::attention(&q, &k, &v, &opts) {
            Ok(r) => (out[0] as f64 - r.out[0]) as f32,
            Err(_) => f32::NAN,
        }
    }
}

/// The layer (matrixmultiply projections, the config.json reader) and a measurement also build
/// without `std`.
#[cfg(feature = "layer")]
mod with_layer {
    use gated_attention::layer::{GatedAttention, GatedAttentionConfig};
    use gated_attention::measure::sink_share_per_head;
    use gated_attention::DType;

    /// Parses a config, runs one token through a seeded layer and measures a sink share; returns
    /// the sum of the two results, NaN on any `Err`.
    #[no_mangle]
    pub extern "C" fn ensure_no_std_layer(seed: f32) -> f32 {
        let Ok(config) = GatedAttentionConfig::from_json(
            r#"{"model_type": "qwen3", "hidden_size": 32, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 8}"#,
        ) else {
            return f32::NAN;
        };
        let Ok(layer) = GatedAttention::seeded(config, seed.to_bits() as u64) else { return f32::NAN };
        let Ok(mut cache) = layer.new_cache(1, 8, DType::F32) else { return f32::NAN };
        let x = [seed; 32];
        let (Ok(y), Ok(share)) =
            (layer.forward(&x[..], 1, &mut cache, None), sink_share_per_head(&[seed as f64; 4], 1, 2, 2, 0))
        else {
            return f32::NAN;
        };
        y.iter().sum::<f32>() + share.iter().sum::<f64>() as f32
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
