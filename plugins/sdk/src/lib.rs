//! The guest side of the era plugin contract (`wit/plugin.wit`).
//!
//! A plugin implements [`Runtime`] (the generated `Guest` trait of the
//! `runtime` interface) and exports it with [`export_plugin!`]:
//!
//! ```ignore
//! struct Hello;
//! impl era_plugin_sdk::Runtime for Hello { /* info, validate, install, ... */ }
//! era_plugin_sdk::export_plugin!(Hello);
//! ```
//!
//! The helpers here wrap the host imports: [`log`], [`process`], [`oci`] and
//! [`lxc`]. A plugin
//! only imports what it calls, and erad refuses a plugin that imports an
//! interface the operator did not grant, so call only what you need.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "era_plugin_sdk::bindings",
    });
}

pub use bindings::era::plugin::types::{
    Artifact, ArtifactKind, Error, ExecOutput, Health, HealthCheck, HttpProbe, PluginInfo, Port, Probe, RuntimeError,
    TcpProbe, Volume, Workload, WorkloadStatus as Status,
};
pub use bindings::export_plugin;
pub use bindings::exports::era::plugin::runtime::Guest as Runtime;

/// The revision's work dir as the plugin sees it.
pub const WORK_DIR: &str = "/work";

/// Logging into erad's log (needs the `log` grant).
pub mod log {
    use crate::bindings::era::plugin::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Running allowlisted host programs (needs the `process` grant).
pub mod process {
    pub use crate::bindings::era::plugin::process::{Command, Exit, Output, ProcessError};

    /// A command with captured output, no stdin and the host's default timeout.
    pub fn command(program: &str, args: &[&str]) -> Command {
        Command {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            stdin: None,
            timeout_ms: 0,
            stdout: Output::Capture,
            stderr: Output::Capture,
        }
    }

    pub fn run(command: &Command) -> Result<Exit, ProcessError> {
        crate::bindings::era::plugin::process::run(command)
    }

    impl ProcessError {
        /// The failure in words (the generated `Display` is `Debug`'s).
        pub fn message(&self) -> String {
            match self {
                ProcessError::NotAllowed(m) | ProcessError::SpawnFailed(m) | ProcessError::Invalid(m) => m.clone(),
                ProcessError::TimedOut(ms) => format!("timed out after {ms} ms"),
            }
        }
    }

    /// How a process failure reads as a plugin error: a program the operator
    /// did not allow is a configuration problem, a timeout may pass, the rest
    /// is a failure.
    impl From<ProcessError> for crate::Error {
        fn from(e: ProcessError) -> Self {
            match e {
                ProcessError::NotAllowed(m) => crate::Error::InvalidConfig(m),
                ProcessError::TimedOut(_) => crate::Error::Unavailable(e.message()),
                ProcessError::SpawnFailed(m) | ProcessError::Invalid(m) => crate::Error::Failed(m),
            }
        }
    }
}

/// OCI containers run by the host (needs the `oci` grant): write
/// `bundle/config.json` in the work dir, then `run` (or `create` and
/// `start`), `state`, `kill`, `delete`, `exec` this revision's container.
pub mod oci {
    pub use crate::bindings::era::plugin::oci_runtime::*;
    use serde_json::{Value, json};

    /// Docker's default capabilities: what the host's policy allows when the
    /// operator's grant names none.
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

    /// A bundle config (`bundle/config.json`) that the host's default policy
    /// accepts: `args` as root in `<work dir>/rootfs`, Docker's default
    /// capabilities, mounts, masked and read-only paths, no devices, its own
    /// pid, ipc, uts, mount and network namespaces, `noNewPrivileges`. Adjust
    /// it (user, env, volumes, resources...) and write it.
    pub fn default_bundle(work_dir: &str, args: &[String]) -> Value {
        let caps = DEFAULT_CAPABILITIES;
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": format!("{work_dir}/rootfs"), "readonly": false},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
                "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    /// Writes `bundle/config.json` in the work dir atomically.
    pub fn write_bundle(config: &Value) -> Result<(), crate::Error> {
        let fail = |e: std::io::Error| crate::Error::Failed(format!("writing the bundle: {e}"));
        let dir = format!("{}/bundle", crate::WORK_DIR);
        std::fs::create_dir_all(&dir).map_err(fail)?;
        std::fs::create_dir_all(format!("{}/logs", crate::WORK_DIR)).map_err(fail)?;
        let text = serde_json::to_vec_pretty(config).map_err(|e| crate::Error::Failed(e.to_string()))?;
        std::fs::write(format!("{dir}/config.json.tmp"), text).map_err(fail)?;
        std::fs::rename(format!("{dir}/config.json.tmp"), format!("{dir}/config.json")).map_err(fail)
    }
}

/// LXC containers run by the host (needs the `lxc` grant).
pub mod lxc {
    pub use crate::bindings::era::plugin::lxc::*;
}

/// How a runtime capability's refusal reads as a plugin error: what the
/// operator did not grant or the policy refuses is a configuration problem.
impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotAllowed(m) => Error::InvalidConfig(format!("not granted: {m}")),
            RuntimeError::Policy(m) => Error::InvalidConfig(format!("refused by the host's policy: {m}")),
            RuntimeError::NotFound(m) => Error::NotFound(m),
            RuntimeError::Failed(m) => Error::Failed(m),
        }
    }
}

