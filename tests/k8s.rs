//! A Kubernetes API test server: the slice of the API the `kubernetes`
//! plugin uses, behaving as the API documentation says, since no cluster can
//! run here.
//!
//! - Bearer-token authentication: anything else is `401` with a `Status`.
//! - Namespaces (`/api/v1/namespaces/NAME`) and apps/v1 Deployments
//!   (`/apis/apps/v1/namespaces/NS/deployments/NAME`): `GET`, server-side
//!   apply (`PATCH` with `application/apply-patch+yaml` and a
//!   `fieldManager`; any other content type is `415`), `DELETE`.
//! - Server-side apply tracks which field manager owns each field (as
//!   `metadata.managedFields`); applying a different value to a field
//!   another manager owns is `409 Conflict` naming that manager, unless
//!   `force=true`, which takes the field over.
//! - `fieldValidation=Strict`: every body is checked against the v1.33
//!   OpenAPI schema of its kind (through the types k8s-openapi generates
//!   from it): an unknown field is `400` (`strict decoding error: unknown
//!   field "..."`), a value of the wrong type or another kind too.
//! - `metadata.generation` goes up when the spec changes, `resourceVersion`
//!   on every write. A controller brings `status` along over time: observed
//!   generation, then replicas updated and available; an image whose
//!   repository contains `stuck` never becomes available and gets
//!   `Progressing=False, reason ProgressDeadlineExceeded`.
//! - `DELETE` with `propagationPolicy=Foreground` marks the object
//!   (`deletionTimestamp`, the `foregroundDeletion` finalizer) and removes it
//!   once its pods would be gone; `GET` of a missing object is `404`.
//! - core/v1 Services (server-side apply, a cluster IP assigned once, GET,
//!   DELETE), label-selected Deployment and Pod lists (a scaled-down pod
//!   stays Terminating for a while and is still listed), and paused
//!   Deployments (no rollout, no pods, until unpaused).
//! - ConfigMaps, Secrets (`stringData` folded into base64 `data`),
//!   ServiceAccounts, PersistentVolumeClaims, NetworkPolicies, Roles and
//!   RoleBindings: server-side apply, GET, DELETE, label-selected lists.
//! - `429` with `Retry-After` for the next N requests (`throttle`).
//! - Errors are `Status` objects (`kind: Status`, `reason`, `code`, `message`).

use crate::httpd::{Request, Response, Server};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the controller takes to notice a new generation, and to bring
/// the replicas up (or, for a foreground delete, to remove the pods).
const OBSERVE: Duration = Duration::from_millis(150);
const ROLL_OUT: Duration = Duration::from_millis(400);
/// How long a scaled-down pod stays Terminating.
const TERMINATE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Object {
    pub body: Value,
    /// Field path (`.spec.replicas`) → the manager that owns it.
    pub owners: BTreeMap<String, String>,
    pub generation: i64,
    changed: Instant,
    deleting: Option<(Instant, String)>,
    /// Whether pods ran before the last change, and how many.
    had_pods: bool,
    had_replicas: i64,
}

#[derive(Default)]
pub struct State {
    pub namespaces: BTreeMap<String, Object>,
    /// (namespace, name) → Deployment.
    pub deployments: BTreeMap<(String, String), Object>,
    /// (namespace, name) → Service.
    pub services: BTreeMap<(String, String), Value>,
    /// (plural, namespace, name) → a ConfigMap or Secret.
    pub objects: BTreeMap<(String, String, String), Value>,
    version: u64,
}

pub struct Cluster {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
    pub token: String,
    /// While set, every DELETE is answered `503` (an API server in trouble).
    pub fail_deletes: Arc<AtomicBool>,
    /// The next this many requests are answered `429` with `Retry-After: 1`
    /// (API Priority and Fairness throttling a client).
    pub throttle: Arc<std::sync::atomic::AtomicU32>,
    /// When each answer went out, and its status.
    pub answered: Arc<Mutex<Vec<(Instant, u16)>>>,
    /// Kinds (by plural) the token may not touch: every request on them is
    /// `403 Forbidden`, as RBAC answers.
    pub forbidden: Arc<Mutex<Vec<String>>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// Separates the keys of a field path (label keys hold dots and slashes).
const SEP: char = '\u{1}';

/// A field path as Kubernetes prints it: `.spec.replicas`.
fn display(path: &str) -> String {
    path.replace(SEP, ".")
}

/// Every leaf of `v` as a field path, the way managedFields lists them.
fn leaves(v: &Value, at: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                leaves(v, &format!("{at}{SEP}{k}"), out);
            }
        }
        _ => {
            out.insert(at.to_string(), v.clone());
        }
    }
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches(SEP).split(SEP).try_fold(v, |v, k| v.get(k))
}

