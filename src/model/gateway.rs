//! Standalone gateways registered with the broker (Setup > Gateways): what clients and the
//! broker reach them at, which methods they offer, and the hash of the token they authenticate
//! with when they fetch the broker's key and session-end notices and report their tunnels.
//!
//! The token itself is shown once, when it is made, and never stored: only its SHA-256 is
//! (the token is 32 random bytes, so a fast hash is enough; nothing can be guessed from it).
//!
//! Also each gateway's last report of its open tunnels (kept, so a restarted broker shows it
//! with its age until the gateway reports again) and the licence's limit on how many gateways
//! may be registered. Pure: no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FieldError;
use super::plan::name_errors;
use crate::store::Record;

/// What a gateway token starts with, so that one is recognised when seen.
pub const TOKEN_PREFIX: &str = "ghgw_";

/// The ways a gateway can carry connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayMethods {
    /// WebSocket tunnels (`/tunnel?ticket=…`).
    #[serde(default)]
    pub tunnel: bool,
    /// Forwarded ports for native clients, opened per ticket.
    #[serde(default)]
    pub forwarded_port: bool,
    /// The broker asks it to open forwarded ports on a client's behalf (through its internal
    /// URL).
    #[serde(default)]
    pub broker_forwarding: bool,
}

impl Default for GatewayMethods {
    fn default() -> Self {
        Self {
            tunnel: true,
            forwarded_port: false,
            broker_forwarding: false,
        }
    }
}

impl GatewayMethods {
    /// The methods offered, in words: "tunnel, forwarded port".
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.tunnel, "tunnel"),
            (self.forwarded_port, "forwarded port"),
            (self.broker_forwarding, "broker forwarding"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        names.join(", ")
    }
}

/// A standalone gateway (`gatehouse gateway --broker URL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub id: String,
    pub name: String,
    /// `host[:port]` clients connect to.
    pub public_address: String,
    /// Where the broker reaches it: `https://10.0.0.2:8443`.
    pub internal_url: String,
    #[serde(default)]
    pub methods: GatewayMethods,
    /// SHA-256 (hex) of its token; empty in every answer.
    #[serde(default)]
    pub token_hash: String,
}

impl Record for GatewayRecord {
    const TREE: &'static str = "gateway_by_id";
}

