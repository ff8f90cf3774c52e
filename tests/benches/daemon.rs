//! erad's benchmarks, each against a baseline measured in the same run:
//!
//! 1. plugin call: era's `status` (fresh Store + instantiate + call, with
//!    limits and deadline) vs a bare wasmtime call of the same export on an
//!    already-instantiated component;
//! 2. transition commit latency vs a bare `fdatasync` on the same disk;
//! 3. 200 noop deployments applied concurrently: time to all Running;
//! 4. erad start-to-ready with a cold and a warm compile cache, and idle RSS.
//!
//! Run: `cargo bench -p era-tests` (after `cargo build --release --bins`).

#![allow(clippy::unwrap_used)]

use erad::lifecycle::{Event, State};
use erad::store::{Changes, Store};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

mod bare {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { "era:plugin/process": async, "era:plugin/oci-runtime": async, "era:plugin/lxc": async },
        exports: { default: async },
    });
}

struct BareState {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}
impl wasmtime_wasi::WasiView for BareState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
impl bare::era::plugin::types::Host for BareState {}
impl bare::era::plugin::log::Host for BareState {
    fn log(&mut self, _: bare::era::plugin::log::Level, _: String) {}
}

fn workload(work: &Path) -> bare::era::plugin::types::Workload {
    use bare::era::plugin::types::*;
    Workload {
        deployment: "bench".into(),
        revision: 1,
        artifact: Artifact {
            kind: ArtifactKind::File,
            reference: "x".into(),
            digest: String::new(),
            local_path: String::new(),
            image_config: None,
        },
        env: vec![],
        ports: vec![],
        volumes: vec![],
        config: "{}".into(),
        work_dir: work.display().to_string(),
        stop_grace_seconds: 1,
        health: None,
    }
}

async fn plugin_call(iterations: usize, pooling: Option<erad::plugin::Pooling>) {
    use erad::plugin::{CallContext, PluginHost};
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // era: the real host, one fresh Store per call.
    let runtimes =
        erad::plugin::RuntimeHome { root: dir.path().join("runtimes"), instance: "bench".into(), shim: None };
    let host = PluginHost::with_pooling(&dir.path().join("cache"), runtimes, pooling).unwrap();
    let cfg = erad::config::PluginConfig {
        path: era_tests::plugin::NOOP.into(),
        reference: None,
        pinned: None,
        grants: erad::plugin::Grants { log: true, ..Default::default() },
        memory_limit_mib: 64,
        deadlines: Default::default(),
    };
    let plugin = host.load("noop", &cfg).await.unwrap();
    let ctx = CallContext { deployment: "bench", work_dir: &work, revision: Some(1) };
    let w: erad::plugin::Workload = to_erad_workload(workload(&work));
    let handle = plugin.install(&ctx, &w).await.unwrap();
    plugin.start(&ctx, &w, &handle).await.unwrap();

    // bare: one instance, one Store, the same export called again and again.
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, era_tests::plugin::NOOP).unwrap();
    let mut linker = wasmtime::component::Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    // The noop plugin imports only `log` (and the types it uses).
    type Me = wasmtime::component::HasSelf<BareState>;
    bare::era::plugin::types::add_to_linker::<BareState, Me>(&mut linker, |s| s).unwrap();
    bare::era::plugin::log::add_to_linker::<BareState, Me>(&mut linker, |s| s).unwrap();
    let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
    wasi.preopened_dir(&work, "/work", wasmtime_wasi::FsPerms::ReadWrite).unwrap();
    let mut store = wasmtime::Store::new(
        &engine,
        BareState { wasi: wasi.build(), table: wasmtime::component::ResourceTable::new() },
    );
    let instance = bare::Plugin::instantiate_async(&mut store, &component, &linker).await.unwrap();
    let bw = workload(&work);

    let mut era = Vec::with_capacity(iterations);
    let mut bare_t = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let st = plugin.status(&ctx, &w, &handle).await.unwrap();
        era.push(t.elapsed());
        assert!(st.running);
        let t = Instant::now();
        let st = instance.era_plugin_runtime().call_status(&mut store, &bw, &handle).await.unwrap().unwrap();
        bare_t.push(t.elapsed());
        assert!(st.running);
    }
    let (e50, b50) = (percentile(&mut era, 0.5), percentile(&mut bare_t, 0.5));
    let (e99, b99) = (percentile(&mut era, 0.99), percentile(&mut bare_t, 0.99));
    println!(
        "plugin status round trip ({iterations} calls, {} allocator): era p50 {:.1} µs (p99 {:.1}), bare wasmtime p50 {:.1} µs (p99 {:.1}); ratio era/bare {:.1}x",
        if pooling.is_some() { "pooling" } else { "on-demand" },
        micros(e50),
        micros(e99),
        micros(b50),
        micros(b99),
        e50.as_secs_f64() / b50.as_secs_f64()
    );
}

