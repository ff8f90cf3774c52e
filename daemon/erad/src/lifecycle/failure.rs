//! What a failed step leads to: a pure decision from the operation the step
//! belongs to, the state it failed in, the revision to go back to, the spec's
//! `update.autoRollback` and its restart rule, so each case is unit-tested
//! without a runtime.

use super::restart::{AfterExit, after_exit};
use crate::machine::{Event, State, transition};
use crate::spec::RestartSpec;
use crate::store::Operation;
use std::time::Duration;

/// Where the failed step was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedStep<'a> {
    pub operation: Operation,
    pub state: State,
    /// The revision an update would roll back to (0: none).
    pub previous: u64,
    pub auto_rollback: bool,
    /// Restarts so far and the spec's restart rule.
    pub restarts: u32,
    /// The workload's exit code, when the step saw it end.
    pub exit_code: Option<i32>,
    pub restart: &'a RestartSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// An update failed: roll back to this revision (FailUpdate).
    RollBack { to: u64 },
    /// A restarted workload failed to start or failed its health check (it
    /// crashed again, or never became healthy) and the policy allows another
    /// go: restart number `n` after `backoff` (Crashed), counted as the
    /// monitor counts restarts. The workload is stopped first.
    Restart { n: u32, backoff: Duration },
    /// A restarted job exited 0 and the policy does not run it again:
    /// Stopped (Completed), as the monitor ends a finished job.
    Finished,
    /// A restart failed and the policy gives up: Failed, for this reason;
    /// the workload and its logs stay for inspection.
    GiveUp { why: String },
    /// A rollback failed: RollbackFailed, which only an operator leaves.
    RollbackFailed,
    /// Failed. `clean_up`: a first install failed, so what it made goes
    /// (there is nothing to inspect that a retry would not make again).
    Fail { clean_up: bool },
}

pub(crate) fn after_failure(f: FailedStep<'_>) -> AfterFailure {
    let FailedStep { operation, state, previous, auto_rollback, restarts, exit_code, restart } = f;
    if operation == Operation::Update && auto_rollback && previous != 0 && transition(state, Event::FailUpdate).is_ok()
    {
        return AfterFailure::RollBack { to: previous };
    }
    if operation == Operation::Rollback && transition(state, Event::FailRollback).is_ok() {
        return AfterFailure::RollbackFailed;
    }
    if operation == Operation::Restart && transition(state, Event::Crashed).is_ok() {
        // Decided as the monitor decides a workload that ended: without an
        // exit code it counts as a failure.
        return match after_exit(restart.policy, exit_code, restarts, restart.max_retries) {
            AfterExit::Restart { n, backoff } => AfterFailure::Restart { n, backoff },
            AfterExit::Finished if transition(state, Event::Completed).is_ok() => AfterFailure::Finished,
            AfterExit::Finished => AfterFailure::Fail { clean_up: false },
            AfterExit::GiveUp { why } => AfterFailure::GiveUp { why },
        };
    }
    AfterFailure::Fail { clean_up: operation == Operation::Install }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RestartPolicy;
    use AfterFailure::*;
    use Operation::*;

    fn after(operation: Operation, state: State, previous: u64, auto_rollback: bool) -> AfterFailure {
        let restart = RestartSpec::default();
        after_failure(FailedStep {
            operation,
            state,
            previous,
            auto_rollback,
            restarts: 0,
            exit_code: None,
            restart: &restart,
        })
    }

    #[test]
    fn a_failed_update_rolls_back_to_the_previous_revision_in_every_state_it_can_fail_in() {
        for state in [State::Updating, State::Installing, State::Activating, State::HealthChecking] {
            assert_eq!(after(Update, state, 3, true), RollBack { to: 3 }, "{state}");
        }
    }

    #[test]
    fn an_update_without_auto_rollback_or_previous_revision_fails_and_keeps_its_objects() {
        assert_eq!(after(Update, State::HealthChecking, 3, false), Fail { clean_up: false });
        assert_eq!(after(Update, State::HealthChecking, 0, true), Fail { clean_up: false });
    }

    #[test]
    fn a_failed_first_install_fails_and_cleans_up_in_every_step() {
        for state in [
            State::Validating,
            State::Fetching,
            State::Preparing,
            State::Installing,
            State::Activating,
            State::HealthChecking,
        ] {
            assert_eq!(after(Install, state, 0, true), Fail { clean_up: true }, "{state}");
        }
    }

    #[test]
    fn a_failed_rollback_is_rollback_failed_not_another_rollback() {
        assert_eq!(after(Rollback, State::RollingBack, 2, true), RollbackFailed);
        assert_eq!(after(Rollback, State::HealthChecking, 2, true), RollbackFailed);
    }

    #[test]
    fn stop_and_delete_failures_fail_without_cleanup_and_a_failed_restart_start_is_another_restart() {
        assert_eq!(after(Stop, State::Stopping, 1, true), Fail { clean_up: false });
        assert_eq!(after(Delete, State::Uninstalling, 1, true), Fail { clean_up: false });
        assert!(matches!(after(Restart, State::Activating, 1, true), AfterFailure::Restart { n: 1, .. }));
    }

    #[test]
    fn a_restart_that_fails_its_health_check_is_restarted_until_max_retries_then_fails() {
        let restart = RestartSpec { policy: RestartPolicy::OnFailure, max_retries: 3, ..Default::default() };
        let at = |restarts| {
            after_failure(FailedStep {
                operation: Restart,
                state: State::HealthChecking,
                previous: 0,
                auto_rollback: true,
                restarts,
                exit_code: None,
                restart: &restart,
            })
        };
        assert!(matches!(at(1), AfterFailure::Restart { n: 2, .. }), "{:?}", at(1));
        assert!(matches!(at(2), AfterFailure::Restart { n: 3, .. }), "{:?}", at(2));
        assert_eq!(at(3), GiveUp { why: "gave up after 3 restarts".into() });
        let never = RestartSpec { policy: RestartPolicy::Never, ..restart.clone() };
        let once = FailedStep {
            operation: Restart,
            state: State::HealthChecking,
            previous: 0,
            auto_rollback: true,
            restarts: 0,
            exit_code: Some(0),
            restart: &never,
        };
        assert_eq!(after_failure(once), Finished);
        let failed = FailedStep { exit_code: Some(2), ..once };
        assert!(matches!(after_failure(failed), GiveUp { .. }), "{:?}", after_failure(failed));
    }
}
