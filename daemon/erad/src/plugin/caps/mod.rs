//! The host capabilities a plugin can be granted, each in its own module with
//! its grant (the operator's data), its host functions and its per-call state
//! — the shape of wasmtime's `wasi-config` and Spin's factors:
//!
//! - **grant** (at config load): the operator's `[plugins.NAME.grants]` table
//!   deserializes into [`Grants`]; each capability checks its own data;
//! - **load** (once per plugin): every import of the component must map to a
//!   granted capability ([`required_grant`]), or the plugin is refused naming
//!   the import;
//! - **call** (once per operation): the host functions see the call's
//!   [`CallScope`] (deployment, revision, work dir, volumes) and the grant,
//!   and check both again before doing anything.
//!
//! | capability | import | what it confines |
//! | --- | --- | --- |
//! | `log` | `era:plugin/log` | lines into erad's log, tagged |
//! | `process` | `era:plugin/process` | allowlisted programs, no `PATH`/loader env, output files beneath the work dir |
//! | `oci` | `era:plugin/oci-runtime` | runc/crun under erad's own root, bundle checked against the policy |
//! | `lxc` | `era:plugin/lxc` | lxc-* on erad's own lxcpath, config entries checked against the policy |
//! | `http` | `wasi:http/outgoing-handler`, `wasi:http/types`, `era:plugin/http-endpoints` | requests only beneath the granted endpoints, credentials added by erad, bodies capped, deadlines |
//!
//! WASI filesystem access is every plugin's, limited to the call's work dir.
//! There are no sockets: WASI sockets are refused at load; remote APIs are
//! reached through `http`.

pub mod http;
pub mod log;
pub mod lxc;
pub mod oci;
pub mod policy;
pub mod process;

use serde::Deserialize;
use std::path::PathBuf;

/// What the operator granted one plugin (`[plugins.NAME.grants]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `log = true`: lines into erad's log.
    #[serde(default)]
    pub log: bool,
    /// `process = { programs = [...] }`: run these host programs.
    pub process: Option<process::ProcessGrant>,
    /// `oci = { runtimes = [...], ... }`: OCI containers under erad's root.
    pub oci: Option<oci::OciGrant>,
    /// `lxc = { templates = [...], bridges = [...], ... }`: LXC containers.
    pub lxc: Option<lxc::LxcGrant>,
    /// `http = { endpoints = { NAME = { url = ..., ... } } }`: requests to these.
    pub http: Option<http::HttpGrant>,
}

/// A grant's data is wrong: names the key and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct GrantError {
    pub key: String,
    pub message: String,
}

impl GrantError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> GrantError {
        GrantError { key: key.into(), message: message.into() }
    }
}

impl Grants {
    /// Checks every grant's data; keys in errors are relative to `grants`.
    pub fn check(&self) -> Result<(), GrantError> {
        if self.oci.is_some() && self.lxc.is_some() {
            // erad checks what each runtime will open just before it runs;
            // a running container of one could change it under the other.
            return Err(GrantError::new(
                "lxc",
                "a plugin may hold oci or lxc, not both: a workload of one could swap what erad checked for the other",
            ));
        }
        if let Some(p) = &self.process {
            p.check()?;
        }
        if let Some(o) = &self.oci {
            o.check()?;
        }
        if let Some(l) = &self.lxc {
            l.check()?;
        }
        if let Some(h) = &self.http {
            h.check()?;
        }
        Ok(())
    }

    /// The granted capabilities by name, for `era plugins`.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.log {
            v.push("log");
        }
        if self.process.is_some() {
            v.push("process");
        }
        if self.oci.is_some() {
            v.push("oci");
        }
        if self.lxc.is_some() {
            v.push("lxc");
        }
        if self.http.is_some() {
            v.push("http");
        }
        v
    }

    fn has(&self, cap: Capability) -> bool {
        match cap {
            Capability::Log => self.log,
            Capability::Process => self.process.is_some(),
            Capability::Oci => self.oci.is_some(),
            Capability::Lxc => self.lxc.is_some(),
            Capability::Http => self.http.is_some(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Log,
    Process,
    Oci,
    Lxc,
    Http,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Process => "process",
            Capability::Oci => "oci",
            Capability::Lxc => "lxc",
            Capability::Http => "http",
        }
    }
}

/// Why an import cannot be linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportRefusal {
    /// It needs a capability the operator did not grant.
    NotGranted(Capability),
    /// erad has no such capability.
    Unknown,
    /// erad refuses it outright, with the reason.
    Refused(&'static str),
}

/// The capability an import needs: `Ok(None)` for the WASI interfaces every
/// plugin gets (clocks, random, io, cli; the filesystem limited to the work dir).
pub fn required_grant(import: &str, grants: &Grants) -> Result<Option<Capability>, ImportRefusal> {
    let iface = import.split('@').next().unwrap_or(import);
    let cap = match iface {
        "era:plugin/types" => return Ok(None),
        "era:plugin/log" => Capability::Log,
        "era:plugin/process" => Capability::Process,
        "era:plugin/oci-runtime" => Capability::Oci,
        "era:plugin/lxc" => Capability::Lxc,
        "era:plugin/http-endpoints" | "wasi:http/outgoing-handler" | "wasi:http/types" => Capability::Http,
        _ if ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/"]
            .iter()
            .any(|p| iface.starts_with(p)) =>
        {
            return Ok(None);
        }
        _ if iface.starts_with("wasi:sockets/") => {
            return Err(ImportRefusal::Refused(
                "erad grants plugins no sockets; runtimes reach containers through the oci and lxc capabilities, and remote APIs through http",
            ));
        }
        _ => return Err(ImportRefusal::Unknown),
    };
    if grants.has(cap) { Ok(Some(cap)) } else { Err(ImportRefusal::NotGranted(cap)) }
}

