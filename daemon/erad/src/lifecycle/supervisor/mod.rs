//! One supervisor task per deployment: it does the work of the state the
//! deployment is in, commits the next transition, and repeats until the
//! deployment settles; then it waits for commands and, while Running, watches
//! the workload.
//!
//! The rule that makes crash recovery work: a transition is committed
//! *before* the side effect it leads to, and every side effect is idempotent.
//! A supervisor started on a deployment in any state (after `kill -9`) simply
//! does that state's work again.

mod artifacts;
mod calls;
mod commands;
mod monitor;
mod steps;
#[cfg(test)]
mod tests;

use super::hooks::{self, Point};
use super::runtime::Runtime;
use super::{Command, Shared, WatchEvent};
use crate::machine::{Event, State};
use crate::plugin::{Artifact, ArtifactKind, CallError, Port, Volume, Workload};
use crate::prepare::Layout;
use crate::spec::{ArtifactSource, DeploymentSpec};
use crate::store::{Changes, DeploymentRecord, JournalEntry, Operation, RevisionRecord, Store, StoreError};
use commands::refuse_busy;
use monitor::Restart;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Transient plugin errors (`unavailable`) are retried this often, with
/// doubling backoff from [`RETRY_BACKOFF`], before the step fails.
const RETRIES: u32 = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a supervisor waits before retrying a step whose commit failed
/// (the disk is full, the database is locked...).
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Progress events are sent at most this often per fetch.
const PROGRESS_STEP: u64 = 1 << 20;

/// Why a step's work failed, typed as far as the supervisor goes; its
/// Display is the journal's cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Plugin(#[from] CallError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] crate::artifact::FetchError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Prepare(#[from] crate::prepare::PrepareError),
    /// The workload ended during the step (seen by the health check).
    #[error("revision {revision} is not running: {message}")]
    Exited { revision: u64, code: Option<i32>, message: String },
    #[error("a blocking task of the step: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Other(String),
}

impl From<String> for StepError {
    fn from(s: String) -> StepError {
        StepError::Other(s)
    }
}

type Work<T> = Result<T, StepError>;

