//! The `hetensor` command line: subcommands and their shared helpers.

pub mod bench;
pub mod demo;
pub mod infer;
pub mod io_bench;
pub mod mnist;
pub mod options;
pub mod packed;
pub mod parties;
pub mod train;
pub mod transfer;
pub mod workers;

use std::path::{Path, PathBuf};

use hetensor::{Error, Result};

/// Writes `bytes` to `path` (given with `flag`); a failure names the file and the flag.
pub fn write_file(path: &Path, flag: &str, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {flag} {}: {e}", path.display()),
        ))
    })
}

/// The data file for `flag`: `given` if the user passed one; else the bundled copy at
/// `relative` (a path under the repository, e.g. `data/titanic/train.csv`), looked up in the
/// working directory first and then in the source tree this binary was built from, so the
/// default works from any directory. A missing default is an error that names both places
/// and the flag.
pub fn data_path(given: Option<&Path>, relative: &str, flag: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let here = PathBuf::from(relative);
    if here.is_file() {
        return Ok(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    if built.is_file() {
        return Ok(built);
    }
    Err(Error::Data(format!(
        "the bundled data file {relative} is in neither the working directory nor {}; pass the file with {flag} PATH",
        built.display()
    )))
}

/// Flag parsers: an out-of-range value is a clap error that names the flag and the range
/// (`invalid value '0' for '--batch <BATCH>': must be at least 1`), never a silent clamp.
pub mod args {
    /// A count of at least `min`.
    pub fn at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
        move |s: &str| {
            let v: usize = s
                .trim()
                .parse()
                .map_err(|_| format!("not a whole number (at least {min})"))?;
            if v < min {
                return Err(format!("must be at least {min}"));
            }
            Ok(v)
        }
    }

    /// A thread count in `1..=MAX_THREADS` (see [`hetensor::threads`]).
    pub fn thread_count(s: &str) -> Result<usize, String> {
        hetensor::threads::parse_thread_count("--threads", s).map_err(|e| match e {
            hetensor::Error::InvalidInput(why) => why,
            other => other.to_string(),
        })
    }

    /// One of `allowed`.
    pub fn one_of(
        allowed: &'static [usize],
    ) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
        move |s: &str| {
            let list = allowed
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match s.trim().parse::<usize>() {
                Ok(v) if allowed.contains(&v) => Ok(v),
                _ => Err(format!("must be one of {list}")),
            }
        }
    }

    /// A finite number `> 0`.
    pub fn positive(s: &str) -> Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err("must be a finite number > 0".into()),
        }
    }

    /// A momentum in `[0, 1)`.
    pub fn momentum(s: &str) -> Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
            _ => Err("must be in [0, 1)".into()),
        }
    }
}

/// The terminal side of [`hetensor::progress`]: a sink that draws the library's events as an
/// indicatif bar on stderr, or, when stderr is not a terminal (a log file, CI), prints only the
/// lines worth keeping. `enabled = false` (e.g. `--json`) reports nothing.
pub fn progress_bar(enabled: bool) -> hetensor::progress::Progress {
    use hetensor::progress::{Progress, ProgressEvent};
    use indicatif::{ProgressBar, ProgressStyle};
    use std::sync::Mutex;
    if !enabled {
        return Progress::none();
    }
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Progress::new(move |event| {
        let mut bar = bar.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            ProgressEvent::Start { total, unit } => {
                let pb = ProgressBar::new(total);
                let template =
                    format!("{{elapsed_precise}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} ({{eta}}) {{msg}}");
                if let Ok(style) = ProgressStyle::with_template(&template) {
                    pb.set_style(style.progress_chars("=> "));
                }
                *bar = Some(pb);
            }
            ProgressEvent::Advance => {
                if let Some(pb) = bar.as_ref() {
                    pb.inc(1);
                }
            }
            ProgressEvent::Status(s) => {
                if let Some(pb) = bar.as_ref() {
                    pb.set_message(s.to_string());
                }
            }
            ProgressEvent::Line(l) => match bar.as_ref() {
                Some(pb) if !pb.is_hidden() => {
                    pb.set_message(l.to_string());
                    pb.println(l);
                }
                _ => eprintln!("{l}"),
            },
            ProgressEvent::Finish => {
                if let Some(pb) = bar.take() {
                    pb.finish_and_clear();
                }
            }
        }
    })
}
