// Batched negacyclic NTTs: every (poly, limb) of a batch [poly][limb][N] in one launch, each
// kernel running several butterfly stages in shared memory. The butterflies, twiddle indices
// and lazy ranges are those of src/math/ntt.rs (Harvey): forward Cooley-Tukey, natural input,
// bit-reversed output, twiddle psi_rev[m + j/(2t)] for the stage of half-size t = N/(2m);
// inverse Gentleman-Sande with ipsi_rev[h + j/(2t)], h = N/(2t), then N^{-1}. Each butterfly
// computes the same function of the same inputs as on the CPU, so the words are identical
// whatever the grouping of stages.
//
// With N = N1 * N2 (N2 = min(N, NTT_TILE)), the stages with t >= N2 only combine words of the
// same column j mod N2, and the stages with t < N2 only words of the same row (N2 contiguous
// words). Forward: ntt_fwd_cols (the log2 N1 stages t >= N2; skipped when N1 = 1) then
// ntt_fwd_rows (the log2 N2 stages t < N2, plus the final reduction to [0, q)).
// Inverse: intt_rows (t < N2) then intt_cols (t >= N2, plus the N^{-1} scaling); when N1 = 1,
// intt_rows scales. Each block holds NTT_TILE words (N1 rows x C = NTT_TILE/N1 columns, or
// one row) in dynamic shared memory, 4 * tile bytes; grid = ntts * N / tile blocks (1-D).
//
// Tables (per ring, on the device): psi/psi_s/ipsi/ipsi_s = [prime][N] twiddles and Shoup
// companions (NttPlan::tables), ninv = [prime][2] (NttPlan::n_inv).

// CT butterfly on lazy values in [0, 4q) (ntt.rs ct_butterfly).
__device__ __forceinline__ void ct_bfly(u32& x, u32& y, u32 w, u32 ws, u32 q) {
    u32 two_q = 2 * q;
    u32 u = min(x, x - two_q);
    u32 v = mul_shoup_lazy(y, w, ws, q);
    x = u + v;
    y = u + two_q - v;
}

// GS butterfly on lazy values in [0, 2q) (ntt.rs gs_butterfly / inverse).
__device__ __forceinline__ void gs_bfly(u32& x, u32& y, u32 w, u32 ws, u32 q) {
    u32 two_q = 2 * q;
    u32 u = x, v = y;
    u32 s = u + v;
    x = min(s, s - two_q);
    y = mul_shoup_lazy(u + two_q - v, w, ws, q);
}

// Forward stages m = 1 .. N1/2 (t >= N2) on a tile of N1 rows x C columns; the tile's words
// come from load(ntt, prime, word index in the row, row address) (ntt_fwd_cols reads the row;
// ntt_fwd_cols_conv converts them from another basis).
template <class Load>
__device__ __forceinline__ void fwd_cols(u32* data, const Mod* mods, const u32* limbs,
                                         const u32* psi, const u32* psi_s, u32 nl, u32 log_n,
                                         u32 log_n1, u32 log_c, const Load& load) {
    extern __shared__ u32 sh[];
    const u32 n = 1u << log_n, log_n2 = log_n - log_n1, tile = 1u << (log_n1 + log_c);
    const u32 bpn = n >> (log_n1 + log_c);  // blocks per NTT
    const u32 ntt = blockIdx.x / bpn;
    const u32 c0 = (blockIdx.x % bpn) << log_c;
    const u32 prime = limbs[ntt % nl];
    const u32 q = mods[prime].q;
    u32* a = data + ((u64)ntt << log_n);
    const u32* w = psi + ((u64)prime << log_n);
    const u32* ws = psi_s + ((u64)prime << log_n);
    const u32 cmask = (1u << log_c) - 1;
    for (u32 i = threadIdx.x; i < tile; i += blockDim.x)
        sh[i] = load(ntt, prime, ((i >> log_c) << log_n2) + c0 + (i & cmask), a);
    for (u32 m = 1, log_tr = log_n1 - 1; m < (1u << log_n1); m <<= 1, log_tr--) {
        __syncthreads();
        for (u32 b = threadIdx.x; b < tile / 2; b += blockDim.x) {
            u32 c = b & cmask, bb = b >> log_c;
            u32 blk = bb >> log_tr, within = bb & ((1u << log_tr) - 1);
            u32 r1 = (blk << (log_tr + 1)) + within, r2 = r1 + (1u << log_tr);
            ct_bfly(sh[(r1 << log_c) + c], sh[(r2 << log_c) + c], w[m + blk], ws[m + blk], q);
        }
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < tile; i += blockDim.x)
        a[((i >> log_c) << log_n2) + c0 + (i & cmask)] = sh[i];
}

