//! `importer`: runs on each clone (receive, check, restore atomically, hooks, takeover page).
//! Not built yet: it arrives with the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "importer",
    version,
    about = "pullback importer (clone): receives generations, restores them atomically and runs the import and verify hooks"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// serve | run | status
    command: Option<String>,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("importer: not built yet: the receive/restore/verify pipeline is the next piece of work; today use `pbs archive restore`");
    ExitCode::from(2)
}
