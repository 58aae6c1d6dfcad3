// Attention prefill on tensor cores (sm_80+), FlashAttention-2 order, f16/bf16 storage (Q, K and V
// of one type), f32 accumulation. One block per (64-row tile, KV head, batch); rows are packed
// (query row, head of the KV group) pairs as in attn_fwd.cu. 4 warps, each owns 16 rows: S = Q Kᵀ
// with mma.m16n8k16 (Q fragments by ldmatrix, K stored [key][dim] = [n][k] by ldmatrix), the
// online softmax on the S fragments in base 2 (each row's 4 lanes reduce with 2 shuffles; a tile
// every row of the block sees whole skips the mask), P rounded to the storage type in registers
// and reused as the A fragment of P V (V stored [key][dim] = [k][n] by ldmatrix.trans). K/V tiles
// of 32 keys arrive through a 2-stage cp.async pipeline.
//
// Budget per head class on sm_90 (NVRTC 13.0; every kernel and arch in kernels/ptxas/): d64
// 35,848 B of shared memory and at most 128 registers, 4 blocks per SM; d128 60,424 B and 168, 3
// blocks; d256 109,576 B and 243-245 (16 rows x 256 dims of f32 accumulators are 128 per lane),
// 2 blocks (1 on sm_80's 164 KB).
//
// Requires (checked by src/cuda/launch.rs before choosing this kernel): head dims multiples of 8
// and at most DK, K/V base addresses 16-byte aligned and their strides multiples of 8 elements.
// Dims past D / Dv are zero-filled, keys past kv_len zero-filled.
//
// Masks, sinks, softcap, ALiBi, bias, the G1 gate and the LSE behave as in attn_fwd.cu. A hidden
// key's P is exactly 0, but 0 * NaN is NaN in an mma: a V tile holding a non-finite value takes a
// scalar P V instead, which skips hidden keys, so a NaN stays in the rows that see it.
//
// Split-KV decode (SPLIT, flash-decoding): blockIdx.x = row_tile * n_splits + split as in
// attn_split_dN (attn_fwd.cu); the block's keys are its split's chunk [split * split_len, + split_len)
// (split_len a multiple of GA_TC_BN, so the chunk is whole tiles), and each row's unnormalised
// state (acc, m, l) goes to the workspace in attn_split_dN's layout, merged by attn_combine_dN
// unchanged. The learned sink, normalisation, gate and LSE are then the combine's.
//
// One instantiation per storage type (BF16), per score mode (OPTS: softcap, ALiBi or bias
// set) and per mode (SPLIT), chosen by the host (src/cuda/launch.rs, TcVariant), so the K/V loop holds one type's
// mma path and, without options, no score pass. The non-finite-V path leaves the K/V loop
// (break) and re-enters it after the tile, so its code lies outside the loop the hot path runs
// (scripts/sass_model.py counts that loop).
//
// Shared memory (halves unless noted; pitch DK + 8 keeps ldmatrix rows and cp.async 16-byte
// aligned and ldmatrix conflict-free):
//   sQ [64][P] | sK [2][32][P] | sV [2][32][P] | sP f32 [4 warps][16][32] | flag int [2]
#define GA_TC_BM 64
#define GA_TC_BN 32

// This thread's share of every K/V tile, fixed for the whole loop: chunk i (16 bytes) is key row
// jj0 + i * ROWS of the tile, dims d0 .. d0 + 7, where ROWS = GA_THREADS / (DK / 8) rows are
// covered per pass. Offsets are the tile's first key's; a tile adds j0 times the key stride.
struct GaTcCopy {
    ga_i64 k_off, v_off;  // elements from p.k / p.v to (b, key jj0, kvh, d0)
    int jj0, smem_off;    // row in the tile; jj0 * P + d0 in a stage
    bool k_ok, v_ok;      // d0 < head_dim / v_head_dim
};

