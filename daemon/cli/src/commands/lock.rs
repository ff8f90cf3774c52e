//! `era lock list` and `era lock force-unlock`.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::io::IsTerminal;
use std::path::Path;

fn lock_json(l: &pb::Lock) -> serde_json::Value {
    serde_json::json!({
        "environment": l.environment,
        "operation": l.operation,
        "holder": l.holder,
        "acquired_at": l.acquired_at,
        "idle_ms": l.idle_ms,
        "stale": l.stale,
    })
}

pub async fn list(socket: &Path, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let locks = c.locks(pb::LocksRequest {}).await?.into_inner().locks;
    let as_data: Vec<_> = locks.iter().map(lock_json).collect();
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    if locks.is_empty() {
        println!("no environment is locked");
        return Ok(());
    }
    println!("{:<16} {:<14} {:<32} {:<26} IDLE", "ENVIRONMENT", "OPERATION", "HOLDER", "SINCE");
    for l in &locks {
        let idle = humantime::format_duration(std::time::Duration::from_secs(l.idle_ms / 1000));
        let stale = if l.stale { " (stale)" } else { "" };
        println!("{:<16} {:<14} {:<32} {:<26} {idle}{stale}", l.environment, l.operation, l.holder, l.acquired_at);
    }
    Ok(())
}

pub async fn force_unlock(
    socket: &Path,
    environment: &str,
    confirm: Option<String>,
    fmt: Format,
) -> Result<(), CliError> {
    let confirm = confirmed(
        confirm,
        &format!(
            "Forcing environment {environment}'s lock open lets a second change run beside the holder's, and \
             refuses every plan made before now.\nType the environment's name (for a protected one: \
             force-unlock {environment}) to go on: "
        ),
        &format!(
            "force-unlock needs --confirm {environment} (for a protected environment, --confirm \"force-unlock {environment}\")"
        ),
    )?;
    let mut c = client::connect(socket).await?;
    let resp =
        c.force_unlock(pb::ForceUnlockRequest { environment: environment.to_string(), confirm }).await?.into_inner();
    let as_data = serde_json::json!({"environment": environment, "removed": resp.removed.as_ref().map(lock_json)});
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    match resp.removed {
        Some(l) => println!("removed the lock {} held for {} since {}", l.holder, l.operation, l.acquired_at),
        None => println!("environment {environment} was not locked"),
    }
    println!("plans of {environment} made before now are refused: run `era plan` again");
    Ok(())
}

/// The confirmation given with `--confirm`, or asked for on a terminal with
/// `prompt`; without either, a usage error saying `usage`. erad checks it.
pub fn confirmed(given: Option<String>, prompt: &str, usage: &str) -> Result<String, CliError> {
    match given {
        Some(c) => Ok(c),
        None if std::io::stdin().is_terminal() => {
            eprint!("{prompt}");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::Usage(format!("cannot read the answer: {e}")))?;
            Ok(line.trim().to_string())
        }
        None => Err(CliError::Usage(usage.to_string())),
    }
}
