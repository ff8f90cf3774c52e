//! The `http` capability, driven by the http fixture (`plugins/fixtures/http`)
//! against real HTTP servers on loopback: what is granted goes out with the
//! host's credential, everything else is refused before it leaves, bodies
//! and times are capped, TLS is checked, and no secret reaches the plugin,
//! the log or the data dir.

use era_tests::httpd::{Response, Server, Tls};
use era_tests::{Erad, plugin};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "era-test-bearer-7f3a9c0d";

fn handler(req: &era_tests::httpd::Request) -> Response {
    match req.path().rsplit('/').next().unwrap_or("") {
        "ok" => Response::text(200, "ok"),
        // Names only: a server that echoed the credential back would hand it
        // to the plugin, which the host cannot prevent.
        "echo" => Response::json(200, &json!(req.headers.iter().map(|(k, _)| k).collect::<Vec<_>>())),
        "cookie" => Response::text(200, "here").header("set-cookie", format!("session=s-{TOKEN}").as_str()),
        "redirect" => Response::text(302, "elsewhere").header("location", "http://127.0.0.1:1/stolen"),
        "big" => Response::new(200, "application/octet-stream", vec![b'b'; 2 << 20]),
        "slow" => {
            let mut r = Response::text(200, "late");
            r.delay = Duration::from_secs(6);
            r
        }
        _ => Response::text(404, "no such thing"),
    }
}

fn config(endpoints: &str) -> String {
    format!(
        "[plugins.http]\npath = \"{}\"\n[plugins.http.grants]\nlog = true\n{endpoints}\n[plugins.noop]\npath = \"{}\"\ngrants = {{ log = true }}\n",
        plugin::HTTP,
        plugin::NOOP
    )
}

