//! Console access by role, enforced in one place: every console page and admin API path
//! belongs to a console area (the console's menu placement), reading it needs View and
//! changing anything needs Edit. Roles and assignments are the exception: they can grant any
//! access, so changing them needs Edit in every area (no role escalates itself). [`gate`] runs
//! before any handler, on the path the router matches, so no handler can forget.
//!
//! Local accounts (`admin`) have full access; directory users have the access map their role
//! gave them at sign-in or at the last check against the directory (kept in the session).
//! This module decides nothing else: who someone is stays in `auth`, the extractors and the
//! directory check in `session`, which the gate leaves to answer "sign in first".

use actix_web::HttpRequest;
use actix_web::http::Method;
use actix_web::web;

use super::{AppState, HttpError};
use crate::auth::{ConsoleAccess, Session};
use crate::model::role::{Access, Area};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Open to anyone the handler lets in (sign-in, wizard, My options, client API, assets).
    Open,
    /// This level of this area.
    Area(Area, Access),
    /// Only local accounts (a path no area claims).
    LocalOnly,
    /// Changing roles or assignments: they can grant any access, so only someone who has all
    /// of it (Edit in every area, or a local account) may change them.
    Everything,
}

/// Whether a path (after `/api/v1/` or `/admin/configuration/`) is about roles or assignments.
fn grants_access(resource: &str) -> bool {
    matches!(resource, "roles" | "assignments")
}

/// The area of an admin API resource (the first segment after `/api/v1/`), by its place in
/// the console menu.
fn api_area(resource: &str) -> Option<Area> {
    Some(match resource {
        "dashboard" => Area::Dashboard,
        "auth-servers" | "certificate" | "centers" | "gateways" | "gateway-reports" => Area::Setup,
        "locations" | "roles" | "protocol-plans" | "power-plans" | "release-plans" | "policies"
        | "assignments" | "pools" => Area::Configuration,
        "desktops" | "users" | "sessions" | "test-login" | "timers" => Area::Resources,
        "licence" | "backups" | "jobs" | "audit" => Area::System,
        _ => return None,
    })
}

/// Reading needs View; anything else (and reads that act or export) needs Edit.
fn needed(method: &Method, path: &str) -> Access {
    let acts_on_read = path.starts_with("/admin/system/backups/files/")
        || (path.starts_with("/api/v1/auth-servers/") && path.ends_with("/test"));
    // (Center tests and refreshes are POSTs: Edit already.)
    if (method == Method::GET || method == Method::HEAD) && !acts_on_read {
        Access::View
    } else {
        Access::Edit
    }
}

/// The rule for a request.
pub fn rule(method: &Method, path: &str) -> Rule {
    let path = path.trim_end_matches('/');
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let resource = rest.split('/').next().unwrap_or_default();
        return match resource {
            // Gateways, clients and desktop agents authenticate with their own tokens, in the
            // handlers.
            "tokens" | "openapi.json" | "client" | "gateway" | "agent" => Rule::Open,
            r => match (api_area(r), needed(method, path)) {
                (Some(_), Access::Edit) if grants_access(r) => Rule::Everything,
                (Some(area), level) => Rule::Area(area, level),
                (None, _) => Rule::LocalOnly,
            },
        };
    }
    if path == "/admin" {
        return Rule::Area(Area::Dashboard, needed(method, path));
    }
    let Some(rest) = path.strip_prefix("/admin/") else {
        return Rule::Open;
    };
    let first = rest.split('/').next().unwrap_or_default();
    match first {
        "login" | "logout" | "me" => Rule::Open,
        // Before setup only the local account can sign in; after it the wizard's steps still
        // replace the licence and the certificate, so a directory user never reaches them.
        "wizard" => Rule::LocalOnly,
        "dashboard" | "setup" | "configuration" | "resources" | "system" => {
            let page = rest.split('/').nth(1).unwrap_or_default();
            match (first.parse::<Area>(), needed(method, path)) {
                (Ok(Area::Configuration), Access::Edit) if grants_access(page) => Rule::Everything,
                (Ok(area), level) => Rule::Area(area, level),
                (Err(_), _) => Rule::LocalOnly,
            }
        }
        _ => Rule::LocalOnly,
    }
}

