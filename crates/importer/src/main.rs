//! `importer`: runs on each clone. Receives generations from the PBS (only
//! the blobs it lacks), rebuilds them next to the restore folder, checks every
//! file against its SHA-256, swaps them in atomically, runs the import and
//! verify hooks, and reports.

mod apply;
mod coordinator;
mod guard;
mod pbs_list;
mod server;
mod status;
mod takeover;
mod takeover_page;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Deserialize;

type Cli = wire::cli::Cli<Cmd>;

#[derive(Subcommand)]
enum Cmd {
    /// Run the importer daemon.
    Serve,
    /// Show the last valid restore, the import in progress and the last failure.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read a takeover password from stdin, print its argon2id hash (PHC string) for
    /// `[takeover] password_hash`.
    HashPassword,
    /// Wipe this node's pullback state so that it can come back as a clone (`pbs rejoin
    /// NAME` next): the local store, the restore folder and its staging copy, the state
    /// folder, and with --exporter-state the exporter's role file. The node must be stopped.
    Rejoin {
        /// The exporter's state_dir on this node (its role.json is removed so that the
        /// launcher starts the importer).
        #[arg(long)]
        exporter_state: Option<PathBuf>,
        /// Required: this deletes data.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Loads the restored folder into the software (e.g. pg_restore).
    pub import: Option<PathBuf>,
    /// Checks that the clone answers correctly (e.g. an SQL smoke query).
    pub verify: Option<PathBuf>,
    /// Makes the clone serve when it takes over (PULLBACK_EPOCH, PULLBACK_RESTORE_DIR).
    pub promote: Option<PathBuf>,
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
            promote: None,
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
    /// The node's role file (MAIN or BACKUP, and the epoch), read by the `pullback-node`
    /// launcher. A node that runs both an exporter and an importer gives both configs the
    /// same file, so that a promotion or a step-down is seen by the other daemon. Default:
    /// `state_dir/role.json`.
    pub role_file: Option<PathBuf>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Generations kept in the local store (at least 1).
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// A pull from the PBS whose request gets no answer for this long fails (the clone
    /// is told again of the newest generation when the PBS is back).
    #[serde(default = "default_receive_timeout")]
    pub receive_timeout_secs: u64,
    pub server: wire::ListenConfig,
    /// The PBS this clone belongs to: `[coordinator]`, or several `[[coordinator]]` in
    /// order of preference. Each one's `name` is the token peer it uses here (the peers
    /// that may notify or promote this clone); a notified generation is pulled from the
    /// PBS that notified it. The clone says hello to every one at start, and asks them in
    /// order (the first that answers decides) before it believes an epoch or a promotion,
    /// and for a takeover. Each token is the one that PBS accepts for peer = this clone's
    /// name. See `pbs_list.rs`.
    pub coordinator: pbs_list::Coordinators,
    #[serde(default)]
    pub takeover: TakeoverConfig,
}

fn default_receive_timeout() -> u64 {
    300
}

/// `[takeover]`: the password of the takeover page and API, and its rate limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverConfig {
    /// argon2 PHC string (`importer hash-password`); no takeover by password without it.
    pub password_hash: Option<String>,
    /// Wrong passwords within a minute before the page locks.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long it then refuses every password.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
}

impl Default for TakeoverConfig {
    fn default() -> Self {
        TakeoverConfig {
            password_hash: None,
            max_failures: default_max_failures(),
            lockout_secs: default_lockout(),
        }
    }
}

fn default_max_failures() -> u32 {
    3
}
fn default_lockout() -> u64 {
    30
}

fn default_name() -> String {
    "importer".into()
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
    for p in [&mut c.store, &mut c.restore_dir, &mut c.state_dir]
        .into_iter()
        .chain(c.role_file.as_mut())
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for p in [
        &mut c.hooks.import,
        &mut c.hooks.verify,
        &mut c.hooks.promote,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    c.server.resolve_paths(base);
    c.coordinator.resolve_paths(base);
    if let Some(h) = &c.takeover.password_hash {
        argon2::PasswordHash::new(h).map_err(|e| {
            anyhow::anyhow!(
                "config {}: takeover.password_hash is not an argon2 PHC string ({e}): make one with `importer hash-password`",
                path.display()
            )
        })?;
    }
    if c.takeover.max_failures == 0 {
        anyhow::bail!(
            "config {}: takeover.max_failures must be at least 1",
            path.display()
        );
    }
    if c.keep == 0 {
        anyhow::bail!("config {}: keep must be at least 1", path.display());
    }
    c.server
        .token_set()
        .with_context(|| format!("config {}: [server] tokens", path.display()))?;
    Ok(c)
}

/// `importer rejoin`: clear what this node held, so that the next generation the PBS
/// pushes is restored from scratch (the import hook then replaces the software's data).
fn wipe_for_rejoin(cfg: &Config, exporter_state: Option<&Path>, yes: bool) -> Result<ExitCode> {
    if !yes {
        anyhow::bail!("rejoin deletes this node's store, restore folder and state: add --yes");
    }
    let addr = cfg.server.local_addr();
    if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok() {
        anyhow::bail!("something listens on {addr}: stop the importer on this node first");
    }
    let mut staging = cfg.restore_dir.as_os_str().to_owned();
    staging.push(".staging");
    let mut gone = Vec::new();
    for dir in [
        cfg.store.clone(),
        cfg.restore_dir.clone(),
        PathBuf::from(staging),
        cfg.state_dir.clone(),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            gone.push(dir.display().to_string());
        }
    }
    if let Some(ex) = exporter_state {
        let role = wire::ha::RoleFile::path(ex);
        if role.exists() {
            std::fs::remove_file(&role).with_context(|| format!("removing {}", role.display()))?;
            gone.push(role.display().to_string());
        }
    }
    for g in &gone {
        wire::outln!("removed {g}")?;
    }
    // BACKUP and not fenced: the launcher runs this node's importer from now on.
    let role = cfg.role_path();
    if let Some(dir) = role.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    wire::ha::RoleFile {
        role: wire::ha::Role::Backup,
        epoch: 0,
        fenced: false,
    }
    .save(&role)
    .with_context(|| format!("writing {}", role.display()))?;
    wire::outln!(
        "{}: BACKUP (the launcher runs the importer)",
        role.display()
    )?;
    wire::outln!(
        "node {} is ready to rejoin: start it (importer serve), then on {} run `pbs rejoin {}`",
        cfg.name,
        match cfg.coordinator.iter().count() {
            1 => format!("the PBS ({})", cfg.coordinator.names()),
            _ => format!("each PBS ({})", cfg.coordinator.names()),
        },
        cfg.name
    )?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    archive::tune_allocator();
    wire::cli::main(wire::binary!(), |cli: Cli| {
        if matches!(cli.cmd, Cmd::HashPassword) {
            return takeover::hash_password_cli();
        }
        let cfg = load_config(cli.config.required()?)?;
        match cli.cmd {
            Cmd::Serve => {
                wire::cli::block_on(server::serve(cfg))??;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Status { json } => status::print_status(&cfg, json),
            Cmd::HashPassword => takeover::hash_password_cli(),
            Cmd::Rejoin {
                exporter_state,
                yes,
            } => wipe_for_rejoin(&cfg, exporter_state.as_deref(), yes),
        }
    })
}

wire::every_argument_has_help!(Cli);
