//! System > Jobs and `/api/v1/jobs`: every scheduled job with its schedule, last start,
//! duration, result and next start; "Run now"; and the schedule set in the console in place of
//! the configured one (empty: off), refused with the reason when it cannot be read. Also the
//! plans' pending timers (`GET /api/v1/timers`).
//!
//! The rules (validating, keeping and applying a schedule, auditing) are `admin`'s; starting a
//! job is the scheduler's, which never starts a job that is still running. No sled.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::forms::{ButtonView, FormView, Kind, Values, field_views, helped};
use super::pages::{NoticeQuery, Page, see_other};
use super::resource::{
    AdminToken, ApiResult, Endpoint, from_json, invalid, json_ok, parse_body, schema,
};
use super::session::Console;
use super::session::CsrfOnly;
use super::{AppState, HttpError};
use crate::admin::{self, Actor, AdminError};
use crate::model::FieldError;
use crate::scheduler::{JobStatus, RunNow, ScheduleError};

const BASE: &str = "/admin/system/jobs";
/// How long `?wait=true` waits for a run to end before answering 202 anyway.
const WAIT_AT_MOST: std::time::Duration = std::time::Duration::from_secs(300);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(BASE, web::get().to(list_page))
        .route(&format!("{BASE}/run"), web::post().to(run_submit))
        .route(&format!("{BASE}/{{name}}"), web::get().to(edit_page))
        .route(&format!("{BASE}/{{name}}"), web::post().to(edit_submit))
        .route(
            &format!("{BASE}/{{name}}/configured"),
            web::post().to(configured_submit),
        );
}

// ---- The admin API ----------------------------------------------------------------------------

pub fn endpoints() -> Vec<Endpoint> {
    use schema::{array, reference};
    let e = super::api::endpoint;
    vec![
        e(
            Method::GET,
            "/api/v1/jobs",
            "jobs",
            "Every scheduled job: schedule, last start, duration, result, next start",
            vec![],
            (200, Some(array(reference("JobStatus")))),
            true,
            || web::get().to(list_api),
        ),
        e(
            Method::PUT,
            "/api/v1/jobs/{name}",
            "jobs",
            "Set a job's schedule in place of the configured one (\"\": off; null: back to \
             the configured one); a schedule that cannot be read is refused, nothing saved",
            vec![("application/json", reference("JobScheduleRequest"))],
            (200, Some(reference("JobStatus"))),
            true,
            || web::put().to(schedule_api),
        ),
        e(
            Method::POST,
            "/api/v1/jobs/{name}/run",
            "jobs",
            "Run a job now: 202 once started (409 while it runs already); with `?wait=true`, \
             200 when this run has ended, with its result",
            vec![],
            (202, Some(reference("JobStatus"))),
            true,
            || web::post().to(run_api),
        ),
        e(
            Method::GET,
            "/api/v1/timers",
            "jobs",
            "The release and power plans' pending timers, soonest first (`?desktop=` for one \
             desktop's)",
            vec![],
            (200, Some(array(reference("PlanTimer")))),
            true,
            || web::get().to(timers_api),
        ),
    ]
}

