//! Takeover on a clone: the page (`GET`/`POST /takeover`, plain HTML, outside the token
//! layer: the password protects the action), the API (`POST /v1/takeover`) and the seeds'
//! HA API (`/rest/ha/status`).
//!
//! Gates, in order: the password (argon2 PHC hash in `[takeover] password_hash`; after
//! `max_failures` wrong ones within a minute every password is refused for `lockout_secs`),
//! no import running, the last restore verified (both skipped with `force`), then the
//! coordinator's answer (which applies the newer-clone gate unless forced, and refuses a
//! takeover if the epoch moved since this clone last saw it). On success: the promote hook
//! (PULLBACK_EPOCH, PULLBACK_RESTORE_DIR), `state_dir/role.json` = MAIN at the new epoch,
//! the answer, then the process exits 0 so the supervisor starts the exporter here.

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use wire::ha::{NodeView, PromoteRequest, Role, RoleFile, TakeoverRequest, Verdict};
use wire::server::ApiError;
use wire::Peer;

use crate::guard::{Caller, Guard};
use crate::pbs_list::NoAnswer;
use crate::server::App;

/// Per node (this process): the password guard, promotion, exit signal.
#[derive(Default)]
pub struct TakeoverState {
    guard: Guard,
    promoted: AtomicBool,
    pub shutdown: Arc<tokio::sync::Notify>,
}

impl TakeoverState {
    /// After a successful takeover this node receives nothing more.
    pub fn refuse_if_promoted(&self) -> Result<(), ApiError> {
        if self.promoted.load(Ordering::SeqCst) {
            return Err(ApiError::conflict(
                "this node took over (MAIN): it imports nothing more",
            ));
        }
        Ok(())
    }
}

/// `importer hash-password`: a password on stdin → its argon2id PHC string.
pub fn hash_password_cli() -> Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .context("reading the password from stdin")?;
    let pw = input.lines().next().unwrap_or("");
    if pw.is_empty() {
        bail!("no password on stdin (e.g. `read -rs P; printf '%s\\n' \"$P\" | importer hash-password`)");
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    wire::outln!("{hash}")?;
    Ok(ExitCode::SUCCESS)
}

/// Why a takeover did not happen, as an HTTP status and a reason.
type Refusal = ApiError;

fn refuse(status: StatusCode, msg: impl Into<String>) -> Refusal {
    ApiError::new(status, msg)
}

async fn check_password(app: &App, caller: &Caller, password: &str) -> Result<(), Refusal> {
    app.takeover
        .guard
        .check_password(&app.cfg.takeover, caller, password)
        .await
}

/// The whole takeover after the password: local gates, coordinator, promote, role file,
/// exit. Returns the new epoch.
async fn take_over(app: &Arc<App>, force: bool, by: &str, password: &str) -> Result<u64, Refusal> {
    app.takeover.refuse_if_promoted()?;
    // Holding the apply lock keeps imports out until the process exits.
    let _imports = if force {
        app.apply_lock.lock().await
    } else {
        app.apply_lock.try_lock().map_err(|_| {
            refuse(
                StatusCode::CONFLICT,
                "an import is running: wait for it, or force",
            )
        })?
    };
    app.takeover.refuse_if_promoted()?;
    let st = app.status.get();
    if !force {
        if let Some(g) = &st.importing {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("an import of {g} is running: wait for it, or force"),
            ));
        }
        match (&st.last_valid, st.last_import_ok) {
            (None, _) => {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    "no verified restore on this clone yet: nothing to take over with (force to do it anyway)",
                ))
            }
            (Some(v), _) if !v.verified => {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("the restore of {} is not verified (force to take over anyway)", v.generation),
                ))
            }
            (Some(v), Some(false)) => {
                let why = st
                    .last_failure
                    .as_ref()
                    .map(|f| format!("{}: {}", f.generation, f.reason))
                    .unwrap_or_else(|| "unknown reason".into());
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "the last restore is not verified ({why}); the clone holds {} (force to take over with it)",
                        v.generation
                    ),
                ));
            }
            _ => {}
        }
    }
    let req = TakeoverRequest {
        node: app.cfg.name.clone(),
        force,
        epoch: Some(st.epoch),
        by: Some(by.to_string()),
        password: Some(password.to_string()),
    };
    // The first coordinator that answers decides; a refusal is final (no asking the
    // next one for a yes), only one that cannot be reached is skipped.
    let req = &req;
    let (pbs, v) = app
        .cfg
        .coordinator
        .first_answer("takeover", Duration::from_secs(30), |c| async move {
            c.post_json::<_, Verdict>("/v1/ha/takeover", req).await
        })
        .await
        .map_err(|e| match e {
            NoAnswer::Refused { pbs, error }
                if error.status().is_some_and(|s| s.is_client_error()) =>
            {
                refuse(
                    StatusCode::CONFLICT,
                    format!("the coordinator {pbs} refused: {}", server_message(&error)),
                )
            }
            e => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the coordinator did not answer: {e}"),
            ),
        })?;
    if v.role != Role::Main {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "the coordinator {} answered {} {}",
                pbs.name, v.role, v.status
            ),
        ));
    }
    tracing::warn!(
        epoch = v.epoch,
        force,
        pbs = %pbs.name,
        "takeover granted by the coordinator"
    );
    promote(app, v.epoch, &pbs.name).await
}

