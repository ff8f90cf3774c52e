//! Operator commands: what each does in a settled state, and what happens
//! to one that arrives during a step.

use super::Supervisor;
use crate::lifecycle::{Applied, Command, CommandError};
use crate::machine::{Event, State, transition};
use crate::spec::DeploymentSpec;
use crate::store::{Changes, DeploymentRecord, Operation, RevisionRecord, Suspension, now_rfc3339};
use std::path::PathBuf;

impl Command {
    /// Stop, delete and rollback cut a preemptible step short; apply and
    /// start during a step are refused (Busy): they would race the step for
    /// the same revision.
    pub(super) fn preempts(&self) -> bool {
        matches!(self, Command::Stop { .. } | Command::Delete { .. } | Command::Rollback { .. })
    }
}

/// How messages to an operator name a deployment: as its commands take it.
pub(super) fn label(rec: &DeploymentRecord) -> String {
    if rec.environment == crate::plan::DEFAULT_ENVIRONMENT || rec.environment.is_empty() {
        rec.name.clone()
    } else {
        format!("{} --env {}", rec.name, rec.environment)
    }
}

impl Supervisor {
    /// [`label`] of this supervisor's deployment (its id if it cannot be read).
    fn label(&self) -> String {
        self.shared.store.deployment(&self.name).map(|d| label(&d)).unwrap_or_else(|_| self.name.clone())
    }
}

pub(super) fn refuse_busy(cmd: Command, rec: &DeploymentRecord) {
    let busy = |action| CommandError::Busy { name: label(rec), state: rec.state, action };
    // A dropped reply only means the caller went away.
    match cmd {
        Command::Apply { reply, .. } => drop(reply.send(Err(busy("apply")))),
        Command::Stop { reply } => drop(reply.send(Err(busy("stop")))),
        Command::Start { reply } => drop(reply.send(Err(busy("start")))),
        Command::Delete { reply } => drop(reply.send(Err(busy("delete")))),
        Command::Rollback { reply, .. } => drop(reply.send(Err(busy("rollback")))),
    }
}

impl Supervisor {
    pub(super) async fn handle(&self, cmd: Command, rec: &DeploymentRecord) {
        match cmd {
            Command::Apply { spec, written, source_dir, reply } => {
                let _ = reply.send(self.apply(*spec, written.map(|w| *w), source_dir, rec).await);
            }
            Command::Stop { reply } => {
                let r = match rec.state {
                    State::Stopped => Ok(State::Stopped),
                    state if state == State::Running || state.is_preemptible() => {
                        self.command(
                            Event::Stop,
                            rec.current_revision,
                            "stop requested",
                            Changes { operation: Some(Operation::Stop), ..Default::default() },
                        )
                        .await
                    }
                    state => Err(CommandError::NotPossible { name: self.label(), state, action: "stop" }),
                };
                let _ = reply.send(r);
            }
            Command::Start { reply } => {
                let r = match rec.state {
                    State::Running => Ok(State::Running),
                    State::Stopped if rec.suspended.is_suspended() => Err(self.suspended("start")),
                    State::Stopped => {
                        async {
                            let target = self.start_target(rec).await?;
                            let changes = Changes {
                                operation: Some(Operation::Start),
                                desired_revision: Some(target),
                                restarts: Some(0),
                                ..Default::default()
                            };
                            self.command(Event::Start, target, "start requested", changes).await
                        }
                        .await
                    }
                    state => Err(CommandError::NotPossible { name: self.label(), state, action: "start" }),
                };
                let _ = reply.send(r);
            }
            Command::Delete { reply } => {
                let r = match rec.state {
                    State::Deleted => Ok(State::Deleted),
                    state if transition(state, Event::Delete).is_ok() => {
                        self.command(
                            Event::Delete,
                            rec.current_revision,
                            "delete requested",
                            Changes { operation: Some(Operation::Delete), ..Default::default() },
                        )
                        .await
                    }
                    state => Err(CommandError::NotPossible { name: self.label(), state, action: "delete" }),
                };
                let _ = reply.send(r);
            }
            Command::Rollback { to, reply } => {
                let _ = reply.send(self.rollback(to, rec).await);
            }
        }
    }

