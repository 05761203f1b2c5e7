//! `exporter`: runs on the main node (export hook, notify, serve the snapshot).
//! Not built yet: it arrives with the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "exporter",
    version,
    about = "pullback exporter (main node): runs the export hook and serves the snapshot to the PBS"
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
    eprintln!("exporter: not built yet: the export/notify/serve pipeline is the next piece of work; today use `pbs archive ingest`");
    ExitCode::from(2)
}
