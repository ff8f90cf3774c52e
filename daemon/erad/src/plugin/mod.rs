//! Runtime plugins: WebAssembly components run by wasmtime.
//!
//! Stages, as in Spin's factors:
//! - **engine** (once per daemon): async, epoch interruption, and a ticker
//!   thread that advances the epoch every [`EPOCH_TICK`];
//! - **load** (once per plugin): compile (or load from the on-disk cache, keyed
//!   by content digest and engine compatibility hash), check every import
//!   against the operator's grants, link, and keep an `InstancePre`;
//! - **call** (once per operation): a fresh `Store` with the plugin's memory
//!   cap and the operation's deadline, the revision's work dir as `/work`, one
//!   call, and the `Store` is dropped. A trap, a blown deadline or an exhausted
//!   memory fail that call only.

mod bindings;
pub mod caps;
mod compile_cache;

pub use bindings::{
    Artifact, ArtifactKind, ExecOutput, GuestError, Health, HealthCheck, HttpProbeCheck, PluginInfo, Port, Probe,
    TcpProbeCheck, Volume, Workload, WorkloadStatus,
};
pub use caps::{CallScope, Grants, RuntimeHome};

use bindings::{Plugin, PluginPre};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of a plugin's stderr (panic messages) is kept for error reports.
const STDERR_CAPTURE: usize = 64 * 1024;

/// Resources (open files, streams, HTTP requests...) one call may hold.
const MAX_RESOURCES: usize = 10_000;

/// The headers of one HTTP request or response a plugin builds, in memory.
const HTTP_FIELDS_LIMIT: usize = 32 * 1024;

/// The lifecycle operations of the `runtime` interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Info,
    Validate,
    Install,
    Start,
    Status,
    Stop,
    Delete,
    Exec,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Info => "info",
            Op::Validate => "validate",
            Op::Install => "install",
            Op::Start => "start",
            Op::Status => "status",
            Op::Stop => "stop",
            Op::Delete => "delete",
            Op::Exec => "exec",
        })
    }
}

/// What a plugin call can end in, besides success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin returned `invalid-config`: permanent.
    InvalidConfig(String),
    /// The plugin returned `unavailable`: worth a retry.
    Unavailable(String),
    /// The plugin returned `not-found`.
    NotFound(String),
    /// The plugin returned `failed`.
    Failed(String),
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    Trapped(String),
    /// The call ran past its deadline and was interrupted.
    DeadlineExceeded(Duration),
    /// The guest tried to grow its memory past the cap.
    MemoryExhausted { limit_mib: u64 },
    /// The host could not set the call up (work dir missing, ...).
    Host(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Failure::Unavailable(m) => write!(f, "runtime unavailable: {m}"),
            Failure::NotFound(m) => write!(f, "not found: {m}"),
            Failure::Failed(m) => write!(f, "{m}"),
            Failure::Trapped(m) => write!(f, "the plugin trapped: {m}"),
            Failure::DeadlineExceeded(d) => {
                write!(f, "did not finish within its deadline of {}", humantime::format_duration(*d))
            }
            Failure::MemoryExhausted { limit_mib } => write!(f, "exceeded its memory limit of {limit_mib} MiB"),
            Failure::Host(m) => write!(f, "host error: {m}"),
        }
    }
}

/// A failed plugin call, naming the plugin, the operation and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin}: {op}: {failure}")]
pub struct CallError {
    pub plugin: String,
    pub op: Op,
    pub failure: Failure,
}

impl CallError {
    /// Worth retrying with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(self.failure, Failure::Unavailable(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {name}: cannot read {path}: {source}")]
    Read { name: String, path: PathBuf, source: std::io::Error },
    #[error("plugin {name}: {path} is not a valid component: {message}")]
    Compile { name: String, path: PathBuf, message: String },
    #[error(
        "plugin {name}: imports {import}, which is not granted (grants: {granted}); add {needed:?} to [plugins.{name}.grants] in the daemon config"
    )]
    NotGranted { name: String, import: String, granted: String, needed: String },
    #[error("plugin {name}: imports {import}, which erad does not provide")]
    UnknownImport { name: String, import: String },
    #[error("plugin {name}: imports {import}, which erad refuses: {reason}")]
    RefusedImport { name: String, import: String, reason: String },
    #[error("plugin {name}: grants.{message}")]
    Grant { name: String, message: String },
    #[error("plugin {name}: does not fit the era:plugin world: {message}")]
    Link { name: String, message: String },
    #[error("plugin {name}: info: {source}")]
    Info { name: String, source: CallError },
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// One plugin as the operator configured it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The component file. For a plugin named by `reference`, erad fills
    /// this in once the artifact is pulled and verified.
    pub path: PathBuf,
    /// An OCI reference to a Wasm component artifact, instead of a file.
    pub reference: Option<String>,
    /// The manifest digest the reference must resolve to (`sha256:<hex>`).
    pub pinned: Option<String>,
    pub grants: Grants,
    pub memory_limit_mib: u64,
    pub deadlines: Deadlines,
}

