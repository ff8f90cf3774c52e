//! `kubernetes`: each revision as a Kubernetes Deployment, through the API
//! server of an endpoint the operator granted (`grants.http`). erad holds
//! the credential and adds it to every request; this plugin never sees it.
//!
//! - `install`: server-side apply (`application/apply-patch+yaml`,
//!   `fieldManager=era`, `fieldValidation=Strict`, `force` only with
//!   `config.force`) of `NAME-REV` with 0 replicas, image by the digest erad
//!   verified, never the tag; the namespace first with
//!   `config.createNamespace`.
//! - `start`: the same apply with `config.replicas` (default 1). `stop`: with
//!   0 (the Deployment, its namespace and everything else stay).
//! - `status`: the Deployment's rollout as kstatus computes it: the
//!   controller caught up with the generation, the updated and available
//!   replicas at the desired count; `Progressing` with
//!   `ProgressDeadlineExceeded` is unhealthy, with its message.
//! - A `Service` named after the deployment when the spec has ports,
//!   selecting `era.dev/deployment` (only one revision runs at a time, so it
//!   follows updates and rollbacks); its cluster IP and ports are `status`
//!   outputs. It goes with the last revision's Deployment.
//! - `delete`: `propagationPolicy=Foreground`, and waits until it is gone; a
//!   404 is success.
//!
//! Errors as Kubernetes clients read them: 401/403 and a 409 apply conflict
//! (naming the other field manager) are configuration problems; 404 is
//! not-found; 429 and 5xx are `unavailable`, which erad retries with backoff
//! (a 429 or 503 with a short `Retry-After`, 2 s in all at most, is first
//! retried by the plugin after that long, as client-go does).
//!
//! - The spec's `health` becomes the pod's readiness and liveness probes
//!   (http, tcp or exec; erad runs no probe of its own for this runtime,
//!   `runs-probes`).
//! - `config.manifests` (namespaced: ConfigMaps, Secrets, ServiceAccounts,
//!   PersistentVolumeClaims, NetworkPolicies; no RBAC kinds) are applied at
//!   every start, each as field manager `era-NAME`, never over an object
//!   someone else made (unless `config.force`), with era's labels, in the
//!   deployment's namespace; those a revision no longer has are deleted
//!   (never a PersistentVolumeClaim: its data would go), and all go with
//!   the last revision.
//! - `validate` writes every object an apply would make into `rendered/`
//!   (`era validate --render` shows them); `status` lists them as `objects`.
//!
//! Config keys (anything else is refused by `validate`): `endpoint` (a
//! granted endpoint's name; default the only one), `namespace` (default
//! `default`), `createNamespace`, `replicas`, `resources` (a container's
//! `resources`, as Kubernetes takes it), `force`, `manifests`.

use era_plugin_sdk::Probe as WitProbe;
use era_plugin_sdk::http::{self, Request, Response};
use era_plugin_sdk::{ArtifactKind, Error, ExecOutput, Health, PluginInfo, Runtime, Status, Workload, log};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, ExecAction, HTTPGetAction, PodSpec, PodTemplateSpec, Probe as K8sProbe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    endpoint: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    create_namespace: bool,
    replicas: Option<i32>,
    resources: Option<ResourceRequirements>,
    #[serde(default)]
    force: bool,
    /// Objects applied with the revision (ConfigMaps and Secrets).
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

/// A throttled request is retried here only while the waits add up to at
/// most this: a longer `Retry-After` is left to erad's retries
/// (`unavailable`), so it never eats a call's deadline.
const MAX_THROTTLE_WAIT: u64 = 2;

/// The namespaced kinds `config.manifests` may hold: (apiVersion, kind, plural).
/// No RBAC kinds: a spec must not grant itself rights through the
/// operator's cluster credential.
const MANIFEST_KINDS: [(&str, &str, &str); 5] = [
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
];

/// The field manager of a deployment's manifests: its own, so two
/// deployments (or a person) setting the same field of one object conflict
/// (409) instead of taking it from each other.
fn manifest_manager(deployment: &str) -> String {
    format!("era-{deployment}")
}

