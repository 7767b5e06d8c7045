//! Signing in and out, and My options (changing one's own password).

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::access;
use super::pages::{Page, see_other};
use super::session::{self, SignedIn, Visitor};
use super::{AppState, HttpError};
use crate::admin::{self, Actor, AdminError};
use crate::auth::{ConsoleAccess, Verdict};
use crate::broker::{BrokerError, Decision};
use crate::model::AdminAccount;
use crate::model::location::ClientFacts;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/login", web::get().to(login_page))
        .route("/admin/login", web::post().to(login))
        .route("/admin/logout", web::post().to(logout))
        .route("/admin/me", web::get().to(me_page))
        .route("/admin/me/password", web::post().to(change_password));
}

async fn login_page(
    state: web::Data<AppState>,
    visitor: Visitor,
) -> Result<HttpResponse, HttpError> {
    if visitor
        .session
        .as_ref()
        .is_some_and(|s| s.username.is_some())
    {
        return Ok(see_other("/admin"));
    }
    login_form(&state, visitor, StatusCode::OK, "").await
}

/// The sign-in form, with an anonymous session (for its CSRF token) when there is none.
async fn login_form(
    state: &AppState,
    visitor: Visitor,
    status: StatusCode,
    error: &str,
) -> Result<HttpResponse, HttpError> {
    let (token, session) = match (visitor.token, visitor.session) {
        (Some(t), Some(s)) if s.username.is_none() => (t, s),
        _ => state.sessions.start(),
    };
    let mut page = Page::new(state, None, "login.html", "Sign in", "").await?;
    page.set("csrf", &session.csrf);
    let page = if error.is_empty() {
        page
    } else {
        page.error(status, error)
    };
    let mut resp = page.render(state)?;
    resp.add_cookie(&session::cookie(&token))
        .map_err(|e| HttpError::Render(e.to_string()))?;
    Ok(resp)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    username: String,
    password: String,
}

