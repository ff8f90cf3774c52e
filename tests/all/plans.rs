//! `era plan` and `era apply --plan` against the real erad with the noop
//! fixture (and a real registry for tag pinning): a plan changes nothing, says
//! field by field what an apply would do, and is applied exactly, or not at
//! all once what it was made against has moved.

use era_tests::{Erad, Registry};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A noop spec in `dir`, with a file artifact of its own.
fn write_spec(dir: &Path, name: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let content = format!("artifact of {name}");
    std::fs::write(dir.join(format!("{name}.bin")), &content).unwrap();
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{file: {name}.bin, sha256: \"{}\"}}\n{extra}",
        era_tests::sha256(content.as_bytes())
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Everything erad records about deployments (all tables but the saved
/// plans), and every file under the work dirs with its content.
fn recorded(erad: &Erad) -> Vec<String> {
    let db = open_db(erad);
    let mut rows = Vec::new();
    for table in ["deployments", "revisions", "journal", "artifacts", "tags", "port_claims", "meta"] {
        let mut st = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let n = st.column_count();
        let mut q = st.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let cols: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
            rows.push(format!("{table}: {}", cols.join(" | ")));
        }
    }
    let deployments = erad.data_dir().join("deployments");
    for f in era_tests::files_under(&deployments) {
        let bytes = std::fs::read(deployments.join(&f)).unwrap_or_default();
        rows.push(format!("file {f}: {}", era_tests::sha256(&bytes)));
    }
    rows
}

fn open_db(erad: &Erad) -> rusqlite::Connection {
    erad.db()
}

/// A revision's spec as erad recorded it.
fn revision_spec(erad: &Erad, name: &str, revision: u64) -> serde_json::Value {
    let text: String = open_db(erad)
        .query_row(
            "SELECT spec FROM revisions WHERE deployment = ?1 AND revision = ?2",
            rusqlite::params![name, revision as i64],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn plan_id(erad: &Erad, args: &[&str]) -> String {
    let mut all = vec!["-o", "json", "plan"];
    all.extend_from_slice(args);
    let a = erad.era(&all);
    assert_eq!(a.code, 0, "{a:?}");
    a.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn a_plan_says_field_by_field_what_would_change_changes_nothing_and_is_applied_exactly() {
    let erad = Erad::start();
    let set = erad.dir.path().join("set");
    // On record: b (to change), c (to destroy), both by `era apply -f`.
    let b = write_spec(&set, "b", "  env: {LEVEL: \"1\"}\n");
    assert_eq!(erad.apply_wait(&b).code, 0);
    let c = write_spec(&erad.dir.path().join("elsewhere"), "c", "");
    assert_eq!(erad.apply_wait(&c).code, 0);
    // The desired set: a new, b changed, c gone.
    write_spec(&set, "a", "");
    write_spec(&set, "b", "  env: {LEVEL: \"2\", EXTRA: \"x\"}\n");
    let before = recorded(&erad);
    let starts_b = erad.noop_state("b", 1).unwrap()["starts"].clone();

    let set_arg = set.to_str().unwrap();
    let a = erad.era(&["plan", "-f", set_arg, "--detailed-exitcode"]);
    assert_eq!(a.code, 5, "changes present: {a:?}");
    for line in [
        "+ a (add)",
        "~ b (change)",
        "spec.env.EXTRA: (none) -> \"x\"",
        "spec.env.LEVEL: \"1\" -> \"2\"",
        "- c (destroy)",
        "1 to add, 1 to change, 1 to destroy, 0 unchanged.",
    ] {
        assert!(a.stdout.contains(line), "missing {line:?} in:\n{}", a.stdout);
    }
    let json = erad.era(&["-o", "json", "plan", "-f", set_arg]).json();
    let actions: Vec<(String, String)> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["action"].as_str().unwrap().into()))
        .collect();
    assert_eq!(actions, [("a".into(), "add".into()), ("b".into(), "change".into()), ("c".into(), "destroy".into())]);
    // Nothing in the store, the work dirs or the runtime moved.
    assert_eq!(recorded(&erad), before, "a plan changed what erad records");
    assert!(erad.noop_state("a", 1).is_none(), "a plan made a workload");
    assert_eq!(erad.noop_state("b", 1).unwrap()["starts"], starts_b);

    let id = json["id"].as_str().unwrap();
    let a = erad.era(&["apply", "--plan", id]);
    assert_eq!(a.code, 0, "{a:?}");
    erad.wait_for_state("a", "Running", T);
    let b = erad.wait_for_state("b", "Running", T);
    assert_eq!(b["revision"], 2);
    erad.wait_for_state("c", "Deleted", T);
    assert!(erad.noop_running("b", 2) && erad.noop_running("a", 1));

    // Now the set is what runs: no changes (exit 0), and the applied plan
    // cannot be applied again.
    let again = erad.era(&["plan", "-f", set_arg, "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("= a (no-op)") && again.stdout.contains("No changes."), "{again:?}");
    let twice = erad.era(&["apply", "--plan", id]);
    assert_eq!(twice.code, 1, "{twice:?}");
    assert!(twice.stderr.contains(&format!("plan {id} was applied at")), "{twice:?}");
}

#[test]
fn a_plan_whose_recorded_state_moved_or_whose_file_was_altered_is_refused_and_changes_nothing() {
    let erad = Erad::start();
    let set = erad.dir.path().join("set");
    let a = write_spec(&set, "a", "");
    assert_eq!(erad.apply_wait(&a).code, 0);
    write_spec(&set, "a", "  env: {V: \"planned\"}\n");
    let set_arg = set.to_str().unwrap();

    // Someone applies by hand after the plan was made: stale.
    let id = plan_id(&erad, &["-f", set_arg]);
    let by_hand = write_spec(&erad.dir.path().join("hand"), "a", "  env: {V: \"by-hand\"}\n");
    assert_eq!(erad.apply_wait(&by_hand).code, 0);
    let before = recorded(&erad);
    let stale = erad.era(&["apply", "--plan", &id]);
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(stale.stderr.contains(&format!("plan {id} is stale: deployment a moved to another revision")), "{stale:?}");
    assert_eq!(recorded(&erad), before, "a refused plan changed something");

    // A deployment joins the environment after the plan: stale too.
    let id = plan_id(&erad, &["-f", set_arg]);
    let newcomer = write_spec(&erad.dir.path().join("hand"), "newcomer", "");
    assert_eq!(erad.apply_wait(&newcomer).code, 0);
    let joined = erad.era(&["apply", "--plan", &id]);
    assert!(joined.stderr.contains("deployment newcomer joined environment default"), "{joined:?}");

    // A plan file altered after `era plan --out` wrote it: refused, though
    // the plan it names is fresh.
    let out = erad.dir.path().join("plan.json");
    let a = erad.era(&["plan", "-f", set_arg, "--out", out.to_str().unwrap()]);
    assert_eq!(a.code, 0, "{a:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "the plan file holds specs");
    // Applied as a plan of another environment: refused.
    let elsewhere = erad.era(&["apply", "--plan", out.to_str().unwrap(), "--env", "prod"]);
    assert!(
        elsewhere.code == 2 && elsewhere.stderr.contains("is a plan of environment default, not prod"),
        "{elsewhere:?}"
    );
    assert!(a.stdout.contains(&format!("era apply --plan {}", out.display())), "{a:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::write(&out, text.replace("planned", "altered")).unwrap();
    let before = recorded(&erad);
    let altered = erad.era(&["apply", "--plan", out.to_str().unwrap()]);
    assert_eq!(altered.code, 2, "{altered:?}");
    assert!(altered.stderr.contains("it was altered"), "{altered:?}");
    assert_eq!(recorded(&erad), before);
    // As written, it applies: what the plan said, not what was edited in.
    std::fs::write(&out, text).unwrap();
    let a = erad.era(&["apply", "--plan", out.to_str().unwrap()]);
    assert_eq!(a.code, 0, "{a:?}");
    let d = erad.wait_for_state("a", "Running", T);
    assert_eq!(d["desired_revision"], 3);
    let revision = revision_spec(&erad, "a", 3);
    assert_eq!(revision["spec"]["env"]["V"], "planned", "{revision}");

    // Unknown and malformed ids.
    let unknown = erad.era(&["apply", "--plan", "0123456789ab"]);
    assert!(unknown.code != 0 && unknown.stderr.contains("no plan 0123456789ab"), "{unknown:?}");
    let bad = erad.era(&["apply", "--plan", "x;rm"]);
    assert!(bad.code == 2 && bad.stderr.contains("is not a plan id"), "{bad:?}");
}

#[test]
fn a_plan_pins_each_tag_to_the_digest_it_resolved_and_the_apply_deploys_that_digest() {
    let registry = Registry::start();
    let v1 = registry.push_image("plans/app", "stable", &[("version", "1")]);
    let erad = Erad::start();
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: app}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{}/plans/app:stable\"}}\n",
        registry.addr
    );
    let spec = erad.spec("app.yaml", &yaml);
    let before = recorded(&erad);
    let plan = erad.era(&["-o", "json", "plan", "-f", spec.to_str().unwrap()]).json();
    assert_eq!(plan["changes"][0]["pinned"]["digest"], v1.as_str(), "{plan}");
    // Resolving the tag recorded nothing (the tags table is as it was) and
    // fetched no blob.
    assert_eq!(recorded(&erad), before);
    let blobs = erad.data_dir().join("content/blobs");
    let fetched: Vec<String> = era_tests::files_under(&blobs).into_iter().filter(|f| blobs.join(f).is_file()).collect();
    assert!(fetched.is_empty(), "a plan fetched {fetched:?}");

    // The tag moves; the plan still deploys what it showed.
    let v2 = registry.push_image("plans/app", "stable", &[("version", "2")]);
    assert_ne!(v1, v2);
    let a = erad.era(&["apply", "--plan", plan["id"].as_str().unwrap()]);
    assert_eq!(a.code, 0, "{a:?}");
    let d = erad.wait_for_state("app", "Running", T);
    assert_eq!(d["artifact_digest"], v1.as_str());

    // A new plan sees the tag moved: a change of the pinned digest.
    let next = erad.era(&["plan", "-f", spec.to_str().unwrap()]);
    // IfNotPresent (the default for a tag other than latest) takes the
    // digest this host resolved the tag to: no change.
    assert!(next.stdout.contains("= app (no-op"), "{next:?}");
    let always = erad.spec("always.yaml", &yaml.replace("stable\"}", "stable\", pullPolicy: Always}"));
    let next = erad.era(&["plan", "-f", always.to_str().unwrap()]);
    assert!(next.stdout.contains("~ app (change"), "{next:?}");
    assert!(
        next.stdout.contains(&format!("spec.artifact.sha256: \"{v1}\" -> \"{v2}\"")),
        "the moved tag shows as a digest change: {next:?}"
    );
}

#[test]
fn a_set_that_cannot_be_planned_is_refused_naming_the_file_and_the_field() {
    let erad = Erad::start();
    let dir = erad.dir.path().join("bad");
    let a = write_spec(&dir, "a", "");
    let plan = |path: &Path, env: &str| erad.era(&["plan", "-f", path.to_str().unwrap(), "--env", env]);

    // A spec of another environment in this one's set.
    let text = std::fs::read_to_string(&a).unwrap().replace("name: a}", "name: a, environment: prod}");
    std::fs::write(&a, &text).unwrap();
    let r = plan(&a, "staging");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("metadata.environment is \"prod\", but this is a plan for environment \"staging\""),
        "{r:?}"
    );
    // The same spec twice in one multi-document file.
    let twice = dir.join("twice.yaml");
    std::fs::write(&twice, format!("{text}---\n{text}")).unwrap();
    let r = plan(&twice, "prod");
    assert!(r.code == 2 && r.stderr.contains("(document 2): deployment \"a\" is also in"), "{r:?}");
    // A name another environment uses is this one's own deployment here.
    std::fs::write(&a, text.replace("environment: prod", "environment: qa")).unwrap();
    assert_eq!(erad.apply_wait(&a).code, 0);
    std::fs::write(&a, &text).unwrap();
    let r = erad.era(&["-o", "json", "plan", "-f", a.to_str().unwrap(), "--env", "prod"]).json();
    assert_eq!(r["changes"][0]["action"], "add", "{r}");
    // An environment name that cannot be one, and a runtime erad lacks.
    let r = plan(&a, "Prod");
    assert!(r.code == 2 && r.stderr.contains("--env: \"Prod\" is not a valid name"), "{r:?}");
    let other = write_spec(&dir, "z", "").to_path_buf();
    let z = std::fs::read_to_string(&other).unwrap().replace("runtime: noop", "runtime: nowhere");
    std::fs::write(&other, z).unwrap();
    let r = plan(&other, "default");
    assert!(r.code == 2 && r.stderr.contains("z.yaml: deployment z: runtime \"nowhere\" is not loaded"), "{r:?}");
    // Nothing of it reached the record of environment prod.
    assert_eq!(erad.get("a")["environment"], "qa");

    // A spec that names no environment takes the plan's.
    let s = write_spec(&erad.dir.path().join("staging"), "s", "");
    let id = plan_id(&erad, &["-f", s.to_str().unwrap(), "--env", "staging"]);
    assert_eq!(erad.era(&["apply", "--plan", &id]).code, 0);
    erad.wait_for_state("s", "Running", T);
    assert_eq!(erad.get("s")["environment"], "staging");
    // ...and a plan of another environment neither sees nor destroys it.
    let other = write_spec(&erad.dir.path().join("dev"), "d", "");
    let dev = erad.era(&["-o", "json", "plan", "-f", other.to_str().unwrap(), "--env", "dev"]).json();
    assert_eq!(dev["changes"].as_array().unwrap().len(), 1, "{dev}");
}

#[test]
fn a_plan_whose_spec_no_longer_validates_is_refused_before_anything_changes() {
    let erad = Erad::start();
    let set = erad.dir.path().join("set");
    write_spec(&set, "a", "");
    write_spec(&set, "b", "");
    let id = plan_id(&erad, &["-f", set.to_str().unwrap()]);
    // b's artifact goes after the plan was made: a's add must not happen
    // alone.
    std::fs::remove_file(set.join("b.bin")).unwrap();
    let before = recorded(&erad);
    let r = erad.era(&["apply", "--plan", &id]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("b.yaml") && r.stderr.contains("b.bin"), "{r:?}");
    assert_eq!(recorded(&erad), before, "part of the plan was applied");
    assert_eq!(erad.era(&["get", "a"]).code, 1, "a was added alone");
}

#[test]
fn a_restart_does_not_make_a_plan_stale_and_an_empty_set_is_refused() {
    let erad = Erad::start();
    let set = erad.dir.path().join("set");
    // A workload that crashes and is restarted (journal entries, the same
    // revision) after the plan was made.
    let a = write_spec(&set, "a", "  restart: {policy: always}\n");
    assert_eq!(erad.apply_wait(&a).code, 0);
    write_spec(&set, "b", "");
    let id = plan_id(&erad, &["-f", set.to_str().unwrap()]);
    erad.set_noop_running("a", 1, false, Some(3));
    let restarted = |erad: &Erad| erad.history("a").iter().any(|e| e["from"] == "Running" && e["to"] == "Activating");
    era_tests::eventually(T, || restarted(&erad) && erad.get("a")["state"] == "Running");
    // The plan still applies.
    let r = erad.era(&["apply", "--plan", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    erad.wait_for_state("b", "Running", T);

    // An empty directory is not "destroy everything"; what a directory
    // holds besides specs is named.
    let empty = erad.dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("notes.txt"), "not a spec").unwrap();
    let r = erad.era(&["plan", "-f", empty.to_str().unwrap()]);
    assert!(r.code == 2 && r.stderr.contains("the set has no deployment spec"), "{r:?}");
    assert!(r.stderr.contains("skipped") && r.stderr.contains("sub (a directory: not read)"), "{r:?}");
    assert!(r.stderr.contains("notes.txt (not a .yaml, .yml or .json file)"), "{r:?}");
    std::fs::remove_dir(empty.join("sub")).unwrap();
    std::fs::remove_file(empty.join("notes.txt")).unwrap();
    // Upper-case extensions are specs too.
    let upper = write_spec(&set, "c", "");
    std::fs::rename(&upper, set.join("C.YAML")).unwrap();
    let json = erad.era(&["-o", "json", "plan", "-f", set.to_str().unwrap()]).json();
    assert!(json["changes"].as_array().unwrap().iter().any(|c| c["name"] == "c" && c["action"] == "add"), "{json}");
    // Two deployments of one set claiming one port.
    write_spec(&empty, "p1", "  ports: [{name: web, port: 18080}]\n");
    write_spec(&empty, "p2", "  ports: [{name: web, port: 18080}]\n");
    let r = erad.era(&["plan", "-f", empty.to_str().unwrap()]);
    assert!(
        r.code == 2 && r.stderr.contains("port 18080/tcp is claimed by deployment \"p1\" of the same set too"),
        "{r:?}"
    );
}

#[test]
fn an_image_applied_by_a_tag_naming_an_index_plans_as_no_change() {
    let registry = Registry::start();
    let (index_digest, amd64, arm64) = registry.push_two_platform_index("plans/multi", "v1");
    let erad = Erad::start();
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: multi}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{}/plans/multi:v1\", pullPolicy: Always}}\n",
        registry.addr
    );
    let spec = erad.spec("multi.yaml", &yaml);
    assert_eq!(erad.apply_wait(&spec).code, 0);
    let host = if cfg!(target_arch = "aarch64") { &arm64 } else { &amd64 };
    assert_eq!(erad.get("multi")["artifact_digest"], host.as_str());
    // The plan pins the index; the revision ran its host manifest: the same.
    let plan = erad.era(&["-o", "json", "plan", "-f", spec.to_str().unwrap()]).json();
    assert_eq!(plan["changes"][0]["pinned"]["digest"], index_digest.as_str(), "{plan}");
    assert_eq!(plan["changes"][0]["action"], "no-op", "{plan}");
    // Another index under the tag is a change.
    let arm = registry.manifest_entry("plans/multi", &arm64);
    let other = era_tests::two_platform_index(&arm, &arm);
    registry.push_manifest("plans/multi", "v1", "application/vnd.oci.image.index.v1+json", &other);
    let plan = erad.era(&["-o", "json", "plan", "-f", spec.to_str().unwrap()]).json();
    assert_eq!(plan["changes"][0]["action"], "change", "{plan}");
}

#[test]
fn a_plan_erad_died_applying_is_named_interrupted_and_a_new_plan_does_the_rest() {
    let config = format!("{}\n[locks]\nwait = \"20s\"\nstale_after = \"2s\"\n", era_tests::fixture_plugins());
    let mut erad = Erad::start_with(&config, &[("ERAD_TEST_PAUSE_PLAN", "1")]);
    let set = erad.dir.path().join("set");
    write_spec(&set, "a", "");
    write_spec(&set, "b", "");
    let id = plan_id(&erad, &["-f", set.to_str().unwrap()]);
    // Killed after the plan's first change was made, before its second.
    erad.kill9_at(&["apply", "--plan", &id], &format!("paused-plan-{id}-1"));
    erad.spawn(&[]).unwrap();
    // What it did stays and goes on; the rest never started.
    erad.wait_for_state("a", "Running", T);
    assert_eq!(erad.era(&["get", "b"]).code, 1, "b was added after the crash");
    // The plan is not "applied": it is named as interrupted.
    let r = erad.era(&["apply", "--plan", &id]);
    assert!(
        r.code == 1 && r.stderr.contains("stopped short (erad stopped while applying it): what it did stays"),
        "{r:?}"
    );
    // A new plan (once the dead apply's lock went stale) does the rest.
    let plan = erad.era(&["-o", "json", "plan", "-f", set.to_str().unwrap()]).json();
    let actions: Vec<(&str, &str)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["action"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, [("a", "no-op"), ("b", "add")], "{plan}");
    let r = erad.era(&["apply", "--plan", plan["id"].as_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    erad.wait_for_state("b", "Running", T);
    // Applied to its end, it is "applied".
    let r = erad.era(&["apply", "--plan", plan["id"].as_str().unwrap()]);
    assert!(r.code == 1 && r.stderr.contains("was applied at"), "{r:?}");
}