    /// What `era start` starts: the revision that last ran; if a stop cut the
    /// first install short, the one it was installing, once it is installed.
    pub(super) async fn start_target(&self, rec: &DeploymentRecord) -> Result<u64, CommandError> {
        let target = if rec.current_revision != 0 { rec.current_revision } else { rec.desired_revision };
        match self.db(move |s, n| s.revision(n, target)).await? {
            Some(r) if r.installed && r.handle.is_some() => Ok(target),
            _ => Err(CommandError::Invalid {
                name: self.label(),
                message: format!(
                    "revision {target} was stopped before it was installed, so there is nothing to start: apply the spec again"
                ),
            }),
        }
    }

    /// A stop, delete or rollback that arrived during a step: answers at once
    /// if it cannot succeed (so the step is not cut short for nothing), else
    /// gives the command back to be held.
    pub(super) async fn precheck(&self, cmd: Command, rec: &DeploymentRecord) -> Option<Command> {
        match cmd {
            // The target is resolved now: the held command goes where the
            // operator asked when it was sent, whatever the cut step did.
            Command::Rollback { to, reply } => match self.rollback_target(to, rec).await {
                Ok(target) => Some(Command::Rollback { to: Some(target), reply }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            other => Some(other),
        }
    }

    pub(super) async fn command(
        &self,
        event: Event,
        revision: u64,
        cause: &str,
        changes: Changes,
    ) -> Result<State, CommandError> {
        Ok(self.commit(event, revision, cause.to_string(), changes).await?.state)
    }

    pub(super) async fn apply(
        &self,
        mut spec: DeploymentSpec,
        written: Option<DeploymentSpec>,
        source_dir: PathBuf,
        rec: &DeploymentRecord,
    ) -> Result<Applied, CommandError> {
        // Suspension is the deployment's, not a revision's: no revision
        // records it, and suspending or resuming makes none.
        let suspend = std::mem::take(&mut spec.spec.suspended);
        let written = written.map(|mut w| {
            w.spec.suspended = false;
            w
        });
        let hash = spec.hash();
        if matches!(rec.state, State::Running | State::Stopped)
            && rec.current_revision == rec.desired_revision
            && let Ok(current) = self.revision(rec.current_revision).await
            && current.spec_hash == hash
        {
            // The same spec in this environment; the spec as written may
            // differ elsewhere (another environment's overlay), which is
            // what a promotion from here takes.
            if current.written != written {
                let rev = current.revision;
                self.db(move |s, n| s.set_written(n, rev, written.as_ref())).await?;
            }
            let changed = self.suspend(suspend, rec).await?;
            return Ok(Applied { name: self.name.clone(), revision: rec.current_revision, changed });
        }
        if suspend {
            return Err(CommandError::Invalid {
                name: self.label(),
                message: if rec.desired_revision == 0 || rec.state == State::Deleted {
                    "spec.suspended: a new deployment cannot start suspended: apply it without spec.suspended first"
                        .into()
                } else if !matches!(rec.state, State::Running | State::Stopped) {
                    format!(
                        "spec.suspended: it is {}; a Running or Stopped deployment is suspended (stop it, or apply its \
                         spec without spec.suspended first)",
                        rec.state
                    )
                } else {
                    "spec.suspended: a spec that suspends its deployment cannot change anything else: apply the change \
                     first, or suspend it with its spec as it is"
                        .into()
                },
            });
        }
        if transition(rec.state, Event::Apply).is_err() {
            return Err(CommandError::NotPossible { name: self.label(), state: rec.state, action: "apply" });
        }
        // From Failed or RollbackFailed a revision may still be installed,
        // even running (a restart that failed its health check): then this
        // is an update from it, which stops it before the new one starts,
        // retires it once the new one is healthy, and rolls back to it if
        // the new one fails (as the spec's update.autoRollback says).
        let previous = if matches!(rec.state, State::Running | State::Stopped) && rec.current_revision != 0 {
            rec.current_revision
        } else {
            // (Stopped with none current: a stop cut the first install short.)
            let revisions = self.db(|s, n| s.revisions(n)).await?;
            let installed: Vec<u64> = revisions.iter().filter(|r| r.installed).map(|r| r.revision).collect();
            if installed.contains(&rec.current_revision) {
                rec.current_revision
            } else {
                installed.into_iter().max().unwrap_or(0)
            }
        };
        let update = previous != 0;
        let revision = self.db(|s, n| s.next_revision(n)).await?;
        let record = RevisionRecord {
            deployment: self.name.clone(),
            revision,
            runtime: spec.spec.runtime.clone(),
            spec_hash: hash.clone(),
            spec,
            source_dir: source_dir.display().to_string(),
            artifact_digest: None,
            artifact_path: None,
            work_dir: self.shared.layout.work_dir(&self.name, revision).display().to_string(),
            handle: None,
            installed: false,
            activations: 0,
            created_at: now_rfc3339(),
            written,
        };
        let changes = Changes {
            new_revision: Some(Box::new(record)),
            desired_revision: Some(revision),
            previous_revision: Some(previous),
            operation: Some(if update { Operation::Update } else { Operation::Install }),
            restarts: Some(0),
            suspended: Some(Suspension::No),
            ..Default::default()
        };
        let short = hash.trim_start_matches("sha256:").get(..12).unwrap_or("");
        self.commit(Event::Apply, revision, format!("applied revision {revision} (spec {short})"), changes).await?;
        Ok(Applied { name: self.name.clone(), revision, changed: true })
    }

    /// Takes a deployment whose spec did not change where its spec's
    /// `suspended` says: Running to Stopped when it suspends it, Stopped
    /// back to Running when a spec no longer does (only if suspension
    /// stopped it: a deployment an operator stopped stays stopped). Returns
    /// whether anything changed.
    async fn suspend(&self, suspend: bool, rec: &DeploymentRecord) -> Result<bool, CommandError> {
        match (suspend, rec.state) {
            (true, State::Running) => {
                let changes = Changes {
                    operation: Some(Operation::Stop),
                    suspended: Some(Suspension::StoppedIt),
                    ..Default::default()
                };
                self.command(Event::Stop, rec.current_revision, "suspended by its spec (spec.suspended)", changes)
                    .await?;
            }
            (false, State::Stopped) if rec.suspended == Suspension::StoppedIt => {
                let target = self.start_target(rec).await?;
                let changes = Changes {
                    operation: Some(Operation::Start),
                    desired_revision: Some(target),
                    restarts: Some(0),
                    suspended: Some(Suspension::No),
                    ..Default::default()
                };
                self.command(Event::Start, target, "resumed: its spec no longer suspends it", changes).await?;
            }
            // Suspended while stopped (it stays stopped once resumed), or
            // resumed while running or stopped by hand.
            (true, _) if !rec.suspended.is_suspended() => {
                self.db(|st, n| st.set_suspended(n, Suspension::WasStopped)).await?
            }
            (false, _) if rec.suspended.is_suspended() => self.db(|st, n| st.set_suspended(n, Suspension::No)).await?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Why `action` is refused while the spec suspends the deployment.
    fn suspended(&self, action: &str) -> CommandError {
        CommandError::Invalid {
            name: self.label(),
            message: format!(
                "it is suspended by its spec (spec.suspended: true), so {action} would run it: apply its spec \
                 without spec.suspended to resume it"
            ),
        }
    }

    pub(super) async fn rollback(&self, to: Option<u64>, rec: &DeploymentRecord) -> Result<State, CommandError> {
        let target = self.rollback_target(to, rec).await?;
        let changes = Changes {
            desired_revision: Some(target),
            previous_revision: Some(rec.current_revision),
            operation: Some(Operation::Rollback),
            ..Default::default()
        };
        self.command(Event::Rollback, target, &format!("rollback to revision {target} requested"), changes).await
    }

    /// Where `era rollback [--to N]` goes from `rec`, or why it cannot.
    pub(super) async fn rollback_target(&self, to: Option<u64>, rec: &DeploymentRecord) -> Result<u64, CommandError> {
        if transition(rec.state, Event::Rollback).is_err() {
            return Err(CommandError::NotPossible { name: self.label(), state: rec.state, action: "rollback" });
        }
        if rec.suspended.is_suspended() {
            return Err(self.suspended("a rollback"));
        }
        let revisions = self.db(|s, n| s.revisions(n)).await?;
        let target = match to {
            Some(t) => t,
            None if rec.previous_revision != 0 => rec.previous_revision,
            None => revisions.iter().map(|r| r.revision).filter(|r| *r < rec.current_revision).max().unwrap_or(0),
        };
        let invalid = |message: String| CommandError::Invalid { name: self.label(), message };
        if target == 0 {
            return Err(invalid("there is no earlier revision to roll back to".into()));
        }
        if !revisions.iter().any(|r| r.revision == target) {
            let known: Vec<String> = revisions.iter().map(|r| r.revision.to_string()).collect();
            return Err(invalid(format!("revision {target} does not exist (revisions: {})", known.join(", "))));
        }
        if target == rec.current_revision && rec.state == State::Running {
            return Err(invalid(format!("revision {target} is already the one running")));
        }
        Ok(target)
    }
}
