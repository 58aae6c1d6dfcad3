// Shared device code of the attention kernels: storage I/O, the mask as bounds, warp reductions
// and the row epilogue (learned sink, normalisation, LSE, G1 gate, store). Portable subset only.

// Tile shape: GA_BM packed query rows (query row x head of the KV group) per block, GA_BN keys per
// K/V tile (one per lane), GA_THREADS threads = 4 warps of GA_BM / 4 rows each.
#define GA_BM 16
#define GA_BN 32
#define GA_THREADS 128
#define GA_ROWS_PER_WARP (GA_BM / (GA_THREADS / 32))

DEV float ga_bf2f(unsigned short h) { return U2F(((unsigned)h) << 16); }

// f32 -> bf16, round to nearest even; NaN stays a (quiet) NaN.
DEV unsigned short ga_f2bf(float f) {
    unsigned u = F2U(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

DEV float ga_load(ga_u64 base, ga_i64 idx, int dt) {
    if (dt == GA_DT_F32) return ((const float*)base)[idx];
    unsigned short h = ((const unsigned short*)base)[idx];
    return dt == GA_DT_F16 ? ga_h2f(h) : ga_bf2f(h);
}

DEV void ga_store(ga_u64 base, ga_i64 idx, int dt, float x) {
    if (dt == GA_DT_F32) {
        ((float*)base)[idx] = x;
    } else {
        ((unsigned short*)base)[idx] = dt == GA_DT_F16 ? ga_f2h(x) : ga_f2bf(x);
    }
}

DEV ga_i64 ga_min64(ga_i64 a, ga_i64 b) { return a < b ? a : b; }
DEV ga_i64 ga_max64(ga_i64 a, ga_i64 b) { return a > b ? a : b; }
DEV ga_i64 ga_clamp64(ga_i64 x, ga_i64 lo, ga_i64 hi) { return ga_min64(ga_max64(x, lo), hi); }

// The keys query row i sees: [0, sinks_end) and [lo, hi), as src/mask.rs's MaskGeometry::row.
struct GaRowKeys {
    ga_i64 sinks_end, lo, hi;
};

DEV GaRowKeys ga_row_keys(const GaParams& p, ga_i64 i) {
    ga_i64 n = p.kv_len, pos = p.q_offset + i;
    ga_i64 hi_incl = p.causal ? pos : (p.right_window >= 0 ? pos + p.right_window : n - 1);
#ifdef GA_FAULT_MASK_OFF_BY_ONE
    hi_incl += 1;  // planted fault: one key too many on the right
#endif
    GaRowKeys r;
    r.hi = ga_clamp64(hi_incl + 1, 0, n);
    r.lo = p.window > 0 ? ga_clamp64(pos - p.window + 1, 0, n) : 0;
    r.lo = ga_min64(r.lo, r.hi);
    r.sinks_end = ga_max64(ga_min64(ga_min64(ga_min64(p.sink_tokens, n), r.hi), r.lo), 0);
    return r;
}

DEV bool ga_visible(const GaRowKeys& r, ga_i64 j) { return j < r.hi && (j >= r.lo || j < r.sinks_end); }

DEV float ga_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, SHFL_XOR(v, o));
    return v;
}

DEV float ga_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += SHFL_XOR(v, o);
    return v;
}

// The score of one visible (row, key) pair from the raw dot product: scale, softcap, ALiBi, bias.
DEV float ga_score(const GaParams& p, float dot, int b, int h, ga_i64 i, ga_i64 j) {
    float x = dot * p.scale;
    if (p.softcap > 0.f) x = p.softcap * TANHF(x / p.softcap);
    if (p.alibi) {
        ga_i64 d = p.q_offset + i - j;
        x -= ((const float*)p.alibi)[h] * (float)(d < 0 ? -d : d);
    }
    if (p.bias) {
        x += ((const float*)p.bias)[b * p.bias_str[0] + h * p.bias_str[1] + i * p.bias_str[2] + j * p.bias_str[3]];
    }
    return x;
}

DEV float ga_gate(const GaParams& p, int b, ga_i64 i, int h, int d, float y) {
    ga_i64 idx = b * p.gate_str[0] + i * p.gate_str[1] + (p.gate_heads1 ? 0 : h) * p.gate_str[2] + (p.gate_dim1 ? 0 : d);
    float x = ga_load(p.gate, idx, p.gate_dt);
    float sig = 1.f / (1.f + EXPF(-x));
    float g = p.gate_act == 0 ? sig : (p.gate_act == 1 ? x * sig : 0.5f + 0.5f * sig);
    return p.gate_mode == 0 ? y * g : y + g;
}

// Finishes one output row held by a warp (lane owns dims lane + 32 t): joins the learned sink,
// normalises (a row with no weight gets zeros and LSE -inf), gates, stores, and writes the LSE.
template <int DT>
DEV void ga_finish_row(const GaParams& p, int b, ga_i64 i, int h, float m, float l, float* acc, int lane) {
    if (p.sinks) {
        float sk = ((const float*)p.sinks)[h];
        float mf = fmaxf(m, sk);
        if (mf != NEG_INF) {
            float a = EXPF(m - mf);
            l = l * a + EXPF(sk - mf);
            UNROLL for (int t = 0; t < DT; ++t) acc[t] *= a;
            m = mf;
        }
    }
    float inv = l == 0.f ? 0.f : 1.f / l;
    ga_i64 o_row = b * p.o_str[0] + i * p.o_str[1] + h * p.o_str[2];
    UNROLL for (int t = 0; t < DT; ++t) {
        int d = lane + 32 * t;
        if (d < p.v_head_dim) {
            float y = acc[t] * inv;
            if (p.gate) y = ga_gate(p, b, i, h, d, y);
            ga_store(p.out, o_row + d, p.o_dt, y);
        }
    }
    if (p.lse && lane == 0) {
        ((float*)p.lse)[((ga_i64)b * p.q_heads + h) * p.q_len + i] = l == 0.f ? NEG_INF : m + LOGF(l);
    }
}
