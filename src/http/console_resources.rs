//! The console pages of the configuration resources: one list page, one form, one delete
//! confirmation, driven by a per-resource field list ([`Screen`]), plus the pages that do not
//! fit that shape (assignments per authentication server, users with test login, the desktop
//! CSV import, an authentication server's connection test).
//!
//! Nested lists (a policy's pool entries, a pool's rules, a protocol plan's protocols, an
//! assignment table's rows) are declared here, per resource, as row groups ([`Rows`]); the
//! form shape itself, with its Add / Remove / Move buttons that work without scripts, is
//! `forms`'s and the same on every page.
//!
//! Saving goes through the same functions as the API (`resource::save`, `resource::delete`,
//! `api::save_assignments`, `api::import_csv`, `api::run_test_login`), so the console and the
//! API validate, refuse and audit alike: a form is saved whole or not at all. Every form
//! carries the session's CSRF token. No business rules here, and no sled.

use std::collections::HashMap;

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use super::api;
use super::forms::{
    self, ButtonView, Field, FieldView, FormView, Kind, MultipartForm, Rows, Values, at, field,
    helped, same,
};
use super::pages::{NoticeQuery, Page, see_other};
use super::resource::{self, Effect, Resource};
use super::session::Console;
use super::session::CsrfOnly;
use super::{AppState, HttpError};
use crate::auth::DirectoryGroup;
use crate::model::FieldError;
use crate::model::desktop::Desktop;
use crate::model::directory::AuthServer;
use crate::model::gateway::GatewayRecord;
use crate::model::location::Location;
use crate::model::plan::{DEFAULT_PLAN_ID, PowerPlan, ProtocolPlan, ReleasePlan};
use crate::model::policy::{AssignmentTable, Policy, names_a_dn};
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
    register::<GatewayRecord>(cfg);
    register::<crate::model::center::Center>(cfg);
}

// ---- Declarations -----------------------------------------------------------------------------

/// A resource with console pages.
pub trait Screen: Resource {
    /// The menu area's path segment: `setup`, `configuration`, `resources`.
    const AREA: &'static str;
    /// The page title: "Authentication Servers".
    const TITLE: &'static str;
    /// Fields of the form, in order; a nested list is one [`Kind::Rows`] field.
    fn fields() -> Vec<Field>;
    /// Keys shown as list columns.
    fn columns() -> &'static [&'static str];
    /// The new-record form's starting values.
    fn blank() -> Value;
    /// The choices of a [`Kind::Choice`], [`Kind::Pick`] or [`Kind::Suggest`] field as (value,
    /// label); `key` is the field's (`parent`), or for a column of a row group the group's and
    /// the column's (`entries.pool_id`).
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
    /// Tables shown under a stored record's form (a desktop's history).
    fn details(_s: &Store, _id: &str) -> Result<Vec<DetailView>, StoreError> {
        Ok(Vec::new())
    }
}

/// A table under a record's form: a title, columns, rows of text, and a line when empty.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DetailView {
    pub id: String,
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub empty: String,
}

/// A secret made just now (an agent token), shown once above the form.
#[derive(Debug, Clone, Serialize)]
pub struct ShownSecret {
    pub title: String,
    pub value: String,
    pub help: String,
}

fn base<R: Screen>() -> String {
    format!("/admin/{}/{}", R::AREA, R::PATH)
}

