//! The user portal at `/`: sign in with directory credentials, see the offered desktops,
//! connect (download the `.rdp` / `.vv` file, or read the address for VNC and SSH), release a
//! desktop, sign out.
//!
//! A portal session is a client session (`AppState::clients`) whose token sits in its own
//! cookie, `__Host-gatehouse-portal`, apart from the console's. Before sign-in the cookie holds
//! a random value instead, so the sign-in form has a CSRF token too: every form carries the
//! SHA-256 of the cookie value (domain-separated), which a page on another site can neither
//! read nor set. The sign-in and the per-request "still enabled?" check are `client`'s; the
//! rules are the broker's. This module never names sled or ldap3.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tera::Context;

use super::client::{self, Refused};
use super::session::client_ip;
use super::{AppState, HttpError};
use crate::broker::{BrokerError, ClientSession, ConnectionParams, Offer};
use crate::model::Protocol;
use crate::model::directory::AuthServer;
use crate::model::location::ClientFacts;

/// `__Host-` cookies must be Secure, have Path=/ and no Domain: the browser enforces it.
pub const COOKIE: &str = "__Host-gatehouse-portal";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/portal/login", web::post().to(login))
        .route("/portal/logout", web::post().to(logout))
        .route("/portal/desktops/{id}/connect", web::post().to(connect))
        .route("/portal/desktops/{id}/release", web::post().to(release));
}

fn cookie(value: &str) -> Cookie<'static> {
    Cookie::build(COOKIE, value.to_string())
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .finish()
}

/// The CSRF token of a cookie value (a session token or the anonymous value).
fn csrf_for(cookie_value: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"gatehouse portal csrf\0")
        .chain_update(cookie_value.as_bytes())
        .finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

fn cookie_value(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
}

fn csrf_ok(cookie_value: Option<&str>, form_token: &str) -> bool {
    cookie_value.is_some_and(|v| crate::auth::constant_time_eq(&csrf_for(v), form_token))
}

// ---- pages -----------------------------------------------------------------------------------

/// One portal page: the user-facing frame (no console menu) and the page's own values.
struct PortalPage {
    template: &'static str,
    context: Context,
    status: StatusCode,
    /// The cookie to set with the answer.
    cookie: String,
}

impl PortalPage {
    fn new(template: &'static str, title: &str, cookie: String) -> Self {
        let mut c = Context::new();
        c.insert("title", title);
        c.insert("version", env!("CARGO_PKG_VERSION"));
        c.insert("user", "");
        c.insert("csrf", &csrf_for(&cookie));
        c.insert("error", "");
        c.insert("notice", "");
        Self {
            template,
            context: c,
            status: StatusCode::OK,
            cookie,
        }
    }

    fn set<T: Serialize + ?Sized>(mut self, key: &'static str, value: &T) -> Self {
        self.context.insert(key, value);
        self
    }

    fn error(mut self, status: StatusCode, message: impl Into<String>) -> Self {
        self.context.insert("error", &message.into());
        self.status = status;
        self
    }

    fn failed(self, e: &HttpError) -> Self {
        self.error(e.status_code(), e.to_string())
    }

    fn render(self, state: &AppState) -> Result<HttpResponse, HttpError> {
        let body = state.pages.render(self.template, &self.context)?;
        let mut resp = HttpResponse::build(self.status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body);
        resp.add_cookie(&cookie(&self.cookie))
            .map_err(|e| HttpError::Render(e.to_string()))?;
        Ok(resp)
    }
}

#[derive(Serialize)]
struct DomainChoice {
    domain: String,
    name: String,
}

/// The sign-in form. `anonymous` is the visitor's cookie value when it names no session.
async fn sign_in_page(
    state: &AppState,
    anonymous: Option<String>,
    username: &str,
    domain: &str,
) -> Result<PortalPage, HttpError> {
    let servers: Vec<AuthServer> = state
        .store
        .call(|s| Ok::<_, HttpError>(s.list::<AuthServer>()?))
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let mut servers = servers;
    servers.sort_by_key(|s| s.order);
    let domains: Vec<DomainChoice> = servers
        .into_iter()
        .filter(|s| !s.domain.is_empty())
        .map(|s| DomainChoice {
            domain: s.domain,
            name: s.name,
        })
        .collect();
    let value = anonymous.unwrap_or_else(crate::auth::random_token);
    Ok(PortalPage::new("portal_login.html", "Sign in", value)
        .set("domains", &domains)
        .set("username", username)
        .set("domain", domain))
}

