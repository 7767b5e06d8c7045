//! flexVDI compatibility: reads a flexVDI gateway JSON configuration and sends each user to
//! their own manager by an LDAP attribute.
//!
//! It owns two things: [`parse`]/[`load`], which turn the JSON of a flexVDI gateway
//! (`/etc/flexvdi/flexvdi-gateway.conf`) into a typed [`FlexVdiConfig`], and
//! [`ManagerRouter`], which answers "which manager does this user go to?". It does not open
//! listeners, read certificates or generate them (the caller does, with [`crate::tls`], when
//! [`FlexVdiConfig::generates_certificate`] says so), and it never touches the store.
//!
//! # The file
//!
//! One JSON object. Keys are case-sensitive, as written by flexVDI. A key set to `null` counts
//! as absent. Unknown keys are not an error: they come back as warnings naming the key, so an
//! administrator sees a typo. Every other mistake is refused with the key and the reason.
//!
//! | key | type | default | meaning |
//! |-----|------|---------|---------|
//! | `ManagerIP` | host | required | the (default) flexVDI manager |
//! | `SslPort` | port | 443 | the TLS port the gateway listens on |
//! | `FirstSpicePort`, `LastSpicePort` | port | 5900, 65535 | the desktop ports tunnels reach |
//! | `CertFile`, `KeyFile` | path | none | PEM files: both, or neither (one is generated) |
//! | `KeepAlive` | seconds | 30 | WebSocket ping interval; 0 sends no pings |
//! | `PongTimeout` | seconds | 10 | an unanswered ping closes the tunnel after it; 0 never |
//! | `ListenIP` | IP address | `0.0.0.0` | the address listeners bind |
//! | `PlainPort` | port | none | an extra listener without TLS |
//! | `Debug` | bool | false | verbose logging |
//! | `LDAPServer` | host | none | turns per-user manager routing on |
//! | `LDAPPort` | port | 389 | plain LDAP port |
//! | `LDAPUsername`, `LDAPPassword` | string | empty | bind DN and password; empty: anonymous |
//! | `LDAPBaseDN` | DN | required with `LDAPServer` | where users are searched |
//! | `LDAPSearchRDN` | attribute | `uid` | the attribute matched against the user name |
//! | `LDAPAttribute` | attribute | required with `LDAPServer` | holds the user's manager |
//! | `LDAPOneShot` | bool | false | search one level under the base DN, not the subtree |
//! | `LDAPFallback` | bool | true | no manager value, or no such user: use `ManagerIP` |
//! | `LDAPCacheSecs` | seconds | 60 | how long an answer is reused; 0: ask every time |
//!
//! Defaults: flexVDI's documentation says the gateway listens on TCP port 443 unless
//! configured otherwise, and that flexVDI searches directories in subtree mode; those are
//! kept. It does not publish the other defaults, so Gatehouse chose them: the Spice range is
//! QEMU/libvirt's (5900 up to the last port), the WebSocket keepalive is 30 s with a 10 s pong
//! timeout (below the usual 60 s idle timeout of proxies and NAT routers), plain LDAP on 389,
//! `uid` as the search attribute (OpenLDAP's user RDN), fallback on (a gateway without LDAP
//! sends everyone to `ManagerIP`, so a user with no manager of their own keeps working), and a
//! one-minute cache (a user moved to another manager follows within a minute).
//!
//! # Routing
//!
//! Without `LDAPServer` every user goes to `ManagerIP`. With it, [`ManagerRouter::manager_for`]
//! binds to `ldap://LDAPServer:LDAPPort` as `LDAPUsername`, searches `LDAPBaseDN` for
//! `(LDAPSearchRDN=<user>)` (the user name escaped with `ldap3::ldap_escape`, so a name cannot
//! change the filter), and answers with the first non-empty value of `LDAPAttribute`; two
//! matching entries are an error, never a guess.
//! Continuation references in the results are not followed. Every step runs under a timeout,
//! so a dead directory returns an error instead of hanging a connection. Answers (including
//! fallbacks) are cached per user name for `LDAPCacheSecs` in a cache of at most
//! [`CACHE_MAX_ENTRIES`] users; errors are never cached. `LDAPPassword` is never logged and
//! `Debug` shows it as `<redacted>`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use serde_json::{Map, Value};
use zeroize::Zeroize;

/// Where flexVDI installs its gateway configuration.
pub const DEFAULT_PATH: &str = "/etc/flexvdi/flexvdi-gateway.conf";
/// `SslPort` when absent (flexVDI documents 443).
pub const DEFAULT_SSL_PORT: u16 = 443;
/// `FirstSpicePort` when absent (QEMU's first Spice/VNC port).
pub const DEFAULT_FIRST_SPICE_PORT: u16 = 5900;
/// `LastSpicePort` when absent.
pub const DEFAULT_LAST_SPICE_PORT: u16 = 65535;
/// `KeepAlive` when absent, in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u32 = 30;
/// `PongTimeout` when absent, in seconds.
pub const DEFAULT_PONG_TIMEOUT_SECS: u32 = 10;
/// `LDAPPort` when absent.
pub const DEFAULT_LDAP_PORT: u16 = 389;
/// `LDAPSearchRDN` when absent.
pub const DEFAULT_SEARCH_RDN: &str = "uid";
/// `LDAPCacheSecs` when absent.
pub const DEFAULT_CACHE_SECS: u64 = 60;
/// The longest `LDAPCacheSecs` accepted: one day.
pub const MAX_CACHE_SECS: u64 = 86_400;
/// How many users the routing cache remembers at most.
pub const CACHE_MAX_ENTRIES: usize = 10_000;
/// TCP connect timeout to the directory, unless changed with [`ManagerRouter::with_timeouts`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the bind and of the search (per reply), unless changed.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Every key a flexVDI gateway configuration may hold.
const KEYS: [&str; 21] = [
    "ManagerIP",
    "SslPort",
    "FirstSpicePort",
    "LastSpicePort",
    "CertFile",
    "KeyFile",
    "KeepAlive",
    "PongTimeout",
    "ListenIP",
    "PlainPort",
    "Debug",
    "LDAPServer",
    "LDAPPort",
    "LDAPUsername",
    "LDAPPassword",
    "LDAPBaseDN",
    "LDAPSearchRDN",
    "LDAPAttribute",
    "LDAPOneShot",
    "LDAPFallback",
    "LDAPCacheSecs",
];

