//! `--wait`: follow a deployment until it settles, printing its transitions.

use crate::client::{CliError, Client};
use crate::target::{Target, label};
use era_api::v1 as pb;
use std::time::Duration;
use tokio_stream::StreamExt;

const SETTLED: &[&str] = &["Running", "Stopped", "Deleted", "Failed", "RollbackFailed"];

pub type Events = tonic::Streaming<pb::Event>;

/// Opens the watch stream; call before the command so no transition is missed.
pub async fn watch(client: &mut Client, target: &Target) -> Result<Events, CliError> {
    let req = pb::WatchRequest { name: target.name.clone(), environment: target.environment() };
    Ok(client.watch(req).await?.into_inner())
}

/// Prints transitions until the deployment is settled, then returns it.
pub async fn settle(
    client: &mut Client,
    target: &Target,
    mut events: Events,
    timeout: Duration,
    quiet: bool,
) -> Result<pb::Deployment, CliError> {
    let mut progress: Option<crate::progress::Progress> = None;
    let name = label(&target.name, &target.environment());
    let follow = async {
        let current = client.get(target.request()).await?.into_inner();
        if SETTLED.contains(&current.state.as_str()) && !busy_soon(&current) {
            return Ok::<_, CliError>(current);
        }
        while let Some(ev) = events.next().await {
            let ev = ev?;
            match ev.kind {
                Some(pb::event::Kind::Transition(t)) => {
                    if let Some(p) = progress.take() {
                        p.finish();
                    }
                    if !quiet {
                        eprintln!("{name}: {} -> {} (revision {}): {}", t.from_state, t.to_state, t.revision, t.cause);
                    }
                    if SETTLED.contains(&t.to_state.as_str()) {
                        return Ok(client.get(target.request()).await?.into_inner());
                    }
                }
                Some(pb::event::Kind::Progress(p)) if !quiet && p.total > 0 => {
                    progress
                        .get_or_insert_with(|| crate::progress::Progress::new(&format!("{name}: fetching {}", p.what)))
                        .update(p.done, p.total);
                }
                _ => {}
            }
        }
        Err(CliError::Unreachable("erad closed the watch stream".into()))
    };
    tokio::time::timeout(timeout, follow).await.map_err(|_| {
        CliError::Failed(format!("{name} did not settle within {}", humantime::format_duration(timeout)))
    })?
}

/// A settled state whose last transition was committed by the command we just
/// sent would already have moved on; only Requested-like states linger.
fn busy_soon(d: &pb::Deployment) -> bool {
    d.desired_revision != d.revision && d.state == "Running"
}