async fn login(
    state: web::Data<AppState>,
    visitor: Visitor,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, HttpError> {
    let form = form.into_inner();
    let Some(session) = visitor.session.as_ref() else {
        return Err(HttpError::Csrf);
    };
    session::check_csrf(session, &form.csrf)?;
    if crate::auth::too_long(&form.username, &form.password) {
        return login_form(
            &state,
            visitor,
            StatusCode::BAD_REQUEST,
            super::api::TOO_LONG,
        )
        .await;
    }
    let username = form.username.trim().to_string();
    let actor = Actor {
        name: username.clone(),
        source: visitor.ip.to_string(),
    };
    // `alice`, `EXAMPLE\alice` and `alice@example.com` share one lockout budget.
    let account = crate::auth::throttle_account(&username);
    let delay = match state.throttle.check(&account, visitor.ip) {
        Verdict::Locked { for_, first } => {
            state.metrics.signin_failures.inc();
            if first {
                let a = actor.clone();
                state
                    .store
                    .call(move |s| admin::audit(s, &a, "signin.locked", super::api::LOCKED, false))
                    .await?;
            }
            let minutes = for_.as_secs().div_ceil(60).max(1);
            let message = HttpError::Locked { minutes }.to_string();
            return login_form(&state, visitor, StatusCode::TOO_MANY_REQUESTS, &message).await;
        }
        Verdict::Allowed { delay } => delay,
    };
    let outcome = check_credentials(&state, &username, form.password, visitor.ip).await?;
    let (token, audit_name, must_change, console) = match outcome {
        Credentials::Local(signed_in) => {
            let token = state.sessions.sign_in(
                visitor.token.as_deref(),
                &username,
                signed_in.factory,
                signed_in.must_change,
            );
            (token, username.clone(), signed_in.must_change, None)
        }
        Credentials::Directory { name, console } => {
            let token =
                state
                    .sessions
                    .sign_in_directory(visitor.token.as_deref(), &name, console.clone());
            (token, name, false, Some(console))
        }
        Credentials::Refused(detail) => {
            state.metrics.signin_failures.inc();
            let locked = state.throttle.failure(&account, visitor.ip);
            let a = actor.clone();
            state
                .store
                .call(move |s| {
                    let detail = if locked {
                        format!("{detail}; now locked out")
                    } else {
                        detail.to_string()
                    };
                    admin::audit(s, &a, "signin.failed", &detail, false)
                })
                .await?;
            tokio::time::sleep(delay).await;
            return login_form(
                &state,
                visitor,
                StatusCode::UNAUTHORIZED,
                "Wrong user name or password.",
            )
            .await;
        }
    };
    state.throttle.success(&account);
    let actor = Actor {
        name: audit_name,
        ..actor
    };
    state
        .store
        .call(move |s| admin::audit(s, &actor, "signin", "signed in to the console", true))
        .await?;
    let to = if !state.wizard_done.load(Ordering::Relaxed) {
        "/admin/wizard"
    } else if must_change {
        "/admin/me"
    } else {
        access::landing_page(console.as_ref())
    };
    let mut resp = see_other(to);
    resp.add_cookie(&session::cookie(&token))
        .map_err(|e| HttpError::Render(e.to_string()))?;
    Ok(resp)
}

/// What a user name and password turned out to be, for the console and for API tokens.
pub enum Credentials {
    /// A local account (`admin`): full access.
    Local(admin::SignedIn),
    /// A directory user whose role sees part of the console; `name` is `server_id/username`.
    Directory {
        name: String,
        console: ConsoleAccess,
    },
    /// Refused: the caller answers "Wrong user name or password." and audits the detail.
    Refused(&'static str),
}

/// Checks a sign-in: a local account by its password, any other name through the directory
/// (once the wizard is done), refused when the user's role has no console access. A directory
/// that cannot be reached is an error of its own, not a failed sign-in.
pub async fn check_credentials(
    state: &AppState,
    username: &str,
    password: String,
    ip: std::net::IpAddr,
) -> Result<Credentials, HttpError> {
    let (user, typed) = (username.to_string(), password.clone());
    let local = state
        .store
        .call(move |s| {
            let known = s.get::<AdminAccount>(&user)?.is_some();
            match admin::check_password(s, &user, &typed) {
                Ok(ok) => Ok(Some(ok)),
                Err(AdminError::WrongPassword) => Ok(None),
                Err(e) => Err(e),
            }
            .map(|checked| (known, checked))
        })
        .await?;
    match local {
        (true, Some(signed_in)) => return Ok(Credentials::Local(signed_in)),
        (true, None) => return Ok(Credentials::Refused("wrong password")),
        // Not a local account (checked against the decoy hash all the same, so the answer
        // takes as long): the directory decides, once the wizard is done.
        (false, _) if !state.wizard_done.load(Ordering::Relaxed) => {
            return Ok(Credentials::Refused("wrong password"));
        }
        (false, _) => {}
    }
    let decision = match state
        .broker
        .sign_in(username, &password, None, &ClientFacts::from_address(ip))
        .await
    {
        Ok(d) => d,
        // An expired password is told as such: the directory checked the password first, and
        // the user has something to do before any sign-in can work.
        Err(
            e @ (BrokerError::DirectoryUnreachable(_)
            | BrokerError::Store(_)
            | BrokerError::PasswordExpired),
        ) => {
            return Err(e.into());
        }
        Err(BrokerError::NoAccess) => return Ok(Credentials::Refused("directory: no access")),
        Err(BrokerError::Disabled) => {
            return Ok(Credentials::Refused("directory: account disabled"));
        }
        Err(_) => {
            return Ok(Credentials::Refused(
                "directory: wrong password or unknown user",
            ));
        }
    };
    let Some(console) = console_access(&decision) else {
        return Ok(Credentials::Refused(
            "directory: the role has no console access",
        ));
    };
    Ok(Credentials::Directory {
        name: session::directory_name(&decision.user),
        console,
    })
}

/// The console access a directory user's decision gives: their role's map, when the role
/// shows any of the console. Signing in and each later check of the session ask this.
pub fn console_access(decision: &Decision) -> Option<ConsoleAccess> {
    decision
        .role
        .has_console()
        .then(|| decision.role.console.clone())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    state: web::Data<AppState>,
    who: SignedIn,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    state.sessions.end(&who.token);
    let actor = who.actor();
    state
        .store
        .call(move |s| admin::audit(s, &actor, "signout", "signed out", true))
        .await?;
    let mut resp = see_other("/admin/login");
    resp.add_cookie(&session::removal_cookie())
        .map_err(|e| HttpError::Render(e.to_string()))?;
    Ok(resp)
}

async fn me_form(state: &AppState, who: &SignedIn) -> Result<Page, HttpError> {
    let mut page = Page::new(state, Some(who), "me.html", "My options", "/admin/me").await?;
    page.set("username", &who.username)
        .set("directory", &who.session.console.is_some())
        .set("must_change", &who.session.must_change)
        .set(
            "min_password_length",
            &state.config.security.min_password_length,
        );
    Ok(page)
}

async fn me_page(state: web::Data<AppState>, who: SignedIn) -> Result<HttpResponse, HttpError> {
    me_form(&state, &who).await?.render(&state)
}

/// What a directory user reads about their password.
const DIRECTORY_PASSWORD: &str =
    "Your account is in the directory: change your password there, not in this console.";

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    current: String,
    password: String,
    confirm: String,
}

async fn change_password(
    state: web::Data<AppState>,
    who: SignedIn,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    if who.session.console.is_some() {
        return Err(HttpError::Forbidden(DIRECTORY_PASSWORD.into()));
    }
    let form = form.into_inner();
    let actor = who.actor();
    let min = state.config.security.min_password_length;
    let result = state
        .store
        .call(move |s| {
            admin::change_password(s, &actor, &form.current, &form.password, &form.confirm, min)
        })
        .await;
    match result {
        Ok(()) => {
            state.sessions.update(&who.token, false, false);
            state.sessions.end_all_for(&who.username, Some(&who.token));
            let mut page = me_form(&state, &who).await?;
            page.set("must_change", &false)
                .set("notice", "Your password has been changed.");
            page.render(&state)
        }
        Err(e @ (AdminError::WeakPassword(_) | AdminError::WrongPassword)) => {
            me_form(&state, &who).await?.failed(e.into()).render(&state)
        }
        Err(e) => Err(e.into()),
    }
}
