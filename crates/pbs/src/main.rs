//! `pbs`: the pull-backup server. Today: the archive commands.

mod archive_cmd;
mod config;
mod coord;
mod daemon;
mod dashboard;
mod effects;
mod failover;
mod grant;
mod ha_api;
mod housekeeping;
mod mirror;
mod push;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

type Cli = wire::cli::Cli<Cmd, Flags>;

/// The PBS's own global flags.
#[derive(Args)]
struct Flags {
    /// Archive folder (overrides the config's [archive] path).
    #[arg(long, global = true)]
    archive: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Work on the archive directly.
    Archive(archive_cmd::ArchiveArgs),
    /// Run the server: take notifications, pull, commit, push to importers.
    Serve,
    /// Sources, importers and their last results; exits 1 when a source's
    /// newest generation is older than its max_age.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Planned, zero-loss switchover to clone NODE through the running server: the main
    /// takes a final export and steps down (BACKUP), NODE verifies it and becomes MAIN.
    Switchover {
        /// The clone that becomes the main.
        #[arg(long)]
        to: String,
    },
    /// Switchover to `[failover] preferred_leader` (nothing to do if it already leads).
    Balance,
    /// Bring NODE (e.g. a Broken former main, wiped) back as a clone: it is a Follower
    /// again once it has restored and verified the latest generation.
    Rejoin {
        /// The node's name.
        node: String,
    },
}

/// A client of the running server, as peer `admin` (its token in `[server] tokens`).
fn local_client(cfg: &config::Config) -> anyhow::Result<wire::Client> {
    use anyhow::Context;
    let server = cfg
        .server
        .as_ref()
        .context("the config has no [server] section: where is the PBS?")?;
    let wait = std::time::Duration::from_secs(cfg.failover.switchover_timeout_secs + 120);
    wire::cli::admin_client(server, "switchover, balance, rejoin", wait)
}

/// One admin request to the running server; prints its JSON answer.
fn ha_call(cfg: &config::Config, path: &str, body: serde_json::Value) -> anyhow::Result<ExitCode> {
    let client = local_client(cfg)?;
    let v: serde_json::Value =
        wire::cli::block_on(client.post_json(path, &body))?.map_err(|e| anyhow::anyhow!("{e}"))?;
    wire::outln!("{}", serde_json::to_string_pretty(&v)?)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    archive::tune_allocator();
    wire::cli::main(wire::binary!(), |cli: Cli| {
        // Only the archive commands work without a config (given --archive DIR).
        let config_file = cli.config.path.clone().unwrap_or_default();
        let cfg = match &cli.config.path {
            None if matches!(cli.cmd, Cmd::Archive(_)) => config::Config::default(),
            _ => config::load(cli.config.required()?)?,
        };
        match cli.cmd {
            Cmd::Archive(a) => {
                archive_cmd::run(a, cli.flags.archive.or(cfg.archive.path.clone()), &cfg)
            }
            Cmd::Serve => {
                let path = cli
                    .flags
                    .archive
                    .or(cfg.archive.path.clone())
                    .ok_or_else(|| anyhow::anyhow!("no archive: set [archive] path in --config"))?;
                wire::cli::block_on(daemon::serve(cfg, path))??;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Status { json } => {
                let mut cfg = cfg;
                if let Some(a) = cli.flags.archive {
                    cfg.archive.path = Some(a);
                }
                let sd = cfg.state_dir.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "config {}: no state_dir (pbs status reads the server's status there)",
                        config_file.display()
                    )
                })?;
                status::print(&cfg, &sd, json)
            }
            Cmd::Switchover { to } => {
                ha_call(&cfg, "/v1/ha/switchover", serde_json::json!({ "to": to }))
            }
            Cmd::Balance => ha_call(&cfg, "/v1/ha/balance", serde_json::json!({})),
            Cmd::Rejoin { node } => {
                ha_call(&cfg, "/v1/ha/rejoin", serde_json::json!({ "node": node }))
            }
        }
    })
}

wire::every_argument_has_help!(Cli);
