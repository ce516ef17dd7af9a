// Negacyclic NTT over rows of N words (row r = limb r % limbs of polynomial r / limbs), the same
// Harvey lazy butterflies and bit-reversed order as src/math/ntt.rs. Stages whose blocks span
// more than TILE words run two per dispatch (`*_stage2`, one invocation per 4 words), an odd
// one alone (`*_stage`, one invocation per butterfly); the rest
// run in one dispatch per direction in workgroup memory (`fwd_tail`, `inv_head`: one
// workgroup per TILE-word tile, 256 invocations, TILE/512 butterflies each per stage).
// prm: [0] log2 N, [1] limbs, [2] rows in this chunk, [3] log2 t of the global stage,
// [4] 1 if this stage is the last of the inverse (scale by N^-1), [5] log2 tile,
// [8 + l] prime index of limb l.
// tw: for prime p, kind k (0 psi_rev, 1 its Shoup, 2 ipsi_rev, 3 its Shoup): [((4p + k) << log N) + i].

@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@group(0) @binding(1) var<storage, read> tw: array<u32>;
@group(0) @binding(2) var<storage, read> moduli: array<u32>;
@group(0) @binding(3) var<storage, read> prm: array<u32>;

const TILE: u32 = 4096u;
var<workgroup> sh: array<u32, 4096>;

fn prime_of_row(row: u32) -> u32 {
    return prm[8u + row % prm[1]];
}

fn ct(x: ptr<function, u32>, y: ptr<function, u32>, w: u32, ws: u32, q: u32) {
    let two_q = 2u * q;
    let u = min(*x, *x - two_q);
    let v = mul_shoup_lazy(*y, w, ws, q);
    *x = u + v;
    *y = u + two_q - v;
}

fn gs(x: ptr<function, u32>, y: ptr<function, u32>, w: u32, ws: u32, q: u32) {
    let two_q = 2u * q;
    let u = *x;
    let v = *y;
    let s = u + v;
    *x = min(s, s - two_q);
    *y = mul_shoup_lazy(u + two_q - v, w, ws, q);
}

// Inverse scaling by N^-1 to [0, q).
fn scale_inv(x: u32, m: u32) -> u32 {
    let v = mul_shoup_lazy(x, moduli[m + 4u], moduli[m + 5u], moduli[m]);
    return min(v, v - moduli[m]);
}

@compute @workgroup_size(256)
fn fwd_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let half = 1u << (log_n - 1u);
    if (j >= prm[2] * half) { return; }
    let row = group_base(wid, nwg, j) >> (log_n - 1u);
    let b = j & (half - 1u);
    let tl = prm[3];
    let blk = b >> tl;
    let x = (row << log_n) + (blk << (tl + 1u)) + (b & ((1u << tl) - 1u));
    let y = x + (1u << tl);
    let p = prime_of_row(row);
    let q = moduli[p * MOD_STRIDE];
    let wi = (1u << (log_n - 1u - tl)) + blk;
    var u = data[x];
    var v = data[y];
    ct(&u, &v, tw[((4u * p) << log_n) + wi], tw[((4u * p + 1u) << log_n) + wi], q);
    data[x] = u;
    data[y] = v;
}

@compute @workgroup_size(256)
fn inv_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let half = 1u << (log_n - 1u);
    if (j >= prm[2] * half) { return; }
    let row = group_base(wid, nwg, j) >> (log_n - 1u);
    let b = j & (half - 1u);
    let tl = prm[3];
    let blk = b >> tl;
    let x = (row << log_n) + (blk << (tl + 1u)) + (b & ((1u << tl) - 1u));
    let y = x + (1u << tl);
    let p = prime_of_row(row);
    let m = p * MOD_STRIDE;
    let q = moduli[m];
    let wi = (1u << (log_n - 1u - tl)) + blk;
    var u = data[x];
    var v = data[y];
    gs(&u, &v, tw[((4u * p + 2u) << log_n) + wi], tw[((4u * p + 3u) << log_n) + wi], q);
    if (prm[4] != 0u) {
        u = scale_inv(u, m);
        v = scale_inv(v, m);
    }
    data[x] = u;
    data[y] = v;
}

// Two forward global stages in one pass (log2 t = prm[3] and prm[3] - 1): one invocation per
// group of 4 words a0..a3 at offsets 0, t/2, t, 3t/2 of a 2t block; stage prm[3] pairs (a0, a2)
// and (a1, a3), the next (a0, a1) and (a2, a3). The same butterflies on the same words as two
// `fwd_stage` dispatches, with half the global-memory passes.
@compute @workgroup_size(256)
fn fwd_stage2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let quarter = 1u << (log_n - 2u);
    if (j >= prm[2] * quarter) { return; }
    let row = group_base(wid, nwg, j) >> (log_n - 2u);
    let b = j & (quarter - 1u);
    let tl = prm[3];
    let h = 1u << (tl - 1u);
    let blk = b >> (tl - 1u);
    let x = (row << log_n) + (blk << (tl + 1u)) + (b & (h - 1u));
    let p = prime_of_row(row);
    let q = moduli[p * MOD_STRIDE];
    let w = (4u * p) << log_n;
    let ws = (4u * p + 1u) << log_n;
    var a0 = data[x];
    var a1 = data[x + h];
    var a2 = data[x + 2u * h];
    var a3 = data[x + 3u * h];
    let w1 = (1u << (log_n - 1u - tl)) + blk;
    ct(&a0, &a2, tw[w + w1], tw[ws + w1], q);
    ct(&a1, &a3, tw[w + w1], tw[ws + w1], q);
    let w2 = (1u << (log_n - tl)) + 2u * blk;
    ct(&a0, &a1, tw[w + w2], tw[ws + w2], q);
    ct(&a2, &a3, tw[w + w2 + 1u], tw[ws + w2 + 1u], q);
    data[x] = a0;
    data[x + h] = a1;
    data[x + 2u * h] = a2;
    data[x + 3u * h] = a3;
}

