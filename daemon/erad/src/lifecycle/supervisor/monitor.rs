//! While Running: the health monitor, which records health and outputs and
//! decides restarts with the pure rule of `lifecycle::restart`.

use super::Supervisor;
use crate::lifecycle::restart::{AfterExit, after_exit};
use crate::machine::Event;
use crate::plugin::Health;
use crate::store::{Changes, DeploymentRecord, Operation, StoreError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A restart the monitor decided on: committed after its backoff, which a
/// command or a shutdown cuts short (then there is no restart).
pub(super) struct Restart {
    pub(super) backoff: Duration,
    pub(super) revision: u64,
    pub(super) cause: String,
    pub(super) changes: Changes,
}

impl Supervisor {
    /// One look at a Running workload: record its health, and restart it per
    /// the restart policy if it is gone.
    pub(super) async fn monitor(&self, rec: &DeploymentRecord) -> Result<Option<Restart>, StoreError> {
        let Ok(rev) = self.revision(rec.current_revision).await else { return Ok(None) };
        let work = self.shared.layout.work_dir(&self.name, rev.revision);
        let log = crate::logs::WorkLog::new(&work, &self.name, rev.revision);
        if let Err(e) = log.rotate_if_over(self.shared.log_max_bytes) {
            tracing::warn!(deployment = self.name, revision = rev.revision, "rotating the workload log: {e}");
        }
        let (health, outputs, exited) = match self.status(&rev).await {
            Ok(st) if st.running => {
                let probe = match &rev.spec.spec.health {
                    Some(h) => self.probe(&rev, h).await,
                    None => Ok(None),
                };
                let health = match (st.health, probe) {
                    (Health::Unhealthy, _) => "unhealthy",
                    (_, Err(_)) => "degraded",
                    (Health::Healthy, _) | (_, Ok(Some(()))) => "healthy",
                    _ => "unknown",
                };
                (health, st.outputs.into_iter().collect::<BTreeMap<_, _>>(), None)
            }
            Ok(st) => ("unhealthy", st.outputs.into_iter().collect(), Some((st.exit_code, st.message))),
            Err(e) => {
                tracing::warn!(deployment = self.name, revision = rev.revision, "status: {e}");
                ("unknown", rec.outputs.clone(), None)
            }
        };
        if health != rec.health || outputs != rec.outputs {
            let (h, o) = (health.to_string(), outputs);
            self.db(move |s, n| s.set_observed(n, &h, &o)).await?;
        }
        let restart = &rev.spec.spec.restart;
        let Some((code, message)) = exited else {
            if rec.restarts > 0 {
                let since =
                    *self.running_since.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now);
                if since.elapsed() >= restart.reset_after.0 {
                    self.db(|s, n| s.reset_restarts(n)).await?;
                    tracing::info!(
                        deployment = self.name,
                        revision = rev.revision,
                        "ran {} since its last restart: restart count reset (was {})",
                        restart.reset_after,
                        rec.restarts
                    );
                }
            }
            return Ok(None);
        };
        *self.running_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let what = match code {
            Some(c) => format!("exited with code {c}"),
            None => format!("is gone ({message})"),
        };
        match after_exit(restart.policy, code, rec.restarts, restart.max_retries) {
            AfterExit::Restart { n, backoff } => {
                // An invariant breach halts its environment's restarts: the
                // exited workload stays as it is until the breach is gone or
                // acknowledged (the next look asks again).
                let env = rec.environment.clone();
                let halted = self.db(move |s, _| s.breaches(Some(&env))).await?;
                if halted.iter().any(|b| b.acknowledged.is_none()) {
                    let mut told = self.restart_held.lock().unwrap_or_else(|p| p.into_inner());
                    if !*told {
                        *told = true;
                        tracing::warn!(
                            revision = rev.revision,
                            "{what}; not restarted: {}",
                            crate::lifecycle::halted_because(&rec.environment, &halted)
                        );
                    }
                    return Ok(None);
                }
                *self.restart_held.lock().unwrap_or_else(|p| p.into_inner()) = false;
                let cause = format!("revision {} {what}; restart {n} of {}", rev.revision, restart.max_retries);
                let changes = Changes {
                    operation: Some(Operation::Restart),
                    restarts: Some(n),
                    desired_revision: Some(rev.revision),
                    ..Default::default()
                };
                return Ok(Some(Restart { backoff, revision: rev.revision, cause, changes }));
            }
            AfterExit::Finished => {
                // Stopped, as `era stop` would leave it (`era start` runs it
                // again), not Failed.
                let cause = format!(
                    "revision {} {what}: finished (restart policy {} does not run it again)",
                    rev.revision,
                    restart.policy.as_str()
                );
                let changes =
                    Changes { operation: Some(Operation::Stop), health: Some("unknown".into()), ..Default::default() };
                self.commit(Event::Completed, rev.revision, cause, changes).await?;
            }
            AfterExit::GiveUp { why } => {
                let cause = format!("revision {} {what}; {why}", rev.revision);
                // Not the install's failure: the workload and its logs stay
                // for inspection until the operator acts (the failed-install
                // cleanup at the next start would remove them).
                let changes = Changes {
                    health: Some("unhealthy".into()),
                    operation: Some(Operation::Restart),
                    ..Default::default()
                };
                self.commit(Event::Fail, rev.revision, cause, changes).await?;
            }
        }
        Ok(None)
    }
}
