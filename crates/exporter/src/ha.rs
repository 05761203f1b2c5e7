//! The exporter's role: every node starts as BACKUP and exports only once the
//! coordinator (a PBS) grants it MAIN at an epoch. The role is kept durably in
//! `state_dir/role.json`.
//!
//! - At start and before each export the exporter says hello. MAIN at epoch E: it exports
//!   at E. BACKUP or Broken: it runs its demote hook (once), writes role BACKUP and refuses
//!   to export. No coordinator answers: it does not export and shows
//!   "Leader (single node)" while answering BACKUP on the HA API (a node already
//!   confirmed since its start keeps exporting: the PBS still fences its notifications).
//! - A 409 on notify (stale epoch, Broken) also demotes.
//! - HA API as the seeds: `GET /rest/ha/status` → `MAIN` / `BACKUP`;
//!   `POST /rest/ha/status?change=BACKUP` on a MAIN demotes and exits 0 (a role change is
//!   a restart); `change=MAIN` is refused (409): only the coordinator grants MAIN.
//! - Switchover: `POST /rest/ha/status?change=BACKUP&final=true` (sent by the coordinator)
//!   runs the demote hook, one last export, waits for a PBS to commit it, answers
//!   `{"role": "BACKUP", "tx", "generation"}`, writes role BACKUP and exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use wire::ha::{Hello, NodeStatus, Role, RoleFile, ShownStatus, Verdict, SINGLE_NODE};
use wire::server::ApiError;

use crate::daemon::App;

/// The role this process holds now.
#[derive(Clone, Copy, Debug)]
pub struct HaState {
    pub role: Role,
    pub epoch: u64,
    /// A coordinator answered since this process started.
    pub confirmed: bool,
}

enum Answer {
    Verdict(Verdict),
    Unreachable(String),
}

fn role_file(app: &App) -> Result<RoleFile> {
    Ok(RoleFile::load(&app.cfg.role_path())?.unwrap_or(RoleFile {
        role: Role::Backup,
        epoch: app.cfg.epoch,
        fenced: false,
    }))
}

/// Updates the in-memory role and the status file.
fn set(app: &App, role: Role, epoch: u64, status: ShownStatus, confirmed: bool) {
    {
        let mut h = app.ha.lock().unwrap_or_else(|p| p.into_inner());
        h.role = role;
        h.epoch = epoch;
        h.confirmed = h.confirmed || confirmed;
    }
    app.status.update(|s| {
        s.role = role;
        s.epoch = epoch;
        s.status = status;
    });
}

async fn say_hello(app: &App) -> Result<Answer> {
    let rf = role_file(app)?;
    let body = Hello {
        node: app.cfg.name.clone(),
        epoch: rf.epoch,
        role: rf.role,
    };
    let mut errors = Vec::new();
    for p in &app.cfg.pbs {
        let client = p
            .client(Duration::from_secs(10))
            .map_err(|e| anyhow!("{e}"))?;
        match client.post_json::<_, Verdict>("/v1/ha/hello", &body).await {
            Ok(v) => return Ok(Answer::Verdict(v)),
            // The coordinator answered but refused the question: a configuration error.
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                bail!("the coordinator {} refused our hello: {e}", p.name)
            }
            Err(e) => errors.push(format!("{}: {e}", p.name)),
        }
    }
    if errors.is_empty() {
        errors.push("no [[pbs]] configured".into());
    }
    Ok(Answer::Unreachable(errors.join("; ")))
}

/// Says hello and applies the verdict. `Ok(epoch)` when this node is MAIN and may export.
pub async fn check_role(app: &Arc<App>) -> Result<u64> {
    match say_hello(app).await? {
        Answer::Verdict(v) if v.role == Role::Main => {
            let rf = role_file(app)?;
            let granted = RoleFile {
                role: Role::Main,
                epoch: v.epoch,
                fenced: false,
            };
            if rf != granted {
                granted.save(&app.cfg.role_path())?;
                tracing::info!(epoch = v.epoch, "the coordinator granted MAIN");
            }
            set(
                app,
                Role::Main,
                v.epoch,
                ShownStatus::Coordinated(NodeStatus::Leader),
                true,
            );
            Ok(v.epoch)
        }
        Answer::Verdict(v) => {
            demote(app, v.epoch, v.status).await;
            bail!(
                "the coordinator says this node is {} ({}) at epoch {}: not exporting",
                v.role,
                v.status,
                v.epoch
            )
        }
        Answer::Unreachable(e) => {
            let h = *app.ha.lock().unwrap_or_else(|p| p.into_inner());
            if h.confirmed && h.role == Role::Main {
                tracing::warn!(
                    "no coordinator answered ({e}); exporting as confirmed MAIN at epoch {}",
                    h.epoch
                );
                return Ok(h.epoch);
            }
            if h.confirmed {
                // Demoted earlier in this process: it stays what it was told.
                bail!("no coordinator answered ({e}): not exporting (this node is BACKUP)")
            }
            set(app, Role::Backup, h.epoch, ShownStatus::SingleNode, false);
            bail!("no coordinator answered ({e}): not exporting ({SINGLE_NODE})")
        }
    }
}

/// At start: one hello; while no coordinator answers, ask again every few seconds.
pub async fn startup_hello(app: &Arc<App>) -> Result<()> {
    match check_role(app).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!("{e:#}");
            let unconfirmed = !app.ha.lock().unwrap_or_else(|p| p.into_inner()).confirmed;
            if unconfirmed && app.status.read(|s| s.status == ShownStatus::SingleNode) {
                let a = app.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let r = check_role(&a).await;
                        let still_single = a.status.read(|s| s.status == ShownStatus::SingleNode);
                        if r.is_ok() || !still_single {
                            break;
                        }
                    }
                });
            }
            Ok(())
        }
    }
}

