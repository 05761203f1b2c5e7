//! The exporter daemon: exports, notifications, the outbox it serves. The `run` and
//! `status` commands are in `cli.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use archive::{Archive, Epoch, IngestOptions, Seq, SourceName};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use wire::phase::{RunPhase, TxPhase};
use wire::server::ApiError;
use wire::{Metrics, Peer};

use crate::Config;

/// One export, from the hook to a PBS's commit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub tx: String,
    pub state: RunPhase,
    /// The snapshot in the outbox (`SOURCE/SEQ`).
    pub generation: Option<String>,
    /// The generation the PBS committed it as.
    pub committed_as: Option<String>,
    pub committed_by: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub started_at: String,
    pub log_tail: String,
    pub bytes: u64,
    /// What the snapshot left out of the backup folder (FIFOs, sockets, device
    /// nodes), one line each naming the path.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub source: String,
    pub role: wire::ha::Role,
    pub status: wire::ha::ShownStatus,
    pub epoch: u64,
    pub running: Option<String>,
    pub last_run: Option<RunState>,
    pub last_success: Option<RunState>,
    pub last_failure: Option<RunState>,
    /// Per PBS name, the notifications it missed while another PBS took them, oldest
    /// first: told again before its next one (`missed.rs`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub missed: std::collections::BTreeMap<String, Vec<wire::api::Notify>>,
}

pub(crate) struct App {
    pub(crate) cfg: Config,
    source: SourceName,
    outbox: Arc<Archive>,
    export_lock: tokio::sync::Mutex<()>,
    runs: Mutex<HashMap<String, RunState>>,
    pub(crate) status: wire::Durable<Status>,
    metrics: Metrics,
    counter: std::sync::atomic::AtomicU64,
    /// Role, epoch and whether a coordinator confirmed them since start.
    pub(crate) ha: Mutex<crate::ha::HaState>,
    /// One demotion at a time.
    pub(crate) demote_lock: tokio::sync::Mutex<()>,
    /// Notified when the daemon must exit (a role change is a restart).
    pub(crate) shutdown: Arc<tokio::sync::Notify>,
}

use wire::cli::now_rfc3339;

pub(crate) fn status_path(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("status.json")
}

impl App {
    fn set_run(&self, r: &RunState) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.tx.clone(), r.clone());
        self.status.update(|s| {
            s.last_run = Some(r.clone());
            s.running =
                matches!(r.state, RunPhase::Running | RunPhase::Exported).then(|| r.tx.clone());
            match r.state {
                RunPhase::Committed => s.last_success = Some(r.clone()),
                RunPhase::Failed => s.last_failure = Some(r.clone()),
                _ => {}
            }
        });
    }

    pub(crate) fn new_tx(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = time::OffsetDateTime::now_utc();
        format!(
            "{}-{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}-{n}",
            self.cfg.source,
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            std::process::id()
        )
    }
}

/// Export hook, snapshot, notify, wait for the commit. Never two at once.
pub(crate) async fn export(app: Arc<App>, tx: String) -> RunState {
    let _one = app.export_lock.lock().await;
    let mut run = RunState {
        tx: tx.clone(),
        state: RunPhase::Running,
        started_at: now_rfc3339(),
        ..Default::default()
    };
    app.set_run(&run);
    let t = Instant::now();
    let r = export_steps(&app, &mut run).await;
    app.metrics
        .gauge("pullback_export_seconds", "Duration of the last export run")
        .set_duration(t.elapsed());
    if let Err(e) = r {
        tracing::warn!(tx = %tx, "export failed: {e:#}");
        app.metrics
            .counter("pullback_failures_total", "Export runs that failed")
            .inc();
        run.state = RunPhase::Failed;
        run.error = Some(format!("{e:#}"));
    }
    app.set_run(&run);
    run
}

