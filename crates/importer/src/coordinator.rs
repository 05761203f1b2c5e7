//! What the clone asks its coordinators (the `[coordinator]` PBS, or the `[[coordinator]]`
//! ones in order: the first that answers decides, see `pbs_list.rs`; over the clone's own
//! connection and token) before it believes an epoch or a role that came from elsewhere:
//!
//! - a pushed generation whose epoch is above the one this clone knows: the clone asks the
//!   coordinator for its current epoch and refuses (409) a record from an epoch the
//!   coordinator never reached (a generation cannot come from the future);
//! - `POST /v1/ha/promote` (from a PBS push token): the clone asks the coordinator whether
//!   it granted this clone MAIN, at exactly the epoch of the request ([`Epoch::check`]);
//!   anything else is refused (409) and changes nothing. A replay is refused the same way
//!   (the epoch moved on, or this clone is no longer the coordinator's main);
//! - after a promotion: a hello as MAIN at the granted epoch confirms it to the coordinator
//!   that granted it, which shows the grant as pending until then (and retries the
//!   promotion);
//! - at start: a hello to every listed PBS; a clone a coordinator says is MAIN (a grant
//!   whose promotion did not happen, e.g. the clone died in its promote hook) promotes now,
//!   once the first coordinator that answers confirms it.

use std::sync::Arc;
use std::time::Duration;

use archive::Epoch;
use axum::http::StatusCode;
use wire::ha::{Hello, Role, Verdict};
use wire::server::ApiError;
use wire::PeerConfig;

use crate::pbs_list::NoAnswer;

use crate::server::App;

fn body(app: &App, role: Role, epoch: u64) -> Hello {
    Hello {
        node: app.cfg.name.clone(),
        epoch,
        role,
    }
}

/// One hello to coordinator `pbs`.
async fn hello_to(pbs: &PeerConfig, body: &Hello) -> Result<Verdict, String> {
    let c = pbs
        .client(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    c.post_json::<_, Verdict>("/v1/ha/hello", body)
        .await
        .map_err(|e| e.to_string())
}

/// A hello to the listed coordinators in order: the first that answers, and its verdict.
async fn hello_first(
    app: &App,
    role: Role,
    epoch: u64,
) -> Result<(&PeerConfig, Verdict), NoAnswer> {
    let body = &body(app, role, epoch);
    app.cfg
        .coordinator
        .first_answer("hello", Duration::from_secs(10), |c| async move {
            c.post_json::<_, Verdict>("/v1/ha/hello", body).await
        })
        .await
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
    let (pbs, v) = hello_first(app, Role::Backup, known_epoch(app))
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
            "the record's epoch {epoch} is ahead of the coordinator {}'s epoch {}: refused",
            pbs.name, v.epoch
        )));
    }
    Ok(())
}

/// `POST /v1/ha/promote` at `epoch`: the first coordinator that answers must say this clone
/// is MAIN at exactly that epoch. Returns that coordinator's name (the promotion is
/// confirmed to it).
pub(crate) async fn check_promote(app: &App, epoch: u64) -> Result<String, ApiError> {
    let (pbs, v) = hello_first(app, Role::Backup, known_epoch(app))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot confirm the promotion with the coordinator: {e}"),
            )
        })?;
    if v.role != Role::Main {
        return Err(ApiError::conflict(format!(
            "the coordinator {} did not grant this clone MAIN (it says {} {} at epoch {}): promotion at epoch {epoch} refused",
            pbs.name, v.role, v.status, v.epoch
        )));
    }
    Epoch::check(epoch, v.epoch).map_err(|e| {
        ApiError::conflict(format!(
            "promotion at epoch {epoch} refused: the coordinator {} granted MAIN at epoch {} ({e})",
            pbs.name, v.epoch
        ))
    })?;
    Ok(pbs.name.clone())
}

/// After the role file says MAIN at `epoch`: tell the coordinator `pbs` that granted it
/// (best effort; it retries the promotion while it has no confirmation).
pub(crate) async fn confirm_promotion(app: &App, pbs: &str, epoch: u64) {
    let Some(p) = app.cfg.coordinator.get(pbs) else {
        return;
    };
    match hello_to(p, &body(app, Role::Main, epoch)).await {
        Ok(_) => tracing::info!(epoch, pbs, "promotion confirmed to the coordinator"),
        Err(e) => tracing::warn!(
            epoch,
            pbs,
            "could not confirm the promotion to the coordinator: {e}"
        ),
    }
}

/// At start: a hello to every listed coordinator, to learn the epoch (the highest any of
/// them knows) and our status (the first that answers); promote if one of them already
/// granted this clone MAIN (a promotion that did not happen before a crash or restart) and
/// the first that answers confirms it.
pub(crate) async fn startup_hello(app: &Arc<App>) {
    let body = body(app, Role::Backup, known_epoch(app));
    let mut verdicts = Vec::new();
    for p in app.cfg.coordinator.iter() {
        match hello_to(p, &body).await {
            Ok(v) => verdicts.push((p.name.clone(), v)),
            Err(e) => tracing::warn!(pbs = %p.name, "coordinator hello: {e}"),
        }
    }
    let Some((_, first)) = verdicts.first() else {
        return;
    };
    let status = first.status;
    let top = verdicts.iter().map(|(_, v)| v.epoch).max().unwrap_or(0);
    app.status.update(|s| {
        s.epoch = s.epoch.max(top);
        s.status = status;
    });
    let Some((pbs, v)) = verdicts.iter().find(|(_, v)| v.role == Role::Main) else {
        return;
    };
    // A node that stepped down at this very epoch (a switchover in progress: the
    // coordinator still holds it as MAIN until the target has verified the final
    // generation) does not take the role back; a grant newer than anything it knew (it
    // died before its promotion) is promoted now.
    let stepped_down = wire::ha::RoleFile::load(&app.cfg.role_path())
        .ok()
        .flatten()
        .is_some_and(|r| r.role == Role::Backup && r.epoch >= v.epoch);
    if stepped_down {
        tracing::warn!(
            epoch = v.epoch,
            pbs = %pbs,
            "the coordinator still holds this node as MAIN, but it stepped down at this epoch: staying BACKUP"
        );
    } else {
        tracing::warn!(
            epoch = v.epoch,
            pbs = %pbs,
            "the coordinator granted this clone MAIN and waits for its promotion: promoting now"
        );
        if let Err(e) = crate::takeover::promote_granted(app, v.epoch).await {
            tracing::error!("promotion at start: {}", e.message);
        }
    }
}
