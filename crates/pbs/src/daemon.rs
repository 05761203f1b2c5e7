//! `pbs serve`: take notifications, pull what is missing from the exporter,
//! commit, push to every importer; prune and verify on a schedule.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use archive::{Archive, Epoch, GenId, GenRecord, Seq, SourceName};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wire::server::ApiError;
use wire::{Metrics, Peer};

use crate::config::{Config, SourceConfig};
use crate::coord::Coordinator;
use wire::phase::TxPhase;

pub use wire::api::{Notify, TxState};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub generation: Option<String>,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub last_success: Option<Event>,
    pub last_failure: Option<Event>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImporterStatus {
    pub last_good: Option<Event>,
    pub last_failure: Option<Event>,
}

/// The server's durable status (`STATE_DIR/status.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStatus {
    pub sources: BTreeMap<String, SourceStatus>,
    pub importers: BTreeMap<String, ImporterStatus>,
    pub transactions: VecDeque<TxState>,
    pub last_prune: Option<Event>,
    pub last_verify: Option<Event>,
}

const KEEP_TX: usize = 200;

pub fn status_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("status.json")
}

pub use wire::cli::now_rfc3339;

pub(crate) struct App {
    pub(crate) cfg: Config,
    pub(crate) state_dir: PathBuf,
    pub(crate) archive: Arc<Archive>,
    pub(crate) status: wire::Durable<ServerStatus>,
    /// One push job per clone, apart from the pulls (see `push.rs`).
    pub(crate) push_jobs: HashMap<String, Arc<crate::push::PushJob>>,
    /// One switchover or automatic failover at a time.
    pub(crate) switching: tokio::sync::Mutex<()>,
    queues: HashMap<String, mpsc::UnboundedSender<Notify>>,
    pub(crate) metrics: Metrics,
    /// One coordinator per source's group (config order): its epoch, main and nodes.
    pub(crate) coords: Vec<Coordinator>,
    /// The `[[mirror]]` sources' wake-up bells (see `mirror.rs`).
    pub(crate) mirrors: crate::mirror::Mirrors,
}

impl App {
    pub(crate) fn update(&self, f: impl FnOnce(&mut ServerStatus)) {
        self.status.update(|s| {
            f(s);
            while s.transactions.len() > KEEP_TX {
                s.transactions.pop_front();
            }
        });
    }

    fn set_tx(&self, t: TxState) {
        self.update(|s| {
            if let Some(old) = s.transactions.iter_mut().find(|x| x.tx == t.tx) {
                *old = t;
            } else {
                s.transactions.push_back(t);
            }
        });
    }

    fn tx(&self, tx: &str) -> Option<TxState> {
        self.status
            .read(|s| s.transactions.iter().find(|t| t.tx == tx).cloned())
    }

    fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.cfg.sources.iter().find(|s| s.name == name)
    }

    /// The coordinator of source `source`'s group.
    pub(crate) fn coord_of_source(&self, source: &str) -> Option<&Coordinator> {
        self.coords
            .iter()
            .find(|c| c.group.as_deref().is_none_or(|g| g == source))
    }

    /// The coordinator of the group clone `node` belongs to, for a grant (an unknown node is
    /// an unknown clone).
    pub(crate) fn coord_of_clone(&self, node: &str) -> Result<&Coordinator, crate::coord::Refusal> {
        self.coord_of(node).map_err(|r| match r {
            crate::coord::Refusal::UnknownNode(n) => crate::coord::Refusal::UnknownClone(n),
            r => r,
        })
    }

    /// The coordinator of the group node `node` belongs to.
    pub(crate) fn coord_of(&self, node: &str) -> Result<&Coordinator, crate::coord::Refusal> {
        self.coords
            .iter()
            .find(|c| c.has_node(node))
            .ok_or_else(|| crate::coord::Refusal::UnknownNode(node.to_string()))
    }
}

// ---------------------------------------------------------------- pull

