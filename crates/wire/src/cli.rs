//! What every pullback binary does the same way: its `main` ([`main`]: logging set-up,
//! the `--config FILE` argument [`ConfigArg`], an exit code from the result), times as
//! people read them, writing to standard output, the [`admin_client`] its commands use to
//! ask their own daemon, and the unit test of its help texts
//! ([`every_argument_has_help!`](crate::every_argument_has_help)).
//!
//! The one-shot commands print through [`outln!`](crate::outln) and
//! [`out!`](crate::out) instead of `println!`: a write to a closed standard output
//! (`pbs archive show ... | head`) is then an error, [`StdoutError`], that [`exit`]
//! turns into a quiet exit with status [`EXIT_STDOUT_CLOSED`] (141, what a shell
//! reports for a command killed by SIGPIPE), with no message. SIGPIPE itself stays
//! ignored (the Rust default), so a daemon or a client never dies from a write to a
//! closed socket.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::client::Client;
use crate::config::ListenConfig;

/// Exit status of a command whose standard output was closed before it was done
/// (128 + SIGPIPE): the output is incomplete, so it is not a success.
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// A write to standard output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

impl StdoutError {
    /// The reader went away (EPIPE): the command stops quietly.
    pub fn is_closed(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `args` (and a newline when `newline`) to standard output. Used by
/// [`outln!`](crate::outln) and [`out!`](crate::out).
pub fn write_stdout(args: fmt::Arguments<'_>, newline: bool) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .map_err(StdoutError)
}

/// `println!` for the CLIs: evaluates to `Result<(), StdoutError>` (use `?`), so that a
/// closed standard output ends the command quietly instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` for the CLIs; see [`outln!`](crate::outln).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*), false)
    };
}

/// The `--config FILE` argument of every binary (`#[command(flatten)]` it into the
/// binary's parser).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(id = "config", long = "config", value_name = "CONFIG", global = true)]
    pub path: Option<PathBuf>,
}

impl ConfigArg {
    /// The file given, or the error every binary gives without one.
    pub fn required(&self) -> anyhow::Result<&Path> {
        self.path
            .as_deref()
            .context("no configuration: pass --config FILE")
    }
}

/// The command line of every binary: `--config FILE`, the binary's own global flags `X`
/// (none by default) and its subcommand `C`. [`main`] parses it under the binary's name.
#[derive(Debug, clap::Parser)]
pub struct Cli<C: clap::Subcommand, X: clap::Args = NoFlags> {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub config: ConfigArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub flags: X,
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub cmd: C,
}

/// No global flags but `--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct NoFlags {}

/// What `--version` and `--help` say of a binary; [`binary!`](crate::binary) gives the
/// one being compiled.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// Its name (`exporter`), also the `NAME: error: ...` of a failure.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// One line on what it is.
    pub about: &'static str,
}

/// The [`Binary`] being compiled: its name, and its package's version and description.
#[macro_export]
macro_rules! binary {
    () => {
        $crate::cli::Binary {
            name: env!("CARGO_BIN_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
        }
    };
}

impl Binary {
    /// The parser of [`Cli`] as this binary.
    pub fn command<C: clap::Subcommand, X: clap::Args>(&self) -> clap::Command {
        <Cli<C, X> as clap::CommandFactory>::command()
            .name(self.name)
            .version(self.version)
            .about(self.about)
    }
}

/// The `main` of every binary: parses the command line as `bin`, sets up logging (`info`
/// for the daemon, the `serve` subcommand; `warn` for a one-shot command), then runs `body`,
/// whose result [`exit`] turns into the exit code.
pub fn main<C: clap::Subcommand, X: clap::Args>(
    bin: Binary,
    body: impl FnOnce(Cli<C, X>) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    use clap::FromArgMatches;
    let mut cmd = bin.command::<C, X>();
    let matches = cmd.get_matches_mut();
    let cli = Cli::<C, X>::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit());
    // Daemons log their work; one-shot commands only warnings.
    init_logging(if matches.subcommand_name() == Some("serve") {
        "info"
    } else {
        "warn"
    });
    exit(bin.name, body(cli))
}

/// Runs `f` to its end on a new tokio runtime (the async part of a command).
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Runtime::new()?.block_on(f))
}

/// A client of this host's own daemon, listening as `server` says, as peer `admin` with
/// its token from `[server] tokens`; `used_by` names the commands that need that token in
/// the error when there is none. The daemon's own certificate is trusted (it may be
/// self-signed); it must name the address connected to (e.g. subjectAltName
/// IP:127.0.0.1).
pub fn admin_client(
    server: &ListenConfig,
    used_by: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let token = server
        .tokens
        .iter()
        .find(|t| t.peer == "admin")
        .with_context(|| {
            format!("[server] tokens has no entry for peer \"admin\" (used by {used_by})")
        })?;
    Client::new(
        &server.local_url(),
        Some(&token.token),
        server.cert.as_deref(),
        timeout,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Log to stderr, filtered by `PULLBACK_LOG` (tracing `EnvFilter` syntax),
/// `default` when it is unset.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULLBACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Unix nanoseconds as RFC 3339 in UTC, to the second (`@<ns>ns` if out of range).
pub fn fmt_time(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{ns}ns"))
}

/// Now, as [`fmt_time`] writes it.
pub fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    fmt_time(ns)
}

/// The exit code of a command: its own, or 1 after printing the error chain
/// as `NAME: error: ...`, or [`EXIT_STDOUT_CLOSED`] without a word when standard
/// output was closed (the rest of the output is flushed first).
pub fn exit(name: &str, r: anyhow::Result<ExitCode>) -> ExitCode {
    let r = r.and_then(|c| {
        std::io::stdout().flush().map_err(StdoutError)?;
        Ok(c)
    });
    match r {
        Ok(c) => c,
        Err(e) if stdout_closed(&e) => ExitCode::from(EXIT_STDOUT_CLOSED),
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(StdoutError::is_closed)
    })
}

