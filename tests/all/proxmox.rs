//! The `proxmox` plugin against the Proxmox VE API test server
//! (`tests/pve.rs`): no Proxmox VE can run here, so the server implements
//! the slice of the PVE 8.4 API the plugin uses as its sources behave.

use era_tests::pve::{NODE, OSTEMPLATE, Pve};
use era_tests::{Erad, plugin};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN_ID: &str = "era@pve!deploy";
const SECRET: &str = "4f1a9c2e-7d3b-4e8a-9b1c-0d2e3f4a5b6c";
const T: Duration = Duration::from_secs(60);
/// A real public key (PVE checks each with ssh-keygen; the test server
/// checks the blob's own type string).
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGSoQbML927mYeDp+duvVpta0to6m+Kv/9B54iLYTZ+l ops@edge";

fn erad_for(pve: &Pve, env: &[(&str, &str)]) -> (Erad, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pve.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = format!(
        "[plugins.proxmox]\npath = \"{}\"\n[plugins.proxmox.grants]\nlog = true\n\
         [plugins.proxmox.grants.http.endpoints.pve1]\nurl = \"{}\"\npve_token_id = \"{TOKEN_ID}\"\npve_secret_file = \"{}\"\n",
        plugin::PROXMOX,
        pve.url(),
        secret.display()
    );
    (Erad::start_with(&config, env), dir)
}