async fn export_steps(app: &Arc<App>, run: &mut RunState) -> Result<()> {
    let cfg = &app.cfg;
    // Only a main confirmed by the coordinator exports, at the epoch it was granted.
    let epoch = crate::ha::check_role(app).await?;
    std::fs::create_dir_all(&cfg.backup_dir)
        .with_context(|| format!("creating {}", cfg.backup_dir.display()))?;
    let log = cfg.state_dir.join("logs").join(format!("{}.log", run.tx));
    let env = vec![
        (
            "PULLBACK_BACKUP_DIR".to_string(),
            cfg.backup_dir.display().to_string(),
        ),
        ("PULLBACK_TRANSACTION_ID".to_string(), run.tx.clone()),
        ("PULLBACK_EPOCH".to_string(), epoch.to_string()),
    ];
    let mut last_err = anyhow!("no attempt made");
    let mut committed = None;
    for attempt in 1..=cfg.attempts {
        run.attempts = attempt;
        if attempt > 1 {
            tokio::time::sleep(Duration::from_secs(attempt as u64 - 1)).await;
        }
        let taken_at = archive::ingest::now_ns();
        let out = wire::run_hook_with(
            &cfg.hooks.export,
            &[],
            &env,
            &log,
            Duration::from_secs(cfg.hooks.timeout_secs),
            &wire::HookOptions {
                pid_file: Some(cfg.state_dir.join("hooks").join("export.pid")),
            },
        )
        .await?;
        run.log_tail = out.log_tail.clone();
        if !out.success() {
            last_err = anyhow!(
                "export hook failed ({}) on attempt {attempt} of {}",
                out.status,
                cfg.attempts
            );
            continue;
        }
        let a = app.clone();
        let tx = run.tx.clone();
        let snap: Result<_> = wire::blocking(move || {
            refuse_empty(&a.cfg)?;
            let ar = &a.outbox;
            let opts = IngestOptions {
                epoch: Epoch(epoch),
                taken_at_ns: Some(taken_at),
                label: Some(tx),
                reread: false,
                excludes: a.cfg.excludes.clone(),
            };
            Ok(ar.ingest(&a.source, &a.cfg.backup_dir, &opts)?)
        })
        .await;
        match snap {
            Ok(rep) => {
                for w in &rep.warnings {
                    tracing::warn!("{w}");
                }
                run.warnings = rep.warnings;
                committed = Some(rep.record);
                break;
            }
            Err(e) => {
                last_err = e.context(format!("snapshot of the backup folder, attempt {attempt}"))
            }
        }
    }
    let rec = committed.ok_or(last_err)?;
    run.generation = Some(rec.id().to_string());
    run.bytes = rec.stats.bytes;
    run.state = RunPhase::Exported;
    app.set_run(run);
    tracing::info!(tx = %run.tx, generation = %rec.id(), "exported; notifying");
    notify_and_wait(app, run, rec.seq, epoch).await?;
    run.state = RunPhase::Committed;
    app.metrics
        .counter("pullback_generations_total", "Exports committed by a PBS")
        .inc();
    let a = app.clone();
    if let Err(e) = wire::blocking(move || trim_outbox(&a)).await {
        tracing::warn!("outbox retention: {e:#}");
    }
    Ok(())
}

/// An export hook that wrote nothing, emptied the backup folder or removed it
/// has failed, whatever its exit code (unless `allow_empty`).
fn refuse_empty(cfg: &Config) -> Result<()> {
    let dir = &cfg.backup_dir;
    let mut rd = std::fs::read_dir(dir).with_context(|| {
        format!(
            "the backup folder {} is gone after the export hook",
            dir.display()
        )
    })?;
    if !cfg.allow_empty && rd.next().is_none() {
        bail!(
            "the export hook left the backup folder {} empty: nothing published \
             (set allow_empty = true to publish an empty backup)",
            dir.display()
        );
    }
    Ok(())
}

