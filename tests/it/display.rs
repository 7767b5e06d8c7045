//! Real display protocols through the Gatehouse gateway, with Debian's servers and clients:
//!
//! - VNC: an X server (`Xvfb`) shared by `x11vnc` with a password. A VNC client written here
//!   (the RFB 3.8 handshake with VNC authentication) goes through `gatehouse tunnel` and a
//!   standalone `gatehouse gateway`, and must see the X server's geometry; noVNC (Debian's
//!   `novnc` files) in headless Chromium opens the gateway's WebSocket tunnel itself.
//! - RDP: FreeRDP's shadow server (`freerdp-shadow-cli`, NLA against a SAM file) on an
//!   `Xvfb`, and `xfreerdp +auth-only` through `gatehouse tunnel` and the tunnel endpoint of
//!   `gatehouse serve`, and through a forwarded port of a standalone gateway: exit status 0
//!   with the right password, a failure (and the server's own verdict in its log) with a
//!   wrong one. Debian's xrdp cannot stand in for the shadow server here: xrdp 0.9 offers no
//!   NLA, so `+auth-only` ends before any password is checked and exits 0 whatever the
//!   password.
//!
//! This module owns the display servers and clients it starts (each stopped on drop) and a
//! tiny static web server for the noVNC page; it must not touch anything of the host's
//! beyond temporary folders, free ports and free X displays.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use des::Des;
use des::cipher::{BlockCipherEncrypt, KeyInit};

use crate::chrome::{self, Chrome};
use crate::common::{self, Server};

/// The X server's screen: an unusual size, so a default cannot pass for it.
const WIDTH: u16 = 1152;
const HEIGHT: u16 = 864;
const VNC_PASSWORD: &str = "gh-vnc1";
const RDP_USER: &str = "gatehouse";
const RDP_PASSWORD: &str = "Rdp-Secret-7";

/// How long a process may take to say it is ready, or a client to finish: a guard against a
/// hang, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

// ---- Processes ----------------------------------------------------------------------------

