#![allow(clippy::unwrap_used)] // a test harness: a failed unwrap is a failed test
//! The test harness: a real `erad` process on a temp dir with the fixture
//! plugins, driven by the real `era` CLI.

#[path = "pki.rs"]
pub mod pki;

#[path = "httpd.rs"]
pub mod httpd;

#[path = "k8s.rs"]
pub mod k8s;

#[path = "pve.rs"]
pub mod pve;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fixture components, built by `build.rs`.
pub mod plugin {
    pub const NOOP: &str = env!("ERA_PLUGIN_NOOP");
    pub const TRAP: &str = env!("ERA_PLUGIN_TRAP");
    pub const HANG: &str = env!("ERA_PLUGIN_HANG");
    pub const HOG: &str = env!("ERA_PLUGIN_HOG");
    pub const UNHEALTHY: &str = env!("ERA_PLUGIN_UNHEALTHY");
    pub const EXEC: &str = env!("ERA_PLUGIN_EXEC");
    pub const HOSTILE: &str = env!("ERA_PLUGIN_HOSTILE");
    pub const HOSTILE_LXC: &str = env!("ERA_PLUGIN_HOSTILE_LXC");
    pub const HTTP: &str = env!("ERA_PLUGIN_HTTP");
    pub const PROXMOX: &str = env!("ERA_PLUGIN_PROXMOX");
    pub const CONTAINER: &str = env!("ERA_PLUGIN_CONTAINER");
    pub const LXC: &str = env!("ERA_PLUGIN_LXC");
    pub const KUBERNETES: &str = env!("ERA_PLUGIN_KUBERNETES");
}

/// The workspace's binaries, next to the test executable's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: build the workspace first (cargo build --workspace)", path.display());
    path
}

/// The plugin section every test daemon gets: the fixtures with tight
/// deadlines so failure tests stay quick.
pub fn fixture_plugins() -> String {
    format!(
        r#"
[plugins.noop]
path = "{noop}"
grants = {{ log = true }}

[plugins.trap]
path = "{trap}"

[plugins.hang]
path = "{hang}"
[plugins.hang.deadlines]
install = "1s"

[plugins.hog]
path = "{hog}"
memory_limit_mib = 16

[plugins.unhealthy]
path = "{unhealthy}"
"#,
        noop = plugin::NOOP,
        trap = plugin::TRAP,
        hang = plugin::HANG,
        hog = plugin::HOG,
        unhealthy = plugin::UNHEALTHY
    )
}