/// Checks `body` against the v1.33 OpenAPI schema of `T`, through the
/// types k8s-openapi generates from it: a field the schema does not have is
/// what `fieldValidation=Strict` refuses (named as the API server names it,
/// `.spec.template.spec.containers[0].foo`), and a value of the wrong type,
/// or another apiVersion/kind, fails to decode.
fn strict<T: serde::de::DeserializeOwned>(body: &Value) -> Result<(), Response> {
    fn k8s_path(p: &serde_ignored::Path<'_>) -> String {
        use serde_ignored::Path;
        match p {
            Path::Root => String::new(),
            Path::Seq { parent, index } => format!("{}[{index}]", k8s_path(parent)),
            Path::Map { parent, key } => format!("{}.{key}", k8s_path(parent)),
            Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
                k8s_path(parent)
            }
        }
    }
    let mut unknown = Vec::new();
    let decoded: Result<T, _> = serde_ignored::deserialize(body.clone(), |p| unknown.push(k8s_path(&p)));
    match (decoded, unknown.first()) {
        (Err(e), _) => Err(status(400, "BadRequest", &format!("the object does not decode: {e}"))),
        (Ok(_), Some(f)) => Err(status(
            400,
            "BadRequest",
            &format!("{f}: strict decoding error: unknown field \"{}\"", f.trim_start_matches('.')),
        )),
        (Ok(_), None) => Ok(()),
    }
}

impl Cluster {
    pub fn start(token: &str) -> Cluster {
        Cluster::start_with_latency(token, Duration::ZERO)
    }

    /// A cluster that answers each request `latency` late (a remote API).
    pub fn start_with_latency(token: &str, latency: Duration) -> Cluster {
        let state = Arc::new(Mutex::new(State::default()));
        let fail_deletes = Arc::new(AtomicBool::new(false));
        let throttle = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let forbidden: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, t, f, th, an, fb) = (
            state.clone(),
            token.to_string(),
            fail_deletes.clone(),
            throttle.clone(),
            answered.clone(),
            forbidden.clone(),
        );
        let server = Server::start(move |req| {
            let denied = {
                let parts: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
                object_route(&parts)
                    .map(|(_, _, plural, ns, _)| (plural, ns))
                    .filter(|(p, _)| fb.lock().unwrap().iter().any(|x| x == p))
            };
            let mut r = if let Some((plural, ns)) = denied {
                status(
                    403,
                    "Forbidden",
                    &format!(
                        "{plural} is forbidden: User \"system:serviceaccount:era:era\" cannot list resource \"{plural}\" in API group \"\" in the namespace \"{ns}\""
                    ),
                )
            } else if req.method == "DELETE" && f.load(Ordering::SeqCst) {
                status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            } else if th.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                status(429, "TooManyRequests", "Too many requests, please try again later.").header("retry-after", "1")
            } else {
                handle(&s, &t, req)
            };
            an.lock().unwrap().push((Instant::now(), r.status));
            r.delay += latency;
            r
        });
        Cluster { server, state, token: token.to_string(), fail_deletes, throttle, answered, forbidden }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The Deployment as a GET would show it now.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        settle(&mut st);
        st.deployments.get(&(namespace.to_string(), name.to_string())).map(shown)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().services.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Puts an object there as someone else would (a person with kubectl).
    pub fn put_object(&self, plural: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.state.lock().unwrap().objects.insert((plural.to_string(), namespace.to_string(), name), object);
    }

    /// A ConfigMap (`configmaps`) or Secret (`secrets`).
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// The pods a label selector selects in `namespace`, Terminating ones included.
    pub fn pods(&self, namespace: &str, selector: &str) -> usize {
        let mut st = self.state.lock().unwrap();
        settle(&mut st);
        pods(&st, namespace, selector).len()
    }

    pub fn deployment_names(&self, namespace: &str) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        settle(&mut st);
        st.deployments.keys().filter(|(ns, _)| ns == namespace).map(|(_, n)| n.clone()).collect()
    }

    /// Applies `object` as another field manager would (`kubectl`, an HPA...).
    pub fn apply_as(&self, manager: &str, namespace: &str, name: &str, object: Value) -> Response {
        let mut st = self.state.lock().unwrap();
        apply_deployment(&mut st, manager, namespace, name, object, false)
    }
}