struct LoadRow {
    __device__ __forceinline__ u32 operator()(u32, u32, u32 j, const u32* a) const { return a[j]; }
};

extern "C" __global__ void ntt_fwd_cols(u32* data, const Mod* mods, const u32* limbs,
                                        const u32* psi, const u32* psi_s, u32 nl, u32 log_n,
                                        u32 log_n1, u32 log_c) {
    fwd_cols(data, mods, limbs, psi, psi_s, nl, log_n, log_n1, log_c, LoadRow());
}

// Forward stages m = N1 .. N/2 (t < N2) on chunk ch (N2 contiguous words at a) of one
// transform with the prime's twiddles w, ws: loaded into sh and left lazy there ([0, 4q)).
__device__ __forceinline__ void fwd_rows_chunk(const u32* a, const u32* w, const u32* ws, u32 q,
                                               u32 log_n, u32 log_n2, u32 ch) {
    extern __shared__ u32 sh[];
    const u32 n2 = 1u << log_n2;
    for (u32 i = threadIdx.x; i < n2; i += blockDim.x) sh[i] = a[i];
    // Stage t = 2^log_t, m = N / (2t); the block of word j is ch * N2/(2t) + local block.
    for (int log_t = (int)log_n2 - 1; log_t >= 0; log_t--) {
        const u32 m = 1u << (log_n - 1 - log_t);
        const u32 base = m + (ch << (log_n2 - 1 - log_t));
        __syncthreads();
        for (u32 b = threadIdx.x; b < n2 / 2; b += blockDim.x) {
            u32 blk = b >> log_t, within = b & ((1u << log_t) - 1);
            u32 j1 = (blk << (log_t + 1)) + within, j2 = j1 + (1u << log_t);
            ct_bfly(sh[j1], sh[j2], w[base + blk], ws[base + blk], q);
        }
    }
    __syncthreads();
}

// fwd_rows_chunk on the block's row of the batch; returns the row's address, its NTT index
// (row of the batch) and prime.
__device__ __forceinline__ u32* fwd_rows_stages(u32* data, const Mod* mods, const u32* limbs,
                                               const u32* psi, const u32* psi_s, u32 nl,
                                               u32 log_n, u32 log_n2, u32& ntt, u32& q) {
    const u32 log_n1 = log_n - log_n2;
    ntt = blockIdx.x >> log_n1;
    const u32 ch = blockIdx.x & ((1u << log_n1) - 1);
    const u32 prime = limbs[ntt % nl];
    q = mods[prime].q;
    u32* a = data + ((u64)ntt << log_n) + ((u64)ch << log_n2);
    fwd_rows_chunk(a, psi + ((u64)prime << log_n), psi_s + ((u64)prime << log_n), q, log_n,
                   log_n2, ch);
    return a;
}

// ntt.rs forward's final reduction [0, 4q) -> [0, q).
__device__ __forceinline__ u32 fwd_final(u32 x, u32 q) {
    u32 v = min(x, x - 2 * q);
    return min(v, v - q);
}

