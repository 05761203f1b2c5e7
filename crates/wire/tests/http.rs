//! Real servers on 127.0.0.1:0, real reqwest clients, plain HTTP and TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::server::{ServerError, TlsFiles};
use wire::{
    require_token, retry, ApiError, Backoff, Client, Metrics, Peer, Server, TokenSet, WireError,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const PBS_TOKEN: &str = "pbs-token-0123456789";
const CLI_TOKEN: &str = "cli-token-0123456789";
const T: Duration = Duration::from_secs(10);

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Echo {
    peer: String,
    n: u64,
}

#[derive(Clone, Default)]
struct Counters {
    flaky: Arc<AtomicU32>,
    down: Arc<AtomicU32>,
    bad: Arc<AtomicU32>,
}

fn app(tokens: TokenSet, counters: Counters, metrics: Metrics) -> Router {
    let authed = Router::new()
        .route("/v1/whoami", get(|peer: Peer| async move { peer.0 }))
        .route(
            "/v1/echo",
            post(|peer: Peer, Json(mut e): Json<Echo>| async move {
                e.peer = peer.0;
                e.n += 1;
                Json(e)
            }),
        )
        .route(
            "/v1/bytes",
            post(|body: Bytes| async move {
                let mut v = body.to_vec();
                v.reverse();
                v
            })
            .get(|| async { vec![0u8, 1, 2, 255] }),
        )
        .route(
            "/v1/flaky",
            get(|State(c): State<Counters>| async move {
                // 503 twice, then 200.
                if c.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(ApiError::unavailable("warming up"))
                } else {
                    Ok("ok")
                }
            }),
        )
        .route(
            "/v1/down",
            get(|State(c): State<Counters>| async move {
                c.down.fetch_add(1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, "still down")
            }),
        )
        .route(
            "/v1/stale",
            get(|State(c): State<Counters>| async move {
                c.bad.fetch_add(1, Ordering::SeqCst);
                ApiError::conflict("stale epoch 3, current is 4")
            }),
        )
        .route_layer(require_token(tokens))
        .with_state(counters);
    Router::new()
        .route(
            "/v1/status",
            get(|| async { Json(serde_json::json!({"role": "BACKUP"})) }),
        )
        .merge(metrics.router())
        .merge(authed)
}

fn tokens() -> Result<TokenSet, wire::auth::TokenError> {
    TokenSet::new([("pbs", PBS_TOKEN), ("cli", CLI_TOKEN)])
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    counters: Counters,
}

impl Running {
    async fn stop(mut self) -> TestResult {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task).await???;
        Ok(())
    }
}

async fn start(
    tls: Option<&TlsFiles>,
    metrics: Metrics,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let counters = Counters::default();
    let server = Server::bind(local(), tls).await?;
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.is_tls(), tls.is_some());
    let (tx, rx) = oneshot::channel::<()>();
    let router = app(tokens()?, counters.clone(), metrics);
    let task = tokio::spawn(server.serve(router, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
        counters,
    })
}

#[tokio::test]
async fn tokens_are_required_and_peer_reaches_handler() -> TestResult {
    let srv = start(None, Metrics::new()).await?;
    let url = format!("http://{}/v1/whoami", srv.addr);
    let http = reqwest::Client::new();

    // Missing: 401, WWW-Authenticate: token, short body.
    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("token")
    );
    assert_eq!(r.text().await?, "unauthorized\n");

    // Wrong token, wrong scheme, empty: 401 with the same body.
    for h in [
        "token wrong-token-0123456789",
        "Basic cGJzOnBicw==",
        "token",
        &format!("token {PBS_TOKEN}x"),
    ] {
        let r = http.get(&url).header("authorization", h).send().await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{h}");
        assert_eq!(r.text().await?, "unauthorized\n");
    }

    // Right tokens, both schemes: 200, the peer name reaches the handler.
    let r = http
        .get(&url)
        .header("authorization", format!("token {PBS_TOKEN}"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await?, "pbs");
    let r = http
        .get(&url)
        .header("authorization", format!("Bearer {CLI_TOKEN}"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await?, "cli");

    // Public route needs nothing; unknown routes are 404, not 401.
    let r = http
        .get(format!("http://{}/v1/status", srv.addr))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("http://{}/v1/nope", srv.addr))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    srv.stop().await
}

