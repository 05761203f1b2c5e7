//! Crash safety: `pbs archive ingest`, `prune` and `gc` are killed with
//! SIGKILL at random moments while the source keeps changing. After every
//! kill the archive must verify clean, and every generation it lists must
//! restore to exactly the source version its label names.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pullback_tests::garage::Garage;
use pullback_tests::{assert_same_tree, restore_snapshot, snapshot, write, Pbs, Rng, Tree};
use tempfile::TempDir;

const ITERATIONS: u64 = 60;
/// Every this many iterations the child runs to the end, whatever the
/// machine's speed, so that generations keep being committed.
const UNKILLED_EVERY: u64 = 6;
const BIG: &str = "big.dat";

/// The source folder and the plain files in it (relative paths).
struct Source {
    dir: PathBuf,
    files: Vec<String>,
    made: u64,
}

impl Source {
    fn create(dir: &Path, rng: &mut Rng) -> Source {
        let mut s = Source {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            made: 0,
        };
        // 16 MiB in 1 MiB stretches of text and random bytes: ingest cuts,
        // hashes and compresses for long enough to be killed mid-way.
        let mut big = Vec::with_capacity(16 << 20);
        for i in 0..16 {
            if i % 3 == 2 {
                big.extend(rng.bytes(1 << 20));
            } else {
                big.extend(rng.text(1 << 20));
            }
        }
        s.put(BIG, &big);
        for i in 0..4 {
            let n = rng.range(500_000, 2_000_000) as usize;
            let data = if i % 2 == 0 {
                rng.text(n)
            } else {
                rng.bytes(n)
            };
            s.put(&format!("medium/m{i}.bin"), &data);
        }
        for i in 0..12 {
            let n = rng.range(0, 30_000) as usize;
            let data = rng.text(n);
            s.put(&format!("small/d{}/s{i}.txt", i % 3), &data);
        }
        fs::create_dir_all(dir.join("empty")).unwrap();
        symlink(BIG, dir.join("link-to-big")).unwrap();
        symlink("does/not/exist", dir.join("dangling")).unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn put(&mut self, rel: &str, data: &[u8]) {
        write(&self.path(rel), data);
        if !self.files.iter().any(|f| f == rel) {
            self.files.push(rel.to_owned());
        }
    }

    fn pick(&self, rng: &mut Rng) -> String {
        self.files[rng.below(self.files.len() as u64) as usize].clone()
    }

    /// A few changes of the kinds a real source sees.
    fn mutate(&mut self, rng: &mut Rng) {
        // The big file changes most of the time, so most ingests read it.
        if rng.chance(70) {
            let p = self.path(BIG);
            let mut d = fs::read(&p).unwrap();
            let at = rng.below(d.len() as u64) as usize;
            let n = rng.range(1, 5000) as usize;
            let data = rng.bytes(n);
            d.splice(at..at, data);
            if d.len() > 24 << 20 {
                d.truncate(16 << 20);
            }
            fs::write(&p, d).unwrap();
        }
        for _ in 0..rng.range(1, 4) {
            match rng.below(7) {
                0 => {
                    // Overwrite a stretch in place: same size.
                    let f = self.pick(rng);
                    let p = self.path(&f);
                    let len = fs::metadata(&p).unwrap().len();
                    if len > 0 {
                        let at = rng.below(len);
                        let n = rng.range(1, 65_536).min(len - at) as usize;
                        let h = fs::File::options().write(true).open(&p).unwrap();
                        let data = rng.bytes(n);
                        h.write_all_at(&data, at).unwrap();
                    }
                }
                1 => {
                    let f = self.pick(rng);
                    let mut d = fs::read(self.path(&f)).unwrap();
                    let n = rng.range(1, 20_000) as usize;
                    d.extend(rng.text(n));
                    fs::write(self.path(&f), d).unwrap();
                }
                2 => {
                    self.made += 1;
                    let rel = format!("small/d{}/new-{}.txt", rng.below(4), self.made);
                    let n = rng.range(0, 200_000) as usize;
                    let data = if rng.chance(50) {
                        rng.text(n)
                    } else {
                        rng.bytes(n)
                    };
                    self.put(&rel, &data);
                }
                3 if self.files.len() > 8 => {
                    let f = self.pick(rng);
                    if f != BIG {
                        fs::remove_file(self.path(&f)).unwrap();
                        self.files.retain(|x| *x != f);
                    }
                }
                4 => {
                    // A whole new medium file: new chunks to compress.
                    let rel = format!("medium/m{}.bin", rng.below(4));
                    let n = rng.range(500_000, 2_000_000) as usize;
                    let data = rng.bytes(n);
                    self.put(&rel, &data);
                }
                5 => {
                    let f = self.pick(rng);
                    let mode = [0o644, 0o600, 0o755, 0o640][rng.below(4) as usize];
                    fs::set_permissions(self.path(&f), fs::Permissions::from_mode(mode)).unwrap();
                }
                _ => {
                    let l = self.path("link");
                    let _ = fs::remove_file(&l);
                    let f = self.pick(rng);
                    symlink(&f, &l).unwrap();
                }
            }
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Source version of a generation, from its `--label vN`.
fn version_of(g: &serde_json::Value) -> u64 {
    let label = g["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no label: {g}"));
    label
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("label {label:?} is not vN"))
}

#[derive(Default, Debug)]
struct Counts {
    started: BTreeMap<&'static str, u64>,
    killed: BTreeMap<&'static str, u64>,
    finished: BTreeMap<&'static str, u64>,
}

#[test]
fn sigkill_at_random_moments_never_loses_a_committed_generation() {
    let tmp = TempDir::new().unwrap();
    let pbs = Pbs::new(tmp.path().join("archive"));
    kill_cycle(&tmp, &pbs, ITERATIONS, 0x5eed_0fc0_ffee);
}

/// The same on an archive in a real S3 server (Garage on loopback): the packs and records
/// are objects, the staged writes, pins and locks stay in the local folder.
#[test]
fn sigkill_at_random_moments_on_object_storage_never_loses_a_committed_generation() {
    let tmp = TempDir::new().unwrap();
    let (garage, pbs) = Garage::with_pbs(tmp.path(), "kill");
    kill_cycle(&tmp, &pbs, 24, 0x5eed_0b1e_c7ed);
    // Everything the archive refers to is in the bucket, nothing but scratch is local.
    let objects = garage.objects("kill");
    assert!(
        objects.iter().any(|k| k.starts_with("kill/gens/db/")),
        "{objects:?}"
    );
    assert!(
        objects.iter().any(|k| k.starts_with("kill/packs/")),
        "{objects:?}"
    );
    assert!(!pbs.archive.join("packs").exists() && !pbs.archive.join("gens").exists());
}

/// `iterations` random ingests, prunes and gcs, most of them SIGKILLed at a random
/// moment; after each: verify clean, the listed generations restore to their versions.
fn kill_cycle(tmp: &TempDir, pbs: &Pbs, iterations: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut src = Source::create(&tmp.path().join("src"), &mut rng);
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    pbs.ok(&["init"]);

    let mut versions: BTreeMap<u64, Tree> = BTreeMap::new();
    let mut counts = Counts::default();
    for i in 0..iterations {
        src.mutate(&mut rng);
        let n = i + 1;
        versions.insert(n, snapshot(&src.dir));

        let label = format!("v{n}");
        let keep = rng.range(1, 5).to_string();
        let (op, args): (&str, Vec<&str>) = match rng.below(20) {
            _ if i < 2 => (
                "ingest",
                vec!["ingest", "--source", "db", "--label", &label, s(&src.dir)],
            ),
            0..=1 => ("prune", vec!["prune", "--keep-last", &keep]),
            2..=6 => ("gc", vec!["gc"]),
            7..=8 => (
                "ingest",
                vec![
                    "ingest",
                    "--reread",
                    "--source",
                    "db",
                    "--label",
                    &label,
                    s(&src.dir),
                ],
            ),
            _ => (
                "ingest",
                vec!["ingest", "--source", "db", "--label", &label, s(&src.dir)],
            ),
        };
        *counts.started.entry(op).or_default() += 1;
        if op == "gc" && rng.chance(60) {
            // Give gc something to do: prune first (not killed).
            pbs.ok(&["prune", "--keep-last", &keep]);
        }
        let before = pbs.list().len();

        let mut child = pbs
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sent_kill = false;
        if i % UNKILLED_EVERY != UNKILLED_EVERY - 1 {
            // prune and gc are over sooner: kill them sooner.
            let max_ms = match op {
                "ingest" => 400,
                "gc" => 40,
                _ => 10,
            };
            std::thread::sleep(Duration::from_millis(rng.below(max_ms)));
            if child.try_wait().unwrap().is_none() {
                // SAFETY: kill(2) on our own child's pid; no memory involved.
                let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
                sent_kill = true;
            }
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.signal() == Some(libc::SIGKILL) {
            assert!(sent_kill, "{op} died of a SIGKILL it was not sent");
            *counts.killed.entry(op).or_default() += 1;
        } else {
            assert!(
                out.status.success(),
                "iteration {i}: {args:?} failed ({}): {stderr}",
                out.status
            );
            *counts.finished.entry(op).or_default() += 1;
        }

        // The archive is consistent after every kill.
        let mut verify = vec!["verify"];
        if i % 5 == 4 {
            verify.push("--full");
        }
        let v = pbs.run(&verify);
        assert_eq!(
            v.code(),
            Some(0),
            "iteration {i} ({op}): {}{}",
            v.stdout,
            v.stderr
        );

        let gens = pbs.list();
        let listed: Vec<u64> = gens.iter().map(version_of).collect();
        // Sequence order is source-version order; each version at most once.
        assert!(
            listed.windows(2).all(|w| w[0] < w[1]),
            "iteration {i}: versions {listed:?}"
        );
        assert!(listed.iter().all(|v| versions.contains_key(v)));
        match op {
            "ingest" if out.status.success() => {
                assert_eq!(listed.last(), Some(&n), "a finished ingest is listed");
                assert_eq!(gens.len(), before + 1);
            }
            // A killed ingest committed its generation, or nothing at all.
            "ingest" => {
                assert!(
                    gens.len() == before || (gens.len() == before + 1 && listed.last() == Some(&n))
                )
            }
            "prune" if out.status.success() => {
                let k: usize = keep.parse().unwrap();
                assert_eq!(
                    gens.len(),
                    before.min(k),
                    "iteration {i}: prune --keep-last {k}"
                );
            }
            // A killed prune removed some of what it was to remove.
            "prune" => {
                let k: usize = keep.parse().unwrap();
                assert!(
                    gens.len() <= before && gens.len() >= before.min(k),
                    "iteration {i}"
                );
            }
            _ => assert_eq!(gens.len(), before, "gc removes no generation"),
        }
        // The newest generation restores exactly; now and then all of them.
        let check = if i % 15 == 14 { gens.len() } else { 1 };
        for g in gens.iter().rev().take(check) {
            let name = g["generation"].as_str().unwrap();
            let got = restore_snapshot(pbs, name, &scratch);
            assert_same_tree(
                &versions[&version_of(g)],
                &got,
                &format!("iteration {i}: {name}"),
            );
        }
    }

    // The archive still takes new generations and collects garbage, and all
    // that it holds is whole.
    src.mutate(&mut rng);
    let n = iterations + 1;
    versions.insert(n, snapshot(&src.dir));
    let label = format!("v{n}");
    pbs.ok(&["ingest", "--source", "db", "--label", &label, s(&src.dir)]);
    pbs.ok(&["gc"]);
    let leftovers: Vec<_> = fs::read_dir(pbs.archive.join("tmp"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "gc left temporary files: {leftovers:?}"
    );
    let gens = pbs.list();
    assert!(gens.len() >= 2, "{gens:?}");
    for g in &gens {
        let name = g["generation"].as_str().unwrap();
        let got = restore_snapshot(pbs, name, &scratch);
        assert_same_tree(&versions[&version_of(g)], &got, name);
    }
    let v = pbs.json(&["verify", "--full"]);
    assert_eq!(v["problems"], serde_json::Value::Array(vec![]), "{v}");

    // The test means something only if kills landed while work was under way,
    // and if work also got done.
    eprintln!("{counts:?}");
    let killed: u64 = counts.killed.values().sum();
    let ingests_killed = counts.killed.get("ingest").copied().unwrap_or(0);
    let ingests_done = counts.finished.get("ingest").copied().unwrap_or(0);
    assert!(
        killed >= iterations / 4,
        "only {killed} of {iterations} runs were killed: {counts:?}"
    );
    assert!(ingests_killed >= iterations / 6, "{counts:?}");
    assert!(
        ingests_done >= iterations / UNKILLED_EVERY / 2,
        "{counts:?}"
    );
}
