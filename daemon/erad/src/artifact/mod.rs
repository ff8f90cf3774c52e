//! Fetching artifacts into a content-addressed store.
//!
//! Every artifact is streamed into a temp file under the store while its
//! sha256 is computed; only when the digest matches the one the spec pins is
//! it renamed to `blobs/sha256/<hex>`. A failed fetch leaves nothing behind,
//! and a blob in the store is always the content its name says.
//!
//! `file:` and `url:` are handled here (`file:` only from the operator's
//! [`roots::FileRoots`]); OCI sources (`image:`, `wasm:`,
//! `blob:`) in [`oci`], into the same store with the same guarantees.

pub mod gc;
pub mod oci;
pub mod roots;
pub mod snapshot;
pub mod targuard;
pub mod unpack;

use crate::spec::ArtifactSource;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("artifact {reference}: digest mismatch: the spec pins {expected} but the content is {actual}")]
    DigestMismatch { reference: String, expected: String, actual: String },
    #[error("artifact {reference}: cannot read {path}: {source}")]
    ReadFile { reference: String, path: PathBuf, source: std::io::Error },
    #[error("artifact {reference}: download failed: {message}")]
    Download { reference: String, message: String },
    #[error(
        "artifact {reference}: blob {digest} is longer than the {size} bytes its descriptor says; cut off and rejected"
    )]
    TooLong { reference: String, digest: String, size: u64 },
    #[error("artifact {reference} is larger than limits.max_artifact_bytes ({max} bytes); nothing was stored")]
    TooLarge { reference: String, max: u64 },
    #[error("artifact {reference}: blob {digest} ended after {got} of the {size} bytes its descriptor says")]
    TooShort { reference: String, digest: String, size: u64, got: u64 },
    #[error("artifact {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("artifact {reference}: no sha256 is pinned in the spec")]
    NotPinned { reference: String },
    #[error("content store {path}: {source}")]
    Store { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Untrusted(#[from] crate::trust::TrustError),
    #[error("artifact {reference}: spec.artifact.file: {source}")]
    FileRoot { reference: String, source: roots::FileRootError },
}

/// Marks a reused blob as just used, so GC's grace period covers it.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Where the bytes went: `(done, total if known)`.
pub type Progress<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// The verified artifact in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub digest: String,
    pub path: PathBuf,
    pub size: u64,
    /// An OCI artifact fetched by tag: the digest the registry resolved the
    /// tag to (an index's, for a multi-platform image); None when a digest
    /// was given and the registry was not asked.
    pub resolved: Option<String>,
}

/// The hex of a `sha256:` and 64 lowercase hex digits digest, or None: the
/// only digests the content store names files (and snapshots) by.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// Whether `d` is a digest the content store names files by ([`sha256_hex`]).
pub fn is_sha256_digest(d: &str) -> bool {
    sha256_hex(d).is_some()
}

/// The default of `[limits] max_artifact_bytes`: 4 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
    /// The largest `file:` or `url:` artifact stored.
    max_bytes: u64,
    http: reqwest::Client,
    oci: oci::OciFetcher,
    file_roots: roots::FileRoots,
    /// Shared by every fetch until what it fetched is recorded (as a
    /// revision's artifact or a pull); the GC runs only when it can hold it
    /// alone, so it never takes a blob a fetch found present and reuses.
    in_flight: std::sync::Arc<tokio::sync::RwLock<()>>,
    snapshots: snapshot::Snapshots,
}

