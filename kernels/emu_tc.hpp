// CPU twins of the tensor-core helpers of compat_cuda.cuh (tests only; included by emu_fiber.hpp
// in both modes). Each instruction is a warp collective, as `.sync.aligned` says: every lane
// deposits its operands (registers or a row address) in the warp's exchange, a warp barrier,
// each lane computes its own outputs from the whole warp's operands, a second warp barrier
// (nobody refills the exchange before everyone has read it). All 32 lanes must issue the same
// variant, else the launch fails ("divergent"); a lane that skips it deadlocks the warp, which
// the scheduler reports.
//
// Layouts: PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "Warp-level matrix load instruction: ldmatrix", cross-checked lane by lane against CuTe's
// SM80_16x8x16_F32F16F16F32_TN and SM75_U32x4_LDSM_N / SM75_U16x8_LDSM_T traits
// (/work/shared/spec/CUDA_TENSOR_CORES.md §1). lane = g*4 + q (g: groupID, q: thread in group);
// "low half" is bits 0-15 of a .b32 register and holds the element with the lower index.
//
// cp.async: the source is read at issue (ASan blames the issuing line), the destination is
// poisoned (0xFF: f16/bf16/f32 NaN) at issue and written only when the issuing thread's
// wait_group retires its group, so reading it early — by the issuer before its wait, or by
// another thread before a __syncthreads that follows that wait — sees NaN.
//
// Planted faults (cuda-emu's TC variants; each must fail tests/tc_instructions.rs):
//   GA_FAULT_TC_A_LAYOUT      A: the two "+8" bits swapped (rows and k halves exchanged)
//   GA_FAULT_TC_A_TRANSPOSED  A read as its transpose
//   GA_FAULT_TC_B_HALVES      B: the two halves of each register swapped
//   GA_FAULT_TC_C_LAYOUT      C/D: c1 and c2 exchanged
//   GA_FAULT_TC_NO_TRANS      ldmatrix ignores .trans
//   GA_FAULT_TC_LDSM_SHIFT    ldmatrix takes row r of a matrix from the lane of row r+1 (mod 8)

enum { EMU_MMA_F16 = 1, EMU_MMA_BF16 = 2 };

