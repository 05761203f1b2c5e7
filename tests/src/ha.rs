//! Helpers shared by the takeover, switchover, spare and browser tests.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::bin;
use crate::cluster::{http, Cluster, HttpResponse, Who};

/// The takeover password the tests configure.
pub const PASSWORD: &str = "correct horse battery staple";

/// `importer hash-password` of `pw` (an argon2id PHC string).
pub fn password_hash(pw: &str) -> String {
    let mut child = Command::new(bin("importer"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("importer hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{pw}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(out.status.success(), "hash-password failed");
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// One request to `127.0.0.1:port` with a JSON content type and, when given, a token.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let auth = token.map(|t| format!("token {t}"));
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    http(port, method, path, &h, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One node as the PBS lists it (`GET /v1/ha/nodes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    pub role: String,
    pub status: String,
    /// `u64::MAX` when the PBS shows none.
    pub epoch: u64,
    pub generation: Option<String>,
}

/// The PBS's view of node `name`; panics when it lists no such node.
pub fn node_row(c: &Cluster, name: &str) -> NodeRow {
    let r = c.admin(Who::Pbs, "GET", "/v1/ha/nodes");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let n = v
        .as_array()
        .expect("a list")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} at the PBS: {v}"))
        .clone();
    NodeRow {
        role: n["role"].as_str().unwrap_or("").to_string(),
        status: n["status"].as_str().unwrap_or("").to_string(),
        epoch: n["epoch"].as_u64().unwrap_or(u64::MAX),
        generation: n["generation"].as_str().map(str::to_string),
    }
}

/// A fresh form token from the takeover page of the importer at `port` (its hidden
/// `form_token` field).
pub fn form_token(port: u16) -> String {
    let html = http(port, "GET", "/takeover", &[], b"")
        .expect("GET /takeover")
        .text();
    let at = html
        .find("name=\"form_token\" value=\"")
        .unwrap_or_else(|| panic!("no form token on the page: {html}"));
    let rest = &html[at + "name=\"form_token\" value=\"".len()..];
    rest[..rest.find('"').expect("end of the form token")].to_string()
}

/// `POST /takeover` with `form` (urlencoded) as the page sends it: with a fresh form token.
pub fn page_post(port: u16, form: &str) -> HttpResponse {
    let body = format!("{form}&form_token={}", form_token(port));
    http(
        port,
        "POST",
        "/takeover",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .expect("POST /takeover")
}

/// `POST /v1/takeover` on importer `i` with the admin token and the password.
pub fn takeover_api(c: &Cluster, i: usize, password: &str, force: bool) -> HttpResponse {
    let body = serde_json::json!({ "password": password, "force": force }).to_string();
    request(
        c.port(Who::Importer(i)),
        "POST",
        "/v1/takeover",
        Some(&c.tokens.admin),
        body.as_bytes(),
    )
}
