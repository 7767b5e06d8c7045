//! The gateway end to end, with the real binary and real sockets: `gatehouse gateway` and
//! `gatehouse tunnel` carrying streams intact both ways (plain and TLS), half-closes from
//! either side, an independent WebSocket client (tungstenite) and hand-written frames, many
//! tunnels at once, a reconnect after the network drops, every refusal with nothing reaching
//! the desktop, keepalive and the pong timeout, nginx and Apache in front, and the appliance
//! (`gatehouse serve`): console and tunnels on one port, tunnels closed when the broker
//! releases the desktop, and the PROXY v2 header believed from trusted proxies only
//! (v1 behind nginx: `balancer.rs`).
//!
//! The helpers at the top: [`Target`] (an echo "desktop" that counts its connections),
//! [`Issuer`] (a broker data folder: public key and tickets), [`Gateway`] and [`Proc`]
//! (processes whose output lines are awaited as they come), transfers that compare SHA-256.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse::broker::Ticket;
use gatehouse::model::Protocol;
use gatehouse::model::desktop::{Desktop, DesktopInput};
use gatehouse::model::directory::Security;
use gatehouse::model::plan::{ProtocolPlan, ProtocolSetting};
use gatehouse::model::policy::Policy;
use gatehouse::store::Store;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::common::{self, Server};
use crate::proxies::{self, Proxy};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

/// How long to wait for a process line, a port or a counter before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(60);
/// How long one transfer may take before the test fails (100 MB through debug builds).
const TRANSFER: Duration = Duration::from_secs(600);
pub(crate) const MB: usize = 1_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A port that was free a moment ago, for listeners that cannot report the port they got
/// (the gateway's plain port, nginx).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---- Processes --------------------------------------------------------------------------------

/// A running `gatehouse` command; its stdout and stderr lines are collected as they come and
/// can be awaited. Killed on drop.
pub(crate) struct Proc {
    what: String,
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    changed: watch::Receiver<usize>,
}

impl Proc {
    pub(crate) fn spawn(what: &str, args: &[&str]) -> Proc {
        Proc::spawn_program(what, common::bin(), args)
    }

    /// The same for another copy of the binary (an installed one).
    pub(crate) fn spawn_program(what: &str, program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatehouse starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for pipe in [out, err] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lock(&lines).push(strip_ansi(&line));
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        Proc {
            what: what.to_string(),
            child,
            lines,
            changed,
        }
    }

    /// How many lines so far: wait for lines after this mark.
    pub(crate) fn mark(&self) -> usize {
        lock(&self.lines).len()
    }

    pub(crate) fn log(&self) -> String {
        lock(&self.lines).join("\n")
    }

    fn find_from(&self, from: usize, pred: &dyn Fn(&str) -> bool) -> Option<String> {
        lock(&self.lines)
            .iter()
            .skip(from)
            .find(|l| pred(l))
            .cloned()
    }

    /// The first line after `from` matching `pred`, waiting for it to come.
    pub(crate) async fn wait_line(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let mut changed = self.changed.clone();
        let found = timeout(WAIT, async {
            loop {
                changed.mark_unchanged();
                if let Some(line) = self.find_from(from, &pred) {
                    return Some(line);
                }
                if changed.changed().await.is_err() {
                    // Both pipes closed: the process ended.
                    return self.find_from(from, &pred);
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "{}: no line {what} within {WAIT:?}; its output:\n{}",
                self.what,
                self.log()
            ),
        }
    }

    /// SIGKILL: the process and its sockets vanish at once.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker installation's data folder: its public key for gateways, and tickets signed with
/// its key (`gatehouse ticket issue`).
pub(crate) struct Issuer {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub(crate) public_key: PathBuf,
}

impl Issuer {
    pub(crate) fn new() -> Issuer {
        let (dir, data) = common::fresh_data();
        let public_key = dir.path().join("broker-key.pem");
        let (ok, out, err) = common::run(&[
            "broker-key",
            "export",
            "--data",
            data.to_str().expect("utf8"),
            "--out",
            public_key.to_str().expect("utf8"),
        ]);
        assert!(ok, "broker-key export: {out}{err}");
        Issuer {
            _dir: dir,
            data,
            public_key,
        }
    }

    /// A ticket for `target`; `extra` are more `ticket issue` flags (`--ttl`, `--client-addr`).
    pub(crate) fn ticket(&self, target: SocketAddr, extra: &[&str]) -> String {
        let target = target.to_string();
        let mut args = vec![
            "ticket",
            "issue",
            "--data",
            self.data.to_str().expect("utf8"),
            "--target",
            &target,
            "--ttl",
            "600",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = common::run(&args);
        assert!(ok, "ticket issue: {err}");
        let ticket = out.trim().to_string();
        assert!(ticket.starts_with("GT1."), "{ticket}");
        ticket
    }

    /// A ticket signed with this installation's key that expired a minute ago (the CLI only
    /// issues tickets valid from now on).
    fn expired_ticket(&self, target: SocketAddr) -> String {
        let store = Store::open(&self.data).expect("store");
        let key = gatehouse::broker::seed(&store).expect("broker key");
        drop(store);
        Ticket {
            session: "expired-session".into(),
            user: "operator".into(),
            host: target.ip().to_string(),
            port: target.port(),
            client: None,
            expires: chrono::Utc::now().timestamp() - 60,
        }
        .sign(&key)
    }
}

/// How most tests here begin: a gateway that lets tunnels reach any unprivileged port (with
/// `extra` flags), one echo target, and a ticket for it.
pub(crate) struct OneTarget {
    pub(crate) issuer: Issuer,
    pub(crate) target: Target,
    pub(crate) gw: Gateway,
    pub(crate) ticket: String,
}

impl OneTarget {
    pub(crate) async fn start(extra: &[&str]) -> OneTarget {
        common::install_crypto();
        let issuer = Issuer::new();
        let target = Target::start().await;
        let mut args = vec!["--allowed-ports", "1024-65535"];
        args.extend_from_slice(extra);
        let gw = Gateway::start(&issuer, &args).await;
        let ticket = issuer.ticket(target.addr, &[]);
        OneTarget {
            issuer,
            target,
            gw,
            ticket,
        }
    }
}

/// A running `gatehouse gateway` with a certificate written for the test (to pass as `--ca`).
pub(crate) struct Gateway {
    pub(crate) proc: Proc,
    pub(crate) tls: SocketAddr,
    pub(crate) plain: SocketAddr,
    pub(crate) cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway checking `issuer`'s tickets; `extra` are more flags. Waits for its
    /// "Gatehouse gateway:" line.
    pub(crate) async fn start(issuer: &Issuer, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = gatehouse::tls::generate_self_signed(&[]).expect("certificate");
        let cert = dir.path().join("gateway.crt");
        let key = dir.path().join("gateway.key");
        std::fs::write(&cert, &pem.cert_chain_pem).expect("write cert");
        std::fs::write(&key, &pem.key_pem).expect("write key");
        let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let plain_arg = plain.to_string();
        let mut args = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--plain-listen",
            &plain_arg,
            "--broker-key",
            issuer.public_key.to_str().expect("utf8"),
            "--cert",
            cert.to_str().expect("utf8"),
            "--key",
            key.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("gatehouse gateway", &args);
        let line = proc
            .wait_line(0, "\"Gatehouse gateway: …\"", |l| {
                l.starts_with("Gatehouse gateway: ")
            })
            .await;
        let tls = line
            .trim_start_matches("Gatehouse gateway: wss://")
            .trim_end_matches("/tunnel")
            .parse()
            .unwrap_or_else(|_| panic!("an address in {line:?}"));
        Gateway {
            proc,
            tls,
            plain,
            cert,
            _dir: dir,
        }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/tunnel", self.plain)
    }

    pub(crate) fn wss_url(&self) -> String {
        format!("wss://{}/tunnel", self.tls)
    }

    /// Waits for the gateway's first line about a closed tunnel; returns it.
    async fn tunnel_closed(&self) -> String {
        self.proc
            .wait_line(0, "\"tunnel closed\"", |l| l.contains("tunnel closed"))
            .await
    }

    /// Waits for the gateway's line about a refused tunnel after `from`; returns it.
    async fn refusal_after(&self, from: usize) -> String {
        self.proc
            .wait_line(from, "\"tunnel refused\"", |l| l.contains("tunnel refused"))
            .await
    }
}

/// Runs `gatehouse tunnel` and waits for the address it accepts native clients on.
pub(crate) async fn start_tunnel(
    gateway_url: &str,
    ticket: &str,
    trust: &[&str],
) -> (Proc, SocketAddr) {
    let mut args = vec![
        "tunnel",
        "--gateway",
        gateway_url,
        "--ticket",
        ticket,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(trust);
    let proc = Proc::spawn("gatehouse tunnel", &args);
    let line = proc
        .wait_line(0, "\"Gatehouse tunnel: …\"", |l| {
            l.starts_with("Gatehouse tunnel: connect your client to ")
        })
        .await;
    let addr = line
        .trim_start_matches("Gatehouse tunnel: connect your client to ")
        .parse()
        .unwrap_or_else(|_| panic!("an address in {line:?}"));
    (proc, addr)
}

// ---- The desktop --------------------------------------------------------------------------------

/// An echo "desktop": every connection gets its bytes back and, after the client's half-close,
/// the end of the stream. Counts the connections it accepted and the ones that ended.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    accepted: watch::Receiver<Vec<SocketAddr>>,
    ended: watch::Receiver<usize>,
}

impl Target {
    pub(crate) async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (accepted_tx, accepted) = watch::channel(Vec::new());
        let (ended_tx, ended) = watch::channel(0usize);
        let ended_tx = Arc::new(ended_tx);
        tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                accepted_tx.send_modify(|v| v.push(peer));
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    echo(conn).await;
                    ended_tx.send_modify(|n| *n += 1);
                });
            }
        });
        Target {
            addr,
            accepted,
            ended,
        }
    }

    pub(crate) async fn wait_ended(&self, n: usize) {
        let mut ended = self.ended.clone();
        let waited = timeout(WAIT, ended.wait_for(|e| *e >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the target saw {} of {n} connections end",
            *self.ended.borrow()
        );
    }

    /// How many connections reached the target before a probe made now: the probe is
    /// accepted after everything already queued, so nothing in flight is missed.
    pub(crate) async fn connections_before_probe(&self) -> usize {
        let probe = TcpStream::connect(self.addr).await.expect("probe");
        let me = probe.local_addr().expect("probe addr");
        let mut accepted = self.accepted.clone();
        let seen = timeout(WAIT, accepted.wait_for(|v| v.contains(&me))).await;
        assert!(matches!(seen, Ok(Ok(_))), "the probe was not accepted");
        let list = self.accepted.borrow();
        list.iter().position(|p| *p == me).expect("probe listed")
    }
}

async fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => {
                let _ = conn.shutdown().await;
                return;
            }
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ---- Transfers ----------------------------------------------------------------------------------

/// Sends `len` bytes through `conn`, half-closes, reads everything the far end sends back
/// until it closes, and checks it is the same stream (length and SHA-256).
pub(crate) async fn echo_check<S>(conn: S, len: usize, what: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(conn);
    let send = async move {
        let mut block = vec![0u8; 1 << 20];
        rand::rng().fill_bytes(&mut block);
        let mut hash = Sha256::new();
        let (mut sent, mut chunk) = (0usize, 0u64);
        while sent < len {
            let n = (len - sent).min(block.len());
            // Every chunk differs, so a repeated or reordered chunk changes the digest.
            if n >= 8 {
                block[..8].copy_from_slice(&chunk.to_le_bytes());
            }
            hash.update(&block[..n]);
            wr.write_all(&block[..n])
                .await
                .unwrap_or_else(|e| panic!("{what}: write after {sent} bytes: {e}"));
            sent += n;
            chunk += 1;
        }
        wr.shutdown()
            .await
            .unwrap_or_else(|e| panic!("{what}: half-close: {e}"));
        hash.finalize()
    };
    let receive = async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut hash = Sha256::new();
        let mut got = 0usize;
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n;
                }
                Err(e) => panic!("{what}: read after {got} bytes: {e}"),
            }
        }
        (got, hash.finalize())
    };
    let (sent, (got, received)) = timeout(TRANSFER, async { tokio::join!(send, receive) })
        .await
        .unwrap_or_else(|_| panic!("{what}: the transfer of {len} bytes did not finish"));
    assert_eq!(got, len, "{what}: bytes back");
    assert_eq!(sent, received, "{what}: SHA-256 of the bytes back");
}

pub(crate) async fn echo_check_at(addr: SocketAddr, len: usize, what: &str) {
    let conn = TcpStream::connect(addr).await.expect("connect");
    echo_check(conn, len, what).await;
}

/// Connects from a given loopback source address (127.0.0.2 plays another host).
pub(crate) async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

// ---- Raw HTTP and WebSocket ---------------------------------------------------------------------

/// A WebSocket upgrade request head for `path` with `extra` header lines.
pub(crate) fn upgrade_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads a response head; returns the status and the bytes read past the head.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line in {head:?}"));
            return (status, buf.split_off(end + 4));
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap_or(0);
        if n == 0 {
            // Closed without an answer: reported as 0.
            return (0, Vec::new());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes; true when it did (EOF or reset) within the wait.
pub(crate) async fn closes<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut chunk = [0u8; 4096];
    timeout(WAIT, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends an upgrade request on `conn`; returns the answer's status.
pub(crate) async fn upgrade_answer(conn: &mut TcpStream, path: &str, extra: &str) -> u16 {
    conn.write_all(upgrade_head(path, extra).as_bytes())
        .await
        .expect("send the request");
    read_head(conn).await.0
}

/// As [`upgrade_answer`], checking that the gateway closes the connection after a refusal.
pub(crate) async fn upgrade_status(mut conn: TcpStream, path: &str, extra: &str) -> u16 {
    let status = upgrade_answer(&mut conn, path, extra).await;
    if status != 101 {
        assert!(
            closes(&mut conn).await,
            "the connection stays open after {status}"
        );
    }
    status
}

/// One server frame (unmasked): opcode and payload; `None` when the connection ended.
async fn next_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let (op, short) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
            let (len, at) = match short {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&buf[2..10]);
                    (usize::try_from(u64::from_be_bytes(n)).expect("length"), 10)
                }
                126 | 127 => (usize::MAX, 0),
                n => (n, 2),
            };
            if len != usize::MAX && buf.len() >= at + len {
                let payload = buf[at..at + len].to_vec();
                buf.drain(..at + len);
                return Some((op, payload));
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A client frame (masked, as RFC 6455 requires of clients).
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut mask = [0u8; 4];
    rand::rng().fill_bytes(&mut mask);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A WebSocket client of another implementation (tungstenite) on `conn`, offering the
/// `binary` subprotocol; checks the gateway agreed to it.
pub(crate) async fn tungstenite_client(
    conn: TcpStream,
    url: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("binary"));
    let (ws, response) = timeout(WAIT, tokio_tungstenite::client_async(request, conn))
        .await
        .expect("a handshake answer")
        .expect("the gateway accepts the tunnel");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("binary"),
        "the subprotocol offered is echoed"
    );
    ws
}