/// Per-store state: WASI limited to the work dir, the memory limiter, and
/// what the capabilities need: the call's scope, the plugin's grants and
/// the runtimes' home.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    pub(crate) plugin: Arc<str>,
    pub(crate) scope: CallScope,
    pub(crate) grants: Arc<Grants>,
    pub(crate) runtimes: Arc<RuntimeHome>,
    /// The granted endpoints, resolved at load (`None`: no `http` grant).
    pub(crate) http: Option<Arc<caps::http::HttpEndpoints>>,
    http_ctx: WasiHttpCtx,
    http_hooks: caps::http::HttpHooks,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

impl bindings::era::plugin::types::Host for HostState {}

/// Deadlines per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub info: Duration,
    pub validate: Duration,
    pub install: Duration,
    pub start: Duration,
    pub status: Duration,
    pub stop: Duration,
    pub delete: Duration,
    pub exec: Duration,
}

impl Deadlines {
    pub fn of(&self, op: Op) -> Duration {
        match op {
            Op::Info => self.info,
            Op::Validate => self.validate,
            Op::Install => self.install,
            Op::Start => self.start,
            Op::Status => self.status,
            Op::Stop => self.stop,
            Op::Delete => self.delete,
            Op::Exec => self.exec,
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        let s = Duration::from_secs;
        Deadlines {
            info: s(5),
            validate: s(10),
            install: s(300),
            start: s(60),
            status: s(10),
            stop: s(120),
            delete: s(120),
            exec: s(60),
        }
    }
}

/// A loaded, linked plugin, ready to be instantiated per call.
pub struct LoadedPlugin {
    pub name: String,
    pub info: PluginInfo,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    /// Where it came from: the OCI reference, or the file.
    pub source: String,
    pub grants: Arc<Grants>,
    pre: PluginPre<HostState>,
    http: Option<Arc<caps::http::HttpEndpoints>>,
    /// With pooling: one permit per instance slot.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    runtimes: Arc<RuntimeHome>,
    memory_limit_mib: u64,
    deadlines: Deadlines,
}

impl LoadedPlugin {
    /// Its granted HTTP endpoints: name, host and port.
    pub fn endpoints(&self) -> Vec<(String, String, u16)> {
        self.http
            .iter()
            .flat_map(|h| h.endpoints.iter())
            .map(|e| {
                let (host, port) = e.address();
                (e.name.clone(), host, port)
            })
            .collect()
    }
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin").field("name", &self.name).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// The context of one call: who it is for and where its files are.
pub struct CallContext<'a> {
    pub deployment: &'a str,
    pub work_dir: &'a Path,
    /// The revision the call acts on; `None` for `info` and `validate`.
    pub revision: Option<u64>,
}

/// Pre-allocated instance slots for the pooling allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// Plugin instances that can exist at once; more calls wait for a slot.
    pub instances: u32,
    /// The largest memory limit of any plugin, in MiB (each slot's size).
    pub max_memory_mib: u64,
}

/// Core instances, memories and tables a wasip2 component typically holds
/// (the plugin's module plus the WASI adapter's shims), per component instance.
const CORE_PER_COMPONENT: u32 = 16;

/// The wasmtime engine shared by all plugins.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// `linker` plus `wasi:http`, for plugins granted `http` only.
    linker_http: Arc<Linker<HostState>>,
    cache_dir: PathBuf,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    runtimes: Arc<RuntimeHome>,
}

impl PluginHost {
    /// An engine with on-demand instance allocation.
    pub fn new(cache_dir: &Path, runtimes: RuntimeHome) -> Result<PluginHost, LoadError> {
        PluginHost::with_pooling(cache_dir, runtimes, None)
    }

