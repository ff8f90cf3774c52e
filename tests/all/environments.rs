//! A deployment is its environment and its name: the same name in two
//! environments is two deployments, each with its own record, work dir and
//! runtime objects (the noop fixture, and real runc containers), which
//! commands name with `--env`.

use era_tests::{Erad, Registry};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A noop spec of `name` in `environment`, with its own file artifact.
fn noop_spec(erad: &Erad, name: &str, environment: &str, content: &str) -> PathBuf {
    let artifact = format!("{environment}-{name}.bin");
    std::fs::write(erad.dir.path().join(&artifact), content).unwrap();
    erad.spec(
        &format!("{environment}-{name}.yaml"),
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}, environment: {environment}}}\nspec:\n  runtime: noop\n  artifact: {{file: {artifact}, sha256: \"{}\"}}\n",
            era_tests::sha256(content.as_bytes())
        ),
    )
}

fn get(erad: &Erad, name: &str, env: &str) -> serde_json::Value {
    let a = erad.era(&["-o", "json", "get", name, "--env", env]);
    assert_eq!(a.code, 0, "{a:?}");
    a.json()
}

#[test]
fn the_same_name_in_two_environments_is_two_deployments_named_with_env() {
    let erad = Erad::start();
    for env in ["qa", "prod"] {
        let a = erad.apply_wait(&noop_spec(&erad, "web", env, &format!("web of {env}")));
        assert_eq!(a.code, 0, "{a:?}");
        assert!(a.stdout.contains(&format!("web (environment {env}) is Running revision 1")), "{a:?}");
    }
    // Each has its own workload (its work dir is named by its id).
    assert!(erad.noop_running("qa-web", 1) && erad.noop_running("prod-web", 1));
    assert_eq!(get(&erad, "web", "qa")["environment"], "qa");
    assert_eq!(get(&erad, "web", "prod")["environment"], "prod");
    let list = erad.era(&["-o", "json", "list"]).json();
    let envs: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["environment"].as_str().unwrap()).collect();
    assert_eq!(envs, ["prod", "qa"], "{list}");
    let only = erad.era(&["-o", "json", "list", "--env", "qa"]).json();
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");

    // Without --env, a name two environments use is refused, naming them.
    for cmd in [&["get", "web"][..], &["stop", "web"], &["delete", "web"], &["history", "web"], &["logs", "web"]] {
        let r = erad.era(cmd);
        assert_eq!(r.code, 2, "{cmd:?}: {r:?}");
        assert!(
            r.stderr
                .contains("there is a deployment \"web\" in each of the environments prod, qa: name one with --env"),
            "{cmd:?}: {r:?}"
        );
    }
    assert_eq!(erad.era(&["get", "web", "--env", "dev"]).code, 1, "no web in dev");

    // A command on one leaves the other alone.
    let r = erad.era(&["stop", "web", "--env", "qa", "--wait"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("web (environment qa) is Stopped"), "{r:?}");
    assert!(!erad.noop_running("qa-web", 1) && erad.noop_running("prod-web", 1));
    assert_eq!(get(&erad, "web", "prod")["state"], "Running");
    let prod = erad.era(&["-o", "json", "history", "web", "--env", "prod"]).json();
    assert!(prod.as_array().unwrap().iter().all(|e| e["to"] != "Stopping"), "qa's stop is not prod's: {prod}");
    // A new revision of one is that one's.
    let a = erad.apply_wait(&noop_spec(&erad, "web", "prod", "web of prod, v2"));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(get(&erad, "web", "prod")["revision"], 2);
    assert_eq!(get(&erad, "web", "qa")["desired_revision"], 1);

    // A plan of one environment sees only its own web; a destroy of the
    // other removes only that one.
    let plan = erad.era(&[
        "-o",
        "json",
        "plan",
        "-f",
        erad.dir.path().join("prod-web.yaml").to_str().unwrap(),
        "--env",
        "prod",
    ]);
    assert_eq!(plan.json()["changes"][0]["action"], "no-op", "{plan:?}");
    assert_eq!(plan.json()["changes"].as_array().unwrap().len(), 1, "{plan:?}");
    let r = erad.era(&["destroy", "--env", "qa", "--confirm", "qa", "--wait"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(get(&erad, "web", "qa")["state"], "Deleted");
    assert_eq!(get(&erad, "web", "prod")["state"], "Running");
    assert!(erad.noop_running("prod-web", 2));
    // With one live web left, the name alone finds it.
    assert_eq!(erad.get("web")["environment"], "prod");
}

#[test]
fn an_id_another_deployment_holds_is_given_a_suffix() {
    let erad = Erad::start();
    // Environment a's b-c and environment a-b's c would both be a-b-c.
    let first = erad.apply_wait(&noop_spec(&erad, "b-c", "a", "one"));
    assert_eq!(first.code, 0, "{first:?}");
    let second = erad.apply_wait(&noop_spec(&erad, "c", "a-b", "two"));
    assert_eq!(second.code, 0, "{second:?}");
    assert!(erad.noop_running("a-b-c", 1) && erad.noop_running("a-b-c-2", 1));
    assert_eq!(get(&erad, "b-c", "a")["state"], "Running");
    assert_eq!(get(&erad, "c", "a-b")["state"], "Running");
    // Deleted, the holder still keeps its id (its history is under it).
    assert_eq!(erad.era(&["delete", "b-c", "--env", "a", "--wait"]).code, 0);
    assert_eq!(erad.apply_wait(&noop_spec(&erad, "c", "a-b", "two")).code, 0, "unchanged");
    assert!(erad.noop_running("a-b-c-2", 1));
}

fn container_config() -> String {
    format!(
        "[plugins.container]\npath = \"{}\"\ngrants = {{ log = true, oci = {{ runtimes = [\"runc\"], host_namespaces = [\"network\"] }} }}\n",
        era_tests::plugin::CONTAINER
    )
}

fn runc(erad: &Erad, args: &[&str]) -> std::process::Output {
    Command::new("runc").arg("--root").arg(erad.data_dir().join("runtimes/oci/runc")).args(args).output().unwrap()
}

/// The runc container whose id ends with `-ID-REV`.
fn container(erad: &Erad, id: &str, rev: u64) -> Option<String> {
    let out = runc(erad, &["list", "-q"]);
    let suffix = format!("-{id}-{rev}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|c| c.starts_with("era-") && c.ends_with(&suffix))
        .map(str::to_string)
}

#[test]
fn containers_of_one_name_in_two_environments_run_apart_and_one_removed_by_hand_is_drift() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", "exec sleep 600"], &[]);
    let erad = Erad::start_with(&container_config(), &[]);
    let image = format!("{}/demo/box:1", registry.addr);
    for env in ["staging", "prod"] {
        let yaml = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: web, environment: {env}}}\nspec:\n  runtime: container\n  artifact: {{image: \"{image}\"}}\n  stopGracePeriod: 2s\n"
        );
        let a = erad.apply_wait(&erad.spec(&format!("{env}.yaml"), &yaml));
        assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    }
    let staging = container(&erad, "staging-web", 1).expect("staging's web runs in runc");
    let prod = container(&erad, "prod-web", 1).expect("prod's web runs in runc");
    assert_ne!(staging, prod);
    // Real containers installed through erad are no invariant breach.
    let invariants = |erad: &Erad| erad.era(&["-o", "json", "invariants"]).json();
    assert_eq!(invariants(&erad), serde_json::json!([]));

    // staging's container is killed and removed behind erad's back.
    let out = runc(&erad, &["delete", "--force", &staging]);
    assert!(out.status.success(), "{out:?}");
    let report = |env: &str| erad.era(&["-o", "json", "report", "--env", env]).json();
    let r = report("staging");
    assert_eq!(r["environments"][0]["standing"], "drifted", "{r}");
    assert!(r["deployments"][0]["detail"].as_str().unwrap().contains("the container does not exist"), "{r}");
    assert_eq!(report("prod")["environments"][0]["standing"], "healthy");
    let plan = erad.era(&["plan", "-f", erad.dir.path().join("staging.yaml").to_str().unwrap(), "--env", "staging"]);
    assert!(plan.stdout.contains("! drifted: recorded Running, but the runtime says it is not running"), "{plan:?}");
    // prod's container was never touched.
    assert_eq!(container(&erad, "prod-web", 1), Some(prod));
    // Gone behind erad's back is drift, not a breach; a delete through erad
    // leaves nothing behind.
    assert_eq!(invariants(&erad), serde_json::json!([]));
    assert_eq!(erad.era(&["delete", "web", "--env", "prod", "--wait"]).code, 0);
    assert_eq!(container(&erad, "prod-web", 1), None);
    assert_eq!(invariants(&erad), serde_json::json!([]));
}

#[test]
fn a_spec_that_suspends_its_deployment_stops_it_until_a_spec_that_does_not() {
    let erad = Erad::start();
    let spec = noop_spec(&erad, "job", "qa", "job");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    assert_eq!(erad.noop_state("qa-job", 1).unwrap()["starts"], 1);
    let text = std::fs::read_to_string(&spec).unwrap();
    let suspended = erad.spec("qa-job-suspended.yaml", &format!("{text}  suspended: true\n"));

    // A plan shows it as the one field it changes.
    let plan = erad.era(&["-o", "json", "plan", "-f", suspended.to_str().unwrap(), "--env", "qa"]).json();
    assert_eq!(plan["changes"][0]["action"], "change", "{plan}");
    assert_eq!(plan["changes"][0]["fields"][0]["path"], "spec.suspended", "{plan}");
    assert_eq!(plan["changes"][0]["fields"].as_array().unwrap().len(), 1, "{plan}");
    let r = erad.era(&["apply", "--plan", plan["id"].as_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let d = erad.wait_for_state("job", "Stopped", T);
    // Stopped, the same revision (no new workload), its work dir kept.
    assert_eq!(
        (d["suspended"].as_bool(), d["revision"].as_u64(), d["desired_revision"].as_u64()),
        (Some(true), Some(1), Some(1))
    );
    assert!(!erad.noop_running("qa-job", 1) && erad.noop_state("qa-job", 1).is_some());
    // Applied again, the same spec changes nothing; a plan of it is a no-op.
    let again = erad.era(&["apply", "-f", suspended.to_str().unwrap(), "--wait"]);
    assert!(again.code == 0 && again.stdout.contains("unchanged"), "{again:?}");
    let plan = erad.era(&["-o", "json", "plan", "-f", suspended.to_str().unwrap(), "--env", "qa"]).json();
    assert_eq!(plan["changes"][0]["action"], "no-op", "{plan}");

    // Nothing runs it while its spec suspends it.
    for cmd in [&["start", "job", "--env", "qa"][..], &["rollback", "job", "--env", "qa", "--to", "1"]] {
        let r = erad.era(cmd);
        assert!(
            r.code == 2 && r.stderr.contains("it is suspended by its spec (spec.suspended: true)"),
            "{cmd:?}: {r:?}"
        );
    }
    // Suspending and changing at once is refused, at plan time and at apply.
    let both = erad.spec("both.yaml", &format!("{text}  suspended: true\n  env: {{A: \"1\"}}\n"));
    let r = erad.era(&["plan", "-f", both.to_str().unwrap(), "--env", "qa"]);
    assert!(
        r.code == 2
            && r.stderr.contains("spec.suspended: a spec that suspends its deployment cannot change anything else"),
        "{r:?}"
    );
    let r = erad.era(&["apply", "-f", both.to_str().unwrap()]);
    assert!(r.code == 2 && r.stderr.contains("cannot change anything else"), "{r:?}");
    assert_eq!(erad.get("job")["desired_revision"], 1, "nothing was recorded");

    // Its spec without suspended resumes it: the same revision starts again.
    let r = erad.apply_wait(&spec);
    assert_eq!(r.code, 0, "{r:?}");
    let d = erad.get("job");
    assert_eq!(
        (d["state"].as_str(), d["suspended"].as_bool(), d["revision"].as_u64()),
        (Some("Running"), Some(false), Some(1))
    );
    assert_eq!(erad.noop_state("qa-job", 1).unwrap()["starts"], 2);
    assert!(erad.history("job").iter().any(|e| e["cause"] == "resumed: its spec no longer suspends it"));
    // One an operator stopped is not started by an unchanged apply.
    assert_eq!(erad.era(&["stop", "job", "--wait"]).code, 0);
    assert!(erad.era(&["apply", "-f", spec.to_str().unwrap()]).stdout.contains("unchanged"));
    assert_eq!(erad.get("job")["state"], "Stopped");

    // One an operator stopped stays stopped through a suspension and back.
    let r = erad.era(&["apply", "-f", suspended.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(erad.get("job")["suspended"], true);
    let r = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let d = erad.get("job");
    assert_eq!((d["state"].as_str(), d["suspended"].as_bool()), (Some("Stopped"), Some(false)), "{d}");
    assert_eq!(erad.noop_state("qa-job", 1).unwrap()["starts"], 2, "started by a resume it was not stopped by");

    // A new deployment cannot start suspended.
    let new = noop_spec(&erad, "new", "qa", "new");
    let new =
        erad.spec("new-suspended.yaml", &format!("{}  suspended: true\n", std::fs::read_to_string(&new).unwrap()));
    let r = erad.era(&["apply", "-f", new.to_str().unwrap()]);
    assert!(r.code == 2 && r.stderr.contains("a new deployment cannot start suspended"), "{r:?}");
}

/// A revision's spec column (`spec`: as its environment runs it; `written`:
/// as written) as JSON.
fn revision_column(erad: &Erad, id: &str, revision: u64, column: &str) -> serde_json::Value {
    let text: Option<String> = erad
        .db()
        .query_row(
            &format!("SELECT {column} FROM revisions WHERE deployment = ?1 AND revision = ?2"),
            rusqlite::params![id, revision as i64],
            |r| r.get(0),
        )
        .unwrap();
    text.map(|t| serde_json::from_str(&t).unwrap()).unwrap_or_default()
}

#[test]
fn a_revision_proven_in_staging_is_promoted_by_digest_with_only_the_targets_overlay() {
    let registry = Registry::start();
    let v1 = registry.push_image("promo/app", "stable", &[("version", "1")]);
    let config = format!("{}\n[environments.prod]\nprotected = true\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: app, environment: staging}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{}/promo/app:stable\"}}\n  env: {{LEVEL: base, KEEP: same}}\n  environments:\n    staging: {{env: {{LEVEL: staging}}}}\n    prod: {{env: {{LEVEL: prod}}, config: {{outputs: {{tier: gold}}}}}}\n",
        registry.addr
    );
    let a = erad.apply_wait(&erad.spec("app.yaml", &yaml));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(get(&erad, "app", "staging")["artifact_digest"], v1.as_str());
    // Staging runs its overlay merged, the overlays dropped; the spec as
    // written is kept beside it.
    let ran = revision_column(&erad, "staging-app", 1, "spec");
    assert_eq!(
        (ran["spec"]["env"]["LEVEL"].as_str(), ran["spec"]["env"]["KEEP"].as_str()),
        (Some("staging"), Some("same"))
    );
    assert!(ran["spec"].get("environments").is_none(), "{ran}");
    assert_eq!(
        revision_column(&erad, "staging-app", 1, "written")["spec"]["environments"]["prod"]["env"]["LEVEL"],
        "prod"
    );

    // The tag moves on; a promotion takes what staging verified, not the tag.
    let v2 = registry.push_image("promo/app", "stable", &[("version", "2")]);
    assert_ne!(v1, v2);
    let r = erad.era(&["-o", "json", "promote", "app", "--from", "staging", "--to", "qa"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["applied"], true, "{r:?}");
    assert_eq!(r.json()["promotion"]["digest"], v1.as_str(), "{r:?}");
    era_tests::eventually(T, || get(&erad, "app", "qa")["state"] == "Running");
    assert_eq!(get(&erad, "app", "qa")["artifact_digest"], v1.as_str());
    let ran = revision_column(&erad, "qa-app", 1, "spec");
    assert_eq!(ran["spec"]["env"]["LEVEL"], "base", "qa has no overlay: {ran}");
    // Again: already there, nothing new.
    let again = erad.era(&["promote", "app", "--from", "staging", "--to", "qa"]);
    assert!(again.code == 0 && again.stdout.contains("already runs it"), "{again:?}");
    assert_eq!(get(&erad, "app", "qa")["desired_revision"], 1);

    // A protected target gets a plan to apply, not a change.
    let r = erad.era(&["-o", "json", "promote", "app", "--from", "staging", "--to", "prod"]);
    assert_eq!((r.code, r.json()["applied"].as_bool()), (0, Some(false)), "{r:?}");
    assert_eq!(r.json()["changes"][0]["action"], "add", "{r:?}");
    assert_eq!(erad.era(&["get", "app", "--env", "prod"]).code, 1, "nothing applied yet");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let a = erad.era(&["apply", "--plan", &id]);
    assert_eq!(a.code, 0, "{a:?}");
    era_tests::eventually(T, || get(&erad, "app", "prod")["state"] == "Running");
    assert_eq!(get(&erad, "app", "prod")["artifact_digest"], v1.as_str());
    let ran = revision_column(&erad, "prod-app", 1, "spec");
    assert_eq!(ran["spec"]["env"]["LEVEL"], "prod", "{ran}");
    assert_eq!(ran["spec"]["config"]["outputs"]["tier"], "gold", "{ran}");
    // Both were applied from the same spec as written: only the
    // environment and the digest pin differ.
    let same = |id: &str| {
        let mut w = revision_column(&erad, id, 1, "written");
        w["metadata"].as_object_mut().unwrap().remove("environment");
        w["spec"]["artifact"].as_object_mut().unwrap().remove("sha256");
        w
    };
    assert_eq!(same("staging-app"), same("prod-app"));
    assert_eq!(revision_column(&erad, "prod-app", 1, "written")["spec"]["artifact"]["sha256"], v1.as_str());

    // On record, naming where it came from.
    let runs = erad.era(&["-o", "json", "runs", "--env", "prod"]).json();
    let run = runs.as_array().unwrap().iter().find(|r| r["kind"] == "promote").unwrap().clone();
    let shown = erad.era(&["-o", "json", "runs", "show", run["id"].as_str().unwrap()]).json();
    assert!(shown["log"].to_string().contains(&format!("from staging revision 1 (artifact {v1}")), "{shown}");

    // Refused: a source that does not run, the same environment, no source.
    assert_eq!(erad.era(&["stop", "app", "--env", "staging", "--wait"]).code, 0);
    let r = erad.era(&["promote", "app", "--from", "staging", "--to", "qa"]);
    assert!(r.code == 2 && r.stderr.contains("app in environment staging is Stopped"), "{r:?}");
    let r = erad.era(&["promote", "app", "--from", "qa", "--to", "qa"]);
    assert!(r.code == 2 && r.stderr.contains("promote to another environment"), "{r:?}");
    let r = erad.era(&["promote", "nope", "--from", "staging", "--to", "qa"]);
    assert!(r.code == 1 && r.stderr.contains("there is no deployment nope in environment staging"), "{r:?}");

    // An overlay that does not merge into a valid spec is refused at once.
    let bad =
        erad.spec("bad.yaml", &yaml.replace("prod: {env: {LEVEL: prod}", "prod: {ports: none, env: {LEVEL: prod}"));
    let r = erad.era(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(r.code == 2 && r.stderr.contains("spec.environments.prod (merged): spec.ports"), "{r:?}");
}

#[test]
fn an_overlay_naming_another_image_is_planned_and_pinned_as_its_environment_runs_it() {
    let registry = Registry::start();
    let base = registry.push_image("ovl/app", "base", &[("version", "base")]);
    let prod = registry.push_image("ovl/app", "prod", &[("version", "prod")]);
    let erad = Erad::start();
    let write = |env: &str, level: &str| {
        let dir = erad.dir.path().join(env);
        std::fs::create_dir_all(&dir).unwrap();
        erad.spec(
            &format!("{env}/app.yaml"),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: app}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{r}/ovl/app:base\"}}\n  environments:\n    prod: {{artifact: {{image: \"{r}/ovl/app:prod\"}}, env: {{LEVEL: \"{level}\"}}}}\n",
                r = registry.addr
            ),
        )
    };
    let plan_apply = |path: &std::path::Path, env: &str| {
        let plan = erad.era(&["-o", "json", "plan", "-f", path.to_str().unwrap(), "--env", env]);
        assert_eq!(plan.code, 0, "{plan:?}");
        let a = erad.era(&["apply", "--plan", plan.json()["id"].as_str().unwrap()]);
        assert_eq!(a.code, 0, "{a:?}");
        plan.json()
    };
    // prod's overlay names another tag: the plan pins that tag's digest.
    let plan = plan_apply(&write("prod", "1"), "prod");
    assert_eq!(plan["changes"][0]["pinned"]["digest"], prod.as_str(), "{plan}");
    era_tests::eventually(T, || get(&erad, "app", "prod")["state"] == "Running");
    assert_eq!(get(&erad, "app", "prod")["artifact_digest"], prod.as_str());
    let plan = plan_apply(&write("staging", "1"), "staging");
    assert_eq!(plan["changes"][0]["pinned"]["digest"], base.as_str(), "{plan}");
    era_tests::eventually(T, || get(&erad, "app", "staging")["state"] == "Running");
    assert_eq!(get(&erad, "app", "staging")["artifact_digest"], base.as_str());

    // prod's overlay changes: no change for staging, but what staging keeps
    // as written (what a promotion from it takes) follows.
    let plan = plan_apply(&write("staging", "2"), "staging");
    assert_eq!(plan["changes"][0]["action"], "no-op", "{plan}");
    let written = revision_column(&erad, "staging-app", 1, "written");
    assert_eq!(written["spec"]["environments"]["prod"]["env"]["LEVEL"], "2", "{written}");
    // A promotion that an overlay would give another artifact is refused.
    let r = erad.era(&["promote", "app", "--from", "staging", "--to", "prod"]);
    assert!(r.code == 2 && r.stderr.contains("the overlay of environment prod changes spec.artifact"), "{r:?}");
}

#[test]
fn a_promotion_into_a_suspended_deployment_is_refused() {
    let erad = Erad::start();
    let source = noop_spec(&erad, "web", "staging", "web v1");
    assert_eq!(erad.apply_wait(&source).code, 0);
    let target = noop_spec(&erad, "web", "prod", "web v0");
    assert_eq!(erad.apply_wait(&target).code, 0);
    let text = std::fs::read_to_string(&target).unwrap();
    let suspended = erad.spec("prod-web-suspended.yaml", &format!("{text}  suspended: true\n"));
    assert_eq!(erad.era(&["apply", "-f", suspended.to_str().unwrap()]).code, 0);
    era_tests::eventually(T, || get(&erad, "web", "prod")["state"] == "Stopped");
    let r = erad.era(&["promote", "web", "--from", "staging", "--to", "prod"]);
    assert!(r.code == 2 && r.stderr.contains("web in environment prod is suspended by its spec"), "{r:?}");
    assert_eq!(get(&erad, "web", "prod")["state"], "Stopped");
    assert!(!erad.noop_running("prod-web", 1));
}

#[test]
fn a_name_leaves_every_environment_only_once_each_copy_is_destroyed_and_the_reports_pass() {
    let erad = Erad::start();
    for env in ["qa", "prod"] {
        assert_eq!(erad.apply_wait(&noop_spec(&erad, "web", env, &format!("web of {env}"))).code, 0);
    }
    let all = |erad: &Erad| erad.era(&["delete", "web", "--all-envs"]);
    let r = all(&erad);
    assert!(r.code == 2 && r.stderr.contains("web is not destroyed in prod (Running), qa (Running)"), "{r:?}");
    assert_eq!(erad.era(&["delete", "web", "--env", "qa", "--wait"]).code, 0);
    let r = all(&erad);
    assert!(r.code == 2 && r.stderr.contains("web is not destroyed in prod (Running):"), "{r:?}");
    // prod's copy goes too, but something else in prod has drifted: its
    // report does not pass.
    assert_eq!(erad.apply_wait(&noop_spec(&erad, "other", "prod", "other")).code, 0);
    assert_eq!(erad.era(&["stop", "other", "--env", "prod", "--wait"]).code, 0);
    erad.set_noop_running("prod-other", 1, true, None);
    assert_eq!(erad.era(&["delete", "web", "--env", "prod", "--wait"]).code, 0);
    let r = all(&erad);
    assert!(
        r.code == 1 && r.stderr.contains("the report of environment prod does not pass (other is drifted"),
        "{r:?}"
    );
    assert_eq!(get(&erad, "web", "qa")["state"], "Deleted", "nothing was forgotten");
    // Resolved: the name leaves both.
    erad.set_noop_running("prod-other", 1, false, None);
    let r = all(&erad);
    assert!(r.code == 0 && r.stdout.contains("web forgotten in environment(s) prod, qa"), "{r:?}");
    for env in ["qa", "prod"] {
        assert_eq!(erad.era(&["get", "web", "--env", env]).code, 1);
        assert_eq!(erad.era(&["history", "web", "--env", env]).code, 1);
    }
    let runs = erad.era(&["-o", "json", "runs", "--env", "qa"]).json();
    assert!(runs.as_array().unwrap().iter().any(|r| r["kind"] == "delete --all-envs"), "{runs}");
    // The name, and its id, are free again.
    assert_eq!(erad.apply_wait(&noop_spec(&erad, "web", "qa", "web again")).code, 0);
    assert!(erad.noop_running("qa-web", 1));
    assert_eq!(get(&erad, "web", "qa")["revision"], 1);
    // Not a name anywhere; not with --env, but ERA_ENV in the shell is
    // no reason to refuse.
    let r = erad.era(&["delete", "nope", "--all-envs"]);
    assert!(r.code == 1 && r.stderr.contains("no environment has a deployment nope"), "{r:?}");
    let r = erad.era(&["delete", "web", "--all-envs", "--env", "qa"]);
    assert!(r.code == 2 && r.stderr.contains("--all-envs takes every environment: drop --env"), "{r:?}");
    let r = erad.era_with(&[("ERA_ENV", "qa")], &["delete", "nope", "--all-envs"]);
    assert!(r.code == 1 && r.stderr.contains("no environment has a deployment nope"), "{r:?}");
    // ...and ERA_ENV names the environment of the other commands.
    assert_eq!(erad.era_with(&[("ERA_ENV", "qa")], &["-o", "json", "get", "web"]).json()["environment"], "qa");
}
