//! TOML configuration helpers and the blocks every daemon's config embeds.
//!
//! [`load_toml`] reads a file into any `DeserializeOwned` type; its errors name the file,
//! the line and column, the dotted key, and what is wrong. Put
//! `#[serde(deny_unknown_fields)]` on every config struct so that a misspelt key is an
//! error naming it rather than a silently ignored line.
//!
//! [`ListenConfig`] (where a daemon listens, its TLS files and the tokens it accepts) and
//! [`PeerConfig`] (a peer it calls) are meant to be embedded:
//!
//! ```toml
//! [listen]
//! listen = "0.0.0.0:8443"
//! cert = "/etc/pullback/tls/cert.pem"
//! key = "/etc/pullback/tls/key.pem"
//! tokens = [{ peer = "pbs", token = "…at least 16 characters…" }]
//!
//! [[peers]]
//! name = "pbs"
//! url = "https://pbs.example:8443"
//! token = "…"
//! ca = "/etc/pullback/tls/pbs-ca.pem"
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{TokenError, TokenSet};
use crate::client::{Client, WireError};
use crate::server::TlsFiles;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The OS error is part of the message and not an
    /// error source, so that an error chain (`{:#}`) prints it once.
    #[error("config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The file holds nothing but white space (a config must set something).
    #[error("config file {}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML or does not match the expected shape.
    #[error("config file {}{}: {message}", path.display(), Location(*line, *column, key.as_deref()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// Dotted path of the offending key (`peers[0].url`), when known.
        key: Option<String>,
        /// What is wrong (for an unknown key: ``unknown field `x`, expected ...``).
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{0}")]
    Invalid(String),
}

struct Location<'a>(Option<usize>, Option<usize>, Option<&'a str>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.0 {
            write!(f, ", line {line}")?;
            if let Some(col) = self.1 {
                write!(f, ", column {col}")?;
            }
        }
        if let Some(key) = self.2 {
            write!(f, ", key `{key}`")?;
        }
        Ok(())
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses `text` (read from `path`, used in errors) into `T`.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let key = (!key.is_empty() && key != ".").then_some(key);
        let inner = err.into_inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            key,
            // toml's messages may span lines ("invalid array\nexpected `]`"): one line.
            message: inner
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": "),
        }
    })
}

/// Reads the TOML file `path` into `T`; errors name the file, the line and the key.
/// A file that cannot be read (missing, a directory, not UTF-8) or is empty is an error
/// naming the file and the problem.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::Empty {
            path: path.to_owned(),
        });
    }
    parse_toml(&text, path)
}

/// `path` made absolute against `base` (the config file's folder) if it is relative.
fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// One accepted token: the peer it identifies and the token itself (≥ 16 characters).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The peer's name, as handlers see it ([`crate::auth::Peer`]).
    pub peer: String,
    /// The secret token.
    pub token: String,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("peer", &self.peer)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where a daemon listens, its TLS files (both or neither) and the tokens it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address and port, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `key`, the daemon serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The tokens accepted on authenticated routes.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

impl ListenConfig {
    /// The TLS files, if HTTPS is configured; an error if only one of `cert`/`key` is set.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::Invalid(
                "listen: `cert` is set but `key` is not; set both for HTTPS, or neither".into(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "listen: `key` is set but `cert` is not; set both for HTTPS, or neither".into(),
            )),
        }
    }

    /// The [`TokenSet`] of `tokens` (errors name the peer with a bad token).
    pub fn token_set(&self) -> Result<TokenSet, TokenError> {
        TokenSet::new(
            self.tokens
                .iter()
                .map(|t| (t.peer.as_str(), t.token.as_str())),
        )
    }

    /// Makes relative `cert`/`key` paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key].into_iter().flatten() {
            resolve(base, p);
        }
    }

    /// Where a command on this host reaches the daemon: `listen`, with an unspecified
    /// address (`0.0.0.0`, `::`) replaced by 127.0.0.1.
    pub fn local_addr(&self) -> SocketAddr {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    /// The daemon's base URL for a command on this host ([`local_addr`](Self::local_addr)),
    /// `https` when it has a certificate.
    pub fn local_url(&self) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }
}

