//! Standalone gateways: Setup > Gateways in the console and `/api/v1/gateways` in the admin
//! API (the shared resource shape, plus the token that is shown once), and the API gateways
//! themselves call, `/api/v1/gateway/…`: the broker's public key, the session-end notices
//! (long-polled), and the report of their open tunnels, which the console shows beside the
//! built-in gateway's.
//!
//! A gateway authenticates with its own token (`Authorization: Bearer`), checked against the
//! stored hash; an administrator's token is not a gateway's. Tokens are made here, shown once
//! and never logged. Each gateway's last report is kept in the store, so a restarted broker
//! shows it, with its age, until the gateway reports again; a report older than 30 seconds is
//! marked stale. The licence's gateway limit is enforced when a gateway is created. No sled.

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::console_resources::{Said, Screen, form_page};
use super::forms::{self, Field, Kind, Values, field, helped};
use super::pages::{NoticeQuery, Page};
use super::resource::{
    self, AdminToken, ApiResult, Endpoint, Resource, from_json, invalid, json_ok, parse_body,
    schema,
};
use super::session::CsrfOnly;
use super::session::{Console, client_ip};
use super::{AppState, HttpError};
use crate::admin::{self, Actor};
use crate::gateway::TunnelReport;
use crate::gateway::registry::{LONG_POLL, ReportBody, SessionEndsAnswer};
use crate::model::FieldError;
use crate::model::gateway::{
    GatewayMethods, GatewayRecord, LastReport, age_text, issue_token, licence_refusal,
};
use crate::store::{Store, StoreError};

const BASE: &str = "/admin/setup/gateways";

/// The routes that differ from the shared resource shape (registered before it): the list
/// with the tunnels, creating (the token is shown), and a new token.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(BASE, web::get().to(list_page))
        .route(&format!("{BASE}/new"), web::post().to(create_submit))
        .route(
            &format!("{BASE}/{{id}}/token"),
            web::post().to(token_submit),
        );
}

// ---- The resource -----------------------------------------------------------------------------

impl Resource for GatewayRecord {
    type Input = GatewayRecord;
    const PATH: &'static str = "gateways";
    const KIND: &'static str = "gateway";
    const AUDIT: &'static str = "gateway";
    const SCHEMA: &'static str = "Gateway";

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: Self, id: &str, old: Option<&Self>) -> Self {
        input.id = id.to_string();
        input.name = input.name.trim().to_string();
        input.public_address = input.public_address.trim().to_string();
        input.internal_url = input.internal_url.trim().to_string();
        // The token is never the caller's to set on an update: only a new token changes it.
        if let Some(old) = old {
            input.token_hash = old.token_hash.clone();
        }
        input
    }
    fn check(&self, s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        let mut errors = self.validate();
        let name = self.name.to_lowercase();
        if !name.is_empty()
            && s.list::<GatewayRecord>()?
                .iter()
                .any(|(_, g)| g.id != self.id && g.name.to_lowercase() == name)
        {
            errors.push(FieldError::new(
                "name",
                format!("a gateway named `{}` already exists", self.name),
            ));
        }
        Ok(errors)
    }
    fn redact(&mut self) {
        self.token_hash.clear();
    }
    fn schema() -> Value {
        use schema::{described, object, string};
        object(
            &["id", "name", "public_address", "internal_url", "methods"],
            vec![
                (
                    "id",
                    described(
                        string(),
                        "Chosen by the server on create unless given; never changes.",
                    ),
                ),
                ("name", string()),
                (
                    "public_address",
                    described(string(), "host[:port] clients connect to."),
                ),
                (
                    "internal_url",
                    described(
                        string(),
                        "Where the broker reaches the gateway: https://10.0.0.2:8443.",
                    ),
                ),
                ("methods", methods_schema()),
                (
                    "token_hash",
                    json!({"type": "string", "readOnly": true, "description":
                        "Always empty in answers. The token is shown once, when the gateway is \
                         created or given a new token (POST /api/v1/gateways/{id}/token)."}),
                ),
            ],
        )
    }
    fn input_schema() -> Option<(&'static str, Value)> {
        use schema::{object, string};
        Some((
            "GatewayInput",
            object(
                &["name", "public_address", "internal_url"],
                vec![
                    ("id", string()),
                    ("name", string()),
                    ("public_address", string()),
                    ("internal_url", string()),
                    ("methods", methods_schema()),
                ],
            ),
        ))
    }
}

