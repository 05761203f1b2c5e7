//! Hostile peers for the end-to-end tests: generations whose file list no
//! real ingest could produce (a symlink followed by paths under it, ...),
//! and a fake exporter that serves them the way a real exporter serves its
//! outbox, so that the real PBS pulls them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::cluster::{http, Cluster, HttpResponse, Options, Who};
use archive::manifest::{encode_manifest, ChunkRef, GenRecord, GenStats, Node, NodeKind};
use archive::{Archive, ChunkId, Epoch, FileDigest, IngestOptions, Seq, SourceName};

/// One entry of a crafted file list. File contents stay under 64 KiB, so
/// each is one chunk whose id is its SHA-256.
pub enum Craft<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a [u8]),
}

/// A crafted generation: its record, and an archive holding its blobs.
pub struct Crafted {
    archive: Archive,
    record: GenRecord,
    _dir: tempfile::TempDir,
}

fn node(path: &str, kind: NodeKind) -> Node {
    Node {
        path: path.as_bytes().to_vec(),
        kind,
        mode: if kind == NodeKind::File { 0o644 } else { 0o755 },
        mtime_ns: 1_700_000_000_000_000_000,
        size: 0,
        digest: None,
        chunks: Vec::new(),
        target: Vec::new(),
        ino: 0,
        ctime_ns: 0,
    }
}

impl Crafted {
    pub fn new(source: &str, epoch: u64, entries: &[Craft<'_>]) -> Crafted {
        let dir = tempfile::tempdir().expect("temp folder");
        let raw = dir.path().join("raw");
        std::fs::create_dir(&raw).expect("raw folder");
        let mut nodes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            nodes.push(match e {
                Craft::Dir(p) => node(p, NodeKind::Dir),
                Craft::Symlink(p, to) => Node {
                    target: to.to_vec(),
                    ..node(p, NodeKind::Symlink)
                },
                Craft::File(p, data) => {
                    assert!(data.len() < 64 << 10, "crafted files stay one chunk");
                    std::fs::write(raw.join(format!("c{i}")), data).expect("content");
                    Node {
                        size: data.len() as u64,
                        digest: Some(FileDigest::of(data)),
                        ..node(p, NodeKind::File)
                    }
                }
            });
        }
        let list = encode_manifest(&nodes).expect("encode the list");
        assert!(list.len() < 64 << 10);
        std::fs::write(raw.join("list"), &list).expect("list");
        let ar = Archive::init(&dir.path().join("archive")).expect("archive");
        ar.ingest(
            &SourceName::new("craft").expect("name"),
            &raw,
            &IngestOptions::default(),
        )
        .expect("ingest the raw pieces");
        // Taken now: newer than what the victim holds, as a real new export would be.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let record = GenRecord {
            source: SourceName::new(source).expect("source name"),
            seq: Seq(1),
            epoch: Epoch(epoch),
            taken_at_ns: now,
            committed_at_ns: now,
            label: None,
            stats: GenStats::default(),
            manifest_len: list.len() as u64,
            manifest_digest: FileDigest::of(&list),
            manifest_chunks: vec![ChunkRef(ChunkId::of(&list), list.len() as u32)],
        };
        Crafted {
            archive: ar,
            record,
            _dir: dir,
        }
    }

    /// Commit the crafted generation as `source/seq` of its own archive, by
    /// writing its record file as the archive's format says (what an archive
    /// written before a check existed could hold), and return that archive's folder.
    pub fn commit_in_place(&self, seq: u64) -> std::path::PathBuf {
        let at = self._dir.path().join("archive");
        let key = archive::manifest::gen_key(&self.record.source, Seq(seq));
        let p = at.join(key);
        std::fs::create_dir_all(p.parent().expect("gens folder")).expect("gens folder");
        std::fs::write(&p, self.record_bytes(seq)).expect("record file");
        at
    }

    /// The record bytes, as generation `seq` (a real exporter's outbox number).
    pub fn record_bytes(&self, seq: u64) -> Vec<u8> {
        let mut r = self.record.clone();
        r.seq = Seq(seq);
        r.encode().expect("encode the record")
    }

    /// The record bytes as generation `seq`, changed by `f` first (to claim what no real
    /// exporter would: a huge file list, a huge label, ...).
    pub fn record_bytes_with(&self, seq: u64, f: impl FnOnce(&mut GenRecord)) -> Vec<u8> {
        let mut r = self.record.clone();
        r.seq = Seq(seq);
        f(&mut r);
        r.encode().expect("encode the record")
    }

    /// A pack of the blobs asked for (`N × 32` raw ids), as an exporter answers.
    pub fn blobs(&self, body: &[u8]) -> Option<Vec<u8>> {
        let ids: Vec<ChunkId> = body
            .chunks(32)
            .map(|c| c.try_into().ok().map(ChunkId))
            .collect::<Option<_>>()?;
        self.archive.export_blobs(&ids).ok()
    }
}

fn read_request(s: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    s.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if s.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" || h == "\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((method, path, body))
}

/// A fake exporter (or a fake PBS) on loopback: answers a pull with a crafted
/// generation (`GET /v1/generations/S/N`, `POST /v1/blobs`), 404 otherwise.
pub struct Impostor;

