//! The coordinator with its saved state: durability across restarts, and the gates
//! through the saving wrapper.

use super::*;
use crate::coord::machine::NewClone;
use crate::daemon::{Event, ImporterStatus};
use wire::ha::{Role, TakeoverBy};

pub(super) fn cfg() -> Config {
    toml::from_str(
        r#"
[[source]]
name = "db"
exporter = { name = "main1", url = "http://127.0.0.1:1", token = "0123456789abcdef" }
[[importer]]
name = "c1"
url = "http://127.0.0.1:2"
token = "0123456789abcdeg"
[[importer]]
name = "c2"
url = "http://127.0.0.1:3"
token = "0123456789abcdeh"
[[importer]]
name = "off"
url = "http://127.0.0.1:4"
token = "0123456789abcdei"
disabled = true
"#,
    )
    .expect("config")
}

fn good(gens: &[(&str, &str)]) -> ServerStatus {
    let mut s = ServerStatus::default();
    for (n, g) in gens {
        s.importers.insert(
            n.to_string(),
            ImporterStatus {
                last_good: Some(Event {
                    at: String::new(),
                    generation: Some(g.to_string()),
                    detail: String::new(),
                }),
                last_failure: None,
            },
        );
    }
    s
}

/// A takeover asked by the clone itself.
fn takeover(c: &Coordinator, r: &TakeoverRequest, st: &ServerStatus) -> Result<Grant, CoordError> {
    c.grant(r, st, GrantKind::Takeover { promote: false })
        .map(|(g, _)| g)
}

/// What node `node` says in a hello.
pub(super) fn hello_of(node: &str, role: Role, epoch: u64) -> Hello {
    Hello {
        node: node.into(),
        epoch,
        role,
    }
}

pub(super) fn req(node: &str, force: bool, epoch: Option<u64>) -> TakeoverRequest {
    TakeoverRequest {
        node: node.into(),
        force,
        epoch,
        by: None,
        password: None,
    }
}

#[test]
fn hello_grants_then_takeover_fences() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let c = Coordinator::open(&cfg(), dir, 4).expect("open");
    let hello =
        |node: &str, role: Role, epoch: u64| c.hello(&hello_of(node, role, epoch)).map(|(v, _)| v);
    // A clone's hello before any main: BACKUP; the exporter's: MAIN at the archive's epoch.
    let v = hello("c1", Role::Backup, 0).expect("hello");
    assert_eq!(
        (v.role, v.status, v.epoch),
        (Role::Backup, NodeStatus::Follower, 4)
    );
    let v = hello("main1", Role::Backup, 0).expect("hello");
    assert_eq!(
        (v.role, v.status, v.epoch),
        (Role::Main, NodeStatus::Leader, 4)
    );
    assert_eq!(
        hello("off", Role::Backup, 0).map(|v| v.status).ok(),
        Some(NodeStatus::Disabled)
    );
    assert!(hello("nobody", Role::Backup, 0).is_err());

    // Gates: Disabled, unknown, a newer clone (unless forced), a moved epoch.
    let st = good(&[("c1", "db/3"), ("c2", "db/10"), ("off", "db/11")]);
    let e = takeover(&c, &req("off", false, None), &st)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|m| m.contains("Disabled")),
        "{e:?}"
    );
    assert!(takeover(&c, &req("main1", false, None), &st).is_err());
    let e = takeover(&c, &req("c1", false, Some(4)), &st)
        .err()
        .map(|e| e.to_string());
    // db/10 > db/3 (numerically, not as text); the Disabled clone's db/11 does not count.
    assert!(
        e.as_deref()
            .is_some_and(|m| m.contains("c2") && m.contains("db/10")),
        "{e:?}"
    );
    let e = takeover(&c, &req("c1", true, Some(3)), &st)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|m| m.contains("epoch moved")),
        "{e:?}"
    );
    assert_eq!(c.snapshot().epoch, 4, "refusals change nothing");

    let g = takeover(&c, &req("c1", true, Some(4)), &st).expect("forced");
    let (v, old) = (g.verdict, g.old);
    // No spare configured: a clone is needed; the takeover is in the history.
    assert!(matches!(g.new_clone, NewClone::Needed(ref n) if n.new_main == "c1" && n.epoch == 5));
    assert_eq!(
        (v.role, v.epoch, old.as_deref()),
        (Role::Main, 5, Some("main1"))
    );
    // Durable: a new coordinator on the same folder sees the same thing.
    let again = Coordinator::open(&cfg(), dir, 0).expect("reopen");
    let s = again.snapshot();
    assert_eq!((s.epoch, s.main.as_deref()), (5, Some("c1")));
    assert_eq!(s.nodes["main1"].status, NodeStatus::Broken);
    assert_eq!(s.nodes["c1"].status, NodeStatus::Leader);

    // The old main: Broken whatever it claims; its notifications are refused.
    let v = again
        .hello(&Hello {
            node: "main1".into(),
            epoch: 4,
            role: Role::Main,
        })
        .map(|(v, _)| v)
        .expect("hello");
    assert_eq!(
        (v.role, v.status, v.epoch),
        (Role::Backup, NodeStatus::Broken, 5)
    );
    assert!(again.check_notify("main1", 5).is_err());
    assert!(again.check_notify("c1", 4).is_err(), "stale epoch");
    assert!(again.check_notify("c1", 5).is_ok());
    // A second takeover by the same node: already MAIN.
    assert!(takeover(&again, &req("c1", false, None), &st).is_err());
}

