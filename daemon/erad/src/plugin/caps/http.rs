//! The `http` capability: a plugin's requests through
//! `wasi:http/outgoing-handler`, to the endpoints the operator granted and
//! nowhere else (`[plugins.NAME.grants.http.endpoints.EP]`).
//!
//! erad, not the plugin, holds what an endpoint needs:
//! - a request whose scheme, host, port or path is not beneath a granted
//!   endpoint's URL never leaves the host: the plugin gets
//!   `HTTP-request-denied`, and erad's log says which URL was refused;
//! - `authorization`, `proxy-authorization` and `cookie` are forbidden
//!   headers for the plugin (`header-error.forbidden` when it sets one);
//!   erad adds the endpoint's credential (bearer token, Proxmox API token)
//!   itself, or presents the client certificate in the TLS handshake;
//! - TLS is checked against the endpoint's CA bundle, its pinned
//!   certificate, or the host's roots; plain `http` only to loopback;
//! - request and response bodies are capped, and every request finishes
//!   within the endpoint's timeout and what is left of the operation's
//!   deadline, so a slow or dead endpoint holds up only its own call.
//!
//! Secrets are read from files when the plugin is loaded and kept in
//! [`Secret`], whose `Debug` shows nothing; they are never logged, stored or
//! put in an error, and the plugin never sees them.

use super::GrantError;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HOST, HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks,
};

/// Default per-request timeout (the operation's deadline still bounds it).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest per-request timeout a grant may set.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_REQUEST: u64 = 4 << 20;
const DEFAULT_MAX_RESPONSE: u64 = 16 << 20;
/// The largest body cap a grant may set, either way.
const MAX_BODY: u64 = 1 << 30;
/// A secret or certificate file erad reads for an endpoint.
const MAX_FILE: u64 = 1 << 20;
/// Response headers, in all.
const MAX_RESPONSE_HEADERS: usize = 64 * 1024;
/// Requests one plugin call may have open at once; more get
/// `connection-limit-reached` at once (each holds a socket and up to its
/// endpoint's body caps in erad's memory).
pub const MAX_IN_FLIGHT_PER_CALL: usize = 16;
/// Requests all plugins together may have open at once.
const MAX_IN_FLIGHT: usize = 256;
/// Refusals of one call logged at warn; the rest are counted at the end.
const LOGGED_DENIALS: u32 = 5;
/// The methods a request may use: what REST APIs need. TRACE would echo the
/// request, credential and all, back to the plugin.
const METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];

fn daemon_slots() -> Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT))).clone()
}

/// Headers only erad sets: the plugin may not, and a response's are not
/// shown to it (a session cookie the server hands out is a credential
/// too). Also refused: headers that make a server act as someone else or
/// run another method (Kubernetes' impersonation, front-proxy identity,
/// method overrides).
fn is_credential(name: &HeaderName) -> bool {
    let n = name.as_str();
    *name == AUTHORIZATION
        || *name == PROXY_AUTHORIZATION
        || *name == COOKIE
        || *name == http::header::SET_COOKIE
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
        || n.starts_with("x-http-method")
        || n == "x-method-override"
}

/// `http = { endpoints = { NAME = { ... } } }`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointGrant>,
}

/// One granted endpoint: where it is, how to trust it, and its credential.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointGrant {
    /// `https://host:port/prefix`: requests must go beneath it.
    pub url: Option<String>,
    /// PEM roots to check the server's certificate against (instead of the host's).
    pub ca_file: Option<PathBuf>,
    /// The sha256 of the server's certificate (DER), hex with or without colons.
    pub pinned_sha256: Option<String>,
    /// A bearer token (`Authorization: Bearer ...`).
    pub token_file: Option<PathBuf>,
    /// A client certificate chain and its key, both PEM.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// A Proxmox VE API token: `user@realm!tokenid` and the file holding its secret.
    pub pve_token_id: Option<String>,
    pub pve_secret_file: Option<PathBuf>,
    /// A kubeconfig instead of the keys above: server, CA and credential
    /// from its `context` (default its current-context).
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Per-request timeout (default 30s, at most 1h).
    pub timeout: Option<String>,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl HttpGrant {
    pub fn check(&self) -> Result<(), GrantError> {
        if self.endpoints.is_empty() {
            return Err(GrantError::new("http.endpoints", "names no endpoint: grant at least one"));
        }
        for (name, e) in &self.endpoints {
            let key = |k: &str| format!("http.endpoints.{name}{}{k}", if k.is_empty() { "" } else { "." });
            if !name_ok(name) {
                return Err(GrantError::new(key(""), "an endpoint name is lowercase letters, digits, '-' and '_'"));
            }
            e.check().map_err(|(k, m)| GrantError::new(key(k), m))?;
        }
        Ok(())
    }

    /// Makes relative file paths absolute with `abs`.
    pub fn absolutize(&mut self, abs: impl Fn(PathBuf) -> PathBuf) {
        for e in self.endpoints.values_mut() {
            for p in [
                &mut e.ca_file,
                &mut e.token_file,
                &mut e.client_cert_file,
                &mut e.client_key_file,
                &mut e.pve_secret_file,
                &mut e.kubeconfig,
            ] {
                *p = p.take().map(&abs);
            }
        }
    }
}

