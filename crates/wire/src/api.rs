//! The request and reply bodies that two daemons exchange, written once for both
//! sides (crates/wire/FORMAT.md describes them on the wire).

use serde::{Deserialize, Serialize};

/// `POST /v1/notify`: a generation is ready to be pulled (exporter → PBS: in the exporter's
/// outbox; PBS → clone: in the PBS archive).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The source's name.
    pub source: String,
    /// The generation's number in the exporter's outbox.
    pub seq: u64,
    /// Transaction id of the export: notifications are idempotent by it.
    pub tx: String,
    /// The epoch the generation was taken under: must equal the coordinator's.
    pub epoch: u64,
    /// The node that notifies (default: the source's exporter name); fenced by the
    /// coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A PBS transaction: the answer to a notification and `GET /v1/transactions/{tx}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxState {
    /// The transaction id (the export's).
    pub tx: String,
    /// The source's name.
    pub source: String,
    /// queued, pulling, committed, failed.
    pub state: crate::phase::TxPhase,
    /// The generation committed (`SOURCE/SEQ`), once committed.
    pub generation: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it last changed (RFC 3339).
    pub at: String,
}

/// The importer's answer to `POST /v1/notify`: pulled, restored, checked, swapped in,
/// hooks run (or why not).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyResult {
    /// Imported and verified.
    pub ok: bool,
    /// `SOURCE/SEQ`.
    pub generation: String,
    /// The restore was checked and both hooks passed.
    pub verified: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// The end of the hook log.
    #[serde(default)]
    pub log_tail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_round_trips_and_refuses_unknown_fields() {
        let n = Notify {
            source: "db".into(),
            seq: 3,
            tx: "t".into(),
            epoch: 1,
            node: None,
        };
        let text = serde_json::to_string(&n).unwrap();
        assert_eq!(text, r#"{"source":"db","seq":3,"tx":"t","epoch":1}"#);
        assert_eq!(serde_json::from_str::<Notify>(&text).unwrap(), n);
        assert!(serde_json::from_str::<Notify>(
            r#"{"source":"db","seq":3,"tx":"t","epoch":1,"x":1}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<Notify>(r#"{"source":"db","seq":-1,"tx":"t","epoch":1}"#)
                .is_err()
        );
    }
}