#[test]
fn switchover_keeps_the_old_main_a_follower_and_rejoin_waits_for_the_latest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let c = Coordinator::open(&cfg(), dir, 0).expect("open");
    let hello =
        |node: &str, role: Role, epoch: u64| c.hello(&hello_of(node, role, epoch)).map(|(v, _)| v);
    assert_eq!(
        hello("main1", Role::Backup, 0).map(|v| v.role).ok(),
        Some(Role::Main)
    );
    // The best clone: newest verified generation; the Disabled one does not count; a
    // clone whose last push failed since is not verified.
    let mut st = good(&[("c1", "db/3"), ("c2", "db/10"), ("off", "db/11")]);
    assert_eq!(c.best_clone(&st).as_deref(), Some("c2"));
    if let Some(i) = st.importers.get_mut("c2") {
        i.last_failure = Some(Event {
            at: "9999".into(),
            generation: Some("db/11".into()),
            detail: "failed".into(),
        });
    }
    assert_eq!(c.best_clone(&st).as_deref(), Some("c1"));
    // A planned switchover: old main BACKUP/Follower, not Broken.
    let g = c
        .grant(&req("c1", true, Some(0)), &st, GrantKind::Switchover)
        .map(|(g, _)| g)
        .expect("granted");
    let (v, old) = (g.verdict, g.old);
    // A switchover is no takeover: nothing recorded, no clone asked for.
    assert_eq!(g.new_clone, NewClone::Nothing);
    assert!(c.snapshot().takeovers.is_empty());
    assert_eq!((v.epoch, old.as_deref()), (1, Some("main1")));
    let s = c.snapshot();
    assert_eq!(s.nodes["main1"].status, NodeStatus::Follower);
    assert_eq!(s.nodes["main1"].role, Role::Backup);
    let v = hello("main1", Role::Backup, 0).expect("hello");
    assert_eq!((v.role, v.status), (Role::Backup, NodeStatus::Follower));
    // Rejoin: refused for the main and for a node that is no clone.
    assert!(c.rejoin("c1").is_err());
    assert!(c.rejoin("main1").is_err(), "no [[importer]] main1");
    c.rejoin("c2").expect("rejoin");
    assert!(c.is_rejoining("c2"));
    assert!(takeover(&c, &req("c2", true, None), &st).is_err());
    assert!(c.check_notify("c2", 1).is_err());
    assert_eq!(
        hello("c2", Role::Main, 1).map(|v| (v.role, v.status)).ok(),
        Some((Role::Backup, NodeStatus::Rejoining))
    );
    // Not the latest (behind, or ahead): still rejoining; the latest: Follower.
    assert!(!c.finish_rejoin("c2", "db/9", "db/10"));
    assert!(!c.finish_rejoin("c2", "db/11", "db/10"));
    assert!(c.is_rejoining("c2"));
    assert!(c.finish_rejoin("c2", "db/10", "db/10"));
    assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Follower);
    // Durable across a restart.
    c.rejoin("c2").expect("rejoin again");
    let again = Coordinator::open(&cfg(), dir, 0).expect("reopen");
    assert!(again.is_rejoining("c2"));
}

