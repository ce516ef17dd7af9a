//! Thread pools whose size a user chooses (`hetensor bench --threads`, Python's
//! `set_num_threads`, `HETENSOR_NUM_THREADS`): one bound and one builder, so that every front
//! end refuses the same counts with the same words.

use crate::{Error, Result};

/// The most threads a pool may be given: far above any core count, and below the count at
/// which starting them never ends (`--threads 1000000` and `set_num_threads(10**6)` ran until
/// killed).
pub const MAX_THREADS: usize = 1024;

/// `threads` if it is in `1..=MAX_THREADS`, else [`Error::InvalidInput`] naming `what` (the
/// flag, argument or variable the count came from).
pub fn check_thread_count(what: &str, threads: usize) -> Result<usize> {
    if (1..=MAX_THREADS).contains(&threads) {
        Ok(threads)
    } else {
        Err(Error::InvalidInput(format!(
            "{what} must be a thread count in 1..={MAX_THREADS}, not {threads}"
        )))
    }
}

/// Parses a thread count from text (a flag or an environment variable), bounded as in
/// [`check_thread_count`].
pub fn parse_thread_count(what: &str, text: &str) -> Result<usize> {
    let threads = text.trim().parse::<usize>().map_err(|_| {
        Error::InvalidInput(format!(
            "{what} must be a thread count in 1..={MAX_THREADS}, not {text:?}"
        ))
    })?;
    check_thread_count(what, threads)
}

/// A pool of `threads` threads named `hetensor-<i>` (`None`: one per core, or
/// `RAYON_NUM_THREADS`, rayon's default).
pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = match threads {
        Some(t) => check_thread_count("threads", t)?,
        None => 0,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("hetensor-{i}"))
        .build()
        .map_err(|e| Error::Backend(format!("cannot start a pool of {n} threads: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_the_bound_are_refused_with_their_source() {
        assert_eq!(check_thread_count("--threads", 1).unwrap(), 1);
        assert_eq!(
            parse_thread_count("--threads", " 1024 ").unwrap(),
            MAX_THREADS
        );
        for bad in ["0", "1025", "1000000", "-1", "abc", ""] {
            let e = parse_thread_count("HETENSOR_NUM_THREADS", bad).unwrap_err();
            assert!(
                e.to_string()
                    .contains("HETENSOR_NUM_THREADS must be a thread count in 1..=1024"),
                "{bad}: {e}"
            );
        }
        assert!(thread_pool(Some(0)).is_err());
        assert_eq!(thread_pool(Some(3)).unwrap().current_num_threads(), 3);
    }
}
