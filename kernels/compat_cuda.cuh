// NVRTC prelude of the portable kernel subset (see kernels/README.md). The kernels use only the
// macros and helpers defined here; kernels/emu_fiber.hpp defines the same names for the CPU
// emulator, so one kernel source runs on both. No CUDA header is included: NVRTC needs none.
// The tensor-core helpers at the end (mma.sync, ldmatrix, cp.async) are inline PTX; their CPU
// twins (warp collectives) are in kernels/emu_tc.hpp.
#define KERNEL extern "C" __global__
// An entry point that must fit `blocks` blocks of GA_THREADS per SM: ptxas caps its registers.
#define KERNEL_BLOCKS(blocks) extern "C" __global__ __launch_bounds__(GA_THREADS, blocks)
#define DEV static __device__ __forceinline__
#define DYN_SMEM(T, name) extern __shared__ __align__(16) unsigned char ga_dyn_smem_[]; T* name = (T*)ga_dyn_smem_
#define SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define SHFL(v, src) __shfl_sync(0xffffffffu, (v), (src))
#define SYNCWARP() __syncwarp(0xffffffffu)
#define NEG_INF (-__int_as_float(0x7f800000))
// __expf (ex2.approx, flushes subnormal results) for the softmax; the CPU twin is std::exp.
#define EXPF(x) __expf(x)
#define LOGF(x) logf(x)
// Loops over per-row register arrays must be unrolled, or the arrays live in local memory.
#define UNROLL _Pragma("unroll")
#define TANHF(x) tanhf(x)
#define F2U(x) __float_as_uint(x)
#define U2F(x) __uint_as_float(x)

typedef unsigned long long ga_u64;
typedef long long ga_i64;

// IEEE binary16 <-> f32 with the hardware conversions (round to nearest even).
DEV float ga_h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
// e^x as __expf computes it (ex2.approx of x log2(e)), but with subnormal results flushed to
// zero (.ftz): ptxas then emits no range fix-up around MUFU.EX2 (a compare and two FMUL per exp
// in the tensor-core softmax). The CPU twin flushes the same way.
DEV float ga_exp_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
}
// 2^x, subnormal results flushed (the tensor-core softmax works in base 2: one MUFU.EX2, no
// multiply by log2(e) per score). The CPU twin flushes the same way.
DEV float ga_exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
DEV unsigned short ga_f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// ---- Tensor cores (sm_80+): inline PTX, no header. Layouts: kernels/emu_tc.hpp. ----
// Below sm_80 (no m16n8k16 mma, no cp.async) the helpers trap instead, so the module still
// compiles there; the host never launches a tensor-core kernel on such a device.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
DEV void ga_tc_trap() { asm volatile("trap;"); }
DEV unsigned ga_smem_u32(const void* p) { return (unsigned)(size_t)p; }
DEV void ga_mma_f16(float* d, const unsigned*, const unsigned*, const float* c) {
    ga_tc_trap();
    for (int i = 0; i < 4; ++i) d[i] = c[i];
}
DEV void ga_mma_bf16(float* d, const unsigned*, const unsigned*, const float* c) {
    ga_tc_trap();
    for (int i = 0; i < 4; ++i) d[i] = c[i];
}
#define GA_TC_LDSM_TRAP(name, n) \
    DEV void name(unsigned* r, unsigned) {     \
        ga_tc_trap();                          \
        for (int i = 0; i < n; ++i) r[i] = 0;  \
    }
GA_TC_LDSM_TRAP(ga_ldsm_x1, 1)
GA_TC_LDSM_TRAP(ga_ldsm_x2, 2)
GA_TC_LDSM_TRAP(ga_ldsm_x4, 4)
GA_TC_LDSM_TRAP(ga_ldsm_x1_t, 1)
GA_TC_LDSM_TRAP(ga_ldsm_x2_t, 2)
GA_TC_LDSM_TRAP(ga_ldsm_x4_t, 4)
DEV void ga_cp_async_cg16(unsigned, const void*, int) { ga_tc_trap(); }
template <int N>
DEV void ga_cp_async_ca(unsigned, const void*, int) {
    ga_tc_trap();
}
DEV void ga_cp_async_commit() {}
template <int N>
DEV void ga_cp_async_wait() {}
#else
// Shared-memory address of a generic pointer into shared memory (cvta.to.shared.u32 does not take
// a 64-bit pointer, hence the .u64 detour).
DEV unsigned ga_smem_u32(const void* p) {
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
// D = A(16x16, row) B(16x8, col) + C, f32 accumulate; d may alias c.
DEV void ga_mma_f16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
DEV void ga_mma_bf16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
DEV void ga_ldsm_x1(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
}
DEV void ga_ldsm_x2(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
DEV void ga_ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
DEV void ga_ldsm_x1_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
}
DEV void ga_ldsm_x2_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}
DEV void ga_ldsm_x4_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// 16 bytes global -> shared, L2 only; src_bytes < 16 zero-fills the rest (tails).
DEV void ga_cp_async_cg16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
// N (4, 8 or 16) bytes global -> shared through L1.
template <int N>
DEV void ga_cp_async_ca(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(N), "r"(src_bytes)
                 : "memory");
}
DEV void ga_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are pending (a __syncthreads must
// follow before other threads read the data).
template <int N>
DEV void ga_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif  // __CUDA_ARCH__ >= 800
