//! What the runtime capabilities (`oci`, `lxc`) share: the operator's
//! container policy (capabilities, host namespaces, host files), the rule for
//! mount sources, and running a runtime's command on the host.

use super::{CallScope, GrantError};
use crate::plugin::bindings::era::plugin::types::{ExecOutput, RuntimeError};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Linux capabilities by number (`capability(7)`), up to `CAP_CHECKPOINT_RESTORE` (40).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default set: what a container gets unless the operator grants
/// another set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Host files a container may bind-mount read-only unless the operator lists others.
pub const DEFAULT_HOST_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

/// `CAP_SYS_ADMIN`, `sys_admin` and `SYS_ADMIN` all name the same capability.
pub fn capability(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    ALL_CAPABILITIES.iter().copied().find(|c| *c == full)
}

/// A host namespace a container may stay in, when granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNamespace {
    Network,
    Pid,
    Ipc,
    Uts,
}

impl HostNamespace {
    pub fn as_str(self) -> &'static str {
        match self {
            HostNamespace::Network => "network",
            HostNamespace::Pid => "pid",
            HostNamespace::Ipc => "ipc",
            HostNamespace::Uts => "uts",
        }
    }
}

/// The operator's rules for what a container may have, from a grant.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPolicy {
    /// The grant's key, for messages (`grants.oci`).
    pub key: &'static str,
    pub capabilities: BTreeSet<&'static str>,
    pub host_namespaces: BTreeSet<HostNamespace>,
    pub host_files: Vec<PathBuf>,
}

