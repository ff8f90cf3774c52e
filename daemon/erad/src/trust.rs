//! Signature trust: which signatures an OCI artifact needs before erad uses
//! it, and the checks themselves.
//!
//! The policy is the ordered list of `[[trust]]` rules in the daemon config.
//! Each rule matches `registry/repository` patterns; the first rule that
//! matches decides. An artifact no rule matches is refused, and so is one
//! whose signatures cannot be found or checked: erad fails closed.
//! `allow_unsigned = true` is the only way to accept unsigned artifacts, and
//! only for the repositories its rule matches.
//!
//! Cosign signatures on images and OCI artifacts (the `sha256-<hex>.sig` tag
//! scheme, and OCI 1.1 referrers where the registry has that API) are found
//! and checked by the `sigstore` crate: with a public key, or keyless (a
//! Fulcio certificate that chains to the operator's `trusted_root.json`, its
//! identity and issuer, and a Rekor entry whose signed entry timestamp the
//! root's log key verifies). Nothing is fetched to establish trust: the keys
//! and the root are files the operator provides. Sigstore bundles of plain
//! files are checked by `sigstore-verify` ([`verify_blob`]).

use sha2::{Digest, Sha256};
use sigstore::cosign::CosignCapabilities;
use sigstore::cosign::verification_constraint::{
    CertSubjectEmailVerifier, CertSubjectUrlVerifier, PublicKeyVerifier, VerificationConstraint,
    cert_subject_email_verifier::StringVerifier,
};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use sigstore::trust::ManualTrustRoot;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{reference}: no trust rule matches {repository}; add a [[trust]] rule for it to the daemon config (with keys, keyless, or allow_unsigned = true)"
    )]
    NoRule { reference: String, repository: String },
    #[error("{reference}: trust rule {rule:?} requires {wants}, but {detail}")]
    Unverified { reference: String, rule: String, wants: String, detail: String },
    #[error("trust rule {rule:?}: {path}: {message}")]
    Material { rule: String, path: PathBuf, message: String },
    #[error("{reference}: {message}")]
    Reference { reference: String, message: String },
    #[error("{subject}: {message}")]
    Bundle { subject: String, message: String },
}

/// A keyless signer: the certificate's subject (an email address or a URI,
/// such as a CI workflow's) and the OIDC issuer that vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessIdentity {
    pub identity: String,
    pub issuer: String,
}

/// One `[[trust]]` rule as the config names it (files not yet read).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustRuleConfig {
    /// `registry/repository` patterns: `*` matches within one path segment,
    /// `**` any number of segments.
    pub patterns: Vec<String>,
    pub allow_unsigned: bool,
    /// Cosign public keys (PEM); a signature by any one satisfies the rule.
    pub keys: Vec<PathBuf>,
    /// Keyless signers; a signature by any one satisfies the rule.
    pub keyless: Vec<KeylessIdentity>,
    /// The Sigstore trusted root (`trusted_root.json`) keyless signatures
    /// are checked against.
    pub trusted_root: Option<PathBuf>,
}

/// A public key read from its file.
#[derive(Debug, Clone)]
struct TrustedKey {
    path: PathBuf,
    pem: Vec<u8>,
}

/// The parts of a trusted root the cosign checks need, read from its file.
#[derive(Debug, Clone, Default)]
pub struct TrustedRoot {
    path: PathBuf,
    fulcio_certs: Vec<Vec<u8>>,
    rekor_keys: std::collections::BTreeMap<String, Vec<u8>>,
    ctfe_keys: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Sigstore's public-good trusted root as `sigstore-verify` ships it: the
/// default for keyless rules that name no `trusted_root`. It is only as fresh
/// as this build; name a current `trusted_root.json` to follow key rotations.
pub const PUBLIC_GOOD_ROOT: &str = sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT;

impl TrustedRoot {
    /// The Sigstore public-good root as this build embeds it (no network).
    pub fn public_good() -> Result<TrustedRoot, String> {
        TrustedRoot::parse(PUBLIC_GOOD_ROOT, Path::new("<embedded Sigstore public-good root>"))
    }