/// A spec of the proxmox runtime; its artifact a small file (recorded in
/// the guest's description, not delivered into it).
fn spec(erad: &Erad, name: &str, config: Value, extra: &str) -> std::path::PathBuf {
    let artifact = erad.dir.path().join("seed.txt");
    std::fs::write(&artifact, b"era seed\n").unwrap();
    let sha = era_tests::sha256(b"era seed\n");
    let tag = era_tests::sha256(config.to_string().as_bytes());
    erad.spec(
        &format!("{name}-{}.yaml", &tag[..8]),
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: proxmox\n  \
             artifact: {{file: seed.txt, sha256: \"{sha}\"}}\n  stopGracePeriod: 5s\n  update: {{deadline: 10s}}\n  config: {config}\n{extra}"
        ),
    )
}

fn vm_config(template: u32) -> Value {
    json!({"node": NODE, "template": template, "cores": 2, "memoryMiB": 2048, "diskGiB": 20, "bridge": "vmbr0",
        "vlan": 10, "tags": ["edge"], "discovery": "https://era.example:8443",
        "cloudInit": {"user": "era", "sshKeys": [KEY], "ipconfig0": "ip=dhcp"}})
}

/// The one guest of a deployment revision on the server.
fn guest_named(pve: &Pve, name: &str) -> Option<(u32, era_tests::pve::Guest)> {
    pve.guests().into_iter().find(|(_, g)| g.name() == name)
}

#[test]
fn a_vm_is_cloned_configured_started_updated_rolled_back_stopped_and_destroyed() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);

    // Install: a clone of template 9000, configured, its disk grown, started.
    let a = erad.apply_wait(&spec(&erad, "web", vm_config(9000), ""));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let (vmid, g) = guest_named(&pve, "web-1").expect("web-1 on the node");
    assert!(g.running);
    assert_eq!(g.config["cores"], 2);
    assert_eq!(g.config["memory"], "2048");
    assert_eq!(g.config["tags"], "edge;era;web", "sorted, lower-cased, ;-joined as PVE stores them");
    let net0 = g.config["net0"].as_str().unwrap();
    assert!(net0.starts_with("virtio=BC:24:11:") && net0.ends_with(",bridge=vmbr0,tag=10"), "{net0}");
    assert_eq!(g.config["scsi0"], format!("local-lvm:vm-{vmid}-disk-0,size=20G"));
    assert_eq!(g.config["ciuser"], "era");
    assert_eq!(
        g.config["sshkeys"],
        "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIGSoQbML927mYeDp%2BduvVpta0to6m%2BKv%2F9B54iLYTZ%2Bl%20ops%40edge",
        "URL-encoded as encodeURIComponent does"
    );
    assert_eq!(g.config["ipconfig0"], "ip=dhcp");
    // The identity handoff: SMBIOS serial, base64 JSON; the clone's uuid kept.
    let smbios = g.config["smbios1"].as_str().unwrap();
    assert!(smbios.starts_with(&format!("uuid=5a1e{vmid:04x}-")), "{smbios}");
    let b64 = smbios.split(',').find_map(|p| p.strip_prefix("serial=")).unwrap();
    assert!(smbios.ends_with(",base64=1"), "{smbios}");
    use base64::Engine;
    let identity: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    assert_eq!(identity, json!({"deployment": "web", "revision": 1, "discovery": "https://era.example:8443"}));
    assert!(g.config["description"].as_str().unwrap().contains(&era_tests::sha256(b"era seed\n")));
    assert_eq!(pve.tasks_of("qmclone"), 1);
    assert_eq!(pve.tasks_of("resize"), 1);
    // Outputs come with the monitor's status checks (the agent's address).
    let want = vmid.to_string();
    era_tests::eventually(T, || erad.get("web")["outputs"]["vmid"].as_str() == Some(want.as_str()));
    let out = erad.get("web")["outputs"].clone();
    assert_eq!(out["node"], NODE);
    assert_eq!(out["type"], "qemu");
    assert_eq!(out["ip"], format!("10.10.{}.{}", vmid / 250 % 250, vmid % 250 + 2));

    // Update: web-2 is a new VM; web-1 is stopped, then destroyed once web-2 is healthy.
    let mut v2 = vm_config(9000);
    v2["cores"] = json!(4);
    assert_eq!(erad.apply_wait(&spec(&erad, "web", v2.clone(), "")).code, 0);
    let names: Vec<String> = pve.guests().values().map(|g| g.name().to_string()).collect();
    assert_eq!(names, ["web-2"], "{names:?}");
    assert_eq!(guest_named(&pve, "web-2").unwrap().1.config["cores"], 4);

    // A failing update (its guest agent never answers): rolled back to web-2.
    let a = erad.apply_wait(&spec(&erad, "web", vm_config(9001), ""));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("web", "Running", T);
    assert_eq!(got["revision"], 2, "{got}");
    let history = erad.history("web");
    assert!(
        history.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("waiting for its QEMU guest agent")),
        "{history:?}"
    );
    let names: Vec<String> = pve.guests().values().map(|g| g.name().to_string()).collect();
    assert_eq!(names, ["web-2"], "the failed revision's VM is destroyed: {names:?}");
    assert!(guest_named(&pve, "web-2").unwrap().1.running);

    // Stop: a shutdown with the grace period; start again.
    assert_eq!(erad.era(&["stop", "web", "--wait"]).code, 0);
    assert!(!guest_named(&pve, "web-2").unwrap().1.running);
    let shutdown = pve.server.requests().into_iter().find(|r| r.path().ends_with("/status/shutdown")).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&shutdown.body).unwrap()["timeout"], 5);
    assert_eq!(erad.era(&["start", "web", "--wait"]).code, 0);
    assert!(guest_named(&pve, "web-2").unwrap().1.running);

    // Delete: stopped, destroyed with purge; nothing of it is left.
    assert_eq!(erad.era(&["delete", "web", "--wait"]).code, 0, "{}", erad.log());
    assert!(pve.guests().is_empty(), "{:?}", pve.guests().keys());
    let deletes: Vec<_> = pve.server.requests().into_iter().filter(|r| r.method == "DELETE").collect();
    assert!(!deletes.is_empty());
    assert!(
        deletes.iter().all(|r| r.query("purge").as_deref() == Some("1")
            && r.query("destroy-unreferenced-disks").as_deref() == Some("1"))
    );

    // Every request carried the token erad holds; none of it reached erad's
    // log, its store or any file under its data dir.
    let header = format!("PVEAPIToken={TOKEN_ID}={SECRET}");
    assert!(pve.server.requests().iter().all(|r| r.header("authorization") == Some(header.as_str())));
    erad.assert_nowhere(SECRET);
}

