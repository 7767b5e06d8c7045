//! System > Licence, Backups and Audit log (Jobs: `jobs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::forms::MultipartForm;
use super::pages::{Page, see_other};
use super::session::Console;
use super::{AppState, HttpError};
use crate::admin::{self, AdminError};
use crate::backup::{self, SnapshotMeta};
use crate::licence::LicenceState;
use crate::model::{AuditEntry, Certificate, SetupState};
use crate::tls::{self, CertPem};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/system/licence", web::get().to(licence_page))
        .route("/admin/system/licence", web::post().to(licence_activate))
        .route("/admin/system/backups", web::get().to(backups_page))
        .route(
            "/admin/system/backups/export",
            web::post().to(backup_export),
        )
        .route(
            "/admin/system/backups/import",
            web::post().to(backup_import),
        )
        .route(
            "/admin/system/backups/import/confirm",
            web::post().to(backup_confirm),
        )
        .route(
            "/admin/system/backups/files/{name}",
            web::get().to(backup_file),
        )
        .route("/admin/system/audit", web::get().to(audit_page));
}

/// Upload cap for backup files.
const BACKUP_UPLOAD_LIMIT: usize = 512 * 1024 * 1024;
/// How long a checked upload waits for its confirmation.
const PENDING_TTL: Duration = Duration::from_secs(15 * 60);

// ---- Licence ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct LicenceView {
    label: String,
    evaluation: bool,
    serial: String,
    customer: String,
    expires: String,
    max_users: String,
    gateways: String,
    provisioning: String,
    features: String,
}

fn licence_view(state: &LicenceState) -> LicenceView {
    let unlimited = |n: Option<u32>| n.map_or("unlimited".to_string(), |n| n.to_string());
    let today = crate::licence::today();
    match state.licence() {
        Some(l) => {
            let p = l.payload();
            LicenceView {
                label: state.label(today),
                evaluation: false,
                serial: p.serial.clone(),
                customer: p.customer.clone(),
                expires: p.expires.map_or("never".into(), |d| d.to_string()),
                max_users: unlimited(p.max_users),
                gateways: unlimited(p.gateways),
                provisioning: if p.provisioning {
                    "allowed"
                } else {
                    "not included"
                }
                .into(),
                features: if p.features.is_empty() {
                    "none".into()
                } else {
                    p.features.join(", ")
                },
            }
        }
        None => LicenceView {
            label: state.label(today),
            evaluation: true,
            serial: String::new(),
            customer: String::new(),
            expires: String::new(),
            max_users: String::new(),
            gateways: String::new(),
            provisioning: String::new(),
            features: String::new(),
        },
    }
}

async fn licence_form(state: &AppState, who: &Console) -> Result<Page, HttpError> {
    let licence = state.licence_state().await?;
    let setup = state
        .store
        .call(|s| s.get_one::<SetupState>().map_err(AdminError::from))
        .await?;
    let agreement = match setup.agreement_accepted {
        Some((at, by)) => format!("accepted by {by} on {}", at.format("%Y-%m-%d %H:%M UTC")),
        None => "not accepted yet: it is accepted with the next licence key".to_string(),
    };
    let mut page = Page::new(
        state,
        Some(who),
        "licence.html",
        "Licence",
        "/admin/system/licence",
    )
    .await?;
    page.set("licence", &licence_view(&licence))
        .set("agreement", &agreement)
        .set("installation_code", &admin::installation_code(&state.store))
        .set("licence_action", "/admin/system/licence")
        .set("offer_evaluation", &false);
    Ok(page)
}

async fn licence_page(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    licence_form(&state, &who).await?.render(&state)
}

async fn licence_activate(
    state: web::Data<AppState>,
    who: Console,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = MultipartForm::read(multipart, 1024 * 1024).await?;
    who.check_csrf(&form.text("csrf"))?;
    let (actor, verifier) = (who.actor(), state.verifier.clone());
    let key = form.text_or_file("key", "key_file");
    let agreed = form.text("agree") == "yes";
    let result = state
        .store
        .call(move |s| {
            Ok::<_, AdminError>(admin::activate_licence(s, &verifier, &actor, &key, agreed))
        })
        .await?;
    state.forget_licence_state();
    match result {
        Ok(l) => {
            let mut page = licence_form(&state, &who).await?;
            page.set("notice", &format!("Licence {} activated.", l.serial()));
            page.render(&state)
        }
        Err(e @ AdminError::Store(_)) => Err(e.into()),
        Err(e) => licence_form(&state, &who)
            .await?
            .failed(e.into())
            .render(&state),
    }
}

