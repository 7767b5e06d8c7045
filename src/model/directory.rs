//! Authentication servers (Setup > Authentication Servers): the stored description of an
//! Active Directory or OpenLDAP directory that end users sign in against, its validation, how a
//! typed login (`DOMAIN\user`, `user@domain`, `user`) is split, and which server(s) a login
//! goes to.
//!
//! Pure data and rules: no network. Talking to the directory is `auth::ldap`'s job; storing
//! the record is the store's (tree `auth_server_by_id`, keyed by `id`). The search account's
//! password is kept here in the clear because the broker must replay it to the directory; it
//! never appears in `Debug` output.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::dn::is_attribute_type;
use crate::store::Record;

/// The directory products Gatehouse knows how to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DirectoryKind {
    #[serde(rename = "active_directory")]
    ActiveDirectory,
    #[serde(rename = "openldap")]
    OpenLdap,
}

impl DirectoryKind {
    pub const ALL: [DirectoryKind; 2] = [DirectoryKind::ActiveDirectory, DirectoryKind::OpenLdap];

    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryKind::ActiveDirectory => "active_directory",
            DirectoryKind::OpenLdap => "openldap",
        }
    }

    /// The name shown in the console.
    pub fn label(self) -> &'static str {
        match self {
            DirectoryKind::ActiveDirectory => "Active Directory",
            DirectoryKind::OpenLdap => "OpenLDAP",
        }
    }
}

impl std::str::FromStr for DirectoryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '-'], "_")
            .as_str()
        {
            "active_directory" | "ad" => Ok(DirectoryKind::ActiveDirectory),
            "openldap" | "open_ldap" | "ldap" => Ok(DirectoryKind::OpenLdap),
            other => Err(format!(
                "`{other}` is not a directory type (active_directory or openldap)"
            )),
        }
    }
}

/// How the connection to the directory is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (`ldaps://`, usually port 636).
    Ldaps,
    /// Plain LDAP upgraded with the StartTLS operation before anything else (port 389).
    StartTls,
    /// No encryption: passwords cross the network readable. Active Directory refuses it.
    Plain,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Ldaps => "ldaps",
            Security::StartTls => "starttls",
            Security::Plain => "plain",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Security::Ldaps => 636,
            Security::StartTls | Security::Plain => 389,
        }
    }

    pub fn uses_tls(self) -> bool {
        !matches!(self, Security::Plain)
    }
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ldaps" => Ok(Security::Ldaps),
            "starttls" | "start_tls" => Ok(Security::StartTls),
            "plain" | "none" | "ldap" => Ok(Security::Plain),
            other => Err(format!(
                "`{other}` is not a connection security (ldaps, starttls or plain)"
            )),
        }
    }
}

/// How deep below the base DN users are searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchScope {
    /// Only the entries directly below the base DN.
    OneLevel,
    /// The base DN and everything below it.
    Subtree,
}

impl SearchScope {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchScope::OneLevel => "one_level",
            SearchScope::Subtree => "subtree",
        }
    }
}

impl std::str::FromStr for SearchScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace([' ', '-'], "_")
            .as_str()
        {
            "one_level" | "one" | "onelevel" => Ok(SearchScope::OneLevel),
            "subtree" | "sub" => Ok(SearchScope::Subtree),
            other => Err(format!(
                "`{other}` is not a search scope (one_level or subtree)"
            )),
        }
    }
}

/// One directory server address; the next one is tried when this one does not answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// Parses `host`, `host:port`, `[v6]:port` or a bare IPv6 address; `default_port` fills in
    /// a missing port.
    pub fn parse(text: &str, default_port: u16) -> Result<HostPort, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the host is empty".to_string());
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}`: give the host name only, without ldap:// or ldaps:// (the security \
                 setting chooses the protocol)"
            ));
        }
        let port_of = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("`{p}` is not a port (1 to 65535)")),
                Ok(port) => Ok(port),
            }
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: an IPv6 address opened with [ needs a ]"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => port_of(p)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{text}` is not host:port")),
            };
            return Ok(HostPort::new(host, port));
        }
        if text.matches(':').count() > 1 {
            // A bare IPv6 address.
            return Ok(HostPort::new(text, default_port));
        }
        match text.split_once(':') {
            Some((host, port)) => Ok(HostPort::new(host, port_of(port)?)),
            None => Ok(HostPort::new(text, default_port)),
        }
    }

    /// The host as it goes into a URL: IPv6 literals get brackets.
    pub fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.url_host(), self.port)
    }
}

