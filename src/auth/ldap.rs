//! Directory sign-in against Active Directory and OpenLDAP through `ldap3`: finding a user with
//! the search account, checking their password with a bind as the found DN, reading their
//! groups, the cheap per-request `lookup` that notices disabled accounts, the group list the
//! console offers, and the step-by-step "Test connection".
//!
//! It owns the network side of one `model::directory::AuthServer`: its connections (a small
//! pool of search connections bound as the search account, and a pool of connections used only
//! for user binds), host failover, TLS settings and timeouts. It decides who someone is and
//! which groups they are in, never what they may do (that is the broker's assignments), and it
//! never stores anything.
//!
//! Behaviour worth knowing:
//! - Every network step runs under the server's timeouts: DNS, TCP connect and TLS handshake
//!   share `connect_timeout_secs` per host; each search or bind gets `search_timeout_secs`. A
//!   host that failed is tried after the others for [`HOST_RETRY_AFTER`].
//! - Filter values are escaped with `ldap3::ldap_escape` (no LDAP injection); an empty password
//!   is refused before any bind (an empty-password bind is an anonymous bind, not a sign-in).
//! - Continuation references (Active Directory returns them for its Configuration and DNS
//!   zones when searching from the domain root) are skipped, unless `follow_referrals` is on:
//!   then they are followed once, with the same TLS settings (an `ldap://` reference is
//!   upgraded with StartTLS unless the server is configured for plain LDAP) and search account.
//!   A reference that cannot be followed never breaks a sign-in.
//! - Active Directory leaves a user's primary group (`primaryGroupID`, usually 513, "Domain
//!   Users") out of `memberOf`. For a user found on the configured servers, the group whose
//!   `objectSid` is the user's SID with its last part (the user's RID) replaced by
//!   `primaryGroupID` is searched under the group base and counted as one of their groups (with
//!   the groups containing it, when nested groups are on). A user without a readable SID or
//!   primary group ID, or whose primary group is not under the group base, simply has no
//!   primary group.
//! - Disabled accounts: Active Directory `userAccountControl` bit 0x2 (ACCOUNTDISABLE) or an
//!   `accountExpires` in the past; OpenLDAP `pwdAccountLockedTime` present (ppolicy; any value,
//!   including a lockout that would expire, counts as locked) or `shadowExpire` (days since
//!   1970-01-01) on or before today. A disabled user is refused even if the directory accepted
//!   the bind (OpenLDAP's ppolicy does not refuse binds without a default policy).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, StdStream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;

use crate::model::directory::{
    AuthServer, DirectoryKind, HostPort, SearchScope, Security, split_login,
};

/// How long a host that failed is tried only after the others.
pub const HOST_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Idle pooled connections older than this are closed rather than reused (Active Directory
/// drops idle connections after 15 minutes).
pub const POOL_IDLE_MAX: Duration = Duration::from_secs(240);
/// Connections per pool when not configured.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How many levels of groups-in-groups are expanded on OpenLDAP.
const NESTED_DEPTH: usize = 10;
/// How many continuation references are followed per search.
const MAX_REFERRALS: usize = 8;
/// Page size for group listings (Active Directory returns at most 1,000 entries per page).
const PAGE_SIZE: i32 = 500;

/// What can go wrong while signing someone in or talking to the directory. Messages say what
/// failed and what to do; none contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("wrong password: check it (and Caps Lock) and try again")]
    WrongPassword,
    #[error(
        "no password given: type your password (an empty password is never sent to the directory)"
    )]
    EmptyPassword,
    #[error("no such user in the directory: check the user name and the domain")]
    UnknownUser,
    #[error("the account is disabled, locked or expired in the directory: ask an administrator")]
    Disabled,
    #[error("the password has expired or must be changed: change it, then sign in again")]
    PasswordExpired,
    #[error("directory server {host} cannot be reached: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("TLS with the directory failed: {0}")]
    Tls(String),
    #[error("the directory refused a bind: {0}")]
    Bind(String),
    #[error("searching the directory failed: {0}")]
    Search(String),
    #[error(
        "the directory did not answer {what} within {secs} s: check that it is healthy, or raise \
         the timeout"
    )]
    Timeout { what: String, secs: u32 },
    #[error("the authentication server settings cannot be used: {0}")]
    Config(String),
}

impl DirectoryError {
    /// A stable, lowercase code for logs, the audit trail and the HTTP error mapping.
    pub fn code(&self) -> &'static str {
        match self {
            DirectoryError::WrongPassword => "wrong_password",
            DirectoryError::EmptyPassword => "empty_password",
            DirectoryError::UnknownUser => "unknown_user",
            DirectoryError::Disabled => "account_disabled",
            DirectoryError::PasswordExpired => "password_expired",
            DirectoryError::Unreachable { .. } => "directory_unreachable",
            DirectoryError::Tls(_) => "directory_tls",
            DirectoryError::Bind(_) => "directory_bind",
            DirectoryError::Search(_) => "directory_search",
            DirectoryError::Timeout { .. } => "directory_timeout",
            DirectoryError::Config(_) => "directory_config",
        }
    }

    /// True when the user (not the directory or its configuration) is the cause. The sign-in
    /// page should show `WrongPassword` and `UnknownUser` with the same words, so that names
    /// cannot be probed.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DirectoryError::WrongPassword
                | DirectoryError::EmptyPassword
                | DirectoryError::UnknownUser
                | DirectoryError::Disabled
                | DirectoryError::PasswordExpired
        )
    }
}

pub type Result<T, E = DirectoryError> = std::result::Result<T, E>;

/// A user as the directory describes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectoryUser {
    pub server_id: String,
    /// As stored in the login attribute (the directory's spelling and case).
    pub username: String,
    pub dn: String,
    pub display_name: String,
    pub email: Option<String>,
    /// Group names: the CN of each group DN, sorted, without duplicates.
    pub groups: Vec<String>,
    /// The full group DNs, sorted.
    pub group_dns: Vec<String>,
    pub disabled: bool,
}

/// A group as the directory lists it: its name (CN) and its DN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DirectoryGroup {
    pub name: String,
    pub dn: String,
}

/// One step of "Test connection".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `DNS`, `TCP`, `TLS`, `Bind` or `Search base`.
    pub name: &'static str,
    /// The host (`host:port`) the step was run against.
    pub host: String,
    pub ok: bool,
    pub detail: String,
}

/// What "Test connection" found: the steps per host, in order, stopping at a host's first
/// failure, and the settings that weaken security.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

impl TestReport {
    /// Every step of every host passed.
    pub fn ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    /// The first step that failed.
    pub fn first_failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.ok)
    }
}

/// An open connection and the task that drives it.
struct Conn {
    ldap: Ldap,
    driver: JoinHandle<()>,
    last_used: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A bounded set of reusable connections.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
}

impl Pool {
    fn new(size: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// An idle connection that still looks alive, if any.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut conn) = idle.pop() {
            if !conn.ldap.is_closed() && conn.last_used.elapsed() < POOL_IDLE_MAX {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, mut conn: Conn) {
        conn.last_used = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }
}

/// Which pool, and so how a new connection is prepared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Bound as the search account.
    Search,
    /// Used only for user binds; its bind state does not matter.
    UserBind,
}

/// Where a found user lives when it is not the configured servers (a followed referral).
#[derive(Debug, Clone)]
struct Origin {
    host: HostPort,
    security: Security,
}

/// A user entry as found, before groups are resolved.
struct Found {
    entry: SearchEntry,
    origin: Option<Origin>,
}

/// The outcome of one search: real entries only, plus any references.
struct SearchOutcome {
    entries: Vec<SearchEntry>,
    refs: Vec<String>,
    rc: u32,
    text: String,
}

/// A failure while connecting to one host, with the step it happened in.
struct ConnectFailure {
    step: &'static str,
    error: DirectoryError,
}

