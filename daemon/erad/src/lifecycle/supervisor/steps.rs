//! The work of each state that is not settled, and what a failed step leads to.

use super::calls::retry;
use super::{StepError, Supervisor, Work, collect_garbage, plugin_for};
use crate::health;
use crate::lifecycle::failure::{AfterFailure, FailedStep, after_failure};
use crate::lifecycle::hooks::{self, Point};
use crate::machine::{Event, State};
use crate::plugin::Health;
use crate::spec::DeploymentSpec;
use crate::store::{Changes, DeploymentRecord, Installed, Operation, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) fn ports_of(spec: &DeploymentSpec) -> Vec<(u16, String)> {
    spec.spec.ports.iter().map(|p| (p.port, p.protocol.clone())).collect()
}

impl Supervisor {
    /// Runs the step `rec.state` calls for and commits its outcome. Returns
    /// the record a successful step committed (what the store now holds:
    /// nothing else writes a deployment's row while its supervisor runs a
    /// step), so the loop need not read it back.
    pub(super) async fn step(&self, rec: &DeploymentRecord) -> Result<Option<DeploymentRecord>, StoreError> {
        let desired = rec.desired_revision;
        let none = Changes::default;
        // What install or start answered, committed with the transition.
        let with_handle = |handle| Changes { installed: Some(Installed { revision: desired, handle }), ..none() };
        let mut _fetching = None;
        let outcome: Work<(Event, String, Changes)> = match rec.state {
            State::Validating => {
                self.validate(desired).await.map(|_| (Event::Validated, format!("revision {desired} is valid"), none()))
            }
            // What it fetched is recorded with the transition, and the GC
            // waits until then (`_fetching`).
            State::Fetching => self.fetch(desired).await.map(|(fetched, guard)| {
                _fetching = Some(guard);
                let cause = format!("fetched and verified {}", fetched.digest);
                (Event::Fetched, cause, Changes { artifact: Some(fetched), ..none() })
            }),
            State::Preparing => self
                .prepare(desired)
                .await
                .map(|_| (Event::Prepared, "work dir, volumes and ports ready".into(), none())),
            // Two revisions never run at once: the others stop first.
            State::Installing => async {
                self.stop_other_revisions(desired).await?;
                self.install(desired).await
            }
            .await
            .map(|handle| (Event::Installed, format!("revision {desired} installed"), with_handle(handle))),
            State::Activating => self
                .activate(desired)
                .await
                .map(|handle| (Event::Activated, format!("revision {desired} started"), with_handle(handle))),
            // Healthy, and its declared outputs resolve: recorded with the
            // transition that makes it the serving revision.
            State::HealthChecking => async {
                let reported = self.health_check(desired).await?;
                let rev = self.revision(desired).await?;
                let resolved = crate::outputs::settle(&rev.spec.spec.outputs, &rec.output_overrides, &reported)
                    .map_err(|e| format!("revision {desired} is healthy, but {e}"))?;
                Ok::<_, StepError>((reported, resolved))
            }
            .await
            .map(|outputs| {
                let changes = Changes {
                    current_revision: Some(desired),
                    health: Some("healthy".into()),
                    outputs: Some(outputs),
                    ..none()
                };
                (Event::Healthy, format!("revision {desired} is healthy"), changes)
            }),
            State::Updating => self.stage_update(rec).await.map(|msg| (Event::Staged, msg, none())),
            State::RollingBack => self
                .roll_back(desired)
                .await
                .map(|handle| (Event::RolledBack, format!("revision {desired} is active again"), with_handle(handle))),
            State::Stopping => self.stop_all().await.map(|_| {
                if rec.operation == Operation::Delete {
                    (Event::HaltedForRemoval, "stopped, removing".into(), none())
                } else {
                    (Event::Halted, "stopped".into(), Changes { health: Some("unknown".into()), ..none() })
                }
            }),
            State::Uninstalling => self.uninstall().await.map(|_| {
                (
                    Event::Removed,
                    "everything of the deployment is removed; its history stays".into(),
                    Changes {
                        current_revision: Some(0),
                        health: Some("unknown".into()),
                        clear_outputs: true,
                        ..none()
                    },
                )
            }),
            settled => return Err(StoreError::Corrupt(format!("no work for settled state {settled}"))),
        };
        self.cuttable.store(false, Ordering::SeqCst);
        match outcome {
            Ok((event, cause, changes)) => {
                hooks::pause(self.shared.layout.root(), &self.name, rec.state, Point::Done).await;
                let (after, entry) = self.record(event, desired, cause, changes).await?;
                if after.state == State::Running {
                    // Whatever brought it here (an update, a rollback, a
                    // start after a stop that cut an update short), the
                    // other revisions' objects and work dirs go.
                    self.retire_other_revisions(after.current_revision).await;
                }
                if after.state == State::Deleted {
                    // Now that it no longer holds its artifacts.
                    collect_garbage(&self.shared).await;
                }
                self.announce(entry);
                Ok(Some(after))
            }
            Err(e) => self.fail(rec, e).await.map(|_| None),
        }
    }

