//! Retrying an operation with exponential backoff and jitter.
//!
//! [`retry`] re-runs an operation while it fails with an error that says it is worth
//! another try ([`Retryable`]): for a [`crate::client::WireError`] that is a connection
//! error, a timeout or a 5xx answer, never a 4xx. Re-exported from [`crate::client`].

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Errors that [`retry`] knows how to classify.
pub trait Retryable {
    /// True when the operation may succeed if tried again.
    fn is_retryable(&self) -> bool;
}

/// Exponential backoff for [`retry`]: waits `initial`, then twice as long each time, at
/// most `max`, for at most `attempts` tries in all (each wait is shortened by up to a
/// quarter at random, so clones do not retry in lockstep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Tries in all, the first included (0 counts as 1).
    pub attempts: u32,
}

impl Default for Backoff {
    /// 250 ms, doubling up to 10 s, 6 tries (about 17 s of waiting in all).
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
            attempts: 6,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0-based), before jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// A random value in `0..=n` from the standard library's per-process random keys.
fn random_up_to(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % (n + 1)
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or `backoff.attempts`
/// tries are used up; returns the last result. Each retry is logged at `warn`.
pub async fn retry<T, E, F, Fut>(backoff: &Backoff, mut op: F) -> Result<T, E>
where
    E: Retryable + fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = backoff.attempts.max(1);
    let mut tried = 0u32;
    loop {
        tried += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tried < attempts && e.is_retryable() => {
                let full = backoff.delay(tried - 1);
                let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
                let wait = full.saturating_sub(Duration::from_nanos(random_up_to(nanos / 4)));
                tracing::warn!("attempt {tried}/{attempts} failed, retrying in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            attempts: 5,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(2), Duration::from_millis(350));
        assert_eq!(b.delay(40), Duration::from_millis(350));
    }
}
