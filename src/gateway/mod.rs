//! The gateway: one TLS port for the console, the APIs and WebSocket tunnels to desktops,
//! authorised by broker-signed tickets so that it is never an open proxy.
//!
//! - [`Gateway`] holds what every tunnel is checked against (the broker's public key, the
//!   allowed ports, the sessions the broker ended) and the registry of open tunnels. The ended
//!   sessions live under the registry's lock: registering a tunnel (or a forwarded port, or a
//!   connection through one) checks them again, so a session the broker ends between a
//!   ticket's check and its tunnel's registration gets no tunnel.
//! - [`listener`] is the front door: TCP accept, the PROXY protocol (v1, v2) from trusted proxies, TLS,
//!   and the first request head, which decides between a tunnel and the HTTP backend.
//! - [`tunnel`] checks a tunnel request and its ticket and opens the tunnel.
//! - [`pump`] carries the bytes; [`ws`] is the WebSocket wire format; [`workers`] are the
//!   per-core threads connections live on.
//! - [`client`] is the other end (`gatehouse tunnel`); [`standalone`] runs `gatehouse gateway`;
//!   [`registry`] keeps a standalone gateway in touch with the broker it is registered with.
//! - [`forward`] opens forwarded ports from a range for native clients.
//! - [`upstream`] forwards console, portal and API requests to a broker behind the gateway.
//! - [`flexvdi`] reads a flexVDI gateway configuration file and routes users to their manager.
//!
//! It never reads the store: a standalone gateway on another host has only the broker's
//! public key.

pub mod client;
pub mod flexvdi;
pub mod forward;
pub mod listener;
pub mod pump;
pub mod registry;
pub mod standalone;
pub mod tunnel;
pub mod upstream;
pub mod workers;
pub mod ws;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::broker::Ticket;
use crate::broker::connect::TicketError;
use crate::model::location::Cidr;

pub use pump::{Closing, End, Timers, TunnelShared};

/// Ports a tunnel may reach, as ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }

    /// Adds the default ports of SSH, RDP and VNC/SPICE, which tunnels may always reach.
    pub fn with_protocol_ports(self) -> Self {
        self.with_ports([22, 3389, 5900])
    }

    /// Adds single ports (the protocol ports the plans use).
    pub fn with_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        for p in ports {
            if !self.contains(p) {
                self.0.push((p, p));
            }
        }
        self
    }
}

impl Default for PortRanges {
    /// RDP, and the VNC / SPICE display range.
    fn default() -> Self {
        PortRanges(vec![(3389, 3389), (5900, 25900)])
    }
}

impl FromStr for PortRanges {
    type Err = String;

    /// `3389,5900-25900`: ports and inclusive ranges, separated by commas.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parse = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}` is not a port (1-65535)"))
            };
            let range = match part.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(part)?, parse(part)?),
            };
            if range.0 > range.1 {
                return Err(format!("`{part}`: the range's start is after its end"));
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("no port given: write ports and ranges like `3389,5900-25900`".into());
        }
        Ok(PortRanges(ranges))
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A session's open tunnels at most, by default: a SPICE client with several USB devices
/// opens about twenty channels, an RDP client a few connections.
pub const DEFAULT_MAX_TUNNELS_PER_SESSION: usize = 64;

/// How a gateway behaves; built from `[gateway]` in the configuration or from the
/// `gatehouse gateway` flags.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub allowed_ports: PortRanges,
    pub timers: Timers,
    /// Open client connections at most (console and tunnels together).
    pub max_connections: usize,
    /// Open tunnels (and connections through forwarded ports) one session may hold at once,
    /// so that one user cannot take the connections every other user needs.
    pub max_tunnels_per_session: usize,
    /// TLS handshake and the first request head must complete within this.
    pub handshake_timeout: Duration,
    /// Connecting to a desktop (or, while its backlog is full, to the console's socket) gives up
    /// after this.
    pub connect_timeout: Duration,
    /// Load balancers whose PROXY header (v1 or v2) and `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Worker threads serving connections (0: one per core).
    pub threads: usize,
    /// How long a worker keeps polling its sockets after bytes moved, instead of sleeping
    /// (zero: off). See [`workers`].
    pub busy_poll: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            allowed_ports: PortRanges::default(),
            timers: Timers {
                keepalive: Some(Duration::from_secs(30)),
                pong_timeout: Duration::from_secs(10),
                idle: None,
            },
            max_connections: 20_000,
            max_tunnels_per_session: DEFAULT_MAX_TUNNELS_PER_SESSION,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            threads: 0,
            busy_poll: Duration::ZERO,
        }
    }
}

