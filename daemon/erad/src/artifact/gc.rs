//! Garbage collection of the content store.
//!
//! Roots are the artifact digests of every revision of every deployment that
//! is not Deleted (so every rollback target keeps its content), every pulled
//! artifact (`era pull`, plugins), and their closure: a manifest keeps its
//! config and layers, an index its manifests. Everything else goes, once it
//! is older than the grace period: a fetch that reuses a blob touches it, so
//! a deployment between fetching and recording its digest is never robbed.

use super::{ContentStore, FetchError};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Blobs younger than this are never collected.
pub const GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(serde::Deserialize)]
struct Refs {
    #[serde(default)]
    config: Option<Ref>,
    #[serde(default)]
    layers: Vec<Ref>,
    #[serde(default)]
    manifests: Vec<Ref>,
}

#[derive(serde::Deserialize)]
struct Ref {
    digest: String,
}

/// The roots and everything they reference.
pub fn closure(store: &ContentStore, roots: impl IntoIterator<Item = String>) -> HashSet<String> {
    let mut keep = HashSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(d) = todo.pop() {
        // A document's references are the image's (or its registry's) to
        // choose: only a digest names a blob, never a path.
        if !super::is_sha256_digest(&d) || !keep.insert(d.clone()) {
            continue;
        }
        // Only small JSON documents in the store's own files can be
        // manifests; don't read layers (a size check first), links or
        // anything but a regular file.
        let path = store.blob_path(&d);
        if std::fs::symlink_metadata(&path).map(|m| m.len() > super::oci::MANIFEST_LIMIT).unwrap_or(true) {
            continue;
        }
        let read = crate::beneath::read_capped(
            &store.blobs_dir(),
            Path::new(super::sha256_hex(&d).unwrap_or_default()),
            super::oci::MANIFEST_LIMIT,
        );
        if let Ok(refs) =
            read.map_err(|_| ()).and_then(|b| serde_json::from_slice::<Refs>(&b.unwrap_or_default()).map_err(|_| ()))
        {
            todo.extend(refs.config.into_iter().chain(refs.layers).chain(refs.manifests).map(|r| r.digest));
        }
    }
    keep
}

/// Removes every blob outside `keep` that is older than `grace`.
pub fn collect(store: &ContentStore, keep: &HashSet<String>, grace: Duration) -> Result<Collected, FetchError> {
    let dir = store.blobs_dir();
    let mut done = Collected::default();
    let entries = std::fs::read_dir(&dir).map_err(|source| FetchError::Store { path: dir.clone(), source })?;
    let now = SystemTime::now();
    for e in entries.flatten() {
        let digest = format!("sha256:{}", e.file_name().to_string_lossy());
        if keep.contains(&digest) {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        if age < grace {
            continue;
        }
        store.remove(&digest)?;
        done.blobs += 1;
        done.bytes += meta.len();
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &ContentStore, bytes: &[u8]) -> String {
        let d = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)));
        std::fs::write(store.blob_path(&d), bytes).unwrap();
        d
    }

    #[test]
    fn a_manifest_keeps_its_config_and_layers_and_the_rest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let (layer, config, stray) = (put(&store, b"layer"), put(&store, b"{}"), put(&store, b"stray"));
        let manifest = put(
            &store,
            format!(r#"{{"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#).as_bytes(),
        );
        let index = put(&store, format!(r#"{{"manifests":[{{"digest":"{manifest}"}}]}}"#).as_bytes());
        let keep = closure(&store, [index.clone()]);
        assert_eq!(keep, HashSet::from([index.clone(), manifest.clone(), config.clone(), layer.clone()]));
        assert_eq!(
            collect(&store, &keep, GRACE).unwrap(),
            Collected::default(),
            "the stray blob is still in its grace period"
        );
        let done = collect(&store, &keep, Duration::ZERO).unwrap();
        assert_eq!(done, Collected { blobs: 1, bytes: 5 });
        assert!(!store.contains(&stray) && store.contains(&layer) && store.contains(&index));
    }
}
