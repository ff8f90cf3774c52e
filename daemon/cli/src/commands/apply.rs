use crate::WaitArgs;
use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::target::{Target, label};
use crate::wait;
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, file: &Path, w: &WaitArgs, fmt: Format) -> Result<(), CliError> {
    let (spec, source) = client::read_spec(file)?;
    let mut c = client::connect(socket).await?;
    // The spec's name is needed to watch before applying; erad checks it again.
    let parsed = erad::spec::DeploymentSpec::parse(&spec, &source).map_err(|e| CliError::Usage(e.to_string()))?;
    let target = Target::new(parsed.name(), parsed.environment());
    let events = if w.wait { Some(wait::watch(&mut c, &target).await?) } else { None };
    let resp = c.apply(pb::ApplyRequest { spec, source }).await?.into_inner();
    let name = label(&resp.name, &resp.environment);
    if fmt == Format::Table {
        let what = if resp.changed { "applied" } else { "unchanged" };
        println!("{name} revision {} {what}", resp.revision);
    }
    let Some(events) = events else {
        output::structured(
            fmt,
            &serde_json::json!({"name": resp.name, "environment": resp.environment, "revision": resp.revision, "changed": resp.changed}),
        );
        return Ok(());
    };
    let d = wait::settle(&mut c, &target, events, w.timeout, fmt != Format::Table).await?;
    output::structured(fmt, &output::deployment_json(&d));
    match (d.state.as_str(), d.revision == resp.revision) {
        // A spec that suspends its deployment takes it to Stopped.
        ("Stopped", true) if parsed.spec.suspended => {
            if fmt == Format::Table {
                println!("{name} is Stopped (suspended by its spec)");
            }
            Ok(())
        }
        ("Running", true) if !parsed.spec.suspended => {
            if fmt == Format::Table {
                println!("{name} is Running revision {} ({})", d.revision, d.health);
            }
            Ok(())
        }
        ("Running", false) => Err(CliError::Failed(format!(
            "{name}: revision {} did not roll out; rolled back to revision {}: {}",
            resp.revision, d.revision, d.message
        ))),
        (state, _) => Err(CliError::Failed(format!("{name} is {state}: {}", d.message))),
    }
}