template <int DK>
DEV GaTcCopy ga_tc_copy(const GaParams& p, int b, int kvh) {
    const int tid = threadIdx.x, jj0 = tid / (DK / 8), d0 = 8 * (tid % (DK / 8));
    GaTcCopy c;
    c.k_off = b * p.k_str[0] + kvh * p.k_str[2] + jj0 * p.k_str[1] + d0;
    c.v_off = b * p.v_str[0] + kvh * p.v_str[2] + jj0 * p.v_str[1] + d0;
    c.jj0 = jj0;
    c.smem_off = jj0 * (DK + 8) + d0;
    c.k_ok = d0 < p.head_dim;
    c.v_ok = d0 < p.v_head_dim;
    return c;
}

// Starts the copy of the tile at key j0 into the stage at shared addresses sk / sv (bytes).
template <int DK>
DEV void ga_tc_load_kv(const GaParams& p, const GaTcCopy& c, unsigned sk, unsigned sv, int* flag, ga_i64 j0) {
    constexpr int P = DK + 8, ROWS = GA_THREADS / (DK / 8);
    if (threadIdx.x == 0) *flag = 0;  // read after the barrier that follows this stage's wait
    const ga_i64 left = p.kv_len - j0 - c.jj0;  // keys from this thread's first row to the end
    const ga_i64 k0 = c.k_off + j0 * p.k_str[1], v0 = c.v_off + j0 * p.v_str[1];
    const unsigned short* k = (const unsigned short*)p.k;
    const unsigned short* v = (const unsigned short*)p.v;
    UNROLL for (int i = 0; i < GA_TC_BN / ROWS; ++i) {
        const bool in = i * ROWS < left, in_k = in && c.k_ok, in_v = in && c.v_ok;
        // Outside: zero-fill from the (valid, aligned) base address.
        const unsigned short* ks = k + (in_k ? k0 + (ga_i64)(i * ROWS) * p.k_str[1] : 0);
        const unsigned short* vs = v + (in_v ? v0 + (ga_i64)(i * ROWS) * p.v_str[1] : 0);
        const unsigned off = 2 * (c.smem_off + i * ROWS * P);
        ga_cp_async_cg16(sk + off, ks, in_k ? 16 : 0);
        ga_cp_async_cg16(sv + off, vs, in_v ? 16 : 0);
    }
}

// After this thread's wait: flags the stage when a V chunk this thread copied is not finite.
// Two values per 32-bit word: a half is non-finite iff its magnitude is at least the smallest
// non-finite one (f16 0x7c00, bf16 0x7f80); adding the distance to 0x8000 sets that half's
// bit 15 exactly then (no carry into the other half: 0x7fff plus it stays below 0x10000).
template <int DK, bool BF16>
DEV void ga_tc_check_v(const GaTcCopy& c, const unsigned short* sV, int* flag) {
    constexpr int P = DK + 8, ROWS = GA_THREADS / (DK / 8);
    const unsigned to_sign = BF16 ? 0x00800080u : 0x04000400u;
    unsigned bits = 0;
    UNROLL for (int i = 0; i < GA_TC_BN / ROWS; ++i) {
        const unsigned* w = (const unsigned*)(sV + c.smem_off + i * ROWS * P);  // 16-byte aligned chunk
        UNROLL for (int e = 0; e < 4; ++e) bits |= (w[e] & 0x7fff7fffu) + to_sign;
    }
    if (bits & 0x80008000u) *flag = 1;
}

DEV unsigned ga_tc_pack(float lo, float hi, bool bf16) {
    const unsigned a = bf16 ? ga_f2bf(lo) : ga_f2h(lo), b = bf16 ? ga_f2bf(hi) : ga_f2h(hi);
    return a | b << 16;
}

DEV float ga_tc_round(float x, bool bf16) { return bf16 ? ga_bf2f(ga_f2bf(x)) : ga_h2f(ga_f2h(x)); }

