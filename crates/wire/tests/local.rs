//! State files, config loading and hooks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wire::hook::{HookError, HookStatus};
use wire::{load_toml, read_json, run_hook, write_json_atomic, ListenConfig, PeerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Role {
    role: String,
    epoch: u64,
    peers: Vec<String>,
}

#[test]
fn state_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("role.json");
    assert_eq!(read_json::<Role>(&path)?, None);

    let first = Role {
        role: "BACKUP".into(),
        epoch: 1,
        peers: vec!["pbs".into()],
    };
    write_json_atomic(&path, &first)?;
    assert_eq!(read_json::<Role>(&path)?, Some(first));
    let second = Role {
        role: "MAIN".into(),
        epoch: 2,
        peers: vec![],
    };
    write_json_atomic(&path, &second)?;
    assert_eq!(read_json::<Role>(&path)?, Some(second));

    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["role.json"]);

    // Bad JSON is an error naming the file.
    std::fs::write(&path, "{\"role\": ")?;
    let msg = read_json::<Role>(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    // A folder that does not exist is an error naming it, not a panic.
    let nowhere = dir.path().join("missing/role.json");
    let msg = write_json_atomic(&nowhere, &1u8)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("missing"), "{msg}");
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExporterConfig {
    backup_dir: PathBuf,
    listen: ListenConfig,
    #[serde(default)]
    pbs: Vec<PeerConfig>,
}

#[test]
fn load_toml_names_unknown_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("exporter.toml");
    let good = r#"backup_dir = "/srv/backup"

[listen]
listen = "127.0.0.1:8080"
tokens = [{ peer = "pbs", token = "0123456789abcdef" }]

[[pbs]]
name = "pbs"
url = "http://pbs:8080"
token = "0123456789abcdef"
"#;
    std::fs::write(&path, good)?;
    let cfg: ExporterConfig = load_toml(&path)?;
    assert_eq!(cfg.pbs.len(), 1);
    assert_eq!(cfg.listen.token_set()?.len(), 1);

    // Misspelt key in a nested table.
    std::fs::write(&path, good.replace("listen = \"127", "listne = \"127"))?;
    let msg = load_toml::<ExporterConfig>(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("unknown field `listne`"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");

    // Misspelt top-level key.
    std::fs::write(&path, format!("backup_dri = \"/x\"\n{good}"))?;
    let msg = load_toml::<ExporterConfig>(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("{msg}");
    assert!(
        msg.contains("backup_dri") && msg.contains("line 1"),
        "{msg}"
    );

    // Missing file: the OS error once, also in an error chain (`{:#}`, as the binaries print).
    let msg = load_toml::<ExporterConfig>(&dir.path().join("nope.toml"))
        .err()
        .map(|e| format!("{:#}", anyhow::Error::from(e)))
        .unwrap_or_default();
    assert!(msg.contains("nope.toml"), "{msg}");
    assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");

    // Empty file.
    std::fs::write(&path, " \n")?;
    let msg = load_toml::<ExporterConfig>(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.ends_with("exporter.toml: the file is empty"), "{msg}");
    Ok(())
}

fn script(dir: &Path, name: &str, body: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

const HOOK_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn hook_success_sees_env_and_logs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let hook = script(
        dir.path(),
        "export",
        "echo \"dir=$PULLBACK_BACKUP_DIR arg=$1\"\necho oops >&2\nexit 0",
    )?;
    let log = dir.path().join("logs/export.log");
    let env = [("PULLBACK_BACKUP_DIR".to_owned(), "/srv/backup".to_owned())];
    let out = run_hook(&hook, &["now"], &env, &log, HOOK_TIMEOUT).await?;
    assert_eq!(out.status, HookStatus::Exited(0));
    assert!(out.success());
    assert!(
        out.log_tail.contains("dir=/srv/backup arg=now\n"),
        "{}",
        out.log_tail
    );
    assert!(out.log_tail.contains("oops\n"), "{}", out.log_tail);
    assert!(
        out.log_tail.contains("hook export now start"),
        "{}",
        out.log_tail
    );
    assert!(
        out.log_tail.contains("hook export exit code 0"),
        "{}",
        out.log_tail
    );

    // A second run appends; its tail holds only its own run.
    let again = run_hook(&hook, &["later"], &env, &log, HOOK_TIMEOUT).await?;
    assert!(again.log_tail.contains("arg=later") && !again.log_tail.contains("arg=now"));
    let whole = std::fs::read_to_string(&log)?;
    assert!(
        whole.contains("arg=now") && whole.contains("arg=later"),
        "{whole}"
    );
    Ok(())
}

#[tokio::test]
async fn hook_failure_and_long_output() -> TestResult {
    let dir = tempfile::tempdir()?;
    let hook = script(
        dir.path(),
        "verify",
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); done\necho 'smoke query failed' >&2\nexit 3",
    )?;
    let log = dir.path().join("verify.log");
    let out = run_hook(&hook, &[], &[], &log, HOOK_TIMEOUT).await?;
    assert_eq!(out.status, HookStatus::Exited(3));
    assert!(!out.success());
    assert!(out.log_tail.len() <= 4096, "{}", out.log_tail.len());
    assert!(
        out.log_tail.contains("smoke query failed"),
        "{}",
        out.log_tail
    );
    assert!(out.log_tail.contains("line 1999"), "{}", out.log_tail);
    assert!(!out.log_tail.contains("line 10\n"), "tail only");

    let killed = script(dir.path(), "suicide", "kill -TERM $$")?;
    let out = run_hook(&killed, &[], &[], &log, HOOK_TIMEOUT).await?;
    assert_eq!(out.status, HookStatus::Signaled(15));
    Ok(())
}

/// True if `pid` is gone or a zombie (killed, not yet reaped by its new parent).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn hook_timeout_kills_the_process_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("child.pid");
    let hook = script(
        dir.path(),
        "slow",
        &format!(
            "sleep 30 &\necho $! > {}\necho started\nwait",
            pidfile.display()
        ),
    )?;
    let log = dir.path().join("slow.log");
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let out = run_hook(&hook, &[], &[], &log, timeout).await?;
    let elapsed = started.elapsed();
    assert_eq!(out.status, HookStatus::TimedOut);
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
    assert!(out.log_tail.contains("started"), "{}", out.log_tail);
    assert!(out.log_tail.contains("timed out"), "{}", out.log_tail);

    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    // SIGKILL is immediate, but give the kernel a moment to tear the child down.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        dead(pid),
        "the hook's child `sleep 30` (pid {pid}) survived"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_bad_hooks_are_errors_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("h.log");
    let missing = dir.path().join("no-such-hook");
    let err = run_hook(&missing, &[], &[], &log, HOOK_TIMEOUT).await.err();
    assert!(matches!(err, Some(HookError::NotFound { .. })), "{err:?}");
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644))?;
    let err = run_hook(&plain, &[], &[], &log, HOOK_TIMEOUT).await.err();
    assert!(
        matches!(err, Some(HookError::NotExecutable { .. })),
        "{err:?}"
    );
    assert!(err
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("not-executable"));

    let err = run_hook(dir.path(), &[], &[], &log, HOOK_TIMEOUT)
        .await
        .err();
    assert!(matches!(err, Some(HookError::NotAFile { .. })), "{err:?}");

    let bad_interp = dir.path().join("bad-interpreter");
    std::fs::write(&bad_interp, "#!/nonexistent/shell\n")?;
    std::fs::set_permissions(&bad_interp, std::fs::Permissions::from_mode(0o755))?;
    let err = run_hook(&bad_interp, &[], &[], &log, HOOK_TIMEOUT)
        .await
        .err();
    assert!(matches!(err, Some(HookError::Spawn { .. })), "{err:?}");
    assert!(err
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("bad-interpreter"));
    Ok(())
}

