//! The console pages of the configuration resources: one list page, one form, one delete
//! confirmation, driven by a per-resource field list ([`Screen`]), plus the pages that do not
//! fit that shape (assignments per authentication server, users with test login, the desktop
//! CSV import, an authentication server's connection test).
//!
//! Saving goes through the same functions as the API (`resource::save`, `resource::delete`,
//! `api::save_assignments`, `api::import_csv`, `api::run_test_login`), so the console and the
//! API validate, refuse and audit alike. Every form carries the session's CSRF token. No
//! business rules here, and no sled.

use std::collections::HashMap;

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::api;
use super::forms::MultipartForm;
use super::pages::{Page, see_other};
use super::resource::{self, Effect, Resource};
use super::session::Console;
use super::{AppState, HttpError};
use crate::model::FieldError;
use crate::model::desktop::Desktop;
use crate::model::directory::{AuthServer, HostPort};
use crate::model::location::Location;
use crate::model::plan::{PowerPlan, ProtocolPlan, ReleasePlan};
use crate::model::policy::{AssignmentTable, Policy};
use crate::model::pool::{Membership, Pool};
use crate::model::role::Role;
use crate::store::{Store, StoreError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Fixed paths first: `/new`, `/import` and `/{id}/…` must not be taken for an id.
    cfg.route(
        "/admin/resources/desktops/import",
        web::post().to(import_desktops),
    )
    .route(
        "/admin/setup/auth-servers/{id}/test",
        web::post().to(test_connection),
    )
    .route("/admin/resources/users", web::get().to(users_page))
    .route("/admin/resources/users/test", web::post().to(test_login))
    .route(
        "/admin/configuration/assignments",
        web::get().to(assignments_page),
    )
    .route(
        "/admin/configuration/assignments/{server_id}",
        web::get().to(assignment_form),
    )
    .route(
        "/admin/configuration/assignments/{server_id}",
        web::post().to(assignment_save),
    );
    register::<AuthServer>(cfg);
    register::<Location>(cfg);
    register::<Role>(cfg);
    register::<ProtocolPlan>(cfg);
    register::<PowerPlan>(cfg);
    register::<ReleasePlan>(cfg);
    register::<Policy>(cfg);
    register::<Pool>(cfg);
    register::<Desktop>(cfg);
}

// ---- Declarations -----------------------------------------------------------------------------

/// How a field is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Write-only: never shown; left empty keeps the stored value.
    Password,
    /// A whole number.
    Number,
    /// A whole number, or empty for none.
    OptNumber,
    /// Text, or empty for none.
    OptText,
    Check,
    /// One of fixed options.
    Select(&'static [(&'static str, &'static str)]),
    /// One of the options [`Screen::options`] gives; empty for none.
    Choice,
    /// A list of texts, one per line.
    Lines,
    /// `host[:port]` per line.
    Hosts,
    /// Several lines of text, or empty for none.
    OptTextarea,
    /// A nested value as JSON.
    Json,
}

impl Kind {
    fn widget(self) -> &'static str {
        match self {
            Kind::Text | Kind::OptText => "text",
            Kind::Password => "password",
            Kind::Number | Kind::OptNumber => "number",
            Kind::Check => "checkbox",
            Kind::Select(_) | Kind::Choice => "select",
            Kind::Lines | Kind::Hosts | Kind::OptTextarea | Kind::Json => "textarea",
        }
    }
}

/// One field of a form: the JSON key (dotted for nested objects: `on_idle.action`), its label,
/// how it is edited and a line of help.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn field(key: &'static str, label: &'static str, kind: Kind) -> Field {
    Field {
        key,
        label,
        kind,
        help: "",
    }
}

const fn helped(key: &'static str, label: &'static str, kind: Kind, help: &'static str) -> Field {
    Field {
        key,
        label,
        kind,
        help,
    }
}

/// A resource with console pages.
pub trait Screen: Resource {
    /// The menu area's path segment: `setup`, `configuration`, `resources`.
    const AREA: &'static str;
    /// The page title: "Authentication Servers".
    const TITLE: &'static str;
    /// Fields of the form, in order.
    fn fields() -> Vec<Field>;
    /// Keys shown as list columns.
    fn columns() -> &'static [&'static str];
    /// The new-record form's starting values.
    fn blank() -> Value;
    /// Options of [`Kind::Choice`] fields: (value, label).
    fn options(_s: &Store, _key: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }
    /// More list columns computed from the store: headers, and one row of cells per item.
    fn extra_columns(
        _s: &Store,
        _items: &[Self],
    ) -> Result<(Vec<String>, Vec<Vec<String>>), StoreError> {
        Ok((Vec::new(), Vec::new()))
    }
    /// Buttons on the edit page: (label, path suffix after the record's page), posted.
    fn buttons() -> &'static [(&'static str, &'static str)] {
        &[]
    }
}

fn base<R: Screen>() -> String {
    format!("/admin/{}/{}", R::AREA, R::PATH)
}

const PROTOCOLS: &[(&str, &str)] = &[
    ("rdp", "RDP"),
    ("vnc", "VNC"),
    ("spice", "SPICE"),
    ("ssh", "SSH"),
];
const ACCESS: &[(&str, &str)] = &[("none", "None"), ("view", "View"), ("edit", "Edit")];
const POWER: &[(&str, &str)] = &[
    ("nothing", "Do nothing"),
    ("start", "Start"),
    ("suspend", "Suspend"),
    ("shutdown", "Shut down"),
    ("power_off", "Power off"),
    ("reboot", "Reboot"),
];

impl Screen for AuthServer {
    const AREA: &'static str = "setup";
    const TITLE: &'static str = "Authentication Servers";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            field(
                "kind",
                "Directory",
                Kind::Select(&[
                    ("active_directory", "Active Directory"),
                    ("openldap", "OpenLDAP"),
                ]),
            ),
            helped(
                "domain",
                "Domain",
                Kind::Text,
                "What users type before a backslash or after an @: EXAMPLE or example.com.",
            ),
            helped(
                "aliases",
                "Other names of the domain",
                Kind::Lines,
                "One per line.",
            ),
            helped(
                "hosts",
                "Servers",
                Kind::Hosts,
                "host or host:port, one per line, tried in order.",
            ),
            field(
                "security",
                "Connection security",
                Kind::Select(&[
                    ("ldaps", "LDAPS"),
                    ("starttls", "StartTLS"),
                    ("plain", "Plain LDAP (not encrypted)"),
                ]),
            ),
            field("verify_tls", "Verify the server's certificate", Kind::Check),
            helped(
                "ca_cert_pem",
                "CA certificate (PEM)",
                Kind::OptTextarea,
                "Empty: the system's CA bundle.",
            ),
            field("bind_dn", "Search account DN", Kind::Text),
            helped(
                "bind_password",
                "Search account password",
                Kind::Password,
                "Leave empty to keep the stored password.",
            ),
            field("base_dn", "Base DN", Kind::Text),
            field(
                "scope",
                "Search scope",
                Kind::Select(&[("subtree", "Subtree"), ("one_level", "One level")]),
            ),
            field("login_attribute", "Login attribute", Kind::Text),
            field("group_attribute", "Group attribute", Kind::Text),
            field("nested_groups", "Count groups of groups", Kind::Check),
            field("follow_referrals", "Follow referrals", Kind::Check),
            field("connect_timeout_secs", "Connect timeout (s)", Kind::Number),
            field("search_timeout_secs", "Search timeout (s)", Kind::Number),
            field("order", "Order", Kind::Number),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "domain", "hosts", "security", "order"]
    }
    fn blank() -> Value {
        serde_json::to_value(AuthServer::default()).unwrap_or_default()
    }
    fn buttons() -> &'static [(&'static str, &'static str)] {
        &[("Test connection", "test")]
    }
}