pub(crate) const PROTOCOLS: &[(&str, &str)] = &[
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
            helped(
                "group_base_dn",
                "Group base DN",
                Kind::Text,
                "Where groups are searched for, e.g. ou=groups,dc=example,dc=com. Empty: the base DN.",
            ),
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

/// The protocols of a protocol plan, one row each.
static PROTOCOL_ROWS: Rows = Rows {
    item: "Protocol",
    columns: &[
        field("protocol", "Protocol", Kind::Select(PROTOCOLS)),
        helped(
            "priority",
            "Priority",
            Kind::Number,
            "1 is tried first; 0 turns the protocol off.",
        ),
        helped(
            "file_lines",
            "Connection file lines",
            Kind::Lines,
            "Added to the .rdp or .vv file, one setting per line.",
        ),
        helped(
            "command_line",
            "Command-line parameters",
            Kind::Text,
            "Extra parameters for the client.",
        ),
        field("via_gateway", "Through the gateway", Kind::Check),
        helped(
            "gateway_method",
            "Gateway method",
            Kind::Select(&[
                ("tunnel", "WebSocket tunnel"),
                ("forwarded_port", "Forwarded port"),
            ]),
            "A forwarded port suits native clients that cannot use a tunnel.",
        ),
    ],
    blank: || {
        serde_json::json!({"protocol": "rdp", "priority": 1, "file_lines": [],
            "command_line": "", "via_gateway": false, "gateway_method": "tunnel"})
    },
    to_form: same,
    from_form: same,
};

impl Screen for ProtocolPlan {
    const AREA: &'static str = "configuration";
    const TITLE: &'static str = "Protocol Plans";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "protocols",
                "Protocols",
                Kind::Rows(&PROTOCOL_ROWS),
                "One row per protocol; the client tries them by priority.",
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
                "Empty: never. The desktop's agent logs the user out (it needs an agent token); \
                 the release after logout follows when the agent reports it.",
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

const PICK_ORDERS: &[(&str, &str)] = &[
    ("random", "Random"),
    ("least_recently_used", "Least recently used first"),
    ("by_name", "By name"),
];

/// The pools a policy offers, one row each, tried in order.
static POLICY_ENTRY_ROWS: Rows = Rows {
    item: "Entry",
    columns: &[
        field("pool_id", "Pool", Kind::Pick),
        helped(
            "offer",
            "Desktops to offer",
            Kind::Number,
            "How many desktops of the pool a user is offered (1 or more).",
        ),
        field("running_only", "Only running desktops", Kind::Check),
        field("order", "Pick order", Kind::Select(PICK_ORDERS)),
        field("protocol_plan", "Protocol plan", Kind::Pick),
        field("power_plan", "Power plan", Kind::Pick),
        field("release_plan", "Release plan", Kind::Pick),
    ],
    blank: || {
        serde_json::json!({"pool_id": "", "offer": 1, "running_only": false,
            "order": "random", "protocol_plan": DEFAULT_PLAN_ID,
            "power_plan": DEFAULT_PLAN_ID, "release_plan": DEFAULT_PLAN_ID})
    },
    to_form: same,
    from_form: same,
};

/// (id, name) of every record of a kind, for a select.
fn choices<R: Resource>(s: &Store) -> Result<Vec<(String, String)>, StoreError> {
    Ok(resource::list_all::<R>(s)?
        .into_iter()
        .map(|r| (r.id().to_string(), r.label().to_string()))
        .collect())
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
                Kind::Rows(&POLICY_ENTRY_ROWS),
                "Tried in order, from the top.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "entries"]
    }
    fn blank() -> Value {
        serde_json::json!({"name": "", "entries": []})
    }
    fn options(s: &Store, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        match key {
            "entries.pool_id" => choices::<Pool>(s),
            "entries.protocol_plan" => choices::<ProtocolPlan>(s),
            "entries.power_plan" => choices::<PowerPlan>(s),
            "entries.release_plan" => choices::<ReleasePlan>(s),
            _ => Ok(Vec::new()),
        }
    }
}

/// A rule's attribute: each of [`Attribute::SIMPLE`], then a metadata key (typed beside it).
const ATTRIBUTES: &[(&str, &str)] = &[
    ("name", "Name"),
    ("display_name", "Display name"),
    ("address", "Address"),
    ("os", "OS"),
    ("protocol", "Protocol"),
    ("center", "Center"),
    ("image", "Image"),
    ("flavor", "Flavor"),
    ("power_state", "Power state"),
    ("metadata", "Metadata key…"),
];

/// Each of [`Condition::ALL`].
const CONDITIONS: &[(&str, &str)] = &[
    ("begins_with", "begins with"),
    ("ends_with", "ends with"),
    ("contains", "contains"),
    ("does_not_contain", "does not contain"),
    ("equals", "equals"),
    ("matches_regex", "matches regular expression"),
];

/// A pool's rules, one row each.
static POOL_RULE_ROWS: Rows = Rows {
    item: "Rule",
    columns: &[
        field("attribute", "Attribute", Kind::Select(ATTRIBUTES)),
        helped(
            "metadata_key",
            "Metadata key",
            Kind::OptText,
            "Only for the attribute \"Metadata key…\".",
        ),
        field("condition", "Condition", Kind::Select(CONDITIONS)),
        helped(
            "value",
            "Value",
            Kind::Text,
            "Compared ignoring case; a regular expression matches anywhere unless anchored.",
        ),
    ],
    blank: || serde_json::json!({"attribute": "name", "condition": "begins_with", "value": ""}),
    to_form: rule_to_form,
    from_form: rule_from_form,
};

/// `{"attribute": {"metadata": "dept"}}` as the row's `attribute: metadata, metadata_key: dept`.
fn rule_to_form(mut rule: Value) -> Value {
    if let Some(key) = rule["attribute"]["metadata"].as_str() {
        rule["metadata_key"] = Value::String(key.to_string());
        rule["attribute"] = Value::String("metadata".into());
    }
    rule
}

/// The row's `attribute: metadata, metadata_key: dept` as `{"attribute": {"metadata": "dept"}}`.
fn rule_from_form(mut rule: Value) -> Value {
    let key = rule
        .as_object_mut()
        .and_then(|m| m.remove("metadata_key"))
        .unwrap_or_default();
    if rule["attribute"] == "metadata" {
        let key = key.as_str().unwrap_or_default().trim().to_string();
        rule["attribute"] = serde_json::json!({ "metadata": key });
    }
    rule
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
            field(
                "match_all",
                "A desktop belongs when it matches",
                Kind::Either("every rule (all)", "at least one rule (any)"),
            ),
            helped(
                "rules",
                "Rules",
                Kind::Rows(&POOL_RULE_ROWS),
                "No rules: every desktop (of the parent pool).",
            ),
            field("description", "Description", Kind::Text),
            helped(
                "provisioning.enabled",
                "Provisioning: enabled",
                Kind::Check,
                "Create new machines in a cloud center when the pool runs low.",
            ),
            field(
                "provisioning.start_below",
                "Provisioning: start when unassigned desktops drop below",
                Kind::Number,
            ),
            helped(
                "provisioning.stop_at",
                "Provisioning: stop when the pool's desktops reach",
                Kind::Number,
                "Machines being created count, so a burst of sign-ins never overshoots.",
            ),
            field("provisioning.center", "Provisioning: center", Kind::Choice),
            helped(
                "provisioning.name",
                "Provisioning: machine name",
                Kind::Text,
                "{SEQUENCE} is replaced by the machine's number, e.g. vdi-{SEQUENCE}.",
            ),
            helped(
                "provisioning.display_name",
                "Provisioning: display name",
                Kind::Text,
                "May use {SEQUENCE}; empty: the machine name.",
            ),
            field(
                "provisioning.sequence_start",
                "Provisioning: first number",
                Kind::Number,
            ),
            helped(
                "provisioning.sequence_width",
                "Provisioning: digits",
                Kind::Number,
                "Numbers are zero-padded to this width (3: 001).",
            ),
            helped(
                "provisioning.availability_zone",
                "Provisioning: availability zone",
                Kind::Text,
                "Empty: the cloud's default.",
            ),
            field(
                "provisioning.flavor",
                "Provisioning: flavor (id)",
                Kind::Text,
            ),
            field("provisioning.image", "Provisioning: image (id)", Kind::Text),
            field(
                "provisioning.new_volume.enabled",
                "Provisioning: create a new volume",
                Kind::Check,
            ),
            field(
                "provisioning.new_volume.size_gb",
                "Provisioning: volume size (GB)",
                Kind::Number,
            ),
            helped(
                "provisioning.new_volume.volume_type",
                "Provisioning: volume type",
                Kind::Text,
                "Empty: the cloud's default.",
            ),
            field(
                "provisioning.new_volume.delete_on_termination",
                "Provisioning: delete the volume with the instance",
                Kind::Check,
            ),
            helped(
                "provisioning.networks",
                "Provisioning: networks (ids)",
                Kind::Lines,
                "One network id per line; none: no network.",
            ),
            helped(
                "provisioning.security_groups",
                "Provisioning: security groups",
                Kind::Lines,
                "One per line; none: the project's default group.",
            ),
            helped(
                "provisioning.metadata",
                "Provisioning: metadata",
                Kind::Lines,
                "One key=value per line.",
            ),
            field(
                "provisioning.deletable",
                "Provisioning: initialize newly provisioned desktops as deletable",
                Kind::Check,
            ),
            helped(
                "provisioning.join_domain",
                "Provisioning: join to domain",
                Kind::Text,
                "Empty: none. Names must then be valid computer names: at most 15 letters, digits or -.",
            ),
            field(
                "provisioning.failure_limit",
                "Provisioning: turn off after this many failures in a row",
                Kind::Number,
            ),
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
        if key == "provisioning.center" {
            let mut out = vec![(String::new(), "(choose a center)".to_string())];
            let mut centers: Vec<(String, String)> = s
                .list::<crate::model::center::Center>()?
                .into_iter()
                .map(|(_, c)| (c.id, c.name))
                .collect();
            centers.sort_by_key(|a| a.1.to_lowercase());
            out.extend(centers);
            return Ok(out);
        }
        if key != "parent" {
            return Ok(Vec::new());
        }
        let mut out = vec![(String::new(), "(none: a top pool)".to_string())];
        out.extend(choices::<Pool>(s)?);
        Ok(out)
    }
    fn extra_columns(
        s: &Store,
        items: &[Self],
    ) -> Result<(Vec<String>, Vec<Vec<String>>), StoreError> {
        let desktops: Vec<Desktop> = s.values::<Desktop>()?;
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
                    provisioning_status(&p.provisioning),
                ]
            })
            .collect();
        Ok((
            [
                "Total",
                "Assigned",
                "Unassigned",
                "Available",
                "Provisioning",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ))
    }
}