// Forward stages t < N2 on one row, then the final reduction.
extern "C" __global__ void ntt_fwd_rows(u32* data, const Mod* mods, const u32* limbs,
                                        const u32* psi, const u32* psi_s, u32 nl, u32 log_n,
                                        u32 log_n2) {
    extern __shared__ u32 sh[];
    u32 ntt, q;
    u32* a = fwd_rows_stages(data, mods, limbs, psi, psi_s, nl, log_n, log_n2, ntt, q);
    for (u32 i = threadIdx.x; i < (1u << log_n2); i += blockDim.x) a[i] = fwd_final(sh[i], q);
}

// ntt_fwd_rows on ModDown's lifted tail (nl = kept limbs), ending ModDown instead of writing
// the transform back (mod_down_reference's sub + mul_scalar): for row (c, l) of the batch,
// out = (x - NTT(lifted)) * [P^{-1}]_{q_l} (Modulus::sub, then mul_shoup with fac[2l],
// fac[2l + 1]), where x's row (c, l) is c * xstride + l and out has the batch's layout; then,
// when add is not null, out = add + out (Modulus::add; add has out's layout: relinearization's
// c0, c1).
extern "C" __global__ void ntt_fwd_rows_moddown(u32* data, const Mod* mods, const u32* limbs,
                                                const u32* psi, const u32* psi_s, u32 nl,
                                                u32 log_n, u32 log_n2, u32* out, const u32* x,
                                                u32 xstride, const u32* fac, const u32* add) {
    extern __shared__ u32 sh[];
    u32 ntt, q;
    const u64 off = fwd_rows_stages(data, mods, limbs, psi, psi_s, nl, log_n, log_n2, ntt, q) -
                    data;
    const u32 c = ntt / nl, l = ntt - c * nl;
    const u32 f = fac[2 * l], fs = fac[2 * l + 1];
    const u32* xr = x + ((u64)(c * xstride + l) << log_n) + (off & ((1ull << log_n) - 1));
    u32* o = out + off;
    for (u32 i = threadIdx.x; i < (1u << log_n2); i += blockDim.x) {
        const u32 r = mul_shoup(mod_sub(xr[i], fwd_final(sh[i], q), q), f, fs, q);
        o[i] = add ? mod_add(add[off + i], r, q) : r;
    }
}

// Inverse stages t = 1 .. N2/2 (Gentleman-Sande) on chunk ch (N2 words) of one transform,
// in place in the shared array s, left lazy there; w, ws: the prime's inverse twiddles.
__device__ __forceinline__ void inv_rows_chunk(u32* s, const u32* w, const u32* ws, u32 q,
                                               u32 log_n, u32 log_n2, u32 ch) {
    const u32 n2 = 1u << log_n2;
    for (u32 log_t = 0; log_t < log_n2; log_t++) {
        const u32 h = 1u << (log_n - 1 - log_t);
        const u32 base = h + (ch << (log_n2 - 1 - log_t));
        __syncthreads();
        for (u32 b = threadIdx.x; b < n2 / 2; b += blockDim.x) {
            u32 blk = b >> log_t, within = b & ((1u << log_t) - 1);
            u32 j1 = (blk << (log_t + 1)) + within, j2 = j1 + (1u << log_t);
            gs_bfly(s[j1], s[j2], w[base + blk], ws[base + blk], q);
        }
    }
    __syncthreads();
}

// The inverse transform's N^{-1} scaling and final reduction of one lazy word (intt_cols's,
// and intt_rows's when N1 = 1).
__device__ __forceinline__ u32 inv_final(u32 x, u32 ni, u32 nis, u32 q) {
    u32 v = mul_shoup_lazy(x, ni, nis, q);
    return min(v, v - q);
}

