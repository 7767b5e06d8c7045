//! Port-range forwarding, for native clients that cannot speak WebSocket.
//!
//! For a ticket, the gateway takes a free port from its range and listens there for that one
//! session: it accepts only from the ticket's client address, forwards each connection to the
//! ticket's desktop, and gives the port back when the broker ends the session, or when the port
//! has had no connection for the window: from its opening, and again from the end of its last
//! connection. Asking again for the same session, desktop and client while its port is open
//! gets that same port (and its window runs from the new request at least), so neither
//! reconnects nor repeated requests take the range one port at a time. The broker asks for a
//! forward (in process for the built-in gateway, `POST /gateway/v1/forwards` with the ticket
//! for a standalone one); the ticket's signature is the only authority, as for tunnels.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Gateway, Kind, Refusal, TunnelGuard, pump, tunnel};
use crate::broker::Ticket;

/// Where forwarded ports are opened.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Ports to take from, inclusive.
    pub range: (u16, u16),
    /// The local address forwarded ports listen on.
    pub bind: IpAddr,
    /// A forwarded port with no connection for this long is given back: counted from its
    /// opening (or the last request for it), and again from the end of its last connection.
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

/// Whom a forwarded port serves: the same session, desktop and client asking again get the
/// same port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ForwardKey {
    session: String,
    target: String,
    client: IpAddr,
}

/// An open forwarded port.
struct OpenPort {
    port: u16,
    /// When it was last asked for: it is not given back within a window of this.
    asked: Instant,
}

/// The ports in use, and the open ones by whom they serve.
#[derive(Default)]
pub struct Forwards {
    state: Mutex<PortState>,
}

#[derive(Default)]
struct PortState {
    /// Ports taken: open ones, and ones being opened or closed.
    used: HashSet<u16>,
    open: HashMap<ForwardKey, OpenPort>,
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, PortState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window of the port for `key` ran out. `Some(deadline)` when it was asked for again
    /// meanwhile (its window now ends then); otherwise it is no longer handed out, and `None`.
    fn expire(&self, key: &ForwardKey, port: u16, window: Duration) -> Option<Instant> {
        let mut state = self.lock();
        let open = state.open.get(key).filter(|o| o.port == port)?;
        let deadline = open.asked + window;
        if deadline > Instant::now() {
            return Some(deadline);
        }
        state.open.remove(key);
        None
    }

    /// The port for `key` is closing: no longer handed out.
    fn forget(&self, key: &ForwardKey, port: u16) {
        let mut state = self.lock();
        if state.open.get(key).is_some_and(|o| o.port == port) {
            state.open.remove(key);
        }
    }

    /// The port is closed: free for another session.
    fn release(&self, port: u16) {
        self.lock().used.remove(&port);
    }
}

