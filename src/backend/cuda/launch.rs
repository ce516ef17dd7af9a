//! Launch geometry of the CUDA kernels (host side, unit-tested without a GPU).
//!
//! Every grid is 1-D (`grid_dim.x` may reach 2^31 − 1, unlike y/z which stop at 65,535).
//! Element-wise kernels use [`BLOCK_1D`] threads and a grid-stride loop over at most
//! [`MAX_GRID_1D`] blocks. NTTs use [`NttGeometry`].

use crate::error::{Error, Result};

/// Threads per block of the element-wise (grid-stride) kernels.
pub const BLOCK_1D: u32 = 256;

/// Upper bound on the blocks of a grid-stride launch (each thread loops beyond it).
pub const MAX_GRID_1D: u64 = 1 << 20;

/// The hardware limit of `grid_dim.x`.
pub const MAX_GRID_X: u64 = (1 << 31) - 1;

/// Blocks for a grid-stride kernel over `total` words (at least 1).
pub fn grid_1d(total: u64) -> u32 {
    total.div_ceil(BLOCK_1D as u64).clamp(1, MAX_GRID_1D) as u32
}

/// Log2 of the words one NTT block holds in shared memory (2048 words = 8 KiB).
pub const NTT_LOG_TILE: u32 = 11;

/// Threads per NTT block (each does tile/2/threads butterflies per stage).
pub const NTT_THREADS: u32 = 256;

/// How an `N`-point NTT is split across the two kernels: `N = N1 · N2`, `N2 = min(N, tile)`.
/// The column kernel runs the `log2 N1` stages with butterfly distance `t ≥ N2` on tiles of
/// `N1` rows × `C = tile / N1` columns; the row kernel runs the `log2 N2` stages with `t < N2`
/// on rows of `N2` contiguous words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NttGeometry {
    pub log_n: u32,
    pub log_n1: u32,
    pub log_n2: u32,
    /// Log2 of the columns per column-kernel block (only meaningful when `log_n1 > 0`).
    pub log_c: u32,
}

impl NttGeometry {
    /// The split for ring degree `n` (a power of two in `[2, 2^17]`).
    pub fn new(n: usize) -> Result<Self> {
        if !n.is_power_of_two() || !(2..=1 << 17).contains(&n) {
            return Err(Error::InvalidParameters(format!(
                "cuda NTT: ring degree {n} must be a power of two in [2, 2^17]"
            )));
        }
        let log_n = n.trailing_zeros();
        let log_n2 = log_n.min(NTT_LOG_TILE);
        let log_n1 = log_n - log_n2;
        Ok(Self {
            log_n,
            log_n1,
            log_n2,
            log_c: NTT_LOG_TILE.saturating_sub(log_n1),
        })
    }

    /// `(grid, block, shared bytes)` of the row kernel for `ntts` transforms: one block per row.
    pub fn rows_launch(&self, ntts: u64) -> Result<(u32, u32, u32)> {
        let blocks = ntts << self.log_n1;
        let words = 1u32 << self.log_n2;
        Ok((
            check_grid(blocks)?,
            (words / 2).clamp(1, NTT_THREADS),
            4 * words,
        ))
    }

    /// `(grid, block, shared bytes)` of the column kernel: one block per tile of
    /// `N1 × C` words, `N / tile` tiles per transform.
    pub fn cols_launch(&self, ntts: u64) -> Result<(u32, u32, u32)> {
        let tile_log = self.log_n1 + self.log_c;
        let blocks = ntts << (self.log_n - tile_log);
        let words = 1u32 << tile_log;
        Ok((check_grid(blocks)?, NTT_THREADS.min(words / 2), 4 * words))
    }
}

fn check_grid(blocks: u64) -> Result<u32> {
    if blocks == 0 || blocks > MAX_GRID_X {
        return Err(Error::Shape(format!(
            "cuda: {blocks} blocks exceed the grid limit (split the batch)"
        )));
    }
    Ok(blocks as u32)
}

pub use crate::math::ntt::automorphism_ntt_map;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_1d_is_bounded_and_covers_small_totals() {
        assert_eq!(grid_1d(0), 1);
        assert_eq!(grid_1d(1), 1);
        assert_eq!(grid_1d(256), 1);
        assert_eq!(grid_1d(257), 2);
        assert_eq!(grid_1d(1 << 40), MAX_GRID_1D as u32);
        const { assert!(MAX_GRID_1D <= MAX_GRID_X) };
    }

    #[test]
    fn ntt_split_covers_every_stage_once() {
        for log_n in 1..=17u32 {
            let g = NttGeometry::new(1 << log_n).unwrap();
            assert_eq!(g.log_n1 + g.log_n2, log_n);
            assert!(g.log_n2 <= NTT_LOG_TILE);
            if g.log_n1 > 0 {
                // Column tiles hold whole columns, at least 32 of them (coalesced loads).
                assert_eq!(g.log_n1 + g.log_c, NTT_LOG_TILE);
                assert!(g.log_c >= 5, "log_n {log_n}");
                let (grid, block, smem) = g.cols_launch(1).unwrap();
                assert_eq!(grid as u64 * (1 << NTT_LOG_TILE), 1u64 << log_n);
                assert!(block <= 1024 && smem <= 48 * 1024);
            }
            let (grid, block, smem) = g.rows_launch(3).unwrap();
            assert_eq!(grid as u64, 3 << g.log_n1);
            assert!((1..=1024).contains(&block) && smem <= 48 * 1024);
            assert_eq!(smem, 4 << g.log_n2);
        }
        assert!(NttGeometry::new(3).is_err());
        assert!(NttGeometry::new(1 << 18).is_err());
    }

    #[test]
    fn huge_batches_are_rejected_not_truncated() {
        let g = NttGeometry::new(1 << 16).unwrap();
        assert!(g.rows_launch(1 << 30).is_err());
        assert!(g.rows_launch(1 << 20).is_ok());
    }

    #[test]
    fn ntt_map_is_a_permutation_and_identity_for_g_1() {
        let n = 64;
        let id = automorphism_ntt_map(n, 1);
        assert_eq!(id, (0..n as u32).collect::<Vec<_>>());
        let mut m = automorphism_ntt_map(n, 5);
        m.sort_unstable();
        assert_eq!(m, (0..n as u32).collect::<Vec<_>>());
    }

    #[test]
    fn mod_words_layout_matches_struct_mod() {
        let m = crate::math::Modulus::new(1_073_479_681).unwrap();
        let w = super::super::mod_words(&[m, m]);
        assert_eq!(w.len(), 12); // 24 bytes per prime, barrett at byte offset 16
        let (bits, mu) = m.barrett32();
        assert_eq!(&w[..4], &[m.value(), bits, mu, 0]);
        let b = m.barrett_constant();
        assert_eq!((w[4] as u64) | ((w[5] as u64) << 32), b);
        assert_eq!(&w[6..], &w[..6]);
    }
}
