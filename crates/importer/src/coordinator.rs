//! What the clone asks its coordinator (the `[coordinator]` PBS, over the clone's own
//! connection and token) before it believes an epoch or a role that came from elsewhere:
//!
//! - a pushed generation whose epoch is above the one this clone knows: the clone asks the
//!   coordinator for its current epoch and refuses (409) a record from an epoch the
//!   coordinator never reached (a generation cannot come from the future);
//! - `POST /v1/ha/promote` (from the PBS push token): the clone asks the coordinator whether
//!   it granted this clone MAIN, at exactly the epoch of the request ([`Epoch::check`]);
//!   anything else is refused (409) and changes nothing. A replay is refused the same way
//!   (the epoch moved on, or this clone is no longer the coordinator's main);
//! - after a promotion: a hello as MAIN at the granted epoch confirms it to the coordinator,
//!   which shows the grant as pending until then (and retries the promotion);
//! - at start: a clone the coordinator says is MAIN (a grant whose promotion did not happen,
//!   e.g. the clone died in its promote hook) promotes now.

use std::sync::Arc;
use std::time::Duration;

use archive::Epoch;
use axum::http::StatusCode;
use wire::ha::{Hello, Role, Verdict};
use wire::server::ApiError;

use crate::server::App;

/// One hello to the coordinator.
pub(crate) async fn hello(app: &App, role: Role, epoch: u64) -> Result<Verdict, String> {
    let c = app
        .cfg
        .coordinator
        .client(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let body = Hello {
        node: app.cfg.name.clone(),
        epoch,
        role,
    };
    c.post_json::<_, Verdict>("/v1/ha/hello", &body)
        .await
        .map_err(|e| e.to_string())
}

fn known_epoch(app: &App) -> u64 {
    app.status.read(|s| s.epoch)
}

/// A pushed record at `epoch`: accepted when this clone already knows that epoch (or a
/// newer one), or when the coordinator is at least there; refused with 409 when the
/// coordinator is behind it (no coordinator granted that epoch), 503 when it cannot be
/// asked.
pub(crate) async fn check_record_epoch(app: &App, epoch: u64) -> Result<(), ApiError> {
    if epoch <= known_epoch(app) {
        return Ok(());
    }
    let v = hello(app, Role::Backup, known_epoch(app))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("a record at epoch {epoch} (newer than this clone's): the coordinator could not confirm it: {e}"),
            )
        })?;
    app.status.update(|s| s.epoch = s.epoch.max(v.epoch));
    if epoch > v.epoch {
        return Err(ApiError::conflict(format!(
            "the record's epoch {epoch} is ahead of the coordinator's epoch {}: refused",
            v.epoch
        )));
    }
    Ok(())
}

/// `POST /v1/ha/promote` at `epoch`: the coordinator must say this clone is MAIN at exactly
/// that epoch.
pub(crate) async fn check_promote(app: &App, epoch: u64) -> Result<(), ApiError> {
    let v = hello(app, Role::Backup, known_epoch(app))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot confirm the promotion with the coordinator: {e}"),
            )
        })?;
    if v.role != Role::Main {
        return Err(ApiError::conflict(format!(
            "the coordinator did not grant this clone MAIN (it says {} {} at epoch {}): promotion at epoch {epoch} refused",
            v.role, v.status, v.epoch
        )));
    }
    Epoch::check(epoch, v.epoch).map_err(|e| {
        ApiError::conflict(format!(
            "promotion at epoch {epoch} refused: the coordinator granted MAIN at epoch {} ({e})",
            v.epoch
        ))
    })
}

/// After the role file says MAIN at `epoch`: tell the coordinator (best effort; it retries
/// the promotion while it has no confirmation).
pub(crate) async fn confirm_promotion(app: &App, epoch: u64) {
    match hello(app, Role::Main, epoch).await {
        Ok(_) => tracing::info!(epoch, "promotion confirmed to the coordinator"),
        Err(e) => tracing::warn!(
            epoch,
            "could not confirm the promotion to the coordinator: {e}"
        ),
    }
}

/// At start: learn the epoch and our status; promote if the coordinator already granted
/// this clone MAIN (a promotion that did not happen before a crash or restart).
pub(crate) async fn startup_hello(app: &Arc<App>) {
    match hello(app, Role::Backup, known_epoch(app)).await {
        Ok(v) => {
            app.status.update(|s| {
                s.epoch = s.epoch.max(v.epoch);
                s.status = v.status;
            });
            // A node that stepped down at this very epoch (a switchover in progress: the
            // coordinator still holds it as MAIN until the target has verified the final
            // generation) does not take the role back; a grant newer than anything it knew
            // (it died before its promotion) is promoted now.
            let stepped_down = wire::ha::RoleFile::load(&app.cfg.role_path())
                .ok()
                .flatten()
                .is_some_and(|r| r.role == Role::Backup && r.epoch >= v.epoch);
            if v.role == Role::Main && stepped_down {
                tracing::warn!(
                    epoch = v.epoch,
                    "the coordinator still holds this node as MAIN, but it stepped down at this epoch: staying BACKUP"
                );
            } else if v.role == Role::Main {
                tracing::warn!(
                    epoch = v.epoch,
                    "the coordinator granted this clone MAIN and waits for its promotion: promoting now"
                );
                if let Err(e) = crate::takeover::promote_granted(app, v.epoch).await {
                    tracing::error!("promotion at start: {}", e.message);
                }
            }
        }
        Err(e) => tracing::warn!("coordinator hello: {e}"),
    }
}
