//! Wiring: opens the store, prepares the certificate and licence verifier, builds the shared
//! state, registers the scheduled jobs, and starts the HTTPS server and the scheduler once
//! each. Owns start-up and shutdown; makes no decisions of its own.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{HttpServer, web};

use crate::admin::{self, AdminError};
use crate::broker::control::DesktopControl;
use crate::broker::stats::Provisioner;
use crate::broker::{Broker, BrokerError, BrokerSettings};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::gateway::listener::{self, Backend, FrontDoor, Origin};
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
    #[error("gateway settings: {0}")]
    Gateway(String),
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

/// How often the inventory job looks for centers due a refresh.
const INVENTORY_SCHEDULE: &str = "*/15 * * * * *";
/// Runs the appliance until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let config = Arc::new(config);
    let store = Store::open(&config.server.data_dir)?;
    let cert = admin::initialise(&store, &config)?;
    let verifier = admin::verifier(&config)?;
    let signing_key = crate::broker::seed(&store)?;
    let broker: Arc<Broker> = Arc::new(Broker::new(
        store.clone(),
        BrokerSettings {
            gateway_url: if config.broker.gateway_url.is_empty() {
                let host = public_host(&config, config.server.listen);
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("wss://{host}:{}/tunnel", config.server.listen.port())
            } else {
                config.broker.gateway_url.clone()
            },
            ticket_seconds: i64::from(config.broker.ticket_seconds),
        },
        signing_key,
    )?);
    broker.reload_directories().await?;
    let resolver = Arc::new(ReloadingResolver::from_pem(&CertPem::new(
        cert.cert_chain_pem.clone(),
        cert.key_pem.clone(),
    ))?);
    let wizard_done = store.get_one::<SetupState>()?.wizard_done;
    let pages = Pages::new(config.server.templates_dir.clone())
        .map_err(|e| AppError::Templates(e.to_string()))?;

    let metrics = Arc::new(Metrics::new());
    let scheduler = Scheduler::new();
    scheduler.set_time_limit(
        Some(config.jobs.time_limit_seconds)
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs),
    );
    // One set of cloud connections for the console, the jobs and the broker's hooks.
    let centers = Arc::new(crate::centers::Centers::new(store.clone(), broker.clone()));
    register_jobs(
        &scheduler,
        &store,
        &config,
        &broker,
        &metrics,
        centers.clone(),
        centers.clone(),
    )?;
    // Centers are inventoried when their interval (or their retry delay) has passed; the job
    // looks every 15 seconds.
    {
        let centers = centers.clone();
        scheduler.add("inventory", INVENTORY_SCHEDULE, move || {
            let centers = centers.clone();
            async move { centers.refresh_due().await }
        })?;
    }
    // Schedules set in the console win over the configured ones.
    admin::apply_job_schedules(&store, &scheduler)?;

    // The gateway's front door owns the public ports; the console listens on a private Unix
    // socket behind it.
    let settings = config
        .gateway
        .settings(config.trusted_proxies())
        .map_err(AppError::Gateway)?;
    let forwarding = config.gateway.forwarding().map_err(AppError::Gateway)?;
    let gateway =
        Arc::new(Gateway::new(settings, broker.verifying_key()).with_forwarding(forwarding));
    let listen = config.server.listen;
    let listener = std::net::TcpListener::bind(listen).map_err(|source| AppError::Listen {
        addr: listen,
        source,
    })?;
    let local = listener.local_addr().map_err(|source| AppError::Listen {
        addr: listen,
        source,
    })?;
    let plain = match config.gateway.plain_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|source| AppError::Listen { addr, source })?,
        ),
        None => None,
    };
    let (socket_path, _socket_dir) = listener::console_socket_path().map_err(AppError::Server)?;
    let console_socket =
        std::os::unix::net::UnixListener::bind(&socket_path).map_err(AppError::Server)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(AppError::Server)?;
    }

    let state = web::Data::new(AppState::new(
        config.clone(),
        store.clone(),
        pages,
        resolver.clone(),
        verifier,
        metrics.clone(),
        scheduler.clone(),
        wizard_done,
        local.port(),
        broker.clone(),
        gateway.clone(),
        centers,
    ));

    let factory_state = state.clone();
    let mut server = HttpServer::new(move || http::app(factory_state.clone()))
        .shutdown_timeout(5)
        .on_connect(|conn, ext| {
            if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::UnixStream>()
                && let Some(origin) = Origin::of(stream)
            {
                ext.insert(origin);
            }
        })
        .listen_uds(console_socket)
        .map_err(AppError::Server)?;
    if let Some(addr) = config.server.http_redirect_listen {
        server = server
            .bind(addr)
            .map_err(|source| AppError::Listen { addr, source })?;
    }
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server.run();

    let runtime = GatewayRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("gatehouse-gateway")
            .build()
            .map_err(AppError::Server)?,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config_with_alpn(
        resolver,
        &[b"http/1.1"],
    )?));
    let front = FrontDoor::new(
        gateway.clone(),
        Some(acceptor),
        Backend::Local(socket_path.clone()),
    );
    broker.set_gateway_link(Arc::new(crate::gateway::forward::LocalLink {
        gateway: gateway.clone(),
        runtime: runtime.handle().clone(),
        public_host: public_host(&config, local),
    }));
    let (front_stop, front_stopped) = tokio::sync::watch::channel(false);
    {
        let _entered = runtime.enter();
        listener.set_nonblocking(true).map_err(AppError::Server)?;
        let tls_listener = tokio::net::TcpListener::from_std(listener).map_err(AppError::Server)?;
        runtime.spawn(
            front
                .clone()
                .serve(tls_listener, true, front_stopped.clone()),
        );
        if let Some(plain) = plain {
            plain.set_nonblocking(true).map_err(AppError::Server)?;
            let plain = tokio::net::TcpListener::from_std(plain).map_err(AppError::Server)?;
            if let Ok(addr) = plain.local_addr() {
                println!("Gatehouse plain port: http://{addr}/");
            }
            runtime.spawn(front.clone().serve(plain, false, front_stopped.clone()));
        }
        // The broker's "session ended" notices close the session's tunnels.
        let (gateway, broker) = (gateway.clone(), broker.clone());
        let mut stopped = front_stopped.clone();
        runtime.spawn(async move {
            let mut notices = broker.session_ends().subscribe();
            let mut seen = 0;
            loop {
                for ended in broker.session_ends().since(seen) {
                    seen = ended.seq;
                    gateway.end_session(&ended.session, ended.refuse_until);
                }
                tokio::select! {
                    changed = notices.changed() => if changed.is_err() { return },
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler_task = tokio::spawn(scheduler.run(async {
        let _ = stop_rx.await;
    }));

    tracing::info!(%local, data = %config.server.data_dir.display(), "Gatehouse is serving");
    println!("Gatehouse console: {}", console_url(local, &config));
    let _ = std::io::stdout().flush();

    let result = server.await;
    let _ = front_stop.send(true);
    gateway.close_all();
    runtime.stop(std::time::Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(&socket_path);
    let _ = stop_tx.send(());
    let _ = scheduler_task.await;
    tracing::info!("Gatehouse stopped");
    result.map_err(AppError::Server)
}

/// The gateway's runtime inside `serve`. `serve` runs on the console's event loop, where a
/// runtime must not be shut down by blocking (tokio refuses, with a panic): [`stop`] waits
/// for it on a blocking thread, and dropping it (an early error) lets it go in the background.
///
/// [`stop`]: GatewayRuntime::stop
struct GatewayRuntime(Option<tokio::runtime::Runtime>);

impl GatewayRuntime {
    /// Stops the runtime, giving its tasks up to `patience` to finish.
    async fn stop(mut self, patience: std::time::Duration) {
        if let Some(runtime) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(patience)).await;
        }
    }
}

impl std::ops::Deref for GatewayRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the runtime is there until stopped")
    }
}

impl Drop for GatewayRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Registers the scheduled jobs, each on its configured schedule: `backup`, `pool_stats`
/// (counts every pool, feeds `/metrics`, runs the provisioning check), `pool_history_stats`
/// and `plan_timers` (the plans' due timers, through `control`). Centers add `inventory`
/// here, on their refresh interval.
pub fn register_jobs(
    scheduler: &Scheduler,
    store: &Store,
    config: &Arc<Config>,
    broker: &Arc<Broker>,
    metrics: &Arc<Metrics>,
    control: Arc<dyn DesktopControl>,
    provisioner: Arc<dyn Provisioner>,
) -> Result<(), AppError> {
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
    {
        let (broker, metrics) = (broker.clone(), metrics.clone());
        scheduler.add("pool_stats", &config.jobs.pool_stats, move || {
            let (broker, metrics, provisioner) =
                (broker.clone(), metrics.clone(), provisioner.clone());
            async move {
                let stats = broker.count_pools().await.map_err(|e| e.to_string())?;
                metrics.set_pools(&stats);
                let provisioning = provisioner.check(&stats).await?;
                let mut said = format!("{} pool(s) counted", stats.len());
                if !provisioning.is_empty() {
                    said.push_str("; ");
                    said.push_str(&provisioning);
                }
                Ok(said)
            }
        })?;
    }
    {
        let (broker, days) = (broker.clone(), config.jobs.history_days);
        scheduler.add(
            "pool_history_stats",
            &config.jobs.pool_history_stats,
            move || {
                let broker = broker.clone();
                async move {
                    let (added, dropped) = broker
                        .sample_pool_history(days)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(format!(
                        "{added} sample(s) added; {dropped} sample(s) and desktop history line(s) older than {days} days dropped"
                    ))
                }
            },
        )?;
    }
    {
        let broker = broker.clone();
        scheduler.add("plan_timers", &config.jobs.plan_timers, move || {
            let (broker, control) = (broker.clone(), control.clone());
            async move {
                // A run in which an action failed shows as failed on the jobs page (each
                // failure is in its desktop's history; power actions are tried again).
                let run = broker
                    .run_plan_timers(control.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                if run.failed.is_empty() {
                    Ok(run.summary())
                } else {
                    Err(run.summary())
                }
            }
        })?;
    }
    // The inventory job of each center is registered here.
    Ok(())
}

/// The host clients reach forwarded ports on.
fn public_host(config: &Config, local: SocketAddr) -> String {
    if !config.gateway.public_host.is_empty() {
        return config.gateway.public_host.clone();
    }
    if let Some(name) = config.server.hostnames.first() {
        return name.clone();
    }
    if local.ip().is_unspecified() {
        "localhost".into()
    } else {
        local.ip().to_string()
    }
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
