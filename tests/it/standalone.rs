//! The standalone gateway end to end, every part the real binary: `gatehouse serve` as the
//! broker and `gatehouse gateway --broker … --gateway-token-file …` in front of it (requests
//! forwarded with the client's address, a user's connection through it, its tunnel in the
//! broker's reports, the tunnel closed when the desktop is released, a bad token refused at
//! start-up), the session-end notices and the reports across a broker restart, the flexVDI
//! configuration (`--flexvdi-config`, with a manager the test runs), and `--max-connections`.
//!
//! The helpers (processes, the echo desktop, raw HTTP and WebSocket) are `gateway.rs`'s.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use gatehouse::broker::Ticket;
use gatehouse::model::Protocol;
use gatehouse::model::desktop::{Desktop, DesktopInput};
use gatehouse::model::directory::Security;
use gatehouse::model::plan::{ProtocolPlan, ProtocolSetting};
use gatehouse::model::policy::Policy;
use gatehouse::store::Store;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Server};
use crate::gateway::{
    Gateway, Issuer, MB, Proc, Target, WAIT, address_seen, admin_token, closes, connect_from,
    echo_check_at, free_port, http_request, start_tunnel, tls_connect, tls_upgrade_status,
};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const PASSWORD: &str = "Standalone-Test-Password-1";