    /// An engine that, with `pooling`, pre-allocates instance slots: cheaper
    /// instantiation, at the price of reserved address space and a cap on
    /// concurrent calls.
    pub fn with_pooling(
        cache_dir: &Path,
        runtimes: RuntimeHome,
        pooling: Option<Pooling>,
    ) -> Result<PluginHost, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        if let Some(p) = pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            let n = p.instances.max(1);
            pool.total_component_instances(n)
                .total_core_instances(n * CORE_PER_COMPONENT)
                .total_memories(n * CORE_PER_COMPONENT)
                .total_tables(n * CORE_PER_COMPONENT)
                .total_stacks(n)
                .max_memories_per_component(CORE_PER_COMPONENT)
                .max_core_instances_per_component(CORE_PER_COMPONENT)
                .max_memory_size((p.max_memory_mib as usize).saturating_mul(1 << 20));
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            // Keep the reservation per memory to its cap, not the 4 GiB default.
            config.memory_reservation(p.max_memory_mib.saturating_mul(1 << 20));
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker_http = linker.clone();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker_http)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| LoadError::Engine(format!("compile cache {}: {e}", cache_dir.display())))?;

        // The ticker lives exactly as long as the engine: loaded plugins keep
        // the engine alive after the host itself is gone, and their deadlines
        // must keep counting.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("era-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("epoch thread: {e}")))?;
        let slots = pooling.map(|p| Arc::new(tokio::sync::Semaphore::new(p.instances.max(1) as usize)));
        Ok(PluginHost {
            engine,
            linker: Arc::new(linker),
            linker_http: Arc::new(linker_http),
            cache_dir: cache_dir.to_path_buf(),
            slots,
            runtimes: Arc::new(runtimes),
        })
    }

    /// A stable key for this engine's compiled code (wasmtime version + settings).
    fn engine_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Compiles `bytes`, or loads the result of an earlier compile from disk.
    fn compile(&self, name: &str, path: &Path, bytes: &[u8], digest: &str) -> Result<Component, LoadError> {
        let cached =
            self.cache_dir.join(format!("{}-{}.cwasm", digest.trim_start_matches("sha256:"), self.engine_key()));
        if let Some(serialized) = compile_cache::read_verified(name, &cached) {
            // SAFETY: these bytes are exactly what `Component::serialize`
            // wrote from an engine with the same compatibility hash (part of
            // the file name): their sha256 is the one recorded when they were
            // written, and they are not read again after the check. wasmtime
            // checks the header again on load.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize(&self.engine, &serialized) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = name, path = %cached.display(), "ignoring unusable compile cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            name: name.into(),
            path: path.into(),
            message: format!("{e:#}"),
        })?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = compile_cache::write(&cached, &bytes) {
                    tracing::warn!(plugin = name, "cannot write compile cache {}: {e}", cached.display());
                }
            }
            Err(e) => tracing::warn!(plugin = name, "cannot serialize compiled plugin: {e:#}"),
        }
        Ok(component)
    }

    /// Loads a plugin: compile or load from cache, check its imports against
    /// its grants, link, and ask it who it is.
    pub async fn load(&self, name: &str, cfg: &PluginConfig) -> Result<LoadedPlugin, LoadError> {
        let bytes = tokio::fs::read(&cfg.path).await.map_err(|source| LoadError::Read {
            name: name.into(),
            path: cfg.path.clone(),
            source,
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let host = self.clone();
        let (n, p, d) = (name.to_string(), cfg.path.clone(), digest.clone());
        let component = tokio::task::spawn_blocking(move || host.compile(&n, &p, &bytes, &d))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))??;
        check_imports(name, &self.engine, &component, &cfg.grants)?;
        // Secrets and certificates are read now, once, and kept by the host.
        let http = match &cfg.grants.http {
            Some(g) => Some(Arc::new(
                caps::http::HttpEndpoints::resolve(g)
                    .map_err(|e| LoadError::Grant { name: name.into(), message: e.to_string() })?,
            )),
            None => None,
        };
        let linker = if http.is_some() { &self.linker_http } else { &self.linker };
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link { name: name.into(), message: format!("{e:#}") })?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| LoadError::Link { name: name.into(), message: format!("{e:#}") })?;
        let mut plugin = LoadedPlugin {
            name: name.to_string(),
            info: PluginInfo {
                name: name.into(),
                version: String::new(),
                description: String::new(),
                runs_probes: false,
            },
            digest,
            source: cfg.reference.clone().unwrap_or_else(|| cfg.path.display().to_string()),
            grants: Arc::new(cfg.grants.clone()),
            pre,
            http,
            slots: self.slots.clone(),
            runtimes: self.runtimes.clone(),
            memory_limit_mib: cfg.memory_limit_mib,
            deadlines: cfg.deadlines,
        };
        let scratch = crate::prepare::Scratch::new(&self.cache_dir.join("scratch"))
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let info = plugin.info(&CallContext { deployment: "", work_dir: &scratch.path, revision: None }).await;
        plugin.info = info.map_err(|source| LoadError::Info { name: name.into(), source })?;
        Ok(plugin)
    }
}

