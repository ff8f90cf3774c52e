//! The plugin sandbox: traps, hangs and memory hogs fail one call each, and
//! the daemon keeps serving; imports are checked against grants at load.

use era_tests::{Erad, plugin};

#[test]
fn trap_hang_and_hog_fail_one_call_each_while_another_deployment_keeps_working() {
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("good", "noop", "v1", "")).code, 0);
    let cases = [
        ("trapper", "trap", "plugin trap: install: the plugin trapped"),
        ("hanger", "hang", "plugin hang: install: did not finish within its deadline of 1s"),
        ("hogger", "hog", "plugin hog: install: exceeded its memory limit of 16 MiB"),
    ];
    for (name, runtime, expected) in cases {
        let a = erad.apply_wait(&erad.deployment(name, runtime, "v1", ""));
        assert_eq!(a.code, 1, "{a:?}");
        let d = erad.get(name);
        assert_eq!(d["state"], "Failed");
        assert!(d["message"].as_str().unwrap().contains(expected), "{name}: {d}");
        // Meanwhile the good deployment is untouched and erad still works.
        assert_eq!(erad.get("good")["state"], "Running");
        assert_eq!(erad.apply_wait(&erad.deployment("good", "noop", format!("after-{name}").as_str(), "")).code, 0);
    }
    let trap = erad.get("trapper")["message"].as_str().unwrap().to_string();
    assert!(trap.contains("fixture trap in install of trapper"), "the guest's panic message is kept: {trap}");
}

#[test]
fn a_plugin_importing_what_it_was_not_granted_is_refused_at_load() {
    let config = format!("[plugins.noop]\npath = \"{}\"\ngrants = {{}}\n", plugin::NOOP);
    let msg = Erad::try_start_with(&config, &[]).err().expect("erad must refuse to start");
    assert!(msg.contains("plugin noop: imports era:plugin/log@0.3.0, which is not granted"), "{msg}");
}

#[test]
fn compiled_plugins_are_cached_on_disk_and_reused() {
    let mut erad = Erad::start();
    let cache = erad.data_dir().join("cache/plugins");
    // The compiled components and when they were written.
    let compiled = |c: &std::path::Path| -> Vec<(String, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(c)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        v.sort();
        v
    };
    let first = compiled(&cache);
    assert_eq!(first.len(), 5, "{first:?}");
    erad.kill9();
    erad.spawn(&[]).unwrap();
    assert_eq!(compiled(&cache), first, "a restart does not recompile");
}

#[test]
fn the_process_import_runs_only_allowlisted_programs_with_output_in_the_work_dir() {
    let config = format!(
        "{}\n[plugins.exec]\npath = \"{}\"\ngrants = {{ process = {{ programs = [\"sh\"] }} }}\n",
        era_tests::fixture_plugins(),
        plugin::EXEC
    );
    let erad = Erad::start_with(&config, &[]);
    let ok = erad.deployment(
        "shell",
        "exec",
        "v1",
        "  env: {GREETING: hello}\n  config: {program: sh, args: [\"-c\", \"echo $GREETING from $(pwd)\"]}\n",
    );
    assert_eq!(erad.apply_wait(&ok).code, 0);
    let work = erad.data_dir().join("deployments/shell/rev-1");
    let out = std::fs::read_to_string(work.join("out.log")).unwrap();
    assert_eq!(out.trim(), format!("hello from {}", work.display()), "env passed, cwd is the work dir");

    let refused = erad.deployment("rm", "exec", "v1", "  config: {program: rm, args: [\"-rf\", \"/tmp/nothing\"]}\n");
    assert_eq!(erad.apply_wait(&refused).code, 1);
    let msg = erad.get("rm")["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("plugin exec: start: running rm: ProcessError::NotAllowed")
            && msg.contains("not on this plugin's allowlist (allowed: sh)"),
        "{msg}"
    );
}

#[test]
fn a_plugin_without_the_process_grant_cannot_load_a_component_that_imports_it() {
    let config = format!("[plugins.exec]\npath = \"{}\"\n", plugin::EXEC);
    let msg = Erad::try_start_with(&config, &[]).err().expect("erad must refuse to start");
    assert!(
        msg.contains("plugin exec: imports era:plugin/process@0.3.0, which is not granted (grants: none)"),
        "{msg}"
    );
}