/// Removes what a foreground delete has finished with.
fn settle(st: &mut State) {
    st.deployments.retain(|_, o| o.deleting.as_ref().is_none_or(|(t, _)| t.elapsed() < ROLL_OUT));
}

/// The object with its status as the controller has brought it so far.
fn shown(o: &Object) -> Value {
    let mut v = o.body.clone();
    let want = v["spec"]["replicas"].as_i64().unwrap_or(1);
    let image = v["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["image"].as_str())
        .unwrap_or("")
        .to_string();
    let since = o.changed.elapsed();
    // As the API server writes them: per manager, its fields as a FieldsV1
    // tree (`{"f:spec": {"f:replicas": {}}}`).
    let managed: Vec<Value> = {
        let mut by: BTreeMap<&str, Value> = BTreeMap::new();
        for (path, m) in &o.owners {
            let mut at = by.entry(m.as_str()).or_insert_with(|| json!({}));
            for key in path.trim_start_matches(SEP).split(SEP) {
                at = at.as_object_mut().expect("an object").entry(format!("f:{key}")).or_insert_with(|| json!({}));
            }
        }
        by.into_iter()
            .map(|(m, fields)| {
                json!({"manager": m, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields})
            })
            .collect()
    };
    v["metadata"]["generation"] = json!(o.generation);
    v["metadata"]["managedFields"] = json!(managed);
    if let Some((_, at)) = &o.deleting {
        v["metadata"]["deletionTimestamp"] = json!(at);
        v["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    }
    if v["kind"] == "Deployment" && v["spec"]["paused"] == true {
        // No rollout while paused: no new ReplicaSet, no pods.
        v["status"] = json!({"observedGeneration": if since >= OBSERVE { o.generation } else { o.generation - 1 },
            "replicas": 0, "conditions": [{"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused"}]});
    } else if v["kind"] == "Deployment" {
        let observed = if since >= OBSERVE { o.generation } else { o.generation - 1 };
        let stuck = image.split('@').next().unwrap_or("").contains("stuck");
        let up = since >= ROLL_OUT && !stuck;
        let mut status = json!({
            "observedGeneration": observed,
            "replicas": if up || want == 0 { want } else { want.min(1) },
            "updatedReplicas": if since >= OBSERVE { want } else { 0 },
            "readyReplicas": if up { want } else { 0 },
            "availableReplicas": if up { want } else { 0 },
        });
        if stuck && since >= ROLL_OUT {
            status["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet has timed out progressing: image {image} cannot be pulled")}]);
        }
        v["status"] = status;
    }
    v
}

