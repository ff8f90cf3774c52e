//! A Sigstore stand-in for tests, made fresh per test: a Fulcio-like CA that
//! issues short-lived signing certificates with an embedded SCT, a CT log
//! key that signs those SCTs, and a Rekor-like log key that signs entries
//! (signed entry timestamps and checkpoints over a one-leaf tree). Its
//! `trusted_root.json` is what an operator would hand to erad.
//!
//! Only the tests sign; erad only verifies. The formats follow Sigstore's
//! protobuf-specs (bundles, trusted root), RFC 6962 (SCTs), Rekor's
//! hashedrekord entries and signed notes, and cosign's `.sig` annotations.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreSigner;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

fn new_key() -> SigStoreSigner {
    SigningScheme::ECDSA_P256_SHA256_ASN1.create_signer().expect("new key")
}

fn spki(key: &SigStoreSigner) -> Vec<u8> {
    key.to_sigstore_keypair().and_then(|p| p.public_key_to_der()).expect("public key")
}

fn rcgen_key(key: &SigStoreSigner) -> rcgen::KeyPair {
    let pem = key.to_sigstore_keypair().and_then(|p| p.private_key_to_pem()).expect("private key");
    rcgen::KeyPair::from_pem(&pem).expect("rcgen key")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// A DER element's (header length, content length) at the start of `der`.
fn der_len(der: &[u8]) -> (usize, usize) {
    let first = der[1] as usize;
    if first < 0x80 {
        return (2, first);
    }
    let n = first & 0x7f;
    let len = der[2..2 + n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
    (2 + n, len)
}

/// The TBSCertificate of a DER certificate, as its bytes.
fn tbs_of(cert: &[u8]) -> Vec<u8> {
    let (outer, _) = der_len(cert);
    let inner = &cert[outer..];
    let (h, l) = der_len(inner);
    inner[..h + l].to_vec()
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![tag, len as u8];
    }
    let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
    let mut out = vec![tag, 0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A short-lived signing certificate and its key.
pub struct KeylessCert {
    pub key: SigStoreSigner,
    pub der: Vec<u8>,
    pub pem: String,
}

/// What the log returned for one entry.
pub struct Logged {
    pub body: Vec<u8>,
    pub integrated_time: u64,
    pub set: Vec<u8>,
    pub root_hash: [u8; 32],
    pub checkpoint: String,
}

pub struct TestSigstore {
    ca_key: SigStoreSigner,
    ca_params: rcgen::CertificateParams,
    pub ca_der: Vec<u8>,
    rekor: SigStoreSigner,
    rekor_id: [u8; 32],
    ct: SigStoreSigner,
    ct_id: [u8; 32],
    pub trusted_root: PathBuf,
}

const REKOR_ORIGIN: &str = "rekor.era.test - 1";

impl TestSigstore {
    /// A fresh CA, CT log and Rekor key; writes `trusted_root.json` in `dir`.
    pub fn new(dir: &Path) -> TestSigstore {
        let ca_key = new_key();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params.distinguished_name.push(rcgen::DnType::OrganizationName, "era-test");
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "era-test-fulcio");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        ca_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca_der = ca_params.self_signed(&rcgen_key(&ca_key)).expect("CA").der().to_vec();
        let rekor = new_key();
        let rekor_id = sha256(&spki(&rekor));
        let ct = new_key();
        let ct_id = sha256(&spki(&ct));
        let trusted_root = dir.join("trusted_root.json");
        let valid = serde_json::json!({"start": "2020-01-01T00:00:00Z"});
        let root = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.era.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": B64.encode(spki(&rekor)), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": valid},
                "logId": {"keyId": B64.encode(rekor_id)}
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "era-test", "commonName": "era-test-fulcio"},
                "uri": "https://fulcio.era.test",
                "certChain": {"certificates": [{"rawBytes": B64.encode(&ca_der)}]},
                "validFor": valid
            }],
            "ctlogs": [{
                "baseUrl": "https://ct.era.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": B64.encode(spki(&ct)), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": valid},
                "logId": {"keyId": B64.encode(ct_id)}
            }],
            "timestampAuthorities": []
        });
        std::fs::write(&trusted_root, serde_json::to_string_pretty(&root).expect("json")).expect("write root");
        TestSigstore { ca_key, ca_params, ca_der, rekor, rekor_id, ct, ct_id, trusted_root }
    }

    /// Issues a 10-minute certificate for `identity` (an email address or a
    /// URI) vouched for by `issuer`, with an SCT from the CT log embedded.
    pub fn issue(&self, identity: &str, issuer: &str) -> KeylessCert {
        let key = new_key();
        let leaf_key = rcgen_key(&key);
        let ca = rcgen::Issuer::from_params(&self.ca_params, rcgen_key(&self.ca_key));
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let san = rcgen::string::Ia5String::try_from(identity.to_string()).expect("identity");
        params.subject_alt_names =
            vec![if identity.contains("://") { rcgen::SanType::URI(san) } else { rcgen::SanType::Rfc822Name(san) }];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        params.serial_number = Some(rcgen::SerialNumber::from(now()));
        let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(60);
        params.not_before = start;
        params.not_after = start + time::Duration::minutes(10);
        params.use_authority_key_identifier_extension = true;
        // Fulcio's issuer extensions: v1 (raw string) and v2 (DER UTF8String).
        params.custom_extensions = vec![
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 1], issuer.as_bytes().to_vec()),
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], {
                let mut v = der_header(0x0c, issuer.len());
                v.extend_from_slice(issuer.as_bytes());
                v
            }),
        ];
        // The precertificate: the same TBS without the SCT list, which goes last.
        let precert = params.signed_by(&leaf_key, &ca).expect("precert").der().to_vec();
        let sct = self.sct(&tbs_of(&precert));
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2], sct));
        let cert = params.signed_by(&leaf_key, &ca).expect("certificate");
        let der = cert.der().to_vec();
        KeylessCert { key, pem: pem("CERTIFICATE", &der), der }
    }

    /// The SCT list extension's content (RFC 6962 section 3.3) for `tbs`.
    fn sct(&self, tbs: &[u8]) -> Vec<u8> {
        let ts = now() * 1000;
        let issuer_key_hash = sha256(&spki_of_cert(&self.ca_der));
        let mut signed = vec![0u8, 0u8];
        signed.extend(ts.to_be_bytes());
        signed.extend([0u8, 1u8]);
        signed.extend(issuer_key_hash);
        signed.extend(&(tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend(tbs);
        signed.extend([0u8, 0u8]);
        let sig = self.ct.sign(&signed).expect("sign SCT");
        let mut sct = vec![0u8];
        sct.extend(self.ct_id);
        sct.extend(ts.to_be_bytes());
        sct.extend([0u8, 0u8, 4u8, 3u8]);
        sct.extend((sig.len() as u16).to_be_bytes());
        sct.extend(sig);
        let mut list = ((sct.len() + 2) as u16).to_be_bytes().to_vec();
        list.extend((sct.len() as u16).to_be_bytes());
        list.extend(sct);
        let mut octets = der_header(0x04, list.len());
        octets.extend(list);
        octets
    }

    /// Logs a hashedrekord entry: `signature` over content whose sha256 is
    /// `digest`, by `public_key_pem` (a certificate or a public key).
    pub fn log(&self, digest: &[u8; 32], signature: &[u8], public_key_pem: &str) -> Logged {
        let body = serde_json::json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex::encode(digest)}},
                "signature": {"content": B64.encode(signature), "publicKey": {"content": B64.encode(public_key_pem)}}
            }
        });
        let body = serde_json::to_vec(&body).expect("body");
        let integrated_time = now();
        let payload = format!(
            r#"{{"body":"{}","integratedTime":{integrated_time},"logID":"{}","logIndex":0}}"#,
            B64.encode(&body),
            hex::encode(self.rekor_id)
        );
        let set = self.rekor.sign(payload.as_bytes()).expect("sign SET");
        let mut leaf = vec![0u8];
        leaf.extend(&body);
        let root_hash = sha256(&leaf);
        let note = format!("{REKOR_ORIGIN}\n1\n{}\n", B64.encode(root_hash));
        let mut sig = self.rekor_id[..4].to_vec();
        sig.extend(self.rekor.sign(note.as_bytes()).expect("sign checkpoint"));
        let checkpoint = format!("{note}\n\u{2014} rekor.era.test {}\n", B64.encode(sig));
        Logged { body, integrated_time, set, root_hash, checkpoint }
    }

    fn tlog_entry(&self, logged: &Logged, with_proof: bool) -> serde_json::Value {
        let mut entry = serde_json::json!({
            "logIndex": "0",
            "logId": {"keyId": B64.encode(self.rekor_id)},
            "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
            "integratedTime": logged.integrated_time.to_string(),
            "inclusionPromise": {"signedEntryTimestamp": B64.encode(&logged.set)},
            "canonicalizedBody": B64.encode(&logged.body)
        });
        if with_proof {
            entry["inclusionProof"] = serde_json::json!({
                "logIndex": "0",
                "rootHash": B64.encode(logged.root_hash),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": logged.checkpoint}
            });
        }
        entry
    }

    /// A keyless sigstore bundle over `artifact`: v0.3 (certificate,
    /// inclusion proof and promise) or v0.1 (certificate chain, promise).
    pub fn bundle(&self, artifact: &[u8], cert: &KeylessCert, version: &str) -> String {
        let digest = sha256(artifact);
        let signature = cert.key.sign(artifact).expect("sign artifact");
        let logged = self.log(&digest, &signature, &cert.pem);
        let (media, material) = match version {
            "0.1" => (
                "application/vnd.dev.sigstore.bundle+json;version=0.1",
                serde_json::json!({
                    "x509CertificateChain": {"certificates": [{"rawBytes": B64.encode(&cert.der)}]},
                    "tlogEntries": [self.tlog_entry(&logged, false)]
                }),
            ),
            _ => (
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                serde_json::json!({
                    "certificate": {"rawBytes": B64.encode(&cert.der)},
                    "tlogEntries": [self.tlog_entry(&logged, true)]
                }),
            ),
        };
        serde_json::to_string_pretty(&serde_json::json!({
            "mediaType": media,
            "verificationMaterial": material,
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(digest)},
                "signature": B64.encode(signature)
            }
        }))
        .expect("bundle json")
    }

    /// A v0.3 bundle over `artifact` signed with a managed key (no certificate).
    pub fn key_bundle(&self, artifact: &[u8], key: &SigStoreSigner) -> String {
        let digest = sha256(artifact);
        let signature = key.sign(artifact).expect("sign artifact");
        let public = key.to_sigstore_keypair().and_then(|p| p.public_key_to_pem()).expect("public key");
        let logged = self.log(&digest, &signature, &public);
        serde_json::to_string_pretty(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "publicKey": {"hint": hex::encode(sha256(&spki(key)))},
                "tlogEntries": [self.tlog_entry(&logged, true)]
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(digest)},
                "signature": B64.encode(signature)
            }
        }))
        .expect("bundle json")
    }

    /// The annotations of a keyless cosign `.sig` layer over `payload`:
    /// signature, certificate, chain and the Rekor bundle (SET and entry).
    pub fn cosign_annotations(&self, payload: &[u8], cert: &KeylessCert) -> serde_json::Value {
        let signature = cert.key.sign(payload).expect("sign payload");
        let logged = self.log(&sha256(payload), &signature, &cert.pem);
        let bundle = serde_json::json!({
            "SignedEntryTimestamp": B64.encode(&logged.set),
            "Payload": {
                "body": B64.encode(&logged.body),
                "integratedTime": logged.integrated_time,
                "logIndex": 0,
                "logID": hex::encode(self.rekor_id)
            }
        });
        serde_json::json!({
            "dev.cosignproject.cosign/signature": B64.encode(signature),
            "dev.sigstore.cosign/certificate": cert.pem,
            "dev.sigstore.cosign/chain": pem("CERTIFICATE", &self.ca_der),
            "dev.sigstore.cosign/bundle": bundle.to_string()
        })
    }
}

/// The SubjectPublicKeyInfo of a DER certificate.
fn spki_of_cert(cert: &[u8]) -> Vec<u8> {
    // TBSCertificate ::= SEQUENCE { [0] version, serial, signature alg,
    // issuer, validity, subject, subjectPublicKeyInfo, ... }
    let tbs = tbs_of(cert);
    let (h, _) = der_len(&tbs);
    let mut rest = &tbs[h..];
    for _ in 0..6 {
        let (eh, el) = der_len(rest);
        rest = &rest[eh + el..];
    }
    let (eh, el) = der_len(rest);
    rest[..eh + el].to_vec()
}
