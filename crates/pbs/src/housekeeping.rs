//! Scheduled housekeeping of the PBS: retention (prune + gc) and verification on their
//! cron schedules, each recorded in the status.

use std::sync::Arc;

use anyhow::{bail, Result};

use archive::prune::Retention;

use crate::daemon::{now_rfc3339, App, Event};
use wire::blocking;

pub(crate) async fn schedule(app: &Arc<App>) -> Result<Option<wire::cron::Cron>> {
    let sc = &app.cfg.schedule;
    if sc.prune.is_none() && sc.verify.is_none() {
        return Ok(None);
    }
    let cron = wire::cron::Cron::new().await?;
    if let Some(expr) = &sc.prune {
        let r = &app.cfg.retention;
        let pol = Retention {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
        };
        if pol.is_empty() {
            bail!("[schedule] prune is set but [retention] keeps nothing: add keep_* rules");
        }
        let a = app.clone();
        cron.add("schedule.prune", expr, move || {
            let a = a.clone();
            let pol = pol.clone();
            async move {
                let b = a.clone();
                let r = blocking(move || {
                    let ar = &b.archive;
                    let plan = ar.prune_plan(&pol)?;
                    let n = ar.apply_prune(&plan)?;
                    let gc = ar.gc_plan(true)?;
                    let freed = ar.gc(&gc, true)?;
                    Ok(format!("removed {n} generations, freed {freed} bytes"))
                })
                .await;
                let detail = r.unwrap_or_else(|e: anyhow::Error| format!("failed: {e:#}"));
                tracing::info!("scheduled prune: {detail}");
                a.update(|s| {
                    s.last_prune = Some(Event {
                        at: now_rfc3339(),
                        generation: None,
                        detail,
                    })
                });
            }
        })
        .await?;
    }
    if let Some(expr) = &sc.verify {
        let full = sc.verify_full;
        let a = app.clone();
        cron.add("schedule.verify", expr, move || {
            let a = a.clone();
            async move {
                let b = a.clone();
                let r: Result<_> = blocking(move || {
                    let ar = &b.archive;
                    Ok(ar.verify(full)?)
                })
                .await;
                let detail = match r {
                    Ok(rep) if rep.is_clean() => {
                        format!("clean: {} generations", rep.generations)
                    }
                    Ok(rep) => {
                        b_metrics_fail(&a);
                        format!(
                            "{} problems: {}",
                            rep.problems.len(),
                            rep.problems
                                .iter()
                                .map(|p| format!("{} ({})", p.object, p.what))
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    }
                    Err(e) => format!("failed: {e:#}"),
                };
                tracing::info!("scheduled verify: {detail}");
                a.update(|s| {
                    s.last_verify = Some(Event {
                        at: now_rfc3339(),
                        generation: None,
                        detail,
                    })
                });
            }
        })
        .await?;
    }
    cron.start().await?;
    Ok(Some(cron))
}

fn b_metrics_fail(app: &App) {
    app.metrics
        .counter(
            "pullback_verify_problems_total",
            "Scheduled verifies that found damage",
        )
        .inc();
}
