//! The admin JSON API under `/api/v1`: tokens, the configuration resources (declared in
//! `resource`), assignment tables per authentication server, users, desktop sessions, test
//! login, the desktop CSV import, directory checks, and the OpenAPI document built from the
//! same endpoint table that is served.
//!
//! Handlers parse and check input and call the broker, the store (through `Store::call`) or
//! `admin`; every error answers as JSON (`{"error", "message"}`). Nothing here decides who gets
//! which desktop: test login asks the broker.

use std::net::IpAddr;

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::resource::{
    self, AdminToken, ApiResult, Endpoint, from_json, invalid, json_ok, parse_body, schema,
};
use super::session::client_ip;
use super::signin::Credentials;
use super::{AppState, HttpError};
use crate::admin::{self, Actor};
use crate::auth::{DirectoryGroup, LdapDirectory, Verdict};
use crate::broker::{BrokerError, DesktopSession, KnownUser, OfferedDesktop};
use crate::model::FieldError;
use crate::model::desktop::{Desktop, DesktopError};
use crate::model::directory::AuthServer;
use crate::model::location::{ClientFacts, Location};
use crate::model::plan::{PowerPlan, ProtocolPlan, ReleasePlan};
use crate::model::policy::{AssignmentTable, MatchedRow, Policy};
use crate::model::pool::Pool;
use crate::model::role::Role;
use crate::store::{Record, Store};

pub fn configure(cfg: &mut web::ServiceConfig) {
    resource::register(cfg, &all_endpoints());
}

/// Every endpoint of the admin API: what is served, and what the OpenAPI document lists.
pub fn all_endpoints() -> Vec<Endpoint> {
    let mut all = own_endpoints();
    all.extend(resource::endpoints::<AuthServer>());
    all.extend(resource::endpoints::<Location>());
    all.extend(resource::endpoints::<Role>());
    all.extend(resource::endpoints::<ProtocolPlan>());
    all.extend(resource::endpoints::<PowerPlan>());
    all.extend(resource::endpoints::<ReleasePlan>());
    all.extend(resource::endpoints::<Policy>());
    all.extend(resource::endpoints::<Pool>());
    all.extend(resource::endpoints::<Desktop>());
    all.extend(super::gateways::endpoints());
    all.extend(super::centers::endpoints());
    all.extend(super::jobs::endpoints());
    all.extend(super::stats::endpoints());
    all.extend(super::agent::endpoints());
    all
}

/// What the OpenAPI document lists: the admin API and the client API.
pub fn documented_endpoints() -> Vec<Endpoint> {
    let mut all = all_endpoints();
    all.extend(super::client::documented());
    all
}

fn all_schemas() -> Vec<(&'static str, Value)> {
    let mut all = own_schemas();
    all.extend(super::client::schemas());
    all.extend(resource::schemas::<AuthServer>());
    all.extend(resource::schemas::<Location>());
    all.extend(resource::schemas::<Role>());
    all.extend(resource::schemas::<ProtocolPlan>());
    all.extend(resource::schemas::<PowerPlan>());
    all.extend(resource::schemas::<ReleasePlan>());
    all.extend(resource::schemas::<Policy>());
    all.extend(resource::schemas::<Pool>());
    all.extend(resource::schemas::<Desktop>());
    all.extend(super::gateways::schemas());
    all.extend(super::centers::schemas());
    all.extend(super::jobs::schemas());
    all.extend(super::stats::schemas());
    all.extend(super::agent::schemas());
    all
}

