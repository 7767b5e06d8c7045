//! The one shape every configuration object of the admin API shares: list, get, create,
//! update and delete, with validation, referential checks, an audit line per change, and a
//! JSON schema for the OpenAPI document.
//!
//! A stored type becomes an API resource by implementing [`Resource`] (its path, how input is
//! turned into the stored record, what makes it invalid or undeletable, its schema); the
//! generic handlers and [`endpoints`] do the rest, so the routes served and the routes
//! documented come from the same declarations. Every save is one `store.put` (or one
//! transaction), after validation: a refused body leaves nothing behind.
//!
//! It must not hold business rules beyond "does this reference exist / is this in use": the
//! rules of each type are its `validate()` in `model`. It never names sled.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, dev::Payload, web};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{AppState, HttpError};
use crate::admin::{self, Actor, AdminError};
use crate::auth::DirectoryError;
use crate::licence::{Capability, LicenceState};
use crate::model::center::Center;
use crate::model::desktop::{Desktop, DesktopInput, name_key};
use crate::model::directory::AuthServer;
use crate::model::location::{ALL_LOCATION_NAME, Location};
use crate::model::plan::{DEFAULT_PLAN_ID, PowerPlan, ProtocolPlan, ReleasePlan};
use crate::model::policy::{AssignmentTable, Policy};
use crate::model::pool::Pool;
use crate::model::role::Role;
use crate::model::{FieldError, new_id};
use crate::store::{Record, Store, StoreError, TxError};

// ---- Errors as JSON ---------------------------------------------------------------------------

/// An [`HttpError`] answered as JSON (`{"error", "message"}`, plus `fields` for invalid
/// bodies): what every API handler returns.
#[derive(Debug)]
pub struct ApiError(pub HttpError);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }
    fn error_response(&self) -> HttpResponse {
        self.0.json_response()
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        ApiError(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(e.into())
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        ApiError(e.into())
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        ApiError(e.into())
    }
}

impl From<crate::broker::BrokerError> for ApiError {
    fn from(e: crate::broker::BrokerError) -> Self {
        ApiError(e.into())
    }
}

pub type ApiResult<T = HttpResponse> = Result<T, ApiError>;

/// An invalid body: every refused field with its reason.
pub fn invalid(what: &str, fields: Vec<FieldError>) -> HttpError {
    let joined = fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    HttpError::Invalid {
        summary: format!("The {what} was not saved: {joined}"),
        fields,
    }
}

// ---- Who is calling ---------------------------------------------------------------------------

/// An administrator's API token (`Authorization: Bearer …` from `POST /api/v1/tokens`). Tokens
/// are console sessions without a cookie: the same idle timeout, and ended with the others
/// when the password changes.
pub struct AdminToken {
    pub username: String,
    pub ip: IpAddr,
}

impl AdminToken {
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.username.clone(),
            source: self.ip.to_string(),
        }
    }

    fn from_request(req: &HttpRequest) -> Result<Self, ApiError> {
        let state = req
            .app_data::<web::Data<AppState>>()
            .ok_or_else(|| HttpError::Render("application state missing".into()))?;
        let token = super::session::bearer(req).ok_or(HttpError::TokenRequired)?;
        let session = state
            .sessions
            .get(token)
            .filter(|s| s.username.is_some())
            .ok_or(HttpError::TokenRequired)?;
        if session.factory {
            return Err(HttpError::SetupRequired.into());
        }
        if session.must_change {
            return Err(HttpError::MustChangePassword.into());
        }
        Ok(AdminToken {
            username: session.username.unwrap_or_default(),
            ip: super::session::client_ip(req),
        })
    }
}

impl FromRequest for AdminToken {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(AdminToken::from_request(req))
    }
}

// ---- JSON bodies ------------------------------------------------------------------------------

/// Reads a body as JSON; a malformed one is refused naming the problem and where it is.
pub fn parse_body(body: &[u8]) -> Result<Value, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(HttpError::MalformedJson(
            "the body is empty: send a JSON object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| HttpError::MalformedJson(e.to_string()))
}

/// Turns a JSON value into `T`; a field of the wrong type, a missing one or an unknown enum
/// value is refused naming the (top-level) field and the reason.
pub fn from_json<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, HttpError> {
    // Pretty-printed, each top-level field starts on its own line: the error's line says which
    // field it is in.
    let text =
        serde_json::to_string_pretty(value).map_err(|e| HttpError::MalformedJson(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| {
        let message = e.to_string();
        let reason = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(r, _)| r)
            .to_string();
        invalid(what, vec![FieldError::new(field_of(&e, &text), reason)])
    })
}

fn field_of(e: &serde_json::Error, text: &str) -> String {
    let message = e.to_string();
    for prefix in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some((_, rest)) = message.split_once(prefix)
            && let Some((field, _)) = rest.split_once('`')
        {
            return field.to_string();
        }
    }
    let mut field = String::new();
    for line in text.lines().take(e.line()) {
        if let Some(rest) = line.strip_prefix("  \"")
            && let Some((key, _)) = rest.split_once("\":")
        {
            field = key.to_string();
        }
    }
    if field.is_empty() {
        "body".into()
    } else {
        field
    }
}

/// An id chosen by the caller: short, and safe in a URL path.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > 64 {
        return Some("an id has 1 to 64 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some(format!(
            "`{id}` is not an id: use letters, digits, `-`, `_` and `.`"
        ));
    }
    None
}

// ---- The resource declaration -----------------------------------------------------------------

/// What the broker must be told after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Authentication servers changed: rebuild the directories.
    Directories,
    /// Pools or desktops changed: pool membership is stale.
    Membership,
}

