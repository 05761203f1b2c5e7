//! Planned switchover (`pbs switchover --to NODE`, `pbs balance`) and the optional
//! automatic failover policy (`[failover] auto`), on top of the takeover's gates.
//!
//! Switchover, zero loss: the target must be an eligible clone (the takeover's gates);
//! the main exporter is asked `POST /rest/ha/status?change=BACKUP&final=true` (its demote
//! hook, one last export, the PBS's commit; it then exits 0 as BACKUP); the PBS waits until
//! the target has imported and verified that final generation (its push status), then
//! grants the target MAIN at epoch + 1 through the takeover path (forced: the final
//! generation is the newest one; the epoch must not have moved) with the old main kept
//! BACKUP/Follower, not Broken; finally it tells the clone `POST /v1/ha/promote` (the
//! takeover's promotion, authenticated by the PBS's push token, no password).
//!
//! Automatic failover: when the main has been silent (no hello, no notification, no
//! commit) for `after_secs`, the PBS grants MAIN to the eligible clone with the newest
//! verified generation, through the takeover with its gates (not forced), fences the old
//! main (Broken) and promotes the clone through the same `POST /v1/ha/promote`.
//!
//! After a takeover (manual, forced or automatic; not a switchover) the PBS asks for a new
//! clone ([`new_clone`]): the spare the grant activated is pushed the latest generation at
//! once (the rejoin push path), or the `[failover] on_clone_needed` hook runs and its
//! outcome is recorded in `coordinator.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coord::GrantKind;

use archive::GenId;
use axum::http::StatusCode;
use wire::ha::{CloneNeeded, PromoteRequest, SwitchoverResult, TakeoverRequest};
use wire::server::ApiError;

use crate::daemon::App;

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError::conflict(msg)
}

fn message(e: &wire::WireError) -> String {
    match e {
        wire::WireError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Tells clone `node` that the coordinator granted it MAIN at `epoch`.
pub(crate) async fn promote_clone(app: &App, node: &str, epoch: u64) -> Result<(), ApiError> {
    let imp = app
        .cfg
        .importers
        .iter()
        .find(|i| i.name == node)
        .ok_or_else(|| ApiError::internal(format!("no [[importer]] {node}")))?;
    let client = imp
        .peer()
        .client(Duration::from_secs(
            app.cfg.failover.switchover_timeout_secs.max(30),
        ))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    client
        .post_json::<_, serde_json::Value>("/v1/ha/promote", &PromoteRequest { epoch })
        .await
        .map(|_| ())
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{node} was granted MAIN at epoch {epoch} but did not confirm its promotion: {}; run its promote hook and set its role file by hand",
                    message(&e)
                ),
            )
        })
}