// Inverse stages t = 1 .. N2/2 on one row of N2 contiguous words; when scale != 0 (N1 = 1)
// also the final N^{-1} scaling and reduction. The row is read from src (src = data: in
// place; else the same row of another batch of the same layout, e.g. ModUp's c2 read in
// place from a size-3 product), or when src2 is not null it is the product src * src2
// (tensor_product's a1 b1: ModUp's c2 computed on load), and written to data. Row r = c nl + l
// of data is read from src's row c sstride + l (src2's as data's): sstride = nl reads the
// same layout; ModDown passes its input's dropped rows in place (sstride = its row count).
extern "C" __global__ void intt_rows(u32* data, const Mod* mods, const u32* limbs,
                                     const u32* ipsi, const u32* ipsi_s, const u32* ninv,
                                     u32 nl, u32 log_n, u32 log_n2, u32 scale, const u32* src,
                                     const u32* src2, u32 sstride) {
    extern __shared__ u32 sh[];
    const u32 n2 = 1u << log_n2, log_n1 = log_n - log_n2;
    const u32 ntt = blockIdx.x >> log_n1;
    const u32 ch = blockIdx.x & ((1u << log_n1) - 1);
    const u32 prime = limbs[ntt % nl];
    const u32 q = mods[prime].q;
    const u64 off = ((u64)ntt << log_n) + ((u64)ch << log_n2);
    const u64 soff = ((u64)((ntt / nl) * sstride + ntt % nl) << log_n) + ((u64)ch << log_n2);
    u32* a = data + off;
    if (src2) {
        const Mod& m = mods[prime];
        for (u32 i = threadIdx.x; i < n2; i += blockDim.x)
            sh[i] = mul_reduced(src[soff + i], src2[off + i], m);
    } else {
        for (u32 i = threadIdx.x; i < n2; i += blockDim.x) sh[i] = src[soff + i];
    }
    inv_rows_chunk(sh, ipsi + ((u64)prime << log_n), ipsi_s + ((u64)prime << log_n), q, log_n,
                   log_n2, ch);
    if (scale) {
        const u32 ni = ninv[2 * prime], nis = ninv[2 * prime + 1];
        for (u32 i = threadIdx.x; i < n2; i += blockDim.x) a[i] = inv_final(sh[i], ni, nis, q);
    } else {
        for (u32 i = threadIdx.x; i < n2; i += blockDim.x) a[i] = sh[i];
    }
}

