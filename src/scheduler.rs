//! Named jobs on cron schedules, run by one loop started once from `app`.
//!
//! Administrators write crontab lines (5 fields, weekday 0 or 7 = Sunday); the `cron` crate
//! wants a seconds field and numbers weekdays 1–7 from Sunday. [`parse_schedule`] accepts both
//! forms and normalises to the crate's. The scheduler knows when to run a job and records how
//! it went; what a job does belongs to the module that owns the work (backup, broker, centers).
//! A run never overlaps the same job's previous one, and one that outlives the time limit
//! ([`Scheduler::set_time_limit`]) is stopped and recorded as failed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    #[error("There is no job named `{0}`.")]
    UnknownJob(String),
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
            let invalid = |reason: String| ScheduleError::Invalid {
                text: text.to_string(),
                reason,
            };
            // crontab runs when the day of the month OR the weekday matches if both are
            // restricted; the cron crate wants both. Refused rather than run on other days.
            let any = |f: &str| f == "*" || f == "?";
            if !any(fields[2]) && !any(fields[4]) {
                return Err(invalid(
                    "it restricts both the day of the month and the weekday, which crontab reads \
                     as either one: write two schedules, or leave one of the two as `*`"
                        .into(),
                ));
            }
            let weekday = crontab_weekday(fields[4]).map_err(invalid)?;
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
            // Sunday to Sunday: the whole week (mapped one by one it would be "1-1").
            Some(("0", "7")) => "1-7".to_string(),
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

/// What the console and `GET /api/v1/jobs` show for one job.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct JobStatus {
    pub name: String,
    /// The schedule in force: the configured one, or the one set in the console. Empty: off.
    pub schedule: String,
    /// The schedule from the configuration file (or the built-in default).
    pub configured_schedule: String,
    /// An administrator set `schedule` in the console in place of the configured one.
    pub overridden: bool,
    pub running: bool,
    pub last_start: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<u64>,
    /// What the last run reported, or why it failed.
    pub last_result: Option<String>,
    pub last_ok: Option<bool>,
    /// When the schedule starts it next (none when off).
    pub next_start: Option<DateTime<Utc>>,
    /// Runs finished since the appliance started.
    pub runs: u64,
}

struct Job {
    schedule: Schedule,
    run: JobFn,
    /// When the loop starts it next; worked out by the loop, forgotten when the schedule
    /// changes.
    next_due: Option<DateTime<Utc>>,
}

/// The answer to "run this job now".
#[derive(Debug)]
pub enum RunNow {
    /// Started; [`Finished::wait`] returns when this run has ended.
    Started(Finished),
    /// Already running: a job never overlaps itself, so nothing was started.
    Running,
    /// No job has that name.
    Unknown,
}

/// The end of one run, to wait for.
#[derive(Debug)]
pub struct Finished(tokio::sync::oneshot::Receiver<()>);

impl Finished {
    /// Returns when the run has ended (its status is then recorded).
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// The job registry and its loop.
#[derive(Clone, Default)]
pub struct Scheduler {
    jobs: Arc<Mutex<BTreeMap<String, Job>>>,
    status: Arc<Mutex<BTreeMap<String, JobStatus>>>,
    wake: Arc<tokio::sync::Notify>,
    /// How long one run may take before it is stopped; `None`: no limit.
    time_limit: Arc<Mutex<Option<Duration>>>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops any run that takes longer than `limit` (`None`: runs may take as long as they
    /// take). A stopped run is recorded as failed and the job's next start goes ahead.
    pub fn set_time_limit(&self, limit: Option<Duration>) {
        *lock(&self.time_limit) = limit;
    }

    /// Registers (or replaces) a job on its configured schedule (empty: off until an
    /// administrator sets one). A bad schedule is refused with the reason.
    pub fn add<F, Fut>(&self, name: &str, schedule_text: &str, run: F) -> Result<(), ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let schedule = parse_schedule(schedule_text)?;
        let run: JobFn = Arc::new(move || Box::pin(run()) as JobFuture);
        lock(&self.jobs).insert(
            name.to_string(),
            Job {
                schedule,
                run,
                next_due: None,
            },
        );
        let text = schedule_text.trim().to_string();
        lock(&self.status).insert(
            name.to_string(),
            JobStatus {
                name: name.to_string(),
                schedule: text.clone(),
                configured_schedule: text,
                ..JobStatus::default()
            },
        );
        self.wake.notify_one();
        Ok(())
    }

