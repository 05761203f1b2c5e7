//! The engine against in-process sources: a faithful one (an archive), and ones that
//! lie in the ways a hostile or broken peer can.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use archive::{IngestOptions, Seq};

use super::*;

/// Serves an archive directly, as the routes do; counts the blob rounds.
struct Local {
    ar: Arc<Archive>,
    rounds: AtomicUsize,
    /// Lie: answer every blob request with an empty pack.
    empty_packs: bool,
    /// Lie: answer with another generation's record.
    record_of: Option<GenId>,
}

impl Local {
    fn new(ar: Arc<Archive>) -> Local {
        Local {
            ar,
            rounds: AtomicUsize::new(0),
            empty_packs: false,
            record_of: None,
        }
    }
}

impl GenSource for Local {
    async fn record(&self, gen: &GenId) -> Result<Bytes> {
        let g = self.record_of.as_ref().unwrap_or(gen);
        Ok(Bytes::from(self.ar.record_bytes(g)?))
    }

    async fn blobs(&self, ids: &[ChunkId]) -> Result<Bytes> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let ids: &[ChunkId] = if self.empty_packs { &[] } else { ids };
        Ok(Bytes::from(self.ar.export_blobs(ids)?))
    }
}

fn write_tree(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir.join("sub")).expect("folder");
    let rows: Vec<u8> = (0..60_000u32)
        .flat_map(|i| format!("{i}\t{tag}\t{:x}\n", i.wrapping_mul(2654435761)).into_bytes())
        .collect();
    std::fs::write(dir.join("dump.sql"), rows).expect("dump");
    std::fs::write(dir.join("sub/small"), tag).expect("small");
}

struct Pair {
    _t: tempfile::TempDir,
    src: std::path::PathBuf,
    a: Arc<Archive>,
    b: Arc<Archive>,
}

fn pair() -> Pair {
    let t = tempfile::tempdir().expect("temp folder");
    let src = t.path().join("src");
    let a = Arc::new(Archive::init(&t.path().join("a")).expect("archive a"));
    let b = Arc::new(Archive::init(&t.path().join("b")).expect("archive b"));
    Pair { _t: t, src, a, b }
}

impl Pair {
    fn ingest(&self, tag: &str) -> GenId {
        write_tree(&self.src, tag);
        let s = SourceName::new("db").expect("name");
        self.a
            .ingest(&s, &self.src, &IngestOptions::default())
            .expect("ingest")
            .record
            .id()
    }
}

#[tokio::test]
async fn a_pulled_generation_restores_the_same_tree_and_the_next_carries_only_what_changed() {
    let p = pair();
    let g1 = p.ingest("one");
    let local = Local::new(p.a.clone());
    let inc = receive(&local, &p.b, &g1, |_| Ok(())).await.expect("pull");
    let r1 = p.b.commit_incoming(inc, Some(g1.seq)).expect("commit");
    assert_eq!(r1.id(), g1);
    let first_rounds = local.rounds.load(Ordering::Relaxed);
    assert!(first_rounds >= 1);

    let g2 = p.ingest("two");
    let local = Local::new(p.a.clone());
    let inc = receive(&local, &p.b, &g2, |_| Ok(()))
        .await
        .expect("pull 2");
    let received = inc.bytes_received;
    p.b.commit_incoming(inc, Some(g2.seq)).expect("commit 2");
    let growth = p.a.record(&g2).expect("record").stats.added_bytes;
    // The second pull asks only for what b lacks: about the archive's own growth.
    assert!(
        received <= growth + 64 * 1024,
        "received {received} bytes for a growth of {growth}"
    );

    let out = p._t.path().join("out");
    p.b.restore(&g2, &out).expect("restore");
    assert_eq!(
        std::fs::read(out.join("dump.sql")).expect("restored dump"),
        std::fs::read(p.src.join("dump.sql")).expect("source dump")
    );
    assert_eq!(std::fs::read(out.join("sub/small")).expect("small"), b"two");
}

#[tokio::test]
async fn the_check_sees_the_record_first_and_its_refusal_comes_back_unchanged() {
    #[derive(Debug)]
    struct Mine;
    impl std::fmt::Display for Mine {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("refused by the caller")
        }
    }
    impl std::error::Error for Mine {}

    let p = pair();
    let g1 = p.ingest("one");
    let local = Local::new(p.a.clone());
    let e = receive(&local, &p.b, &g1, |r| {
        assert_eq!(r.seq, Seq(1));
        Err(Mine.into())
    })
    .await
    .err()
    .expect("refused");
    assert!(e.downcast_ref::<Mine>().is_some(), "{e:#}");
    assert_eq!(local.rounds.load(Ordering::Relaxed), 0, "no blob asked for");
    assert!(p.b.generations().expect("list").is_empty());
}

#[tokio::test]
async fn a_source_that_sends_another_generation_or_no_blobs_is_given_up_on() {
    let p = pair();
    let g1 = p.ingest("one");
    let g2 = p.ingest("two");
    let mut liar = Local::new(p.a.clone());
    liar.record_of = Some(g1.clone());
    let e = receive(&liar, &p.b, &g2, |_| Ok(()))
        .await
        .err()
        .expect("wrong record");
    assert!(
        format!("{e:#}").contains("asked for generation db/2"),
        "{e:#}"
    );

    let mut stingy = Local::new(p.a.clone());
    stingy.empty_packs = true;
    let e = receive(&stingy, &p.b, &g2, |_| Ok(()))
        .await
        .err()
        .expect("no blobs");
    assert!(format!("{e:#}").contains("without any of the"), "{e:#}");
    assert_eq!(stingy.rounds.load(Ordering::Relaxed), 1);
    assert!(p.b.generations().expect("list").is_empty());
}

#[test]
fn blob_requests_are_whole_ids_and_few() {
    assert!(parse_ids(&[]).is_err());
    assert!(parse_ids(&[0; 33]).is_err());
    assert_eq!(parse_ids(&[7; 64]).expect("two ids").len(), 2);
    let many = vec![1; 32 * (MAX_BLOBS_PER_REQUEST + 1)];
    assert!(parse_ids(&many)
        .expect_err("too many")
        .contains("at most 64"));
}
