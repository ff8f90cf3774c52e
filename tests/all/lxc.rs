//! The LXC plugin against the real LXC tools (Debian's lxc), with images
//! built from Debian's static busybox and served by a real registry.

use era_tests::{Erad, Registry, eventually};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn config() -> String {
    format!(
        "[plugins.lxc]\npath = \"{}\"\ngrants = {{ log = true, lxc = {{ templates = [\"busybox\"], bridges = [\"{}\"] }} }}\n",
        era_tests::plugin::LXC,
        bridge_name()
    )
}

/// The bridge the veth test makes (and the grant allows).
fn bridge_name() -> String {
    format!("erabr{}", std::process::id() % 100_000)
}

fn spec(erad: &Erad, name: &str, image: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: lxc\n  artifact: {{image: \"{image}\"}}\n  stopGracePeriod: 1s\n  volumes: [{{name: data, mountPath: /data}}]\n{extra}"
    );
    erad.spec(&format!("{name}-{}.yaml", &era_tests::sha256(yaml.as_bytes())[..8]), &yaml)
}

/// erad's own lxcpath: containers live there, not among the host's.
fn lxcpath(erad: &Erad) -> PathBuf {
    erad.data_dir().join("runtimes/lxc")
}

/// The revision's container name (`era-<store id>-NAME-REV`), if it exists.
fn ct(erad: &Erad, name: &str, rev: u64) -> Option<String> {
    let suffix = format!("-{name}-{rev}");
    std::fs::read_dir(lxcpath(erad))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("era-") && n.ends_with(&suffix))
}

/// `lxc-info` of the revision's container: (state, pid), or None.
fn info(erad: &Erad, name: &str, rev: u64) -> Option<(String, Option<u64>)> {
    let out = Command::new("lxc-info")
        .arg("-P")
        .arg(lxcpath(erad))
        .args(["-n", &ct(erad, name, rev)?, "-s", "-p"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
    Some((field("State:").unwrap_or_default(), field("PID:").and_then(|p| p.parse().ok())))
}

fn lxc_ls(erad: &Erad) -> Vec<String> {
    let out = Command::new("lxc-ls").arg("-P").arg(lxcpath(erad)).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

const SERVE: &str = "echo hello from $GREETING; echo start >> /data/starts; exec sleep 600";

#[test]
fn an_lxc_container_runs_stops_starts_updates_rolls_back_and_is_gone_after_delete() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=image"]);
    registry.push_busybox("demo/box", "2", &["/bin/sh", "-c", SERVE], &["GREETING=two"]);
    registry.push_busybox("demo/box", "broken", &["/bin/sh", "-c", "echo cannot start; exit 1"], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let img = |t: &str| format!("{}/demo/box:{t}", registry.addr);
    let a = erad.apply_wait(&spec(&erad, "sys", &img("1"), "  env: {GREETING: spec}\n"));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    assert_eq!(lxc_ls(&erad), [ct(&erad, "sys", 1).unwrap()], "one container, in erad's lxcpath");
    let (state, pid) = info(&erad, "sys", 1).unwrap();
    assert_eq!(state, "RUNNING");
    assert!(pid.is_some());
    eventually(T, || erad.era(&["logs", "sys"]).stdout.contains("hello from spec"));
    let starts = erad.data_dir().join("volumes/sys/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1);

    assert_eq!(erad.era(&["stop", "sys", "--wait"]).code, 0);
    assert_eq!(info(&erad, "sys", 1).unwrap().0, "STOPPED");
    assert_eq!(erad.era(&["start", "sys", "--wait"]).code, 0);
    eventually(T, || std::fs::read_to_string(&starts).unwrap().lines().count() == 2);

    let a = erad.apply_wait(&spec(&erad, "sys", &img("2"), ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(info(&erad, "sys", 2).unwrap().0, "RUNNING");
    assert!(ct(&erad, "sys", 1).is_none(), "the old revision's container is gone");
    let bad = erad.apply_wait(&spec(&erad, "sys", &img("broken"), ""));
    assert_eq!(bad.code, 1, "{bad:?}");
    let d = erad.get("sys");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(2)), "{d}");
    assert_eq!(info(&erad, "sys", 2).unwrap().0, "RUNNING");
    assert!(info(&erad, "sys", 3).is_none(), "the failed revision's container is cleaned up");

    assert_eq!(erad.era(&["delete", "sys", "--wait"]).code, 0, "{}", erad.log());
    assert!(!erad.data_dir().join("deployments/sys").exists(), "no container, config or rootfs on disk");
    assert!(!erad.data_dir().join("volumes/sys").exists(), "no volume on disk");
}

#[test]
fn a_killed_erad_adopts_the_running_lxc_container_with_its_memory_limit() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=x"]);
    let mut erad = Erad::start_with(&config(), &[]);
    let s = spec(&erad, "adopt", &format!("{}/demo/box:1", registry.addr), "  config: {memoryMiB: 48}\n");
    assert_eq!(erad.apply_wait(&s).code, 0, "{}", erad.log());
    let pid = info(&erad, "adopt", 1).unwrap().1;
    // The memory limit is on the container's cgroup (v1 here; v2 hosts read memory.max).
    let limit = Command::new("lxc-cgroup")
        .arg("-P")
        .arg(lxcpath(&erad))
        .args(["-n", &ct(&erad, "adopt", 1).unwrap(), "memory.limit_in_bytes"])
        .output()
        .unwrap();
    let limit = if limit.status.success() {
        limit
    } else {
        Command::new("lxc-cgroup")
            .arg("-P")
            .arg(lxcpath(&erad))
            .args(["-n", &ct(&erad, "adopt", 1).unwrap(), "memory.max"])
            .output()
            .unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&limit.stdout).trim(), (48u64 << 20).to_string(), "{limit:?}");
    erad.kill9();
    erad.spawn(&[]).unwrap();
    eventually(T, || erad.get("adopt")["state"] == "Running");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(info(&erad, "adopt", 1).unwrap().1, pid, "the same init, adopted");
    let starts = erad.data_dir().join("volumes/adopt/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1, "not started twice");
    assert_eq!(erad.era(&["delete", "adopt", "--wait"]).code, 0);
}

#[test]
fn the_network_is_empty_by_default_or_a_veth_on_the_named_bridge() {
    let registry = Registry::start();
    registry.push_busybox("demo/net", "1", &["/bin/sh", "-c", "ls /sys/class/net; exec sleep 600"], &[]);
    let image = format!("{}/demo/net:1", registry.addr);
    let erad = Erad::start_with(&config(), &[]);
    let nets = |name: &str| erad.era(&["logs", name]).stdout.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(erad.apply_wait(&spec(&erad, "empty", &image, "")).code, 0, "{}", erad.log());
    eventually(T, || !nets("empty").is_empty());
    assert_eq!(nets("empty"), ["lo"]);

    let bridge = bridge_name();
    let made = Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]).status().unwrap();
    assert!(made.success(), "a bridge for the test");
    let _ = Command::new("ip").args(["link", "set", &bridge, "up"]).status();
    let veth = format!("  config: {{network: {{type: veth, link: {bridge}}}}}\n");
    let a = erad.apply_wait(&spec(&erad, "bridged", &image, &veth));
    let seen = if a.code == 0 {
        eventually(T, || !nets("bridged").is_empty());
        nets("bridged")
    } else {
        Vec::new()
    };
    erad.era(&["delete", "bridged", "--wait"]);
    erad.era(&["delete", "empty", "--wait"]);
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(seen, ["eth0", "lo"]);
}

#[test]
fn a_container_from_an_lxc_template_runs_and_goes_with_the_deployment() {
    // The busybox template makes its rootfs from the host's busybox; the
    // artifact is only what the revision pins (here, a small file).
    let erad = Erad::start_with(&config(), &[]);
    let file = erad.dir.path().join("marker.txt");
    std::fs::write(&file, "template test").unwrap();
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: tmpl}}\nspec:\n  runtime: lxc\n  artifact: {{file: marker.txt, sha256: \"{}\"}}\n  stopGracePeriod: 1s\n  config: {{template: busybox, command: [/bin/sh, -c, \"echo from the template; exec sleep 600\"]}}\n",
        era_tests::sha256(b"template test")
    );
    let s = erad.spec("tmpl.yaml", &yaml);
    let a = erad.apply_wait(&s);
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    assert_eq!(info(&erad, "tmpl", 1).unwrap().0, "RUNNING");
    let made = lxcpath(&erad).join(ct(&erad, "tmpl", 1).unwrap()).join("rootfs/bin/busybox");
    assert!(made.exists(), "lxc-create made the rootfs");
    eventually(T, || erad.era(&["logs", "tmpl"]).stdout.contains("from the template"));
    assert_eq!(erad.era(&["delete", "tmpl", "--wait"]).code, 0);
    assert!(!erad.data_dir().join("deployments/tmpl").exists());
}

