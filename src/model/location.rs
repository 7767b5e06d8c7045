//! Locations: groups of clients by address range, client name, device type and operating
//! system, and the pure rules that decide where a client is and what its address really is.
//!
//! What it owns:
//! - [`Cidr`], an IPv4 or IPv6 address range (`10.0.0.0/8`, `2001:db8::/32`, a bare address);
//! - [`Location`] (tree `location_by_id`), its validation, and [`locate`], which picks the first
//!   matching location by `order` and falls back to the built-in "All" location;
//! - the client address behind trusted reverse proxies: [`client_address`] for
//!   `X-Forwarded-For`, [`client_address_forwarded`] for RFC 7239 `Forwarded`;
//! - [`parse_proxy`], a parser for the PROXY protocol header (the text version 1 that nginx's
//!   stream module sends, the binary version 2 of HAProxy and most load balancers) put in front
//!   of a TCP stream.
//!
//! It must not touch: I/O of any kind (sockets, the store, HTTP types). The HTTP layer hands in
//! header values as strings, the gateway hands in the bytes it has read so far.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::Record;

/// What can go wrong while reading location data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("`{input}` is not an address range: {reason}")]
    Cidr { input: String, reason: String },
}

pub type Result<T, E = LocationError> = std::result::Result<T, E>;

pub use super::FieldError;

// ---------------------------------------------------------------------------------------------
// Address ranges
// ---------------------------------------------------------------------------------------------

/// An IPv4 or IPv6 address range in CIDR notation.
///
/// Parsing accepts `10.0.0.0/8`, `2001:db8::/32`, and a bare address, which means that one host
/// (`/32` for IPv4, `/128` for IPv6). An address with host bits set (`10.1.2.3/8`) is accepted
/// and normalised to its network (`10.0.0.0/8`): administrators often paste a host's own
/// address with its netmask, and the range they mean is unambiguous. [`Cidr::contains`] treats
/// an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4
/// peer) as the IPv4 address it carries. Stored and shown as the string `network/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// The range of `prefix` leading bits of `addr`; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(LocationError::Cidr {
                input: format!("{addr}/{prefix}"),
                reason: prefix_too_long(prefix, max),
            });
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        Ok(Cidr { network, prefix })
    }

    /// The range holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            network: addr,
            prefix: max_prefix(addr),
        }
    }

    /// The first address of the range.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// How many leading bits are fixed.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` lies in the range. An IPv4-mapped IPv6 address matches IPv4 ranges (and
    /// an IPv4 address matches `::ffff:0:0/96`-style IPv6 ranges); other IPv6 addresses never
    /// match IPv4 ranges.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask_v6(self.prefix) == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(a)) => {
                u128::from(a.to_ipv6_mapped()) & mask_v6(self.prefix) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// Reads a list of ranges separated by commas, spaces or new lines (a console text box).
    /// The first bad entry is the error.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect()
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn prefix_too_long(prefix: u8, max: u8) -> String {
    let family = if max == 32 { "IPv4" } else { "IPv6" };
    format!("the prefix length {prefix} is longer than {max}, the most for {family}")
}

impl FromStr for Cidr {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Cidr> {
        let input = s.trim();
        let err = |reason: String| LocationError::Cidr {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err(
                "it is empty; write a range like 10.0.0.0/8 or 2001:db8::/32, or one address"
                    .to_string(),
            ));
        }
        let (addr_text, prefix_text) = match input.split_once('/') {
            Some((a, p)) => (a.trim(), Some(p.trim())),
            None => (input, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            err(format!(
                "`{addr_text}` is not an IPv4 or IPv6 address (write 10.0.0.0/8 or 2001:db8::/32)"
            ))
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(format!(
                        "the prefix length `{p}` after `/` is not a number from 0 to {max}"
                    )));
                }
                // More than three digits cannot be a prefix length; `u8` parsing reports it.
                let n: u8 = p.parse().map_err(|_| err(prefix_too_long(u8::MAX, max)))?;
                if n > max {
                    return Err(err(prefix_too_long(n, max)));
                }
                n
            }
        };
        Cidr::new(addr, prefix).map_err(|e| match e {
            LocationError::Cidr { reason, .. } => err(reason),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `addr` lies in any of `ranges`.
pub fn in_any(addr: IpAddr, ranges: &[Cidr]) -> bool {
    ranges.iter().any(|r| r.contains(addr))
}

// ---------------------------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------------------------

/// The id of the built-in location that holds every client no other location claims.
pub const ALL_LOCATION_ID: &str = "all";
/// Its name, which cannot be changed.
pub const ALL_LOCATION_NAME: &str = "All";

const MAX_NAME_LEN: usize = 100;
const MAX_PATTERN_LEN: usize = 256;

/// A group of clients. A location matches a client when every criterion it sets matches; a
/// criterion left empty matches any client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub id: String,
    pub name: String,
    /// Lower orders are tried first.
    pub order: u32,
    /// The client's address lies in one of these ranges. Empty: any address.
    #[serde(default)]
    pub ranges: Vec<Cidr>,
    /// A glob (`*` any run of characters, `?` one character), case-insensitive, on the
    /// client's name. When set, a client that did not say its name does not match.
    #[serde(default)]
    pub client_name_pattern: Option<String>,
    /// The client's device type is one of these (case-insensitive). Empty: any.
    #[serde(default)]
    pub device_types: Vec<String>,
    /// Globs on the client's operating system, one of which must match. Empty: any.
    #[serde(default)]
    pub os_patterns: Vec<String>,
}

impl Record for Location {
    const TREE: &'static str = "location_by_id";
}

/// What the broker knows about a client when it picks a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    /// The client's address, after [`client_address`] has looked behind trusted proxies.
    pub address: IpAddr,
    pub name: Option<String>,
    pub device_type: Option<String>,
    pub os: Option<String>,
}

impl ClientFacts {
    /// A client of which only the address is known.
    pub fn from_address(address: IpAddr) -> Self {
        ClientFacts {
            address,
            name: None,
            device_type: None,
            os: None,
        }
    }
}

