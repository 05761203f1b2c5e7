//! Pushing generations to the clones: one job per clone, apart from the pulls.
//!
//! A committed generation is *queued* for each clone ([`push_all`]) and the pull worker
//! goes on at once. Each clone's job pushes the newest generation queued for it; one that
//! is queued while a push runs replaces any older one still waiting (the queue holds one
//! generation per source), so a slow clone catches up in one step and a dead clone costs
//! nothing to the others or to the next pull.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use archive::{GenId, GenRecord, SourceName};

use crate::config;
use crate::daemon::{now_rfc3339, App, Event};
use wire::blocking;

/// The generations waiting for one clone (one per source, the newest) and the bell that
/// wakes its job.
#[derive(Default)]
pub(crate) struct PushJob {
    pending: Mutex<BTreeMap<String, GenId>>,
    wake: tokio::sync::Notify,
}

/// Queue `gen` for clone `node` (keeping only the newest per source).
fn queue(app: &Arc<App>, node: &str, gen: &GenId) {
    let Some(job) = app.push_jobs.get(node) else {
        return;
    };
    {
        let mut p = job.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = p
            .entry(gen.source.to_string())
            .or_insert_with(|| gen.clone());
        if e.seq < gen.seq {
            *e = gen.clone();
        }
    }
    job.wake.notify_one();
}

/// Start one push job per clone.
pub(crate) fn start_jobs(app: &Arc<App>) {
    for imp in app.cfg.importers.clone() {
        let Some(job) = app.push_jobs.get(&imp.name).cloned() else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                job.wake.notified().await;
                loop {
                    let next = job
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_first();
                    let Some((_, gen)) = next else { break };
                    push_one(&app, &imp, &gen).await;
                }
            }
        });
    }
}

use wire::api::{ApplyResult, Notify};

/// What the PBS tells a clone or a mirror of generation `gen` (taken at `epoch`).
pub(crate) fn announce(gen: &GenId, epoch: u64) -> Notify {
    Notify {
        source: gen.source.to_string(),
        seq: gen.seq.0,
        tx: format!("{gen}@{epoch}"),
        epoch,
        node: None,
    }
}

/// Tell clone `imp` that `gen` is ready; it pulls the generation from this PBS (the one
/// transfer engine, crates/pull) and answers once it restored, checked and verified it.
async fn push(app: &Arc<App>, imp: &config::ImporterConfig, gen: &GenId) -> Result<()> {
    let client = imp
        .peer()
        .client(Duration::from_secs(4 * 3600))
        .map_err(|e| anyhow!("{e}"))?;
    let a = app.clone();
    let g = gen.clone();
    let epoch = blocking(move || anyhow::Ok(a.archive.record(&g)?.epoch.0)).await?;
    let n = announce(gen, epoch);
    let r: ApplyResult = client
        .post_json("/v1/notify", &n)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if !r.ok || !r.verified {
        bail!(
            "import failed: {}{}",
            r.error.unwrap_or_else(|| "not verified".into()),
            if r.log_tail.is_empty() {
                String::new()
            } else {
                format!("\n{}", r.log_tail)
            }
        );
    }
    Ok(())
}

/// Queue `gen` for every clone that receives pushes (not the main, which serves, nor a
/// Broken node, quarantined). Returns at once.
pub(crate) fn push_all(app: &Arc<App>, gen: &GenId) {
    let Some(coord) = app.coord_of_source(gen.source.as_str()) else {
        return;
    };
    // The clones of the generation's source's group (on a PBS that only mirrors, one
    // group holds every clone: each gets its own source's generations).
    for imp in app.cfg.importers.iter().filter(|i| {
        coord.has_node(&i.name) && i.source.as_deref().is_none_or(|s| s == gen.source.as_str())
    }) {
        if coord.receives_pushes(&imp.name) {
            queue(app, &imp.name, gen);
        }
    }
}

