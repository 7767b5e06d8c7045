//! Broker forwarding: a standalone gateway in front of a broker that sits in a private
//! network passes the portal, console and API requests on, so only the gateway is exposed.
//!
//! Each request is sent upstream with the client's address appended to `X-Forwarded-For`
//! (list the gateway in the broker's `server.trusted_proxies` so it believes it),
//! `X-Forwarded-Proto` and `X-Forwarded-Host`, and `Connection: close`, so that every request
//! on a client connection gets its own header. Hop-by-hop headers are not passed on. Once the
//! broker has closed its side (or the client its own), the other side gets
//! [`AFTER_ONE_SIDE_ENDS`](super::pump::AFTER_ONE_SIDE_ENDS) without a byte before the
//! connection is dropped.
//!
//! With a flexVDI configuration, the upstream is chosen per user: a JSON request body's
//! `username` is looked up with [`ManagerRouter`] and the request goes to that user's manager;
//! that body must arrive within the handshake timeout, like the head.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{Trust, tls_connector};
use super::flexvdi::ManagerRouter;
use super::tunnel::{Head, bare_response};

/// Request bodies read to find the user name are at most this long.
const MAX_ROUTED_BODY: usize = 64 * 1024;

/// Where forwarded requests go.
pub struct Upstream {
    scheme_tls: bool,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    /// flexVDI: the manager per user (its answer replaces `host`).
    router: Option<Arc<ManagerRouter>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({}:{})", self.host, self.port)
    }
}

