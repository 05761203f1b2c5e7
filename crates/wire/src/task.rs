//! Blocking work (archive reads and writes, hashing) off the async threads.
//!
//! [`blocking`] runs a fallible closure on tokio's blocking pool and gives back its own
//! error, or [`WorkerFailed`] (the worker panicked or was cancelled) turned into the
//! caller's error type: `anyhow::Error` in the daemons' internals, [`ApiError`] (a 500)
//! in a handler. [`spawn_blocking`] is the same for a closure of any result.

use crate::server::ApiError;

/// A blocking worker that did not finish: it panicked or its task was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("worker failed: {0}")]
pub struct WorkerFailed(pub tokio::task::JoinError);

impl From<WorkerFailed> for ApiError {
    fn from(e: WorkerFailed) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// Runs `f` on tokio's blocking pool and waits for its result.
pub async fn spawn_blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, WorkerFailed> {
    tokio::task::spawn_blocking(f).await.map_err(WorkerFailed)
}

/// Runs the fallible `f` on tokio's blocking pool: its result, or [`WorkerFailed`] as an
/// `E` when the worker did not finish.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<WorkerFailed> + Send + 'static,
{
    spawn_blocking(f).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn the_closures_result_or_its_error_comes_back_unchanged() {
        let ok: anyhow::Result<u32> = blocking(|| Ok(7)).await;
        assert_eq!(ok.ok(), Some(7));
        let err: Result<u32, ApiError> = blocking(|| Err(ApiError::conflict("stale"))).await;
        assert_eq!(err, Err(ApiError::conflict("stale")));
    }

    #[tokio::test]
    async fn a_panicking_worker_is_worker_failed_in_the_callers_error_type() {
        let e = blocking::<u32, anyhow::Error>(|| panic!("boom"))
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            e.starts_with("worker failed: ") && e.contains("panicked"),
            "{e}"
        );
        let api = blocking::<u32, ApiError>(|| panic!("boom")).await.err();
        let api = api.unwrap_or_else(|| ApiError::conflict("no error"));
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            api.message.starts_with("worker failed: "),
            "{}",
            api.message
        );
    }
}
