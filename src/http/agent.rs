//! Desktop agents and what the console shows of a desktop's life: the agent API
//! (`POST /api/v1/agent/events`: login, logout, disconnect, lock, unlock, active, idle;
//! `GET /api/v1/agent/instructions`: a forced logout to carry out), the agent
//! tokens the console issues (Resources > Desktops > a desktop > "Issue agent token", or
//! `POST /api/v1/desktops/{id}/agent-token`: shown once, stored hashed), and a desktop's
//! history, pending timers and last reported use under its form.
//!
//! An agent authenticates with its desktop's token (`Authorization: Bearer`); the token names
//! the desktop, so one desktop cannot report for another. Events go to the broker
//! (`Broker::report_event`), which owns what they do. No sled.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde_json::{Value, json};

use super::console_resources::{DetailView, Said, ShownSecret, form_page};
use super::resource::{AdminToken, ApiResult, Endpoint, invalid, json_ok, parse_body, schema};
use super::session::CsrfOnly;
use super::session::{Console, bearer, client_ip};
use super::{AppState, HttpError};
use crate::admin::{self, Actor};
use crate::broker::plans::{
    EventOutcome, Reporter, desktop_history, desktop_timers, history, logout_request,
};
use crate::model::desktop::Desktop;
use crate::model::history::{AgentToken, AgentTokenHash, issue_agent_token};
use crate::model::timer::{DesktopUse, parse_agent_event};
use crate::store::{Record, Store, StoreError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/admin/resources/desktops/{id}/agent-token",
        web::post().to(token_submit),
    );
}

// ---- The API ----------------------------------------------------------------------------------

pub fn endpoints() -> Vec<Endpoint> {
    use schema::{array, reference};
    let e = super::api::endpoint;
    vec![
        e(
            Method::POST,
            "/api/v1/agent/events",
            "agent",
            "A desktop's agent reports an event: login, logout, disconnect, lock, unlock, \
             active (input again after an idle report), or idle with the seconds idle so far \
             (the desktop's agent token)",
            vec![("application/json", reference("AgentEvent"))],
            (200, Some(reference("AgentEventOutcome"))),
            false,
            || web::post().to(event_api),
        ),
        e(
            Method::GET,
            "/api/v1/agent/instructions",
            "agent",
            "What the desktop's agent is asked to do: `logout` names the user a release plan's \
             forced logout wants logged out (null when none). The agent logs that user out and \
             reports `logout`; the logout rules apply then (the desktop's agent token)",
            vec![],
            (200, Some(reference("AgentInstructions"))),
            false,
            || web::get().to(instructions_api),
        ),
        e(
            Method::POST,
            "/api/v1/desktops/{id}/agent-token",
            "desktops",
            "Issue the desktop's agent token (shown only this once); the previous one stops \
             working",
            vec![],
            (200, Some(reference("AgentTokenIssued"))),
            true,
            || web::post().to(token_api),
        ),
        e(
            Method::GET,
            "/api/v1/desktops/{id}/history",
            "desktops",
            "What happened to the desktop, newest first: events, plan actions and their \
             outcomes",
            vec![],
            (200, Some(array(reference("HistoryEntry")))),
            true,
            || web::get().to(history_api),
        ),
    ]
}

pub fn schemas() -> Vec<(&'static str, Value)> {
    use schema::{boolean, date_time, described, integer, object, one_of, string};
    vec![
        (
            "AgentEvent",
            object(
                &["event"],
                vec![
                    ("event", one_of(&crate::model::timer::AGENT_EVENTS)),
                    (
                        "seconds",
                        described(
                            integer(),
                            "How long the desktop has been idle: required with idle, refused \
                             with the others.",
                        ),
                    ),
                    (
                        "user",
                        described(string(), "The user the agent sees logged in."),
                    ),
                    (
                        "desktop",
                        described(
                            string(),
                            "The desktop's id, when the agent knows it: it must be the token's.",
                        ),
                    ),
                ],
            ),
        ),
        ("AgentEventOutcome", event_outcome_schema()),
        (
            "AgentInstructions",
            object(
                &["desktop", "logout"],
                vec![
                    ("desktop", string()),
                    (
                        "logout",
                        described(
                            json!({
                                "type": ["object", "null"],
                                "required": ["user", "requested"],
                                "properties": {
                                    "user": {"type": "string"},
                                    "requested": {"type": "string", "format": "date-time"},
                                },
                            }),
                            "The user to log out (the name on the desktop), and since when; \
                             null when nothing is asked.",
                        ),
                    ),
                ],
            ),
        ),
        (
            "AgentTokenIssued",
            object(
                &["desktop", "token"],
                vec![
                    ("desktop", string()),
                    (
                        "token",
                        described(
                            string(),
                            "The desktop agent's token: shown only here. The agent sends it \
                             as `Authorization: Bearer <token>`.",
                        ),
                    ),
                ],
            ),
        ),
        (
            "HistoryEntry",
            object(
                &["at", "desktop", "action", "detail", "ok", "actor"],
                vec![
                    ("at", date_time()),
                    ("desktop", string()),
                    (
                        "action",
                        described(
                            string(),
                            "event.disconnect, timer.release, timer.power, agent.token, …",
                        ),
                    ),
                    ("detail", string()),
                    ("ok", boolean()),
                    (
                        "actor",
                        described(string(), "client, agent, system, or an administrator."),
                    ),
                ],
            ),
        ),
    ]
}

