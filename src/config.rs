//! The one typed configuration: built-in defaults, then the TOML file, then `GATEHOUSE_…`
//! environment variables, then command-line flags. Unknown keys and bad values are refused at
//! start with the file (or variable), the key and the reason.
//!
//! Every key is documented in the commented default `assets/gatehouse.toml`, which is also what
//! `gatehouse config default` prints. This module reads configuration; it never writes the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented default configuration shipped inside the binary.
pub const DEFAULT_TOML: &str = include_str!("../assets/gatehouse.toml");

/// Prefix of the environment variables that override file values:
/// `GATEHOUSE_<SECTION>_<KEY>`, e.g. `GATEHOUSE_SERVER_LISTEN=0.0.0.0:443`.
pub const ENV_PREFIX: &str = "GATEHOUSE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {source_name}: key `{key}`: {reason}")]
    Invalid {
        source_name: String,
        key: String,
        reason: String,
    },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub security: SecurityConfig,
    pub licence: LicenceConfig,
    pub backup: BackupConfig,
    pub jobs: JobsConfig,
    pub broker: BrokerConfig,
    pub gateway: GatewayConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port of the HTTPS console and portal.
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener that only redirects to HTTPS.
    pub http_redirect_listen: Option<SocketAddr>,
    /// Folder holding the store, the installation id and scheduled backups.
    pub data_dir: PathBuf,
    /// Host names (besides localhost and the loopback addresses) for the generated certificate.
    pub hostnames: Vec<String>,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Development switch: read templates from this folder on every render instead of the
    /// copies embedded in the binary.
    pub templates_dir: Option<PathBuf>,
    /// Reverse proxies and load balancers whose `X-Forwarded-For` is believed (CIDR ranges).
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http_redirect_listen: None,
            data_dir: PathBuf::from("gatehouse-data"),
            hostnames: Vec::new(),
            workers: 0,
            templates_dir: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Minutes of inactivity after which a console session ends.
    pub session_idle_minutes: u32,
    /// Hours after signing in at which a console session or API token ends, however active.
    pub session_max_hours: u32,
    /// Seconds between checks of a directory user's console session or API token against the
    /// directory (still there, still enabled, role still with console access); 0 checks on
    /// every request.
    pub directory_recheck_seconds: u32,
    /// Failed sign-ins for one account before it is locked for `lockout_minutes`.
    pub max_failures_per_account: u32,
    /// Failed sign-ins from one client address before it is locked for `lockout_minutes`.
    pub max_failures_per_address: u32,
    /// How long a lockout lasts.
    pub lockout_minutes: u32,
    /// Minimum length of a new administrator password.
    pub min_password_length: usize,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            session_idle_minutes: 30,
            session_max_hours: 12,
            directory_recheck_seconds: 60,
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            lockout_minutes: 15,
            min_password_length: 12,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LicenceConfig {
    /// PEM public key accepted for licence keys instead of the built-in vendor key.
    pub public_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// When scheduled backups run: a 5-field crontab line (or 6 fields with seconds). Empty: off.
    pub schedule: String,
    /// Folder for scheduled backups; relative paths are inside `server.data_dir`.
    pub dir: PathBuf,
    /// How many scheduled backups to keep.
    pub keep: usize,
    /// File holding a passphrase that encrypts scheduled backups; empty: not encrypted.
    pub passphrase_file: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            schedule: "0 3 * * *".into(),
            dir: PathBuf::from("backups"),
            keep: 14,
            passphrase_file: None,
        }
    }
}

/// When the scheduled jobs run (besides `backup.schedule`); each may be set again in the
/// console, which then wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Counts every pool's desktops and checks provisioning. Empty: off.
    pub pool_stats: String,
    /// Adds a sample of every pool's counts to the pool history. Empty: off.
    pub pool_history_stats: String,
    /// Runs the plans' timers that are due. Empty: off.
    pub plan_timers: String,
    /// Days of pool history and of desktop history kept.
    pub history_days: u32,
    /// Seconds a run of any job may take before it is stopped and recorded as failed, so a
    /// run that hangs (a cloud that never answers) does not hold back the job's next starts.
    /// 0: no limit.
    pub time_limit_seconds: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            pool_stats: "* * * * *".into(),
            pool_history_stats: "*/5 * * * *".into(),
            plan_timers: "*/5 * * * * *".into(),
            history_days: 90,
            time_limit_seconds: 1800,
        }
    }
}