pub fn schemas() -> Vec<(&'static str, Value)> {
    use schema::{boolean, date_time, described, integer, nullable, object, one_of, string};
    let power = one_of(&[
        "nothing",
        "start",
        "suspend",
        "shutdown",
        "power_off",
        "reboot",
    ]);
    vec![
        (
            "JobStatus",
            object(
                &[
                    "name",
                    "schedule",
                    "configured_schedule",
                    "overridden",
                    "running",
                    "last_start",
                    "last_duration_ms",
                    "last_result",
                    "last_ok",
                    "next_start",
                    "runs",
                ],
                vec![
                    (
                        "name",
                        described(
                            string(),
                            "backup, pool_stats, pool_history_stats, plan_timers, …",
                        ),
                    ),
                    (
                        "schedule",
                        described(
                            string(),
                            "The schedule in force: a crontab line (5 fields) or one with \
                             seconds (6 fields). Empty: off.",
                        ),
                    ),
                    ("configured_schedule", string()),
                    (
                        "overridden",
                        described(boolean(), "The schedule was set in the console or the API."),
                    ),
                    ("running", boolean()),
                    ("last_start", nullable(date_time())),
                    ("last_duration_ms", nullable(integer())),
                    (
                        "last_result",
                        described(
                            nullable(string()),
                            "What the last run reported, or why it failed.",
                        ),
                    ),
                    ("last_ok", nullable(boolean())),
                    ("next_start", nullable(date_time())),
                    (
                        "runs",
                        described(integer(), "Runs ended since the appliance started."),
                    ),
                ],
            ),
        ),
        (
            "JobScheduleRequest",
            object(
                &["schedule"],
                vec![(
                    "schedule",
                    described(
                        nullable(string()),
                        "A crontab line (`*/10 * * * *`) or one with seconds; \"\" turns the \
                         job off; null puts the configured schedule back.",
                    ),
                )],
            ),
        ),
        (
            "PlanTimer",
            object(
                &[
                    "id", "desktop", "user", "action", "due", "cause", "created", "plan",
                ],
                vec![
                    ("id", string()),
                    ("desktop", string()),
                    ("user", described(string(), "server/username")),
                    ("session", nullable(string())),
                    (
                        "action",
                        described(
                            json!({"anyOf": [
                                one_of(&["forced_logout", "release", "delete_vm"]),
                                object(&["power"], vec![("power", power)]),
                            ]}),
                            "What it does when due.",
                        ),
                    ),
                    ("due", date_time()),
                    (
                        "cause",
                        one_of(&["disconnect", "logout", "idle", "release"]),
                    ),
                    ("created", date_time()),
                    ("plan", string()),
                ],
            ),
        ),
    ]
}

fn no_such_job(name: &str) -> HttpError {
    HttpError::NoSuch {
        kind: "job",
        id: name.to_string(),
    }
}

async fn list_api(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    Ok(json_ok(StatusCode::OK, &state.scheduler.statuses()))
}

#[derive(Deserialize)]
struct ScheduleBody {
    schedule: Option<String>,
}

/// Sets a schedule (or puts the configured one back); refusals name the `schedule` field.
async fn set_schedule(
    state: &AppState,
    actor: Actor,
    name: String,
    schedule: Option<String>,
) -> Result<JobStatus, HttpError> {
    let scheduler = state.scheduler.clone();
    let outcome = state
        .store
        .call(move |s| {
            Ok::<_, HttpError>(admin::set_job_schedule(
                s,
                &scheduler,
                &actor,
                &name,
                schedule.as_deref(),
            ))
        })
        .await?;
    match outcome {
        Ok(status) => Ok(status),
        Err(AdminError::Schedule(ScheduleError::UnknownJob(name))) => Err(no_such_job(&name)),
        Err(AdminError::Schedule(e)) => Err(invalid(
            "schedule",
            vec![FieldError::new(
                "schedule",
                format!(
                    "{e}. Write 5 crontab fields (minute hour day month weekday) or 6 with \
                     seconds first; leave it empty to turn the job off."
                ),
            )],
        )),
        Err(e) => Err(e.into()),
    }
}

async fn schedule_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let ScheduleBody { schedule } = from_json("schedule", &parse_body(&body)?)?;
    let status = set_schedule(&state, who.actor(), path.into_inner(), schedule).await?;
    Ok(json_ok(StatusCode::OK, &status))
}

#[derive(Deserialize, Default)]
struct RunQuery {
    #[serde(default)]
    wait: Option<String>,
}

fn wait_of(query: &str) -> Result<bool, HttpError> {
    let q: RunQuery = serde_urlencoded::from_str(query).unwrap_or_default();
    match q.wait.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(invalid(
            "request",
            vec![FieldError::new(
                "wait",
                format!("`{other}` is neither true nor false"),
            )],
        )),
    }
}

