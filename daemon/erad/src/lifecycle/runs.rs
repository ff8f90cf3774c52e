//! Run history: every plan, apply of a plan, destroy and force-unlock, on
//! record with who asked, what came of it and what it did (names, actions
//! and field paths, never a spec's values), kept for `[runs] retention`.

use super::Lifecycle;
use crate::store::{RunRecord, StoreError, now_rfc3339};

impl Lifecycle {
    /// Records a finished run: `outcome` is its summary and log lines, or
    /// the error it failed with. A failure to record is logged, never the
    /// run's failure.
    pub fn record_run(
        &self,
        kind: &str,
        environment: &str,
        caller: &str,
        started_at: String,
        outcome: Result<(String, Vec<String>), String>,
    ) {
        let (result, summary, log) = match outcome {
            Ok((summary, lines)) => ("succeeded", summary, lines.join("\n")),
            Err(e) => ("failed", e, String::new()),
        };
        let id = match crate::plan::new_id() {
            Ok(id) => id,
            Err(e) => return tracing::warn!("cannot record the run: {e}"),
        };
        let run = RunRecord {
            id,
            kind: kind.to_string(),
            environment: environment.to_string(),
            caller: caller.to_string(),
            started_at,
            ended_at: now_rfc3339(),
            result: result.to_string(),
            summary,
            log,
        };
        match self.shared.store.record_run(&run, self.shared.run_retention) {
            Ok(()) => tracing::info!(run = run.id, kind, environment, caller, result, "{}", run.summary),
            Err(e) => tracing::warn!(kind, environment, "cannot record the run: {e}"),
        }
    }

    /// The runs, newest first, of one environment or all.
    pub fn runs(&self, environment: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        self.shared.store.runs(environment)
    }

    /// The environment of saved plan `id`, if there is one.
    pub fn plan_environment(&self, id: &str) -> Option<String> {
        let saved = self.shared.store.plan(id).ok().flatten()?;
        serde_json::from_str::<crate::plan::Plan>(&saved.body).ok().map(|p| p.environment)
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.shared.store.run(id)
    }
}

/// A plan's summary line and its log lines: each deployment's action and,
/// for a change, the paths of the fields it changes (not their values).
pub fn plan_summary(plan: &crate::plan::Plan) -> (String, Vec<String>) {
    use crate::plan::Action;
    let count = |a: Action| plan.changes.iter().filter(|c| c.action == a).count();
    let summary = format!(
        "plan {}: {} to add, {} to change, {} to destroy, {} unchanged",
        plan.id,
        count(Action::Add),
        count(Action::Change),
        count(Action::Destroy),
        count(Action::Noop)
    );
    let lines = plan
        .changes
        .iter()
        .map(|c| {
            let fields: Vec<&str> = c.fields.iter().map(|f| f.path.as_str()).collect();
            let pinned = c.pinned.as_ref().map(|p| format!(" pinned to {}", p.digest)).unwrap_or_default();
            if fields.is_empty() {
                format!("{} {}{pinned}", c.action.as_str(), c.name)
            } else {
                format!("{} {} ({}){pinned}", c.action.as_str(), c.name, fields.join(", "))
            }
        })
        .collect();
    (summary, lines)
}
