//! The importer daemon: receive endpoints, applying, status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use archive::{Archive, GenId, Seq, SourceName};
use axum::extract::State;
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use wire::server::ApiError;
use wire::{Metrics, Peer, PeerConfig};

use crate::apply::Applier;
use crate::Config;

pub use crate::status::{Applied, Failure, Status};

pub use wire::api::{ApplyResult, Notify};

pub(crate) struct App {
    pub(crate) cfg: Config,
    store: Arc<Archive>,
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// One pull at a time: the same generation told by two PBS is pulled once (the
    /// second finds it in the store).
    receive_lock: tokio::sync::Mutex<()>,
    pub(crate) status: wire::Durable<Status>,
    metrics: Metrics,
    /// Takeover: password rate limit, the promoted flag, the exit signal.
    pub(crate) takeover: crate::takeover::TakeoverState,
}

use wire::cli::{fmt_time as fmt_ns, now_rfc3339};

pub(crate) fn status_path(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("status.json")
}

impl App {
    /// Only this clone's PBS (a token peer named by a `[coordinator] name`) may `what`:
    /// push generations, promote. The clone's admin token can read its status, never feed
    /// or promote it. Returns that PBS.
    pub(crate) fn require_pbs(&self, peer: &Peer, what: &str) -> Result<&PeerConfig, ApiError> {
        self.cfg.coordinator.get(&peer.0).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                format!(
                    "peer {} may not {what} (only its PBS: {})",
                    peer.0,
                    self.cfg.coordinator.names()
                ),
            )
        })
    }

    /// Record a failed transfer or import of `gen`.
    fn fail(&self, gen: &GenId, reason: &str) {
        self.status.update(|s| {
            s.importing = None;
            s.last_failure = Some(Failure {
                generation: gen.to_string(),
                at: now_rfc3339(),
                reason: reason.to_string(),
            });
        });
    }

    fn applier(&self) -> Applier {
        Applier {
            restore_dir: self.cfg.restore_dir.clone(),
            state_dir: self.cfg.state_dir.clone(),
        }
    }
}

fn gen_id(source: &str, seq: u64) -> Result<GenId, ApiError> {
    Ok(GenId {
        source: SourceName::new(source).map_err(ApiError::bad_request)?,
        seq: Seq(seq),
    })
}

/// A clone never moves back: a generation older than the one in the restore folder is
/// refused (409) before anything is received.
fn refuse_older(app: &App, gen: &GenId) -> Result<(), ApiError> {
    let Some(held) = app.status.read(|s| s.last_valid.clone()) else {
        return Ok(());
    };
    let newer = held
        .generation
        .parse::<GenId>()
        .is_ok_and(|h| h.source == gen.source && h.seq > gen.seq);
    if newer {
        return Err(ApiError::conflict(format!(
            "{gen} is older than {}, which this clone holds: a clone never moves back",
            held.generation
        )));
    }
    Ok(())
}

/// `POST /v1/notify` (only from one of this clone's PBS): generation `seq` of `source`,
/// taken at `epoch`, is ready at the PBS. Refusals of the notification itself are HTTP
/// errors and change nothing (403 another peer, 409 older than what the clone holds or an
/// epoch no coordinator reached, 409 promoted); otherwise the clone pulls the generation
/// from the PBS that notified it, restores, checks, swaps and runs its hooks, and answers
/// how that went. A generation the clone already holds verified (told again, or told by
/// another PBS) is answered as done at once: nothing is pulled, no hook runs again.
async fn notify(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(n): Json<Notify>,
) -> Result<Json<ApplyResult>, ApiError> {
    let pbs = app
        .require_pbs(&peer, "push generations to this clone")?
        .clone();
    let gen = gen_id(&n.source, n.seq)?;
    refuse_older(&app, &gen)?;
    app.takeover.refuse_if_promoted()?;
    crate::coordinator::check_record_epoch(&app, n.epoch).await?;
    // On a task of its own: a PBS that goes away mid-import does not cut the import
    // short (the swap and the hooks run to their end; the status tells the outcome).
    let a = app.clone();
    tokio::spawn(async move { import(&a, gen, n.epoch, &pbs).await })
        .await
        .map_err(|e| ApiError::internal(format!("the import failed: {e}")))?
}

