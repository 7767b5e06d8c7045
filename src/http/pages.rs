//! Page rendering: tera templates embedded from `web/` (or read from disk on every render
//! when `server.templates_dir` is set, for development), the console menu, the frame every
//! page shares, and the embedded static files under `/assets/`.

use std::borrow::Cow;
use std::path::PathBuf;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use tera::{Context, Tera};

use super::access;
use super::session::SignedIn;
use super::{AppState, HttpError};
use crate::auth::ConsoleAccess;
use actix_web::http::Method;

#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Templates;

#[derive(rust_embed::Embed)]
#[folder = "assets/static/"]
struct Static;

/// One area of the console menu and its pages. Pages not built yet are not listed, and an
/// area with no pages is not shown.
pub struct Area {
    pub name: &'static str,
    pub pages: &'static [(&'static str, &'static str)],
}

/// The console menu, in the order administrators of this product class know it.
pub const MENU: &[Area] = &[
    Area {
        name: "Dashboard",
        pages: &[
            ("Overview", "/admin"),
            ("Pool Statistics", "/admin/dashboard/pools"),
        ],
    },
    Area {
        name: "Setup",
        pages: &[
            ("Certificate", "/admin/setup/certificate"),
            ("Authentication Servers", "/admin/setup/auth-servers"),
            ("Centers", "/admin/setup/centers"),
            ("Gateways", "/admin/setup/gateways"),
        ],
    },
    Area {
        name: "Configuration",
        pages: &[
            ("Locations", "/admin/configuration/locations"),
            ("Roles", "/admin/configuration/roles"),
            ("Protocol Plans", "/admin/configuration/protocol-plans"),
            ("Power Plans", "/admin/configuration/power-plans"),
            ("Release Plans", "/admin/configuration/release-plans"),
            ("Policies", "/admin/configuration/policies"),
            ("Assignments", "/admin/configuration/assignments"),
            ("Pools", "/admin/configuration/pools"),
        ],
    },
    Area {
        name: "Resources",
        pages: &[
            ("Desktops", "/admin/resources/desktops"),
            ("Users", "/admin/resources/users"),
        ],
    },
    Area {
        name: "System",
        pages: &[
            ("Licence", "/admin/system/licence"),
            ("Backups", "/admin/system/backups"),
            ("Jobs", "/admin/system/jobs"),
            ("Audit log", "/admin/system/audit"),
        ],
    },
];

#[derive(Serialize)]
struct MenuArea {
    name: &'static str,
    active: bool,
    pages: Vec<MenuPage>,
}

#[derive(Serialize)]
struct MenuPage {
    title: &'static str,
    path: &'static str,
    active: bool,
}

fn menu(active_path: &str, console: Option<&ConsoleAccess>) -> Vec<MenuArea> {
    menu_from(MENU, active_path, console)
}

/// The menu a session sees: only the pages its role may view (a local account sees all).
fn menu_from(
    areas: &'static [Area],
    active_path: &str,
    console: Option<&ConsoleAccess>,
) -> Vec<MenuArea> {
    let visible = |path: &str| access::allows(console, access::rule(&Method::GET, path));
    areas
        .iter()
        .filter(|a| a.pages.iter().any(|(_, p)| visible(p)))
        .map(|a| MenuArea {
            name: a.name,
            active: a.pages.iter().any(|(_, p)| *p == active_path),
            pages: a
                .pages
                .iter()
                .filter(|(_, p)| visible(p))
                .map(|(title, path)| MenuPage {
                    title,
                    path,
                    active: *path == active_path,
                })
                .collect(),
        })
        .collect()
}

/// The templates, embedded or (development) read from a folder.
pub struct Pages {
    embedded: Tera,
    dir: Option<PathBuf>,
}

