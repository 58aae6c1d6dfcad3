// CPU emulation of the portable kernel subset (tests only; compiled by cuda-emu/build.rs).
//
// Every CUDA thread is a fiber (glibc ucontext) with its own stack; the blocks of a grid run one
// after another on the calling OS thread (the state is thread_local, so test threads may launch
// concurrently). __syncthreads() is a block barrier, SYNCWARP() a warp barrier, and a shuffle
// deposits the lane's value in a per-warp exchange, waits on the warp barrier and reads its
// source lane (two exchange slots alternate, so one barrier per shuffle suffices). Dynamic shared
// memory is a fresh buffer per block filled with 0xFF bytes (f32 NaN), so reading a slot nobody
// wrote shows up as NaN. If a full scheduling pass makes no progress (a divergent barrier, a
// shuffle by part of a warp), or the lanes of a warp meet at different warp collectives, the
// launch stops with an error message instead of hanging.
//
// Built with -DEMU_THREADS instead, every CUDA thread is an OS thread (kernels/emu_threads.hpp):
// slower, but ThreadSanitizer then sees every shared-memory race. Not modelled: the GPU's weak memory model, tensor cores, atomics, timing. Schedules: 0 resumes
// the fibers in thread order each pass, 1 in reverse order (different interleavings expose
// different missing barriers).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

struct emu_dim3 {
    unsigned x, y, z;
};

#ifdef EMU_THREADS
#include "emu_threads.hpp"
#else
#include <ucontext.h>

enum { EMU_RUNNING = 0, EMU_DONE = 1 };
enum { EMU_COLL_SHFL = 1, EMU_COLL_SYNCWARP = 2 };

struct EmuFiber {
    ucontext_t ctx;
    emu_dim3 tid;
    unsigned linear;
    int state;
    unsigned shfl_phase;
};

struct EmuState {
    ucontext_t sched;
    std::vector<EmuFiber> fibers;
    std::vector<char> stacks;
    size_t stack_bytes;
    EmuFiber* cur;
    emu_dim3 block_idx, block_dim, grid_dim;
    unsigned nthreads;
    unsigned bar_count;
    unsigned long long bar_gen;
    std::vector<unsigned> warp_count, warp_kind;
    std::vector<unsigned long long> warp_gen;
    std::vector<uint64_t> exch;  // [warp][2 phases][32 lanes]
    std::vector<unsigned char> smem;
    unsigned long long progress;
    bool failed;
    char msg[512];
    void (*kernel)(const void*);
    const void* params;
};

static thread_local EmuState* emu_st;

static inline void emu_yield() { swapcontext(&emu_st->cur->ctx, &emu_st->sched); }

static inline void emu_fail(const char* what) {
    EmuState* s = emu_st;
    if (!s->failed) {
        s->failed = true;
        snprintf(s->msg, sizeof s->msg, "emu: %s in block (%u,%u,%u), thread %u", what, s->block_idx.x, s->block_idx.y,
                 s->block_idx.z, s->cur->linear);
    }
    for (;;) emu_yield();  // never resumed: the launch is abandoned
}

static inline void emu_syncthreads() {
    EmuState* s = emu_st;
    s->progress++;
    unsigned long long g = s->bar_gen;
    if (++s->bar_count == s->nthreads) {
        s->bar_count = 0;
        s->bar_gen++;
        return;
    }
    while (s->bar_gen == g) emu_yield();
}

static inline void emu_warp_barrier(unsigned kind) {
    EmuState* s = emu_st;
    unsigned w = s->cur->linear / 32;
    s->progress++;
    if (s->warp_count[w] == 0) {
        s->warp_kind[w] = kind;
    } else if (s->warp_kind[w] != kind) {
        emu_fail("divergent warp collective (lanes of one warp at different shuffles/syncwarps)");
    }
    unsigned long long g = s->warp_gen[w];
    if (++s->warp_count[w] == 32) {
        s->warp_count[w] = 0;
        s->warp_gen[w]++;
        return;
    }
    while (s->warp_gen[w] == g) emu_yield();
}

template <class T>
static inline T emu_shfl(T v, int src_lane, bool is_xor) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    EmuState* s = emu_st;
    EmuFiber* f = s->cur;
    unsigned w = f->linear / 32, lane = f->linear % 32;
    uint64_t* slot = &s->exch[(w * 2 + f->shfl_phase) * 32];
    f->shfl_phase ^= 1;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    slot[lane] = bits;
    emu_warp_barrier(EMU_COLL_SHFL);
    unsigned src = is_xor ? (lane ^ (unsigned)src_lane) : (unsigned)src_lane;
    T out;
    memcpy(&out, &slot[src & 31], sizeof(T));
    return out;
}

static void emu_fiber_main() {
    EmuState* s = emu_st;
    s->kernel(s->params);
    s->cur->state = EMU_DONE;
    s->progress++;
    // returning resumes uc_link (the scheduler)
}