impl EndpointGrant {
    /// Checks the keys' shape (no file is read): `Err((key, why))`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.url, &self.kubeconfig) {
            (Some(url), None) => {
                Base::parse(url).map_err(|m| ("url", m))?;
            }
            (None, Some(_)) => {
                let own = [
                    ("ca_file", self.ca_file.is_some()),
                    ("pinned_sha256", self.pinned_sha256.is_some()),
                    ("token_file", self.token_file.is_some()),
                    ("client_cert_file", self.client_cert_file.is_some()),
                    ("client_key_file", self.client_key_file.is_some()),
                    ("pve_token_id", self.pve_token_id.is_some()),
                    ("pve_secret_file", self.pve_secret_file.is_some()),
                ];
                if let Some((k, _)) = own.iter().find(|(_, set)| *set) {
                    return Err((*k, "comes from the kubeconfig: give it there, or give url instead".into()));
                }
            }
            (Some(_), Some(_)) => return Err(("kubeconfig", "give url or kubeconfig, not both".into())),
            (None, None) => return Err(("url", "is missing: give url (or kubeconfig)".into())),
        }
        if self.context.is_some() && self.kubeconfig.is_none() {
            return Err(("context", "names a kubeconfig context, and there is no kubeconfig".into()));
        }
        if self.ca_file.is_some() && self.pinned_sha256.is_some() {
            return Err(("pinned_sha256", "give ca_file or pinned_sha256, not both".into()));
        }
        if let Some(p) = &self.pinned_sha256 {
            parse_pin(p).map_err(|m| ("pinned_sha256", m))?;
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err((
                "client_key_file",
                "a client certificate needs both client_cert_file and client_key_file".into(),
            ));
        }
        if self.pve_token_id.is_some() != self.pve_secret_file.is_some() {
            return Err(("pve_secret_file", "a Proxmox API token needs both pve_token_id and pve_secret_file".into()));
        }
        if let Some(id) = &self.pve_token_id {
            let ok = id
                .split_once('@')
                .and_then(|(_, rest)| rest.split_once('!'))
                .is_some_and(|(realm, token)| !realm.is_empty() && !token.is_empty() && !id.starts_with('@'))
                && !id.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'=');
            if !ok {
                return Err(("pve_token_id", format!("{id:?} is not user@realm!tokenid")));
            }
        }
        let credentials = [self.token_file.is_some(), self.client_cert_file.is_some(), self.pve_token_id.is_some()];
        if credentials.iter().filter(|c| **c).count() > 1 {
            return Err(("token_file", "give one credential: token_file, client_cert_file + client_key_file, or pve_token_id + pve_secret_file".into()));
        }
        if let Some(t) = &self.timeout {
            let d = humantime::parse_duration(t).map_err(|e| ("timeout", format!("{t:?}: {e}")))?;
            if d.is_zero() || d > MAX_TIMEOUT {
                return Err(("timeout", format!("{t:?} is not between 1ms and 1h")));
            }
        }
        for (k, v) in [("max_request_bytes", self.max_request_bytes), ("max_response_bytes", self.max_response_bytes)] {
            if v.is_some_and(|v| v == 0 || v > MAX_BODY) {
                return Err((k, format!("must be between 1 and {MAX_BODY}")));
            }
        }
        Ok(())
    }
}

fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex).map_err(|_| format!("{text:?} is not hex"))?;
    bytes.try_into().map_err(|_| "is the sha256 of the certificate: 32 bytes, 64 hex digits".to_string())
}

/// An endpoint's URL, split as requests are compared with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Base {
    https: bool,
    /// As `http::Uri::host` gives it: lowercase, IPv6 in brackets.
    host: String,
    port: u16,
    /// `""` or `/a/b`, never ending in `/`.
    prefix: String,
}

impl Base {
    fn parse(url: &str) -> Result<Base, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: the scheme must be https (or http to loopback)")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials do not go in the URL; use token_file and the like"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!("{url:?}: a base URL has no query or fragment"));
        }
        if explicit_port(authority).is_err() {
            return Err(format!("{url:?}: the port is not a number from 1 to 65535"));
        }
        let host = authority.host().to_ascii_lowercase();
        if !https && !is_loopback(&host) {
            return Err(format!("{url:?}: plain http only to a loopback address; use https"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        check_path(&prefix).map_err(|m| format!("{url:?}: {m}"))?;
        Ok(Base { https, host, port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }), prefix })
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.prefix)
    }

    /// Whether `uri` lies beneath this base: same scheme, host and port, and
    /// a path at or below the prefix, on a segment boundary.
    fn covers(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return false,
        };
        let Some(authority) = uri.authority() else { return false };
        if authority.as_str().contains('@') || https != self.https {
            return false;
        }
        let Ok(port) = explicit_port(authority) else { return false };
        let port = port.unwrap_or(if https { 443 } else { 80 });
        if !authority.host().eq_ignore_ascii_case(&self.host) || port != self.port {
            return false;
        }
        let path = uri.path();
        if check_path(path).is_err() {
            return false;
        }
        self.prefix.is_empty() || path == self.prefix || path.starts_with(&format!("{}/", self.prefix))
    }
}

