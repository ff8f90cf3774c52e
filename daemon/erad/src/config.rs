//! The daemon config: `/etc/era/erad.toml`, versioned, every key documented in
//! `examples/erad.toml`. Flags and `ERAD_*` environment variables override it.

pub use crate::plugin::PluginConfig;
use crate::plugin::{Deadlines, Grants};
use crate::spec::HumanDuration;
use crate::trust::{KeylessIdentity, TrustRuleConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config format this erad reads. Version 2 made each plugin's grants a
/// table with data (version 1 had a list and `allow_programs`).
pub const CONFIG_VERSION: u32 = 2;

/// The dev-mode config, embedded so `erad --dev DIR` needs no file.
/// `{dir}` and `{plugins}` are filled in at start.
pub const DEV_CONFIG: &str = include_str!("../../../examples/erad-dev.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {source_name}: {message}")]
    Parse { source_name: String, message: String },
    #[error("config {source_name}: {key}: {message}")]
    Invalid { source_name: String, key: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    registries: BTreeMap<String, RawRegistry>,
    #[serde(default)]
    trust: Vec<RawTrust>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    artifacts: RawArtifacts,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    locks: RawLocks,
    #[serde(default)]
    runs: RawRuns,
    #[serde(default)]
    drift: RawDrift,
}

/// `[drift]`: how often erad checks every deployment against its runtime.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrift {
    interval: Option<HumanDuration>,
}

/// How often drift is checked by default.
pub const DRIFT_INTERVAL: Duration = Duration::from_secs(600);

/// `[runs]`: how long the run history is kept.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuns {
    retention: Option<HumanDuration>,
}

/// How long runs are kept by default.
pub const RUN_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[environments.NAME]`: an environment's policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    protected: bool,
    plan_max_age: Option<HumanDuration>,
}

/// `[locks]`: how long a command waits for an environment's lock, and when
/// a lock nobody refreshes is stale.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocks {
    wait: Option<HumanDuration>,
    stale_after: Option<HumanDuration>,
}

/// An environment's policy (`[environments.NAME]`); an environment not
/// named there has the default one: not protected, plans of any age.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvironmentPolicy {
    /// Production-like: changed only through fresh plans (`era apply -f`
    /// refused), and a force-unlock needs the typed phrase.
    pub protected: bool,
    /// The oldest plan `era apply --plan` takes (default 15 minutes for a
    /// protected environment, no limit otherwise).
    pub plan_max_age: Option<Duration>,
}

/// Environment locks (`[locks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// How long a command waits for a held lock before it fails naming the
    /// holder (default 10 minutes).
    pub wait: Duration,
    /// A lock whose holder has not refreshed it for this long is stale and
    /// taken over (default 30 minutes).
    pub stale_after: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy { wait: Duration::from_secs(600), stale_after: Duration::from_secs(1800) }
    }
}

/// A protected environment's default plan age limit.
pub const PROTECTED_PLAN_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// `[api]`: who may use the socket API, by group.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    admin_group: Option<GroupRef>,
    read_group: Option<GroupRef>,
}

/// `[artifacts]`: where `file:` artifacts may be read from.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    #[serde(default)]
    file_roots: Vec<PathBuf>,
    #[serde(default)]
    rootfs: crate::prepare::rootfs::RootfsMode,
}

/// A group, by name or by number (`"era"`, `"4242"` or `4242`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Id(u32),
    Name(String),
}

/// Who holds which role on the API (see `server::auth`); root and erad's
/// own user are always admin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiConfig {
    /// Members may do everything: apply, stop, start, delete, rollback, pull.
    pub admin_group: Option<GroupRef>,
    /// Members may read: get, list, history, watch, logs, plugins, images.
    pub read_group: Option<GroupRef>,
}

/// `match` takes one pattern or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(rename = "match")]
    patterns: OneOrMany,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    keys: Vec<PathBuf>,
    #[serde(default)]
    keyless: Vec<RawKeyless>,
    trusted_root: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    identity: String,
    issuer: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    insecure: bool,
    username: Option<String>,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

