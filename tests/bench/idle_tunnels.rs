//! Memory of idle TLS tunnels: `gatehouse gateway` with N WebSocket-over-TLS tunnels open to a
//! desktop that never sends anything, as the memory of the gateway process (PSS and RSS from
//! `/proc`), in total and per tunnel.
//!
//! The tunnels are opened as a client would (TCP, TLS, the upgrade with a broker-signed
//! ticket, the `101` answer), 200 at a time, and then left idle; the figure is read once they
//! are all open. Keepalive pings stay on (30 s, the default), as in production.
//!
//! `cargo bench --bench idle_tunnels` (N = 10,000); `IDLE_TUNNELS=N` changes N.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARY: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEFAULT_TUNNELS: usize = 10_000;
const IN_FLIGHT: usize = 200;
/// The bar: 10,000 idle TLS tunnels in under 320 MB.
const BAR_BYTES_AT_10K: f64 = 320_000_000.0;
const GATEWAY_PREFIX: &str = "Gatehouse gateway: wss://";
/// Accepts and holds connections; prints its port first.
const HOLD_SERVER: &str = r#"
import resource, socket, select
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run() {
        eprintln!("idle_tunnels bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// The gateway process; killed on drop.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run() -> Result<()> {
    let requested: usize = match std::env::var("IDLE_TUNNELS") {
        Ok(v) => v.parse().context("IDLE_TUNNELS must be a number")?,
        Err(_) => DEFAULT_TUNNELS,
    };
    // The gateway holds two descriptors per tunnel (client and desktop); this process holds
    // the client ends, and a child the desktop ends. Root may raise the hard limit (children
    // inherit it); where it cannot, as many tunnels as the limit allows are opened and the
    // figure for 10,000 is projected from the cost per tunnel.
    let wanted = (2 * requested + 200) as u64;
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted);
    let got = rlimit::increase_nofile_limit(wanted).context("raise the open-files limit")?;
    let n = requested.min((got.saturating_sub(200) / 2) as usize);
    ensure!(
        n >= 100,
        "the open-files limit ({got}) is too low for this benchmark"
    );
    if n < requested {
        println!(
            "the open-files limit is {got} (the hard limit cannot be raised here): {n} tunnels, not {requested}"
        );
    }
    let tmp = tempfile::tempdir().context("temporary folder")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;

    // The desktop: a process that accepts and holds every connection, sending nothing.
    let hold = tmp.path().join("hold.py");
    std::fs::write(&hold, HOLD_SERVER).context("write the hold server")?;
    let mut desktop = Command::new("python3")
        .arg(&hold)
        .stdout(Stdio::piped())
        .spawn()
        .context("start the desktop (python3)")?;
    let mut line = String::new();
    BufReader::new(desktop.stdout.take().context("desktop stdout")?)
        .read_line(&mut line)
        .context("the desktop's port")?;
    let desktop = Gateway(desktop);
    let desktop_port: u16 = line.trim().parse().context("the desktop's port")?;

    let data = tmp.path().join("data");
    let key = tmp.path().join("broker.pem");
    let data_s = data.to_str().context("utf-8 path")?;
    let key_s = key.to_str().context("utf-8 path")?;
    command(&["broker-key", "export", "--data", data_s, "--out", key_s])?;
    let target = format!("127.0.0.1:{desktop_port}");
    let ticket = command(&[
        "ticket",
        "issue",
        "--data",
        data_s,
        "--target",
        &target,
        "--ttl",
        "3600",
        "--client-addr",
        "127.0.0.1",
    ])?
    .trim()
    .to_string();

    let mut child = Command::new(BINARY)
        .args(["gateway", "--listen", "127.0.0.1:0", "--broker-key", key_s])
        .args(["--allowed-ports", &desktop_port.to_string()])
        .args(["--max-connections", &(n + 100).to_string()])
        // Every tunnel here (the warm-up ones too) carries the one ticket, so one session.
        .args(["--max-tunnels-per-session", &(n + 100).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn gatehouse gateway")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let gateway = Gateway(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(GATEWAY_PREFIX) {
                let _ = tx.send(rest.trim_end_matches("/tunnel").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the gateway did not print its address")?;
    let pid = gateway.0.id();

    let connector =
        gatehouse::gateway::client::tls_connector(gatehouse::gateway::client::Trust::Insecure)?;
    let request = format!(
        "GET /tunnel?ticket={ticket} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    );

    // A few tunnels first, so that one-time costs (TLS state, thread stacks, pools) are in
    // the baseline and not spread over the idle tunnels.
    let warm = rt.block_on(open(&connector, &addr, &request, 20))?;
    let before = memory(pid)?;
    let started = Instant::now();
    let tunnels = rt.block_on(open(&connector, &addr, &request, n))?;
    let opening = started.elapsed();
    // Let the last handshakes' buffers go back before reading.
    std::thread::sleep(Duration::from_secs(2));
    let after = memory(pid)?;

    let per_pss = (after.pss_kib - before.pss_kib) as f64 / n as f64;
    let per_rss = (after.rss_kib - before.rss_kib) as f64 / n as f64;
    let total_mb = after.pss_kib as f64 * 1024.0 / 1e6;
    let at_10k_mb = (before.pss_kib as f64 + per_pss * 10_000.0) * 1024.0 / 1e6;
    println!("gatehouse binary: {BINARY}");
    println!(
        "{n} idle TLS tunnels opened in {:.1} s ({IN_FLIGHT} at a time)",
        opening.as_secs_f64()
    );
    println!(
        "gateway memory: PSS {:.1} MiB before, {:.1} MiB with the tunnels open (RSS {:.1} → {:.1} MiB)",
        before.pss_kib as f64 / 1024.0,
        after.pss_kib as f64 / 1024.0,
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0
    );
    println!("per idle tunnel: {per_pss:.1} KiB PSS ({per_rss:.1} KiB RSS)");
    println!(
        "| idle TLS tunnels | {n} | {total_mb:.0} MB PSS in all ({per_pss:.1} KiB each; 10,000 → {at_10k_mb:.0} MB) | < {:.0} MB at 10,000 | {} |",
        BAR_BYTES_AT_10K / 1e6,
        if at_10k_mb * 1e6 < BAR_BYTES_AT_10K {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(tunnels);
    drop(warm);
    drop(desktop);
    Ok(())
}

fn command(args: &[&str]) -> Result<String> {
    let out = Command::new(BINARY)
        .args(args)
        .output()
        .with_context(|| format!("run gatehouse {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "gatehouse {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

type Tunnel = tokio_rustls::client::TlsStream<TcpStream>;

/// Opens `n` tunnels, `IN_FLIGHT` at a time; each has had its `101` answer.
async fn open(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    request: &str,
    n: usize,
) -> Result<Vec<Tunnel>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = semaphore.clone().acquire_owned().await?;
        let (connector, addr, request) = (connector.clone(), addr.to_string(), request.to_string());
        tasks.spawn(async move {
            let _permit = permit;
            let tcp = TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tls.read(&mut byte).await? == 0 {
                    bail!("the gateway closed the tunnel during the upgrade");
                }
                head.push(byte[0]);
            }
            ensure!(
                head.starts_with(b"HTTP/1.1 101"),
                "upgrade refused: {}",
                String::from_utf8_lossy(&head)
            );
            anyhow::Ok(tls)
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        out.push(done??);
    }
    Ok(out)
}

struct Memory {
    pss_kib: u64,
    rss_kib: u64,
}

/// The process's proportional and resident set sizes.
fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .context("read /proc/PID/smaps_rollup")?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in smaps_rollup"))
    };
    Ok(Memory {
        pss_kib: field("Pss")?,
        rss_kib: field("Rss")?,
    })
}
