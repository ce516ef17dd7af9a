// Shared prelude of every hetensor CUDA kernel file (prepended by the host before NVRTC).
// Each device function mirrors, operation for operation, the CPU code in src/math/modular.rs
// (struct Modulus), so that every backend returns identical words.
typedef unsigned int u32;
typedef unsigned long long u64;

// One limb prime with its reduction constants; the host packs 6 u32 words per prime
// (q, bits, mu32, 0, barrett lo, barrett hi) = 24 bytes, barrett 8-byte aligned.
struct Mod {
    u32 q;       // the prime, < 2^30
    u32 bits;    // bit length k of q
    u32 mu;      // floor(2^(2k) / q) < 2^31  (Modulus::mul_add_reduced)
    u32 pad;
    u64 barrett; // floor(2^64 / q)         (Modulus::reduce_u64)
};

// Modulus::add (a, b < q).
__device__ __forceinline__ u32 mod_add(u32 a, u32 b, u32 q) {
    u32 s = a + b;
    return s >= q ? s - q : s;
}

// Modulus::sub (a, b < q).
__device__ __forceinline__ u32 mod_sub(u32 a, u32 b, u32 q) {
    return a >= b ? a - b : a + q - b;
}

// Modulus::neg (a < q).
__device__ __forceinline__ u32 mod_neg(u32 a, u32 q) {
    return a == 0 ? 0 : q - a;
}

// min(r, r - q) with wrapping: subtracts q once when r >= q (for r < 2^31 + q).
__device__ __forceinline__ u32 csub(u32 r, u32 q) {
    return min(r, r - q);
}

// Modulus::reduce_u64: Barrett with floor(2^64/q), any u64.
__device__ __forceinline__ u32 reduce_u64(u64 x, const Mod& m) {
    u64 qhat = __umul64hi(x, m.barrett);
    u64 r = x - qhat * (u64)m.q;
    while (r >= (u64)m.q) r -= (u64)m.q;
    return (u32)r;
}

// Modulus::mul_add_reduced: a*b + c mod q for a, b, c < q (32-bit-lane Barrett, HAC 14.42).
__device__ __forceinline__ u32 mul_add_reduced(u32 a, u32 b, u32 c, const Mod& m) {
    u64 x = (u64)a * (u64)b + (u64)c;
    u32 q1 = (u32)(x >> (m.bits - 1));
    u32 q3 = (u32)(((u64)q1 * (u64)m.mu) >> (m.bits + 1));
    u32 r = (u32)x - q3 * m.q;
    r = csub(r, m.q);
    return csub(r, m.q);
}

// Modulus::mul_reduced.
__device__ __forceinline__ u32 mul_reduced(u32 a, u32 b, const Mod& m) {
    return mul_add_reduced(a, b, 0u, m);
}

// Modulus::mul_shoup_lazy: a*w mod q in [0, 2q) for any a < 2^32, ws = floor(w 2^32 / q).
__device__ __forceinline__ u32 mul_shoup_lazy(u32 a, u32 w, u32 ws, u32 q) {
    u32 qhat = __umulhi(a, ws);
    return a * w - qhat * q;
}

// Modulus::mul_shoup: a*w mod q in [0, q).
__device__ __forceinline__ u32 mul_shoup(u32 a, u32 w, u32 ws, u32 q) {
    u32 r = mul_shoup_lazy(a, w, ws, q);
    return r >= q ? r - q : r;
}

// Limb position of word i of a [poly][limb][N] batch: its row (i >> log_n, below 2^32 for
// any batch that fits in memory) modulo nl in 32-bit arithmetic (a 64-bit % or / per word
// costs several times more on the device).
__device__ __forceinline__ u32 limb_of(u64 i, u32 nl, u32 log_n) {
    return (u32)(i >> log_n) % nl;
}

// Grid-stride loop over [0, total) with 64-bit indices.
#define GRID_STRIDE(i, total) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (u64)gridDim.x * blockDim.x)
