//! The `kubernetes` plugin against the Kubernetes API test server
//! (`tests/k8s.rs`): no cluster can run here, so the server implements the
//! slice of the API the plugin uses as the API documents it.

use era_tests::k8s::Cluster;
use era_tests::{Erad, Registry, plugin};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "k8s-test-token-51ac";
const T: Duration = Duration::from_secs(60);

fn erad_for(cluster: &Cluster) -> (Erad, tempfile::TempDir) {
    erad_with_env(cluster, &[])
}

fn erad_with_env(cluster: &Cluster, env: &[(&str, &str)]) -> (Erad, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = format!(
        "[plugins.kubernetes]\npath = \"{}\"\n[plugins.kubernetes.grants]\nlog = true\n\
         [plugins.kubernetes.grants.http.endpoints.cluster]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
        plugin::KUBERNETES,
        cluster.url(),
        token.display()
    );
    (Erad::start_with(&config, env), dir)
}

fn spec(erad: &Erad, name: &str, image: &str, config: Value) -> std::path::PathBuf {
    erad.spec(
        &format!("{name}-{}.yaml", image.replace(['/', ':', '.'], "-")),
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: kubernetes\n  artifact: {{image: \"{image}\"}}\n  \
             env: {{GREETING: hi}}\n  ports: [{{name: http, port: 8080}}]\n  update: {{deadline: 20s}}\n  config: {config}\n"
        ),
    )
}

#[test]
fn a_deployment_runs_updates_rolls_back_stops_and_goes_away_in_the_cluster() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    registry.push_busybox("demo/web", "2", &["/bin/sleep", "601"], &[]);
    registry.push_busybox("demo/stuck", "3", &["/bin/sleep", "602"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    let config = json!({"namespace": "edge", "createNamespace": true, "replicas": 2});

    // Install: the namespace, then web-1 by the digest erad verified.
    let a = erad.apply_wait(&spec(&erad, "web", &format!("{}/demo/web:1", registry.addr), config.clone()));
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let got = erad.get("web");
    let d = cluster.deployment("edge", "web-1").expect("web-1 in the cluster");
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
    assert_eq!(
        image,
        format!("{}/demo/web@{}", registry.addr, got["artifact_digest"].as_str().unwrap()),
        "by digest, never the tag"
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "era");
    assert_eq!(d["metadata"]["labels"]["era.dev/deployment"], "web");
    assert_eq!(d["metadata"]["labels"]["era.dev/revision"], "1");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["env"], json!([{"name": "GREETING", "value": "hi"}]));
    assert_eq!(d["metadata"]["managedFields"][0]["manager"], "era");
    assert_eq!(d["status"]["availableReplicas"], 2);
    let svc = cluster.service("edge", "web").expect("a Service for the spec's ports");
    assert_eq!(svc["spec"]["selector"], json!({"era.dev/deployment": "web"}));
    assert_eq!(svc["spec"]["ports"], json!([{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]));
    // Outputs come with the monitor's status checks.
    era_tests::eventually(T, || erad.get("web")["outputs"]["clusterIP"] == svc["spec"]["clusterIP"]);
    assert_eq!(erad.get("web")["outputs"]["ports"], "8080/TCP");

    // Update while the API server refuses deletes: web-2 runs; web-1, which
    // could not be retired, is kept (scaled to 0, its work dir too) for the
    // next cleanup.
    cluster.fail_deletes.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(erad.apply_wait(&spec(&erad, "web", &format!("{}/demo/web:2", registry.addr), config.clone())).code, 0);
    assert_eq!(cluster.deployment_names("edge"), ["web-1", "web-2"]);
    assert_eq!(cluster.deployment("edge", "web-1").unwrap()["spec"]["replicas"], 0);
    assert_eq!(cluster.deployment("edge", "web-2").unwrap()["spec"]["replicas"], 2);
    assert!(erad.data_dir().join("deployments/web/rev-1").is_dir(), "kept with the object it still has");
    let refused =
        cluster.server.requests().iter().filter(|r| r.method == "DELETE" && r.path().ends_with("/web-1")).count();
    assert!(refused > 1, "a 503 is unavailable, which erad retries: {refused} DELETE(s)");
    cluster.fail_deletes.store(false, std::sync::atomic::Ordering::SeqCst);

    // A failing update (its rollout never becomes available): rolled back to web-2.
    let a = erad.apply_wait(&spec(&erad, "web", &format!("{}/demo/stuck:3", registry.addr), config.clone()));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("web", "Running", T);
    assert_eq!(got["revision"], 2, "{got}");
    let history = erad.history("web");
    assert!(
        history.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("ProgressDeadlineExceeded")),
        "{history:?}"
    );
    // The rollback removed every other revision: the stuck one and web-1;
    // the Service stays for the one that runs.
    assert_eq!(cluster.deployment_names("edge"), ["web-2"]);
    assert!(cluster.service("edge", "web").is_some());
    assert_eq!(cluster.deployment("edge", "web-2").unwrap()["spec"]["replicas"], 2);

    // Stop scales to 0 and keeps the Deployment; start scales back.
    assert_eq!(erad.era(&["stop", "web", "--wait"]).code, 0);
    assert_eq!(cluster.deployment("edge", "web-2").unwrap()["spec"]["replicas"], 0);
    assert_eq!(cluster.pods("edge", "era.dev/deployment=web"), 0, "stopped means no pod left, Terminating ones too");
    assert_eq!(erad.era(&["start", "web", "--wait"]).code, 0);
    assert_eq!(cluster.deployment("edge", "web-2").unwrap()["spec"]["replicas"], 2);

    // Delete: foreground, waited for; nothing of it is left.
    assert_eq!(erad.era(&["delete", "web", "--wait"]).code, 0, "{}", erad.log());
    assert!(cluster.deployment_names("edge").is_empty());
    assert!(cluster.service("edge", "web").is_none(), "the Service went with the last revision");
    let deletes: Vec<_> = cluster
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path().contains("/deployments/"))
        .collect();
    assert!(deletes.iter().all(|r| r.query("propagationPolicy").as_deref() == Some("Foreground")), "{deletes:?}");

    // Every request carried the token erad holds; none of it reached its files.
    assert!(cluster.server.requests().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    let applies: Vec<_> = cluster.server.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert!(applies.iter().all(|r| r.query("fieldManager").as_deref() == Some("era")
        && r.query("fieldValidation").as_deref() == Some("Strict")
        && r.header("content-type") == Some("application/apply-patch+yaml")));
    assert!(!erad.log().contains(TOKEN));
}

#[test]
fn an_apply_conflict_names_the_other_field_manager_and_force_takes_the_field() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    let image = format!("{}/demo/web:1", registry.addr);
    assert_eq!(
        erad.apply_wait(&spec(&erad, "web", &image, json!({"namespace": "edge", "createNamespace": true}))).code,
        0
    );
    // Someone scales it by hand (kubectl's own field manager).
    let d = cluster.deployment("edge", "web-1").unwrap();
    let r = cluster.apply_as("kubectl", "edge", "web-1", json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web-1"}, "spec": {"replicas": 5, "selector": d["spec"]["selector"], "template": d["spec"]["template"]}}));
    assert_eq!(r.status, 409, "kubectl conflicts with era's replicas without force");
    // The server refuses what a v1.33 API server with strict field
    // validation refuses: an unknown field anywhere, a value of the wrong type.
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web-1"},
        "spec": {"selector": d["spec"]["selector"], "template": d["spec"]["template"]}});
    let mut typo = body.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"paht": "/", "port": 80}});
    let r = cluster.apply_as("kubectl", "edge", "web-1", typo);
    let said = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 400, "{said}");
    assert!(
        said.contains(".spec.template.spec.containers[0].readinessProbe.httpGet.paht: strict decoding error"),
        "{said}"
    );
    let mut wrong = body;
    wrong["spec"]["replicas"] = json!("two");
    let r = cluster.apply_as("kubectl", "edge", "web-1", wrong);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let mut forced = cluster.state.lock().unwrap();
    let o = forced.deployments.get_mut(&("edge".to_string(), "web-1".to_string())).unwrap();
    o.owners.insert("\u{1}spec\u{1}replicas".into(), "kubectl".into());
    o.body["spec"]["replicas"] = json!(5);
    drop(forced);
    // era's next apply of replicas (a stop) is refused, naming kubectl.
    assert_ne!(erad.era(&["stop", "web", "--wait"]).code, 0);
    let got = erad.wait_for_state("web", "Failed", T);
    assert!(got["message"].as_str().unwrap().contains("conflict with \"kubectl\""), "{got}");
    assert!(got["message"].as_str().unwrap().contains(".spec.replicas"), "{got}");
}

