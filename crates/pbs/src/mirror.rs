//! A second PBS: `[[mirror]]` sources are pulled from another PBS with the one engine,
//! generation for generation (the same numbers, epochs, times and contents, every byte
//! checked on the way in), so
//! that losing one PBS loses no history. The upstream tells its `[[downstream]]`s of every
//! new generation; each mirror also looks at start and on its `schedule`. What a mirror
//! pulls is pushed to its own `[[importer]]`s like any committed generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use archive::{GenId, Seq, SourceName};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use wire::api::Notify;
use wire::server::ApiError;
use wire::Peer;

use crate::config::MirrorConfig;
use crate::daemon::{now_rfc3339, App, Event};

/// One wake-up bell per mirrored source: a notification, the schedule and the start ring
/// it; the source's job then pulls every generation newer than the newest it holds.
#[derive(Default)]
pub(crate) struct Mirrors {
    bells: HashMap<String, Arc<tokio::sync::Notify>>,
}

impl Mirrors {
    pub(crate) fn new(mirrors: &[MirrorConfig]) -> Mirrors {
        Mirrors {
            bells: mirrors
                .iter()
                .map(|m| (m.source.clone(), Arc::new(tokio::sync::Notify::new())))
                .collect(),
        }
    }

    fn ring(&self, source: &str) {
        if let Some(b) = self.bells.get(source) {
            b.notify_one();
        }
    }
}

/// Start one job per mirrored source (each looks at once) and the schedules.
pub(crate) async fn start(app: &Arc<App>) -> Result<Option<wire::cron::Cron>> {
    let cron = if app.cfg.mirrors.iter().any(|m| m.schedule.is_some()) {
        Some(wire::cron::Cron::new().await?)
    } else {
        None
    };
    for m in app.cfg.mirrors.clone() {
        let Some(bell) = app.mirrors.bells.get(&m.source).cloned() else {
            continue;
        };
        if let (Some(c), Some(expr)) = (&cron, &m.schedule) {
            let b = bell.clone();
            c.add("mirror.schedule", expr, move || {
                let b = b.clone();
                async move { b.notify_one() }
            })
            .await?;
        }
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                catch_up(&app, &m).await;
                bell.notified().await;
            }
        });
    }
    if let Some(c) = &cron {
        c.start().await?;
    }
    Ok(cron)
}

/// Pull every generation of `m.source` that the upstream holds and is newer than the
/// newest held here, oldest first; record the outcome in the status.
async fn catch_up(app: &Arc<App>, m: &MirrorConfig) {
    let r = pull_newer(app, m).await;
    let name = m.source.clone();
    app.update(|s| {
        let st = s.sources.entry(name).or_default();
        let at = now_rfc3339();
        match &r {
            Ok(Some(gen)) => {
                st.last_success = Some(Event {
                    at,
                    generation: Some(gen.to_string()),
                    detail: format!("mirrored from {}", m.from.name),
                })
            }
            Ok(None) => {}
            Err(e) => {
                st.last_failure = Some(Event {
                    at,
                    generation: None,
                    detail: format!("mirror from {}: {e:#}", m.from.name),
                })
            }
        }
    });
    if let Err(e) = r {
        tracing::warn!(source = %m.source, upstream = %m.from.name, "mirror: {e:#}");
    }
}

/// The newest generation pulled, if any.
async fn pull_newer(app: &Arc<App>, m: &MirrorConfig) -> Result<Option<GenId>> {
    let source = SourceName::new(&m.source).map_err(anyhow::Error::msg)?;
    let client = m
        .from
        .client(Duration::from_secs(600))
        .map_err(|e| anyhow!("{e}"))?;
    let received = app.metrics.counter_with(
        "pullback_bytes_received_total",
        "Bytes received from the upstream PBS",
        &[("source", &m.source)],
    );
    let upstream = pull::HttpSource::new(client, "the upstream PBS", Some(received));
    let mut seqs = upstream.list(&source).await?;
    seqs.sort_unstable();
    let (a, s) = (app.clone(), source.clone());
    let have =
        wire::blocking(move || -> Result<_> { Ok(a.archive.latest(&s)?.map(|r| r.seq.0)) }).await?;
    let mut newest = None;
    for seq in seqs.into_iter().filter(|&n| have.is_none_or(|h| n > h)) {
        let gen = GenId {
            source: source.clone(),
            seq: Seq(seq),
        };
        let inc = pull::receive(&upstream, &app.archive, &gen, |_| Ok(())).await?;
        let a = app.clone();
        let rec = wire::blocking(move || -> Result<_> {
            Ok(a.archive.commit_incoming(inc, Some(Seq(seq)))?)
        })
        .await?;
        tracing::info!(generation = %rec.id(), upstream = %m.from.name, "mirrored");
        newest = Some(rec.id());
    }
    // A mirror feeds its own `[[importer]]`s too (the newest is enough: a clone catches
    // up in one step), so that a clone listing both PBS loses nothing with the first.
    if let Some(gen) = &newest {
        crate::push::push_all(app, gen);
    }
    Ok(newest)
}

/// `POST /v1/mirror/notify` (from the upstream PBS of a `[[mirror]]`): a generation of the
/// source is ready there; the mirror pulls what it lacks (202, at once).
pub(crate) async fn notified(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(n): Json<Notify>,
) -> Result<StatusCode, ApiError> {
    let m = app
        .cfg
        .mirrors
        .iter()
        .find(|m| m.source == n.source)
        .ok_or_else(|| ApiError::not_found(format!("no [[mirror]] of source {:?}", n.source)))?;
    if peer.0 != m.from.name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "peer {} may not tell of source {}: only its upstream {}",
                peer.0, n.source, m.from.name
            ),
        ));
    }
    app.mirrors.ring(&n.source);
    Ok(StatusCode::ACCEPTED)
}

/// After a commit: tell every `[[downstream]]` PBS (best effort, in the background: a
/// mirror that misses it looks on its schedule or at its next start).
pub(crate) fn tell_downstreams(app: &Arc<App>, gen: &GenId, epoch: u64) {
    for d in app.cfg.downstreams.clone() {
        let n = crate::push::announce(gen, epoch);
        tokio::spawn(async move {
            let r = match d.client(Duration::from_secs(30)) {
                Ok(c) => c
                    .send(
                        c.request(axum::http::Method::POST, "/v1/mirror/notify")
                            .json(&n),
                    )
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(downstream = %d.name, "could not tell the mirror: {e}");
            }
        });
    }
}
