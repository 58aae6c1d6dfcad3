// The tensor-core unit kernels (tc_unit.cu) on the CPU emulator, behind one C entry point per
// build. cuda-emu/build.rs compiles this file once clean and once per planted tensor-core fault
// (GA_FAULT_TC_*, see emu_tc.hpp and tc_unit.cu), each with its own EMU_VARIANT symbol prefix.
#include "emu_fiber.hpp"

#include "params.h"
#include "tc_unit.cu"

#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
#define EMU_FN(name) EMU_CAT(EMU_VARIANT, name)

namespace {
struct EmuKernel {
    const char* name;
    void (*fn)(const void*);
};
#define EMU_K(k) {#k, [](const void* p) { k(*(const GaParams*)p); }}
const EmuKernel emu_kernels[] = {EMU_K(tc_mma), EMU_K(tc_ldsm), EMU_K(tc_cp_async), EMU_K(tc_gemm)};
}  // namespace

// Same contract as emu_entry.cpp's launch: 0, 1 (emulator error, message in err), 2 (no such kernel).
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