/// The check each binary's unit test makes: clap's own consistency checks pass and every
/// argument and subcommand has a help text (panics listing the ones without).
pub fn assert_every_argument_has_help(cmd: clap::Command) {
    cmd.clone().debug_assert();
    let missing = missing_help(&cmd);
    assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
}

/// The unit test every binary has, on its parser type: clap's own checks pass and every
/// flag, positional and subcommand has a help text (a doc comment). Write
/// `wire::every_argument_has_help!(Cli);` at the top level of `main.rs` (`Cli` being its
/// [`Cli`] type).
#[macro_export]
macro_rules! every_argument_has_help {
    ($cli:ty) => {
        /// Every flag, positional and subcommand has a help text (a doc comment).
        #[cfg(test)]
        #[test]
        fn every_argument_has_help() {
            $crate::cli::assert_every_argument_has_help(<$cli as clap::CommandFactory>::command());
        }
    };
}

/// Every argument (flag or positional) and subcommand of `cmd`, its subcommands
/// included, that has no help text, as `COMMAND PATH: --flag` lines. A binary's unit
/// test asserts that this is empty, so a new flag without a doc comment fails it.
pub fn missing_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                let name = match (a.get_long(), a.get_value_names()) {
                    (Some(l), _) => format!("--{l}"),
                    (None, Some(v)) if !v.is_empty() => v[0].to_string(),
                    _ => a.get_id().to_string(),
                };
                out.push(format!("{path}: {name}"));
            }
        }
        // clap's own `help` subcommand mirrors the real ones: skip it.
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(format!("{p}: no about text"));
            }
            walk(sub, &p, out);
        }
    }
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cli = super::Cli<Cmd>;

    #[derive(clap::Subcommand)]
    enum Cmd {
        /// Run.
        Serve,
    }

    crate::every_argument_has_help!(Cli);

    #[test]
    fn config_is_a_global_flag_and_required_says_how_to_give_it() {
        use clap::FromArgMatches;
        let bin = Binary {
            name: "x",
            version: "1.2.3",
            about: "The x daemon.",
        };
        let parse = |args: &[&str]| {
            bin.command::<Cmd, NoFlags>()
                .try_get_matches_from(args)
                .and_then(|m| Cli::from_arg_matches(&m))
        };
        let path = parse(&["x", "serve", "--config", "/etc/x.toml"])
            .ok()
            .and_then(|c| c.config.path);
        assert_eq!(path, Some(PathBuf::from("/etc/x.toml")));
        let Ok(Cli {
            cmd: Cmd::Serve,
            config,
            ..
        }) = parse(&["x", "serve"])
        else {
            panic!("serve does not parse");
        };
        let e = config
            .required()
            .map(Path::to_owned)
            .map_err(|e| e.to_string());
        assert_eq!(e, Err("no configuration: pass --config FILE".into()));
        let help = bin.command::<Cmd, NoFlags>().render_help().to_string();
        assert!(help.starts_with("The x daemon.\n"), "{help}");
        assert!(
            help.contains("--config <CONFIG>  Configuration file (TOML)\n"),
            "{help}"
        );
        let version = bin.command::<Cmd, NoFlags>().render_version();
        assert_eq!(version, "x 1.2.3\n");
    }

    #[test]
    fn the_admin_client_needs_the_admin_token() {
        let mut server = ListenConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert: None,
            key: None,
            tokens: vec![crate::TokenEntry {
                peer: "pbs".into(),
                token: "0123456789abcdef".into(),
            }],
        };
        let e = admin_client(&server, "`x run`", Duration::from_secs(1))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("[server] tokens has no entry for peer \"admin\" (used by `x run`)")
        );
        server.tokens[0].peer = "admin".into();
        let c = admin_client(&server, "`x run`", Duration::from_secs(1));
        assert!(c.is_ok_and(|c| c.base_url() == "http://127.0.0.1:8443"));
    }

    #[test]
    fn block_on_runs_the_future_to_its_end() {
        let r = block_on(async {
            tokio::task::yield_now().await;
            4
        });
        assert_eq!(r.ok(), Some(4));
    }

    #[test]
    fn times() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_767_225_600_123_456_789), "2026-01-01T00:00:00Z");
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn a_closed_stdout_is_a_quiet_exit_other_errors_are_not() {
        let closed = StdoutError(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let e = anyhow::Error::new(closed).context("printing the list");
        assert!(stdout_closed(&e));
        assert_eq!(
            format!("{:?}", exit("x", Err(e))),
            format!("{:?}", ExitCode::from(EXIT_STDOUT_CLOSED))
        );
        // A broken pipe elsewhere (a socket) is an ordinary error.
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!stdout_closed(&other));
        let full = StdoutError(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!stdout_closed(&anyhow::Error::new(full)));
    }

    #[test]
    fn missing_help_names_every_bare_argument_and_subcommand() {
        use clap::{Arg, ArgAction, Command};
        let cmd = Command::new("x")
            .arg(Arg::new("config").long("config").help("The config."))
            .subcommand(
                Command::new("sub")
                    .about("Has about.")
                    .arg(Arg::new("json").long("json").action(ArgAction::SetTrue))
                    .arg(Arg::new("dir").value_name("DIR"))
                    .arg(Arg::new("gen").help("Documented.")),
            )
            .subcommand(Command::new("bare"));
        assert_eq!(
            missing_help(&cmd),
            ["x sub: --json", "x sub: DIR", "x bare: no about text"]
        );
    }
}