template <int DK, bool BF16, bool OPTS, bool SPLIT>
DEV void ga_attn_tc(const GaParams& p) {
    constexpr int P = DK + 8, NT = DK / 8, NK = GA_TC_BN / 8;  // n8 tiles of the output dims, of the keys
    DYN_SMEM(unsigned short, smem);
    unsigned short* sQ = smem;
    unsigned short* sK = sQ + GA_TC_BM * P;
    unsigned short* sV = sK + 2 * GA_TC_BN * P;
    float* sP = (float*)(sV + 2 * GA_TC_BN * P);
    int* sFlag = (int*)(sP + 4 * 16 * GA_TC_BN);
    const int G = p.group, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
    constexpr bool bf16 = BF16;
    // Without softcap, ALiBi or bias (OPTS false) a score is the scaled dot product; otherwise
    // ga_score runs over the warp's S tile in shared memory (one inlined copy, not one per
    // register: 16 copies made NVRTC's compile nine times slower).
    constexpr bool plain = !OPTS;
    const int row_tile = SPLIT ? (int)(blockIdx.x / p.n_splits) : (int)blockIdx.x;
    const int split = SPLIT ? (int)(blockIdx.x % p.n_splits) : 0;
    const int n_rows = p.q_len * G, r0 = row_tile * GA_TC_BM, kvh = blockIdx.y, b = blockIdx.z;
    const ga_i64 n = p.kv_len;

    // Q tile, rotated in f32 and rounded back to the storage type; rows and dims past the end zero.
    for (int idx = tid; idx < GA_TC_BM * DK; idx += GA_THREADS) {
        const int r = idx / DK, d = idx % DK, pr = r0 + r;
        float x = 0.f;
        if (pr < n_rows && d < p.head_dim) {
            const int i = pr / G, h = kvh * G + pr % G;
            const ga_i64 row = b * p.q_str[0] + i * p.q_str[1] + h * p.q_str[2];
            x = ga_load(p.q, row + d, p.q_dt);
            if (p.rope_cos && d < 2 * p.rope_half) {
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
        sQ[r * P + d] = bf16 ? ga_f2bf(x) : ga_f2h(x);
    }

    // The block's key tiles, as attn_fwd.cu: the union of its rows' ranges, cut to the split;
    // dead tiles between the sink prefix and the window are skipped (next_live). A split's
    // bounds are tile bounds, so no key outside it is in a tile.
    const int last = (r0 + GA_TC_BM < n_rows ? r0 + GA_TC_BM : n_rows) - 1;
    GaRowKeys first_keys = ga_row_keys(p, r0 / G), last_keys = ga_row_keys(p, (last < r0 ? r0 : last) / G);
    const ga_i64 lo_min = first_keys.lo, hi_max = last_keys.hi, sinks_max = last_keys.sinks_end;
    ga_i64 t_begin = sinks_max > 0 ? 0 : lo_min / GA_TC_BN, end = ga_min64(hi_max, n);
    if (SPLIT) {
        const ga_i64 s_lo = (ga_i64)split * p.split_len;
        t_begin = ga_max64(t_begin, s_lo / GA_TC_BN);
        end = ga_min64(end, s_lo + p.split_len);
    }
    const ga_i64 t_end = (end + GA_TC_BN - 1) / GA_TC_BN;
    // Full tiles show every key to every row of the block and skip the mask: hi, lo and
    // sinks_end grow with the row, so the first row's hi and sinks_end and the last row's lo bound
    // the block (rows past n_rows see all keys there too: their Q is zero and they are not stored).
    // Tile t is full iff t < full_end and (t >= full_lo or t < sink_full_end); kv_len < 2^31.
    const int full_end = (int)(first_keys.hi / GA_TC_BN), full_lo = (int)((last_keys.lo + GA_TC_BN - 1) / GA_TC_BN);
    const int sink_full_end = (int)(first_keys.sinks_end / GA_TC_BN);
    auto next_live = [&](ga_i64 t) -> ga_i64 {
        if (t * GA_TC_BN < sinks_max || t * GA_TC_BN + GA_TC_BN > lo_min) return t;
        return ga_max64(t, lo_min / GA_TC_BN);
    };

    // This lane's two rows: warp * 16 + g and + 8, with their key bounds in 32 bits (kv_len <
    // 2^31, checked by the host; fewer registers than GaRowKeys' three 64-bit bounds: the D 256
    // instantiations sit at ptxas' limit). The epilogue recomputes (query row, head).
    int key_hi[2], key_lo[2], key_se[2];
    float m[2], l[2], acc[NT][4];
    UNROLL for (int rr = 0; rr < 2; ++rr) {
        const int pr = r0 + warp * 16 + g + 8 * rr;
        const bool ok = pr < n_rows;
        const GaRowKeys k = ga_row_keys(p, (ok ? pr : r0) / G);
        key_hi[rr] = ok ? (int)k.hi : 0;  // a row past the end sees no key
        key_lo[rr] = (int)k.lo;
        key_se[rr] = (int)k.sinks_end;
        m[rr] = NEG_INF;
        l[rr] = 0.f;
    }
    UNROLL for (int t = 0; t < NT; ++t) UNROLL for (int i = 0; i < 4; ++i) acc[t][i] = 0.f;

    // Shared addresses (bytes) for ldmatrix and cp.async, this lane's part fixed before the loop
    // so that the loop adds constants only: Q rows warp * 16 + (lane & 15), dims 8 (lane >> 4);
    // K rows (lane & 7) + 8 (lane >> 4), dims 8 ((lane >> 3) & 1); V rows lane & 15, dims 8 (lane >> 4).
    constexpr unsigned STAGE = 2 * GA_TC_BN * P;  // bytes of one K or V stage
    const unsigned sk_u = ga_smem_u32(sK), sv_u = ga_smem_u32(sV);
    const unsigned q_lane = ga_smem_u32(sQ) + 2 * ((warp * 16 + (lane & 15)) * P + 8 * (lane >> 4));
    const unsigned k_lane = 2 * (((lane & 7) + 8 * (lane >> 4)) * P + 8 * ((lane >> 3) & 1));
    const unsigned v_lane = 2 * ((lane & 15) * P + 8 * (lane >> 4));
    const GaTcCopy cp = ga_tc_copy<DK>(p, b, kvh);

    ga_i64 tile = next_live(t_begin), next = 0;
    if (tile < t_end) ga_tc_load_kv<DK>(p, cp, sk_u, sv_u, sFlag, tile * GA_TC_BN);
    ga_cp_async_commit();
    // Thread 0 has zeroed the first stage's flag before any thread may set it (its check of the
    // first tile): without this barrier a thread that runs ahead flags a non-finite V in the
    // block's first tile and thread 0 then clears it (later stages are zeroed between barriers).
    __syncthreads();
    // In a split-KV decode, warps whose 16 rows all lie past the block's last row (a decode step
    // fills 4-16 rows of 64, all in warp 0) copy, wait and meet the barriers, and skip the math.
    // Not in the prefill (only its last row block has such warps) nor at D 256 (no registers to
    // spare for the two regions): there every warp runs the loop.
    const bool live = !SPLIT || DK == 256 || r0 + warp * 16 < n_rows;
    int s = 0;
    float sc[NK][4];  // S, then P, of the current tile (live across the cold path's exit)

    // Row rr's scores of the tile in base 2 (x = score · c, hidden keys -inf) in place, and the
    // row's new running max over its quad. A full tile skips the mask.
    const float c = plain ? p.scale * 1.4426950408889634f : 1.4426950408889634f;
    auto mask_and_max = [&](int rr, ga_i64 tile, ga_i64 j0) -> float {
        const int ti = (int)tile;
        const bool full = (ti < full_end) & ((ti >= full_lo) | (ti < sink_full_end));  // block-uniform
        float mx = NEG_INF;
        if (full) {
            UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int e = 0; e < 2; ++e) {
                float& x = sc[t][2 * rr + e];
                x *= c;
                mx = fmaxf(mx, x);
            }
        } else {
            // ga_visible relative to the tile, in 32 bits and without branches: each bound
            // clamped to [0, BN] keeps its comparison with a key of the tile exact (hi <= kv_len,
            // so keys past the end are hidden too).
            const int hi_t = (int)ga_clamp64(key_hi[rr] - j0, 0, GA_TC_BN);
            const int lo_t = (int)ga_clamp64(key_lo[rr] - j0, 0, GA_TC_BN);
            const int se_t = (int)ga_clamp64(key_se[rr] - j0, 0, GA_TC_BN);
            UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int e = 0; e < 2; ++e) {
                const int jr = 8 * t + 2 * q + e;
                float& x = sc[t][2 * rr + e];
                const bool vis = (jr < hi_t) & ((jr >= lo_t) | (jr < se_t));
                x = vis ? x * c : NEG_INF;
                mx = fmaxf(mx, x);
            }
        }
        mx = fmaxf(mx, SHFL_XOR(mx, 1));
        mx = fmaxf(mx, SHFL_XOR(mx, 2));
        return fmaxf(m[rr], mx);
    };
    for (;;) {
        // The K/V loop: the hot path only. A tile with a non-finite V leaves it after the softmax.
        for (; tile < t_end; s ^= 1, tile = next) {
            const ga_i64 j0 = tile * GA_TC_BN;
            next = next_live(tile + 1);
            const unsigned k_s = sk_u + s * STAGE + k_lane, v_s = sv_u + s * STAGE + v_lane;
            if (next < t_end)
                ga_tc_load_kv<DK>(p, cp, sk_u + (s ^ 1) * STAGE, sv_u + (s ^ 1) * STAGE, sFlag + (s ^ 1),
                                  next * GA_TC_BN);
            ga_cp_async_commit();
            ga_cp_async_wait<1>();
            ga_tc_check_v<DK, BF16>(cp, sV + s * GA_TC_BN * P, sFlag + s);
            __syncthreads();  // the tile (and its flag) from every thread is in shared memory

            if (live) {  // warp-uniform: a warp without rows only copies and waits
                // S (16 x BN) = Q_w Kᵀ: NK n8 key tiles, DK / 16 k-steps.
                UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int i = 0; i < 4; ++i) sc[t][i] = 0.f;
                UNROLL for (int kk = 0; kk < DK / 16; ++kk) {
                    unsigned a[4];
                    ga_ldsm_x4(a, q_lane + 2 * kk * 16);
                    UNROLL for (int pr = 0; pr < NK / 2; ++pr) {
                        unsigned r[4];
                        ga_ldsm_x4(r, k_s + 2 * (pr * 16 * P + kk * 16));
                        const unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                        if (bf16) {
                            ga_mma_bf16(sc[2 * pr], a, b0, sc[2 * pr]);
                            ga_mma_bf16(sc[2 * pr + 1], a, b1, sc[2 * pr + 1]);
                        } else {
                            ga_mma_f16(sc[2 * pr], a, b0, sc[2 * pr]);
                            ga_mma_f16(sc[2 * pr + 1], a, b1, sc[2 * pr + 1]);
                        }
                    }
                }
                if (OPTS) {
                    float* w = sP + warp * 16 * GA_TC_BN;
                    UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int i = 0; i < 4; ++i)
                        w[(g + 8 * (i >> 1)) * GA_TC_BN + 8 * t + 2 * q + (i & 1)] = sc[t][i];
                    SYNCWARP();
                    for (int e = lane; e < 16 * GA_TC_BN; e += 32) {
                        const int pr = r0 + warp * 16 + e / GA_TC_BN;
                        const ga_i64 j = j0 + e % GA_TC_BN;
                        if (pr < n_rows && j < n) w[e] = ga_score(p, w[e], b, kvh * G + pr % G, pr / G, j);
                    }
                    SYNCWARP();
                    UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int i = 0; i < 4; ++i)
                        sc[t][i] = w[(g + 8 * (i >> 1)) * GA_TC_BN + 8 * t + 2 * q + (i & 1)];
                    SYNCWARP();  // w is reused below
                }
                // Scores in base 2 (x = score · log2 e, so P = 2^(x - m) is one MUFU.EX2), masks and
                // the online softmax; sc[t][i] is row g + 8 (i >> 1), key 8 t + 2 q + (i & 1). A
                // hidden key's x is -inf and its P exactly 0: m_use keeps 2^(x - m) defined while a
                // row has seen no key (m = -inf), and a NaN score stays NaN through P, l and O.
                float alpha[2];
                UNROLL for (int rr = 0; rr < 2; ++rr) {
                    const float m_new = mask_and_max(rr, tile, j0);
                    const float m_use = m_new == NEG_INF ? 0.f : m_new;
                    alpha[rr] = ga_exp2_ftz(m[rr] - m_use);
                    float sum = 0.f;
                    UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int e = 0; e < 2; ++e) {
                        float& x = sc[t][2 * rr + e];
                        x = ga_exp2_ftz(x - m_use);
                        sum += x;
                    }
                    sum += SHFL_XOR(sum, 1);
                    sum += SHFL_XOR(sum, 2);
                    l[rr] = l[rr] * alpha[rr] + sum;  // from the f32 P, as FlashAttention-2
                    m[rr] = m_new;
                }
                UNROLL for (int t = 0; t < NT; ++t) UNROLL for (int i = 0; i < 4; ++i) acc[t][i] *= alpha[i >> 1];
            }
            if (sFlag[s] != 0) break;  // block-uniform: the flag was set before the barrier above
            if (live) {
                // O += P V: P's S fragments are the A fragments (keys 16 kk ... of rows g, g + 8), rounded.
                UNROLL for (int kk = 0; kk < GA_TC_BN / 16; ++kk) {
                    unsigned a[4];
                    UNROLL for (int r = 0; r < 4; ++r) {
                        const float* src = sc[2 * kk + (r >> 1)] + 2 * (r & 1);
                        a[r] = ga_tc_pack(src[0], src[1], bf16);
                    }
                    UNROLL for (int t2 = 0; t2 < NT / 2; ++t2) {
                        unsigned r[4];
                        ga_ldsm_x4_t(r, v_s + 2 * (kk * 16 * P + t2 * 16));
                        const unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                        if (bf16) {
                            ga_mma_bf16(acc[2 * t2], a, b0, acc[2 * t2]);
                            ga_mma_bf16(acc[2 * t2 + 1], a, b1, acc[2 * t2 + 1]);
                        } else {
                            ga_mma_f16(acc[2 * t2], a, b0, acc[2 * t2]);
                            ga_mma_f16(acc[2 * t2 + 1], a, b1, acc[2 * t2 + 1]);
                        }
                    }
                }
            }
            __syncthreads();  // stage s is refilled by the next iteration's prefetch
        }
        if (tile >= t_end) break;
        if (live) {
            // Cold path, the tile in stage s holds a non-finite V: scalar P V that never touches
            // a hidden key's V row; then on to the next tile.
            const unsigned short* v_s = sV + s * GA_TC_BN * P;
            // P from the hot loop's softmax; a key the mask hides gets -1 and its V row is never
            // read, as the reference skips it (a visible key's P may be 0, from underflow or a -inf
            // bias, and still meets its V: 0 · NaN is NaN there too).
            const ga_i64 j0 = tile * GA_TC_BN;
            float* w = sP + warp * 16 * GA_TC_BN;
            UNROLL for (int t = 0; t < NK; ++t) UNROLL for (int i = 0; i < 4; ++i) {
                const int rr = i >> 1;
                const ga_i64 j = j0 + 8 * t + 2 * q + (i & 1);
                const bool vis = j < key_hi[rr] && (j >= key_lo[rr] || j < key_se[rr]);  // ga_visible
                w[(g + 8 * rr) * GA_TC_BN + 8 * t + 2 * q + (i & 1)] = vis ? ga_tc_round(sc[t][i], bf16) : -1.f;
            }
            SYNCWARP();
            for (int jj = 0; jj < GA_TC_BN; ++jj) {  // keys outermost: one unrolled body, not NT * 4 loops
                const float p0 = w[g * GA_TC_BN + jj], p1 = w[(g + 8) * GA_TC_BN + jj];
                UNROLL for (int t = 0; t < NT; ++t) UNROLL for (int i = 0; i < 4; ++i) {
                    const float pk = i < 2 ? p0 : p1;
                    const unsigned short h = v_s[jj * P + 8 * t + 2 * q + (i & 1)];
                    if (!(pk < 0.f)) acc[t][i] += pk * (bf16 ? ga_bf2f(h) : ga_h2f(h));  // NaN P too
                }
            }
            SYNCWARP();
        }
        __syncthreads();  // as at the end of the hot loop's body
        s ^= 1;
        tile = next;
    }
    ga_cp_async_wait<0>();

    // Epilogue per row: the learned sink, normalisation (no weight: zeros, LSE -inf), gate, store;
    // m back from base 2 to natural units (as the combine and the LSE take it).
    UNROLL for (int rr = 0; rr < 2; ++rr) {
        const int pr = r0 + warp * 16 + g + 8 * rr;
        if (pr >= n_rows) continue;
        m[rr] *= 0.6931471805599453f;
        const int i = pr / G, h = kvh * G + pr % G;
        if (SPLIT) {
            // workspace [batch, q_heads, q_len, n_splits, Dv + 2]: acc, then m and l (attn_split_dN's)
            const int Dv = p.v_head_dim;
            float* w = (float*)p.work + ((((ga_i64)b * p.q_heads + h) * p.q_len + i) * p.n_splits + split) * (Dv + 2);
            UNROLL for (int t = 0; t < NT; ++t) UNROLL for (int e = 0; e < 2; ++e) {
                const int d = 8 * t + 2 * q + e;
                if (d < Dv) w[d] = acc[t][2 * rr + e];
            }
            if (q == 0) {
                w[Dv] = m[rr];
                w[Dv + 1] = l[rr];
            }
            continue;
        }
        float mr = m[rr], lr = l[rr], a = 1.f;
        if (p.sinks) {
            const float sk = ((const float*)p.sinks)[h], mf = fmaxf(mr, sk);
            if (mf != NEG_INF) {
                a = EXPF(mr - mf);
                lr = lr * a + EXPF(sk - mf);
                mr = mf;
            }
        }
        const float inv = lr == 0.f ? 0.f : a / lr;
        const ga_i64 o_row = b * p.o_str[0] + i * p.o_str[1] + h * p.o_str[2];
        UNROLL for (int t = 0; t < NT; ++t) UNROLL for (int e = 0; e < 2; ++e) {
            const int d = 8 * t + 2 * q + e;
            if (d < p.v_head_dim) {
                float y = acc[t][2 * rr + e] * inv;
                if (p.gate) y = ga_gate(p, b, i, h, d, y);
                ga_store(p.out, o_row + d, p.o_dt, y);
            }
        }
        if (p.lse && q == 0) {
            ((float*)p.lse)[((ga_i64)b * p.q_heads + h) * p.q_len + i] = lr == 0.f ? NEG_INF : mr + LOGF(lr);
        }
    }
}

