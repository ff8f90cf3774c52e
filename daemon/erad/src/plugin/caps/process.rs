//! The `process` capability: run an allowlisted host program for a plugin.
//! Granted by `process = { programs = ["prog", "/abs/path", ...] }`.
//!
//! The plugin names a program; only names on its grant resolve, to the path
//! found on erad's `PATH` (or the absolute path the grant gives). The child
//! gets a clean environment: erad's `PATH` and the plugin's variables, of
//! which `PATH` and the loader's (`LD_*`, `GCONV_PATH`, ... the ones glibc
//! itself drops for setuid programs) are refused. Output files are opened
//! beneath the work dir without following links. Arguments are the plugin's:
//! granting a program grants whatever that program can do with them.

use super::GrantError;
use crate::plugin::HostState;
use crate::plugin::bindings::era::plugin::process::{Command, Exit, Host, Output, ProcessError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Captured output is cut off here so a chatty program cannot exhaust erad.
const CAPTURE_LIMIT: usize = 1 << 20;

/// Used when the plugin passes `timeout-ms: 0`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Programs that would hand a plugin the host: the runtimes (which take any
/// bundle, root or hook) and erad's own shim (which runs what follows `--`).
/// Granting them through `process` is refused; the `oci` and `lxc`
/// capabilities run them under a policy instead.
const RUNTIME_PROGRAMS: &[&str] =
    &["runc", "crun", "era-shim", "lxc-start", "lxc-create", "lxc-execute", "lxc-attach", "lxc-destroy"];

/// `process = { programs = [...] }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGrant {
    /// Program names (looked up on erad's `PATH`) or absolute paths.
    pub programs: Vec<String>,
}

