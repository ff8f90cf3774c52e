//! The ERA state machine as a pure function: no I/O, no clock, no store.
//!
//! The supervisor decides *which* event happened (it knows whether an update or
//! a rollback is under way); this module decides whether that event is legal in
//! the current state and where it leads. Every (state, event) pair is either a
//! row of [`TRANSITIONS`] or a [`TransitionError`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a deployment is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Requested,
    Validating,
    Fetching,
    Preparing,
    Installing,
    Activating,
    HealthChecking,
    Running,
    Updating,
    RollingBack,
    Stopping,
    Stopped,
    Uninstalling,
    Deleted,
    Failed,
    RollbackFailed,
}

impl State {
    pub const ALL: [State; 16] = [
        State::Requested,
        State::Validating,
        State::Fetching,
        State::Preparing,
        State::Installing,
        State::Activating,
        State::HealthChecking,
        State::Running,
        State::Updating,
        State::RollingBack,
        State::Stopping,
        State::Stopped,
        State::Uninstalling,
        State::Deleted,
        State::Failed,
        State::RollbackFailed,
    ];

    /// A settled state: erad does no work for it until an operator (or, for
    /// `Running`, the health monitor) raises an event.
    pub fn is_settled(self) -> bool {
        matches!(self, State::Running | State::Stopped | State::Deleted | State::Failed | State::RollbackFailed)
    }

