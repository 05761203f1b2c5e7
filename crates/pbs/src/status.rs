//! `pbs status` and `GET /v1/status`: per source the newest generation and
//! its age, the last success and failure; per importer the last good
//! generation and the last failure. Read from the archive and the server's
//! status file, so it answers even when the server is down.

use std::path::Path;

use anyhow::Result;
use archive::{Archive, SourceName};
use serde_json::{json, Value};

use crate::archive_cmd::fmt_time;
use crate::config::Config;
use crate::coord::{self, store::GroupRead, CoordState};
use crate::daemon::{status_path, ServerStatus};

pub struct Report {
    pub json: Value,
    /// Sources whose newest generation is missing or older than max_age, and
    /// `importer NAME` for each clone left behind (see [`BEHIND_ALARM_SECS`]).
    pub stale: Vec<String>,
}

/// The status from the files alone: opens the archive (the server passes its
/// own, already open, to [`report_with`]).
pub fn report(cfg: &Config, state_dir: &Path) -> Result<Report> {
    let ar = match &cfg.archive.path {
        Some(p) if cfg.archive.s3.is_some() || p.join("config").exists() => Some(
            crate::archive_cmd::open_archive(p, cfg, crate::archive_cmd::Open::Existing)?,
        ),
        _ => None,
    };
    let groups = coord::store::read_groups(cfg, state_dir)?;
    report_with(cfg, state_dir, ar.as_ref(), &groups)
}

