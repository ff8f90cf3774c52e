//! The `lxc` capability: LXC containers, which erad runs itself with the
//! `lxc-*` tools. Granted by `lxc = { templates = [...], bridges = [...], ... }`.
//!
//! One container per revision, named by the host
//! (`era-<store id>-<deployment>-<revision>`), in erad's own lxcpath
//! (`DATA/runtimes/lxc`): a plugin cannot name another deployment's
//! container, nor pick the lxcpath. The plugin gives the config as entries;
//! the host checks each one ([`check_entry`]: an allowlist of keys, mounts
//! only from the work dir, the volumes and listed host files, bridges and
//! templates only from the grant) and writes the config itself, adding its
//! own lines last: the root filesystem (the image's in the work dir, or a
//! template's), the console log (`logs/output.log`, opened beneath the work
//! dir before every start), the capabilities the grant allows (everything
//! else dropped), the default device rules and LXC's default seccomp profile.
//! The config lives outside the plugin's reach, so what LXC reads is what
//! was checked.

use super::policy::{self, ContainerPolicy, HostNamespace, Ran, RunError, create_private, write_atomic};
use super::{CallScope, GrantError, RuntimeHome};
use crate::plugin::HostState;
use crate::plugin::bindings::era::plugin::lxc::{ContainerState, Host};
use crate::plugin::bindings::era::plugin::types::{ExecOutput, RuntimeError};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A template may download and unpack a distribution.
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(600);
/// LXC's default seccomp profile, used when installed.
const SECCOMP: &str = "/usr/share/lxc/config/common.seccomp";
/// The plugin's entries as `configure` took them, in the container's dir.
const ENTRIES: &str = "entries.json";

/// `lxc = { ... }`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LxcGrant {
    /// LXC templates (`lxc-create -t NAME`) a plugin may use; default none.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Whether a plugin may pass arguments to a template (they run as root and
    /// many take paths); default false.
    #[serde(default)]
    pub template_args: bool,
    /// Host bridges a container's veth may join; default none.
    #[serde(default)]
    pub bridges: Vec<String>,
    /// Capabilities a container keeps; default Docker's set.
    pub capabilities: Option<Vec<String>>,
    /// `network` lets a container use the host's network (`lxc.net.0.type = none`).
    #[serde(default)]
    pub host_namespaces: Vec<HostNamespace>,
    /// Host files a container may bind-mount; default `/etc/resolv.conf`, `/etc/hosts`.
    pub host_files: Option<Vec<PathBuf>>,
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

impl LxcGrant {
    pub fn check(&self) -> Result<(), GrantError> {
        if let Some(t) = self.templates.iter().find(|t| !plain_name(t)) {
            return Err(GrantError::new(
                "lxc.templates",
                format!("{t:?} is not a template name (as lxc-create -t takes it)"),
            ));
        }
        if let Some(b) = self.bridges.iter().find(|b| !plain_name(b) || b.len() > 15) {
            return Err(GrantError::new("lxc.bridges", format!("{b:?} is not an interface name")));
        }
        if let Some(ns) = self.host_namespaces.iter().find(|n| **n != HostNamespace::Network) {
            return Err(GrantError::new(
                "lxc.host_namespaces",
                format!("{:?}: only \"network\" applies to LXC containers here", ns.as_str()),
            ));
        }
        self.policy()?;
        Ok(())
    }

    pub fn policy(&self) -> Result<ContainerPolicy, GrantError> {
        ContainerPolicy::from_grant(
            "grants.lxc",
            self.capabilities.as_deref(),
            &self.host_namespaces,
            self.host_files.as_deref(),
        )
    }
}