/// After the coordinator granted MAIN at `epoch`: the promote hook, the role file, the
/// promoted flag, and the exit (a role change is a restart). The caller holds the apply
/// lock. Shared by the takeover and by the coordinator's `POST /v1/ha/promote`; `pbs` is
/// the coordinator that granted it (the promotion is confirmed to it).
async fn promote(app: &Arc<App>, epoch: u64, pbs: &str) -> Result<u64, Refusal> {
    let v = Verdict {
        role: Role::Main,
        epoch,
        status: wire::ha::NodeStatus::Leader,
    };
    let mut promote_error = None;
    if let Some(hook) = &app.cfg.hooks.promote {
        let env = vec![
            ("PULLBACK_EPOCH".to_string(), v.epoch.to_string()),
            (
                "PULLBACK_RESTORE_DIR".to_string(),
                app.cfg.restore_dir.display().to_string(),
            ),
        ];
        let log = app
            .cfg
            .state_dir
            .join("logs")
            .join(format!("promote-{}.log", v.epoch));
        let timeout = Duration::from_secs(app.cfg.hooks.timeout_secs);
        match wire::run_hook(hook, &[], &env, &log, timeout).await {
            Ok(o) if o.success() => {}
            Ok(o) => {
                promote_error = Some(format!(
                    "promote hook failed ({}): {}",
                    o.status, o.log_tail
                ))
            }
            Err(e) => promote_error = Some(format!("promote hook: {e}")),
        }
    }
    // The coordinator made this node MAIN: the role file says so whatever the hook did.
    RoleFile {
        role: Role::Main,
        epoch: v.epoch,
        fenced: false,
    }
    .save(&app.cfg.role_path())
    .map_err(|e| ApiError::internal(format!("cannot write the role file: {e}")))?;
    app.takeover.promoted.store(true, Ordering::SeqCst);
    app.status.update(|s| {
        s.role = Role::Main;
        s.status = wire::ha::NodeStatus::Leader;
        s.epoch = v.epoch;
    });
    crate::coordinator::confirm_promotion(app, pbs, v.epoch).await;
    // A role change is a restart: exit 0 once the answer is sent.
    app.takeover.shutdown.notify_one();
    if let Some(e) = promote_error {
        tracing::error!("{e}");
        return Err(ApiError::internal(format!(
            "this node is MAIN at epoch {} but {e}; fix the software and run the promote hook by hand",
            v.epoch
        )));
    }
    Ok(v.epoch)
}

