//! `exporter`: runs on the main node. Runs the export hook on a cron schedule
//! or on demand, snapshots the backup folder into a local outbox archive
//! (file list, modes, per-file SHA-256; deltas against the previous export),
//! notifies every PBS and serves the snapshot read-only to them.

mod cli;
mod daemon;
mod ha;
mod missed;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Deserialize;

type Cli = wire::cli::Cli<Cmd>;

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: exports on the schedule, serves snapshots to the PBS.
    Serve,
    /// One export now (through the running daemon if there is one); exits 0
    /// only once a PBS has committed it.
    Run {
        /// Print the run's result as JSON (no spinner).
        #[arg(long)]
        json: bool,
    },
    /// The last export, the last success and the last failure.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Dumps the software's data into PULLBACK_BACKUP_DIR.
    pub export: PathBuf,
    /// Stops the software taking writes when this node steps down (PULLBACK_EPOCH).
    pub demote: Option<PathBuf>,
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name, as the PBS knows it (its `[[source]] exporter` name).
    #[serde(default = "default_name")]
    pub name: String,
    /// The source name this node's data is archived under.
    pub source: String,
    /// Where the export hook writes its dump (kept between runs).
    pub backup_dir: PathBuf,
    /// Outbox archive, status and hook logs.
    pub state_dir: PathBuf,
    /// The node's role file (MAIN or BACKUP, and the epoch), read by the `pullback-node`
    /// launcher. A node that runs both an exporter and an importer gives both configs the
    /// same file, so that a promotion or a step-down is seen by the other daemon. Default:
    /// `state_dir/role.json`.
    pub role_file: Option<PathBuf>,
    /// 5-field cron (UTC); default hourly; "off" for on-demand only.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Export attempts per run (hook failures, data changing while read).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Glob patterns (relative to backup_dir) left out of the snapshot.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Publish a backup folder that is empty. Off by default: an export hook
    /// that wrote nothing or emptied the backup folder is a failed export, not a
    /// generation that every clone would restore (and verify) as empty.
    #[serde(default)]
    pub allow_empty: bool,
    pub hooks: Hooks,
    pub server: wire::ListenConfig,
    /// The backup servers to notify.
    #[serde(default)]
    pub pbs: Vec<wire::PeerConfig>,
    /// The epoch assumed before any role file exists (the coordinator's grant decides the
    /// epoch this node exports under).
    #[serde(default)]
    pub epoch: u64,
    /// How long `run` waits for a PBS to commit.
    #[serde(default = "default_commit_timeout")]
    pub commit_timeout_secs: u64,
    /// Generations kept in the outbox (the PBS deltas against them).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_name() -> String {
    "exporter".into()
}
fn default_schedule() -> String {
    "0 * * * *".into()
}
fn default_attempts() -> u32 {
    3
}
fn default_commit_timeout() -> u64 {
    3600
}
fn default_keep() -> u32 {
    2
}

impl Config {
    /// The node's role file (`role_file`, default `state_dir/role.json`).
    pub fn role_path(&self) -> PathBuf {
        self.role_file
            .clone()
            .unwrap_or_else(|| wire::ha::RoleFile::path(&self.state_dir))
    }
}

pub fn load_config(path: &Path) -> Result<Config> {
    let mut c: Config = wire::load_toml(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut c.backup_dir, &mut c.state_dir, &mut c.hooks.export]
        .into_iter()
        .chain(c.hooks.demote.as_mut())
        .chain(c.role_file.as_mut())
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    c.server.resolve_paths(base);
    for p in &mut c.pbs {
        p.resolve_paths(base);
    }
    let at = || format!("config {}", path.display());
    archive::SourceName::new(&c.source)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: source", at()))?;
    if c.attempts == 0 || c.keep == 0 {
        anyhow::bail!("{}: attempts and keep must be at least 1", at());
    }
    if c.schedule != "off" {
        let n = c.schedule.split_whitespace().count();
        if n != 5 {
            anyhow::bail!(
                "{}: schedule = {:?}: expected 5 cron fields (minute hour day month weekday) or \"off\"",
                at(),
                c.schedule
            );
        }
    }
    c.server
        .token_set()
        .with_context(|| format!("{}: [server] tokens", at()))?;
    Ok(c)
}

fn main() -> ExitCode {
    archive::tune_allocator();
    wire::cli::main(wire::binary!(), |cli: Cli| {
        let cfg = load_config(cli.config.required()?)?;
        wire::cli::block_on(async {
            match cli.cmd {
                Cmd::Serve => daemon::serve(cfg).await.map(|_| ExitCode::SUCCESS),
                Cmd::Run { json } => cli::run_cli(cfg, json).await,
                Cmd::Status { json } => cli::status_cli(cfg, json).await,
            }
        })?
    })
}

wire::every_argument_has_help!(Cli);