/// Between two looks at something that has not happened yet (always under a deadline).
async fn pause(what: &str, deadline: Instant) {
    assert!(Instant::now() < deadline, "gave up waiting: {what}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A JSON client of one base URL (a broker, or a gateway in front of it), accepting the
/// self-signed certificates of the test.
struct Http {
    client: reqwest::Client,
    base: String,
}

struct Reply {
    status: u16,
    body: Value,
    text: String,
}

impl Http {
    fn new(base: &str) -> Http {
        common::install_crypto();
        Http {
            client: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// Signs `user00001` in with the client API; returns the client token and the desktop.
    async fn sign_in(&self) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                "/api/v1/client/login",
                None,
                Some(json!({"username": "user00001", "password": GENERATED_PASSWORD})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let token = r.body["token"].as_str().expect("client token").to_string();
        let desk = r.body["desktops"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a desktop on offer: {}", r.text))
            .to_string();
        (token, desk)
    }

    /// Connects to `desk`: the gateway URL and ticket of the connection.
    async fn connect(&self, token: &str, desk: &str) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                &format!("/api/v1/client/desktops/{desk}/connect"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let gateway = &r.body["connection"]["gateway"];
        (
            gateway["url"].as_str().expect("gateway url").to_string(),
            gateway["ticket"]
                .as_str()
                .unwrap_or_else(|| panic!("a gateway ticket: {}", r.text))
                .to_string(),
        )
    }

    async fn release(&self, token: &str, desk: &str) {
        let r = self
            .call(
                Method::POST,
                &format!("/api/v1/client/desktops/{desk}/release"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// A certificate for 127.0.0.1 written to `dir`: (certificate, key) files.
fn certificate(dir: &Path, name: &str, hosts: &[String]) -> (PathBuf, PathBuf) {
    let pem = gatehouse::tls::generate_self_signed(hosts).expect("certificate");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pem.cert_chain_pem).expect("write cert");
    std::fs::write(&key, &pem.key_pem).expect("write key");
    (cert, key)
}

/// A broker's data folder: the slapd directory, an echo "desktop" at `echo` whose RDP goes
/// through the gateway (tickets valid ten minutes), and a setup finished with the broker
/// certificate `cert`/`key` (so that gateways can be told to trust it).
fn broker_data(slapd: &Slapd, data: &Path, echo: SocketAddr, cert: &Path, key: &Path) {
    {
        let store = Store::open(data).expect("store");
        let server = slapd.auth_server(Security::Ldaps);
        store.put(&server.id.clone(), &server).expect("auth server");
        crate::lab::seed(&store, &server.id, 0, &[("generated", "user")]);
        let desk = Desktop::from_input(
            DesktopInput {
                name: "echo-desk".into(),
                display_name: String::new(),
                address: echo.ip().to_string(),
                port: Some(echo.port()),
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
    setup_with_certificate(data, cert, key);
}

/// Finishes the setup of `data` with the administrator password `PASSWORD` and the broker
/// certificate `cert`/`key` (so that gateways can be told to trust it).
fn setup_with_certificate(data: &Path, cert: &Path, key: &Path) {
    let password_file = data.with_extension("admin-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write");
    let (ok, out, err) = common::run(&[
        "setup",
        "--data",
        data.to_str().expect("utf8"),
        "--admin-password-file",
        password_file.to_str().expect("utf8"),
        "--tls-cert",
        cert.to_str().expect("utf8"),
        "--tls-key",
        key.to_str().expect("utf8"),
    ]);
    assert!(ok, "setup: {out}{err}");
}

/// The broker's configuration: the gateway at `gateway` is a trusted proxy (it is on
/// 127.0.0.1) and the URL clients are given; tickets last ten minutes, so a refusal after a
/// release is the session's end, not the ticket's age.
fn broker_config(dir: &Path, gateway: SocketAddr) -> PathBuf {
    let config = dir.join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [broker]\ngateway_url = \"wss://{gateway}/tunnel\"\nticket_seconds = 600\n"
        ),
    )
    .expect("config");
    config
}

/// Registers a gateway through the admin API; returns its id and the file holding its token.
async fn register_gateway(
    broker: &Http,
    admin: &str,
    dir: &Path,
    at: SocketAddr,
) -> (String, String, PathBuf) {
    let r = broker
        .call(
            Method::POST,
            "/api/v1/gateways",
            Some(admin),
            Some(json!({"name": "DMZ", "public_address": at.to_string(),
                "internal_url": format!("https://{at}"), "methods": {"tunnel": true}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["gateway"]["id"].as_str().expect("id").to_string();
    let token = r.body["token"].as_str().expect("token").to_string();
    let file = dir.join("gateway-token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    (id, token, file)
}

/// `gatehouse gateway` registered with the broker at `broker_base`, listening on `listen`
/// with the certificate `cert`/`key`, reaching the desktop port `port` only; waits until it
/// listens.
async fn start_registered_gateway(
    broker_base: &str,
    broker_cert: &Path,
    token_file: &Path,
    listen: SocketAddr,
    (cert, key): (&Path, &Path),
    port: u16,
) -> Proc {
    let listen = listen.to_string();
    let port = port.to_string();
    let proc = Proc::spawn(
        "gatehouse gateway --broker",
        &[
            "gateway",
            "--listen",
            &listen,
            "--broker",
            broker_base,
            "--broker-ca",
            broker_cert.to_str().expect("utf8"),
            "--gateway-token-file",
            token_file.to_str().expect("utf8"),
            "--cert",
            cert.to_str().expect("utf8"),
            "--key",
            key.to_str().expect("utf8"),
            "--allowed-ports",
            &port,
        ],
    );
    let line = proc
        .wait_line(0, "\"Gatehouse gateway: wss://…\"", |l| {
            l.starts_with("Gatehouse gateway: wss://")
        })
        .await;
    assert_eq!(line, format!("Gatehouse gateway: wss://{listen}/tunnel"));
    proc
}

/// The broker's public key, as gateways fetch it.
async fn broker_key(broker: &Http) -> VerifyingKey {
    let r = broker
        .call(Method::GET, "/api/v1/gateway/key", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    VerifyingKey::from_public_key_pem(r.text.trim()).expect("a PEM public key")
}

/// Waits until the broker's reports show the gateway `id` with a tunnel of `session`; returns
/// that gateway's status.
async fn wait_reported(broker: &Http, admin: &str, id: &str, session: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = broker
            .call(Method::GET, "/api/v1/gateway-reports", Some(admin), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let status = r
            .body
            .as_array()
            .and_then(|list| list.iter().find(|g| g["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("gateway {id} listed: {}", r.text));
        let tunnels = status["tunnels"].as_array().cloned().unwrap_or_default();
        if tunnels.iter().any(|t| t["session"] == session) {
            return status;
        }
        pause("the gateway's tunnel in the broker's reports", deadline).await;
    }
}

/// Sends `ping` on an open tunnel and reads it back.
async fn ping(conn: &mut TcpStream) {
    conn.write_all(b"ping").await.expect("write");
    let mut four = [0u8; 4];
    timeout(WAIT, conn.read_exact(&mut four))
        .await
        .expect("the echo comes back")
        .expect("read");
    assert_eq!(&four, b"ping");
}

#[tokio::test]
async fn through_a_registered_gateway_users_reach_the_broker_and_their_desktop() {
    common::install_crypto();
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let target = Target::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (broker_cert, broker_key_file) = certificate(dir.path(), "broker", &[]);
    broker_data(&slapd, &data, target.addr, &broker_cert, &broker_key_file);
    let gw_at = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = broker_config(dir.path(), gw_at);
    let server = Server::start(&data, Some(&config));
    let broker = Http::new(&server.base);
    let admin = admin_token(&server, PASSWORD).await;
    let (gw_id, token, token_file) = register_gateway(&broker, &admin, dir.path(), gw_at).await;

    // A token file that is missing, empty, or holds a token the broker does not know: the
    // gateway does not start, and says what to do.
    let base_args = |file: &Path| {
        vec![
            "gateway".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--broker".into(),
            server.base.clone(),
            "--broker-ca".into(),
            broker_cert.display().to_string(),
            "--gateway-token-file".into(),
            file.display().to_string(),
        ]
    };
    let missing = dir.path().join("no-such-token");
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").expect("write");
    for (file, said) in [(&missing, "gateway token file"), (&empty, "is empty")] {
        let args = base_args(file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = common::run(&args);
        assert!(!ok, "started with {}: {out}", file.display());
        assert!(err.contains(said), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "ghgw_not-a-token-of-this-broker\n").expect("write");
    let args = base_args(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refused = Proc::spawn("gatehouse gateway, wrong token", &args);
    let line = refused
        .wait_line(0, "about the refused token", |l| {
            l.contains("refused the gateway token")
        })
        .await;
    assert!(line.contains("Setup > Gateways"), "{line}");
    assert_eq!(line.matches("refused").count(), 1, "said once: {line}");
    let status = refused.child.wait().expect("the gateway ends");
    assert!(
        !status.success(),
        "a refused token ends the gateway with an error"
    );
    assert!(
        !refused.log().contains("Gatehouse gateway: wss://"),
        "{}",
        refused.log()
    );

    // The real gateway, with the token the broker gave.
    let (gw_cert, gw_key) = certificate(dir.path(), "gateway", &[]);
    let gateway = start_registered_gateway(
        &server.base,
        &broker_cert,
        &token_file,
        gw_at,
        (&gw_cert, &gw_key),
        target.addr.port(),
    )
    .await;

    // The API through the gateway is the broker's, and the broker sees the client's address
    // (127.0.0.2 plays a client elsewhere), not the gateway's.
    let tls = tls_connect(connect_from("127.0.0.2", gw_at).await).await;
    assert_eq!(address_seen(tls, &admin).await, "127.0.0.2");
    let tls = tls_connect(TcpStream::connect(gw_at).await.expect("connect")).await;
    let (status, body) = http_request(tls, "GET", "/healthz", "", "").await;
    assert_eq!(status, 200, "{body}");

    // A user signs in and connects through the gateway; the ticket is for that gateway and
    // this client, and a tunnel through the gateway carries bytes to the desktop.
    let via_gateway = Http::new(&format!("https://{gw_at}"));
    let (user, desk) = via_gateway.sign_in().await;
    let (url, ticket_text) = via_gateway.connect(&user, &desk).await;
    assert_eq!(url, format!("wss://{gw_at}/tunnel"));
    let key = broker_key(&broker).await;
    let ticket = Ticket::verify(&ticket_text, &key, chrono::Utc::now()).expect("the broker's");
    assert_eq!(ticket.client, Some(IpAddr::from([127, 0, 0, 1])));
    let gw_cert_arg = gw_cert.display().to_string();
    let (_tunnel, local) = start_tunnel(&url, &ticket_text, &["--ca", &gw_cert_arg]).await;
    echo_check_at(local, MB, "through the registered gateway").await;
    let mut open = TcpStream::connect(local).await.expect("connect");
    ping(&mut open).await;

    // The broker's console lists the tunnel under that gateway.
    let status = wait_reported(&broker, &admin, &gw_id, &ticket.session).await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["stale"], false, "{status}");
    let tunnel = status["tunnels"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["session"] == ticket.session.as_str()))
        .cloned()
        .expect("the tunnel");
    assert_eq!(tunnel["user"], "user00001", "{tunnel}");
    assert_eq!(tunnel["target"], target.addr.to_string(), "{tunnel}");
    assert_eq!(tunnel["client"], "127.0.0.1", "{tunnel}");
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    let page = console.get("/admin/setup/gateways").await.body;
    assert!(page.contains("user00001"), "{page}");
    assert!(page.contains(&target.addr.to_string()), "{page}");

    // Released (through the gateway too): the open tunnel is closed by the gateway, and the
    // ticket opens nothing there any more.
    let from = gateway.mark();
    via_gateway.release(&user, &desk).await;
    assert!(closes(&mut open).await, "the open tunnel was not closed");
    let tls = tls_connect(TcpStream::connect(gw_at).await.expect("connect")).await;
    assert_eq!(
        tls_upgrade_status(tls, &format!("/tunnel?ticket={ticket_text}")).await,
        403
    );
    gateway
        .wait_line(from, "about the ended session's ticket", |l| {
            l.contains("tunnel refused") && l.contains("the session ended")
        })
        .await;
    assert!(!gateway.log().contains(&token), "the token is never logged");
    assert!(!server.logs().contains(&token), "the token is never logged");
}

#[tokio::test]
async fn session_ends_and_gateway_reports_survive_a_broker_restart() {
    common::install_crypto();
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let target = Target::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (broker_cert, broker_key_file) = certificate(dir.path(), "broker", &[]);
    broker_data(&slapd, &data, target.addr, &broker_cert, &broker_key_file);
    let gw_at = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = broker_config(dir.path(), gw_at);
    let broker_at = format!("127.0.0.1:{}", free_port());
    let server = Server::start_on(&data, Some(&config), &broker_at);
    let broker = Http::new(&server.base);
    let admin = admin_token(&server, PASSWORD).await;
    let (gw_id, token, token_file) = register_gateway(&broker, &admin, dir.path(), gw_at).await;
    let (gw_cert, gw_key) = certificate(dir.path(), "gateway", &[]);
    let gateway = start_registered_gateway(
        &server.base,
        &broker_cert,
        &token_file,
        gw_at,
        (&gw_cert, &gw_key),
        target.addr.port(),
    )
    .await;
    let key = broker_key(&broker).await;
    let gw_cert_arg = gw_cert.display().to_string();
    let ends = |after: u64| format!("/api/v1/gateway/session-ends?after={after}&wait=0");

    // A first session ends while everything runs: its tunnel closes, so the gateway has
    // followed the notices up to number 1.
    let (user, desk) = broker.sign_in().await;
    let (url, first) = broker.connect(&user, &desk).await;
    let (_first_tunnel, local) = start_tunnel(&url, &first, &["--ca", &gw_cert_arg]).await;
    let mut open = TcpStream::connect(local).await.expect("connect");
    ping(&mut open).await;
    broker.release(&user, &desk).await;
    assert!(closes(&mut open).await, "the first tunnel was not closed");
    let r = broker.call(Method::GET, &ends(0), Some(&token), None).await;
    assert_eq!(r.body["latest"], 1, "{}", r.text);

    // A second session, its tunnel open and reported.
    let (user, desk) = broker.sign_in().await;
    let (url, second_text) = broker.connect(&user, &desk).await;
    let second = Ticket::verify(&second_text, &key, chrono::Utc::now()).expect("the broker's");
    let (_second_tunnel, local) = start_tunnel(&url, &second_text, &["--ca", &gw_cert_arg]).await;
    let mut open = TcpStream::connect(local).await.expect("connect");
    ping(&mut open).await;
    wait_reported(&broker, &admin, &gw_id, &second.session).await;

    // The gateway is frozen (it can neither report nor poll), and the broker restarts on the
    // same data folder and port.
    let pid = gateway.child.id().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    server.kill();
    let server = Server::start_on(&data, Some(&config), &broker_at);
    let broker = Http::new(&server.base);
    let admin = admin_token(&server, PASSWORD).await;

    // The restarted broker shows the gateway's last report, kept from before, with its age.
    let r = broker
        .call(Method::GET, "/api/v1/gateway-reports", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let status = r
        .body
        .as_array()
        .and_then(|list| list.iter().find(|g| g["id"] == gw_id.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("the gateway listed: {}", r.text));
    let tunnels = status["tunnels"].as_array().cloned().unwrap_or_default();
    assert!(
        tunnels
            .iter()
            .any(|t| t["session"] == second.session.as_str()),
        "the second session's tunnel, kept: {status}"
    );
    assert!(status["received"].is_string(), "{status}");
    assert!(status["age_seconds"].is_i64(), "{status}");
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    let page = console.get("/admin/setup/gateways").await.body;
    assert!(page.contains("user00001"), "{page}");
    assert!(page.contains(" ago ("), "the report's age is shown: {page}");

    // The notices go on from where they were: the second session's end is number 2, after
    // the number the gateway last saw.
    let r = broker.call(Method::GET, &ends(1), Some(&token), None).await;
    assert_eq!(r.body, json!({"latest": 1, "ended": []}), "{}", r.text);
    let (user, held) = broker.sign_in().await;
    assert_eq!(held, desk, "the desktop is still the user's");
    broker.release(&user, &desk).await;
    let r = broker.call(Method::GET, &ends(1), Some(&token), None).await;
    assert_eq!(r.body["latest"], 2, "{}", r.text);
    assert_eq!(
        r.body["ended"][0]["session"],
        second.session.as_str(),
        "{}",
        r.text
    );

    // The gateway wakes, asks for what came after 1, and closes the second tunnel.
    let from = gateway.mark();
    signal("-CONT");
    assert!(closes(&mut open).await, "the second tunnel was not closed");
    let tls = tls_connect(TcpStream::connect(gw_at).await.expect("connect")).await;
    assert_eq!(
        tls_upgrade_status(tls, &format!("/tunnel?ticket={second_text}")).await,
        403
    );
    gateway
        .wait_line(from, "about the ended session's ticket", |l| {
            l.contains("tunnel refused") && l.contains("the session ended")
        })
        .await;
}

// ---- flexVDI ----------------------------------------------------------------------------------

/// A flexVDI manager on `ip`:443 (flexVDI gateways always reach their manager on 443): every
/// request is answered with JSON naming what it received.
async fn start_manager(ip: IpAddr, dir: &Path) -> PathBuf {
    let (cert, key) = certificate(dir, "manager", &[ip.to_string()]);
    let pem = gatehouse::tls::CertPem::new(
        std::fs::read_to_string(&cert).expect("cert"),
        std::fs::read_to_string(&key).expect("key"),
    );
    let resolver = Arc::new(gatehouse::tls::ReloadingResolver::from_pem(&pem).expect("resolver"));
    let config = gatehouse::tls::server_config_with_alpn(resolver, &[b"http/1.1"]).expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = match TcpListener::bind((ip, 443)).await {
        Ok(l) => l,
        Err(e) => panic!(
            "the test manager listens on {ip}:443, as flexVDI managers do ({e}): run the tests \
             as root or with CAP_NET_BIND_SERVICE"
        ),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        break (head, String::from_utf8_lossy(&buf[end + 4..]).into_owned());
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let forwarded_for = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("x-forwarded-for")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let answer = json!({
                    "manager": "test",
                    "request": head.lines().next().unwrap_or_default(),
                    "forwarded_for": forwarded_for,
                    "body": body,
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    cert
}

#[tokio::test]
async fn a_flexvdi_configuration_runs_the_gateway_in_front_of_its_manager() {
    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::new();
    // A loopback address of its own, so that port 443 is free on it.
    let [a, b, c]: [u8; 3] = rand::random();
    let manager_ip = IpAddr::from([127, a, b, c.clamp(3, 254)]);
    let manager_cert = start_manager(manager_ip, dir.path()).await;
    let in_range = Target::start().await;
    let out_of_range = Target::start().await;
    let port = in_range.addr.port();
    let ssl_port = free_port();
    let conf = dir.path().join("flexvdi-gateway.conf");
    std::fs::write(
        &conf,
        json!({
            "ManagerIP": manager_ip.to_string(),
            "SslPort": ssl_port,
            "ListenIP": "127.0.0.1",
            "FirstSpicePort": port,
            "LastSpicePort": port,
            "KeepAlive": 30,
            "Colour": "blue",
        })
        .to_string(),
    )
    .expect("write");
    let gateway = Proc::spawn(
        "gatehouse gateway --flexvdi-config",
        &[
            "gateway",
            "--flexvdi-config",
            conf.to_str().expect("utf8"),
            "--broker-key",
            issuer.public_key.to_str().expect("utf8"),
            "--broker-ca",
            manager_cert.to_str().expect("utf8"),
        ],
    );
    let at = SocketAddr::from(([127, 0, 0, 1], ssl_port));
    gateway
        .wait_line(0, "\"Gatehouse gateway: wss://…\"", |l| {
            l == format!("Gatehouse gateway: wss://{at}/tunnel")
        })
        .await;
    // The unknown key is named on stderr; the gateway runs anyway.
    let warning = gateway
        .wait_line(0, "warning about the unknown key", |l| {
            l.contains("\"Colour\"")
        })
        .await;
    assert!(warning.contains("unknown key"), "{warning}");

    // Requests go to the manager, with the client's address.
    let tls = tls_connect(TcpStream::connect(at).await.expect("connect")).await;
    let (status, body) = http_request(
        tls,
        "POST",
        "/vdi/desktops",
        "Content-Type: application/json\r\n",
        r#"{"username": "anna"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["manager"], "test", "{seen}");
    assert_eq!(seen["request"], "POST /vdi/desktops HTTP/1.1", "{seen}");
    assert_eq!(seen["forwarded_for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["body"], r#"{"username": "anna"}"#, "{seen}");

    // A tunnel to a Spice port in the range works; one outside it is refused, and nothing
    // reaches that desktop.
    let ticket = issuer.ticket(in_range.addr, &[]);
    let wss = format!("wss://{at}/tunnel");
    let (_tunnel, local) = start_tunnel(&wss, &ticket, &["--insecure"]).await;
    echo_check_at(local, MB, "flexVDI, a port in the range").await;
    let from = gateway.mark();
    let outside = issuer.ticket(out_of_range.addr, &[]);
    let tls = tls_connect(TcpStream::connect(at).await.expect("connect")).await;
    assert_eq!(
        tls_upgrade_status(tls, &format!("/tunnel?ticket={outside}")).await,
        403
    );
    let line = gateway
        .wait_line(from, "about the port outside the range", |l| {
            l.contains("tunnel refused")
        })
        .await;
    assert!(
        line.contains(&format!(
            "port {} is outside the allowed ports",
            out_of_range.addr.port()
        )),
        "{line}"
    );
    assert_eq!(out_of_range.connections_before_probe().await, 0);

    // A bad value stops it before it starts, naming the key.
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, r#"{"ManagerIP": "10.0.0.2", "SslPort": "x"}"#).expect("write");
    let (ok, out, err) = common::run(&[
        "gateway",
        "--flexvdi-config",
        bad.to_str().expect("utf8"),
        "--broker-key",
        issuer.public_key.to_str().expect("utf8"),
    ]);
    assert!(!ok, "started with a bad SslPort: {out}");
    assert!(err.contains("SslPort"), "{err}");
    assert!(!out.contains("Gatehouse gateway: wss://"), "{out}");
}

// ---- The connection limit ---------------------------------------------------------------------

/// A WebSocket tunnel on a new connection to `at`, or `None` when the gateway closes the
/// connection without answering.
async fn try_tunnel(
    at: SocketAddr,
    url: &str,
) -> Option<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let conn = TcpStream::connect(at).await.expect("connect");
    match timeout(WAIT, tokio_tungstenite::client_async(url, conn)).await {
        Ok(Ok((ws, _))) => Some(ws),
        Ok(Err(_)) => None,
        Err(_) => panic!("the gateway neither answered nor closed the connection"),
    }
}

/// Sends `data` on a tunnel and reads the same back.
async fn echo_message(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, data: &[u8]) {
    use futures_util::{SinkExt, StreamExt};
    ws.send(Message::Binary(data.to_vec().into()))
        .await
        .expect("send");
    let mut back = Vec::new();
    while back.len() < data.len() {
        match timeout(WAIT, ws.next()).await.expect("an answer") {
            Some(Ok(Message::Binary(b))) => back.extend_from_slice(&b),
            Some(Ok(_)) => {}
            other => panic!("the tunnel ended: {other:?}"),
        }
    }
    assert_eq!(back, data);
}

#[tokio::test]
async fn max_connections_closes_the_connection_beyond_the_limit_until_one_ends() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let port = target.addr.port().to_string();
    let gw = Gateway::start(
        &issuer,
        &["--max-connections", "2", "--allowed-ports", &port],
    )
    .await;
    let ticket = issuer.ticket(target.addr, &[]);
    let url = format!("{}?ticket={ticket}", gw.ws_url());

    // Two tunnels, open and carrying bytes.
    let mut first = try_tunnel(gw.plain, &url).await.expect("the first tunnel");
    echo_message(&mut first, b"one").await;
    let mut second = try_tunnel(gw.plain, &url).await.expect("the second tunnel");
    echo_message(&mut second, b"two").await;

    // A third connection, on either port, is closed at once without an answer.
    let from = gw.proc.mark();
    for at in [gw.plain, gw.tls] {
        let mut conn = TcpStream::connect(at).await.expect("connect");
        let _ = conn
            .write_all(
                crate::gateway::upgrade_head(&format!("/tunnel?ticket={ticket}"), "").as_bytes(),
            )
            .await;
        // Read until the gateway closes (EOF, or a reset): nothing comes before that.
        let mut got = Vec::new();
        let _ = timeout(WAIT, conn.read_to_end(&mut got))
            .await
            .expect("the gateway closes the connection");
        assert!(
            got.is_empty(),
            "{at}: an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    gw.proc
        .wait_line(from, "about the limit", |l| {
            l.contains("the connection limit is reached")
        })
        .await;
    assert_eq!(target.connections_before_probe().await, 2);

    // One tunnel ends; a new one is accepted.
    first.close(None).await.expect("close");
    drop(first);
    // Ended at the desktop: the probe above, and the first tunnel.
    target.wait_ended(2).await;
    let deadline = Instant::now() + WAIT;
    let mut third = loop {
        if let Some(ws) = try_tunnel(gw.plain, &url).await {
            break ws;
        }
        pause("a tunnel accepted after one ended", deadline).await;
    };
    echo_message(&mut third, b"three").await;
    echo_message(&mut second, b"still two").await;
}

/// `packaging/install.sh --gateway` on a gateway host (a `--prefix` tree here, without
/// systemd): a bad token file is refused with nothing installed; then the token and the
/// broker's certificate are copied where only the service reads them, the flags are written
/// once into gateway.env, and the command it prints starts a gateway the broker takes. A
/// re-run with only `--gateway` upgrades the binary and keeps gateway.env; settings given
/// again are refused and change nothing.
#[tokio::test]
async fn install_sh_sets_up_a_standalone_gateway_that_its_broker_takes() {
    use std::os::unix::fs::PermissionsExt;

    use crate::install::describe;

    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (broker_cert, broker_key_file) = certificate(dir.path(), "broker", &[]);
    setup_with_certificate(&data, &broker_cert, &broker_key_file);
    let server = Server::start(&data, None);
    let broker = Http::new(&server.base);
    let admin = admin_token(&server, PASSWORD).await;
    let gw_at = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (gw_id, _, token_file) = register_gateway(&broker, &admin, dir.path(), gw_at).await;

    let host = dir.path().join("gateway-host");
    let etc = host.join("etc/gatehouse");
    let env_file = etc.join("gateway.env");
    let install = |extra: &[&str]| install_gateway_host(&host, extra);
    let listen = gw_at.to_string();
    let settings = |token: &Path| {
        vec![
            "--gateway".to_string(),
            "--broker".into(),
            server.base.clone(),
            "--broker-ca".into(),
            broker_cert.display().to_string(),
            "--gateway-token-file".into(),
            token.display().to_string(),
            "--listen".into(),
            listen.clone(),
        ]
    };

    // A token file that is empty: refused by `gatehouse gateway --check`, nothing installed.
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").expect("write");
    let args = settings(&empty);
    let refused = install(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!refused.status.success(), "{}", describe(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("is empty"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        !host.join("bin/gatehouse").exists(),
        "{}",
        describe(&refused)
    );
    assert!(!env_file.exists(), "{}", describe(&refused));

    let args = settings(&token_file);
    let installed = install(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(installed.status.success(), "{}", describe(&installed));
    for (copy, original) in [
        ("gateway.token", &token_file),
        ("broker-ca.pem", &broker_cert),
    ] {
        let path = etc.join(copy);
        assert_eq!(
            std::fs::read(&path).expect("copied"),
            std::fs::read(original).expect("original"),
            "{copy}"
        );
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            format!("{:o}", mode & 0o777),
            "640",
            "{copy} is the service's only"
        );
    }
    let flags = format!(
        "--listen {listen} --broker {} --broker-ca {etc}/broker-ca.pem \
         --gateway-token-file {etc}/gateway.token",
        server.base,
        etc = etc.display()
    );
    let env = std::fs::read_to_string(&env_file).expect("gateway.env");
    assert!(
        env.lines()
            .any(|l| l == format!("GATEHOUSE_GATEWAY_ARGS=\"{flags}\"")),
        "{env}"
    );
    assert!(
        !host.join("var/lib/gatehouse").exists(),
        "a gateway keeps no data folder"
    );
    // The printed command starts a gateway that the broker takes, and that forwards to it.
    let gateway = start_installed_gateway(&host, &installed, &flags, gw_at).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = broker
            .call(Method::GET, "/api/v1/gateway-reports", Some(&admin), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let connected = r.body.as_array().is_some_and(|list| {
            list.iter()
                .any(|g| g["id"] == gw_id.as_str() && g["connected"] == true)
        });
        if connected {
            break;
        }
        pause("the installed gateway connected to its broker", deadline).await;
    }
    let tls = tls_connect(TcpStream::connect(gw_at).await.expect("connect")).await;
    let (status, body) = http_request(tls, "GET", "/healthz", "", "").await;
    assert_eq!(
        status, 200,
        "the broker's health through the gateway: {body}"
    );
    // What the installer's systemd path waits for: the gateway's own health.
    let tls = tls_connect(TcpStream::connect(gw_at).await.expect("connect")).await;
    let (status, body) = http_request(tls, "GET", "/gateway/v1/health", "", "").await;
    assert_eq!(status, 200, "the gateway's own health: {body}");

    // An upgrade: only --gateway; gateway.env is kept to the byte.
    let upgraded = install(&["--gateway"]);
    assert!(upgraded.status.success(), "{}", describe(&upgraded));
    assert!(
        String::from_utf8_lossy(&upgraded.stderr).contains("keeping the existing"),
        "{}",
        describe(&upgraded)
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("gateway.env"),
        env
    );
    // Settings given again are refused: the file is the one place they change.
    let again = install(&["--gateway", "--broker", "https://elsewhere.invalid"]);
    assert!(!again.status.success(), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("edit that file"),
        "{}",
        describe(&again)
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("gateway.env"),
        env
    );

    // Uninstalling is refused while the gateway runs; once it stopped, the binary goes and
    // gateway.env and the copied files stay, with the command that removes them.
    let uninstall = || {
        crate::install::run_install([
            "--prefix",
            host.to_str().expect("utf8"),
            "--no-systemd",
            "--gateway",
            "--uninstall",
        ])
    };
    let refused = uninstall();
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&gateway.child.id().to_string()),
        "{}",
        describe(&refused)
    );
    assert!(host.join("bin/gatehouse").exists());
    drop(gateway);
    let done = uninstall();
    assert!(done.status.success(), "{}", describe(&done));
    assert!(!host.join("bin/gatehouse").exists(), "{}", describe(&done));
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("gateway.env"),
        env
    );
    assert!(
        String::from_utf8_lossy(&done.stdout).contains(&format!(
            "rm -f -- {etc}/gateway.env {etc}/broker-ca.pem {etc}/gateway.token",
            etc = etc.display()
        )),
        "{}",
        describe(&done)
    );
}

/// `gatehouse gateway --check`: the flags and the files they name are checked, and nothing
/// listens; a token file anyone may read is warned about; a broker key that is not one, or a
/// key that is not the certificate's, is refused with the file and what to do.
#[test]
fn gateway_check_reads_the_files_and_listens_nowhere() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::new();
    let key_file = issuer.public_key.clone();
    let (cert, key) = certificate(dir.path(), "gateway", &[]);
    let (_, other_key) = certificate(dir.path(), "other", &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let check = |broker_key: &Path, key: &Path| {
        common::run(&[
            "gateway",
            "--listen",
            &listen,
            "--broker-key",
            broker_key.to_str().expect("utf8"),
            "--cert",
            cert.to_str().expect("utf8"),
            "--key",
            key.to_str().expect("utf8"),
            "--check",
        ])
    };

    let (ok, out, err) = check(&key_file, &key);
    assert!(ok, "{out}{err}");
    assert_eq!(out, format!("gateway configuration OK\nlisten: {listen}\n"));
    assert!(!err.contains("warning"), "{err}");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("--check left the port free");

    // A token file every user may read: still taken, with a warning that says how to close it.
    let token = dir.path().join("gateway.token");
    std::fs::write(&token, "ghgw_example\n").expect("write");
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let (ok, out, err) = common::run(&[
            "gateway",
            "--listen",
            &listen,
            "--broker",
            "https://127.0.0.1:9",
            "--gateway-token-file",
            token.to_str().expect("utf8"),
            "--check",
        ]);
        assert!(ok, "{out}{err}");
        assert_eq!(
            err.contains(&format!("chmod o-rwx {}", token.display())),
            warned,
            "mode {mode:o}: {err}"
        );
    }

    let (ok, out, err) = check(&cert, &key);
    assert!(!ok, "a certificate passed for the broker's key: {out}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(err.contains("gatehouse broker-key export"), "{err}");

    let (ok, out, err) = check(&key_file, &other_key);
    assert!(!ok, "another certificate's key passed: {out}");
    assert!(err.contains("certificate"), "{err}");
}

/// Runs `install.sh --prefix HOST --no-systemd --binary <this build>` with `extra`.
fn install_gateway_host(host: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--prefix",
        host.to_str().expect("utf8"),
        "--no-systemd",
        "--binary",
        common::bin(),
    ];
    args.extend_from_slice(extra);
    crate::install::run_install(args)
}

/// Starts the gateway as `installed` (install.sh's output) says to, after checking that the
/// command is the installed binary with `flags`; waits until it listens on `at`.
async fn start_installed_gateway(
    host: &Path,
    installed: &std::process::Output,
    flags: &str,
    at: SocketAddr,
) -> Proc {
    let printed = String::from_utf8_lossy(&installed.stdout);
    let command = printed
        .lines()
        .skip_while(|l| *l != "Start it with:")
        .nth(1)
        .unwrap_or_else(|| panic!("a start command: {printed}"))
        .trim()
        .to_string();
    let binary = host.join("bin/gatehouse");
    assert_eq!(command, format!("{} gateway {flags}", binary.display()));
    let words: Vec<&str> = command.split(' ').collect();
    let gateway = Proc::spawn_program("the installed gateway", words[0], &words[1..]);
    let line = gateway
        .wait_line(0, "\"Gatehouse gateway: wss://…\"", |l| {
            l.starts_with("Gatehouse gateway: wss://")
        })
        .await;
    assert_eq!(line, format!("Gatehouse gateway: wss://{at}/tunnel"));
    gateway
}

/// `install.sh --gateway --flexvdi-config`: a configuration with a bad value is refused with
/// its key and nothing installed (as is a broker URL with a quote); a good one is read where
/// it is and gives the address the gateway listens on, which the installer names; the
/// installed gateway answers its health.
#[tokio::test]
async fn install_sh_sets_up_a_gateway_from_a_flexvdi_configuration() {
    use crate::install::describe;

    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::new();
    let key = issuer.public_key.to_str().expect("utf8");
    let host = dir.path().join("gateway-host");
    let etc = host.join("etc/gatehouse");

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, r#"{"ManagerIP": "10.0.0.2", "SslPort": "x"}"#).expect("write");
    let refused = install_gateway_host(
        &host,
        &[
            "--gateway",
            "--flexvdi-config",
            bad.to_str().expect("utf8"),
            "--broker-key",
            key,
        ],
    );
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("SslPort"),
        "{}",
        describe(&refused)
    );
    assert!(
        !host.join("bin/gatehouse").exists(),
        "{}",
        describe(&refused)
    );
    // A flag gateway.env could not hold as one word is refused before anything is checked.
    let quoted = install_gateway_host(
        &host,
        &[
            "--gateway",
            "--broker",
            "https://gw\"x",
            "--broker-key",
            key,
        ],
    );
    assert!(!quoted.status.success(), "{}", describe(&quoted));
    assert!(
        String::from_utf8_lossy(&quoted.stderr).contains("--broker must not contain"),
        "{}",
        describe(&quoted)
    );
    assert!(
        !host.join("bin/gatehouse").exists(),
        "{}",
        describe(&quoted)
    );

    let at = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let conf = dir.path().join("flexvdi-gateway.conf");
    std::fs::write(
        &conf,
        json!({"ManagerIP": "10.0.0.2", "ListenIP": "127.0.0.1", "SslPort": at.port()}).to_string(),
    )
    .expect("write");
    let conf = std::fs::canonicalize(&conf).expect("a canonical path");
    let installed = install_gateway_host(
        &host,
        &[
            "--gateway",
            "--flexvdi-config",
            conf.to_str().expect("utf8"),
            "--broker-key",
            key,
        ],
    );
    assert!(installed.status.success(), "{}", describe(&installed));
    assert!(
        String::from_utf8_lossy(&installed.stderr).contains(&format!("it will listen on {at}")),
        "{}",
        describe(&installed)
    );
    let flags = format!(
        "--flexvdi-config {} --broker-key {}/broker.pem",
        conf.display(),
        etc.display()
    );
    let env = std::fs::read_to_string(etc.join("gateway.env")).expect("gateway.env");
    assert!(
        env.lines()
            .any(|l| l == format!("GATEHOUSE_GATEWAY_ARGS=\"{flags}\"")),
        "{env}"
    );
    let _gateway = start_installed_gateway(&host, &installed, &flags, at).await;
    let tls = tls_connect(TcpStream::connect(at).await.expect("connect")).await;
    let (status, body) = http_request(tls, "GET", "/gateway/v1/health", "", "").await;
    assert_eq!(status, 200, "{body}");
}
