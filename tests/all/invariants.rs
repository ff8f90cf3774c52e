//! Invariants against the real erad: a real runc container planted in
//! erad's own runc root under erad's naming, with no record behind it, halts
//! its environment's applies, starts and restarts until it is gone or an
//! admin acknowledges it; a leftover of a deleted deployment and a running
//! digest the trust policy no longer admits are breaches too.

use era_tests::{CosignKey, Erad, Registry};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// This erad's store id (part of every container name it makes).
fn instance(erad: &Erad) -> String {
    erad.db().query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0)).unwrap()
}

fn runc(erad: &Erad) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(erad.data_dir().join("runtimes/oci/runc"));
    c
}

/// Runs a real busybox container `id` in erad's runc root, behind erad's back.
fn plant(erad: &Erad, id: &str) {
    let bundle = erad.dir.path().join(format!("planted-{id}"));
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    let out = Command::new("runc").arg("spec").current_dir(&bundle).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/busybox", "sleep", "600"]);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let status = runc(erad)
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "runc run {id}");
}

fn remove(erad: &Erad, id: &str) {
    let out = runc(erad).args(["delete", "--force", id]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn invariants(erad: &Erad) -> Vec<serde_json::Value> {
    let r = erad.era(&["-o", "json", "invariants"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.json().as_array().cloned().unwrap()
}

fn noop(erad: &Erad, name: &str, environment: &str, extra: &str) -> std::path::PathBuf {
    let content = format!("{name} of {environment}");
    std::fs::write(erad.dir.path().join(format!("{environment}-{name}.bin")), &content).unwrap();
    erad.spec(
        &format!("{environment}-{name}.yaml"),
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}, environment: {environment}}}\nspec:\n  runtime: noop\n  artifact: {{file: {environment}-{name}.bin, sha256: \"{}\"}}\n{extra}",
            era_tests::sha256(content.as_bytes())
        ),
    )
}

#[test]
fn an_orphan_container_halts_its_environment_until_it_is_gone_or_acknowledged() {
    let config = format!("{}\n[drift]\ninterval = \"300ms\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let job = noop(&erad, "job", "default", "  restart: {policy: always}\n");
    assert_eq!(erad.apply_wait(&job).code, 0);
    assert!(invariants(&erad).is_empty());
    assert!(erad.era(&["invariants"]).stdout.contains("Every invariant holds."));

    // A container erad would have named, that no revision accounts for.
    let ghost = format!("era-{}-ghost-1", instance(&erad));
    plant(&erad, &ghost);
    let found = invariants(&erad);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["environment"], "default");
    assert_eq!(found[0]["kind"], "orphan");
    assert_eq!(found[0]["object"], format!("runc container {ghost}"));
    assert_eq!(found[0]["detail"], "no deployment ghost is recorded");

    // Its environment halts: applies, starts and restarts are refused, naming it.
    let halted = format!("environment default is halted by an invariant breach: runc container {ghost} (orphan");
    let web = noop(&erad, "web", "default", "");
    let r = erad.era(&["apply", "-f", web.to_str().unwrap()]);
    assert!(r.code == 1 && r.stderr.contains(&halted), "{r:?}");
    assert_eq!(erad.era(&["get", "web"]).code, 1, "nothing recorded");
    let plan = erad.era(&["-o", "json", "plan", "-f", web.to_str().unwrap()]);
    let id = plan.json()["id"].as_str().unwrap().to_string();
    let r = erad.era(&["apply", "--plan", &id]);
    assert!(r.code == 1 && r.stderr.contains(&halted), "{r:?}");
    let report = erad.era(&["report", "--env", "default"]);
    assert!(report.stdout.contains(&format!("HALTED: {halted}")), "{report:?}");
    // The job's workload exits: no restart while halted.
    erad.set_noop_running("job", 1, false, Some(3));
    era_tests::eventually(T, || erad.log().contains("not restarted: environment default is halted"));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(erad.noop_state("job", 1).unwrap()["starts"], 1, "restarted while halted");
    let r = erad.era(&["stop", "job", "--wait"]);
    assert_eq!(r.code, 0, "stopping is not reconciling: {r:?}");
    let r = erad.era(&["start", "job"]);
    assert!(r.code == 1 && r.stderr.contains(&halted), "{r:?}");
    // Other environments go on.
    assert_eq!(erad.apply_wait(&noop(&erad, "web", "qa", "")).code, 0);

    // Acknowledged (by an admin, confirmed): it goes on.
    let r = erad.era(&["invariants", "ack", "--env", "default"]);
    assert!(r.code == 2 && r.stderr.contains("--confirm default"), "{r:?}");
    let r = erad.era(&["-o", "json", "invariants", "ack", "--env", "default", "--confirm", "default"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()[0]["acknowledged_at"].as_str().is_some(), "{r:?}");
    assert_eq!(erad.apply_wait(&web).code, 0);
    assert_eq!(erad.era(&["start", "job", "--wait"]).code, 0);

    // Gone: resolved, and forgotten; a new orphan halts again (in qa, found
    // by erad's own periodic check).
    remove(&erad, &ghost);
    assert!(invariants(&erad).is_empty());
    let qa_ghost = format!("era-{}-qa-ghost-2", instance(&erad));
    plant(&erad, &qa_ghost);
    era_tests::eventually(T, || erad.era(&["report", "--env", "qa"]).stdout.contains("HALTED"));
    let r = erad.era(&["apply", "-f", noop(&erad, "web", "qa", "  env: {V: \"2\"}\n").to_str().unwrap()]);
    assert!(r.code == 1 && r.stderr.contains("environment qa is halted"), "{r:?}");
    assert_eq!(erad.apply_wait(&noop(&erad, "other", "default", "")).code, 0, "default is not halted");
    remove(&erad, &qa_ghost);

    // What a deleted deployment left on the runtime is a leftover.
    assert_eq!(erad.era(&["delete", "web", "--env", "default", "--wait"]).code, 0);
    let leftover = format!("era-{}-web-1", instance(&erad));
    plant(&erad, &leftover);
    let found = invariants(&erad);
    assert_eq!((found.len(), found[0]["kind"].as_str()), (1, Some("leftover")), "{found:?}");
    assert!(found[0]["detail"].as_str().unwrap().contains("deployment web was deleted"), "{found:?}");
    remove(&erad, &leftover);
    assert!(invariants(&erad).is_empty());
}

#[test]
fn a_running_digest_the_trust_policy_no_longer_admits_is_a_breach() {
    let registry = Registry::start();
    let digest = registry.push_image("inv/app", "1", &[("version", "1")]);
    let erad = Erad::start();
    let spec = erad.spec(
        "app.yaml",
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: app}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{}/inv/app:1\"}}\n",
            registry.addr
        ),
    );
    assert_eq!(erad.apply_wait(&spec).code, 0);
    assert!(invariants(&erad).is_empty(), "admitted unsigned");
    // The operator now requires a signature for that repository; what runs
    // was never checked against it.
    let mut erad = erad;
    erad.kill9();
    let keys = tempfile::tempdir().unwrap();
    let key = CosignKey::generate(keys.path(), "k");
    let config_path = erad.dir.path().join("erad.toml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "[[trust]]\nmatch = \"**\"\nallow_unsigned = true\n",
        &format!("[[trust]]\nmatch = \"{}/inv/**\"\nkeys = [\"{}\"]\n", registry.addr, key.public.display()),
    );
    assert!(config.contains("keys = "), "{config}");
    std::fs::write(&config_path, config).unwrap();
    erad.spawn(&[]).unwrap();
    let found = invariants(&erad);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0]["kind"].as_str(), found[0]["object"].as_str()), (Some("untrusted"), Some("deployment app")));
    assert!(found[0]["detail"].as_str().unwrap().contains(&format!("{digest} never passed trust rule")), "{found:?}");
}