/// "off", "turned off: <the cloud's error>", or "on (N–M): <last result>".
fn provisioning_status(p: &crate::model::provisioning::Provisioning) -> String {
    match (&p.disabled_reason, p.enabled) {
        (Some(reason), false) => format!("turned off after failures: {reason}"),
        (_, false) => "off".into(),
        (_, true) if p.last_result.is_empty() => {
            format!("on (below {} up to {})", p.start_below, p.stop_at)
        }
        (_, true) => format!(
            "on (below {} up to {}): {}",
            p.start_below, p.stop_at, p.last_result
        ),
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
    /// Actions on the machine of a desktop a center inventories (`http::centers`), and the
    /// desktop agent's token (`http::agent`).
    fn buttons() -> &'static [(&'static str, &'static str)] {
        &[
            ("Start", "actions/start"),
            ("Shut down", "actions/shutdown"),
            ("Reboot", "actions/reboot"),
            ("Hard reboot", "actions/hard_reboot"),
            ("Suspend", "actions/suspend"),
            ("Resume", "actions/resume"),
            ("Delete the machine", "actions/delete"),
            ("Issue agent token", "agent-token"),
        ]
    }
    fn details(s: &Store, id: &str) -> Result<Vec<DetailView>, StoreError> {
        super::agent::desktop_details(s, id)
    }
}