/// Signs users in against one authentication server. Cheap to create: connections are made
/// on first use and kept in small pools. Share it (`Arc`) between requests.
pub struct LdapDirectory {
    server: AuthServer,
    tls: OnceLock<std::result::Result<DirectoryTls, String>>,
    search_pool: Pool,
    bind_pool: Pool,
    down_since: Mutex<HashMap<HostPort, Instant>>,
    opened: AtomicU64,
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("server", &self.server)
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .finish()
    }
}

impl LdapDirectory {
    pub fn new(server: AuthServer) -> Self {
        Self::with_pool_size(server, DEFAULT_POOL_SIZE)
    }

    /// Like `new`, with at most `size` search connections and `size` bind connections.
    pub fn with_pool_size(server: AuthServer, size: usize) -> Self {
        LdapDirectory {
            server,
            tls: OnceLock::new(),
            search_pool: Pool::new(size),
            bind_pool: Pool::new(size),
            down_since: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        }
    }

    pub fn server(&self) -> &AuthServer {
        &self.server
    }

    /// How many connections this directory has opened so far (for metrics and tests).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.server.connect_timeout_secs.max(1)))
    }

    fn search_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.server.search_timeout_secs.max(1)))
    }

    fn op_timeout(&self, what: &str) -> DirectoryError {
        DirectoryError::Timeout {
            what: what.to_string(),
            secs: self.server.search_timeout_secs.max(1),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sign-in, lookup, groups
    // -----------------------------------------------------------------------------------------

    /// Checks `password` for the user typed as `user`, `DOMAIN\user` or `user@domain` (the
    /// domain part is dropped: choosing the server is the caller's job, see
    /// `model::directory::choose`). Returns the user with their groups.
    #[tracing::instrument(skip(self, password), fields(server = %self.server.id))]
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<DirectoryUser> {
        if password.is_empty() {
            return Err(DirectoryError::EmptyPassword);
        }
        let name = self.login_name(user);
        if name.is_empty() {
            return Err(DirectoryError::UnknownUser);
        }
        let found = self
            .find_user(&name)
            .await?
            .ok_or(DirectoryError::UnknownUser)?;
        self.bind_user(&found, password).await?;
        let user = self.describe(found).await?;
        if user.disabled {
            tracing::info!(dn = %user.dn, "directory account is disabled");
            return Err(DirectoryError::Disabled);
        }
        tracing::debug!(dn = %user.dn, groups = user.groups.len(), "directory sign-in");
        Ok(user)
    }

    /// Whether the user still exists and is enabled: one search, no group lookups (the check
    /// the broker makes on every request of a signed-in user).
    #[tracing::instrument(skip(self), fields(server = %self.server.id))]
    pub async fn is_enabled(&self, user: &str) -> Result<bool> {
        let name = self.login_name(user);
        if name.is_empty() {
            return Ok(false);
        }
        Ok(match self.find_user(&name).await? {
            Some(found) => !is_disabled(self.server.kind, &found.entry, chrono::Utc::now()),
            None => false,
        })
    }

    /// The user as the directory describes them now, without checking a password: `None`
    /// when the account no longer exists. One search on a pooled connection, plus one for an
    /// Active Directory user's primary group and more with nested groups.
    #[tracing::instrument(skip(self), fields(server = %self.server.id))]
    pub async fn lookup(&self, user: &str) -> Result<Option<DirectoryUser>> {
        let name = self.login_name(user);
        if name.is_empty() {
            return Ok(None);
        }
        match self.find_user(&name).await? {
            Some(found) => Ok(Some(self.describe(found).await?)),
            None => Ok(None),
        }
    }

    /// The names (CNs) of the groups under the group base DN, sorted, each once (groups of one
    /// name in several places are one name here: [`LdapDirectory::group_entries`] tells them
    /// apart).
    pub async fn groups(&self) -> Result<Vec<String>> {
        let names: BTreeSet<String> = self
            .group_entries()
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect();
        Ok(names.into_iter().collect())
    }

    /// The groups under the group base DN with their DNs, sorted by name, then DN: what the
    /// console offers when an assignment names a group. Paged, so Active Directory's
    /// 1,000-entry limit does not cut the list.
    #[tracing::instrument(skip(self), fields(server = %self.server.id))]
    pub async fn group_entries(&self) -> Result<Vec<DirectoryGroup>> {
        let filter = match self.server.kind {
            DirectoryKind::ActiveDirectory => "(objectClass=group)",
            DirectoryKind::OpenLdap => {
                "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"
            }
        };
        let base = self.server.group_base();
        let out = self
            .search(base, Scope::Subtree, filter, &["cn"], true)
            .await?;
        self.check_outcome(&out, base)?;
        let mut groups = BTreeSet::new();
        for entry in &out.entries {
            let name = attr_first(entry, "cn")
                .map(str::to_string)
                .or_else(|| rdn_value(&entry.dn));
            if let Some(name) = name {
                groups.insert(DirectoryGroup {
                    name,
                    dn: entry.dn.clone(),
                });
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// The name to search for: the user part of what was typed, or all of it when the login
    /// attribute is the user principal name.
    fn login_name(&self, typed: &str) -> String {
        let typed = typed.trim();
        if self
            .server
            .login_attribute
            .eq_ignore_ascii_case("userPrincipalName")
            && typed.contains('@')
        {
            return typed.to_string();
        }
        split_login(typed).1
    }

    fn user_attributes(&self) -> Vec<String> {
        let mut attrs: Vec<String> = vec![
            self.server.login_attribute.clone(),
            self.server.group_attribute.clone(),
            "cn".into(),
            "displayName".into(),
            "mail".into(),
        ];
        match self.server.kind {
            DirectoryKind::ActiveDirectory => {
                attrs.extend([
                    "userAccountControl".into(),
                    "accountExpires".into(),
                    "objectSid".into(),
                    "primaryGroupID".into(),
                ]);
            }
            DirectoryKind::OpenLdap => {
                attrs.extend(["pwdAccountLockedTime".into(), "shadowExpire".into()]);
            }
        }
        attrs
    }

    fn user_filter(&self, name: &str) -> String {
        let value = ldap3::ldap_escape(name);
        let attr = &self.server.login_attribute;
        match self.server.kind {
            DirectoryKind::ActiveDirectory => {
                format!("(&(objectCategory=person)(objectClass=user)({attr}={value}))")
            }
            DirectoryKind::OpenLdap => format!("({attr}={value})"),
        }
    }

    /// Finds the one entry whose login attribute is `name`.
    async fn find_user(&self, name: &str) -> Result<Option<Found>> {
        let filter = self.user_filter(name);
        let attrs = self.user_attributes();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let scope = to_scope(self.server.scope);
        let out = self
            .search(&self.server.base_dn, scope, &filter, &attrs, false)
            .await?;
        if out.rc != 0 && !(out.rc == 10 && self.server.follow_referrals) {
            self.check_outcome(&out, &self.server.base_dn)?;
        }
        let mut found: Vec<Found> = out
            .entries
            .into_iter()
            .map(|entry| Found {
                entry,
                origin: None,
            })
            .collect();
        if found.is_empty() && self.server.follow_referrals && !out.refs.is_empty() {
            found = self.follow(&out.refs, scope, &filter, &attrs).await;
        } else if !out.refs.is_empty() {
            tracing::debug!(refs = out.refs.len(), "skipped continuation references");
        }
        let mut seen = HashSet::new();
        found.retain(|f| seen.insert(f.entry.dn.to_ascii_lowercase()));
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(DirectoryError::Search(format!(
                "{n} entries have {}={name} under {}: make the login attribute unique or narrow \
                 the base DN",
                self.server.login_attribute, self.server.base_dn
            ))),
        }
    }

    /// Turns a found entry into a `DirectoryUser`, resolving groups.
    async fn describe(&self, found: Found) -> Result<DirectoryUser> {
        let entry = &found.entry;
        let mut group_dns: BTreeSet<String> = attr_values(entry, &self.server.group_attribute)
            .iter()
            .cloned()
            .collect();
        let username = attr_first(entry, &self.server.login_attribute)
            .unwrap_or_default()
            .to_string();
        if found.origin.is_none() {
            match self.server.kind {
                DirectoryKind::ActiveDirectory => {
                    if self.server.nested_groups {
                        group_dns.extend(self.ad_groups_containing(&entry.dn).await?);
                    }
                    if let Some(primary) = self.ad_primary_group(entry).await? {
                        if self.server.nested_groups {
                            group_dns.extend(self.ad_groups_containing(&primary).await?);
                        }
                        group_dns.insert(primary);
                    }
                }
                DirectoryKind::OpenLdap => {
                    if group_dns.is_empty() {
                        // No memberOf overlay: ask the groups themselves.
                        let filter = format!(
                            "(|(&(objectClass=groupOfNames)(member={dn}))\
                             (&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))\
                             (&(objectClass=posixGroup)(memberUid={uid})))",
                            dn = ldap3::ldap_escape(entry.dn.as_str()),
                            uid = ldap3::ldap_escape(username.as_str()),
                        );
                        group_dns.extend(self.group_dns_where(&filter, false).await?);
                    }
                    if self.server.nested_groups {
                        self.expand_nested(&mut group_dns).await?;
                    }
                }
            }
        }
        let groups: BTreeSet<String> = group_dns.iter().filter_map(|dn| rdn_value(dn)).collect();
        let display_name = attr_first(entry, "displayName")
            .or_else(|| attr_first(entry, "cn"))
            .unwrap_or(&username)
            .to_string();
        Ok(DirectoryUser {
            server_id: self.server.id.clone(),
            username,
            dn: entry.dn.clone(),
            display_name,
            email: attr_first(entry, "mail").map(str::to_string),
            groups: groups.into_iter().collect(),
            group_dns: group_dns.into_iter().collect(),
            disabled: is_disabled(self.server.kind, entry, chrono::Utc::now()),
        })
    }

    /// The DNs of the Active Directory groups under the group base that contain `dn`, directly
    /// or through other groups (AD's in-chain matching rule).
    async fn ad_groups_containing(&self, dn: &str) -> Result<Vec<String>> {
        let filter = format!(
            "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:={}))",
            ldap3::ldap_escape(dn)
        );
        self.group_dns_where(&filter, true).await
    }

    /// The DNs of the groups under the group base that `filter` finds (`paged`: in pages, for
    /// searches that may find many).
    async fn group_dns_where(&self, filter: &str, paged: bool) -> Result<Vec<String>> {
        let out = self
            .search(
                self.server.group_base(),
                Scope::Subtree,
                filter,
                &["1.1"],
                paged,
            )
            .await?;
        Ok(out.entries.into_iter().map(|e| e.dn).collect())
    }

    /// The DN of an Active Directory user's primary group, which `memberOf` leaves out: the
    /// group under the group base whose SID is the user's with `primaryGroupID` as its last
    /// part. `None` (logged at debug level) when the entry has no usable SID or primary group
    /// ID, or no such group is found; only a failed search is an error, as for other groups.
    async fn ad_primary_group(&self, entry: &SearchEntry) -> Result<Option<String>> {
        let sid = match primary_group_sid(entry) {
            Ok(sid) => sid,
            Err(reason) => {
                tracing::debug!(dn = %entry.dn, reason, "no primary group");
                return Ok(None);
            }
        };
        let filter = format!(
            "(&(objectClass=group)(objectSid={}))",
            escape_filter_bytes(&sid.to_bytes())
        );
        let found = self
            .group_dns_where(&filter, false)
            .await?
            .into_iter()
            .next();
        if found.is_none() {
            tracing::debug!(dn = %entry.dn, %sid, base = %self.server.group_base(),
                "the primary group is not found under the group base");
        }
        Ok(found)
    }

    /// Adds the groups that contain any group already in `dns`, level by level.
    async fn expand_nested(&self, dns: &mut BTreeSet<String>) -> Result<()> {
        let mut frontier: Vec<String> = dns.iter().cloned().collect();
        for _ in 0..NESTED_DEPTH {
            if frontier.is_empty() {
                break;
            }
            let members: String = frontier
                .iter()
                .map(|dn| {
                    let dn = ldap3::ldap_escape(dn.as_str());
                    format!("(member={dn})(uniqueMember={dn})")
                })
                .collect();
            let filter = format!("(|{members})");
            frontier = self
                .group_dns_where(&filter, false)
                .await?
                .into_iter()
                .filter(|dn| dns.insert(dn.clone()))
                .collect();
        }
        Ok(())
    }

    /// Turns a search's result code into an error naming what to fix.
    fn check_outcome(&self, out: &SearchOutcome, base: &str) -> Result<()> {
        match out.rc {
            0 => Ok(()),
            10 => Err(DirectoryError::Search(format!(
                "the base DN {base} is held by another server (referral to {}): point the \
                 hosts at that server or turn on Follow referrals",
                out.refs.join(", ")
            ))),
            32 => Err(DirectoryError::Search(format!(
                "the base DN {base} does not exist: check the base DN"
            ))),
            50 => Err(DirectoryError::Search(format!(
                "the search account may not read {base} (insufficient access rights)"
            ))),
            rc => Err(DirectoryError::Search(format!(
                "the search under {base} ended with result {rc} ({})",
                out.text
            ))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Binds
    // -----------------------------------------------------------------------------------------

    /// Checks the user's password with a bind as their DN.
    async fn bind_user(&self, found: &Found, password: &str) -> Result<()> {
        if password.is_empty() || found.entry.dn.is_empty() {
            return Err(DirectoryError::EmptyPassword);
        }
        let dn = found.entry.dn.clone();
        if let Some(origin) = &found.origin {
            let conn = self
                .open(&origin.host, origin.security, Purpose::UserBind)
                .await
                .map_err(|f| f.error)?;
            return self.user_bind_on(conn.ldap.clone(), &dn, password).await;
        }
        for attempt in 0..2 {
            let (conn, _slot, reused) = self.checkout(Purpose::UserBind).await?;
            match self.user_bind_on(conn.ldap.clone(), &dn, password).await {
                Err(DirectoryError::Bind(reason)) if reused && attempt == 0 => {
                    tracing::debug!(%reason, "pooled bind connection failed; retrying on a new one");
                    continue;
                }
                Err(e @ DirectoryError::Timeout { .. }) => return Err(e),
                result => {
                    self.bind_pool.put_back(conn);
                    return result;
                }
            }
        }
        Err(DirectoryError::Bind(
            "the directory closed the connection twice in a row".to_string(),
        ))
    }

    /// One user bind: the directory's verdict, mapped.
    async fn user_bind_on(&self, mut ldap: Ldap, dn: &str, password: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.search_timeout();
        let res = match timeout_at(
            deadline,
            ldap.with_timeout(self.search_timeout())
                .simple_bind(dn, password),
        )
        .await
        {
            Err(_) | Ok(Err(LdapError::Timeout { .. })) => {
                return Err(self.op_timeout("the password check"));
            }
            Ok(Err(e)) => return Err(DirectoryError::Bind(connection_error(&e))),
            Ok(Ok(res)) => res,
        };
        match res.rc {
            0 => Ok(()),
            49 => Err(ad_bind_error(&res.text).unwrap_or(DirectoryError::WrongPassword)),
            8 | 13 => Err(DirectoryError::Bind(
                "the directory requires a protected connection for password checks \
                 (stronger authentication required): choose LDAPS or StartTLS"
                    .to_string(),
            )),
            rc => Err(DirectoryError::Bind(format!(
                "the password check ended with result {rc} ({})",
                res.text
            ))),
        }
    }

    /// Binds `ldap` as the search account (nothing to do for anonymous searches).
    async fn bind_search_account(&self, ldap: &mut Ldap) -> Result<()> {
        if self.server.bind_dn.trim().is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.search_timeout();
        let res = match timeout_at(
            deadline,
            ldap.with_timeout(self.search_timeout())
                .simple_bind(self.server.bind_dn.trim(), &self.server.bind_password),
        )
        .await
        {
            Err(_) | Ok(Err(LdapError::Timeout { .. })) => {
                return Err(self.op_timeout("the search account's bind"));
            }
            Ok(Err(e)) => return Err(DirectoryError::Bind(connection_error(&e))),
            Ok(Ok(res)) => res,
        };
        let who = self.server.bind_dn.trim();
        match res.rc {
            0 => Ok(()),
            49 => Err(DirectoryError::Bind(format!(
                "the search account {who} was refused (invalid credentials): check its DN and \
                 password{}",
                ad_bind_error(&res.text)
                    .map(|e| format!("; the directory says: {e}"))
                    .unwrap_or_default()
            ))),
            8 | 13 => Err(DirectoryError::Bind(
                "the directory requires LDAPS or StartTLS for simple binds (stronger \
                 authentication required): change the connection security"
                    .to_string(),
            )),
            rc => Err(DirectoryError::Bind(format!(
                "the search account {who} could not bind: result {rc} ({})",
                res.text
            ))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Searches on pooled connections
    // -----------------------------------------------------------------------------------------

    /// Runs one search as the search account on a pooled connection; a stale pooled
    /// connection is replaced once.
    async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        paged: bool,
    ) -> Result<SearchOutcome> {
        for attempt in 0..2 {
            let (conn, _slot, reused) = self.checkout(Purpose::Search).await?;
            let result = tokio::time::timeout(
                self.search_timeout(),
                run_search(
                    conn.ldap.clone(),
                    self.search_timeout(),
                    base,
                    scope,
                    filter,
                    attrs,
                    paged,
                ),
            )
            .await;
            match result {
                Err(_) | Ok(Err(LdapError::Timeout { .. })) => {
                    return Err(self.op_timeout("a search"));
                }
                Ok(Ok(out)) => {
                    self.search_pool.put_back(conn);
                    return Ok(out);
                }
                Ok(Err(e)) if reused && attempt == 0 => {
                    tracing::debug!(error = %e, "pooled search connection failed; retrying");
                }
                Ok(Err(e)) => {
                    return Err(DirectoryError::Search(format!(
                        "the search under {base} failed: {}",
                        connection_error(&e)
                    )));
                }
            }
        }
        Err(DirectoryError::Search(
            "the directory closed the connection twice in a row".to_string(),
        ))
    }

    /// A connection from `purpose`'s pool (reused when one is idle, else opened), with the
    /// slot it occupies; the flag says whether it was reused.
    async fn checkout(&self, purpose: Purpose) -> Result<(Conn, OwnedSemaphorePermit, bool)> {
        let pool = match purpose {
            Purpose::Search => &self.search_pool,
            Purpose::UserBind => &self.bind_pool,
        };
        let slot =
            match tokio::time::timeout(self.search_timeout(), pool.slots.clone().acquire_owned())
                .await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(_)) => {
                    return Err(DirectoryError::Config(
                        "the connection pool is closed".to_string(),
                    ));
                }
                Err(_) => return Err(self.op_timeout("with a free pooled connection")),
            };
        if let Some(conn) = pool.take_idle() {
            return Ok((conn, slot, true));
        }
        let conn = self.connect_any(purpose).await?;
        Ok((conn, slot, false))
    }

    /// The configured hosts, those that failed recently last.
    fn host_order(&self) -> Vec<HostPort> {
        let down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        let recently_down =
            |hp: &HostPort| down.get(hp).is_some_and(|t| t.elapsed() < HOST_RETRY_AFTER);
        let mut hosts: Vec<HostPort> = self
            .server
            .hosts
            .iter()
            .filter(|hp| !recently_down(hp))
            .cloned()
            .collect();
        hosts.extend(
            self.server
                .hosts
                .iter()
                .filter(|hp| recently_down(hp))
                .cloned(),
        );
        hosts
    }

    fn mark(&self, host: &HostPort, ok: bool) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            down.remove(host);
        } else {
            down.insert(host.clone(), Instant::now());
        }
    }

    /// Opens a connection to the first host that answers.
    async fn connect_any(&self, purpose: Purpose) -> Result<Conn> {
        let hosts = self.host_order();
        if hosts.is_empty() {
            return Err(DirectoryError::Config(
                "no server address is configured".into(),
            ));
        }
        let mut unreachable = Vec::new();
        let mut other: Option<DirectoryError> = None;
        for hp in &hosts {
            match self.open(hp, self.server.security, purpose).await {
                Ok(conn) => {
                    self.mark(hp, true);
                    return Ok(conn);
                }
                Err(failure) => {
                    tracing::warn!(host = %hp, step = failure.step, error = %failure.error,
                        "directory server failed; trying the next one");
                    self.mark(hp, false);
                    match failure.error {
                        DirectoryError::Unreachable { reason, .. } => {
                            unreachable.push(format!("{hp}: {reason}"));
                        }
                        e => {
                            other.get_or_insert(e);
                        }
                    }
                }
            }
        }
        Err(other.unwrap_or_else(|| DirectoryError::Unreachable {
            host: hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!(
                "{}; check the addresses, ports and firewall",
                unreachable.join("; ")
            ),
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Opening connections, step by step
    // -----------------------------------------------------------------------------------------

    /// DNS, TCP, TLS and (for search connections) the search account's bind, against one host.
    async fn open(
        &self,
        hp: &HostPort,
        security: Security,
        purpose: Purpose,
    ) -> std::result::Result<Conn, ConnectFailure> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout();
        let addrs = self.resolve(hp, deadline).await?;
        let (tcp, _) = self.tcp(hp, &addrs, deadline).await?;
        let mut conn = self.handshake(hp, security, tcp, deadline).await?;
        if purpose == Purpose::Search {
            self.bind_search_account(&mut conn.ldap)
                .await
                .map_err(|error| ConnectFailure {
                    step: "Bind",
                    error,
                })?;
        }
        Ok(conn)
    }

    async fn resolve(
        &self,
        hp: &HostPort,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Vec<SocketAddr>, ConnectFailure> {
        let fail = |reason: String| ConnectFailure {
            step: "DNS",
            error: DirectoryError::Unreachable {
                host: hp.to_string(),
                reason,
            },
        };
        match timeout_at(
            deadline,
            tokio::net::lookup_host((hp.host.as_str(), hp.port)),
        )
        .await
        {
            Err(_) => Err(fail(format!(
                "the name {} was not resolved within {} s",
                hp.host, self.server.connect_timeout_secs
            ))),
            Ok(Err(e)) => Err(fail(format!("the name {} does not resolve ({e})", hp.host))),
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err(fail(format!("the name {} has no address", hp.host)))
                } else {
                    Ok(addrs)
                }
            }
        }
    }

    async fn tcp(
        &self,
        hp: &HostPort,
        addrs: &[SocketAddr],
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(TcpStream, SocketAddr), ConnectFailure> {
        let mut reasons = Vec::new();
        for addr in addrs {
            match timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, *addr));
                }
                Ok(Err(e)) => reasons.push(format!("{addr}: {}", io_reason(&e))),
                Err(_) => {
                    reasons.push(format!(
                        "{addr}: no answer within {} s",
                        self.server.connect_timeout_secs
                    ));
                    break;
                }
            }
        }
        Err(ConnectFailure {
            step: "TCP",
            error: DirectoryError::Unreachable {
                host: hp.to_string(),
                reason: reasons.join("; "),
            },
        })
    }

    async fn handshake(
        &self,
        hp: &HostPort,
        security: Security,
        tcp: TcpStream,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Conn, ConnectFailure> {
        let fail = |error: DirectoryError| ConnectFailure { step: "TLS", error };
        let std_stream = tcp
            .into_std()
            .map_err(|e| fail(DirectoryError::Tls(format!("socket handover failed: {e}"))))?;
        let mut settings = LdapConnSettings::new().set_std_stream(StdStream::Tcp(std_stream));
        let scheme = match security {
            Security::Ldaps => "ldaps",
            Security::StartTls | Security::Plain => "ldap",
        };
        let mut url_host = hp.url_host();
        if security.uses_tls() {
            let tls = self
                .tls_config()
                .map_err(|e| fail(DirectoryError::Config(e)))?;
            let config = match hp.host.parse::<std::net::Ipv6Addr>() {
                Ok(address) => {
                    let (config, stand_in) = tls.for_ipv6_literal(address);
                    url_host = stand_in;
                    config
                }
                Err(_) => tls.config.clone(),
            };
            settings = settings
                .set_config(config)
                .set_starttls(security == Security::StartTls)
                .set_no_tls_verify(!self.server.verify_tls);
        }
        // The stream is already connected: the URL only names the scheme and the TLS name.
        let url = format!("{scheme}://{url_host}:{}", hp.port);
        let (conn, ldap) =
            match timeout_at(deadline, LdapConnAsync::with_settings(settings, &url)).await {
                Err(_) => {
                    return Err(fail(DirectoryError::Unreachable {
                        host: hp.to_string(),
                        reason: format!(
                            "connected, but no {} answer within {} s",
                            if security.uses_tls() { "TLS" } else { "LDAP" },
                            self.server.connect_timeout_secs
                        ),
                    }));
                }
                Ok(Err(e)) => return Err(fail(DirectoryError::Tls(tls_reason(&e, hp, security)))),
                Ok(Ok(pair)) => pair,
            };
        let host = hp.to_string();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(%host, error = %e, "directory connection ended");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            ldap,
            driver,
            last_used: Instant::now(),
        })
    }

    /// The TLS client settings: the pasted CA, else the system's CA bundle; no verification
    /// when the administrator turned it off.
    fn tls_config(&self) -> std::result::Result<&DirectoryTls, String> {
        self.tls
            .get_or_init(|| build_tls_config(&self.server))
            .as_ref()
            .map_err(Clone::clone)
    }

    // -----------------------------------------------------------------------------------------
    // Referrals
    // -----------------------------------------------------------------------------------------

    /// Follows continuation references once; failures are logged and skipped.
    async fn follow(
        &self,
        refs: &[String],
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<Found> {
        let mut found = Vec::new();
        for url in refs.iter().take(MAX_REFERRALS) {
            let Some((security, host, base)) = parse_ldap_url(url, self.server.security) else {
                tracing::debug!(%url, "skipped a reference that is not an LDAP URL");
                continue;
            };
            let base = if base.is_empty() {
                self.server.base_dn.clone()
            } else {
                base
            };
            let conn = match self.open(&host, security, Purpose::Search).await {
                Ok(conn) => conn,
                Err(f) => {
                    tracing::info!(%url, step = f.step, error = %f.error, "cannot follow a referral");
                    continue;
                }
            };
            let result = tokio::time::timeout(
                self.search_timeout(),
                run_search(
                    conn.ldap.clone(),
                    self.search_timeout(),
                    &base,
                    scope,
                    filter,
                    attrs,
                    false,
                ),
            )
            .await;
            match result {
                Ok(Ok(out)) => found.extend(out.entries.into_iter().map(|entry| Found {
                    entry,
                    origin: Some(Origin {
                        host: host.clone(),
                        security,
                    }),
                })),
                Ok(Err(e)) => tracing::info!(%url, error = %e, "referral search failed"),
                Err(_) => tracing::info!(%url, "referral search timed out"),
            }
        }
        found
    }

    // -----------------------------------------------------------------------------------------
    // Test connection
    // -----------------------------------------------------------------------------------------

    /// Runs DNS, TCP, TLS, Bind and Search base against every configured host, stopping at a
    /// host's first failure, so the report names exactly what failed where.
    #[tracing::instrument(skip(self), fields(server = %self.server.id))]
    pub async fn test_connection(&self) -> TestReport {
        let mut steps = Vec::new();
        if self.server.hosts.is_empty() {
            steps.push(Step {
                name: "DNS",
                host: String::new(),
                ok: false,
                detail: "no server address is configured".to_string(),
            });
        }
        for hp in &self.server.hosts {
            self.test_host(hp, &mut steps).await;
        }
        TestReport {
            steps,
            warnings: self.server.warnings(),
        }
    }

    async fn test_host(&self, hp: &HostPort, steps: &mut Vec<Step>) {
        let host = hp.to_string();
        let mut push = |name: &'static str, ok: bool, detail: String| {
            steps.push(Step {
                name,
                host: host.clone(),
                ok,
                detail,
            });
            ok
        };
        let deadline = tokio::time::Instant::now() + self.connect_timeout();

        let addrs = match self.resolve(hp, deadline).await {
            Ok(addrs) => addrs,
            Err(f) => {
                push("DNS", false, failure_detail(&f.error));
                return;
            }
        };
        let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        let detail = if hp.host.parse::<std::net::IpAddr>().is_ok() {
            format!("{} is an IP address; nothing to look up", hp.host)
        } else {
            format!("{} resolves to {}", hp.host, listed.join(", "))
        };
        push("DNS", true, detail);

        let (tcp, addr) = match self.tcp(hp, &addrs, deadline).await {
            Ok(pair) => pair,
            Err(f) => {
                push(
                    "TCP",
                    false,
                    format!(
                        "{}; is the directory running, and is {} its port?",
                        failure_detail(&f.error),
                        hp.port
                    ),
                );
                return;
            }
        };
        push("TCP", true, format!("connected to {addr}"));

        let mut conn = match self
            .handshake(hp, self.server.security, tcp, deadline)
            .await
        {
            Ok(conn) => conn,
            Err(f) => {
                push("TLS", false, failure_detail(&f.error));
                return;
            }
        };
        if self.server.security.uses_tls() {
            let how = match self.server.security {
                Security::StartTls => "StartTLS",
                _ => "LDAPS",
            };
            let trust = if !self.server.verify_tls {
                "certificate NOT verified (verification is off)"
            } else if self
                .server
                .ca_cert_pem
                .as_deref()
                .is_some_and(|p| !p.trim().is_empty())
            {
                "certificate verified against the pasted CA"
            } else {
                "certificate verified against the system's CAs"
            };
            push("TLS", true, format!("{how} handshake done; {trust}"));
        }

        match self.bind_search_account(&mut conn.ldap).await {
            Ok(()) => {
                let detail = if self.server.bind_dn.trim().is_empty() {
                    "no search account: searches are anonymous".to_string()
                } else {
                    format!("bound as {}", self.server.bind_dn.trim())
                };
                push("Bind", true, detail);
            }
            Err(e) => {
                push("Bind", false, failure_detail(&e));
                return;
            }
        }

        let base = self.server.base_dn.trim();
        let result = tokio::time::timeout(
            self.search_timeout(),
            run_search(
                conn.ldap.clone(),
                self.search_timeout(),
                base,
                Scope::Base,
                "(objectClass=*)",
                &["1.1"],
                false,
            ),
        )
        .await;
        match result {
            Err(_) | Ok(Err(LdapError::Timeout { .. })) => {
                push(
                    "Search base",
                    false,
                    failure_detail(&self.op_timeout("a search")),
                );
            }
            Ok(Err(e)) => {
                push("Search base", false, connection_error(&e));
            }
            Ok(Ok(out)) => match self.check_outcome(&out, base) {
                Ok(()) if !out.entries.is_empty() => {
                    push(
                        "Search base",
                        true,
                        format!("{base} exists and is readable"),
                    );
                }
                Ok(()) => {
                    push(
                        "Search base",
                        false,
                        format!("{base} is not visible to the search account"),
                    );
                }
                Err(e) => {
                    push("Search base", false, failure_detail(&e));
                }
            },
        }
    }
}

/// One search on `ldap`: entries only (continuation references are collected, intermediate
/// messages dropped), optionally paged.
async fn run_search(
    mut ldap: Ldap,
    per_reply: Duration,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
    paged: bool,
) -> std::result::Result<SearchOutcome, LdapError> {
    let attrs: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
    let mut adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> =
        vec![Box::new(EntriesOnly::new())];
    if paged {
        adapters.push(Box::new(PagedResults::new(PAGE_SIZE)));
    }
    ldap.with_timeout(per_reply);
    let mut stream = ldap
        .streaming_search_with(adapters, base, scope, filter, attrs)
        .await?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await? {
        // Only real entries (tag 4); references and intermediate messages are not parsed.
        if entry.0.id == 4 {
            entries.push(SearchEntry::construct(entry));
        }
    }
    let res = stream.finish().await;
    if res.rc == 88 || (res.rc == 80 && res.text.contains("finalized")) {
        return Err(LdapError::EndOfStream);
    }
    Ok(SearchOutcome {
        entries,
        refs: res.refs,
        rc: res.rc,
        text: res.text,
    })
}

fn to_scope(scope: SearchScope) -> Scope {
    match scope {
        SearchScope::OneLevel => Scope::OneLevel,
        SearchScope::Subtree => Scope::Subtree,
    }
}

/// The values of `name` (attribute names are case-insensitive).
fn attr_values<'e>(entry: &'e SearchEntry, name: &str) -> &'e [String] {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or(&[])
}

