//! The client API (`/api/v1/client/…`): sign in with directory credentials, see the offered
//! desktops, connect, release, sign out. JSON in, JSON out; a client token (from
//! `ClientSessions`, in memory) travels as `Authorization: Bearer`.
//!
//! Also the steps the portal shares with it: a throttled directory sign-in that opens a client
//! session, and the per-request check that the session is still good (not expired, the user
//! still enabled in the directory). Every rule is the broker's; this module only parses, checks
//! the token and shapes the answers. It never names sled or ldap3.

use actix_web::http::Method;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::resource::{Endpoint, json_ok};
use super::session::{bearer, client_ip};
use super::{AppState, HttpError};
use crate::auth::{MAX_NAME, Verdict};
use crate::broker::{BrokerError, ClientSession, ConnectionParams, Offer};
use crate::model::location::ClientFacts;

/// The largest JSON body a client call accepts.
const JSON_LIMIT: usize = 16 * 1024;
/// Field lengths beyond these are refused before anything is asked of the directory.
/// A client session ends this long after sign-in, whatever happens in between.
pub const SESSION_HOURS: i64 = 12;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/client")
            .app_data(
                web::JsonConfig::default()
                    .limit(JSON_LIMIT)
                    .error_handler(|err, _| {
                        ApiError::from(HttpError::MalformedJson(err.to_string())).into()
                    }),
            )
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/desktops", web::get().to(desktops))
            .route("/desktops/{id}/connect", web::post().to(connect))
            .route("/desktops/{id}/release", web::post().to(release))
            .route("/desktops/{id}/disconnect", web::post().to(disconnect))
            .route("/desktops/{id}/logout", web::post().to(desktop_logout)),
    );
}

/// The client API as the OpenAPI document lists it (served by [`configure`], inside its scope
/// with its own JSON limits). The client token is the `token` of the login answer, sent as
/// `Authorization: Bearer`.
pub fn documented() -> Vec<Endpoint> {
    use super::resource::schema::{array, object, reference, string};
    let json = "application/json";
    let client = |method: Method,
                  path: &str,
                  summary: &str,
                  request: Vec<(&'static str, serde_json::Value)>,
                  response: (u16, Option<serde_json::Value>),
                  route: fn() -> actix_web::Route| Endpoint {
        method,
        path: format!("/api/v1/client{path}"),
        summary: summary.to_string(),
        tag: "client".to_string(),
        request,
        response,
        secured: false,
        route,
    };
    let offer = object(
        &["desktops", "notices"],
        vec![
            ("desktops", array(reference("OfferedDesktop"))),
            ("notices", array(string())),
        ],
    );
    vec![
        client(
            Method::POST,
            "/login",
            "Sign a user in: a client token and the desktops offered",
            vec![(json, reference("ClientLoginRequest"))],
            (200, Some(reference("ClientLogin"))),
            || web::post().to(login),
        ),
        client(
            Method::GET,
            "/desktops",
            "The desktops offered now (client token)",
            vec![],
            (200, Some(offer)),
            || web::get().to(desktops),
        ),
        client(
            Method::POST,
            "/desktops/{id}/connect",
            "Assign the desktop and return how to reach it (client token)",
            vec![],
            (200, Some(reference("ClientConnect"))),
            || web::post().to(connect),
        ),
        client(
            Method::POST,
            "/desktops/{id}/release",
            "Give the desktop back to its pool (client token)",
            vec![],
            (
                200,
                Some(object(&["released"], vec![("released", string())])),
            ),
            || web::post().to(release),
        ),
        client(
            Method::POST,
            "/desktops/{id}/disconnect",
            "Say the client disconnected from the desktop it holds: its sessions end (the \
             gateway closes their tunnels) and the release and power plans' disconnect timers \
             start (client token)",
            vec![],
            (200, Some(reference("DesktopEventOutcome"))),
            || web::post().to(disconnect),
        ),
        client(
            Method::POST,
            "/desktops/{id}/logout",
            "Say the user logged out of the desktop they hold: its sessions end and the plans' \
             logout timers start (with the default release plan, the desktop is released at \
             the next plan_timers run) (client token)",
            vec![],
            (200, Some(reference("DesktopEventOutcome"))),
            || web::post().to(desktop_logout),
        ),
        client(
            Method::POST,
            "/logout",
            "End the client session (client token)",
            vec![],
            (204, None),
            || web::post().to(logout),
        ),
    ]
}

/// The schemas the client endpoints name.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    use super::resource::schema::{
        array, boolean, integer, nullable, object, one_of, reference, string,
    };
    let protocol = one_of(&["rdp", "vnc", "spice", "ssh"]);
    vec![
        ("DesktopEventOutcome", super::agent::event_outcome_schema()),
        (
            "ClientLoginRequest",
            object(
                &["username", "password"],
                vec![
                    ("username", string()),
                    ("password", string()),
                    ("domain", nullable(string())),
                    (
                        "client",
                        object(
                            &[],
                            vec![
                                ("name", nullable(string())),
                                ("device_type", nullable(string())),
                                ("os", nullable(string())),
                            ],
                        ),
                    ),
                ],
            ),
        ),
        (
            "OfferedDesktop",
            object(
                &[
                    "id",
                    "name",
                    "display_name",
                    "protocol",
                    "power_state",
                    "pool_id",
                    "pool_name",
                    "yours",
                ],
                vec![
                    ("id", string()),
                    ("name", string()),
                    ("display_name", string()),
                    ("protocol", protocol.clone()),
                    ("power_state", string()),
                    ("pool_id", string()),
                    ("pool_name", string()),
                    ("yours", boolean()),
                ],
            ),
        ),
        (
            "ClientLogin",
            object(
                &["token", "user", "location", "role", "desktops", "notices"],
                vec![
                    ("token", string()),
                    (
                        "user",
                        object(
                            &["username", "display_name", "server_id"],
                            vec![
                                ("username", string()),
                                ("display_name", string()),
                                ("server_id", string()),
                            ],
                        ),
                    ),
                    ("location", string()),
                    ("role", string()),
                    ("desktops", array(reference("OfferedDesktop"))),
                    ("notices", array(string())),
                ],
            ),
        ),
        (
            "ConnectionParams",
            object(
                &["protocol", "host", "port", "uri", "command_line"],
                vec![
                    ("protocol", protocol),
                    ("host", string()),
                    ("port", integer()),
                    ("uri", string()),
                    ("file_name", nullable(string())),
                    ("file", nullable(string())),
                    ("command_line", string()),
                    (
                        "gateway",
                        nullable(object(
                            &["url", "ticket"],
                            vec![("url", string()), ("ticket", string())],
                        )),
                    ),
                    (
                        "plans",
                        nullable(object(
                            &["power", "release"],
                            vec![
                                ("power", reference("PowerPlan")),
                                ("release", reference("ReleasePlan")),
                            ],
                        )),
                    ),
                ],
            ),
        ),
        (
            "ClientConnect",
            object(
                &["desktop", "connection"],
                vec![
                    (
                        "desktop",
                        object(
                            &["id", "name", "display_name"],
                            vec![
                                ("id", string()),
                                ("name", string()),
                                ("display_name", string()),
                            ],
                        ),
                    ),
                    ("connection", reference("ConnectionParams")),
                ],
            ),
        ),
    ]
}

