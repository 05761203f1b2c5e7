//! The archive's error type: every variant names the object that failed.

use std::path::PathBuf;

use crate::id::{ChunkId, GenId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a pullback archive: {why}")]
    NotAnArchive { path: PathBuf, why: String },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: String, why: String },
    #[error("chunk {0} is damaged: {1}")]
    DamagedChunk(ChunkId, String),
    #[error("chunk {0} is missing from the archive")]
    MissingChunk(ChunkId),
    #[error("no generation {0}")]
    NoSuchGeneration(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path} changed while it was being read ({why}); nothing was committed")]
    ChangedWhileReading { path: PathBuf, why: String },
    #[error("generation {gen} was taken under epoch {got}, but {source_name} is already at epoch {have}: refused (stale main)")]
    StaleEpoch {
        gen: String,
        source_name: String,
        got: u64,
        have: u64,
    },
    #[error("the archive is busy ({0}); try again later")]
    Busy(String),
    #[error("restore target {0} exists and is not empty")]
    TargetNotEmpty(PathBuf),
    #[error("generation {0} already exists")]
    GenerationExists(GenId),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Error {
    Error::Corrupt {
        what: what.into(),
        why: why.into(),
    }
}
