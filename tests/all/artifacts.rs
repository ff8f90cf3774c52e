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