/// Keys a plugin may set as they are.
const PLAIN_KEYS: &[&str] = &[
    "lxc.uts.name",
    "lxc.arch",
    "lxc.autodev",
    "lxc.pty.max",
    "lxc.tty.max",
    "lxc.tty.dir",
    "lxc.environment",
    "lxc.init.cwd",
    "lxc.init.uid",
    "lxc.init.gid",
    "lxc.signal.halt",
    "lxc.signal.reboot",
    "lxc.signal.stop",
    "lxc.no_new_privs",
    "lxc.log.level",
];
/// `lxc.prlimit.NAME` a plugin may set, by name (LXC also takes numbers).
const PRLIMITS: &[&str] =
    &["as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nofile", "nproc", "sigpending", "stack"];
/// Resource limits in the container's own cgroup.
const CGROUP_PREFIXES: &[&str] = &[
    "lxc.cgroup.memory.",
    "lxc.cgroup2.memory.",
    "lxc.cgroup.cpu.",
    "lxc.cgroup2.cpu.",
    "lxc.cgroup.cpuset.",
    "lxc.cgroup2.cpuset.",
    "lxc.cgroup.pids.",
    "lxc.cgroup2.pids.",
    "lxc.prlimit.",
];
const NET_KEYS: &[&str] =
    &["type", "link", "flags", "name", "hwaddr", "mtu", "ipv4.address", "ipv4.gateway", "ipv6.address", "ipv6.gateway"];
const MOUNT_AUTO: &[&str] =
    &["proc:mixed", "sys:mixed", "sys:ro", "cgroup:mixed", "cgroup:ro", "cgroup-full:ro", "cgroup-full:mixed"];

/// Checks one config entry against the policy. Errors name the key.
pub fn check_entry(
    key: &str,
    value: &str,
    scope: &CallScope,
    grant: &LxcGrant,
    p: &ContainerPolicy,
) -> Result<(), String> {
    let bad = |why: String| Err(format!("{key}: {why}"));
    // One line, and no whitespace but spaces and tabs: LXC splits on those
    // alone, so a vertical tab would read as one field to LXC and two here.
    if value.chars().any(|c| (c.is_control() || c.is_whitespace()) && c != ' ' && c != '\t') {
        return bad("a value must be one line, with no control characters and no whitespace but spaces and tabs".into());
    }
    if !key.starts_with("lxc.")
        || key.contains("..")
        || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
    {
        return bad("not an LXC config key erad's policy allows".into());
    }
    if let Some(limit) = key.strip_prefix("lxc.prlimit.")
        && !PRLIMITS.contains(&limit)
    {
        return bad(format!(
            "not a limit a plugin may set (allowed: {}; rtprio and nice would raise the workload's priority over its neighbours)",
            PRLIMITS.join(", ")
        ));
    }
    // LXC strips matching quotes around a value: what it reads would not be
    // what was checked.
    if value.starts_with(['"', '\'']) || value.ends_with(['"', '\'']) {
        return bad("a value may not start or end with a quote".into());
    }
    if PLAIN_KEYS.contains(&key) || CGROUP_PREFIXES.iter().any(|p| key.starts_with(p) && key.len() > p.len()) {
        return Ok(());
    }
    if key == "lxc.mount.auto" {
        return match value.split_whitespace().find(|v| !MOUNT_AUTO.contains(v)) {
            Some(v) => bad(format!("{v:?} is not allowed (allowed: {})", MOUNT_AUTO.join(" "))),
            None => Ok(()),
        };
    }
    if key == "lxc.mount.entry" {
        return check_mount_entry(value, scope, p).or_else(bad);
    }
    if let Some(rest) = key.strip_prefix("lxc.net.")
        && let Some((n, field)) = rest.split_once('.')
        && n.bytes().all(|b| b.is_ascii_digit())
        && NET_KEYS.contains(&field)
    {
        return match (field, value.trim()) {
            ("type", "empty" | "veth") => Ok(()),
            ("type", "none") => p.require_namespace(HostNamespace::Network, false).map_err(|e| format!("{key}: {e}")),
            ("type", t) => bad(format!("network type {t:?} is not allowed (empty, veth, or none when granted)")),
            ("link", b) if grant.bridges.iter().any(|g| g == b) => Ok(()),
            ("link", b) => bad(format!("bridge {b:?} is not one of grants.lxc.bridges ({})", grant.bridges.join(", "))),
            _ => Ok(()),
        };
    }
    bad("not an LXC config key erad's policy allows (hooks, includes, devices, capabilities, namespaces, security profiles and paths are erad's)".into())
}