// ---- Views (what the templates read) ----------------------------------------------------------

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

// ---- List cells ------------------------------------------------------------------------------

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

/// What the resource pages say after a change.
const NOTICES: &[(&str, &str)] = &[
    ("created", "Created."),
    ("saved", "Saved."),
    ("deleted", "Deleted."),
    ("imported", "Imported."),
];

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
    query: web::Query<NoticeQuery>,
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
        .set("notice", query.sentence(NOTICES));
    page.render(&state)
}

/// What a form page says above the form.
pub(super) enum Said {
    Nothing,
    /// A row-group button changed the form; nothing is saved yet.
    Pending,
    /// The form was refused; nothing was saved.
    Refused(StatusCode, String),
    /// A secret was made: shown once, with a notice.
    Shown(ShownSecret, String),
}

impl Said {
    fn apply(self, mut page: Page, submit: &str) -> Page {
        match self {
            Said::Nothing => page,
            Said::Pending => {
                page.set(
                    "notice",
                    &format!("Not saved yet: press {submit} to keep the changes."),
                );
                page
            }
            Said::Refused(status, text) => page.error(status, text),
            Said::Shown(secret, notice) => {
                page.set("secret", &secret).set("notice", &notice);
                page
            }
        }
    }
}

/// The form of a new record (`id` None) or of a stored one: its stored values, or what was
/// submitted, with the refusals on their fields.
pub(super) async fn form_page<R: Screen>(
    state: &AppState,
    who: &Console,
    id: Option<String>,
    submitted: Option<Values>,
    errors: Vec<FieldError>,
    said: Said,
) -> Result<HttpResponse, HttpError> {
    let base = base::<R>();
    let lookup = id.clone();
    let (source, fields, details) = state
        .store
        .call(move |s| {
            let details = match &lookup {
                Some(id) => R::details(s, id)?,
                None => Vec::new(),
            };
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
            let declared = R::fields();
            let values = submitted.unwrap_or_else(|| forms::form_of(&declared, &source));
            let fields = forms::field_views(&declared, &values, &errors, |key| R::options(s, key))?;
            Ok::<_, HttpError>((source, fields, details))
        })
        .await?;
    let (title, action, submit) = match &id {
        Some(id) => (
            format!("{}: {}", R::TITLE, source["name"].as_str().unwrap_or(id)),
            format!("{base}/{id}"),
            "Save",
        ),
        None => (format!("New {}", R::KIND), format!("{base}/new"), "Create"),
    };
    let mut view = FormView::new(action, fields, submit, &base);
    if let Some(id) = &id {
        view.buttons = R::buttons()
            .iter()
            .map(|(label, suffix)| ButtonView {
                label: (*label).to_string(),
                action: format!("{base}/{id}/{suffix}"),
            })
            .collect();
    }
    let mut page = Page::new(state, Some(who), "resource_form.html", &title, &base).await?;
    page.set("view", &view).set("details", &details);
    said.apply(page, submit).render(state)
}

async fn new_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
) -> Result<HttpResponse, HttpError> {
    form_page::<R>(&state, &who, None, None, Vec::new(), Said::Nothing).await
}

async fn edit_page<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let id = Some(path.into_inner());
    form_page::<R>(&state, &who, id, None, Vec::new(), Said::Nothing).await
}

/// Handles a submitted form: a row-group button changes the form and shows it again;
/// otherwise the form is saved through `resource::save`, whole or not at all, and refusals
/// come back on the form with what was typed.
async fn submit<R: Screen>(
    state: &AppState,
    who: &Console,
    id: Option<String>,
    mut form: Values,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let fields = R::fields();
    forms::normalize(&fields, &mut form);
    if forms::apply_row_action(&fields, &mut form)? {
        return form_page::<R>(state, who, id, Some(form), Vec::new(), Said::Pending).await;
    }
    let saved = match forms::form_value(&fields, &form) {
        Ok(value) => {
            let (actor, path_id) = (who.actor(), id.clone());
            let licence = state.licence_state().await?;
            state
                .store
                .call(move |s| {
                    Ok::<_, HttpError>(resource::save_licensed::<R>(
                        s,
                        &actor,
                        path_id.as_deref(),
                        value,
                        Some(&licence),
                    ))
                })
                .await?
        }
        Err(errors) => Err(resource::invalid(R::KIND, errors)),
    };
    match saved {
        Ok(record) => {
            resource::apply_effect(state, R::EFFECT).await;
            record.after_save(state);
            let notice = if id.is_some() { "saved" } else { "created" };
            Ok(see_other(&format!("{}?notice={notice}", base::<R>())))
        }
        Err(HttpError::Invalid {
            summary,
            fields: errors,
        }) => {
            let said = Said::Refused(StatusCode::BAD_REQUEST, summary);
            form_page::<R>(state, who, id, Some(form), errors, said).await
        }
        Err(e @ (HttpError::Conflict(_) | HttpError::MalformedJson(_))) => {
            use actix_web::ResponseError;
            let said = Said::Refused(e.status_code(), e.to_string());
            form_page::<R>(state, who, id, Some(form), Vec::new(), said).await
        }
        Err(e) => Err(e),
    }
}

