// K linear combinations of the same inputs, over a chunk of rows (N words each). The inputs
// are stacked in `x` ([input][chunk words]); one invocation per output word accumulates
// 64-bit products and reduces every 15 terms (products < 2^60, so 15 plus a residue fit).
// prm: [0] log2 N, [1] limbs, [2] words per input in this chunk, [3] inputs, [4] outputs K,
// [5] first row of the chunk (for the limb of a row), [8 + l] prime index of limb l,
// [8 + limbs + (k * inputs + i) * limbs + l] weight.

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(3) var<storage, read> moduli: array<u32>;
@group(0) @binding(4) var<storage, read> prm: array<u32>;

@compute @workgroup_size(256)
fn lincomb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let words = prm[2];
    let ni = prm[3];
    let nl = prm[1];
    if (id >= words * prm[4]) { return; }
    let base = group_base(wid, nwg, id);
    let k = base / words;
    let w = id - k * words;
    let l = (prm[5] + ((base - k * words) >> prm[0])) % nl;
    let m = prm[8u + l] * MOD_STRIDE;
    let q = moduli[m];
    let mu = moduli[m + 1u];
    let bits = moduli[m + 2u];
    let r32 = moduli[m + 3u];
    let wbase = 8u + nl + k * ni * nl + l;
    var acc = vec2<u32>(0u, 0u);
    for (var i = 0u; i < ni; i++) {
        acc = add64(acc, mul_wide(x[i * words + w], prm[wbase + i * nl]));
        if (i % 15u == 14u) {
            acc = vec2<u32>(reduce64(acc, q, mu, bits, r32), 0u);
        }
    }
    out[k * words + w] = reduce64(acc, q, mu, bits, r32);
}