/// A stored configuration object served under `/api/v1/{PATH}`.
pub trait Resource: Record + Serialize + Clone + Send + Sync + 'static {
    /// What a create or update body is read as.
    type Input: DeserializeOwned + Send + 'static;
    /// The path segment: `auth-servers`.
    const PATH: &'static str;
    /// In sentences: "authentication server".
    const KIND: &'static str;
    /// In audit actions: `auth_server` (`auth_server.created`).
    const AUDIT: &'static str;
    /// The name of its schema in the OpenAPI document.
    const SCHEMA: &'static str;
    const EFFECT: Effect = Effect::None;

    fn id(&self) -> &str;
    /// The name lists show and sort by.
    fn label(&self) -> &str;
    /// The record to store, from the input; the id is decided (`old` is the stored record on
    /// update).
    fn build(input: Self::Input, id: &str, old: Option<&Self>) -> Self;
    /// Keeps what the appliance's own runs write on the record (status, counts) as `current`
    /// has it: called in the write's transaction with the record as stored at that moment,
    /// which a run may have changed since the save read it.
    fn keep_current(&mut self, _current: &Self) {}
    /// Every problem with saving this record as the store stands.
    fn check(&self, s: &Store, old: Option<&Self>) -> Result<Vec<FieldError>, StoreError>;
    /// What the licence in force refuses in saving this record (`old` is the stored one).
    fn licence_problems(&self, _old: Option<&Self>, _licence: &LicenceState) -> Vec<FieldError> {
        Vec::new()
    }
    /// Work started once the record is saved (never waited for).
    fn after_save(&self, _state: &AppState) {}
    /// Why it cannot be deleted (built in, used elsewhere), if so.
    fn refuse_delete(&self, _s: &Store) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Deletes it (and what belongs only to it) at once. A removal that finds, inside its
    /// transaction, that the record may no longer go (a desktop assigned since
    /// `refuse_delete` looked) answers `Conflict` and deletes nothing.
    fn remove(s: &Store, id: &str) -> Result<(), HttpError> {
        Ok(s.delete::<Self>(id).map(|_| ())?)
    }
    /// Blanks write-only secrets before the record leaves the server.
    fn redact(&mut self) {}
    /// Lists are shown in this order.
    fn sort_key(&self) -> (u64, String) {
        (0, self.label().to_lowercase())
    }
    /// The JSON schema of the stored record (as served).
    fn schema() -> Value;
    /// The JSON schema of a create or update body, when it differs: (name, schema).
    fn input_schema() -> Option<(&'static str, Value)> {
        None
    }
}

/// Every stored record of a kind, in list order, secrets blanked.
pub fn list_all<R: Resource>(s: &Store) -> Result<Vec<R>, StoreError> {
    let mut items: Vec<R> = s.values::<R>()?;
    items.sort_by_key(R::sort_key);
    for item in &mut items {
        item.redact();
    }
    Ok(items)
}

/// Held while a configuration change is checked and written, so two administrators saving at
/// once cannot both pass a reference check that only one of them would pass afterwards (a
/// policy naming a pool that the other is deleting). Configuration writes are rare; one lock
/// for all of them is simple and enough.
static CONFIG_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the configuration write lock (blocking: call on a store thread).
pub fn config_write_lock() -> std::sync::MutexGuard<'static, ()> {
    CONFIG_WRITES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Validates and saves one record from a JSON body: a new one (`id` None; the body may choose
/// the id) or the stored one with that id. Writes the audit line. Nothing is saved when
/// anything is wrong.
pub fn save<R: Resource>(
    s: &Store,
    actor: &Actor,
    id: Option<&str>,
    value: Value,
) -> Result<R, HttpError> {
    save_licensed(s, actor, id, value, None)
}

/// [`save`], also refusing what the licence in force does not allow (when given).
pub fn save_licensed<R: Resource>(
    s: &Store,
    actor: &Actor,
    id: Option<&str>,
    mut value: Value,
    licence: Option<&LicenceState>,
) -> Result<R, HttpError> {
    let _one_at_a_time = config_write_lock();
    let body_id = value
        .get("id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_string);
    let (id, old) = match id {
        Some(id) => {
            if body_id.as_deref().is_some_and(|b| b != id) {
                return Err(invalid(
                    R::KIND,
                    vec![FieldError::new(
                        "id",
                        "the id in the body differs from the one in the path; an id cannot change",
                    )],
                ));
            }
            let old = s.get::<R>(id)?.ok_or_else(|| HttpError::NoSuch {
                kind: R::KIND,
                id: id.to_string(),
            })?;
            (id.to_string(), Some(old))
        }
        None => {
            let id = body_id.unwrap_or_else(new_id);
            if let Some(reason) = id_problem(&id) {
                return Err(invalid(R::KIND, vec![FieldError::new("id", reason)]));
            }
            if s.get::<R>(&id)?.is_some() {
                return Err(HttpError::Conflict(format!(
                    "A {} with the id `{id}` already exists.",
                    R::KIND
                )));
            }
            (id, None)
        }
    };
    if let Some(map) = value.as_object_mut() {
        map.insert("id".into(), Value::String(id.clone()));
    }
    let input: R::Input = from_json(R::KIND, &value)?;
    let record = R::build(input, &id, old.as_ref());
    let mut errors = record.check(s, old.as_ref())?;
    if let Some(licence) = licence {
        errors.extend(record.licence_problems(old.as_ref(), licence));
    }
    if !errors.is_empty() {
        return Err(invalid(R::KIND, errors));
    }
    let record = s
        .transact(&[R::TREE], |tx| {
            let mut record = record.clone();
            if let Some(current) = tx.get::<R, StoreError>(&id)? {
                record.keep_current(&current);
            }
            tx.put(&id, &record)?;
            Ok(record)
        })
        .map_err(StoreError::from)?;
    let verb = if old.is_some() { "updated" } else { "created" };
    admin::audit(
        s,
        actor,
        &format!("{}.{verb}", R::AUDIT),
        format!("{} `{}` ({id})", R::KIND, record.label()),
        true,
    )?;
    Ok(record)
}

/// Deletes one record unless something refuses it; writes the audit line.
pub fn delete<R: Resource>(s: &Store, actor: &Actor, id: &str) -> Result<R, HttpError> {
    let _one_at_a_time = config_write_lock();
    let record = s.get::<R>(id)?.ok_or_else(|| HttpError::NoSuch {
        kind: R::KIND,
        id: id.to_string(),
    })?;
    if let Some(reason) = record.refuse_delete(s)? {
        return Err(HttpError::Conflict(reason));
    }
    R::remove(s, id)?;
    admin::audit(
        s,
        actor,
        &format!("{}.deleted", R::AUDIT),
        format!("{} `{}` ({id})", R::KIND, record.label()),
        true,
    )?;
    Ok(record)
}

/// Tells the broker what changed.
pub async fn apply_effect(state: &AppState, effect: Effect) {
    match effect {
        Effect::None => {}
        Effect::Membership => state.broker.invalidate_membership(),
        Effect::Directories => {
            if let Err(e) = state.broker.reload_directories().await {
                tracing::warn!("authentication servers not reloaded: {e}");
            }
        }
    }
}

// ---- Generic handlers -------------------------------------------------------------------------

/// A JSON answer that no cache keeps: every API answer.
pub(super) fn json_ok<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(value)
}

async fn list<R: Resource>(state: web::Data<AppState>, _who: AdminToken) -> ApiResult {
    let items = state
        .store
        .call(|s| Ok::<_, HttpError>(list_all::<R>(s)?))
        .await?;
    Ok(json_ok(StatusCode::OK, &items))
}

async fn get<R: Resource>(
    state: web::Data<AppState>,
    _who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let id = path.into_inner();
    let mut item = state
        .store
        .call(move |s| {
            s.get::<R>(&id)?
                .ok_or(HttpError::NoSuch { kind: R::KIND, id })
        })
        .await?;
    item.redact();
    Ok(json_ok(StatusCode::OK, &item))
}

async fn create<R: Resource>(
    state: web::Data<AppState>,
    who: AdminToken,
    body: web::Bytes,
) -> ApiResult {
    let value = parse_body(&body)?;
    let actor = who.actor();
    let licence = state.licence_state().await?;
    let mut saved = state
        .store
        .call(move |s| save_licensed::<R>(s, &actor, None, value, Some(&licence)))
        .await?;
    apply_effect(&state, R::EFFECT).await;
    saved.after_save(&state);
    saved.redact();
    let location = format!("/api/v1/{}/{}", R::PATH, saved.id());
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(&saved))
}

