use crate::client::{self, CliError};
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, file: &Path) -> Result<(), CliError> {
    let (spec, source) = client::read_spec(file)?;
    let mut c = client::connect(socket).await?;
    let resp = c.validate(pb::ValidateRequest { spec, source }).await?.into_inner();
    println!("{} is valid (spec {})", resp.name, crate::output::short_digest(&resp.spec_hash));
    Ok(())
}
