//! Named jobs on cron schedules, run by one loop started once from `app`.
//!
//! Administrators write crontab lines (5 fields, weekday 0 or 7 = Sunday); the `cron` crate
//! wants a seconds field and numbers weekdays 1–7 from Sunday. [`parse_schedule`] accepts both
//! forms and normalises to the crate's. The scheduler knows when to run a job and records how
//! it went; what a job does belongs to the module that owns the work (backup, broker, centers).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "`{0}` is not a schedule: write 5 crontab fields (minute hour day month weekday), e.g. `0 3 * * *`"
    )]
    FieldCount(String),
    #[error("`{text}` is not a valid schedule: {reason}")]
    Invalid { text: String, reason: String },
}

/// A parsed schedule, or `None` when the text is empty (the job is off).
pub type Schedule = Option<cron::Schedule>;

/// Parses a crontab line (5 fields) or a cron line with seconds (6 or 7 fields).
pub fn parse_schedule(text: &str) -> Result<Schedule, ScheduleError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let normalised = normalise(text)?;
    cron::Schedule::from_str(&normalised)
        .map(Some)
        .map_err(|e| ScheduleError::Invalid {
            text: text.to_string(),
            reason: e.to_string(),
        })
}

/// Turns a crontab line into the 6-field, Sunday-is-1 form the cron crate reads.
pub fn normalise(text: &str) -> Result<String, ScheduleError> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.len() {
        5 => {
            let weekday = crontab_weekday(fields[4]).map_err(|reason| ScheduleError::Invalid {
                text: text.to_string(),
                reason,
            })?;
            Ok(format!(
                "0 {} {} {} {} {}",
                fields[0], fields[1], fields[2], fields[3], weekday
            ))
        }
        6 | 7 => Ok(fields.join(" ")),
        _ => Err(ScheduleError::FieldCount(text.to_string())),
    }
}

/// Maps crontab weekday numbers (0–7, 0 and 7 = Sunday) to the cron crate's (1–7 from Sunday),
/// inside lists, ranges and steps. Names (MON, Sun) pass through.
fn crontab_weekday(field: &str) -> Result<String, String> {
    let map_number = |s: &str| -> Result<String, String> {
        if s.is_empty() || s.chars().any(|c| !c.is_ascii_digit()) {
            return Ok(s.to_string());
        }
        match s.parse::<u8>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".to_string()),
            _ => Err(format!("weekday `{s}` is not between 0 and 7")),
        }
    };
    let mut parts = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let range = match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (map_number(a)?, map_number(b)?);
                // "5-7" (Friday to Sunday) would become "6-1": spell it as a list instead.
                match (a.parse::<u8>(), b.parse::<u8>()) {
                    (Ok(x), Ok(y)) if y < x && step.is_none() => {
                        let days: Vec<String> =
                            (x..=7).chain(1..=y).map(|d| d.to_string()).collect();
                        days.join(",")
                    }
                    _ => format!("{a}-{b}"),
                }
            }
            None => map_number(range)?,
        };
        parts.push(match step {
            Some(s) => format!("{range}/{s}"),
            None => range,
        });
    }
    Ok(parts.join(","))
}

type JobFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type JobFn = Arc<dyn Fn() -> JobFuture + Send + Sync>;

/// What the console shows for one job.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JobStatus {
    pub name: String,
    pub schedule: String,
    pub running: bool,
    pub last_start: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<u64>,
    pub last_result: Option<String>,
    pub last_ok: Option<bool>,
    pub next_start: Option<DateTime<Utc>>,
}

struct Job {
    schedule: Schedule,
    run: JobFn,
}

