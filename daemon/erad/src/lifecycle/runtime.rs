//! What the supervisor needs of a runtime, as a trait: the wasm plugins
//! implement it ([`crate::plugin::LoadedPlugin`]), and the supervisor's unit
//! tests drive the whole control loop with a scripted one, without wasm (as
//! Eclipse Ankaios tests its workload control loop against a mock runtime).

use crate::plugin::{CallContext, CallError, ExecOutput, LoadedPlugin, PluginRegistry, Workload, WorkloadStatus};
use std::sync::Arc;
use std::time::Duration;

/// A runtime's workload operations, as the WIT contract defines them.
#[async_trait::async_trait]
pub(crate) trait Runtime: Send + Sync {
    async fn validate(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<(), CallError>;
    async fn install(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<String, CallError>;
    async fn start(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<String, CallError>;
    async fn status(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<WorkloadStatus, CallError>;
    async fn stop(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError>;
    async fn delete(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError>;
    async fn exec(
        &self,
        ctx: &CallContext<'_>,
        w: &Workload,
        handle: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, CallError>;
    /// The runtime runs the spec's probes itself (a remote runtime): erad
    /// runs none of its own and trusts `status`.
    fn runs_probes(&self) -> bool {
        false
    }
}

/// The runtimes by the name a spec's `runtime:` gives.
pub(crate) trait Runtimes: Send + Sync {
    fn get(&self, name: &str) -> Option<Arc<dyn Runtime>>;
    fn names(&self) -> Vec<String>;
}

#[async_trait::async_trait]
impl Runtime for LoadedPlugin {
    async fn validate(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<(), CallError> {
        LoadedPlugin::validate(self, ctx, w).await
    }
    async fn install(&self, ctx: &CallContext<'_>, w: &Workload) -> Result<String, CallError> {
        LoadedPlugin::install(self, ctx, w).await
    }
    async fn start(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<String, CallError> {
        LoadedPlugin::start(self, ctx, w, handle).await
    }
    async fn status(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<WorkloadStatus, CallError> {
        LoadedPlugin::status(self, ctx, w, handle).await
    }
    async fn stop(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError> {
        LoadedPlugin::stop(self, ctx, w, handle).await
    }
    async fn delete(&self, ctx: &CallContext<'_>, w: &Workload, handle: &str) -> Result<(), CallError> {
        LoadedPlugin::delete(self, ctx, w, handle).await
    }
    async fn exec(
        &self,
        ctx: &CallContext<'_>,
        w: &Workload,
        handle: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, CallError> {
        LoadedPlugin::exec(self, ctx, w, handle, command, timeout).await
    }
    fn runs_probes(&self) -> bool {
        self.info.runs_probes
    }
}

impl Runtimes for PluginRegistry {
    fn get(&self, name: &str) -> Option<Arc<dyn Runtime>> {
        PluginRegistry::get(self, name).map(|p| p as Arc<dyn Runtime>)
    }
    fn names(&self) -> Vec<String> {
        PluginRegistry::names(self)
    }
}