/// What `era` answered.
#[derive(Debug)]
pub struct Answer {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs `era` with no daemon behind it (commands that need none).
pub fn era(args: &[&str]) -> Answer {
    let out = Command::new(bin("era")).args(args).output().expect("run era");
    Answer {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A real erad on a temp dir.
pub struct Erad {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The erad binary this test runs.
    pub program: PathBuf,
    child: Option<Child>,
}

impl Erad {
    /// Starts erad with the fixture plugins.
    pub fn start() -> Erad {
        Erad::start_with(&fixture_plugins(), &[])
    }

    /// Starts erad with this `[plugins...]` config and extra environment.
    pub fn start_with(plugins: &str, env: &[(&str, &str)]) -> Erad {
        Erad::try_start_with(plugins, env).expect("erad should start")
    }

    /// Like [`Erad::start_with`], but returns what erad printed if it would not start.
    pub fn try_start_with(plugins: &str, env: &[(&str, &str)]) -> Result<Erad, String> {
        Erad::try_start_program(&bin("erad"), plugins, env)
    }

    /// Like [`Erad::try_start_with`], with another erad binary.
    pub fn try_start_program(program: &Path, plugins: &str, env: &[(&str, &str)]) -> Result<Erad, String> {
        let dir = tempfile::Builder::new().prefix("era-test-").tempdir().expect("temp dir");
        let config = dir.path().join("erad.toml");
        let text = format!(
            "version = 2\n[daemon]\ndata_dir = \"{d}/data\"\nsocket = \"{d}/erad.sock\"\nlog_level = \"info\"\nhealth_interval = \"200ms\"\n{plugins}",
            d = dir.path().display()
        );
        // `file:` artifacts and specs live in the test dir; tests about the
        // roots name their own.
        let text = if text.contains("[artifacts]") {
            text
        } else {
            format!("{text}\n[artifacts]\nfile_roots = [\"{}\"]\n", dir.path().display())
        };
        // Tests that are not about signatures pull unsigned test images;
        // the ones that are name their own rules.
        let text = if text.contains("[[trust]]") {
            text
        } else {
            format!("{text}\n[[trust]]\nmatch = \"**\"\nallow_unsigned = true\n")
        };
        std::fs::write(&config, text).expect("write config");
        let mut erad = Erad { dir, config, program: program.to_path_buf(), child: None };
        erad.spawn(env)?;
        Ok(erad)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("erad.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the erad process and waits for its socket; on failure returns
    /// what it printed.
    pub fn spawn(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("erad.log"))
            .expect("log file");
        let mut cmd = Command::new(&self.program);
        cmd.arg("--config").arg(&self.config).stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn erad");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait erad") {
                return Err(format!("erad exited with {status}: {}", self.log()));
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "erad did not open its socket in time: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Asserts `secret` is in neither erad's log nor any file under its
    /// data dir.
    pub fn assert_nowhere(&self, secret: &str) {
        assert!(!self.log().contains(secret), "the secret is in erad's log");
        for f in files_under(&self.data_dir()) {
            let bytes = std::fs::read(self.data_dir().join(&f)).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains(secret), "the secret is in {f}");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("erad.log")).unwrap_or_default()
    }

    /// `kill -9`: no drain, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for erad to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("erad is running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        child.wait().expect("wait erad")
    }

    /// SIGTERM, and wait at most `within` for erad to exit: `None` if it
    /// is still running then (it is killed, so the test ends).
    pub fn terminate_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().expect("erad is running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        exit_within(&mut child, within)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `era` against this daemon.
    pub fn era(&self, args: &[&str]) -> Answer {
        self.era_with(&[], args)
    }

    /// `era` with these variables in its environment (`ERA_ENV`...).
    pub fn era_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Answer {
        let out = Command::new(bin("era"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .expect("run era");
        Answer {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `era` against this daemon as another user (uid, primary gid,
    /// supplementary groups), through util-linux's `setpriv`; the tests run
    /// as root. `era` is linked into the test dir first, since the target
    /// dir may be under a home only root can enter; the caller makes the
    /// test dir (and so the socket's dir) reachable for that user.
    pub fn era_as(&self, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Answer {
        let era = self.dir.path().join("era");
        if !era.exists() && std::fs::hard_link(bin("era"), &era).is_err() {
            std::fs::copy(bin("era"), &era).expect("copy era into the test dir");
        }
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
        match groups {
            [] => cmd.arg("--clear-groups"),
            _ => cmd.arg(format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","))),
        };
        let out = cmd.arg("--").arg(&era).arg("--socket").arg(self.socket()).args(args).output().expect("run setpriv");
        Answer {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `era` without waiting for it (for commands whose answer a
    /// paused or killed erad will never send).
    pub fn era_background(&self, args: &[&str]) -> Child {
        Command::new(bin("era"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run era")
    }

    /// Sends an `era` command, waits until erad drops the test hook's marker
    /// `DATA/<marker>` (it froze where the hook said), and kills it with a
    /// real SIGKILL. The command's own answer may never come: that is the
    /// point.
    pub fn kill9_at(&mut self, args: &[&str], marker: &str) {
        let mut client = self.era_background(args);
        let marker = self.data_dir().join(marker);
        eventually(Duration::from_secs(60), || marker.exists());
        self.kill9();
        let _ = client.wait();
        std::fs::remove_file(marker).expect("remove the marker");
    }

    /// The noop fixture's state file of a revision (`installed`, `running`,
    /// `starts`, `stops`...), if its work dir has one.
    pub fn noop_state(&self, name: &str, rev: u64) -> Option<Value> {
        let path = self.data_dir().join(format!("deployments/{name}/rev-{rev}/noop.json"));
        std::fs::read(path).ok().map(|b| serde_json::from_slice(&b).expect("noop.json is JSON"))
    }

    /// Rewrites the noop fixture's state of a revision behind erad's back:
    /// its workload running or not, and the exit code it left.
    pub fn set_noop_running(&self, name: &str, rev: u64, running: bool, exit_code: Option<i32>) {
        let path = self.data_dir().join(format!("deployments/{name}/rev-{rev}/noop.json"));
        let mut s = self.noop_state(name, rev).expect("the revision has noop state");
        s["running"] = running.into();
        if let Some(code) = exit_code {
            s["exit_code"] = code.into();
        }
        std::fs::write(&path, serde_json::to_vec(&s).expect("JSON")).expect("write noop.json");
    }

    /// Whether the noop workload of a revision runs.
    pub fn noop_running(&self, name: &str, rev: u64) -> bool {
        self.noop_state(name, rev).is_some_and(|s| s["running"] == true)
    }

    /// erad's store, opened read-only (as an operator's `sqlite3` would).
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir().join("era.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open era.db")
    }

    /// `era -o json get NAME`.
    pub fn get(&self, name: &str) -> Value {
        let a = self.era(&["-o", "json", "get", name]);
        assert_eq!(a.code, 0, "era get {name}: {a:?}");
        a.json()
    }

    pub fn history(&self, name: &str) -> Vec<Value> {
        let a = self.era(&["-o", "json", "history", name]);
        assert_eq!(a.code, 0, "era history {name}: {a:?}");
        a.json().as_array().cloned().unwrap_or_default()
    }

    /// Polls until the deployment is in `state`, or panics with what it is.
    pub fn wait_for_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.era(&["-o", "json", "get", name]);
            if a.code == 0 && a.json()["state"] == state {
                return a.json();
            }
            if Instant::now() > deadline {
                panic!("{name} did not reach {state} within {timeout:?}: {a:?}\nerad log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a spec into the test dir and returns its path.
    pub fn spec(&self, file: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, yaml).expect("write spec");
        path
    }

    /// A spec for `runtime` with a fresh file artifact of `content`.
    pub fn deployment(&self, name: &str, runtime: &str, content: &str, extra: &str) -> PathBuf {
        let artifact = format!("{name}-{}.bin", &sha256(content.as_bytes())[..8]);
        std::fs::write(self.dir.path().join(&artifact), content).expect("write artifact");
        let yaml = format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  runtime: {runtime}\n  artifact: {{file: {artifact}, sha256: \"{sha}\"}}\n{extra}",
            sha = sha256(content.as_bytes())
        );
        self.spec(&format!("{name}-{}.yaml", &sha256(yaml.as_bytes())[..8]), &yaml)
    }

    /// `era apply -f PATH --wait`.
    pub fn apply_wait(&self, spec: &Path) -> Answer {
        self.era(&["apply", "-f", spec.to_str().expect("utf-8 path"), "--wait", "--timeout", "60s"])
    }
}

impl Drop for Erad {
    /// Kills erad, and then the containers it left in its own runc root and
    /// lxcpath (a test that failed midway, or one that kills erad on
    /// purpose), so no workload outlives its test.
    fn drop(&mut self) {
        self.kill9();
        let runc_root = self.data_dir().join("runtimes/oci/runc");
        if let Ok(out) = Command::new("runc").arg("--root").arg(&runc_root).args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc").arg("--root").arg(&runc_root).args(["delete", "--force", id]).output();
            }
        }
        let lxcpath = self.data_dir().join("runtimes/lxc");
        for name in std::fs::read_dir(&lxcpath).into_iter().flatten().flatten() {
            let _ = Command::new("lxc-stop").arg("-P").arg(&lxcpath).arg("-n").arg(name.file_name()).arg("-k").output();
        }
        unmount_work_dirs(&self.data_dir());
    }
}

/// Waits at most `within` for `child` to exit: `None` if it still runs then
/// (it is killed, so the test ends).
pub fn exit_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The filesystem type mounted on `path`, by `/proc/self/mountinfo` (the
/// mount on top when there are several); None when nothing is mounted there.
pub fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .find_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
}

/// Undoes the nodev mount erad makes of its work dirs (`DATA/deployments`),
/// for tests whose erad was killed, so none is left in the host's mount table.
pub fn unmount_work_dirs(data_dir: &Path) {
    let _ = Command::new("umount").arg("--lazy").arg(data_dir.join("deployments")).output();
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            }
            out.push(p.strip_prefix(base).unwrap_or(&p).display().to_string());
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Polls `cond` until it holds, or panics after `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "condition did not hold within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for `url:` artifacts: `routes` maps
/// a path to a body; anything else is a 404. Returns the base URL. The server
/// thread lives as long as the test process.
pub fn serve_http(routes: Vec<(&'static str, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Drain the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut out = &stream;
            let _ = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => out
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|_| out.write_all(body)),
                None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    format!("http://{addr}")
}

/// A real OCI registry (Debian's `docker-registry`) on 127.0.0.1 with its
/// storage in a temp dir; stopped when dropped.
pub struct Registry {
    _dir: tempfile::TempDir,
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    work: PathBuf,
    /// Basic-auth credentials the registry demands, if any.
    creds: Option<(String, String)>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that demands HTTP basic auth (htpasswd) for everything.
    pub fn with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user.to_string(), password.to_string())))
    }

    fn start_with(creds: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new().prefix("era-registry-").tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n{}",
                dir.path().join("data").display(),
                match &creds {
                    Some(_) => format!("auth:\n  htpasswd: {{realm: era-test, path: {}}}\n", dir.path().join("htpasswd").display()),
                    None => String::new(),
                }
            ),
        )
        .expect("registry config");
        if let Some((user, password)) = &creds {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, password]));
            std::fs::write(dir.path().join("htpasswd"), line).expect("htpasswd file");
        }
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        Registry { _dir: dir, child, addr, work, creds }
    }

    /// Builds an image with umoci holding `files` and pushes it with skopeo
    /// as `repo:tag`; returns its manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, files: &[(&str, &str)]) -> String {
        self.push_image_signed(repo, tag, files, None)
    }

    /// Like [`Registry::push_image`]; with a key, also signs it the way
    /// cosign does ([`Registry::cosign_sign`]).
    pub fn push_image_signed(&self, repo: &str, tag: &str, files: &[(&str, &str)], key: Option<&CosignKey>) -> String {
        let image = self.build_image(repo, tag, |rootfs| {
            for (path, content) in files {
                let p = rootfs.join(path);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(p, content).expect("write");
            }
        });
        let digest = self.copy_layout(&image, repo, tag);
        if let Some(k) = key {
            self.cosign_sign(repo, &digest, k);
        }
        digest
    }

    /// Pushes a small image built from Debian's static busybox: `/bin/busybox`
    /// and its applets as symlinks, with this entrypoint and env in the image
    /// config. Returns the manifest digest.
    pub fn push_busybox(&self, repo: &str, tag: &str, entrypoint: &[&str], env: &[&str]) -> String {
        let image = self.build_image(repo, tag, |rootfs| {
            for dir in ["bin", "etc", "tmp", "data"] {
                std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir");
            }
            std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
                .expect("copy busybox (apt install busybox-static)");
            for applet in [
                "sh", "echo", "sleep", "cat", "date", "ls", "true", "false", "env", "id", "touch", "mkdir", "wc",
                "hostname", "httpd", "mknod", "head", "test", "mkfifo", "rm", "grep", "pwd",
            ] {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet link");
            }
            std::fs::write(
                rootfs.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            )
            .expect("passwd");
            std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
        });
        let mut config = Command::new("umoci");
        config.args(["config", "--image", &image]);
        for e in entrypoint {
            config.arg(format!("--config.entrypoint={e}"));
        }
        for e in env {
            config.arg(format!("--config.env={e}"));
        }
        run(&mut config);
        self.copy_layout(&image, repo, tag)
    }

    /// A one-layer image in a fresh OCI layout, its root filesystem filled by
    /// `fill`; returns the umoci image name (`DIR:TAG`).
    fn build_image(&self, repo: &str, tag: &str, fill: impl FnOnce(&Path)) -> String {
        let name = format!("{}-{tag}", repo.replace('/', "_"));
        let layout = self.work.join(&name);
        let _ = std::fs::remove_dir_all(&layout);
        let image = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &image]));
        let bundle = self.work.join(format!("bundle-{name}"));
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&bundle));
        fill(&bundle.join("rootfs"));
        run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
        image
    }

    /// Pushes the OCI layout image `image` (`DIR:TAG`) with skopeo; returns
    /// the manifest digest.
    fn copy_layout(&self, image: &str, repo: &str, tag: &str) -> String {
        let digest_file = self.work.join("digest");
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"]).arg(&digest_file);
        if let Some((u, p)) = &self.creds {
            copy.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        run(copy.arg(format!("oci:{image}")).arg(format!("docker://{}/{repo}:{tag}", self.addr)));
        std::fs::read_to_string(digest_file).expect("digest").trim().to_string()
    }

    /// Signs the manifest `digest` in `repo` as `cosign sign --key` does: a
    /// simple-signing payload naming the digest, its signature in the
    /// `dev.cosignproject.cosign/signature` annotation, pushed to the
    /// `sha256-<hex>.sig` tag. The signer is the sigstore crate's own
    /// (Debian's skopeo has its sigstore signing compiled out).
    pub fn cosign_sign(&self, repo: &str, digest: &str, key: &CosignKey) {
        use sigstore::cosign::{CosignCapabilities, SignatureLayer, constraint::PrivateKeySigner};
        let signer = key.signer();
        let auth = match &self.creds {
            Some((u, p)) => sigstore::registry::Auth::Basic(u.clone(), p.clone()),
            None => sigstore::registry::Auth::Anonymous,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let protocol = sigstore::registry::ClientProtocol::HttpsExcept(vec![self.addr.clone()]);
            let mut client = sigstore::cosign::ClientBuilder::default()
                .with_oci_client_config(sigstore::registry::ClientConfig { protocol, ..Default::default() })
                .build()
                .expect("cosign client");
            let image: sigstore::registry::OciReference =
                format!("{}/{repo}@{digest}", self.addr).parse().expect("reference");
            let (target, resolved) = client.triangulate(&image, &auth).await.expect("triangulate");
            assert_eq!(resolved, digest);
            let mut layer = SignatureLayer::new_unsigned(&image, digest).expect("payload");
            let constraints: Vec<Box<dyn sigstore::cosign::Constraint>> =
                vec![Box::new(PrivateKeySigner::new_with_signer(signer))];
            sigstore::cosign::apply_constraints(&mut layer, constraints.iter()).expect("sign");
            client.push_signature(None, &auth, &target, vec![layer]).await.expect("push signature");
        });
    }

    /// Signs the manifest `digest` in `repo` keyless, as `cosign sign` with
    /// Fulcio and Rekor does: the simple-signing payload with its signature,
    /// certificate, chain and Rekor bundle as annotations, at the
    /// `sha256-<hex>.sig` tag.
    pub fn cosign_sign_keyless(&self, repo: &str, digest: &str, ca: &pki::TestSigstore, cert: &pki::KeylessCert) {
        self.cosign_sign_keyless_with(repo, digest, ca, cert, &|_| {});
    }

    /// Like [`Registry::cosign_sign_keyless`], with the annotations edited
    /// before they are pushed (to forge one part).
    pub fn cosign_sign_keyless_with(
        &self,
        repo: &str,
        digest: &str,
        ca: &pki::TestSigstore,
        cert: &pki::KeylessCert,
        edit: &dyn Fn(&mut Value),
    ) {
        let image: sigstore::registry::OciReference =
            format!("{}/{repo}@{digest}", self.addr).parse().expect("reference");
        let layer = sigstore::cosign::SignatureLayer::new_unsigned(&image, digest).expect("payload");
        let payload = serde_json::to_vec(&layer.simple_signing).expect("payload json");
        let mut annotations = ca.cosign_annotations(&payload, cert);
        edit(&mut annotations);
        let config = b"{}";
        let cfg = self.push_blob(repo, config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": config.len()},
            "layers": [{
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": self.push_blob(repo, &payload),
                "size": payload.len(),
                "annotations": annotations
            }]
        });
        let tag = format!("{}.sig", digest.replace(':', "-"));
        self.push_manifest(repo, &tag, "application/vnd.oci.image.manifest.v1+json", &manifest.to_string());
    }

    /// Copies a tag within the registry as it is (manifest and all).
    pub fn copy_tag(&self, repo: &str, from: &str, to: &str) {
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests"]);
        if let Some((u, p)) = &self.creds {
            copy.arg("--src-creds").arg(format!("{u}:{p}")).arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        run(copy
            .arg(format!("docker://{}/{repo}:{from}", self.addr))
            .arg(format!("docker://{}/{repo}:{to}", self.addr)));
    }

    fn curl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail-with-body"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("-u").arg(format!("{u}:{p}"));
        }
        run(cmd.args(args))
    }

    /// Uploads a blob through the registry API; returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256(bytes));
        let file = self.work.join(sha256(bytes));
        std::fs::write(&file, bytes).expect("blob file");
        let headers = self.curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
        ]);
        let location = headers
            .lines()
            .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
            .expect("upload location")
            .trim()
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let url =
            if location.starts_with("http") { location.clone() } else { format!("http://{}{location}", self.addr) };
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{url}{sep}digest={digest}"),
        ]);
        digest
    }

    /// Pushes a manifest document as `repo:tag`; returns its digest.
    pub fn push_manifest(&self, repo: &str, tag: &str, media_type: &str, manifest: &str) -> String {
        let file = self.work.join("manifest.json");
        std::fs::write(&file, manifest).expect("manifest file");
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{}/v2/{repo}/manifests/{tag}", self.addr),
        ]);
        format!("sha256:{}", sha256(manifest.as_bytes()))
    }

    /// Publishes `wasm` as a Wasm component artifact (wasm config + one
    /// application/wasm layer), the CNCF wasm OCI format.
    /// Two one-file images (`arch` = amd64 and arm64) and an OCI index of
    /// both under `repo:tag`; returns (index, amd64, arm64) digests.
    pub fn push_two_platform_index(&self, repo: &str, tag: &str) -> (String, String, String) {
        let amd64 = self.push_image(repo, "amd64", &[("arch", "amd64")]);
        let arm64 = self.push_image(repo, "arm64", &[("arch", "arm64")]);
        let index = two_platform_index(&self.manifest_entry(repo, &amd64), &self.manifest_entry(repo, &arm64));
        let digest = self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index);
        (digest, amd64, arm64)
    }

    /// An index entry for a manifest in `repo`: its digest and its size as served.
    pub fn manifest_entry(&self, repo: &str, digest: &str) -> (String, usize) {
        let out = Command::new("curl")
            .args(["-sS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
            .arg(format!("http://{}/v2/{repo}/manifests/{digest}", self.addr))
            .output()
            .expect("curl");
        (digest.to_string(), out.stdout.len())
    }

    pub fn push_wasm(&self, repo: &str, tag: &str, wasm: &[u8]) -> String {
        let config = br#"{"created":"2026-01-01T00:00:00Z","architecture":"wasm","os":"wasip2","layerDigests":[]}"#;
        self.push_artifact(repo, tag, "application/vnd.wasm.config.v0+json", config, &[("application/wasm", wasm)])
    }

    pub fn push_artifact(
        &self,
        repo: &str,
        tag: &str,
        config_type: &str,
        config: &[u8],
        layers: &[(&str, &[u8])],
    ) -> String {
        let cfg = self.push_blob(repo, config);
        let layers: Vec<String> = layers
            .iter()
            .map(|(mt, bytes)| {
                format!(r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#, self.push_blob(repo, bytes), bytes.len())
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{config_type}","digest":"{cfg}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layers.join(",")
        );
        self.push_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", &manifest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the tampering proxy changes a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Flip one byte of every blob body (same length).
    FlipBlobByte,
    /// Serve only the first half of every blob (with a matching Content-Length).
    TruncateBlob,
    /// Append bytes to every blob (with a matching Content-Length).
    LengthenBlob,
    /// Answer manifests with a wrong Docker-Content-Digest header.
    WrongDigestHeader,
    /// Serve a manifest that is also an index (with a matching digest header).
    ConfuseManifest,
    /// Serve manifests with an index Content-Type.
    WrongMediaType,
    /// Name a host file ([`TRAVERSAL_BAIT`]) as the first layer's digest
    /// (`sha256:/path`), with a matching digest header.
    TraversalDigest,
}

/// A file outside any store that [`Tamper::TraversalDigest`] points a layer at.
pub const TRAVERSAL_BAIT: &str = "/tmp/era-test-traversal-bait.tar";

/// An HTTP proxy on 127.0.0.1 in front of `upstream` (a registry) that
/// tampers with its answers; returns `127.0.0.1:PORT`.
pub fn tampering_proxy(upstream: &str, tamper: Tamper) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&client);
                let mut head = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if !line.to_ascii_lowercase().starts_with("connection:")
                        && !line.to_ascii_lowercase().starts_with("host:")
                    {
                        head.push_str(&line);
                    }
                    line.clear();
                }
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else { return };
                let _ = write!(up, "{head}Host: {upstream}\r\nConnection: close\r\n\r\n");
                let mut raw = Vec::new();
                let _ = up.read_to_end(&mut raw);
                let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(raw.len());
                let (headers, mut body) = (String::from_utf8_lossy(&raw[..split]).into_owned(), raw[split..].to_vec());
                let mut headers: Vec<String> = headers.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
                let ok = headers.first().is_some_and(|s| s.contains(" 200 "));
                let set = |headers: &mut Vec<String>, name: &str, value: &str| {
                    headers.retain(|h| !h.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())));
                    headers.push(format!("{name}: {value}"));
                };
                let is_blob = path.contains("/blobs/sha256:");
                let is_manifest = path.contains("/manifests/");
                if ok {
                    match tamper {
                        Tamper::FlipBlobByte if is_blob && !body.is_empty() => {
                            let i = body.len() / 2;
                            body[i] ^= 0xff;
                        }
                        Tamper::TruncateBlob if is_blob => body.truncate(body.len() / 2),
                        Tamper::LengthenBlob if is_blob => body.extend_from_slice(b"and some more bytes"),
                        Tamper::WrongDigestHeader if is_manifest => {
                            set(
                                &mut headers,
                                "Docker-Content-Digest",
                                &format!("sha256:{}", sha256(b"another manifest")),
                            );
                        }
                        Tamper::ConfuseManifest if is_manifest => {
                            let mut doc: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
                            doc["manifests"] = serde_json::json!([{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha256(b"x")), "size": 1}]);
                            body = serde_json::to_vec(&doc).expect("JSON");
                            set(&mut headers, "Docker-Content-Digest", &format!("sha256:{}", sha256(&body)));
                        }
                        Tamper::TraversalDigest if is_manifest => {
                            let mut doc: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
                            doc["layers"][0]["digest"] = serde_json::json!(format!("sha256:{TRAVERSAL_BAIT}"));
                            body = serde_json::to_vec(&doc).expect("JSON");
                            set(&mut headers, "Docker-Content-Digest", &format!("sha256:{}", sha256(&body)));
                        }
                        Tamper::WrongMediaType if is_manifest => {
                            set(&mut headers, "Content-Type", "application/vnd.oci.image.index.v1+json");
                        }
                        _ => {}
                    }
                }
                set(&mut headers, "Content-Length", &body.len().to_string());
                set(&mut headers, "Connection", "close");
                let mut out = &client;
                let _ = out.write_all(format!("{}\r\n\r\n", headers.join("\r\n")).as_bytes());
                let _ = out.write_all(&body);
            });
        }
    });
    addr
}

/// A cosign key pair made with the sigstore crate; the private key is in the
/// encrypted format `cosign generate-key-pair` writes.
pub struct CosignKey {
    pub private: PathBuf,
    pub public: PathBuf,
    pub passphrase: PathBuf,
}

impl CosignKey {
    /// The private key, ready to sign.
    pub fn signer(&self) -> sigstore::crypto::signing_key::SigStoreSigner {
        use sigstore::crypto::{SigningScheme, signing_key::SigStoreKeyPair};
        let pem = std::fs::read(&self.private).expect("read key");
        let pass = std::fs::read(&self.passphrase).expect("read passphrase");
        SigStoreKeyPair::from_encrypted_pem(&pem, &pass)
            .and_then(|p| p.to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1))
            .expect("load signing key")
    }

    pub fn generate(dir: &Path, name: &str) -> CosignKey {
        let signer = sigstore::crypto::SigningScheme::ECDSA_P256_SHA256_ASN1.create_signer().expect("new key");
        let pair = signer.to_sigstore_keypair().expect("key pair");
        let passphrase = b"era-test-passphrase";
        let pem = pair.private_key_to_encrypted_pem(passphrase).expect("encrypt key");
        // cosign's own label; the sigstore crate writes the newer SIGSTORE one.
        let pem = pem.replace("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY");
        let key = CosignKey {
            private: dir.join(format!("{name}.key")),
            public: dir.join(format!("{name}.pub")),
            passphrase: dir.join(format!("{name}.pass")),
        };
        std::fs::write(&key.private, pem).expect("write key");
        std::fs::write(&key.public, pair.public_key_to_pem().expect("public key")).expect("write public key");
        std::fs::write(&key.passphrase, passphrase).expect("write passphrase");
        key
    }
}

/// An OCI index of an amd64 and an arm64 manifest, each given as (digest,
/// size); arm64 first, so a client that takes the first entry is caught.
pub fn two_platform_index(amd64: &(String, usize), arm64: &(String, usize)) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        arm64.0, arm64.1, amd64.0, amd64.1
    )
}
