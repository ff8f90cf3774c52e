//! Supply-chain benchmarks, each against a baseline run in the same process
//! on the same machine:
//!
//! 1. pull + verify of a ~200 MiB, 4-layer image from a local registry into
//!    erad's content store vs `skopeo copy` of the same image to an OCI layout;
//! 2. sha256 throughput of the content store (file ingest) vs `sha256sum`.
//!
//! Run: `cargo bench -p era-tests --bench supply` (add `-- --quick` for a
//! 40 MiB image).

#![allow(clippy::unwrap_used)]

use era_tests::Registry;
use erad::artifact::ContentStore;
use erad::spec::ArtifactSource;
use std::time::{Duration, Instant};

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
    let rounds = 3;
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
        let store = ContentStore::open(&dir.path().join("content")).unwrap();
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
        let store = ContentStore::open(store_dir.path()).unwrap();
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
}
