// Galois automorphisms X -> X^g over rows of N words, one invocation per input word.
// prm: [0] log2 N, [1] limbs, [2] rows in this chunk, [3] g mod 2N, [8 + l] prime index of limb l.

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> inp: array<u32>;
@group(0) @binding(3) var<storage, read> moduli: array<u32>;
@group(0) @binding(4) var<storage, read> prm: array<u32>;

// Coefficients: X^j -> ±X^{jg mod N} (X^N = -1); 2N divides 2^32, so the wrapping product is exact mod 2N.
@compute @workgroup_size(256)
fn automorphism(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    if (id >= (prm[2] << log_n)) { return; }
    let n = 1u << log_n;
    let row = id >> log_n;
    let j = id & (n - 1u);
    let k = (j * prm[3]) & (2u * n - 1u);
    let x = inp[id];
    let base = row << log_n;
    if (k < n) {
        out[base + k] = x;
    } else {
        let q = moduli[prm[8u + row % prm[1]] * MOD_STRIDE];
        out[base + k - n] = neg_mod(x, q);
    }
}

// NTT domain: out[k] = in[ntt_perm(k)] (common.wgsl).
@compute @workgroup_size(256)
fn automorphism_ntt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    if (id >= (prm[2] << log_n)) { return; }
    let n = 1u << log_n;
    let k = id & (n - 1u);
    out[id] = inp[(id - k) + ntt_perm(k, log_n, prm[3])];
}
