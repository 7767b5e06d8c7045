//! A tunnel request: `GET /tunnel?ticket=…` with a WebSocket upgrade. Checks the request and
//! its ticket, connects to the ticket's desktop, answers `101`, and hands over to the pump.
//!
//! A refusal is logged with its reason and answered with a bare `403` (or `400` for a request
//! that is not a WebSocket upgrade at all): the wire never says why, and nothing is sent to
//! any desktop.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ws::{self, Role};
use super::{Gateway, pump};

/// The path tunnels are requested on.
pub const TUNNEL_PATH: &str = "/tunnel";

/// The parts of a request head the gateway looks at.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Bytes the head took in the buffer it was read into.
    pub len: usize,
}

impl Head {
    /// Parses a complete head; `Ok(None)` when more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<Head>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Partial) => Ok(None),
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                Ok(Some(Head {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    len,
                }))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, joined by commas (as HTTP allows).
    pub fn header_all(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// A WebSocket upgrade on the tunnel path.
    pub fn is_tunnel(&self) -> bool {
        self.path == TUNNEL_PATH && self.has_token("upgrade", "websocket")
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// A complete HTTP response with no body, for refusals.
pub fn bare_response(status: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\nCache-Control: no-store\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Serves one tunnel request on `stream`. `peer` is the connection's client (after a PROXY
/// header); `X-Forwarded-For` counts only from a trusted proxy.
pub async fn serve<S>(
    gateway: &Arc<Gateway>,
    mut stream: S,
    head: Head,
    leftover: Vec<u8>,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = crate::model::location::client_address(
        peer.ip(),
        head.header_all("x-forwarded-for").as_deref(),
        &gateway.settings.trusted_proxies,
    );
    let key = match handshake_problem(&head) {
        Ok(key) => key,
        Err((status, reason)) => {
            tracing::info!(%client, reason, "tunnel request refused");
            gateway
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let extra = if status.starts_with("426") {
                "Sec-WebSocket-Version: 13\r\n"
            } else {
                ""
            };
            let _ = stream.write_all(&bare_response(status, extra)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    // The registry holds the tunnel from here, so a session over its limit is refused before
    // the desktop is asked.
    let checked = gateway
        .check(
            head.query_param("ticket").as_deref(),
            client,
            head.query_param("target").as_deref(),
            chrono::Utc::now(),
        )
        .and_then(|ticket| Ok((gateway.register(ticket.clone(), client)?, ticket)));
    let (guard, ticket) = match checked {
        Ok(registered) => registered,
        Err(refusal) => {
            tracing::warn!(%client, reason = %refusal, "tunnel refused");
            gateway
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.write_all(&bare_response("403 Forbidden", "")).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let target = super::target_of(&ticket);
    let mut desktop = match connect(&ticket.host, ticket.port, gateway).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, user = %ticket.user, %target, error = %e, "desktop unreachable");
            let _ = stream
                .write_all(&bare_response("502 Bad Gateway", ""))
                .await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let offers_binary = head
        .header_all("sec-websocket-protocol")
        .is_some_and(|p| p.split(',').any(|p| p.trim() == "binary"));
    let protocol = if offers_binary {
        "Sec-WebSocket-Protocol: binary\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        ws::accept_key(&key)
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    drop(head);
    tracing::info!(%client, user = %ticket.user, session = %ticket.session, %target, "tunnel opened");
    let result = pump::run(
        &mut stream,
        &mut desktop,
        &leftover,
        Role::Server,
        gateway.settings.timers,
        &guard.shared,
    )
    .await;
    let (up, down) = (
        guard
            .shared
            .bytes_up
            .load(std::sync::atomic::Ordering::Relaxed),
        guard
            .shared
            .bytes_down
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    // Out of the registry before the log says so: the session may open another at once.
    drop(guard);
    let (user, session) = (&ticket.user, &ticket.session);
    match result {
        Ok(end) => {
            tracing::info!(%client, %user, %session, %target, ?end, up, down, "tunnel closed")
        }
        Err(e) => {
            tracing::info!(%client, %user, %session, %target, error = %e, up, down, "tunnel failed")
        }
    }
}

/// What is wrong with a tunnel request's WebSocket handshake, or the client's key.
fn handshake_problem(head: &Head) -> Result<String, (&'static str, &'static str)> {
    if head.method != "GET" {
        return Err(("405 Method Not Allowed", "not a GET"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(("400 Bad Request", "no Connection: Upgrade"));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(("426 Upgrade Required", "WebSocket version is not 13"));
    }
    match head.header("sec-websocket-key") {
        Some(k) if ws::valid_client_key(k) => Ok(k.trim().to_string()),
        _ => Err(("400 Bad Request", "missing or malformed Sec-WebSocket-Key")),
    }
}

/// Connects to a desktop, with the gateway's connect timeout and no Nagle delay.
pub async fn connect(host: &str, port: u16, gateway: &Gateway) -> std::io::Result<TcpStream> {
    let addr: (String, u16) = (host.trim_matches(['[', ']']).to_string(), port);
    let stream = tokio::time::timeout(gateway.settings.connect_timeout, async {
        match addr.0.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
            Err(_) => TcpStream::connect(addr).await,
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_recognise_tunnel_upgrades() {
        let raw = b"GET /tunnel?ticket=GT1.a.b&target=10.0.0.1%3A3389 HTTP/1.1\r\nHost: gw\r\n\
                    Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
                    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nxx";
        let head = Head::parse(raw).expect("valid").expect("complete");
        assert!(head.is_tunnel());
        assert_eq!(head.len, raw.len() - 2);
        assert_eq!(head.query_param("ticket").as_deref(), Some("GT1.a.b"));
        assert_eq!(head.query_param("target").as_deref(), Some("10.0.0.1:3389"));
        assert_eq!(
            handshake_problem(&head).expect("fine"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(Head::parse(&raw[..20]).expect("valid").map(|h| h.len), None);
        assert!(Head::parse(b"GET /\x01 HTTP/1.1\r\n\r\n").is_err());
        let plain = Head::parse(b"GET /tunnel HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!plain.is_tunnel());
    }
}
