//! Wiring: opens the store, prepares the certificate and licence verifier, builds the shared
//! state, registers the scheduled jobs, and starts the HTTPS server and the scheduler once
//! each. Owns start-up and shutdown; makes no decisions of its own.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{HttpServer, web};

use crate::admin::{self, AdminError};
use crate::broker::{Broker, BrokerError, BrokerSettings};
use crate::config::Config;
use crate::http::{self, AppState, Pages};
use crate::model::SetupState;
use crate::scheduler::{ScheduleError, Scheduler};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::tls::{self, CertPem, ReloadingResolver, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("page templates: {0}")]
    Templates(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Server(std::io::Error),
}

/// Runs the appliance until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let config = Arc::new(config);
    let store = Store::open(&config.server.data_dir)?;
    let cert = admin::initialise(&store, &config)?;
    let verifier = admin::verifier(&config)?;
    let signing_key = crate::broker::seed(&store)?;
    let broker = Arc::new(Broker::new(
        store.clone(),
        BrokerSettings {
            gateway_url: config.broker.gateway_url.clone(),
            ticket_seconds: i64::from(config.broker.ticket_seconds),
        },
        signing_key,
    ));
    broker.reload_directories().await?;
    let resolver = Arc::new(ReloadingResolver::from_pem(&CertPem::new(
        cert.cert_chain_pem.clone(),
        cert.key_pem.clone(),
    ))?);
    let tls_config = tls::server_config(resolver.clone())?;
    let wizard_done = store.get_one::<SetupState>()?.wizard_done;
    let pages = Pages::new(config.server.templates_dir.clone())
        .map_err(|e| AppError::Templates(e.to_string()))?;

    let scheduler = Scheduler::new();
    {
        let (store, config) = (store.clone(), config.clone());
        scheduler.add("backup", &config.backup.schedule.clone(), move || {
            let (store, config) = (store.clone(), config.clone());
            async move {
                store
                    .call(move |s| admin::scheduled_backup(s, &config))
                    .await
                    .map_err(|e| e.to_string())
            }
        })?;
    }

    let listen = config.server.listen;
    let listener = std::net::TcpListener::bind(listen).map_err(|source| AppError::Listen {
        addr: listen,
        source,
    })?;
    let local = listener.local_addr().map_err(|source| AppError::Listen {
        addr: listen,
        source,
    })?;
    let state = web::Data::new(AppState::new(
        config.clone(),
        store.clone(),
        pages,
        resolver,
        verifier,
        Arc::new(Metrics::new()),
        scheduler.clone(),
        wizard_done,
        local.port(),
        broker,
    ));

    let factory_state = state.clone();
    let mut server = HttpServer::new(move || http::app(factory_state.clone()))
        .shutdown_timeout(5)
        .listen_rustls_0_23(listener, tls_config)
        .map_err(|source| AppError::Listen {
            addr: local,
            source,
        })?;
    if let Some(addr) = config.server.http_redirect_listen {
        server = server
            .bind(addr)
            .map_err(|source| AppError::Listen { addr, source })?;
    }
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server.run();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler_task = tokio::spawn(scheduler.run(async {
        let _ = stop_rx.await;
    }));

    tracing::info!(%local, data = %config.server.data_dir.display(), "Gatehouse is serving");
    println!("Gatehouse console: {}", console_url(local, &config));
    let _ = std::io::stdout().flush();

    let result = server.await;
    let _ = stop_tx.send(());
    let _ = scheduler_task.await;
    tracing::info!("Gatehouse stopped");
    result.map_err(AppError::Server)
}

/// The address to print for people: the configured host name when listening on every
/// interface, else the address itself.
pub fn console_url(local: SocketAddr, config: &Config) -> String {
    let host = if local.ip().is_unspecified() {
        config
            .server
            .hostnames
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into())
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    format!("https://{host}:{}/admin", local.port())
}
