//! The `hetensor` command line: subcommands and their shared helpers.

pub mod bench;
pub mod demo;
pub mod io_bench;
pub mod mnist;
pub mod packed;
pub mod train;
pub mod transfer;
pub mod workers;
