//! `exporter run` and `exporter status`: through the running daemon when there is one.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use wire::phase::RunPhase;

use crate::daemon::{export, new_app, router, status_path, RunState, Status};
use crate::Config;

fn local_client(cfg: &Config) -> Result<wire::Client> {
    wire::cli::admin_client(
        &cfg.server,
        "`exporter run` and `status`",
        Duration::from_secs(10),
    )
}

fn report(r: &RunState, json: bool) -> Result<ExitCode> {
    if !json {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
    }
    if json {
        wire::outln!("{}", serde_json::to_string_pretty(r)?)?;
    } else if r.state == RunPhase::Committed {
        wire::outln!(
            "export {} committed as {} by {}",
            r.tx,
            r.committed_as.as_deref().unwrap_or("?"),
            r.committed_by.as_deref().unwrap_or("?")
        )?;
    } else {
        eprintln!(
            "export {} failed: {}",
            r.tx,
            r.error.as_deref().unwrap_or("unknown reason")
        );
        if !r.log_tail.is_empty() {
            eprintln!("--- hook log (end) ---\n{}", r.log_tail.trim_end());
        }
    }
    Ok(if r.state == RunPhase::Committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `exporter run`: through the daemon when one answers; otherwise serve the
/// snapshot from this process until a PBS has committed it.
pub async fn run_cli(cfg: Config, json: bool) -> Result<ExitCode> {
    let client = local_client(&cfg)?;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let started: Result<serde_json::Value, _> =
        client.post_json("/v1/run", &serde_json::json!({})).await;
    let run = match started {
        Ok(v) => {
            let tx = v["tx"].as_str().unwrap_or_default().to_string();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let r: RunState = client
                    .get_json(&format!("/v1/runs/{tx}"))
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                if let Some(b) = &bar {
                    b.set_message(format!("{} {}", r.tx, r.state));
                }
                if matches!(r.state, RunPhase::Committed | RunPhase::Failed) {
                    break r;
                }
            }
        }
        // Nothing listens: no daemon (a TLS or other failure is an error).
        Err(wire::WireError::Connect { ref detail, .. }) if detail.contains("refused") => {
            // No daemon: do it here, serving the snapshot while the PBS pulls.
            let tls = cfg.server.tls_files()?;
            let listen = cfg.server.listen;
            let app = new_app(cfg)?;
            let srv = wire::server::bind(listen, tls.as_ref())
                .await
                .with_context(|| format!("no daemon answered and {listen} cannot be bound"))?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let router = router(&app)?;
            let server = tokio::spawn(srv.serve(router, async move {
                let _ = stop_rx.await;
            }));
            if let Some(b) = &bar {
                b.set_message("exporting (no daemon running: serving from this process)");
            }
            let tx = app.new_tx();
            let r = export(app.clone(), tx).await;
            let _ = stop_tx.send(());
            let _ = server.await;
            r
        }
        Err(e) => return Err(anyhow!("{e}")),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report(&run, json)
}

pub async fn status_cli(cfg: Config, json: bool) -> Result<ExitCode> {
    let client = local_client(&cfg)?;
    let (st, live) = match client.get_json::<Status>("/v1/status").await {
        Ok(s) => (s, true),
        Err(_) => (
            wire::read_json::<Status>(&status_path(&cfg))?.unwrap_or_default(),
            false,
        ),
    };
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["daemon_running"] = serde_json::json!(live);
        wire::outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        wire::outln!(
            "exporter {}: role {} status {} epoch {}{}",
            cfg.source,
            st.role,
            st.status,
            st.epoch,
            if live { "" } else { "  (daemon not running)" }
        )?;
        let line = |what: &str, r: &Option<RunState>| match r {
            Some(r) => wire::outln!(
                "{what}: {} {} {}{}",
                r.tx,
                r.state,
                r.committed_as.as_deref().unwrap_or(""),
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            None => wire::outln!("{what}: none"),
        };
        line("last run", &st.last_run)?;
        line("last success", &st.last_success)?;
        line("last failure", &st.last_failure)?;
        for (pbs, list) in &st.missed {
            let seqs: Vec<String> = list.iter().map(|n| n.seq.to_string()).collect();
            wire::outln!(
                "{pbs} missed outbox generation(s) {}: told again before the next",
                seqs.join(", ")
            )?;
        }
    }
    Ok(
        if st.last_failure.is_some()
            && st.last_failure.as_ref().map(|f| &f.started_at)
                > st.last_success.as_ref().map(|s| &s.started_at)
        {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}