/// Why a tunnel was refused. Logged with the reason; the wire only ever sees a generic 403.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("no ticket")]
    NoTicket,
    #[error(transparent)]
    Ticket(#[from] TicketError),
    #[error("port {0} is outside the allowed ports")]
    Port(u16),
    #[error("the request names target {asked}, the ticket is for {ticket}")]
    Target { asked: String, ticket: String },
    #[error("client {client} is not the ticket's client {ticket}")]
    Client { client: IpAddr, ticket: IpAddr },
    #[error("the session ended")]
    SessionEnded,
    #[error("the session already has {0} open tunnels, its most (max_tunnels_per_session)")]
    TooManyTunnels(usize),
}

/// What a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "port")]
pub enum Kind {
    /// A WebSocket tunnel.
    Tunnel,
    /// A forwarded port waiting for (or serving) its client.
    ForwardedPort(u16),
    /// One connection through a forwarded port.
    Forwarded(u16),
}

/// One open tunnel, as the console and the broker see it (standalone gateways send these to
/// the broker).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelReport {
    pub id: u64,
    #[serde(flatten)]
    pub kind: Kind,
    pub session: String,
    pub user: String,
    pub target: String,
    pub client: IpAddr,
    pub opened: DateTime<Utc>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

struct OpenTunnel {
    kind: Kind,
    ticket: Ticket,
    client: IpAddr,
    opened: DateTime<Utc>,
    shared: Arc<TunnelShared>,
}

/// The checks and the registry every tunnel goes through.
pub struct Gateway {
    pub settings: GatewaySettings,
    pub forward_settings: forward::ForwardSettings,
    forwards: forward::Forwards,
    key: RwLock<VerifyingKey>,
    /// The open tunnels and the ended sessions, under one lock.
    open: Mutex<Registry>,
    next_id: AtomicU64,
    pub refused: AtomicU64,
    pub opened_total: AtomicU64,
    /// Started on the first connection; `None` if the threads could not be started.
    workers: OnceLock<Option<workers::Workers>>,
}

impl Gateway {
    pub fn new(settings: GatewaySettings, key: VerifyingKey) -> Gateway {
        Gateway {
            settings,
            forward_settings: forward::ForwardSettings::default(),
            forwards: forward::Forwards::default(),
            key: RwLock::new(key),
            open: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            refused: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
            workers: OnceLock::new(),
        }
    }