fn methods_schema() -> Value {
    use schema::{boolean, described, object};
    described(
        object(
            &[],
            vec![
                ("tunnel", boolean()),
                ("forwarded_port", boolean()),
                ("broker_forwarding", boolean()),
            ],
        ),
        "Which ways of carrying connections the gateway offers; at least one.",
    )
}

impl Screen for GatewayRecord {
    const AREA: &'static str = "setup";
    const TITLE: &'static str = "Gateways";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "public_address",
                "Public address",
                Kind::Text,
                "host or host:port clients connect to (gateway.example.com:443).",
            ),
            helped(
                "internal_url",
                "Address the broker uses",
                Kind::Text,
                "The URL the broker reaches the gateway at (https://10.0.0.2:8443).",
            ),
            field("methods.tunnel", "Offers WebSocket tunnels", Kind::Check),
            field(
                "methods.forwarded_port",
                "Offers forwarded ports",
                Kind::Check,
            ),
            helped(
                "methods.broker_forwarding",
                "Opens forwarded ports for the broker",
                Kind::Check,
                "The broker asks the gateway for a forwarded port at its internal address.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "public_address", "internal_url"]
    }
    fn blank() -> Value {
        json!({"name": "", "public_address": "", "internal_url": "",
            "methods": GatewayMethods::default()})
    }
    fn buttons() -> &'static [(&'static str, &'static str)] {
        &[("New token", "token")]
    }
}

/// Creates a gateway from a body (`id` optional) with a new token: one save, validated and
/// audited like every resource, refused when the licence allows no more than `max` gateways
/// (`None`: no limit) and that many are registered. Returns the stored gateway and the token,
/// for showing once.
pub fn create(
    s: &Store,
    actor: &Actor,
    mut value: Value,
    max: Option<u32>,
) -> Result<(GatewayRecord, String), HttpError> {
    // Counting and saving under one lock, so that two creations cannot both take the last
    // place the licence leaves.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(reason) = licence_refusal(max, s.count::<GatewayRecord>()?) {
        return Err(HttpError::LicenceLimit(reason));
    }
    let (token, hash) = issue_token();
    if let Some(map) = value.as_object_mut() {
        map.insert("token_hash".into(), Value::String(hash));
    }
    let saved = resource::save::<GatewayRecord>(s, actor, None, value)?;
    // A report kept under this id (a gateway deleted and made again) is not this one's.
    s.delete::<LastReport>(&saved.id)?;
    Ok((saved, token))
}

/// Gives a gateway a new token; the old one stops working at once. Audited.
pub fn renew_token(
    s: &Store,
    actor: &Actor,
    id: &str,
) -> Result<(GatewayRecord, String), HttpError> {
    let _one_at_a_time = resource::config_write_lock();
    let mut gateway = s
        .get::<GatewayRecord>(id)?
        .ok_or_else(|| HttpError::NoSuch {
            kind: GatewayRecord::KIND,
            id: id.to_string(),
        })?;
    let (token, hash) = issue_token();
    gateway.token_hash = hash;
    s.put(id, &gateway)?;
    admin::audit(
        s,
        actor,
        "gateway.new_token",
        format!(
            "gateway `{}` ({id}): a new token; the previous one no longer works",
            gateway.name
        ),
        true,
    )?;
    Ok((gateway, token))
}

// ---- Reports ----------------------------------------------------------------------------------

/// One gateway and what it last reported; the built-in gateway has no id.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStatus {
    pub id: Option<String>,
    pub name: String,
    /// When its last report came (now, for the built-in gateway).
    pub received: Option<DateTime<Utc>>,
    /// Seconds since that report (0 for the built-in gateway; none before the first).
    pub age_seconds: Option<i64>,
    /// The last report is older than 30 seconds: the tunnels are as last seen.
    pub stale: bool,
    /// It reported within the last 30 seconds.
    pub connected: bool,
    pub tunnels: Vec<TunnelReport>,
}

