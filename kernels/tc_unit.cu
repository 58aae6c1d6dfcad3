// Unit kernels of the tensor-core helpers (compat_cuda.cuh / emu_tc.hpp): each instruction alone,
// then all of them in a double-buffered GEMM. cuda-emu/tests/tc_instructions.rs checks them on the
// emulator against naive products with a distinct value in every element; on a GPU they are the
// first thing to run (same inputs, same checks) before trusting a tensor-core kernel.
// Arguments (GaParams, reused): q/k/v inputs, out the output, q_dt GA_DT_F16 or GA_DT_BF16,
// window a test mode (0: normal; others plant a misuse the emulator must reject).

// One warp: D(16x8) = A(16x16) B(16x8) + C with fragments read straight from global memory by
// the PTX fragment formulas. q: A [16][16] row-major; k: B stored [n][k] ([8][16]); v: C f32
// [16][8]; out: D f32 [16][8]. Mode 1: only lanes 0-15 issue the mma (must deadlock).
KERNEL void tc_mma(const GaParams p) {
    const unsigned short* A = (const unsigned short*)p.q;
    const unsigned short* B = (const unsigned short*)p.k;
    const float* C = (const float*)p.v;
    float* D = (float*)p.out;
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    unsigned a[4], b[2];
    float c[4];
    for (int r = 0; r < 4; ++r) {  // a_{2r}, a_{2r+1}: row g (+8 if r odd), cols 2q, 2q+1 (+8 if r >= 2)
        const int row = g + 8 * (r & 1), col = 2 * q + 8 * (r >> 1);
        a[r] = (unsigned)A[row * 16 + col] | (unsigned)A[row * 16 + col + 1] << 16;
    }
    for (int r = 0; r < 2; ++r) {  // b_{2r}, b_{2r+1}: k = 2q (+8 if r = 1) and the next, n = g
        const int k = 2 * q + 8 * r;
        b[r] = (unsigned)B[g * 16 + k] | (unsigned)B[g * 16 + k + 1] << 16;
    }
    for (int i = 0; i < 4; ++i) c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * q + (i & 1)];
    if (p.window != 1 || lane < 16) {
        if (p.q_dt == GA_DT_BF16) {
            ga_mma_bf16(c, a, b, c);  // in place: d aliases c
        } else {
            ga_mma_f16(c, a, b, c);
        }
    }
    for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * q + (i & 1)] = c[i];
}

// One warp: a 16x16 b16 tile (q, row-major) into shared memory (rows padded to 24 halves), then
// ldmatrix in 7 forms; out: u32 [7][32 lanes][4 registers] (unused registers 0).
//   0-5: x1, x2, x4, x1.trans, x2.trans, x4.trans with lane l addressing row l & 15, 8-column
//        block l >> 4 (the A-fragment recipe);
//   6:   x4 with lane l addressing row (l & 7) + 8 (l >> 4), block (l >> 3) & 1 (B stored [n][k]).
// Mode 1: every address 2 bytes off (must be rejected).
KERNEL void tc_ldsm(const GaParams p) {
    DYN_SMEM(unsigned short, sT);
    const unsigned short* T = (const unsigned short*)p.q;
    unsigned* out = (unsigned*)p.out;
    const int lane = threadIdx.x & 31;
    for (int i = lane; i < 256; i += 32) sT[(i / 16) * 24 + i % 16] = T[i];
    __syncthreads();
    const int off = p.window == 1 ? 1 : 0;
    const unsigned a_map = ga_smem_u32(sT + (lane & 15) * 24 + 8 * (lane >> 4) + off);
    const unsigned nk_map = ga_smem_u32(sT + ((lane & 7) + 8 * (lane >> 4)) * 24 + 8 * ((lane >> 3) & 1) + off);
    unsigned r[7][4];
    for (int t = 0; t < 7; ++t)
        for (int j = 0; j < 4; ++j) r[t][j] = 0;
    ga_ldsm_x1(r[0], a_map);
    ga_ldsm_x2(r[1], a_map);
    ga_ldsm_x4(r[2], a_map);
    ga_ldsm_x1_t(r[3], a_map);
    ga_ldsm_x2_t(r[4], a_map);
    ga_ldsm_x4_t(r[5], a_map);
    ga_ldsm_x4(r[6], nk_map);
    for (int t = 0; t < 7; ++t)
        for (int j = 0; j < 4; ++j) out[(t * 32 + lane) * 4 + j] = r[t][j];
}

