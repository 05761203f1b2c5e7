//! HTTP client for talking to a peer daemon.
//!
//! A [`Client`] knows one peer: its base URL, the token to send
//! (`Authorization: token <t>`), an optional extra CA certificate for self-signed peers,
//! and timeouts (connect [`CONNECT_TIMEOUT`], whole request configurable). Every failure
//! becomes a [`WireError`] that names the method, URL, status and the server's own
//! message (the `error` field of an [`crate::server::ApiError`] body, or the text body).
//!
//! [`retry`] (in [`crate::retry`], re-exported here) re-runs an operation with
//! exponential backoff on connection errors, timeouts and 5xx answers, never on 4xx.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::retry::{retry, Backoff, Retryable};

/// Connect timeout of every [`Client`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A sensible overall request timeout for small API calls (the `timeout` of [`Client::new`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest server message kept in a [`WireError::Status`].
const MAX_MESSAGE: usize = 500;

/// Most bytes of an error answer read to find its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Most bytes of a JSON answer ([`Client::get_json`], [`Client::post_json`]): a node list
/// or a status is a few KiB.
pub const MAX_JSON_ANSWER: usize = 16 << 20;

/// A failed exchange with a peer. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The client could not be set up (bad base URL, bad token).
    #[error("HTTP client for {url:?}: {reason}")]
    Setup {
        /// The base URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The extra CA certificate file is missing or unusable.
    #[error("CA certificate file {}: {reason}", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    #[error("{method} {url}: cannot connect: {detail}")]
    Connect {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
        /// The cause, with its chain.
        detail: String,
    },
    /// The request did not complete within the timeout.
    #[error("{method} {url}: timed out")]
    Timeout {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
    },
    /// The connection failed mid-request (reset, closed early).
    #[error("{method} {url}: transfer failed: {detail}")]
    Transport {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
        /// The cause, with its chain.
        detail: String,
    },
    /// The server answered with a non-success status.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
        /// The status received.
        status: StatusCode,
        /// The server's message (its `error` field, or its text), shortened.
        message: String,
    },
    /// The answer is larger than the caller accepts (read no further than the limit).
    #[error("{method} {url}: the answer is over the limit of {limit} bytes")]
    TooLarge {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
        /// The most bytes accepted.
        limit: usize,
    },
    /// The answer arrived but its body is not what was expected (bad JSON).
    #[error("{method} {url}: bad response body: {reason}")]
    Decode {
        /// Request method.
        method: Method,
        /// Full URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl WireError {
    /// The HTTP status, when the server answered with an error status.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            WireError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for errors worth retrying: connection failures, timeouts, broken transfers
    /// and 5xx answers. 4xx answers, bad bodies and setup errors are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            WireError::Connect { .. } | WireError::Timeout { .. } | WireError::Transport { .. } => {
                true
            }
            WireError::Status { status, .. } => status.is_server_error(),
            WireError::Setup { .. }
            | WireError::Ca { .. }
            | WireError::Decode { .. }
            | WireError::TooLarge { .. } => false,
        }
    }
}

impl Retryable for WireError {
    fn is_retryable(&self) -> bool {
        WireError::is_retryable(self)
    }
}

/// The error's message followed by its sources, `: `-separated (a source whose text the
/// message already holds is left out).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Classifies a reqwest error for `method url`.
fn classify(method: &Method, url: &str, err: reqwest::Error) -> WireError {
    let (method, url) = (method.clone(), url.to_owned());
    if err.is_timeout() {
        WireError::Timeout { method, url }
    } else if err.is_connect() {
        WireError::Connect {
            method,
            url,
            detail: chain(&err),
        }
    } else if err.is_decode() {
        WireError::Decode {
            method,
            url,
            reason: chain(&err),
        }
    } else if err.is_builder() {
        WireError::Setup {
            url,
            reason: chain(&err),
        }
    } else {
        WireError::Transport {
            method,
            url,
            detail: chain(&err),
        }
    }
}