/// A configuration that cannot be used: which key (or where in the file), why, and what to do.
/// No message contains the value of `LDAPPassword`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlexVdiError {
    #[error(
        "not valid JSON at line {line}, column {column}: {reason}: fix the syntax there (a \
         missing comma, quote or brace is the usual cause)"
    )]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "the configuration must be one JSON object such as {{\"ManagerIP\": \"10.0.0.2\"}}, \
         not {found}"
    )]
    NotAnObject { found: &'static str },
    #[error("{key} must be {expected}, not {found}: write it as {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{key}: {reason}")]
    BadValue { key: &'static str, reason: String },
    #[error("{key} is missing: {reason}")]
    Missing { key: &'static str, reason: String },
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<FlexVdiError>,
    },
}

impl FlexVdiError {
    /// The configuration key the error is about, if it is about one.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            FlexVdiError::WrongType { key, .. }
            | FlexVdiError::BadValue { key, .. }
            | FlexVdiError::Missing { key, .. } => Some(key),
            FlexVdiError::InFile { source, .. } => source.key(),
            FlexVdiError::Json { .. }
            | FlexVdiError::NotAnObject { .. }
            | FlexVdiError::Read { .. } => None,
        }
    }
}

pub type Result<T, E = FlexVdiError> = std::result::Result<T, E>;

/// A flexVDI gateway configuration, with defaults applied and every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexVdiConfig {
    /// Address (IP or host name) of the default manager.
    pub manager_ip: String,
    pub ssl_port: u16,
    /// The desktop (Spice) ports tunnels may reach: `first_spice_port..=last_spice_port`.
    pub first_spice_port: u16,
    pub last_spice_port: u16,
    /// Both set, or both `None` (then a certificate is generated).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// WebSocket ping interval in seconds; 0 = no pings.
    pub keepalive: u32,
    /// Seconds a ping may stay unanswered before the tunnel is closed; 0 = never closed for it.
    pub pong_timeout: u32,
    pub listen_ip: IpAddr,
    /// An additional listener without TLS.
    pub plain_port: Option<u16>,
    pub debug: bool,
    /// Per-user manager routing; `None` sends everyone to `manager_ip`.
    pub ldap: Option<LdapRouting>,
}

impl FlexVdiConfig {
    /// No certificate is configured: the caller generates one (see
    /// [`crate::tls::generate_self_signed`]).
    pub fn generates_certificate(&self) -> bool {
        self.cert_file.is_none()
    }

    /// The configured certificate and key files, if any.
    pub fn certificate_files(&self) -> Option<(&Path, &Path)> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// Whether a tunnel may reach desktop port `port`.
    pub fn spice_port_allowed(&self, port: u16) -> bool {
        (self.first_spice_port..=self.last_spice_port).contains(&port)
    }

    /// The router for this configuration.
    pub fn router(&self) -> ManagerRouter {
        ManagerRouter::new(self.manager_ip.clone(), self.ldap.clone())
    }
}

/// How users are sent to their own manager through LDAP. `Debug` never shows the password,
/// and the password is wiped from memory when the value is dropped.
///
/// [`parse`] checks every field; a value built by hand must keep `search_rdn` and `attribute`
/// plain attribute names, as they go into the search filter unescaped.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapRouting {
    /// Host name or IP address of the directory (no scheme, no port).
    pub server: String,
    pub port: u16,
    /// Bind DN (or whatever the directory accepts as a bind name); empty binds anonymously.
    pub username: String,
    pub password: String,
    pub base_dn: String,
    /// Attribute matched against the user name.
    pub search_rdn: String,
    /// Attribute holding the user's manager address.
    pub attribute: String,
    /// Search one level under `base_dn` only, instead of the whole subtree.
    pub one_shot: bool,
    /// Users without a manager value, or not found, go to `ManagerIP` instead of failing.
    pub fallback: bool,
    /// Seconds an answer is reused; 0 = no cache.
    pub cache_secs: u64,
}

impl fmt::Debug for LdapRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapRouting")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("base_dn", &self.base_dn)
            .field("search_rdn", &self.search_rdn)
            .field("attribute", &self.attribute)
            .field("one_shot", &self.one_shot)
            .field("fallback", &self.fallback)
            .field("cache_secs", &self.cache_secs)
            .finish()
    }
}

impl Drop for LdapRouting {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl LdapRouting {
    /// `ldap://server:port`, with brackets around an IPv6 address.
    pub fn url(&self) -> String {
        if self.server.parse::<Ipv6Addr>().is_ok() {
            format!("ldap://[{}]:{}", self.server, self.port)
        } else {
            format!("ldap://{}:{}", self.server, self.port)
        }
    }

    /// The search filter for `user`, escaped so that the name cannot change the filter.
    pub fn filter_for(&self, user: &str) -> String {
        format!("({}={})", self.search_rdn, ldap3::ldap_escape(user))
    }