impl JobsConfig {
    /// The configured schedules, by job name.
    pub fn schedules(&self) -> [(&'static str, &str); 3] {
        [
            ("pool_stats", &self.pool_stats),
            ("pool_history_stats", &self.pool_history_stats),
            ("plan_timers", &self.plan_timers),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// The WebSocket tunnel URL clients get when their protocol plan goes through the
    /// gateway; empty: this server's own address.
    pub gateway_url: String,
    /// Seconds a gateway ticket may be used to open tunnels.
    pub ticket_seconds: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            gateway_url: String::new(),
            ticket_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Optional plain-HTTP listener serving the same as the TLS port (console, APIs and
    /// tunnels), for use behind a TLS-terminating reverse proxy. Off when unset.
    pub plain_listen: Option<SocketAddr>,
    /// Desktop ports tunnels may reach: ports and ranges, e.g. `3389,5900-25900`. The default
    /// ports of RDP, VNC, SPICE and SSH are always added.
    pub allowed_ports: String,
    /// Seconds between WebSocket pings; 0: no pings.
    pub keepalive: u32,
    /// Seconds to wait for the answer to a ping before closing the tunnel.
    pub pong_timeout: u32,
    /// Seconds a tunnel may carry no data before it is closed; 0: no limit.
    pub idle_timeout: u32,
    /// Open client connections at most (console and tunnels together).
    pub max_connections: usize,
    /// Open tunnels (and forwarded connections) one session may hold at once.
    pub max_tunnels_per_session: usize,
    /// Threads serving client connections, each with its own event loop; 0: one per core.
    pub threads: usize,
    /// Microseconds a worker keeps polling its sockets after bytes moved instead of
    /// sleeping: lower round trips on virtual machines for CPU while traffic flows; 0: off.
    pub busy_poll_us: u32,
    /// Seconds allowed for the TLS handshake and the first request head.
    pub handshake_timeout: u32,
    /// Ports for forwarded-port connections (native clients without WebSocket), `A-B`.
    pub forward_ports: String,
    /// Seconds a forwarded port may go without a connection before it is given back (from its
    /// opening, and again from the end of its last connection).
    pub forward_window: u32,
    /// The host name or address clients use to reach this gateway's forwarded ports; empty:
    /// the first of `server.hostnames`, else the listen address.
    pub public_host: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            plain_listen: None,
            allowed_ports: "3389,5900-25900".into(),
            keepalive: 30,
            pong_timeout: 10,
            idle_timeout: 0,
            max_connections: 20_000,
            max_tunnels_per_session: crate::gateway::DEFAULT_MAX_TUNNELS_PER_SESSION,
            threads: 0,
            busy_poll_us: 0,
            handshake_timeout: 10,
            forward_ports: "20001-22000".into(),
            forward_window: 60,
            public_host: String::new(),
        }
    }
}

impl GatewayConfig {
    /// The gateway's settings; `trusted_proxies` come from `[server]`.
    pub fn settings(
        &self,
        trusted_proxies: Vec<crate::model::location::Cidr>,
    ) -> Result<crate::gateway::GatewaySettings, String> {
        use std::time::Duration;
        let allowed: crate::gateway::PortRanges = self.allowed_ports.parse()?;
        Ok(crate::gateway::GatewaySettings {
            allowed_ports: allowed.with_protocol_ports(),
            timers: crate::gateway::Timers::from_secs(
                self.keepalive,
                self.pong_timeout,
                self.idle_timeout,
            ),
            max_connections: self.max_connections,
            max_tunnels_per_session: self.max_tunnels_per_session,
            handshake_timeout: Duration::from_secs(u64::from(self.handshake_timeout)),
            connect_timeout: Duration::from_secs(10),
            trusted_proxies,
            threads: self.threads,
            busy_poll: Duration::from_micros(u64::from(self.busy_poll_us)),
        })
    }

    /// Where forwarded ports are opened.
    pub fn forwarding(&self) -> Result<crate::gateway::forward::ForwardSettings, String> {
        let range = crate::gateway::forward::parse_range(&self.forward_ports)?;
        Ok(crate::gateway::forward::ForwardSettings {
            range,
            window: std::time::Duration::from_secs(u64::from(self.forward_window)),
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full tracing filter
    /// (`info,gatehouse=debug`). `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_with_env(file, &env)
    }

    /// As [`Config::load`], with the environment given (tests pass their own).
    pub fn load_with_env(file: Option<&Path>, env: &[(String, String)]) -> Result<Self> {
        let (mut config, source_name) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                (
                    Self::parse(&text, &path.display().to_string())?,
                    path.display().to_string(),
                )
            }
            None => (Self::default(), "defaults".to_string()),
        };
        if !env.is_empty() {
            config = config.with_env(env)?;
        }
        config.validate(&source_name)?;
        Ok(config)
    }

    /// Parses TOML text; `name` is used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    fn with_env(self, env: &[(String, String)]) -> Result<Self> {
        let mut value = toml::Value::try_from(&self).map_err(|e| ConfigError::Env {
            var: ENV_PREFIX.into(),
            message: e.to_string(),
        })?;
        let mut sorted: Vec<&(String, String)> = env.iter().collect();
        sorted.sort();
        for (var, raw) in sorted {
            let rest = &var[ENV_PREFIX.len()..];
            let Some((section, key)) = rest.split_once('_') else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "expected GATEHOUSE_<SECTION>_<KEY>".into(),
                });
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let Some(table) = value.get_mut(&section).and_then(|v| v.as_table_mut()) else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("unknown section `{section}`"),
                });
            };
            table.insert(key.clone(), env_value(raw));
            // Check each variable on its own so the error names the variable that is wrong.
            Config::deserialize(value.clone()).map_err(|e| ConfigError::Env {
                var: var.clone(),
                message: format!("key `{section}.{key}`: {}", e.to_string().trim_end()),
            })?;
        }
        Config::deserialize(value).map_err(|e| ConfigError::Env {
            var: ENV_PREFIX.into(),
            message: e.to_string(),
        })
    }

    /// Checks what types alone cannot: every error names the key and the reason.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            key: key.to_string(),
            reason,
        };
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty".into()));
        }
        if let Some(redirect) = self.server.http_redirect_listen
            && redirect == self.server.listen
            && redirect.port() != 0
        {
            return Err(invalid(
                "server.http_redirect_listen",
                "must differ from server.listen".into(),
            ));
        }
        for name in &self.server.hostnames {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(invalid(
                    "server.hostnames",
                    format!("`{name}` is not a host name"),
                ));
            }
        }
        for range in &self.server.trusted_proxies {
            if let Err(e) = range.parse::<crate::model::location::Cidr>() {
                return Err(invalid("server.trusted_proxies", e.to_string()));
            }
        }
        if let Err(e) = self
            .gateway
            .allowed_ports
            .parse::<crate::gateway::PortRanges>()
        {
            return Err(invalid("gateway.allowed_ports", e));
        }
        if let Err(e) = self.gateway.forwarding() {
            return Err(invalid("gateway.forward_ports", e));
        }
        let max_busy_poll = crate::gateway::workers::MAX_BUSY_POLL_US;
        if self.gateway.busy_poll_us > max_busy_poll {
            return Err(invalid(
                "gateway.busy_poll_us",
                format!(
                    "{} microseconds is over the limit of {max_busy_poll} (one second); 0 turns busy polling off",
                    self.gateway.busy_poll_us
                ),
            ));
        }
        for (key, value) in [
            ("gateway.forward_window", self.gateway.forward_window),
            ("gateway.pong_timeout", self.gateway.pong_timeout),
            ("gateway.handshake_timeout", self.gateway.handshake_timeout),
            (
                "gateway.max_connections",
                u32::try_from(self.gateway.max_connections).unwrap_or(u32::MAX),
            ),
            (
                "gateway.max_tunnels_per_session",
                u32::try_from(self.gateway.max_tunnels_per_session).unwrap_or(u32::MAX),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if let Some(plain) = self.gateway.plain_listen
            && (plain == self.server.listen || Some(plain) == self.server.http_redirect_listen)
        {
            return Err(invalid(
                "gateway.plain_listen",
                "must differ from server.listen and server.http_redirect_listen".into(),
            ));
        }
        if self.broker.ticket_seconds == 0 {
            return Err(invalid(
                "broker.ticket_seconds",
                "must be at least 1".into(),
            ));
        }
        let s = &self.security;
        if s.session_idle_minutes == 0 {
            return Err(invalid(
                "security.session_idle_minutes",
                "must be at least 1".into(),
            ));
        }
        if s.session_max_hours == 0 {
            return Err(invalid(
                "security.session_max_hours",
                "must be at least 1".into(),
            ));
        }
        if s.max_failures_per_account == 0 || s.max_failures_per_address == 0 {
            return Err(invalid(
                "security.max_failures_per_account",
                "must be at least 1".into(),
            ));
        }
        if s.lockout_minutes == 0 {
            return Err(invalid(
                "security.lockout_minutes",
                "must be at least 1".into(),
            ));
        }
        if s.min_password_length < 8 {
            return Err(invalid(
                "security.min_password_length",
                "must be at least 8".into(),
            ));
        }
        if let Err(e) = crate::scheduler::parse_schedule(&self.backup.schedule) {
            return Err(invalid("backup.schedule", e.to_string()));
        }
        for (name, text) in self.jobs.schedules() {
            if let Err(e) = crate::scheduler::parse_schedule(text) {
                return Err(invalid(&format!("jobs.{name}"), e.to_string()));
            }
        }
        if self.jobs.history_days == 0 {
            return Err(invalid("jobs.history_days", "must be at least 1".into()));
        }
        if self.backup.keep == 0 {
            return Err(invalid("backup.keep", "must be at least 1".into()));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("`{}` is neither `text` nor `json`", self.log.format),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    /// The trusted proxy ranges, parsed (validated at load).
    pub fn trusted_proxies(&self) -> Vec<crate::model::location::Cidr> {
        self.server
            .trusted_proxies
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    /// The folder for scheduled backups (relative to the data folder unless absolute).
    pub fn backup_dir(&self) -> PathBuf {
        self.server.data_dir.join(&self.backup.dir)
    }
}

/// An environment value is TOML when it parses as a TOML value (numbers, booleans, arrays),
/// otherwise a plain string.
fn env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_default_file_is_the_default_config() {
        let parsed = Config::parse(DEFAULT_TOML, "assets/gatehouse.toml").expect("parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_is_documented_in_the_default_file() {
        let value = toml::Value::try_from(Config::default()).expect("serialises");
        let all_keys = [
            (
                "server",
                vec![
                    "listen",
                    "http_redirect_listen",
                    "data_dir",
                    "hostnames",
                    "workers",
                    "templates_dir",
                ],
            ),
            ("security", vec![]),
            ("licence", vec!["public_key_file"]),
            ("backup", vec!["passphrase_file"]),
            ("jobs", vec![]),
            ("log", vec![]),
        ];
        for (section, optional) in all_keys {
            assert!(
                DEFAULT_TOML.contains(&format!("[{section}]")),
                "section {section}"
            );
            let table = value[section].as_table().expect("table");
            for key in table.keys().map(String::as_str).chain(optional) {
                let documented = DEFAULT_TOML.lines().any(|l| {
                    l.trim_start_matches('#')
                        .trim_start()
                        .starts_with(&format!("{key} ="))
                });
                assert!(
                    documented,
                    "{section}.{key} is not in assets/gatehouse.toml"
                );
            }
        }
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_key() {
        let err = Config::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
            "x.toml",
        )
        .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("x.toml") && msg.contains("listen_port"),
            "{msg}"
        );
    }

    #[test]
    fn bad_value_is_refused_with_key() {
        let err = Config::parse("[server]\nlisten = \"not an address\"\n", "x.toml")
            .expect_err("refused");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::parse("[backup]\nschedule = \"every day\"\n", "x.toml")
            .and_then(|c| c.validate("x.toml"))
            .expect_err("refused");
        assert!(err.to_string().contains("backup.schedule"), "{err}");
        let err = Config::parse("[jobs]\nplan_timers = \"*/5 * *\"\n", "x.toml")
            .and_then(|c| c.validate("x.toml"))
            .expect_err("refused");
        assert!(err.to_string().contains("jobs.plan_timers"), "{err}");
        let err = Config::parse("[gateway]\nbusy_poll_us = 2000000\n", "x.toml")
            .and_then(|c| c.validate("x.toml"))
            .expect_err("refused");
        assert!(err.to_string().contains("gateway.busy_poll_us"), "{err}");
        let c = Config::parse("[gateway]\nbusy_poll_us = 200\n", "x.toml").expect("parses");
        c.validate("x.toml").expect("valid");
        let settings = c.gateway.settings(Vec::new()).expect("settings");
        assert_eq!(settings.busy_poll, std::time::Duration::from_micros(200));
        let c = Config::load_with_env(None, &env(&[("GATEHOUSE_JOBS_POOL_STATS", "")]))
            .expect("an empty schedule turns the job off");
        assert_eq!(c.jobs.pool_stats, "");
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("GATEHOUSE_SERVER_LISTEN", "0.0.0.0:9443"),
                ("GATEHOUSE_BACKUP_KEEP", "3"),
                ("GATEHOUSE_SERVER_DATA_DIR", "/srv/gh"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.server.listen, SocketAddr::from(([0, 0, 0, 0], 9443)));
        assert_eq!(c.backup.keep, 3);
        assert_eq!(c.server.data_dir, PathBuf::from("/srv/gh"));
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let err = Config::load_with_env(None, &env(&[("GATEHOUSE_BACKUP_KEEP", "many")]))
            .expect_err("refused");
        assert!(err.to_string().contains("GATEHOUSE_BACKUP_KEEP"), "{err}");
        let err =
            Config::load_with_env(None, &env(&[("GATEHOUSE_NOPE_X", "1")])).expect_err("refused");
        assert!(err.to_string().contains("GATEHOUSE_NOPE_X"), "{err}");
        let err = Config::load_with_env(None, &env(&[("GATEHOUSE_SERVER_LISTENING", "1")]))
            .expect_err("refused");
        assert!(err.to_string().contains("listening"), "{err}");
    }
}
