// Element-wise kernels over a batch [poly][limb][N] (limb-major, N = 2^log_n).
// Word i lies in limb l = (i >> log_n) % nl (limb_of), whose prime is mods[limbs[l]].
// A broadcast right operand (count 1) is read at (l << log_n) | k instead of i.
// Launch: 1-D grid-stride, 256 threads per block (host: grid_1d).

__device__ __forceinline__ const Mod& limb_mod(const Mod* mods, const u32* limbs, u64 i,
                                               u32 nl, u32 log_n) {
    return mods[limbs[limb_of(i, nl, log_n)]];
}

__device__ __forceinline__ u64 bcast_index(u64 i, u32 bcast, u32 nl, u32 log_n) {
    if (!bcast) return i;
    u64 k = i & ((1ull << log_n) - 1);
    u64 l = limb_of(i, nl, log_n);
    return (l << log_n) | k;
}

// op: 0 = add, 1 = sub, 2 = mul (Modulus::add / sub / mul_reduced).
extern "C" __global__ void ew_binary(u32* a, const u32* b, u32 b_bcast, u32 op,
                                     const Mod* mods, const u32* limbs, u32 nl, u32 log_n,
                                     u64 total) {
    GRID_STRIDE(i, total) {
        const Mod& m = limb_mod(mods, limbs, i, nl, log_n);
        u32 x = a[i];
        u32 y = b[bcast_index(i, b_bcast, nl, log_n)];
        u32 r;
        if (op == 0) r = mod_add(x, y, m.q);
        else if (op == 1) r = mod_sub(x, y, m.q);
        else r = mul_reduced(x, y, m);
        a[i] = r;
    }
}

// a = -a (Modulus::neg).
extern "C" __global__ void ew_neg(u32* a, const Mod* mods, const u32* limbs, u32 nl, u32 log_n,
                                  u64 total) {
    GRID_STRIDE(i, total) {
        const Mod& m = limb_mod(mods, limbs, i, nl, log_n);
        a[i] = mod_neg(a[i], m.q);
    }
}

// acc = a*b + acc (Modulus::mul_add_reduced); a and b may each broadcast.
extern "C" __global__ void ew_mul_acc(u32* acc, const u32* a, u32 a_bcast, const u32* b,
                                      u32 b_bcast, const Mod* mods, const u32* limbs, u32 nl,
                                      u32 log_n, u64 total) {
    GRID_STRIDE(i, total) {
        const Mod& m = limb_mod(mods, limbs, i, nl, log_n);
        u32 x = a[bcast_index(i, a_bcast, nl, log_n)];
        u32 y = b[bcast_index(i, b_bcast, nl, log_n)];
        acc[i] = mul_add_reduced(x, y, acc[i], m);
    }
}

// One constant per limb position l (already reduced mod its prime on the host).
// op 0: a = a * s[l] with Shoup's companion ss[l] (Modulus::mul_shoup); op 1: a = a + s[l].
extern "C" __global__ void ew_scalar(u32* a, const u32* s, const u32* ss, u32 op,
                                     const Mod* mods, const u32* limbs, u32 nl, u32 log_n,
                                     u64 total) {
    GRID_STRIDE(i, total) {
        u32 l = limb_of(i, nl, log_n);
        u32 q = mods[limbs[l]].q;
        u32 x = a[i];
        a[i] = op == 0 ? mul_shoup(x, s[l], ss[l], q) : mod_add(x, s[l], q);
    }
}

// Tensor product of two size-2 ciphertexts, w = nl << log_n words per polynomial:
// out = (a0 b0, a0 b1 + a1 b0, a1 b1), exactly as CpuBackend::tensor_product.
extern "C" __global__ void tensor_product(u32* out, const u32* a, const u32* b,
                                          const Mod* mods, const u32* limbs, u32 nl, u32 log_n,
                                          u64 w) {
    GRID_STRIDE(i, w) {
        const Mod& m = mods[limbs[(u32)(i >> log_n)]];
        u32 a0 = a[i], a1 = a[w + i], b0 = b[i], b1 = b[w + i];
        out[i] = mul_reduced(a0, b0, m);
        out[w + i] = mul_add_reduced(a0, b1, mul_reduced(a1, b0, m), m);
        out[2 * w + i] = mul_reduced(a1, b1, m);
    }
}

// K linear combinations y_k = sum_i w[(k*ni + i)*nl + l] * x_i of ni inputs (one pointer per
// input in xs, one per output in ys, every batch of `total` words). Products (< 2^60)
// accumulate in u64 and are reduced with Barrett every 15 inputs and at the end, as on the CPU.
// Each thread computes LC_TILE outputs of one word, re-reading the inputs once per tile.
#define LC_TILE 8
extern "C" __global__ void lincomb(u32* const* ys, const u32* const* xs, const u32* w, u32 ni,
                                   u32 outputs, const Mod* mods, const u32* limbs, u32 nl,
                                   u32 log_n, u64 total) {
    GRID_STRIDE(idx, total) {
        u32 l = limb_of(idx, nl, log_n);
        const Mod& m = mods[limbs[l]];
        for (u32 k0 = 0; k0 < outputs; k0 += LC_TILE) {
            u64 acc[LC_TILE];
#pragma unroll
            for (int t = 0; t < LC_TILE; t++) acc[t] = 0;
            for (u32 i = 0; i < ni; i++) {
                u64 x = xs[i][idx];
#pragma unroll
                for (int t = 0; t < LC_TILE; t++) {
                    u32 k = k0 + t;
                    if (k < outputs) acc[t] += x * (u64)w[((u64)k * ni + i) * nl + l];
                }
                if (i % 15 == 14) {
#pragma unroll
                    for (int t = 0; t < LC_TILE; t++) acc[t] = reduce_u64(acc[t], m);
                }
            }
#pragma unroll
            for (int t = 0; t < LC_TILE; t++) {
                u32 k = k0 + t;
                if (k < outputs) ys[k][idx] = reduce_u64(acc[t], m);
            }
        }
    }
}