/// A process started by a test: everything it prints (stdout and stderr) is collected, and
/// also handed line by line to whoever waits for a line. Stopped on drop with SIGTERM, so that
/// it removes what it made (x11vnc's System V shared memory, Xvfb's socket); SIGKILL follows
/// if it is still there after a while.
struct Daemon {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{name} does not start ({e}); tests/run.sh installs the display packages")
            });
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                    let _ = tx.send(line);
                }
            });
        }
        Daemon {
            name,
            child,
            lines,
            log,
        }
    }

    /// The first line not yet looked at by an earlier wait for which `pick` returns something;
    /// panics with the log when the process ends or says nothing of the kind in time.
    fn wait_for<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        self.try_wait_for(what, pick)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Daemon::wait_for`], with what went wrong as an error.
    fn try_wait_for<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> Result<T, String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = pick(&line) {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{} did not say {what}:\n{}", self.name, self.log()));
                }
                // Both pipes closed: the process has ended.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{} ended before saying {what}:\n{}",
                        self.name,
                        self.log()
                    ));
                }
            }
        }
    }

    /// Whether the process has ended (and how).
    fn ended(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn shared_log(&self) -> Arc<Mutex<String>> {
        self.log.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let terminated = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if !terminated {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        // Until this thread has reaped the process its pid cannot be reused, so the
        // watchdog's SIGKILL can only reach this process.
        let (done, watchdog) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(Duration::from_secs(10))
            {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let _ = self.child.wait();
        let _ = done.send(());
    }
}

/// Runs a client to completion (killing it if it hangs); returns its status and output.
fn run_client(name: &str, cmd: &mut Command) -> (ExitStatus, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} does not start ({e}); tests/run.sh installs it"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{name}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{name} did not finish");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

// ---- Display servers ------------------------------------------------------------------------

/// A virtual X server on the first free display, WIDTH×HEIGHT.
struct Xvfb {
    daemon: Daemon,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        let mut last = String::new();
        // A server that ends before naming its display (one started at the same moment may
        // have taken the display it picked) is started again.
        for _ in 0..3 {
            // `-displayfd 1`: Xvfb picks a free display itself and writes its number to
            // stdout once it accepts clients. `-fp built-ins`: no font package needed.
            let daemon = Daemon::spawn(
                "Xvfb",
                Command::new("Xvfb")
                    .args(["-displayfd", "1", "-nolisten", "tcp", "-noreset"])
                    .args(["-fp", "built-ins", "-screen"])
                    .args(["0", &format!("{WIDTH}x{HEIGHT}x24")]),
            );
            match daemon.try_wait_for("its display number", |line| line.trim().parse::<u32>().ok())
            {
                Ok(number) => {
                    return Xvfb {
                        daemon,
                        display: format!(":{number}"),
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }
}

/// `x11vnc` sharing an X server with a password, on a free port inside the gateway's default
/// allowed ports.
struct X11Vnc {
    daemon: Daemon,
    port: u16,
    _dir: tempfile::TempDir,
}

impl X11Vnc {
    fn start(x: &Xvfb) -> X11Vnc {
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{VNC_PASSWORD}\n")).expect("write password");
        let mut last = String::new();
        // `-autoport N` takes the first port from N that it finds free, but another process
        // may bind it before x11vnc does: then x11vnc ends, and it is started again.
        for _ in 0..3 {
            let from: u16 = rand::random_range(5900..=25000);
            let daemon = Daemon::spawn(
                "x11vnc",
                Command::new("x11vnc")
                    .args(["-display", &x.display, "-localhost", "-autoport"])
                    .arg(from.to_string())
                    .arg("-passwdfile")
                    .arg(&password_file)
                    .args(["-forever", "-shared", "-norc", "-nocmds", "-noipv6"])
                    .env("HOME", dir.path()),
            );
            // x11vnc prints `PORT=5901` once it listens.
            match daemon.try_wait_for("PORT=", |line| line.strip_prefix("PORT=")?.parse().ok()) {
                Ok(port) => {
                    return X11Vnc {
                        daemon,
                        port,
                        _dir: dir,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }
}

/// FreeRDP's shadow server sharing an X server, NLA only, with one account in a SAM file, on a
/// free port inside the gateway's default allowed ports.
struct ShadowRdp {
    daemon: Daemon,
    port: u16,
    _home: tempfile::TempDir,
}

impl ShadowRdp {
    fn start(x: &Xvfb) -> ShadowRdp {
        let home = tempfile::tempdir().expect("tempdir");
        let (ok, sam, err) = output(
            "winpr-hash",
            Command::new("winpr-hash").args(["-u", RDP_USER, "-p", RDP_PASSWORD, "-f", "sam"]),
        );
        assert!(ok, "winpr-hash: {err}");
        let sam_file = home.path().join("sam");
        std::fs::write(&sam_file, sam).expect("write the SAM file");
        let mut last = String::new();
        // The port is free when chosen but another process may take it before the server
        // binds it: then the server ends, and another port is tried.
        for _ in 0..3 {
            let port = free_port_in(6000..=25900);
            let mut daemon = Daemon::spawn(
                "freerdp-shadow-cli",
                Command::new("freerdp-shadow-cli")
                    .arg(format!("/port:{port}"))
                    .args(["/bind-address:127.0.0.1", "/sec:nla", "+auth"])
                    .arg(format!("/sam-file:{}", sam_file.display()))
                    .env("DISPLAY", &x.display)
                    .env("HOME", home.path())
                    .env("XDG_CONFIG_HOME", home.path().join(".config")),
            );
            // It prints nothing when it listens: connect until it accepts or ends. A refused
            // connection comes back at once, so this is bounded by a deadline.
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline && daemon.ended().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ShadowRdp {
                        daemon,
                        port,
                        _home: home,
                    };
                }
                std::thread::yield_now();
            }
            last = daemon.log();
        }
        panic!("freerdp-shadow-cli did not listen:\n{last}");
    }
}

/// A port in `range` that nothing on 127.0.0.1 listens on right now.
fn free_port_in(range: std::ops::RangeInclusive<u16>) -> u16 {
    for _ in 0..200 {
        let port = rand::random_range(range.clone());
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {range:?}");
}

fn output(name: &str, cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{name} does not run ({e}); tests/run.sh installs it"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- Gatehouse --------------------------------------------------------------------------------

/// The broker key of a fresh installation, as a PEM file for a standalone gateway.
fn export_broker_key(data: &Path) -> PathBuf {
    let out = data.with_extension("broker-key.pem");
    let (ok, _, err) = common::run(&[
        "broker-key",
        "export",
        "--data",
        data.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(ok, "broker-key export: {err}");
    out
}

/// A ticket for 127.0.0.1:`port`, signed with the installation's broker key, for any client
/// or only for `client`.
fn issue_ticket(data: &Path, port: u16, client: Option<&str>) -> String {
    let target = format!("127.0.0.1:{port}");
    let mut args = vec![
        "ticket",
        "issue",
        "--data",
        data.to_str().expect("utf8"),
        "--target",
        &target,
        "--ttl",
        "600",
    ];
    if let Some(client) = client {
        args.extend(["--client-addr", client]);
    }
    let (ok, out, err) = common::run(&args);
    assert!(ok, "ticket issue: {err}");
    out.trim().to_string()
}

/// `gatehouse gateway` on a free port with a generated certificate.
struct StandaloneGateway {
    daemon: Daemon,
    /// `wss://127.0.0.1:PORT/tunnel`
    url: String,
}