/// A notification for data no newer than what the source already has at the same epoch
/// (a replayed notification, an old outbox generation): refused, and not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotNewer(String);

/// The node a queued notification came from (the notify handler fills it in).
fn notifier<'a>(src: &'a SourceConfig, n: &'a Notify) -> &'a str {
    n.node.as_deref().unwrap_or(&src.exporter.name)
}

async fn pull(app: &Arc<App>, src: &SourceConfig, n: &Notify) -> Result<GenRecord> {
    // From the node that notified: the group's MAIN when the notification was taken.
    let node = notifier(src, n);
    let client = app
        .coord_of(node)?
        .exporter_peer(node)
        .ok_or_else(|| anyhow!("node {node} has no exporter at this PBS"))?
        .client(Duration::from_secs(600))
        .map_err(|e| anyhow!("{e}"))?;
    let received = app.metrics.counter_with(
        "pullback_bytes_received_total",
        "Bytes received from exporters",
        &[("source", &n.source)],
    );
    let exporter = pull::HttpSource::new(client, "the exporter", Some(received));
    let gen = GenId {
        source: SourceName::new(&n.source).map_err(anyhow::Error::msg)?,
        seq: Seq(n.seq),
    };
    let (a, n2) = (app.clone(), n.clone());
    let inc = pull::receive(&exporter, &app.archive, &gen, move |rec| {
        if rec.epoch != Epoch(n2.epoch) {
            bail!(
                "the record's epoch {} differs from the notification's {}",
                rec.epoch,
                n2.epoch
            );
        }
        // The data must be newer than the source's newest generation of that epoch.
        let newest = a.archive.latest(&rec.source)?;
        if let Some(l) = newest.filter(|l| l.epoch == rec.epoch && rec.taken_at_ns <= l.taken_at_ns)
        {
            return Err(NotNewer(format!(
                "the data of {}/{} was taken at {}, not after {} (taken at {}, same epoch): \
                 an old or replayed generation, refused",
                n2.source,
                n2.seq,
                wire::cli::fmt_time(rec.taken_at_ns),
                l.id(),
                wire::cli::fmt_time(l.taken_at_ns)
            ))
            .into());
        }
        Ok(())
    })
    .await?;
    let a = app.clone();
    wire::blocking(move || {
        let ar = &a.archive;
        // A takeover may have happened since the notification was checked.
        let coord = a
            .coord_of_source(inc.record().source.as_str())
            .ok_or_else(|| anyhow!("no coordinator for the source"))?;
        Epoch::check(inc.record().epoch.0, coord.fresh()?.epoch)?;
        Ok(ar.commit_incoming(inc, None)?)
    })
    .await
}

pub(crate) use crate::push::{latest_generation, push_latest};

// ---------------------------------------------------------------- per-source worker