fn check_mount_entry(value: &str, scope: &CallScope, p: &ContainerPolicy) -> Result<(), String> {
    // Split as LXC does (getmntent): on spaces and tabs only.
    let fields: Vec<&str> = value.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
    let shape = "a mount entry is SOURCE TARGET TYPE OPTIONS [DUMP PASS], without escapes";
    let [source, dest, kind, options, ref rest @ ..] = fields[..] else {
        return Err(shape.into());
    };
    if !(rest.is_empty() || rest.len() == 2 && rest.iter().all(|n| n.bytes().all(|b| b.is_ascii_digit())))
        || source.contains('\\')
        || dest.contains('\\')
    {
        return Err(shape.into());
    }
    let dest_path = Path::new(dest);
    if dest_path.is_absolute() || dest_path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("target {dest:?} must be relative to the container's root, without '..'"));
    }
    let options: Vec<&str> = options.split(',').collect();
    policy::check_mount_options(&options)?;
    if options.iter().any(|o| *o == "bind" || *o == "rbind") {
        return p.mount_source(scope, source, &options);
    }
    match kind {
        "tmpfs" | "mqueue" | "devpts" => Ok(()),
        other => Err(format!(
            "{other:?} mounts are not allowed (bind, tmpfs, mqueue, devpts; proc, sys and cgroup through lxc.mount.auto)"
        )),
    }
}

/// The device rules of LXC's own `common.conf`: nothing but the usual
/// character devices; `mknod` of others is allowed, using them is not.
const DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 10:229 rwm",
];

/// The host's lines, last in every config so nothing before overrides them.
fn host_lines(rootfs: &Path, work_dir: &Path, dir: &Path, p: &ContainerPolicy) -> Vec<String> {
    let mut lines = vec![
        "# erad: the lines below are the host's policy".to_string(),
        format!("lxc.rootfs.path = dir:{}", rootfs.display()),
        format!("lxc.console.logfile = {}", work_dir.join(crate::logs::OUTPUT).display()),
        format!("lxc.log.file = {}", dir.join("lxc.log").display()),
    ];
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(policy::ALL_CAPABILITIES.len() - 1);
    let drop: Vec<String> = policy::ALL_CAPABILITIES
        .iter()
        .take(last + 1)
        .filter(|c| !p.capabilities.contains(*c))
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    if !drop.is_empty() {
        lines.push(format!("lxc.cap.drop = {}", drop.join(" ")));
    }
    for v in ["lxc.cgroup", "lxc.cgroup2"] {
        lines.push(format!("{v}.devices.deny = a"));
        lines.extend(DEVICE_RULES.iter().map(|r| format!("{v}.devices.allow = {r}")));
    }
    if Path::new(SECCOMP).is_file() {
        lines.push(format!("lxc.seccomp.profile = {SECCOMP}"));
    }
    lines
}

/// One call's view of the container of its revision.
struct Lxc<'a> {
    scope: &'a CallScope,
    grant: &'a LxcGrant,
    lxcpath: PathBuf,
    name: String,
}

