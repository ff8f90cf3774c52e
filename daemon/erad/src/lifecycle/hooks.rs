//! Test hooks, compiled in only with the `test-hooks` cargo feature (the
//! integration tests' build enables it; `cargo build -p erad` and release
//! builds do not, and then these functions do nothing and read nothing).
//!
//! - `ERAD_TEST_PAUSE_AFTER=<State>`: freeze right after committing `State`,
//!   before its side effect, and drop `DATA/paused-<deployment>-<State>`.
//! - `ERAD_TEST_PAUSE_DONE=<State>`: freeze after the work of `State` (its side
//!   effect) is done and before the transition that records it is committed,
//!   and drop `DATA/paused-<deployment>-<State>-done`.
//! - `ERAD_TEST_PAUSE_PLAN=<n>`: freeze an apply of a plan after its n-th
//!   change was made (and before the next), and drop
//!   `DATA/paused-plan-<id>-<n>`.
//! - `ERAD_TEST_GC_GRACE=<duration>`: the content-store GC's grace period.
//!
//! A test waits for the marker and sends a real SIGKILL: the crash lands
//! exactly in the window it names.

use crate::machine::State;
use std::path::Path;
use std::time::Duration;

/// Where in a step a pause can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// Right after the state was committed, before its work.
    Committed,
    /// After the state's work, before its outcome is committed.
    Done,
}

#[cfg(feature = "test-hooks")]
mod imp {
    use super::*;
    use std::sync::OnceLock;

    fn state_var(name: &str) -> Option<State> {
        std::env::var(name).ok().and_then(|s| s.parse().ok())
    }

    pub(crate) async fn pause(root: &Path, deployment: &str, state: State, point: Point) {
        static AFTER: OnceLock<Option<State>> = OnceLock::new();
        static DONE: OnceLock<Option<State>> = OnceLock::new();
        let (wanted, suffix) = match point {
            Point::Committed => (*AFTER.get_or_init(|| state_var("ERAD_TEST_PAUSE_AFTER")), ""),
            Point::Done => (*DONE.get_or_init(|| state_var("ERAD_TEST_PAUSE_DONE")), "-done"),
        };
        if wanted != Some(state) {
            return;
        }
        tracing::warn!(deployment, %state, ?point, "test hook: pausing");
        let _ = std::fs::write(root.join(format!("paused-{deployment}-{state}{suffix}")), b"");
        std::future::pending::<()>().await;
    }

    pub(crate) async fn pause_plan(root: &Path, id: &str, done: usize) {
        static AFTER: OnceLock<Option<usize>> = OnceLock::new();
        let wanted = *AFTER.get_or_init(|| std::env::var("ERAD_TEST_PAUSE_PLAN").ok().and_then(|v| v.parse().ok()));
        if wanted != Some(done) {
            return;
        }
        tracing::warn!(plan = id, done, "test hook: pausing the plan's apply");
        let _ = std::fs::write(root.join(format!("paused-plan-{id}-{done}")), b"");
        std::future::pending::<()>().await;
    }

    pub(crate) fn gc_grace(default: Duration) -> Duration {
        std::env::var("ERAD_TEST_GC_GRACE").ok().and_then(|v| humantime::parse_duration(&v).ok()).unwrap_or(default)
    }
}

#[cfg(not(feature = "test-hooks"))]
mod imp {
    use super::*;

    pub(crate) async fn pause(_root: &Path, _deployment: &str, _state: State, _point: Point) {}

    pub(crate) async fn pause_plan(_root: &Path, _id: &str, _done: usize) {}

    pub(crate) fn gc_grace(default: Duration) -> Duration {
        default
    }
}

pub(crate) use imp::{gc_grace, pause, pause_plan};
