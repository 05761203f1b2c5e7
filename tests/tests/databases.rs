//! The reference database hooks (`deploy/hooks/postgres`, `deploy/hooks/mariadb`)
//! end to end, against the real servers of this machine (PostgreSQL on
//! 127.0.0.1:5432 as postgres, MariaDB on 127.0.0.1:3306 as root; started if
//! down), with the real `exporter`, `pbs` and `importer` daemons on loopback:
//!
//! 1. a populated source database → export → PBS → import into a clone
//!    database: every table equal (row counts and content digests computed
//!    by the test itself, not by the hooks);
//! 2. writes on the source, a second cycle: the clone equals the new source,
//!    and far fewer bytes cross the wire than the dump holds;
//! 3. the dump process killed half-way: the export fails, nothing is
//!    published, the previous dump stays in the backup folder;
//! 4. the import killed half-way (its server sessions terminated): the clone
//!    still holds the previous data, and the importer status says why;
//! 5. writes going on during an export: the clone holds one consistent
//!    snapshot (the hook's verify passes, and the workload's invariant holds);
//! 6. one more quiet cycle: the clone equals the source again;
//! 7. the promote and demote hooks switch writes on and off.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pullback_tests::db::{
    client_dir, hooks_dir, run_hook, total_rows, unique, wait_for, Kind, SessionKiller,
    TableDigest, Trio,
};
use pullback_tests::file_sha256;

/// What differs between two digest maps (empty when equal).
fn table_diff(want: &BTreeMap<String, TableDigest>, got: &BTreeMap<String, TableDigest>) -> String {
    let mut s = String::new();
    for (t, w) in want {
        match got.get(t) {
            None => s += &format!("  {t}: missing\n"),
            Some(g) if g != w => s += &format!("  {t}: expected {w:?}, got {g:?}\n"),
            _ => {}
        }
    }
    for t in got.keys().filter(|t| !want.contains_key(*t)) {
        s += &format!("  {t}: unexpected\n");
    }
    s
}

#[track_caller]
fn assert_same_tables(kind: Kind, src: &str, clone: &str, what: &str) {
    let want = kind.tables(src);
    let got = kind.tables(clone);
    assert!(!want.is_empty(), "{what}: the source {src} has no tables");
    let d = table_diff(&want, &got);
    assert!(
        d.is_empty(),
        "{what}: clone {clone} differs from {src}:\n{d}"
    );
}

/// Drops the test's databases at the end, whatever happens.
struct Databases(Kind, Vec<String>);

impl Drop for Databases {
    fn drop(&mut self) {
        for d in &self.1 {
            self.0.drop_db(d);
        }
    }
}

