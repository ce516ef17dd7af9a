// Key inner products of hybrid key switching with the key digits read in place
// (WgpuBackend::key_switch, key_switch_ext, key_inner_hoisted; the words of
// src/backend/mod.rs key_inner_reference and key_inner_hoisted_reference). WGSL has no arrays of
// buffers, so each dispatch binds up to three digits (k0..k2, u0..u2) and adds their products
// to the accumulator; more digits take more dispatches, each reading back what the last wrote.
// Products are added digit by digit with Modulus::mul_add_reduced, as the CPU does, so the words
// match for any split.

@group(0) @binding(0) var<storage, read_write> acc: array<u32>;
@group(0) @binding(3) var<storage, read> moduli: array<u32>;
@group(0) @binding(4) var<storage, read> prm: array<u32>;
@group(0) @binding(5) var<storage, read> lift: array<u32>;
@group(0) @binding(6) var<storage, read> k0: array<u32>;
@group(0) @binding(7) var<storage, read> k1: array<u32>;
@group(0) @binding(8) var<storage, read> k2: array<u32>;

// The accumulator's first value: what earlier passes wrote, else P * lift[p][l] (prm[3]
// lifted polynomials over the prm[4] ciphertext limbs; lfac = [P]_q) for the lifted rows,
// else 0. `lw` is the lift word's index.
fn acc_start(idx: u32, p: u32, l: u32, lw: u32, lfac: u32, q: u32, mu: u32, bits: u32) -> u32 {
    if (prm[7] != 0u) {
        return acc[idx];
    }
    if (p < prm[3] && l < prm[4]) {
        return mul_add_red(lift[lw], lfac, 0u, q, mu, bits);
    }
    return 0u;
}

@group(0) @binding(1) var<storage, read> d: array<u32>;
@group(0) @binding(2) var<storage, read> ext: array<u32>;
@group(0) @binding(9) var<storage, read> tab: array<u32>;

// Digit j's limb at row word `s` of the layout table: row s & 0x7fffffff of d (bit 31: the
// digit's own limb) or of ModUp's rows `ext`, coefficient c.
fn up_word(s: u32, log_n: u32, c: u32) -> u32 {
    let w = ((s & 0x7fffffffu) << log_n) + c;
    if ((s >> 31u) != 0u) {
        return d[w];
    }
    return ext[w];
}

// One key switch's inner product into the batch layout over q ++ p (2 polynomials of nl limbs).
// tab: the plan's cached table (Gpu::key_switch_table); from tab[tab[1]], (2 + digits) words per
// limb l (FusedKsLayout::lrow: prime, key row, then each digit's source row), from tab[tab[2]]
// [P]_q per limb. prm: [0] log2 N, [1] digits in this pass (1-3), [2] first digit of the pass,
// [3] lifted polynomials, [4] ciphertext limbs nq, [5] key limbs, [6] nl, [7] 1 after the first
// pass, [8] digits in all.
@compute @workgroup_size(256)
fn ks_inner(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let nl = prm[6];
    if (idx >= ((2u * nl) << log_n)) { return; }
    let c = idx & ((1u << log_n) - 1u);
    let row = group_base(wid, nwg, idx) >> log_n;
    let p = row / nl;
    let l = row - p * nl;
    let lr = tab[1] + l * (prm[8] + 2u);
    let m = tab[lr] * MOD_STRIDE;
    let q = moduli[m];
    let mu = moduli[m + 1u];
    let bits = moduli[m + 2u];
    let kw = ((p * prm[5] + tab[lr + 1u]) << log_n) + c;
    let lw = ((p * prm[4] + l) << log_n) + c;
    var a = acc_start(idx, p, l, lw, tab[tab[2] + l], q, mu, bits);
    let j = lr + 2u + prm[2];
    a = mul_add_red(k0[kw], up_word(tab[j], log_n, c), a, q, mu, bits);
    if (prm[1] > 1u) {
        a = mul_add_red(k1[kw], up_word(tab[j + 1u], log_n, c), a, q, mu, bits);
    }
    if (prm[1] > 2u) {
        a = mul_add_red(k2[kw], up_word(tab[j + 2u], log_n, c), a, q, mu, bits);
    }
    acc[idx] = a;
}

@group(0) @binding(10) var<storage, read> u0: array<u32>;
@group(0) @binding(11) var<storage, read> u1: array<u32>;
@group(0) @binding(12) var<storage, read> u2: array<u32>;

// The hoisted inner product of one rotation (key_inner_hoisted_reference): digit j's extended
// polynomial u_j over the nl limbs (ModUp shared by every rotation), read through the NTT-domain
// automorphism X -> X^g (prm[8]; 0: none), times its key digit k_j, started from P * σ(lift).
// prm: [0]-[7] as ks_inner's, [8] g, from [16] 3 words per limb l: prime, key row, [P]_q.
@compute @workgroup_size(256)
fn ks_inner_hoisted(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let nl = prm[6];
    if (idx >= ((2u * nl) << log_n)) { return; }
    let k = idx & ((1u << log_n) - 1u);
    let row = group_base(wid, nwg, idx) >> log_n;
    let p = row / nl;
    let l = row - p * nl;
    let lr = 16u + 3u * l;
    let m = prm[lr] * MOD_STRIDE;
    let q = moduli[m];
    let mu = moduli[m + 1u];
    let bits = moduli[m + 2u];
    var src = k;
    if (prm[8] != 0u) {
        src = ntt_perm(k, log_n, prm[8]);
    }
    let kw = ((p * prm[5] + prm[lr + 1u]) << log_n) + k;
    let uw = (l << log_n) + src;
    let lw = ((p * prm[4] + l) << log_n) + src;
    var a = acc_start(idx, p, l, lw, prm[lr + 2u], q, mu, bits);
    a = mul_add_red(k0[kw], u0[uw], a, q, mu, bits);
    if (prm[1] > 1u) {
        a = mul_add_red(k1[kw], u1[uw], a, q, mu, bits);
    }
    if (prm[1] > 2u) {
        a = mul_add_red(k2[kw], u2[uw], a, q, mu, bits);
    }
    acc[idx] = a;
}
