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
//!
//! The log of one run keeps at most [`LOG_HEAD_BYTES`] from the start of the hook's output
//! and its last [`LOG_KEEP_TAIL_BYTES`], with a line saying how much was left out between:
//! a hook that prints 50 MB cannot fill the disk or the status. With [`HookOptions::pid_file`]
//! the hook's process group is recorded while it runs, so that a daemon killed meanwhile
//! kills what its hook left running when it starts again ([`kill_leftovers`]).

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

/// How much of the start of one run's output its log keeps.
pub const LOG_HEAD_BYTES: usize = 1 << 20;
/// How much of the end of one run's output its log keeps (after [`LOG_HEAD_BYTES`]).
pub const LOG_KEEP_TAIL_BYTES: usize = 64 << 10;

/// Options of one hook run.
#[derive(Debug, Clone, Default)]
pub struct HookOptions {
    /// Where to record the hook's process group while it runs (`PID START_TIME`); removed
    /// when the run ends. [`kill_leftovers`] on the file's folder kills a group whose
    /// daemon died before that.
    pub pid_file: Option<PathBuf>,
}

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

/// Copy the hook's output into its log, keeping the first [`LOG_HEAD_BYTES`] and the last
/// [`LOG_KEEP_TAIL_BYTES`] and saying how much was left out between.
fn copy_capped(mut from: impl Read, mut log: File) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut head_left = LOG_HEAD_BYTES;
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut dropped: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        if head_left > 0 {
            let k = head_left.min(data.len());
            log.write_all(&data[..k])?;
            head_left -= k;
            data = &data[k..];
        }
        tail.extend(data);
        if tail.len() > LOG_KEEP_TAIL_BYTES {
            let extra = tail.len() - LOG_KEEP_TAIL_BYTES;
            tail.drain(..extra);
            dropped += extra as u64;
        }
    }
    if dropped > 0 {
        writeln!(
            log,
            "\n==== [{dropped} bytes of output left out: the log keeps the first {LOG_HEAD_BYTES} and the last {LOG_KEEP_TAIL_BYTES} bytes of a run] ===="
        )?;
    }
    let (a, b) = tail.as_slices();
    log.write_all(a)?;
    log.write_all(b)
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it runs.
fn start_time(pid: libc::pid_t) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kill the process groups of hooks recorded in `dir/*.pid` whose daemon died while they
/// ran (call it when a daemon starts). A recorded group is killed only while it is
/// certainly the hook's: its leader runs with the recorded start time, or the leader is
/// gone but the group still has members (a group id is never reused while it has
/// members). Returns one line per group killed.
pub fn kill_leftovers(dir: &Path) -> Vec<String> {
    let mut killed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return killed;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let mut it = text.split_whitespace();
        let pid: Option<libc::pid_t> = it.next().and_then(|v| v.parse().ok());
        let started: Option<u64> = it.next().and_then(|v| v.parse().ok());
        if let Some(pid) = pid.filter(|&p| p > 1) {
            let ours = match start_time(pid) {
                Some(t) => Some(t) == started,
                // SAFETY: killpg with signal 0 only checks that the group exists.
                None => (unsafe { libc::killpg(pid, 0) }) == 0,
            };
            // SAFETY: as above; SIGKILL to a group that is the hook's.
            if ours && unsafe { libc::killpg(pid, libc::SIGKILL) } == 0 {
                killed.push(format!(
                    "killed the process group {pid} of a hook left running by a previous run ({})",
                    p.display()
                ));
            }
        }
        let _ = std::fs::remove_file(&p);
    }
    killed
}

/// [`run_hook_with`] with the default options.
pub async fn run_hook(
    path: &Path,
    args: &[&str],
    env: &[(String, String)],
    log_path: &Path,
    timeout: Duration,
) -> Result<HookOutcome, HookError> {
    run_hook_with(path, args, env, log_path, timeout, &HookOptions::default()).await
}

/// Runs the hook at `path` with `args`, the current environment plus `env`, stdin from
/// `/dev/null`, and stdout+stderr appended to `log_path` (created with its folder if
/// needed) between a header line (time, hook name, arguments) and a footer line (status,
/// duration). After `timeout` the hook's whole process group is killed.
///
/// Returns an error (naming the path) only when the hook cannot be started or the log
/// cannot be written; a hook that fails, is killed or times out is an `Ok` outcome.
pub async fn run_hook_with(
    path: &Path,
    args: &[&str],
    env: &[(String, String)],
    log_path: &Path,
    timeout: Duration,
    opts: &HookOptions,
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
    // The hook writes into a pipe; a thread copies it into the log, capped.
    let (reader, writer) = io::pipe().map_err(log_err)?;
    let mut child = loop {
        command
            .stdout(writer.try_clone().map_err(log_err)?)
            .stderr(writer.try_clone().map_err(log_err)?);
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
    drop(writer);
    // Dropping `command` closes the parent's copies of the pipe's write end.
    drop(command);
    let copier = {
        let log = log.try_clone().map_err(log_err)?;
        tokio::task::spawn_blocking(move || copy_capped(reader, log))
    };
    let pgid = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok());
    let mut guard = KillGroupOnDrop(pgid);
    if let (Some(pf), Some(pid)) = (&opts.pid_file, pgid) {
        let record = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
        if let Some(d) = pf.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(pf, record).map_err(|source| HookError::Log {
            path: pf.clone(),
            source,
        })?;
    }
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
    if let Some(pf) = &opts.pid_file {
        let _ = std::fs::remove_file(pf);
    }
    // The output up to the hook's end. Something the hook left running in the background
    // may hold the pipe open: wait for it only briefly (the copy goes on meanwhile).
    match tokio::time::timeout(Duration::from_secs(2), copier).await {
        Ok(Ok(r)) => r.map_err(log_err)?,
        Ok(Err(e)) => return Err(log_err(io::Error::other(e.to_string()))),
        Err(_) => {
            tracing::warn!(hook = %name, "the hook's background processes still hold its output open")
        }
    }

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
