//! `era promote NAME --from ENV --to ENV`: the revision an environment runs,
//! exactly (its spec as written, its verified artifact digest), planned for
//! another environment with only that environment's overlay merged.

use super::Lifecycle;
use super::plan::{PlanError, comparable, drift_note};
use crate::machine::State;
use crate::plan::{Action, Plan, PlannedChange, Promotion};
use crate::store::now_rfc3339;
use std::collections::BTreeMap;

impl Lifecycle {
    /// Plans deployment `name` of `to` as `from` runs it: the spec its
    /// serving revision was applied with (as written), its artifact pinned
    /// to the digest that revision verified, in environment `to` (whose
    /// overlay the apply merges). A plan of that one deployment (others of
    /// `to` are neither looked at nor destroyed), saved like any plan; a
    /// no-op when `to` already runs it.
    pub async fn promote(&self, name: &str, from: &str, to: &str, holder: &str) -> Result<Plan, PlanError> {
        for (flag, env) in [("--from", from), ("--to", to)] {
            crate::spec::check_environment_name(env).map_err(|m| PlanError::Invalid(format!("{flag}: {m}")))?;
        }
        if from == to {
            return Err(PlanError::Invalid(format!("--from and --to are both {from}: promote to another environment")));
        }
        self.check_not_halted(to, name, "promotion")?;
        let store = &self.shared.store;
        let Some(source) = store.find_deployment(from, name)? else {
            return Err(PlanError::NotFound(format!("there is no deployment {name} in environment {from}")));
        };
        if source.state != State::Running || source.current_revision == 0 {
            return Err(PlanError::Invalid(format!(
                "{name} in environment {from} is {}: only a revision that runs, healthy, is promoted",
                source.state
            )));
        }
        let rev = store.revision(&source.id, source.current_revision)?.ok_or_else(|| {
            PlanError::Invalid(format!("{name} in {from}: revision {} is not in the store", source.current_revision))
        })?;
        let mut spec = rev.written.clone().unwrap_or_else(|| rev.spec.clone());
        if spec.spec.environments.get(to).and_then(|o| o.get("artifact")).is_some() {
            return Err(PlanError::Invalid(format!(
                "{name}: the overlay of environment {to} changes spec.artifact; a promotion deploys what {from} runs, \
                 exactly: take the artifact out of the overlay, or apply {to}'s spec instead"
            )));
        }
        // The very artifact the source verified (a pin it had already
        // names it, or the index that lists it).
        if spec.spec.artifact.sha256.is_none() {
            spec.spec.artifact.sha256 = rev.artifact_digest.clone();
        }
        // What both environments apply, its environment aside.
        spec.metadata.environment = None;
        let base_hash = spec.hash();
        spec.metadata.environment = (to != crate::plan::DEFAULT_ENVIRONMENT).then(|| to.to_string());
        let label = format!("{name} (environment {from}, revision {})", rev.revision);
        let effective = super::plan::effective_spec(&spec, &label)?;
        let _lock = self.lock_environment(to, "promote", holder).await?;
        let target = store.find_deployment(to, name)?.filter(|d| d.state != State::Deleted && d.desired_revision != 0);
        if target.as_ref().is_some_and(|d| d.suspended.is_suspended()) {
            return Err(PlanError::Invalid(format!(
                "{name} in environment {to} is suspended by its spec: resume it there first (a promotion would run it)"
            )));
        }
        let recorded = match &target {
            Some(d) => self.desired_as_planned(d)?,
            None => None,
        };
        let after = comparable(&effective);
        let (action, fields) = match &recorded {
            None => (Action::Add, Vec::new()),
            Some(r) => {
                let fields = crate::plan::diff(&comparable(&r.spec), &after);
                (if fields.is_empty() { Action::Noop } else { Action::Change }, fields)
            }
        };
        if action != Action::Noop {
            self.preflight(&effective, std::path::Path::new(&rev.source_dir), &label).await?;
        }
        let drift = match &target {
            Some(d) => drift_note(self.check_drift(&d.id).await),
            None => None,
        };
        let written = comparable(&spec);
        let plan = Plan {
            id: crate::plan::new_id().map_err(|e| PlanError::Invalid(format!("cannot make a plan id: {e}")))?,
            environment: to.to_string(),
            created_at: now_rfc3339(),
            set_hash: Plan::hash_set(std::iter::once((name, &written))),
            base: BTreeMap::from([(name.to_string(), target.as_ref().map_or(0, |d| d.desired_revision))]),
            changes: vec![PlannedChange {
                name: name.to_string(),
                action,
                source: label,
                spec: Some(written),
                source_dir: rev.source_dir.clone(),
                pinned: None,
                fields,
                drift,
            }],
            promotion: Some(Promotion {
                from: from.to_string(),
                revision: rev.revision,
                digest: rev.artifact_digest.clone(),
                spec_hash: base_hash,
            }),
        };
        let body = serde_json::to_string(&plan).map_err(|e| PlanError::Invalid(e.to_string()))?;
        store.save_plan(&plan.id, &plan.environment, &plan.created_at, &body)?;
        Ok(plan)
    }
}
