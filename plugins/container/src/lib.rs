//! `container`: OCI containers run by runc (or crun) on the host.
//!
//! erad unpacks the image into `<work dir>/rootfs` before `install`; this
//! plugin writes the OCI runtime bundle (`bundle/config.json`) from the image
//! config and the spec, and has the host run it through the `oci` capability
//! (the host checks the bundle against the operator's policy, picks the
//! container id and runs runc or crun under its own root and era-shim). The
//! workload's stdout and stderr go to `logs/output.log` in the work dir,
//! which `era logs` reads.
//!
//! - `install`: the bundle, checked by the host. `start`: create + start.
//! - `status`: the container's state. `stop`: SIGTERM, SIGKILL after the grace period.
//! - `delete`: delete by force. `exec`: a command inside the container.
//!   Every operation is idempotent.
//!
//! Config keys (anything else is refused by `validate`):
//! - `runtime`: `runc` (default) or `crun`
//! - `command`, `args`: replace the image's entrypoint and cmd
//! - `network`: `host` (default) or `none` (a private network namespace)
//! - `readOnlyRootfs`, `hostname`, `user` (`uid[:gid]` or a name in the image),
//!   `workingDir`, `memoryMiB`, `cpus`

use era_plugin_sdk::image::ImageConfig;
use era_plugin_sdk::oci::{self, Signal};
use era_plugin_sdk::{ArtifactKind, Error, ExecOutput, PluginInfo, Runtime, Status, WORK_DIR, Workload, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    runtime: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    network: Option<String>,
    #[serde(default)]
    read_only_rootfs: bool,
    hostname: Option<String>,
    user: Option<String>,
    working_dir: Option<String>,
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<u64>,
    cpus: Option<f64>,
}

impl Config {
    fn parse(w: &Workload) -> Result<Config, Error> {
        let text = if w.config.trim().is_empty() { "{}" } else { &w.config };
        let c: Config =
            serde_json::from_str(text).map_err(|e| Error::InvalidConfig(format!("container config: {e}")))?;
        if let Some(r) = &c.runtime
            && r != "runc"
            && r != "crun"
        {
            return Err(Error::InvalidConfig(format!("container config: runtime {r:?} is not runc or crun")));
        }
        if let Some(n) = &c.network
            && n != "host"
            && n != "none"
        {
            return Err(Error::InvalidConfig(format!("container config: network {n:?} is not host or none")));
        }
        if c.memory_mib == Some(0) {
            return Err(Error::InvalidConfig("container config: memoryMiB must be at least 1".into()));
        }
        if let Some(cpus) = c.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(Error::InvalidConfig(format!("container config: cpus {cpus} is out of range")));
        }
        Ok(c)
    }

    fn runtime(&self) -> &str {
        self.runtime.as_deref().unwrap_or("runc")
    }
}

/// What the host keeps for us between calls: which runtime made the
/// container (the host names the container itself).
#[derive(Serialize, Deserialize)]
struct Handle {
    runtime: String,
}

impl Handle {
    fn parse(text: &str) -> Handle {
        serde_json::from_str(text).unwrap_or_else(|_| Handle { runtime: "runc".into() })
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Looks `name` up in the image's `/etc/passwd` (or `/etc/group`): the id.
fn lookup(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("{WORK_DIR}/rootfs/etc/{file}")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

/// `uid[:gid]`, numeric or by name in the image.
fn user_ids(user: &str) -> Result<(u32, u32), Error> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse().ok().or_else(|| lookup("passwd", u)).ok_or_else(|| {
        Error::InvalidConfig(format!("user {u:?} is neither a number nor in the image's /etc/passwd"))
    })?;
    let gid = match g {
        Some(g) => g.parse().ok().or_else(|| lookup("group", g)).ok_or_else(|| {
            Error::InvalidConfig(format!("group {g:?} is neither a number nor in the image's /etc/group"))
        })?,
        None => {
            // The user's primary group, when the image names one.
            let text = std::fs::read_to_string(format!("{WORK_DIR}/rootfs/etc/passwd")).unwrap_or_default();
            text.lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok()).flatten()
                })
                .unwrap_or(0)
        }
    };
    Ok((uid, gid))
}

