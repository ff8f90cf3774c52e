//! `era runs [--env ENV]` and `era runs show ID`: the run history.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

fn run_json(r: &pb::Run) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "kind": r.kind,
        "environment": r.environment,
        "caller": r.caller,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "result": r.result,
        "summary": r.summary,
        "log": r.log,
    })
}

pub async fn list(socket: &Path, environment: Option<&str>, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let runs =
        c.runs(pb::RunsRequest { environment: environment.unwrap_or_default().to_string() }).await?.into_inner().runs;
    let as_data: Vec<_> = runs.iter().map(run_json).collect();
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    println!(
        "{:<13} {:<13} {:<12} {:<10} {:<25} {:<10} SUMMARY",
        "ID", "KIND", "ENVIRONMENT", "CALLER", "STARTED", "RESULT"
    );
    for r in &runs {
        println!(
            "{:<13} {:<13} {:<12} {:<10} {:<25} {:<10} {}",
            r.id, r.kind, r.environment, r.caller, r.started_at, r.result, r.summary
        );
    }
    Ok(())
}

pub async fn show(socket: &Path, id: &str, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let r = c.run_show(pb::RunShowRequest { id: id.to_string() }).await?.into_inner();
    if output::structured(fmt, &run_json(&r)) {
        return Ok(());
    }
    println!("run {} ({}) of environment {}", r.id, r.kind, r.environment);
    println!("by {}, {} to {}: {}", r.caller, r.started_at, r.ended_at, r.result);
    println!("{}", r.summary);
    for line in &r.log {
        println!("  {line}");
    }
    Ok(())
}
