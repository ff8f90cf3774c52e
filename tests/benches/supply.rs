//! Supply-chain benchmarks, each against a baseline run in the same process
//! on the same machine:
//!
//! 1. pull + verify of a ~200 MiB, 4-layer image from a local registry into
//!    erad's content store vs `skopeo copy` of the same image to an OCI layout;
//! 2. sha256 throughput of the content store (file ingest) vs `sha256sum`;
//! 3. signature checks: a cosign key signature of an image, looked up in the
//!    local registry and checked, and a keyless sigstore bundle checked
//!    offline (certificate chain, SCT, log entry, identity), each against one
//!    bare ECDSA P-256 verification of the same signature.
//!
//! Run: `cargo bench -p era-tests --bench supply` (add `-- --quick` for a
//! 40 MiB image).

#![allow(clippy::unwrap_used)]

use era_tests::{CosignKey, Registry};
use erad::artifact::ContentStore;
use erad::spec::ArtifactSource;
use erad::trust::{BundleSigner, KeylessIdentity, TrustPolicy, TrustRule, TrustRuleConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store that takes unsigned artifacts from anywhere, as the dev config does.
fn open_store(dir: &std::path::Path) -> ContentStore {
    let rule = TrustRuleConfig { patterns: vec!["**".into()], allow_unsigned: true, ..Default::default() };
    let policy = Arc::new(TrustPolicy::load(&[rule]).unwrap());
    ContentStore::open(dir).unwrap().with_registries(Default::default(), policy)
}

/// Median time per call of `f` over `n` calls.
fn per_call(n: usize, mut f: impl FnMut()) -> Duration {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    median(v)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Incompressible bytes, so the gzip'd layers stay as large as the files.
fn noise(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 90) as u8
        })
        .collect();
    String::from_utf8(bytes).unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let layer_mib = if quick { 10 } else { 50 };
    let rounds = if quick { 1 } else { 3 };
    let registry = Registry::start();
    // One file per layer: umoci repack makes a layer per repack, so build up
    // the image in four pushes of the same tag.
    let mut files: Vec<(String, String)> = Vec::new();
    let mut digest = String::new();
    for i in 0..4 {
        files.push((format!("layer{i}.bin"), noise(layer_mib << 20, i + 1)));
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        digest = registry.push_image("bench/big", "v1", &refs);
    }
    let reference = format!("{}/bench/big:v1", registry.addr);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut era, mut skopeo) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("content"));
        let t = Instant::now();
        let f =
            rt.block_on(store.fetch(&ArtifactSource::Image(reference.clone()), None, dir.path(), &|_, _| {})).unwrap();
        era.push(t.elapsed());
        assert_eq!(f.digest, digest);
        bytes = era_tests::files_under(&dir.path().join("content/blobs/sha256"))
            .iter()
            .map(|b| std::fs::metadata(dir.path().join("content/blobs/sha256").join(b)).unwrap().len())
            .sum::<u64>();
        let layout = dir.path().join("layout");
        let t = Instant::now();
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", layout.display()))
            .output()
            .unwrap();
        skopeo.push(t.elapsed());
        assert!(out.status.success(), "{out:?}");
    }
    let (e, s) = (median(era), median(skopeo));
    println!(
        "pull + verify of a {:.0} MiB 4-layer image from a local registry: era {:.2} s ({:.0} MiB/s), skopeo copy {:.2} s; ratio era/skopeo {:.2}x (median of {rounds})",
        bytes as f64 / (1 << 20) as f64,
        e.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64 / e.as_secs_f64(),
        s.as_secs_f64(),
        e.as_secs_f64() / s.as_secs_f64()
    );

    // sha256 throughput: the store's file ingest vs sha256sum, same file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, noise((4 * layer_mib) << 20, 99)).unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    let want = format!("sha256:{}", {
        let out = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let store_dir = tempfile::tempdir().unwrap();
        let roots = erad::artifact::roots::FileRoots::new(&[dir.path().to_path_buf()]);
        let store = open_store(store_dir.path()).with_file_roots(roots);
        let t = Instant::now();
        rt.block_on(store.fetch(&ArtifactSource::File("blob.bin".into()), Some(&want), dir.path(), &|_, _| {}))
            .unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        let out = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
        theirs.push(t.elapsed());
        assert!(out.status.success());
    }
    let (o, t) = (median(ours), median(theirs));
    let mib = len as f64 / (1 << 20) as f64;
    println!(
        "sha256 of a {mib:.0} MiB file: content store ingest (hash + copy + fsync) {:.0} MiB/s, sha256sum (hash only) {:.0} MiB/s; ratio {:.2}x",
        mib / o.as_secs_f64(),
        mib / t.as_secs_f64(),
        o.as_secs_f64() / t.as_secs_f64()
    );

    // A cosign key signature on the image: looked up in the registry (the
    // .sig tag; this registry has no referrers API) and checked.
    let keys = tempfile::tempdir().unwrap();
    let key = CosignKey::generate(keys.path(), "bench");
    registry.cosign_sign("bench/big", &digest, &key);
    let rule = TrustRule::load(&TrustRuleConfig {
        patterns: vec!["**".into()],
        keys: vec![key.public.clone()],
        ..Default::default()
    })
    .unwrap();
    let fetcher = erad::artifact::oci::OciFetcher::new(Default::default(), Arc::new(TrustPolicy::single(rule.clone())));
    let image = per_call(50, || {
        rt.block_on(fetcher.verify_signatures(erad::artifact::oci::OciKind::Image, &reference, &rule)).unwrap();
    });
    let signer = key.signer();
    let message = vec![7u8; 256];
    let signature = signer.sign(&message).unwrap();
    let public = signer.to_sigstore_keypair().unwrap().public_key_to_pem().unwrap();
    let vk = sigstore::crypto::CosignVerificationKey::try_from_pem(public.as_bytes()).unwrap();
    let bare = per_call(2000, || {
        vk.verify_signature(sigstore::crypto::Signature::Raw(&signature), &message).unwrap();
    });
    println!(
        "cosign key signature of an image, looked up in the local registry and checked: {:.0} us per image; one bare ECDSA P-256 verify {:.0} us",
        image.as_secs_f64() * 1e6,
        bare.as_secs_f64() * 1e6
    );

    // A keyless sigstore bundle, checked offline.
    let pki = era_tests::pki::TestSigstore::new(keys.path());
    let (who, issuer) = ("bench@era.test", "https://issuer.era.test");
    let cert = pki.issue(who, issuer);
    let artifact = keys.path().join("artifact.bin");
    std::fs::write(&artifact, &message).unwrap();
    let bundle = keys.path().join("artifact.sigstore.json");
    std::fs::write(&bundle, pki.bundle(&message, &cert, "0.3")).unwrap();
    let who = BundleSigner::Keyless(KeylessIdentity { identity: who.into(), issuer: issuer.into() });
    let offline = per_call(500, || {
        erad::trust::verify_blob(&artifact, &bundle, &who, Some(&pki.trusted_root)).unwrap();
    });
    println!(
        "keyless sigstore bundle (v0.3) checked offline, from files: {:.0} us; one bare ECDSA P-256 verify {:.0} us; ratio {:.1}x",
        offline.as_secs_f64() * 1e6,
        bare.as_secs_f64() * 1e6,
        offline.as_secs_f64() / bare.as_secs_f64()
    );
}
