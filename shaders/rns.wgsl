// Base conversion and BFV scale-and-round, one invocation per (polynomial, output limb, coefficient).
// Both read a table uploaded once per BaseConverter / ScaleRounder (layouts below) and reproduce
// src/math/rns.rs and src/math/scale_round.rs word for word (the fixed-point sums are exact
// integer arithmetic on u32 words).
// prm: [0] log2 N, [1] polynomials in this chunk, [2] 1 for the exact base conversion.

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> inp: array<u32>;
@group(0) @binding(2) var<storage, read> tab: array<u32>;
@group(0) @binding(4) var<storage, read> prm: array<u32>;

// conv tab: [0] k (source primes), [1] kt (target primes); at 8 + 5i: b_i, [(B/b_i)^-1]_{b_i},
// its Shoup, floor(2^62/b_i) lo, hi; at 8 + 5k + 4j: c_j, mu32, bits, [B]_{c_j};
// at 8 + 5k + 4kt + j*k + i: [B/b_i]_{c_j}. All relative to the table's first word `t`.
// Coefficient c of target prime j from the k source rows starting at row `src` of `inp`.
fn conv_word(t: u32, j: u32, src: u32, c: u32, log_n: u32, exact: bool) -> u32 {
    let k = tab[t];
    let kt = tab[t + 1u];
    let tj = t + 8u + 5u * k + 4u * j;
    let cj = tab[tj];
    let mu = tab[tj + 1u];
    let bits = tab[tj + 2u];
    let mrow = t + 8u + 5u * k + 4u * kt + j * k;
    var o = 0u;
    var v = vec2<u32>(0u, 0u);
    for (var i = 0u; i < k; i++) {
        let s = t + 8u + 5u * i;
        let y = mul_shoup(inp[((src + i) << log_n) + c], tab[s + 1u], tab[s + 2u], tab[s]);
        if (exact) {
            // (y * floor(2^62/b_i)) >> 30 < 2^32.
            let p0 = mul_wide(y, tab[s + 3u]);
            let p1 = mul_wide(y, tab[s + 4u]);
            let w1 = p0.y + p1.x;
            v = add64(v, vec2<u32>((p0.x >> 30u) | (w1 << 2u), 0u));
        }
        o = mul_add_red(y % cj, tab[mrow + i], o, cj, mu, bits);
    }
    if (exact) {
        let vr = add64(v, vec2<u32>(0x80000000u, 0u)).y;
        o = sub_mod(o, mul_add_red(vr, tab[tj + 3u], 0u, cj, mu, bits), cj);
    }
    return o;
}

@compute @workgroup_size(256)
fn base_convert(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let k = tab[0];
    let kt = tab[1];
    let n = 1u << log_n;
    if (id >= prm[1] * kt * n) { return; }
    let row = group_base(wid, nwg, id) >> log_n;
    let j = row % kt;
    out[id] = conv_word(0u, j, (row / kt) * k, id & (n - 1u), log_n, prm[2] != 0u);
}

// ModUp's new rows for every digit of a key switch at once (WgpuBackend::mod_up_rows): `inp` is
// d in coefficient form (one polynomial), `tab` the plan's cached table: at 8 + 3r, for output
// row r, the offset of its digit's conversion table (the layout above), the digit's first row
// of d, and the row's target index in that digit. prm: [0] log2 N, [1] rows.
@compute @workgroup_size(256)
fn mod_up_convert(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let n = 1u << log_n;
    if (id >= (prm[1] << log_n)) { return; }
    let r = 8u + 3u * (group_base(wid, nwg, id) >> log_n);
    out[id] = conv_word(tab[r], tab[r + 2u], tab[r + 1u], id & (n - 1u), log_n, false);
}

// scale tab: [0] kq, [1] kc; at 8 + 3i: q_i, Θ_i lo, hi; at 8 + 3kq + 8j: c_j, mu32, bits,
// 2^32 mod c_j, λ_j, shoup(λ_j); at 8 + 3kq + 8kc + j*kq + i: [F_i]_{c_j}.
@compute @workgroup_size(256)
fn scale_round(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let kq = tab[0];
    let kc = tab[1];
    let n = 1u << log_n;
    if (id >= prm[1] * kc * n) { return; }
    let c = id & (n - 1u);
    let row = group_base(wid, nwg, id) >> log_n;
    let j = row % kc;
    let poly = row / kc;
    let inb = poly * (kq + kc);
    let tj = 8u + 3u * kq + 8u * j;
    let cj = tab[tj];
    let mu = tab[tj + 1u];
    let bits = tab[tj + 2u];
    let frow = 8u + 3u * kq + 8u * kc + j * kq;
    // 128-bit sum of x_i * Θ_i (words a0..a3), then R = bits 64..127 of (sum + 2^63).
    var a0 = 0u;
    var a1 = 0u;
    var a2 = 0u;
    var a3 = 0u;
    var o = 0u;
    for (var i = 0u; i < kq; i++) {
        let xi = inp[((inb + i) << log_n) + c];
        let p0 = mul_wide(xi, tab[8u + 3u * i + 1u]);
        let p1 = mul_wide(xi, tab[8u + 3u * i + 2u]);
        // x * Θ = p0 + p1 * 2^32 as three words (w0, w1, w2); it is < 2^96.
        let w1 = p0.y + p1.x;
        let w2 = p1.y + select(0u, 1u, w1 < p0.y);
        let s0 = a0 + p0.x;
        let c0 = select(0u, 1u, s0 < a0);
        let t1 = a1 + w1;
        let c1a = select(0u, 1u, t1 < a1);
        let s1 = t1 + c0;
        let c1 = c1a + select(0u, 1u, s1 < t1);
        let t2 = a2 + w2;
        let c2a = select(0u, 1u, t2 < a2);
        let s2 = t2 + c1;
        let c2 = c2a + select(0u, 1u, s2 < t2);
        a0 = s0;
        a1 = s1;
        a2 = s2;
        a3 = a3 + c2;
        o = mul_add_red(xi % cj, tab[frow + i], o, cj, mu, bits);
    }
    // + 2^63
    let t1 = a1 + 0x80000000u;
    let c1 = select(0u, 1u, t1 < a1);
    let r2 = a2 + c1;
    let r3 = a3 + select(0u, 1u, r2 < a2);
    let rr = reduce64(vec2<u32>(r2, r3), cj, mu, bits, tab[tj + 3u]);
    let own = inp[((inb + kq + j) << log_n) + c];
    let s = add_mod(o, rr, cj);
    out[id] = add_mod(s, mul_shoup(own, tab[tj + 4u], tab[tj + 5u], cj), cj);
}
