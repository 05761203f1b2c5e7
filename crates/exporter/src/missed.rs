//! Generations a PBS missed while another PBS took them (`status.json` `missed`).
//!
//! With several `[[pbs]]`, each pulls every generation itself and numbers it in its own
//! history. A PBS that was down for one export would number the next ones differently from
//! the others (and hold a history with a hole). So when a notification fails for one PBS
//! while another accepted it, the exporter keeps it (per PBS, at most `keep`: older ones are
//! no longer in the outbox); before its next notification to that PBS it sends the kept
//! ones first, oldest first, with their own transaction ids (a PBS takes a transaction
//! once). The PBS pulls them in that order, so the histories of all PBS go on alike.
//! Only notifications of the current epoch are sent again; one a PBS answers (accepted or
//! refused) is dropped, one it does not answer stays for the next time.

use std::time::Duration;

use wire::api::Notify;
use wire::{Client, PeerConfig};

use crate::daemon::App;

/// Keep `n` for PBS `pbs` (which did not take it while another one did).
pub(crate) fn record(app: &App, pbs: &str, n: &Notify) {
    let keep = app.cfg.keep.max(1) as usize;
    app.status.update(|s| {
        let list = s.missed.entry(pbs.to_string()).or_default();
        if !list.iter().any(|m| m.tx == n.tx) {
            list.push(n.clone());
        }
        let extra = list.len().saturating_sub(keep);
        list.drain(..extra);
    });
    tracing::warn!(pbs, tx = %n.tx, seq = n.seq, "this PBS missed the generation: it is told again before the next one");
}

/// Tell `pbs` of what it missed, oldest first, before the notification at `epoch`.
pub(crate) async fn resend(app: &App, pbs: &PeerConfig, client: &Client, epoch: u64) {
    let list = app
        .status
        .read(|s| s.missed.get(&pbs.name).cloned().unwrap_or_default());
    if list.is_empty() {
        return;
    }
    let mut left = Vec::new();
    let mut down = false;
    for n in list {
        if n.epoch != epoch {
            continue;
        }
        if down {
            left.push(n);
            continue;
        }
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            client.post_json::<_, serde_json::Value>("/v1/notify", &n),
        )
        .await;
        match r {
            Ok(Ok(_)) => {
                tracing::info!(pbs = %pbs.name, tx = %n.tx, seq = n.seq, "told the PBS of a generation it missed")
            }
            Ok(Err(e)) if !e.is_retryable() => {
                tracing::warn!(pbs = %pbs.name, tx = %n.tx, "the PBS refused a generation it missed: {e}")
            }
            Ok(Err(e)) => {
                tracing::warn!(pbs = %pbs.name, tx = %n.tx, "the PBS still does not answer: {e}");
                down = true;
                left.push(n);
            }
            Err(_) => {
                down = true;
                left.push(n);
            }
        }
    }
    app.status.update(|s| {
        if left.is_empty() {
            s.missed.remove(&pbs.name);
        } else {
            s.missed.insert(pbs.name.clone(), left);
        }
    });
}
