// Negacyclic NTT over rows of N words (row r = limb r % limbs of polynomial r / limbs), the same
// Harvey lazy butterflies and bit-reversed order as src/math/ntt.rs. Stages whose blocks span
// more than TILE words run k <= 4 per dispatch (`*_stages`, one invocation per 2^k words; the
// backend picks k <= 2, MAX_PASS_STAGES);
// the rest run in one dispatch per direction in workgroup memory (`fwd_tail`, `inv_head`: one
// workgroup per TILE-word tile, 256 invocations, TILE/512 butterflies each per stage).
// prm: [0] log2 N, [1] limbs, [2] rows in this chunk, [3] log2 t of the pass's first global
// stage, [4] 1 if the pass ends the inverse (scale by N^-1), [5] log2 tile, [6] stages k,
// [8 + l] prime index of limb l.
// tw: for prime p, kind k (0 psi_rev, 1 its Shoup, 2 ipsi_rev, 3 its Shoup): [((4p + k) << log N) + i].

@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@group(0) @binding(1) var<storage, read> tw: array<u32>;
@group(0) @binding(2) var<storage, read> moduli: array<u32>;
@group(0) @binding(3) var<storage, read> prm: array<u32>;

const TILE: u32 = 4096u;
// Global stages of a `*_stages` pass (pipeline constant; = prm[6]): a constant trip count lets
// the compiler unroll the passes' loops and keep their 2^k words in registers.
override STAGES: u32 = 1u;
var<workgroup> sh: array<u32, 4096>;

fn prime_of_row(row: u32) -> u32 {
    return prm[8u + row % prm[1]];
}

// Cooley-Tukey butterfly on (x, y) in [0, 4q): (x + w y, x - w y), outputs in [0, 4q).
fn ct(x: u32, y: u32, w: u32, ws: u32, q: u32) -> vec2<u32> {
    let two_q = 2u * q;
    let u = min(x, x - two_q);
    let v = mul_shoup_lazy(y, w, ws, q);
    return vec2<u32>(u + v, u + two_q - v);
}

// Gentleman-Sande butterfly on (x, y) in [0, 2q): (x + y, w (x - y)), outputs in [0, 2q).
fn gs(x: u32, y: u32, w: u32, ws: u32, q: u32) -> vec2<u32> {
    let two_q = 2u * q;
    let s = x + y;
    return vec2<u32>(min(s, s - two_q), mul_shoup_lazy(x + two_q - y, w, ws, q));
}

// Inverse scaling by N^-1 to [0, q).
fn scale_inv(x: u32, m: u32) -> u32 {
    let v = mul_shoup_lazy(x, moduli[m + 4u], moduli[m + 5u], moduli[m]);
    return min(v, v - moduli[m]);
}

// Up to four forward global stages in one pass, log2 t = prm[3] down to prm[3] - k + 1
// (k = prm[6]): one invocation per group of 2^k words spaced 2^(prm[3] + 1 - k) apart in a
// 2t block, butterflies in registers. The same butterflies on the same words as k passes of one
// stage each, with one read and one write of the data.
@compute @workgroup_size(256)
fn fwd_stages(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let k = STAGES;
    let log_g = log_n - k;
    if (j >= (prm[2] << log_g)) { return; }
    let row = group_base(wid, nwg, j) >> log_g;
    let b = j & ((1u << log_g) - 1u);
    let tl = prm[3];
    let ls = tl + 1u - k;
    let blk = b >> ls;
    let x = (row << log_n) + (blk << (tl + 1u)) + (b & ((1u << ls) - 1u));
    let p = prime_of_row(row);
    let q = moduli[p * MOD_STRIDE];
    let w = (4u * p) << log_n;
    let ws = (4u * p + 1u) << log_n;
    let m = 1u << k;
    var a: array<u32, 16>;
    for (var i = 0u; i < m; i++) {
        a[i] = data[x + (i << ls)];
    }
    for (var st = 0u; st < k; st++) {
        // Stage tl - st: pairs d apart in the group, block index blk 2^st + (i >> (k - st)).
        let d = 1u << (k - 1u - st);
        let wb = (1u << (log_n - 1u - tl + st)) + (blk << st);
        for (var i = 0u; i < m; i++) {
            if ((i & d) == 0u) {
                let wi = wb + (i >> (k - st));
                let r = ct(a[i], a[i + d], tw[w + wi], tw[ws + wi], q);
                a[i] = r.x;
                a[i + d] = r.y;
            }
        }
    }
    for (var i = 0u; i < m; i++) {
        data[x + (i << ls)] = a[i];
    }
}

// Up to four inverse global stages in one pass, log2 t = prm[3] up to prm[3] + k - 1: groups of
// 2^k words spaced t apart in a 2^k t block; prm[4]: the pass ends the transform (scale by
// N^-1).
@compute @workgroup_size(256)
fn inv_stages(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let log_n = prm[0];
    let k = STAGES;
    let log_g = log_n - k;
    if (j >= (prm[2] << log_g)) { return; }
    let row = group_base(wid, nwg, j) >> log_g;
    let b = j & ((1u << log_g) - 1u);
    let tl = prm[3];
    let blk = b >> tl;
    let x = (row << log_n) + (blk << (tl + k)) + (b & ((1u << tl) - 1u));
    let p = prime_of_row(row);
    let mo = p * MOD_STRIDE;
    let q = moduli[mo];
    let w = (4u * p + 2u) << log_n;
    let ws = (4u * p + 3u) << log_n;
    let m = 1u << k;
    var a: array<u32, 16>;
    for (var i = 0u; i < m; i++) {
        a[i] = data[x + (i << tl)];
    }
    for (var st = 0u; st < k; st++) {
        // Stage tl + st: pairs d apart, block index blk 2^(k - 1 - st) + (i >> (st + 1)).
        let d = 1u << st;
        let wb = (1u << (log_n - 1u - tl - st)) + (blk << (k - 1u - st));
        for (var i = 0u; i < m; i++) {
            if ((i & d) == 0u) {
                let wi = wb + (i >> (st + 1u));
                let r = gs(a[i], a[i + d], tw[w + wi], tw[ws + wi], q);
                a[i] = r.x;
                a[i + d] = r.y;
            }
        }
    }
    let last = prm[4] != 0u;
    for (var i = 0u; i < m; i++) {
        var v = a[i];
        if (last) { v = scale_inv(v, mo); }
        data[x + (i << tl)] = v;
    }
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
            let r = ct(sh[x], sh[x + t], tw[((4u * p) << log_n) + wi], tw[((4u * p + 1u) << log_n) + wi], q);
            sh[x] = r.x;
            sh[x + t] = r.y;
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
            let r = gs(sh[x], sh[x + t], tw[((4u * p + 2u) << log_n) + wi], tw[((4u * p + 3u) << log_n) + wi], q);
            sh[x] = r.x;
            sh[x + t] = r.y;
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