impl<'a> Lxc<'a> {
    fn new(state: &'a HostState, what: &str) -> Result<Lxc<'a>, RuntimeError> {
        let grant =
            state.grants.lxc.as_ref().ok_or_else(|| RuntimeError::NotAllowed("this plugin has no lxc grant".into()))?;
        let rev = state.scope.revision(what).map_err(RuntimeError::NotAllowed)?;
        let home: &RuntimeHome = &state.runtimes;
        Ok(Lxc {
            scope: &state.scope,
            grant,
            lxcpath: home.root.join("lxc"),
            name: home.container_id(&state.scope.deployment, rev),
        })
    }

    fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    fn policy(&self) -> Result<ContainerPolicy, RuntimeError> {
        self.grant.policy().map_err(|e| RuntimeError::Failed(e.to_string()))
    }

    /// Checks the plugin's entries against the policy, as they stand now.
    fn check_entries(&self, entries: &[(String, String)], policy: &ContainerPolicy) -> Result<(), RuntimeError> {
        for (k, v) in entries {
            check_entry(k.trim(), v.trim(), self.scope, self.grant, policy).map_err(RuntimeError::Policy)?;
        }
        Ok(())
    }

    async fn tool(&self, tool: &str, extra: &[&str], timeout: Duration) -> Result<Ran, RunError> {
        let program = super::find_program(tool)
            .ok_or_else(|| RunError::Failed(format!("{tool} is not installed on this host")))?;
        let mut args: Vec<OsString> =
            vec!["-P".into(), self.lxcpath.clone().into(), "-n".into(), self.name.clone().into()];
        args.extend(extra.iter().map(OsString::from));
        create_private(&self.lxcpath).map_err(|e| RunError::Failed(format!("{e:?}")))?;
        policy::run_host(&program, &args, &self.lxcpath, None, timeout).await
    }

    /// The root filesystem: a template's, or the image's in the work dir
    /// (checked to be reached through no link, every time).
    fn rootfs(&self) -> Result<PathBuf, RuntimeError> {
        if self.dir().join("config.template").is_file() {
            return Ok(self.dir().join("rootfs"));
        }
        crate::beneath::check_dir(&self.scope.work_dir, Path::new("rootfs"))
            .map_err(|e| RuntimeError::Policy(format!("rootfs in the work dir: {e}")))?;
        Ok(self.scope.work_dir.join("rootfs"))
    }

    async fn state(&self) -> Result<Option<ContainerState>, RuntimeError> {
        if !self.dir().join("config").is_file() {
            return Ok(None);
        }
        let ran = self.tool("lxc-info", &["-s", "-p"], COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            let err = ran.stderr_text();
            if err.contains("doesn't exist") || err.contains("does not exist") {
                return Ok(None);
            }
            return Err(RuntimeError::Failed(format!("lxc-info {}: {err}", self.name)));
        }
        let out = String::from_utf8_lossy(&ran.stdout).to_string();
        let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
        Ok(Some(ContainerState {
            name: self.name.clone(),
            status: field("State:").unwrap_or_else(|| "UNKNOWN".into()),
            pid: field("PID:").and_then(|p| p.parse().ok()),
        }))
    }

    async fn wait_stopped(&self, within: Duration) -> Result<bool, RuntimeError> {
        let until = std::time::Instant::now() + within;
        loop {
            if self.state().await?.is_none_or(|s| s.status == "STOPPED") {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Host for HostState {
    async fn version(&mut self) -> Result<String, RuntimeError> {
        if self.grants.lxc.is_none() {
            return Err(RuntimeError::NotAllowed("this plugin has no lxc grant".into()));
        }
        let program = super::find_program("lxc-start")
            .ok_or_else(|| RuntimeError::Failed("lxc-start is not installed on this host".into()))?;
        let ran =
            policy::run_host(&program, &["--version".into()], &self.scope.work_dir, None, COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            return Err(RuntimeError::Failed(format!("lxc-start --version: {}", ran.stderr_text())));
        }
        Ok(String::from_utf8_lossy(&ran.stdout).trim().to_string())
    }

    async fn create_from_template(&mut self, template: String, args: Vec<String>) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "creating a container")?;
        if !lxc.grant.templates.contains(&template) {
            return Err(RuntimeError::NotAllowed(format!(
                "template {template:?} is not one of grants.lxc.templates ({})",
                lxc.grant.templates.join(", ")
            )));
        }
        if !args.is_empty() && !lxc.grant.template_args {
            return Err(RuntimeError::NotAllowed(
                "template arguments are not allowed (grants.lxc.template_args); templates run as root and take paths"
                    .into(),
            ));
        }
        if lxc.dir().join("config.template").is_file() {
            return Ok(());
        }
        // A half-made container from an interrupted create goes first.
        let _ = std::fs::remove_dir_all(lxc.dir());
        let mut extra: Vec<&str> = vec!["-t", &template];
        if !args.is_empty() {
            extra.push("--");
            extra.extend(args.iter().map(String::as_str));
        }
        let ran = lxc.tool("lxc-create", &extra, TEMPLATE_TIMEOUT).await?;
        if !ran.ok() {
            return Err(RuntimeError::Failed(format!("lxc-create -t {template}: {}", ran.stderr_text())));
        }
        std::fs::rename(lxc.dir().join("config"), lxc.dir().join("config.template"))
            .map_err(|e| RuntimeError::Failed(format!("keeping the template's config: {e}")))
    }

    async fn configure(&mut self, entries: Vec<(String, String)>) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "configuring a container")?;
        let policy = lxc.policy()?;
        lxc.check_entries(&entries, &policy)?;
        let rootfs = lxc.rootfs()?;
        create_private(&lxc.dir())?;
        // Kept to be checked again before every start: a mount source that
        // was a directory now may be a link by then.
        let kept = serde_json::to_vec(&entries).map_err(|e| RuntimeError::Failed(e.to_string()))?;
        write_atomic(&lxc.dir().join(ENTRIES), &kept)?;
        let mut text = std::fs::read_to_string(lxc.dir().join("config.template")).unwrap_or_default();
        text.push_str(&format!(
            "# erad: {} revision {:?}, checked against grants.lxc\n",
            lxc.scope.deployment, lxc.scope.revision
        ));
        for (k, v) in &entries {
            text.push_str(&format!("{} = {}\n", k.trim(), v.trim()));
        }
        for line in host_lines(&rootfs, &lxc.scope.work_dir, &lxc.dir(), &policy) {
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(&lxc.dir().join("config"), text.as_bytes())
    }

    async fn start(&mut self, init: Vec<String>) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "starting a container")?;
        // Not configured: nothing to start. Running already: lxc-start
        // refuses, and the state says so below (one lxc-info less per
        // start than asking first).
        if !lxc.dir().join("config").is_file() {
            return Err(RuntimeError::NotFound(format!("container {} is not configured", lxc.name)));
        }
        // What LXC will open as root: checked now, while the plugin waits.
        lxc.rootfs()?;
        let kept = std::fs::read(lxc.dir().join(ENTRIES))
            .map_err(|e| RuntimeError::Failed(format!("{ENTRIES} of {}: {e}", lxc.name)))?;
        let entries: Vec<(String, String)> = serde_json::from_slice(&kept)
            .map_err(|e| RuntimeError::Failed(format!("{ENTRIES} of {}: {e}", lxc.name)))?;
        lxc.check_entries(&entries, &lxc.policy()?)?;
        drop(policy::open_log(&lxc.scope.work_dir)?);
        let mut extra = vec!["-d"];
        if !init.is_empty() {
            extra.push("--");
            extra.extend(init.iter().map(String::as_str));
        }
        let ran = lxc.tool("lxc-start", &extra, COMMAND_TIMEOUT).await?;
        if !ran.ok() && lxc.state().await?.is_some_and(|s| s.status == "RUNNING") {
            return Ok(());
        }
        if !ran.ok() {
            let log = std::fs::read_to_string(lxc.dir().join("lxc.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_string();
            return Err(RuntimeError::Failed(format!("lxc-start {}: {} {last}", lxc.name, ran.stderr_text())));
        }
        Ok(())
    }

    async fn state(&mut self) -> Result<Option<ContainerState>, RuntimeError> {
        Lxc::new(self, "looking at a container")?.state().await
    }

    async fn stop(&mut self, timeout_seconds: u32) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "stopping a container")?;
        match lxc.state().await? {
            None => return Ok(()),
            Some(s) if s.status == "STOPPED" => return Ok(()),
            _ => {}
        }
        let t = timeout_seconds.clamp(1, 3600).to_string();
        let limit = Duration::from_secs(u64::from(timeout_seconds.clamp(1, 3600))) + COMMAND_TIMEOUT;
        lxc.tool("lxc-stop", &["-t", &t], limit).await?;
        Ok(())
    }

