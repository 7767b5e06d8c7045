//! OpenStack centers in the console (Setup > Centers) and the admin API (`/api/v1/centers`,
//! the shared resource shape plus "test the connection" and "refresh now"), and the actions
//! on a desktop's machine (start, shut down, reboot, …, delete) from Resources > Desktops and
//! `POST /api/v1/desktops/{id}/actions`.
//!
//! The password is write-only like every secret: answers carry it empty, and an update that
//! leaves it empty keeps the stored one. Deleting a center takes its unassigned desktops with
//! it; while one of them is assigned the center cannot be deleted. Every action is audited.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::console_resources::{PROTOCOLS, Screen};
use super::forms::{Field, Kind, field, helped};
use super::pages::Page;
use super::resource::{
    self, AdminToken, ApiResult, Endpoint, Resource, id_field, parse_body, schema,
};
use super::session::Console;
use super::session::CsrfOnly;
use super::{AppState, HttpError};
use crate::admin::{self, Actor};
use crate::centers::{CenterError, MachineAction, Refreshed};
use crate::model::FieldError;
use crate::model::center::Center;
use crate::model::desktop::Desktop;
use crate::store::{Record, Store, StoreError, TxError};

const BASE: &str = "/admin/setup/centers";

/// The console routes beside the shared resource pages (registered before them).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(&format!("{BASE}/{{id}}/test"), web::post().to(test_submit))
        .route(
            &format!("{BASE}/{{id}}/refresh"),
            web::post().to(refresh_submit),
        )
        .route(
            "/admin/resources/desktops/{id}/actions/{action}",
            web::post().to(action_submit),
        );
}

// ---- The resource -----------------------------------------------------------------------------

/// Whether a center edit still signs in at the Keystone, with the TLS checks, that its stored
/// password was given for.
fn same_cloud(new: &Center, old: &Center) -> bool {
    new.auth_url == old.auth_url && new.insecure == old.insecure && new.ca_pem == old.ca_pem
}

impl Resource for Center {
    type Input = Center;
    const PATH: &'static str = "centers";
    const KIND: &'static str = "center";
    const AUDIT: &'static str = "center";
    const SCHEMA: &'static str = "Center";
    const EFFECT: resource::Effect = resource::Effect::Membership;

    fn id(&self) -> &str {
        &self.id
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn keep_current(&mut self, current: &Center) {
        self.last_ok = current.last_ok;
        self.last_error = current.last_error.clone();
        self.failing_since = current.failing_since;
    }
    fn build(mut input: Center, id: &str, old: Option<&Center>) -> Center {
        input.id = id.to_string();
        input.name = input.name.trim().to_string();
        input.auth_url = input.auth_url.trim().to_string();
        if let Some(old) = old {
            // Write-only: an empty password keeps the stored one, sent only to the Keystone
            // (with the TLS checks) it was given for.
            if input.password.is_empty() && same_cloud(&input, old) {
                input.password = old.password.clone();
            }
            // How the inventory went is not the administrator's to set.
            input.last_ok = old.last_ok;
            input.last_error = old.last_error.clone();
            input.failing_since = old.failing_since;
        } else {
            input.last_ok = None;
            input.last_error = None;
            input.failing_since = None;
        }
        input
    }
    fn check(&self, s: &Store, old: Option<&Self>) -> Result<Vec<FieldError>, StoreError> {
        let others: Vec<Center> = s
            .list::<Center>()?
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| c.id != self.id)
            .collect();
        let mut errors = self.validate(&others);
        if self.password.is_empty() {
            if old.is_some_and(|old| !same_cloud(self, old)) {
                errors.retain(|e| e.field != "password");
                errors.push(FieldError::new(
                    "password",
                    super::resource::RETYPE_PASSWORD,
                ));
            } else if !errors.iter().any(|e| e.field == "password") {
                errors.push(FieldError::new(
                    "password",
                    "give the password of the cloud user",
                ));
            }
        }
        Ok(errors)
    }
    fn refuse_delete(&self, s: &Store) -> Result<Option<String>, StoreError> {
        let assigned: Vec<String> = s
            .list::<Desktop>()?
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.center == self.id && d.assigned_user.is_some())
            .map(|d| d.name)
            .collect();
        Ok((!assigned.is_empty()).then(|| {
            format!(
                "Desktops of this center are assigned ({}): release them first.",
                assigned.join(", ")
            )
        }))
    }
    fn remove(s: &Store, id: &str) -> Result<(), HttpError> {
        // The center and its desktops go together; the machines stay in the cloud.
        let mine: Vec<String> = s
            .list::<Desktop>()?
            .into_iter()
            .filter(|(_, d)| d.center == id)
            .map(|(k, _)| k)
            .collect();
        s.transact(&[Center::TREE, Desktop::TREE], |tx| {
            for key in &mine {
                if let Some(d) = tx.get::<Desktop, String>(key)? {
                    if let Some(user) = d.assigned_user {
                        return Err(TxError::Abort(format!(
                            "the desktop {} was assigned to {user} meanwhile",
                            d.name
                        )));
                    }
                    tx.delete::<Desktop, String>(key)?;
                }
            }
            tx.delete::<Center, String>(id)?;
            Ok(())
        })
        .map_err(super::resource::refused_meanwhile)
    }
    fn redact(&mut self) {
        Center::redact(self);
    }
    fn schema() -> Value {
        use schema::{boolean, date_time, described, integer, nullable, object, one_of, string};
        object(
            &["name", "auth_url", "project", "username"],
            vec![
                ("id", id_field()),
                ("name", string()),
                (
                    "auth_url",
                    described(string(), "Keystone v3: https://cloud.example.com:5000/v3"),
                ),
                ("region", described(string(), "Default RegionOne.")),
                ("project_domain", described(string(), "Default `Default`.")),
                ("project", string()),
                ("user_domain", described(string(), "Default `Default`.")),
                ("username", string()),
                (
                    "password",
                    json!({"type": "string", "writeOnly": true, "description":
                        "Write-only: answers always carry an empty string; an update that \
                         leaves it empty keeps the stored password."}),
                ),
                ("interface", one_of(&["public", "internal"])),
                (
                    "ca_pem",
                    nullable(described(
                        string(),
                        "The CA that signed the cloud's certificates (PEM); null: the system's.",
                    )),
                ),
                (
                    "insecure",
                    described(
                        boolean(),
                        "Do not check the cloud's certificates (a warning).",
                    ),
                ),
                ("refresh_interval_secs", integer()),
                (
                    "protocol",
                    described(
                        one_of(&["rdp", "vnc", "spice", "ssh"]),
                        "How new desktops of this center are reached (default rdp).",
                    ),
                ),
                ("last_ok", nullable(date_time())),
                ("last_error", nullable(string())),
                ("failing_since", nullable(date_time())),
            ],
        )
    }
}

