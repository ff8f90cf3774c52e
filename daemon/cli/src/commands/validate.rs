use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, file: &Path, render: bool, fmt: Format) -> Result<(), CliError> {
    let (spec, source) = client::read_spec(file)?;
    let mut c = client::connect(socket).await?;
    let resp = c.validate(pb::ValidateRequest { spec, source, render }).await?.into_inner();
    let rendered: Vec<_> =
        resp.rendered.iter().map(|r| serde_json::json!({"name": r.name, "content": r.content})).collect();
    let as_data = serde_json::json!({"name": resp.name, "spec_hash": resp.spec_hash, "rendered": rendered});
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    println!("{} is valid (spec {})", resp.name, output::short_digest(&resp.spec_hash));
    if render && resp.rendered.is_empty() {
        println!("(its runtime renders nothing before an apply)");
    }
    // A plugin wrote these: no control characters reach the terminal.
    let printable = |t: &str| t.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect::<String>();
    for r in &resp.rendered {
        println!("--- {}", printable(&r.name));
        let content = printable(&r.content);
        print!("{content}");
        if !content.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}
