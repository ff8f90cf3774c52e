//! Apply, update, automatic and manual rollback, stop/start, delete.

use era_tests::{Erad, eventually, files_under};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn states(erad: &Erad, name: &str) -> Vec<String> {
    erad.history(name)
        .iter()
        .map(|e| format!("{}->{}", e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect()
}

#[test]
fn apply_reaches_running_through_every_install_state() {
    let erad = Erad::start();
    let spec = erad.deployment("web", "noop", "v1", "  env: {PORT: \"8080\"}\n");
    let a = erad.apply_wait(&spec);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(a.stdout.contains("web revision 1 applied"), "{a:?}");
    let d = erad.get("web");
    assert_eq!(
        (d["state"].as_str(), d["revision"].as_u64(), d["desired_revision"].as_u64()),
        (Some("Running"), Some(1), Some(1))
    );
    assert_eq!(d["health"], "healthy");
    assert_eq!(d["runtime"], "noop");
    assert_eq!(d["artifact_digest"], format!("sha256:{}", era_tests::sha256(b"v1")));
    assert!(d["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        states(&erad, "web"),
        [
            "Requested->Validating",
            "Validating->Fetching",
            "Fetching->Preparing",
            "Preparing->Installing",
            "Installing->Activating",
            "Activating->HealthChecking",
            "HealthChecking->Running"
        ]
    );
    // Applying the same spec again changes nothing.
    let again = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("web revision 1 unchanged"), "{again:?}");
    assert_eq!(erad.history("web").len(), 7);
}

#[test]
fn update_runs_revision_2_and_retires_revision_1() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let a = erad.apply_wait(&erad.deployment("web", "noop", "v2", ""));
    assert_eq!(a.code, 0, "{a:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(2)));
    assert_eq!(d["artifact_digest"], format!("sha256:{}", era_tests::sha256(b"v2")));
    let h = states(&erad, "web");
    assert_eq!(
        &h[7..],
        [
            "Running->Updating",
            "Updating->Installing",
            "Installing->Activating",
            "Activating->HealthChecking",
            "HealthChecking->Running"
        ]
    );
    let deployments = erad.data_dir().join("deployments/web");
    assert!(!deployments.join("rev-1").exists(), "revision 1's work dir is retired");
    assert!(deployments.join("rev-2/noop.json").exists());
}

#[test]
fn failing_update_rolls_back_to_revision_1_on_its_own() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let bad = erad.deployment("web", "noop", "v2", "  config: {exitAfterStart: 1}\n");
    let a = erad.apply_wait(&bad);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(a.stderr.contains("rolled back to revision 1"), "{a:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)));
    let h = erad.history("web");
    let rb = h.iter().find(|e| e["to"] == "RollingBack").expect("a RollingBack transition");
    assert!(rb["cause"].as_str().unwrap().contains("exited with code 1"), "{rb}");
    assert_eq!(h.last().unwrap()["to"], "Running");
    assert!(!erad.data_dir().join("deployments/web/rev-2").exists(), "the failed revision is removed");
}

#[test]
fn failing_update_without_auto_rollback_stays_failed() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let bad = erad.deployment("web", "noop", "v2", "  config: {exitAfterStart: 1}\n  update: {autoRollback: false}\n");
    assert_eq!(erad.apply_wait(&bad).code, 1);
    assert_eq!(erad.get("web")["state"], "Failed");
    // An operator rollback brings revision 1 back.
    let r = erad.era(&["rollback", "web", "--wait", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(erad.get("web")["revision"], 1);
}

#[test]
fn rollback_to_names_the_revision_and_checks_it_exists() {
    let erad = Erad::start();
    for v in ["v1", "v2", "v3"] {
        assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", v, "")).code, 0);
    }
    assert_eq!(erad.get("web")["revision"], 3);
    let r = erad.era(&["rollback", "web", "--to", "1", "--wait", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)));
    assert_eq!(d["artifact_digest"], format!("sha256:{}", era_tests::sha256(b"v1")));
    let missing = erad.era(&["rollback", "web", "--to", "9"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("revision 9 does not exist"), "{missing:?}");
    let same = erad.era(&["rollback", "web", "--to", "1"]);
    assert_eq!(same.code, 2, "{same:?}");
    // Without --to, rollback returns to where the last one came from.
    assert_eq!(erad.era(&["rollback", "web", "--wait", "--timeout", "60s"]).code, 0);
    assert_eq!(erad.get("web")["revision"], 3);
}

#[test]
fn stop_and_start_keep_the_volume_and_identity() {
    let erad = Erad::start();
    let spec = erad.deployment("db", "noop", "v1", "  volumes: [{name: data, mountPath: /data}]\n");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    let volume = erad.data_dir().join("volumes/db/data");
    std::fs::write(volume.join("rows"), b"42").unwrap();
    let s = erad.era(&["stop", "db", "--wait"]);
    assert_eq!(s.code, 0, "{s:?}");
    let d = erad.get("db");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Stopped"), Some(1)));
    assert_eq!(std::fs::read(volume.join("rows")).unwrap(), b"42");
    let s = erad.era(&["start", "db", "--wait"]);
    assert_eq!(s.code, 0, "{s:?}");
    let d = erad.wait_for_state("db", "Running", T);
    assert_eq!(d["revision"], 1);
    assert_eq!(std::fs::read(volume.join("rows")).unwrap(), b"42");
    // stop and start are idempotent for scripts.
    assert_eq!(erad.era(&["start", "db"]).code, 0);
}

#[test]
fn delete_leaves_nothing_on_disk_but_the_history() {
    // Without a GC grace period, the blobs go with the delete.
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    let spec = erad.deployment(
        "web",
        "noop",
        "v1",
        "  volumes: [{name: data, mountPath: /data}]\n  ports: [{name: http, port: 18080}]\n",
    );
    assert_eq!(erad.apply_wait(&spec).code, 0);
    assert_eq!(
        erad.apply_wait(&erad.deployment("web", "noop", "v2", "  volumes: [{name: data, mountPath: /data}]\n")).code,
        0
    );
    let d = erad.era(&["delete", "web", "--wait"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert_eq!(erad.get("web")["state"], "Deleted");
    let data = erad.data_dir();
    assert_eq!(files_under(&data.join("deployments")), Vec::<String>::new());
    assert_eq!(files_under(&data.join("volumes")), Vec::<String>::new());
    assert_eq!(files_under(&data.join("content/blobs/sha256")), Vec::<String>::new(), "its artifacts are gone too");
    assert!(erad.history("web").len() > 10, "history stays for audit");
    // The port is free again for someone else.
    let other = erad.deployment("api", "noop", "v1", "  ports: [{name: http, port: 18080}]\n");
    assert_eq!(erad.apply_wait(&other).code, 0);
    // A deleted deployment is hidden from list unless asked for.
    let list = erad.era(&["-o", "json", "list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(erad.era(&["-o", "json", "list", "--all"]).json().as_array().unwrap().len(), 2);
}

#[test]
fn first_install_that_fails_health_is_cleaned_up_and_failed() {
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    let spec = erad.deployment(
        "sick",
        "unhealthy",
        "v1",
        "  volumes: [{name: data, mountPath: /data}]\n  health: {interval: 100ms, retries: 2}\n",
    );
    let a = erad.apply_wait(&spec);
    assert_eq!(a.code, 1, "{a:?}");
    let d = erad.get("sick");
    assert_eq!(d["state"], "Failed");
    assert!(d["message"].as_str().unwrap().contains("unhealthy"), "{d}");
    assert_eq!(files_under(&erad.data_dir().join("deployments")), Vec::<String>::new());
    assert_eq!(files_under(&erad.data_dir().join("volumes")), Vec::<String>::new());
    assert_eq!(files_under(&erad.data_dir().join("content/blobs/sha256")), Vec::<String>::new());
    // A fixed spec can be applied to the failed deployment.
    assert_eq!(erad.apply_wait(&erad.deployment("sick", "noop", "v2", "")).code, 0);
}

#[test]
fn a_crashed_workload_is_restarted_per_policy_then_given_up() {
    let erad = Erad::start();
    let spec = erad.deployment("flaky", "noop", "v1", "  restart: {policy: on-failure, maxRetries: 2}\n");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    // The workload dies behind erad's back: its state says it exited with 3.
    let kill = || exit_noop(&erad, "flaky", 3);
    let restarts =
        || erad.history("flaky").iter().filter(|e| e["from"] == "Running" && e["to"] == "Activating").count();
    for n in 1..=2 {
        kill();
        eventually(T, || restarts() == n && erad.get("flaky")["state"] == "Running");
        eventually(T, || erad.get("flaky")["outputs"]["starts"] == (n + 1).to_string().as_str());
    }
    kill();
    let d = erad.wait_for_state("flaky", "Failed", T);
    assert!(d["message"].as_str().unwrap().contains("gave up after 2 restarts"), "{d}");
    // Exactly maxRetries restarts: three real starts in all, and no more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(restarts(), 2);
    assert_eq!(erad.get("flaky")["outputs"]["starts"], "3");
}

/// Makes the noop workload of `name` revision 1 look exited with `code`.
fn exit_noop(erad: &Erad, name: &str, code: i32) {
    erad.set_noop_running(name, 1, false, Some(code));
}

#[test]
fn a_job_that_exits_0_ends_stopped_not_failed_and_starts_again() {
    let erad = Erad::start();
    for policy in ["on-failure", "never"] {
        let name = format!("job-{policy}");
        let spec = erad.deployment(&name, "noop", "v1", &format!("  restart: {{policy: {policy}}}\n"));
        assert_eq!(erad.apply_wait(&spec).code, 0);
        exit_noop(&erad, &name, 0);
        let d = erad.wait_for_state(&name, "Stopped", T);
        let message = d["message"].as_str().unwrap();
        assert!(message.contains("exited with code 0: finished"), "{d}");
        assert!(message.contains(&format!("restart policy {policy}")), "{d}");
        assert_eq!(erad.era(&["start", &name, "--wait"]).code, 0);
        assert_eq!(erad.get(&name)["state"], "Running");
    }
}

#[test]
fn the_restart_count_resets_after_a_healthy_run() {
    let erad = Erad::start();
    let spec =
        erad.deployment("steady", "noop", "v1", "  restart: {policy: on-failure, maxRetries: 1, resetAfter: 1s}\n");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    let restarts =
        || erad.history("steady").iter().filter(|e| e["from"] == "Running" && e["to"] == "Activating").count();
    exit_noop(&erad, "steady", 3);
    eventually(T, || restarts() == 1 && erad.get("steady")["state"] == "Running");
    eventually(T, || erad.log().contains("restart count reset (was 1)"));
    // Without the reset, maxRetries 1 would give up here.
    exit_noop(&erad, "steady", 3);
    eventually(T, || restarts() == 2 && erad.get("steady")["state"] == "Running");
    assert!(erad.history("steady").iter().all(|e| e["to"] != "Failed"));
}

#[test]
fn stop_during_a_restart_backoff_returns_within_5s_and_no_restart_follows() {
    let erad = Erad::start();
    let spec = erad.deployment("loop", "noop", "v1", "  restart: {policy: always, maxRetries: 20}\n");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    let restarts = || erad.history("loop").iter().filter(|e| e["from"] == "Running" && e["to"] == "Activating").count();
    // Backoffs 0.25, 0.5, 1, 2 and 4 s: the sixth is 8 s.
    for n in 1..=5 {
        exit_noop(&erad, "loop", 1);
        eventually(T, || restarts() == n && erad.get("loop")["state"] == "Running");
    }
    exit_noop(&erad, "loop", 1);
    eventually(T, || erad.log().contains("restart 6 of 20: restarting after the backoff"));
    within_5s(&erad, &["stop", "loop", "--wait"]);
    assert_eq!(erad.get("loop")["state"], "Stopped");
    // The restart the backoff was waiting for never comes.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(restarts(), 5);
    assert_eq!(erad.get("loop")["state"], "Stopped");
}

#[test]
fn a_workload_that_failed_while_running_keeps_its_work_dir_across_a_restart_of_erad() {
    let mut erad = Erad::start();
    let spec = erad.deployment("dead", "noop", "v1", "  restart: {policy: never}\n");
    assert_eq!(erad.apply_wait(&spec).code, 0);
    exit_noop(&erad, "dead", 3);
    let d = erad.wait_for_state("dead", "Failed", T);
    assert!(d["message"].as_str().unwrap().contains("exited with code 3; restart policy never"), "{d}");
    let work = erad.data_dir().join("deployments/dead/rev-1");
    erad.kill9();
    erad.spawn(&[]).unwrap();
    // The next start must not take it for a failed install and clean it up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(erad.get("dead")["state"], "Failed");
    assert!(work.join("noop.json").exists(), "the workload's files are kept for inspection: {}", erad.log());
    assert_eq!(erad.era(&["delete", "dead", "--wait"]).code, 0);
    assert!(!work.exists());
}

#[test]
fn transient_plugin_errors_are_retried_with_backoff_but_only_so_often() {
    let erad = Erad::start();
    // Two "unavailable" answers: the third attempt succeeds.
    let a = erad.apply_wait(&erad.deployment("busy", "noop", "v1", "  config: {unavailableInstalls: 2}\n"));
    assert_eq!(a.code, 0, "{a:?}");
    assert!(erad.log().contains("runtime busy (answer 2 of 2)"), "the retries are logged");
    // Five: erad gives up after three attempts and says why.
    let a = erad.apply_wait(&erad.deployment("down", "noop", "v1", "  config: {unavailableInstalls: 5}\n"));
    assert_eq!(a.code, 1, "{a:?}");
    let d = erad.get("down");
    assert_eq!(d["state"], "Failed");
    assert!(d["message"].as_str().unwrap().contains("runtime unavailable: runtime busy (answer 3 of 5)"), "{d}");
}

#[test]
fn a_failing_probe_after_running_shows_degraded_then_healthy_again() {
    let erad = Erad::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = erad.deployment(
        "probed",
        "noop",
        "v1",
        &format!("  health: {{tcp: {{port: {port}}}, interval: 100ms, timeout: 500ms}}\n"),
    );
    assert_eq!(erad.apply_wait(&spec).code, 0);
    eventually(T, || erad.get("probed")["health"] == "healthy");
    drop(listener);
    eventually(T, || erad.get("probed")["health"] == "degraded");
    assert_eq!(erad.get("probed")["state"], "Running", "a failing probe alone does not stop the workload");
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    eventually(T, || erad.get("probed")["health"] == "healthy");
}

#[test]
fn delete_keeps_an_artifact_another_deployment_still_uses() {
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    assert_eq!(erad.apply_wait(&erad.deployment("a", "noop", "shared", "")).code, 0);
    assert_eq!(erad.apply_wait(&erad.deployment("b", "noop", "shared", "")).code, 0);
    assert_eq!(erad.era(&["delete", "a", "--wait"]).code, 0);
    let blob = erad.data_dir().join("content/blobs/sha256").join(era_tests::sha256(b"shared"));
    assert!(blob.is_file(), "b still needs it");
    assert_eq!(erad.era(&["delete", "b", "--wait"]).code, 0);
    assert!(!blob.exists());
}

#[test]
fn a_blob_fetched_within_the_gc_grace_outlives_a_delete_until_the_timer_collects_it() {
    // A fetch in flight elsewhere may be about to use a fresh blob: the
    // delete leaves it, and the GC timer (five grace periods) takes it later.
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "20s")]);
    assert_eq!(erad.apply_wait(&erad.deployment("a", "noop", "fresh", "")).code, 0);
    assert_eq!(erad.era(&["delete", "a", "--wait"]).code, 0);
    let blob = erad.data_dir().join("content/blobs/sha256").join(era_tests::sha256(b"fresh"));
    assert!(blob.is_file(), "younger than the grace period");
    eventually(Duration::from_secs(200), || !blob.exists());
}

#[test]
fn volume_data_survives_an_update() {
    let erad = Erad::start();
    let vol = "  volumes: [{name: data, mountPath: /data}]\n";
    assert_eq!(erad.apply_wait(&erad.deployment("db", "noop", "v1", vol)).code, 0);
    std::fs::write(erad.data_dir().join("volumes/db/data/rows"), b"42").unwrap();
    assert_eq!(erad.apply_wait(&erad.deployment("db", "noop", "v2", vol)).code, 0);
    assert_eq!(erad.get("db")["revision"], 2);
    assert_eq!(std::fs::read(erad.data_dir().join("volumes/db/data/rows")).unwrap(), b"42");
}

/// A TCP port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn apply_on_a_failed_deployment_whose_workload_still_runs_replaces_it() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    // Revision 2 starts but never passes its probe; without autoRollback it
    // stays Failed with its workload running.
    let sick = format!(
        "  health: {{tcp: {{port: {}}}, interval: 100ms, timeout: 200ms, retries: 2}}\n  update: {{autoRollback: false}}\n",
        closed_port()
    );
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v2", &sick)).code, 1);
    assert_eq!(erad.get("web")["state"], "Failed");
    assert!(erad.noop_running("web", 2), "the failed revision's workload is live");
    let a = erad.apply_wait(&erad.deployment("web", "noop", "v3", ""));
    assert_eq!(a.code, 0, "{a:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(3)), "{d}");
    assert!(erad.noop_running("web", 3));
    // The noop fixture logs each real stop and start: revision 2 stopped
    // before revision 3 started, and was retired after (an update from it).
    let log = erad.log();
    let stopped = log.find("stopped noop/web/2").expect("revision 2 was stopped");
    let started = log.find("started noop/web/3").expect("revision 3 started");
    assert!(stopped < started, "{log}");
    eventually(T, || !erad.data_dir().join("deployments/web/rev-2").exists());
}

/// Runs `era ARGS` and asserts it answers, successfully, within 5 s.
fn within_5s(erad: &Erad, args: &[&str]) {
    let mut cmd = std::process::Command::new(era_tests::bin("era"))
        .arg("--socket")
        .arg(erad.socket())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = era_tests::exit_within(&mut cmd, Duration::from_secs(5));
    let mut err = String::new();
    if let Some(mut e) = cmd.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.is_some_and(|s| s.success()), "era {args:?} did not succeed within 5 s: {status:?} {err}");
}

#[test]
fn stop_delete_and_rollback_cut_a_five_minute_health_check_short() {
    let erad = Erad::start();
    let slow = format!(
        "  health: {{tcp: {{port: {}}}, interval: 1s, timeout: 200ms, retries: 300}}\n  update: {{deadline: 5m}}\n",
        closed_port()
    );
    // Stop during the first install's health check.
    let spec = erad.deployment("a", "noop", "v1", &slow);
    let _ = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    erad.wait_for_state("a", "HealthChecking", T);
    within_5s(&erad, &["stop", "a", "--wait"]);
    assert_eq!(erad.get("a")["state"], "Stopped");
    assert!(!erad.noop_running("a", 1));
    // Delete during it.
    let spec = erad.deployment("b", "noop", "v1", &slow);
    let _ = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    erad.wait_for_state("b", "HealthChecking", T);
    within_5s(&erad, &["delete", "b", "--wait"]);
    assert_eq!(erad.get("b")["state"], "Deleted");
    assert!(!erad.data_dir().join("deployments/b").exists());
    // Rollback during an update's health check: revision 1 again.
    assert_eq!(erad.apply_wait(&erad.deployment("c", "noop", "v1", "")).code, 0);
    let spec = erad.deployment("c", "noop", "v2", &slow);
    let _ = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    erad.wait_for_state("c", "HealthChecking", T);
    within_5s(&erad, &["rollback", "c", "--wait", "--timeout", "5s"]);
    let d = erad.get("c");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)), "{d}");
    assert!(erad.noop_running("c", 1));
    assert!(erad.log().contains("stopped noop/c/2"), "revision 2's workload was stopped");
    // Apply during a step is refused, naming the state.
    let spec = erad.deployment("d", "noop", "v1", &slow);
    let _ = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    erad.wait_for_state("d", "HealthChecking", T);
    let busy = erad.era(&["apply", "-f", erad.deployment("d", "noop", "v2", "").to_str().unwrap()]);
    assert_ne!(busy.code, 0, "{busy:?}");
    assert!(busy.stderr.contains("is HealthChecking; apply is possible once it settles"), "{busy:?}");
}

