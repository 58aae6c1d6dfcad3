// Thread mode of the CPU emulator (-DEMU_THREADS), for sanitizers: every CUDA thread of a block
// is an std::thread; __syncthreads(), SYNCWARP() and shuffles are condition-variable barriers
// (so ThreadSanitizer sees their happens-before edges and reports any shared-memory access they
// do not order). Each warp has its own mutex for its warp collectives: one block-wide mutex
// would order every warp's accesses after any other warp's shuffle or mma and hide races
// between warps. Blocks run one after another. A barrier that waits 20 s is reported as a
// deadlock and aborts. Included by emu_fiber.hpp; same entry point, emu_launch().
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

enum { EMU_COLL_SHFL = 1, EMU_COLL_SYNCWARP = 2, EMU_COLL_MMA = 3, EMU_COLL_LDSM = 4 };

struct EmuBlockState {
    std::mutex mu;
    std::condition_variable cv;
    emu_dim3 block_idx, block_dim, grid_dim;
    unsigned nthreads;
    unsigned bar_count;
    unsigned long long bar_gen;
    std::vector<unsigned> warp_count, warp_kind;
    std::vector<unsigned long long> warp_gen;
    std::vector<uint64_t> exch;  // [warp][2 phases][32 lanes]
    std::vector<EmuTcExch> tc;   // [warp]
    std::vector<std::unique_ptr<std::mutex>> warp_mu;
    std::vector<std::unique_ptr<std::condition_variable>> warp_cv;
    std::vector<unsigned char> smem;
    size_t smem_bytes;
};

struct EmuThread {
    emu_dim3 tid;
    unsigned linear;
    unsigned shfl_phase;
};

static EmuBlockState* emu_blk;  // set before the block's threads start (thread creation orders it)
static thread_local EmuThread emu_th;
static thread_local EmuCpThread emu_cp_th;

[[noreturn]] static inline void emu_deadlock(const char* what) {
    fprintf(stderr, "emu (threads): %s in block (%u,%u,%u), thread %u: deadlock or divergent collective\n", what,
            emu_blk->block_idx.x, emu_blk->block_idx.y, emu_blk->block_idx.z, emu_th.linear);
    abort();
}

static inline void emu_syncthreads() {
    EmuBlockState* b = emu_blk;
    std::unique_lock<std::mutex> lk(b->mu);
    unsigned long long g = b->bar_gen;
    if (++b->bar_count == b->nthreads) {
        b->bar_count = 0;
        b->bar_gen++;
        b->cv.notify_all();
        return;
    }
    if (!b->cv.wait_for(lk, std::chrono::seconds(20), [&] { return b->bar_gen != g; })) emu_deadlock("__syncthreads");
}

static inline void emu_warp_barrier(unsigned kind) {
    EmuBlockState* b = emu_blk;
    unsigned w = emu_th.linear / 32;
    std::unique_lock<std::mutex> lk(*b->warp_mu[w]);
    if (b->warp_count[w] == 0) {
        b->warp_kind[w] = kind;
    } else if (b->warp_kind[w] != kind) {
        emu_deadlock("lanes of one warp at different collectives");
    }
    unsigned long long g = b->warp_gen[w];
    if (++b->warp_count[w] == 32) {
        b->warp_count[w] = 0;
        b->warp_gen[w]++;
        b->warp_cv[w]->notify_all();
        return;
    }
    if (!b->warp_cv[w]->wait_for(lk, std::chrono::seconds(20), [&] { return b->warp_gen[w] != g; }))
        emu_deadlock("warp barrier");
}

template <class T>
static inline T emu_shfl(T v, int src_lane, bool is_xor) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    EmuBlockState* b = emu_blk;
    unsigned w = emu_th.linear / 32, lane = emu_th.linear % 32;
    uint64_t* slot = &b->exch[(w * 2 + emu_th.shfl_phase) * 32];
    emu_th.shfl_phase ^= 1;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    slot[lane] = bits;
    emu_warp_barrier(EMU_COLL_SHFL);
    unsigned src = is_xor ? (lane ^ (unsigned)src_lane) : (unsigned)src_lane;
    T out;
    memcpy(&out, &slot[src & 31], sizeof(T));
    return out;
}

static inline int emu_launch(void (*kernel)(const void*), const void* params, emu_dim3 grid, emu_dim3 block,
                             size_t smem_bytes, int /*sched*/, char* err, size_t err_len) {
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n % 32 != 0 || n > 1024) {
        snprintf(err, err_len, "emu: block of %u threads (need a multiple of 32, at most 1024)", n);
        return 1;
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                EmuBlockState st;
                st.block_idx = {bx, by, bz};
                st.block_dim = block;
                st.grid_dim = grid;
                st.nthreads = n;
                st.bar_count = 0;
                st.bar_gen = 0;
                st.warp_count.assign(n / 32, 0);
                st.warp_kind.assign(n / 32, 0);
                st.warp_gen.assign(n / 32, 0);
                st.exch.assign((n / 32) * 2 * 32, 0);
                st.smem.assign(smem_bytes + 16, 0xFF);  // poisoned: f32 NaN
                st.smem_bytes = smem_bytes;
                st.tc.assign(n / 32, EmuTcExch{});
                for (unsigned w = 0; w < n / 32; ++w) {
                    st.warp_mu.push_back(std::make_unique<std::mutex>());
                    st.warp_cv.push_back(std::make_unique<std::condition_variable>());
                }
                emu_blk = &st;
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned t = 0; t < n; ++t) {
                    threads.emplace_back([=] {
                        emu_th.linear = t;
                        emu_th.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        emu_th.shfl_phase = 0;
                        emu_cp_th.clear();
                        kernel(params);
                        if (emu_cp_th.pending()) emu_deadlock("thread exits with cp.async copies it never waited for");
                    });
                }
                for (auto& th : threads) th.join();
                emu_blk = nullptr;
            }
    return 0;
}

#define EMU_TID (emu_th.tid)
#define EMU_BLOCK_IDX (emu_blk->block_idx)
#define EMU_BLOCK_DIM (emu_blk->block_dim)
#define EMU_GRID_DIM (emu_blk->grid_dim)
#define EMU_SMEM (emu_blk->smem.data())

// What kernels/emu_tc.hpp needs from the mode.
static inline unsigned emu_linear() { return emu_th.linear; }
static inline EmuTcExch& emu_tc_warp() { return emu_blk->tc[emu_th.linear / 32]; }
static inline EmuCpThread& emu_cp_thread() { return emu_cp_th; }
static inline size_t emu_smem_size() { return emu_blk->smem_bytes; }
static inline void emu_error(const char* what) { emu_deadlock(what); }