impl ProcessGrant {
    pub fn check(&self) -> Result<(), GrantError> {
        if self.programs.is_empty() {
            return Err(GrantError::new("process.programs", "the process grant needs at least one program"));
        }
        for p in &self.programs {
            let Some(base) = super::program_name(p) else {
                return Err(GrantError::new(
                    "process.programs",
                    format!("{p:?} is neither a program name nor an absolute path"),
                ));
            };
            if RUNTIME_PROGRAMS.contains(&base) {
                return Err(GrantError::new(
                    "process.programs",
                    format!(
                        "{p:?} would let the plugin run anything as root on this host; grant the oci or lxc capability instead, which checks what it runs"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Environment variables a plugin may not set for a host program: `PATH`,
/// and those that make the dynamic loader or libc load code or files of the
/// caller's choosing (glibc's `UNSECURE_ENVVARS`, plus `LD_*` as a family).
pub fn refused_env(key: &str) -> bool {
    const LOADER: &[&str] = &[
        "PATH",
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    ];
    key.starts_with("LD_") || LOADER.contains(&key) || key.is_empty() || key.contains('=') || key.contains('\0')
}

/// Finds `program` on the allowlist and resolves it to an executable.
pub fn resolve(program: &str, allow: &[String]) -> Result<PathBuf, ProcessError> {
    let entry = super::granted_program(program, allow).ok_or_else(|| {
        let allowed = if allow.is_empty() { "nothing".to_string() } else { allow.join(", ") };
        ProcessError::NotAllowed(format!("{program:?} is not on this plugin's allowlist (allowed: {allowed})"))
    })?;
    super::find_program(entry).ok_or_else(|| {
        ProcessError::SpawnFailed(format!("{entry:?} is allowed but not installed on this host (not on PATH)"))
    })
}

fn stdio_for(out: &Output, work_dir: &Path) -> Result<Stdio, ProcessError> {
    Ok(match out {
        Output::Capture => Stdio::piped(),
        Output::Discard => Stdio::null(),
        Output::File(rel) => {
            let path = Path::new(rel);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                crate::beneath::create_dirs(work_dir, parent)
                    .map_err(|e| ProcessError::Invalid(format!("output file {rel:?}: {e}")))?;
            }
            let file = crate::beneath::append_file(work_dir, path)
                .map_err(|e| ProcessError::Invalid(format!("output file {rel:?}: {e}")))?;
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
    if let Some((k, _)) = cmd.env.iter().find(|(k, _)| refused_env(k)) {
        return Err(ProcessError::Invalid(format!(
            "env {k:?} may not be set by a plugin (PATH and loader variables are erad's)"
        )));
    }
    let timeout = super::policy::timeout_or(cmd.timeout_ms, DEFAULT_TIMEOUT);
    let mut child = tokio::process::Command::new(&program);
    child
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
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

impl Host for HostState {
    async fn run(&mut self, command: Command) -> Result<Exit, ProcessError> {
        let Some(grant) = self.grants.process.as_ref() else {
            return Err(ProcessError::NotAllowed("this plugin has no process grant".into()));
        };
        tracing::debug!(
            plugin = &*self.plugin,
            deployment = self.scope.deployment,
            program = command.program,
            "process.run"
        );
        run(command, &grant.programs, &self.scope.work_dir).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command {
            program: "sh".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            stdin: None,
            timeout_ms: 5000,
            stdout: Output::Capture,
            stderr: Output::Capture,
        }
    }

    #[test]
    fn a_program_off_the_allowlist_is_refused_by_name() {
        let err = resolve("rm", &["true".into(), "false".into()]).unwrap_err();
        match err {
            ProcessError::NotAllowed(m) => assert!(m.contains("\"rm\"") && m.contains("true, false"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runtimes_and_the_shim_cannot_be_granted_as_programs() {
        for p in ["runc", "/usr/sbin/runc", "era-shim", "/opt/era/era-shim", "lxc-start", "lxc-create"] {
            let err = ProcessGrant { programs: vec![p.into()] }.check().unwrap_err();
            assert!(err.to_string().contains("process.programs") && err.to_string().contains("oci or lxc"), "{err}");
        }
        assert!(ProcessGrant { programs: vec!["bin/sh".into()] }.check().is_err());
        assert!(ProcessGrant { programs: vec![] }.check().is_err());
        ProcessGrant { programs: vec!["sh".into(), "/bin/true".into()] }.check().unwrap();
    }

    #[tokio::test]
    async fn loader_and_path_variables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allow = vec!["sh".to_string()];
        for key in ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "GLIBC_TUNABLES", "A=B"] {
            let mut c = cmd(&["-c", "true"]);
            c.env = vec![(key.into(), "/tmp/evil".into())];
            match run(c, &allow, dir.path()).await {
                Err(ProcessError::Invalid(m)) => assert!(m.contains(key.split('=').next().unwrap()), "{m}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        let mut c = cmd(&["-c", "echo $GREETING:$PATH"]);
        c.env = vec![("GREETING".into(), "hi".into())];
        let exit = run(c, &allow, dir.path()).await.unwrap();
        let out = String::from_utf8(exit.stdout).unwrap();
        assert!(out.starts_with("hi:") && out.trim_end().ends_with(&std::env::var("PATH").unwrap()), "{out}");
    }

    #[tokio::test]
    async fn output_files_stay_inside_the_work_dir_and_follow_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let marker = outside.path().join("marker");
        std::fs::write(&marker, b"untouched").unwrap();
        std::os::unix::fs::symlink(&marker, dir.path().join("link.log")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let allow = vec!["sh".to_string()];
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "link.log", "out/new.log"] {
            let mut c = cmd(&["-c", "echo pwned"]);
            c.stdout = Output::File(bad.into());
            assert!(matches!(run(c, &allow, dir.path()).await, Err(ProcessError::Invalid(_))), "{bad}");
        }
        assert_eq!(std::fs::read(&marker).unwrap(), b"untouched");
        assert!(!outside.path().join("new.log").exists());
        let mut c = cmd(&["-c", "echo fine"]);
        c.stdout = Output::File("logs/out.log".into());
        run(c, &allow, dir.path()).await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("logs/out.log")).unwrap(), "fine\n");
    }

    #[tokio::test]
    async fn a_program_runs_with_captured_output_and_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let allow = vec!["sh".to_string()];
        let exit = run(cmd(&["-c", "echo out; echo err >&2; exit 3"]), &allow, dir.path()).await.unwrap();
        assert_eq!((exit.code, exit.stdout, exit.stderr), (Some(3), b"out\n".to_vec(), b"err\n".to_vec()));
        let mut c = cmd(&["-c", "sleep 5"]);
        c.timeout_ms = 100;
        assert!(matches!(run(c, &allow, dir.path()).await, Err(ProcessError::TimedOut(100))));
    }
}