const INTERFACES: &[(&str, &str)] = &[("public", "Public"), ("internal", "Internal")];

impl Screen for Center {
    const AREA: &'static str = "setup";
    const TITLE: &'static str = "Centers";
    fn fields() -> Vec<Field> {
        vec![
            field("name", "Name", Kind::Text),
            helped(
                "auth_url",
                "Auth URL",
                Kind::Text,
                "Keystone v3, e.g. https://cloud.example.com:5000/v3",
            ),
            field("region", "Region", Kind::Text),
            field("project_domain", "Project domain", Kind::Text),
            field("project", "Project", Kind::Text),
            field("user_domain", "User domain", Kind::Text),
            field("username", "User name", Kind::Text),
            helped(
                "password",
                "Password",
                Kind::Password,
                "Left empty on an edit: the stored password stays.",
            ),
            field("interface", "Endpoint interface", Kind::Select(INTERFACES)),
            helped(
                "ca_pem",
                "CA certificate (PEM)",
                Kind::OptTextarea,
                "The CA that signed the cloud's certificates; empty: the system's CAs.",
            ),
            helped(
                "insecure",
                "Do not verify the cloud's certificate",
                Kind::Check,
                "Warning: anyone between Gatehouse and the cloud could read the password.",
            ),
            field(
                "refresh_interval_secs",
                "Refresh interval (seconds)",
                Kind::Number,
            ),
            helped(
                "protocol",
                "Protocol of its desktops",
                Kind::Select(PROTOCOLS),
                "How desktops this center finds or creates are reached; a desktop's own protocol, once edited, stays.",
            ),
        ]
    }
    fn columns() -> &'static [&'static str] {
        &["name", "auth_url", "project", "region"]
    }
    fn blank() -> Value {
        serde_json::to_value(Center::default()).unwrap_or_default()
    }
    fn extra_columns(
        s: &Store,
        items: &[Self],
    ) -> Result<(Vec<String>, Vec<Vec<String>>), StoreError> {
        let desktops: Vec<Desktop> = s.values::<Desktop>()?;
        let rows = items
            .iter()
            .map(|c| {
                let count = desktops.iter().filter(|d| d.center == c.id).count();
                vec![status_text(c), count.to_string()]
            })
            .collect();
        Ok((vec!["Status".into(), "Desktops".into()], rows))
    }
    fn buttons() -> &'static [(&'static str, &'static str)] {
        &[("Test connection", "test"), ("Refresh now", "refresh")]
    }
}

/// "OK (last inventory …)", "FAILING since …: error", or "not inventoried yet".
pub fn status_text(c: &Center) -> String {
    match (&c.failing_since, &c.last_error, &c.last_ok) {
        (Some(since), Some(error), _) => format!(
            "FAILING since {}: {error}",
            since.format("%Y-%m-%d %H:%M UTC")
        ),
        (_, _, Some(ok)) => format!("OK (inventory {})", ok.format("%Y-%m-%d %H:%M UTC")),
        _ => "not inventoried yet".into(),
    }
}