impl Screen for Location {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Locations";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "order",
                "Order",
                Kind::Number,
                "Lower orders are tried first.",
            ),
            helped(
                "ranges",
                "Address ranges",
                Kind::Lines,
                "CIDR, one per line (10.1.0.0/16). Empty: any address.",
            ),
            helped(
                "client_name_pattern",
                "Client name pattern",
                Kind::OptText,
                "* any characters, ? one. Empty: any name.",
            ),
            field("device_types", "Device types", Kind::Lines),
            field("os_patterns", "Operating system patterns", Kind::Lines),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "order", "ranges", "device_types"]
    }
    fn blank() -> Value {
        serde_json::json!({"name": "", "order": 10, "ranges": [], "client_name_pattern": null,
            "device_types": [], "os_patterns": []})
    }
}

impl Screen for Role {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Roles";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            field(
                "console.dashboard",
                "Console: Dashboard",
                Kind::Select(ACCESS),
            ),
            field("console.setup", "Console: Setup", Kind::Select(ACCESS)),
            field(
                "console.configuration",
                "Console: Configuration",
                Kind::Select(ACCESS),
            ),
            field(
                "console.resources",
                "Console: Resources",
                Kind::Select(ACCESS),
            ),
            field("console.system", "Console: System", Kind::Select(ACCESS)),
            field("may_connect", "May connect to desktops", Kind::Check),
            field("may_release", "May release their desktop", Kind::Check),
            field("may_restart", "May restart their desktop", Kind::Check),
            field("may_shut_down", "May shut their desktop down", Kind::Check),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "built_in", "may_connect", "may_release"]
    }
    fn blank() -> Value {
        serde_json::to_value(Role::new("", "")).unwrap_or_default()
    }
}

/// A new plan's form starts from the default plan's settings, without its name.
fn unnamed(plan: impl serde::Serialize) -> Value {
    let mut value = serde_json::to_value(plan).unwrap_or_default();
    value["name"] = Value::String(String::new());
    value
}

impl Screen for ProtocolPlan {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Protocol Plans";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "protocols",
                "Protocols",
                Kind::Json,
                "A list of {\"protocol\": \"rdp\", \"priority\": 1, \"file_lines\": [], \
                 \"command_line\": \"\", \"via_gateway\": false}; priority 0 turns a protocol off.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "protocols"]
    }
    fn blank() -> Value {
        unnamed(ProtocolPlan::default_plan())
    }
}

impl Screen for PowerPlan {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Power Plans";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            field("on_disconnect.action", "On disconnect", Kind::Select(POWER)),
            field(
                "on_disconnect.after_minutes",
                "… after minutes",
                Kind::Number,
            ),
            field("on_logout.action", "On logout", Kind::Select(POWER)),
            field("on_logout.after_minutes", "… after minutes", Kind::Number),
            field("on_release.action", "On release", Kind::Select(POWER)),
            field("on_release.after_minutes", "… after minutes", Kind::Number),
            field("on_idle.action", "When idle", Kind::Select(POWER)),
            field(
                "on_idle.after_minutes",
                "… after idle minutes",
                Kind::Number,
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name"]
    }
    fn blank() -> Value {
        unnamed(PowerPlan::default_plan())
    }
}

impl Screen for ReleasePlan {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Release Plans";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "logout_after_disconnect_minutes",
                "Log out after a disconnect (minutes)",
                Kind::OptNumber,
                "Empty: never.",
            ),
            helped(
                "release_after_logout_minutes",
                "Release after logout (minutes)",
                Kind::OptNumber,
                "Empty: keep the desktop.",
            ),
            helped(
                "release_after_disconnect_minutes",
                "Release after a disconnect (minutes)",
                Kind::OptNumber,
                "Empty: keep the desktop.",
            ),
            helped(
                "delete_after_release_minutes",
                "Delete the machine after release (minutes)",
                Kind::OptNumber,
                "Empty: never. Only for machines Gatehouse may delete.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "release_after_logout_minutes"]
    }
    fn blank() -> Value {
        unnamed(ReleasePlan::default_plan())
    }
}

impl Screen for Policy {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Policies";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "entries",
                "Pools offered",
                Kind::Json,
                "A list of {\"pool_id\": \"…\", \"offer\": 1, \"running_only\": false, \
                 \"order\": \"random\" | \"least_recently_used\" | \"by_name\", \
                 \"protocol_plan\": \"default\", \"power_plan\": \"default\", \
                 \"release_plan\": \"default\"}, tried in order.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "entries"]
    }
    fn blank() -> Value {
        serde_json::json!({"name": "", "entries": []})
    }
}

impl Screen for Pool {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Pools";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "parent",
                "Sub-pool of",
                Kind::Choice,
                "A sub-pool holds those of its parent's desktops that match its rules.",
            ),
            helped(
                "rules",
                "Rules",
                Kind::Json,
                "A list of {\"attribute\": \"name\" | \"os\" | … | {\"metadata\": \"key\"}, \
                 \"condition\": \"begins_with\" | \"ends_with\" | \"contains\" | \
                 \"does_not_contain\" | \"equals\" | \"matches_regex\", \"value\": \"…\"}. \
                 No rules: every desktop.",
            ),
            field("match_all", "A desktop must match every rule", Kind::Check),
            field("description", "Description", Kind::Text),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "parent"]
    }
    fn blank() -> Value {
        let mut pool = serde_json::to_value(Pool::new("")).unwrap_or_default();
        pool["id"] = Value::String(String::new());
        pool
    }
    fn options(s: &Store, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        if key != "parent" {
            return Ok(Vec::new());
        }
        let mut out = vec![(String::new(), "(none: a top pool)".to_string())];
        out.extend(
            resource::list_all::<Pool>(s)?
                .into_iter()
                .map(|p| (p.id, p.name)),
        );
        Ok(out)
    }
    fn extra_columns(
        s: &Store,
        items: &[Self],
    ) -> Result<(Vec<String>, Vec<Vec<String>>), StoreError> {
        let desktops: Vec<Desktop> = s.list::<Desktop>()?.into_iter().map(|(_, d)| d).collect();
        let counts = Membership::evaluate(items, &desktops).counts_all(&desktops);
        let rows = items
            .iter()
            .map(|p| {
                let c = counts.get(&p.id).copied().unwrap_or_default();
                vec![
                    c.total.to_string(),
                    c.assigned.to_string(),
                    c.unassigned.to_string(),
                    c.available.to_string(),
                ]
            })
            .collect();
        Ok((
            ["Total", "Assigned", "Unassigned", "Available"]
                .map(String::from)
                .to_vec(),
            rows,
        ))
    }
}