async fn update<R: Resource>(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let value = parse_body(&body)?;
    let (actor, id) = (who.actor(), path.into_inner());
    let licence = state.licence_state().await?;
    let mut saved = state
        .store
        .call(move |s| save_licensed::<R>(s, &actor, Some(&id), value, Some(&licence)))
        .await?;
    apply_effect(&state, R::EFFECT).await;
    saved.after_save(&state);
    saved.redact();
    Ok(json_ok(StatusCode::OK, &saved))
}

async fn remove<R: Resource>(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let (actor, id) = (who.actor(), path.into_inner());
    state
        .store
        .call(move |s| delete::<R>(s, &actor, &id))
        .await?;
    apply_effect(&state, R::EFFECT).await;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Endpoints: what is served is what is documented ------------------------------------------

/// One API operation: served by [`register`] and described in the OpenAPI document from the
/// same value.
pub struct Endpoint {
    pub method: Method,
    /// `/api/v1/pools/{id}`.
    pub path: String,
    pub summary: String,
    pub tag: String,
    /// The request body's accepted (media type, schema) pairs; empty for none.
    pub request: Vec<(&'static str, Value)>,
    /// The success answer: (status, schema; `None` for no body).
    pub response: (u16, Option<Value>),
    /// Needs an administrator's token.
    pub secured: bool,
    pub route: fn() -> actix_web::Route,
}

fn list_route<R: Resource>() -> actix_web::Route {
    web::get().to(list::<R>)
}
fn get_route<R: Resource>() -> actix_web::Route {
    web::get().to(get::<R>)
}
fn create_route<R: Resource>() -> actix_web::Route {
    web::post().to(create::<R>)
}
fn update_route<R: Resource>() -> actix_web::Route {
    web::put().to(update::<R>)
}
fn delete_route<R: Resource>() -> actix_web::Route {
    web::delete().to(remove::<R>)
}

/// The five operations of one resource.
pub fn endpoints<R: Resource>() -> Vec<Endpoint> {
    let collection = format!("/api/v1/{}", R::PATH);
    let item = format!("{collection}/{{id}}");
    let record = schema::reference(R::SCHEMA);
    let input = match R::input_schema() {
        Some((name, _)) => schema::reference(name),
        None => record.clone(),
    };
    let tag = R::PATH.to_string();
    let e = |method, path: &str, summary: String, request, response, route| Endpoint {
        method,
        path: path.to_string(),
        summary,
        tag: tag.clone(),
        request,
        response,
        secured: true,
        route,
    };
    vec![
        e(
            Method::GET,
            &collection,
            format!("Every {}", R::KIND),
            vec![],
            (200, Some(schema::array(record.clone()))),
            list_route::<R> as fn() -> actix_web::Route,
        ),
        e(
            Method::POST,
            &collection,
            format!("Create a {}", R::KIND),
            vec![("application/json", input.clone())],
            (201, Some(record.clone())),
            create_route::<R>,
        ),
        e(
            Method::GET,
            &item,
            format!("One {}", R::KIND),
            vec![],
            (200, Some(record.clone())),
            get_route::<R>,
        ),
        e(
            Method::PUT,
            &item,
            format!("Replace a {}", R::KIND),
            vec![("application/json", input)],
            (200, Some(record)),
            update_route::<R>,
        ),
        e(
            Method::DELETE,
            &item,
            format!("Delete a {}", R::KIND),
            vec![],
            (204, None),
            delete_route::<R>,
        ),
    ]
}

/// The component schemas of one resource: its record and, when different, its input.
pub fn schemas<R: Resource>() -> Vec<(&'static str, Value)> {
    let mut out = vec![(R::SCHEMA, R::schema())];
    out.extend(R::input_schema());
    out
}

/// Serves endpoints: one actix resource per path, literal paths before those with
/// parameters (so `/desktops/import` is not taken for `/desktops/{id}`).
pub fn register(cfg: &mut web::ServiceConfig, endpoints: &[Endpoint]) {
    for path in paths_in_order(endpoints) {
        let mut resource = web::resource(path).app_data(web::PayloadConfig::new(8 << 20));
        for e in endpoints.iter().filter(|e| e.path == path) {
            resource = resource.route((e.route)());
        }
        cfg.service(resource);
    }
}

/// Each path once, literal paths first.
fn paths_in_order(endpoints: &[Endpoint]) -> Vec<&str> {
    let mut paths: Vec<&str> = Vec::new();
    for e in endpoints {
        if !paths.contains(&e.path.as_str()) {
            paths.push(&e.path);
        }
    }
    paths.sort_by_key(|p| p.matches('{').count());
    paths
}

// ---- Schema building --------------------------------------------------------------------------

/// Small builders for JSON Schema (OpenAPI 3.1 dialect).
pub mod schema {
    use serde_json::{Map, Value, json};

    pub fn string() -> Value {
        json!({"type": "string"})
    }
    pub fn integer() -> Value {
        json!({"type": "integer", "minimum": 0})
    }
    pub fn boolean() -> Value {
        json!({"type": "boolean"})
    }
    pub fn date_time() -> Value {
        json!({"type": "string", "format": "date-time"})
    }
    pub fn array(items: Value) -> Value {
        json!({"type": "array", "items": items})
    }
    pub fn nullable(v: Value) -> Value {
        json!({"anyOf": [v, {"type": "null"}]})
    }
    pub fn one_of(values: &[&str]) -> Value {
        json!({"type": "string", "enum": values})
    }
    pub fn map_of(values: Value) -> Value {
        json!({"type": "object", "additionalProperties": values})
    }
    pub fn reference(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }
    pub fn described(mut v: Value, text: &str) -> Value {
        v["description"] = Value::String(text.into());
        v
    }
    /// An object with these properties, of which `required` must be given.
    pub fn object(required: &[&str], props: Vec<(&str, Value)>) -> Value {
        let properties: Map<String, Value> =
            props.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        json!({"type": "object", "required": required, "properties": properties})
    }
}

use schema::{
    array, boolean, date_time, described, integer, map_of, nullable, object, one_of, string,
};

fn protocol() -> Value {
    one_of(&["rdp", "vnc", "spice", "ssh"])
}

pub(super) fn id_field() -> Value {
    described(
        string(),
        "Chosen by the server on create unless given; never changes.",
    )
}

// ---- Referential checks -----------------------------------------------------------------------

fn server_name(s: &Store, id: &str) -> Result<String, StoreError> {
    Ok(s.get::<AuthServer>(id)?
        .map_or_else(|| id.to_string(), |a| a.name))
}

/// The first assignment row (or "otherwise") naming something `uses` picks out.
fn used_by_assignments(
    s: &Store,
    what: &str,
    uses: impl Fn(Option<&str>, &str, &str) -> bool,
) -> Result<Option<String>, StoreError> {
    for (server_id, table) in s.list::<AssignmentTable>()? {
        for (i, row) in table.rows.iter().enumerate() {
            if uses(row.location_id.as_deref(), &row.role_id, &row.policy_id) {
                return Ok(Some(format!(
                    "The {what} is used by row {} of the assignments of authentication server \
                     `{}`: change that row first.",
                    i + 1,
                    server_name(s, &server_id)?
                )));
            }
        }
        if let Some((role, policy)) = &table.otherwise
            && uses(None, role, policy)
        {
            return Ok(Some(format!(
                "The {what} is used by the \"everyone else\" row of the assignments of \
                 authentication server `{}`: change it first.",
                server_name(s, &server_id)?
            )));
        }
    }
    Ok(None)
}

/// The first policy with an entry `uses` picks out.
fn used_by_policies(
    s: &Store,
    what: &str,
    uses: impl Fn(&crate::model::policy::PolicyEntry) -> bool,
) -> Result<Option<String>, StoreError> {
    for (_, policy) in s.list::<Policy>()? {
        if policy.entries.iter().any(&uses) {
            return Ok(Some(format!(
                "The {what} is used by policy `{}` ({}): change that policy first.",
                policy.name, policy.id
            )));
        }
    }
    Ok(None)
}

/// Whether a pool, plan, location, role or policy id is stored.
pub fn exists(s: &Store, kind: &str, id: &str) -> bool {
    let found = match kind {
        "pool" => s.get::<Pool>(id).map(|o| o.is_some()),
        "protocol_plan" => s.get::<ProtocolPlan>(id).map(|o| o.is_some()),
        "power_plan" => s.get::<PowerPlan>(id).map(|o| o.is_some()),
        "release_plan" => s.get::<ReleasePlan>(id).map(|o| o.is_some()),
        "location" => s.get::<Location>(id).map(|o| o.is_some()),
        "role" => s
            .get::<Role>(id)
            .map(|o| o.is_some() || crate::model::role::built_in().iter().any(|r| r.id == id)),
        "policy" => s.get::<Policy>(id).map(|o| o.is_some()),
        _ => Ok(false),
    };
    match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("reference check failed: {e}");
            false
        }
    }
}