/// The status, with each group's coordinator state as read by the caller (`groups`, in
/// config order: the server's coordinators, or [`coord::store::read_groups`]).
pub fn report_with(
    cfg: &Config,
    state_dir: &Path,
    ar: Option<&Archive>,
    groups: &[GroupRead],
) -> Result<Report> {
    let st: ServerStatus = wire::read_json(&status_path(state_dir))?.unwrap_or_default();
    let now = archive::ingest::now_ns();
    let mut stale = Vec::new();
    let mut sources = Vec::new();
    let mut newest_of: std::collections::HashMap<String, archive::GenRecord> =
        std::collections::HashMap::new();
    for s in &cfg.sources {
        let newest = match (&ar, SourceName::new(&s.name)) {
            (Some(ar), Ok(n)) => ar.latest(&n)?,
            _ => None,
        };
        if let Some(r) = &newest {
            newest_of.insert(s.name.clone(), r.clone());
        }
        let age = newest
            .as_ref()
            .map(|r| ((now - r.taken_at_ns).max(0) / 1_000_000_000) as u64);
        let is_stale = age.is_none_or(|a| a > s.max_age_secs);
        if is_stale {
            stale.push(s.name.clone());
        }
        let ss = st.sources.get(&s.name).cloned().unwrap_or_default();
        sources.push(json!({
            "name": s.name,
            "newest": newest.as_ref().map(|r| json!({
                "generation": r.id().to_string(),
                "epoch": r.epoch.0,
                "taken_at": fmt_time(r.taken_at_ns),
                "files": r.stats.files,
                "bytes": r.stats.bytes,
            })),
            "age_secs": age,
            "max_age_secs": s.max_age_secs,
            "stale": is_stale,
            "last_success": ss.last_success,
            "last_failure": ss.last_failure,
        }));
    }
    // The sources kept as a second copy of another PBS's.
    let mut mirrors = Vec::new();
    for m in &cfg.mirrors {
        let newest = match (&ar, SourceName::new(&m.source)) {
            (Some(ar), Ok(n)) => ar.latest(&n)?,
            _ => None,
        };
        let ss = st.sources.get(&m.source).cloned().unwrap_or_default();
        mirrors.push(json!({
            "source": m.source,
            "from": m.from.name,
            "newest": newest.map(|r| r.id().to_string()),
            "last_success": ss.last_success,
            "last_failure": ss.last_failure,
        }));
    }
    // The coordinator's view (written by `pbs serve`; none before its first start).
    // One per source's group; the first one's also at the top level (as with one source).
    let coord: Option<CoordState> = groups.first().and_then(|g| g.state.clone());
    let nodes: Vec<_> = groups
        .iter()
        .filter_map(|g| g.state.as_ref())
        .flat_map(|c| coord::views(c, &st))
        .collect();
    let group_json: Vec<Value> = groups
        .iter()
        .map(|g| {
            let c = g.state.as_ref();
            let mut v = json!({
                "source": g.source,
                "epoch": c.map(|c| c.epoch),
                "main": c.and_then(|c| c.main.clone()),
                "pending_promotion": c.and_then(|c| c.pending_promotion.clone()),
            });
            // The coordinator on etcd: the key's revision, the grant's, the main's lease.
            if let Some(e) = &g.store {
                v["etcd"] = e.clone();
            }
            v
        })
        .collect();
    let node_json = serde_json::to_value(&nodes)?;
    let mut lagging = Vec::new();
    let importers: Vec<Value> = cfg
        .importers
        .iter()
        .map(|i| {
            let s = st.importers.get(&i.name).cloned().unwrap_or_default();
            let node = node_json
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == i.name.as_str()));
            // Nothing is pushed to the main, a Broken node or a Spare: none is behind.
            let receives = node.is_none_or(|n| {
                n["role"] != "MAIN"
                    && n["status"] != "Broken"
                    && n["status"] != "Disabled"
                    && n["status"] != "Spare"
            });
            let behind = receives
                .then(|| behind(&s, i.source.as_deref(), &newest_of, now))
                .flatten();
            if behind.as_ref().is_some_and(|b| b.alarm) {
                lagging.push(i.name.clone());
            }
            json!({
                "name": i.name,
                "url": i.url,
                "last_good": s.last_good,
                "last_failure": s.last_failure,
                "behind": behind.as_ref().map(|b| &b.newest),
                "behind_alarm": behind.as_ref().is_some_and(|b| b.alarm),
            })
        })
        .collect();
    let epoch = ar
        .as_ref()
        .and_then(|ar| {
            ar.generations()
                .ok()?
                .iter()
                .filter_map(|g| ar.record(g).ok())
                .map(|r| r.epoch.0)
                .max()
        })
        .unwrap_or(0);
    let epoch = coord.as_ref().map_or(epoch, |c| c.epoch.max(epoch));
    let status = match (stale.is_empty(), lagging.is_empty()) {
        (true, true) => "OK",
        (false, _) => "STALE",
        (true, false) => "CLONE BEHIND",
    };
    stale.extend(lagging.iter().map(|n| format!("importer {n}")));
    let json = json!({
        "role": "COORDINATOR",
        "status": status,
        "epoch": epoch,
        "sources": sources,
        "mirrors": mirrors,
        "importers": importers,
        "main": coord.as_ref().and_then(|c| c.main.clone()),
        // Every source's group: its own epoch and main.
        "groups": group_json,
        "nodes": nodes,
        // The last few takeovers, newest first; the full bounded history is in
        // coordinator.json.
        "takeovers": coord
            .as_ref()
            .map(|c| c.takeovers.iter().rev().take(coord::SHOW_TAKEOVERS).cloned().collect::<Vec<_>>())
            .unwrap_or_default(),
        "pending_promotion": coord.as_ref().and_then(|c| c.pending_promotion.clone()),
        "clone_needed": coord.as_ref().and_then(|c| c.clone_needed.as_ref()).map(|c| {
            let mut v = json!(c);
            v["warning"] = json!(coord::clone_needed_text(c));
            v
        }),
        "last_prune": st.last_prune,
        "last_verify": st.last_verify,
        "transactions": st.transactions.iter().rev().take(20).collect::<Vec<_>>(),
    });
    Ok(Report { json, stale })
}

/// How long a clone may stay behind the newest generation before `pbs status` counts it
/// as a problem (exit 1): longer than any normal import.
pub const BEHIND_ALARM_SECS: i64 = 600;

