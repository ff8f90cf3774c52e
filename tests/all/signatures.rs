//! Signatures and the trust policy, against a real registry. Images are
//! signed the way `cosign sign --key` does it (a simple-signing payload in
//! the `sha256-<hex>.sig` tag), by the sigstore crate's signer.
//! Debian's docker-registry has no OCI referrers API, so every lookup here
//! also exercises the fallback to that tag.

use era_tests::pki::TestSigstore;
use era_tests::{CosignKey, Erad, Registry};
use std::path::Path;

fn spec(erad: &Erad, name: &str, image: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{image}\"}}\n"
    );
    erad.spec(&format!("{name}.yaml"), &yaml)
}

fn blob(erad: &Erad, digest: &str) -> std::path::PathBuf {
    erad.data_dir().join("content/blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// The trust rules of these tests: `signed/**` needs key `a`, `open/**` takes
/// anything, and nothing else is allowed.
fn policy(registry: &Registry, key: &Path) -> String {
    format!(
        "{}\n[[trust]]\nmatch = \"{r}/signed/**\"\nkeys = [\"{k}\"]\n[[trust]]\nmatch = \"{r}/open/**\"\nallow_unsigned = true\n",
        era_tests::fixture_plugins(),
        r = registry.addr,
        k = key.display()
    )
}

#[test]
fn a_key_signed_image_is_accepted_and_unsigned_wrongly_signed_or_replayed_ones_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let b = CosignKey::generate(keys.path(), "b");
    let registry = Registry::start();
    let r = &registry.addr;
    let signed = registry.push_image_signed("signed/app", "1", &[("app", "signed by a")], Some(&a));
    let unsigned = registry.push_image("signed/unsigned", "1", &[("app", "nobody signed this")]);
    let wrong = registry.push_image_signed("signed/wrongkey", "1", &[("app", "signed by b")], Some(&b));
    // A signature made for one image, copied to the tag of another.
    let original = registry.push_image_signed("signed/replay", "1", &[("app", "the signed one")], Some(&a));
    let replayed = registry.push_image("signed/replay", "2", &[("app", "the other one")]);
    let sig_tag = |d: &str| format!("{}.sig", d.replace(':', "-"));
    registry.copy_tag("signed/replay", &sig_tag(&original), &sig_tag(&replayed));
    registry.push_image("open/app", "1", &[("app", "unsigned but allowed")]);
    registry.push_image("elsewhere/app", "1", &[("app", "no rule for it")]);

    let erad = Erad::start_with(&policy(&registry, &a.public), &[]);
    let ok = erad.apply_wait(&spec(&erad, "signed", &format!("{r}/signed/app:1")));
    assert_eq!(ok.code, 0, "{ok:?}\n{}", erad.log());
    assert_eq!(erad.get("signed")["artifact_digest"], signed.as_str());
    assert!(erad.log().contains("signature verified"), "{}", erad.log());
    let open = erad.apply_wait(&spec(&erad, "open", &format!("{r}/open/app:1")));
    assert_eq!(open.code, 0, "allow_unsigned takes an unsigned image: {open:?}");

    let wants = format!("requires a signature by key {}", a.public.display());
    for (name, image, digest, says) in [
        ("unsigned", format!("{r}/signed/unsigned:1"), unsigned.as_str(), "no cosign signature whose payload names"),
        ("wrongkey", format!("{r}/signed/wrongkey:1"), wrong.as_str(), "none of the 1 signature(s)"),
        ("replayed", format!("{r}/signed/replay:2"), replayed.as_str(), "no cosign signature whose payload names"),
        ("norule", format!("{r}/elsewhere/app:1"), "", "no trust rule matches"),
    ] {
        let refused = erad.apply_wait(&spec(&erad, name, &image));
        assert_eq!(refused.code, 1, "{name}: {refused:?}");
        let d = erad.get(name);
        assert_eq!(d["state"], "Failed", "{name}: {d}");
        let msg = d["message"].as_str().unwrap();
        assert!(msg.contains(says), "{name}: {msg}");
        if !digest.is_empty() {
            assert!(msg.contains(&wants) && msg.contains(digest), "{name}: {msg}");
            assert!(!blob(&erad, digest).exists(), "{name}: nothing of a refused image is stored");
        }
    }
}

#[test]
fn a_verified_pinned_image_redeploys_offline_and_a_changed_key_means_checking_again() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let registry = Registry::start();
    let digest = registry.push_image_signed("signed/app", "1", &[("app", "x")], Some(&a));
    let image = format!("{}/signed/app:1", registry.addr);
    let mut erad = Erad::start_with(&policy(&registry, &a.public), &[]);
    assert_eq!(erad.era(&["pull", &image]).code, 0);

    // The registry is gone: the signature was checked at pull, under this
    // very rule, so a deployment pinned to the digest needs nothing else.
    drop(registry);
    let pinned = format!("{image}@{digest}");
    assert_eq!(erad.apply_wait(&spec(&erad, "first", &pinned)).code, 0, "{}", erad.log());

    // The operator rotates the key: the old check no longer counts, and
    // with no registry to look again, erad refuses rather than trusts.
    let b = CosignKey::generate(keys.path(), "b");
    erad.terminate();
    let config = std::fs::read_to_string(&erad.config)
        .unwrap()
        .replace(&a.public.display().to_string(), &b.public.display().to_string());
    std::fs::write(&erad.config, config).unwrap();
    erad.spawn(&[]).unwrap();
    let again = erad.apply_wait(&spec(&erad, "second", &pinned));
    assert_eq!(again.code, 1, "{again:?}");
    let msg = erad.get("second")["message"].as_str().unwrap().to_string();
    assert!(msg.contains(&format!("key {}", b.public.display())), "{msg}");
}