#[test]
fn a_crashing_lxc_workload_is_restarted_by_its_policy() {
    let registry = Registry::start();
    registry.push_busybox("demo/crashy", "1", &["/bin/sh", "-c", "echo start >> /data/starts; sleep 1; exit 3"], &[]);
    let erad = Erad::start_with(&config(), &[]);
    let image = format!("{}/demo/crashy:1", registry.addr);
    let s = spec(&erad, "crashy", &image, "  restart: {policy: always, maxRetries: 2}\n  health: {startPeriod: 0s}\n");
    let _ = erad.era(&["apply", "-f", &s.display().to_string()]);
    let starts = erad.data_dir().join("volumes/crashy/data/starts");
    eventually(T, || std::fs::read_to_string(&starts).map(|s| s.lines().count() >= 3).unwrap_or(false));
    // A delete that lands mid-restart is refused until the restart settles.
    eventually(T, || erad.era(&["delete", "crashy", "--wait"]).code == 0);
}

#[test]
fn kill_9_after_lxc_start_and_before_its_commit_starts_it_once() {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", SERVE], &["GREETING=x"]);
    let mut erad = Erad::start_with(&config(), &[("ERAD_TEST_PAUSE_DONE", "Activating")]);
    let s = spec(&erad, "once", &format!("{}/demo/box:1", registry.addr), "");
    erad.kill9_at(&["apply", "-f", s.to_str().unwrap()], "paused-once-Activating-done");
    let pid = info(&erad, "once", 1).expect("lxc-start ran").1;
    // Started again by the re-run Activating: lxc-start refuses a running
    // container and erad takes that as done.
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("once", "Running", T);
    assert_eq!(info(&erad, "once", 1).unwrap().1, pid, "the same init");
    let starts = erad.data_dir().join("volumes/once/data/starts");
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 1, "started once");
    assert_eq!(erad.era(&["delete", "once", "--wait"]).code, 0);
}
