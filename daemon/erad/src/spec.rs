//! The deployment spec: what an operator applies.
//!
//! Parsing goes through `serde_path_to_error`, so a type error names the field
//! (`spec.ports[0].port: invalid value ...`); [`DeploymentSpec::check`] adds the
//! semantic rules serde cannot express. The JSON Schema that `erad schema`
//! prints is derived from these same types, so it cannot drift from the parser.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

pub const API_VERSION: &str = "era.dev/v1";
pub const KIND: &str = "Deployment";

/// A spec that does not parse or does not make sense. `path` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {path}: {message}")]
pub struct SpecError {
    pub source_name: String,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Always `era.dev/v1`.
    pub api_version: String,
    /// Always `Deployment`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique in its environment: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// The environment the deployment belongs to (`default` if not given):
    /// a deployment is known by its environment and its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// The runtime plugin that runs the workload (`container`, `lxc`, `noop`, ...).
    pub runtime: String,
    pub artifact: ArtifactSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub update: UpdateSpec,
    #[serde(default)]
    pub restart: RestartSpec,
    /// Seconds between a polite stop and a kill.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_period: HumanDuration,
    /// Runtime-specific settings, checked by the plugin's `validate`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Stopped by contract: the deployment stops (keeping its volumes,
    /// ports and identity) and stays stopped until a spec without it is
    /// applied. Not part of a revision: suspending changes no workload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Typed values the deployment makes known (`era outputs`): from an
    /// operator's override, else the runtime's status, else the default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, crate::outputs::OutputSpec>,
    /// Per-environment overlays: in environment ENV, `environments.ENV` is
    /// merged onto this `spec` as a JSON merge patch (RFC 7386: objects
    /// merge key by key, `null` removes, anything else, arrays too,
    /// replaces). A revision records the merged spec, without the overlays.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, serde_json::Map<String, serde_json::Value>>")]
    pub environments: BTreeMap<String, serde_json::Value>,
}

/// Where the artifact comes from: exactly one of `file`, `url`, `image`, `wasm`, `blob`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArtifactSpec {
    /// A local file; a relative path is taken from the spec file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A container image reference in an OCI registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A Wasm component published as an OCI artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    /// A single-layer OCI artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The expected content digest, 64 hex digits (with or without `sha256:`).
    /// Mandatory for `file` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Who must have signed the artifact, on top of what the daemon's trust
    /// policy requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// When a new revision of an `image`, `wasm` or `blob` artifact named
    /// by tag asks the registry what the tag points to: `Always`;
    /// `IfNotPresent` (the digest this host last pulled or fetched the tag
    /// as, if its manifest is still in the content store); `Never` (only
    /// that; an error if it is not there). Default, as Kubernetes does it:
    /// `Always` for the tag `latest` or no tag, `IfNotPresent` otherwise.
    /// A reference with a digest, or `sha256`, never asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

/// An OCI reference as the registry client reads it (`nginx:1` is
/// `docker.io/library/nginx:1`), so the ways of writing one are one tag;
/// anything it cannot read, as written.
pub fn canonical_reference(reference: &str) -> String {
    reference.parse::<oci_client::Reference>().map(|r| r.whole()).unwrap_or_else(|_| reference.to_string())
}

/// See [`ArtifactSpec::pull_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        })
    }
}

/// A deployment's own signature requirement. For `image`, `wasm` and `blob`
/// artifacts, a cosign signature by `key` or by the keyless `identity`; for
/// `file` and `url` artifacts, a sigstore `bundle` signed that way.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifySpec {
    /// A cosign public key (PEM); a relative path is taken from the spec
    /// file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A keyless signer: the certificate's subject and OIDC issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// The Sigstore `trusted_root.json` keyless signatures are checked
    /// against (default: the public-good root embedded in erad).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<String>,
    /// For `file` and `url` artifacts: the sigstore bundle over the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    /// An email address or a URI (a CI workflow's, say).
    pub subject: String,
    pub issuer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive failures before the workload counts as unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in this window after a start do not count.
    #[serde(default = "default_start_period")]
    pub start_period: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "default_http_path")]
    pub path: String,
    #[serde(default = "default_host")]
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    pub port: u16,
    #[serde(default = "default_host")]
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecProbe {
    /// Program and arguments, run inside the workload by its runtime plugin
    /// (`runc exec`, `lxc-attach`), never on the host; exit 0 means healthy.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateSpec {
    /// Roll back to the previous revision when an update fails.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// How long an update may take to become healthy.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec { auto_rollback: true, deadline: default_deadline() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    /// As the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartSpec {
    #[serde(default = "default_restart_policy")]
    pub policy: RestartPolicy,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A workload that has run this long since its last restart has its
    /// restart count reset, so `maxRetries` counts a crash loop, not a
    /// lifetime (as Kubernetes' crash-loop backoff does).
    #[serde(default = "default_reset_after")]
    pub reset_after: HumanDuration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: default_restart_policy(),
            max_retries: default_max_retries(),
            reset_after: default_reset_after(),
        }
    }
}

