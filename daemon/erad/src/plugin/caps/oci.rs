//! The `oci` capability: OCI containers run by runc or crun, which erad runs
//! itself. Granted by `oci = { runtimes = ["runc", "crun"], ... }`.
//!
//! A plugin writes an OCI runtime bundle's `config.json` into
//! `bundle/` of its work dir and asks the host to create, start, signal,
//! inspect, exec in or delete *this revision's* container. The host:
//! - picks the container id (`era-<store id>-<deployment>-<revision>`) and
//!   keeps every container under its own runtime root, `DATA/runtimes/oci/<runtime>`,
//!   so a plugin cannot name another deployment's container, and a container
//!   erad did not create (elsewhere, or before this store) is never adopted;
//! - reads `config.json` beneath the work dir without following links,
//!   checks it against the grant's policy ([`check_bundle`]: mount sources,
//!   capabilities, namespaces, devices, no hooks, `noNewPrivileges`, and
//!   every key it knows, refusing the rest), and runs the runtime on its own
//!   copy of what it checked, outside the plugin's reach;
//! - runs `runtime create` under `era-shim` (next to erad), which records the
//!   exit code in the host's state dir; the container's stdout and stderr go
//!   to `logs/output.log`, opened beneath the work dir without following links.

use super::policy::{self, ContainerPolicy, HostNamespace, Ran, RunError, create_private, open_log, write_atomic};
use super::{CallScope, GrantError, RuntimeHome};
use crate::plugin::HostState;
use crate::plugin::bindings::era::plugin::oci_runtime::{ContainerState, Host, Signal};
use crate::plugin::bindings::era::plugin::types::{ExecOutput, RuntimeError};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// `bundle/config.json` larger than this is refused.
const MAX_CONFIG: u64 = 1 << 20;
/// The runtimes this capability knows how to drive.
const RUNTIMES: &[&str] = &["runc", "crun"];
/// Where the plugin writes the bundle, relative to the work dir.
pub const BUNDLE: &str = "bundle/config.json";

/// `oci = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciGrant {
    /// `runc` and/or `crun` (on erad's `PATH`), or absolute paths to them.
    pub runtimes: Vec<String>,
    /// Capabilities a container may have; default Docker's set.
    pub capabilities: Option<Vec<String>>,
    /// Host namespaces a container may stay in (`network`, `pid`, `ipc`, `uts`); default none.
    #[serde(default)]
    pub host_namespaces: Vec<HostNamespace>,
    /// Host files a container may bind-mount; default `/etc/resolv.conf`, `/etc/hosts`.
    pub host_files: Option<Vec<PathBuf>>,
}

impl OciGrant {
    pub fn check(&self) -> Result<(), GrantError> {
        if self.runtimes.is_empty() {
            return Err(GrantError::new("oci.runtimes", "name at least one runtime: runc or crun"));
        }
        for r in &self.runtimes {
            if !super::program_name(r).is_some_and(|base| RUNTIMES.contains(&base)) {
                return Err(GrantError::new(
                    "oci.runtimes",
                    format!("{r:?} is not runc or crun (by name, or an absolute path to one)"),
                ));
            }
        }
        self.policy()?;
        Ok(())
    }

    pub fn policy(&self) -> Result<ContainerPolicy, GrantError> {
        ContainerPolicy::from_grant(
            "grants.oci",
            self.capabilities.as_deref(),
            &self.host_namespaces,
            self.host_files.as_deref(),
        )
    }
}

/// Docker's masked paths: a bundle must mask at least these.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
/// Docker's read-only paths: a bundle must keep at least these read-only.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Mount types that take no host path (the kernel makes them fresh).
const PSEUDO_MOUNTS: &[&str] = &["proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2"];

/// cgroup v2 files a bundle may set in its own cgroup (`linux.resources.unified`):
/// limits, never `cgroup.*` (which moves processes and enables controllers).
const UNIFIED_PREFIXES: &[&str] = &["memory.", "cpu.", "pids.", "io.", "hugetlb.", "cpuset."];

