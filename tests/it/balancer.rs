//! Two standalone gateways behind a real load balancer, configured as `docs/gateway.md` says:
//! sticky by source address, and the PROXY protocol to the gateways.
//!
//! - HAProxy (Debian's `haproxy`): the PROXY protocol v2, and an HTTP health check on the
//!   gateways' own `/gateway/v1/health` over TLS. It must find both gateways healthy (its
//!   layer-7 check answered 200; the endpoint answers GET and refuses other methods), and mark
//!   a stopped one down.
//! - nginx's stream module (Debian's `nginx` with `libnginx-mod-stream`): the text PROXY
//!   protocol v1, and no active check (a gateway that refuses connections is skipped).
//!
//! Behind each, a client's tunnels all reach one gateway, which sees the client's address (not
//! the balancer's) and checks the ticket against it; bytes go through intact. When that gateway
//! stops, the client's next tunnel opens on the other one with the same ticket.
//!
//! The balancers are `proxies.rs`'s, killed on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::common;
use crate::gateway::{
    Gateway, Issuer, MB, Target, WAIT, connect_from, echo_check_at, http_request, start_tunnel,
    tls_connect, tls_upgrade_status,
};
use crate::proxies::{self, Proxy};

/// One server line of HAProxy's `show stat`.
#[derive(Debug, Clone)]
struct ServerStat {
    status: String,
    check_status: String,
    check_code: String,
}

/// `show stat` on `haproxy`'s stats socket: the backend's servers by name.
async fn servers(haproxy: &Proxy) -> HashMap<String, ServerStat> {
    let mut sock = UnixStream::connect(proxies::haproxy_stats_socket(haproxy))
        .await
        .expect("the stats socket");
    sock.write_all(b"show stat\n").await.expect("ask");
    let mut csv = String::new();
    sock.read_to_string(&mut csv).await.expect("the answer");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .unwrap_or_else(|| panic!("a CSV header: {csv}"))
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("a {name} column: {csv}"))
    };
    let (px, sv, status, check, code) = (
        column("pxname"),
        column("svname"),
        column("status"),
        column("check_status"),
        column("check_code"),
    );
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&"gateways") && f[sv].starts_with("gw"))
        .map(|f| {
            let stat = ServerStat {
                status: f[status].to_string(),
                check_status: f[check].to_string(),
                check_code: f[code].to_string(),
            };
            (f[sv].to_string(), stat)
        })
        .collect()
}

