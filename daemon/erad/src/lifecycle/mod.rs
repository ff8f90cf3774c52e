//! The ERA lifecycle: the supervisors that drive the pure state machine
//! ([`crate::machine`], which the store checks every commit against), one
//! task per deployment.
//!
//! [`Lifecycle`] is the front door the API uses: it routes an operator's
//! command to the deployment's supervisor and answers once the command's
//! first transition is committed (or refused). Progress after that is seen on
//! the event stream ([`Lifecycle::subscribe`]) or in the store.

mod drift;
mod failure;
mod forget;
mod hooks;
mod invariants;
mod locks;
mod outputs;
mod plan;
mod promote;
mod restart;
mod runs;
mod runtime;
mod supervisor;

pub use drift::{Checked, Standing, by_environment};
pub use invariants::halted_because;
pub use locks::{EnvLock, LockError};
pub use plan::{AppliedChange, PlanError, SpecFile, confirmation};
pub use runs::plan_summary;

use crate::artifact::ContentStore;
use crate::plugin::{CallContext, PluginRegistry, Workload};
use crate::prepare::Layout;
use crate::spec::DeploymentSpec;
use crate::store::{DeploymentRecord, JournalEntry, Store, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use crate::machine::{Event, State, TransitionError};

/// What the watch stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Transition(JournalEntry),
    Progress { deployment: String, revision: u64, what: String, done: u64, total: u64 },
}

impl WatchEvent {
    pub fn deployment(&self) -> &str {
        match self {
            WatchEvent::Transition(e) => &e.deployment,
            WatchEvent::Progress { deployment, .. } => deployment,
        }
    }
}

/// Why an operator's command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("deployment {0:?} not found")]
    NotFound(String),
    #[error("deployment {name}: {action} refused: {why}")]
    Halted { name: String, action: String, why: String },
    #[error("there is a deployment {name:?} in each of the environments {environments}: name one with --env")]
    Ambiguous { name: String, environments: String },
    #[error("deployment {name} is {state}; {action} is possible once it settles (see `era watch {name}`)")]
    Busy { name: String, state: State, action: &'static str },
    #[error("deployment {name}: {action} is not possible while it is {state}")]
    NotPossible { name: String, state: State, action: &'static str },
    #[error("deployment {name}: {message}")]
    Invalid { name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("erad is shutting down")]
    ShuttingDown,
}

/// The outcome of an accepted apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub name: String,
    pub revision: u64,
    pub changed: bool,
}

pub(crate) enum Command {
    Apply {
        /// As its environment runs it (its overlay merged).
        spec: Box<DeploymentSpec>,
        /// As written, where that differs.
        written: Option<Box<DeploymentSpec>>,
        source_dir: PathBuf,
        reply: oneshot::Sender<Result<Applied, CommandError>>,
    },
    Stop {
        reply: oneshot::Sender<Result<State, CommandError>>,
    },
    Start {
        reply: oneshot::Sender<Result<State, CommandError>>,
    },
    Delete {
        reply: oneshot::Sender<Result<State, CommandError>>,
    },
    Rollback {
        to: Option<u64>,
        reply: oneshot::Sender<Result<State, CommandError>>,
    },
}

/// Everything the supervisors share.
pub(crate) struct Shared {
    pub store: Store,
    pub content: ContentStore,
    /// The loaded plugins, for the API's listing.
    pub plugins: Arc<PluginRegistry>,
    /// The same plugins, as the supervisors call them.
    pub runtimes: Arc<dyn runtime::Runtimes>,
    pub layout: Layout,
    /// How new image revisions get their root filesystem.
    pub rootfs: crate::prepare::rootfs::RootfsMode,
    pub events: broadcast::Sender<WatchEvent>,
    pub health_interval: Duration,
    /// Size at which a workload's `logs/output.log` is rotated.
    pub log_max_bytes: u64,
    pub http: reqwest::Client,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Policy per environment (`[environments.NAME]`).
    pub environments: std::collections::BTreeMap<String, crate::config::EnvironmentPolicy>,
    pub locks: crate::config::LockPolicy,
    pub run_retention: Duration,
}