#[tokio::test]
async fn client_over_plain_http() -> TestResult {
    let metrics = Metrics::new();
    metrics
        .counter_with(
            "pullback_bytes_received_total",
            "Bytes received.",
            &[("peer", "pbs")],
        )
        .add(42);
    let srv = start(None, metrics).await?;
    let base = format!("http://{}", srv.addr);
    let client = Client::new(&base, Some(PBS_TOKEN), None, T)?;

    let who: String = String::from_utf8(client.get_bytes("/v1/whoami").await?.to_vec())?;
    assert_eq!(who, "pbs");
    let echo: Echo = client
        .post_json(
            "v1/echo",
            &Echo {
                peer: "?".into(),
                n: 41,
            },
        )
        .await?;
    assert_eq!(
        echo,
        Echo {
            peer: "pbs".into(),
            n: 42
        }
    );
    let status: serde_json::Value = client.get_json("/v1/status").await?;
    assert_eq!(status["role"], "BACKUP");
    assert_eq!(
        client
            .post_bytes("/v1/bytes", vec![1u8, 2, 3])
            .await?
            .as_ref(),
        [3, 2, 1]
    );
    assert_eq!(
        client.get_bytes("/v1/bytes").await?.as_ref(),
        [0, 1, 2, 255]
    );

    let text = String::from_utf8(client.get_bytes("/metrics").await?.to_vec())?;
    assert!(
        text.contains("# TYPE pullback_bytes_received_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("pullback_bytes_received_total{peer=\"pbs\"} 42\n"),
        "{text}"
    );

    // A 4xx carries method, URL, status and the server's message.
    let err = client.get_json::<String>("/v1/stale").await.err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert_eq!(
        err.as_ref().and_then(WireError::status),
        Some(StatusCode::CONFLICT)
    );
    assert!(msg.contains(&format!("GET {base}/v1/stale")), "{msg}");
    assert!(
        msg.contains("409") && msg.contains("stale epoch 3, current is 4"),
        "{msg}"
    );

    // A wrong token: 401 and the server's short message.
    let bad = Client::new(&base, Some("not-the-token-0123"), None, T)?;
    let msg = bad
        .get_bytes("/v1/whoami")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("401") && msg.contains("unauthorized"), "{msg}");

    // A body of the wrong shape names the URL.
    let err = client.get_json::<Echo>("/v1/status").await.err();
    assert!(matches!(err, Some(WireError::Decode { .. })), "{err:?}");
    srv.stop().await
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn self_signed(
    dir: &std::path::Path,
) -> Result<TlsFiles, Box<dyn std::error::Error + Send + Sync>> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem())?;
    std::fs::write(&files.key, ck.signing_key.serialize_pem())?;
    Ok(files)
}

#[tokio::test]
async fn client_over_tls_with_self_signed_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    let files = self_signed(dir.path())?;
    let srv = start(Some(&files), Metrics::new()).await?;
    let base = format!("https://{}", srv.addr);

    let client = Client::new(&base, Some(PBS_TOKEN), Some(&files.cert), T)?;
    let echo: Echo = client
        .post_json(
            "/v1/echo",
            &Echo {
                peer: String::new(),
                n: 1,
            },
        )
        .await?;
    assert_eq!(
        echo,
        Echo {
            peer: "pbs".into(),
            n: 2
        }
    );
    let by_name = Client::new(
        &format!("https://localhost:{}", srv.addr.port()),
        Some(CLI_TOKEN),
        Some(&files.cert),
        T,
    )?;
    assert_eq!(by_name.get_bytes("/v1/whoami").await?.as_ref(), b"cli");

    // Without the CA the certificate is not trusted: a connection error, never data.
    let untrusting = Client::new(&base, Some(PBS_TOKEN), None, T)?;
    let err = untrusting.get_bytes("/v1/whoami").await.err();
    assert!(matches!(err, Some(WireError::Connect { .. })), "{err:?}");

    // Plain HTTP to the TLS port fails too.
    let plain = Client::new(&format!("http://{}", srv.addr), Some(PBS_TOKEN), None, T)?;
    assert!(plain.get_bytes("/v1/whoami").await.is_err());
    srv.stop().await
}