// ---- Backups ---------------------------------------------------------------------------------

/// A checked upload waiting for "Replace the store".
pub struct PendingImport {
    owner: String,
    bytes: Vec<u8>,
    passphrase: Option<String>,
    meta: SnapshotMeta,
    at: Instant,
}

#[derive(Serialize)]
struct BackupRow {
    name: String,
    size: String,
    created: String,
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} B"),
    }
}

async fn backups_form(state: &AppState, who: &Console) -> Result<Page, HttpError> {
    let config = state.config.clone();
    let rows: Vec<BackupRow> = web::block(move || admin::list_backups(&config))
        .await
        .map_err(|e| HttpError::Render(e.to_string()))?
        .into_iter()
        .map(|(name, size, created)| BackupRow {
            name,
            size: human_size(size),
            created: created.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
        .collect();
    let mut page = Page::new(
        state,
        Some(who),
        "backups.html",
        "Backups",
        "/admin/system/backups",
    )
    .await?;
    page.set("backups", &rows).set(
        "backup_dir",
        &state.config.backup_dir().display().to_string(),
    );
    Ok(page)
}

async fn backups_page(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    backups_form(&state, &who).await?.render(&state)
}

#[derive(Deserialize)]
struct ExportForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    passphrase: String,
    #[serde(default)]
    confirm: String,
}

async fn backup_export(
    state: web::Data<AppState>,
    who: Console,
    form: web::Form<ExportForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    if form.passphrase != form.confirm {
        return backups_form(&state, &who)
            .await?
            .error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "The two passphrases differ: type the same passphrase twice.",
            )
            .render(&state);
    }
    let passphrase = Some(form.passphrase).filter(|p| !p.is_empty());
    let actor = who.actor();
    let (bytes, meta) = state
        .store
        .call(move |s| admin::export_backup(s, &actor, passphrase.as_deref()))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                backup::file_name(meta.created)
            ),
        ))
        .body(bytes))
}

async fn backup_import(
    state: web::Data<AppState>,
    who: Console,
    multipart: Multipart,
) -> Result<HttpResponse, HttpError> {
    let form = MultipartForm::read(multipart, BACKUP_UPLOAD_LIMIT).await?;
    who.check_csrf(&form.text("csrf"))?;
    let Some(bytes) = form.bytes("file").map(<[u8]>::to_vec) else {
        return backups_form(&state, &who)
            .await?
            .error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "Choose a backup file to import.",
            )
            .render(&state);
    };
    let passphrase = Some(form.text("passphrase")).filter(|p| !p.is_empty());
    let (check_bytes, check_pass) = (bytes.clone(), passphrase.clone());
    let checked = web::block(move || {
        admin::verify_backup(&check_bytes, check_pass.as_deref()).map(|(meta, _)| meta)
    })
    .await
    .map_err(|e| HttpError::Render(e.to_string()))?;
    let meta = match checked {
        Ok(meta) => meta,
        Err(e) => {
            let (actor, reason) = (who.actor(), e.to_string());
            state
                .store
                .call(move |s| admin::audit(s, &actor, "backup.refused", reason, false))
                .await?;
            return backups_form(&state, &who)
                .await?
                .failed(e.into())
                .render(&state);
        }
    };
    let id = crate::auth::random_token();
    let view = serde_json::json!({
        "id": id,
        "created": meta.created.format("%Y-%m-%d %H:%M UTC").to_string(),
        "installation_id": meta.installation_id.to_string(),
        "foreign": meta.installation_id != state.store.installation_id(),
        "encrypted": meta.encrypted,
        "records": meta.record_count,
        "schema": meta.schema_version,
    });
    {
        let mut pending = state
            .pending_imports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.at.elapsed() < PENDING_TTL);
        // One waiting upload per administrator.
        pending.retain(|_, p| p.owner != who.username);
        pending.insert(
            id,
            PendingImport {
                owner: who.username.clone(),
                bytes,
                passphrase,
                meta,
                at: Instant::now(),
            },
        );
    }
    let mut page = Page::new(
        &state,
        Some(&who),
        "backup_confirm.html",
        "Import a backup",
        "/admin/system/backups",
    )
    .await?;
    page.set("pending", &view);
    page.render(&state)
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

