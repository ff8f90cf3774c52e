//! OCI artifacts from a real registry (Debian's docker-registry on
//! loopback): images built with umoci and pushed with skopeo, Wasm component
//! artifacts pushed through the registry API.

use era_tests::{Erad, Registry, eventually};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn spec(erad: &Erad, name: &str, artifact: &str, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{{artifact}}}\n{extra}"
    );
    erad.spec(&format!("{name}-{}.yaml", &era_tests::sha256(yaml.as_bytes())[..8]), &yaml)
}

fn blob(erad: &Erad, digest: &str) -> std::path::PathBuf {
    erad.data_dir().join("content/blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

#[test]
fn an_image_by_tag_is_pulled_and_pinned_to_its_digest() {
    let registry = Registry::start();
    let digest = registry.push_image("demo/app", "v1", &[("app/hello.txt", "hello")]);
    let erad = Erad::start();
    let a = erad.apply_wait(&spec(&erad, "app", &format!("image: \"{}/demo/app:v1\"", registry.addr), ""));
    assert_eq!(a.code, 0, "{a:?}");
    let d = erad.get("app");
    assert_eq!(d["artifact_digest"], digest.as_str());
    assert!(blob(&erad, &digest).is_file(), "the manifest is in the store");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&erad, &digest)).unwrap()).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        assert!(blob(&erad, l["digest"].as_str().unwrap()).is_file(), "layer {l} is in the store");
    }
    assert!(blob(&erad, manifest["config"]["digest"].as_str().unwrap()).is_file());
}

#[test]
fn an_image_by_digest_is_pulled_and_a_wrong_pinned_digest_is_refused() {
    let registry = Registry::start();
    let digest = registry.push_image("demo/app", "v1", &[("a", "1")]);
    let erad = Erad::start();
    let by_digest = spec(&erad, "bydigest", &format!("image: \"{}/demo/app@{digest}\"", registry.addr), "");
    assert_eq!(erad.apply_wait(&by_digest).code, 0);
    assert_eq!(erad.get("bydigest")["artifact_digest"], digest.as_str());
    let wrong = era_tests::sha256(b"another image");
    let pinned = spec(&erad, "pinned", &format!("image: \"{}/demo/app:v1\", sha256: \"{wrong}\"", registry.addr), "");
    assert_eq!(erad.apply_wait(&pinned).code, 1);
    let d = erad.get("pinned");
    assert_eq!(d["state"], "Failed");
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains(&format!("sha256:{wrong}")) && msg.contains(&digest), "{msg}");
}

