//! Real runtimes, each against the same work done by hand in the same run:
//!
//! 1. `era apply --wait` of a busybox image already in the content store,
//!    until Running (validate, fetch from the store, mount the rootfs overlay, write
//!    the bundle, runc create + start, health check, every transition
//!    committed) vs `runc run -d` by hand of the config erad ran (its
//!    checked copy of the plugin's bundle) on a copy of the rootfs;
//! 2. the same with the LXC plugin vs `lxc-start -d` of the same config
//!    (console and LXC logs to files, as erad's), waited for until RUNNING
//!    with `lxc-wait` (era's figure ends when it sees the container running).
//!
//! For each, the journal's commit times split era's figure into phases.
//!
//! Run: `cargo bench -p era-tests --bench runtimes` (after `cargo build
//! --release --workspace --bins`).

#![allow(clippy::unwrap_used)]

use era_tests::{Erad, Registry};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// For runtimes that hand their stdio to the container: no pipes to wait
/// on, errors to a file.
fn detached(cmd: &mut Command) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err.reopen().unwrap()).status().unwrap();
    assert!(status.success(), "{cmd:?} failed: {}", std::fs::read_to_string(err.path()).unwrap_or_default());
}

fn copy_dir(from: &Path, to: &Path) {
    ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Milliseconds since midnight UTC, now or of a journal time
/// (`2026-11-23T04:27:27.562Z`).
fn now_ms() -> i64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 86_400_000) as i64
}

fn journal_ms(time: &str) -> i64 {
    let clock = time.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m): (i64, i64) = (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap());
    let secs: f64 = parts.next().unwrap().parse().unwrap();
    (h * 3600 + m * 60) * 1000 + (secs * 1000.0).round() as i64
}

/// Where the time from `era apply` to its exit went, by the journal: each
/// phase ends with its transition committed.
const PHASES: [&str; 8] = [
    "accept",
    "validate",
    "fetch (store)",
    "prepare (rootfs mount)",
    "install",
    "create+start",
    "first health verdict",
    "CLI sees it",
];

fn phases(erad: &Erad, name: &str, started: i64, ended: i64) -> Vec<Duration> {
    let times: Vec<i64> = erad.history(name).iter().map(|e| journal_ms(e["time"].as_str().unwrap())).collect();
    assert_eq!(times.len(), 7, "one pass through the install states");
    let mut edges = vec![started];
    edges.extend(times);
    edges.push(ended);
    edges.windows(2).map(|w| Duration::from_millis((w[1] - w[0]).rem_euclid(86_400_000) as u64)).collect()
}

fn report(what: &str, era: Duration, hand: Duration, baseline: &str) {
    println!(
        "{what}: era apply --wait to Running {:.0} ms, {baseline} {:.0} ms; ratio {:.1}x, difference {:.0} ms (median)",
        ms(era),
        ms(hand),
        era.as_secs_f64() / hand.as_secs_f64(),
        ms(era) - ms(hand)
    );
}

