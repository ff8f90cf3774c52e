//! Remote runtimes over the http capability, against the API test servers
//! with 20 ms of latency injected per request (a cluster across a WAN link):
//! how many API requests each lifecycle operation makes against the fewest
//! it needs, and its wall time against that many round trips.
//!
//! Run: `cargo bench -p era-tests --bench remote` (after `cargo build
//! --release --workspace --bins`).

#![allow(clippy::unwrap_used)]

use era_tests::k8s::Cluster;
use era_tests::{Erad, Registry};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(20);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let registry = Registry::start();
    registry.push_busybox("bench/web", "1", &["/bin/sleep", "600"], &[]);
    let image = format!("{}/bench/web:1", registry.addr);
    let cluster = Cluster::start_with_latency("bench-token", LATENCY);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token").unwrap();
    let config = format!(
        "[plugins.kubernetes]\npath = \"{}\"\n[plugins.kubernetes.grants]\nlog = true\n\
         [plugins.kubernetes.grants.http.endpoints.cluster]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
        era_tests::plugin::KUBERNETES,
        cluster.url(),
        token.display()
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
    let operations: [(&str, &[&str], usize); 4] = [
        ("apply to Running", &[], 5),
        ("stop", &["stop"], 3),
        ("start to Running", &["start"], 3),
        ("delete", &["delete"], 7),
    ];
    let mut rows: Vec<(String, Vec<usize>, Vec<Duration>, usize)> =
        operations.iter().map(|(n, _, m)| (n.to_string(), Vec::new(), Vec::new(), *m)).collect();
    for i in 0..rounds {
        let name = format!("web{i}");
        let spec = erad.spec(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: kubernetes\n  \
                 artifact: {{image: \"{image}\"}}\n  ports: [{{name: http, port: 8080}}]\n  \
                 config: {{namespace: bench, createNamespace: true}}\n"
            ),
        );
        for (k, (_, verb, _)) in operations.iter().enumerate() {
            let before = cluster.server.requests().len();
            let t = Instant::now();
            let a = if verb.is_empty() {
                erad.apply_wait(&spec)
            } else {
                erad.era(&[verb[0], &name, "--wait", "--timeout", "60s"])
            };
            let took = t.elapsed();
            assert_eq!(a.code, 0, "{a:?}");
            rows[k].1.push(cluster.server.requests().len() - before);
            rows[k].2.push(took);
        }
    }
    println!(
        "kubernetes plugin against the API test server, {} ms per request, {rounds} round(s), median:",
        LATENCY.as_millis()
    );
    for (name, mut requests, mut times, minimum) in rows {
        requests.sort();
        times.sort();
        let (n, t) = (requests[requests.len() / 2], times[times.len() / 2]);
        let floor = LATENCY * n as u32;
        println!(
            "  {name}: {n} requests (fewest needed {minimum}, ratio {:.1}x); {:.0} ms, vs {n} round trips x {} ms = {:.0} ms ({:.1}x)",
            n as f64 / minimum as f64,
            t.as_secs_f64() * 1e3,
            LATENCY.as_millis(),
            floor.as_secs_f64() * 1e3,
            t.as_secs_f64() / floor.as_secs_f64().max(1e-9)
        );
    }
}
