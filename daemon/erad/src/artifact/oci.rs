//! OCI sources: `image:` (a container image), `wasm:` (a Wasm component
//! published as an OCI artifact) and `blob:` (a single-layer artifact).
//!
//! oci-client parses references and does the registry's token dance; the
//! reads themselves are done here because every byte must be checked while
//! it streams: a manifest is capped at [`MANIFEST_LIMIT`] and must hash to the
//! digest asked for (and to the registry's `Docker-Content-Digest`), a blob is
//! cut off at the first byte past its descriptor's size and must hash to its
//! digest. Only verified content reaches the content store.
//!
//! A tag is resolved to a digest once, here; the caller pins the revision to
//! that digest and never asks for the tag again.

use super::{ContentStore, FetchError, Fetched, Progress};
use crate::trust::{SignatureAccess, TrustPolicy, TrustRule};
use futures::StreamExt;
use oci_client::{Reference, RegistryOperation, secrets::RegistryAuth};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The largest manifest or index erad reads.
pub const MANIFEST_LIMIT: u64 = 4 << 20;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const MEDIA_WASM_LAYER: &str = "application/wasm";

/// What kind of artifact the spec asked for; each has its own shape rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciKind {
    Image,
    Wasm,
    Blob,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Either an image manifest or an index; both at once is manifest confusion.
#[derive(Debug, Clone, Deserialize)]
struct Document {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A pulled, verified artifact.
/// The most layers an image may have (an overlay stacks a few hundred
/// lower dirs at most).
pub const MAX_LAYERS: usize = 500;

/// What a pull must satisfy besides the reference.
#[derive(Clone, Copy, Default)]
pub struct PullWants<'a> {
    /// The digest it must be (a revision's, a spec's `sha256`, or the
    /// digest a tag was resolved to before).
    pub pinned: Option<&'a str>,
    /// A deployment's own signature requirement.
    pub also: Option<&'a TrustRule>,
    /// Nothing may be asked of the registry (`pullPolicy: Never`).
    pub offline: bool,
}

#[derive(Debug, Clone)]
pub struct Pulled {
    /// The digest the revision is pinned to: the image manifest's (for a
    /// multi-platform image, the platform manifest's).
    pub digest: String,
    pub manifest: PathBuf,
    pub config: Option<Fetched>,
    pub layers: Vec<(Descriptor, Fetched)>,
    /// What the workload uses: the manifest for images, the layer for wasm/blob.
    pub local_path: PathBuf,
    /// What the registry resolved the tag to, when it was asked (see
    /// [`super::Fetched::resolved`]).
    pub resolved: Option<String>,
    /// The image config JSON, for images.
    pub image_config: Option<String>,
}

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// Plain HTTP even though the registry is not on a loopback address.
    pub insecure: bool,
    pub auth: Option<RegistryAuth>,
}

#[derive(Clone)]
pub struct OciFetcher {
    /// For registries over https.
    client: oci_client::Client,
    /// For loopback and `insecure` registries (plain HTTP).
    plain_client: oci_client::Client,
    http: reqwest::Client,
    registries: std::collections::BTreeMap<String, RegistryAccess>,
    trust: Arc<TrustPolicy>,
}

impl std::fmt::Debug for OciFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciFetcher").field("registries", &self.registries.keys().collect::<Vec<_>>()).finish()
    }
}

/// The layers (lowest first) and the config JSON of an image whose verified
/// manifest is at `manifest`, with its blobs in `blobs` (`.../blobs/sha256`).
pub fn image_parts(
    blobs: &std::path::Path,
    manifest: &std::path::Path,
) -> Result<(Vec<super::unpack::Layer>, Option<String>), FetchError> {
    let blob_path = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    let read_err = |path: &std::path::Path, source| FetchError::Store { path: path.to_path_buf(), source };
    let bytes = std::fs::read(manifest).map_err(|e| read_err(manifest, e))?;
    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| FetchError::Registry {
        reference: manifest.display().to_string(),
        message: format!("stored manifest is not valid JSON: {e}"),
    })?;
    let layers = doc
        .layers
        .unwrap_or_default()
        .into_iter()
        .map(|l| super::unpack::Layer { path: blob_path(&l.digest), digest: l.digest, media_type: l.media_type })
        .collect();
    let config = match doc.config {
        Some(c) => {
            let path = blob_path(&c.digest);
            Some(std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?)
        }
        None => None,
    };
    Ok((layers, config))
}

