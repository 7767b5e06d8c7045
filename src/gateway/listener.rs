//! The front door of the one port: accepts TCP, reads a PROXY protocol header (v1 or v2) from
//! trusted load balancers, completes TLS (or not, on the plain port), reads the first request head,
//! and sends the connection to a tunnel or to the HTTP backend. Two paths are the gateway's
//! own and never reach the backend: [`FORWARDS_PATH`] (a broker asks for a forwarded port) and
//! [`HEALTH_PATH`] (a load balancer asks whether this gateway is up).
//!
//! Every step up to the first request head runs in the connection's own task under the
//! handshake timeout; the number of open connections is capped. A console or API connection
//! ends when both sides have closed, or when one has and the other then stays silent for
//! [`AFTER_ONE_SIDE_ENDS`](super::pump::AFTER_ONE_SIDE_ENDS), so that a client that read its
//! answer and went quiet does not hold a connection for ever. The certificate comes from a
//! resolver that reloads, so a new certificate never drops open tunnels.
//!
//! The HTTP backend inside `gatehouse serve` is the console (actix-web) on a Unix socket in the
//! private folder. The real client address and whether it came over TLS travel in the name the
//! gateway binds its side of that socket to ([`Origin`]), so the console sees the true client
//! for its location rules and throttling, for every request on a kept-alive connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixSocket, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout_at};

use super::Gateway;
use super::tunnel::{self, Head, bare_response};
use crate::model::location::{self, ProxyError};

/// After a failed accept (out of file descriptors and the like), listeners wait this long
/// before they try again, instead of spinning on the error.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// A request head may be at most this long.
const MAX_HEAD: usize = 16 * 1024;

/// Where non-tunnel requests go.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The console and APIs of this process, on a Unix socket.
    Local(PathBuf),
    /// A broker (or flexVDI manager) elsewhere, over HTTP(S).
    Upstream(Arc<super::upstream::Upstream>),
    /// Nothing: a gateway without a broker answers 404.
    None,
}

/// The shared state of the listeners on the one port (TLS) and the plain port.
pub struct FrontDoor {
    pub gateway: Arc<Gateway>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub backend: Backend,
    limit: Arc<Semaphore>,
    pub connections: AtomicU64,
}

impl FrontDoor {
    pub fn new(
        gateway: Arc<Gateway>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        backend: Backend,
    ) -> Arc<FrontDoor> {
        let limit = Arc::new(Semaphore::new(gateway.settings.max_connections));
        Arc::new(FrontDoor {
            gateway,
            tls,
            backend,
            limit,
            connections: AtomicU64::new(0),
        })
    }

