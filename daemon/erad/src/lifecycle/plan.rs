//! `era plan` and `era apply --plan`: an environment's desired set compared
//! with what the store records, saved, and applied only while nothing it was
//! made against has moved.

use super::{CommandError, Lifecycle};
use crate::machine::State;
use crate::plan::{Action, FieldChange, Pin, Plan, PlannedChange};
use crate::spec::{ArtifactSource, DeploymentSpec, PullPolicy};
use crate::store::{RevisionRecord, StoreError, now_rfc3339};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why a plan could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The set, or something in it, is wrong: the message names what.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// What the plan was made against has moved, or it was applied already.
    #[error("{0}")]
    Stale(String),
    /// A registry could not say what a tag points to.
    #[error("{0}")]
    Unavailable(String),
    /// Something the set needs (the store, a runtime's endpoint) is not
    /// usable now.
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Locked(#[from] super::LockError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One file of a desired set, as the caller read it.
pub struct SpecFile {
    pub text: String,
    /// Its absolute path (or empty), for errors and relative `file:` paths.
    pub source: String,
}

/// What applying a plan did to one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    pub name: String,
    pub action: Action,
    /// The revision an add or change asked for (0 for a destroy).
    pub revision: u64,
}

/// A spec as plans compare it: as JSON, its environment `default` written
/// as none (the same deployment either way).
pub(super) fn comparable(spec: &DeploymentSpec) -> Value {
    let mut spec = spec.clone();
    if spec.metadata.environment.as_deref() == Some(crate::plan::DEFAULT_ENVIRONMENT) {
        spec.metadata.environment = None;
    }
    serde_json::to_value(&spec).unwrap_or(Value::Null)
}

impl Lifecycle {
    /// The live deployments of `environment` (not Deleted, with a
    /// revision) by name, and the desired revision each is driven towards
    /// (whose `deployment` is its id).
    fn live_deployments(&self, environment: &str) -> Result<BTreeMap<String, RevisionRecord>, StoreError> {
        let store = &self.shared.store;
        let mut live = BTreeMap::new();
        for d in store.deployments()? {
            if d.environment != environment || d.state == State::Deleted || d.desired_revision == 0 {
                continue;
            }
            if let Some(rev) = self.desired_as_planned(&d)? {
                live.insert(d.name, rev);
            }
        }
        Ok(live)
    }

