use crate::WaitArgs;
use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::wait;
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, file: &Path, w: &WaitArgs, fmt: Format) -> Result<(), CliError> {
    let (spec, source) = client::read_spec(file)?;
    let mut c = client::connect(socket).await?;
    // The spec's name is needed to watch before applying; erad checks it again.
    let name =
        erad::spec::DeploymentSpec::parse(&spec, &source).map_err(|e| CliError::Usage(e.to_string()))?.metadata.name;
    let events = if w.wait { Some(wait::watch(&mut c, &name).await?) } else { None };
    let resp = c.apply(pb::ApplyRequest { spec, source }).await?.into_inner();
    if fmt == Format::Table {
        let what = if resp.changed { "applied" } else { "unchanged" };
        println!("{} revision {} {what}", resp.name, resp.revision);
    }
    let Some(events) = events else {
        output::structured(
            fmt,
            &serde_json::json!({"name": resp.name, "revision": resp.revision, "changed": resp.changed}),
        );
        return Ok(());
    };
    let d = wait::settle(&mut c, &resp.name, events, w.timeout, fmt != Format::Table).await?;
    output::structured(fmt, &output::deployment_json(&d));
    match (d.state.as_str(), d.revision == resp.revision) {
        ("Running", true) => {
            if fmt == Format::Table {
                println!("{} is Running revision {} ({})", d.name, d.revision, d.health);
            }
            Ok(())
        }
        ("Running", false) => Err(CliError::Failed(format!(
            "{}: revision {} did not roll out; rolled back to revision {}: {}",
            d.name, resp.revision, d.revision, d.message
        ))),
        (state, _) => Err(CliError::Failed(format!("{} is {state}: {}", d.name, d.message))),
    }
}
