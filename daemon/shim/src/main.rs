//! `era-shim`: what stays with a detached container after `runc create`
//! (or `runc run --detach`) returns, as containerd's shim and conmon do.
//! erad runs
//!
//! ```text
//! era-shim --exit-file EXIT --pid-file PID -- runc create --bundle B --pid-file PID ID
//! era-shim --exit-file EXIT --pid-file PID -- runc run --detach --bundle B --pid-file PID ID
//! ```
//!
//! (erad itself starts the copy directly, `era-shim --serve ...`, in a
//! process group of its own, and reads its `created <code>` line.)
//!
//! The shim starts a copy of itself in a new session and returns the create
//! command's exit status once it is known. The copy is a child subreaper: when
//! the runtime exits, the container's init becomes its child, so it can wait
//! for it, write its exit status to EXIT (`<code>`, or `128+<signal>` for a
//! signal, as a shell reports it) and reap it. Nothing else is kept: it exits
//! with the container.

use rustix::process::{WaitOptions, set_child_subreaper, wait};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

struct Args {
    exit_file: PathBuf,
    pid_file: PathBuf,
    serve: bool,
    command: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut exit_file = None;
    let mut pid_file = None;
    let mut serve = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exit-file" => exit_file = it.next().map(PathBuf::from),
            "--pid-file" => pid_file = it.next().map(PathBuf::from),
            "--serve" => serve = true,
            "--" => break,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let command: Vec<String> = it.collect();
    match (exit_file, pid_file, command.is_empty()) {
        (Some(exit_file), Some(pid_file), false) => Ok(Args { exit_file, pid_file, serve, command }),
        _ => {
            Err("usage: era-shim --exit-file F --pid-file P -- RUNTIME create|run --detach ... --pid-file P ID".into())
        }
    }
}

/// 128+signal for a signal, as a shell reports it.
fn code_of(status: rustix::process::WaitStatus) -> Option<i32> {
    status.exit_status().or_else(|| status.terminating_signal().map(|s| 128 + s))
}

/// The copy that stays: runs the create, says how it went on stdout, then
/// waits for the container's init.
fn serve(args: &Args) -> Result<(), String> {
    set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let _ = std::fs::remove_file(&args.exit_file);
    // The runtime hands its stdio to the container: both go where our stderr
    // goes (the workload's log), never to the pipe back to the caller.
    let log = || {
        use std::os::fd::AsFd;
        std::io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).map_err(|e| format!("stderr: {e}"))
    };
    let status = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(log()?)
        .stderr(log()?)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.command[0]))?;
    let code = status.code().unwrap_or(1);
    // Tell the caller, then let go of its pipe.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "created {code}");
    let _ = out.flush();
    if code != 0 {
        return Ok(());
    }
    let pid: i32 = std::fs::read_to_string(&args.pid_file)
        .map_err(|e| format!("{}: {e}", args.pid_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: not a pid: {e}", args.pid_file.display()))?;
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((p, st))) if p.as_raw_nonzero().get() == pid => {
                let code = code_of(st).unwrap_or(-1);
                let tmp = args.exit_file.with_extension("tmp");
                std::fs::write(&tmp, format!("{code}\n")).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &args.exit_file).map_err(|e| e.to_string())?;
                return Ok(());
            }
            // Another orphan that came our way: reaped, nothing more.
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            // No children left: the init was reaped elsewhere; nothing to say.
            Err(_) => return Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("era-shim: {e}");
            return ExitCode::from(2);
        }
    };
    if args.serve {
        return match serve(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("era-shim: {e}");
                ExitCode::from(1)
            }
        };
    }
    // The caller waits for us, not for the copy that stays with the container.
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("era-shim: {e}");
            return ExitCode::from(1);
        }
    };
    let mut copy = Command::new(exe);
    copy.arg("--serve")
        .arg("--exit-file")
        .arg(&args.exit_file)
        .arg("--pid-file")
        .arg(&args.pid_file)
        .arg("--")
        .args(&args.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut copy, 0);
    let mut child = match copy.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("era-shim: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    match line.trim().strip_prefix("created ").and_then(|c| c.parse::<u8>().ok()) {
        Some(code) => ExitCode::from(code),
        None => {
            // The copy failed before the create ran; it said why on stderr.
            let _ = child.wait();
            ExitCode::from(1)
        }
    }
}