    /// The revision a recorded deployment is driven towards, as plans
    /// compare it: with the deployment's suspension (not the revision's).
    pub(super) fn desired_as_planned(
        &self,
        d: &crate::store::DeploymentRecord,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self.shared.store.revision(&d.id, d.desired_revision)?.map(|mut r| {
            r.spec.spec.suspended = d.suspended.is_suspended();
            r
        }))
    }

    /// The id of deployment `name` of `environment`, if it is recorded.
    fn id_of(&self, environment: &str, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.shared.store.find_deployment(environment, name)?.map(|d| d.id))
    }

    /// Compares `files` (the whole desired set of `environment`) with what
    /// the store records and saves the result as a plan. Changes nothing
    /// else: no deployment, revision, journal entry, tag record or runtime
    /// object. Every add and change is checked as Validating would (runtime
    /// loaded, artifact readable, ports free, the plugin's `validate`), and
    /// every OCI tag is resolved (as the spec's pull policy says) and pinned.
    /// Holds the environment's lock while it works (`holder` says who).
    pub async fn plan(&self, environment: &str, files: Vec<SpecFile>, holder: &str) -> Result<Plan, PlanError> {
        let environment = if environment.is_empty() { crate::plan::DEFAULT_ENVIRONMENT } else { environment };
        crate::spec::check_environment_name(environment).map_err(|m| PlanError::Invalid(format!("--env: {m}")))?;
        self.shared
            .store
            .check_writable()
            .map_err(|e| PlanError::Preflight(format!("preflight: the state store cannot be written: {e}")))?;
        let _lock = self.lock_environment(environment, "plan", holder).await?;
        // The desired set, by name.
        let mut desired: BTreeMap<String, (DeploymentSpec, String, String)> = BTreeMap::new();
        for f in &files {
            let name = if f.source.is_empty() { "<spec>" } else { f.source.as_str() };
            let docs = DeploymentSpec::parse_all(&f.text, name).map_err(|e| PlanError::Invalid(e.to_string()))?;
            for (mut spec, label) in docs {
                // As kubectl takes a manifest without a namespace into the
                // one it is given: a spec naming no environment is of the
                // plan's; one naming another is refused.
                if let Some(named) = &spec.metadata.environment
                    && named != environment
                {
                    return Err(PlanError::Invalid(format!(
                        "{label}: metadata.environment is {named:?}, but this is a plan for environment {environment:?}"
                    )));
                }
                spec.metadata.environment =
                    (environment != crate::plan::DEFAULT_ENVIRONMENT).then(|| environment.to_string());
                let dir = crate::spec::source_dir(&f.source).display().to_string();
                if let Some((_, other, _)) = desired.get(spec.name()) {
                    return Err(PlanError::Invalid(format!(
                        "{label}: deployment {:?} is also in {other}; a set names each deployment once",
                        spec.name()
                    )));
                }
                desired.insert(spec.name().to_string(), (spec, label, dir));
            }
        }
        if desired.is_empty() {
            return Err(PlanError::Invalid(format!(
                "the set has no deployment spec: as environment {environment}'s whole desired state it would destroy \
                 every deployment of it; name the files that hold its specs"
            )));
        }
        // Each add or change claims its ports once in the set.
        let mut ports: BTreeMap<(u16, String), &str> = BTreeMap::new();
        for (name, (spec, label, _)) in &desired {
            let effective = effective_spec(spec, label)?;
            for p in &effective.spec.ports {
                if let Some(other) = ports.insert((p.port, p.protocol.clone()), name) {
                    return Err(PlanError::Invalid(format!(
                        "{label}: port {}/{} is claimed by deployment {other:?} of the same set too",
                        p.port, p.protocol
                    )));
                }
            }
        }
        self.preflight_runtimes(desired.values().map(|(s, ..)| s)).await?;
        // What the plan is made against, read before what it compares: a
        // change that lands between the two makes the plan stale, never
        // fresh against a state it did not see.
        let before = self.live_deployments(environment)?;
        let names: BTreeSet<String> = desired.keys().cloned().collect();
        let base = self.base(environment, &before, names.iter().map(String::as_str))?;
        let live = self.live_deployments(environment)?;
        let mut changes = Vec::new();
        let mut set = Vec::new();
        for (name, (mut spec, label, dir)) in desired {
            let recorded = live.get(&name);
            // Compared, pinned and checked as the environment runs it (its
            // overlay merged: it may name another artifact); applied as
            // written, with the pin where the merge takes it from.
            let mut effective = effective_spec(&spec, &label)?;
            let pinned = self.pin(&mut effective, &label).await?;
            if let Some(p) = &pinned {
                pin_written(&mut spec, environment, &p.digest);
                effective = effective_spec(&spec, &label)?;
            }
            let after = comparable(&effective);
            let (action, fields) = match recorded {
                None => (Action::Add, Vec::new()),
                Some(rev) => {
                    let mut before = rev.spec.clone();
                    // A revision applied by tag alone ran the digest it
                    // fetched: the same as a plan pinning that digest.
                    // For a multi-platform image that is the host's manifest
                    // of the index the tag named (and the plan pins).
                    if before.spec.artifact.sha256.is_none()
                        && let Some(pin) = effective.spec.artifact.sha256.clone()
                    {
                        before.spec.artifact.sha256 = match rev.artifact_digest.clone() {
                            Some(ran) if ran != pin && self.shared.content.index_lists(&pin, &ran).await => Some(pin),
                            ran => ran,
                        };
                    }
                    let fields: Vec<FieldChange> = crate::plan::diff(&comparable(&before), &after);
                    (if fields.is_empty() { Action::Noop } else { Action::Change }, fields)
                }
            };
            // Suspending stops what runs: it cannot also install something.
            if effective.spec.suspended && (action == Action::Add || fields.iter().any(|f| f.path != "spec.suspended"))
            {
                return Err(PlanError::Invalid(format!(
                    "{label}: spec.suspended: {}",
                    if action == Action::Add {
                        "a new deployment cannot start suspended: add it without spec.suspended first"
                    } else {
                        "a spec that suspends its deployment cannot change anything else: apply the change first, \
                         or suspend it with its spec as it is"
                    }
                )));
            }
            if action != Action::Noop {
                self.preflight(&effective, std::path::Path::new(&dir), &label).await?;
            }
            let written = comparable(&spec);
            set.push((name.clone(), written.clone()));
            changes.push(PlannedChange {
                name,
                action,
                source: label,
                spec: Some(written),
                source_dir: dir,
                pinned,
                fields,
                drift: None,
            });
        }
        let wanted: BTreeSet<String> = changes.iter().map(|c| c.name.clone()).collect();
        for name in live.keys() {
            if !wanted.contains(name) {
                changes.push(PlannedChange {
                    name: name.clone(),
                    action: Action::Destroy,
                    source: String::new(),
                    spec: None,
                    source_dir: String::new(),
                    pinned: None,
                    fields: Vec::new(),
                    drift: None,
                });
            }
        }
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        // What the runtime says of each recorded deployment.
        {
            use futures::StreamExt;
            let ids: Vec<Option<String>> =
                changes.iter().map(|c| live.get(&c.name).map(|r| r.deployment.clone())).collect();
            let found: Vec<Option<String>> = futures::stream::iter(ids)
                .map(|id| {
                    let me = self.clone();
                    async move {
                        match id {
                            Some(id) => drift_note(me.check_drift(&id).await),
                            None => None,
                        }
                    }
                })
                .buffered(super::drift::DRIFT_CONCURRENCY)
                .collect()
                .await;
            for (c, drift) in changes.iter_mut().zip(found) {
                c.drift = drift;
            }
        }
        // A deployment that joined the environment between the two reads
        // is in the plan's changes (a destroy) but not its base: stale.
        let plan = Plan {
            id: crate::plan::new_id().map_err(|e| PlanError::Invalid(format!("cannot make a plan id: {e}")))?,
            environment: environment.to_string(),
            created_at: now_rfc3339(),
            set_hash: Plan::hash_set(set.iter().map(|(n, s)| (n.as_str(), s))),
            base,
            changes,
            promotion: None,
        };
        let body = serde_json::to_string(&plan).map_err(|e| PlanError::Invalid(e.to_string()))?;
        self.shared.store.save_plan(&plan.id, &plan.environment, &plan.created_at, &body)?;
        Ok(plan)
    }

    /// Each deployment a plan looks at (the set's, and the environment's
    /// live ones) and the revision it is driven towards (0: none, or
    /// deleted). An apply, a rollback or a delete moves it; a restart, a
    /// health change or a stop does not.
    fn base<'a>(
        &self,
        environment: &str,
        live: &BTreeMap<String, RevisionRecord>,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut all: BTreeSet<String> = names.map(str::to_string).collect();
        all.extend(live.keys().cloned());
        let store = &self.shared.store;
        all.into_iter()
            .map(|n| {
                let revision = match store.find_deployment(environment, &n)? {
                    Some(d) if d.state != State::Deleted => d.desired_revision,
                    _ => 0,
                };
                Ok((n, revision))
            })
            .collect()
    }

    /// Pins an OCI artifact named by tag to the digest it resolves to: the
    /// one this host last resolved it to (if still in the content store)
    /// under `IfNotPresent` and `Never`, else the registry's answer now.
    /// Nothing is recorded.
    async fn pin(&self, spec: &mut DeploymentSpec, label: &str) -> Result<Option<Pin>, PlanError> {
        let source = spec.artifact_source();
        if matches!(source, ArtifactSource::File(_) | ArtifactSource::Url(_)) || spec.spec.artifact.sha256.is_some() {
            return Ok(None);
        }
        let reference = source.reference().to_string();
        match reference.parse::<oci_client::Reference>() {
            Ok(r) if r.digest().is_some() => return Ok(None),
            Ok(_) => {}
            Err(e) => {
                return Err(PlanError::Invalid(format!(
                    "{label}: spec.artifact: {reference:?} is not a reference: {e}"
                )));
            }
        }
        let policy = spec.pull_policy();
        let known = match policy {
            PullPolicy::Always => None,
            _ => self.shared.store.resolved_tag(&reference, source.kind())?.filter(|d| self.shared.content.contains(d)),
        };
        let digest = match (known, policy) {
            (Some(d), _) => d,
            (None, PullPolicy::Never) => {
                return Err(PlanError::Invalid(format!(
                    "{label}: spec.artifact: {reference} is not in the content store and pullPolicy is Never (`era pull` it first)"
                )));
            }
            (None, _) => match self.shared.content.resolve(&source).await {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(None),
                Err(e) => return Err(PlanError::Unavailable(format!("{label}: spec.artifact: {e}"))),
            },
        };
        spec.spec.artifact.sha256 = Some(digest.clone());
        Ok(Some(Pin { reference, digest }))
    }

    /// Carries out saved plan `id`, all of it, if nothing it was made
    /// against has moved: the deployments it looked at are driven towards
    /// the same revisions and none joined its environment. Every add and
    /// change is checked again first, so a spec that no longer validates
    /// stops the plan before anything changes. `document`, when given (a
    /// plan file), must be the saved plan unaltered; `environment`, when
    /// given, the plan's.
    ///
    /// The plan must be younger than the environment's last force-unlock;
    /// in a protected environment also younger than its `plan_max_age`,
    /// and no deployment the plan keeps, changes or destroys may have
    /// drifted (or be unknown to its runtime) unless `accept_drift`. Holds
    /// the environment's lock while it works.
    pub async fn apply_plan(
        &self,
        id: &str,
        document: Option<&str>,
        holder: &str,
        environment: Option<&str>,
        accept_drift: bool,
    ) -> Result<(Plan, Vec<AppliedChange>), PlanError> {
        if !crate::plan::is_id(id) {
            return Err(PlanError::Invalid(format!("{id:?} is not a plan id (12 lowercase hex digits)")));
        }
        let Some(crate::store::SavedPlan { body, applied_at, completed_at, failure }) = self.shared.store.plan(id)?
        else {
            return Err(PlanError::NotFound(format!("no plan {id} was saved by this erad (run `era plan` again)")));
        };
        let corrupt = |e: serde_json::Error| PlanError::Invalid(format!("plan {id} as saved: {e}"));
        let plan: Plan = serde_json::from_str(&body).map_err(corrupt)?;
        if let Some(doc) = document {
            let theirs: Plan = serde_json::from_str(doc)
                .map_err(|e| PlanError::Invalid(format!("the plan file is not a plan: {e}")))?;
            if theirs != plan {
                return Err(PlanError::Invalid(format!(
                    "the plan file is not plan {id} as erad saved it (it was altered): run `era plan` again"
                )));
            }
        }
        if let Some(env) = environment
            && env != plan.environment
        {
            return Err(PlanError::Invalid(format!(
                "plan {id} is a plan of environment {}, not {env}",
                plan.environment
            )));
        }
        if let Some(at) = applied_at {
            return Err(PlanError::Stale(match (completed_at, failure) {
                (None, _) => format!("plan {id} is being applied (since {at})"),
                (Some(_), Some(why)) => format!(
                    "plan {id}'s apply began at {at} and stopped short ({why}): what it did stays; run `era plan` \
                     again for the rest"
                ),
                (Some(_), None) => format!("plan {id} was applied at {at}; run `era plan` again"),
            }));
        }
        let _lock = self.lock_environment(&plan.environment, "apply --plan", holder).await?;
        self.check_age(&plan)?;
        self.check_fresh(&plan)?;
        if self.environment_policy(&plan.environment).protected && !accept_drift {
            for c in plan.changes.iter().filter(|c| c.action != Action::Add) {
                let Some(id) = self.id_of(&plan.environment, &c.name)? else { continue };
                if let Some(note) = drift_note(self.check_drift(&id).await) {
                    return Err(PlanError::Stale(format!(
                        "environment {} is protected and deployment {} is {note}: resolve it and run `era plan` again, \
                         or apply with --accept-drift",
                        plan.environment, c.name
                    )));
                }
            }
        }
        // Everything parses and validates before anything changes.
        let mut specs = BTreeMap::new();
        for c in plan.changes.iter().filter(|c| matches!(c.action, Action::Change | Action::Destroy)) {
            // A deployment in the middle of a step takes no command: the
            // plan waits for it rather than stopping halfway.
            if let Some(d) = self.shared.store.find_deployment(&plan.environment, &c.name)?
                && !d.state.is_settled()
            {
                return Err(PlanError::Stale(format!(
                    "deployment {} is {}: apply plan {id} once it settles (era watch {} --env {})",
                    c.name, d.state, c.name, plan.environment
                )));
            }
        }
        for c in plan.changes.iter().filter(|c| matches!(c.action, Action::Add | Action::Change)) {
            let value = c.spec.clone().unwrap_or(Value::Null);
            let spec = DeploymentSpec::from_json(value, &c.source).map_err(|e| PlanError::Invalid(e.to_string()))?;
            let dir = std::path::PathBuf::from(&c.source_dir);
            let effective = effective_spec(&spec, &c.source)?;
            self.preflight(&effective, &dir, &c.source).await?;
            specs.insert(c.name.clone(), (spec, dir));
        }
        // Checked again after the plugin calls above, and claimed: a second
        // apply of the same plan stops here.
        self.check_fresh(&plan)?;
        self.check_not_halted(&plan.environment, &format!("plan {id}"), "apply")?;
        if !self.shared.store.mark_plan_applied(id)? {
            return Err(PlanError::Stale(format!("plan {id} is being applied by another caller")));
        }
        // However the apply ends (done, an error, the caller gone), it is
        // recorded as ended, with why if short.
        let mut ending = Ending { store: &self.shared.store, id, failure: None, done: false };
        let mut applied = Vec::new();
        let carried = async {
            for c in &plan.changes {
                let revision = match c.action {
                    Action::Noop => {
                        // Nothing to roll out; the spec as written may still
                        // differ (another environment's overlay): what a
                        // promotion from here takes.
                        if let Some(value) = &c.spec {
                            self.keep_written(&plan.environment, &c.name, value, &c.source)?;
                        }
                        continue;
                    }
                    Action::Destroy => {
                        let Some(id) = self.id_of(&plan.environment, &c.name)? else { continue };
                        self.delete(&id).await.map_err(|e| partial(&plan, &applied, e))?;
                        0
                    }
                    Action::Add | Action::Change => {
                        let Some((spec, dir)) = specs.remove(&c.name) else { continue };
                        let kind = spec.artifact_source().kind();
                        let revision = self.apply(spec, dir).await.map_err(|e| partial(&plan, &applied, e))?.revision;
                        // What the plan resolved the tag to is what this host
                        // now knows it as: under IfNotPresent, the next plan
                        // keeps it, as the next fetch would.
                        // (Only where it knows none: a newer resolution is
                        // never rewound to the plan's.)
                        if let Some(pin) = &c.pinned
                            && matches!(self.shared.store.resolved_tag(&pin.reference, kind), Ok(None))
                            && let Err(e) = self.shared.store.record_tag(&pin.reference, kind, &pin.digest)
                        {
                            tracing::warn!(plan = plan.id, reference = pin.reference, "cannot record the tag: {e}");
                        }
                        revision
                    }
                };
                tracing::info!(
                    plan = plan.id,
                    deployment = c.name,
                    action = c.action.as_str(),
                    revision,
                    "plan applied"
                );
                applied.push(AppliedChange { name: c.name.clone(), action: c.action, revision });
                super::hooks::pause_plan(self.shared.layout.root(), id, applied.len()).await;
            }
            Ok::<_, PlanError>(())
        }
        .await;
        ending.failure = carried.as_ref().err().map(|e| format!("an error: {e}"));
        ending.done = true;
        drop(ending);
        carried?;
        Ok((plan, applied))
    }

    /// Preflight of a set: every HTTP endpoint granted to the runtimes it
    /// names answers a TCP connection (within 3 s); fails closed, naming the
    /// first that does not. (That each runtime is loaded, the checks of
    /// each add and change say, naming its file.)
    async fn preflight_runtimes<'a>(&self, specs: impl Iterator<Item = &'a DeploymentSpec>) -> Result<(), PlanError> {
        let mut runtimes = BTreeSet::new();
        for s in specs {
            let effective = effective_spec(s, "")?;
            runtimes.insert(effective.spec.runtime);
        }
        for runtime in runtimes {
            // One not loaded is named with its file by the checks after.
            let Some(plugin) = self.shared.plugins.get(&runtime) else { continue };
            for (name, host, port) in plugin.endpoints() {
                let reached =
                    tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((host.as_str(), port)))
                        .await;
                let why = match reached {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 3s".to_string(),
                };
                return Err(PlanError::Preflight(format!(
                    "preflight: endpoint {name} ({host}:{port}) of runtime {runtime} cannot be reached: {why}"
                )));
            }
        }
        Ok(())
    }

    /// Records `value` (a spec as written, whose merged spec the deployment
    /// runs already) as its desired revision's spec as written.
    fn keep_written(&self, environment: &str, name: &str, value: &Value, source: &str) -> Result<(), PlanError> {
        let written =
            DeploymentSpec::from_json(value.clone(), source).map_err(|e| PlanError::Invalid(e.to_string()))?;
        let effective = effective_spec(&written, source)?;
        let written = (written != effective).then(|| {
            let mut w = written;
            w.spec.suspended = false;
            w
        });
        let store = &self.shared.store;
        let Some(d) = store.find_deployment(environment, name)? else { return Ok(()) };
        if let Some(rev) = store.revision(&d.id, d.desired_revision)?
            && rev.written != written
        {
            store.set_written(&d.id, rev.revision, written.as_ref())?;
        }
        Ok(())
    }

    /// What an add or change is checked for, at plan time and again
    /// before a plan is applied: what Validating checks (runtime loaded,
    /// ports free, the plugin's `validate`), and that a `file:` artifact
    /// not in the store yet can be opened.
    pub(super) async fn preflight(
        &self,
        spec: &DeploymentSpec,
        dir: &std::path::Path,
        label: &str,
    ) -> Result<(), PlanError> {
        let invalid = |m: String| PlanError::Invalid(format!("{label}: deployment {}: {m}", spec.name()));
        self.shared
            .content
            .check_available(&spec.artifact_source(), dir, spec.pinned_digest().as_deref())
            .map_err(|e| invalid(e.to_string()))?;
        self.validate(spec, dir, false).await.map(drop).map_err(|e| PlanError::Invalid(format!("{label}: {e}")))
    }

    /// Refuses a plan older than its environment allows, or made before
    /// the environment's lock was last forced open.
    fn check_age(&self, plan: &Plan) -> Result<(), PlanError> {
        let made = humantime::parse_rfc3339(&plan.created_at)
            .map_err(|e| PlanError::Invalid(format!("plan {}: created_at: {e}", plan.id)))?;
        let made_ms = made.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        if let Some((at, ms)) = self.shared.store.force_unlocked(&plan.environment)?
            && ms >= made_ms
        {
            return Err(PlanError::Stale(format!(
                "environment {}'s lock was forced open at {at}, after plan {} was made: run `era plan` again",
                plan.environment, plan.id
            )));
        }
        let policy = self.environment_policy(&plan.environment);
        if let Some(max) = policy.plan_max_age {
            let age = std::time::SystemTime::now().duration_since(made).unwrap_or_default();
            if age > max {
                return Err(PlanError::Stale(format!(
                    "plan {} is {} old; environment {} takes plans at most {} old: run `era plan` again",
                    plan.id,
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    plan.environment,
                    humantime::format_duration(max)
                )));
            }
        }
        Ok(())
    }

    /// Refuses a plan whose recorded state moved.
    fn check_fresh(&self, plan: &Plan) -> Result<(), PlanError> {
        // A promotion's plan looks at its one deployment only.
        let live = match plan.promotion {
            Some(_) => BTreeMap::new(),
            None => self.live_deployments(&plan.environment)?,
        };
        let now = self.base(&plan.environment, &live, plan.base.keys().map(String::as_str))?;
        for (name, seq) in &now {
            match plan.base.get(name) {
                Some(then) if then == seq => {}
                Some(_) => {
                    return Err(PlanError::Stale(format!(
                        "plan {} is stale: deployment {name} moved to another revision since it was made; run `era plan` again",
                        plan.id
                    )));
                }
                None => {
                    return Err(PlanError::Stale(format!(
                        "plan {} is stale: deployment {name} joined environment {} since it was made; run `era plan` again",
                        plan.id, plan.environment
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Records a plan's apply as ended when dropped: with its failure, or, not
/// marked done (the caller went away and the apply's future was dropped), as
/// cut short. (A crash is recorded at the next start.)
struct Ending<'a> {
    store: &'a crate::store::Store,
    id: &'a str,
    failure: Option<String>,
    done: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let failure =
            if self.done { self.failure.as_deref() } else { Some("the caller went away while it was applied") };
        if let Err(e) = self.store.mark_plan_completed(self.id, failure) {
            tracing::warn!(plan = self.id, "cannot record that the plan's apply ended: {e}");
        }
    }
}

/// `spec` as its environment runs it; an error names where it came from
/// (`label`: its file and document, if any).
pub(super) fn effective_spec(spec: &DeploymentSpec, label: &str) -> Result<DeploymentSpec, PlanError> {
    spec.effective()
        .map_err(|e| PlanError::Invalid(if label.is_empty() { e.to_string() } else { format!("{label}: {e}") }))
}

/// Writes a digest pin into a spec as written where merging it for
/// `environment` takes it from: the environment's overlay if that names the
/// artifact, else the base.
fn pin_written(spec: &mut DeploymentSpec, environment: &str, digest: &str) {
    if let Some(Value::Object(artifact)) =
        spec.spec.environments.get_mut(environment).and_then(|o| o.as_object_mut()).and_then(|o| o.get_mut("artifact"))
    {
        artifact.insert("sha256".into(), Value::String(digest.to_string()));
        return;
    }
    spec.spec.artifact.sha256 = Some(digest.to_string());
}

/// A command refused midway through a plan (a deployment that became busy):
/// what was done so far is named, so the operator knows where it stopped.
fn partial(plan: &Plan, done: &[AppliedChange], e: CommandError) -> PlanError {
    let done: Vec<String> = done.iter().map(|c| format!("{} {}", c.action.as_str(), c.name)).collect();
    let done = if done.is_empty() { "nothing".to_string() } else { done.join(", ") };
    PlanError::Stale(format!("plan {} stopped after {done}: {e}; run `era plan` again", plan.id))
}

/// A drift check's finding, as a plan notes it: none when the runtime
/// agrees with the record (or the deployment is mid-step).
pub(super) fn drift_note((standing, detail): (super::Standing, String)) -> Option<String> {
    use super::Standing;
    match standing {
        Standing::Healthy | Standing::Deploying => None,
        s => Some(format!("{}: {detail}", s.as_str())),
    }
}

/// The words that confirm destroying `environment` (or forcing its lock
/// open, `verb` = `force-unlock`): its name, or for a protected one the
/// phrase `VERB NAME`.
pub fn confirmation(verb: &str, environment: &str, protected: bool) -> String {
    if protected { format!("{verb} {environment}") } else { environment.to_string() }
}

impl Lifecycle {
    /// Removes every live deployment of `environment` through the state
    /// machine (each one's delete), holding the environment's lock while it
    /// asks. `confirm` must be [`confirmation`]'s words. Returns the names
    /// whose delete was accepted.
    pub async fn destroy(&self, environment: &str, confirm: &str, holder: &str) -> Result<Vec<String>, PlanError> {
        crate::spec::check_environment_name(environment).map_err(|m| PlanError::Invalid(format!("--env: {m}")))?;
        let protected = self.environment_policy(environment).protected;
        let phrase = confirmation("destroy", environment, protected);
        if confirm != phrase {
            return Err(PlanError::Invalid(format!(
                "destroy of environment {environment} not confirmed: confirm with {phrase:?}{}",
                if protected { " (it is protected)" } else { "" }
            )));
        }
        let _lock = self.lock_environment(environment, "destroy", holder).await?;
        let live = self.live_deployments(environment)?;
        let mut done = Vec::new();
        for (name, rev) in live {
            match self.delete(&rev.deployment).await {
                Ok(_) => {
                    tracing::info!(environment, deployment = name, holder, "destroy: delete requested");
                    done.push(name);
                }
                Err(e) => {
                    let asked = if done.is_empty() { "none".to_string() } else { done.join(", ") };
                    return Err(PlanError::Stale(format!(
                        "destroy of environment {environment} stopped at {name}: {e}; deletes asked so far: {asked}; run it again"
                    )));
                }
            }
        }
        Ok(done)
    }
}