#[allow(clippy::too_many_arguments)]
pub(super) fn endpoint(
    method: Method,
    path: &str,
    tag: &str,
    summary: &str,
    request: Vec<(&'static str, Value)>,
    response: (u16, Option<Value>),
    secured: bool,
    route: fn() -> actix_web::Route,
) -> Endpoint {
    Endpoint {
        method,
        path: path.to_string(),
        summary: summary.to_string(),
        tag: tag.to_string(),
        request,
        response,
        secured,
        route,
    }
}

fn own_endpoints() -> Vec<Endpoint> {
    use schema::{array, reference, string};
    let json = "application/json";
    vec![
        endpoint(
            Method::POST,
            "/api/v1/tokens",
            "tokens",
            "Sign in as an administrator: a bearer token for the other calls",
            vec![(json, reference("TokenRequest"))],
            (200, Some(reference("Token"))),
            false,
            || web::post().to(issue_token),
        ),
        endpoint(
            Method::GET,
            "/api/v1/openapi.json",
            "meta",
            "This document",
            vec![],
            (200, Some(json!({"type": "object"}))),
            false,
            || web::get().to(openapi),
        ),
        endpoint(
            Method::GET,
            "/api/v1/users",
            "users",
            "Users who signed in at least once",
            vec![],
            (200, Some(array(reference("KnownUser")))),
            true,
            || web::get().to(users),
        ),
        endpoint(
            Method::GET,
            "/api/v1/sessions",
            "sessions",
            "Desktop sessions, newest first",
            vec![],
            (200, Some(array(reference("DesktopSession")))),
            true,
            || web::get().to(sessions),
        ),
        endpoint(
            Method::POST,
            "/api/v1/test-login",
            "users",
            "What a user would get, without a password and without assigning anything",
            vec![(json, reference("TestLoginRequest"))],
            (200, Some(reference("TestLoginReport"))),
            true,
            || web::post().to(test_login),
        ),
        endpoint(
            Method::POST,
            "/api/v1/desktops/import",
            "desktops",
            "Import static desktops from CSV: all lines or none",
            vec![
                ("text/csv", string()),
                (json, schema::object(&["csv"], vec![("csv", string())])),
            ],
            (201, Some(reference("ImportResult"))),
            true,
            || web::post().to(import_desktops),
        ),
        endpoint(
            Method::GET,
            "/api/v1/auth-servers/{id}/test",
            "auth-servers",
            "Test the connection: DNS, TCP, TLS, bind and search base, per host",
            vec![],
            (200, Some(reference("ConnectionTest"))),
            true,
            || web::get().to(test_connection),
        ),
        endpoint(
            Method::GET,
            "/api/v1/auth-servers/{id}/groups",
            "auth-servers",
            "The names (CNs) of the groups the directory has, each once. A row naming a group \
             by name matches every group of that name: group-dns lists each group with its DN",
            vec![],
            (200, Some(array(string()))),
            true,
            || web::get().to(groups),
        ),
        endpoint(
            Method::GET,
            "/api/v1/auth-servers/{id}/group-dns",
            "auth-servers",
            "The groups the directory has, each with its name (CN) and DN, sorted by name: an \
             assignment row's group given as the DN matches only that group",
            vec![],
            (200, Some(array(reference("DirectoryGroup")))),
            true,
            || web::get().to(group_dns),
        ),
        endpoint(
            Method::GET,
            "/api/v1/assignments",
            "assignments",
            "The assignment table of every authentication server",
            vec![],
            (200, Some(array(reference("ServerAssignments")))),
            true,
            || web::get().to(assignments),
        ),
        endpoint(
            Method::GET,
            "/api/v1/assignments/{server_id}",
            "assignments",
            "One authentication server's assignment table",
            vec![],
            (200, Some(reference("AssignmentTable"))),
            true,
            || web::get().to(assignment_table),
        ),
        endpoint(
            Method::PUT,
            "/api/v1/assignments/{server_id}",
            "assignments",
            "Replace one authentication server's assignment table",
            vec![(json, reference("AssignmentTable"))],
            (200, Some(reference("AssignmentTable"))),
            true,
            || web::put().to(put_assignment_table),
        ),
    ]
}

fn own_schemas() -> Vec<(&'static str, Value)> {
    use schema::{array, boolean, date_time, integer, nullable, object, one_of, reference, string};
    let user_key = object(
        &["server_id", "username"],
        vec![("server_id", string()), ("username", string())],
    );
    let named = object(&["id", "name"], vec![("id", string()), ("name", string())]);
    let row = object(
        &["role_id", "policy_id"],
        vec![
            (
                "group",
                schema::described(
                    nullable(string()),
                    "The group a user must be in; null: any. A value with `=` is a \
                     distinguished name and matches only that group (compared \
                     case-insensitively, spaces around `,` `=` `+` aside); one without `=` is a \
                     group name (CN) and matches every group of that name. A value with `=` that \
                     is not a DN is refused.",
                ),
            ),
            ("location_id", nullable(string())),
            ("role_id", string()),
            ("policy_id", string()),
        ],
    );
    let otherwise = nullable(json!({"type": "array", "items": {"type": "string"},
        "minItems": 2, "maxItems": 2, "description": "[role_id, policy_id] for everyone no row matched"}));
    let client = object(
        &[],
        vec![
            ("address", nullable(string())),
            ("name", nullable(string())),
            ("device_type", nullable(string())),
            ("os", nullable(string())),
        ],
    );
    vec![
        (
            "Error",
            object(
                &["error", "message"],
                vec![
                    ("error", string()),
                    ("message", string()),
                    (
                        "fields",
                        array(object(
                            &["field", "reason"],
                            vec![("field", string()), ("reason", string())],
                        )),
                    ),
                ],
            ),
        ),
        (
            "TokenRequest",
            object(
                &["username", "password"],
                vec![("username", string()), ("password", string())],
            ),
        ),
        (
            "Token",
            object(
                &["token", "token_type", "expires_in"],
                vec![
                    ("token", string()),
                    ("token_type", one_of(&["Bearer"])),
                    ("expires_in", integer()),
                ],
            ),
        ),
        (
            "KnownUser",
            object(
                &[
                    "user",
                    "display_name",
                    "groups",
                    "last_sign_in",
                    "last_address",
                ],
                vec![
                    ("user", user_key.clone()),
                    ("display_name", string()),
                    ("groups", array(string())),
                    ("last_sign_in", date_time()),
                    ("last_address", string()),
                ],
            ),
        ),
        (
            "DesktopSession",
            object(
                &[
                    "id",
                    "user",
                    "desktop_id",
                    "client_address",
                    "started",
                    "ended",
                ],
                vec![
                    ("id", string()),
                    ("user", user_key),
                    ("desktop_id", string()),
                    ("client_address", string()),
                    ("started", date_time()),
                    ("ended", nullable(date_time())),
                ],
            ),
        ),
        (
            "TestLoginRequest",
            object(
                &["username"],
                vec![
                    ("username", string()),
                    ("domain", nullable(string())),
                    ("client", client.clone()),
                ],
            ),
        ),
        (
            "TestLoginReport",
            object(
                &[
                    "username",
                    "client",
                    "found",
                    "problem",
                    "server",
                    "display_name",
                    "groups",
                    "group_dns",
                    "location",
                    "assignment",
                    "role",
                    "policy",
                    "desktops",
                    "notices",
                ],
                vec![
                    ("username", string()),
                    ("client", client),
                    ("found", boolean()),
                    (
                        "problem",
                        nullable(object(
                            &["code", "message"],
                            vec![("code", string()), ("message", string())],
                        )),
                    ),
                    ("server", nullable(named.clone())),
                    ("display_name", string()),
                    ("groups", array(string())),
                    (
                        "group_dns",
                        schema::described(array(string()), "The full DNs of the user's groups"),
                    ),
                    ("location", nullable(named)),
                    (
                        "assignment",
                        nullable(object(
                            &[
                                "row",
                                "otherwise",
                                "group",
                                "location_id",
                                "role_id",
                                "policy_id",
                            ],
                            vec![
                                (
                                    "row",
                                    nullable(schema::described(
                                        integer(),
                                        "1-based row number; null when \"everyone else\" matched",
                                    )),
                                ),
                                ("otherwise", boolean()),
                                ("group", nullable(string())),
                                ("location_id", nullable(string())),
                                ("role_id", string()),
                                ("policy_id", string()),
                            ],
                        )),
                    ),
                    ("role", nullable(reference("Role"))),
                    ("policy", nullable(reference("Policy"))),
                    (
                        "desktops",
                        array(object(
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
                                ("protocol", string()),
                                ("power_state", string()),
                                ("pool_id", string()),
                                ("pool_name", string()),
                                ("yours", boolean()),
                            ],
                        )),
                    ),
                    ("notices", array(string())),
                ],
            ),
        ),
        (
            "ImportResult",
            object(
                &["imported", "desktops"],
                vec![
                    ("imported", integer()),
                    ("desktops", array(reference("Desktop"))),
                ],
            ),
        ),
        (
            "DirectoryGroup",
            object(&["name", "dn"], vec![("name", string()), ("dn", string())]),
        ),
        (
            "ConnectionTest",
            object(
                &["ok", "steps", "warnings"],
                vec![
                    ("ok", boolean()),
                    (
                        "steps",
                        array(object(
                            &["name", "host", "ok", "detail"],
                            vec![
                                ("name", string()),
                                ("host", string()),
                                ("ok", boolean()),
                                ("detail", string()),
                            ],
                        )),
                    ),
                    ("warnings", array(string())),
                ],
            ),
        ),
        (
            "AssignmentTable",
            object(
                &["rows"],
                vec![
                    ("rows", array(row.clone())),
                    ("otherwise", otherwise.clone()),
                ],
            ),
        ),
        (
            "ServerAssignments",
            object(
                &["server_id", "server_name", "rows", "otherwise"],
                vec![
                    ("server_id", string()),
                    ("server_name", string()),
                    ("rows", array(row)),
                    ("otherwise", otherwise),
                ],
            ),
        ),
    ]
}