#[test]
fn an_lxc_container_is_created_from_an_ostemplate_started_stopped_and_destroyed() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);
    let config = json!({"node": NODE, "type": "lxc", "ostemplate": OSTEMPLATE, "cores": 1, "memoryMiB": 512,
        "diskGiB": 8, "bridge": "vmbr1", "ip": "10.0.0.5/24"});
    let a = erad.apply_wait(&spec(&erad, "box", config, ""));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let (vmid, g) = guest_named(&pve, "box-1").expect("box-1 on the node");
    assert_eq!(g.kind, "lxc");
    assert!(g.running);
    assert_eq!(g.config["rootfs"], format!("local-lvm:vm-{vmid}-disk-0,size=8G"));
    assert_eq!(g.config["memory"], 512);
    let net0 = g.config["net0"].as_str().unwrap();
    assert!(net0.starts_with("name=eth0,bridge=vmbr1,ip=10.0.0.5/24,hwaddr=BC:24:11:"), "{net0}");
    assert_eq!(pve.tasks_of("vzcreate"), 1);
    assert_eq!(pve.tasks_of("resize"), 0, "made with its size");
    era_tests::eventually(T, || {
        erad.get("box")["outputs"]["ip"] == format!("10.20.{}.{}", vmid / 250 % 250, vmid % 250 + 2)
    });

    assert_eq!(erad.get("box")["outputs"]["type"], "lxc");

    // A second container, cloned from the CT template 9100, with the
    // hostname the operator chose; an update gives the new container the
    // same hostname and removes the old one.
    let twin = |cores: u32| json!({"node": NODE, "type": "lxc", "template": 9100, "hostname": "twin.edge.example", "cores": cores});
    let a = erad.apply_wait(&spec(&erad, "twin", twin(1), ""));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let (first, g) = guest_named(&pve, "twin.edge.example").expect("the twin on the node");
    assert!(g.running && g.kind == "lxc");
    assert_eq!(pve.tasks_of("vzclone"), 1);
    let a = erad.apply_wait(&spec(&erad, "twin", twin(2), ""));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let twins: Vec<u32> =
        pve.guests().into_iter().filter(|(_, g)| g.name() == "twin.edge.example").map(|(id, _)| id).collect();
    assert_eq!(twins.len(), 1, "the first revision's container is destroyed: {twins:?}");
    let (second, g) = guest_named(&pve, "twin.edge.example").unwrap();
    assert_ne!(first, second);
    assert!(g.running && g.config["cores"] == 2);
    assert_eq!(erad.get("twin")["revision"], 2);
    assert_eq!(erad.get("twin")["state"], "Running");
    assert_eq!(erad.era(&["delete", "twin", "--wait"]).code, 0);

    assert_eq!(erad.era(&["stop", "box", "--wait"]).code, 0);
    assert!(!guest_named(&pve, "box-1").unwrap().1.running);
    // Stopping a stopped container: PVE says "not running" at once; done.
    assert_eq!(erad.era(&["start", "box", "--wait"]).code, 0);
    assert_eq!(erad.era(&["delete", "box", "--wait"]).code, 0, "{}", erad.log());
    assert!(pve.guests().is_empty());
}

#[test]
fn kill_9_while_the_clone_runs_and_after_the_install_makes_no_second_guest() {
    // Killed while the clone task still runs (template 9003 takes 3 s).
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (mut erad, _dir) = erad_for(&pve, &[]);
    let mut client = erad.era_background(&["apply", "-f", spec(&erad, "web", vm_config(9003), "").to_str().unwrap()]);
    era_tests::eventually(T, || pve.tasks_of("qmclone") == 1);
    erad.kill9();
    let _ = client.wait();
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Running", T);
    assert_eq!(pve.tasks_of("qmclone"), 1, "one clone, not two");
    assert_eq!(pve.guests().len(), 1);

    // Killed after the install returned and before its commit.
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (mut erad, _dir) = erad_for(&pve, &[("ERAD_TEST_PAUSE_DONE", "Installing")]);
    let s = spec(&erad, "web", vm_config(9000), "");
    erad.kill9_at(&["apply", "-f", s.to_str().unwrap()], "paused-web-Installing-done");
    assert_eq!(pve.guests().len(), 1, "the clone happened before the kill");
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Running", T);
    assert_eq!(pve.tasks_of("qmclone"), 1, "found again by its VMID and name, not cloned twice");
    assert_eq!(pve.guests().len(), 1);
}