/// The set of deployment supervisors.
#[derive(Clone)]
pub struct Lifecycle {
    shared: Arc<Shared>,
    supervisors: Arc<Mutex<HashMap<String, mpsc::Sender<Command>>>>,
    /// Held by an invariant check: one at a time, so an older check's
    /// findings never replace a newer one's.
    checking: Arc<tokio::sync::Mutex<()>>,
}

impl Lifecycle {
    /// Turns true when erad starts shutting down.
    pub fn shutting_down(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }

    pub(crate) fn new(shared: Shared) -> Lifecycle {
        Lifecycle { shared: Arc::new(shared), supervisors: Arc::default(), checking: Arc::default() }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Where deployments' files live.
    pub fn layout(&self) -> &Layout {
        &self.shared.layout
    }

    pub fn content(&self) -> &ContentStore {
        &self.shared.content
    }

    pub fn plugins(&self) -> &PluginRegistry {
        &self.shared.plugins
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.shared.events.subscribe()
    }

    /// Removes content-store blobs nothing references and no fetch touched
    /// within the grace period. Runs after every delete, and on a timer.
    pub async fn collect_garbage(&self) {
        supervisor::collect_garbage(&self.shared).await
    }

    /// How often the GC also runs on a timer: five grace periods (10 min).
    pub fn gc_every(&self) -> Duration {
        hooks::gc_grace(crate::artifact::gc::GRACE) * 5
    }

    /// Starts a supervisor for every deployment in the store. Each one resumes
    /// from its last committed state; Running workloads are adopted.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let cut = self.shared.store.mark_interrupted_plans()?;
        if cut > 0 {
            tracing::warn!(plans = cut, "plans whose apply the last erad did not finish are recorded as cut short");
        }
        let all = self.shared.store.deployments()?;
        for d in &all {
            self.supervisor(&d.id);
        }
        Ok(all.len())
    }

    fn supervisor(&self, name: &str) -> mpsc::Sender<Command> {
        let mut map = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(name)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(16);
        // One span per supervisor: every event it logs names the deployment
        // and the revision it is driving.
        let span = tracing::info_span!("supervisor", deployment = %name, revision = tracing::field::Empty);
        tokio::spawn(tracing::Instrument::instrument(supervisor::run(self.shared.clone(), name.to_string(), rx), span));
        map.insert(name.to_string(), tx.clone());
        tx
    }

    async fn send<T>(
        &self,
        name: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.supervisor(name).send(make(reply)).await.map_err(|_| CommandError::ShuttingDown)?;
        answer.await.map_err(|_| CommandError::ShuttingDown)?
    }