/// What runc applies as root before it drops privileges, and which would
/// let a workload take CPU, I/O or memory from its neighbours: realtime
/// scheduling (`scheduler`, `RLIMIT_RTPRIO`), raised priority (negative
/// nice, `RLIMIT_NICE`, realtime I/O class) and shelter from the OOM killer
/// (`oomScoreAdj` below 0).
fn check_priorities(process: &Map<String, Value>) -> Result<(), String> {
    if process.get("oomScoreAdj").and_then(Value::as_i64).is_some_and(|n| n < 0) {
        return Err(
            "process.oomScoreAdj: below 0 would spare the workload from the OOM killer at its neighbours' expense"
                .into(),
        );
    }
    if let Some(rlimits) = process.get("rlimits") {
        let list = rlimits.as_array().ok_or("process.rlimits must be a list")?;
        for (i, r) in list.iter().enumerate() {
            let kind = r.get("type").and_then(Value::as_str).unwrap_or("");
            let raised = ["hard", "soft"].iter().any(|k| r.get(*k).and_then(Value::as_u64) != Some(0));
            if matches!(kind, "RLIMIT_RTPRIO" | "RLIMIT_NICE") && raised {
                return Err(format!(
                    "process.rlimits[{i}]: {kind} above 0 lets the workload raise its priority over its neighbours"
                ));
            }
        }
    }
    if let Some(sched) = process.get("scheduler") {
        let policy = sched.get("policy").and_then(Value::as_str).unwrap_or("");
        if !matches!(policy, "SCHED_OTHER" | "SCHED_BATCH" | "SCHED_IDLE") {
            return Err(format!(
                "process.scheduler.policy: {policy:?} is not allowed (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE)"
            ));
        }
        if sched.get("nice").and_then(Value::as_i64).is_some_and(|n| n < 0)
            || sched.get("priority").and_then(Value::as_i64).is_some_and(|n| n != 0)
        {
            return Err("process.scheduler: no negative nice and no priority".into());
        }
    }
    if let Some(io) = process.get("ioPriority") {
        let class = io.get("class").and_then(Value::as_str).unwrap_or("");
        if !matches!(class, "IOPRIO_CLASS_BE" | "IOPRIO_CLASS_IDLE") {
            return Err(format!(
                "process.ioPriority.class: {class:?} is not allowed (IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE)"
            ));
        }
    }
    Ok(())
}

fn obj<'a>(v: &'a mut Value, at: &str) -> Result<&'a mut Map<String, Value>, String> {
    v.as_object_mut().ok_or_else(|| format!("{at} must be an object"))
}

fn only_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{at}{k} is not allowed by erad's policy")),
        None => Ok(()),
    }
}

fn strings(v: &Value, at: &str) -> Result<Vec<String>, String> {
    let list = v.as_array().ok_or_else(|| format!("{at} must be a list of strings"))?;
    list.iter()
        .map(|s| s.as_str().map(str::to_string).ok_or_else(|| format!("{at} must be a list of strings")))
        .collect()
}