/// A peer this daemon calls: its name, base URL, the token it expects from us, and an
/// optional CA certificate (PEM) to trust for its self-signed TLS certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name (for logs, metrics labels and status).
    pub name: String,
    /// Base URL, `http://host:port` or `https://host:port[/prefix]`.
    pub url: String,
    /// The token sent as `Authorization: token <token>`.
    pub token: String,
    /// Extra CA certificate (PEM) trusted for this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca", &self.ca)
            .finish()
    }
}

impl PeerConfig {
    /// A [`Client`] for this peer with the overall request `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<Client, WireError> {
        Client::for_peer(self, timeout)
    }

    /// Makes a relative `ca` path relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(ca) = &mut self.ca {
            resolve(base, ca);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct DaemonConfig {
        name: String,
        listen: ListenConfig,
        #[serde(default)]
        peers: Vec<PeerConfig>,
    }

    const GOOD: &str = r#"
name = "pbs"

[listen]
listen = "127.0.0.1:8443"
cert = "tls/cert.pem"
key = "/abs/key.pem"
tokens = [{ peer = "exporter", token = "0123456789abcdef" }]

[[peers]]
name = "importer-1"
url = "https://clone1:8443"
token = "fedcba9876543210"
ca = "ca.pem"
"#;

    #[test]
    fn parses_a_good_config() -> Result<(), Box<dyn std::error::Error>> {
        let mut cfg: DaemonConfig = parse_toml(GOOD, Path::new("/etc/pbs.toml"))?;
        cfg.listen.resolve_paths(Path::new("/etc/pullback"));
        for p in &mut cfg.peers {
            p.resolve_paths(Path::new("/etc/pullback"));
        }
        assert_eq!(cfg.listen.listen, "127.0.0.1:8443".parse()?);
        let tls = cfg.listen.tls_files()?;
        assert_eq!(
            tls,
            Some(TlsFiles {
                cert: "/etc/pullback/tls/cert.pem".into(),
                key: "/abs/key.pem".into()
            })
        );
        assert_eq!(
            cfg.listen.token_set()?.peers().collect::<Vec<_>>(),
            ["exporter"]
        );
        assert_eq!(cfg.peers[0].ca, Some(PathBuf::from("/etc/pullback/ca.pem")));
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("0123456789abcdef") && !dbg.contains("fedcba"),
            "{dbg}"
        );
        Ok(())
    }

    #[test]
    fn unknown_nested_key_is_named_with_line() {
        let bad = GOOD.replace("ca = \"ca.pem\"", "ca = \"ca.pem\"\ntimeout_secs = 3");
        let err = parse_toml::<DaemonConfig>(&bad, Path::new("/etc/pbs.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/etc/pbs.toml"), "{err}");
        assert!(err.contains("timeout_secs"), "{err}");
        assert!(err.contains("line 15"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn bad_value_names_key() {
        let bad = GOOD.replace("127.0.0.1:8443", "nowhere");
        let err = parse_toml::<DaemonConfig>(&bad, Path::new("x.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("listen.listen") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn a_command_reaches_its_daemon_on_localhost_when_it_listens_everywhere() {
        let mut cfg = ListenConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert: None,
            key: None,
            tokens: vec![],
        };
        assert_eq!(cfg.local_url(), "http://127.0.0.1:8443");
        cfg.listen = "[::]:9000".parse().unwrap_or(cfg.listen);
        assert_eq!(cfg.local_addr(), SocketAddr::from(([127, 0, 0, 1], 9000)));
        cfg.listen = SocketAddr::from(([10, 1, 2, 3], 8443));
        cfg.cert = Some("c.pem".into());
        assert_eq!(cfg.local_url(), "https://10.1.2.3:8443");
    }

    #[test]
    fn half_tls_is_refused() {
        let cfg = ListenConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            cert: Some("c.pem".into()),
            key: None,
            tokens: vec![],
        };
        assert!(cfg.tls_files().is_err());
    }
}