/// Sends `data` as binary messages, then a close frame (the half-close), and collects what
/// comes back until the gateway's close frame.
async fn tungstenite_echo(ws: tokio_tungstenite::WebSocketStream<TcpStream>, data: &[u8]) {
    let (mut sink, mut stream) = ws.split();
    let send = async move {
        for part in data.chunks(64 * 1024) {
            sink.send(Message::Binary(part.to_vec().into()))
                .await
                .expect("send");
        }
        sink.send(Message::Close(None)).await.expect("close");
    };
    let receive = async move {
        let mut back = Vec::new();
        let mut closed = false;
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => back.extend_from_slice(&b),
                Ok(Message::Close(_)) => closed = true,
                Ok(_) => {}
                Err(e) => {
                    assert!(closed, "error before the close frame: {e}");
                    break;
                }
            }
        }
        (back, closed)
    };
    let ((), (back, closed)) = timeout(TRANSFER, async { tokio::join!(send, receive) })
        .await
        .expect("the exchange finished");
    assert!(closed, "the gateway ended with a close frame");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back unchanged");
}

// ---- Tests against `gatehouse gateway` --------------------------------------------------------

#[tokio::test]
async fn tunnels_carry_streams_intact_both_ways_over_ws_and_wss() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&[]).await;
    let cert = gw.cert.to_str().expect("utf8").to_string();
    let (_plain, plain_at) = start_tunnel(&gw.ws_url(), &ticket, &[]).await;
    let (_tls, tls_at) = start_tunnel(&gw.wss_url(), &ticket, &["--ca", &cert]).await;

    let mut tunnels = 0;
    for len in [1, 64 * 1024, 10 * MB, 100 * MB] {
        echo_check_at(plain_at, len, &format!("ws:// {len} bytes")).await;
        echo_check_at(tls_at, len, &format!("wss:// --ca {len} bytes")).await;
        tunnels += 2;
    }
    let (_insecure, insecure_at) = start_tunnel(&gw.wss_url(), &ticket, &["--insecure"]).await;
    echo_check_at(insecure_at, 64 * 1024, "wss:// --insecure").await;
    tunnels += 1;
    target.wait_ended(tunnels).await;
    assert_eq!(target.connections_before_probe().await, tunnels);

    // A CA that did not sign the gateway's certificate: no tunnel, nothing reaches the target.
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = dir.path().join("other.crt");
    let other = gatehouse::tls::generate_self_signed(&[]).expect("certificate");
    std::fs::write(&other_ca, &other.cert_chain_pem).expect("write");
    let (wrong, wrong_at) = start_tunnel(
        &gw.wss_url(),
        &ticket,
        &["--ca", other_ca.to_str().expect("utf8")],
    )
    .await;
    let mut conn = TcpStream::connect(wrong_at).await.expect("connect");
    let _ = conn.write_all(b"hello").await;
    assert!(closes(&mut conn).await, "the local connection is dropped");
    wrong
        .wait_line(0, "about the failed TLS", |l| l.contains("tunnel failed"))
        .await;
    assert_eq!(target.connections_before_probe().await, tunnels + 1);
}

/// `count` round trips of a small numbered message through `addr`, each checked.
async fn round_trips(addr: SocketAddr, count: u32, what: &str) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut back = [0u8; 64];
    for i in 0..count {
        let mut msg = [b'p'; 64];
        msg[..4].copy_from_slice(&i.to_le_bytes());
        conn.write_all(&msg).await.expect("write");
        timeout(TRANSFER, conn.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer to message {i}"))
            .unwrap_or_else(|e| panic!("{what}: read of message {i}: {e}"));
        assert_eq!(back, msg, "{what}: message {i} came back changed");
    }
}

/// Busy polling (in the gateway and in its client) changes when their threads sleep, never
/// what arrives: streams and many small round trips, over ws, wss and a forwarded port.
#[tokio::test]
async fn with_busy_polling_streams_and_small_round_trips_arrive_intact() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let busy = ["--busy-poll", "200"];
    let (gw, port) = forwarding_gateway(&issuer, "600", &busy).await;
    let ticket = issuer.ticket(target.addr, &["--client-addr", "127.0.0.1"]);
    let cert = gw.cert.to_str().expect("utf8").to_string();
    let (_plain, plain_at) = start_tunnel(&gw.ws_url(), &ticket, &busy).await;
    let (_tls, tls_at) =
        start_tunnel(&gw.wss_url(), &ticket, &["--ca", &cert, busy[0], busy[1]]).await;
    let (status, answer) = request_forward(&gw, &ticket).await;
    assert_eq!(status, 200, "{answer}");
    let forwarded = SocketAddr::from(([127, 0, 0, 1], port));

    let mut connections = 0;
    for (at, what) in [
        (plain_at, "ws"),
        (tls_at, "wss"),
        (forwarded, "forwarded port"),
    ] {
        for len in [1, 64 * 1024, 10 * MB] {
            echo_check_at(at, len, &format!("{what}, busy polling, {len} bytes")).await;
        }
        round_trips(at, 1000, what).await;
        connections += 4;
    }
    target.wait_ended(connections).await;

    // A window over a second is refused with the flag's name.
    let refused = Command::new(common::bin())
        .args([
            "gateway",
            "--broker-key",
            "none.pem",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--busy-poll", "2000000"])
        .output()
        .expect("gatehouse runs");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--busy-poll") && err.contains("2000000"),
        "{err}"
    );
}

#[tokio::test]
async fn an_independent_websocket_client_gets_the_binary_subprotocol_and_its_bytes() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&[]).await;
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let ws = tungstenite_client(conn, &format!("{}?ticket={ticket}", gw.ws_url())).await;
    let mut data = vec![0u8; 3 * MB + 17];
    rand::rng().fill_bytes(&mut data);
    tungstenite_echo(ws, &data).await;
    target.wait_ended(1).await;
    let closed = gw.tunnel_closed().await;
    assert!(closed.contains("end=Closed"), "{closed}");
    assert!(
        closed.contains(&format!("up={}", data.len()))
            && closed.contains(&format!("down={}", data.len())),
        "{closed}"
    );
}

#[tokio::test]
async fn fifty_tunnels_at_once_all_arrive_intact() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&[]).await;
    let (_tunnel, at) = start_tunnel(&gw.ws_url(), &ticket, &[]).await;
    let names: Vec<String> = (0..50).map(|i| format!("tunnel {i}")).collect();
    // Connect all first, so that all fifty are open at the same time.
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(TcpStream::connect(at).await.expect("connect"));
    }
    let transfers = conns
        .into_iter()
        .zip(&names)
        .map(|(conn, name)| echo_check(conn, 256 * 1024 + 1, name));
    futures_util::future::join_all(transfers).await;
    target.wait_ended(50).await;
    assert_eq!(target.connections_before_probe().await, 50);
}

#[tokio::test]
async fn a_new_tunnel_with_the_same_ticket_works_after_the_network_dropped() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&[]).await;
    let (mut first, at) = start_tunnel(&gw.ws_url(), &ticket, &[]).await;

    // Mid-stream: bytes went through and came back, the stream is still open.
    let mut conn = TcpStream::connect(at).await.expect("connect");
    let mut data = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut data);
    conn.write_all(&data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    timeout(WAIT, conn.read_exact(&mut back))
        .await
        .expect("echo")
        .expect("read");
    assert!(back == data);
    let opened = gw
        .proc
        .wait_line(0, "\"tunnel opened\"", |l| l.contains("tunnel opened"))
        .await;
    assert!(opened.contains("client=127.0.0.1"), "{opened}");

    // The network drops: the tunnel client dies with its sockets.
    first.kill();
    assert!(closes(&mut conn).await);
    let ended = gw
        .proc
        .wait_line(0, "about the first tunnel ending", |l| {
            l.contains("tunnel closed") || l.contains("tunnel failed")
        })
        .await;
    assert!(
        ended.contains(&format!("target={}", target.addr)),
        "{ended}"
    );
    target.wait_ended(1).await;

    // The same, unexpired ticket opens a new tunnel.
    let (_second, at) = start_tunnel(&gw.ws_url(), &ticket, &[]).await;
    echo_check_at(at, 10 * MB, "after the reconnect").await;
    target.wait_ended(2).await;
    assert_eq!(target.connections_before_probe().await, 2);
}

