//! erad's state in SQLite (WAL, `synchronous=FULL`): deployments, their
//! revisions, the journal of every transition, and the host's port claims.
//!
//! An operator can open the file with `sqlite3` (`SELECT * FROM journal`).
//! State is never rewritten in place outside a transaction: a transition
//! updates the deployment row and appends its journal row atomically, and is
//! checked against the pure transition function inside that transaction, so an
//! illegal transition can never be persisted.

use crate::machine::{self, Event, State, TransitionError};
use crate::spec::DeploymentSpec;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The schema version this erad writes; older files are migrated forward
/// ([`migrate`]).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = r#"
-- A deployment is (environment, name); `id` is what the rest of the store,
-- the work dirs and the runtimes know it by: the name in the environment
-- `default`, ENVIRONMENT-NAME in any other (a store migrated from before
-- environments kept every deployment's old id, its name).
CREATE TABLE IF NOT EXISTS deployments (
    id                TEXT PRIMARY KEY,
    environment       TEXT NOT NULL DEFAULT 'default',
    name              TEXT NOT NULL,
    state             TEXT NOT NULL,
    health            TEXT NOT NULL DEFAULT 'unknown',
    current_revision  INTEGER NOT NULL DEFAULT 0,
    desired_revision  INTEGER NOT NULL DEFAULT 0,
    previous_revision INTEGER NOT NULL DEFAULT 0,
    operation         TEXT NOT NULL DEFAULT 'install',
    restarts          INTEGER NOT NULL DEFAULT 0,
    message           TEXT NOT NULL DEFAULT '',
    outputs           TEXT NOT NULL DEFAULT '{}',
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    -- Its spec says spec.suspended (it stays Stopped until one does not):
    -- 1 the suspension stopped it (a spec without it starts it again),
    -- 2 it was stopped already (it stays stopped); 0 not suspended.
    suspended         INTEGER NOT NULL DEFAULT 0,
    -- Outputs an operator set (era outputs set), and the declared outputs
    -- as the last rollout (or override) resolved them; JSON objects.
    output_overrides  TEXT NOT NULL DEFAULT '{}',
    resolved_outputs  TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS revisions (
    deployment      TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    spec            TEXT NOT NULL,
    spec_hash       TEXT NOT NULL,
    source_dir      TEXT NOT NULL,
    runtime         TEXT NOT NULL,
    artifact_digest TEXT,
    artifact_path   TEXT,
    work_dir        TEXT NOT NULL,
    handle          TEXT,
    installed       INTEGER NOT NULL DEFAULT 0,
    activations     INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    -- The spec as written, where it differs from `spec` (the spec its
    -- environment runs: the environment's overlay merged, the overlays
    -- dropped); what a promotion takes to another environment.
    written         TEXT,
    PRIMARY KEY (deployment, revision)
);
CREATE TABLE IF NOT EXISTS journal (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    time       TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    cause      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_deployment ON journal (deployment, seq);
CREATE TABLE IF NOT EXISTS artifacts (
    reference TEXT NOT NULL,
    digest    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    pulled_at TEXT NOT NULL,
    -- 1: an operator (`era pull`) or erad itself (a plugin) pulled it: kept
    -- until removed on purpose. 0: a deployment's fetch recorded it: it goes
    -- with the last deployment that uses it.
    pinned    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reference, digest)
);
-- What the registry last resolved a tag to on this host (a fetch that
-- asked it, or `era pull`): what pullPolicy IfNotPresent and Never use.
-- For a multi-platform image, the index's digest. The reference as the
-- registry client reads it (nginx:1 is docker.io/library/nginx:1).
CREATE TABLE IF NOT EXISTS tags (
    reference   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    resolved_at TEXT NOT NULL,
    PRIMARY KEY (reference, kind)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Saved plans (`era plan`): the plan document as JSON; applied_at once
-- `era apply --plan` carried it out.
CREATE TABLE IF NOT EXISTS plans (
    id           TEXT PRIMARY KEY,
    environment  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    applied_at   TEXT,
    -- When its apply ended, and why it stopped short if it did (an error,
    -- the caller gone, erad stopped while applying it).
    completed_at TEXT,
    failure      TEXT
);
-- Environment locks: one holder at a time (a plan, an apply of one, a
-- single-deployment command), refreshed while held (heartbeat_ms, Unix
-- milliseconds); a row nobody refreshes goes stale and is taken over.
CREATE TABLE IF NOT EXISTS locks (
    environment  TEXT PRIMARY KEY,
    token        TEXT NOT NULL,
    operation    TEXT NOT NULL,
    holder       TEXT NOT NULL,
    acquired_at  TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
-- What erad remembers of an environment beyond its deployments: when its
-- lock was last forced open (plans made before then are refused).
CREATE TABLE IF NOT EXISTS environments (
    name              TEXT PRIMARY KEY,
    force_unlocked_at TEXT,
    force_unlocked_ms INTEGER
);
-- Run history: every plan, apply of a plan, destroy and force-unlock, with
-- who asked (the caller's uid), what came of it and what it did; pruned
-- after [runs] retention. No spec values are written here.
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    environment TEXT NOT NULL,
    caller      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ended_at    TEXT NOT NULL,
    result      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    log         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
-- The last drift check of each deployment (erad's periodic one).
CREATE TABLE IF NOT EXISTS drift_checks (
    deployment  TEXT NOT NULL,
    environment TEXT NOT NULL,
    standing    TEXT NOT NULL,
    detail      TEXT NOT NULL,
    checked_at  TEXT NOT NULL,
    PRIMARY KEY (environment, deployment)
);
-- Invariant breaches (runtime objects no revision accounts for, leftovers
-- of deleted deployments, running digests the trust policy no longer
-- admits) as the last check found them; an unacknowledged one halts its
-- environment's reconciliation.
CREATE TABLE IF NOT EXISTS breaches (
    environment     TEXT NOT NULL,
    object          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    found_at        TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    PRIMARY KEY (environment, object)
);
CREATE UNIQUE INDEX IF NOT EXISTS deployments_by_environment ON deployments (environment, name);
CREATE TABLE IF NOT EXISTS port_claims (
    port       INTEGER NOT NULL,
    protocol   TEXT NOT NULL,
    deployment TEXT NOT NULL,
    PRIMARY KEY (port, protocol)
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the state store was written by a newer erad (schema {found}, this erad knows {SCHEMA_VERSION})")]
    TooNew { found: i64 },
    #[error("deployment {0:?} not found")]
    NotFound(String),
    #[error("cannot record {wanted}: its id {id:?} is {holder}'s; rename one of them")]
    IdTaken { id: String, wanted: String, holder: String },
    #[error("deployment {name}: {source}")]
    Transition { name: String, source: TransitionError },
    #[error("port {port}/{protocol} is already claimed by deployment {owner:?}")]
    PortTaken { port: u16, protocol: String, owner: String },
    #[error("state store holds a corrupt row: {0}")]
    Corrupt(String),
}

/// What a deployment is doing; decides which failure event a step raises and
/// where recovery resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Install,
    Update,
    Rollback,
    Stop,
    Start,
    Delete,
    Restart,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Install => "install",
            Operation::Update => "update",
            Operation::Rollback => "rollback",
            Operation::Stop => "stop",
            Operation::Start => "start",
            Operation::Delete => "delete",
            Operation::Restart => "restart",
        }
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "install" => Operation::Install,
            "update" => Operation::Update,
            "rollback" => Operation::Rollback,
            "stop" => Operation::Stop,
            "start" => Operation::Start,
            "delete" => Operation::Delete,
            "restart" => Operation::Restart,
            other => return Err(format!("unknown operation {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    /// What the store, the work dirs and the runtimes know it by.
    pub id: String,
    pub state: State,
    pub health: String,
    /// The revision that serves (0: none).
    pub current_revision: u64,
    /// The revision erad drives towards.
    pub desired_revision: u64,
    /// Where an automatic rollback goes (0: nowhere).
    pub previous_revision: u64,
    pub operation: Operation,
    pub restarts: u32,
    pub message: String,
    pub outputs: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    /// The environment it belongs to and its name there.
    pub environment: String,
    pub name: String,
    /// Whether its spec says `spec.suspended`, and what that did.
    pub suspended: Suspension,
    /// Outputs an operator set (`era outputs set`).
    pub output_overrides: BTreeMap<String, String>,
    /// The declared outputs as the last rollout or override resolved them.
    pub resolved_outputs: BTreeMap<String, String>,
}

/// A saved plan as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedPlan {
    /// The plan document (JSON).
    pub body: String,
    /// When an apply of it began.
    pub applied_at: Option<String>,
    /// When that apply ended.
    pub completed_at: Option<String>,
    /// Why it stopped short, if it did.
    pub failure: Option<String>,
}

/// Whether a deployment's spec suspends it (`spec.suspended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suspension {
    #[default]
    No,
    /// Suspended, and the suspension stopped it: a spec without it starts
    /// it again.
    StoppedIt,
    /// Suspended while it was stopped already: it stays stopped after.
    WasStopped,
}

impl Suspension {
    pub fn is_suspended(self) -> bool {
        self != Suspension::No
    }

    fn to_sql(self) -> i64 {
        match self {
            Suspension::No => 0,
            Suspension::StoppedIt => 1,
            Suspension::WasStopped => 2,
        }
    }

    fn from_sql(v: i64) -> Suspension {
        match v {
            0 => Suspension::No,
            2 => Suspension::WasStopped,
            _ => Suspension::StoppedIt,
        }
    }
}

/// An invariant that does not hold, as a check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub environment: String,
    /// What breaks it (`runc container era-...`, `deployment web`).
    pub object: String,
    /// `orphan`, `leftover` or `untrusted`.
    pub kind: String,
    pub detail: String,
    pub found_at: String,
    /// When and by whom it was acknowledged (it then halts nothing).
    pub acknowledged: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub deployment: String,
    pub revision: u64,
    pub spec: DeploymentSpec,
    pub spec_hash: String,
    /// Where relative `file:` paths in the spec are resolved from.
    pub source_dir: String,
    pub runtime: String,
    pub artifact_digest: Option<String>,
    pub artifact_path: Option<String>,
    pub work_dir: String,
    pub handle: Option<String>,
    /// The runtime object exists (install succeeded and delete has not).
    pub installed: bool,
    /// How many times this revision entered Activating or RollingBack
    /// (committed before the plugin is asked to start it).
    pub activations: u64,
    pub created_at: String,
    /// The spec as written, where it differs from `spec` (its environment's
    /// overlay merged): what a promotion takes elsewhere.
    pub written: Option<DeploymentSpec>,
}

/// An OCI artifact in the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub reference: String,
    pub digest: String,
    pub kind: String,
    pub size: u64,
    pub pulled_at: String,
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub deployment: String,
    pub time: String,
    pub from: State,
    pub to: State,
    pub revision: u64,
    pub cause: String,
}

/// What a transition changes besides the state; `None` leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub current_revision: Option<u64>,
    pub desired_revision: Option<u64>,
    pub previous_revision: Option<u64>,
    pub operation: Option<Operation>,
    pub restarts: Option<u32>,
    pub health: Option<String>,
    /// What a side effect left on a revision (the handle `install` or
    /// `start` returned), committed with the transition that follows it, so a
    /// crash can never keep the one and lose the other.
    pub installed: Option<Installed>,
    /// A new revision, inserted with the transition that applies it.
    pub new_revision: Option<Box<RevisionRecord>>,
    /// What Fetching verified, recorded with the transition that ends it.
    pub artifact: Option<FetchedArtifact>,
    /// Whether its spec suspends it, recorded with the transition that
    /// stops or resumes it.
    pub suspended: Option<Suspension>,
    /// What the runtime reported and the declared outputs resolved from it,
    /// recorded with the transition that makes the revision the serving one.
    pub outputs: Option<(BTreeMap<String, String>, BTreeMap<String, String>)>,
    /// Every output, override and resolution removed (the deployment is).
    pub clear_outputs: bool,
}

/// A revision's verified artifact: its digest and place in the content
/// store and, for OCI artifacts, the row `era images` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedArtifact {
    pub revision: u64,
    pub digest: String,
    pub path: String,
    /// `(reference, kind, size)` of an OCI artifact.
    pub listed: Option<(String, String, u64)>,
    /// What the registry resolved the reference's tag to, when this fetch
    /// asked it (not when a digest was pinned).
    pub resolved: Option<String>,
}

