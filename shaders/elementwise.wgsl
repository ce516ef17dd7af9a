// Element-wise operations over a chunk of `count x limbs x N` words, one invocation per word.
// prm: [0] log2 N, [1] limbs, [2] words in this chunk, [3] flags (bit 0: b broadcasts,
// bit 1: c broadcasts), [8 + l] prime index of limb l, [8 + limbs + 2l] scalar s_l and
// [8 + limbs + 2l + 1] its Shoup companion.

@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read> c: array<u32>;
@group(0) @binding(3) var<storage, read> moduli: array<u32>;
@group(0) @binding(4) var<storage, read> prm: array<u32>;

fn limb_of(base: u32) -> u32 {
    return (base >> prm[0]) % prm[1];
}

fn prime_base(l: u32) -> u32 {
    return prm[8u + l] * MOD_STRIDE;
}

// Index into an operand that may be one broadcast polynomial.
fn bidx(i: u32, base: u32, bit: u32) -> u32 {
    let per_poly = prm[1] << prm[0];
    return select(i, i - (base / per_poly) * per_poly, (prm[3] & bit) != 0u);
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let q = moduli[prime_base(limb_of(base))];
    a[i] = add_mod(a[i], b[bidx(i, base, 1u)], q);
}

@compute @workgroup_size(256)
fn sub(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let q = moduli[prime_base(limb_of(base))];
    a[i] = sub_mod(a[i], b[bidx(i, base, 1u)], q);
}

@compute @workgroup_size(256)
fn neg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let q = moduli[prime_base(limb_of(base))];
    a[i] = neg_mod(a[i], q);
}

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let m = prime_base(limb_of(base));
    a[i] = mul_add_red(a[i], b[bidx(i, base, 1u)], 0u, moduli[m], moduli[m + 1u], moduli[m + 2u]);
}

@compute @workgroup_size(256)
fn mul_acc(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let m = prime_base(limb_of(base));
    a[i] = mul_add_red(b[bidx(i, base, 1u)], c[bidx(i, base, 2u)], a[i], moduli[m], moduli[m + 1u], moduli[m + 2u]);
}

@compute @workgroup_size(256)
fn mul_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let l = limb_of(base);
    let s = 8u + prm[1] + 2u * l;
    a[i] = mul_shoup(a[i], prm[s], prm[s + 1u], moduli[prime_base(l)]);
}

@compute @workgroup_size(256)
fn add_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let l = limb_of(base);
    a[i] = add_mod(a[i], prm[8u + prm[1] + 2u * l], moduli[prime_base(l)]);
}

// ModDown's last step (mod_down_reference's sub and mul_scalar in one pass): a = (x - c) * s_l
// over count x limbs words, where x (b, bound whole) holds poly p's limb l at row
// p * prm[4] + l, c is the lifted tail (a's layout), s_l and its Shoup companion are in prm as
// for mul_scalar; with prm[3] bit 0, a holds a batch the result is added to (relinearization's
// c0, c1: Modulus::add after the product).
@compute @workgroup_size(256)
fn moddown_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    if (i >= prm[2]) { return; }
    let l = limb_of(base);
    let p = (base >> prm[0]) / prm[1];
    let q = moduli[prime_base(l)];
    let xi = ((p * prm[4] + l) << prm[0]) | (i & ((1u << prm[0]) - 1u));
    let s = 8u + prm[1] + 2u * l;
    let r = mul_shoup(sub_mod(b[xi], c[i], q), prm[s], prm[s + 1u], q);
    a[i] = select(r, add_mod(a[i], r, q), (prm[3] & 1u) != 0u);
}

// (a0, a1) x (b0, b1) -> (a0 b0, a0 b1 + a1 b0, a1 b1); prm[2] = words per polynomial.
@group(0) @binding(5) var<storage, read_write> tp_out: array<u32>;

@compute @workgroup_size(256)
fn tensor_product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let base = group_base(wid, nwg, i);
    let w = prm[2];
    if (i >= w) { return; }
    let m = prime_base(limb_of(base));
    let q = moduli[m];
    let mu = moduli[m + 1u];
    let bits = moduli[m + 2u];
    let a0 = b[i];
    let a1 = b[w + i];
    let b0 = c[i];
    let b1 = c[w + i];
    tp_out[i] = mul_add_red(a0, b0, 0u, q, mu, bits);
    tp_out[w + i] = mul_add_red(a0, b1, mul_add_red(a1, b0, 0u, q, mu, bits), q, mu, bits);
    tp_out[2u * w + i] = mul_add_red(a1, b1, 0u, q, mu, bits);
}
