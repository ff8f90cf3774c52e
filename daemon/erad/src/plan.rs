//! Plans: what applying an environment's desired set of specs would change,
//! worked out without changing anything, saved, and carried out later only if
//! nothing it was made against has moved (`era plan`, `era apply --plan`).
//!
//! This module holds the plan document and the field-level diff; making and
//! applying one is [`crate::lifecycle::Lifecycle::plan`] and
//! [`crate::lifecycle::Lifecycle::apply_plan`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The environment of a spec that names none.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// What applying the plan does to one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "add")]
    Add,
    #[serde(rename = "change")]
    Change,
    #[serde(rename = "destroy")]
    Destroy,
    #[serde(rename = "no-op")]
    Noop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Change => "change",
            Action::Destroy => "destroy",
            Action::Noop => "no-op",
        }
    }
}

/// One field a change alters, by its path in the spec (`spec.ports[0].port`);
/// `None` where the field is absent on that side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// A tag the plan resolved, and the digest it pinned it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub reference: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub name: String,
    pub action: Action,
    /// Where its spec came from (the file, and the document in it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The spec an apply submits, its tag pinned (none for a destroy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    /// Where its relative `file:` artifacts are read from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// Where its runtime disagrees with the record, or could not be asked
    /// (`drifted: ...`, `unknown: ...`, `failed: ...`), when the plan was
    /// made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

/// A saved plan, as erad stores it and `era plan --out` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub environment: String,
    pub created_at: String,
    /// `sha256:` of the desired set: each deployment's name and pinned spec.
    pub set_hash: String,
    /// The recorded state the plan was made against: every deployment it
    /// looked at (the set's and the environment's) and the revision it was
    /// driven towards (0: none, or deleted). Applying refuses a plan when
    /// any of these moved, or a deployment joined the environment.
    pub base: BTreeMap<String, u64>,
    /// One per deployment, by name.
    pub changes: Vec<PlannedChange>,
    /// A promotion's plan (`era promote`): where its one deployment comes
    /// from. It looks at that deployment only: others of the environment
    /// joining or moving do not make it stale, and it destroys nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

/// Where a promotion comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The environment it is promoted from.
    pub from: String,
    /// The revision that runs there.
    pub revision: u64,
    /// The artifact digest that revision verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `sha256:` of the spec as written, its environment aside (what both
    /// environments' revisions are applied from).
    pub spec_hash: String,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Noop)
    }

    /// The hash of a desired set: (name, spec) pairs in name order.
    pub fn hash_set<'a>(set: impl Iterator<Item = (&'a str, &'a Value)>) -> String {
        let mut h = Sha256::new();
        for (name, spec) in set {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(spec.to_string().as_bytes());
            h.update([0]);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// A fresh plan id: 12 hex digits from the kernel's random source.
pub fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Whether `id` can be a plan id (what `era apply --plan` takes as one).
pub fn is_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The fields that differ between two JSON documents, in path order:
/// objects by key, arrays by index, anything else as a whole.
pub fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_at(String::new(), Some(before), Some(after), &mut out);
    out
}

fn diff_at(path: String, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<FieldChange>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                diff_at(join(k), b.get(k), a.get(k), out);
            }
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) => {
            for i in 0..b.len().max(a.len()) {
                diff_at(format!("{path}[{i}]"), b.get(i), a.get(i), out);
            }
        }
        (b, a) if b != a => out.push(FieldChange { path, before: b.cloned(), after: a.cloned() }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_diff_names_each_field_that_differs_by_its_path() {
        let before = json!({"spec": {"runtime": "noop", "env": {"A": "1", "B": "2"}, "ports": [{"port": 80}]}});
        let after =
            json!({"spec": {"runtime": "noop", "env": {"A": "1", "C": "3"}, "ports": [{"port": 81}, {"port": 82}]}});
        let d = diff(&before, &after);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["spec.env.B", "spec.env.C", "spec.ports[0].port", "spec.ports[1]"]);
        assert_eq!(d[0], FieldChange { path: "spec.env.B".into(), before: Some(json!("2")), after: None });
        assert_eq!(d[1].before, None);
        assert_eq!(d[2].after, Some(json!(81)));
        assert_eq!(d[3].after, Some(json!({"port": 82})));
    }

    #[test]
    fn equal_documents_have_no_diff_whatever_their_key_order() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": {"c": [1, 2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b": {"c": [1, 2]}, "a": 1}"#).unwrap();
        assert!(diff(&a, &b).is_empty());
        assert_eq!(diff(&json!(1), &json!("1")).len(), 1, "a type change is a change");
    }

    #[test]
    fn ids_are_twelve_lowercase_hex_digits() {
        let id = new_id().unwrap();
        assert!(is_id(&id), "{id}");
        assert_ne!(id, new_id().unwrap());
        for bad in ["", "ABCDEF012345", "abc", "../../etc/pa", "0123456789abc"] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_set_hash_covers_names_and_specs() {
        let (s1, s2) = (json!({"x": 1}), json!({"x": 2}));
        let h = Plan::hash_set([("a", &s1)].into_iter());
        assert_ne!(h, Plan::hash_set([("a", &s2)].into_iter()));
        assert_ne!(h, Plan::hash_set([("b", &s1)].into_iter()));
        assert_eq!(h, Plan::hash_set([("a", &s1)].into_iter()));
    }
}