#[tokio::test]
async fn refused_tunnels_get_403_and_nothing_reaches_any_desktop() {
    common::install_crypto();
    let issuer = Issuer::new();
    let other_broker = Issuer::new();
    let target = Target::start().await;
    let elsewhere = Target::start().await;
    let allowed = target.addr.port().to_string();
    let gw = Gateway::start(&issuer, &["--allowed-ports", &allowed]).await;

    let good = issuer.ticket(target.addr, &[]);
    // Flip one character in the middle of the signed payload.
    let altered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let payload = &mut parts[1];
        let at = payload.len() / 2;
        let flipped = if &payload[at..=at] == "A" { "B" } else { "A" };
        payload.replace_range(at..=at, flipped);
        parts.join(".")
    };
    let forged = {
        let mut random = [0u8; 48];
        rand::rng().fill_bytes(&mut random);
        hex::encode(random)
    };
    let foreign = other_broker.ticket(target.addr, &[]);
    let wrong_port = issuer.ticket(elsewhere.addr, &[]);
    let other_client = issuer.ticket(target.addr, &["--client-addr", "192.0.2.1"]);
    let expired = issuer.expired_ticket(target.addr);

    let cases: Vec<(&str, String, String)> = vec![
        ("no ticket", "/tunnel".into(), "reason=no ticket".into()),
        (
            "an empty ticket",
            "/tunnel?ticket=".into(),
            "reason=no ticket".into(),
        ),
        (
            "random text",
            format!("/tunnel?ticket={forged}"),
            "reason=the ticket is malformed".into(),
        ),
        (
            "an altered payload",
            format!("/tunnel?ticket={altered}"),
            "reason=the ticket's signature is not the broker's".into(),
        ),
        (
            "another broker's ticket",
            format!("/tunnel?ticket={foreign}"),
            "reason=the ticket's signature is not the broker's".into(),
        ),
        (
            "an expired ticket",
            format!("/tunnel?ticket={expired}"),
            "reason=the ticket expired".into(),
        ),
        (
            "a port outside the allowed ones",
            format!("/tunnel?ticket={wrong_port}"),
            format!(
                "reason=port {} is outside the allowed ports",
                elsewhere.addr.port()
            ),
        ),
        (
            "another target than the ticket's",
            format!("/tunnel?ticket={good}&target={}", elsewhere.addr),
            format!(
                "reason=the request names target {}, the ticket is for {}",
                elsewhere.addr, target.addr
            ),
        ),
        (
            "another client than the ticket's",
            format!("/tunnel?ticket={other_client}"),
            "reason=client 127.0.0.1 is not the ticket's client 192.0.2.1".into(),
        ),
    ];
    for (what, path, reason) in &cases {
        for url in [gw.plain, gw.tls] {
            let mark = gw.proc.mark();
            let conn = TcpStream::connect(url).await.expect("connect");
            let status = if url == gw.tls {
                let tls = tls_connect(conn).await;
                tls_upgrade_status(tls, path).await
            } else {
                upgrade_status(conn, path, "").await
            };
            assert_eq!(status, 403, "{what}");
            let line = gw.refusal_after(mark).await;
            assert!(line.contains(reason.as_str()), "{what}: {line}");
            let ticket = path
                .split_once("ticket=")
                .map(|(_, t)| t.split('&').next().unwrap_or_default())
                .unwrap_or_default();
            assert!(
                ticket.is_empty() || !line.contains(ticket),
                "a ticket must never be logged: {line}"
            );
        }
    }
    assert_eq!(target.connections_before_probe().await, 0);
    assert_eq!(elsewhere.connections_before_probe().await, 0);

    // The good ticket, for contrast: the only connection the target ever saw.
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let ws = tungstenite_client(conn, &format!("{}?ticket={good}", gw.ws_url())).await;
    tungstenite_echo(ws, b"the one that was let in").await;
    assert_eq!(target.connections_before_probe().await, 2);
    assert_eq!(elsewhere.connections_before_probe().await, 1);
}

#[tokio::test]
async fn keepalive_closes_a_client_that_never_answers_pings_and_keeps_one_that_does() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&["--keepalive", "1", "--pong-timeout", "1"]).await;

    // Raw frames: read what the gateway sends, never answer.
    let mut conn = TcpStream::connect(gw.plain).await.expect("connect");
    conn.write_all(upgrade_head(&format!("/tunnel?ticket={ticket}"), "").as_bytes())
        .await
        .expect("request");
    let (status, mut buf) = read_head(&mut conn).await;
    assert_eq!(status, 101);
    let (pings, close) = timeout(Duration::from_secs(20), async {
        let (mut pings, mut close) = (0, false);
        while let Some((op, _)) = next_frame(&mut conn, &mut buf).await {
            match op {
                0x9 => pings += 1,
                0x8 => close = true,
                _ => {}
            }
        }
        (pings, close)
    })
    .await
    .expect("the gateway closes a client that does not answer its pings");
    assert!(pings >= 1, "pings seen: {pings}");
    assert!(close, "a close frame before the end");
    let line = gw.tunnel_closed().await;
    assert!(line.contains("end=PongTimeout"), "{line}");
    target.wait_ended(1).await;

    // tungstenite answers every ping: still open after three of them, and carrying data.
    let mark = gw.proc.mark();
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let mut ws = tungstenite_client(conn, &format!("{}?ticket={ticket}", gw.ws_url())).await;
    let pings = timeout(WAIT, async {
        let mut pings = 0;
        while pings < 3 {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(other)) => panic!("after {pings} pings: {other:?}"),
                Some(Err(e)) => panic!("after {pings} pings: {e}"),
                None => panic!("closed after {pings} pings"),
            }
        }
        pings
    })
    .await
    .expect("three pings");
    assert_eq!(pings, 3);
    ws.send(Message::Binary(b"still here".to_vec().into()))
        .await
        .expect("send");
    let back = timeout(WAIT, async {
        let mut back = Vec::new();
        while back.len() < 10 {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => back.extend_from_slice(&b),
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("the tunnel ended: {other:?}"),
            }
        }
        back
    })
    .await
    .expect("the echo");
    assert_eq!(back, b"still here");
    assert!(
        gw.proc
            .find_from(mark, &|l| l.contains("tunnel closed"))
            .is_none(),
        "{}",
        gw.proc.log()
    );
    assert_eq!(target.connections_before_probe().await, 2);
}