fn attr_first<'e>(entry: &'e SearchEntry, name: &str) -> Option<&'e str> {
    attr_values(entry, name)
        .first()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The first value of `name` as bytes: ldap3 keeps an attribute among the strings when every
/// value happens to be UTF-8 and among the binary values otherwise, so a SID can be in either.
fn attr_first_bytes<'e>(entry: &'e SearchEntry, name: &str) -> Option<&'e [u8]> {
    entry
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(Vec::as_slice)
        .or_else(|| attr_values(entry, name).first().map(String::as_bytes))
        .filter(|v| !v.is_empty())
}

/// A Windows security identifier in the binary form Active Directory stores in `objectSid`:
/// revision (1 byte), the number of sub-authorities (1 byte), the identifier authority (6
/// bytes, big-endian), then the sub-authorities (4 bytes each, little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sid {
    revision: u8,
    authority: [u8; 6],
    sub_authorities: Vec<u32>,
}

/// A SID has at most this many sub-authorities.
const SID_MAX_SUB_AUTHORITIES: usize = 15;

impl Sid {
    /// Parses a binary SID; `None` unless the bytes are exactly one well-formed SID.
    fn from_bytes(bytes: &[u8]) -> Option<Sid> {
        let (&revision, rest) = bytes.split_first()?;
        let (&count, rest) = rest.split_first()?;
        let count = usize::from(count);
        if revision != 1 || count == 0 || count > SID_MAX_SUB_AUTHORITIES {
            return None;
        }
        let (authority, rest) = rest.split_first_chunk::<6>()?;
        if rest.len() != count * 4 {
            return None;
        }
        let sub_authorities = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Sid {
            revision,
            authority: *authority,
            sub_authorities,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * self.sub_authorities.len());
        out.push(self.revision);
        // At most SID_MAX_SUB_AUTHORITIES, by construction.
        out.push(self.sub_authorities.len() as u8);
        out.extend_from_slice(&self.authority);
        for sub in &self.sub_authorities {
            out.extend_from_slice(&sub.to_le_bytes());
        }
        out
    }

