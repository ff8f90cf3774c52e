//! Calls on a revision's runtime: transient failures retried with backoff,
//! NotFound on stop and delete taken as done.

use super::{RETRIES, RETRY_BACKOFF, StepError, Supervisor, Work, plugin_for};
use crate::health;
use crate::lifecycle::runtime::Runtime;
use crate::plugin::{CallContext, CallError, Failure, Workload};
use crate::store::RevisionRecord;
use std::path::Path;
use std::sync::Arc;

pub(super) async fn retry<T, F, Fut>(mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut backoff = RETRY_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < RETRIES => {
                tracing::warn!(attempt, "{e}; retrying in {}", humantime::format_duration(backoff));
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl Supervisor {
    /// What a call on an installed revision needs: its plugin, its workload
    /// and the handle the plugin gave it.
    pub(super) fn call_parts(&self, rev: &RevisionRecord) -> Work<(Arc<dyn Runtime>, Workload, String)> {
        Ok((plugin_for(&self.shared, &rev.runtime)?, self.workload(rev), rev.handle.clone().unwrap_or_default()))
    }

    /// A call's context on an installed revision: its work dir is the
    /// plugin's view of the host, made again (empty, private) if a crash or
    /// a cleanup took it, so stop and delete can still run.
    pub(super) fn ctx<'a>(&'a self, rev: &'a RevisionRecord) -> CallContext<'a> {
        let dir = Path::new(&rev.work_dir);
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
        }
        CallContext { deployment: &self.name, work_dir: dir, revision: Some(rev.revision) }
    }

    pub(super) async fn status(&self, rev: &RevisionRecord) -> Work<crate::plugin::WorkloadStatus> {
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        plugin.status(&ctx, &workload, &handle).await.map_err(StepError::from)
    }

    /// The spec's probe, once: http and tcp from the host, exec inside the
    /// workload through the plugin.
    pub(super) async fn probe(&self, rev: &RevisionRecord, h: &crate::spec::HealthSpec) -> Work<Option<()>> {
        // A remote runtime's workload is not on this host: its platform
        // runs the probe, and its status says how it went. A probe that
        // names another host's address is still erad's.
        if plugin_for(&self.shared, &rev.runtime)?.runs_probes() && !crate::health::names_a_remote_host(h) {
            return Ok(None);
        }
        let Some(exec) = h.exec.as_ref().filter(|x| !x.command.is_empty()) else {
            return Ok(health::probe(h, &self.shared.http).await?);
        };
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        let out = plugin.exec(&ctx, &workload, &handle, &exec.command, h.timeout.0).await.map_err(StepError::from)?;
        Ok(health::exec_verdict(&exec.command, out).map(Some)?)
    }

    pub(super) async fn stop_revision(&self, rev: &RevisionRecord) -> Work<()> {
        if rev.handle.is_none() {
            // Its install never answered: nothing was started (a start needs
            // the handle), and delete takes care of what install made.
            return Ok(());
        }
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        match retry(|| plugin.stop(&ctx, &workload, &handle)).await {
            Ok(()) => Ok(()),
            Err(CallError { failure: Failure::NotFound(_), .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn delete_revision(&self, rev: &RevisionRecord) -> Work<()> {
        let (plugin, workload, handle) = self.call_parts(rev)?;
        let ctx = self.ctx(rev);
        match retry(|| plugin.delete(&ctx, &workload, &handle)).await {
            Ok(()) | Err(CallError { failure: Failure::NotFound(_), .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let revision = rev.revision;
        self.db(move |s, n| s.set_installed(n, revision, None, false)).await.map_err(StepError::from)
    }

    /// Best effort, for cleanup paths: stop and delete, logging what fails.
    /// Whether the object is gone (the revision no longer installed).
    pub(super) async fn remove_runtime_object(&self, rev: &RevisionRecord) -> bool {
        if let Err(e) = self.stop_revision(rev).await {
            tracing::warn!(deployment = self.name, revision = rev.revision, "cleanup: {e}");
        }
        match self.delete_revision(rev).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(deployment = self.name, revision = rev.revision, "cleanup: {e}");
                false
            }
        }
    }
}
