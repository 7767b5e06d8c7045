//! Operations endpoints and the dashboard: `GET /healthz`, `GET /metrics`, and
//! Dashboard > Overview with the alerts that wait for an administrator (acknowledged at
//! `POST /admin/system/alerts/{key}/ack`, audited).

use actix_web::{HttpResponse, web};

use super::pages::Page;
use super::session::Console;
use super::session::CsrfOnly;
use super::setup::describe_certificate;
use super::{AppState, HttpError};
use crate::admin;
use crate::model::alert::Alert;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin", web::get().to(dashboard))
        .route(
            "/admin/system/alerts/{key}/ack",
            web::post().to(acknowledge),
        );
}

/// 200 once the server answers at all: the store was opened and migrated before it listened.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// Every metric; the gateway gauges are set from the gateways' last reports first.
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, HttpError> {
    let gateways = super::gateways::statuses(&state).await?;
    let text = state
        .metrics
        .render_with_gateways(
            gateways
                .iter()
                .map(|(_, g)| crate::telemetry::GatewayGauges {
                    id: g.id.as_deref().unwrap_or("builtin"),
                    name: &g.name,
                    connected: g.connected,
                    tunnels: &g.tunnels,
                }),
        );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

async fn dashboard(state: web::Data<AppState>, who: Console) -> Result<HttpResponse, HttpError> {
    let licence = state.licence_state().await?;
    let cert = describe_certificate(&state).await?;
    let config = state.config.clone();
    let last_backup = web::block(move || admin::list_backups(&config).into_iter().next())
        .await
        .map_err(|e| HttpError::Render(e.to_string()))?
        .map_or("none yet".to_string(), |(name, _, _)| name);
    let uptime = state.started.elapsed().as_secs();
    let memory = crate::telemetry::process_memory().map_or("unknown".into(), |(rss, _)| {
        format!("{:.1} MiB", rss as f64 / 1048576.0)
    });
    let facts: Vec<(&str, String)> = vec![
        ("Version", env!("CARGO_PKG_VERSION").to_string()),
        ("Licence", licence.label(crate::licence::today())),
        ("Installation code", admin::installation_code(&state.store)),
        (
            "Certificate",
            format!("{} (valid until {})", cert.names.join(", "), cert.not_after),
        ),
        (
            "Up for",
            format!("{}h {:02}m", uptime / 3600, (uptime % 3600) / 60),
        ),
        ("Memory", memory),
        ("Last scheduled backup", last_backup),
    ];
    let alerts: Vec<serde_json::Value> = state
        .store
        .call(|s| s.list::<Alert>())
        .await?
        .into_iter()
        .rev()
        .filter(|(_, a)| !a.acknowledged)
        .map(|(key, a)| {
            serde_json::json!({"key": key, "at": a.at.format("%Y-%m-%d %H:%M UTC").to_string(),
                "kind": a.kind, "message": a.message})
        })
        .collect();
    let mut page = Page::new(&state, Some(&who), "dashboard.html", "Dashboard", "/admin").await?;
    page.set("facts", &facts).set("alerts", &alerts);
    page.render(&state)
}

async fn acknowledge(
    state: web::Data<AppState>,
    who: Console,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, HttpError> {
    who.check_csrf(&form.csrf)?;
    let key = path.into_inner();
    let actor = who.actor();
    state
        .store
        .call(move |s| {
            let Some(mut alert) = s.get::<Alert>(&key)? else {
                return Err(HttpError::NoSuch {
                    kind: "alert",
                    id: key,
                });
            };
            alert.acknowledged = true;
            s.put(&key, &alert)?;
            admin::audit(
                s,
                &actor,
                "alert.acknowledged",
                format!("{}: {}", alert.kind, alert.message),
                true,
            )?;
            Ok(())
        })
        .await?;
    Ok(super::pages::see_other("/admin"))
}
