//! One supervisor task per deployment: it does the work of the state the
//! deployment is in, commits the next transition, and repeats until the
//! deployment settles; then it waits for commands and, while Running, watches
//! the workload.
//!
//! The rule that makes crash recovery work: a transition is committed
//! *before* the side effect it leads to, and every side effect is idempotent.
//! A supervisor started on a deployment in any state (after `kill -9`) simply
//! does that state's work again.

use super::hooks::{self, Point};
use super::restart::AfterExit;
use super::{Applied, Command, CommandError, Shared, WatchEvent};
use crate::health;
use crate::machine::{Event, State, transition};
use crate::plugin::{
    Artifact, ArtifactKind, CallContext, CallError, Failure, Health, LoadedPlugin, Port, Volume, Workload,
};
use crate::prepare::{Layout, Scratch};
use crate::spec::{ArtifactSource, DeploymentSpec};
use crate::store::{
    Changes, DeploymentRecord, Installed, JournalEntry, Operation, RevisionRecord, Store, StoreError, now_rfc3339,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        unpacking: Arc::new(tokio::sync::Mutex::new(())),
        cuttable: std::sync::atomic::AtomicBool::new(false),
    };
    let mut shutdown = shared.shutdown.clone();
    sup.on_start().await;
    // Stop, delete and rollback commands that arrived during a step that is
    // not cut short: each takes effect at the next preemptible or settled
    // state, in the order they came.
    let mut held = std::collections::VecDeque::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let rec = match sup.db(|s, n| s.deployment(n)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(deployment = sup.name, "cannot read deployment: {e}");
                tokio::time::sleep(STORE_RETRY).await;
                continue;
            }
        };
        tracing::Span::current().record("revision", rec.desired_revision);
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
                        if let Err(e) = done {
                            tracing::error!(deployment = sup.name, state = %rec.state, "step could not be committed, retrying: {e}");
                            tokio::time::sleep(STORE_RETRY).await;
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

impl Command {
    /// Stop, delete and rollback cut a preemptible step short; apply and
    /// start during a step are refused (Busy): they would race the step for
    /// the same revision.
    fn preempts(&self) -> bool {
        matches!(self, Command::Stop { .. } | Command::Delete { .. } | Command::Rollback { .. })
    }
}

fn refuse_busy(cmd: Command, rec: &DeploymentRecord) {
    let busy = |action| CommandError::Busy { name: rec.name.clone(), state: rec.state, action };
    // A dropped reply only means the caller went away.
    match cmd {
        Command::Apply { reply, .. } => drop(reply.send(Err(busy("apply")))),
        Command::Stop { reply } => drop(reply.send(Err(busy("stop")))),
        Command::Start { reply } => drop(reply.send(Err(busy("start")))),
        Command::Delete { reply } => drop(reply.send(Err(busy("delete")))),
        Command::Rollback { reply, .. } => drop(reply.send(Err(busy("rollback")))),
    }
}

pub(crate) fn plugin_for(shared: &Shared, runtime: &str) -> Result<Arc<LoadedPlugin>, String> {
    shared.plugins.get(runtime).ok_or_else(|| {
        let names = shared.plugins.names();
        let loaded = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        format!("runtime {runtime:?} is not loaded in this erad (loaded: {loaded})")
    })
}

/// The workload record a plugin sees for one revision.
pub(crate) fn workload_of(
    layout: &Layout,
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
        deployment: spec.name().to_string(),
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
                host_path: layout.volume_dir(spec.name(), &v.name).display().to_string(),
                mount_path: v.mount_path.clone(),
                read_only: v.read_only,
            })
            .collect(),
        config: s.config.to_string(),
        work_dir: work_dir.display().to_string(),
        stop_grace_seconds: s.stop_grace_period.0.as_secs().min(u32::MAX as u64) as u32,
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
        crate::artifact::gc::collect(&content, &keep, grace)
    })
    .await;
    match done {
        Ok(Ok(c)) if c.blobs > 0 => {
            tracing::info!(blobs = c.blobs, bytes = c.bytes, "content-store GC removed unreferenced blobs")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("content-store GC: {e}"),
        Err(e) => tracing::warn!("content-store GC task: {e}"),
    }
}

