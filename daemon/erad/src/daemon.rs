//! The daemon as a value: build it from a [`DaemonConfig`], start it, and shut
//! it down. `erad` and embedding programs use the same builder.
//!
//! ```no_run
//! # async fn run() -> Result<(), erad::DaemonError> {
//! let config = erad::config::DaemonConfig::dev("/tmp/era".as_ref(), "/opt/era/plugins".as_ref())?;
//! let daemon = erad::Daemon::builder(config).start().await?;
//! println!("serving on {}", daemon.socket().display());
//! daemon.shutdown().await;
//! # Ok(()) }
//! ```

use crate::artifact::oci::RegistryAccess;
use crate::artifact::roots::FileRoots;
use crate::artifact::{ContentStore, FetchError};
use crate::config::{ConfigError, DaemonConfig};
use crate::lifecycle::{Lifecycle, Shared};
use crate::plugin::{LoadError, PluginHost, PluginRegistry, Pooling};
use crate::prepare::Layout;
use crate::server::DeploymentsService;
use crate::server::auth::{ApiAccess, Authorized, resolve_group};
use crate::store::{Store, StoreError};
use era_api::v1::deployments_server::DeploymentsServer;
use oci_client::secrets::RegistryAuth;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// The socket's mode: erad's user and the socket's group (`[api]
/// read_group`, else `admin_group`) may connect; what each may then do is
/// decided per call by their role (`server::auth`).
const SOCKET_MODE: u32 = 0o660;
/// The socket's directory, when erad creates it: same group, no one else.
const SOCKET_DIR_MODE: u32 = 0o750;
/// The data dir holds the state database, artifacts and every work dir:
/// erad's alone, also under `--dev`.
const DATA_DIR_MODE: u32 = 0o700;
/// How long a shutdown waits for calls in flight (SIGTERM exits within 5 s).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// `era.db` and its `-wal` and `-shm` (SQLite gives those the mode of the
/// database file).
const DATABASE_MODE: u32 = 0o600;

/// Why the daemon could not start; each names the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot make the work dirs {path} a nodev mount (so that no device node a workload makes there opens on the host; erad needs root): {source}"
    )]
    WorkDirs { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] FetchError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
    #[error("plugin {name}: {source}")]
    PluginArtifact { name: String, source: FetchError },
    #[error("registry {registry}: cannot read the secret file {path}: {source}")]
    Secret { registry: String, path: PathBuf, source: std::io::Error },
    #[error("socket {path}: another erad is already serving on it")]
    SocketInUse { path: PathBuf },
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Server(String),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("config {0}")]
    ApiGroup(#[from] crate::server::auth::GroupError),
}

pub struct Daemon;

impl Daemon {
    pub fn builder(config: DaemonConfig) -> DaemonBuilder {
        DaemonBuilder { config }
    }
}

pub struct DaemonBuilder {
    config: DaemonConfig,
}

