//! stop, start, delete and rollback: a command, then optionally `--wait`.

use crate::WaitArgs;
use crate::client::{self, CliError, Client};
use crate::output::{self, Format};
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

pub async fn run(socket: &Path, action: Action, name: &str, w: &WaitArgs, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let events = if w.wait { Some(wait::watch(&mut c, name).await?) } else { None };
    let req = pb::NameRequest { name: name.to_string() };
    let resp = match action {
        Action::Stop => c.stop(req).await?,
        Action::Start => c.start(req).await?,
        Action::Delete => c.delete(req).await?,
    }
    .into_inner();
    finish(&mut c, name, resp, events, w, fmt, |d| d.state == action.goal(), action.goal()).await
}

pub async fn rollback(socket: &Path, name: &str, to: Option<u64>, w: &WaitArgs, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let events = if w.wait { Some(wait::watch(&mut c, name).await?) } else { None };
    let resp =
        c.rollback(pb::RollbackRequest { name: name.to_string(), to_revision: to.unwrap_or(0) }).await?.into_inner();
    let target = resp.revision;
    let goal = format!("Running revision {target}");
    finish(&mut c, name, resp, events, w, fmt, |d| d.state == "Running" && d.revision == target, &goal).await
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    c: &mut Client,
    name: &str,
    resp: pb::ActionResponse,
    events: Option<wait::Events>,
    w: &WaitArgs,
    fmt: Format,
    reached: impl Fn(&pb::Deployment) -> bool,
    goal: &str,
) -> Result<(), CliError> {
    if fmt == Format::Table {
        println!("{name} is {}", resp.state);
    }
    let Some(events) = events else {
        output::structured(fmt, &serde_json::json!({"name": resp.name, "state": resp.state}));
        return Ok(());
    };
    let d = wait::settle(c, name, events, w.timeout, fmt != Format::Table).await?;
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