async fn backup_confirm(
    state: web::Data<AppState>,
    who: Console,
    form: web::Form<ConfirmForm>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let pending = {
        let mut map = state
            .pending_imports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.remove(&form.id) {
            Some(p) if p.owner == who.username && p.at.elapsed() < PENDING_TTL => Some(p),
            _ => None,
        }
    };
    let Some(pending) = pending else {
        return backups_form(&state, &who)
            .await?
            .error(
                actix_web::http::StatusCode::CONFLICT,
                "That upload is no longer waiting (it expired or was replaced). Upload the file again.",
            )
            .render(&state);
    };
    let actor = who.actor();
    let expected = pending.meta.clone();
    let meta = state
        .store
        .call(move |s| {
            admin::restore_backup(s, &actor, &pending.bytes, pending.passphrase.as_deref())
        })
        .await?;
    debug_assert_eq!(meta, expected);
    after_restore(&state).await?;
    // Accounts, roles and assignments may have changed: every other session ends, the
    // directory users' and the clients' too.
    state.sessions.end_all_except(&who.token);
    state.clients.clear();
    Ok(see_other("/admin/system/backups"))
}

/// Brings the in-memory mirrors in line with a restored store: wizard flag, licence,
/// certificate, the broker's pool membership and authentication servers.
pub async fn after_restore(state: &AppState) -> Result<(), HttpError> {
    state.broker.invalidate_membership();
    if let Err(e) = state.broker.reload_directories().await {
        tracing::warn!("authentication servers not reloaded after the restore: {e}");
    }
    let (setup, cert) = state
        .store
        .call(|s| Ok::<_, AdminError>((s.get_one::<SetupState>()?, s.get_one::<Certificate>()?)))
        .await?;
    state
        .wizard_done
        .store(setup.wizard_done, Ordering::Relaxed);
    state.forget_licence_state();
    // Job schedules set in the console come with the restored store.
    let scheduler = state.scheduler.clone();
    state
        .store
        .call(move |s| admin::apply_job_schedules(s, &scheduler))
        .await?;
    if !cert.cert_chain_pem.is_empty() {
        let key = tls::certified_key(&CertPem::new(cert.cert_chain_pem, cert.key_pem))
            .map_err(AdminError::from)?;
        state.tls.set(key);
    }
    Ok(())
}

async fn backup_file(
    state: web::Data<AppState>,
    who: Console,
    name: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let name = name.into_inner();
    // Only names this appliance writes, so no path can leave the backup folder.
    if backup::parse_file_name(&name).is_none() || name.contains('/') {
        return Err(HttpError::NotFound);
    }
    let path = state.config.backup_dir().join(&name);
    let bytes = web::block(move || std::fs::read(path))
        .await
        .map_err(|e| HttpError::Render(e.to_string()))?
        .map_err(|_| HttpError::NotFound)?;
    let (actor, detail) = (who.actor(), format!("{name} ({} bytes)", bytes.len()));
    state
        .store
        .call(move |s| admin::audit(s, &actor, "backup.downloaded", detail, true))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .body(bytes))
}

// ---- Audit: the shared table page ---------------------------------------------------

fn table_page(page: &mut Page, columns: &[&str], rows: Vec<Vec<String>>) {
    page.set("columns", columns)
        .set("rows", &rows)
        .set("actions", &Vec::<serde_json::Value>::new());
}

async fn audit_page(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    let entries = state
        .store
        .call(|s| s.list_newest::<AuditEntry>(500).map_err(AdminError::from))
        .await?;
    let rows = entries
        .into_iter()
        .map(|(_, e)| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                e.actor,
                e.source,
                e.action,
                e.detail,
                if e.ok { "ok".into() } else { "refused".into() },
            ]
        })
        .collect();
    let mut page = Page::new(
        &state,
        Some(&who),
        "table.html",
        "Audit log",
        "/admin/system/audit",
    )
    .await?;
    table_page(
        &mut page,
        &["When", "Who", "From", "Action", "Detail", "Outcome"],
        rows,
    );
    page.render(&state)
}