    /// The SID of another account of the same domain: this one with its last sub-authority
    /// (the relative identifier) replaced by `rid`.
    fn with_rid(&self, rid: u32) -> Sid {
        let mut sid = self.clone();
        if let Some(last) = sid.sub_authorities.last_mut() {
            *last = rid;
        }
        sid
    }
}

impl std::fmt::Display for Sid {
    /// The usual text form, `S-1-5-21-…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut authority = [0u8; 8];
        authority[2..].copy_from_slice(&self.authority);
        write!(f, "S-{}-{}", self.revision, u64::from_be_bytes(authority))?;
        for sub in &self.sub_authorities {
            write!(f, "-{sub}")?;
        }
        Ok(())
    }
}

/// The SID of an Active Directory user's primary group, from their `objectSid` and
/// `primaryGroupID`; the reason when the entry does not give one.
fn primary_group_sid(entry: &SearchEntry) -> std::result::Result<Sid, &'static str> {
    let user_sid = attr_first_bytes(entry, "objectSid").ok_or("no objectSid")?;
    let user_sid = Sid::from_bytes(user_sid).ok_or("objectSid is not a well-formed SID")?;
    let rid = attr_first(entry, "primaryGroupID")
        .ok_or("no primaryGroupID")?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&rid| rid != 0)
        .ok_or("primaryGroupID is not a relative identifier")?;
    Ok(user_sid.with_rid(rid))
}

