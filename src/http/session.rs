//! Who is asking: the session cookie, the extractors that require a signed-in administrator,
//! the CSRF check every form passes through, and the periodic check of a directory user's
//! console session or API token against the directory.

use std::future::{Ready, ready};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::{AppState, HttpError};
use crate::admin::{self, Actor};
use crate::auth::{self, Session};
use crate::broker::{BrokerError, UserKey};
use crate::model::location::ClientFacts;

/// `__Host-` cookies must be Secure, have Path=/ and no Domain: the browser enforces it.
pub const COOKIE: &str = "__Host-gatehouse";

pub fn cookie(token: &str) -> Cookie<'static> {
    Cookie::build(COOKIE, token.to_string())
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .finish()
}

pub fn removal_cookie() -> Cookie<'static> {
    let mut c = cookie("");
    c.make_removal();
    c
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), if there is one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The client's address: the peer, or what `X-Forwarded-For` says when the peer is a
/// trusted proxy (`server.trusted_proxies`); the header is ignored from anyone else.
pub fn client_ip(req: &HttpRequest) -> IpAddr {
    // Through the gateway's front door the real client travels with the connection.
    let peer = req
        .conn_data::<crate::gateway::listener::Origin>()
        .map(|o| o.peer)
        .or_else(|| req.peer_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return peer;
    };
    if state.trusted_proxies.is_empty() {
        return peer;
    }
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = forwarded.join(",");
    crate::model::location::client_address(
        peer,
        (!joined.is_empty()).then_some(joined.as_str()),
        &state.trusted_proxies,
    )
}

/// The token a request is signed in with: for the API a bearer token, elsewhere the console
/// cookie.
pub fn token_of(req: &HttpRequest) -> Option<String> {
    if super::access::routed_path(req).starts_with("/api/") {
        bearer(req).map(str::to_string)
    } else {
        req.cookie(COOKIE).map(|c| c.value().to_string())
    }
}

/// The session user name of a directory user: `server_id/username`.
pub fn directory_name(user: &UserKey) -> String {
    format!("{}/{}", user.server_id, user.username)
}

/// The directory user a session user name names (server ids hold no `/`).
fn directory_user(name: &str) -> Option<UserKey> {
    let (server_id, username) = name.split_once('/')?;
    Some(UserKey {
        server_id: server_id.to_string(),
        username: username.to_string(),
    })
}

/// Checks a directory user's console session or API token against the directory when the
/// last check is `security.directory_recheck_seconds` or longer ago: the user must still be
/// in the directory and enabled, and the role their groups now give must still show the
/// console (its access map replaces the session's). Otherwise the session ends, audited with
/// the reason, and the request is refused with [`HttpError::SessionEnded`]. While the
/// directory cannot be reached the request is refused (503) but the session kept, and the
/// next request checks again: a session is never served unchecked past the interval.
///
/// Local accounts, anonymous visitors and other tokens (clients, gateways, agents) pass
/// untouched, as do signing in and out.
pub async fn check_directory_user(state: &AppState, req: &HttpRequest) -> Result<(), HttpError> {
    // Signing in again replaces the session; signing out ends it whatever the directory says.
    if matches!(
        super::access::routed_path(req),
        "/admin/login" | "/admin/logout"
    ) {
        return Ok(());
    }
    let Some(token) = token_of(req) else {
        return Ok(());
    };
    let every = Duration::from_secs(u64::from(state.config.security.directory_recheck_seconds));
    let Some(name) = state.sessions.due_for_check(&token, every) else {
        return Ok(());
    };
    let ip = client_ip(req);
    let reason = match directory_user(&name) {
        None => "the session names no directory user".to_string(),
        Some(user) => {
            let facts = ClientFacts::from_address(ip);
            match state.broker.recheck(&user, &facts).await {
                Ok(decision) => match super::signin::console_access(&decision) {
                    Some(console) => {
                        state.sessions.checked(&token, console);
                        return Ok(());
                    }
                    None => "the role the user's groups now give has no console access".into(),
                },
                Err(e @ (BrokerError::DirectoryUnreachable(_) | BrokerError::Store(_))) => {
                    return Err(e.into());
                }
                Err(BrokerError::Disabled) => {
                    "the account is disabled or no longer exists in the directory".into()
                }
                Err(BrokerError::NoAccess) => {
                    "no assignment row gives the user access any more".into()
                }
                Err(e) => format!(
                    "the user's access cannot be decided ({})",
                    e.to_string().trim_end_matches('.')
                ),
            }
        }
    };
    state.sessions.end(&token);
    tracing::info!(user = %name, "console session ended: {reason}");
    let actor = Actor {
        name,
        source: ip.to_string(),
    };
    let detail = format!("session ended by the directory check: {reason}");
    state
        .store
        .call(move |s| admin::audit(s, &actor, "session.ended", detail, false))
        .await?;
    Err(HttpError::SessionEnded(reason))
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, HttpError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| HttpError::Render("application state missing".into()))
}