/// Applies a deployment of the http fixture that sends `requests`, and
/// returns what it wrote (`endpoints`, `results`).
fn run(erad: &Erad, name: &str, requests: Value) -> Value {
    let spec = erad.deployment(name, "http", name, &format!("  config: {}\n", json!({"requests": requests})));
    let a = erad.apply_wait(&spec);
    assert_eq!(a.code, 0, "{a:?}\n{}", erad.log());
    let out = erad.data_dir().join(format!("deployments/{name}/rev-1/http-results.json"));
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

fn error_of(result: &Value) -> String {
    result["error"].as_str().unwrap_or_else(|| panic!("expected an error, got {result}")).to_string()
}

/// Every file under `dir` (the store included), for a secret that must not be there.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (p, t) = (e.path(), e.file_type().unwrap());
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn only_granted_urls_go_out_and_they_carry_the_hosts_credential() {
    let server = Server::start(handler);
    let decoy = Server::start(handler);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: c\n  cluster: {{server: \"{}/kube\"}}\n\
             users:\n- name: u\n  user: {{token: kube-{TOKEN}}}\ncontexts:\n- name: test\n  context: {{cluster: c, user: u}}\n",
            server.url()
        ),
    )
    .unwrap();
    let erad = Erad::start_with(
        &config(&format!(
            "[plugins.http.grants.http.endpoints.api]\nurl = \"{}/api\"\ntoken_file = \"{}\"\ntimeout = \"2s\"\n\
             max_response_bytes = 1048576\nmax_request_bytes = 1024\n\
             [plugins.http.grants.http.endpoints.kube]\nkubeconfig = \"{}\"\n",
            server.url(),
            token.display(),
            kubeconfig.display()
        )),
        &[],
    );
    let root = server.url();
    let requests = json!([
        {"url": "{endpoint:api}/ok"},
        {"url": "{endpoint:api}/echo"},
        {"url": format!("{}/api/ok", decoy.url())},
        {"url": format!("{root}/admin/ok")},
        {"url": format!("{root}/apix/ok")},
        {"url": "{endpoint:api}/../admin/ok"},
        {"url": "{endpoint:api}/%2e%2e/admin/ok"},
        {"url": format!("https://127.0.0.1:{}/api/ok", server.addr.port())},
        {"url": "{endpoint:api}/ok", "headers": [["authorization", "Bearer guest-made"]]},
        {"url": "{endpoint:api}/ok", "headers": [["Cookie", "session=1"]]},
        {"url": "{endpoint:api}/ok", "headers": [["proxy-authorization", "Basic eA=="]]},
        {"url": "{endpoint:api}/big"},
        {"method": "POST", "url": "{endpoint:api}/ok", "bodyBytes": 4096},
        {"url": "{endpoint:api}/slow"},
        {"url": "{endpoint:kube}/ok"},
        {"url": "{endpoint:api}/redirect"},
        {"method": "TRACE", "url": "{endpoint:api}/ok"},
        {"url": "{endpoint:api}/cookie"},
        {"url": "{endpoint:api}/ok", "headers": [["impersonate-user", "system:admin"]]},
        {"url": "{endpoint:api}/..;/admin/ok"},
    ]);
    let out = run(&erad, "probe", requests);
    assert_eq!(
        out["endpoints"],
        json!([{"name": "api", "url": format!("{root}/api")}, {"name": "kube", "url": format!("{root}/kube")}]),
        "the plugin learns names and URLs, nothing more"
    );
    let r = out["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], 200);
    assert_eq!(r[0]["body"], "ok");
    let echoed: Vec<String> = serde_json::from_str(r[1]["body"].as_str().unwrap()).unwrap();
    assert!(echoed.contains(&"authorization".to_string()), "the server got one: {echoed:?}");
    for (i, why) in [
        (2, "another server"),
        (3, "outside the prefix"),
        (4, "a prefix lookalike"),
        (5, "a .. segment"),
        (6, "an encoded .."),
        (7, "another scheme"),
    ] {
        assert_eq!(error_of(&r[i]), "Denied", "request {i} ({why}): {}", r[i]);
    }
    for i in [8, 9, 10] {
        assert!(error_of(&r[i]).starts_with("Forbidden"), "request {i}: {}", r[i]);
    }
    assert!(error_of(&r[11]).starts_with("TooLarge"), "a 2 MiB response over the 1 MiB cap: {}", r[11]);
    assert!(error_of(&r[12]).starts_with("TooLarge"), "a 4 KiB request body over the 1 KiB cap: {}", r[12]);
    assert_eq!(error_of(&r[13]), "Timeout", "{}", r[13]);
    assert_eq!(r[14]["status"], 200, "{}", r[14]);
    assert_eq!(r[15]["status"], 302, "a redirect is the plugin's to see, not followed: {}", r[15]);
    assert_eq!(error_of(&r[16]), "Denied", "TRACE would echo the credential back: {}", r[16]);
    assert_eq!(r[17]["status"], 200);
    assert!(
        !r[17]["headers"].as_array().unwrap().iter().any(|h| h == "set-cookie"),
        "a session cookie is a credential: {}",
        r[17]
    );
    assert!(error_of(&r[18]).starts_with("Forbidden"), "impersonation is the host's to refuse: {}", r[18]);
    assert_eq!(error_of(&r[19]), "Denied", "..; is .. to some servers: {}", r[19]);

    // What reached the servers: the granted requests only, each with the
    // host's credential and never the plugin's.
    let seen = server.requests();
    let paths: Vec<&str> = seen.iter().map(|q| q.target.as_str()).collect();
    assert_eq!(
        paths,
        ["/api/ok", "/api/echo", "/api/big", "/api/slow", "/kube/ok", "/api/redirect", "/api/cookie"],
        "{seen:?}"
    );
    for q in seen.iter().filter(|q| q.target.starts_with("/api/")) {
        assert_eq!(q.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()), "{q:?}");
        assert_eq!(q.header("cookie"), None);
        assert_eq!(q.header("host"), Some(format!("127.0.0.1:{}", server.addr.port()).as_str()));
    }
    assert_eq!(seen[4].header("authorization"), Some(format!("Bearer kube-{TOKEN}").as_str()), "from the kubeconfig");
    assert!(decoy.requests().is_empty(), "nothing reached a server that was not granted");
    assert!(erad.log().contains("http request denied"), "erad says what it refused");

    // No secret in erad's log, its store or any file it wrote, nor in what era shows.
    assert!(!erad.log().contains(TOKEN));
    assert_eq!(files_containing(&erad.data_dir(), TOKEN), Vec::<std::path::PathBuf>::new());
    for args in [vec!["-o", "json", "get", "probe"], vec!["-o", "json", "history", "probe"], vec!["plugins"]] {
        let a = erad.era(&args);
        assert!(!a.stdout.contains(TOKEN) && !a.stderr.contains(TOKEN), "{args:?}: {a:?}");
    }
}

#[test]
fn a_slow_endpoint_holds_up_only_its_own_deployment() {
    let server = Server::start(handler);
    let erad = Erad::start_with(
        &config(&format!("[plugins.http.grants.http.endpoints.api]\nurl = \"{}\"\ntimeout = \"20s\"\n", server.url())),
        &[],
    );
    let spec = erad.deployment(
        "waits",
        "http",
        "waits",
        &format!("  config: {}\n", json!({"requests": [{"url": "{endpoint}/slow"}]})),
    );
    let waiting = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(waiting.code, 0, "{waiting:?}");
    era_tests::eventually(Duration::from_secs(10), || server.requests().iter().any(|q| q.target == "/slow"));
    // While that request waits for its answer, another deployment goes all the way.
    assert_eq!(erad.apply_wait(&erad.deployment("other", "noop", "v1", "")).code, 0);
    assert_eq!(erad.get("waits")["state"], "Installing", "the slow one is still waiting for its server");
    erad.wait_for_state("waits", "Running", Duration::from_secs(30));
    let out = erad.data_dir().join("deployments/waits/rev-1/http-results.json");
    let out: Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(out["results"][0]["body"], "late");
}

#[test]
fn tls_endpoints_check_the_ca_or_the_pin_and_present_the_client_certificate() {
    let tls = Tls::new(true);
    let server = Server::start_tls(&tls, handler);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = write("ca.pem", &tls.ca_pem);
    let (cert, key) = tls.client();
    let (cert, key) = (write("client.pem", &cert), write("client.key", &key));
    let other = Tls::new(false);
    let wrong_ca = write("other-ca.pem", &other.ca_pem);
    let url = server.url();
    let erad = Erad::start_with(
        &config(&format!(
            "[plugins.http.grants.http.endpoints.ca]\nurl = \"{url}/ca\"\nca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
             [plugins.http.grants.http.endpoints.pin]\nurl = \"{url}/pin\"\npinned_sha256 = \"{}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
             [plugins.http.grants.http.endpoints.wrongpin]\nurl = \"{url}/wrongpin\"\npinned_sha256 = \"{}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
             [plugins.http.grants.http.endpoints.wrongca]\nurl = \"{url}/wrongca\"\nca_file = \"{wrong_ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
             [plugins.http.grants.http.endpoints.nocert]\nurl = \"{url}/nocert\"\nca_file = \"{ca}\"\n",
            tls.fingerprint(),
            other.fingerprint(),
        )),
        &[],
    );
    let out = run(
        &erad,
        "tls",
        json!([
            {"url": "{endpoint:ca}/ok"},
            {"url": "{endpoint:pin}/ok"},
            {"url": "{endpoint:wrongpin}/ok"},
            {"url": "{endpoint:wrongca}/ok"},
            {"url": "{endpoint:nocert}/ok"},
        ]),
    );
    let r = out["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], 200, "checked against the CA: {}", r[0]);
    assert_eq!(r[1]["status"], 200, "the pinned certificate: {}", r[1]);
    assert!(error_of(&r[2]).contains("TlsCertificateError"), "another pin: {}", r[2]);
    assert!(error_of(&r[3]).contains("TlsCertificateError"), "another CA: {}", r[3]);
    assert!(error_of(&r[4]).starts_with("Unreachable"), "the server wants a client certificate: {}", r[4]);
    let seen = server.requests();
    let paths: Vec<&str> = seen.iter().map(|q| q.target.as_str()).collect();
    assert_eq!(paths, ["/ca/ok", "/pin/ok"]);
    assert!(seen.iter().all(|q| q.client_cert), "erad presented the client certificate");
}

#[test]
fn wasi_http_without_the_grant_is_refused_at_load_and_bad_grants_name_their_key() {
    let no_grant = format!("[plugins.http]\npath = \"{}\"\ngrants = {{ log = true }}\n", plugin::HTTP);
    let msg = Erad::try_start_with(&no_grant, &[]).err().expect("erad must refuse to start");
    assert!(
        msg.contains("plugin http: imports") && msg.contains("which is not granted") && msg.contains("\"http\""),
        "{msg}"
    );
    let missing = config(
        "[plugins.http.grants.http.endpoints.api]\nurl = \"https://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n",
    );
    let msg = Erad::try_start_with(&missing, &[]).err().expect("erad must refuse to start");
    assert!(msg.contains("grants.http.endpoints.api: cannot read /nonexistent/token"), "{msg}");
    let plain = config("[plugins.http.grants.http.endpoints.api]\nurl = \"http://192.0.2.1:8080\"\n");
    let msg = Erad::try_start_with(&plain, &[]).err().expect("erad must refuse to start");
    assert!(
        msg.contains("plugins.http.grants.http.endpoints.api.url") && msg.contains("plain http only to a loopback"),
        "{msg}"
    );
}

#[test]
fn a_plan_fails_closed_when_an_endpoint_its_runtime_needs_cannot_be_reached() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let erad = Erad::start_with(
        &config(&format!("[plugins.http.grants.http.endpoints.api]\nurl = \"http://127.0.0.1:{port}/api\"\n")),
        &[],
    );
    let spec = erad.deployment("web", "http", "web", "  config: {requests: []}\n");
    let plan = |erad: &Erad| erad.era(&["plan", "-f", spec.to_str().unwrap()]);
    let r = plan(&erad);
    assert_eq!(r.code, 0, "reachable: {r:?}");
    // The endpoint goes away: the plan stops before it looks at anything,
    // naming the endpoint.
    drop(listener);
    let r = plan(&erad);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("preflight: endpoint api (127.0.0.1:{port}) of runtime http cannot be reached")),
        "{r:?}"
    );
    // A set that needs no such runtime is not held up by it.
    let other = erad.deployment("other", "noop", "other", "");
    let r = erad.era(&["plan", "-f", other.to_str().unwrap(), "--env", "qa"]);
    assert_eq!(r.code, 0, "{r:?}");
}