impl Pages {
    pub fn new(dir: Option<PathBuf>) -> Result<Self, tera::Error> {
        let mut embedded = Tera::new();
        let files: Vec<(String, String)> = Templates::iter()
            .filter_map(|name| {
                let file = Templates::get(&name)?;
                Some((
                    name.to_string(),
                    String::from_utf8_lossy(&file.data).into_owned(),
                ))
            })
            .collect();
        embedded.add_raw_templates(files)?;
        Ok(Self { embedded, dir })
    }

    /// Names of every template (for the test that renders them all).
    pub fn names(&self) -> Vec<String> {
        self.embedded
            .get_template_names()
            .map(str::to_string)
            .collect()
    }

    pub fn render(&self, name: &str, context: &Context) -> Result<String, HttpError> {
        let rendered = match &self.dir {
            None => self.embedded.render(name, context),
            Some(dir) => {
                let mut tera = Tera::new();
                let mut files = Vec::new();
                for entry in std::fs::read_dir(dir)
                    .map_err(|e| HttpError::Render(format!("{}: {e}", dir.display())))?
                    .flatten()
                {
                    let path = entry.path();
                    if let (Some(n), Ok(text)) = (path.file_name(), std::fs::read_to_string(&path))
                    {
                        files.push((n.to_string_lossy().into_owned(), text));
                    }
                }
                tera.add_raw_templates(files)
                    .and_then(|_| tera.render(name, context))
            }
        };
        rendered.map_err(|e| HttpError::Render(format!("{name}: {e}")))
    }
}

/// The `?notice=KEY` a console page is redirected to after a change, so that it says what
/// was done.
#[derive(Debug, Default, Deserialize)]
pub struct NoticeQuery {
    #[serde(default)]
    pub notice: String,
}

impl NoticeQuery {
    /// The sentence `known` gives for the key; empty for none or an unknown one.
    pub fn sentence(&self, known: &[(&str, &'static str)]) -> &'static str {
        known
            .iter()
            .find(|(key, _)| *key == self.notice)
            .map_or("", |(_, sentence)| sentence)
    }
}

/// A page being put together: the shared frame plus the page's own values.
pub struct Page {
    pub template: &'static str,
    pub context: Context,
    pub status: StatusCode,
}

impl Page {
    /// The frame every page shares: title, menu (only with full console access), who is
    /// signed in, the CSRF token for forms, and the evaluation banner.
    pub async fn new(
        state: &AppState,
        who: Option<&SignedIn>,
        template: &'static str,
        title: &str,
        active_path: &str,
    ) -> Result<Self, HttpError> {
        let mut c = Context::new();
        c.insert("title", title);
        c.insert("version", env!("CARGO_PKG_VERSION"));
        let wizard_done = state.wizard_done.load(std::sync::atomic::Ordering::Relaxed);
        let full = who.is_some_and(|w| !w.session.factory && !w.session.must_change) && wizard_done;
        let console = who.and_then(|w| w.session.console.as_ref());
        c.insert(
            "menu",
            &if full {
                menu(active_path, console)
            } else {
                Vec::new()
            },
        );
        // Forms and buttons that change something show only to whom the page's changes are
        // allowed (Edit on its area; every area for roles and assignments).
        let can_edit = match access::rule(&actix_web::http::Method::POST, active_path) {
            access::Rule::Open => console.is_none(),
            rule => access::allows(console, rule),
        };
        c.insert("can_edit", &can_edit);
        c.insert("user", &who.map(|w| w.username.clone()).unwrap_or_default());
        c.insert(
            "csrf",
            &who.map(|w| w.session.csrf.clone()).unwrap_or_default(),
        );
        let licence = state.licence_state().await?;
        let banner = if licence.is_evaluation() || licence.licence().is_none() {
            licence.label(crate::licence::today())
        } else {
            String::new()
        };
        c.insert("licence_banner", &banner);
        c.insert("error", "");
        c.insert("notice", "");
        Ok(Self {
            template,
            context: c,
            status: StatusCode::OK,
        })
    }

    pub fn set<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> &mut Self {
        self.context.insert(key, value);
        self
    }

    /// Shows an error above the form and answers with `status`.
    pub fn error(mut self, status: StatusCode, message: impl Into<String>) -> Self {
        self.context.insert("error", &message.into());
        self.status = status;
        self
    }

    /// Shows a refused form's error with the status the error maps to.
    pub fn failed(self, error: HttpError) -> Self {
        use actix_web::ResponseError;
        let status = error.status_code();
        self.error(status, error.to_string())
    }

    pub fn render(self, state: &AppState) -> Result<HttpResponse, HttpError> {
        let body = state.pages.render(self.template, &self.context)?;
        Ok(HttpResponse::build(self.status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body))
    }
}

/// A 303 to another console page (after a form was handled).
pub fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_string()))
        .finish()
}