    /// Parses a `trusted_root.json` (Sigstore's protobuf-specs format).
    fn parse(text: &str, path: &Path) -> Result<TrustedRoot, String> {
        let root = sigstore_verify::trust_root::TrustedRoot::from_json(text)
            .map_err(|e| format!("not a Sigstore trusted root: {e}"))?;
        if root.certificate_authorities.is_empty() {
            return Err("it names no certificate authority (Fulcio) to check keyless signatures against".into());
        }
        if root.tlogs.is_empty() {
            return Err("it names no transparency log (Rekor) key".into());
        }
        let fulcio_certs = root.fulcio_certs().iter().map(|c| c.as_bytes().to_vec()).collect();
        let keyed = |logs: Vec<(&[u8], &[u8])>| {
            logs.into_iter()
                .map(|(id, key)| (hex::encode(id), key.to_vec()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let rekor_keys =
            keyed(root.tlogs.iter().map(|t| (t.log_id.key_id.as_bytes(), t.public_key.raw_bytes.as_bytes())).collect());
        let ctfe_keys = keyed(
            root.ctlogs.iter().map(|t| (t.log_id.key_id.as_bytes(), t.public_key.raw_bytes.as_bytes())).collect(),
        );
        Ok(TrustedRoot { path: path.to_path_buf(), fulcio_certs, rekor_keys, ctfe_keys })
    }

    fn manual(&self) -> ManualTrustRoot<'_> {
        ManualTrustRoot {
            fulcio_certs: self.fulcio_certs.iter().map(|c| c.as_slice().into()).collect(),
            rekor_keys: self.rekor_keys.clone(),
            ctfe_keys: self.ctfe_keys.clone(),
        }
    }
}

/// One rule with its keys and root read.
#[derive(Debug, Clone)]
pub struct TrustRule {
    /// How errors name the rule: its first pattern.
    pub name: String,
    patterns: Vec<String>,
    pub allow_unsigned: bool,
    keys: Vec<TrustedKey>,
    keyless: Vec<KeylessIdentity>,
    root: Option<Arc<TrustedRoot>>,
    /// A digest of everything the rule trusts: a verification recorded
    /// under one fingerprint does not count once the rule changes.
    pub fingerprint: String,
}

impl TrustRule {
    /// Reads the rule's keys and trusted root; an unreadable or unparsable
    /// file is an error naming it.
    pub fn load(c: &TrustRuleConfig) -> Result<TrustRule, TrustError> {
        let name = c.patterns.first().cloned().unwrap_or_default();
        let material =
            |path: &Path, message: String| TrustError::Material { rule: name.clone(), path: path.into(), message };
        let mut hash = Sha256::new();
        for p in &c.patterns {
            hash.update(format!("pattern {p}\n"));
        }
        hash.update(format!("allow_unsigned {}\n", c.allow_unsigned));
        let mut keys = Vec::new();
        for path in &c.keys {
            let pem = std::fs::read(path).map_err(|e| material(path, format!("cannot read the key: {e}")))?;
            PublicKeyVerifier::try_from(&pem)
                .map_err(|e| material(path, format!("not a PEM public key cosign can use: {e}")))?;
            hash.update(format!("key {}\n", hex::encode(Sha256::digest(&pem))));
            keys.push(TrustedKey { path: path.clone(), pem });
        }
        for k in &c.keyless {
            hash.update(format!("keyless {:?} {:?}\n", k.identity, k.issuer));
        }
        let root = match &c.trusted_root {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| material(path, format!("cannot read it: {e}")))?;
                hash.update(format!("root {}\n", hex::encode(Sha256::digest(&text))));
                Some(Arc::new(TrustedRoot::parse(&text, path).map_err(|m| material(path, m))?))
            }
            None if !c.keyless.is_empty() => {
                hash.update(format!("root {}\n", hex::encode(Sha256::digest(PUBLIC_GOOD_ROOT))));
                Some(Arc::new(TrustedRoot::public_good().map_err(|m| material(Path::new("<embedded>"), m))?))
            }
            None => None,
        };
        Ok(TrustRule {
            name,
            patterns: c.patterns.clone(),
            allow_unsigned: c.allow_unsigned,
            keys,
            keyless: c.keyless.clone(),
            root,
            fingerprint: hex::encode(hash.finalize()),
        })
    }