#[test]
fn stop_and_delete_cut_a_hung_download_short() {
    // A server that promises 100 MB and sends 64 KiB of it.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n");
            let _ = std::io::Write::write_all(&mut conn, &[0u8; 65536]);
            held.push(conn);
        }
    });
    let erad = Erad::start();
    for (name, command, end) in [("s", "stop", "Stopped"), ("d", "delete", "Deleted")] {
        let yaml = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{url: \"http://127.0.0.1:{port}/big.bin\", sha256: \"{}\"}}\n",
            era_tests::sha256(b"never sent")
        );
        let spec = erad.spec(&format!("{name}.yaml"), &yaml);
        let _ = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
        erad.wait_for_state(name, "Fetching", T);
        // The download is under way: its temp file has the first bytes.
        let tmp = erad.data_dir().join("content/tmp");
        eventually(T, || !files_under(&tmp).is_empty());
        within_5s(&erad, &[command, name, "--wait"]);
        assert_eq!(erad.get(name)["state"], end);
    }
    assert!(files_under(&erad.data_dir().join("content/tmp")).is_empty(), "no partial download left");
}

#[test]
fn a_rollback_whose_target_fails_its_health_check_ends_rollback_failed() {
    let erad = Erad::start();
    // Revision 1 is healthy while its probe's port listens.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let probed = format!("  health: {{tcp: {{port: {port}}}, interval: 100ms, timeout: 200ms, retries: 2}}\n");
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", &probed)).code, 0);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v2", "")).code, 0);
    drop(listener);
    let r = erad.era(&["rollback", "web", "--wait", "--timeout", "60s"]);
    assert_ne!(r.code, 0, "{r:?}");
    let d = erad.wait_for_state("web", "RollbackFailed", T);
    assert!(d["message"].as_str().unwrap().contains("rollback to revision 1 failed"), "{d}");
    // The operator decides: an apply brings a working revision.
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v3", "")).code, 0);
    assert_eq!(erad.get("web")["revision"], 3);
}

#[test]
fn a_rollback_during_an_updates_stop_of_the_old_workload_lets_that_stop_finish() {
    let erad = Erad::start();
    let slow = "  config: {stopDelayMs: 2000}\n";
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", slow)).code, 0);
    let v2 = erad.deployment("web", "noop", "v2", "");
    let _ = erad.era(&["apply", "-f", v2.to_str().unwrap()]);
    // Updating is stopping revision 1 (the fixture takes 2 s).
    eventually(T, || erad.log().contains("stopping noop/web/1"));
    let r = erad.era(&["rollback", "web", "--to", "1", "--wait", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)), "{d}");
    // The stop was not cut off midway: it finished, and revision 1 was
    // really started again.
    assert!(erad.log().contains("stopped noop/web/1 (stop #1)"), "{}", erad.log());
    assert!(erad.noop_running("web", 1));
}