async fn notify_and_wait(app: &Arc<App>, run: &mut RunState, seq: Seq, epoch: u64) -> Result<()> {
    let cfg = &app.cfg;
    if cfg.pbs.is_empty() {
        bail!("no [[pbs]] configured: nobody to notify (Leader (single node))");
    }
    let body = wire::api::Notify {
        source: cfg.source.clone(),
        seq: seq.0,
        tx: run.tx.clone(),
        epoch,
        node: Some(cfg.name.clone()),
    };
    let mut notified = Vec::new();
    let mut errors = Vec::new();
    let mut missed = Vec::new();
    for p in &cfg.pbs {
        let client = p
            .client(Duration::from_secs(30))
            .map_err(|e| anyhow!("{e}"))?;
        // What this PBS missed while another took it goes first, in order.
        crate::missed::resend(app, p, &client, epoch).await;
        let backoff = wire::Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            attempts: 4,
        };
        let r: Result<serde_json::Value, _> =
            wire::retry(&backoff, || client.post_json("/v1/notify", &body)).await;
        match r {
            Ok(_) => notified.push((p.name.clone(), client)),
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                // Fenced: a newer epoch or another main exists. Step down.
                crate::ha::demote(app, epoch, wire::ha::NodeStatus::Broken).await;
                bail!(
                    "{} refused the notification: {e}; demoted to BACKUP",
                    p.name
                );
            }
            Err(e) => {
                errors.push(format!("notifying {}: {e}", p.name));
                missed.push(p.name.clone());
            }
        }
    }
    if notified.is_empty() {
        bail!("{}", errors.join("; "));
    }
    for pbs in &missed {
        crate::missed::record(app, pbs, &body);
    }
    let deadline = Instant::now() + Duration::from_secs(cfg.commit_timeout_secs);
    let mut failures: Vec<String> = errors;
    while Instant::now() < deadline && !notified.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for (name, client) in notified {
            match client
                .get_json::<wire::api::TxState>(&format!("/v1/transactions/{}", run.tx))
                .await
            {
                Ok(t) if t.state == TxPhase::Committed => {
                    run.committed_as = t.generation;
                    run.committed_by = Some(name);
                    return Ok(());
                }
                Ok(t) if t.state == TxPhase::Failed => failures.push(format!(
                    "{name}: {}",
                    t.error.unwrap_or_else(|| "failed".into())
                )),
                Ok(_) => still.push((name, client)),
                Err(e) => {
                    tracing::debug!("asking {name}: {e}");
                    still.push((name, client))
                }
            }
        }
        notified = still;
    }
    if !notified.is_empty() {
        failures.push(format!(
            "no PBS committed within {} s",
            cfg.commit_timeout_secs
        ));
    }
    bail!("not committed: {}", failures.join("; "))
}

fn trim_outbox(app: &App) -> Result<()> {
    let ar = &app.outbox;
    ar.keep_last(app.cfg.keep, true)?;
    Ok(())
}

/// One export now, waiting for it (after any running one): the switchover's final export.
pub(crate) async fn export_now(app: Arc<App>) -> RunState {
    let tx = app.new_tx();
    export(app, tx).await
}

// ---------------------------------------------------------------- API

fn start(app: &Arc<App>) -> String {
    if let Some(tx) = app.status.read(|s| s.running.clone()) {
        return tx;
    }
    let tx = app.new_tx();
    let run = RunState {
        tx: tx.clone(),
        state: RunPhase::Running,
        started_at: now_rfc3339(),
        ..Default::default()
    };
    app.set_run(&run);
    tokio::spawn(export(app.clone(), tx.clone()));
    tx
}

async fn run_now(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if peer.0 != "admin" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("peer {} may not start exports (only admin)", peer.0),
        ));
    }
    let tx = start(&app);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "tx": tx }))))
}

async fn run_state(
    State(app): State<Arc<App>>,
    Path(tx): Path<String>,
) -> Result<Json<RunState>, ApiError> {
    app.runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&tx)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no run {tx}")))
}

async fn status(State(app): State<Arc<App>>) -> Json<Status> {
    Json(app.status.get())
}

