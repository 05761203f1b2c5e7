//! What every pullback binary does the same way: logging set-up, times as
//! people read them, writing to standard output, and turning a result into an
//! exit code.
//!
//! The one-shot commands print through [`outln!`](crate::outln) and
//! [`out!`](crate::out) instead of `println!`: a write to a closed standard output
//! (`pbs archive show ... | head`) is then an error, [`StdoutError`], that [`exit`]
//! turns into a quiet exit with status [`EXIT_STDOUT_CLOSED`] (141, what a shell
//! reports for a command killed by SIGPIPE), with no message. SIGPIPE itself stays
//! ignored (the Rust default), so a daemon or a client never dies from a write to a
//! closed socket.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

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
