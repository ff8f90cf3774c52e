//! The `era.v1` gRPC API over erad's unix socket. Conversions between the
//! wire types and the domain types happen here and nowhere else. Every call
//! is checked against the caller's role first ([`auth`]).

pub mod auth;
pub mod authority;

use crate::lifecycle::{CommandError, EnvLock, Lifecycle, LockError, PlanError, SpecFile, WatchEvent};
use crate::spec::DeploymentSpec;
use crate::store::{DeploymentRecord, JournalEntry, StoreError};
use era_api::v1 as pb;
use era_api::v1::deployments_server::Deployments;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

pub struct DeploymentsService {
    lifecycle: Lifecycle,
}

impl DeploymentsService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        DeploymentsService { lifecycle }
    }

    /// The recorded deployment a request names: `name` in `environment`,
    /// or (no environment given) the only deployment of that name.
    fn resolve(&self, name: &str, environment: &str) -> Result<DeploymentRecord, Status> {
        self.lifecycle.resolve((!environment.is_empty()).then_some(environment), name).map_err(command_status)
    }

    /// Stop, start or delete of the deployment a request names, holding its
    /// environment's lock.
    async fn act(&self, req: Request<pb::NameRequest>, act: Act) -> Result<Response<pb::ActionResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let rec = self.resolve(&req.name, &req.environment)?;
        let _lock = self.lock(&rec.environment, act.as_str(), &who).await?;
        let state = match act {
            Act::Stop => self.lifecycle.stop(&rec.id).await,
            Act::Start => self.lifecycle.start(&rec.id).await,
            Act::Delete => self.lifecycle.delete(&rec.id).await,
        }
        .map_err(command_status)?;
        Ok(Response::new(pb::ActionResponse {
            name: rec.name,
            state: state.to_string(),
            revision: 0,
            environment: rec.environment,
        }))
    }

    /// Checks the invariants in the background (after a run).
    fn check_invariants_soon(&self) {
        let lifecycle = self.lifecycle.clone();
        tokio::spawn(async move {
            if let Err(e) = lifecycle.check_invariants().await {
                tracing::warn!("invariant check: {e}");
            }
        });
    }

    /// The lock a single-deployment command holds while it is accepted: its
    /// environment's.
    async fn lock(&self, environment: &str, operation: &str, who: &str) -> Result<EnvLock, Status> {
        self.lifecycle.lock_environment(environment, operation, who).await.map_err(lock_status)
    }

    fn deployment(&self, rec: DeploymentRecord) -> Result<pb::Deployment, Status> {
        let store = self.lifecycle.store();
        let serving = if rec.current_revision != 0 { rec.current_revision } else { rec.desired_revision };
        let rev = store.revision(&rec.id, serving).map_err(store_status)?;
        let (runtime, digest, labels) = match rev {
            Some(r) => (r.runtime, r.artifact_digest.unwrap_or_default(), r.spec.metadata.labels.into_iter().collect()),
            None => Default::default(),
        };
        Ok(pb::Deployment {
            name: rec.name,
            state: rec.state.to_string(),
            health: rec.health,
            revision: rec.current_revision,
            desired_revision: rec.desired_revision,
            runtime,
            artifact_digest: digest,
            updated_at: rec.updated_at,
            message: rec.message,
            environment: rec.environment,
            suspended: rec.suspended.is_suspended(),
            labels,
            outputs: rec.outputs.into_iter().collect(),
        })
    }
}

fn breaches_response(breaches: Vec<crate::store::Breach>) -> pb::InvariantsResponse {
    pb::InvariantsResponse {
        breaches: breaches
            .into_iter()
            .map(|b| {
                let (acknowledged_at, acknowledged_by) = b.acknowledged.unwrap_or_default();
                pb::Breach {
                    environment: b.environment,
                    object: b.object,
                    kind: b.kind,
                    detail: b.detail,
                    found_at: b.found_at,
                    acknowledged_at,
                    acknowledged_by,
                }
            })
            .collect(),
    }
}

