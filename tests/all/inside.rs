//! What runs inside a workload stays inside, for both container runtimes:
//! the spec's `health.exec` probe runs in the container (never on the host),
//! and a workload that makes a device node for the host's disk cannot read
//! it (the device rules erad's policy sets).

use era_tests::{Erad, Registry, eventually};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn config() -> String {
    format!(
        r#"
[plugins.container]
path = "{}"
grants = {{ log = true, oci = {{ runtimes = ["runc"], host_namespaces = ["network"] }} }}

[plugins.lxc]
path = "{}"
grants = {{ log = true, lxc = {{ templates = ["busybox"] }} }}
"#,
        era_tests::plugin::CONTAINER,
        era_tests::plugin::LXC
    )
}

fn spec(erad: &Erad, runtime: &str, name: &str, image: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: {runtime}\n  artifact: {{image: \"{image}\"}}\n  stopGracePeriod: 1s\n  volumes: [{{name: data, mountPath: /data}}]\n{extra}"
    );
    erad.spec(&format!("{name}.yaml"), &yaml)
}

/// A probe that writes a file runs where the workload is: the file appears
/// in the container's root filesystem and not on the host; and a probe that
/// would pass on the host (a file only the host has) fails inside.
fn the_exec_probe_runs_inside(runtime: &str) {
    let registry = Registry::start();
    registry.push_busybox("demo/box", "1", &["/bin/sh", "-c", "exec sleep 600"], &[]);
    let image = format!("{}/demo/box:1", registry.addr);
    let erad = Erad::start_with(&config(), &[]);
    let tag = format!("era-probe-{runtime}-{}", std::process::id());
    let probe = format!(
        "  health: {{exec: {{command: [/bin/sh, -c, \"echo probed >> /{tag}\"]}}, interval: 200ms, startPeriod: 0s}}\n"
    );
    let name = format!("{runtime}-probe");
    let a = erad.apply_wait(&spec(&erad, runtime, &name, &image, &probe));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let inside = erad.data_dir().join(format!("deployments/{name}/rev-1/rootfs/{tag}"));
    eventually(T, || std::fs::read_to_string(&inside).is_ok_and(|s| s.lines().count() >= 2));
    assert!(!Path::new("/").join(&tag).exists(), "the probe ran on the host");

    let host_only = std::env::temp_dir().join(format!("{tag}-host-only"));
    std::fs::write(&host_only, "").unwrap();
    let probe = format!(
        "  health: {{exec: {{command: [/bin/sh, -c, \"test -e {}\"]}}, interval: 200ms, retries: 2, startPeriod: 0s}}\n",
        host_only.display()
    );
    let name = format!("{runtime}-host-only");
    let a = erad.apply_wait(&spec(&erad, runtime, &name, &image, &probe));
    let _ = std::fs::remove_file(&host_only);
    assert_ne!(a.code, 0, "a probe of a host-only file passed: it ran on the host\n{a:?}");
    let d = erad.get(&name);
    assert_eq!(d["state"], "Failed", "{d}");
    assert!(d["message"].as_str().unwrap().contains("health check"), "{d}");
    for n in [format!("{runtime}-probe"), name] {
        assert_eq!(erad.era(&["delete", &n, "--wait"]).code, 0);
    }
}

/// The host's root file system's device (major, minor).
fn root_device() -> (u32, u32) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/")).expect("a mount at /");
    let (major, minor) = line.split(' ').nth(2).unwrap().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// The workload, root in its container with CAP_MKNOD, makes a node for the
/// host's disk in its `/dev` (a tmpfs of the runtime's, not the work dir,
/// which erad mounts nodev) and tries to read it: the device rules refuse
/// the open.
fn the_host_disk_is_out_of_reach(runtime: &str) {
    let (major, minor) = root_device();
    let script = format!(
        "mknod /dev/hostdisk b {major} {minor} && echo made > /data/made; head -c 512 /dev/hostdisk > /data/read 2> /data/err; echo $? > /data/rc; exec sleep 600"
    );
    let registry = Registry::start();
    registry.push_busybox("demo/disk", "1", &["/bin/sh", "-c", &script], &[]);
    let image = format!("{}/demo/disk:1", registry.addr);
    let erad = Erad::start_with(&config(), &[]);
    let name = format!("{runtime}-disk");
    let a = erad.apply_wait(&spec(&erad, runtime, &name, &image, ""));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let data = erad.data_dir().join(format!("volumes/{name}/data"));
    eventually(T, || data.join("rc").exists());
    let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap_or_default();
    assert_eq!(read("made").trim(), "made", "the node was made (mknod is allowed, using it is not)");
    assert_ne!(read("rc").trim(), "0", "the host's disk was read from the container");
    assert_eq!(std::fs::metadata(data.join("read")).unwrap().len(), 0);
    assert!(read("err").contains("Operation not permitted"), "{}", read("err"));
    assert_eq!(erad.era(&["delete", &name, "--wait"]).code, 0);
}

#[test]
fn the_exec_probe_runs_inside_the_runc_container() {
    the_exec_probe_runs_inside("container");
}

#[test]
fn the_exec_probe_runs_inside_the_lxc_container() {
    the_exec_probe_runs_inside("lxc");
}

#[test]
fn a_runc_container_cannot_read_the_hosts_disk() {
    the_host_disk_is_out_of_reach("container");
}

#[test]
fn an_lxc_container_cannot_read_the_hosts_disk() {
    the_host_disk_is_out_of_reach("lxc");
}