impl Impostor {
    pub fn start(crafted: Arc<Mutex<Crafted>>) -> RawImpostor {
        let reply = |status, body: &[u8]| RawReply {
            status,
            body: body.to_vec(),
            zeros: 0,
        };
        RawImpostor::start(Arc::new(move |method: &str, path: &str, body: &[u8]| {
            let cr = crafted.lock().expect("crafted");
            let seq = path
                .strip_prefix("/v1/generations/")
                .and_then(|rest| rest.rsplit('/').next())
                .and_then(|n| n.parse::<u64>().ok());
            match (method, seq, path) {
                ("GET", Some(n), _) => reply(200, &cr.record_bytes(n)),
                ("POST", _, "/v1/blobs") => match cr.blobs(body) {
                    Some(pack) => reply(200, &pack),
                    None => reply(400, b"{\"error\":\"unknown blob\"}"),
                },
                _ => reply(404, b"{\"error\":\"not here\"}"),
            }
        }))
    }
}

/// What a [`RawImpostor`] answers: a status, a body, then `zeros` more zero bytes (counted
/// in the `Content-Length`), so that a huge answer costs no memory here.
pub struct RawReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub zeros: u64,
}

/// A fake exporter that answers every request with whatever its handler returns for
/// (method, path, body): raw bytes, no checks, to feed the real PBS what no real
/// exporter sends.
pub struct RawImpostor {
    pub port: u16,
    /// Requests answered.
    pub served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

type Handler = dyn Fn(&str, &str, &[u8]) -> RawReply + Send + Sync;

impl RawImpostor {
    pub fn start(handler: Arc<Handler>) -> RawImpostor {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the impostor");
        let port = l.local_addr().expect("impostor address").port();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served2, stop2) = (served.clone(), stop.clone());
        thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = c else { continue };
                let mut r = BufReader::new(c.try_clone().expect("clone the socket"));
                let Some((method, path, body)) = read_request(&mut r) else {
                    continue;
                };
                served2.fetch_add(1, Ordering::SeqCst);
                let reply = handler(&method, &path, &body);
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.body.len() as u64 + reply.zeros
                );
                // In its own thread: a receiver that stops reading must not hold up the others.
                thread::spawn(move || {
                    let _ = c.write_all(head.as_bytes());
                    let _ = c.write_all(&reply.body);
                    let zeros = vec![0u8; 1 << 20];
                    let mut left = reply.zeros;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        if c.write_all(&zeros[..n]).is_err() {
                            break;
                        }
                        left -= n as u64;
                    }
                });
            }
        });
        RawImpostor { port, served, stop }
    }
}

impl Drop for RawImpostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A path's bytes without its leading `/` (to put it under a `r -> /` link).
pub fn below_root(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes()[1..].to_vec()
}

/// A trio whose PBS pulls through a proxy and whose clone reaches its PBS through another
/// (so that a test can point either at an [`Impostor`]), trying each pull once.
pub fn proxied_cluster() -> Cluster {
    Cluster::new(Options {
        proxy: true,
        pbs_proxy: true,
        pull_attempts: 1,
        ..Options::default()
    })
}

/// Point the PBS's pulls at a fake exporter serving `entries`, run the real exporter
/// once and return what it said (the run must fail: the PBS refused the generation).
pub fn pull_crafted(c: &Cluster, what: &str, entries: &[Craft<'_>]) -> String {
    let crafted = Arc::new(Mutex::new(Crafted::new("files", 0, entries)));
    let impostor = Impostor::start(crafted);
    let proxy = c.proxy.as_ref().expect("the cluster has a proxy");
    proxy.target.store(impostor.port, Ordering::SeqCst);
    let r = c.exporter_run();
    proxy.target.store(c.port(Who::Exporter), Ordering::SeqCst);
    assert!(
        impostor.served.load(Ordering::SeqCst) > 0,
        "{what}: never pulled"
    );
    assert!(
        !r.status.success(),
        "{what}: the PBS committed it: {}",
        r.stdout
    );
    format!("{}{}", r.stdout, r.stderr)
}

/// Tell clone 0 (with its PBS's token) that generation `seq` is ready, while its PBS
/// address leads to a fake PBS serving `entries`: the clone pulls the crafted generation.
/// Returns the clone's answer.
pub fn notify_crafted(c: &Cluster, what: &str, entries: &[Craft<'_>], seq: u64) -> HttpResponse {
    let crafted = Arc::new(Mutex::new(Crafted::new("files", 0, entries)));
    let impostor = Impostor::start(crafted);
    let proxy = c.pbs_proxy.as_ref().expect("the cluster has a PBS proxy");
    proxy.target.store(impostor.port, Ordering::SeqCst);
    let auth = format!("token {}", c.tokens.push[0]);
    let r = http(
        c.port(Who::Importer(0)),
        "POST",
        "/v1/notify",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"source":"files","seq":{seq},"tx":"crafted-{seq}","epoch":0}}"#).as_bytes(),
    )
    .expect("the clone answers");
    proxy.target.store(c.port(Who::Pbs), Ordering::SeqCst);
    assert!(
        impostor.served.load(Ordering::SeqCst) > 0,
        "{what}: the clone never pulled"
    );
    r
}
