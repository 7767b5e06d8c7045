//! Who is asking: the session cookie, the extractors that require a signed-in administrator,
//! and the CSRF check every form passes through.

use std::future::{Ready, ready};
use std::net::{IpAddr, Ipv4Addr};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::{AppState, HttpError};
use crate::admin::Actor;
use crate::auth::{self, Session};

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