fn ports_of(spec: &DeploymentSpec) -> Vec<(u16, String)> {
    spec.spec.ports.iter().map(|p| (p.port, p.protocol.clone())).collect()
}

async fn retry<T, F, Fut>(mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut backoff = RETRY_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < RETRIES => {
                tracing::warn!(attempt, "{e}; retrying in {}", humantime::format_duration(backoff));
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    name: String,
    /// Since when the current workload has been seen running (for
    /// `restart.resetAfter`); None while it is not.
    running_since: std::sync::Mutex<Option<Instant>>,
    /// Held by an image unpack's blocking thread while it writes.
    unpacking: Arc<tokio::sync::Mutex<()>>,
    /// Whether the running step may be cut short now: set when a
    /// preemptible step starts, cleared before it calls a plugin to change
    /// the workload or commits its outcome (a commit runs to its end on a
    /// blocking thread, and the after-effects that follow it must run too).
    cuttable: std::sync::atomic::AtomicBool,
}

/// A restart the monitor decided on: committed after its backoff, which a
/// command or a shutdown cuts short (then there is no restart).
struct Restart {
    backoff: Duration,
    revision: u64,
    cause: String,
    changes: Changes,
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

    /// What a call on an installed revision needs: its plugin, its workload
    /// and the handle the plugin gave it.
    fn call_parts(&self, rev: &RevisionRecord) -> Work<(Arc<LoadedPlugin>, Workload, String)> {
        Ok((plugin_for(&self.shared, &rev.runtime)?, self.workload(rev), rev.handle.clone().unwrap_or_default()))
    }

    /// A call's context on an installed revision: its work dir is the
    /// plugin's view of the host.
    fn ctx<'a>(&'a self, rev: &'a RevisionRecord) -> CallContext<'a> {
        CallContext { deployment: &self.name, work_dir: Path::new(&rev.work_dir), revision: Some(rev.revision) }
    }

    fn workload(&self, rev: &RevisionRecord) -> Workload {
        workload_of(
            &self.shared.layout,
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

    // ---- operator commands, in settled states -------------------------------

    async fn handle(&self, cmd: Command, rec: &DeploymentRecord) {
        match cmd {
            Command::Apply { spec, source_dir, reply } => {
                let _ = reply.send(self.apply(*spec, source_dir, rec).await);
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
                    state => Err(CommandError::NotPossible { name: self.name.clone(), state, action: "stop" }),
                };
                let _ = reply.send(r);
            }
            Command::Start { reply } => {
                let r = match rec.state {
                    State::Running => Ok(State::Running),
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
                    state => Err(CommandError::NotPossible { name: self.name.clone(), state, action: "start" }),
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
                    state => Err(CommandError::NotPossible { name: self.name.clone(), state, action: "delete" }),
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
    async fn start_target(&self, rec: &DeploymentRecord) -> Result<u64, CommandError> {
        let target = if rec.current_revision != 0 { rec.current_revision } else { rec.desired_revision };
        match self.db(move |s, n| s.revision(n, target)).await? {
            Some(r) if r.installed && r.handle.is_some() => Ok(target),
            _ => Err(CommandError::Invalid {
                name: self.name.clone(),
                message: format!(
                    "revision {target} was stopped before it was installed, so there is nothing to start: apply the spec again"
                ),
            }),
        }
    }

    /// A stop, delete or rollback that arrived during a step: answers at once
    /// if it cannot succeed (so the step is not cut short for nothing), else
    /// gives the command back to be held.
    async fn precheck(&self, cmd: Command, rec: &DeploymentRecord) -> Option<Command> {
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

    async fn command(&self, event: Event, revision: u64, cause: &str, changes: Changes) -> Result<State, CommandError> {
        Ok(self.commit(event, revision, cause.to_string(), changes).await?.state)
    }

    async fn apply(
        &self,
        spec: DeploymentSpec,
        source_dir: PathBuf,
        rec: &DeploymentRecord,
    ) -> Result<Applied, CommandError> {
        let hash = spec.hash();
        if matches!(rec.state, State::Running | State::Stopped)
            && rec.current_revision == rec.desired_revision
            && let Ok(current) = self.revision(rec.current_revision).await
            && current.spec_hash == hash
        {
            return Ok(Applied { name: self.name.clone(), revision: rec.current_revision, changed: false });
        }
        if transition(rec.state, Event::Apply).is_err() {
            return Err(CommandError::NotPossible { name: self.name.clone(), state: rec.state, action: "apply" });
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
        };
        self.db(move |s, _| s.insert_revision(&record)).await?;
        let changes = Changes {
            desired_revision: Some(revision),
            previous_revision: Some(previous),
            operation: Some(if update { Operation::Update } else { Operation::Install }),
            restarts: Some(0),
            ..Default::default()
        };
        let short = hash.trim_start_matches("sha256:").get(..12).unwrap_or("");
        self.commit(Event::Apply, revision, format!("applied revision {revision} (spec {short})"), changes).await?;
        Ok(Applied { name: self.name.clone(), revision, changed: true })
    }

    async fn rollback(&self, to: Option<u64>, rec: &DeploymentRecord) -> Result<State, CommandError> {
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
    async fn rollback_target(&self, to: Option<u64>, rec: &DeploymentRecord) -> Result<u64, CommandError> {
        if transition(rec.state, Event::Rollback).is_err() {
            return Err(CommandError::NotPossible { name: self.name.clone(), state: rec.state, action: "rollback" });
        }
        let revisions = self.db(|s, n| s.revisions(n)).await?;
        let target = match to {
            Some(t) => t,
            None if rec.previous_revision != 0 => rec.previous_revision,
            None => revisions.iter().map(|r| r.revision).filter(|r| *r < rec.current_revision).max().unwrap_or(0),
        };
        let invalid = |message: String| CommandError::Invalid { name: self.name.clone(), message };
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

    // ---- the work of each state ----------------------------------------------

    async fn step(&self, rec: &DeploymentRecord) -> Result<(), StoreError> {
        let desired = rec.desired_revision;
        let none = Changes::default;
        // What install or start answered, committed with the transition.
        let with_handle = |handle| Changes { installed: Some(Installed { revision: desired, handle }), ..none() };
        let outcome: Work<(Event, String, Changes)> = match rec.state {
            State::Validating => {
                self.validate(desired).await.map(|_| (Event::Validated, format!("revision {desired} is valid"), none()))
            }
            State::Fetching => {
                self.fetch(desired).await.map(|d| (Event::Fetched, format!("fetched and verified {d}"), none()))
            }
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
            State::HealthChecking => self.health_check(desired).await.map(|_| {
                let changes = Changes { current_revision: Some(desired), health: Some("healthy".into()), ..none() };
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
                    Changes { current_revision: Some(0), health: Some("unknown".into()), ..none() },
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
                Ok(())
            }
            Err(e) => self.fail(rec, e).await,
        }
    }

    /// Picks the failure event the operation calls for and commits it.
    async fn fail(&self, rec: &DeploymentRecord, error: StepError) -> Result<(), StoreError> {
        tracing::warn!(state = %rec.state, error = %error, "step failed");
        let message = error.to_string();
        let auto_rollback = match self.revision(rec.desired_revision).await {
            Ok(r) => r.spec.spec.update.auto_rollback,
            Err(_) => true,
        };
        let state = rec.state;
        if rec.operation == Operation::Update
            && auto_rollback
            && rec.previous_revision != 0
            && transition(state, Event::FailUpdate).is_ok()
        {
            let to = rec.previous_revision;
            let cause =
                format!("update to revision {} failed: {message}; rolling back to revision {to}", rec.desired_revision);
            let changes = Changes {
                desired_revision: Some(to),
                previous_revision: Some(rec.desired_revision),
                operation: Some(Operation::Rollback),
                ..Default::default()
            };
            self.commit(Event::FailUpdate, to, cause, changes).await?;
        } else if rec.operation == Operation::Rollback && transition(state, Event::FailRollback).is_ok() {
            let cause = format!("rollback to revision {} failed: {message}", rec.desired_revision);
            self.commit(
                Event::FailRollback,
                rec.desired_revision,
                cause,
                Changes { health: Some("unhealthy".into()), ..Default::default() },
            )
            .await?;
        } else {
            let (after, entry) = self
                .record(
                    Event::Fail,
                    rec.desired_revision,
                    message,
                    Changes { health: Some("unhealthy".into()), ..Default::default() },
                )
                .await?;
            if after.operation == Operation::Install {
                self.clean_up_failed_install(&after).await;
            }
            self.announce(entry);
        }
        Ok(())
    }

    /// A first install that failed removes what it made. Idempotent; run
    /// again after a crash.
    async fn clean_up_failed_install(&self, rec: &DeploymentRecord) {
        let Ok(revisions) = self.db(|s, n| s.revisions(n)).await else { return };
        for rev in revisions.iter().filter(|r| r.installed) {
            self.remove_runtime_object(rev).await;
        }
        for rev in &revisions {
            if let Err(e) = self.shared.layout.remove_revision(&self.name, rev.revision) {
                tracing::warn!(deployment = self.name, "{e}");
            }
        }
        if rec.current_revision == 0 {
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

    async fn validate(&self, revision: u64) -> Work<()> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        self.shared
            .content
            .check_source(&rev.spec.artifact_source(), Path::new(&rev.source_dir))
            .map_err(StepError::from)?;
        let ports = ports_of(&rev.spec);
        self.db(move |s, n| s.claim_ports(n, &ports)).await.map_err(StepError::from)?;
        let scratch = Scratch::new(&self.shared.layout.scratch()).map_err(|e| format!("scratch dir: {e}"))?;
        let workload =
            workload_of(&self.shared.layout, &rev.spec, revision, None, &scratch.path, Path::new(&rev.source_dir));
        let ctx = CallContext { deployment: &self.name, work_dir: &scratch.path, revision: None };
        retry(|| plugin.validate(&ctx, &workload)).await.map_err(StepError::from)
    }

    async fn fetch(&self, revision: u64) -> Work<String> {
        let rev = self.revision(revision).await?;
        let source = rev.spec.artifact_source();
        let events = self.shared.events.clone();
        let (name, what) = (self.name.clone(), source.reference().to_string());
        let last = AtomicU64::new(0);
        let progress = move |done: u64, total: Option<u64>| {
            let total = total.unwrap_or(0);
            let prev = last.load(Ordering::Relaxed);
            if done == total || done >= prev + PROGRESS_STEP || prev == 0 {
                last.store(done.max(1), Ordering::Relaxed);
                let _ = events.send(WatchEvent::Progress {
                    deployment: name.clone(),
                    revision,
                    what: what.clone(),
                    done,
                    total,
                });
            }
        };
        let base = Path::new(&rev.source_dir);
        let verify = rev.spec.spec.artifact.verify.as_ref();
        // The deployment's own signer: for an OCI artifact, checked with the
        // policy's rule before any blob; for a file, its bundle after.
        let bundle = verify.and_then(|v| crate::trust::spec_bundle(v, base));
        let also = match verify {
            Some(v) if bundle.is_none() => Some(crate::trust::spec_rule(v, base).map_err(StepError::from)?),
            _ => None,
        };
        // Until the digest is recorded below, the GC waits.
        let _fetching = self.shared.content.fetch_guard().await;
        let fetched = self
            .shared
            .content
            // Once resolved, the revision's digest is what it is fetched by:
            // a tag that moves later never changes a deployed revision.
            .fetch_requiring(
                &source,
                rev.artifact_digest.clone().or(rev.spec.pinned_digest()).as_deref(),
                base,
                also.as_ref(),
                &progress,
            )
            .await
            .map_err(StepError::from)?;
        if let Some((bundle, signer, root)) = bundle {
            let artifact = fetched.path.clone();
            let checked = tokio::task::spawn_blocking(move || {
                crate::trust::verify_blob(&artifact, &bundle, &signer, root.as_deref())
            })
            .await
            .map_err(StepError::from)?
            .map_err(|e| format!("spec.artifact.verify: {e}"))?;
            tracing::info!(artifact = %source.reference(), signer = %checked.signer, checks = %checked.checks, "bundle verified");
        }
        let (digest, path) = (fetched.digest.clone(), fetched.path.display().to_string());
        self.db(move |s, n| s.set_artifact(n, revision, &digest, &path)).await.map_err(StepError::from)?;
        if matches!(source, ArtifactSource::Image(_) | ArtifactSource::Wasm(_) | ArtifactSource::Blob(_)) {
            let (reference, digest, kind, size) =
                (source.reference().to_string(), fetched.digest.clone(), source.kind(), fetched.size);
            self.db(move |s, _| s.record_artifact(&reference, &digest, kind, size, false))
                .await
                .map_err(StepError::from)?;
        }
        Ok(fetched.digest)
    }

    async fn prepare(&self, revision: u64) -> Work<()> {
        let rev = self.revision(revision).await?;
        let volumes: Vec<String> = rev.spec.spec.volumes.iter().map(|v| v.name.clone()).collect();
        let work = self.shared.layout.prepare(&self.name, revision, &volumes).map_err(StepError::from)?;
        if let (ArtifactSource::Image(_), Some(manifest)) = (rev.spec.artifact_source(), rev.artifact_path.clone()) {
            self.unpack_rootfs(&work, Path::new(&manifest)).await?;
        }
        Ok(())
    }

    /// Unpacks an image's layers into `<work dir>/rootfs`, once: a marker
    /// says it finished, and an unfinished one (a crash) is redone.
    async fn unpack_rootfs(&self, work: &Path, manifest: &Path) -> Work<()> {
        let (rootfs, done) = (work.join("rootfs"), work.join("rootfs.done"));
        if done.exists() {
            return Ok(());
        }
        let content = self.shared.content.clone();
        let manifest = manifest.to_path_buf();
        // If the step is cut short (this future dropped), the guard raises
        // the flag and the thread stops at the next entry; the supervisor
        // waits for the lock the thread holds before it goes on.
        struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = CancelOnDrop(Arc::default());
        let cancel = guard.0.clone();
        let writing = self.unpacking.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || -> Work<()> {
            let _writing = writing;
            let _ = std::fs::remove_dir_all(&rootfs);
            let (layers, _) =
                crate::artifact::oci::image_parts(&content.blobs_dir(), &manifest).map_err(StepError::from)?;
            let policy = crate::artifact::unpack::UnpackPolicy::default();
            crate::artifact::unpack::unpack_layers_until(&layers, &rootfs, &policy, &cancel).map_err(|e| {
                let _ = std::fs::remove_dir_all(&rootfs);
                format!("unpacking the image: {e}")
            })?;
            std::fs::write(&done, b"").map_err(|e| StepError::Other(format!("{}: {e}", done.display())))
        })
        .await
        .map_err(|e| format!("unpack task: {e}"))?
    }

    /// Asks the plugin to install the revision and returns its handle, which
    /// the caller commits with the next transition. Before the call, the
    /// revision is marked installed (its handle unknown yet): a crash during
    /// or after the call leaves a record that an object may exist, so every
    /// cleanup path still deletes it.
    async fn install(&self, revision: u64) -> Work<String> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        if !rev.installed {
            let handle = rev.handle.clone();
            self.db(move |s, n| s.set_installed(n, revision, handle.as_deref(), true))
                .await
                .map_err(StepError::from)?;
        }
        let workload = self.workload(&rev);
        let ctx = self.ctx(&rev);
        retry(|| plugin.install(&ctx, &workload)).await.map_err(StepError::from)
    }

    /// Asks the plugin to start the installed revision and returns the
    /// handle it answers with, which the caller commits with the next
    /// transition.
    async fn activate(&self, revision: u64) -> Work<String> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        let handle =
            rev.handle.clone().ok_or_else(|| format!("revision {revision} has no handle: it was never installed"))?;
        self.db(move |s, n| s.count_activation(n, revision)).await.map_err(StepError::from)?;
        let workload = self.workload(&rev);
        let ctx = self.ctx(&rev);
        retry(|| plugin.start(&ctx, &workload, &handle)).await.map_err(StepError::from)
    }

    /// Before a revision is installed and started: every other revision's
    /// workload is stopped, so two revisions never run at once (an update
    /// stopped the old one already; an apply on a Failed deployment whose
    /// old workload still runs has not).
    async fn stop_other_revisions(&self, revision: u64) -> Work<()> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.installed && r.revision != revision) {
            self.stop_revision(rev).await?;
        }
        Ok(())
    }

    async fn status(&self, rev: &RevisionRecord) -> Work<crate::plugin::WorkloadStatus> {
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        plugin.status(&ctx, &workload, &handle).await.map_err(StepError::from)
    }

    /// The spec's probe, once: http and tcp from the host, exec inside the
    /// workload through the plugin.
    async fn probe(&self, rev: &RevisionRecord, h: &crate::spec::HealthSpec) -> Work<Option<()>> {
        let Some(exec) = h.exec.as_ref().filter(|x| !x.command.is_empty()) else {
            return Ok(health::probe(h, &self.shared.http).await?);
        };
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        let out = plugin.exec(&ctx, &workload, &handle, &exec.command, h.timeout.0).await.map_err(StepError::from)?;
        Ok(health::exec_verdict(&exec.command, out).map(Some)?)
    }

    /// Waits until the revision is healthy, by the plugin's `status` and the
    /// spec's probe, within the update deadline.
    async fn health_check(&self, revision: u64) -> Work<()> {
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
            let verdict: Work<bool> = match self.status(&rev).await {
                Err(e) => Err(e),
                Ok(st) if !st.running => {
                    return Err(format!("revision {revision} is not running: {}", st.message).into());
                }
                Ok(st) if st.health == Health::Unhealthy => {
                    Err(format!("the plugin reports revision {revision} unhealthy: {}", st.message).into())
                }
                Ok(st) => match spec.health.as_ref() {
                    Some(h) => match self.probe(&rev, h).await {
                        Ok(Some(())) => Ok(true),
                        Ok(None) => Ok(st.health == Health::Healthy),
                        Err(e) => Err(e),
                    },
                    None => Ok(st.health == Health::Healthy),
                },
            };
            let last = match verdict {
                Ok(true) => return Ok(()),
                Ok(false) => "not healthy yet".to_string(),
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
    async fn stage_update(&self, rec: &DeploymentRecord) -> Work<String> {
        let new = rec.desired_revision;
        self.validate(new).await?;
        let digest = self.fetch(new).await?;
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
    async fn roll_back(&self, target: u64) -> Work<String> {
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
            self.fetch(target).await?;
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

    async fn stop_revision(&self, rev: &RevisionRecord) -> Work<()> {
        if rev.handle.is_none() {
            // Its install never answered: nothing was started (a start needs
            // the handle), and delete takes care of what install made.
            return Ok(());
        }
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        match retry(|| plugin.stop(&ctx, &workload, &handle)).await {
            Ok(()) => Ok(()),
            Err(CallError { failure: Failure::NotFound(_), .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_revision(&self, rev: &RevisionRecord) -> Work<()> {
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        // The work dir is the plugin's only view of the host; recreate it if a
        // crash took it, so delete can run.
        let _ = std::fs::create_dir_all(&rev.work_dir);
        match retry(|| plugin.delete(&ctx, &workload, &handle)).await {
            Ok(()) | Err(CallError { failure: Failure::NotFound(_), .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let revision = rev.revision;
        self.db(move |s, n| s.set_installed(n, revision, None, false)).await.map_err(StepError::from)
    }

    /// Best effort, for cleanup paths: stop and delete, logging what fails.
    async fn remove_runtime_object(&self, rev: &RevisionRecord) {
        if let Err(e) = self.stop_revision(rev).await {
            tracing::warn!(deployment = self.name, revision = rev.revision, "cleanup: {e}");
        }
        if let Err(e) = self.delete_revision(rev).await {
            tracing::warn!(deployment = self.name, revision = rev.revision, "cleanup: {e}");
        }
    }

    async fn stop_all(&self) -> Work<()> {
        let revisions = self.db(|s, n| s.revisions(n)).await.map_err(StepError::from)?;
        for rev in revisions.iter().filter(|r| r.installed) {
            self.stop_revision(rev).await?;
        }
        Ok(())
    }

    async fn uninstall(&self) -> Work<()> {
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
    async fn retire_other_revisions(&self, current: u64) {
        let Ok(revisions) = self.db(|s, n| s.revisions(n)).await else { return };
        for rev in revisions.iter().filter(|r| r.revision != current) {
            if rev.installed {
                self.remove_runtime_object(rev).await;
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

    // ---- while Running -------------------------------------------------------

    /// One look at a Running workload: record its health, and restart it per
    /// the restart policy if it is gone.
    async fn monitor(&self, rec: &DeploymentRecord) -> Result<Option<Restart>, StoreError> {
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
        match super::restart::after_exit(restart.policy, code, rec.restarts, restart.max_retries) {
            AfterExit::Restart { n, backoff } => {
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