pub use super::FieldError;

/// An authentication server as the administrator configured it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthServer {
    pub id: String,
    /// The name shown in the console and on the sign-in page's domain list.
    pub name: String,
    pub kind: DirectoryKind,
    /// What users pick or type as `DOMAIN\user` or `user@domain`: `EXAMPLE` or `example.com`.
    pub domain: String,
    /// Other names of the same domain (the NetBIOS name next to the DNS name, UPN suffixes).
    pub aliases: Vec<String>,
    /// Tried in order; the next is used when one does not answer.
    pub hosts: Vec<HostPort>,
    pub security: Security,
    /// Check the server's certificate. Off is possible and shown as a warning.
    pub verify_tls: bool,
    /// The CA (or CAs) that signed the directory's certificate, in PEM. `None` trusts the
    /// system's CA bundle.
    pub ca_cert_pem: Option<String>,
    /// The search account. Empty means anonymous searches (OpenLDAP only). Active Directory
    /// also accepts `user@domain` here.
    pub bind_dn: String,
    pub bind_password: String,
    /// Where users are searched for.
    pub base_dn: String,
    /// Where groups are searched for (groups of groups, the members of groups on a directory
    /// without memberOf, the console's list of groups). Empty: the base DN.
    #[serde(default)]
    pub group_base_dn: String,
    pub scope: SearchScope,
    /// `sAMAccountName` (AD) or `uid` (OpenLDAP).
    pub login_attribute: String,
    /// The user attribute that lists group DNs, `memberOf`.
    pub group_attribute: String,
    /// Count groups of groups (AD: matching rule 1.2.840.113556.1.4.1941; OpenLDAP: group
    /// membership is expanded level by level).
    pub nested_groups: bool,
    /// Follow continuation references to other servers (with the same security and search
    /// account). Off: references are skipped.
    pub follow_referrals: bool,
    /// Name lookup, TCP connect, TLS handshake and the search account's bind, per host.
    pub connect_timeout_secs: u32,
    /// Each search or bind once connected.
    pub search_timeout_secs: u32,
    /// Position in the list when no domain is given (lower first).
    pub order: u32,
}

impl Record for AuthServer {
    const TREE: &'static str = "auth_server_by_id";
}

impl Default for AuthServer {
    fn default() -> Self {
        AuthServer::defaults_for(DirectoryKind::OpenLdap)
    }
}

impl fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthServer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("domain", &self.domain)
            .field("aliases", &self.aliases)
            .field("hosts", &self.hosts)
            .field("security", &self.security)
            .field("verify_tls", &self.verify_tls)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field("bind_dn", &self.bind_dn)
            .field(
                "bind_password",
                &if self.bind_password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("base_dn", &self.base_dn)
            .field("group_base_dn", &self.group_base_dn)
            .field("scope", &self.scope)
            .field("login_attribute", &self.login_attribute)
            .field("group_attribute", &self.group_attribute)
            .field("nested_groups", &self.nested_groups)
            .field("follow_referrals", &self.follow_referrals)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("search_timeout_secs", &self.search_timeout_secs)
            .field("order", &self.order)
            .finish()
    }
}

/// Bounds of the timeouts, in seconds.
pub const CONNECT_TIMEOUT_RANGE: (u32, u32) = (1, 60);
pub const SEARCH_TIMEOUT_RANGE: (u32, u32) = (1, 300);

impl AuthServer {
    /// Where groups are searched for: the group base DN, or the base DN when it is empty.
    pub fn group_base(&self) -> &str {
        match self.group_base_dn.trim() {
            "" => self.base_dn.trim(),
            base => base,
        }
    }

