// Hybrid key switching with every digit in each launch (src/backend/mod.rs
// key_switch_reference and mod_down_reference define the words): the base conversions of
// ModUp (all digits) and ModDown (conv_row_word, common.cuh) run inside the first kernel of
// the forward NTT that follows them (ntt.cu ntt_fwd_cols_conv; conv_rows here where
// N <= 2048), the key inner product runs inside ModUp's last NTT kernel and reads the key
// digits' limbs in place (ntt.cu ntt_fwd_rows_ks), and ModDown ends inside its forward NTT
// (ntt.cu ntt_fwd_rows_moddown). Tables are built on the host and cached (CudaBackend::ks_tables,
// CudaBackend::down_tables). Grid-stride kernels: 1-D, 256 threads per block.

// The conversions of conv_row_word as a batch of their own (N <= 2048, where no columns
// kernel runs before the rows kernel): out row r = (c, l), prime mods[limbs[l]].
extern "C" __global__ void conv_rows(u32* out, const u32* in, const Mod* mods,
                                     const u32* limbs, const u32* desc, const u32* tab, u32 nl,
                                     u32 src_stride, u32 log_n, u64 total) {
    GRID_STRIDE(idx, total) {
        const u32 row = (u32)(idx >> log_n), c = row / nl, l = row - c * nl;
        out[idx] = conv_row_word(in, desc, tab, mods[limbs[l]], c, l, src_stride, log_n,
                                 idx & ((1ull << log_n) - 1));
    }
}

// Hoisted key inner product (key_inner_hoisted_reference): for the rotations of one ciphertext
// that share a ModUp. Row r = p * nl + l of the batch layout over nl limbs (limbs[l] its prime,
// the last nl - nq the special ones): acc[p][l][k] = sum_j keys[j][p][krow[l]][k] *
// ups[j][l][map[k]] (Modulus::mul_add_reduced, digits in order), started from
// P * lift[p][l][map[k]] (lfac[l] = P mod the prime) for p < nlift and l < nq, from 0
// elsewhere. map = null: no automorphism (map[k] = k). ups[j] is digit j's extended
// polynomial over the nl limbs, keys[j] its key (2 polynomials of nkey limbs), read in place.
extern "C" __global__ void ks_inner_hoisted(u32* acc, const u32* const* ups,
                                            const u32* const* keys, const u32* krow,
                                            const Mod* mods, const u32* limbs, const u32* map,
                                            const u32* lift, const u32* lfac, u32 nlift,
                                            u32 nq, u32 nl, u32 nd, u32 nkey, u32 log_n,
                                            u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 k = idx & ((1ull << log_n) - 1);
        const u32 row = (u32)(idx >> log_n), p = row / nl, l = row - p * nl;
        const Mod& m = mods[limbs[l]];
        const u64 src = ((u64)l << log_n) | (map ? map[k] : k);
        const u64 kw = ((u64)(p * nkey + krow[l]) << log_n) | k;
        u32 a = 0;
        if (p < nlift && l < nq) {
            const u64 lw = ((u64)(p * nq + l) << log_n) | (map ? map[k] : k);
            a = mul_reduced(lift[lw], lfac[l], m);
        }
        for (u32 j = 0; j < nd; j++) a = mul_add_reduced(keys[j][kw], ups[j][src], a, m);
        acc[idx] = a;
    }
}

// ModUp's output for hoisting (mod_up_reference): digit j's extended polynomial over the nl
// limbs of the key-switching basis, written to outs[j]. Row l comes from the source
// ntt_fwd_rows_ks reads for digit j, lrow[(nd + 2) l + 2 + j]: a row of d (bit 31 set: the
// digit's own limb, NTT form) or of ext (the NTT'd ModUp rows). total = nd * nl * N.
extern "C" __global__ void mod_up_gather(u32* const* outs, const u32* d, const u32* ext,
                                         const u32* lrow, u32 nd, u32 nl, u32 log_n,
                                         u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 k = idx & ((1ull << log_n) - 1);
        const u32 row = (u32)(idx >> log_n), j = row / nl, l = row - j * nl;
        const u32 s = lrow[l * (nd + 2) + 2 + j];
        outs[j][((u64)l << log_n) | k] =
            (s >> 31 ? d : ext)[((u64)(s & 0x7fffffffu) << log_n) | k];
    }
}
