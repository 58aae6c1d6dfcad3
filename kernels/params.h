// The one kernel argument of every attention kernel, passed by value. src/cuda/params.rs mirrors it
// field for field (#[repr(C)]); the emulator test checks size and offsets. Every 8-byte field comes
// first and the 4-byte fields are an even count, so neither side has implicit padding.
// Pointers are device addresses (host addresses in the emulator); 0 means "absent".
#define GA_DT_F32 0
#define GA_DT_F16 1
#define GA_DT_BF16 2

struct GaParams {
    ga_u64 q, k, v, out, lse, bias, alibi, sinks, gate, work;
    // Fused query RoPE: cos and sin (attention factor included) per query row, [batch, q_len, rope_half].
    ga_u64 rope_cos, rope_sin;
    // kv_append only: source and destination sequence index per (batch, token), i64 [batch, q_len]
    // (src_rows 0: the token index itself).
    ga_u64 src_rows, dst_rows;
    // Element strides of [batch, seq, head] (dim is contiguous); bias: [batch, head, q, k].
    ga_i64 q_str[3], k_str[3], v_str[3], o_str[3], gate_str[3], bias_str[4];
    // Absolute position of query row 0; window: keys a query sees (<= 0: none); right window (< 0: none).
    ga_i64 q_offset, window, right_window, sink_tokens;
    int batch, q_len, kv_len, q_heads, kv_heads, head_dim, v_head_dim, group;
    int q_dt, k_dt, v_dt, o_dt, gate_dt, causal;
    // gate_act: 0 sigmoid, 1 silu, 2 ns-sigmoid; gate_mode: 0 multiplicative, 1 additive.
    int gate_act, gate_mode, gate_heads1, gate_dim1;
    // split-KV: n_splits blocks per row tile, split_len keys each (a multiple of GA_BN).
    int n_splits, split_len;
    // rope_half = rotary_dim / 2 (0: no query RoPE); rope_gptj: 1 interleaved pairs, 0 NeoX halves.
    int rope_half, rope_gptj;
    float scale, softcap;  // softcap <= 0: none
};