/// Steps down, fenced (a takeover made another node MAIN, or the coordinator says this one
/// is Broken): the demote hook (once: not when the role file already says BACKUP), role
/// file BACKUP and fenced (the launcher keeps this node on its idle exporter until it is
/// rejoined), status `status`.
pub async fn demote(app: &App, epoch: u64, status: NodeStatus) {
    let _one = app.demote_lock.lock().await;
    let rf = RoleFile::load(&app.cfg.role_path()).ok().flatten();
    let needs_hook = rf.is_none_or(|r| r.role != Role::Backup);
    if needs_hook {
        run_demote_hook(app, epoch).await;
    }
    let keep = rf.map_or(epoch, |r| r.epoch.max(epoch));
    let backup = RoleFile {
        role: Role::Backup,
        epoch: keep,
        fenced: true,
    };
    if let Err(e) = backup.save(&app.cfg.role_path()) {
        tracing::error!("cannot write the role file: {e}");
    }
    set(
        app,
        Role::Backup,
        keep,
        ShownStatus::Coordinated(status),
        true,
    );
}

/// The demote hook (stops the software taking writes), logged; failures are logged only.
async fn run_demote_hook(app: &App, epoch: u64) {
    {
        if let Some(hook) = &app.cfg.hooks.demote {
            let log = app
                .cfg
                .state_dir
                .join("logs")
                .join(format!("demote-{epoch}.log"));
            let env = vec![("PULLBACK_EPOCH".to_string(), epoch.to_string())];
            match wire::run_hook(
                hook,
                &[],
                &env,
                &log,
                Duration::from_secs(app.cfg.hooks.timeout_secs),
            )
            .await
            {
                Ok(o) if o.success() => tracing::warn!(epoch, "demote hook done"),
                Ok(o) => {
                    tracing::error!(epoch, "demote hook failed ({}): {}", o.status, o.log_tail)
                }
                Err(e) => tracing::error!(epoch, "demote hook: {e}"),
            }
        }
    }
}

/// A planned switchover, asked by the coordinator (`change=BACKUP&final=true`): the demote
/// hook (no more writes), one last export committed by a PBS, then role file BACKUP and
/// exit 0. On failure the node stays MAIN (its software was demoted: the coordinator
/// reports the failure to the operator).
async fn final_export(app: &Arc<App>) -> Result<serde_json::Value, ApiError> {
    let _one = app.demote_lock.lock().await;
    let h = *app.ha.lock().unwrap_or_else(|p| p.into_inner());
    tracing::warn!(
        epoch = h.epoch,
        "switchover: demote hook, then a final export"
    );
    run_demote_hook(app, h.epoch).await;
    let run = crate::daemon::export_now(app.clone()).await;
    if run.state != wire::phase::RunPhase::Committed {
        return Err(ApiError::conflict(format!(
            "the final export {} failed: {}",
            run.tx,
            run.error.as_deref().unwrap_or("unknown reason")
        )));
    }
    let rf = RoleFile::load(&app.cfg.role_path()).ok().flatten();
    let keep = rf.map_or(h.epoch, |r| r.epoch.max(h.epoch));
    // Not fenced: the node is a clone (Follower) at once, so its launcher runs its
    // importer next.
    if let Err(e) = (RoleFile {
        role: Role::Backup,
        epoch: keep,
        fenced: false,
    })
    .save(&app.cfg.role_path())
    {
        tracing::error!("cannot write the role file: {e}");
    }
    set(
        app,
        Role::Backup,
        keep,
        ShownStatus::Coordinated(NodeStatus::Follower),
        true,
    );
    tracing::warn!(generation = ?run.committed_as, "switchover: final export committed; stepping down");
    Ok(serde_json::json!({
        "role": "BACKUP",
        "tx": run.tx,
        "generation": run.committed_as,
    }))
}

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/rest/ha/status", get(get_status).post(post_status))
}

async fn get_status(State(app): State<Arc<App>>) -> String {
    app.ha
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .role
        .to_string()
}

#[derive(Deserialize)]
struct Change {
    change: Option<String>,
    /// Switchover: a final export before stepping down (answers JSON).
    #[serde(default, rename = "final")]
    final_export: bool,
}

async fn post_status(
    State(app): State<Arc<App>>,
    Query(q): Query<Change>,
) -> Result<(StatusCode, String), ApiError> {
    if q.final_export && q.change.as_deref() == Some("BACKUP") {
        let h = *app.ha.lock().unwrap_or_else(|p| p.into_inner());
        if h.role != Role::Main {
            return Err(ApiError::conflict(format!(
                "this node is not MAIN ({}): no final export",
                h.role
            )));
        }
        let v = final_export(&app).await?;
        app.shutdown.notify_one();
        return Ok((StatusCode::OK, v.to_string()));
    }
    let want = q
        .change
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| ApiError::bad_request("change must be MAIN or BACKUP"))?;
    match want {
        Role::Main => Err(ApiError::conflict(
            "only the coordinator grants MAIN: ask for a takeover on a clone",
        )),
        Role::Backup => {
            let h = *app.ha.lock().unwrap_or_else(|p| p.into_inner());
            let file_main = RoleFile::load(&app.cfg.role_path())
                .ok()
                .flatten()
                .is_some_and(|r| r.role == Role::Main);
            if h.role == Role::Main || file_main {
                demote(&app, h.epoch, NodeStatus::Follower).await;
                // A role change is a restart: exit 0 once this answer is sent.
                app.shutdown.notify_one();
            }
            Ok((StatusCode::OK, Role::Backup.to_string()))
        }
    }
}