    fn scope(&self) -> Scope {
        if self.one_shot {
            Scope::OneLevel
        } else {
            Scope::Subtree
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the file
// ---------------------------------------------------------------------------------------------

/// Reads the configuration file at `path`. Errors name the file; warnings (unknown keys,
/// settings that have no effect) come back with the configuration.
pub fn load(path: &Path) -> Result<(FlexVdiConfig, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| FlexVdiError::Read {
        path: path.to_path_buf(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file: check the path given to --flexvdi-config".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: let the gatehouse user read it".to_string()
            }
            std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_string(),
            _ => e.to_string(),
        },
    })?;
    parse(&text).map_err(|e| FlexVdiError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Parses the JSON text of a flexVDI gateway configuration.
pub fn parse(text: &str) -> Result<(FlexVdiConfig, Vec<String>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let reason = full
            .rsplit_once(" at line ")
            .map_or(full.as_str(), |(r, _)| r)
            .to_string();
        FlexVdiError::Json {
            line: e.line(),
            column: e.column(),
            reason,
        }
    })?;
    let Value::Object(map) = value else {
        return Err(FlexVdiError::NotAnObject {
            found: kind(&value),
        });
    };
    let mut warnings = unknown_keys(&map);
    let r = Reader { map: &map };

    let manager_ip = r.host("ManagerIP")?.ok_or(FlexVdiError::Missing {
        key: "ManagerIP",
        reason: "set it to the address of the flexVDI manager users connect to".into(),
    })?;
    let ssl_port = r.port("SslPort")?.unwrap_or(DEFAULT_SSL_PORT);
    let first_spice_port = r
        .port("FirstSpicePort")?
        .unwrap_or(DEFAULT_FIRST_SPICE_PORT);
    let last_spice_port = r.port("LastSpicePort")?.unwrap_or(DEFAULT_LAST_SPICE_PORT);
    if first_spice_port > last_spice_port {
        return Err(FlexVdiError::BadValue {
            key: "FirstSpicePort",
            reason: format!(
                "{first_spice_port} is above LastSpicePort ({last_spice_port}): the first port \
                 of the Spice range must not be above the last"
            ),
        });
    }

    let cert_file = r.path("CertFile")?;
    let key_file = r.path("KeyFile")?;
    match (&cert_file, &key_file) {
        (Some(_), None) => {
            return Err(FlexVdiError::Missing {
                key: "KeyFile",
                reason: "CertFile is set, so KeyFile must name its private key: set both, or \
                         neither to have a certificate generated"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(FlexVdiError::Missing {
                key: "CertFile",
                reason: "KeyFile is set, so CertFile must name its certificate: set both, or \
                         neither to have a certificate generated"
                    .into(),
            });
        }
        _ => {}
    }

    let keepalive = r.secs_u32("KeepAlive")?.unwrap_or(DEFAULT_KEEPALIVE_SECS);
    let pong_timeout = r
        .secs_u32("PongTimeout")?
        .unwrap_or(DEFAULT_PONG_TIMEOUT_SECS);
    if keepalive == 0 && r.present("PongTimeout") {
        warnings
            .push("PongTimeout has no effect while KeepAlive is 0 (no pings are sent)".to_string());
    }

    let listen_ip = match r.string("ListenIP")? {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) if s.trim().is_empty() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) => s.trim().parse().map_err(|_| FlexVdiError::BadValue {
            key: "ListenIP",
            reason: format!(
                "{s:?} is not an IP address: give an address of this machine, or 0.0.0.0 (all \
                 IPv4 addresses) or :: (all addresses)"
            ),
        })?,
    };
    let plain_port = r.port("PlainPort")?;
    if plain_port == Some(ssl_port) {
        return Err(FlexVdiError::BadValue {
            key: "PlainPort",
            reason: format!(
                "{ssl_port} is also SslPort: one port cannot serve TLS and plain connections; \
                 choose another port, or leave PlainPort out"
            ),
        });
    }
    let debug = r.bool("Debug")?.unwrap_or(false);
    let ldap = ldap_routing(&r, &mut warnings)?;

    Ok((
        FlexVdiConfig {
            manager_ip,
            ssl_port,
            first_spice_port,
            last_spice_port,
            cert_file,
            key_file,
            keepalive,
            pong_timeout,
            listen_ip,
            plain_port,
            debug,
            ldap,
        },
        warnings,
    ))
}

/// The `LDAP…` keys: `None` without `LDAPServer` (with a warning if other LDAP keys are set).
fn ldap_routing(r: &Reader<'_>, warnings: &mut Vec<String>) -> Result<Option<LdapRouting>> {
    let server = r.host("LDAPServer")?;
    // Checked even without a server, so that a mistake is reported before it matters.
    let port = r.port("LDAPPort")?.unwrap_or(DEFAULT_LDAP_PORT);
    let username = r.string("LDAPUsername")?.unwrap_or_default();
    let password = r.string("LDAPPassword")?.unwrap_or_default();
    let base_dn = r
        .string("LDAPBaseDN")?
        .unwrap_or_default()
        .trim()
        .to_string();
    let search_rdn = r
        .attribute("LDAPSearchRDN")?
        .unwrap_or_else(|| DEFAULT_SEARCH_RDN.to_string());
    let attribute = r.attribute("LDAPAttribute")?;
    let one_shot = r.bool("LDAPOneShot")?.unwrap_or(false);
    let fallback = r.bool("LDAPFallback")?.unwrap_or(true);
    let cache_secs = r.secs_u64("LDAPCacheSecs")?.unwrap_or(DEFAULT_CACHE_SECS);
    if cache_secs > MAX_CACHE_SECS {
        return Err(FlexVdiError::BadValue {
            key: "LDAPCacheSecs",
            reason: format!(
                "{cache_secs} is more than a day ({MAX_CACHE_SECS}): a user moved to another \
                 manager would wait that long; use {MAX_CACHE_SECS} or less"
            ),
        });
    }

    let Some(server) = server else {
        let set: Vec<&str> = KEYS
            .iter()
            .copied()
            .filter(|k| k.starts_with("LDAP") && *k != "LDAPServer" && r.present(k))
            .collect();
        if !set.is_empty() {
            warnings.push(format!(
                "{} set without LDAPServer: LDAP routing is off and every user goes to \
                 ManagerIP; set LDAPServer to turn it on",
                set.join(", ")
            ));
        }
        return Ok(None);
    };
    if base_dn.is_empty() {
        return Err(FlexVdiError::Missing {
            key: "LDAPBaseDN",
            reason: "LDAPServer is set, so name the branch where users are searched, such as \
                     ou=people,dc=example,dc=com"
                .into(),
        });
    }
    if !base_dn.contains('=') {
        return Err(FlexVdiError::BadValue {
            key: "LDAPBaseDN",
            reason: format!(
                "{base_dn:?} is not a distinguished name: write it as attribute=value pairs \
                 separated by commas, such as ou=people,dc=example,dc=com"
            ),
        });
    }
    let attribute = attribute.ok_or(FlexVdiError::Missing {
        key: "LDAPAttribute",
        reason: "LDAPServer is set, so name the user attribute that holds each user's manager \
                 address (such as description)"
            .into(),
    })?;
    if username.is_empty() != password.is_empty() {
        let (key, other) = if username.is_empty() {
            ("LDAPUsername", "LDAPPassword")
        } else {
            ("LDAPPassword", "LDAPUsername")
        };
        return Err(FlexVdiError::Missing {
            key,
            reason: format!(
                "{other} is set, so {key} must be too: set both to bind as an account, or \
                 neither to bind anonymously"
            ),
        });
    }
    Ok(Some(LdapRouting {
        server,
        port,
        username,
        password,
        base_dn,
        search_rdn,
        attribute,
        one_shot,
        fallback,
        cache_secs,
    }))
}

/// One warning per key that is not a flexVDI gateway key.
fn unknown_keys(map: &Map<String, Value>) -> Vec<String> {
    map.keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .map(
            |k| match KEYS.iter().find(|known| known.eq_ignore_ascii_case(k)) {
                Some(known) => format!(
                    "unknown key {k:?} ignored: did you mean {known:?}? (keys are case-sensitive)"
                ),
                None => format!("unknown key {k:?} ignored: it is not a flexVDI gateway setting"),
            },
        )
        .collect()
}

/// The JSON type of `v`, in words (never the value: it could be a password).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the keys of the object; `null` reads as absent.
struct Reader<'a> {
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn present(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn string(&self, key: &'static str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(FlexVdiError::WrongType {
                key,
                expected: "a string",
                found: kind(other),
            }),
        }
    }

    fn bool(&self, key: &'static str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(FlexVdiError::WrongType {
                key,
                expected: "true or false",
                found: kind(other),
            }),
        }
    }

    /// A whole number of 0 or more.
    fn unsigned(&self, key: &'static str, expected: &'static str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    Ok(Some(u))
                } else if n.as_i64().is_some() {
                    Err(FlexVdiError::BadValue {
                        key,
                        reason: format!("{n} is negative: use {expected}"),
                    })
                } else {
                    Err(FlexVdiError::BadValue {
                        key,
                        reason: format!("{n} is not a whole number: use {expected}"),
                    })
                }
            }
            Some(other) => Err(FlexVdiError::WrongType {
                key,
                expected,
                found: kind(other),
            }),
        }
    }

    fn port(&self, key: &'static str) -> Result<Option<u16>> {
        const EXPECTED: &str = "a port number from 1 to 65535";
        match self.unsigned(key, EXPECTED)? {
            None => Ok(None),
            Some(0) => Err(FlexVdiError::BadValue {
                key,
                reason: format!("0 is not a usable port: use {EXPECTED}"),
            }),
            Some(p) => u16::try_from(p)
                .map(Some)
                .map_err(|_| FlexVdiError::BadValue {
                    key,
                    reason: format!("{p} is above 65535: use {EXPECTED}"),
                }),
        }
    }

    fn secs_u32(&self, key: &'static str) -> Result<Option<u32>> {
        const EXPECTED: &str = "a whole number of seconds, 0 or more";
        match self.unsigned(key, EXPECTED)? {
            None => Ok(None),
            Some(s) => u32::try_from(s)
                .map(Some)
                .map_err(|_| FlexVdiError::BadValue {
                    key,
                    reason: format!("{s} seconds is too long: use at most {}", u32::MAX),
                }),
        }
    }

    fn secs_u64(&self, key: &'static str) -> Result<Option<u64>> {
        self.unsigned(key, "a whole number of seconds, 0 or more")
    }

    /// A host name or IP address; empty reads as absent.
    fn host(&self, key: &'static str) -> Result<Option<String>> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if s.contains("://") || s.contains('/') {
            return Err(FlexVdiError::BadValue {
                key,
                reason: format!(
                    "{s:?} is not a host: give only a host name or IP address, without a scheme \
                     or path"
                ),
            });
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FlexVdiError::BadValue {
                key,
                reason: format!("{s:?} contains spaces: give one host name or IP address"),
            });
        }
        Ok(Some(s.to_string()))
    }

    /// A file path; empty reads as absent.
    fn path(&self, key: &'static str) -> Result<Option<PathBuf>> {
        Ok(self
            .string(key)?
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from))
    }

    /// An LDAP attribute name (letters, digits and hyphens, starting with a letter) or a
    /// numeric OID; empty reads as absent.
    fn attribute(&self, key: &'static str) -> Result<Option<String>> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let name = s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let oid = s
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if name || oid {
            Ok(Some(s.to_string()))
        } else {
            Err(FlexVdiError::BadValue {
                key,
                reason: format!(
                    "{s:?} is not an LDAP attribute name: use a name such as uid, cn or \
                     description (letters, digits and hyphens)"
                ),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// Why a user could not be sent to a manager. Messages say what to do; none contains the
/// bind password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "user {user:?} was not found in the directory ({filter} under {base_dn}) and \
         LDAPFallback is off: check the user name, LDAPBaseDN and LDAPOneShot, or turn \
         LDAPFallback on to send such users to ManagerIP"
    )]
    UnknownUser {
        user: String,
        filter: String,
        base_dn: String,
    },
    #[error(
        "user {user:?} has no {attribute} naming their manager and LDAPFallback is off: set \
         {attribute} on the user's directory entry, or turn LDAPFallback on to send such users \
         to ManagerIP"
    )]
    NoManager { user: String, attribute: String },
    #[error(
        "{count} directory entries match {filter} under {base_dn}: make LDAPSearchRDN an \
         attribute that is unique per user, or narrow LDAPBaseDN"
    )]
    Ambiguous {
        filter: String,
        base_dn: String,
        count: usize,
    },
    #[error("LDAP server {server} cannot be reached: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "LDAP server {server} did not answer the {step} within {secs} s: check that it is \
         healthy and reachable"
    )]
    Timeout {
        server: String,
        step: &'static str,
        secs: u64,
    },
    #[error(
        "LDAP server {server} refused the bind as {username:?}: {reason}: check LDAPUsername \
         and LDAPPassword"
    )]
    Bind {
        server: String,
        username: String,
        reason: String,
    },
    #[error("searching LDAP server {server} failed: {reason}")]
    Search { server: String, reason: String },
}

