//! Validating, Fetching and Preparing: the steps that only read, download and
//! write beneath the revision's own work dir.

use super::calls::retry;
use super::steps::ports_of;
use super::{PROGRESS_STEP, StepError, Supervisor, Work, plugin_for, workload_of};
use crate::artifact::FetchGuard;
use crate::artifact::oci::image_parts;
use crate::artifact::unpack::{UnpackPolicy, unpack_layers_until};
use crate::lifecycle::WatchEvent;
use crate::plugin::CallContext;
use crate::prepare::Scratch;
use crate::prepare::rootfs::{self, RootfsMode};
use crate::spec::{ArtifactSource, PullPolicy};
use crate::store::{FetchedArtifact, RevisionRecord};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

impl Supervisor {
    pub(super) async fn validate(&self, revision: u64) -> Work<()> {
        let rev = self.revision(revision).await?;
        let plugin = plugin_for(&self.shared, &rev.runtime)?;
        self.shared
            .content
            .check_source(&rev.spec.artifact_source(), Path::new(&rev.source_dir))
            .map_err(StepError::from)?;
        let ports = ports_of(&rev.spec);
        self.db(move |s, n| s.claim_ports(n, &ports)).await.map_err(StepError::from)?;
        let scratch = Scratch::new(&self.shared.layout.scratch()).map_err(|e| format!("scratch dir: {e}"))?;
        let workload = workload_of(
            &self.shared.layout,
            &self.name,
            &rev.spec,
            revision,
            None,
            &scratch.path,
            Path::new(&rev.source_dir),
        );
        let ctx = CallContext { deployment: &self.name, work_dir: &scratch.path, revision: None };
        retry(|| plugin.validate(&ctx, &workload)).await.map_err(StepError::from)
    }

    /// Fetches and verifies the revision's artifact and returns what to
    /// record, with the guard that keeps the GC away until it is recorded.
    pub(super) async fn fetch(&self, revision: u64) -> Work<(FetchedArtifact, FetchGuard)> {
        let rev = self.revision(revision).await?;
        let source = rev.spec.artifact_source();
        let events = self.shared.events.clone();
        let (name, what) = (self.name.clone(), source.reference().to_string());
        let last = AtomicU64::new(0);
        let progress = move |done: u64, total: Option<u64>| {
            let total = total.unwrap_or(0);
            let prev = last.load(Ordering::Relaxed);
            if done == total || done >= prev + PROGRESS_STEP || prev == 0 {
                last.store(done.max(1), Ordering::Relaxed);
                let _ = events.send(WatchEvent::Progress {
                    deployment: name.clone(),
                    revision,
                    what: what.clone(),
                    done,
                    total,
                });
            }
        };
        let base = Path::new(&rev.source_dir);
        let verify = rev.spec.spec.artifact.verify.as_ref();
        // The deployment's own signer: for an OCI artifact, checked with the
        // policy's rule before any blob; for a file, its bundle after.
        let bundle = verify.and_then(|v| crate::trust::spec_bundle(v, base));
        let also = match verify {
            Some(v) if bundle.is_none() => Some(crate::trust::spec_rule(v, base).map_err(StepError::from)?),
            _ => None,
        };
        // Until the digest is recorded, the GC waits.
        let fetching = self.shared.content.fetch_guard().await;
        // Once resolved, the revision's digest is what it is fetched by: a
        // tag that moves later never changes a deployed revision.
        let policy = rev.spec.pull_policy();
        let pinned = match rev.artifact_digest.clone().or(rev.spec.pinned_digest()) {
            Some(d) => Some(d),
            None => self.digest_as_pulled(policy, &source).await?,
        };
        // Never: nothing from the registry, whatever is missing.
        let offline = policy == PullPolicy::Never;
        let fetched = self
            .shared
            .content
            .fetch_requiring(&source, pinned.as_deref(), base, also.as_ref(), offline, &progress)
            .await
            .map_err(StepError::from)?;
        if let Some((bundle, signer, root)) = bundle {
            let artifact = fetched.path.clone();
            let checked = tokio::task::spawn_blocking(move || {
                crate::trust::verify_blob(&artifact, &bundle, &signer, root.as_deref())
            })
            .await
            .map_err(StepError::from)?
            .map_err(|e| format!("spec.artifact.verify: {e}"))?;
            tracing::info!(artifact = %source.reference(), signer = %checked.signer, checks = %checked.checks, "bundle verified");
        }
        let listed = matches!(source, ArtifactSource::Image(_) | ArtifactSource::Wasm(_) | ArtifactSource::Blob(_))
            .then(|| (source.reference().to_string(), source.kind().to_string(), fetched.size));
        let record = FetchedArtifact {
            revision,
            digest: fetched.digest,
            path: fetched.path.display().to_string(),
            listed,
            resolved: fetched.resolved,
        };
        Ok((record, fetching))
    }

