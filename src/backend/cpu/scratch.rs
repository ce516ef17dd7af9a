//! Reusable word buffers for the fused paths' intermediates (extended digits, coefficient
//! copies, ModDown's special limbs).
//!
//! Why: those buffers are written in full before they are read, yet `vec![0; len]` zeroes
//! them first, and with a 2^13 rotation's ~1 MB of intermediates that memset was ~7 % of the
//! operation. A buffer taken here holds whatever an earlier user on the same thread left in
//! it, which is never read (the caller overwrites every word first), and goes back to a small
//! per-thread free list when dropped.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Most words a thread keeps in its free list (32 MiB); larger buffers are freed as usual.
const KEEP_WORDS: usize = 1 << 23;
/// Most buffers a thread keeps.
const KEEP_BUFFERS: usize = 4;

thread_local! {
    static FREE: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` words with unspecified contents: the caller writes every word before reading it.
pub(super) struct Scratch {
    words: Vec<u32>,
    len: usize,
}

impl Scratch {
    pub(super) fn take(len: usize) -> Self {
        let mut words = FREE
            .with(|f| {
                let mut f = f.borrow_mut();
                match f.iter().position(|v| v.len() >= len) {
                    Some(i) => Some(f.swap_remove(i)),
                    None => f.pop(),
                }
            })
            .unwrap_or_default();
        if words.len() < len {
            // Only a buffer's growth is zeroed, once; it is then reused at its full length.
            words.resize(len, 0);
        }
        Self { words, len }
    }
}

impl Deref for Scratch {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.words[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut self.words[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        // `try_with`: a buffer dropped while the thread's locals are torn down is just freed.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            let kept: usize = f.iter().map(Vec::len).sum();
            if f.len() < KEEP_BUFFERS && kept + words.len() <= KEEP_WORDS {
                f.push(words);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_at_the_requested_length_and_are_reused() {
        let first = {
            let mut s = Scratch::take(1000);
            assert_eq!(s.len(), 1000);
            s.fill(7);
            s.as_ptr()
        };
        // The same thread gets the same allocation back, at any length up to its own.
        let s = Scratch::take(500);
        assert_eq!((s.len(), s.as_ptr()), (500, first));
        // A second buffer while the first is taken is a different one.
        let t = Scratch::take(500);
        assert_ne!(t.as_ptr(), s.as_ptr());
        drop((s, t));
        // Past the limit, buffers are not kept.
        let big = Scratch::take(KEEP_WORDS + 1);
        drop(big);
        FREE.with(|f| assert!(f.borrow().iter().all(|v| v.len() <= KEEP_WORDS)));
    }
}
