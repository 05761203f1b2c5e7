//! `pbs`: the pull-backup server. Today: the archive commands.

mod archive_cmd;
mod config;
mod coord;
mod daemon;
mod ha_api;
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
        #[arg(long)]
        json: bool,
    },
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
        let cfg = match &cli.config {
            Some(p) => config::load(p)?,
            None => config::Config::default(),
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
                let sd = cfg
                    .state_dir
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no state_dir in the config"))?;
                status::print(&cfg, &sd, json)
            }
        }
    })();
    wire::cli::exit("pbs", r)
}