    /// Accepts connections until `stop` turns true. `secure`: the TLS port; else the plain
    /// port (for a TLS-terminating reverse proxy in front).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        secure: bool,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: the connection limit is reached");
                drop(tcp);
                continue;
            };
            // The connection moves, whole, to a worker thread's event loop.
            let tcp = match tcp.into_std() {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection lost before it was served");
                    continue;
                }
            };
            let front = self.clone();
            self.gateway.spawn_connection(move || async move {
                let Ok(tcp) = TcpStream::from_std(tcp) else {
                    return;
                };
                front.connections.fetch_add(1, Ordering::Relaxed);
                front.connection(tcp, peer, secure).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr, secure: bool) {
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.gateway.settings.handshake_timeout;
        // Each handshake step is boxed, so that its buffers are freed before the (long) life of
        // the connection: an idle tunnel keeps only what it needs.
        let (stream, client) =
            match Box::pin(timeout_at(deadline, self.proxy_header(tcp, peer))).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "connection refused");
                    return;
                }
                Err(_) => return,
            };
        match (&self.tls, secure) {
            (Some(acceptor), true) => match timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => self.stream(tls, client, true, deadline).await,
                Ok(Err(e)) => tracing::debug!(%client, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
            },
            _ => self.stream(stream, client, false, deadline).await,
        }
    }

    /// From a trusted proxy, a PROXY protocol header (v1 or v2) names the real client; from
    /// anyone else the header is not believed (and the connection fails as the garbage it then
    /// is). A trusted proxy may also send none: then it is the client.
    async fn proxy_header(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> io::Result<(Rewind<TcpStream>, SocketAddr)> {
        if !location::in_any(peer.ip(), &self.gateway.settings.trusted_proxies) {
            return Ok((Rewind::new(tcp, Vec::new()), peer));
        }
        let mut buf = Vec::with_capacity(256);
        loop {
            match location::parse_proxy(&buf) {
                Ok(p) => {
                    let rest = buf.split_off(p.consumed);
                    let client = match (p.local, p.source) {
                        (false, Some(source)) => source,
                        _ => peer,
                    };
                    return Ok((Rewind::new(tcp, rest), client));
                }
                Err(ProxyError::NotProxy) => return Ok((Rewind::new(tcp, buf), peer)),
                Err(ProxyError::Invalid(reason)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
                }
                Err(ProxyError::Incomplete { needed }) => {
                    read_more(&mut tcp, &mut buf, needed).await?;
                }
            }
        }
    }

    /// Reads the first request head and routes the connection.
    async fn stream<S>(&self, mut s: S, client: SocketAddr, secure: bool, deadline: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = Vec::with_capacity(2048);
        let head = match Box::pin(timeout_at(deadline, read_head(&mut s, &mut buf))).await {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::Closed)) | Err(_) => return,
            Ok(Err(HeadError::TooLarge)) => {
                let _ = s
                    .write_all(&bare_response("431 Request Header Fields Too Large", ""))
                    .await;
                return;
            }
            Ok(Err(HeadError::Malformed(reason))) => {
                tracing::debug!(%client, reason, "malformed request");
                let _ = s.write_all(&bare_response("400 Bad Request", "")).await;
                return;
            }
        };
        if head.is_tunnel() {
            let leftover = buf.split_off(head.len);
            drop(buf);
            tunnel::serve(&self.gateway, s, head, leftover, client).await;
            return;
        }
        if head.path == FORWARDS_PATH {
            self.forward_request(s, &head, buf, client, deadline).await;
            return;
        }
        if head.path == HEALTH_PATH {
            let (status, body) = match head.method.as_str() {
                "GET" | "HEAD" => (200, r#"{"status":"ok"}"#),
                _ => (405, r#"{"error":"method_not_allowed","message":"use GET"}"#),
            };
            let mut answer = json_response(status, body);
            if head.method == "HEAD" {
                answer.truncate(answer.len() - body.len());
            }
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
            return;
        }
        match &self.backend {
            Backend::Local(socket) => {
                let origin = Origin {
                    peer: client,
                    secure,
                };
                match connect_local(socket, &origin, self.gateway.settings.connect_timeout).await {
                    Ok(mut backend) => {
                        if backend.write_all(&buf).await.is_ok() {
                            let _ = super::pump::relay(
                                &mut s,
                                &mut backend,
                                super::pump::AFTER_ONE_SIDE_ENDS,
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the console does not answer on its socket");
                        let _ = s
                            .write_all(&bare_response("503 Service Unavailable", ""))
                            .await;
                    }
                }
            }
            Backend::Upstream(upstream) => {
                upstream
                    .forward(s, &head, buf, client, secure, deadline)
                    .await;
                return;
            }
            Backend::None => {
                let _ = s.write_all(&bare_response("404 Not Found", "")).await;
            }
        }
        let _ = s.shutdown().await;
    }
}

/// Where a broker asks a standalone gateway for a forwarded port.
pub const FORWARDS_PATH: &str = "/gateway/v1/forwards";
/// Where a load balancer (or an installer) asks whether this gateway is up: answered by the
/// gateway itself, whatever its backend, with `200 {"status":"ok"}` and nothing more.
pub const HEALTH_PATH: &str = "/gateway/v1/health";

/// A whole `Connection: close` answer with a JSON body.
fn json_response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl FrontDoor {
    async fn forward_request<S>(
        &self,
        mut s: S,
        head: &Head,
        mut buf: Vec<u8>,
        client: SocketAddr,
        deadline: Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        const MAX_BODY: usize = 8 * 1024;
        let length = head
            .header("content-length")
            .and_then(|l| l.trim().parse::<usize>().ok());
        let (status, body) = match (head.method.as_str(), length) {
            ("POST", Some(len)) if len <= MAX_BODY => {
                let mut body = buf.split_off(head.len);
                let read = timeout_at(deadline, async {
                    while body.len() < len {
                        let mut chunk = [0u8; 1024];
                        let n = s.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    Ok(())
                })
                .await;
                match read {
                    Ok(Ok(())) => {
                        super::forward::answer_request(&self.gateway, &body[..len], client.ip())
                            .await
                    }
                    _ => return,
                }
            }
            ("POST", _) => (
                400,
                r#"{"error":"bad_request","message":"a JSON body of at most 8 KiB with Content-Length is expected"}"#
                    .to_string(),
            ),
            _ => (
                405,
                r#"{"error":"method_not_allowed","message":"use POST"}"#.to_string(),
            ),
        };
        let _ = s.write_all(&json_response(status, &body)).await;
        let _ = s.shutdown().await;
    }
}

/// Reads at least `at_least` more bytes into `buf`, and whatever else has arrived. What follows
/// a PROXY header is handed on with the connection (`Rewind`), so taking more is safe, and a v1
/// header (whose length only its CRLF tells) is not read a byte at a time.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>, at_least: usize) -> io::Result<()> {
    let target = buf.len() + at_least;
    while buf.len() < target {
        let mut chunk = [0u8; 512];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

enum HeadError {
    Closed,
    TooLarge,
    Malformed(String),
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<Head, HeadError> {
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        let n = s.read_buf(buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        match Head::parse(buf) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Malformed(e)),
        }
    }
}

/// The client behind a connection to the console socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub peer: SocketAddr,
    /// The client came over TLS (the one port), not the plain port.
    pub secure: bool,
}

const ORIGIN_PREFIX: &str = "gatehouse-origin/";

impl Origin {
    /// The abstract socket name carrying this origin (unique per connection).
    fn socket_name(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "\0{ORIGIN_PREFIX}{}/{}/{}/{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            if self.secure { "tls" } else { "plain" },
            self.peer
        )
    }

    /// Reads an origin back from the abstract name the console sees as its peer.
    pub fn from_socket_name(name: &[u8]) -> Option<Origin> {
        let text = std::str::from_utf8(name).ok()?;
        let rest = text.strip_prefix(ORIGIN_PREFIX)?;
        let mut parts = rest.splitn(4, '/');
        let (_pid, _n, kind, peer) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some(Origin {
            peer: peer.parse().ok()?,
            secure: kind == "tls",
        })
    }

    /// The origin of a connection the console accepted on its socket.
    pub fn of(stream: &UnixStream) -> Option<Origin> {
        let addr = socket2::SockRef::from(stream).peer_addr().ok()?;
        Origin::from_socket_name(addr.as_abstract_namespace()?)
    }
}

/// Connects to the console socket from an abstract address that names the origin, without
/// blocking the thread: the socket is non-blocking before it connects. While the console's
/// backlog is full, it tries again, with growing pauses, for up to `patience`.
async fn connect_local(
    socket: &Path,
    origin: &Origin,
    patience: Duration,
) -> io::Result<UnixStream> {
    let give_up = Instant::now() + patience;
    let mut pause = Duration::from_millis(5);
    loop {
        let s = UnixSocket::new_stream()?;
        s.bind(origin.socket_name())?;
        match s.connect(socket).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            connected => return connected,
        }
    }
}

