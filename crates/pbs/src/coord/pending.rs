//! A grant of MAIN must reach the clone's promotion. Every grant (takeover, switchover,
//! automatic failover) is saved with `pending_promotion` set, in the same change; the new
//! main clears it with a hello as MAIN at exactly the granted epoch (the clone sends one
//! after writing its role file; the exporter that starts there sends one too).
//!
//! Undoing a grant is not safe: the old main was fenced at the new epoch (Broken, or told
//! to step down), so going back would leave two nodes that believe they are MAIN or none
//! that may serve. Instead the grant stays pending, visible in `pbs status` and the
//! dashboard, while the PBS retries `POST /v1/ha/promote` on the clone every
//! `[failover] promote_retry_secs` (see `crate::grant`), and a clone that restarts
//! promotes itself when its hello is answered MAIN.

use archive::Epoch;
use wire::ha::{Hello, PendingPromotion, Role};

use super::Coordinator;

/// The pending promotion a grant of `node` at `epoch` records.
pub(super) fn granted(node: &str, epoch: u64, at: &str) -> PendingPromotion {
    PendingPromotion {
        node: node.to_string(),
        epoch,
        granted_at: at.to_string(),
        retries: 0,
        last_error: None,
    }
}

/// A hello of the main: a hello as MAIN at the pending epoch confirms the promotion.
pub(super) fn confirm(pending: &mut Option<PendingPromotion>, h: &Hello) {
    let done = pending.as_ref().is_some_and(|p| {
        p.node == h.node && h.role == Role::Main && Epoch::check(h.epoch, p.epoch).is_ok()
    });
    if done {
        tracing::info!(node = %h.node, epoch = h.epoch, "promotion confirmed");
        *pending = None;
    }
}

impl Coordinator {
    /// The grant still waiting for its promotion, if any.
    pub fn pending_promotion(&self) -> Option<PendingPromotion> {
        self.snapshot().pending_promotion
    }

    /// Records a retried promotion of `node` at `epoch` and why it failed (`None`: the
    /// clone accepted; its hello as MAIN clears the grant).
    pub fn note_promotion_retry(&self, node: &str, epoch: u64, error: Option<String>) {
        self.record(|st| {
            if let Some(p) = st
                .pending_promotion
                .as_mut()
                .filter(|p| p.node == node && p.epoch == epoch)
            {
                p.retries = p.retries.saturating_add(1);
                p.last_error = error.clone();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::tests::{cfg, hello_of as hello, req};

    #[test]
    fn only_the_granted_node_as_main_at_the_granted_epoch_confirms() {
        let mut p = Some(granted("c1", 5, "now"));
        for h in [
            hello("c2", Role::Main, 5),
            hello("c1", Role::Backup, 5),
            hello("c1", Role::Main, 4),
            hello("c1", Role::Main, 6),
        ] {
            confirm(&mut p, &h);
            assert!(p.is_some(), "{h:?} confirmed");
        }
        confirm(&mut p, &hello("c1", Role::Main, 5));
        assert!(p.is_none());
    }

    #[test]
    fn a_grant_at_the_maximum_epoch_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let c = Coordinator::open(&cfg(), dir, u64::MAX).expect("open");
        let req = req("c1", true, None);
        let e = c
            .grant(
                &req,
                &Default::default(),
                crate::coord::GrantKind::Takeover { promote: false },
            )
            .err();
        assert!(
            matches!(
                e.as_ref().and_then(|e| e.refusal()),
                Some(crate::coord::Refusal::EpochExhausted(_))
            ),
            "{e:?}"
        );
        let api = wire::server::ApiError::from(e.expect("refused"));
        assert!(
            api.status.as_u16() == 409 && api.message.contains("maximum"),
            "{api:?}"
        );
        let s = c.snapshot();
        assert_eq!(
            (s.epoch, s.main, s.pending_promotion),
            (u64::MAX, None, None)
        );
    }
}
