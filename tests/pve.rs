//! A Proxmox VE API test server: the slice of `/api2/json` the `proxmox`
//! plugin uses, behaving as PVE 8.4 does (read from pve-manager 8.4,
//! qemu-server 8.4, pve-container 5.3 and pve-common 8.3), since no Proxmox
//! VE can run here.
//!
//! - API tokens only: `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`;
//!   anything else is `401` with an empty body, as PVE answers.
//! - Parameters from the query (GET, DELETE; a body there is `501`) or the
//!   body (POST, PUT; JSON or form-encoded, the form split on `&` and `;`
//!   as PVE does), checked against the types and formats of the PVE schema
//!   for these endpoints: VMIDs, node names, DNS names, tags, storage ids,
//!   the QEMU and LXC `net[n]` and QEMU `ipconfig[n]` property strings,
//!   URL-encoded `sshkeys`, sizes, booleans (`0`/`1` in forms). A bad or
//!   unknown parameter is `400` `Parameter verification failed.` with the
//!   per-parameter `errors` PVE gives.
//! - Asynchronous tasks: clone, create, start, shutdown, stop, resize and
//!   destroy answer a UPID (PVE's format, uppercase hex, the clone's id the
//!   source VMID) and finish later; `tasks/{upid}/status` says `running`,
//!   then `stopped` with `exitstatus` `OK` or the error text. Errors land
//!   where PVE puts them: an existing VMID on create or clone is an HTTP 500,
//!   a QEMU start of a missing or running VM a failed task, an LXC start of a
//!   running one or a stop of a stopped one an HTTP 500; a guest is locked
//!   (`lock: clone`/`create`) while its task runs.
//! - `/cluster/nextid` answers a string, as PVE does; `status/current`,
//!   config GET (with `digest`) and PUT (tags normalised, MACs generated),
//!   `agent/network-get-interfaces` (500 while the agent is not up),
//!   LXC `interfaces` (`null` while stopped), `DELETE` (500 while running),
//!   `/cluster/resources?type=vm`.
//!
//! Templates: 9000 (a VM whose agent comes up 0.3 s after start), 9001 (a
//! VM whose agent never answers), 9002 (a VM whose clone task fails), 9003
//! (a VM whose clone takes 3 s), 9004 (a VM that ignores an ACPI shutdown),
//! 9100 (an LXC container); the volume
//! `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst` for LXC creates.

