//! Running a hook executable (export, import, verify, promote, demote...).
//!
//! [`run_hook`] runs the program with extra environment variables, appends its stdout and
//! stderr (both, interleaved as written) to a log file between a header and a footer line,
//! and enforces a timeout: the hook runs in a new process group, and on timeout (or if the
//! returned future is dropped) the whole group gets `SIGKILL`, so a hook's own children
//! (`sleep 30 &`, a dump tool) die with it. A hook that exits by itself is not followed
//! further: anything it left running in the background keeps running.
//!
//! A missing or non-executable hook is an error naming the path, never a panic.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How much of the end of a run's log [`HookOutcome::log_tail`] keeps.
pub const LOG_TAIL_BYTES: u64 = 4096;

/// How a hook run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    /// The hook exited with this code (0 is success).
    Exited(i32),
    /// The hook was killed by this signal (not by us).
    Signaled(i32),
    /// The hook ran past its timeout; its process group was killed with `SIGKILL`.
    TimedOut,
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookStatus::Exited(code) => write!(f, "exit code {code}"),
            HookStatus::Signaled(sig) => write!(f, "killed by signal {sig}"),
            HookStatus::TimedOut => f.write_str("timed out, killed"),
        }
    }
}

/// The result of a hook run that could be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// How it ended.
    pub status: HookStatus,
    /// Wall-clock time from start to end (or to the kill).
    pub duration: Duration,
    /// The last [`LOG_TAIL_BYTES`] bytes this run added to the log (header and footer
    /// lines included), as text.
    pub log_tail: String,
}

impl HookOutcome {
    /// True when the hook exited with code 0.
    pub fn success(&self) -> bool {
        self.status == HookStatus::Exited(0)
    }
}

/// A hook that could not be run at all, or whose log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No file at the hook's path.
    #[error("hook {}: no such file", path.display())]
    NotFound {
        /// The hook's path.
        path: PathBuf,
    },
    /// The path is a folder or other non-file.
    #[error("hook {}: not a regular file", path.display())]
    NotAFile {
        /// The hook's path.
        path: PathBuf,
    },
    /// The file has no execute permission.
    #[error("hook {}: not executable (chmod +x it)", path.display())]
    NotExecutable {
        /// The hook's path.
        path: PathBuf,
    },
    /// The OS refused to start it (bad interpreter line, wrong format...).
    #[error("hook {}: cannot start: {source}", path.display())]
    Spawn {
        /// The hook's path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Waiting for the hook failed.
    #[error("hook {}: waiting for it failed: {source}", path.display())]
    Wait {
        /// The hook's path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log file could not be opened, written or read.
    #[error("hook log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Sends `SIGKILL` to the process group `pgid` when dropped, unless disarmed.
struct KillGroupOnDrop(Option<libc::pid_t>);

impl KillGroupOnDrop {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg has no memory-safety preconditions; a stale group only
            // yields ESRCH.
            let _ = unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn check_executable(path: &Path) -> Result<(), HookError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            HookError::NotFound {
                path: path.to_owned(),
            }
        } else {
            HookError::Spawn {
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    if !meta.is_file() {
        return Err(HookError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(HookError::NotExecutable {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn open_log(log_path: &Path) -> Result<File, HookError> {
    let log_err = |source| HookError::Log {
        path: log_path.to_owned(),
        source,
    };
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(log_err)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(log_err)
}

/// The text from byte `start` of the log on, at most its last [`LOG_TAIL_BYTES`] bytes.
fn read_tail(log_path: &Path, start: u64) -> io::Result<String> {
    let mut file = File::open(log_path)?;
    let len = file.metadata()?.len();
    let from = start.max(len.saturating_sub(LOG_TAIL_BYTES));
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
    // Do not start in the middle of a UTF-8 character.
    let skip = buf
        .iter()
        .take(3)
        .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
        .count();
    Ok(String::from_utf8_lossy(buf.get(skip..).unwrap_or_default()).into_owned())
}

/// Runs the hook at `path` with `args`, the current environment plus `env`, stdin from
/// `/dev/null`, and stdout+stderr appended to `log_path` (created with its folder if
/// needed) between a header line (time, hook name, arguments) and a footer line (status,
/// duration). After `timeout` the hook's whole process group is killed.
///
/// Returns an error (naming the path) only when the hook cannot be started or the log
/// cannot be written; a hook that fails, is killed or times out is an `Ok` outcome.
pub async fn run_hook(
    path: &Path,
    args: &[&str],
    env: &[(String, String)],
    log_path: &Path,
    timeout: Duration,
) -> Result<HookOutcome, HookError> {
    check_executable(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let log_err = |source| HookError::Log {
        path: log_path.to_owned(),
        source,
    };

    let mut log = open_log(log_path)?;
    let start_offset = log.metadata().map_err(log_err)?.len();
    let header = format!(
        "==== {} hook {name} {} start ({}) ====\n",
        now_rfc3339(),
        args.join(" "),
        path.display()
    );
    log.write_all(header.as_bytes()).map_err(log_err)?;

    let mut command = tokio::process::Command::new(path);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);

    let started = Instant::now();
    let mut attempts = 0;
    let mut child = loop {
        command
            .stdout(log.try_clone().map_err(log_err)?)
            .stderr(log.try_clone().map_err(log_err)?);
        match command.spawn() {
            Ok(child) => break child,
            // "Text file busy": the hook was just written and another thread's fork still
            // holds it open for writing. Try again shortly.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => {
                let _ = writeln!(log, "==== hook {name} could not start: {source} ====");
                return Err(HookError::Spawn {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    };
    let mut guard = KillGroupOnDrop(child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()));
    tracing::info!(hook = %name, "running hook {}", path.display());

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(exit)) => match (exit.code(), exit.signal()) {
            (Some(code), _) => HookStatus::Exited(code),
            (None, Some(sig)) => HookStatus::Signaled(sig),
            (None, None) => HookStatus::Exited(-1),
        },
        Ok(Err(source)) => {
            guard.kill();
            let _ = child.wait().await;
            guard.0 = None;
            return Err(HookError::Wait {
                path: path.to_owned(),
                source,
            });
        }
        Err(_) => {
            guard.kill();
            // Reap the hook itself; its children were killed with it.
            let _ = child.wait().await;
            HookStatus::TimedOut
        }
    };
    guard.0 = None;
    let duration = started.elapsed();

    let footer = format!(
        "==== {} hook {name} {status} after {:.3}s ====\n",
        now_rfc3339(),
        duration.as_secs_f64()
    );
    log.write_all(footer.as_bytes()).map_err(log_err)?;
    drop(log);
    match status {
        HookStatus::Exited(0) => tracing::info!(hook = %name, "hook succeeded in {duration:?}"),
        _ => tracing::warn!(hook = %name, "hook failed: {status} after {duration:?}"),
    }
    let log_tail = read_tail(log_path, start_offset).map_err(log_err)?;
    Ok(HookOutcome {
        status,
        duration,
        log_tail,
    })
}
