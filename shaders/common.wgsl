// Shared 32-bit modular arithmetic, prepended to every hetensor shader. WGSL has no u64, so
// 64-bit values are vec2<u32>(lo, hi) and 32x32->64 products are built from 16-bit halves.
// Every function returns the same words as its counterpart in src/math/modular.rs.

const WG: u32 = 256u;

// Per-prime table `moduli`, 8 words per prime: q, mu32, bits, 2^32 mod q, n^-1, shoup(n^-1), 0, 0.
const MOD_STRIDE: u32 = 8u;

fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = p01 + (p00 >> 16u);
    let mid2 = p10 + (mid & 0xffffu);
    return vec2<u32>((mid2 << 16u) | (p00 & 0xffffu), p11 + (mid >> 16u) + (mid2 >> 16u));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// Low 32 bits of x >> s, for 1 <= s <= 31.
fn shr64(x: vec2<u32>, s: u32) -> u32 {
    return (x.x >> s) | (x.y << (32u - s));
}

// a*b + c mod q for a, b, c < q: the 32-bit-lane Barrett of Modulus::mul_add_reduced.
fn mul_add_red(a: u32, b: u32, c: u32, q: u32, mu: u32, bits: u32) -> u32 {
    let x = add64(mul_wide(a, b), vec2<u32>(c, 0u));
    let q1 = shr64(x, bits - 1u);
    let q3 = shr64(mul_wide(q1, mu), bits + 1u);
    var r = x.x - q3 * q;
    r = min(r, r - q);
    return min(r, r - q);
}

// Any 64-bit value mod q: hi * 2^32 + lo = [hi]_q * [2^32]_q + [lo]_q.
fn reduce64(x: vec2<u32>, q: u32, mu: u32, bits: u32, r32: u32) -> u32 {
    return mul_add_red(x.y % q, r32, x.x % q, q, mu, bits);
}

// Shoup product a*w mod q in [0, 2q) for any a, given ws = floor(w * 2^32 / q).
fn mul_shoup_lazy(a: u32, w: u32, ws: u32, q: u32) -> u32 {
    let qhat = mul_wide(a, ws).y;
    return a * w - qhat * q;
}

fn mul_shoup(a: u32, w: u32, ws: u32, q: u32) -> u32 {
    let r = mul_shoup_lazy(a, w, ws, q);
    return min(r, r - q);
}

fn add_mod(a: u32, b: u32, q: u32) -> u32 {
    let s = a + b;
    return min(s, s - q);
}

fn sub_mod(a: u32, b: u32, q: u32) -> u32 {
    return select(a + q - b, a - b, a >= b);
}

fn neg_mod(a: u32, q: u32) -> u32 {
    return select(q - a, 0u, a == 0u);
}

// Set (pipeline constant) when every workgroup's 256 items lie in one row (N >= 256): then row,
// limb and table indices derived from `group_base` are workgroup-uniform, which SIMD CPU
// drivers such as lavapipe turn into scalar loads instead of per-lane gathers.
override ALIGNED: bool = false;

// The first linear id of the workgroup when ALIGNED, else the invocation's own id.
fn group_base(wid: vec3<u32>, nwg: vec3<u32>, id: u32) -> u32 {
    return select(id, (wid.y * nwg.x + wid.x) * WG, ALIGNED);
}

// Linear invocation id over a 2-D grid of 1-D workgroups (65,535 groups per dimension).
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Source index of NTT slot k under X -> X^g (g odd, mod 2N): slot k holds the evaluation at
// psi^(2 br(k) + 1), so the automorphism reads slot br((g (2 br(k) + 1) mod 2N - 1) / 2).
fn ntt_perm(k: u32, log_n: u32, g: u32) -> u32 {
    let e = 2u * (reverseBits(k) >> (32u - log_n)) + 1u;
    let ge = (e * g) & ((2u << log_n) - 1u);
    return reverseBits((ge - 1u) / 2u) >> (32u - log_n);
}
