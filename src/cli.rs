//! The command line (clap). With `main`, the only place that uses `anyhow`: each command
//! turns its module's typed errors into a message with context and an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::{self, Actor};
use crate::config::{self, Config};
use crate::licence::{self, LicencePayload};
use crate::store::Store;
use crate::{backup, tls};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "VDI connection broker and gateway appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: console, APIs and scheduler on one HTTPS port.
    Serve(ServeArgs),
    /// The first-run wizard's steps, unattended, for scripted installs.
    Setup(SetupArgs),
    /// Export or import snapshot backups of the store.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Licence keys: this installation's code, and the vendor side (keygen, issue).
    #[command(subcommand)]
    Licence(LicenceCommand),
    /// Administrator account maintenance.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the commented default configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a gateway on its own host: WebSocket tunnels checked with the broker's public key.
    Gateway(Box<GatewayArgs>),
    /// Carry local connections through a gateway tunnel, for native clients.
    Tunnel(TunnelArgs),
    /// Gateway tickets, for operators checking a gateway (and for benchmarks).
    #[command(subcommand)]
    Ticket(TicketCommand),
    /// The broker's public key, which standalone gateways check tickets with.
    #[command(subcommand, name = "broker-key")]
    BrokerKey(BrokerKeyCommand),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct GatewayArgs {
    /// Address and port of the TLS port (tunnels on /tunnel).
    #[arg(long, required_unless_present = "flexvdi_config")]
    listen: Option<std::net::SocketAddr>,
    /// Forward portal, console and API requests to this broker (`https://host:port`), adding
    /// the client's address to X-Forwarded-For.
    #[arg(long)]
    broker: Option<String>,
    /// Trust the broker's certificate(s) in this PEM file (default: the system's authorities).
    #[arg(long)]
    broker_ca: Option<PathBuf>,
    /// Do not check the broker's certificate (a broker on a trusted private network only).
    #[arg(long, conflicts_with = "broker_ca")]
    broker_insecure: bool,
    /// Read a flexVDI gateway configuration (JSON): ports, certificate, keepalive, and the
    /// manager(s) to forward to, per user by LDAP when configured. Flags given here win.
    #[arg(long)]
    flexvdi_config: Option<PathBuf>,
    /// Optional plain-HTTP port, for use behind a TLS-terminating reverse proxy.
    #[arg(long)]
    plain_listen: Option<std::net::SocketAddr>,
    /// The broker's public key (PEM), from `gatehouse broker-key export`. Optional with
    /// --gateway-token-file: the key then comes from the broker.
    #[arg(long, required_unless_present = "gateway_token_file")]
    broker_key: Option<PathBuf>,
    /// File holding this gateway's token from Setup > Gateways: the gateway then fetches the
    /// broker's key and session-end notices from --broker and reports its tunnels there.
    #[arg(long, requires = "broker")]
    gateway_token_file: Option<PathBuf>,
    /// PEM certificate chain (with --key); without both, one is generated.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Desktop ports tunnels may reach, e.g. `3389,5900-25900` (the protocols' default ports
    /// 22, 3389 and 5900 are always added).
    #[arg(long, default_value = "3389,5900-25900")]
    allowed_ports: String,
    /// Ports for forwarded-port connections, `A-B`.
    #[arg(long, default_value = "20001-22000")]
    port_range: String,
    /// Threads serving connections, each with its own event loop; 0: one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    busy_poll: BusyPollArg,
    /// Seconds a forwarded port may go without a connection before it is given back.
    #[arg(long, default_value_t = 60)]
    forward_window: u32,
    /// Seconds between WebSocket pings; 0: none.
    #[arg(long, default_value_t = 30)]
    keepalive: u32,
    /// Seconds to wait for a pong before closing a tunnel.
    #[arg(long, default_value_t = 10)]
    pong_timeout: u32,
    /// Seconds a tunnel may carry no data before it is closed; 0: no limit.
    #[arg(long, default_value_t = 0)]
    idle_timeout: u32,
    /// Open client connections at most (tunnels and forwarded requests together); a
    /// connection beyond it is closed at once, without an answer.
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// Open tunnels (and forwarded connections) one session may hold at once; more are
    /// refused, so that one user cannot take the connections the others need.
    #[arg(long, default_value_t = crate::gateway::DEFAULT_MAX_TUNNELS_PER_SESSION)]
    max_tunnels_per_session: usize,
    /// Reverse proxies / load balancers (CIDR, comma-separated) whose PROXY protocol header
    /// (v1 or v2) and X-Forwarded-For name the client.
    #[arg(long, default_value = "")]
    trusted_proxies: String,
    /// What it logs: `error`, `warn`, `info`, `debug` or `trace`, or a full filter
    /// (`info,gatehouse::gateway=debug`). Default `info` (`debug` with a flexVDI
    /// configuration's Debug); RUST_LOG wins when set.
    #[arg(long)]
    log_level: Option<String>,
    /// How it logs to standard error: `text`, or `json` (one object a line, for a log
    /// collector).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Check the flags and the files they name (broker key, token, certificate, flexVDI
    /// configuration), print what is wrong, or that all is well and the address the TLS port
    /// would listen on, and exit: nothing listens and the broker is not contacted.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct TunnelArgs {
    /// The gateway's tunnel URL, e.g. wss://gateway.example.com/tunnel.
    #[arg(long)]
    gateway: String,
    /// The ticket from the broker's connection parameters.
    #[arg(long)]
    ticket: String,
    /// Local address to accept the native client on, e.g. 127.0.0.1:13389.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Trust the gateway certificate(s) in this PEM file instead of the system's authorities.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Do not check the gateway's certificate at all (tests only: anyone can intercept).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    #[command(flatten)]
    busy_poll: BusyPollArg,
}

