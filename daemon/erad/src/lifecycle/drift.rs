//! Drift: what the runtime says against what erad recorded, read-only
//! (`era plan` shows it, `era report` is made of it). Anything uncertain (a
//! plugin not loaded, an error from it, a status that does not come) is
//! `unknown`, never `healthy`.

use super::Lifecycle;
use super::supervisor::{plugin_for, workload_of};
use crate::machine::State;
use crate::plugin::{CallContext, CallError, Failure, Health};
use crate::store::{StoreError, now_rfc3339};
use std::path::Path;
use std::time::Duration;

/// How long one status call of a drift check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a deployment stands, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Healthy,
    Deploying,
    Unknown,
    Drifted,
    Failed,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Healthy => "healthy",
            Standing::Deploying => "deploying",
            Standing::Unknown => "unknown",
            Standing::Drifted => "drifted",
            Standing::Failed => "failed",
        }
    }

    /// The other way round; anything it does not know is `unknown`.
    pub fn parse(s: &str) -> Standing {
        [Standing::Healthy, Standing::Deploying, Standing::Drifted, Standing::Failed]
            .into_iter()
            .find(|st| st.as_str() == s)
            .unwrap_or(Standing::Unknown)
    }
}

/// Each environment of `checked`: the worst standing of its deployments,
/// and how many it has.
pub fn by_environment(checked: &[Checked]) -> std::collections::BTreeMap<String, (Standing, u32)> {
    let mut envs = std::collections::BTreeMap::new();
    for c in checked {
        let e = envs.entry(c.environment.clone()).or_insert((Standing::Healthy, 0));
        e.0 = e.0.max(c.standing);
        e.1 += 1;
    }
    envs
}

/// One deployment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub name: String,
    pub environment: String,
    pub standing: Standing,
    /// Why, in a sentence (what drifted, the error, the state).
    pub detail: String,
    pub checked_at: String,
}

/// How many drift checks (plugin `status` calls) run at once.
pub(super) const DRIFT_CONCURRENCY: usize = 8;

impl Lifecycle {
    /// Checks every live deployment (of `environment`, or all) against its
    /// runtime; in name order.
    pub async fn report(&self, environment: Option<&str>) -> Result<Vec<Checked>, StoreError> {
        use futures::StreamExt;
        let wanted: Vec<_> = self
            .shared
            .store
            .deployments()?
            .into_iter()
            .filter(|d| d.state != State::Deleted && environment.is_none_or(|e| e == d.environment))
            .collect();
        // A few runtimes asked at once (each call has its own store and
        // deadline), answers kept in order.
        Ok(futures::stream::iter(wanted)
            .map(|d| {
                let me = self.clone();
                async move {
                    let (standing, detail) = me.check_drift(&d.id).await;
                    Checked { name: d.name, environment: d.environment, standing, detail, checked_at: now_rfc3339() }
                }
            })
            .buffered(DRIFT_CONCURRENCY)
            .collect()
            .await)
    }

    /// Checks every deployment and records what it found (the periodic
    /// check `era report --last` reads).
    pub async fn check_all_drift(&self) {
        let checked = match self.report(None).await {
            Ok(c) => c,
            Err(e) => return tracing::warn!("drift check: {e}"),
        };
        let drifted = checked.iter().filter(|c| c.standing == Standing::Drifted).count();
        let rows: Vec<[String; 5]> = checked
            .into_iter()
            .map(|c| [c.name, c.environment, c.standing.as_str().to_string(), c.detail, c.checked_at])
            .collect();
        match self.shared.store.record_drift(&rows) {
            Ok(()) if drifted > 0 => tracing::warn!(drifted, checked = rows.len(), "drift check: deployments drifted"),
            Ok(()) => tracing::debug!(checked = rows.len(), "drift check"),
            Err(e) => tracing::warn!("drift check: {e}"),
        }
    }

    /// The last periodic drift check of every deployment (of
    /// `environment`, or all): what `era report --last` shows.
    pub fn last_drift(&self, environment: Option<&str>) -> Result<Vec<Checked>, StoreError> {
        Ok(self
            .shared
            .store
            .drift_checks()?
            .into_iter()
            .filter(|[_, e, ..]| environment.is_none_or(|want| want == e))
            .map(|[name, environment, standing, detail, checked_at]| Checked {
                name,
                environment,
                standing: Standing::parse(&standing),
                detail,
                checked_at,
            })
            .collect())
    }

    /// Where one deployment (by id) stands against its runtime.
    pub async fn check_drift(&self, name: &str) -> (Standing, String) {
        let store = &self.shared.store;
        let d = match store.deployment(name) {
            Ok(d) => d,
            Err(e) => return (Standing::Unknown, e.to_string()),
        };
        match d.state {
            State::Running | State::Stopped => {}
            State::Failed | State::RollbackFailed => return (Standing::Failed, format!("{}: {}", d.state, d.message)),
            s => return (Standing::Deploying, format!("{s}: {}", d.message)),
        }
        let running = d.state == State::Running;
        let revision = if d.current_revision != 0 { d.current_revision } else { d.desired_revision };
        let rev = match store.revision(name, revision) {
            Ok(Some(r)) => r,
            Ok(None) => return (Standing::Unknown, format!("revision {revision} is not in the store")),
            Err(e) => return (Standing::Unknown, e.to_string()),
        };
        let plugin = match plugin_for(&self.shared, &rev.runtime) {
            Ok(p) => p,
            Err(e) => return (Standing::Unknown, e),
        };
        let work_dir = Path::new(&rev.work_dir);
        if !work_dir.is_dir() {
            return if running {
                (Standing::Drifted, format!("recorded Running, but revision {revision}'s work dir is gone"))
            } else {
                (Standing::Healthy, "stopped".into())
            };
        }
        let workload = workload_of(
            &self.shared.layout,
            name,
            &rev.spec,
            rev.revision,
            rev.artifact_digest.as_deref().zip(rev.artifact_path.as_deref()),
            work_dir,
            Path::new(&rev.source_dir),
        );
        let ctx = CallContext { deployment: name, work_dir, revision: Some(rev.revision) };
        let handle = rev.handle.clone().unwrap_or_default();
        let asked = tokio::time::timeout(CHECK_TIMEOUT, plugin.status(&ctx, &workload, &handle)).await;
        match (asked, running) {
            (Err(_), _) => (Standing::Unknown, format!("the runtime did not answer within {CHECK_TIMEOUT:?}")),
            (Ok(Err(CallError { failure: Failure::NotFound(m), .. })), true) => (
                Standing::Drifted,
                format!("recorded Running, but the runtime has no workload of revision {revision}: {m}"),
            ),
            (Ok(Err(CallError { failure: Failure::NotFound(_), .. })), false) => (Standing::Healthy, "stopped".into()),
            (Ok(Err(e)), _) => (Standing::Unknown, format!("the runtime's status failed: {e}")),
            (Ok(Ok(st)), true) if !st.running => {
                (Standing::Drifted, format!("recorded Running, but the runtime says it is not running: {}", st.message))
            }
            (Ok(Ok(st)), true) if st.health == Health::Unhealthy => {
                (Standing::Drifted, format!("the runtime reports it unhealthy: {}", st.message))
            }
            (Ok(Ok(_)), true) => (Standing::Healthy, format!("revision {revision} running")),
            (Ok(Ok(st)), false) if st.running => {
                (Standing::Drifted, format!("recorded Stopped, but the runtime says it runs: {}", st.message))
            }
            (Ok(Ok(_)), false) => (Standing::Healthy, "stopped".into()),
        }
    }
}