/// Held while a fetch and the record of what it fetched are under way.
pub type FetchGuard = tokio::sync::OwnedRwLockReadGuard<()>;
/// Held while the GC runs.
pub type GcGuard = tokio::sync::OwnedRwLockWriteGuard<()>;

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore, FetchError> {
        for dir in [root.join("blobs/sha256"), root.join("tmp"), root.join("verified")] {
            std::fs::create_dir_all(&dir).map_err(|source| FetchError::Store { path: dir.clone(), source })?;
        }
        // Temp files of a fetch that a crash interrupted are garbage.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("erad/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Store { path: root.to_path_buf(), source: std::io::Error::other(e) })?;
        let oci = oci::OciFetcher::new(Default::default(), Default::default());
        let snapshots = snapshot::Snapshots::open(&root.join("snapshots"))
            .map_err(|e| FetchError::Store { path: root.join("snapshots"), source: std::io::Error::other(e) })?;
        Ok(ContentStore {
            snapshots,
            root: root.to_path_buf(),
            max_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            http,
            oci,
            file_roots: roots::FileRoots::default(),
            in_flight: Default::default(),
        })
    }

    /// Taken before a fetch and dropped once its result is recorded.
    pub async fn fetch_guard(&self) -> FetchGuard {
        self.in_flight.clone().read_owned().await
    }

    /// The GC's turn: None while any fetch is in flight (the GC skips this
    /// run; the next delete or the timer runs it again).
    pub fn try_gc_guard(&self) -> Option<GcGuard> {
        self.in_flight.clone().try_write_owned().ok()
    }

    /// How to reach registries that need credentials or plain HTTP, and the
    /// signature policy OCI artifacts must pass. Without one, every OCI
    /// artifact is refused.
    pub fn with_registries(
        mut self,
        registries: std::collections::BTreeMap<String, oci::RegistryAccess>,
        trust: std::sync::Arc<crate::trust::TrustPolicy>,
    ) -> Self {
        self.oci = oci::OciFetcher::new(registries, trust);
        self
    }

    /// The largest `file:` or `url:` artifact to store (a file that grows, or
    /// a body without a length, is cut off there).
    pub fn with_max_artifact_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// The directories `file:` artifacts may be read from. Without any,
    /// every `file:` artifact is refused.
    pub fn with_file_roots(mut self, file_roots: roots::FileRoots) -> Self {
        self.file_roots = file_roots;
        self
    }

    /// Checks, by name and without reading it, that a `file:` source may be
    /// read (what Validating asks); other sources pass.
    pub fn check_source(&self, source: &ArtifactSource, base_dir: &Path) -> Result<(), FetchError> {
        match source {
            ArtifactSource::File(f) => self
                .file_roots
                .locate(&base_dir.join(f))
                .map(|_| ())
                .map_err(|e| FetchError::FileRoot { reference: f.clone(), source: e }),
            _ => Ok(()),
        }
    }

    /// [`ContentStore::check_source`], and for a `file:` artifact not in the
    /// store yet (by `expected`), that it opens (beneath its root, without
    /// following links): what a plan checks so that an apply of it does not
    /// fail at Fetching for want of the file. Nothing is read.
    pub fn check_available(
        &self,
        source: &ArtifactSource,
        base_dir: &Path,
        expected: Option<&str>,
    ) -> Result<(), FetchError> {
        self.check_source(source, base_dir)?;
        match source {
            ArtifactSource::File(f) if !expected.is_some_and(|d| self.contains(d)) => self
                .file_roots
                .open(&base_dir.join(f))
                .map(drop)
                .map_err(|e| FetchError::FileRoot { reference: f.clone(), source: e }),
            _ => Ok(()),
        }
    }

    /// Where verified signatures of `digest` are recorded, one file per
    /// trust rule fingerprint that accepted it.
    fn verified_dir(&self, digest: &str) -> PathBuf {
        self.root.join("verified").join(digest.trim_start_matches("sha256:"))
    }

    /// Whether `digest`'s signatures were verified under the rule with this
    /// fingerprint: a pinned artifact then needs no registry to be used again.
    pub fn is_verified(&self, digest: &str, fingerprint: &str) -> bool {
        self.verified_dir(digest).join(fingerprint).is_file()
    }

    /// Whether `digest`, fetched for OCI `reference`, passes the trust
    /// policy as it is now: a rule admits the reference and, unless it
    /// allows unsigned artifacts, the digest's signatures passed that very
    /// rule (as recorded when they were checked). The error says which.
    pub fn trusted(&self, reference: &str, digest: &str) -> Result<(), String> {
        let rule = self.oci.trust_rule(reference)?;
        if rule.allow_unsigned || self.is_verified(digest, &rule.fingerprint) {
            return Ok(());
        }
        Err(format!("{digest} never passed trust rule {:?} as it is now ({})", rule.name, rule.wants()))
    }

    /// Records that `digest`'s signatures passed the rule with `fingerprint`.
    pub fn mark_verified(&self, digest: &str, fingerprint: &str, signer: &str) -> Result<(), FetchError> {
        let dir = self.verified_dir(digest);
        let err = |source| FetchError::Store { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(err)?;
        std::fs::write(dir.join(fingerprint), format!("{signer}\n")).map_err(err)
    }

    /// The unpacked images, one per manifest.
    pub fn snapshots(&self) -> &snapshot::Snapshots {
        &self.snapshots
    }

    /// The directory of sha256 blobs.
    /// A stored blob's bytes (a manifest or an index already verified when
    /// it came in).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, FetchError> {
        let path = self.blob_path(digest);
        tokio::fs::read(&path).await.map_err(|source| FetchError::Store { path, source })
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Where a blob with `digest` (`sha256:<hex>`) lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    /// Removes a blob; one already gone is fine.
    pub fn remove(&self, digest: &str) -> Result<(), FetchError> {
        let _ = std::fs::remove_dir_all(self.verified_dir(digest));
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FetchError::Store { path, source: e }),
            _ => Ok(()),
        }
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Whether the stored blob `index` is an OCI index (or Docker manifest
    /// list) that lists `manifest`: a revision fetched by a tag that named
    /// the index runs one of its manifests.
    pub async fn index_lists(&self, index: &str, manifest: &str) -> bool {
        if !is_sha256_digest(index) || !self.contains(index) {
            return false;
        }
        let Ok(bytes) = self.read_blob(index).await else { return false };
        #[derive(serde::Deserialize)]
        struct Listed {
            digest: String,
        }
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Listed>,
        }
        serde_json::from_slice::<Index>(&bytes).is_ok_and(|i| i.manifests.iter().any(|m| m.digest == manifest))
    }

    /// What an OCI source's tag points to now in its registry (see
    /// [`oci::OciFetcher::resolve`]); None for a file or URL.
    pub async fn resolve(&self, source: &ArtifactSource) -> Result<Option<String>, FetchError> {
        match source {
            ArtifactSource::Image(r) | ArtifactSource::Wasm(r) | ArtifactSource::Blob(r) => {
                self.oci.resolve(r).await.map(Some)
            }
            ArtifactSource::File(_) | ArtifactSource::Url(_) => Ok(None),
        }
    }

    /// Fetches `source` and verifies it against `expected` (`sha256:<hex>`).
    /// Relative file paths are resolved from `base_dir`.
    pub async fn fetch(
        &self,
        source: &ArtifactSource,
        expected: Option<&str>,
        base_dir: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, FetchError> {
        self.fetch_requiring(source, expected, base_dir, None, false, progress).await
    }

    /// Like [`ContentStore::fetch`]; an OCI artifact's signatures must also
    /// satisfy `also` (a deployment's own requirement).
    pub async fn fetch_requiring(
        &self,
        source: &ArtifactSource,
        expected: Option<&str>,
        base_dir: &Path,
        also: Option<&crate::trust::TrustRule>,
        offline: bool,
        progress: Progress<'_>,
    ) -> Result<Fetched, FetchError> {
        let reference = source.reference().to_string();
        let kind = match source {
            ArtifactSource::Image(_) => Some(oci::OciKind::Image),
            ArtifactSource::Wasm(_) => Some(oci::OciKind::Wasm),
            ArtifactSource::Blob(_) => Some(oci::OciKind::Blob),
            _ => None,
        };
        if let Some(kind) = kind {
            let want = oci::PullWants { pinned: expected, also, offline };
            let pulled = self.oci.pull(kind, &reference, want, self, progress).await?;
            // The artifact's whole size: manifest, config and layers.
            let manifest = tokio::fs::metadata(&pulled.manifest).await.map(|m| m.len()).unwrap_or(0);
            let size = manifest
                + pulled.config.as_ref().map_or(0, |c| c.size)
                + pulled.layers.iter().map(|(_, f)| f.size).sum::<u64>();
            return Ok(Fetched { digest: pulled.digest, path: pulled.local_path, size, resolved: pulled.resolved });
        }
        // Refused before anything else, also when the blob is stored already.
        self.check_source(source, base_dir)?;
        let expected = expected.ok_or_else(|| FetchError::NotPinned { reference: reference.clone() })?;
        let path = self.blob_path(expected);
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            // Verified when it was written; content addressing makes it reusable.
            touch(&path);
            progress(meta.len(), Some(meta.len()));
            return Ok(Fetched { digest: expected.to_string(), path, size: meta.len(), resolved: None });
        }
        // Unique per fetch: two deployments may fetch the same blob at once;
        // each writes its own temp file and the renames agree on the content.
        let tmp = self.tmp_path(expected);
        let result = match source {
            ArtifactSource::File(f) => {
                let file_path = base_dir.join(f);
                self.copy_file(&reference, &file_path, &tmp, progress).await
            }
            _ => self.download(&reference, &tmp, progress).await,
        };
        // On any error the temp file goes with `tmp`.
        let (actual, size) = result?;
        if actual != expected {
            return Err(FetchError::DigestMismatch { reference, expected: expected.to_string(), actual });
        }
        tokio::fs::rename(&tmp, &path).await.map_err(|source| FetchError::Store { path: path.clone(), source })?;
        Ok(Fetched { digest: actual, path, size, resolved: None })
    }

    async fn copy_file(
        &self,
        reference: &str,
        from: &Path,
        tmp: &Path,
        progress: Progress<'_>,
    ) -> Result<(String, u64), FetchError> {
        let read_err =
            |source| FetchError::ReadFile { reference: reference.to_string(), path: from.to_path_buf(), source };
        let roots = self.file_roots.clone();
        let opened = {
            let from = from.to_path_buf();
            tokio::task::spawn_blocking(move || roots.open(&from)).await.map_err(|e| read_err(e.into()))?
        };
        let opened = opened.map_err(|e| FetchError::FileRoot { reference: reference.to_string(), source: e })?;
        let mut input = tokio::fs::File::from_std(opened);
        let total = input.metadata().await.map_err(read_err)?.len();
        let too_large = || FetchError::TooLarge { reference: reference.to_string(), max: self.max_bytes };
        if total > self.max_bytes {
            return Err(too_large());
        }
        let mut out = HashedWriter::create(tmp).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut input, &mut buf).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            if out.done + n as u64 > self.max_bytes {
                return Err(too_large());
            }
            out.write(&buf[..n]).await?;
            progress(out.done, Some(total));
        }
        out.finish().await
    }

    async fn download(&self, url: &str, tmp: &Path, progress: Progress<'_>) -> Result<(String, u64), FetchError> {
        let dl_err = |message: String| FetchError::Download { reference: url.to_string(), message };
        let resp = self.http.get(url).send().await.map_err(|e| dl_err(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(dl_err(format!("the server answered {}", resp.status())));
        }
        let total = resp.content_length();
        let too_large = || FetchError::TooLarge { reference: url.to_string(), max: self.max_bytes };
        if total.is_some_and(|t| t > self.max_bytes) {
            return Err(too_large());
        }
        let mut out = HashedWriter::create(tmp).await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| dl_err(e.without_url().to_string()))?;
            if out.done + chunk.len() as u64 > self.max_bytes {
                return Err(too_large());
            }
            out.write(&chunk).await?;
            progress(out.done, total);
        }
        if let Some(total) = total
            && total != out.done
        {
            return Err(dl_err(format!("the body ended after {} of {total} bytes", out.done)));
        }
        out.finish().await
    }

    /// A fresh temp file name in the store.
    fn tmp_path(&self, digest: &str) -> TmpFile {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TmpFile(self.root.join("tmp").join(format!(
            "{}.{}.{n}",
            digest.trim_start_matches("sha256:"),
            std::process::id()
        )))
    }

    /// Streams `body` into the store as the blob `digest` of exactly `size`
    /// bytes. The size is checked first: a body longer than `size` is cut off
    /// at the first byte too many. Nothing is left behind on failure.
    pub async fn ingest<S, E>(
        &self,
        what: &str,
        digest: &str,
        size: u64,
        mut body: S,
        progress: Progress<'_>,
    ) -> Result<Fetched, FetchError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.blob_path(digest);
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() == size) {
            touch(&path);
            progress(size, Some(size));
            return Ok(Fetched { digest: digest.to_string(), path, size, resolved: None });
        }
        let tmp = self.tmp_path(digest);
        let result = async {
            let mut out = HashedWriter::create(&tmp).await?;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| FetchError::Download { reference: what.to_string(), message: e.to_string() })?;
                if out.done + chunk.len() as u64 > size {
                    return Err(FetchError::TooLong { reference: what.to_string(), digest: digest.to_string(), size });
                }
                out.write(&chunk).await?;
                progress(out.done, Some(size));
            }
            if out.done != size {
                return Err(FetchError::TooShort {
                    reference: what.to_string(),
                    digest: digest.to_string(),
                    size,
                    got: out.done,
                });
            }
            let (actual, _) = out.finish().await?;
            if actual != digest {
                return Err(FetchError::DigestMismatch {
                    reference: what.to_string(),
                    expected: digest.to_string(),
                    actual,
                });
            }
            Ok(())
        }
        .await;
        result?;
        tokio::fs::rename(&tmp, &path).await.map_err(|source| FetchError::Store { path: path.clone(), source })?;
        Ok(Fetched { digest: digest.to_string(), path, size, resolved: None })
    }

    /// Stores bytes already in memory (and already verified) under `digest`.
    pub async fn put(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, FetchError> {
        let path = self.blob_path(digest);
        if !path.is_file() {
            let tmp = self.tmp_path(digest);
            let mut out = HashedWriter::create(&tmp).await?;
            out.write(bytes).await?;
            out.finish().await?;
            tokio::fs::rename(&tmp, &path).await.map_err(|source| FetchError::Store { path: path.clone(), source })?;
        }
        Ok(path)
    }
}