/// The time source of the routing cache: [`Instant::now`] unless a test injects its own.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Answers "which manager does this user go to?" from `ManagerIP` and, when configured, each
/// user's LDAP attribute. Share it (`Arc`) between connections.
pub struct ManagerRouter {
    manager_ip: String,
    ldap: Option<LdapRouting>,
    connect_timeout: Duration,
    operation_timeout: Duration,
    cache: Mutex<Cache>,
    clock: Clock,
}

impl fmt::Debug for ManagerRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerRouter")
            .field("manager_ip", &self.manager_ip)
            .field("ldap", &self.ldap)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl ManagerRouter {
    pub fn new(manager_ip: impl Into<String>, ldap: Option<LdapRouting>) -> Self {
        ManagerRouter {
            manager_ip: manager_ip.into(),
            ldap,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            cache: Mutex::new(Cache::new(CACHE_MAX_ENTRIES)),
            clock: Arc::new(Instant::now),
        }
    }

    /// Changes the TCP connect timeout and the bind/search timeout (at least 1 ms each).
    pub fn with_timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.connect_timeout = connect.max(Duration::from_millis(1));
        self.operation_timeout = operation.max(Duration::from_millis(1));
        self
    }

    /// Replaces the cache's time source (tests move time forward without sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn manager_ip(&self) -> &str {
        &self.manager_ip
    }

    pub fn ldap(&self) -> Option<&LdapRouting> {
        self.ldap.as_ref()
    }

    /// Forgets every cached answer: the next request of each user asks the directory.
    pub fn clear_cache(&self) {
        self.lock_cache().clear();
    }

    /// How many users' answers are cached now.
    pub fn cached_users(&self) -> usize {
        self.lock_cache().len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address of the manager `user` goes to.
    #[tracing::instrument(skip(self))]
    pub async fn manager_for(&self, user: &str) -> Result<String, RouteError> {
        let Some(ldap) = &self.ldap else {
            return Ok(self.manager_ip.clone());
        };
        if ldap.cache_secs > 0 {
            let now = (self.clock)();
            if let Some(hit) = self.lock_cache().get(user, now) {
                return Ok(hit);
            }
        }
        let answer = self.ask_directory(ldap, user).await?;
        if ldap.cache_secs > 0 {
            let now = (self.clock)();
            let expires = now.checked_add(Duration::from_secs(ldap.cache_secs));
            if let Some(expires) = expires {
                self.lock_cache().insert(user, answer.clone(), expires, now);
            }
        }
        Ok(answer)
    }

    /// One directory lookup, with the fallback rules applied.
    async fn ask_directory(&self, ldap: &LdapRouting, user: &str) -> Result<String, RouteError> {
        let filter = ldap.filter_for(user);
        let found = if user.trim().is_empty() {
            Found::Nobody
        } else {
            self.search(ldap, &filter).await?
        };
        match found {
            Found::Manager(m) => {
                tracing::debug!(manager = %m, "user routed by LDAP");
                Ok(m)
            }
            Found::Nobody if ldap.fallback => {
                tracing::debug!("user not in the directory; routed to ManagerIP");
                Ok(self.manager_ip.clone())
            }
            Found::NoValue if ldap.fallback => {
                tracing::debug!("user has no manager attribute; routed to ManagerIP");
                Ok(self.manager_ip.clone())
            }
            Found::Nobody => Err(RouteError::UnknownUser {
                user: user.to_string(),
                filter,
                base_dn: ldap.base_dn.clone(),
            }),
            Found::NoValue => Err(RouteError::NoManager {
                user: user.to_string(),
                attribute: ldap.attribute.clone(),
            }),
        }
    }

    /// Connects, binds, searches and reads the attribute; the connection is closed after.
    async fn search(&self, ldap: &LdapRouting, filter: &str) -> Result<Found, RouteError> {
        let server = format!("{}:{}", ldap.server, ldap.port);
        let settings = LdapConnSettings::new().set_conn_timeout(self.connect_timeout);
        // ldap3's connect timeout covers the TCP connect; the outer one also covers DNS.
        let connect = tokio::time::timeout(
            self.connect_timeout + self.operation_timeout,
            LdapConnAsync::with_settings(settings, &ldap.url()),
        )
        .await;
        let (conn, mut handle) = match connect {
            Err(_) | Ok(Err(LdapError::Timeout { .. })) => {
                return Err(RouteError::Timeout {
                    server,
                    step: "connection",
                    secs: self.connect_timeout.as_secs().max(1),
                });
            }
            Ok(Err(e)) => {
                return Err(RouteError::Unreachable {
                    server,
                    reason: format!(
                        "{}; check LDAPServer, LDAPPort and the firewall",
                        reason(&e)
                    ),
                });
            }
            Ok(Ok(pair)) => pair,
        };
        let driver = DriverGuard(tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP routing connection ended");
            }
        }));
        let op_secs = self.operation_timeout.as_secs().max(1);
        let timeout = |step| RouteError::Timeout {
            server: server.clone(),
            step,
            secs: op_secs,
        };

        let bind = handle
            .with_timeout(self.operation_timeout)
            .simple_bind(&ldap.username, &ldap.password)
            .await;
        match bind {
            Err(LdapError::Timeout { .. }) => return Err(timeout("bind")),
            Err(e) => {
                return Err(RouteError::Unreachable {
                    server,
                    reason: reason(&e),
                });
            }
            Ok(res) if res.rc != 0 => {
                return Err(RouteError::Bind {
                    server,
                    username: ldap.username.clone(),
                    reason: format!("result {} ({})", res.rc, bind_reason(res.rc, &res.text)),
                });
            }
            Ok(_) => {}
        }

        let search = handle
            .with_timeout(self.operation_timeout)
            .search(
                &ldap.base_dn,
                ldap.scope(),
                filter,
                vec![ldap.attribute.as_str()],
            )
            .await;
        let (entries, res) = match search {
            Err(LdapError::Timeout { .. }) => return Err(timeout("search")),
            Err(e) => {
                return Err(RouteError::Search {
                    server,
                    reason: reason(&e),
                });
            }
            Ok(ldap3::SearchResult(entries, res)) => (entries, res),
        };
        let _ = handle.unbind().await;
        drop(driver);
        match res.rc {
            0 | 10 => {}
            32 => {
                return Err(RouteError::Search {
                    server,
                    reason: format!(
                        "LDAPBaseDN {:?} does not exist in the directory: check its spelling",
                        ldap.base_dn
                    ),
                });
            }
            rc => {
                return Err(RouteError::Search {
                    server,
                    reason: format!("result {rc} ({})", res.text),
                });
            }
        }
        // `Ldap::search` returns entries only: continuation references go to `res.refs`.
        let entries: Vec<SearchEntry> = entries.into_iter().map(SearchEntry::construct).collect();
        match entries.as_slice() {
            [] => Ok(Found::Nobody),
            [entry] => Ok(manager_value(entry, &ldap.attribute)
                .map_or(Found::NoValue, |m| Found::Manager(m.to_string()))),
            many => Err(RouteError::Ambiguous {
                filter: filter.to_string(),
                base_dn: ldap.base_dn.clone(),
                count: many.len(),
            }),
        }
    }
}