static ALL_LOCATION: LazyLock<Location> = LazyLock::new(Location::all);

impl Location {
    /// The built-in default location: named "All", matches every client, always tried last.
    pub fn all() -> Location {
        Location {
            id: ALL_LOCATION_ID.to_string(),
            name: ALL_LOCATION_NAME.to_string(),
            order: u32::MAX,
            ranges: Vec::new(),
            client_name_pattern: None,
            device_types: Vec::new(),
            os_patterns: Vec::new(),
        }
    }

    /// Whether this is the built-in "All" location.
    pub fn is_all(&self) -> bool {
        self.id == ALL_LOCATION_ID
    }

    /// Only administrator-made locations can be deleted.
    pub fn can_delete(&self) -> bool {
        !self.is_all()
    }

    /// Whether every criterion this location sets matches the client. "All" matches anyone.
    pub fn matches(&self, facts: &ClientFacts) -> bool {
        if self.is_all() {
            return true;
        }
        if !self.ranges.is_empty() && !in_any(facts.address, &self.ranges) {
            return false;
        }
        if let Some(pattern) = &self.client_name_pattern {
            match &facts.name {
                Some(name) if glob_matches(pattern, name) => {}
                _ => return false,
            }
        }
        if !self.device_types.is_empty() {
            let Some(device) = &facts.device_type else {
                return false;
            };
            let device = device.trim().to_lowercase();
            if !self
                .device_types
                .iter()
                .any(|d| d.trim().to_lowercase() == device)
            {
                return false;
            }
        }
        if !self.os_patterns.is_empty() {
            let Some(os) = &facts.os else {
                return false;
            };
            if !self.os_patterns.iter().any(|p| glob_matches(p, os)) {
                return false;
            }
        }
        true
    }

    /// What is wrong with this location, field by field; empty when it can be saved.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.id.trim().is_empty() {
            errors.push(FieldError::new("id", "a location needs an id"));
        }
        let name = self.name.trim();
        if name.is_empty() {
            errors.push(FieldError::new("name", "give the location a name"));
        } else if name.chars().count() > MAX_NAME_LEN {
            errors.push(FieldError::new(
                "name",
                format!("keep the name to {MAX_NAME_LEN} characters"),
            ));
        }
        if self.is_all() {
            if self.name != ALL_LOCATION_NAME {
                errors.push(FieldError::new(
                    "name",
                    format!("the built-in location is always called {ALL_LOCATION_NAME}"),
                ));
            }
            if !self.ranges.is_empty()
                || self.client_name_pattern.is_some()
                || !self.device_types.is_empty()
                || !self.os_patterns.is_empty()
            {
                errors.push(FieldError::new(
                    "criteria",
                    format!(
                        "the built-in location {ALL_LOCATION_NAME} matches every client and takes no criteria; make a new location instead"
                    ),
                ));
            }
        } else if name.eq_ignore_ascii_case(ALL_LOCATION_NAME) {
            errors.push(FieldError::new(
                "name",
                format!("{ALL_LOCATION_NAME} is the built-in location's name; choose another"),
            ));
        }
        if let Some(p) = &self.client_name_pattern {
            check_pattern("client_name_pattern", p, &mut errors);
        }
        let mut seen = BTreeSet::new();
        for d in &self.device_types {
            let d = d.trim();
            if d.is_empty() {
                errors.push(FieldError::new(
                    "device_types",
                    "a device type is empty; remove it or name the type",
                ));
            } else if !seen.insert(d.to_lowercase()) {
                errors.push(FieldError::new(
                    "device_types",
                    format!("the device type `{d}` is listed twice"),
                ));
            }
        }
        for p in &self.os_patterns {
            check_pattern("os_patterns", p, &mut errors);
        }
        errors
    }
}

fn check_pattern(field: &str, pattern: &str, errors: &mut Vec<FieldError>) {
    if pattern.trim().is_empty() {
        errors.push(FieldError::new(
            field,
            "a pattern is empty; write one like `LAB-*` (`*` any characters, `?` one), or remove it",
        ));
    } else if pattern.chars().count() > MAX_PATTERN_LEN {
        errors.push(FieldError::new(
            field,
            format!("keep a pattern to {MAX_PATTERN_LEN} characters"),
        ));
    }
}

/// The location a client belongs to: among `locations`, the matching one with the lowest
/// `order` (ties broken by name, then id, so the answer never depends on storage order);
/// when none matches, "All". A stored "All" record in `locations` is only used as that
/// fallback, never tried in order.
pub fn locate<'a>(locations: &'a [Location], facts: &ClientFacts) -> &'a Location {
    let found = locations
        .iter()
        .filter(|l| !l.is_all() && l.matches(facts))
        .min_by(|a, b| (a.order, &a.name, &a.id).cmp(&(b.order, &b.name, &b.id)));
    match found {
        Some(l) => l,
        None => locations
            .iter()
            .find(|l| l.is_all())
            .unwrap_or(&ALL_LOCATION),
    }
}

/// Whether `text` matches the glob `pattern`: `*` matches any run of characters (also none),
/// `?` exactly one, everything else itself, ignoring case. Runs in O(len(pattern) ·
/// len(text)) at worst.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .collect();
    let t: Vec<char> = text.trim().chars().flat_map(char::to_lowercase).collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was, and the text position it is currently stretched to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

// ---------------------------------------------------------------------------------------------
// The client's address behind proxies
// ---------------------------------------------------------------------------------------------

/// The client's real address, given the TCP peer and the `X-Forwarded-For` header.
///
/// - When `peer` is not in `trusted`, the header is ignored entirely: anyone can send it.
/// - Otherwise the header's list is walked from the right (the entry the nearest proxy added),
///   skipping addresses in `trusted` (a chain of our own proxies); the first untrusted address
///   is the client.
/// - A malformed entry (`unknown`, a name, an empty entry) stops the walk: the answer is the
///   last good address seen, that is the nearest trusted hop (or `peer`). What lies left of a
///   bad entry cannot be trusted to have been written by a proxy of ours.
/// - When every entry is trusted, the leftmost one is the answer.
///
/// Entries may carry a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`). Several
/// `X-Forwarded-For` header lines must be joined with `,` in order before the call. The result
/// is canonical: an IPv4-mapped IPv6 address comes back as IPv4.
pub fn client_address(peer: IpAddr, x_forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    match x_forwarded_for {
        None => peer.to_canonical(),
        Some(header) => walk_from_right(peer, header.split(',').map(parse_node), trusted),
    }
}