    /// Puts a job on another schedule (`Some("")`: off), or back on its configured one
    /// (`None`). A bad schedule is refused with the reason and changes nothing.
    pub fn set_schedule(&self, name: &str, text: Option<&str>) -> Result<JobStatus, ScheduleError> {
        let configured = lock(&self.status)
            .get(name)
            .map(|s| s.configured_schedule.clone())
            .ok_or_else(|| ScheduleError::UnknownJob(name.to_string()))?;
        let text = text.map_or(configured.clone(), |t| t.trim().to_string());
        let schedule = parse_schedule(&text)?;
        {
            let mut jobs = lock(&self.jobs);
            let job = jobs
                .get_mut(name)
                .ok_or_else(|| ScheduleError::UnknownJob(name.to_string()))?;
            job.schedule = schedule;
            job.next_due = None;
        }
        if let Some(s) = lock(&self.status).get_mut(name) {
            s.overridden = text != configured;
            s.schedule = text;
        }
        self.wake.notify_one();
        self.status(name)
            .ok_or_else(|| ScheduleError::UnknownJob(name.to_string()))
    }

    /// Every job, by name.
    pub fn statuses(&self) -> Vec<JobStatus> {
        let names: Vec<String> = lock(&self.status).keys().cloned().collect();
        names.iter().filter_map(|n| self.status(n)).collect()
    }

    /// One job's status, with its next start.
    pub fn status(&self, name: &str) -> Option<JobStatus> {
        let next = {
            let jobs = lock(&self.jobs);
            let job = jobs.get(name)?;
            job.next_due
                .or_else(|| job.schedule.as_ref()?.upcoming(Utc).next())
                .filter(|_| job.schedule.is_some())
        };
        let mut status = lock(&self.status).get(name)?.clone();
        status.next_start = next;
        Some(status)
    }

    /// Runs a job now (the console's "Run now"); a job already running is not started twice.
    pub fn run_now(&self, name: &str) -> RunNow {
        self.start(name)
    }

