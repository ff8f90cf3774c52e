//! `proxmox`: each revision as a Proxmox VE guest, a QEMU virtual machine or
//! an LXC container, through the PVE API (`/api2/json`) of an endpoint the
//! operator granted (`grants.http`, with a `pve_token_id`). erad holds the
//! API token and adds it to every request; this plugin never sees it.
//!
//! - `install`: a VMID from `/cluster/nextid` (written to the work dir at
//!   once, before anything is made with it), then a clone of
//!   `config.template` (QEMU or LXC) or, for LXC, a container created from
//!   `config.ostemplate`; then its config (cores, memory, network, cloud-init,
//!   tags) and the boot disk resized to `config.diskGiB`. Every call that
//!   answers with a task (UPID) is followed through
//!   `/nodes/{node}/tasks/{upid}/status` until it stops; an exit status other
//!   than `OK` (or `WARNINGS: n`) fails the step with it. A VMID another
//!   client took between nextid and the clone is retried with the next one.
//!   After a crash the VMID in the work dir leads back to the guest: a guest
//!   with that VMID and this revision's name is ours and is not cloned again.
//! - `start`: `status/start`. `stop`: `status/shutdown` with the spec's
//!   grace period, then `status/stop`. `delete`: a stop, then `DELETE` with
//!   `purge=1&destroy-unreferenced-disks=1`; a guest already gone is done.
//! - `status`: `status/current`; a QEMU guest with the agent enabled is
//!   healthy once the agent reports its addresses (`agent/network-get-interfaces`),
//!   an LXC container once it runs (addresses from `interfaces`). Outputs:
//!   vmid, node, type, ip, ips.
//! - Identity handoff (`config.discovery`, QEMU): the deployment, revision
//!   and discovery URL go into the VM's SMBIOS serial (`smbios1`, base64 JSON),
//!   which the guest reads from `/sys/class/dmi/id/product_serial`, so a VM
//!   can run its own erad and pull its spec.
//!
//! Errors as PVE answers them: 401 (the token) and 403 (a permission) and
//! 400 (a parameter, named) are configuration problems; "does not exist" is
//! not-found; a locked guest, 5xx from a proxy (502-504, 595, 596) are
//! `unavailable`, which erad retries. Only the `message` and `errors` of a
//! PVE JSON answer are quoted, never another body.
//!
//! Config keys (anything else is refused by `validate`): `endpoint`, `node`
//! (required), `type` (`qemu`, default, or `lxc`), `template` (a VMID) or
//! `ostemplate` (LXC), `full` (full clone, default true), `storage`, `cores`,
//! `memoryMiB`, `disk` (QEMU, default `scsi0`), `diskGiB`, `bridge` (default
//! `vmbr0`), `vlan`, `ip` (LXC `net0` ip, default `dhcp`), `tags`, `agent`
//! (QEMU guest agent, default true), `cloudInit` (QEMU: `user`, `sshKeys`,
//! `ipconfig0`, `nameserver`, `searchdomain`), `discovery`, `hostname` (the
//! guest's name and hostname instead of `NAME-REV`; a QEMU VM's cloud-init
//! takes its hostname from the name).