    /// A new server of `kind` with the settings that kind usually has; id, name, domain,
    /// hosts, DNs and password are left for the administrator.
    pub fn defaults_for(kind: DirectoryKind) -> AuthServer {
        let (login_attribute, security) = match kind {
            DirectoryKind::ActiveDirectory => ("sAMAccountName", Security::Ldaps),
            DirectoryKind::OpenLdap => ("uid", Security::Ldaps),
        };
        AuthServer {
            id: String::new(),
            name: String::new(),
            kind,
            domain: String::new(),
            aliases: Vec::new(),
            hosts: Vec::new(),
            security,
            verify_tls: true,
            ca_cert_pem: None,
            bind_dn: String::new(),
            bind_password: String::new(),
            base_dn: String::new(),
            group_base_dn: String::new(),
            scope: SearchScope::Subtree,
            login_attribute: login_attribute.to_string(),
            group_attribute: "memberOf".to_string(),
            nested_groups: false,
            follow_referrals: false,
            connect_timeout_secs: 5,
            search_timeout_secs: 10,
            order: 0,
        }
    }

    /// True when `domain` (as typed, any case) names this server's domain or one of its
    /// aliases.
    pub fn serves_domain(&self, domain: &str) -> bool {
        let domain = domain.trim();
        !domain.is_empty()
            && std::iter::once(&self.domain)
                .chain(self.aliases.iter())
                .any(|d| d.trim().eq_ignore_ascii_case(domain))
    }

    /// Every problem with this configuration, one sentence each; empty when it can be saved.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, reason: String| errors.push(FieldError::new(field, reason));

        if self.id.trim().is_empty() {
            err("id", "an authentication server needs an id".into());
        }
        if self.name.trim().is_empty() {
            err(
                "name",
                "give the server a name, for example \"Head office AD\"".into(),
            );
        } else if self.name.chars().count() > 100 {
            err("name", "the name is longer than 100 characters".into());
        }

        if self.domain.trim().is_empty() {
            err(
                "domain",
                "give the domain users type before a backslash or after an @, for example \
                 EXAMPLE or example.com"
                    .into(),
            );
        } else if let Some(reason) = domain_problem(&self.domain) {
            err("domain", reason);
        }
        for alias in &self.aliases {
            if let Some(reason) = domain_problem(alias) {
                err("aliases", reason);
            }
        }

        if self.hosts.is_empty() {
            err(
                "hosts",
                format!(
                    "give at least one server address, for example dc1.example.com:{}",
                    self.security.default_port()
                ),
            );
        }
        for hp in &self.hosts {
            if let Some(reason) = host_problem(hp) {
                err("hosts", reason);
            }
        }

        if self.kind == DirectoryKind::ActiveDirectory && self.security == Security::Plain {
            err(
                "security",
                "Active Directory refuses simple binds on plain LDAP: choose LDAPS (port 636) \
                 or StartTLS (port 389)"
                    .into(),
            );
        }
        if let Some(pem) = &self.ca_cert_pem
            && !pem.trim().is_empty()
            && let Err(reason) = super::check_ca_pem(pem)
        {
            err("ca_cert_pem", reason);
        }