/// The OCI image config erad passes with an image artifact: what runtimes
/// that start an image's process need from it.
pub mod image {
    use crate::{Error, Workload};
    use serde::Deserialize;

    #[derive(Deserialize, Default, Debug, Clone)]
    pub struct ImageConfig {
        #[serde(default)]
        pub config: RunConfig,
    }

    #[derive(Deserialize, Default, Debug, Clone)]
    #[serde(rename_all = "PascalCase")]
    pub struct RunConfig {
        #[serde(default)]
        pub env: Option<Vec<String>>,
        #[serde(default)]
        pub entrypoint: Option<Vec<String>>,
        #[serde(default)]
        pub cmd: Option<Vec<String>>,
        #[serde(default)]
        pub working_dir: Option<String>,
        #[serde(default)]
        pub user: Option<String>,
    }

    impl ImageConfig {
        /// The workload's image config; empty for other artifacts.
        pub fn of(w: &Workload) -> Result<ImageConfig, Error> {
            match &w.artifact.image_config {
                Some(t) => serde_json::from_str(t)
                    .map_err(|e| Error::InvalidConfig(format!("the image config is not valid JSON: {e}"))),
                None => Ok(ImageConfig::default()),
            }
        }

        /// The process to run: `command`/`args` override the image's
        /// entrypoint/cmd; a new command drops the image's cmd, as Docker does.
        pub fn argv(&self, command: Option<&[String]>, args: Option<&[String]>) -> Vec<String> {
            let c = &self.config;
            let entry = command.map(<[String]>::to_vec).or_else(|| c.entrypoint.clone()).unwrap_or_default();
            let rest = match command {
                Some(_) => args.map(<[String]>::to_vec).unwrap_or_default(),
                None => args.map(<[String]>::to_vec).or_else(|| c.cmd.clone()).unwrap_or_default(),
            };
            entry.into_iter().chain(rest).collect()
        }

        /// The environment: `base`, then the image's, then the workload's,
        /// each key set once (the later wins, keeping its first position).
        pub fn env(&self, w: &Workload, base: &[(&str, &str)]) -> Vec<(String, String)> {
            let mut env: Vec<(String, String)> = Vec::new();
            let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.to_string(),
                None => env.push((k.to_string(), v.to_string())),
            };
            for (k, v) in base {
                set(k, v);
            }
            for kv in self.config.env.iter().flatten() {
                if let Some((k, v)) = kv.split_once('=') {
                    set(k, v);
                }
            }
            for (k, v) in &w.env {
                set(k, v);
            }
            env
        }
    }
}

/// Small JSON state files in the work dir: how a plugin remembers what it did
/// so that every operation can be idempotent.
pub mod state {
    use serde::{Serialize, de::DeserializeOwned};
    use std::{fs, io, path::PathBuf};

    fn path(name: &str) -> PathBuf {
        PathBuf::from(crate::WORK_DIR).join(name)
    }

    /// Reads `name`; `Ok(None)` when it does not exist yet.
    pub fn read<T: DeserializeOwned>(name: &str) -> Result<Option<T>, String> {
        match fs::read(path(name)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("state file {name} is corrupt: {e}"))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read state file {name}: {e}")),
        }
    }

    /// Writes `name` atomically (temp file, flushed to disk, renamed), so a
    /// crash or a power cut mid-write leaves the old state, never a torn or
    /// empty one.
    pub fn write<T: Serialize>(name: &str, value: &T) -> Result<(), String> {
        use std::io::Write;
        let tmp = path(&format!(".{name}.tmp"));
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
        let err = |e: io::Error| format!("cannot write state file {name}: {e}");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(err)?;
        fs::rename(&tmp, path(name)).map_err(err)
    }

    pub fn remove(name: &str) -> Result<(), String> {
        match fs::remove_file(path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove state file {name}: {e}")),
        }
    }
}

impl Status {
    /// A running, healthy workload.
    pub fn healthy(message: impl Into<String>) -> Self {
        Status { running: true, health: Health::Healthy, exit_code: None, message: message.into(), outputs: Vec::new() }
    }

