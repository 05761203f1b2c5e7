//! What guards the takeover password on a clone: bounded, rate-limited checks and the
//! takeover page's protection against cross-site posts.
//!
//! - **Bounded checks.** An argon2 check takes memory (19 MiB with the default
//!   parameters), so one runs at a time per path: the page has one slot and the
//!   token-authenticated API (`POST /v1/takeover`, the seeds' `change=MAIN`) another. A
//!   request that finds its slot busy is answered 429 at once, unchecked.
//! - **Rate limit per caller.** The page's callers are told apart by client address, the
//!   API's by token peer. `[takeover] max_failures` wrong passwords within a minute lock
//!   that caller (429) for `lockout_secs`, and only that caller: a stranger's burst at the
//!   page locks the stranger's address, never the API, so the operator's token and
//!   password still take over. Failures are counted before the slot is released, so a
//!   burst gets at most `max_failures` checks.
//! - **Cross-site posts.** `POST /takeover` is refused (403, naming why) when the browser
//!   says it comes from another site (`Sec-Fetch-Site` other than `same-origin`/`none`)
//!   or its `Origin` is not this page's host, and it must carry a form token from the page
//!   (`form_token`, hidden field): random, single use, valid for [`FORM_TOKEN_TTL`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::{header, HeaderMap, StatusCode};
use tokio::sync::Semaphore;
use wire::server::ApiError;

use crate::TakeoverConfig;

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a form token from the page is valid.
pub const FORM_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Callers whose failures are remembered; past that, new callers share one entry.
const MAX_CALLERS: usize = 4096;
/// Form tokens handed out and not used yet; past that, the oldest is dropped.
const MAX_FORM_TOKENS: usize = 256;

/// Who asks for a password check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The takeover page, from this client address.
    Page(IpAddr),
    /// The token-authenticated API, by this token peer.
    Api(String),
}

#[derive(Default)]
struct Failures {
    recent: Vec<Instant>,
    locked_until: Option<Instant>,
}

impl Failures {
    fn stale(&self, now: Instant) -> bool {
        self.locked_until.is_none_or(|u| u <= now)
            && self
                .recent
                .iter()
                .all(|t| now.duration_since(*t) > FAILURE_WINDOW)
    }
}

/// The guard of one clone process.
pub struct Guard {
    page_slot: Semaphore,
    api_slot: Semaphore,
    failures: Mutex<HashMap<Option<Caller>, Failures>>,
    forms: Mutex<HashMap<String, Instant>>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            page_slot: Semaphore::new(1),
            api_slot: Semaphore::new(1),
            failures: Mutex::new(HashMap::new()),
            forms: Mutex::new(HashMap::new()),
        }
    }
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, msg)
}

impl Guard {
    /// The key of `caller` in the failure table (`None`: the shared overflow entry).
    fn key(map: &mut HashMap<Option<Caller>, Failures>, caller: &Caller) -> Option<Caller> {
        let key = Some(caller.clone());
        if map.contains_key(&key) || map.len() < MAX_CALLERS {
            return key;
        }
        let now = Instant::now();
        map.retain(|_, f| !f.stale(now));
        (map.len() < MAX_CALLERS).then_some(key).flatten()
    }

    /// Checks `password` against the configured hash for `caller`: 403 wrong or none
    /// configured, 429 locked out or another check running.
    pub async fn check_password(
        &self,
        tc: &TakeoverConfig,
        caller: &Caller,
        password: &str,
    ) -> Result<(), ApiError> {
        let Some(hash) = tc.password_hash.clone() else {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "no takeover password is configured on this clone ([takeover] password_hash)",
            ));
        };
        let slot = match caller {
            Caller::Page(_) => &self.page_slot,
            Caller::Api(_) => &self.api_slot,
        };
        let _one = slot.try_acquire().map_err(|_| {
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "another takeover password check is running: try again in a moment",
            )
        })?;
        {
            let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let key = Self::key(&mut map, caller);
            if let Some(until) = map
                .get(&key)
                .and_then(|f| f.locked_until)
                .filter(|u| *u > Instant::now())
            {
                let secs = until.saturating_duration_since(Instant::now()).as_secs() + 1;
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many wrong passwords from here: takeover locked for {secs} s"),
                ));
            }
        }
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(&mut map, caller);
        if ok {
            map.remove(&key);
            return Ok(());
        }
        let now = Instant::now();
        let f = map.entry(key).or_default();
        f.recent
            .retain(|t| now.duration_since(*t) <= FAILURE_WINDOW);
        f.recent.push(now);
        if f.recent.len() >= tc.max_failures as usize {
            f.recent.clear();
            f.locked_until = Some(now + Duration::from_secs(tc.lockout_secs));
            tracing::warn!(
                ?caller,
                "takeover: {} wrong passwords: this caller is locked for {} s",
                tc.max_failures,
                tc.lockout_secs
            );
        }
        tracing::warn!(?caller, "takeover: wrong password");
        Err(refuse(StatusCode::FORBIDDEN, "wrong password"))
    }

    /// A new single-use form token for the page.
    pub fn form_token(&self) -> String {
        let mut b = [0u8; 16];
        OsRng.fill_bytes(&mut b);
        let t = hex::encode(b);
        let now = Instant::now();
        let mut forms = self.forms.lock().unwrap_or_else(|p| p.into_inner());
        forms.retain(|_, at| now.duration_since(*at) < FORM_TOKEN_TTL);
        while forms.len() >= MAX_FORM_TOKENS {
            let oldest = forms
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => forms.remove(&k),
                None => break,
            };
        }
        forms.insert(t.clone(), now);
        t
    }

    /// Uses up form token `t`: 403 when it is unknown, used or expired.
    pub fn use_form_token(&self, t: &str) -> Result<(), ApiError> {
        let mut forms = self.forms.lock().unwrap_or_else(|p| p.into_inner());
        match forms.remove(t) {
            Some(at) if at.elapsed() < FORM_TOKEN_TTL => Ok(()),
            _ => Err(refuse(
                StatusCode::FORBIDDEN,
                "the form is expired, was already used or did not come from this page: reload the page and try again",
            )),
        }
    }
}

/// Refuses a cross-site post of the takeover form (403, naming why).
pub fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("cross-site form post refused (Sec-Fetch-Site: {site}): open the takeover page itself"),
            ));
        }
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || origin_host != host {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("cross-site form post refused: Origin {origin} is not this page's (host {host})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cross_site_posts_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[])).is_ok());
        assert!(same_origin(&h(&[("host", "c:1"), ("origin", "http://c:1")])).is_ok());
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")])).is_ok());
        for bad in [
            h(&[("sec-fetch-site", "cross-site")]),
            h(&[("sec-fetch-site", "same-site")]),
            h(&[("host", "c:1"), ("origin", "http://evil:1")]),
            h(&[("host", "c:1"), ("origin", "null")]),
        ] {
            let e = same_origin(&bad).err().map(|e| (e.status, e.message));
            assert!(
                e.as_ref()
                    .is_some_and(|(s, m)| *s == StatusCode::FORBIDDEN && m.contains("cross-site")),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn form_tokens_are_single_use() {
        let g = Guard::default();
        let t = g.form_token();
        assert!(g.use_form_token("nope").is_err());
        assert!(g.use_form_token(&t).is_ok());
        assert!(g.use_form_token(&t).is_err(), "used twice");
    }
}
