use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::target::Target;
use std::path::Path;

pub async fn run(socket: &Path, target: &Target, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let d = c.get(target.request()).await?.into_inner();
    if !output::structured(fmt, &output::deployment_json(&d)) {
        output::table(
            &["NAME", "ENV", "STATE", "HEALTH", "REVISION", "DESIRED", "RUNTIME", "ARTIFACT", "UPDATED"],
            &[super::list::row(&d)],
        );
        if !d.message.is_empty() {
            println!("\n{}", d.message);
        }
    }
    Ok(())
}