/// Whether a session may do what the rule needs. `None` access is a local account.
pub fn allows(console: Option<&ConsoleAccess>, rule: Rule) -> bool {
    match (console, rule) {
        (_, Rule::Open) | (None, _) => true,
        (Some(_), Rule::LocalOnly) => false,
        (Some(map), Rule::Area(area, level)) => {
            map.get(&area).copied().unwrap_or_default().allows(level)
        }
        (Some(map), Rule::Everything) => Area::ALL.iter().all(|area| {
            map.get(area)
                .copied()
                .unwrap_or_default()
                .allows(Access::Edit)
        }),
    }
}

/// The path the router matches: percent-escapes decoded (`/%61pi/v1/roles` is
/// `/api/v1/roles`). Every decision about where a request goes is made on this path, never on
/// the raw one, or an escaped path would reach a handler its rule never saw.
pub fn routed_path(req: &HttpRequest) -> &str {
    req.match_info().as_str()
}

/// The signed-in session a request carries: the console cookie, or for the API a bearer token.
fn session_of(req: &HttpRequest, state: &AppState) -> Option<Session> {
    let token = super::session::token_of(req)?;
    state.sessions.get(&token).filter(|s| s.username.is_some())
}

/// The gate: `Err` when a signed-in directory user's role does not reach the request's area.
/// Requests without a signed-in session pass: the handler's extractor asks them to sign in.
pub fn gate(req: &HttpRequest) -> Result<(), HttpError> {
    let path = routed_path(req);
    let rule = rule(req.method(), path);
    if rule == Rule::Open {
        return Ok(());
    }
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(());
    };
    let Some(session) = session_of(req, state) else {
        return Ok(());
    };
    if allows(session.console.as_ref(), rule) {
        return Ok(());
    }
    tracing::warn!(
        user = session.username.as_deref().unwrap_or_default(),
        path,
        "refused by role"
    );
    Err(HttpError::Forbidden(match rule {
        Rule::Area(area, Access::Edit) => format!(
            "Your role may not change anything in {}: ask an administrator.",
            area.label()
        ),
        Rule::Area(area, _) => format!(
            "Your role does not show {}: ask an administrator.",
            area.label()
        ),
        Rule::Everything => "Roles and assignments can grant any access: changing them needs Edit in every area. Ask an administrator.".to_string(),
        _ => "Only local administrator accounts may open this.".to_string(),
    }))
}