/// A duration written the human way (`2s`, `5m`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration ({e}); write e.g. 2s, 500ms, 5m"))
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

fn default_stop_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_protocol() -> String {
    "tcp".into()
}
fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_retries() -> u32 {
    3
}
fn default_start_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(0))
}
fn default_http_path() -> String {
    "/".into()
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn yes() -> bool {
    true
}
fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_restart_policy() -> RestartPolicy {
    RestartPolicy::OnFailure
}
fn default_reset_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_max_retries() -> u32 {
    3
}

/// The artifact source after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    File(String),
    Url(String),
    Image(String),
    Wasm(String),
    Blob(String),
}

impl ArtifactSource {
    pub fn kind(&self) -> &'static str {
        match self {
            ArtifactSource::File(_) => "file",
            ArtifactSource::Url(_) => "url",
            ArtifactSource::Image(_) => "image",
            ArtifactSource::Wasm(_) => "wasm",
            ArtifactSource::Blob(_) => "blob",
        }
    }
    pub fn reference(&self) -> &str {
        match self {
            ArtifactSource::File(r)
            | ArtifactSource::Url(r)
            | ArtifactSource::Image(r)
            | ArtifactSource::Wasm(r)
            | ArtifactSource::Blob(r) => r,
        }
    }
}

impl DeploymentSpec {
    /// Parses YAML or JSON and checks it. `source_name` names the input in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<DeploymentSpec, SpecError> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| not_yaml(source_name, e))?;
        Self::from_value(value, source_name)
    }

    /// Every document of a YAML stream (`---` between them; empty ones
    /// skipped) or one JSON document, each parsed and checked. With more
    /// than one, each is named `SOURCE (document N)` in errors and in what
    /// this returns beside it.
    pub fn parse_all(text: &str, source_name: &str) -> Result<Vec<(DeploymentSpec, String)>, SpecError> {
        use serde::Deserialize as _;
        let mut values = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| not_yaml(source_name, e))?;
            if !value.is_null() {
                values.push(value);
            }
        }
        let many = values.len() > 1;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let name = if many { format!("{source_name} (document {})", i + 1) } else { source_name.to_string() };
                Self::from_value(v, &name).map(|s| (s, name))
            })
            .collect()
    }

    fn from_value(value: serde_yaml_ng::Value, source_name: &str) -> Result<DeploymentSpec, SpecError> {
        let err = |path: String, message: String| SpecError { source_name: source_name.to_string(), path, message };
        if value.is_null() {
            return Err(err("document".into(), "the spec is empty".into()));
        }
        let spec: DeploymentSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "document".to_string() } else { path };
            err(path, e.into_inner().to_string())
        })?;
        spec.check_input().map_err(|(path, message)| err(path, message))?;
        Ok(spec)
    }

    /// A spec as the store recorded it (its canonical JSON, read as JSON:
    /// no YAML rules), checked as when it was recorded: checks added for
    /// callers' input since (an environment's name) do not make an old
    /// revision unreadable.
    pub fn from_stored(text: &str) -> Result<DeploymentSpec, SpecError> {
        let err = |path: String, message: String| SpecError { source_name: "stored revision".into(), path, message };
        let spec: DeploymentSpec = match serde_json::from_str(text) {
            Ok(s) => s,
            // Written by an erad that stored the text as given.
            Err(_) => {
                let value: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(text).map_err(|e| not_yaml("stored revision", e))?;
                serde_path_to_error::deserialize(value)
                    .map_err(|e| err(e.path().to_string(), e.into_inner().to_string()))?
            }
        };
        spec.check().map_err(|(path, message)| err(path, message))?;
        Ok(spec)
    }

    /// A caller's spec given as a JSON value (a saved plan's), checked as
    /// [`DeploymentSpec::parse`] checks one.
    pub fn from_json(value: serde_json::Value, source_name: &str) -> Result<DeploymentSpec, SpecError> {
        let err = |path: String, message: String| SpecError { source_name: source_name.to_string(), path, message };
        let spec: DeploymentSpec = serde_path_to_error::deserialize(value)
            .map_err(|e| err(e.path().to_string(), e.into_inner().to_string()))?;
        spec.check_input().map_err(|(path, message)| err(path, message))?;
        Ok(spec)
    }

    /// [`DeploymentSpec::check`] and what only a caller's input is held to.
    fn check_input(&self) -> Result<(), (String, String)> {
        self.check()?;
        if let Some(env) = &self.metadata.environment {
            check_name("metadata.environment", env)?;
        }
        Ok(())
    }

    /// The spec as its environment runs it: its environment's overlay
    /// (`spec.environments.ENV`) merged onto `spec`, the overlays dropped.
    /// The merged spec is checked as a spec is; an error names the overlay.
    pub fn effective(&self) -> Result<DeploymentSpec, SpecError> {
        self.effective_in(self.environment())
    }

    fn effective_in(&self, environment: &str) -> Result<DeploymentSpec, SpecError> {
        let mut out = self.clone();
        let overlays = std::mem::take(&mut out.spec.environments);
        let Some(overlay) = overlays.get(environment) else { return Ok(out) };
        let at = format!("spec.environments.{environment}");
        let err = |path: String, message: String| SpecError { source_name: "spec".into(), path, message };
        let mut value = serde_json::to_value(&out.spec).map_err(|e| err(at.clone(), e.to_string()))?;
        merge_patch(&mut value, overlay);
        out.spec = serde_path_to_error::deserialize(value)
            .map_err(|e| err(format!("{at} (merged): spec.{}", e.path()), e.inner().to_string()))?;
        out.check().map_err(|(path, message)| err(format!("{at} (merged): {path}"), message))?;
        Ok(out)
    }

    /// The environment the spec belongs to (`default` when it names none).
    pub fn environment(&self) -> &str {
        self.metadata.environment.as_deref().unwrap_or(crate::plan::DEFAULT_ENVIRONMENT)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The artifact source; `check` guarantees there is exactly one.
    pub fn artifact_source(&self) -> ArtifactSource {
        let a = &self.spec.artifact;
        if let Some(f) = &a.file {
            ArtifactSource::File(f.clone())
        } else if let Some(u) = &a.url {
            ArtifactSource::Url(u.clone())
        } else if let Some(i) = &a.image {
            ArtifactSource::Image(i.clone())
        } else if let Some(w) = &a.wasm {
            ArtifactSource::Wasm(w.clone())
        } else {
            ArtifactSource::Blob(a.blob.clone().unwrap_or_default())
        }
    }

    /// The artifact's pull policy, its default filled in (see
    /// [`ArtifactSpec::pull_policy`]); `Always` for file and url artifacts,
    /// which are pinned by their digest anyway.
    pub fn pull_policy(&self) -> PullPolicy {
        if let Some(p) = self.spec.artifact.pull_policy {
            return p;
        }
        match self.artifact_source() {
            ArtifactSource::Image(r) | ArtifactSource::Wasm(r) | ArtifactSource::Blob(r) => {
                match r.parse::<oci_client::Reference>() {
                    Ok(r) if r.digest().is_none() && r.tag().is_some_and(|t| t != "latest") => PullPolicy::IfNotPresent,
                    _ => PullPolicy::Always,
                }
            }
            ArtifactSource::File(_) | ArtifactSource::Url(_) => PullPolicy::Always,
        }
    }

    /// The expected digest as `sha256:<hex>`, if the spec pins one.
    pub fn pinned_digest(&self) -> Option<String> {
        self.spec
            .artifact
            .sha256
            .as_ref()
            .map(|d| format!("sha256:{}", d.trim_start_matches("sha256:").to_ascii_lowercase()))
    }

    /// The canonical JSON of the parsed spec; what the spec hash covers.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `sha256:<hex>` of the canonical JSON: equal specs have equal hashes,
    /// whatever their formatting or key order.
    pub fn hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.canonical_json().as_bytes())))
    }

    /// Semantic checks; the error is (field path, message).
    fn check(&self) -> Result<(), (String, String)> {
        let e = |p: &str, m: String| Err((p.to_string(), m));
        if self.api_version != API_VERSION {
            return e("apiVersion", format!("must be {API_VERSION:?}, not {:?}", self.api_version));
        }
        if self.kind != KIND {
            return e("kind", format!("must be {KIND:?}, not {:?}", self.kind));
        }
        check_name("metadata.name", &self.metadata.name)?;
        let s = &self.spec;
        if s.runtime.is_empty() {
            return e("spec.runtime", "must name a runtime plugin".into());
        }
        let a = &s.artifact;
        let sources: Vec<&str> =
            [("file", &a.file), ("url", &a.url), ("image", &a.image), ("wasm", &a.wasm), ("blob", &a.blob)]
                .into_iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k)
                .collect();
        match sources.len() {
            0 => return e("spec.artifact", "needs one of file, url, image, wasm, blob".into()),
            1 => {}
            _ => {
                return e(
                    "spec.artifact",
                    format!("has {} sources ({}); give exactly one", sources.len(), sources.join(", ")),
                );
            }
        }
        let source = self.artifact_source();
        if source.reference().trim().is_empty() {
            return e(&format!("spec.artifact.{}", source.kind()), "must not be empty".into());
        }
        match (&source, &a.sha256) {
            (ArtifactSource::File(_) | ArtifactSource::Url(_), None) => {
                return e("spec.artifact.sha256", format!("is required for a {} artifact", source.kind()));
            }
            (_, Some(d)) => {
                let hexpart = d.strip_prefix("sha256:").unwrap_or(d);
                if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return e("spec.artifact.sha256", format!("{d:?} is not a sha256 digest (64 hex digits)"));
                }
            }
            _ => {}
        }
        if let Some(v) = &a.verify {
            match (&v.key, &v.identity) {
                (None, None) => return e("spec.artifact.verify", "needs key or identity".into()),
                (Some(_), Some(_)) => return e("spec.artifact.verify", "give key or identity, not both".into()),
                (Some(k), None) if k.trim().is_empty() => {
                    return e("spec.artifact.verify.key", "must name a public key file".into());
                }
                (None, Some(i)) if i.subject.trim().is_empty() || i.issuer.trim().is_empty() => {
                    return e("spec.artifact.verify.identity", "needs both subject and issuer".into());
                }
                _ => {}
            }
            if v.key.is_some() && v.trusted_root.is_some() && v.bundle.is_none() {
                return e(
                    "spec.artifact.verify.trustedRoot",
                    "is for keyless identities and bundles; a cosign key signature needs none".into(),
                );
            }
            match (&source, &v.bundle) {
                (ArtifactSource::File(_) | ArtifactSource::Url(_), None) => {
                    return e(
                        "spec.artifact.verify.bundle",
                        format!("is required to verify a {} artifact (a sigstore bundle over it)", source.kind()),
                    );
                }
                (ArtifactSource::Image(_) | ArtifactSource::Wasm(_) | ArtifactSource::Blob(_), Some(_)) => {
                    return e(
                        "spec.artifact.verify.bundle",
                        format!(
                            "is for file and url artifacts; a {} artifact's signatures are in its registry",
                            source.kind()
                        ),
                    );
                }
                _ => {}
            }
        }
        if a.pull_policy.is_some() && matches!(source, ArtifactSource::File(_) | ArtifactSource::Url(_)) {
            return e(
                "spec.artifact.pullPolicy",
                format!("is for image, wasm and blob artifacts; a {} artifact is pinned by its sha256", source.kind()),
            );
        }
        if let ArtifactSource::Url(u) = &source
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return e("spec.artifact.url", format!("{u:?} must start with http:// or https://"));
        }
        for k in s.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return e(
                    &format!("spec.env.{k}"),
                    "an environment variable name must be non-empty and contain no '=' or NUL".into(),
                );
            }
        }
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            check_name(&format!("{at}.name"), &p.name)?;
            if p.port == 0 {
                return e(&format!("{at}.port"), "must be between 1 and 65535".into());
            }
            if p.protocol != "tcp" && p.protocol != "udp" {
                return e(&format!("{at}.protocol"), format!("must be tcp or udp, not {:?}", p.protocol));
            }
            if !names.insert(&p.name) {
                return e(&format!("{at}.name"), format!("port name {:?} is used twice", p.name));
            }
            if !numbers.insert((p.port, &p.protocol)) {
                return e(&format!("{at}.port"), format!("port {}/{} is listed twice", p.port, p.protocol));
            }
        }
        if s.outputs.len() > MAX_OUTPUTS {
            return e("spec.outputs", format!("declares {} outputs; at most {MAX_OUTPUTS}", s.outputs.len()));
        }
        for (name, o) in &s.outputs {
            let at = format!("spec.outputs.{name}");
            let ok = !name.is_empty()
                && name.len() <= 63
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return e(&at, "an output name is 1-63 letters, digits, '_' or '-', starting with a letter".into());
            }
            if let Some(d) = &o.default {
                o.kind.check(d).map_err(|m| (format!("{at}.default"), m))?;
            }
        }
        for (env, overlay) in &s.environments {
            let at = format!("spec.environments.{env}");
            check_name(&at, env)?;
            match overlay.as_object() {
                None => return e(&at, "an overlay is an object, merged onto spec in that environment".into()),
                Some(o) if o.contains_key("environments") => {
                    return e(&format!("{at}.environments"), "an overlay cannot hold overlays".into());
                }
                Some(_) => {}
            }
            // It must merge into a spec that checks, in that environment.
            self.effective_in(env).map_err(|e| (e.path, e.message))?;
        }
        let mut vols = HashSet::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let at = format!("spec.volumes[{i}]");
            check_name(&format!("{at}.name"), &v.name)?;
            if !v.mount_path.starts_with('/') {
                return e(&format!("{at}.mountPath"), format!("{:?} must be an absolute path", v.mount_path));
            }
            if !vols.insert(&v.name) {
                return e(&format!("{at}.name"), format!("volume name {:?} is used twice", v.name));
            }
        }
        if let Some(h) = &s.health {
            let probes = [h.http.is_some(), h.tcp.is_some(), h.exec.is_some()].iter().filter(|p| **p).count();
            if probes > 1 {
                return e("spec.health", "give at most one probe: http, tcp or exec".into());
            }
            if h.interval.0.is_zero() {
                return e("spec.health.interval", "must be greater than zero".into());
            }
            if h.timeout.0.is_zero() {
                return e("spec.health.timeout", "must be greater than zero".into());
            }
            if h.retries == 0 {
                return e("spec.health.retries", "must be at least 1".into());
            }
            if let Some(x) = &h.exec
                && x.command.is_empty()
            {
                return e("spec.health.exec.command", "must name a program".into());
            }
            if let Some(p) = &h.http
                && !p.path.starts_with('/')
            {
                return e("spec.health.http.path", format!("{:?} must start with /", p.path));
            }
        }
        if s.update.deadline.0.is_zero() {
            return e("spec.update.deadline", "must be greater than zero".into());
        }
        if !s.config.is_object() {
            return e("spec.config", "must be a mapping".into());
        }
        check_bounds(self)
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Upper bounds on every duration, count and size in a spec: erad adds
/// durations to clocks and sizes to buffers, and a value past these is a
/// mistake, never a setting (`10000000000000000000s` once overflowed a
/// clock after the workload started).
fn check_bounds(d: &DeploymentSpec) -> Result<(), (String, String)> {
    let s = &d.spec;
    let too_long = |path: &str, v: Duration, max: Duration| -> Result<(), (String, String)> {
        if v > max {
            return Err((
                path.to_string(),
                format!("{} is longer than the most erad allows ({})", HumanDuration(v), HumanDuration(max)),
            ));
        }
        Ok(())
    };
    let too_many = |path: &str, v: usize, max: usize, what: &str| -> Result<(), (String, String)> {
        if v > max {
            return Err((path.to_string(), format!("{v} {what} is more than the most erad allows ({max})")));
        }
        Ok(())
    };
    too_long("spec.stopGracePeriod", s.stop_grace_period.0, HOUR)?;
    too_long("spec.update.deadline", s.update.deadline.0, DAY)?;
    if let Some(h) = &s.health {
        too_long("spec.health.interval", h.interval.0, HOUR)?;
        too_long("spec.health.timeout", h.timeout.0, HOUR)?;
        too_long("spec.health.startPeriod", h.start_period.0, DAY)?;
        too_many("spec.health.retries", h.retries as usize, 1000, "retries")?;
        if let Some(x) = &h.exec {
            too_many("spec.health.exec.command", x.command.len(), 256, "arguments")?;
            let bytes: usize = x.command.iter().map(String::len).sum();
            too_many("spec.health.exec.command", bytes, 64 << 10, "bytes")?;
        }
    }
    too_many("spec.restart.maxRetries", s.restart.max_retries as usize, 10_000, "retries")?;
    too_long("spec.restart.resetAfter", s.restart.reset_after.0, DAY)?;
    if s.restart.reset_after.0.is_zero() {
        return Err(("spec.restart.resetAfter".into(), "must be greater than zero".into()));
    }
    too_many("spec.env", s.env.len(), 4096, "variables")?;
    let env_bytes: usize = s.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    too_many("spec.env", env_bytes, 1 << 20, "bytes")?;
    too_many("spec.ports", s.ports.len(), 1024, "ports")?;
    too_many("spec.volumes", s.volumes.len(), 256, "volumes")?;
    too_many("metadata.labels", d.metadata.labels.len(), 256, "labels")?;
    let label_bytes: usize = d.metadata.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    too_many("metadata.labels", label_bytes, 64 << 10, "bytes")?;
    let config = serde_json::to_vec(&s.config).map(|v| v.len()).unwrap_or(usize::MAX);
    too_many("spec.config", config, 1 << 20, "bytes")?;
    Ok(())
}

