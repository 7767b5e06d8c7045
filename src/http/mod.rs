//! The web console and HTTP APIs (actix-web, tera pages), one submodule per console area.
//!
//! Handlers parse and check input, call `admin` (the rules) through `Store::call`, and render.
//! This module owns the one mapping from errors to responses ([`HttpError`]), the session and
//! CSRF extractors, the setup-wizard gate, security headers and request metrics. It never
//! names sled, and it holds no business rules.

mod access;
mod agent;
mod api;
mod centers;
mod client;
mod console_resources;
mod error;
mod forms;
mod gateways;
mod jobs;
mod ops;
mod pages;
mod portal;
mod resource;
mod session;
mod setup;
mod signin;
mod stats;
mod system;
mod wizard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};
use chrono::NaiveDate;

use crate::auth::{Sessions, Throttle};
use crate::config::Config;
use crate::licence::{LicenceState, Verifier};
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::telemetry::{Metrics, RequestLabels};
use crate::tls::ReloadingResolver;

pub use error::HttpError;
pub use pages::Pages;

/// Everything the handlers share. Built once by `app`.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub pages: Pages,
    pub tls: Arc<ReloadingResolver>,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub scheduler: Scheduler,
    /// Mirrors `SetupState::wizard_done`, read on every request by the wizard gate.
    pub wizard_done: AtomicBool,
    /// The licence state as of a day; recomputed when the day changes or a key is activated.
    licence: RwLock<Option<(NaiveDate, LicenceState)>>,
    /// Verified backup uploads waiting for the administrator's confirmation.
    pending_imports: Mutex<HashMap<String, system::PendingImport>>,
    pub started: Instant,
    /// The port HTTPS really listens on (the plain port redirects there).
    pub https_port: u16,
    pub broker: Arc<crate::broker::Broker>,
    /// Portal and client-API sessions.
    pub clients: crate::broker::ClientSessions,
    /// Proxies whose `X-Forwarded-For` names the client (from `server.trusted_proxies`).
    pub trusted_proxies: Vec<crate::model::location::Cidr>,
    /// The built-in gateway (open tunnels, session ends).
    pub gateway: Arc<crate::gateway::Gateway>,
    /// The cloud centers' connections and inventory.
    pub centers: Arc<crate::centers::Centers>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        store: Store,
        pages: Pages,
        tls: Arc<ReloadingResolver>,
        verifier: Verifier,
        metrics: Arc<Metrics>,
        scheduler: Scheduler,
        wizard_done: bool,
        https_port: u16,
        broker: Arc<crate::broker::Broker>,
        gateway: Arc<crate::gateway::Gateway>,
        centers: Arc<crate::centers::Centers>,
    ) -> Self {
        let sec = &config.security;
        let trusted_proxies = config.trusted_proxies();
        centers.set_verifier(verifier.clone());
        broker.set_licence_verifier(verifier.clone());
        centers.watch_assignments();
        Self {
            sessions: Sessions::new(
                std::time::Duration::from_secs(u64::from(sec.session_idle_minutes) * 60),
                std::time::Duration::from_secs(u64::from(sec.session_max_hours) * 3600),
            ),
            throttle: Throttle::new(
                sec.max_failures_per_account,
                sec.max_failures_per_address,
                std::time::Duration::from_secs(u64::from(sec.lockout_minutes) * 60),
            ),
            config,
            store,
            pages,
            tls,
            verifier,
            metrics,
            scheduler,
            wizard_done: AtomicBool::new(wizard_done),
            licence: RwLock::new(None),
            pending_imports: Mutex::new(HashMap::new()),
            started: Instant::now(),
            https_port,
            broker,
            clients: crate::broker::ClientSessions::default(),
            trusted_proxies,
            gateway,
            centers,
        }
    }

    /// Today's licence state (verified from the store at most once a day, or after a change).
    pub async fn licence_state(&self) -> Result<LicenceState, HttpError> {
        let today = crate::licence::today();
        if let Some((day, state)) = self
            .licence
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *day == today
        {
            return Ok(state.clone());
        }
        let verifier = self.verifier.clone();
        let state = self
            .store
            .call(move |s| crate::admin::licence_state(s, &verifier))
            .await?;
        *self.licence.write().unwrap_or_else(|p| p.into_inner()) = Some((today, state.clone()));
        Ok(state)
    }

    pub fn forget_licence_state(&self) {
        *self.licence.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The routes of the console, APIs and operations endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    ops::configure(cfg);
    client::configure(cfg);
    portal::configure(cfg);
    signin::configure(cfg);
    wizard::configure(cfg);
    pages::configure(cfg);
    setup::configure(cfg);
    system::configure(cfg);
    jobs::configure(cfg);
    stats::configure(cfg);
    agent::configure(cfg);
    // Before the shared resource routes it replaces some of.
    gateways::configure(cfg);
    centers::configure(cfg);
    api::configure(cfg);
    console_resources::configure(cfg);
}