/// The software-specific part of a test: data, writes, invariants.
trait Workload {
    fn kind(&self) -> Kind;
    /// The dump file the export hook writes (in the backup folder).
    fn dump_file(&self) -> &'static str;
    /// The client the test wraps to kill it half-way, and the ones passed through.
    fn clients(&self) -> (&'static str, &'static [&'static str]);
    fn init(&self, db: &str);
    /// Writes between two cycles: updates here and there, inserts, a new table.
    fn change(&self, db: &str);
    /// A few more writes.
    fn change_small(&self, db: &str);
    /// Background writes until killed, each transaction keeping the invariant.
    fn start_writer(&self, db: &str, dir: &Path) -> Child;
    /// Writes done so far (a row count that only grows).
    fn progress(&self, db: &str) -> u64;
    /// Panic unless `db` satisfies the workload's cross-table invariant.
    fn check_invariant(&self, db: &str);
}

struct Pgbench;

impl Pgbench {
    fn pgbench(&self, db: &str, args: &[&str]) -> Command {
        let mut c = Command::new("pgbench");
        c.args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"])
            .args(args)
            .arg(db)
            .stdin(Stdio::null());
        c
    }
}

impl Workload for Pgbench {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }
    fn dump_file(&self) -> &'static str {
        "dump.pgdump"
    }
    fn clients(&self) -> (&'static str, &'static [&'static str]) {
        ("pg_dump", &["psql", "pg_restore"])
    }
    fn init(&self, db: &str) {
        let out = self.pgbench(db, &["-i", "-s", "1", "-q"]).output().unwrap();
        assert!(out.status.success(), "pgbench -i: {out:?}");
    }
    fn change(&self, db: &str) {
        let out = self
            .pgbench(db, &["-n", "-c", "2", "-j", "2", "-t", "150"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pgbench: {out:?}");
        Kind::Postgres.sql(
            db,
            "UPDATE pgbench_accounts SET filler = 'changed ' || aid WHERE aid % 997 = 0;
             CREATE TABLE notes (id int PRIMARY KEY, body text, at timestamptz DEFAULT now());
             INSERT INTO notes (id, body) SELECT g, repeat(md5(g::text), 1 + g % 5)
               FROM generate_series(1, 3000) g;",
        );
    }
    fn change_small(&self, db: &str) {
        Kind::Postgres.sql(
            db,
            "DELETE FROM notes WHERE id % 10 = 0; UPDATE notes SET body = NULL WHERE id % 7 = 0;",
        );
    }
    fn start_writer(&self, db: &str, _dir: &Path) -> Child {
        // TPC-B-like transactions, rate-limited: the machine has 2 cores.
        self.pgbench(db, &["-n", "-c", "2", "-j", "2", "-T", "90", "-R", "150"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench")
    }
    fn progress(&self, db: &str) -> u64 {
        Kind::Postgres
            .value(db, "SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap()
    }
    fn check_invariant(&self, db: &str) {
        // Every pgbench transaction adds the same delta to one account, one
        // teller, one branch and the history, in one transaction.
        let v = Kind::Postgres.value(
            db,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' ||
                    (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
                    (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        );
        let sums: Vec<&str> = v.split(' ').collect();
        assert!(
            sums.len() == 4 && sums.iter().all(|s| *s == sums[0]),
            "{db} is not a consistent snapshot: sums of accounts, tellers, branches, history = {v}"
        );
    }
}

struct Shop;

/// Sum of every customer's balance plus every ledger delta: constant.
const SHOP_TOTAL: &str = "30000000.00";

impl Workload for Shop {
    fn kind(&self) -> Kind {
        Kind::Mariadb
    }
    fn dump_file(&self) -> &'static str {
        "tables.sql"
    }
    fn clients(&self) -> (&'static str, &'static [&'static str]) {
        ("mariadb-dump", &["mariadb"])
    }
    fn init(&self, db: &str) {
        Kind::Mariadb.sql(
            db,
            "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL,
               email VARCHAR(200), balance DECIMAL(14,2) NOT NULL, created DATETIME NOT NULL,
               note TEXT NULL) ENGINE=InnoDB;
             CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL,
               amount DECIMAL(12,2), status ENUM('new','paid','shipped'), payload BLOB,
               FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB;
             CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL,
               delta DECIMAL(14,2) NOT NULL) ENGINE=InnoDB;
             INSERT INTO customers SELECT seq, CONCAT('customer ', seq),
               IF(seq % 7 = 0, NULL, CONCAT('c', seq, '@example.com')), 1000,
               '2024-01-01' + INTERVAL seq MINUTE,
               IF(seq % 3 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 4)) FROM seq_1_to_30000;
             INSERT INTO orders (customer_id, amount, status, payload)
               SELECT 1 + (seq * 7919) % 30000, (seq % 1000) / 10, ELT(1 + seq % 3, 'new', 'paid', 'shipped'),
               UNHEX(SHA2(seq, 256)) FROM seq_1_to_60000;
             CREATE VIEW rich_customers AS SELECT id, name, balance FROM customers WHERE balance > 1000;
             CREATE TRIGGER orders_default_status BEFORE INSERT ON orders FOR EACH ROW
               SET NEW.status = COALESCE(NEW.status, 'new');
             CREATE FUNCTION total_balance() RETURNS DECIMAL(20,2) READS SQL DATA
               RETURN (SELECT SUM(balance) FROM customers);",
        );
    }
    fn change(&self, db: &str) {
        Kind::Mariadb.sql(
            db,
            "UPDATE customers SET note = CONCAT('changed ', id) WHERE id % 997 = 0;
             UPDATE orders SET status = 'shipped' WHERE id % 1009 = 0;
             DELETE FROM orders WHERE id % 2003 = 0;
             INSERT INTO orders (customer_id, amount, payload) SELECT seq, 1.5, NULL FROM seq_1_to_500;
             UPDATE customers SET balance = balance - 10 WHERE id = 17;
             INSERT INTO ledger (account, delta) VALUES (17, 10);
             CREATE TABLE notes (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB;
             INSERT INTO notes SELECT seq, REPEAT(MD5(seq), 1 + seq % 5) FROM seq_1_to_3000;",
        );
    }
    fn change_small(&self, db: &str) {
        Kind::Mariadb.sql(
            db,
            "DELETE FROM notes WHERE id % 10 = 0; UPDATE notes SET body = NULL WHERE id % 7 = 0;",
        );
    }
    fn start_writer(&self, db: &str, dir: &Path) -> Child {
        // Transfers: money leaves customers into the ledger, in one
        // transaction each, about 150 a second.
        let mut sql = String::new();
        for i in 0..20_000u64 {
            let a = 1 + (i * 7919) % 30_000;
            let b = 1 + (i * 104_729) % 30_000;
            sql += &format!(
                "START TRANSACTION;
                 UPDATE customers SET balance = balance - 5 WHERE id = {a};
                 INSERT INTO ledger (account, delta) VALUES ({a}, 5);
                 UPDATE customers SET balance = balance + 2 WHERE id = {b};
                 INSERT INTO ledger (account, delta) VALUES ({b}, -2);
                 COMMIT; DO SLEEP(0.006);\n"
            );
        }
        let script = dir.join("writer.sql");
        fs::write(&script, sql).unwrap();
        Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                "3306",
                "-u",
                "root",
                "--database",
                db,
            ])
            .stdin(fs::File::open(&script).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the writer")
    }
    fn progress(&self, db: &str) -> u64 {
        Kind::Mariadb
            .value(db, "SELECT COUNT(*) FROM ledger")
            .parse()
            .unwrap()
    }
    fn check_invariant(&self, db: &str) {
        let v = Kind::Mariadb.value(
            db,
            "SELECT (SELECT SUM(balance) FROM customers) + (SELECT COALESCE(SUM(delta), 0) FROM ledger)",
        );
        assert_eq!(
            v, SHOP_TOTAL,
            "{db} is not a consistent snapshot: balances + ledger = {v}"
        );
    }
}

fn stop(mut c: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// What the test did, with the time since it started, printed at the end.
struct Report {
    t0: Instant,
    lines: Vec<String>,
}

impl Report {
    fn new(t0: Instant) -> Report {
        Report {
            t0,
            lines: Vec::new(),
        }
    }

    fn note(&mut self, s: impl AsRef<str>) {
        let t = self.t0.elapsed().as_secs_f64();
        self.lines.push(format!("[{t:5.1} s] {}", s.as_ref()));
    }
}

fn full_cycle(w: &dyn Workload) {
    let t0 = Instant::now();
    let kind = w.kind();
    kind.ensure_running();
    let src = unique(&format!("pb_{}_src", kind.name()));
    let clone = unique(&format!("pb_{}_clone", kind.name()));
    let _cleanup = Databases(kind, vec![src.clone(), clone.clone()]);
    kind.create_db(&src);
    kind.drop_db(&clone);
    w.init(&src);

    let tools = tempfile::tempdir().unwrap();
    let (killed, passthrough) = w.clients();
    let bindir = client_dir(&tools.path().join("bin"), passthrough, killed);
    let mut env = kind.env();
    let var = match kind {
        Kind::Postgres => "PULLBACK_PG",
        Kind::Mariadb => "PULLBACK_MARIADB",
    };
    env.push((format!("{var}_DATABASE"), src.clone()));
    env.push((format!("{var}_CLONE_DATABASE"), clone.clone()));
    env.push((format!("{var}_BINDIR"), bindir.display().to_string()));
    let trio = Trio::start(kind.name(), &hooks_dir(kind.name()), &env);
    let dump = trio.backup_dir().join(w.dump_file());
    let mut report = Report::new(t0);
    report.note(format!(
        "{} hooks, source {src}, clone {clone}",
        kind.name()
    ));

    // 1. First cycle.
    let (e0, p0) = trio.bytes_sent();
    let g1 = trio.export().generation();
    let st = trio.wait_imported(&g1);
    assert_eq!(st["last_valid"]["verified"], true, "{st:#}");
    let (e1, p1) = trio.bytes_sent();
    assert!(e1 > e0 && p1 > p0, "the byte counters did not move");
    assert_same_tables(kind, &src, &clone, "after the first cycle");
    let size1 = fs::metadata(&dump).unwrap().len();
    report.note(format!(
        "cycle 1 ({g1}): dump {size1} bytes, {} rows; on the wire: exporter -> pbs {}, pbs -> clone {}",
        total_rows(&kind.tables(&src)),
        e1 - e0,
        p1 - p0
    ));

    // 2. Writes, second cycle: the clone follows, only the change travels.
    w.change(&src);
    let g2 = trio.export().generation();
    trio.wait_imported(&g2);
    let (e2, p2) = trio.bytes_sent();
    assert!(e2 > e1 && p2 > p1, "the second cycle carried nothing");
    assert_same_tables(kind, &src, &clone, "after the second cycle");
    let size2 = fs::metadata(&dump).unwrap().len();
    report.note(format!(
        "cycle 2 ({g2}): dump {size2} bytes; on the wire: exporter -> pbs {} ({:.1}% of the dump), pbs -> clone {} ({:.1}%)",
        e2 - e1,
        100.0 * (e2 - e1) as f64 / size2 as f64,
        p2 - p1,
        100.0 * (p2 - p1) as f64 / size2 as f64,
    ));
    assert!(
        (e2 - e1) * 10 < size2 && (p2 - p1) * 10 < size2,
        "the second cycle should send a small fraction of the {size2}-byte dump: \
         exporter sent {}, pbs sent {}",
        e2 - e1,
        p2 - p1
    );
    let at_g2 = kind.tables(&clone);

    // 3. The dump dies half-way: nothing is published.
    w.change_small(&src);
    let dump_before = file_sha256(&dump);
    fs::write(bindir.join("KILL"), "").unwrap();
    let r = trio.export();
    fs::remove_file(bindir.join("KILL")).unwrap();
    assert!(
        !r.ok,
        "an export whose dump was killed must fail: {:#}",
        r.run
    );
    let killed_at = fs::read_to_string(bindir.join("killed-at"))
        .unwrap_or_else(|_| panic!("the wrapper never killed {killed}:\n{}", r.stderr));
    assert_eq!(r.run["state"], "failed", "{:#}", r.run);
    let err = r.run["error"].as_str().unwrap_or_default();
    assert!(err.contains("export hook failed"), "error: {err}");
    let tail = r.run["log_tail"].as_str().unwrap_or_default();
    assert!(
        tail.contains("previous export is left as it was"),
        "hook log: {tail}"
    );
    assert_eq!(
        trio.pbs_newest().as_deref(),
        Some(g2.as_str()),
        "a generation was published"
    );
    assert_eq!(
        file_sha256(&dump),
        dump_before,
        "the previous dump was touched"
    );
    assert!(
        !trio.backup_dir().join(".pullback-export.tmp").exists(),
        "the half-written dump was left in the backup folder"
    );
    let st = trio.importer_status();
    assert_eq!(st["last_valid"]["generation"], g2.as_str(), "{st:#}");
    report.note(format!(
        "dump killed at {} bytes: export failed, PBS still at {g2}",
        killed_at.trim()
    ));

    // 4. The import dies half-way: the clone keeps the previous data.
    let new_db = format!("{clone}__pb_new");
    let killer = SessionKiller::start(kind, &new_db);
    let g3 = trio.export().generation();
    let pbs = wait_for("the PBS to give up pushing the generation", || {
        let s = trio.pbs_status();
        (s["importers"][0]["last_failure"]["generation"] == g3.as_str()).then_some(s)
    });
    let kills = killer.stop();
    assert!(kills > 0, "no import session was killed");
    let st = trio.importer_status();
    assert_eq!(st["last_valid"]["generation"], g2.as_str(), "{st:#}");
    assert_eq!(st["last_valid"]["verified"], true, "{st:#}");
    assert_eq!(st["last_failure"]["generation"], g3.as_str(), "{st:#}");
    assert!(st["importing"].is_null(), "{st:#}");
    let reason = st["last_failure"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("import hook failed"), "reason: {reason}");
    let log = st["last_log"].as_str().unwrap_or_default();
    assert!(
        log.contains(&format!("{g3} NOT imported")) && log.contains("was left as it was"),
        "the import hook's log should say why: {log}"
    );
    let text = trio.importer_status_text();
    assert!(
        text.contains(&format!("last failure: {g3}")) && text.contains("import hook failed"),
        "importer status: {text}"
    );
    let d = table_diff(&at_g2, &kind.tables(&clone));
    assert!(d.is_empty(), "the failed import changed the clone:\n{d}");
    assert!(!kind.exists(&new_db), "{new_db} was left behind");
    report.note(format!(
        "import of {g3} killed ({kills} sessions): clone still at {g2}; pbs says: {}",
        pbs["importers"][0]["last_failure"]["detail"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
    ));

    // 5. Writes during the export: the clone holds one consistent snapshot.
    let writer = w.start_writer(&src, tools.path());
    let start = w.progress(&src);
    wait_for("the writer to get going", || {
        (w.progress(&src) > start + 20).then_some(())
    });
    let before = w.progress(&src);
    let g4 = trio.export().generation();
    let after = w.progress(&src);
    let st = trio.wait_imported(&g4);
    stop(writer);
    assert_eq!(st["last_valid"]["verified"], true, "{st:#}");
    assert!(after > before, "no write happened during the export");
    let in_clone = w.progress(&clone);
    assert!(
        (before..=after).contains(&in_clone),
        "the clone holds {in_clone} writes: not between {before} and {after}"
    );
    w.check_invariant(&clone);
    report.note(format!(
        "writes during the export of {g4}: {before}..{after} on the source, the clone holds {in_clone}, consistent"
    ));

    // 6. A quiet cycle: the clone equals the source again.
    let g5 = trio.export().generation();
    trio.wait_imported(&g5);
    assert_same_tables(kind, &src, &clone, "after the last cycle");
    w.check_invariant(&src);

    // 7. Demote the source's database, promote the clone's.
    drop(trio);
    let hook_env: Vec<(String, String)> = env
        .into_iter()
        .chain([("PULLBACK_EPOCH".to_string(), "2".to_string())])
        .collect();
    report.note(match kind {
        Kind::Postgres => pg_fences(&src, &clone, &hook_env),
        Kind::Mariadb => mariadb_fences(&src, &clone, &hook_env),
    });

    report.note("done");
    println!("{}", report.lines.join("\n"));
}

/// A client session busy for a minute in `db`.
fn idle_session(kind: Kind, db: &str, user: &[&str]) -> Child {
    let mut c = match kind {
        Kind::Postgres => {
            let mut c = Command::new("psql");
            c.args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-d", db])
                .args(["-c", "SELECT pg_sleep(60)"]);
            c
        }
        Kind::Mariadb => {
            let mut c = Command::new("mariadb");
            c.args(["-h", "127.0.0.1", "-P", "3306"]).args(user).args([
                "--database",
                db,
                "-e",
                "SELECT SLEEP(60)",
            ]);
            c
        }
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[track_caller]
fn ended_within(mut c: Child, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

fn pg_fences(src: &str, clone: &str, env: &[(String, String)]) -> String {
    let pg = Kind::Postgres;
    let write = "UPDATE pgbench_branches SET filler = 'fence test' WHERE bid = 1";
    let e = pg
        .try_sql(clone, write)
        .expect_err("the clone must be read-only");
    assert!(e.contains("read-only transaction"), "{e}");
    let promoted = run_hook(pg, "promote", env);
    pg.sql(clone, write);

    let busy = idle_session(pg, src, &[]);
    wait_for("the busy session on the source", || {
        (pg.value(
            src,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
        ) == "1")
            .then_some(())
    });
    let demoted = run_hook(pg, "demote", env);
    assert!(
        ended_within(busy, Duration::from_secs(10)),
        "demote left a session running on {src}"
    );
    let e = pg
        .try_sql(src, write)
        .expect_err("the demoted source must refuse writes");
    assert!(e.contains("read-only transaction"), "{e}");
    format!("promote: {}demote: {}", promoted, demoted.trim_end())
}

/// Puts the shared MariaDB server back to read_only = OFF and drops the
/// test's application user, whatever happens.
struct MariadbFenceCleanup(String);

impl Drop for MariadbFenceCleanup {
    fn drop(&mut self) {
        let _ = Kind::Mariadb.try_sql(
            "",
            &format!(
                "SET GLOBAL read_only = OFF; DROP USER IF EXISTS '{}'@'%'",
                self.0
            ),
        );
    }
}

fn mariadb_fences(src: &str, clone: &str, env: &[(String, String)]) -> String {
    let m = Kind::Mariadb;
    let app = unique("pbapp");
    let _cleanup = MariadbFenceCleanup(app.clone());
    m.sql(
        "",
        &format!(
            "CREATE USER '{app}'@'%' IDENTIFIED BY 'app-password';
             GRANT SELECT, INSERT, UPDATE, DELETE ON `{src}`.* TO '{app}'@'%';
             GRANT SELECT, INSERT, UPDATE, DELETE ON `{clone}`.* TO '{app}'@'%';"
        ),
    );
    let user = ["-u", app.as_str(), "-papp-password"];
    let app_write = |db: &str| {
        Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", "3306"])
            .args(user)
            .args([
                "--database",
                db,
                "-e",
                "UPDATE notes SET body = 'fence test' WHERE id = 1",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(
        app_write(src).status.success(),
        "the application cannot write at all"
    );
    let busy = idle_session(m, src, &user);
    wait_for("the busy session on the source", || {
        (m.value(
            "",
            &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{app}'"),
        ) == "1")
            .then_some(())
    });
    let demoted = run_hook(m, "demote", env);
    assert!(
        ended_within(busy, Duration::from_secs(10)),
        "demote left a session running on {src}"
    );
    let out = app_write(src);
    assert!(!out.status.success(), "the demoted server took a write");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{out:?}"
    );
    let promoted = run_hook(m, "promote", env);
    let out = app_write(clone);
    assert!(
        out.status.success(),
        "the promoted clone refuses writes: {out:?}"
    );
    format!("demote: {}promote: {}", demoted, promoted.trim_end())
}

/// In a module so that `cargo nextest run databases` selects them.
mod databases {
    use super::*;

    #[test]
    fn postgres_pgbench_through_pbs_to_a_clone() {
        full_cycle(&Pgbench);
    }

    #[test]
    fn mariadb_shop_through_pbs_to_a_clone() {
        full_cycle(&Shop);
    }
}
