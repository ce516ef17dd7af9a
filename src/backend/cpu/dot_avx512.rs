//! Key inner products for AVX-512: `o0 = Σ_j x_j·a_j`, `o1 = Σ_j x_j·b_j` mod q, 16 words at a
//! time, the same words as the portable `dot_words` (tests compare them).
//!
//! Why by hand: the portable loop sums each term into 64-bit arrays in memory and reduces
//! each word with three 32-bit Barrett steps. Here the four 64-bit partial sums of a block
//! (even and odd lanes of both outputs) stay in registers across every digit, and the final
//! reduction splits a sum into `hi·2^32 + lo` and reduces both halves with Shoup products:
//! `hi·[2^32]_q + lo ≡ sum`, with two conditional subtractions at the end.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::math::Modulus;

/// Whether [`dot2`] takes these operands: `n` a multiple of 16 and the `d` products of a word
/// (each below q²) summed in 64 bits without overflow.
pub(super) fn applies(m: &Modulus, d: usize, n: usize) -> bool {
    let q = m.value() as u128;
    n.is_multiple_of(16) && (d as u128) * (q - 1) * (q - 1) < 1u128 << 64
}

/// `sum mod q` per 64-bit lane, any `sum < 2^64`, into `[0, q)`: `c` holds
/// `[q, 2q, [2^32]_q, shoup([2^32]_q), shoup(1)]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce(sum: __m512i, c: &[__m512i; 5]) -> __m512i {
    let [q, two_q, r, r_shoup, one_shoup] = *c;
    let hi = _mm512_srli_epi64::<32>(sum);
    let lo = _mm512_and_si512(sum, _mm512_set1_epi64(0xffff_ffff));
    // Shoup: x·w − ⌊x·ws/2^32⌋·q ∈ [0, 2q) for x < 2^32, w < q.
    let hq = _mm512_srli_epi64::<32>(_mm512_mul_epu32(hi, r_shoup));
    let t1 = _mm512_sub_epi64(_mm512_mul_epu32(hi, r), _mm512_mul_epu32(hq, q));
    let lq = _mm512_srli_epi64::<32>(_mm512_mul_epu32(lo, one_shoup));
    let t2 = _mm512_sub_epi64(lo, _mm512_mul_epu32(lq, q));
    let s = _mm512_add_epi64(t1, t2);
    let s = _mm512_min_epu64(s, _mm512_sub_epi64(s, two_q));
    _mm512_min_epu64(s, _mm512_sub_epi64(s, q))
}

/// `o0 = Σ_j x_j·a_j`, `o1 = Σ_j x_j·b_j` (mod m), `x_j[maps[j][k]]` for word `k` where
/// `maps[j]` is given; writes every word of both outputs. Needs [`applies`]; calling it needs
/// `unsafe` (the CPU must have AVX-512 F).
#[target_feature(enable = "avx512f")]
pub(super) fn dot2(
    m: &Modulus,
    x: &[&[u32]],
    a: &[&[u32]],
    b: &[&[u32]],
    maps: &[Option<&[u32]>],
    o0: &mut [MaybeUninit<u32>],
    o1: &mut [MaybeUninit<u32>],
) {
    let n = o0.len();
    let d = x.len();
    assert!(applies(m, d, n) && o1.len() == n && a.len() == d && b.len() == d && maps.len() == d);
    assert!(x.iter().chain(a).chain(b).all(|s| s.len() == n));
    let mut checked: Option<*const u32> = None;
    for map in maps.iter().flatten() {
        // Consecutive terms of one rotation share its map: check each map once.
        if checked != Some(map.as_ptr()) {
            let largest = map.iter().copied().max().unwrap_or(0);
            assert!(map.len() == n && (largest as usize) < n);
            checked = Some(map.as_ptr());
        }
    }
    let qv = m.value();
    let r = ((1u64 << 32) % qv as u64) as u32;
    let c = [
        _mm512_set1_epi64(qv as i64),
        _mm512_set1_epi64(2 * qv as i64),
        _mm512_set1_epi64(r as i64),
        _mm512_set1_epi64(m.shoup(r) as i64),
        _mm512_set1_epi64(((1u64 << 32) / qv as u64) as i64),
    ];
    let zero = _mm512_setzero_si512();
    for k in (0..n).step_by(16) {
        let (mut e0, mut d0, mut e1, mut d1) = (zero, zero, zero, zero);
        for (((xj, aj), bj), map) in x.iter().zip(a).zip(b).zip(maps) {
            // SAFETY: k + 16 ≤ n words of every slice (asserted above); gather indices < n.
            let (xv, av, bv) = unsafe {
                let xv = match map {
                    Some(map) => {
                        let idx = _mm512_loadu_epi32(map.as_ptr().add(k) as *const i32);
                        _mm512_i32gather_epi32::<4>(idx, xj.as_ptr() as *const i32)
                    }
                    None => _mm512_loadu_epi32(xj.as_ptr().add(k) as *const i32),
                };
                (
                    xv,
                    _mm512_loadu_epi32(aj.as_ptr().add(k) as *const i32),
                    _mm512_loadu_epi32(bj.as_ptr().add(k) as *const i32),
                )
            };
            let xo = _mm512_srli_epi64::<32>(xv);
            e0 = _mm512_add_epi64(e0, _mm512_mul_epu32(xv, av));
            d0 = _mm512_add_epi64(d0, _mm512_mul_epu32(xo, _mm512_srli_epi64::<32>(av)));
            e1 = _mm512_add_epi64(e1, _mm512_mul_epu32(xv, bv));
            d1 = _mm512_add_epi64(d1, _mm512_mul_epu32(xo, _mm512_srli_epi64::<32>(bv)));
        }
        // Even lanes' results in the low halves, odd lanes' moved to the high halves.
        let w0 = _mm512_or_si512(reduce(e0, &c), _mm512_slli_epi64::<32>(reduce(d0, &c)));
        let w1 = _mm512_or_si512(reduce(e1, &c), _mm512_slli_epi64::<32>(reduce(d1, &c)));
        // SAFETY: k + 16 ≤ n words of both outputs (`MaybeUninit<u32>` has `u32`'s layout).
        unsafe {
            _mm512_storeu_epi32(o0.as_mut_ptr().add(k) as *mut i32, w0);
            _mm512_storeu_epi32(o1.as_mut_ptr().add(k) as *mut i32, w1);
        }
    }
}
