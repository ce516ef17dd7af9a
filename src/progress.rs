//! Progress reporting for long library calls (training), without drawing anything.
//!
//! A library linked into another program must not write to its terminal, so training loops
//! send [`ProgressEvent`]s to a caller-supplied [`Progress`] sink instead of drawing bars. The
//! `hetensor` CLI (feature `cli`) turns them into indicatif bars; a library user may log them,
//! forward them to a UI, or leave the default sink, which drops them.

use std::fmt;
use std::sync::Arc;

/// One thing a long-running call reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProgressEvent<'a> {
    /// Work of `total` steps begins; `unit` names a step ("steps", "encrypted steps").
    Start {
        /// Steps to come.
        total: u64,
        /// What one step is, for display.
        unit: &'a str,
    },
    /// One more step is done.
    Advance,
    /// A transient status (shown next to a bar; superseded by the next one).
    Status(&'a str),
    /// A line worth keeping in a log (an epoch or round summary).
    Line(&'a str),
    /// The work is over (finished, or stopped by an error).
    Finish,
}

/// Where progress goes: a shared callback, or nowhere (the default).
///
/// Cloning shares the callback; it may be called from any thread, but the library calls it
/// from the thread that drives the loop only.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Callback>>);

type Callback = dyn Fn(ProgressEvent<'_>) + Send + Sync;

impl Progress {
    /// A sink that drops every event.
    pub fn none() -> Self {
        Self(None)
    }

    /// A sink that calls `f` with every event.
    pub fn new(f: impl Fn(ProgressEvent<'_>) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// A sink that writes [`ProgressEvent::Line`]s to stderr and drops the rest: the plain
    /// log that examples and scripts want.
    pub fn stderr_lines() -> Self {
        Self::new(|e| {
            if let ProgressEvent::Line(l) = e {
                eprintln!("{l}");
            }
        })
    }

    /// Whether events go anywhere (callers may skip formatting messages when not).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Sends `event` to the callback, if any.
    pub fn emit(&self, event: ProgressEvent<'_>) {
        if let Some(f) = &self.0 {
            f(event);
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_active() {
            "Progress(callback)"
        } else {
            "Progress(none)"
        })
    }
}

/// Two sinks are equal when they are the same callback (or both none), so that configurations
/// that differ only in where their progress goes still compare by their settings.
impl PartialEq for Progress {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn callback_sees_events_in_order_and_none_drops_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let p = Progress::new(move |e| s.lock().unwrap().push(format!("{e:?}")));
        p.emit(ProgressEvent::Start {
            total: 2,
            unit: "steps",
        });
        p.emit(ProgressEvent::Advance);
        p.emit(ProgressEvent::Line("epoch 1"));
        p.emit(ProgressEvent::Finish);
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert!(p.is_active() && p == p.clone());
        assert!(!Progress::none().is_active());
        assert_ne!(p, Progress::none());
        Progress::none().emit(ProgressEvent::Advance);
    }
}