// ---- shared with the portal ------------------------------------------------------------------

/// Why a request that needs a client session was refused.
#[derive(Debug)]
pub enum Refused {
    /// No token, or one that names no session (never issued, signed out, or ended).
    NoSession,
    /// The session was ended just now; the reason is for the user.
    Ended(String),
    /// The session stays, but this request cannot be served (the directory is unreachable).
    Failed(HttpError),
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::NoSession => "Sign in first.".to_string(),
            Refused::Ended(reason) => reason.clone(),
            Refused::Failed(e) => e.to_string(),
        }
    }
}

/// Signs a directory user in (throttled like the console's sign-in), records them, and opens a
/// client session. Returns its token, the session and what it is offered.
pub async fn sign_in(
    state: &AppState,
    typed_user: &str,
    password: &str,
    domain: Option<&str>,
    facts: ClientFacts,
) -> Result<(String, ClientSession, Offer), HttpError> {
    if typed_user.trim().is_empty() {
        return Err(HttpError::BadRequest("Type your user name.".into()));
    }
    if crate::auth::too_long(typed_user, password) || domain.is_some_and(|d| d.len() > MAX_NAME) {
        return Err(HttpError::BadRequest(
            "The user name, password or domain is too long.".into(),
        ));
    }
    // Directory users are throttled under their own key space, apart from console accounts.
    let account = format!("directory:{}", crate::auth::throttle_account(typed_user));
    let address = facts.address;
    let delay = match state.throttle.check(&account, address) {
        Verdict::Locked { for_, .. } => {
            state.metrics.signin_failures.inc();
            let minutes = for_.as_secs().div_ceil(60).max(1);
            return Err(HttpError::Locked { minutes });
        }
        Verdict::Allowed { delay } => delay,
    };
    let decision = match state
        .broker
        .sign_in(typed_user, password, domain, &facts)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(user = typed_user, %address, "client sign-in refused: {e}");
            if matches!(e, BrokerError::WrongPassword | BrokerError::UnknownUser(_)) {
                state.metrics.signin_failures.inc();
                state.throttle.failure(&account, address);
                tokio::time::sleep(delay).await;
            }
            return Err(e.into());
        }
    };
    state.throttle.success(&account);
    let offer = state.broker.offer(&decision).await?;
    state.broker.remember(&decision, address).await?;
    tracing::info!(
        user = %decision.user.key(),
        location = %decision.location_name,
        %address,
        "client signed in"
    );
    let session = ClientSession {
        decision,
        address,
        created: Utc::now(),
    };
    let token = state.clients.insert(session.clone());
    Ok((token, session, offer))
}