// ---- Test, refresh, actions: shared by the console and the API --------------------------------

fn center_error(e: CenterError) -> HttpError {
    match e {
        CenterError::NoSuchCenter(id) => HttpError::NoSuch { kind: "center", id },
        CenterError::NoSuchDesktop(id) => HttpError::NoSuch {
            kind: "desktop",
            id,
        },
        CenterError::Store(e) => e.into(),
        e @ (CenterError::Busy
        | CenterError::Static(_)
        | CenterError::NotDeletable(_)
        | CenterError::Assigned { .. }) => HttpError::Conflict(e.to_string()),
        CenterError::Cloud(e) => HttpError::Cloud(e),
    }
}

async fn run_test(state: &AppState, id: String, actor: &Actor) -> Result<Value, HttpError> {
    let center = state.centers.center(&id).await.map_err(center_error)?;
    let result = crate::openstack::test_connection(&center).await;
    let (ok, body) = match &result {
        Ok(summary) => (true, json!({"ok": true, "summary": summary})),
        Err(e) => (
            false,
            json!({"ok": false, "error": e.code(), "message": e.to_string()}),
        ),
    };
    audit(
        state,
        actor,
        "center.test",
        format!(
            "center `{}` ({id}): {}",
            center.name,
            if ok { "passed" } else { "failed" }
        ),
        ok,
    )
    .await;
    Ok(body)
}

async fn run_refresh(state: &AppState, id: String, actor: &Actor) -> Result<Refreshed, HttpError> {
    let center = state.centers.center(&id).await.map_err(center_error)?;
    let result = state.centers.refresh(&id).await;
    let detail = match &result {
        Ok(r) => format!(
            "center `{}` ({id}): {} servers, {} added, {} removed",
            center.name, r.servers, r.added, r.removed
        ),
        Err(e) => format!("center `{}` ({id}): {e}", center.name),
    };
    audit(state, actor, "center.refresh", detail, result.is_ok()).await;
    result.map_err(center_error)
}

async fn run_action(
    state: &AppState,
    id: String,
    action: &str,
    actor: &Actor,
) -> Result<(), HttpError> {
    let Some(act) = MachineAction::parse(action) else {
        return Err(HttpError::Invalid {
            summary: "The action is not known.".into(),
            fields: vec![FieldError::new(
                "action",
                format!(
                    "`{action}` is not an action: one of {}",
                    MachineAction::ALL.map(MachineAction::as_str).join(", ")
                ),
            )],
        });
    };
    let result = state.centers.act(&id, act).await;
    audit(
        state,
        actor,
        &format!("desktop.{}", act.as_str()),
        match &result {
            Ok(()) => format!("desktop {id}: done"),
            Err(e) => format!("desktop {id}: {e}"),
        },
        result.is_ok(),
    )
    .await;
    result.map_err(center_error)
}

async fn audit(state: &AppState, actor: &Actor, action: &str, detail: String, ok: bool) {
    let (actor, action) = (actor.clone(), action.to_string());
    let logged = state
        .store
        .call(move |s| admin::audit(s, &actor, &action, detail, ok))
        .await;
    if let Err(e) = logged {
        tracing::error!(error = %e, "audit line not written");
    }
}

// ---- API ----------------------------------------------------------------------------------------

/// `/api/v1/centers` (the shared shape), its test and refresh, and desktop actions.
pub fn endpoints() -> Vec<Endpoint> {
    use schema::reference;
    let json = "application/json";
    let mut all = resource::endpoints::<Center>();
    let e = super::api::endpoint;
    all.extend([
        e(
            Method::POST,
            "/api/v1/centers/{id}/test",
            "centers",
            "Test the connection: URL, TLS, credentials, project scope, catalog, services",
            vec![],
            (200, Some(reference("CenterTest"))),
            true,
            || web::post().to(test_api),
        ),
        e(
            Method::POST,
            "/api/v1/centers/{id}/refresh",
            "centers",
            "Read the center's inventory now and bring its desktops in step",
            vec![],
            (200, Some(reference("CenterRefresh"))),
            true,
            || web::post().to(refresh_api),
        ),
        e(
            Method::POST,
            "/api/v1/desktops/{id}/actions",
            "desktops",
            "Act on a desktop's machine: start, shutdown, power_off, reboot, hard_reboot, \
             suspend, resume, delete (deletable desktops only)",
            vec![(json, reference("MachineAction"))],
            (204, None),
            true,
            || web::post().to(action_api),
        ),
    ]);
    all
}

