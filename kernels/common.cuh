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

// sum_i y_i [B/b_i]_c mod c for one coefficient (x_i at x[i << log_n]), y_i = x_i * bhi_i mod
// b_i; with frac != nullptr also adds the fixed-point sum of y_i / b_i to v (exact variant).
// bhc = the k words [B/b_i]_c of this target prime. BaseConverter::convert's inner loop.
__device__ __forceinline__ u32 conv_sum(const u32* x, u32 log_n, const Mod* fm, const u32* bhi,
                                        const u32* bhc, u32 k, const Mod& cj, const u64* frac,
                                        u64& v) {
    const u32 cv = cj.q;
    u32 acc = 0;
    for (u32 i = 0; i < k; i++) {
        const u32 b = fm[i].q;
        u32 y = mul_shoup(x[(u64)i << log_n], bhi[2 * i], bhi[2 * i + 1], b);
        if (frac) v += ((u64)y * frac[i]) >> 30;
        // y < b_i may exceed c_j: reduce it first when the source prime is larger.
        u32 yr;
        if (b <= cv) yr = y;
        else if (b < 2 * cv) yr = csub(y, cv);
        else yr = reduce_u64((u64)y, cj);
        acc = mul_add_reduced(yr, bhc[i], acc, cj);
    }
    return acc;
}

// One word of a batch of base conversions: coefficient `coeff` of row l of polynomial c,
// rows [poly][nl] (ModUp: one polynomial, a row per (digit, target prime); ModDown: a row per
// kept limb). desc[8l .. 8l+8] = (first source row, k, then word offsets into tab of the k
// source Mods, the 2k ([(B/b_i)^{-1}]_{b_i}, shoup) words, the row's k words [B/b_i]_c and the
// k u64 floor(2^62/b_i) (0: approximate conversion), then [B]_c, 0). Polynomial c's source rows
// start at c * src_stride. base_convert's arithmetic (BaseConverter::convert).
__device__ __forceinline__ u32 conv_row_word(const u32* in, const u32* desc, const u32* tab,
                                             const Mod& cj, u32 c, u32 l, u32 src_stride,
                                             u32 log_n, u64 coeff) {
    const u32* dr = desc + 8 * l;
    const bool exact = dr[5] != 0;
    u64 v = 0;
    u32 acc = conv_sum(in + ((u64)(c * src_stride + dr[0]) << log_n) + coeff, log_n,
                       (const Mod*)(tab + dr[2]), tab + dr[3], tab + dr[4], dr[1], cj,
                       exact ? (const u64*)(tab + dr[5]) : nullptr, v);
    if (exact) {
        v = (v + (1ull << 31)) >> 32;
        acc = mod_sub(acc, mul_reduced((u32)v, dr[6], cj), cj.q);
    }
    return acc;
}

// Grid-stride loop over [0, total) with 64-bit indices.
#define GRID_STRIDE(i, total) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (u64)gridDim.x * blockDim.x)
