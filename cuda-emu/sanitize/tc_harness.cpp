// Sanitizer driver for the tensor-core unit kernels (scripts/cuda_sanitizers.sh): the cp.async
// test and the double-buffered GEMM (4 k-tiles, both B layouts) built in thread mode under
// ThreadSanitizer (the deferred cp.async copies and the ldmatrix reads of shared memory must be
// ordered by the kernel's barriers) and in fiber mode under AddressSanitizer. The values are
// checked by cuda-emu/tests/tc_instructions.rs; this program only has to run clean, or, built
// with GA_FAULT_TC_NO_TRAILING_SYNC, make TSan report the refill of a stage still being read.
#define EMU_VARIANT ga_tc_san
#include "emu_tc_entry.cpp"

#include <vector>

static int run(const char* name, unsigned gx, unsigned gy, unsigned threads, size_t smem, const GaParams& p) {
    unsigned grid[3] = {gx, gy, 1}, block[3] = {threads, 1, 1};
    char err[512] = {0};
    if (ga_tc_san_launch(name, grid, block, smem, &p, sizeof p, 0, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

int main() {
    int rc = 0;
    std::vector<unsigned> src(896), out(896);
    for (unsigned i = 0; i < 896; ++i) src[i] = 0x5a000000u | i;
    GaParams p;
    memset(&p, 0, sizeof p);
    p.q = (ga_u64)src.data();
    p.out = (ga_u64)out.data();
    rc |= run("tc_cp_async", 1, 1, 128, 128 * 28, p);
    const int m = 64, n = 64, k = 128;
    std::vector<unsigned short> a((size_t)m * k), b((size_t)k * n);
    for (size_t i = 0; i < a.size(); ++i) a[i] = ga_f2h((float)((i * 7) % 33) / 8.0f - 2.0f);
    for (size_t i = 0; i < b.size(); ++i) b[i] = ga_f2h((float)((i * 5) % 33) / 8.0f - 2.0f);
    std::vector<float> c((size_t)m * n);
    memset(&p, 0, sizeof p);
    p.q = (ga_u64)a.data();
    p.k = (ga_u64)b.data();
    p.out = (ga_u64)c.data();
    p.q_dt = GA_DT_F16;
    p.q_len = m;
    p.kv_len = n;
    p.head_dim = k;
    for (int b_nk = 0; b_nk < 2; ++b_nk) {
        p.causal = b_nk;
        rc |= run("tc_gemm", m / 64, n / 64, 128, 20480, p);
    }
    return rc;
}