/// The job registry and its loop.
#[derive(Clone, Default)]
pub struct Scheduler {
    jobs: Arc<Mutex<BTreeMap<String, Job>>>,
    status: Arc<Mutex<BTreeMap<String, JobStatus>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a job. `schedule_text` must already have been validated.
    pub fn add<F, Fut>(&self, name: &str, schedule_text: &str, run: F) -> Result<(), ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let schedule = parse_schedule(schedule_text)?;
        let next_start = schedule.as_ref().and_then(|s| s.upcoming(Utc).next());
        let run: JobFn = Arc::new(move || Box::pin(run()) as JobFuture);
        lock(&self.jobs).insert(name.to_string(), Job { schedule, run });
        lock(&self.status).insert(
            name.to_string(),
            JobStatus {
                name: name.to_string(),
                schedule: schedule_text.trim().to_string(),
                next_start,
                ..JobStatus::default()
            },
        );
        self.wake.notify_one();
        Ok(())
    }

    pub fn statuses(&self) -> Vec<JobStatus> {
        lock(&self.status).values().cloned().collect()
    }

    /// Runs a job now (the console's "Run now"); a job already running is not started twice.
    pub fn run_now(&self, name: &str) -> bool {
        self.start(name)
    }

    /// The loop: sleeps until the next due job, starts it, repeats, until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Utc::now();
            let next = {
                let jobs = lock(&self.jobs);
                jobs.iter()
                    .filter_map(|(name, job)| {
                        let at = job.schedule.as_ref()?.after(&now).next()?;
                        Some((at, name.clone()))
                    })
                    .min()
            };
            let wait = next
                .as_ref()
                .map(|(at, _)| (*at - now).to_std().unwrap_or_default())
                .unwrap_or(std::time::Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => continue,
                _ = tokio::time::sleep(wait) => {
                    if let Some((_, name)) = next {
                        self.start(&name);
                    }
                }
            }
        }
    }

    fn start(&self, name: &str) -> bool {
        let Some(run) = lock(&self.jobs).get(name).map(|j| j.run.clone()) else {
            return false;
        };
        {
            let mut status = lock(&self.status);
            let Some(s) = status.get_mut(name) else {
                return false;
            };
            if s.running {
                tracing::warn!(job = name, "still running; this start is skipped");
                return false;
            }
            s.running = true;
            s.last_start = Some(Utc::now());
        }
        let this = self.clone();
        let name = name.to_string();
        let span = tracing::info_span!("job", job = %name);
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                let result = run().await;
                match &result {
                    Ok(msg) => tracing::info!(job = %name, "{msg}"),
                    Err(msg) => tracing::error!(job = %name, "failed: {msg}"),
                }
                let next_start = lock(&this.jobs)
                    .get(&name)
                    .and_then(|j| j.schedule.as_ref()?.upcoming(Utc).next());
                if let Some(s) = lock(&this.status).get_mut(&name) {
                    s.running = false;
                    s.last_duration_ms = Some(started.elapsed().as_millis() as u64);
                    s.last_ok = Some(result.is_ok());
                    s.last_result = Some(match result {
                        Ok(m) | Err(m) => m,
                    });
                    s.next_start = next_start;
                }
            }
            .instrument(span),
        );
        true
    }
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn first_after(text: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        parse_schedule(text)
            .expect("valid")
            .expect("not empty")
            .after(&after)
            .next()
            .expect("has a next time")
    }

    #[test]
    fn crontab_weekday_numbers_mean_what_crontab_says() {
        // 2026-11-21 is a Saturday.
        let sat = Utc
            .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
            .single()
            .expect("date");
        assert_eq!(first_after("0 3 * * 1", sat).weekday(), Weekday::Mon);
        assert_eq!(first_after("0 3 * * 0", sat).weekday(), Weekday::Sun);
        assert_eq!(first_after("0 3 * * 7", sat).weekday(), Weekday::Sun);
        assert_eq!(first_after("0 3 * * 6", sat).weekday(), Weekday::Sat);
        assert_eq!(first_after("0 3 * * MON", sat).weekday(), Weekday::Mon);
        // Friday to Sunday, asked on Saturday noon: Sunday 03:00 comes first.
        assert_eq!(first_after("0 3 * * 5-7", sat).weekday(), Weekday::Sun);
        // Monday to Friday.
        assert_eq!(first_after("30 8 * * 1-5", sat).weekday(), Weekday::Mon);
        let t = first_after("30 8 * * 1-5", sat);
        assert_eq!((t.hour(), t.minute(), t.second()), (8, 30, 0));
    }

    #[test]
    fn seconds_form_passes_through_and_empty_is_off() {
        let sat = Utc
            .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
            .single()
            .expect("date");
        assert_eq!(first_after("*/10 * * * * *", sat).second(), 10);
        assert!(parse_schedule("  ").expect("empty ok").is_none());
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(matches!(
            parse_schedule("daily"),
            Err(ScheduleError::FieldCount(_))
        ));
        assert!(matches!(
            parse_schedule("0 3 * * 9"),
            Err(ScheduleError::Invalid { .. })
        ));
        assert!(matches!(
            parse_schedule("99 3 * * *"),
            Err(ScheduleError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn run_now_records_result_and_never_overlaps() {
        let s = Scheduler::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        s.add("slow", "", move || {
            let rx = rx.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Err("boom".to_string())
            }
        })
        .expect("added");
        assert!(s.run_now("slow"));
        assert!(!s.run_now("slow"), "a running job is not started again");
        tx.send(()).expect("job waiting");
        loop {
            let st = s.statuses().into_iter().next().expect("one job");
            if !st.running {
                assert_eq!(st.last_ok, Some(false));
                assert_eq!(st.last_result.as_deref(), Some("boom"));
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(s.run_now("slow"), "a failed job can run again");
        assert!(!s.run_now("missing"));
    }
}