impl Screen for Desktop {
    const AREA: &'static str = "resources";
    const TITLE: &'static str = "Desktops";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "display_name",
                "Display name",
                Kind::Text,
                "What users see; empty: the name.",
            ),
            field("address", "Address", Kind::Text),
            helped(
                "port",
                "Port",
                Kind::OptNumber,
                "Empty: the protocol's usual port.",
            ),
            field("protocol", "Protocol", Kind::Select(PROTOCOLS)),
            field("os", "Operating system", Kind::Text),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &[
            "name",
            "address",
            "protocol",
            "os",
            "power_state",
            "assigned_user",
        ]
    }
    fn blank() -> Value {
        serde_json::json!({"name": "", "display_name": "", "address": "", "port": null,
            "protocol": "rdp", "os": ""})
    }
}

// ---- Views (what the templates read) ----------------------------------------------------------

#[derive(Debug, Clone, Serialize, Default)]
pub struct OptionView {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FieldView {
    pub key: String,
    pub label: String,
    /// `text`, `password`, `number`, `checkbox`, `select`, `textarea`.
    pub widget: String,
    pub value: String,
    pub checked: bool,
    pub options: Vec<OptionView>,
    pub error: String,
    pub help: String,
    /// A `<datalist>` of suggestions (id `{key}-list`).
    pub suggestions: Vec<String>,
}

/// Repeated row groups: each row a set of fields named `{key}_{row}`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RowsView {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<FieldView>>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ButtonView {
    pub label: String,
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FormView {
    pub action: String,
    pub multipart: bool,
    pub fields: Vec<FieldView>,
    pub rows: Option<RowsView>,
    pub submit: String,
    pub cancel: String,
    /// Posted after the form, each on its own (e.g. Test connection).
    pub buttons: Vec<ButtonView>,
    /// A delete confirmation instead of fields.
    pub confirm: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RowView {
    pub cells: Vec<String>,
    pub edit: String,
    pub delete: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ListView {
    pub columns: Vec<String>,
    pub rows: Vec<RowView>,
    /// "New …" link.
    pub new: String,
    pub new_label: String,
    /// A form under the list (CSV import, test login).
    pub form: Option<FormView>,
    pub form_title: String,
    /// Line-by-line refusals of that form.
    pub problems: Vec<String>,
}

// ---- Values ⇄ form fields ---------------------------------------------------------------------

fn at<'v>(value: &'v Value, key: &str) -> &'v Value {
    key.split('.').fold(value, |v, k| &v[k])
}

fn set_at(target: &mut Value, key: &str, v: Value) {
    let mut node = target;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Some(map) = node.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), v);
            return;
        }
        node = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A stored value as the text of its field.