/// The desktop whose agent token the request carries.
async fn calling_desktop(state: &AppState, req: &HttpRequest) -> Result<String, HttpError> {
    let Some(token) = bearer(req) else {
        return Err(HttpError::AgentTokenRequired);
    };
    let hash = crate::model::gateway::hash_token(token);
    let found = state
        .store
        .call(move |s| Ok::<_, HttpError>(s.get::<AgentToken>(&hash)?))
        .await?;
    found.map(|t| t.desktop).ok_or_else(|| {
        tracing::warn!(client = %client_ip(req), "agent call refused: no desktop has that token");
        HttpError::AgentTokenRequired
    })
}

async fn event_api(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> ApiResult {
    let desktop = calling_desktop(&state, &req).await?;
    let report =
        parse_agent_event(&parse_body(&body)?).map_err(|fields| invalid("agent event", fields))?;
    if let Some(named) = &report.desktop
        && *named != desktop
    {
        tracing::warn!(token_of = %desktop, named = %named, "an agent reported for another desktop");
        return Err(HttpError::Forbidden(format!(
            "This token is desktop `{desktop}`'s: a desktop's agent reports only for its own \
             desktop, never for `{named}`."
        ))
        .into());
    }
    let outcome = state
        .broker
        .report_event(&desktop, report.event, Reporter::Agent(report.user))
        .await?;
    Ok(json_ok(StatusCode::OK, &event_outcome_body(&outcome)))
}

async fn instructions_api(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    let desktop = calling_desktop(&state, &req).await?;
    let id = desktop.clone();
    let request = state
        .store
        .call(move |s| Ok::<_, HttpError>(logout_request(s, &id)?))
        .await?;
    let logout = request.map(|r| json!({"user": r.username(), "requested": r.requested}));
    Ok(json_ok(
        StatusCode::OK,
        &json!({"desktop": desktop, "logout": logout}),
    ))
}

/// What a reported event did, as both the agent and the client APIs answer it.
pub(super) fn event_outcome_body(outcome: &EventOutcome) -> Value {
    json!({
        "desktop": outcome.desktop,
        "event": outcome.event.name(),
        "timers_set": outcome.set.iter().map(|t| json!({
            "action": t.action.describe(),
            "due": t.due,
        })).collect::<Vec<_>>(),
        "timers_cancelled": outcome.cancelled,
        "sessions_ended": outcome.sessions_ended,
    })
}

/// The schema of [`event_outcome_body`].
pub(super) fn event_outcome_schema() -> Value {
    use schema::{array, date_time, integer, object, string};
    object(
        &[
            "desktop",
            "event",
            "timers_set",
            "timers_cancelled",
            "sessions_ended",
        ],
        vec![
            ("desktop", string()),
            ("event", string()),
            (
                "timers_set",
                array(object(
                    &["action", "due"],
                    vec![("action", string()), ("due", date_time())],
                )),
            ),
            ("timers_cancelled", integer()),
            ("sessions_ended", integer()),
        ],
    )
}

/// Issues a desktop's agent token; the previous one stops working at once. Audited and in the
/// desktop's history. Returns the token, for showing once.
pub fn issue_token(
    s: &Store,
    actor: &Actor,
    desktop_id: &str,
) -> Result<(Desktop, String), HttpError> {
    let desktop = s
        .get::<Desktop>(desktop_id)?
        .ok_or_else(|| HttpError::NoSuch {
            kind: "desktop",
            id: desktop_id.to_string(),
        })?;
    let (token, hash) = issue_agent_token();
    let record = AgentToken {
        desktop: desktop.id.clone(),
        issued: Utc::now(),
        issued_by: actor.name.clone(),
    };
    s.transact(&[AgentToken::TREE, AgentTokenHash::TREE], |tx| {
        if let Some(old) = tx.get::<AgentTokenHash, StoreError>(&desktop.id)? {
            tx.delete::<AgentToken, StoreError>(&old.hash)?;
        }
        tx.put(&hash, &record)?;
        tx.put(&desktop.id, &AgentTokenHash { hash: hash.clone() })?;
        Ok(())
    })
    .map_err(|e| match e {
        crate::store::TxError::Store(e) | crate::store::TxError::Abort(e) => HttpError::from(e),
        crate::store::TxError::Conflict(_) => {
            HttpError::Conflict("Another change came first: issue the token again.".into())
        }
    })?;
    admin::audit(
        s,
        actor,
        "desktop.agent_token",
        format!(
            "desktop `{}` ({}): a new agent token; the previous one no longer works",
            desktop.name, desktop.id
        ),
        true,
    )?;
    history(
        s,
        &desktop.id,
        "agent.token",
        format!("a new agent token was issued by {}", actor.name),
        true,
        &actor.name,
    )?;
    Ok((desktop, token))
}

async fn token_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let (actor, id) = (who.actor(), path.into_inner());
    let (desktop, token) = state
        .store
        .call(move |s| issue_token(s, &actor, &id))
        .await?;
    Ok(json_ok(
        StatusCode::OK,
        &json!({"desktop": desktop.id, "token": token}),
    ))
}