fn server_message(e: &wire::WireError) -> String {
    match e {
        wire::WireError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The nodes as the first coordinator that answers lists them, and its name.
async fn other_nodes(app: &App) -> Result<(String, Vec<NodeView>), String> {
    app.cfg
        .coordinator
        .first_answer("the nodes", Duration::from_secs(3), |c| async move {
            c.get_json::<Vec<NodeView>>("/v1/ha/nodes").await
        })
        .await
        .map(|(p, nodes)| (p.name.clone(), nodes))
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- routes

pub fn api_routes(app: &Arc<App>) -> Router {
    Router::new()
        .route("/v1/takeover", post(api_takeover))
        .route("/v1/ha/promote", post(coordinator_promote))
        .route("/rest/ha/status", get(ha_get).post(ha_post))
        .with_state(app.clone())
}

pub fn page_routes(app: &Arc<App>) -> Router {
    Router::new()
        .route("/takeover", get(page).post(page_post))
        .with_state(app.clone())
}

#[derive(Deserialize)]
struct ApiBody {
    password: String,
    #[serde(default)]
    force: bool,
}

async fn api_takeover(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(b): Json<ApiBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_password(&app, &Caller::Api(peer.0), &b.password).await?;
    let epoch = take_over(&app, b.force, "api", &b.password).await?;
    Ok(Json(serde_json::json!({ "role": "MAIN", "epoch": epoch })))
}

/// `POST /v1/ha/promote`: a coordinator (token peer = a `[coordinator] name`) granted this
/// clone MAIN (switchover, automatic failover). No password: the token is the coordinator's.
/// Waits for a running import (force semantics), then promotes.
async fn coordinator_promote(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<PromoteRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.require_pbs(&peer, "promote this clone")?;
    let epoch = promote_granted(&app, req.epoch).await?;
    Ok(Json(serde_json::json!({ "role": "MAIN", "epoch": epoch })))
}

/// A promotion the coordinator granted at `epoch` (its `POST /v1/ha/promote`, or found at
/// start): waits for a running import, checks the grant with the coordinator, promotes.
pub(crate) async fn promote_granted(app: &Arc<App>, epoch: u64) -> Result<u64, Refusal> {
    app.takeover.refuse_if_promoted()?;
    let _imports = app.apply_lock.lock().await;
    app.takeover.refuse_if_promoted()?;
    let pbs = crate::coordinator::check_promote(app, epoch).await?;
    tracing::warn!(epoch, pbs = %pbs, "the coordinator promotes this clone");
    promote(app, epoch, &pbs).await
}

async fn ha_get(State(app): State<Arc<App>>) -> String {
    if app.takeover.promoted.load(Ordering::SeqCst) {
        Role::Main.to_string()
    } else {
        Role::Backup.to_string()
    }
}

#[derive(Deserialize)]
struct Change {
    change: Option<String>,
}

/// The seeds' `change=MAIN` is a takeover: it needs the password too, as a JSON body
/// `{"password": ...}` (the token alone, kept in `importer.toml`, is not enough).
async fn ha_post(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<Change>,
    body: Bytes,
) -> Result<String, ApiError> {
    match q.change.as_deref().and_then(Role::parse) {
        None => Err(ApiError::bad_request("change must be MAIN or BACKUP")),
        Some(Role::Backup) => Ok(Role::Backup.to_string()),
        Some(Role::Main) => {
            let b: Option<ApiBody> = serde_json::from_slice(&body).ok();
            let Some(b) = b else {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    r#"change=MAIN is a takeover: send the takeover password as the JSON body {"password": "..."}"#,
                ));
            };
            check_password(&app, &Caller::Api(peer.0), &b.password).await?;
            take_over(&app, b.force, "api", &b.password).await?;
            Ok(Role::Main.to_string())
        }
    }
}

#[derive(Deserialize)]
struct PageForm {
    #[serde(default)]
    password: String,
    force: Option<String>,
    #[serde(default)]
    form_token: String,
}

async fn page(State(app): State<Arc<App>>) -> Html<String> {
    Html(render(&app, None).await)
}

async fn page_post(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<PageForm>,
) -> (StatusCode, Html<String>) {
    let force = f.force.is_some();
    let guard = &app.takeover.guard;
    let r = async {
        crate::guard::same_origin(&headers)?;
        guard.use_form_token(&f.form_token)?;
        check_password(&app, &Caller::Page(addr.ip()), &f.password).await?;
        take_over(&app, force, "page", &f.password).await
    }
    .await;
    let (code, msg) = match r {
        Ok(epoch) => (
            StatusCode::OK,
            format!("Takeover done: this node is MAIN at epoch {epoch}. It now restarts as the main node (exporter)."),
        ),
        Err(e) => (e.status, format!("Takeover refused: {}", e.message)),
    };
    (code, Html(render(&app, Some((code, msg))).await))
}

async fn render(app: &App, result: Option<(StatusCode, String)>) -> String {
    let st = app.status.get();
    let (nodes_from, nodes) = match other_nodes(app).await {
        Ok((from, nodes)) => (Some(from), Ok(nodes)),
        Err(e) => (None, Err(e)),
    };
    crate::takeover_page::render(&crate::takeover_page::View {
        name: &app.cfg.name,
        status: &st,
        nodes: &nodes,
        nodes_from: nodes_from.as_deref(),
        result: result.as_ref(),
        window: st
            .last_valid
            .as_ref()
            .map(|v| crate::takeover_page::data_loss_window(&v.taken_at)),
        form_token: &app.takeover.guard.form_token(),
    })
}
