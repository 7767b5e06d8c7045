//! Signing in and out, and My options (changing one's own password).

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::pages::{Page, see_other};
use super::session::{self, SignedIn, Visitor};
use super::{AppState, HttpError};
use crate::admin::{self, Actor, AdminError};
use crate::auth::Verdict;

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
    let username = form.username.trim().to_string();
    let actor = Actor {
        name: username.clone(),
        source: visitor.ip.to_string(),
    };
    let delay = match state.throttle.check(&username, visitor.ip) {
        Verdict::Locked { for_ } => {
            state.metrics.signin_failures.inc();
            let a = actor.clone();
            state
                .store
                .call(move |s| {
                    admin::audit(s, &a, "signin.locked", "refused while locked out", false)
                })
                .await?;
            let minutes = for_.as_secs().div_ceil(60).max(1);
            let message = HttpError::Locked { minutes }.to_string();
            return login_form(&state, visitor, StatusCode::TOO_MANY_REQUESTS, &message).await;
        }
        Verdict::Allowed { delay } => delay,
    };
    let (user, password) = (username.clone(), form.password);
    let checked = state
        .store
        .call(move |s| match admin::check_password(s, &user, &password) {
            Ok(ok) => Ok(Ok(ok)),
            Err(AdminError::WrongPassword) => Ok(Err(())),
            Err(e) => Err(e),
        })
        .await?;
    let Ok(signed_in) = checked else {
        state.metrics.signin_failures.inc();
        let locked = state.throttle.failure(&username, visitor.ip);
        let a = actor.clone();
        state
            .store
            .call(move |s| {
                let detail = if locked {
                    "wrong password; now locked out"
                } else {
                    "wrong password"
                };
                admin::audit(s, &a, "signin.failed", detail, false)
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
    };
    state.throttle.success(&username);
    let token = state.sessions.sign_in(
        visitor.token.as_deref(),
        &username,
        signed_in.factory,
        signed_in.must_change,
    );
    state
        .store
        .call(move |s| admin::audit(s, &actor, "signin", "signed in to the console", true))
        .await?;
    let to = if !state.wizard_done.load(Ordering::Relaxed) {
        "/admin/wizard"
    } else if signed_in.must_change {
        "/admin/me"
    } else {
        "/admin"
    };
    let mut resp = see_other(to);
    resp.add_cookie(&session::cookie(&token))
        .map_err(|e| HttpError::Render(e.to_string()))?;
    Ok(resp)
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
