//! `era outputs`: a deployment's declared outputs as they resolve now, and
//! an operator's overrides of them.

use super::{CommandError, Lifecycle};
use crate::machine::State;
use crate::outputs::{OutputSpec, Resolved, check_override, resolve};
use crate::store::{DeploymentRecord, StoreError};
use std::collections::BTreeMap;

impl Lifecycle {
    /// The outputs its serving revision (else the one it is driven towards)
    /// declares.
    fn declared_outputs(&self, rec: &DeploymentRecord) -> Result<BTreeMap<String, OutputSpec>, StoreError> {
        let serving = if rec.current_revision != 0 { rec.current_revision } else { rec.desired_revision };
        Ok(self.shared.store.revision(&rec.id, serving)?.map(|r| r.spec.spec.outputs).unwrap_or_default())
    }

    /// Every declared output resolved now (override, then what the runtime
    /// last reported, then the default), then what the runtime reports
    /// beyond them.
    pub fn outputs(&self, rec: &DeploymentRecord) -> Result<Vec<Resolved>, StoreError> {
        Ok(resolve(&self.declared_outputs(rec)?, &rec.output_overrides, &rec.outputs))
    }

    /// Sets (`Some`) or removes an override of output `key`: declared, of
    /// its type, and not a credential the runtime generated. The declared
    /// outputs are resolved again and recorded with it.
    pub fn set_output(
        &self,
        rec: &DeploymentRecord,
        key: &str,
        value: Option<&str>,
    ) -> Result<Vec<Resolved>, CommandError> {
        let invalid = |message: String| CommandError::Invalid { name: rec.name.clone(), message };
        if rec.state == State::Deleted {
            return Err(invalid("it is deleted: its outputs went with it".into()));
        }
        let declared = self.declared_outputs(rec)?;
        let mut overrides = rec.output_overrides.clone();
        match value {
            Some(v) => {
                check_override(&declared, &rec.outputs, key, v).map_err(invalid)?;
                overrides.insert(key.to_string(), v.to_string());
            }
            None if overrides.remove(key).is_none() => {
                return Err(invalid(format!("output {key:?} has no override to remove")));
            }
            None => {}
        }
        let resolved: BTreeMap<String, String> = resolve(&declared, &overrides, &rec.outputs)
            .into_iter()
            .filter(|r| r.kind.is_some() && r.problem.is_none())
            .filter_map(|r| Some((r.name, r.value?)))
            .collect();
        self.shared.store.set_output_override(&rec.id, key, value, &resolved)?;
        Ok(self.outputs(&self.shared.store.deployment(&rec.id)?)?)
    }
}
