use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;
use tokio_stream::StreamExt;

pub async fn run(socket: &Path, name: Option<&str>, env: Option<&str>, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::WatchRequest {
        name: name.unwrap_or_default().to_string(),
        environment: env.unwrap_or_default().to_string(),
    };
    let mut events = c.watch(req).await?.into_inner();
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let who = crate::target::label(&ev.name, &ev.environment);
        match ev.kind {
            Some(pb::event::Kind::Transition(t)) => match fmt {
                Format::Table => println!(
                    "{}  {}  {} -> {}  revision {}  {}",
                    t.time, who, t.from_state, t.to_state, t.revision, t.cause
                ),
                _ => println!("{}", output::transition_json(&ev.name, &ev.environment, &t)),
            },
            Some(pb::event::Kind::Progress(p)) => match fmt {
                Format::Table => println!("{who}  fetching {}: {} / {} bytes", p.what, p.done, p.total),
                _ => println!(
                    "{}",
                    serde_json::json!({"name": ev.name, "environment": ev.environment, "progress": {"revision": p.revision, "what": p.what, "done": p.done, "total": p.total}})
                ),
            },
            None => {}
        }
    }
    Ok(())
}
