// Attention forward on CUDA cores, FlashAttention-2 order. One block per (row tile, KV head,
// batch): the tile's GA_BM rows are packed (query row, query head of the KV head's group) pairs,
// so each K/V tile is loaded once for the whole GQA group. A serial loop over K/V tiles keeps the
// online-softmax state (max m, sum l, accumulator) of each row in f32 registers; masks are loop
// bounds (tiles nobody sees are never loaded) plus a per-key predicate on boundary tiles.
//
// attn_fwd_dN: the whole key range, finishes rows in place (prefill).
// attn_split_dN: flash-decoding; blockIdx.x = row_tile * n_splits + split, each split covers
//   split_len keys and writes its unnormalised state to the workspace for attn_combine_dN.
//
// DT = accumulator registers per row and lane: lane owns output dims lane + 32 t, t < DT, so
// v_head_dim <= 32 DT. Shared memory (f32, laid out by src/cuda/launch.rs):
//   sQ [GA_BM][D] | sK [GA_BN][D + 1] (padded against bank conflicts) | sV [GA_BN][Dv] | sP [4][GA_BN]

template <int DT, bool PARTIAL>
DEV void ga_attn_core(const GaParams& p) {
    DYN_SMEM(float, smem);
    const int D = p.head_dim, Dv = p.v_head_dim, G = p.group;
    float* sQ = smem;
    float* sK = sQ + GA_BM * D;
    float* sV = sK + GA_BN * (D + 1);
    float* sP = sV + GA_BN * Dv;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n_rows = p.q_len * G;
    const int row_tile = PARTIAL ? (int)(blockIdx.x / p.n_splits) : (int)blockIdx.x;
    const int split = PARTIAL ? (int)(blockIdx.x % p.n_splits) : 0;
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int r0 = row_tile * GA_BM;
    const ga_i64 n = p.kv_len;

    // Q tile, widened to f32; rows past the end are zero.
    for (int idx = tid; idx < GA_BM * D; idx += GA_THREADS) {
        int r = idx / D, d = idx % D, pr = r0 + r;
        float x = 0.f;
        if (pr < n_rows) {
            int i = pr / G, h = kvh * G + pr % G;
            const ga_i64 row = b * p.q_str[0] + i * p.q_str[1] + h * p.q_str[2];
            x = ga_load(p.q, row + d, p.q_dt);
            if (p.rope_cos && d < 2 * p.rope_half) {
                // Rotate with the pair partner read straight from global memory (no barrier):
                // first of a pair a·c - b·s, second b·c + a·s, as rope::rotate_f32.
                const int half = p.rope_half;
                int f, partner;
                bool first;
                if (p.rope_gptj) {
                    f = d >> 1;
                    partner = d ^ 1;
                    first = (d & 1) == 0;
                } else {
                    first = d < half;
                    f = first ? d : d - half;
                    partner = first ? d + half : d - half;
                }
                const ga_i64 t = ((ga_i64)b * p.q_len + i) * half + f;
                const float c = ((const float*)p.rope_cos)[t], sn = ((const float*)p.rope_sin)[t];
                const float y = ga_load(p.q, row + partner, p.q_dt);
                x = first ? x * c - y * sn : x * c + y * sn;
            }
        }
        sQ[idx] = x;
    }

    // This block's keys: the union of its rows' visible ranges (masks are monotone in the query
    // position, so the first and last row bound it), cut to the split.
    const int last = (r0 + GA_BM < n_rows ? r0 + GA_BM : n_rows) - 1;
    GaRowKeys first_keys = ga_row_keys(p, r0 / G), last_keys = ga_row_keys(p, (last < r0 ? r0 : last) / G);
    const ga_i64 lo_min = first_keys.lo, hi_max = last_keys.hi, sinks_max = last_keys.sinks_end;
    ga_i64 s_lo = 0, s_hi = n;
    if (PARTIAL) {
        s_lo = (ga_i64)split * p.split_len;
        s_hi = ga_min64(n, s_lo + p.split_len);
    }
    ga_i64 t_begin = sinks_max > 0 ? 0 : lo_min / GA_BN;
    t_begin = ga_max64(t_begin, s_lo / GA_BN);
    ga_i64 end = ga_min64(hi_max, s_hi);
#ifdef GA_FAULT_TILE_END
    const ga_i64 t_end = end / GA_BN;  // planted fault: drops a partial last tile
#else
    const ga_i64 t_end = (end + GA_BN - 1) / GA_BN;
#endif

    // Per-row state of this warp's rows.
    float m[GA_ROWS_PER_WARP], l[GA_ROWS_PER_WARP], acc[GA_ROWS_PER_WARP][DT];
    GaRowKeys keys[GA_ROWS_PER_WARP];
    UNROLL for (int rr = 0; rr < GA_ROWS_PER_WARP; ++rr) {
        m[rr] = NEG_INF;
        l[rr] = 0.f;
        UNROLL for (int t = 0; t < DT; ++t) acc[rr][t] = 0.f;
        int pr = r0 + warp * GA_ROWS_PER_WARP + rr;
        keys[rr] = ga_row_keys(p, (pr < n_rows ? pr : r0) / G);
    }

    for (ga_i64 tile = t_begin; tile < t_end; ++tile) {
        const ga_i64 j0 = tile * GA_BN;
        // Dead tiles between the sink prefix and the window: skipped by the whole block.
        if (!(j0 < sinks_max || j0 + GA_BN > lo_min)) continue;
        __syncthreads();  // everyone is done with the previous tile
        for (int idx = tid; idx < GA_BN * D; idx += GA_THREADS) {
            int jj = idx / D, d = idx % D;
            ga_i64 j = j0 + jj;
            float x = 0.f;
#ifdef GA_FAULT_OOB
            if (j < n + GA_BN)  // planted fault: reads past the last key
#else
            if (j < n)
#endif
                x = ga_load(p.k, b * p.k_str[0] + j * p.k_str[1] + kvh * p.k_str[2] + d, p.k_dt);
            sK[jj * (D + 1) + d] = x;
        }
        for (int idx = tid; idx < GA_BN * Dv; idx += GA_THREADS) {
            int jj = idx / Dv, d = idx % Dv;
            ga_i64 j = j0 + jj;
            float x = 0.f;  // past the end: zero, never NaN from padding
            if (j < n) x = ga_load(p.v, b * p.v_str[0] + j * p.v_str[1] + kvh * p.v_str[2] + d, p.v_dt);
            sV[idx] = x;
        }
#ifndef GA_FAULT_NO_SYNC
        __syncthreads();  // the tile is in shared memory
#endif
        // Not unrolled: four copies of this body need more registers than the per-row state saves.
        for (int rr = 0; rr < GA_ROWS_PER_WARP; ++rr) {
            const int r = warp * GA_ROWS_PER_WARP + rr, pr = r0 + r;
            if (pr >= n_rows) continue;  // warp-uniform
            const int i = pr / G, h = kvh * G + pr % G;
            const ga_i64 j = j0 + lane;
            const bool vis = ga_visible(keys[rr], j) && j >= s_lo && j < s_hi;
            float s = NEG_INF;
            if (vis) {
                float dot = 0.f;
                for (int d = 0; d < D; ++d) dot += sQ[r * D + d] * sK[lane * (D + 1) + d];
                s = ga_score(p, dot, b, h, i, j);
            }
            const float m_new = fmaxf(m[rr], ga_warp_max(s));
            // -inf guards: a row that has seen nothing keeps alpha = 1 and p = 0.
            const float alpha = m_new == NEG_INF ? 1.f : EXPF(m[rr] - m_new);
            float pj = m_new == NEG_INF ? 0.f : EXPF(s - m_new);
            l[rr] = l[rr] * alpha + ga_warp_sum(vis ? pj : 0.f);
            m[rr] = m_new;
            // A hidden key is marked -1 so its V row is never touched (not even as 0 * NaN).
            sP[warp * GA_BN + lane] = vis ? pj : -1.f;
            SYNCWARP();
            UNROLL for (int t = 0; t < DT; ++t) acc[rr][t] *= alpha;
            for (int jj = 0; jj < GA_BN; ++jj) {
                const float pk = sP[warp * GA_BN + jj];
                if (!(pk >= 0.f)) continue;
                UNROLL for (int t = 0; t < DT; ++t) {
                    int d = lane + 32 * t;
                    if (d < Dv) acc[rr][t] += pk * sV[jj * Dv + d];
                }
            }
            SYNCWARP();  // sP is rewritten by the next row
        }
    }

#ifdef GA_FAULT_DIVERGENT_SYNC
    if (warp != 0) __syncthreads();  // planted fault: a barrier only some warps reach
#endif
    UNROLL for (int rr = 0; rr < GA_ROWS_PER_WARP; ++rr) {
        const int pr = r0 + warp * GA_ROWS_PER_WARP + rr;
        if (pr >= n_rows) continue;
        const int i = pr / G, h = kvh * G + pr % G;
        if (PARTIAL) {
            // workspace [batch, q_heads, q_len, n_splits, Dv + 2]: acc, then m and l
            float* w = (float*)p.work + ((((ga_i64)b * p.q_heads + h) * p.q_len + i) * p.n_splits + split) * (Dv + 2);
            UNROLL for (int t = 0; t < DT; ++t) {
                int d = lane + 32 * t;
                if (d < Dv) w[d] = acc[rr][t];
            }
            if (lane == 0) {
                w[Dv] = m[rr];
                w[Dv + 1] = l[rr];
            }
        } else {
            ga_finish_row<DT>(p, b, i, h, m[rr], l[rr], acc[rr], lane);
        }
    }
}

KERNEL void attn_fwd_d64(const GaParams p) { ga_attn_core<2, false>(p); }
KERNEL void attn_fwd_d128(const GaParams p) { ga_attn_core<4, false>(p); }
KERNEL void attn_fwd_d256(const GaParams p) { ga_attn_core<8, false>(p); }
KERNEL void attn_split_d64(const GaParams p) { ga_attn_core<2, true>(p); }
KERNEL void attn_split_d128(const GaParams p) { ga_attn_core<4, true>(p); }
KERNEL void attn_split_d256(const GaParams p) { ga_attn_core<8, true>(p); }
