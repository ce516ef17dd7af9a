//! The negacyclic NTT of [`super::ntt::NttPlan`] written for AVX-512: the same tables, stage
//! order, lazy ranges and Shoup butterflies, 16 words per vector, so its output is word for
//! word the portable code's (tests compare them).
//!
//! Why by hand: LLVM vectorizes the long stages (blocks of 16 or more butterflies, one
//! twiddle per block) well, but not the last four of the forward transform and the first
//! four of the inverse, where a block is 8, 4, 2 or 1 butterflies wide. Here those stages load
//! 32 words, split them into the 16 upper and 16 lower butterfly inputs with one two-source
//! permute each, run the same butterfly as the long stages with per-lane twiddles, and
//! permute back.

use std::arch::x86_64::*;

/// Shoup's product `y·w mod q` in `[0, 2q)` per lane, for `y < 2^32`: `ws = ⌊w·2^32/q⌋`, and
/// `ws_odd` holds each odd lane's `ws` in the low half of its 64-bit lane (for a broadcast
/// twiddle it is `ws` itself).
#[inline]
#[target_feature(enable = "avx512f")]
fn mul_shoup_lazy(y: __m512i, w: __m512i, ws: __m512i, ws_odd: __m512i, q: __m512i) -> __m512i {
    let even = _mm512_mul_epu32(y, ws);
    let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(y), ws_odd);
    let qhat = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64::<32>(even), odd);
    _mm512_sub_epi32(_mm512_mullo_epi32(y, w), _mm512_mullo_epi32(qhat, q))
}

/// Cooley-Tukey butterfly on lazy values in `[0, 4q)` (as the portable `ct_butterfly`).
#[inline]
#[target_feature(enable = "avx512f")]
fn ct(x: __m512i, y: __m512i, w: [__m512i; 3], q: __m512i, two_q: __m512i) -> (__m512i, __m512i) {
    let u = _mm512_min_epu32(x, _mm512_sub_epi32(x, two_q));
    let v = mul_shoup_lazy(y, w[0], w[1], w[2], q);
    (
        _mm512_add_epi32(u, v),
        _mm512_sub_epi32(_mm512_add_epi32(u, two_q), v),
    )
}

/// Gentleman-Sande butterfly on lazy values in `[0, 2q)` (as the portable `gs_butterfly`).
#[inline]
#[target_feature(enable = "avx512f")]
fn gs(x: __m512i, y: __m512i, w: [__m512i; 3], q: __m512i, two_q: __m512i) -> (__m512i, __m512i) {
    let s = _mm512_add_epi32(x, y);
    let d = _mm512_sub_epi32(_mm512_add_epi32(x, two_q), y);
    (
        _mm512_min_epu32(s, _mm512_sub_epi32(s, two_q)),
        mul_shoup_lazy(d, w[0], w[1], w[2], q),
    )
}

/// The forward transform's butterfly (`CT`) or the inverse's.
#[inline]
#[target_feature(enable = "avx512f")]
fn butterfly<const CT: bool>(
    x: __m512i,
    y: __m512i,
    w: [__m512i; 3],
    q: __m512i,
    two_q: __m512i,
) -> (__m512i, __m512i) {
    if CT {
        ct(x, y, w, q, two_q)
    } else {
        gs(x, y, w, q, two_q)
    }
}

/// A broadcast twiddle with its Shoup factor.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast(w: u32, ws: u32) -> [__m512i; 3] {
    let ws = _mm512_set1_epi32(ws as i32);
    [_mm512_set1_epi32(w as i32), ws, ws]
}

/// Permutation indices of a stage whose blocks are `t < 16` butterflies wide, over a chunk of
/// 32 words `(a, b)`: lane `l` of the upper inputs is word `x[l]`, of the lower `x[l] + t`;
/// the twiddle of lane `l` is the chunk's `l / t`-th; `back` puts the two halves' lanes
/// (0..16 upper, 16..32 lower) back in word order, first `a`'s 16 words then `b`'s.
struct Shuffle {
    x: __m512i,
    y: __m512i,
    twiddle: __m512i,
    back_a: __m512i,
    back_b: __m512i,
    /// Twiddles per chunk (16 / t) as a load mask.
    mask: __mmask16,
    per_chunk: usize,
}

