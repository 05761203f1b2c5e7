use super::*;
use crate::ranges::{Plan, Ranges};

fn bytes_of(n: usize, v: u8) -> Bytes {
    Bytes::from(vec![v; n])
}

#[test]
fn a_miss_plans_the_window_and_the_next_and_later_readers_wait_on_them() {
    let r = Ranges::new(1 << 20);
    // 100 bytes at 1000 of a 10 000-byte object, windows of 4000.
    let Plan::Fetch(slots) = r.plan("k", 1000, 100, 10_000, 4000, 500) else {
        panic!("a first read must fetch");
    };
    assert_eq!(
        slots.iter().map(|s| s.range()).collect::<Vec<_>>(),
        [(0, 4000), (4000, 8000)],
        "aligned windows"
    );
    // A reader of a range inside either waits for that slot (no second fetch).
    let Plan::Wait(s) = r.plan("k", 6000, 10, 10_000, 4000, 500) else {
        panic!("the prefetched window serves this read");
    };
    assert_eq!(s.range(), (4000, 8000));
    let reader = std::thread::spawn({
        let s = s.clone();
        move || s.wait(6000, 10)
    });
    slots[1].fill(Ok(bytes_of(4000, 9)));
    assert_eq!(reader.join().unwrap(), Ok(vec![9u8; 10]));
    // Another object, or a range outside every slot, is a new fetch.
    assert!(matches!(
        r.plan("j", 1000, 10, 10_000, 4000, 500),
        Plan::Fetch(_)
    ));
    assert!(matches!(
        r.plan("k", 9500, 10, 10_000, 4000, 500),
        Plan::Fetch(_)
    ));
    // A read across a boundary stretches its window over it.
    let Plan::Fetch(s) = r.plan("x", 3990, 20, 10_000, 4000, 500) else {
        panic!("fetch");
    };
    assert_eq!(s[0].range(), (0, 4010));
    assert_eq!(s[1].range(), (4010, 8010));
    // One that begins in a held window and runs past it is fetched from its own offset:
    // just itself when the next window is held too, else to the next boundary (a held
    // window is never fetched again).
    let Plan::Fetch(s) = r.plan("k", 3900, 300, 10_000, 4000, 500) else {
        panic!("fetch");
    };
    assert_eq!(
        s.iter().map(|s| s.range()).collect::<Vec<_>>(),
        [(3900, 4200)]
    );
    let Plan::Fetch(s) = r.plan("z", 8000, 10, 20_000, 4000, 500) else {
        panic!("fetch");
    };
    assert_eq!(s[0].range(), (8000, 12_000));
    r.forget("z", Some(&s[1]));
    let Plan::Fetch(s) = r.plan("z", 11_900, 300, 20_000, 4000, 500) else {
        panic!("fetch");
    };
    assert_eq!(s[0].range(), (11_900, 16_000));
}

#[test]
fn a_read_ending_at_the_end_fetches_the_tail_and_a_failed_fetch_is_forgotten() {
    let r = Ranges::new(1 << 20);
    let Plan::Fetch(slots) = r.plan("k", 9976, 24, 10_000, 4000, 500) else {
        panic!("fetch");
    };
    assert_eq!(slots.len(), 1);
    assert_eq!(
        slots[0].range(),
        (9500, 10_000),
        "the tail, for the trailer before it"
    );
    slots[0].fill(Err("connection reset".into()));
    assert_eq!(
        r.read(&slots[0], 9976, 24),
        Err("connection reset".to_string())
    );
    r.forget("k", Some(&slots[0]));
    assert!(matches!(
        r.plan("k", 9976, 24, 10_000, 4000, 500),
        Plan::Fetch(_)
    ));
    // Fewer bytes than the slot claims: an error, never a short answer.
    let Plan::Fetch(s) = r.plan("m", 0, 10, 10_000, 4000, 500) else {
        panic!("fetch");
    };
    s[0].fill(Ok(bytes_of(5, 1)));
    assert!(r.read(&s[0], 0, 10).is_err());
}

#[test]
fn the_budget_drops_the_least_recently_used_fetched_windows() {
    let r = Ranges::new(8000);
    for i in 0..4u64 {
        // Each miss plans two windows (8000 bytes): the next miss is past both.
        let Plan::Fetch(slots) = r.plan("k", i * 8000, 10, 1 << 20, 4000, 500) else {
            panic!("fetch {i}");
        };
        for s in &slots {
            s.fill(Ok(bytes_of(4000, i as u8)));
        }
    }
    assert!(r.used() <= 8000, "{}", r.used());
    // The newest windows stay; the first is gone.
    assert!(matches!(
        r.plan("k", 24_000, 10, 1 << 20, 4000, 500),
        Plan::Wait(_)
    ));
    assert!(matches!(
        r.plan("k", 0, 10, 1 << 20, 4000, 500),
        Plan::Fetch(_)
    ));
    r.forget("k", None);
    assert_eq!(r.used(), 0);
}

#[test]
fn scratch_keys_stay_local() {
    for k in [
        "tmp/1-2.tmp",
        "pins/owner.pin",
        "locks/archive",
        "tmp",
        "pins",
    ] {
        assert!(is_local(k), "{k}");
    }
    for k in [
        "config",
        "packs/ab/abcd.pack",
        "gens/db/00000000000000000001.gen",
        "tmpx/a",
    ] {
        assert!(!is_local(k), "{k}");
    }
}

fn cfg() -> S3Config {
    S3Config {
        endpoint: "http://127.0.0.1:1".into(),
        bucket: "b".into(),
        prefix: "p".into(),
        region: default_region(),
        access_key_id: "GK0123".into(),
        secret_access_key: Some("s".into()),
        secret_access_key_file: None,
        conditional_put: false,
        timeout_secs: 1,
        cache_mib: 1,
        disk_cache_mib: 0,
    }
}

#[test]
fn config_errors_name_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.secret_access_key = None;
    let e = ObjectBackend::new(&c, t.path()).err().unwrap().to_string();
    assert!(e.contains("exactly one of secret_access_key"), "{e}");
    let mut c = cfg();
    c.secret_access_key_file = Some(t.path().join("missing"));
    let e = ObjectBackend::new(&c, t.path()).err().unwrap().to_string();
    assert!(e.contains("exactly one"), "{e}");
    let mut c = cfg();
    c.secret_access_key = None;
    c.secret_access_key_file = Some(t.path().join("missing"));
    let e = ObjectBackend::new(&c, t.path()).err().unwrap().to_string();
    assert!(e.contains("missing"), "{e}");
    let mut c = cfg();
    c.prefix = "a/../b".into();
    let e = ObjectBackend::new(&c, t.path()).err().unwrap().to_string();
    assert!(e.contains("no . or .."), "{e}");
}

#[test]
fn an_unreachable_store_is_an_error_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let b = ObjectBackend::new(&cfg(), t.path()).unwrap();
    let e = b.read("config").unwrap_err().to_string();
    assert!(e.contains("s3://b/p at http://127.0.0.1:1/config"), "{e}");
    // Scratch keys never go to the store.
    b.append("pins/x.pin", b"abc\n").unwrap();
    assert_eq!(b.read("pins/x.pin").unwrap(), b"abc\n");
    assert_eq!(b.list("pins").unwrap(), vec!["pins/x.pin".to_string()]);
}