/// A temp file's name, removed when dropped: a fetch that fails, or that a
/// command cancels mid-download (the future dropped), leaves nothing in
/// `tmp/`. After the rename into `blobs/` the removal finds nothing.
struct TmpFile(PathBuf);

impl std::ops::Deref for TmpFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A temp file in the store that hashes what is written to it: the one
/// place every fetch (file, url, OCI blob) writes, counts and syncs bytes.
struct HashedWriter {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: Sha256,
    /// Bytes written so far.
    done: u64,
}

impl HashedWriter {
    async fn create(path: &Path) -> Result<HashedWriter, FetchError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|source| FetchError::Store { path: path.to_path_buf(), source })?;
        Ok(HashedWriter { file, path: path.to_path_buf(), hasher: Sha256::new(), done: 0 })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(|source| FetchError::Store { path: self.path.clone(), source })?;
        self.done += chunk.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs; returns (`sha256:<hex>`, bytes written).
    async fn finish(mut self) -> Result<(String, u64), FetchError> {
        let err = |source| FetchError::Store { path: self.path.clone(), source };
        self.file.flush().await.map_err(err)?;
        self.file.sync_all().await.map_err(err)?;
        Ok((format!("sha256:{}", hex::encode(self.hasher.finalize())), self.done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// A store under `dir/cas` that reads `file:` artifacts from `dir`.
    fn store_with_root(dir: &Path) -> ContentStore {
        ContentStore::open(&dir.join("cas")).unwrap().with_file_roots(roots::FileRoots::new(&[dir.to_path_buf()]))
    }

    #[tokio::test]
    async fn the_gc_waits_its_turn_while_a_fetch_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let (a, b) = (store.fetch_guard().await, store.clone().fetch_guard().await);
        assert!(store.try_gc_guard().is_none(), "two fetches in flight");
        drop(a);
        assert!(store.try_gc_guard().is_none(), "one fetch in flight");
        drop(b);
        let gc = store.try_gc_guard().expect("no fetch in flight");
        drop(gc);
        assert!(store.try_gc_guard().is_some());
    }

    #[tokio::test]
    async fn files_outside_the_roots_or_linked_out_are_neither_read_nor_hashed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"root only").unwrap();
        let leaked = sha(b"root only");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link.bin")).unwrap();
        let store = store_with_root(dir.path());
        let wrong = sha(b"a guess");
        let secret = outside.path().join("secret").display().to_string();
        let climbing = format!("../../../../../../../..{secret}");
        for (file, says) in [
            (secret.as_str(), "is not beneath any directory of artifacts.file_roots"),
            (climbing.as_str(), "is not beneath any directory of artifacts.file_roots"),
            ("link.bin", "through a symlink"),
        ] {
            let source = ArtifactSource::File(file.to_string());
            let err = store.fetch(&source, Some(&wrong), dir.path(), &|_, _| {}).await.unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(says) && msg.contains("spec.artifact.file"), "{file}: {msg}");
            assert!(!msg.contains(&leaked), "{file}: the content outside was hashed: {msg}");
        }
        // No roots: no file: artifacts at all, named by the config key.
        let off = ContentStore::open(&dir.path().join("cas2")).unwrap();
        std::fs::write(dir.path().join("app.bin"), b"x").unwrap();
        let err = off.fetch(&ArtifactSource::File("app.bin".into()), Some(&sha(b"x")), dir.path(), &|_, _| {}).await;
        assert!(err.unwrap_err().to_string().contains("file: artifacts are off, as artifacts.file_roots"));
        assert!(off.check_source(&ArtifactSource::File("app.bin".into()), dir.path()).is_err());
    }

    #[tokio::test]
    async fn a_file_with_the_pinned_digest_lands_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.bin"), b"hello era").unwrap();
        let store = store_with_root(dir.path());
        let want = sha(b"hello era");
        let got =
            store.fetch(&ArtifactSource::File("app.bin".into()), Some(&want), dir.path(), &|_, _| {}).await.unwrap();
        assert_eq!(got.digest, want);
        assert_eq!(std::fs::read(&got.path).unwrap(), b"hello era");
        assert!(store.contains(&want));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fetches_of_the_same_artifact_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.bin"), vec![7u8; 1 << 20]).unwrap();
        let store = store_with_root(dir.path());
        let want = sha(&vec![7u8; 1 << 20]);
        let fetches: Vec<_> = (0..16)
            .map(|_| {
                let (store, want, base) = (store.clone(), want.clone(), dir.path().to_path_buf());
                tokio::spawn(async move {
                    store.fetch(&ArtifactSource::File("app.bin".into()), Some(&want), &base, &|_, _| {}).await
                })
            })
            .collect();
        for f in fetches {
            assert_eq!(f.await.unwrap().unwrap().digest, want);
        }
        assert_eq!(std::fs::read_dir(dir.path().join("cas/tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_wrong_digest_names_both_digests_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.bin"), b"tampered").unwrap();
        let store = store_with_root(dir.path());
        let want = sha(b"original");
        let err = store
            .fetch(&ArtifactSource::File("app.bin".into()), Some(&want), dir.path(), &|_, _| {})
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&want) && msg.contains(&sha(b"tampered")), "{msg}");
        assert_eq!(std::fs::read_dir(dir.path().join("cas/blobs/sha256")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("cas/tmp")).unwrap().count(), 0);
    }
}