    /// A workload that ran and is no longer running, with its exit code if known.
    pub fn exited(message: impl Into<String>, exit_code: Option<i32>) -> Self {
        Status { running: false, health: Health::Unhealthy, exit_code, message: message.into(), outputs: Vec::new() }
    }

    /// A workload the runtime does not know (never made, or already gone).
    pub fn missing(message: impl Into<String>) -> Self {
        Status {
            running: false,
            health: Health::Unknown,
            exit_code: None,
            message: message.into(),
            outputs: Vec::new(),
        }
    }
}

/// The `exec` of a runtime with no workload to run commands in (the spec's
/// `health.exec` then fails with this message).
pub fn exec_unsupported(runtime: &str) -> Result<ExecOutput, Error> {
    Err(Error::InvalidConfig(format!("{runtime} has no workload to run commands in")))
}

/// Polls `done` every 100 ms until it says yes (`Ok(true)`) or `within`
/// passes (`Ok(false)`); its errors end the wait.
pub fn wait_until<E>(within: std::time::Duration, mut done: impl FnMut() -> Result<bool, E>) -> Result<bool, E> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if done()? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// HTTP to the endpoints the operator granted (needs the `http` grant and
/// this crate's `http` feature), over `wasi:http`. erad adds the endpoint's
/// credential to every request and refuses anything not beneath a granted
/// URL; the plugin never sees a token.
#[cfg(feature = "http")]
pub mod http {
    use crate::Error;
    pub use crate::bindings::era::plugin::http_endpoints::Endpoint;
    use std::io::{Read, Write};
    use std::time::Duration;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, HeaderError, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };

    /// Every endpoint granted to this plugin.
    pub fn endpoints() -> Vec<Endpoint> {
        crate::bindings::era::plugin::http_endpoints::granted()
    }

    /// The endpoint a spec names (`config.endpoint`), or the only one.
    pub fn endpoint(name: Option<&str>) -> Result<Endpoint, Error> {
        let all = endpoints();
        let names = || all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => all.iter().find(|e| e.name == n).cloned().ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "config.endpoint: {n:?} is not granted to this plugin (granted: {})",
                    names()
                ))
            }),
            None if all.len() == 1 => Ok(all[0].clone()),
            None if all.is_empty() => Err(Error::InvalidConfig("no http endpoint is granted to this plugin".into())),
            None => {
                Err(Error::InvalidConfig(format!("config.endpoint: name one of the granted endpoints ({})", names())))
            }
        }
    }

    /// One request. `url` is absolute (an endpoint's `url` + a path).
    #[derive(Debug, Clone, Default)]
    pub struct Request {
        pub method: String,
        pub url: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        /// Asked of the host; it never waits longer than its own limits.
        pub timeout: Option<Duration>,
    }

    impl Request {
        pub fn new(method: &str, url: impl Into<String>) -> Request {
            Request { method: method.into(), url: url.into(), ..Default::default() }
        }

        pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
            self.headers.push((name.into(), value.into()));
            self
        }

        pub fn json(mut self, body: &serde_json::Value) -> Request {
            self.headers.push(("content-type".into(), "application/json".into()));
            self.body = serde_json::to_vec(body).unwrap_or_default();
            self
        }

        pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Request {
            self.headers.push(("content-type".into(), content_type.into()));
            self.body = body.into();
            self
        }
    }

    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, Vec<u8>)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<String> {
            let name = name.to_ascii_lowercase();
            self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }

        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
            serde_json::from_slice(&self.body).map_err(|e| {
                Error::Failed(format!("the response (status {}) is not the JSON expected: {e}", self.status))
            })
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Why a request did not get a response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HttpError {
        /// The host refused it: not beneath a granted endpoint.
        Denied,
        /// A header the plugin may not set (credentials are the host's).
        Forbidden(String),
        /// The URL or method is malformed.
        Invalid(String),
        /// No answer within the time allowed.
        Timeout,
        /// A body larger than the host allows.
        TooLarge(String),
        /// The endpoint could not be reached (refused, DNS, TLS).
        Unreachable(String),
        Other(String),
    }

    impl std::fmt::Display for HttpError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                HttpError::Denied => f.write_str("the host denied the request: it is not beneath a granted endpoint"),
                HttpError::Forbidden(h) => write!(f, "the {h} header is the host's to set"),
                HttpError::Invalid(m) => write!(f, "invalid request: {m}"),
                HttpError::Timeout => f.write_str("no response in time"),
                HttpError::TooLarge(m) => write!(f, "body too large: {m}"),
                HttpError::Unreachable(m) => write!(f, "endpoint unreachable: {m}"),
                HttpError::Other(m) => f.write_str(m),
            }
        }
    }

    /// How a failed request reads as a plugin error: a denial or a forbidden
    /// header is the configuration's fault; a timeout or an unreachable
    /// endpoint is worth retrying.
    impl From<HttpError> for Error {
        fn from(e: HttpError) -> Error {
            match &e {
                HttpError::Denied | HttpError::Forbidden(_) | HttpError::Invalid(_) => {
                    Error::InvalidConfig(e.to_string())
                }
                HttpError::Timeout | HttpError::Unreachable(_) => Error::Unavailable(e.to_string()),
                HttpError::TooLarge(_) | HttpError::Other(_) => Error::Failed(e.to_string()),
            }
        }
    }

    fn from_code(code: ErrorCode) -> HttpError {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied,
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                HttpError::Timeout
            }
            ErrorCode::HttpRequestBodySize(n) => HttpError::TooLarge(format!("request body {n:?} bytes")),
            ErrorCode::HttpResponseBodySize(n) => HttpError::TooLarge(format!("response body {n:?} bytes")),
            c @ (ErrorCode::ConnectionRefused
            | ErrorCode::DnsError(_)
            | ErrorCode::DnsTimeout
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::TlsCertificateError
            | ErrorCode::TlsProtocolError
            | ErrorCode::TlsAlertReceived(_)
            | ErrorCode::ConnectionTerminated) => HttpError::Unreachable(format!("{c:?}")),
            other => HttpError::Other(format!("{other:?}")),
        }
    }

    fn method(m: &str) -> Method {
        match m.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    /// Sends `req` and reads the whole response.
    pub fn send(req: &Request) -> Result<Response, HttpError> {
        let (scheme, rest) = req
            .url
            .split_once("://")
            .ok_or_else(|| HttpError::Invalid(format!("{:?} is not an absolute URL", req.url)))?;
        let scheme = match scheme {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            other => return Err(HttpError::Invalid(format!("scheme {other:?}"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut fields = Vec::new();
        for (k, v) in &req.headers {
            fields.push((k.to_ascii_lowercase(), v.as_bytes().to_vec()));
        }
        if !req.body.is_empty() && !fields.iter().any(|(k, _)| k == "content-length") {
            fields.push(("content-length".into(), req.body.len().to_string().into_bytes()));
        }
        let headers = Fields::from_list(&fields).map_err(|e| match e {
            HeaderError::Forbidden => {
                let guarded = ["authorization", "proxy-authorization", "cookie", "host"];
                let which = fields.iter().map(|(k, _)| k.as_str()).find(|k| guarded.contains(k)).unwrap_or("a");
                HttpError::Forbidden(which.to_string())
            }
            other => HttpError::Invalid(format!("headers: {other:?}")),
        })?;
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| HttpError::Invalid(format!("{what} of {:?}", req.url));
        request.set_method(&method(&req.method)).map_err(|()| invalid("the method"))?;
        request.set_scheme(Some(&scheme)).map_err(|()| invalid("the scheme"))?;
        request.set_authority(Some(authority)).map_err(|()| invalid("the host"))?;
        request.set_path_with_query(Some(path)).map_err(|()| invalid("the path"))?;
        let options = req.timeout.map(|t| {
            let o = RequestOptions::new();
            let ns = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            let _ = o.set_connect_timeout(Some(ns));
            let _ = o.set_first_byte_timeout(Some(ns));
            let _ = o.set_between_bytes_timeout(Some(ns));
            o
        });
        let out = request.body().map_err(|()| HttpError::Other("the request body was taken".into()))?;
        let pending = outgoing_handler::handle(request, options).map_err(from_code)?;
        // A body the host refuses (too large) ends the write early: the
        // response future then says why.
        let wrote = match out.write() {
            Ok(mut stream) if !req.body.is_empty() => stream.write_all(&req.body).map_err(|e| e.to_string()),
            Ok(_) => Ok(()),
            Err(()) => Err("the request body stream was taken".into()),
        };
        let finished = OutgoingBody::finish(out, None);
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(from_code(code)),
            _ => return Err(HttpError::Other("no response".into())),
        };
        if let Err(e) = wrote {
            return Err(HttpError::Other(format!("writing the request body: {e}")));
        }
        finished.map_err(from_code)?;
        let status = response.status();
        let headers = response.headers().entries();
        let body = response.consume().map_err(|()| HttpError::Other("the response body was taken".into()))?;
        let mut buf = Vec::new();
        {
            let mut stream = body.stream().map_err(|()| HttpError::Other("the response body stream".into()))?;
            stream.read_to_end(&mut buf).map_err(|e| HttpError::Other(format!("reading the response: {e}")))?;
        }
        drop(IncomingBody::finish(body));
        Ok(Response { status, headers, body: buf })
    }
}