/// The built-in gateway first, then every registered gateway in name order, each with its
/// last report (kept in the store, so they survive a restart of the broker).
pub(super) async fn statuses(
    state: &AppState,
) -> Result<Vec<(Option<GatewayRecord>, GatewayStatus)>, HttpError> {
    let (gateways, mut reports) = state
        .store
        .call(|s| {
            let gateways = resource::list_all::<GatewayRecord>(s)?;
            let reports: std::collections::HashMap<String, LastReport> =
                s.list::<LastReport>()?.into_iter().collect();
            // Reports of deleted gateways are dropped.
            for id in reports.keys() {
                if !gateways.iter().any(|g| &g.id == id) {
                    s.delete::<LastReport>(id)?;
                }
            }
            Ok::<_, HttpError>((gateways, reports))
        })
        .await?;
    let now = Utc::now();
    let mut out = vec![(
        None,
        GatewayStatus {
            id: None,
            name: "Built-in".into(),
            received: Some(now),
            age_seconds: Some(0),
            stale: false,
            connected: true,
            tunnels: state.gateway.report(),
        },
    )];
    for g in gateways {
        let last = reports.remove(&g.id);
        let stale = last.as_ref().is_some_and(|r| r.is_stale(now));
        let status = GatewayStatus {
            id: Some(g.id.clone()),
            name: g.name.clone(),
            received: last.as_ref().map(|r| r.received),
            age_seconds: last.as_ref().map(|r| r.age_seconds(now)),
            stale,
            connected: last.is_some() && !stale,
            tunnels: last.map(|r| r.tunnels).unwrap_or_default(),
        };
        out.push((Some(g), status));
    }
    Ok(out)
}

// ---- The admin API ----------------------------------------------------------------------------

/// `/api/v1/gateways` (the shared shape, with its own create), a new token, every gateway's
/// last report, and the API gateways call.
pub fn endpoints() -> Vec<Endpoint> {
    use schema::{array, reference};
    let json = "application/json";
    let mut all: Vec<Endpoint> = resource::endpoints::<GatewayRecord>()
        .into_iter()
        .map(|mut e| {
            if e.method == Method::POST {
                e.summary =
                    "Create a gateway: the answer holds its token, shown only this once".into();
                e.response = (201, Some(reference("GatewayCreated")));
                e.route = || web::post().to(create_api);
            }
            e
        })
        .collect();
    let e = super::api::endpoint;
    all.extend([
        e(
            Method::POST,
            "/api/v1/gateways/{id}/token",
            "gateways",
            "Give a gateway a new token (shown only this once); the old one stops working",
            vec![],
            (200, Some(reference("GatewayToken"))),
            true,
            || web::post().to(token_api),
        ),
        e(
            Method::GET,
            "/api/v1/gateway-reports",
            "gateways",
            "Every gateway's open tunnels as last reported, the built-in gateway first",
            vec![],
            (200, Some(array(reference("GatewayStatus")))),
            true,
            || web::get().to(reports_api),
        ),
        e(
            Method::GET,
            "/api/v1/gateway/key",
            "gateway",
            "The broker's public key (PEM), which gateways check tickets with",
            vec![],
            (
                200,
                Some(json!({"type": "string", "contentMediaType": "application/x-pem-file"})),
            ),
            false,
            || web::get().to(key),
        ),
        e(
            Method::GET,
            "/api/v1/gateway/session-ends",
            "gateway",
            "Session-end notices after `after` (query; 0 for all kept), waiting up to `wait` \
             seconds (query; 0-25, default 25) when there is none yet (gateway token)",
            vec![],
            (200, Some(reference("SessionEnds"))),
            false,
            || web::get().to(session_ends),
        ),
        e(
            Method::POST,
            "/api/v1/gateway/report",
            "gateway",
            "Report the gateway's open tunnels (gateway token)",
            vec![(json, reference("GatewayReport"))],
            (204, None),
            false,
            || web::post().to(report),
        ),
    ]);
    all
}