/// The session a token names, if it is still good: not older than [`SESSION_HOURS`], and its
/// user still enabled in the directory (asked on every request, so a user disabled there loses
/// access at the next one). A session that is no longer good is ended. While the directory
/// cannot be reached the request is refused but the session kept.
pub async fn check_session(state: &AppState, token: &str) -> Result<ClientSession, Refused> {
    let Some(session) = state.clients.get(token) else {
        return Err(Refused::NoSession);
    };
    if Utc::now() - session.created > chrono::Duration::hours(SESSION_HOURS) {
        state.clients.remove(token);
        return Err(Refused::Ended(
            "Your session has expired. Sign in again.".into(),
        ));
    }
    match state.broker.still_valid(&session.decision.user).await {
        Ok(()) => Ok(session),
        Err(e @ BrokerError::DirectoryUnreachable(_)) => Err(Refused::Failed(e.into())),
        Err(e) => {
            state.clients.remove(token);
            tracing::info!(user = %session.decision.user.key(), "client session ended: {e}");
            Err(Refused::Ended(format!(
                "{} You have been signed out.",
                HttpError::from(e)
            )))
        }
    }
}

// ---- the JSON answers ------------------------------------------------------------------------

/// An error answered as JSON: `{"error": code, "message": text}` with the status of
/// [`HttpError`]'s one mapping; a missing or ended session is a 401.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    SignedOut(String),
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError::Http(e.into())
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Failed(e) => ApiError::Http(e),
            other => ApiError::SignedOut(other.message()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Http(e) => e.status_code(),
            ApiError::SignedOut(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Http(e) => {
                let mut resp = e.json_response();
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
                resp
            }
            ApiError::SignedOut(message) => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(serde_json::json!({ "error": "not_signed_in", "message": message })),
        }
    }
}

async fn authenticated(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(String, ClientSession), ApiError> {
    let token = bearer(req).ok_or(Refused::NoSession)?;
    let session = check_session(state, token).await?;
    Ok((token.to_string(), session))
}

// ---- handlers --------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    client: ClientInfo,
}

/// What a client says about itself (locations may match on it).
#[derive(Debug, Default, Deserialize)]
struct ClientInfo {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    device_type: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

#[derive(Serialize)]
struct UserView<'a> {
    username: &'a str,
    display_name: &'a str,
    server_id: &'a str,
}

#[derive(Serialize)]
struct LoginAnswer<'a> {
    token: &'a str,
    user: UserView<'a>,
    location: &'a str,
    role: &'a str,
    #[serde(flatten)]
    offer: &'a Offer,
}

fn fact(value: Option<String>, field: &str) -> Result<Option<String>, HttpError> {
    match value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    {
        Some(v) if v.len() > MAX_NAME => Err(HttpError::BadRequest(format!(
            "client.{field} is longer than {MAX_NAME} bytes."
        ))),
        v => Ok(v),
    }
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let facts = ClientFacts {
        address: client_ip(&req),
        name: fact(body.client.name, "name")?,
        device_type: fact(body.client.device_type, "device_type")?,
        os: fact(body.client.os, "os")?,
    };
    let (token, session, offer) = sign_in(
        &state,
        &body.username,
        &body.password,
        body.domain.as_deref(),
        facts,
    )
    .await?;
    let d = &session.decision;
    Ok(json_ok(
        StatusCode::OK,
        &LoginAnswer {
            token: &token,
            user: UserView {
                username: &d.user.username,
                display_name: &d.display_name,
                server_id: &d.user.server_id,
            },
            location: &d.location_name,
            role: &d.role.id,
            offer: &offer,
        },
    ))
}

async fn desktops(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (_, session) = authenticated(&state, &req).await?;
    let offer = state.broker.offer(&session.decision).await?;
    Ok(json_ok(StatusCode::OK, &offer))
}

#[derive(Serialize)]
struct DesktopView<'a> {
    id: &'a str,
    name: &'a str,
    display_name: &'a str,
}

#[derive(Serialize)]
struct ConnectAnswer<'a> {
    desktop: DesktopView<'a>,
    connection: &'a ConnectionParams,
}

