//! `gatehouse gateway`: a gateway on its own host. It needs only the broker's public key (a
//! PEM file from `gatehouse broker-key export`, or fetched from the broker it is registered
//! with); it never sees the broker's store. Registered with a broker, it starts only once the
//! broker takes its token: a wrong token ends it at once with what to do.
//!
//! The certificate comes from `--cert`/`--key` (re-read on SIGHUP, open tunnels stay up) or is
//! generated for the listen address when none is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use tokio::net::TcpListener;

use super::listener::{Backend, FrontDoor};
use super::{Gateway, GatewaySettings};
use crate::tls::{self, CertPem, ReloadingResolver};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("the broker key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the certificate: {0}")]
    Certificate(String),
    /// The broker refused the gateway (a field not named `source`: the message is shown once).
    #[error("{broker}: {reason}")]
    Broker {
        broker: String,
        reason: super::registry::RegistryError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `gatehouse gateway` was asked to do.
#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub plain_listen: Option<SocketAddr>,
    /// The broker's public key file; without it, the key comes from the registered broker.
    pub broker_key: Option<PathBuf>,
    /// Registered with a broker: fetch its key and session-end notices, report tunnels.
    pub link: Option<super::registry::BrokerLink>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub settings: GatewaySettings,
    pub forwarding: super::forward::ForwardSettings,
    /// Where portal, console and API requests go (a broker, or flexVDI managers).
    pub upstream: Option<Arc<super::upstream::Upstream>>,
}

/// Reads the broker's public key (PEM, `PUBLIC KEY`).
pub fn read_broker_key(path: &Path) -> Result<VerifyingKey, StandaloneError> {
    let bad = |reason: String| StandaloneError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
        bad(format!(
            "not an ed25519 public key in PEM ({e}); write one with `gatehouse broker-key export`"
        ))
    })
}

fn certificate(opts: &Options) -> Result<CertPem, StandaloneError> {
    match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => read_pair(cert, key),
        (None, None) => {
            let host = opts.listen.ip();
            let names = if host.is_unspecified() {
                Vec::new()
            } else {
                vec![host.to_string()]
            };
            tls::generate_self_signed(&names)
                .map_err(|e| StandaloneError::Certificate(e.to_string()))
        }
        _ => Err(StandaloneError::Certificate(
            "give both --cert and --key, or neither (a certificate is then generated)".into(),
        )),
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertPem, StandaloneError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| StandaloneError::Certificate(format!("{}: {e}", p.display())))
    };
    let pem = CertPem::new(read(cert)?, read(key)?);
    match tls::validate(&pem, chrono::Utc::now()) {
        Ok(_) => {}
        // Self-signed certificates made with `openssl req -x509` are often marked as CAs:
        // strict clients refuse them, clients that pin the certificate do not. Served, with a
        // warning (the console refuses such uploads).
        Err(tls::TlsError::NotServerCertificate(why)) if why.contains("CA certificate") => {
            tracing::warn!(
                file = %cert.display(),
                "the certificate is a CA certificate; browsers and strict clients will refuse it"
            );
        }
        Err(e) => return Err(StandaloneError::Certificate(e.to_string())),
    }
    // The key must belong to the certificate.
    tls::certified_key(&pem).map_err(|e| StandaloneError::Certificate(e.to_string()))?;
    Ok(pem)
}

/// Checks what `gatehouse gateway --check` can without listening or asking the broker: the
/// broker's key file and the certificate pair, when given, are read and must be valid.
pub fn check(opts: &Options) -> Result<(), StandaloneError> {
    if let Some(path) = &opts.broker_key {
        read_broker_key(path)?;
    }
    if opts.cert.is_some() || opts.key.is_some() {
        certificate(opts)?;
    }
    Ok(())
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(mut opts: Options) -> Result<(), StandaloneError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let key = match (&opts.broker_key, &opts.link) {
        (Some(path), _) => read_broker_key(path)?,
        (None, Some(link)) => {
            println!("Gatehouse gateway: fetching the broker's key...");
            let waiting = link.wait_for_key(stopped.clone());
            tokio::select! {
                key = waiting => key.ok_or_else(|| StandaloneError::Key {
                    path: PathBuf::from("(broker)"),
                    reason: "stopped before the broker answered".into(),
                })?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
        (None, None) => {
            return Err(StandaloneError::Key {
                path: PathBuf::new(),
                reason: "give --broker-key FILE, or --broker URL with --gateway-token-file".into(),
            });
        }
    };
    if let Some(link) = &opts.link {
        println!("Gatehouse gateway: checking the gateway token with the broker...");
        let accepted = tokio::select! {
            r = link.wait_for_acceptance(stopped.clone()) => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match accepted {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(reason) => {
                return Err(StandaloneError::Broker {
                    broker: link.base().to_string(),
                    reason,
                });
            }
        }
    }
    let pem = certificate(&opts)?;
    let resolver = Arc::new(
        ReloadingResolver::from_pem(&pem)
            .map_err(|e| StandaloneError::Certificate(e.to_string()))?,
    );
    let config = tls::server_config_with_alpn(resolver.clone(), &[b"http/1.1"])
        .map_err(|e| StandaloneError::Certificate(e.to_string()))?;
    let gateway =
        Arc::new(Gateway::new(opts.settings.clone(), key).with_forwarding(opts.forwarding.clone()));
    let front = FrontDoor::new(
        gateway.clone(),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        match &opts.upstream {
            Some(up) => Backend::Upstream(up.clone()),
            None => Backend::None,
        },
    );
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StandaloneError::Listen { addr, source })
    };
    let tls_listener = bind(opts.listen).await?;
    let local = tls_listener.local_addr().unwrap_or(opts.listen);
    let mut tasks = vec![tokio::spawn(front.clone().serve(
        tls_listener,
        true,
        stopped.clone(),
    ))];
    if let Some(addr) = opts.plain_listen {
        let plain = bind(addr).await?;
        println!(
            "Gatehouse gateway plain port: ws://{}/tunnel",
            plain.local_addr().unwrap_or(addr)
        );
        tasks.push(tokio::spawn(front.clone().serve(
            plain,
            false,
            stopped.clone(),
        )));
    }
    if let Some(link) = opts.link.take() {
        tasks.push(tokio::spawn(super::registry::run(
            gateway.clone(),
            link,
            stopped.clone(),
        )));
    }
    tracing::info!(%local, ports = %opts.settings.allowed_ports, "gateway listening");
    println!("Gatehouse gateway: wss://{local}/tunnel");

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => break,
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
                    match read_pair(cert, key).and_then(|pem| {
                        tls::certified_key(&pem)
                            .map(|k| resolver.set(k))
                            .map_err(|e| StandaloneError::Certificate(e.to_string()))
                    }) {
                        Ok(_) => tracing::info!("certificate reloaded"),
                        Err(e) => tracing::warn!(error = %e, "certificate not reloaded; the old one stays"),
                    }
                }
            }
        }
    }
    let _ = stop.send(true);
    gateway.close_all();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