#[tokio::test]
async fn a_half_closed_tunnel_stays_open_while_the_desktop_still_answers() {
    common::install_crypto();
    let issuer = Issuer::new();
    // A desktop that reads the whole question, then answers only when the test says so.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let desktop = listener.local_addr().expect("addr");
    let (question_tx, question_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut question = Vec::new();
        conn.read_to_end(&mut question).await.expect("read");
        let _ = question_tx.send(question);
        if go_rx.await.is_ok() {
            conn.write_all(b"the answer").await.expect("write");
            conn.shutdown().await.expect("shutdown");
        }
    });
    let gw = Gateway::start(
        &issuer,
        &[
            "--allowed-ports",
            "1024-65535",
            "--keepalive",
            "1",
            "--pong-timeout",
            "1",
        ],
    )
    .await;
    let ticket = issuer.ticket(desktop, &[]);
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let mut ws = tungstenite_client(conn, &format!("{}?ticket={ticket}", gw.ws_url())).await;
    ws.send(Message::Binary(b"the question".to_vec().into()))
        .await
        .expect("send");
    // The client is done sending: its close frame reaches the desktop as the end of the stream.
    ws.send(Message::Close(None)).await.expect("close");
    let question = timeout(WAIT, question_rx)
        .await
        .expect("the desktop saw the end of the question")
        .expect("question");
    assert_eq!(question, b"the question");

    // The client sent its close frame and, as RFC 6455 allows, answers no more pings; the
    // desktop is still working on its answer. The tunnel must wait for it.
    timeout(WAIT, async {
        let mut pings = 0;
        while pings < 3 {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!(
                    "after {pings} pings, before the desktop answered: {other:?}\n{}",
                    gw.proc.log()
                ),
            }
        }
    })
    .await
    .expect("three pings");
    let _ = go_tx.send(());
    let (answer, closed) = timeout(WAIT, async {
        let (mut answer, mut closed) = (Vec::new(), false);
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) => answer.extend_from_slice(&b),
                Ok(Message::Close(_)) => closed = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (answer, closed)
    })
    .await
    .expect("the answer and the end");
    assert_eq!(answer, b"the answer");
    assert!(closed, "the gateway ends with its close frame");
    let line = gw.tunnel_closed().await;
    assert!(line.contains("end=Closed"), "{line}");
}

#[tokio::test]
async fn hand_written_frames_early_data_fragments_split_headers_and_a_client_ping() {
    let OneTarget {
        target, gw, ticket, ..
    } = OneTarget::start(&[]).await;
    let mut conn = TcpStream::connect(gw.plain).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");

    // The request and the first frames in one write, before any answer: a fragmented message
    // and a ping in between its fragments.
    let mut first = upgrade_head(&format!("/tunnel?ticket={ticket}"), "").into_bytes();
    first.extend(client_frame(0x2, false, b"early "));
    first.extend(client_frame(0x9, true, b"are you there"));
    first.extend(client_frame(0x0, true, b"bytes"));
    conn.write_all(&first).await.expect("write");
    let (status, mut buf) = read_head(&mut conn).await;
    assert_eq!(status, 101);
    let mut data = Vec::new();
    let mut pong = None;
    while data.len() < 11 || pong.is_none() {
        let (op, payload) = timeout(WAIT, next_frame(&mut conn, &mut buf))
            .await
            .expect("a frame")
            .expect("the tunnel is open");
        match op {
            0x2 | 0x0 => data.extend(payload),
            0xA => pong = Some(payload),
            other => panic!("opcode {other:#x}"),
        }
    }
    assert_eq!(data, b"early bytes");
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));

    // A frame with a 16-bit length, written one byte at a time.
    let payload: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
    for byte in client_frame(0x2, true, &payload) {
        conn.write_all(&[byte]).await.expect("write");
    }
    let mut back = Vec::new();
    while back.len() < payload.len() {
        let (op, part) = timeout(WAIT, next_frame(&mut conn, &mut buf))
            .await
            .expect("a frame")
            .expect("the tunnel is open");
        assert_eq!(op, 0x2);
        back.extend(part);
    }
    assert_eq!(back, payload);

    // Close: the gateway answers with its own close frame once the desktop is done, then ends.
    conn.write_all(&client_frame(0x8, true, &1000u16.to_be_bytes()))
        .await
        .expect("close");
    let (op, code) = timeout(WAIT, next_frame(&mut conn, &mut buf))
        .await
        .expect("a frame")
        .expect("the close frame");
    assert_eq!((op, code), (0x8, 1000u16.to_be_bytes().to_vec()));
    assert!(
        timeout(WAIT, next_frame(&mut conn, &mut buf))
            .await
            .expect("the end")
            .is_none()
    );
    target.wait_ended(1).await;
}

#[tokio::test]
async fn a_desktop_that_half_closes_first_still_receives_everything() {
    common::install_crypto();
    let issuer = Issuer::new();
    // A desktop that greets, closes its sending side, then reads the client's upload.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let desktop = listener.local_addr().expect("addr");
    let (upload_tx, upload_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        conn.write_all(b"banner").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n;
                }
            }
        }
        let _ = upload_tx.send((got, hash.finalize()));
    });
    let gw = Gateway::start(&issuer, &["--allowed-ports", "1024-65535"]).await;
    let ticket = issuer.ticket(desktop, &[]);
    let (_tunnel, at) = start_tunnel(&gw.ws_url(), &ticket, &[]).await;
    let mut conn = TcpStream::connect(at).await.expect("connect");
    let mut banner = Vec::new();
    timeout(WAIT, conn.read_to_end(&mut banner))
        .await
        .expect("the banner and the end of the desktop's stream")
        .expect("read");
    assert_eq!(banner, b"banner");

    let mut upload = vec![0u8; 10 * MB];
    rand::rng().fill_bytes(&mut upload);
    conn.write_all(&upload).await.expect("upload");
    conn.shutdown().await.expect("shutdown");
    let (got, digest) = timeout(TRANSFER, upload_rx)
        .await
        .expect("the upload arrived")
        .expect("digest");
    assert_eq!(got, upload.len());
    assert_eq!(digest, Sha256::digest(&upload));
    let line = gw.tunnel_closed().await;
    assert!(line.contains("end=Closed"), "{line}");
}

#[tokio::test]
async fn a_client_that_shuts_its_socket_after_its_close_frame_still_gets_everything_back() {
    let OneTarget { gw, ticket, .. } = OneTarget::start(&[]).await;
    let mut conn = TcpStream::connect(gw.plain).await.expect("connect");
    conn.write_all(upgrade_head(&format!("/tunnel?ticket={ticket}"), "").as_bytes())
        .await
        .expect("request");
    let (status, mut buf) = read_head(&mut conn).await;
    assert_eq!(status, 101);
    let (mut rd, mut wr) = conn.into_split();
    let mut data = vec![0u8; 10 * MB];
    rand::rng().fill_bytes(&mut data);
    let frames: Vec<Vec<u8>> = data
        .chunks(64 * 1024)
        .map(|c| client_frame(0x2, true, c))
        .collect();
    // All the data, the close frame, then the end of the TCP stream in this direction: the
    // client has said everything and only listens from now on.
    let send = async move {
        for frame in frames {
            wr.write_all(&frame).await.expect("write");
        }
        wr.write_all(&client_frame(0x8, true, &1000u16.to_be_bytes()))
            .await
            .expect("close");
        wr.shutdown().await.expect("shutdown");
        wr
    };
    let receive = async move {
        let (mut back, mut closed) = (Vec::new(), false);
        while let Some((op, payload)) = next_frame(&mut rd, &mut buf).await {
            match op {
                0x2 | 0x0 => back.extend(payload),
                0x8 => closed = true,
                _ => {}
            }
        }
        (back, closed)
    };
    let (_wr, (back, closed)) = timeout(TRANSFER, async { tokio::join!(send, receive) })
        .await
        .expect("the exchange finished");
    assert_eq!(back.len(), data.len(), "{}", gw.proc.log());
    assert!(back == data, "the bytes came back unchanged");
    assert!(closed, "the gateway ends with its close frame");
    let line = gw.tunnel_closed().await;
    assert!(line.contains("end=Closed"), "{line}");
}

// ---- A reverse proxy in front ---------------------------------------------------------------

