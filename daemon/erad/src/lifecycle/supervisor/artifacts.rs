//! Validating, Fetching and Preparing: the steps that only read, download and
//! write beneath the revision's own work dir.

use super::calls::retry;
use super::steps::ports_of;
use super::{PROGRESS_STEP, StepError, Supervisor, Work, plugin_for, workload_of};
use crate::lifecycle::WatchEvent;
use crate::plugin::CallContext;
use crate::prepare::Scratch;
use crate::spec::ArtifactSource;
use std::path::Path;
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
        let workload =
            workload_of(&self.shared.layout, &rev.spec, revision, None, &scratch.path, Path::new(&rev.source_dir));
        let ctx = CallContext { deployment: &self.name, work_dir: &scratch.path, revision: None };
        retry(|| plugin.validate(&ctx, &workload)).await.map_err(StepError::from)
    }

    pub(super) async fn fetch(&self, revision: u64) -> Work<String> {
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
        // Until the digest is recorded below, the GC waits.
        let _fetching = self.shared.content.fetch_guard().await;
        let fetched = self
            .shared
            .content
            // Once resolved, the revision's digest is what it is fetched by:
            // a tag that moves later never changes a deployed revision.
            .fetch_requiring(
                &source,
                rev.artifact_digest.clone().or(rev.spec.pinned_digest()).as_deref(),
                base,
                also.as_ref(),
                &progress,
            )
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
        let (digest, path) = (fetched.digest.clone(), fetched.path.display().to_string());
        self.db(move |s, n| s.set_artifact(n, revision, &digest, &path)).await.map_err(StepError::from)?;
        if matches!(source, ArtifactSource::Image(_) | ArtifactSource::Wasm(_) | ArtifactSource::Blob(_)) {
            let (reference, digest, kind, size) =
                (source.reference().to_string(), fetched.digest.clone(), source.kind(), fetched.size);
            self.db(move |s, _| s.record_artifact(&reference, &digest, kind, size, false))
                .await
                .map_err(StepError::from)?;
        }
        Ok(fetched.digest)
    }

    pub(super) async fn prepare(&self, revision: u64) -> Work<()> {
        let rev = self.revision(revision).await?;
        let volumes: Vec<String> = rev.spec.spec.volumes.iter().map(|v| v.name.clone()).collect();
        let work = self.shared.layout.prepare(&self.name, revision, &volumes).map_err(StepError::from)?;
        if let (ArtifactSource::Image(_), Some(manifest)) = (rev.spec.artifact_source(), rev.artifact_path.clone()) {
            self.unpack_rootfs(&work, Path::new(&manifest)).await?;
        }
        Ok(())
    }

    /// Unpacks an image's layers into `<work dir>/rootfs`, once: a marker
    /// says it finished, and an unfinished one (a crash) is redone.
    pub(super) async fn unpack_rootfs(&self, work: &Path, manifest: &Path) -> Work<()> {
        let (rootfs, done) = (work.join("rootfs"), work.join("rootfs.done"));
        if done.exists() {
            return Ok(());
        }
        let content = self.shared.content.clone();
        let manifest = manifest.to_path_buf();
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
        tokio::task::spawn_blocking(move || -> Work<()> {
            let _writing = writing;
            let _ = std::fs::remove_dir_all(&rootfs);
            let (layers, _) =
                crate::artifact::oci::image_parts(&content.blobs_dir(), &manifest).map_err(StepError::from)?;
            let policy = crate::artifact::unpack::UnpackPolicy::default();
            crate::artifact::unpack::unpack_layers_until(&layers, &rootfs, &policy, &cancel).map_err(|e| {
                let _ = std::fs::remove_dir_all(&rootfs);
                format!("unpacking the image: {e}")
            })?;
            std::fs::write(&done, b"").map_err(|e| StepError::Other(format!("{}: {e}", done.display())))
        })
        .await
        .map_err(|e| format!("unpack task: {e}"))?
    }
}