#[test]
fn era_verify_checks_an_image_without_a_daemon() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let b = CosignKey::generate(keys.path(), "b");
    let registry = Registry::start();
    let digest = registry.push_image_signed("signed/app", "1", &[("app", "x")], Some(&a));
    let image = format!("{}/signed/app:1", registry.addr);
    let ok = era_tests::era(&["verify", &image, "--key", &a.public.display().to_string()]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains(&digest) && ok.stdout.contains("signed by: key"), "{ok:?}");
    let wrong = era_tests::era(&["verify", &image, "--key", &b.public.display().to_string()]);
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("none of the 1 signature(s)"), "{wrong:?}");
    let usage = era_tests::era(&["verify", &image]);
    assert_eq!(usage.code, 2, "{usage:?}");
    assert!(usage.stderr.contains("--key"), "{usage:?}");
}

#[test]
fn a_plugin_reference_under_a_key_rule_loads_only_when_signed() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let registry = Registry::start();
    let wasm = std::fs::read(era_tests::plugin::NOOP).unwrap();
    let config = |tag: &str| {
        format!(
            "[plugins.noop]\nreference = \"{r}/signed/noop:{tag}\"\ngrants = {{ log = true }}\n[[trust]]\nmatch = \"{r}/signed/**\"\nkeys = [\"{k}\"]\n",
            r = registry.addr,
            k = a.public.display()
        )
    };
    registry.push_wasm("signed/noop", "unsigned", &wasm);
    let msg = Erad::try_start_with(&config("unsigned"), &[]).err().expect("erad must refuse the unsigned plugin");
    assert!(msg.contains("plugin noop") && msg.contains("requires a signature by key"), "{msg}");

    let digest = registry.push_wasm("signed/noop", "signed", &wasm);
    registry.cosign_sign("signed/noop", &digest, &a);
    let erad = Erad::start_with(&config("signed"), &[]);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
}