// 128 threads, three copies each in two commit groups: group 1 is 16 bytes
// per thread (.cg); group 2 is 8 bytes (.ca, src-size 4 for every third thread: zero-filled)
// and 4 bytes (.ca, src-size 0 for every fifth thread). After wait_group 1 + __syncthreads each
// thread reads ANOTHER thread's group-1 chunk (rotated by 37), after wait_group 0 its group-2
// chunks. q: source, 128 x 28 bytes as [16 B | 8 B | 4 B]; out: 128 x 28 bytes in the same order.
KERNEL void tc_cp_async(const GaParams p) {
    DYN_SMEM(unsigned char, s);
    const unsigned char* src = (const unsigned char*)p.q;
    unsigned* out = (unsigned*)p.out;
    const int t = threadIdx.x, other = (t + 37) % 128;
    unsigned char* s16 = s;
    unsigned char* s8 = s + 128 * 16;
    unsigned char* s4 = s8 + 128 * 8;
    ga_cp_async_cg16(ga_smem_u32(s16 + 16 * t), src + 16 * t, 16);
    ga_cp_async_commit();
    ga_cp_async_ca<8>(ga_smem_u32(s8 + 8 * t), src + 128 * 16 + 8 * t, t % 3 == 0 ? 4 : 8);
    ga_cp_async_ca<4>(ga_smem_u32(s4 + 4 * t), src + 128 * 24 + 4 * t, t % 5 == 0 ? 0 : 4);
    ga_cp_async_commit();
#ifndef GA_FAULT_TC_NO_WAIT
    ga_cp_async_wait<1>();
#endif
    __syncthreads();
    for (int w = 0; w < 4; ++w) out[other * 4 + w] = ((const unsigned*)(s16 + 16 * other))[w];
    ga_cp_async_wait<0>();
    __syncthreads();
    for (int w = 0; w < 2; ++w) out[128 * 4 + other * 2 + w] = ((const unsigned*)(s8 + 8 * other))[w];
    out[128 * 6 + other] = *(const unsigned*)(s4 + 4 * other);
}

// C (f32, [M][N]) = A ([M][K], row-major) . B, B stored [K][N] (causal == 0: V-like, loaded with
// ldmatrix.trans) or [N][K] (causal == 1: K-like, plain ldmatrix). M = q_len, N = kv_len,
// K = head_dim, multiples of 64, 64, 32. Block 128 threads = 2x2 warps of 32x32; 64x64 tile per
// block (grid M/64 x N/64); k-tiles of 32 through a 2-stage cp.async pipeline. Shared rows are
// padded by 8 halves (16 B: keeps ldmatrix and cp.async aligned, and ldmatrix conflict-free).
#define TC_GEMM_BK 32
#define TC_GEMM_AP 40  // A / [n][k] B row pitch (halves)
#define TC_GEMM_BP 72  // [k][n] B row pitch (halves)

DEV void tc_gemm_load(const GaParams& p, unsigned short* sA, unsigned short* sB, int kt) {
    const int K = p.head_dim, N = p.kv_len, tid = threadIdx.x;
    const int m0 = blockIdx.x * 64, n0 = blockIdx.y * 64, k0 = kt * TC_GEMM_BK;
    const unsigned short* A = (const unsigned short*)p.q;
    const unsigned short* B = (const unsigned short*)p.k;
    // Fixed trip counts: a runtime-bounded copy loop compiles to several loops.
    for (int i = 0; i < 2; ++i) {  // A: 64 rows x 4 chunks of 8 halves
        const int c = tid + i * 128, row = c >> 2, ch = c & 3;
        ga_cp_async_cg16(ga_smem_u32(sA + row * TC_GEMM_AP + ch * 8), A + (ga_i64)(m0 + row) * K + k0 + ch * 8, 16);
    }
    for (int i = 0; i < 2; ++i) {
        const int c = tid + i * 128;
        if (p.causal) {  // [n][k]: 64 rows x 4 chunks
            const int row = c >> 2, ch = c & 3;
            ga_cp_async_cg16(ga_smem_u32(sB + row * TC_GEMM_AP + ch * 8), B + (ga_i64)(n0 + row) * K + k0 + ch * 8,
                             16);
        } else {  // [k][n]: 32 rows x 8 chunks
            const int row = c >> 3, ch = c & 7;
            ga_cp_async_cg16(ga_smem_u32(sB + row * TC_GEMM_BP + ch * 8), B + (ga_i64)(k0 + row) * N + n0 + ch * 8,
                             16);
        }
    }
}