    /// The loop: starts every job that is due, sleeps until the next one is, repeats, until
    /// `shutdown` resolves. Jobs due at the same moment all start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Utc::now();
            let mut due = Vec::new();
            let next = {
                let mut jobs = lock(&self.jobs);
                for (name, job) in jobs.iter_mut() {
                    let Some(schedule) = &job.schedule else {
                        job.next_due = None;
                        continue;
                    };
                    let at = match job.next_due {
                        Some(at) => Some(at),
                        None => schedule.after(&now).next(),
                    };
                    job.next_due = match at {
                        Some(at) if at <= now => {
                            due.push(name.clone());
                            schedule.after(&now).next()
                        }
                        other => other,
                    };
                }
                jobs.values().filter_map(|j| j.next_due).min()
            };
            for name in due {
                self.start(&name);
            }
            let wait = next
                .map(|at| (at - now).to_std().unwrap_or_default())
                .unwrap_or(std::time::Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => continue,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn start(&self, name: &str) -> RunNow {
        let Some(run) = lock(&self.jobs).get(name).map(|j| j.run.clone()) else {
            return RunNow::Unknown;
        };
        {
            let mut status = lock(&self.status);
            let Some(s) = status.get_mut(name) else {
                return RunNow::Unknown;
            };
            if s.running {
                tracing::warn!(job = name, "still running; this start is skipped");
                return RunNow::Running;
            }
            s.running = true;
            s.last_start = Some(Utc::now());
        }
        let (done, finished) = tokio::sync::oneshot::channel();
        let limit = *lock(&self.time_limit);
        let this = self.clone();
        let name = name.to_string();
        let span = tracing::info_span!("job", job = %name);
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                // In a task of its own, so that a job that panics is reported as failed and
                // its next run still happens.
                let mut task = tokio::spawn(run());
                let result = match limit {
                    Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                        Ok(joined) => run_result(joined),
                        Err(_) => {
                            task.abort();
                            Err(format!(
                                "did not finish within {} s (jobs.time_limit_seconds) and was \
                                 stopped; it starts again at its next time",
                                limit.as_secs()
                            ))
                        }
                    },
                    None => run_result(task.await),
                };
                match &result {
                    Ok(msg) => tracing::info!(job = %name, "{msg}"),
                    Err(msg) => tracing::error!(job = %name, "failed: {msg}"),
                }
                if let Some(s) = lock(&this.status).get_mut(&name) {
                    s.running = false;
                    s.runs += 1;
                    s.last_duration_ms = Some(started.elapsed().as_millis() as u64);
                    s.last_ok = Some(result.is_ok());
                    s.last_result = Some(match result {
                        Ok(m) | Err(m) => m,
                    });
                }
                let _ = done.send(());
            }
            .instrument(span),
        );
        RunNow::Started(Finished(finished))
    }
}

