//! stop, start, delete and rollback: a command, then optionally `--wait`.

use crate::WaitArgs;
use crate::client::{self, CliError, Client};
use crate::output::{self, Format};
use crate::target::{Target, label};
use crate::wait;
use era_api::v1 as pb;
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Stop,
    Start,
    Delete,
}

impl Action {
    fn goal(self) -> &'static str {
        match self {
            Action::Stop => "Stopped",
            Action::Start => "Running",
            Action::Delete => "Deleted",
        }
    }
}

pub async fn run(socket: &Path, action: Action, target: &Target, w: &WaitArgs, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let events = if w.wait { Some(wait::watch(&mut c, target).await?) } else { None };
    let req = target.request();
    let resp = match action {
        Action::Stop => c.stop(req).await?,
        Action::Start => c.start(req).await?,
        Action::Delete => c.delete(req).await?,
    }
    .into_inner();
    finish(&mut c, target, resp, events, w, fmt, |d| d.state == action.goal(), action.goal()).await
}

pub async fn rollback(
    socket: &Path,
    target: &Target,
    to: Option<u64>,
    w: &WaitArgs,
    fmt: Format,
) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let events = if w.wait { Some(wait::watch(&mut c, target).await?) } else { None };
    let req = pb::RollbackRequest {
        name: target.name.clone(),
        to_revision: to.unwrap_or(0),
        environment: target.environment(),
    };
    let resp = c.rollback(req).await?.into_inner();
    let (target_of, revision) = (target, resp.revision);
    let goal = format!("Running revision {revision}");
    finish(&mut c, target_of, resp, events, w, fmt, |d| d.state == "Running" && d.revision == revision, &goal).await
}

/// `era delete NAME --all-envs`.
pub async fn delete_all(socket: &Path, name: &str, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let resp = c.delete_all_environments(pb::DeleteAllRequest { name: name.to_string() }).await?.into_inner();
    if !output::structured(fmt, &serde_json::json!({"name": resp.name, "environments": resp.environments})) {
        println!("{} forgotten in environment(s) {}", resp.name, resp.environments.join(", "));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    c: &mut Client,
    target: &Target,
    resp: pb::ActionResponse,
    events: Option<wait::Events>,
    w: &WaitArgs,
    fmt: Format,
    reached: impl Fn(&pb::Deployment) -> bool,
    goal: &str,
) -> Result<(), CliError> {
    let name = label(&resp.name, &resp.environment);
    if fmt == Format::Table {
        println!("{name} is {}", resp.state);
    }
    let Some(events) = events else {
        output::structured(
            fmt,
            &serde_json::json!({"name": resp.name, "environment": resp.environment, "state": resp.state}),
        );
        return Ok(());
    };
    // Followed where the command went (the environment erad resolved).
    let target = Target::new(&target.name, &resp.environment);
    let d = wait::settle(c, &target, events, w.timeout, fmt != Format::Table).await?;
    output::structured(fmt, &output::deployment_json(&d));
    if reached(&d) {
        if fmt == Format::Table {
            println!("{name} is {}", d.state);
        }
        Ok(())
    } else {
        Err(CliError::Failed(format!("{name} is {} (revision {}), not {goal}: {}", d.state, d.revision, d.message)))
    }
}
