use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, name: &str, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let d = c.get(pb::NameRequest { name: name.to_string() }).await?.into_inner();
    if !output::structured(fmt, &output::deployment_json(&d)) {
        output::table(
            &["NAME", "STATE", "HEALTH", "REVISION", "DESIRED", "RUNTIME", "ARTIFACT", "UPDATED"],
            &[super::list::row(&d)],
        );
        if !d.message.is_empty() {
            println!("\n{}", d.message);
        }
    }
    Ok(())
}
