//! Runs erad inside your own program: same daemon, same socket API, no
//! separate process. Usage:
//!
//! ```text
//! cargo run -p era-embed-example -- DIR PLUGIN_DIR
//! ```
//!
//! It starts the daemon on the dev config under DIR (plugins from
//! PLUGIN_DIR, e.g. the output of `scripts/build-plugins`), applies the
//! example deployment in-process, waits for it to run, and shuts down.

use anyhow::{Context, bail};
use erad::config::DaemonConfig;
use erad::lifecycle::State;
use erad::spec::DeploymentSpec;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(plugins)) = (args.next(), args.next()) else {
        bail!("usage: era-embed-example DIR PLUGIN_DIR");
    };
    let dir = std::path::absolute(PathBuf::from(dir))?;
    let plugins = std::path::absolute(PathBuf::from(plugins))?;

    // The example's `file:` artifact sits beside its spec, outside the dev
    // dir: erad reads it only from a directory listed in `file_roots`.
    let examples = std::path::absolute(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("hello"))?;
    let mut config = DaemonConfig::dev(&dir, &plugins)?;
    config.file_roots.push(examples.clone());
    let daemon = erad::Daemon::builder(config).start().await?;
    println!("erad is serving on {} (the era CLI works against it too)", daemon.socket().display());

    // Drive it directly through the library, as the gRPC API does.
    let text = std::fs::read_to_string(examples.join("deployment.yaml")).context("reading the example spec")?;
    let spec = DeploymentSpec::parse(&text, "examples/hello/deployment.yaml")?;
    let applied = daemon.lifecycle().apply(spec, examples).await?;
    println!("applied {} revision {}", applied.name, applied.revision);

    for _ in 0..100 {
        let d = daemon.lifecycle().store().deployment(&applied.name)?;
        if d.state == State::Running {
            println!("{} is {} (revision {})", d.name, d.state, d.current_revision);
            daemon.shutdown().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.shutdown().await;
    bail!("the example did not reach Running")
}