async fn create_submit<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    form: web::Form<Values>,
) -> Result<HttpResponse, HttpError> {
    submit::<R>(&state, &who, None, form.into_inner()).await
}

async fn update<R: Screen>(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<Values>,
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

async fn assignments_page(
    state: web::Data<AppState>,
    who: Console,
    query: web::Query<NoticeQuery>,
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
        .set("notice", query.sentence(NOTICES));
    page.render(&state)
}

/// The rows of an assignment table, tried in order.
static ASSIGNMENT_ROWS: Rows = Rows {
    item: "Row",
    columns: &[
        helped(
            "group",
            "Group",
            Kind::Suggest,
            "The group's DN, picked from the list: only that group matches. A bare name \
             (no `=`) matches every group of that name under the search base. Empty: any \
             group.",
        ),
        helped(
            "location_id",
            "Location",
            Kind::Choice,
            "Empty: any location.",
        ),
        field("role_id", "Role", Kind::Pick),
        field("policy_id", "Policy", Kind::Pick),
    ],
    blank: || serde_json::json!({"group": null, "location_id": null, "role_id": "", "policy_id": ""}),
    to_form: same,
    from_form: same,
};

/// The assignment form. `otherwise` is the table's (role, policy) pair as an object, so that
/// refusals of `otherwise.role_id` land on their field.
fn assignment_fields() -> Vec<Field> {
    vec![
        helped(
            "rows",
            "Rows",
            Kind::Rows(&ASSIGNMENT_ROWS),
            "Tried in order: the first row whose group the user is in and whose location \
             matches gives the role and the policy.",
        ),
        helped(
            "otherwise.role_id",
            "Everyone else: role",
            Kind::Choice,
            "For users no row matches. None: they get no access.",
        ),
        field("otherwise.policy_id", "Everyone else: policy", Kind::Choice),
    ]
}

/// Choices of the assignment form: the directory's groups (offered by DN, labelled with
/// their name), and locations, roles and policies as (id, name).
struct AssignmentChoices {
    groups: Vec<DirectoryGroup>,
    locations: Vec<(String, String)>,
    roles: Vec<(String, String)>,
    policies: Vec<(String, String)>,
}

impl AssignmentChoices {
    fn of(&self, key: &str) -> Vec<(String, String)> {
        let with = |none: &str, items: &[(String, String)]| {
            let mut out = vec![(String::new(), none.to_string())];
            out.extend_from_slice(items);
            out
        };
        match key {
            "rows.group" => self
                .groups
                .iter()
                .map(|g| (g.dn.clone(), g.name.clone()))
                .collect(),
            "rows.location_id" => with("(any)", &self.locations),
            "rows.role_id" => self.roles.clone(),
            "rows.policy_id" => self.policies.clone(),
            "otherwise.role_id" => with("(no access)", &self.roles),
            "otherwise.policy_id" => with("(no access)", &self.policies),
            _ => Vec::new(),
        }
    }
}

/// The table as its form's values.
fn assignment_values(table: &AssignmentTable) -> Values {
    let mut value = serde_json::to_value(table).unwrap_or_default();
    value["otherwise"] = match &table.otherwise {
        Some((role, policy)) => serde_json::json!({"role_id": role, "policy_id": policy}),
        None => Value::Null,
    };
    forms::form_of(&assignment_fields(), &value)
}

/// The submitted form as the table's JSON body: "everyone else" needs both a role and a
/// policy, or neither.
fn assignment_body(values: &Values) -> Result<Value, Vec<FieldError>> {
    let mut value = forms::form_value(&assignment_fields(), values)?;
    let role = value["otherwise"]["role_id"].as_str().map(str::to_string);
    let policy = value["otherwise"]["policy_id"].as_str().map(str::to_string);
    value["otherwise"] = match (role, policy) {
        (None, None) => Value::Null,
        (Some(role), Some(policy)) => serde_json::json!([role, policy]),
        (None, Some(_)) => {
            return Err(vec![FieldError::new(
                "otherwise.role_id",
                "choose a role too, or no access for both",
            )]);
        }
        (Some(_), None) => {
            return Err(vec![FieldError::new(
                "otherwise.policy_id",
                "choose a policy too, or no access for both",
            )]);
        }
    };
    Ok(value)
}

/// A warning naming the rows whose group is a bare name, which any group of that name
/// matches; empty when there are none.
fn by_name_note(values: &Values) -> String {
    let rows: Vec<String> = (0..forms::row_count(values, "rows"))
        .filter_map(|i| {
            let group = values.get(&format!("rows[{i}].group"))?.trim();
            (!group.is_empty() && !names_a_dn(group)).then(|| format!("{} (`{group}`)", i + 1))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "Row(s) {} name a group by name only: any group of that name anywhere under the search \
         base matches, including one someone else created. Pick the group's DN instead.",
        rows.join(", ")
    )
}

/// One authentication server's assignment form: the stored table, or what was submitted.
async fn assignment_page(
    state: &AppState,
    who: &Console,
    server_id: String,
    submitted: Option<Values>,
    errors: Vec<FieldError>,
    said: Said,
) -> Result<HttpResponse, HttpError> {
    let lookup = server_id.clone();
    let (server, table, mut choices) = state
        .store
        .call(move |s| {
            let server = s
                .get::<AuthServer>(&lookup)?
                .ok_or_else(|| HttpError::NoSuch {
                    kind: "authentication server",
                    id: lookup.clone(),
                })?;
            let table = s.get::<AssignmentTable>(&lookup)?.unwrap_or_default();
            let choices = AssignmentChoices {
                groups: Vec::new(),
                locations: choices::<Location>(s)?,
                roles: choices::<Role>(s)?,
                policies: choices::<Policy>(s)?,
            };
            Ok::<_, HttpError>((server, table, choices))
        })
        .await?;
    // The groups the directory has, to pick from; a directory that does not answer leaves
    // the field free to type.
    let groups_note = match api::server_groups(state, server_id.clone()).await {
        Ok(g) => {
            let note = format!("{} group(s) found on {}.", g.len(), server.name);
            choices.groups = g;
            note
        }
        Err(e) => format!("The groups could not be read from the directory: {e}"),
    };
    let values = submitted.unwrap_or_else(|| assignment_values(&table));
    let mut fields = forms::field_views(&assignment_fields(), &values, &errors, |key| {
        Ok::<_, HttpError>(choices.of(key))
    })?;
    if let Some(rows) = fields.first_mut() {
        rows.help = [rows.help.as_str(), &groups_note, &by_name_note(&values)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let view = FormView::new(
        format!("{ASSIGNMENTS}/{server_id}"),
        fields,
        "Save",
        ASSIGNMENTS,
    );
    let mut page = Page::new(
        state,
        Some(who),
        "resource_form.html",
        &format!("Assignments: {}", server.name),
        ASSIGNMENTS,
    )
    .await?;
    page.set("view", &view);
    said.apply(page, "Save").render(state)
}

async fn assignment_form(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let id = path.into_inner();
    assignment_page(&state, &who, id, None, Vec::new(), Said::Nothing).await
}

async fn assignment_save(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<Values>,
) -> Result<HttpResponse, HttpError> {
    let mut form = form.into_inner();
    who.check_csrf(form.get("csrf").map(String::as_str).unwrap_or_default())?;
    let server_id = path.into_inner();
    let fields = assignment_fields();
    forms::normalize(&fields, &mut form);
    if forms::apply_row_action(&fields, &mut form)? {
        let said = Said::Pending;
        return assignment_page(&state, &who, server_id, Some(form), Vec::new(), said).await;
    }
    let saved = match assignment_body(&form) {
        Ok(value) => {
            let (actor, id) = (who.actor(), server_id.clone());
            state
                .store
                .call(move |s| Ok::<_, HttpError>(api::save_assignments(s, &actor, &id, &value)))
                .await?
        }
        Err(errors) => Err(resource::invalid("assignment table", errors)),
    };
    match saved {
        Ok(_) => Ok(see_other(&format!("{ASSIGNMENTS}?notice=saved"))),
        Err(HttpError::Invalid { summary, fields }) => {
            let said = Said::Refused(StatusCode::BAD_REQUEST, summary);
            assignment_page(&state, &who, server_id, Some(form), fields, said).await
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
        for dn in &report.group_dns {
            fact("Group DN", dn.clone());
        }
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
    use crate::model::Protocol;
    use crate::model::policy::PickOrder;
    use crate::model::pool::{Attribute, Condition, Rule};

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn a_form_becomes_the_api_s_body() {
        let mut form = values(&[
            ("name", "Sleepy"),
            ("on_idle.action", "suspend"),
            ("on_idle.after_minutes", "30"),
            ("on_logout.after_minutes", "x"),
        ]);
        let Err(errors) = forms::form_value(&PowerPlan::fields(), &form) else {
            panic!("a bad number was accepted");
        };
        assert_eq!(errors[0].field, "on_logout.after_minutes");
        form.insert("on_logout.after_minutes".to_string(), "0".to_string());
        form.insert("on_logout.action".to_string(), "nothing".to_string());
        let value = forms::form_value(&PowerPlan::fields(), &form).expect("valid");
        assert_eq!(value["on_idle"]["action"], "suspend");
        assert_eq!(value["on_idle"]["after_minutes"], 30);
        let plan: PowerPlan = serde_json::from_value({
            let mut v = value;
            v["id"] = Value::String("x".into());
            v
        })
        .expect("a power plan");
        assert_eq!(plan.on_idle.after_minutes, 30);

        let form = values(&[
            ("hosts", "dc1.example.com\n[::1]:1636\n"),
            ("aliases", " example.com \n\n"),
            ("security", "starttls"),
        ]);
        let value = forms::form_value(&AuthServer::fields(), &form).expect("valid");
        assert_eq!(value["hosts"][0]["port"], 389);
        assert_eq!(value["hosts"][1]["host"], "::1");
        assert_eq!(value["aliases"], serde_json::json!(["example.com"]));
        assert_eq!(value["verify_tls"], false, "an unticked box is false");
        assert_eq!(value["ca_cert_pem"], Value::Null);
        // Shown back, the hosts read as typed.
        assert_eq!(
            forms::shown(Kind::Hosts, &value["hosts"]),
            "dc1.example.com:389\n[::1]:1636"
        );
    }

    #[test]
    fn fixed_choices_match_the_model() {
        let attributes: Vec<(String, String)> = Attribute::SIMPLE
            .iter()
            .map(|a| (a.to_string(), a.label()))
            .collect();
        let declared: Vec<(String, String)> = ATTRIBUTES
            .iter()
            .map(|(v, l)| ((*v).to_string(), (*l).to_string()))
            .collect();
        assert_eq!(declared[..attributes.len()], attributes[..]);
        assert_eq!(declared.len(), attributes.len() + 1, "and metadata");
        let conditions: Vec<(&str, &str)> = Condition::ALL
            .iter()
            .map(|c| (c.as_str(), c.label()))
            .collect();
        assert_eq!(CONDITIONS, &conditions[..]);
        for (value, _) in PICK_ORDERS {
            let order: PickOrder =
                serde_json::from_value(Value::String((*value).into())).expect("a pick order");
            assert_eq!(serde_json::to_value(order).expect("json"), *value);
        }
        assert_eq!(PICK_ORDERS.len(), 3);
        for (value, _) in PROTOCOLS {
            assert!(value.parse::<Protocol>().is_ok(), "{value}");
        }
    }

    #[test]
    fn a_policy_s_entries_are_rows_and_come_back_whole() {
        let entry = |pool: &str, order: &str, running: bool| {
            serde_json::json!({"pool_id": pool, "offer": 2, "running_only": running,
                "order": order, "protocol_plan": "default", "power_plan": "night",
                "release_plan": "default"})
        };
        let stored = serde_json::json!({"id": "p", "name": "Staff",
            "entries": [entry("lab", "by_name", true), entry("spare", "random", false)]});
        let mut form = forms::form_of(&Policy::fields(), &stored);
        assert_eq!(form["entries[0].pool_id"], "lab");
        assert_eq!(form["entries[1].power_plan"], "night");
        assert_eq!(form["entries[0].running_only"], "on");
        assert!(!form.contains_key("entries[1].running_only"), "unticked");
        let value = forms::form_value(&Policy::fields(), &form).expect("valid");
        assert_eq!(value["entries"], stored["entries"]);

        // Moved through the row buttons, the order is what is saved.
        form.insert("move_down".into(), "entries[0]".into());
        assert!(forms::apply_row_action(&Policy::fields(), &mut form).expect("a button"));
        let value = forms::form_value(&Policy::fields(), &form).expect("valid");
        assert_eq!(value["entries"][0]["pool_id"], "spare");
        assert_eq!(value["entries"][1]["pool_id"], "lab");
        assert_eq!(value["entries"][1]["running_only"], true);
        let policy: Policy = serde_json::from_value({
            let mut v = value;
            v["id"] = Value::String("p".into());
            v
        })
        .expect("a policy body");
        assert_eq!(policy.entries[1].order, PickOrder::ByName);

        // A new entry names no pool until one is chosen.
        form.insert("add_row".into(), "entries".into());
        forms::apply_row_action(&Policy::fields(), &mut form).expect("a button");
        assert_eq!(form["entries[2].protocol_plan"], "default");
        let errors = forms::form_value(&Policy::fields(), &form).expect_err("no pool");
        assert_eq!(errors[0].field, "entries[2].pool_id");
        assert!(errors[0].reason.contains("pick one"), "{errors:?}");
    }

    #[test]
    fn a_pool_s_rules_are_rows_with_a_metadata_key_beside_the_attribute() {
        let stored = serde_json::to_value(Pool {
            rules: vec![
                Rule::new(Attribute::Name, Condition::BeginsWith, "lab-"),
                Rule::new(Attribute::Metadata("dept".into()), Condition::Equals, "eng"),
            ],
            match_all: false,
            ..Pool::new("Lab")
        })
        .expect("json");
        let form = forms::form_of(&Pool::fields(), &stored);
        assert_eq!(form["match_all"], "off");
        assert_eq!(form["rules[1].attribute"], "metadata");
        assert_eq!(form["rules[1].metadata_key"], "dept");
        assert_eq!(
            form.get("rules[0].metadata_key").map(String::as_str),
            Some("")
        );
        let value = forms::form_value(&Pool::fields(), &form).expect("valid");
        assert_eq!(value["rules"], stored["rules"]);
        assert_eq!(value["match_all"], false);
        assert_eq!(value["parent"], Value::Null);

        // An old-style field (`rules` as JSON text) is no row and is ignored; `on` is "all".
        let value = forms::form_value(
            &Pool::fields(),
            &values(&[("name", "x"), ("rules", "[]"), ("match_all", "on")]),
        )
        .expect("valid");
        assert_eq!(value["rules"], serde_json::json!([]));
        assert_eq!(value["match_all"], true);
    }

    #[test]
    fn everyone_else_needs_both_a_role_and_a_policy_or_neither() {
        let table = AssignmentTable {
            rows: Vec::new(),
            otherwise: Some(("user".into(), "default".into())),
        };
        let mut form = assignment_values(&table);
        assert_eq!(form["otherwise.role_id"], "user");
        let body = assignment_body(&form).expect("valid");
        assert_eq!(body["otherwise"], serde_json::json!(["user", "default"]));
        assert_eq!(body["rows"], serde_json::json!([]));
        form.insert("otherwise.policy_id".into(), String::new());
        let errors = assignment_body(&form).expect_err("half a pair");
        assert_eq!(errors[0].field, "otherwise.policy_id");
        form.insert("otherwise.role_id".into(), String::new());
        assert_eq!(
            assignment_body(&form).expect("valid")["otherwise"],
            Value::Null
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
                options: vec![forms::OptionView {
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
                key: "group".into(),
                label: "Group".into(),
                widget: "text".into(),
                list: "group-list".into(),
                suggestions: vec![forms::SuggestionView {
                    value: "cn=staff,ou=a".into(),
                    label: "staff".into(),
                }],
                ..FieldView::default()
            },
        ];
        let mut view = FormView::new("/admin/x/new".into(), fields, "Create", "/admin/x");
        view.buttons = vec![ButtonView {
            label: "Test connection".into(),
            action: "/admin/x/1/test".into(),
        }];
        c.insert("view", &view);
        let html = pages
            .render("resource_form.html", &c)
            .expect("form renders");
        assert!(html.contains("value=\"x&quot;y\""), "{html}");
        assert!(html.contains("give it a name"));
        assert!(html.contains("<option value=\"a\" selected>"), "{html}");
        assert!(html.contains("checked"));
        assert!(
            html.contains(
                "<datalist id=\"group-list\"><option value=\"cn=staff,ou=a\" label=\"staff\">"
            ),
            "{html}"
        );
        assert!(html.contains("list=\"group-list\""), "{html}");
        assert!(html.contains("/admin/x/1/test"));
        assert!(!html.contains("fieldset"), "no row group: {html}");
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

    #[test]
    fn row_groups_render_with_their_buttons_and_refusals() {
        let pages = Pages::new(None).expect("templates");
        let stored = serde_json::json!({"name": "Staff", "entries": [
            {"pool_id": "lab", "offer": 1, "order": "by_name", "running_only": true,
             "protocol_plan": "default", "power_plan": "default", "release_plan": "gone"},
            {"pool_id": "spare", "offer": 0, "order": "random", "running_only": false,
             "protocol_plan": "default", "power_plan": "default", "release_plan": "default"},
        ]});
        let form = forms::form_of(&Policy::fields(), &stored);
        let errors = vec![FieldError::new(
            "entries[1].offer",
            "offer at least 1 desktop",
        )];
        let fields = forms::field_views(&Policy::fields(), &form, &errors, |key| {
            Ok::<_, HttpError>(match key {
                "entries.pool_id" => vec![
                    ("lab".into(), "Lab <A>".into()),
                    ("spare".into(), "Spare".into()),
                ],
                _ => vec![("default".into(), "Default".into())],
            })
        })
        .expect("views");
        let view = FormView::new(
            "/admin/configuration/policies/p".into(),
            fields,
            "Save",
            "/x",
        );
        assert!(view.has_rows);
        let mut c = frame();
        c.insert("view", &view);
        let html = pages.render("resource_form.html", &c).expect("renders");
        for needle in [
            "<fieldset class=\"rows\" id=\"rows-entries\">",
            "<input type=\"hidden\" name=\"entries[0]\" value=\"\">",
            "<select name=\"entries[0].pool_id\"><option value=\"lab\" selected>Lab &lt;A&gt;</option>",
            "<option value=\"gone\" selected>gone (missing)</option>",
            "name=\"entries[0].running_only\" value=\"on\" checked",
            "name=\"move_up\" value=\"entries[1]\"",
            "name=\"remove_row\" value=\"entries[0]\"",
            "name=\"add_row\" value=\"entries\"",
            "formaction=\"/admin/configuration/policies/p#rows-entries\"",
            "data-field=\"entries[1].offer\">offer at least 1 desktop<",
            "Entry 2",
        ] {
            assert!(html.contains(needle), "{needle} in {html}");
        }
        // The first row cannot move up, the last not down.
        assert!(
            html.contains("value=\"entries[0]\" formaction=\"/admin/configuration/policies/p#rows-entries\" title=\"Move this entry up\" disabled"),
            "{html}"
        );
        // Enter in a field presses the first submit button: Save, not a row's.
        let form = html.find("class=\"resource\"").expect("the form");
        let first = form
            + html[form..]
                .find("type=\"submit\"")
                .expect("a submit button");
        assert!(
            html[first..].starts_with("type=\"submit\" class=\"save\""),
            "{html}"
        );

        // A view-only role sees the rows, not the buttons that change them.
        c.insert("can_edit", &false);
        let html = pages.render("resource_form.html", &c).expect("renders");
        assert!(html.contains("entries[1].pool_id"), "{html}");
        assert!(
            !html.contains("add_row") && !html.contains("remove_row"),
            "{html}"
        );
    }
}
