//! `url:` artifacts over real HTTP, verified before anything is installed.

use era_tests::{Erad, serve_http, sha256};

fn url_spec(erad: &Erad, name: &str, url: &str, sha: &str) -> std::path::PathBuf {
    erad.spec(
        &format!("{name}.yaml"),
        &format!("apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: noop\n  artifact: {{url: \"{url}\", sha256: \"{sha}\"}}\n"),
    )
}

#[test]
fn a_url_artifact_is_downloaded_verified_and_deployed() {
    let erad = Erad::start();
    let body = vec![42u8; 3 << 20];
    let base = serve_http(vec![("/app.bin", body.clone())]);
    let a = erad.apply_wait(&url_spec(&erad, "web", &format!("{base}/app.bin"), &sha256(&body)));
    assert_eq!(a.code, 0, "{a:?}");
    assert!(
        a.stderr.contains(&format!("fetching {base}/app.bin: {} / {} bytes", body.len(), body.len())),
        "progress is shown: {a:?}"
    );
    let d = erad.get("web");
    assert_eq!(d["artifact_digest"], format!("sha256:{}", sha256(&body)));
    let blob = erad.data_dir().join("content/blobs/sha256").join(sha256(&body));
    assert_eq!(std::fs::read(blob).unwrap(), body);
}

#[test]
fn file_and_url_artifacts_over_the_size_limit_fail_fetching_and_store_nothing() {
    let erad =
        Erad::start_with(&format!("{}\n[limits]\nmax_artifact_bytes = 1000\n", era_tests::fixture_plugins()), &[]);
    let body = vec![7u8; 2000];
    let base = serve_http(vec![("/big.bin", body.clone())]);
    let url = url_spec(&erad, "big-url", &format!("{base}/big.bin"), &sha256(&body));
    let file = erad.deployment("big-file", "noop", &"x".repeat(2000), "");
    for (name, spec) in [("big-url", url), ("big-file", file)] {
        assert_eq!(erad.apply_wait(&spec).code, 1, "{name}");
        let d = erad.get(name);
        assert_eq!(d["state"], "Failed", "{d}");
        assert!(
            d["message"].as_str().unwrap().contains("is larger than limits.max_artifact_bytes (1000 bytes)"),
            "{d}"
        );
    }
    assert!(era_tests::files_under(&erad.data_dir().join("content/blobs/sha256")).is_empty());
    assert!(era_tests::files_under(&erad.data_dir().join("content/tmp")).is_empty());
    // Under the limit, fine.
    assert_eq!(erad.apply_wait(&erad.deployment("small", "noop", "ok", "")).code, 0);
}

#[test]
fn a_url_artifact_with_the_wrong_digest_or_a_404_fails_fetching() {
    let erad = Erad::start();
    let base = serve_http(vec![("/app.bin", b"served".to_vec())]);
    let pinned = sha256(b"expected");
    assert_eq!(erad.apply_wait(&url_spec(&erad, "tampered", &format!("{base}/app.bin"), &pinned)).code, 1);
    let d = erad.get("tampered");
    assert_eq!(d["state"], "Failed");
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains(&pinned) && msg.contains(&sha256(b"served")), "{msg}");
    assert_eq!(erad.apply_wait(&url_spec(&erad, "missing", &format!("{base}/nope.bin"), &pinned)).code, 1);
    let msg = erad.get("missing")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("download failed: the server answered 404 Not Found"), "{msg}");
    assert_eq!(era_tests::files_under(&erad.data_dir().join("content/blobs")), vec!["sha256".to_string()]);
}
