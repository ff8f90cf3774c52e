//! Crash windows: `kill -9` after a step's side effect and before the
//! transition that records it, for every step that changes the workload
//! (install, start, the staging of an update, stop, delete, a rollback's
//! re-activation). `ERAD_TEST_PAUSE_DONE=<State>` freezes erad exactly
//! there; the test sends a real SIGKILL and starts erad again. The restarted
//! erad must reach the end an uninterrupted run reaches, with one workload:
//! the noop fixture counts the starts that found nothing running, per
//! revision, in the revision's work dir. (recovery.rs kills right after each
//! commit, before the side effect.)

use era_tests::{Erad, fixture_plugins};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The revisions whose workload runs.
fn running(erad: &Erad, name: &str) -> Vec<u64> {
    (1..=5).filter(|r| erad.noop_running(name, *r)).collect()
}

fn starts(erad: &Erad, name: &str, rev: u64) -> u64 {
    erad.noop_state(name, rev).map(|s| s["starts"].as_u64().unwrap()).unwrap_or(0)
}

fn done(state: &str) -> String {
    format!("paused-web-{state}-done")
}

#[test]
fn kill_9_after_each_install_side_effect_repeats_nothing() {
    for state in ["Installing", "Activating", "HealthChecking"] {
        let mut erad = Erad::start_with(&fixture_plugins(), &[("ERAD_TEST_PAUSE_DONE", state)]);
        let spec = erad.deployment("web", "noop", "v1", "");
        erad.kill9_at(&["apply", "-f", spec.to_str().unwrap()], &done(state));
        let installed = erad.noop_state("web", 1).expect("the side effect happened before the kill");
        assert_eq!(installed["installed"], true, "{state}");
        erad.spawn(&[]).unwrap();
        let d = erad.wait_for_state("web", "Running", T);
        assert_eq!(d["revision"], 1, "{state}");
        assert_eq!(starts(&erad, "web", 1), 1, "{state}: one real start");
        assert_eq!(running(&erad, "web"), [1], "{state}");
    }
}

#[test]
fn kill_9_after_each_update_side_effect_ends_on_the_new_revision_alone() {
    for state in ["Updating", "Installing", "Activating"] {
        let mut erad = Erad::start();
        assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
        erad.kill9();
        erad.spawn(&[("ERAD_TEST_PAUSE_DONE", state)]).unwrap();
        let v2 = erad.deployment("web", "noop", "v2", "");
        erad.kill9_at(&["apply", "-f", v2.to_str().unwrap()], &done(state));
        assert!(running(&erad, "web").len() <= 1, "{state}: two revisions ran at the kill");
        erad.spawn(&[]).unwrap();
        let d = erad.wait_for_state("web", "Running", T);
        assert_eq!(d["revision"], 2, "{state}: {d}");
        assert_eq!(starts(&erad, "web", 2), 1, "{state}");
        assert_eq!(running(&erad, "web"), [2], "{state}");
        era_tests::eventually(T, || !erad.data_dir().join("deployments/web/rev-1").exists());
    }
}

#[test]
fn kill_9_after_stop_delete_and_a_rollbacks_restart_finishes_the_job() {
    // Stop: the workload was stopped, Stopped not committed yet.
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    erad.kill9();
    erad.spawn(&[("ERAD_TEST_PAUSE_DONE", "Stopping")]).unwrap();
    erad.kill9_at(&["stop", "web"], &done("Stopping"));
    assert_eq!(running(&erad, "web"), Vec::<u64>::new(), "stopped before the kill");
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Stopped", T);
    assert_eq!(erad.noop_state("web", 1).unwrap()["stops"], 1);
    // And it starts again, once.
    assert_eq!(erad.era(&["start", "web", "--wait"]).code, 0);
    assert_eq!(starts(&erad, "web", 1), 2);

    // Delete: everything was removed, Deleted not committed yet.
    erad.kill9();
    erad.spawn(&[("ERAD_TEST_PAUSE_DONE", "Uninstalling")]).unwrap();
    erad.kill9_at(&["delete", "web"], &done("Uninstalling"));
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Deleted", T);
    assert!(!erad.data_dir().join("deployments/web").exists());

    // Rollback: revision 1 was installed and started again, RolledBack not
    // committed yet.
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v2", "")).code, 0);
    erad.kill9();
    erad.spawn(&[("ERAD_TEST_PAUSE_DONE", "RollingBack")]).unwrap();
    erad.kill9_at(&["rollback", "web"], &done("RollingBack"));
    assert_eq!(running(&erad, "web"), [1]);
    erad.spawn(&[]).unwrap();
    let d = erad.wait_for_state("web", "Running", T);
    assert_eq!(d["revision"], 1, "{d}");
    assert_eq!(starts(&erad, "web", 1), 1, "revision 1's fresh work dir saw one start");
    assert_eq!(running(&erad, "web"), [1]);
}