/// Binds a free port of `settings.range` (starting at a random one), marking it used.
fn take_port(used: &mut HashSet<u16>, settings: &ForwardSettings) -> Option<(TcpListener, u16)> {
    let (lo, hi) = settings.range;
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    (0..span).find_map(|i| {
        let port = lo + ((start + i) % span) as u16;
        if used.contains(&port) {
            return None;
        }
        // Bound at once (no await), so that the lock on the ports is held throughout.
        let listener = std::net::TcpListener::bind(SocketAddr::new(settings.bind, port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .ok()?;
        used.insert(port);
        Some((listener, port))
    })
}

/// What a forwarded port accepts connections from: its listener (and, in tests, one that
/// fails).
trait Accept {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>>;
}

impl Accept for TcpListener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
}

/// Counts a forwarded port's live connections: one is counted while this is held.
struct Live(Arc<watch::Sender<usize>>);

impl Live {
    fn new(count: &Arc<watch::Sender<usize>>) -> Live {
        count.send_modify(|n| *n += 1);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Gateway {
    /// Opens a forwarded port for a ticket, or hands out the one already open for its
    /// session, desktop and client. `requester` is who asked (the broker, or the client
    /// itself); the ticket decides everything else.
    pub async fn open_forward(
        self: &Arc<Self>,
        ticket_text: &str,
        requester: IpAddr,
    ) -> Result<Forward, ForwardError> {
        // The ticket's client is checked on every accepted connection, not against the
        // requester; only signature, expiry, port and session are checked here.
        let ticket = self.check_ticket(ticket_text, Utc::now())?;
        let client = ticket.client.ok_or(ForwardError::NoClient)?;
        let target = super::target_of(&ticket);
        let key = ForwardKey {
            session: ticket.session.clone(),
            target: target.clone(),
            client: client.to_canonical(),
        };
        let settings = &self.forward_settings;
        let (listener, port) = {
            let mut state = self.forwards.lock();
            if let Some(open) = state.open.get_mut(&key) {
                open.asked = Instant::now();
                let port = open.port;
                tracing::info!(%requester, %client, user = %ticket.user, port, %target, "forwarded port asked for again: the same port");
                return Ok(Forward { port });
            }
            let (lo, hi) = settings.range;
            let (listener, port) =
                take_port(&mut state.used, settings).ok_or(ForwardError::Exhausted(lo, hi))?;
            state.open.insert(
                key.clone(),
                OpenPort {
                    port,
                    asked: Instant::now(),
                },
            );
            (listener, port)
        };
        // The registry entry makes the forward visible and lets "session ended" close it; a
        // session that ended since its ticket was checked gets no port.
        let guard = match self.register_port(ticket.clone(), client, port) {
            Ok(guard) => guard,
            Err(refusal) => {
                self.forwards.forget(&key, port);
                drop(listener);
                self.forwards.release(port);
                return Err(refusal.into());
            }
        };
        tracing::info!(%requester, %client, user = %ticket.user, port, %target, "forwarded port opened");
        let gateway = self.clone();
        tokio::spawn(async move {
            gateway
                .serve_forward(&listener, port, &key, ticket, client, guard)
                .await;
            gateway.forwards.forget(&key, port);
            drop(listener);
            gateway.forwards.release(port);
            tracing::info!(port, "forwarded port closed");
        });
        Ok(Forward { port })
    }

    async fn serve_forward<L: Accept>(
        self: &Arc<Self>,
        listener: &L,
        port: u16,
        key: &ForwardKey,
        ticket: Ticket,
        client: IpAddr,
        guard: TunnelGuard,
    ) {
        let window_length = self.forward_settings.window;
        let window = tokio::time::sleep(window_length);
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
        // The live connections: the window runs only while there is none.
        let live = Arc::new(watch::channel(0usize).0);
        let mut count = live.subscribe();
        let mut busy = false;
        let mut used = false;
        loop {
            let now_busy = *count.borrow_and_update() > 0;
            if busy && !now_busy {
                window.as_mut().reset(Instant::now() + window_length);
            }
            busy = now_busy;
            let accepted = tokio::select! {
                a = std::future::poll_fn(|cx| listener.poll_accept(cx)) => a,
                _ = &mut closed => return,
                _ = count.changed() => continue,
                _ = &mut window, if !busy => {
                    if let Some(deadline) = self.forwards.expire(key, port, window_length) {
                        window.as_mut().reset(deadline);
                        continue;
                    }
                    if used {
                        tracing::info!(port, "the forwarded port had no connection for its window");
                    } else {
                        tracing::info!(port, "nobody used the forwarded port in time");
                    }
                    return;
                }
            };
            let (conn, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed on a forwarded port");
                    tokio::select! {
                        _ = tokio::time::sleep(super::listener::ACCEPT_PAUSE) => {}
                        _ = &mut closed => return,
                    }
                    continue;
                }
            };
            if peer.ip().to_canonical() != client.to_canonical() {
                tracing::warn!(port, %peer, expected = %client, "forwarded port used from another address: refused");
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let _ = conn.set_nodelay(true);
            let Ok(conn) = conn.into_std() else {
                continue;
            };
            // Counted from here, so that the window cannot run out before the connection's
            // task starts.
            let held = Live::new(&live);
            busy = true;
            used = true;
            let gateway = self.clone();
            let ticket = ticket.clone();
            self.spawn_connection(move || async move {
                let _held = held;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    /// How long a test waits for what it expects before it fails.
    const WAIT: Duration = Duration::from_secs(10);

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// A gateway that opens forwarded ports on 127.0.0.1 from `range`, with `window`.
    fn gateway(range: (u16, u16), window: Duration) -> (Arc<Gateway>, SigningKey) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let settings = super::super::GatewaySettings {
            allowed_ports: "1024-65535".parse().expect("ports"),
            threads: 1,
            ..Default::default()
        };
        let gateway =
            Gateway::new(settings, key.verifying_key()).with_forwarding(ForwardSettings {
                range,
                bind: LOCALHOST,
                window,
            });
        (Arc::new(gateway), key)
    }

    /// An echo "desktop".
    async fn desktop() -> SocketAddr {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A ticket for `session` to `desktop`, for 127.0.0.1, valid for `ttl` seconds.
    fn ticket(key: &SigningKey, session: &str, desktop: SocketAddr, ttl: i64) -> String {
        Ticket {
            session: session.into(),
            user: "alice".into(),
            host: desktop.ip().to_string(),
            port: desktop.port(),
            client: Some(LOCALHOST),
            expires: Utc::now().timestamp() + ttl,
        }
        .sign(key)
    }

    fn listed(gateway: &Gateway, port: u16) -> bool {
        gateway
            .report()
            .iter()
            .any(|t| t.kind == Kind::ForwardedPort(port))
    }

    /// The window runs again once the port's last connection ends: a port nobody uses any
    /// more is given back, not held until the session ends.
    #[tokio::test]
    async fn a_used_port_is_given_back_a_window_after_its_last_connection_ends() {
        let port = free_port();
        let (gateway, key) = gateway((port, port), Duration::from_millis(200));
        let desktop = desktop().await;
        let forward = gateway
            .open_forward(&ticket(&key, "s1", desktop, 60), LOCALHOST)
            .await
            .expect("opened");
        assert_eq!(forward.port, port);

        let mut conn = TcpStream::connect((LOCALHOST, port))
            .await
            .expect("connect");
        conn.write_all(b"ping").await.expect("write");
        let mut echoed = [0u8; 4];
        conn.read_exact(&mut echoed)
            .await
            .expect("the desktop answers");
        assert_eq!(&echoed, b"ping");
        drop(conn);

        // Polled: the port leaves the registry, and then its socket is closed.
        let given_back = tokio::time::timeout(WAIT, async {
            while listed(&gateway, port) || std::net::TcpListener::bind((LOCALHOST, port)).is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            given_back.is_ok(),
            "port {port} is still held: {:?}",
            gateway.report()
        );
    }

    /// Accepts that fail at once, again and again.
    #[derive(Default)]
    struct Failing {
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Accept for Failing {
        fn poll_accept(&self, _: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
            // Bounded, so that a loop that spins ends (and fails the test) instead of hanging.
            if self.calls.fetch_add(1, Ordering::Relaxed) < 10_000 {
                Poll::Ready(Err(io::Error::other("too many open files")))
            } else {
                Poll::Pending
            }
        }
    }

    /// A failing accept (out of file descriptors and the like) is followed by a pause, as on
    /// the main listener, instead of a loop that spins on the error.
    #[tokio::test(start_paused = true)]
    async fn a_forwarded_port_pauses_after_a_failed_accept() {
        let (gateway, _) = gateway((1, 1), Duration::from_secs(1));
        let ticket = Ticket {
            session: "s1".into(),
            user: "alice".into(),
            host: "127.0.0.1".into(),
            port: 3389,
            client: Some(LOCALHOST),
            expires: Utc::now().timestamp() + 60,
        };
        let key = ForwardKey {
            session: "s1".into(),
            target: "127.0.0.1:3389".into(),
            client: LOCALHOST,
        };
        let guard = gateway
            .register_port(ticket.clone(), LOCALHOST, 1)
            .expect("the port");
        let failing = Failing::default();
        // Paused time: the window (nobody connected) ends it.
        gateway
            .serve_forward(&failing, 1, &key, ticket, LOCALHOST, guard)
            .await;
        let calls = failing.calls.load(Ordering::Relaxed);
        assert!(calls < 100, "{calls} accepts tried within one window");
    }

    /// One ticket (or another for the same session, desktop and client) asked for again while
    /// its port is open gets that port, instead of taking the range one port at a time.
    #[tokio::test]
    async fn asking_again_for_the_same_session_desktop_and_client_gets_the_same_port() {
        let port = free_port();
        let (gateway, key) = gateway((port, port), Duration::from_secs(600));
        let desktop = desktop().await;
        let ticket = ticket(&key, "s1", desktop, 60);
        let first = gateway
            .open_forward(&ticket, LOCALHOST)
            .await
            .expect("opened");
        assert_eq!(first.port, port);
        for _ in 0..3 {
            let again = gateway
                .open_forward(&ticket, LOCALHOST)
                .await
                .expect("the same port");
            assert_eq!(again, first);
        }
        // A later ticket of the same session (the broker asked again).
        let renewed = super::tests::ticket(&key, "s1", desktop, 120);
        assert_ne!(renewed, ticket);
        assert_eq!(
            gateway
                .open_forward(&renewed, LOCALHOST)
                .await
                .expect("the same port"),
            first
        );
        // Another session does not share it (and the one-port range is taken).
        let theirs = super::tests::ticket(&key, "s2", desktop, 60);
        assert!(matches!(
            gateway.open_forward(&theirs, LOCALHOST).await,
            Err(ForwardError::Exhausted(..))
        ));
        let ports = gateway
            .report()
            .iter()
            .filter(|t| matches!(t.kind, Kind::ForwardedPort(_)))
            .count();
        assert_eq!(ports, 1, "{:?}", gateway.report());
    }
}