/// The schemas the gateway endpoints name.
pub fn schemas() -> Vec<(&'static str, Value)> {
    use schema::{
        array, boolean, date_time, described, integer, nullable, object, one_of, reference, string,
    };
    let tunnel = object(
        &[
            "id",
            "kind",
            "session",
            "user",
            "target",
            "client",
            "opened",
            "bytes_up",
            "bytes_down",
        ],
        vec![
            ("id", integer()),
            ("kind", one_of(&["tunnel", "forwarded_port", "forwarded"])),
            (
                "port",
                described(integer(), "The forwarded port (forwarded kinds only)."),
            ),
            ("session", string()),
            ("user", string()),
            ("target", described(string(), "host:port of the desktop.")),
            ("client", described(string(), "The client's IP address.")),
            ("opened", date_time()),
            (
                "bytes_up",
                described(integer(), "Bytes from the client to the desktop."),
            ),
            (
                "bytes_down",
                described(integer(), "Bytes from the desktop to the client."),
            ),
        ],
    );
    let mut all = resource::schemas::<GatewayRecord>();
    all.extend([
        ("TunnelReport", tunnel),
        (
            "GatewayCreated",
            object(
                &["gateway", "token"],
                vec![
                    ("gateway", reference("Gateway")),
                    (
                        "token",
                        described(
                            string(),
                            "The gateway's token: shown only here. Give it to `gatehouse \
                             gateway --gateway-token-file`.",
                        ),
                    ),
                ],
            ),
        ),
        (
            "GatewayToken",
            object(
                &["id", "token"],
                vec![("id", string()), ("token", string())],
            ),
        ),
        (
            "GatewayStatus",
            object(
                &[
                    "id",
                    "name",
                    "received",
                    "age_seconds",
                    "stale",
                    "connected",
                    "tunnels",
                ],
                vec![
                    (
                        "id",
                        described(nullable(string()), "null for the built-in gateway."),
                    ),
                    ("name", string()),
                    (
                        "received",
                        described(
                            nullable(date_time()),
                            "When the last report came; null before the first. Kept across \
                             broker restarts.",
                        ),
                    ),
                    (
                        "age_seconds",
                        described(nullable(integer()), "Seconds since the last report."),
                    ),
                    (
                        "stale",
                        described(
                            boolean(),
                            "The last report is older than 30 seconds: the tunnels are as \
                             last seen.",
                        ),
                    ),
                    (
                        "connected",
                        described(boolean(), "It reported within the last 30 seconds."),
                    ),
                    ("tunnels", array(reference("TunnelReport"))),
                ],
            ),
        ),
        (
            "GatewayReport",
            object(
                &["tunnels"],
                vec![("tunnels", array(reference("TunnelReport")))],
            ),
        ),
        (
            "SessionEnds",
            object(
                &["latest", "ended"],
                vec![
                    (
                        "latest",
                        described(
                            integer(),
                            "The newest notice's number: ask for what comes after it next. \
                             Numbers are kept across broker restarts. When `after` was ahead \
                             of it (another broker, or a store put back from an old copy), \
                             `ended` holds every notice kept.",
                        ),
                    ),
                    (
                        "ended",
                        array(object(
                            &["seq", "session", "refuse_until"],
                            vec![
                                ("seq", integer()),
                                ("session", string()),
                                (
                                    "refuse_until",
                                    described(
                                        integer(),
                                        "Unix seconds: refuse the session's tickets until then.",
                                    ),
                                ),
                            ],
                        )),
                    ),
                ],
            ),
        ),
    ]);
    all
}

async fn create_api(state: web::Data<AppState>, who: AdminToken, body: web::Bytes) -> ApiResult {
    let value = parse_body(&body)?;
    let actor = who.actor();
    let max = state.licence_state().await?.max_gateways();
    let (mut saved, token) = state
        .store
        .call(move |s| create(s, &actor, value, max))
        .await?;
    saved.redact();
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/gateways/{}", saved.id)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"gateway": saved, "token": token})))
}

async fn token_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let (actor, id) = (who.actor(), path.into_inner());
    let (gateway, token) = state
        .store
        .call(move |s| renew_token(s, &actor, &id))
        .await?;
    Ok(json_ok(
        StatusCode::OK,
        &json!({"id": gateway.id, "token": token}),
    ))
}

async fn reports_api(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    let list: Vec<GatewayStatus> = statuses(&state)
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(json_ok(StatusCode::OK, &list))
}

// ---- The API gateways call --------------------------------------------------------------------