/// The console's socket lives in a private folder (mode 0700) made for this process: under
/// systemd's `RUNTIME_DIRECTORY` when set, else under the temporary folder. The folder is
/// removed when the returned guard drops.
pub fn console_socket_path() -> io::Result<(PathBuf, tempfile_dir::Dir)> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .filter(|p| p.as_os_str().len() < 60)
        .unwrap_or_else(std::env::temp_dir);
    tempfile_dir::remove_stale(&base);
    let dir = tempfile_dir::Dir::new_in(&base)?;
    Ok((dir.path().join("console.sock"), dir))
}

/// A private folder removed on drop (the console socket's fallback home).
pub mod tempfile_dir {
    use std::os::unix::fs::DirBuilderExt;
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    /// Removes the folders of Gatehouse processes that no longer run (killed without a
    /// chance to clean up).
    pub fn remove_stale(base: &Path) {
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gatehouse-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let mine = entry
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .ok();
            let owner_ok = mine.is_some_and(|uid| {
                std::fs::metadata("/proc/self")
                    .is_ok_and(|me| std::os::unix::fs::MetadataExt::uid(&me) == uid)
            });
            if owner_ok && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    impl Dir {
        pub fn new_in(base: &Path) -> std::io::Result<Dir> {
            let path = base.join(format!(
                "gatehouse-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::DirBuilder::new().mode(0o700).create(&path)?;
            Ok(Dir(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// Passed on, so that TLS writes its records in one system call instead of one each.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_through_socket_names() {
        for (peer, secure) in [("192.0.2.7:5123", true), ("[2001:db8::1]:443", false)] {
            let origin = Origin {
                peer: peer.parse().expect("addr"),
                secure,
            };
            let name = origin.socket_name();
            let back = Origin::from_socket_name(&name.as_bytes()[1..]).expect("parses");
            assert_eq!(back, origin);
            assert!(name.len() < 108);
        }
        assert_eq!(
            Origin::from_socket_name(b"something-else/1/2/tls/1.2.3.4:5"),
            None
        );
    }

    /// A console whose backlog is full does not stall the worker thread that connects to it:
    /// the connection waits on the event loop, gives up after its patience, and connects with
    /// its origin once there is room.
    #[test]
    fn a_full_console_backlog_does_not_block_the_thread() {
        use socket2::{Domain, SockAddr, Socket, Type};
        let dir = tempfile_dir::Dir::new_in(&std::env::temp_dir()).expect("folder");
        let path = dir.path().join("console.sock");
        // A console that accepts nothing yet, with the smallest backlog.
        let console = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        console
            .bind(&SockAddr::unix(&path).expect("address"))
            .expect("bind");
        console.listen(0).expect("listen");
        let mut waiting = Vec::new();
        loop {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("non-blocking");
            match s.connect(&SockAddr::unix(&path).expect("address")) {
                Ok(()) => waiting.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the backlog: {e}"),
            }
            assert!(waiting.len() < 100, "the backlog never fills");
        }
        let origin = Origin {
            peer: "192.0.2.7:5123".parse().expect("addr"),
            secure: true,
        };
        // On a thread of its own, so that a blocking connect fails the test instead of
        // hanging it; its runtime's time is paused, so the patience passes at once.
        let connect = || {
            let path = path.clone();
            {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .start_paused(true)
                        .build()
                        .expect("runtime");
                    let connected = runtime.block_on(async {
                        let stream = connect_local(&path, &origin, Duration::from_secs(10)).await?;
                        stream.into_std()
                    });
                    let _ = tx.send(connected);
                });
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("connect_local blocked its thread")
            }
        };
        let full = connect();
        assert_eq!(
            full.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        // Room again: the console takes the waiting ones.
        console.set_nonblocking(false).expect("blocking");
        for _ in &waiting {
            console.accept().expect("accept");
        }
        drop(waiting);
        let _client = connect().expect("connects once there is room");
        let (_accepted, peer) = console.accept().expect("accept");
        let seen = peer
            .as_abstract_namespace()
            .and_then(Origin::from_socket_name);
        assert_eq!(seen, Some(origin), "the console sees the client's origin");
    }
}