    /// A step whose work an operator's `stop`, `delete` or `rollback` cuts
    /// short: it only reads, downloads into the content store, or waits
    /// (validation, fetch, the health check, an update's staging). The other
    /// work states call a plugin to change the workload; a command that
    /// arrives during one of them takes effect at the next preemptible or
    /// settled state, bounded by the plugin's call deadlines.
    pub fn is_preemptible(self) -> bool {
        matches!(self, State::Validating | State::Fetching | State::HealthChecking | State::Updating)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "Requested",
            State::Validating => "Validating",
            State::Fetching => "Fetching",
            State::Preparing => "Preparing",
            State::Installing => "Installing",
            State::Activating => "Activating",
            State::HealthChecking => "HealthChecking",
            State::Running => "Running",
            State::Updating => "Updating",
            State::RollingBack => "RollingBack",
            State::Stopping => "Stopping",
            State::Stopped => "Stopped",
            State::Uninstalling => "Uninstalling",
            State::Deleted => "Deleted",
            State::Failed => "Failed",
            State::RollbackFailed => "RollbackFailed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// What happened, as the supervisor or an operator reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// An operator applied a spec (first install, retry after failure, or update).
    Apply,
    Validated,
    Fetched,
    Prepared,
    Installed,
    Activated,
    Healthy,
    /// Updating finished: the new revision is validated, fetched and prepared,
    /// and the old one is stopped.
    Staged,
    Stop,
    /// The workload stopped, to stay stopped.
    Halted,
    Start,
    Delete,
    /// The workload stopped, to be removed.
    HaltedForRemoval,
    Removed,
    /// An operator asked to roll back.
    Rollback,
    /// The failed revision is gone and the target revision is active again.
    RolledBack,
    /// A step failed and there is nothing to roll back to (or rollback is off).
    Fail,
    /// A step of an update failed; the previous revision takes over again.
    FailUpdate,
    /// A step of a rollback failed; the operator has to decide.
    FailRollback,
    /// The running workload exited, or a restarted one failed to start or
    /// its health check, and the restart policy allows another go.
    Crashed,
    /// The running workload ended by itself with exit code 0 and its restart
    /// policy does not run it again: a finished job.
    Completed,
}

impl Event {
    pub const ALL: [Event; 21] = [
        Event::Apply,
        Event::Validated,
        Event::Fetched,
        Event::Prepared,
        Event::Installed,
        Event::Activated,
        Event::Healthy,
        Event::Staged,
        Event::Stop,
        Event::Halted,
        Event::Start,
        Event::Delete,
        Event::HaltedForRemoval,
        Event::Removed,
        Event::Rollback,
        Event::RolledBack,
        Event::Fail,
        Event::FailUpdate,
        Event::FailRollback,
        Event::Crashed,
        Event::Completed,
    ];
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The event is not allowed in the state the deployment is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not possible while the deployment is {state}")]
pub struct TransitionError {
    pub state: State,
    pub event: Event,
}

use Event as E;
use State as S;

/// Every legal transition: (from states, event, to state).
pub const TRANSITIONS: &[(&[State], Event, State)] = &[
    (&[S::Requested, S::Failed, S::RollbackFailed, S::Deleted], E::Apply, S::Validating),
    (&[S::Running, S::Stopped], E::Apply, S::Updating),
    (&[S::Validating], E::Validated, S::Fetching),
    (&[S::Fetching], E::Fetched, S::Preparing),
    (&[S::Preparing], E::Prepared, S::Installing),
    (&[S::Updating], E::Staged, S::Installing),
    (&[S::Installing], E::Installed, S::Activating),
    (&[S::Activating], E::Activated, S::HealthChecking),
    (&[S::HealthChecking], E::Healthy, S::Running),
    (&[S::Running], E::Stop, S::Stopping),
    (&[S::Stopping], E::Halted, S::Stopped),
    (&[S::Stopped], E::Start, S::Activating),
    (&[S::Running, S::Stopped, S::Failed, S::RollbackFailed], E::Delete, S::Stopping),
    // Steps that can be cut short (see [`State::is_preemptible`]).
    (&[S::Validating, S::Fetching, S::HealthChecking, S::Updating], E::Stop, S::Stopping),
    (&[S::Validating, S::Fetching, S::HealthChecking, S::Updating], E::Delete, S::Stopping),
    (&[S::Validating, S::Fetching, S::HealthChecking, S::Updating], E::Rollback, S::RollingBack),
    (&[S::Stopping], E::HaltedForRemoval, S::Uninstalling),
    (&[S::Uninstalling], E::Removed, S::Deleted),
    (&[S::Running, S::Stopped, S::Failed, S::RollbackFailed], E::Rollback, S::RollingBack),
    (&[S::RollingBack], E::RolledBack, S::HealthChecking),
    (
        &[
            S::Validating,
            S::Fetching,
            S::Preparing,
            S::Installing,
            S::Activating,
            S::HealthChecking,
            S::Running,
            S::Updating,
            S::Stopping,
            S::Uninstalling,
        ],
        E::Fail,
        S::Failed,
    ),
    (&[S::Updating, S::Installing, S::Activating, S::HealthChecking], E::FailUpdate, S::RollingBack),
    (&[S::RollingBack, S::HealthChecking], E::FailRollback, S::RollbackFailed),
    (&[S::Running, S::Activating, S::HealthChecking], E::Crashed, S::Activating),
    (&[S::Running, S::HealthChecking], E::Completed, S::Stopped),
];

/// The ERA transition function.
pub fn transition(state: State, event: Event) -> Result<State, TransitionError> {
    TRANSITIONS
        .iter()
        .find(|(from, ev, _)| *ev == event && from.contains(&state))
        .map(|(_, _, to)| *to)
        .ok_or(TransitionError { state, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet, VecDeque};

    /// The table written out by hand, pair by pair, so a change to
    /// [`TRANSITIONS`] has to be made twice, on purpose.
    fn expected() -> HashMap<(State, Event), State> {
        let mut m = HashMap::new();
        let mut add = |s, e, t| assert!(m.insert((s, e), t).is_none(), "{s} {e} listed twice");
        for s in [S::Requested, S::Failed, S::RollbackFailed, S::Deleted] {
            add(s, E::Apply, S::Validating);
        }
        add(S::Running, E::Apply, S::Updating);
        add(S::Stopped, E::Apply, S::Updating);
        add(S::Validating, E::Validated, S::Fetching);
        add(S::Fetching, E::Fetched, S::Preparing);
        add(S::Preparing, E::Prepared, S::Installing);
        add(S::Updating, E::Staged, S::Installing);
        add(S::Installing, E::Installed, S::Activating);
        add(S::Activating, E::Activated, S::HealthChecking);
        add(S::HealthChecking, E::Healthy, S::Running);
        add(S::Running, E::Stop, S::Stopping);
        add(S::Stopping, E::Halted, S::Stopped);
        add(S::Stopped, E::Start, S::Activating);
        for s in [S::Running, S::Stopped, S::Failed, S::RollbackFailed] {
            add(s, E::Delete, S::Stopping);
            add(s, E::Rollback, S::RollingBack);
        }
        for s in [S::Validating, S::Fetching, S::HealthChecking, S::Updating] {
            add(s, E::Stop, S::Stopping);
            add(s, E::Delete, S::Stopping);
            add(s, E::Rollback, S::RollingBack);
        }
        add(S::Stopping, E::HaltedForRemoval, S::Uninstalling);
        add(S::Uninstalling, E::Removed, S::Deleted);
        add(S::RollingBack, E::RolledBack, S::HealthChecking);
        for s in [
            S::Validating,
            S::Fetching,
            S::Preparing,
            S::Installing,
            S::Activating,
            S::HealthChecking,
            S::Running,
            S::Updating,
            S::Stopping,
            S::Uninstalling,
        ] {
            add(s, E::Fail, S::Failed);
        }
        for s in [S::Updating, S::Installing, S::Activating, S::HealthChecking] {
            add(s, E::FailUpdate, S::RollingBack);
        }
        add(S::RollingBack, E::FailRollback, S::RollbackFailed);
        add(S::HealthChecking, E::FailRollback, S::RollbackFailed);
        add(S::Running, E::Crashed, S::Activating);
        add(S::HealthChecking, E::Crashed, S::Activating);
        add(S::Activating, E::Crashed, S::Activating);
        add(S::HealthChecking, E::Completed, S::Stopped);
        add(S::Running, E::Completed, S::Stopped);
        m
    }

    #[test]
    fn every_state_event_pair_is_a_listed_transition_or_a_typed_error() {
        let expected = expected();
        let mut legal = 0;
        for s in State::ALL {
            for e in Event::ALL {
                match (transition(s, e), expected.get(&(s, e))) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, *want, "{s} --{e}-->");
                        legal += 1;
                    }
                    (Err(err), None) => {
                        assert_eq!(err, TransitionError { state: s, event: e });
                        assert!(err.to_string().contains(s.as_str()));
                    }
                    (got, want) => panic!("{s} --{e}--> gave {got:?}, expected {want:?}"),
                }
            }
        }
        assert_eq!(legal, expected.len());
        assert_eq!(State::ALL.len() * Event::ALL.len(), 336);
    }

