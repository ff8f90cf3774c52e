//! `era logs NAME [-f] [--tail N] [--revision REV]`: the workload's stdout
//! and stderr, as its runtime plugin wrote them, streamed from erad.

use crate::client::{self, CliError};
use crate::target::Target;
use era_api::v1 as pb;
use std::io::Write;
use std::path::Path;

pub async fn run(
    socket: &Path,
    target: &Target,
    follow: bool,
    tail: Option<u64>,
    revision: Option<u64>,
) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::LogsRequest {
        name: target.name.clone(),
        environment: target.environment(),
        follow,
        tail: tail.map(|n| n.min(i64::MAX as u64) as i64).unwrap_or(-1),
        revision: revision.unwrap_or(0),
    };
    let mut stream = c.logs(req).await?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await? {
        // A closed pipe (era logs | head) ends the command quietly.
        if out.write_all(&chunk.data).and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}