/// What the desktop list shows for a VNC or SSH connection (no file to download).
#[derive(Serialize)]
struct AddressView<'a> {
    desktop: &'a str,
    protocol: &'a str,
    uri: &'a str,
    host: &'a str,
    port: u16,
    gateway_url: &'a str,
    ticket: &'a str,
}

/// The desktop list of a signed-in user.
async fn desktops_page(
    state: &AppState,
    token: &str,
    session: &ClientSession,
) -> Result<PortalPage, HttpError> {
    let d = &session.decision;
    let offer = match state.broker.offer(d).await {
        Ok(offer) => offer,
        Err(e) => {
            return Ok(frame(token, session, no_offer()).failed(&e.into()));
        }
    };
    Ok(frame(token, session, offer))
}

fn frame(token: &str, session: &ClientSession, offer: Offer) -> PortalPage {
    let d = &session.decision;
    let shown = if d.display_name.is_empty() {
        d.user.username.clone()
    } else {
        d.display_name.clone()
    };
    PortalPage::new("portal.html", "Your desktops", token.to_string())
        .set("user", &shown)
        .set("location", &d.location_name)
        .set("may_release", &d.role.may_release)
        .set("desktops", &offer.desktops)
        .set("notices", &offer.notices)
}

fn no_offer() -> Offer {
    Offer {
        desktops: Vec::new(),
        notices: Vec::new(),
    }
}

/// A form without the right CSRF token: refused (403) on the page the visitor was on.
async fn csrf_refused(
    state: &AppState,
    req: &HttpRequest,
    what: &str,
) -> Result<HttpResponse, HttpError> {
    tracing::warn!("portal {what} refused: CSRF token missing or wrong");
    let value = cookie_value(req);
    let page = match value
        .as_deref()
        .and_then(|v| state.clients.get(v).map(|s| (v, s)))
    {
        Some((token, session)) => frame(token, &session, no_offer()),
        None => sign_in_page(state, None, "", "").await?,
    };
    page.failed(&HttpError::Csrf).render(state)
}

