// Hybrid key switching with every digit in each launch (src/backend/mod.rs
// key_switch_reference and mod_down_reference define the words): ModUp of all digits in one
// conversion launch (then one batched NTT), the key inner product reading the key digits'
// limbs in place; ModDown ends inside its forward NTT (ntt.cu ntt_fwd_rows_moddown). Tables are built on the
// host per plan and cached (CudaBackend::ks_tables). 1-D grid-stride, 256 threads per block.

// ModUp conversion of every digit: output row r of `out` (coefficient form; rows
// [digit][target limb]) converts digit j's k source rows of `in` to one target prime.
// desc[6r .. 6r+6] = (first source row in `in`, k, target prime (index into mods), then word
// offsets into tab of the digit's k source Mods, its 2k ([(B/b_i)^{-1}]_{b_i}, shoup) words,
// and the row's k words [B/b_i]_c). BaseConverter::convert, approximate (no v correction).
extern "C" __global__ void modup_convert(u32* out, const u32* in, const Mod* mods,
                                         const u32* desc, const u32* tab, u32 log_n, u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 coeff = idx & ((1ull << log_n) - 1);
        const u32* dr = desc + 6 * (idx >> log_n);
        u64 v = 0;
        out[idx] = conv_sum(in + ((u64)dr[0] << log_n) + coeff, log_n,
                            (const Mod*)(tab + dr[3]), tab + dr[4], tab + dr[5], dr[1],
                            mods[dr[2]], nullptr, v);
    }
}

// Key inner product of nd digits: output row o is acc[p][l] = sum_j key_j[p][krow_l] * up_j[l]
// (Modulus::mul_add_reduced from 0, digits in order: CpuBackend::mul_acc), with
// orow[o] = p << 16 | l and lrow[(nd + 2) l ..] = (prime, key row, src_0 .. src_{nd-1}):
// up_j[l] is row (src_j & 0x7fffffff) of d (src_j bit 31 set: the digit's own limb, NTT form)
// or of ext (the NTT'd ModUp rows). keys[j] = digit j's key (2 polynomials of nkey limbs),
// read in place.
extern "C" __global__ void ks_inner(u32* acc, const u32* d, const u32* ext,
                                    const u32* const* keys, const u32* orow, const u32* lrow,
                                    const Mod* mods, u32 nd, u32 nkey, u32 log_n, u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 coeff = idx & ((1ull << log_n) - 1);
        const u32 o = orow[idx >> log_n];
        const u32* lr = lrow + (o & 0xffff) * (nd + 2);
        const Mod& m = mods[lr[0]];
        const u64 kw = ((u64)((o >> 16) * nkey + lr[1]) << log_n) | coeff;
        u32 a = 0;
        for (u32 j = 0; j < nd; j++) {
            const u32 s = lr[2 + j];
            const u32 x = (s >> 31 ? d : ext)[((u64)(s & 0x7fffffffu) << log_n) | coeff];
            a = mul_add_reduced(keys[j][kw], x, a, m);
        }
        acc[idx] = a;
    }
}