/// What the directory said about a user.
enum Found {
    Nobody,
    NoValue,
    Manager(String),
}

/// The first non-empty value of `attribute` (names are case-insensitive), trimmed.
fn manager_value<'e>(entry: &'e SearchEntry, attribute: &str) -> Option<&'e str> {
    entry
        .attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(attribute))
        .flat_map(|(_, values)| values.iter())
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

/// Aborts the connection's driver task when the lookup ends, however it ends.
struct DriverGuard(tokio::task::JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reason(e: &LdapError) -> String {
    match e {
        LdapError::Io { source } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => source.to_string(),
        },
        LdapError::EndOfStream | LdapError::ResultRecv { .. } | LdapError::OpSend { .. } => {
            "the directory closed the connection".to_string()
        }
        LdapError::LdapResult { result } => format!("result {} ({})", result.rc, result.text),
        other => other.to_string(),
    }
}

fn bind_reason(rc: u32, text: &str) -> String {
    match rc {
        49 => "invalid credentials".to_string(),
        13 => "the directory requires TLS for binds, which flexVDI's plain LDAP lacks".to_string(),
        _ if text.is_empty() => "refused".to_string(),
        _ => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The answer cache
// ---------------------------------------------------------------------------------------------

/// Answers per user name with their expiry; never more than `max` users.
struct Cache {
    max: usize,
    entries: HashMap<String, (String, Instant)>,
}

impl Cache {
    fn new(max: usize) -> Self {
        Cache {
            max: max.max(1),
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, user: &str, now: Instant) -> Option<String> {
        match self.entries.get(user) {
            Some((manager, expires)) if now < *expires => Some(manager.clone()),
            Some(_) => {
                self.entries.remove(user);
                None
            }
            None => None,
        }
    }

    /// Stores an answer; when full, drops expired answers first, then the one expiring soonest.
    fn insert(&mut self, user: &str, manager: String, expires: Instant, now: Instant) {
        if !self.entries.contains_key(user) && self.entries.len() >= self.max {
            self.entries.retain(|_, (_, e)| now < *e);
            if self.entries.len() >= self.max
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(user.to_string(), (manager, expires));
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (FlexVdiConfig, Vec<String>) {
        parse(text).unwrap_or_else(|e| panic!("{text} parses: {e}"))
    }

    fn err(text: &str) -> FlexVdiError {
        match parse(text) {
            Ok((c, _)) => panic!("{text} should be refused, got {c:?}"),
            Err(e) => e,
        }
    }

    /// The error's key and message, checking that the message names the key.
    fn refused(text: &str) -> (&'static str, String) {
        let e = err(text);
        let key = e.key().unwrap_or_else(|| panic!("{e} names a key"));
        let msg = e.to_string();
        assert!(msg.contains(key), "{msg:?} names {key}");
        (key, msg)
    }

    const LDAP: &str = r#""ManagerIP": "10.0.0.2", "LDAPServer": "ldap.example.com",
        "LDAPBaseDN": "ou=people,dc=example,dc=com", "LDAPAttribute": "description""#;

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let (c, warnings) = ok(r#"{"ManagerIP": "10.0.0.2"}"#);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c,
            FlexVdiConfig {
                manager_ip: "10.0.0.2".into(),
                ssl_port: 443,
                first_spice_port: 5900,
                last_spice_port: 65535,
                cert_file: None,
                key_file: None,
                keepalive: 30,
                pong_timeout: 10,
                listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                plain_port: None,
                debug: false,
                ldap: None,
            }
        );
        assert!(c.generates_certificate());
        assert_eq!(c.certificate_files(), None);
        assert!(c.spice_port_allowed(5900) && c.spice_port_allowed(65535));
        assert!(!c.spice_port_allowed(443));
    }

    #[test]
    fn every_key_is_read() {
        let (c, warnings) = ok(r#"{
            "ManagerIP": "manager.example.com", "SslPort": 8443,
            "FirstSpicePort": 5900, "LastSpicePort": 6000,
            "CertFile": "/etc/flexvdi/cert.pem", "KeyFile": "/etc/flexvdi/key.pem",
            "KeepAlive": 0, "PongTimeout": 5, "ListenIP": "::1", "PlainPort": 8080,
            "Debug": true, "LDAPServer": "192.0.2.7", "LDAPPort": 3389,
            "LDAPUsername": "cn=search,dc=example,dc=com", "LDAPPassword": "s3cret",
            "LDAPBaseDN": "dc=example,dc=com", "LDAPSearchRDN": "sAMAccountName",
            "LDAPAttribute": "flexVDIManager", "LDAPOneShot": true, "LDAPFallback": false,
            "LDAPCacheSecs": 0
        }"#);
        assert_eq!(c.manager_ip, "manager.example.com");
        assert_eq!(c.ssl_port, 8443);
        assert_eq!((c.first_spice_port, c.last_spice_port), (5900, 6000));
        assert!(!c.spice_port_allowed(6001));
        assert_eq!(
            c.certificate_files(),
            Some((
                Path::new("/etc/flexvdi/cert.pem"),
                Path::new("/etc/flexvdi/key.pem")
            ))
        );
        assert!(!c.generates_certificate());
        assert_eq!((c.keepalive, c.pong_timeout), (0, 5));
        assert_eq!(
            warnings,
            vec!["PongTimeout has no effect while KeepAlive is 0 (no pings are sent)"]
        );
        assert_eq!(c.listen_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(c.plain_port, Some(8080));
        assert!(c.debug);
        let ldap = c.ldap.expect("LDAP routing");
        assert_eq!(ldap.url(), "ldap://192.0.2.7:3389");
        assert_eq!(ldap.username, "cn=search,dc=example,dc=com");
        assert_eq!(ldap.password, "s3cret");
        assert_eq!(ldap.base_dn, "dc=example,dc=com");
        assert_eq!(ldap.search_rdn, "sAMAccountName");
        assert_eq!(ldap.attribute, "flexVDIManager");
        assert!(ldap.one_shot);
        assert!(!ldap.fallback);
        assert_eq!(ldap.cache_secs, 0);
    }

    #[test]
    fn ldap_defaults() {
        let (c, warnings) = ok(&format!("{{{LDAP}}}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let ldap = c.ldap.expect("LDAP routing");
        assert_eq!(ldap.port, 389);
        assert_eq!(ldap.url(), "ldap://ldap.example.com:389");
        assert_eq!((ldap.username.as_str(), ldap.password.as_str()), ("", ""));
        assert_eq!(ldap.search_rdn, "uid");
        assert!(!ldap.one_shot);
        assert!(ldap.fallback);
        assert_eq!(ldap.cache_secs, 60);
    }

    #[test]
    fn the_password_never_shows() {
        let (c, _) = ok(&format!(
            r#"{{{LDAP}, "LDAPUsername": "cn=x", "LDAPPassword": "hunter2-secret"}}"#
        ));
        let shown = format!("{c:?} {:?}", c.router());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // A wrong type on the password key does not echo the value either.
        let e = err(&format!(
            r#"{{{LDAP}, "LDAPUsername": "cn=x", "LDAPPassword": 12345}}"#
        ));
        assert_eq!(e.key(), Some("LDAPPassword"));
        assert!(!e.to_string().contains("12345"), "{e}");
    }

    #[test]
    fn an_ipv6_ldap_server_is_bracketed() {
        let (c, _) = ok(&format!(r#"{{{LDAP}, "LDAPServer": "2001:db8::7"}}"#));
        assert_eq!(c.ldap.expect("ldap").url(), "ldap://[2001:db8::7]:389");
    }

    #[test]
    fn the_filter_is_escaped() {
        let (c, _) = ok(&format!("{{{LDAP}}}"));
        let ldap = c.ldap.expect("ldap");
        assert_eq!(ldap.filter_for("alice"), "(uid=alice)");
        assert_eq!(ldap.filter_for("*)(uid=*"), r"(uid=\2a\29\28uid=\2a)");
        assert_eq!(ldap.filter_for(r"a\b"), r"(uid=a\5cb)");
    }

    #[test]
    fn unknown_keys_are_warnings_naming_the_key() {
        let (c, warnings) = ok(r#"{"ManagerIP": "10.0.0.2", "managerip": "x", "Colour": 3}"#);
        assert_eq!(c.manager_ip, "10.0.0.2");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"Colour\"") && w.contains("not a flexVDI")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"managerip\"") && w.contains("did you mean \"ManagerIP\"")),
            "{warnings:?}"
        );
    }

    #[test]
    fn ldap_keys_without_a_server_are_a_warning() {
        let (c, warnings) =
            ok(r#"{"ManagerIP": "10.0.0.2", "LDAPBaseDN": "dc=x", "LDAPFallback": false}"#);
        assert_eq!(c.ldap, None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("LDAPBaseDN, LDAPFallback set without LDAPServer"));
    }

    #[test]
    fn null_and_empty_strings_read_as_absent() {
        let (c, _) = ok(
            r#"{"ManagerIP": "10.0.0.2", "SslPort": null, "CertFile": "", "KeyFile": "",
                "ListenIP": "", "PlainPort": null, "LDAPServer": ""}"#,
        );
        assert_eq!(c.ssl_port, 443);
        assert!(c.generates_certificate());
        assert_eq!(c.listen_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.plain_port, None);
        assert_eq!(c.ldap, None);
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let (c, _) = ok("\u{feff}{\"ManagerIP\": \"10.0.0.2\"}");
        assert_eq!(c.manager_ip, "10.0.0.2");
    }

    #[test]
    fn malformed_json_gives_line_and_column() {
        let e = err("{\n  \"ManagerIP\": \"10.0.0.2\"\n  \"SslPort\": 443\n}");
        let FlexVdiError::Json { line, column, .. } = &e else {
            panic!("a JSON error, got {e:?}");
        };
        assert_eq!((*line, *column), (3, 3));
        let msg = e.to_string();
        assert!(msg.contains("line 3, column 3"), "{msg}");
        assert!(msg.contains("expected `,` or `}`"), "{msg}");

        let e = err("{\"ManagerIP\": \"10.0.0.2\",}");
        assert!(matches!(e, FlexVdiError::Json { line: 1, .. }), "{e:?}");
        assert!(matches!(err(""), FlexVdiError::Json { .. }));
    }

    #[test]
    fn the_top_level_must_be_an_object() {
        assert_eq!(
            err("[1, 2]"),
            FlexVdiError::NotAnObject { found: "an array" }
        );
        assert_eq!(err("null"), FlexVdiError::NotAnObject { found: "null" });
    }

    #[test]
    fn manager_ip_is_required_and_must_be_a_host() {
        assert_eq!(refused("{}").0, "ManagerIP");
        assert_eq!(refused(r#"{"ManagerIP": "  "}"#).0, "ManagerIP");
        let (key, msg) = refused(r#"{"ManagerIP": "https://10.0.0.2/"}"#);
        assert_eq!(key, "ManagerIP");
        assert!(msg.contains("without a scheme"), "{msg}");
        assert_eq!(refused(r#"{"ManagerIP": "a b"}"#).0, "ManagerIP");
        let (key, msg) = refused(r#"{"ManagerIP": 10}"#);
        assert_eq!(key, "ManagerIP");
        assert!(msg.contains("must be a string, not a number"), "{msg}");
    }

    #[test]
    fn ports_out_of_range_or_of_the_wrong_type_are_refused() {
        for key in [
            "SslPort",
            "FirstSpicePort",
            "LastSpicePort",
            "PlainPort",
            "LDAPPort",
        ] {
            let extra = if key == "LDAPPort" {
                LDAP
            } else {
                r#""ManagerIP": "m""#
            };
            let (k, msg) = refused(&format!(r#"{{{extra}, "{key}": 0}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("0 is not a usable port"), "{msg}");
            let (k, msg) = refused(&format!(r#"{{{extra}, "{key}": 65536}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("65536 is above 65535"), "{msg}");
            let (k, msg) = refused(&format!(r#"{{{extra}, "{key}": -1}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("negative"), "{msg}");
            let (k, msg) = refused(&format!(r#"{{{extra}, "{key}": "443"}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("must be a port number"), "{msg}");
            assert!(msg.contains("not a string"), "{msg}");
            let (k, msg) = refused(&format!(r#"{{{extra}, "{key}": 44.5}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("not a whole number"), "{msg}");
        }
    }

    #[test]
    fn the_spice_range_must_not_be_reversed() {
        let (key, msg) =
            refused(r#"{"ManagerIP": "m", "FirstSpicePort": 6000, "LastSpicePort": 5999}"#);
        assert_eq!(key, "FirstSpicePort");
        assert!(msg.contains("LastSpicePort (5999)"), "{msg}");
        let (c, _) = ok(r#"{"ManagerIP": "m", "FirstSpicePort": 5999, "LastSpicePort": 5999}"#);
        assert!(c.spice_port_allowed(5999));
        // A range reversed by the default of the other end.
        assert_eq!(
            refused(r#"{"ManagerIP": "m", "LastSpicePort": 5000}"#).0,
            "FirstSpicePort"
        );
    }

    #[test]
    fn plain_port_cannot_be_the_ssl_port() {
        let (key, msg) = refused(r#"{"ManagerIP": "m", "SslPort": 8443, "PlainPort": 8443}"#);
        assert_eq!(key, "PlainPort");
        assert!(msg.contains("also SslPort"), "{msg}");
    }

    #[test]
    fn keepalive_and_timeouts_must_be_whole_non_negative_seconds() {
        for key in ["KeepAlive", "PongTimeout"] {
            let (k, msg) = refused(&format!(r#"{{"ManagerIP": "m", "{key}": -5}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("-5 is negative"), "{msg}");
            assert_eq!(
                refused(&format!(r#"{{"ManagerIP": "m", "{key}": true}}"#)).0,
                key
            );
            assert_eq!(
                refused(&format!(r#"{{"ManagerIP": "m", "{key}": 1.5}}"#)).0,
                key
            );
            let (k, msg) = refused(&format!(r#"{{"ManagerIP": "m", "{key}": 4294967296}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("too long"), "{msg}");
        }
        let (k, msg) = refused(&format!(r#"{{{LDAP}, "LDAPCacheSecs": -1}}"#));
        assert_eq!(k, "LDAPCacheSecs");
        assert!(msg.contains("negative"), "{msg}");
        let (k, msg) = refused(&format!(r#"{{{LDAP}, "LDAPCacheSecs": 86401}}"#));
        assert_eq!(k, "LDAPCacheSecs");
        assert!(msg.contains("more than a day"), "{msg}");
    }

    #[test]
    fn booleans_must_be_booleans() {
        for key in ["Debug", "LDAPOneShot", "LDAPFallback"] {
            let (k, msg) = refused(&format!(r#"{{{LDAP}, "{key}": "yes"}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("must be true or false, not a string"), "{msg}");
            assert_eq!(refused(&format!(r#"{{{LDAP}, "{key}": 1}}"#)).0, key);
        }
    }

    #[test]
    fn strings_must_be_strings() {
        for key in [
            "CertFile",
            "KeyFile",
            "ListenIP",
            "LDAPServer",
            "LDAPUsername",
            "LDAPBaseDN",
            "LDAPSearchRDN",
            "LDAPAttribute",
        ] {
            let (k, msg) = refused(&format!(r#"{{{LDAP}, "{key}": ["a"]}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("must be a string, not an array"), "{msg}");
        }
    }

    #[test]
    fn listen_ip_must_be_an_address() {
        let (key, msg) = refused(r#"{"ManagerIP": "m", "ListenIP": "eth0"}"#);
        assert_eq!(key, "ListenIP");
        assert!(msg.contains("\"eth0\" is not an IP address"), "{msg}");
    }

    #[test]
    fn cert_and_key_come_together() {
        let (key, msg) = refused(r#"{"ManagerIP": "m", "CertFile": "/c.pem"}"#);
        assert_eq!(key, "KeyFile");
        assert!(
            msg.contains("neither to have a certificate generated"),
            "{msg}"
        );
        assert_eq!(
            refused(r#"{"ManagerIP": "m", "KeyFile": "/k.pem"}"#).0,
            "CertFile"
        );
    }

    #[test]
    fn ldap_routing_needs_a_base_and_an_attribute() {
        let (key, msg) =
            refused(r#"{"ManagerIP": "m", "LDAPServer": "ldap", "LDAPAttribute": "description"}"#);
        assert_eq!(key, "LDAPBaseDN");
        assert!(msg.contains("LDAPServer is set"), "{msg}");
        assert_eq!(
            refused(r#"{"ManagerIP": "m", "LDAPServer": "ldap", "LDAPBaseDN": "dc=x"}"#).0,
            "LDAPAttribute"
        );
        assert_eq!(
            refused(&format!(r#"{{{LDAP}, "LDAPBaseDN": "example.com"}}"#)).0,
            "LDAPBaseDN"
        );
        assert_eq!(
            refused(&format!(r#"{{{LDAP}, "LDAPServer": "ldap://ldap:389"}}"#)).0,
            "LDAPServer"
        );
    }

    #[test]
    fn attribute_names_cannot_carry_a_filter() {
        for key in ["LDAPSearchRDN", "LDAPAttribute"] {
            let (k, msg) = refused(&format!(r#"{{{LDAP}, "{key}": "uid=*)(cn"}}"#));
            assert_eq!(k, key);
            assert!(msg.contains("not an LDAP attribute name"), "{msg}");
        }
        let (c, _) = ok(&format!(r#"{{{LDAP}, "LDAPAttribute": "2.5.4.13"}}"#));
        assert_eq!(c.ldap.expect("ldap").attribute, "2.5.4.13");
    }

    #[test]
    fn username_and_password_come_together() {
        assert_eq!(
            refused(&format!(r#"{{{LDAP}, "LDAPUsername": "cn=search"}}"#)).0,
            "LDAPPassword"
        );
        assert_eq!(
            refused(&format!(r#"{{{LDAP}, "LDAPPassword": "pw"}}"#)).0,
            "LDAPUsername"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("flexvdi-gateway.conf");
        std::fs::write(&path, r#"{"ManagerIP": "10.0.0.2", "SslPort": 0}"#).expect("write");
        let e = load(&path).expect_err("port 0 refused");
        assert_eq!(e.key(), Some("SslPort"));
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");

        std::fs::write(&path, r#"{"ManagerIP": "10.0.0.2"}"#).expect("write");
        let (c, _) = load(&path).expect("loads");
        assert_eq!(c.manager_ip, "10.0.0.2");

        let missing = dir.path().join("nope.conf");
        let e = load(&missing).expect_err("missing file");
        assert!(matches!(e, FlexVdiError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.conf"), "{e}");
    }

    #[tokio::test]
    async fn without_ldap_everyone_goes_to_manager_ip() {
        let router = ManagerRouter::new("10.0.0.2", None);
        assert_eq!(router.manager_for("alice").await, Ok("10.0.0.2".into()));
        assert_eq!(router.manager_for("").await, Ok("10.0.0.2".into()));
    }

    #[test]
    fn the_cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut cache = Cache::new(3);
        cache.insert("a", "m1".into(), later(10), t0);
        assert_eq!(cache.get("a", later(9)), Some("m1".into()));
        assert_eq!(cache.get("a", later(10)), None, "expired at its expiry");
        assert_eq!(cache.len(), 0, "an expired answer is dropped when seen");

        cache.insert("a", "m1".into(), later(10), t0);
        cache.insert("b", "m2".into(), later(20), t0);
        cache.insert("c", "m3".into(), later(30), t0);
        // Full of live answers: the one expiring soonest goes.
        cache.insert("d", "m4".into(), later(40), t0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a", t0), None);
        assert_eq!(cache.get("d", t0), Some("m4".into()));
        // Replacing an answer does not evict anyone.
        cache.insert("d", "m5".into(), later(40), t0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b", t0), Some("m2".into()));
        // Expired answers go first, all at once.
        cache.insert("e", "m6".into(), later(50), later(35));
        assert_eq!(cache.len(), 2, "b and c expired; d and e remain");
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
