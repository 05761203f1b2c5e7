//! Runs what a coordinator transition asks for (`coord::Effect`), once its new state is
//! saved: the HTTP calls and hooks the state machine itself never makes.

use std::sync::Arc;
use std::time::Duration;

use wire::server::ApiError;

use crate::coord::Effect;
use crate::daemon::App;

/// Runs `effects` in order. Telling the old main to step down, pushing to a clone and the
/// `on_clone_needed` hook go on in the background; a promotion is awaited, and the first
/// that failed is the error.
pub(crate) async fn run(app: &Arc<App>, effects: Vec<Effect>) -> Result<(), ApiError> {
    let mut failed = None;
    for e in effects {
        match e {
            Effect::StepDown(node) => step_down(app, &node),
            Effect::PushLatest(node) => crate::daemon::push_latest(app, &node),
            Effect::RunCloneHook(needed) => crate::failover::run_clone_hook(app, needed),
            Effect::Promote { node, epoch } => {
                if let Err(e) = crate::failover::promote_clone(app, &node, epoch).await {
                    failed.get_or_insert(e);
                }
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Tells the old main to step down (best effort, in the background).
fn step_down(app: &App, old: &str) {
    let Some(peer) = app.coord_of(old).ok().and_then(|c| c.exporter_peer(old)) else {
        return;
    };
    tokio::spawn(async move {
        let r = async {
            let c = peer
                .client(Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            c.send(c.request(axum::http::Method::POST, "/rest/ha/status?change=BACKUP"))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match r {
            Ok(_) => tracing::info!(node = %peer.name, "old main told to step down"),
            Err(e) => {
                tracing::warn!(node = %peer.name, "could not tell the old main to step down: {e}")
            }
        }
    });
}