    fn exists(&self, name: &str) -> Result<(), CommandError> {
        match self.shared.store.deployment(name) {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(CommandError::NotFound(name.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the deployment or rolls out a new revision of it.
    pub async fn apply(&self, written: DeploymentSpec, source_dir: PathBuf) -> Result<Applied, CommandError> {
        let spec = written
            .effective()
            .map_err(|e| CommandError::Invalid { name: written.name().to_string(), message: e.to_string() })?;
        let written = (written != spec).then(|| Box::new(written));
        self.check_not_halted(spec.environment(), spec.name(), "apply")?;
        if spec.spec.suspended {
            let live = self.shared.store.find_deployment(spec.environment(), spec.name())?;
            if !live.is_some_and(|d| d.state != State::Deleted && d.desired_revision != 0) {
                return Err(CommandError::Invalid {
                    name: spec.name().to_string(),
                    message: "spec.suspended: a new deployment cannot start suspended: apply it without \
                              spec.suspended first"
                        .into(),
                });
            }
        }
        let id = self.id_for(&spec)?;
        self.shared.store.ensure_deployment(&id, spec.environment(), spec.name())?;
        self.send(&id, |reply| Command::Apply { spec: Box::new(spec), written, source_dir, reply }).await
    }

    /// The id `spec`'s deployment is recorded under: its own if it is
    /// recorded, else the one a new deployment gets: [`DeploymentSpec::new_id`],
    /// or, where another deployment holds that (`a`/`b-c` against `a-b`/`c`,
    /// a deleted one, one migrated with its old name), the first of it
    /// suffixed `-2`, `-3`... that none holds.
    pub fn id_for(&self, spec: &DeploymentSpec) -> Result<String, StoreError> {
        self.id_for_name(spec.environment(), spec.name())
    }

    /// [`Lifecycle::id_for`] of deployment `name` of `environment`.
    pub fn id_for_name(&self, environment: &str, name: &str) -> Result<String, StoreError> {
        let store = &self.shared.store;
        if let Some(d) = store.find_deployment(environment, name)? {
            return Ok(d.id);
        }
        let base = crate::spec::deployment_id(environment, name);
        let mut id = base.clone();
        for n in 2.. {
            match store.deployment(&id) {
                Err(StoreError::NotFound(_)) => return Ok(id),
                Err(e) => return Err(e),
                Ok(_) if n > 1000 => break,
                Ok(_) => id = format!("{base}-{n}"),
            }
        }
        Err(StoreError::Corrupt(format!("no free id for {name} in environment {environment}")))
    }

    /// The recorded deployment `name` of `environment`; with no environment,
    /// the only live deployment of that name in any (or, none live, the
    /// only deleted one); several: the error lists their environments and
    /// asks for one.
    pub fn resolve(&self, environment: Option<&str>, name: &str) -> Result<DeploymentRecord, CommandError> {
        let store = &self.shared.store;
        match environment {
            Some(env) => store.find_deployment(env, name)?.ok_or_else(|| {
                CommandError::NotFound(match env {
                    crate::plan::DEFAULT_ENVIRONMENT => name.to_string(),
                    _ => format!("{name} (environment {env})"),
                })
            }),
            None => {
                // A deleted one counts only where no other is live.
                let all = store.deployments_named(name)?;
                let (live, deleted): (Vec<_>, Vec<_>) = all.into_iter().partition(|d| d.state != State::Deleted);
                let mut candidates = if live.is_empty() { deleted } else { live };
                match candidates.len() {
                    0 => Err(CommandError::NotFound(name.to_string())),
                    1 => Ok(candidates.remove(0)),
                    _ => Err(CommandError::Ambiguous {
                        name: name.to_string(),
                        environments: candidates.into_iter().map(|d| d.environment).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }
    }

    pub async fn stop(&self, name: &str) -> Result<State, CommandError> {
        self.exists(name)?;
        self.send(name, |reply| Command::Stop { reply }).await
    }

    pub async fn start(&self, name: &str) -> Result<State, CommandError> {
        self.exists(name)?;
        let d = self.shared.store.deployment(name)?;
        self.check_not_halted(&d.environment, &d.name, "start")?;
        self.send(name, |reply| Command::Start { reply }).await
    }

    pub async fn delete(&self, name: &str) -> Result<State, CommandError> {
        self.exists(name)?;
        self.send(name, |reply| Command::Delete { reply }).await
    }

    pub async fn rollback(&self, name: &str, to: Option<u64>) -> Result<State, CommandError> {
        self.exists(name)?;
        self.send(name, |reply| Command::Rollback { to, reply }).await
    }

    /// Checks a spec as Validating would, without changing anything: the
    /// runtime is loaded, its ports are free, and the plugin accepts it.
    /// With `render`, returns what the plugin rendered (`rendered/` of its
    /// work dir: file name and text, see [`read_rendered`]).
    pub async fn validate(
        &self,
        spec: &DeploymentSpec,
        source_dir: &std::path::Path,
        render: bool,
    ) -> Result<Vec<(String, String)>, CommandError> {
        let invalid = |message: String| CommandError::Invalid { name: spec.name().to_string(), message };
        let spec = &spec.effective().map_err(|e| invalid(e.to_string()))?;
        let plugin = supervisor::plugin_for(&self.shared, &spec.spec.runtime).map_err(invalid)?;
        self.shared.content.check_source(&spec.artifact_source(), source_dir).map_err(|e| invalid(e.to_string()))?;
        let id = self.id_for(spec)?;
        for p in &spec.spec.ports {
            let claims = self.shared.store.port_owner(p.port, &p.protocol)?;
            if let Some(owner) = claims
                && owner != id
            {
                return Err(invalid(format!(
                    "port {}/{} is already claimed by deployment {owner:?}",
                    p.port, p.protocol
                )));
            }
        }
        let scratch =
            crate::prepare::Scratch::new(&self.shared.layout.scratch()).map_err(|e| invalid(e.to_string()))?;
        // As the revision an apply would make, so what the plugin renders
        // is named as it would be.
        let revision = self.shared.store.next_revision(&id)?;
        let workload: Workload =
            supervisor::workload_of(&self.shared.layout, &id, spec, revision, None, &scratch.path, source_dir);
        plugin
            .validate(&CallContext { deployment: &id, work_dir: &scratch.path, revision: None }, &workload)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        if !render {
            return Ok(Vec::new());
        }
        read_rendered(&scratch.path).map_err(|e| invalid(e.to_string()))
    }
}

/// At most this many rendered files, each at most [`RENDERED_FILE_LIMIT`],
/// [`RENDERED_TOTAL`] in all (the answer stays under gRPC's 4 MiB).
const RENDERED_FILES: usize = 256;
const RENDERED_FILE_LIMIT: u64 = 1 << 20;
const RENDERED_TOTAL: usize = 3 << 20;

/// The files a plugin's `validate` wrote into `rendered/` of its work dir,
/// sorted by name: `rendered/` itself a real directory (a link is not
/// followed), regular files only, opened beneath the work dir without
/// following links, each and all capped; anything else is skipped.
pub(crate) fn read_rendered(work_dir: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let dir = work_dir.join("rendered");
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Ok(Vec::new());
    }
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.len() > RENDERED_FILES {
        return Err(std::io::Error::other(format!(
            "the plugin rendered {} files into rendered/; at most {RENDERED_FILES} are read",
            names.len()
        )));
    }
    let (mut out, mut total) = (Vec::new(), 0);
    for name in names {
        let rel = std::path::Path::new("rendered").join(&name);
        if let Some(bytes) = crate::beneath::read_capped(work_dir, &rel, RENDERED_FILE_LIMIT)? {
            total += bytes.len();
            if total > RENDERED_TOTAL {
                return Err(std::io::Error::other(format!(
                    "the plugin rendered more than {} MiB into rendered/",
                    RENDERED_TOTAL >> 20
                )));
            }
            out.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod rendered_tests {
    use super::read_rendered;

    #[test]
    fn rendered_files_are_read_beneath_the_work_dir_only() {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "root:x:0:0").unwrap();
        // rendered/ as a link to a host dir: not followed, nothing read.
        std::os::unix::fs::symlink(outside.path(), work.path().join("rendered")).unwrap();
        assert!(read_rendered(work.path()).unwrap().is_empty());
        // A real rendered/: its files, sorted; a link inside is refused.
        std::fs::remove_file(work.path().join("rendered")).unwrap();
        std::fs::create_dir(work.path().join("rendered")).unwrap();
        std::fs::write(work.path().join("rendered/b.json"), "{}").unwrap();
        std::fs::write(work.path().join("rendered/a.json"), "[]").unwrap();
        let got = read_rendered(work.path()).unwrap();
        assert_eq!(got, [("a.json".to_string(), "[]".to_string()), ("b.json".to_string(), "{}".to_string())]);
        std::os::unix::fs::symlink(outside.path().join("passwd"), work.path().join("rendered/c.json")).unwrap();
        assert_eq!(read_rendered(work.path()).unwrap().len(), 2, "a link is not a regular file");
        // Too much in all is refused, naming the limit.
        for i in 0..4 {
            std::fs::write(work.path().join(format!("rendered/big{i}.json")), vec![b'x'; 1 << 20]).unwrap();
        }
        assert!(read_rendered(work.path()).unwrap_err().to_string().contains("more than 3 MiB"));
    }
}