/// Turns an error body into a one-line message: the `error` (or `message`) field of a
/// JSON object, else the text itself, shortened; the status reason if empty.
fn server_message(status: StatusCode, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_MESSAGE + 1)
        .collect();
    if line.chars().count() > MAX_MESSAGE {
        line = line.chars().take(MAX_MESSAGE).collect();
        line.push('…');
    }
    if line.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        line
    }
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error answer; a broken body reads as
/// what arrived (the status alone still tells what happened).
async fn error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    body
}

/// A client for one peer. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, WireError> {
    let ca_err = |reason: String| WireError::Ca {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(format!("bad PEM: {e}")))?;
    if ders.is_empty() {
        return Err(ca_err("no CERTIFICATE block found".into()));
    }
    ders.iter()
        .map(|der| reqwest::Certificate::from_der(der).map_err(|e| ca_err(chain(&e))))
        .collect()
}

impl Client {
    /// A client for the peer at `base_url` (`http://` or `https://`, optionally with a
    /// path prefix), sending `token` if given, trusting the certificates in the PEM file
    /// `ca` in addition to the built-in web roots, with the overall `timeout` per request.
    ///
    /// Redirects are not followed and proxies from the environment are ignored: peers
    /// are reached directly.
    pub fn new(
        base_url: &str,
        token: Option<&str>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, WireError> {
        let setup_err = |reason: String| WireError::Setup {
            url: base_url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(base_url).map_err(|e| setup_err(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(setup_err("the scheme must be http or https".into()));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(setup_err("no host".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(setup_err("a base URL takes no query or fragment".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(setup_err(
                "credentials in the URL are not allowed; use the token".into(),
            ));
        }
        let token = token
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("token {t}")).map_err(|_| {
                    setup_err("the token has characters not allowed in a header".into())
                })?;
                v.set_sensitive(true);
                Ok::<_, WireError>(v)
            })
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("pullback/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca {
            for cert in load_ca(ca)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| setup_err(chain(&e)))?;
        Ok(Client {
            http,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client for a configured peer (its `url`, `token` and `ca`).
    pub fn for_peer(
        peer: &crate::config::PeerConfig,
        timeout: Duration,
    ) -> Result<Self, WireError> {
        Self::new(&peer.url, Some(&peer.token), peer.ca.as_deref(), timeout)
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The full URL of `path` (with or without a leading `/`, may carry a query).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// A request to `path` with the token set; send it with [`Client::send`]. For headers,
    /// query parameters or streaming bodies the helpers below do not cover.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.header(AUTHORIZATION, t.clone()),
            None => rb,
        }
    }

    /// Sends `request`; a non-2xx answer becomes [`WireError::Status`] with the server's
    /// message.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, WireError> {
        let request = request.build().map_err(|e| WireError::Setup {
            url: self.base.clone(),
            reason: chain(&e),
        })?;
        let method = request.method().clone();
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| classify(&method, &url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = error_body(response).await;
        Err(WireError::Status {
            method,
            url,
            status,
            message: server_message(status, &body),
        })
    }

    async fn json_body<T: DeserializeOwned>(
        &self,
        method: Method,
        request: reqwest::RequestBuilder,
    ) -> Result<T, WireError> {
        let response = self
            .send(request.header(ACCEPT, "application/json"))
            .await?;
        let url = response.url().to_string();
        let body = read_max(response, &method, MAX_JSON_ANSWER).await?;
        let parsed = if body.iter().all(u8::is_ascii_whitespace) {
            // An empty answer reads as `null`: fine for `()` and `Option<_>`.
            serde_json::from_slice(b"null")
        } else {
            serde_json::from_slice(&body)
        };
        parsed.map_err(|e| WireError::Decode {
            method,
            url,
            reason: e.to_string(),
        })
    }

    /// `GET path`, decoding a JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, WireError> {
        self.json_body(Method::GET, self.request(Method::GET, path))
            .await
    }

    /// `POST path` with `body` as JSON, decoding a JSON answer (an empty answer decodes as
    /// `null`, so `T = ()` works).
    pub async fn post_json<B, T>(&self, path: &str, body: &B) -> Result<T, WireError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.json_body(Method::POST, self.request(Method::POST, path).json(body))
            .await
    }

    /// `GET path`, returning the raw body.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, WireError> {
        self.fetch_bytes(Method::GET, self.request(Method::GET, path))
            .await
    }

    /// `POST path` with a raw `application/octet-stream` body, returning the raw answer.
    pub async fn post_bytes(&self, path: &str, body: impl Into<Bytes>) -> Result<Bytes, WireError> {
        let rb = self
            .request(Method::POST, path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body.into());
        self.fetch_bytes(Method::POST, rb).await
    }

    /// [`Client::get_bytes`], refusing an answer over `limit` bytes
    /// ([`WireError::TooLarge`]) without reading more than that.
    pub async fn get_bytes_max(&self, path: &str, limit: usize) -> Result<Bytes, WireError> {
        self.fetch_bytes_max(Method::GET, self.request(Method::GET, path), limit)
            .await
    }

    /// [`Client::post_bytes`], refusing an answer over `limit` bytes
    /// ([`WireError::TooLarge`]) without reading more than that.
    pub async fn post_bytes_max(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        limit: usize,
    ) -> Result<Bytes, WireError> {
        let rb = self
            .request(Method::POST, path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body.into());
        self.fetch_bytes_max(Method::POST, rb, limit).await
    }

    async fn fetch_bytes(
        &self,
        method: Method,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, WireError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        response
            .bytes()
            .await
            .map_err(|e| classify(&method, &url, e))
    }

    async fn fetch_bytes_max(
        &self,
        method: Method,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Bytes, WireError> {
        let response = self.send(request).await?;
        read_max(response, &method, limit).await
    }
}

/// Reads a whole answer body, refusing ([`WireError::TooLarge`]) one over `limit` bytes
/// without reading more than that.
async fn read_max(
    mut response: reqwest::Response,
    method: &Method,
    limit: usize,
) -> Result<Bytes, WireError> {
    let url = response.url().to_string();
    let too_large = |url: &str| WireError::TooLarge {
        method: method.clone(),
        url: url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(&url));
    }
    let mut body = Vec::new();
    while let Some(piece) = response
        .chunk()
        .await
        .map_err(|e| classify(method, &url, e))?
    {
        if body.len() + piece.len() > limit {
            return Err(too_large(&url));
        }
        body.extend_from_slice(&piece);
    }
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_bodies() {
        let s = StatusCode::CONFLICT;
        assert_eq!(
            server_message(s, br#"{"error":"stale epoch 3 < 4"}"#),
            "stale epoch 3 < 4"
        );
        assert_eq!(server_message(s, b"plain\n text  "), "plain text");
        assert_eq!(server_message(s, b""), "Conflict");
        let long = "x".repeat(2000);
        assert_eq!(
            server_message(s, long.as_bytes()).chars().count(),
            MAX_MESSAGE + 1
        );
    }

    #[test]
    fn rejects_bad_base_urls() {
        let t = Duration::from_secs(1);
        for bad in ["ftp://x", "not a url", "http://h/?q=1", "http://u:p@h/"] {
            let err = Client::new(bad, None, None, t).err();
            assert!(
                matches!(err, Some(WireError::Setup { .. })),
                "{bad}: {err:?}"
            );
        }
        let ok = Client::new(
            "http://127.0.0.1:1/prefix/",
            Some("0123456789abcdef"),
            None,
            t,
        );
        let ok = ok.map(|c| c.url("/v1/status")).map_err(|e| e.to_string());
        assert_eq!(ok, Ok("http://127.0.0.1:1/prefix/v1/status".to_owned()));
    }

    #[test]
    fn missing_ca_names_the_file() {
        let err = Client::new(
            "https://localhost:1",
            None,
            Some(Path::new("/nonexistent/ca.pem")),
            Duration::from_secs(1),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