// ModUp's last forward stages fused with the key inner product (the words of
// key_switch_reference's inner product, digits in order): block (l, ch) computes chunk ch (N2
// words) of limb l of the key-switching basis (prime lrow[(nd + 2) l], key row
// lrow[(nd + 2) l + 1]) for both output polynomials. Per digit j in order, its limb l is the
// row lrow[(nd + 2) l + 2 + j] of d (bit 31 set: the digit's own limb, NTT form) or of ext,
// ModUp's rows after their first stages (ntt_fwd_cols_conv, or conv_rows where N1 = 1): this
// block runs their stages t < N2 and the final reduction (ntt_fwd_rows's words) in shared
// memory, so ext's transform is never written back; then acc_p = mul_add_reduced(key_j[p][krow],
// x, acc_p), started from P * lift[p][l] (lfac[l] = P mod the prime) for p < nlift and l < nq,
// from 0 elsewhere.
// Multiply fused in (lift_b not null): the key switch of a product's c2 whose tensor product
// is never written. d is then a1 and d2 b1 (the own limbs are a1 b1), lift is a and lift_b b
// (2 polynomials each over the nq limbs), and the lifted (c0, c1) are tensor_product's words
// (a0 b0, a0 b1 + a1 b0).
// Output row of (p, l): head row p * nkeep + l for l < nkeep, else tail row
// p * (nqp - nkeep) + l - nkeep (the rows a ModDown drops; key switching passes head = tail +
// 2 (nqp - nq) rows, so that the special limbs of both polynomials come first). With tail_inv,
// the tail rows get the inverse NTT's first kernel (intt_rows's stages, and its scaling when
// N1 = 1) before they are written: ModDown's inverse transform then starts at intt_cols.
// Shared: 3 * N2 words (the digit's chunk, then both accumulators).
extern "C" __global__ void ntt_fwd_rows_ks(u32* head, u32* tail, const u32* d, const u32* d2,
                                           const u32* ext, const u32* const* keys,
                                           const u32* lrow, const Mod* mods, const u32* psi,
                                           const u32* psi_s, const u32* ipsi,
                                           const u32* ipsi_s, const u32* ninv, const u32* lift,
                                           const u32* lift_b, const u32* lfac, u32 nlift,
                                           u32 nq, u32 nqp, u32 nd, u32 nkey, u32 nkeep,
                                           u32 tail_inv, u32 log_n, u32 log_n2) {
    extern __shared__ u32 sh[];
    const u32 n2 = 1u << log_n2, log_n1 = log_n - log_n2;
    const u32 l = blockIdx.x >> log_n1, ch = blockIdx.x & ((1u << log_n1) - 1);
    const u32* lr = lrow + l * (nd + 2);
    const u32 prime = lr[0];
    const Mod& m = mods[prime];
    const u64 off = (u64)ch << log_n2;
    u32* a0 = sh + n2;
    u32* a1 = sh + 2 * n2;
    const u64 r0 = ((u64)l << log_n) + off, r1 = ((u64)(nq + l) << log_n) + off;
    for (u32 i = threadIdx.x; i < n2; i += blockDim.x) {
        u32 x0 = 0, x1 = 0;
        if (l < nq && lift_b) {
            const u32 p0 = lift[r0 + i], p1 = lift[r1 + i], q0 = lift_b[r0 + i],
                      q1 = lift_b[r1 + i];
            x0 = mul_reduced(mul_reduced(p0, q0, m), lfac[l], m);
            x1 = mul_reduced(mul_add_reduced(p0, q1, mul_reduced(p1, q0, m), m), lfac[l], m);
        } else {
            if (l < nq && nlift > 0) x0 = mul_reduced(lift[r0 + i], lfac[l], m);
            if (l < nq && nlift > 1) x1 = mul_reduced(lift[r1 + i], lfac[l], m);
        }
        a0[i] = x0;
        a1[i] = x1;
    }
    const u32* w = psi + ((u64)prime << log_n);
    const u32* ws = psi_s + ((u64)prime << log_n);
    const u64 k0 = ((u64)lr[1] << log_n) + off, k1 = ((u64)(nkey + lr[1]) << log_n) + off;
    for (u32 j = 0; j < nd; j++) {
        const u32 s = lr[2 + j];
        const bool own = s >> 31;
        // Each thread loads, reads and accumulates the same words i (threadIdx.x + k·blockDim):
        // only the butterflies of fwd_rows_chunk, between its barriers, touch other threads'.
        if (own) {
            const u64 r = ((u64)(s & 0x7fffffffu) << log_n) + off;
            if (d2) {
                for (u32 i = threadIdx.x; i < n2; i += blockDim.x)
                    sh[i] = mul_reduced(d[r + i], d2[r + i], m);
            } else {
                for (u32 i = threadIdx.x; i < n2; i += blockDim.x) sh[i] = d[r + i];
            }
        } else {
            fwd_rows_chunk(ext + ((u64)s << log_n) + off, w, ws, m.q, log_n, log_n2, ch);
        }
        const u32* key = keys[j];
        for (u32 i = threadIdx.x; i < n2; i += blockDim.x) {
            const u32 x = own ? sh[i] : fwd_final(sh[i], m.q);
            a0[i] = mul_add_reduced(key[k0 + i], x, a0[i], m);
            a1[i] = mul_add_reduced(key[k1 + i], x, a1[i], m);
        }
    }
    const bool kept = l < nkeep;
    const u32 nt = nqp - nkeep;
    u32* out0 = kept ? head + ((u64)l << log_n) : tail + ((u64)(l - nkeep) << log_n);
    u32* out1 = kept ? head + ((u64)(nkeep + l) << log_n) : tail + ((u64)(nt + l - nkeep) << log_n);
    if (!kept && tail_inv) {
        // Uniform per block: every thread takes this branch or none (the stages' barriers).
        const u32* iw = ipsi + ((u64)prime << log_n);
        const u32* iws = ipsi_s + ((u64)prime << log_n);
        inv_rows_chunk(a0, iw, iws, m.q, log_n, log_n2, ch);
        inv_rows_chunk(a1, iw, iws, m.q, log_n, log_n2, ch);
        if (log_n1 == 0) {
            const u32 ni = ninv[2 * prime], nis = ninv[2 * prime + 1];
            for (u32 i = threadIdx.x; i < n2; i += blockDim.x) {
                a0[i] = inv_final(a0[i], ni, nis, m.q);
                a1[i] = inv_final(a1[i], ni, nis, m.q);
            }
        }
    }
    for (u32 i = threadIdx.x; i < n2; i += blockDim.x) {
        out0[off + i] = a0[i];
        out1[off + i] = a1[i];
    }
}