/// The OpenAPI 3.1 document of every endpoint in [`all_endpoints`].
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for e in documented_endpoints() {
        let mut op = json!({
            "summary": e.summary,
            "tags": [e.tag],
            "operationId": format!("{}_{}", e.method.as_str().to_lowercase(),
                e.path.trim_start_matches("/api/v1/").replace(['/', '-', '.'], "_")
                    .replace(['{', '}'], "")),
        });
        let params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if !e.request.is_empty() {
            let content: serde_json::Map<String, Value> = e
                .request
                .iter()
                .map(|(media, s)| (media.to_string(), json!({"schema": s})))
                .collect();
            op["requestBody"] = json!({"required": true, "content": content});
        }
        let error = json!({"description": "Refused", "content": {"application/json":
            {"schema": schema::reference("Error")}}});
        let (status, body) = &e.response;
        let mut responses = serde_json::Map::new();
        responses.insert(
            status.to_string(),
            match body {
                Some(s) => {
                    // A body that is not JSON (the broker's PEM key) names its media type.
                    let media = s
                        .get("contentMediaType")
                        .and_then(Value::as_str)
                        .unwrap_or("application/json");
                    json!({"description": "Done", "content": {media: {"schema": s}}})
                }
                None => json!({"description": "Done"}),
            },
        );
        let mut refusals = vec!["400"];
        if e.secured {
            refusals.extend(["401", "404", "409"]);
            op["security"] = json!([{"bearer": []}]);
        } else {
            refusals.extend(["401", "429"]);
            op["security"] = json!([]);
        }
        for code in refusals {
            responses.insert(code.to_string(), error.clone());
        }
        op["responses"] = Value::Object(responses);
        let entry = paths.entry(e.path.clone()).or_insert_with(|| json!({}));
        entry[e.method.as_str().to_lowercase()] = op;
    }
    let schemas: serde_json::Map<String, Value> = all_schemas()
        .into_iter()
        .map(|(name, s)| (name.to_string(), s))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gatehouse admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Administration of a Gatehouse appliance. Get a token with POST \
                /api/v1/tokens, then send it as `Authorization: Bearer <token>`. Errors answer \
                `{\"error\": code, \"message\": text}`; refused fields add `fields`."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