#[tokio::test]
async fn bad_tls_files_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = self_signed(dir.path())?;
    let missing = TlsFiles {
        cert: dir.path().join("nope.pem"),
        key: good.key.clone(),
    };
    let msg = Server::bind(local(), Some(&missing))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("nope.pem") && msg.contains("certificate"),
        "{msg}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n")?;
    let no_key = TlsFiles {
        cert: good.cert.clone(),
        key: garbage.clone(),
    };
    let msg = Server::bind(local(), Some(&no_key))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("garbage.pem") && msg.contains("key"), "{msg}");

    let swapped = TlsFiles {
        cert: good.key.clone(),
        key: good.cert.clone(),
    };
    let msg = Server::bind(local(), Some(&swapped))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains(&good.key.display().to_string()), "{msg}");

    // A busy port is named.
    let taken = Server::bind(local(), None).await?;
    let msg = Server::bind(taken.local_addr(), None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains(&taken.local_addr().to_string()), "{msg}");
    Ok(())
}

fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(80),
        attempts: 5,
    }
}

#[tokio::test]
async fn retry_retries_5xx_and_stops_on_4xx() -> TestResult {
    let srv = start(None, Metrics::new()).await?;
    let client = Client::new(&format!("http://{}", srv.addr), Some(PBS_TOKEN), None, T)?;

    // 503, 503, 200: three calls.
    let body = retry(&quick(), || client.get_bytes("/v1/flaky")).await?;
    assert_eq!(body.as_ref(), b"ok");
    assert_eq!(srv.counters.flaky.load(Ordering::SeqCst), 3);

    // 409 is final: one call.
    let err = retry(&quick(), || client.get_bytes("/v1/stale"))
        .await
        .err();
    assert_eq!(err.and_then(|e| e.status()), Some(StatusCode::CONFLICT));
    assert_eq!(srv.counters.bad.load(Ordering::SeqCst), 1);

    // Always 503: every attempt used, the last error returned.
    let err = retry(&quick(), || client.get_bytes("/v1/down")).await.err();
    assert_eq!(
        err.and_then(|e| e.status()),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(srv.counters.down.load(Ordering::SeqCst), 5);
    srv.stop().await
}

#[tokio::test]
async fn retry_retries_connection_errors_with_backoff() -> TestResult {
    // A port nobody listens on.
    let addr = Server::bind(local(), None).await?.local_addr();
    let client = Client::new(&format!("http://{addr}"), None, None, T)?;
    let calls = AtomicU32::new(0);
    let backoff = Backoff {
        initial: Duration::from_millis(40),
        max: Duration::from_millis(1000),
        attempts: 4,
    };
    let started = Instant::now();
    let err = retry(&backoff, || {
        calls.fetch_add(1, Ordering::SeqCst);
        client.get_bytes("/v1/status")
    })
    .await
    .err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Some(WireError::Connect { .. })), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Waits 40, 80, 160 ms, each shortened by at most a quarter: at least 210 ms.
    assert!(elapsed >= Duration::from_millis(210), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn serve_stops_on_shutdown() -> TestResult {
    let (tx, rx) = oneshot::channel::<()>();
    let bound = wire::server::bind(local(), None).await?;
    let addr = bound.local_addr();
    let task = tokio::spawn(wire::serve(
        Router::new().route("/", get(|| async { "hi" })),
        addr,
        None,
        async {
            std::future::pending::<()>().await;
        },
    ));
    // `serve` on a port already taken by `bound` fails, naming it.
    let res = tokio::time::timeout(Duration::from_secs(5), task).await??;
    assert!(res
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains(&addr.to_string()));

    let task = tokio::spawn(bound.serve(
        Router::new().route("/", get(|| async { "hi" })),
        async move {
            let _ = rx.await;
        },
    ));
    let c = Client::new(&format!("http://{addr}"), None, None, T)?;
    assert_eq!(c.get_bytes("/").await?.as_ref(), b"hi");
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    Ok(())
}