/// The port an authority names, if any; an error for one that is not
/// 1 to 65535 (which `http` would otherwise read as no port at all).
fn explicit_port(authority: &http::uri::Authority) -> Result<Option<u16>, ()> {
    let rest = authority.as_str().get(authority.host().len()..).unwrap_or("");
    match rest.strip_prefix(':') {
        None if rest.is_empty() => Ok(None),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(()),
            Ok(n) => Ok(Some(n)),
        },
        _ => Err(()),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A path erad compares by its text: no `.` or `..` segment, no backslash,
/// and no percent-encoded dot, slash or backslash that a server could decode
/// into one.
fn check_path(path: &str) -> Result<(), String> {
    if path.contains('\\') {
        return Err("a backslash in the path".into());
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00", "%25"].iter().any(|e| lower.contains(e)) {
        return Err("a percent-encoded dot, slash, backslash, NUL or percent sign in the path".into());
    }
    if path.contains(';') {
        // `..;/` is `../` to Tomcat and Spring.
        return Err("a ';' in the path".into());
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("a '.' or '..' segment in the path".into());
    }
    Ok(())
}

/// A credential header's value, and the secret in it (a token, a PVE
/// token's secret) for [`HttpEndpoints::redact`]. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct Secret(HeaderValue, Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// `prefix` + the file's content (trimmed), as a sensitive header value.
    /// Errors name the file, never its content.
    fn from_file(prefix: &str, path: &Path) -> Result<Secret, String> {
        let text = read_small(path)?;
        let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Secret::new(prefix, value).map_err(|_| {
            format!("{} holds characters a header cannot carry (a line break, a control character)", path.display())
        })
    }

    fn new(prefix: &str, secret: &str) -> Result<Secret, ()> {
        let mut v = HeaderValue::from_str(&format!("{prefix}{secret}")).map_err(|_| ())?;
        v.set_sensitive(true);
        Ok(Secret(v, secret.into()))
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(format!("{} is larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(buf)
}

/// One endpoint, resolved at load: files read, TLS set up.
pub struct Endpoint {
    pub name: String,
    base: Base,
    credential: Option<Secret>,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    timeout: Duration,
    max_request: u64,
    max_response: u64,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.base.url())
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The base URL the plugin builds its requests on.
    pub fn url(&self) -> String {
        self.base.url()
    }
}

/// Where the server's certificate is checked against.
enum Roots {
    /// The host's trust store.
    Host,
    Pem(Vec<u8>),
    Pinned([u8; 32]),
}

/// A plugin's granted endpoints, resolved.
#[derive(Debug, Default)]
pub struct HttpEndpoints {
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Endpoint {
    /// Where it is: `host` (IPv6 in brackets) and port, to reach it.
    pub fn address(&self) -> (String, u16) {
        (self.base.host.trim_start_matches('[').trim_end_matches(']').to_string(), self.base.port)
    }
}

impl HttpEndpoints {
    /// Reads every file the grant names and builds each endpoint's TLS
    /// settings. Errors name the key and the file, never a secret.
    pub fn resolve(grant: &HttpGrant) -> Result<HttpEndpoints, GrantError> {
        let mut endpoints = Vec::new();
        for (name, g) in &grant.endpoints {
            let key = format!("http.endpoints.{name}");
            endpoints.push(Arc::new(resolve_one(name, g).map_err(|m| GrantError::new(key, m))?));
        }
        Ok(HttpEndpoints { endpoints })
    }

    /// `text` with every credential of these endpoints in it (as sent, or
    /// percent-encoded) replaced by `[redacted]`: what a plugin says (its
    /// errors, status, log lines) may quote an answer from a server that
    /// echoed the credential erad added. None when there is none in it.
    pub fn redact(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for c in self.endpoints.iter().filter_map(|e| e.credential.as_ref()) {
            let encoded: String =
                c.1.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
            for needle in [c.1.as_ref(), encoded.as_str()] {
                let now = out.as_deref().unwrap_or(text);
                if !needle.is_empty() && now.contains(needle) {
                    out = Some(now.replace(needle, "[redacted]"));
                }
            }
        }
        out
    }

    /// The endpoint a request is for: of those covering it, the one with
    /// the longest prefix.
    fn covering(&self, uri: &http::Uri) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().filter(|e| e.base.covers(uri)).max_by_key(|e| e.base.prefix.len())
    }
}

fn resolve_one(name: &str, g: &EndpointGrant) -> Result<Endpoint, String> {
    let timeout = match &g.timeout {
        Some(t) => humantime::parse_duration(t).map_err(|e| format!("timeout: {e}"))?,
        None => DEFAULT_TIMEOUT,
    };
    let (base, roots, credential, client) = match &g.kubeconfig {
        Some(path) => kubeconfig::resolve(path, g.context.as_deref())?,
        None => {
            let base = Base::parse(g.url.as_deref().unwrap_or_default())?;
            let roots = match (&g.ca_file, &g.pinned_sha256) {
                (Some(ca), _) => Roots::Pem(read_small(ca)?),
                (None, Some(pin)) => Roots::Pinned(parse_pin(pin)?),
                (None, None) => Roots::Host,
            };
            let credential = match (&g.token_file, &g.pve_token_id, &g.pve_secret_file) {
                (Some(t), _, _) => Some(Secret::from_file("Bearer ", t)?),
                (None, Some(id), Some(s)) => Some(Secret::from_file(&format!("PVEAPIToken={id}="), s)?),
                _ => None,
            };
            let client = match (&g.client_cert_file, &g.client_key_file) {
                (Some(c), Some(k)) => Some((read_small(c)?, read_small(k)?)),
                _ => None,
            };
            (base, roots, credential, client)
        }
    };
    let tls = if base.https {
        let host = base.host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server = ServerName::try_from(host).map_err(|e| format!("url: {e}"))?;
        Some((tls_config(roots, client)?, server))
    } else {
        if client.is_some() || !matches!(roots, Roots::Host) {
            return Err("TLS settings (a CA, a pin, a client certificate) need an https url".into());
        }
        None
    };
    Ok(Endpoint {
        name: name.to_string(),
        base,
        credential,
        tls,
        timeout,
        max_request: g.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST),
        max_response: g.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE),
    })
}

