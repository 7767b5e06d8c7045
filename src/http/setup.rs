//! Setup > Certificate: the console's TLS certificate, shown and replaced without a restart.
//! The wizard's certificate step uses the same functions.

use actix_multipart::Multipart;
use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::forms::MultipartForm;
use super::pages::Page;
use super::session::{Console, SignedIn};
use super::{AppState, HttpError};
use crate::admin::{self, AdminError};
use crate::model::Certificate;
use crate::tls::{self, CertPem};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/setup/certificate", web::get().to(show))
        .route("/admin/setup/certificate", web::post().to(upload));
}

/// What the pages show of a certificate.
#[derive(Serialize)]
pub struct CertificateView {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub sha256_fingerprint: String,
    pub self_signed: bool,
    pub generated: bool,
}

pub async fn describe_certificate(state: &AppState) -> Result<CertificateView, HttpError> {
    let cert = state
        .store
        .call(|s| s.get_one::<Certificate>().map_err(AdminError::from))
        .await?;
    let info = tls::describe(&cert.cert_chain_pem).map_err(AdminError::from)?;
    Ok(CertificateView {
        subject: info.subject,
        issuer: info.issuer,
        names: info.names,
        not_before: info.not_before.format("%Y-%m-%d").to_string(),
        not_after: info.not_after.format("%Y-%m-%d").to_string(),
        sha256_fingerprint: info.sha256_fingerprint,
        self_signed: info.self_signed,
        generated: cert.generated,
    })
}

/// The PEM texts of an upload form: pasted, or uploaded as files.
pub fn certificate_upload(form: &MultipartForm) -> CertPem {
    CertPem::new(
        form.text_or_file("cert", "cert_file"),
        form.text_or_file("key", "key_file"),
    )
}

/// Validates, stores and serves a certificate (or keeps the current one with `None`). New TLS
/// connections get it at once; open ones are not dropped.
pub async fn apply_certificate(
    state: &AppState,
    who: &SignedIn,
    upload: Option<CertPem>,
) -> Result<Result<(), AdminError>, HttpError> {
    let actor = who.actor();
    let result = state
        .store
        .call(move |s| Ok::<_, AdminError>(admin::choose_certificate(s, &actor, upload)))
        .await?;
    match result {
        Ok((cert, _)) => {
            let pem = CertPem::new(cert.cert_chain_pem.clone(), cert.key_pem.clone());
            let key = tls::certified_key(&pem).map_err(AdminError::from)?;
            state.tls.set(key);
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(e)),
    }
}

async fn page(state: &AppState, who: &SignedIn) -> Result<Page, HttpError> {
    let mut page = Page::new(
        state,
        Some(who),
        "certificate.html",
        "Certificate",
        "/admin/setup/certificate",
    )
    .await?;
    page.set("certificate", &describe_certificate(state).await?)
        .set("certificate_action", "/admin/setup/certificate")
        .set("offer_keep", &false);
    Ok(page)
}

async fn show(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    page(&state, &who).await?.render(&state)
}

async fn upload(
    state: web::Data<AppState>,
    who: Console,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = MultipartForm::read(multipart, 1024 * 1024).await?;
    who.check_csrf(&form.text("csrf"))?;
    match apply_certificate(&state, &who, Some(certificate_upload(&form))).await? {
        Ok(()) => {
            let mut page = page(&state, &who).await?;
            page.set("notice", "The new certificate is in use.");
            page.render(&state)
        }
        Err(e) => page(&state, &who).await?.failed(e.into()).render(&state),
    }
}