/// [`Shuffle`]'s index vectors for `t = 1, 2, 4, 8` (see [`shuffle_indices`]), computed at
/// compile time.
const SHUFFLES: [[[i32; 16]; 5]; 4] = [
    shuffle_indices(1),
    shuffle_indices(2),
    shuffle_indices(4),
    shuffle_indices(8),
];

/// `[x, y, twiddle, back_a, back_b]` of a stage `t < 16` wide (see [`Shuffle`]).
const fn shuffle_indices(t: usize) -> [[i32; 16]; 5] {
    let mut out = [[0i32; 16]; 5];
    let mut l = 0;
    while l < 16 {
        out[0][l] = ((l / t) * 2 * t + l % t) as i32;
        out[1][l] = out[0][l] + t as i32;
        out[2][l] = (l / t) as i32;
        l += 1;
    }
    let mut k = 0;
    while k < 32 {
        let (block, off) = (k / (2 * t), k % (2 * t));
        out[3 + k / 16][k % 16] = if off < t {
            (block * t + off) as i32
        } else {
            (16 + block * t + off - t) as i32
        };
        k += 1;
    }
    out
}

impl Shuffle {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(t: usize) -> Self {
        let idx = &SHUFFLES[t.trailing_zeros() as usize];
        let per_chunk = 16 / t;
        // SAFETY: each load reads one array of 16 words.
        let v = |i: usize| unsafe { _mm512_loadu_epi32(idx[i].as_ptr()) };
        Self {
            x: v(0),
            y: v(1),
            twiddle: v(2),
            back_a: v(3),
            back_b: v(4),
            mask: ((1u32 << per_chunk) - 1) as __mmask16,
            per_chunk,
        }
    }

    /// The per-lane twiddles of chunk `c` from a stage's twiddle table `w` (with Shoup `ws`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn twiddles(&self, w: &[u32], ws: &[u32], c: usize) -> [__m512i; 3] {
        let (w, ws) = (
            &w[c * self.per_chunk..][..self.per_chunk],
            &ws[c * self.per_chunk..][..self.per_chunk],
        );
        // SAFETY: the masked loads read only the `per_chunk` words of the slices above.
        let (w, ws) = unsafe {
            (
                _mm512_maskz_loadu_epi32(self.mask, w.as_ptr() as *const i32),
                _mm512_maskz_loadu_epi32(self.mask, ws.as_ptr() as *const i32),
            )
        };
        let w = _mm512_permutexvar_epi32(self.twiddle, w);
        let ws = _mm512_permutexvar_epi32(self.twiddle, ws);
        [w, ws, _mm512_srli_epi64::<32>(ws)]
    }

    /// Runs the stage's butterflies on every chunk of 32 words of `a`, twiddles `(w, ws)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn stage<const CT: bool>(
        &self,
        a: &mut [u32],
        w: &[u32],
        ws: &[u32],
        q: __m512i,
        two_q: __m512i,
    ) {
        for (c, chunk) in a.chunks_exact_mut(32).enumerate() {
            let p = chunk.as_mut_ptr() as *mut i32;
            // SAFETY: the chunk holds 32 words: two vectors at p and p + 16.
            let (va, vb) = unsafe { (_mm512_loadu_epi32(p), _mm512_loadu_epi32(p.add(16))) };
            let x = _mm512_permutex2var_epi32(va, self.x, vb);
            let y = _mm512_permutex2var_epi32(va, self.y, vb);
            let (x, y) = butterfly::<CT>(x, y, self.twiddles(w, ws, c), q, two_q);
            // SAFETY: as for the loads.
            unsafe {
                _mm512_storeu_epi32(p, _mm512_permutex2var_epi32(x, self.back_a, y));
                _mm512_storeu_epi32(p.add(16), _mm512_permutex2var_epi32(x, self.back_b, y));
            }
        }
    }
}