    /// What the rule requires, in words.
    pub fn wants(&self) -> String {
        let mut parts: Vec<String> = self.keys.iter().map(|k| format!("key {}", k.path.display())).collect();
        parts.extend(self.keyless.iter().map(|k| format!("keyless signer {} (issuer {})", k.identity, k.issuer)));
        match parts.len() {
            0 => "nothing".into(),
            1 => format!("a signature by {}", parts[0]),
            _ => format!("a signature by one of: {}", parts.join(", ")),
        }
    }
}

/// A deployment's own requirement (`spec.artifact.verify`), as a rule named
/// after the field; relative paths are taken from the spec's directory.
pub fn spec_rule(v: &crate::spec::VerifySpec, base: &Path) -> Result<TrustRule, TrustError> {
    let path = |p: &str| base.join(p);
    let mut rule = TrustRule::load(&TrustRuleConfig {
        patterns: vec!["spec.artifact.verify".into()],
        allow_unsigned: false,
        keys: v.key.iter().map(|k| path(k)).collect(),
        keyless: v
            .identity
            .iter()
            .map(|i| KeylessIdentity { identity: i.subject.clone(), issuer: i.issuer.clone() })
            .collect(),
        trusted_root: if v.bundle.is_some() { None } else { v.trusted_root.as_deref().map(path) },
    })?;
    rule.name = "spec.artifact.verify".into();
    Ok(rule)
}

/// The bundle check a spec asks of a `file`/`url` artifact.
pub fn spec_bundle(v: &crate::spec::VerifySpec, base: &Path) -> Option<(PathBuf, BundleSigner, Option<PathBuf>)> {
    let bundle = base.join(v.bundle.as_ref()?);
    let signer = match (&v.key, &v.identity) {
        (Some(k), _) => BundleSigner::Key(base.join(k)),
        (None, Some(i)) => {
            BundleSigner::Keyless(KeylessIdentity { identity: i.subject.clone(), issuer: i.issuer.clone() })
        }
        (None, None) => return None,
    };
    Some((bundle, signer, v.trusted_root.as_ref().map(|r| base.join(r))))
}

/// The ordered rules of the daemon config.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    rules: Vec<TrustRule>,
}

impl TrustPolicy {
    pub fn load(rules: &[TrustRuleConfig]) -> Result<TrustPolicy, TrustError> {
        Ok(TrustPolicy { rules: rules.iter().map(TrustRule::load).collect::<Result<_, _>>()? })
    }

    /// A policy of one rule, for `era verify`.
    pub fn single(rule: TrustRule) -> TrustPolicy {
        TrustPolicy { rules: vec![rule] }
    }

    /// The rule for `registry/repository`: the first that matches.
    pub fn rule_for(&self, reference: &str, repository: &str) -> Result<&TrustRule, TrustError> {
        self.rules
            .iter()
            .find(|r| r.patterns.iter().any(|p| glob_match(p, repository)))
            .ok_or_else(|| TrustError::NoRule { reference: reference.to_string(), repository: repository.to_string() })
    }
}

