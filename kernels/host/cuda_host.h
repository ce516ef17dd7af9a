// Host emulation of the CUDA C dialect used by kernels/*.cu (cargo feature `cuda-emu`, tests
// only): the kernel files compile unchanged as C++ after this header and kernels/common.cuh.
//
// A launch (hetensor_emu_launch in emu.cpp) runs the grid's blocks one after another on the
// calling OS thread. The threads of a block that uses barriers run as fibers (ucontext, one
// small stack each); __syncthreads() yields to the block's scheduler, which resumes the fibers
// after every barrier in a different order (forward, reverse, seeded shuffle) so that a
// missing barrier reads a word another thread has not written yet. Barrier-free (grid-stride)
// kernels run their threads in a plain loop. threadIdx/blockIdx/blockDim/gridDim are
// thread_local variables that the scheduler sets before resuming each emulated thread, and
// __shared__ memory is thread_local too: every fiber of a block runs on the same OS thread.
#pragma once

#include <cstddef>
#include <cstdint>

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// Qualifiers. __shared__ variables are per OS thread (= per block being run); a block-scope
// `thread_local` without `extern` is implicitly static, like a static __shared__ array.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __shared__ thread_local

// Dynamic shared memory: kernels declare `extern __shared__ u32 sh[];`, which names this
// array (the launcher poisons it before every block and checks that nothing was written past
// the launch's shared-memory size).
#define HETENSOR_EMU_MAX_SHARED (48 * 1024)
extern thread_local unsigned int sh[HETENSOR_EMU_MAX_SHARED / sizeof(unsigned int)];

// Barrier: yields the calling emulated thread to its block's scheduler (emu.cpp).
void hetensor_emu_syncthreads();
#define __syncthreads() hetensor_emu_syncthreads()

// Integer intrinsics.
__device__ __forceinline__ unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
__device__ __forceinline__ unsigned long long __umul64hi(unsigned long long a,
                                                         unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// CUDA's integer min/max overloads (the kernels use them on u32).
__device__ __forceinline__ unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
__device__ __forceinline__ unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
__device__ __forceinline__ int min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) {
    return a < b ? a : b;
}
__device__ __forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}
