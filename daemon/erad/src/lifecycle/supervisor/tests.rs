//! The supervisor's control loop against a scripted runtime: the failure and
//! restart policies, retries and preemption, without wasm. The runtime keeps
//! the state a real one would (objects, which are running, real starts), so
//! "two revisions running at once" or "one start too many" shows up here as
//! it would on runc.

use crate::artifact::ContentStore;
use crate::artifact::roots::FileRoots;
use crate::lifecycle::runtime::{Runtime, Runtimes};
use crate::lifecycle::{Lifecycle, Shared, State};
use crate::plugin::{
    CallContext, CallError, ExecOutput, Failure, Health, Op, PluginRegistry, Workload, WorkloadStatus,
};
use crate::prepare::Layout;
use crate::spec::DeploymentSpec;
use crate::store::{DeploymentRecord, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scripted runtime has and has been asked.
#[derive(Default)]
struct World {
    /// Every call, as "op revision".
    calls: Vec<String>,
    /// Failures to answer with, in order, per (op, revision).
    failures: HashMap<(&'static str, u64), VecDeque<Failure>>,
    /// Installed objects, by revision.
    objects: BTreeSet<u64>,
    /// Revisions whose workload is running.
    running: BTreeSet<u64>,
    /// Starts that found nothing running (a real runtime's starts).
    real_starts: BTreeMap<u64, u32>,
    /// The exit code a revision's ended workload reports.
    exits: HashMap<u64, i32>,
    /// How many of a revision's next starts end at once (a crash loop).
    crashing_starts: HashMap<u64, u32>,
    /// Revisions that report this health while running (default Healthy).
    health: HashMap<u64, Health>,
    /// Times two revisions were running at once.
    overlaps: Vec<String>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<World>>);

impl Scripted {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn fail(&self, op: &'static str, revision: u64, failures: impl IntoIterator<Item = Failure>) {
        self.world().failures.entry((op, revision)).or_default().extend(failures);
    }

    fn count(&self, call: &str) -> usize {
        self.world().calls.iter().filter(|c| *c == call).count()
    }

    /// Records the call and answers with the next scripted failure, if any.
    fn enter(&self, op: &'static str, w: &Workload) -> Result<(), CallError> {
        let mut world = self.world();
        world.calls.push(format!("{op} {}", w.revision));
        match world.failures.get_mut(&(op, w.revision)).and_then(|f| f.pop_front()) {
            Some(failure) => Err(CallError { plugin: "scripted".into(), op: op_of(op), failure }),
            None => Ok(()),
        }
    }
}

fn op_of(op: &str) -> Op {
    match op {
        "validate" => Op::Validate,
        "install" => Op::Install,
        "start" => Op::Start,
        "status" => Op::Status,
        "stop" => Op::Stop,
        "delete" => Op::Delete,
        _ => Op::Exec,
    }
}

fn not_found(what: &str) -> CallError {
    CallError { plugin: "scripted".into(), op: Op::Stop, failure: Failure::NotFound(what.into()) }
}

#[async_trait::async_trait]
impl Runtime for Scripted {
    async fn validate(&self, _: &CallContext<'_>, w: &Workload) -> Result<(), CallError> {
        self.enter("validate", w)
    }

    async fn install(&self, _: &CallContext<'_>, w: &Workload) -> Result<String, CallError> {
        self.enter("install", w)?;
        self.world().objects.insert(w.revision);
        Ok(format!("object-{}", w.revision))
    }

    async fn start(&self, _: &CallContext<'_>, w: &Workload, handle: &str) -> Result<String, CallError> {
        self.enter("start", w)?;
        let mut world = self.world();
        if !world.objects.contains(&w.revision) {
            return Err(not_found(handle));
        }
        if world.running.insert(w.revision) {
            *world.real_starts.entry(w.revision).or_default() += 1;
            if world.running.len() > 1 {
                let now = format!("{:?}", world.running);
                world.overlaps.push(now);
            }
            // A workload that exits at once is gone by the next status.
            if let Some(n) = world.crashing_starts.get_mut(&w.revision).filter(|n| **n > 0) {
                *n -= 1;
                world.running.remove(&w.revision);
            }
        }
        Ok(handle.to_string())
    }

    async fn status(&self, _: &CallContext<'_>, w: &Workload, handle: &str) -> Result<WorkloadStatus, CallError> {
        self.enter("status", w)?;
        let world = self.world();
        if !world.objects.contains(&w.revision) {
            return Err(not_found(handle));
        }
        let running = world.running.contains(&w.revision);
        let exit_code = if running { None } else { world.exits.get(&w.revision).copied() };
        Ok(WorkloadStatus {
            running,
            health: if running {
                world.health.get(&w.revision).copied().unwrap_or(Health::Healthy)
            } else {
                Health::Unknown
            },
            exit_code,
            message: if running { "running".into() } else { "exited".into() },
            outputs: vec![],
        })
    }

    async fn stop(&self, _: &CallContext<'_>, w: &Workload, _: &str) -> Result<(), CallError> {
        self.enter("stop", w)?;
        self.world().running.remove(&w.revision);
        Ok(())
    }

    async fn delete(&self, _: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError> {
        self.enter("delete", w)?;
        let mut world = self.world();
        if world.running.contains(&w.revision) {
            return Err(CallError {
                plugin: "scripted".into(),
                op: Op::Delete,
                failure: Failure::Failed(format!("{handle} is running")),
            });
        }
        world.objects.remove(&w.revision);
        Ok(())
    }

    async fn exec(
        &self,
        _: &CallContext<'_>,
        w: &Workload,
        _: &str,
        _: &[String],
        _: Duration,
    ) -> Result<ExecOutput, CallError> {
        self.enter("exec", w)?;
        Ok(ExecOutput { exit_code: Some(0), stdout: vec![], stderr: vec![] })
    }
}

struct One(Scripted);

impl Runtimes for One {
    fn get(&self, name: &str) -> Option<Arc<dyn Runtime>> {
        (name == "scripted").then(|| Arc::new(self.0.clone()) as Arc<dyn Runtime>)
    }
    fn names(&self) -> Vec<String> {
        vec!["scripted".into()]
    }
}

struct Bench {
    dir: tempfile::TempDir,
    lifecycle: Lifecycle,
    runtime: Scripted,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("app.txt"), b"hello\n").unwrap();
        let layout = Layout::new(&root.join("data"));
        std::fs::create_dir_all(layout.root()).unwrap();
        let store = Store::open(&root.join("data/state.db")).unwrap();
        let content = ContentStore::open(&layout.content_store()).unwrap().with_file_roots(FileRoots::new(&[root]));
        let runtime = Scripted::default();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let lifecycle = Lifecycle::new(Shared {
            store,
            content,
            plugins: Arc::new(PluginRegistry::default()),
            runtimes: Arc::new(One(runtime.clone())),
            layout,
            rootfs: Default::default(),
            events,
            health_interval: Duration::from_millis(50),
            log_max_bytes: 1 << 20,
            http: reqwest::Client::new(),
            shutdown: shutdown_rx,
            environments: Default::default(),
            locks: Default::default(),
            run_retention: crate::config::RUN_RETENTION,
        });
        Bench { dir, lifecycle, runtime, _shutdown: shutdown }
    }

    /// Applies a spec of the scripted runtime; `extra` is added under `spec:`.
    async fn apply(&self, extra: &str) -> u64 {
        let text = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  runtime: scripted\n  artifact: {{file: app.txt, sha256: \"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\"}}\n{extra}"
        );
        let spec = DeploymentSpec::parse(&text, "test.yaml").unwrap();
        self.lifecycle.apply(spec, self.dir.path().to_path_buf()).await.unwrap().revision
    }

    fn record(&self) -> DeploymentRecord {
        self.lifecycle.store().deployment("web").unwrap()
    }

    /// Waits until the deployment is in `state` (and has no work left).
    async fn reach(&self, state: State) -> DeploymentRecord {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let rec = self.record();
            if rec.state == state {
                return rec;
            }
            assert!(
                Instant::now() < until,
                "still {} (wanted {state}); calls: {:?}",
                rec.state,
                self.runtime.world().calls
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn work_dir(&self, revision: u64) -> PathBuf {
        self.lifecycle.layout().work_dir("web", revision)
    }

    fn assert_never_two_running(&self) {
        let overlaps = self.runtime.world().overlaps.clone();
        assert!(overlaps.is_empty(), "two revisions ran at once: {overlaps:?}");
    }
}

fn causes(b: &Bench) -> Vec<String> {
    b.lifecycle.store().journal("web").unwrap().into_iter().map(|e| format!("{} {}", e.to, e.cause)).collect()
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_and_the_install_goes_on() {
    let b = Bench::new();
    b.runtime.fail("install", 1, [Failure::Unavailable("busy".into()), Failure::Unavailable("busy".into())]);
    b.apply("").await;
    b.reach(State::Running).await;
    assert_eq!(b.runtime.count("install 1"), 3, "two unavailable answers, then the one that worked");
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&1));
}

#[tokio::test]
async fn a_transient_failure_that_persists_fails_after_the_last_retry() {
    let b = Bench::new();
    b.runtime.fail("start", 1, std::iter::repeat_n(Failure::Unavailable("down".into()), 10));
    b.apply("").await;
    let rec = b.reach(State::Failed).await;
    assert_eq!(b.runtime.count("start 1"), super::RETRIES as usize);
    assert!(causes(&b).iter().any(|c| c.contains("runtime unavailable: down")), "{:?}", causes(&b));
    assert_eq!(rec.current_revision, 0);
}

#[tokio::test]
async fn a_failed_first_install_whose_object_cannot_be_removed_keeps_its_work_dir_for_a_later_delete() {
    let b = Bench::new();
    b.runtime.fail("install", 1, [Failure::InvalidConfig("no such image".into())]);
    b.runtime.fail("delete", 1, [Failure::Failed("the API is down".into())]);
    b.apply("").await;
    b.reach(State::Failed).await;
    let until = Instant::now() + Duration::from_secs(20);
    while b.runtime.count("delete 1") == 0 {
        assert!(Instant::now() < until, "no cleanup: {:?}", b.runtime.world().calls);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Where the plugin keeps what finds the object again (a VMID, ...).
    assert!(b.work_dir(1).exists(), "kept with the object it may still have");
    // A delete later removes both.
    b.lifecycle.delete("web").await.unwrap();
    b.reach(State::Deleted).await;
    assert_eq!(b.runtime.count("delete 1"), 2);
    assert!(!b.work_dir(1).exists());
}

#[tokio::test]
async fn a_permanent_install_failure_is_not_retried_and_the_failed_first_install_is_cleaned_up() {
    let b = Bench::new();
    b.runtime.fail("install", 1, [Failure::InvalidConfig("no such image".into())]);
    b.apply("").await;
    b.reach(State::Failed).await;
    // Failed is committed, then the cleanup runs.
    let until = Instant::now() + Duration::from_secs(20);
    while b.runtime.count("delete 1") == 0 || b.work_dir(1).exists() {
        assert!(Instant::now() < until, "no cleanup: {:?}", b.runtime.world().calls);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.runtime.count("install 1"), 1);
    // Marked installed before the call, so the cleanup deletes whatever the
    // call may have left.
    assert_eq!(b.runtime.count("delete 1"), 1);
    assert!(!b.work_dir(1).exists(), "the failed first install's work dir is removed");
    assert!(b.runtime.world().objects.is_empty());
}

#[tokio::test]
async fn an_update_that_fails_its_health_check_rolls_back_and_two_revisions_never_run_at_once() {
    let b = Bench::new();
    b.apply("").await;
    b.reach(State::Running).await;
    b.runtime.world().health.insert(2, Health::Unhealthy);
    b.apply("  env: {V: '2'}\n").await;
    let rec = b.reach(State::Running).await;
    assert_eq!(rec.current_revision, 1);
    let rec = loop {
        // Running is committed before revision 2's object is retired.
        let rec = b.record();
        if b.runtime.world().objects == BTreeSet::from([1]) {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(rec.state, State::Running);
    assert_eq!(b.runtime.world().running, BTreeSet::from([1]));
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&2), "started, stopped for the update, started again");
    b.assert_never_two_running();
    let journal = causes(&b);
    assert!(journal.iter().any(|c| c.starts_with("RollingBack update to revision 2 failed")), "{journal:?}");
}

#[tokio::test]
async fn without_auto_rollback_a_failed_update_stays_failed_with_both_revisions_kept() {
    let b = Bench::new();
    b.apply("  update: {autoRollback: false}\n").await;
    b.reach(State::Running).await;
    b.runtime.world().health.insert(2, Health::Unhealthy);
    b.apply("  update: {autoRollback: false}\n  env: {V: '2'}\n").await;
    let rec = b.reach(State::Failed).await;
    assert_eq!(rec.current_revision, 1);
    // Nothing is deleted: the operator inspects, then rolls back or applies.
    assert_eq!(b.runtime.world().objects, BTreeSet::from([1, 2]));
    assert_eq!(b.runtime.count("delete 1") + b.runtime.count("delete 2"), 0);
    b.assert_never_two_running();
    // An apply from Failed is an update from the installed revision: the
    // failed revision 2 is stopped before revision 3 starts.
    b.runtime.world().health.remove(&2);
    b.apply("  update: {autoRollback: false}\n  env: {V: '3'}\n").await;
    let rec = b.reach(State::Running).await;
    assert_eq!(rec.current_revision, 3);
    b.assert_never_two_running();
}

#[tokio::test]
async fn a_rollback_whose_start_fails_ends_rollback_failed_not_in_another_rollback() {
    let b = Bench::new();
    b.apply("").await;
    b.reach(State::Running).await;
    b.apply("  env: {V: '2'}\n").await;
    let rec = b.reach(State::Running).await;
    assert_eq!(rec.current_revision, 2);
    b.runtime.fail("start", 1, [Failure::Failed("the image is gone".into())]);
    b.lifecycle.rollback("web", None).await.unwrap();
    b.reach(State::RollbackFailed).await;
    assert_eq!(b.runtime.count("start 1"), 2, "its first run and the failed rollback; no retry of a permanent failure");
    assert!(b.runtime.world().running.is_empty());
}

#[tokio::test]
async fn stop_takes_not_found_as_done() {
    let b = Bench::new();
    b.apply("").await;
    b.reach(State::Running).await;
    b.runtime.fail("stop", 1, [Failure::NotFound("object-1".into())]);
    assert_eq!(b.lifecycle.stop("web").await.unwrap(), State::Stopping);
    b.reach(State::Stopped).await;
    assert_eq!(b.runtime.count("stop 1"), 1);
}

#[tokio::test]
async fn a_crash_loop_restarts_exactly_max_retries_times_then_fails_keeping_the_workload() {
    let b = Bench::new();
    b.apply("  restart: {policy: on-failure, maxRetries: 2}\n").await;
    b.reach(State::Running).await;
    // From now on, each start exits at once with code 3.
    b.runtime.world().exits.insert(1, 3);
    b.runtime.world().crashing_starts.insert(1, 100);
    b.runtime.world().running.clear();
    let rec = b.reach(State::Failed).await;
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&3), "the first start and exactly two restarts");
    assert_eq!(rec.restarts, 2);
    // Kept for inspection: no delete, the work dir stays.
    assert_eq!(b.runtime.count("delete 1"), 0);
    assert!(b.work_dir(1).exists());
}

#[tokio::test]
async fn a_job_that_exits_0_under_on_failure_ends_stopped_and_is_not_restarted() {
    let b = Bench::new();
    b.apply("  restart: {policy: on-failure, maxRetries: 2}\n").await;
    b.reach(State::Running).await;
    b.runtime.world().exits.insert(1, 0);
    b.runtime.world().running.clear();
    b.reach(State::Stopped).await;
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&1));
    assert!(causes(&b).iter().any(|c| c.contains("exited with code 0: finished")), "{:?}", causes(&b));
}

