//! `erad`: the era runtime manager daemon.

use anyhow::Context;
use clap::Parser;
use erad::config::{DaemonConfig, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "erad", version, about = "The era runtime manager daemon")]
struct Args {
    /// The config file.
    #[arg(long, env = "ERAD_CONFIG", default_value = "/etc/era/erad.toml", conflicts_with = "dev")]
    config: PathBuf,
    /// Run on the embedded default config, with data and socket under DIR.
    #[arg(long, value_name = "DIR")]
    dev: Option<PathBuf>,
    /// Where the bundled plugins are, with --dev (default: `plugins` beside the erad binary).
    #[arg(long, env = "ERAD_PLUGIN_DIR", value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Overrides `daemon.data_dir`.
    #[arg(long, env = "ERAD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `daemon.socket`.
    #[arg(long, env = "ERAD_SOCKET")]
    socket: Option<PathBuf>,
    /// Overrides `daemon.log_format`: text or json.
    #[arg(long, env = "ERAD_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Overrides `daemon.log_level` (a tracing filter).
    #[arg(long, env = "ERAD_LOG_LEVEL")]
    log_level: Option<String>,
    /// Overrides `artifacts.file_roots`: a directory `file:` artifacts may be
    /// read from (repeat it, or separate them with `:` in the variable).
    #[arg(long = "file-root", env = "ERAD_FILE_ROOTS", value_name = "DIR", value_delimiter = ':')]
    file_roots: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Print the JSON Schema of a deployment spec.
    Schema,
    /// Check the config file and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where `erad --dev` finds the plugins without `--plugin-dir`: `plugins/`
/// next to the binary (an install), else `era-plugins/` in the target dir
/// above it (what `scripts/build-plugins` makes).
fn default_plugin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("erad's own path has no parent")?;
    let candidates = [dir.join("plugins"), dir.join("../era-plugins")];
    match candidates.iter().find(|c| c.join("container.wasm").is_file()) {
        Some(found) => Ok(found.clone()),
        None => anyhow::bail!(
            "--dev: no plugins in {} or {}: build them with scripts/build-plugins, or name their dir with --plugin-dir",
            candidates[0].display(),
            candidates[1].display()
        ),
    }
}

fn load_config(args: &Args) -> anyhow::Result<DaemonConfig> {
    let mut cfg = match &args.dev {
        Some(dir) => {
            // The socket's directory: 0750 as erad makes it elsewhere.
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
                .create(dir)
                .with_context(|| format!("dev dir {}", dir.display()))?;
            let dir = std::fs::canonicalize(dir)?;
            let plugins = match &args.plugin_dir {
                Some(p) => p.clone(),
                None => default_plugin_dir()?,
            };
            DaemonConfig::dev(&dir, &std::path::absolute(plugins)?)?
        }
        None => DaemonConfig::load(&args.config)?,
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = std::path::absolute(d)?;
    }
    if let Some(s) = &args.socket {
        cfg.socket = std::path::absolute(s)?;
    }
    if let Some(f) = &args.log_format {
        cfg.log_format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
    }
    if let Some(l) = &args.log_level {
        cfg.log_level = l.clone();
    }
    if !args.file_roots.is_empty() {
        let roots = args.file_roots.iter().map(std::path::absolute).collect::<Result<Vec<_>, _>>()?;
        if let Some(root) = roots.iter().find(|r| erad::artifact::roots::normalize(r) == std::path::Path::new("/")) {
            anyhow::bail!(
                "--file-root {}: \"/\" would let a spec read any file erad can: name the directories that hold artifacts",
                root.display()
            );
        }
        cfg.file_roots = roots;
    }
    Ok(cfg)
}

/// One place for logging: the config's filter, quieting the noisy crates.
fn init_logging(cfg: &DaemonConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(format!(
        "{},cranelift_codegen=warn,wasmtime=warn,h2=warn,hyper=warn,tower=warn",
        cfg.log_level
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Sub::Schema) => {
            println!("{}", serde_json::to_string_pretty(&erad::spec::json_schema())?);
            return Ok(());
        }
        Some(Sub::CheckConfig) => {
            let cfg = load_config(&args)?;
            for (key, group) in [("api.admin_group", &cfg.api.admin_group), ("api.read_group", &cfg.api.read_group)] {
                if let Some(g) = group {
                    erad::server::auth::resolve_group(key, g)?;
                }
            }
            println!(
                "config is valid: data dir {}, socket {}, {} plugin(s)",
                cfg.data_dir.display(),
                cfg.socket.display(),
                cfg.plugins.len()
            );
            return Ok(());
        }
        None => {}
    }
    let cfg = load_config(&args)?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // Handlers first: a SIGTERM right after READY must drain, not kill.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let daemon = erad::Daemon::builder(cfg).start().await?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        match erad::memory::release_startup_memory() {
            Ok(bytes) => tracing::debug!(code_bytes = bytes, "start-up memory given back"),
            Err(e) => tracing::warn!("cannot give back start-up code pages: {e}"),
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining the API; workloads keep running"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining the API; workloads keep running"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        daemon.shutdown().await;
        Ok(())
    })
}