/// Like [`client_address`], for the standard `Forwarded` header (RFC 7239): the `for=`
/// parameter of each element, walked from the right under the same rules. `for=unknown`,
/// obfuscated identifiers (`for=_hidden`) and elements without `for=` stop the walk.
pub fn client_address_forwarded(peer: IpAddr, forwarded: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    match forwarded {
        None => peer.to_canonical(),
        Some(header) => {
            let hops: Vec<Option<IpAddr>> = split_outside_quotes(header, ',')
                .into_iter()
                .map(forwarded_for)
                .collect();
            walk_from_right(peer, hops.into_iter(), trusted)
        }
    }
}

fn walk_from_right(
    peer: IpAddr,
    hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !in_any(peer, trusted) {
        return peer;
    }
    let mut last_good = peer;
    for hop in hops.rev() {
        let Some(addr) = hop else {
            return last_good;
        };
        let addr = addr.to_canonical();
        if !in_any(addr, trusted) {
            return addr;
        }
        last_good = addr;
    }
    last_good
}

/// One hop: an address, optionally with a port, IPv6 optionally in brackets.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The `for=` address of one `Forwarded` element, if it names an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = split_outside_quotes(element, ';')
        .into_iter()
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map(|(_, v)| v.trim())?;
    let value = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?.replace('\\', ""),
        None => value.to_string(),
    };
    parse_node(&value)
}

/// Splits at `sep`, except inside double-quoted strings (with `\` escapes).
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol, versions 1 and 2
// ---------------------------------------------------------------------------------------------

/// The 6 bytes every PROXY protocol v1 (text) header starts with.
pub const PROXY_V1_PREFIX: [u8; 6] = *b"PROXY ";
/// The longest v1 header, its CRLF included (the spec's 107 bytes).
pub const PROXY_V1_MAX_LEN: usize = 107;
/// The 12 bytes every PROXY protocol v2 header starts with.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol and the 2-byte length.
pub const PROXY_V2_FIXED_LEN: usize = 16;

/// A parsed PROXY protocol header (either version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// How many bytes of the buffer the header took; the connection's own data follows.
    pub consumed: usize,
    /// The original client, for TCP over IPv4 or IPv6. `None` for v2's `LOCAL`, `UNSPEC` and
    /// UNIX sockets and v1's `UNKNOWN`: then the connection's own endpoints are the truth.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, under the same rules.
    pub destination: Option<SocketAddr>,
    /// The `LOCAL` command: the proxy's own connection (a health check), not a relayed one.
    pub local: bool,
}

/// Why a buffer is not (yet) a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The buffer starts a header but stops early: read at least `needed` more bytes.
    #[error("the PROXY protocol header is incomplete: {needed} more bytes needed")]
    Incomplete { needed: usize },
    /// The buffer starts with neither the v1 prefix nor the v2 signature.
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

/// Parses a PROXY protocol header of either version at the start of `buf`: version 1 when it
/// starts with `PROXY `, version 2 when it starts with the v2 signature. An empty buffer may
/// still be either.
pub fn parse_proxy(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if buf.is_empty() {
        // The shortest header of either version ("PROXY UNKNOWN\r\n") is longer than this.
        return Err(ProxyError::Incomplete {
            needed: PROXY_V1_PREFIX.len(),
        });
    }
    if buf[0] == PROXY_V1_PREFIX[0] {
        parse_proxy_v1(buf)
    } else {
        parse_proxy_v2(buf)
    }
}

/// Parses a PROXY protocol v1 header at the start of `buf` (the spec:
/// <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>, section 2.1): one line of
/// at most 107 bytes, `PROXY TCP4|TCP6 SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT\r\n`
/// with single spaces, or `PROXY UNKNOWN…\r\n`, after which the connection's own endpoints are
/// the truth. The addresses must be of the family named, the ports decimal without a sign or
/// leading zeros.
pub fn parse_proxy_v1(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let prefix_len = buf.len().min(PROXY_V1_PREFIX.len());
    if buf[..prefix_len] != PROXY_V1_PREFIX[..prefix_len] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(PROXY_V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= PROXY_V1_MAX_LEN {
            return Err(ProxyError::Invalid(format!(
                "a version 1 header ends with CRLF within {PROXY_V1_MAX_LEN} bytes"
            )));
        }
        return Err(ProxyError::Incomplete { needed: 1 });
    };
    let line = buf
        .get(PROXY_V1_PREFIX.len()..end)
        .and_then(|l| std::str::from_utf8(l).ok())
        .filter(|l| l.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .ok_or_else(|| ProxyError::Invalid("a version 1 header is printable ASCII".into()))?;
    let mut header = ProxyHeader {
        consumed: end + 2,
        source: None,
        destination: None,
        local: false,
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let v6 = match fields[0] {
        "UNKNOWN" => return Ok(header),
        "TCP4" => false,
        "TCP6" => true,
        other => {
            return Err(ProxyError::Invalid(format!(
                "unknown protocol `{other}` (TCP4, TCP6 or UNKNOWN)"
            )));
        }
    };
    let [_, src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::Invalid(format!(
            "`{line}` is not `{} SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT`",
            fields[0]
        )));
    };
    let family = if v6 { "IPv6" } else { "IPv4" };
    let address = |s: &str| match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => Ok(ip),
        _ => Err(ProxyError::Invalid(format!(
            "`{s}` is not an {family} address"
        ))),
    };
    let port = |s: &str| {
        let decimal = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match s.parse::<u16>() {
            Ok(p) if decimal && (s == "0" || !s.starts_with('0')) => Ok(p),
            _ => Err(ProxyError::Invalid(format!("`{s}` is not a port"))),
        }
    };
    header.source = Some(SocketAddr::new(address(src)?, port(sport)?));
    header.destination = Some(SocketAddr::new(address(dst)?, port(dport)?));
    Ok(header)
}