fn tls_config(roots: Roots, client: Option<(Vec<u8>, Vec<u8>)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match roots {
        Roots::Pinned(sha256) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider }))
        }
        Roots::Pem(pem) => {
            let mut store = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("ca_file: not PEM certificates: {e}"))?;
                store.add(c).map_err(|e| format!("ca_file: {e}"))?;
            }
            if store.is_empty() {
                return Err("ca_file holds no certificate".into());
            }
            builder.with_root_certificates(store)
        }
        Roots::Host => {
            let mut store = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "the host has no trusted CA certificates (install ca-certificates, or give ca_file or pinned_sha256)"
                        .into(),
                );
            }
            builder.with_root_certificates(store)
        }
    };
    let mut config = match client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client_cert_file: not PEM certificates: {e}"))?;
            if chain.is_empty() {
                return Err("client_cert_file holds no certificate".into());
            }
            // The key's parse error says nothing of its content.
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|_| "client_key_file holds no PEM private key")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly the server certificate whose sha256 is pinned (what
/// Proxmox VE shows as the node's fingerprint); the handshake signature is
/// still checked against it.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let seen: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if seen == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

mod kubeconfig {
    //! The slice of a kubeconfig erad reads: one context's cluster (server,
    //! CA) and user (token, client certificate), as kubectl resolves them.
    //! Relative paths are taken from the kubeconfig's directory.

    use super::{Base, Roots, Secret, read_small};
    use base64::Engine as _;
    use serde::Deserialize;
    use std::path::{Path, PathBuf};

    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "current-context")]
        current_context: Option<String>,
        #[serde(default)]
        clusters: Vec<NamedCluster>,
        #[serde(default)]
        users: Vec<NamedUser>,
        #[serde(default)]
        contexts: Vec<NamedContext>,
    }

    #[derive(Deserialize)]
    struct NamedCluster {
        name: String,
        cluster: Cluster,
    }

    #[derive(Deserialize)]
    struct NamedUser {
        name: String,
        #[serde(default)]
        user: User,
    }

    #[derive(Deserialize)]
    struct NamedContext {
        name: String,
        context: Context,
    }

    #[derive(Deserialize)]
    struct Cluster {
        server: String,
        #[serde(rename = "certificate-authority")]
        ca: Option<PathBuf>,
        #[serde(rename = "certificate-authority-data")]
        ca_data: Option<String>,
        #[serde(rename = "insecure-skip-tls-verify", default)]
        insecure: bool,
    }

    #[derive(Deserialize, Default)]
    struct User {
        token: Option<String>,
        #[serde(rename = "tokenFile")]
        token_file: Option<PathBuf>,
        #[serde(rename = "client-certificate")]
        client_certificate: Option<PathBuf>,
        #[serde(rename = "client-certificate-data")]
        client_certificate_data: Option<String>,
        #[serde(rename = "client-key")]
        client_key: Option<PathBuf>,
        #[serde(rename = "client-key-data")]
        client_key_data: Option<String>,
        exec: Option<serde_yaml_ng::Value>,
        #[serde(rename = "auth-provider")]
        auth_provider: Option<serde_yaml_ng::Value>,
        username: Option<String>,
    }

    #[derive(Deserialize)]
    struct Context {
        cluster: String,
        user: Option<String>,
    }

    type Client = Option<(Vec<u8>, Vec<u8>)>;

    pub(super) fn resolve(path: &Path, context: Option<&str>) -> Result<(Base, Roots, Option<Secret>, Client), String> {
        let at = |m: String| format!("kubeconfig {}: {m}", path.display());
        let text = read_small(path).map_err(&at)?;
        // serde's message may quote a value from the file (a token): only where.
        let config: Config = serde_yaml_ng::from_slice(&text).map_err(|e| {
            at(match e.location() {
                Some(l) => format!("not a kubeconfig (at line {}, column {})", l.line(), l.column()),
                None => "not a kubeconfig".into(),
            })
        })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let file = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
        let data = |what: &str, b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| at(format!("{what} is not base64")))
        };
        let wanted = context
            .map(str::to_string)
            .or(config.current_context.clone())
            .ok_or_else(|| at("has no current-context: name one with context".into()))?;
        let ctx = config
            .contexts
            .iter()
            .find(|c| c.name == wanted)
            .ok_or_else(|| at(format!("has no context {wanted:?}")))?;
        let cluster = &config
            .clusters
            .iter()
            .find(|c| c.name == ctx.context.cluster)
            .ok_or_else(|| at(format!("context {wanted:?} names cluster {:?}, which it lacks", ctx.context.cluster)))?
            .cluster;
        let base =
            Base::parse(&cluster.server).map_err(|m| at(format!("cluster {:?}: server {m}", ctx.context.cluster)))?;
        if cluster.insecure {
            return Err(at(format!(
                "cluster {:?} sets insecure-skip-tls-verify: erad always verifies TLS (give certificate-authority)",
                ctx.context.cluster
            )));
        }
        let roots = match (&cluster.ca_data, &cluster.ca) {
            (Some(d), _) => Roots::Pem(data("certificate-authority-data", d)?),
            (None, Some(p)) => Roots::Pem(read_small(&file(p)).map_err(&at)?),
            (None, None) => Roots::Host,
        };
        let anonymous = User::default();
        let user = match &ctx.context.user {
            Some(u) => {
                &config.users.iter().find(|x| &x.name == u).ok_or_else(|| at(format!("has no user {u:?}")))?.user
            }
            None => &anonymous,
        };
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(at(
                "the user runs a credential plugin (exec or auth-provider); erad runs none: give a token or a client certificate"
                    .into(),
            ));
        }
        if user.username.is_some() {
            return Err(at("basic auth (username) is not supported: give a token or a client certificate".into()));
        }
        let credential = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(
                Secret::new("Bearer ", t.trim())
                    .map_err(|_| at("the user's token holds characters a header cannot carry".into()))?,
            ),
            (None, Some(f)) => Some(Secret::from_file("Bearer ", &file(f)).map_err(&at)?),
            (None, None) => None,
        };
        let cert = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(d), _) => Some(data("client-certificate-data", d)?),
            (None, Some(p)) => Some(read_small(&file(p)).map_err(&at)?),
            (None, None) => None,
        };
        let key = match (&user.client_key_data, &user.client_key) {
            (Some(d), _) => Some(data("client-key-data", d)?),
            (None, Some(p)) => Some(read_small(&file(p)).map_err(&at)?),
            (None, None) => None,
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(at(
                    "the user has a client certificate without its key, or a key without its certificate".into()
                ));
            }
        };
        Ok((base, roots, credential, client))
    }
}