fn not_yaml(source_name: &str, e: serde_yaml_ng::Error) -> SpecError {
    let path =
        e.location().map(|l| format!("line {} column {}", l.line(), l.column())).unwrap_or_else(|| "document".into());
    SpecError { source_name: source_name.to_string(), path, message: format!("not valid YAML or JSON: {e}") }
}

/// Where a spec's relative `file:` artifacts are read from: the directory of
/// the file it came from (an absolute path), or `/`.
pub fn source_dir(source: &str) -> std::path::PathBuf {
    std::path::Path::new(source)
        .parent()
        .filter(|p| p.is_absolute())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("/"))
}

/// The id of a new deployment `name` of `environment`: what the store, the
/// work dirs and the runtimes' objects are named by. The name alone in the
/// environment `default` (so a store from before environments keeps its
/// ids), `ENVIRONMENT-NAME` in any other (suffixed where another deployment
/// holds it: `Lifecycle::id_for`).
/// RFC 7386 JSON merge patch of `patch` onto `target`.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// At most this many outputs per spec.
const MAX_OUTPUTS: usize = 64;

pub fn deployment_id(environment: &str, name: &str) -> String {
    if environment == crate::plan::DEFAULT_ENVIRONMENT { name.to_string() } else { format!("{environment}-{name}") }
}