fn apply_deployment(st: &mut State, manager: &str, ns: &str, name: &str, object: Value, force: bool) -> Response {
    if !st.namespaces.contains_key(ns) {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    if object["apiVersion"] != "apps/v1" || object["kind"] != "Deployment" {
        return status(400, "BadRequest", "the object is not an apps/v1 Deployment");
    }
    if object["metadata"]["name"] != name {
        return status(400, "BadRequest", "the name of the object does not match the name on the URL");
    }
    if let Err(refused) = strict::<k8s_openapi::api::apps::v1::Deployment>(&object) {
        return refused;
    }
    let key = (ns.to_string(), name.to_string());
    let mut applied = BTreeMap::new();
    leaves(&object, "", &mut applied);
    applied.remove(&format!("{SEP}apiVersion"));
    applied.remove(&format!("{SEP}kind"));
    st.version += 1;
    let version = st.version;
    match st.deployments.get_mut(&key) {
        Some(o) if o.deleting.is_some() => {
            status(409, "Conflict", &format!("deployments.apps \"{name}\" is being deleted"))
        }
        Some(o) => {
            let conflicts: Vec<String> = applied
                .iter()
                .filter(|(path, value)| {
                    o.owners.get(*path).is_some_and(|m| m != manager) && get_path(&o.body, path) != Some(*value)
                })
                .map(|(path, _)| format!("conflict with \"{}\" using apps/v1: {}", o.owners[path], display(path)))
                .collect();
            if !conflicts.is_empty() && !force {
                return status(
                    409,
                    "Conflict",
                    &format!(
                        "Apply failed with {} conflict{}: {}",
                        conflicts.len(),
                        if conflicts.len() == 1 { "" } else { "s" },
                        conflicts.join("; ")
                    ),
                );
            }
            let spec_before = o.body["spec"].clone();
            // Fields this manager owned and no longer applies are removed.
            let dropped: Vec<String> = o
                .owners
                .iter()
                .filter(|(p, m)| m.as_str() == manager && !applied.contains_key(*p))
                .map(|(p, _)| p.clone())
                .collect();
            for p in dropped {
                o.owners.remove(&p);
            }
            for path in applied.keys() {
                o.owners.insert(path.clone(), manager.to_string());
            }
            merge(&mut o.body, &object);
            o.body["metadata"]["resourceVersion"] = json!(version.to_string());
            if o.body["spec"] != spec_before {
                o.had_replicas =
                    if spec_before["paused"] == true { 0 } else { spec_before["replicas"].as_i64().unwrap_or(1) };
                o.had_pods = o.had_replicas > 0;
                o.generation += 1;
                o.changed = Instant::now();
            }
            Response::json(200, &shown(o))
        }
        None => {
            let mut body = object.clone();
            body["metadata"]["resourceVersion"] = json!(version.to_string());
            body["metadata"]["uid"] = json!(format!("uid-{version}"));
            let o = Object {
                body,
                owners: applied.keys().map(|p| (p.clone(), manager.to_string())).collect(),
                generation: 1,
                changed: Instant::now(),
                deleting: None,
                had_pods: false,
                had_replicas: 0,
            };
            let r = Response::json(201, &shown(&o));
            st.deployments.insert(key, o);
            r
        }
    }
}

/// The pods the Deployments in `ns` have now (Terminating ones included).
fn pods(st: &State, ns: &str, selector: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for ((n, name), o) in &st.deployments {
        if n != ns || !selects(selector, &o.body["spec"]["template"]["metadata"]["labels"]) {
            continue;
        }
        let want = o.body["spec"]["replicas"].as_i64().unwrap_or(1);
        let running = o.body["spec"]["paused"] != true && want > 0 && o.deleting.is_none();
        // Scaled down (or being deleted) within TERMINATE: its pods are Terminating.
        let ended = o.deleting.as_ref().map_or(o.changed, |(t, _)| *t);
        let terminating = !running && ended.elapsed() < TERMINATE && o.had_pods;
        let count = if running {
            want
        } else if terminating {
            o.had_replicas
        } else {
            0
        };
        for i in 0..count {
            let mut pod = json!({"metadata": {"name": format!("{name}-{i}"), "namespace": ns,
                "labels": o.body["spec"]["template"]["metadata"]["labels"]}});
            if terminating {
                pod["metadata"]["deletionTimestamp"] = json!("1970-01-01T00:00:00Z");
            }
            items.push(pod);
        }
    }
    items
}

/// Whether a label selector (`k=v,k2=v2`) selects `labels`.
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|t| {
        let (k, v) = t.split_once('=').unwrap_or((t, ""));
        labels[k] == v
    })
}