#[tokio::test]
async fn stop_and_delete_cut_a_long_health_check_short() {
    let b = Bench::new();
    b.runtime.world().health.insert(1, Health::Unknown);
    b.apply("  update: {deadline: 5m}\n").await;
    b.reach(State::HealthChecking).await;
    let asked = Instant::now();
    b.lifecycle.stop("web").await.unwrap();
    b.reach(State::Stopped).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert!(b.runtime.world().running.is_empty());
    b.lifecycle.delete("web").await.unwrap();
    b.reach(State::Deleted).await;
    assert!(b.runtime.world().objects.is_empty());
    assert!(!Path::new(&b.work_dir(1)).exists());
}

#[tokio::test]
async fn a_restarted_workload_that_runs_but_fails_its_health_check_is_really_restarted() {
    let b = Bench::new();
    b.apply("  restart: {policy: on-failure, maxRetries: 2}\n  update: {deadline: 2s}\n").await;
    b.reach(State::Running).await;
    // It crashes once; every run after that comes up but is unhealthy.
    {
        let mut world = b.runtime.world();
        world.health.insert(1, Health::Unhealthy);
        world.exits.insert(1, 1);
        world.running.clear();
    }
    let rec = b.reach(State::Failed).await;
    // The first start and two restarts, each a real start: the second
    // restart stopped the unhealthy run before starting it again.
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&3), "{:?}", b.runtime.world().calls);
    assert_eq!(rec.restarts, 2);
    assert!(causes(&b).iter().any(|c| c.contains("gave up after 2 restarts")), "{:?}", causes(&b));
    b.assert_never_two_running();
}