/// Registries on loopback addresses speak plain HTTP, as Docker allows.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest of an index that the host runs: its platform's, or for
/// artifacts that are not images, the first.
fn pick_platform(list: &[Descriptor], kind: OciKind) -> Result<Descriptor, String> {
    let (os, arch) = host_platform();
    let pick = list
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
        .or_else(|| if kind == OciKind::Image { None } else { list.first() })
        .ok_or_else(|| format!("the index has no manifest for {os}/{arch}"))?;
    if pick.size > MANIFEST_LIMIT {
        return Err(format!("the manifest is larger than erad's limit of {MANIFEST_LIMIT} bytes"));
    }
    Ok(pick.clone())
}

fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    ("linux", arch)
}

impl OciFetcher {
    pub fn new(registries: std::collections::BTreeMap<String, RegistryAccess>, trust: Arc<TrustPolicy>) -> OciFetcher {
        let with =
            |protocol| oci_client::Client::new(oci_client::client::ClientConfig { protocol, ..Default::default() });
        OciFetcher {
            client: with(oci_client::client::ClientProtocol::Https),
            plain_client: with(oci_client::client::ClientProtocol::Http),
            http: reqwest::Client::new(),
            registries,
            trust,
        }
    }

    /// The current trust policy's rule for `reference` (the first whose
    /// pattern matches its `registry/repository`).
    pub fn trust_rule(&self, reference: &str) -> Result<&TrustRule, String> {
        let r: Reference = reference.parse().map_err(|e| format!("{reference:?} is not a reference: {e}"))?;
        self.trust.rule_for(reference, &format!("{}/{}", r.registry(), r.repository())).map_err(|e| e.to_string())
    }

    fn access(&self, registry: &str) -> RegistryAccess {
        self.registries.get(registry).cloned().unwrap_or_default()
    }

    fn base_url(&self, reference: &Reference) -> String {
        let registry = reference.resolve_registry();
        let plain = self.access(registry).insecure || is_loopback(registry);
        format!("{}://{registry}/v2/{}", if plain { "http" } else { "https" }, reference.repository())
    }

