//! `era outputs NAME`, `era outputs set|unset NAME KEY [VALUE]`.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use crate::target::{Target, label};
use era_api::v1 as pb;
use std::path::Path;

pub async fn show(socket: &Path, target: &Target, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let resp = c.outputs(target.request()).await?.into_inner();
    print(&resp, fmt);
    Ok(())
}

pub async fn set(socket: &Path, target: &Target, key: &str, value: Option<&str>, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::SetOutputRequest {
        name: target.name.clone(),
        environment: target.environment(),
        key: key.to_string(),
        value: value.unwrap_or_default().to_string(),
        unset: value.is_none(),
    };
    let resp = c.set_output(req).await?.into_inner();
    if fmt == Format::Table {
        let what = if value.is_some() { "set" } else { "removed" };
        println!("{}: override of output {key} {what}", label(&resp.name, &resp.environment));
    }
    print(&resp, fmt);
    Ok(())
}

fn print(resp: &pb::OutputsResponse, fmt: Format) {
    let docs: Vec<_> = resp
        .outputs
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name,
                "type": o.r#type,
                "required": o.required,
                "value": o.has_value.then_some(&o.value),
                "source": o.source,
                "problem": o.problem,
            })
        })
        .collect();
    let doc = serde_json::json!({"name": resp.name, "environment": resp.environment, "outputs": docs});
    if output::structured(fmt, &doc) {
        return;
    }
    let rows: Vec<Vec<String>> = resp
        .outputs
        .iter()
        .map(|o| {
            let kind = match (o.r#type.as_str(), o.required) {
                ("", _) => "-".to_string(),
                (t, true) => format!("{t} (required)"),
                (t, false) => t.to_string(),
            };
            vec![
                o.name.clone(),
                kind,
                if o.has_value { o.value.clone() } else { "-".into() },
                if o.source.is_empty() { "-".into() } else { o.source.clone() },
                o.problem.clone(),
            ]
        })
        .collect();
    output::table(&["OUTPUT", "TYPE", "VALUE", "SOURCE", "PROBLEM"], &rows);
}