// ---- The resources ----------------------------------------------------------------------------

impl Resource for AuthServer {
    type Input = AuthServer;
    const PATH: &'static str = "auth-servers";
    const KIND: &'static str = "authentication server";
    const AUDIT: &'static str = "auth_server";
    const SCHEMA: &'static str = "AuthServer";
    const EFFECT: Effect = Effect::Directories;

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: AuthServer, id: &str, old: Option<&AuthServer>) -> AuthServer {
        input.id = id.to_string();
        // The password is write-only: an update that leaves it empty keeps the stored one
        // (unless the search account itself is removed: anonymous searches), as long as it
        // goes where it went: never to hosts it was not given for.
        if let Some(old) = old
            && input.bind_password.is_empty()
            && !input.bind_dn.trim().is_empty()
            && same_directory(&input, old)
        {
            input.bind_password = old.bind_password.clone();
        }
        input
    }
    fn check(&self, _s: &Store, old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        let mut errors = self.validate();
        if let Some(old) = old
            && self.bind_password.is_empty()
            && !self.bind_dn.trim().is_empty()
            && !same_directory(self, old)
        {
            errors.retain(|e| e.field != "bind_password");
            errors.push(FieldError::new("bind_password", RETYPE_PASSWORD));
        }
        Ok(errors)
    }
    fn remove(s: &Store, id: &str) -> Result<(), HttpError> {
        s.transact(&[AuthServer::TREE, AssignmentTable::TREE], |tx| {
            tx.delete::<AuthServer, String>(id)?;
            tx.delete::<AssignmentTable, String>(id)?;
            Ok(())
        })
        .map_err(refused_meanwhile)
    }
    fn redact(&mut self) {
        self.bind_password.clear();
    }
    fn sort_key(&self) -> (u64, String) {
        (u64::from(self.order), self.name.to_lowercase())
    }
    fn schema() -> Value {
        object(
            &["name", "domain", "hosts", "base_dn"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("kind", one_of(&["active_directory", "openldap"])),
                ("domain", string()),
                ("aliases", array(string())),
                (
                    "hosts",
                    array(object(
                        &["host", "port"],
                        vec![("host", string()), ("port", integer())],
                    )),
                ),
                ("security", one_of(&["ldaps", "starttls", "plain"])),
                ("verify_tls", boolean()),
                ("ca_cert_pem", nullable(string())),
                ("bind_dn", string()),
                (
                    "bind_password",
                    json!({"type": "string", "writeOnly": true, "description":
                        "Write-only: answers always carry an empty string; an update that \
                         leaves it empty keeps the stored password."}),
                ),
                ("base_dn", string()),
                (
                    "group_base_dn",
                    json!({"type": "string", "description":
                        "Where groups are searched for; empty: the base DN."}),
                ),
                ("scope", one_of(&["one_level", "subtree"])),
                ("login_attribute", string()),
                ("group_attribute", string()),
                ("nested_groups", boolean()),
                ("follow_referrals", boolean()),
                ("connect_timeout_secs", integer()),
                ("search_timeout_secs", integer()),
                ("order", integer()),
            ],
        )
    }
}