#[tokio::test]
async fn a_restarted_job_that_exits_0_before_its_health_check_ends_stopped() {
    let b = Bench::new();
    b.apply("  restart: {policy: on-failure, maxRetries: 3}\n").await;
    b.reach(State::Running).await;
    {
        // It fails once (code 1); the restarted run finishes at once with 0.
        let mut world = b.runtime.world();
        world.exits.insert(1, 1);
        world.running.clear();
    }
    // The monitor saw it end and records it unhealthy before the restart's
    // 250 ms backoff: the restarted run is set up then.
    let until = Instant::now() + Duration::from_secs(20);
    while b.record().health != "unhealthy" {
        assert!(Instant::now() < until, "the monitor never saw it end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let mut world = b.runtime.world();
        world.exits.insert(1, 0);
        world.crashing_starts.insert(1, 1);
    }
    b.reach(State::Stopped).await;
    assert_eq!(b.runtime.world().real_starts.get(&1), Some(&2), "not run a third time");
}

#[tokio::test]
async fn a_drift_check_the_runtime_cannot_answer_is_unknown_never_healthy() {
    use crate::lifecycle::Standing;
    let b = Bench::new();
    b.apply("").await;
    b.reach(State::Running).await;
    b.lifecycle.stop("web").await.unwrap();
    b.reach(State::Stopped).await;
    assert_eq!(b.lifecycle.check_drift("web").await.0, Standing::Healthy);
    b.runtime.fail("status", 1, [Failure::Failed("the API is down".into())]);
    let (standing, detail) = b.lifecycle.check_drift("web").await;
    assert_eq!(standing, Standing::Unknown, "{detail}");
    assert!(detail.contains("the API is down"), "{detail}");
    // A stopped workload the runtime no longer has is as recorded.
    b.runtime.fail("status", 1, [Failure::NotFound("gone".into())]);
    assert_eq!(b.lifecycle.check_drift("web").await.0, Standing::Healthy);
}
