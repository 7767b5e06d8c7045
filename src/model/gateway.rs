//! Standalone gateways registered with the broker (Setup > Gateways): what clients and the
//! broker reach them at, which methods they offer, and the hash of the token they authenticate
//! with when they fetch the broker's key and session-end notices and report their tunnels.
//!
//! The token itself is shown once, when it is made, and never stored: only its SHA-256 is
//! (the token is 32 random bytes, so a fast hash is enough; nothing can be guessed from it).
//! Pure: no I/O.

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
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&token);
    (token, hash)
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
}