#[test]
fn a_keyless_signature_is_checked_offline_against_the_operators_trusted_root() {
    let dir = tempfile::tempdir().unwrap();
    let sigstore = TestSigstore::new(dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let untrusted = TestSigstore::new(elsewhere.path());
    let (who, issuer) = ("release@era.test", "https://issuer.era.test");
    let cert = sigstore.issue(who, issuer);
    let registry = Registry::start();
    let r = &registry.addr;
    let signed = registry.push_image("keyless/app", "1", &[("app", "signed keyless")]);
    registry.cosign_sign_keyless("keyless/app", &signed, &sigstore, &cert);
    let other_ca = registry.push_image("keyless/rogue", "1", &[("app", "a certificate from another CA")]);
    registry.cosign_sign_keyless("keyless/rogue", &other_ca, &untrusted, &untrusted.issue(who, issuer));
    let other_issuer = registry.push_image("keyless/phished", "1", &[("app", "the same name from another issuer")]);
    registry.cosign_sign_keyless(
        "keyless/phished",
        &other_issuer,
        &sigstore,
        &sigstore.issue(who, "https://other-issuer.era.test"),
    );
    // A valid certificate and log entry, with a signature that is not the
    // one they vouch for.
    let forged = registry.push_image("keyless/forged", "1", &[("app", "a forged signature")]);
    registry.cosign_sign_keyless_with("keyless/forged", &forged, &sigstore, &cert, &|a| {
        let other = sigstore.issue(who, issuer);
        let signature = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(other.key.sign(b"something else").unwrap())
        };
        a["dev.cosignproject.cosign/signature"] = signature.into();
    });
    let config = format!(
        "{}\n[[trust]]\nmatch = \"{r}/keyless/**\"\nkeyless = [{{ identity = \"{who}\", issuer = \"{issuer}\" }}]\ntrusted_root = \"{}\"\n",
        era_tests::fixture_plugins(),
        sigstore.trusted_root.display()
    );
    let erad = Erad::start_with(&config, &[]);
    let ok = erad.apply_wait(&spec(&erad, "keyless", &format!("{r}/keyless/app:1")));
    assert_eq!(ok.code, 0, "{ok:?}\n{}", erad.log());
    assert_eq!(erad.get("keyless")["artifact_digest"], signed.as_str());
    for (name, repo, digest) in [
        ("rogue", "keyless/rogue", &other_ca),
        ("phished", "keyless/phished", &other_issuer),
        ("forged", "keyless/forged", &forged),
    ] {
        let refused = erad.apply_wait(&spec(&erad, name, &format!("{r}/{repo}:1")));
        assert_eq!(refused.code, 1, "{name}: {refused:?}");
        let msg = erad.get(name)["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&format!("keyless signer {who} (issuer {issuer})")) && msg.contains(digest.as_str()),
            "{name}: {msg}"
        );
        assert!(!blob(&erad, digest).exists(), "{name}: nothing of it is stored");
    }

    // The same check from the command line, with no daemon.
    let root = sigstore.trusted_root.display().to_string();
    let verify = |image: &str, id: &str| {
        era_tests::era(&[
            "verify",
            image,
            "--certificate-identity",
            id,
            "--certificate-oidc-issuer",
            issuer,
            "--trusted-root",
            &root,
        ])
    };
    let good = verify(&format!("{r}/keyless/app:1"), who);
    assert_eq!(good.code, 0, "{good:?}");
    assert!(good.stdout.contains(&format!("signed by: {who} (issuer {issuer}) over {signed}")), "{good:?}");
    assert_eq!(verify(&format!("{r}/keyless/app:1"), "someone-else@era.test").code, 1);
    assert_eq!(verify(&format!("{r}/keyless/rogue:1"), who).code, 1);
}

