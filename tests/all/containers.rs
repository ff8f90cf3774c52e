//! The container plugin against the real runc (Debian's), with images built
//! from Debian's static busybox and served by a real registry.

use era_tests::{Erad, Registry, eventually};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn config() -> String {
    config_granting(&["runc", "crun"])
}

/// The container plugin granted these runtimes (names or absolute paths)
/// and the host network.
fn config_granting(runtimes: &[&str]) -> String {
    let runtimes: Vec<String> = runtimes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[plugins.container]\npath = \"{}\"\ngrants = {{ log = true, oci = {{ runtimes = [{}], host_namespaces = [\"network\"] }} }}\n",
        era_tests::plugin::CONTAINER,
        runtimes.join(", ")
    )
}

fn spec(erad: &Erad, name: &str, image: &str, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: container\n  artifact: {{image: \"{image}\"}}\n  stopGracePeriod: 2s\n{extra}"
    );
    erad.spec(&format!("{name}-{}.yaml", &era_tests::sha256(yaml.as_bytes())[..8]), &yaml)
}

/// erad's own runc root: containers live there, not in runc's global one.
fn runc_root(erad: &Erad) -> std::path::PathBuf {
    erad.data_dir().join("runtimes/oci/runc")
}

fn runc_ids(erad: &Erad) -> Vec<String> {
    let out = Command::new("runc").arg("--root").arg(runc_root(erad)).args(["list", "-q"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `runc state` of the revision's container (`era-<store id>-NAME-REV`),
/// or None when erad's runc root has no such container.
fn runc_state(erad: &Erad, name: &str, rev: u64) -> Option<Value> {
    let suffix = format!("-{name}-{rev}");
    let id = runc_ids(erad).into_iter().find(|id| id.starts_with("era-") && id.ends_with(&suffix))?;
    let out = Command::new("runc").arg("--root").arg(runc_root(erad)).args(["state", &id]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Whether `pid` is a live process (a zombie is not one).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
        .unwrap_or(false)
}

fn output(erad: &Erad, name: &str, rev: u64) -> String {
    std::fs::read_to_string(erad.data_dir().join(format!("deployments/{name}/rev-{rev}/logs/output.log")))
        .unwrap_or_default()
}

/// What every container test runs: a shell that says hello, counts its
/// starts in the volume, and sleeps.
const SERVE: &str = "echo hello from $GREETING; echo start >> /data/starts; exec sleep 600";

#[test]
fn a_container_runs_for_real_stops_starts_and_is_gone_after_delete() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=image"]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/box:1", registry.addr);
    let s = spec(&erad, "ct1", &image, "  env: {GREETING: spec}\n  volumes: [{name: data, mountPath: /data}]\n");
    let a = erad.apply_wait(&s);
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let state = runc_state(&erad, "ct1", 1).expect("runc knows the container");
    assert_eq!(state["status"], "running", "{state}");
    let pid = state["pid"].as_u64().unwrap();
    assert!(alive(pid));
    eventually(T, || erad.era(&["logs", "ct1"]).stdout.contains("hello from spec"));
    let starts = erad.data_dir().join("volumes/ct1/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1);

    assert_eq!(erad.era(&["stop", "ct1", "--wait"]).code, 0);
    assert!(!alive(pid), "the process is gone after stop");
    assert!(starts.exists(), "the volume is kept");
    assert_eq!(erad.era(&["start", "ct1", "--wait"]).code, 0);
    eventually(T, || std::fs::read_to_string(&starts).unwrap().lines().count() == 2);
    assert_eq!(runc_state(&erad, "ct1", 1).unwrap()["status"], "running");

    assert_eq!(erad.era(&["delete", "ct1", "--wait"]).code, 0, "{}", erad.log());
    assert!(runc_state(&erad, "ct1", 1).is_none(), "runc has no such container");
    assert!(!runc_ids(&erad).iter().any(|id| id.ends_with("-ct1-1")));
    assert!(!erad.data_dir().join("deployments/ct1").exists(), "no bundle or rootfs on disk");
    assert!(!erad.data_dir().join("volumes/ct1").exists(), "no volume on disk");
}

#[test]
fn an_update_replaces_the_container_and_a_failing_one_rolls_back() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=one"]);
    registry.push_busybox("demo/box", "2", &["/bin/sh", "-c", SERVE], &["GREETING=two"]);
    registry.push_busybox("demo/box", "broken", &["/bin/sh", "-c", "echo cannot start; exit 1"], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let img = |t: &str| format!("{}/demo/box:{t}", registry.addr);
    let vol = "  volumes: [{name: data, mountPath: /data}]\n";
    assert_eq!(erad.apply_wait(&spec(&erad, "ct2", &img("1"), vol)).code, 0, "{}", erad.log());
    let a = erad.apply_wait(&spec(&erad, "ct2", &img("2"), vol));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(runc_state(&erad, "ct2", 2).unwrap()["status"], "running");
    assert!(runc_state(&erad, "ct2", 1).is_none(), "the old revision's container is gone");
    eventually(T, || output(&erad, "ct2", 2).contains("hello from two"));
    // --revision picks a revision's log; a retired one has none left.
    let two = erad.era(&["logs", "ct2", "--revision", "2"]);
    assert!(two.code == 0 && two.stdout.contains("hello from two"), "{two:?}");
    let one = erad.era(&["logs", "ct2", "--revision", "1"]);
    assert!(one.code != 0 && !one.stdout.contains("hello from one"), "{one:?}");

    let bad = erad.apply_wait(&spec(&erad, "ct2", &img("broken"), vol));
    assert_eq!(bad.code, 1, "{bad:?}");
    let d = erad.get("ct2");
    assert_eq!(d["state"], "Running", "{d}");
    assert_eq!(d["revision"], 2, "rolled back to revision 2: {d}");
    assert_eq!(runc_state(&erad, "ct2", 2).unwrap()["status"], "running");
    assert!(runc_state(&erad, "ct2", 3).is_none(), "the failed revision's container is cleaned up");
    let states: Vec<String> = erad.history("ct2").iter().map(|t| t["to"].as_str().unwrap().to_string()).collect();
    assert!(states.contains(&"RollingBack".to_string()), "{states:?}");
    assert_eq!(erad.era(&["delete", "ct2", "--wait"]).code, 0);
}

#[test]
fn a_killed_erad_adopts_the_running_container_and_a_crash_is_restarted_by_policy() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=x"]);
    registry.push_busybox("demo/box", "crashy", &["/bin/sh", "-c", "echo start >> /data/starts; sleep 1; exit 3"], &[]);
    let mut erad = Erad::start_with(&config(), &[]);
    let vol = "  volumes: [{name: data, mountPath: /data}]\n";
    let s = spec(&erad, "ct3", &format!("{}/demo/box:1", registry.addr), vol);
    assert_eq!(erad.apply_wait(&s).code, 0, "{}", erad.log());
    let pid = runc_state(&erad, "ct3", 1).unwrap()["pid"].as_u64().unwrap();
    erad.kill9();
    erad.spawn(&[]).unwrap();
    eventually(T, || erad.get("ct3")["state"] == "Running");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runc_state(&erad, "ct3", 1).unwrap()["pid"].as_u64().unwrap(), pid, "the same process, adopted");
    let starts = erad.data_dir().join("volumes/ct3/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1, "not started twice");

    // A workload that keeps crashing is restarted, as its policy says.
    let crashy = spec(
        &erad,
        "ct4",
        &format!("{}/demo/box:crashy", registry.addr),
        &format!("{vol}  restart: {{policy: always, maxRetries: 2}}\n  health: {{startPeriod: 0s}}\n"),
    );
    let _ = erad.era(&["apply", "-f", &crashy.display().to_string()]);
    let starts = erad.data_dir().join("volumes/ct4/data/starts");
    eventually(T, || std::fs::read_to_string(&starts).map(|s| s.lines().count() >= 3).unwrap_or(false));
    assert_eq!(erad.era(&["delete", "ct3", "--wait"]).code, 0);
    // A delete that lands mid-restart waits for the start under way (the
    // plugin call is not cut off) and then cuts the health check short.
    let d = erad.era(&["delete", "ct4", "--wait"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(runc_state(&erad, "ct4", 1).is_none());
}

#[test]
fn network_none_gives_a_private_namespace_and_an_ungranted_runtime_is_refused() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", "ls /sys/class/net; exec sleep 600"], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/box:1", registry.addr);
    assert_eq!(erad.apply_wait(&spec(&erad, "isolated", &image, "  config: {network: none}\n")).code, 0);
    eventually(T, || output(&erad, "isolated", 1).contains("lo"));
    assert_eq!(output(&erad, "isolated", 1).split_whitespace().collect::<Vec<_>>(), ["lo"], "only loopback");
    erad.era(&["delete", "isolated", "--wait"]);

    // The operator granted crun only; the config asks for runc (the default).
    let only_crun = format!(
        "[plugins.container]\npath = \"{}\"\ngrants = {{ log = true, oci = {{ runtimes = [\"crun\"] }} }}\n",
        era_tests::plugin::CONTAINER
    );
    let erad = Erad::start_with(&only_crun, &[]);
    let refused = erad.apply_wait(&spec(&erad, "norunc", &image, ""));
    assert_eq!(refused.code, 1, "{refused:?}");
    let msg = erad.get("norunc")["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(
            "validate: invalid config: not granted: runtime \"runc\" is not granted (grants.oci.runtimes: crun)"
        ),
        "{msg}"
    );
}

#[test]
fn era_logs_prints_tails_and_follows_the_workload_output() {
    let registry = Registry::start();
    let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    registry.push_busybox("demo/ticker", "1", &["/bin/sh", "-c", ticker], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/ticker:1", registry.addr);
    assert_eq!(erad.apply_wait(&spec(&erad, "ticker", &image, "")).code, 0, "{}", erad.log());
    eventually(T, || erad.era(&["logs", "ticker"]).stdout.lines().count() >= 3);
    let all = erad.era(&["logs", "ticker"]);
    assert_eq!(all.code, 0, "{all:?}");
    assert!(all.stdout.starts_with("tick 0\ntick 1\n"), "{all:?}");
    let last = erad.era(&["logs", "ticker", "--tail", "2"]);
    let lines: Vec<&str> = last.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{last:?}");
    assert!(lines[0].starts_with("tick ") && lines[1].starts_with("tick "), "{last:?}");

    // -f keeps printing what the workload writes next.
    let mut follow = std::process::Command::new(era_tests::bin("era"))
        .args(["--socket", &erad.socket().display().to_string(), "logs", "ticker", "-f", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout).to_string();
    let n: Vec<u64> = followed.lines().map(|l| l.trim_start_matches("tick ").parse().unwrap()).collect();
    assert!(n.len() >= 3, "followed {followed:?}");
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost: {n:?}");

    let missing = erad.era(&["logs", "nosuch"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    assert_eq!(erad.era(&["delete", "ticker", "--wait"]).code, 0);
}

#[test]
fn config_options_reach_the_container() {
    let registry = Registry::start();
    let report = "echo uid=$(id -u) host=$(hostname); touch /probe 2>/dev/null && echo rw || echo ro; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                  echo cwd=$(pwd); \
                  echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max); \
                  grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status; \
                  exec sleep 600";
    registry.push_busybox("demo/report", "1", &["/bin/sh", "-c", report], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/report:1", registry.addr);
    let opts = "  config: {user: nobody, hostname: edge-7, readOnlyRootfs: true, memoryMiB: 48, cpus: 0.5, workingDir: /tmp}\n";
    let a = erad.apply_wait(&spec(&erad, "opts", &image, opts));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    eventually(T, || erad.era(&["logs", "opts"]).stdout.lines().count() >= 7);
    let logs = erad.era(&["logs", "opts"]).stdout;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0], "uid=65534 host=edge-7", "{logs}");
    assert_eq!(lines[1], "ro", "{logs}");
    assert_eq!(lines[2], (48u64 << 20).to_string(), "{logs}");
    assert_eq!(lines[3], "cwd=/tmp", "{logs}");
    // Half a CPU: a 50 ms quota per 100 ms period (cgroup v1 or v2).
    assert!(lines[4] == "cpu=50000" || lines[4] == "cpu=50000 100000", "{logs}");
    // Docker's 14 default capabilities bound the container, and it cannot
    // gain privileges (setuid binaries do not elevate).
    let caps = lines[5].split_whitespace().collect::<Vec<_>>();
    assert_eq!(caps, ["CapBnd:", "00000000a80425fb"], "{logs}");
    assert_eq!(lines[6].split_whitespace().collect::<Vec<_>>(), ["NoNewPrivs:", "1"], "{logs}");
    erad.era(&["delete", "opts", "--wait"]);
}

#[test]
fn the_specs_http_probe_reaches_a_container_on_the_host_network() {
    let registry = Registry::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = format!("mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 127.0.0.1:{port} -h /www");
    registry.push_busybox("demo/web", "1", &["/bin/sh", "-c", &serve], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/web:1", registry.addr);
    let health = format!(
        "  ports: [{{name: http, port: {port}}}]\n  health: {{http: {{port: {port}, path: /healthz}}, interval: 200ms, startPeriod: 10s}}\n"
    );
    let a = erad.apply_wait(&spec(&erad, "web", &image, &health));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    eventually(T, || erad.get("web")["health"] == "healthy");
    let body = Command::new("curl").args(["-fsS", &format!("http://127.0.0.1:{port}/healthz")]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout).trim(), "ok");
    erad.era(&["delete", "web", "--wait"]);
}

#[test]
fn the_shim_records_the_exit_code_and_reaps_the_container() {
    let registry = Registry::start();
    registry.push_busybox("demo/exit", "1", &["/bin/sh", "-c", "echo bye; sleep 1; exit 3"], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/exit:1", registry.addr);
    let a = erad.apply_wait(&spec(&erad, "exits", &image, "  restart: {policy: never}\n  health: {startPeriod: 0s}\n"));
    assert_eq!(a.code, 0, "{a:?}");
    let pid = runc_state(&erad, "exits", 1).unwrap()["pid"].as_u64().unwrap();
    eventually(T, || erad.get("exits")["message"].as_str().unwrap_or_default().contains("exited with code 3"));
    // Reaped by the shim: not even a zombie is left.
    eventually(T, || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    // The shim wrote it in erad's own state dir, out of the plugin's reach.
    let state = std::fs::read_dir(erad.data_dir().join("runtimes/oci/state"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-exits-1"))
        .expect("a state dir for the container");
    assert_eq!(std::fs::read_to_string(state.join("exit-code")).unwrap().trim(), "3");
    assert!(!erad.data_dir().join("deployments/exits/rev-1/exit-code").exists());
    erad.era(&["delete", "exits", "--wait"]);
}

/// A `runc` that appends each call's arguments to `calls` and runs the real
/// one, granted to the container plugin by its absolute path: the tests
/// count the real `runc create` and `runc run` calls.
struct CountingRunc {
    _dir: tempfile::TempDir,
    config: String,
    calls: std::path::PathBuf,
}

impl CountingRunc {
    fn new() -> CountingRunc {
        let dir = tempfile::tempdir().unwrap();
        let real = String::from_utf8(Command::new("sh").args(["-c", "command -v runc"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let calls = dir.path().join("calls");
        let wrapper = dir.path().join("runc");
        std::fs::write(&wrapper, format!("#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n", calls.display()))
            .unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = config_granting(&[wrapper.to_str().unwrap()]);
        CountingRunc { _dir: dir, config, calls }
    }

    /// Containers made: `runc create` and `runc run` calls.
    fn creates(&self) -> usize {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "create" || w == "run"))
            .count()
    }
}

#[test]
fn kill_9_after_runc_started_the_container_and_before_the_commit_adopts_that_container() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=x"]);
    let runc = CountingRunc::new();
    let mut erad = Erad::start_with(&runc.config, &[("ERAD_TEST_PAUSE_DONE", "Activating")]);
    let vol = "  volumes: [{name: data, mountPath: /data}]\n";
    let s = spec(&erad, "web", &format!("{}/demo/box:1", registry.addr), vol);
    erad.kill9_at(&["apply", "-f", s.to_str().unwrap()], "paused-web-Activating-done");
    let pid = runc_state(&erad, "web", 1).expect("runc started it")["pid"].as_u64().unwrap();
    assert_eq!(runc.creates(), 1);
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Running", T);
    assert_eq!(runc_state(&erad, "web", 1).unwrap()["pid"].as_u64().unwrap(), pid, "the same process");
    assert!(alive(pid));
    assert_eq!(runc.creates(), 1, "no second runc create");
    assert_eq!(runc_ids(&erad).len(), 1);
    let starts = erad.data_dir().join("volumes/web/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1);
}

#[test]
fn kill_9_after_a_crash_restart_started_the_container_counts_one_restart() {
    let registry = Registry::start();
    // Exits 3 after its first run; runs for good after that.
    let once =
        "echo start >> /data/starts; if [ -f /data/ran ]; then exec sleep 600; fi; touch /data/ran; sleep 10; exit 3";
    registry.push_busybox("demo/box", "once", &["/bin/sh", "-c", once], &[]);
    let runc = CountingRunc::new();
    let mut erad = Erad::start_with(&runc.config, &[]);
    let extra = "  volumes: [{name: data, mountPath: /data}]\n  restart: {policy: always, maxRetries: 3}\n";
    let s = spec(&erad, "web", &format!("{}/demo/box:once", registry.addr), extra);
    assert_eq!(erad.apply_wait(&s).code, 0, "{}", erad.log());
    // The restart after the crash starts the container again; erad is
    // killed before it commits that.
    erad.kill9();
    erad.spawn(&[("ERAD_TEST_PAUSE_DONE", "Activating")]).unwrap();
    let marker = erad.data_dir().join("paused-web-Activating-done");
    era_tests::eventually(T, || marker.exists());
    erad.kill9();
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(runc.creates(), 2);
    let pid = runc_state(&erad, "web", 1).expect("restarted")["pid"].as_u64().unwrap();
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Running", T);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runc_state(&erad, "web", 1).unwrap()["pid"].as_u64().unwrap(), pid, "the restarted process, adopted");
    assert_eq!(runc.creates(), 2, "one restart, not two");
    let restarts = erad.history("web").iter().filter(|e| e["from"] == "Running" && e["to"] == "Activating").count();
    assert_eq!(restarts, 1);
    let starts = erad.data_dir().join("volumes/web/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 2);
}

#[test]
fn a_chatty_workloads_log_is_rotated_at_the_configured_size() {
    let registry = Registry::start();
    // About 3 MiB of output, then quiet.
    let chatty = "l=x; for k in 1 2 3 4 5 6 7 8 9 10; do l=$l$l; done; i=0; \
                  while [ $i -lt 3072 ]; do echo $l; i=$((i+1)); done; echo done; exec sleep 600";
    registry.push_busybox("demo/chatty", "1", &["/bin/sh", "-c", chatty], &[]);
    let erad = Erad::start_with(&format!("{}\n[limits]\nlog_max_mib = 1\n", config()), &[]);
    assert_eq!(erad.apply_wait(&spec(&erad, "chat", &format!("{}/demo/chatty:1", registry.addr), "")).code, 0);
    let logs = erad.data_dir().join("deployments/chat/rev-1/logs");
    eventually(T, || logs.join("output.log.1").is_file());
    let kept = std::fs::metadata(logs.join("output.log.1")).unwrap().len();
    assert!(kept >= 1 << 20, "the rotated generation holds at least the limit: {kept}");
    eventually(T, || std::fs::metadata(logs.join("output.log")).map(|m| m.len() < 3 << 20).unwrap_or(false));
    // era logs still tails the live file.
    eventually(T, || erad.era(&["logs", "chat", "--tail", "1"]).stdout.trim() == "done");
}
