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
// slower, but ThreadSanitizer then sees every shared-memory race. Not modelled: the GPU's weak
// memory model, atomics, timing. The tensor-core instructions (mma.sync, ldmatrix, cp.async) are
// warp collectives in kernels/emu_tc.hpp, in both modes. Schedules (fiber mode): 0 resumes the
// fibers in thread order each pass, 1 in reverse order, 2 ("greedy") runs one warp at a time in
// ascending order until it waits on __syncthreads or exits, 3 the same in descending order;
// different interleavings expose different missing barriers (2 and 3 maximise the skew between
// warps, the only way to see a missing barrier before a double buffer is refilled).
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

// Tensor-core emulation state (kernels/emu_tc.hpp): a per-warp exchange for the register
// operands and row addresses of mma/ldmatrix, and per-thread cp.async groups.
struct EmuTcExch {
    unsigned op[32];
    unsigned a[32][4];
    unsigned b[32][2];
    unsigned addr[32];
};
struct EmuCpCopy {
    size_t dst;      // shared-memory offset
    unsigned size;   // cp-size (4, 8, 16)
    unsigned src_n;  // bytes read from global; the rest is zero-filled
    unsigned char bytes[16];
};
struct EmuCpThread {
    std::vector<EmuCpCopy> open;                 // issued, not yet committed
    std::vector<std::vector<EmuCpCopy>> groups;  // committed, oldest first
    void clear() {
        open.clear();
        groups.clear();
    }
    // Copies issued and not yet retired by a wait_group (empty groups are trivially complete).
    bool pending() const {
        if (!open.empty()) return true;
        for (const auto& g : groups)
            if (!g.empty()) return true;
        return false;
    }
};

#ifdef EMU_THREADS
#include "emu_threads.hpp"
#else
#include <ucontext.h>

enum { EMU_RUNNING = 0, EMU_DONE = 1 };
enum { EMU_COLL_SHFL = 1, EMU_COLL_SYNCWARP = 2, EMU_COLL_MMA = 3, EMU_COLL_LDSM = 4 };

struct EmuFiber {
    ucontext_t ctx;
    emu_dim3 tid;
    unsigned linear;
    int state;
    unsigned shfl_phase;
    bool at_bar;                   // waiting in __syncthreads for generation bar_wait
    unsigned long long bar_wait;
    EmuCpThread cp;
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
    std::vector<EmuTcExch> tc;   // [warp]
    std::vector<unsigned char> smem;
    size_t smem_bytes;
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
    s->cur->at_bar = true;
    s->cur->bar_wait = g;
    while (s->bar_gen == g) emu_yield();
    s->cur->at_bar = false;
}

// Blocked until the whole block reaches __syncthreads (the greedy schedules switch warps here).
static inline bool emu_blocked(const EmuFiber& f) { return f.at_bar && emu_st->bar_gen == f.bar_wait; }

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
    // A copy nobody waited for is lost data on the GPU (and its destination stays poisoned here).
    if (s->cur->cp.pending()) emu_fail("thread exits with cp.async copies it never waited for (wait_group)");
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
    st.tc.assign(n / 32, EmuTcExch{});
    st.smem_bytes = smem_bytes;
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
                    f.at_bar = false;
                    f.cp.clear();
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = &st.stacks[t * st.stack_bytes];
                    f.ctx.uc_stack.ss_size = st.stack_bytes;
                    f.ctx.uc_link = &st.sched;
                    makecontext(&f.ctx, emu_fiber_main, 0);
                }
                const unsigned nw = n / 32;
                for (;;) {
                    unsigned alive = 0;
                    unsigned long long before = st.progress;
                    if (sched >= 2) {
                        // Greedy: one warp runs until all its lanes wait on __syncthreads or exit.
                        for (unsigned wi = 0; wi < nw && !st.failed; ++wi) {
                            const unsigned w = sched == 2 ? wi : nw - 1 - wi;
                            for (;;) {
                                unsigned long long before_w = st.progress;
                                bool runnable = false;
                                for (unsigned l = 0; l < 32 && !st.failed; ++l) {
                                    EmuFiber& f = st.fibers[w * 32 + l];
                                    if (f.state == EMU_DONE || emu_blocked(f)) continue;
                                    runnable = true;
                                    st.cur = &f;
                                    swapcontext(&st.sched, &f.ctx);
                                }
                                if (!runnable || st.failed || st.progress == before_w) break;
                            }
                        }
                        for (auto& f : st.fibers) alive += f.state != EMU_DONE;
                    } else {
                        for (unsigned k = 0; k < n; ++k) {
                            EmuFiber& f = st.fibers[sched == 1 ? n - 1 - k : k];
                            if (f.state == EMU_DONE) continue;
                            alive++;
                            st.cur = &f;
                            swapcontext(&st.sched, &f.ctx);
                            if (st.failed) break;
                        }
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

// What kernels/emu_tc.hpp needs from the mode.
static inline unsigned emu_linear() { return emu_st->cur->linear; }
static inline EmuTcExch& emu_tc_warp() { return emu_st->tc[emu_st->cur->linear / 32]; }
static inline EmuCpThread& emu_cp_thread() { return emu_st->cur->cp; }
static inline size_t emu_smem_size() { return emu_st->smem_bytes; }
static inline void emu_error(const char* what) { emu_fail(what); }

#endif  // EMU_THREADS

// The portable subset, CPU side.
#define KERNEL static
#define KERNEL_BLOCKS(blocks) static
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

// ga_exp_ftz (compat_cuda.cuh): e^x with subnormal results flushed to zero.
static inline float ga_exp_ftz(float x) {
    const float y = std::exp(x);
    return y < 1.17549435e-38f ? 0.f : y;
}
// ga_exp2_ftz (compat_cuda.cuh): 2^x with subnormal results flushed to zero.
static inline float ga_exp2_ftz(float x) {
    const float y = std::exp2(x);
    return y < 1.17549435e-38f ? 0.f : y;
}
static inline float ga_h2f(unsigned short h) { return (float)std::bit_cast<_Float16>(h); }
static inline unsigned short ga_f2h(float f) { return std::bit_cast<unsigned short>((_Float16)f); }

#include "emu_tc.hpp"