#[test]
fn a_takeover_activates_the_first_spare_durably_then_asks_for_a_clone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut conf = cfg();
    conf.importers[1].spare = true; // c2
    conf.importers[2].spare = true; // off (also disabled)
    let c = Coordinator::open(&conf, dir, 0).expect("open");
    let s = c.snapshot();
    assert_eq!(s.nodes["c2"].status, NodeStatus::Spare);
    assert_eq!(s.nodes["off"].status, NodeStatus::Spare);
    assert!(!c.receives_pushes("c2"));
    assert!(c.receives_pushes("c1"));
    let st = good(&[("c1", "db/3"), ("c2", "db/10")]);
    // A spare is not eligible, and its (stale) verified generation does not gate c1.
    let e = takeover(&c, &req("c2", true, None), &st)
        .err()
        .map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|m| m.contains("Spare")), "{e:?}");
    assert_eq!(c.best_clone(&st).as_deref(), Some("c1"));
    c.hello(&Hello {
        node: "main1".into(),
        epoch: 0,
        role: Role::Backup,
    })
    .expect("hello");
    let mut r = req("c1", false, Some(0));
    r.by = Some("page".into());
    let g = takeover(&c, &r, &st).expect("takeover");
    assert_eq!(g.new_clone, NewClone::Spare("c2".into()));
    let s = c.snapshot();
    assert_eq!(s.nodes["c2"].status, NodeStatus::Follower);
    assert_eq!(s.nodes["off"].status, NodeStatus::Spare, "only the first");
    assert!(c.receives_pushes("c2"));
    assert_eq!(s.takeovers.len(), 1);
    let t = &s.takeovers[0];
    assert_eq!(
        (
            t.node.as_str(),
            t.old_main.as_deref(),
            t.epoch,
            t.forced,
            t.by
        ),
        ("c1", Some("main1"), 1, false, TakeoverBy::Page)
    );
    assert_eq!(t.new_clone, "spare c2 activated");
    // Durable: a restart keeps c2 activated (not Spare again).
    let c = Coordinator::open(&conf, dir, 0).expect("reopen");
    assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Follower);
    // Next takeover (forced, by c2): the next spare, the Disabled one.
    let g = takeover(&c, &req("c2", true, None), &st).expect("takeover 2");
    assert_eq!(g.new_clone, NewClone::Spare("off".into()));
    assert_eq!(c.snapshot().nodes["off"].status, NodeStatus::Disabled);
    let again = Coordinator::open(&conf, dir, 0).expect("reopen");
    assert_eq!(again.snapshot().nodes["off"].status, NodeStatus::Disabled);
    // No spare left: a clone is needed (no hook configured), recorded.
    again.rejoin("c1").expect("rejoin");
    again.finish_rejoin("c1", "db/3", "db/3");
    let g = takeover(&again, &req("c1", true, None), &st).expect("takeover 3");
    assert!(matches!(g.new_clone, NewClone::Needed(_)));
    let s = again.snapshot();
    let n = s.clone_needed.as_ref().expect("clone needed");
    assert_eq!(
        (
            n.epoch,
            n.new_main.as_str(),
            n.old_main.as_deref(),
            n.hook.as_deref()
        ),
        (3, "c1", Some("c2"), None)
    );
    assert!(clone_needed_text(n).contains("set up a clone"));
    let hist: Vec<(u64, bool, &str)> = s
        .takeovers
        .iter()
        .map(|t| (t.epoch, t.forced, t.by.as_str()))
        .collect();
    assert_eq!(
        hist,
        [(1, false, "page"), (2, true, "api"), (3, true, "api")]
    );
    // A rejoin that finishes gives a new clone.
    again.rejoin("c2").expect("rejoin c2");
    again.finish_rejoin("c2", "db/3", "db/3");
    assert!(again.snapshot().clone_needed.is_none());
    // The history is bounded.
    for _ in 0..KEEP_TAKEOVERS {
        for (to, from) in [("c2", "c1"), ("c1", "c2")] {
            takeover(&again, &req(to, true, None), &st).expect("takeover");
            again.rejoin(from).expect("rejoin");
            again.finish_rejoin(from, "db/3", "db/3");
        }
    }
    assert_eq!(again.snapshot().takeovers.len(), KEEP_TAKEOVERS);

    // A spare rejoined by an operator stays a clone after a restart.
    let dir = dir.join("rejoin");
    std::fs::create_dir_all(&dir).expect("tmp");
    let c = Coordinator::open(&conf, &dir, 0).expect("open");
    assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Spare);
    c.rejoin("c2").expect("rejoin the spare");
    assert!(c.finish_rejoin("c2", "db/3", "db/3"));
    let again = Coordinator::open(&conf, &dir, 0).expect("reopen");
    assert_eq!(again.snapshot().nodes["c2"].status, NodeStatus::Follower);
}
