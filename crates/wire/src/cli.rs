//! What every pullback binary does the same way: logging set-up, times as
//! people read them, and turning a result into an exit code.

use std::process::ExitCode;

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
/// as `NAME: error: ...`.
pub fn exit(name: &str, r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(1)
        }
    }
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
}