impl Upstream {
    /// `url` is `https://host[:port]` or `http://host[:port]`.
    pub fn new(url: &str, trust: Trust<'_>) -> Result<Upstream, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with https:// or http://"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = super::client::split_host_port(authority, if tls { 443 } else { 80 })
            .ok_or_else(|| format!("`{url}`: the host or port is malformed"))?;
        let connector = if tls {
            Some(tls_connector(trust).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Upstream {
            scheme_tls: tls,
            host,
            port,
            tls: connector,
            router: None,
        })
    }

    /// Routes each request to the user's own manager (flexVDI).
    pub fn with_router(mut self, router: Arc<ManagerRouter>) -> Self {
        self.router = Some(router);
        self
    }

    /// Passes one request (and its response) on; `buf` holds the head and any body bytes read.
    /// `deadline` is the connection's handshake deadline: a body read to route the request
    /// must come within it too.
    pub async fn forward<S>(
        &self,
        mut client: S,
        head: &Head,
        mut buf: Vec<u8>,
        peer: SocketAddr,
        secure: bool,
        deadline: Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut body = buf.split_off(head.len);
        let mut host = self.host.clone();
        if let Some(router) = &self.router
            && let Some(len) = head
                .header("content-length")
                .and_then(|l| l.trim().parse::<usize>().ok())
                .filter(|l| *l <= MAX_ROUTED_BODY)
        {
            // Like the head, the body read to route the request comes within the deadline.
            let read = tokio::time::timeout_at(deadline, async {
                while body.len() < len {
                    let mut chunk = [0u8; 4096];
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                tracing::debug!(%peer, "the request's body did not come in time");
                return;
            }
            if let Some(user) = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("username")
                        .and_then(|u| u.as_str())
                        .map(str::to_string)
                })
            {
                match router.manager_for(&user).await {
                    Ok(manager) => host = manager,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "no manager for the user");
                        let _ = client
                            .write_all(&bare_response("503 Service Unavailable", ""))
                            .await;
                        return;
                    }
                }
            }
        }
        let request = rewrite(head, peer, secure);
        let result = match self.connect(&host).await {
            Ok(Conn::Plain(mut up)) => relay(&mut client, &mut up, &request, &body).await,
            Ok(Conn::Tls(mut up)) => relay(&mut client, &mut *up, &request, &body).await,
            Err(e) => {
                tracing::warn!(upstream = %host, error = %e, "the broker does not answer");
                let _ = client
                    .write_all(&bare_response("502 Bad Gateway", ""))
                    .await;
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "forwarded request ended early");
        }
        let _ = client.shutdown().await;
    }

    async fn connect(&self, host: &str) -> io::Result<Conn> {
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            TcpStream::connect((host.trim_matches(['[', ']']), self.port)),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, self.scheme_tls) {
            (Some(connector), true) => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Ok(Conn::Tls(Box::new(connector.connect(name, tcp).await?)))
            }
            _ => Ok(Conn::Plain(tcp)),
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn relay<C, U>(client: &mut C, up: &mut U, request: &[u8], body: &[u8]) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    up.write_all(request).await?;
    up.write_all(body).await?;
    up.flush().await?;
    super::pump::relay(client, up, super::pump::AFTER_ONE_SIDE_ENDS).await
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the gateway sets itself.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The request head as sent upstream.
pub fn rewrite(head: &Head, peer: SocketAddr, secure: bool) -> Vec<u8> {
    let target = if head.query.is_empty() {
        head.path.clone()
    } else {
        format!("{}?{}", head.path, head.query)
    };
    let mut out = format!("{} {target} HTTP/1.1\r\n", head.method);
    let mut forwarded_for = None;
    for (name, value) in &head.headers {
        if name == "x-forwarded-for" {
            forwarded_for = Some(match forwarded_for {
                None => value.clone(),
                Some(prev) => format!("{prev}, {value}"),
            });
            continue;
        }
        if DROPPED.contains(&name.as_str()) || value.contains(['\r', '\n']) {
            continue;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let client = peer.ip().to_canonical().to_string();
    let chain = match forwarded_for {
        Some(prev) => format!("{prev}, {client}"),
        None => client,
    };
    out.push_str(&format!("x-forwarded-for: {chain}\r\n"));
    out.push_str(&format!(
        "x-forwarded-proto: {}\r\n",
        if secure { "https" } else { "http" }
    ));
    if let Some(host) = head.header("host") {
        out.push_str(&format!("x-forwarded-host: {host}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_client_and_lose_hop_by_hop_headers() {
        let head = Head::parse(
            b"POST /api/v1/client/login?x=1 HTTP/1.1\r\nHost: vdi.example.com\r\n\
              Connection: keep-alive\r\nX-Forwarded-For: 198.51.100.1\r\n\
              X-Forwarded-Proto: http\r\nContent-Length: 2\r\n\r\n{}",
        )
        .expect("valid")
        .expect("complete");
        let out = String::from_utf8(rewrite(
            &head,
            "203.0.113.7:5000".parse().expect("addr"),
            true,
        ))
        .expect("utf8");
        assert!(out.starts_with("POST /api/v1/client/login?x=1 HTTP/1.1\r\n"));
        assert!(out.contains("x-forwarded-for: 198.51.100.1, 203.0.113.7\r\n"));
        assert!(out.contains("x-forwarded-proto: https\r\n"));
        assert!(out.contains("x-forwarded-host: vdi.example.com\r\n"));
        assert!(out.contains("content-length: 2\r\n"));
        assert!(out.ends_with("connection: close\r\n\r\n"));
        assert!(!out.contains("keep-alive") && !out.contains("proto: http\r\n"));
    }

    /// A flexVDI request whose body never comes ends at the handshake deadline, instead of
    /// holding its connection for ever.
    #[tokio::test(start_paused = true)]
    async fn a_routed_body_that_never_comes_ends_at_the_deadline() {
        let upstream = Upstream::new("http://127.0.0.1:9", Trust::Insecure)
            .expect("url")
            .with_router(Arc::new(ManagerRouter::new("127.0.0.1", None)));
        let raw =
            b"POST /api/v1/client/login HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{\"user";
        let head = Head::parse(raw).expect("valid").expect("complete");
        // The client sent part of its body and waits, its connection open.
        let (mut client, gateway_side) = tokio::io::duplex(4096);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let peer = "203.0.113.7:5000".parse().expect("addr");
        let forwarded = upstream.forward(gateway_side, &head, raw.to_vec(), peer, true, deadline);
        // Paused time: an hour passes at once when nothing else can happen first.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(3600), forwarded).await;
        assert!(ended.is_ok(), "the request was still waiting for its body");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn upstream_urls_are_checked() {
        assert!(Upstream::new("https://10.0.0.5:8443", Trust::Insecure).is_ok());
        assert!(Upstream::new("http://broker", Trust::Insecure).is_ok());
        assert!(Upstream::new("ftp://broker", Trust::Insecure).is_err());
        assert!(Upstream::new("https://", Trust::Insecure).is_err());
    }
}
