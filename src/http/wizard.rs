//! The first-run wizard: (1) the admin password, (2) the licence, (3) the certificate,
//! (4) done. Until it is finished the gate in `http::app` sends every page here.

use std::sync::atomic::Ordering;

use actix_multipart::Multipart;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::forms::MultipartForm;
use super::pages::{Page, see_other};
use super::session::SignedIn;
use super::setup::{apply_certificate, certificate_upload, describe_certificate};
use super::signin::CsrfForm;
use super::{AppState, HttpError};
use crate::admin::{self, AdminError};
use crate::model::SetupState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/wizard", web::get().to(show))
        .route("/admin/wizard/password", web::post().to(password))
        .route("/admin/wizard/licence", web::post().to(licence))
        .route("/admin/wizard/certificate", web::post().to(certificate))
        .route("/admin/wizard/finish", web::post().to(finish));
}

const STEPS: [&str; 4] = ["Password", "Licence", "Certificate", "Done"];

/// The wizard page at its current step.
async fn page(state: &AppState, who: &SignedIn) -> Result<Page, HttpError> {
    let setup = state
        .store
        .call(|s| s.get_one::<SetupState>().map_err(AdminError::from))
        .await?;
    // A factory-password session is always at step 1, whatever the store says.
    let step = if who.session.factory {
        1
    } else {
        setup.step() as u8
    };
    let mut page = Page::new(state, Some(who), "wizard.html", "First-run setup", "").await?;
    page.set("steps", &STEPS)
        .set("step", &step)
        .set(
            "min_password_length",
            &state.config.security.min_password_length,
        )
        .set("installation_code", &admin::installation_code(&state.store))
        .set("licence_action", "/admin/wizard/licence")
        .set("offer_evaluation", &true)
        .set("certificate_action", "/admin/wizard/certificate")
        .set("offer_keep", &true)
        .set("certificate", &describe_certificate(state).await?);
    Ok(page)
}

fn done(state: &AppState) -> bool {
    state.wizard_done.load(Ordering::Relaxed)
}

async fn show(state: web::Data<AppState>, who: SignedIn) -> Result<HttpResponse, HttpError> {
    if done(&state) {
        return Ok(see_other("/admin"));
    }
    page(&state, &who).await?.render(&state)
}

/// Shows the wizard again with the refusal, or moves on.
async fn outcome(
    state: &AppState,
    who: &SignedIn,
    result: Result<(), AdminError>,
) -> Result<HttpResponse, HttpError> {
    match result {
        Ok(()) => Ok(see_other("/admin/wizard")),
        Err(e @ AdminError::Store(_)) => Err(e.into()),
        Err(e) => Ok(page(state, who).await?.failed(e.into()).render(state)?),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    password: String,
    confirm: String,
}

async fn password(
    state: web::Data<AppState>,
    who: SignedIn,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    if done(&state) {
        return Ok(see_other("/admin"));
    }
    let form = form.into_inner();
    let (actor, min) = (who.actor(), state.config.security.min_password_length);
    let result = state
        .store
        .call(move |s| {
            Ok::<_, AdminError>(admin::wizard_password(
                s,
                &actor,
                &form.password,
                &form.confirm,
                min,
            ))
        })
        .await?;
    if result.is_ok() {
        state.sessions.update(&who.token, false, false);
        state.sessions.end_all_for(&who.username, Some(&who.token));
    }
    outcome(&state, &who, result).await
}

/// Reads a step's upload form and checks its CSRF token; a finished wizard answers with the
/// dashboard instead.
async fn step_form(
    state: &AppState,
    who: &SignedIn,
    multipart: Multipart,
) -> Result<Result<MultipartForm, HttpResponse>, HttpError> {
    let form = MultipartForm::read(multipart, 1024 * 1024).await?;
    who.check_csrf(&form.text("csrf"))?;
    if done(state) {
        return Ok(Err(see_other("/admin")));
    }
    Ok(Ok(form))
}

/// Refuses later steps to a session still on the factory password.
fn past_step_one(who: &SignedIn) -> Result<(), AdminError> {
    if who.session.factory {
        Err(AdminError::WizardOrder(
            "set the administrator password first".into(),
        ))
    } else {
        Ok(())
    }
}

async fn licence(
    state: web::Data<AppState>,
    who: SignedIn,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = match step_form(&state, &who, multipart).await? {
        Ok(form) => form,
        Err(resp) => return Ok(resp),
    };
    let result = match past_step_one(&who) {
        Err(e) => Err(e),
        Ok(()) => {
            let agreed = form.text("agree") == "yes";
            let evaluation = form.text("choice") == "evaluation";
            let key = form.text_or_file("key", "key_file");
            let (actor, verifier) = (who.actor(), state.verifier.clone());
            state
                .store
                .call(move |s| {
                    Ok::<_, AdminError>(if evaluation {
                        admin::choose_evaluation(s, &actor, agreed)
                    } else {
                        admin::activate_licence(s, &verifier, &actor, &key, agreed).map(|_| ())
                    })
                })
                .await?
        }
    };
    state.forget_licence_state();
    outcome(&state, &who, result).await
}

async fn certificate(
    state: web::Data<AppState>,
    who: SignedIn,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = match step_form(&state, &who, multipart).await? {
        Ok(form) => form,
        Err(resp) => return Ok(resp),
    };
    let result = match past_step_one(&who) {
        Err(e) => Err(e),
        Ok(()) => {
            let upload = if form.text("choice") == "keep" {
                None
            } else {
                Some(certificate_upload(&form))
            };
            apply_certificate(&state, &who, upload).await?
        }
    };
    outcome(&state, &who, result).await
}

async fn finish(
    state: web::Data<AppState>,
    who: SignedIn,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    if done(&state) {
        return Ok(see_other("/admin"));
    }
    let actor = who.actor();
    let result = state
        .store
        .call(move |s| Ok::<_, AdminError>(admin::finish_wizard(s, &actor)))
        .await?;
    if result.is_ok() {
        state.wizard_done.store(true, Ordering::Relaxed);
        return Ok(see_other("/admin"));
    }
    outcome(&state, &who, result).await
}
