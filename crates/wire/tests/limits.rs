//! Size limits at both ends: a server refuses a request body over its limit with 413 and a
//! JSON error naming it (declared or chunked); a client refuses an answer over its limit.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use wire::server::limit_body;
use wire::{Client, Server, WireError};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn bodies_over_the_limit_are_refused_at_both_ends() -> TestResult {
    let router = Router::new().route(
        "/v1/bytes",
        post(|body: Bytes| async move { body.repeat(4) }),
    );
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), None).await?;
    let base = server.url();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(limit_body(router, 16), async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/bytes");

    // Within the limit: served.
    let r = http.post(&url).body(vec![1u8; 16]).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await?.len(), 64);

    // Declared over the limit: 413, JSON naming the limit.
    let r = http.post(&url).body(vec![1u8; 17]).send().await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = r.json().await?;
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("17 bytes is over the limit of 16 bytes"),
        "{msg}"
    );

    // Chunked (no Content-Length) over the limit: 413 too.
    let answer = raw(
        &base,
        "POST /v1/bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limit of 16 bytes"), "{answer}");

    // The client refuses an answer over its limit, and takes one within it.
    let client = Client::new(&base, None, None, Duration::from_secs(10))?;
    let err = client
        .post_bytes_max("/v1/bytes", vec![1u8; 16], 63)
        .await
        .err();
    assert!(
        matches!(err, Some(WireError::TooLarge { limit: 63, .. })),
        "{err:?}"
    );
    let ok = client
        .post_bytes_max("/v1/bytes", vec![1u8; 16], 64)
        .await?;
    assert_eq!(ok.len(), 64);

    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    Ok(())
}

/// One raw request over a fresh connection; the whole answer as text.
async fn raw(base: &str, request: &str) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
