//! `era destroy --env ENV`: every deployment of an environment removed.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};

pub async fn run(
    socket: &Path,
    environment: &str,
    confirm: Option<String>,
    wait: &crate::WaitArgs,
    fmt: Format,
) -> Result<(), CliError> {
    let confirm = super::lock::confirmed(
        confirm,
        &format!(
            "This removes every deployment of environment {environment} and everything they made (their history \
             stays).\nType the environment's name (for a protected one: destroy {environment}) to go on: "
        ),
        &format!(
            "destroy needs --confirm {environment} (for a protected environment, --confirm \"destroy {environment}\")"
        ),
    )?;
    let mut c = client::connect(socket).await?;
    let resp = c.destroy(pb::DestroyRequest { environment: environment.to_string(), confirm }).await?.into_inner();
    if wait.wait {
        // Until each is Deleted (or the timeout).
        let deadline = Instant::now() + wait.timeout;
        for name in &resp.deleting {
            loop {
                let req = pb::NameRequest { name: name.clone(), environment: environment.to_string() };
                let d = c.get(req).await?.into_inner();
                match d.state.as_str() {
                    "Deleted" => break,
                    "Failed" | "RollbackFailed" => {
                        return Err(CliError::Failed(format!("{name} is {}: {}", d.state, d.message)));
                    }
                    _ if Instant::now() > deadline => {
                        return Err(CliError::Failed(format!(
                            "{name} was not deleted within {}",
                            humantime::format_duration(wait.timeout)
                        )));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
    let as_data = serde_json::json!({"environment": resp.environment, "deleting": resp.deleting});
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    if resp.deleting.is_empty() {
        println!("environment {environment} has no deployment");
    }
    for name in &resp.deleting {
        println!("{name}: {}", if wait.wait { "deleted" } else { "delete requested" });
    }
    Ok(())
}