/// `POST /v1/ha/switchover`.
pub(crate) async fn switchover(app: &Arc<App>, to: &str) -> Result<SwitchoverResult, ApiError> {
    let _one = app
        .switching
        .try_lock()
        .map_err(|_| conflict("a switchover or failover is already running"))?;
    let coord = app.coord_of_clone(to)?;
    let (a, node) = (app.clone(), to.to_string());
    // The gates on the state as stored now (etcd: read again).
    let st = wire::blocking(move || {
        let c = a.coord_of_clone(&node)?;
        c.check_eligible(&node)?;
        c.fresh().map_err(ApiError::from)
    })
    .await?;
    let epoch = st.epoch;
    let main = st
        .main
        .clone()
        .ok_or_else(|| conflict("there is no main to switch over from (use a takeover)"))?;
    let peer = coord.exporter_peer(&main).ok_or_else(|| {
        conflict(format!(
            "the main {main} is not a [[source]] exporter of this PBS: it cannot be asked for a final export"
        ))
    })?;
    let wait = Duration::from_secs(app.cfg.failover.switchover_timeout_secs);
    tracing::warn!(from = %main, to, epoch, "switchover: asking the main for a final export");
    let client = peer
        .client(wait)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let answer: serde_json::Value = client
        .post_json(
            "/rest/ha/status?change=BACKUP&final=true",
            &serde_json::json!({}),
        )
        .await
        .map_err(|e| {
            conflict(format!(
                "the main {main} did not take a final export: {}",
                message(&e)
            ))
        })?;
    let gen = answer["generation"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| conflict(format!("the main {main} answered no final generation")))?;
    let want: GenId = gen.parse().map_err(|e| {
        conflict(format!(
            "the main {main} answered a bad final generation: {e}"
        ))
    })?;
    tracing::warn!(generation = %gen, to, "switchover: waiting for the target to verify the final generation");
    let end = Instant::now() + wait;
    loop {
        let s = app
            .status
            .read(|s| s.importers.get(to).cloned())
            .unwrap_or_default();
        let good = s
            .last_good
            .as_ref()
            .and_then(|e| e.generation.as_deref())
            .and_then(|g| g.parse::<GenId>().ok());
        if good.is_some_and(|g| g.source == want.source && g.seq >= want.seq) {
            break;
        }
        if let Some(f) = s
            .last_failure
            .as_ref()
            .filter(|f| f.generation.as_deref() == Some(gen.as_str()))
        {
            return Err(conflict(format!(
                "{to} failed to import the final generation {gen}: {}; {main} stepped down (BACKUP) but is still the main at epoch {epoch}",
                f.detail
            )));
        }
        if Instant::now() >= end {
            return Err(conflict(format!(
                "{to} did not verify the final generation {gen} within {} s; {main} stepped down (BACKUP) but is still the main at epoch {epoch}",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let req = TakeoverRequest {
        node: to.to_string(),
        force: true,
        epoch: Some(epoch),
        by: None,
        password: None,
    };
    let a = app.clone();
    let (g, effects) = tokio::task::spawn_blocking(move || {
        let server = a.status.get();
        a.coord_of(&req.node)?
            .grant(&req, &server, GrantKind::Switchover)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let (v, old) = (g.verdict, g.old);
    // The promotion of `to` (the old main stepped down already).
    crate::effects::run(app, effects).await?;
    tracing::warn!(to, epoch = v.epoch, generation = %gen, "switchover done");
    Ok(SwitchoverResult {
        main: to.to_string(),
        old_main: old,
        epoch: v.epoch,
        generation: Some(gen),
        noop: false,
    })
}

/// `POST /v1/ha/balance`: a switchover to `[failover] preferred_leader`, unless it leads.
pub(crate) async fn balance(app: &Arc<App>) -> Result<SwitchoverResult, ApiError> {
    let preferred = app.cfg.failover.preferred_leader.clone().ok_or_else(|| {
        conflict("no [failover] preferred_leader in the PBS config: nothing to balance to")
    })?;
    let st = app.coord_of(&preferred)?.snapshot();
    if st.main.as_deref() == Some(preferred.as_str()) {
        return Ok(SwitchoverResult {
            main: preferred,
            old_main: None,
            epoch: st.epoch,
            generation: None,
            noop: true,
        });
    }
    switchover(app, &preferred).await
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The automatic failover policy (`[failover] auto = true`), checked every second.
pub(crate) async fn auto_failover(app: Arc<App>) {
    let started = time::OffsetDateTime::now_utc();
    let after = time::Duration::seconds(app.cfg.failover.after_secs as i64);
    let mut last_refusal = vec![String::new(); app.coords.len()];
    tracing::info!(
        after_secs = app.cfg.failover.after_secs,
        "automatic failover is on"
    );
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (group, last) in last_refusal.iter_mut().enumerate() {
            check_group(&app, group, started, after, last).await;
        }
    }
}

/// One group's turn of the automatic failover: its main's last sign of life, and a grant
/// to its best clone when that is older than `after`.
async fn check_group(
    app: &Arc<App>,
    group: usize,
    started: time::OffsetDateTime,
    after: time::Duration,
    last_refusal: &mut String,
) {
    let coord = &app.coords[group];
    // The main's last sign of life as stored now: with etcd, it may have spoken to another
    // PBS.
    let a = app.clone();
    let st = match wire::blocking(move || a.coords[group].fresh().map_err(ApiError::from)).await {
        Ok(st) => st,
        Err(e) => {
            let e = e.to_string();
            if e != *last_refusal {
                tracing::warn!("automatic failover: {e}");
                *last_refusal = e;
            }
            return;
        }
    };
    let Some(main) = st.main.clone() else {
        return;
    };
    let server = app.status.get();
    // Last sign of life: a hello or notification, a commit of its source, this start.
    let mut last = started;
    let seen = st.nodes.get(&main).and_then(|n| n.last_seen.as_deref());
    // Its source's commits: whichever node of the group made them.
    let commits = coord
        .group
        .iter()
        .filter_map(|s| server.sources.get(s))
        .filter_map(|s| s.last_success.as_ref().map(|e| e.at.as_str()));
    for t in seen.into_iter().chain(commits).filter_map(parse_time) {
        last = last.max(t);
    }
    if time::OffsetDateTime::now_utc() - last < after {
        return;
    }
    let Some(best) = coord.best_clone(&server) else {
        let why =
            format!("the main {main} is silent but no eligible clone holds a verified generation");
        if why != *last_refusal {
            tracing::warn!("automatic failover: {why}");
            *last_refusal = why;
        }
        return;
    };
    let Ok(_one) = app.switching.try_lock() else {
        return;
    };
    let req = TakeoverRequest {
        node: best.clone(),
        force: false,
        epoch: Some(st.epoch),
        by: Some("auto".into()),
        password: None,
    };
    let a = app.clone();
    let granted = tokio::task::spawn_blocking(move || {
        let server = a.status.get();
        a.coords[group].grant(&req, &server, GrantKind::Takeover { promote: true })
    })
    .await;
    match granted {
        Ok(Ok((g, effects))) => {
            let (v, old) = (g.verdict, g.old);
            tracing::warn!(node = %best, epoch = v.epoch, old_main = ?old, "automatic failover: MAIN granted");
            // The old main told to step down, a new clone asked for, the clone promoted.
            if let Err(e) = crate::effects::run(app, effects).await {
                tracing::error!("automatic failover: {}", e.message);
            }
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            if e != *last_refusal {
                tracing::warn!("automatic failover refused: {e}");
                *last_refusal = e;
            }
        }
        Err(e) => tracing::error!("automatic failover: {e}"),
    }
}

/// How long the `on_clone_needed` hook may run.
const CLONE_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// After a takeover that found no spare: run the `on_clone_needed` hook, if configured
/// (in the background), and record its outcome.
pub(crate) fn run_clone_hook(app: &Arc<App>, needed: CloneNeeded) {
    let Some(hook) = app.cfg.failover.on_clone_needed.clone() else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let old = needed.old_main.clone().unwrap_or_default();
        let source = app
            .coord_of(&needed.new_main)
            .ok()
            .and_then(|c| c.group.clone());
        let generation = crate::daemon::latest_generation(&app, source)
            .await
            .map(|g| g.to_string())
            .unwrap_or_default();
        let env = vec![
            ("PULLBACK_EPOCH".to_string(), needed.epoch.to_string()),
            ("PULLBACK_NEW_MAIN".to_string(), needed.new_main.clone()),
            ("PULLBACK_OLD_MAIN".to_string(), old),
            ("PULLBACK_GENERATION".to_string(), generation),
        ];
        let log = app
            .state_dir
            .join("logs")
            .join(format!("clone-needed-{}.log", needed.epoch));
        let (outcome, ok) = match wire::run_hook(&hook, &[], &env, &log, CLONE_HOOK_TIMEOUT).await {
            Ok(o) => (
                format!(
                    "{} after {:.1} s (log {})",
                    o.status,
                    o.duration.as_secs_f64(),
                    log.display()
                ),
                o.success(),
            ),
            Err(e) => (e.to_string(), false),
        };
        if ok {
            tracing::warn!(epoch = needed.epoch, "on_clone_needed hook: {outcome}");
        } else {
            tracing::error!(epoch = needed.epoch, "on_clone_needed hook: {outcome}");
        }
        let a = app.clone();
        let epoch = needed.epoch;
        let new_main = needed.new_main.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = a.coord_of(&new_main) {
                c.set_clone_outcome(epoch, outcome, ok)
            }
        })
        .await;
    });
}
