// Sanitizer driver for the emulated kernels (scripts/cuda_sanitizers.sh): one multi-tile shape
// per kernel (prefill; split-KV decode + combine; RoPE-append into a cache; the tensor-core
// prefill in f16, and in bf16 with softcap and a non-finite V value that sends one tile down the
// cold path; the tensor-core split-KV decode + combine in f16), built in thread mode under ThreadSanitizer
// and in fiber mode under AddressSanitizer. The geometry below is what src/cuda/launch.rs
// computes for these shapes (16-row tiles, 32-key tiles, 128 threads, combine: one warp per row);
// the Rust emulator tests cover correctness, this program only has to run clean.
#define EMU_VARIANT ga_san
#include "emu_entry.cpp"

#include <cstdio>
#include <vector>

static std::vector<float> fill(size_t n, unsigned seed) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = (float)(((i * 2654435761u + seed) >> 8) & 0xffff) / 65536.0f - 0.5f;
    return v;
}

static size_t smem_bytes(int d, int dv) { return 4 * (16 * d + 32 * (d + 1) + 32 * dv + 4 * 32); }

static void launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned threads, size_t smem,
                   const GaParams& p) {
    unsigned grid[3] = {gx, gy, gz}, block[3] = {threads, 1, 1};
    char err[512] = {0};
    if (ga_san_launch(name, grid, block, smem, &p, sizeof p, 0, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        exit(1);
    }
}

static GaParams base(int b, int q, int kv, int hq, int hkv, int d, const float* Q, const float* K, const float* V,
                     float* O, float* lse) {
    GaParams p;
    memset(&p, 0, sizeof p);
    p.q = (ga_u64)Q;
    p.k = (ga_u64)K;
    p.v = (ga_u64)V;
    p.out = (ga_u64)O;
    p.lse = (ga_u64)lse;
    ga_i64 qs[3] = {(ga_i64)q * hq * d, (ga_i64)hq * d, d}, ks[3] = {(ga_i64)kv * hkv * d, (ga_i64)hkv * d, d};
    memcpy(p.q_str, qs, sizeof qs);
    memcpy(p.o_str, qs, sizeof qs);
    memcpy(p.k_str, ks, sizeof ks);
    memcpy(p.v_str, ks, sizeof ks);
    p.q_offset = kv - q;
    p.right_window = -1;
    p.batch = b;
    p.q_len = q;
    p.kv_len = kv;
    p.q_heads = hq;
    p.kv_heads = hkv;
    p.head_dim = d;
    p.v_head_dim = d;
    p.group = hq / hkv;
    p.causal = 1;
    p.n_splits = 1;
    p.split_len = 32 * ((kv + 31) / 32);
    p.scale = 0.125f;
    return p;
}

static int check(const std::vector<float>& o, const char* what) {
    for (float x : o)
        if (!(x == x)) {
            fprintf(stderr, "%s: NaN in the output\n", what);
            return 1;
        }
    printf("%s: ok (%zu outputs)\n", what, o.size());
    return 0;
}

int main() {
    int rc = 0;
    {  // prefill: 40 queries x 4 heads over 1 KV head = 10 row tiles, 70 keys = 3 key tiles
        const int b = 1, q = 40, kv = 70, hq = 4, hkv = 1, d = 64;
        auto Q = fill((size_t)b * q * hq * d, 1), K = fill((size_t)b * kv * hkv * d, 2), V = fill((size_t)b * kv * hkv * d, 3);
        std::vector<float> O((size_t)b * q * hq * d), lse((size_t)b * hq * q);
        GaParams p = base(b, q, kv, hq, hkv, d, Q.data(), K.data(), V.data(), O.data(), lse.data());
        launch("attn_fwd_d64", (q * hq / hkv + 15) / 16, hkv, b, 128, smem_bytes(d, d), p);
        rc |= check(O, "attn_fwd_d64");
    }
    {  // decode: 1 query x 4 heads, 150 keys in 3 splits of 64, then the combine
        const int b = 1, q = 1, kv = 150, hq = 4, hkv = 1, d = 64, splits = 3;
        auto Q = fill((size_t)b * q * hq * d, 4), K = fill((size_t)b * kv * hkv * d, 5), V = fill((size_t)b * kv * hkv * d, 6);
        std::vector<float> O((size_t)b * q * hq * d), lse((size_t)b * hq * q), work((size_t)b * hq * q * splits * (d + 2));
        GaParams p = base(b, q, kv, hq, hkv, d, Q.data(), K.data(), V.data(), O.data(), lse.data());
        p.n_splits = splits;
        p.split_len = 64;
        p.work = (ga_u64)work.data();
        launch("attn_split_d64", splits * ((q * hq / hkv + 15) / 16), hkv, b, 128, smem_bytes(d, d), p);
        launch("attn_combine_d64", q, hq, b, 32, 0, p);
        rc |= check(O, "attn_split_d64 + attn_combine_d64");
    }
    {  // kv_append: 2 rows x 5 tokens x 2 heads of 64 into a bf16 cache of 12 slots, NeoX RoPE on 32 dims
        const int b = 2, t = 5, h = 2, d = 64, cap = 12, half = 16;
        auto K = fill((size_t)b * t * h * d, 7), cs = fill((size_t)b * t * half, 8), sn = fill((size_t)b * t * half, 9);
        std::vector<unsigned short> cache((size_t)b * h * cap * d, 0xffffu);
        std::vector<long long> dst((size_t)b * t);
        for (int i = 0; i < b * t; ++i) dst[i] = 7 + i % t;  // the last 5 slots of each row
        GaParams p;
        memset(&p, 0, sizeof p);
        p.q = (ga_u64)K.data();
        p.out = (ga_u64)cache.data();
        p.dst_rows = (ga_u64)dst.data();
        p.rope_cos = (ga_u64)cs.data();
        p.rope_sin = (ga_u64)sn.data();
        ga_i64 ks[3] = {(ga_i64)t * h * d, (ga_i64)h * d, d}, cstr[3] = {(ga_i64)h * cap * d, d, (ga_i64)cap * d};
        memcpy(p.q_str, ks, sizeof ks);
        memcpy(p.o_str, cstr, sizeof cstr);
        p.q_dt = GA_DT_F32;
        p.o_dt = GA_DT_BF16;
        p.batch = b;
        p.q_len = t;
        p.kv_heads = h;
        p.head_dim = d;
        p.rope_half = half;
        launch("kv_append", t, h, b, 64, 0, p);
        std::vector<float> got;
        for (int r = 0; r < b; ++r)
            for (int hh = 0; hh < h; ++hh)
                for (int s = 7; s < cap; ++s)
                    for (int e = 0; e < d; ++e) got.push_back(ga_bf2f(cache[((size_t)(r * h + hh) * cap + s) * d + e]));
        rc |= check(got, "kv_append");
    }
    {  // tensor-core prefill: 40 queries x 4 heads over 1 KV head = 3 tiles of 64 rows, 70 keys = 3 key
       // tiles through the cp.async double buffer. Shared memory as src/cuda/launch.rs::tc_smem_bytes(64).
        const int b = 1, q = 40, kv = 70, hq = 4, hkv = 1, d = 64;
        const size_t tc_smem = 2 * (64 + 4 * 32) * (d + 8) + 4 * 4 * 16 * 32 + 2 * 4;
        for (int bf16 = 0; bf16 < 2; ++bf16) {
            auto half = [&](const std::vector<float>& x) {
                std::vector<unsigned short> h(x.size());
                for (size_t i = 0; i < x.size(); ++i) h[i] = bf16 ? ga_f2bf(x[i]) : ga_f2h(x[i]);
                return h;
            };
            auto Q = half(fill((size_t)b * q * hq * d, 10)), K = half(fill((size_t)b * kv * hkv * d, 11)),
                 V = half(fill((size_t)b * kv * hkv * d, 12));
            // bf16: a NaN in the last key's V, which only the last query row sees (causal, bottom-right).
            if (bf16) V[(size_t)(kv - 1) * hkv * d + 5] = 0x7fc0;
            std::vector<float> O((size_t)b * q * hq * d), lse((size_t)b * hq * q);
            GaParams p = base(b, q, kv, hq, hkv, d, nullptr, nullptr, nullptr, O.data(), lse.data());
            p.q = (ga_u64)Q.data();
            p.k = (ga_u64)K.data();
            p.v = (ga_u64)V.data();
            p.q_dt = p.k_dt = p.v_dt = bf16 ? GA_DT_BF16 : GA_DT_F16;
            p.o_dt = GA_DT_F32;
            if (bf16) p.softcap = 20.f;
            const char* name = bf16 ? "attn_fwd_tc_d64_bf16_opt" : "attn_fwd_tc_d64_f16";
            launch(name, (q * hq / hkv + 63) / 64, hkv, b, 128, tc_smem, p);
            // Rows of the last query may hold the NaN; every other output must be finite.
            std::vector<float> seen(O.begin(), O.begin() + (size_t)(q - 1) * hq * d);
            rc |= check(seen, name);
            size_t nans = 0;
            for (size_t i = seen.size(); i < O.size(); ++i) nans += O[i] != O[i];
            if (bf16 && nans == 0) {
                fprintf(stderr, "%s: the NaN in V did not reach the row that sees it\n", name);
                rc = 1;
            }
        }
    }
    {  // tensor-core split-KV decode, f16: 1 query x 4 heads over 1 KV head (one 64-row tile), 150 keys
       // in 3 splits of 64 (each split's tiles through the cp.async double buffer), then the combine.
        const int b = 1, q = 1, kv = 150, hq = 4, hkv = 1, d = 64, splits = 3;
        const size_t tc_smem = 2 * (64 + 4 * 32) * (d + 8) + 4 * 4 * 16 * 32 + 2 * 4;
        auto half = [](const std::vector<float>& x) {
            std::vector<unsigned short> h(x.size());
            for (size_t i = 0; i < x.size(); ++i) h[i] = ga_f2h(x[i]);
            return h;
        };
        auto Q = half(fill((size_t)b * q * hq * d, 13)), K = half(fill((size_t)b * kv * hkv * d, 14)),
             V = half(fill((size_t)b * kv * hkv * d, 15));
        std::vector<float> O((size_t)b * q * hq * d), lse((size_t)b * hq * q), work((size_t)b * hq * q * splits * (d + 2));
        GaParams p = base(b, q, kv, hq, hkv, d, nullptr, nullptr, nullptr, O.data(), lse.data());
        p.q = (ga_u64)Q.data();
        p.k = (ga_u64)K.data();
        p.v = (ga_u64)V.data();
        p.q_dt = p.k_dt = p.v_dt = GA_DT_F16;
        p.o_dt = GA_DT_F32;
        p.n_splits = splits;
        p.split_len = 64;
        p.work = (ga_u64)work.data();
        launch("attn_split_tc_d64_f16", splits * ((q * hq / hkv + 63) / 64), hkv, b, 128, tc_smem, p);
        launch("attn_combine_d64", q, hq, b, 32, 0, p);
        rc |= check(O, "attn_split_tc_d64_f16 + attn_combine_d64");
    }
    return rc;
}