/// Starts a job and audits the request; the refusal says why nothing started.
async fn start(state: &AppState, actor: Actor, name: &str) -> Result<RunNow, HttpError> {
    let run = state.scheduler.run_now(name);
    let (started, detail) = match &run {
        RunNow::Started(_) => (true, format!("{name}: run now")),
        RunNow::Running => (false, format!("{name}: run now refused, it is running")),
        RunNow::Unknown => (false, format!("{name}: run now refused, no such job")),
    };
    state
        .store
        .call(move |s| admin::audit(s, &actor, "job.run", detail, started))
        .await?;
    match run {
        RunNow::Unknown => Err(no_such_job(name)),
        RunNow::Running => Err(HttpError::Conflict(format!(
            "The job `{name}` is running now, and a job never runs twice at once: try again \
             when this run has ended."
        ))),
        started => Ok(started),
    }
}

async fn run_api(
    state: web::Data<AppState>,
    who: AdminToken,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult {
    let name = path.into_inner();
    let wait = wait_of(req.query_string())?;
    let RunNow::Started(finished) = start(&state, who.actor(), &name).await? else {
        return Err(no_such_job(&name).into());
    };
    let ended = wait
        && tokio::time::timeout(WAIT_AT_MOST, finished.wait())
            .await
            .is_ok();
    let status = state
        .scheduler
        .status(&name)
        .ok_or_else(|| no_such_job(&name))?;
    let code = if ended {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_ok(code, &status))
}

#[derive(Deserialize, Default)]
struct TimersQuery {
    #[serde(default)]
    desktop: Option<String>,
}

async fn timers_api(state: web::Data<AppState>, _who: AdminToken, req: HttpRequest) -> ApiResult {
    let q: TimersQuery = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let timers = state
        .store
        .call(move |s| {
            Ok::<_, HttpError>(match q.desktop.filter(|d| !d.is_empty()) {
                Some(d) => crate::broker::plans::desktop_timers(s, &d)?,
                None => crate::broker::plans::pending_timers(s, 1000)?,
            })
        })
        .await?;
    Ok(json_ok(StatusCode::OK, &timers))
}

// ---- Console pages ----------------------------------------------------------------------------

#[derive(Serialize)]
struct JobRow {
    name: String,
    edit: String,
    schedule: String,
    last_start: String,
    duration: String,
    result: String,
    ok: Option<bool>,
    next_start: String,
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("—".to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

fn row(j: &JobStatus) -> JobRow {
    let schedule = match (j.schedule.is_empty(), j.overridden) {
        (true, _) => "off".to_string(),
        (false, true) => format!("{} (set in the console)", j.schedule),
        (false, false) => j.schedule.clone(),
    };
    JobRow {
        name: j.name.clone(),
        edit: format!("{BASE}/{}", j.name),
        schedule,
        last_start: when(j.last_start),
        duration: j.last_duration_ms.map_or("—".into(), |d| format!("{d} ms")),
        result: match (j.running, j.last_ok) {
            (true, _) => "running".into(),
            (false, Some(true)) => format!("ok: {}", j.last_result.clone().unwrap_or_default()),
            (false, Some(false)) => {
                format!("failed: {}", j.last_result.clone().unwrap_or_default())
            }
            (false, None) => "not run yet".into(),
        },
        ok: j.last_ok,
        next_start: when(j.next_start),
    }
}

async fn render_list(
    state: &AppState,
    who: &Console,
    notice: &str,
    error: Option<(StatusCode, String)>,
) -> Result<HttpResponse, HttpError> {
    let rows: Vec<JobRow> = state.scheduler.statuses().iter().map(row).collect();
    let mut page = Page::new(state, Some(who), "jobs.html", "Jobs", BASE).await?;
    page.set("jobs", &rows).set("notice", notice);
    if let Some((status, message)) = error {
        page = page.error(status, message);
    }
    page.render(state)
}

async fn list_page(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, HttpError> {
    let notice = query.sentence(&[
        (
            "started",
            "Started: the result shows here when the run has ended.",
        ),
        ("saved", "Schedule saved."),
    ]);
    render_list(&state, &who, notice, None).await
}

#[derive(Deserialize)]
struct RunForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

async fn run_submit(
    state: web::Data<AppState>,
    who: Console,
    form: web::Form<RunForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    match start(&state, who.actor(), &form.name).await {
        Ok(_) => Ok(see_other(&format!("{BASE}?notice=started"))),
        Err(e @ (HttpError::Conflict(_) | HttpError::NoSuch { .. })) => {
            use actix_web::ResponseError;
            render_list(&state, &who, "", Some((e.status_code(), e.to_string()))).await
        }
        Err(e) => Err(e),
    }
}

const SCHEDULE_FIELD: [super::forms::Field; 1] = [helped("schedule", "Schedule", Kind::Text, "")];

/// The schedule form of one job, with what was typed and the refusal when there is one.
async fn edit_form(
    state: &AppState,
    who: &Console,
    name: &str,
    typed: Option<&str>,
    errors: &[FieldError],
) -> Result<Page, HttpError> {
    let status = state
        .scheduler
        .status(name)
        .ok_or_else(|| no_such_job(name))?;
    let mut values = Values::new();
    values.insert(
        "schedule".into(),
        typed.unwrap_or(&status.schedule).to_string(),
    );
    let mut fields =
        field_views::<HttpError>(&SCHEDULE_FIELD, &values, errors, |_| Ok(Vec::new()))?;
    if let Some(f) = fields.first_mut() {
        f.help = format!(
            "A crontab line: minute hour day month weekday (`*/10 * * * *`: every ten minutes; \
             weekday 0 or 7 is Sunday), or 6 fields with seconds first. Empty: off (Run now \
             still works). Configured: {}.",
            if status.configured_schedule.is_empty() {
                "off".to_string()
            } else {
                format!("`{}`", status.configured_schedule)
            }
        );
    }
    let mut view = FormView::new(format!("{BASE}/{name}"), fields, "Save", BASE);
    if status.overridden {
        view.buttons = vec![ButtonView {
            label: "Use the configured schedule".into(),
            action: format!("{BASE}/{name}/configured"),
        }];
    }
    let mut page = Page::new(
        state,
        Some(who),
        "resource_form.html",
        &format!("Jobs: {name}"),
        BASE,
    )
    .await?;
    page.set("view", &view);
    Ok(page)
}

async fn edit_page(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    edit_form(&state, &who, &path.into_inner(), None, &[])
        .await?
        .render(&state)
}

async fn edit_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<Values>,
) -> Result<HttpResponse, HttpError> {
    let form = form.into_inner();
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let name = path.into_inner();
    let typed = form.get("schedule").cloned().unwrap_or_default();
    match set_schedule(&state, who.actor(), name.clone(), Some(typed.clone())).await {
        Ok(_) => Ok(see_other(&format!("{BASE}?notice=saved"))),
        Err(HttpError::Invalid { summary, fields }) => {
            edit_form(&state, &who, &name, Some(&typed), &fields)
                .await?
                .error(StatusCode::BAD_REQUEST, summary)
                .render(&state)
        }
        Err(e) => Err(e),
    }
}

async fn configured_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    set_schedule(&state, who.actor(), path.into_inner(), None).await?;
    Ok(see_other(&format!("{BASE}?notice=saved")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_read_or_refused() {
        assert!(!wait_of("").expect("none"));
        assert!(wait_of("wait=true").expect("true"));
        assert!(!wait_of("wait=0").expect("false"));
        let Err(HttpError::Invalid { fields, .. }) = wait_of("wait=later") else {
            panic!("accepted");
        };
        assert_eq!(fields[0].field, "wait");
    }

    #[test]
    fn the_job_status_schema_lists_what_is_served() {
        let served = serde_json::to_value(JobStatus::default()).expect("json");
        let mut a: Vec<&String> = served.as_object().expect("object").keys().collect();
        let all = schemas();
        let schema = &all
            .iter()
            .find(|(n, _)| *n == "JobStatus")
            .expect("schema")
            .1;
        let mut b: Vec<&String> = schema["properties"]
            .as_object()
            .expect("props")
            .keys()
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