impl GatewayRecord {
    /// Every problem with this record, each on its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = name_errors(&self.name);
        if let Err(reason) = check_host_port(self.public_address.trim()) {
            errors.push(FieldError::new(
                "public_address",
                format!("{reason}: write the host name or address clients connect to, as host or host:port (gateway.example.com:443)"),
            ));
        }
        if let Err(reason) = check_url(self.internal_url.trim()) {
            errors.push(FieldError::new(
                "internal_url",
                format!("{reason}: write the URL the broker reaches the gateway at, like https://10.0.0.2:8443"),
            ));
        }
        let m = self.methods;
        if !(m.tunnel || m.forwarded_port || m.broker_forwarding) {
            errors.push(FieldError::new(
                "methods",
                "turn on at least one method (tunnel, forwarded port or broker forwarding)",
            ));
        }
        if !is_token_hash(&self.token_hash) {
            errors.push(FieldError::new(
                "token_hash",
                "no token was made for the gateway: make a new token",
            ));
        }
        errors
    }

    /// Whether `token` is this gateway's.
    pub fn token_matches(&self, token: &str) -> bool {
        let presented = hash_token(token);
        is_token_hash(&self.token_hash)
            && self
                .token_hash
                .bytes()
                .zip(presented.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A new token and its hash: the token is for the administrator's eyes once, the hash for the
/// store.
pub fn issue_token() -> (String, String) {
    super::new_token(TOKEN_PREFIX)
}

/// The stored form of a token: SHA-256, lowercase hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

fn is_token_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a host name or an address.
fn check_host_port(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.contains("://") || text.contains('/') {
        return Err(format!("`{text}` is not host[:port] (no scheme or path)"));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}` opens a bracket it does not close"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{v6}` is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{text}` has text after the bracket"))?,
                ),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "`{text}`: put an IPv6 address in brackets, [::1]:443"
                ));
            }
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host
        && host.parse::<std::net::Ipv4Addr>().is_err()
        && !is_host_name(host)
    {
        return Err(format!("`{host}` is not a host name or an address"));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("`{port}` is not a port (1-65535)"));
    }
    Ok(())
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `http[s]://host[:port][/path]`: no user, query or fragment.
fn check_url(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("`{text}` does not start with https:// or http://"))?;
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{text}` has spaces in it"));
    }
    if rest.contains(['?', '#', '@']) {
        return Err(format!("`{text}` has a query, fragment or user name in it"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    check_host_port(authority)
}

/// A gateway reports every few seconds; one whose last report is older than this is shown as
/// stale: not connected, its tunnels as last seen.
pub const STALE_AFTER_SECONDS: i64 = 30;

/// A standalone gateway's last report, as the broker received it, by gateway id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReport {
    pub received: DateTime<Utc>,
    pub tunnels: Vec<crate::gateway::TunnelReport>,
}

impl Record for LastReport {
    const TREE: &'static str = "gateway_report_by_id";
}

impl LastReport {
    /// Whole seconds since the report came (0 for a clock that went back).
    pub fn age_seconds(&self, now: DateTime<Utc>) -> i64 {
        (now - self.received).num_seconds().max(0)
    }

    /// Older than [`STALE_AFTER_SECONDS`]: the gateway is not (or no longer) in touch.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.age_seconds(now) > STALE_AFTER_SECONDS
    }
}

/// An age as people say it: "45 s", "3 min", "2 h 5 min", "3 days".
pub fn age_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 if (s % 3600) / 60 == 0 => format!("{} h", s / 3600),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        86_400..172_800 => "1 day".into(),
        _ => format!("{} days", s / 86_400),
    }
}

/// Why one more gateway cannot be registered under the licence (`max` gateways allowed,
/// `None` for no limit; `registered` already are), or `None` when it can.
pub fn licence_refusal(max: Option<u32>, registered: usize) -> Option<String> {
    let max = max?;
    if usize::try_from(max).is_ok_and(|m| registered < m) {
        return None;
    }
    Some(match max {
        0 => "The licence allows no gateway now (the evaluation is over or the licence has \
              expired): enter a licence key in System > Licence."
            .to_string(),
        1 => format!(
            "The licence allows 1 gateway and {registered} registered already: delete one in \
             Setup > Gateways, or enter a licence key that allows more in System > Licence."
        ),
        n => format!(
            "The licence allows {n} gateways and {registered} are registered already: delete \
             one in Setup > Gateways, or enter a licence key that allows more in System > \
             Licence."
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GatewayRecord {
        let (_, hash) = issue_token();
        GatewayRecord {
            id: "gw1".into(),
            name: "DMZ gateway".into(),
            public_address: "gateway.example.com:443".into(),
            internal_url: "https://10.0.0.2:8443".into(),
            methods: GatewayMethods::default(),
            token_hash: hash,
        }
    }

    #[test]
    fn a_sample_gateway_is_valid_and_addresses_take_their_usual_forms() {
        assert_eq!(sample().validate(), vec![]);
        for good in [
            "gateway.example.com",
            "gw-1.example.com:8443",
            "192.0.2.7:443",
            "[2001:db8::1]:443",
            "[::1]",
        ] {
            assert_eq!(check_host_port(good), Ok(()), "{good}");
        }
        for good in [
            "https://10.0.0.2:8443",
            "http://gw.internal",
            "https://[fd00::2]:8443/",
            "https://gw.internal/gatehouse",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn bad_addresses_no_methods_and_no_token_are_refused_on_their_fields() {
        let mut g = sample();
        g.name = " ".into();
        g.public_address = "wss://gw.example.com/tunnel".into();
        g.internal_url = "10.0.0.2:8443".into();
        g.methods = GatewayMethods {
            tunnel: false,
            forwarded_port: false,
            broker_forwarding: false,
        };
        g.token_hash = String::new();
        let fields: Vec<String> = g.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "public_address",
                "internal_url",
                "methods",
                "token_hash"
            ]
        );
        for bad in ["", "::1", "host:0", "host:99999", "bad_host", "[::1", "a b"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        for bad in [
            "ftp://x",
            "https://",
            "https://u@host",
            "https://host?x=1",
            "https://host:port",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_issued_token_matches_and_the_hash_is_not_the_token() {
        let (token, hash) = issue_token();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        assert!(!hash.contains(&token[TOKEN_PREFIX.len()..]));
        let g = GatewayRecord {
            token_hash: hash,
            ..sample()
        };
        assert!(g.token_matches(&token));
        assert!(!g.token_matches(&issue_token().0));
        assert!(!g.token_matches(""));
        let none = GatewayRecord {
            token_hash: String::new(),
            ..sample()
        };
        assert!(!none.token_matches(""), "an empty hash matches nothing");
        assert_eq!(GatewayMethods::default().describe(), "tunnel");
    }

    #[test]
    fn a_report_turns_stale_after_thirty_seconds_and_its_age_reads_as_people_say_it() {
        let received = chrono::DateTime::parse_from_rfc3339("2030-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let report = LastReport {
            received,
            tunnels: Vec::new(),
        };
        let at = |s: i64| received + chrono::Duration::seconds(s);
        assert!(!report.is_stale(at(STALE_AFTER_SECONDS)));
        assert!(report.is_stale(at(STALE_AFTER_SECONDS + 1)));
        assert_eq!(report.age_seconds(at(-5)), 0, "a clock that went back");
        assert!(!report.is_stale(at(-5)));
        for (s, text) in [
            (0, "0 s"),
            (59, "59 s"),
            (60, "1 min"),
            (3599, "59 min"),
            (3600, "1 h"),
            (3600 + 5 * 60, "1 h 5 min"),
            (86_400, "1 day"),
            (3 * 86_400 + 7, "3 days"),
        ] {
            assert_eq!(age_text(s), text, "{s}");
        }
    }

    #[test]
    fn the_licence_limits_how_many_gateways_may_be_registered() {
        assert_eq!(licence_refusal(None, 500), None);
        assert_eq!(licence_refusal(Some(2), 1), None);
        let full = licence_refusal(Some(2), 2).expect("refused");
        assert!(full.contains("allows 2 gateways and 2"), "{full}");
        assert!(full.contains("System > Licence"), "{full}");
        let one = licence_refusal(Some(1), 1).expect("refused");
        assert!(one.contains("allows 1 gateway and 1"), "{one}");
        let none = licence_refusal(Some(0), 0).expect("refused");
        assert!(none.contains("no gateway"), "{none}");
    }
}
