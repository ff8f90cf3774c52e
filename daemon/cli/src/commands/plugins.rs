use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub async fn run(socket: &Path, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let plugins = c.plugins(pb::PluginsRequest {}).await?.into_inner().plugins;
    let docs: Vec<_> = plugins
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "version": p.version, "description": p.description, "digest": p.digest, "source": p.source, "grants": p.grants}))
        .collect();
    if !output::structured(fmt, &docs) {
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.version.clone(),
                    p.grants.join(","),
                    output::short_digest(&p.digest),
                    p.description.clone(),
                ]
            })
            .collect();
        output::table(&["NAME", "VERSION", "GRANTS", "DIGEST", "DESCRIPTION"], &rows);
    }
    Ok(())
}
