//! erad as a service: gRPC health and reflection on its socket, sd_notify,
//! JSON logs.

use era_tests::{Erad, fixture_plugins};
use std::time::Duration;

async fn channel(socket: std::path::PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::try_from("http://erad.local")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn grpc_health_says_serving_and_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let erad = Erad::start();
    let ch = channel(erad.socket()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status =
        health.check(tonic_health::pb::HealthCheckRequest { service: "era.v1.Deployments".into() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"era.v1.Deployments".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    // The same through v1alpha, which older clients speak.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(channel(erad.socket()).await);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response
    else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"era.v1.Deployments".to_string()), "{names:?}");
}

#[test]
fn erad_dev_finds_the_plugins_scripts_build_plugins_made_without_plugin_dir() {
    // What the README says: build the plugins, then `erad --dev DIR`.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = std::process::Command::new(root.join("scripts/build-plugins")).current_dir(root).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let dir = tempfile::tempdir().unwrap();
    let mut erad = std::process::Command::new(era_tests::bin("erad"))
        .arg("--dev")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = dir.path().join("erad.sock");
    era_tests::eventually(Duration::from_secs(60), || socket.exists() || erad.try_wait().unwrap().is_some());
    let plugins =
        std::process::Command::new(era_tests::bin("era")).arg("--socket").arg(&socket).arg("plugins").output();
    let _ = std::process::Command::new("kill").args(["-TERM", &erad.id().to_string()]).status();
    let status = erad.wait().unwrap();
    let plugins = String::from_utf8_lossy(&plugins.unwrap().stdout).into_owned();
    assert!(plugins.contains("container") && plugins.contains("lxc"), "{plugins} (erad: {status})");
    era_tests::unmount_work_dirs(&dir.path().join("data"));
}

#[test]
fn a_grpc_core_client_with_its_defaults_gets_health_and_reflection() {
    // Python's grpcio sends the socket path, percent-encoded, as :authority.
    let erad = Erad::start();
    let probe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/grpcio_probe.py");
    let out = std::process::Command::new("python3").arg(probe).arg(erad.socket()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("health SERVING"), "{text}");
    assert!(text.contains("era.v1.Deployments"), "{text}");
}

#[test]
fn erad_tells_systemd_it_is_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut erad = Erad::start_with(&fixture_plugins(), &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert!(erad.terminate().success());
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn the_debug_log_times_each_plugin_call_and_each_commit() {
    let erad = Erad::start_with(&fixture_plugins(), &[("ERAD_LOG_FORMAT", "json"), ("ERAD_LOG_LEVEL", "erad=debug")]);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let lines: Vec<serde_json::Value> =
        erad.log().lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let timed = |message: &str, key: &str, value: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"] == message && l["fields"][key] == value && l["fields"]["us"].as_u64().is_some()
        })
    };
    for op in ["validate", "install", "start", "status"] {
        assert!(timed("plugin call", "op", op), "the {op} call, timed");
    }
    for event in ["Apply", "Validated", "Fetched", "Prepared", "Installed", "Activated", "Healthy"] {
        assert!(timed("transition committed", "event", event), "the {event} commit, timed");
    }
}

#[test]
fn json_logs_carry_the_deployment_and_revision_as_fields() {
    let erad = Erad::start_with(&fixture_plugins(), &[("ERAD_LOG_FORMAT", "json")]);
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0);
    let lines: Vec<serde_json::Value> =
        erad.log().lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let running = lines.iter().find(|l| l["fields"]["to"] == "Running").expect("the transition to Running is logged");
    assert_eq!(running["fields"]["deployment"], "web");
    assert_eq!(running["fields"]["revision"], 1);
    assert_eq!(running["level"], "INFO");
}

#[test]
fn the_socket_is_group_accessible_only() {
    use std::os::unix::fs::PermissionsExt;
    let erad = Erad::start();
    let mode = std::fs::metadata(erad.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn the_embedding_example_runs_the_daemon_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(era_tests::plugin::NOOP, plugins.join("noop.wasm")).unwrap();
    std::fs::copy(era_tests::plugin::CONTAINER, plugins.join("container.wasm")).unwrap();
    std::fs::copy(era_tests::plugin::LXC, plugins.join("lxc.wasm")).unwrap();
    let out = std::process::Command::new(era_tests::bin("era-embed-example"))
        .arg(dir.path().join("erad"))
        .arg(&plugins)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("hello is Running (revision 1)"), "{stdout}");
}

#[test]
fn sigterm_with_watch_and_logs_follow_attached_exits_within_5s() {
    let mut erad = Erad::start();
    assert_eq!(erad.apply_wait(&erad.deployment("web", "noop", "v1", "")).code, 0, "{}", erad.log());
    let mut watch = erad.era_background(&["watch"]);
    let mut logs = erad.era_background(&["logs", "-f", "web"]);
    // Both streams are open: erad sees two clients.
    std::thread::sleep(Duration::from_millis(500));
    assert!(watch.try_wait().unwrap().is_none() && logs.try_wait().unwrap().is_none(), "the streams are open");
    let status = erad.terminate_within(Duration::from_secs(5));
    let _ = watch.kill();
    let _ = logs.kill();
    let _ = (watch.wait(), logs.wait());
    let status = status.unwrap_or_else(|| panic!("erad still ran 5 s after SIGTERM:\n{}", erad.log()));
    assert!(status.success(), "{status}");
}
