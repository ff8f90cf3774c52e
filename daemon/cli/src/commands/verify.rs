//! `era verify` and `era verify-blob`: erad's own signature checks, run
//! here without a daemon, so an operator sees what erad's trust policy would
//! decide before deploying.

use crate::client::CliError;
use erad::artifact::oci::{OciFetcher, OciKind, RegistryAccess};
use erad::trust::{BundleSigner, KeylessIdentity, TrustPolicy, TrustRule, TrustRuleConfig};
use std::path::{Path, PathBuf};

/// Who must have signed, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct SignerArgs {
    /// A cosign public key (PEM); repeat to accept any of several.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Keyless: the signing certificate's identity (an email address or URI).
    #[arg(long, requires = "certificate_oidc_issuer")]
    certificate_identity: Option<String>,
    /// Keyless: the OIDC issuer that vouched for the identity.
    #[arg(long, requires = "certificate_identity")]
    certificate_oidc_issuer: Option<String>,
    /// The Sigstore trusted_root.json to check against (default: the
    /// public-good root embedded in this build; nothing is fetched).
    #[arg(long)]
    trusted_root: Option<PathBuf>,
}

impl SignerArgs {
    fn keyless(&self) -> Option<KeylessIdentity> {
        match (&self.certificate_identity, &self.certificate_oidc_issuer) {
            (Some(identity), Some(issuer)) => {
                Some(KeylessIdentity { identity: identity.clone(), issuer: issuer.clone() })
            }
            _ => None,
        }
    }
}

const NO_SIGNER: &str =
    "say who must have signed: --key FILE, or --certificate-identity with --certificate-oidc-issuer";

pub async fn image(reference: &str, kind: &str, signers: &SignerArgs, insecure: bool) -> Result<(), CliError> {
    let keyless: Vec<KeylessIdentity> = signers.keyless().into_iter().collect();
    if signers.keys.is_empty() && keyless.is_empty() {
        return Err(CliError::Usage(NO_SIGNER.into()));
    }
    let rule = TrustRule::load(&TrustRuleConfig {
        patterns: vec!["**".into()],
        allow_unsigned: false,
        keys: signers.keys.clone(),
        keyless,
        trusted_root: signers.trusted_root.clone(),
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let kind = match kind {
        "wasm" => OciKind::Wasm,
        "blob" => OciKind::Blob,
        _ => OciKind::Image,
    };
    let mut registries = std::collections::BTreeMap::new();
    if insecure {
        let registry = reference.split('/').next().unwrap_or_default().to_string();
        registries.insert(registry, RegistryAccess { insecure: true, auth: None });
    }
    let fetcher = OciFetcher::new(registries, std::sync::Arc::new(TrustPolicy::single(rule.clone())));
    let (digests, signer) =
        fetcher.verify_signatures(kind, reference, &rule).await.map_err(|e| CliError::Failed(e.to_string()))?;
    println!("Verified {reference}");
    println!("  digest:    {}", digests.last().map(String::as_str).unwrap_or_default());
    if digests.len() > 1 {
        println!("  index:     {}", digests[0]);
    }
    println!("  signed by: {signer}");
    Ok(())
}

pub fn blob(file: &Path, bundle: &Path, signers: &SignerArgs) -> Result<(), CliError> {
    let signer = match (signers.keys.as_slice(), signers.keyless()) {
        ([key], None) => BundleSigner::Key(key.clone()),
        ([], Some(k)) => BundleSigner::Keyless(k),
        ([], None) => return Err(CliError::Usage(NO_SIGNER.into())),
        _ => return Err(CliError::Usage("verify-blob takes one --key, or one keyless identity".into())),
    };
    // `sha256:<hex>` instead of a file checks the bundle against that digest.
    let text = file.to_string_lossy();
    let subject = match text.strip_prefix("sha256:") {
        Some(_) if !file.exists() => erad::trust::BlobSubject::Digest(&text),
        _ => erad::trust::BlobSubject::File(file),
    };
    let v = erad::trust::verify_subject(&subject, bundle, &signer, signers.trusted_root.as_deref())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    println!("Verified {}", file.display());
    println!("  bundle:    {}", bundle.display());
    println!("  signed by: {}", v.signer);
    println!("  checked:   {}", v.checks);
    if let Some(t) = v.logged_at {
        println!("  logged at: {t}");
    }
    Ok(())
}