/// Why a stored password was not kept: where it would go changed.
pub(super) const RETYPE_PASSWORD: &str = "the server's address or its TLS settings changed: type the password again (a stored password is only sent where it was given for)";

/// Whether a directory edit still talks to the servers, with the TLS checks, that its stored
/// search password was given for.
fn same_directory(new: &AuthServer, old: &AuthServer) -> bool {
    new.hosts == old.hosts
        && new.security == old.security
        && new.verify_tls == old.verify_tls
        && new.ca_cert_pem == old.ca_cert_pem
}

/// A removal's transaction that aborted with a reason: the record changed since it was
/// checked, and the answer says what to do.
pub(super) fn refused_meanwhile(e: TxError<String>) -> HttpError {
    match e {
        TxError::Abort(reason) => HttpError::Conflict(reason),
        TxError::Store(e) => e.into(),
        TxError::Conflict(_) => StoreError::Engine("transaction conflict".into()).into(),
    }
}

impl Resource for Location {
    type Input = Location;
    const PATH: &'static str = "locations";
    const KIND: &'static str = "location";
    const AUDIT: &'static str = "location";
    const SCHEMA: &'static str = "Location";

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: Location, id: &str, _old: Option<&Location>) -> Location {
        input.id = id.to_string();
        input
    }
    fn check(&self, _s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        Ok(self.validate())
    }
    fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
        if !self.can_delete() {
            return Ok(Some(format!(
                "The built-in location {ALL_LOCATION_NAME} cannot be deleted: it holds every \
                 client no other location claims."
            )));
        }
        used_by_assignments(s, "location", |l, _, _| l == Some(self.id.as_str()))
    }
    fn sort_key(&self) -> (u64, String) {
        (u64::from(self.order), self.name.to_lowercase())
    }
    fn schema() -> Value {
        object(
            &["name", "order"],
            vec![
                ("id", id_field()),
                ("name", string()),
                (
                    "order",
                    described(integer(), "Lower orders are tried first."),
                ),
                (
                    "ranges",
                    described(array(string()), "CIDR ranges, `10.0.0.0/8`; empty: any."),
                ),
                ("client_name_pattern", nullable(string())),
                ("device_types", array(string())),
                ("os_patterns", array(string())),
            ],
        )
    }
}

impl Resource for Role {
    type Input = Role;
    const PATH: &'static str = "roles";
    const KIND: &'static str = "role";
    const AUDIT: &'static str = "role";
    const SCHEMA: &'static str = "Role";

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: Role, id: &str, old: Option<&Role>) -> Role {
        input.id = id.to_string();
        // Whether a role is built in is not the caller's to say on an update (a form or a
        // body that leaves it out must not turn a built-in role into a custom one).
        if let Some(old) = old {
            input.built_in = old.built_in;
        }
        input
    }
    fn check(&self, _s: &Store, old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        Ok(match old {
            Some(old) => self.validate_change(old),
            None => self.validate(),
        })
    }
    fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
        if !self.can_delete() {
            return Ok(Some(format!(
                "The built-in role {} cannot be deleted.",
                self.name
            )));
        }
        used_by_assignments(s, "role", |_, r, _| r == self.id)
    }
    fn sort_key(&self) -> (u64, String) {
        (u64::from(!self.built_in), self.name.to_lowercase())
    }
    fn schema() -> Value {
        let access = one_of(&["none", "view", "edit"]);
        object(
            &["name"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("built_in", boolean()),
                (
                    "console",
                    json!({"type": "object", "additionalProperties": access, "propertyNames":
                        {"enum": ["dashboard", "setup", "configuration", "resources", "system"]}}),
                ),
                ("may_release", boolean()),
                ("may_restart", boolean()),
                ("may_shut_down", boolean()),
                ("may_connect", boolean()),
            ],
        )
    }
}

fn plan_refusal(s: &Store, id: &str, kind: &str) -> Result<Option<String>, StoreError> {
    if id == DEFAULT_PLAN_ID {
        return Ok(Some(format!(
            "The default {kind} cannot be deleted: policies fall back to it."
        )));
    }
    used_by_policies(s, kind, |e| match kind {
        "protocol plan" => e.protocol_plan == id,
        "power plan" => e.power_plan == id,
        _ => e.release_plan == id,
    })
}

/// The three plan kinds are declared alike: only their paths, names and schemas differ.
macro_rules! plan_resource {
    ($ty:ty, $path:literal, $kind:literal, $audit:literal, $schema_name:literal, $schema:block) => {
        impl Resource for $ty {
            type Input = $ty;
            const PATH: &'static str = $path;
            const KIND: &'static str = $kind;
            const AUDIT: &'static str = $audit;
            const SCHEMA: &'static str = $schema_name;

            fn id(&self) -> &str {
                &self.id
            }
            fn label(&self) -> &str {
                &self.name
            }
            fn build(mut input: Self, id: &str, _old: Option<&Self>) -> Self {
                input.id = id.to_string();
                input
            }
            fn check(&self, _s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
                Ok(self.validate())
            }
            fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
                plan_refusal(s, &self.id, Self::KIND)
            }
            fn schema() -> Value $schema
        }
    };
}

plan_resource!(
    ProtocolPlan,
    "protocol-plans",
    "protocol plan",
    "protocol_plan",
    "ProtocolPlan",
    {
        object(
            &["name", "protocols"],
            vec![
                ("id", id_field()),
                ("name", string()),
                (
                    "protocols",
                    array(object(
                        &["protocol", "priority"],
                        vec![
                            ("protocol", protocol()),
                            (
                                "priority",
                                described(integer(), "1 is tried first; 0: not offered."),
                            ),
                            ("file_lines", array(string())),
                            ("command_line", string()),
                            ("via_gateway", boolean()),
                            (
                                "gateway_method",
                                described(
                                    one_of(&["tunnel", "forwarded_port"]),
                                    "With via_gateway: a WebSocket tunnel or a forwarded port.",
                                ),
                            ),
                        ],
                    )),
                ),
            ],
        )
    }
);

