//! API roles, checked against real non-root users on the socket: `era` runs
//! under `setpriv` with the uid and groups of each role.

use era_tests::{Answer, Erad, fixture_plugins};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

/// Groups the test makes up: numbers need no `/etc/group` entry.
const READ_GID: u32 = 64801;
const ADMIN_GID: u32 = 64802;
/// The user every caller runs as (nobody), with its own primary group.
const NOBODY: u32 = 65534;

/// Every command that changes something, with its RPC's name.
fn mutating(spec: &str) -> Vec<(&'static str, Vec<String>)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("apply", v(&["apply", "-f", spec])),
        ("validate", v(&["validate", "-f", spec])),
        ("stop", v(&["stop", "web"])),
        ("start", v(&["start", "web"])),
        ("delete", v(&["delete", "web"])),
        ("rollback", v(&["rollback", "web"])),
        ("pull", v(&["pull", "127.0.0.1:1/nothing/here:1"])),
        ("plan", v(&["plan", "-f", spec])),
        ("applyplan", v(&["apply", "--plan", "0123456789ab"])),
        ("destroy", v(&["destroy", "--env", "default", "--confirm", "default"])),
        ("forceunlock", v(&["lock", "force-unlock", "default", "--confirm", "default"])),
        ("setoutput", v(&["outputs", "set", "web", "port", "1"])),
        ("promote", v(&["promote", "web", "--from", "default", "--to", "qa"])),
        ("acknowledgebreaches", v(&["invariants", "ack", "--env", "default", "--confirm", "default"])),
        ("deleteallenvironments", v(&["delete", "web", "--all-envs"])),
    ]
}

fn reads() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("get", vec!["get", "web"]),
        ("list", vec!["list"]),
        ("history", vec!["history", "web"]),
        ("logs", vec!["logs", "web"]),
        ("plugins", vec!["plugins"]),
        ("images", vec!["images"]),
        ("outputs", vec!["outputs", "web"]),
        ("report", vec!["report"]),
        ("locks", vec!["lock", "list"]),
        ("runs", vec!["runs"]),
        ("invariants", vec!["invariants"]),
    ]
}

fn args(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn start() -> Erad {
    let erad = Erad::start_with(
        &format!("{}\n[api]\nadmin_group = {ADMIN_GID}\nread_group = \"{READ_GID}\"\n", fixture_plugins()),
        &[],
    );
    // tempfile makes the test dir (the socket's dir) 0700; let the test
    // users walk to the socket, whose own mode and group are erad's.
    std::fs::set_permissions(erad.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    erad
}

fn denied(a: &Answer, rpc: &str, says: &str) {
    assert_eq!(a.code, 4, "{rpc}: {a:?}");
    assert!(a.stderr.starts_with("era: permission denied: "), "{rpc}: {a:?}");
    assert!(a.stderr.contains(says), "{rpc}: expected {says:?} in {a:?}");
}

#[test]
fn a_reader_may_read_but_every_mutating_call_is_refused() {
    let erad = start();
    let spec = erad.deployment("web", "noop", "v1", "");
    assert_eq!(erad.apply_wait(&spec).code, 0, "{}", erad.log());
    let journal = erad.history("web").len();
    let socket = std::fs::metadata(erad.socket()).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660);
    assert_eq!(socket.gid(), READ_GID, "the socket belongs to the read group");

    let reader = |a: &[&str]| erad.era_as(NOBODY, NOBODY, &[READ_GID], a);
    let spec2 = erad.deployment("web", "noop", "v2", "");
    for (rpc, cmd) in mutating(spec2.to_str().unwrap()) {
        let a = reader(&args(&cmd));
        denied(
            &a,
            rpc,
            &format!("{rpc} needs the admin role (root or group {ADMIN_GID}); you are uid {NOBODY} in the reader role"),
        );
    }
    for (rpc, cmd) in reads() {
        let a = reader(&cmd);
        assert_eq!(a.code, 0, "{rpc}: {a:?}");
    }
    let got = reader(&["-o", "json", "get", "web"]);
    assert_eq!(got.json()["state"], "Running");
    assert!(reader(&["list"]).stdout.contains("web"));
    // Nothing changed.
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)));
    assert_eq!(erad.history("web").len(), journal, "no transition was committed");
}

#[test]
fn a_user_in_neither_group_is_refused_everything() {
    let erad = start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let outsider = |a: &[&str]| erad.era_as(NOBODY, NOBODY, &[], a);
    // The socket itself keeps them out.
    denied(&outsider(&["list"]), "list", "cannot open erad's socket");
    // And if it did not (a socket opened up by mistake), erad does.
    std::fs::set_permissions(erad.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let spec = erad.deployment("web", "noop", "v2", "");
    for (rpc, cmd) in mutating(spec.to_str().unwrap()) {
        denied(
            &outsider(&args(&cmd)),
            rpc,
            &format!("{rpc} needs the admin role (root or group {ADMIN_GID}); you are uid {NOBODY} with no role"),
        );
    }
    for (rpc, cmd) in reads() {
        denied(
            &outsider(&cmd),
            rpc,
            &format!(
                "{rpc} needs the reader role (group {READ_GID}, or admin: root or group {ADMIN_GID}); you are uid {NOBODY} with no role"
            ),
        );
    }
    // A primary group is a membership too (SO_PEERCRED reports it).
    let a = erad.era_as(NOBODY, READ_GID, &[], &["get", "web"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("web")["state"], "Running");
}

#[test]
fn an_admin_group_member_may_change_deployments() {
    let erad = start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let admin = |a: &[&str]| erad.era_as(NOBODY, NOBODY, &[READ_GID, ADMIN_GID], a);
    let stop = admin(&["stop", "web", "--wait", "--timeout", "60s"]);
    assert_eq!(stop.code, 0, "{stop:?}\n{}", erad.log());
    assert_eq!(erad.get("web")["state"], "Stopped");
    let start = admin(&["start", "web", "--wait", "--timeout", "60s"]);
    assert_eq!(start.code, 0, "{start:?}");
    let spec = erad.deployment("web", "noop", "v2", "");
    let apply = admin(&["apply", "-f", spec.to_str().unwrap(), "--wait", "--timeout", "60s"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    erad.wait_for_state("web", "Running", Duration::from_secs(30));
    assert_eq!(erad.get("web")["revision"], 2);
}

#[test]
fn a_socket_dir_erad_creates_is_0750_and_it_and_the_socket_belong_to_the_read_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("erad.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\n[daemon]\ndata_dir = \"{d}/data\"\nsocket = \"{d}/run/era/erad.sock\"\n[api]\nread_group = {READ_GID}\n{}",
            fixture_plugins()
        ),
    )
    .unwrap();
    let socket = dir.path().join("run/era/erad.sock");
    let mut child = std::process::Command::new(era_tests::bin("erad"))
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    era_tests::eventually(Duration::from_secs(60), || std::os::unix::net::UnixStream::connect(&socket).is_ok());
    let run = std::fs::metadata(socket.parent().unwrap()).unwrap();
    let sock = std::fs::metadata(&socket).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    era_tests::unmount_work_dirs(&dir.path().join("data"));
    assert_eq!((run.permissions().mode() & 0o7777, run.gid()), (0o750, READ_GID), "the socket's dir");
    assert_eq!((sock.permissions().mode() & 0o777, sock.gid()), (0o660, READ_GID), "the socket");
}