/// Bytes as an LDAP filter value: every byte `\xx`, so any binary value is safe in a filter.
fn escape_filter_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        let _ = write!(out, "\\{b:02x}");
    }
    out
}

/// Whether the directory says the account may not sign in (see the module documentation).
fn is_disabled(
    kind: DirectoryKind,
    entry: &SearchEntry,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    match kind {
        DirectoryKind::ActiveDirectory => {
            let flags_disabled = attr_first(entry, "userAccountControl")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .is_some_and(|uac| uac & 0x2 != 0);
            // FILETIME: 100 ns intervals since 1601-01-01; 0 and i64::MAX mean never.
            let expired = attr_first(entry, "accountExpires")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|&v| v > 0 && v != i64::MAX)
                .is_some_and(|v| {
                    let unix_secs = v / 10_000_000 - 11_644_473_600;
                    unix_secs <= now.timestamp()
                });
            flags_disabled || expired
        }
        DirectoryKind::OpenLdap => {
            let locked = attr_first(entry, "pwdAccountLockedTime").is_some();
            let expired = attr_first(entry, "shadowExpire")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|&days| days > 0)
                .is_some_and(|days| days <= now.timestamp().div_euclid(86_400));
            locked || expired
        }
    }
}

/// Active Directory explains a refused bind in the diagnostic text: `…, data 52e, …`.
fn ad_bind_error(text: &str) -> Option<DirectoryError> {
    let code = text
        .split(", ")
        .find_map(|part| part.trim().strip_prefix("data "))?
        .trim()
        .to_ascii_lowercase();
    match code.as_str() {
        "52e" => Some(DirectoryError::WrongPassword),
        "525" => Some(DirectoryError::UnknownUser),
        "530" | "531" | "533" | "701" | "775" => Some(DirectoryError::Disabled),
        "532" | "773" => Some(DirectoryError::PasswordExpired),
        _ => None,
    }
}