use crate::httpd::{Request, Response, Server, percent_decode};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NODE: &str = "pve1";
pub const OSTEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const STORAGES: [&str; 2] = ["local", "local-lvm"];
const QEMU_MODELS: [&str; 14] = [
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

#[derive(Debug, Clone)]
pub struct Guest {
    /// `qemu` or `lxc`.
    pub kind: &'static str,
    pub config: Map<String, Value>,
    pub running: bool,
    started: Option<Instant>,
    /// Its QEMU agent never answers.
    no_agent: bool,
    /// It ignores an ACPI shutdown (the task times out).
    stubborn: bool,
    /// Its clone task takes this long and fails with this.
    clone_takes: Duration,
    clone_fails: Option<String>,
    pub ip: String,
}

impl Guest {
    pub fn name(&self) -> &str {
        self.config.get("name").or(self.config.get("hostname")).and_then(Value::as_str).unwrap_or("")
    }

    pub fn is_template(&self) -> bool {
        self.config.get("template").is_some_and(|t| t == 1)
    }

    fn locked(&self) -> Option<&str> {
        self.config.get("lock").and_then(Value::as_str)
    }
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    /// A task that only fails.
    Nothing,
    Unlock(u32),
    Start(u32),
    Stop(u32),
    Destroy(u32),
    Resize(u32),
}

struct Task {
    node: String,
    kind: String,
    id: String,
    user: String,
    pid: u32,
    pstart: u32,
    starttime: u64,
    begun: Instant,
    takes: Duration,
    /// Decided when the task ends (the guest may change meanwhile).
    effect: Effect,
    /// What the task does at its end: its error, if it fails.
    fails: Option<String>,
    /// (disk, new size) for a resize.
    resize: Option<(String, String)>,
    /// The config a clone or create writes when it ends (until then the
    /// guest's config is its lock, as PVE's is).
    pending: Option<Map<String, Value>>,
    exit: Option<String>,
}

#[derive(Default)]
pub struct State {
    pub guests: BTreeMap<u32, Guest>,
    tasks: BTreeMap<String, Task>,
    /// Clone and create requests that made a guest.
    pub made: u32,
    /// The next this many `/cluster/nextid` answers are taken by "another
    /// client" right after they are given.
    pub steal_next_ids: u32,
    /// Answer nextid with a 500 that quotes the request's Authorization
    /// header (a broken proxy in front of PVE).
    pub echo_credentials: bool,
    next_pid: u32,
    next_mac: u32,
}

pub struct Pve {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
}

fn template(kind: &'static str, name: &str, disk: (&str, &str)) -> Guest {
    let mut config = Map::new();
    config.insert(if kind == "qemu" { "name" } else { "hostname" }.into(), json!(name));
    config.insert("template".into(), json!(1));
    config.insert("cores".into(), json!(1));
    config.insert(disk.0.into(), json!(disk.1));
    if kind == "qemu" {
        config.insert("memory".into(), json!("1024"));
        config.insert("net0".into(), json!("virtio=BC:24:11:00:90:00,bridge=vmbr0"));
        config.insert("ide2".into(), json!("local-lvm:vm-9000-cloudinit,media=cdrom"));
        config.insert("agent".into(), json!("1"));
        config.insert("ostype".into(), json!("l26"));
    } else {
        config.insert("memory".into(), json!(512));
        config.insert("net0".into(), json!("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:91:00,ip=dhcp,type=veth"));
        config.insert("ostype".into(), json!("debian"));
    }
    Guest {
        kind,
        config,
        running: false,
        started: None,
        no_agent: false,
        stubborn: false,
        clone_takes: Duration::from_millis(300),
        clone_fails: None,
        ip: String::new(),
    }
}

impl Pve {
    /// A PVE node that takes the API token `TOKEN_ID=SECRET`.
    pub fn start(token_id: &str, secret: &str) -> Pve {
        Pve::start_with_latency(token_id, secret, Duration::ZERO)
    }

    /// One that answers each request `latency` late (a remote API).
    pub fn start_with_latency(token_id: &str, secret: &str, latency: Duration) -> Pve {
        let mut st = State::default();
        st.guests.insert(9000, template("qemu", "tmpl-debian", ("scsi0", "local-lvm:base-9000-disk-0,size=8G")));
        let mut silent = template("qemu", "tmpl-noagent", ("scsi0", "local-lvm:base-9001-disk-0,size=8G"));
        silent.no_agent = true;
        st.guests.insert(9001, silent);
        let mut broken = template("qemu", "tmpl-broken", ("scsi0", "local-lvm:base-9002-disk-0,size=8G"));
        broken.clone_fails = Some(
            "clone failed: lvcreate 'pve/vm-{newid}-disk-0' error:   Volume group \"pve\" has insufficient free space"
                .into(),
        );
        st.guests.insert(9002, broken);
        let mut slow = template("qemu", "tmpl-slow", ("scsi0", "local-lvm:base-9003-disk-0,size=8G"));
        slow.clone_takes = Duration::from_secs(3);
        st.guests.insert(9003, slow);
        let mut stubborn = template("qemu", "tmpl-stubborn", ("scsi0", "local-lvm:base-9004-disk-0,size=8G"));
        stubborn.stubborn = true;
        st.guests.insert(9004, stubborn);
        st.guests.insert(9100, template("lxc", "tmpl-ct", ("rootfs", "local-lvm:base-9100-disk-0,size=4G")));
        let state = Arc::new(Mutex::new(st));
        let (s, auth) = (state.clone(), format!("PVEAPIToken={token_id}={secret}"));
        let user = token_id.to_string();
        let server = Server::start(move |r| {
            let mut resp = if r.header("authorization") != Some(auth.as_str()) {
                // PVE: "401 No ticket" (or "Authentication failed!"), no body.
                Response::new(401, "text/plain", Vec::new())
            } else if s.lock().unwrap().echo_credentials && r.path().ends_with("/cluster/nextid") {
                die(&format!("proxy: upstream refused GET /cluster/nextid (Authorization: {auth})"))
            } else {
                handle(&mut s.lock().unwrap(), r, &user)
            };
            resp.delay += latency;
            resp
        });
        Pve { server, state }
    }

    /// The API's base URL, as an endpoint grant names it.
    pub fn url(&self) -> String {
        format!("{}/api2/json", self.server.url())
    }

    /// The guests that are not templates.
    pub fn guests(&self) -> BTreeMap<u32, Guest> {
        let mut st = self.state.lock().unwrap();
        tick(&mut st);
        st.guests.iter().filter(|(_, g)| !g.is_template()).map(|(k, g)| (*k, g.clone())).collect()
    }

    /// The tasks started, by type (`qmclone`, `qmstart`...).
    pub fn tasks_of(&self, kind: &str) -> usize {
        self.state.lock().unwrap().tasks.values().filter(|t| t.kind == kind).count()
    }
}

fn ok(data: Value) -> Response {
    Response::json(200, &json!({ "data": data }))
}

fn die(message: &str) -> Response {
    Response::json(500, &json!({"data": null, "message": format!("{message}\n")}))
}

fn param_errors(errors: BTreeMap<String, String>) -> Response {
    Response::json(400, &json!({"data": null, "message": "Parameter verification failed.\n", "errors": errors}))
}

fn param_error(key: &str, text: &str) -> Response {
    param_errors(BTreeMap::from([(key.to_string(), text.to_string())]))
}

/// The request's parameters, as PVE reads them.
fn params(r: &Request) -> Result<Map<String, Value>, Response> {
    let mut out = Map::new();
    let form = |text: &str, out: &mut Map<String, Value>| {
        // PVE splits pairs on '&' and ';', keeps the first two '=' fields.
        for kv in text.split(['&', ';']).filter(|kv| !kv.is_empty()) {
            let mut it = kv.split('=');
            let (k, v) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            out.insert(percent_decode(k), Value::String(percent_decode(v)));
        }
    };
    match r.method.as_str() {
        "GET" | "DELETE" if !r.body.is_empty() => {
            return Err(Response::json(
                501,
                &json!({"data": null, "message": format!("Unexpected content for method '{}'\n", r.method)}),
            ));
        }
        "POST" | "PUT" if !r.body.is_empty() => {
            if r.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
                match serde_json::from_slice::<Value>(&r.body) {
                    Ok(Value::Object(m)) => out.extend(m),
                    _ => return Err(die("malformed JSON string")),
                }
            } else {
                form(&String::from_utf8_lossy(&r.body), &mut out);
            }
        }
        _ => {}
    }
    if let Some((_, q)) = r.target.split_once('?') {
        form(q, &mut out);
    }
    Ok(out)
}

/// A value as PVE's type check sees it (JSON numbers and strings alike).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => match text(other).as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        },
    }
}

fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn tag_ok(t: &str) -> bool {
    let mut b = t.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.'))
}

fn mac_ok(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn cidr4_ok(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else { return false };
    ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| (8..=32).contains(&p))
}

/// A property string's `k=v` parts; a part without `=` goes to `default`.
fn property_string(s: &str, default: Option<&str>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',') {
        let (k, v) = match (part.split_once('='), default) {
            (Some((k, v)), _) => (k.to_string(), v.to_string()),
            (None, Some(d)) => (d.to_string(), part.to_string()),
            (None, None) => return Err("value without key, but schema does not define a default key".into()),
        };
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate key in comma-separated list property: {k}"));
        }
    }
    Ok(out)
}

fn format_error(key: &str, why: &str) -> String {
    format!("invalid format - format error\n{key}.{why}\n")
}

