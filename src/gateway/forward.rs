//! Port-range forwarding, for native clients that cannot speak WebSocket.
//!
//! For a ticket, the gateway takes a free port from its range and listens there for that one
//! session: it accepts only from the ticket's client address, forwards each connection to the
//! ticket's desktop, and gives the port back when the broker ends the session, or when nobody
//! connected within the window. The broker asks for a forward (in process for the built-in
//! gateway, `POST /gateway/v1/forwards` with the ticket for a standalone one); the ticket's
//! signature is the only authority, as for tunnels.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use super::{Gateway, Kind, Refusal, pump, tunnel};
use crate::broker::Ticket;

/// Where forwarded ports are opened.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Ports to take from, inclusive.
    pub range: (u16, u16),
    /// The local address forwarded ports listen on.
    pub bind: IpAddr,
    /// A forward nobody connected to within this is closed.
    pub window: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            range: (20001, 22000),
            bind: IpAddr::from([0, 0, 0, 0]),
            window: Duration::from_secs(60),
        }
    }
}

/// `A-B`, a range of ports (1-65535).
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a port range like 20001-22000"))?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{s}` is not a port (1-65535)"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("`{text}`: the range's start is after its end"));
    }
    Ok((a, b))
}

/// The answer to a forward request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the ticket names no client address; a forwarded port must be bound to one")]
    NoClient,
    #[error("no free port in {0}-{1}")]
    Exhausted(u16, u16),
}

/// The ports in use.
#[derive(Default)]
pub struct Forwards {
    used: Mutex<std::collections::HashSet<u16>>,
}

impl Gateway {
    /// Opens a forwarded port for a ticket. `requester` is who asked (the broker, or the
    /// client itself); the ticket decides everything else.
    pub async fn open_forward(
        self: &Arc<Self>,
        ticket_text: &str,
        requester: IpAddr,
    ) -> Result<Forward, ForwardError> {
        // The ticket's client is checked on every accepted connection, not against the
        // requester; only signature, expiry, port and session are checked here.
        let ticket = self.check_ticket(ticket_text, Utc::now())?;
        let client = ticket.client.ok_or(ForwardError::NoClient)?;
        let settings = self.forward_settings.clone();
        let (lo, hi) = settings.range;
        let span = u32::from(hi - lo) + 1;
        let start = rand::random::<u32>() % span;
        let mut listener = None;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            {
                let mut used = self.forwards.used.lock().unwrap_or_else(|p| p.into_inner());
                if used.contains(&port) {
                    continue;
                }
                used.insert(port);
            }
            match TcpListener::bind(SocketAddr::new(settings.bind, port)).await {
                Ok(l) => {
                    listener = Some((l, port));
                    break;
                }
                Err(_) => {
                    self.forwards
                        .used
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&port);
                }
            }
        }
        let (listener, port) = listener.ok_or(ForwardError::Exhausted(lo, hi))?;
        tracing::info!(%requester, %client, user = %ticket.user, port, target = %super::target_of(&ticket), "forwarded port opened");
        let gateway = self.clone();
        tokio::spawn(async move {
            gateway.serve_forward(listener, port, ticket, client).await;
            gateway
                .forwards
                .used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&port);
            tracing::info!(port, "forwarded port closed");
        });
        Ok(Forward { port })
    }

    async fn serve_forward(
        self: &Arc<Self>,
        listener: TcpListener,
        port: u16,
        ticket: Ticket,
        client: IpAddr,
    ) {
        // The registry entry makes the forward visible and lets "session ended" close it.
        let guard = self.register_port(ticket.clone(), client, port);
        let used = Arc::new(AtomicBool::new(false));
        let window = tokio::time::sleep(self.forward_settings.window);
        tokio::pin!(window);
        let closed = {
            let shared = guard.shared.clone();
            async move {
                std::future::poll_fn(|cx| {
                    shared.register_waker(cx);
                    if shared.is_closed() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await
            }
        };
        tokio::pin!(closed);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = &mut closed => return,
                _ = &mut window, if !used.load(Ordering::Relaxed) => {
                    tracing::info!(port, "nobody used the forwarded port in time");
                    return;
                }
            };
            let Ok((conn, peer)) = accepted else {
                continue;
            };
            if peer.ip().to_canonical() != client.to_canonical() {
                tracing::warn!(port, %peer, expected = %client, "forwarded port used from another address: refused");
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            used.store(true, Ordering::Relaxed);
            let _ = conn.set_nodelay(true);
            let Ok(conn) = conn.into_std() else {
                continue;
            };
            let gateway = self.clone();
            let ticket = ticket.clone();
            self.spawn_connection(move || async move {
                let Ok(mut conn) = TcpStream::from_std(conn) else {
                    return;
                };
                let guard = match gateway.register_counted(ticket.clone(), client, Kind::Forwarded(port)) {
                    Ok(guard) => guard,
                    Err(refusal) => {
                        tracing::warn!(port, %client, reason = %refusal, "forwarded connection refused");
                        gateway.refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let mut desktop = match tunnel::connect(&ticket.host, ticket.port, &gateway).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(port, error = %e, "desktop unreachable");
                        return;
                    }
                };
                let result = pump::run_raw(
                    &mut conn,
                    &mut desktop,
                    gateway.settings.timers.idle,
                    &guard.shared,
                )
                .await;
                tracing::debug!(port, ?result, "forwarded connection ended");
            });
        }
    }
}

/// The built-in gateway as the broker's link: forwards open in this process, on the
/// gateway's runtime.
pub struct LocalLink {
    pub gateway: Arc<Gateway>,
    pub runtime: tokio::runtime::Handle,
    /// What clients connect to.
    pub public_host: String,
}

impl crate::broker::GatewayLink for LocalLink {
    fn forward(&self, ticket: String) -> crate::broker::ForwardFuture<'_> {
        Box::pin(async move {
            let gateway = self.gateway.clone();
            let opened = self
                .runtime
                .spawn(async move {
                    gateway
                        .open_forward(&ticket, IpAddr::from([127, 0, 0, 1]))
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            let forward = opened.map_err(|e| e.to_string())?;
            Ok((self.public_host.clone(), forward.port))
        })
    }
}

/// Answers `POST /gateway/v1/forwards` (`{"ticket": "…"}` → `{"port": N}`) on a gateway's
/// port: how a broker asks a standalone gateway for a forwarded port.
pub async fn answer_request(
    gateway: &Arc<Gateway>,
    body: &[u8],
    requester: IpAddr,
) -> (u16, String) {
    #[derive(Deserialize)]
    struct Request {
        ticket: String,
    }
    let request: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                400,
                serde_json::json!({"error": "bad_request", "message": format!("expected {{\"ticket\": \"…\"}}: {e}")})
                    .to_string(),
            );
        }
    };
    match gateway.open_forward(&request.ticket, requester).await {
        Ok(forward) => (200, serde_json::json!({"port": forward.port}).to_string()),
        Err(ForwardError::Exhausted(a, b)) => {
            tracing::warn!(a, b, "forwarded ports exhausted");
            (
                503,
                serde_json::json!({"error": "no_free_port", "message": "no forwarded port is free right now"})
                    .to_string(),
            )
        }
        Err(e) => {
            tracing::warn!(%requester, reason = %e, "forward refused");
            gateway.refused.fetch_add(1, Ordering::Relaxed);
            (
                403,
                serde_json::json!({"error": "refused", "message": "refused"}).to_string(),
            )
        }
    }
}