/// The first console page a session may see, to land on after signing in.
pub fn landing_page(console: Option<&ConsoleAccess>) -> &'static str {
    super::pages::MENU
        .iter()
        .flat_map(|a| a.pages.iter())
        .map(|(_, path)| *path)
        .find(|path| allows(console, rule(&Method::GET, path)))
        .unwrap_or("/admin/me")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auditor() -> ConsoleAccess {
        crate::model::role::Role::auditor().console
    }

    #[test]
    fn pages_and_api_resources_belong_to_their_menu_area() {
        let get = Method::GET;
        assert_eq!(
            rule(&get, "/admin"),
            Rule::Area(Area::Dashboard, Access::View)
        );
        assert_eq!(
            rule(&Method::POST, "/admin/configuration/pools/new"),
            Rule::Area(Area::Configuration, Access::Edit)
        );
        assert_eq!(
            rule(&get, "/api/v1/auth-servers/x/test"),
            Rule::Area(Area::Setup, Access::Edit),
            "testing a connection is an action"
        );
        assert_eq!(
            rule(&get, "/admin/system/backups/files/a.ghbak"),
            Rule::Area(Area::System, Access::Edit),
            "downloading a backup exports everything"
        );
        assert_eq!(
            rule(&Method::PUT, "/api/v1/assignments/s1"),
            Rule::Everything,
            "assignments grant roles"
        );
        assert_eq!(
            rule(&get, "/api/v1/users"),
            Rule::Area(Area::Resources, Access::View)
        );
        assert_eq!(rule(&Method::POST, "/api/v1/tokens"), Rule::Open);
        assert_eq!(rule(&Method::POST, "/api/v1/client/sign-in"), Rule::Open);
        assert_eq!(rule(&Method::POST, "/api/v1/gateway/report"), Rule::Open);
        assert_eq!(rule(&Method::POST, "/api/v1/agent/events"), Rule::Open);
        assert_eq!(
            rule(&get, "/admin/dashboard/pools"),
            Rule::Area(Area::Dashboard, Access::View)
        );
        assert_eq!(
            rule(&Method::POST, "/api/v1/jobs/backup/run"),
            Rule::Area(Area::System, Access::Edit)
        );
        assert_eq!(
            rule(&Method::POST, "/api/v1/gateways/g1/token"),
            Rule::Area(Area::Setup, Access::Edit)
        );
        assert_eq!(
            rule(&get, "/api/v1/gateway-reports"),
            Rule::Area(Area::Setup, Access::View)
        );
        assert_eq!(rule(&get, "/admin/me"), Rule::Open);
        assert_eq!(
            rule(&Method::POST, "/admin/wizard/licence"),
            Rule::LocalOnly
        );
        assert_eq!(rule(&get, "/admin/something-new"), Rule::LocalOnly);
        assert_eq!(rule(&get, "/api/v1/something-new"), Rule::LocalOnly);
        assert_eq!(rule(&get, "/portal"), Rule::Open);
    }

    #[test]
    fn roles_and_assignments_change_only_with_every_area_s_edit() {
        let post = Method::POST;
        for path in [
            "/api/v1/roles",
            "/api/v1/roles/x",
            "/api/v1/assignments/slapd",
            "/admin/configuration/roles/new",
            "/admin/configuration/assignments/slapd",
        ] {
            assert_eq!(rule(&post, path), Rule::Everything, "{path}");
        }
        assert_eq!(
            rule(&Method::GET, "/api/v1/roles"),
            Rule::Area(Area::Configuration, Access::View),
            "reading them is Configuration's"
        );
        assert_eq!(
            rule(&post, "/admin/configuration/pools/new"),
            Rule::Area(Area::Configuration, Access::Edit)
        );
        let mut configurator = auditor();
        configurator.insert(Area::Configuration, Access::Edit);
        assert!(allows(Some(&configurator), rule(&post, "/api/v1/pools")));
        assert!(
            !allows(Some(&configurator), rule(&post, "/api/v1/roles")),
            "Configuration's Edit alone must not make its holder an administrator"
        );
        let all: ConsoleAccess = Area::ALL.iter().map(|a| (*a, Access::Edit)).collect();
        assert!(allows(Some(&all), rule(&post, "/api/v1/roles")));
        assert!(
            allows(None, rule(&post, "/api/v1/roles")),
            "a local account"
        );
    }

    #[test]
    fn every_menu_page_has_an_area() {
        for area in super::super::pages::MENU {
            for (_, path) in area.pages {
                let found = match rule(&Method::GET, path) {
                    Rule::Area(area, _) => Some(area.label()),
                    _ => None,
                };
                assert_eq!(found, Some(area.name), "{path}");
            }
        }
    }

    #[test]
    fn an_auditor_reads_but_changes_nothing_and_a_local_account_does_everything() {
        let a = auditor();
        assert!(allows(
            Some(&a),
            rule(&Method::GET, "/admin/configuration/pools")
        ));
        assert!(!allows(
            Some(&a),
            rule(&Method::POST, "/admin/configuration/pools/new")
        ));
        assert!(!allows(Some(&a), rule(&Method::DELETE, "/api/v1/pools/p")));
        assert!(!allows(Some(&a), rule(&Method::GET, "/admin/other")));
        assert!(allows(
            None,
            rule(&Method::POST, "/admin/configuration/pools/new")
        ));
        let mut setup_only = ConsoleAccess::new();
        setup_only.insert(Area::Setup, Access::Edit);
        assert!(!allows(Some(&setup_only), rule(&Method::GET, "/admin")));
        assert_eq!(landing_page(Some(&setup_only)), "/admin/setup/certificate");
        assert_eq!(landing_page(None), "/admin");
        assert_eq!(landing_page(Some(&ConsoleAccess::new())), "/admin/me");
    }
}
