use super::*;

fn seg(budget: usize) -> Segments {
    Segments {
        budget,
        used: 0,
        list: VecDeque::new(),
    }
}

#[test]
fn segments_serve_only_what_they_cover() {
    let mut s = seg(1 << 20);
    s.put("packs/a", 100, Bytes::from(vec![7u8; 1000]));
    assert_eq!(s.get("packs/a", 100, 1000), Some(vec![7u8; 1000]));
    assert_eq!(s.get("packs/a", 600, 10), Some(vec![7u8; 10]));
    assert!(
        s.get("packs/a", 99, 10).is_none(),
        "starts before the segment"
    );
    assert!(
        s.get("packs/a", 1095, 10).is_none(),
        "ends after the segment"
    );
    assert!(s.get("packs/b", 100, 10).is_none(), "another object");
    s.forget("packs/a");
    assert!(s.get("packs/a", 100, 10).is_none());
    assert_eq!(s.used, 0);
}

#[test]
fn segments_stay_within_budget_dropping_the_oldest() {
    let mut s = seg(2500);
    s.put("k", 0, Bytes::from(vec![1u8; 1000]));
    s.put("k", 1000, Bytes::from(vec![2u8; 1000]));
    // Touch the first: the second becomes the oldest.
    assert!(s.get("k", 0, 1).is_some());
    s.put("k", 2000, Bytes::from(vec![3u8; 1000]));
    assert!(s.used <= 2500);
    assert!(
        s.get("k", 1000, 1).is_none(),
        "the least recently used went"
    );
    assert_eq!(s.get("k", 0, 1), Some(vec![1]));
    assert_eq!(s.get("k", 2000, 1), Some(vec![3]));
    // Larger than the whole budget: not kept.
    s.put("k", 5000, Bytes::from(vec![4u8; 3000]));
    assert!(s.get("k", 5000, 1).is_none());
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
