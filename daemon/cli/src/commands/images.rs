use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::Path;

pub fn json(i: &pb::PulledImage) -> serde_json::Value {
    serde_json::json!({"reference": i.reference, "digest": i.digest, "kind": i.kind, "size": i.size, "pulled_at": i.pulled_at, "used_by": i.used_by})
}

pub async fn run(socket: &Path, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let images = c.images(pb::ImagesRequest {}).await?.into_inner().images;
    let docs: Vec<_> = images.iter().map(json).collect();
    if !output::structured(fmt, &docs) {
        let rows: Vec<Vec<String>> = images
            .iter()
            .map(|i| {
                vec![
                    i.reference.clone(),
                    i.kind.clone(),
                    output::short_digest(&i.digest),
                    i.size.to_string(),
                    i.used_by.join(","),
                    i.pulled_at.clone(),
                ]
            })
            .collect();
        output::table(&["REFERENCE", "KIND", "DIGEST", "SIZE", "USED BY", "PULLED"], &rows);
    }
    Ok(())
}
