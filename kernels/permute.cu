// Data-movement kernels (1-D grid-stride over words, [poly][limb][N] layout, N = 2^log_n).

// Galois automorphism X -> X^g of coefficient-form polynomials (CpuBackend::automorphism):
// input word j goes to (j g mod 2N), negated when that is >= N. g2 = g mod 2N.
extern "C" __global__ void automorphism(u32* out, const u32* in, const Mod* mods,
                                        const u32* limbs, u32 nl, u32 log_n, u32 g2, u64 total) {
    GRID_STRIDE(i, total) {
        const u64 n = 1ull << log_n;
        const u64 j = i & (n - 1);
        const u64 base = i - j;
        const u32 q = mods[limbs[limb_of(i, nl, log_n)]].q;
        const u64 k = (j * g2) & (2 * n - 1);
        const u32 x = in[i];
        if (k < n) out[base + k] = x;
        else out[base + k - n] = mod_neg(x, q);
    }
}

// out[k] = in[map[k]] within every N-word limb (automorphism in the NTT domain; the map is
// built on the host exactly as CpuBackend::automorphism_ntt does).
extern "C" __global__ void permute_limbs(u32* out, const u32* in, const u32* map, u32 log_n,
                                         u64 total) {
    GRID_STRIDE(i, total) {
        const u64 k = i & ((1ull << log_n) - 1);
        out[i] = in[i - k + map[k]];
    }
}

// select_limbs: output limb jo of poly c is input limb pos[jo] (nli limbs in, nlo out).
extern "C" __global__ void gather_limbs(u32* out, const u32* in, const u32* pos, u32 nli,
                                        u32 nlo, u32 log_n, u64 total) {
    GRID_STRIDE(i, total) {
        const u64 k = i & ((1ull << log_n) - 1);
        const u32 r = (u32)(i >> log_n);
        const u32 c = r / nlo, jo = r - c * nlo;
        out[i] = in[(((u64)c * nli + pos[jo]) << log_n) | k];
    }
}

// concat_limbs: poly c of the output = (na limbs of a's poly c) ++ (nb limbs of b's poly c).
extern "C" __global__ void concat_limbs(u32* out, const u32* a, const u32* b, u32 na, u32 nb,
                                        u32 log_n, u64 total) {
    GRID_STRIDE(i, total) {
        const u64 k = i & ((1ull << log_n) - 1);
        const u32 r = (u32)(i >> log_n), nt = na + nb;
        const u32 c = r / nt, j = r - c * nt;
        out[i] = j < na ? a[(((u64)c * na + j) << log_n) | k]
                        : b[(((u64)c * nb + (j - na)) << log_n) | k];
    }
}