#[test]
fn a_vmid_taken_between_nextid_and_the_clone_is_retried_with_the_next() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    pve.state.lock().unwrap().steal_next_ids = 2;
    let (erad, _dir) = erad_for(&pve, &[]);
    assert_eq!(erad.apply_wait(&spec(&erad, "web", vm_config(9000), "")).code, 0, "{}", erad.log());
    let (vmid, _) = guest_named(&pve, "web-1").unwrap();
    assert_eq!(vmid, 102, "100 and 101 went to another client first");
    let refused = pve.server.requests().iter().filter(|r| r.path().ends_with("/clone")).count();
    assert_eq!(refused, 3);
    assert!(erad.log().contains("VMID 100 was taken by another client"), "{}", erad.log());
}

#[test]
fn errors_name_what_is_wrong_and_a_failed_clone_leaves_nothing() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);

    // Refused at validation, before any request.
    for (config, why) in [
        (json!({"node": NODE}), "config.template"),
        (json!({"node": "pve 1", "template": 9000}), "config.node"),
        (json!({"node": NODE, "template": 9000, "bridge": "vm br0"}), "config.bridge"),
        (json!({"node": NODE, "template": 9000, "vlan": 5000}), "config.vlan"),
        (json!({"node": NODE, "template": 9000, "hostname": "web_1.edge"}), "config.hostname"),
        (json!({"node": NODE, "template": 9000, "hostname": "a".repeat(64)}), "config.hostname"),
        (json!({"node": NODE, "type": "lxc", "ostemplate": OSTEMPLATE, "cloudInit": {}}), "QEMU VMs"),
        (json!({"node": NODE, "template": 9000, "endpoint": "elsewhere"}), "\"elsewhere\" is not granted"),
    ] {
        let a = erad.era(&["validate", "-f", spec(&erad, "web", config.clone(), "").to_str().unwrap()]);
        assert_ne!(a.code, 0, "{config}");
        assert!(a.stderr.contains(why), "{config}: {a:?}");
    }
    let env = erad.era(&["validate", "-f", spec(&erad, "web", vm_config(9000), "  env: {A: b}\n").to_str().unwrap()]);
    assert!(env.stderr.contains("spec.env"), "{env:?}");
    let probe = spec(&erad, "web", vm_config(9000), "  health: {tcp: {port: 22}}\n");
    let probe = erad.era(&["validate", "-f", probe.to_str().unwrap()]);
    assert!(
        probe.stderr.contains("spec.health") && probe.stderr.contains("must name the guest's address"),
        "{probe:?}"
    );
    assert!(pve.server.requests().is_empty(), "validation asks the node nothing");

    // A parameter PVE refuses: its 400, naming the parameter.
    let a = erad.apply_wait(&spec(&erad, "bad", json!({"node": NODE, "template": 9000, "storage": "nfs-1"}), ""));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("bad", "Failed", T);
    assert!(got["message"].as_str().unwrap().contains("storage 'nfs-1' does not exist"), "{got}");

    // A parameter only PVE checks (the container's address): its 400,
    // naming it; the cleanup of the failed first install removes the
    // container it made.
    let config = json!({"node": NODE, "type": "lxc", "ostemplate": OSTEMPLATE, "ip": "10.0.0.5/99"});
    assert_ne!(erad.apply_wait(&spec(&erad, "ct", config, "")).code, 0);
    let got = erad.wait_for_state("ct", "Failed", T);
    let msg = got["message"].as_str().unwrap();
    assert!(
        msg.contains("400 Parameter verification failed. net0: invalid format") && msg.contains("net0.ip"),
        "{msg}"
    );
    era_tests::eventually(T, || pve.guests().is_empty());
    assert_eq!(erad.era(&["delete", "ct", "--wait"]).code, 0);

    // A clone task that fails: its exit status is the error; the node
    // removed what it made, and the deployment can be deleted.
    let a = erad.apply_wait(&spec(&erad, "full", json!({"node": NODE, "template": 9002}), ""));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("full", "Failed", T);
    let msg = got["message"].as_str().unwrap();
    assert!(msg.contains("failed: clone failed: lvcreate") && msg.contains("insufficient free space"), "{msg}");
    assert!(pve.guests().is_empty());
    assert_eq!(erad.era(&["delete", "full", "--wait"]).code, 0);

    // The wrong secret: 401, naming the endpoint.
    let other = Pve::start(TOKEN_ID, "another-secret");
    let (erad2, _dir2) = erad_for(&other, &[]);
    let a = erad2.apply_wait(&spec(&erad2, "web", json!({"node": NODE, "template": 9000}), ""));
    assert_ne!(a.code, 0);
    let got = erad2.wait_for_state("web", "Failed", T);
    let msg = got["message"].as_str().unwrap();
    assert!(msg.contains("endpoint pve1: next free VMID: 401") && msg.contains("refused the API token"), "{msg}");
    assert!(!msg.contains(SECRET));
}

