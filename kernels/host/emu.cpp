// Host emulator of the CUDA kernels (cargo feature `cuda-emu`; see cuda_host.h): one
// translation unit holding the prelude and every kernel file exactly as NVRTC compiles them
// (src/backend/cuda/compile.rs full_source), plus a launcher with cuLaunchKernel's
// argument-array convention.
#include "cuda_host.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;
thread_local unsigned int sh[HETENSOR_EMU_MAX_SHARED / sizeof(unsigned int)];

#include "../common.cuh"
#include "../elementwise.cu"
#include "../ntt.cu"
#include "../rns.cu"
#include "../permute.cu"
#include "../keyswitch.cu"

namespace {

// Error codes of hetensor_emu_launch (mirrored in src/backend/cuda/emu.rs).
enum : int {
    EMU_OK = 0,
    EMU_UNKNOWN_KERNEL = 1,
    EMU_BAD_CONFIG = 2,
    EMU_SHARED_OVERFLOW = 3,      // a kernel wrote shared memory past the launch's size
    EMU_BARRIER_OUTSIDE_FIBER = 4, // __syncthreads in a kernel registered as barrier-free
    EMU_NO_MEMORY = 5,
};

// ---- calling a kernel from cuLaunchKernel-style arguments (args[i] points to parameter i)

template <typename... A, std::size_t... I>
void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename F>
struct Sig;
template <typename... A>
struct Sig<void (*)(A...)> {
    static constexpr int arity = sizeof...(A);
    template <void (*F)(A...)>
    static void call(void** args) {
        call_unpacked(F, args, std::index_sequence_for<A...>{});
    }
    static int arg_size(int i) {
        static const int sizes[] = {(int)sizeof(std::remove_cv_t<std::remove_reference_t<A>>)...,
                                    0};
        return i >= 0 && i < arity ? sizes[i] : -1;
    }
};

struct Kernel {
    const char* name;
    void (*call)(void**);
    int arity;
    int (*arg_size)(int);
    bool barriers;  // uses __syncthreads: threads run as fibers
};

#define KERNEL(f, b) \
    {#f, &Sig<decltype(&f)>::call<&f>, Sig<decltype(&f)>::arity, &Sig<decltype(&f)>::arg_size, b}

const Kernel KERNELS[] = {
    KERNEL(ew_binary, false),    KERNEL(ew_neg, false),        KERNEL(ew_mul_acc, false),
    KERNEL(ew_scalar, false),    KERNEL(tensor_product, false), KERNEL(lincomb, false),
    KERNEL(ntt_fwd_cols, true),  KERNEL(ntt_fwd_rows, true),   KERNEL(intt_rows, true),
    KERNEL(intt_cols, true),     KERNEL(base_convert, false),  KERNEL(scale_round, false),
    KERNEL(automorphism, false), KERNEL(permute_limbs, false), KERNEL(gather_limbs, false),
    KERNEL(concat_limbs, false), KERNEL(conv_rows, false),
    KERNEL(ks_inner_hoisted, false), KERNEL(mod_up_gather, false),
    KERNEL(ntt_fwd_rows_moddown, true), KERNEL(ntt_fwd_cols_conv, true),
    KERNEL(ntt_fwd_rows_ks, true),
};

const Kernel* find(const char* name) {
    if (!name) return nullptr;
    for (const Kernel& k : KERNELS)
        if (std::strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

// ---- the block scheduler

constexpr std::size_t FIBER_STACK = 64 * 1024;
constexpr unsigned int POISON = 0xdeadbeefu;

// A fiber's saved context. On x86-64 a switch saves the callee-saved registers on the old
// stack and swaps stack pointers (no system call: glibc's swapcontext also saves the signal
// mask with a syscall each time, which made NTT emulation ~5x slower); elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void hetensor_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl hetensor_emu_switch
    .hidden hetensor_emu_switch
    .type hetensor_emu_switch, @function
hetensor_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size hetensor_emu_switch, .-hetensor_emu_switch
)");
void switch_context(Context& from, Context& to) { hetensor_emu_switch(&from.sp, to.sp); }
// A fresh fiber's stack: what hetensor_emu_switch pops (MXCSR and x87 control word of the
// caller, six zeroed registers), then `entry` as the return address, then a null return address
// for `entry` itself (which never returns), leaving rsp = 8 mod 16 as after a call.
bool make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t(15);
    auto* w = reinterpret_cast<std::uint64_t*>(top);
    *--w = 0;                                        // entry's return address
    *--w = reinterpret_cast<std::uint64_t>(entry);  // popped by `ret`
    for (int i = 0; i < 6; i++) *--w = 0;             // rbp, rbx, r12..r15
    std::uint32_t csr[2];
    asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
    *--w = (std::uint64_t)csr[0] | ((std::uint64_t)(csr[1] & 0xffff) << 32);
    c.sp = w;
    return true;
}
#else
struct Context {
    ucontext_t uc;
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
bool make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
    if (getcontext(&c.uc) != 0) return false;
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;  // entry never returns
    makecontext(&c.uc, entry, 0);
    return true;
}
#endif

struct Fiber {
    Context ctx;
    bool done;
};

// Fiber stacks, kept per OS thread across launches (not zeroed: nothing reads them first).
thread_local std::unique_ptr<char[]> g_stacks;
thread_local std::size_t g_stack_count = 0;

struct Block {
    Context sched;
    std::vector<Fiber> fibers;
    unsigned int current = 0;
    const Kernel* kernel = nullptr;
    void** args = nullptr;
};

thread_local Block* g_block = nullptr;  // the block whose fibers run on this OS thread
thread_local int g_error = EMU_OK;

// A fiber's body: the kernel for one thread, then back to the scheduler for good.
void fiber_main() {
    Block* b = g_block;
    b->kernel->call(b->args);
    Fiber& f = b->fibers[b->current];
    f.done = true;
    switch_context(f.ctx, b->sched);
    std::abort();  // a finished fiber is never resumed
}

// Deterministic xorshift for the shuffled resume orders.
struct Rng {
    unsigned long long s;
    unsigned long long next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
};

void set_thread(unsigned int t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

// Runs one block with barriers: every thread a fiber; after each barrier round the fibers
// resume in forward, reverse, then shuffled order (rotating).
int run_fibers(Block& b, unsigned int threads, Rng& rng, unsigned long long& round) {
    b.fibers.assign(threads, Fiber{});
    if (g_stack_count < threads) {
        g_stacks.reset(new (std::nothrow) char[threads * FIBER_STACK]);
        g_stack_count = g_stacks ? threads : 0;
        if (!g_stacks) return EMU_NO_MEMORY;
    }
    for (unsigned int t = 0; t < threads; t++) {
        Fiber& f = b.fibers[t];
        f.done = false;
        if (!make_context(f.ctx, g_stacks.get() + t * FIBER_STACK, FIBER_STACK, fiber_main))
            return EMU_NO_MEMORY;
    }
    std::vector<unsigned int> order(threads);
    unsigned int live = threads;
    while (live > 0) {
        for (unsigned int i = 0; i < threads; i++) order[i] = i;
        switch (round++ % 3) {
        case 0: break;
        case 1: std::reverse(order.begin(), order.end()); break;
        default:
            for (unsigned int i = threads; i > 1; i--) std::swap(order[i - 1], order[rng.next() % i]);
        }
        for (unsigned int t : order) {
            if (b.fibers[t].done) continue;
            b.current = t;
            set_thread(t);
            switch_context(b.sched, b.fibers[t].ctx);
        }
        live = 0;
        for (const Fiber& f : b.fibers) live += !f.done;
    }
    return EMU_OK;
}

}  // namespace

void hetensor_emu_syncthreads() {
    Block* b = g_block;
    if (!b) {
        // A kernel registered as barrier-free reached a barrier: the launch fails.
        g_error = EMU_BARRIER_OUTSIDE_FIBER;
        return;
    }
    switch_context(b->fibers[b->current].ctx, b->sched);
}

extern "C" {

// Number of parameters of kernel `name` (-1 if unknown).
int hetensor_emu_kernel_arity(const char* name) {
    const Kernel* k = find(name);
    return k ? k->arity : -1;
}

// Size in bytes of parameter i of kernel `name` (-1 if unknown).
int hetensor_emu_kernel_arg_size(const char* name, int i) {
    const Kernel* k = find(name);
    return k ? k->arg_size(i) : -1;
}

// Runs kernel `name` over grid x block threads with `shmem` bytes of dynamic shared memory;
// args[i] points to the value of parameter i (cuLaunchKernel's kernelParams). Returns 0, or an
// error code (emu.rs). Synchronous; blocks run in order on the calling thread.
int hetensor_emu_launch(const char* name, dim3 grid, dim3 block, std::size_t shmem, void** args) {
    const Kernel* k = find(name);
    if (!k) return EMU_UNKNOWN_KERNEL;
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    if (threads == 0 || threads > 1024 || blocks == 0 || shmem > HETENSOR_EMU_MAX_SHARED)
        return EMU_BAD_CONFIG;
    const std::size_t sh_words = sizeof(sh) / sizeof(sh[0]);
    const std::size_t used = (shmem + 3) / 4;
    gridDim = grid;
    blockDim = block;
    g_error = EMU_OK;
    Block b;
    b.kernel = k;
    b.args = args;
    Rng rng{0x9e3779b97f4a7c15ull};
    unsigned long long round = 0;
    int rc = EMU_OK;
    for (unsigned long long bi = 0; bi < blocks && rc == EMU_OK; bi++) {
        blockIdx.x = (unsigned int)(bi % grid.x);
        blockIdx.y = (unsigned int)((bi / grid.x) % grid.y);
        blockIdx.z = (unsigned int)(bi / ((unsigned long long)grid.x * grid.y));
        if (k->barriers) {
            // Uninitialized shared memory reads as poison, never as the previous block's words.
            std::fill(sh, sh + sh_words, POISON);
            g_block = &b;
            rc = run_fibers(b, (unsigned int)threads, rng, round);
            g_block = nullptr;
            for (std::size_t i = used; i < sh_words && rc == EMU_OK; i++)
                if (sh[i] != POISON) rc = EMU_SHARED_OVERFLOW;
        } else {
            for (unsigned int t = 0; t < threads; t++) {
                set_thread(t);
                k->call(args);
            }
        }
        if (rc == EMU_OK && g_error != EMU_OK) rc = g_error;
    }
    return rc;
}

}  // extern "C"