    /// Picks the failure event the operation calls for and commits it.
    pub(super) async fn fail(&self, rec: &DeploymentRecord, error: StepError) -> Result<(), StoreError> {
        tracing::warn!(state = %rec.state, error = %error, "step failed");
        let message = error.to_string();
        let spec = self.revision(rec.desired_revision).await.ok().map(|r| r.spec.spec);
        let restart = spec.as_ref().map(|s| s.restart.clone()).unwrap_or_default();
        let failed = FailedStep {
            operation: rec.operation,
            state: rec.state,
            previous: rec.previous_revision,
            auto_rollback: spec.as_ref().is_none_or(|s| s.update.auto_rollback),
            restarts: rec.restarts,
            exit_code: match &error {
                StepError::Exited { code, .. } => *code,
                _ => None,
            },
            restart: &restart,
        };
        match after_failure(failed) {
            AfterFailure::Restart { n, backoff } => {
                // A restart is a restart: a workload that still runs (it
                // failed its probe, or never became healthy) is stopped
                // first, or the start that follows would find it running and
                // do nothing.
                if let Ok(rev) = self.revision(rec.desired_revision).await
                    && let Err(e) = self.stop_revision(&rev).await
                {
                    let cause = format!("revision {} could not be stopped to restart it: {e}", rec.desired_revision);
                    let changes = Changes { health: Some("unhealthy".into()), ..Default::default() };
                    self.commit(Event::Fail, rec.desired_revision, cause, changes).await?;
                    return Ok(());
                }
                // The backoff can be cut short like the rest of the step (a
                // command during it is not kept waiting).
                self.cuttable.store(true, Ordering::SeqCst);
                tracing::info!(backoff = ?backoff, "{message}: restarting after the backoff");
                tokio::time::sleep(backoff).await;
                self.cuttable.store(false, Ordering::SeqCst);
                let cause = format!(
                    "revision {} failed after a restart ({message}); restart {n} of {}",
                    rec.desired_revision, restart.max_retries
                );
                let changes = Changes { restarts: Some(n), ..Default::default() };
                self.commit(Event::Crashed, rec.desired_revision, cause, changes).await?;
            }
            AfterFailure::Finished => {
                let cause =
                    format!("{message}: finished (restart policy {} does not run it again)", restart.policy.as_str());
                let changes =
                    Changes { operation: Some(Operation::Stop), health: Some("unknown".into()), ..Default::default() };
                self.commit(Event::Completed, rec.desired_revision, cause, changes).await?;
            }
            AfterFailure::GiveUp { why } => {
                // Kept for inspection, as the monitor keeps a crash loop's.
                let changes = Changes { health: Some("unhealthy".into()), ..Default::default() };
                self.commit(Event::Fail, rec.desired_revision, format!("{message}; {why}"), changes).await?;
            }
            AfterFailure::RollBack { to } => {
                let cause = format!(
                    "update to revision {} failed: {message}; rolling back to revision {to}",
                    rec.desired_revision
                );
                let changes = Changes {
                    desired_revision: Some(to),
                    previous_revision: Some(rec.desired_revision),
                    operation: Some(Operation::Rollback),
                    ..Default::default()
                };
                self.commit(Event::FailUpdate, to, cause, changes).await?;
            }
            AfterFailure::RollbackFailed => {
                let cause = format!("rollback to revision {} failed: {message}", rec.desired_revision);
                let changes = Changes { health: Some("unhealthy".into()), ..Default::default() };
                self.commit(Event::FailRollback, rec.desired_revision, cause, changes).await?;
            }
            AfterFailure::Fail { clean_up } => {
                let changes = Changes { health: Some("unhealthy".into()), ..Default::default() };
                let (after, entry) = self.record(Event::Fail, rec.desired_revision, message, changes).await?;
                if clean_up {
                    self.clean_up_failed_install(&after).await;
                }
                self.announce(entry);
            }
        }
        Ok(())
    }

