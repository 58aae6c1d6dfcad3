//! The kernels' argument block: `GaParams` of `kernels/params.h`, field for field.

/// Storage type codes of `kernels/params.h` (`GA_DT_*`).
pub(crate) fn dtype_code(dt: crate::DType) -> i32 {
    match dt {
        crate::DType::F32 => 0,
        crate::DType::F16 => 1,
        crate::DType::BF16 => 2,
    }
}

/// The one by-value argument of every attention kernel (`struct GaParams` in `kernels/params.h`).
///
/// Pointers are device addresses (host addresses under the emulator); 0 means absent. All 8-byte
/// fields come first and the 4-byte fields are an even count, so the C and Rust layouts have no
/// padding to disagree on; the emulator tests compare size and offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GaParams {
    /// Queries.
    pub q: u64,
    /// Keys.
    pub k: u64,
    /// Values.
    pub v: u64,
    /// Output.
    pub out: u64,
    /// LSE output `[batch, q_heads, q_len]` f32, or 0.
    pub lse: u64,
    /// Additive bias (f32), or 0.
    pub bias: u64,
    /// ALiBi slopes (f32, one per query head), or 0.
    pub alibi: u64,
    /// Learned sink logits (f32, one per query head), or 0.
    pub sinks: u64,
    /// G1 gate logits, or 0.
    pub gate: u64,
    /// Split-KV workspace (f32), or 0.
    pub work: u64,
    /// Query RoPE cos per query row `[batch, q_len, rope_half]` (f32), or 0.
    pub rope_cos: u64,
    /// Query RoPE sin, same layout.
    pub rope_sin: u64,
    /// `kv_append`: source sequence index per (batch, token), i64 `[batch, q_len]`, or 0 (the
    /// token index itself).
    pub src_rows: u64,
    /// `kv_append`: destination sequence index (cache slot) per (batch, token), i64.
    pub dst_rows: u64,
    /// Query strides `[batch, seq, head]` in elements.
    pub q_str: [i64; 3],
    /// Key strides.
    pub k_str: [i64; 3],
    /// Value strides.
    pub v_str: [i64; 3],
    /// Output strides.
    pub o_str: [i64; 3],
    /// Gate-logit strides.
    pub gate_str: [i64; 3],
    /// Bias strides `[batch, head, q, k]`.
    pub bias_str: [i64; 4],
    /// Absolute position of query row 0.
    pub q_offset: i64,
    /// Left window in keys (0: none).
    pub window: i64,
    /// Right window in keys (-1: none).
    pub right_window: i64,
    /// Sink tokens.
    pub sink_tokens: i64,
    /// Batch size.
    pub batch: i32,
    /// Query rows.
    pub q_len: i32,
    /// Keys.
    pub kv_len: i32,
    /// Query heads.
    pub q_heads: i32,
    /// KV heads.
    pub kv_heads: i32,
    /// Q/K head dimension.
    pub head_dim: i32,
    /// V/output head dimension.
    pub v_head_dim: i32,
    /// Query heads per KV head.
    pub group: i32,
    /// Query storage type code.
    pub q_dt: i32,
    /// Key storage type code.
    pub k_dt: i32,
    /// Value storage type code.
    pub v_dt: i32,
    /// Output storage type code.
    pub o_dt: i32,
    /// Gate-logit storage type code.
    pub gate_dt: i32,
    /// 1 when causal.
    pub causal: i32,
    /// 0 sigmoid, 1 SiLU, 2 NS-sigmoid.
    pub gate_act: i32,
    /// 0 multiplicative, 1 additive.
    pub gate_mode: i32,
    /// 1 when the gate is shared by all heads.
    pub gate_heads1: i32,
    /// 1 when the gate has one logit per head row.
    pub gate_dim1: i32,
    /// Split-KV blocks per row tile (1: no split).
    pub n_splits: i32,
    /// Keys per split (a multiple of the key tile).
    pub split_len: i32,
    /// Rotary dim / 2 (0: no query RoPE).
    pub rope_half: i32,
    /// 1: GPT-J interleaved pairs; 0: NeoX halves.
    pub rope_gptj: i32,
    /// Multiplier of q·k.
    pub scale: f32,
    /// Softcap (0: none).
    pub softcap: f32,
}

impl GaParams {
    /// The bytes passed to the kernel.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: GaParams is repr(C) plain data with no padding (8-byte fields first, then an even
        // number of 4-byte fields), so every byte is initialised.
        unsafe { core::slice::from_raw_parts(self as *const Self as *const u8, core::mem::size_of::<Self>()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        // 37 eight-byte fields and 24 four-byte fields.
        assert_eq!(core::mem::size_of::<GaParams>(), 37 * 8 + 24 * 4);
        assert_eq!(core::mem::align_of::<GaParams>(), 8);
        assert_eq!(core::mem::offset_of!(GaParams, batch), 37 * 8);
    }
}