fn shown(kind: Kind, v: &Value) -> String {
    match (kind, v) {
        (Kind::Password, _) | (_, Value::Null) => String::new(),
        (Kind::Hosts, Value::Array(items)) => items
            .iter()
            .map(|h| match (h["host"].as_str(), h["port"].as_u64()) {
                (Some(host), Some(port)) => {
                    HostPort::new(host, u16::try_from(port).unwrap_or(0)).to_string()
                }
                _ => h.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        (Kind::Lines, Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join("\n"),
        (Kind::Json, v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Bool(b)) => b.to_string(),
        (_, other) => other.to_string(),
    }
}

/// A value in a list cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Array(items) if items.iter().all(|i| i.is_string()) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => items
            .iter()
            .map(
                |i| match (&i["host"], &i["port"], &i["protocol"], &i["pool_id"]) {
                    (Value::String(h), Value::Number(p), _, _) => format!("{h}:{p}"),
                    (_, _, Value::String(p), _) => p.clone(),
                    (_, _, _, Value::String(p)) => p.clone(),
                    _ => i.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The submitted form as the JSON body the API would take; refused fields are named.
fn form_value(fields: &[Field], form: &HashMap<String, String>) -> Result<Value, Vec<FieldError>> {
    let mut value = Value::Object(Map::new());
    let mut errors = Vec::new();
    for f in fields {
        let Some(raw) = form.get(f.key).map(String::as_str) else {
            // Not on the form: an unticked box is false; anything else keeps its default.
            if f.kind == Kind::Check {
                set_at(&mut value, f.key, Value::Bool(false));
            }
            continue;
        };
        let parsed = match f.kind {
            Kind::Text | Kind::Password | Kind::Select(_) => Value::String(raw.to_string()),
            Kind::OptText | Kind::OptTextarea | Kind::Choice => {
                if raw.trim().is_empty() {
                    Value::Null
                } else {
                    Value::String(raw.to_string())
                }
            }
            Kind::Check => Value::Bool(form.contains_key(f.key)),
            Kind::Number | Kind::OptNumber => match raw.trim() {
                "" if f.kind == Kind::OptNumber => Value::Null,
                t => match t.parse::<u64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        errors.push(FieldError::new(
                            f.key,
                            format!("`{t}` is not a whole number"),
                        ));
                        continue;
                    }
                },
            },
            Kind::Lines => Value::Array(
                raw.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::String(l.to_string()))
                    .collect(),
            ),
            Kind::Hosts => {
                let mut hosts = Vec::new();
                let default_port = match form.get("security").map(String::as_str) {
                    Some("starttls" | "plain") => 389,
                    _ => 636,
                };
                for line in raw.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    match HostPort::parse(line, default_port) {
                        Ok(hp) => hosts.push(serde_json::json!({"host": hp.host, "port": hp.port})),
                        Err(reason) => errors.push(FieldError::new(f.key, reason)),
                    }
                }
                Value::Array(hosts)
            }
            Kind::Json => {
                match serde_json::from_str::<Value>(if raw.trim().is_empty() { "[]" } else { raw })
                {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(FieldError::new(f.key, format!("not valid JSON: {e}")));
                        continue;
                    }
                }
            }
        };
        set_at(&mut value, f.key, parsed);
    }
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// Whether a refused field (`entries[0].pool_id`) belongs to a form field (`entries`).
fn belongs(error_field: &str, key: &str) -> bool {
    error_field == key
        || error_field
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
        || key
            .strip_prefix(error_field)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The form's fields with values from a record (`source`) or from what was submitted, and
/// the refusals placed on their fields.
fn field_views<R: Screen>(
    s: &Store,
    source: &Value,
    submitted: Option<&HashMap<String, String>>,
    errors: &[FieldError],
) -> Result<Vec<FieldView>, StoreError> {
    let mut views = Vec::new();
    for f in R::fields() {
        let value = match submitted {
            Some(form) if f.kind != Kind::Password => form.get(f.key).cloned().unwrap_or_default(),
            _ => shown(f.kind, at(source, f.key)),
        };
        let checked = match submitted {
            Some(form) => form.contains_key(f.key),
            None => at(source, f.key).as_bool().unwrap_or(false),
        };
        let options: Vec<(String, String)> = match f.kind {
            Kind::Select(fixed) => fixed
                .iter()
                .map(|(v, l)| ((*v).to_string(), (*l).to_string()))
                .collect(),
            Kind::Choice => R::options(s, f.key)?,
            _ => Vec::new(),
        };
        let error = errors
            .iter()
            .filter(|e| belongs(&e.field, f.key))
            .map(|e| {
                if e.field == f.key {
                    e.reason.clone()
                } else {
                    e.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        views.push(FieldView {
            key: f.key.to_string(),
            label: f.label.to_string(),
            widget: f.kind.widget().to_string(),
            options: options
                .into_iter()
                .map(|(v, label)| OptionView {
                    selected: v == value,
                    value: v,
                    label,
                })
                .collect(),
            value,
            checked,
            error,
            help: f.help.to_string(),
            suggestions: Vec::new(),
        });
    }
    Ok(views)
}

/// The refusals no field shows, for the message above the form.
fn unplaced(fields: &[Field], errors: &[FieldError]) -> Vec<String> {
    errors
        .iter()
        .filter(|e| !fields.iter().any(|f| belongs(&e.field, f.key)))
        .map(ToString::to_string)
        .collect()
}

// ---- Generic pages ----------------------------------------------------------------------------

fn register<R: Screen>(cfg: &mut web::ServiceConfig) {
    let base = base::<R>();
    cfg.route(&base, web::get().to(list_page::<R>))
        .route(&format!("{base}/new"), web::get().to(new_page::<R>))
        .route(&format!("{base}/new"), web::post().to(create_submit::<R>))
        .route(&format!("{base}/{{id}}"), web::get().to(edit_page::<R>))
        .route(&format!("{base}/{{id}}"), web::post().to(update::<R>))
        .route(
            &format!("{base}/{{id}}/delete"),
            web::get().to(confirm_page::<R>),
        )
        .route(
            &format!("{base}/{{id}}/delete"),
            web::post().to(delete::<R>),
        );
}

#[derive(Deserialize)]
struct Notice {
    #[serde(default)]
    notice: String,
}

fn notice_text(code: &str) -> &'static str {
    match code {
        "created" => "Created.",
        "saved" => "Saved.",
        "deleted" => "Deleted.",
        "imported" => "Imported.",
        _ => "",
    }
}

async fn list_view<R: Screen>(state: &AppState) -> Result<ListView, HttpError> {
    state
        .store
        .call(|s| {
            let items = resource::list_all::<R>(s)?;
            let (extra_headers, extra) = R::extra_columns(s, &items)?;
            let labels: HashMap<&str, &str> =
                R::fields().iter().map(|f| (f.key, f.label)).collect();
            let mut columns: Vec<String> = R::columns()
                .iter()
                .map(|k| {
                    labels
                        .get(k)
                        .map_or_else(|| title_of(k), |l| (*l).to_string())
                })
                .collect();
            columns.extend(extra_headers);
            let base = base::<R>();
            let rows = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let v = serde_json::to_value(item).unwrap_or_default();
                    let mut cells: Vec<String> =
                        R::columns().iter().map(|k| cell(at(&v, k))).collect();
                    cells.extend(extra.get(i).cloned().unwrap_or_default());
                    RowView {
                        cells,
                        edit: format!("{base}/{}", item.id()),
                        delete: format!("{base}/{}/delete", item.id()),
                    }
                })
                .collect();
            Ok::<_, HttpError>(ListView {
                columns,
                rows,
                new: format!("{base}/new"),
                new_label: format!("New {}", R::KIND),
                form: None,
                form_title: String::new(),
                problems: Vec::new(),
            })
        })
        .await
}

fn title_of(key: &str) -> String {
    let words = key.replace(['_', '.'], " ");
    let mut chars = words.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

async fn list_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<Notice>,
) -> Result<HttpResponse, HttpError> {
    let mut view = list_view::<R>(&state).await?;
    if R::PATH == Desktop::PATH {
        view.form = Some(import_form());
        view.form_title = "Import from CSV".into();
    }
    let mut page = Page::new(
        &state,
        Some(&who),
        "resource_list.html",
        R::TITLE,
        &base::<R>(),
    )
    .await?;
    page.set("view", &view)
        .set("notice", notice_text(&query.notice));
    page.render(&state)
}

async fn form_page<R: Screen>(
    state: &AppState,
    who: &Console,
    id: Option<String>,
    submitted: Option<HashMap<String, String>>,
    errors: Vec<FieldError>,
    message: Option<(StatusCode, String)>,
) -> Result<HttpResponse, HttpError> {
    let base = base::<R>();
    let lookup = id.clone();
    let (source, fields) = state
        .store
        .call(move |s| {
            let source = match &lookup {
                Some(id) => {
                    let mut record = s.get::<R>(id)?.ok_or_else(|| HttpError::NoSuch {
                        kind: R::KIND,
                        id: id.clone(),
                    })?;
                    record.redact();
                    serde_json::to_value(&record).unwrap_or_default()
                }
                None => R::blank(),
            };
            let fields = field_views::<R>(s, &source, submitted.as_ref(), &errors)?;
            Ok::<_, HttpError>((source, fields))
        })
        .await?;
    let (title, action, submit) = match &id {
        Some(id) => (
            format!("{}: {}", R::TITLE, source["name"].as_str().unwrap_or(id)),
            format!("{base}/{id}"),
            "Save".to_string(),
        ),
        None => (
            format!("New {}", R::KIND),
            format!("{base}/new"),
            "Create".to_string(),
        ),
    };
    let buttons = match &id {
        Some(id) => R::buttons()
            .iter()
            .map(|(label, suffix)| ButtonView {
                label: (*label).to_string(),
                action: format!("{base}/{id}/{suffix}"),
            })
            .collect(),
        None => Vec::new(),
    };
    let view = FormView {
        action,
        multipart: false,
        fields,
        rows: None,
        submit,
        cancel: base.clone(),
        buttons,
        confirm: String::new(),
    };
    let mut page = Page::new(state, Some(who), "resource_form.html", &title, &base).await?;
    page.set("view", &view);
    let page = match message {
        Some((status, text)) => page.error(status, text),
        None => page,
    };
    page.render(state)
}

async fn new_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
) -> Result<HttpResponse, HttpError> {
    form_page::<R>(&state, &who, None, None, Vec::new(), None).await
}

async fn edit_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    form_page::<R>(
        &state,
        &who,
        Some(path.into_inner()),
        None,
        Vec::new(),
        None,
    )
    .await
}