fn check_imports(name: &str, engine: &Engine, component: &Component, grants: &Grants) -> Result<(), LoadError> {
    use caps::ImportRefusal;
    for (import, _) in component.component_type().imports(engine) {
        match caps::required_grant(import, grants) {
            Ok(_) => {}
            Err(ImportRefusal::NotGranted(cap)) => {
                let names = grants.names();
                return Err(LoadError::NotGranted {
                    name: name.into(),
                    import: import.into(),
                    granted: if names.is_empty() { "none".into() } else { names.join(", ") },
                    needed: cap.as_str().into(),
                });
            }
            Err(ImportRefusal::Refused(reason)) => {
                return Err(LoadError::RefusedImport {
                    name: name.into(),
                    import: import.into(),
                    reason: reason.into(),
                });
            }
            Err(ImportRefusal::Unknown) => {
                return Err(LoadError::UnknownImport { name: name.into(), import: import.into() });
            }
        }
    }
    Ok(())
}

/// Runs one export of a fresh instance under the plugin's limits and turns
/// every way it can end into a `CallError`.
macro_rules! call {
    ($self:ident, $op:expr, $ctx:expr, $w:expr, |$rt:ident, $store:ident| $body:expr) => {{
        let op = $op;
        let started = std::time::Instant::now();
        let deadline = $self.deadlines.of(op);
        let _slot = match &$self.slots {
            Some(s) => Some(s.acquire().await.map_err(|e| $self.err(op, Failure::Host(e.to_string())))?),
            None => None,
        };
        let (mut $store, stderr) = $self.store($ctx, $w, deadline).map_err(|f| $self.err(op, f))?;
        let instance = $self
            .pre
            .instantiate_async(&mut $store)
            .await
            .map_err(|e| $self.err(op, Failure::Host(format!("{e:#}"))))?;
        let $rt = instance.era_plugin_runtime();
        // The epoch deadline interrupts a spinning guest; this timeout also
        // bounds time spent in host calls.
        let result = tokio::time::timeout(deadline + Duration::from_secs(1), $body).await;
        tracing::debug!(plugin = %$self.name, op = %op, us = started.elapsed().as_micros() as u64, "plugin call");
        match result {
            Err(_) => Err($self.err(op, Failure::DeadlineExceeded(deadline))),
            Ok(Err(trap)) => Err($self.err(op, $self.classify_trap(trap, deadline, &stderr))),
            Ok(Ok(v)) => Ok(v),
        }
    }};
}

fn guest_failure(e: GuestError) -> Failure {
    match e {
        GuestError::InvalidConfig(m) => Failure::InvalidConfig(m),
        GuestError::Unavailable(m) => Failure::Unavailable(m),
        GuestError::NotFound(m) => Failure::NotFound(m),
        GuestError::Failed(m) => Failure::Failed(m),
    }
}

impl LoadedPlugin {
    fn err(&self, op: Op, failure: Failure) -> CallError {
        let scrub = |m: String| self.redact(&m).unwrap_or(m);
        let failure = match failure {
            Failure::InvalidConfig(m) => Failure::InvalidConfig(scrub(m)),
            Failure::Unavailable(m) => Failure::Unavailable(scrub(m)),
            Failure::NotFound(m) => Failure::NotFound(scrub(m)),
            Failure::Failed(m) => Failure::Failed(scrub(m)),
            Failure::Trapped(m) => Failure::Trapped(scrub(m)),
            Failure::Host(m) => Failure::Host(scrub(m)),
            other => other,
        };
        CallError { plugin: self.name.clone(), op, failure }
    }

    /// `text` without the credentials of this plugin's endpoints, if it
    /// holds any ([`caps::http::HttpEndpoints::redact`]).
    fn redact(&self, text: &str) -> Option<String> {
        self.http.as_ref()?.redact(text)
    }