/// Parses a PROXY protocol v2 header at the start of `buf` (the spec:
/// <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>, section 2.2).
///
/// `LOCAL` is accepted with any address family (the spec says to ignore it). For `PROXY`, the
/// family/protocol byte must be one the spec defines: TCP over IPv4 (`0x11`) or IPv6 (`0x21`)
/// gives the addresses; `UNSPEC` (`0x00`) and UNIX sockets (`0x31`, `0x32`) give none; UDP
/// (`0x12`, `0x22`) cannot arrive on a TCP stream and is refused like every other value.
/// TLVs after the addresses are skipped.
pub fn parse_proxy_v2(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let sig_len = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..sig_len] != PROXY_V2_SIGNATURE[..sig_len] {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() < PROXY_V2_FIXED_LEN {
        return Err(ProxyError::Incomplete {
            needed: PROXY_V2_FIXED_LEN - buf.len(),
        });
    }
    let ver_cmd = buf[12];
    let fam_proto = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(ProxyError::Invalid(format!(
            "version {version}, expected 2"
        )));
    }
    let local = match ver_cmd & 0x0f {
        0x0 => true,
        0x1 => false,
        other => return Err(ProxyError::Invalid(format!("unknown command {other:#x}"))),
    };
    let total = PROXY_V2_FIXED_LEN + len;
    if buf.len() < total {
        return Err(ProxyError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let block = &buf[PROXY_V2_FIXED_LEN..total];
    let mut header = ProxyHeader {
        consumed: total,
        source: None,
        destination: None,
        local,
    };
    if local {
        return Ok(header);
    }
    let too_short = |family: &str, need: usize| {
        ProxyError::Invalid(format!(
            "the address block is {len} bytes, {family} needs {need}"
        ))
    };
    match fam_proto {
        // TCP over IPv4: source address, destination address, source port, destination port.
        0x11 => {
            let a = block
                .get(..12)
                .ok_or_else(|| too_short("TCP over IPv4", 12))?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            let sport = u16::from_be_bytes([a[8], a[9]]);
            let dport = u16::from_be_bytes([a[10], a[11]]);
            header.source = Some(SocketAddr::V4(SocketAddrV4::new(src, sport)));
            header.destination = Some(SocketAddr::V4(SocketAddrV4::new(dst, dport)));
        }
        // TCP over IPv6.
        0x21 => {
            let a = block
                .get(..36)
                .ok_or_else(|| too_short("TCP over IPv6", 36))?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            dst.copy_from_slice(&a[16..32]);
            let sport = u16::from_be_bytes([a[32], a[33]]);
            let dport = u16::from_be_bytes([a[34], a[35]]);
            header.source = Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(src),
                sport,
                0,
                0,
            )));
            header.destination = Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(dst),
                dport,
                0,
                0,
            )));
        }
        0x00 => {}
        0x31 | 0x32 => {
            if block.len() < 216 {
                return Err(too_short("a UNIX socket", 216));
            }
        }
        0x12 | 0x22 => {
            return Err(ProxyError::Invalid(
                "UDP cannot be relayed on a TCP connection".to_string(),
            ));
        }
        other => {
            return Err(ProxyError::Invalid(format!(
                "unknown address family and protocol {other:#04x}"
            )));
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn loc(id: &str, order: u32) -> Location {
        Location {
            id: id.to_string(),
            name: format!("Location {id}"),
            order,
            ranges: Vec::new(),
            client_name_pattern: None,
            device_types: Vec::new(),
            os_patterns: Vec::new(),
        }
    }

    fn facts(addr: &str) -> ClientFacts {
        ClientFacts::from_address(ip(addr))
    }

    // ---- CIDR ----

    #[test]
    fn parses_ipv4_and_ipv6_ranges_and_bare_addresses() {
        let c = cidr("10.0.0.0/8");
        assert_eq!(c.network(), ip("10.0.0.0"));
        assert_eq!(c.prefix(), 8);
        let c = cidr(" 2001:db8::/32 ");
        assert_eq!(c.network(), ip("2001:db8::"));
        assert_eq!(c.prefix(), 32);
        assert_eq!(cidr("192.0.2.7").prefix(), 32);
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::1").prefix(), 128);
        assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.17.200/20").to_string(), "192.168.16.0/20");
        assert_eq!(cidr("2001:db8:abcd::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("10.1.2.3/8"), cidr("10.0.0.0/8"));
    }

    #[test]
    fn ipv4_matching() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        let c = cidr("192.168.16.0/20");
        assert!(c.contains(ip("192.168.31.255")));
        assert!(!c.contains(ip("192.168.32.0")));
        assert!(
            !c.contains(ip("2001:db8::1")),
            "IPv6 never matches IPv4 ranges"
        );
    }

    #[test]
    fn ipv6_matching() {
        let c = cidr("2001:db8::/32");
        assert!(c.contains(ip("2001:db8::1")));
        assert!(c.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!c.contains(ip("2001:db9::")));
        assert!(
            !c.contains(ip("10.0.0.1")),
            "IPv4 is not in an ordinary IPv6 range"
        );
        let c = cidr("fe80::/10");
        assert!(c.contains(ip("febf::1")));
        assert!(!c.contains(ip("fec0::1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_ranges() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("::ffff:11.1.2.3")));
        assert!(cidr("10.1.2.3").contains(ip("::ffff:10.1.2.3")));
        // And the other way: an IPv4 address lies in the mapped IPv6 range.
        assert!(cidr("::ffff:0:0/96").contains(ip("192.0.2.1")));
    }

    #[test]
    fn zero_and_full_prefixes() {
        let any4 = cidr("0.0.0.0/0");
        assert!(any4.contains(ip("1.2.3.4")));
        assert!(any4.contains(ip("255.255.255.255")));
        assert!(any4.contains(ip("::ffff:1.2.3.4")));
        assert!(!any4.contains(ip("2001:db8::1")));
        assert_eq!(cidr("1.2.3.4/0").to_string(), "0.0.0.0/0");
        let any6 = cidr("::/0");
        assert!(any6.contains(ip("2001:db8::1")));
        assert!(any6.contains(ip("::1")));

        let one4 = cidr("192.0.2.1/32");
        assert!(one4.contains(ip("192.0.2.1")));
        assert!(!one4.contains(ip("192.0.2.2")));
        assert!(!one4.contains(ip("192.0.2.0")));
        let one6 = cidr("2001:db8::1/128");
        assert!(one6.contains(ip("2001:db8::1")));
        assert!(!one6.contains(ip("2001:db8::2")));
        assert!(!one6.contains(ip("2001:db8::")));
    }

    #[test]
    fn bad_ranges_are_refused_with_a_readable_reason() {
        let reason = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert!(reason("").contains("it is empty"), "{}", reason(""));
        assert!(reason("10.0.0.0/33").contains("longer than 32"));
        assert!(reason("2001:db8::/129").contains("longer than 128"));
        assert!(reason("10.0.0.0/999").contains("longer than 32"));
        assert!(reason("10.0.0.0/").contains("not a number"));
        assert!(reason("10.0.0.0/+8").contains("not a number"));
        assert!(reason("10.0.0.0/eight").contains("not a number"));
        assert!(reason("10.0.0/8").contains("not an IPv4 or IPv6 address"));
        assert!(reason("printer.example.com").contains("not an IPv4 or IPv6 address"));
        assert!(reason("10.0.0.0/8/8").contains("not a number"));
        assert!(reason("10.0.0.0/33").starts_with("`10.0.0.0/33` is not an address range"));
        assert!(Cidr::new(ip("10.0.0.0"), 33).is_err());
    }

    #[test]
    fn ranges_round_trip_through_serde_as_strings() {
        let ranges = vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")];
        let json = serde_json::to_string(&ranges).unwrap();
        assert_eq!(json, r#"["10.0.0.0/8","2001:db8::/32"]"#);
        let back: Vec<Cidr> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ranges);
        let bad = serde_json::from_str::<Cidr>(r#""10.0.0.0/40""#).unwrap_err();
        assert!(bad.to_string().contains("longer than 32"));
    }

    #[test]
    fn parse_list_reads_a_text_box() {
        let list = Cidr::parse_list("10.0.0.0/8, 192.168.1.0/24\n2001:db8::/32\n\n").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].to_string(), "2001:db8::/32");
        let err = Cidr::parse_list("10.0.0.0/8\nbogus").unwrap_err();
        assert!(err.to_string().contains("`bogus`"), "{err}");
    }

    // ---- globs ----

    #[test]
    fn globs() {
        assert!(glob_matches("LAB-*", "lab-042"));
        assert!(glob_matches("lab-???", "LAB-042"));
        assert!(!glob_matches("lab-???", "LAB-0420"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("", "x"));
        assert!(glob_matches("*windows*", "Microsoft Windows 11 Pro"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(glob_matches("a*b*c", "abcbc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("*.example.com", "pc1.EXAMPLE.com"));
        assert!(!glob_matches("*.example.com", "example.com"));
        assert!(
            glob_matches("ÄRZTE-*", "ärzte-1"),
            "case folding is not ASCII-only"
        );
        assert!(glob_matches("a**?", "ab"));
        assert!(!glob_matches("a**?", "a"));
    }

    // ---- locations ----

    #[test]
    fn all_matches_everything() {
        let all = Location::all();
        assert_eq!(all.id, ALL_LOCATION_ID);
        assert_eq!(all.name, "All");
        assert!(all.matches(&facts("203.0.113.9")));
        assert!(all.matches(&facts("2001:db8::9")));
        assert!(all.validate().is_empty());
        assert!(!all.can_delete());
    }

    #[test]
    fn locate_takes_the_lowest_order_match_and_falls_back_to_all() {
        let mut office = loc("office", 20);
        office.ranges = vec![cidr("10.0.0.0/8")];
        let mut lab = loc("lab", 10);
        lab.ranges = vec![cidr("10.1.0.0/16")];
        let mut v6 = loc("v6", 30);
        v6.ranges = vec![cidr("2001:db8::/32")];
        let locations = vec![office, lab, v6];

        assert_eq!(locate(&locations, &facts("10.1.2.3")).id, "lab");
        assert_eq!(locate(&locations, &facts("10.2.0.1")).id, "office");
        assert_eq!(locate(&locations, &facts("::ffff:10.2.0.1")).id, "office");
        assert_eq!(locate(&locations, &facts("2001:db8::5")).id, "v6");
        let nowhere = locate(&locations, &facts("198.51.100.1"));
        assert_eq!(nowhere.id, ALL_LOCATION_ID);
        assert_eq!(nowhere.name, "All");
        assert_eq!(locate(&[], &facts("10.1.2.3")).id, ALL_LOCATION_ID);
    }

    #[test]
    fn all_is_tried_last_even_when_stored_first() {
        let mut stored_all = Location::all();
        stored_all.order = 0;
        let mut lab = loc("lab", 50);
        lab.ranges = vec![cidr("10.0.0.0/8")];
        let locations = vec![stored_all, lab];
        assert_eq!(locate(&locations, &facts("10.0.0.1")).id, "lab");
        let fallback = locate(&locations, &facts("192.0.2.1"));
        assert!(
            std::ptr::eq(fallback, &locations[0]),
            "the stored All is the fallback"
        );
    }

    #[test]
    fn equal_orders_are_decided_by_name_not_storage_order() {
        let mut b = loc("b", 5);
        b.name = "Beta".into();
        let mut a = loc("a", 5);
        a.name = "Alpha".into();
        assert_eq!(locate(&[b.clone(), a.clone()], &facts("10.0.0.1")).id, "a");
        assert_eq!(locate(&[a, b], &facts("10.0.0.1")).id, "a");
    }

    #[test]
    fn every_criterion_set_must_match() {
        let mut l = loc("kiosks", 1);
        l.ranges = vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")];
        l.client_name_pattern = Some("KIOSK-*".into());
        l.device_types = vec!["Thin client".into(), "Kiosk".into()];
        l.os_patterns = vec!["*linux*".into(), "ThinOS ?.*".into()];

        let good = ClientFacts {
            address: ip("10.9.9.9"),
            name: Some("kiosk-17".into()),
            device_type: Some("thin CLIENT".into()),
            os: Some("Ubuntu Linux 24.04".into()),
        };
        assert!(l.matches(&good));
        assert!(l.matches(&ClientFacts {
            address: ip("2001:db8::1"),
            os: Some("ThinOS 9.1".into()),
            ..good.clone()
        }));
        // Each criterion on its own can reject.
        assert!(!l.matches(&ClientFacts {
            address: ip("192.0.2.1"),
            ..good.clone()
        }));
        assert!(!l.matches(&ClientFacts {
            name: Some("desk-17".into()),
            ..good.clone()
        }));
        assert!(!l.matches(&ClientFacts {
            device_type: Some("Laptop".into()),
            ..good.clone()
        }));
        assert!(!l.matches(&ClientFacts {
            os: Some("Windows 11".into()),
            ..good.clone()
        }));
        // An unknown fact does not satisfy a criterion that asks for it.
        assert!(!l.matches(&ClientFacts {
            name: None,
            ..good.clone()
        }));
        assert!(!l.matches(&ClientFacts {
            device_type: None,
            ..good.clone()
        }));
        assert!(!l.matches(&ClientFacts {
            os: None,
            ..good.clone()
        }));
    }

    #[test]
    fn criteria_left_empty_match_any_client() {
        let mut by_name = loc("by-name", 1);
        by_name.client_name_pattern = Some("LAB-*".into());
        let client = ClientFacts {
            address: ip("2001:db8::77"),
            name: Some("lab-3".into()),
            device_type: None,
            os: None,
        };
        assert!(by_name.matches(&client));
        assert_eq!(locate(&[by_name], &client).id, "by-name");
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut l = loc("x", 1);
        assert!(l.validate().is_empty());
        l.name = "  ".into();
        l.client_name_pattern = Some(String::new());
        l.device_types = vec!["Kiosk".into(), "kiosk".into(), " ".into()];
        l.os_patterns = vec!["x".repeat(300)];
        let fields: Vec<String> = l.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "client_name_pattern",
                "device_types",
                "device_types",
                "os_patterns"
            ]
        );

        let mut clash = loc("y", 1);
        clash.name = "all".into();
        assert_eq!(clash.validate()[0].field, "name");

        let mut all = Location::all();
        all.name = "Everyone".into();
        all.ranges = vec![cidr("10.0.0.0/8")];
        let fields: Vec<String> = all.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "criteria"]);
    }

    #[test]
    fn locations_round_trip_through_json() {
        let mut l = loc("lab", 3);
        l.ranges = vec![cidr("10.0.0.0/8")];
        l.os_patterns = vec!["*".into()];
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Location>(&json).unwrap(), l);
        let minimal: Location = serde_json::from_str(r#"{"id":"m","name":"M","order":1}"#).unwrap();
        assert!(minimal.ranges.is_empty() && minimal.client_name_pattern.is_none());
    }

    // ---- client address behind proxies ----

    fn trusted() -> Vec<Cidr> {
        vec![cidr("10.0.0.0/24"), cidr("fd00::/64")]
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let peer = ip("203.0.113.5");
        assert_eq!(client_address(peer, Some("10.9.9.9"), &trusted()), peer);
        assert_eq!(
            client_address(peer, Some("10.0.0.1, 1.2.3.4"), &trusted()),
            peer
        );
        assert_eq!(
            client_address_forwarded(peer, Some("for=10.9.9.9"), &trusted()),
            peer
        );
        // No trusted proxies configured: nobody's header counts.
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("1.2.3.4"), &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_header_gives_the_client() {
        let proxy = ip("10.0.0.2");
        assert_eq!(
            client_address(proxy, Some("198.51.100.7"), &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(proxy, Some(" 2001:db8::7 "), &trusted()),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_address(proxy, Some("198.51.100.7:51234"), &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(proxy, Some("[2001:db8::7]:443"), &trusted()),
            ip("2001:db8::7")
        );
        assert_eq!(client_address(proxy, None, &trusted()), proxy);
        // An IPv6 proxy, and a mapped peer address from a dual-stack socket.
        assert_eq!(
            client_address(ip("fd00::1"), Some("198.51.100.7"), &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(
                ip("::ffff:10.0.0.2"),
                Some("::ffff:198.51.100.7"),
                &trusted()
            ),
            ip("198.51.100.7"),
            "mapped addresses come back canonical"
        );
    }

    #[test]
    fn chains_of_proxies_are_walked_from_the_right() {
        let proxy = ip("10.0.0.2");
        // client, then our outer proxy; a spoofed entry on the left is never reached.
        assert_eq!(
            client_address(proxy, Some("6.6.6.6, 198.51.100.7, 10.0.0.3"), &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(proxy, Some("198.51.100.7,10.0.0.4,fd00::9"), &trusted()),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost is the best we know.
        assert_eq!(
            client_address(proxy, Some("10.0.0.8, 10.0.0.9"), &trusted()),
            ip("10.0.0.8")
        );
    }

    #[test]
    fn malformed_entries_stop_the_walk() {
        let proxy = ip("10.0.0.2");
        // The nearest entry is garbage: only the peer is known.
        assert_eq!(
            client_address(proxy, Some("1.2.3.4, unknown"), &trusted()),
            proxy
        );
        assert_eq!(client_address(proxy, Some(""), &trusted()), proxy);
        assert_eq!(client_address(proxy, Some("1.2.3.4,,"), &trusted()), proxy);
        // Garbage behind a trusted hop: that hop is the answer, the left is not believed.
        assert_eq!(
            client_address(proxy, Some("1.2.3.4, evil, 10.0.0.5"), &trusted()),
            ip("10.0.0.5")
        );
        // Garbage left of the client does not matter.
        assert_eq!(
            client_address(proxy, Some("evil, 198.51.100.7"), &trusted()),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn forwarded_header() {
        let proxy = ip("10.0.0.2");
        let t = trusted();
        assert_eq!(
            client_address_forwarded(proxy, Some("for=192.0.2.60;proto=https;by=10.0.0.2"), &t),
            ip("192.0.2.60")
        );
        assert_eq!(
            client_address_forwarded(proxy, Some(r#"For="[2001:db8:cafe::17]:4711""#), &t),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_address_forwarded(
                proxy,
                Some(r#"for=6.6.6.6, for=198.51.100.17;by="x,y", for=10.0.0.3"#),
                &t
            ),
            ip("198.51.100.17")
        );
        assert_eq!(
            client_address_forwarded(proxy, Some("for=1.2.3.4, for=unknown"), &t),
            proxy
        );
        assert_eq!(
            client_address_forwarded(proxy, Some("for=1.2.3.4, for=_hidden, for=10.0.0.7"), &t),
            ip("10.0.0.7")
        );
        assert_eq!(
            client_address_forwarded(proxy, Some("proto=https"), &t),
            proxy,
            "an element without for= says nothing"
        );
    }

    // ---- PROXY protocol v2 ----

    fn v2_header(ver_cmd: u8, fam: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn v4_addresses() -> Vec<u8> {
        let mut a = vec![192, 0, 2, 10, 10, 0, 0, 1];
        a.extend_from_slice(&51234u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    #[test]
    fn signature_is_the_spec_bytes() {
        assert_eq!(
            PROXY_V2_SIGNATURE,
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
            ]
        );
    }

    #[test]
    fn proxy_v2_tcp_over_ipv4() {
        let mut buf = v2_header(0x21, 0x11, &v4_addresses(), &[]);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let h = parse_proxy_v2(&buf).unwrap();
        assert_eq!(h.consumed, 28);
        assert_eq!(h.source, Some("192.0.2.10:51234".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
        assert!(!h.local);
        assert_eq!(&buf[h.consumed..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn proxy_v2_tcp_over_ipv6_with_tlvs() {
        let src: Ipv6Addr = "2001:db8::abcd".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut a = src.octets().to_vec();
        a.extend_from_slice(&dst.octets());
        a.extend_from_slice(&40000u16.to_be_bytes());
        a.extend_from_slice(&8443u16.to_be_bytes());
        // PP2_TYPE_AUTHORITY "vdi.example" and a PP2_TYPE_NOOP padding TLV.
        let mut tlvs = vec![0x02, 0x00, 11];
        tlvs.extend_from_slice(b"vdi.example");
        tlvs.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
        let mut buf = v2_header(0x21, 0x21, &a, &tlvs);
        buf.push(0xAB);
        let h = parse_proxy_v2(&buf).unwrap();
        assert_eq!(h.consumed, 16 + 36 + tlvs.len());
        assert_eq!(h.source, Some("[2001:db8::abcd]:40000".parse().unwrap()));
        assert_eq!(h.destination, Some("[2001:db8::1]:8443".parse().unwrap()));
        assert_eq!(buf[h.consumed], 0xAB);
    }

    #[test]
    fn proxy_v2_local_command() {
        // LOCAL with UNSPEC and no addresses (a health check)…
        let h = parse_proxy_v2(&v2_header(0x20, 0x00, &[], &[])).unwrap();
        assert!(h.local);
        assert_eq!(h.consumed, 16);
        assert_eq!((h.source, h.destination), (None, None));
        // …and LOCAL ignores whatever family and addresses it carries.
        let h = parse_proxy_v2(&v2_header(0x20, 0x11, &v4_addresses(), &[])).unwrap();
        assert!(h.local);
        assert_eq!(h.consumed, 28);
        assert_eq!(h.source, None);
    }

    #[test]
    fn proxy_v2_unspec_and_unix_give_no_addresses() {
        let h = parse_proxy_v2(&v2_header(0x21, 0x00, &[], &[])).unwrap();
        assert_eq!((h.source, h.local, h.consumed), (None, false, 16));
        let h = parse_proxy_v2(&v2_header(0x21, 0x31, &[0u8; 216], &[])).unwrap();
        assert_eq!((h.source, h.consumed), (None, 232));
    }

    #[test]
    fn proxy_v2_truncated_is_incomplete() {
        let full = v2_header(0x21, 0x11, &v4_addresses(), &[]);
        assert_eq!(
            parse_proxy_v2(&[]),
            Err(ProxyError::Incomplete { needed: 16 })
        );
        assert_eq!(
            parse_proxy_v2(&full[..5]),
            Err(ProxyError::Incomplete { needed: 11 })
        );
        assert_eq!(
            parse_proxy_v2(&full[..15]),
            Err(ProxyError::Incomplete { needed: 1 })
        );
        assert_eq!(
            parse_proxy_v2(&full[..20]),
            Err(ProxyError::Incomplete { needed: 8 })
        );
        assert!(parse_proxy_v2(&full).is_ok());
    }

    #[test]
    fn proxy_v2_wrong_signature_is_not_proxy() {
        assert_eq!(
            parse_proxy_v2(b"GET / HTTP/1.1\r\n"),
            Err(ProxyError::NotProxy)
        );
        assert_eq!(
            parse_proxy_v2(b"PROXY TCP4 192.0.2.1 10.0.0.1 5 6\r\n"),
            Err(ProxyError::NotProxy),
            "the v2 parser alone does not take the text format"
        );
        // A partial buffer that already differs from the signature.
        assert_eq!(parse_proxy_v2(b"\r\n\r\nX"), Err(ProxyError::NotProxy));
        let mut bad = v2_header(0x21, 0x11, &v4_addresses(), &[]);
        bad[11] = b'Q';
        assert_eq!(parse_proxy_v2(&bad), Err(ProxyError::NotProxy));
    }

    #[test]
    fn proxy_v2_bad_fields_are_invalid() {
        let invalid = |buf: Vec<u8>| match parse_proxy_v2(&buf) {
            Err(ProxyError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(
            invalid(v2_header(0x21, 0x41, &v4_addresses(), &[])).contains("unknown address family")
        );
        assert!(invalid(v2_header(0x21, 0x13, &v4_addresses(), &[])).contains("0x13"));
        assert!(invalid(v2_header(0x21, 0x12, &v4_addresses(), &[])).contains("UDP"));
        assert!(invalid(v2_header(0x11, 0x11, &v4_addresses(), &[])).contains("version 1"));
        assert!(invalid(v2_header(0x22, 0x11, &v4_addresses(), &[])).contains("command"));
        assert!(invalid(v2_header(0x21, 0x11, &[0u8; 8], &[])).contains("needs 12"));
        assert!(invalid(v2_header(0x21, 0x21, &v4_addresses(), &[])).contains("needs 36"));
        assert!(invalid(v2_header(0x21, 0x31, &[0u8; 10], &[])).contains("needs 216"));
    }

    // ---- PROXY protocol v1, and either version ----

    #[test]
    fn proxy_v1_tcp4_and_tcp6() {
        // As nginx's stream module (`proxy_protocol on`) sends it, followed by the client's data.
        let buf = b"PROXY TCP4 192.0.2.10 10.0.0.1 51234 443\r\n\x16\x03\x01";
        let h = parse_proxy(buf).unwrap();
        assert_eq!(h, parse_proxy_v1(buf).unwrap());
        assert_eq!(h.source, Some("192.0.2.10:51234".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
        assert!(!h.local);
        assert_eq!(&buf[h.consumed..], b"\x16\x03\x01");

        let h = parse_proxy(b"PROXY TCP6 2001:db8::abcd ::1 0 65535\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::abcd]:0".parse().unwrap()));
        assert_eq!(h.destination, Some("[::1]:65535".parse().unwrap()));
        assert_eq!(h.consumed, 39);
    }

    #[test]
    fn proxy_v1_unknown_gives_no_addresses() {
        let h = parse_proxy(b"PROXY UNKNOWN\r\nGET").unwrap();
        assert_eq!((h.source, h.destination, h.consumed), (None, None, 15));
        // Whatever follows UNKNOWN on the line is ignored, as the spec says.
        let h = parse_proxy(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap();
        assert_eq!((h.source, h.consumed), (None, 35));
    }

    #[test]
    fn proxy_v1_the_longest_header_fits() {
        let addresses = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                         ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let tcp6 = format!("PROXY TCP6 {addresses}");
        assert_eq!(parse_proxy(tcp6.as_bytes()).unwrap().consumed, tcp6.len());
        // The spec's worst case: UNKNOWN followed by the longest addresses.
        let unknown = format!("PROXY UNKNOWN {addresses}");
        assert_eq!(unknown.len(), PROXY_V1_MAX_LEN);
        assert_eq!(
            parse_proxy(unknown.as_bytes()).unwrap().consumed,
            PROXY_V1_MAX_LEN
        );
    }

    #[test]
    fn proxy_v1_truncated_is_incomplete_and_an_endless_line_is_invalid() {
        let full = b"PROXY TCP4 192.0.2.10 10.0.0.1 51234 443\r\n";
        for cut in [1, 5, 6, 20, full.len() - 1] {
            assert_eq!(
                parse_proxy(&full[..cut]),
                Err(ProxyError::Incomplete { needed: 1 }),
                "{cut} bytes"
            );
        }
        assert_eq!(
            parse_proxy(&[]),
            Err(ProxyError::Incomplete { needed: 6 }),
            "nothing yet may still be either version"
        );
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(PROXY_V1_MAX_LEN, b'1');
        assert!(matches!(
            parse_proxy(&endless),
            Err(ProxyError::Invalid(reason)) if reason.contains("CRLF within 107 bytes")
        ));
    }

    #[test]
    fn either_version_or_neither() {
        let v2 = v2_header(0x21, 0x11, &v4_addresses(), &[]);
        assert_eq!(parse_proxy(&v2), parse_proxy_v2(&v2));
        // A TLS ClientHello, a request, and text that only starts like the v1 prefix.
        for data in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXYTCP4",
            b"PRIX",
        ] {
            assert_eq!(parse_proxy(data), Err(ProxyError::NotProxy), "{data:?}");
        }
    }

    #[test]
    fn proxy_v1_bad_fields_are_invalid() {
        let invalid = |line: &str| match parse_proxy(line.as_bytes()) {
            Err(ProxyError::Invalid(reason)) => reason,
            other => panic!("{line:?}: expected Invalid, got {other:?}"),
        };
        for (line, says) in [
            (
                "PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n",
                "unknown protocol `UDP4`",
            ),
            ("PROXY \r\n", "unknown protocol ``"),
            ("PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n", "is not `TCP4 SOURCE"),
            (
                "PROXY TCP4 192.0.2.1  10.0.0.1 1 2\r\n",
                "is not `TCP4 SOURCE",
            ),
            (
                "PROXY TCP4 192.0.2.1 10.0.0.1 1 2 \r\n",
                "is not `TCP4 SOURCE",
            ),
            (
                "PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
                "`2001:db8::1` is not an IPv4",
            ),
            (
                "PROXY TCP6 ::1 10.0.0.1 1 2\r\n",
                "`10.0.0.1` is not an IPv6",
            ),
            (
                "PROXY TCP4 192.0.2.01 10.0.0.1 1 2\r\n",
                "`192.0.2.01` is not an IPv4",
            ),
            (
                "PROXY TCP4 192.0.2.1 10.0.0.1 +1 2\r\n",
                "`+1` is not a port",
            ),
            (
                "PROXY TCP4 192.0.2.1 10.0.0.1 01 2\r\n",
                "`01` is not a port",
            ),
            (
                "PROXY TCP4 192.0.2.1 10.0.0.1 1 65536\r\n",
                "`65536` is not a port",
            ),
            ("PROXY TCP4 192.0.2.1\t10.0.0.1 1 2\r\n", "printable ASCII"),
            ("PROXY TCP4 192.0.2.1 10.0.0.1 1 2\n\r\n", "printable ASCII"),
        ] {
            let reason = invalid(line);
            assert!(reason.contains(says), "{line:?}: {reason}");
        }
    }
}
