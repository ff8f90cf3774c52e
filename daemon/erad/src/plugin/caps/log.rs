//! The `log` capability: a plugin's lines go into erad's log, tagged with the
//! plugin and the deployment. Granted by `log = true`.

use crate::plugin::HostState;
use crate::plugin::bindings::era::plugin::log::{Host, Level};

/// A plugin's log line is cut here, so one call cannot flood erad's log.
const MAX_LINE: usize = 4096;

impl Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        if let Some(redacted) = self.http.as_ref().and_then(|h| h.redact(&message)) {
            message = redacted;
        }
        let (plugin, deployment) = (&*self.plugin, self.scope.deployment.as_str());
        match level {
            Level::Trace => tracing::trace!(plugin, deployment, "{message}"),
            Level::Debug => tracing::debug!(plugin, deployment, "{message}"),
            Level::Info => tracing::info!(plugin, deployment, "{message}"),
            Level::Warn => tracing::warn!(plugin, deployment, "{message}"),
            Level::Error => tracing::error!(plugin, deployment, "{message}"),
        }
    }
}
