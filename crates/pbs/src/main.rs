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
mod push;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pbs",
    version,
    about = "pullback pull-backup server: archive, verify, prune, push to clones"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Archive folder (overrides the config's [archive] path).
    #[arg(long, global = true)]
    archive: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
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
    let token = server.tokens.iter().find(|t| t.peer == "admin").context(
        "[server] tokens has no entry for peer \"admin\" (used by switchover, balance, rejoin)",
    )?;
    let mut addr = server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if server.cert.is_some() {
        "https"
    } else {
        "http"
    };
    let wait = std::time::Duration::from_secs(cfg.failover.switchover_timeout_secs + 120);
    wire::Client::new(
        &format!("{scheme}://{addr}"),
        Some(&token.token),
        server.cert.as_deref(),
        wait,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// One admin request to the running server; prints its JSON answer.
fn ha_call(cfg: &config::Config, path: &str, body: serde_json::Value) -> anyhow::Result<ExitCode> {
    let client = local_client(cfg)?;
    let rt = tokio::runtime::Runtime::new()?;
    let v: serde_json::Value = rt
        .block_on(client.post_json(path, &body))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    wire::outln!("{}", serde_json::to_string_pretty(&v)?)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    archive::tune_allocator();
    let cli = Cli::parse();
    // Daemons log their work; one-shot commands only warnings.
    wire::cli::init_logging(if matches!(cli.cmd, Cmd::Serve) {
        "info"
    } else {
        "warn"
    });
    let r = (|| -> anyhow::Result<ExitCode> {
        // Only the archive commands work without a config (given --archive DIR).
        let config_file = cli.config.clone().unwrap_or_default();
        let cfg = match &cli.config {
            Some(p) => config::load(p)?,
            None if matches!(cli.cmd, Cmd::Archive(_)) => config::Config::default(),
            None => anyhow::bail!("no configuration: pass --config FILE"),
        };
        match cli.cmd {
            Cmd::Archive(a) => archive_cmd::run(a, cli.archive.or(cfg.archive.path.clone()), &cfg),
            Cmd::Serve => {
                let path = cli
                    .archive
                    .or(cfg.archive.path.clone())
                    .ok_or_else(|| anyhow::anyhow!("no archive: set [archive] path in --config"))?;
                let rt = tokio::runtime::Runtime::new()?;
                rt.block_on(daemon::serve(cfg, path))?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Status { json } => {
                let mut cfg = cfg;
                if let Some(a) = cli.archive {
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
    })();
    wire::cli::exit("pbs", r)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag, positional and subcommand has a help text (a doc comment).
    #[test]
    fn every_argument_has_help() {
        wire::cli::assert_every_argument_has_help(super::Cli::command());
    }
}