// Runs a grid. Returns 0, or 1 with the reason in `err`.
static inline int emu_launch(void (*kernel)(const void*), const void* params, emu_dim3 grid, emu_dim3 block,
                             size_t smem_bytes, int sched, char* err, size_t err_len) {
    EmuState st;
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n % 32 != 0 || n > 1024) {
        snprintf(err, err_len, "emu: block of %u threads (need a multiple of 32, at most 1024)", n);
        return 1;
    }
    st.stack_bytes = 128 * 1024;
    st.fibers.resize(n);
    st.stacks.resize(st.stack_bytes * n);
    st.block_dim = block;
    st.grid_dim = grid;
    st.nthreads = n;
    st.warp_count.assign(n / 32, 0);
    st.warp_kind.assign(n / 32, 0);
    st.warp_gen.assign(n / 32, 0);
    st.exch.assign((n / 32) * 2 * 32, 0);
    st.failed = false;
    st.msg[0] = 0;
    st.kernel = kernel;
    st.params = params;
    st.progress = 0;
    EmuState* saved = emu_st;
    emu_st = &st;
    int rc = 0;
    for (unsigned bz = 0; bz < grid.z && !rc; ++bz)
        for (unsigned by = 0; by < grid.y && !rc; ++by)
            for (unsigned bx = 0; bx < grid.x && !rc; ++bx) {
                st.block_idx = {bx, by, bz};
                st.bar_count = 0;
                st.smem.assign(smem_bytes + 16, 0xFF);  // poisoned: f32 NaN
                std::fill(st.warp_count.begin(), st.warp_count.end(), 0);
                for (unsigned t = 0; t < n; ++t) {
                    EmuFiber& f = st.fibers[t];
                    f.linear = t;
                    f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    f.state = EMU_RUNNING;
                    f.shfl_phase = 0;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = &st.stacks[t * st.stack_bytes];
                    f.ctx.uc_stack.ss_size = st.stack_bytes;
                    f.ctx.uc_link = &st.sched;
                    makecontext(&f.ctx, emu_fiber_main, 0);
                }
                for (;;) {
                    unsigned alive = 0;
                    unsigned long long before = st.progress;
                    for (unsigned k = 0; k < n; ++k) {
                        EmuFiber& f = st.fibers[sched == 1 ? n - 1 - k : k];
                        if (f.state == EMU_DONE) continue;
                        alive++;
                        st.cur = &f;
                        swapcontext(&st.sched, &f.ctx);
                        if (st.failed) break;
                    }
                    if (st.failed) {
                        snprintf(err, err_len, "%s", st.msg);
                        rc = 1;
                        break;
                    }
                    if (alive == 0) break;
                    if (st.progress == before) {
                        unsigned done = 0;
                        for (auto& f : st.fibers) done += f.state == EMU_DONE;
                        snprintf(err, err_len,
                                 "emu: deadlock in block (%u,%u,%u): %u threads finished, %u wait on a barrier or "
                                 "shuffle (divergent __syncthreads or partial-warp shuffle?)",
                                 bx, by, bz, done, n - done);
                        rc = 1;
                        break;
                    }
                }
            }
    emu_st = saved;
    return rc;
}

#define EMU_TID (emu_st->cur->tid)
#define EMU_BLOCK_IDX (emu_st->block_idx)
#define EMU_BLOCK_DIM (emu_st->block_dim)
#define EMU_GRID_DIM (emu_st->grid_dim)
#define EMU_SMEM (emu_st->smem.data())

#endif  // EMU_THREADS

// The portable subset, CPU side.
#define KERNEL static
#define DEV static inline
#define __device__
#define __forceinline__
#define __restrict__
#define DYN_SMEM(T, name) T* name = (T*)EMU_SMEM
#define SHFL_XOR(v, m) emu_shfl((v), (m), true)
#define SHFL(v, src) emu_shfl((v), (src), false)
#define SYNCWARP() emu_warp_barrier(EMU_COLL_SYNCWARP)
#define __syncthreads() emu_syncthreads()
#define threadIdx EMU_TID
#define blockIdx EMU_BLOCK_IDX
#define blockDim EMU_BLOCK_DIM
#define gridDim EMU_GRID_DIM
#define NEG_INF (-INFINITY)
#define EXPF(x) std::exp((float)(x))
#define LOGF(x) std::log((float)(x))
#define UNROLL
#define TANHF(x) std::tanh((float)(x))
#define F2U(x) std::bit_cast<unsigned>((float)(x))
#define U2F(x) std::bit_cast<float>((unsigned)(x))

typedef unsigned long long ga_u64;
typedef long long ga_i64;

static inline float ga_h2f(unsigned short h) { return (float)std::bit_cast<_Float16>(h); }
static inline unsigned short ga_f2h(float f) { return std::bit_cast<unsigned short>((_Float16)f); }