async fn history_api(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let id = path.into_inner();
    let entries = state
        .store
        .call(move |s| {
            if s.get::<Desktop>(&id)?.is_none() {
                return Err(HttpError::NoSuch {
                    kind: "desktop",
                    id,
                });
            }
            Ok(desktop_history(s, &id, 500)?)
        })
        .await?;
    Ok(json_ok(StatusCode::OK, &entries))
}

// ---- Console ----------------------------------------------------------------------------------

async fn token_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let (actor, id) = (who.actor(), path.into_inner());
    let (desktop, token) = state
        .store
        .call(move |s| issue_token(s, &actor, &id))
        .await?;
    let shown = ShownSecret {
        title: format!("The agent token of {}", desktop.name),
        value: token,
        help: "Copy it now: it is shown only this once and cannot be read again. The desktop's \
               agent sends it as `Authorization: Bearer <token>` to /api/v1/agent/events. If it \
               is lost, issue a new one here."
            .into(),
    };
    let notice = "A new agent token was issued; the previous one no longer works.".to_string();
    form_page::<Desktop>(
        &state,
        &who,
        Some(desktop.id),
        None,
        Vec::new(),
        Said::Shown(shown, notice),
    )
    .await
}

fn when(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// What the desktop's page shows under its form: its use, its pending timers, its history.
pub fn desktop_details(s: &Store, id: &str) -> Result<Vec<DetailView>, StoreError> {
    let broker_store = |e: crate::broker::BrokerError| match e {
        crate::broker::BrokerError::Store(e) => e,
        other => StoreError::Engine(other.to_string()),
    };
    let mut use_rows = Vec::new();
    if let Some(u) = s.get::<DesktopUse>(id)? {
        use_rows.push(vec![
            format!(
                "{}{}",
                u.state.as_str(),
                if u.forced { " (forced)" } else { "" }
            ),
            u.user.unwrap_or_default(),
            when(u.since),
        ]);
    }
    let agent = if s.get::<AgentTokenHash>(id)?.is_some() {
        "An agent token is issued for this desktop."
    } else {
        "No agent token is issued yet: the desktop's agent cannot report until one is."
    };
    let timers = desktop_timers(s, id)
        .map_err(broker_store)?
        .into_iter()
        .map(|t| vec![when(t.due), t.action.describe(), t.plan, t.user])
        .collect();
    let history = desktop_history(s, id, 100)
        .map_err(broker_store)?
        .into_iter()
        .map(|h| {
            vec![
                when(h.at),
                h.action,
                h.detail,
                if h.ok { "ok".into() } else { "failed".into() },
                h.actor,
            ]
        })
        .collect();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(vec![
        DetailView {
            id: "use".into(),
            title: "Use".into(),
            columns: strings(&["State", "User", "Since"]),
            rows: use_rows,
            empty: format!("Nothing reported yet. {agent}"),
        },
        DetailView {
            id: "timers".into(),
            title: "Pending plan timers".into(),
            columns: strings(&["Due", "Action", "Plan", "User"]),
            rows: timers,
            empty: "None.".into(),
        },
        DetailView {
            id: "history".into(),
            title: "History".into(),
            columns: strings(&["When", "What", "Detail", "Outcome", "Who"]),
            rows: history,
            empty: "Nothing yet.".into(),
        },
    ])
}