async fn openapi() -> HttpResponse {
    json_ok(StatusCode::OK, &document())
}

// ---- Tokens -----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct TokenRequest {
    username: String,
    password: String,
}

/// A sign-in whose user name or password is longer than any account's.
pub(super) const TOO_LONG: &str = "The user name or password is too long.";
/// The audit line of the first refusal of a lockout.
pub(super) const LOCKED: &str =
    "refused while locked out (further attempts until the lockout ends are counted, not logged)";

async fn issue_token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> ApiResult {
    let TokenRequest { username, password } = from_json("sign-in", &parse_body(&body)?)?;
    if crate::auth::too_long(&username, &password) {
        return Err(HttpError::BadRequest(TOO_LONG.into()).into());
    }
    let username = username.trim().to_string();
    let ip = client_ip(&req);
    let mut actor = Actor {
        name: username.clone(),
        source: ip.to_string(),
    };
    // `alice`, `EXAMPLE\alice` and `alice@example.com` share one lockout budget.
    let account = crate::auth::throttle_account(&username);
    let delay = match state.throttle.check(&account, ip) {
        Verdict::Locked { for_, first } => {
            state.metrics.signin_failures.inc();
            if first {
                let a = actor.clone();
                state
                    .store
                    .call(move |s| admin::audit(s, &a, "api.signin.locked", LOCKED, false))
                    .await?;
            }
            let minutes = for_.as_secs().div_ceil(60).max(1);
            return Err(HttpError::Locked { minutes }.into());
        }
        Verdict::Allowed { delay } => delay,
    };
    let token = match super::signin::check_credentials(&state, &username, password, ip).await? {
        Credentials::Local(signed_in) => {
            if signed_in.factory {
                state.throttle.success(&account);
                return Err(HttpError::SetupRequired.into());
            }
            if signed_in.must_change {
                state.throttle.success(&account);
                return Err(HttpError::MustChangePassword.into());
            }
            state.sessions.sign_in(None, &username, false, false)
        }
        Credentials::Directory { name, console } => {
            let token = state.sessions.sign_in_directory(None, &name, console);
            actor.name = name;
            token
        }
        Credentials::Refused(detail) => {
            state.metrics.signin_failures.inc();
            let locked = state.throttle.failure(&account, ip);
            let a = actor.clone();
            state
                .store
                .call(move |s| {
                    let detail = if locked {
                        format!("API sign-in: {detail}; now locked out")
                    } else {
                        format!("API sign-in: {detail}")
                    };
                    admin::audit(s, &a, "api.signin.failed", &detail, false)
                })
                .await?;
            tokio::time::sleep(delay).await;
            return Err(HttpError::SignInFailed.into());
        }
    };
    state.throttle.success(&account);
    state
        .store
        .call(move |s| admin::audit(s, &actor, "api.token", "API token issued", true))
        .await?;
    let expires_in = u64::from(state.config.security.session_idle_minutes) * 60;
    Ok(json_ok(
        StatusCode::OK,
        &json!({"token": token, "token_type": "Bearer", "expires_in": expires_in}),
    ))
}