/// The bindgen types of the bench and of erad are the same WIT, but distinct
/// Rust types; convert field by field.
fn to_erad_workload(w: bare::era::plugin::types::Workload) -> erad::plugin::Workload {
    erad::plugin::Workload {
        deployment: w.deployment,
        revision: w.revision,
        artifact: erad::plugin::Artifact {
            kind: erad::plugin::ArtifactKind::File,
            reference: w.artifact.reference,
            digest: w.artifact.digest,
            local_path: w.artifact.local_path,
            image_config: None,
        },
        env: w.env,
        ports: vec![],
        volumes: vec![],
        config: w.config,
        work_dir: w.work_dir,
        stop_grace_seconds: w.stop_grace_seconds,
        health: None,
    }
}

fn commit_latency(iterations: usize) {
    let dir = tempfile::tempdir_in(std::env::var("ERA_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let store = Store::open(&dir.path().join("era.db")).unwrap();
    store.ensure_deployment("bench", "default", "bench").unwrap();
    // Requested → … → Running, then loop Stop/Halted/Start/Activated/Healthy.
    for e in [
        Event::Apply,
        Event::Validated,
        Event::Fetched,
        Event::Prepared,
        Event::Installed,
        Event::Activated,
        Event::Healthy,
    ] {
        store.commit_transition("bench", e, 1, "setup", &Changes::default()).unwrap();
    }
    let cycle = [Event::Stop, Event::Halted, Event::Start, Event::Activated, Event::Healthy];
    let mut commits = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let t = Instant::now();
        store.commit_transition("bench", cycle[i % cycle.len()], 1, "bench transition", &Changes::default()).unwrap();
        commits.push(t.elapsed());
    }
    assert!(State::ALL.contains(&store.deployment("bench").unwrap().state));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("sync")).unwrap();
    let mut syncs = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        file.write_all(&[b'x'; 128]).unwrap();
        file.sync_data().unwrap();
        syncs.push(t.elapsed());
    }
    let (c50, s50) = (percentile(&mut commits, 0.5), percentile(&mut syncs, 0.5));
    println!(
        "transition commit ({iterations}, in {}): p50 {:.1} µs (p99 {:.1}); fdatasync p50 {:.1} µs (p99 {:.1}); ratio {:.2}x",
        dir.path().parent().unwrap().display(),
        micros(c50),
        micros(percentile(&mut commits, 0.99)),
        micros(s50),
        micros(percentile(&mut syncs, 0.99)),
        c50.as_secs_f64() / s50.as_secs_f64()
    );
}