fn power_rule() -> Value {
    object(
        &[],
        vec![
            ("after_minutes", integer()),
            (
                "action",
                one_of(&[
                    "nothing",
                    "start",
                    "suspend",
                    "shutdown",
                    "power_off",
                    "reboot",
                ]),
            ),
        ],
    )
}

plan_resource!(
    PowerPlan,
    "power-plans",
    "power plan",
    "power_plan",
    "PowerPlan",
    {
        object(
            &["name"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("on_disconnect", power_rule()),
                ("on_logout", power_rule()),
                ("on_release", power_rule()),
                ("on_idle", power_rule()),
            ],
        )
    }
);

plan_resource!(
    ReleasePlan,
    "release-plans",
    "release plan",
    "release_plan",
    "ReleasePlan",
    {
        let minutes = nullable(integer());
        object(
            &["name"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("logout_after_disconnect_minutes", minutes.clone()),
                ("release_after_logout_minutes", minutes.clone()),
                ("release_after_disconnect_minutes", minutes.clone()),
                ("delete_after_release_minutes", minutes),
            ],
        )
    }
);

impl Resource for Policy {
    type Input = Policy;
    const PATH: &'static str = "policies";
    const KIND: &'static str = "policy";
    const AUDIT: &'static str = "policy";
    const SCHEMA: &'static str = "Policy";

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: Self, id: &str, _old: Option<&Self>) -> Self {
        input.id = id.to_string();
        input
    }
    fn check(&self, s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        Ok(self.validate(|kind, id| exists(s, kind, id)))
    }
    fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
        used_by_assignments(s, "policy", |_, _, p| p == self.id)
    }
    fn schema() -> Value {
        object(
            &["name", "entries"],
            vec![
                ("id", id_field()),
                ("name", string()),
                (
                    "entries",
                    array(object(
                        &["pool_id", "offer"],
                        vec![
                            ("pool_id", string()),
                            ("offer", integer()),
                            ("running_only", boolean()),
                            (
                                "order",
                                one_of(&["random", "least_recently_used", "by_name"]),
                            ),
                            ("protocol_plan", string()),
                            ("power_plan", string()),
                            ("release_plan", string()),
                        ],
                    )),
                ),
            ],
        )
    }
}

impl Resource for Pool {
    type Input = Pool;
    const PATH: &'static str = "pools";
    const KIND: &'static str = "pool";
    const AUDIT: &'static str = "pool";
    const SCHEMA: &'static str = "Pool";
    const EFFECT: Effect = Effect::Membership;

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(mut input: Self, id: &str, old: Option<&Self>) -> Self {
        input.id = id.to_string();
        // The status is the runs' to keep, not the body's.
        let fresh = crate::model::provisioning::Provisioning::default();
        input
            .provisioning
            .keep_status(old.map_or(&fresh, |o| &o.provisioning));
        input
    }
    fn keep_current(&mut self, current: &Self) {
        self.provisioning.keep_status(&current.provisioning);
    }
    fn check(&self, s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        let pools: Vec<Pool> = s.values::<Pool>()?;
        let mut errors = self.validate(&pools);
        let center = self.provisioning.center.trim();
        if !self.provisioning.enabled || center.is_empty() || !errors.is_empty() {
            return Ok(errors);
        }
        match s.get::<Center>(center)? {
            None => errors.push(FieldError::new(
                "provisioning.center",
                format!("there is no center `{center}`: choose one under Setup > Centers"),
            )),
            Some(center) => {
                if let Some(reason) = self.provisioned_name_problem(&pools, center.protocol) {
                    errors.push(FieldError::new("provisioning.name", reason));
                }
            }
        }
        Ok(errors)
    }
    fn licence_problems(&self, old: Option<&Self>, licence: &LicenceState) -> Vec<FieldError> {
        let turning_on = self.provisioning.enabled && !old.is_some_and(|o| o.provisioning.enabled);
        if turning_on && !licence.allows(Capability::Provisioning) {
            return vec![FieldError::new(
                "provisioning.enabled",
                "the licence in force does not allow provisioning: leave it off, or activate a licence that allows it under System > Licence",
            )];
        }
        Vec::new()
    }
    fn after_save(&self, state: &AppState) {
        if self.provisioning.enabled {
            let (centers, id) = (state.centers.clone(), self.id.clone());
            tokio::spawn(async move {
                if let Err(e) = centers.provision_check(&id).await {
                    tracing::warn!(pool = %id, error = %e, "provisioning after the pool was saved failed");
                }
            });
        }
    }
    fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
        if let Some(child) = s
            .list::<Pool>()?
            .into_iter()
            .find(|(_, p)| p.parent.as_deref() == Some(self.id.as_str()))
        {
            return Ok(Some(format!(
                "The pool has the sub-pool `{}`: delete or move it first.",
                child.1.name
            )));
        }
        used_by_policies(s, "pool", |e| e.pool_id == self.id)
    }
    fn schema() -> Value {
        let attribute = json!({"oneOf": [
            one_of(&["name", "display_name", "address", "os", "protocol", "center", "image",
                     "flavor", "power_state"]),
            object(&["metadata"], vec![("metadata", described(string(), "The metadata key."))]),
        ]});
        object(
            &["name"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("parent", nullable(string())),
                (
                    "rules",
                    array(object(
                        &["attribute", "condition", "value"],
                        vec![
                            ("attribute", attribute),
                            (
                                "condition",
                                one_of(&[
                                    "begins_with",
                                    "ends_with",
                                    "contains",
                                    "does_not_contain",
                                    "equals",
                                    "matches_regex",
                                ]),
                            ),
                            ("value", string()),
                        ],
                    )),
                ),
                ("match_all", boolean()),
                ("description", string()),
                ("provisioning", provisioning_schema()),
            ],
        )
    }
}

