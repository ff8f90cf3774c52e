//! `era plan` and `era apply --plan`.

use crate::client::{self, CliError};
use crate::output::{self, Format};
use era_api::v1 as pb;
use std::path::{Path, PathBuf};

/// `--detailed-exitcode`: the plan would change something. (Terraform's
/// code for it is 2, which `era` uses for bad usage.)
pub const CHANGES_PRESENT: u8 = 5;

/// The spec files of a desired set: `path` itself, or the `.yaml`, `.yml`
/// and `.json` files (any case) directly in the directory `path`, in name
/// order. Hidden files are skipped quietly; anything else in the directory
/// (a subdirectory, another kind of file) is named on stderr, since a spec
/// left out of the set plans as a destroy.
fn spec_files(path: &Path) -> Result<Vec<pb::SpecFile>, CliError> {
    let usage = |e: std::io::Error| CliError::Usage(format!("cannot read {}: {e}", path.display()));
    let paths: Vec<PathBuf> = if path != Path::new("-") && std::fs::metadata(path).map_err(usage)?.is_dir() {
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        for p in std::fs::read_dir(path).map_err(usage)?.filter_map(Result::ok).map(|e| e.path()) {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            let spec = [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x));
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && spec => found.push(p),
                Ok(m) if m.is_dir() => skipped.push(format!("{} (a directory: not read)", p.display())),
                _ => skipped.push(format!("{} (not a .yaml, .yml or .json file)", p.display())),
            }
        }
        found.sort();
        skipped.sort();
        for s in &skipped {
            eprintln!("era: skipped {s}");
        }
        found
    } else {
        vec![path.to_path_buf()]
    };
    paths.iter().map(|p| client::read_spec(p).map(|(spec, source)| pb::SpecFile { spec, source })).collect()
}

pub async fn plan(
    socket: &Path,
    path: &Path,
    environment: &str,
    out: Option<&Path>,
    detailed: bool,
    fmt: Format,
) -> Result<(), CliError> {
    let files = spec_files(path)?;
    let mut c = client::connect(socket).await?;
    let plan = c.plan(pb::PlanRequest { environment: environment.to_string(), files }).await?.into_inner();
    if let Some(out) = out {
        // It holds the specs (env values included): the owner's alone.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .and_then(|mut f| writeln!(f, "{}", plan.document))
            .map_err(|e| CliError::Failed(format!("cannot write the plan to {}: {e}", out.display())))?;
    }
    let as_data: serde_json::Value = serde_json::from_str(&plan.document).unwrap_or_default();
    if !output::structured(fmt, &as_data) {
        print_plan(&plan, out);
    }
    if detailed && plan.changes_present {
        return Err(CliError::Exit(CHANGES_PRESENT));
    }
    Ok(())
}

/// `era promote NAME --from ENV --to ENV`.
pub async fn promote(socket: &Path, name: &str, from: &str, to: &str, fmt: Format) -> Result<(), CliError> {
    let mut c = client::connect(socket).await?;
    let req = pb::PromoteRequest { name: name.to_string(), from: from.to_string(), to: to.to_string() };
    let resp = c.promote(req).await?.into_inner();
    let plan = resp.plan.unwrap_or_default();
    let mut doc: serde_json::Value = serde_json::from_str(&plan.document).unwrap_or_default();
    doc["applied"] = resp.applied.into();
    if output::structured(fmt, &doc) {
        return Ok(());
    }
    let digest = if resp.source_digest.is_empty() { "-" } else { resp.source_digest.as_str() };
    println!(
        "{name} of environment {} revision {} (artifact {digest}, spec {})",
        resp.from, resp.source_revision, resp.spec_hash
    );
    match (resp.applied, plan.changes_present) {
        (true, _) => {
            print_changes(&plan);
            println!("Applied: plan {}.", plan.id);
        }
        (false, false) => println!("{name} of environment {to} already runs it: nothing to do."),
        (false, true) => {
            print_changes(&plan);
            println!("Environment {to} is protected: apply exactly this with: era apply --plan {}", plan.id);
        }
    }
    Ok(())
}

fn print_plan(plan: &pb::PlanResponse, out: Option<&Path>) {
    println!("plan {} for environment {} ({})", plan.id, plan.environment, plan.created_at);
    print_changes(plan);
    if plan.changes_present {
        let what = out.map(|p| p.display().to_string()).unwrap_or_else(|| plan.id.clone());
        println!("Apply exactly this with: era apply --plan {what}");
    } else {
        println!("No changes.");
    }
}

/// Each change with its fields and drift, then the counts.
fn print_changes(plan: &pb::PlanResponse) {
    let mut counts = std::collections::BTreeMap::new();
    for c in &plan.changes {
        *counts.entry(c.action.as_str()).or_insert(0) += 1;
        let mark = match c.action.as_str() {
            "add" => "+",
            "change" => "~",
            "destroy" => "-",
            _ => "=",
        };
        let pinned =
            if c.pinned_digest.is_empty() { String::new() } else { format!(", pinned to {}", c.pinned_digest) };
        println!("  {mark} {} ({}{pinned})", c.name, c.action);
        if !c.drift.is_empty() {
            println!("      ! {}", c.drift);
        }
        for f in &c.fields {
            let side = |v: &str| if v.is_empty() { "(none)".to_string() } else { v.to_string() };
            println!("      {}: {} -> {}", f.path, side(&f.before), side(&f.after));
        }
    }
    let n = |a: &str| counts.get(a).copied().unwrap_or(0);
    println!("{} to add, {} to change, {} to destroy, {} unchanged.", n("add"), n("change"), n("destroy"), n("no-op"));
}

/// `era apply --plan ID|FILE`.
pub async fn apply(
    socket: &Path,
    plan: &str,
    environment: Option<&str>,
    accept_drift: bool,
    fmt: Format,
) -> Result<(), CliError> {
    // A file `era plan --out` wrote (at most 16 MiB), or a plan id.
    let read = std::fs::File::open(plan).and_then(|f| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, 16 << 20), &mut text).map(|_| text)
    });
    let (id, document) = match read {
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{plan}: not a plan file (`era plan --out` writes one): {e}")))?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            (id, text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !plan.contains('/') => (plan.to_string(), String::new()),
        Err(e) => return Err(CliError::Usage(format!("cannot read {plan}: {e}"))),
    };
    let mut c = client::connect(socket).await?;
    let environment = environment.unwrap_or_default().to_string();
    let resp = c.apply_plan(pb::ApplyPlanRequest { id, document, environment, accept_drift }).await?.into_inner();
    let applied: Vec<_> = resp
        .applied
        .iter()
        .map(|a| serde_json::json!({"name": a.name, "action": a.action, "revision": a.revision}))
        .collect();
    let as_data = serde_json::json!({"id": resp.id, "environment": resp.environment, "applied": applied});
    if output::structured(fmt, &as_data) {
        return Ok(());
    }
    for a in &resp.applied {
        match a.action.as_str() {
            "destroy" => println!("{}: delete requested", a.name),
            _ => println!("{}: revision {} applied ({})", a.name, a.revision, a.action),
        }
    }
    println!(
        "plan {} applied to environment {}: {} change(s); `era watch` follows them",
        resp.id,
        resp.environment,
        resp.applied.len()
    );
    Ok(())
}