        match (
            self.bind_dn.trim().is_empty(),
            self.bind_password.is_empty(),
        ) {
            (true, _) if self.kind == DirectoryKind::ActiveDirectory => err(
                "bind_dn",
                "Active Directory does not allow anonymous searches: give a search account \
                 (its DN, or user@domain)"
                    .into(),
            ),
            (true, false) => err(
                "bind_dn",
                "a search password is set but no search account DN: give the DN or clear the \
                 password for anonymous searches"
                    .into(),
            ),
            (false, true) => err(
                "bind_password",
                "give the search account's password (a bind with a DN and no password is an \
                 anonymous bind, which finds nothing on most directories)"
                    .into(),
            ),
            _ => {}
        }
        if !self.bind_dn.trim().is_empty() && !looks_like_dn(&self.bind_dn) {
            let ad_name = self.kind == DirectoryKind::ActiveDirectory
                && (self.bind_dn.contains('@') || self.bind_dn.contains('\\'));
            if !ad_name {
                err(
                    "bind_dn",
                    format!(
                        "`{}` is not a DN; write it like cn=search,ou=services,dc=example,dc=com{}",
                        self.bind_dn.trim(),
                        if self.kind == DirectoryKind::ActiveDirectory {
                            " (or search@example.com)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }

        if self.base_dn.trim().is_empty() {
            err(
                "base_dn",
                "give the base DN users are searched under, for example dc=example,dc=com".into(),
            );
        } else if !looks_like_dn(&self.base_dn) {
            err(
                "base_dn",
                format!(
                    "`{}` is not a DN; write it like ou=people,dc=example,dc=com",
                    self.base_dn.trim()
                ),
            );
        }

        if !self.group_base_dn.trim().is_empty() && !looks_like_dn(&self.group_base_dn) {
            err(
                "group_base_dn",
                format!(
                    "`{}` is not a DN; write it like ou=groups,dc=example,dc=com, or leave it \
                     empty to search groups under the base DN",
                    self.group_base_dn.trim()
                ),
            );
        }

        if !is_attribute_type(&self.login_attribute) {
            err(
                "login_attribute",
                format!(
                    "`{}` is not an attribute name; Active Directory uses sAMAccountName (or \
                     userPrincipalName), OpenLDAP uid",
                    self.login_attribute
                ),
            );
        }
        if !is_attribute_type(&self.group_attribute) {
            err(
                "group_attribute",
                format!(
                    "`{}` is not an attribute name; the usual one is memberOf",
                    self.group_attribute
                ),
            );
        }

        let (lo, hi) = CONNECT_TIMEOUT_RANGE;
        if !(lo..=hi).contains(&self.connect_timeout_secs) {
            err(
                "connect_timeout_secs",
                format!("the connect timeout must be between {lo} and {hi} seconds"),
            );
        }
        let (lo, hi) = SEARCH_TIMEOUT_RANGE;
        if !(lo..=hi).contains(&self.search_timeout_secs) {
            err(
                "search_timeout_secs",
                format!("the search timeout must be between {lo} and {hi} seconds"),
            );
        }
        errors
    }

    /// Settings that work but weaken security, for the console to show next to the form.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.security == Security::Plain {
            warnings.push(
                "plain LDAP: user passwords cross the network readable; use LDAPS or StartTLS"
                    .to_string(),
            );
        } else if !self.verify_tls {
            warnings.push(
                "certificate verification is off: anyone between Gatehouse and the directory \
                 can pose as it and read user passwords; paste the directory's CA certificate \
                 instead"
                    .to_string(),
            );
        }
        if self.follow_referrals && self.security == Security::Plain {
            warnings.push(
                "referrals are followed over plain LDAP: the search account's password may be \
                 sent to other servers readable"
                    .to_string(),
            );
        }
        warnings
    }
}

fn domain_problem(domain: &str) -> Option<String> {
    let d = domain.trim();
    if d.is_empty() {
        return Some("a domain alias is empty".to_string());
    }
    if d.contains(['\\', '@', '/', ' ', ',', '=']) || d.chars().any(char::is_control) {
        return Some(format!(
            "`{d}` is not a domain name: use letters, digits, dots and hyphens, like EXAMPLE or \
             example.com"
        ));
    }
    if d.len() > 253 {
        return Some(format!("`{d}` is longer than 253 characters"));
    }
    None
}

fn host_problem(hp: &HostPort) -> Option<String> {
    let h = hp.host.trim();
    if h.is_empty() {
        return Some("a server address is empty".to_string());
    }
    if h.contains("://") || h.contains('/') {
        return Some(format!(
            "`{h}`: give the host name only, without ldap:// or a path"
        ));
    }
    if h.parse::<std::net::IpAddr>().is_err()
        && !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Some(format!("`{h}` is not a host name or IP address"));
    }
    if hp.port == 0 {
        return Some(format!("`{h}`: the port must be between 1 and 65535"));
    }
    None
}

/// A loose check: `attr=value` pairs separated by commas.
fn looks_like_dn(dn: &str) -> bool {
    let dn = dn.trim();
    !dn.is_empty()
        && dn.split(',').next().is_some_and(|rdn| {
            rdn.split_once('=')
                .is_some_and(|(a, v)| is_attribute_type(a.trim()) && !v.trim().is_empty())
        })
}

/// Splits what a user typed into the domain (if given) and the user name:
/// `DOMAIN\user` → (`DOMAIN`, `user`), `user@example.com` → (`example.com`, `user`),
/// `user` → (none, `user`). Surrounding spaces are dropped; an empty domain counts as none.
pub fn split_login(typed: &str) -> (Option<String>, String) {
    let typed = typed.trim();
    let nonempty = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    if let Some((domain, user)) = typed.split_once('\\') {
        return (nonempty(domain), user.trim().to_string());
    }
    if let Some((user, domain)) = typed.rsplit_once('@') {
        return (nonempty(domain), user.trim().to_string());
    }
    (None, typed.to_string())
}

/// The servers a login goes to: with a domain, the servers serving it (by name or alias, any
/// case), in `order`; without one, every server in `order`. An unknown domain gives none.
pub fn choose<'a>(servers: &'a [AuthServer], domain: Option<&str>) -> Vec<&'a AuthServer> {
    let mut chosen: Vec<&AuthServer> = match domain.map(str::trim).filter(|d| !d.is_empty()) {
        Some(domain) => servers.iter().filter(|s| s.serves_domain(domain)).collect(),
        None => servers.iter().collect(),
    };
    chosen.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad() -> AuthServer {
        AuthServer {
            id: "ad1".into(),
            name: "Head office".into(),
            domain: "EXAMPLE".into(),
            aliases: vec!["example.com".into()],
            hosts: vec![HostPort::new("dc1.example.com", 636)],
            bind_dn: "cn=search,cn=Users,dc=example,dc=com".into(),
            bind_password: "s3cret-search".into(),
            base_dn: "dc=example,dc=com".into(),
            ..AuthServer::defaults_for(DirectoryKind::ActiveDirectory)
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn defaults_follow_the_kind() {
        let ad = AuthServer::defaults_for(DirectoryKind::ActiveDirectory);
        assert_eq!(ad.login_attribute, "sAMAccountName");
        assert_eq!(ad.group_attribute, "memberOf");
        assert_eq!(ad.security, Security::Ldaps);
        assert!(ad.verify_tls);
        let ol = AuthServer::defaults_for(DirectoryKind::OpenLdap);
        assert_eq!(ol.login_attribute, "uid");
        assert_eq!(ol.kind, DirectoryKind::OpenLdap);
    }

    #[test]
    fn a_complete_server_validates() {
        assert_eq!(ad().validate(), vec![]);
    }

    #[test]
    fn an_empty_server_names_every_missing_field() {
        let errors = AuthServer::defaults_for(DirectoryKind::ActiveDirectory).validate();
        let f = fields(&errors);
        for field in ["id", "name", "domain", "hosts", "bind_dn", "base_dn"] {
            assert!(f.contains(&field), "{field} missing from {errors:?}");
        }
        assert!(errors.iter().all(|e| e.reason.len() > 15), "{errors:?}");
    }

    #[test]
    fn active_directory_refuses_plain_ldap_and_anonymous_search() {
        let mut s = ad();
        s.security = Security::Plain;
        s.bind_dn.clear();
        s.bind_password.clear();
        let f = fields(&s.validate()).join(",");
        assert!(f.contains("security") && f.contains("bind_dn"), "{f}");

        let mut ol = ad();
        ol.kind = DirectoryKind::OpenLdap;
        ol.security = Security::Plain;
        ol.bind_dn.clear();
        ol.bind_password.clear();
        assert_eq!(ol.validate(), vec![], "OpenLDAP may search anonymously");
        assert!(ol.warnings()[0].contains("readable"));
    }

    #[test]
    fn a_search_dn_without_password_is_refused() {
        let mut s = ad();
        s.bind_password.clear();
        assert_eq!(fields(&s.validate()), vec!["bind_password"]);
    }

    #[test]
    fn ad_accepts_a_upn_as_search_account_but_openldap_wants_a_dn() {
        let mut s = ad();
        s.bind_dn = "search@example.com".into();
        assert_eq!(s.validate(), vec![]);
        s.kind = DirectoryKind::OpenLdap;
        assert_eq!(fields(&s.validate()), vec!["bind_dn"]);
    }

    #[test]
    fn bad_values_are_named() {
        let mut s = ad();
        s.hosts = vec![HostPort::new("ldaps://dc1", 636), HostPort::new("dc2", 0)];
        s.base_dn = "example.com".into();
        s.login_attribute = "sam account".into();
        s.group_attribute = String::new();
        s.group_base_dn = "groups".into();
        s.connect_timeout_secs = 0;
        s.search_timeout_secs = 1000;
        s.domain = "EXAMPLE\\X".into();
        s.ca_cert_pem = Some("not a certificate".into());
        let errors = s.validate();
        let f = fields(&errors);
        assert_eq!(f.iter().filter(|f| **f == "hosts").count(), 2, "{errors:?}");
        for field in [
            "base_dn",
            "login_attribute",
            "group_attribute",
            "group_base_dn",
            "connect_timeout_secs",
            "search_timeout_secs",
            "domain",
            "ca_cert_pem",
        ] {
            assert!(f.contains(&field), "{field} missing from {errors:?}");
        }
    }

    #[test]
    fn a_real_ca_certificate_is_accepted() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        let mut s = ad();
        s.ca_cert_pem = Some(cert.pem());
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn debug_hides_the_search_password() {
        let shown = format!("{:?}", ad());
        assert!(!shown.contains("s3cret-search"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("cn=search"));
    }

    #[test]
    fn turning_verification_off_is_a_warning() {
        let mut s = ad();
        assert!(s.warnings().is_empty());
        s.verify_tls = false;
        assert_eq!(s.validate(), vec![]);
        assert!(s.warnings()[0].contains("verification is off"));
    }

    #[test]
    fn serde_round_trip_and_old_records_get_defaults() {
        let s = ad();
        let json = serde_json::to_string(&s).expect("json");
        assert!(json.contains("\"active_directory\""));
        let back: AuthServer = serde_json::from_str(&json).expect("back");
        assert_eq!(back, s);
        let old: AuthServer =
            serde_json::from_str(r#"{"id":"x","name":"n","kind":"openldap"}"#).expect("old");
        assert_eq!(old.search_timeout_secs, 10);
        assert_eq!(old.kind, DirectoryKind::OpenLdap);
    }

    #[test]
    fn logins_split_into_domain_and_user() {
        assert_eq!(
            split_login("EXAMPLE\\alice"),
            (Some("EXAMPLE".into()), "alice".into())
        );
        assert_eq!(
            split_login(" alice@example.com "),
            (Some("example.com".into()), "alice".into())
        );
        assert_eq!(split_login("alice"), (None, "alice".into()));
        assert_eq!(split_login("\\alice"), (None, "alice".into()));
        assert_eq!(
            split_login("a@b@example.com"),
            (Some("example.com".into()), "a@b".into())
        );
        assert_eq!(
            split_login("EXAMPLE\\a@b"),
            (Some("EXAMPLE".into()), "a@b".into())
        );
    }

    #[test]
    fn the_domain_chooses_the_server_and_none_means_all_in_order() {
        let mut a = ad();
        a.order = 2;
        let mut b = ad();
        b.id = "ol".into();
        b.name = "Lab".into();
        b.kind = DirectoryKind::OpenLdap;
        b.domain = "lab.example.org".into();
        b.aliases = vec!["LAB".into()];
        b.order = 1;
        let servers = vec![a, b];
        let ids = |v: Vec<&AuthServer>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(choose(&servers, Some("example"))), vec!["ad1"]);
        assert_eq!(ids(choose(&servers, Some("EXAMPLE.COM"))), vec!["ad1"]);
        assert_eq!(ids(choose(&servers, Some("lab"))), vec!["ol"]);
        assert_eq!(ids(choose(&servers, None)), vec!["ol", "ad1"]);
        assert_eq!(ids(choose(&servers, Some(" "))), vec!["ol", "ad1"]);
        assert!(choose(&servers, Some("other")).is_empty());
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            HostPort::parse("dc1.example.com", 636),
            Ok(HostPort::new("dc1.example.com", 636))
        );
        assert_eq!(
            HostPort::parse("dc1:3269", 636),
            Ok(HostPort::new("dc1", 3269))
        );
        assert_eq!(
            HostPort::parse("[::1]:389", 636),
            Ok(HostPort::new("::1", 389))
        );
        assert_eq!(HostPort::parse("::1", 636), Ok(HostPort::new("::1", 636)));
        assert!(HostPort::parse("dc1:0", 636).is_err());
        assert!(HostPort::parse("ldaps://dc1", 636).is_err());
        assert_eq!(HostPort::new("::1", 389).to_string(), "[::1]:389");
    }

    #[test]
    fn enums_parse_from_form_values() {
        assert_eq!("openldap".parse(), Ok(DirectoryKind::OpenLdap));
        assert_eq!(
            "Active Directory".parse(),
            Ok(DirectoryKind::ActiveDirectory)
        );
        assert_eq!("starttls".parse(), Ok(Security::StartTls));
        assert_eq!("one_level".parse(), Ok(SearchScope::OneLevel));
        assert!("x".parse::<Security>().is_err());
    }
}