/// The butterflies of a stage `t ≥ 16` wide: block `i` pairs `a[2ti..2ti+t]` with the next
/// `t` words under twiddle `(w[i], ws[i])`.
#[inline]
#[target_feature(enable = "avx512f")]
fn long_stage<const CT: bool>(
    a: &mut [u32],
    t: usize,
    w: &[u32],
    ws: &[u32],
    q: __m512i,
    two_q: __m512i,
) {
    for ((block, &w), &ws) in a.chunks_exact_mut(2 * t).zip(w).zip(ws) {
        let tw = broadcast(w, ws);
        let (xs, ys) = block.split_at_mut(t);
        for (x, y) in xs.chunks_exact_mut(16).zip(ys.chunks_exact_mut(16)) {
            let (px, py) = (x.as_mut_ptr() as *mut i32, y.as_mut_ptr() as *mut i32);
            // SAFETY: each chunk is 16 words, one vector.
            let (vx, vy) = unsafe { (_mm512_loadu_epi32(px), _mm512_loadu_epi32(py)) };
            let (vx, vy) = butterfly::<CT>(vx, vy, tw, q, two_q);
            // SAFETY: as for the loads.
            unsafe {
                _mm512_storeu_epi32(px, vx);
                _mm512_storeu_epi32(py, vy);
            }
        }
    }
}

/// Forward NTT of `a` (length `n ≥ 32`, a power of two) with the plan's `psi_rev` tables;
/// input in `[0, 4q)`, output in `[0, q)`.
///
/// Calling it needs `unsafe` (the CPU must have AVX-512 F); it is safe otherwise.
#[target_feature(enable = "avx512f")]
pub(super) fn forward(a: &mut [u32], psi: &[u32], psi_s: &[u32], q: u32) {
    let n = a.len();
    debug_assert!(n >= 32 && n.is_power_of_two() && psi.len() == n && psi_s.len() == n);
    let qv = _mm512_set1_epi32(q as i32);
    let two_q = _mm512_set1_epi32((2 * q) as i32);
    let (mut t, mut m) = (n, 1);
    while m < n {
        t >>= 1;
        let (w, ws) = (&psi[m..2 * m], &psi_s[m..2 * m]);
        if t >= 16 {
            long_stage::<true>(a, t, w, ws, qv, two_q);
        } else {
            Shuffle::new(t).stage::<true>(a, w, ws, qv, two_q);
        }
        m <<= 1;
    }
    for v in a.chunks_exact_mut(16) {
        let p = v.as_mut_ptr() as *mut i32;
        // SAFETY: one vector of 16 words, load and store.
        let x = unsafe { _mm512_loadu_epi32(p) };
        let x = _mm512_min_epu32(x, _mm512_sub_epi32(x, two_q));
        unsafe { _mm512_storeu_epi32(p, _mm512_min_epu32(x, _mm512_sub_epi32(x, qv))) };
    }
}

/// Inverse NTT of `a` (length `n ≥ 32`) with the plan's `ipsi_rev` tables and `N^{-1}`;
/// input in `[0, 2q)`, output in `[0, q)`.
///
/// Calling it needs `unsafe` (the CPU must have AVX-512 F); it is safe otherwise.
#[target_feature(enable = "avx512f")]
pub(super) fn inverse(a: &mut [u32], ipsi: &[u32], ipsi_s: &[u32], q: u32, n_inv: (u32, u32)) {
    let n = a.len();
    debug_assert!(n >= 32 && n.is_power_of_two() && ipsi.len() == n && ipsi_s.len() == n);
    let qv = _mm512_set1_epi32(q as i32);
    let two_q = _mm512_set1_epi32((2 * q) as i32);
    let (mut t, mut m) = (1, n);
    while m > 1 {
        let h = m >> 1;
        let (w, ws) = (&ipsi[h..m], &ipsi_s[h..m]);
        if t >= 16 {
            long_stage::<false>(a, t, w, ws, qv, two_q);
        } else {
            Shuffle::new(t).stage::<false>(a, w, ws, qv, two_q);
        }
        t <<= 1;
        m = h;
    }
    let [w, ws, ws_odd] = broadcast(n_inv.0, n_inv.1);
    for v in a.chunks_exact_mut(16) {
        let p = v.as_mut_ptr() as *mut i32;
        // SAFETY: one vector of 16 words, load and store.
        let x = mul_shoup_lazy(unsafe { _mm512_loadu_epi32(p) }, w, ws, ws_odd, qv);
        unsafe { _mm512_storeu_epi32(p, _mm512_min_epu32(x, _mm512_sub_epi32(x, qv))) };
    }
}