/// A pool's provisioning settings and status.
fn provisioning_schema() -> Value {
    described(
        object(
            &[],
            vec![
                ("enabled", boolean()),
                (
                    "start_below",
                    described(
                        integer(),
                        "Provision while fewer desktops than this are unassigned.",
                    ),
                ),
                (
                    "stop_at",
                    described(
                        integer(),
                        "Never more desktops than this in the pool (being created included).",
                    ),
                ),
                ("center", described(string(), "The center's id.")),
                (
                    "name",
                    described(
                        string(),
                        "The machine name, with {SEQUENCE} for its number.",
                    ),
                ),
                ("display_name", string()),
                ("sequence_start", integer()),
                ("sequence_width", integer()),
                ("availability_zone", string()),
                ("flavor", described(string(), "Flavor id.")),
                ("image", described(string(), "Image id.")),
                (
                    "new_volume",
                    object(
                        &[],
                        vec![
                            ("enabled", boolean()),
                            ("size_gb", integer()),
                            ("volume_type", string()),
                            ("delete_on_termination", boolean()),
                        ],
                    ),
                ),
                (
                    "networks",
                    described(array(string()), "Network ids; none: no network."),
                ),
                ("security_groups", array(string())),
                ("metadata", map_of(string())),
                ("deletable", boolean()),
                ("join_domain", string()),
                ("failure_limit", integer()),
                (
                    "failures",
                    described(integer(), "Status: failures in a row (read-only)."),
                ),
                (
                    "disabled_reason",
                    described(
                        nullable(string()),
                        "Status: the cloud's error when provisioning turned itself off (read-only).",
                    ),
                ),
                ("last_run", nullable(date_time())),
                (
                    "last_result",
                    described(string(), "Status: what the last run did (read-only)."),
                ),
            ],
        ),
        "Growing the pool with new machines in a cloud center.",
    )
}

/// Why an assigned desktop may not be deleted.
fn assigned_to(user: &str) -> String {
    format!("The desktop is assigned to {user}: release it first.")
}

/// A desktop as the hand-entry form edits it: the form's fields from `edited`, everything
/// else (assignment, power and agent state, the cloud's fields) from `base`.
fn edited_over(edited: Desktop, base: &Desktop) -> Desktop {
    Desktop {
        name: edited.name,
        display_name: edited.display_name,
        address: edited.address,
        port: edited.port,
        protocol: edited.protocol,
        os: edited.os,
        ..base.clone()
    }
}

