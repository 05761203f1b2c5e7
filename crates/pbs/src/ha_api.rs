//! The coordinator's HTTP API (`/v1/ha/...`) and the dashboard (`GET /`), all behind the
//! token layer like every other route of the PBS.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use wire::ha::{
    Hello, NodeStatus, NodeView, RejoinRequest, SwitchoverRequest, SwitchoverResult,
    TakeoverRequest, Verdict,
};
use wire::server::ApiError;
use wire::Peer;

use crate::coord;
use crate::daemon::App;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/ha/hello", post(hello))
        .route("/v1/ha/takeover", post(takeover))
        .route("/v1/ha/nodes", get(nodes))
        .route("/v1/ha/switchover", post(switchover))
        .route("/v1/ha/balance", post(balance))
        .route("/v1/ha/rejoin", post(rejoin))
}

fn admin_only(peer: &Peer, what: &str) -> Result<(), ApiError> {
    if peer.0 == "admin" {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            format!("peer {} may not {what} (only admin)", peer.0),
        ))
    }
}

async fn switchover(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<SwitchoverRequest>,
) -> Result<Json<SwitchoverResult>, ApiError> {
    admin_only(&peer, "switch over")?;
    Ok(Json(crate::failover::switchover(&app, &req.to).await?))
}

async fn balance(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<SwitchoverResult>, ApiError> {
    admin_only(&peer, "balance")?;
    Ok(Json(crate::failover::balance(&app).await?))
}

async fn rejoin(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<RejoinRequest>,
) -> Result<Json<NodeView>, ApiError> {
    admin_only(&peer, "rejoin a node")?;
    let a = app.clone();
    let node = req.node.clone();
    blocking(move || a.coord.rejoin(&node)).await?;
    crate::daemon::push_latest(&app, &req.node);
    views(&app)
        .into_iter()
        .find(|n| n.name == req.node)
        .map(Json)
        .ok_or_else(|| ApiError::internal("the node vanished"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

async fn hello(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(h): Json<Hello>,
) -> Result<Json<Verdict>, ApiError> {
    app.coord.check_peer(&peer.0, &h.node)?;
    let a = app.clone();
    let node = h.node.clone();
    let v = blocking(move || a.coord.hello(&h)).await?;
    // A rejoining clone that (re)starts: restore the latest generation there.
    if v.status == NodeStatus::Rejoining {
        crate::daemon::push_latest(&app, &node);
    }
    Ok(Json(v))
}

async fn takeover(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<TakeoverRequest>,
) -> Result<Json<Verdict>, ApiError> {
    app.coord.check_peer(&peer.0, &req.node).map_err(|e| {
        if e.status == axum::http::StatusCode::NOT_FOUND {
            ApiError::conflict(format!("unknown node {:?}: not a clone", req.node))
        } else {
            e
        }
    })?;
    crate::grant::authorize(&app, &peer.0, &req).await?;
    // Only the automatic failover is recorded as `auto`.
    let mut req = req;
    req.password = None;
    if req.by.as_deref() != Some("page") {
        req.by = Some("api".into());
    }
    let req_node = req.node.clone();
    let a = app.clone();
    let g = blocking(move || {
        let server = a.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        a.coord.takeover(&req, &server)
    })
    .await?;
    if let Some(old) = g.old {
        app.coord.tell_to_step_down(&old);
    }
    crate::failover::new_clone(&app, g.new_clone);
    if peer.0 == "admin" {
        // The clone did not ask: promote it (a clone's own request promotes on the answer).
        let (a, node, epoch) = (app.clone(), req_node, g.verdict.epoch);
        tokio::spawn(async move {
            if let Err(e) = crate::failover::promote_clone(&a, &node, epoch).await {
                tracing::error!("{}", e.message);
            }
        });
    }
    Ok(Json(g.verdict))
}

fn views(app: &App) -> Vec<NodeView> {
    let server = app.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    coord::views(&app.coord.snapshot(), &server)
}

async fn nodes(State(app): State<Arc<App>>) -> Json<Vec<NodeView>> {
    Json(views(&app))
}

async fn dashboard(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let report = crate::daemon::status(State(app.clone())).await?.0;
    let st = app.coord.snapshot();
    Ok(Html(crate::dashboard::render(&st, &views(&app), &report)))
}
