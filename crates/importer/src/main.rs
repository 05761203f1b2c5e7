//! `importer`: runs on each clone. Receives generations from the PBS (only
//! the blobs it lacks), rebuilds them next to the restore folder, checks every
//! file against its SHA-256, swaps them in atomically, runs the import and
//! verify hooks, and reports.

mod apply;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "importer",
    version,
    about = "pullback importer (clone): receives generations, restores them atomically, runs the import and verify hooks"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the importer daemon.
    Serve,
    /// Show the last valid restore, the import in progress and the last failure.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Loads the restored folder into the software (e.g. pg_restore).
    pub import: Option<PathBuf>,
    /// Checks that the clone answers correctly (e.g. an SQL smoke query).
    pub verify: Option<PathBuf>,
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    3600
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            import: None,
            verify: None,
            timeout_secs: default_hook_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This clone's name (status, logs).
    #[serde(default = "default_name")]
    pub name: String,
    /// Local archive of received generations.
    pub store: PathBuf,
    /// The verified copy the import hook reads (PULLBACK_RESTORE_DIR).
    pub restore_dir: PathBuf,
    /// Status, journal and hook logs.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub hooks: Hooks,
    /// Generations kept in the local store (at least 1).
    #[serde(default = "default_keep")]
    pub keep: u32,
    pub server: wire::ListenConfig,
}

fn default_name() -> String {
    "importer".into()
}
fn default_keep() -> u32 {
    2
}

pub fn load_config(path: &Path) -> Result<Config> {
    let mut c: Config = wire::load_toml(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut c.store, &mut c.restore_dir, &mut c.state_dir] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for p in [&mut c.hooks.import, &mut c.hooks.verify]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    c.server.resolve_paths(base);
    if c.keep == 0 {
        anyhow::bail!("config {}: keep must be at least 1", path.display());
    }
    c.server
        .token_set()
        .with_context(|| format!("config {}: [server] tokens", path.display()))?;
    Ok(c)
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
    let r = (|| -> Result<ExitCode> {
        let path = cli
            .config
            .as_deref()
            .context("no configuration: pass --config FILE")?;
        let cfg = load_config(path)?;
        match cli.cmd {
            Cmd::Serve => {
                let rt = tokio::runtime::Runtime::new()?;
                rt.block_on(server::serve(cfg))?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Status { json } => server::print_status(&cfg, json),
        }
    })();
    wire::cli::exit("importer", r)
}
