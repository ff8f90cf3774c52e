//! `lxc`: LXC containers, run by the host through the `lxc` capability: one
//! per revision, in erad's own lxcpath, never among the host's own
//! containers. The plugin turns the spec into config entries; the host checks
//! them against the operator's policy and adds the root filesystem (the image
//! erad unpacked into `<work dir>/rootfs`, or one an LXC template the
//! operator allowed makes: `config.template`), the console log
//! (`logs/output.log` in the work dir, which `era logs` reads), capabilities
//! and device rules.
//!
//! - `install`: the container config (and the template's rootfs).
//! - `start`: `lxc-start -d` with the image's command. `status`: `lxc-info`.
//! - `stop`: `lxc-stop` with the grace period, then kill. `delete`: destroy.
//! - `exec`: `lxc-attach`.
//!
//! Every operation is idempotent.
//!
//! Config keys (anything else is refused by `validate`):
//! - `template`, `templateArgs`: make the rootfs with an LXC template
//! - `command`, `args`: replace the image's entrypoint and cmd
//! - `network`: `{type: empty}` (default) or `{type: veth, link: BRIDGE}`
//! - `hostname`
//! - `memoryMiB`: a memory limit (set for cgroup v1 and v2 alike; LXC applies
//!   the one the host has)

use era_plugin_sdk::image::ImageConfig;
use era_plugin_sdk::{ArtifactKind, Error, ExecOutput, PluginInfo, Runtime, Status, WORK_DIR, Workload, log, lxc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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

/// What the host keeps for us: how the container starts (the host names it).
#[derive(Serialize, Deserialize)]
struct Handle {
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
}

/// `RUNNING`, `STOPPED`, ...; `None` when the container does not exist.
fn state() -> Result<Option<lxc::ContainerState>, Error> {
    Ok(lxc::state()?)
}

fn wait_stopped(within: Duration) -> Result<bool, Error> {
    era_plugin_sdk::wait_until(within, || Ok(state()?.is_none_or(|s| s.status == "STOPPED")))
}

/// A value for one line of LXC config: no newlines.
fn line(what: &str, v: &str) -> Result<String, Error> {
    if v.contains('\n') || v.contains('\r') {
        return Err(Error::InvalidConfig(format!("{what} {v:?} has a line break, which an LXC config cannot hold")));
    }
    Ok(v.to_string())
}

/// The container config entries for the host to check and write (the host
/// adds the rootfs, console log, capabilities and device rules itself).
fn lxc_config(w: &Workload, c: &Config) -> Result<Vec<(String, String)>, Error> {
    let mut e: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| e.push((k.to_string(), v));
    set("lxc.uts.name", line("hostname", c.hostname.as_deref().unwrap_or(&w.deployment))?);
    set("lxc.autodev", "1".into());
    set("lxc.pty.max", "4".into());
    set("lxc.tty.max", "0".into());
    set("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed".into());
    set("lxc.log.level", "WARN".into());
    if let Some(mib) = c.memory_mib {
        let bytes = mib * 1024 * 1024;
        set("lxc.cgroup.memory.limit_in_bytes", bytes.to_string());
        set("lxc.cgroup2.memory.max", bytes.to_string());
    }
    match c.network.kind.as_deref().unwrap_or("empty") {
        "veth" => {
            set("lxc.net.0.type", "veth".into());
            set("lxc.net.0.link", c.network.link.clone().unwrap_or_default());
            set("lxc.net.0.flags", "up".into());
        }
        _ => set("lxc.net.0.type", "empty".into()),
    }
    for (k, v) in ImageConfig::of(w)?.env(w, &[]) {
        set("lxc.environment", line("env", &format!("{k}={v}"))?);
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
        set("lxc.mount.entry", format!("{} {target} none bind,create=dir{ro} 0 0", v.host_path));
    }
    Ok(e)
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
            runs_probes: false,
        }
    }

    fn validate(w: Workload) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        lxc::version()?;
        if w.artifact.kind != ArtifactKind::Image && c.template.is_none() {
            return Err(Error::InvalidConfig(
                "the lxc runtime needs a root filesystem: use an image artifact, or give config.template".into(),
            ));
        }
        Ok(())
    }

    fn install(w: Workload) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let h = Handle { init: init_command(&w, &c)? };
        std::fs::create_dir_all(format!("{WORK_DIR}/logs"))
            .map_err(|e| Error::Failed(format!("creating the log dir: {e}")))?;
        if let Some(t) = &c.template {
            lxc::create_from_template(t, &c.template_args)?;
        }
        lxc::configure(&lxc_config(&w, &c)?)?;
        log::info(&format!("container for revision {} configured", w.revision));
        Ok(h.text())
    }

    fn start(_w: Workload, handle: String) -> Result<String, Error> {
        let h = Handle::parse(&handle)?;
        // The host leaves a running container alone and says NotFound for
        // one that was never configured: no state call of our own.
        lxc::start(&h.init)?;
        log::info("started");
        Ok(handle)
    }

    fn status(_w: Workload, handle: String) -> Result<Status, Error> {
        Handle::parse(&handle)?;
        Ok(match state()? {
            Some(s) if s.status == "RUNNING" => {
                let pid = s.pid.unwrap_or(0);
                let mut st = Status::healthy(format!("{} running (pid {pid})", s.name));
                st.outputs = vec![("pid".into(), pid.to_string()), ("name".into(), s.name)];
                st
            }
            Some(s) => Status::exited(format!("{} is {}", s.name, s.status), None),
            None => Status::missing("the container does not exist"),
        })
    }

    fn stop(w: Workload, handle: String) -> Result<(), Error> {
        Handle::parse(&handle)?;
        match state()? {
            None => return Ok(()),
            Some(s) if s.status == "STOPPED" => return Ok(()),
            _ => {}
        }
        // lxc-stop asks init to shut down, and kills it after the timeout.
        lxc::stop(w.stop_grace_seconds.max(1))?;
        if !wait_stopped(Duration::from_secs(2))? {
            lxc::kill()?;
            if !wait_stopped(Duration::from_secs(10))? {
                return Err(Error::Failed("the container still runs after a kill".into()));
            }
        }
        log::info("stopped");
        Ok(())
    }

    fn delete(_w: Workload, _handle: String) -> Result<(), Error> {
        lxc::destroy()?;
        Ok(())
    }

    fn exec(_w: Workload, _handle: String, command: Vec<String>, timeout_ms: u32) -> Result<ExecOutput, Error> {
        Ok(lxc::attach(&command, timeout_ms)?)
    }
}

era_plugin_sdk::export_plugin!(Lxc);