impl ContainerPolicy {
    /// Builds the policy from a grant's fields, checking them.
    pub fn from_grant(
        key: &'static str,
        capabilities: Option<&[String]>,
        host_namespaces: &[HostNamespace],
        host_files: Option<&[PathBuf]>,
    ) -> Result<ContainerPolicy, GrantError> {
        let capabilities = match capabilities {
            None => DEFAULT_CAPABILITIES.iter().copied().collect(),
            Some(list) => list
                .iter()
                .map(|c| {
                    capability(c).ok_or_else(|| {
                        GrantError::new(format!("{key}.capabilities"), format!("{c:?} is not a Linux capability"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let host_files = match host_files {
            None => DEFAULT_HOST_FILES.iter().map(PathBuf::from).collect(),
            Some(files) => {
                for f in files {
                    if !f.is_absolute() || f.components().any(|c| matches!(c, Component::ParentDir)) {
                        return Err(GrantError::new(
                            format!("{key}.host_files"),
                            format!("{} must be an absolute path without '..'", f.display()),
                        ));
                    }
                }
                files.to_vec()
            }
        };
        Ok(ContainerPolicy {
            key,
            capabilities,
            host_namespaces: host_namespaces.iter().copied().collect(),
            host_files,
        })
    }

    /// Whether a (possibly unprefixed) capability name is granted.
    pub fn allows_capability(&self, name: &str) -> Result<&'static str, String> {
        match capability(name) {
            Some(c) if self.capabilities.contains(c) => Ok(c),
            Some(c) => Err(format!(
                "{c} is not granted ({}.capabilities allows {})",
                self.key,
                self.capabilities.iter().copied().collect::<Vec<_>>().join(", ")
            )),
            None => Err(format!("{name:?} is not a Linux capability")),
        }
    }

    /// Refuses a namespace the container would share with the host, unless granted.
    pub fn require_namespace(&self, ns: HostNamespace, present: bool) -> Result<(), String> {
        if present || self.host_namespaces.contains(&ns) {
            return Ok(());
        }
        Err(format!(
            "the container would share the host's {0} namespace; add \"{0}\" to {1}.host_namespaces to allow it",
            ns.as_str(),
            self.key
        ))
    }

    /// A bind-mount source is one of: a path beneath the work dir reached
    /// through no link, one of the deployment's volumes, or a host file the
    /// policy lists. Anything else is refused.
    ///
    /// A host file is bound read-only only: `options` must say `ro` and not
    /// `rw` (runtimes apply options in order, so a later `rw` would win).
    pub fn mount_source(&self, scope: &CallScope, source: &str, options: &[&str]) -> Result<(), String> {
        let path = Path::new(source);
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("mount source {source:?} must be an absolute path without '..'"));
        }
        let path = normalize(path);
        if scope.volumes.iter().any(|v| normalize(v) == path) {
            return match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(format!("volume {source} is not a directory erad made")),
            };
        }
        if self.host_files.iter().any(|f| normalize(f) == path) {
            return if read_only(options) {
                Ok(())
            } else {
                Err(format!("host file {source} may only be bound read-only (options \"ro\", without \"rw\")"))
            };
        }
        if let Ok(rel) = path.strip_prefix(&scope.work_dir)
            && !rel.as_os_str().is_empty()
        {
            return crate::beneath::check_path(&scope.work_dir, rel).map_err(|e| format!("mount source {source}: {e}"));
        }
        Err(format!(
            "mount source {source} is outside the work dir and the deployment's volumes, and not one of {}.host_files ({})",
            self.key,
            self.host_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Mount options a plugin may give, exactly as written: runc and LXC read
/// more than they should (`rrw` clears read-only recursively in runc; LXC
/// takes `rwx` for `rw` and `rbindx` for `rbind`, matching by prefix), so
/// anything not on this list is refused rather than interpreted.
const MOUNT_FLAGS: &[&str] = &[
    "bind",
    "rbind",
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "defaults",
    "newinstance",
    "create=dir",
    "create=file",
];
/// Options with a value (tmpfs, devpts, mqueue), the value plain digits or a size.
const MOUNT_DATA: &[&str] = &["size=", "mode=", "uid=", "gid=", "ptmxmode=", "nr_inodes="];

/// Checks mount options against [`MOUNT_FLAGS`] and [`MOUNT_DATA`].
pub fn check_mount_options(options: &[&str]) -> Result<(), String> {
    for o in options {
        if matches!(*o, "shared" | "rshared") {
            return Err("shared propagation would carry mounts back to the host".into());
        }
        let data = MOUNT_DATA.iter().find_map(|p| o.strip_prefix(p));
        let ok = MOUNT_FLAGS.contains(o)
            || data.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return Err(format!(
                "option {o:?} is not allowed (allowed: {}, and {}N)",
                MOUNT_FLAGS.join(", "),
                MOUNT_DATA.join("N, ")
            ));
        }
    }
    Ok(())
}

/// Whether mount options make a mount read-only for good: `ro`, and no `rw`.
pub fn read_only(options: &[&str]) -> bool {
    options.contains(&"ro") && !options.contains(&"rw")
}

/// Drops `.` components and trailing slashes (`..` is refused before this).
pub fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// Resolves `path` (absolute, or relative to `base`) lexically, and returns
/// it relative to `work_dir` if it stays beneath it.
pub fn beneath_work_dir(work_dir: &Path, base: &Path, path: &str) -> Result<PathBuf, String> {
    let joined = if Path::new(path).is_absolute() { PathBuf::from(path) } else { base.join(path) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    match out.strip_prefix(work_dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel.to_path_buf()),
        _ => Err(format!("{path:?} is not inside the work dir")),
    }
}

/// Captured output of a runtime command is cut here.
pub const CAPTURE_LIMIT: u64 = 64 * 1024;

/// What a host command did.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// A host command that could not run to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    TimedOut(String),
}

impl From<RunError> for RuntimeError {
    fn from(e: RunError) -> RuntimeError {
        RuntimeError::Failed(e.to_string())
    }
}

/// A plugin's timeout in milliseconds, 0 meaning `default`.
pub fn timeout_or(ms: u32, default: Duration) -> Duration {
    if ms == 0 { default } else { Duration::from_millis(ms.into()) }
}

/// What a command run inside a container (`runc exec`, `lxc-attach`) did:
/// one that timed out has no exit code, which the caller reads as a failure.
pub fn exec_output(run: Result<Ran, RunError>) -> Result<ExecOutput, RuntimeError> {
    match run {
        Ok(ran) => Ok(ExecOutput { exit_code: ran.code, stdout: ran.stdout, stderr: ran.stderr }),
        Err(RunError::TimedOut(m)) => Ok(ExecOutput { exit_code: None, stdout: Vec::new(), stderr: m.into_bytes() }),
        Err(RunError::Failed(m)) => Err(RuntimeError::Failed(m)),
    }
}

/// Creates one of erad's own runtime dirs (0700).
pub fn create_private(dir: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RuntimeError::Failed(format!("{}: {e}", dir.display())))
}

/// Writes one of erad's own files whole (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| RuntimeError::Failed(format!("{}: {e}", path.display())))
}

/// The workload's log, opened beneath the work dir without following links:
/// what a runtime is handed as stdio or console log.
pub fn open_log(work_dir: &Path) -> Result<std::fs::File, RuntimeError> {
    let rel = Path::new(crate::logs::OUTPUT);
    if let Some(parent) = rel.parent() {
        crate::beneath::create_dirs(work_dir, parent)
            .map_err(|e| RuntimeError::Policy(format!("{}: {e}", parent.display())))?;
    }
    crate::beneath::append_file(work_dir, rel).map_err(|e| RuntimeError::Policy(format!("{}: {e}", rel.display())))
}

async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(stream) = stream else { return Vec::new() };
    let mut buf = Vec::new();
    let _ = stream.take(CAPTURE_LIMIT).read_to_end(&mut buf).await;
    buf
}

/// Runs a runtime's command as erad, with a clean environment (erad's
/// `PATH` only), in `cwd`, and kills it at `timeout`. `output` replaces
/// captured stdout and stderr (a log file).
pub async fn run_host(
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    output: Option<&std::fs::File>,
    timeout: Duration,
) -> Result<Ran, RunError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match output {
        Some(f) => {
            let (out, err) = (f.try_clone(), f.try_clone());
            let dup = |e: std::io::Error| RunError::Failed(format!("the log file: {e}"));
            let (out, err) = (out.map_err(dup)?, err.map_err(dup)?);
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        None => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().map_err(|e| RunError::Failed(format!("{}: {e}", program.display())))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let wait = async { tokio::join!(read_capped(stdout), read_capped(stderr), child.wait()) };
    let ended = tokio::time::timeout(timeout, wait).await;
    tracing::debug!(program = %program.display(), us = started.elapsed().as_micros() as u64, "host command ran");
    match ended {
        Ok((stdout, stderr, Ok(status))) => Ok(Ran { code: status.code(), stdout, stderr }),
        Ok((_, _, Err(e))) => Err(RunError::Failed(format!("waiting for {}: {e}", program.display()))),
        Err(_) => Err(RunError::TimedOut(format!(
            "{} did not finish within {}",
            program.display(),
            humantime::format_duration(timeout)
        ))),
    }
}

/// Starts `era-shim --serve ARGS` (its stderr, and the container's stdio, to
/// `log`), in a process group of its own, and returns the runtime's exit
/// status once the shim reports it (`created <code>` on its stdout). The
/// shim stays with the container; erad does not wait for it (tokio reaps
/// it when it exits). One process fewer than `era-shim ARGS`, whose only
/// job is to detach the `--serve` copy from its caller.
pub async fn start_shim(
    shim: &Path,
    args: &[OsString],
    cwd: &Path,
    log: &std::fs::File,
    timeout: Duration,
) -> Result<Ran, RunError> {
    use tokio::io::AsyncBufReadExt;
    let started = std::time::Instant::now();
    let err = log.try_clone().map_err(|e| RunError::Failed(format!("the log file: {e}")))?;
    let mut child = tokio::process::Command::new(shim)
        .arg("--serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .map_err(|e| RunError::Failed(format!("{}: {e}", shim.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| RunError::Failed("the shim's stdout".into()))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    match tokio::time::timeout(timeout, reader.read_line(&mut line)).await {
        Ok(_) => {}
        Err(_) => {
            return Err(RunError::TimedOut(format!(
                "{} did not report within {}",
                shim.display(),
                humantime::format_duration(timeout)
            )));
        }
    }
    tracing::debug!(us = started.elapsed().as_micros() as u64, report = line.trim(), "shim reported");
    match line.trim().strip_prefix("created ").and_then(|c| c.parse::<i32>().ok()) {
        Some(code) => Ok(Ran { code: Some(code), stdout: Vec::new(), stderr: Vec::new() }),
        // The shim failed before the runtime ran; it said why in the log.
        None => {
            let status = child.wait().await.map_err(|e| RunError::Failed(format!("{}: {e}", shim.display())))?;
            Ok(Ran { code: status.code().filter(|c| *c != 0).or(Some(1)), stdout: Vec::new(), stderr: Vec::new() })
        }
    }
}

/// The last lines of the workload's log, for error messages (read beneath
/// the work dir, never through a link).
pub fn log_tail(work_dir: &Path) -> String {
    let Ok(Some(bytes)) = crate::beneath::read_capped(work_dir, Path::new(crate::logs::OUTPUT), 16 << 20) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().rev().filter(|l| !l.trim().is_empty()).take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(work: &Path, volume: &Path) -> CallScope {
        CallScope {
            deployment: "web".into(),
            revision: Some(1),
            work_dir: work.to_path_buf(),
            volumes: vec![volume.to_path_buf()],
        }
    }

    #[test]
    fn mount_sources_come_from_the_work_dir_volumes_and_listed_host_files() {
        let work = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/", work.path().join("root-link")).unwrap();
        let p = ContainerPolicy::from_grant("grants.oci", None, &[], None).unwrap();
        let s = scope(work.path(), vol.path());
        let w = work.path().display().to_string();
        p.mount_source(&s, &format!("{w}/rootfs"), &[]).unwrap();
        p.mount_source(&s, &vol.path().display().to_string(), &["rw"]).unwrap();
        p.mount_source(&s, "/etc/resolv.conf", &["rbind", "ro"]).unwrap();
        for rw in [&[][..], &["rbind"], &["ro", "rw"]] {
            let err = p.mount_source(&s, "/etc/resolv.conf", rw).unwrap_err();
            assert!(err.contains("read-only"), "{rw:?}: {err}");
        }
        for bad in [
            "/",
            "/etc/shadow",
            "/var/run/docker.sock",
            &format!("{w}/root-link"),
            &format!("{w}/../x"),
            "relative",
            &w,
        ] {
            assert!(p.mount_source(&s, bad, &["ro"]).is_err(), "{bad}");
        }
        let err = p.mount_source(&s, "/etc", &["ro"]).unwrap_err();
        assert!(err.contains("grants.oci.host_files"), "{err}");
    }

    #[test]
    fn capabilities_are_checked_by_any_name() {
        let p = ContainerPolicy::from_grant("grants.oci", None, &[], None).unwrap();
        assert_eq!(p.allows_capability("chown"), Ok("CAP_CHOWN"));
        assert_eq!(p.allows_capability("CAP_KILL"), Ok("CAP_KILL"));
        let err = p.allows_capability("CAP_SYS_ADMIN").unwrap_err();
        assert!(err.contains("CAP_SYS_ADMIN is not granted") && err.contains("grants.oci.capabilities"), "{err}");
        assert!(ContainerPolicy::from_grant("grants.oci", Some(&["CAP_NOPE".into()]), &[], None).is_err());
        assert_eq!(ALL_CAPABILITIES.len(), 41);
    }

    #[test]
    fn paths_resolve_lexically_beneath_the_work_dir() {
        let w = Path::new("/data/rev-1");
        assert_eq!(beneath_work_dir(w, &w.join("bundle"), "../rootfs").unwrap(), Path::new("rootfs"));
        assert_eq!(beneath_work_dir(w, &w.join("bundle"), "/data/rev-1/rootfs").unwrap(), Path::new("rootfs"));
        assert!(beneath_work_dir(w, &w.join("bundle"), "../../rev-2/rootfs").is_err());
        assert!(beneath_work_dir(w, &w.join("bundle"), "/").is_err());
        assert!(beneath_work_dir(w, &w.join("bundle"), "..").is_err());
    }
}