fn check_qemu_net(key: &str, s: &str) -> Result<(), String> {
    let mut p = property_string(s, Some("model")).map_err(|e| format!("invalid format - {e}\n"))?;
    // The keyAlias form: `virtio=MAC`.
    if let Some(m) = QEMU_MODELS.iter().find(|m| p.contains_key(**m)) {
        let mac = p.remove(*m).unwrap_or_default();
        p.insert("model".into(), m.to_string());
        p.insert("macaddr".into(), mac);
    }
    for (k, v) in &p {
        let bad = match k.as_str() {
            "model" if !QEMU_MODELS.contains(&v.as_str()) => Some(format!(
                "model: value '{v}' does not have a value in the enumeration '{}'",
                QEMU_MODELS.join(", ")
            )),
            "bridge" if !word(v) => Some(format!("bridge: invalid bridge ID '{v}'")),
            "macaddr" if !mac_ok(v) => Some("macaddr: value does not look like a valid unicast MAC address".into()),
            "tag" if !v.parse::<u16>().is_ok_and(|t| (1..=4094).contains(&t)) => {
                Some("tag: value must have a minimum value of 1 and a maximum of 4094".into())
            }
            "firewall" | "link_down" if !matches!(v.as_str(), "0" | "1") => {
                Some(format!("{k}: type check ('boolean') failed - got '{v}'"))
            }
            "model" | "bridge" | "macaddr" | "tag" | "firewall" | "link_down" | "mtu" | "queues" | "rate"
            | "trunks" => None,
            other => return Err(format!("invalid format - invalid key in comma-separated list property: {other}\n")),
        };
        if let Some(b) = bad {
            return Err(format_error(key, &b));
        }
    }
    if !p.contains_key("model") {
        return Err(format_error(key, "model: property is missing and it is not optional"));
    }
    Ok(())
}

fn check_lxc_net(key: &str, s: &str) -> Result<(), String> {
    let p = property_string(s, None).map_err(|e| format!("invalid format - {e}\n"))?;
    for (k, v) in &p {
        let bad = match k.as_str() {
            "name" | "bridge" if !word(v) => Some(format!("{k}: value does not match the regex pattern")),
            "hwaddr" if !mac_ok(v) => Some("hwaddr: value does not look like a valid unicast MAC address".into()),
            "ip" if !(v == "dhcp" || v == "manual" || cidr4_ok(v)) => {
                Some(format!("ip: invalid format - invalid IPv4 address/CIDR '{v}'"))
            }
            "tag" if !v.parse::<u16>().is_ok_and(|t| (1..=4094).contains(&t)) => {
                Some("tag: value must have a minimum value of 1 and a maximum of 4094".into())
            }
            "type" if v != "veth" => Some(format!("type: value '{v}' does not have a value in the enumeration 'veth'")),
            "name" | "bridge" | "hwaddr" | "ip" | "tag" | "type" | "firewall" | "gw" | "gw6" | "ip6" | "link_down"
            | "mtu" | "rate" | "trunks" => None,
            other => return Err(format!("invalid format - invalid key in comma-separated list property: {other}\n")),
        };
        if let Some(b) = bad {
            return Err(format_error(key, &b));
        }
    }
    if !p.contains_key("name") {
        return Err(format_error(key, "name: property is missing and it is not optional"));
    }
    Ok(())
}

fn check_ipconfig(key: &str, s: &str) -> Result<(), String> {
    let p = property_string(s, None).map_err(|e| format!("invalid format - {e}\n"))?;
    for (k, v) in &p {
        let bad = match k.as_str() {
            "ip" if !(v == "dhcp" || v == "manual" || cidr4_ok(v)) => Some(format!("ip: invalid format - {v}")),
            "gw" if v.parse::<std::net::Ipv4Addr>().is_err() => Some(format!("gw: invalid format - {v}")),
            "ip" | "gw" | "ip6" | "gw6" => None,
            other => return Err(format!("invalid format - invalid key in comma-separated list property: {other}\n")),
        };
        if let Some(b) = bad {
            return Err(format_error(key, &b));
        }
    }
    if p.contains_key("gw") && !p.contains_key("ip") {
        return Err(format!("invalid format - missing property - '{key}.gw' requires this property\n"));
    }
    Ok(())
}

