//! What the health monitor does about a workload that ended by itself: a
//! pure decision from the restart policy, the exit code and the restarts so
//! far, so each case is unit-tested without a runtime.

use crate::spec::RestartPolicy;
use std::time::Duration;

/// The first restart's backoff; it doubles per restart, up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Start it again after `backoff`; this is restart number `n`.
    Restart { n: u32, backoff: Duration },
    /// A job that finished (exit 0, and the policy does not run it again):
    /// Stopped, as `era stop` would leave it.
    Finished,
    /// Failed, for this reason; the workload and its logs stay for
    /// inspection.
    GiveUp { why: String },
}

/// `code` is the exit code, if the runtime knows one (None: the workload is
/// gone without one); `restarts` how many restarts there were since the
/// count was last reset.
pub(crate) fn after_exit(policy: RestartPolicy, code: Option<i32>, restarts: u32, max_retries: u32) -> AfterExit {
    let wants = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => code != Some(0),
        RestartPolicy::Always => true,
    };
    if wants && restarts < max_retries {
        let backoff = BACKOFF.saturating_mul(2u32.saturating_pow(restarts)).min(BACKOFF_MAX);
        AfterExit::Restart { n: restarts + 1, backoff }
    } else if code == Some(0) && !wants {
        AfterExit::Finished
    } else if wants {
        AfterExit::GiveUp { why: format!("gave up after {restarts} restarts") }
    } else {
        AfterExit::GiveUp { why: format!("restart policy {} does not restart it", policy.as_str()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartPolicy::*;

    fn restart(n: u32, ms: u64) -> AfterExit {
        AfterExit::Restart { n, backoff: Duration::from_millis(ms) }
    }

    #[test]
    fn each_policy_and_exit_gets_its_decision() {
        let give_up = |why: &str| AfterExit::GiveUp { why: why.into() };
        for (policy, code, restarts, max, expected) in [
            (Never, Some(0), 0, 3, AfterExit::Finished),
            (Never, Some(3), 0, 3, give_up("restart policy never does not restart it")),
            (Never, None, 0, 3, give_up("restart policy never does not restart it")),
            (OnFailure, Some(0), 0, 3, AfterExit::Finished),
            (OnFailure, Some(1), 0, 3, restart(1, 250)),
            (OnFailure, None, 2, 3, restart(3, 1000)),
            (OnFailure, Some(1), 3, 3, give_up("gave up after 3 restarts")),
            (Always, Some(0), 0, 3, restart(1, 250)),
            (Always, Some(0), 3, 3, give_up("gave up after 3 restarts")),
            (Always, Some(9), 0, 0, give_up("gave up after 0 restarts")),
        ] {
            assert_eq!(after_exit(policy, code, restarts, max), expected, "{policy:?} {code:?} {restarts}/{max}");
        }
    }

    #[test]
    fn the_backoff_doubles_and_is_capped_even_for_huge_counts() {
        let backoffs: Vec<u64> = (0..9)
            .map(|r| match after_exit(Always, Some(1), r, 10_000) {
                AfterExit::Restart { backoff, .. } => backoff.as_millis() as u64,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(backoffs, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(after_exit(Always, Some(1), 9_999, 10_000), restart(10_000, 30_000));
    }
}