/// The hooks of one call's store: which endpoints it may reach, and the
/// operation's deadline.
pub struct HttpHooks {
    endpoints: Option<Arc<HttpEndpoints>>,
    deadline: Instant,
    plugin: Arc<str>,
    deployment: String,
    /// This call's share of requests in flight.
    slots: Arc<tokio::sync::Semaphore>,
    denied: u32,
}

impl HttpHooks {
    pub fn new(endpoints: Option<Arc<HttpEndpoints>>, deadline: Duration, plugin: Arc<str>, deployment: &str) -> Self {
        HttpHooks {
            endpoints,
            deadline: Instant::now() + deadline,
            plugin,
            deployment: deployment.to_string(),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_CALL)),
            denied: 0,
        }
    }
}

impl Drop for HttpHooks {
    fn drop(&mut self) {
        if self.denied > LOGGED_DENIALS {
            tracing::warn!(
                plugin = &*self.plugin,
                deployment = self.deployment,
                denied = self.denied,
                "http requests denied in this call ({} logged one by one)",
                LOGGED_DENIALS
            );
        }
    }
}

fn guarded(name: &HeaderName) -> bool {
    DEFAULT_FORBIDDEN_HEADERS.contains(name) || is_credential(name)
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture = Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        guarded(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(guarded)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let (endpoints, deadline) = (&self.endpoints, self.deadline);
        let (plugin, deployment) = (self.plugin.clone(), self.deployment.clone());
        let uri = request.uri().clone();
        let found = endpoints.as_deref().and_then(|e| e.covering(&uri)).cloned();
        let allowed = found.is_some() && METHODS.contains(request.method());
        if !allowed {
            self.denied += 1;
        }
        let log_denial = self.denied <= LOGGED_DENIALS;
        // Both taken now, held until the exchange ends.
        let slots = (self.slots.clone().try_acquire_owned(), daemon_slots().try_acquire_owned());
        Box::new(async move {
            // Logged without the query, which may carry what the plugin was given.
            let shown = format!(
                "{} {}://{}{}",
                request.method(),
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map(|a| a.as_str()).unwrap_or(""),
                uri.path()
            );
            let endpoint = match found {
                Some(e) if allowed => e,
                found => {
                    if log_denial {
                        let why = if found.is_some() {
                            "the method is not allowed"
                        } else {
                            "not beneath a granted endpoint"
                        };
                        tracing::warn!(plugin = &*plugin, deployment, request = shown, "http request denied: {why}");
                    }
                    return Err(HttpError::HttpRequestDenied);
                }
            };
            let (Ok(_call_slot), Ok(_daemon_slot)) = slots else {
                tracing::warn!(
                    plugin = &*plugin,
                    deployment,
                    request = shown,
                    "http request refused: too many in flight"
                );
                return Err(HttpError::ConnectionLimitReached);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = endpoint.timeout.min(left);
            let connect = options.and_then(|o| o.connect_timeout).map_or(budget, |c| c.min(budget));
            let started = Instant::now();
            let r = tokio::time::timeout(budget, send(&endpoint, request, connect)).await;
            let r = r.unwrap_or(Err(HttpError::HttpResponseTimeout));
            match &r {
                Ok((resp, _)) => tracing::debug!(
                    plugin = &*plugin,
                    deployment,
                    endpoint = endpoint.name,
                    request = shown,
                    status = resp.status().as_u16(),
                    ms = started.elapsed().as_millis() as u64,
                    "http request"
                ),
                Err(e) => tracing::info!(plugin = &*plugin, deployment, endpoint = endpoint.name, request = shown,
                    error = %e, "http request failed"),
            }
            r
        })
    }
}

impl crate::plugin::bindings::era::plugin::http_endpoints::Host for crate::plugin::HostState {
    fn granted(&mut self) -> Vec<crate::plugin::bindings::era::plugin::http_endpoints::Endpoint> {
        let all = self.http.iter().flat_map(|h| h.endpoints.iter());
        all.map(|e| crate::plugin::bindings::era::plugin::http_endpoints::Endpoint {
            name: e.name.clone(),
            url: e.url(),
        })
        .collect()
    }
}

/// Collects a body up to `max` bytes; past it, `too_big` with the size seen.
async fn collect_capped<B>(mut body: B, max: u64, too_big: fn(Option<u64>) -> HttpError) -> Result<Bytes, HttpError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    HttpError: From<B::Error>,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let seen = (buf.len() + data.len()) as u64;
            if seen > max {
                return Err(too_big(Some(seen)));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn send(
    endpoint: &Endpoint,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let (mut parts, body) = request.into_parts();
    for h in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
        parts.headers.remove(h);
    }
    let default_port = if endpoint.base.https { 443 } else { 80 };
    let host = if endpoint.base.port == default_port {
        endpoint.base.host.clone()
    } else {
        format!("{}:{}", endpoint.base.host, endpoint.base.port)
    };
    parts.headers.insert(HOST, HeaderValue::from_str(&host).map_err(|_| HttpError::HttpRequestUriInvalid)?);
    if let Some(c) = &endpoint.credential {
        parts.headers.insert(AUTHORIZATION, c.0.clone());
    }
    if let Some(n) = content_length(&parts.headers).filter(|n| *n > endpoint.max_request) {
        return Err(HttpError::HttpRequestBodySize(Some(n)));
    }
    let body = collect_capped(body, endpoint.max_request, HttpError::HttpRequestBodySize).await?;
    parts.uri =
        parts.uri.path_and_query().map_or("/", |p| p.as_str()).parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let request = http::Request::from_parts(parts, Full::new(body));

    let addr = (endpoint.base.host.trim_start_matches('[').trim_end_matches(']'), endpoint.base.port);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &endpoint.tls {
        Some((config, server)) => {
            let tls = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(config.clone()).connect(server.clone(), tcp),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(tls_error)?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEADERS.max(8192))
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(io))
        .await?;
    // Drives the connection while the request is answered; aborted when
    // this future ends (the body is read in full before it does).
    let _conn = wasmtime_wasi::runtime::spawn(async move {
        let _ = conn.await;
    });
    let head = request.method() == http::Method::HEAD;
    let response = sender.send_request(request).await.map_err(hyper_error)?;
    let bodiless = head || matches!(response.status().as_u16(), 204 | 304);
    if let Some(n) = content_length(response.headers()).filter(|n| *n > endpoint.max_response && !bodiless) {
        return Err(HttpError::HttpResponseBodySize(Some(n)));
    }
    let (parts, body) = response.into_parts();
    let body = collect_capped(body, endpoint.max_response, HttpError::HttpResponseBodySize).await?;
    let body: WasiBody = Full::new(body).map_err(|never| match never {}).boxed_unsync();
    let done: IoFuture = Box::new(async { Ok(()) });
    Ok((http::Response::from_parts(parts, body), done))
}

/// A TLS failure that surfaced only once hyper used the connection (a TLS
/// 1.3 server refuses a client certificate after the client's handshake
/// ended) is still a TLS failure.
fn hyper_error(e: hyper::Error) -> HttpError {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref()) {
            return tls_failure(t);
        }
        source = s.source();
    }
    HttpError::Hyper(e)
}