/// JSON merge of `from` into `into` (lists replaced whole).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn handle(state: &Mutex<State>, token: &str, req: &Request) -> Response {
    if req.header("authorization") != Some(format!("Bearer {token}").as_str()) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let parts: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
    let mut st = state.lock().unwrap();
    settle(&mut st);
    let manager = req.query("fieldManager");
    let apply_checks = || -> Option<Response> {
        if req.header("content-type") != Some("application/apply-patch+yaml") {
            return Some(status(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {:?}",
                    req.header("content-type").unwrap_or("")
                ),
            ));
        }
        if manager.as_deref().is_none_or(str::is_empty) {
            return Some(status(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        None
    };
    let body = || serde_json::from_slice::<Value>(&req.body);
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns]) => match st.namespaces.get(*ns) {
            Some(o) => Response::json(200, &shown(o)),
            None => status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
        },
        ("PATCH", ["api", "v1", "namespaces", ns]) => {
            if let Some(r) = apply_checks() {
                return r;
            }
            let Ok(obj) = body() else { return status(400, "BadRequest", "the body is not JSON or YAML") };
            if let Err(refused) = strict::<k8s_openapi::api::core::v1::Namespace>(&obj) {
                return refused;
            }
            st.version += 1;
            let version = st.version;
            let o = st.namespaces.entry(ns.to_string()).or_insert_with(|| Object {
                body: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                owners: BTreeMap::new(),
                generation: 1,
                changed: Instant::now(),
                deleting: None,
                had_pods: false,
                had_replicas: 0,
            });
            merge(&mut o.body, &obj);
            o.body["metadata"]["resourceVersion"] = json!(version.to_string());
            Response::json(200, &o.body)
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments"]) => {
            let selector = req.query("labelSelector").unwrap_or_default();
            let items: Vec<Value> = st
                .deployments
                .iter()
                .filter(|((n, _), o)| n == ns && selects(&selector, &o.body["metadata"]["labels"]))
                .map(|(_, o)| shown(o))
                .collect();
            Response::json(
                200,
                &json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
                "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
            let items = pods(&st, ns, &req.query("labelSelector").unwrap_or_default());
            Response::json(200, &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))
        }
        ("GET", ["api", "v1", "namespaces", ns, "services", name]) => {
            match st.services.get(&(ns.to_string(), name.to_string())) {
                Some(v) => Response::json(200, v),
                None => status(404, "NotFound", &format!("services \"{name}\" not found")),
            }
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "services", name]) => {
            if let Some(r) = apply_checks() {
                return r;
            }
            let Ok(obj) = body() else { return status(400, "BadRequest", "the body is not JSON or YAML") };
            if !st.namespaces.contains_key(*ns) {
                return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
            }
            if obj["apiVersion"] != "v1" || obj["kind"] != "Service" || obj["metadata"]["name"] != *name {
                return status(400, "BadRequest", "the object is not the v1 Service on the URL");
            }
            if let Err(refused) = strict::<k8s_openapi::api::core::v1::Service>(&obj) {
                return refused;
            }
            st.version += 1;
            let (version, count) = (st.version, st.services.len());
            let entry = st
                .services
                .entry((ns.to_string(), name.to_string()))
                .or_insert_with(|| json!({"spec": {"clusterIP": format!("10.96.0.{}", 10 + count)}}));
            let ip = entry["spec"]["clusterIP"].clone();
            merge(entry, &obj);
            entry["spec"]["clusterIP"] = ip;
            entry["metadata"]["resourceVersion"] = json!(version.to_string());
            Response::json(200, entry)
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "services", name]) => {
            match st.services.remove(&(ns.to_string(), name.to_string())) {
                Some(_) => Response::json(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                None => status(404, "NotFound", &format!("services \"{name}\" not found")),
            }
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            match st.deployments.get(&(ns.to_string(), name.to_string())) {
                Some(o) => Response::json(200, &shown(o)),
                None => status(404, "NotFound", &format!("deployments.apps \"{name}\" not found")),
            }
        }
        ("PATCH", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            if let Some(r) = apply_checks() {
                return r;
            }
            let Ok(obj) = body() else { return status(400, "BadRequest", "the body is not JSON or YAML") };
            let force = req.query("force").as_deref() == Some("true");
            apply_deployment(&mut st, &manager.unwrap_or_default(), ns, name, obj, force)
        }
        ("DELETE", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            let key = (ns.to_string(), name.to_string());
            let foreground = req.query("propagationPolicy").as_deref() == Some("Foreground");
            match st.deployments.get_mut(&key) {
                None => status(404, "NotFound", &format!("deployments.apps \"{name}\" not found")),
                Some(o) if foreground => {
                    o.deleting.get_or_insert_with(|| {
                        let n = time::OffsetDateTime::now_utc();
                        let at = format!(
                            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                            n.year(),
                            u8::from(n.month()),
                            n.day(),
                            n.hour(),
                            n.minute(),
                            n.second()
                        );
                        (Instant::now(), at)
                    });
                    Response::json(200, &shown(o))
                }
                Some(_) => {
                    st.deployments.remove(&key);
                    Response::json(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                }
            }
        }
        (method, path) if object_route(path).is_some() => {
            let Some((api_version, kind, plural, ns, name)) = object_route(path) else { unreachable!() };
            match (method, name) {
                ("GET", None) => {
                    let selector = req.query("labelSelector").unwrap_or_default();
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|((p, n, _), o)| p == plural && n == ns && selects(&selector, &o["metadata"]["labels"]))
                        .map(|(_, o)| o.clone())
                        .collect();
                    Response::json(
                        200,
                        &json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {}, "items": items}),
                    )
                }
                ("GET", Some(name)) => match st.objects.get(&(plural.to_string(), ns.to_string(), name.to_string())) {
                    Some(o) => Response::json(200, o),
                    None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                },
                ("PATCH", Some(name)) => {
                    if let Some(r) = apply_checks() {
                        return r;
                    }
                    let Ok(obj) = body() else { return status(400, "BadRequest", "the body is not JSON or YAML") };
                    if !st.namespaces.contains_key(ns) {
                        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
                    }
                    if obj["apiVersion"] != api_version || obj["kind"] != kind || obj["metadata"]["name"] != name {
                        return status(
                            400,
                            "BadRequest",
                            &format!("the object is not the {api_version} {kind} on the URL"),
                        );
                    }
                    if let Err(refused) = strict_kind(kind, &obj) {
                        return refused;
                    }
                    st.version += 1;
                    let version = st.version;
                    // An apply replaces what this manager set (one manager here).
                    let mut stored = obj.clone();
                    stored["metadata"]["resourceVersion"] = json!(version.to_string());
                    if kind == "Secret" {
                        // stringData is write-only: the server folds it into data, base64.
                        use base64::Engine;
                        let mut data = stored["data"].as_object().cloned().unwrap_or_default();
                        for (k, v) in stored["stringData"].as_object().cloned().unwrap_or_default() {
                            let b = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                            data.insert(k, json!(b));
                        }
                        stored.as_object_mut().map(|m| m.remove("stringData"));
                        stored["data"] = Value::Object(data);
                    }
                    st.objects.insert((plural.to_string(), ns.to_string(), name.to_string()), stored.clone());
                    Response::json(200, &stored)
                }
                ("DELETE", Some(name)) => {
                    match st.objects.remove(&(plural.to_string(), ns.to_string(), name.to_string())) {
                        Some(_) => {
                            Response::json(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                        }
                        None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                    }
                }
                _ => status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
            }
        }
        _ => status(404, "NotFound", "the server could not find the requested resource"),
    }
}

