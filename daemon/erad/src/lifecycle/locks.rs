//! Environment locks: one holder at a time per environment (a plan, an apply
//! of one, a single-deployment command), kept in the store so they outlive
//! erad's restarts and show in `era lock list`; refreshed while held, so the
//! lock of a holder that died goes stale and is taken over, never stuck.

use super::Lifecycle;
use crate::store::{LockRecord, StoreError, now_ms, now_rfc3339};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Held by someone else for longer than the wait.
    #[error(
        "environment {environment} is locked by {operation} ({holder}) since {since}; waited {waited} (see `era lock list`)"
    )]
    Held { environment: String, operation: String, holder: String, since: String, waited: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("erad is shutting down")]
    ShuttingDown,
}

/// A held environment lock: refreshed in the background, released on drop.
pub struct EnvLock {
    lifecycle: Lifecycle,
    environment: String,
    token: String,
    refresher: tokio::task::JoinHandle<()>,
}

impl EnvLock {
    pub fn environment(&self) -> &str {
        &self.environment
    }
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        self.refresher.abort();
        if let Err(e) = self.lifecycle.shared.store.unlock(&self.environment, &self.token) {
            tracing::warn!(environment = self.environment, "cannot release the lock: {e}");
        }
    }
}

/// How often a held lock is refreshed: well within the time it goes stale.
fn refresh_every(stale_after: Duration) -> Duration {
    (stale_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

impl Lifecycle {
    /// Takes `environment`'s lock for `operation` by `holder`, waiting up to
    /// `[locks] wait` while someone else holds it. A lock not refreshed for
    /// `[locks] stale_after` is taken over (and the takeover logged).
    pub async fn lock_environment(
        &self,
        environment: &str,
        operation: &str,
        holder: &str,
    ) -> Result<EnvLock, LockError> {
        let policy = self.shared.locks;
        let token = crate::plan::new_id().map_err(|e| StoreError::Corrupt(format!("cannot make a lock token: {e}")))?;
        let holder = format!("{holder}, erad pid {}", std::process::id());
        let started = tokio::time::Instant::now();
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let now = now_ms();
            let want = LockRecord {
                token: token.clone(),
                operation: operation.to_string(),
                holder: holder.clone(),
                acquired_at: now_rfc3339(),
                heartbeat_ms: now,
            };
            let stale_before = now - policy.stale_after.as_millis() as i64;
            let held = self.shared.store.try_lock(environment, &want, stale_before)?;
            let Some(held) = held else { break };
            if started.elapsed() >= policy.wait {
                return Err(LockError::Held {
                    environment: environment.to_string(),
                    operation: held.operation,
                    holder: held.holder,
                    since: held.acquired_at,
                    waited: humantime::format_duration(policy.wait).to_string(),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.changed() => return Err(LockError::ShuttingDown),
            }
        }
        tracing::debug!(environment, operation, "environment locked");
        let (store, env, tok) = (self.shared.store.clone(), environment.to_string(), token.clone());
        let every = refresh_every(policy.stale_after);
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (store, env2, tok2) = (store.clone(), env.clone(), tok.clone());
                match tokio::task::spawn_blocking(move || store.refresh_lock(&env2, &tok2, now_ms())).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::warn!(environment = env, "the lock was taken over or forced open while held");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(environment = env, "cannot refresh the lock: {e}"),
                    Err(_) => return,
                }
            }
        });
        Ok(EnvLock { lifecycle: self.clone(), environment: environment.to_string(), token, refresher })
    }

    /// The held locks, each with whether it is stale now.
    pub fn locks(&self) -> Result<Vec<(String, LockRecord, bool)>, StoreError> {
        let stale_before = now_ms() - self.shared.locks.stale_after.as_millis() as i64;
        Ok(self
            .shared
            .store
            .locks()?
            .into_iter()
            .map(|(e, l)| {
                let stale = l.heartbeat_ms < stale_before;
                (e, l, stale)
            })
            .collect())
    }

    /// Removes `environment`'s lock whoever holds it (logged with who did
    /// it); plans made before now are refused afterwards.
    pub fn force_unlock(&self, environment: &str, by: &str) -> Result<Option<LockRecord>, StoreError> {
        let removed = self.shared.store.force_unlock(environment, now_ms())?;
        match &removed {
            Some(l) => tracing::warn!(
                environment,
                by,
                held_by = l.holder,
                operation = l.operation,
                "environment lock forced open; plans made before now are refused"
            ),
            None => tracing::warn!(
                environment,
                by,
                "environment force-unlocked (it was not locked); plans made before now are refused"
            ),
        }
        Ok(removed)
    }

    /// The policy of `environment` (`[environments.NAME]`, or the default).
    pub fn environment_policy(&self, environment: &str) -> crate::config::EnvironmentPolicy {
        self.shared.environments.get(environment).cloned().unwrap_or_default()
    }
}