fn main() {
    // `--quick`: a smoke that it still completes (scripts/test), not a measurement.
    let rounds = if std::env::args().any(|a| a == "--quick") { 2 } else { 20 };
    let registry = Registry::start();
    registry.push_busybox("bench/box", "1", &["/bin/sleep", "600"], &[]);
    let image = format!("{}/bench/box:1", registry.addr);
    let config = format!(
        "[plugins.container]\npath = \"{}\"\ngrants = {{ log = true, oci = {{ runtimes = [\"runc\"], host_namespaces = [\"network\"] }} }}\n# {}\n\
         [plugins.lxc]\npath = \"{}\"\ngrants = {{ log = true, lxc = {{}} }}\n",
        era_tests::plugin::CONTAINER,
        era_tests::bin("era-shim").display(),
        era_tests::plugin::LXC
    );
    // ERA_BENCH_LOG_LEVEL=erad=debug: erad's log (each plugin call, host
    // command and commit with its duration) printed at the end.
    let level = std::env::var("ERA_BENCH_LOG_LEVEL").ok();
    let erad = Erad::start_with(&config, &[("ERAD_LOG_LEVEL", level.as_deref().unwrap_or("info"))]);
    assert_eq!(erad.era(&["pull", &image]).code, 0, "the image is cached before timing");

    for runtime in ["container", "lxc"] {
        let (mut era, mut hand, mut by_phase) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let name = format!("{runtime}-{i}");
            let spec = erad.spec(
                &format!("{name}.yaml"),
                &format!(
                    "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: {runtime}\n  artifact: {{image: \"{image}\"}}\n  stopGracePeriod: 1s\n"
                ),
            );
            let (t, started) = (Instant::now(), now_ms());
            let a = erad.apply_wait(&spec);
            era.push(t.elapsed());
            let ended = now_ms();
            assert_eq!(a.code, 0, "{a:?}");
            by_phase.push(phases(&erad, &name, started, ended));

            // The same container by hand, from a copy of what erad made:
            // the config erad ran (its checked copy of the plugin's bundle)
            // and the rootfs.
            let work = erad.data_dir().join(format!("deployments/{name}/rev-1"));
            let scratch = tempfile::tempdir().unwrap();
            let suffix = format!("-{name}-1");
            let erads_own = |dir: &str| {
                std::fs::read_dir(erad.data_dir().join(dir))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(&suffix))
                    .unwrap_or_else(|| panic!("erad's {dir} for the revision"))
            };
            match runtime {
                "container" => {
                    let bundle = scratch.path().join("bundle");
                    std::fs::create_dir_all(&bundle).unwrap();
                    copy_dir(&work.join("rootfs"), &bundle.join("rootfs"));
                    let checked = erads_own("runtimes/oci/bundles").join("config.json");
                    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(checked).unwrap()).unwrap();
                    cfg["root"]["path"] = "rootfs".into();
                    std::fs::write(bundle.join("config.json"), cfg.to_string()).unwrap();
                    let id = format!("bench-hand-{i}");
                    // A previous, interrupted run may have left it.
                    let _ = Command::new("runc").args(["delete", "--force", &id]).output();
                    let t = Instant::now();
                    detached(Command::new("runc").args(["run", "-d", "--bundle"]).arg(&bundle).arg(&id));
                    hand.push(t.elapsed());
                    ok(Command::new("runc").args(["delete", "--force", &id]));
                }
                _ => {
                    let path = scratch.path().join("lxc");
                    let cname = format!("bench-{name}");
                    std::fs::create_dir_all(path.join(&cname)).unwrap();
                    copy_dir(&work.join("rootfs"), &path.join(&cname).join("rootfs"));
                    // erad's own lxcpath holds the config it wrote for the
                    // revision; the copy logs to the scratch dir as erad's
                    // logs to the work dir.
                    let theirs = erads_own("runtimes/lxc");
                    let cfg = std::fs::read_to_string(theirs.join("config")).unwrap();
                    let cfg: String = cfg
                        .lines()
                        .map(|l| {
                            let key = l.split('=').next().unwrap_or("").trim();
                            match key {
                                "lxc.rootfs.path" => format!("lxc.rootfs.path = dir:{}/{cname}/rootfs", path.display()),
                                "lxc.console.logfile" | "lxc.log.file" => {
                                    format!("{key} = {}/{cname}/{}.log", path.display(), key.replace('.', "-"))
                                }
                                _ => l.to_string(),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    std::fs::write(path.join(&cname).join("config"), cfg).unwrap();
                    // Until it is RUNNING, as era's figure is (lxc-start -d
                    // returns once the container is forked).
                    let t = Instant::now();
                    detached(Command::new("lxc-start").arg("-P").arg(&path).args([
                        "-n",
                        &cname,
                        "-d",
                        "--",
                        "/bin/sleep",
                        "600",
                    ]));
                    ok(Command::new("lxc-wait").arg("-P").arg(&path).args(["-n", &cname, "-s", "RUNNING", "-t", "10"]));
                    hand.push(t.elapsed());
                    ok(Command::new("lxc-stop").arg("-P").arg(&path).args(["-n", &cname, "-k"]));
                }
            }
            assert_eq!(erad.era(&["delete", &name, "--wait"]).code, 0);
        }
        let baseline =
            if runtime == "container" { "runc run -d by hand" } else { "lxc-start -d + lxc-wait RUNNING by hand" };
        report(&format!("{runtime} ({rounds} rounds)"), median(era), median(hand), baseline);
        let each: Vec<String> = PHASES
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{p} {:.0}", ms(median(by_phase.iter().map(|v: &Vec<Duration>| v[i]).collect()))))
            .collect();
        println!("  where era's time goes (median ms, each phase ends with its commit): {}", each.join(", "));
    }
    if level.is_some() {
        eprintln!("{}", erad.log());
    }
}