// ---- Users and sessions -----------------------------------------------------------------------

async fn users(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    let mut list: Vec<KnownUser> = state
        .store
        .call(|s| Ok::<_, HttpError>(s.list::<KnownUser>()?))
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    list.sort_by_key(|u| std::cmp::Reverse(u.last_sign_in));
    Ok(json_ok(StatusCode::OK, &list))
}

async fn sessions(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    let mut list: Vec<DesktopSession> = state
        .store
        .call(|s| Ok::<_, HttpError>(s.list::<DesktopSession>()?))
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    list.sort_by_key(|s| std::cmp::Reverse(s.started));
    Ok(json_ok(StatusCode::OK, &list))
}

// ---- Test login -------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ClientInput {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub device_type: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TestLoginRequest {
    pub username: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub client: ClientInput,
}

#[derive(Debug, Clone, Serialize)]
pub struct Named {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssignmentView {
    /// 1-based; `None` when "everyone else" matched.
    pub row: Option<usize>,
    pub otherwise: bool,
    pub group: Option<String>,
    pub location_id: Option<String>,
    pub role_id: String,
    pub policy_id: String,
}

/// What test login found, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct TestLoginReport {
    pub username: String,
    pub client: ClientInput,
    pub found: bool,
    pub problem: Option<Problem>,
    pub server: Option<Named>,
    pub display_name: String,
    pub groups: Vec<String>,
    pub group_dns: Vec<String>,
    pub location: Option<Named>,
    pub assignment: Option<AssignmentView>,
    pub role: Option<Role>,
    pub policy: Option<Policy>,
    pub desktops: Vec<OfferedDesktop>,
    pub notices: Vec<String>,
}

/// A broker refusal as the report shows it. Unlike the sign-in page, test login names an
/// unknown user as such: the administrator asking is allowed to know.
fn problem_of(e: BrokerError) -> Problem {
    let message = e.to_string();
    let code = match e {
        BrokerError::UnknownUser(_) => "unknown_user",
        other => HttpError::Broker(other).code(),
    };
    Problem {
        code: code.to_string(),
        message,
    }
}

/// Runs the sign-in decision for a user name without a password and lists the desktops the
/// user would be offered. Nothing is assigned and nothing is remembered.
async fn server_name_of(state: &AppState, server_id: &str) -> Result<String, HttpError> {
    let id = server_id.to_string();
    state
        .store
        .call(move |s| {
            Ok::<_, HttpError>(
                s.get::<AuthServer>(&id)?
                    .map_or_else(|| id.clone(), |a| a.name),
            )
        })
        .await
}

