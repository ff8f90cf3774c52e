//! The CLI contract: exit codes, error messages, output formats, and the
//! checks that refuse bad input without changing anything.

use era_tests::{Erad, files_under};

#[test]
fn an_invalid_spec_exits_2_naming_the_field_and_changes_nothing() {
    let erad = Erad::start();
    let spec = erad.spec(
        "bad.yaml",
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  runtime: noop\n  artifact: {file: x.bin, sha256: \"00\"}\n  ports: [{name: http, port: 70000}]\n",
    );
    for cmd in ["apply", "validate"] {
        let a = erad.era(&[cmd, "-f", spec.to_str().unwrap()]);
        assert_eq!(a.code, 2, "{cmd}: {a:?}");
        assert!(a.stderr.contains("spec.ports[0].port"), "{cmd}: {a:?}");
        assert_eq!(a.stderr.lines().count(), 1, "one line a person can act on: {a:?}");
    }
    let missing_sha = erad.spec("nosha.yaml", "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  runtime: noop\n  artifact: {file: x.bin}\n");
    let a = erad.era(&["apply", "-f", missing_sha.to_str().unwrap()]);
    assert_eq!(a.code, 2);
    assert!(a.stderr.contains("spec.artifact.sha256: is required"), "{a:?}");
    assert_eq!(erad.era(&["get", "web"]).code, 1, "nothing was created");
    let unknown_runtime = erad.deployment("web", "nosuch", "v1", "");
    let v = erad.era(&["validate", "-f", unknown_runtime.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(
        v.stderr.contains("runtime \"nosuch\" is not loaded in this erad (loaded: hang, hog, noop, trap, unhealthy)"),
        "{v:?}"
    );
    let noop_config = erad.deployment("web", "noop", "v1", "  config: {colour: red}\n");
    let v = erad.era(&["validate", "-f", noop_config.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(v.stderr.contains("plugin noop: validate: invalid config") && v.stderr.contains("colour"), "{v:?}");
}

#[test]
fn a_huge_duration_is_refused_naming_it_and_erad_carries_on() {
    let erad = Erad::start();
    let spec = erad.deployment("web", "noop", "v1", "  health: {tcp: {port: 9}, interval: 10000000000000000000s}\n");
    for cmd in ["validate", "apply"] {
        let a = erad.era(&[cmd, "-f", spec.to_str().unwrap()]);
        assert_eq!(a.code, 2, "{cmd}: {a:?}");
        assert!(a.stderr.contains("spec.health.interval") && a.stderr.contains("the most erad allows (1h)"), "{a:?}");
    }
    assert_eq!(erad.era(&["get", "web"]).code, 1, "nothing was created");
    assert_eq!(erad.era(&["list"]).code, 0, "erad is still serving");
}

#[test]
fn a_wrong_sha256_fails_fetching_with_both_digests_and_installs_nothing() {
    let erad = Erad::start();
    std::fs::write(erad.dir.path().join("app.bin"), b"tampered").unwrap();
    let pinned = era_tests::sha256(b"original");
    let spec = erad.spec(
        "web.yaml",
        &format!("apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  runtime: noop\n  artifact: {{file: app.bin, sha256: \"{pinned}\"}}\n"),
    );
    let a = erad.apply_wait(&spec);
    assert_eq!(a.code, 1, "{a:?}");
    let d = erad.get("web");
    assert_eq!(d["state"], "Failed");
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains(&pinned) && msg.contains(&era_tests::sha256(b"tampered")), "{msg}");
    let h = erad.history("web");
    assert_eq!(h.last().unwrap()["from"], "Fetching");
    assert!(!h.iter().any(|e| e["to"] == "Installing"), "nothing was installed");
    assert_eq!(files_under(&erad.data_dir().join("content/blobs")), vec!["sha256".to_string()]);
    assert_eq!(files_under(&erad.data_dir().join("deployments")), Vec::<String>::new());
}

#[test]
fn a_port_claimed_by_one_deployment_fails_validation_of_another() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("a", "noop", "v1", "  ports: [{name: http, port: 18081}]\n")).code, 0);
    let b = erad.deployment("b", "noop", "v1", "  ports: [{name: web, port: 18081}]\n");
    let v = erad.era(&["validate", "-f", b.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(v.stderr.contains("port 18081/tcp is already claimed by deployment \"a\""), "{v:?}");
    let a = erad.apply_wait(&b);
    assert_eq!(a.code, 1, "{a:?}");
    let d = erad.get("b");
    assert_eq!(d["state"], "Failed");
    assert!(d["message"].as_str().unwrap().contains("already claimed by deployment \"a\""), "{d}");
    assert_eq!(erad.get("a")["state"], "Running");
}

#[test]
fn an_unreachable_daemon_exits_3() {
    let erad = Erad::start();
    let out = std::process::Command::new(era_tests::bin("era"))
        .args(["--socket", erad.dir.path().join("nothing.sock").to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach erad"), "{out:?}");
    assert_eq!(erad.era(&["get", "nosuch"]).code, 1);
    assert_eq!(erad.era(&["frobnicate"]).code, 2, "clap's usage errors are exit 2");
}

#[test]
fn read_commands_speak_table_json_and_yaml() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let table = erad.era(&["get", "web"]);
    assert!(table.stdout.starts_with("NAME") && table.stdout.contains("Running"), "{table:?}");
    let yaml = erad.era(&["-o", "yaml", "get", "web"]);
    assert!(yaml.stdout.contains("state: Running"), "{yaml:?}");
    for field in ["name", "state", "health", "revision", "desired_revision", "runtime", "artifact_digest", "updated_at"]
    {
        assert!(!erad.get("web")[field].is_null(), "{field}");
    }
    let plugins = erad.era(&["-o", "json", "plugins"]).json();
    let names: Vec<&str> = plugins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hang", "hog", "noop", "trap", "unhealthy"]);
}

#[test]
fn a_second_erad_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let mut erad = Erad::start();
    let second = std::process::Command::new(era_tests::bin("erad")).arg("--config").arg(&erad.config).output().unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another erad is already serving"), "{second:?}");
    erad.kill9();
    assert!(erad.socket().exists(), "kill -9 leaves the socket file behind");
    erad.spawn(&[]).expect("a stale socket is replaced");
    assert_eq!(erad.era(&["list"]).code, 0);
}

#[test]
fn sigterm_drains_and_exits_cleanly_leaving_workloads_alone() {
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let status = erad.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!erad.socket().exists());
    let state = erad.data_dir().join("deployments/web/rev-1/noop.json");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    assert_eq!(s["running"], true, "the workload outlives the daemon");
    erad.spawn(&[]).unwrap();
    assert_eq!(erad.get("web")["state"], "Running");
}

#[test]
fn watch_prints_one_json_line_per_transition() {
    use std::io::BufRead;
    let erad = Erad::start();
    let mut watch = std::process::Command::new(era_tests::bin("era"))
        .args(["--socket", erad.socket().to_str().unwrap(), "-o", "json", "watch", "web"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give the stream a moment to open before anything happens.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(erad.apply_wait(&erad.deployment("other", "noop", "v1", "")).code, 0);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v.get("progress").is_some() {
            continue;
        }
        assert_eq!(v["name"], "web", "only the watched deployment: {v}");
        seen.push(v["to"].as_str().unwrap().to_string());
        if v["to"] == "Running" {
            break;
        }
    }
    watch.kill().unwrap();
    let _ = watch.wait();
    assert_eq!(seen, ["Validating", "Fetching", "Preparing", "Installing", "Activating", "HealthChecking", "Running"]);
}

#[test]
fn erad_prints_the_spec_schema() {
    let out = std::process::Command::new(era_tests::bin("erad")).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "DeploymentSpec");
    assert!(schema["required"].as_array().unwrap().iter().any(|f| f == "apiVersion"), "{schema}");
}
