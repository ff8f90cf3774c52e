//! The `process` host import: run an allowlisted host program for a plugin.
//!
//! The plugin names a program; only names on the operator's allowlist for that
//! plugin resolve, to the path found on erad's `PATH` (or the absolute path the
//! allowlist gives). The child gets a clean environment (the plugin's env plus
//! `PATH`), and is killed when its timeout expires or the call is abandoned.

use super::bindings::era::plugin::process::{Command, Exit, Output, ProcessError};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Captured output is cut off here so a chatty program cannot exhaust erad.
const CAPTURE_LIMIT: usize = 1 << 20;

/// Used when the plugin passes `timeout-ms: 0`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds `program` on the allowlist and resolves it to an executable.
pub fn resolve(program: &str, allow: &[String]) -> Result<PathBuf, ProcessError> {
    let entry = allow
        .iter()
        .find(|a| a.as_str() == program || Path::new(a).file_name().is_some_and(|f| f == program))
        .ok_or_else(|| {
            let allowed = if allow.is_empty() { "nothing".to_string() } else { allow.join(", ") };
            ProcessError::NotAllowed(format!("{program:?} is not on this plugin's allowlist (allowed: {allowed})"))
        })?;
    let candidate = Path::new(entry);
    if candidate.is_absolute() {
        return Ok(candidate.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(entry)).find(|p| p.is_file()).ok_or_else(|| {
        ProcessError::SpawnFailed(format!("{entry:?} is allowed but not installed on this host (not on PATH)"))
    })
}

/// A path inside the work dir, for `output::file`.
fn output_file(work_dir: &Path, rel: &str) -> Result<PathBuf, ProcessError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ProcessError::Invalid(format!("output file {rel:?} must be a relative path inside the work dir")));
    }
    Ok(work_dir.join(p))
}

fn stdio_for(out: &Output, work_dir: &Path) -> Result<Stdio, ProcessError> {
    Ok(match out {
        Output::Capture => Stdio::piped(),
        Output::Discard => Stdio::null(),
        Output::File(rel) => {
            let path = output_file(work_dir, rel)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| ProcessError::Invalid(format!("cannot open output file {rel:?}: {e}")))?;
            Stdio::from(file)
        }
    })
}

async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(stream) = stream else { return Vec::new() };
    let mut buf = Vec::new();
    let _ = stream.take(CAPTURE_LIMIT as u64).read_to_end(&mut buf).await;
    buf
}

pub async fn run(cmd: Command, allow: &[String], work_dir: &Path) -> Result<Exit, ProcessError> {
    let program = resolve(&cmd.program, allow)?;
    let timeout = if cmd.timeout_ms == 0 { DEFAULT_TIMEOUT } else { Duration::from_millis(cmd.timeout_ms.into()) };
    let mut child = tokio::process::Command::new(&program);
    child
        .args(&cmd.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(work_dir)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(stdio_for(&cmd.stdout, work_dir)?)
        .stderr(stdio_for(&cmd.stderr, work_dir)?)
        .kill_on_drop(true);
    let mut child = child.spawn().map_err(|e| ProcessError::SpawnFailed(format!("{}: {e}", program.display())))?;
    if let (Some(input), Some(mut stdin)) = (cmd.stdin, child.stdin.take()) {
        // A child that does not read its stdin must not block us.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let wait = async {
        let (out, err, status) = tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok((stdout, stderr, Ok(status))) => Ok(Exit { code: status.code(), stdout, stderr }),
        Ok((_, _, Err(e))) => Err(ProcessError::SpawnFailed(format!("waiting for {}: {e}", program.display()))),
        Err(_) => Err(ProcessError::TimedOut(timeout.as_millis().min(u32::MAX as u128) as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_off_the_allowlist_is_refused_by_name() {
        let err = resolve("rm", &["runc".into(), "crun".into()]).unwrap_err();
        match err {
            ProcessError::NotAllowed(m) => assert!(m.contains("\"rm\"") && m.contains("runc, crun"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_files_stay_inside_the_work_dir() {
        let wd = Path::new("/w");
        assert_eq!(output_file(wd, "logs/out.log").unwrap(), Path::new("/w/logs/out.log"));
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(output_file(wd, bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_program_runs_with_captured_output_and_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let allow = vec!["sh".to_string()];
        let mut cmd = Command {
            program: "sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 3".into()],
            env: vec![],
            stdin: None,
            timeout_ms: 5000,
            stdout: Output::Capture,
            stderr: Output::Capture,
        };
        let exit = run(cmd.clone(), &allow, dir.path()).await.unwrap();
        assert_eq!((exit.code, exit.stdout, exit.stderr), (Some(3), b"out\n".to_vec(), b"err\n".to_vec()));
        cmd.args = vec!["-c".into(), "sleep 5".into()];
        cmd.timeout_ms = 100;
        assert!(matches!(run(cmd, &allow, dir.path()).await, Err(ProcessError::TimedOut(100))));
    }
}