/// Whether `name` can name a deployment or an environment; the error says
/// what a name may be.
pub fn check_environment_name(name: &str) -> Result<(), String> {
    check_name("environment", name).map_err(|(_, m)| m)
}

/// Names of deployments, environments, ports and volumes: they become
/// directory names and labels, so they are kept to a DNS label.
fn check_name(path: &str, name: &str) -> Result<(), (String, String)> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err((
            path.to_string(),
            format!(
                "{name:?} is not a valid name: use 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// The JSON Schema of a deployment spec, as `erad schema` prints it.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(DeploymentSpec)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: era.dev/v1
kind: Deployment
metadata: {name: web, labels: {team: edge}}
spec:
  runtime: noop
  artifact: {file: app.bin, sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
  env: {PORT: "8080"}
  ports: [{name: http, port: 8080}]
  volumes: [{name: data, mountPath: /data}]
  health: {tcp: {port: 8080}, interval: 2s, timeout: 1s, retries: 3, startPeriod: 10s}
"#;

    fn error_of(text: &str) -> SpecError {
        DeploymentSpec::parse(text, "t.yaml").expect_err("spec should be refused")
    }

    #[test]
    fn references_written_two_ways_are_one_tag() {
        assert_eq!(canonical_reference("nginx:1.27"), canonical_reference("docker.io/library/nginx:1.27"));
        assert_eq!(canonical_reference("127.0.0.1:5000/demo/app:v1"), "127.0.0.1:5000/demo/app:v1");
        assert_ne!(canonical_reference("nginx:1.27"), canonical_reference("nginx:1.28"));
    }

    #[test]
    fn a_stream_of_documents_parses_each_and_names_the_one_that_is_wrong() {
        let doc = |name: &str| {
            format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{image: x:1}}\n"
            )
        };
        let all = DeploymentSpec::parse_all(&format!("---\n{}---\n---\n{}", doc("a"), doc("b")), "set.yaml").unwrap();
        let names: Vec<(&str, &str)> = all.iter().map(|(s, l)| (s.name(), l.as_str())).collect();
        assert_eq!(names, [("a", "set.yaml (document 1)"), ("b", "set.yaml (document 2)")]);
        let one = DeploymentSpec::parse_all(&doc("a"), "a.yaml").unwrap();
        assert_eq!(one[0].1, "a.yaml");
        let bad = DeploymentSpec::parse_all(&format!("{}---\n{}", doc("a"), doc("B")), "set.yaml").unwrap_err();
        assert_eq!(bad.source_name, "set.yaml (document 2)");
        assert_eq!(bad.path, "metadata.name");
        let env = doc("a").replace("name: a}", "name: a, environment: Prod}");
        assert_eq!(DeploymentSpec::parse(&env, "a.yaml").unwrap_err().path, "metadata.environment");
        assert!(DeploymentSpec::parse_all("", "empty.yaml").unwrap().is_empty());
    }

    #[test]
    fn the_pull_policy_defaults_as_kubernetes_does() {
        let with = |artifact: &str| {
            let text = GOOD.replace(
                "{file: app.bin, sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"}",
                artifact,
            );
            DeploymentSpec::parse(&text, "t.yaml").unwrap().pull_policy()
        };
        assert_eq!(with("{image: \"reg.example/app:1.2\"}"), PullPolicy::IfNotPresent);
        assert_eq!(with("{wasm: \"reg.example/app:1.2\"}"), PullPolicy::IfNotPresent);
        assert_eq!(with("{image: \"reg.example/app:latest\"}"), PullPolicy::Always);
        assert_eq!(with("{image: \"reg.example/app\"}"), PullPolicy::Always);
        let digest = format!("{{image: \"reg.example/app@sha256:{}\"}}", "a".repeat(64));
        assert_eq!(with(&digest), PullPolicy::Always);
        assert_eq!(with("{image: \"reg.example/app:1.2\", pullPolicy: Always}"), PullPolicy::Always);
        assert_eq!(with("{image: \"reg.example/app:latest\", pullPolicy: Never}"), PullPolicy::Never);
        assert_eq!(
            with("{file: app.bin, sha256: \"00\"}".replace("\"00\"", &format!("\"{}\"", "0".repeat(64))).as_str()),
            PullPolicy::Always
        );
        let refused =
            DeploymentSpec::parse(&GOOD.replace("app.bin, sha256", "app.bin, pullPolicy: Never, sha256"), "t")
                .expect_err("a file has no pull policy");
        assert!(refused.to_string().contains("spec.artifact.pullPolicy"), "{refused}");
    }

    #[test]
    fn a_good_spec_parses_with_defaults() {
        let s = DeploymentSpec::parse(GOOD, "t.yaml").unwrap();
        assert_eq!(s.name(), "web");
        assert!(s.spec.update.auto_rollback);
        assert_eq!(s.spec.health.as_ref().unwrap().start_period.0, Duration::from_secs(10));
        assert_eq!(s.artifact_source(), ArtifactSource::File("app.bin".into()));
    }

    #[test]
    fn json_and_yaml_of_the_same_spec_hash_the_same() {
        let y = DeploymentSpec::parse(GOOD, "a").unwrap();
        let j = DeploymentSpec::parse(&serde_json::to_string(&y).unwrap(), "b").unwrap();
        assert_eq!(y.hash(), j.hash());
        let other = DeploymentSpec::parse(&GOOD.replace("8080\"}", "8081\"}"), "c").unwrap();
        assert_ne!(y.hash(), other.hash());
    }

    #[test]
    fn a_type_error_names_the_field_path() {
        let e = error_of(&GOOD.replace("port: 8080}]", "port: \"eighty\"}]"));
        assert_eq!(e.path, "spec.ports[0].port");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = error_of(&GOOD.replace("runtime: noop", "runtime: noop\n  replicas: 3"));
        assert_eq!(e.path, "spec.replicas");
        assert!(e.message.contains("unknown field `replicas`"), "{e}");
    }

    #[test]
    fn huge_durations_counts_and_sizes_are_refused_naming_the_field() {
        let huge = "10000000000000000000s";
        let big_env: String = (0..5000).map(|i| format!("V{i}: x, ")).collect();
        let cases = [
            (GOOD.replace("interval: 2s", &format!("interval: {huge}")), "spec.health.interval"),
            (GOOD.replace("timeout: 1s", "timeout: 2h"), "spec.health.timeout"),
            (GOOD.replace("startPeriod: 10s", "startPeriod: 400d"), "spec.health.startPeriod"),
            (GOOD.replace("retries: 3", "retries: 4000000000"), "spec.health.retries"),
            (
                GOOD.replace("runtime: noop", &format!("runtime: noop\n  stopGracePeriod: {huge}")),
                "spec.stopGracePeriod",
            ),
            (GOOD.replace("runtime: noop", "runtime: noop\n  update: {deadline: 30d}"), "spec.update.deadline"),
            (
                GOOD.replace("runtime: noop", "runtime: noop\n  restart: {maxRetries: 4000000000}"),
                "spec.restart.maxRetries",
            ),
            (GOOD.replace("env: {PORT: \"8080\"}", &format!("env: {{{big_env}}}")), "spec.env"),
            (
                GOOD.replace(
                    "runtime: noop",
                    &format!("runtime: noop\n  config: {{blob: \"{}\"}}", "x".repeat(1 << 20)),
                ),
                "spec.config",
            ),
        ];
        for (text, path) in cases {
            let e = error_of(&text);
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains("the most erad allows"), "{e}");
        }
        // At the bounds, fine.
        let ok = GOOD.replace("timeout: 1s", "timeout: 1h").replace("startPeriod: 10s", "startPeriod: 1d");
        DeploymentSpec::parse(&ok, "t").unwrap();
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (GOOD.replace("name: web", "name: Web_1"), "metadata.name"),
            (
                GOOD.replace(", sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"", ""),
                "spec.artifact.sha256",
            ),
            (GOOD.replace("sha256: \"0000", "sha256: \"zz00"), "spec.artifact.sha256"),
            (GOOD.replace("{file: app.bin,", "{file: app.bin, url: \"http://x\","), "spec.artifact"),
            (GOOD.replace("port: 8080}]", "port: 0}]"), "spec.ports[0].port"),
            (GOOD.replace("mountPath: /data", "mountPath: data"), "spec.volumes[0].mountPath"),
            (GOOD.replace("retries: 3", "retries: 0"), "spec.health.retries"),
            (
                GOOD.replace("runtime: noop", "runtime: noop\n  outputs: {port: {type: int, default: eighty}}"),
                "spec.outputs.port.default",
            ),
            (
                GOOD.replace(
                    "runtime: noop",
                    "runtime: noop\n  outputs: {token: {type: secret-ref, default: hunter2}}",
                ),
                "spec.outputs.token.default",
            ),
            (
                GOOD.replace("runtime: noop", "runtime: noop\n  outputs: {9lives: {type: string}}"),
                "spec.outputs.9lives",
            ),
            (GOOD.replace("interval: 2s", "interval: soon"), "spec.health.interval"),
            (GOOD.replace("era.dev/v1", "era.dev/v2"), "apiVersion"),
        ];
        for (text, path) in cases {
            assert_eq!(error_of(&text).path, path, "for {text}");
        }
    }

    #[test]
    fn broken_yaml_says_where() {
        let e = error_of("apiVersion: [");
        assert!(e.path.starts_with("line "), "{e}");
        assert_eq!(error_of("").message, "the spec is empty");
    }

    #[test]
    fn the_schema_names_every_top_level_field() {
        let schema = json_schema().to_string();
        for field in ["apiVersion", "metadata", "artifact", "autoRollback", "startPeriod"] {
            assert!(schema.contains(field), "schema lacks {field}");
        }
    }
}
