use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::progress::Progress;
use era_api::v1 as pb;
use std::path::Path;
use tokio_stream::StreamExt;

pub async fn run(
    socket: &Path,
    reference: &str,
    kind: &str,
    sha256: Option<&str>,
    fmt: Format,
) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::PullRequest {
        reference: reference.to_string(),
        kind: kind.to_string(),
        sha256: sha256.unwrap_or_default().to_string(),
    };
    let mut events = c.pull(req).await?.into_inner();
    let mut progress = Progress::new(&format!("pulling {reference}"));
    while let Some(ev) = events.next().await {
        match ev?.kind {
            Some(pb::pull_event::Kind::Progress(p)) => progress.update(p.done, p.total),
            Some(pb::pull_event::Kind::Done(img)) => {
                progress.finish();
                if !output::structured(fmt, &super::images::json(&img)) {
                    println!("{} pulled: {} ({} bytes, verified)", img.reference, img.digest, img.size);
                }
                return Ok(());
            }
            None => {}
        }
    }
    Err(CliError::Unreachable("erad closed the pull stream".into()))
}
