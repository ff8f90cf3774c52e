//! `era report [--env ENV]`: where each deployment stands against its
//! runtime, read-only.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, environment: Option<&str>, last: bool, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let r = c
        .report(pb::ReportRequest { environment: environment.unwrap_or_default().to_string(), last })
        .await?
        .into_inner();
    let deployments: Vec<_> = r
        .deployments
        .iter()
        .map(|d| {
            serde_json::json!({"name": d.name, "environment": d.environment, "standing": d.standing, "detail": d.detail, "checked_at": d.checked_at})
        })
        .collect();
    let environments: Vec<_> = r
        .environments
        .iter()
        .map(|e| {
            serde_json::json!({"name": e.name, "standing": e.standing, "deployments": e.deployments, "halted": e.halted})
        })
        .collect();
    if output::structured(fmt, &serde_json::json!({"environments": environments, "deployments": deployments})) {
        return Ok(());
    }
    for e in &r.environments {
        println!("environment {}: {} ({} deployment(s))", e.name, e.standing, e.deployments);
        if !e.halted.is_empty() {
            println!("  HALTED: {}", e.halted);
        }
    }
    println!("{:<24} {:<12} {:<10} {:<25} DETAIL", "NAME", "ENVIRONMENT", "STANDING", "CHECKED");
    for d in &r.deployments {
        println!("{:<24} {:<12} {:<10} {:<25} {}", d.name, d.environment, d.standing, d.checked_at, d.detail);
    }
    Ok(())
}