fn tls_error(e: std::io::Error) -> HttpError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(t) => tls_failure(t),
        None => HttpError::Tls(e),
    }
}

fn tls_failure(e: &rustls::Error) -> HttpError {
    match e {
        rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
        rustls::Error::AlertReceived(alert) => {
            HttpError::TlsAlertReceived { alert_id: Some(u8::from(*alert)), alert_message: Some(format!("{alert:?}")) }
        }
        _ => HttpError::TlsProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(toml_text: &str) -> Result<(), GrantError> {
        let g: HttpGrant = toml::from_str(toml_text).unwrap();
        g.check()
    }

    #[test]
    fn grants_are_checked_naming_the_key() {
        let cases = [
            ("", "http.endpoints: names no endpoint"),
            ("[endpoints.A]\nurl = \"https://x\"", "http.endpoints.A: an endpoint name"),
            ("[endpoints.a]", "http.endpoints.a.url: is missing"),
            ("[endpoints.a]\nurl = \"ftp://x\"", "http.endpoints.a.url: \"ftp://x\": the scheme"),
            ("[endpoints.a]\nurl = \"http://10.0.0.1\"", "plain http only to a loopback"),
            ("[endpoints.a]\nurl = \"https://u:p@x\"", "credentials do not go in the URL"),
            ("[endpoints.a]\nurl = \"https://x/a/../b\"", "'.' or '..' segment"),
            ("[endpoints.a]\nurl = \"https://x?q=1\"", "no query or fragment"),
            (
                "[endpoints.a]\nurl = \"https://x\"\nca_file = \"c\"\npinned_sha256 = \"00\"",
                "pinned_sha256: give ca_file or",
            ),
            ("[endpoints.a]\nurl = \"https://x\"\npinned_sha256 = \"abcd\"", "pinned_sha256: is the sha256"),
            (
                "[endpoints.a]\nurl = \"https://x\"\nclient_cert_file = \"c\"",
                "client_key_file: a client certificate needs both",
            ),
            ("[endpoints.a]\nurl = \"https://x\"\npve_token_id = \"root@pam!era\"", "pve_secret_file: a Proxmox"),
            (
                "[endpoints.a]\nurl = \"https://x\"\npve_token_id = \"root\"\npve_secret_file = \"s\"",
                "is not user@realm!tokenid",
            ),
            (
                "[endpoints.a]\nurl = \"https://x\"\ntoken_file = \"t\"\npve_token_id = \"root@pam!x\"\npve_secret_file = \"s\"",
                "give one credential",
            ),
            ("[endpoints.a]\nurl = \"https://x\"\ntimeout = \"2h\"", "timeout: \"2h\" is not between"),
            ("[endpoints.a]\nurl = \"https://x\"\nmax_response_bytes = 0", "max_response_bytes: must be between"),
            ("[endpoints.a]\nkubeconfig = \"k\"\ntoken_file = \"t\"", "token_file: comes from the kubeconfig"),
            ("[endpoints.a]\nurl = \"https://x\"\ncontext = \"c\"", "context: names a kubeconfig context"),
        ];
        for (text, want) in cases {
            let err = grant(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        grant("[endpoints.k8s]\nurl = \"https://10.0.0.1:6443\"\ntoken_file = \"t\"").unwrap();
        grant("[endpoints.local]\nurl = \"http://127.0.0.1:8080/api\"").unwrap();
        grant("[endpoints.pve]\nurl = \"https://pve:8006/api2/json\"\npinned_sha256 = \"AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\"\npve_token_id = \"root@pam!era\"\npve_secret_file = \"s\"").unwrap();
    }

    #[test]
    fn a_request_is_covered_only_beneath_its_endpoint() {
        let base = Base::parse("https://Api.Example:8443/api2/json/").unwrap();
        assert_eq!(base.url(), "https://api.example:8443/api2/json");
        let covers = |u: &str| base.covers(&u.parse().unwrap());
        assert!(covers("https://api.example:8443/api2/json"));
        assert!(covers("https://API.example:8443/api2/json/nodes?x=1"));
        for no in [
            "http://api.example:8443/api2/json/nodes",
            "https://api.example/api2/json/nodes",
            "https://api.example:8444/api2/json/nodes",
            "https://api.example.evil:8443/api2/json/nodes",
            "https://evil@api.example:8443/api2/json/nodes",
            "https://api.example:8443/api2/jsonx",
            "https://api.example:8443/api2",
            "https://api.example:8443/api2/json/../../admin",
            "https://api.example:8443/api2/json/%2e%2e/admin",
            "https://api.example:8443/api2/json/%2F..%2Fadmin",
            "https://api.example:8443/api2/json/a%5c..",
        ] {
            assert!(!covers(no), "{no} must not be covered");
        }
        for odd in ["https://h:80066", "https://h:0", "https://h:abc"] {
            assert!(Base::parse(odd).is_err(), "{odd}");
        }
        for no in ["https://api.example:8443/api2/json/..;/admin", "https://api.example:8443/api2/json/%252e%252e/x"] {
            assert!(!covers(no), "{no} must not be covered");
        }
        let root = Base::parse("https://h").unwrap();
        assert!(root.covers(&"https://h/anything".parse().unwrap()));
        assert!(root.covers(&"https://h:443/".parse().unwrap()));
        let v6 = Base::parse("http://[::1]:9000").unwrap();
        assert!(v6.covers(&"http://[::1]:9000/x".parse().unwrap()));
    }

    fn endpoint_at(name: &str, url: &str) -> Arc<Endpoint> {
        Arc::new(resolve_one(name, &EndpointGrant { url: Some(url.into()), ..Default::default() }).unwrap())
    }

    #[test]
    fn the_most_specific_endpoint_takes_a_request() {
        let e = HttpEndpoints {
            endpoints: vec![endpoint_at("a", "http://127.0.0.1:9"), endpoint_at("b", "http://127.0.0.1:9/api/v1")],
        };
        let pick = |u: &str| e.covering(&u.parse().unwrap()).map(|e| e.name.clone());
        assert_eq!(pick("http://127.0.0.1:9/api/v1/x").as_deref(), Some("b"));
        assert_eq!(pick("http://127.0.0.1:9/api/v2").as_deref(), Some("a"));
    }

    fn request(method: &str, url: &str) -> http::Request<WasiBody> {
        let body: WasiBody = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        http::Request::builder().method(method).uri(url).body(body).unwrap()
    }

    fn send(hooks: &mut HttpHooks, method: &str, url: &str) -> std::pin::Pin<SendFuture> {
        Box::into_pin(hooks.send_request(request(method, url), None, Box::new(async { Ok(()) })))
    }

    fn hooks_for(url: &str) -> HttpHooks {
        let e = HttpEndpoints { endpoints: vec![endpoint_at("a", url)] };
        HttpHooks::new(Some(Arc::new(e)), Duration::from_secs(5), "t".into(), "d")
    }

    #[tokio::test]
    async fn one_call_has_at_most_so_many_requests_in_flight() {
        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let mut hooks = hooks_for(&url);
        let mut pending = Vec::new();
        for _ in 0..MAX_IN_FLIGHT_PER_CALL {
            pending.push(tokio::spawn(send(&mut hooks, "GET", &format!("{url}/slow"))));
        }
        let one_more = send(&mut hooks, "GET", &format!("{url}/x"));
        let r = tokio::time::timeout(Duration::from_secs(2), one_more).await.expect("refused at once, not queued");
        assert!(matches!(r, Err(HttpError::ConnectionLimitReached)), "{:?}", r.err());
        for p in pending {
            p.abort();
        }
        held.abort();
    }

    #[tokio::test]
    async fn only_rest_methods_go_out() {
        let mut hooks = hooks_for("http://127.0.0.1:9");
        for m in ["TRACE", "CONNECT", "TRACK", "PROPFIND"] {
            assert!(
                matches!(send(&mut hooks, m, "http://127.0.0.1:9/x").await, Err(HttpError::HttpRequestDenied)),
                "{m}"
            );
        }
        for h in [
            "authorization",
            "cookie",
            "set-cookie",
            "proxy-authorization",
            "impersonate-user",
            "x-remote-user",
            "x-http-method-override",
        ] {
            assert!(hooks.is_forbidden_header(&HeaderName::from_static(h)), "{h}");
        }
        assert!(!hooks.is_forbidden_header(&HeaderName::from_static("content-type")));
    }

    #[test]
    fn a_malformed_kubeconfig_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        std::fs::write(&kc, "current-context: [\"tok-3f9a-secret\"\nclusters: 7\n").unwrap();
        let g: HttpGrant = toml::from_str(&format!("[endpoints.k]\nkubeconfig = \"{}\"", kc.display())).unwrap();
        let err = HttpEndpoints::resolve(&g).unwrap_err().to_string();
        assert!(err.contains("not a kubeconfig") && !err.contains("tok-3f9a"), "{err}");
    }

    #[test]
    fn a_credential_a_plugin_quotes_is_redacted_as_sent_and_percent_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pve.secret");
        std::fs::write(&secret, "ab/c+d=e-1234\n").unwrap();
        let g: HttpGrant = toml::from_str(&format!(
            "[endpoints.pve]\nurl = \"http://127.0.0.1:1\"\npve_token_id = \"era@pve!t\"\npve_secret_file = \"{}\"",
            secret.display()
        ))
        .unwrap();
        let e = HttpEndpoints::resolve(&g).unwrap();
        let said = "echo: PVEAPIToken=era@pve!t=ab/c+d=e-1234, or ab%2Fc%2Bd%3De-1234 in a URL";
        let clean = e.redact(said).unwrap();
        assert_eq!(clean, "echo: PVEAPIToken=era@pve!t=[redacted], or [redacted] in a URL");
        assert_eq!(e.redact("nothing to see"), None);
    }

    #[test]
    fn secrets_do_not_show_in_debug_or_errors() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t-value\n").unwrap();
        let g: HttpGrant = toml::from_str(&format!(
            "[endpoints.a]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"",
            token.display()
        ))
        .unwrap();
        let resolved = HttpEndpoints::resolve(&g).unwrap();
        let shown = format!("{resolved:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(resolved.endpoints[0].credential.as_ref().unwrap().0.to_str().unwrap(), "Bearer s3cr3t-value");
        std::fs::write(&token, "s3cr3t\nsecond-line").unwrap();
        let err = HttpEndpoints::resolve(&g).unwrap_err().to_string();
        assert!(err.contains("cannot carry") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn a_kubeconfig_gives_server_ca_and_credential() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("config");
        let write = |text: &str| std::fs::write(&kc, text).unwrap();
        write(
            "apiVersion: v1\nkind: Config\ncurrent-context: ctx\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:6443\"}\n\
             users:\n- name: u\n  user: {token: kube-token}\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\npreferences: {}\n",
        );
        let g: HttpGrant = toml::from_str(&format!("[endpoints.k]\nkubeconfig = \"{}\"", kc.display())).unwrap();
        g.check().unwrap();
        let e = HttpEndpoints::resolve(&g).unwrap();
        assert_eq!(e.endpoints[0].url(), "http://127.0.0.1:6443");
        assert_eq!(e.endpoints[0].credential.as_ref().unwrap().0.to_str().unwrap(), "Bearer kube-token");
        write(
            "current-context: ctx\nclusters:\n- name: c\n  cluster: {server: \"https://k:6443\"}\nusers:\n- name: u\n  user:\n    exec: {command: aws}\n\
             contexts:\n- name: ctx\n  context: {cluster: c, user: u}\n",
        );
        let err = HttpEndpoints::resolve(&g).unwrap_err().to_string();
        assert!(err.contains("credential plugin"), "{err}");
        write(
            "current-context: ctx\nclusters:\n- name: c\n  cluster: {server: \"https://k:6443\", insecure-skip-tls-verify: true}\n\
             contexts:\n- name: ctx\n  context: {cluster: c}\n",
        );
        let err = HttpEndpoints::resolve(&g).unwrap_err().to_string();
        assert!(err.contains("always verifies TLS"), "{err}");
    }
}
