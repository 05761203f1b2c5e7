//! The standing hostile-input suite: every endpoint of the three daemons gets malformed
//! and oversized input (garbage JSON, wrong types, overflowing and negative numbers,
//! epochs above the current one, 100 MB bodies, a 1 MiB header, names with `../`, `/`,
//! NUL and newlines), and the PBS pulls oversized records and packs from a fake exporter.
//! Each case gets its exact status (or, for a pull, a failed transaction naming the
//! limit); afterwards every daemon still answers, none grew past a bounded peak memory
//! (VmHWM), and nothing was stored: the PBS archive and the clone hold what they held.
//!
//! One table per kind of input, one loop each. Adding an endpoint means adding rows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use archive::chunker::Features;
use archive::pack::{Entry, PackWriter};
use archive::{ChunkId, GenRecord};
use pullback_tests::cluster::{Cluster, Options, Who};
use pullback_tests::evil::{Craft, Crafted, RawImpostor, RawReply};

/// Who speaks.
#[derive(Clone, Copy, Debug)]
enum Tok {
    None,
    Admin,
    /// The exporter's token at the PBS.
    Notify,
    /// The PBS's token at the exporter.
    Pull,
    /// The PBS's token at the clone.
    Push,
    /// Clone 0's token at the PBS.
    Clone,
}

enum Body {
    Empty,
    Json(String),
    Raw(Vec<u8>),
    /// This many zero bytes, really sent (from a writer thread, while the answer is read).
    Zeros(usize),
    /// This many zero bytes, sent chunked: no `Content-Length` to refuse by.
    Chunked(usize),
}

struct Case {
    what: &'static str,
    who: Who,
    method: &'static str,
    path: String,
    tok: Tok,
    body: Body,
    /// A 1 MiB header with the request.
    huge_header: bool,
    status: u16,
    /// Text the answer must contain (e.g. the limit it names).
    says: &'static str,
}

fn case(what: &'static str, who: Who, method: &'static str, path: &str, tok: Tok) -> Case {
    Case {
        what,
        who,
        method,
        path: path.to_string(),
        tok,
        body: Body::Empty,
        huge_header: false,
        status: 200,
        says: "",
    }
}

impl Case {
    fn json(mut self, j: &str) -> Case {
        self.body = Body::Json(j.to_string());
        self
    }
    fn raw(mut self, b: Vec<u8>) -> Case {
        self.body = Body::Raw(b);
        self
    }
    fn zeros(mut self, n: usize) -> Case {
        self.body = Body::Zeros(n);
        self
    }
    fn chunked(mut self, n: usize) -> Case {
        self.body = Body::Chunked(n);
        self
    }
    fn huge_header(mut self) -> Case {
        self.huge_header = true;
        self
    }
    fn expect(mut self, status: u16, says: &'static str) -> Case {
        self.status = status;
        self.says = says;
        self
    }
}

const MB100: usize = 100 << 20;

/// Sends one request over a fresh connection; the body is written by another thread
/// while this one reads the answer (a server that refuses early stops reading).
/// Returns the status and the whole answer as text.
fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Body,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let chunked = matches!(body, Body::Chunked(_));
    let (len, bytes, zeros) = match body {
        Body::Empty => (0, Vec::new(), 0),
        Body::Json(j) => (j.len(), j.into_bytes(), 0),
        Body::Raw(b) => (b.len(), b, 0),
        Body::Zeros(n) | Body::Chunked(n) => (n, Vec::new(), n),
    };
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{framing}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut w = s.try_clone().expect("clone the socket");
    let writer = thread::spawn(move || {
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&bytes).is_err() {
            return;
        }
        let buf = vec![0u8; 1 << 16];
        let mut left = zeros;
        while left > 0 {
            let n = left.min(buf.len());
            let sent = if chunked {
                w.write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|()| w.write_all(&buf[..n]))
                    .and_then(|()| w.write_all(b"\r\n"))
            } else {
                w.write_all(&buf[..n])
            };
            if sent.is_err() {
                return;
            }
            left -= n;
        }
        if chunked {
            let _ = w.write_all(b"0\r\n\r\n");
        }
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived (the server closed with our body unread).
            Err(_) if !raw.is_empty() => break,
            Err(e) => panic!("{method} {path}: no answer: {e}"),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {text:?}"));
    (status, text)
}