/// The API path of a kind's collection in a namespace.
fn collection(api_version: &str, plural: &str, namespace: &str) -> String {
    match api_version {
        "v1" => format!("/api/v1/namespaces/{namespace}/{plural}"),
        group => format!("/apis/{group}/namespaces/{namespace}/{plural}"),
    }
}

/// A DNS-1123 subdomain, as Kubernetes names ConfigMaps and Secrets.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// A DNS-1123 label, as Kubernetes names namespaces and Deployments.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Config {
    fn parse(w: &Workload) -> Result<Config, Error> {
        let text = if w.config.trim().is_empty() { "{}" } else { &w.config };
        let c: Config =
            serde_json::from_str(text).map_err(|e| Error::InvalidConfig(format!("kubernetes config: {e}")))?;
        if !dns_label(c.namespace()) {
            return Err(Error::InvalidConfig(format!("config.namespace: {:?} is not a DNS label", c.namespace())));
        }
        if c.replicas.is_some_and(|r| !(0..=10_000).contains(&r)) {
            return Err(Error::InvalidConfig("config.replicas: between 0 and 10000".into()));
        }
        for (i, m) in c.manifests.iter().enumerate() {
            let at = |what: String| Error::InvalidConfig(format!("config.manifests[{i}]: {what}"));
            let (api, kind) = (m["apiVersion"].as_str().unwrap_or(""), m["kind"].as_str().unwrap_or(""));
            if !MANIFEST_KINDS.iter().any(|(a, k, _)| *a == api && *k == kind) {
                let kinds: Vec<String> = MANIFEST_KINDS.iter().map(|(a, k, _)| format!("{a} {k}")).collect();
                return Err(at(format!("{api}/{kind} is not a kind era applies ({})", kinds.join(", "))));
            }
            let name = m["metadata"]["name"].as_str().unwrap_or("");
            if !dns_subdomain(name) {
                return Err(at(format!("metadata.name {name:?} is not a DNS subdomain")));
            }
            if let Some(ns) = m["metadata"]["namespace"].as_str()
                && ns != c.namespace()
            {
                return Err(at(format!("metadata.namespace {ns:?} is not the deployment's ({})", c.namespace())));
            }
            if kind == "Secret" && m["type"] == "kubernetes.io/service-account-token" {
                return Err(at("a service-account-token Secret would mint a token through era's credential".into()));
            }
        }
        Ok(c)
    }

    fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// What `install` made: enough to find it again after a restart of erad.
#[derive(Serialize, Deserialize)]
struct Handle {
    endpoint: String,
    namespace: String,
    name: String,
}

impl Handle {
    /// The handle `install` returned; without one (erad marks a revision
    /// installed before it calls `install`, so a failed install leaves
    /// none), what install would have made, from the workload.
    fn of(text: &str, w: &Workload) -> Result<Handle, Error> {
        if text.trim().is_empty() {
            let c = Config::parse(w)?;
            let endpoint = http::endpoint(c.endpoint.as_deref())?.name;
            return Ok(Handle { endpoint, namespace: c.namespace().to_string(), name: object_name(w)? });
        }
        serde_json::from_str(text).map_err(|e| Error::Failed(format!("kubernetes handle {text:?}: {e}")))
    }
}

/// An IANA service name, as Kubernetes requires of port names.
fn port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// The Deployment of a revision: `NAME-REV`.
fn object_name(w: &Workload) -> Result<String, Error> {
    let name = format!("{}-{}", w.deployment, w.revision);
    if !dns_label(&name) {
        return Err(Error::InvalidConfig(format!(
            "the Deployment name {name:?} (deployment-revision) is not a DNS label of at most 63 characters"
        )));
    }
    Ok(name)
}

fn require_image(w: &Workload) -> Result<(), Error> {
    if w.artifact.kind != ArtifactKind::Image {
        return Err(Error::InvalidConfig("the kubernetes runtime runs images: use an image artifact".into()));
    }
    Ok(())
}

/// The image by the digest erad verified: `repository@sha256:...`.
fn image(w: &Workload) -> Result<String, Error> {
    require_image(w)?;
    let reference = w.artifact.reference.split('@').next().unwrap_or_default();
    let repository = match reference.rfind(':') {
        Some(i) if i > reference.rfind('/').unwrap_or(0) => &reference[..i],
        _ => reference,
    };
    if !w.artifact.digest.starts_with("sha256:") {
        return Err(Error::Failed(format!("the artifact's digest {:?} is not sha256:...", w.artifact.digest)));
    }
    Ok(format!("{repository}@{}", w.artifact.digest))
}