/// The value of a DN's first RDN (`cn=Domain Admins,ou=…` → `Domain Admins`), unescaped.
pub fn rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    let bytes = rest.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (hex, bytes.get(i + 1)) {
                    (Some(b), _) => {
                        out.push(b);
                        i += 3;
                    }
                    (None, Some(&c)) => {
                        out.push(c);
                        i += 2;
                    }
                    (None, None) => i += 1,
                }
            }
            b',' | b'+' => break,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let value = String::from_utf8(out).ok()?.trim().to_string();
    (!value.is_empty()).then_some(value)
}

/// `ldap[s]://host[:port]/dn?…` → the security to use, the host and the base DN. An `ldap://`
/// reference is upgraded with StartTLS unless the server itself is plain.
fn parse_ldap_url(url: &str, configured: Security) -> Option<(Security, HostPort, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let security = match scheme.to_ascii_lowercase().as_str() {
        "ldaps" => Security::Ldaps,
        "ldap" if configured == Security::Plain => Security::Plain,
        "ldap" => Security::StartTls,
        _ => return None,
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return None;
    }
    let host = HostPort::parse(authority, security.default_port()).ok()?;
    let dn = path.split('?').next().unwrap_or("");
    Some((security, host, percent_decode(dn)?))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::TimedOut => "connection timed out".to_string(),
        _ => e.to_string(),
    }
}

/// A connection-level ldap3 error in words.
fn connection_error(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => {
            format!("result {} ({})", result.rc, result.text)
        }
        LdapError::Io { source } => format!("connection error: {}", io_reason(source)),
        LdapError::EndOfStream | LdapError::ResultRecv { .. } | LdapError::OpSend { .. } => {
            "the directory closed the connection".to_string()
        }
        other => other.to_string(),
    }
}

