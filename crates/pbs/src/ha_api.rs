//! The coordinator's HTTP API (`/v1/ha/...`) and the dashboard (`GET /`), all behind the
//! token layer like every other route of the PBS. The coordinator's refusals become HTTP
//! answers here: an unknown node 404, a peer speaking for another node 403, every other
//! refusal 409 with its reason.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use wire::ha::{
    Hello, NodeView, RejoinRequest, SwitchoverRequest, SwitchoverResult, TakeoverRequest, Verdict,
};
use wire::server::ApiError;
use wire::Peer;

use crate::coord::{self, CoordError, GrantKind, Refusal};
use crate::daemon::App;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r {
            Refusal::UnknownNode(_) => StatusCode::NOT_FOUND,
            Refusal::MayNotSpeakFor { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, r.to_string())
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> ApiError {
        match e {
            CoordError::Refused(r) => r.into(),
            e @ CoordError::Save(_) => ApiError::internal(e.to_string()),
            CoordError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

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
            StatusCode::FORBIDDEN,
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
    // A node of no group has no [[importer]] entry to rejoin as.
    let effects = blocking(move || {
        a.coord_of(&node)
            .map_err(|_| Refusal::NoImporterEntry(node.clone()))?
            .rejoin(&node)
    })
    .await?;
    crate::effects::run(&app, effects).await?;
    views(&app)
        .await?
        .into_iter()
        .find(|n| n.name == req.node)
        .map(Json)
        .ok_or_else(|| ApiError::internal("the node vanished"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoordError> + Send + 'static,
) -> Result<T, ApiError> {
    wire::blocking(move || f().map_err(ApiError::from)).await
}

async fn hello(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(h): Json<Hello>,
) -> Result<Json<Verdict>, ApiError> {
    app.coord_of(&h.node)?.check_peer(&peer.0, &h.node)?;
    let a = app.clone();
    let (v, effects) = blocking(move || a.coord_of(&h.node)?.hello(&h)).await?;
    // A rejoining clone that (re)starts: the latest generation is pushed there.
    crate::effects::run(&app, effects).await?;
    Ok(Json(v))
}

async fn takeover(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<TakeoverRequest>,
) -> Result<Json<Verdict>, ApiError> {
    app.coord_of_clone(&req.node)?
        .check_peer(&peer.0, &req.node)?;
    crate::grant::authorize(&app, &peer.0, &req).await?;
    // Only the automatic failover is recorded as `auto`.
    let mut req = req;
    req.password = None;
    if req.by.as_deref() != Some("page") {
        req.by = Some("api".into());
    }
    // With the admin token the clone did not ask: the PBS promotes it (a clone's own
    // request promotes on the answer).
    let kind = GrantKind::Takeover {
        promote: peer.0 == "admin",
    };
    let a = app.clone();
    let (g, effects) = blocking(move || {
        let server = a.status.get();
        a.coord_of(&req.node)?.grant(&req, &server, kind)
    })
    .await?;
    // The old main told to step down, a new clone asked for, the promotion: after the answer.
    let a = app.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::effects::run(&a, effects).await {
            tracing::error!("{}", e.message);
        }
    });
    Ok(Json(g.verdict))
}

/// Every group's state as stored now (etcd: read again; 503 when it cannot be reached).
async fn states(app: &Arc<App>) -> Result<Vec<coord::CoordState>, ApiError> {
    let a = app.clone();
    blocking(move || a.coords.iter().map(|c| c.fresh()).collect()).await
}

async fn views(app: &Arc<App>) -> Result<Vec<NodeView>, ApiError> {
    let server = app.status.get();
    Ok(states(app)
        .await?
        .iter()
        .flat_map(|st| coord::views(st, &server))
        .collect())
}

async fn nodes(State(app): State<Arc<App>>) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(views(&app).await?))
}

async fn dashboard(State(app): State<Arc<App>>) -> Result<Html<String>, ApiError> {
    let report = crate::daemon::status(State(app.clone())).await?.0;
    let states = states(&app).await?;
    let server = app.status.get();
    let views: Vec<_> = states
        .iter()
        .flat_map(|st| coord::views(st, &server))
        .collect();
    let groups: Vec<_> = app
        .coords
        .iter()
        .zip(&states)
        .map(|(c, state)| crate::dashboard::GroupView {
            source: c.group.as_deref(),
            state,
        })
        .collect();
    Ok(Html(crate::dashboard::render(&groups, &views, &report)))
}
