//! `era`: the operator's command line for erad.
//!
//! Exit codes scripts can trust: 0 success, 1 the operation failed,
//! 2 bad usage or an invalid spec, 3 the daemon is unreachable, 4 permission
//! denied (the caller's role does not allow it, or the socket is not theirs);
//! `era plan --detailed-exitcode` exits 5 when the plan would change something.

mod client;
mod commands;
mod output;
mod progress;
mod target;
mod wait;

use clap::{Parser, Subcommand};
use client::CliError;
use output::Format;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use target::Target;

#[derive(Parser, Debug)]
#[command(name = "era", version, about = "Deploy and supervise workloads with erad")]
pub struct Cli {
    /// erad's socket.
    #[arg(long, global = true, env = "ERA_SOCKET", default_value = "/run/era/erad.sock")]
    socket: PathBuf,
    /// Output format of read commands.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Return when the deployment settles; exit 0 only if it got where it was asked to go.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (e.g. 90s, 5m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a deployment or roll out a new revision of it; or carry out a
    /// saved plan (`--plan`).
    Apply {
        /// The spec file (YAML or JSON); `-` reads standard input.
        #[arg(short, long, required_unless_present = "plan", conflicts_with = "plan")]
        file: Option<PathBuf>,
        /// A plan `era plan` saved: its id, or the file `era plan --out` wrote.
        /// Applied all of it, only if nothing it was made against changed.
        #[arg(long, conflicts_with = "wait")]
        plan: Option<String>,
        /// With --plan: the environment the plan must be of (a plan of
        /// another is refused).
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
        /// With --plan, in a protected environment: apply though a
        /// deployment has drifted from its record.
        #[arg(long)]
        accept_drift: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Where each deployment stands against its runtime (healthy, drifted,
    /// deploying, failed, unknown), and each environment; changes nothing.
    Report {
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
        /// erad's last periodic check ([drift] interval) instead of asking
        /// the runtimes now.
        #[arg(long)]
        last: bool,
    },
    /// What applying a set of specs (an environment's whole desired state)
    /// would add, change and destroy, field by field, without changing
    /// anything; saved for `era apply --plan`.
    Plan {
        /// A spec file (one or more YAML documents), or a directory of them
        /// (`.yaml`, `.yml`, `.json`).
        #[arg(short, long)]
        file: PathBuf,
        /// The environment the set is the whole of.
        #[arg(long, env = "ERA_ENV", default_value = "default")]
        env: String,
        /// Also write the plan to this file (for `era apply --plan FILE`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit 0 when nothing would change, 5 when something would.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Check a spec against erad without changing anything.
    Validate {
        #[arg(short, long)]
        file: PathBuf,
        /// Also print what its runtime would make (the objects a remote
        /// runtime would apply), as the plugin renders them.
        #[arg(long)]
        render: bool,
    },
    /// Remove every deployment of an environment (and everything they made;
    /// their history stays).
    Destroy {
        /// The environment.
        #[arg(long, env = "ERA_ENV")]
        env: String,
        /// The environment's name; for a protected environment the phrase
        /// "destroy ENV". Asked for on a terminal when not given.
        #[arg(long)]
        confirm: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The run history (plans, applies of plans, destroys, force-unlocks),
    /// newest first; `runs show ID` for what one did.
    Runs {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
        #[command(subcommand)]
        command: Option<RunsCommand>,
    },
    /// A deployment's outputs: each declared one with its type, value and
    /// where the value came from (override, runtime, default); `set` and
    /// `unset` an operator's override.
    #[command(args_conflicts_with_subcommands = true)]
    Outputs {
        name: Option<String>,
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
        #[command(subcommand)]
        command: Option<OutputsCommand>,
    },
    /// Take a deployment to another environment exactly as one runs it: its
    /// spec as written, its verified artifact digest, only the target's
    /// overlay merged. Applied at once unless the target is protected (then
    /// `era apply --plan ID`); a no-op when the target already runs it.
    Promote {
        name: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Check the invariants now: every container in erad's runtime roots is
    /// a recorded revision of a live deployment, and every live OCI digest
    /// passes the trust policy as it is now. A breach halts its
    /// environment's applies, starts and restarts until it is gone or
    /// acknowledged (`ack`).
    #[command(args_conflicts_with_subcommands = true)]
    Invariants {
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
        #[command(subcommand)]
        command: Option<InvariantsCommand>,
    },
    /// Environment locks: who holds them, and forcing one open.
    Lock {
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Show one deployment.
    Get {
        #[command(flatten)]
        target: Target,
    },
    /// List deployments.
    #[command(alias = "ls")]
    List {
        /// Include deleted deployments.
        #[arg(long)]
        all: bool,
        /// Only this environment's.
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
    },
    /// Follow transitions as they happen (all deployments, one, or one
    /// environment's with --env alone).
    Watch {
        name: Option<String>,
        #[arg(long, env = "ERA_ENV")]
        env: Option<String>,
    },
    /// Every transition of a deployment, oldest first.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Go back to an earlier revision.
    Rollback {
        #[command(flatten)]
        target: Target,
        /// The revision to return to (default: the one before the serving one).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a deployment; its volumes and identity stay.
    Stop {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start a stopped deployment.
    Start {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a deployment and everything it made; its history stays. With
    /// --all-envs: forget a name every environment has destroyed (its
    /// records go), once each environment's report passes.
    Delete {
        #[command(flatten)]
        target: Target,
        #[arg(long, conflicts_with = "wait")]
        all_envs: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The workload's output (stdout and stderr), from its runtime.
    Logs {
        #[command(flatten)]
        target: Target,
        /// Keep printing what it writes.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Another revision than the serving one (while its work dir exists).
        #[arg(long)]
        revision: Option<u64>,
    },
    /// The runtime plugins erad has loaded.
    Plugins,
    /// Fetch and verify an OCI artifact into erad's content store ahead of use.
    Pull {
        reference: String,
        /// What the reference is: image, wasm or blob.
        #[arg(long, default_value = "image", value_parser = ["image", "wasm", "blob"])]
        kind: String,
        /// The manifest digest the reference must resolve to.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// The OCI artifacts in erad's content store.
    Images,
    /// Check an image's (or OCI artifact's) cosign signatures, without erad.
    /// Exit 0 only when a signature by one of the given signers verifies.
    Verify {
        reference: String,
        /// What the reference is: image, wasm or blob.
        #[arg(long, default_value = "image", value_parser = ["image", "wasm", "blob"])]
        kind: String,
        #[command(flatten)]
        signers: commands::verify::SignerArgs,
        /// Plain HTTP to a registry that is not on a loopback address.
        #[arg(long)]
        insecure: bool,
    },
    /// Check a file, or a digest (`sha256:<hex>`), against a sigstore bundle
    /// (v0.1 to v0.3), offline, without erad.
    #[command(name = "verify-blob")]
    VerifyBlob {
        /// The artifact, or its digest as `sha256:<64 hex>`.
        file: PathBuf,
        /// The bundle (`.sigstore.json`).
        #[arg(long)]
        bundle: PathBuf,
        #[command(flatten)]
        signers: commands::verify::SignerArgs,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// One run: who, when, what came of it, and what it did.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
enum OutputsCommand {
    /// Override a declared output (a value of its type; a credential the
    /// runtime generated cannot be overridden).
    Set {
        #[command(flatten)]
        target: Target,
        key: String,
        value: String,
    },
    /// Remove an override: the runtime's value, or the default, applies again.
    Unset {
        #[command(flatten)]
        target: Target,
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum InvariantsCommand {
    /// Let an environment's reconciliation go on despite its breaches.
    Ack {
        #[arg(long)]
        env: String,
        /// The environment's name. Asked for on a terminal when not given.
        #[arg(long)]
        confirm: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum LockCommand {
    /// The held locks: environment, operation, holder, since when, idle time.
    #[command(alias = "ls")]
    List,
    /// Remove an environment's lock whoever holds it (a holder that died
    /// leaves one until it goes stale). Plans made before are refused after.
    ForceUnlock {
        environment: String,
        /// The environment's name; for a protected environment the phrase
        /// "force-unlock ENV". Asked for on a terminal when not given.
        #[arg(long)]
        confirm: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("era: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("era: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let fmt = cli.output;
    match cli.command {
        Command::Apply { plan: Some(plan), env, accept_drift, .. } => {
            commands::plan::apply(&cli.socket, &plan, env.as_deref(), accept_drift, fmt).await
        }
        Command::Report { env, last } => commands::report::run(&cli.socket, env.as_deref(), last, fmt).await,
        Command::Apply { file, wait, .. } => {
            let file = file.ok_or_else(|| CliError::Usage("apply needs -f FILE or --plan PLAN".into()))?;
            commands::apply::run(&cli.socket, &file, &wait, fmt).await
        }
        Command::Plan { file, env, out, detailed_exitcode } => {
            commands::plan::plan(&cli.socket, &file, &env, out.as_deref(), detailed_exitcode, fmt).await
        }
        Command::Validate { file, render } => commands::validate::run(&cli.socket, &file, render, fmt).await,
        Command::Destroy { env, confirm, wait } => commands::destroy::run(&cli.socket, &env, confirm, &wait, fmt).await,
        Command::Runs { command: Some(RunsCommand::Show { id }), .. } => {
            commands::runs::show(&cli.socket, &id, fmt).await
        }
        Command::Runs { env, command: None } => commands::runs::list(&cli.socket, env.as_deref(), fmt).await,
        Command::Outputs { command: Some(OutputsCommand::Set { target, key, value }), .. } => {
            commands::outputs::set(&cli.socket, &target, &key, Some(&value), fmt).await
        }
        Command::Outputs { command: Some(OutputsCommand::Unset { target, key }), .. } => {
            commands::outputs::set(&cli.socket, &target, &key, None, fmt).await
        }
        Command::Outputs { name: Some(name), env, command: None } => {
            commands::outputs::show(&cli.socket, &Target { name, env }, fmt).await
        }
        Command::Outputs { name: None, .. } => Err(CliError::Usage("outputs needs a deployment's NAME".into())),
        Command::Promote { name, from, to } => commands::plan::promote(&cli.socket, &name, &from, &to, fmt).await,
        Command::Invariants { command: Some(InvariantsCommand::Ack { env, confirm }), .. } => {
            commands::invariants::acknowledge(&cli.socket, &env, confirm, fmt).await
        }
        Command::Invariants { env, command: None } => {
            commands::invariants::check(&cli.socket, env.as_deref(), fmt).await
        }
        Command::Lock { command: LockCommand::List } => commands::lock::list(&cli.socket, fmt).await,
        Command::Lock { command: LockCommand::ForceUnlock { environment, confirm } } => {
            commands::lock::force_unlock(&cli.socket, &environment, confirm, fmt).await
        }
        Command::Get { target } => commands::get::run(&cli.socket, &target, fmt).await,
        Command::List { all, env } => commands::list::run(&cli.socket, all, env.as_deref(), fmt).await,
        Command::Watch { name, env } => commands::watch::run(&cli.socket, name.as_deref(), env.as_deref(), fmt).await,
        Command::History { target } => commands::history::run(&cli.socket, &target, fmt).await,
        Command::Rollback { target, to, wait } => {
            commands::action::rollback(&cli.socket, &target, to, &wait, fmt).await
        }
        Command::Stop { target, wait } => {
            commands::action::run(&cli.socket, commands::action::Action::Stop, &target, &wait, fmt).await
        }
        Command::Start { target, wait } => {
            commands::action::run(&cli.socket, commands::action::Action::Start, &target, &wait, fmt).await
        }
        Command::Delete { target, all_envs: true, .. } => {
            // ERA_ENV set in the shell is no reason to refuse; --env is.
            if target.env.is_some() && target.env != std::env::var("ERA_ENV").ok() {
                return Err(CliError::Usage("--all-envs takes every environment: drop --env".into()));
            }
            commands::action::delete_all(&cli.socket, &target.name, fmt).await
        }
        Command::Delete { target, wait, .. } => {
            commands::action::run(&cli.socket, commands::action::Action::Delete, &target, &wait, fmt).await
        }
        Command::Logs { target, follow, tail, revision } => {
            commands::logs::run(&cli.socket, &target, follow, tail, revision).await
        }
        Command::Plugins => commands::plugins::run(&cli.socket, fmt).await,
        Command::Pull { reference, kind, sha256 } => {
            commands::pull::run(&cli.socket, &reference, &kind, sha256.as_deref(), fmt).await
        }
        Command::Images => commands::images::run(&cli.socket, fmt).await,
        Command::Verify { reference, kind, signers, insecure } => {
            commands::verify::image(&reference, &kind, &signers, insecure).await
        }
        Command::VerifyBlob { file, bundle, signers } => commands::verify::blob(&file, &bundle, &signers),
    }
}