pub(crate) fn router(app: &Arc<App>) -> Result<Router> {
    let api = Router::new()
        .merge(crate::ha::routes())
        .route("/v1/status", get(status))
        .route("/v1/run", post(run_now))
        .route("/v1/runs/{tx}", get(run_state))
        .with_state(app.clone())
        .merge(pull::routes(
            app.outbox.clone(),
            pull::anyone(app.metrics.counter(
                "pullback_bytes_sent_total",
                "Bytes served to backup servers",
            )),
        ))
        .merge(app.metrics.router());
    // Every body here is small: JSON, or at most 64 chunk ids.
    Ok(wire::server::limit_body(api, wire::server::MAX_JSON_BODY)
        .layer(wire::require_token(app.cfg.server.token_set()?)))
}

pub(crate) fn new_app(cfg: Config) -> Result<Arc<App>> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let outbox = Archive::open_or_init(&cfg.state_dir.join("outbox"))?;
    let mut st: Status = wire::read_json(&status_path(&cfg))?.unwrap_or_default();
    st.source = cfg.source.clone();
    // Every node starts as BACKUP; only the coordinator makes it MAIN.
    let rf = wire::ha::RoleFile::load(&cfg.role_path())?;
    st.role = wire::ha::Role::Backup;
    st.status = wire::ha::ShownStatus::SingleNode;
    st.epoch = rf.map_or(cfg.epoch, |r| r.epoch);
    let ha = crate::ha::HaState {
        role: wire::ha::Role::Backup,
        epoch: st.epoch,
        confirmed: false,
    };
    if let Some(tx) = st.running.take() {
        if let Some(r) = st.last_run.as_mut().filter(|r| r.tx == tx) {
            r.state = RunPhase::Failed;
            r.error = Some("interrupted by a restart of the exporter".into());
            st.last_failure = Some(r.clone());
        }
    }
    let source = SourceName::new(&cfg.source).map_err(anyhow::Error::msg)?;
    let st = wire::Durable::new("status", status_path(&cfg), st);
    Ok(Arc::new(App {
        cfg,
        source,
        outbox: Arc::new(outbox),
        export_lock: tokio::sync::Mutex::new(()),
        runs: Mutex::new(HashMap::new()),
        status: st,
        metrics: Metrics::new(),
        counter: std::sync::atomic::AtomicU64::new(0),
        ha: Mutex::new(ha),
        demote_lock: tokio::sync::Mutex::new(()),
        shutdown: Arc::new(tokio::sync::Notify::new()),
    }))
}

async fn schedule(app: &Arc<App>) -> Result<Option<wire::cron::Cron>> {
    if app.cfg.schedule == "off" {
        return Ok(None);
    }
    let cron = wire::cron::Cron::new().await?;
    let a = app.clone();
    cron.add("schedule", &app.cfg.schedule, move || {
        let a = a.clone();
        async move {
            let tx = start(&a);
            tracing::info!(tx = %tx, "scheduled export");
        }
    })
    .await?;
    cron.start().await?;
    Ok(Some(cron))
}

pub async fn serve(cfg: Config) -> Result<()> {
    let tls = cfg.server.tls_files()?;
    let listen = cfg.server.listen;
    // An export hook that outlived a killed exporter would write into the
    // backup folder while the next export reads it.
    for line in wire::hook::kill_leftovers(&cfg.state_dir.join("hooks")) {
        tracing::warn!("{line}");
    }
    let app = new_app(cfg)?;
    app.status.save()?;
    // Ask the coordinator at once: MAIN, BACKUP (demote) or unreachable (single node).
    crate::ha::startup_hello(&app).await?;
    let _sched = schedule(&app).await?;
    let srv = wire::server::bind(listen, tls.as_ref()).await?;
    tracing::info!("exporter listening on {}", srv.url());
    let stop = app.shutdown.clone();
    srv.serve(router(&app)?, async move {
        tokio::select! {
            () = wire::server::shutdown_signal() => {},
            () = stop.notified() => tracing::warn!("role changed: exiting (the supervisor restarts the node)"),
        }
    })
    .await?;
    Ok(())
}
