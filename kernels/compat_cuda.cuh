// NVRTC prelude of the portable kernel subset (see kernels/README.md). The kernels use only the
// macros and helpers defined here; kernels/emu_fiber.hpp defines the same names for the CPU
// emulator, so one kernel source runs on both. No CUDA header is included: NVRTC needs none.
// A later tensor-core issue adds its inline-PTX helpers (mma, ldmatrix, cp.async) here, each with
// a CPU twin in the emulator header.
#define KERNEL extern "C" __global__
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
DEV unsigned short ga_f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