pub(crate) async fn run(shared: Arc<Shared>, name: String, mut commands: mpsc::Receiver<Command>) {
    let sup = Supervisor {
        shared: shared.clone(),
        name,
        running_since: std::sync::Mutex::new(None),
        restart_held: std::sync::Mutex::new(false),
        unpacking: Arc::new(tokio::sync::Mutex::new(())),
        cuttable: std::sync::atomic::AtomicBool::new(false),
    };
    let mut shutdown = shared.shutdown.clone();
    sup.on_start().await;
    // Stop, delete and rollback commands that arrived during a step that is
    // not cut short: each takes effect at the next preemptible or settled
    // state, in the order they came.
    let mut held = std::collections::VecDeque::new();
    // The span's revision field, recorded when it changes (the fmt layer
    // appends every record to the span's fields).
    let mut shown_revision = None;
    // What the last step committed, if it ran to its end: the record as the
    // store holds it, not read back.
    let mut committed: Option<DeploymentRecord> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let read = match committed.take() {
            Some(r) => Ok(r),
            None => sup.db(|s, n| s.deployment(n)).await,
        };
        let rec = match read {
            Ok(r) => r,
            // Forgotten (`era delete --all-envs`): nothing is left to drive.
            Err(crate::store::StoreError::NotFound(_)) => return,
            Err(e) => {
                tracing::error!(deployment = sup.name, "cannot read deployment: {e}");
                tokio::time::sleep(STORE_RETRY).await;
                continue;
            }
        };
        if shown_revision != Some(rec.desired_revision) {
            tracing::Span::current().record("revision", rec.desired_revision);
            shown_revision = Some(rec.desired_revision);
        }
        if !held.is_empty() && (!needs_work(rec.state) || rec.state.is_preemptible()) {
            if let Some(cmd) = held.pop_front() {
                sup.handle(cmd, &rec).await;
            }
            continue;
        }
        if needs_work(rec.state) {
            sup.cuttable.store(rec.state.is_preemptible(), Ordering::SeqCst);
            let step = sup.step(&rec);
            tokio::pin!(step);
            loop {
                tokio::select! {
                    done = &mut step => {
                        match done {
                            Ok(after) => committed = after,
                            Err(e) => {
                                tracing::error!(deployment = sup.name, state = %rec.state, "step could not be committed, retrying: {e}");
                                tokio::time::sleep(STORE_RETRY).await;
                            }
                        }
                        break;
                    }
                    Some(cmd) = commands.recv() => {
                        match sup.db(|s, n| s.deployment(n)).await {
                            // The step committed a settled state and is
                            // finishing its after-effects (retiring an old
                            // revision): the command waits for it.
                            Ok(now) if !needs_work(now.state) => held.push_back(cmd),
                            Ok(now) if cmd.preempts() => {
                                // The step is not polled while this runs: it
                                // is frozen where the command found it.
                                let cut = now.state == rec.state && sup.cuttable.load(Ordering::SeqCst);
                                let cmd = if cut { sup.precheck(cmd, &now).await } else { Some(cmd) };
                                if let Some(cmd) = cmd {
                                    held.push_back(cmd);
                                    if cut {
                                        // Dropping the step cancels it.
                                        tracing::info!(deployment = sup.name, state = %now.state, "step cut short by a command");
                                        break;
                                    }
                                }
                            }
                            Ok(now) => refuse_busy(cmd, &now),
                            Err(_) => refuse_busy(cmd, &rec),
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
            // A cut-short unpack runs on a blocking thread: wait until it has
            // stopped writing before anything removes its work dir.
            drop(sup.unpacking.lock().await);
            continue;
        }
        let monitor = async {
            if rec.state == State::Running {
                tokio::time::sleep(shared.health_interval).await;
                true
            } else {
                std::future::pending::<bool>().await
            }
        };
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => sup.handle(cmd, &rec).await,
                None => return,
            },
            _ = monitor => {
                match sup.monitor(&rec).await {
                    Err(e) => tracing::error!(deployment = sup.name, "health monitor: {e}"),
                    Ok(None) => {}
                    // The backoff gives way to commands and to shutdown.
                    Ok(Some(restart)) => {
                        tracing::info!(deployment = sup.name, backoff = ?restart.backoff, "{}: restarting after the backoff", restart.cause);
                        tokio::select! {
                            _ = tokio::time::sleep(restart.backoff) => {
                                let Restart { revision, cause, changes, .. } = restart;
                                if let Err(e) = sup.commit(Event::Crashed, revision, cause, changes).await {
                                    tracing::error!(deployment = sup.name, "health monitor: {e}");
                                }
                            }
                            cmd = commands.recv() => match cmd {
                                Some(cmd) => sup.handle(cmd, &rec).await,
                                None => return,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn needs_work(state: State) -> bool {
    !state.is_settled() && state != State::Requested
}

pub(crate) fn plugin_for(shared: &Shared, runtime: &str) -> Result<Arc<dyn Runtime>, String> {
    shared.runtimes.get(runtime).ok_or_else(|| {
        let names = shared.runtimes.names();
        let loaded = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        format!("runtime {runtime:?} is not loaded in this erad (loaded: {loaded})")
    })
}

/// The workload record a plugin sees for one revision.
pub(crate) fn workload_of(
    layout: &Layout,
    id: &str,
    spec: &DeploymentSpec,
    revision: u64,
    artifact: Option<(&str, &str)>,
    work_dir: &Path,
    source_dir: &Path,
) -> Workload {
    let source = spec.artifact_source();
    let kind = match source {
        ArtifactSource::File(_) => ArtifactKind::File,
        ArtifactSource::Url(_) => ArtifactKind::Url,
        ArtifactSource::Image(_) => ArtifactKind::Image,
        ArtifactSource::Wasm(_) => ArtifactKind::Wasm,
        ArtifactSource::Blob(_) => ArtifactKind::Blob,
    };
    let reference = match &source {
        ArtifactSource::File(f) => source_dir.join(f).display().to_string(),
        other => other.reference().to_string(),
    };
    let (digest, local_path) = artifact.map(|(d, p)| (d.to_string(), p.to_string())).unwrap_or_default();
    // For images, the config (entrypoint, env, user...) the runtime needs.
    let image_config = match kind {
        ArtifactKind::Image if !local_path.is_empty() => {
            crate::artifact::oci::image_parts(&layout.content_store().join("blobs/sha256"), Path::new(&local_path))
                .ok()
                .and_then(|(_, config)| config)
        }
        _ => None,
    };
    let s = &spec.spec;
    Workload {
        deployment: id.to_string(),
        revision,
        artifact: Artifact { kind, reference, digest, local_path, image_config },
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| Port { name: p.name.clone(), port: p.port, protocol: p.protocol.clone() })
            .collect(),
        volumes: s
            .volumes
            .iter()
            .map(|v| Volume {
                name: v.name.clone(),
                host_path: layout.volume_dir(id, &v.name).display().to_string(),
                mount_path: v.mount_path.clone(),
                read_only: v.read_only,
            })
            .collect(),
        config: s.config.to_string(),
        work_dir: work_dir.display().to_string(),
        stop_grace_seconds: s.stop_grace_period.0.as_secs().min(u32::MAX as u64) as u32,
        health: s.health.as_ref().map(health_check),
    }
}

/// The spec's health as the plugin contract carries it.
fn health_check(h: &crate::spec::HealthSpec) -> crate::plugin::HealthCheck {
    use crate::plugin::{HealthCheck, HttpProbeCheck, Probe, TcpProbeCheck};
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let probe = match (&h.http, &h.tcp, &h.exec) {
        (Some(p), _, _) => {
            Some(Probe::Http(HttpProbeCheck { port: p.port, path: p.path.clone(), host: p.host.clone() }))
        }
        (_, Some(t), _) => Some(Probe::Tcp(TcpProbeCheck { port: t.port, host: t.host.clone() })),
        (_, _, Some(e)) if !e.command.is_empty() => Some(Probe::Exec(e.command.clone())),
        _ => None,
    };
    HealthCheck {
        probe,
        interval_ms: ms(h.interval.0),
        timeout_ms: ms(h.timeout.0),
        retries: h.retries,
        start_period_ms: ms(h.start_period.0),
    }
}

/// Removes blobs nothing references any more and no fetch touched within
/// the grace period. Best effort: a failure is logged.
pub(crate) async fn collect_garbage(shared: &Shared) {
    let content = shared.content.clone();
    let grace = hooks::gc_grace(crate::artifact::gc::GRACE);
    // The roots are read with no fetch in flight: every blob a fetch used is
    // recorded by then.
    let Some(alone) = content.try_gc_guard() else {
        return tracing::info!("content-store GC skipped: a fetch is in flight (the timer runs it again)");
    };
    let store = shared.store.clone();
    let roots = match tokio::task::spawn_blocking(move || store.gc_roots()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return tracing::warn!("content-store GC: {e}"),
        Err(e) => return tracing::warn!("content-store GC task: {e}"),
    };
    let done = tokio::task::spawn_blocking(move || {
        let _alone = alone;
        let keep = crate::artifact::gc::closure(&content, roots);
        // An unpacked image goes with its manifest: no revision that
        // could still run it is left.
        let snapshots = content.snapshots().collect(&keep, grace).map_err(|e| e.to_string())?;
        crate::artifact::gc::collect(&content, &keep, grace).map(|c| (c, snapshots)).map_err(|e| e.to_string())
    })
    .await;
    match done {
        Ok(Ok((c, snapshots))) if c.blobs > 0 || snapshots > 0 => {
            tracing::info!(blobs = c.blobs, bytes = c.bytes, snapshots, "content-store GC removed unreferenced blobs")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("content-store GC: {e}"),
        Err(e) => tracing::warn!("content-store GC task: {e}"),
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    name: String,
    /// Since when the current workload has been seen running (for
    /// `restart.resetAfter`); None while it is not.
    running_since: std::sync::Mutex<Option<Instant>>,
    /// A restart the monitor holds (its environment is halted) was logged.
    restart_held: std::sync::Mutex<bool>,
    /// Held by an image unpack's blocking thread while it writes.
    unpacking: Arc<tokio::sync::Mutex<()>>,
    /// Whether the running step may be cut short now: set when a
    /// preemptible step starts, cleared before it calls a plugin to change
    /// the workload or commits its outcome (a commit runs to its end on a
    /// blocking thread, and the after-effects that follow it must run too).
    cuttable: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    /// Runs a store call on the blocking pool (SQLite waits for fsync).
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (store, name) = (self.shared.store.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || f(&store, &name))
            .await
            .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("store task failed: {e}"))))
    }

    async fn commit(
        &self,
        event: Event,
        revision: u64,
        cause: String,
        changes: Changes,
    ) -> Result<DeploymentRecord, StoreError> {
        let (rec, entry) = self.record(event, revision, cause, changes).await?;
        self.announce(entry);
        Ok(rec)
    }

    /// Commits a transition without telling watchers yet: for transitions
    /// with after-effects (cleanup, retiring revisions) that `--wait` must
    /// not return before. Call [`Supervisor::announce`] when they are done.
    async fn record(
        &self,
        event: Event,
        revision: u64,
        cause: String,
        changes: Changes,
    ) -> Result<(DeploymentRecord, JournalEntry), StoreError> {
        let (rec, entry) = self.db(move |s, n| s.commit_transition(n, event, revision, &cause, &changes)).await?;
        tracing::info!(deployment = self.name, revision, from = %entry.from, to = %entry.to, "{}", entry.cause);
        hooks::pause(self.shared.layout.root(), &self.name, entry.to, Point::Committed).await;
        Ok((rec, entry))
    }

    fn announce(&self, entry: JournalEntry) {
        let _ = self.shared.events.send(WatchEvent::Transition(entry));
    }

    async fn revision(&self, revision: u64) -> Work<RevisionRecord> {
        self.db(move |s, n| s.revision(n, revision))
            .await
            .map_err(StepError::from)?
            .ok_or_else(|| StepError::Other(format!("revision {revision} is not in the store")))
    }

    fn workload(&self, rev: &RevisionRecord) -> Workload {
        workload_of(
            &self.shared.layout,
            &rev.deployment,
            &rev.spec,
            rev.revision,
            rev.artifact_digest.as_deref().zip(rev.artifact_path.as_deref()),
            Path::new(&rev.work_dir),
            Path::new(&rev.source_dir),
        )
    }

    /// Once, when the supervisor starts (also after a crash): finish a failed
    /// install's cleanup, and adopt a Running workload.
    async fn on_start(&self) {
        let Ok(rec) = self.db(|s, n| s.deployment(n)).await else { return };
        match rec.state {
            State::Failed if rec.operation == Operation::Install => self.clean_up_failed_install(&rec).await,
            State::Running => {
                self.adopt(&rec).await;
                // A crash right after Running was committed skipped retiring
                // the other revisions; do it now.
                self.retire_other_revisions(rec.current_revision).await;
            }
            _ => {}
        }
    }

    async fn adopt(&self, rec: &DeploymentRecord) {
        match self.revision(rec.current_revision).await {
            Ok(rev) => match self.status(&rev).await {
                Ok(st) if st.running => {
                    tracing::info!(deployment = self.name, revision = rev.revision, "adopted the running workload")
                }
                Ok(st) => tracing::warn!(
                    deployment = self.name,
                    revision = rev.revision,
                    "workload is not running: {}",
                    st.message
                ),
                Err(e) => tracing::warn!(deployment = self.name, revision = rev.revision, "cannot adopt: {e}"),
            },
            Err(e) => tracing::error!(deployment = self.name, "{e}"),
        }
    }
}