static inline float emu_half_to_float(unsigned h, bool bf16) {
    h &= 0xffffu;
    return bf16 ? std::bit_cast<float>(h << 16) : (float)std::bit_cast<_Float16>((unsigned short)h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A(16x16) B(16x8) + C.
// Products and sum in double, one rounding to f32 (the hardware's internal order and precision
// are not documented; tests use exactly representable data). d may alias c.
static inline void emu_mma_16816(float* d, const unsigned* a, const unsigned* b, const float* c, unsigned op) {
    EmuTcExch& x = emu_tc_warp();
    const unsigned lane = emu_linear() % 32;
    const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
    x.op[lane] = op;
    for (int r = 0; r < 4; ++r) x.a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) x.b[lane][r] = b[r];
    emu_warp_barrier(EMU_COLL_MMA);
    for (unsigned l = 0; l < 32; ++l)
        if (x.op[l] != op) emu_error("divergent warp collective: lanes of one warp at different mma variants");
    const bool bf16 = op == EMU_MMA_BF16;
    // The whole A and B from every lane's registers; NaN where no lane supplies an element, so a
    // layout that is not a bijection shows.
    double A[16][16], B[16][8];
    for (auto& row : A)
        for (double& e : row) e = NAN;
    for (auto& row : B)
        for (double& e : row) e = NAN;
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, q = l & 3;
        for (unsigned i = 0; i < 8; ++i) {  // a_i: register i/2, half i%2
            const unsigned h = x.a[l][i / 2] >> (16 * (i & 1));
#ifdef GA_FAULT_TC_A_LAYOUT
            const unsigned row = g + 8 * (i >= 4), col = 2 * q + (i & 1) + 8 * ((i >> 1) & 1);
#else
            const unsigned row = g + 8 * ((i >> 1) & 1), col = 2 * q + (i & 1) + 8 * (i >= 4);
#endif
#ifdef GA_FAULT_TC_A_TRANSPOSED
            A[col][row] = emu_half_to_float(h, bf16);
#else
            A[row][col] = emu_half_to_float(h, bf16);
#endif
        }
        for (unsigned i = 0; i < 4; ++i) {  // b_i: register i/2, half i%2
#ifdef GA_FAULT_TC_B_HALVES
            const unsigned h = x.b[l][i / 2] >> (16 * (1 - (i & 1)));
#else
            const unsigned h = x.b[l][i / 2] >> (16 * (i & 1));
#endif
            B[2 * q + (i & 1) + 8 * (i >= 2)][g] = emu_half_to_float(h, bf16);
        }
    }
    const unsigned g = lane >> 2, q = lane & 3;
    const float cin[4] = {c0, c1, c2, c3};
    float out[4];
    for (unsigned i = 0; i < 4; ++i) {  // c_i / d_i: row g (+8 for i >= 2), col 2q + i%2
        const unsigned row = g + 8 * (i >= 2), col = 2 * q + (i & 1);
        double s = cin[i];
        for (unsigned k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        out[i] = (float)s;
    }
#ifdef GA_FAULT_TC_C_LAYOUT
    std::swap(out[1], out[2]);
#endif
    for (int i = 0; i < 4; ++i) d[i] = out[i];
    emu_warp_barrier(EMU_COLL_MMA);
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: matrix j's 8 row addresses come from
// lanes 8j..8j+7 (16 contiguous, 16-byte aligned bytes each); register j of lane l holds matrix
// j's row g, cols 2q/2q+1, or with .trans its col g, rows 2q/2q+1.
static inline void emu_ldmatrix(unsigned* r, unsigned addr, unsigned nmat, bool trans) {
    EmuTcExch& x = emu_tc_warp();
    const unsigned lane = emu_linear() % 32;
    const unsigned op = nmat * 2 + (trans ? 1 : 0);
    x.op[lane] = op;
    x.addr[lane] = addr;
    emu_warp_barrier(EMU_COLL_LDSM);
    for (unsigned l = 0; l < 32; ++l)
        if (x.op[l] != op) emu_error("divergent warp collective: lanes of one warp at different ldmatrix variants");
    const size_t size = emu_smem_size();
    for (unsigned l = 0; l < 8 * nmat; ++l) {
        if (x.addr[l] % 16 != 0 || (size_t)x.addr[l] + 16 > size) {
            char msg[160];
            snprintf(msg, sizeof msg, "ldmatrix: lane %u row address 0x%x not 16-byte aligned or outside the %zu bytes of shared memory", l,
                     x.addr[l], size);
            emu_error(msg);
        }
    }
    const unsigned char* smem = EMU_SMEM;
    const unsigned g = lane >> 2, q = lane & 3;
    auto half = [&](unsigned j, unsigned row, unsigned col) {
#ifdef GA_FAULT_TC_LDSM_SHIFT
        row = (row + 1) % 8;
#endif
        unsigned short h;
        memcpy(&h, smem + x.addr[8 * j + row] + 2 * col, 2);
        return (unsigned)h;
    };
#ifdef GA_FAULT_TC_NO_TRANS
    trans = false;
#endif
    for (unsigned j = 0; j < nmat; ++j) {
        r[j] = trans ? half(j, 2 * q, g) | half(j, 2 * q + 1, g) << 16 : half(j, g, 2 * q) | half(j, g, 2 * q + 1) << 16;
    }
    emu_warp_barrier(EMU_COLL_LDSM);
}

// cp.async.{ca,cg}.shared.global [dst], [src], size, src_size.
static inline void emu_cp_async(unsigned dst, const void* src, unsigned size, int src_size, bool cg) {
    char msg[200];
    msg[0] = 0;
    if (size != 4 && size != 8 && size != 16) {
        snprintf(msg, sizeof msg, "cp.async: cp-size %u (must be 4, 8 or 16)", size);
    } else if (cg && size != 16) {
        snprintf(msg, sizeof msg, "cp.async.cg: cp-size %u (must be 16)", size);
    } else if (dst % size != 0 || (uintptr_t)src % size != 0) {
        snprintf(msg, sizeof msg, "cp.async: dst 0x%x or src %p not %u-byte aligned", dst, src, size);
    } else if ((size_t)dst + size > emu_smem_size()) {
        snprintf(msg, sizeof msg, "cp.async: dst 0x%x + %u past the %zu bytes of shared memory", dst, size,
                 emu_smem_size());
    } else if (src_size < 0 || (unsigned)src_size > size) {
        snprintf(msg, sizeof msg, "cp.async: src-size %d outside [0, %u]", src_size, size);
    }
    if (msg[0]) emu_error(msg);
    EmuCpCopy c;
    c.dst = dst;
    c.size = size;
    c.src_n = (unsigned)src_size;
    memset(c.bytes, 0, sizeof c.bytes);
    if (src_size > 0) memcpy(c.bytes, src, (size_t)src_size);
    memset(EMU_SMEM + dst, 0xFF, size);
    emu_cp_thread().open.push_back(c);
}

static inline void emu_cp_async_commit() {
    EmuCpThread& t = emu_cp_thread();
    t.groups.push_back(std::move(t.open));  // possibly empty: trivially complete
    t.open.clear();
}

static inline void emu_cp_async_wait(unsigned n) {
    EmuCpThread& t = emu_cp_thread();
    size_t done = 0;
    for (; t.groups.size() - done > n; ++done) {
        for (const EmuCpCopy& c : t.groups[done]) memcpy(EMU_SMEM + c.dst, c.bytes, c.size);  // zero-filled tail
    }
    t.groups.erase(t.groups.begin(), t.groups.begin() + (ptrdiff_t)done);
}

// The portable names (compat_cuda.cuh has the NVRTC versions).
DEV unsigned ga_smem_u32(const void* p) {
    const unsigned char* c = (const unsigned char*)p;
    if (c < EMU_SMEM || c > EMU_SMEM + emu_smem_size()) emu_error("ga_smem_u32: pointer outside shared memory");
    return (unsigned)(c - EMU_SMEM);
}
DEV void ga_mma_f16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    emu_mma_16816(d, a, b, c, EMU_MMA_F16);
}
DEV void ga_mma_bf16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    emu_mma_16816(d, a, b, c, EMU_MMA_BF16);
}
DEV void ga_ldsm_x1(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 1, false); }
DEV void ga_ldsm_x2(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 2, false); }
DEV void ga_ldsm_x4(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 4, false); }
DEV void ga_ldsm_x1_t(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 1, true); }
DEV void ga_ldsm_x2_t(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 2, true); }
DEV void ga_ldsm_x4_t(unsigned* r, unsigned addr) { emu_ldmatrix(r, addr, 4, true); }
DEV void ga_cp_async_cg16(unsigned dst, const void* src, int src_bytes) { emu_cp_async(dst, src, 16, src_bytes, true); }
template <int N>
DEV void ga_cp_async_ca(unsigned dst, const void* src, int src_bytes) {
    emu_cp_async(dst, src, N, src_bytes, false);
}
DEV void ga_cp_async_commit() { emu_cp_async_commit(); }
template <int N>
DEV void ga_cp_async_wait() {
    emu_cp_async_wait(N);
}