// Two inverse global stages in one pass (log2 t = prm[3] and prm[3] + 1): a0..a3 at offsets
// 0, t, 2t, 3t of a 4t block; stage prm[3] pairs (a0, a1) and (a2, a3), the next (a0, a2) and
// (a1, a3); prm[4]: the second is the transform's last (scale by N^-1).
@compute @workgroup_size(256)
fn inv_stage2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let quarter = 1u << (log_n - 2u);
    if (j >= prm[2] * quarter) { return; }
    let row = group_base(wid, nwg, j) >> (log_n - 2u);
    let b = j & (quarter - 1u);
    let tl = prm[3];
    let t = 1u << tl;
    let blk = b >> tl;
    let x = (row << log_n) + (blk << (tl + 2u)) + (b & (t - 1u));
    let p = prime_of_row(row);
    let m = p * MOD_STRIDE;
    let q = moduli[m];
    let w = (4u * p + 2u) << log_n;
    let ws = (4u * p + 3u) << log_n;
    var a0 = data[x];
    var a1 = data[x + t];
    var a2 = data[x + 2u * t];
    var a3 = data[x + 3u * t];
    let w1 = (1u << (log_n - 1u - tl)) + 2u * blk;
    gs(&a0, &a1, tw[w + w1], tw[ws + w1], q);
    gs(&a2, &a3, tw[w + w1 + 1u], tw[ws + w1 + 1u], q);
    let w2 = (1u << (log_n - 2u - tl)) + blk;
    gs(&a0, &a2, tw[w + w2], tw[ws + w2], q);
    gs(&a1, &a3, tw[w + w2], tw[ws + w2], q);
    if (prm[4] != 0u) {
        a0 = scale_inv(a0, m);
        a1 = scale_inv(a1, m);
        a2 = scale_inv(a2, m);
        a3 = scale_inv(a3, m);
    }
    data[x] = a0;
    data[x + t] = a1;
    data[x + 2u * t] = a2;
    data[x + 3u * t] = a3;
}

// Last log2(tile) forward stages of one tile, then the reduction to [0, q).
@compute @workgroup_size(256)
fn fwd_tail(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile_id = wid.y * nwg.x + wid.x;
    let log_n = prm[0];
    let log_s = prm[5];
    let s = 1u << log_s;
    let tiles_per_row = 1u << (log_n - log_s);
    if (tile_id >= prm[2] * tiles_per_row) { return; }
    let row = tile_id >> (log_n - log_s);
    let start = tile_id << log_s;
    let tile_in_row = tile_id & (tiles_per_row - 1u);
    let p = prime_of_row(row);
    let q = moduli[p * MOD_STRIDE];
    for (var i = lid.x; i < s; i += WG) {
        sh[i] = data[start + i];
    }
    workgroupBarrier();
    for (var tl = log_s; tl > 0u; tl--) {
        let t = 1u << (tl - 1u);
        for (var b = lid.x; b < s / 2u; b += WG) {
            let blk = b >> (tl - 1u);
            let x = (blk << tl) + (b & (t - 1u));
            // global block index within the row: tile offset / 2t + local block
            let gblk = (tile_in_row << (log_s - tl)) + blk;
            let wi = (1u << (log_n - tl)) + gblk;
            var u = sh[x];
            var v = sh[x + t];
            ct(&u, &v, tw[((4u * p) << log_n) + wi], tw[((4u * p + 1u) << log_n) + wi], q);
            sh[x] = u;
            sh[x + t] = v;
        }
        workgroupBarrier();
    }
    let two_q = 2u * q;
    for (var i = lid.x; i < s; i += WG) {
        let x = sh[i];
        let v = min(x, x - two_q);
        data[start + i] = min(v, v - q);
    }
}

// First log2(tile) inverse stages of one tile (and the N^-1 scaling when the tile is the row).
@compute @workgroup_size(256)
fn inv_head(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile_id = wid.y * nwg.x + wid.x;
    let log_n = prm[0];
    let log_s = prm[5];
    let s = 1u << log_s;
    let tiles_per_row = 1u << (log_n - log_s);
    if (tile_id >= prm[2] * tiles_per_row) { return; }
    let row = tile_id >> (log_n - log_s);
    let start = tile_id << log_s;
    let tile_in_row = tile_id & (tiles_per_row - 1u);
    let p = prime_of_row(row);
    let m = p * MOD_STRIDE;
    let q = moduli[m];
    for (var i = lid.x; i < s; i += WG) {
        sh[i] = data[start + i];
    }
    workgroupBarrier();
    for (var tl = 1u; tl <= log_s; tl++) {
        let t = 1u << (tl - 1u);
        for (var b = lid.x; b < s / 2u; b += WG) {
            let blk = b >> (tl - 1u);
            let x = (blk << tl) + (b & (t - 1u));
            let gblk = (tile_in_row << (log_s - tl)) + blk;
            let wi = (1u << (log_n - tl)) + gblk;
            var u = sh[x];
            var v = sh[x + t];
            gs(&u, &v, tw[((4u * p + 2u) << log_n) + wi], tw[((4u * p + 3u) << log_n) + wi], q);
            sh[x] = u;
            sh[x + t] = v;
        }
        workgroupBarrier();
    }
    let last = prm[4] != 0u;
    for (var i = lid.x; i < s; i += WG) {
        var x = sh[i];
        if (last) { x = scale_inv(x, m); }
        data[start + i] = x;
    }
}