/// A line of `/proc/PID/status` in kB (VmHWM: peak resident memory).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    st.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A zstd frame of `len` zero bytes made of RLE blocks: a few KiB that decode to `len`.
fn zstd_rle_zeros(len: usize) -> Vec<u8> {
    // Magic, frame header: no content size, not single segment, window 2^17.
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];
    let block = 128 << 10;
    let mut left = len;
    while left > 0 {
        let n = left.min(block);
        left -= n;
        let last = u32::from(left == 0);
        let h = last | (1 << 1) | ((n as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// A pack with one blob: `id`, claiming `raw_len` plain bytes, with `payload`.
fn pack_of(id: ChunkId, raw_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut w = PackWriter::new();
    w.add(
        Entry {
            id,
            bases: vec![],
            offset: 0,
            stored_len: 0,
            raw_len,
            depth: 0,
            features: Features([0; 6]),
        },
        payload,
    );
    w.finish().1
}

fn name(w: Who) -> String {
    match w {
        Who::Pbs => "pbs".into(),
        Who::Exporter => "exporter".into(),
        Who::Importer(i) => format!("importer{i}"),
    }
}

fn first_id(body: &[u8]) -> ChunkId {
    ChunkId(
        body.get(..32)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 32]),
    )
}

fn seq_of(path: &str) -> Option<u64> {
    path.strip_prefix("/v1/generations/")?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

type RecordFn = dyn Fn(&Crafted, u64) -> Vec<u8> + Send + Sync;
type BlobsFn = dyn Fn(&Crafted, &[u8]) -> RawReply + Send + Sync;

/// How a fake exporter misbehaves during one pull.
struct BadExporter {
    what: &'static str,
    /// The record it serves for generation N.
    record: Box<RecordFn>,
    /// Its answer to `POST /v1/blobs` (the ids asked for).
    blobs: Box<BlobsFn>,
    /// What the failed transaction must say.
    says: &'static str,
}

fn honest_blobs(cr: &Crafted, body: &[u8]) -> RawReply {
    RawReply {
        status: 200,
        body: cr.blobs(body).unwrap_or_default(),
        zeros: 0,
    }
}

fn generations(c: &Cluster) -> Vec<serde_json::Value> {
    let list = c.archive().json(&["list"]);
    list.as_array()
        .expect("a list")
        .iter()
        .map(|g| g["generation"].clone())
        .collect()
}

#[test]
fn hostile_input_is_refused_and_nothing_breaks() {
    let mut c = Cluster::new(Options {
        proxy: true,
        pbs_proxy: true,
        pull_attempts: 1,
        exporter_attempts: 1,
        ..Options::default()
    });
    std::fs::write(c.src().join("keep.txt"), "generation one\n").unwrap();
    c.start_all();
    c.cycle(1);
    let gens_before = generations(&c);
    let clone_before = c.importer_live(0).expect("clone status")["last_valid"].clone();
    let crafted = Crafted::new("files", 0, &[Craft::File("a", b"crafted")]);

    use Tok::*;
    let (pbs, exp, imp) = (Who::Pbs, Who::Exporter, Who::Importer(0));
    let max = u64::MAX;
    let over = "18446744073709551616";
    let notify = |j: &str| case("notify", pbs, "POST", "/v1/notify", Notify).json(j);
    let imp_notify = |j: &str| case("notify", imp, "POST", "/v1/notify", Push).json(j);
    let ids_65: Vec<u8> = (0..65u8).flat_map(|i| [i; 32]).collect();
    let cases = vec![
        // ---- PBS
        case("status", pbs, "GET", "/v1/status", Admin),
        case("no token", pbs, "GET", "/v1/status", None).expect(401, "unauthorized"),
        case("no token, 100 MB", pbs, "POST", "/v1/notify", None)
            .zeros(MB100)
            .expect(401, ""),
        notify("{not json").expect(400, ""),
        notify(r#"{"source":"files","seq":"1","tx":"t","epoch":0}"#).expect(422, ""),
        notify(r#"{"source":"files","seq":-1,"tx":"t","epoch":0}"#).expect(422, ""),
        notify(r#"{"source":"files","seq":1,"tx":"t","epoch":-1}"#).expect(422, ""),
        notify(&format!(
            r#"{{"source":"files","seq":1,"tx":"t","epoch":{over}}}"#
        ))
        .expect(422, ""),
        notify(r#"{"source":"files","seq":1,"tx":"t","epoch":1.5}"#).expect(422, ""),
        notify(&format!(
            r#"{{"source":"files","seq":1,"tx":"t","epoch":{max}}}"#
        ))
        .expect(409, "epoch"),
        notify(r#"{"source":"files","seq":1,"tx":"t","epoch":1}"#).expect(409, "epoch"),
        notify(r#"{"source":"../files","seq":1,"tx":"t","epoch":0}"#).expect(404, "unknown source"),
        notify(r#"{"source":"files/x","seq":1,"tx":"t","epoch":0}"#).expect(404, "unknown source"),
        notify(r#"{"source":"files\u0000","seq":1,"tx":"t","epoch":0}"#)
            .expect(404, "unknown source"),
        notify(r#"{"source":"files\n","seq":1,"tx":"t","epoch":0}"#).expect(404, "unknown source"),
        notify(r#"{"source":"files","seq":1,"tx":"","epoch":0}"#).expect(400, "tx must be"),
        notify(&format!(
            r#"{{"source":"files","seq":1,"tx":"{}","epoch":0}}"#,
            "t".repeat(129)
        ))
        .expect(400, "tx must be"),
        notify(&format!(
            r#"{{"source":"files","seq":1,"tx":"../x\n\u0000","epoch":{max}}}"#
        ))
        .expect(409, "epoch"),
        case("notify as admin", pbs, "POST", "/v1/notify", Admin)
            .json(r#"{"source":"files","seq":1,"tx":"t","epoch":0}"#)
            .expect(403, "may not notify"),
        notify("").zeros(MB100).expect(413, "limit"),
        notify("")
            .chunked(1 << 20)
            .expect(413, "limit of 65536 bytes"),
        case(
            "transaction ../",
            pbs,
            "GET",
            "/v1/transactions/..%2F..%2Fetc%2Fpasswd",
            Admin,
        )
        .expect(404, "no transaction"),
        case("transaction NUL", pbs, "GET", "/v1/transactions/%00", Admin).expect(404, ""),
        case(
            "transaction newline",
            pbs,
            "GET",
            "/v1/transactions/a%0Ab",
            Admin,
        )
        .expect(404, ""),
        case("dashboard, huge header", pbs, "GET", "/", Admin)
            .huge_header()
            .expect(431, ""),
        case("hello garbage", pbs, "POST", "/v1/ha/hello", Admin)
            .json("{\"node\":")
            .expect(400, ""),
        case("hello overflow", pbs, "POST", "/v1/ha/hello", Admin)
            .json(&format!(
                r#"{{"node":"clone0","epoch":{over},"role":"BACKUP"}}"#
            ))
            .expect(422, ""),
        case("hello ../", pbs, "POST", "/v1/ha/hello", Admin)
            .json(r#"{"node":"../clone0","epoch":0,"role":"BACKUP"}"#)
            .expect(404, ""),
        case(
            "takeover epoch above",
            pbs,
            "POST",
            "/v1/ha/takeover",
            Admin,
        )
        .json(&format!(
            r#"{{"node":"clone0","force":true,"epoch":{max}}}"#
        ))
        .expect(409, "epoch"),
        case("takeover wrong type", pbs, "POST", "/v1/ha/takeover", Admin)
            .json(r#"{"node":["clone0"],"force":"yes"}"#)
            .expect(422, ""),
        case("takeover NUL node", pbs, "POST", "/v1/ha/takeover", Admin)
            .json(r#"{"node":"clone0\u0000","force":true}"#)
            .expect(409, "unknown node"),
        case("switchover ../", pbs, "POST", "/v1/ha/switchover", Admin)
            .json(r#"{"to":"../../etc"}"#)
            .expect(409, "unknown node"),
        case(
            "switchover wrong type",
            pbs,
            "POST",
            "/v1/ha/switchover",
            Admin,
        )
        .json(r#"{"to":5}"#)
        .expect(422, ""),
        case("balance, 100 MB", pbs, "POST", "/v1/ha/balance", Admin)
            .zeros(MB100)
            .expect(413, "limit"),
        case("rejoin newline", pbs, "POST", "/v1/ha/rejoin", Admin)
            .json(r#"{"node":"clone0\nclone1"}"#)
            .expect(409, "no [[importer]] entry"),
        case("nodes, huge header", pbs, "GET", "/v1/ha/nodes", Admin)
            .huge_header()
            .expect(431, ""),
        case("metrics, 100 MB", pbs, "GET", "/metrics", Admin)
            .zeros(MB100)
            .expect(413, "limit"),
        // What the clones pull.
        case("generation", pbs, "GET", "/v1/generations/files/1", Clone),
        case(
            "generation as exporter",
            pbs,
            "GET",
            "/v1/generations/files/1",
            Notify,
        )
        .expect(403, "may not read"),
        case("blobs as exporter", pbs, "POST", "/v1/blobs", Notify)
            .raw(vec![7; 32])
            .expect(403, "may not read"),
        case(
            "generation ../",
            pbs,
            "GET",
            "/v1/generations/..%2Fetc/1",
            Clone,
        )
        .expect(400, "source name"),
        case(
            "generation overflow",
            pbs,
            "GET",
            &format!("/v1/generations/files/{over}"),
            Clone,
        )
        .expect(400, ""),
        case(
            "generation unknown",
            pbs,
            "GET",
            "/v1/generations/files/99",
            Clone,
        )
        .expect(404, ""),
        case("blobs not ids", pbs, "POST", "/v1/blobs", Clone)
            .raw(vec![7; 33])
            .expect(400, "32-byte"),
        case("blobs none", pbs, "POST", "/v1/blobs", Clone)
            .raw(Vec::new())
            .expect(400, "32-byte"),
        case("blobs 65 ids", pbs, "POST", "/v1/blobs", Clone)
            .raw(ids_65.clone())
            .expect(400, "at most 64"),
        case("blobs unknown", pbs, "POST", "/v1/blobs", Clone)
            .raw(vec![7; 32])
            .expect(400, ""),
        case("blobs, 100 MB", pbs, "POST", "/v1/blobs", Clone)
            .zeros(MB100)
            .expect(413, "limit"),
        // ---- exporter
        case("status", exp, "GET", "/v1/status", Admin),
        case(
            "generation ../",
            exp,
            "GET",
            "/v1/generations/..%2F..%2Fetc/1",
            Pull,
        )
        .expect(400, "source name"),
        case(
            "generation /",
            exp,
            "GET",
            "/v1/generations/files%2Fx/1",
            Pull,
        )
        .expect(400, "source name"),
        case(
            "generation NUL",
            exp,
            "GET",
            "/v1/generations/files%00/1",
            Pull,
        )
        .expect(400, "source name"),
        case(
            "generation newline",
            exp,
            "GET",
            "/v1/generations/files%0A/1",
            Pull,
        )
        .expect(400, "source name"),
        case(
            "generation overflow",
            exp,
            "GET",
            &format!("/v1/generations/files/{over}"),
            Pull,
        )
        .expect(400, ""),
        case(
            "generation negative",
            exp,
            "GET",
            "/v1/generations/files/-1",
            Pull,
        )
        .expect(400, ""),
        case(
            "generation unknown",
            exp,
            "GET",
            &format!("/v1/generations/files/{max}"),
            Pull,
        )
        .expect(404, ""),
        case("blobs not ids", exp, "POST", "/v1/blobs", Pull)
            .raw(vec![7; 33])
            .expect(400, "32-byte"),
        case("blobs 65 ids", exp, "POST", "/v1/blobs", Pull)
            .raw(ids_65)
            .expect(400, "at most 64"),
        case("blobs unknown", exp, "POST", "/v1/blobs", Pull)
            .raw(vec![7; 32])
            .expect(400, ""),
        case("blobs, 100 MB", exp, "POST", "/v1/blobs", Pull)
            .zeros(MB100)
            .expect(413, "limit"),
        case("run, 100 MB", exp, "POST", "/v1/run", Admin)
            .zeros(MB100)
            .expect(413, "limit"),
        case("runs ../", exp, "GET", "/v1/runs/..%2F..%2Fx", Admin).expect(404, ""),
        case(
            "ha garbage",
            exp,
            "POST",
            "/rest/ha/status?change=%00",
            Admin,
        )
        .expect(400, ""),
        case("ha MAIN", exp, "POST", "/rest/ha/status?change=MAIN", Admin).expect(409, ""),
        case("ha, huge header", exp, "GET", "/rest/ha/status", Admin)
            .huge_header()
            .expect(431, ""),
        // ---- importer
        case("status", imp, "GET", "/v1/status", Admin),
        imp_notify("{not json").expect(400, ""),
        imp_notify(r#"{"source":"files","seq":"1","tx":"t","epoch":0}"#).expect(422, ""),
        imp_notify(&format!(
            r#"{{"source":"files","seq":{over},"tx":"t","epoch":0}}"#
        ))
        .expect(422, ""),
        imp_notify(r#"{"source":"files","seq":-1,"tx":"t","epoch":0}"#).expect(422, ""),
        imp_notify(r#"{"source":"../../etc","seq":5,"tx":"t","epoch":0}"#)
            .expect(400, "source name"),
        imp_notify(r#"{"source":"files\u0000","seq":5,"tx":"t","epoch":0}"#)
            .expect(400, "source name"),
        imp_notify(r#"{"source":"files","seq":0,"tx":"t","epoch":0}"#)
            .expect(409, "never moves back"),
        imp_notify(&format!(
            r#"{{"source":"files","seq":5,"tx":"t","epoch":{max}}}"#
        ))
        .expect(409, "epoch"),
        // A generation its PBS does not have: the pull fails, the answer says so.
        imp_notify(r#"{"source":"files","seq":99,"tx":"t","epoch":0}"#).expect(200, "404"),
        case("notify as admin", imp, "POST", "/v1/notify", Admin)
            .json(r#"{"source":"files","seq":5,"tx":"t","epoch":0}"#)
            .expect(403, "only its PBS"),
        imp_notify("")
            .chunked(1 << 20)
            .expect(413, "limit of 65536 bytes"),
        imp_notify("").zeros(MB100).expect(413, "limit"),
        case(
            "old offer route",
            imp,
            "POST",
            "/v1/receive/files/5/offer",
            Push,
        )
        .raw(crafted.record_bytes(5))
        .expect(404, ""),
        case("takeover garbage", imp, "POST", "/v1/takeover", Admin)
            .json("{\"password\":")
            .expect(400, ""),
        case("takeover wrong type", imp, "POST", "/v1/takeover", Admin)
            .json(r#"{"password":5}"#)
            .expect(422, ""),
        case("takeover, 100 MB", imp, "POST", "/v1/takeover", Admin)
            .zeros(MB100)
            .expect(413, "limit"),
        case("promote epoch above", imp, "POST", "/v1/ha/promote", Push)
            .json(&format!(r#"{{"epoch":{max}}}"#))
            .expect(409, ""),
        case("promote negative", imp, "POST", "/v1/ha/promote", Push)
            .json(r#"{"epoch":-1}"#)
            .expect(422, ""),
        case("promote as admin", imp, "POST", "/v1/ha/promote", Admin)
            .json(r#"{"epoch":0}"#)
            .expect(403, ""),
        case(
            "ha, 100 MB",
            imp,
            "POST",
            "/rest/ha/status?change=MAIN",
            Admin,
        )
        .zeros(MB100)
        .expect(413, "limit"),
        case("page, huge header", imp, "GET", "/takeover", None)
            .huge_header()
            .expect(431, ""),
        case("page, 100 MB", imp, "POST", "/takeover", None)
            .zeros(MB100)
            .expect(413, "limit"),
    ];

    let mut failed = Vec::new();
    for k in cases {
        let token = match k.tok {
            None => Option::None,
            Admin => Some(c.tokens.admin.clone()),
            Notify => Some(c.tokens.notify.clone()),
            Pull => Some(c.tokens.pull.clone()),
            Push => Some(c.tokens.push[0].clone()),
            Clone => Some(c.tokens.coord[0].clone()),
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(t) = token {
            headers.push(("Authorization".into(), format!("token {t}")));
        }
        match &k.body {
            Body::Json(_) => headers.push(("Content-Type".into(), "application/json".into())),
            Body::Raw(_) | Body::Zeros(_) | Body::Chunked(_) => {
                headers.push(("Content-Type".into(), "application/octet-stream".into()))
            }
            Body::Empty => {}
        }
        if k.huge_header {
            headers.push(("X-Huge".into(), "h".repeat(1 << 20)));
        }
        let port = c.port(k.who);
        let (status, text) = send(port, k.method, &k.path, &headers, k.body);
        let line = format!(
            "{} {} {} ({}): {status}",
            name(k.who),
            k.method,
            k.path,
            k.what
        );
        if status != k.status || !text.contains(k.says) {
            let tail: String = text
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            failed.push(format!(
                "{line}, expected {} with {:?}: ...{tail}",
                k.status, k.says
            ));
        }
        // Every daemon still up after every case.
        for w in [pbs, exp, imp] {
            let auth = format!("token {}", c.tokens.admin);
            let up = pullback_tests::cluster::http(
                c.port(w),
                "GET",
                "/v1/status",
                &[("Authorization", &auth)],
                b"",
            )
            .map(|r| r.status);
            assert_eq!(
                up.ok(),
                Some(200),
                "{} is down after {line}\nearlier: {failed:#?}",
                name(w)
            );
        }
    }

    // ---- the PBS pulls from a fake exporter that serves oversized records and packs, and
    // a clone pulls from a fake PBS that serves the same (one engine, the same bounds).
    let huge_raw = 512u32 << 20;
    // Each record is taken "now", newer than anything the PBS holds (else it is refused as
    // a replay before any size matters).
    fn fresh(cr: &Crafted, n: u64, f: impl FnOnce(&mut GenRecord)) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        cr.record_bytes_with(n, |r| {
            r.taken_at_ns = now;
            f(r)
        })
    }
    let pulls: Vec<BadExporter> = vec![
        BadExporter {
            what: "a 2 MiB record",
            record: Box::new(|cr, n| fresh(cr, n, |r| r.label = Some("x".repeat(2 << 20)))),
            blobs: Box::new(honest_blobs),
            says: "limit",
        },
        BadExporter {
            what: "a pack whose blob claims 512 MiB",
            record: Box::new(|cr, n| fresh(cr, n, |_| {})),
            blobs: Box::new(move |_, body| RawReply {
                status: 200,
                body: pack_of(first_id(body), huge_raw, &zstd_rle_zeros(huge_raw as usize)),
                zeros: 0,
            }),
            says: "limit",
        },
        BadExporter {
            what: "a pack of 300 MiB",
            record: Box::new(|cr, n| fresh(cr, n, |_| {})),
            blobs: Box::new(|_, _| RawReply {
                status: 200,
                body: archive::pack::MAGIC.to_vec(),
                zeros: 300 << 20,
            }),
            says: "limit",
        },
        BadExporter {
            what: "a pack footer claiming 2^32-1 entries",
            record: Box::new(|cr, n| fresh(cr, n, |_| {})),
            blobs: Box::new(|cr, body| {
                let mut p = cr.blobs(body).unwrap_or_default();
                let at = p.len().saturating_sub(24);
                if let Some(n) = p.get_mut(at..at + 4) {
                    n.copy_from_slice(&u32::MAX.to_le_bytes());
                }
                RawReply {
                    status: 200,
                    body: p,
                    zeros: 0,
                }
            }),
            says: "footer claims more",
        },
        // Last: before the fix, this one aborted the PBS (allocating by the claim).
        BadExporter {
            what: "a record claiming a 1 TiB file list",
            record: Box::new(|cr, n| fresh(cr, n, |r| r.manifest_len = 1 << 40)),
            blobs: Box::new(honest_blobs),
            says: "limit",
        },
    ];
    for p in pulls {
        // Content of its own: nothing an earlier case stored can stand in for its blobs.
        let content = format!("crafted for {}", p.what);
        let crafted = Crafted::new("files", 0, &[Craft::File("a", content.as_bytes())]);
        let (cr, pull) = (Arc::new(Mutex::new(crafted)), Arc::new(p));
        let pl = pull.clone();
        let impostor =
            RawImpostor::start(Arc::new(move |method: &str, path: &str, body: &[u8]| {
                let cr = cr.lock().expect("crafted");
                match (method, seq_of(path), path) {
                    ("GET", Some(n), _) => RawReply {
                        status: 200,
                        body: (pl.record)(&cr, n),
                        zeros: 0,
                    },
                    ("POST", _, "/v1/blobs") => (pl.blobs)(&cr, body),
                    _ => RawReply {
                        status: 404,
                        body: b"{\"error\":\"not here\"}".to_vec(),
                        zeros: 0,
                    },
                }
            }));
        c.proxy
            .as_ref()
            .expect("proxy")
            .target
            .store(impostor.port, std::sync::atomic::Ordering::SeqCst);
        let r = c.exporter_run();
        let said = format!("{}{}", r.stdout, r.stderr);
        let alive = c.admin(pbs, "GET", "/v1/status").status;
        assert_eq!(alive, 200, "the PBS is down after {}: {said}", pull.what);
        if r.status.success() || !said.contains(pull.says) {
            failed.push(format!(
                "pull of {}: expected a failure naming {:?}: {said}",
                pull.what, pull.says
            ));
        }
        assert!(
            impostor.served.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "{}: never pulled",
            pull.what
        );

        let to_pbs = c.pbs_proxy.as_ref().expect("PBS proxy");
        to_pbs
            .target
            .store(impostor.port, std::sync::atomic::Ordering::SeqCst);
        let seq = 100 + impostor.served.load(std::sync::atomic::Ordering::SeqCst);
        let auth = format!("token {}", c.tokens.push[0]);
        let r = pullback_tests::cluster::http(
            c.port(imp),
            "POST",
            "/v1/notify",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            format!(r#"{{"source":"files","seq":{seq},"tx":"t","epoch":0}}"#).as_bytes(),
        )
        .expect("the clone answers");
        to_pbs
            .target
            .store(c.port(pbs), std::sync::atomic::Ordering::SeqCst);
        let said = r.text();
        let refused = r.status == 200 && r.json()["ok"] == false && said.contains(pull.says);
        if !refused {
            failed.push(format!(
                "the clone's pull of {}: expected a failure naming {:?}: {} {said}",
                pull.what, pull.says, r.status
            ));
        }
    }

    // Bounded memory: the peaks stay far below what the oversized input claimed.
    for (w, limit_mb) in [(pbs, 200), (exp, 200), (imp, 200)] {
        let pid = c.pid(w).expect("running");
        let hwm = proc_kb(pid, "VmHWM");
        eprintln!("{} VmHWM {} MB", name(w), hwm / 1024);
        if hwm > limit_mb << 10 {
            failed.push(format!(
                "{} peaked at {} MB (VmHWM), over {limit_mb} MB",
                name(w),
                hwm / 1024
            ));
        }
    }
    // Nothing stored.
    assert_eq!(
        generations(&c),
        gens_before,
        "the PBS archive changed\n{failed:#?}"
    );
    let clone_now = c.importer_live(0).expect("clone status");
    assert!(
        clone_now["importing"].is_null(),
        "the clone holds a transfer: {clone_now}"
    );
    assert_eq!(
        clone_now["last_valid"], clone_before,
        "the clone changed\n{failed:#?}"
    );
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
