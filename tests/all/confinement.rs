//! What erad opens stays where it belongs: workload logs are not followed
//! out of their work dir, `file:` artifacts come only from the operator's
//! roots, and erad's own files are private.

use era_tests::{Erad, eventually, fixture_plugins, sha256};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A file outside erad's dirs that no operation may read or change; big
/// enough that rotation (at 1 MiB) would act on it.
fn marker(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("marker");
    let content = "root's secret\n".repeat(200_000).into_bytes();
    std::fs::write(&path, &content).unwrap();
    (path, content)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn era_logs_refuses_a_log_linked_out_and_rotation_never_touches_the_target() {
    let erad = Erad::start_with(&format!("{}\n[limits]\nlog_max_mib = 1\n", fixture_plugins()), &[]);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0, "{}", erad.log());
    let outside = tempfile::tempdir().unwrap();
    let (marker, content) = marker(outside.path());
    let logs = erad.data_dir().join("deployments/web/rev-1/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let _ = std::fs::remove_file(logs.join("output.log"));
    symlink(&marker, logs.join("output.log")).unwrap();

    let a = erad.era(&["logs", "web"]);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(
        a.stderr.contains("logs/output.log in the work dir of web revision 1 is a symlink; refusing to follow it"),
        "{a:?}"
    );
    assert!(!a.stdout.contains("root's secret"), "the target was streamed");
    // Rotation runs with every health check (200 ms here) and refuses too.
    eventually(T, || {
        erad.log().contains("rotating the workload log: logs/output.log in the work dir of web revision 1 is a symlink")
    });
    assert_eq!(std::fs::read(&marker).unwrap(), content, "the target was not truncated");
    assert!(!logs.join("output.log.1").exists(), "nothing was copied out of it");

    // A rotated file planted as a link is refused when read, and rotation
    // replaces it rather than writing through it.
    std::fs::remove_file(logs.join("output.log")).unwrap();
    std::fs::write(logs.join("output.log"), "small\n").unwrap();
    symlink(&marker, logs.join("output.log.1")).unwrap();
    let a = erad.era(&["logs", "web"]);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(a.stderr.contains("logs/output.log.1 in the work dir of web revision 1 is a symlink"), "{a:?}");
    let log = "workload line\n".repeat(100_000);
    std::fs::write(logs.join("output.log"), &log).unwrap();
    eventually(T, || std::fs::symlink_metadata(logs.join("output.log.1")).is_ok_and(|m| m.is_file()));
    assert_eq!(std::fs::read_to_string(logs.join("output.log.1")).unwrap(), log);
    assert_eq!(std::fs::read(&marker).unwrap(), content, "the link's target is unchanged");
    let a = erad.era(&["logs", "web", "--tail", "1"]);
    assert_eq!((a.code, a.stdout.as_str()), (0, "workload line\n"), "{a:?}");
}

#[test]
fn file_artifacts_are_read_only_from_beneath_the_operators_roots() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (marker, content) = marker(outside.path());
    let erad = Erad::start_with(
        &format!("{}\n[artifacts]\nfile_roots = [\"{}\"]\n", fixture_plugins(), root.path().display()),
        &[],
    );
    let spec = |name: &str, file: &str, sha: &str| {
        erad.spec(
            &format!("{name}.yaml"),
            &format!("apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{file: \"{file}\", sha256: \"{sha}\"}}\n"),
        )
    };
    // Beneath the root: fine, also through a link that stays inside it.
    std::fs::create_dir(root.path().join("v1")).unwrap();
    std::fs::write(root.path().join("v1/app.bin"), b"app").unwrap();
    symlink("v1/app.bin", root.path().join("current.bin")).unwrap();
    let ok = spec("inside", &root.path().join("current.bin").display().to_string(), &sha256(b"app"));
    assert_eq!(erad.apply_wait(&ok).code, 0, "{}", erad.log());

    // Outside it (the spec's own dir is not a root): refused at Validating,
    // by `era validate` too, naming the path and the config key.
    std::fs::write(erad.dir.path().join("app.bin"), b"app").unwrap();
    let beside = spec("beside", "app.bin", &sha256(b"app"));
    let v = erad.era(&["validate", "-f", beside.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    let says = format!(
        "{} is not beneath any directory of artifacts.file_roots ({})",
        erad.dir.path().join("app.bin").display(),
        root.path().display()
    );
    assert!(v.stderr.contains(&says), "{v:?}");
    assert_eq!(erad.apply_wait(&beside).code, 1);
    let d = erad.get("beside");
    assert_eq!(d["state"], "Failed");
    assert!(d["message"].as_str().unwrap().contains(&says), "{d}");
    assert_eq!(erad.history("beside").last().unwrap()["from"], "Validating");

    // A link out of the root, with a wrong digest: refused at Fetching, and
    // the target is never hashed (its digest is not in the message).
    symlink(&marker, root.path().join("secret.bin")).unwrap();
    let linked = spec("linked", &root.path().join("secret.bin").display().to_string(), &sha256(b"a guess"));
    assert_eq!(erad.apply_wait(&linked).code, 1);
    let msg = erad.get("linked")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("leads out of") && msg.contains("artifacts.file_roots"), "{msg}");
    assert!(!msg.contains(&sha256(&content)), "{msg}");
    assert_eq!(erad.history("linked").last().unwrap()["from"], "Fetching");
    let climbing = spec("climbing", &format!("{}/../{}", root.path().display(), marker.display()), &sha256(b"x"));
    assert_eq!(erad.apply_wait(&climbing).code, 1);
    assert!(erad.get("climbing")["message"].as_str().unwrap().contains("is not beneath any directory"));
    assert_eq!(std::fs::read(&marker).unwrap(), content);
}

#[test]
fn without_file_roots_there_are_no_file_artifacts() {
    let erad = Erad::start_with(&format!("{}\n[artifacts]\nfile_roots = []\n", fixture_plugins()), &[]);
    let spec = erad.deployment("web", "noop", "v1", "");
    let v = erad.era(&["validate", "-f", spec.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(
        v.stderr.contains("file: artifacts are off, as artifacts.file_roots in erad's config lists no directory"),
        "{v:?}"
    );
}

#[test]
fn erad_file_roots_from_the_environment_replace_the_configs() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("app.bin"), b"app").unwrap();
    let roots = format!("/nonexistent/era-roots:{}", root.path().display());
    let erad = Erad::start_with(
        &format!("{}\n[artifacts]\nfile_roots = []\n", fixture_plugins()),
        &[("ERAD_FILE_ROOTS", roots.as_str())],
    );
    let spec = erad.spec(
        "web.yaml",
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  runtime: noop\n  artifact: {{file: \"{}\", sha256: \"{}\"}}\n",
            root.path().join("app.bin").display(),
            sha256(b"app")
        ),
    );
    assert_eq!(erad.apply_wait(&spec).code, 0, "{}", erad.log());
}

#[test]
fn the_data_dir_and_database_are_private_and_loose_ones_are_tightened() {
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let data = erad.data_dir();
    assert_eq!(mode(&data), 0o700);
    for f in ["era.db", "era.db-wal", "era.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert!(erad.terminate().success());
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("era.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    erad.spawn(&[]).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("era.db")), 0o600);
    assert!(erad.log().contains("was mode 0755, open to others; tightened to 0700"), "{}", erad.log());
    assert_eq!(erad.get("web")["state"], "Running");
}

#[test]
fn erad_dev_keeps_its_files_private_too() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (p, name) in [
        (era_tests::plugin::NOOP, "noop"),
        (era_tests::plugin::CONTAINER, "container"),
        (era_tests::plugin::LXC, "lxc"),
    ] {
        std::fs::copy(p, plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let dev = dir.path().join("dev");
    let mut child = std::process::Command::new(era_tests::bin("erad"))
        .arg("--dev")
        .arg(&dev)
        .arg("--plugin-dir")
        .arg(&plugins)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), || std::os::unix::net::UnixStream::connect(dev.join("erad.sock")).is_ok());
    let modes = [mode(&dev), mode(&dev.join("erad.sock")), mode(&dev.join("data")), mode(&dev.join("data/era.db"))];
    let _ = child.kill();
    let _ = child.wait();
    era_tests::unmount_work_dirs(&dev.join("data"));
    assert_eq!(modes, [0o750, 0o660, 0o700, 0o600], "dev dir, socket, data dir, era.db");
}
