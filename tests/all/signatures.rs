//! Signatures and the trust policy, against a real registry. Images are
//! signed the way `cosign sign --key` does it (a simple-signing payload in
//! the `sha256-<hex>.sig` tag), by the sigstore crate's signer.
//! Debian's docker-registry has no OCI referrers API, so every lookup here
//! also exercises the fallback to that tag.

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
fn an_unsigned_plugin_reference_under_a_key_rule_stops_erad_from_starting() {
    let keys = tempfile::tempdir().unwrap();
    let a = CosignKey::generate(keys.path(), "a");
    let registry = Registry::start();
    let wasm = std::fs::read(era_tests::plugin::NOOP).unwrap();
    registry.push_wasm("signed/noop", "0.1.0", &wasm);
    let config = format!(
        "[plugins.noop]\nreference = \"{r}/signed/noop:0.1.0\"\ngrants = [\"log\"]\n[[trust]]\nmatch = \"{r}/signed/**\"\nkeys = [\"{k}\"]\n",
        r = registry.addr,
        k = a.public.display()
    );
    let msg = Erad::try_start_with(&config, &[]).err().expect("erad must refuse the unsigned plugin");
    assert!(msg.contains("plugin noop") && msg.contains("requires a signature by key"), "{msg}");
}
