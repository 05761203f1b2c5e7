//! Per-peer tokens and the axum layer that requires them.
//!
//! Every peer (a PBS pulling from an exporter, the PBS pushing to an importer, an operator's
//! CLI) gets its own token. A [`TokenSet`] knows the tokens a daemon accepts and which peer
//! each belongs to; [`require_token`] wraps routes so that only requests carrying one of
//! them (`Authorization: token <t>` or `Authorization: Bearer <t>`) reach the handler, which
//! then finds the peer's name as a [`Peer`] (an extractor, also stored in the request
//! extensions).
//!
//! Tokens are compared as SHA-256 digests in constant time, against every entry, so the
//! time taken reveals neither a token's prefix nor which entry matched.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tower::{Layer, Service};

/// Minimum length, in characters, of an accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

/// Body of every 401 answer: says nothing about why the token was refused.
const UNAUTHORIZED_BODY: &str = "unauthorized\n";

/// Why a [`TokenSet`] could not be built. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token entry has an empty peer name.
    #[error("a token entry has an empty peer name")]
    EmptyPeer,
    /// The peer's token is shorter than [`MIN_TOKEN_LEN`] characters.
    #[error(
        "token for peer {peer:?} is too short: tokens need at least {MIN_TOKEN_LEN} characters"
    )]
    TooShort {
        /// The peer whose token is too short.
        peer: String,
    },
    /// The peer's token has characters that cannot travel in an HTTP header.
    #[error("token for peer {peer:?} must be printable ASCII without spaces")]
    BadCharacters {
        /// The peer whose token is malformed.
        peer: String,
    },
    /// Two entries share one token, so a request could not be attributed to one peer.
    #[error("peers {first:?} and {second:?} have the same token; give each peer its own")]
    Duplicate {
        /// The first peer with that token.
        first: String,
        /// The second peer with that token.
        second: String,
    },
}

/// Why a request was refused (for logs only; the client is told nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `token <t>` or `Bearer <t>`.
    Malformed,
    /// A well-formed token that belongs to no peer.
    Unknown,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => "missing Authorization header",
            AuthFailure::Malformed => "malformed Authorization header",
            AuthFailure::Unknown => "unknown token",
        })
    }
}

struct Entry {
    peer: String,
    digest: [u8; 32],
}

/// The tokens a daemon accepts, each tied to a peer name. Cheap to clone (shared).
#[derive(Clone)]
pub struct TokenSet {
    entries: Arc<[Entry]>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("peers", &self.peers().collect::<Vec<_>>())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenSet {
    /// Builds the set from `(peer name, token)` pairs.
    ///
    /// Fails, naming the peer, when a token is shorter than [`MIN_TOKEN_LEN`], holds
    /// spaces or non-printable characters, or is shared with another peer. One peer may
    /// have several tokens (to rotate them).
    pub fn new<I, P, T>(pairs: I) -> Result<Self, TokenError>
    where
        I: IntoIterator<Item = (P, T)>,
        P: Into<String>,
        T: AsRef<str>,
    {
        let mut entries: Vec<Entry> = Vec::new();
        for (peer, token) in pairs {
            let peer = peer.into();
            let token = token.as_ref();
            if peer.trim().is_empty() {
                return Err(TokenError::EmptyPeer);
            }
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(TokenError::TooShort { peer });
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokenError::BadCharacters { peer });
            }
            let digest = digest(token);
            if let Some(other) = entries.iter().find(|e| e.digest == digest) {
                return Err(TokenError::Duplicate {
                    first: other.peer.clone(),
                    second: peer,
                });
            }
            entries.push(Entry { peer, digest });
        }
        Ok(TokenSet {
            entries: entries.into(),
        })
    }

    /// The peer names in the set, in the order given (a peer with several tokens repeats).
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.peer.as_str())
    }

    /// Number of tokens in the set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the set accepts no token at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the peer owning `token`, comparing in constant time against every entry.
    pub fn verify(&self, token: &str) -> Option<&str> {
        let wanted = digest(token);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let eq = entry.digest.ct_eq(&wanted);
            index = u64::conditional_select(&index, &(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            usize::try_from(index)
                .ok()
                .and_then(|i| self.entries.get(i))
                .map(|e| e.peer.as_str())
        } else {
            None
        }
    }

    /// Checks a request's `Authorization` header (`token <t>` or `Bearer <t>`, scheme
    /// case-insensitive) and returns the peer name.
    pub fn check(&self, headers: &HeaderMap) -> Result<&str, AuthFailure> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthFailure::Missing)?;
        let token = parse_authorization(value).ok_or(AuthFailure::Malformed)?;
        self.verify(token).ok_or(AuthFailure::Unknown)
    }
}