/// Pull `gen` from `pbs` (the PBS that notified it) unless the store holds it; commit it
/// to the store. Returns the record's `taken_at` and epoch.
async fn receive(
    app: &Arc<App>,
    gen: &GenId,
    epoch: u64,
    pbs: &PeerConfig,
) -> Result<(i64, u64), String> {
    let _one = app.receive_lock.lock().await;
    let a = app.clone();
    let g = gen.clone();
    if let Ok(Ok(r)) = tokio::task::spawn_blocking(move || a.store.record(&g)).await {
        // Pulled meanwhile (told by another PBS too): the same generation?
        check_same(app, gen, pbs).await.map_err(|e| e.message)?;
        return Ok((r.taken_at_ns, r.epoch.0));
    }
    let client = pbs
        .client(Duration::from_secs(app.cfg.receive_timeout_secs.max(1)))
        .map_err(|e| e.to_string())?;
    let received = app.metrics.counter(
        "pullback_bytes_received_total",
        "Bytes received from the PBS",
    );
    let src = pull::HttpSource::new(client, format!("the PBS {}", pbs.name), Some(received));
    let inc = pull::receive(&src, &app.store, gen, move |rec| {
        if rec.epoch.0 != epoch {
            anyhow::bail!(
                "the record's epoch {} differs from the notification's {epoch}",
                rec.epoch
            );
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("pulling {gen}: {e:#}"))?;
    let a = app.clone();
    let g = gen.clone();
    wire::task::spawn_blocking(move || {
        a.store
            .commit_incoming(inc, Some(g.seq))
            .map(|r| (r.taken_at_ns, r.epoch.0))
            .map_err(|e| format!("refused {g}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A generation told of while this clone's store holds one of that name: it must be the
/// same generation at the PBS that tells of it (same epoch, time taken and file list),
/// or the clone would take the name for the data. Two PBS that number a source's
/// generations differently (one missed an export) are caught here: refused, 409.
async fn check_same(app: &Arc<App>, gen: &GenId, pbs: &PeerConfig) -> Result<(), ApiError> {
    let a = app.clone();
    let g = gen.clone();
    let Ok(Ok(held)) = tokio::task::spawn_blocking(move || a.store.record(&g)).await else {
        return Ok(());
    };
    let client = pbs
        .client(Duration::from_secs(30))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let src = pull::HttpSource::new(client, format!("the PBS {}", pbs.name), None);
    let theirs = pull::GenSource::record(&src, gen)
        .await
        .and_then(|b| Ok(archive::GenRecord::decode(&b, "the generation record")?))
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{gen}: cannot read its record at {}: {e:#}", pbs.name),
            )
        })?;
    let same = theirs.id() == held.id()
        && theirs.epoch == held.epoch
        && theirs.taken_at_ns == held.taken_at_ns
        && theirs.manifest_digest == held.manifest_digest;
    if !same {
        return Err(ApiError::conflict(format!(
            "{gen} at {} (epoch {}, taken at {}) is not the {gen} this clone holds (epoch {}, taken at {}): the PBS number this source's generations differently; refused",
            pbs.name,
            theirs.epoch,
            fmt_ns(theirs.taken_at_ns),
            held.epoch,
            fmt_ns(held.taken_at_ns)
        )));
    }
    Ok(())
}

/// One notified generation, from pull to verified (or rolled back).
async fn import(
    app: &Arc<App>,
    gen: GenId,
    epoch: u64,
    pbs: &PeerConfig,
) -> Result<Json<ApplyResult>, ApiError> {
    let result = |ok: bool, error: Option<String>, log_tail: String| {
        Json(ApplyResult {
            ok,
            generation: gen.to_string(),
            verified: ok,
            error,
            log_tail,
        })
    };
    let already = || {
        app.status.read(|s| {
            s.last_valid
                .as_ref()
                .is_some_and(|v| v.generation == gen.to_string() && v.verified)
        })
    };
    check_same(app, &gen, pbs).await?;
    if already() {
        tracing::info!(generation = %gen, pbs = %pbs.name, "already imported and verified: nothing to do");
        return Ok(result(true, None, String::new()));
    }
    app.status.update(|s| s.importing = Some(gen.to_string()));
    let (taken_at, gen_epoch) = match receive(app, &gen, epoch, pbs).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(generation = %gen, "{e}");
            app.fail(&gen, &e);
            return Ok(result(false, Some(e), String::new()));
        }
    };
    let _one = app.apply_lock.lock().await;
    // Checked again: a newer generation or a promotion may have come meanwhile, or the
    // same generation told by another PBS was imported while this one waited.
    if let Err(e) = refuse_older(app, &gen).and_then(|()| app.takeover.refuse_if_promoted()) {
        app.status.update(|s| s.importing = None);
        return Err(e);
    }
    if already() {
        tracing::info!(generation = %gen, pbs = %pbs.name, "imported meanwhile (told by another PBS): nothing to do");
        app.status.update(|s| s.importing = None);
        return Ok(result(true, None, String::new()));
    }
    let t = Instant::now();
    let r = apply(app, &gen, taken_at).await;
    app.metrics
        .gauge(
            "pullback_import_seconds",
            "Duration of the last import (restore, hooks)",
        )
        .set_duration(t.elapsed());
    let (ok, error, log_tail) = match r {
        Ok(log) => (true, None, log),
        Err((e, log)) => {
            app.metrics
                .counter("pullback_import_failures_total", "Imports that failed")
                .inc();
            (false, Some(format!("{e:#}")), log)
        }
    };
    app.status.update(|s| {
        s.importing = None;
        s.last_log = log_tail.clone();
        s.last_import_ok = Some(ok);
        if ok {
            s.epoch = s.epoch.max(gen_epoch);
            s.last_valid = Some(Applied {
                generation: gen.to_string(),
                taken_at: fmt_ns(taken_at),
                restored_at: now_rfc3339(),
                verified: true,
                from: Some(pbs.name.clone()),
            });
        } else if let Some(e) = &error {
            s.last_failure = Some(Failure {
                generation: gen.to_string(),
                at: now_rfc3339(),
                reason: e.clone(),
            });
        }
    });
    if ok {
        app.metrics
            .counter(
                "pullback_generations_total",
                "Generations imported and verified",
            )
            .inc();
        let a = app.clone();
        let _ = wire::blocking(move || {
            trim_store(&a).map_err(|e| ApiError::internal(format!("{e:#}")))
        })
        .await
        .map_err(|e| tracing::warn!("store retention: {}", e.message));
    }
    Ok(result(ok, error, log_tail))
}

/// Keep the newest `keep` generations of the local store.
fn trim_store(app: &App) -> Result<()> {
    let ar = &app.store;
    ar.keep_last(app.cfg.keep, false)?;
    Ok(())
}

/// Stage, swap in, run the hooks; roll back on any failure. Returns the log
/// tail, or the error with it.
async fn apply(
    app: &Arc<App>,
    gen: &GenId,
    taken_at: i64,
) -> Result<String, (anyhow::Error, String)> {
    let a = app.clone();
    let g = gen.clone();
    let staged = wire::task::spawn_blocking(move || -> Result<u64> {
        let ar = &a.store;
        a.applier().stage(ar, &g)
    })
    .await
    .map_err(|e| (anyhow::Error::new(e), String::new()))
    .and_then(|r| r.map_err(|e| (e, String::new())));
    let files = staged?;
    tracing::info!(generation = %gen, files, "staged and checked");
    let applier = app.applier();
    applier.swap_in(gen).map_err(|e| (e, String::new()))?;
    let env = vec![
        (
            "PULLBACK_RESTORE_DIR".to_string(),
            app.cfg.restore_dir.display().to_string(),
        ),
        ("PULLBACK_GENERATION".to_string(), gen.to_string()),
        ("PULLBACK_TAKEN_AT".to_string(), fmt_ns(taken_at)),
    ];
    let log_path = app
        .cfg
        .state_dir
        .join("logs")
        .join(format!("{}-{}.log", gen.source, gen.seq));
    let timeout = Duration::from_secs(app.cfg.hooks.timeout_secs);
    let mut log = String::new();
    for (what, hook) in [
        ("import", &app.cfg.hooks.import),
        ("verify", &app.cfg.hooks.verify),
    ] {
        let Some(hook) = hook else { continue };
        let opts = wire::HookOptions {
            pid_file: Some(app.cfg.state_dir.join("hooks").join(format!("{what}.pid"))),
        };
        let r = wire::run_hook_with(hook, &[], &env, &log_path, timeout, &opts).await;
        let failed = match r {
            Ok(out) => {
                log = out.log_tail.clone();
                (!out.success()).then(|| anyhow::anyhow!("{what} hook failed: {}", out.status))
            }
            Err(e) => Some(anyhow::anyhow!("{what} hook: {e}")),
        };
        if let Some(e) = failed {
            let undo = applier
                .roll_back()
                .map(|_| "the previous copy is back in place".to_string())
                .unwrap_or_else(|re| format!("rolling back failed too: {re:#}"));
            return Err((e.context(undo), log));
        }
    }
    applier.finish().map_err(|e| (e, log.clone()))?;
    Ok(log)
}

async fn status(State(app): State<Arc<App>>) -> Json<Status> {
    Json(app.status.get())
}

pub async fn serve(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let applier = Applier {
        restore_dir: cfg.restore_dir.clone(),
        state_dir: cfg.state_dir.clone(),
    };
    // An import or verify hook that outlived a killed importer must not go on
    // working on a copy that is about to be rolled back.
    for line in wire::hook::kill_leftovers(&cfg.state_dir.join("hooks")) {
        tracing::warn!("{line}");
    }
    let mut st: Status = wire::read_json(&status_path(&cfg))?.unwrap_or_default();
    if applier.roll_back()? {
        tracing::warn!("an import was interrupted by a crash; the previous copy is back in place");
        st.last_failure = Some(Failure {
            generation: st.importing.clone().unwrap_or_default(),
            at: now_rfc3339(),
            reason: "interrupted by a crash; the previous copy was put back".into(),
        });
        st.last_import_ok = Some(false);
    }
    if let Some(rf) = wire::ha::RoleFile::load(&cfg.role_path())? {
        if rf.role == wire::ha::Role::Main {
            anyhow::bail!(
                "{} says this node is MAIN at epoch {}: run `exporter serve` here (the pullback-node launcher does)",
                cfg.role_path().display(),
                rf.epoch
            );
        }
        st.epoch = st.epoch.max(rf.epoch);
    }
    st.name = cfg.name.clone();
    st.role = wire::ha::Role::Backup;
    st.status = wire::ha::NodeStatus::Follower;
    st.importing = None;
    let store = Archive::open_or_init(&cfg.store)?;
    let tokens = cfg.server.token_set()?;
    for p in cfg.coordinator.iter() {
        if !tokens.peers().any(|t| t == p.name) {
            tracing::warn!(
                pbs = %p.name,
                "[server] tokens has no token for peer {}: that coordinator cannot notify or promote this clone",
                p.name
            );
        }
    }
    let tls = cfg.server.tls_files()?;
    let listen = cfg.server.listen;
    let st = wire::Durable::new("status", status_path(&cfg), st);
    let app = Arc::new(App {
        cfg,
        store: Arc::new(store),
        apply_lock: tokio::sync::Mutex::new(()),
        receive_lock: tokio::sync::Mutex::new(()),
        status: st,
        metrics: Metrics::new(),
        takeover: crate::takeover::TakeoverState::default(),
    });
    app.status.update(|_| {});
    crate::coordinator::startup_hello(&app).await;
    use wire::server::{limit_body, MAX_JSON_BODY};
    // Every body the clone takes is small JSON: it pulls the data itself.
    let json = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/notify", post(notify))
        .with_state(app.clone())
        .merge(crate::takeover::api_routes(&app))
        .merge(app.metrics.router());
    let api = limit_body(json, MAX_JSON_BODY)
        .layer(wire::require_token(tokens))
        // The takeover page: outside the token layer (the password protects the action).
        .merge(limit_body(
            crate::takeover::page_routes(&app),
            MAX_JSON_BODY,
        ));
    let server = wire::server::bind(listen, tls.as_ref()).await?;
    tracing::info!("importer listening on {}", server.url());
    let stop = app.takeover.shutdown.clone();
    server
        .serve(api, async move {
            tokio::select! {
                () = wire::server::shutdown_signal() => {},
                () = stop.notified() => tracing::warn!("promoted to MAIN: exiting (the supervisor starts the exporter)"),
            }
        })
        .await?;
    Ok(())
}