/// Waits (bounded) until `server`'s stats in `haproxy` satisfy `done`; returns them.
async fn wait_server(
    haproxy: &Proxy,
    server: &str,
    what: &str,
    done: impl Fn(&ServerStat) -> bool,
) -> ServerStat {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = servers(haproxy).await;
        let stat = stats
            .get(server)
            .unwrap_or_else(|| panic!("{server} in HAProxy's stats: {stats:?}"));
        if done(stat) {
            return stat.clone();
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {server} {what}: {stat:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a tunnel through `at` from the loopback address `source` with `ticket`; the answer's
/// status (101 when the gateway took it).
async fn tunnel_status(source: &str, at: SocketAddr, ticket: &str) -> u16 {
    let tls = tls_connect(connect_from(source, at).await).await;
    tls_upgrade_status(tls, &format!("/tunnel?ticket={ticket}")).await
}

/// How many tunnels a gateway logged as opened for `client`.
fn opened_for(gw: &Gateway, client: &str) -> usize {
    gw.proc
        .log()
        .lines()
        .filter(|l| l.contains("tunnel opened") && l.contains(&format!("client={client}")))
        .count()
}

/// Waits (bounded) until the gateways logged `n` tunnels for `client` in all; returns each
/// one's count.
async fn wait_opened(gateways: &[Gateway], client: &str, n: usize) -> Vec<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts: Vec<usize> = gateways.iter().map(|gw| opened_for(gw, client)).collect();
        if counts.iter().sum::<usize>() >= n {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {n} tunnels of {client}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two gateways that take tickets for `target` and believe the PROXY header from loopback's
/// 127.0.0.1, where the balancers connect from.
async fn two_gateways(issuer: &Issuer, target: &Target) -> Vec<Gateway> {
    let port = target.addr.port().to_string();
    let flags = [
        "--trusted-proxies",
        "127.0.0.1/32",
        "--allowed-ports",
        &port,
    ];
    vec![
        Gateway::start(issuer, &flags).await,
        Gateway::start(issuer, &flags).await,
    ]
}

/// What every balancer in front of `gateways` must do, at `front`: keep one client on one
/// gateway, tell it the client's address, and carry bytes intact. Returns the client's ticket
/// and the index of the gateway that serves it.
async fn balances_by_source(
    issuer: &Issuer,
    target: &Target,
    gateways: &[Gateway],
    front: SocketAddr,
) -> (String, usize) {
    // 127.0.0.2 plays a client elsewhere. Its ticket is bound to its address: the gateway
    // must take the address from the balancer's PROXY header, since the balancer connects from
    // 127.0.0.1. A ticket for 127.0.0.1 is refused to it for the same reason.
    let ticket = issuer.ticket(target.addr, &["--client-addr", "127.0.0.2"]);
    let not_its = issuer.ticket(target.addr, &["--client-addr", "127.0.0.1"]);
    for _ in 0..3 {
        assert_eq!(tunnel_status("127.0.0.2", front, &ticket).await, 101);
    }
    assert_eq!(tunnel_status("127.0.0.2", front, &not_its).await, 403);
    // Sticky by source: all three reached one gateway.
    let counts = wait_opened(gateways, "127.0.0.2", 3).await;
    assert!(
        counts == [3, 0] || counts == [0, 3],
        "one client's tunnels on one gateway: {counts:?}"
    );
    let serving = usize::from(counts[1] == 3);

    // Bytes go through the balancer and the gateway intact (`gatehouse tunnel` in front, from
    // 127.0.0.1 with a ticket for it).
    let url = format!("wss://{front}/tunnel");
    let (_tunnel, local) = start_tunnel(&url, &not_its, &["--insecure"]).await;
    echo_check_at(local, MB, "through the balancer").await;
    (ticket, serving)
}

/// After the serving gateway stopped (and the balancer knows, where it checks): the client's
/// next tunnel opens on the other gateway with the same ticket.
async fn fails_over(gateways: &[Gateway], serving: usize, front: SocketAddr, ticket: &str) {
    assert_eq!(tunnel_status("127.0.0.2", front, ticket).await, 101);
    let counts = wait_opened(gateways, "127.0.0.2", 4).await;
    assert_eq!(
        counts[1 - serving],
        1,
        "the other gateway took it: {counts:?}"
    );
}

#[tokio::test]
async fn haproxy_as_documented_checks_balances_and_fails_over_between_gateways() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let mut gateways = two_gateways(&issuer, &target).await;
    let haproxy = proxies::haproxy(&[gateways[0].tls, gateways[1].tls]).await;

    // Each gateway answers HAProxy's HTTP check itself: layer 7, 200.
    for server in ["gw1", "gw2"] {
        let stat = wait_server(&haproxy, server, "checked healthy", |s| {
            s.check_status == "L7OK"
        })
        .await;
        assert_eq!(stat.check_code, "200", "{server}: {stat:?}");
        assert_eq!(stat.status, "UP", "{server}: {stat:?}");
    }

    // The answer itself: 200 and nothing more to GET; other methods are refused.
    for (method, status, body) in [
        ("GET", 200, r#"{"status":"ok"}"#),
        (
            "POST",
            405,
            r#"{"error":"method_not_allowed","message":"use GET"}"#,
        ),
    ] {
        let conn = TcpStream::connect(gateways[0].plain)
            .await
            .expect("connect");
        let answer = http_request(conn, method, "/gateway/v1/health", "", "").await;
        assert_eq!(answer, (status, body.to_string()), "{method}");
    }

    let (ticket, serving) = balances_by_source(&issuer, &target, &gateways, haproxy.addr).await;

    // The client's gateway stops: HAProxy marks it down, and the client's next tunnel opens on
    // the other gateway.
    gateways[serving].proc.kill();
    let name = format!("gw{}", serving + 1);
    let stat = wait_server(&haproxy, &name, "marked down", |s| {
        s.status.starts_with("DOWN")
    })
    .await;
    assert_ne!(stat.check_status, "L7OK", "{stat:?}");
    fails_over(&gateways, serving, haproxy.addr, &ticket).await;
}

#[tokio::test]
async fn nginx_stream_as_documented_balances_and_fails_over_between_gateways() {
    common::install_crypto();
    let issuer = Issuer::new();
    let target = Target::start().await;
    let mut gateways = two_gateways(&issuer, &target).await;
    let nginx = proxies::nginx_stream(&[gateways[0].tls, gateways[1].tls]).await;

    let (ticket, serving) = balances_by_source(&issuer, &target, &gateways, nginx.addr).await;

    // nginx has no active check: the stopped gateway refuses nginx's connection, and nginx
    // takes the next one.
    gateways[serving].proc.kill();
    fails_over(&gateways, serving, nginx.addr, &ticket).await;
    assert!(
        nginx.log().contains("Connection refused"),
        "nginx tried the stopped gateway first: {}",
        nginx.log()
    );
}