/// The registered gateway whose token the request carries.
async fn calling_gateway(state: &AppState, req: &HttpRequest) -> Result<GatewayRecord, HttpError> {
    let Some(token) = super::session::bearer(req).map(str::to_string) else {
        return Err(HttpError::GatewayTokenRequired);
    };
    let found = state
        .store
        .call(move |s| {
            Ok::<_, HttpError>(
                s.list::<GatewayRecord>()?
                    .into_iter()
                    .map(|(_, g)| g)
                    .find(|g| g.token_matches(&token)),
            )
        })
        .await?;
    found.ok_or_else(|| {
        tracing::warn!(client = %client_ip(req), path = req.path(), "gateway call refused: no gateway has that token");
        HttpError::GatewayTokenRequired
    })
}

async fn key(state: web::Data<AppState>) -> ApiResult {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let pem = state
        .broker
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| HttpError::Render(format!("the broker key cannot be written as PEM: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pem))
}

#[derive(Debug, Default, Deserialize)]
struct EndsQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    wait: Option<String>,
}

/// `after` and `wait` from the query, refused naming the parameter.
fn ends_query(query: &str) -> Result<(u64, u64), HttpError> {
    let q: EndsQuery = serde_urlencoded::from_str(query).map_err(|e| {
        invalid(
            "request",
            vec![FieldError::new(
                "query",
                format!("the query cannot be read: {e}"),
            )],
        )
    })?;
    let mut errors = Vec::new();
    let after = match q.after.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "after",
                format!(
                    "`{text}` is not a notice number: send the `latest` of the last answer, or 0"
                ),
            ));
            0
        }),
    };
    let most = LONG_POLL.as_secs();
    let wait = match q.wait.as_deref().map(str::trim) {
        None | Some("") => most,
        Some(text) => match text.parse::<u64>() {
            Ok(w) if w <= most => w,
            _ => {
                errors.push(FieldError::new(
                    "wait",
                    format!("`{text}` is not a number of seconds from 0 to {most}"),
                ));
                0
            }
        },
    };
    if errors.is_empty() {
        Ok((after, wait))
    } else {
        Err(invalid("request", errors))
    }
}

async fn session_ends(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    calling_gateway(&state, &req).await?;
    let (after, wait) = ends_query(req.query_string())?;
    let ends = state.broker.session_ends();
    let mut changes = ends.subscribe();
    let latest = *changes.borrow_and_update();
    let answer = |latest: u64, after: u64| {
        let ended = ends.since(after);
        let latest = ended.last().map_or(latest, |e| e.seq.max(latest));
        SessionEndsAnswer { latest, ended }
    };
    if after > latest {
        // Numbers from before the broker restarted: everything kept, from the start.
        return Ok(json_ok(StatusCode::OK, &answer(latest, 0)));
    }
    let now = answer(latest, after);
    if !now.ended.is_empty() || wait == 0 {
        return Ok(json_ok(StatusCode::OK, &now));
    }
    // Nothing new: wait for a notice (or the time), then answer what there is.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(wait), changes.changed()).await;
    let latest = *changes.borrow();
    Ok(json_ok(StatusCode::OK, &answer(latest, after)))
}

