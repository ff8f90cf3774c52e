//! `kill -9` of erad at every install, update and rollback state: the
//! restarted daemon reaches the same end state an uninterrupted run would,
//! and never starts a workload twice.
//!
//! `ERAD_TEST_PAUSE_AFTER=<State>` freezes erad right after it commits that
//! state (before the state's side effect) and drops a marker file; the test
//! then sends a real SIGKILL.

use era_tests::{Erad, eventually, fixture_plugins};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Sends the command, waits for erad to pause after committing `state`,
/// and kills it.
fn kill_when_paused(erad: &mut Erad, args: &[&str], state: &str) {
    let name = args.last().filter(|a| !a.ends_with(".yaml")).map(|n| n.to_string()).unwrap_or_else(|| "web".into());
    erad.kill9_at(args, &format!("paused-{name}-{state}"));
}

fn transitions(erad: &Erad, name: &str, from: &str, to: &str) -> usize {
    erad.history(name).iter().filter(|e| e["from"] == from && e["to"] == to).count()
}

#[test]
fn kill_9_at_every_install_state_ends_running_with_one_start() {
    for state in ["Validating", "Fetching", "Preparing", "Installing", "Activating", "HealthChecking", "Running"] {
        let mut erad = Erad::start_with(&fixture_plugins(), &[("ERAD_TEST_PAUSE_AFTER", state)]);
        let spec = erad.deployment("web", "noop", "v1", "  volumes: [{name: data, mountPath: /data}]\n");
        kill_when_paused(&mut erad, &["apply", "-f", spec.to_str().unwrap()], state);
        erad.spawn(&[]).unwrap();
        let d = erad.wait_for_state("web", "Running", T);
        assert_eq!(d["revision"], 1, "{state}");
        eventually(T, || erad.get("web")["outputs"]["starts"] == "1");
        assert_eq!(transitions(&erad, "web", "HealthChecking", "Running"), 1, "{state}");
        assert!(erad.data_dir().join("volumes/web/data").is_dir(), "{state}");
    }
}

#[test]
fn kill_9_at_every_update_state_ends_on_the_new_revision() {
    for state in ["Updating", "Installing", "Activating", "HealthChecking", "Running"] {
        let mut erad = Erad::start();
        assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
        erad.kill9();
        erad.spawn(&[("ERAD_TEST_PAUSE_AFTER", state)]).unwrap();
        let v2 = erad.deployment("web", "noop", "v2", "");
        kill_when_paused(&mut erad, &["apply", "-f", v2.to_str().unwrap()], state);
        erad.spawn(&[]).unwrap();
        let d = erad.wait_for_state("web", "Running", T);
        assert_eq!(d["revision"], 2, "{state}: {d}");
        eventually(T, || erad.get("web")["outputs"]["starts"] == "1");
        eventually(T, || !erad.data_dir().join("deployments/web/rev-1").exists());
        assert_eq!(transitions(&erad, "web", "Updating", "Installing"), 1, "{state}");
    }
}

#[test]
fn kill_9_during_an_automatic_rollback_still_restores_revision_1() {
    for state in ["RollingBack", "HealthChecking"] {
        let mut erad = Erad::start();
        assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
        erad.kill9();
        erad.spawn(&[("ERAD_TEST_PAUSE_AFTER", state)]).unwrap();
        let bad = erad.deployment("web", "noop", "v2", "  config: {exitAfterStart: 1}\n");
        // HealthChecking is passed once for revision 2 before the rollback;
        // for that state, erad pauses on the first one: the update's own check.
        kill_when_paused(&mut erad, &["apply", "-f", bad.to_str().unwrap()], state);
        erad.spawn(&[]).unwrap();
        let d = erad.wait_for_state("web", "Running", T);
        assert_eq!(d["revision"], 1, "{state}: {d}");
        assert_eq!(transitions(&erad, "web", "HealthChecking", "RollingBack"), 1, "{state}");
        assert_eq!(transitions(&erad, "web", "RollingBack", "RollbackFailed"), 0, "{state}");
    }
}

#[test]
fn a_running_workload_is_adopted_after_kill_9_not_restarted() {
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let before = erad.history("web").len();
    erad.kill9();
    erad.spawn(&[]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(erad.get("web")["state"], "Running");
    eventually(T, || erad.get("web")["outputs"]["starts"] == "1");
    assert_eq!(erad.history("web").len(), before, "no transition: adopted as it was");
    assert!(erad.log().contains("adopted the running workload"), "{}", erad.log());
}

#[test]
fn kill_9_while_stopping_and_uninstalling_finishes_the_job() {
    for (state, command, end) in [("Stopping", "stop", "Stopped"), ("Uninstalling", "delete", "Deleted")] {
        let mut erad = Erad::start();
        assert_eq!(
            erad.apply_wait(&erad.deployment("web", "noop", "v1", "  volumes: [{name: data, mountPath: /data}]\n"))
                .code,
            0
        );
        erad.kill9();
        erad.spawn(&[("ERAD_TEST_PAUSE_AFTER", state)]).unwrap();
        kill_when_paused(&mut erad, &[command, "web"], state);
        erad.spawn(&[]).unwrap();
        erad.wait_for_state("web", end, T);
        if end == "Deleted" {
            assert!(!erad.data_dir().join("volumes/web").exists());
            assert!(!erad.data_dir().join("deployments/web").exists());
        }
    }
}

#[test]
fn a_build_without_the_test_hooks_feature_ignores_the_hook_variables() {
    // scripts/test builds erad without the feature first and keeps a copy.
    let program = era_tests::bin("erad-without-test-hooks");
    let hooks = [("ERAD_TEST_PAUSE_AFTER", "Validating"), ("ERAD_TEST_PAUSE_DONE", "Installing")];
    let erad = Erad::try_start_program(&program, &fixture_plugins(), &hooks).unwrap();
    let a = erad.apply_wait(&erad.deployment("web", "noop", "v1", ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("web")["state"], "Running");
    let markers: Vec<String> = std::fs::read_dir(erad.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("paused-"))
        .collect();
    assert!(markers.is_empty(), "{markers:?}");
    // The variables' names are not even in the binary; they are in the
    // tests' build, which the other tests here pause with.
    let contains =
        |path: &std::path::Path, what: &[u8]| std::fs::read(path).unwrap().windows(what.len()).any(|w| w == what);
    assert!(!contains(&program, b"ERAD_TEST_"));
    assert!(contains(&era_tests::bin("erad"), b"ERAD_TEST_PAUSE_AFTER"));
}