pub async fn run_test_login(
    state: &AppState,
    request: TestLoginRequest,
    fallback_address: IpAddr,
) -> Result<TestLoginReport, HttpError> {
    let address = match request.client.address.as_deref().map(str::trim) {
        None | Some("") => fallback_address,
        Some(a) => a.parse::<IpAddr>().map_err(|_| {
            invalid(
                "test login",
                vec![FieldError::new(
                    "client.address",
                    format!("`{a}` is not an IP address"),
                )],
            )
        })?,
    };
    let username = request.username.trim().to_string();
    if username.is_empty() {
        return Err(invalid(
            "test login",
            vec![FieldError::new("username", "give a user name")],
        ));
    }
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let facts = ClientFacts {
        address,
        name: nonempty(&request.client.name),
        device_type: nonempty(&request.client.device_type),
        os: nonempty(&request.client.os),
    };
    let client = ClientInput {
        address: Some(address.to_string()),
        name: facts.name.clone(),
        device_type: facts.device_type.clone(),
        os: facts.os.clone(),
    };
    let mut report = TestLoginReport {
        username: username.clone(),
        client,
        found: false,
        problem: None,
        server: None,
        display_name: String::new(),
        groups: Vec::new(),
        group_dns: Vec::new(),
        location: None,
        assignment: None,
        role: None,
        policy: None,
        desktops: Vec::new(),
        notices: Vec::new(),
    };
    let domain = request
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let decision = match state.broker.look_up(&username, domain, &facts).await {
        Ok(d) => d,
        Err(BrokerError::Store(e)) => return Err(e.into()),
        Err(e) => {
            report.found = matches!(e, BrokerError::NoAccess | BrokerError::Missing { .. });
            if report.found
                && let Ok(who) = state.broker.identify(&username, domain, &facts).await
            {
                // Found but given nothing: still say who and where, so the table can be fixed.
                report.username = who.user.username.clone();
                report.display_name = who.display_name;
                report.groups = who.groups;
                report.group_dns = who.group_dns;
                report.location = Some(Named {
                    id: who.location_id,
                    name: who.location_name,
                });
                report.server = Some(Named {
                    name: server_name_of(state, &who.user.server_id).await?,
                    id: who.user.server_id,
                });
            }
            report.problem = Some(problem_of(e));
            return Ok(report);
        }
    };
    let server_id = decision.user.server_id.clone();
    let (server_name, table) = state
        .store
        .call(move |s| {
            let name = s
                .get::<AuthServer>(&server_id)?
                .map_or_else(|| server_id.clone(), |a| a.name);
            let table = s.get::<AssignmentTable>(&server_id)?.unwrap_or_default();
            Ok::<_, HttpError>((name, table))
        })
        .await?;
    report.found = true;
    report.server = Some(Named {
        id: decision.user.server_id.clone(),
        name: server_name,
    });
    report.username = decision.user.username.clone();
    report.display_name = decision.display_name.clone();
    report.groups = decision.groups.clone();
    report.group_dns = decision.group_dns.clone();
    report.location = Some(Named {
        id: decision.location_id.clone(),
        name: decision.location_name.clone(),
    });
    report.assignment = Some(match &decision.matched_row {
        MatchedRow::Row(i) => {
            let row = table.rows.get(*i);
            AssignmentView {
                row: Some(i + 1),
                otherwise: false,
                group: row.and_then(|r| r.group.clone()),
                location_id: row.and_then(|r| r.location_id.clone()),
                role_id: decision.role.id.clone(),
                policy_id: decision.policy.id.clone(),
            }
        }
        MatchedRow::Otherwise => AssignmentView {
            row: None,
            otherwise: true,
            group: None,
            location_id: None,
            role_id: decision.role.id.clone(),
            policy_id: decision.policy.id.clone(),
        },
    });
    report.role = Some(decision.role.clone());
    report.policy = Some(decision.policy.clone());
    match state.broker.offer(&decision).await {
        Ok(offer) => {
            report.desktops = offer.desktops;
            report.notices = offer.notices;
        }
        Err(BrokerError::Store(e)) => return Err(e.into()),
        Err(e) => report.problem = Some(problem_of(e)),
    }
    Ok(report)
}

async fn test_login(state: web::Data<AppState>, who: AdminToken, body: web::Bytes) -> ApiResult {
    let request: TestLoginRequest = from_json("test login", &parse_body(&body)?)?;
    let report = run_test_login(&state, request, who.ip).await?;
    let (actor, detail) = (who.actor(), format!("test login for `{}`", report.username));
    state
        .store
        .call(move |s| admin::audit(s, &actor, "user.test_login", detail, true))
        .await?;
    Ok(json_ok(StatusCode::OK, &report))
}

// ---- Desktop import ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct CsvBody {
    csv: String,
}

