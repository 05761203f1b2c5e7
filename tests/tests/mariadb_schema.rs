//! The MariaDB hooks on a schema with a sequence used as a column default, a
//! view and a trigger, restored under another schema name on the same server
//! (as a clone on the main's server would be): every insert on the clone
//! draws from the clone's own sequence, the view and the trigger act on the
//! clone's tables, and the main's objects are untouched.

use pullback_tests::db::{run_hook, unique, Kind};

fn env(src: &str, clone: &str, dir: &std::path::Path, gen: &str) -> Vec<(String, String)> {
    let mut e = Kind::Mariadb.env();
    for (k, v) in [
        ("PULLBACK_MARIADB_DATABASE", src),
        ("PULLBACK_MARIADB_CLONE_DATABASE", clone),
        ("PULLBACK_GENERATION", gen),
    ] {
        e.push((k.into(), v.into()));
    }
    let d = dir.display().to_string();
    e.push(("PULLBACK_BACKUP_DIR".into(), d.clone()));
    e.push(("PULLBACK_RESTORE_DIR".into(), d));
    e
}

struct Drop2(String, String);
impl Drop for Drop2 {
    fn drop(&mut self) {
        for db in [&self.0, &self.1] {
            Kind::Mariadb.drop_db(db);
        }
    }
}

#[test]
fn sequences_views_and_triggers_restore_under_another_schema_name() {
    let k = Kind::Mariadb;
    k.ensure_running();
    let (src, clone) = (unique("pbseq_main"), unique("pbseq_clone"));
    let _cleanup = Drop2(src.clone(), clone.clone());
    k.create_db(&src);
    k.sql(
        &src,
        "CREATE SEQUENCE s START WITH 1000;
         CREATE TABLE t (id BIGINT PRIMARY KEY DEFAULT nextval(s), v INT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE audit (v INT NOT NULL) ENGINE=InnoDB;
         INSERT INTO t (v) SELECT seq FROM seq_1_to_50;
         CREATE VIEW big AS SELECT id, v FROM t WHERE v > 25;
         CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW INSERT INTO audit VALUES (NEW.v);",
    );
    let main_next = || k.value(&src, "SELECT next_not_cached_value FROM s");
    let main_before = main_next();

    for round in 1..=2 {
        let dir = tempfile::tempdir().unwrap();
        let gen = format!("db/{round}");
        run_hook(k, "export", &env(&src, &clone, dir.path(), &gen));
        let out = run_hook(k, "import", &env(&src, &clone, dir.path(), &gen));
        assert!(out.contains(&format!("is in schema {clone}")), "{out}");
        run_hook(k, "verify", &env(&src, &clone, dir.path(), &gen));

        // The clone's table names neither the main's schema nor a temporary one.
        let ddl = k.sql(&clone, "SHOW CREATE TABLE t");
        assert!(!ddl.contains(&src) && !ddl.contains("__pb_"), "{ddl}");
        assert!(ddl.contains("nextval("), "{ddl}");

        // An insert on the clone draws from the clone's sequence...
        let v = 900 + round;
        k.sql(&clone, &format!("INSERT INTO t (v) VALUES ({v})"));
        let id: u64 = k
            .value(&clone, &format!("SELECT id FROM t WHERE v = {v}"))
            .parse()
            .unwrap();
        assert!(
            id >= 1050,
            "round {round}: id {id} did not come from the restored sequence"
        );
        // ...and fires the clone's trigger into the clone's audit table; the
        // view reads the clone's rows.
        assert_eq!(
            k.value(&clone, &format!("SELECT COUNT(*) FROM audit WHERE v = {v}")),
            "1"
        );
        assert_eq!(k.value(&clone, "SELECT COUNT(*) FROM big"), "26");
        // The main is untouched: its sequence, rows, audit and view.
        assert_eq!(
            main_next(),
            main_before,
            "round {round}: the clone drew from the main's sequence"
        );
        assert_eq!(k.value(&src, "SELECT COUNT(*) FROM t"), "50");
        assert_eq!(k.value(&src, "SELECT COUNT(*) FROM audit"), "0");
        assert_eq!(k.value(&src, "SELECT COUNT(*) FROM big"), "25");
    }
}