/// A TLS (or StartTLS) failure in words the administrator can act on.
fn tls_reason(e: &LdapError, hp: &HostPort, security: Security) -> String {
    if let LdapError::LdapResult { result } = e {
        return format!(
            "the server refused StartTLS (result {}: {}): enable TLS on the server or choose \
             another connection security",
            result.rc, result.text
        );
    }
    let raw = e.to_string();
    let hint = if raw.contains("UnknownIssuer") || raw.contains("unknown issuer") {
        "the server's certificate is not signed by a trusted CA: paste the CA certificate that \
         signed it"
            .to_string()
    } else if raw.contains("NotValidForName") || raw.contains("not valid for name") {
        format!(
            "the server's certificate does not name {}: use the host name the certificate was \
             issued for",
            hp.host
        )
    } else if raw.contains("Expired") || raw.contains("expired") {
        "the server's certificate has expired (or the clocks disagree)".to_string()
    } else if raw.contains("CaUsedAsEndEntity") {
        "the server presents a CA certificate as its own: give it a server certificate signed \
         by the CA"
            .to_string()
    } else if raw.contains("corrupt message")
        || raw.contains("InvalidContentType")
        || raw.contains("invalid content type")
    {
        match security {
            Security::Ldaps => format!(
                "{hp} does not speak TLS: is {} an LDAPS port (usually 636)? For port 389 \
                 choose StartTLS",
                hp.port
            ),
            _ => format!("{hp} answered StartTLS with something that is not TLS"),
        }
    } else if security == Security::Ldaps && (raw.contains("eof") || raw.contains("EOF")) {
        format!(
            "{hp} closed the connection during the TLS handshake: is {} an LDAPS port?",
            hp.port
        )
    } else {
        "the TLS handshake failed".to_string()
    };
    format!("{hint} ({raw})")
}

/// The words of an error for a test step (without the variant's generic prefix where that
/// would repeat the step name).
fn failure_detail(e: &DirectoryError) -> String {
    match e {
        DirectoryError::Unreachable { reason, .. } => reason.clone(),
        DirectoryError::Tls(r)
        | DirectoryError::Bind(r)
        | DirectoryError::Search(r)
        | DirectoryError::Config(r) => r.clone(),
        other => other.to_string(),
    }
}

/// A directory's TLS client settings, with the certificate check kept beside them so that a
/// connection to an IPv6 literal can be checked against the address itself.
struct DirectoryTls {
    config: Arc<ClientConfig>,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl DirectoryTls {
    /// The settings for a host given as an IPv6 literal, and the stand-in name to open it
    /// under. The LDAP client turns the URL's host into the TLS server name and keeps an IPv6
    /// literal's brackets, which no TLS name allows; so the connection is opened under a name
    /// of its own (one per address, which also keeps resumed sessions apart) and the
    /// certificate is checked against the address, as for an IPv4 literal.
    fn for_ipv6_literal(&self, address: std::net::Ipv6Addr) -> (Arc<ClientConfig>, String) {
        let mut config = (*self.config).clone();
        config.enable_sni = false;
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AtAddress {
                inner: self.verifier.clone(),
                address: ServerName::IpAddress(std::net::IpAddr::V6(address).into()),
            }));
        (
            Arc::new(config),
            format!("v6-{:032x}.invalid", u128::from(address)),
        )
    }
}

/// Checks a server certificate against one address, whatever name the connection was
/// opened under (see [`DirectoryTls::for_ipv6_literal`]).
#[derive(Debug)]
struct AtAddress {
    inner: Arc<dyn ServerCertVerifier>,
    address: ServerName<'static>,
}