/// The newest generation of the archive (per source, the one of `source` or of any).
pub(crate) async fn latest_generation(app: &Arc<App>, source: Option<String>) -> Option<GenId> {
    let a = app.clone();
    blocking(move || {
        let ar = &a.archive;
        let mut best: Option<GenRecord> = None;
        for s in a.cfg.source_names() {
            if source.as_deref().is_some_and(|x| x != s) {
                continue;
            }
            let Ok(name) = SourceName::new(s) else {
                continue;
            };
            if let Some(r) = ar.latest(&name)? {
                if best.as_ref().is_none_or(|b| r.taken_at_ns > b.taken_at_ns) {
                    best = Some(r);
                }
            }
        }
        anyhow::Ok(best.map(|r| r.id()))
    })
    .await
    .ok()
    .flatten()
}

/// Rejoin: queue the latest generation for clone `node`.
pub(crate) fn push_latest(app: &Arc<App>, node: &str) {
    let app = app.clone();
    let node = node.to_string();
    tokio::spawn(async move {
        // The newest generation of the node's own group's source.
        let source = app.coord_of(&node).ok().and_then(|c| c.group.clone());
        match latest_generation(&app, source).await {
            Some(gen) => queue(&app, &node, &gen),
            None => tracing::info!(node = %node, "rejoin: no generation to restore yet"),
        }
    });
}

/// Pushes `gen` to one clone (with retries) and records the result; a rejoining clone
/// that verified the latest generation becomes a Follower.
async fn push_one(app: &Arc<App>, imp: &config::ImporterConfig, gen: &GenId) {
    // A newer generation was committed while this push waited: that one's push covers
    // it (and a clone refuses to move back).
    if let Some(latest) = latest_generation(app, Some(gen.source.to_string())).await {
        if latest.seq > gen.seq {
            return;
        }
    }
    let t = Instant::now();
    let backoff = wire::Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
        attempts: 3,
    };
    let mut last = None;
    for attempt in 0..backoff.attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        match push(app, imp, gen).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                tracing::warn!(importer = %imp.name, generation = %gen, "push failed: {e:#}");
                last = Some(e);
            }
        }
    }
    app.metrics
        .gauge_with(
            "pullback_push_seconds",
            "Duration of the last push",
            &[("importer", &imp.name)],
        )
        .set_duration(t.elapsed());
    let ev = |detail: String| Event {
        at: now_rfc3339(),
        generation: Some(gen.to_string()),
        detail,
    };
    app.update(|s| {
        let st = s.importers.entry(imp.name.clone()).or_default();
        match &last {
            None => st.last_good = Some(ev("imported and verified".into())),
            Some(e) => st.last_failure = Some(ev(format!("{e:#}"))),
        }
    });
    if last.is_some() {
        app.metrics
            .counter_with(
                "pullback_failures_total",
                "Failed transfers",
                &[("peer", &imp.name)],
            )
            .inc();
    } else if app
        .coord_of(&imp.name)
        .is_ok_and(|c| c.is_rejoining(&imp.name))
    {
        if let Some(latest) = latest_generation(app, Some(gen.source.to_string())).await {
            let (a, node, g, l) = (
                app.clone(),
                imp.name.clone(),
                gen.to_string(),
                latest.to_string(),
            );
            let done = tokio::task::spawn_blocking(move || {
                a.coord_of(&node)
                    .is_ok_and(|c| c.finish_rejoin(&node, &g, &l))
            })
            .await
            .unwrap_or(false);
            if !done {
                // A newer generation was committed meanwhile: that one, too.
                if latest != *gen {
                    push_latest(app, &imp.name);
                }
            }
        }
    }
}

/// At start: every clone gets the newest generation of every source, so that a push cut
/// short by a crash or restart of the PBS does not leave a clone behind until the next
/// export (a clone that holds it answers at once).
pub(crate) async fn catch_up(app: Arc<App>) {
    let names: Vec<String> = app.cfg.source_names().map(str::to_string).collect();
    for name in names {
        if let Some(gen) = latest_generation(&app, Some(name)).await {
            tracing::info!(generation = %gen, "start-up: bringing every clone to the newest generation");
            push_all(&app, &gen);
        }
    }
}