KERNEL void tc_gemm(const GaParams p) {
    DYN_SMEM(unsigned short, smem);
    const int stage_a = 64 * TC_GEMM_AP, stage_b = 64 * TC_GEMM_AP;  // >= 32 * TC_GEMM_BP
    unsigned short* sA = smem;
    unsigned short* sB = smem + 2 * stage_a;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, q = lane & 3;
    const int KT = p.head_dim / TC_GEMM_BK;
    const bool bf16 = p.q_dt == GA_DT_BF16;
    float acc[2][4][4];
    UNROLL for (int mi = 0; mi < 2; ++mi) UNROLL for (int ni = 0; ni < 4; ++ni) UNROLL for (int i = 0; i < 4; ++i)
        acc[mi][ni][i] = 0.f;

    tc_gemm_load(p, sA, sB, 0);
    ga_cp_async_commit();
    for (int kt = 0; kt < KT; ++kt) {
        const int s = kt & 1;
        if (kt + 1 < KT) tc_gemm_load(p, sA + (s ^ 1) * stage_a, sB + (s ^ 1) * stage_b, kt + 1);
        ga_cp_async_commit();  // every iteration, possibly empty: group counts stay uniform
#ifndef GA_FAULT_TC_NO_WAIT
        ga_cp_async_wait<1>();  // this thread's tile kt has landed
#endif
        __syncthreads();  // ... and everyone else's
        const unsigned short* a_s = sA + s * stage_a;
        const unsigned short* b_s = sB + s * stage_b;
        UNROLL for (int kk = 0; kk < TC_GEMM_BK / 16; ++kk) {
            unsigned a[2][4], b[4][2];
            UNROLL for (int mi = 0; mi < 2; ++mi) {
                const int row = wm * 32 + mi * 16 + (lane & 15), col = kk * 16 + 8 * (lane >> 4);
                ga_ldsm_x4(a[mi], ga_smem_u32(a_s + row * TC_GEMM_AP + col));
            }
            UNROLL for (int pr = 0; pr < 2; ++pr) {  // two n8 tiles per ldmatrix.x4
                unsigned r[4];
                if (p.causal) {
#ifdef GA_FAULT_TC_NK_A_MAP
                    const int n = wn * 32 + pr * 16 + (lane & 15), k = kk * 16 + 8 * (lane >> 4);
#else
                    const int n = wn * 32 + pr * 16 + (lane & 7) + 8 * (lane >> 4), k = kk * 16 + 8 * ((lane >> 3) & 1);
#endif
                    ga_ldsm_x4(r, ga_smem_u32(b_s + n * TC_GEMM_AP + k));
                } else {
                    const int k = kk * 16 + (lane & 15), n = wn * 32 + pr * 16 + 8 * (lane >> 4);
                    ga_ldsm_x4_t(r, ga_smem_u32(b_s + k * TC_GEMM_BP + n));
                }
                b[2 * pr][0] = r[0];
                b[2 * pr][1] = r[1];
                b[2 * pr + 1][0] = r[2];
                b[2 * pr + 1][1] = r[3];
            }
            UNROLL for (int mi = 0; mi < 2; ++mi) UNROLL for (int ni = 0; ni < 4; ++ni) {
                if (bf16) {
                    ga_mma_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
                } else {
                    ga_mma_f16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
                }
            }
        }
#ifndef GA_FAULT_TC_NO_TRAILING_SYNC
        __syncthreads();  // stage s is refilled by the next iteration's prefetch
#endif
    }
    float* C = (float*)p.out;
    const int N = p.kv_len;
    UNROLL for (int mi = 0; mi < 2; ++mi) UNROLL for (int ni = 0; ni < 4; ++ni) UNROLL for (int i = 0; i < 4; ++i) {
        const int row = blockIdx.x * 64 + wm * 32 + mi * 16 + g + 8 * (i >> 1);
        const int col = blockIdx.y * 64 + wn * 32 + ni * 8 + 2 * q + (i & 1);
        C[(ga_i64)row * N + col] = acc[mi][ni][i];
    }
}