/// Where one call may act: set by the host from the revision's record, never
/// from anything the plugin says.
#[derive(Debug, Clone)]
pub struct CallScope {
    pub deployment: String,
    /// `None` for calls outside a revision (`info`, `validate`): the runtime
    /// capabilities refuse to create or touch containers then.
    pub revision: Option<u64>,
    pub work_dir: PathBuf,
    /// The deployment's volumes on the host (the only mount sources outside
    /// the work dir, besides the policy's host files).
    pub volumes: Vec<PathBuf>,
}

impl CallScope {
    /// The revision, or a refusal naming what was attempted.
    pub fn revision(&self, what: &str) -> Result<u64, String> {
        self.revision.ok_or_else(|| format!("{what} is only possible in a call on an installed revision"))
    }
}

/// What the runtime capabilities keep on the host: their roots, under erad's
/// data dir, and the shim that stays with each OCI container.
#[derive(Debug, Clone)]
pub struct RuntimeHome {
    /// `DATA/runtimes`.
    pub root: PathBuf,
    /// A random id of this erad's store, part of every container id, so a
    /// container another store (or a person) made is never taken for ours.
    pub instance: String,
    /// `era-shim`, next to erad's binary; without it exited containers have
    /// no exit code.
    pub shim: Option<PathBuf>,
}

impl RuntimeHome {
    /// The container (or LXC) name of a revision.
    pub fn container_id(&self, deployment: &str, revision: u64) -> String {
        format!("era-{}-{deployment}-{revision}", self.instance)
    }

    /// Finds era-shim next to the running executable.
    pub fn find_shim() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let shim = exe.parent()?.join("era-shim");
        shim.is_file().then_some(shim)
    }
}

/// The name a grant's program entry answers to: a bare name, or the file
/// name of an absolute path; `None` for anything else (`bin/sh`, "").
pub fn program_name(entry: &str) -> Option<&str> {
    let path = std::path::Path::new(entry);
    if entry.is_empty() || (!path.is_absolute() && entry.contains('/')) {
        return None;
    }
    path.file_name().and_then(|f| f.to_str())
}

/// The granted entry a plugin's `name` refers to (the entry itself, or its name).
pub fn granted_program<'a>(name: &str, granted: &'a [String]) -> Option<&'a String> {
    granted.iter().find(|g| g.as_str() == name || program_name(g) == Some(name))
}

/// Resolves a program name to an executable: an absolute path as is, else
/// the first match on erad's `PATH`.
pub fn find_program(entry: &str) -> Option<PathBuf> {
    let candidate = std::path::Path::new(entry);
    if candidate.is_absolute() {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(entry)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_the_grants_they_need() {
        let none = Grants::default();
        let all = Grants {
            log: true,
            process: Some(process::ProcessGrant { programs: vec!["sh".into()] }),
            oci: Some(toml::from_str("runtimes = [\"runc\"]").unwrap()),
            lxc: Some(toml::from_str("").unwrap()),
            http: Some(toml::from_str("[endpoints.a]\nurl = \"http://127.0.0.1:1\"").unwrap()),
        };
        assert_eq!(required_grant("era:plugin/log@0.3.0", &all), Ok(Some(Capability::Log)));
        assert_eq!(required_grant("era:plugin/process@0.3.0", &all), Ok(Some(Capability::Process)));
        assert_eq!(required_grant("era:plugin/oci-runtime@0.3.0", &all), Ok(Some(Capability::Oci)));
        assert_eq!(required_grant("era:plugin/lxc@0.3.0", &all), Ok(Some(Capability::Lxc)));
        assert_eq!(required_grant("era:plugin/lxc@0.3.0", &none), Err(ImportRefusal::NotGranted(Capability::Lxc)));
        assert_eq!(required_grant("wasi:http/outgoing-handler@0.2.12", &all), Ok(Some(Capability::Http)));
        assert_eq!(required_grant("wasi:http/types@0.2.0", &all), Ok(Some(Capability::Http)));
        assert_eq!(required_grant("era:plugin/http-endpoints@0.3.0", &all), Ok(Some(Capability::Http)));
        assert_eq!(
            required_grant("wasi:http/outgoing-handler@0.2.12", &none),
            Err(ImportRefusal::NotGranted(Capability::Http))
        );
        assert_eq!(required_grant("wasi:http/incoming-handler@0.2.12", &all), Err(ImportRefusal::Unknown));
        assert_eq!(required_grant("wasi:filesystem/types@0.2.6", &none), Ok(None));
        assert!(matches!(required_grant("wasi:sockets/tcp@0.2.0", &all), Err(ImportRefusal::Refused(_))));
        assert_eq!(required_grant("acme:evil/backdoor", &all), Err(ImportRefusal::Unknown));
        let err = all.check().unwrap_err().to_string();
        assert!(err.contains("oci or lxc, not both"), "{err}");
        assert!(Grants { lxc: None, ..all }.check().is_ok());
    }
}