impl Resource for Desktop {
    type Input = DesktopInput;
    const PATH: &'static str = "desktops";
    const KIND: &'static str = "desktop";
    const AUDIT: &'static str = "desktop";
    const SCHEMA: &'static str = "Desktop";
    const EFFECT: Effect = Effect::Membership;

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn build(input: DesktopInput, id: &str, old: Option<&Desktop>) -> Desktop {
        let mut d = Desktop::from_input(input, chrono::Utc::now());
        d.id = id.to_string();
        if let Some(old) = old {
            d = edited_over(d, old);
        }
        d
    }
    fn keep_current(&mut self, current: &Self) {
        // Assignment, power state and the rest are the broker's and the runs': a user may
        // have been assigned this desktop since the save read it.
        *self = edited_over(self.clone(), current);
    }
    fn check(&self, s: &Store, _old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        let mut errors = self.validate();
        let key = self.name_key();
        if !key.is_empty()
            && s.list::<Desktop>()?
                .iter()
                .any(|(_, d)| d.id != self.id && name_key(&d.name) == key)
        {
            errors.push(FieldError::new(
                "name",
                format!("a desktop named `{}` already exists", self.name),
            ));
        }
        Ok(errors)
    }
    fn refuse_delete(&self, _s: &Store) -> Result<Option<String>, StoreError> {
        Ok(self.assigned_user.as_ref().map(|user| assigned_to(user)))
    }
    fn remove(s: &Store, id: &str) -> Result<(), HttpError> {
        s.transact(&[Desktop::TREE], |tx| {
            if let Some(user) = tx.get::<Desktop, String>(id)?.and_then(|d| d.assigned_user) {
                return Err(TxError::Abort(assigned_to(&user)));
            }
            tx.delete::<Desktop, String>(id)?;
            Ok(())
        })
        .map_err(refused_meanwhile)
    }
    fn schema() -> Value {
        object(
            &["name", "address", "protocol"],
            vec![
                ("id", id_field()),
                ("name", string()),
                ("display_name", string()),
                ("address", string()),
                ("port", nullable(integer())),
                ("protocol", protocol()),
                ("os", string()),
                ("center", string()),
                (
                    "power_state",
                    one_of(&[
                        "unknown",
                        "running",
                        "stopped",
                        "suspended",
                        "paused",
                        "building",
                        "error",
                        "deleting",
                    ]),
                ),
                ("agent_state", one_of(&["unknown", "running", "stopped"])),
                ("image", string()),
                ("flavor", string()),
                ("metadata", map_of(string())),
                ("assigned_user", nullable(string())),
                ("assigned_at", nullable(date_time())),
                ("last_released", nullable(date_time())),
                ("deletable", boolean()),
                ("created", date_time()),
                (
                    "server_id",
                    described(
                        string(),
                        "The machine's id in its center's cloud; empty for static desktops.",
                    ),
                ),
            ],
        )
    }
    fn input_schema() -> Option<(&'static str, Value)> {
        Some((
            "DesktopInput",
            object(
                &["name", "address", "protocol"],
                vec![
                    ("name", string()),
                    ("display_name", string()),
                    ("address", string()),
                    ("port", nullable(integer())),
                    ("protocol", protocol()),
                    ("os", string()),
                ],
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        offer: u32,
        nested: Vec<u32>,
    }

    #[test]
    fn a_wrong_field_is_named_with_its_reason() {
        let value = json!({"name": "x", "offer": "three", "nested": [1]});
        let Err(HttpError::Invalid { fields, .. }) = from_json::<Sample>("sample", &value) else {
            panic!("accepted");
        };
        assert_eq!(fields[0].field, "offer");
        assert!(fields[0].reason.contains("invalid type"), "{fields:?}");
        assert!(!fields[0].reason.contains(" at line "), "{fields:?}");

        let value = json!({"name": "x", "nested": [1]});
        let Err(HttpError::Invalid { fields, .. }) = from_json::<Sample>("sample", &value) else {
            panic!("accepted");
        };
        assert_eq!(fields[0].field, "offer");
        assert!(fields[0].reason.contains("missing field"), "{fields:?}");

        let value = json!({"name": "x", "offer": 1, "nested": [1, "two"]});
        let Err(HttpError::Invalid { fields, .. }) = from_json::<Sample>("sample", &value) else {
            panic!("accepted");
        };
        assert_eq!(fields[0].field, "nested");
    }

    #[test]
    fn malformed_json_is_refused_with_the_parser_s_words() {
        let Err(HttpError::MalformedJson(m)) = parse_body(b"{\"name\": ") else {
            panic!("accepted");
        };
        assert!(m.contains("EOF"), "{m}");
        assert!(matches!(
            parse_body(b"  "),
            Err(HttpError::MalformedJson(_))
        ));
    }

    #[test]
    fn ids_are_url_safe() {
        assert!(id_problem("pool-1_a.b").is_none());
        assert!(id_problem("").is_some());
        assert!(id_problem("a/b").is_some());
        assert!(id_problem(&"x".repeat(65)).is_some());
    }

    /// Every key a record serializes to is a property of its schema, and the other way round:
    /// the document describes exactly what is served.
    fn same_keys<R: Resource>(sample: &R) {
        let served = serde_json::to_value(sample).expect("serializes");
        let served: Vec<&String> = served.as_object().expect("object").keys().collect();
        let schema = R::schema();
        let documented: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let mut a = served.clone();
        let mut b = documented.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{}", R::SCHEMA);
        for required in schema["required"].as_array().expect("required") {
            assert!(
                served.iter().any(|k| Some(k.as_str()) == required.as_str()),
                "{}: {required}",
                R::SCHEMA
            );
        }
    }

    #[test]
    fn schemas_match_what_is_served() {
        same_keys(&AuthServer::default());
        same_keys(&Location::all());
        same_keys(&Role::administrator());
        same_keys(&ProtocolPlan::default_plan());
        same_keys(&PowerPlan::default_plan());
        same_keys(&ReleasePlan::default_plan());
        same_keys(&Policy::default_policy());
        same_keys(&Pool::new("p"));
        same_keys(&crate::model::center::Center::default());
        let input = DesktopInput {
            name: "d".into(),
            display_name: String::new(),
            address: "10.0.0.1".into(),
            port: None,
            protocol: crate::model::Protocol::Rdp,
            os: String::new(),
        };
        let desktop = Desktop::from_input(input.clone(), chrono::Utc::now());
        same_keys(&desktop);
        let (_, input_schema) = Desktop::input_schema().expect("input schema");
        let served = serde_json::to_value(&input).expect("serializes");
        assert_eq!(
            served.as_object().expect("object").len(),
            input_schema["properties"].as_object().expect("props").len()
        );
    }

    #[test]
    fn an_update_without_a_password_keeps_the_stored_one() {
        let old = AuthServer {
            bind_dn: "cn=search,dc=example,dc=com".into(),
            bind_password: "secret".into(),
            ..AuthServer::default()
        };
        let mut input = old.clone();
        input.bind_password.clear();
        let built = AuthServer::build(input, "x", Some(&old));
        assert_eq!(built.bind_password, "secret");
        let mut anonymous = old.clone();
        anonymous.bind_dn.clear();
        anonymous.bind_password.clear();
        assert_eq!(
            AuthServer::build(anonymous, "x", Some(&old)).bind_password,
            ""
        );
        let mut shown = old.clone();
        shown.redact();
        assert_eq!(shown.bind_password, "");
    }

    fn desktop_input(name: &str, address: &str) -> DesktopInput {
        DesktopInput {
            name: name.into(),
            display_name: String::new(),
            address: address.into(),
            port: None,
            protocol: crate::model::Protocol::Rdp,
            os: String::new(),
        }
    }

    #[test]
    fn an_edit_keeps_an_assignment_made_since_the_save_read_the_desktop() {
        let old = Desktop::build(desktop_input("d1", "10.0.0.1"), "d1", None);
        assert_eq!(old.assigned_user, None);
        let mut edited = Desktop::build(desktop_input("d1-renamed", "10.0.0.2"), "d1", Some(&old));
        // Meanwhile the broker assigned it, in its own transaction.
        let mut current = old.clone();
        current.assigned_user = Some("ad/alice".into());
        current.assigned_at = Some(chrono::Utc::now());
        edited.keep_current(&current);
        assert_eq!(edited.assigned_user.as_deref(), Some("ad/alice"));
        assert_eq!(edited.assigned_at, current.assigned_at);
        assert_eq!(
            (edited.name.as_str(), edited.address.as_str()),
            ("d1-renamed", "10.0.0.2"),
            "the edit itself is saved"
        );
    }

    #[test]
    fn a_desktop_assigned_since_the_delete_checked_it_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut d = Desktop::build(desktop_input("d1", "10.0.0.1"), "d1", None);
        assert_eq!(d.refuse_delete(&store).expect("check"), None);
        d.assigned_user = Some("ad/alice".into());
        store.put("d1", &d).expect("put");
        let Err(HttpError::Conflict(reason)) = Desktop::remove(&store, "d1") else {
            panic!("an assigned desktop was deleted");
        };
        assert!(reason.contains("ad/alice"), "{reason}");
        assert!(store.get::<Desktop>("d1").expect("get").is_some());
        d.assigned_user = None;
        store.put("d1", &d).expect("put");
        Desktop::remove(&store, "d1").expect("a free desktop goes");
        assert!(store.get::<Desktop>("d1").expect("get").is_none());
    }

    #[test]
    fn a_built_in_role_stays_built_in_when_edited() {
        let old = Role::user();
        let mut input = old.clone();
        input.built_in = false;
        input.may_restart = true;
        let built = Role::build(input, "user", Some(&old));
        assert!(built.built_in && built.may_restart);
        assert!(built.validate_change(&old).is_empty());
    }

    #[test]
    fn literal_paths_are_registered_before_parameters() {
        let mut eps = endpoints::<Desktop>();
        eps.push(Endpoint {
            method: Method::POST,
            path: "/api/v1/desktops/import".into(),
            summary: String::new(),
            tag: String::new(),
            request: vec![],
            response: (200, None),
            secured: true,
            route: || web::post().to(HttpResponse::Ok),
        });
        let paths = paths_in_order(&eps);
        assert_eq!(paths.len(), 3, "{paths:?}");
        let import = paths.iter().position(|p| p.ends_with("/import"));
        let item = paths.iter().position(|p| p.ends_with("{id}"));
        assert!(import < item, "{paths:?}");
    }
}