#[test]
fn a_wasm_component_artifact_is_pulled_with_its_layer_as_the_local_file() {
    let registry = Registry::start();
    let wasm = std::fs::read(era_tests::plugin::NOOP).unwrap();
    let digest = registry.push_wasm("plugins/noop", "0.1.0", &wasm);
    let erad = Erad::start();
    let a = erad.apply_wait(&spec(&erad, "component", &format!("wasm: \"{}/plugins/noop:0.1.0\"", registry.addr), ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("component")["artifact_digest"], digest.as_str());
    assert_eq!(std::fs::read(blob(&erad, &format!("sha256:{}", era_tests::sha256(&wasm)))).unwrap(), wasm);
}

#[test]
fn an_artifact_of_the_wrong_shape_is_refused_by_kind() {
    let registry = Registry::start();
    registry.push_artifact(
        "demo/notwasm",
        "v1",
        "application/vnd.oci.image.config.v1+json",
        b"{}",
        &[("application/octet-stream", b"x")],
    );
    registry.push_artifact(
        "demo/twolayers",
        "v1",
        "application/vnd.oci.empty.v1+json",
        b"{}",
        &[("text/plain", b"a"), ("text/plain", b"b")],
    );
    let erad = Erad::start();
    assert_eq!(
        erad.apply_wait(&spec(&erad, "notwasm", &format!("wasm: \"{}/demo/notwasm:v1\"", registry.addr), "")).code,
        1
    );
    assert!(erad.get("notwasm")["message"].as_str().unwrap().contains("not a Wasm component artifact"));
    assert_eq!(
        erad.apply_wait(&spec(&erad, "twolayers", &format!("blob: \"{}/demo/twolayers:v1\"", registry.addr), "")).code,
        1
    );
    assert!(erad.get("twolayers")["message"].as_str().unwrap().contains("exactly one layer, this has 2"));
    let blob_ok = spec(&erad, "oneblob", &format!("blob: \"{}/demo/notwasm:v1\"", registry.addr), "");
    assert_eq!(erad.apply_wait(&blob_ok).code, 0, "one layer is a blob artifact");
}

#[test]
fn a_moved_tag_never_changes_a_deployed_revision_across_restart_and_rollback() {
    let registry = Registry::start();
    let v1 = registry.push_image("demo/app", "stable", &[("version", "1")]);
    let mut erad = Erad::start();
    let image = format!("image: \"{}/demo/app:stable\"", registry.addr);
    assert_eq!(erad.apply_wait(&spec(&erad, "app", &image, "")).code, 0);
    assert_eq!(erad.get("app")["artifact_digest"], v1.as_str());

    // The tag moves to another image.
    let v2 = registry.push_image("demo/app", "stable", &[("version", "2")]);
    assert_ne!(v1, v2);
    erad.kill9();
    erad.spawn(&[]).unwrap();
    eventually(T, || erad.get("app")["state"] == "Running");
    assert_eq!(erad.get("app")["artifact_digest"], v1.as_str(), "a restart keeps the pinned digest");

    // A new revision that asks the registry (pullPolicy: Always) resolves
    // the tag anew; rolling back returns to v1's digest.
    let always = format!("{}, pullPolicy: Always", image);
    assert_eq!(erad.apply_wait(&spec(&erad, "app", &always, "  env: {REV: \"2\"}\n")).code, 0);
    assert_eq!(erad.get("app")["artifact_digest"], v2.as_str());
    assert_eq!(erad.era(&["rollback", "app", "--wait", "--timeout", "60s"]).code, 0);
    let d = erad.get("app");
    assert_eq!((d["revision"].as_u64(), d["artifact_digest"].as_str()), (Some(1), Some(v1.as_str())));
}

#[test]
fn a_tag_is_asked_of_the_registry_as_the_pull_policy_says_and_works_offline_once_pulled() {
    let registry = Registry::start();
    let v1 = registry.push_image("demo/app", "stable", &[("version", "1")]);
    let erad = Erad::start();
    let stable = format!("{}/demo/app:stable", registry.addr);
    let digest_of = |name: &str| erad.get(name)["artifact_digest"].as_str().unwrap_or("").to_string();

    // Never: only what the store holds; nothing is, so it fails naming why.
    let never = spec(&erad, "never", &format!("image: \"{stable}\", pullPolicy: Never"), "");
    assert_ne!(erad.apply_wait(&never).code, 0);
    let failed = erad.wait_for_state("never", "Failed", T);
    assert!(failed["message"].as_str().unwrap().contains("pullPolicy is Never"), "{failed}");

    // The default for a tag other than latest is IfNotPresent: the first
    // fetch asks the registry; after the tag moves, a new deployment gets
    // the digest this host fetched, as a Kubernetes node does.
    assert_eq!(erad.apply_wait(&spec(&erad, "a", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("a"), v1);
    let v2 = registry.push_image("demo/app", "stable", &[("version", "2")]);
    assert_eq!(erad.apply_wait(&spec(&erad, "b", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("b"), v1, "IfNotPresent did not ask the registry");
    // Never now finds it in the store.
    let never = spec(&erad, "never", &format!("image: \"{stable}\", pullPolicy: Never"), "  env: {TRY: \"2\"}\n");
    let a = erad.apply_wait(&never);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(digest_of("never"), v1);

    // Always asks, and what it fetched is what the host now knows the tag as.
    let always = spec(&erad, "c", &format!("image: \"{stable}\", pullPolicy: Always"), "");
    assert_eq!(erad.apply_wait(&always).code, 0);
    assert_eq!(digest_of("c"), v2);
    assert_eq!(erad.apply_wait(&spec(&erad, "d", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("d"), v2);

    // A fetch pinned to a digest does not say what the tag points to.
    let pinned = format!("image: \"{stable}\", sha256: \"{}\"", v1.trim_start_matches("sha256:"));
    assert_eq!(erad.apply_wait(&spec(&erad, "p", &pinned, "")).code, 0);
    assert_eq!(digest_of("p"), v1);
    assert_eq!(erad.apply_wait(&spec(&erad, "q", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("q"), v2, "the pinned fetch left the tag as the registry resolved it");

    // `era pull` refreshes it.
    let v3 = registry.push_image("demo/app", "stable", &[("version", "3")]);
    assert_eq!(erad.era(&["pull", &stable]).code, 0);
    assert_eq!(erad.apply_wait(&spec(&erad, "e", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("e"), v3);

    // A layer gone from the store: Never asks the registry for nothing (it
    // fails, though the registry has it); IfNotPresent fetches just that.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&erad, &v3)).unwrap()).unwrap();
    let layer = blob(&erad, manifest["layers"][0]["digest"].as_str().unwrap());
    std::fs::remove_file(&layer).unwrap();
    let never = spec(&erad, "nv", &format!("image: \"{stable}\", pullPolicy: Never"), "");
    assert_ne!(erad.apply_wait(&never).code, 0);
    let failed = erad.wait_for_state("nv", "Failed", T);
    assert!(failed["message"].as_str().unwrap().contains("pullPolicy is Never"), "{failed}");
    assert!(!layer.exists());
    assert_eq!(erad.apply_wait(&spec(&erad, "refill", &format!("image: \"{stable}\""), "")).code, 0);
    assert_eq!(digest_of("refill"), v3);
    assert!(layer.is_file(), "the missing layer was fetched");

    // latest (or no tag) is always asked.
    let latest = format!("{}/demo/app:latest", registry.addr);
    let l1 = registry.push_image("demo/app", "latest", &[("version", "l1")]);
    assert_eq!(erad.apply_wait(&spec(&erad, "l", &format!("image: \"{latest}\""), "")).code, 0);
    assert_eq!(digest_of("l"), l1);
    let l2 = registry.push_image("demo/app", "latest", &[("version", "l2")]);
    assert_eq!(erad.apply_wait(&spec(&erad, "m", &format!("image: \"{latest}\""), "")).code, 0);
    assert_eq!(digest_of("m"), l2);

    // The registry goes away: a tag pulled before still deploys; latest
    // cannot, and says so.
    drop(registry);
    let a = erad.apply_wait(&spec(&erad, "offline", &format!("image: \"{stable}\""), ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(digest_of("offline"), v3);
    assert_ne!(erad.apply_wait(&spec(&erad, "n", &format!("image: \"{latest}\""), "")).code, 0);

    // Refused at validation: a policy for a file, an unknown policy.
    let file = spec(&erad, "f", &format!("file: x.bin, sha256: \"{}\", pullPolicy: Always", "0".repeat(64)), "");
    let v = erad.era(&["validate", "-f", file.to_str().unwrap()]);
    assert!(v.code != 0 && v.stderr.contains("spec.artifact.pullPolicy"), "{v:?}");
    let odd = spec(&erad, "g", &format!("image: \"{stable}\", pullPolicy: Sometimes"), "");
    let v = erad.era(&["validate", "-f", odd.to_str().unwrap()]);
    assert!(v.code != 0 && v.stderr.contains("Sometimes") && v.stderr.contains("IfNotPresent"), "{v:?}");
}

#[test]
fn a_tampering_registry_is_refused_each_way_with_nothing_tampered_left_in_the_store() {
    use era_tests::{Tamper, tampering_proxy};
    let registry = Registry::start();
    let digest = registry.push_image("demo/app", "v1", &[("payload.bin", &"x".repeat(4096))]);
    let cases = [
        (Tamper::FlipBlobByte, "digest mismatch"),
        (Tamper::TruncateBlob, "ended after"),
        (Tamper::LengthenBlob, "is longer than the"),
        (Tamper::WrongDigestHeader, "Docker-Content-Digest"),
        (Tamper::ConfuseManifest, "both an index (manifests) and a manifest"),
        (Tamper::WrongMediaType, "is a manifest but the registry served it as application/vnd.oci.image.index.v1+json"),
        (Tamper::TraversalDigest, "is not a sha256 digest"),
    ];
    // A real layer (a gzipped tar with one file) outside the store, which a
    // traversing digest would have erad take as a verified layer.
    let mut bait = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_cksum();
    bait.append_data(&mut header, "stolen.txt", &b"stolen"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bait.into_inner().unwrap()).unwrap();
    std::fs::write(era_tests::TRAVERSAL_BAIT, gz.finish().unwrap()).unwrap();
    let erad = Erad::start();
    for (i, (tamper, expected)) in cases.into_iter().enumerate() {
        let proxy = tampering_proxy(&registry.addr, tamper);
        let name = format!("tampered-{i}");
        let a = erad.apply_wait(&spec(&erad, &name, &format!("image: \"{proxy}/demo/app:v1\""), ""));
        assert_eq!(a.code, 1, "{tamper:?}: {a:?}");
        let d = erad.get(&name);
        assert_eq!(d["state"], "Failed", "{tamper:?}");
        let msg = d["message"].as_str().unwrap();
        assert!(msg.contains(expected), "{tamper:?}: {msg}");
        assert!(!erad.history(&name).iter().any(|e| e["to"] == "Installing"), "{tamper:?}: nothing installed");
        assert_eq!(era_tests::files_under(&erad.data_dir().join("content/tmp")), Vec::<String>::new(), "{tamper:?}");
    }
    assert!(
        !era_tests::files_under(&erad.data_dir()).iter().any(|f| f.ends_with("stolen.txt")),
        "the host file was taken as a layer"
    );
    let _ = std::fs::remove_file(era_tests::TRAVERSAL_BAIT);
    // Nothing the proxy tampered with reached the store: every blob there
    // hashes to its name.
    for f in era_tests::files_under(&erad.data_dir().join("content/blobs/sha256")) {
        let bytes = std::fs::read(erad.data_dir().join("content/blobs/sha256").join(&f)).unwrap();
        assert_eq!(era_tests::sha256(&bytes), f, "a blob in the store does not match its name");
    }
    // The untampered registry still serves the same image fine.
    let ok = spec(&erad, "direct", &format!("image: \"{}/demo/app:v1\"", registry.addr), "");
    assert_eq!(erad.apply_wait(&ok).code, 0);
    assert_eq!(erad.get("direct")["artifact_digest"], digest.as_str());
}

#[test]
fn an_image_is_unpacked_once_and_each_revision_runs_it_through_an_overlay_of_its_own() {
    let registry = Registry::start();
    let digest = registry.push_image("demo/app", "v1", &[("app/hello.txt", "hello from the image")]);
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    let image = format!("image: \"{}/demo/app:v1\"", registry.addr);
    for name in ["app", "other"] {
        assert_eq!(erad.apply_wait(&spec(&erad, name, &image, "")).code, 0);
    }
    let deployments = erad.data_dir().join("deployments");
    let rootfs = |name: &str| deployments.join(name).join("rev-1/rootfs");
    for name in ["app", "other"] {
        assert_eq!(std::fs::read_to_string(rootfs(name).join("app/hello.txt")).unwrap(), "hello from the image");
        assert_eq!(era_tests::mount_type(&rootfs(name)).as_deref(), Some("overlay"), "{name}'s rootfs is an overlay");
    }
    assert!(!deployments.join("app/rev-1/rootfs.done").exists(), "nothing was unpacked into the work dir");
    // One snapshot, named by the manifest, under both.
    let snapshots = erad.data_dir().join("content/snapshots");
    let names: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [digest.trim_start_matches("sha256:")], "one snapshot for the image");
    let snapshot = snapshots.join(&names[0]);

    // What the workload writes stays with its own revision.
    std::fs::write(rootfs("app").join("app/hello.txt"), "changed by app").unwrap();
    std::fs::write(rootfs("app").join("new.txt"), "new").unwrap();
    assert_eq!(std::fs::read_to_string(rootfs("other").join("app/hello.txt")).unwrap(), "hello from the image");
    assert!(!rootfs("other").join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(snapshot.join("app/hello.txt")).unwrap(), "hello from the image");
    assert!(deployments.join("app/rev-1.overlay/upper/new.txt").exists(), "app's changes are in its upper dir");

    // A delete takes the revision's mount and changes; the snapshot stays
    // while another deployment runs the image, and goes with the last one.
    assert_eq!(erad.era(&["delete", "app", "--wait"]).code, 0);
    assert_eq!(era_tests::mount_type(&rootfs("app")), None);
    assert!(!deployments.join("app").exists());
    assert!(snapshot.join("app/hello.txt").exists(), "other still runs the image");
    assert_eq!(erad.era(&["delete", "other", "--wait"]).code, 0);
    era_tests::eventually(std::time::Duration::from_secs(10), || !snapshot.exists());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let beneath = info.lines().filter(|l| l.contains(&*deployments.to_string_lossy())).count();
    assert_eq!(beneath, 1, "only the work dirs' own nodev mount is left: {info}");
}

#[test]
fn with_rootfs_copy_each_revision_gets_its_own_unpacked_copy() {
    let registry = Registry::start();
    registry.push_image("demo/app", "v1", &[("app/hello.txt", "hello from the image")]);
    let config = format!("{}\n[artifacts]\nrootfs = \"copy\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    assert_eq!(erad.apply_wait(&spec(&erad, "app", &format!("image: \"{}/demo/app:v1\"", registry.addr), "")).code, 0);
    let rootfs = erad.data_dir().join("deployments/app/rev-1/rootfs");
    assert_eq!(std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(), "hello from the image");
    assert!(erad.data_dir().join("deployments/app/rev-1/rootfs.done").exists());
    assert_eq!(era_tests::mount_type(&rootfs), None, "a plain directory");
    assert_eq!(std::fs::read_dir(erad.data_dir().join("content/snapshots")).unwrap().count(), 0);
}

#[test]
fn a_revisions_rootfs_mount_outlives_erad_and_comes_back_after_a_reboot_with_its_changes() {
    let registry = Registry::start();
    registry.push_image("demo/app", "v1", &[("app/hello.txt", "hello from the image")]);
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&spec(&erad, "app", &format!("image: \"{}/demo/app:v1\"", registry.addr), "")).code, 0);
    let rootfs = erad.data_dir().join("deployments/app/rev-1/rootfs");
    std::fs::write(rootfs.join("written.txt"), "by the workload").unwrap();

    // erad restarts (gracefully): the mount stays, as the workload may use it.
    assert!(erad.terminate().success());
    assert_eq!(era_tests::mount_type(&rootfs).as_deref(), Some("overlay"), "kept across erad's restart");
    erad.spawn(&[]).unwrap();
    assert_eq!(erad.era(&["stop", "app", "--wait"]).code, 0);

    // A reboot takes every mount; the next start mounts it again, with the
    // revision's own changes.
    let out = std::process::Command::new("umount").arg("--lazy").arg(&rootfs).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!rootfs.join("written.txt").exists());
    let started = erad.era(&["start", "app", "--wait"]);
    assert_eq!(started.code, 0, "{started:?}");
    assert_eq!(era_tests::mount_type(&rootfs).as_deref(), Some("overlay"));
    assert_eq!(std::fs::read_to_string(rootfs.join("written.txt")).unwrap(), "by the workload");
    assert_eq!(std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(), "hello from the image");
}

#[test]
fn a_symlink_where_the_rootfs_belongs_is_never_mounted_through() {
    // While a revision's rootfs is not mounted (after a reboot), its plugin
    // can put anything in the work dir: here, a symlink to a host dir.
    let registry = Registry::start();
    registry.push_image("demo/app", "v1", &[("app/hello.txt", "hello from the image")]);
    let erad = Erad::start();
    assert_eq!(erad.apply_wait(&spec(&erad, "app", &format!("image: \"{}/demo/app:v1\"", registry.addr), "")).code, 0);
    assert_eq!(erad.era(&["stop", "app", "--wait"]).code, 0);
    let rootfs = erad.data_dir().join("deployments/app/rev-1/rootfs");
    let out = std::process::Command::new("umount").arg("--lazy").arg(&rootfs).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("marker"), "host data").unwrap();
    std::fs::remove_dir(&rootfs).unwrap();
    std::os::unix::fs::symlink(host.path(), &rootfs).unwrap();

    let started = erad.era(&["start", "app", "--wait"]);
    assert_ne!(started.code, 0, "{started:?}");
    let history = erad.era(&["history", "app"]).stdout;
    assert!(history.contains("rootfs is not a directory erad made"), "{history}");
    assert_eq!(era_tests::mount_type(host.path()), None, "nothing was mounted on the host dir");
    assert_eq!(std::fs::read_to_string(host.path().join("marker")).unwrap(), "host data");
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
    // Nor unmounted through it: delete still cleans up, leaving the host dir be.
    assert_eq!(erad.era(&["delete", "app", "--wait"]).code, 0);
    assert_eq!(std::fs::read_to_string(host.path().join("marker")).unwrap(), "host data");
}

/// One tar layer holding a single entry with a raw, unchecked name.
fn hostile_layer(name: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let body = b"pwned";
    h.set_size(if kind == tar::EntryType::Regular { body.len() as u64 } else { 0 });
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    if kind == tar::EntryType::Regular {
        out.extend_from_slice(body);
        out.resize(1024, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn a_hostile_layer_fails_preparing_naming_the_entry_and_touches_nothing_outside() {
    let registry = Registry::start();
    let erad = Erad::start();
    let sentinel = erad.data_dir().join("deployments/sentinel");
    let cases = [
        ("traversal", hostile_layer("../../sentinel", tar::EntryType::Regular, ""), "path contains '..'"),
        ("absolute", hostile_layer("/etc/era-pwned", tar::EntryType::Regular, ""), "absolute path"),
        ("escaping-symlink", hostile_layer("link", tar::EntryType::Symlink, "../../../sentinel"), "leaves the root"),
        ("device", hostile_layer("dev/sda", tar::EntryType::Block, ""), "device nodes"),
        // A whiteout of `..`: the directory above the unpack root (every
        // image's snapshot).
        ("whiteout-dotdot", hostile_layer(".wh...", tar::EntryType::Regular, ""), "malformed whiteout"),
        ("whiteout-dot", hostile_layer("etc/.wh..", tar::EntryType::Regular, ""), "malformed whiteout"),
    ];
    let beside = erad.data_dir().join("content/snapshots/marker");
    for (name, layer, expected) in cases {
        std::fs::create_dir_all(sentinel.parent().unwrap()).unwrap();
        std::fs::write(&sentinel, b"untouched").unwrap();
        std::fs::create_dir_all(beside.parent().unwrap()).unwrap();
        std::fs::write(&beside, b"untouched").unwrap();
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
        registry.push_artifact(
            &format!("hostile/{name}"),
            "v1",
            "application/vnd.oci.image.config.v1+json",
            config,
            &[("application/vnd.oci.image.layer.v1.tar", &layer)],
        );
        let a = erad.apply_wait(&spec(&erad, name, &format!("image: \"{}/hostile/{name}:v1\"", registry.addr), ""));
        assert_eq!(a.code, 1, "{name}: {a:?}");
        let d = erad.get(name);
        assert_eq!(d["state"], "Failed");
        let msg = d["message"].as_str().unwrap();
        assert!(msg.contains("unpacking the image") && msg.contains(expected), "{name}: {msg}");
        assert_eq!(erad.history(name).last().unwrap()["from"], "Preparing", "{name}");
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched", "{name}");
        assert_eq!(std::fs::read(&beside).unwrap(), b"untouched", "{name}: beside the unpack root");
        assert!(!std::path::Path::new("/etc/era-pwned").exists());
    }
}

#[test]
fn an_index_resolves_to_the_host_platforms_manifest() {
    let registry = Registry::start();
    let (index_digest, amd64, arm64) = registry.push_two_platform_index("multi/app", "v1");
    let erad = Erad::start();
    let reference = format!("{}/multi/app:v1", registry.addr);
    assert_eq!(erad.apply_wait(&spec(&erad, "multi", &format!("image: \"{reference}\""), "")).code, 0);
    let host = if cfg!(target_arch = "aarch64") { &arm64 } else { &amd64 };
    assert_eq!(erad.get("multi")["artifact_digest"], host.as_str(), "pinned to the platform manifest, not the index");
    assert!(blob(&erad, &index_digest).is_file(), "the index is kept in the store too");
    let rootfs = erad.data_dir().join("deployments/multi/rev-1/rootfs");
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    assert_eq!(std::fs::read_to_string(rootfs.join("arch")).unwrap(), arch);

    // The tag resolved to the index: with the registry gone, another
    // deployment of it (Never: nothing asked of a registry) picks the
    // platform from the stored index.
    drop(registry);
    let again = spec(&erad, "multi2", &format!("image: \"{reference}\", pullPolicy: Never"), "");
    let a = erad.apply_wait(&again);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("multi2")["artifact_digest"], host.as_str());
}

#[test]
fn a_plugin_named_by_oci_reference_is_pulled_verified_and_runs() {
    let registry = Registry::start();
    let wasm = std::fs::read(era_tests::plugin::NOOP).unwrap();
    let manifest = registry.push_wasm("plugins/noop", "0.1.0", &wasm);
    let reference = format!("{}/plugins/noop:0.1.0", registry.addr);
    let config =
        format!("[plugins.noop]\nreference = \"{reference}\"\nsha256 = \"{manifest}\"\ngrants = {{ log = true }}\n");
    let mut erad = Erad::start_with(&config, &[]);
    let plugins = erad.era(&["-o", "json", "plugins"]).json();
    assert_eq!(plugins[0]["source"], reference.as_str());
    assert_eq!(plugins[0]["digest"], format!("sha256:{}", era_tests::sha256(&wasm)));
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);

    // Pinned and in the store: a restart needs no registry.
    drop(registry);
    erad.kill9();
    erad.spawn(&[]).expect("a pinned plugin loads from the store, offline");
    assert_eq!(erad.get("web")["state"], "Running");
}

#[test]
fn a_plugin_reference_that_does_not_match_its_pin_stops_erad_from_starting() {
    let registry = Registry::start();
    let wasm = std::fs::read(era_tests::plugin::NOOP).unwrap();
    let manifest = registry.push_wasm("plugins/noop", "0.1.0", &wasm);
    let wrong = era_tests::sha256(b"some other plugin");
    let config = format!(
        "[plugins.noop]\nreference = \"{}/plugins/noop:0.1.0\"\nsha256 = \"{wrong}\"\ngrants = {{ log = true }}\n",
        registry.addr
    );
    let msg = Erad::try_start_with(&config, &[]).err().expect("erad must refuse the plugin");
    assert!(
        msg.contains("plugin noop: artifact") && msg.contains(&format!("sha256:{wrong}")) && msg.contains(&manifest),
        "{msg}"
    );
}

#[test]
fn era_pull_preloads_the_store_for_an_air_gapped_deploy_and_images_lists_it() {
    let registry = Registry::start();
    let digest = registry.push_image("demo/app", "v1", &[("big.bin", &"y".repeat(1 << 20))]);
    // No GC grace: whatever a delete leaves unreferenced goes at once.
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    let reference = format!("{}/demo/app:v1", registry.addr);
    let p = erad.era(&["pull", &reference]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(p.stdout.contains(&format!("{reference} pulled: {digest}")), "{p:?}");
    assert!(p.stderr.contains(&format!("pulling {reference}: ")), "plain progress lines when not a terminal: {p:?}");
    let bad = erad.era(&["pull", &format!("{}/demo/nothing:v1", registry.addr)]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("404"), "{bad:?}");
    let odd = erad.era(&["pull", &reference, "--sha256", "../../../../etc/passwd"]);
    assert_eq!(odd.code, 2, "{odd:?}");
    assert!(odd.stderr.contains("is not a sha256 digest"), "{odd:?}");

    // The registry goes away; a deployment pinned to the pulled digest still works.
    drop(registry);
    let pinned = spec(
        &erad,
        "offline",
        &format!("image: \"{reference}\", sha256: \"{}\"", digest.trim_start_matches("sha256:")),
        "",
    );
    let a = erad.apply_wait(&pinned);
    assert_eq!(a.code, 0, "{a:?}");
    let images = erad.era(&["-o", "json", "images"]).json();
    let img = images.as_array().unwrap().iter().find(|i| i["digest"] == digest.as_str()).expect("listed").clone();
    assert_eq!(img["reference"], reference.as_str());
    assert_eq!(img["kind"], "image");
    let manifest = std::fs::read(blob(&erad, &digest)).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let total = manifest.len() as u64
        + m["config"]["size"].as_u64().unwrap()
        + m["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(img["size"], total, "the size is manifest + config + layers");
    assert_eq!(img["used_by"], serde_json::json!(["offline"]));

    // Deleting the deployment keeps what the operator pulled: another one
    // deploys it offline afterwards.
    assert_eq!(erad.era(&["delete", "offline", "--wait"]).code, 0);
    assert!(blob(&erad, &digest).is_file(), "the pulled manifest stays");
    let again = spec(
        &erad,
        "offline-again",
        &format!("image: \"{reference}\", sha256: \"{}\"", digest.trim_start_matches("sha256:")),
        "",
    );
    let a = erad.apply_wait(&again);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("offline-again")["state"], "Running");
    let table = erad.era(&["images"]);
    assert!(table.stdout.starts_with("REFERENCE") && table.stdout.contains("offline"), "{table:?}");
}

#[test]
fn a_registry_with_basic_auth_is_reached_with_credentials_from_a_file_that_never_leak() {
    let password = "s3cret-do-not-log";
    let registry = Registry::with_basic_auth("era", password);
    let digest = registry.push_image("private/app", "v1", &[("a", "1")]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("pw"), format!("{password}\n")).unwrap();
    std::fs::write(secrets.path().join("wrong"), "nope").unwrap();
    let config = |file: &str| {
        format!(
            "[registries.\"{}\"]\nusername = \"era\"\npassword_file = \"{}\"\n{}",
            registry.addr,
            secrets.path().join(file).display(),
            era_tests::fixture_plugins()
        )
    };
    let image = format!("image: \"{}/private/app:v1\"", registry.addr);

    let erad = Erad::start_with(&config("pw"), &[("ERAD_LOG_LEVEL", "debug")]);
    let a = erad.apply_wait(&spec(&erad, "private", &image, ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("private")["artifact_digest"], digest.as_str());
    assert!(!erad.log().contains(password), "the password is not in the log");

    let denied = Erad::start_with(&config("wrong"), &[("ERAD_LOG_LEVEL", "debug")]);
    assert_eq!(denied.apply_wait(&spec(&denied, "private", &image, "")).code, 1);
    let msg = denied.get("private")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("401"), "{msg}");
    assert!(!msg.contains("nope") && !denied.log().contains("nope"), "the wrong password is not echoed");
    let db = std::fs::read(denied.data_dir().join("era.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains("nope")
            && !String::from_utf8_lossy(&std::fs::read(erad.data_dir().join("era.db")).unwrap()).contains(password),
        "no secret in the store"
    );
}

#[test]
fn deleting_image_deployments_collects_their_layers_but_keeps_what_others_use() {
    let registry = Registry::start();
    let app = registry.push_image("demo/app", "v1", &[("app", "a")]);
    let other = registry.push_image("demo/other", "v1", &[("other", "b")]);
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    for (name, image) in [("one", "demo/app"), ("two", "demo/app"), ("three", "demo/other")] {
        assert_eq!(
            erad.apply_wait(&spec(&erad, name, &format!("image: \"{}/{image}:v1\"", registry.addr), "")).code,
            0
        );
    }
    let parts = |manifest: &str| -> Vec<String> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&erad, manifest)).unwrap()).unwrap();
        let mut v = vec![manifest.to_string(), m["config"]["digest"].as_str().unwrap().to_string()];
        v.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
        v
    };
    let (app_parts, other_parts) = (parts(&app), parts(&other));
    assert_eq!(erad.era(&["delete", "one", "--wait"]).code, 0);
    assert!(app_parts.iter().all(|d| blob(&erad, d).is_file()), "two still uses the app image");
    assert_eq!(erad.era(&["delete", "two", "--wait"]).code, 0);
    for d in &app_parts {
        assert!(!blob(&erad, d).exists(), "{d} of the app image is collected");
    }
    assert!(other_parts.iter().all(|d| blob(&erad, d).is_file()), "three's image stays");
    assert!(erad.log().contains("content-store GC removed unreferenced blobs"), "{}", erad.log());
}

#[test]
fn an_image_over_the_artifact_size_limit_fails_fetching_before_any_blob_is_stored() {
    let registry = Registry::start();
    // Hex of a hash chain: it does not compress below half its size.
    let noise: String = (0..125).map(|i| era_tests::sha256(format!("{i}").as_bytes())).collect();
    registry.push_image("demo/big", "v1", &[("big.bin", &noise)]);
    let small = registry.push_image("demo/small", "v1", &[("s", "s")]);
    let erad =
        Erad::start_with(&format!("{}\n[limits]\nmax_artifact_bytes = 3000\n", era_tests::fixture_plugins()), &[]);
    let a = erad.apply_wait(&spec(&erad, "big", &format!("image: \"{}/demo/big:v1\"", registry.addr), ""));
    assert_eq!(a.code, 1, "{a:?}");
    let d = erad.get("big");
    assert_eq!(d["state"], "Failed");
    assert!(d["message"].as_str().unwrap().contains("is larger than limits.max_artifact_bytes (3000 bytes)"), "{d}");
    assert!(era_tests::files_under(&erad.data_dir().join("content/blobs/sha256")).is_empty(), "nothing stored");
    // An image within the limit is fine.
    let a = erad.apply_wait(&spec(&erad, "small", &format!("image: \"{}/demo/small:v1\"", registry.addr), ""));
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(erad.get("small")["artifact_digest"], small.as_str());
}

#[test]
fn a_reference_in_an_images_config_naming_a_host_path_is_not_followed_by_the_gc() {
    // An image whose config (a blob the GC reads, as it reads manifests)
    // names a host file as a "digest"; that file, in turn, names a victim
    // image's manifest. Followed, it would keep the victim from collection
    // (and a path like /dev/zero would exhaust erad's memory).
    let registry = Registry::start();
    let victim = registry.push_image("demo/victim", "v1", &[("v", "v")]);
    let bait = "/tmp/era-test-gc-bait.json";
    std::fs::write(bait, format!(r#"{{"layers":[{{"digest":"{victim}"}}]}}"#)).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"layers":[{{"digest":"sha256:{bait}"}}]}}"#
    );
    registry.push_artifact(
        "demo/baiter",
        "v1",
        "application/vnd.oci.image.config.v1+json",
        config.as_bytes(),
        &[("application/vnd.oci.image.layer.v1.tar", &hostile_layer("app.txt", tar::EntryType::Regular, ""))],
    );
    let erad = Erad::start_with(&era_tests::fixture_plugins(), &[("ERAD_TEST_GC_GRACE", "0s")]);
    for (name, image) in [("baiter", "demo/baiter"), ("victim", "demo/victim")] {
        let a = erad.apply_wait(&spec(&erad, name, &format!("image: \"{}/{image}:v1\"", registry.addr), ""));
        assert_eq!(a.code, 0, "{name}: {a:?}");
    }
    assert!(blob(&erad, &victim).is_file());
    assert_eq!(erad.era(&["delete", "victim", "--wait"]).code, 0);
    let _ = std::fs::remove_file(bait);
    assert!(!blob(&erad, &victim).exists(), "the victim's manifest is collected, the bait not followed");
    assert_eq!(erad.get("baiter")["state"], "Running");
}