/// A revision's runtime object as the last side effect left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub revision: u64,
    pub handle: String,
}

/// One run: a plan, an apply of one, a destroy, a force-unlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: String,
    /// plan | apply | destroy | force-unlock
    pub kind: String,
    pub environment: String,
    /// Who asked: `uid N`.
    pub caller: String,
    pub started_at: String,
    pub ended_at: String,
    /// succeeded | failed
    pub result: String,
    /// What came of it in one line; for a failed run, the error.
    pub summary: String,
    /// What it did, a line each.
    pub log: String,
}

/// How long saved plans are kept.
pub const PLAN_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// One hold of an environment's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// Random per hold: only the holder refreshes or releases it.
    pub token: String,
    /// What holds it: `plan`, `apply --plan`, `apply`, `stop`...
    pub operation: String,
    /// Who: the caller (`uid 1000`) and erad's pid.
    pub holder: String,
    pub acquired_at: String,
    /// Last refreshed, Unix milliseconds.
    pub heartbeat_ms: i64,
}

const RUN_COLUMNS: &str = "id, kind, environment, caller, started_at, ended_at, result, summary, log";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        environment: r.get(2)?,
        caller: r.get(3)?,
        started_at: r.get(4)?,
        ended_at: r.get(5)?,
        result: r.get(6)?,
        summary: r.get(7)?,
        log: r.get(8)?,
    })
}

const LOCK_COLUMNS: &str = "token, operation, holder, acquired_at, heartbeat_ms";