/// Checks every parameter against its schema: `Ok(None)` passes,
/// `Ok(Some(error text))` fails it; unknown keys fail.
fn check(kind: &str, key: &str, v: &Value) -> Option<String> {
    let t = text(v);
    let int_in = |min: i64, max: i64| match int(v) {
        None => Some(format!("type check ('integer') failed - got '{t}'")),
        Some(n) if n < min => Some(format!("value must have a minimum value of {min}")),
        Some(n) if n > max => Some(format!("value must have a maximum value of {max}")),
        Some(_) => None,
    };
    let is_bool = || boolean(v).is_none().then(|| format!("type check ('boolean') failed - got '{t}'"));
    match key {
        "vmid" | "newid" => {
            (!(t.len() >= 3 && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('0')))
                .then(|| "invalid format - value does not look like a valid VM ID\n".into())
        }
        "name" | "hostname" => {
            (!dns_name(&t)).then(|| "invalid format - value does not look like a valid DNS name\n".into())
        }
        "description" => (t.len() > 8192).then(|| "value may only be 8192 characters long".into()),
        "cores" => int_in(1, if kind == "lxc" { 8192 } else { i64::MAX }),
        "memory" if kind == "qemu" => {
            let n = t.strip_prefix("current=").unwrap_or(&t);
            match n.parse::<i64>() {
                Ok(m) if m >= 16 => None,
                Ok(_) => Some(format_error("memory", "current: value must have a minimum value of 16")),
                Err(_) => Some(format_error("memory", &format!("current: type check ('integer') failed - got '{n}'"))),
            }
        }
        "memory" => int_in(16, i64::MAX),
        "swap" | "timeout" | "bwlimit" => int_in(0, i64::MAX),
        "full"
        | "purge"
        | "destroy-unreferenced-disks"
        | "force"
        | "forceStop"
        | "skiplock"
        | "unprivileged"
        | "start"
        | "onboot" => is_bool(),
        "storage" => (!word(&t)).then(|| format!("invalid format - storage ID '{t}' contains illegal characters\n")),
        "tags" => t
            .split([',', ';', ' '])
            .filter(|x| !x.is_empty())
            .any(|x| !tag_ok(x))
            .then(|| "invalid format - invalid characters in tag\n".into()),
        "net0" | "net1" if kind == "qemu" => check_qemu_net(key, &t).err(),
        "net0" | "net1" => check_lxc_net(key, &t).err(),
        "ipconfig0" | "ipconfig1" if kind == "qemu" => check_ipconfig(key, &t).err(),
        "sshkeys" if kind == "qemu" => (!t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-%_.!~*'()".contains(&b)))
            .then(|| format!("invalid format - invalid urlencoded string: {t}\n")),
        "agent" if kind == "qemu" => property_string(&t, Some("enabled"))
            .ok()
            .and_then(|p| p.get("enabled").map(|e| matches!(e.as_str(), "0" | "1")))
            .is_none_or(|good| !good)
            .then(|| format_error("agent", &format!("enabled: type check ('boolean') failed - got '{t}'"))),
        "smbios1" if t.len() > 512 => Some("value may only be 512 characters long".into()),
        "smbios1" if kind == "qemu" => property_string(&t, None)
            .err()
            .or_else(|| {
                let p = property_string(&t, None).unwrap_or_default();
                p.keys()
                    .find(|k| {
                        !matches!(
                            k.as_str(),
                            "base64" | "family" | "manufacturer" | "product" | "serial" | "sku" | "uuid" | "version"
                        )
                    })
                    .map(|k| format!("invalid key in comma-separated list property: {k}"))
            })
            .map(|e| format!("invalid format - {e}\n")),
        "password" => (t.len() < 5).then(|| "value must be at least 5 characters long".into()),
        // Free strings, or checked where they are used.
        _ => None,
    }
}

/// Checks `p` for an endpoint that takes `allowed` (and every config key
/// of `kind` when `config` is set), with `required` ones.
fn verify(
    p: &Map<String, Value>,
    kind: &str,
    allowed: &[&str],
    required: &[&str],
    config: bool,
) -> Result<(), Response> {
    const QEMU_CONFIG: [&str; 15] = [
        "name",
        "description",
        "cores",
        "memory",
        "net0",
        "net1",
        "ipconfig0",
        "ipconfig1",
        "sshkeys",
        "ciuser",
        "nameserver",
        "searchdomain",
        "tags",
        "agent",
        "smbios1",
    ];
    const LXC_CONFIG: [&str; 10] =
        ["hostname", "description", "cores", "memory", "swap", "net0", "net1", "nameserver", "searchdomain", "tags"];
    let config_keys: &[&str] = if kind == "qemu" { &QEMU_CONFIG } else { &LXC_CONFIG };
    let mut errors = BTreeMap::new();
    for r in required {
        if !p.contains_key(*r) {
            errors.insert(r.to_string(), "property is missing and it is not optional".to_string());
        }
    }
    for (k, v) in p {
        let known = allowed.contains(&k.as_str()) || (config && config_keys.contains(&k.as_str()));
        let bad = if known {
            check(kind, k, v)
        } else {
            Some("property is not defined in schema and the schema does not allow additional properties".into())
        };
        if let Some(b) = bad {
            errors.insert(k.clone(), b);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(param_errors(errors)) }
}

fn no_config(node: &str, kind: &str, vmid: u32) -> Response {
    die(&no_config_text(node, kind, vmid))
}

/// Completes the tasks whose time has come.
fn tick(st: &mut State) {
    let now = Instant::now();
    let due: Vec<String> =
        st.tasks.iter().filter(|(_, t)| t.exit.is_none() && t.begun + t.takes <= now).map(|(u, _)| u.clone()).collect();
    for upid in due {
        let Some(task) = st.tasks.get(&upid) else { continue };
        let (effect, fails, resize, pending) =
            (task.effect, task.fails.clone(), task.resize.clone(), task.pending.clone());
        let exit = match (effect, fails) {
            (Effect::Unlock(id), Some(e)) => {
                // A failed clone or create removes what it made.
                st.guests.remove(&id);
                e
            }
            (_, Some(e)) => e,
            (Effect::Nothing, None) => "OK".into(),
            (Effect::Unlock(id), None) => {
                if let Some(g) = st.guests.get_mut(&id) {
                    match pending {
                        Some(config) => g.config = config,
                        None => {
                            g.config.remove("lock");
                        }
                    }
                }
                "OK".into()
            }
            (Effect::Start(id), None) => match st.guests.get_mut(&id) {
                None => format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist"),
                Some(g) if g.running => format!("VM {id} already running"),
                Some(g) => {
                    g.running = true;
                    g.started = Some(now);
                    "OK".into()
                }
            },
            (Effect::Stop(id), None) => {
                if let Some(g) = st.guests.get_mut(&id) {
                    g.running = false;
                    g.started = None;
                }
                "OK".into()
            }
            (Effect::Destroy(id), None) => {
                st.guests.remove(&id);
                "OK".into()
            }
            (Effect::Resize(id), None) => match (st.guests.get_mut(&id), resize) {
                (Some(g), Some((disk, size))) => {
                    let old = g.config.get(&disk).map(text).unwrap_or_default();
                    let kept: Vec<&str> = old.split(',').filter(|p| !p.starts_with("size=")).collect();
                    g.config.insert(disk, json!(format!("{},size={size}", kept.join(","))));
                    "OK".into()
                }
                _ => format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist"),
            },
        };
        if let Some(t) = st.tasks.get_mut(&upid) {
            t.exit = Some(exit);
        }
    }
}

/// Starts a task; returns its UPID.
fn task(
    st: &mut State,
    user: &str,
    kind: &str,
    id: u32,
    takes: Duration,
    effect: Effect,
    fails: Option<String>,
) -> String {
    st.next_pid += 1;
    let starttime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let (pid, pstart) = (40_000 + st.next_pid, 1_000_000 + st.next_pid * 7);
    let upid = format!("UPID:{NODE}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{id}:{user}:");
    st.tasks.insert(
        upid.clone(),
        Task {
            node: NODE.into(),
            kind: kind.into(),
            id: id.to_string(),
            user: user.into(),
            pid,
            pstart,
            starttime,
            begun: Instant::now(),
            takes,
            effect,
            fails,
            resize: None,
            pending: None,
            exit: None,
        },
    );
    upid
}

fn mac(st: &mut State) -> String {
    st.next_mac += 1;
    let n = st.next_mac;
    format!("BC:24:11:{:02X}:{:02X}:{:02X}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// The config as PUT stores it: tags sorted, lower-cased and `;`-joined,
/// MACs generated where a NIC has none, numbers as numbers.
fn store_config(st: &mut State, vmid: u32, p: &Map<String, Value>) {
    let mut set = Map::new();
    for (k, v) in p {
        let v = match k.as_str() {
            "tags" => {
                let mut tags: Vec<String> =
                    text(v).split([',', ';', ' ']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect();
                tags.sort();
                tags.dedup();
                json!(tags.join(";"))
            }
            "cores" | "swap" => json!(int(v)),
            "memory" => {
                if st.guests.get(&vmid).is_some_and(|g| g.kind == "qemu") {
                    json!(text(v))
                } else {
                    json!(int(v))
                }
            }
            "net0" | "net1" => {
                let t = text(v);
                let qemu = st.guests.get(&vmid).is_some_and(|g| g.kind == "qemu");
                let mut parts: Vec<String> = t.split(',').map(str::to_string).collect();
                if qemu && !parts[0].contains('=') {
                    parts[0] = format!("{}={}", parts[0], mac(st));
                } else if !qemu && !t.contains("hwaddr=") {
                    parts.push(format!("hwaddr={}", mac(st)));
                }
                json!(parts.join(","))
            }
            _ => json!(text(v)),
        };
        set.insert(k.clone(), v);
    }
    if let Some(g) = st.guests.get_mut(&vmid) {
        g.config.extend(set);
    }
}

fn handle(st: &mut State, r: &Request, user: &str) -> Response {
    tick(st);
    let p = match params(r) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let path = r.path().trim_start_matches("/api2/json");
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (r.method.as_str(), seg.as_slice()) {
        ("GET", ["cluster", "nextid"]) => {
            if let Err(e) = verify(&p, "", &["vmid"], &[], false) {
                return e;
            }
            if let Some(v) = p.get("vmid").and_then(int) {
                let id = v as u32;
                if st.guests.contains_key(&id) {
                    return param_error("vmid", &format!("VM {id} already exists"));
                }
                return ok(json!(id.to_string()));
            }
            let id = (100u32..1_000_000).find(|i| !st.guests.contains_key(i)).unwrap_or(0);
            if st.steal_next_ids > 0 {
                st.steal_next_ids -= 1;
                let mut other = template("qemu", "someone-else", ("scsi0", "local-lvm:vm-disk,size=8G"));
                other.config.remove("template");
                st.guests.insert(id, other);
            }
            ok(json!(id.to_string()))
        }
        ("GET", ["cluster", "resources"]) => {
            let list: Vec<Value> = st
                .guests
                .iter()
                .map(|(id, g)| {
                    json!({"id": format!("{}/{id}", g.kind), "vmid": id, "node": NODE, "type": g.kind,
                        "status": if g.running { "running" } else { "stopped" }, "name": g.name(),
                        "tags": g.config.get("tags").cloned().unwrap_or(json!("")),
                        "template": i32::from(g.is_template())})
                })
                .collect();
            ok(json!(list))
        }
        (_, ["nodes", node, ..]) if *node != NODE => die(&format!(
            "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
        )),
        ("GET", ["nodes", _, "tasks", upid, "status"]) => {
            let upid = percent_decode(upid);
            let Some(t) = st.tasks.get(&upid) else {
                return param_error(
                    "upid",
                    if upid.starts_with("UPID:") { "no such task" } else { "unable to parse worker upid" },
                );
            };
            let (u, tokenid) = t.user.split_once('!').unwrap_or((&t.user, ""));
            let mut v = json!({"upid": upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime,
                "type": t.kind, "id": t.id, "user": u, "tokenid": tokenid,
                "status": if t.exit.is_some() { "stopped" } else { "running" }});
            if let Some(e) = &t.exit {
                v["exitstatus"] = json!(e);
            }
            ok(v)
        }
        ("POST", ["nodes", _, "lxc"]) => {
            let allowed = [
                "vmid",
                "ostemplate",
                "storage",
                "rootfs",
                "password",
                "ssh-public-keys",
                "unprivileged",
                "start",
                "onboot",
                "features",
                "ostype",
                "pool",
                "force",
            ];
            if let Err(e) = verify(&p, "lxc", &allowed, &["vmid", "ostemplate"], true) {
                return e;
            }
            let vmid = p.get("vmid").and_then(int).unwrap_or(0) as u32;
            let os = p.get("ostemplate").map(text).unwrap_or_default();
            if let Some(g) = st.guests.get(&vmid) {
                return die(&format!(
                    "{} {vmid} already exists on node '{NODE}'",
                    if g.kind == "qemu" { "VM" } else { "CT" }
                ));
            }
            if os != OSTEMPLATE {
                return die(&format!("volume '{os}' does not exist"));
            }
            if let Some(s) = p.get("storage").map(text).filter(|s| !STORAGES.contains(&s.as_str())) {
                return die(&format!("storage '{s}' does not exist"));
            }
            let mut g =
                template("lxc", &format!("CT{vmid}"), ("rootfs", &format!("local-lvm:vm-{vmid}-disk-0,size=4G")));
            g.config.remove("template");
            if let Some(root) = p.get("rootfs").map(text) {
                let size = root.rsplit(':').next().unwrap_or("4");
                g.config.insert("rootfs".into(), json!(format!("local-lvm:vm-{vmid}-disk-0,size={size}G")));
            }
            st.guests.insert(vmid, g);
            let config: Map<String, Value> = p
                .iter()
                .filter(|(k, _)| {
                    matches!(k.as_str(), "hostname" | "cores" | "memory" | "net0" | "tags" | "description")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            store_config(st, vmid, &config);
            // Until the task ends, the config is only its lock.
            let made = lock_until_done(st, vmid, "create");
            st.made += 1;
            let upid = task(st, user, "vzcreate", vmid, Duration::from_millis(300), Effect::Unlock(vmid), None);
            pend(st, &upid, made);
            ok(json!(upid))
        }
        ("POST", ["nodes", _, kind @ ("qemu" | "lxc"), vmid, "clone"]) => {
            let name_key = if *kind == "qemu" { "name" } else { "hostname" };
            let allowed = ["newid", name_key, "description", "full", "storage", "pool", "target", "bwlimit"];
            if let Err(e) = verify(&p, kind, &allowed, &["newid"], false) {
                return e;
            }
            let src: u32 = vmid.parse().unwrap_or(0);
            let newid = p.get("newid").and_then(int).unwrap_or(0) as u32;
            let Some(source) = st.guests.get(&src).cloned() else { return no_config(NODE, kind, src) };
            if source.kind != *kind {
                return no_config(NODE, kind, src);
            }
            if let Some(l) = source.locked() {
                return die(&format!("{} is locked ({l})", if *kind == "qemu" { "VM" } else { "CT" }));
            }
            match st.guests.get(&newid) {
                Some(g) if *kind == "qemu" && g.kind == "qemu" => {
                    return die(&format!("unable to create VM {newid}: config file already exists"));
                }
                Some(g) if *kind == "lxc" => {
                    return die(&format!(
                        "{} {newid} already exists on node '{NODE}'",
                        if g.kind == "qemu" { "VM" } else { "CT" }
                    ));
                }
                Some(_) => {
                    // A CT with that id: found only by the task (pmxcfs refuses the write).
                    let fail = Some(format!(
                        "clone failed: unable to create VM {newid} - CT {newid} already exists on node '{NODE}'"
                    ));
                    return ok(json!(task(
                        st,
                        user,
                        "qmclone",
                        src,
                        Duration::from_millis(100),
                        Effect::Nothing,
                        fail
                    )));
                }
                None => {}
            }
            let full = p.get("full").and_then(boolean).unwrap_or(!source.is_template());
            if p.contains_key("storage") && !full {
                return param_error("storage", "parameter 'storage' not allowed for linked clones");
            }
            if let Some(s) = p.get("storage").map(text).filter(|s| !STORAGES.contains(&s.as_str())) {
                return die(&format!("storage '{s}' does not exist"));
            }
            let mut g = source.clone();
            g.config.remove("template");
            g.running = false;
            if *kind == "qemu" {
                g.config.insert("smbios1".into(), json!(format!("uuid=5a1e{newid:04x}-0000-4000-8000-{newid:012x}")));
            }
            let default_name = format!("Copy-of-VM-{}", source.name());
            g.config.insert(name_key.into(), p.get(name_key).cloned().unwrap_or(json!(default_name)));
            if let Some(d) = p.get("description") {
                g.config.insert("description".into(), d.clone());
            }
            for (k, v) in g.config.iter_mut() {
                if let Some(s) = v.as_str().filter(|s| s.contains(&format!("base-{src}-disk"))) {
                    *v = json!(s.replace(&format!("base-{src}-disk"), &format!("vm-{newid}-disk")));
                }
                if k == "net0" && *kind == "qemu" {
                    let rest: Vec<String> = text(v).split(',').skip(1).map(str::to_string).collect();
                    *v = json!(format!(
                        "virtio=BC:24:11:{:02X}:{:02X}:{:02X},{}",
                        newid >> 16 & 0xff,
                        newid >> 8 & 0xff,
                        newid & 0xff,
                        rest.join(",")
                    ));
                }
            }
            let fails = source.clone_fails.as_ref().map(|f| f.replace("{newid}", &newid.to_string()));
            st.guests.insert(newid, g);
            // Until the task ends, the new config is only its lock.
            let made = lock_until_done(st, newid, "clone");
            st.made += 1;
            let kind_name = if *kind == "qemu" { "qmclone" } else { "vzclone" };
            let upid = task(st, user, kind_name, src, source.clone_takes, Effect::Unlock(newid), fails);
            pend(st, &upid, made);
            ok(json!(upid))
        }
        (m @ ("GET" | "PUT"), ["nodes", node, kind @ ("qemu" | "lxc"), vmid, "config"]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            let Some(g) = st.guests.get(&vmid).filter(|g| g.kind == *kind) else { return no_config(node, kind, vmid) };
            if m == "GET" {
                if let Err(e) = verify(&p, kind, &["current"], &[], false) {
                    return e;
                }
                let mut c = g.config.clone();
                let digest = crate::sha256(Value::Object(c.clone()).to_string().as_bytes());
                c.insert("digest".into(), json!(digest[..40]));
                return ok(Value::Object(c));
            }
            if let Err(e) = verify(&p, kind, &["digest", "delete"], &[], true) {
                return e;
            }
            if p.is_empty() {
                return die("no options specified");
            }
            if let Some(l) = g.locked() {
                return die(&format!("{} is locked ({l})", if *kind == "qemu" { "VM" } else { "CT" }));
            }
            if let Some(k) = p.get("sshkeys").map(text) {
                let keys = percent_decode(&k.replace('+', "%2B"));
                if keys.lines().filter(|l| !l.trim().is_empty()).any(|l| !public_key_ok(l)) {
                    return die("SSH public key validation error");
                }
            }
            store_config(st, vmid, &p);
            ok(Value::Null)
        }
        ("PUT", ["nodes", node, kind @ ("qemu" | "lxc"), vmid, "resize"]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            let mut errors = BTreeMap::new();
            for (k, v) in &p {
                let t = text(v);
                let bad = match k.as_str() {
                    "disk" => {
                        let ok = if *kind == "lxc" {
                            t == "rootfs" || t.starts_with("mp")
                        } else {
                            ["scsi", "virtio", "sata", "ide"]
                                .iter()
                                .any(|d| t.strip_prefix(d).is_some_and(|n| n.parse::<u8>().is_ok()))
                        };
                        (!ok).then(|| format!("value '{t}' does not have a value in the enumeration"))
                    }
                    "size" => {
                        let s = t.strip_prefix('+').unwrap_or(&t);
                        let num = s.trim_end_matches(['K', 'M', 'G', 'T']);
                        (num.is_empty() || num.parse::<f64>().is_err() || s.len() - num.len() > 1)
                            .then(|| "value does not match the regex pattern".into())
                    }
                    "digest" | "skiplock" => None,
                    _ => Some(
                        "property is not defined in schema and the schema does not allow additional properties".into(),
                    ),
                };
                if let Some(b) = bad {
                    errors.insert(k.clone(), b);
                }
            }
            for req in ["disk", "size"] {
                if !p.contains_key(req) {
                    errors.insert(req.into(), "property is missing and it is not optional".into());
                }
            }
            if !errors.is_empty() {
                return param_errors(errors);
            }
            let (disk, size) =
                (p.get("disk").map(text).unwrap_or_default(), p.get("size").map(text).unwrap_or_default());
            let gib = |s: &str| {
                let n: f64 = s.trim_end_matches(['K', 'M', 'G', 'T']).parse().unwrap_or(0.0);
                match s.chars().last() {
                    Some('T') => n * 1024.0,
                    Some('G') => n,
                    Some('M') => n / 1024.0,
                    Some('K') => n / 1048576.0,
                    _ => n / 1073741824.0,
                }
            };
            let current = st.guests.get(&vmid).filter(|g| g.kind == *kind).and_then(|g| g.config.get(&disk)).map(text);
            let have = current.as_deref().and_then(|c| c.split(',').find_map(|x| x.strip_prefix("size=")).map(gib));
            let want = match size.strip_prefix('+') {
                Some(add) => have.unwrap_or(0.0) + gib(add),
                None => gib(&size),
            };
            let new = format!("{}G", want.round() as u64);
            if *kind == "lxc" {
                // LXC checks at once.
                let Some(have) = have else { return no_config(node, kind, vmid) };
                if want < have {
                    return die("unable to shrink disk size");
                }
                if want == have {
                    return die("disk is already at specified size");
                }
            }
            let fails = match have {
                None if !st.guests.contains_key(&vmid) => {
                    Some(format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"))
                }
                None => Some(format!("disk '{disk}' does not exist")),
                Some(h) if want < h => Some("shrinking disks is not supported".into()),
                _ => None,
            };
            let upid = task(st, user, "resize", vmid, Duration::from_millis(100), Effect::Resize(vmid), fails);
            if let Some(t) = st.tasks.get_mut(&upid) {
                t.resize = Some((disk, new));
            }
            ok(json!(upid))
        }
        (
            "POST",
            ["nodes", node, kind @ ("qemu" | "lxc"), vmid, "status", action @ ("start" | "stop" | "shutdown")],
        ) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            let allowed: &[&str] = match *action {
                "shutdown" => &["timeout", "forceStop", "skiplock"],
                "stop" => &["timeout", "skiplock"],
                _ => &["timeout", "skiplock"],
            };
            if let Err(e) = verify(&p, kind, allowed, &[], false) {
                return e;
            }
            let guest = st.guests.get(&vmid).filter(|g| g.kind == *kind).cloned();
            let ct = *kind == "lxc";
            match (*action, &guest) {
                // LXC answers these at once; QEMU only in the task.
                ("start", Some(g)) if ct && g.running => return die(&format!("CT {vmid} already running")),
                ("stop" | "shutdown", g) if ct && !g.as_ref().is_some_and(|g| g.running) => {
                    return die(&format!("CT {vmid} not running"));
                }
                ("start", Some(g)) if g.is_template() => {
                    let fail = Some("you can't start a vm if it's a template".into());
                    return ok(json!(task(
                        st,
                        user,
                        "qmstart",
                        vmid,
                        Duration::from_millis(50),
                        Effect::Start(vmid),
                        fail
                    )));
                }
                _ => {}
            }
            let missing = guest.is_none().then(|| no_config_text(node, kind, vmid));
            let locked = guest
                .as_ref()
                .and_then(|g| g.locked().map(|l| format!("{} is locked ({l})", if ct { "CT" } else { "VM" })));
            let fails = missing.or(locked);
            let prefix = if ct { "vz" } else { "qm" };
            let (effect, takes) = match *action {
                "start" => (Effect::Start(vmid), Duration::from_millis(200)),
                "shutdown" => (Effect::Stop(vmid), Duration::from_millis(200)),
                _ => (Effect::Stop(vmid), Duration::from_millis(100)),
            };
            // A guest that ignores ACPI: the shutdown waits out its timeout and fails.
            let stubborn = *action == "shutdown" && guest.as_ref().is_some_and(|g| g.stubborn && g.running);
            if stubborn && fails.is_none() && !p.get("forceStop").and_then(boolean).unwrap_or(false) {
                let timeout = Duration::from_secs(p.get("timeout").and_then(int).unwrap_or(60).max(0) as u64);
                let fail =
                    Some(if ct { "container did not stop" } else { "VM quit/powerdown failed - got timeout" }.into());
                return ok(json!(task(st, user, &format!("{prefix}{action}"), vmid, timeout, Effect::Nothing, fail)));
            }
            ok(json!(task(st, user, &format!("{prefix}{action}"), vmid, takes, effect, fails)))
        }
        ("GET", ["nodes", node, kind @ ("qemu" | "lxc"), vmid, "status", "current"]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            let Some(g) = st.guests.get(&vmid).filter(|g| g.kind == *kind) else { return no_config(node, kind, vmid) };
            let status = if g.running { "running" } else { "stopped" };
            let uptime = g.started.map(|s| s.elapsed().as_secs()).unwrap_or(0);
            let mut v = json!({"vmid": vmid, "status": status, "name": g.name(), "uptime": uptime, "cpus": 1,
                "maxmem": 1073741824u64, "mem": 0, "maxdisk": 8589934592u64, "disk": 0, "ha": {"managed": 0}});
            if *kind == "qemu" {
                v["qmpstatus"] = json!(status);
                if g.config.get("agent").is_some_and(|a| text(a).split(',').next() == Some("1")) {
                    v["agent"] = json!(1);
                }
            } else {
                v["type"] = json!("lxc");
            }
            for k in ["lock", "tags"] {
                if let Some(x) = g.config.get(k) {
                    v[k] = x.clone();
                }
            }
            if g.is_template() {
                v["template"] = json!(1);
            }
            if g.running {
                v["pid"] = json!(50_000 + vmid);
            }
            ok(v)
        }
        ("GET", ["nodes", node, "qemu", vmid, "agent", "network-get-interfaces"]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            let Some(g) = st.guests.get(&vmid).filter(|g| g.kind == "qemu") else {
                return no_config(node, "qemu", vmid);
            };
            if !g.config.contains_key("agent") {
                return die("No QEMU guest agent configured");
            }
            if !g.running {
                return die(&format!("VM {vmid} is not running"));
            }
            let up = g.started.is_some_and(|s| s.elapsed() >= Duration::from_millis(300));
            if g.no_agent || !up || text(&g.config["agent"]).starts_with('0') {
                return die("QEMU guest agent is not running");
            }
            let ip = format!("10.10.{}.{}", vmid / 250 % 250, vmid % 250 + 2);
            ok(json!({"result": [
                {"name": "lo", "hardware-address": "00:00:00:00:00:00",
                 "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                                  {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
                {"name": "eth0", "hardware-address": "bc:24:11:5a:3c:01",
                 "ip-addresses": [{"ip-address": ip, "ip-address-type": "ipv4", "prefix": 24},
                                  {"ip-address": "fe80::be24:11ff:fe5a:3c01", "ip-address-type": "ipv6", "prefix": 64}]}]}))
        }
        ("GET", ["nodes", _, "lxc", vmid, "interfaces"]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            // Stopped or missing: null, no config check (as PVE does).
            let Some(_) = st.guests.get(&vmid).filter(|g| g.kind == "lxc" && g.running) else { return ok(Value::Null) };
            let ip = format!("10.20.{}.{}", vmid / 250 % 250, vmid % 250 + 2);
            ok(json!([
                {"name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128"},
                {"name": "eth0", "hwaddr": "bc:24:11:aa:bb:cc", "hardware-address": "bc:24:11:aa:bb:cc",
                 "inet": format!("{ip}/24"), "inet6": "fe80::be24:11ff:feaa:bbcc/64",
                 "ip-addresses": [{"ip-address": ip, "ip-address-type": "inet", "prefix": 24},
                                  {"ip-address": "fe80::be24:11ff:feaa:bbcc", "ip-address-type": "inet6", "prefix": 64}]}]))
        }
        ("DELETE", ["nodes", node, kind @ ("qemu" | "lxc"), vmid]) => {
            let vmid: u32 = vmid.parse().unwrap_or(0);
            if let Err(e) = verify(&p, kind, &["purge", "destroy-unreferenced-disks", "force", "skiplock"], &[], false)
            {
                return e;
            }
            let Some(g) = st.guests.get(&vmid).filter(|g| g.kind == *kind).cloned() else {
                return no_config(node, kind, vmid);
            };
            if g.running {
                if *kind == "qemu" {
                    return die(&format!("VM {vmid} is running - destroy failed"));
                }
                if !p.get("force").and_then(boolean).unwrap_or(false) {
                    return die(&format!("unable to destroy CT {vmid} - container is running"));
                }
            }
            let fails = g.locked().map(|l| format!("{} is locked ({l})", if *kind == "qemu" { "VM" } else { "CT" }));
            let kind_name = if *kind == "qemu" { "qmdestroy" } else { "vzdestroy" };
            ok(json!(task(st, user, kind_name, vmid, Duration::from_millis(200), Effect::Destroy(vmid), fails)))
        }
        (m, _) => {
            Response::json(501, &json!({"data": null, "message": format!("Method '{m} {path}' not implemented\n")}))
        }
    }
}

fn no_config_text(node: &str, kind: &str, vmid: u32) -> String {
    let dir = if kind == "qemu" { "qemu-server" } else { "lxc" };
    format!("Configuration file 'nodes/{node}/{dir}/{vmid}.conf' does not exist")
}

/// What `ssh-keygen -l` accepts of an OpenSSH public key line: a type and a
/// base64 blob that begins with that same type (the wire format's string).
fn public_key_ok(line: &str) -> bool {
    use base64::Engine;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (Some(kind), Some(blob)) = (f.first(), f.get(1)) else { return false };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(blob) else { return false };
    let len = bytes.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    len.and_then(|n| bytes.get(4..4 + n)) == Some(kind.as_bytes()) && bytes.len() > 4 + kind.len() + 4
}

/// Takes a new guest's config away until its task ends (PVE writes it then;
/// meanwhile the config is only `lock: WHAT`). Returns the config to write.
fn lock_until_done(st: &mut State, vmid: u32, what: &str) -> Map<String, Value> {
    let Some(g) = st.guests.get_mut(&vmid) else { return Map::new() };
    let config = std::mem::take(&mut g.config);
    g.config.insert("lock".into(), json!(what));
    config
}

fn pend(st: &mut State, upid: &str, config: Map<String, Value>) {
    if let Some(t) = st.tasks.get_mut(upid) {
        t.pending = Some(config);
    }
}