/// `registry/repository` glob matching: `*` within one segment, `**` any
/// number of whole segments (also none).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn segments(p: &[&str], n: &[&str]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(&"**"), _) => segments(&p[1..], n) || (!n.is_empty() && segments(p, &n[1..])),
            (Some(s), Some(t)) => segment(s.as_bytes(), t.as_bytes()) && segments(&p[1..], &n[1..]),
            _ => false,
        }
    }
    fn segment(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => segment(&p[1..], n) || (!n.is_empty() && segment(p, &n[1..])),
            (Some(a), Some(b)) => a == b && segment(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    segments(&p, &n)
}

/// How to reach the registry the signatures are in.
#[derive(Debug, Clone, Default)]
pub struct SignatureAccess {
    /// Plain HTTP (loopback or `insecure` registries).
    pub plain_http: bool,
    pub auth: Option<oci_client::secrets::RegistryAuth>,
}

/// Who signed, in words (for the journal and `era verify`).
pub type Signer = String;

/// A keyless signer's constraint, made whole. The sigstore crate keeps a
/// layer's certificate only when it chains to the root and a Rekor entry the
/// root's log key signed says when it was logged, and its identity
/// constraints then compare the certificate's subject and issuer. This also
/// requires what cosign checks besides: the layer's signature verifies with
/// the certificate's key, and the logged entry is this signature over this
/// payload (not another entry's timestamp lent to it).
#[derive(Debug)]
struct Keyless(Box<dyn VerificationConstraint>);

impl VerificationConstraint for Keyless {
    fn verify(&self, layer: &sigstore::cosign::SignatureLayer) -> sigstore::errors::Result<bool> {
        let (Some(cert), Some(signature)) = (&layer.certificate_signature, &layer.signature) else {
            return Ok(false);
        };
        if !self.0.verify(layer)? {
            return Ok(false);
        }
        let signed = cert
            .verification_key
            .verify_signature(sigstore::crypto::Signature::Base64Encoded(signature.as_bytes()), &layer.raw_data)
            .is_ok();
        Ok(signed && logged_entry_matches(layer, signature))
    }
}

/// Whether the layer's transparency-log entry records this signature over
/// this payload. Entries from a sigstore bundle were matched to their
/// signature when the sigstore crate verified them.
fn logged_entry_matches(layer: &sigstore::cosign::SignatureLayer, signature: &str) -> bool {
    use base64::Engine;
    use sigstore::cosign::bundle_content::BundleContent;
    let body = match &layer.bundle {
        Some(BundleContent::RekorBundle(b)) => &b.payload.body,
        Some(BundleContent::SigstoreBundle(_)) => return true,
        None => return false,
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) else { return false };
    let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    let spec = &entry["spec"];
    let payload_hash = hex::encode(Sha256::digest(&layer.raw_data));
    entry["kind"] == "hashedrekord"
        && spec["signature"]["content"] == signature
        && spec["data"]["hash"]["algorithm"] == "sha256"
        && spec["data"]["hash"]["value"] == payload_hash.as_str()
}

/// A cosign constraint and how to name who it stands for.
type Named = (String, Box<dyn VerificationConstraint>);

/// One cosign constraint per key and keyless signer of `rule`, with how to
/// name it.
fn constraints(rule: &TrustRule) -> Result<Vec<Named>, TrustError> {
    let mut constraints: Vec<Named> = Vec::new();
    for k in &rule.keys {
        let c = PublicKeyVerifier::try_from(&k.pem).map_err(|e| TrustError::Material {
            rule: rule.name.clone(),
            path: k.path.clone(),
            message: e.to_string(),
        })?;
        constraints.push((format!("key {}", k.path.display()), Box::new(c)));
    }
    for k in &rule.keyless {
        let who = format!("{} (issuer {})", k.identity, k.issuer);
        if k.identity.contains('@') && !k.identity.contains("://") {
            constraints.push((
                who,
                Box::new(Keyless(Box::new(CertSubjectEmailVerifier {
                    email: StringVerifier::ExactMatch(k.identity.clone()),
                    issuer: Some(StringVerifier::ExactMatch(k.issuer.clone())),
                }))),
            ));
        } else {
            let subject = CertSubjectUrlVerifier { url: k.identity.clone(), issuer: k.issuer.clone() };
            constraints.push((who, Box::new(Keyless(Box::new(subject)))));
        }
    }
    Ok(constraints)
}

/// A cosign client per rule, registry and protocol, kept: building one loads
/// the TLS roots (~16 ms here), which would otherwise be most of a check.
type SharedClient = Arc<tokio::sync::Mutex<sigstore::cosign::Client>>;

fn signature_client(rule: &TrustRule, registry: &str, plain_http: bool) -> Result<SharedClient, TrustError> {
    static CLIENTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, SharedClient>>> =
        std::sync::LazyLock::new(Default::default);
    let key = format!("{} {registry} {plain_http}", rule.fingerprint);
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let protocol =
        if plain_http { ClientProtocol::HttpsExcept(vec![registry.to_string()]) } else { ClientProtocol::Https };
    let manual = rule.root.as_ref().map(|r| r.manual());
    let mut builder = sigstore::cosign::ClientBuilder::default()
        .with_oci_client_config(ClientConfig { protocol, ..Default::default() });
    let material = |message: String| TrustError::Material {
        rule: rule.name.clone(),
        path: rule.root.as_ref().map(|r| r.path.clone()).unwrap_or_default(),
        message,
    };
    if let Some(m) = &manual {
        builder = builder.with_trust_repository(m).map_err(|e| material(e.to_string()))?;
    }
    let client = builder.build().map_err(|e| material(format!("the signature client failed: {e}")))?;
    let client = Arc::new(tokio::sync::Mutex::new(client));
    clients.insert(key, client.clone());
    Ok(client)
}

/// Finds the cosign signatures of `repository` at any of `digests` (an
/// image's index and its platform manifest: a signature on either covers
/// it) and checks them against `rule`. Returns who signed.
pub async fn verify_image(
    rule: &TrustRule,
    reference: &str,
    registry: &str,
    repository_path: &str,
    digests: &[String],
    access: &SignatureAccess,
) -> Result<Signer, TrustError> {
    let unverified = |detail: String| TrustError::Unverified {
        reference: reference.to_string(),
        rule: rule.name.clone(),
        wants: rule.wants(),
        detail,
    };
    if rule.keys.is_empty() && rule.keyless.is_empty() {
        return Err(unverified("the rule names no key and no keyless signer".into()));
    }
    let client = signature_client(rule, registry, access.plain_http)?;
    let mut client = client.lock().await;
    let auth = match &access.auth {
        Some(oci_client::secrets::RegistryAuth::Basic(u, p)) => Auth::Basic(u.clone(), p.clone()),
        Some(oci_client::secrets::RegistryAuth::Bearer(t)) => Auth::Bearer(t.clone()),
        _ => Auth::Anonymous,
    };
    let mut found = Vec::new();
    for digest in digests {
        let at = format!("{registry}/{repository_path}@{digest}");
        let image: OciReference =
            at.parse().map_err(|e| TrustError::Reference { reference: at.clone(), message: format!("{e}") })?;
        // Layers whose payload names another digest, whose signature
        // annotation is missing, or whose certificate does not chain to the
        // root are dropped here, so what remains can only be satisfied by a
        // signature over this digest.
        found.push((digest, client.trusted_signature_layers(&auth, &image).await.unwrap_or_default()));
    }
    let constraints = constraints(rule)?;
    for (digest, layers) in &found {
        for (who, c) in &constraints {
            if sigstore::cosign::verify_constraints(layers, std::iter::once(c)).is_ok() {
                return Ok(format!("{who} over {digest}"));
            }
        }
    }
    let found: usize = found.iter().map(|(_, l)| l.len()).sum();
    let over = digests.join(" or ");
    Err(unverified(if found == 0 {
        format!(
            "no cosign signature whose payload names {over} was found (looked for the sha256-<hex>.sig tag and OCI referrers)"
        )
    } else {
        format!("none of the {found} signature(s) over {over} verifies with it")
    }))
}

/// What a sigstore bundle must have been signed by.
#[derive(Debug, Clone)]
pub enum BundleSigner {
    Key(PathBuf),
    Keyless(KeylessIdentity),
}

/// Checks a sigstore bundle (v0.1 to v0.3) over `artifact` offline with
/// `sigstore-verify`: signature, certificate chain and identity (keyless),
/// transparency-log entry (inclusion proof or promise), all against
/// `root`. Returns who signed.
pub fn verify_blob(
    artifact: &Path,
    bundle: &Path,
    signer: &BundleSigner,
    root: Option<&Path>,
) -> Result<BlobVerified, TrustError> {
    verify_subject(&BlobSubject::File(artifact), bundle, signer, root)
}

/// What a bundle is checked over: a file's bytes, or only their sha256 (an
/// artifact too large to read again, or kept elsewhere), as sigstore's
/// clients allow.
#[derive(Debug, Clone)]
pub enum BlobSubject<'a> {
    File(&'a Path),
    /// `sha256:<64 hex>`.
    Digest(&'a str),
}

impl BlobSubject<'_> {
    fn name(&self) -> String {
        match self {
            BlobSubject::File(p) => p.display().to_string(),
            BlobSubject::Digest(d) => d.to_string(),
        }
    }
}

/// [`verify_blob`] over a file or a digest.
pub fn verify_subject(
    artifact: &BlobSubject<'_>,
    bundle: &Path,
    signer: &BundleSigner,
    root: Option<&Path>,
) -> Result<BlobVerified, TrustError> {
    let subject = artifact.name();
    let fail = |message: String| TrustError::Bundle { subject: subject.clone(), message };
    let (root_text, root_name) = match root {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| fail(format!("trusted root {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        None => (PUBLIC_GOOD_ROOT.to_string(), "<embedded Sigstore public-good root>".to_string()),
    };
    let root = Path::new(&root_name);
    let trusted = sigstore_verify::trust_root::TrustedRoot::from_json(&root_text)
        .map_err(|e| fail(format!("trusted root {}: not a Sigstore trusted root: {e}", root.display())))?;
    let bundle_text = std::fs::read_to_string(bundle).map_err(|e| fail(format!("bundle {}: {e}", bundle.display())))?;
    let parsed = sigstore_verify::types::Bundle::from_json(&bundle_text)
        .map_err(|e| fail(format!("bundle {}: not a sigstore bundle: {e}", bundle.display())))?;
    let verifier =
        sigstore_verify::Verifier::new(&trusted).map_err(|e| fail(format!("trusted root {}: {e}", root.display())))?;
    let rejected = |e: sigstore_verify::Error| fail(format!("bundle {} rejected: {e}", bundle.display()));
    // Either the file's bytes, streamed, or the digest given.
    enum Input {
        Reader(std::io::BufReader<std::fs::File>),
        Digest(sigstore_verify::types::Sha256Hash),
    }
    let input = match artifact {
        BlobSubject::File(path) => Input::Reader(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?,
        )),
        BlobSubject::Digest(d) => {
            let hex = d
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| fail("a digest is sha256: and 64 hex digits".into()))?;
            Input::Digest(sigstore_verify::types::Sha256Hash::from_hex(hex).map_err(|e| fail(format!("digest: {e}")))?)
        }
    };
    let check = |policy: &dyn sigstore_verify::Policy| match input {
        Input::Reader(r) => verifier.verify_reader(r, &parsed, policy),
        Input::Digest(d) => verifier.verify(d, &parsed, policy),
    };
    let (who, result) = match signer {
        BundleSigner::Key(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| fail(format!("key {}: {e}", path.display())))?;
            let key = sigstore_verify::types::DerPublicKey::from_pem(&pem)
                .map_err(|e| fail(format!("key {}: not a PEM public key: {e}", path.display())))?;
            let policy = sigstore_verify::PublicKeyVerificationPolicy::new(key);
            (format!("key {}", path.display()), check(&policy).map_err(rejected)?)
        }
        BundleSigner::Keyless(k) => {
            let policy = sigstore_verify::VerificationPolicy::new(k.identity.as_str(), k.issuer.as_str());
            (format!("{} (issuer {})", k.identity, k.issuer), check(&policy).map_err(rejected)?)
        }
    };
    // What was checked, from the verifier's own account; anything a keyless
    // or key signature needs that it did not check fails closed.
    let mut checks = Vec::new();
    let mut missing = Vec::new();
    let keyless = matches!(signer, BundleSigner::Keyless(_));
    for (done, name, needed) in [
        (result.certificate_verified(), "certificate chain", keyless),
        (result.sct_verified(), "SCT", keyless),
        (result.identity_policy_checked(), "identity and issuer", keyless),
        (result.tlog_verified(), "transparency log", true),
    ] {
        if done {
            checks.push(name);
        } else if needed {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(fail(format!("bundle {} was not fully checked: no {}", bundle.display(), missing.join(", "))));
    }
    Ok(BlobVerified {
        signer: who,
        checks: checks.join(", "),
        logged_at: result.integrated_time().map(|t| t.to_string()),
    })
}

/// What `verify_blob` established.
#[derive(Debug, Clone)]
pub struct BlobVerified {
    pub signer: Signer,
    /// The checks that passed, in words.
    pub checks: String,
    /// When the transparency log integrated the entry.
    pub logged_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_by_segment() {
        assert!(glob_match("**", "127.0.0.1:5000/a/b"));
        assert!(glob_match("reg.example/team/*", "reg.example/team/app"));
        assert!(!glob_match("reg.example/team/*", "reg.example/team/app/sub"));
        assert!(glob_match("reg.example/team/**", "reg.example/team/app/sub"));
        assert!(glob_match("reg.example/**", "reg.example/app"));
        assert!(glob_match("reg.*/app", "reg.example/app"));
        assert!(!glob_match("reg.example/app", "reg.example/apps"));
        assert!(!glob_match("reg.example/*", "other.example/app"));
        assert!(glob_match("*/library/busybox", "docker.io/library/busybox"));
    }

    #[test]
    fn no_rule_fails_closed_and_the_first_match_decides() {
        let rule = |pat: &str, allow| TrustRule {
            name: pat.into(),
            patterns: vec![pat.into()],
            allow_unsigned: allow,
            keys: vec![],
            keyless: vec![],
            root: None,
            fingerprint: pat.into(),
        };
        let p = TrustPolicy { rules: vec![rule("reg/signed/**", false), rule("reg/**", true)] };
        assert!(!p.rule_for("r", "reg/signed/app").unwrap().allow_unsigned);
        assert!(p.rule_for("r", "reg/other").unwrap().allow_unsigned);
        let err = p.rule_for("other/x:1", "other/x").unwrap_err().to_string();
        assert!(err.contains("no trust rule matches other/x"), "{err}");
    }

    #[test]
    fn key_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "not a key").unwrap();
        let c = TrustRuleConfig { patterns: vec!["**".into()], keys: vec![bad.clone()], ..Default::default() };
        let err = TrustRule::load(&c).unwrap_err().to_string();
        assert!(err.contains("bad.pub") && err.contains("not a PEM public key"), "{err}");
        let gone = TrustRuleConfig { patterns: vec!["**".into()], keys: vec![dir.path().join("gone.pub")], ..c };
        let err = TrustRule::load(&gone).unwrap_err().to_string();
        assert!(err.contains("gone.pub") && err.contains("cannot read"), "{err}");
    }
}
