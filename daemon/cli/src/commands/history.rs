use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::target::Target;
use std::path::Path;

pub async fn run(socket: &Path, target: &Target, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let entries = c.history(target.request()).await?.into_inner().entries;
    let docs: Vec<_> = entries
        .iter()
        .map(|e| serde_json::json!({"seq": e.seq, "time": e.time, "from": e.from_state, "to": e.to_state, "revision": e.revision, "cause": e.cause}))
        .collect();
    if !output::structured(fmt, &docs) {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    e.time.clone(),
                    e.from_state.clone(),
                    e.to_state.clone(),
                    e.revision.to_string(),
                    e.cause.clone(),
                ]
            })
            .collect();
        output::table(&["SEQ", "TIME", "FROM", "TO", "REVISION", "CAUSE"], &rows);
    }
    Ok(())
}
