// The kernels compiled as C++ against the CPU emulator, behind one C entry point per build.
// cuda-emu/build.rs compiles this file once per variant, defining EMU_VARIANT (the symbol
// prefix) and, for the planted-fault builds, a GA_FAULT_* macro.
#include "emu_fiber.hpp"

#include "params.h"
#include "attn_common.cuh"
#include "attn_fwd.cu"
#include "attn_combine.cu"
#include "kv_append.cu"
#include "attn_tc.cu"

#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
#define EMU_FN(name) EMU_CAT(EMU_VARIANT, name)

namespace {
struct EmuKernel {
    const char* name;
    void (*fn)(const void*);
};
#define EMU_K(k) {#k, [](const void* p) { k(*(const GaParams*)p); }}
const EmuKernel emu_kernels[] = {
    EMU_K(attn_fwd_d64),     EMU_K(attn_fwd_d128),     EMU_K(attn_fwd_d256),    EMU_K(attn_split_d64),
    EMU_K(attn_split_d128),  EMU_K(attn_split_d256),   EMU_K(attn_combine_d64), EMU_K(attn_combine_d128),
    EMU_K(attn_combine_d256), EMU_K(kv_append),
    EMU_K(attn_fwd_tc_d64_f16),   EMU_K(attn_fwd_tc_d64_bf16),   EMU_K(attn_fwd_tc_d64_f16_opt),
    EMU_K(attn_fwd_tc_d64_bf16_opt), EMU_K(attn_fwd_tc_d128_f16), EMU_K(attn_fwd_tc_d128_bf16),
    EMU_K(attn_fwd_tc_d128_f16_opt), EMU_K(attn_fwd_tc_d128_bf16_opt),
    EMU_K(attn_split_tc_d64_f16),   EMU_K(attn_split_tc_d64_bf16),   EMU_K(attn_split_tc_d64_f16_opt),
    EMU_K(attn_split_tc_d64_bf16_opt), EMU_K(attn_split_tc_d128_f16), EMU_K(attn_split_tc_d128_bf16),
    EMU_K(attn_split_tc_d128_f16_opt), EMU_K(attn_split_tc_d128_bf16_opt),
    EMU_K(attn_fwd_tc_d256_f16),   EMU_K(attn_fwd_tc_d256_bf16),   EMU_K(attn_fwd_tc_d256_f16_opt),
    EMU_K(attn_fwd_tc_d256_bf16_opt), EMU_K(attn_split_tc_d256_f16), EMU_K(attn_split_tc_d256_bf16),
    EMU_K(attn_split_tc_d256_f16_opt), EMU_K(attn_split_tc_d256_bf16_opt),
};
}  // namespace

extern "C" size_t EMU_FN(_params_size)(void) { return sizeof(GaParams); }
extern "C" size_t EMU_FN(_params_offset_scale)(void) { return offsetof(GaParams, scale); }
extern "C" size_t EMU_FN(_params_offset_batch)(void) { return offsetof(GaParams, batch); }
extern "C" size_t EMU_FN(_params_offset_q_offset)(void) { return offsetof(GaParams, q_offset); }

// Launches kernel `name` with the grid, block and dynamic shared memory the Rust launch code
// computed. Returns 0, 1 (emulator error, message in err) or 2 (unknown kernel).
extern "C" int EMU_FN(_launch)(const char* name, const unsigned* grid, const unsigned* block, size_t smem,
                               const void* params, size_t params_size, int sched, char* err, size_t err_len) {
    if (params_size != sizeof(GaParams)) {
        snprintf(err, err_len, "emu: params of %zu bytes, the kernels expect %zu", params_size, sizeof(GaParams));
        return 1;
    }
    for (const EmuKernel& k : emu_kernels) {
        if (strcmp(k.name, name) == 0) {
            return emu_launch(k.fn, params, {grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, smem, sched,
                              err, err_len);
        }
    }
    snprintf(err, err_len, "emu: no kernel named %s", name);
    return 2;
}