impl ServerCertVerifier for AtAddress {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _opened_as: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.address, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn build_tls_config(server: &AuthServer) -> std::result::Result<DirectoryTls, String> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if server.verify_tls {
        WebPkiServerVerifier::builder_with_provider(Arc::new(trusted_roots(server)?), provider)
            .build()
            .map_err(|e| format!("TLS setup failed: {e}"))?
    } else {
        Arc::new(crate::tls::NoVerification(provider))
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok(DirectoryTls {
        config: Arc::new(config),
        verifier,
    })
}

/// The CAs a directory's certificate must chain to: the pasted CA, else the system's bundle.
fn trusted_roots(server: &AuthServer) -> std::result::Result<RootCertStore, String> {
    let Some(pem) = server
        .ca_cert_pem
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    else {
        let system = system_roots();
        if system.is_empty() {
            return Err(
                "no CA certificate is pasted and the system has no CA bundle: paste the \
                 directory's CA certificate"
                    .to_string(),
            );
        }
        return Ok((*system).clone());
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("the pasted CA certificate is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err("the pasted CA certificate field holds no certificate".to_string());
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("the pasted CA certificate cannot be used ({e})"))?;
    }
    Ok(roots)
}

/// The system's CA bundle, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for path in [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ] {
                let Ok(iter) = CertificateDer::pem_file_iter(path) else {
                    continue;
                };
                for cert in iter.flatten() {
                    let _ = roots.add(cert);
                }
                if !roots.is_empty() {
                    break;
                }
            }
            Arc::new(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(attrs: &[(&str, &str)]) -> SearchEntry {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in attrs {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
        SearchEntry {
            dn: "uid=x,dc=example,dc=com".into(),
            attrs: map,
            bin_attrs: HashMap::new(),
        }
    }

    fn at(ymd: (i32, u32, u32)) -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone;
        chrono::Utc
            .with_ymd_and_hms(ymd.0, ymd.1, ymd.2, 12, 0, 0)
            .single()
            .expect("date")
    }

    #[test]
    fn rdn_values_are_unescaped() {
        assert_eq!(
            rdn_value("cn=Domain Admins,cn=Users,dc=example,dc=com").as_deref(),
            Some("Domain Admins")
        );
        assert_eq!(
            rdn_value("CN=Smith\\, John,OU=x").as_deref(),
            Some("Smith, John")
        );
        assert_eq!(rdn_value("cn=caf\\c3\\a9,dc=x").as_deref(), Some("café"));
        assert_eq!(rdn_value("cn=a+sn=b,dc=x").as_deref(), Some("a"));
        assert_eq!(rdn_value("nothing"), None);
    }

    #[test]
    fn ad_disabled_flag_and_expiry() {
        let now = at((2025, 6, 1));
        let ad = DirectoryKind::ActiveDirectory;
        assert!(!is_disabled(
            ad,
            &entry(&[("userAccountControl", "512")]),
            now
        ));
        assert!(is_disabled(
            ad,
            &entry(&[("userAccountControl", "514")]),
            now
        ));
        assert!(!is_disabled(ad, &entry(&[("accountExpires", "0")]), now));
        assert!(!is_disabled(
            ad,
            &entry(&[("accountExpires", "9223372036854775807")]),
            now
        ));
        // 2020-01-01 as FILETIME.
        assert!(is_disabled(
            ad,
            &entry(&[("accountExpires", "132223104000000000")]),
            now
        ));
    }

    #[test]
    fn openldap_lock_and_shadow_expiry() {
        let now = at((2025, 6, 1));
        let ol = DirectoryKind::OpenLdap;
        assert!(!is_disabled(ol, &entry(&[]), now));
        assert!(is_disabled(
            ol,
            &entry(&[("pwdAccountLockedTime", "000001010000Z")]),
            now
        ));
        let today = now.timestamp() / 86_400;
        assert!(is_disabled(
            ol,
            &entry(&[("shadowExpire", &today.to_string())]),
            now
        ));
        assert!(!is_disabled(
            ol,
            &entry(&[("shadowExpire", &(today + 1).to_string())]),
            now
        ));
        assert!(!is_disabled(ol, &entry(&[("shadowExpire", "-1")]), now));
    }

    #[test]
    fn ad_bind_diagnostics_are_mapped() {
        let text = |code: &str| {
            format!(
                "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data \
                 {code}, v4563"
            )
        };
        assert_eq!(
            ad_bind_error(&text("52e")),
            Some(DirectoryError::WrongPassword)
        );
        assert_eq!(ad_bind_error(&text("533")), Some(DirectoryError::Disabled));
        assert_eq!(ad_bind_error(&text("775")), Some(DirectoryError::Disabled));
        assert_eq!(
            ad_bind_error(&text("532")),
            Some(DirectoryError::PasswordExpired)
        );
        assert_eq!(ad_bind_error("Invalid credentials"), None);
    }

    /// S-1-5-21-1-2-3-`rid`, written out byte by byte.
    fn domain_sid_bytes(rid: u32) -> Vec<u8> {
        let mut bytes = vec![1, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21, 1, 2, 3, rid] {
            bytes.extend_from_slice(&u32::to_le_bytes(sub));
        }
        bytes
    }

    #[test]
    fn a_well_formed_sid_is_read_and_its_rid_replaced() {
        let sid = Sid::from_bytes(&domain_sid_bytes(1105)).expect("a SID");
        assert_eq!(sid.to_string(), "S-1-5-21-1-2-3-1105");
        assert_eq!(sid.to_bytes(), domain_sid_bytes(1105));
        let group = sid.with_rid(513);
        assert_eq!(group.to_string(), "S-1-5-21-1-2-3-513");
        assert_eq!(group.to_bytes(), domain_sid_bytes(513));
    }

    #[test]
    fn malformed_sids_are_refused() {
        let good = domain_sid_bytes(1105);
        assert!(Sid::from_bytes(&[]).is_none());
        assert!(
            Sid::from_bytes(&good[..good.len() - 1]).is_none(),
            "cut short"
        );
        assert!(
            Sid::from_bytes(&[&good[..], &[0]].concat()).is_none(),
            "trailing byte"
        );
        let mut revision = good.clone();
        revision[0] = 2;
        assert!(Sid::from_bytes(&revision).is_none(), "unknown revision");
        let mut count = good.clone();
        count[1] = 4;
        assert!(
            Sid::from_bytes(&count).is_none(),
            "count disagrees with length"
        );
        assert!(
            Sid::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 5]).is_none(),
            "no RID"
        );
        let mut long = vec![1, 16, 0, 0, 0, 0, 0, 5];
        long.extend(std::iter::repeat_n(0, 16 * 4));
        assert!(Sid::from_bytes(&long).is_none(), "too many sub-authorities");
    }

    #[test]
    fn a_sid_is_escaped_byte_by_byte_for_a_filter() {
        assert_eq!(
            escape_filter_bytes(&domain_sid_bytes(513)),
            concat!(
                r"\01\05\00\00\00\00\00\05",
                r"\15\00\00\00\01\00\00\00\02\00\00\00\03\00\00\00",
                r"\01\02\00\00"
            )
        );
        assert_eq!(escape_filter_bytes(b"*()\\"), r"\2a\28\29\5c");
    }

    #[test]
    fn the_primary_group_sid_comes_from_objectsid_and_primarygroupid() {
        let with = |sid: Option<Vec<u8>>, binary: bool, pgid: Option<&str>| {
            let mut e = entry(&[]);
            if let Some(sid) = sid {
                if binary {
                    e.bin_attrs.insert("objectSid".into(), vec![sid]);
                } else {
                    let text = String::from_utf8(sid).expect("this SID happens to be UTF-8");
                    e.attrs.insert("objectSid".into(), vec![text]);
                }
            }
            if let Some(pgid) = pgid {
                e.attrs.insert("primaryGroupID".into(), vec![pgid.into()]);
            }
            primary_group_sid(&e).map(|sid| sid.to_string())
        };
        let sid = domain_sid_bytes(1105);
        let expected = Ok("S-1-5-21-1-2-3-513".to_string());
        assert_eq!(with(Some(sid.clone()), true, Some("513")), expected);
        // Every byte of this SID is below 0x80, so ldap3 hands it over as a string.
        assert_eq!(with(Some(sid.clone()), false, Some("513")), expected);
        assert!(with(None, true, Some("513")).is_err());
        assert!(with(Some(sid[..9].to_vec()), true, Some("513")).is_err());
        assert!(with(Some(sid.clone()), true, None).is_err());
        assert!(with(Some(sid.clone()), true, Some("Domain Users")).is_err());
        assert!(with(Some(sid), true, Some("0")).is_err());
    }

    #[test]
    fn active_directory_searches_ask_for_the_sid_and_primary_group() {
        let dir = LdapDirectory::new(AuthServer::defaults_for(DirectoryKind::ActiveDirectory));
        let attrs = dir.user_attributes();
        assert!(attrs.iter().any(|a| a == "objectSid"), "{attrs:?}");
        assert!(attrs.iter().any(|a| a == "primaryGroupID"), "{attrs:?}");
    }

    #[test]
    fn referral_urls_never_downgrade() {
        let (sec, host, dn) = parse_ldap_url(
            "ldap://dc2.example.com/CN=Configuration,DC=example,DC=com",
            Security::Ldaps,
        )
        .expect("url");
        assert_eq!(sec, Security::StartTls);
        assert_eq!(host, HostPort::new("dc2.example.com", 389));
        assert_eq!(dn, "CN=Configuration,DC=example,DC=com");
        let (sec, host, dn) =
            parse_ldap_url("ldaps://[::1]:3269/ou=a%20b,dc=x??sub", Security::StartTls)
                .expect("url");
        assert_eq!(sec, Security::Ldaps);
        assert_eq!(host, HostPort::new("::1", 3269));
        assert_eq!(dn, "ou=a b,dc=x");
        assert_eq!(
            parse_ldap_url("ldap://h/x", Security::Plain).map(|t| t.0),
            Some(Security::Plain)
        );
        assert!(parse_ldap_url("http://h/x", Security::Ldaps).is_none());
    }

    #[test]
    fn filters_escape_what_users_type() {
        let mut server = AuthServer::defaults_for(DirectoryKind::OpenLdap);
        server.id = "s".into();
        let dir = LdapDirectory::new(server);
        assert_eq!(dir.user_filter("*)(uid=*"), "(uid=\\2a\\29\\28uid=\\2a)");
        let mut ad = AuthServer::defaults_for(DirectoryKind::ActiveDirectory);
        ad.id = "a".into();
        let dir = LdapDirectory::new(ad);
        assert_eq!(
            dir.user_filter("al\\ice"),
            "(&(objectCategory=person)(objectClass=user)(sAMAccountName=al\\5cice))"
        );
        assert_eq!(dir.login_name("EXAMPLE\\alice"), "alice");
        assert_eq!(dir.login_name("alice@example.com"), "alice");
    }

    #[test]
    fn upn_login_keeps_the_suffix() {
        let mut ad = AuthServer::defaults_for(DirectoryKind::ActiveDirectory);
        ad.login_attribute = "userPrincipalName".into();
        let dir = LdapDirectory::new(ad);
        assert_eq!(dir.login_name("alice@example.com"), "alice@example.com");
    }

    #[tokio::test]
    async fn an_empty_password_is_refused_before_any_connection() {
        let mut server = AuthServer::defaults_for(DirectoryKind::OpenLdap);
        server.hosts = vec![HostPort::new("directory.invalid", 636)];
        let dir = LdapDirectory::new(server);
        assert_eq!(
            dir.authenticate("alice", "").await,
            Err(DirectoryError::EmptyPassword)
        );
        assert_eq!(dir.connections_opened(), 0);
    }

    #[test]
    fn error_messages_never_hold_the_password_and_have_codes() {
        let e = DirectoryError::Unreachable {
            host: "dc1:636".into(),
            reason: "connection refused".into(),
        };
        assert!(e.to_string().contains("dc1:636"));
        assert_eq!(e.code(), "directory_unreachable");
        assert!(DirectoryError::WrongPassword.is_user_error());
        assert!(!e.is_user_error());
    }
}
