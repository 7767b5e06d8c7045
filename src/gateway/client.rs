//! The client side of a tunnel (`gatehouse tunnel`): a local listener whose every accepted
//! connection is carried through the gateway in its own WebSocket, so any native client
//! (xfreerdp, remote-viewer, a VNC viewer) can use a tunnel.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pump::{self, End, PumpError, Timers, TunnelShared};
use super::tunnel::TUNNEL_PATH;
use super::ws::{self, Role};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the gateway URL `{0}` is not usable: {1}")]
    Url(String, String),
    #[error("the CA file {0}: {1}")]
    Ca(String, String),
    #[error("cannot reach the gateway: {0}")]
    Connect(io::Error),
    #[error("TLS with the gateway failed: {0}")]
    Tls(io::Error),
    #[error(
        "the gateway refused the tunnel ({0}); the ticket may be expired or not for this client"
    )]
    Refused(String),
    #[error("the gateway's answer is not a WebSocket handshake: {0}")]
    Handshake(String),
    /// The tunnel was open and broke.
    #[error("the tunnel broke: {0}")]
    Broken(String),
}

/// What broke an open tunnel, named from this side: the WebSocket is the gateway's, the TCP
/// connection the local application's.
fn broken(e: PumpError) -> ClientError {
    ClientError::Broken(match e {
        PumpError::Client(e) => format!("the connection to the gateway: {e}"),
        PumpError::Target(e) => format!("the local application's connection: {e}"),
        PumpError::Protocol(e) => format!("the gateway broke the WebSocket protocol: {e}"),
    })
}

/// Where and how to open tunnels.
pub struct TunnelClient {
    host: String,
    port: u16,
    /// Path and query of the request, ticket included.
    request_path: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timers: Timers,
}

impl std::fmt::Debug for TunnelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The request path holds the ticket: never printed.
        write!(f, "TunnelClient({}:{})", self.host, self.port)
    }
}

/// How the client checks the gateway's certificate.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The system's certificate authorities.
    System,
    /// The certificate authorities (or the self-signed certificate) in a PEM file.
    CaFile(&'a Path),
    /// No check at all (testing only; the connection can be intercepted).
    Insecure,
}