/// The schemas the center endpoints name.
pub fn schemas() -> Vec<(&'static str, Value)> {
    use schema::{array, boolean, integer, object, one_of, string};
    let mut all = resource::schemas::<Center>();
    all.extend([
        (
            "CenterTest",
            object(
                &["ok"],
                vec![
                    ("ok", boolean()),
                    ("summary", json!({"type": "object"})),
                    (
                        "error",
                        one_of(&[
                            "invalid",
                            "bad_url",
                            "unreachable",
                            "timeout",
                            "tls",
                            "credentials",
                            "scope",
                            "catalog",
                            "missing_service",
                            "cloud",
                            "unsupported",
                            "malformed",
                        ]),
                    ),
                    ("message", string()),
                ],
            ),
        ),
        (
            "CenterRefresh",
            object(
                &[
                    "center", "servers", "added", "updated", "removed", "warnings",
                ],
                vec![
                    ("center", string()),
                    ("servers", integer()),
                    ("added", integer()),
                    ("updated", integer()),
                    ("removed", integer()),
                    ("warnings", array(string())),
                ],
            ),
        ),
        (
            "MachineAction",
            object(
                &["action"],
                vec![(
                    "action",
                    one_of(&MachineAction::ALL.map(MachineAction::as_str)),
                )],
            ),
        ),
    ]);
    all
}

async fn test_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let body = run_test(&state, path.into_inner(), &who.actor()).await?;
    Ok(HttpResponse::Ok().json(body))
}

async fn refresh_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
) -> ApiResult {
    let refreshed = run_refresh(&state, path.into_inner(), &who.actor()).await?;
    Ok(HttpResponse::Ok().json(refreshed))
}

#[derive(Deserialize)]
struct ActionBody {
    action: String,
}

async fn action_api(
    state: web::Data<AppState>,
    who: AdminToken,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let value = parse_body(&body)?;
    let body: ActionBody = resource::from_json("action", &value)?;
    run_action(&state, path.into_inner(), &body.action, &who.actor()).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Console ------------------------------------------------------------------------------------

/// A result page: a table of (what, value) lines, with a notice or an error.
async fn result_page(
    state: &AppState,
    who: &Console,
    title: &str,
    back: &str,
    rows: Vec<Vec<String>>,
    outcome: Result<String, String>,
) -> Result<HttpResponse, HttpError> {
    let mut page = Page::new(state, Some(who), "table.html", title, back).await?;
    page.set("columns", &["", ""])
        .set("rows", &rows)
        .set("actions", &vec![json!({"label": "Back", "href": back})]);
    let page = match outcome {
        Ok(notice) => {
            page.set("notice", &notice);
            page
        }
        Err(error) => page.error(StatusCode::OK, error),
    };
    page.render(state)
}

async fn test_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let id = path.into_inner();
    let body = run_test(&state, id.clone(), &who.actor()).await?;
    let back = format!("{BASE}/{id}");
    let mut rows = Vec::new();
    if let Some(summary) = body["summary"].as_object() {
        for (key, value) in summary {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Null => "(none)".into(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            };
            rows.push(vec![key.replace('_', " "), shown]);
        }
    }
    let outcome = if body["ok"] == true {
        Ok("Connected: every step passed.".to_string())
    } else {
        Err(format!(
            "{} ({})",
            body["message"].as_str().unwrap_or_default(),
            body["error"].as_str().unwrap_or_default()
        ))
    };
    result_page(&state, &who, "Test connection", &back, rows, outcome).await
}

async fn refresh_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let id = path.into_inner();
    let back = format!("{BASE}/{id}");
    let outcome = run_refresh(&state, id, &who.actor()).await;
    let (rows, outcome) = match outcome {
        Ok(r) => (
            vec![
                vec!["Servers".into(), r.servers.to_string()],
                vec!["Desktops added".into(), r.added.to_string()],
                vec!["Desktops updated".into(), r.updated.to_string()],
                vec!["Desktops removed".into(), r.removed.to_string()],
                vec!["Warnings".into(), r.warnings.join("; ")],
            ],
            Ok("Inventory refreshed.".to_string()),
        ),
        Err(HttpError::NoSuch { kind, id }) => return Err(HttpError::NoSuch { kind, id }),
        Err(e) => (Vec::new(), Err(e.to_string())),
    };
    result_page(&state, &who, "Refresh now", &back, rows, outcome).await
}

async fn action_submit(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let (id, action) = path.into_inner();
    let back = format!("/admin/resources/desktops/{id}");
    let outcome = match run_action(&state, id, &action, &who.actor()).await {
        Ok(()) => Ok(format!("Done: {}.", action.replace('_', " "))),
        Err(HttpError::NoSuch { kind, id }) => return Err(HttpError::NoSuch { kind, id }),
        Err(e) => Err(e.to_string()),
    };
    result_page(&state, &who, "Desktop action", &back, Vec::new(), outcome).await
}