/// Who holds `environment`'s lock, if anyone (stale or not).
fn held_lock(c: &Connection, environment: &str) -> Result<Option<LockRecord>, StoreError> {
    Ok(c.query_row(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE environment = ?1"), [environment], lock_from_row)
        .optional()?)
}

fn lock_from_row(r: &Row<'_>) -> rusqlite::Result<LockRecord> {
    lock_from_row_at(r, 0)
}

fn lock_from_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<LockRecord> {
    Ok(LockRecord {
        token: r.get(at)?,
        operation: r.get(at + 1)?,
        holder: r.get(at + 2)?,
        acquired_at: r.get(at + 3)?,
        heartbeat_ms: r.get(at + 4)?,
    })
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A handle to the state database, cheap to clone. Calls block on SQLite
/// (and its fsync); async callers run them on the blocking pool.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        migrate(&conn, found).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(open_err)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A random id made when this store was created: part of every runtime
    /// object's name, so objects another store made are never taken for ours.
    pub fn instance_id(&self) -> Result<String, StoreError> {
        self.with(|c| {
            let fresh = {
                use std::io::Read;
                let mut b = [0u8; 4];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut b))
                    .map_err(|e| StoreError::Corrupt(format!("cannot read /dev/urandom: {e}")))?;
                hex::encode(b)
            };
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)", params![fresh])?;
            Ok(c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0))?)
        })
    }

    /// [`Store::with`], its writes committed without waiting for the disk
    /// (for rows whose loss in a power cut is harmless; a later synced
    /// commit makes them durable too, as the WAL is written in order).
    fn unsynced<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(|c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let r = f(c);
            c.pragma_update(None, "synchronous", "FULL")?;
            r
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // A poisoned lock only means another thread panicked mid-call; SQLite's
        // own transactions keep the data consistent, so carry on.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Creates the deployment in `Requested` (or returns the existing one).
    /// Not flushed on its own: nothing has been promised yet, and the apply
    /// that follows commits it to disk with its first transition (SQLite's
    /// write-ahead log is flushed in order, so that commit's fsync covers
    /// this write too). A crash before then leaves a deployment in
    /// Requested with no revision or none at all, both of which recovery
    /// handles.
    pub fn ensure_deployment(&self, id: &str, environment: &str, name: &str) -> Result<DeploymentRecord, StoreError> {
        self.with(|c| {
            let now = now_rfc3339();
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let inserted = c.execute(
                "INSERT OR IGNORE INTO deployments (id, environment, name, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![id, environment, name, State::Requested.as_str(), now],
            );
            c.pragma_update(None, "synchronous", "FULL")?;
            inserted?;
            let d = get_deployment(c, id)?;
            if d.environment != environment || d.name != name {
                return Err(StoreError::IdTaken {
                    id: id.to_string(),
                    wanted: format!("{name} in environment {environment}"),
                    holder: format!("{} in environment {}", d.name, d.environment),
                });
            }
            Ok(d)
        })
    }

    pub fn deployment(&self, id: &str) -> Result<DeploymentRecord, StoreError> {
        self.with(|c| get_deployment(c, id))
    }

    /// The deployment `name` of `environment`, if it is recorded.
    pub fn find_deployment(&self, environment: &str, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = ?1 AND name = ?2"
            ))?
            .query_row([environment, name], deployment_from_row)
            .optional()?
            .transpose()
        })
    }

    /// Every recorded deployment called `name`, whatever its environment.
    pub fn deployments_named(&self, name: &str) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.with(|c| list_deployments(c, "WHERE name = ?1", params![name]))
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.with(|c| list_deployments(c, "", params![]))
    }

    /// The next free revision number of a deployment (revisions are never reused).
    pub fn next_revision(&self, name: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            let max: Option<i64> =
                c.query_row("SELECT MAX(revision) FROM revisions WHERE deployment = ?1", [name], |r| r.get(0))?;
            Ok(max.unwrap_or(0) as u64 + 1)
        })
    }

    pub fn insert_revision(&self, rev: &RevisionRecord) -> Result<(), StoreError> {
        self.with(|c| insert_revision(c, rev))
    }

    pub fn revision(&self, name: &str, revision: u64) -> Result<Option<RevisionRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE deployment = ?1 AND revision = ?2"),
                params![name, revision as i64],
                revision_from_row,
            )
            .optional()?
            .transpose()
        })
    }

    pub fn revisions(&self, name: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {REVISION_COLUMNS} FROM revisions WHERE deployment = ?1 ORDER BY revision"
            ))?;
            let rows = st.query_map([name], revision_from_row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|r| r)).collect()
        })
    }

    /// Records what a fetch verified, in one transaction (Fetching commits
    /// it with its transition instead).
    pub fn record_fetched(&self, name: &str, fetched: &FetchedArtifact) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            record_fetched(&tx, name, fetched)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records the plugin's handle and whether the runtime object exists.
    pub fn set_installed(
        &self,
        name: &str,
        revision: u64,
        handle: Option<&str>,
        installed: bool,
    ) -> Result<(), StoreError> {
        self.update_revision(
            name,
            revision,
            "handle = ?3, installed = ?4",
            params![name, revision as i64, handle, installed],
        )
    }

    fn update_revision(
        &self,
        name: &str,
        revision: u64,
        set: &str,
        p: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c.execute(&format!("UPDATE revisions SET {set} WHERE deployment = ?1 AND revision = ?2"), p)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("{name} revision {revision}")));
            }
            Ok(())
        })
    }

    /// Checks `event` against the state machine and, if legal, commits the new
    /// state with its journal entry in one transaction. This is the only way a
    /// deployment's state changes.
    pub fn commit_transition(
        &self,
        name: &str,
        event: Event,
        revision: u64,
        cause: &str,
        changes: &Changes,
    ) -> Result<(DeploymentRecord, JournalEntry), StoreError> {
        let started = std::time::Instant::now();
        let committed = self.with(|c| {
            let tx = c.transaction()?;
            let before = get_deployment(&tx, name)?;
            let to = machine::transition(before.state, event)
                .map_err(|source| StoreError::Transition { name: name.to_string(), source })?;
            let now = now_rfc3339();
            if let Some(rev) = &changes.new_revision {
                insert_revision(&tx, rev)?;
            }
            if let Some(a) = &changes.artifact {
                record_fetched(&tx, name, a)?;
            }
            // Cached statements: a commit is mostly its fsync, and preparing
            // three statements each time was a tenth of it.
            tx.prepare_cached(
                "UPDATE deployments SET state = ?2, message = ?3, updated_at = ?4,
                    current_revision = COALESCE(?5, current_revision),
                    desired_revision = COALESCE(?6, desired_revision),
                    previous_revision = COALESCE(?7, previous_revision),
                    operation = COALESCE(?8, operation),
                    restarts = COALESCE(?9, restarts),
                    health = COALESCE(?10, health),
                    suspended = COALESCE(?11, suspended),
                    outputs = CASE WHEN ?12 THEN '{}' ELSE COALESCE(?13, outputs) END,
                    resolved_outputs = CASE WHEN ?12 THEN '{}' ELSE COALESCE(?14, resolved_outputs) END,
                    output_overrides = CASE WHEN ?12 THEN '{}' ELSE output_overrides END
                 WHERE id = ?1",
            )?
            .execute(params![
                name,
                to.as_str(),
                cause,
                now,
                changes.current_revision.map(|v| v as i64),
                changes.desired_revision.map(|v| v as i64),
                changes.previous_revision.map(|v| v as i64),
                changes.operation.map(Operation::as_str),
                changes.restarts,
                changes.health,
                changes.suspended.map(Suspension::to_sql),
                changes.clear_outputs,
                changes.outputs.as_ref().map(|(o, _)| to_json(o)),
                changes.outputs.as_ref().map(|(_, r)| to_json(r))
            ])?;
            tx.prepare_cached(
                "INSERT INTO journal (deployment, time, from_state, to_state, revision, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![name, now, before.state.as_str(), to.as_str(), revision as i64, cause])?;
            let seq = tx.last_insert_rowid() as u64;
            if let Some(i) = &changes.installed {
                let n = tx
                    .prepare_cached(
                        "UPDATE revisions SET handle = ?3, installed = 1 WHERE deployment = ?1 AND revision = ?2",
                    )?
                    .execute(params![name, i.revision as i64, i.handle])?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("{name} revision {}", i.revision)));
                }
            }
            // Entering Installing marks the revision installed before the
            // plugin is asked (its handle unknown yet): a crash during or
            // after the install leaves a record that an object may exist, so
            // every cleanup path still deletes it. Entering Activating counts
            // a start request before it is made.
            let desired = changes.desired_revision.unwrap_or(before.desired_revision);
            let intent = match to {
                State::Installing => Some("installed = 1"),
                State::Activating | State::RollingBack => Some("activations = activations + 1"),
                _ => None,
            };
            if let Some(set) = intent {
                tx.prepare_cached(&format!("UPDATE revisions SET {set} WHERE deployment = ?1 AND revision = ?2"))?
                    .execute(params![name, desired as i64])?;
            }
            // What the UPDATE above wrote, without reading it back.
            let after = DeploymentRecord {
                state: to,
                message: cause.to_string(),
                updated_at: now.clone(),
                current_revision: changes.current_revision.unwrap_or(before.current_revision),
                desired_revision: changes.desired_revision.unwrap_or(before.desired_revision),
                previous_revision: changes.previous_revision.unwrap_or(before.previous_revision),
                operation: changes.operation.unwrap_or(before.operation),
                restarts: changes.restarts.unwrap_or(before.restarts),
                health: changes.health.clone().unwrap_or_else(|| before.health.clone()),
                suspended: changes.suspended.unwrap_or(before.suspended),
                outputs: match (&changes.outputs, changes.clear_outputs) {
                    (_, true) => BTreeMap::new(),
                    (Some((o, _)), _) => o.clone(),
                    (None, _) => before.outputs.clone(),
                },
                resolved_outputs: match (&changes.outputs, changes.clear_outputs) {
                    (_, true) => BTreeMap::new(),
                    (Some((_, r)), _) => r.clone(),
                    (None, _) => before.resolved_outputs.clone(),
                },
                output_overrides: if changes.clear_outputs { BTreeMap::new() } else { before.output_overrides.clone() },
                ..before.clone()
            };
            tx.commit()?;
            let entry = JournalEntry {
                seq,
                deployment: name.to_string(),
                time: now,
                from: before.state,
                to,
                revision,
                cause: cause.to_string(),
            };
            Ok((after, entry))
        });
        tracing::debug!(deployment = name, event = ?event, us = started.elapsed().as_micros() as u64, "transition committed");
        committed
    }

    /// Updates what the health monitor saw; no transition, no journal row.
    pub fn set_observed(&self, name: &str, health: &str, outputs: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE deployments SET health = ?2, outputs = ?3 WHERE id = ?1",
                params![name, health, serde_json::to_string(outputs).unwrap_or_else(|_| "{}".into())],
            )?;
            Ok(())
        })
    }

    /// Sets (`Some`) or removes an operator's override of output `key`,
    /// with the declared outputs as they resolve now, in one write.
    pub fn set_output_override(
        &self,
        id: &str,
        key: &str,
        value: Option<&str>,
        resolved: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut overrides = get_deployment(&tx, id)?.output_overrides;
            match value {
                Some(v) => overrides.insert(key.to_string(), v.to_string()),
                None => overrides.remove(key),
            };
            tx.execute(
                "UPDATE deployments SET output_overrides = ?2, resolved_outputs = ?3 WHERE id = ?1",
                params![id, to_json(&overrides), to_json(resolved)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Whether a write can be made now: takes the write lock and lets it
    /// go, writing nothing (a read-only or unusable store fails here).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
    }

    /// Replaces a revision's spec as written (what applies in its
    /// environment is the same; another environment's overlay changed).
    pub fn set_written(&self, id: &str, revision: u64, written: Option<&DeploymentSpec>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE revisions SET written = ?3 WHERE deployment = ?1 AND revision = ?2",
                params![id, revision as i64, written.map(DeploymentSpec::canonical_json)],
            )?;
            Ok(())
        })
    }

    /// Replaces the recorded breaches with what a check found: new ones
    /// added, those still found kept as they were (with their
    /// acknowledgement), the others (resolved) removed.
    pub fn record_breaches(&self, found: &[Breach]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut keep = std::collections::BTreeSet::new();
            for b in found {
                keep.insert((b.environment.clone(), b.object.clone()));
                tx.execute(
                    "INSERT INTO breaches (environment, object, kind, detail, found_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (environment, object) DO UPDATE SET kind = ?3, detail = ?4",
                    params![b.environment, b.object, b.kind, b.detail, b.found_at],
                )?;
            }
            let recorded: Vec<(String, String)> = {
                let mut st = tx.prepare("SELECT environment, object FROM breaches")?;
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
            };
            for (env, object) in recorded.into_iter().filter(|k| !keep.contains(k)) {
                tx.execute("DELETE FROM breaches WHERE environment = ?1 AND object = ?2", params![env, object])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The recorded breaches (of one environment, or all).
    pub fn breaches(&self, environment: Option<&str>) -> Result<Vec<Breach>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT environment, object, kind, detail, found_at, acknowledged_at, acknowledged_by FROM breaches
                 WHERE ?1 IS NULL OR environment = ?1 ORDER BY environment, object",
            )?;
            let rows = st.query_map(params![environment], |r| {
                Ok(Breach {
                    environment: r.get(0)?,
                    object: r.get(1)?,
                    kind: r.get(2)?,
                    detail: r.get(3)?,
                    found_at: r.get(4)?,
                    acknowledged: match (r.get::<_, Option<String>>(5)?, r.get::<_, Option<String>>(6)?) {
                        (Some(at), by) => Some((at, by.unwrap_or_default())),
                        _ => None,
                    },
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Acknowledges every open breach of `environment`; returns how many.
    pub fn acknowledge_breaches(&self, environment: &str, by: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE breaches SET acknowledged_at = ?2, acknowledged_by = ?3
                 WHERE environment = ?1 AND acknowledged_at IS NULL",
                params![environment, now_rfc3339(), by],
            )?)
        })
    }

    /// Removes every record of these deleted deployments (row, revisions,
    /// journal, port claims, drift finding) and the unapplied plans of
    /// their environments, all in one transaction; if one is not Deleted,
    /// nothing is removed (NotFound).
    pub fn forget_deployments(&self, ids: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for id in ids {
                let d = get_deployment(&tx, id)?;
                if d.state != State::Deleted {
                    return Err(StoreError::NotFound(format!("{id} (not deleted)")));
                }
                tx.execute("DELETE FROM journal WHERE deployment = ?1", [id])?;
                tx.execute("DELETE FROM revisions WHERE deployment = ?1", [id])?;
                tx.execute("DELETE FROM port_claims WHERE deployment = ?1", [id])?;
                tx.execute(
                    "DELETE FROM drift_checks WHERE environment = ?1 AND deployment = ?2",
                    params![d.environment, d.name],
                )?;
                tx.execute("DELETE FROM deployments WHERE id = ?1", [id])?;
                // Plans made against it would see its name anew.
                tx.execute("DELETE FROM plans WHERE environment = ?1 AND applied_at IS NULL", [&d.environment])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records whether its spec suspends it, where no transition goes
    /// with it (suspending a stopped deployment, resuming a running one).
    pub fn set_suspended(&self, id: &str, suspended: Suspension) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("UPDATE deployments SET suspended = ?2 WHERE id = ?1", params![id, suspended.to_sql()])?;
            Ok(())
        })
    }

    /// Resets the restart count of a workload that has run long enough.
    pub fn reset_restarts(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("UPDATE deployments SET restarts = 0 WHERE id = ?1", params![name])?;
            Ok(())
        })
    }

    pub fn journal(&self, name: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, deployment, time, from_state, to_state, revision, cause FROM journal
                 WHERE deployment = ?1 ORDER BY seq",
            )?;
            let rows = st.query_map([name], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.map(|r| {
                let (seq, deployment, time, from, to, revision, cause) = r?;
                Ok(JournalEntry {
                    seq: seq as u64,
                    deployment,
                    time,
                    from: from.parse().map_err(StoreError::Corrupt)?,
                    to: to.parse().map_err(StoreError::Corrupt)?,
                    revision: revision as u64,
                    cause,
                })
            })
            .collect()
        })
    }

    /// Claims `ports` for `name`, all or none. A port another deployment holds
    /// is refused with its owner's name.
    pub fn claim_ports(&self, name: &str, ports: &[(u16, String)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (port, protocol) in ports {
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT deployment FROM port_claims WHERE port = ?1 AND protocol = ?2",
                        params![*port as i64, protocol],
                        |r| r.get(0),
                    )
                    .optional()?;
                match owner {
                    Some(owner) if owner != name => {
                        return Err(StoreError::PortTaken { port: *port, protocol: protocol.clone(), owner });
                    }
                    Some(_) => {}
                    None => {
                        tx.execute(
                            "INSERT INTO port_claims (port, protocol, deployment) VALUES (?1, ?2, ?3)",
                            params![*port as i64, protocol, name],
                        )?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Releases every claim of `name` except `keep`.
    pub fn release_ports(&self, name: &str, keep: &[(u16, String)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let claimed: Vec<(i64, String)> = {
                let mut st = tx.prepare("SELECT port, protocol FROM port_claims WHERE deployment = ?1")?;
                st.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
            };
            for (port, protocol) in claimed {
                if !keep.iter().any(|(p, pr)| *p as i64 == port && *pr == protocol) {
                    tx.execute("DELETE FROM port_claims WHERE port = ?1 AND protocol = ?2", params![port, protocol])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Forgets the artifact records of `name`'s revisions that nothing else
    /// holds: no revision of another live (not Deleted) deployment uses them
    /// and no one pulled them on purpose. Their blobs are then garbage, which
    /// the content-store GC collects once they are older than its grace period
    /// (a fetch in flight touches what it reuses). Returns the digests.
    pub fn forget_artifacts_only_used_by(&self, name: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let digests: Vec<String> = {
                let mut st = tx.prepare(&format!(
                    "SELECT DISTINCT r.artifact_digest FROM revisions r
                     WHERE r.deployment = ?1 AND r.artifact_digest IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.digest = r.artifact_digest AND a.pinned = 1)
                       AND NOT EXISTS (
                         SELECT 1 FROM revisions o JOIN deployments d ON d.id = o.deployment
                         WHERE o.artifact_digest = r.artifact_digest AND o.deployment != ?1 AND {HOLDS})",
                ))?;
                let rows = st.query_map([name], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for d in &digests {
                tx.execute("DELETE FROM artifacts WHERE digest = ?1 AND pinned = 0", [d])?;
            }
            tx.commit()?;
            Ok(digests)
        })
    }

    /// Records an OCI artifact that was pulled into the content store:
    /// `pinned` when an operator or erad itself pulled it (kept until removed
    /// on purpose), not when a deployment's fetch did. A pin, once set, stays.
    pub fn record_artifact(
        &self,
        reference: &str,
        digest: &str,
        kind: &str,
        size: u64,
        pinned: bool,
    ) -> Result<(), StoreError> {
        self.with(|c| insert_artifact(c, reference, digest, kind, size, pinned))
    }

    /// Takes `environment`'s lock for `token` if it is free, already
    /// `token`'s, or stale (not refreshed since `stale_before_ms`);
    /// otherwise returns who holds it.
    ///
    /// Lock rows are written without waiting for the disk (`synchronous =
    /// NORMAL`): a kill -9 keeps them (the OS has them), and a power cut
    /// that loses one took its holder along.
    pub fn try_lock(
        &self,
        environment: &str,
        want: &LockRecord,
        stale_before_ms: i64,
    ) -> Result<Option<LockRecord>, StoreError> {
        self.unsynced(|c| {
            let tx = c.transaction()?;
            let held = held_lock(&tx, environment)?;
            if let Some(h) = held
                && h.token != want.token
                && h.heartbeat_ms >= stale_before_ms
            {
                return Ok(Some(h));
            }
            tx.execute(
                "INSERT OR REPLACE INTO locks (environment, token, operation, holder, acquired_at, heartbeat_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![environment, want.token, want.operation, want.holder, want.acquired_at, want.heartbeat_ms],
            )?;
            tx.commit()?;
            Ok(None)
        })
    }

    /// Refreshes a held lock; false when `token` no longer holds it (it went
    /// stale and was taken over, or was forced open).
    pub fn refresh_lock(&self, environment: &str, token: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.unsynced(|c| {
            let n = c.execute(
                "UPDATE locks SET heartbeat_ms = ?3 WHERE environment = ?1 AND token = ?2",
                params![environment, token, now_ms],
            )?;
            Ok(n == 1)
        })
    }

    /// Releases `token`'s lock (nothing if it no longer holds it).
    pub fn unlock(&self, environment: &str, token: &str) -> Result<(), StoreError> {
        self.unsynced(|c| {
            c.execute("DELETE FROM locks WHERE environment = ?1 AND token = ?2", params![environment, token])?;
            Ok(())
        })
    }

    /// Every held lock, by environment.
    pub fn locks(&self) -> Result<Vec<(String, LockRecord)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT environment, {LOCK_COLUMNS} FROM locks ORDER BY environment"))?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, lock_from_row_at(r, 1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Removes `environment`'s lock whoever holds it, and records when: the
    /// plans made before then are refused. Returns the lock it removed.
    pub fn force_unlock(&self, environment: &str, now_ms: i64) -> Result<Option<LockRecord>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let held = held_lock(&tx, environment)?;
            tx.execute("DELETE FROM locks WHERE environment = ?1", [environment])?;
            tx.execute(
                "INSERT INTO environments (name, force_unlocked_at, force_unlocked_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET force_unlocked_at = ?2, force_unlocked_ms = ?3",
                params![environment, now_rfc3339(), now_ms],
            )?;
            tx.commit()?;
            Ok(held)
        })
    }

    /// When `environment`'s lock was last forced open: (RFC 3339, Unix ms).
    pub fn force_unlocked(&self, environment: &str) -> Result<Option<(String, i64)>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT force_unlocked_at, force_unlocked_ms FROM environments WHERE name = ?1 AND force_unlocked_ms IS NOT NULL",
                [environment],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
    }

    /// Records a run, and drops the runs that started before
    /// `retention` ago. Written without waiting for the disk: history, not
    /// a promise (the next synced commit makes it durable).
    pub fn record_run(&self, run: &RunRecord, retention: std::time::Duration) -> Result<(), StoreError> {
        self.unsynced(|c| {
            let oldest = humantime::format_rfc3339_millis(SystemTime::now() - retention).to_string();
            c.execute("DELETE FROM runs WHERE started_at < ?1", [oldest])?;
            c.execute(
                "INSERT INTO runs (id, kind, environment, caller, started_at, ended_at, result, summary, log)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    run.id,
                    run.kind,
                    run.environment,
                    run.caller,
                    run.started_at,
                    run.ended_at,
                    run.result,
                    run.summary,
                    run.log
                ],
            )?;
            Ok(())
        })
    }

    /// Replaces the recorded drift checks with `checks` (deployment,
    /// environment, standing, detail, checked_at). Written without waiting
    /// for the disk: the next check writes them again.
    pub fn record_drift(&self, checks: &[[String; 5]]) -> Result<(), StoreError> {
        self.unsynced(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM drift_checks", [])?;
            for [d, e, s, detail, at] in checks {
                tx.execute(
                    "INSERT INTO drift_checks (deployment, environment, standing, detail, checked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![d, e, s, detail, at],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The recorded drift checks (deployment name, environment, standing,
    /// detail, when), by environment and name.
    pub fn drift_checks(&self) -> Result<Vec<[String; 5]>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT deployment, environment, standing, detail, checked_at FROM drift_checks ORDER BY environment, deployment",
            )?;
            let rows = st.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The runs, newest first, of one environment or all.
    pub fn runs(&self, environment: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ?1 IS NULL OR environment = ?1 ORDER BY started_at DESC, id"
            ))?;
            let rows = st.query_map([environment], run_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [id], run_from_row).optional()?)
        })
    }

    /// Saves a plan document under its id; plans older than
    /// [`PLAN_RETENTION`] go.
    pub fn save_plan(&self, id: &str, environment: &str, created_at: &str, body: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let oldest = humantime::format_rfc3339_millis(SystemTime::now() - PLAN_RETENTION).to_string();
            c.execute("DELETE FROM plans WHERE created_at < ?1", [oldest])?;
            c.execute(
                "INSERT INTO plans (id, environment, created_at, body) VALUES (?1, ?2, ?3, ?4)",
                params![id, environment, created_at, body],
            )?;
            Ok(())
        })
    }

    /// A saved plan's document, when its apply began (None: not yet) and
    /// when it ended.
    pub fn plan(&self, id: &str) -> Result<Option<SavedPlan>, StoreError> {
        self.with(|c| {
            Ok(c.query_row("SELECT body, applied_at, completed_at, failure FROM plans WHERE id = ?1", [id], |r| {
                Ok(SavedPlan { body: r.get(0)?, applied_at: r.get(1)?, completed_at: r.get(2)?, failure: r.get(3)? })
            })
            .optional()?)
        })
    }

    /// Records that a plan's apply ended, and why short if it did.
    pub fn mark_plan_completed(&self, id: &str, failure: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE plans SET completed_at = ?2, failure = ?3 WHERE id = ?1 AND completed_at IS NULL",
                params![id, now_rfc3339(), failure],
            )?;
            Ok(())
        })
    }

    /// At start: every plan whose apply began and never ended was cut short
    /// by the erad that stopped. Returns how many.
    pub fn mark_interrupted_plans(&self) -> Result<usize, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE plans SET completed_at = ?1, failure = 'erad stopped while applying it'
                 WHERE applied_at IS NOT NULL AND completed_at IS NULL",
                params![now_rfc3339()],
            )?)
        })
    }

    /// Marks a plan applied, unless it already was: false then (another
    /// apply of the same plan got there first).
    pub fn mark_plan_applied(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE plans SET applied_at = ?2 WHERE id = ?1 AND applied_at IS NULL",
                params![id, now_rfc3339()],
            )?;
            Ok(n == 1)
        })
    }

    /// The digest the registry last resolved `reference` (an artifact of
    /// `kind`) to on this host.
    pub fn resolved_tag(&self, reference: &str, kind: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let reference = crate::spec::canonical_reference(reference);
            Ok(c.prepare_cached("SELECT digest FROM tags WHERE reference = ?1 AND kind = ?2")?
                .query_row([reference.as_str(), kind], |r| r.get(0))
                .optional()?)
        })
    }

    /// Records what the registry resolved a tag to (`era pull`).
    pub fn record_tag(&self, reference: &str, kind: &str, digest: &str) -> Result<(), StoreError> {
        self.with(|c| insert_tag(c, reference, kind, digest))
    }

    /// Pulled artifacts with the deployments whose revisions use them.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT a.reference, a.digest, a.kind, a.size, a.pulled_at,
                        (SELECT group_concat(DISTINCT r.deployment) FROM revisions r JOIN deployments d ON d.id = r.deployment
                          WHERE r.artifact_digest = a.digest AND {HOLDS})
                 FROM artifacts a ORDER BY a.reference, a.pulled_at",
            ))?;
            let rows = st.query_map([], |r| {
                let used: Option<String> = r.get(5)?;
                Ok(ArtifactRecord {
                    reference: r.get(0)?,
                    digest: r.get(1)?,
                    kind: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    pulled_at: r.get(4)?,
                    used_by: used.map(|u| u.split(',').map(str::to_string).collect()).unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// What GC must keep: the artifact digests of every revision of every
    /// deployment that is not Deleted, and every pulled artifact.
    pub fn gc_roots(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT r.artifact_digest FROM revisions r JOIN deployments d ON d.id = r.deployment
                  WHERE {HOLDS} AND r.artifact_digest IS NOT NULL
                 UNION SELECT digest FROM artifacts",
            ))?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The deployment holding a port, if any.
    pub fn port_owner(&self, port: u16, protocol: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT deployment FROM port_claims WHERE port = ?1 AND protocol = ?2",
                params![port as i64, protocol],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    pub fn port_claims(&self, name: &str) -> Result<Vec<(u16, String)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT port, protocol FROM port_claims WHERE deployment = ?1 ORDER BY port")?;
            let rows = st.query_map([name], |r| Ok((r.get::<_, i64>(0)? as u16, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

/// Brings a store written by an older erad up to [`SCHEMA_VERSION`], in one
/// transaction (a crash leaves the old version, and the next start redoes it).
fn migrate(conn: &Connection, found: i64) -> rusqlite::Result<()> {
    if found == 1 {
        // Version 1 could not tell an operator's pull from a deployment's
        // fetch; keep every artifact it recorded until removed on purpose.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE artifacts ADD COLUMN pinned INTEGER NOT NULL DEFAULT 1;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    let has = |table: &str| -> rusqlite::Result<bool> {
        conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)", [table], |r| {
            r.get(0)
        })
    };
    let (has_deployments, has_plans) = (has("deployments")?, has("plans")?);
    // Version 4: how a plan's apply ended. Checked column by column, so a
    // crash halfway through is redone, not repeated.
    if (1..=3).contains(&found) && has_plans {
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('plans')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let tx = conn.unchecked_transaction()?;
        if !columns.iter().any(|c| c == "completed_at") {
            // A plan applied before counts as completed.
            tx.execute_batch(
                "ALTER TABLE plans ADD COLUMN completed_at TEXT; UPDATE plans SET completed_at = applied_at;",
            )?;
        }
        if !columns.iter().any(|c| c == "failure") {
            tx.execute_batch("ALTER TABLE plans ADD COLUMN failure TEXT;")?;
        }
        tx.commit()?;
    }
    if (1..=2).contains(&found) && has_deployments {
        // Version 2 knew a deployment by its name alone (unique on the
        // host). Each keeps that name as its id, so its revisions, journal,
        // work dirs and runtime objects stay its own, and takes the
        // environment its desired revision's spec names.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE deployments RENAME COLUMN name TO id;
             ALTER TABLE deployments ADD COLUMN environment TEXT NOT NULL DEFAULT 'default';
             ALTER TABLE deployments ADD COLUMN name TEXT NOT NULL DEFAULT '';
             ALTER TABLE deployments ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE deployments ADD COLUMN output_overrides TEXT NOT NULL DEFAULT '{}';
             ALTER TABLE deployments ADD COLUMN resolved_outputs TEXT NOT NULL DEFAULT '{}';
             ALTER TABLE revisions ADD COLUMN written TEXT;
             UPDATE deployments SET name = id, environment = COALESCE(
                 (SELECT NULLIF(json_extract(r.spec, '$.metadata.environment'), '') FROM revisions r
                   WHERE r.deployment = deployments.id AND r.revision = deployments.desired_revision),
                 'default');
             DROP TABLE IF EXISTS drift_checks;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Whether deployment `d` still holds its revisions' artifacts: it is not
/// Deleted, and not a first install that failed (its cleanup removed
/// everything it made; a new apply fetches again).
const HOLDS: &str =
    "d.state != 'Deleted' AND NOT (d.state = 'Failed' AND d.operation = 'install' AND d.current_revision = 0)";

const DEPLOYMENT_COLUMNS: &str = "id, state, health, current_revision, desired_revision, previous_revision, operation, restarts, message, outputs, created_at, updated_at, environment, name, suspended, output_overrides, resolved_outputs";

/// The deployments `filter` (a WHERE clause, or nothing) selects, by
/// environment and name.
fn list_deployments(
    c: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeploymentRecord>, StoreError> {
    let mut st =
        c.prepare_cached(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments {filter} ORDER BY environment, name"))?;
    let rows = st.query_map(args, deployment_from_row)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|r| r)).collect()
}

fn get_deployment(c: &Connection, name: &str) -> Result<DeploymentRecord, StoreError> {
    c.prepare_cached(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"))?
        .query_row([name], deployment_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(name.to_string()))?
}

fn deployment_from_row(r: &Row<'_>) -> rusqlite::Result<Result<DeploymentRecord, StoreError>> {
    let state: String = r.get(1)?;
    let operation: String = r.get(6)?;
    let outputs: String = r.get(9)?;
    let rec = (|| {
        Ok(DeploymentRecord {
            id: r.get(0)?,
            state: state.parse().map_err(StoreError::Corrupt)?,
            health: r.get(2)?,
            current_revision: r.get::<_, i64>(3)? as u64,
            desired_revision: r.get::<_, i64>(4)? as u64,
            previous_revision: r.get::<_, i64>(5)? as u64,
            operation: operation.parse().map_err(StoreError::Corrupt)?,
            restarts: r.get(7)?,
            message: r.get(8)?,
            outputs: serde_json::from_str(&outputs).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            environment: r.get(12)?,
            name: r.get(13)?,
            suspended: Suspension::from_sql(r.get(14)?),
            output_overrides: json_map(&r.get::<_, String>(15)?)?,
            resolved_outputs: json_map(&r.get::<_, String>(16)?)?,
        })
    })();
    Ok(rec)
}

fn json_map(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

fn insert_revision(c: &Connection, rev: &RevisionRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO revisions (deployment, revision, spec, spec_hash, source_dir, runtime, artifact_digest,
            artifact_path, work_dir, handle, installed, activations, created_at, written)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            rev.deployment,
            rev.revision as i64,
            rev.spec.canonical_json(),
            rev.spec_hash,
            rev.source_dir,
            rev.runtime,
            rev.artifact_digest,
            rev.artifact_path,
            rev.work_dir,
            rev.handle,
            rev.installed,
            rev.activations as i64,
            rev.created_at,
            rev.written.as_ref().map(DeploymentSpec::canonical_json)
        ],
    )?;
    Ok(())
}

fn insert_artifact(
    c: &Connection,
    reference: &str,
    digest: &str,
    kind: &str,
    size: u64,
    pinned: bool,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO artifacts (reference, digest, kind, size, pulled_at, pinned) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (reference, digest) DO UPDATE SET pulled_at = excluded.pulled_at,
            pinned = MAX(pinned, excluded.pinned)",
    )?
    .execute(params![reference, digest, kind, size as i64, now_rfc3339(), pinned])?;
    Ok(())
}

fn insert_tag(c: &Connection, reference: &str, kind: &str, digest: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO tags (reference, kind, digest, resolved_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (reference, kind) DO UPDATE SET digest = excluded.digest, resolved_at = excluded.resolved_at",
    )?
    .execute(params![crate::spec::canonical_reference(reference), kind, digest, now_rfc3339()])?;
    Ok(())
}

/// Records what Fetching verified (see [`FetchedArtifact`]).
fn record_fetched(c: &Connection, name: &str, a: &FetchedArtifact) -> Result<(), StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE revisions SET artifact_digest = ?3, artifact_path = ?4 WHERE deployment = ?1 AND revision = ?2",
        )?
        .execute(params![name, a.revision as i64, a.digest, a.path])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("{name} revision {}", a.revision)));
    }
    if let Some((reference, kind, size)) = &a.listed {
        insert_artifact(c, reference, &a.digest, kind, *size, false)?;
        if let Some(resolved) = &a.resolved {
            insert_tag(c, reference, kind, resolved)?;
        }
    }
    Ok(())
}