async fn concurrent_deployments(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    // The dev config names the shipped plugins.
    for (from, to) in [
        (era_tests::plugin::NOOP, "noop.wasm"),
        (era_tests::plugin::CONTAINER, "container.wasm"),
        (era_tests::plugin::LXC, "lxc.wasm"),
    ] {
        std::fs::copy(from, plugin_dir.join(to)).unwrap();
    }
    let mut config = erad::config::DaemonConfig::dev(&dir.path().join("erad"), &plugin_dir).unwrap();
    config.file_roots = vec![dir.path().to_path_buf()];
    let daemon = erad::Daemon::builder(config).start().await.unwrap();
    std::fs::write(dir.path().join("app.bin"), b"bench").unwrap();
    let sha = era_tests::sha256(b"bench");
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: app-{i}}}\nspec:\n  runtime: noop\n  artifact: {{file: app.bin, sha256: \"{sha}\"}}\n"
            )
        })
        .collect();
    let specs: Vec<_> = texts.iter().map(|t| erad::spec::DeploymentSpec::parse(t, "bench").unwrap()).collect();
    let lifecycle = daemon.lifecycle().clone();
    let t = Instant::now();
    let applies: Vec<_> = specs
        .into_iter()
        .map(|s| {
            let (l, d) = (lifecycle.clone(), dir.path().to_path_buf());
            tokio::spawn(async move { l.apply(s, d).await.unwrap() })
        })
        .collect();
    for a in applies {
        a.await.unwrap();
    }
    loop {
        let all = lifecycle.store().deployments().unwrap();
        if all.iter().filter(|d| d.state == State::Running).count() == n {
            break;
        }
        if let Some(f) = all.iter().find(|d| d.state == State::Failed) {
            panic!("{} failed: {}", f.name, f.message);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    println!(
        "{n} noop deployments applied concurrently: all Running in {:.2} s, {:.0} deployments/s ({} transitions each)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        7
    );

    // `era plan` of the same set (nothing to change) and a drift report,
    // each against n reads of one deployment as `era get` makes it (its
    // row and its revision), in process: what the set costs beyond reading
    // the record once per deployment.
    let set: String = texts.join("---\n");
    let source = dir.path().join("set.yaml").display().to_string();
    let t = Instant::now();
    let plan = lifecycle.plan("default", vec![erad::lifecycle::SpecFile { text: set, source }], "bench").await.unwrap();
    let planned = t.elapsed();
    assert!(!plan.has_changes(), "the set is what runs");
    let t = Instant::now();
    let report = lifecycle.report(None).await.unwrap();
    let reported = t.elapsed();
    assert_eq!(report.len(), n);
    let t = Instant::now();
    for i in 0..n {
        let d = lifecycle.store().deployment(&format!("app-{i}")).unwrap();
        lifecycle.store().revision(&d.id, d.current_revision).unwrap().unwrap();
    }
    let gets = t.elapsed();
    println!(
        "era plan of those {n}, nothing to change: {:.1} ms; a drift report of them: {:.1} ms; {n} gets: {:.1} ms; ratios {:.1}x and {:.1}x",
        planned.as_secs_f64() * 1e3,
        reported.as_secs_f64() * 1e3,
        gets.as_secs_f64() * 1e3,
        planned.as_secs_f64() / gets.as_secs_f64(),
        reported.as_secs_f64() / gets.as_secs_f64()
    );
    daemon.shutdown().await;
}

fn start_to_ready_and_rss() {
    let erad_bin = era_tests::bin("erad");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("erad.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\n[daemon]\ndata_dir = \"{d}/data\"\nsocket = \"{d}/erad.sock\"\n{}",
            era_tests::fixture_plugins(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let sock = dir.path().join("erad.sock");
    let start = |label: &str| -> (Duration, u64) {
        let t = Instant::now();
        let mut child = std::process::Command::new(&erad_bin)
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ready = t.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let rss_kib = vm_rss_kib(child.id());
        let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
        child.wait().unwrap();
        let _ = label;
        (ready, rss_kib)
    };
    let (cold, cold_rss) = start("cold");
    let (warm, rss) = start("warm");
    println!(
        "erad start-to-ready with 5 plugins: cold compile cache {:.0} ms (idle RSS after it {:.1} MiB), warm {:.0} ms (ratio {:.1}x); idle RSS after a warm start {:.1} MiB",
        cold.as_secs_f64() * 1e3,
        cold_rss as f64 / 1024.0,
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() / warm.as_secs_f64(),
        rss as f64 / 1024.0
    );
    // Not idle: one deployment Running, its health monitor calling the
    // plugin every 200 ms, after API calls — the code the steady state
    // runs is resident again.
    let erad = era_tests::Erad::start();
    let spec = erad.deployment("rss", "noop", "rss", "");
    let applied = erad.apply_wait(&spec);
    assert_eq!(applied.code, 0, "{applied:?}: {}", erad.log());
    for _ in 0..5 {
        assert_eq!(erad.era(&["get", "rss"]).code, 0);
    }
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "erad RSS serving one Running deployment (monitored every 200 ms, after 6 API calls): {:.1} MiB",
        vm_rss_kib(erad.pid().unwrap()) as f64 / 1024.0
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    // `--quick` (scripts/test runs it so, in the dev profile): a smoke
    // that every part still completes, not a measurement.
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 50 } else { 2000 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(plugin_call(n, None));
    rt.block_on(plugin_call(n, Some(erad::plugin::Pooling { instances: 64, max_memory_mib: 64 })));
    commit_latency(if quick { 50 } else { 500 });
    rt.block_on(concurrent_deployments(if quick { 20 } else { 200 }));
    start_to_ready_and_rss();
}