    async fn kill(&mut self) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "killing a container")?;
        if lxc.state().await?.is_some_and(|s| s.status != "STOPPED") {
            lxc.tool("lxc-stop", &["-k"], COMMAND_TIMEOUT).await?;
        }
        Ok(())
    }

    async fn destroy(&mut self) -> Result<(), RuntimeError> {
        let lxc = Lxc::new(self, "removing a container")?;
        if lxc.state().await?.is_some_and(|s| s.status != "STOPPED") {
            lxc.tool("lxc-stop", &["-k"], COMMAND_TIMEOUT).await?;
            if !lxc.wait_stopped(Duration::from_secs(10)).await? {
                return Err(RuntimeError::Failed(format!("{} still runs after lxc-stop -k", lxc.name)));
            }
        }
        // Not lxc-destroy: it removes the rootfs the config names, which for
        // an image is in the work dir, where the plugin could have swapped it
        // for a link. The container's own dir is erad's; removing it does not
        // follow links.
        match std::fs::remove_dir_all(lxc.dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::Failed(format!("{}: {e}", lxc.dir().display())))
            }
            _ => Ok(()),
        }
    }

    async fn attach(&mut self, args: Vec<String>, timeout_ms: u32) -> Result<ExecOutput, RuntimeError> {
        let lxc = Lxc::new(self, "running a command in a container")?;
        if args.is_empty() {
            return Err(RuntimeError::Policy("attach needs a command".into()));
        }
        let mut extra = vec!["--clear-env", "--"];
        extra.extend(args.iter().map(String::as_str));
        policy::exec_output(lxc.tool("lxc-attach", &extra, policy::timeout_or(timeout_ms, COMMAND_TIMEOUT)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, CallScope, LxcGrant, ContainerPolicy) {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(work.path().join("rootfs/data")).unwrap();
        let scope = CallScope {
            deployment: "web".into(),
            revision: Some(1),
            work_dir: work.path().to_path_buf(),
            volumes: vec![],
        };
        let grant = LxcGrant { bridges: vec!["erabr0".into()], ..Default::default() };
        let policy = grant.policy().unwrap();
        (work, scope, grant, policy)
    }

    #[test]
    fn what_the_shipped_plugin_writes_passes() {
        let (work, scope, grant, p) = setup();
        let w = work.path().display();
        for (k, v) in [
            ("lxc.uts.name", "web".to_string()),
            ("lxc.autodev", "1".into()),
            ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed".into()),
            ("lxc.environment", "A=b c".into()),
            ("lxc.cgroup2.memory.max", "1048576".into()),
            ("lxc.net.0.type", "veth".into()),
            ("lxc.net.0.link", "erabr0".into()),
            ("lxc.mount.entry", format!("{w}/rootfs/data data none bind,create=dir 0 0")),
            ("lxc.mount.entry", "/etc/resolv.conf etc/resolv.conf none bind,ro,create=file 0 0".into()),
        ] {
            check_entry(k, &v, &scope, &grant, &p).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }

    #[test]
    fn escapes_through_the_config_are_refused_naming_the_key() {
        let (_work, scope, grant, p) = setup();
        for (k, v) in [
            ("lxc.hook.pre-start", "/bin/sh -c 'touch /pwned'"),
            ("lxc.hook.mount", "/tmp/x"),
            ("lxc.include", "/etc/lxc/evil.conf"),
            ("lxc.mount.entry", "/ host none bind 0 0"),
            ("lxc.mount.entry", "/etc etc none rbind,ro 0 0"),
            ("lxc.mount.entry", "proc /proc2 proc defaults 0 0"),
            ("lxc.mount.entry", "/dev/vda disk ext4 defaults 0 0"),
            ("lxc.mount.entry", "tmpfs ../../escape tmpfs defaults 0 0"),
            ("lxc.mount.entry", "tmpfs /abs tmpfs defaults 0 0"),
            ("lxc.mount.auto", "proc:rw sys:rw"),
            ("lxc.mount.fstab", "/etc/fstab"),
            ("lxc.cgroup.devices.allow", "b 8:* rwm"),
            ("lxc.cgroup2.devices.allow", "a"),
            ("lxc.cap.keep", "sys_admin"),
            ("lxc.cap.drop", ""),
            ("lxc.apparmor.profile", "unconfined"),
            ("lxc.seccomp.profile", "/dev/null"),
            ("lxc.rootfs.path", "dir:/"),
            ("lxc.console.logfile", "/etc/shadow"),
            ("lxc.log.file", "/etc/shadow"),
            ("lxc.net.0.type", "phys"),
            ("lxc.net.0.type", "none"),
            ("lxc.net.0.link", "docker0"),
            ("lxc.net.0.script.up", "/bin/sh"),
            ("lxc.namespace.share.net", "1"),
            ("lxc.sysctl.kernel.core_pattern", "|/tmp/x"),
            ("lxc.proc.oom_score_adj", "-1000"),
            ("lxc.cgroup.memory.limit_in_bytes", "1\nlxc.hook.start = /bin/sh"),
            ("lxc.idmap", "u 0 0 1"),
            ("lxc.cgroup2.memory..", "x"),
            // Found by review: LXC splits on spaces and tabs only.
            ("lxc.mount.entry", "/ host\x0btmpfs\x0brw none rbind,create=dir"),
            ("lxc.mount.entry", "/ host\u{a0}tmpfs none rbind 0 0"),
            ("lxc.mount.entry", "tmpfs t tmpfs defaults x y"),
            ("lxc.mount.entry", "/etc/hosts etc/hosts none bind,create=file 0 0"),
            ("lxc.mount.entry", "/etc/hosts etc/hosts none bind,ro,rw,create=file 0 0"),
            ("lxc.prlimit.rtprio", "99"),
            ("lxc.prlimit.nice", "40"),
            // Found by the second review: LXC matches options by prefix,
            // strips quotes, and takes limits by number.
            ("lxc.mount.entry", "/ host tmpfs rbindx,create=dir 0 0"),
            ("lxc.mount.entry", "/ host tmpfs rbindoptional,create=dir 0 0"),
            ("lxc.mount.entry", "tmpfs t tmpfs sharedx 0 0"),
            ("lxc.mount.entry", "/etc/hosts etc/hosts none bind,ro,rwx,create=file 0 0"),
            ("lxc.mount.entry", "\"/ host tmpfs rbind\""),
            ("lxc.prlimit.14", "99"),
        ] {
            let err = check_entry(k, v, &scope, &grant, &p).expect_err(k);
            assert!(err.starts_with(k), "{k}: {err}");
        }
    }

    #[test]
    fn the_host_drops_every_capability_the_grant_does_not_keep() {
        let (work, _, grant, p) = setup();
        let lines = host_lines(&work.path().join("rootfs"), work.path(), Path::new("/x"), &p);
        let drop = lines.iter().find(|l| l.starts_with("lxc.cap.drop")).unwrap();
        assert!(drop.contains(" sys_admin") && drop.contains(" sys_module") && !drop.contains(" chown"), "{drop}");
        assert!(lines.iter().any(|l| l == "lxc.cgroup2.devices.deny = a"));
        let _ = grant;
    }
}
