//! The spec's own health probes: `http`, `tcp` and `exec`.

use crate::spec::HealthSpec;
use std::time::Duration;

/// Runs the spec's probe once. `Ok(None)` when the spec has no probe.
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
    if let Some(x) = &spec.exec {
        let Some((program, args)) = x.command.split_first() else { return Ok(None) };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        return match tokio::time::timeout(timeout, cmd.status()).await {
            Ok(Ok(s)) if s.success() => Ok(Some(())),
            Ok(Ok(s)) => Err(format!("exec probe {program}: {s}")),
            Ok(Err(e)) => Err(format!("exec probe {program}: {e}")),
            Err(_) => Err(format!("exec probe {program}: no answer within {}", humantime::format_duration(timeout))),
        };
    }
    Ok(None)
}

/// How often to ask while waiting for a workload to become healthy when the
/// spec sets no interval: often enough to feel instant, rare enough to be cheap.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ExecProbe, HumanDuration, TcpProbe};

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

    #[tokio::test]
    async fn exec_probe_follows_the_exit_code() {
        let http = reqwest::Client::new();
        let ok = HealthSpec { exec: Some(ExecProbe { command: vec!["true".into()] }), ..spec() };
        let bad = HealthSpec { exec: Some(ExecProbe { command: vec!["false".into()] }), ..spec() };
        assert_eq!(probe(&ok, &http).await, Ok(Some(())));
        assert!(probe(&bad, &http).await.unwrap_err().contains("exec probe false"));
        assert_eq!(probe(&spec(), &http).await, Ok(None));
    }
}