struct Behind {
    /// The newest generation of the clone's source, which it does not hold.
    newest: String,
    /// Behind for longer than [`BEHIND_ALARM_SECS`], or its last push failed.
    alarm: bool,
}

/// Whether a clone lacks the newest generation of its source.
fn behind(
    s: &crate::daemon::ImporterStatus,
    group: Option<&str>,
    newest_of: &std::collections::HashMap<String, archive::GenRecord>,
    now: i64,
) -> Option<Behind> {
    let good = s.last_good.as_ref().and_then(|e| e.generation.clone());
    // The source of the clone's group (or, without one, of what it last verified).
    let source = group.map(str::to_string).or_else(|| {
        good.as_deref()
            .and_then(|g| g.parse::<archive::GenId>().ok())
            .map(|g| g.source.as_str().to_string())
    });
    // A clone that never got anything is behind every source that has a generation.
    let newest = match &source {
        Some(src) => newest_of.get(src)?,
        None => newest_of.values().max_by_key(|r| r.committed_at_ns)?,
    };
    let id = newest.id().to_string();
    if good.as_deref() == Some(id.as_str()) {
        return None;
    }
    let failed_last = match (&s.last_failure, &s.last_good) {
        (Some(f), Some(g)) => f.at >= g.at,
        (Some(_), None) => true,
        _ => false,
    };
    let old = now - newest.committed_at_ns > BEHIND_ALARM_SECS * 1_000_000_000;
    Some(Behind {
        newest: id,
        alarm: failed_last || old,
    })
}

fn event(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let at = v["at"].as_str().unwrap_or("");
    let g = v["generation"]
        .as_str()
        .map(|g| format!(" {g}"))
        .unwrap_or_default();
    let d = v["detail"].as_str().unwrap_or("");
    format!("{at}{g} {d}")
}

/// One line about a group's coordinator on etcd.
fn etcd_line(g: &Value) -> String {
    let e = &g["etcd"];
    if let Some(err) = e["error"].as_str() {
        return format!(
            "coordinator on etcd ({}): {err}",
            e["endpoints"].as_str().unwrap_or("")
        );
    }
    let grant = &e["grant"];
    let grant = match grant["node"].as_str() {
        Some(n) => format!(
            "last grant {n} at epoch {} (etcd revision {})",
            grant["epoch"], grant["revision"]
        ),
        None => "no grant yet".into(),
    };
    let lease = &e["main_lease"];
    let lease = match lease["state"].as_str() {
        Some("alive") => format!(
            "main lease alive ({}, {} s left)",
            lease["node"].as_str().unwrap_or(""),
            lease["ttl_secs"]
        ),
        _ => "main lease expired (no PBS heard the main lately)".into(),
    };
    format!(
        "coordinator on etcd, key {} at revision {}: {grant}; {lease}",
        e["key"].as_str().unwrap_or(""),
        e["revision"]
    )
}