/// Through a TLS-terminating reverse proxy in front of the gateway's plain port (started by
/// `start_proxy`, trusted by the gateway): bytes go through intact; the client's address is
/// the one the proxy saw, from its X-Forwarded-For, and a client cannot name another one.
async fn the_client_address_is_the_one_the_proxy_saw<F, Fut>(start_proxy: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Proxy>,
{
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let untouched = Target::start().await;
    let gw = Gateway::start(
        &issuer,
        &[
            "--allowed-ports",
            "1024-65535",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    let proxy = start_proxy(gw.plain).await;
    let via_proxy = format!("ws://{}/tunnel", proxy.addr);

    // `gatehouse tunnel` through the proxy with a ticket for this host (127.0.0.1).
    let local = issuer.ticket(target.addr, &["--client-addr", "127.0.0.1"]);
    let (_tunnel, at) = start_tunnel(&via_proxy, &local, &[]).await;
    echo_check_at(at, 10 * MB, "through the proxy").await;

    // From "another host" (127.0.0.2) with its own ticket: the gateway's peer is the proxy
    // (127.0.0.1), so only the proxy's X-Forwarded-For can name 127.0.0.2.
    let mark = gw.proc.mark();
    let theirs = issuer.ticket(target.addr, &["--client-addr", "127.0.0.2"]);
    let conn = connect_from("127.0.0.2", proxy.addr).await;
    let ws = tungstenite_client(conn, &format!("{via_proxy}?ticket={theirs}")).await;
    tungstenite_echo(ws, b"from the other host").await;
    let opened = gw
        .proc
        .wait_line(mark, "\"tunnel opened\"", |l| l.contains("tunnel opened"))
        .await;
    assert!(opened.contains("client=127.0.0.2"), "{opened}");

    // An attacker on 127.0.0.2 with a ticket bound to 127.0.0.1, naming that address in its
    // own X-Forwarded-For: the proxy appends the real peer, the gateway takes the right-most
    // untrusted address, and refuses.
    let stolen = issuer.ticket(untouched.addr, &["--client-addr", "127.0.0.1"]);
    for forwarded in ["X-Forwarded-For: 127.0.0.1\r\n", ""] {
        let mark = gw.proc.mark();
        // The proxy keeps its side of the connection alive after the 403: only the answer
        // counts.
        let mut conn = connect_from("127.0.0.2", proxy.addr).await;
        let status =
            upgrade_answer(&mut conn, &format!("/tunnel?ticket={stolen}"), forwarded).await;
        assert_eq!(status, 403, "{forwarded:?}: {}", proxy.log());
        let line = gw.refusal_after(mark).await;
        assert!(
            line.contains("client 127.0.0.2 is not the ticket's client 127.0.0.1"),
            "{line}"
        );
    }
    // Straight to the gateway, not through the trusted proxy: the header is not believed.
    let mark = gw.proc.mark();
    let conn = connect_from("127.0.0.2", gw.plain).await;
    let status = upgrade_status(
        conn,
        &format!("/tunnel?ticket={stolen}"),
        "X-Forwarded-For: 127.0.0.1\r\n",
    )
    .await;
    assert_eq!(status, 403);
    let line = gw.refusal_after(mark).await;
    assert!(
        line.contains("client 127.0.0.2 is not the ticket's client 127.0.0.1"),
        "{line}"
    );
    assert_eq!(untouched.connections_before_probe().await, 0);
    assert_eq!(target.connections_before_probe().await, 2);
}

#[tokio::test]
async fn through_nginx_the_client_address_is_the_one_nginx_saw() {
    the_client_address_is_the_one_the_proxy_saw(proxies::nginx_reverse_proxy).await;
}

#[tokio::test]
async fn through_apache_the_client_address_is_the_one_apache_saw() {
    the_client_address_is_the_one_the_proxy_saw(proxies::apache_reverse_proxy).await;
}

// ---- The appliance: `gatehouse serve` ----------------------------------------------------------

/// Accepts any certificate: the appliance's is self-signed and generated at setup.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) async fn tls_connect<S>(conn: S) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    try_tls_connect(conn).await.expect("TLS handshake")
}

async fn try_tls_connect<S>(conn: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    timeout(WAIT, connector.connect(name, conn))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// `upgrade_status` over TLS.
pub(crate) async fn tls_upgrade_status<S>(mut tls: S, path: &str) -> u16
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tls.write_all(upgrade_head(path, "").as_bytes())
        .await
        .expect("send the request");
    let (status, _) = read_head(&mut tls).await;
    if status != 101 {
        assert!(closes(&mut tls).await, "the connection stays open");
    }
    status
}

/// One HTTP/1.1 request on an open stream (`Connection: close`); returns status and body.
pub(crate) async fn http_request<S>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("send");
    s.flush().await.expect("flush");
    let mut raw = Vec::new();
    let _ = timeout(WAIT, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            body.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        body
    } else {
        rest.to_string()
    };
    (status, body)
}

/// A PROXY protocol v2 header: a TCP/IPv4 connection from `source` to `destination`.
fn proxy_v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (source, destination) else {
        panic!("IPv4 addresses");
    };
    let mut h = gatehouse::model::location::PROXY_V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// The address the console sees for a request: the test-login report's `client.address`
/// (it falls back to the caller's address when none is given).
pub(crate) async fn address_seen<S>(s: S, token: &str) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (status, body) = http_request(
        s,
        "POST",
        "/api/v1/test-login",
        &format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"),
        r#"{"username": "nobody-here"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    report["client"]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("client.address in {report}"))
        .to_string()
}

pub(crate) fn port_of(base: &str) -> SocketAddr {
    base.trim_start_matches("https://")
        .parse()
        .unwrap_or_else(|_| panic!("host:port in {base}"))
}

pub(crate) async fn admin_token(server: &Server, password: &str) -> String {
    let r = common::client()
        .post(format!("{}/api/v1/tokens", server.base))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("json");
    body["token"].as_str().expect("token").to_string()
}

/// Waits for a line in a server's log file (the fixture writes stderr to a file).
pub(crate) async fn wait_log(server: &Server, what: &str, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        if let Some(line) = server.logs().lines().map(strip_ansi).find(|l| pred(l)) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line {what}: {}", server.logs());
}

#[tokio::test]
async fn the_appliance_closes_tunnels_when_the_broker_releases_the_desktop() {
    common::install_crypto();
    const PASSWORD: &str = "Gateway-Test-Password-1";
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let target = Target::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let store = Store::open(&data).expect("store");
        let server = slapd.auth_server(Security::Ldaps);
        store.put(&server.id.clone(), &server).expect("auth server");
        crate::lab::seed(&store, &server.id, 0, &[("generated", "user")]);
        let desk = Desktop::from_input(
            DesktopInput {
                name: "echo-desk".into(),
                display_name: String::new(),
                address: "127.0.0.1".into(),
                port: Some(target.addr.port()),
                protocol: Protocol::Rdp,
                os: "Echo".into(),
            },
            chrono::Utc::now(),
        );
        store.put(&desk.id, &desk).expect("desktop");
        let plan = ProtocolPlan {
            id: "gw".into(),
            name: "Through the gateway".into(),
            protocols: vec![ProtocolSetting {
                protocol: Protocol::Rdp,
                priority: 1,
                file_lines: Vec::new(),
                command_line: String::new(),
                via_gateway: true,
                gateway_method: Default::default(),
            }],
        };
        store.put(&plan.id.clone(), &plan).expect("plan");
        let mut policy: Policy = store.get("lab").expect("read").expect("the lab policy");
        policy.entries[0].protocol_plan = "gw".into();
        store.put(&policy.id.clone(), &policy).expect("policy");
    }
    common::finish_setup(&data, PASSWORD);
    let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nallowed_ports = \"{}\"\nplain_listen = \"{plain}\"\n\
             [broker]\ngateway_url = \"ws://{plain}/tunnel\"\n",
            target.addr.port()
        ),
    )
    .expect("config");
    let server = Server::start(&data, Some(&config));
    let tls_port = port_of(&server.base);

    // One port: the console answers, and tunnels open on it.
    let health = common::client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    // Sign in, connect: the parameters carry the gateway's URL and a ticket for this client.
    let api = crate::portal::Api::new(&server);
    let login = api.login("user00001", GENERATED_PASSWORD, "laptop").await;
    assert_eq!(login.status, 200, "{}", login.body);
    let token = login.body["token"].as_str().expect("token").to_string();
    let desk = login.body["desktops"][0]["id"]
        .as_str()
        .expect("a desktop on offer")
        .to_string();
    let c = api
        .call(
            &token,
            &format!("/api/v1/client/desktops/{desk}/connect"),
            false,
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let gateway = &c.body["connection"]["gateway"];
    let url = gateway["url"].as_str().expect("gateway url").to_string();
    let ticket = gateway["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(url, format!("ws://{plain}/tunnel"));
    assert!(ticket.starts_with("GT1."), "{ticket}");

    // The portal gives no connection file naming the desktop's own address: it shows how to
    // open the tunnel, with a ticket of its own.
    let mut portal = server.console();
    portal.get("/").await;
    let a = portal
        .post(
            "/portal/login",
            &[("username", "user00001"), ("password", GENERATED_PASSWORD)],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    portal.get("/").await;
    let page = portal
        .post(&format!("/portal/desktops/{desk}/connect"), &[])
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!(
            "gatehouse tunnel --gateway ws://{plain}/tunnel --ticket GT1."
        )) && !page.body.contains("connection-uri"),
        "{}",
        page.body
    );

    // The ticket works on the plain port (the URL given) and on the TLS port.
    let (_plain_tunnel, plain_at) = start_tunnel(&url, &ticket, &[]).await;
    echo_check_at(plain_at, MB, "serve, plain port").await;
    let (_tls_tunnel, tls_at) = start_tunnel(
        &format!("wss://{tls_port}/tunnel"),
        &ticket,
        &["--insecure"],
    )
    .await;
    echo_check_at(tls_at, MB, "serve, TLS port").await;
    let mut open = TcpStream::connect(tls_at).await.expect("connect");
    open.write_all(b"ping").await.expect("write");
    let mut four = [0u8; 4];
    timeout(WAIT, open.read_exact(&mut four))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&four, b"ping");

    // Releasing the desktop ends the session: its open tunnel is closed by the gateway.
    let r = api
        .call(
            &token,
            &format!("/api/v1/client/desktops/{desk}/release"),
            false,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(closes(&mut open).await, "the open tunnel was not closed");
    let closed = wait_log(&server, "about the session's tunnel", |l| {
        l.contains("tunnel closed") && l.contains("end=SessionEnded")
    })
    .await;
    assert!(closed.contains("user=user00001"), "{closed}");
    target.wait_ended(3).await;

    // And the ticket opens nothing any more, on either port.
    let conn = TcpStream::connect(plain).await.expect("connect");
    assert_eq!(
        upgrade_status(conn, &format!("/tunnel?ticket={ticket}"), "").await,
        403
    );
    let tls = tls_connect(TcpStream::connect(tls_port).await.expect("connect")).await;
    assert_eq!(
        tls_upgrade_status(tls, &format!("/tunnel?ticket={ticket}")).await,
        403
    );
    wait_log(&server, "about the ended session", |l| {
        l.contains("tunnel refused") && l.contains("reason=the session ended")
    })
    .await;
    assert_eq!(target.connections_before_probe().await, 3);
}