async fn report(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> ApiResult {
    let gateway = calling_gateway(&state, &req).await?;
    let ReportBody { tunnels } = from_json("gateway report", &parse_body(&body)?)?;
    tracing::debug!(gateway = %gateway.id, tunnels = tunnels.len(), "gateway report");
    let report = LastReport {
        received: Utc::now(),
        tunnels,
    };
    state
        .store
        .call(move |s| Ok::<_, HttpError>(s.put(&gateway.id, &report)?))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Console pages ----------------------------------------------------------------------------

/// A token just made, for the page that shows it once.
#[derive(Debug, Serialize)]
struct ShownToken {
    name: String,
    value: String,
    /// This console's address, for the command line.
    broker: String,
}

#[derive(Debug, Serialize)]
struct GatewayRow {
    name: String,
    edit: String,
    delete: String,
    public_address: String,
    internal_url: String,
    methods: String,
    last_report: String,
    tunnels: usize,
    bytes_in: String,
    bytes_out: String,
}

/// The "Last report" cell: live, never, connected (with the age) or stale (with the age).
fn last_report_text(registered: bool, status: &GatewayStatus) -> String {
    match (registered, status.received, status.age_seconds) {
        (false, _, _) => "live (this server)".to_string(),
        (true, Some(at), Some(age)) if status.stale => format!(
            "stale: not connected; last report {} ago ({})",
            age_text(age),
            when(at)
        ),
        (true, Some(at), Some(age)) => format!("connected, {} ago ({})", age_text(age), when(at)),
        (true, _, _) => "never: not connected yet".to_string(),
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn kind_text(t: &TunnelReport) -> String {
    match t.kind {
        crate::gateway::Kind::Tunnel => "tunnel".into(),
        crate::gateway::Kind::ForwardedPort(p) => format!("forwarded port {p}"),
        crate::gateway::Kind::Forwarded(p) => format!("via port {p}"),
    }
}

/// The list page, with a token shown once when one was just made.
async fn render_list(
    state: &AppState,
    who: &Console,
    token: Option<ShownToken>,
    notice: &str,
) -> Result<HttpResponse, HttpError> {
    let mut gateways = Vec::new();
    let mut tunnels: Vec<Vec<String>> = Vec::new();
    for (record, status) in statuses(state).await? {
        let (up, down) = status.tunnels.iter().fold((0u64, 0u64), |(u, d), t| {
            (u.saturating_add(t.bytes_up), d.saturating_add(t.bytes_down))
        });
        let last_report = last_report_text(record.is_some(), &status);
        let shown_name = if status.stale {
            format!("{} (stale report)", status.name)
        } else {
            status.name.clone()
        };
        for t in &status.tunnels {
            tunnels.push(vec![
                shown_name.clone(),
                t.user.clone(),
                t.target.clone(),
                t.client.to_string(),
                kind_text(t),
                when(t.opened),
                bytes(t.bytes_up),
                bytes(t.bytes_down),
            ]);
        }
        gateways.push(match record {
            None => GatewayRow {
                name: status.name,
                edit: String::new(),
                delete: String::new(),
                public_address: "(this server)".into(),
                internal_url: "(this server)".into(),
                methods: "tunnel, forwarded port".into(),
                last_report,
                tunnels: status.tunnels.len(),
                bytes_in: bytes(up),
                bytes_out: bytes(down),
            },
            Some(g) => GatewayRow {
                edit: format!("{BASE}/{}", g.id),
                delete: format!("{BASE}/{}/delete", g.id),
                name: g.name,
                public_address: g.public_address,
                internal_url: g.internal_url,
                methods: g.methods.describe(),
                last_report,
                tunnels: status.tunnels.len(),
                bytes_in: bytes(up),
                bytes_out: bytes(down),
            },
        });
    }
    let mut page = Page::new(
        state,
        Some(who),
        "gateways.html",
        GatewayRecord::TITLE,
        BASE,
    )
    .await?;
    page.set("gateways", &gateways)
        .set("tunnels", &tunnels)
        .set("notice", notice);
    if let Some(token) = &token {
        page.set("token", token);
    }
    page.render(state)
}

async fn list_page(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, HttpError> {
    let notice = query.sentence(&[("saved", "Saved."), ("deleted", "Deleted.")]);
    render_list(&state, &who, None, notice).await
}

fn broker_address(req: &HttpRequest) -> String {
    format!("https://{}", req.connection_info().host())
}

async fn create_submit(
    state: web::Data<AppState>,
    who: Console,
    req: HttpRequest,
    form: web::Form<Values>,
) -> Result<HttpResponse, HttpError> {
    let mut form = form.into_inner();
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let fields = GatewayRecord::fields();
    forms::normalize(&fields, &mut form);
    let created = match forms::form_value(&fields, &form) {
        Ok(value) => {
            let actor = who.actor();
            let max = state.licence_state().await?.max_gateways();
            state
                .store
                .call(move |s| Ok::<_, HttpError>(create(s, &actor, value, max)))
                .await?
        }
        Err(errors) => Err(invalid(GatewayRecord::KIND, errors)),
    };
    match created {
        Ok((gateway, token)) => {
            let shown = ShownToken {
                name: gateway.name,
                value: token,
                broker: broker_address(&req),
            };
            render_list(&state, &who, Some(shown), "Created.").await
        }
        Err(HttpError::Invalid { summary, fields }) => {
            let said = Said::Refused(StatusCode::BAD_REQUEST, summary);
            form_page::<GatewayRecord>(&state, &who, None, Some(form), fields, said).await
        }
        Err(
            e @ (HttpError::Conflict(_) | HttpError::MalformedJson(_) | HttpError::LicenceLimit(_)),
        ) => {
            use actix_web::ResponseError;
            let said = Said::Refused(e.status_code(), e.to_string());
            form_page::<GatewayRecord>(&state, &who, None, Some(form), Vec::new(), said).await
        }
        Err(e) => Err(e),
    }
}

async fn token_submit(
    state: web::Data<AppState>,
    who: Console,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let (actor, id) = (who.actor(), path.into_inner());
    let (gateway, token) = state
        .store
        .call(move |s| renew_token(s, &actor, &id))
        .await?;
    let shown = ShownToken {
        name: gateway.name,
        value: token,
        broker: broker_address(&req),
    };
    render_list(
        &state,
        &who,
        Some(shown),
        "A new token was made; the previous one no longer works.",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_lists_what_is_served() {
        let (_, hash) = issue_token();
        let mut g = GatewayRecord {
            id: "gw".into(),
            name: "DMZ".into(),
            public_address: "gw.example.com".into(),
            internal_url: "https://10.0.0.2:8443".into(),
            methods: GatewayMethods::default(),
            token_hash: hash,
        };
        g.redact();
        assert!(g.token_hash.is_empty());
        let served = serde_json::to_value(&g).expect("json");
        let mut a: Vec<&String> = served.as_object().expect("object").keys().collect();
        let schema = GatewayRecord::schema();
        let mut b: Vec<&String> = schema["properties"]
            .as_object()
            .expect("props")
            .keys()
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let methods = served["methods"].as_object().expect("methods");
        assert_eq!(
            methods.len(),
            methods_schema()["properties"].as_object().expect("p").len()
        );
    }

    #[test]
    fn an_update_keeps_the_stored_token_whatever_the_body_says() {
        let (_, hash) = issue_token();
        let old = GatewayRecord {
            id: "gw".into(),
            name: "DMZ".into(),
            public_address: "gw.example.com".into(),
            internal_url: "https://10.0.0.2:8443".into(),
            methods: GatewayMethods::default(),
            token_hash: hash.clone(),
        };
        let mut input = old.clone();
        input.token_hash = "0".repeat(64);
        input.name = " Renamed ".into();
        let built = GatewayRecord::build(input, "gw", Some(&old));
        assert_eq!(built.token_hash, hash);
        assert_eq!(built.name, "Renamed");
    }

    #[test]
    fn session_end_queries_are_read_or_refused_by_parameter() {
        assert_eq!(ends_query("").ok(), Some((0, LONG_POLL.as_secs())));
        assert_eq!(ends_query("after=7&wait=0").ok(), Some((7, 0)));
        let Err(HttpError::Invalid { fields, .. }) = ends_query("after=x&wait=99") else {
            panic!("accepted");
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["after", "wait"]);
    }

    #[test]
    fn a_report_shows_its_age_and_is_marked_stale_after_thirty_seconds() {
        let now = Utc::now();
        let status = |age: Option<i64>| {
            let received = age.map(|a| now - chrono::Duration::seconds(a));
            let report = received.map(|received| LastReport {
                received,
                tunnels: Vec::new(),
            });
            GatewayStatus {
                id: Some("gw".into()),
                name: "DMZ".into(),
                received,
                age_seconds: report.as_ref().map(|r| r.age_seconds(now)),
                stale: report.as_ref().is_some_and(|r| r.is_stale(now)),
                connected: report.as_ref().is_some_and(|r| !r.is_stale(now)),
                tunnels: Vec::new(),
            }
        };
        assert_eq!(
            last_report_text(true, &status(None)),
            "never: not connected yet"
        );
        let fresh = last_report_text(true, &status(Some(4)));
        assert!(fresh.starts_with("connected, 4 s ago ("), "{fresh}");
        let old = last_report_text(true, &status(Some(125)));
        assert!(
            old.starts_with("stale: not connected; last report 2 min ago ("),
            "{old}"
        );
        assert_eq!(
            last_report_text(false, &status(Some(0))),
            "live (this server)"
        );
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