async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, session) = authenticated(&state, &req).await?;
    let (desktop, params) = state
        .broker
        .connect(&session.decision, &id, client_ip(&req))
        .await?;
    tracing::info!(
        user = %session.decision.user.key(),
        desktop = %desktop.name,
        "client connects"
    );
    Ok(json_ok(
        StatusCode::OK,
        &ConnectAnswer {
            desktop: DesktopView {
                id: &desktop.id,
                name: &desktop.name,
                display_name: desktop.shown_name(),
            },
            connection: &params,
        },
    ))
}

async fn release(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, session) = authenticated(&state, &req).await?;
    if !session.decision.role.may_release {
        return Err(BrokerError::Forbidden.into());
    }
    let desktop = state.broker.release(&session.decision.user, &id).await?;
    tracing::info!(
        user = %session.decision.user.key(),
        desktop = %desktop.name,
        "client released a desktop"
    );
    Ok(json_ok(
        StatusCode::OK,
        &serde_json::json!({ "released": desktop.id }),
    ))
}

/// A disconnect or logout reported by the client, for the desktop it holds.
async fn desktop_event(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    event: crate::model::timer::DesktopEvent,
) -> Result<HttpResponse, ApiError> {
    let (_, session) = authenticated(state, req).await?;
    let outcome = state
        .broker
        .report_event(
            id,
            event,
            crate::broker::plans::Reporter::Client(session.decision.user.clone()),
        )
        .await?;
    tracing::info!(
        user = %session.decision.user.key(),
        desktop = %id,
        event = event.name(),
        "client reported"
    );
    Ok(json_ok(
        StatusCode::OK,
        &super::agent::event_outcome_body(&outcome),
    ))
}

async fn disconnect(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use crate::model::timer::DesktopEvent;
    desktop_event(&state, &req, &id, DesktopEvent::Disconnect).await
}

async fn desktop_logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use crate::model::timer::DesktopEvent;
    desktop_event(&state, &req, &id, DesktopEvent::Logout).await
}

async fn logout(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req).ok_or(Refused::NoSession)?;
    if state.clients.get(token).is_none() {
        return Err(Refused::NoSession.into());
    }
    state.clients.remove(token);
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(resp: HttpResponse) -> serde_json::Value {
        let bytes = to_bytes(resp.into_body()).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[actix_web::test]
    async fn an_unknown_user_reads_exactly_what_a_wrong_password_reads() {
        let wrong = ApiError::from(BrokerError::WrongPassword);
        let unknown = ApiError::from(BrokerError::UnknownUser("mallory".into()));
        assert_eq!(wrong.status_code(), StatusCode::UNAUTHORIZED);
        assert_eq!(unknown.status_code(), StatusCode::UNAUTHORIZED);
        let (w, u) = (
            body_of(wrong.error_response()).await,
            body_of(unknown.error_response()).await,
        );
        assert_eq!(w, u);
        assert_eq!(w["error"], "wrong_password");
        assert!(!u.to_string().contains("mallory"), "{u}");
    }

    #[actix_web::test]
    async fn broker_refusals_map_to_their_statuses() {
        let cases = [
            (BrokerError::EmptyPassword, 401),
            (BrokerError::Disabled, 403),
            (BrokerError::PasswordExpired, 403),
            (BrokerError::DirectoryUnreachable("x".into()), 503),
            (BrokerError::NoServers, 403),
            (BrokerError::NoAccess, 403),
            (BrokerError::NoDesktopAvailable { pool: "Lab".into() }, 409),
            (BrokerError::NotOffered, 403),
            (BrokerError::NotYours, 404),
            (BrokerError::Forbidden, 403),
            (BrokerError::ProtocolNotAllowed("VNC".into()), 409),
            (
                BrokerError::Missing {
                    kind: "policy",
                    id: "p".into(),
                },
                500,
            ),
        ];
        for (e, status) in cases {
            // What the user reads: the broker's words, with inner detail left to the log.
            let shown = crate::http::error::broker_message(&e);
            let resp = ApiError::from(e).error_response();
            assert_eq!(resp.status().as_u16(), status, "{shown}");
            let body = body_of(resp).await;
            assert_eq!(body["message"], shown.as_str());
        }
    }

    #[actix_web::test]
    async fn an_ended_session_is_a_401_with_a_bearer_challenge() {
        let resp =
            ApiError::from(Refused::Ended("Your account is disabled.".into())).error_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body = body_of(resp).await;
        assert_eq!(body["error"], "not_signed_in");
        assert_eq!(body["message"], "Your account is disabled.");
    }

    #[test]
    fn client_facts_are_trimmed_and_bounded() {
        assert_eq!(
            fact(Some("  laptop ".into()), "name").ok(),
            Some(Some("laptop".into()))
        );
        assert_eq!(fact(Some("   ".into()), "name").ok(), Some(None));
        let long = "x".repeat(MAX_NAME + 1);
        assert!(
            matches!(fact(Some(long), "os"), Err(HttpError::BadRequest(m)) if m.contains("client.os"))
        );
    }
}