#[tokio::test]
async fn a_hook_that_prints_50_mb_keeps_a_capped_log() -> TestResult {
    let dir = tempfile::tempdir()?;
    let hook = script(
        dir.path(),
        "chatty",
        "echo first-line\nhead -c 50000000 /dev/zero | tr '\\0' x\necho\necho last-line >&2",
    )?;
    let log = dir.path().join("chatty.log");
    let out = run_hook(&hook, &[], &[], &log, HOOK_TIMEOUT).await?;
    assert!(out.success(), "{:?}", out.status);
    let kept = std::fs::read(&log)?;
    let cap = wire::hook::LOG_HEAD_BYTES + wire::hook::LOG_KEEP_TAIL_BYTES + 4096;
    assert!(kept.len() <= cap, "{} bytes kept", kept.len());
    let text = String::from_utf8_lossy(&kept);
    assert!(text.contains("first-line"), "the start is kept");
    assert!(text.contains("last-line"), "the end is kept");
    assert!(text.contains("bytes of output left out"), "the cut is said");
    assert!(out.log_tail.contains("last-line"), "{}", out.log_tail);
    Ok(())
}

#[test]
fn leftover_hook_groups_are_killed_and_strangers_are_not() -> TestResult {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir()?;
    // A hook whose daemon died: its group (a shell and its child) still runs.
    let mut orphan = std::process::Command::new("sh")
        .args(["-c", "sleep 60 & wait"])
        .process_group(0)
        .spawn()?;
    let pid = orphan.id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let started = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(19))
        .unwrap_or("0")
        .to_string();
    std::fs::write(dir.path().join("import.pid"), format!("{pid} {started}\n"))?;
    // A record whose start time does not match: a reused pid, not ours.
    let mut stranger = std::process::Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()?;
    let spid = stranger.id() as i32;
    std::fs::write(dir.path().join("verify.pid"), format!("{spid} 1\n"))?;

    let killed = wire::hook::kill_leftovers(dir.path());
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert!(killed[0].contains(&pid.to_string()), "{killed:?}");
    let st = orphan.wait()?;
    assert!(st.code().is_none(), "the orphan was killed: {st:?}");
    assert!(!dead(spid), "a process that is not the hook's was killed");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "records removed");
    stranger.kill()?;
    stranger.wait()?;
    Ok(())
}