fn labels(w: &Workload, with_revision: bool) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "era".to_string()),
        ("era.dev/deployment".to_string(), w.deployment.clone()),
    ]);
    if with_revision {
        l.insert("era.dev/revision".into(), w.revision.to_string());
    }
    l
}

/// The Deployment era applies for a revision, with `replicas`. Installed
/// paused, so its rollout (and the controller's progress deadline) starts
/// with `start`, not with a scale-up of a rollout already complete.
fn render(w: &Workload, c: &Config, replicas: i32, paused: bool) -> Result<Deployment, Error> {
    let name = object_name(w)?;
    let mut selector = labels(w, true);
    selector.remove("app.kubernetes.io/managed-by");
    // Before a fetch (a validation's rendering) there is no digest yet: the
    // spec's reference shows what will be pinned. An apply always has one
    // (`apply_deployment` insists).
    let image = match w.artifact.digest.is_empty() {
        true => {
            require_image(w)?;
            w.artifact.reference.clone()
        }
        false => image(w)?,
    };
    let container = Container {
        name: "workload".into(),
        image: Some(image),
        env: Some(
            w.env
                .iter()
                .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() })
                .collect(),
        ),
        ports: Some(
            w.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: i32::from(p.port),
                    protocol: Some(p.protocol.to_ascii_uppercase()),
                    ..Default::default()
                })
                .collect(),
        ),
        resources: c.resources.clone(),
        readiness_probe: probe(w, false),
        liveness_probe: probe(w, true),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(c.namespace().to_string()),
            labels: Some(labels(w, true)),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            paused: Some(paused),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(w, true)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(i64::from(w.stop_grace_seconds)),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The spec's probe as the pod's: readiness (the pod is ready once it
/// passes), and liveness (restarted after `retries` failures in a row,
/// from the end of the start period).
fn probe(w: &Workload, liveness: bool) -> Option<K8sProbe> {
    let h = w.health.as_ref()?;
    let secs = |ms: u32| i32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(i32::MAX);
    let mut p = K8sProbe {
        period_seconds: Some(secs(h.interval_ms)),
        timeout_seconds: Some(secs(h.timeout_ms)),
        failure_threshold: Some(i32::try_from(h.retries.max(1)).unwrap_or(i32::MAX)),
        initial_delay_seconds: (liveness && h.start_period_ms > 0).then(|| secs(h.start_period_ms)),
        ..Default::default()
    };
    match h.probe.as_ref()? {
        WitProbe::Http(hp) => {
            p.http_get = Some(HTTPGetAction {
                path: Some(hp.path.clone()),
                port: IntOrString::Int(i32::from(hp.port)),
                ..Default::default()
            })
        }
        WitProbe::Tcp(t) => {
            p.tcp_socket = Some(TCPSocketAction { port: IntOrString::Int(i32::from(t.port)), ..Default::default() })
        }
        WitProbe::Exec(command) => p.exec = Some(ExecAction { command: Some(command.clone()) }),
    }
    Some(p)
}

/// A `config.manifests` object as applied: in the deployment's namespace,
/// with era's labels added to its own.
fn render_manifest(w: &Workload, c: &Config, m: &serde_json::Value) -> (String, serde_json::Value) {
    let mut m = m.clone();
    m["metadata"]["namespace"] = json!(c.namespace());
    let mut l = m["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    for (k, v) in labels(w, false) {
        l.insert(k, json!(v));
    }
    m["metadata"]["labels"] = serde_json::Value::Object(l);
    let (api, _, plural) =
        MANIFEST_KINDS.iter().find(|(a, k, _)| m["apiVersion"] == *a && m["kind"] == *k).unwrap_or(&MANIFEST_KINDS[0]);
    let name = m["metadata"]["name"].as_str().unwrap_or_default().to_string();
    (format!("{}/{name}", collection(api, plural, c.namespace())), m)
}

/// Everything a revision's start applies, as (kind, name, object): the
/// Deployment, the Service when there are ports, and `config.manifests`.
fn rendered(w: &Workload, c: &Config) -> Result<Vec<(String, String, serde_json::Value)>, Error> {
    let d = render(w, c, c.replicas.unwrap_or(1), false)?;
    let mut out = vec![("Deployment".to_string(), object_name(w)?, value(&d)?)];
    if !w.ports.is_empty() {
        out.push(("Service".into(), w.deployment.clone(), value(&render_service(w, c))?));
    }
    for m in &c.manifests {
        let (_, mut obj) = render_manifest(w, c, m);
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        // A Secret's values never go into a rendering (a terminal, a CI log).
        if kind == "Secret" {
            for field in ["data", "stringData"] {
                if let Some(m) = obj[field].as_object_mut() {
                    for v in m.values_mut() {
                        let n = v.as_str().map_or(0, str::len);
                        *v = json!(format!("(redacted: {n} bytes)"));
                    }
                }
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        out.push((kind, name, obj));
    }
    Ok(out)
}

fn value<T: Serialize>(v: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Failed(e.to_string()))
}

/// Whether an object carries both of this deployment's era labels.
fn ours(object: &serde_json::Value, deployment: &str) -> bool {
    let l = &object["metadata"]["labels"];
    l["app.kubernetes.io/managed-by"] == "era" && l["era.dev/deployment"] == deployment
}

/// The deployment's Service: its ports, selecting whichever revision runs.
fn render_service(w: &Workload, c: &Config) -> Service {
    let selector = BTreeMap::from([("era.dev/deployment".to_string(), w.deployment.clone())]);
    Service {
        metadata: ObjectMeta {
            name: Some(w.deployment.clone()),
            namespace: Some(c.namespace().to_string()),
            labels: Some(labels(w, false)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(
                w.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: i32::from(p.port),
                        target_port: Some(IntOrString::Int(i32::from(p.port))),
                        protocol: Some(p.protocol.to_ascii_uppercase()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

struct Api {
    endpoint: http::Endpoint,
}

impl Api {
    fn new(c: &Config) -> Result<Api, Error> {
        Ok(Api { endpoint: http::endpoint(c.endpoint.as_deref())? })
    }

    fn of(h: &Handle) -> Result<Api, Error> {
        Ok(Api { endpoint: http::endpoint(Some(&h.endpoint))? })
    }

    fn deployment_path(namespace: &str, name: &str) -> String {
        format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    }

    fn send(&self, req: Request, verb: &str, what: &str) -> Result<Response, Error> {
        let req = req.header("accept", "application/json").header("user-agent", "era-kubernetes");
        let mut waited = 0;
        loop {
            let r = http::send(&req)?;
            if (200..300).contains(&r.status) {
                return Ok(r);
            }
            // As client-go does: a 429 (or 503) that says when to come back
            // is retried after that long, while the waits stay short; then
            // it is `unavailable`, and erad's own retries take over.
            let after = r.header("retry-after").and_then(|s| s.trim().parse::<u64>().ok());
            match after {
                Some(secs) if matches!(r.status, 429 | 503) && waited + secs.max(1) <= MAX_THROTTLE_WAIT => {
                    waited += secs.max(1);
                    log::info(&format!("{verb} {what}: {} (retry after {secs}s); waiting", r.status));
                    std::thread::sleep(Duration::from_secs(secs.max(1)));
                }
                _ => return Err(api_error(&self.endpoint.name, verb, what, &r)),
            }
        }
    }

    /// Server-side apply of `object` at `path`.
    fn apply(&self, path: &str, object: &serde_json::Value, force: bool, what: &str) -> Result<Response, Error> {
        self.apply_as("era", path, object, force, what)
    }

    /// Server-side apply as `manager`.
    fn apply_as(
        &self,
        manager: &str,
        path: &str,
        object: &serde_json::Value,
        force: bool,
        what: &str,
    ) -> Result<Response, Error> {
        let url = format!(
            "{}{path}?fieldManager={manager}&fieldValidation=Strict{}",
            self.endpoint.url,
            if force { "&force=true" } else { "" }
        );
        let body = serde_json::to_vec(object).map_err(|e| Error::Failed(e.to_string()))?;
        self.send(Request::new("PATCH", url).body("application/apply-patch+yaml", body), "apply", what)
    }

    fn service_path(namespace: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{namespace}/services/{name}")
    }

    /// GET of one object; `None` when the API says 404.
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<Option<T>, Error> {
        match self.send(Request::new("GET", format!("{}{path}", self.endpoint.url)), "get", what) {
            Ok(r) => r.json().map(Some),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DELETE of one object (`query` after the path); a 404 is done.
    fn remove(&self, path: &str, query: &str, what: &str) -> Result<(), Error> {
        match self.send(Request::new("DELETE", format!("{}{path}{query}", self.endpoint.url)), "delete", what) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get_service(&self, namespace: &str, name: &str) -> Result<Option<Service>, Error> {
        self.get(&Api::service_path(namespace, name), &format!("service {namespace}/{name}"))
    }

    /// The names of the deployment's Deployments (every revision's) in the namespace.
    fn revisions(&self, namespace: &str, deployment: &str) -> Result<Vec<String>, Error> {
        let url = format!(
            "{}/apis/apps/v1/namespaces/{namespace}/deployments?labelSelector=era.dev%2Fdeployment%3D{deployment}",
            self.endpoint.url
        );
        let r = self.send(Request::new("GET", url), "list", &format!("deployments of {deployment} in {namespace}"))?;
        let list: k8s_openapi::List<Deployment> = r.json()?;
        Ok(list.items.into_iter().filter_map(|d| d.metadata.name).collect())
    }

    /// The revision's pods, Terminating ones included.
    fn pods(&self, namespace: &str, w: &Workload) -> Result<Vec<String>, Error> {
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/pods?labelSelector=era.dev%2Fdeployment%3D{}%2Cera.dev%2Frevision%3D{}",
            self.endpoint.url, w.deployment, w.revision
        );
        let r = self.send(Request::new("GET", url), "list", &format!("pods of {}-{}", w.deployment, w.revision))?;
        let list: k8s_openapi::List<k8s_openapi::api::core::v1::Pod> = r.json()?;
        Ok(list.items.into_iter().filter_map(|p| p.metadata.name).collect())
    }

    /// Deletes the deployment's `config.manifests` objects (found by its
    /// label) whose paths are not in `keep`.
    ///
    /// Only objects with both of era's labels; never a PersistentVolumeClaim
    /// (its data would go with it, and a rollback would bring it back
    /// empty: remove one by hand). A kind the credential may not list was
    /// never applied with it: nothing to prune there.
    fn prune_manifests(&self, namespace: &str, deployment: &str, keep: &[String]) -> Result<(), Error> {
        for (api, kind, plural) in MANIFEST_KINDS.iter().filter(|(_, k, _)| *k != "PersistentVolumeClaim") {
            let url = format!(
                "{}{}?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dera%2Cera.dev%2Fdeployment%3D{deployment}",
                self.endpoint.url,
                collection(api, plural, namespace)
            );
            let what = format!("{plural} of {deployment} in {namespace}");
            let r = match self.send(Request::new("GET", url), "list", &what) {
                Ok(r) => r,
                Err(Error::InvalidConfig(m) | Error::NotFound(m)) if m.contains(": 403 ") || m.contains(": 404 ") => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let list: serde_json::Value = r.json()?;
            for item in list["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let path = format!("{}/{name}", collection(api, plural, namespace));
                if !name.is_empty() && !keep.contains(&path) {
                    self.remove(&path, "", &format!("{kind} {namespace}/{name}"))?;
                }
            }
        }
        Ok(())
    }

    fn get_deployment(&self, h: &Handle) -> Result<Option<Deployment>, Error> {
        self.get(&Api::deployment_path(&h.namespace, &h.name), &format!("deployment {}/{}", h.namespace, h.name))
    }

    fn apply_deployment(&self, w: &Workload, c: &Config, replicas: i32, paused: bool) -> Result<Handle, Error> {
        // By the digest erad verified, never the tag.
        image(w)?;
        let d = render(w, c, replicas, paused)?;
        let name = object_name(w)?;
        let object = serde_json::to_value(&d).map_err(|e| Error::Failed(e.to_string()))?;
        let path = Api::deployment_path(c.namespace(), &name);
        self.apply(&path, &object, c.force, &format!("deployment {}/{name}", c.namespace()))?;
        Ok(Handle { endpoint: self.endpoint.name.clone(), namespace: c.namespace().to_string(), name })
    }
}

/// A Kubernetes `Status` error as a plugin error, naming the endpoint, the
/// verb and the object.
fn api_error(endpoint: &str, verb: &str, what: &str, r: &Response) -> Error {
    let status: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    // Only a Status object's message: any other body could echo what the
    // request carried, the credential erad added included.
    let message = match (status["kind"].as_str(), status["message"].as_str()) {
        (Some("Status"), Some(m)) => m.chars().take(1000).collect(),
        _ => format!("(a response of {} bytes that is not a Kubernetes Status)", r.body.len()),
    };
    let reason = status["reason"].as_str().unwrap_or("");
    let said = format!("endpoint {endpoint}: {verb} {what}: {} {reason}: {message}", r.status);
    match r.status {
        401 | 403 => Error::InvalidConfig(said),
        404 => Error::NotFound(said),
        409 => Error::InvalidConfig(format!(
            "{said} (another field manager owns these fields; set config.force to take them)"
        )),
        400 | 415 | 422 => Error::InvalidConfig(said),
        429 | 500..=599 => Error::Unavailable(match r.header("retry-after") {
            Some(s) => format!("{said} (retry after {s}s)"),
            None => said,
        }),
        _ => Error::Failed(said),
    }
}

/// kstatus for a Deployment: (running, health, message).
fn rollout(d: &Deployment) -> (bool, Health, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else { return (want > 0, Health::Starting, "no status yet".into()) };
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return (st.replicas.unwrap_or(0) > 0, Health::Unknown, "paused: its rollout has not started".into());
    }
    if st.observed_generation.unwrap_or(0) < generation {
        return (want > 0, Health::Starting, "the controller has not seen the latest generation yet".into());
    }
    let stuck = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = stuck {
        return (
            true,
            Health::Unhealthy,
            format!("ProgressDeadlineExceeded: {}", c.message.clone().unwrap_or_default()),
        );
    }
    if want == 0 {
        let left = st.replicas.unwrap_or(0);
        return (left > 0, Health::Unknown, format!("scaled to 0 ({left} replicas left)"));
    }
    let (updated, available, ready) =
        (st.updated_replicas.unwrap_or(0), st.available_replicas.unwrap_or(0), st.ready_replicas.unwrap_or(0));
    if updated >= want && available >= want && st.replicas.unwrap_or(0) <= want {
        (true, Health::Healthy, format!("{ready}/{want} ready"))
    } else {
        (true, Health::Starting, format!("rolling out: {updated} updated, {available} available of {want}"))
    }
}

/// The Service's cluster IP and ports, which do not change once assigned:
/// asked of the API once per revision and kept in the work dir, so a status
/// check (erad makes one every few seconds) costs one request, not two.
#[derive(Serialize, Deserialize)]
struct ServiceOutputs {
    cluster_ip: String,
    ports: String,
}

const SERVICE_STATE: &str = "service.json";

fn service_outputs(h: &Handle, name: &str) -> Result<Option<ServiceOutputs>, Error> {
    if let Some(known) = era_plugin_sdk::state::read::<ServiceOutputs>(SERVICE_STATE).map_err(Error::Failed)? {
        return Ok(Some(known));
    }
    let Some(svc) = Api::of(h)?.get_service(&h.namespace, name)? else { return Ok(None) };
    let spec = svc.spec.unwrap_or_default();
    let Some(cluster_ip) = spec.cluster_ip.filter(|ip| !ip.is_empty()) else { return Ok(None) };
    let ports: Vec<String> =
        spec.ports.into_iter().flatten().map(|p| format!("{}/{}", p.port, p.protocol.unwrap_or_default())).collect();
    let out = ServiceOutputs { cluster_ip, ports: ports.join(",") };
    era_plugin_sdk::state::write(SERVICE_STATE, &out).map_err(Error::Failed)?;
    Ok(Some(out))
}

struct Kubernetes;

impl Runtime for Kubernetes {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "kubernetes".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "a Kubernetes Deployment per revision, applied server-side through a granted API endpoint"
                .into(),
            runs_probes: true,
        }
    }

    fn validate(w: Workload) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        Api::new(&c)?;
        require_image(&w)?;
        object_name(&w)?;
        // Room for the revision numbers to come: NAME-REV stays a DNS label.
        if w.deployment.len() > 52 {
            return Err(Error::InvalidConfig(format!(
                "the deployment name {:?} is too long for Kubernetes: at most 52 characters leave room for -REV",
                w.deployment
            )));
        }
        if !w.ports.is_empty() && !w.deployment.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Error::InvalidConfig(format!(
                "the Service for the ports is named {:?}, and a Service name starts with a letter",
                w.deployment
            )));
        }
        if let Some(p) = w.ports.iter().find(|p| !port_name(&p.name)) {
            return Err(Error::InvalidConfig(format!(
                "spec.ports: {:?} is not a Kubernetes port name (at most 15 lowercase letters, digits and '-', with a letter)",
                p.name
            )));
        }
        if !w.volumes.is_empty() {
            return Err(Error::InvalidConfig(
                "spec.volumes are host directories; a Kubernetes workload cannot mount them".into(),
            ));
        }
        // What an apply would make, for `era validate --render`.
        let dir = std::path::Path::new(era_plugin_sdk::WORK_DIR).join("rendered");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Failed(format!("rendered/: {e}")))?;
        for (kind, name, obj) in rendered(&w, &Config::parse(&w)?)? {
            let text = serde_json::to_string_pretty(&obj).map_err(|e| Error::Failed(e.to_string()))?;
            let file = dir.join(format!("{}-{name}.json", kind.to_ascii_lowercase()));
            std::fs::write(&file, text + "\n").map_err(|e| Error::Failed(format!("{}: {e}", file.display())))?;
        }
        Ok(())
    }

    fn install(w: Workload) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let api = Api::new(&c)?;
        if c.create_namespace {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": c.namespace(),
                "labels": {"app.kubernetes.io/managed-by": "era"}}});
            api.apply(
                &format!("/api/v1/namespaces/{}", c.namespace()),
                &ns,
                c.force,
                &format!("namespace {}", c.namespace()),
            )?;
        }
        let h = api.apply_deployment(&w, &c, c.replicas.unwrap_or(1), true)?;
        log::info(&format!("deployment {}/{} applied, paused", h.namespace, h.name));
        serde_json::to_string(&h).map_err(|e| Error::Failed(e.to_string()))
    }

    fn start(w: Workload, handle: String) -> Result<String, Error> {
        let c = Config::parse(&w)?;
        let h = Handle::of(&handle, &w)?;
        let api = Api::of(&h)?;
        let replicas = c.replicas.unwrap_or(1);
        api.apply_deployment(&w, &c, replicas, false)?;
        // The Service with this revision's ports (an update or a rollback
        // may change them); its outputs are asked again.
        if !w.ports.is_empty() {
            let svc = serde_json::to_value(render_service(&w, &c)).map_err(|e| Error::Failed(e.to_string()))?;
            let path = Api::service_path(c.namespace(), &w.deployment);
            api.apply(&path, &svc, c.force, &format!("service {}/{}", c.namespace(), w.deployment))?;
            era_plugin_sdk::state::remove(SERVICE_STATE).map_err(Error::Failed)?;
        }
        // This revision's manifests, and none another revision left.
        let mut keep = Vec::new();
        for m in &c.manifests {
            let (path, obj) = render_manifest(&w, &c, m);
            let what = format!(
                "{} {}/{}",
                obj["kind"].as_str().unwrap_or(""),
                c.namespace(),
                obj["metadata"]["name"].as_str().unwrap_or("")
            );
            // An object someone else made is not taken over (and later
            // pruned) unless the operator says so.
            if !c.force
                && let Some(existing) = api.get::<serde_json::Value>(&path, &what)?
                && !ours(&existing, &w.deployment)
            {
                return Err(Error::InvalidConfig(format!(
                    "{what} exists and is not this deployment's (no era.dev/deployment={} label): rename it in config.manifests, or set config.force to take it over",
                    w.deployment
                )));
            }
            api.apply_as(&manifest_manager(&w.deployment), &path, &obj, c.force, &what)?;
            keep.push(path);
        }
        if !c.manifests.is_empty() || w.revision > 1 {
            api.prune_manifests(c.namespace(), &w.deployment, &keep)?;
        }
        log::info(&format!("deployment {}/{} scaled to {replicas}", h.namespace, h.name));
        Ok(handle)
    }

    fn status(w: Workload, handle: String) -> Result<Status, Error> {
        let h = Handle::of(&handle, &w)?;
        let Some(d) = Api::of(&h)?.get_deployment(&h)? else {
            return Ok(Status::missing(format!("deployment {}/{} does not exist", h.namespace, h.name)));
        };
        let (running, health, message) = rollout(&d);
        let mut st = Status { running, health, exit_code: None, message, outputs: Vec::new() };
        let c = Config::parse(&w)?;
        let objects: Vec<String> = rendered(&w, &c)?.into_iter().map(|(k, n, _)| format!("{k}/{n}")).collect();
        st.outputs = vec![
            ("namespace".into(), h.namespace.clone()),
            ("deployment".into(), h.name.clone()),
            ("objects".into(), objects.join(" ")),
            ("readyReplicas".into(), d.status.and_then(|s| s.ready_replicas).unwrap_or(0).to_string()),
        ];
        if !w.ports.is_empty()
            && let Some(svc) = service_outputs(&h, &w.deployment)?
        {
            st.outputs.push(("service".into(), w.deployment.clone()));
            st.outputs.push(("clusterIP".into(), svc.cluster_ip));
            st.outputs.push(("ports".into(), svc.ports));
        }
        Ok(st)
    }

    fn stop(w: Workload, handle: String) -> Result<(), Error> {
        let c = Config::parse(&w)?;
        let h = Handle::of(&handle, &w)?;
        let api = Api::of(&h)?;
        if api.get_deployment(&h)?.is_none() {
            return Ok(());
        }
        api.apply_deployment(&w, &c, 0, false)?;
        // Stopped once the controller has seen the scale-down and no pod of
        // the revision is left, Terminating ones included (`status.replicas`
        // leaves those out): the next revision must not overlap it.
        let within = Duration::from_secs(u64::from(w.stop_grace_seconds) + 30);
        let gone = era_plugin_sdk::wait_until(within, || {
            let caught_up = api.get_deployment(&h)?.is_none_or(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
                    && st.replicas.unwrap_or(0) == 0
            });
            Ok::<_, Error>(caught_up && api.pods(&h.namespace, &w)?.is_empty())
        })?;
        if !gone {
            return Err(Error::Unavailable(format!(
                "deployment {}/{} still has replicas after {within:?}",
                h.namespace, h.name
            )));
        }
        log::info(&format!("deployment {}/{} scaled to 0", h.namespace, h.name));
        Ok(())
    }

    fn delete(w: Workload, handle: String) -> Result<(), Error> {
        let h = Handle::of(&handle, &w)?;
        let api = Api::of(&h)?;
        let what = format!("deployment {}/{}", h.namespace, h.name);
        api.remove(&Api::deployment_path(&h.namespace, &h.name), "?propagationPolicy=Foreground", &what)?;
        // Foreground deletion: the object stays until its pods are gone.
        let gone =
            era_plugin_sdk::wait_until(Duration::from_secs(60), || Ok::<_, Error>(api.get_deployment(&h)?.is_none()))?;
        if !gone {
            return Err(Error::Unavailable(format!("deployment {}/{} is still being deleted", h.namespace, h.name)));
        }
        log::info(&format!("deployment {}/{} deleted", h.namespace, h.name));
        // The Service goes with the last revision.
        if api.revisions(&h.namespace, &w.deployment)?.is_empty() {
            let what = format!("service {}/{}", h.namespace, w.deployment);
            api.remove(&Api::service_path(&h.namespace, &w.deployment), "", &what)?;
            api.prune_manifests(&h.namespace, &w.deployment, &[])?;
        }
        Ok(())
    }

    fn exec(_w: Workload, _handle: String, _command: Vec<String>, _timeout_ms: u32) -> Result<ExecOutput, Error> {
        era_plugin_sdk::exec_unsupported("kubernetes")
    }
}

era_plugin_sdk::export_plugin!(Kubernetes);