const REVISION_COLUMNS: &str = "deployment, revision, spec, spec_hash, source_dir, runtime, artifact_digest, artifact_path, work_dir, handle, installed, activations, created_at, written";

fn revision_from_row(r: &Row<'_>) -> rusqlite::Result<Result<RevisionRecord, StoreError>> {
    let spec: String = r.get(2)?;
    let rec = (|| {
        Ok(RevisionRecord {
            deployment: r.get(0)?,
            revision: r.get::<_, i64>(1)? as u64,
            spec: DeploymentSpec::from_stored(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            spec_hash: r.get(3)?,
            source_dir: r.get(4)?,
            runtime: r.get(5)?,
            artifact_digest: r.get(6)?,
            artifact_path: r.get(7)?,
            work_dir: r.get(8)?,
            handle: r.get(9)?,
            installed: r.get(10)?,
            activations: r.get::<_, i64>(11)? as u64,
            created_at: r.get(12)?,
            written: match r.get::<_, Option<String>>(13)? {
                Some(w) => Some(DeploymentSpec::from_stored(&w).map_err(|e| StoreError::Corrupt(e.to_string()))?),
                None => None,
            },
        })
    })();
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("era.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn a_transition_is_committed_with_its_journal_entry() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        let (rec, entry) = s
            .commit_transition(
                "web",
                Event::Apply,
                1,
                "applied",
                &Changes { desired_revision: Some(1), ..Default::default() },
            )
            .unwrap();
        assert_eq!(rec.state, State::Validating);
        assert_eq!(rec.desired_revision, 1);
        assert_eq!((entry.from, entry.to), (State::Requested, State::Validating));
        assert_eq!(s.journal("web").unwrap(), vec![entry]);
    }

    #[test]
    fn the_record_a_commit_returns_is_what_the_store_holds() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        let every = Changes {
            current_revision: Some(3),
            desired_revision: Some(4),
            previous_revision: Some(2),
            operation: Some(Operation::Update),
            restarts: Some(5),
            health: Some("healthy".into()),
            suspended: Some(Suspension::StoppedIt),
            ..Default::default()
        };
        for (event, changes) in
            [(Event::Apply, Changes::default()), (Event::Validated, every), (Event::Fetched, Changes::default())]
        {
            let (rec, _) = s.commit_transition("web", event, 4, "cause", &changes).unwrap();
            assert_eq!(rec, s.deployment("web").unwrap(), "after {event:?}");
        }
    }

    #[test]
    fn a_revision_recorded_before_a_check_was_added_still_reads() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        let mut rev = revision(1);
        // An environment name erad did not check before, and a control
        // character JSON keeps as is but YAML refuses.
        rev.spec.metadata.environment = Some("Prod_EU".into());
        rev.spec.spec.env.insert("X".into(), "a\u{7f}b".into());
        s.commit_transition(
            "web",
            Event::Apply,
            1,
            "c",
            &Changes { new_revision: Some(Box::new(rev.clone())), ..Default::default() },
        )
        .unwrap();
        let back = s.revision("web", 1).unwrap().unwrap();
        assert_eq!(back.spec, rev.spec);
    }

    fn revision(rev: u64) -> RevisionRecord {
        let spec = DeploymentSpec::parse(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  runtime: noop\n  artifact: {image: \"r/app:1\"}\n",
            "test",
        )
        .unwrap();
        RevisionRecord {
            deployment: "web".into(),
            revision: rev,
            spec,
            spec_hash: String::new(),
            source_dir: "/".into(),
            runtime: "noop".into(),
            artifact_digest: None,
            artifact_path: None,
            work_dir: "/w".into(),
            handle: None,
            installed: false,
            activations: 0,
            created_at: now_rfc3339(),
            written: None,
        }
    }

    #[test]
    fn what_a_step_made_is_committed_with_its_transition_and_not_without_it() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        // An illegal transition inserts no revision.
        let apply = |event| {
            let changes =
                Changes { new_revision: Some(Box::new(revision(1))), desired_revision: Some(1), ..Default::default() };
            s.commit_transition("web", event, 1, "applied", &changes)
        };
        assert!(apply(Event::Healthy).is_err());
        assert!(s.revisions("web").unwrap().is_empty());
        apply(Event::Apply).unwrap();
        assert_eq!(s.revisions("web").unwrap().len(), 1);
        s.commit_transition("web", Event::Validated, 1, "valid", &Changes::default()).unwrap();
        let fetched = FetchedArtifact {
            revision: 1,
            digest: "sha256:aa".into(),
            path: "/blobs/aa".into(),
            listed: Some(("r/app:1".into(), "image".into(), 7)),
            resolved: Some("sha256:aa".into()),
        };
        let changes = Changes { artifact: Some(fetched), ..Default::default() };
        s.commit_transition("web", Event::Fetched, 1, "fetched", &changes).unwrap();
        assert_eq!(s.resolved_tag("r/app:1", "image").unwrap().as_deref(), Some("sha256:aa"));
        assert_eq!(s.resolved_tag("r/app:1", "wasm").unwrap(), None, "per kind");
        let rev = s.revision("web", 1).unwrap().unwrap();
        assert_eq!(
            (rev.artifact_digest.as_deref(), rev.artifact_path.as_deref()),
            (Some("sha256:aa"), Some("/blobs/aa"))
        );
        assert_eq!(s.artifacts().unwrap()[0].size, 7);
        assert!(!rev.installed);
        // Entering Installing marks the intent; entering Activating counts a start.
        s.commit_transition("web", Event::Prepared, 1, "prepared", &Changes::default()).unwrap();
        assert!(s.revision("web", 1).unwrap().unwrap().installed);
        s.commit_transition("web", Event::Installed, 1, "installed", &Changes::default()).unwrap();
        assert_eq!(s.revision("web", 1).unwrap().unwrap().activations, 1);
    }

    #[test]
    fn an_illegal_transition_changes_nothing() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        let err = s.commit_transition("web", Event::Healthy, 1, "x", &Changes::default()).unwrap_err();
        assert!(matches!(err, StoreError::Transition { .. }), "{err}");
        assert_eq!(s.deployment("web").unwrap().state, State::Requested);
        assert!(s.journal("web").unwrap().is_empty());
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("era.db");
        {
            let s = Store::open(&path).unwrap();
            s.ensure_deployment("web", "default", "web").unwrap();
            s.commit_transition("web", Event::Apply, 1, "applied", &Changes::default()).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.deployment("web").unwrap().state, State::Validating);
    }

    #[test]
    fn a_port_held_by_one_deployment_is_refused_to_another() {
        let (_d, s) = store();
        s.claim_ports("a", &[(8080, "tcp".into())]).unwrap();
        s.claim_ports("a", &[(8080, "tcp".into())]).unwrap();
        let err = s.claim_ports("b", &[(9090, "tcp".into()), (8080, "tcp".into())]).unwrap_err();
        assert_eq!(err.to_string(), "port 8080/tcp is already claimed by deployment \"a\"");
        assert!(s.port_claims("b").unwrap().is_empty(), "all or nothing");
        s.claim_ports("b", &[(8080, "udp".into())]).unwrap();
        s.release_ports("a", &[]).unwrap();
        s.claim_ports("b", &[(8080, "tcp".into())]).unwrap();
    }

    #[test]
    fn a_pulled_artifact_outlives_the_deployments_that_used_it_and_a_fetched_one_does_not() {
        let (_d, s) = store();
        s.ensure_deployment("web", "default", "web").unwrap();
        let spec = DeploymentSpec::parse(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  runtime: noop\n  artifact: {image: \"r/app:1\"}\n",
            "test",
        )
        .unwrap();
        for (rev, digest) in [(1, "sha256:aa"), (2, "sha256:bb")] {
            s.insert_revision(&RevisionRecord {
                deployment: "web".into(),
                revision: rev,
                spec: spec.clone(),
                spec_hash: String::new(),
                source_dir: "/".into(),
                runtime: "noop".into(),
                artifact_digest: Some(digest.into()),
                artifact_path: None,
                work_dir: "/w".into(),
                handle: None,
                installed: false,
                activations: 0,
                created_at: now_rfc3339(),
                written: None,
            })
            .unwrap();
        }
        s.record_artifact("r/app:1", "sha256:aa", "image", 1, true).unwrap();
        s.record_artifact("r/app:1", "sha256:aa", "image", 1, false).unwrap();
        s.record_artifact("r/app:2", "sha256:bb", "image", 1, false).unwrap();
        assert_eq!(s.forget_artifacts_only_used_by("web").unwrap(), vec!["sha256:bb".to_string()]);
        let left: Vec<String> = s.artifacts().unwrap().into_iter().map(|a| a.digest).collect();
        assert_eq!(left, vec!["sha256:aa".to_string()], "a pin, once set, stays");
    }

    #[test]
    fn a_version_2_store_is_migrated_each_deployment_keeping_its_id_and_taking_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("era.db");
        {
            // Version 2's tables: a deployment known by its name alone.
            let v2 = format!(
                "CREATE TABLE deployments (
                    name TEXT PRIMARY KEY, state TEXT NOT NULL, health TEXT NOT NULL DEFAULT 'unknown',
                    current_revision INTEGER NOT NULL DEFAULT 0, desired_revision INTEGER NOT NULL DEFAULT 0,
                    previous_revision INTEGER NOT NULL DEFAULT 0, operation TEXT NOT NULL DEFAULT 'install',
                    restarts INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
                    outputs TEXT NOT NULL DEFAULT '{{}}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
                 {}",
                SCHEMA
                    .replace(
                        "CREATE UNIQUE INDEX IF NOT EXISTS deployments_by_environment ON deployments (environment, name);",
                        ""
                    )
                    .replace("    written         TEXT,\n", "")
                    .replace(
                        ",\n    -- When its apply ended, and why it stopped short if it did (an error,\n    -- the caller gone, erad stopped while applying it).\n    completed_at TEXT,\n    failure      TEXT",
                        "",
                    )
            );
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&v2).unwrap();
            c.execute_batch(
                r#"INSERT INTO deployments (name, state, desired_revision, created_at, updated_at) VALUES
                       ('web', 'Running', 2, 't', 't'), ('db', 'Stopped', 1, 't', 't'), ('new', 'Requested', 0, 't', 't');
                   INSERT INTO revisions (deployment, revision, spec, spec_hash, source_dir, runtime, work_dir, created_at) VALUES
                       ('web', 1, '{"metadata":{"name":"web","environment":"qa"}}', '', '/', 'noop', '/w', 't'),
                       ('web', 2, '{"metadata":{"name":"web","environment":"staging"}}', '', '/', 'noop', '/w', 't'),
                       ('db', 1, '{"metadata":{"name":"db"}}', '', '/', 'noop', '/w', 't');
                   INSERT INTO drift_checks VALUES ('web', 'staging', 'healthy', '', 't');
                   PRAGMA user_version = 2;"#,
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        // Each keeps its id (its revisions, work dirs and runtime objects
        // are named by it) and is of its desired revision's environment.
        let web = s.find_deployment("staging", "web").unwrap().unwrap();
        assert_eq!((web.id.as_str(), web.state), ("web", State::Running));
        assert_eq!(s.find_deployment("default", "db").unwrap().unwrap().id, "db");
        assert_eq!(s.find_deployment("default", "new").unwrap().unwrap().id, "new");
        assert!(s.find_deployment("qa", "web").unwrap().is_none());
        // A new deployment whose id would be an old one's is refused,
        // naming both; one of another name is recorded.
        let e = s.ensure_deployment("web", "default", "web").unwrap_err().to_string();
        assert!(e.contains("web in environment default") && e.contains("web in environment staging"), "{e}");
        s.ensure_deployment("staging-web", "staging", "web").unwrap_err();
        let d = s.ensure_deployment("prod-web", "prod", "web").unwrap();
        assert_eq!((d.environment.as_str(), d.name.as_str()), ("prod", "web"));
        assert_eq!(s.deployments_named("web").unwrap().len(), 2);
        assert!(s.drift_checks().unwrap().is_empty(), "the last checks were dropped, not misread");
        drop(s);
        Store::open(&path).expect("opening a migrated store again changes nothing");
    }

    #[test]
    fn a_version_3_store_gets_how_plans_ended_its_applied_plans_counted_as_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("era.db");
        drop(Store::open(&path).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "ALTER TABLE plans DROP COLUMN failure; ALTER TABLE plans DROP COLUMN completed_at;
                 INSERT INTO plans (id, environment, created_at, body, applied_at) VALUES ('a', 'qa', 't', '{}', 'then');
                 INSERT INTO plans (id, environment, created_at, body) VALUES ('b', 'qa', 't', '{}');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let a = s.plan("a").unwrap().unwrap();
        assert_eq!((a.completed_at.as_deref(), a.failure), (Some("then"), None));
        assert_eq!(s.plan("b").unwrap().unwrap().completed_at, None);
        drop(s);
        Store::open(&path).expect("opening a migrated store again changes nothing");
        // A begun, never ended apply is cut short at the next start.
        let s = Store::open(&path).unwrap();
        s.mark_plan_applied("b").unwrap();
        assert_eq!(s.mark_interrupted_plans().unwrap(), 1);
        assert_eq!(s.plan("b").unwrap().unwrap().failure.as_deref(), Some("erad stopped while applying it"));
    }

    #[test]
    fn a_version_1_store_is_migrated_keeping_every_recorded_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("era.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE artifacts (reference TEXT NOT NULL, digest TEXT NOT NULL, kind TEXT NOT NULL,
                    size INTEGER NOT NULL, pulled_at TEXT NOT NULL, PRIMARY KEY (reference, digest));
                 INSERT INTO artifacts VALUES ('r/app:1', 'sha256:aa', 'image', 1, 'then');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let pinned: i64 = s
            .with(|c| Ok(c.query_row("SELECT pinned FROM artifacts WHERE digest = 'sha256:aa'", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(pinned, 1, "version 1 could not tell a pull from a fetch: kept");
        let version: i64 = s.with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(s);
        Store::open(&path).expect("opening a migrated store again changes nothing");
    }

    #[test]
    fn a_store_from_a_newer_erad_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("era.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 99 })));
    }
}
