use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub fn row(d: &pb::Deployment) -> Vec<String> {
    vec![
        d.name.clone(),
        d.environment.clone(),
        if d.suspended { format!("{} (suspended)", d.state) } else { d.state.clone() },
        d.health.clone(),
        d.revision.to_string(),
        d.desired_revision.to_string(),
        d.runtime.clone(),
        output::short_digest(&d.artifact_digest),
        d.updated_at.clone(),
    ]
}

pub async fn run(socket: &Path, all: bool, env: Option<&str>, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let list: Vec<pb::Deployment> = c
        .list(pb::ListRequest {})
        .await?
        .into_inner()
        .deployments
        .into_iter()
        .filter(|d| all || d.state != "Deleted")
        .filter(|d| env.is_none_or(|e| e == d.environment))
        .collect();
    let docs: Vec<_> = list.iter().map(output::deployment_json).collect();
    if !output::structured(fmt, &docs) {
        output::table(
            &["NAME", "ENV", "STATE", "HEALTH", "REVISION", "DESIRED", "RUNTIME", "ARTIFACT", "UPDATED"],
            &list.iter().map(row).collect::<Vec<_>>(),
        );
    }
    Ok(())
}
