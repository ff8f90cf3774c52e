//! Rendering for people (tables) and for programs (JSON, YAML).

use era_api::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "name": d.name,
        "state": d.state,
        "health": d.health,
        "revision": d.revision,
        "desired_revision": d.desired_revision,
        "runtime": d.runtime,
        "artifact_digest": d.artifact_digest,
        "updated_at": d.updated_at,
        "message": d.message,
        "environment": d.environment,
        "suspended": d.suspended,
        "labels": d.labels,
        "outputs": d.outputs,
    })
}

pub fn transition_json(name: &str, environment: &str, t: &pb::Transition) -> Value {
    json!({"name": name, "environment": environment, "seq": t.seq, "time": t.time, "from": t.from_state, "to": t.to_state, "revision": t.revision, "cause": t.cause})
}

/// Prints a JSON or YAML document; `false` for the table format.
pub fn structured(fmt: Format, value: &impl Serialize) -> bool {
    match fmt {
        Format::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
        Format::Table => return false,
    }
    true
}

/// A plain aligned table: a header row and data rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn short_digest(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => d.to_string(),
    }
}
