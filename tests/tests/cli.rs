//! End to end: the command lines of the three binaries as an operator meets them —
//! output piped into a reader that stops early (`| head`), a config file that is
//! missing, a directory, empty, not TOML, or has an unknown key or a bad value, and
//! no `--config` at all.

use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use pullback_tests::cluster::{Cluster, Options, Who};
use pullback_tests::{bin, write, Pbs, Run};
use tempfile::TempDir;

/// The exit status of a command whose standard output was closed (README, "The pipeline").
const EXIT_STDOUT_CLOSED: i32 = 141;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The write end of a pipe whose read end is already closed: the first write to it
/// fails with EPIPE, whatever the amount written.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors, each then owned by one OwnedFd.
    let (r, w) = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe2");
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(r);
    Stdio::from(w)
}

/// Run `c` with its standard output closed for reading; stdin is `stdin`.
fn run_closed(mut c: Command, stdin: &[u8]) -> Run {
    c.stdout(closed_pipe())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start the binary");
    if let Some(mut i) = child.stdin.take() {
        use std::io::Write;
        // The command may exit before it reads: ignore a broken pipe here.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait for the binary");
    Run {
        status: out.status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_quiet_epipe(what: &str, r: &Run) {
    assert!(
        !r.stderr.contains("panicked"),
        "{what}: panicked on the closed stdout ({}):\n{}",
        r.status,
        r.stderr
    );
    assert_eq!(
        r.code(),
        Some(EXIT_STDOUT_CLOSED),
        "{what}: exit status on a closed stdout ({}); stderr:\n{}",
        r.status,
        r.stderr
    );
    assert!(
        r.stderr.trim().is_empty(),
        "{what}: printed on stderr:\n{}",
        r.stderr
    );
}

/// An archive with three generations of `db`, and a source folder.
fn archive_with_generations(tmp: &Path, files: usize) -> Pbs {
    let src = tmp.join("src");
    for i in 0..files {
        write(&src.join(format!("d{}/file-{i:05}.txt", i % 10)), b"x");
    }
    let pbs = Pbs::new(tmp.join("archive"));
    for g in 0..3 {
        write(&src.join("changing"), format!("{g}").as_bytes());
        pbs.ok(&["ingest", "--source", "db", s(&src)]);
    }
    pbs
}

#[test]
fn pbs_archive_commands_stop_quietly_on_a_closed_stdout() {
    let tmp = TempDir::new().unwrap();
    let pbs = archive_with_generations(tmp.path(), 20);
    let restore = tmp.path().join("restored");
    let fresh = tmp.path().join("fresh");
    let src = tmp.path().join("src");
    let cases: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["list", "--json"],
        vec!["show", "db/latest"],
        vec!["show", "db/2", "--json"],
        vec!["verify"],
        vec!["verify", "--full", "--json"],
        vec!["prune", "--keep-last", "1", "--dry-run"],
        vec!["gc", "--dry-run", "--json"],
        vec!["restore", "db/1", "--to", s(&restore)],
        vec!["ingest", "--source", "db", s(&src)],
    ];
    for args in &cases {
        let r = run_closed(pbs.command(args), b"");
        assert_quiet_epipe(&format!("pbs archive {}", args.join(" ")), &r);
    }
    let r = run_closed(Pbs::new(&fresh).command(&["init"]), b"");
    assert_quiet_epipe("pbs archive init", &r);
    // The work was done before the output: the restore and the ingest are complete.
    assert!(restore.join("changing").exists());
    assert_eq!(pbs.generations().len(), 4);
}

/// `pbs archive show | head -c 1`: the reader goes away in the middle of an output far
/// larger than a pipe holds.
#[test]
fn pbs_archive_show_into_a_reader_that_stops_early() {
    let tmp = TempDir::new().unwrap();
    let pbs = archive_with_generations(tmp.path(), 3000);
    for args in [["show", "db/latest"], ["list", "--json"]] {
        let mut child = pbs
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pbs");
        let mut out = child.stdout.take().expect("stdout");
        let mut one = [0u8; 1];
        out.read_exact(&mut one)
            .expect("the first byte of the output");
        drop(out);
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        let status = child.wait().expect("wait for pbs");
        let r = Run {
            status,
            stdout: String::new(),
            stderr: err,
        };
        if args[0] == "show" {
            // 3000 entries (~300 kB) cannot all sit in the pipe: the write fails.
            assert_quiet_epipe("pbs archive show | head -c 1", &r);
        } else {
            // The list may fit in the pipe's buffer: then it succeeds; never a panic.
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
            assert!(
                matches!(r.code(), Some(0) | Some(EXIT_STDOUT_CLOSED)),
                "{}: {}",
                r.status,
                r.stderr
            );
        }
    }
}

#[test]
fn status_and_other_commands_stop_quietly_on_a_closed_stdout() {
    let c = Cluster::new(Options::default());
    let cases: Vec<(Who, Vec<&str>)> = vec![
        (Who::Pbs, vec!["status"]),
        (Who::Pbs, vec!["status", "--json"]),
        (Who::Exporter, vec!["status"]),
        (Who::Exporter, vec!["status", "--json"]),
        (Who::Importer(0), vec!["status"]),
        (Who::Importer(0), vec!["status", "--json"]),
        (Who::Importer(0), vec!["hash-password"]),
        (Who::Importer(0), vec!["rejoin", "--yes"]),
    ];
    for (who, args) in &cases {
        let mut cmd = c.command(*who);
        cmd.args(args);
        let r = run_closed(cmd, b"a password\n");
        assert_quiet_epipe(&format!("{} {}", bin_name(*who), args.join(" ")), &r);
    }
}

/// The binary's name for `who`.
fn bin_name(who: Who) -> &'static str {
    match who {
        Who::Pbs => "pbs",
        Who::Exporter => "exporter",
        Who::Importer(_) => "importer",
    }
}

fn run_with_config(who: Who, config: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin(bin_name(who)))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("PULLBACK_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("start the binary");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One line on stderr, `NAME: error: config file PATH...`, containing every `want`,
/// and exit status 1.
#[track_caller]
fn assert_config_error(who: Who, path: &Path, r: &Run, want: &[&str]) {
    let name = bin_name(who);
    let ctx = format!(
        "{name} --config {}: {}\n{}",
        path.display(),
        r.status,
        r.stderr
    );
    assert_eq!(r.code(), Some(1), "{ctx}");
    assert_eq!(r.stderr.lines().count(), 1, "one line: {ctx}");
    let prefix = format!("{name}: error: config file {}", path.display());
    assert!(r.stderr.starts_with(&prefix), "names the file: {ctx}");
    for w in want {
        assert_eq!(r.stderr.matches(w).count(), 1, "{w:?} once: {ctx}");
    }
    assert!(r.stdout.is_empty(), "{ctx}");
}

#[test]
fn broken_config_files_get_one_line_naming_the_file() {
    let c = Cluster::new(Options::default());
    let tmp = TempDir::new().unwrap();
    let missing = tmp.path().join("missing.toml");
    let empty = tmp.path().join("empty.toml");
    fs::write(&empty, "\n  \n").unwrap();
    let garbage = tmp.path().join("garbage.toml");
    fs::write(&garbage, "this is [not toml\n").unwrap();
    // toml's message for this one spans two lines.
    let unclosed = tmp.path().join("unclosed.toml");
    fs::write(&unclosed, "x = [\n").unwrap();
    for who in [Who::Pbs, Who::Exporter, Who::Importer(0)] {
        let args = ["status"];
        let r = run_with_config(who, &missing, &args);
        assert_config_error(who, &missing, &r, &["No such file or directory"]);
        let r = run_with_config(who, tmp.path(), &args);
        assert_config_error(who, tmp.path(), &r, &["Is a directory"]);
        let r = run_with_config(who, &empty, &args);
        assert_config_error(who, &empty, &r, &["the file is empty"]);
        let r = run_with_config(who, &garbage, &args);
        assert_config_error(who, &garbage, &r, &["line 1"]);
        let r = run_with_config(who, &unclosed, &args);
        assert_config_error(who, &unclosed, &r, &["line 2", "expected `]`"]);

        let good = fs::read_to_string(c.config(who)).unwrap();
        let unknown = tmp.path().join(format!("{}-unknown.toml", bin_name(who)));
        fs::write(&unknown, format!("bogus_key = 1\n{good}")).unwrap();
        let r = run_with_config(who, &unknown, &args);
        assert_config_error(who, &unknown, &r, &["unknown field `bogus_key`", "line 1"]);

        let bad = tmp.path().join(format!("{}-bad.toml", bin_name(who)));
        let text: Vec<String> = good
            .lines()
            .map(|l| {
                if l.starts_with("state_dir = ") {
                    "state_dir = 5".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        fs::write(&bad, text.join("\n")).unwrap();
        let r = run_with_config(who, &bad, &args);
        assert_config_error(who, &bad, &r, &["key `state_dir`", "invalid type"]);
    }
}

#[test]
fn no_config_says_pass_config_file_in_all_three() {
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("pbs", vec!["status"]),
        ("pbs", vec!["status", "--json"]),
        ("pbs", vec!["serve"]),
        ("pbs", vec!["switchover", "--to", "clone0"]),
        ("pbs", vec!["balance"]),
        ("pbs", vec!["rejoin", "clone0"]),
        ("exporter", vec!["status"]),
        ("exporter", vec!["run"]),
        ("exporter", vec!["serve"]),
        ("importer", vec!["status"]),
        ("importer", vec!["serve"]),
        ("importer", vec!["rejoin", "--yes"]),
    ];
    for (name, args) in &cases {
        let out = Command::new(bin(name))
            .args(args)
            .env_remove("PULLBACK_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("start the binary");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {err}");
        assert_eq!(
            err,
            format!("{name}: error: no configuration: pass --config FILE\n"),
            "{name} {args:?}"
        );
    }
}

#[test]
fn pbs_status_with_a_config_without_state_dir_names_the_file() {
    let tmp = TempDir::new().unwrap();
    let cfg = tmp.path().join("pbs.toml");
    fs::write(&cfg, "[archive]\npath = \"archive\"\n").unwrap();
    let r = run_with_config(Who::Pbs, &cfg, &["status"]);
    assert_eq!(r.code(), Some(1), "{}", r.stderr);
    assert_eq!(
        r.stderr,
        format!(
            "pbs: error: config {}: no state_dir (pbs status reads the server's status there)\n",
            cfg.display()
        )
    );
}
