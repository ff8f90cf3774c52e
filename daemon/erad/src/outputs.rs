//! Typed outputs: what a deployment declares in `spec.outputs`, each value
//! taken from an operator's override (`era outputs set`), else what the
//! runtime reported in its status, else the declared default, and checked
//! against its declared type.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One declared output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutputSpec {
    /// `string`, `int`, `bool`, `url` or `secret-ref`.
    #[serde(rename = "type")]
    pub kind: OutputType,
    /// A rollout whose outputs lack it fails, naming it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// The value when neither an override nor the runtime gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputType {
    String,
    Int,
    Bool,
    Url,
    /// Where a credential is kept (`SCHEME://PATH`, e.g.
    /// `vault://kv/db#password`), never the credential itself. One the
    /// runtime reports is a credential it generated: no override replaces it.
    SecretRef,
}

impl OutputType {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputType::String => "string",
            OutputType::Int => "int",
            OutputType::Bool => "bool",
            OutputType::Url => "url",
            OutputType::SecretRef => "secret-ref",
        }
    }

    /// Whether `value` is one of this type; the error says what it should
    /// be, never the value (it may be sensitive, or huge).
    pub fn check(self, value: &str) -> Result<(), String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value is {} bytes long; at most {MAX_VALUE_BYTES}", value.len()));
        }
        let ok = match self {
            OutputType::String => true,
            OutputType::Int => value.parse::<i64>().is_ok(),
            OutputType::Bool => matches!(value, "true" | "false"),
            OutputType::Url => reqwest::Url::parse(value).is_ok_and(|u| u.has_host()),
            OutputType::SecretRef => secret_ref(value),
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            OutputType::String => unreachable!("every value is a string"),
            OutputType::Int => "the value is not an int (a 64-bit integer)",
            OutputType::Bool => "the value is not a bool (true or false)",
            OutputType::Url => "the value is not a url (scheme://host...)",
            OutputType::SecretRef => "the value is not a secret-ref (SCHEME://PATH naming where a secret is kept)",
        }
        .to_string())
    }
}

/// The longest output value erad takes (an override, or what a runtime
/// reports for a declared output).
pub const MAX_VALUE_BYTES: usize = 4096;

/// `SCHEME://PATH`: a lowercase scheme, and a path with no white space.
fn secret_ref(value: &str) -> bool {
    let Some((scheme, path)) = value.split_once("://") else { return false };
    let mut s = scheme.chars();
    s.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
        && !path.is_empty()
        && !path.chars().any(char::is_whitespace)
}

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Override,
    Runtime,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Runtime => "runtime",
            Source::Default => "default",
        }
    }
}

/// One output as resolved: its value and where it came from, or what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    /// None for what the runtime reports beyond the declared outputs.
    pub kind: Option<OutputType>,
    pub required: bool,
    pub value: Option<String>,
    pub source: Option<Source>,
    pub problem: Option<String>,
}

