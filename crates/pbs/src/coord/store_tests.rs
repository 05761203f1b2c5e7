//! The compare-and-swap loop of [`transact`] against a shared store in memory: a lost race
//! runs the machine again on what the other writer left, a store that keeps changing gives
//! up after [`MAX_TRIES`], an unreachable store decides nothing, and two coordinators
//! sharing one store never both grant MAIN.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use super::*;
use crate::coord::tests::{cfg, req};
use crate::coord::{Coordinator, GrantKind};

/// Another writer's change.
type Meddle = Box<dyn Fn(&mut CoordState) + Send>;
/// A write: its revision and the grant it recorded (node, epoch).
type WriteLog = Vec<(i64, Option<(String, u64)>)>;

/// A shared store in memory. `meddle`: before each of the next writes, another writer
/// changes the state first (the write then loses the race).
#[derive(Default)]
struct Shared {
    slot: Mutex<(Option<CoordState>, i64)>,
    meddle: Mutex<Vec<Meddle>>,
    /// Every write: its revision and whether it recorded a grant (node, epoch).
    writes: Mutex<WriteLog>,
    loads: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

impl Store for Arc<Shared> {
    fn shared(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Versioned, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("etcd cannot be reached".into()));
        }
        self.loads.fetch_add(1, Ordering::SeqCst);
        let s = self.slot.lock().expect("slot");
        Ok(Versioned {
            state: s.0.clone(),
            revision: s.1,
        })
    }

    fn write(
        &self,
        revision: i64,
        next: &CoordState,
        grant: Option<GrantNote<'_>>,
    ) -> Result<Written, StoreError> {
        let mut s = self.slot.lock().expect("slot");
        if let Some(m) = self.meddle.lock().expect("meddle").pop() {
            let mut other = s.0.clone().unwrap_or_default();
            m(&mut other);
            *s = (Some(other), s.1 + 1);
        }
        if s.1 != revision {
            return Ok(Written::Moved);
        }
        *s = (Some(next.clone()), s.1 + 1);
        self.writes
            .lock()
            .expect("writes")
            .push((s.1, grant.map(|g| (g.node.to_string(), g.epoch))));
        Ok(Written::Done { revision: s.1 })
    }
}

fn open(store: &Arc<Shared>) -> Coordinator {
    Coordinator::open_group(&cfg(), Box::new(store.clone()), Some("db"), 0).expect("open")
}

/// A takeover of `node` asked at epoch 0 (as a clone asks: at the epoch it knows).
fn grant(c: &Coordinator, node: &str) -> Result<u64, CoordError> {
    c.grant(
        &req(node, true, Some(0)),
        &Default::default(),
        GrantKind::Takeover { promote: false },
    )
    .map(|(g, _)| g.verdict.epoch)
}

#[test]
fn a_lost_race_runs_the_machine_again_on_the_new_state() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    // Another PBS grants c2 just before this one writes its grant of c1.
    store
        .meddle
        .lock()
        .expect("meddle")
        .push(Box::new(|st: &mut CoordState| {
            st.epoch += 1;
            st.main = Some("c2".into());
        }));
    let e = grant(&c, "c1").expect_err("granted on a state that moved");
    assert!(
        matches!(e.refusal(), Some(Refusal::EpochMoved { now: 1, .. })),
        "{e}"
    );
    let st = c.fresh().expect("read");
    assert_eq!((st.epoch, st.main.as_deref()), (1, Some("c2")), "{st:?}");
    // Only the configured nodes were written by this PBS: no grant of c1.
    let writes = store.writes.lock().expect("writes").clone();
    assert!(writes.iter().all(|(_, g)| g.is_none()), "{writes:?}");
}

#[test]
fn a_lost_race_on_a_record_is_retried_and_keeps_both_changes() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    store
        .meddle
        .lock()
        .expect("meddle")
        .push(Box::new(|st: &mut CoordState| {
            if let Some(n) = st.nodes.get_mut("c2") {
                n.last_seen = Some("by the other PBS".into());
            }
        }));
    c.set_generation("main1", "db/7");
    let st = c.fresh().expect("read");
    assert_eq!(
        st.nodes["main1"].last_generation.as_deref(),
        Some("db/7"),
        "{st:?}"
    );
    assert_eq!(
        st.nodes["c2"].last_seen.as_deref(),
        Some("by the other PBS")
    );
}