async fn worker(app: Arc<App>, name: String, mut rx: mpsc::UnboundedReceiver<Notify>) {
    while let Some(n) = rx.recv().await {
        let Some(src) = app.source(&name) else {
            continue;
        };
        if app.tx(&n.tx).is_some_and(|t| t.state == TxPhase::Committed) {
            continue;
        }
        let mut tx = TxState {
            tx: n.tx.clone(),
            source: name.clone(),
            state: TxPhase::Pulling,
            generation: None,
            error: None,
            at: now_rfc3339(),
        };
        app.set_tx(tx.clone());
        let t = Instant::now();
        let backoff = wire::Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: src.attempts.max(1),
        };
        let mut result = Err(anyhow!("no attempt made"));
        for attempt in 0..backoff.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            result = pull(&app, src, &n).await;
            match &result {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(source = %name, tx = %n.tx, attempt = attempt + 1, "pull failed: {e:#}");
                    let msg = format!("attempt {} of {}: {e:#}", attempt + 1, backoff.attempts);
                    app.update(|s| {
                        s.sources.entry(name.clone()).or_default().last_failure = Some(Event {
                            at: now_rfc3339(),
                            generation: None,
                            detail: msg,
                        })
                    });
                    // A stale epoch will not get better by retrying (damaged
                    // data may: it can be a transient fault on the way).
                    if matches!(
                        e.downcast_ref::<archive::Error>(),
                        Some(archive::Error::StaleEpoch { .. })
                    ) || e.downcast_ref::<archive::EpochError>().is_some()
                        || e.downcast_ref::<NotNewer>().is_some()
                    {
                        break;
                    }
                }
            }
        }
        app.metrics
            .gauge_with(
                "pullback_pull_seconds",
                "Duration of the last pull",
                &[("source", &name)],
            )
            .set_duration(t.elapsed());
        match result {
            Ok(rec) => {
                let gen = rec.id();
                tracing::info!(source = %name, tx = %n.tx, generation = %gen, added = rec.stats.added_bytes, "committed");
                app.metrics
                    .counter_with(
                        "pullback_generations_total",
                        "Generations committed",
                        &[("source", &name)],
                    )
                    .inc();
                // On a blocking thread: with etcd, a record is a round trip.
                let (a, source, node, g) = (
                    app.clone(),
                    name.clone(),
                    notifier(src, &n).to_string(),
                    gen.to_string(),
                );
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(c) = a.coord_of_source(&source) {
                        c.set_generation(&node, &g);
                    }
                })
                .await;
                tx.state = TxPhase::Committed;
                tx.generation = Some(gen.to_string());
                tx.at = now_rfc3339();
                app.set_tx(tx);
                app.update(|s| {
                    s.sources.entry(name.clone()).or_default().last_success = Some(Event {
                        at: now_rfc3339(),
                        generation: Some(gen.to_string()),
                        detail: format!("tx {}", n.tx),
                    })
                });
                // Queued for each clone's push job: a slow or dead clone never
                // holds up the next pull, nor the other clones.
                crate::push::push_all(&app, &gen);
                crate::mirror::tell_downstreams(&app, &gen, rec.epoch.0);
            }
            Err(e) => {
                app.metrics
                    .counter_with(
                        "pullback_failures_total",
                        "Failed transfers",
                        &[("peer", notifier(src, &n))],
                    )
                    .inc();
                tx.state = TxPhase::Failed;
                tx.error = Some(format!("{e:#}"));
                tx.at = now_rfc3339();
                app.set_tx(tx);
            }
        }
    }
}

// ---------------------------------------------------------------- API