    fn store(
        &self,
        ctx: &CallContext<'_>,
        workload: Option<&Workload>,
        deadline: Duration,
    ) -> Result<(Store<HostState>, MemoryOutputPipe), Failure> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        wasi.preopened_dir(ctx.work_dir, "/work", FsPerms::ReadWrite)
            .map_err(|e| Failure::Host(format!("work dir {}: {e:#}", ctx.work_dir.display())))?;
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.memory_limit_mib as usize).saturating_mul(1 << 20))
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            wasi: wasi.build(),
            table: {
                // Handles (files, streams, requests) one call may hold.
                let mut t = ResourceTable::new();
                t.set_max_capacity(MAX_RESOURCES);
                t
            },
            limits,
            plugin: self.name.as_str().into(),
            scope: CallScope {
                deployment: ctx.deployment.to_string(),
                revision: ctx.revision,
                work_dir: ctx.work_dir.to_path_buf(),
                // From the host's own record of the revision, never the plugin.
                volumes: workload
                    .map(|w| w.volumes.iter().map(|v| PathBuf::from(&v.host_path)).collect())
                    .unwrap_or_default(),
            },
            grants: self.grants.clone(),
            runtimes: self.runtimes.clone(),
            http: self.http.clone(),
            http_ctx: {
                let mut c = WasiHttpCtx::new();
                c.set_field_size_limit(HTTP_FIELDS_LIMIT);
                c
            },
            http_hooks: caps::http::HttpHooks::new(
                self.http.clone(),
                deadline,
                self.name.as_str().into(),
                ctx.deployment,
            ),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        let ticks = (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok((store, stderr))
    }

    fn classify_trap(&self, err: wasmtime::Error, deadline: Duration, stderr: &MemoryOutputPipe) -> Failure {
        if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return Failure::DeadlineExceeded(deadline);
        }
        let chain = format!("{err:#}");
        if chain.contains("forcing trap when growing memory") {
            return Failure::MemoryExhausted { limit_mib: self.memory_limit_mib };
        }
        // The guest's own last words (a Rust panic message) say more than the trap code.
        // (Skipping the panic hook's "note: run with RUST_BACKTRACE" line.)
        let said = String::from_utf8_lossy(&stderr.contents())
            .lines()
            .rfind(|l| !l.trim().is_empty() && !l.starts_with("note: "))
            .map(str::to_string);
        let trap = err
            .downcast_ref::<Trap>()
            .map(|t| t.to_string())
            .unwrap_or_else(|| chain.lines().next().unwrap_or("").to_string());
        Failure::Trapped(match said {
            Some(s) => format!("{trap} ({s})"),
            None => trap,
        })
    }

    pub fn memory_limit_mib(&self) -> u64 {
        self.memory_limit_mib
    }

    pub async fn info(&self, ctx: &CallContext<'_>) -> Result<PluginInfo, CallError> {
        call!(self, Op::Info, ctx, None, |rt, store| rt.call_info(&mut store))
    }

    pub async fn validate(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<(), CallError> {
        call!(self, Op::Validate, ctx, Some(w), |rt, store| rt.call_validate(&mut store, w))?
            .map_err(|e| self.err(Op::Validate, guest_failure(e)))
    }

    pub async fn install(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<String, CallError> {
        call!(self, Op::Install, ctx, Some(w), |rt, store| rt.call_install(&mut store, w))?
            .map_err(|e| self.err(Op::Install, guest_failure(e)))
    }

    pub async fn start(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<String, CallError> {
        call!(self, Op::Start, ctx, Some(w), |rt, store| rt.call_start(&mut store, w, &handle.to_string()))?
            .map_err(|e| self.err(Op::Start, guest_failure(e)))
    }

    pub async fn status(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<WorkloadStatus, CallError> {
        let mut st =
            call!(self, Op::Status, ctx, Some(w), |rt, store| rt.call_status(&mut store, w, &handle.to_string()))?
                .map_err(|e| self.err(Op::Status, guest_failure(e)))?;
        // Status messages and outputs are stored and shown: no credential in them.
        if let Some(m) = self.redact(&st.message) {
            st.message = m;
        }
        for (_, v) in &mut st.outputs {
            if let Some(r) = self.redact(v) {
                *v = r;
            }
        }
        Ok(st)
    }

    pub async fn stop(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError> {
        call!(self, Op::Stop, ctx, Some(w), |rt, store| rt.call_stop(&mut store, w, &handle.to_string()))?
            .map_err(|e| self.err(Op::Stop, guest_failure(e)))
    }

    pub async fn delete(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError> {
        call!(self, Op::Delete, ctx, Some(w), |rt, store| rt.call_delete(&mut store, w, &handle.to_string()))?
            .map_err(|e| self.err(Op::Delete, guest_failure(e)))
    }

    /// Runs `command` inside the workload, through the plugin (`health.exec`).
    pub async fn exec(
        &self,
        ctx: &CallContext<'_>,
        w: &Workload,
        handle: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, CallError> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        call!(self, Op::Exec, ctx, Some(w), |rt, store| rt.call_exec(&mut store, w, &handle.to_string(), command, ms))?
            .map_err(|e| self.err(Op::Exec, guest_failure(e)))
    }
}

/// The loaded plugins by name.
#[derive(Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
}

impl PluginRegistry {
    pub fn insert(&mut self, plugin: LoadedPlugin) {
        self.plugins.insert(plugin.name.clone(), Arc::new(plugin));
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }
}