#[test]
fn a_grant_is_written_with_its_note_and_from_a_fresh_read() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    let before = store.loads.load(Ordering::SeqCst);
    assert_eq!(grant(&c, "c1").expect("granted"), 1);
    assert!(store.loads.load(Ordering::SeqCst) > before, "no fresh read");
    let writes = store.writes.lock().expect("writes").clone();
    assert_eq!(
        writes.last().and_then(|(_, g)| g.clone()),
        Some(("c1".to_string(), 1))
    );
    // A refusal (c1 is the main now) writes nothing.
    let n = writes.len();
    assert!(grant(&c, "c1").is_err());
    assert_eq!(store.writes.lock().expect("writes").len(), n);
}

#[test]
fn a_store_that_keeps_changing_gives_up_after_max_tries() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    let runs = AtomicUsize::new(0);
    for _ in 0..MAX_TRIES + 5 {
        store
            .meddle
            .lock()
            .expect("meddle")
            .push(Box::new(|st: &mut CoordState| st.takeovers.clear()));
    }
    let mut cached = (CoordState::default(), 0);
    let e = transact(&store, &mut cached, |st| {
        runs.fetch_add(1, Ordering::SeqCst);
        let mut next = st.clone();
        next.epoch += 1;
        Ok(crate::coord::Step {
            state: next,
            answer: (),
            effects: Vec::new(),
        })
    })
    .expect_err("kept changing, yet done");
    assert_eq!(runs.load(Ordering::SeqCst), MAX_TRIES);
    assert!(
        matches!(e, CoordError::Unavailable(ref m) if m.contains("kept changing")),
        "{e}"
    );
    assert_eq!(c.fresh().expect("read").epoch, 0);
}

#[test]
fn an_unreachable_store_grants_nothing() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    store.down.store(true, Ordering::SeqCst);
    let e = grant(&c, "c1").expect_err("granted without the store");
    let api = wire::server::ApiError::from(e);
    assert_eq!(api.status.as_u16(), 503, "{api:?}");
    assert!(api.message.contains("etcd"), "{api:?}");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(c.fresh().expect("read").main, None);
}

#[test]
fn two_coordinators_on_one_store_never_both_grant() {
    for round in 0..100 {
        let store = Arc::new(Shared::default());
        let (a, b) = (Arc::new(open(&store)), Arc::new(open(&store)));
        let gate = Arc::new(Barrier::new(2));
        let run = |c: Arc<Coordinator>, node: &'static str| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                grant(&c, node)
            })
        };
        let (ra, rb) = (run(a, "c1"), run(b, "c2"));
        let results = [ra.join().expect("a"), rb.join().expect("b")];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let st = store.load().expect("load").state.expect("state");
        assert_eq!(st.epoch, 1, "round {round}");
    }
}

#[test]
fn an_epoch_raised_to_the_archive_at_start_is_no_grant() {
    let store = Arc::new(Shared::default());
    let c = open(&store);
    c.hello(&crate::coord::tests::hello_of(
        "main1",
        wire::ha::Role::Main,
        0,
    ))
    .expect("hello");
    let granted: Vec<_> = store.writes.lock().expect("writes").clone();
    assert_eq!(
        granted.last().and_then(|(_, g)| g.clone()),
        Some(("main1".to_string(), 0)),
        "the first exporter's hello grants MAIN: {granted:?}"
    );
    let again =
        Coordinator::open_group(&cfg(), Box::new(store.clone()), Some("db"), 5).expect("reopen");
    assert_eq!(again.fresh().expect("read").epoch, 5);
    let writes = store.writes.lock().expect("writes").clone();
    assert_eq!(
        writes.last().map(|(_, g)| g.clone()),
        Some(None),
        "{writes:?}"
    );
}
