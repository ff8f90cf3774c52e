//! `era invariants [--env ENV]`, `era invariants ack --env ENV --confirm ENV`.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub async fn check(socket: &Path, environment: Option<&str>, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::InvariantsRequest { environment: environment.unwrap_or_default().to_string() };
    print(&c.invariants(req).await?.into_inner(), fmt);
    Ok(())
}

pub async fn acknowledge(
    socket: &Path,
    environment: &str,
    confirm: Option<String>,
    fmt: Format,
) -> Result<(), CliError> {
    let confirm = super::lock::confirmed(
        confirm,
        &format!(
            "Acknowledging lets environment {environment}'s reconciliation go on despite its breaches.\n\
             Type the environment's name to go on: "
        ),
        &format!("acknowledging needs --confirm {environment}"),
    )?;
    let mut c = client::connect(socket).await?;
    let req = pb::AcknowledgeRequest { environment: environment.to_string(), confirm };
    print(&c.acknowledge_breaches(req).await?.into_inner(), fmt);
    Ok(())
}

fn print(r: &pb::InvariantsResponse, fmt: Format) {
    let docs: Vec<_> = r
        .breaches
        .iter()
        .map(|b| {
            serde_json::json!({
                "environment": b.environment, "object": b.object, "kind": b.kind, "detail": b.detail,
                "found_at": b.found_at,
                "acknowledged_at": (!b.acknowledged_at.is_empty()).then_some(&b.acknowledged_at),
                "acknowledged_by": (!b.acknowledged_by.is_empty()).then_some(&b.acknowledged_by),
            })
        })
        .collect();
    if output::structured(fmt, &docs) {
        return;
    }
    if r.breaches.is_empty() {
        println!("Every invariant holds.");
        return;
    }
    let rows: Vec<Vec<String>> = r
        .breaches
        .iter()
        .map(|b| {
            let state = if b.acknowledged_at.is_empty() {
                "HALTS".to_string()
            } else {
                format!("acknowledged {} by {}", b.acknowledged_at, b.acknowledged_by)
            };
            vec![b.environment.clone(), b.kind.clone(), b.object.clone(), state, b.detail.clone()]
        })
        .collect();
    output::table(&["ENVIRONMENT", "KIND", "OBJECT", "STATE", "DETAIL"], &rows);
}
