//! Invariants between the record and the runtimes, checked after every run
//! and periodically:
//! - every container in erad's own runtime roots (runc's and crun's roots,
//!   the LXC path) named as erad names them (`era-<store id>-<id>-<rev>`)
//!   is a recorded revision of a deployment that is not deleted (else an
//!   `orphan`, or a `leftover` of a deleted deployment);
//! - every live deployment's OCI artifact digest passes the trust policy as
//!   it is now (a rule admits it and, unless unsigned is allowed, its
//!   signatures passed that very rule): else `untrusted`.
//!
//! An unacknowledged breach halts its environment: applies (of specs, of
//! plans, promotions into it), starts and restarts are refused, naming it,
//! until a check no longer finds it or an admin acknowledges it.
//!
//! Remote runtimes (Kubernetes, Proxmox VE) keep their objects where only
//! their plugins can list them; the plugin contract has no `list` yet, so
//! their objects are not checked here.

use super::{CommandError, Lifecycle};
use crate::machine::State;
use crate::spec::ArtifactSource;
use crate::store::{Breach, StoreError, now_rfc3339};
use std::collections::{BTreeMap, BTreeSet};

/// The runtime roots erad keeps under `DATA/runtimes`, and what their
/// containers are called in a breach.
const ROOTS: &[(&str, &str)] =
    &[("oci/runc", "runc container"), ("oci/crun", "crun container"), ("lxc", "LXC container")];

impl Lifecycle {
    /// Checks every invariant now and records what it found (a breach no
    /// longer found is resolved and removed). Returns the breaches.
    pub async fn check_invariants(&self) -> Result<Vec<Breach>, StoreError> {
        let _one = self.checking.lock().await;
        let found = self.find_breaches()?;
        self.shared.store.record_breaches(&found)?;
        let open = self.shared.store.breaches(None)?;
        let unacknowledged = open.iter().filter(|b| b.acknowledged.is_none()).count();
        if unacknowledged > 0 {
            tracing::warn!(breaches = unacknowledged, "invariants broken: reconciliation of their environments halts");
        }
        Ok(open)
    }