// Entry points: head class, storage type, and _opt for the score-option pass; attn_split_tc_*
// is the split-KV decode (SPLIT). KERNEL_BLOCKS(n) caps registers so that n blocks fit an SM
// (the blocks sm_90's shared memory allows: d64 4, d128 3, d256 2), where ptxas then needs no
// spill (kernels/ptxas/); without the cap its allocation drifts across those thresholds with
// small source changes. Uncapped: the d128 _opt kernels (about 133 registers, 3 blocks anyway)
// and the split-KV d128 and d64 _opt kernels (2 and 3 blocks; capped, they would spill).
KERNEL_BLOCKS(4) void attn_fwd_tc_d64_f16(const GaParams p) { ga_attn_tc<64, false, false, false>(p); }
KERNEL_BLOCKS(4) void attn_fwd_tc_d64_bf16(const GaParams p) { ga_attn_tc<64, true, false, false>(p); }
KERNEL_BLOCKS(4) void attn_fwd_tc_d64_f16_opt(const GaParams p) { ga_attn_tc<64, false, true, false>(p); }
KERNEL_BLOCKS(4) void attn_fwd_tc_d64_bf16_opt(const GaParams p) { ga_attn_tc<64, true, true, false>(p); }
KERNEL_BLOCKS(3) void attn_fwd_tc_d128_f16(const GaParams p) { ga_attn_tc<128, false, false, false>(p); }
KERNEL_BLOCKS(3) void attn_fwd_tc_d128_bf16(const GaParams p) { ga_attn_tc<128, true, false, false>(p); }
KERNEL void attn_fwd_tc_d128_f16_opt(const GaParams p) { ga_attn_tc<128, false, true, false>(p); }
KERNEL void attn_fwd_tc_d128_bf16_opt(const GaParams p) { ga_attn_tc<128, true, true, false>(p); }
KERNEL_BLOCKS(2) void attn_fwd_tc_d256_f16(const GaParams p) { ga_attn_tc<256, false, false, false>(p); }
KERNEL_BLOCKS(2) void attn_fwd_tc_d256_bf16(const GaParams p) { ga_attn_tc<256, true, false, false>(p); }
KERNEL_BLOCKS(2) void attn_fwd_tc_d256_f16_opt(const GaParams p) { ga_attn_tc<256, false, true, false>(p); }
KERNEL_BLOCKS(2) void attn_fwd_tc_d256_bf16_opt(const GaParams p) { ga_attn_tc<256, true, true, false>(p); }
KERNEL_BLOCKS(4) void attn_split_tc_d64_f16(const GaParams p) { ga_attn_tc<64, false, false, true>(p); }
KERNEL_BLOCKS(4) void attn_split_tc_d64_bf16(const GaParams p) { ga_attn_tc<64, true, false, true>(p); }
KERNEL void attn_split_tc_d64_f16_opt(const GaParams p) { ga_attn_tc<64, false, true, true>(p); }
KERNEL void attn_split_tc_d64_bf16_opt(const GaParams p) { ga_attn_tc<64, true, true, true>(p); }
KERNEL void attn_split_tc_d128_f16(const GaParams p) { ga_attn_tc<128, false, false, true>(p); }
KERNEL void attn_split_tc_d128_bf16(const GaParams p) { ga_attn_tc<128, true, false, true>(p); }
KERNEL void attn_split_tc_d128_f16_opt(const GaParams p) { ga_attn_tc<128, false, true, true>(p); }
KERNEL void attn_split_tc_d128_bf16_opt(const GaParams p) { ga_attn_tc<128, true, true, true>(p); }
KERNEL_BLOCKS(2) void attn_split_tc_d256_f16(const GaParams p) { ga_attn_tc<256, false, false, true>(p); }
KERNEL_BLOCKS(2) void attn_split_tc_d256_bf16(const GaParams p) { ga_attn_tc<256, true, false, true>(p); }
KERNEL_BLOCKS(2) void attn_split_tc_d256_f16_opt(const GaParams p) { ga_attn_tc<256, false, true, true>(p); }
KERNEL_BLOCKS(2) void attn_split_tc_d256_bf16_opt(const GaParams p) { ga_attn_tc<256, true, true, true>(p); }
