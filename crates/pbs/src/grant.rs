//! Who may obtain a grant of MAIN at the coordinator, and grants that must reach the
//! clone's promotion.
//!
//! A takeover (`POST /v1/ha/takeover`) asked with a clone's own token is granted only with
//! the clone's takeover password: the clone checks the operator's password first, then
//! forwards it, and the PBS checks it again against `[[importer]] takeover_password_hash`
//! (the same argon2 PHC hash as the clone's `[takeover] password_hash`). So the clone's
//! coordinator token, kept in `importer.toml`, is not enough; the hash there does not give
//! the password. One password check at a time (argon2 takes memory): others wait their
//! turn for up to 10 s, then get 429. The PBS's `admin` token needs no password (the
//! PBS operator can switch over anyway); the grant then waits for the clone's promotion
//! like any other, and the PBS promotes the clone itself ([`retry_promotions`]).
//!
//! A grant stays `pending_promotion` until the new main confirms (see `coord::pending`);
//! every `[failover] promote_retry_secs` the PBS retries `POST /v1/ha/promote` on it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::StatusCode;
use tokio::sync::Semaphore;
use wire::ha::TakeoverRequest;
use wire::server::ApiError;

use crate::daemon::App;

/// One argon2 check at a time; the others wait at most [`CHECK_WAIT`] (the callers are
/// clones with their token, e.g. two clones racing for the takeover).
static PASSWORD_CHECKS: Semaphore = Semaphore::const_new(1);
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// A `takeover_password_hash` from the config must be an argon2 PHC string.
pub(crate) fn check_hash(h: &str) -> anyhow::Result<()> {
    PasswordHash::new(h).map(|_| ()).map_err(|e| {
        anyhow!("not an argon2 PHC string ({e}): make one with `importer hash-password`")
    })
}

fn forbidden(msg: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, msg)
}

/// May token peer `peer` (already allowed to speak for `req.node`) take over?
pub(crate) async fn authorize(
    app: &App,
    peer: &str,
    req: &TakeoverRequest,
) -> Result<(), ApiError> {
    if peer == "admin" {
        return Ok(());
    }
    let node = &req.node;
    let hash = app
        .cfg
        .importers
        .iter()
        .find(|i| &i.name == node)
        .and_then(|i| i.takeover_password_hash.clone())
        .ok_or_else(|| {
            forbidden(format!(
                "no takeover_password_hash for [[importer]] {node} in the PBS config: a takeover by the clone's token needs the password, checked here too"
            ))
        })?;
    let password = req.password.clone().ok_or_else(|| {
        forbidden(format!(
            "a takeover of {node} by peer {peer} needs the takeover password (the clone's token alone is not enough)"
        ))
    })?;
    let _one = tokio::time::timeout(CHECK_WAIT, PASSWORD_CHECKS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "other takeover password checks are running: try again",
            )
        })?;
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        tracing::warn!(node = %node, peer, "takeover refused: wrong password");
        Err(forbidden(format!("wrong takeover password for {node}")))
    }
}

/// Retries the promotion of a grant the new main has not confirmed, every
/// `[failover] promote_retry_secs` after the grant.
pub(crate) async fn retry_promotions(app: Arc<App>) {
    let every = Duration::from_secs(app.cfg.failover.promote_retry_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        // With etcd, another PBS may have granted or confirmed meanwhile: read again first
        // (a failed read keeps the copy in memory; the clone checks the grant anyway).
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for c in &a.coords {
                if let Err(e) = c.fresh() {
                    tracing::warn!("retrying promotions: {e}");
                }
            }
        })
        .await;
        for coord in &app.coords {
            retry_promotion(&app, coord, every).await;
        }
    }
}

/// One group's pending grant, promoted again once it is `every` old.
async fn retry_promotion(app: &Arc<App>, coord: &crate::coord::Coordinator, every: Duration) {
    let Some(p) = coord.pending_promotion() else {
        return;
    };
    let age = time::OffsetDateTime::parse(
        &p.granted_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| time::OffsetDateTime::now_utc() - t)
    .unwrap_or(time::Duration::MAX);
    if age < time::Duration::try_from(every).unwrap_or(time::Duration::MAX) {
        return;
    }
    tracing::warn!(node = %p.node, epoch = p.epoch, retries = p.retries, "the promotion of a grant is not confirmed: promoting again");
    let r = crate::failover::promote_clone(app, &p.node, p.epoch).await;
    if let Err(e) = &r {
        tracing::error!("{}", e.message);
    }
    let (a, group) = (app.clone(), coord.group.clone());
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(c) = a.coords.iter().find(|c| c.group == group) {
            c.note_promotion_retry(&p.node, p.epoch, r.err().map(|e| e.message));
        }
    })
    .await;
}