/// Paths open before the wizard is finished.
fn open_before_setup(path: &str) -> bool {
    path == "/healthz"
        || path == "/metrics"
        || path.starts_with("/assets/")
        || path == "/admin/login"
        || path == "/admin/logout"
        || path.starts_with("/admin/wizard")
        // Gateways authenticate with their own tokens, which only exist after setup.
        || path.starts_with("/api/v1/gateway/")
}

/// Before any handler: a directory user's session is checked against the directory when due
/// ([`session::check_directory_user`]), then console access by role: every page and API path
/// belongs to an area ([`access::gate`], which sees the access map the check refreshed).
async fn directory_check_and_role_gate(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let checked = match req.app_data::<web::Data<AppState>>().cloned() {
        Some(state) => session::check_directory_user(&state, req.request()).await,
        None => Ok(()),
    };
    if let Err(e) = checked.and_then(|()| access::gate(req.request())) {
        let resp = error::refused(access::routed_path(req.request()), &e);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Builds the actix app around the shared state: headers, metrics, the HTTPS redirect for the
/// plain port, and the wizard gate.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let https_port = state.https_port;
    actix_web::App::new()
        .app_data(state.clone())
        .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(|err, _| {
            HttpError::BadRequest(format!("The form could not be read: {err}")).into()
        }))
        .configure(configure)
        .wrap_fn(|req, srv| {
            // Every API error is JSON, also those actix answers itself (404, 405, 413).
            let api = access::routed_path(req.request()).starts_with("/api/");
            let method = req.method().clone();
            let fut = srv.call(req);
            async move {
                let res = fut.await?;
                let status = res.status();
                let json = res
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                if !api || json || !(status.is_client_error() || status.is_server_error()) {
                    return Ok(res.map_into_left_body());
                }
                let answer = error::api_fallback(status, &method);
                Ok(res.into_response(answer).map_into_right_body())
            }
        })
        .wrap(actix_web::middleware::from_fn(directory_check_and_role_gate))
        .wrap_fn(|req, srv| {
            // The wizard gate: until setup is done, every page and API leads to the wizard.
            let gated = req
                .app_data::<web::Data<AppState>>()
                .is_some_and(|s| !s.wizard_done.load(Ordering::Relaxed))
                && !open_before_setup(access::routed_path(req.request()));
            let fut = if gated { Err(req) } else { Ok(srv.call(req)) };
            async move {
                match fut {
                    Ok(f) => Ok(f.await?.map_into_left_body()),
                    Err(req) => {
                        let resp = error::setup_required(access::routed_path(req.request()));
                        Ok(req.into_response(resp).map_into_right_body())
                    }
                }
            }
        })
        .wrap(
            DefaultHeaders::new()
                .add((header::X_FRAME_OPTIONS, "DENY"))
                .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .add((header::REFERRER_POLICY, "same-origin"))
                .add((
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                     frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                )),
        )
        .wrap_fn(move |req, srv| {
            // The redirect port only redirects to HTTPS; connections from the gateway's front
            // door (TLS, or the plain port behind a TLS-terminating proxy) are served.
            let served = req.app_config().secure()
                || req
                    .conn_data::<crate::gateway::listener::Origin>()
                    .is_some();
            let redirect = if served {
                None
            } else {
                let host = req.connection_info().host().to_string();
                let name = host
                    .rsplit_once(':')
                    .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
                    .map(|(name, _)| name.to_string())
                    .unwrap_or(host);
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                Some(format!("https://{name}:{https_port}{path}"))
            };
            let metrics = req
                .app_data::<web::Data<AppState>>()
                .map(|s| s.metrics.clone());
            let method = req.method().to_string();
            let fut = match redirect {
                Some(to) => Err((req, to)),
                None => Ok(srv.call(req)),
            };
            async move {
                let res = match fut {
                    Err((req, to)) => req
                        .into_response(
                            HttpResponse::PermanentRedirect()
                                .insert_header((header::LOCATION, to))
                                .finish(),
                        )
                        .map_into_right_body(),
                    Ok(f) => f.await?.map_into_left_body(),
                };
                if let Some(m) = metrics {
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".into());
                    m.http_requests
                        .get_or_create(&RequestLabels {
                            route,
                            method,
                            status: res.status().as_u16(),
                        })
                        .inc();
                }
                Ok(res)
            }
        })
}