/// Saves a submitted form through `resource::save`; refusals come back on the form.
async fn submit<R: Screen>(
    state: &AppState,
    who: &Console,
    id: Option<String>,
    form: HashMap<String, String>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let fields = R::fields();
    let value = match form_value(&fields, &form) {
        Ok(v) => v,
        Err(errors) => {
            let message = unplaced(&fields, &errors).join("; ");
            return form_page::<R>(
                state,
                who,
                id,
                Some(form),
                errors,
                Some((
                    StatusCode::BAD_REQUEST,
                    if message.is_empty() {
                        "Some fields are not valid: see below.".into()
                    } else {
                        message
                    },
                )),
            )
            .await;
        }
    };
    let (actor, path_id) = (who.actor(), id.clone());
    let saved = state
        .store
        .call(move |s| {
            Ok::<_, HttpError>(resource::save::<R>(s, &actor, path_id.as_deref(), value))
        })
        .await?;
    match saved {
        Ok(_) => {
            resource::apply_effect(state, R::EFFECT).await;
            let notice = if id.is_some() { "saved" } else { "created" };
            Ok(see_other(&format!("{}?notice={notice}", base::<R>())))
        }
        Err(HttpError::Invalid {
            summary,
            fields: errors,
        }) => {
            let mut message = unplaced(&fields, &errors).join("; ");
            if message.is_empty() {
                message = summary;
            }
            form_page::<R>(
                state,
                who,
                id,
                Some(form),
                errors,
                Some((StatusCode::BAD_REQUEST, message)),
            )
            .await
        }
        Err(e @ (HttpError::Conflict(_) | HttpError::MalformedJson(_))) => {
            use actix_web::ResponseError;
            let status = e.status_code();
            form_page::<R>(
                state,
                who,
                id,
                Some(form),
                Vec::new(),
                Some((status, e.to_string())),
            )
            .await
        }
        Err(e) => Err(e),
    }
}

async fn create_submit<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    form: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, HttpError> {
    submit::<R>(&state, &who, None, form.into_inner()).await
}

async fn update<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, HttpError> {
    submit::<R>(&state, &who, Some(path.into_inner()), form.into_inner()).await
}

async fn confirm_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let id = path.into_inner();
    let lookup = id.clone();
    let record = state
        .store
        .call(move |s| {
            s.get::<R>(&lookup)?.ok_or_else(|| HttpError::NoSuch {
                kind: R::KIND,
                id: lookup.clone(),
            })
        })
        .await?;
    let base = base::<R>();
    let view = FormView {
        action: format!("{base}/{id}/delete"),
        submit: "Delete".into(),
        cancel: base.clone(),
        confirm: format!(
            "Delete the {} `{}`? This cannot be undone.",
            R::KIND,
            record.label()
        ),
        ..FormView::default()
    };
    let mut page = Page::new(
        &state,
        Some(&who),
        "resource_form.html",
        &format!("Delete {}", R::KIND),
        &base,
    )
    .await?;
    page.set("view", &view);
    page.render(&state)
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn delete<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let (actor, id) = (who.actor(), path.into_inner());
    let done = state
        .store
        .call(move |s| Ok::<_, HttpError>(resource::delete::<R>(s, &actor, &id)))
        .await?;
    match done {
        Ok(_) => {
            resource::apply_effect(&state, R::EFFECT).await;
            Ok(see_other(&format!("{}?notice=deleted", base::<R>())))
        }
        Err(e @ HttpError::Conflict(_)) => {
            let view = list_view::<R>(&state).await?;
            let mut page = Page::new(
                &state,
                Some(&who),
                "resource_list.html",
                R::TITLE,
                &base::<R>(),
            )
            .await?;
            page.set("view", &view);
            page.failed(e).render(&state)
        }
        Err(e) => Err(e),
    }
}

// ---- Desktops: CSV import ---------------------------------------------------------------------

fn import_form() -> FormView {
    FormView {
        action: "/admin/resources/desktops/import".into(),
        multipart: true,
        fields: vec![
            FieldView {
                key: "csv".into(),
                label: "CSV text".into(),
                widget: "textarea".into(),
                help: "First line: the columns (name, address, and optionally display_name, \
                       port, protocol, os). All lines are imported, or none."
                    .into(),
                ..FieldView::default()
            },
            FieldView {
                key: "csv_file".into(),
                label: "or a CSV file".into(),
                widget: "file".into(),
                ..FieldView::default()
            },
        ],
        submit: "Import".into(),
        ..FormView::default()
    }
}

async fn import_desktops(
    state: web::Data<AppState>,
    who: Console,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = MultipartForm::read(multipart, 16 * 1024 * 1024).await?;
    who.check_csrf(&form.text("csrf"))?;
    let text = form.text_or_file("csv", "csv_file");
    let actor = who.actor();
    let result = state
        .store
        .call(move |s| Ok::<_, HttpError>(api::import_csv(s, &actor, &text)))
        .await?;
    match result {
        Ok(_) => {
            resource::apply_effect(&state, Effect::Membership).await;
            Ok(see_other("/admin/resources/desktops?notice=imported"))
        }
        Err(HttpError::Invalid { summary, fields }) => {
            let mut view = list_view::<Desktop>(&state).await?;
            view.form = Some(import_form());
            view.form_title = "Import from CSV".into();
            view.problems = fields.iter().map(ToString::to_string).collect();
            let mut page = Page::new(
                &state,
                Some(&who),
                "resource_list.html",
                Desktop::TITLE,
                &base::<Desktop>(),
            )
            .await?;
            page.set("view", &view);
            page.error(StatusCode::BAD_REQUEST, summary).render(&state)
        }
        Err(e) => Err(e),
    }
}

// ---- Authentication servers: test connection --------------------------------------------------

async fn test_connection(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let id = path.into_inner();
    let lookup = id.clone();
    let server = state
        .store
        .call(move |s| {
            s.get::<AuthServer>(&lookup)?.ok_or(HttpError::NoSuch {
                kind: "authentication server",
                id: lookup,
            })
        })
        .await?;
    let name = server.name.clone();
    let report = crate::auth::LdapDirectory::new(server)
        .test_connection()
        .await;
    let mut rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            vec![
                s.host.clone(),
                s.name.to_string(),
                if s.ok { "passed" } else { "FAILED" }.to_string(),
                s.detail.clone(),
            ]
        })
        .collect();
    rows.extend(
        report
            .warnings
            .iter()
            .map(|w| vec![String::new(), "Warning".into(), String::new(), w.clone()]),
    );
    let mut page = Page::new(
        &state,
        Some(&who),
        "table.html",
        &format!("Test connection: {name}"),
        &base::<AuthServer>(),
    )
    .await?;
    page.set("columns", &["Host", "Step", "Result", "Detail"])
        .set("rows", &rows)
        .set("actions", &Vec::<Value>::new());
    let page = if report.ok() {
        let mut p = page;
        p.set("notice", "Every step passed.");
        p
    } else {
        let failure = report
            .first_failure()
            .map(|s| format!("{} failed on {}: {}", s.name, s.host, s.detail))
            .unwrap_or_else(|| "No server address is configured.".into());
        page.error(StatusCode::OK, failure)
    };
    page.render(&state)
}

// ---- Assignments per authentication server ----------------------------------------------------

const ASSIGNMENTS: &str = "/admin/configuration/assignments";
/// Empty rows offered below the existing ones.
const SPARE_ROWS: usize = 3;