    /// Runs a client connection's task (built by `make`) on a worker thread: see
    /// [`workers`]. Without worker threads it runs on the current runtime.
    pub fn spawn_connection<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let workers = self.workers.get_or_init(|| {
            workers::Workers::start(self.settings.threads, self.settings.busy_poll)
                .inspect_err(|e| tracing::error!(error = %e, "gateway worker threads not started; connections share the main runtime"))
                .ok()
        });
        match workers {
            Some(w) => w.spawn(make),
            None => {
                tokio::spawn(make());
            }
        }
    }

    /// Sets where forwarded ports are opened.
    pub fn with_forwarding(mut self, settings: forward::ForwardSettings) -> Self {
        self.forward_settings = settings;
        self
    }

    fn key(&self) -> VerifyingKey {
        *self.key.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the broker key (a standalone gateway fetched a new one).
    pub fn set_key(&self, key: VerifyingKey) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// Checks a ticket for a tunnel from `client`; `asked` is a target the request named, if
    /// any (it must be the ticket's own).
    pub fn check(
        &self,
        ticket: Option<&str>,
        client: IpAddr,
        asked: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Ticket, Refusal> {
        let text = ticket.filter(|t| !t.is_empty()).ok_or(Refusal::NoTicket)?;
        let ticket = self.check_ticket(text, now)?;
        let target = target_of(&ticket);
        if let Some(asked) = asked
            && asked != target
            && asked != format!("{}:{}", ticket.host, ticket.port)
        {
            return Err(Refusal::Target {
                asked: asked.to_string(),
                ticket: target,
            });
        }
        if let Some(allowed) = ticket.client
            && !same_address(allowed, client)
        {
            return Err(Refusal::Client {
                client,
                ticket: allowed,
            });
        }
        Ok(ticket)
    }

    /// What holds for a ticket whoever presents it: signature, expiry, allowed port, and a
    /// session the broker has not ended.
    fn check_ticket(&self, text: &str, now: DateTime<Utc>) -> Result<Ticket, Refusal> {
        let ticket = Ticket::verify(text, &self.key(), now)?;
        if !self.settings.allowed_ports.contains(ticket.port) {
            return Err(Refusal::Port(ticket.port));
        }
        self.registry().refuse_ended(&ticket.session)?;
        Ok(ticket)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a tunnel about to open; it leaves the registry when the guard drops. Refused
    /// when its session has ended (even since its ticket was checked) or already holds
    /// `max_tunnels_per_session` tunnels.
    pub fn register(
        self: &Arc<Self>,
        ticket: Ticket,
        client: IpAddr,
    ) -> Result<TunnelGuard, Refusal> {
        self.register_counted(ticket, client, Kind::Tunnel)
    }

    /// Records a connection of `kind` (a tunnel, or one through a forwarded port) within its
    /// session's limit.
    fn register_counted(
        self: &Arc<Self>,
        ticket: Ticket,
        client: IpAddr,
        kind: Kind,
    ) -> Result<TunnelGuard, Refusal> {
        let limit = self.settings.max_tunnels_per_session;
        let mut open = self.registry();
        open.refuse_ended(&ticket.session)?;
        if open.held(&ticket.session) >= limit {
            return Err(Refusal::TooManyTunnels(limit));
        }
        Ok(self.enter(&mut open, ticket, client, kind))
    }

    /// Records a forwarded port waiting for its client: the session's port, not one of its
    /// connections, so never refused for the session's limit; only when the session ended.
    fn register_port(
        self: &Arc<Self>,
        ticket: Ticket,
        client: IpAddr,
        port: u16,
    ) -> Result<TunnelGuard, Refusal> {
        let mut open = self.registry();
        open.refuse_ended(&ticket.session)?;
        Ok(self.enter(&mut open, ticket, client, Kind::ForwardedPort(port)))
    }

    fn enter(
        self: &Arc<Self>,
        open: &mut Registry,
        ticket: Ticket,
        client: IpAddr,
        kind: Kind,
    ) -> TunnelGuard {
        let shared = Arc::new(TunnelShared::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.insert(
            id,
            OpenTunnel {
                kind,
                ticket,
                client,
                opened: Utc::now(),
                shared: shared.clone(),
            },
        );
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        TunnelGuard {
            gateway: self.clone(),
            id,
            shared,
        }
    }

    /// The broker ended a session: close its tunnels and refuse its tickets from now on.
    /// Returns how many tunnels were closed.
    pub fn end_session(&self, session: &str, ticket_expiry: i64) -> usize {
        // Under the one lock registrations take: none slips in between.
        let mut open = self.registry();
        let now = Utc::now().timestamp();
        open.ended.retain(|_, until| *until > now);
        open.ended.insert(session.to_string(), ticket_expiry);
        let mut closed = 0;
        for t in open
            .tunnels
            .values()
            .filter(|t| t.ticket.session == session)
        {
            t.shared.close(Closing::SessionEnded);
            closed += 1;
        }
        closed
    }

    /// Closes every tunnel (the gateway is stopping).
    pub fn close_all(&self) {
        for t in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tunnels
            .values()
        {
            t.shared.close(Closing::Shutdown);
        }
    }

    pub fn open_count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tunnels
            .len()
    }

    /// The open tunnels, oldest first.
    pub fn report(&self) -> Vec<TunnelReport> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<TunnelReport> = open
            .tunnels
            .iter()
            .map(|(id, t)| TunnelReport {
                id: *id,
                kind: t.kind,
                session: t.ticket.session.clone(),
                user: t.ticket.user.clone(),
                target: target_of(&t.ticket),
                client: t.client,
                opened: t.opened,
                bytes_up: t.shared.bytes_up.load(Ordering::Relaxed),
                bytes_down: t.shared.bytes_down.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by_key(|t| (t.opened, t.id));
        list
    }
}

/// Keeps a tunnel in the registry while it is open.
pub struct TunnelGuard {
    gateway: Arc<Gateway>,
    id: u64,
    pub shared: Arc<TunnelShared>,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.gateway
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
    }
}

/// The open tunnels by id, and how many each session holds (forwarded ports waiting for their
/// client are listed, not counted: they are the session's port, not a connection); and the
/// sessions the broker ended.
#[derive(Default)]
struct Registry {
    tunnels: HashMap<u64, OpenTunnel>,
    per_session: HashMap<String, usize>,
    /// Sessions the broker ended, kept until their tickets could no longer be used.
    ended: HashMap<String, i64>,
}

impl Registry {
    fn refuse_ended(&self, session: &str) -> Result<(), Refusal> {
        if self.ended.contains_key(session) {
            return Err(Refusal::SessionEnded);
        }
        Ok(())
    }

    fn counts(kind: Kind) -> bool {
        !matches!(kind, Kind::ForwardedPort(_))
    }

    /// How many counted tunnels `session` holds.
    fn held(&self, session: &str) -> usize {
        self.per_session.get(session).copied().unwrap_or(0)
    }

    fn insert(&mut self, id: u64, tunnel: OpenTunnel) {
        if Registry::counts(tunnel.kind) {
            *self
                .per_session
                .entry(tunnel.ticket.session.clone())
                .or_default() += 1;
        }
        self.tunnels.insert(id, tunnel);
    }

    fn remove(&mut self, id: u64) {
        let Some(tunnel) = self.tunnels.remove(&id) else {
            return;
        };
        if Registry::counts(tunnel.kind)
            && let Some(held) = self.per_session.get_mut(&tunnel.ticket.session)
        {
            *held -= 1;
            if *held == 0 {
                self.per_session.remove(&tunnel.ticket.session);
            }
        }
    }
}

/// `host:port`, with IPv6 hosts in brackets.
pub fn target_of(ticket: &Ticket) -> String {
    if ticket.host.contains(':') {
        format!("[{}]:{}", ticket.host, ticket.port)
    } else {
        format!("{}:{}", ticket.host, ticket.port)
    }
}

/// Addresses compare equal across IPv4 and its IPv6-mapped form.
fn same_address(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn ticket(port: u16, client: Option<IpAddr>) -> Ticket {
        Ticket {
            session: "s1".into(),
            user: "alice".into(),
            host: "10.0.0.5".into(),
            port,
            client,
            expires: Utc::now().timestamp() + 60,
        }
    }

    /// The broker's key, a gateway with `settings` that trusts it, and the client the tests
    /// connect from.
    fn gateway(settings: GatewaySettings) -> (SigningKey, Arc<Gateway>, IpAddr) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let gw = Arc::new(Gateway::new(settings, key.verifying_key()));
        (key, gw, "192.0.2.9".parse().expect("ip"))
    }

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        let r: PortRanges = "3389, 5900-25900".parse().expect("valid");
        assert!(r.contains(3389) && r.contains(5900) && r.contains(25900));
        assert!(!r.contains(22) && !r.contains(25901));
        assert_eq!(r.to_string(), "3389,5900-25900");
        assert!("".parse::<PortRanges>().is_err());
        assert!("0".parse::<PortRanges>().is_err());
        assert!("70000".parse::<PortRanges>().is_err());
        assert!("20-10".parse::<PortRanges>().is_err());
        assert!("ssh".parse::<PortRanges>().is_err());
        assert!(PortRanges::default().with_ports([22]).contains(22));
    }

    #[test]
    fn tickets_are_checked_for_port_target_client_and_ended_sessions() {
        let (key, gw, client) = gateway(GatewaySettings::default());
        let now = Utc::now();
        let good = ticket(3389, Some(client)).sign(&key);
        assert!(gw.check(Some(&good), client, None, now).is_ok());
        // IPv4-mapped IPv6 is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert!(gw.check(Some(&good), mapped, None, now).is_ok());
        assert_eq!(gw.check(None, client, None, now), Err(Refusal::NoTicket));
        assert!(matches!(
            gw.check(Some(&good), "192.0.2.10".parse().expect("ip"), None, now),
            Err(Refusal::Client { .. })
        ));
        assert!(matches!(
            gw.check(Some(&good), client, Some("10.0.0.6:3389"), now),
            Err(Refusal::Target { .. })
        ));
        assert!(
            gw.check(Some(&good), client, Some("10.0.0.5:3389"), now)
                .is_ok()
        );
        let ssh = ticket(22, None).sign(&key);
        assert_eq!(
            gw.check(Some(&ssh), client, None, now),
            Err(Refusal::Port(22))
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            gw.check(Some(&ticket(3389, None).sign(&other)), client, None, now),
            Err(Refusal::Ticket(TicketError::BadSignature))
        );

        let guard = gw.register(ticket(3389, None), client).expect("registered");
        assert_eq!(gw.open_count(), 1);
        assert_eq!(gw.report()[0].target, "10.0.0.5:3389");
        assert_eq!(gw.end_session("s1", now.timestamp() + 60), 1);
        assert!(guard.shared.is_closed());
        assert_eq!(
            gw.check(Some(&good), client, None, now),
            Err(Refusal::SessionEnded)
        );
        drop(guard);
        assert_eq!(gw.open_count(), 0);
    }

    /// The broker ends a session after a tunnel's ticket was checked but before the tunnel is
    /// registered: the registration is refused, for tunnels and forwarded connections alike,
    /// so that no tunnel of an ended session stays open.
    #[test]
    fn a_session_ended_between_check_and_registration_is_refused() {
        let (key, gw, client) = gateway(GatewaySettings::default());
        let now = Utc::now();
        let text = ticket(3389, Some(client)).sign(&key);
        let checked = gw.check(Some(&text), client, None, now).expect("checked");
        assert_eq!(gw.end_session("s1", now.timestamp() + 60), 0);
        assert_eq!(
            gw.register(checked.clone(), client).err(),
            Some(Refusal::SessionEnded)
        );
        assert_eq!(
            gw.register_counted(checked.clone(), client, Kind::Forwarded(20001))
                .err(),
            Some(Refusal::SessionEnded)
        );
        assert_eq!(
            gw.register_port(checked, client, 20001).err(),
            Some(Refusal::SessionEnded)
        );
        assert_eq!(gw.open_count(), 0);
    }

    #[test]
    fn a_session_holds_at_most_its_limit_of_tunnels() {
        let (_key, gw, client) = gateway(GatewaySettings {
            max_tunnels_per_session: 2,
            ..GatewaySettings::default()
        });
        let session = |session: &str| Ticket {
            session: session.into(),
            ..ticket(3389, None)
        };
        let of = |s: &str, kind: Kind| gw.register_counted(session(s), client, kind);
        // A forwarded port waiting for its client is the session's, not one of its connections.
        let port = gw
            .register_port(session("s1"), client, 20001)
            .expect("the port");
        let first = of("s1", Kind::Tunnel).expect("first");
        let second = of("s1", Kind::Forwarded(20001)).expect("second");
        assert_eq!(
            of("s1", Kind::Tunnel).err(),
            Some(Refusal::TooManyTunnels(2))
        );
        // Another session is not held back by this one.
        let theirs = of("s2", Kind::Tunnel).expect("another session's");
        assert_eq!(gw.open_count(), 4);
        // A tunnel that ends makes room; the count goes with the last one.
        drop(first);
        let third = of("s1", Kind::Tunnel).expect("room again");
        drop((second, third, theirs, port));
        assert_eq!(gw.open_count(), 0);
        let open = gw.open.lock().expect("lock");
        assert!(open.per_session.is_empty(), "{:?}", open.per_session);
    }
}