    fn find_breaches(&self) -> Result<Vec<Breach>, StoreError> {
        let store = &self.shared.store;
        let instance = store.instance_id()?;
        // The runtimes' containers first, then the record: a container is
        // made only after its revision is recorded (and removed before its
        // deployment is recorded deleted), so one made or removed between
        // the two reads is never taken for an orphan or a leftover.
        let runtimes = self.shared.layout.root().join("runtimes");
        let prefix = format!("era-{instance}-");
        let mut containers = Vec::new();
        for (dir, what) in ROOTS {
            let Ok(entries) = std::fs::read_dir(runtimes.join(dir)) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Another store's (or a person's) containers are not ours.
                if e.file_type().is_ok_and(|t| t.is_dir()) && name.starts_with(&prefix) {
                    containers.push((*what, name));
                }
            }
        }
        let deployments = store.deployments()?;
        let by_id: BTreeMap<&str, _> = deployments.iter().map(|d| (d.id.as_str(), d)).collect();
        let environments: BTreeSet<&str> = deployments
            .iter()
            .map(|d| d.environment.as_str())
            .chain(self.shared.environments.keys().map(String::as_str))
            .collect();
        let now = now_rfc3339();
        let mut found = Vec::new();
        {
            for (what, name) in containers {
                let Some(rest) = name.strip_prefix(&prefix) else { continue };
                let object = format!("{what} {name}");
                let parsed = rest.rsplit_once('-').and_then(|(id, rev)| Some((id, rev.parse::<u64>().ok()?)));
                let Some((id, revision)) = parsed else {
                    found.push(breach(
                        default_env(rest, &environments),
                        object,
                        "orphan",
                        "named as erad names containers, but no deployment and revision can be read from it".into(),
                        &now,
                    ));
                    continue;
                };
                match by_id.get(id) {
                    None => found.push(breach(
                        default_env(id, &environments),
                        object,
                        "orphan",
                        format!("no deployment {id} is recorded"),
                        &now,
                    )),
                    Some(d) if d.state == State::Deleted => found.push(breach(
                        d.environment.clone(),
                        object,
                        "leftover",
                        format!("deployment {} was deleted; its revision {revision} is still on the runtime", d.name),
                        &now,
                    )),
                    Some(d) => {
                        if store.revision(&d.id, revision)?.is_none() {
                            found.push(breach(
                                d.environment.clone(),
                                object,
                                "orphan",
                                format!("deployment {} has no revision {revision}", d.name),
                                &now,
                            ));
                        }
                    }
                }
            }
        }
        for d in deployments.iter().filter(|d| d.state != State::Deleted) {
            let serving = if d.current_revision != 0 { d.current_revision } else { d.desired_revision };
            let Some(rev) = store.revision(&d.id, serving)? else { continue };
            let Some(digest) = &rev.artifact_digest else { continue };
            let reference = match rev.spec.artifact_source() {
                ArtifactSource::Image(r) | ArtifactSource::Wasm(r) | ArtifactSource::Blob(r) => r,
                ArtifactSource::File(_) | ArtifactSource::Url(_) => continue,
            };
            if let Err(why) = self.shared.content.trusted(&reference, digest) {
                found.push(breach(
                    d.environment.clone(),
                    format!("deployment {}", d.name),
                    "untrusted",
                    format!("revision {serving} runs {reference}: {why}"),
                    &now,
                ));
            }
        }
        Ok(found)
    }

    /// The breaches of `environment` no one acknowledged.
    pub fn halting(&self, environment: &str) -> Result<Vec<Breach>, StoreError> {
        Ok(self.shared.store.breaches(Some(environment))?.into_iter().filter(|b| b.acknowledged.is_none()).collect())
    }

    /// Refuses `action` in a halted environment, naming the breaches.
    pub fn check_not_halted(&self, environment: &str, name: &str, action: &str) -> Result<(), CommandError> {
        let open = self.halting(environment)?;
        if open.is_empty() {
            return Ok(());
        }
        Err(CommandError::Halted {
            name: name.to_string(),
            action: action.to_string(),
            why: halted_because(environment, &open),
        })
    }

    /// The invariant breaches (of `environment`, or all) as last recorded.
    pub fn breaches(&self, environment: Option<&str>) -> Result<Vec<Breach>, StoreError> {
        self.shared.store.breaches(environment)
    }

    /// Acknowledges every open breach of `environment` (`by` says who):
    /// its reconciliation goes on. Returns how many. `confirm` must be the
    /// environment's name.
    pub fn acknowledge(&self, environment: &str, confirm: &str, by: &str) -> Result<usize, CommandError> {
        if confirm != environment {
            return Err(CommandError::Invalid {
                name: environment.to_string(),
                message: format!(
                    "acknowledging the breaches of environment {environment} needs --confirm {environment}"
                ),
            });
        }
        let n = self.shared.store.acknowledge_breaches(environment, by)?;
        tracing::warn!(environment, by, breaches = n, "invariant breaches acknowledged: reconciliation goes on");
        Ok(n)
    }
}

/// Why an environment is halted: its breaches, in a sentence.
pub fn halted_because(environment: &str, open: &[Breach]) -> String {
    let list: Vec<String> = open.iter().map(|b| format!("{} ({}: {})", b.object, b.kind, b.detail)).collect();
    format!(
        "environment {environment} is halted by an invariant breach: {}; remove the cause and run `era invariants`, \
         or acknowledge it with `era invariants ack --env {environment} --confirm {environment}`",
        list.join("; ")
    )
}

fn breach(environment: String, object: String, kind: &str, detail: String, now: &str) -> Breach {
    Breach { environment, object, kind: kind.to_string(), detail, found_at: now.to_string(), acknowledged: None }
}

/// The environment an id no deployment holds would be of: `ENV` of an
/// `ENV-NAME` id where ENV is a known environment, else `default`.
fn default_env(id: &str, environments: &BTreeSet<&str>) -> String {
    environments
        .iter()
        .filter(|e| **e != crate::plan::DEFAULT_ENVIRONMENT && id.starts_with(&format!("{e}-")))
        .max_by_key(|e| e.len())
        .map_or_else(|| crate::plan::DEFAULT_ENVIRONMENT.to_string(), |e| e.to_string())
}
