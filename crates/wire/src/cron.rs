//! Jobs on the daemons' cron schedules: the exporter's export, the PBS's prune and verify.
//!
//! A schedule setting is a standard 5-field cron expression (minute hour day month weekday,
//! UTC); [`Cron::add`] runs a job at each time it matches, at second 0. The jobs run while
//! the [`Cron`] is held.

use std::future::Future;
use std::pin::Pin;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// A schedule that cannot be used, naming the setting (`KEY = "EXPR": ...`), or a failure
/// of the scheduler itself.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// The setting does not have the 5 fields of a standard cron expression.
    #[error(
        "{key} = {expr:?}: expected 5 cron fields (minute hour day month weekday), found {found}"
    )]
    Fields {
        /// The setting (`schedule.prune`).
        key: String,
        /// Its value.
        expr: String,
        /// How many fields it has.
        found: usize,
    },
    /// The scheduler refused the expression (a field out of range, a bad name).
    #[error("{key} = {expr:?}: {error}")]
    Expression {
        /// The setting.
        key: String,
        /// Its value.
        expr: String,
        /// Why (the message only: not an error source, so a chain prints it once).
        error: JobSchedulerError,
    },
    /// The scheduler could not be made, take a job or start.
    #[error("scheduler: {0}")]
    Scheduler(JobSchedulerError),
}

/// The scheduler's 6-field form (seconds first) of the 5-field `expr` of setting `key`.
fn six_fields(key: &str, expr: &str) -> Result<String, CronError> {
    let found = expr.split_whitespace().count();
    if found != 5 {
        return Err(CronError::Fields {
            key: key.into(),
            expr: expr.into(),
            found,
        });
    }
    Ok(format!("0 {expr}"))
}

/// Jobs on cron schedules; they run from [`start`](Self::start) while this is held.
pub struct Cron(JobScheduler);

impl Cron {
    /// A scheduler with no job yet.
    pub async fn new() -> Result<Cron, CronError> {
        JobScheduler::new()
            .await
            .map(Cron)
            .map_err(CronError::Scheduler)
    }

    /// Runs `job` at each time the 5-field cron `expr` (the value of setting `key`) matches.
    pub async fn add<F, Fut>(&self, key: &str, expr: &str, job: F) -> Result<(), CronError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let job = Job::new_async(six_fields(key, expr)?, move |_, _| {
            Box::pin(job()) as Pin<Box<dyn Future<Output = ()> + Send>>
        })
        .map_err(|error| CronError::Expression {
            key: key.into(),
            expr: expr.into(),
            error,
        })?;
        self.0.add(job).await.map_err(CronError::Scheduler)?;
        Ok(())
    }

    /// Starts running the jobs.
    pub async fn start(&self) -> Result<(), CronError> {
        self.0.start().await.map_err(CronError::Scheduler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_setting_without_five_fields_or_with_a_bad_one_is_named() {
        let Ok(cron) = Cron::new().await else {
            panic!("no scheduler");
        };
        let err = |r: Result<(), CronError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err(cron.add("schedule.prune", "* * *", || async {}).await),
            "schedule.prune = \"* * *\": expected 5 cron fields (minute hour day month weekday), found 3"
        );
        let e = err(cron.add("schedule", "61 * * * *", || async {}).await);
        assert!(e.starts_with("schedule = \"61 * * * *\": "), "{e}");
        assert_eq!(
            err(cron.add("schedule", "0 * * * *", || async {}).await),
            ""
        );
        assert_eq!(err(cron.start().await), "");
    }

    #[tokio::test]
    async fn five_fields_run_at_second_zero_of_the_minute_they_name(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(six_fields("k", "30 2 * * *")?, "0 30 2 * * *");
        let mut sched = JobScheduler::new().await?;
        let id = sched
            .add(Job::new_async(six_fields("k", "30 2 * * *")?, |_, _| {
                Box::pin(async {})
            })?)
            .await?;
        let next = sched.next_tick_for_job(id).await?.map(|t| t.to_rfc3339());
        assert!(
            next.as_deref().is_some_and(|t| t.contains("T02:30:00")),
            "{next:?}"
        );
        Ok(())
    }
}