    /// Under `IfNotPresent` and `Never`, the digest the registry last
    /// resolved the tag to on this host (a fetch that asked it, or `era
    /// pull`), if its manifest is still in the content store: the registry
    /// is not asked (and need not be reachable). The trust policy still
    /// applies to that digest.
    async fn digest_as_pulled(&self, policy: PullPolicy, source: &ArtifactSource) -> Work<Option<String>> {
        if policy == PullPolicy::Always {
            return Ok(None);
        }
        if let Ok(r) = source.reference().parse::<oci_client::Reference>()
            && let Some(d) = r.digest()
        {
            return Ok(Some(d.to_string()));
        }
        let (reference, kind) = (source.reference().to_string(), source.kind());
        let Some(digest) = self.db(move |s, _| s.resolved_tag(&reference, kind)).await.map_err(StepError::from)? else {
            return Ok(None);
        };
        if !self.shared.content.contains(&digest) {
            return Ok(None);
        }
        tracing::debug!(artifact = %source.reference(), %digest, %policy, "the tag as pulled before");
        Ok(Some(digest))
    }

    /// [`Supervisor::fetch`], recorded at once (within a step that commits
    /// later, after other side effects).
    pub(super) async fn fetch_and_record(&self, revision: u64) -> Work<String> {
        let (fetched, _fetching) = self.fetch(revision).await?;
        let digest = fetched.digest.clone();
        self.db(move |s, n| s.record_fetched(n, &fetched)).await.map_err(StepError::from)?;
        Ok(digest)
    }

    pub(super) async fn prepare(&self, revision: u64) -> Work<()> {
        let rev = self.revision(revision).await?;
        let volumes: Vec<String> = rev.spec.spec.volumes.iter().map(|v| v.name.clone()).collect();
        self.shared.layout.prepare(&self.name, revision, &volumes).map_err(StepError::from)?;
        self.ensure_rootfs(&rev).await
    }

    /// An image revision's `<work dir>/rootfs`: an overlay of the image's
    /// shared snapshot (unpacked first if the image never ran here), or,
    /// with `[artifacts] rootfs = "copy"` or where overlayfs cannot be
    /// used, the image unpacked into the work dir (a marker says that
    /// finished; an unfinished one, after a crash, is redone). Idempotent
    /// and cheap when it is there: Installing and Activating call it too, so
    /// a revision started after a reboot (its mount gone) gets it back. A
    /// revision keeps the kind it was made with.
    pub(super) async fn ensure_rootfs(&self, rev: &RevisionRecord) -> Work<()> {
        let (ArtifactSource::Image(_), Some(manifest)) = (rev.spec.artifact_source(), rev.artifact_path.clone()) else {
            return Ok(());
        };
        let work = PathBuf::from(&rev.work_dir);
        let done = work.join("rootfs.done");
        let layers_dir = self.shared.layout.overlay_dir(&self.name, rev.revision);
        let overlay = layers_dir.exists() || (self.shared.rootfs == RootfsMode::Overlay && !done.exists());
        if done.exists() || (overlay && rootfs::is_mounted(&work).unwrap_or(false)) {
            return Ok(());
        }
        let content = self.shared.content.clone();
        let manifest = PathBuf::from(manifest);
        // If the step is cut short (this future dropped), the guard raises
        // the flag and the thread stops at the next entry; the supervisor
        // waits for the lock the thread holds before it goes on.
        struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = CancelOnDrop(Arc::default());
        let cancel = guard.0.clone();
        let writing = self.unpacking.clone().lock_owned().await;
        let deployment = self.name.clone();
        tokio::task::spawn_blocking(move || -> Work<()> {
            let _writing = writing;
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&work)
                .map_err(|e| format!("work dir {}: {e}", work.display()))?;
            let (layers, _) = image_parts(&content.blobs_dir(), &manifest).map_err(StepError::from)?;
            let policy = UnpackPolicy::default();
            if overlay {
                let digest = format!("sha256:{}", manifest.file_name().unwrap_or_default().to_string_lossy());
                let lower = content
                    .snapshots()
                    .ensure(&digest, &layers, &policy, &cancel)
                    .map_err(|e| format!("unpacking the image: {e}"))?;
                match rootfs::mount(&lower, &layers_dir, &work) {
                    Ok(()) => return Ok(()),
                    Err(rootfs::MountError::Unsupported(e)) => {
                        let _ = std::fs::remove_dir_all(&layers_dir);
                        tracing::warn!(deployment, error = %e, "the rootfs overlay cannot be mounted here; unpacking a copy into the work dir instead");
                    }
                    Err(e) => return Err(format!("mounting the rootfs of {}: {e}", work.display()).into()),
                }
            }
            let rootfs = work.join(rootfs::ROOTFS);
            let _ = std::fs::remove_dir_all(&rootfs);
            unpack_layers_until(&layers, &rootfs, &policy, &cancel).map_err(|e| {
                let _ = std::fs::remove_dir_all(&rootfs);
                format!("unpacking the image: {e}")
            })?;
            std::fs::write(&done, b"").map_err(|e| StepError::Other(format!("{}: {e}", done.display())))
        })
        .await
        .map_err(|e| format!("unpack task: {e}"))?
    }
}