/// An empty object, list or null: what "none of these" looks like.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Checks a bundle's `config.json` against the policy; returns what the
/// runtime will run: the same config, with the root path made absolute.
/// Errors name the field.
pub fn check_bundle(text: &[u8], scope: &CallScope, policy: &ContainerPolicy) -> Result<Value, String> {
    let mut spec: Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let top = obj(&mut spec, "the config")?;
    only_keys(
        top,
        "",
        &["ociVersion", "root", "mounts", "process", "hostname", "domainname", "linux", "hooks", "annotations"],
    )?;
    if top.get("hooks").is_some_and(|h| !empty(h)) {
        return Err("hooks: OCI hooks run on the host as root; erad's policy allows none".into());
    }
    if top.get("annotations").is_some_and(|a| !empty(a)) {
        return Err("annotations: runtimes read some as settings; erad's policy allows none".into());
    }

    // root: beneath the work dir, through no link.
    let bundle_dir = scope.work_dir.join("bundle");
    let root = top.get_mut("root").ok_or("root: missing")?;
    let root = obj(root, "root")?;
    only_keys(root, "root.", &["path", "readonly"])?;
    let path = root.get("path").and_then(Value::as_str).ok_or("root.path: missing")?;
    let rel = policy::beneath_work_dir(&scope.work_dir, &bundle_dir, path).map_err(|e| format!("root.path: {e}"))?;
    crate::beneath::check_dir(&scope.work_dir, &rel).map_err(|e| format!("root.path: {e}"))?;
    root.insert("path".into(), Value::String(scope.work_dir.join(&rel).display().to_string()));

    // process: no terminal, no new privileges, granted capabilities only.
    let process = obj(top.get_mut("process").ok_or("process: missing")?, "process")?;
    only_keys(
        process,
        "process.",
        &[
            "terminal",
            "consoleSize",
            "user",
            "args",
            "commandLine",
            "env",
            "cwd",
            "capabilities",
            "rlimits",
            "noNewPrivileges",
            "apparmorProfile",
            "oomScoreAdj",
            "selinuxLabel",
            "ioPriority",
            "scheduler",
            "execCPUAffinity",
        ],
    )?;
    if process.get("terminal").and_then(Value::as_bool).unwrap_or(false) {
        return Err("process.terminal: erad gives containers no terminal".into());
    }
    if process.get("noNewPrivileges").and_then(Value::as_bool) != Some(true) {
        return Err("process.noNewPrivileges: must be true (setuid programs must not gain privileges)".into());
    }
    check_priorities(process)?;
    if let Some(caps) = process.get("capabilities") {
        let caps = caps.as_object().ok_or("process.capabilities must be an object")?;
        only_keys(caps, "process.capabilities.", &["bounding", "effective", "inheritable", "permitted", "ambient"])?;
        for (set, list) in caps {
            for c in strings(list, &format!("process.capabilities.{set}"))? {
                policy.allows_capability(&c).map_err(|e| format!("process.capabilities.{set}: {e}"))?;
            }
        }
    }

    // mounts: host paths only from the work dir, volumes and listed files.
    if let Some(mounts) = top.get("mounts") {
        let mounts = mounts.as_array().ok_or("mounts must be a list")?;
        for (i, m) in mounts.iter().enumerate() {
            let at = format!("mounts[{i}]");
            let m = m.as_object().ok_or_else(|| format!("{at} must be an object"))?;
            only_keys(
                m,
                &format!("{at}."),
                &["destination", "source", "type", "options", "uidMappings", "gidMappings"],
            )?;
            let options = match m.get("options") {
                Some(o) => strings(o, &format!("{at}.options"))?,
                None => Vec::new(),
            };
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            policy::check_mount_options(&options).map_err(|e| format!("{at}.options: {e}"))?;
            let bind = kind == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
            if bind {
                let source = m.get("source").and_then(Value::as_str).ok_or_else(|| format!("{at}.source: missing"))?;
                policy.mount_source(scope, source, &options).map_err(|e| format!("{at}: {e}"))?;
            } else if !PSEUDO_MOUNTS.contains(&kind) {
                return Err(format!("{at}.type: {kind:?} mounts are not allowed (bind, {})", PSEUDO_MOUNTS.join(", ")));
            } else if let Some(only) = match kind {
                "proc" => Some("/proc"),
                "sysfs" => Some("/sys"),
                "cgroup" | "cgroup2" => Some("/sys/fs/cgroup"),
                _ => None,
            } && dest.trim_end_matches('/') != only
            {
                return Err(format!("{at}: {kind} only at {only}, where its sensitive files are masked"));
            } else if matches!(kind, "sysfs" | "cgroup" | "cgroup2") && !policy::read_only(&options) {
                return Err(format!("{at}: {kind} must be mounted read-only (\"ro\", without \"rw\")"));
            }
        }
    }

    // linux: own namespaces, no devices, no host hooks into the kernel.
    let linux = obj(top.get_mut("linux").ok_or("linux: missing")?, "linux")?;
    only_keys(
        linux,
        "linux.",
        &[
            "namespaces",
            "uidMappings",
            "gidMappings",
            "timeOffsets",
            "devices",
            "resources",
            "rootfsPropagation",
            "seccomp",
            "sysctl",
            "maskedPaths",
            "readonlyPaths",
            "mountLabel",
            "personality",
        ],
    )?;
    if linux.get("devices").is_some_and(|d| !empty(d)) {
        return Err("linux.devices: containers get the runtime's default devices only".into());
    }
    if linux.get("sysctl").is_some_and(|d| !empty(d)) {
        return Err("linux.sysctl: erad's policy allows no sysctls".into());
    }
    if let Some(p) = linux.get("rootfsPropagation").and_then(Value::as_str)
        && !matches!(p, "private" | "rprivate" | "slave" | "rslave")
    {
        return Err(format!("linux.rootfsPropagation: {p:?} would share mounts with the host"));
    }
    if let Some(seccomp) = linux.get("seccomp") {
        let s = seccomp.as_object().ok_or("linux.seccomp must be an object")?;
        only_keys(s, "linux.seccomp.", &["defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"])?;
    }
    if let Some(res) = linux.get("resources") {
        let r = res.as_object().ok_or("linux.resources must be an object")?;
        only_keys(
            r,
            "linux.resources.",
            &["devices", "memory", "cpu", "blockIO", "hugepageLimits", "pids", "network", "rdma", "unified"],
        )?;
        if let Some(unified) = r.get("unified") {
            let unified = unified.as_object().ok_or("linux.resources.unified must be an object")?;
            if let Some(k) = unified.keys().find(|k| {
                !UNIFIED_PREFIXES.iter().any(|p| k.starts_with(p) && k.len() > p.len())
                    || k.contains(['/', '\0'])
                    || k.contains("..")
            }) {
                return Err(format!(
                    "linux.resources.unified.{k}: only the container's own {} files",
                    UNIFIED_PREFIXES.join(", ")
                ));
            }
        }
        if let Some(devs) = r.get("devices") {
            let devs = devs.as_array().ok_or("linux.resources.devices must be a list")?;
            if let Some(i) = devs.iter().position(|d| d.get("allow").and_then(Value::as_bool) != Some(false)) {
                return Err(format!(
                    "linux.resources.devices[{i}]: only deny rules; containers get the runtime's default devices"
                ));
            }
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (i, ns) in linux.get("namespaces").and_then(Value::as_array).cloned().unwrap_or_default().iter().enumerate() {
        let kind = ns.get("type").and_then(Value::as_str).unwrap_or("");
        if ns.get("path").is_some_and(|p| !p.is_null()) {
            return Err(format!("linux.namespaces[{i}].path: joining an existing namespace is not allowed"));
        }
        if !matches!(kind, "pid" | "network" | "mount" | "ipc" | "uts" | "user" | "cgroup" | "time") {
            return Err(format!("linux.namespaces[{i}].type: {kind:?} is not a namespace"));
        }
        kinds.insert(kind.to_string());
    }
    if !kinds.contains("mount") {
        return Err("linux.namespaces: a container needs its own mount namespace".into());
    }
    for (kind, ns) in [
        ("network", HostNamespace::Network),
        ("pid", HostNamespace::Pid),
        ("ipc", HostNamespace::Ipc),
        ("uts", HostNamespace::Uts),
    ] {
        policy.require_namespace(ns, kinds.contains(kind)).map_err(|e| format!("linux.namespaces: {e}"))?;
    }
    for (key, needed) in [("maskedPaths", MASKED_PATHS), ("readonlyPaths", READONLY_PATHS)] {
        let have = match linux.get(key) {
            Some(v) => strings(v, &format!("linux.{key}"))?,
            None => Vec::new(),
        };
        if let Some(missing) = needed.iter().find(|p| !have.iter().any(|h| h == *p)) {
            return Err(format!("linux.{key}: must include {missing} (and the rest of Docker's defaults)"));
        }
    }
    Ok(spec)
}

/// One call's view of the container of its revision.
struct Oci<'a> {
    scope: &'a CallScope,
    home: &'a RuntimeHome,
    grant: &'a OciGrant,
    /// `runc` or `crun`.
    runtime: String,
    program: PathBuf,
}

impl<'a> Oci<'a> {
    fn new(state: &'a HostState, runtime: &str) -> Result<Oci<'a>, RuntimeError> {
        let grant =
            state.grants.oci.as_ref().ok_or_else(|| RuntimeError::NotAllowed("this plugin has no oci grant".into()))?;
        let entry = super::granted_program(runtime, &grant.runtimes)
            .filter(|_| RUNTIMES.contains(&runtime))
            .ok_or_else(|| {
                RuntimeError::NotAllowed(format!(
                    "runtime {runtime:?} is not granted (grants.oci.runtimes: {})",
                    grant.runtimes.join(", ")
                ))
            })?;
        let program = super::find_program(entry)
            .ok_or_else(|| RuntimeError::Failed(format!("{entry} is granted but not installed on this host")))?;
        Ok(Oci { scope: &state.scope, home: &state.runtimes, grant, runtime: runtime.to_string(), program })
    }

    fn id(&self, what: &str) -> Result<String, RuntimeError> {
        let rev = self.scope.revision(what).map_err(RuntimeError::NotAllowed)?;
        Ok(self.home.container_id(&self.scope.deployment, rev))
    }

    /// The runtime's `--root`: erad's own, one per runtime.
    fn root(&self) -> PathBuf {
        self.home.root.join("oci").join(&self.runtime)
    }

    /// The host's copy of the checked bundle, and the shim's state (pid, exit code).
    fn dirs(&self, id: &str) -> (PathBuf, PathBuf) {
        let base = self.home.root.join("oci");
        (base.join("bundles").join(id), base.join("state").join(id))
    }

    async fn run(&self, args: &[&str], timeout: Duration) -> Result<Ran, RunError> {
        let root = self.root();
        create_private(&root).map_err(|e| RunError::Failed(format!("{e:?}")))?;
        let mut argv: Vec<OsString> = vec!["--root".into(), root.into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        policy::run_host(&self.program, &argv, &self.home.root, None, timeout).await
    }

    fn policy(&self) -> Result<ContainerPolicy, RuntimeError> {
        self.grant.policy().map_err(|e| RuntimeError::Failed(e.to_string()))
    }

    fn checked_bundle(&self) -> Result<Value, RuntimeError> {
        let text = crate::beneath::read_capped(&self.scope.work_dir, Path::new(BUNDLE), MAX_CONFIG)
            .map_err(|e| RuntimeError::Policy(format!("{BUNDLE}: {e}")))?
            .ok_or_else(|| RuntimeError::NotFound(format!("{BUNDLE} is missing in the work dir")))?;
        check_bundle(&text, self.scope, &self.policy()?).map_err(|e| RuntimeError::Policy(format!("{BUNDLE}: {e}")))
    }

    async fn state(&self) -> Result<Option<ContainerState>, RuntimeError> {
        let id = self.id("looking at a container")?;
        // runc and crun keep every container they know in `<root>/<id>/`:
        // without it there is none, and no runtime process is needed to
        // say so (each costs ~7 ms of the Go runtime starting).
        if !self.root().join(&id).exists() {
            return Ok(None);
        }
        let (_, state_dir) = self.dirs(&id);
        let exit_code =
            || std::fs::read_to_string(state_dir.join("exit-code")).ok().and_then(|t| t.trim().parse::<i32>().ok());
        if self.runtime == "runc"
            && let Some((status, pid)) = runc_status(&self.root().join(&id))
        {
            let code = exit_code();
            // era-shim writes the exit code just after it reaps the init:
            // a stopped container without one yet is asked of runc, which
            // takes long enough for the shim to finish (as before).
            if status != "stopped" || code.is_some() {
                return Ok(Some(ContainerState { id, status: status.into(), pid, exit_code: code }));
            }
        }
        let ran = self.run(&["state", &id], COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            let err = ran.stderr_text();
            if err.contains("does not exist") || err.contains("not found") || err.contains("No such file") {
                return Ok(None);
            }
            return Err(RuntimeError::Failed(format!("{} state {id}: {err}", self.runtime)));
        }
        let v: Value = serde_json::from_slice(&ran.stdout)
            .map_err(|e| RuntimeError::Failed(format!("{} state {id}: not JSON: {e}", self.runtime)))?;
        Ok(Some(ContainerState {
            id,
            status: v["status"].as_str().unwrap_or("unknown").to_string(),
            pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
            exit_code: exit_code(),
        }))
    }

    /// `create` (`run` false) or `run --detach` (`run` true, create and
    /// start in one runtime process: one Go runtime start fewer).
    async fn create(&self, run: bool) -> Result<(), RuntimeError> {
        let id = self.id("creating a container")?;
        let checked = self.checked_bundle()?;
        match self.state().await?.map(|s| s.status) {
            Some(s) if s == "created" && run => return self.start(&id).await,
            Some(s) if s == "created" || s == "running" || s == "paused" => return Ok(()),
            Some(_) => {
                self.run(&["delete", "--force", &id], COMMAND_TIMEOUT).await?;
            }
            None => {}
        }
        let (bundle, state_dir) = self.dirs(&id);
        create_private(&bundle)?;
        create_private(&state_dir)?;
        let _ = std::fs::remove_file(state_dir.join("exit-code"));
        let text = serde_json::to_vec_pretty(&checked).map_err(|e| RuntimeError::Failed(e.to_string()))?;
        write_atomic(&bundle.join("config.json"), &text)?;
        let log = open_log(&self.scope.work_dir)?;
        let pid_file = state_dir.join("pid");
        create_private(&self.root())?;
        let verb: &[&str] = if run { &["run", "--detach"] } else { &["create"] };
        let mut create: Vec<OsString> = vec![self.program.clone().into(), "--root".into(), self.root().into()];
        create.extend(verb.iter().map(OsString::from));
        create.extend([
            "--bundle".into(),
            bundle.clone().into(),
            "--pid-file".into(),
            pid_file.clone().into(),
            id.clone().into(),
        ]);
        // era-shim stays with the container to record its exit code (runc
        // keeps none once a detached container is gone).
        let ran = match &self.home.shim {
            Some(shim) => {
                let mut argv: Vec<OsString> = vec![
                    "--exit-file".into(),
                    state_dir.join("exit-code").into(),
                    "--pid-file".into(),
                    pid_file.into(),
                    "--".into(),
                ];
                argv.extend(create);
                policy::start_shim(shim, &argv, &bundle, &log, COMMAND_TIMEOUT).await
            }
            None => policy::run_host(&self.program, &create[1..], &bundle, Some(&log), COMMAND_TIMEOUT).await,
        }?;
        if !ran.ok() {
            return Err(RuntimeError::Failed(format!(
                "{} {} {id} failed: {}",
                self.runtime,
                verb[0],
                policy::log_tail(&self.scope.work_dir)
            )));
        }
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let ran = self.run(&["start", id], COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            return Err(RuntimeError::Failed(format!("{} start {id}: {}", self.runtime, ran.stderr_text())));
        }
        Ok(())
    }
}

/// A runc container's status read the way `runc state` derives it, from
/// its `state.json` in erad's own runc root: the init process alive (same
/// pid *and* start time, so a reused pid does not count) and not a zombie;
/// `exec.fifo` still there means created, not started. None when anything is
/// unexpected (a frozen cgroup, a file runc did not write): the caller asks
/// runc itself then.
fn runc_status(dir: &Path) -> Option<(&'static str, Option<u32>)> {
    #[derive(Deserialize)]
    struct RuncState {
        init_process_pid: u32,
        init_process_start: u64,
        #[serde(default)]
        cgroup_paths: std::collections::BTreeMap<String, PathBuf>,
    }
    let text = std::fs::read(dir.join("state.json")).ok()?;
    let st: RuncState = serde_json::from_slice(&text).ok()?;
    let frozen = st.cgroup_paths.values().any(|p| {
        std::fs::read_to_string(p.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1")
            || std::fs::read_to_string(p.join("freezer.state")).is_ok_and(|t| t.trim() != "THAWED")
    });
    if frozen || st.init_process_pid == 0 {
        return None;
    }
    let alive = match std::fs::read_to_string(format!("/proc/{}/stat", st.init_process_pid)) {
        Ok(stat) => {
            // The command name (field 2) may hold spaces and parentheses:
            // the fields after it start past the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // state is field 3, starttime field 22 of /proc/PID/stat.
            let (state, start) = (*fields.first()?, fields.get(19)?.parse::<u64>().ok()?);
            start == st.init_process_start && state != "Z" && state != "X"
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => return None,
    };
    Some(match (alive, dir.join("exec.fifo").exists()) {
        (false, _) => ("stopped", None),
        (true, true) => ("created", Some(st.init_process_pid)),
        (true, false) => ("running", Some(st.init_process_pid)),
    })
}

impl HostState {
    async fn create_or_run(&mut self, runtime: &str, run: bool) -> Result<(), RuntimeError> {
        let r = Oci::new(self, runtime)?.create(run).await;
        if let Err(e) = &r {
            tracing::warn!(
                plugin = &*self.plugin,
                deployment = self.scope.deployment,
                "oci {} refused or failed: {e:?}",
                if run { "run" } else { "create" }
            );
        }
        r
    }
}

/// A runtime program's `--version` line, by path and (inode, mtime).
type KnownVersion = (PathBuf, (u64, i64, i64), String);

fn signal_name(s: Signal) -> &'static str {
    match s {
        Signal::Term => "SIGTERM",
        Signal::Kill => "SIGKILL",
        Signal::Int => "SIGINT",
        Signal::Hup => "SIGHUP",
        Signal::Quit => "SIGQUIT",
        Signal::Usr1 => "SIGUSR1",
        Signal::Usr2 => "SIGUSR2",
    }
}

impl Host for HostState {
    async fn version(&mut self, runtime: String) -> Result<String, RuntimeError> {
        let oci = Oci::new(self, &runtime)?;
        // Asked at every validation: remembered per program file as long as
        // the file is the same (an upgrade changes its mtime or inode).
        static VERSIONS: std::sync::Mutex<Vec<KnownVersion>> = std::sync::Mutex::new(Vec::new());
        let id = std::fs::metadata(&oci.program).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.mtime(), m.mtime_nsec())
        });
        let known = |v: &Vec<KnownVersion>| {
            v.iter().find(|(p, i, _)| *p == oci.program && Some(*i) == id).map(|(_, _, s)| s.clone())
        };
        if let Some(v) = known(&VERSIONS.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(v);
        }
        let ran = policy::run_host(&oci.program, &["--version".into()], Path::new("/"), None, COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            return Err(RuntimeError::Failed(format!("{runtime} --version: {}", ran.stderr_text())));
        }
        let version = String::from_utf8_lossy(&ran.stdout).lines().next().unwrap_or_default().to_string();
        if let Some(id) = id {
            let mut v = VERSIONS.lock().unwrap_or_else(|p| p.into_inner());
            v.retain(|(p, _, _)| *p != oci.program);
            v.push((oci.program.clone(), id, version.clone()));
        }
        Ok(version)
    }

    async fn check(&mut self, runtime: String) -> Result<(), RuntimeError> {
        Oci::new(self, &runtime)?.checked_bundle().map(|_| ())
    }

    async fn create(&mut self, runtime: String) -> Result<(), RuntimeError> {
        self.create_or_run(&runtime, false).await
    }

    async fn start(&mut self, runtime: String) -> Result<(), RuntimeError> {
        let oci = Oci::new(self, &runtime)?;
        oci.start(&oci.id("starting a container")?).await
    }

    async fn run(&mut self, runtime: String) -> Result<(), RuntimeError> {
        self.create_or_run(&runtime, true).await
    }

    async fn state(&mut self, runtime: String) -> Result<Option<ContainerState>, RuntimeError> {
        Oci::new(self, &runtime)?.state().await
    }

    async fn kill(&mut self, runtime: String, signal: Signal) -> Result<(), RuntimeError> {
        let oci = Oci::new(self, &runtime)?;
        let id = oci.id("signalling a container")?;
        let ran = oci.run(&["kill", &id, signal_name(signal)], COMMAND_TIMEOUT).await?;
        if !ran.ok() {
            let err = ran.stderr_text();
            if err.contains("does not exist") || err.contains("not found") {
                return Err(RuntimeError::NotFound(format!("container {id} does not exist")));
            }
            return Err(RuntimeError::Failed(format!("{runtime} kill {id}: {err}")));
        }
        Ok(())
    }

    async fn delete(&mut self, runtime: String) -> Result<(), RuntimeError> {
        let oci = Oci::new(self, &runtime)?;
        let id = oci.id("deleting a container")?;
        if oci.state().await?.is_some() {
            let ran = oci.run(&["delete", "--force", &id], COMMAND_TIMEOUT).await?;
            if !ran.ok() && oci.state().await?.is_some() {
                return Err(RuntimeError::Failed(format!("{runtime} delete {id}: {}", ran.stderr_text())));
            }
        }
        let (bundle, state_dir) = oci.dirs(&id);
        for d in [bundle, state_dir] {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RuntimeError::Failed(format!("{}: {e}", d.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn exec(&mut self, runtime: String, args: Vec<String>, timeout_ms: u32) -> Result<ExecOutput, RuntimeError> {
        let oci = Oci::new(self, &runtime)?;
        let id = oci.id("running a command in a container")?;
        if args.is_empty() {
            return Err(RuntimeError::Policy("exec needs a command".into()));
        }
        // `--` before the id: runc stops reading its own flags there, and
        // takes everything after the id as the command (a `--` after the id
        // would be run as the program).
        let mut argv = vec!["exec", "--", &id];
        argv.extend(args.iter().map(String::as_str));
        policy::exec_output(oci.run(&argv, policy::timeout_or(timeout_ms, COMMAND_TIMEOUT)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the shipped container plugin writes, in short.
    fn good(work: &Path) -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
                "noNewPrivileges": true
            },
            "root": {"path": "../rootfs", "readonly": false},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": work.join("rootfs/data").display().to_string(), "options": ["rbind"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "maskedPaths": MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS
            }
        })
    }

    fn setup() -> (tempfile::TempDir, CallScope, ContainerPolicy) {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(work.path().join("rootfs/data")).unwrap();
        std::fs::create_dir_all(work.path().join("bundle")).unwrap();
        let scope = CallScope {
            deployment: "web".into(),
            revision: Some(1),
            work_dir: work.path().to_path_buf(),
            volumes: vec![],
        };
        let policy = ContainerPolicy::from_grant("grants.oci", None, &[], None).unwrap();
        (work, scope, policy)
    }

    fn refused(spec: &Value, scope: &CallScope, policy: &ContainerPolicy) -> String {
        check_bundle(&serde_json::to_vec(spec).unwrap(), scope, policy).expect_err("must be refused")
    }

    #[test]
    fn runc_status_is_read_from_state_json_as_runc_derives_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let start: u64 = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap();
        let write = |pid: u32, start: u64| {
            let state = json!({"id": "x", "init_process_pid": pid, "init_process_start": start, "cgroup_paths": {}});
            std::fs::write(dir.path().join("state.json"), state.to_string()).unwrap();
        };
        write(me, start);
        assert_eq!(runc_status(dir.path()), Some(("running", Some(me))));
        std::fs::write(dir.path().join("exec.fifo"), b"").unwrap();
        assert_eq!(runc_status(dir.path()), Some(("created", Some(me))));
        std::fs::remove_file(dir.path().join("exec.fifo")).unwrap();
        // The same pid with another start time is another process: runc's
        // container is gone.
        write(me, start + 1);
        assert_eq!(runc_status(dir.path()), Some(("stopped", None)));
        write(u32::MAX - 1, start);
        assert_eq!(runc_status(dir.path()), Some(("stopped", None)));
        // Anything unexpected: ask runc.
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert_eq!(runc_status(dir.path()), None);
        let frozen = dir.path().join("cg");
        std::fs::create_dir(&frozen).unwrap();
        std::fs::write(frozen.join("cgroup.freeze"), b"1\n").unwrap();
        let state = json!({"init_process_pid": me, "init_process_start": start, "cgroup_paths": {"": frozen}});
        std::fs::write(dir.path().join("state.json"), state.to_string()).unwrap();
        assert_eq!(runc_status(dir.path()), None);
    }

    #[test]
    fn a_plain_bundle_passes_with_its_root_made_absolute() {
        let (work, scope, policy) = setup();
        let out = check_bundle(&serde_json::to_vec(&good(work.path())).unwrap(), &scope, &policy).unwrap();
        assert_eq!(out["root"]["path"], work.path().join("rootfs").display().to_string());
    }

    #[test]
    fn escapes_through_the_bundle_are_refused_naming_the_field() {
        let (work, scope, policy) = setup();
        std::os::unix::fs::symlink("/", work.path().join("hostroot")).unwrap();
        type Breaker = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "hooks",
                Box::new(|s| {
                    s["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "touch /pwned"]}]})
                }),
            ),
            ("mounts[3]", Box::new(|s| s["mounts"][3]["source"] = json!("/"))),
            (
                "mounts[3]",
                Box::new(|s| {
                    s["mounts"][3] =
                        json!({"destination": "/h", "type": "none", "source": "/etc", "options": ["rbind"]})
                }),
            ),
            (
                "mounts[3].type",
                Box::new(|s| s["mounts"][3] = json!({"destination": "/h", "type": "ext4", "source": "/dev/vda"})),
            ),
            (
                "mounts[3]",
                Box::new(|s| s["mounts"][3] = json!({"destination": "/p2", "type": "proc", "source": "proc"})),
            ),
            ("mounts[1]", Box::new(|s| s["mounts"][1]["options"] = json!(["nosuid"]))),
            ("root.path", Box::new(|s| s["root"]["path"] = json!("/"))),
            ("root.path", Box::new(|s| s["root"]["path"] = json!("../hostroot"))),
            ("root.path", Box::new(|s| s["root"]["path"] = json!("../../.."))),
            (
                "process.capabilities.bounding",
                Box::new(|s| s["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"])),
            ),
            (
                "process.capabilities.ambient",
                Box::new(|s| s["process"]["capabilities"]["ambient"] = json!(["CAP_SYS_MODULE"])),
            ),
            ("process.noNewPrivileges", Box::new(|s| s["process"]["noNewPrivileges"] = json!(false))),
            (
                "linux.namespaces",
                Box::new(|s| {
                    s["linux"]["namespaces"] =
                        json!([{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}])
                }),
            ),
            ("linux.namespaces[0].path", Box::new(|s| s["linux"]["namespaces"][0]["path"] = json!("/proc/1/ns/pid"))),
            (
                "linux.namespaces",
                Box::new(|s| {
                    s["linux"]["namespaces"] =
                        json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}])
                }),
            ),
            (
                "linux.devices",
                Box::new(|s| {
                    s["linux"]["devices"] = json!([{"path": "/dev/vda", "type": "b", "major": 254, "minor": 0}])
                }),
            ),
            (
                "linux.resources.devices[0]",
                Box::new(|s| s["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}])),
            ),
            ("linux.sysctl", Box::new(|s| s["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/x"}))),
            ("linux.cgroupsPath", Box::new(|s| s["linux"]["cgroupsPath"] = json!("/system.slice/erad.service"))),
            (
                "linux.seccomp.listenerPath",
                Box::new(|s| {
                    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"})
                }),
            ),
            ("linux.maskedPaths", Box::new(|s| s["linux"]["maskedPaths"] = json!([]))),
            ("linux.readonlyPaths", Box::new(|s| s["linux"]["readonlyPaths"] = json!(["/proc/sys"]))),
            ("linux.rootfsPropagation", Box::new(|s| s["linux"]["rootfsPropagation"] = json!("shared"))),
            ("linux.netDevices", Box::new(|s| s["linux"]["netDevices"] = json!({"eth0": {}}))),
            ("annotations", Box::new(|s| s["annotations"] = json!({"run.oci.handler": "krun"}))),
            ("process.terminal", Box::new(|s| s["process"]["terminal"] = json!(true))),
            ("vm", Box::new(|s| s["vm"] = json!({"hypervisor": {"path": "/bin/sh"}}))),
            // Found by review: a later "rw" wins over "ro" in runc.
            ("mounts[1]", Box::new(|s| s["mounts"][1]["options"] = json!(["nosuid", "ro", "rw"]))),
            ("mounts[2]", Box::new(|s| s["mounts"][2]["options"] = json!(["rbind"]))),
            ("mounts[2]", Box::new(|s| s["mounts"][2]["options"] = json!(["rbind", "ro", "rw"]))),
            (
                "mounts[3]",
                Box::new(|s| {
                    s["mounts"][3] =
                        json!({"destination": "/s2", "type": "sysfs", "source": "sysfs", "options": ["ro"]})
                }),
            ),
            ("process.oomScoreAdj", Box::new(|s| s["process"]["oomScoreAdj"] = json!(-1000))),
            // Found by the second review: runc's recursive "rrw" after "ro".
            ("mounts[2].options", Box::new(|s| s["mounts"][2]["options"] = json!(["rbind", "ro", "rrw"]))),
            ("mounts[2].options", Box::new(|s| s["mounts"][2]["options"] = json!(["rbind", "ro", "idmap"]))),
            (
                "process.rlimits[0]",
                Box::new(|s| s["process"]["rlimits"] = json!([{"type": "RLIMIT_RTPRIO", "hard": 99, "soft": 99}])),
            ),
            (
                "process.scheduler.policy",
                Box::new(|s| s["process"]["scheduler"] = json!({"policy": "SCHED_FIFO", "priority": 99})),
            ),
            (
                "process.scheduler",
                Box::new(|s| s["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "nice": -20})),
            ),
            (
                "process.ioPriority.class",
                Box::new(|s| s["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_RT", "priority": 0})),
            ),
            (
                "linux.resources.unified.cgroup.procs",
                Box::new(|s| s["linux"]["resources"]["unified"] = json!({"cgroup.procs": "1"})),
            ),
        ];
        for (field, break_it) in cases {
            let mut spec = good(work.path());
            break_it(&mut spec);
            let err = refused(&spec, &scope, &policy);
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn granted_host_namespaces_and_capabilities_pass() {
        let (work, scope, _) = setup();
        let policy = ContainerPolicy::from_grant(
            "grants.oci",
            Some(&["CAP_SYS_ADMIN".into(), "CAP_KILL".into(), "CAP_CHOWN".into()]),
            &[HostNamespace::Network],
            None,
        )
        .unwrap();
        let mut spec = good(work.path());
        spec["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
        spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
        check_bundle(&serde_json::to_vec(&spec).unwrap(), &scope, &policy).unwrap();
    }
}