#[test]
fn the_example_spec_validates_without_asking_the_node() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxmox");
    for f in ["deployment.yaml", "vm-notes.txt"] {
        std::fs::copy(examples.join(f), erad.dir.path().join(f)).unwrap();
    }
    let a = erad.era(&["validate", "-f", erad.dir.path().join("deployment.yaml").to_str().unwrap()]);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(pve.server.requests().is_empty());
}

#[test]
fn a_guest_that_ignores_the_shutdown_is_stopped_after_the_grace_period() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);
    let s = spec(&erad, "stiff", json!({"node": NODE, "template": 9004}), "");
    assert_eq!(erad.apply_wait(&s).code, 0, "{}", erad.log());
    assert_eq!(erad.era(&["stop", "stiff", "--wait"]).code, 0, "{}", erad.log());
    assert!(!guest_named(&pve, "stiff-1").unwrap().1.running);
    // The polite shutdown ran out its 5 s and failed; then a hard stop.
    assert_eq!(pve.tasks_of("qmshutdown"), 1);
    assert_eq!(pve.tasks_of("qmstop"), 1);
    assert!(erad.log().contains("VM quit/powerdown failed - got timeout"), "{}", erad.log());
}

#[test]
fn a_server_that_echoes_the_token_has_it_redacted_everywhere() {
    let pve = Pve::start(TOKEN_ID, SECRET);
    pve.state.lock().unwrap().echo_credentials = true;
    let (erad, _dir) = erad_for(&pve, &[]);
    assert_ne!(erad.apply_wait(&spec(&erad, "web", json!({"node": NODE, "template": 9000}), "")).code, 0);
    let got = erad.wait_for_state("web", "Failed", T);
    let msg = got["message"].as_str().unwrap();
    assert!(msg.contains("proxy: upstream refused") && msg.contains("[redacted]"), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    let history = erad.era(&["history", "web"]).stdout;
    assert!(!history.contains(SECRET) && history.contains("[redacted]"), "{history}");
    erad.assert_nowhere(SECRET);
}

#[test]
fn a_probe_that_names_the_guests_address_is_run_by_erad_from_the_host() {
    // The plugin runs no probes (runs-probes), but one aimed at an address
    // off this host is erad's: here one nothing answers (TEST-NET-1), so
    // the apply fails on it instead of going Running unprobed.
    let pve = Pve::start(TOKEN_ID, SECRET);
    let (erad, _dir) = erad_for(&pve, &[]);
    let health = "  health: {tcp: {host: 192.0.2.1, port: 22}, timeout: 1s, interval: 1s, retries: 1}\n";
    let a = erad.apply_wait(&spec(&erad, "probed", json!({"node": NODE, "template": 9000, "agent": false}), health));
    assert_ne!(a.code, 0, "{a:?}");
    let got = erad.wait_for_state("probed", "Failed", T);
    assert!(got["message"].as_str().unwrap().contains("192.0.2.1:22"), "{got}");
}
