//! Serving an axum [`Router`] over plain HTTP, or HTTPS with rustls.
//!
//! [`Server::bind`] loads the TLS files (if any) and binds the socket first, so a daemon
//! can report configuration errors and the actual bound address (port 0 in tests) before
//! it starts serving; [`Server::serve`] then runs until the shutdown future completes, lets
//! open requests finish for up to [`DRAIN_TIMEOUT`], and returns. [`serve`] does both.
//!
//! Handlers can extract `ConnectInfo<SocketAddr>` (the remote address) in both modes.
//! [`ApiError`] is the JSON error answer (`{"error": "..."}`) that
//! [`crate::client::Client`] turns back into a readable message.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may keep running after the shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM files for HTTPS: the certificate chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Errors from loading TLS files, binding or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("TLS certificate file {}: {reason}", path.display())]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error("TLS key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate/key pair (e.g. the key does not match).
    #[error("TLS certificate {} with key {}: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Serving failed after the socket was bound.
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        /// The bound address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Loads `files` into a rustls server configuration (ring provider, TLS 1.2 and 1.3,
/// ALPN `http/1.1`). Errors name the offending file.
pub fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let cert_err = |reason: String| ServerError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let key_err = |reason: String| ServerError::Key {
        path: files.key.clone(),
        reason,
    };
    let cert_pem = read_pem(&files.cert).map_err(cert_err)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key_pem = read_pem(&files.key).map_err(key_err)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => key_err("no PRIVATE KEY block found".into()),
        other => key_err(format!("bad PEM: {other}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |source: rustls::Error| ServerError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A bound (not yet serving) HTTP or HTTPS server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Binds `listen` after loading `tls` (if given); see [`Server::bind`].
pub async fn bind(listen: SocketAddr, tls: Option<&TlsFiles>) -> Result<Server, ServerError> {
    Server::bind(listen, tls).await
}

impl Server {
    /// Loads the TLS files (if any), then binds `listen` (port 0 picks a free port; see
    /// [`Server::local_addr`]).
    pub async fn bind(listen: SocketAddr, tls: Option<&TlsFiles>) -> Result<Self, ServerError> {
        let tls = tls.map(load_tls).transpose()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: listen,
                source,
            })?;
        Self::from_listener(listener, tls)
    }

    /// Wraps an already bound listener, with an optional rustls configuration.
    pub fn from_listener(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        Ok(Server {
            listener,
            addr,
            tls,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when serving HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The base URL of this server as seen from this host (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves `router` until `shutdown` completes, then stops accepting, lets open
    /// connections finish for up to [`DRAIN_TIMEOUT`], and returns.
    pub async fn serve<F>(self, router: Router, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = self.addr;
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!(%addr, "shutting down HTTP server");
            let _ = signalled_tx.send(());
        };
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let served = async move {
            match self.tls {
                None => {
                    tracing::info!("listening on http://{addr}");
                    let listener = self.listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
                Some(config) => {
                    tracing::info!("listening on https://{addr}");
                    let listener = TlsListener::start(self.listener, addr, config).tap_io(|_| {});
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
            }
        };
        let drain_deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            res = served => res.map_err(|source| ServerError::Serve { addr, source }),
            () = drain_deadline => {
                tracing::warn!(%addr, "connections still open {DRAIN_TIMEOUT:?} after shutdown; leaving them");
                Ok(())
            }
        }
    }
}

/// Binds `listen` (loading `tls` first when given) and serves `router` until `shutdown`
/// completes. Plain HTTP when `tls` is `None`, HTTPS otherwise.
pub async fn serve<F>(
    router: Router,
    listen: SocketAddr,
    tls: Option<TlsFiles>,
    shutdown: F,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    Server::bind(listen, tls.as_ref())
        .await?
        .serve(router, shutdown)
        .await
}

/// A future that completes on SIGINT or SIGTERM: the usual `shutdown` argument.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Accepts TCP connections and completes TLS handshakes in the background (so one slow
/// client cannot block others), handing finished streams to axum.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    fn start(listener: TcpListener, addr: SocketAddr, config: Arc<rustls::ServerConfig>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(accept_tls(listener, acceptor, tx));
        TlsListener { rx, addr, task }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task is gone (it never ends on its own): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                handle_accept_error(e).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, remote)).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

async fn handle_accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    // Out of file descriptors and the like: back off instead of spinning.
    tracing::error!("accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Most bytes of a JSON request body (every route that takes one).
pub const MAX_JSON_BODY: usize = 64 << 10;

/// Refuses any request body over `max` bytes on every route of `router`, with `413` and
/// `{"error": "request body ... over the limit of N bytes"}`: a declared `Content-Length`
/// over the limit is refused before anything is read; a chunked body is read no further
/// than the limit. (It replaces axum's own 2 MB default, whose refusal is plain text.)
pub fn limit_body(router: axum::Router, max: usize) -> axum::Router {
    router
        .layer(axum::middleware::from_fn_with_state(max, body_limit))
        .layer(DefaultBodyLimit::disable())
}

async fn body_limit(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes is over the limit of {max} bytes"),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, max).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over the limit of {max} bytes: {e}"),
        )
        .into_response(),
    }
}

/// An API error answer: `status` with the JSON body `{"error": message}`.
///
/// The message is for the peer (and its operator): say what was wrong with the request,
/// never echo secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A one-line explanation.
    pub message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409 Conflict (e.g. a stale epoch).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503 Service Unavailable (busy; the client's [`crate::client::retry`] retries it).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