    #[test]
    fn no_pair_is_listed_twice_in_the_table() {
        let mut seen = HashSet::new();
        for (from, ev, _) in TRANSITIONS {
            for s in *from {
                assert!(seen.insert((*s, *ev)), "{s} --{ev}--> listed twice");
            }
        }
    }

    #[test]
    fn every_state_is_reachable_from_requested_and_can_reach_a_settled_state() {
        let next = |s: State| -> Vec<State> { Event::ALL.iter().filter_map(|e| transition(s, *e).ok()).collect() };
        let mut seen = HashSet::from([S::Requested]);
        let mut queue = VecDeque::from([S::Requested]);
        while let Some(s) = queue.pop_front() {
            for t in next(s) {
                if seen.insert(t) {
                    queue.push_back(t);
                }
            }
        }
        assert_eq!(
            seen.len(),
            State::ALL.len(),
            "unreachable: {:?}",
            State::ALL.iter().filter(|s| !seen.contains(s)).collect::<Vec<_>>()
        );
        for s in State::ALL {
            // Work states must be able to finish, successfully or not.
            if !s.is_settled() && s != S::Requested {
                assert!(next(s).iter().any(|t| t.is_settled() || *t != s), "{s} is a dead end");
                assert!(transition(s, E::Fail).is_ok() || transition(s, E::FailRollback).is_ok(), "{s} cannot fail");
            }
        }
    }

    #[test]
    fn every_preemptible_state_can_be_stopped_deleted_and_rolled_back() {
        for s in State::ALL {
            let preempted = [E::Stop, E::Delete, E::Rollback].iter().all(|e| transition(s, *e).is_ok());
            if s.is_preemptible() {
                assert!(preempted, "{s}");
            } else if !s.is_settled() {
                assert!(!preempted, "{s} is a work state that is not preemptible");
            }
        }
    }

    #[test]
    fn rollback_cannot_loop_into_another_rollback() {
        // A failed rollback settles; only an operator can start another one.
        let after = transition(S::RollingBack, E::FailRollback).unwrap();
        assert_eq!(after, S::RollbackFailed);
        assert!(after.is_settled());
        assert!(transition(S::RollingBack, E::FailUpdate).is_err());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        assert!("Runing".parse::<State>().is_err());
    }
}