/// `--busy-poll`, for the gateway and for the tunnel client alike.
#[derive(Args)]
struct BusyPollArg {
    /// Microseconds to keep polling the sockets after bytes moved instead of sleeping: lower
    /// round trips on virtual machines, for CPU while traffic flows; 0: off.
    #[arg(long = "busy-poll", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::gateway::workers::MAX_BUSY_POLL_US)))]
    micros: u32,
}

impl BusyPollArg {
    /// The polling window (zero: off).
    fn window(&self) -> Duration {
        Duration::from_micros(u64::from(self.micros))
    }
}

#[derive(Subcommand)]
enum TicketCommand {
    /// Print a ticket signed with this installation's broker key.
    Issue {
        #[arg(long)]
        data: PathBuf,
        /// The desktop address: HOST:PORT (IPv6 in brackets).
        #[arg(long)]
        target: String,
        /// Seconds the ticket may be used to open tunnels.
        #[arg(long, default_value_t = 60)]
        ttl: u32,
        /// Only this client address may use the ticket.
        #[arg(long)]
        client_addr: Option<std::net::IpAddr>,
    },
}

#[derive(Subcommand)]
enum BrokerKeyCommand {
    /// Write the broker's public key (PEM) for standalone gateways.
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, built-in defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder (overrides server.data_dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address and port for HTTPS (overrides server.listen), e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct SetupArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    /// File whose first line is the new administrator password.
    #[arg(long)]
    admin_password_file: PathBuf,
    /// Licence key file to activate (needs --accept-licence). Without it: the evaluation.
    #[arg(long, requires = "accept_licence")]
    licence_file: Option<PathBuf>,
    /// Accept the licence agreement (needed with --licence-file; with the evaluation, recorded
    /// as accepted only when given).
    #[arg(long)]
    accept_licence: bool,
    /// PEM certificate chain to use instead of the generated one (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write a snapshot of the store to a file (the server must be stopped).
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// File whose first line is a passphrase to encrypt the snapshot with.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Replace the store with a snapshot file, after checking all of it (server stopped).
    Import {
        #[arg(long)]
        data: PathBuf,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LicenceCommand {
    /// Print this installation's code (to send to the supplier).
    Code {
        #[arg(long)]
        data: PathBuf,
    },
    /// Vendor: make a licence signing key pair in DIR.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Vendor: issue a licence key for an installation code.
    Issue {
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        serial: String,
        #[arg(long)]
        installation_code: String,
        #[arg(long, default_value = "")]
        customer: String,
        #[arg(long)]
        max_users: Option<u32>,
        /// Last valid day, YYYY-MM-DD.
        #[arg(long)]
        expires: Option<chrono::NaiveDate>,
        /// Issue date, YYYY-MM-DD (default: today).
        #[arg(long)]
        issued: Option<chrono::NaiveDate>,
        /// Comma-separated feature names.
        #[arg(long, default_value = "")]
        features: String,
        /// How many gateways may run.
        #[arg(long)]
        gateways: Option<u32>,
        /// Do not allow provisioning.
        #[arg(long)]
        no_provisioning: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a one-time administrator password and print it (the server must be stopped).
    ResetPassword {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Check a configuration file (and GATEHOUSE_… variables) without starting anything.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(file: Option<&Path>, data: Option<&Path>) -> Result<Config> {
    let mut config = Config::load(file)?;
    if let Some(d) = data {
        config.server.data_dir = d.to_path_buf();
    }
    Ok(config)
}

/// The first line of a secret file (a token, a password, a passphrase). A file anyone on the
/// machine may read is still used, with a warning that says how to close it.
fn read_secret_line(path: &Path, what: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("while reading the {what} file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        eprintln!(
            "warning: the {what} file {} is readable by every user of this machine (mode {:o}): \
             chmod o-rwx {}",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(line)
}

/// `HOST:PORT` or `[V6]:PORT`.
fn parse_target(text: &str) -> Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("--target `{text}` must be HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("--target `{text}`: `{port}` is not a port (1-65535)"))?;
    if host.is_empty() {
        bail!("--target `{text}` has no host");
    }
    Ok((host.to_string(), port))
}

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the runtime")
}

fn gateway(args: GatewayArgs) -> Result<()> {
    use crate::gateway::client::Trust;
    use crate::gateway::upstream::Upstream;
    let flexvdi = match &args.flexvdi_config {
        Some(path) => {
            let (conf, warnings) = crate::gateway::flexvdi::load(path)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Some(conf)
        }
        None => None,
    };
    let mut log = crate::config::LogConfig {
        format: args.log_format.clone(),
        ..Default::default()
    };
    if flexvdi.as_ref().is_some_and(|f| f.debug) {
        log.level = "debug".into();
    }
    if let Some(level) = &args.log_level {
        tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("--log-level `{level}`: {e}"))?;
        log.level.clone_from(level);
    }
    crate::telemetry::init_logging(&log);
    let trusted = if args.trusted_proxies.trim().is_empty() {
        Vec::new()
    } else {
        crate::model::location::Cidr::parse_list(&args.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?
    };
    let mut allowed: crate::gateway::PortRanges = args
        .allowed_ports
        .parse()
        .map_err(|e| anyhow::anyhow!("--allowed-ports: {e}"))?;
    let (mut keepalive, mut pong) = (args.keepalive, args.pong_timeout);
    let (mut listen, mut plain, mut cert, mut key) =
        (args.listen, args.plain_listen, args.cert, args.key);
    if let Some(f) = &flexvdi {
        allowed = format!("{}-{}", f.first_spice_port, f.last_spice_port)
            .parse()
            .map_err(|e| anyhow::anyhow!("FirstSpicePort/LastSpicePort: {e}"))?;
        keepalive = f.keepalive;
        pong = f.pong_timeout;
        listen = listen.or(Some(std::net::SocketAddr::new(f.listen_ip, f.ssl_port)));
        plain = plain.or(f
            .plain_port
            .map(|p| std::net::SocketAddr::new(f.listen_ip, p)));
        if cert.is_none()
            && let Some((c, k)) = f.certificate_files()
        {
            cert = Some(c.to_path_buf());
            key = Some(k.to_path_buf());
        }
    }
    let listen = listen.context("--listen is required")?;
    if pong == 0 {
        bail!("--pong-timeout must be at least 1 second");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1 (20000 by default)");
    }
    if args.max_tunnels_per_session == 0 {
        bail!(
            "--max-tunnels-per-session must be at least 1 ({} by default)",
            crate::gateway::DEFAULT_MAX_TUNNELS_PER_SESSION
        );
    }
    let trust = Trust::from_flags(args.broker_ca.as_deref(), args.broker_insecure);
    let upstream = match (&flexvdi, &args.broker) {
        (_, Some(url)) => {
            Some(Upstream::new(url, trust).map_err(|e| anyhow::anyhow!("--broker: {e}"))?)
        }
        (Some(f), None) => {
            let manager = if f.manager_ip.contains(':') {
                format!("https://[{}]", f.manager_ip)
            } else {
                format!("https://{}", f.manager_ip)
            };
            Some(
                Upstream::new(&manager, trust)
                    .map_err(|e| anyhow::anyhow!("ManagerIP: {e}"))?
                    .with_router(std::sync::Arc::new(f.router())),
            )
        }
        (None, None) => None,
    };
    let secs = |n: u32| Duration::from_secs(u64::from(n));
    let settings = crate::gateway::GatewaySettings {
        allowed_ports: allowed.with_protocol_ports(),
        timers: crate::gateway::Timers::from_secs(keepalive, pong, args.idle_timeout),
        trusted_proxies: trusted,
        max_connections: args.max_connections,
        max_tunnels_per_session: args.max_tunnels_per_session,
        threads: args.threads,
        busy_poll: args.busy_poll.window(),
        ..Default::default()
    };
    let range = crate::gateway::forward::parse_range(&args.port_range)
        .map_err(|e| anyhow::anyhow!("--port-range: {e}"))?;
    let forwarding = crate::gateway::forward::ForwardSettings {
        range,
        window: secs(args.forward_window.max(1)),
        ..Default::default()
    };
    let link = match &args.gateway_token_file {
        Some(file) => {
            let token = read_secret_line(file, "gateway token")?;
            let url = args
                .broker
                .as_deref()
                .context("--broker is required with a token")?;
            Some(
                crate::gateway::registry::BrokerLink::new(url, &token, trust)
                    .map_err(|e| anyhow::anyhow!("--broker: {e}"))?,
            )
        }
        None => None,
    };
    let options = crate::gateway::standalone::Options {
        link,
        forwarding,
        listen,
        plain_listen: plain,
        broker_key: args.broker_key,
        cert,
        key,
        settings,
        upstream: upstream.map(std::sync::Arc::new),
    };
    if args.check {
        crate::gateway::standalone::check(&options).context("gateway")?;
        println!("gateway configuration OK");
        println!("listen: {}", options.listen);
        return Ok(());
    }
    multi_thread_runtime()?
        .block_on(crate::gateway::standalone::run(options))
        .context("gateway")?;
    Ok(())
}

fn tunnel(args: TunnelArgs) -> Result<()> {
    use crate::gateway::client::{Trust, TunnelClient};
    crate::telemetry::init_logging(&Config::default().log);
    let trust = Trust::from_flags(args.ca.as_deref(), args.insecure);
    let client = std::sync::Arc::new(TunnelClient::new(&args.gateway, &args.ticket, trust)?);
    // One user's few connections: one event loop carries them all, without cross-thread
    // wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("while starting the runtime")?;
    let window = args.busy_poll.window();
    if !window.is_zero() {
        runtime.spawn(crate::gateway::workers::busy_poll(
            window,
            Default::default(),
        ));
    }
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        println!("Gatehouse tunnel: connect your client to {local}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        tokio::select! {
            r = crate::gateway::client::listen(client, listener) => r.context("tunnel listener")?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, anyhow::Error>(())
    })
}

fn open_store(data: &Path) -> Result<Store> {
    Store::open(data).with_context(|| format!("while opening the store in {}", data.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(args.config.as_deref(), args.data.as_deref())?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            crate::telemetry::init_logging(&config.log);
            actix_web::rt::System::new()
                .block_on(crate::app::serve(config))
                .context("while serving")?;
        }
        Command::Setup(args) => setup(args)?,
        Command::Gateway(args) => gateway(*args)?,
        Command::Tunnel(args) => tunnel(args)?,
        Command::Ticket(TicketCommand::Issue {
            data,
            target,
            ttl,
            client_addr,
        }) => {
            let (host, port) = parse_target(&target)?;
            if ttl == 0 {
                bail!("--ttl must be at least 1 second");
            }
            let store = open_store(&data)?;
            let key = crate::broker::seed(&store)?;
            let ticket = crate::broker::Ticket {
                session: format!("operator-{}", crate::model::new_id()),
                user: "operator".into(),
                host,
                port,
                client: client_addr,
                expires: chrono::Utc::now().timestamp() + i64::from(ttl),
            };
            admin::audit(
                &store,
                &Actor::cli(),
                "ticket.issue",
                format!("target {target}, {ttl} s"),
                true,
            )?;
            println!("{}", ticket.sign(&key));
        }
        Command::BrokerKey(BrokerKeyCommand::Export { data, out }) => {
            use ed25519_dalek::pkcs8::EncodePublicKey;
            let store = open_store(&data)?;
            let key = crate::broker::seed(&store)?;
            let pem = key
                .verifying_key()
                .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .context("while encoding the public key")?;
            std::fs::write(&out, pem)
                .with_context(|| format!("while writing {}", out.display()))?;
            admin::audit(
                &store,
                &Actor::cli(),
                "broker_key.export",
                out.display().to_string(),
                true,
            )?;
            println!("Wrote the broker's public key to {}", out.display());
        }
        Command::Backup(BackupCommand::Export {
            data,
            out,
            passphrase_file,
        }) => {
            let passphrase = passphrase_file
                .map(|f| read_secret_line(&f, "passphrase"))
                .transpose()?;
            let store = open_store(&data)?;
            let (bytes, meta) = admin::export_backup(&store, &Actor::cli(), passphrase.as_deref())?;
            backup::write_file_atomic(&out, &bytes)
                .with_context(|| format!("while writing {}", out.display()))?;
            println!(
                "Exported {} records to {}{}",
                meta.record_count,
                out.display(),
                if meta.encrypted { " (encrypted)" } else { "" }
            );
        }
        Command::Backup(BackupCommand::Import {
            data,
            input,
            passphrase_file,
        }) => {
            let passphrase = passphrase_file
                .map(|f| read_secret_line(&f, "passphrase"))
                .transpose()?;
            let bytes = std::fs::read(&input)
                .with_context(|| format!("while reading {}", input.display()))?;
            // The whole file is checked before the store is even opened.
            let (meta, records) = admin::verify_backup(&bytes, passphrase.as_deref())
                .with_context(|| {
                    format!(
                        "{} was not imported; the store is unchanged",
                        input.display()
                    )
                })?;
            let store = open_store(&data)?;
            let meta = admin::restore_verified(&store, &Actor::cli(), meta, &records)?;
            println!(
                "Imported {} records made {} by installation {}",
                meta.record_count,
                meta.created.format("%Y-%m-%d %H:%M UTC"),
                meta.installation_id
            );
        }
        Command::Licence(LicenceCommand::Code { data }) => {
            let id = Store::installation_id_of(&data)
                .with_context(|| {
                    format!("while reading the installation id in {}", data.display())
                })?
                .with_context(|| {
                    format!(
                        "{} has no installation yet: start gatehouse once first",
                        data.display()
                    )
                })?;
            println!("{}", licence::installation_code(&id));
        }
        Command::Licence(LicenceCommand::Keygen { out }) => {
            let paths = licence::keygen(&out)?;
            println!(
                "Signing key: {} (keep it secret)",
                paths.signing_key.display()
            );
            println!("Public key:  {}", paths.public_key.display());
        }
        Command::Licence(LicenceCommand::Issue {
            signing_key,
            serial,
            installation_code,
            customer,
            max_users,
            expires,
            issued,
            features,
            gateways,
            no_provisioning,
        }) => {
            let pem = std::fs::read_to_string(&signing_key)
                .with_context(|| format!("while reading {}", signing_key.display()))?;
            let code = licence::normalize_installation_code(&installation_code)?;
            let mut payload =
                LicencePayload::new(serial, code, issued.unwrap_or_else(licence::today));
            payload.customer = customer;
            payload.max_users = max_users;
            payload.expires = expires;
            payload.features = licence::parse_features(&features)?;
            payload.gateways = gateways;
            payload.provisioning = !no_provisioning;
            print!("{}", licence::issue(&pem, &payload)?);
        }
        Command::Admin(AdminCommand::ResetPassword { data, config }) => {
            let config = load_config(config.as_deref(), Some(&data))?;
            let store = open_store(&data)?;
            let password = admin::reset_password(&store, &config)?;
            println!("One-time password for admin: {password}");
            println!("Sign in with it; the console then asks for a new password.");
        }
        Command::Config(ConfigCommand::Default) => print!("{}", config::DEFAULT_TOML),
        Command::Config(ConfigCommand::Check { config }) => {
            Config::load(Some(&config))?;
            println!("{}: valid", config.display());
        }
        Command::Version => println!("gatehouse {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn setup(args: SetupArgs) -> Result<()> {
    let config = load_config(args.config.as_deref(), Some(&args.data))?;
    let password = read_secret_line(&args.admin_password_file, "admin password")?;
    let store = open_store(&args.data)?;
    admin::initialise(&store, &config)?;
    let actor = Actor::cli();
    admin::wizard_password(
        &store,
        &actor,
        &password,
        &password,
        config.security.min_password_length,
    )
    .context("step 1 (administrator password)")?;
    match &args.licence_file {
        Some(file) => {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("while reading {}", file.display()))?;
            let verifier = admin::verifier(&config)?;
            let l = admin::activate_licence(&store, &verifier, &actor, &key, args.accept_licence)
                .context("step 2 (licence)")?;
            println!("Licence {} for {} activated.", l.serial(), l.customer());
        }
        None => {
            admin::choose_evaluation_unattended(&store, &actor, args.accept_licence)
                .context("step 2 (licence)")?;
            println!("No licence key given: the 30-day evaluation runs.");
            if !args.accept_licence {
                println!(
                    "The licence agreement is not accepted yet: it is accepted with the first \
                     licence key (System > Licence), or run setup with --accept-licence."
                );
            }
        }
    }
    let upload = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::CertPem::new(
            std::fs::read_to_string(c).with_context(|| format!("while reading {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("while reading {}", k.display()))?,
        )),
        _ => None,
    };
    let (_, info) =
        admin::choose_certificate(&store, &actor, upload).context("step 3 (certificate)")?;
    admin::finish_wizard(&store, &actor)?;
    println!(
        "Certificate: {} (valid until {}).",
        info.subject,
        info.not_after.format("%Y-%m-%d")
    );
    println!(
        "Setup complete. Start the appliance: gatehouse serve --data {}",
        args.data.display()
    );
    Ok(())
}