impl StandaloneGateway {
    fn start(broker_key: &Path) -> StandaloneGateway {
        StandaloneGateway::start_with(broker_key, &[])
    }

    /// With more `gatehouse gateway` flags.
    fn start_with(broker_key: &Path, extra: &[&str]) -> StandaloneGateway {
        let daemon = Daemon::spawn(
            "gatehouse gateway",
            Command::new(common::bin())
                .args(["gateway", "--listen", "127.0.0.1:0", "--broker-key"])
                .arg(broker_key)
                .args(extra)
                .env("RUST_LOG", "info"),
        );
        let url = daemon.wait_for("where it listens", |line| {
            Some(line.strip_prefix("Gatehouse gateway: ")?.trim().to_string())
        });
        StandaloneGateway { daemon, url }
    }
}

/// `gatehouse tunnel`: a local port whose connections go through the gateway at `url`.
struct Tunnel {
    daemon: Daemon,
    addr: SocketAddr,
}

impl Tunnel {
    fn start(url: &str, ticket: &str) -> Tunnel {
        let daemon = Daemon::spawn(
            "gatehouse tunnel",
            Command::new(common::bin())
                .args(["tunnel", "--gateway", url, "--ticket", ticket])
                // The gateways of these tests have self-signed certificates.
                .args(["--listen", "127.0.0.1:0", "--insecure"])
                .env("RUST_LOG", "info"),
        );
        let addr = daemon.wait_for("where it listens", |line| {
            line.strip_prefix("Gatehouse tunnel: connect your client to ")?
                .trim()
                .parse()
                .ok()
        });
        Tunnel { daemon, addr }
    }
}

// ---- A VNC client -----------------------------------------------------------------------------

/// What a VNC server said in its ServerInit.
#[derive(Debug)]
struct ServerInit {
    width: u16,
    height: u16,
    name: String,
}

/// The RFB 3.8 handshake with VNC authentication (security type 2) and a shared ClientInit.
/// `Err` carries what the server or the connection said went wrong.
fn vnc_handshake(addr: SocketAddr, password: &str) -> Result<ServerInit, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    // A guard against a hang, not a timing assertion.
    s.set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    let mut version = [0u8; 12];
    read(&mut s, &mut version, "the protocol version")?;
    if &version[..4] != b"RFB " {
        return Err(format!("not an RFB server: {version:?}"));
    }
    write(&mut s, b"RFB 003.008\n")?;
    let count = read_u8(&mut s, "the number of security types")?;
    if count == 0 {
        return Err(format!("no security types: {}", read_reason(&mut s)?));
    }
    let mut types = vec![0u8; usize::from(count)];
    read(&mut s, &mut types, "the security types")?;
    if !types.contains(&2) {
        return Err(format!("VNC authentication not offered: {types:?}"));
    }
    write(&mut s, &[2])?;
    let mut challenge = [0u8; 16];
    read(&mut s, &mut challenge, "the VNC authentication challenge")?;
    write(&mut s, &vnc_auth_response(password, challenge))?;
    let result = read_u32(&mut s, "the security result")?;
    if result != 0 {
        return Err(format!(
            "security result {result}: {}",
            read_reason(&mut s)?
        ));
    }
    // ClientInit: share the desktop with other clients.
    write(&mut s, &[1])?;
    let width = read_u16(&mut s, "the framebuffer width")?;
    let height = read_u16(&mut s, "the framebuffer height")?;
    let mut pixel_format = [0u8; 16];
    read(&mut s, &mut pixel_format, "the pixel format")?;
    let name = read_reason(&mut s)?;
    Ok(ServerInit {
        width,
        height,
        name,
    })
}

