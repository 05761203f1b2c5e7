//! The closed sets of names the daemons write on the wire and in their state files, as
//! enums: each variant is serialized as the exact string `FORMAT.md` lists, so the wire
//! format is the same as when these were strings; an unknown name is refused when read.

/// An enum whose variants are written as the given strings (serde, `Display`, `FromStr`);
/// one variant is marked `#[default]`.
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $t:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $t {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$t] = &[$($t::$v),+];

            /// The name as written on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($t::$v),)+
                    other => Err(format!(
                        "unknown {} {other:?}: expected one of {}",
                        stringify!($t),
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// Where the PBS is with one notification (`POST /v1/notify`, `GET /v1/transactions/{tx}`).
    pub enum TxPhase {
        /// Accepted, waiting for the source's pull worker.
        #[default]
        Queued = "queued",
        /// The PBS is pulling the generation from the exporter.
        Pulling = "pulling",
        /// Committed to the archive.
        Committed = "committed",
        /// The pull or the commit failed (`error` says why).
        Failed = "failed",
    }
}

impl TxPhase {
    /// Queued or pulling: not finished yet.
    pub fn is_open(self) -> bool {
        matches!(self, TxPhase::Queued | TxPhase::Pulling)
    }
}

wire_enum! {
    /// Where an exporter is with one export (`GET /v1/runs/{tx}`, its `status.json`).
    pub enum RunPhase {
        /// The export hook is running.
        #[default]
        Running = "running",
        /// In the outbox, waiting for a PBS to commit it.
        Exported = "exported",
        /// A PBS committed it.
        Committed = "committed",
        /// The hook or every PBS failed (`error` says why).
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_written_as_before_and_unknown_ones_refused() {
        for p in TxPhase::ALL {
            let json = serde_json::to_string(p).unwrap_or_default();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(p.as_str().parse::<TxPhase>(), Ok(*p));
        }
        assert_eq!(
            TxPhase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["queued", "pulling", "committed", "failed"]
        );
        assert_eq!(
            RunPhase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["running", "exported", "committed", "failed"]
        );
        assert!(serde_json::from_str::<RunPhase>("\"Committed\"").is_err());
        assert!("done"
            .parse::<TxPhase>()
            .is_err_and(|e| e.contains("queued")));
    }
}
