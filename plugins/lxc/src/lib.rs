//! `lxc`: LXC containers, each in an lxcpath inside its revision's work dir
//! (`lxc-ls -P <work dir>/lxc`), never among the host's own containers.
//!
//! The root filesystem is the image erad unpacked into `<work dir>/rootfs`,
//! or one an LXC template makes (`config.template`). The container's console
//! goes to `logs/output.log` in the work dir, which `era logs` reads.
//!
//! - `install`: the container config (and `lxc-create` for a template).
//! - `start`: `lxc-start -d` with the image's command. `status`: `lxc-info`.
//! - `stop`: `lxc-stop` with the grace period, then kill. `delete`: `lxc-destroy`.
//!
//! Every operation is idempotent.
//!
//! Config keys (anything else is refused by `validate`):
//! - `template`, `templateArgs`: make the rootfs with `lxc-create -t`
//! - `command`, `args`: replace the image's entrypoint and cmd
//! - `network`: `{type: empty}` (default) or `{type: veth, link: BRIDGE}`
//! - `hostname`
//! - `memoryMiB`: a memory limit (set for cgroup v1 and v2 alike; LXC applies
//!   the one the host has)

use era_plugin_sdk::image::ImageConfig;
use era_plugin_sdk::{ArtifactKind, Error, PluginInfo, Runtime, Status, WORK_DIR, Workload, log, process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const OUTPUT: &str = "logs/output.log";
const COMMAND_TIMEOUT_MS: u32 = 60_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    template: Option<String>,
    #[serde(default)]
    template_args: Vec<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    network: Network,
    hostname: Option<String>,
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Network {
    #[serde(rename = "type")]
    kind: Option<String>,
    link: Option<String>,
}

impl Config {
    fn parse(w: &Workload) -> Result<Config, Error> {
        let text = if w.config.trim().is_empty() { "{}" } else { &w.config };
        let c: Config = serde_json::from_str(text).map_err(|e| Error::InvalidConfig(format!("lxc config: {e}")))?;
        if c.memory_mib == Some(0) {
            return Err(Error::InvalidConfig("lxc config: memoryMiB must be at least 1".into()));
        }
        match (c.network.kind.as_deref().unwrap_or("empty"), &c.network.link) {
            ("empty", None) => {}
            ("empty", Some(_)) => return Err(Error::InvalidConfig("lxc config: network.link needs type veth".into())),
            ("veth", Some(l)) if !l.is_empty() && !l.contains(char::is_whitespace) => {}
            ("veth", _) => return Err(Error::InvalidConfig("lxc config: a veth network needs link: BRIDGE".into())),
            (t, _) => return Err(Error::InvalidConfig(format!("lxc config: network type {t:?} is not empty or veth"))),
        }
        Ok(c)
    }
}

/// What the host keeps for us: where the container is and how it starts.
#[derive(Serialize, Deserialize)]
struct Handle {
    lxcpath: String,
    name: String,
    /// The init command (empty: the rootfs's own /sbin/init).
    init: Vec<String>,
}

impl Handle {
    fn parse(text: &str) -> Result<Handle, Error> {
        serde_json::from_str(text).map_err(|e| Error::Failed(format!("lxc handle is not valid: {e}")))
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn lxc(&self, tool: &str, extra: &[&str]) -> Result<process::Exit, Error> {
        let mut args = vec!["-P", &self.lxcpath, "-n", &self.name];
        args.extend_from_slice(extra);
        let mut cmd = process::command(tool, &args);
        cmd.timeout_ms = COMMAND_TIMEOUT_MS;
        Ok(process::run(&cmd)?)
    }

    /// `RUNNING`, `STOPPED`, ...; `None` when LXC knows no such container.
    fn state(&self) -> Result<Option<(String, Option<u32>)>, Error> {
        let exit = self.lxc("lxc-info", &["-s", "-p"])?;
        if exit.code != Some(0) {
            let err = text(&exit.stderr);
            if err.contains("doesn't exist") || err.contains("does not exist") {
                return Ok(None);
            }
            return Err(Error::Unavailable(format!("lxc-info {}: {err}", self.name)));
        }
        let out = String::from_utf8_lossy(&exit.stdout).to_string();
        let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()));
        let state = field("State:").unwrap_or_else(|| "UNKNOWN".into());
        Ok(Some((state, field("PID:").and_then(|p| p.parse().ok()))))
    }

    fn wait_stopped(&self, within: Duration) -> Result<bool, Error> {
        era_plugin_sdk::wait_until(within, || Ok(self.state()?.is_none_or(|(s, _)| s == "STOPPED")))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

fn lxcpath(w: &Workload) -> String {
    format!("{}/lxc", w.work_dir)
}

fn container_name(w: &Workload) -> String {
    format!("era-{}-{}", w.deployment, w.revision)
}

/// A value for one line of LXC config: no newlines.
fn line(what: &str, v: &str) -> Result<String, Error> {
    if v.contains('\n') || v.contains('\r') {
        return Err(Error::InvalidConfig(format!("{what} {v:?} has a line break, which an LXC config cannot hold")));
    }
    Ok(v.to_string())
}

/// The container config LXC reads, written where `lxc-start -P` looks.
fn lxc_config(w: &Workload, c: &Config, rootfs: &str) -> Result<String, Error> {
    let mut lines = vec![
        format!("lxc.uts.name = {}", line("hostname", c.hostname.as_deref().unwrap_or(&w.deployment))?),
        format!("lxc.rootfs.path = dir:{rootfs}"),
        "lxc.autodev = 1".into(),
        "lxc.pty.max = 4".into(),
        "lxc.tty.max = 0".into(),
        "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed".into(),
        format!("lxc.console.logfile = {}/{OUTPUT}", w.work_dir),
        format!("lxc.log.file = {}/logs/lxc.log", w.work_dir),
        "lxc.log.level = WARN".into(),
    ];
    if let Some(mib) = c.memory_mib {
        let bytes = mib * 1024 * 1024;
        lines.push(format!("lxc.cgroup.memory.limit_in_bytes = {bytes}"));
        lines.push(format!("lxc.cgroup2.memory.max = {bytes}"));
    }
    match c.network.kind.as_deref().unwrap_or("empty") {
        "veth" => {
            lines.push("lxc.net.0.type = veth".into());
            lines.push(format!("lxc.net.0.link = {}", c.network.link.clone().unwrap_or_default()));
            lines.push("lxc.net.0.flags = up".into());
        }
        _ => lines.push("lxc.net.0.type = empty".into()),
    }
    let env = ImageConfig::of(w)?.env(w, &[]);
    for (k, v) in env {
        lines.push(format!("lxc.environment = {}", line("env", &format!("{k}={v}"))?));
    }
    for v in &w.volumes {
        let target = v.mount_path.trim_start_matches('/');
        if target.is_empty() || target.contains(char::is_whitespace) || v.host_path.contains(char::is_whitespace) {
            return Err(Error::InvalidConfig(format!(
                "volume {}: LXC mount entries cannot hold {:?} (empty or with spaces)",
                v.name, v.mount_path
            )));
        }
        let ro = if v.read_only { ",ro" } else { "" };
        lines.push(format!("lxc.mount.entry = {} {target} none bind,create=dir{ro} 0 0", v.host_path));
    }
    Ok(lines.join("\n") + "\n")
}

/// The init command: the config's, else the image's entrypoint and cmd.
fn init_command(w: &Workload, c: &Config) -> Result<Vec<String>, Error> {
    Ok(ImageConfig::of(w)?.argv(c.command.as_deref(), c.args.as_deref()))
}

struct Lxc;

impl Runtime for Lxc {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "lxc".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "LXC containers from an image erad unpacked, or from an LXC template".into(),
        }
    }

    fn validate(w: Workload) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        let version = process::run(&process::command("lxc-start", &["--version"]))?;
        if version.code != Some(0) {
            return Err(Error::Failed(format!("lxc-start --version: {}", text(&version.stderr))));
        }
        if w.artifact.kind != ArtifactKind::Image && c.template.is_none() {
            return Err(Error::InvalidConfig(
                "the lxc runtime needs a root filesystem: use an image artifact, or give config.template".into(),
            ));
        }
        Ok(())
    }

    fn install(w: Workload) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let h = Handle { lxcpath: lxcpath(&w), name: container_name(&w), init: init_command(&w, &c)? };
        let fail = |e: std::io::Error| Error::Failed(format!("writing the container config: {e}"));
        std::fs::create_dir_all(format!("{WORK_DIR}/logs")).map_err(fail)?;
        let rootfs = match &c.template {
            Some(t) => {
                if h.state()?.is_none() {
                    let mut args = vec!["-t", t.as_str()];
                    if !c.template_args.is_empty() {
                        args.push("--");
                        args.extend(c.template_args.iter().map(String::as_str));
                    }
                    let exit = h.lxc("lxc-create", &args)?;
                    if exit.code != Some(0) {
                        return Err(Error::Failed(format!("lxc-create -t {t}: {}", text(&exit.stderr))));
                    }
                }
                format!("{}/{}/rootfs", h.lxcpath, h.name)
            }
            None => format!("{}/rootfs", w.work_dir),
        };
        let config = lxc_config(&w, &c, &rootfs)?;
        // The container's directory, as the plugin sees the work dir.
        let dir = format!("{WORK_DIR}/lxc/{}", h.name);
        std::fs::create_dir_all(&dir).map_err(fail)?;
        // A template's config comes first; ours overrides what it names.
        let base = std::fs::read_to_string(format!("{dir}/config")).unwrap_or_default();
        let base: String = base
            .lines()
            .filter(|l| !l.trim_start().starts_with("# era:") && !config.lines().any(|o| same_key(l, o)))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = if c.template.is_some() { format!("{base}# era: settings below\n{config}") } else { config };
        std::fs::write(format!("{dir}/config.tmp"), text).map_err(fail)?;
        std::fs::rename(format!("{dir}/config.tmp"), format!("{dir}/config")).map_err(fail)?;
        log::info(&format!("container {} configured in {}", h.name, h.lxcpath));
        Ok(h.text())
    }

    fn start(_w: Workload, handle: String) -> Result<String, Error> {
        let h = Handle::parse(&handle)?;
        match h.state()? {
            Some((s, _)) if s == "RUNNING" => return Ok(handle),
            None => return Err(Error::NotFound(format!("container {} is not installed", h.name))),
            _ => {}
        }
        let mut args: Vec<&str> = vec!["-d"];
        if !h.init.is_empty() {
            args.push("--");
            args.extend(h.init.iter().map(String::as_str));
        }
        let exit = h.lxc("lxc-start", &args)?;
        if exit.code != Some(0) {
            let log = std::fs::read_to_string(format!("{WORK_DIR}/logs/lxc.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_string();
            return Err(Error::Failed(format!("lxc-start {}: {} {last}", h.name, text(&exit.stderr))));
        }
        log::info(&format!("started {}", h.name));
        Ok(handle)
    }

    fn status(_w: Workload, handle: String) -> Result<Status, Error> {
        let h = Handle::parse(&handle)?;
        Ok(match h.state()? {
            Some((s, pid)) if s == "RUNNING" => {
                let mut st = Status::healthy(format!("{} running (pid {})", h.name, pid.unwrap_or(0)));
                st.outputs = vec![("pid".into(), pid.unwrap_or(0).to_string()), ("name".into(), h.name.clone())];
                st
            }
            Some((s, _)) => Status::exited(format!("{} is {s}", h.name), None),
            None => Status::missing(format!("{} does not exist", h.name)),
        })
    }

    fn stop(w: Workload, handle: String) -> Result<(), Error> {
        let h = Handle::parse(&handle)?;
        match h.state()? {
            None => return Ok(()),
            Some((s, _)) if s == "STOPPED" => return Ok(()),
            _ => {}
        }
        let grace = w.stop_grace_seconds.max(1).to_string();
        // lxc-stop asks init to shut down, and kills it after the timeout.
        let _ = h.lxc("lxc-stop", &["-t", &grace])?;
        if !h.wait_stopped(Duration::from_secs(2))? {
            h.lxc("lxc-stop", &["-k"])?;
            if !h.wait_stopped(Duration::from_secs(10))? {
                return Err(Error::Failed(format!("{} still runs after lxc-stop -k", h.name)));
            }
        }
        log::info(&format!("stopped {}", h.name));
        Ok(())
    }

    fn delete(w: Workload, handle: String) -> Result<(), Error> {
        let h = Handle::parse(&handle)?;
        if let Some((s, _)) = h.state()? {
            if s != "STOPPED" {
                h.lxc("lxc-stop", &["-k"])?;
                h.wait_stopped(Duration::from_secs(10))?;
            }
            // Our rootfs is the work dir's (erad removes it); only a
            // template's lives in the container dir, and lxc-destroy takes it.
            let _ = h.lxc("lxc-destroy", &[])?;
        }
        let _ = std::fs::remove_dir_all(format!("{WORK_DIR}/lxc"));
        let _ = w;
        Ok(())
    }
}

/// Whether two config lines set the same key.
fn same_key(a: &str, b: &str) -> bool {
    let key = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
    matches!((key(a), key(b)), (Some(x), Some(y)) if x == y && !x.starts_with('#'))
}

era_plugin_sdk::export_plugin!(Lxc);
