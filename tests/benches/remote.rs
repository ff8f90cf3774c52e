//! Remote runtimes over the http capability (the kubernetes and proxmox
//! plugins), against the API test servers with 20 ms of latency injected
//! per request (a cluster or a PVE node across a WAN link):
//! how many API requests each lifecycle operation makes against the fewest
//! it needs, and its wall time against that many round trips.
//!
//! Run: `cargo bench -p era-tests --bench remote` (after `cargo build
//! --release --workspace --bins`).

#![allow(clippy::unwrap_used)]

use era_tests::k8s::Cluster;
use era_tests::pve::Pve;
use era_tests::{Erad, Registry};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(20);

/// One lifecycle operation: its name, the `era` verb (none: apply), and
/// the fewest API requests it needs.
type Operation = (&'static str, &'static [&'static str], usize);

/// Runs each operation `rounds` times on fresh deployments and prints the
/// requests it made (counted by `requests`) and its wall time.
fn measure(
    what: &str,
    erad: &Erad,
    requests: &dyn Fn() -> usize,
    spec: &dyn Fn(&str) -> std::path::PathBuf,
    operations: &[Operation],
    rounds: usize,
) {
    let mut rows: Vec<(Vec<usize>, Vec<Duration>)> = operations.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for i in 0..rounds {
        let name = format!("web{i}");
        let spec = spec(&name);
        for (k, (_, verb, _)) in operations.iter().enumerate() {
            let before = requests();
            let t = Instant::now();
            let a = if verb.is_empty() {
                erad.apply_wait(&spec)
            } else {
                erad.era(&[verb[0], &name, "--wait", "--timeout", "60s"])
            };
            let took = t.elapsed();
            assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
            rows[k].0.push(requests() - before);
            rows[k].1.push(took);
        }
    }
    println!("{what}, {} ms per request, {rounds} round(s), median:", LATENCY.as_millis());
    for ((name, _, minimum), (mut requests, mut times)) in operations.iter().zip(rows) {
        requests.sort();
        times.sort();
        let (n, t) = (requests[requests.len() / 2], times[times.len() / 2]);
        let floor = LATENCY * n as u32;
        println!(
            "  {name}: {n} requests (fewest needed {minimum}, ratio {:.1}x); {:.0} ms, vs {n} round trips x {} ms = {:.0} ms ({:.1}x)",
            n as f64 / *minimum as f64,
            t.as_secs_f64() * 1e3,
            LATENCY.as_millis(),
            floor.as_secs_f64() * 1e3,
            t.as_secs_f64() / floor.as_secs_f64().max(1e-9)
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let registry = Registry::start();
    registry.push_busybox("bench/web", "1", &["/bin/sleep", "600"], &[]);
    let image = format!("{}/bench/web:1", registry.addr);
    let cluster = Cluster::start_with_latency("bench-token", LATENCY);
    let pve = Pve::start_with_latency("bench@pve!era", "bench-secret", LATENCY);
    let dir = tempfile::tempdir().unwrap();
    let (token, secret) = (dir.path().join("token"), dir.path().join("pve.secret"));
    std::fs::write(&token, "bench-token").unwrap();
    std::fs::write(&secret, "bench-secret").unwrap();
    std::fs::write(dir.path().join("seed.txt"), b"seed\n").unwrap();
    let config = format!(
        "[plugins.kubernetes]\npath = \"{}\"\n[plugins.kubernetes.grants]\nlog = true\n\
         [plugins.kubernetes.grants.http.endpoints.cluster]\nurl = \"{}\"\ntoken_file = \"{}\"\n\
         [plugins.proxmox]\npath = \"{}\"\n[plugins.proxmox.grants]\nlog = true\n\
         [plugins.proxmox.grants.http.endpoints.pve]\nurl = \"{}\"\npve_token_id = \"bench@pve!era\"\npve_secret_file = \"{}\"\n\
         [artifacts]\nfile_roots = [\"{}\"]\n",
        era_tests::plugin::KUBERNETES,
        cluster.url(),
        token.display(),
        era_tests::plugin::PROXMOX,
        pve.url(),
        secret.display(),
        dir.path().display()
    );
    let erad = Erad::start_with(&config, &[]);
    assert_eq!(erad.era(&["pull", &image]).code, 0);

    // The fewest requests each operation needs. Apply: the namespace and
    // the Deployment (paused), then at start the Deployment (unpaused) and
    // the Service, and one GET that sees it available. Stop: the apply of 0
    // replicas, one GET that sees it caught up and one pod list that is
    // empty. Start: two applies and a GET. Delete: a stop, the DELETE, the
    // GET that finds it gone, the list that finds no revision left, the
    // Service's DELETE. (The server takes 0.4 s to roll out or finish a
    // foreground delete and 0.3 s to end a pod, and erad polls meanwhile.)
    let kubernetes: [Operation; 4] = [
        ("apply to Running", &[], 5),
        ("stop", &["stop"], 3),
        ("start to Running", &["start"], 3),
        ("delete", &["delete"], 7),
    ];
    let spec = |name: &str| {
        erad.spec(
            &format!("{name}-k8s.yaml"),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: kubernetes\n  \
                 artifact: {{image: \"{image}\"}}\n  ports: [{{name: http, port: 8080}}]\n  \
                 config: {{namespace: bench, createNamespace: true}}\n"
            ),
        )
    };
    let requests = || cluster.server.requests().len();
    measure("kubernetes plugin against the API test server", &erad, &requests, &spec, &kubernetes, rounds);

    // Proxmox VE, a VM cloned from a template. Apply: nextid, the clone and
    // one look at its task, the config, the start and one look at its task,
    // status/current and the agent's addresses. Stop: the shutdown and its
    // task. Start: the start and its task, status/current and the agent.
    // Delete: the shutdown and its task, the DELETE and its task. (The
    // server's clone takes 0.3 s, start and shutdown 0.2 s, destroy 0.2 s,
    // the agent answers 0.3 s after start; the plugin polls tasks every
    // 0.1 s and erad the status meanwhile.)
    let proxmox: [Operation; 4] = [
        ("apply to Running", &[], 8),
        ("stop", &["stop"], 2),
        ("start to Running", &["start"], 4),
        ("delete", &["delete"], 4),
    ];
    let sha = era_tests::sha256(b"seed\n");
    let spec = |name: &str| {
        erad.spec(
            &format!("{name}-pve.yaml"),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: proxmox\n  \
                 artifact: {{file: {}/seed.txt, sha256: \"{sha}\"}}\n  stopGracePeriod: 5s\n  \
                 config: {{node: {}, template: 9000}}\n",
                dir.path().display(),
                era_tests::pve::NODE
            ),
        )
    };
    let requests = || pve.server.requests().len();
    measure("proxmox plugin (a cloned VM) against the PVE API test server", &erad, &requests, &spec, &proxmox, rounds);
}