pub fn print(cfg: &Config, state_dir: &Path, json_out: bool) -> Result<std::process::ExitCode> {
    let r = report(cfg, state_dir)?;
    if json_out {
        wire::outln!("{}", serde_json::to_string_pretty(&r.json)?)?;
    } else {
        wire::outln!(
            "pbs status: {}  epoch {}",
            r.json["status"].as_str().unwrap_or(""),
            r.json["epoch"]
        )?;
        let groups = r.json["groups"].as_array().cloned().unwrap_or_default();
        if groups.len() > 1 {
            for g in &groups {
                wire::outln!(
                    "group of source {}: epoch {}  main {}",
                    g["source"].as_str().unwrap_or(""),
                    g["epoch"],
                    g["main"].as_str().unwrap_or("none")
                )?;
            }
        }
        for g in groups.iter().filter(|g| g["etcd"].is_object()) {
            wire::outln!("{}", etcd_line(g))?;
        }
        for s in r.json["sources"].as_array().into_iter().flatten() {
            let newest = &s["newest"];
            wire::outln!(
                "source {}: newest {} taken {} (age {} s, max {} s){}",
                s["name"].as_str().unwrap_or(""),
                newest["generation"].as_str().unwrap_or("none"),
                newest["taken_at"].as_str().unwrap_or("-"),
                s["age_secs"],
                s["max_age_secs"],
                if s["stale"].as_bool() == Some(true) {
                    "  STALE"
                } else {
                    ""
                }
            )?;
            wire::outln!("    last success: {}", event(&s["last_success"]))?;
            wire::outln!("    last failure: {}", event(&s["last_failure"]))?;
        }
        for m in r.json["mirrors"].as_array().into_iter().flatten() {
            wire::outln!(
                "mirror {} from {}: newest {}",
                m["source"].as_str().unwrap_or(""),
                m["from"].as_str().unwrap_or(""),
                m["newest"].as_str().unwrap_or("none"),
            )?;
            wire::outln!("    last success: {}", event(&m["last_success"]))?;
            wire::outln!("    last failure: {}", event(&m["last_failure"]))?;
        }
        for i in r.json["importers"].as_array().into_iter().flatten() {
            wire::outln!(
                "importer {} ({}):",
                i["name"].as_str().unwrap_or(""),
                i["url"].as_str().unwrap_or("")
            )?;
            wire::outln!("    last good:    {}", event(&i["last_good"]))?;
            wire::outln!("    last failure: {}", event(&i["last_failure"]))?;
            if let Some(n) = i["behind"].as_str() {
                wire::outln!(
                    "    BEHIND: does not hold {n}{}",
                    if i["behind_alarm"].as_bool() == Some(true) {
                        " (its last push failed, or for over 10 minutes)"
                    } else {
                        " (being pushed?)"
                    }
                )?;
            }
        }
        for n in r.json["nodes"].as_array().into_iter().flatten() {
            wire::outln!(
                "node {} ({}): {} {}  epoch {}  generation {}  last seen {}",
                n["name"].as_str().unwrap_or(""),
                n["kind"].as_str().unwrap_or(""),
                n["role"].as_str().unwrap_or(""),
                n["status"].as_str().unwrap_or(""),
                n["epoch"],
                n["generation"].as_str().unwrap_or("none"),
                n["last_seen"].as_str().unwrap_or("never"),
            )?;
        }
        for t in r.json["takeovers"].as_array().into_iter().flatten() {
            wire::outln!(
                "takeover {}: {} MAIN at epoch {} (old main {}){}, by {}; {}",
                t["at"].as_str().unwrap_or(""),
                t["node"].as_str().unwrap_or(""),
                t["epoch"],
                t["old_main"].as_str().unwrap_or("none"),
                if t["forced"].as_bool() == Some(true) {
                    ", FORCED"
                } else {
                    ""
                },
                t["by"].as_str().unwrap_or(""),
                t["new_clone"].as_str().unwrap_or(""),
            )?;
        }
        let p = &r.json["pending_promotion"];
        if !p.is_null() {
            println!(
                "WARNING: promotion pending: {} was granted MAIN at epoch {} ({}) but has not confirmed it; retried {} times{}",
                p["node"].as_str().unwrap_or(""),
                p["epoch"],
                p["granted_at"].as_str().unwrap_or(""),
                p["retries"],
                p["last_error"].as_str().map(|e| format!(", last: {e}")).unwrap_or_default(),
            );
        }
        let c = &r.json["clone_needed"];
        if !c.is_null() {
            wire::outln!(
                "WARNING: a new clone is needed since the takeover at epoch {} ({}): {}",
                c["epoch"],
                c["at"].as_str().unwrap_or(""),
                c["warning"].as_str().unwrap_or(""),
            )?;
        }
    }
    if !r.stale.is_empty() {
        eprintln!(
            "pbs: newest generation missing or older than max_age, or a clone left behind: {}",
            r.stale.join(", ")
        );
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}
