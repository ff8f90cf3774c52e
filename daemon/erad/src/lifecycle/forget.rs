//! `era delete NAME --all-envs`: a name deleted from every environment at
//! once: its records go, so the name (and its ids) are free again.

use super::{Lifecycle, PlanError, Standing};
use crate::machine::State;

impl Lifecycle {
    /// Forgets deployment `name` in every environment that recorded it:
    /// its record, revisions, journal, port claims and drift findings go
    /// (runs stay), and the environments' unapplied plans (made against
    /// it). Refused, naming why, unless every environment's copy is
    /// already destroyed (Deleted) and a report of each of those
    /// environments passes now: no deployment there drifted, failed or
    /// unknown to its runtime, and no invariant breach there. Holds those
    /// environments' locks. Returns the environments it was forgotten in.
    pub async fn forget(&self, name: &str, holder: &str) -> Result<Vec<String>, PlanError> {
        let store = &self.shared.store;
        let all = store.deployments_named(name)?;
        if all.is_empty() {
            return Err(PlanError::NotFound(format!("no environment has a deployment {name}")));
        }
        let live: Vec<String> = all
            .iter()
            .filter(|d| d.state != State::Deleted)
            .map(|d| format!("{} ({})", d.environment, d.state))
            .collect();
        if !live.is_empty() {
            return Err(PlanError::Invalid(format!(
                "{name} is not destroyed in {}: delete it there first (era delete {name} --env ENV --wait)",
                live.join(", ")
            )));
        }
        let mut environments: Vec<String> = all.iter().map(|d| d.environment.clone()).collect();
        environments.sort();
        environments.dedup();
        let mut locks = Vec::new();
        for env in &environments {
            locks.push(self.lock_environment(env, "delete --all-envs", holder).await?);
        }
        // Read again under the locks: an apply may have landed meanwhile.
        let all = store.deployments_named(name)?;
        let now: Vec<String> = {
            let mut e: Vec<String> = all.iter().map(|d| d.environment.clone()).collect();
            e.sort();
            e.dedup();
            e
        };
        let live: Vec<String> = all
            .iter()
            .filter(|d| d.state != State::Deleted)
            .map(|d| format!("{} ({})", d.environment, d.state))
            .collect();
        if now != environments || !live.is_empty() {
            return Err(PlanError::Stale(format!(
                "{name} changed while waiting for the locks{}: run it again",
                if live.is_empty() { String::new() } else { format!(" (not destroyed in {})", live.join(", ")) }
            )));
        }
        // The report of each: everything there where its runtime says.
        for env in &environments {
            let unsure: Vec<String> = self
                .report(Some(env))
                .await?
                .into_iter()
                .filter(|c| matches!(c.standing, Standing::Drifted | Standing::Failed | Standing::Unknown))
                .map(|c| format!("{} is {}: {}", c.name, c.standing.as_str(), c.detail))
                .collect();
            if !unsure.is_empty() {
                return Err(PlanError::Stale(format!(
                    "the report of environment {env} does not pass ({}): resolve it, then delete {name} again",
                    unsure.join("; ")
                )));
            }
        }
        let breaches: Vec<String> = self
            .check_invariants()
            .await?
            .into_iter()
            .filter(|b| environments.contains(&b.environment))
            .map(|b| format!("{} ({}: {})", b.object, b.kind, b.detail))
            .collect();
        if !breaches.is_empty() {
            return Err(PlanError::Stale(format!(
                "invariants do not hold where {name} was: {}; resolve them, then delete it again",
                breaches.join("; ")
            )));
        }
        let ids: Vec<String> = all.iter().map(|d| d.id.clone()).collect();
        store.forget_deployments(&ids)?;
        for d in &all {
            // Its supervisor (idle: Deleted) ends once it has no sender.
            self.supervisors.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.id);
            tracing::info!(deployment = d.id, environment = d.environment, holder, "forgotten");
        }
        drop(locks);
        Ok(environments)
    }
}