/// Extracts the token from `token <t>` or `Bearer <t>`.
fn parse_authorization(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !(scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")) {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() || token.contains([' ', '\t']) {
        return None;
    }
    Some(token)
}

/// The authenticated peer of a request, put into the request extensions by
/// [`require_token`]. Also an extractor: a handler can take `peer: Peer` directly (a route
/// not behind [`require_token`] then answers 401).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Peer>()
            .cloned()
            .ok_or_else(unauthorized)
    }
}

/// The 401 answer: short plain text, `WWW-Authenticate: token`, no detail.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (WWW_AUTHENTICATE, HeaderValue::from_static("token")),
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ],
        UNAUTHORIZED_BODY,
    )
        .into_response()
}

/// A layer that lets through only requests with a token from `tokens`, adding the
/// [`Peer`] to their extensions; others get [`unauthorized`] (401).
///
/// Use `Router::route_layer(require_token(set))` on the authenticated routes so that
/// unknown paths still answer 404, or `Router::layer` to guard everything.
pub fn require_token(tokens: TokenSet) -> RequireTokenLayer {
    RequireTokenLayer { tokens }
}

/// The [`Layer`] returned by [`require_token`].
#[derive(Debug, Clone)]
pub struct RequireTokenLayer {
    tokens: TokenSet,
}

impl<S> Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The [`Service`] made by [`RequireTokenLayer`].
#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    tokens: TokenSet,
}

impl<S> Service<Request> for RequireToken<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.tokens.check(req.headers()) {
            Ok(peer) => {
                let peer = Peer(peer.to_owned());
                tracing::trace!(peer = %peer.0, path = %req.uri().path(), "authenticated");
                req.extensions_mut().insert(peer);
                Box::pin(self.inner.call(req))
            }
            Err(why) => {
                let remote = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    method = %req.method(),
                    path = %req.uri().path(),
                    remote = %remote,
                    "rejected request: {why}"
                );
                Box::pin(std::future::ready(Ok(unauthorized())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn builds_and_checks() -> Result<(), TokenError> {
        let set = TokenSet::new([
            ("pbs", "0123456789abcdef-pbs"),
            ("cli", "0123456789abcdef-cli"),
        ])?;
        assert_eq!(set.len(), 2);
        assert_eq!(set.check(&header("token 0123456789abcdef-pbs")), Ok("pbs"));
        assert_eq!(set.check(&header("Bearer 0123456789abcdef-cli")), Ok("cli"));
        assert_eq!(
            set.check(&header("BEARER   0123456789abcdef-cli ")),
            Ok("cli")
        );
        assert_eq!(set.check(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert_eq!(
            set.check(&header("Basic 0123456789abcdef-cli")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            set.check(&header("0123456789abcdef-cli")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            set.check(&header("token 0123456789abcdef-xxx")),
            Err(AuthFailure::Unknown)
        );
        // A prefix of a valid token is not valid.
        assert_eq!(
            set.check(&header("token 0123456789abcdef")),
            Err(AuthFailure::Unknown)
        );
        Ok(())
    }

    #[test]
    fn rejects_bad_sets_naming_the_peer() {
        let err = TokenSet::new([("importer-2", "short")]).err();
        assert_eq!(
            err,
            Some(TokenError::TooShort {
                peer: "importer-2".into()
            })
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("importer-2"), "{msg}");
        assert!(!msg.contains("short\""), "{msg}");

        assert_eq!(
            TokenSet::new([("a", "0123456789abcdef gh")]).err(),
            Some(TokenError::BadCharacters { peer: "a".into() })
        );
        assert_eq!(
            TokenSet::new([("", "0123456789abcdefgh")]).err(),
            Some(TokenError::EmptyPeer)
        );
        assert_eq!(
            TokenSet::new([("a", "0123456789abcdefgh"), ("b", "0123456789abcdefgh")]).err(),
            Some(TokenError::Duplicate {
                first: "a".into(),
                second: "b".into()
            })
        );
    }

    #[test]
    fn debug_shows_no_token() -> Result<(), TokenError> {
        let set = TokenSet::new([("pbs", "secret-secret-secret")])?;
        let dbg = format!("{set:?}");
        assert!(dbg.contains("pbs") && !dbg.contains("secret"), "{dbg}");
        Ok(())
    }
}