#[test]
fn without_the_token_the_server_says_401_and_era_names_the_endpoint() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start("another-token");
    let (erad, _dir) = erad_for(&cluster);
    let a = erad.apply_wait(&spec(
        &erad,
        "web",
        &format!("{}/demo/web:1", registry.addr),
        json!({"namespace": "edge", "createNamespace": true}),
    ));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("web", "Failed", T);
    let msg = got["message"].as_str().unwrap();
    assert!(msg.contains("endpoint cluster: apply namespace edge: 401 Unauthorized"), "{msg}");
    assert!(cluster.deployment_names("edge").is_empty());
}

#[test]
fn kill_9_after_the_apply_and_before_its_commit_makes_no_second_deployment() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (mut erad, _dir) = erad_with_env(&cluster, &[("ERAD_TEST_PAUSE_DONE", "Installing")]);
    let s = spec(
        &erad,
        "web",
        &format!("{}/demo/web:1", registry.addr),
        json!({"namespace": "edge", "createNamespace": true}),
    );
    erad.kill9_at(&["apply", "-f", s.to_str().unwrap()], "paused-web-Installing-done");
    assert_eq!(cluster.deployment_names("edge"), ["web-1"], "the apply reached the cluster before the kill");
    erad.spawn(&[]).unwrap();
    erad.wait_for_state("web", "Running", T);
    assert_eq!(cluster.deployment_names("edge"), ["web-1"], "one Deployment, not two");
    assert_eq!(cluster.deployment("edge", "web-1").unwrap()["spec"]["replicas"], 1);
    let applies = cluster
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path() == "/apis/apps/v1/namespaces/edge/deployments/web-1")
        .count();
    assert_eq!(applies, 3, "install, install again after the crash, start");
}

