//! Typed outputs against the real erad with the noop fixture reporting
//! outputs as a runtime would: precedence (override, runtime, default), type
//! errors, a required output missing failing the rollout, a credential the
//! runtime generated kept from overrides, and outputs gone with the
//! deployment.

use era_tests::Erad;

/// The noop fixture reporting `reported` (YAML flow map) as its outputs,
/// with outputs declared.
fn spec(erad: &Erad, version: &str, reported: &str) -> std::path::PathBuf {
    erad.deployment(
        "web",
        "noop",
        version,
        &format!(
            "  config: {{outputs: {reported}}}\n  outputs:\n    url: {{type: url, required: true}}\n    port: {{type: int}}\n    token: {{type: secret-ref}}\n    debug: {{type: bool, default: \"false\"}}\n    region: {{type: string}}\n"
        ),
    )
}

fn outputs(erad: &Erad) -> serde_json::Value {
    let a = erad.era(&["-o", "json", "outputs", "web"]);
    assert_eq!(a.code, 0, "{a:?}");
    a.json()
}

fn output(erad: &Erad, name: &str) -> serde_json::Value {
    let all = outputs(erad);
    all["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name}: {all}"))
}

fn resolved_in_store(erad: &Erad) -> (String, String) {
    erad.db()
        .query_row("SELECT resolved_outputs, output_overrides FROM deployments WHERE id = 'web'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

#[test]
fn outputs_resolve_by_precedence_and_type_and_a_missing_required_one_fails_the_rollout() {
    let erad = Erad::start();
    let reported = "{url: \"http://10.0.0.5:8080/\", token: \"vault://kv/web/generated\", port: \"8080\"}";
    let a = erad.apply_wait(&spec(&erad, "v1", reported));
    assert_eq!(a.code, 0, "{a:?}");
    let pick =
        |o: serde_json::Value| (o["value"].clone(), o["source"].as_str().unwrap().to_string(), o["type"].clone());
    assert_eq!(pick(output(&erad, "url")), ("http://10.0.0.5:8080/".into(), "runtime".into(), "url".into()));
    assert_eq!(pick(output(&erad, "port")), ("8080".into(), "runtime".into(), "int".into()));
    assert_eq!(pick(output(&erad, "debug")), ("false".into(), "default".into(), "bool".into()));
    assert_eq!(pick(output(&erad, "region")), (serde_json::Value::Null, String::new(), "string".into()));
    // What the runtime reports beyond the declared ones is listed, untyped.
    assert_eq!(pick(output(&erad, "starts")), ("1".into(), "runtime".into(), "".into()));
    // Resolved with the rollout, in the store.
    let (resolved, _) = resolved_in_store(&erad);
    assert!(resolved.contains("\"port\":\"8080\"") && resolved.contains("\"debug\":\"false\""), "{resolved}");

    // An override wins, and is recorded with the outputs resolved again.
    let r = erad.era(&["outputs", "set", "web", "port", "9090"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(pick(output(&erad, "port")), ("9090".into(), "override".into(), "int".into()));
    let (resolved, overrides) = resolved_in_store(&erad);
    assert!(resolved.contains("\"port\":\"9090\"") && overrides == "{\"port\":\"9090\"}", "{resolved} {overrides}");
    // Refused, each naming the output and what is wrong.
    for (args, says) in [
        (["port", "nine"], "output port (int): the value is not an int"),
        (["token", "vault://kv/mine"], "output token is a credential the runtime generated"),
        (["nope", "1"], "output \"nope\" is not declared in the spec's outputs"),
    ] {
        let r = erad.era(&["outputs", "set", "web", args[0], args[1]]);
        assert!(r.code == 2 && r.stderr.contains(says), "{args:?}: {r:?}");
    }
    // Unset: the runtime's value again.
    assert_eq!(erad.era(&["outputs", "unset", "web", "port"]).code, 0);
    assert_eq!(pick(output(&erad, "port")), ("8080".into(), "runtime".into(), "int".into()));
    let r = erad.era(&["outputs", "unset", "web", "port"]);
    assert!(r.code == 2 && r.stderr.contains("has no override to remove"), "{r:?}");

    // A revision whose runtime no longer gives the required url fails its
    // rollout naming it, and the serving revision stays.
    let r = erad.apply_wait(&spec(&erad, "v2", "{port: \"8080\"}"));
    assert_eq!(r.code, 1, "{r:?}");
    let d = erad.get("web");
    assert_eq!((d["state"].as_str(), d["revision"].as_u64()), (Some("Running"), Some(1)), "{d}");
    let why =
        |erad: &Erad| erad.history("web").iter().map(|e| e["cause"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert!(
        why(&erad).iter().any(|c| c.contains(
            "revision 2 is healthy, but output url (url): required, but neither an override nor the runtime gives it"
        )),
        "{:?}",
        why(&erad)
    );
    // ...and one of the wrong type.
    let r = erad.apply_wait(&spec(&erad, "v3", "{url: \"http://h/\", port: eighty}"));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        why(&erad).iter().any(|c| c.contains("output port (int): runtime: the value is not an int")),
        "{:?}",
        why(&erad)
    );

    // No value of an output reached the journal or erad's log.
    assert!(!why(&erad).iter().any(|c| c.contains("eighty")));
    assert!(!erad.log().contains("9090") && !erad.log().contains("eighty"), "an output value was logged");

    // The outputs, overrides and resolution go with the deployment.
    assert_eq!(erad.era(&["outputs", "set", "web", "region", "eu-1"]).code, 0);
    assert_eq!(erad.era(&["delete", "web", "--wait"]).code, 0);
    assert_eq!(resolved_in_store(&erad), ("{}".to_string(), "{}".to_string()));
    let r = erad.era(&["outputs", "set", "web", "region", "eu-2"]);
    assert!(r.code == 2 && r.stderr.contains("it is deleted"), "{r:?}");
}