/// What a run's task came back with: the job's own result, or why it ended without one.
fn run_result(
    joined: Result<Result<String, String>, tokio::task::JoinError>,
) -> Result<String, String> {
    joined.unwrap_or_else(|e| Err(format!("the job stopped unexpectedly: {e}")))
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
        // Every day, Sunday to Sunday: Saturday is one of them; every other day from Sunday.
        assert_eq!(first_after("0 13 * * 0-7", sat).weekday(), Weekday::Sat);
        assert_eq!(first_after("0 13 * * 0-7/2", sat).weekday(), Weekday::Sat);
        assert_eq!(first_after("0 3 * * 0-7/2", sat).weekday(), Weekday::Sun);
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
        // Both the day of the month and the weekday: crontab's "either" cannot be kept.
        let both = parse_schedule("0 3 1,15 * 0").expect_err("refused");
        assert!(
            both.to_string().contains("leave one of the two as `*`"),
            "{both}"
        );
        assert!(parse_schedule("0 3 1,15 * *").is_ok());
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
        let RunNow::Started(first) = s.run_now("slow") else {
            panic!("not started");
        };
        assert!(
            matches!(s.run_now("slow"), RunNow::Running),
            "a running job is not started again"
        );
        tx.send(()).expect("job waiting");
        first.wait().await;
        let st = s.status("slow").expect("one job");
        assert!(!st.running);
        assert_eq!(st.last_ok, Some(false));
        assert_eq!(st.last_result.as_deref(), Some("boom"));
        assert_eq!(st.runs, 1);
        let RunNow::Started(again) = s.run_now("slow") else {
            panic!("a failed job can run again");
        };
        again.wait().await;
        assert_eq!(s.status("slow").expect("job").runs, 2);
        assert!(matches!(s.run_now("missing"), RunNow::Unknown));
    }

    #[tokio::test]
    async fn a_job_that_panics_is_reported_failed_and_can_run_again() {
        let s = Scheduler::new();
        s.add("wild", "", || async {
            if std::hint::black_box(true) {
                panic!("out of cheese");
            }
            Ok(String::new())
        })
        .expect("added");
        for runs in 1..=2 {
            let RunNow::Started(run) = s.run_now("wild") else {
                panic!("not started");
            };
            run.wait().await;
            let st = s.status("wild").expect("job");
            assert_eq!(
                (st.running, st.last_ok, st.runs),
                (false, Some(false), runs)
            );
            assert!(
                st.last_result
                    .as_deref()
                    .is_some_and(|r| r.contains("stopped unexpectedly")),
                "{st:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_past_the_time_limit_is_stopped_and_the_next_one_starts() {
        /// Tells the test when the run's future is dropped, i.e. the run was really stopped.
        struct Stopped(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let s = Scheduler::new();
        s.set_time_limit(Some(Duration::from_secs(60)));
        let (tx, stopped) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        s.add("hangs", "", move || {
            let guard = Stopped(lock(&tx).take());
            async move {
                // A cloud that never answers.
                std::future::pending::<()>().await;
                drop(guard);
                Ok(String::new())
            }
        })
        .expect("added");
        let RunNow::Started(run) = s.run_now("hangs") else {
            panic!("not started");
        };
        // The clock is paused: an hour passes at once if nothing stops the run.
        let ended = tokio::time::timeout(Duration::from_secs(3600), run.wait()).await;
        assert!(ended.is_ok(), "the run ended at the time limit");
        let st = s.status("hangs").expect("job");
        assert_eq!((st.running, st.last_ok, st.runs), (false, Some(false), 1));
        assert!(
            st.last_result
                .as_deref()
                .is_some_and(|r| r.contains("did not finish within 60 s")),
            "{st:?}"
        );
        let dropped = tokio::time::timeout(Duration::from_secs(3600), stopped).await;
        assert!(matches!(dropped, Ok(Ok(()))), "the run was stopped");
        assert!(
            matches!(s.run_now("hangs"), RunNow::Started(_)),
            "the next start goes ahead"
        );
    }

    #[test]
    fn schedules_can_be_set_turned_off_and_put_back_but_never_broken() {
        let s = Scheduler::new();
        s.add("stats", "* * * * *", || async { Ok(String::new()) })
            .expect("added");
        let st = s.status("stats").expect("job");
        assert!(!st.overridden && st.next_start.is_some());
        let st = s.set_schedule("stats", Some("")).expect("off");
        assert_eq!((st.schedule.as_str(), st.overridden), ("", true));
        assert_eq!(st.next_start, None, "an empty schedule is off");
        let err = s
            .set_schedule("stats", Some("61 * * * *"))
            .expect_err("bad");
        assert!(matches!(err, ScheduleError::Invalid { .. }), "{err}");
        assert_eq!(s.status("stats").expect("job").schedule, "", "unchanged");
        let st = s.set_schedule("stats", Some("*/5 * * * *")).expect("set");
        assert_eq!(
            (st.schedule.as_str(), st.configured_schedule.as_str()),
            ("*/5 * * * *", "* * * * *")
        );
        let st = s.set_schedule("stats", None).expect("back");
        assert_eq!((st.schedule.as_str(), st.overridden), ("* * * * *", false));
        assert!(matches!(
            s.set_schedule("nope", None),
            Err(ScheduleError::UnknownJob(_))
        ));
    }

    #[tokio::test]
    async fn the_loop_runs_jobs_due_together_and_runs_a_failing_job_again() {
        let s = Scheduler::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        for name in ["a", "b"] {
            let tx = tx.clone();
            // Every second, both at the same instants; "b" always fails.
            s.add(name, "* * * * * *", move || {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(name);
                    if name == "b" {
                        Err("refused".to_string())
                    } else {
                        Ok("done".to_string())
                    }
                }
            })
            .expect("added");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let looping = tokio::spawn(s.clone().run(async {
            let _ = stopped.await;
        }));
        let (mut a, mut b) = (0, 0);
        while a < 2 || b < 2 {
            match rx.recv().await {
                Some("a") => a += 1,
                Some(_) => b += 1,
                None => break,
            }
        }
        let _ = stop.send(());
        looping.await.expect("loop ends");
        assert!(a >= 2 && b >= 2, "{a} {b}");
    }
}