    /// A first install that failed removes what it made. Idempotent; run
    /// again after a crash.
    pub(super) async fn clean_up_failed_install(&self, rec: &DeploymentRecord) {
        let Ok(revisions) = self.db(|s, n| s.revisions(n)).await else { return };
        let mut kept = false;
        for rev in &revisions {
            // A revision whose object could not be removed keeps its work
            // dir (where its plugin may keep what finds the object again)
            // and stays installed: a later delete removes both.
            if rev.installed && !self.remove_runtime_object(rev).await {
                kept = true;
                continue;
            }
            if let Err(e) = self.shared.layout.remove_revision(&self.name, rev.revision) {
                tracing::warn!(deployment = self.name, "{e}");
            }
        }
        if rec.current_revision == 0 && !kept {
            if let Err(e) = self.shared.layout.remove_deployment(&self.name) {
                tracing::warn!(deployment = self.name, "{e}");
            }
            if let Err(e) = self.db(|s, n| s.forget_artifacts_only_used_by(n)).await {
                tracing::warn!(deployment = self.name, "{e}");
            }
            let _ = self.db(|s, n| s.release_ports(n, &[])).await;
            collect_garbage(&self.shared).await;
        }
    }

    /// Asks the plugin to install the revision and returns its handle, which
    /// the caller commits with the next transition. Before the call, the
    /// revision is marked installed (its handle unknown yet): a crash during
    /// or after the call leaves a record that an object may exist, so every
    /// cleanup path still deletes it.
    pub(super) async fn install(&self, revision: u64) -> Work<String> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        if !rev.installed {
            let handle = rev.handle.clone();
            self.db(move |s, n| s.set_installed(n, revision, handle.as_deref(), true))
                .await
                .map_err(StepError::from)?;
        }
        self.ensure_rootfs(&rev).await?;
        let workload = self.workload(&rev);
        let ctx = self.ctx(&rev);
        retry(|| plugin.install(&ctx, &workload)).await.map_err(StepError::from)
    }

    /// Asks the plugin to start the installed revision and returns the
    /// handle it answers with, which the caller commits with the next
    /// transition.
    pub(super) async fn activate(&self, revision: u64) -> Work<String> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        let handle =
            rev.handle.clone().ok_or_else(|| format!("revision {revision} has no handle: it was never installed"))?;
        // After a reboot the rootfs mount is gone; the workload needs it.
        self.ensure_rootfs(&rev).await?;
        let workload = self.workload(&rev);
        let ctx = self.ctx(&rev);
        retry(|| plugin.start(&ctx, &workload, &handle)).await.map_err(StepError::from)
    }

    /// Before a revision is installed and started: every other revision's
    /// workload is stopped, so two revisions never run at once (an update
    /// stopped the old one already; an apply on a Failed deployment whose
    /// old workload still runs has not).
    pub(super) async fn stop_other_revisions(&self, revision: u64) -> Work<()> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.installed && r.revision != revision) {
            self.stop_revision(rev).await?;
        }
        Ok(())
    }

    /// Waits until the revision is healthy, by the plugin's `status` and the
    /// spec's probe, within the update deadline; returns the outputs its
    /// runtime reported then.
    pub(super) async fn health_check(&self, revision: u64) -> Work<BTreeMap<String, String>> {
        let rev = self.revision(revision).await?;
        let spec = &rev.spec.spec;
        let deadline = Instant::now() + spec.update.deadline.0;
        let (interval, retries, start_period) = match &spec.health {
            Some(h) => (h.interval.0, h.retries, h.start_period.0),
            None => (health::DEFAULT_POLL, 3, Duration::ZERO),
        };
        let started = Instant::now();
        let mut failures = 0;
        loop {
            // Ok(None): healthy; Ok(Some(why)): not yet.
            let mut reported = BTreeMap::new();
            let verdict: Work<Option<String>> = match self.status(&rev).await {
                Err(e) => Err(e),
                Ok(st) if !st.running => {
                    return Err(StepError::Exited { revision, code: st.exit_code, message: st.message });
                }
                Ok(st) if st.health == Health::Unhealthy => {
                    Err(format!("the plugin reports revision {revision} unhealthy: {}", st.message).into())
                }
                Ok(st) => {
                    reported = st.outputs.iter().cloned().collect();
                    let plugin_says =
                        (st.health != Health::Healthy).then(|| format!("not healthy yet: {}", st.message));
                    match spec.health.as_ref() {
                        Some(h) => match self.probe(&rev, h).await {
                            Ok(Some(())) => Ok(None),
                            Ok(None) => Ok(plugin_says),
                            Err(e) => Err(e),
                        },
                        None => Ok(plugin_says),
                    }
                }
            };
            let last = match verdict {
                Ok(None) => return Ok(reported),
                Ok(Some(why)) => why,
                Err(e) => {
                    if started.elapsed() >= start_period {
                        failures += 1;
                    }
                    if failures >= retries {
                        return Err(format!("revision {revision} failed {failures} health checks: {e}").into());
                    }
                    e.to_string()
                }
            };
            if Instant::now() + interval > deadline {
                return Err(format!(
                    "revision {revision} was not healthy within {}: {last}",
                    humantime::format_duration(spec.update.deadline.0)
                )
                .into());
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Updating: validate, fetch and prepare the new revision while the old
    /// one serves; then stop the old one.
    pub(super) async fn stage_update(&self, rec: &DeploymentRecord) -> Work<String> {
        let new = rec.desired_revision;
        self.validate(new).await?;
        let digest = self.fetch_and_record(new).await?;
        self.prepare(new).await?;
        let old = rec.previous_revision;
        if old != 0 {
            let rev = self.revision(old).await?;
            if rev.installed {
                // Stopping the old workload is not cut short midway.
                self.cuttable.store(false, Ordering::SeqCst);
                self.stop_revision(&rev).await?;
            }
        }
        Ok(format!("revision {new} staged ({digest}); revision {old} stopped"))
    }

    /// RollingBack: remove every other installed revision, then bring the
    /// target back: prepare, re-fetch if its artifact is gone, install, start.
    pub(super) async fn roll_back(&self, target: u64) -> Work<String> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.revision != target) {
            if rev.installed {
                self.stop_revision(rev).await?;
                self.delete_revision(rev).await?;
            }
            self.shared.layout.remove_revision(&self.name, rev.revision).map_err(StepError::from)?;
        }
        let rev = self.revision(target).await?;
        let ports = ports_of(&rev.spec);
        self.db(move |s, n| s.claim_ports(n, &ports)).await.map_err(StepError::from)?;
        let present = rev.artifact_digest.as_deref().is_some_and(|d| self.shared.content.contains(d));
        if !present {
            self.fetch_and_record(target).await?;
        }
        self.prepare(target).await?;
        if !rev.installed || rev.handle.is_none() {
            // Two side effects in one step: the install's handle is recorded
            // at once (the start's comes with RolledBack).
            let handle = self.install(target).await?;
            self.db(move |s, n| s.set_installed(n, target, Some(&handle), true)).await.map_err(StepError::from)?;
        }
        self.activate(target).await
    }

    pub(super) async fn stop_all(&self) -> Work<()> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.installed) {
            self.stop_revision(rev).await?;
        }
        Ok(())
    }

    pub(super) async fn uninstall(&self) -> Work<()> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.installed) {
            self.delete_revision(rev).await?;
        }
        self.shared.layout.remove_deployment(&self.name).map_err(StepError::from)?;
        // Its artifacts go too, unless another live deployment uses them or
        // an operator pulled them: forgotten here, their blobs collected by
        // the GC (which spares anything a fetch touched within its grace).
        self.db(|s, n| s.forget_artifacts_only_used_by(n)).await.map_err(StepError::from)?;
        self.db(|s, n| s.release_ports(n, &[])).await.map_err(StepError::from)?;
        Ok(())
    }

    /// Once a revision is Running: the other revisions' runtime objects and
    /// work dirs go; their records and artifacts stay for rollback.
    pub(super) async fn retire_other_revisions(&self, current: u64) {
        let Ok(revisions) = self.db(|s, n| s.revisions(n)).await else { return };
        for rev in revisions.iter().filter(|r| r.revision != current) {
            // A revision whose object could not be removed keeps its work
            // dir and stays installed: the next update, rollback or delete
            // stops and removes it.
            if rev.installed && !self.remove_runtime_object(rev).await {
                continue;
            }
            if let Err(e) = self.shared.layout.remove_revision(&self.name, rev.revision) {
                tracing::warn!(deployment = self.name, "{e}");
            }
        }
        if let Some(cur) = revisions.iter().find(|r| r.revision == current) {
            let keep = ports_of(&cur.spec);
            let _ = self.db(move |s, n| s.release_ports(n, &keep)).await;
        }
    }
}