/// The namespaced kinds this server keeps as plain objects:
/// (apiVersion, kind, plural).
const OBJECT_KINDS: [(&str, &str, &str); 7] = [
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
];

/// `(apiVersion, kind, plural, namespace, name)` of a request for one of
/// [`OBJECT_KINDS`] (a collection when the name is None).
fn object_route<'a>(path: &[&'a str]) -> Option<(&'static str, &'static str, &'static str, &'a str, Option<&'a str>)> {
    let (api_version, rest): (String, &[&str]) = match path {
        ["api", "v1", rest @ ..] => ("v1".into(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (*ns, *plural, None),
        ["namespaces", ns, plural, name] => (*ns, *plural, Some(*name)),
        _ => return None,
    };
    let (a, k, p) = OBJECT_KINDS.iter().find(|(a, _, p)| *a == api_version && *p == plural)?;
    Some((a, k, p, ns, name))
}

/// [`strict`] for one of [`OBJECT_KINDS`].
fn strict_kind(kind: &str, obj: &Value) -> Result<(), Response> {
    use k8s_openapi::api::core::v1 as core;
    match kind {
        "ConfigMap" => strict::<core::ConfigMap>(obj),
        "Secret" => strict::<core::Secret>(obj),
        "ServiceAccount" => strict::<core::ServiceAccount>(obj),
        "PersistentVolumeClaim" => strict::<core::PersistentVolumeClaim>(obj),
        "NetworkPolicy" => strict::<k8s_openapi::api::networking::v1::NetworkPolicy>(obj),
        "Role" => strict::<k8s_openapi::api::rbac::v1::Role>(obj),
        _ => strict::<k8s_openapi::api::rbac::v1::RoleBinding>(obj),
    }
}
