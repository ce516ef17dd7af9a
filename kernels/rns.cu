// RNS kernels: fast base conversion (src/math/rns.rs BaseConverter::convert) and BFV's
// scale-and-round (src/math/scale_round.rs ScaleRounder), in the same integer arithmetic.

// Base conversion of `count` polynomials from k limbs to kt limbs; one thread per output word
// (poly, j, coefficient), 1-D grid-stride. Tables of the converter:
//   fm[k], tm[kt]   source and target moduli
//   bhi[2k]         ([(B/b_i)^{-1}]_{b_i}, shoup)
//   bhc[kt*k]       [B/b_i]_{c_j} at [j*k + i]
//   bmc[kt]         [B]_{c_j}
//   frac[k]         floor(2^62 / b_i)
// y_i = x_i * bhi_i mod b_i; out = sum_i y_i [B/b_i]_{c_j}  (minus v [B]_{c_j} when exact, with
// v = (sum_i (y_i * frac_i) >> 30 + 2^31) >> 32, the rounded sum of y_i / b_i in 32.32 fixed point).
extern "C" __global__ void base_convert(u32* out, const u32* in, const Mod* fm, const Mod* tm,
                                        const u32* bhi, const u32* bhc, const u32* bmc,
                                        const u64* frac, u32 k, u32 kt, u32 log_n, u32 exact,
                                        u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 coeff = idx & ((1ull << log_n) - 1);
        const u32 r = (u32)(idx >> log_n);
        const u32 c = r / kt, j = r - c * kt;
        const Mod& cj = tm[j];
        const u32* x = in + (((u64)c * k) << log_n) + coeff;
        u64 v = 0;
        u32 acc = conv_sum(x, log_n, fm, bhi, bhc + j * k, k, cj, exact ? frac : nullptr, v);
        if (exact) {
            v = (v + (1ull << 31)) >> 32;
            acc = mod_sub(acc, mul_reduced((u32)v, bmc[j], cj), cj.q);
        }
        out[idx] = acc;
    }
}

// Scale-and-round round(t x / Q) of `count` polynomials over Q u C (kq + kc limbs, Q first)
// into C; one thread per (poly, coefficient), looping over the kc outputs. Tables:
//   qm[kq], cm[kc]  moduli
//   fint[kc*kq]     [F_i]_{c_j} at [j*kq + i]
//   theta[kq]       Theta_i = floor(frac(t C w_i / q_i) 2^64)
//   lam[2kc]        (lambda_j, shoup)
// R = floor((sum_i x_i Theta_i + 2^63) / 2^64) with a 128-bit (hi, lo) accumulator, then
// out_j = [sum_i x_i F_ij] + [R] + x_{c_j} lambda_j, all mod c_j (ScaleRounder::output_limb).
extern "C" __global__ void scale_round(u32* out, const u32* in, const Mod* qm, const Mod* cm,
                                       const u32* fint, const u64* theta, const u32* lam,
                                       u32 kq, u32 kc, u32 log_n, u64 total) {
    GRID_STRIDE(idx, total) {
        const u64 coeff = idx & ((1ull << log_n) - 1);
        const u64 c = idx >> log_n;
        const u32* x = in + ((c * (kq + kc)) << log_n) + coeff;
        u64 lo = 0, hi = 0;
        for (u32 i = 0; i < kq; i++) {
            u64 xi = x[(u64)i << log_n];
            u64 plo = xi * theta[i];
            u64 phi = __umul64hi(xi, theta[i]);
            lo += plo;
            hi += phi + (lo < plo ? 1 : 0);
        }
        {
            u64 half = 1ull << 63;
            lo += half;
            hi += (lo < half ? 1 : 0);
        }
        const u64 rnd = hi;
        u32* o = out + ((c * kc) << log_n) + coeff;
        for (u32 j = 0; j < kc; j++) {
            const Mod& cj = cm[j];
            const u32 cv = cj.q;
            u32 acc = 0;
            for (u32 i = 0; i < kq; i++) {
                const u32 qv = qm[i].q;
                u32 xk = x[(u64)i << log_n];
                u32 xr;
                if (qv <= cv) xr = xk;
                else if (qv < 2 * cv) xr = csub(xk, cv);
                else xr = reduce_u64((u64)xk, cj);
                acc = mul_add_reduced(xr, fint[j * kq + i], acc, cj);
            }
            u32 own = x[(u64)(kq + j) << log_n];
            u32 s = mod_add(acc, reduce_u64(rnd, cj), cv);
            o[(u64)j << log_n] = mod_add(s, mul_shoup(own, lam[2 * j], lam[2 * j + 1], cv), cv);
        }
    }
}