#[tokio::test]
async fn the_appliance_believes_a_proxy_v2_header_only_from_a_trusted_proxy() {
    common::install_crypto();
    const PASSWORD: &str = "Gateway-Proxy-Password-1";
    let real_client: SocketAddr = "203.0.113.9:40123".parse().expect("addr");

    // Trusted: 127.0.0.1 may say who the client is.
    let (dir, data) = common::fresh_data();
    common::finish_setup(&data, PASSWORD);
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(&config, "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").expect("config");
    let server = Server::start(&data, Some(&config));
    let at = port_of(&server.base);
    let token = admin_token(&server, PASSWORD).await;

    let mut conn = TcpStream::connect(at).await.expect("connect");
    conn.write_all(&proxy_v2_header(real_client, at))
        .await
        .expect("PROXY header");
    let tls = tls_connect(conn).await;
    assert_eq!(address_seen(tls, &token).await, "203.0.113.9");
    // Without the header, the connection's own address.
    let tls = tls_connect(TcpStream::connect(at).await.expect("connect")).await;
    assert_eq!(address_seen(tls, &token).await, "127.0.0.1");
    drop(server);

    // Untrusted: the header is not believed; it is garbage in front of TLS, and fails.
    let (_dir2, data2) = common::fresh_data();
    common::finish_setup(&data2, PASSWORD);
    let server = Server::start(&data2, None);
    let at = port_of(&server.base);
    let token = admin_token(&server, PASSWORD).await;
    let mut conn = TcpStream::connect(at).await.expect("connect");
    conn.write_all(&proxy_v2_header(real_client, at))
        .await
        .expect("PROXY header");
    assert!(
        try_tls_connect(conn).await.is_err(),
        "TLS after an untrusted PROXY header must fail"
    );
    let tls = tls_connect(TcpStream::connect(at).await.expect("connect")).await;
    assert_eq!(address_seen(tls, &token).await, "127.0.0.1");
}

/// A new certificate (SIGHUP re-reads the files) applies to new connections, and a tunnel
/// that was open before it keeps carrying bytes.
#[tokio::test]
async fn a_reloaded_certificate_keeps_open_tunnels_and_serves_new_ones() {
    let OneTarget { gw, ticket, .. } = OneTarget::start(&[]).await;
    let old_ca = gw.cert.to_str().expect("utf8").to_string();
    let (_before, at) = start_tunnel(&gw.wss_url(), &ticket, &["--ca", &old_ca]).await;
    let mut open = TcpStream::connect(at).await.expect("connect");
    let mut data = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut data);
    let mut back = vec![0u8; data.len()];
    open.write_all(&data).await.expect("write");
    timeout(WAIT, open.read_exact(&mut back))
        .await
        .expect("echo")
        .expect("read");
    assert!(back == data, "the tunnel works before the reload");

    // Replace the certificate files and tell the gateway.
    let keep_old = gw.cert.with_file_name("old.crt");
    std::fs::copy(&gw.cert, &keep_old).expect("keep the old certificate");
    let fresh = gatehouse::tls::generate_self_signed(&[]).expect("certificate");
    std::fs::write(&gw.cert, &fresh.cert_chain_pem).expect("write cert");
    std::fs::write(gw.cert.with_file_name("gateway.key"), &fresh.key_pem).expect("write key");
    let mark = gw.proc.mark();
    let status = Command::new("kill")
        .args(["-HUP", &gw.proc.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    gw.proc
        .wait_line(mark, "\"certificate reloaded\"", |l| {
            l.contains("certificate reloaded")
        })
        .await;

    // The open tunnel still carries bytes both ways.
    rand::rng().fill_bytes(&mut data);
    open.write_all(&data).await.expect("write after the reload");
    timeout(WAIT, open.read_exact(&mut back))
        .await
        .expect("echo after the reload")
        .expect("read");
    assert!(back == data, "the open tunnel survived the reload");

    // New connections get the new certificate: trusted with it, refused with the old one.
    let new_ca = gw.cert.to_str().expect("utf8").to_string();
    let (_after, at_new) = start_tunnel(&gw.wss_url(), &ticket, &["--ca", &new_ca]).await;
    echo_check_at(at_new, 1024, "with the new certificate").await;
    let stale = keep_old.to_str().expect("utf8").to_string();
    let (_stale, at_stale) = start_tunnel(&gw.wss_url(), &ticket, &["--ca", &stale]).await;
    let mut refused = TcpStream::connect(at_stale).await.expect("connect");
    assert!(
        closes(&mut refused).await,
        "the old certificate no longer verifies"
    );
}

/// Asks a standalone gateway for a forwarded port; returns the HTTP status and the answer.
/// A gateway with one forwarded port (free a moment ago) and `window` seconds for its client,
/// started with `extra` flags; and that port.
async fn forwarding_gateway(issuer: &Issuer, window: &str, extra: &[&str]) -> (Gateway, u16) {
    let port = free_port();
    let range = format!("{port}-{port}");
    let mut args = vec![
        "--allowed-ports",
        "1024-65535",
        "--port-range",
        &range,
        "--forward-window",
        window,
    ];
    args.extend_from_slice(extra);
    (Gateway::start(issuer, &args).await, port)
}

async fn request_forward(gw: &Gateway, ticket: &str) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("http://{}/gateway/v1/forwards", gw.plain))
        .json(&json!({ "ticket": ticket }))
        .send()
        .await
        .expect("the gateway answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("a JSON answer"))
}