/// Imports static desktops from CSV text: every line, or none (each bad line is named).
pub fn import_csv(s: &Store, actor: &Actor, text: &str) -> Result<Vec<Desktop>, HttpError> {
    let _one_at_a_time = resource::config_write_lock();
    let existing: Vec<String> = s
        .list::<Desktop>()?
        .into_iter()
        .map(|(_, d)| d.name)
        .collect();
    let inputs = match crate::model::desktop::parse_csv(text, existing.iter().map(String::as_str)) {
        Ok(inputs) => inputs,
        Err(e @ DesktopError::Csv { .. }) => {
            let DesktopError::Csv { errors, .. } = &e else {
                return Err(HttpError::BadRequest(e.to_string()));
            };
            let fields = errors
                .iter()
                .map(|l| FieldError::new(format!("line {}", l.line), l.reason.clone()))
                .collect();
            return Err(HttpError::Invalid {
                summary: format!("The file was not imported: {e}"),
                fields,
            });
        }
        Err(DesktopError::Invalid(fields)) => return Err(invalid("desktop file", fields)),
    };
    let now = chrono::Utc::now();
    let desktops: Vec<Desktop> = inputs
        .into_iter()
        .map(|i| Desktop::from_input(i, now))
        .collect();
    s.transact(&[Desktop::TREE], |tx| {
        for d in &desktops {
            tx.put::<Desktop, ()>(&d.id, d)?;
        }
        Ok(())
    })
    .map_err(|e| match e {
        crate::store::TxError::Store(e) => HttpError::from(e),
        _ => HttpError::Conflict("The import met a concurrent change: send it again.".into()),
    })?;
    admin::audit(
        s,
        actor,
        "desktop.imported",
        format!("{} desktop(s) imported from CSV", desktops.len()),
        true,
    )?;
    Ok(desktops)
}

async fn import_desktops(
    state: web::Data<AppState>,
    who: AdminToken,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = if is_json {
        from_json::<CsvBody>("import", &parse_body(&body)?)?.csv
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| HttpError::BadRequest("The CSV file is not UTF-8 text.".into()))?
    };
    let actor = who.actor();
    let desktops = state
        .store
        .call(move |s| import_csv(s, &actor, &text))
        .await?;
    state.broker.invalidate_membership();
    Ok(json_ok(
        StatusCode::CREATED,
        &json!({"imported": desktops.len(), "desktops": desktops}),
    ))
}

// ---- Authentication server checks -------------------------------------------------------------

async fn stored_server(state: &AppState, id: String) -> Result<AuthServer, HttpError> {
    state
        .store
        .call(move |s| {
            s.get::<AuthServer>(&id)?.ok_or(HttpError::NoSuch {
                kind: "authentication server",
                id,
            })
        })
        .await
}

async fn test_connection(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let server = stored_server(&state, path.into_inner()).await?;
    let report = LdapDirectory::new(server).test_connection().await;
    Ok(json_ok(
        StatusCode::OK,
        &json!({"ok": report.ok(), "steps": report.steps, "warnings": report.warnings}),
    ))
}

/// The groups an authentication server has, with their DNs (for the assignment pages).
pub async fn server_groups(state: &AppState, id: String) -> Result<Vec<DirectoryGroup>, HttpError> {
    let server = stored_server(state, id).await?;
    Ok(LdapDirectory::new(server).group_entries().await?)
}

/// The group names, each once: the shape scripts have read since before DNs were listed.
async fn groups(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let server = stored_server(&state, path.into_inner()).await?;
    let names = LdapDirectory::new(server).groups().await?;
    Ok(json_ok(StatusCode::OK, &names))
}

async fn group_dns(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let groups = server_groups(&state, path.into_inner()).await?;
    Ok(json_ok(StatusCode::OK, &groups))
}

// ---- Assignment tables ------------------------------------------------------------------------

#[derive(Serialize)]
struct ServerAssignments {
    server_id: String,
    server_name: String,
    rows: Vec<crate::model::policy::AssignmentRow>,
    otherwise: Option<(String, String)>,
}

async fn assignments(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    let list = state
        .store
        .call(|s| {
            let mut out = Vec::new();
            for server in resource::list_all::<AuthServer>(s)? {
                let table = s.get::<AssignmentTable>(&server.id)?.unwrap_or_default();
                out.push(ServerAssignments {
                    server_id: server.id,
                    server_name: server.name,
                    rows: table.rows,
                    otherwise: table.otherwise,
                });
            }
            Ok::<_, HttpError>(out)
        })
        .await?;
    Ok(json_ok(StatusCode::OK, &list))
}

async fn assignment_table(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let id = path.into_inner();
    let table = state
        .store
        .call(move |s| {
            if s.get::<AuthServer>(&id)?.is_none() {
                return Err(HttpError::NoSuch {
                    kind: "authentication server",
                    id,
                });
            }
            Ok(s.get::<AssignmentTable>(&id)?.unwrap_or_default())
        })
        .await?;
    Ok(json_ok(StatusCode::OK, &table))
}