/// VNC authentication: the challenge encrypted with DES, keyed by the password's first eight
/// bytes (zero-padded) with each byte's bits mirrored.
fn vnc_auth_response(password: &str, challenge: [u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let des = Des::new_from_slice(&key).expect("an 8-byte DES key");
    let mut response = challenge;
    for half in response.chunks_exact_mut(8) {
        let block = <&mut des::cipher::Block<Des>>::try_from(half).expect("8-byte blocks");
        des.encrypt_block(block);
    }
    response
}

fn read(s: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    s.read_exact(buf)
        .map_err(|e| format!("reading {what}: {e}"))
}

fn read_u8(s: &mut TcpStream, what: &str) -> Result<u8, String> {
    let mut b = [0u8; 1];
    read(s, &mut b, what)?;
    Ok(b[0])
}

fn read_u16(s: &mut TcpStream, what: &str) -> Result<u16, String> {
    let mut b = [0u8; 2];
    read(s, &mut b, what)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut TcpStream, what: &str) -> Result<u32, String> {
    let mut b = [0u8; 4];
    read(s, &mut b, what)?;
    Ok(u32::from_be_bytes(b))
}

/// A length-prefixed string (a failure reason or the desktop name).
fn read_reason(s: &mut TcpStream) -> Result<String, String> {
    let len = read_u32(s, "a string's length")?;
    if len > 64 * 1024 {
        return Err(format!("a string of {len} bytes"));
    }
    let mut text = vec![0u8; len as usize];
    read(s, &mut text, "a string")?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn write(s: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    s.write_all(bytes).map_err(|e| format!("writing: {e}"))
}

// ---- A static web server for the noVNC page -----------------------------------------------

/// Debian's noVNC files.
const NOVNC: &str = "/usr/share/novnc";
const CHECK_PAGE: &str = "gatehouse-novnc.html";

/// Serves the check page (tests/fixtures/display/novnc.html) at `/gatehouse-novnc.html` and
/// Debian's noVNC files below it, over plain HTTP on a free port (ES modules need http://, not
/// file://). Stops when dropped.
struct NoVncSite {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl NoVncSite {
    async fn start() -> NoVncSite {
        assert!(
            Path::new(NOVNC).join("core/rfb.js").exists(),
            "noVNC is not installed in {NOVNC}: tests/run.sh installs Debian's novnc"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the page server");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_file(stream));
            }
        });
        NoVncSite { base, task }
    }
}

impl Drop for NoVncSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one GET with a file (one request per connection).
async fn serve_file(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let file = if path == format!("/{CHECK_PAGE}") {
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/display/novnc.html"))
    } else if path.split('/').any(|part| part == "..") {
        None
    } else {
        Some(Path::new(NOVNC).join(path.trim_start_matches('/')))
    };
    let response = match file.and_then(|f| std::fs::read(&f).ok().map(|body| (f, body))) {
        Some((file, body)) => {
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// Every log of a test, for a failure message.
fn logs(parts: &[(&str, &Arc<Mutex<String>>)]) -> String {
    parts
        .iter()
        .map(|(name, log)| {
            format!(
                "---- {name}\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            )
        })
        .collect()
}

// ---- Tests ------------------------------------------------------------------------------------

#[test]
fn a_vnc_client_authenticates_and_sees_the_desktop_through_a_tunnel() {
    let x = Xvfb::start();
    let vnc = X11Vnc::start(&x);
    let (_dir, data) = common::fresh_data();
    let key = export_broker_key(&data);
    let ticket = issue_ticket(&data, vnc.port, None);
    let gateway = StandaloneGateway::start(&key);
    let tunnel = Tunnel::start(&gateway.url, &ticket);
    let diagnostics = || {
        logs(&[
            ("x11vnc", &vnc.daemon.shared_log()),
            ("gateway", &gateway.daemon.shared_log()),
            ("tunnel", &tunnel.daemon.shared_log()),
            ("Xvfb", &x.daemon.shared_log()),
        ])
    };

    let init = vnc_handshake(tunnel.addr, VNC_PASSWORD)
        .unwrap_or_else(|e| panic!("the VNC handshake failed: {e}\n{}", diagnostics()));
    assert_eq!(
        (init.width, init.height),
        (WIDTH, HEIGHT),
        "the framebuffer is the X server's screen"
    );
    assert!(!init.name.is_empty(), "the desktop has a name");

    // A wrong password is judged by the VNC server, through the same tunnel.
    let refused = vnc_handshake(tunnel.addr, "not-it").expect_err("a wrong password fails");
    assert!(
        refused.starts_with("security result 1"),
        "the server refused the password: {refused}\n{}",
        diagnostics()
    );

    // The gateway carried both, each in a tunnel of its own.
    wait_for_tunnels(&gateway.daemon, 2);
}

/// Waits until a gateway has logged `n` opened tunnels.
fn wait_for_tunnels(gateway: &Daemon, n: usize) {
    for i in 1..=n {
        gateway.wait_for(&format!("that tunnel {i} of {n} opened"), |line| {
            line.contains("tunnel opened").then_some(())
        });
    }
}

#[tokio::test]
async fn novnc_in_chromium_connects_through_the_websocket_tunnel() {
    let x = Xvfb::start();
    let vnc = X11Vnc::start(&x);
    let (_dir, data) = common::fresh_data();
    let key = export_broker_key(&data);
    let ticket = issue_ticket(&data, vnc.port, None);
    let gateway = StandaloneGateway::start(&key);
    let site = NoVncSite::start().await;
    let page = |password: &str| {
        let query = serde_urlencoded::to_string([
            ("url", format!("{}?ticket={ticket}", gateway.url)),
            ("password", password.to_string()),
        ])
        .expect("a query string");
        format!("{}/{CHECK_PAGE}?{query}", site.base)
    };
    let (right, wrong) = (page(VNC_PASSWORD), page("not-it"));
    let (vnc_log, gateway_log) = (vnc.daemon.shared_log(), gateway.daemon.shared_log());

    let chrome = Chrome::start(None).await;
    chrome
        .with_session(
            || logs(&[("x11vnc", &vnc_log), ("gateway", &gateway_log)]),
            move |c| async move {
                c.goto(&right).await.expect("open the noVNC page");
                let result = chrome::find(&c, "#result[data-state]").await;
                let state = result.attr("data-state").await.expect("attribute");
                let error = result.attr("data-error").await.expect("attribute");
                assert_eq!(
                    (state.as_deref(), error),
                    (Some("connected"), None),
                    "noVNC connected: {}",
                    chrome::where_am_i(&c).await
                );
                assert_eq!(
                    result.attr("data-size").await.expect("attribute"),
                    Some(format!("{WIDTH}x{HEIGHT}")),
                    "the canvas is the X server's screen"
                );

                c.goto(&wrong).await.expect("open the noVNC page again");
                let result = chrome::find(&c, "#result[data-state]").await;
                assert_eq!(
                    result
                        .attr("data-state")
                        .await
                        .expect("attribute")
                        .as_deref(),
                    Some("failed"),
                    "a wrong password does not connect"
                );
                let security = result
                    .attr("data-security")
                    .await
                    .expect("attribute")
                    .unwrap_or_default();
                assert!(
                    security.starts_with('1'),
                    "the VNC server refused the password: `{security}`"
                );
            },
        )
        .await;
    wait_for_tunnels(&gateway.daemon, 2);
}

/// `xfreerdp +auth-only` (NLA) to `addr` as RDP_USER; its exit status and output.
fn xfreerdp(x: &Xvfb, home: &Path, addr: SocketAddr, password: &str) -> (ExitStatus, String) {
    run_client(
        "xfreerdp",
        Command::new("xfreerdp")
            .args(["+auth-only", "/cert:ignore", "/sec:nla"])
            .arg(format!("/u:{RDP_USER}"))
            .arg(format!("/p:{password}"))
            .arg(format!("/v:{addr}"))
            // xfreerdp wants an X display even when it only authenticates.
            .env("DISPLAY", &x.display)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config")),
    )
}

/// Through `addr`: xfreerdp authenticates with the right password, and fails with a wrong one
/// because the RDP server (not the path to it) refused the password.
fn assert_nla_verdicts(
    x: &Xvfb,
    rdp: &ShadowRdp,
    addr: SocketAddr,
    diagnostics: impl Fn() -> String,
) {
    let home = tempfile::tempdir().expect("tempdir");
    let (status, out) = xfreerdp(x, home.path(), addr, RDP_PASSWORD);
    assert!(
        status.success(),
        "xfreerdp authenticated: {status}\n{out}\n{}",
        diagnostics()
    );
    assert!(out.contains("Authentication only, exit status 0"), "{out}");

    let (status, out) = xfreerdp(x, home.path(), addr, "not-the-password");
    assert!(!status.success(), "a wrong password fails: {out}");
    rdp.daemon
        .wait_for("that the client failed to authenticate", |line| {
            line.contains("client authentication failure").then_some(())
        });
}

#[test]
fn xfreerdp_authenticates_with_nla_through_the_appliance_tunnel() {
    common::install_crypto();
    let x = Xvfb::start();
    let rdp = ShadowRdp::start(&x);
    let (_dir, data) = common::fresh_data();
    // The ticket first: the running server holds the store.
    let ticket = issue_ticket(&data, rdp.port, None);
    let server = Server::start(&data, None);
    let url = format!("{}/tunnel", server.base.replacen("https://", "wss://", 1));
    let tunnel = Tunnel::start(&url, &ticket);
    let diagnostics = || {
        logs(&[
            ("freerdp-shadow-cli", &rdp.daemon.shared_log()),
            ("tunnel", &tunnel.daemon.shared_log()),
        ]) + &server.logs()
    };

    assert_nla_verdicts(&x, &rdp, tunnel.addr, diagnostics);
    // Both went through the appliance's port, each in a tunnel of its own.
    let opened = server.logs().matches("tunnel opened").count();
    assert_eq!(opened, 2, "{}", diagnostics());
}

#[tokio::test]
async fn xfreerdp_authenticates_with_nla_through_a_forwarded_port() {
    let x = Xvfb::start();
    let rdp = ShadowRdp::start(&x);
    let (_dir, data) = common::fresh_data();
    let key = export_broker_key(&data);
    // A forwarded port is bound to the ticket's client address.
    let ticket = issue_ticket(&data, rdp.port, Some("127.0.0.1"));
    // Below Linux's ephemeral ports (32768 and up); the gateway takes a free one of these.
    let first = rand::random_range(26000..=31000);
    let range = format!("{first}-{}", first + 49);
    let gateway = StandaloneGateway::start_with(&key, &["--port-range", &range]);
    let base = gateway
        .url
        .replacen("wss://", "https://", 1)
        .trim_end_matches("/tunnel")
        .to_string();
    let resp = common::client()
        .post(format!("{base}/gateway/v1/forwards"))
        .json(&serde_json::json!({ "ticket": ticket }))
        .send()
        .await
        .expect("ask the gateway for a forwarded port");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}\n{}", gateway.daemon.log());
    let port = body["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("a port in the answer: {body}"));
    assert!(
        (first..=first + 49).contains(&port),
        "the port {port} is in --port-range {range}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let diagnostics = || {
        logs(&[
            ("freerdp-shadow-cli", &rdp.daemon.shared_log()),
            ("gateway", &gateway.daemon.shared_log()),
        ])
    };

    assert_nla_verdicts(&x, &rdp, addr, diagnostics);
}