/// How erad reaches one registry. Secrets stay in files the config names,
/// read at start; they are never logged or stored.
#[derive(Clone, PartialEq, Default)]
pub struct RegistryConfig {
    /// Plain HTTP to a registry that is not on a loopback address.
    pub insecure: bool,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("token_file", &self.token_file)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    health_interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_limit_mib: Option<u64>,
    log_max_mib: Option<u64>,
    max_artifact_bytes: Option<u64>,
    pooling_instances: Option<u32>,
    #[serde(default)]
    deadlines: RawDeadlines,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadlines {
    info: Option<HumanDuration>,
    validate: Option<HumanDuration>,
    install: Option<HumanDuration>,
    start: Option<HumanDuration>,
    status: Option<HumanDuration>,
    stop: Option<HumanDuration>,
    delete: Option<HumanDuration>,
    exec: Option<HumanDuration>,
}

impl RawDeadlines {
    fn over(&self, base: Deadlines) -> Deadlines {
        let pick = |v: Option<HumanDuration>, d: Duration| v.map(|h| h.0).unwrap_or(d);
        Deadlines {
            info: pick(self.info, base.info),
            validate: pick(self.validate, base.validate),
            install: pick(self.install, base.install),
            start: pick(self.start, base.start),
            status: pick(self.status, base.status),
            stop: pick(self.stop, base.stop),
            delete: pick(self.delete, base.delete),
            exec: pick(self.exec, base.exec),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Option<PathBuf>,
    reference: Option<String>,
    sha256: Option<String>,
    #[serde(default)]
    grants: Grants,
    memory_limit_mib: Option<u64>,
    #[serde(default)]
    deadlines: RawDeadlines,
}

/// The daemon's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    /// How often a Running deployment's status is checked.
    pub health_interval: Duration,
    /// Plugin instance slots for wasmtime's pooling allocator; 0 allocates on demand.
    pub pooling_instances: u32,
    /// Size at which a workload's log is rotated.
    pub log_max_bytes: u64,
    /// The largest `file:` or `url:` artifact erad stores.
    pub max_artifact_bytes: u64,
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Per-registry access, keyed by `host[:port]`.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// The signature trust policy: ordered rules, the first match decides.
    pub trust: Vec<TrustRuleConfig>,
    /// The API's roles.
    pub api: ApiConfig,
    /// Directories `file:` artifacts may be read from (nothing outside them,
    /// no link out of them); empty: no `file:` artifacts at all.
    pub file_roots: Vec<PathBuf>,
    /// How a new image revision gets its root filesystem.
    pub rootfs: crate::prepare::rootfs::RootfsMode,
    /// Policy per environment, by name.
    pub environments: BTreeMap<String, EnvironmentPolicy>,
    pub locks: LockPolicy,
    /// How long a run stays in the history (`[runs] retention`, 30 days).
    pub run_retention: Duration,
    /// How often every deployment is checked against its runtime
    /// (`[drift] interval`, 10 minutes; 0 turns it off).
    pub drift_interval: Duration,
}

/// Default memory cap of a plugin instance.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;

impl DaemonConfig {
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        DaemonConfig::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded dev config with data and socket under `dir`, plugins from
    /// `plugin_dir`.
    pub fn dev(dir: &Path, plugin_dir: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = DEV_CONFIG
            .replace("{dir}", &dir.display().to_string())
            .replace("{plugins}", &plugin_dir.display().to_string());
        DaemonConfig::parse(&text, "embedded dev config", dir)
    }