#[test]
fn era_verify_blob_checks_sigstore_bundles_offline_and_refuses_tampered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sigstore = TestSigstore::new(d);
    let elsewhere = tempfile::tempdir().unwrap();
    let untrusted = TestSigstore::new(elsewhere.path());
    let (who, issuer) = ("release@era.test", "https://issuer.era.test");
    let artifact = d.join("plugin.wasm");
    std::fs::write(&artifact, b"\0asm a release artifact").unwrap();
    let content = std::fs::read(&artifact).unwrap();
    let cert = sigstore.issue(who, issuer);
    let write = |name: &str, text: String| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let v3 = write("v3.sigstore.json", sigstore.bundle(&content, &cert, "0.3"));
    let v1 = write("v1.sigstore.json", sigstore.bundle(&content, &cert, "0.1"));
    let key = CosignKey::generate(d, "k");
    let signer = key.signer();
    let keyed = write("key.sigstore.json", sigstore.key_bundle(&content, &signer));
    let root = sigstore.trusted_root.display().to_string();
    let file = artifact.display().to_string();
    let keyless = |bundle: &str, id: &str, root: &str| {
        era_tests::era(&[
            "verify-blob",
            &file,
            "--bundle",
            bundle,
            "--certificate-identity",
            id,
            "--certificate-oidc-issuer",
            issuer,
            "--trusted-root",
            root,
        ])
    };
    for bundle in [&v3, &v1] {
        let ok = keyless(bundle, who, &root);
        assert_eq!(ok.code, 0, "{bundle}: {ok:?}");
        assert!(ok.stdout.contains(&format!("signed by: {who} (issuer {issuer})")), "{ok:?}");
        assert!(
            ok.stdout.contains("checked:   certificate chain, SCT, identity and issuer, transparency log"),
            "every keyless check ran: {ok:?}"
        );
    }
    let ok = era_tests::era(&[
        "verify-blob",
        &file,
        "--bundle",
        &keyed,
        "--key",
        &key.public.display().to_string(),
        "--trusted-root",
        &root,
    ]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("checked:   transparency log"), "{ok:?}");

    // By digest instead of the file, as sigstore's clients allow.
    let by_digest = |digest: &str| {
        era_tests::era(&[
            "verify-blob",
            digest,
            "--bundle",
            &v3,
            "--certificate-identity",
            who,
            "--certificate-oidc-issuer",
            issuer,
            "--trusted-root",
            &root,
        ])
    };
    let ok = by_digest(&format!("sha256:{}", era_tests::sha256(&content)));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("checked:   certificate chain, SCT, identity and issuer, transparency log"), "{ok:?}");
    let other = by_digest(&format!("sha256:{}", era_tests::sha256(b"another artifact")));
    assert_eq!(other.code, 1, "a digest the bundle does not sign: {other:?}");
    let short = by_digest("sha256:abc");
    assert!(short.code == 1 && short.stderr.contains("sha256: and 64 hex digits"), "{short:?}");

    // Each of these must fail, and say why.
    let wrong_id = keyless(&v3, "someone-else@era.test", &root);
    assert!(wrong_id.code == 1 && wrong_id.stderr.contains("identity"), "{wrong_id:?}");
    let other_root = untrusted.trusted_root.display().to_string();
    let foreign = keyless(&v3, who, &other_root);
    assert_eq!(foreign.code, 1, "a root that did not issue the certificate: {foreign:?}");
    let tamper = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&v3).unwrap()).unwrap();
        edit(&mut b);
        write(name, b.to_string())
    };
    let flip = |s: &str| {
        use base64::Engine;
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let n = bytes.len() / 2;
        bytes[n] ^= 1;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let cases = [
        tamper("sig.json", &|b| {
            let s = flip(b["messageSignature"]["signature"].as_str().unwrap());
            b["messageSignature"]["signature"] = s.into();
        }),
        tamper("set.json", &|b| {
            let e = &mut b["verificationMaterial"]["tlogEntries"][0];
            let s = flip(e["inclusionPromise"]["signedEntryTimestamp"].as_str().unwrap());
            e["inclusionPromise"]["signedEntryTimestamp"] = s.into();
        }),
        tamper("body.json", &|b| {
            let e = &mut b["verificationMaterial"]["tlogEntries"][0];
            let s = flip(e["canonicalizedBody"].as_str().unwrap());
            e["canonicalizedBody"] = s.into();
        }),
        tamper("time.json", &|b| {
            b["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1700000000".into();
        }),
    ];
    for bundle in &cases {
        let refused = keyless(bundle, who, &root);
        assert_eq!(refused.code, 1, "{bundle}: {refused:?}");
        assert!(refused.stderr.contains("rejected"), "{bundle}: {refused:?}");
    }
    std::fs::write(&artifact, b"\0asm another artifact").unwrap();
    let changed = keyless(&v3, who, &root);
    assert!(changed.code == 1 && changed.stderr.contains("rejected"), "the artifact changed: {changed:?}");
}

#[test]
fn a_deployment_can_require_its_own_signer_on_top_of_the_policy() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let b = CosignKey::generate(keys.path(), "b");
    let registry = Registry::start();
    let r = &registry.addr;
    let digest = registry.push_image_signed("open/app", "1", &[("app", "signed by a")], Some(&a));
    let erad = Erad::start_with(&policy(&registry, &a.public), &[]);
    // Keys named relative to the spec's directory.
    std::fs::copy(&a.public, erad.dir.path().join("a.pub")).unwrap();
    std::fs::copy(&b.public, erad.dir.path().join("b.pub")).unwrap();
    let with = |name: &str, verify: &str| {
        let yaml = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact:\n    image: \"{r}/open/app:1\"\n    verify: {verify}\n"
        );
        erad.spec(&format!("{name}.yaml"), &yaml)
    };
    // The policy takes the image unsigned; the deployment wants key b.
    let refused = erad.apply_wait(&with("wantsb", "{key: b.pub}"));
    assert_eq!(refused.code, 1, "{refused:?}");
    let msg = erad.get("wantsb")["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("trust rule \"spec.artifact.verify\" requires a signature by key") && msg.contains("b.pub"),
        "{msg}"
    );
    assert!(msg.contains(&digest), "{msg}");
    let ok = erad.apply_wait(&with("wantsa", "{key: a.pub}"));
    assert_eq!(ok.code, 0, "{ok:?}");

    // A file artifact with a sigstore bundle, keyless.
    let sigstore = TestSigstore::new(erad.dir.path());
    let content = b"a release file";
    std::fs::write(erad.dir.path().join("app.bin"), content).unwrap();
    let cert = sigstore.issue("release@era.test", "https://issuer.era.test");
    std::fs::write(erad.dir.path().join("app.bin.sigstore.json"), sigstore.bundle(content, &cert, "0.3")).unwrap();
    let file = |name: &str, subject: &str| {
        let yaml = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact:\n    file: app.bin\n    sha256: \"{}\"\n    verify:\n      bundle: app.bin.sigstore.json\n      identity: {{subject: \"{subject}\", issuer: \"https://issuer.era.test\"}}\n      trustedRoot: trusted_root.json\n",
            era_tests::sha256(content)
        );
        erad.spec(&format!("{name}.yaml"), &yaml)
    };
    let ok = erad.apply_wait(&file("bundled", "release@era.test"));
    assert_eq!(ok.code, 0, "{ok:?}\n{}", erad.log());
    let refused = erad.apply_wait(&file("otherid", "someone-else@era.test"));
    assert_eq!(refused.code, 1, "{refused:?}");
    let msg = erad.get("otherid")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("spec.artifact.verify") && msg.contains("identity"), "{msg}");

    // Shapes that cannot be checked are refused up front, naming the field.
    for (verify, field) in
        [("{}", "spec.artifact.verify"), ("{key: a.pub, bundle: x.json}", "spec.artifact.verify.bundle")]
    {
        let v = erad.era(&["validate", "-f", &with("shape", verify).display().to_string()]);
        assert_eq!(v.code, 2, "{verify}: {v:?}");
        assert!(v.stderr.contains(field), "{verify}: {v:?}");
    }
}