async fn notify(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(n): Json<Notify>,
) -> Result<(StatusCode, Json<TxState>), ApiError> {
    app.source(&n.source)
        .ok_or_else(|| ApiError::not_found(format!("unknown source {:?}", n.source)))?;
    // The source's history goes on from whichever node of the group is MAIN: the node
    // named in the notification (or the one the peer speaks for) must have an exporter
    // here, the peer must speak for it, and the coordinator must hold it as MAIN at the
    // notified epoch (below).
    let forbidden = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "peer {} may not notify for source {}: {why}",
                peer.0, n.source
            ),
        )
    };
    if peer.0 == "admin" {
        return Err(forbidden(
            "notifications come from the main's exporter".into(),
        ));
    }
    let coord = app
        .coord_of_source(&n.source)
        .ok_or_else(|| ApiError::internal("no coordinator for the source"))?;
    let node = match &n.node {
        Some(x) => x.clone(),
        None => coord
            .node_of(&peer.0)
            .ok_or_else(|| forbidden("it is no node of this source's group".into()))?,
    };
    coord
        .check_peer(&peer.0, &node)
        .map_err(|e| forbidden(e.to_string()))?;
    if coord.exporter_peer(&node).is_none() {
        return Err(forbidden(format!(
            "node {node} has no exporter at this PBS (a [[source]] exporter, or [[importer]] exporter = {{ url, token }})"
        )));
    }
    if n.tx.is_empty() || n.tx.len() > 128 {
        return Err(ApiError::bad_request("tx must be 1 to 128 characters"));
    }
    let name = SourceName::new(&n.source).map_err(ApiError::bad_request)?;
    let (a, epoch, who, source) = (app.clone(), n.epoch, node.clone(), n.source.clone());
    tokio::task::spawn_blocking(move || match a.coord_of_source(&source) {
        Some(c) => c.check_notify(&who, epoch),
        None => Ok(()),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let a = app.clone();
    let latest_epoch = tokio::task::spawn_blocking(move || {
        let ar = &a.archive;
        ar.latest(&name).ok().flatten().map(|r| r.epoch.0)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(have) = latest_epoch {
        if n.epoch < have {
            return Err(ApiError::conflict(format!(
                "stale epoch {} for source {} (current {have}): demote",
                n.epoch, n.source
            )));
        }
    }
    if let Some(t) = app.tx(&n.tx) {
        return Ok((StatusCode::OK, Json(t)));
    }
    let t = TxState {
        tx: n.tx.clone(),
        source: n.source.clone(),
        state: TxPhase::Queued,
        generation: None,
        error: None,
        at: now_rfc3339(),
    };
    app.set_tx(t.clone());
    let q = app
        .queues
        .get(&n.source)
        .ok_or_else(|| ApiError::internal("no worker for the source"))?;
    q.send(Notify {
        node: Some(node),
        ..n
    })
    .map_err(|_| ApiError::internal("the source's worker stopped"))?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

async fn transaction(
    State(app): State<Arc<App>>,
    Path(tx): Path<String>,
) -> Result<Json<TxState>, ApiError> {
    app.tx(&tx)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no transaction {tx}")))
}

pub(crate) async fn status(
    State(app): State<Arc<App>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = app.clone();
    let v = wire::blocking(move || {
        // Each group's state as stored now (etcd: 503 when it cannot be reached).
        let groups = a
            .coords
            .iter()
            .map(|c| c.read_for_status())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        crate::status::report_with(&a.cfg, &a.state_dir, Some(&a.archive), &groups)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await?;
    Ok(Json(v.json))
}

/// The clones pull what they are told of (`[[importer]]` names, each with its own token),
/// the admin may read; nobody else (an exporter has no business reading the archive).
fn clones_may_pull(app: &Arc<App>) -> pull::Admit {
    let a = app.clone();
    Arc::new(move |peer: &Peer| {
        let known = peer.0 == "admin"
            || a.cfg.importers.iter().any(|i| i.name == peer.0)
            || a.cfg.downstreams.iter().any(|d| d.name == peer.0);
        if !known {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "peer {} may not read the archive (only the clones, the mirrors and the admin)",
                    peer.0
                ),
            ));
        }
        Ok(a.metrics.counter_with(
            "pullback_bytes_sent_total",
            "Bytes sent to importers",
            &[("importer", &peer.0)],
        ))
    })
}

pub async fn serve(cfg: Config, archive_path: PathBuf) -> Result<()> {
    let server = cfg
        .server
        .clone()
        .context("the config has no [server] section: pbs serve needs one")?;
    let state_dir = cfg
        .state_dir
        .clone()
        .context("the config has no state_dir: pbs serve needs one")?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let tokens = server.token_set()?;
    let tls = server.tls_files()?;
    let ar =
        crate::archive_cmd::open_archive(&archive_path, &cfg, crate::archive_cmd::Open::OrCreate)?;
    // Each group's epoch starts at least at the highest epoch of its source's generations.
    let mut epochs: HashMap<String, u64> = HashMap::new();
    for r in ar.generations()?.iter().filter_map(|g| ar.record(g).ok()) {
        let e = epochs.entry(r.source.to_string()).or_default();
        *e = (*e).max(r.epoch.0);
    }
    for i in cfg.importers.iter().filter(|i| !i.disabled) {
        let exporter_of_source = cfg.sources.iter().any(|s| s.exporter.name == i.name);
        if i.exporter.is_none() && !exporter_of_source {
            tracing::warn!(
                node = %i.name,
                "[[importer]] {} has no exporter = {{ url, token }}: if it takes over, the PBS cannot pull its source from it",
                i.name
            );
        }
    }
    // The coordinators' state: files in the state dir, or etcd shared with other PBS.
    let etcd = match &cfg.coordinator.etcd {
        Some(e) => {
            tracing::info!(endpoints = ?e.endpoints, prefix = %e.prefix, "the coordinator's state is in etcd");
            Some(crate::coord::etcd::Etcd::connect(
                e,
                cfg.failover.after_secs,
            )?)
        }
        None => None,
    };
    let open = |group: Option<&str>, epoch: u64| {
        let store = crate::coord::store::open(&cfg, &state_dir, group, etcd.as_ref());
        Coordinator::open_group(&cfg, store, group, epoch)
            .with_context(|| format!("opening the coordinator of group {}", group.unwrap_or("-")))
    };
    let coords = if cfg.sources.is_empty() {
        // A PBS that only mirrors: one group, at the highest epoch it holds.
        let epoch = epochs.values().copied().max().unwrap_or(0);
        vec![open(None, epoch)?]
    } else {
        cfg.sources
            .iter()
            .map(|s| open(Some(&s.name), epochs.get(&s.name).copied().unwrap_or(0)))
            .collect::<Result<Vec<_>>>()?
    };
    let st: ServerStatus = wire::read_json(&status_path(&state_dir))?.unwrap_or_default();
    let st = wire::Durable::new("status", status_path(&state_dir), st);
    let mut queues = HashMap::new();
    let mut rxs = Vec::new();
    for s in &cfg.sources {
        let (tx, rx) = mpsc::unbounded_channel();
        queues.insert(s.name.clone(), tx);
        rxs.push((s.name.clone(), rx));
    }
    let push_jobs = cfg
        .importers
        .iter()
        .map(|i| (i.name.clone(), Arc::new(crate::push::PushJob::default())))
        .collect();
    let cfg_mirrors = cfg.mirrors.clone();
    let app = Arc::new(App {
        cfg,
        state_dir,
        archive: Arc::new(ar),
        status: st,
        push_jobs,
        switching: tokio::sync::Mutex::new(()),
        queues,
        metrics: Metrics::new(),
        mirrors: crate::mirror::Mirrors::new(&cfg_mirrors),
        coords,
    });
    // Transactions cut short by a restart failed; the exporter notifies again.
    app.update(|s| {
        for t in s.transactions.iter_mut() {
            if t.state.is_open() {
                t.state = TxPhase::Failed;
                t.error = Some("interrupted by a restart of the PBS".into());
            }
        }
    });
    for (name, rx) in rxs {
        tokio::spawn(worker(app.clone(), name, rx));
    }
    crate::push::start_jobs(&app);
    tokio::spawn(crate::push::catch_up(app.clone()));
    let _sched = crate::housekeeping::schedule(&app).await?;
    let _mirror_sched = crate::mirror::start(&app).await?;
    tokio::spawn(crate::grant::retry_promotions(app.clone()));
    if app.cfg.failover.auto {
        tokio::spawn(crate::failover::auto_failover(app.clone()));
    }
    let api = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/notify", post(notify))
        .route("/v1/transactions/{tx}", get(transaction))
        .route("/v1/mirror/notify", post(crate::mirror::notified))
        .merge(crate::ha_api::routes())
        .with_state(app.clone())
        .merge(pull::routes(app.archive.clone(), clones_may_pull(&app)))
        .merge(app.metrics.router());
    let api = wire::server::limit_body(api, wire::server::MAX_JSON_BODY)
        .layer(wire::require_token(tokens));
    let srv = wire::server::bind(server.listen, tls.as_ref()).await?;
    tracing::info!("pbs listening on {}", srv.url());
    srv.serve(api, wire::server::shutdown_signal()).await?;
    Ok(())
}