/// Validates and saves one server's assignment table; writes the audit line.
pub fn save_assignments(
    s: &Store,
    actor: &Actor,
    server_id: &str,
    value: &Value,
) -> Result<AssignmentTable, HttpError> {
    let _one_at_a_time = resource::config_write_lock();
    let server = s
        .get::<AuthServer>(server_id)?
        .ok_or_else(|| HttpError::NoSuch {
            kind: "authentication server",
            id: server_id.to_string(),
        })?;
    let table: AssignmentTable = from_json("assignment table", value)?;
    let errors = table.validate(|kind, id| resource::exists(s, kind, id));
    if !errors.is_empty() {
        return Err(invalid("assignment table", errors));
    }
    s.put(server_id, &table)?;
    admin::audit(
        s,
        actor,
        "assignments.updated",
        format!(
            "assignments of authentication server `{}` ({server_id}): {} row(s)",
            server.name,
            table.rows.len()
        ),
        true,
    )?;
    Ok(table)
}

async fn put_assignment_table(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let value = parse_body(&body)?;
    let (actor, id) = (who.actor(), path.into_inner());
    let table = state
        .store
        .call(move |s| save_assignments(s, &actor, &id, &value))
        .await?;
    Ok(json_ok(StatusCode::OK, &table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_endpoint_and_nothing_else() {
        let doc = document();
        let endpoints = documented_endpoints();
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = 0;
        for (path, ops) in paths {
            for method in ops.as_object().expect("ops").keys() {
                documented += 1;
                assert!(
                    endpoints
                        .iter()
                        .any(|e| &e.path == path && e.method.as_str().to_lowercase() == *method),
                    "{method} {path} is documented but not served"
                );
            }
        }
        assert_eq!(documented, endpoints.len(), "each endpoint once");
        for e in &endpoints {
            assert!(
                paths[&e.path][e.method.as_str().to_lowercase()].is_object(),
                "{} {}",
                e.method,
                e.path
            );
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(
                schemas.contains_key(&name),
                "{name} is referenced, not defined"
            );
        }
    }

    #[test]
    fn the_issue_s_paths_are_all_there() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "auth-servers",
            "locations",
            "roles",
            "protocol-plans",
            "power-plans",
            "release-plans",
            "policies",
            "pools",
            "desktops",
            "gateways",
        ] {
            for path in [format!("/api/v1/{p}"), format!("/api/v1/{p}/{{id}}")] {
                assert!(paths.contains_key(&path), "{path}");
            }
        }
        for path in [
            "/api/v1/tokens",
            "/api/v1/users",
            "/api/v1/sessions",
            "/api/v1/test-login",
            "/api/v1/desktops/import",
            "/api/v1/assignments/{server_id}",
            "/api/v1/auth-servers/{id}/groups",
            "/api/v1/auth-servers/{id}/group-dns",
            "/api/v1/openapi.json",
            "/api/v1/gateways/{id}/token",
            "/api/v1/gateway-reports",
            "/api/v1/gateway/key",
            "/api/v1/gateway/session-ends",
            "/api/v1/gateway/report",
            "/api/v1/jobs",
            "/api/v1/jobs/{name}",
            "/api/v1/jobs/{name}/run",
            "/api/v1/timers",
            "/api/v1/pools/{id}/stats",
            "/api/v1/agent/events",
            "/api/v1/desktops/{id}/agent-token",
            "/api/v1/desktops/{id}/history",
            "/api/v1/client/desktops/{id}/disconnect",
            "/api/v1/client/desktops/{id}/logout",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
    }

    #[test]
    fn the_report_schema_matches_the_report() {
        let report = TestLoginReport {
            username: "u".into(),
            client: ClientInput::default(),
            found: false,
            problem: None,
            server: None,
            display_name: String::new(),
            groups: vec![],
            group_dns: vec![],
            location: None,
            assignment: None,
            role: None,
            policy: None,
            desktops: vec![],
            notices: vec![],
        };
        let served = serde_json::to_value(&report).expect("json");
        let schemas: Vec<(&str, Value)> = own_schemas();
        let (_, schema) = schemas
            .iter()
            .find(|(n, _)| *n == "TestLoginReport")
            .expect("schema");
        let mut a: Vec<&String> = served.as_object().expect("o").keys().collect();
        let mut b: Vec<&String> = schema["properties"]
            .as_object()
            .expect("p")
            .keys()
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