/// A forwarded port accepts only the ticket's client, reaches only the ticket's desktop, and
/// is given back when nobody used it within the window.
#[tokio::test]
async fn a_forwarded_port_serves_only_the_ticket_s_client_and_is_given_back() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let (gw, port) = forwarding_gateway(&issuer, "600", &[]).await;

    // A ticket without a client address cannot open a forwarded port; nonsense neither.
    let unbound = issuer.ticket(target.addr, &[]);
    assert_eq!(request_forward(&gw, &unbound).await.0, 403);
    assert_eq!(request_forward(&gw, "GT1.forged.ticket").await.0, 403);

    let ticket = issuer.ticket(target.addr, &["--client-addr", "127.0.0.1"]);
    let (status, answer) = request_forward(&gw, &ticket).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["port"], json!(port));
    let forwarded = SocketAddr::from(([127, 0, 0, 1], port));

    // From another address: closed, and nothing reaches the desktop.
    let mark = gw.proc.mark();
    let mut other = connect_from("127.0.0.2", forwarded).await;
    assert!(closes(&mut other).await, "another address is refused");
    let refused = gw
        .proc
        .wait_line(mark, "\"used from another address\"", |l| {
            l.contains("forwarded port used from another address")
        })
        .await;
    assert!(refused.contains("127.0.0.2"), "{refused}");
    assert_eq!(target.connections_before_probe().await, 0);

    // From the ticket's client: bytes both ways, several connections.
    echo_check_at(forwarded, MB, "through the forwarded port").await;
    echo_check_at(forwarded, 1, "a second connection").await;
    target.wait_ended(2).await;

    // Nobody connects within the window: the port is given back.
    let (quick, port2) = forwarding_gateway(&issuer, "1", &[]).await;
    let mark = quick.proc.mark();
    let (status, answer) = request_forward(&quick, &ticket).await;
    assert_eq!(status, 200, "{answer}");
    quick
        .proc
        .wait_line(mark, "\"nobody used the forwarded port in time\"", |l| {
            l.contains("nobody used the forwarded port in time")
        })
        .await;
    quick
        .proc
        .wait_line(mark, "\"forwarded port closed\"", |l| {
            l.contains("forwarded port closed")
        })
        .await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port2)).is_ok(),
        "the port is free again"
    );
}

/// `--log-format json`: a refusal is one JSON object whose reason and client are fields of
/// their own, what a log collector matches on. `--log-level` takes a filter; a bad one, or a
/// format that is neither text nor json, stops the gateway before it starts, naming the flag.
#[tokio::test]
async fn json_logs_give_a_refusal_its_reason_and_client_as_fields() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let gw = Gateway::start(
        &issuer,
        &[
            "--allowed-ports",
            "1024-65535",
            "--log-format",
            "json",
            "--log-level",
            "warn,gatehouse::gateway=info",
        ],
    )
    .await;
    let elsewhere = issuer.ticket(target.addr, &["--client-addr", "192.0.2.7"]);
    let mark = gw.proc.mark();
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let status = upgrade_status(conn, &format!("/tunnel?ticket={elsewhere}"), "").await;
    assert_eq!(status, 403);
    let line = gw.refusal_after(mark).await;
    let logged: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(logged["level"], "WARN", "{line}");
    assert_eq!(logged["fields"]["message"], "tunnel refused", "{line}");
    assert_eq!(logged["fields"]["client"], "127.0.0.1", "{line}");
    let reason = logged["fields"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("is not the ticket's client 192.0.2.7"),
        "{line}"
    );
    assert_eq!(target.connections_before_probe().await, 0);

    let key = issuer.public_key.to_str().expect("utf8");
    for (flag, value, says) in [
        (
            "--log-level",
            "gatehouse=loud",
            "--log-level `gatehouse=loud`",
        ),
        (
            "--log-format",
            "xml",
            "invalid value 'xml' for '--log-format",
        ),
    ] {
        let (ok, out, err) = common::run(&[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--broker-key",
            key,
            flag,
            value,
            "--check",
        ]);
        assert!(!ok, "{flag} {value} was taken: {out}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

/// `--max-tunnels-per-session`: a session holds at most that many tunnels at once. One more is
/// refused before the desktop is asked, with the reason logged; another session is not held
/// back; a tunnel that ends makes room. A limit of 0 is refused at start.
#[tokio::test]
async fn a_session_opens_at_most_its_limit_of_tunnels() {
    let OneTarget {
        issuer,
        target,
        gw,
        ticket,
    } = OneTarget::start(&["--max-tunnels-per-session", "2"]).await;
    let url = format!("{}?ticket={ticket}", gw.ws_url());
    let open = || async {
        let conn = TcpStream::connect(gw.plain).await.expect("connect");
        tungstenite_client(conn, &url).await
    };
    let mark = gw.proc.mark();
    let mut first = open().await;
    let opened = gw
        .proc
        .wait_line(mark, "\"tunnel opened\"", |l| l.contains("tunnel opened"))
        .await;
    let session = opened
        .split_whitespace()
        .find(|w| w.starts_with("session="))
        .unwrap_or_else(|| panic!("the session in {opened}"))
        .to_string();
    let mut second = open().await;
    for (ws, said) in [(&mut first, &b"one"[..]), (&mut second, b"two")] {
        ws.send(Message::binary(said.to_vec())).await.expect("send");
        let echoed = ws.next().await.expect("an answer").expect("a frame");
        assert_eq!(echoed.into_data().as_ref(), said);
    }

    let mark = gw.proc.mark();
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    assert_eq!(
        upgrade_status(conn, &format!("/tunnel?ticket={ticket}"), "").await,
        403
    );
    let line = gw.refusal_after(mark).await;
    assert!(line.contains("already has 2 open tunnels"), "{line}");
    assert_eq!(target.connections_before_probe().await, 2);

    // Another session (every ticket issued here is its own session) is not held back.
    let theirs = issuer.ticket(target.addr, &[]);
    let conn = TcpStream::connect(gw.plain).await.expect("connect");
    let ws = tungstenite_client(conn, &format!("{}?ticket={theirs}", gw.ws_url())).await;
    tungstenite_echo(ws, b"another session").await;

    // The first tunnel ends (it has left the registry when the gateway logs so): the session
    // may open one again.
    let mark = gw.proc.mark();
    first.close(None).await.expect("close");
    drop(first);
    gw.proc
        .wait_line(mark, "the session's \"tunnel closed\"", |l| {
            l.contains("tunnel closed") && l.contains(&session)
        })
        .await;
    tungstenite_echo(open().await, b"room again").await;
    drop(second);

    let (ok, out, err) = common::run(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--broker-key",
        issuer.public_key.to_str().expect("utf8"),
        "--max-tunnels-per-session",
        "0",
        "--check",
    ]);
    assert!(!ok, "a limit of 0 was taken: {out}");
    assert!(
        err.contains("--max-tunnels-per-session must be at least 1"),
        "{err}"
    );
}