// Inverse stages t = N2 .. N/2 on a tile of N1 rows x C columns, then N^{-1}.
extern "C" __global__ void intt_cols(u32* data, const Mod* mods, const u32* limbs,
                                     const u32* ipsi, const u32* ipsi_s, const u32* ninv,
                                     u32 nl, u32 log_n, u32 log_n1, u32 log_c) {
    extern __shared__ u32 sh[];
    const u32 n = 1u << log_n, log_n2 = log_n - log_n1, tile = 1u << (log_n1 + log_c);
    const u32 bpn = n >> (log_n1 + log_c);
    const u32 ntt = blockIdx.x / bpn;
    const u32 c0 = (blockIdx.x % bpn) << log_c;
    const u32 prime = limbs[ntt % nl];
    const u32 q = mods[prime].q;
    u32* a = data + ((u64)ntt << log_n);
    const u32* w = ipsi + ((u64)prime << log_n);
    const u32* ws = ipsi_s + ((u64)prime << log_n);
    const u32 cmask = (1u << log_c) - 1;
    for (u32 i = threadIdx.x; i < tile; i += blockDim.x)
        sh[i] = a[((i >> log_c) << log_n2) + c0 + (i & cmask)];
    // Row half-size tr = 2^log_tr (t = tr * N2); h = N1 / (2 tr).
    for (u32 log_tr = 0; log_tr < log_n1; log_tr++) {
        const u32 h = 1u << (log_n1 - 1 - log_tr);
        __syncthreads();
        for (u32 b = threadIdx.x; b < tile / 2; b += blockDim.x) {
            u32 c = b & cmask, bb = b >> log_c;
            u32 blk = bb >> log_tr, within = bb & ((1u << log_tr) - 1);
            u32 r1 = (blk << (log_tr + 1)) + within, r2 = r1 + (1u << log_tr);
            gs_bfly(sh[(r1 << log_c) + c], sh[(r2 << log_c) + c], w[h + blk], ws[h + blk], q);
        }
    }
    __syncthreads();
    const u32 ni = ninv[2 * prime], nis = ninv[2 * prime + 1];
    for (u32 i = threadIdx.x; i < tile; i += blockDim.x)
        a[((i >> log_c) << log_n2) + c0 + (i & cmask)] = inv_final(sh[i], ni, nis, q);
}

struct LoadConv {
    const u32* in;
    const u32* desc;
    const u32* tab;
    const Mod* mods;
    u32 nl, src_stride, log_n;
    __device__ __forceinline__ u32 operator()(u32 ntt, u32 prime, u32 j, const u32*) const {
        const u32 c = ntt / nl;
        return conv_row_word(in, desc, tab, mods[prime], c, ntt - c * nl, src_stride, log_n, j);
    }
};

// ntt_fwd_cols whose input is converted on load (conv_row_word) instead of read: the
// conversion's output is never written; the transform's first stages run on it directly.
extern "C" __global__ void ntt_fwd_cols_conv(u32* data, const Mod* mods, const u32* limbs,
                                             const u32* psi, const u32* psi_s, u32 nl,
                                             u32 log_n, u32 log_n1, u32 log_c, const u32* in,
                                             const u32* desc, const u32* tab, u32 src_stride) {
    fwd_cols(data, mods, limbs, psi, psi_s, nl, log_n, log_n1, log_c,
             LoadConv{in, desc, tab, mods, nl, src_stride, log_n});
}