/// The visitor's session when the cookie names a good one; otherwise the page to answer with
/// (the sign-in form with the reason, or, while the directory is unreachable, the error).
async fn signed_in(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Result<(String, ClientSession), HttpResponse>, HttpError> {
    let value = cookie_value(req);
    let Some(token) = value.clone() else {
        let page = sign_in_page(state, None, "", "").await?;
        return Ok(Err(page
            .error(StatusCode::UNAUTHORIZED, Refused::NoSession.message())
            .render(state)?));
    };
    match client::check_session(state, &token).await {
        Ok(session) => Ok(Ok((token, session))),
        Err(Refused::Failed(e)) => {
            // The session stays; the user can try again once the directory answers.
            let session = state.clients.get(&token);
            let page = match session {
                Some(s) => frame(&token, &s, no_offer()),
                None => sign_in_page(state, None, "", "").await?,
            };
            Ok(Err(page.failed(&e).render(state)?))
        }
        Err(refused) => {
            let page = sign_in_page(state, None, "", "").await?;
            Ok(Err(page
                .error(StatusCode::UNAUTHORIZED, refused.message())
                .render(state)?))
        }
    }
}

// ---- handlers --------------------------------------------------------------------------------

async fn home(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, HttpError> {
    let value = cookie_value(&req);
    if value
        .as_deref()
        .and_then(|v| state.clients.get(v))
        .is_none()
    {
        return sign_in_page(&state, value, "", "").await?.render(&state);
    }
    match signed_in(&state, &req).await? {
        Ok((token, session)) => desktops_page(&state, &token, &session)
            .await?
            .render(&state),
        Err(page) => Ok(page),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    domain: String,
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, HttpError> {
    let form = form.into_inner();
    let value = cookie_value(&req);
    if !csrf_ok(value.as_deref(), &form.csrf) {
        return csrf_refused(&state, &req, "sign-in").await;
    }
    let domain = Some(form.domain.trim()).filter(|d| !d.is_empty());
    let facts = ClientFacts::from_address(client_ip(&req));
    match client::sign_in(&state, &form.username, &form.password, domain, facts).await {
        Ok((token, _, _)) => {
            // A session already named by the cookie is replaced by the new one.
            if let Some(old) = value {
                state.clients.remove(&old);
            }
            let mut resp = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/"))
                .finish();
            resp.add_cookie(&cookie(&token))
                .map_err(|e| HttpError::Render(e.to_string()))?;
            Ok(resp)
        }
        Err(e) => {
            let page = sign_in_page(&state, None, &form.username, &form.domain).await?;
            page.failed(&e).render(&state)
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HttpError> {
    let value = cookie_value(&req);
    if !csrf_ok(value.as_deref(), &form.csrf) {
        return csrf_refused(&state, &req, "sign-out").await;
    }
    if let Some(token) = value {
        state.clients.remove(&token);
    }
    sign_in_page(&state, None, "", "")
        .await?
        .set("notice", "You have signed out.")
        .render(&state)
}

async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HttpError> {
    if !csrf_ok(cookie_value(&req).as_deref(), &form.csrf) {
        return csrf_refused(&state, &req, "connect").await;
    }
    let (token, session) = match signed_in(&state, &req).await? {
        Ok(s) => s,
        Err(page) => return Ok(page),
    };
    let connected = state
        .broker
        .connect(&session.decision, &id, client_ip(&req))
        .await;
    let (desktop, params) = match connected {
        Ok(c) => c,
        Err(e) => return refused(&state, &token, &session, e).await,
    };
    tracing::info!(
        user = %session.decision.user.key(),
        desktop = %desktop.name,
        "portal user connects"
    );
    // A connection file names the desktop's own address: through the gateway the client
    // needs the tunnel instead, which the page says how to open.
    if params.gateway.is_none()
        && let Some(response) = download(&params)
    {
        return Ok(response);
    }
    let view = AddressView {
        desktop: desktop.shown_name(),
        protocol: params.protocol.as_str(),
        uri: &params.uri,
        host: &params.host,
        port: params.port,
        gateway_url: params.gateway.as_ref().map_or("", |g| g.url.as_str()),
        ticket: params.gateway.as_ref().map_or("", |g| g.ticket.as_str()),
    };
    desktops_page(&state, &token, &session)
        .await?
        .set("connection", &view)
        .render(&state)
}

/// The connection file as a download, when the protocol has one.
fn download(params: &ConnectionParams) -> Option<HttpResponse> {
    let (Some(name), Some(file)) = (&params.file_name, &params.file) else {
        return None;
    };
    let content_type = match params.protocol {
        Protocol::Rdp => "application/x-rdp",
        Protocol::Spice => "application/x-virt-viewer",
        Protocol::Vnc | Protocol::Ssh => "application/octet-stream",
    };
    Some(
        HttpResponse::Ok()
            .content_type(content_type)
            .insert_header(ContentDisposition {
                disposition: DispositionType::Attachment,
                parameters: vec![DispositionParam::Filename(name.clone())],
            })
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(file.clone()),
    )
}

/// The desktop list again, with a broker refusal above it.
async fn refused(
    state: &AppState,
    token: &str,
    session: &ClientSession,
    e: BrokerError,
) -> Result<HttpResponse, HttpError> {
    let e = HttpError::from(e);
    desktops_page(state, token, session)
        .await?
        .failed(&e)
        .render(state)
}

async fn release(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HttpError> {
    if !csrf_ok(cookie_value(&req).as_deref(), &form.csrf) {
        return csrf_refused(&state, &req, "release").await;
    }
    let (token, session) = match signed_in(&state, &req).await? {
        Ok(s) => s,
        Err(page) => return Ok(page),
    };
    if !session.decision.role.may_release {
        return refused(&state, &token, &session, BrokerError::Forbidden).await;
    }
    match state.broker.release(&session.decision.user, &id).await {
        Ok(desktop) => {
            tracing::info!(
                user = %session.decision.user.key(),
                desktop = %desktop.name,
                "portal user released a desktop"
            );
            desktops_page(&state, &token, &session)
                .await?
                .set("notice", &format!("{} was released.", desktop.shown_name()))
                .render(&state)
        }
        Err(e) => refused(&state, &token, &session, e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_bound_to_the_cookie_value() {
        let a = csrf_for("cookie-a");
        assert_eq!(a, csrf_for("cookie-a"));
        assert_ne!(a, csrf_for("cookie-b"));
        // Not the session map's key (the plain SHA-256 of the token).
        let plain = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::auth::token_key("cookie-a"));
        assert_ne!(a, plain);
        assert!(csrf_ok(Some("cookie-a"), &a));
        assert!(!csrf_ok(Some("cookie-b"), &a));
        assert!(!csrf_ok(None, &a));
        assert!(!csrf_ok(Some("cookie-a"), ""));
    }

    fn render(page: PortalPage) -> String {
        let pages = super::super::Pages::new(None).expect("templates parse");
        pages.render(page.template, &page.context).expect("renders")
    }

    #[test]
    fn the_sign_in_page_offers_the_domains_and_keeps_what_was_typed() {
        let page = PortalPage::new("portal_login.html", "Sign in", "anon".into())
            .set(
                "domains",
                &[
                    DomainChoice {
                        domain: "EXAMPLE".into(),
                        name: "Head office".into(),
                    },
                    DomainChoice {
                        domain: "BRANCH".into(),
                        name: "Branch <office>".into(),
                    },
                ],
            )
            .set("username", "alice")
            .set("domain", "BRANCH")
            .error(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
        let html = render(page);
        assert!(
            html.contains(&format!("value=\"{}\"", csrf_for("anon"))),
            "{html}"
        );
        assert!(
            html.contains("<option value=\"BRANCH\" selected>"),
            "{html}"
        );
        assert!(html.contains("Branch &lt;office&gt;"), "escaped: {html}");
        assert!(html.contains("value=\"alice\""), "{html}");
        assert!(html.contains("Wrong user name or password."));
        assert!(!html.contains("/admin"), "no console links: {html}");
    }

    #[test]
    fn the_desktop_list_shows_connect_release_and_vnc_addresses() {
        use crate::broker::OfferedDesktop;
        use crate::model::desktop::PowerState;
        let desktop = |id: &str, yours| OfferedDesktop {
            id: id.into(),
            name: id.into(),
            display_name: format!("Desk {id}"),
            protocol: Protocol::Rdp,
            power_state: PowerState::Running,
            pool_id: "p".into(),
            pool_name: "Lab".into(),
            yours,
        };
        let page = PortalPage::new("portal.html", "Your desktops", "tok".into())
            .set("user", "Alice")
            .set("may_release", &true)
            .set("desktops", &[desktop("d1", true), desktop("d2", false)])
            .set(
                "notices",
                &["No desktop is available in pool Spare right now."],
            )
            .set(
                "connection",
                &AddressView {
                    desktop: "Desk d1",
                    protocol: "vnc",
                    uri: "vnc://10.0.0.5:5900",
                    host: "10.0.0.5",
                    port: 5900,
                    gateway_url: "",
                    ticket: "",
                },
            );
        let html = render(page);
        assert!(html.contains("Signed in as Alice"), "{html}");
        assert!(html.contains("action=\"/portal/desktops/d1/connect\""));
        assert!(html.contains("action=\"/portal/desktops/d2/connect\""));
        assert!(html.contains("action=\"/portal/desktops/d1/release\""));
        assert!(
            !html.contains("/portal/desktops/d2/release"),
            "only one's own desktop can be released"
        );
        assert!(html.contains("No desktop is available in pool Spare"));
        assert!(html.contains("vnc://10.0.0.5:5900"));
        assert!(html.contains("action=\"/portal/logout\""));
    }

    #[test]
    fn connection_files_download_with_their_type_and_name() {
        let setting = |protocol| crate::model::plan::ProtocolSetting {
            protocol,
            priority: 1,
            file_lines: Vec::new(),
            command_line: String::new(),
            via_gateway: false,
            gateway_method: Default::default(),
        };
        let rdp = crate::broker::connect::params(
            &setting(Protocol::Rdp),
            "10.0.0.5",
            3389,
            "alice",
            "Desk 1",
            None,
        );
        let resp = download(&rdp).expect("a download");
        let header_of = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header_of(header::CONTENT_TYPE), "application/x-rdp");
        assert_eq!(
            header_of(header::CONTENT_DISPOSITION),
            "attachment; filename=\"Desk_1.rdp\""
        );
        let vv = crate::broker::connect::params(
            &setting(Protocol::Spice),
            "h",
            5900,
            "alice",
            "D",
            None,
        );
        let resp = download(&vv).expect("a download");
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/x-virt-viewer")
        );
        let vnc =
            crate::broker::connect::params(&setting(Protocol::Vnc), "h", 5900, "alice", "D", None);
        assert!(download(&vnc).is_none(), "VNC shows an address instead");
    }
}