async fn asset(path: web::Path<String>) -> HttpResponse {
    let name = path.into_inner();
    match Static::get(&name) {
        Some(file) => {
            let body: Cow<'static, [u8]> = file.data;
            HttpResponse::Ok()
                .content_type(file.metadata.mimetype())
                .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
                .insert_header((
                    header::ETAG,
                    format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..8])),
                ))
                .body(body.into_owned())
        }
        None => HttpResponse::NotFound().finish(),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/assets/{name:.*}", web::get().to(asset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_hides_areas_without_pages_and_marks_the_active_page() {
        let m = menu("/admin/system/licence", None);
        let names: Vec<&str> = m.iter().map(|a| a.name).collect();
        assert_eq!(
            names,
            ["Dashboard", "Setup", "Configuration", "Resources", "System"]
        );
        const WITH_EMPTY: &[Area] = &[
            Area {
                name: "Built",
                pages: &[("Page", "/built")],
            },
            Area {
                name: "Not yet",
                pages: &[],
            },
        ];
        let names: Vec<&str> = menu_from(WITH_EMPTY, "/built", None)
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["Built"], "an area without pages is not shown");
        let system = m.iter().find(|a| a.name == "System").expect("system");
        assert!(system.active);
        assert!(
            system
                .pages
                .iter()
                .any(|p| p.active && p.path == "/admin/system/licence")
        );
    }

    #[test]
    fn an_auditor_sees_every_area_and_a_setup_only_role_sees_setup() {
        let auditor = crate::model::role::Role::auditor().console;
        assert_eq!(menu("/admin", Some(&auditor)).len(), MENU.len());
        let mut setup = ConsoleAccess::new();
        setup.insert(
            crate::model::role::Area::Setup,
            crate::model::role::Access::View,
        );
        let m = menu("/admin", Some(&setup));
        let names: Vec<&str> = m.iter().map(|a| a.name).collect();
        assert_eq!(names, ["Setup"]);
        assert!(menu("/admin", Some(&ConsoleAccess::new())).is_empty());
    }

    #[test]
    fn every_template_renders_with_sample_data() {
        let pages = Pages::new(None).expect("templates parse");
        let names = pages.names();
        assert!(names.len() >= 8, "{names:?}");
        for name in names.iter().filter(|n| !n.starts_with('_')) {
            let mut c = Context::new();
            for (k, v) in sample_context() {
                c.insert(k, &v);
            }
            let html = pages
                .render(name, &c)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(html.contains("</html>"), "{name} is not a whole page");
        }
    }

    /// Every variable any template reads, with a plausible value.
    fn sample_context() -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        vec![
            ("title", json!("Sample")),
            ("version", json!("0.0.0")),
            (
                "menu",
                serde_json::to_value(menu("/admin", None)).unwrap_or_default(),
            ),
            ("can_edit", json!(true)),
            ("directory", json!(false)),
            ("user", json!("admin")),
            ("csrf", json!("token")),
            ("licence_banner", json!("Evaluation: 30 days left")),
            ("error", json!("Something went wrong")),
            ("notice", json!("Saved")),
            ("step", json!(2)),
            (
                "steps",
                json!(["Password", "Licence", "Certificate", "Done"]),
            ),
            ("installation_code", json!("GH-AAAAA-BBBBB-CCCCC-DDDDD")),
            (
                "agreement",
                json!("accepted by admin on 2026-11-22 01:00 UTC"),
            ),
            ("min_password_length", json!(12)),
            (
                "certificate",
                json!({"subject": "CN=x", "issuer": "CN=x", "names": ["localhost"], "not_before": "2026-01-01", "not_after": "2029-01-01", "sha256_fingerprint": "AB:CD", "self_signed": true, "generated": true}),
            ),
            (
                "licence",
                json!({"state": "Licensed", "label": "Licensed", "serial": "S-1", "customer": "ACME", "expires": "2027-01-01", "max_users": "100", "gateways": "2", "provisioning": "yes", "features": "a, b", "evaluation": false}),
            ),
            ("must_change", json!(true)),
            ("username", json!("admin")),
            ("facts", json!([["Version", "0.1.0"]])),
            ("columns", json!(["When", "What"])),
            ("rows", json!([["2026-11-21", "x"]])),
            (
                "actions",
                json!([{"label": "Run now", "path": "/x", "field": "name", "value": "backup"}]),
            ),
            (
                "backups",
                json!([{"name": "gatehouse-x.ghbak", "size": "1 kB", "created": "2026-11-21"}]),
            ),
            ("backup_dir", json!("/var/lib/gatehouse/backups")),
            ("licence_action", json!("/admin/wizard/licence")),
            ("offer_evaluation", json!(true)),
            ("certificate_action", json!("/admin/wizard/certificate")),
            ("offer_keep", json!(true)),
            (
                "gateways",
                json!([{"name": "DMZ", "edit": "/admin/setup/gateways/g1", "delete": "/admin/setup/gateways/g1/delete", "public_address": "gw.example.com:443", "internal_url": "https://10.0.0.2:8443", "methods": "tunnel", "last_report": "connected, 2 s ago", "tunnels": 1, "bytes_in": "1.0 KiB", "bytes_out": "2.0 KiB"}]),
            ),
            (
                "tunnels",
                json!([[
                    "DMZ",
                    "alice",
                    "10.0.0.5:3389",
                    "192.0.2.9",
                    "tunnel",
                    "2026-11-21 10:00:00 UTC",
                    "1.0 KiB",
                    "2.0 KiB"
                ]]),
            ),
            (
                "token",
                json!({"name": "DMZ", "value": "ghgw_sample", "broker": "https://broker.example.com"}),
            ),
            (
                "jobs",
                json!([{"name": "backup", "edit": "/admin/system/jobs/backup", "schedule": "0 3 * * *", "last_start": "—", "duration": "—", "result": "not run yet", "ok": null, "next_start": "2026-11-22 03:00:00 UTC"}]),
            ),
            (
                "ranges",
                json!([["/admin/dashboard/pools?days=1", "Last day", true]]),
            ),
            (
                "pools",
                json!([{"id": "p1", "name": "Lab", "counted": "2026-11-21 10:00:00 UTC",
                    "counts": [["Total", 3], ["Assigned", 1]],
                    "chart": serde_json::to_value(super::super::stats::chart(
                        "Lab",
                        &[],
                        chrono::Utc::now() - chrono::Duration::days(1),
                        chrono::Utc::now(),
                    )).unwrap_or_default()}]),
            ),
            (
                "details",
                json!([{"id": "history", "title": "History", "columns": ["When", "What"], "rows": [["2026-11-21", "event.disconnect"]], "empty": "Nothing yet."}]),
            ),
            (
                "secret",
                json!({"title": "The agent token of pc-1", "value": "ghag_x", "help": "Copy it now."}),
            ),
            (
                "pending",
                json!({"id": "abc", "created": "2026-11-21", "installation_id": "x", "foreign": true, "encrypted": true, "records": 5, "schema": 1}),
            ),
        ]
    }
}
