//! `pbs`: the pull-backup server. Today: the archive commands.

mod archive_cmd;
mod config;

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
    /// Run the server (pull, store, push): not built yet.
    Serve,
    /// Show sources, importers and their last results: not built yet.
    Status,
}

fn main() -> ExitCode {
    archive::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PULLBACK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = (|| -> anyhow::Result<ExitCode> {
        let cfg = match &cli.config {
            Some(p) => config::load(p)?,
            None => config::Config::default(),
        };
        match cli.cmd {
            Cmd::Archive(a) => archive_cmd::run(a, cli.archive.or(cfg.archive.path.clone()), &cfg),
            Cmd::Serve | Cmd::Status => {
                eprintln!("pbs: the server (serve, status) is not built yet; today pbs offers `pbs archive ...`");
                Ok(ExitCode::from(2))
            }
        }
    })();
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pbs: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
