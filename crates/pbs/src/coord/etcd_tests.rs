//! [`EtcdStore`] against a real etcd (one member, started here from Debian's `etcd`,
//! installed by `make test-deps`): the compare on the key's revision, the grant's keys and
//! lease, two coordinators on two connections racing for MAIN, and an etcd that cannot be
//! reached.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::*;
use crate::config::EtcdConfig;
use crate::coord::store::{transact, GrantNote, Store, StoreError, Written};
use crate::coord::tests::{cfg, req};
use crate::coord::{CoordError, Coordinator, GrantKind, Refusal};

/// One etcd member on loopback, killed when dropped.
struct Member {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn member() -> Member {
    let bin = "/usr/bin/etcd";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} not found: run `make test-deps` (it installs Debian's etcd-server)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let m = Member {
        child,
        url,
        _dir: dir,
    };
    // Up once a read goes through.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = connect(&m, "/up", 1)
            .ok()
            .is_some_and(|e| EtcdStore::new(e, Some("x")).load().is_ok());
        if ok {
            return m;
        }
        assert!(Instant::now() < end, "etcd at {} did not come up", m.url);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(m: &Member, prefix: &str, timeout_secs: u64) -> anyhow::Result<Arc<Etcd>> {
    Etcd::connect(
        &EtcdConfig {
            endpoints: vec![m.url.clone()],
            prefix: prefix.into(),
            timeout_secs,
            main_lease_secs: Some(30),
            ..EtcdConfig::default()
        },
        3600,
    )
}

fn state(epoch: u64) -> CoordState {
    CoordState {
        epoch,
        ..Default::default()
    }
}

#[test]
fn writes_compare_the_revision_read_and_a_grant_writes_its_keys() {
    let m = member();
    // Two PBS: two connections.
    let a = EtcdStore::new(connect(&m, "/cas", 5).expect("a"), Some("db"));
    let b = EtcdStore::new(connect(&m, "/cas", 5).expect("b"), Some("db"));
    assert_eq!(a.load().expect("load").state, None);
    let r1 = match a.write(0, &state(1), None).expect("write") {
        Written::Done { revision } => revision,
        Written::Moved => panic!("the first write lost"),
    };
    // B read nothing (revision 0) before A wrote: its write must not go through.
    assert_eq!(b.write(0, &state(7), None).expect("write"), Written::Moved);
    let v = b.load().expect("load");
    assert_eq!((v.state, v.revision), (Some(state(1)), r1));
    let grant = GrantNote {
        node: "c1",
        epoch: 2,
    };
    let r2 = match b.write(r1, &state(2), Some(grant)).expect("write") {
        Written::Done { revision } => revision,
        Written::Moved => panic!("lost on the revision just read"),
    };
    assert!(r2 > r1);
    // A's copy is stale now.
    assert_eq!(a.write(r1, &state(9), None).expect("write"), Written::Moved);
    let st = a.status().expect("status");
    assert_eq!(st["revision"].as_i64(), Some(r2), "{st}");
    assert_eq!(
        (st["grant"]["node"].as_str(), st["grant"]["epoch"].as_u64()),
        (Some("c1"), Some(2)),
        "{st}"
    );
    assert_eq!(st["grant"]["revision"].as_i64(), Some(r2), "{st}");
    assert_eq!(st["main_lease"]["state"], "alive", "{st}");
    assert_eq!(st["main_lease"]["node"], "c1", "{st}");
    assert_eq!(st["main_lease"]["held_here"], false, "{st}");
    assert_eq!(b.status().expect("status")["main_lease"]["held_here"], true);
}

#[test]
fn two_coordinators_on_two_connections_grant_main_once() {
    let m = member();
    let (ea, eb) = (
        connect(&m, "/race", 5).expect("a"),
        connect(&m, "/race", 5).expect("b"),
    );
    for round in 0..20 {
        let group = format!("db{round}");
        let open = |e: &Arc<Etcd>| {
            let store = Box::new(EtcdStore::new(e.clone(), Some(&group)));
            Arc::new(Coordinator::open_group(&cfg(), store, Some("db"), 0).expect("open"))
        };
        let (a, b) = (open(&ea), open(&eb));
        let gate = Arc::new(Barrier::new(2));
        let run = |c: Arc<Coordinator>, node: &'static str| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                c.grant(
                    &req(node, true, Some(0)),
                    &Default::default(),
                    GrantKind::Takeover { promote: false },
                )
                .map(|(g, _)| g.verdict.epoch)
            })
        };
        let (ra, rb) = (run(a.clone(), "c1"), run(b, "c2"));
        let results = [ra.join().expect("a"), rb.join().expect("b")];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: {results:?}"
        );
        assert!(
            results.iter().any(|r| matches!(
                r.as_ref().err().and_then(|e| e.refusal()),
                Some(Refusal::EpochMoved { now: 1, .. })
            )),
            "round {round}: {results:?}"
        );
        let st = a.fresh().expect("read");
        assert_eq!(st.epoch, 1, "round {round}");
    }
}

#[test]
fn an_etcd_that_cannot_be_reached_decides_nothing() {
    let port = free_port();
    let e = Etcd::connect(
        &EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            prefix: "/down".into(),
            timeout_secs: 1,
            main_lease_secs: None,
            ..EtcdConfig::default()
        },
        3600,
    )
    .expect("connect is lazy");
    let store = EtcdStore::new(e, Some("db"));
    let err = store.load().expect_err("read from nowhere");
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("etcd") && m.contains(&port.to_string())),
        "{err}"
    );
    let mut cached = (state(3), 5);
    let r = transact(&store, &mut cached, |st| {
        let mut next = st.clone();
        next.epoch += 1;
        Ok(crate::coord::Step {
            state: next,
            answer: (),
            effects: Vec::new(),
        })
    });
    assert!(matches!(r, Err(CoordError::Unavailable(_))), "{r:?}");
    assert_eq!(cached, (state(3), 5));
}

#[test]
fn a_tls_file_that_cannot_be_read_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("no-such-ca.pem");
    let err = Etcd::connect(
        &EtcdConfig {
            endpoints: vec!["https://127.0.0.1:1".into()],
            prefix: "/tls".into(),
            timeout_secs: 1,
            ca: Some(missing.clone()),
            ..EtcdConfig::default()
        },
        3600,
    )
    .err()
    .expect("a missing CA file is an error");
    let text = format!("{err:#}");
    assert!(
        text.contains("[coordinator] etcd ca") && text.contains(&missing.display().to_string()),
        "{text}"
    );
}