/// A started daemon. Dropping it does not stop it; call [`RunningDaemon::shutdown`].
pub struct RunningDaemon {
    socket: PathBuf,
    /// The work dirs' nodev mount, when this start made it.
    nodev_mount: Option<PathBuf>,
    lifecycle: Lifecycle,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl DaemonBuilder {
    /// Opens the store, loads the plugins, resumes every deployment and starts
    /// serving. Returns once the socket accepts connections.
    pub async fn start(self) -> Result<RunningDaemon, DaemonError> {
        let cfg = self.config;
        let access = Arc::new(api_access(&cfg)?);
        private_data_dir(&cfg.data_dir)?;
        // Its real path: mounts beneath it are found by the path the kernel
        // reports, which never goes through a symlink.
        let data_dir = std::fs::canonicalize(&cfg.data_dir)
            .map_err(|source| DaemonError::DataDir { path: cfg.data_dir.clone(), source })?;
        let layout = Layout::new(&data_dir);
        let work_dirs = layout.deployments();
        let mounted = crate::prepare::mount_nodev(&work_dirs)
            .map_err(|source| DaemonError::WorkDirs { path: work_dirs.clone(), source })?;
        if mounted {
            tracing::info!(path = %work_dirs.display(), "work dirs mounted nodev");
        }
        let _ = std::fs::remove_dir_all(layout.scratch());
        let db = layout.database();
        let db_err = |source| DaemonError::DataDir { path: db.clone(), source };
        // Created private before SQLite opens it, so it is never readable by others.
        std::fs::OpenOptions::new().create(true).append(true).mode(DATABASE_MODE).open(&db).map_err(db_err)?;
        let store = Store::open(&db)?;
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            tighten(&path, DATABASE_MODE).map_err(|source| DaemonError::DataDir { path, source })?;
        }
        let trust = std::sync::Arc::new(crate::trust::TrustPolicy::load(&cfg.trust)?);
        if cfg.file_roots.is_empty() {
            tracing::info!("file: artifacts are off: artifacts.file_roots lists no directory");
        } else {
            tracing::info!(file_roots = ?cfg.file_roots, "file: artifacts are read from beneath these directories only");
        }
        let content = ContentStore::open(&layout.content_store())?
            .with_registries(registry_access(&cfg)?, trust)
            .with_file_roots(FileRoots::new(&cfg.file_roots))
            .with_max_artifact_bytes(cfg.max_artifact_bytes);

        let pooling = (cfg.pooling_instances > 0).then(|| Pooling {
            instances: cfg.pooling_instances,
            max_memory_mib: cfg.plugins.values().map(|p| p.memory_limit_mib).max().unwrap_or(1),
        });
        let runtimes = crate::plugin::RuntimeHome {
            root: layout.root().join("runtimes"),
            instance: store.instance_id()?,
            shim: crate::plugin::RuntimeHome::find_shim(),
        };
        let host = PluginHost::with_pooling(&layout.compile_cache(), runtimes, pooling)?;
        let mut plugins = PluginRegistry::default();
        for (name, pc) in &cfg.plugins {
            let mut pc = pc.clone();
            if let Some(reference) = &pc.reference {
                // Plugins are artifacts like any other: pulled, digest-checked
                // and kept in the content store (so a restart works offline
                // when the reference is pinned).
                let source = crate::spec::ArtifactSource::Wasm(reference.clone());
                let fetched = content
                    .fetch(&source, pc.pinned.as_deref(), Path::new("/"), &|_, _| {})
                    .await
                    .map_err(|e| DaemonError::PluginArtifact { name: name.clone(), source: e })?;
                tracing::info!(
                    plugin = name,
                    reference,
                    manifest = fetched.digest,
                    "plugin artifact pulled and verified"
                );
                store.record_artifact(reference, &fetched.digest, "wasm", fetched.size, true)?;
                pc.path = fetched.path;
            }
            let p = host.load(name, &pc).await?;
            tracing::info!(plugin = name, version = p.info.version, digest = p.digest, "plugin loaded");
            plugins.insert(p);
        }

        let socket_group = access.read_group.as_ref().or(access.admin_group.as_ref()).map(|g| g.gid);
        let listener = bind_socket(&cfg.socket, socket_group).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let plugins = Arc::new(plugins);
        let lifecycle = Lifecycle::new(Shared {
            store,
            content,
            runtimes: plugins.clone(),
            plugins,
            layout,
            rootfs: cfg.rootfs,
            events,
            health_interval: cfg.health_interval,
            log_max_bytes: cfg.log_max_bytes,
            http: reqwest::Client::new(),
            shutdown: shutdown_rx.clone(),
            environments: cfg.environments.clone(),
            locks: cfg.locks,
            run_retention: cfg.run_retention,
        });
        let resumed = lifecycle.recover()?;
        tracing::info!(deployments = resumed, "resumed deployments from the store");
        // A delete leaves blobs fetched within the GC's grace period (a fetch
        // in flight may be about to use them); the timer collects them later.
        let gc = lifecycle.clone();
        let mut gc_stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(gc.gc_every());
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => gc.collect_garbage().await,
                    _ = gc_stop.changed() => return,
                }
            }
        });

        // Every deployment against its runtime, now and then, so a report
        // is fresh without asking (`era report --last`).
        if !cfg.drift_interval.is_zero() {
            let drift = lifecycle.clone();
            let mut drift_stop = shutdown_rx.clone();
            let interval = cfg.drift_interval;
            tokio::spawn(async move {
                let mut every = tokio::time::interval(interval);
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            drift.check_all_drift().await;
                            if let Err(e) = drift.check_invariants().await {
                                tracing::warn!("invariant check: {e}");
                            }
                        }
                        _ = drift_stop.changed() => return,
                    }
                }
            });
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<DeploymentsServer<DeploymentsService>>().await;
        // Reflection in both versions: v1alpha is what Python's grpcio
        // reflection client and older grpcurl speak.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(era_api::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| DaemonError::Server(e.to_string()))?;
        let reflection = reflection().build_v1().map_err(|e| DaemonError::Server(e.to_string()))?;
        // Every era.v1 call is checked against the caller's role; health
        // and reflection stay open.
        let service = Authorized::new(DeploymentsServer::new(DeploymentsService::new(lifecycle.clone())), access);
        let mut stop = shutdown_rx;
        // grpc-core clients' `:authority` made acceptable (server/authority.rs).
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |c| {
            c.map(crate::server::authority::AuthorityFix::new)
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(socket = %cfg.socket.display(), "erad is ready");
        Ok(RunningDaemon { socket: cfg.socket, nodev_mount: mounted.then_some(work_dirs), lifecycle, shutdown, server })
    }
}