/// The OCI runtime config for this workload.
fn bundle_config(w: &Workload, c: &Config) -> Result<Value, Error> {
    let image = ImageConfig::of(w)?;
    let args = image.argv(c.command.as_deref(), c.args.as_deref());
    if args.is_empty() {
        return Err(Error::InvalidConfig(
            "the image has no entrypoint or cmd and the config gives no command: nothing to run".into(),
        ));
    }
    let env = image.env(w, &[("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")]);
    let img = image.config;
    let user = c.user.clone().or(img.user).filter(|u| !u.is_empty());
    let (uid, gid) = match &user {
        Some(u) => user_ids(u)?,
        None => (0, 0),
    };
    let cwd = c.working_dir.clone().or(img.working_dir).filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::InvalidConfig(format!("working dir {cwd:?} must be absolute")));
    }
    let mut config = oci::default_bundle(&w.work_dir, &args);
    let mut mounts = Vec::new();
    for v in &w.volumes {
        if !v.mount_path.starts_with('/') {
            return Err(Error::InvalidConfig(format!(
                "volume {} mount path {:?} must be absolute",
                v.name, v.mount_path
            )));
        }
        let mode = if v.read_only { "ro" } else { "rw" };
        mounts.push(
            json!({"destination": v.mount_path, "type": "bind", "source": v.host_path, "options": ["rbind", mode]}),
        );
    }
    if c.network.as_deref() != Some("none") {
        // The host's network: the container also sees the host's resolver.
        if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]}));
    }
    if let Some(m) = config["mounts"].as_array_mut() {
        m.extend(mounts);
    }
    let resources = &mut config["linux"]["resources"];
    if let Some(mib) = c.memory_mib {
        resources["memory"] = json!({"limit": mib * 1024 * 1024});
    }
    if let Some(cpus) = c.cpus {
        let period = 100_000u64;
        resources["cpu"] = json!({"quota": (cpus * period as f64) as i64, "period": period});
    }
    let process = &mut config["process"];
    process["user"] = json!({"uid": uid, "gid": gid});
    process["env"] = json!(env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>());
    process["cwd"] = json!(cwd);
    config["root"]["readonly"] = json!(c.read_only_rootfs);
    config["hostname"] = json!(c.hostname.clone().unwrap_or_else(|| w.deployment.clone()));
    Ok(config)
}

fn state(h: &Handle) -> Result<Option<oci::ContainerState>, Error> {
    Ok(oci::state(&h.runtime)?)
}

fn wait_stopped(h: &Handle, within: Duration) -> Result<bool, Error> {
    era_plugin_sdk::wait_until(within, || Ok(state(h)?.is_none_or(|s| s.status == "stopped")))
}

struct Container;

impl Runtime for Container {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "container".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "OCI containers with runc or crun, from the image erad unpacked".into(),
            runs_probes: false,
        }
    }

    fn validate(w: Workload) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        // The runtime must be one the operator granted (and installed).
        oci::version(c.runtime())?;
        // The image itself is not fetched yet at validation: its kind is known.
        if w.artifact.kind != ArtifactKind::Image && c.command.is_none() {
            return Err(Error::InvalidConfig(
                "the container runtime runs images: use an image artifact, or give config.command".into(),
            ));
        }
        Ok(())
    }

    fn install(w: Workload) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let config = bundle_config(&w, &c)?;
        oci::write_bundle(&config)?;
        // The host's policy has the last word; better to hear it now.
        oci::check(c.runtime())?;
        let h = Handle { runtime: c.runtime().into() };
        log::info(&format!("bundle for revision {} written and accepted ({} runs it)", w.revision, h.runtime));
        Ok(h.text())
    }

    fn start(_w: Workload, handle: String) -> Result<String, Error> {
        let h = Handle::parse(&handle);
        if state(&h)?.is_some_and(|s| s.status == "running") {
            return Ok(handle);
        }
        // Create and start in one runtime process; the host starts one it
        // finds created and makes a stopped (or half-made) one afresh.
        oci::run(&h.runtime)?;
        log::info("started");
        Ok(h.text())
    }

    fn status(_w: Workload, handle: String) -> Result<Status, Error> {
        let h = Handle::parse(&handle);
        Ok(match state(&h)? {
            Some(s) if s.status == "running" => {
                let pid = s.pid.unwrap_or(0);
                let mut st = Status::healthy(format!("{} running (pid {pid})", s.id));
                st.outputs = vec![("pid".into(), pid.to_string()), ("id".into(), s.id)];
                st
            }
            Some(s) => match s.exit_code {
                Some(c) => Status::exited(format!("{} is {} (exit code {c})", s.id, s.status), Some(c)),
                None => Status::exited(format!("{} is {}", s.id, s.status), None),
            },
            None => Status::missing("the container does not exist"),
        })
    }

    fn stop(w: Workload, handle: String) -> Result<(), Error> {
        let h = Handle::parse(&handle);
        match state(&h)? {
            None => return Ok(()),
            Some(s) if s.status == "stopped" => return Ok(()),
            Some(s) if s.status == "created" => return Ok(oci::delete(&h.runtime)?),
            _ => {}
        }
        oci::kill(&h.runtime, Signal::Term)?;
        if !wait_stopped(&h, Duration::from_secs(w.stop_grace_seconds.into()))? {
            log::warn(&format!("did not stop within {}s: SIGKILL", w.stop_grace_seconds));
            oci::kill(&h.runtime, Signal::Kill)?;
            if !wait_stopped(&h, Duration::from_secs(10))? {
                return Err(Error::Failed("the container still runs after SIGKILL".into()));
            }
        }
        log::info("stopped");
        Ok(())
    }

    fn delete(_w: Workload, handle: String) -> Result<(), Error> {
        let h = Handle::parse(&handle);
        oci::delete(&h.runtime)?;
        let _ = std::fs::remove_dir_all(format!("{WORK_DIR}/bundle"));
        Ok(())
    }

    fn exec(_w: Workload, handle: String, command: Vec<String>, timeout_ms: u32) -> Result<ExecOutput, Error> {
        let h = Handle::parse(&handle);
        Ok(oci::exec(&h.runtime, &command, timeout_ms)?)
    }
}

era_plugin_sdk::export_plugin!(Container);