fn outputs_response(rec: DeploymentRecord, outputs: Vec<crate::outputs::Resolved>) -> pb::OutputsResponse {
    pb::OutputsResponse {
        name: rec.name,
        environment: rec.environment,
        outputs: outputs
            .into_iter()
            .map(|o| pb::Output {
                name: o.name,
                r#type: o.kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
                required: o.required,
                has_value: o.value.is_some(),
                value: o.value.unwrap_or_default(),
                source: o.source.map(|s| s.as_str().to_string()).unwrap_or_default(),
                problem: o.problem.unwrap_or_default(),
            })
            .collect(),
    }
}

/// The single-deployment commands that take only a name.
#[derive(Clone, Copy)]
enum Act {
    Stop,
    Start,
    Delete,
}

impl Act {
    fn as_str(self) -> &'static str {
        match self {
            Act::Stop => "stop",
            Act::Start => "start",
            Act::Delete => "delete",
        }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(n) => Status::not_found(format!("deployment {n:?} not found")),
        StoreError::Transition { .. } => Status::failed_precondition(e.to_string()),
        StoreError::PortTaken { .. } | StoreError::IdTaken { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn lock_status(e: LockError) -> Status {
    match e {
        LockError::Held { .. } => Status::failed_precondition(e.to_string()),
        LockError::Store(s) => store_status(s),
        LockError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

/// Who is calling, as a lock's holder names it.
fn holder<T>(req: &Request<T>) -> String {
    match req.extensions().get::<tonic::transport::server::UdsConnectInfo>().and_then(auth::Caller::from_connection) {
        Some(c) => format!("uid {}", c.uid),
        None => "a caller erad cannot name".into(),
    }
}

fn lock_json(environment: String, l: crate::store::LockRecord, stale: bool) -> pb::Lock {
    let idle = (crate::store::now_ms() - l.heartbeat_ms).max(0) as u64;
    pb::Lock { environment, operation: l.operation, holder: l.holder, acquired_at: l.acquired_at, idle_ms: idle, stale }
}

fn run_pb(r: crate::store::RunRecord, with_log: bool) -> pb::Run {
    pb::Run {
        id: r.id,
        kind: r.kind,
        environment: r.environment,
        caller: r.caller,
        started_at: r.started_at,
        ended_at: r.ended_at,
        result: r.result,
        summary: r.summary,
        log: if with_log { r.log.lines().map(str::to_string).collect() } else { Vec::new() },
    }
}

fn plan_status(e: PlanError) -> Status {
    match e {
        PlanError::Locked(l) => lock_status(l),
        PlanError::Invalid(m) => Status::invalid_argument(m),
        PlanError::NotFound(m) => Status::not_found(m),
        PlanError::Stale(m) => Status::failed_precondition(m),
        PlanError::Unavailable(m) => Status::unavailable(m),
        PlanError::Preflight(m) => Status::failed_precondition(m),
        PlanError::Command(c) => command_status(c),
        PlanError::Store(s) => store_status(s),
    }
}

fn plan_response(plan: &crate::plan::Plan) -> Result<pb::PlanResponse, Status> {
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    Ok(pb::PlanResponse {
        id: plan.id.clone(),
        environment: plan.environment.clone(),
        created_at: plan.created_at.clone(),
        changes: plan
            .changes
            .iter()
            .map(|c| pb::PlannedChange {
                name: c.name.clone(),
                action: c.action.as_str().to_string(),
                source: c.source.clone(),
                fields: c
                    .fields
                    .iter()
                    .map(|f| pb::FieldChange { path: f.path.clone(), before: json(&f.before), after: json(&f.after) })
                    .collect(),
                pinned_digest: c.pinned.as_ref().map(|p| p.digest.clone()).unwrap_or_default(),
                drift: c.drift.clone().unwrap_or_default(),
            })
            .collect(),
        changes_present: plan.has_changes(),
        document: serde_json::to_string_pretty(plan).map_err(|e| Status::internal(e.to_string()))?,
    })
}

fn command_status(e: CommandError) -> Status {
    match e {
        CommandError::NotFound(_) => Status::not_found(e.to_string()),
        CommandError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        CommandError::Busy { .. } | CommandError::NotPossible { .. } | CommandError::Halted { .. } => {
            Status::failed_precondition(e.to_string())
        }
        CommandError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        CommandError::Store(s) => store_status(s),
        CommandError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

/// A log erad refuses to open (a link, a FIFO, a hard link) is a state of
/// the work dir the caller can see, not a fault of erad.
fn log_status(e: crate::logs::LogError) -> Status {
    match e.problem {
        crate::logs::LogProblem::Io(_) => Status::internal(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

fn parse(spec: &str, source: &str) -> Result<(DeploymentSpec, PathBuf), Status> {
    let name = if source.is_empty() { "<spec>" } else { source };
    let spec = DeploymentSpec::parse(spec, name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Relative `file:` artifacts are taken from the spec file's directory.
    Ok((spec, crate::spec::source_dir(source)))
}

fn transition(e: JournalEntry) -> pb::Transition {
    pb::Transition {
        seq: e.seq,
        time: e.time,
        from_state: e.from.to_string(),
        to_state: e.to.to_string(),
        revision: e.revision,
        cause: e.cause,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullEvent, Status>> + Send>>;
type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// Ends `stream` when erad starts shutting down: a `watch` or `logs -f`
/// never ends on its own, and a graceful shutdown waits for open streams.
fn until_shutdown<T: Send + 'static>(
    lifecycle: &Lifecycle,
    stream: impl Stream<Item = T> + Send + 'static,
) -> Pin<Box<dyn Stream<Item = T> + Send>> {
    let mut stop = lifecycle.shutting_down();
    Box::pin(futures::StreamExt::take_until(stream, async move {
        let _ = stop.wait_for(|s| *s).await;
    }))
}

fn pulled(a: crate::store::ArtifactRecord) -> pb::PulledImage {
    pb::PulledImage {
        reference: a.reference,
        digest: a.digest,
        kind: a.kind,
        size: a.size,
        pulled_at: a.pulled_at,
        used_by: a.used_by,
    }
}

#[tonic::async_trait]
impl Deployments for DeploymentsService {
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let (spec, dir) = parse(&req.spec, &req.source)?;
        let env = spec.environment().to_string();
        if self.lifecycle.environment_policy(&env).protected {
            return Err(Status::failed_precondition(format!(
                "environment {env} is protected: it changes only through a reviewed plan: era plan -f {} --env {env}, then era apply --plan ID",
                if req.source.is_empty() { "FILE" } else { req.source.as_str() }
            )));
        }
        let _lock = self.lock(&env, "apply", &who).await?;
        let name = spec.name().to_string();
        let applied = self.lifecycle.apply(spec, dir).await.map_err(command_status)?;
        Ok(Response::new(pb::ApplyResponse {
            name,
            revision: applied.revision,
            changed: applied.changed,
            environment: env,
        }))
    }

    async fn plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::PlanResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let files = req.files.into_iter().map(|f| SpecFile { text: f.spec, source: f.source }).collect();
        let started = crate::store::now_rfc3339();
        let plan = self.lifecycle.plan(&req.environment, files, &who).await;
        let env = if req.environment.is_empty() { crate::plan::DEFAULT_ENVIRONMENT } else { &req.environment };
        let outcome = plan.as_ref().map(crate::lifecycle::plan_summary).map_err(|e| e.to_string());
        self.lifecycle.record_run("plan", env, &who, started, outcome);
        Ok(Response::new(plan_response(&plan.map_err(plan_status)?)?))
    }

    async fn apply_plan(&self, req: Request<pb::ApplyPlanRequest>) -> Result<Response<pb::ApplyPlanResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let document = (!req.document.is_empty()).then_some(req.document.as_str());
        let env = (!req.environment.is_empty()).then_some(req.environment.as_str());
        let started = crate::store::now_rfc3339();
        let done = self.lifecycle.apply_plan(&req.id, document, &who, env, req.accept_drift).await;
        let (run_env, outcome) = match &done {
            Ok((plan, applied)) => {
                let lines = applied
                    .iter()
                    .map(|a| match a.action {
                        crate::plan::Action::Destroy => format!("destroy {}: delete requested", a.name),
                        _ => format!("{} {}: revision {}", a.action.as_str(), a.name, a.revision),
                    })
                    .collect();
                (
                    plan.environment.clone(),
                    Ok((format!("plan {} applied: {} change(s)", plan.id, applied.len()), lines)),
                )
            }
            Err(e) => {
                let env = self.lifecycle.plan_environment(&req.id).unwrap_or_else(|| req.environment.clone());
                (env, Err(format!("plan {}: {e}", req.id)))
            }
        };
        self.lifecycle.record_run("apply", &run_env, &who, started, outcome);
        self.check_invariants_soon();
        let (plan, applied) = done.map_err(plan_status)?;
        Ok(Response::new(pb::ApplyPlanResponse {
            id: plan.id,
            environment: plan.environment,
            applied: applied
                .into_iter()
                .map(|a| pb::AppliedChange {
                    name: a.name,
                    action: a.action.as_str().to_string(),
                    revision: a.revision,
                })
                .collect(),
        }))
    }

    async fn destroy(&self, req: Request<pb::DestroyRequest>) -> Result<Response<pb::DestroyResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let started = crate::store::now_rfc3339();
        let done = self.lifecycle.destroy(&req.environment, &req.confirm, &who).await;
        let outcome = match &done {
            Ok(names) => Ok((
                format!("{} deployment(s) deleted", names.len()),
                names.iter().map(|n| format!("delete {n}")).collect(),
            )),
            Err(e) => Err(e.to_string()),
        };
        self.lifecycle.record_run("destroy", &req.environment, &who, started, outcome);
        self.check_invariants_soon();
        let names = done.map_err(plan_status)?;
        Ok(Response::new(pb::DestroyResponse { environment: req.environment, deleting: names }))
    }

    async fn runs(&self, req: Request<pb::RunsRequest>) -> Result<Response<pb::RunsResponse>, Status> {
        let env = req.into_inner().environment;
        let runs = self.lifecycle.runs((!env.is_empty()).then_some(env.as_str())).map_err(store_status)?;
        Ok(Response::new(pb::RunsResponse { runs: runs.into_iter().map(|r| run_pb(r, false)).collect() }))
    }

    async fn run_show(&self, req: Request<pb::RunShowRequest>) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().id;
        match self.lifecycle.run(&id).map_err(store_status)? {
            Some(r) => Ok(Response::new(run_pb(r, true))),
            None => Err(Status::not_found(format!("no run {id} (runs are kept for [runs] retention)"))),
        }
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let env = req.environment;
        let started = crate::store::now_rfc3339();
        let which = (!env.is_empty()).then_some(env.as_str());
        let checked = if req.last {
            self.lifecycle.last_drift(which).map_err(store_status)?
        } else {
            self.lifecycle.report(which).await.map_err(store_status)?
        };
        let envs = crate::lifecycle::by_environment(&checked);
        let lines = checked.iter().map(|c| format!("{} {}: {}", c.standing.as_str(), c.name, c.detail)).collect();
        let summary =
            envs.iter().map(|(n, (s, count))| format!("{n} {} ({count})", s.as_str())).collect::<Vec<_>>().join(", ");
        let run_env = if env.is_empty() { "*" } else { env.as_str() };
        if !req.last {
            self.lifecycle.record_run("report", run_env, &who, started, Ok((summary, lines)));
        }
        Ok(Response::new(pb::ReportResponse {
            deployments: checked
                .into_iter()
                .map(|c| pb::DeploymentReport {
                    name: c.name,
                    environment: c.environment,
                    standing: c.standing.as_str().to_string(),
                    detail: c.detail,
                    checked_at: c.checked_at,
                })
                .collect(),
            environments: envs
                .into_iter()
                .map(|(name, (s, n))| {
                    let halted = match self.lifecycle.halting(&name) {
                        Ok(open) if open.is_empty() => String::new(),
                        Ok(open) => crate::lifecycle::halted_because(&name, &open),
                        Err(e) => format!("unknown: {e}"),
                    };
                    pb::EnvironmentReport { name, standing: s.as_str().to_string(), deployments: n, halted }
                })
                .collect(),
        }))
    }

    async fn locks(&self, _req: Request<pb::LocksRequest>) -> Result<Response<pb::LocksResponse>, Status> {
        let locks = self.lifecycle.locks().map_err(store_status)?;
        Ok(Response::new(pb::LocksResponse {
            locks: locks.into_iter().map(|(e, l, stale)| lock_json(e, l, stale)).collect(),
        }))
    }

    async fn force_unlock(
        &self,
        req: Request<pb::ForceUnlockRequest>,
    ) -> Result<Response<pb::ForceUnlockResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let env = req.environment;
        crate::spec::check_environment_name(&env).map_err(|m| Status::invalid_argument(format!("environment: {m}")))?;
        let protected = self.lifecycle.environment_policy(&env).protected;
        let phrase = crate::lifecycle::confirmation("force-unlock", &env, protected);
        if req.confirm != phrase {
            let what = if protected {
                format!("environment {env} is protected: confirm with the phrase {phrase:?}")
            } else {
                format!("confirm with the environment's name, {env:?}")
            };
            return Err(Status::failed_precondition(format!("force-unlock not confirmed: {what}")));
        }
        let started = crate::store::now_rfc3339();
        let removed = self.lifecycle.force_unlock(&env, &who).map_err(store_status)?;
        let summary = match &removed {
            Some(l) => format!("removed the lock {} held for {} since {}", l.holder, l.operation, l.acquired_at),
            None => "it was not locked".to_string(),
        };
        self.lifecycle.record_run("force-unlock", &env, &who, started, Ok((summary, Vec::new())));
        Ok(Response::new(pb::ForceUnlockResponse { removed: removed.map(|l| lock_json(env, l, false)) }))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> Result<Response<pb::PromoteResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let started = crate::store::now_rfc3339();
        let done = async {
            let plan = self.lifecycle.promote(&req.name, &req.from, &req.to, &who).await?;
            if !plan.has_changes() || self.lifecycle.environment_policy(&req.to).protected {
                return Ok((plan, false));
            }
            let (plan, _) = self.lifecycle.apply_plan(&plan.id, None, &who, Some(&req.to), false).await?;
            Ok::<_, PlanError>((plan, true))
        }
        .await;
        let what = format!("promote {} from {} to {}", req.name, req.from, req.to);
        let outcome = match &done {
            Ok((plan, applied)) => {
                let (_, mut lines) = crate::lifecycle::plan_summary(plan);
                if let Some(p) = &plan.promotion {
                    lines.insert(
                        0,
                        format!(
                            "from {} revision {} (artifact {}, spec {})",
                            p.from,
                            p.revision,
                            p.digest.as_deref().unwrap_or("-"),
                            p.spec_hash
                        ),
                    );
                }
                let how = match (applied, plan.has_changes()) {
                    (true, _) => "applied".to_string(),
                    (false, false) => "already there".to_string(),
                    (false, true) => format!("planned as {} (the target is protected)", plan.id),
                };
                Ok((format!("{what}: {how}"), lines))
            }
            Err(e) => Err(format!("{what}: {e}")),
        };
        self.lifecycle.record_run("promote", &req.to, &who, started, outcome);
        self.check_invariants_soon();
        let (plan, applied) = done.map_err(plan_status)?;
        let p = plan.promotion.clone().unwrap_or_else(|| crate::plan::Promotion {
            from: req.from.clone(),
            revision: 0,
            digest: None,
            spec_hash: String::new(),
        });
        Ok(Response::new(pb::PromoteResponse {
            plan: Some(plan_response(&plan)?),
            applied,
            from: p.from,
            source_revision: p.revision,
            source_digest: p.digest.unwrap_or_default(),
            spec_hash: p.spec_hash,
        }))
    }

    async fn delete_all_environments(
        &self,
        req: Request<pb::DeleteAllRequest>,
    ) -> Result<Response<pb::DeleteAllResponse>, Status> {
        let who = holder(&req);
        let name = req.into_inner().name;
        let started = crate::store::now_rfc3339();
        let done = self.lifecycle.forget(&name, &who).await;
        match &done {
            Ok(envs) => {
                for env in envs {
                    let outcome =
                        Ok((format!("{name} forgotten in every environment"), vec![format!("forget {name}")]));
                    self.lifecycle.record_run("delete --all-envs", env, &who, started.clone(), outcome);
                }
            }
            Err(e) => self.lifecycle.record_run("delete --all-envs", "*", &who, started, Err(format!("{name}: {e}"))),
        }
        let environments = done.map_err(plan_status)?;
        Ok(Response::new(pb::DeleteAllResponse { name, environments }))
    }

    async fn invariants(
        &self,
        req: Request<pb::InvariantsRequest>,
    ) -> Result<Response<pb::InvariantsResponse>, Status> {
        let env = req.into_inner().environment;
        self.lifecycle.check_invariants().await.map_err(store_status)?;
        let which = (!env.is_empty()).then_some(env.as_str());
        Ok(Response::new(breaches_response(self.lifecycle.breaches(which).map_err(store_status)?)))
    }

    async fn acknowledge_breaches(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::InvariantsResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        crate::spec::check_environment_name(&req.environment).map_err(Status::invalid_argument)?;
        let started = crate::store::now_rfc3339();
        let n = self.lifecycle.acknowledge(&req.environment, &req.confirm, &who).map_err(command_status)?;
        let lines = self
            .lifecycle
            .breaches(Some(&req.environment))
            .map_err(store_status)?
            .into_iter()
            .map(|b| format!("acknowledged {} ({})", b.object, b.kind))
            .collect();
        self.lifecycle.record_run(
            "acknowledge",
            &req.environment,
            &who,
            started,
            Ok((format!("{n} invariant breach(es) acknowledged"), lines)),
        );
        let which = Some(req.environment.as_str());
        Ok(Response::new(breaches_response(self.lifecycle.breaches(which).map_err(store_status)?)))
    }

    async fn outputs(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::OutputsResponse>, Status> {
        let req = req.into_inner();
        let rec = self.resolve(&req.name, &req.environment)?;
        let outputs = self.lifecycle.outputs(&rec).map_err(store_status)?;
        Ok(Response::new(outputs_response(rec, outputs)))
    }

    async fn set_output(&self, req: Request<pb::SetOutputRequest>) -> Result<Response<pb::OutputsResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let rec = self.resolve(&req.name, &req.environment)?;
        let _lock = self.lock(&rec.environment, "outputs set", &who).await?;
        // Read again under the lock.
        let rec = self.lifecycle.store().deployment(&rec.id).map_err(store_status)?;
        let value = (!req.unset).then_some(req.value.as_str());
        let outputs = self.lifecycle.set_output(&rec, &req.key, value).map_err(command_status)?;
        // The value is not logged: an output may be sensitive.
        tracing::info!(deployment = rec.id, output = req.key, unset = req.unset, by = who, "output override");
        Ok(Response::new(outputs_response(rec, outputs)))
    }

    async fn validate(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = req.into_inner();
        let (spec, dir) = parse(&req.spec, &req.source)?;
        let rendered = self.lifecycle.validate(&spec, &dir, req.render).await.map_err(command_status)?;
        let rendered = rendered.into_iter().map(|(name, content)| pb::RenderedObject { name, content }).collect();
        Ok(Response::new(pb::ValidateResponse { name: spec.name().to_string(), spec_hash: spec.hash(), rendered }))
    }

    async fn get(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::Deployment>, Status> {
        let req = req.into_inner();
        let rec = self.resolve(&req.name, &req.environment)?;
        Ok(Response::new(self.deployment(rec)?))
    }

    async fn list(&self, _req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let all = self.lifecycle.store().deployments().map_err(store_status)?;
        let deployments = all.into_iter().map(|d| self.deployment(d)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListResponse { deployments }))
    }

    async fn history(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = req.into_inner();
        let rec = self.resolve(&req.name, &req.environment)?;
        let entries = self.lifecycle.store().journal(&rec.id).map_err(store_status)?;
        let entries = entries
            .into_iter()
            .map(|e| pb::HistoryEntry {
                seq: e.seq,
                time: e.time,
                from_state: e.from.to_string(),
                to_state: e.to.to_string(),
                revision: e.revision,
                cause: e.cause,
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse { entries }))
    }

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        let who = holder(&req);
        let req = req.into_inner();
        let to = (req.to_revision != 0).then_some(req.to_revision);
        let rec = self.resolve(&req.name, &req.environment)?;
        let _lock = self.lock(&rec.environment, "rollback", &who).await?;
        let state = self.lifecycle.rollback(&rec.id, to).await.map_err(command_status)?;
        let rec = self.lifecycle.store().deployment(&rec.id).map_err(store_status)?;
        Ok(Response::new(pb::ActionResponse {
            name: rec.name,
            state: state.to_string(),
            revision: rec.desired_revision,
            environment: rec.environment,
        }))
    }

    async fn stop(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(req, Act::Stop).await
    }

    async fn start(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(req, Act::Start).await
    }

    async fn delete(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(req, Act::Delete).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        // One deployment's events: its id (one not recorded yet: the id it
        // will get, so a watch opened before its apply sees it all).
        let only = match (req.name.as_str(), req.environment.as_str()) {
            ("", _) => None,
            (name, env) => Some(match self.lifecycle.resolve((!env.is_empty()).then_some(env), name) {
                Ok(rec) => rec.id,
                Err(CommandError::NotFound(_)) => self
                    .lifecycle
                    .id_for_name(if env.is_empty() { crate::plan::DEFAULT_ENVIRONMENT } else { env }, name)
                    .map_err(store_status)?,
                Err(e) => return Err(command_status(e)),
            }),
        };
        let environment = (only.is_none() && !req.environment.is_empty()).then_some(req.environment);
        // Who each id is, looked up once per id.
        let store = self.lifecycle.store().clone();
        let mut known: std::collections::HashMap<String, (String, String)> = Default::default();
        let stream = BroadcastStream::new(self.lifecycle.subscribe()).filter_map(move |ev| {
            let ev = match ev {
                Ok(ev) => ev,
                // A slow watcher misses events rather than slowing erad down.
                Err(_) => return None,
            };
            if only.as_deref().is_some_and(|id| ev.deployment() != id) {
                return None;
            }
            let id = ev.deployment().to_string();
            if !known.contains_key(&id) {
                let who = match store.deployment(&id) {
                    Ok(d) => (d.environment, d.name),
                    Err(_) => (String::new(), id.clone()),
                };
                known.insert(id.clone(), who);
            }
            let (env, name) = known[&id].clone();
            if environment.as_ref().is_some_and(|e| *e != env) {
                return None;
            }
            let kind = match ev {
                WatchEvent::Transition(e) => pb::event::Kind::Transition(transition(e)),
                WatchEvent::Progress { revision, what, done, total, .. } => {
                    pb::event::Kind::Progress(pb::Progress { revision, what, done, total })
                }
            };
            Some(Ok(pb::Event { name, kind: Some(kind), environment: env }))
        });
        Ok(Response::new(until_shutdown(&self.lifecycle, stream)))
    }

    type PullStream = PullStream;

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        use crate::spec::ArtifactSource;
        let req = req.into_inner();
        let source = match req.kind.as_str() {
            "" | "image" => ArtifactSource::Image(req.reference.clone()),
            "wasm" => ArtifactSource::Wasm(req.reference.clone()),
            "blob" => ArtifactSource::Blob(req.reference.clone()),
            other => return Err(Status::invalid_argument(format!("kind {other:?}: use image, wasm or blob"))),
        };
        if req.reference.trim().is_empty() {
            return Err(Status::invalid_argument("give a reference to pull"));
        }
        let pinned = (!req.sha256.is_empty())
            .then(|| format!("sha256:{}", req.sha256.trim_start_matches("sha256:").to_ascii_lowercase()));
        if let Some(p) = &pinned
            && !crate::artifact::is_sha256_digest(p)
        {
            return Err(Status::invalid_argument(format!(
                "--sha256 {:?} is not a sha256 digest (64 hex digits)",
                req.sha256
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let lifecycle = self.lifecycle.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |done: u64, total: Option<u64>| {
                let p = pb::Progress { revision: 0, what: String::new(), done, total: total.unwrap_or(0) };
                let _ = progress_tx.try_send(Ok(pb::PullEvent { kind: Some(pb::pull_event::Kind::Progress(p)) }));
            };
            // Until the pull is recorded, the GC waits.
            let _fetching = lifecycle.content().fetch_guard().await;
            let result = lifecycle.content().fetch(&source, pinned.as_deref(), Path::new("/"), &progress).await;
            let event = match result {
                Ok(f) => {
                    let store = lifecycle.store();
                    let recorded = store
                        .record_artifact(source.reference(), &f.digest, source.kind(), f.size, true)
                        .and_then(|_| match &f.resolved {
                            Some(d) => store.record_tag(source.reference(), source.kind(), d),
                            None => Ok(()),
                        })
                        .and_then(|_| store.artifacts())
                        .map(|all| all.into_iter().find(|a| a.digest == f.digest && a.reference == source.reference()));
                    match recorded {
                        Ok(Some(a)) => Ok(pb::PullEvent { kind: Some(pb::pull_event::Kind::Done(pulled(a))) }),
                        Ok(None) => Err(Status::internal("the pulled artifact was not recorded")),
                        Err(e) => Err(store_status(e)),
                    }
                }
                Err(e) => Err(Status::failed_precondition(e.to_string())),
            };
            let _ = tx.send(event).await;
        });
        Ok(Response::new(until_shutdown(&self.lifecycle, tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type LogsStream = LogsStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<LogsStream>, Status> {
        let req = req.into_inner();
        let store = self.lifecycle.store();
        let rec = self.resolve(&req.name, &req.environment)?;
        let revision = match req.revision {
            0 if rec.current_revision != 0 => rec.current_revision,
            0 => rec.desired_revision,
            r => r,
        };
        if store.revision(&rec.id, revision).map_err(store_status)?.is_none() {
            return Err(Status::not_found(format!("{} has no revision {revision}", req.name)));
        }
        let work = self.lifecycle.layout().work_dir(&rec.id, revision);
        if !work.exists() {
            return Err(Status::not_found(format!(
                "{} revision {revision} has no work dir (retired or deleted): its logs went with it",
                req.name
            )));
        }
        let lines = usize::try_from(req.tail).ok();
        let log = crate::logs::WorkLog::new(&work, &rec.id, revision);
        let (first, mut offset) = log.tail(lines).map_err(log_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let follow = req.follow;
        tokio::spawn(async move {
            if !first.is_empty() && tx.send(Ok(pb::LogChunk { data: first })).await.is_err() {
                return;
            }
            // Follow until the client goes or the revision's work dir does.
            while follow && work.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let next = log.since(offset);
                match next {
                    Ok((data, at)) => {
                        offset = at;
                        if !data.is_empty() && tx.send(Ok(pb::LogChunk { data })).await.is_err() {
                            return;
                        }
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(log_status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(until_shutdown(&self.lifecycle, tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn images(&self, _req: Request<pb::ImagesRequest>) -> Result<Response<pb::ImagesResponse>, Status> {
        let images = self.lifecycle.store().artifacts().map_err(store_status)?.into_iter().map(pulled).collect();
        Ok(Response::new(pb::ImagesResponse { images }))
    }

    async fn plugins(&self, _req: Request<pb::PluginsRequest>) -> Result<Response<pb::PluginsResponse>, Status> {
        let plugins = self
            .lifecycle
            .plugins()
            .all()
            .map(|p| pb::Plugin {
                name: p.name.clone(),
                version: p.info.version.clone(),
                description: p.info.description.clone(),
                digest: p.digest.clone(),
                source: p.source.clone(),
                grants: p.grants.names().into_iter().map(str::to_string).collect(),
            })
            .collect();
        Ok(Response::new(pb::PluginsResponse { plugins }))
    }
}
