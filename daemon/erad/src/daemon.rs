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
use crate::artifact::{ContentStore, FetchError};
use crate::config::{ConfigError, DaemonConfig};
use crate::lifecycle::{Lifecycle, Shared};
use crate::plugin::{LoadError, PluginHost, PluginRegistry, Pooling};
use crate::prepare::Layout;
use crate::server::DeploymentsService;
use crate::store::{Store, StoreError};
use era_api::v1::deployments_server::DeploymentsServer;
use oci_client::secrets::RegistryAuth;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// The socket's mode: the owner and the `era` group may talk to erad.
const SOCKET_MODE: u32 = 0o660;

/// Why the daemon could not start; each names the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
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
    lifecycle: Lifecycle,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl DaemonBuilder {
    /// Opens the store, loads the plugins, resumes every deployment and starts
    /// serving. Returns once the socket accepts connections.
    pub async fn start(self) -> Result<RunningDaemon, DaemonError> {
        let cfg = self.config;
        let layout = Layout::new(&cfg.data_dir);
        std::fs::create_dir_all(layout.root())
            .map_err(|source| DaemonError::DataDir { path: layout.root().into(), source })?;
        let _ = std::fs::remove_dir_all(layout.scratch());
        let store = Store::open(&layout.database())?;
        let trust = std::sync::Arc::new(crate::trust::TrustPolicy::load(&cfg.trust)?);
        let content = ContentStore::open(&layout.content_store())?.with_registries(registry_access(&cfg)?, trust);

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
                store.record_artifact(reference, &fetched.digest, "wasm", fetched.size)?;
                pc.path = fetched.path;
            }
            let p = host.load(name, &pc).await?;
            tracing::info!(plugin = name, version = p.info.version, digest = p.digest, "plugin loaded");
            plugins.insert(p);
        }

        let listener = bind_socket(&cfg.socket).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let lifecycle = Lifecycle::new(Shared {
            store,
            content,
            plugins: Arc::new(plugins),
            layout,
            events,
            health_interval: cfg.health_interval,
            log_max_bytes: cfg.log_max_bytes,
            http: reqwest::Client::new(),
            shutdown: shutdown_rx.clone(),
        });
        let resumed = lifecycle.recover()?;
        tracing::info!(deployments = resumed, "resumed deployments from the store");

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<DeploymentsServer<DeploymentsService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(era_api::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| DaemonError::Server(e.to_string()))?;
        let service = DeploymentsServer::new(DeploymentsService::new(lifecycle.clone()));
        let mut stop = shutdown_rx;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(socket = %cfg.socket.display(), "erad is ready");
        Ok(RunningDaemon { socket: cfg.socket, lifecycle, shutdown, server })
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
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.server.await {
            Ok(Err(e)) => tracing::warn!("gRPC server: {e}"),
            Err(e) => tracing::warn!("gRPC server task: {e}"),
            Ok(Ok(())) => {}
        }
        let _ = std::fs::remove_file(&self.socket);
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

/// Binds the socket: a stale file is replaced, a live daemon is refused.
async fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let sock_err = |source| DaemonError::Socket { path: path.into(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(sock_err)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse { path: path.into() });
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(sock_err)?;
    Ok(listener)
}