async fn assignments_page(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<Notice>,
) -> Result<HttpResponse, HttpError> {
    let rows = state
        .store
        .call(|s| {
            let mut rows = Vec::new();
            for server in resource::list_all::<AuthServer>(s)? {
                let table = s.get::<AssignmentTable>(&server.id)?.unwrap_or_default();
                rows.push(RowView {
                    cells: vec![
                        server.name.clone(),
                        server.domain.clone(),
                        table.rows.len().to_string(),
                        if table.otherwise.is_some() {
                            "yes".into()
                        } else {
                            "no access".into()
                        },
                    ],
                    edit: format!("{ASSIGNMENTS}/{}", server.id),
                    delete: String::new(),
                });
            }
            Ok::<_, HttpError>(rows)
        })
        .await?;
    let view = ListView {
        columns: ["Authentication server", "Domain", "Rows", "Everyone else"]
            .map(String::from)
            .to_vec(),
        rows,
        ..ListView::default()
    };
    let mut page = Page::new(
        &state,
        Some(&who),
        "resource_list.html",
        "Assignments",
        ASSIGNMENTS,
    )
    .await?;
    page.set("view", &view)
        .set("notice", notice_text(&query.notice));
    page.render(&state)
}

/// Choices for the assignment rows: locations, roles and policies, as (id, name).
type Choices = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, String)>,
);

fn select(key: String, value: &str, choices: &[(String, String)], none: &str) -> FieldView {
    let mut options = vec![OptionView {
        value: String::new(),
        label: none.to_string(),
        selected: value.is_empty(),
    }];
    options.extend(choices.iter().map(|(id, name)| OptionView {
        selected: id == value,
        value: id.clone(),
        label: name.clone(),
    }));
    if !value.is_empty() && !choices.iter().any(|(id, _)| id == value) {
        options.push(OptionView {
            value: value.to_string(),
            label: format!("{value} (missing)"),
            selected: true,
        });
    }
    FieldView {
        key,
        widget: "select".into(),
        value: value.to_string(),
        options,
        ..FieldView::default()
    }
}