#[test]
fn a_failed_first_install_can_still_be_deleted() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    // No such namespace, and the spec does not ask to create it.
    let a =
        erad.apply_wait(&spec(&erad, "web", &format!("{}/demo/web:1", registry.addr), json!({"namespace": "nowhere"})));
    assert_ne!(a.code, 0);
    let got = erad.wait_for_state("web", "Failed", T);
    assert!(got["message"].as_str().unwrap().contains("namespaces \"nowhere\" not found"), "{got}");
    // Its install returned no handle; delete still knows what to look for.
    let d = erad.era(&["delete", "web", "--wait"]);
    assert_eq!(d.code, 0, "{d:?}\n{}", erad.log());
    assert!(cluster.deployment_names("nowhere").is_empty());
}

#[test]
fn names_kubernetes_would_refuse_are_refused_at_validation() {
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    let long = "a".repeat(53);
    for (name, ports, why) in [
        (long.as_str(), "[]", "too long for Kubernetes"),
        ("9lives", "[{name: http, port: 80}]", "starts with a letter"),
        ("web", "[{name: a-very-long-port-name, port: 80}]", "not a Kubernetes port name"),
    ] {
        let s = erad.spec(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: kubernetes\n  \
                 artifact: {{image: \"127.0.0.1:1/x/y:1\"}}\n  ports: {ports}\n"
            ),
        );
        let a = erad.era(&["validate", "-f", s.to_str().unwrap()]);
        assert_ne!(a.code, 0, "{name}");
        assert!(a.stderr.contains(why), "{name}: {a:?}");
    }
    assert!(cluster.server.requests().is_empty(), "validation asks the cluster nothing");
}

#[test]
fn probes_manifests_and_what_an_apply_would_make_rendered_first() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    let image = format!("{}/demo/web:1", registry.addr);
    let spec_with = |name: &str, manifests: Value| {
        let config = json!({"namespace": "edge", "createNamespace": true, "manifests": manifests});
        erad.spec(
            &format!("{name}-{}.yaml", &era_tests::sha256(config.to_string().as_bytes())[..8]),
            &format!(
                "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  runtime: kubernetes\n  \
                 artifact: {{image: \"{image}\"}}\n  ports: [{{name: http, port: 8080}}]\n  update: {{deadline: 20s}}\n  \
                 health: {{http: {{port: 8080, path: /healthz}}, interval: 2s, timeout: 1s, retries: 3, startPeriod: 10s}}\n  \
                 config: {config}\n"
            ),
        )
    };
    let config_map =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"}, "data": {"mode": "edge"}});
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-secret"}, "stringData": {"key": "s3cr3t-v1"}});
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web-sa"}});
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web-in"},
        "spec": {"podSelector": {"matchLabels": {"era.dev/deployment": "web"}}, "policyTypes": ["Ingress"]}});
    let first = spec_with("web", json!([config_map, secret, account, policy]));

    // Rendered before anything is applied: what an apply would make.
    let r = erad.era(&["validate", "-f", first.to_str().unwrap(), "--render"]);
    assert_eq!(r.code, 0, "{r:?}");
    for file in [
        "--- configmap-web-config.json",
        "--- deployment-web-1.json",
        "--- secret-web-secret.json",
        "--- service-web.json",
    ] {
        assert!(r.stdout.contains(file), "{file}: {}", r.stdout);
    }
    assert!(r.stdout.contains("\"readinessProbe\"") && r.stdout.contains("\"/healthz\""), "{}", r.stdout);
    assert!(
        !r.stdout.contains("s3cr3t-v1") && r.stdout.contains("(redacted: 9 bytes)"),
        "a Secret's values: {}",
        r.stdout
    );
    let j = erad.era(&["-o", "json", "validate", "-f", first.to_str().unwrap(), "--render"]).json();
    assert_eq!(j["rendered"].as_array().unwrap().len(), 6);
    assert!(cluster.server.requests().is_empty(), "rendering asks the cluster nothing");

    // erad runs no probe of its own here: nothing listens on this host's
    // port 8080, the pod's probes are the cluster's business.
    let a = erad.apply_wait(&first);
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let d = cluster.deployment("edge", "web-1").unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3})
    );
    assert_eq!(c["livenessProbe"]["initialDelaySeconds"], 10);
    let cm = cluster.object("configmaps", "edge", "web-config").expect("the ConfigMap");
    assert_eq!(cm["data"]["mode"], "edge");
    assert_eq!(cm["metadata"]["labels"]["era.dev/deployment"], "web");
    assert_eq!(cluster.object("secrets", "edge", "web-secret").unwrap()["data"]["key"], "czNjcjN0LXYx");
    assert!(cluster.object("serviceaccounts", "edge", "web-sa").is_some());
    let np = cluster.object("networkpolicies", "edge", "web-in").expect("the NetworkPolicy, under its API group");
    assert_eq!(np["metadata"]["labels"]["app.kubernetes.io/managed-by"], "era");
    era_tests::eventually(T, || {
        erad.get("web")["outputs"]["objects"]
            == "Deployment/web-1 Service/web ConfigMap/web-config Secret/web-secret ServiceAccount/web-sa NetworkPolicy/web-in"
    });

    // Something a person made with only the deployment's label is not era's:
    // never pruned.
    cluster.put_object(
        "configmaps",
        "edge",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hand-made", "namespace": "edge", "labels": {"era.dev/deployment": "web"}}}),
    );

    // An update without the Secret: applied afresh, the Secret pruned.
    let changed =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"}, "data": {"mode": "lab"}});
    assert_eq!(erad.apply_wait(&spec_with("web", json!([changed]))).code, 0, "{}", erad.log());
    assert_eq!(cluster.object("configmaps", "edge", "web-config").unwrap()["data"]["mode"], "lab");
    assert!(cluster.object("secrets", "edge", "web-secret").is_none(), "a manifest the revision no longer has goes");
    assert!(cluster.object("networkpolicies", "edge", "web-in").is_none());

    // Another deployment does not take web's ConfigMap over.
    let other = erad.spec(
        "other.yaml",
        &format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: other}}\nspec:\n  runtime: kubernetes\n  \
             artifact: {{image: \"{image}\"}}\n  update: {{deadline: 20s}}\n  config: {}\n",
            json!({"namespace": "edge", "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"}, "data": {"mode": "mine"}}]})
        ),
    );
    assert_ne!(erad.apply_wait(&other).code, 0);
    let got = erad.wait_for_state("other", "Failed", T);
    assert!(got["message"].as_str().unwrap().contains("exists and is not this deployment's"), "{got}");
    assert_eq!(cluster.object("configmaps", "edge", "web-config").unwrap()["data"]["mode"], "lab");

    // Refused at validation: a kind era does not apply, another namespace.
    for (m, why) in [
        (json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"}}]), "not a kind era applies"),
        (
            json!([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "x"}}]),
            "not a kind era applies",
        ),
        (
            json!([{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token", "metadata": {"name": "x"}}]),
            "mint a token",
        ),
        (
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube-system"}}]),
            "not the deployment's",
        ),
    ] {
        let v = erad.era(&["validate", "-f", spec_with("bad", m).to_str().unwrap()]);
        assert!(v.code != 0 && v.stderr.contains(why), "{v:?}");
    }

    // With the last revision, every manifest goes; what a person made stays.
    assert_eq!(erad.era(&["delete", "web", "--wait"]).code, 0, "{}", erad.log());
    assert!(cluster.object("configmaps", "edge", "web-config").is_none());
    assert!(cluster.object("configmaps", "edge", "hand-made").is_some());
}

#[test]
fn a_throttled_request_is_retried_after_the_time_the_server_asks() {
    let registry = Registry::start();
    registry.push_busybox("demo/web", "1", &["/bin/sleep", "600"], &[]);
    let cluster = Cluster::start(TOKEN);
    let (erad, _dir) = erad_for(&cluster);
    let s = spec(
        &erad,
        "web",
        &format!("{}/demo/web:1", registry.addr),
        json!({"namespace": "edge", "createNamespace": true}),
    );
    assert_eq!(erad.apply_wait(&s).code, 0);
    cluster.answered.lock().unwrap().clear();
    cluster.throttle.store(2, std::sync::atomic::Ordering::SeqCst);
    let stop = erad.era(&["stop", "web", "--wait"]);
    assert_eq!(stop.code, 0, "{stop:?}\n{}", erad.log());
    let answered = cluster.answered.lock().unwrap().clone();
    let first = answered.iter().position(|(_, s)| *s == 429).expect("a 429");
    assert_eq!(answered.iter().filter(|(_, s)| *s == 429).count(), 2);
    // Each retry came after the Retry-After: 1 (erad's own first retry
    // would come after 0.5 s).
    for i in [first, first + 1] {
        let after = answered[i + 1].0.duration_since(answered[i].0);
        assert!(after >= Duration::from_millis(900), "retried after {after:?}");
    }
    assert!(!erad.history("web").iter().any(|e| e["cause"].as_str().unwrap_or("").contains("429")));

    // A token without rights on the manifests' kinds still updates and
    // deletes a deployment that never had manifests.
    *cluster.forbidden.lock().unwrap() =
        ["configmaps", "secrets", "serviceaccounts", "networkpolicies"].map(String::from).to_vec();
    let s2 = spec(&erad, "web", &format!("{}/demo/web:1", registry.addr), json!({"namespace": "edge", "replicas": 2}));
    assert_eq!(erad.apply_wait(&s2).code, 0, "{}", erad.log());
    assert_eq!(erad.era(&["delete", "web", "--wait"]).code, 0, "{}", erad.log());
}