/// Any visitor, with their session if the cookie names a live one.
pub struct Visitor {
    pub token: Option<String>,
    pub session: Option<Session>,
    pub ip: IpAddr,
}

impl Visitor {
    fn from_request(req: &HttpRequest) -> Result<Self, HttpError> {
        let state = state(req)?;
        let token = req.cookie(COOKIE).map(|c| c.value().to_string());
        let session = token.as_deref().and_then(|t| state.sessions.get(t));
        Ok(Self {
            token: if session.is_some() { token } else { None },
            session,
            ip: client_ip(req),
        })
    }
}

impl FromRequest for Visitor {
    type Error = HttpError;
    type Future = Ready<Result<Self, HttpError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Visitor::from_request(req))
    }
}

/// A signed-in administrator, whatever is still pending (wizard, password change).
pub struct SignedIn {
    pub token: String,
    pub session: Session,
    pub username: String,
    pub ip: IpAddr,
}

impl SignedIn {
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.username.clone(),
            source: self.ip.to_string(),
        }
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, token: &str) -> Result<(), HttpError> {
        check_csrf(&self.session, token)
    }
}

pub fn check_csrf(session: &Session, token: &str) -> Result<(), HttpError> {
    if auth::constant_time_eq(&session.csrf, token) {
        Ok(())
    } else {
        tracing::warn!("form refused: CSRF token missing or wrong");
        Err(HttpError::Csrf)
    }
}

impl FromRequest for SignedIn {
    type Error = HttpError;
    type Future = Ready<Result<Self, HttpError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            Visitor::from_request(req).and_then(|v| match (v.token, v.session) {
                (Some(token), Some(session)) if session.username.is_some() => Ok(SignedIn {
                    username: session.username.clone().unwrap_or_default(),
                    token,
                    session,
                    ip: v.ip,
                }),
                _ => Err(HttpError::NotSignedIn),
            }),
        )
    }
}

/// A signed-in administrator with full console access: the wizard is done (the gate sees to
/// that), the factory password is gone and no one-time password waits to be changed.
pub struct Console(pub SignedIn);

impl FromRequest for Console {
    type Error = HttpError;
    type Future = Ready<Result<Self, HttpError>>;
    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let signed_in = match SignedIn::from_request(req, payload).into_inner() {
            Ok(s) => s,
            Err(e) => return ready(Err(e)),
        };
        if signed_in.session.factory {
            return ready(Err(HttpError::SetupRequired));
        }
        if signed_in.session.must_change {
            return ready(Err(HttpError::MustChangePassword));
        }
        ready(Ok(Console(signed_in)))
    }
}

impl std::ops::Deref for Console {
    type Target = SignedIn;
    fn deref(&self) -> &SignedIn {
        &self.0
    }
}

/// A console form that carries nothing but its CSRF token (a button that acts).
#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

#[cfg(test)]
mod tests {
    use actix_web::http::header;
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer abc123"))
            .to_http_request();
        assert_eq!(bearer(&req), Some("abc123"));
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "bearer  xyz "))
            .to_http_request();
        assert_eq!(bearer(&req), Some("xyz"));
        for value in ["Basic abc", "Bearer", "Bearer   ", "abc"] {
            let req = TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request();
            assert_eq!(bearer(&req), None, "{value}");
        }
        assert_eq!(bearer(&TestRequest::default().to_http_request()), None);
    }
}