    /// Parses a config; relative paths in it are taken from `base`.
    pub fn parse(text: &str, source_name: &str, base: &Path) -> Result<DaemonConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            source_name: source_name.into(),
            key: key.into(),
            message,
        };
        // Say what changed before the old format fails to parse.
        #[derive(Deserialize)]
        struct Version {
            version: Option<u32>,
        }
        if let Ok(Version { version: Some(1) }) = toml::from_str::<Version>(text) {
            return Err(invalid(
                "version",
                "this erad reads config version 2: each plugin's grants became a table with data (log = true, process = { programs = [...] }, oci = { runtimes = [...] }, lxc = { ... }) instead of a list and allow_programs; see examples/erad.toml".into(),
            ));
        }
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { source_name: source_name.into(), message: e.to_string() })?;
        if raw.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!("this erad reads config version {CONFIG_VERSION}, not {}", raw.version),
            ));
        }
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let memory = raw.limits.memory_limit_mib.unwrap_or(DEFAULT_MEMORY_LIMIT_MIB);
        let deadlines = raw.limits.deadlines.over(Deadlines::default());
        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            p.grants.check().map_err(|e| {
                invalid(&format!("plugins.{name}.grants.{}", e.key.trim_start_matches("grants.")), e.message)
            })?;
            let path = match (p.path, &p.reference) {
                (Some(path), None) => abs(path),
                (None, Some(_)) => PathBuf::new(),
                _ => {
                    return Err(invalid(
                        &format!("plugins.{name}"),
                        "give exactly one of path (a component file) or reference (an OCI artifact)".into(),
                    ));
                }
            };
            if let Some(d) = &p.sha256 {
                let hex = d.trim_start_matches("sha256:");
                if p.reference.is_none() || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        &format!("plugins.{name}.sha256"),
                        "pins a reference's manifest: 64 hex digits, with reference".into(),
                    ));
                }
            }
            let mib = p.memory_limit_mib.unwrap_or(memory);
            if mib == 0 {
                return Err(invalid(&format!("plugins.{name}.memory_limit_mib"), "must be at least 1".into()));
            }
            plugins.insert(
                name,
                PluginConfig {
                    path,
                    reference: p.reference,
                    pinned: p
                        .sha256
                        .map(|d| format!("sha256:{}", d.trim_start_matches("sha256:").to_ascii_lowercase())),
                    grants: {
                        let mut g = p.grants;
                        if let Some(h) = &mut g.http {
                            h.absolutize(abs);
                        }
                        g
                    },
                    memory_limit_mib: mib,
                    deadlines: p.deadlines.over(deadlines),
                },
            );
        }
        let mut registries = BTreeMap::new();
        for (host, r) in raw.registries {
            let key = |k: &str| format!("registries.{host:?}.{k}");
            if r.username.is_some() != r.password_file.is_some() {
                return Err(invalid(&key("username"), "basic auth needs both username and password_file".into()));
            }
            if r.token_file.is_some() && r.username.is_some() {
                return Err(invalid(&key("token_file"), "give either a token_file or username/password_file".into()));
            }
            registries.insert(
                host,
                RegistryConfig {
                    insecure: r.insecure,
                    username: r.username,
                    password_file: r.password_file.map(&abs),
                    token_file: r.token_file.map(&abs),
                },
            );
        }
        let mut trust = Vec::new();
        for (i, t) in raw.trust.into_iter().enumerate() {
            let key = |k: &str| format!("trust[{i}].{k}");
            let patterns = match t.patterns {
                OneOrMany::One(p) => vec![p],
                OneOrMany::Many(ps) => ps,
            };
            if patterns.is_empty() || patterns.iter().any(|p| p.trim().is_empty()) {
                return Err(invalid(
                    &key("match"),
                    "needs registry/repository patterns, like \"reg.example/team/**\"".into(),
                ));
            }
            let signed = !t.keys.is_empty() || !t.keyless.is_empty();
            if t.allow_unsigned && signed {
                return Err(invalid(
                    &key("allow_unsigned"),
                    "accepts anything, which would make the rule's keys and keyless signers meaningless: give one or the other".into(),
                ));
            }
            if !t.allow_unsigned && !signed {
                return Err(invalid(
                    &key("keys"),
                    "the rule names no key, no keyless signer, and not allow_unsigned = true: say what it requires"
                        .into(),
                ));
            }
            if t.keyless.is_empty() && t.trusted_root.is_some() {
                return Err(invalid(
                    &key("trusted_root"),
                    "is only used for keyless signers, and the rule has none".into(),
                ));
            }
            for (j, k) in t.keyless.iter().enumerate() {
                if k.identity.trim().is_empty() || k.issuer.trim().is_empty() {
                    return Err(invalid(&key(&format!("keyless[{j}]")), "needs both identity and issuer".into()));
                }
            }
            trust.push(TrustRuleConfig {
                patterns,
                allow_unsigned: t.allow_unsigned,
                keys: t.keys.into_iter().map(&abs).collect(),
                keyless: t
                    .keyless
                    .into_iter()
                    .map(|k| KeylessIdentity { identity: k.identity, issuer: k.issuer })
                    .collect(),
                trusted_root: t.trusted_root.map(&abs),
            });
        }
        let mut file_roots = Vec::new();
        for (i, root) in raw.artifacts.file_roots.into_iter().enumerate() {
            let key = format!("artifacts.file_roots[{i}]");
            if root.as_os_str().is_empty() {
                return Err(invalid(&key, "is empty: name a directory that holds artifacts".into()));
            }
            let root = crate::artifact::roots::normalize(&abs(root));
            if root == Path::new("/") {
                return Err(invalid(
                    &key,
                    "\"/\" would let a spec read any file erad can: name the directories that hold artifacts".into(),
                ));
            }
            file_roots.push(root);
        }
        for (key, group) in [("api.admin_group", &raw.api.admin_group), ("api.read_group", &raw.api.read_group)] {
            if matches!(group, Some(GroupRef::Name(n)) if n.trim().is_empty()) {
                return Err(invalid(key, "is empty: give a group name or number, or leave it out".into()));
            }
        }
        let d = raw.daemon;
        let mut environments = BTreeMap::new();
        for (name, e) in raw.environments {
            crate::spec::check_environment_name(&name).map_err(|m| invalid(&format!("environments.{name}"), m))?;
            let plan_max_age = e.plan_max_age.map(|h| h.0).or(e.protected.then_some(PROTECTED_PLAN_MAX_AGE));
            environments.insert(name, EnvironmentPolicy { protected: e.protected, plan_max_age });
        }
        let defaults = LockPolicy::default();
        let locks = LockPolicy {
            wait: raw.locks.wait.map(|h| h.0).unwrap_or(defaults.wait),
            stale_after: raw.locks.stale_after.map(|h| h.0).unwrap_or(defaults.stale_after),
        };
        if locks.stale_after.is_zero() {
            return Err(invalid("locks.stale_after", "must be more than 0".into()));
        }
        Ok(DaemonConfig {
            data_dir: abs(d.data_dir.unwrap_or_else(|| "/var/lib/era".into())),
            socket: abs(d.socket.unwrap_or_else(|| "/run/era/erad.sock".into())),
            log_format: d.log_format.unwrap_or(LogFormat::Text),
            log_level: d.log_level.unwrap_or_else(|| "info".into()),
            health_interval: d.health_interval.map(|h| h.0).unwrap_or(Duration::from_secs(5)),
            pooling_instances: raw.limits.pooling_instances.unwrap_or(0),
            log_max_bytes: raw.limits.log_max_mib.map(|m| m << 20).unwrap_or(crate::logs::DEFAULT_MAX_BYTES),
            max_artifact_bytes: raw.limits.max_artifact_bytes.unwrap_or(crate::artifact::DEFAULT_MAX_ARTIFACT_BYTES),
            plugins,
            registries,
            trust,
            api: ApiConfig { admin_group: raw.api.admin_group, read_group: raw.api.read_group },
            file_roots,
            rootfs: raw.artifacts.rootfs,
            environments,
            locks,
            run_retention: raw.runs.retention.map(|h| h.0).unwrap_or(RUN_RETENTION),
            drift_interval: raw.drift.interval.map(|h| h.0).unwrap_or(DRIFT_INTERVAL),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../examples/erad.toml");
        let c = DaemonConfig::parse(text, "examples/erad.toml", Path::new("/etc/era")).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/era"));
        assert!(c.plugins.contains_key("noop"));
        assert!(c.trust.is_empty(), "the example trusts nothing until the operator says so");
        assert_eq!(c.file_roots, [PathBuf::from("/srv/era/artifacts")]);
        assert_eq!(c.locks, LockPolicy::default());
        assert_eq!(c.run_retention, RUN_RETENTION);
        assert_eq!(c.drift_interval, DRIFT_INTERVAL);
        assert_eq!(
            c.environments["prod"],
            EnvironmentPolicy { protected: true, plan_max_age: Some(PROTECTED_PLAN_MAX_AGE) }
        );
    }

    #[test]
    fn environments_take_their_defaults_and_bad_names_are_refused() {
        let c = DaemonConfig::parse(
            "version = 2\n[environments.prod]\nprotected = true\n[environments.dev]\n[locks]\nwait = \"5s\"\n",
            "t",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.environments["prod"].plan_max_age, Some(PROTECTED_PLAN_MAX_AGE));
        assert_eq!(c.environments["dev"], EnvironmentPolicy::default());
        assert_eq!(c.locks, LockPolicy { wait: Duration::from_secs(5), ..LockPolicy::default() });
        let bad = DaemonConfig::parse("version = 2\n[environments.Prod]\n", "t", Path::new("/")).unwrap_err();
        assert!(bad.to_string().contains("environments.Prod"), "{bad}");
        let zero =
            DaemonConfig::parse("version = 2\n[locks]\nstale_after = \"0s\"\n", "t", Path::new("/")).unwrap_err();
        assert!(zero.to_string().contains("locks.stale_after"), "{zero}");
    }

    #[test]
    fn the_dev_config_uses_the_given_dirs() {
        let c = DaemonConfig::dev(Path::new("/tmp/x"), Path::new("/opt/p")).unwrap();
        assert_eq!(c.socket, Path::new("/tmp/x/erad.sock"));
        assert_eq!(c.plugins["noop"].path, Path::new("/opt/p/noop.wasm"));
        assert_eq!(c.plugins["noop"].memory_limit_mib, DEFAULT_MEMORY_LIMIT_MIB);
        assert!(c.trust[0].allow_unsigned && c.trust[0].patterns == ["**"]);
        assert_eq!(c.file_roots, [PathBuf::from("/tmp/x")], "file: artifacts from the dev dir");
        assert_eq!(c.api, ApiConfig::default(), "root and erad's own user only");
    }

    #[test]
    fn http_grant_files_are_taken_from_the_configs_directory() {
        let text = "version = 2\n[plugins.k]\npath = \"k.wasm\"\n[plugins.k.grants.http.endpoints.c]\nurl = \"https://k:6443\"\nca_file = \"ca.pem\"\ntoken_file = \"/abs/token\"\n";
        let c = DaemonConfig::parse(text, "t", Path::new("/etc/era")).unwrap();
        let e = &c.plugins["k"].grants.http.as_ref().unwrap().endpoints["c"];
        assert_eq!(e.ca_file.as_deref(), Some(Path::new("/etc/era/ca.pem")));
        assert_eq!(e.token_file.as_deref(), Some(Path::new("/abs/token")));
        let bad = text.replace("https://k:6443", "http://k:6443");
        let err = DaemonConfig::parse(&bad, "t", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("plugins.k.grants.http.endpoints.c.url"), "{err}");
    }

    #[test]
    fn registries_take_credentials_from_files() {
        let text = "version = 2\n[registries.\"reg.example:5000\"]\nusername = \"era\"\npassword_file = \"secrets/reg\"\n[registries.\"10.0.0.5:5000\"]\ninsecure = true\n";
        let c = DaemonConfig::parse(text, "t", Path::new("/etc/era")).unwrap();
        let r = &c.registries["reg.example:5000"];
        assert_eq!(r.password_file.as_deref(), Some(Path::new("/etc/era/secrets/reg")));
        assert!(c.registries["10.0.0.5:5000"].insecure);
        let half = "version = 2\n[registries.r]\nusername = \"era\"\n";
        let err = DaemonConfig::parse(half, "t", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("basic auth needs both"), "{err}");
    }

    #[test]
    fn trust_rules_say_what_they_require() {
        let text = "version = 2\n[[trust]]\nmatch = \"reg/signed/**\"\nkeys = [\"keys/a.pub\"]\n[[trust]]\nmatch = [\"reg/**\", \"127.0.0.1:5000/**\"]\nallow_unsigned = true\n";
        let c = DaemonConfig::parse(text, "t", Path::new("/etc/era")).unwrap();
        assert_eq!(c.trust.len(), 2);
        assert_eq!(c.trust[0].keys, [PathBuf::from("/etc/era/keys/a.pub")]);
        assert_eq!(c.trust[1].patterns.len(), 2);
        for (bad, says) in [
            ("match = \"**\"\n", "trust[0].keys"),
            ("match = \"**\"\nallow_unsigned = true\nkeys = [\"k.pub\"]\n", "trust[0].allow_unsigned"),
            ("match = \"**\"\ntrusted_root = \"r.json\"\nkeys = [\"k.pub\"]\n", "trust[0].trusted_root"),
            ("match = \"**\"\nkeyless = [{ identity = \"\", issuer = \"https://i\" }]\n", "trust[0].keyless[0]"),
            ("match = []\nallow_unsigned = true\n", "trust[0].match"),
        ] {
            let err = DaemonConfig::parse(&format!("version = 2\n[[trust]]\n{bad}"), "t", Path::new("/")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn api_groups_and_file_roots_are_read_and_checked() {
        let text = "version = 2\n[api]\nadmin_group = \"era-admin\"\nread_group = 4242\n[artifacts]\nfile_roots = [\"artifacts\", \"/srv/era/../era-files/\"]\n";
        let c = DaemonConfig::parse(text, "t", Path::new("/etc/era")).unwrap();
        assert_eq!(c.api.admin_group, Some(GroupRef::Name("era-admin".into())));
        assert_eq!(c.api.read_group, Some(GroupRef::Id(4242)));
        assert_eq!(c.file_roots, [PathBuf::from("/etc/era/artifacts"), PathBuf::from("/srv/era-files")]);
        let none = DaemonConfig::parse("version = 2", "t", Path::new("/")).unwrap();
        assert!(none.file_roots.is_empty() && none.api == ApiConfig::default());
        for (bad, says) in [
            ("[artifacts]\nfile_roots = [\"/\"]", "artifacts.file_roots[0]"),
            ("[artifacts]\nfile_roots = [\"/srv\", \"/tmp/..\"]", "artifacts.file_roots[1]"),
            ("[api]\nread_group = \"\"", "api.read_group"),
            ("[api]\nadmin_grup = \"x\"", "admin_grup"),
        ] {
            let err = DaemonConfig::parse(&format!("version = 2\n{bad}"), "t", Path::new("/")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = DaemonConfig::parse("version = 3", "t", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
        let err =
            DaemonConfig::parse("version = 1\n[plugins.c]\npath = \"c.wasm\"\ngrants = [\"log\"]", "t", Path::new("/"))
                .unwrap_err();
        assert!(err.to_string().contains("grants became a table"), "{err}");
        for (grants, says) in [
            ("process = { programs = [] }", "plugins.c.grants.process.programs"),
            ("process = { programs = [\"runc\"] }", "plugins.c.grants.process.programs"),
            ("oci = { runtimes = [\"sh\"] }", "plugins.c.grants.oci.runtimes"),
            ("oci = { runtimes = [\"runc\"], capabilities = [\"CAP_NOPE\"] }", "plugins.c.grants.oci.capabilities"),
            ("lxc = { templates = [\"/tmp/evil\"] }", "plugins.c.grants.lxc.templates"),
            ("network = true", "network"),
        ] {
            let text = format!("version = 2\n[plugins.c]\npath = \"c.wasm\"\ngrants = {{ {grants} }}");
            let err = DaemonConfig::parse(&text, "t", Path::new("/")).unwrap_err();
            assert!(err.to_string().contains(says), "{grants}: {err}");
        }
        let err = DaemonConfig::parse("version = 2\n[daemon]\nsockett = \"x\"", "t", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("sockett"), "{err}");
    }
}