    /// The Authorization header for this registry, after the token dance.
    async fn authorization(&self, reference: &Reference, what: &str) -> Result<Option<String>, FetchError> {
        let auth = self.access(reference.resolve_registry()).auth.unwrap_or(RegistryAuth::Anonymous);
        if is_loopback(reference.resolve_registry()) && matches!(auth, RegistryAuth::Anonymous) {
            return Ok(None);
        }
        let registry = reference.resolve_registry();
        let client =
            if self.access(registry).insecure || is_loopback(registry) { &self.plain_client } else { &self.client };
        let token = client.auth(reference, &auth, RegistryOperation::Pull).await.map_err(|e| FetchError::Registry {
            reference: what.to_string(),
            // oci-client's errors do not carry credentials.
            message: format!("authentication failed: {e}"),
        })?;
        Ok(match (token, auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine;
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
            }
            (None, RegistryAuth::Bearer(t)) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Anonymous) => None,
        })
    }

    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        authz: &Option<String>,
        what: &str,
    ) -> Result<reqwest::Response, FetchError> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if let Some(z) = authz {
            req = req.header(reqwest::header::AUTHORIZATION, z);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| FetchError::Download { reference: what.to_string(), message: e.without_url().to_string() })?;
        if !resp.status().is_success() {
            return Err(FetchError::Registry {
                reference: what.to_string(),
                message: format!("{url} answered {}", resp.status()),
            });
        }
        Ok(resp)
    }

    /// Fetches a manifest or index by tag or digest, capped and verified.
    /// Returns (bytes, digest, content type).
    async fn manifest(
        &self,
        reference: &Reference,
        at: &str,
        want: Option<&str>,
        authz: &Option<String>,
        what: &str,
    ) -> Result<(Vec<u8>, String, String), FetchError> {
        let url = format!("{}/manifests/{at}", self.base_url(reference));
        let accept = [MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST].join(", ");
        let resp = self.get(&url, Some(&accept), authz, what).await?;
        let bad = |message: String| FetchError::Registry { reference: what.to_string(), message };
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        if resp.content_length().is_some_and(|l| l > MANIFEST_LIMIT) {
            return Err(bad(format!("the manifest is larger than erad's limit of {MANIFEST_LIMIT} bytes")));
        }
        let mut body = resp.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| FetchError::Download {
                reference: what.to_string(),
                message: e.without_url().to_string(),
            })?;
            if bytes.len() as u64 + chunk.len() as u64 > MANIFEST_LIMIT {
                return Err(bad(format!("the manifest is larger than erad's limit of {MANIFEST_LIMIT} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = sha256(&bytes);
        if let Some(w) = want
            && w != digest
        {
            return Err(FetchError::DigestMismatch {
                reference: what.to_string(),
                expected: w.to_string(),
                actual: digest,
            });
        }
        if let Some(h) = header_digest
            && h != digest
        {
            return Err(bad(format!(
                "the registry's Docker-Content-Digest {h} does not match the manifest it sent ({digest})"
            )));
        }
        Ok((bytes, digest, content_type))
    }

    fn parse(&self, bytes: &[u8], content_type: &str, what: &str) -> Result<Document, FetchError> {
        let bad = |message: String| FetchError::Registry { reference: what.to_string(), message };
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("the manifest is not valid JSON: {e}")))?;
        if doc.schema_version != 2 {
            return Err(bad(format!("manifest schemaVersion {} is not supported", doc.schema_version)));
        }
        // A descriptor's digest names a file in the content store: anything
        // but `sha256:` and 64 hex digits (a path, another algorithm) is
        // refused before it is used.
        let mut descriptors =
            doc.config.iter().chain(doc.layers.iter().flatten()).chain(doc.manifests.iter().flatten());
        if let Some(d) = descriptors.find(|d| !super::is_sha256_digest(&d.digest)) {
            return Err(bad(format!(
                "descriptor digest {:?} is not a sha256 digest (sha256: and 64 hex digits)",
                d.digest
            )));
        }
        if doc.manifests.is_some() && (doc.layers.is_some() || doc.config.is_some()) {
            return Err(
                bad("the document is both an index (manifests) and a manifest (layers/config): refused".into()),
            );
        }
        if let Some(mt) = &doc.media_type
            && !content_type.is_empty()
            && mt != content_type
        {
            return Err(bad(format!("the manifest says it is {mt} but the registry served it as {content_type}")));
        }
        // `mediaType` is optional in the document; the served type must still
        // agree with its shape.
        let served_index = [MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST].contains(&content_type);
        let served_manifest = [MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST].contains(&content_type);
        let is_index = doc.manifests.is_some();
        if (served_index && !is_index) || (served_manifest && is_index) {
            let shape = if is_index { "an index" } else { "a manifest" };
            return Err(bad(format!("the document is {shape} but the registry served it as {content_type}")));
        }
        Ok(doc)
    }

    /// Checks `reference`'s signatures against `rule` without pulling it
    /// (`era verify`): resolves the tag, and for an index the host's
    /// manifest, then looks for signatures over either. Returns the digests
    /// looked at (index first) and who signed.
    pub async fn verify_signatures(
        &self,
        kind: OciKind,
        reference: &str,
        rule: &TrustRule,
    ) -> Result<(Vec<String>, crate::trust::Signer), FetchError> {
        let bad = |message: String| FetchError::Registry { reference: reference.to_string(), message };
        let r: Reference = reference.parse().map_err(|e| bad(format!("not an image reference: {e}")))?;
        let authz = self.authorization(&r, reference).await?;
        let at = r.digest().or(r.tag()).unwrap_or("latest").to_string();
        let (bytes, digest, ctype) = self.manifest(&r, &at, r.digest(), &authz, reference).await?;
        let doc = self.parse(&bytes, &ctype, reference)?;
        let mut subjects = vec![digest];
        if let Some(list) = &doc.manifests {
            subjects.push(pick_platform(list, kind).map_err(bad)?.digest);
        }
        let via = self.signature_access(&r);
        let signer =
            crate::trust::verify_image(rule, reference, r.resolve_registry(), r.repository(), &subjects, &via).await?;
        Ok((subjects, signer))
    }

    /// How to reach `r`'s registry for its signatures.
    fn signature_access(&self, r: &Reference) -> SignatureAccess {
        let registry = r.resolve_registry();
        let access = self.access(registry);
        SignatureAccess { plain_http: access.insecure || is_loopback(registry), auth: access.auth }
    }

    /// The digest `reference`'s tag points to now, as the registry says
    /// (for a multi-platform image, the index's); nothing is stored or
    /// recorded. A reference with a digest is that digest.
    pub async fn resolve(&self, reference: &str) -> Result<String, FetchError> {
        let what = reference.to_string();
        let r: Reference = reference.parse().map_err(|e| FetchError::Registry {
            reference: what.clone(),
            message: format!("not an image reference: {e}"),
        })?;
        if let Some(d) = r.digest() {
            return Ok(d.to_string());
        }
        let at = r.tag().unwrap_or("latest").to_string();
        let authz = self.authorization(&r, &what).await?;
        let (_, digest, _) = self.manifest(&r, &at, None, &authz, &what).await?;
        Ok(digest)
    }

    /// Pulls `reference` (pinned to `want.pinned` if given) into `store`.
    /// Its signatures must satisfy the policy's rule for it, and
    /// `want.also` (a deployment's own requirement) when given, before any
    /// blob is fetched.
    pub async fn pull(
        &self,
        kind: OciKind,
        reference: &str,
        want: PullWants<'_>,
        store: &ContentStore,
        progress: Progress<'_>,
    ) -> Result<Pulled, FetchError> {
        let PullWants { pinned, also, offline } = want;
        let what = reference.to_string();
        let bad = |message: String| FetchError::Registry { reference: what.clone(), message };
        let r: Reference = reference.parse().map_err(|e| bad(format!("not an image reference: {e}")))?;
        // Which signatures it needs is known before anything is fetched.
        let rule = self.trust.rule_for(reference, &format!("{}/{}", r.registry(), r.repository()))?;
        // Credentials are only fetched when the network is needed, so a
        // restart with everything in the store works offline.
        let mut authz_cache: Option<Option<String>> = None;
        macro_rules! authz {
            () => {{
                // Every request to the registry asks for credentials first.
                if offline {
                    return Err(bad(
                        "not all of it is in the content store, and pullPolicy is Never (`era pull` it first)".into(),
                    ));
                }
                if authz_cache.is_none() {
                    authz_cache = Some(self.authorization(&r, &what).await?);
                }
                authz_cache.clone().flatten()
            }};
        }
        // The pinned digest (the revision's) wins over the tag; a digest in
        // the reference itself must agree with it.
        let want = match (pinned, r.digest()) {
            (Some(p), Some(d)) if p != d => {
                return Err(bad(format!("the reference's digest {d} differs from the pinned {p}")));
            }
            (Some(p), _) => Some(p.to_string()),
            (None, d) => d.map(str::to_string),
        };
        let at = want.clone().or_else(|| r.tag().map(str::to_string)).unwrap_or_else(|| "latest".into());
        // A pinned manifest already in the store was verified when it came
        // in: restarts and rollbacks work offline.
        let stored = match want.as_deref() {
            Some(w) if store.contains(w) => Some(store.read_blob(w).await?),
            _ => None,
        };
        let (mut bytes, mut digest, mut ctype) = match stored {
            Some(b) => (b, want.clone().unwrap_or_default(), String::new()),
            None => match self.manifest(&r, &at, want.as_deref(), &authz!(), &what).await {
                // The pinned digest is not in the registry: say what the tag
                // points to instead, so both digests are in the error.
                Err(FetchError::Registry { message, .. })
                    if want.is_some() && r.tag().is_some() && message.ends_with("404 Not Found") =>
                {
                    let tag = r.tag().unwrap_or_default().to_string();
                    let (_, actual, _) = self.manifest(&r, &tag, None, &authz!(), &what).await?;
                    return Err(FetchError::DigestMismatch {
                        reference: what.clone(),
                        expected: want.unwrap_or_default(),
                        actual,
                    });
                }
                other => other?,
            },
        };
        // The registry was asked what the tag points to.
        let resolved = want.is_none().then(|| digest.clone());
        let mut doc = self.parse(&bytes, &ctype, &what)?;
        let mut index = None;
        if let Some(list) = &doc.manifests {
            let pick = pick_platform(list, kind).map_err(bad)?;
            index = Some((digest.clone(), bytes.clone()));
            (bytes, digest, ctype) = if store.contains(&pick.digest) {
                (store.read_blob(&pick.digest).await?, pick.digest.clone(), String::new())
            } else {
                self.manifest(&r, &pick.digest, Some(&pick.digest), &authz!(), &what).await?
            };
            if bytes.len() as u64 != pick.size {
                return Err(bad(format!(
                    "manifest {} is {} bytes, its descriptor says {}",
                    pick.digest,
                    bytes.len(),
                    pick.size
                )));
            }
            doc = self.parse(&bytes, &ctype, &what)?;
            if doc.manifests.is_some() {
                return Err(bad("an index inside an index is not supported".into()));
            }
        }
        // What the descriptors say it takes, bounded before anything is
        // fetched: the layer count, and config + layers within
        // `limits.max_artifact_bytes` (no sum that wraps).
        let described = doc.layers.as_deref().unwrap_or_default();
        if described.len() > MAX_LAYERS {
            return Err(bad(format!("{} layers; erad takes at most {MAX_LAYERS}", described.len())));
        }
        let total = doc.config.iter().chain(described).try_fold(bytes.len() as u64, |t, d| t.checked_add(d.size));
        if total.is_none_or(|t| t > store.max_bytes) {
            return Err(FetchError::TooLarge { reference: what.clone(), max: store.max_bytes });
        }
        // Signatures before any blob: a signature on the index or on the
        // platform manifest covers the image.
        let subjects: Vec<String> = index.iter().map(|(d, _)| d.clone()).chain([digest.clone()]).collect();
        for rule in std::iter::once(rule).chain(also) {
            if rule.allow_unsigned || subjects.iter().any(|d| store.is_verified(d, &rule.fingerprint)) {
                continue;
            }
            if offline {
                return Err(bad(format!(
                    "its signatures were never checked here under rule {:?}, and pullPolicy is Never",
                    rule.name
                )));
            }
            let via = self.signature_access(&r);
            let signer =
                crate::trust::verify_image(rule, &what, r.resolve_registry(), r.repository(), &subjects, &via).await?;
            tracing::info!(artifact = %what, %digest, %signer, rule = %rule.name, "signature verified");
            for d in &subjects {
                store.mark_verified(d, &rule.fingerprint, &signer)?;
            }
        }
        if let Some((d, b)) = &index {
            store.put(d, b).await?;
        }
        let manifest = store.put(&digest, &bytes).await?;
        let layers_d = doc.layers.clone().unwrap_or_default();
        match kind {
            OciKind::Wasm => {
                let cfg = doc.config.as_ref().map(|c| c.media_type.as_str()).unwrap_or("");
                if cfg != MEDIA_WASM_CONFIG || layers_d.len() != 1 || layers_d[0].media_type != MEDIA_WASM_LAYER {
                    return Err(bad(format!(
                        "not a Wasm component artifact: expects config {MEDIA_WASM_CONFIG} and one {MEDIA_WASM_LAYER} layer"
                    )));
                }
            }
            OciKind::Blob if layers_d.len() != 1 => {
                return Err(bad(format!("a blob artifact has exactly one layer, this has {}", layers_d.len())));
            }
            _ => {}
        }
        let blob_url = |d: &str| format!("{}/blobs/{d}", self.base_url(&r));
        let mut config = None;
        if let Some(c) = &doc.config {
            config = Some(if store.contains(&c.digest) {
                Fetched { digest: c.digest.clone(), path: store.blob_path(&c.digest), size: c.size, resolved: None }
            } else {
                let resp = self.get(&blob_url(&c.digest), None, &authz!(), &what).await?;
                store.ingest(&what, &c.digest, c.size, resp.bytes_stream(), &|_, _| {}).await?
            });
        }
        let total: u64 = layers_d.iter().map(|l| l.size).sum();
        let mut before = 0u64;
        let mut layers = Vec::new();
        for l in &layers_d {
            let fetched = if store.contains(&l.digest) {
                let path = store.blob_path(&l.digest);
                Fetched { digest: l.digest.clone(), path, size: l.size, resolved: None }
            } else {
                let resp = self.get(&blob_url(&l.digest), None, &authz!(), &what).await?;
                let base = before;
                store
                    .ingest(&what, &l.digest, l.size, resp.bytes_stream(), &|done, _| {
                        progress(base + done, Some(total))
                    })
                    .await?
            };
            before += l.size;
            progress(before, Some(total));
            layers.push((l.clone(), fetched));
        }
        let (local_path, image_config) = match kind {
            OciKind::Image => {
                let cfg = match &config {
                    Some(c) => Some(
                        tokio::fs::read_to_string(&c.path)
                            .await
                            .map_err(|source| FetchError::Store { path: c.path.clone(), source })?,
                    ),
                    None => None,
                };
                (manifest.clone(), cfg)
            }
            OciKind::Wasm | OciKind::Blob => (layers[0].1.path.clone(), None),
        };
        Ok(Pulled { digest, manifest, config, layers, local_path, image_config, resolved })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["registry.example:5000", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