/// Every declared output resolved (override, then runtime, then default),
/// then what the runtime reported beyond them, by name.
pub fn resolve(
    declared: &BTreeMap<String, OutputSpec>,
    overrides: &BTreeMap<String, String>,
    runtime: &BTreeMap<String, String>,
) -> Vec<Resolved> {
    let mut out: Vec<Resolved> = declared
        .iter()
        .map(|(name, spec)| {
            // A secret-ref the runtime reports is a credential it made: no
            // override replaces it (one set before it reported it neither).
            let generated =
                (spec.kind == OutputType::SecretRef).then(|| runtime.get(name).map(|v| (v, Source::Runtime))).flatten();
            let found = generated
                .or_else(|| overrides.get(name).map(|v| (v, Source::Override)))
                .or_else(|| runtime.get(name).map(|v| (v, Source::Runtime)))
                .or_else(|| spec.default.as_ref().map(|v| (v, Source::Default)));
            let problem = match found {
                None if spec.required => Some("required, but neither an override nor the runtime gives it".into()),
                None => None,
                Some((v, source)) => spec.kind.check(v).err().map(|e| format!("{}: {e}", source.as_str())),
            };
            Resolved {
                name: name.clone(),
                kind: Some(spec.kind),
                required: spec.required,
                value: found.map(|(v, _)| v.clone()),
                source: found.map(|(_, s)| s),
                problem,
            }
        })
        .collect();
    out.extend(runtime.iter().filter(|(k, _)| !declared.contains_key(*k)).map(|(k, v)| Resolved {
        name: k.clone(),
        kind: None,
        required: false,
        value: Some(v.clone()),
        source: Some(Source::Runtime),
        problem: None,
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The declared outputs' values, or the first problem, naming the output.
pub fn settle(
    declared: &BTreeMap<String, OutputSpec>,
    overrides: &BTreeMap<String, String>,
    runtime: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for r in resolve(declared, overrides, runtime) {
        if r.kind.is_none() {
            continue;
        }
        if let Some(p) = r.problem {
            let kind = r.kind.map(OutputType::as_str).unwrap_or_default();
            return Err(format!("output {} ({kind}): {p}", r.name));
        }
        if let Some(v) = r.value {
            values.insert(r.name, v);
        }
    }
    Ok(values)
}

/// Whether an operator may set output `name` to `value`: declared, of its
/// type, and not a credential the runtime generated.
pub fn check_override(
    declared: &BTreeMap<String, OutputSpec>,
    runtime: &BTreeMap<String, String>,
    name: &str,
    value: &str,
) -> Result<(), String> {
    let Some(spec) = declared.get(name) else {
        let known: Vec<&str> = declared.keys().map(String::as_str).collect();
        return Err(format!(
            "output {name:?} is not declared in the spec's outputs (declared: {})",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    };
    if spec.kind == OutputType::SecretRef && runtime.contains_key(name) {
        return Err(format!(
            "output {name} is a credential the runtime generated (a secret-ref it reports): it cannot be overridden"
        ));
    }
    spec.kind.check(value).map_err(|e| format!("output {name} ({}): {e}", spec.kind.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> BTreeMap<String, OutputSpec> {
        let o =
            |kind, required, default: Option<&str>| OutputSpec { kind, required, default: default.map(str::to_string) };
        BTreeMap::from([
            ("port".to_string(), o(OutputType::Int, true, Some("80"))),
            ("url".to_string(), o(OutputType::Url, false, None)),
            ("token".to_string(), o(OutputType::SecretRef, false, None)),
            ("debug".to_string(), o(OutputType::Bool, false, Some("false"))),
        ])
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_override_wins_over_the_runtime_which_wins_over_the_default() {
        let d = declared();
        let got = settle(&d, &map(&[("port", "8443")]), &map(&[("port", "8080"), ("url", "http://h:1/")])).unwrap();
        assert_eq!(got["port"], "8443");
        assert_eq!(got["url"], "http://h:1/");
        assert_eq!(got["debug"], "false");
        assert!(!got.contains_key("token"));
        let got = settle(&d, &map(&[]), &map(&[("port", "8080")])).unwrap();
        assert_eq!(got["port"], "8080");
        assert_eq!(settle(&d, &map(&[]), &map(&[])).unwrap()["port"], "80");
        // What the runtime reports beyond the declared ones is listed, not settled.
        let all = resolve(&d, &map(&[]), &map(&[("pid", "7")]));
        assert!(all.iter().any(|r| r.name == "pid" && r.kind.is_none() && r.source == Some(Source::Runtime)));
    }

    #[test]
    fn a_missing_required_output_or_a_value_of_the_wrong_type_is_named() {
        let mut d = declared();
        d.get_mut("port").unwrap().default = None;
        assert_eq!(
            settle(&d, &map(&[]), &map(&[])).unwrap_err(),
            "output port (int): required, but neither an override nor the runtime gives it"
        );
        let e = settle(&d, &map(&[]), &map(&[("port", "eighty")])).unwrap_err();
        assert_eq!(e, "output port (int): runtime: the value is not an int (a 64-bit integer)");
        assert!(!e.contains("eighty"), "values stay out of errors (and so of the journal)");
        let huge = "1".repeat(MAX_VALUE_BYTES + 1);
        assert!(settle(&d, &map(&[]), &map(&[("port", &huge)])).unwrap_err().contains("bytes long"));
        let e = settle(&d, &map(&[("port", "1")]), &map(&[("url", "not a url")])).unwrap_err();
        assert!(e.starts_with("output url (url): runtime:"), "{e}");
        for (kind, good, bad) in [
            (OutputType::Bool, "true", "yes"),
            (OutputType::Int, "-3", "3.5"),
            (OutputType::Url, "https://example.test/x", "/just/a/path"),
            (OutputType::SecretRef, "vault://kv/db#password", "hunter2"),
        ] {
            assert!(kind.check(good).is_ok() && kind.check(bad).is_err(), "{kind:?}");
        }
        // A secret-ref's error never repeats the value (it may be a secret
        // someone put in the wrong place).
        assert!(!OutputType::SecretRef.check("hunter2").unwrap_err().contains("hunter2"));
    }

    #[test]
    fn an_override_must_be_declared_typed_and_not_a_credential_the_runtime_made() {
        let d = declared();
        let rt = map(&[("token", "vault://kv/generated")]);
        assert!(check_override(&d, &rt, "port", "8443").is_ok());
        assert!(check_override(&d, &rt, "port", "x").unwrap_err().contains("is not an int"));
        assert!(check_override(&d, &rt, "nope", "1").unwrap_err().contains("not declared"));
        assert!(
            check_override(&d, &rt, "token", "vault://kv/mine")
                .unwrap_err()
                .contains("credential the runtime generated")
        );
        assert!(check_override(&d, &map(&[]), "token", "vault://kv/mine").is_ok());
        // Set before the runtime reported one: the runtime's still wins.
        let got = settle(&d, &map(&[("token", "vault://kv/mine"), ("port", "1")]), &rt).unwrap();
        assert_eq!(got["token"], "vault://kv/generated");
    }
}