use era_plugin_sdk::http::{self, Request, Response};
use era_plugin_sdk::{Error, ExecOutput, Health, PluginInfo, Probe, Runtime, Status, Workload, log, state};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Qemu,
    Lxc,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Qemu => "qemu",
            Kind::Lxc => "lxc",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CloudInit {
    user: Option<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
    ipconfig0: Option<String>,
    nameserver: Option<String>,
    searchdomain: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    endpoint: Option<String>,
    node: String,
    #[serde(rename = "type", default)]
    kind: Kind,
    template: Option<u32>,
    ostemplate: Option<String>,
    full: Option<bool>,
    storage: Option<String>,
    cores: Option<u32>,
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<u32>,
    disk: Option<String>,
    #[serde(rename = "diskGiB")]
    disk_gib: Option<u32>,
    bridge: Option<String>,
    vlan: Option<u16>,
    ip: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    agent: Option<bool>,
    cloud_init: Option<CloudInit>,
    discovery: Option<String>,
    hostname: Option<String>,
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`: a PVE node name, and each label
/// of a DNS name.
fn label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// PVE's `pve-tag`: `[a-z0-9_][a-z0-9_\-+.]*` (case-insensitive).
fn tag(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.'))
}

/// `pve-storage-id`: `[a-z][a-z0-9\-_.]*[a-z0-9]` (case-insensitive).
fn storage_id(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A QEMU disk PVE can resize.
fn qemu_disk(s: &str) -> bool {
    let max = |prefix: &str, n: u32| s.strip_prefix(prefix).and_then(|i| i.parse::<u32>().ok()).is_some_and(|i| i <= n);
    max("scsi", 30) || max("virtio", 15) || max("sata", 5) || max("ide", 3)
}

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidConfig(m.into())
}

impl Config {
    fn parse(w: &Workload) -> Result<Config, Error> {
        let text = if w.config.trim().is_empty() { "{}" } else { &w.config };
        let c: Config = serde_json::from_str(text).map_err(|e| invalid(format!("proxmox config: {e}")))?;
        if !label(&c.node) {
            return Err(invalid(format!("config.node: {:?} is not a Proxmox VE node name", c.node)));
        }
        match (c.kind, c.template, &c.ostemplate) {
            (_, Some(_), Some(_)) => return Err(invalid("config: give template or ostemplate, not both")),
            (Kind::Qemu, _, Some(_)) => {
                return Err(invalid(
                    "config.ostemplate makes LXC containers; a QEMU VM is cloned from config.template",
                ));
            }
            (Kind::Qemu, None, None) => return Err(invalid("config.template: the VMID of the VM template to clone")),
            (Kind::Lxc, None, None) => {
                return Err(invalid("config: an LXC container needs template (a VMID) or ostemplate (a volume)"));
            }
            _ => {}
        }
        if let Some(t) = c.template
            && !(100..=999_999_999).contains(&t)
        {
            return Err(invalid(format!("config.template: {t} is not a VMID (100 to 999999999)")));
        }
        if let Some(o) = &c.ostemplate
            && (o.len() > 255 || !o.contains(':') || o.contains(','))
        {
            return Err(invalid(format!("config.ostemplate: {o:?} is not a volume (storage:vztmpl/file)")));
        }
        if let Some(s) = &c.storage
            && !storage_id(s)
        {
            return Err(invalid(format!("config.storage: {s:?} is not a storage id")));
        }
        match (c.kind, c.cores) {
            (_, Some(0)) => return Err(invalid("config.cores: at least 1")),
            (Kind::Lxc, Some(n)) if n > 8192 => return Err(invalid("config.cores: at most 8192 for a container")),
            _ => {}
        }
        if c.memory_mib.is_some_and(|m| m < 16) {
            return Err(invalid("config.memoryMiB: at least 16"));
        }
        if c.disk_gib == Some(0) {
            return Err(invalid("config.diskGiB: at least 1"));
        }
        if let Some(d) = &c.disk {
            if c.kind == Kind::Lxc {
                return Err(invalid("config.disk: an LXC container's disk is its rootfs; leave disk out"));
            }
            if !qemu_disk(d) {
                return Err(invalid(format!(
                    "config.disk: {d:?} is not a disk (scsi0-30, virtio0-15, sata0-5, ide0-3)"
                )));
            }
        }
        if !c.bridge().bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(invalid(format!("config.bridge: {:?} is not a bridge name", c.bridge())));
        }
        if c.vlan.is_some_and(|v| !(1..=4094).contains(&v)) {
            return Err(invalid("config.vlan: 1 to 4094"));
        }
        if let Some(ip) = &c.ip {
            if c.kind == Kind::Qemu {
                return Err(invalid("config.ip is an LXC container's; a VM's address is cloudInit.ipconfig0"));
            }
            if ip.contains([',', '=']) {
                return Err(invalid(format!("config.ip: {ip:?}: dhcp, manual or ADDRESS/PREFIX")));
            }
        }
        if let Some(t) = c.tags.iter().find(|t| !tag(t)) {
            return Err(invalid(format!("config.tags: {t:?} is not a Proxmox VE tag")));
        }
        if c.kind == Kind::Lxc && (c.agent.is_some() || c.cloud_init.is_some() || c.discovery.is_some()) {
            return Err(invalid(
                "config.agent, cloudInit and discovery are for QEMU VMs (PVE 8's API passes no data into an LXC container)",
            ));
        }
        if let Some(ci) = &c.cloud_init {
            if let Some(u) = &ci.user
                && (u.is_empty() || u.contains(char::is_whitespace))
            {
                return Err(invalid(format!("config.cloudInit.user: {u:?}")));
            }
            if let Some(k) = ci.ssh_keys.iter().find(|k| k.trim().is_empty() || k.contains('\n')) {
                return Err(invalid(format!("config.cloudInit.sshKeys: {k:?} is not one public key")));
            }
            if let Some(ipc) = &ci.ipconfig0
                && !ipc.split(',').all(|kv| {
                    kv.split_once('=').is_some_and(|(k, v)| matches!(k, "ip" | "gw" | "ip6" | "gw6") && !v.is_empty())
                })
            {
                return Err(invalid(format!(
                    "config.cloudInit.ipconfig0: {ipc:?} is not ip=...,gw=...,ip6=...,gw6=... (ip=dhcp for DHCP)"
                )));
            }
        }
        if let Some(d) = &c.discovery
            && !(d.starts_with("https://") || d.starts_with("http://"))
        {
            return Err(invalid(format!("config.discovery: {d:?} is not an http(s) URL")));
        }
        if let Some(h) = &c.hostname
            && (h.len() > 253 || !h.split('.').all(label))
        {
            return Err(invalid(format!(
                "config.hostname: {h:?} is not a DNS name (labels of letters, digits and '-', each at most 63, joined by '.')"
            )));
        }
        // It goes base64-encoded into smbios1, which PVE caps at 512 characters.
        if c.discovery.as_ref().is_some_and(|d| d.len() > 200) {
            return Err(invalid("config.discovery: at most 200 characters"));
        }
        Ok(c)
    }

    fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or("vmbr0")
    }

    fn agent(&self) -> bool {
        self.kind == Kind::Qemu && self.agent.unwrap_or(true)
    }
}

/// The guest's name (QEMU `name`, which cloud-init makes the VM's hostname;
/// LXC `hostname`): `config.hostname`, or `NAME-REV`.
fn guest_name(w: &Workload, c: &Config) -> Result<String, Error> {
    if let Some(h) = &c.hostname {
        return Ok(h.clone());
    }
    let name = format!("{}-{}", w.deployment, w.revision);
    if name.len() > 63 || !label(&name) {
        return Err(invalid(format!(
            "the guest would be named {name:?}, which is not a DNS label: use a deployment name of letters, digits and '-'"
        )));
    }
    Ok(name)
}

/// What `install` made.
#[derive(Serialize, Deserialize, Clone)]
struct Handle {
    endpoint: String,
    node: String,
    #[serde(rename = "type")]
    kind: Kind,
    vmid: u32,
    /// The random mark this install wrote into the guest's description:
    /// a guest without it is not ours (someone reused the VMID, another
    /// erad has a deployment of the same name), and is never touched.
    mark: String,
}

/// The work dir's record of an install under way: the VMID as soon as it is
/// allocated, the task that makes the guest, and the guest's mark.
#[derive(Serialize, Deserialize, Default)]
struct Progress {
    vmid: Option<u32>,
    upid: Option<String>,
    mark: String,
}

/// A fresh random mark (128 bits, from WASI's random source).
fn new_mark() -> String {
    use std::hash::{BuildHasher, RandomState};
    let (a, b) = (RandomState::new().hash_one(1u8), RandomState::new().hash_one(2u8));
    format!("{a:016x}{b:016x}")
}

/// How the mark reads in a description.
fn mark_line(mark: &str) -> String {
    format!("era-mark: {mark}")
}

const PROGRESS: &str = "proxmox.json";

impl Handle {
    /// The handle `install` returned; without one (a failed or cut-off
    /// install), the VMID the work dir recorded, if any.
    fn of(text: &str, w: &Workload) -> Result<Option<Handle>, Error> {
        if !text.trim().is_empty() {
            return serde_json::from_str(text)
                .map(Some)
                .map_err(|e| Error::Failed(format!("proxmox handle {text:?}: {e}")));
        }
        let c = Config::parse(w)?;
        let progress: Progress = state::read(PROGRESS).map_err(Error::Failed)?.unwrap_or_default();
        Ok(progress.vmid.map(|vmid| Handle {
            endpoint: http::endpoint(c.endpoint.as_deref()).map(|e| e.name).unwrap_or_default(),
            node: c.node.clone(),
            kind: c.kind,
            vmid,
            mark: progress.mark.clone(),
        }))
    }
}

/// The PVE API of one granted endpoint.
struct Api {
    endpoint: http::Endpoint,
}

/// A PVE error, as read from its answer.
struct PveError {
    status: u16,
    message: String,
}

/// encodeURIComponent, as PVE wants `sshkeys`.
fn uri_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Api {
    fn new(endpoint: Option<&str>) -> Result<Api, Error> {
        Ok(Api { endpoint: http::endpoint(endpoint)? })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.url.trim_end_matches('/'))
    }

    /// One request; the `data` of a 2xx answer, or PVE's error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Result<Value, PveError>, Error> {
        let mut req = Request::new(method, self.url(path)).header("accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = http::send(&req.header("user-agent", "era-proxmox"))?;
        if (200..300).contains(&r.status) {
            let v: Value = r.json()?;
            return Ok(Ok(v.get("data").cloned().unwrap_or(Value::Null)));
        }
        Ok(Err(pve_error(&r)))
    }

    /// [`Api::call`] with PVE's errors as plugin errors naming what was asked.
    fn ask(&self, method: &str, path: &str, body: Option<&Value>, what: &str) -> Result<Value, Error> {
        self.call(method, path, body)?.map_err(|e| self.error(e, what))
    }

    fn error(&self, e: PveError, what: &str) -> Error {
        let said = format!("endpoint {}: {what}: {} {}", self.endpoint.name, e.status, e.message);
        let m = e.message.to_ascii_lowercase();
        match e.status {
            401 => invalid(format!("{said} (the Proxmox VE API refused the API token erad sent)")),
            400 | 403 => invalid(said),
            _ if m.contains("does not exist") => Error::NotFound(said),
            _ if m.contains("is locked") || m.contains("got timeout") => Error::Unavailable(said),
            502..=504 | 595 | 596 => Error::Unavailable(said),
            _ => Error::Failed(said),
        }
    }

    fn guest_path(h: &Handle, rest: &str) -> String {
        format!("/nodes/{}/{}/{}{rest}", h.node, h.kind.as_str(), h.vmid)
    }

    /// Follows a task until it stops; its exit status other than OK (or
    /// warnings) is the error.
    fn wait_task(&self, node: &str, upid: &str, what: &str) -> Result<(), Error> {
        let path = format!("/nodes/{node}/tasks/{upid}/status");
        // Every 0.1 s at first, then less often (up to every 2 s): a clone
        // of a large disk takes minutes. The call's own deadline ends a
        // task that never stops.
        let mut pause = Duration::from_millis(100);
        let status = loop {
            let status = self.ask("GET", &path, None, &format!("{what}: task status"))?;
            if status["status"] == "stopped" {
                break status;
            }
            std::thread::sleep(pause);
            pause = (pause * 3 / 2).min(Duration::from_secs(2));
        };
        let exit = status["exitstatus"].as_str().unwrap_or("unexpected status");
        if exit == "OK" || exit.starts_with("WARNINGS:") {
            return Ok(());
        }
        let said = format!("endpoint {}: {what}: task {upid} failed: {exit}", self.endpoint.name);
        Err(if exit.contains("already exists") { Error::Unavailable(said) } else { Error::Failed(said) })
    }

    /// A request answered with a task, followed to its end.
    fn run_task(&self, method: &str, path: &str, body: Option<&Value>, node: &str, what: &str) -> Result<(), Error> {
        match self.ask(method, path, body, what)? {
            Value::String(upid) => self.wait_task(node, &upid, what),
            // Some calls finish at once (PVE 7's resize answered null).
            _ => Ok(()),
        }
    }

    /// The guest's `status/current`; None when it does not exist.
    fn current(&self, h: &Handle) -> Result<Option<Value>, Error> {
        match self.ask("GET", &Api::guest_path(h, "/status/current"), None, &format!("guest {}", h.vmid)) {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn config(&self, h: &Handle) -> Result<Option<Map<String, Value>>, Error> {
        match self.ask("GET", &Api::guest_path(h, "/config"), None, &format!("config of guest {}", h.vmid)) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(other) => Err(Error::Failed(format!("config of guest {}: not an object: {other}", h.vmid))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn next_id(&self) -> Result<u32, Error> {
        // PVE answers a string ("100"), its schema says integer: take both.
        let v = self.ask("GET", "/cluster/nextid", None, "next free VMID")?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Failed(format!("/cluster/nextid answered {v}")))
    }
}

/// PVE's JSON error (`message`, per-parameter `errors`); any other body is
/// described, not quoted (it could echo the credential erad added).
fn pve_error(r: &Response) -> PveError {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let mut message = v["message"].as_str().map(|m| m.trim().to_string()).unwrap_or_default();
    if let Some(errors) = v["errors"].as_object() {
        let each: Vec<String> =
            errors.iter().map(|(k, e)| format!("{k}: {}", e.as_str().unwrap_or_default().trim())).collect();
        message = format!("{message} {}", each.join("; "));
    }
    if message.is_empty() {
        message = match r.body.len() {
            0 => "(no message)".into(),
            n => format!("(a response of {n} bytes that is not a PVE error)"),
        };
    }
    PveError { status: r.status, message: message.chars().take(1000).collect() }
}

/// The guest config a revision sets after the clone or create; `smbios1`
/// is the guest's current one (its uuid is kept).
fn guest_config(w: &Workload, c: &Config, mark: &str, smbios1: Option<&str>) -> Result<Value, Error> {
    let mut tags = vec!["era".to_string(), w.deployment.to_ascii_lowercase()];
    tags.extend(c.tags.iter().map(|t| t.to_ascii_lowercase()));
    tags.sort();
    tags.dedup();
    let vlan = c.vlan.map(|v| format!(",tag={v}")).unwrap_or_default();
    let mut m = Map::new();
    m.insert("tags".into(), json!(tags.join(";")));
    m.insert(
        "description".into(),
        json!(format!(
            "era deployment {} revision {} ({} {})\n{}",
            w.deployment,
            w.revision,
            w.artifact.reference,
            w.artifact.digest,
            mark_line(mark)
        )),
    );
    if let Some(n) = c.cores {
        m.insert("cores".into(), json!(n));
    }
    if let Some(n) = c.memory_mib {
        m.insert("memory".into(), json!(n));
    }
    match c.kind {
        Kind::Qemu => {
            m.insert("net0".into(), json!(format!("virtio,bridge={}{vlan}", c.bridge())));
            m.insert("agent".into(), json!(if c.agent() { "1" } else { "0" }));
            if let Some(ci) = &c.cloud_init {
                if let Some(u) = &ci.user {
                    m.insert("ciuser".into(), json!(u));
                }
                if !ci.ssh_keys.is_empty() {
                    m.insert("sshkeys".into(), json!(uri_component(&ci.ssh_keys.join("\n"))));
                }
                for (k, v) in
                    [("ipconfig0", &ci.ipconfig0), ("nameserver", &ci.nameserver), ("searchdomain", &ci.searchdomain)]
                {
                    if let Some(v) = v {
                        m.insert(k.into(), json!(v));
                    }
                }
            }
            if let Some(d) = &c.discovery {
                use base64::Engine;
                let identity = json!({"deployment": w.deployment, "revision": w.revision, "discovery": d});
                let b64 = base64::engine::general_purpose::STANDARD.encode(identity.to_string());
                // The clone's uuid (and whatever else is set) stays; only
                // the serial is ours. With base64=1 PVE reads every text
                // value as base64.
                let mut parts: Vec<String> = smbios1
                    .unwrap_or_default()
                    .split(',')
                    .filter(|p| !p.is_empty() && !p.starts_with("serial=") && !p.starts_with("base64="))
                    .map(str::to_string)
                    .collect();
                parts.push(format!("serial={b64}"));
                parts.push("base64=1".into());
                m.insert("smbios1".into(), json!(parts.join(",")));
            }
        }
        Kind::Lxc => {
            let ip = c.ip.as_deref().unwrap_or("dhcp");
            m.insert("net0".into(), json!(format!("name=eth0,bridge={},ip={ip}{vlan}", c.bridge())));
        }
    }
    Ok(Value::Object(m))
}

/// A disk's `size=` in GiB from its config string (`local-lvm:vm-100-disk-0,size=32G`).
fn disk_gib(spec: &str) -> Option<f64> {
    let size = spec.split(',').find_map(|kv| kv.strip_prefix("size="))?;
    let (num, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(size.len()));
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "T" => n * 1024.0,
        "G" => n,
        "M" => n / 1024.0,
        "K" => n / 1024.0 / 1024.0,
        _ => n / 1024.0 / 1024.0 / 1024.0,
    })
}

/// Makes the guest (clone or create) under a fresh VMID, or finds the one a
/// crashed install made. Returns its handle.
fn make_guest(api: &Api, w: &Workload, c: &Config, name: &str) -> Result<Handle, Error> {
    let handle = |vmid, mark: &str| Handle {
        endpoint: api.endpoint.name.clone(),
        node: c.node.clone(),
        kind: c.kind,
        vmid,
        mark: mark.to_string(),
    };
    let mut progress: Progress = state::read(PROGRESS).map_err(Error::Failed)?.unwrap_or_default();
    if let Some(vmid) = progress.vmid {
        let h = handle(vmid, &progress.mark);
        // Made (or being made) before the crash: PVE writes the new guest's
        // config only at the end of its task (until then it is a lock), so
        // wait for the task, or for the lock to go, before looking.
        if let Some(upid) = &progress.upid {
            api.wait_task(&c.node, upid, &format!("making guest {vmid}"))?;
        }
        if settled_config(api, &h)?.is_some_and(|cfg| marked(&cfg, &h.mark)) {
            log::info(&format!("guest {vmid} ({name}) was made before; not made again"));
            return Ok(h);
        }
    }
    let mut last = None;
    for _ in 0..5 {
        let vmid = api.next_id()?;
        progress = Progress { vmid: Some(vmid), upid: None, mark: new_mark() };
        state::write(PROGRESS, &progress).map_err(Error::Failed)?;
        let full = c.full.unwrap_or(true);
        let description = format!("era deployment {}\n{}", w.deployment, mark_line(&progress.mark));
        let (path, mut body) = match (c.kind, c.template, &c.ostemplate) {
            (Kind::Qemu, Some(t), _) => (
                format!("/nodes/{}/qemu/{t}/clone", c.node),
                json!({"newid": vmid, "name": name, "full": full, "description": description}),
            ),
            (Kind::Lxc, Some(t), _) => (
                format!("/nodes/{}/lxc/{t}/clone", c.node),
                json!({"newid": vmid, "hostname": name, "full": full, "description": description}),
            ),
            (_, None, Some(os)) => {
                let mut b = json!({"vmid": vmid, "ostemplate": os, "hostname": name, "description": description,
                    "unprivileged": true, "net0": format!("name=eth0,bridge={},ip=dhcp", c.bridge())});
                if let Some(g) = c.disk_gib {
                    b["rootfs"] = json!(format!("{}:{g}", c.storage.as_deref().unwrap_or("local-lvm")));
                }
                (format!("/nodes/{}/lxc", c.node), b)
            }
            _ => return Err(invalid("config: no template or ostemplate")),
        };
        if let Some(s) = &c.storage {
            body["storage"] = json!(s);
        }
        let what = format!("making guest {vmid} ({name})");
        match api.call("POST", &path, Some(&body))? {
            Ok(Value::String(upid)) => {
                progress.upid = Some(upid.clone());
                state::write(PROGRESS, &progress).map_err(Error::Failed)?;
                match api.wait_task(&c.node, &upid, &what) {
                    // Another client took the VMID first (found only by the task).
                    Err(Error::Unavailable(m)) if m.contains("already exists") => last = Some(m),
                    Err(e) => return Err(e),
                    Ok(()) => return Ok(handle(vmid, &progress.mark)),
                }
            }
            Ok(other) => return Err(Error::Failed(format!("{what}: PVE answered {other}, not a task"))),
            // Taken between nextid and the request: the next free one.
            Err(e) if e.message.contains("already exists") => last = Some(e.message),
            Err(e) => return Err(api.error(e, &what)),
        }
        log::warn(&format!("VMID {vmid} was taken by another client; asking for the next free one"));
    }
    Err(Error::Unavailable(format!(
        "endpoint {}: every VMID /cluster/nextid offered was taken before the guest was made: {}",
        api.endpoint.name,
        last.unwrap_or_default()
    )))
}

/// Whether a guest's config carries this install's mark.
fn marked(cfg: &Map<String, Value>, mark: &str) -> bool {
    !mark.is_empty()
        && cfg.get("description").and_then(Value::as_str).is_some_and(|d| d.lines().any(|l| l == mark_line(mark)))
}

/// Whether the guest with this VMID exists and carries this install's mark.
fn is_ours(api: &Api, h: &Handle) -> Result<bool, Error> {
    Ok(api.config(h)?.is_some_and(|cfg| marked(&cfg, &h.mark)))
}

/// The guest's config once no task holds its lock (PVE writes a new guest's
/// config at the end of its clone or create); None if there is no guest.
fn settled_config(api: &Api, h: &Handle) -> Result<Option<Map<String, Value>>, Error> {
    let mut cfg = None;
    era_plugin_sdk::wait_until(Duration::from_secs(3600), || {
        cfg = api.config(h)?;
        Ok::<_, Error>(cfg.as_ref().is_none_or(|c| !c.contains_key("lock")))
    })?;
    Ok(cfg)
}

/// Sets the revision's config and grows the boot disk to `diskGiB`.
fn configure(api: &Api, h: &Handle, w: &Workload, c: &Config) -> Result<(), Error> {
    let what = format!("configuring guest {}", h.vmid);
    // What the guest has now, when something is merged or compared with it.
    let cfg = match c.disk_gib.is_some() || c.discovery.is_some() {
        true => api.config(h)?.ok_or_else(|| Error::NotFound(format!("guest {} is gone", h.vmid)))?,
        false => Map::new(),
    };
    let smbios1 = cfg.get("smbios1").and_then(Value::as_str);
    api.ask("PUT", &Api::guest_path(h, "/config"), Some(&guest_config(w, c, &h.mark, smbios1)?), &what)?;
    let Some(want) = c.disk_gib else { return Ok(()) };
    let disk = match c.kind {
        Kind::Qemu => c.disk.as_deref().unwrap_or("scsi0"),
        Kind::Lxc => "rootfs",
    };
    let have = cfg.get(disk).and_then(Value::as_str).and_then(disk_gib);
    match have {
        None => Err(invalid(format!("config.disk: guest {} has no disk {disk} with a size", h.vmid))),
        Some(g) if g >= f64::from(want) => Ok(()),
        Some(_) => api.run_task(
            "PUT",
            &Api::guest_path(h, "/resize"),
            Some(&json!({"disk": disk, "size": format!("{want}G")})),
            &h.node,
            &format!("resizing {disk} of guest {} to {want} GiB", h.vmid),
        ),
    }
}

/// The guest's addresses: from the QEMU agent or the container's interfaces.
/// None while the agent does not answer.
fn addresses(api: &Api, h: &Handle, c: &Config) -> Result<Option<Vec<String>>, Error> {
    let (path, list) = match h.kind {
        Kind::Qemu => ("/agent/network-get-interfaces", "result"),
        Kind::Lxc => ("/interfaces", ""),
    };
    let v = match api.ask("GET", &Api::guest_path(h, path), None, &format!("addresses of guest {}", h.vmid)) {
        Ok(v) => v,
        // The agent is not up yet (or not configured), or the guest just
        // stopped: no addresses yet.
        Err(Error::Failed(m)) if h.kind == Kind::Qemu && (m.contains("agent") || m.contains("not running")) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let ifaces = if list.is_empty() { &v } else { &v[list] };
    let Some(ifaces) = ifaces.as_array() else {
        // LXC answers null for a container that is not running yet.
        return Ok(if c.kind == Kind::Lxc { Some(Vec::new()) } else { None });
    };
    let mut ips = Vec::new();
    for i in ifaces.iter().filter(|i| i["name"] != "lo") {
        for a in i["ip-addresses"].as_array().into_iter().flatten() {
            let ip = a["ip-address"].as_str().unwrap_or_default();
            if !ip.is_empty() && !ip.starts_with("127.") && ip != "::1" && !ip.starts_with("fe80:") {
                ips.push(ip.to_string());
            }
        }
        // Containers before pve-container 5.2.6 list only inet/inet6.
        if let Some(inet) = i["inet"].as_str().and_then(|s| s.split('/').next())
            && !ips.iter().any(|x| x == inet)
        {
            ips.push(inet.to_string());
        }
    }
    Ok(Some(ips))
}

struct Proxmox;

impl Runtime for Proxmox {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "proxmox".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "a Proxmox VE virtual machine or LXC container per revision, through a granted PVE API endpoint".into(),
            runs_probes: true,
        }
    }

    fn validate(w: Workload) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        Api::new(c.endpoint.as_deref())?;
        guest_name(&w, &c)?;
        if !tag(&w.deployment) {
            return Err(invalid(format!("the deployment name {:?} is not a Proxmox VE tag", w.deployment)));
        }
        if !w.volumes.is_empty() {
            return Err(invalid("spec.volumes are host directories; a Proxmox VE guest cannot mount them"));
        }
        if !w.ports.is_empty() {
            return Err(invalid("spec.ports: a Proxmox VE guest has its own address (see era get's outputs)"));
        }
        if !w.env.is_empty() {
            return Err(invalid("spec.env: PVE's API passes no environment into a guest; use config.cloudInit"));
        }
        // erad runs an http or tcp probe aimed at the guest's address from
        // the host; nothing can run one aimed at this host's loopback or an
        // exec inside the guest.
        let local = |host: &str| host == "localhost" || host.starts_with("127.") || host == "::1";
        let unrunnable = match w.health.as_ref().and_then(|h| h.probe.as_ref()) {
            Some(Probe::Http(p)) => local(&p.host),
            Some(Probe::Tcp(t)) => local(&t.host),
            Some(Probe::Exec(_)) => true,
            None => false,
        };
        if unrunnable {
            return Err(invalid(
                "spec.health: a guest is healthy when it runs (and, for a VM, its agent answers); an http or tcp probe must name the guest's address (host:), and exec probes are not run",
            ));
        }
        Ok(())
    }

    fn install(w: Workload) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let api = Api::new(c.endpoint.as_deref())?;
        let name = guest_name(&w, &c)?;
        let h = make_guest(&api, &w, &c, &name)?;
        configure(&api, &h, &w, &c)?;
        log::info(&format!("guest {} ({name}) on {} is ready", h.vmid, h.node));
        serde_json::to_string(&h).map_err(|e| Error::Failed(e.to_string()))
    }

    fn start(w: Workload, handle: String) -> Result<String, Error> {
        let h = Handle::of(&handle, &w)?.ok_or_else(|| Error::NotFound("no guest was made".into()))?;
        let api = Api::new(Some(&h.endpoint))?;
        let cur = api.current(&h)?.ok_or_else(|| Error::NotFound(format!("guest {} does not exist", h.vmid)))?;
        if !is_ours(&api, &h)? {
            return Err(Error::NotFound(format!("guest {} is no longer the one this revision made", h.vmid)));
        }
        if cur["status"] == "running" {
            return Ok(handle);
        }
        let what = format!("starting guest {}", h.vmid);
        match api.run_task("POST", &Api::guest_path(&h, "/status/start"), Some(&json!({})), &h.node, &what) {
            Ok(()) => {}
            // Started by someone else in between.
            Err(Error::Failed(m)) if m.contains("already running") => {}
            Err(e) => return Err(e),
        }
        log::info(&format!("guest {} started", h.vmid));
        Ok(handle)
    }

    fn status(w: Workload, handle: String) -> Result<Status, Error> {
        let c = Config::parse(&w)?;
        let Some(h) = Handle::of(&handle, &w)? else { return Ok(Status::missing("no guest was made")) };
        let api = Api::new(Some(&h.endpoint))?;
        let Some(cur) = api.current(&h)? else {
            return Ok(Status::missing(format!("guest {} does not exist", h.vmid)));
        };
        // A name unique to this revision spares a config request; a shared
        // hostname does not prove the guest is this revision's.
        let unique = c.hostname.is_none() && cur["name"].as_str() == Some(guest_name(&w, &c)?.as_str());
        if !unique && !is_ours(&api, &h)? {
            return Ok(Status::missing(format!("guest {} is no longer the one this revision made", h.vmid)));
        }
        if cur["status"] != "running" {
            return Ok(Status::exited(format!("guest {} is {}", h.vmid, cur["status"].as_str().unwrap_or("?")), None));
        }
        let mut st = Status::healthy(format!("guest {} is running", h.vmid));
        st.outputs = vec![
            ("vmid".into(), h.vmid.to_string()),
            ("node".into(), h.node.clone()),
            ("type".into(), h.kind.as_str().into()),
        ];
        let ips = if h.kind == Kind::Lxc || c.agent() { addresses(&api, &h, &c)? } else { Some(Vec::new()) };
        match ips {
            Some(ips) => {
                if let Some(first) = ips.iter().find(|ip| !ip.contains(':')).or(ips.first()) {
                    st.outputs.push(("ip".into(), first.clone()));
                    st.outputs.push(("ips".into(), ips.join(",")));
                }
            }
            None => {
                st.health = Health::Starting;
                st.message = format!("guest {} is running; waiting for its QEMU guest agent", h.vmid);
            }
        }
        Ok(st)
    }

    fn stop(w: Workload, handle: String) -> Result<(), Error> {
        let Some(h) = Handle::of(&handle, &w)? else { return Ok(()) };
        let api = Api::new(Some(&h.endpoint))?;
        match api.current(&h)? {
            Some(cur) if cur["status"] == "running" && is_ours(&api, &h)? => {}
            _ => return Ok(()),
        }
        let grace = w.stop_grace_seconds.max(1);
        let what = format!("shutting guest {} down", h.vmid);
        let polite = api.run_task(
            "POST",
            &Api::guest_path(&h, "/status/shutdown"),
            Some(&json!({"timeout": grace})),
            &h.node,
            &what,
        );
        match polite {
            Ok(()) => {}
            // Already stopped (LXC says so at once).
            Err(Error::Failed(m)) if m.contains("not running") => return Ok(()),
            Err(e) => {
                log::warn(&format!("{e}; stopping it"));
                let what = format!("stopping guest {}", h.vmid);
                api.run_task("POST", &Api::guest_path(&h, "/status/stop"), Some(&json!({})), &h.node, &what)?;
            }
        }
        log::info(&format!("guest {} stopped", h.vmid));
        Ok(())
    }

    fn delete(w: Workload, handle: String) -> Result<(), Error> {
        let Some(h) = Handle::of(&handle, &w)? else { return Ok(()) };
        let api = Api::new(Some(&h.endpoint))?;
        // Only a guest this revision made: a VMID recorded before a crash,
        // or one destroyed outside era, may belong to another guest now.
        // One whose clone still runs is waited for first.
        if !settled_config(&api, &h)?.is_some_and(|cfg| marked(&cfg, &h.mark)) {
            state::remove(PROGRESS).map_err(Error::Failed)?;
            return Ok(());
        }
        let Some(cur) = api.current(&h)? else {
            state::remove(PROGRESS).map_err(Error::Failed)?;
            return Ok(());
        };
        if cur["status"] == "running" {
            let what = format!("stopping guest {}", h.vmid);
            api.run_task("POST", &Api::guest_path(&h, "/status/stop"), Some(&json!({})), &h.node, &what)?;
        }
        let what = format!("destroying guest {}", h.vmid);
        match api.run_task(
            "DELETE",
            &Api::guest_path(&h, "?purge=1&destroy-unreferenced-disks=1"),
            None,
            &h.node,
            &what,
        ) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        state::remove(PROGRESS).map_err(Error::Failed)?;
        log::info(&format!("guest {} destroyed", h.vmid));
        Ok(())
    }

    fn exec(_w: Workload, _handle: String, _command: Vec<String>, _timeout_ms: u32) -> Result<ExecOutput, Error> {
        era_plugin_sdk::exec_unsupported("proxmox")
    }
}

era_plugin_sdk::export_plugin!(Proxmox);
