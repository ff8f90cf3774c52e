//! The spec's own health probes: `http` and `tcp` from the host. An `exec`
//! probe runs inside the workload, through the plugin's `exec` operation
//! (the supervisor calls it), never on the host: [`exec_verdict`] reads it.

use crate::spec::HealthSpec;
use std::time::Duration;

/// Runs the spec's http or tcp probe once. `Ok(None)` when the spec has neither.
pub async fn probe(spec: &HealthSpec, http: &reqwest::Client) -> Result<Option<()>, String> {
    let timeout = spec.timeout.0;
    if let Some(h) = &spec.http {
        let url = format!("http://{}:{}{}", h.host, h.port, h.path);
        let resp = http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("http probe {url}: {}", e.without_url()))?;
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(format!("http probe {url}: answered {status}"));
        }
        return Ok(Some(()));
    }
    if let Some(t) = &spec.tcp {
        let addr = format!("{}:{}", t.host, t.port);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(Some(())),
            Ok(Err(e)) => Err(format!("tcp probe {addr}: {e}")),
            Err(_) => Err(format!("tcp probe {addr}: no connection within {}", humantime::format_duration(timeout))),
        };
    }
    Ok(None)
}

/// What an exec probe's run inside the workload says.
pub fn exec_verdict(command: &[String], out: crate::plugin::ExecOutput) -> Result<(), String> {
    let program = command.first().map(String::as_str).unwrap_or("");
    match out.exit_code {
        Some(0) => Ok(()),
        code => {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim().lines().last().unwrap_or("").chars().take(200).collect::<String>();
            let how = match code {
                Some(c) => format!("exited with {c}"),
                None => "was killed or timed out".into(),
            };
            Err(if said.is_empty() {
                format!("exec probe {program}: {how}")
            } else {
                format!("exec probe {program}: {how}: {said}")
            })
        }
    }
}

/// How often to ask while waiting for a workload to become healthy when the
/// spec sets no interval: often enough to feel instant, rare enough to be cheap.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

/// Whether the probe is an http or tcp one aimed at a host other than this
/// one's loopback: erad runs it even for a runtime that runs probes itself.
pub fn names_a_remote_host(h: &HealthSpec) -> bool {
    let host = match (&h.http, &h.tcp) {
        (Some(p), _) => &p.host,
        (_, Some(t)) => &t.host,
        _ => return false,
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HumanDuration, TcpProbe};

    fn spec() -> HealthSpec {
        HealthSpec {
            http: None,
            tcp: None,
            exec: None,
            interval: HumanDuration(Duration::from_millis(100)),
            timeout: HumanDuration(Duration::from_secs(1)),
            retries: 1,
            start_period: HumanDuration(Duration::ZERO),
        }
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener_come_and_go() {
        let http = reqwest::Client::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = HealthSpec { tcp: Some(TcpProbe { port, host: "127.0.0.1".into() }), ..spec() };
        assert_eq!(probe(&s, &http).await, Ok(Some(())));
        drop(listener);
        assert!(probe(&s, &http).await.is_err());
    }

    #[test]
    fn exec_probe_follows_the_exit_code() {
        let out = |code, err: &str| crate::plugin::ExecOutput { exit_code: code, stdout: vec![], stderr: err.into() };
        let cmd = vec!["check".to_string()];
        assert_eq!(exec_verdict(&cmd, out(Some(0), "")), Ok(()));
        assert_eq!(
            exec_verdict(&cmd, out(Some(3), "not ready\n")),
            Err("exec probe check: exited with 3: not ready".into())
        );
        assert!(exec_verdict(&cmd, out(None, "")).unwrap_err().contains("killed or timed out"));
    }
}