impl<'a> Trust<'a> {
    /// From a `--ca FILE` / `--insecure` pair of flags: the file wins; neither means the
    /// system's authorities.
    pub fn from_flags(ca: Option<&'a Path>, insecure: bool) -> Trust<'a> {
        match (ca, insecure) {
            (Some(ca), _) => Trust::CaFile(ca),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        }
    }
}

impl TunnelClient {
    /// `gateway` is `wss://host[:port][/tunnel]` or `ws://…`.
    pub fn new(gateway: &str, ticket: &str, trust: Trust<'_>) -> Result<TunnelClient, ClientError> {
        let bad = |why: &str| ClientError::Url(gateway.to_string(), why.to_string());
        let (secure, rest) = if let Some(r) = gateway.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = gateway.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("it must start with wss:// or ws://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, TUNNEL_PATH),
        };
        let path = if path == "/" { TUNNEL_PATH } else { path };
        let (host, port) = split_host_port(authority, if secure { 443 } else { 80 })
            .ok_or_else(|| bad("the host or port is malformed"))?;
        if ticket.trim().is_empty() {
            return Err(bad("no ticket given"));
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        let request_path = format!("{path}{sep}ticket={}", ticket.trim());
        let tls = if secure {
            let config = client_config(trust)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(TunnelClient {
            host,
            port,
            request_path,
            tls,
            timers: Timers {
                keepalive: Some(Duration::from_secs(30)),
                pong_timeout: Duration::from_secs(10),
                idle: None,
            },
        })
    }

    /// Carries one local connection through its own tunnel until either side ends.
    pub async fn carry(&self, mut local: TcpStream) -> Result<End, ClientError> {
        let _ = local.set_nodelay(true);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let shared = TunnelShared::default();
        let result = match &self.tls {
            Some((connector, name)) => {
                let mut tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?;
                let leftover = self.handshake(&mut tls).await?;
                pump::run(
                    &mut tls,
                    &mut local,
                    &leftover,
                    Role::Client,
                    self.timers,
                    &shared,
                )
                .await
            }
            None => {
                let mut tcp = tcp;
                let leftover = self.handshake(&mut tcp).await?;
                pump::run(
                    &mut tcp,
                    &mut local,
                    &leftover,
                    Role::Client,
                    self.timers,
                    &shared,
                )
                .await
            }
        };
        result.map_err(broken)
    }

    /// Sends the upgrade request and checks the answer; returns bytes read past it.
    async fn handshake<S>(&self, s: &mut S) -> Result<Vec<u8>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: binary\r\nUser-Agent: gatehouse-tunnel\r\n\r\n",
            self.request_path
        );
        s.write_all(request.as_bytes())
            .await
            .map_err(ClientError::Connect)?;
        s.flush().await.map_err(ClientError::Connect)?;
        let mut buf = Vec::with_capacity(1024);
        let (status, len, accept) = loop {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.map_err(ClientError::Connect)?;
            if n == 0 {
                return Err(ClientError::Handshake(
                    "the gateway closed the connection".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let accept = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string());
                    break (resp.code.unwrap_or(0), len, accept);
                }
                Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
                Ok(httparse::Status::Partial) => {
                    return Err(ClientError::Handshake(
                        "the answer's head is too long".into(),
                    ));
                }
                Err(e) => return Err(ClientError::Handshake(e.to_string())),
            }
        };
        if status != 101 {
            return Err(ClientError::Refused(format!("HTTP {status}")));
        }
        if accept.as_deref() != Some(ws::accept_key(&key).as_str()) {
            return Err(ClientError::Handshake(
                "Sec-WebSocket-Accept does not match the key".into(),
            ));
        }
        Ok(buf.split_off(len))
    }
}

/// Accepts local connections until the listener fails, carrying each through its own tunnel.
pub async fn listen(client: Arc<TunnelClient>, listener: TcpListener) -> io::Result<()> {
    loop {
        let (local, peer) = listener.accept().await?;
        let client = client.clone();
        tokio::spawn(async move {
            match client.carry(local).await {
                Ok(end) => tracing::debug!(%peer, ?end, "tunnel ended"),
                Err(e) => tracing::warn!(%peer, error = %e, "tunnel failed"),
            }
        });
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
pub(crate) fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None if !authority.is_empty() => Some((authority.to_string(), default_port)),
        None => None,
    }
}

/// A TLS connector that checks servers as `trust` says.
pub fn tls_connector(trust: Trust<'_>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client_config(
        trust,
    )?)))
}

/// A TLS client configuration that checks servers as `trust` says (also used by the gateway's
/// link to its broker).
pub(crate) fn client_config(trust: Trust<'_>) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(io::Error::other(e)))?;
    let mut roots = rustls::RootCertStore::empty();
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::NoVerification(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let shown = path.display().to_string();
            let pem =
                std::fs::read(path).map_err(|e| ClientError::Ca(shown.clone(), e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> =
                rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ClientError::Ca(shown.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientError::Ca(shown, "no certificate in it".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Ca(shown.clone(), e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_parse_and_nonsense_is_refused() {
        let c =
            TunnelClient::new("ws://127.0.0.1:8080", "GT1.x.y", Trust::Insecure).expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8080));
        assert_eq!(c.request_path, "/tunnel?ticket=GT1.x.y");
        let c = TunnelClient::new("wss://[::1]/tunnel?x=1", "T", Trust::Insecure).expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("::1", 443));
        assert_eq!(c.request_path, "/tunnel?x=1&ticket=T");
        assert!(format!("{c:?}").contains("::1") && !format!("{c:?}").contains("ticket"));
        for bad in ["http://x", "ws://", "ws://host:port", "ws://[::1"] {
            assert!(
                TunnelClient::new(bad, "T", Trust::Insecure).is_err(),
                "{bad}"
            );
        }
        assert!(TunnelClient::new("ws://h", " ", Trust::Insecure).is_err());
    }
}