fn row_views(
    rows: &[[String; 4]],
    groups: &[String],
    (locations, roles, policies): &Choices,
    errors: &[FieldError],
) -> Vec<Vec<FieldView>> {
    rows.iter()
        .enumerate()
        .map(|(i, [group, location, role, policy])| {
            let error_of = |what: &str| {
                errors
                    .iter()
                    .filter(|e| e.field == format!("rows[{i}].{what}"))
                    .map(|e| e.reason.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let mut group_field = FieldView {
                key: format!("group_{i}"),
                widget: "text".into(),
                value: group.clone(),
                suggestions: groups.to_vec(),
                ..FieldView::default()
            };
            group_field.help = "Empty: any group.".into();
            let mut location = select(format!("location_{i}"), location, locations, "(any)");
            location.error = error_of("location_id");
            let mut role = select(format!("role_{i}"), role, roles, "(remove row)");
            role.error = error_of("role_id");
            let mut policy = select(format!("policy_{i}"), policy, policies, "(remove row)");
            policy.error = error_of("policy_id");
            vec![group_field, location, role, policy]
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn assignment_page(
    state: &AppState,
    who: &Console,
    server_id: String,
    rows: Option<Vec<[String; 4]>>,
    otherwise: Option<(String, String)>,
    errors: Vec<FieldError>,
    message: Option<String>,
) -> Result<HttpResponse, HttpError> {
    let lookup = server_id.clone();
    let (server, table, choices) = state
        .store
        .call(move |s| {
            let server = s
                .get::<AuthServer>(&lookup)?
                .ok_or_else(|| HttpError::NoSuch {
                    kind: "authentication server",
                    id: lookup.clone(),
                })?;
            let table = s.get::<AssignmentTable>(&lookup)?.unwrap_or_default();
            let named = |items: Vec<(String, String)>| items;
            let choices: Choices = (
                named(
                    resource::list_all::<Location>(s)?
                        .into_iter()
                        .map(|l| (l.id, l.name))
                        .collect(),
                ),
                named(
                    resource::list_all::<Role>(s)?
                        .into_iter()
                        .map(|r| (r.id, r.name))
                        .collect(),
                ),
                named(
                    resource::list_all::<Policy>(s)?
                        .into_iter()
                        .map(|p| (p.id, p.name))
                        .collect(),
                ),
            );
            Ok::<_, HttpError>((server, table, choices))
        })
        .await?;
    // The groups the directory has, to pick from; a directory that does not answer leaves
    // the field free to type.
    let (groups, groups_note) = match api::server_groups(state, server_id.clone()).await {
        Ok(g) => {
            let note = format!("{} group(s) found on {}.", g.len(), server.name);
            (g, note)
        }
        Err(e) => (
            Vec::new(),
            format!("The groups could not be read from the directory: {e}"),
        ),
    };
    let mut rows = rows.unwrap_or_else(|| {
        table
            .rows
            .iter()
            .map(|r| {
                [
                    r.group.clone().unwrap_or_default(),
                    r.location_id.clone().unwrap_or_default(),
                    r.role_id.clone(),
                    r.policy_id.clone(),
                ]
            })
            .collect()
    });
    rows.extend(std::iter::repeat_with(Default::default).take(SPARE_ROWS));
    let otherwise = otherwise.or(table.otherwise.clone()).unwrap_or_default();
    let (_, roles, policies) = &choices;
    let mut fields = vec![
        select("otherwise_role".into(), &otherwise.0, roles, "(no access)"),
        select(
            "otherwise_policy".into(),
            &otherwise.1,
            policies,
            "(no access)",
        ),
    ];
    fields[0].label = "Everyone else: role".into();
    fields[1].label = "Everyone else: policy".into();
    fields[0].help = groups_note;
    for e in errors.iter().filter(|e| e.field.starts_with("otherwise")) {
        let at = usize::from(e.field.ends_with("policy_id"));
        fields[at].error = e.reason.clone();
    }
    let view = FormView {
        action: format!("{ASSIGNMENTS}/{server_id}"),
        fields,
        rows: Some(RowsView {
            headers: ["Group", "Location", "Role", "Policy"]
                .map(String::from)
                .to_vec(),
            rows: row_views(&rows, &groups, &choices, &errors),
        }),
        submit: "Save".into(),
        cancel: ASSIGNMENTS.into(),
        ..FormView::default()
    };
    let mut page = Page::new(
        state,
        Some(who),
        "resource_form.html",
        &format!("Assignments: {}", server.name),
        ASSIGNMENTS,
    )
    .await?;
    page.set("view", &view);
    let page = match message {
        Some(m) => page.error(StatusCode::BAD_REQUEST, m),
        None => page,
    };
    page.render(state)
}

async fn assignment_form(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    assignment_page(
        &state,
        &who,
        path.into_inner(),
        None,
        None,
        Vec::new(),
        None,
    )
    .await
}

async fn assignment_save(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, HttpError> {
    let form = form.into_inner();
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let server_id = path.into_inner();
    let text = |k: String| {
        form.get(&k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut rows: Vec<[String; 4]> = Vec::new();
    for i in 0.. {
        if !form.contains_key(&format!("role_{i}")) {
            break;
        }
        let row = [
            text(format!("group_{i}")),
            text(format!("location_{i}")),
            text(format!("role_{i}")),
            text(format!("policy_{i}")),
        ];
        // A row without role and policy is removed (the spare rows, left empty).
        if !(row[2].is_empty() && row[3].is_empty()) {
            rows.push(row);
        }
    }
    let otherwise = (
        text("otherwise_role".into()),
        text("otherwise_policy".into()),
    );
    let opt = |s: &str| (!s.is_empty()).then(|| Value::String(s.to_string()));
    let value = serde_json::json!({
        "rows": rows.iter().map(|[g, l, r, p]| serde_json::json!({
            "group": opt(g), "location_id": opt(l), "role_id": r, "policy_id": p,
        })).collect::<Vec<_>>(),
        "otherwise": if otherwise.0.is_empty() && otherwise.1.is_empty() {
            Value::Null
        } else {
            serde_json::json!([otherwise.0, otherwise.1])
        },
    });
    let (actor, id) = (who.actor(), server_id.clone());
    let saved = state
        .store
        .call(move |s| Ok::<_, HttpError>(api::save_assignments(s, &actor, &id, &value)))
        .await?;
    match saved {
        Ok(_) => Ok(see_other(&format!("{ASSIGNMENTS}?notice=saved"))),
        Err(HttpError::Invalid { summary, fields }) => {
            assignment_page(
                &state,
                &who,
                server_id,
                Some(rows),
                Some(otherwise),
                fields,
                Some(summary),
            )
            .await
        }
        Err(e) => Err(e),
    }
}

// ---- Users and test login ---------------------------------------------------------------------

fn test_login_form(values: &HashMap<String, String>) -> FormView {
    let text = |key: &str, label: &str, help: &str| FieldView {
        key: key.into(),
        label: label.into(),
        widget: "text".into(),
        value: values.get(key).cloned().unwrap_or_default(),
        help: help.into(),
        ..FieldView::default()
    };
    FormView {
        action: "/admin/resources/users/test".into(),
        fields: vec![
            text(
                "username",
                "User name",
                "As the user types it: user, DOMAIN\\user or user@domain. No password.",
            ),
            text("domain", "Domain", "Optional."),
            text(
                "address",
                "Client address",
                "Optional: the IP address the user connects from (default: yours).",
            ),
            text("name", "Client name", "Optional."),
            text("device_type", "Device type", "Optional."),
            text("os", "Client operating system", "Optional."),
        ],
        submit: "Test login".into(),
        ..FormView::default()
    }
}

async fn users_page(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    let users = state
        .store
        .call(|s| Ok::<_, HttpError>(s.list::<crate::broker::KnownUser>()?))
        .await?;
    let mut users: Vec<_> = users.into_iter().map(|(_, u)| u).collect();
    users.sort_by_key(|u| std::cmp::Reverse(u.last_sign_in));
    let view = ListView {
        columns: ["User", "Server", "Name", "Groups", "Last sign-in", "From"]
            .map(String::from)
            .to_vec(),
        rows: users
            .into_iter()
            .map(|u| RowView {
                cells: vec![
                    u.user.username,
                    u.user.server_id,
                    u.display_name,
                    u.groups.join(", "),
                    u.last_sign_in.format("%Y-%m-%d %H:%M UTC").to_string(),
                    u.last_address,
                ],
                ..RowView::default()
            })
            .collect(),
        form: Some(test_login_form(&HashMap::new())),
        form_title: "Test login".into(),
        ..ListView::default()
    };
    let mut page = Page::new(
        &state,
        Some(&who),
        "resource_list.html",
        "Users",
        "/admin/resources/users",
    )
    .await?;
    page.set("view", &view);
    page.render(&state)
}

async fn test_login(
    state: web::Data<AppState>,
    who: Console,
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, HttpError> {
    let form = form.into_inner();
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let get = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let request = api::TestLoginRequest {
        username: get("username").unwrap_or_default(),
        domain: get("domain"),
        client: api::ClientInput {
            address: get("address"),
            name: get("name"),
            device_type: get("device_type"),
            os: get("os"),
        },
    };
    let report = match api::run_test_login(&state, request, super::session::client_ip(&req)).await {
        Ok(r) => r,
        Err(HttpError::Invalid { summary, .. }) => {
            let mut page = Page::new(
                &state,
                Some(&who),
                "resource_list.html",
                "Test login",
                "/admin/resources/users",
            )
            .await?;
            page.set(
                "view",
                &ListView {
                    form: Some(test_login_form(&form)),
                    form_title: "Test login".into(),
                    ..ListView::default()
                },
            );
            return page.error(StatusCode::BAD_REQUEST, summary).render(&state);
        }
        Err(e) => return Err(e),
    };
    let (actor, detail) = (who.actor(), format!("test login for `{}`", report.username));
    state
        .store
        .call(move |s| crate::admin::audit(s, &actor, "user.test_login", detail, true))
        .await?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut fact = |k: &str, v: String| rows.push(vec![k.to_string(), v]);
    fact("User", report.username.clone());
    fact(
        "Client",
        [
            report.client.address.clone(),
            report.client.name.clone(),
            report.client.device_type.clone(),
            report.client.os.clone(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
    );
    fact(
        "Found by",
        report.server.as_ref().map_or_else(
            || "no authentication server".into(),
            |s| format!("{} ({})", s.name, s.id),
        ),
    );
    if report.found {
        fact("Display name", report.display_name.clone());
        fact("Groups", report.groups.join(", "));
    }
    if let Some(l) = &report.location {
        fact("Location", format!("{} ({})", l.name, l.id));
    }
    if let Some(a) = &report.assignment {
        fact(
            "Assignment row",
            match a.row {
                Some(n) => format!(
                    "row {n}: group {}, location {}",
                    a.group.as_deref().unwrap_or("any"),
                    a.location_id.as_deref().unwrap_or("any")
                ),
                None => "everyone else".into(),
            },
        );
    }
    if let Some(r) = &report.role {
        fact("Role", format!("{} ({})", r.name, r.id));
    }
    if let Some(p) = &report.policy {
        fact("Policy", format!("{} ({})", p.name, p.id));
    }
    for d in &report.desktops {
        fact(
            "Would be offered",
            format!(
                "{} from pool {}{}",
                d.display_name,
                d.pool_name,
                if d.yours { " (already theirs)" } else { "" }
            ),
        );
    }
    for n in &report.notices {
        fact("Notice", n.clone());
    }
    let mut page = Page::new(
        &state,
        Some(&who),
        "table.html",
        &format!("Test login: {}", report.username),
        "/admin/resources/users",
    )
    .await?;
    page.set("columns", &["", ""])
        .set("rows", &rows)
        .set("actions", &Vec::<Value>::new());
    let page = match &report.problem {
        Some(p) => page.error(StatusCode::OK, format!("{} ({})", p.message, p.code)),
        None => {
            let mut p = page;
            p.set(
                "notice",
                "Nothing was assigned: this is what the user would be offered now.",
            );
            p
        }
    };
    page.render(&state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Pages;

    #[test]
    fn a_form_becomes_the_api_s_body() {
        let mut form = HashMap::new();
        form.insert("name".to_string(), "Sleepy".to_string());
        form.insert("on_idle.action".to_string(), "suspend".to_string());
        form.insert("on_idle.after_minutes".to_string(), "30".to_string());
        form.insert("on_logout.after_minutes".to_string(), "x".to_string());
        let Err(errors) = form_value(&PowerPlan::fields(), &form) else {
            panic!("a bad number was accepted");
        };
        assert_eq!(errors[0].field, "on_logout.after_minutes");
        form.insert("on_logout.after_minutes".to_string(), "0".to_string());
        form.insert("on_logout.action".to_string(), "nothing".to_string());
        let value = form_value(&PowerPlan::fields(), &form).expect("valid");
        assert_eq!(value["on_idle"]["action"], "suspend");
        assert_eq!(value["on_idle"]["after_minutes"], 30);
        let plan: PowerPlan = serde_json::from_value({
            let mut v = value;
            v["id"] = Value::String("x".into());
            v
        })
        .expect("a power plan");
        assert_eq!(plan.on_idle.after_minutes, 30);

        let mut form = HashMap::new();
        form.insert(
            "hosts".to_string(),
            "dc1.example.com\n[::1]:1636\n".to_string(),
        );
        form.insert("aliases".to_string(), " example.com \n\n".to_string());
        form.insert("security".to_string(), "starttls".to_string());
        let value = form_value(&AuthServer::fields(), &form).expect("valid");
        assert_eq!(value["hosts"][0]["port"], 389);
        assert_eq!(value["hosts"][1]["host"], "::1");
        assert_eq!(value["aliases"], serde_json::json!(["example.com"]));
        assert_eq!(value["verify_tls"], false, "an unticked box is false");
        assert_eq!(value["ca_cert_pem"], Value::Null);
        // Shown back, the hosts read as typed.
        assert_eq!(
            shown(Kind::Hosts, &value["hosts"]),
            "dc1.example.com:389\n[::1]:1636"
        );
    }

    #[test]
    fn refusals_land_on_their_fields() {
        assert!(belongs("entries[0].pool_id", "entries"));
        assert!(belongs("on_idle", "on_idle.after_minutes"));
        assert!(!belongs("name", "display_name"));
        let errors = vec![
            FieldError::new("entries[0].pool_id", "there is no pool `x`"),
            FieldError::new("criteria", "no criteria"),
        ];
        assert_eq!(
            unplaced(&Policy::fields(), &errors),
            ["criteria: no criteria"]
        );
    }

    /// The base frame's variables, for rendering a page outside a request.
    fn frame() -> tera::Context {
        let mut c = tera::Context::new();
        c.insert("title", "Sample");
        c.insert("version", "0");
        c.insert("menu", &Vec::<Value>::new());
        c.insert("user", "admin");
        c.insert("csrf", "the-token");
        c.insert("licence_banner", "");
        c.insert("error", "");
        c.insert("notice", "");
        c.insert("can_edit", &true);
        c
    }

    #[test]
    fn the_list_and_form_templates_render() {
        let pages = Pages::new(None).expect("templates");
        let mut c = frame();
        let mut view = ListView {
            columns: vec!["Name".into(), "Total".into()],
            rows: vec![RowView {
                cells: vec!["Lab <1>".into(), "3".into()],
                edit: "/admin/configuration/pools/p1".into(),
                delete: "/admin/configuration/pools/p1/delete".into(),
            }],
            new: "/admin/configuration/pools/new".into(),
            new_label: "New pool".into(),
            form: Some(import_form()),
            form_title: "Import from CSV".into(),
            problems: vec!["line 3: bad port".into()],
        };
        c.insert("view", &view);
        let html = pages
            .render("resource_list.html", &c)
            .expect("list renders");
        assert!(html.contains("Lab &lt;1&gt;"), "{html}");
        assert!(html.contains("/admin/configuration/pools/p1/delete"));
        assert!(html.contains("enctype=\"multipart/form-data\""));
        assert!(html.contains("line 3: bad port"));
        assert!(html.contains("value=\"the-token\""));
        // A view-only role sees the list without the controls that change it.
        let mut view_only = c.clone();
        view_only.insert("can_edit", &false);
        let html = pages
            .render("resource_list.html", &view_only)
            .expect("view-only list renders");
        assert!(html.contains("Lab &lt;1&gt;"), "{html}");
        assert!(
            !html.contains("/admin/configuration/pools/p1/delete"),
            "{html}"
        );
        assert!(!html.contains("id=\"new\""), "{html}");
        assert!(!html.contains("enctype=\"multipart/form-data\""), "{html}");
        view.rows.clear();
        c.insert("view", &view);
        let html = pages.render("resource_list.html", &c).expect("empty list");
        assert!(html.contains("Nothing yet"), "{html}");

        let mut c = frame();
        let fields = vec![
            FieldView {
                key: "name".into(),
                label: "Name".into(),
                widget: "text".into(),
                value: "x\"y".into(),
                error: "give it a name".into(),
                ..FieldView::default()
            },
            FieldView {
                key: "kind".into(),
                label: "Kind".into(),
                widget: "select".into(),
                options: vec![OptionView {
                    value: "a".into(),
                    label: "A".into(),
                    selected: true,
                }],
                ..FieldView::default()
            },
            FieldView {
                key: "ok".into(),
                label: "OK".into(),
                widget: "checkbox".into(),
                checked: true,
                ..FieldView::default()
            },
            FieldView {
                key: "rules".into(),
                label: "Rules".into(),
                widget: "textarea".into(),
                value: "[]".into(),
                ..FieldView::default()
            },
        ];
        let view = FormView {
            action: "/admin/x/new".into(),
            fields: fields.clone(),
            rows: Some(RowsView {
                headers: vec!["Group".into()],
                rows: vec![vec![FieldView {
                    key: "group_0".into(),
                    widget: "text".into(),
                    suggestions: vec!["staff".into()],
                    ..FieldView::default()
                }]],
            }),
            submit: "Create".into(),
            cancel: "/admin/x".into(),
            buttons: vec![ButtonView {
                label: "Test connection".into(),
                action: "/admin/x/1/test".into(),
            }],
            ..FormView::default()
        };
        c.insert("view", &view);
        let html = pages
            .render("resource_form.html", &c)
            .expect("form renders");
        assert!(html.contains("value=\"x&quot;y\""), "{html}");
        assert!(html.contains("give it a name"));
        assert!(html.contains("<option value=\"a\" selected>"), "{html}");
        assert!(html.contains("checked"));
        assert!(html.contains("<datalist id=\"group_0-list\">"), "{html}");
        assert!(html.contains("/admin/x/1/test"));
        assert_eq!(html.matches("name=\"csrf\"").count(), 3, "{html}");

        let mut c = frame();
        let view = FormView {
            action: "/admin/x/1/delete".into(),
            confirm: "Delete the pool `Lab`?".into(),
            submit: "Delete".into(),
            cancel: "/admin/x".into(),
            ..FormView::default()
        };
        c.insert("view", &view);
        let html = pages
            .render("resource_form.html", &c)
            .expect("confirm renders");
        assert!(html.contains("Delete the pool `Lab`?"));
        assert!(!html.contains("<textarea"));
    }
}
