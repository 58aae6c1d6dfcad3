// Flash-decoding combine: one warp per (query row, query head, batch) = blockIdx (x, y, z).
// Merges the n_splits partial states written by attn_split_dN in split order (deterministic),
// then finishes the row exactly as attn_fwd_dN does.
template <int DT>
DEV void ga_combine_core(const GaParams& p) {
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int Dv = p.v_head_dim, S = p.n_splits;
    const float* w = (const float*)p.work + (((ga_i64)b * p.q_heads + h) * p.q_len + i) * S * (Dv + 2);
    float m = NEG_INF;
    for (int s = 0; s < S; ++s) m = fmaxf(m, w[s * (Dv + 2) + Dv]);
    float l = 0.f, acc[DT];
    UNROLL for (int t = 0; t < DT; ++t) acc[t] = 0.f;
    if (m != NEG_INF) {
        for (int s = 0; s < S; ++s) {
            const float* ws = w + s * (Dv + 2);
            const float ms = ws[Dv];
            if (ms == NEG_INF) continue;  // a split that saw nothing
            const float a = EXPF(ms - m);
            l += ws[Dv + 1] * a;
            UNROLL for (int t = 0; t < DT; ++t) {
                int d = lane + 32 * t;
                if (d < Dv) acc[t] += ws[d] * a;
            }
        }
    }
    ga_finish_row<DT>(p, b, i, h, m, l, acc, lane);
}

KERNEL void attn_combine_d64(const GaParams p) { ga_combine_core<2>(p); }
KERNEL void attn_combine_d128(const GaParams p) { ga_combine_core<4>(p); }
KERNEL void attn_combine_d256(const GaParams p) { ga_combine_core<8>(p); }