impl RunningDaemon {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Stops serving and stops the supervisors where they are. Workloads keep
    /// running; the next start resumes every deployment from the store.
    /// Open streams end with the shutdown; a call still running after
    /// [`SHUTDOWN_GRACE`] is cut off, so this returns within that bound.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!("gRPC server: {e}"),
            Ok(Err(e)) => tracing::warn!("gRPC server task: {e}"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!("calls still running after {SHUTDOWN_GRACE:?}; cutting them off");
                self.server.abort();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        // Revisions' rootfs mounts stay for the workloads (as containerd's
        // do), and with them the mount they are beneath.
        if let Some(dir) = &self.nodev_mount
            && crate::prepare::rootfs::mounts_beneath(dir).len() <= 1
            && let Err(e) = crate::prepare::unmount_nodev(dir)
        {
            tracing::warn!(path = %dir.display(), "unmounting the work dirs: {e}");
        }
    }
}

/// Reads the registries' credentials from the files the config names.
fn registry_access(cfg: &DaemonConfig) -> Result<std::collections::BTreeMap<String, RegistryAccess>, DaemonError> {
    let read = |host: &str, path: &Path| {
        std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|source| DaemonError::Secret {
            registry: host.to_string(),
            path: path.to_path_buf(),
            source,
        })
    };
    let mut out = std::collections::BTreeMap::new();
    for (host, r) in &cfg.registries {
        let auth = match (&r.username, &r.password_file, &r.token_file) {
            (Some(user), Some(pw), _) => Some(RegistryAuth::Basic(user.clone(), read(host, pw)?)),
            (_, _, Some(token)) => Some(RegistryAuth::Bearer(read(host, token)?)),
            _ => None,
        };
        out.insert(host.clone(), RegistryAccess { insecure: r.insecure, auth });
    }
    Ok(out)
}

/// The API's roles: `[api]` groups resolved to numbers.
fn api_access(cfg: &DaemonConfig) -> Result<ApiAccess, DaemonError> {
    let resolve = |key, g: &Option<crate::config::GroupRef>| g.as_ref().map(|g| resolve_group(key, g)).transpose();
    let access = ApiAccess {
        own_uid: rustix::process::geteuid().as_raw(),
        admin_group: resolve("api.admin_group", &cfg.api.admin_group)?,
        read_group: resolve("api.read_group", &cfg.api.read_group)?,
    };
    tracing::info!(
        admin_group = access.admin_group.as_ref().map(|g| g.label.as_str()),
        read_group = access.read_group.as_ref().map(|g| g.label.as_str()),
        "API roles: admin is root, erad's own user and admin_group; reader is read_group"
    );
    Ok(access)
}

/// Creates the data dir private, or makes an existing one private.
fn private_data_dir(root: &Path) -> Result<(), DaemonError> {
    let err = |source| DaemonError::DataDir { path: root.into(), source };
    std::fs::DirBuilder::new().recursive(true).mode(DATA_DIR_MODE).create(root).map_err(err)?;
    tighten(root, DATA_DIR_MODE).map_err(err)
}

/// Takes away from `path` what `mode` does not allow others (a file that is
/// not there is fine), and says so when it had to.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let was = meta.permissions().mode() & 0o7777;
    if was & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::warn!(path = %path.display(), "was mode {was:04o}, open to others; tightened to {mode:04o}");
    }
    Ok(())
}

/// Binds the socket: a stale file is replaced, a live daemon is refused. A
/// directory erad creates for it is `SOCKET_DIR_MODE`; one that exists is
/// left as the operator made it. Both belong to `group` when given.
async fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener, DaemonError> {
    let sock_err = |source| DaemonError::Socket { path: path.into(), source };
    let group = group.map(rustix::fs::Gid::from_raw);
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(SOCKET_DIR_MODE).create(parent).map_err(sock_err)?;
        // The umask may have taken the group's bits.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(SOCKET_DIR_MODE)).map_err(sock_err)?;
        if group.is_some() {
            rustix::fs::chown(parent, None, group).map_err(|e| sock_err(e.into()))?;
        }
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse { path: path.into() });
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(sock_err)?;
    if group.is_some() {
        rustix::fs::chown(path, None, group).map_err(|e| sock_err(e.into()))?;
    }
    Ok(listener)
}
