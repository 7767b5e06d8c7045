//! The broker: the rules that turn a sign-in into desktops.
//!
//! credentials + client facts → authentication server → groups → location → assignment row →
//! role and policy → offer; then connect (assign atomically, record a session, build the
//! connection parameters) and release. Usable without HTTP: the console, the portal and the
//! client API all call these functions.
//!
//! What it guarantees:
//! - a desktop assigned to a user is offered to them first, from any device, and never to
//!   anyone else;
//! - assigning is one store transaction over the desktop and the user's index, so two users
//!   racing for the last desktop cannot both get it;
//! - connecting again to a desktop one already holds (e.g. while the previous session is still
//!   closing) resolves to the same desktop, not an error;
//! - a client may only connect to a desktop its policy offers (or one it already holds).
//!
//! It never touches HTTP types, sled or ldap3 directly.

pub mod connect;
pub mod control;
pub mod plans;
pub mod stats;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::auth::{Directory, DirectoryError, DirectoryUser};
use crate::model::desktop::{Desktop, PowerState};
use crate::model::directory::{AuthServer, choose, split_login};
use crate::model::location::{ClientFacts, Location};
use crate::model::plan::{DEFAULT_PLAN_ID, GatewayMethod, ProtocolPlan};
use crate::model::policy::{
    AssignmentTable, MatchedRow, PickOrder, Policy, PolicyEntry, UserGroups,
};
use crate::model::pool::{Membership, Pool};
use crate::model::role::Role;
use crate::store::{Record, Store, StoreError, TxError};

pub use connect::{ConnectionParams, GatewayDetails, Ticket};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Wrong user name or password.")]
    WrongPassword,
    #[error("Type your password: an empty password is not accepted.")]
    EmptyPassword,
    #[error("Your account is disabled in the directory. Ask your administrator.")]
    Disabled,
    #[error(
        "Your password has expired or must be changed: change it in Windows or your directory, then sign in again."
    )]
    PasswordExpired,
    #[error("No authentication server knows the user `{0}`.")]
    UnknownUser(String),
    #[error(
        "The directory cannot be reached right now ({0}). Try again in a moment or tell your administrator."
    )]
    DirectoryUnreachable(String),
    #[error("No authentication server is set up yet. Ask your administrator.")]
    NoServers,
    #[error(
        "Your account is not given access here: no assignment row matches your groups and location."
    )]
    NoAccess,
    #[error(
        "No desktop is available in pool {pool} right now. Try again later or tell your administrator."
    )]
    NoDesktopAvailable { pool: String },
    #[error("That desktop is not offered to you.")]
    NotOffered,
    #[error("That desktop is not yours to release.")]
    NotYours,
    #[error("There is no desktop `{0}`.")]
    NoSuchDesktop(String),
    #[error("The desktop's protocol ({0}) is not allowed by your protocol plan.")]
    ProtocolNotAllowed(String),
    #[error("Your role does not allow this.")]
    Forbidden,
    #[error("The {kind} `{id}` is missing from the configuration.")]
    Missing { kind: &'static str, id: String },
    #[error(
        "The gateway cannot open a connection for you right now ({0}). Try again or tell your administrator."
    )]
    Gateway(String),
    /// The licence in force does not allow this connection (it ended, or every user it
    /// counts already holds a desktop).
    #[error("{0}")]
    LicenceLimit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer of a [`GatewayLink`]: the public host and port, or why not.
pub type ForwardFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<(String, u16), String>> + Send + 'a>,
>;

/// What the broker asks of its gateway beyond signing tickets: a forwarded port.
pub trait GatewayLink: Send + Sync {
    /// Opens a forwarded port for a signed ticket; returns the public host and port the
    /// client connects to.
    fn forward(&self, ticket: String) -> ForwardFuture<'_>;
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

impl From<TxError<BrokerError>> for BrokerError {
    fn from(e: TxError<BrokerError>) -> Self {
        match e {
            TxError::Abort(e) => e,
            TxError::Store(e) => BrokerError::Store(e),
            TxError::Conflict(_) => {
                BrokerError::Store(StoreError::Engine("transaction conflict".into()))
            }
        }
    }
}

/// A directory user as the broker keys them: server and login name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserKey {
    pub server_id: String,
    pub username: String,
}

impl UserKey {
    /// The store key: `server/username` with the name lower-cased (directories compare names
    /// case-insensitively).
    pub fn key(&self) -> String {
        format!("{}/{}", self.server_id, self.username.to_lowercase())
    }
}

/// The desktops a user holds, kept beside the desktops in the same transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HeldDesktops {
    pub desktops: Vec<String>,
}

impl Record for HeldDesktops {
    const TREE: &'static str = "desktops_by_user";
}

/// A user who signed in at least once (for the console's user list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownUser {
    pub user: UserKey,
    pub display_name: String,
    pub groups: Vec<String>,
    pub last_sign_in: DateTime<Utc>,
    pub last_address: String,
}

impl Record for KnownUser {
    const TREE: &'static str = "user_by_key";
}

/// One connection of a user to a desktop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesktopSession {
    pub id: String,
    pub user: UserKey,
    pub desktop_id: String,
    pub client_address: String,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
}

impl Record for DesktopSession {
    const TREE: &'static str = "session_by_id";
}

/// The sessions still open on a desktop (ended, and their gateway tunnels closed, when the
/// desktop is released).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenSessions {
    pub ids: Vec<String>,
}

impl Record for OpenSessions {
    const TREE: &'static str = "open_sessions_by_desktop";
}

/// A session the broker ended; gateways close its tunnels and refuse its tickets until
/// `refuse_until` (unix seconds; by then every ticket issued for it has expired). Kept in the
/// store under its number, so the numbering goes on across broker restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedSession {
    pub seq: u64,
    pub session: String,
    pub refuse_until: i64,
}

impl Record for EndedSession {
    const TREE: &'static str = "session_end_by_seq";
}

impl EndedSession {
    /// The store key: the number, zero-padded so that keys sort as numbers do.
    pub fn key(seq: u64) -> String {
        format!("{seq:020}")
    }
}

/// The "session ended" notices, for the built-in gateway and for standalone gateways that poll
/// for them. Each notice is written to the store in the transaction that ends its session, so
/// a notice exists exactly when its session ended, and its number is never reused: a gateway
/// that asks for what came after N gets every end after N, whether the broker restarted in
/// between or not. The store's notices are mirrored in memory for the readers.
///
/// Pruned: a notice goes once it is not among the newest [`SessionEnds::KEEP`] and its
/// tickets expired more than [`SessionEnds::KEEP_SECONDS`] ago. A gateway that falls further
/// behind than that gets everything kept.
pub struct SessionEnds {
    log: Mutex<std::collections::VecDeque<EndedSession>>,
    /// Held while notices are numbered and saved, so numbers are handed out in order and a
    /// reader never sees a later number before an earlier one.
    numbering: Mutex<()>,
    latest: tokio::sync::watch::Sender<u64>,
}

impl SessionEnds {
    pub const KEEP: usize = 10_000;
    pub const KEEP_SECONDS: i64 = 24 * 3600;

    /// The notices kept in `store`; new ones are numbered after the last of them.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let log: std::collections::VecDeque<EndedSession> = store.values::<EndedSession>()?.into();
        let latest = log.back().map_or(0, |e| e.seq);
        let ends = Self {
            log: Mutex::new(log),
            numbering: Mutex::new(()),
            latest: tokio::sync::watch::channel(latest).0,
        };
        ends.prune(store, Utc::now().timestamp())?;
        Ok(ends)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<EndedSession>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change`, which ends sessions in one store transaction and saves a notice for
    /// each (numbered from the number it is given, keyed with [`EndedSession::key`]), then
    /// publishes the notices it saved. Blocking: call it on the store's threads.
    pub fn record<T, E>(
        &self,
        store: &Store,
        change: impl FnOnce(u64) -> Result<(T, Vec<EndedSession>), E>,
    ) -> Result<T, E> {
        let _in_order = self.numbering.lock().unwrap_or_else(|p| p.into_inner());
        let next = *self.latest.borrow() + 1;
        let (out, ended) = change(next)?;
        if let Some(last) = ended.last().map(|e| e.seq) {
            self.log().extend(ended);
            self.latest.send_replace(last);
            if let Err(e) = self.prune(store, Utc::now().timestamp()) {
                tracing::warn!(error = %e, "old session-end notices not pruned; trying again at the next end");
            }
        }
        Ok(out)
    }

    /// Drops the notices the keeping rule no longer holds, from memory and from the store.
    fn prune(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let mut gone = Vec::new();
        {
            let mut log = self.log();
            while log.len() > Self::KEEP
                && log
                    .front()
                    .is_some_and(|e| e.refuse_until < now - Self::KEEP_SECONDS)
            {
                if let Some(e) = log.pop_front() {
                    gone.push(e.seq);
                }
            }
        }
        for seq in gone {
            store.delete::<EndedSession>(&EndedSession::key(seq))?;
        }
        Ok(())
    }

    /// Notices after `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<EndedSession> {
        let log = self.log();
        let first = log.partition_point(|e| e.seq <= seq);
        log.range(first..).cloned().collect()
    }

    /// Wakes when a notice is published; holds the newest notice's number.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// Who signed in, where from, and what applies to them: the result of the decision chain.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub user: UserKey,
    pub display_name: String,
    /// Group names (CNs), as [`DirectoryUser::groups`].
    pub groups: Vec<String>,
    /// The full group DNs, as [`DirectoryUser::group_dns`]: what rows naming a DN match.
    pub group_dns: Vec<String>,
    pub location_id: String,
    pub location_name: String,
    pub matched_row: MatchedRow,
    pub role: Role,
    pub policy: Policy,
}

/// A desktop on offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfferedDesktop {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub protocol: crate::model::Protocol,
    pub power_state: PowerState,
    pub pool_id: String,
    pub pool_name: String,
    /// Already assigned to this user.
    pub yours: bool,
}

/// What a user is offered, with a sentence for each pool that had nothing free.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    pub desktops: Vec<OfferedDesktop>,
    pub notices: Vec<String>,
}

/// A signed-in client: what was decided at sign-in, kept for its later requests.
#[derive(Debug, Clone)]
pub struct ClientSession {
    pub decision: Decision,
    pub address: IpAddr,
    pub created: DateTime<Utc>,
}

/// The broker's settings from configuration.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// The gateway tunnel URL handed to clients whose plan goes through the gateway.
    pub gateway_url: String,
    /// How long a gateway ticket may be used to open tunnels.
    pub ticket_seconds: i64,
}

/// The broker: cheap to share (`Arc`), safe to call from many requests at once.
pub struct Broker {
    store: Store,
    settings: BrokerSettings,
    signing_key: SigningKey,
    directories: RwLock<Vec<(AuthServer, Arc<dyn Directory>)>>,
    membership: RwLock<Option<Arc<Membership>>>,
    taken: Arc<TakenHint>,
    ends: Arc<SessionEnds>,
    link: RwLock<Option<Arc<dyn GatewayLink>>>,
    on_assigned: RwLock<Option<OnAssigned>>,
    licence: RwLock<Option<crate::licence::Verifier>>,
    /// The licence in force as last read, and when: connections read it again after
    /// [`LICENCE_READ_AGAIN`], not each time (it is a signature check).
    licence_read: std::sync::Mutex<Option<(std::time::Instant, crate::licence::LicenceState)>>,
    clock: RwLock<Clock>,
}

/// Called with the pool's id after a desktop of that pool was assigned (provisioning checks
/// whether the pool must grow). It must return at once: it runs inside the sign-in.
pub type OnAssigned = Arc<dyn Fn(&str) + Send + Sync>;

/// Where the plans' timers read the time: the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

impl Broker {
    /// A broker on `store`; reads the session-end notices kept there.
    pub fn new(store: Store, settings: BrokerSettings, signing_key: SigningKey) -> Result<Self> {
        Ok(Self {
            ends: Arc::new(SessionEnds::load(&store)?),
            store,
            settings,
            signing_key,
            directories: RwLock::new(Vec::new()),
            membership: RwLock::new(None),
            taken: Arc::new(TakenHint::default()),
            link: RwLock::new(None),
            on_assigned: RwLock::new(None),
            licence: RwLock::new(None),
            licence_read: std::sync::Mutex::new(None),
            clock: RwLock::new(Arc::new(Utc::now)),
        })
    }

    /// Sets what runs after each assignment, with the pool's id (see [`OnAssigned`]).
    /// Makes connections ask the licence in force (checked with `verifier`) first: none once
    /// it has ended, and no new user past its concurrent users ([`licence_allows`]).
    pub fn set_licence_verifier(&self, verifier: crate::licence::Verifier) {
        *self.licence.write().unwrap_or_else(|p| p.into_inner()) = Some(verifier);
    }

    pub fn set_on_assigned(&self, hook: OnAssigned) {
        *self.on_assigned.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Replaces the clock the plans' timers are set and run by (tests move time on).
    pub fn set_clock(&self, clock: Clock) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = clock;
    }

    /// The time by the plans' clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock.read().unwrap_or_else(|p| p.into_inner()))()
    }

    /// Connects the broker to the gateway that opens forwarded ports.
    pub fn set_gateway_link(&self, link: Arc<dyn GatewayLink>) {
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    /// The "session ended" notices gateways act on.
    pub fn session_ends(&self) -> &SessionEnds {
        &self.ends
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// Replaces the authentication servers (after the configuration changed).
    pub fn set_directories(&self, mut dirs: Vec<(AuthServer, Arc<dyn Directory>)>) {
        dirs.sort_by_key(|(s, _)| s.order);
        *self.directories.write().unwrap_or_else(|p| p.into_inner()) = dirs;
    }

    /// Builds a directory for every stored authentication server.
    pub async fn reload_directories(&self) -> Result<()> {
        let servers: Vec<AuthServer> = self
            .store
            .call(|s| Ok::<_, BrokerError>(s.values::<AuthServer>()?))
            .await?;
        let dirs = servers
            .into_iter()
            .map(|server| {
                let directory: Arc<dyn Directory> =
                    Arc::new(crate::auth::LdapDirectory::new(server.clone()));
                (server, directory)
            })
            .collect();
        self.set_directories(dirs);
        Ok(())
    }

    fn directories_for(&self, domain: Option<&str>) -> Vec<(AuthServer, Arc<dyn Directory>)> {
        let dirs = self.directories.read().unwrap_or_else(|p| p.into_inner());
        let servers: Vec<AuthServer> = dirs.iter().map(|(s, _)| s.clone()).collect();
        let chosen: Vec<String> = choose(&servers, domain)
            .into_iter()
            .map(|s| s.id.clone())
            .collect();
        chosen
            .iter()
            .filter_map(|id| dirs.iter().find(|(s, _)| &s.id == id).cloned())
            .collect()
    }

    fn directory(&self, server_id: &str) -> Option<Arc<dyn Directory>> {
        self.directories
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| s.id == server_id)
            .map(|(_, d)| d.clone())
    }

    /// Forgets the pool membership cache: call after desktops or pools change.
    pub fn invalidate_membership(&self) {
        *self.membership.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.taken.clear();
    }

    // ---- sign-in -----------------------------------------------------------------------------

    /// Checks the password with the directory and decides what applies to the user.
    pub async fn sign_in(
        &self,
        typed_user: &str,
        password: &str,
        domain: Option<&str>,
        facts: &ClientFacts,
    ) -> Result<Decision> {
        if password.is_empty() {
            return Err(BrokerError::EmptyPassword);
        }
        let (typed, user, candidates) = self.candidates(typed_user, domain)?;
        let mut unreachable = None;
        for (server, directory) in candidates {
            match directory.authenticate(&typed, password).await {
                Ok(found) => return self.decide(&server, found, facts).await,
                Err(DirectoryError::UnknownUser) => continue,
                Err(DirectoryError::WrongPassword) => return Err(BrokerError::WrongPassword),
                Err(DirectoryError::EmptyPassword) => return Err(BrokerError::EmptyPassword),
                Err(DirectoryError::Disabled) => return Err(BrokerError::Disabled),
                // The directory knows the user and their password, but not for signing in
                // until it is changed: no other server has a say.
                Err(DirectoryError::PasswordExpired) => return Err(BrokerError::PasswordExpired),
                Err(other) => {
                    tracing::warn!(server = %server.name, "directory failed during sign-in: {other}");
                    unreachable = Some(other.to_string());
                }
            }
        }
        Err(match unreachable {
            Some(reason) => BrokerError::DirectoryUnreachable(reason),
            None => BrokerError::UnknownUser(user),
        })
    }

    /// The same decision without a password (test login), from a directory lookup.
    pub async fn look_up(
        &self,
        typed_user: &str,
        domain: Option<&str>,
        facts: &ClientFacts,
    ) -> Result<Decision> {
        let (typed, user, candidates) = self.candidates(typed_user, domain)?;
        let mut unreachable = None;
        for (server, directory) in candidates {
            match directory.lookup(&typed).await {
                Ok(Some(found)) => return self.decide(&server, found, facts).await,
                Ok(None) => continue,
                Err(e) => unreachable = Some(e.to_string()),
            }
        }
        Err(match unreachable {
            Some(reason) => BrokerError::DirectoryUnreachable(reason),
            None => BrokerError::UnknownUser(user),
        })
    }

    /// What was typed (trimmed), the bare user name and the servers to ask, from
    /// `DOMAIN\user`, `user@domain` or a separately given domain (all servers in order when
    /// there is none). The servers are asked with what was typed: each directory takes from it
    /// the name its login attribute holds (the bare name, or all of `user@domain` for a
    /// `userPrincipalName` login).
    #[allow(clippy::type_complexity)]
    fn candidates(
        &self,
        typed_user: &str,
        domain: Option<&str>,
    ) -> Result<(String, String, Vec<(AuthServer, Arc<dyn Directory>)>)> {
        let (typed_domain, user) = split_login(typed_user);
        let domain = domain
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .or(typed_domain);
        let candidates = self.directories_for(domain.as_deref());
        if candidates.is_empty() {
            return Err(BrokerError::NoServers);
        }
        Ok((typed_user.trim().to_string(), user, candidates))
    }

    /// Still allowed? A user disabled or removed in the directory loses access at once.
    pub async fn still_valid(&self, user: &UserKey) -> Result<()> {
        let Some(directory) = self.directory(&user.server_id) else {
            return Err(BrokerError::NoAccess);
        };
        match directory.is_enabled(&user.username).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(BrokerError::Disabled),
            Err(e) => Err(BrokerError::DirectoryUnreachable(e.to_string())),
        }
    }

    /// A signed-in directory user's standing now, for the console's periodic check: still in
    /// the directory and enabled (as [`Broker::still_valid`] checks), and what the assignment
    /// table gives them from `facts` today: the decision a sign-in makes, without the
    /// password. A user removed from the directory is [`BrokerError::Disabled`], as there.
    pub async fn recheck(&self, user: &UserKey, facts: &ClientFacts) -> Result<Decision> {
        let found = {
            let dirs = self.directories.read().unwrap_or_else(|p| p.into_inner());
            dirs.iter()
                .find(|(s, _)| s.id == user.server_id)
                .map(|(s, d)| (s.clone(), d.clone()))
        };
        // The server is gone from the configuration: nothing gives the user access any more.
        let Some((server, directory)) = found else {
            return Err(BrokerError::NoAccess);
        };
        match directory.lookup(&user.username).await {
            Ok(Some(found)) => self.decide(&server, found, facts).await,
            Ok(None) => Err(BrokerError::Disabled),
            Err(e) => Err(BrokerError::DirectoryUnreachable(e.to_string())),
        }
    }

    async fn decide(
        &self,
        server: &AuthServer,
        found: DirectoryUser,
        facts: &ClientFacts,
    ) -> Result<Decision> {
        if found.disabled {
            return Err(BrokerError::Disabled);
        }
        let server_id = server.id.clone();
        let facts = facts.clone();
        self.store
            .call(move |s| decision_for(s, identity_of(s, &server_id, &found, &facts)?))
            .await
    }

    /// Who a user is and where they are, without consulting the assignment table: what the
    /// test-login report shows when no row gives the user access.
    pub async fn identify(
        &self,
        typed_user: &str,
        domain: Option<&str>,
        facts: &ClientFacts,
    ) -> Result<Identity> {
        let (typed, user, candidates) = self.candidates(typed_user, domain)?;
        for (server, directory) in candidates {
            match directory.lookup(&typed).await {
                Ok(Some(found)) => {
                    let facts = facts.clone();
                    return self
                        .store
                        .call(move |s| identity_of(s, &server.id, &found, &facts))
                        .await;
                }
                Ok(None) => continue,
                Err(e) => return Err(BrokerError::DirectoryUnreachable(e.to_string())),
            }
        }
        Err(BrokerError::UnknownUser(user))
    }

    /// Records that a user signed in (for the console's user list); not waited for on disk.
    pub async fn remember(&self, decision: &Decision, address: IpAddr) -> Result<()> {
        let known = KnownUser {
            user: decision.user.clone(),
            display_name: decision.display_name.clone(),
            groups: decision.groups.clone(),
            last_sign_in: Utc::now(),
            last_address: address.to_string(),
        };
        let key = decision.user.key();
        self.store
            .call(move |s| Ok(s.put_lazy(&key, &known)?))
            .await
    }

    // ---- offer -------------------------------------------------------------------------------

    /// The desktops offered under a decision: the user's own first, then each policy entry's.
    pub async fn offer(&self, decision: &Decision) -> Result<Offer> {
        let membership = self.membership().await?;
        let taken = self.taken.clone();
        let decision = decision.clone();
        self.store
            .call(move |s| offer_from(s, &membership, &taken, &decision))
            .await
    }

    /// The pool membership, computed once until desktops or pools change.
    async fn membership(&self) -> Result<Arc<Membership>> {
        if let Some(m) = self
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(m);
        }
        // Computing it reads the store: do it on a blocking thread.
        let store = self.store.clone();
        let computed = store
            .call(|s| {
                let pools: Vec<Pool> = s.values::<Pool>()?;
                let desktops: Vec<Desktop> = s.values::<Desktop>()?;
                Ok::<_, BrokerError>(Arc::new(Membership::evaluate(&pools, &desktops)))
            })
            .await?;
        let mut slot = self.membership.write().unwrap_or_else(|p| p.into_inner());
        Ok(slot.get_or_insert(computed).clone())
    }

    // ---- connect and release -----------------------------------------------------------------

    /// Assigns the desktop to the user (unless it already is theirs) and returns how to reach
    /// it. When someone else took it first, another free desktop of the same pool is taken.
    pub async fn connect(
        &self,
        decision: &Decision,
        desktop_id: &str,
        address: IpAddr,
    ) -> Result<(Desktop, ConnectionParams)> {
        if !decision.role.may_connect {
            return Err(BrokerError::Forbidden);
        }
        let verifier = self
            .licence
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(verifier) = verifier {
            let state = self.licence_in_force(verifier).await?;
            let user = decision.user.key();
            self.store
                .call(move |s| licence_allows(s, &state, &user))
                .await?;
        }
        let membership = self.membership().await?;
        let taken = self.taken.clone();
        let username = decision.user.username.clone();
        let decision = decision.clone();
        let wanted = desktop_id.to_string();
        let now = self.now();
        let (desktop, entry, session_id) = self
            .store
            .call(move |s| {
                let assigned = assign(s, &membership, &taken, &decision, &wanted, address)?;
                // The user is here: the plans' pending timers for the desktop are moot.
                plans::connected(s, &assigned.0.id, &decision.user, now);
                Ok::<_, BrokerError>(assigned)
            })
            .await?;
        let hook = self
            .on_assigned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook
            && !entry.pool_id.is_empty()
        {
            hook(&entry.pool_id);
        }
        let params = self
            .params_for(&desktop, &entry, &session_id, &username, address)
            .await?;
        Ok((desktop, params))
    }

    async fn params_for(
        &self,
        desktop: &Desktop,
        entry: &PolicyEntry,
        session_id: &str,
        username: &str,
        address: IpAddr,
    ) -> Result<ConnectionParams> {
        let plan_id = entry.protocol_plan.clone();
        let (power_id, release_id) = (entry.power_plan.clone(), entry.release_plan.clone());
        let plans = self
            .store
            .call(move |s| {
                use crate::model::plan::{PowerPlan, ReleasePlan};
                let power = match s.get::<PowerPlan>(&power_id)? {
                    Some(p) => p,
                    None if power_id == DEFAULT_PLAN_ID => PowerPlan::default_plan(),
                    None => {
                        return Err(BrokerError::Missing {
                            kind: "power plan",
                            id: power_id,
                        });
                    }
                };
                let release = match s.get::<ReleasePlan>(&release_id)? {
                    Some(p) => p,
                    None if release_id == DEFAULT_PLAN_ID => ReleasePlan::default_plan(),
                    None => {
                        return Err(BrokerError::Missing {
                            kind: "release plan",
                            id: release_id,
                        });
                    }
                };
                Ok(connect::SessionPlans { power, release })
            })
            .await?;
        let plan = self
            .store
            .call(move |s| {
                Ok::<_, BrokerError>(match s.get::<ProtocolPlan>(&plan_id)? {
                    Some(p) => p,
                    None if plan_id == DEFAULT_PLAN_ID => ProtocolPlan::default_plan(),
                    None => {
                        return Err(BrokerError::Missing {
                            kind: "protocol plan",
                            id: plan_id,
                        });
                    }
                })
            })
            .await?;
        let setting = plan.setting(desktop.protocol).ok_or_else(|| {
            BrokerError::ProtocolNotAllowed(desktop.protocol.as_str().to_uppercase())
        })?;
        let port = desktop.port_or_default();
        let user = username.to_string();
        let ticket = || {
            Ticket {
                session: session_id.to_string(),
                user: user.clone(),
                host: desktop.address.clone(),
                port,
                client: Some(address),
                expires: Utc::now().timestamp() + self.settings.ticket_seconds,
            }
            .sign(&self.signing_key)
        };
        let mut params = match (setting.via_gateway, setting.gateway_method) {
            (false, _) => connect::params(
                setting,
                &desktop.address,
                port,
                &user,
                desktop.shown_name(),
                None,
            ),
            (true, GatewayMethod::Tunnel) => connect::params(
                setting,
                &desktop.address,
                port,
                &user,
                desktop.shown_name(),
                Some(GatewayDetails {
                    url: self.settings.gateway_url.clone(),
                    ticket: ticket(),
                }),
            ),
            (true, GatewayMethod::ForwardedPort) => {
                let link = self
                    .link
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .ok_or_else(|| BrokerError::Gateway("no gateway is connected".into()))?;
                let (host, forwarded) =
                    link.forward(ticket()).await.map_err(BrokerError::Gateway)?;
                connect::params(setting, &host, forwarded, &user, desktop.shown_name(), None)
            }
        };
        params.plans = Some(plans);
        Ok(params)
    }

    /// Gives a desktop back to its pool; only its holder (or an administrator) may. Its open
    /// sessions end, each with a notice for the gateways saved in the same transaction.
    pub async fn release(&self, user_key: &UserKey, desktop_id: &str) -> Result<Desktop> {
        let user = user_key.clone();
        let id = desktop_id.to_string();
        let refuse_until = Utc::now().timestamp() + self.settings.ticket_seconds + 1;
        let ends = self.ends.clone();
        let released = self
            .store
            .call(move |s| ends.record(s, |first| release(s, &user, &id, first, refuse_until)))
            .await?;
        self.taken.remove(&released.id);
        self.after_release(&released, user_key).await;
        Ok(released)
    }
}

/// How long connections go by the licence state last read (a new key, or the day it ends,
/// counts for connections at most this much later).
pub const LICENCE_READ_AGAIN: std::time::Duration = std::time::Duration::from_secs(30);

impl Broker {
    /// The licence in force, read again when the last reading is [`LICENCE_READ_AGAIN`] old.
    async fn licence_in_force(
        &self,
        verifier: crate::licence::Verifier,
    ) -> Result<crate::licence::LicenceState> {
        let lock = || self.licence_read.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, state)) = lock().as_ref()
            && at.elapsed() < LICENCE_READ_AGAIN
        {
            return Ok(state.clone());
        }
        let state = self
            .store
            .call(move |s| {
                crate::admin::licence_state(s, &verifier).map_err(|e| match e {
                    crate::admin::AdminError::Store(e) => BrokerError::Store(e),
                    other => BrokerError::Store(StoreError::Engine(other.to_string())),
                })
            })
            .await?;
        *lock() = Some((std::time::Instant::now(), state.clone()));
        Ok(state)
    }
}

/// Whether the licence in force lets `user` connect: not once it has ended; and when it
/// counts concurrent users, a user who holds no desktop yet only while fewer users than it
/// allows hold one (a user who holds one may always reconnect). Concurrent users are the
/// users holding a desktop, the count the console shows; connections taken at the same
/// moment as the last free place may each pass the count before either is assigned.
pub fn licence_allows(s: &Store, state: &crate::licence::LicenceState, user: &str) -> Result<()> {
    use crate::licence::Capability;
    if !state.allows(Capability::Connect) {
        return Err(BrokerError::LicenceLimit(
            "Gatehouse's licence has ended, so no desktop can be given out. Tell your \
             administrator (System > Licence)."
                .into(),
        ));
    }
    let Some(max) = state.max_concurrent_users() else {
        return Ok(());
    };
    if s.get::<HeldDesktops>(user)?
        .is_some_and(|h| !h.desktops.is_empty())
    {
        return Ok(());
    }
    // Keys first (no decoding); an entry left empty by an older release counts only here.
    let mut holders = s.count::<HeldDesktops>()?;
    if holders >= max as usize {
        holders = s
            .values::<HeldDesktops>()?
            .iter()
            .filter(|h| !h.desktops.is_empty())
            .count();
    }
    if holders >= max as usize {
        return Err(BrokerError::LicenceLimit(format!(
            "The licence allows {max} users at once, and {holders} already hold a desktop. \
             Try again when someone releases theirs, or tell your administrator."
        )));
    }
    Ok(())
}

/// Who a user is and where they are: the decision up to the assignment table.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub user: UserKey,
    pub display_name: String,
    /// Group names (CNs), as [`DirectoryUser::groups`].
    pub groups: Vec<String>,
    /// The full group DNs, as [`DirectoryUser::group_dns`].
    pub group_dns: Vec<String>,
    pub location_id: String,
    pub location_name: String,
}

fn identity_of(
    s: &Store,
    server_id: &str,
    found: &DirectoryUser,
    facts: &ClientFacts,
) -> Result<Identity> {
    let locations: Vec<Location> = s.values::<Location>()?;
    let location = crate::model::location::locate(&locations, facts);
    Ok(Identity {
        user: UserKey {
            server_id: server_id.to_string(),
            username: found.username.clone(),
        },
        display_name: found.display_name.clone(),
        groups: found.groups.clone(),
        group_dns: found.group_dns.clone(),
        location_id: location.id.clone(),
        location_name: location.name.clone(),
    })
}

/// The assignment table's answer for an identity: role and policy, or no access.
fn decision_for(s: &Store, identity: Identity) -> Result<Decision> {
    let table = s
        .get::<AssignmentTable>(&identity.user.server_id)?
        .unwrap_or_default();
    let groups = UserGroups::new(&identity.groups, &identity.group_dns);
    let (matched_row, role_id, policy_id) = table
        .decide(&groups, &identity.location_id)
        .ok_or(BrokerError::NoAccess)?;
    let role = find_role(s, role_id)?;
    let policy = s
        .get::<Policy>(policy_id)?
        .ok_or_else(|| BrokerError::Missing {
            kind: "policy",
            id: policy_id.to_string(),
        })?;
    Ok(Decision {
        user: identity.user,
        display_name: identity.display_name,
        groups: identity.groups,
        group_dns: identity.group_dns,
        location_id: identity.location_id,
        location_name: identity.location_name,
        matched_row,
        role,
        policy,
    })
}

fn find_role(s: &Store, role_id: &str) -> Result<Role> {
    if let Some(role) = s.get::<Role>(role_id)? {
        return Ok(role);
    }
    crate::model::role::built_in()
        .into_iter()
        .find(|r| r.id == role_id)
        .ok_or_else(|| BrokerError::Missing {
            kind: "role",
            id: role_id.to_string(),
        })
}

fn pool_name(s: &Store, pool_id: &str) -> Result<String> {
    Ok(s.get::<Pool>(pool_id)?
        .map_or_else(|| pool_id.to_string(), |p| p.name))
}

/// Desktops the broker has seen assigned: a hint that saves reading them again while it looks
/// for free ones. The store transaction stays the judge; the hint is forgotten whenever desktops
/// change outside the broker (`invalidate_membership`).
#[derive(Default)]
pub struct TakenHint(RwLock<std::collections::HashSet<String>>);

impl TakenHint {
    fn contains(&self, id: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
    fn insert(&self, id: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }
    fn remove(&self, id: &str) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    fn clear(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Up to `limit` free desktops of one policy entry's pool, in the entry's order. In random
/// order it stops reading as soon as it has enough, so the cost does not grow with the pool.
fn free_in_entry(
    s: &Store,
    membership: &Membership,
    taken: &TakenHint,
    entry: &PolicyEntry,
    skip: &[String],
    limit: usize,
) -> Result<Vec<Desktop>> {
    let mut ids: Vec<&str> = membership
        .members(&entry.pool_id)
        .iter()
        .map(|id| &**id)
        .filter(|id| !skip.iter().any(|s| s == id) && !taken.contains(id))
        .collect();
    let early_stop = entry.order == PickOrder::Random;
    if early_stop {
        ids.shuffle(&mut rand::rng());
    }
    let mut free = Vec::new();
    for id in ids {
        let Some(d) = s.get::<Desktop>(id)? else {
            continue;
        };
        if d.assigned_user.is_some() {
            taken.insert(id);
            continue;
        }
        // A machine still being created, failed, being deleted, or without an address cannot
        // be used.
        if !d.can_be_assigned() {
            continue;
        }
        if !entry.running_only || d.power_state == PowerState::Running {
            free.push(d);
            if early_stop && free.len() >= limit {
                break;
            }
        }
    }
    match entry.order {
        PickOrder::Random => {}
        PickOrder::LeastRecentlyUsed => free.sort_by_key(|d| d.last_released),
        PickOrder::ByName => free.sort_by_key(|d| d.name.to_lowercase()),
    }
    free.truncate(limit);
    Ok(free)
}

fn offered(d: &Desktop, pool_id: &str, pool_name: &str, yours: bool) -> OfferedDesktop {
    OfferedDesktop {
        id: d.id.clone(),
        name: d.name.clone(),
        display_name: d.shown_name().to_string(),
        protocol: d.protocol,
        power_state: d.power_state,
        pool_id: pool_id.to_string(),
        pool_name: pool_name.to_string(),
        yours,
    }
}

fn offer_from(
    s: &Store,
    membership: &Membership,
    taken: &TakenHint,
    decision: &Decision,
) -> Result<Offer> {
    let held = s
        .get::<HeldDesktops>(&decision.user.key())?
        .unwrap_or_default();
    let mut desktops = Vec::new();
    for id in &held.desktops {
        if let Some(d) = s.get::<Desktop>(id)? {
            let pool_id = membership
                .pools_of(id)
                .first()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let name = pool_name(s, &pool_id)?;
            desktops.push(offered(&d, &pool_id, &name, true));
        }
    }
    let mut notices = Vec::new();
    for entry in &decision.policy.entries {
        let already = desktops
            .iter()
            .filter(|o| o.pool_id == entry.pool_id)
            .count();
        let wanted = (entry.offer as usize).saturating_sub(already);
        if wanted == 0 {
            continue;
        }
        let name = pool_name(s, &entry.pool_id)?;
        let free = free_in_entry(s, membership, taken, entry, &held.desktops, wanted)?;
        if free.is_empty() && already == 0 {
            notices.push(BrokerError::NoDesktopAvailable { pool: name.clone() }.to_string());
        }
        desktops.extend(
            free.iter()
                .take(wanted)
                .map(|d| offered(d, &entry.pool_id, &name, false)),
        );
    }
    Ok(Offer { desktops, notices })
}

/// The transaction at the heart of the broker.
fn assign(
    s: &Store,
    membership: &Membership,
    taken: &TakenHint,
    decision: &Decision,
    wanted: &str,
    address: IpAddr,
) -> Result<(Desktop, PolicyEntry, String)> {
    let user_key = decision.user.key();
    let held = s.get::<HeldDesktops>(&user_key)?.unwrap_or_default();
    let pools_of_wanted = membership.pools_of(wanted);
    let entry = decision
        .policy
        .entries
        .iter()
        .find(|e| pools_of_wanted.contains(&e.pool_id.as_str()))
        .cloned();
    let already_mine = held.desktops.iter().any(|d| d == wanted);
    let entry = match (entry, already_mine) {
        (Some(e), _) => e,
        // Held from an earlier policy: reconnect with the first entry's plans.
        (None, true) => decision
            .policy
            .entries
            .first()
            .cloned()
            .unwrap_or_else(|| PolicyEntry {
                pool_id: String::new(),
                offer: 1,
                running_only: false,
                order: PickOrder::Random,
                protocol_plan: DEFAULT_PLAN_ID.into(),
                power_plan: DEFAULT_PLAN_ID.into(),
                release_plan: DEFAULT_PLAN_ID.into(),
            }),
        (None, false) => return Err(BrokerError::NotOffered),
    };
    // The wanted desktop first, then, if someone else got it, the others of its pool.
    let mut candidates = vec![wanted.to_string()];
    let mut tried: Vec<String> = Vec::new();
    loop {
        let Some(id) = candidates.pop() else {
            let more = free_in_entry(s, membership, taken, &entry, &tried, 4)?;
            if more.is_empty() {
                return Err(BrokerError::NoDesktopAvailable {
                    pool: pool_name(s, &entry.pool_id)?,
                });
            }
            candidates = more.into_iter().rev().map(|d| d.id).collect();
            continue;
        };
        tried.push(id.clone());
        let session_id = crate::model::new_id();
        let session = DesktopSession {
            id: session_id.clone(),
            user: decision.user.clone(),
            desktop_id: id.clone(),
            client_address: address.to_string(),
            started: Utc::now(),
            ended: None,
        };
        let plans = crate::model::timer::AssignedPlans {
            user: user_key.clone(),
            power_plan: entry.power_plan.clone(),
            release_plan: entry.release_plan.clone(),
            assigned: Utc::now(),
        };
        let outcome = s.transact(
            &[
                Desktop::TREE,
                HeldDesktops::TREE,
                DesktopSession::TREE,
                OpenSessions::TREE,
                crate::model::timer::AssignedPlans::TREE,
            ],
            |tx| {
                let Some(mut desktop) = tx.get::<Desktop, Taken>(&id)? else {
                    return Err(TxError::Abort(Taken));
                };
                match desktop.assigned_user.as_deref() {
                    Some(holder) if holder.eq_ignore_ascii_case(&user_key) => {}
                    Some(_) => return Err(TxError::Abort(Taken)),
                    // Offered a moment ago, but since then being deleted, failed or stopped
                    // (for a pool that offers running desktops only): not this one.
                    None if !desktop.can_be_assigned()
                        || (entry.running_only && desktop.power_state != PowerState::Running) =>
                    {
                        return Err(TxError::Abort(Taken));
                    }
                    None => {
                        desktop.assigned_user = Some(user_key.clone());
                        desktop.assigned_at = Some(Utc::now());
                        tx.put(&id, &desktop)?;
                        let mut mine: HeldDesktops = tx.get(&user_key)?.unwrap_or_default();
                        if !mine.desktops.contains(&id) {
                            mine.desktops.push(id.clone());
                        }
                        tx.put(&user_key, &mine)?;
                        // The plans of this assignment, for the events after the user left.
                        tx.put(&id, &plans)?;
                    }
                }
                tx.put(&session_id, &session)?;
                let mut open: OpenSessions = tx.get(&id)?.unwrap_or_default();
                open.ids.push(session_id.clone());
                tx.put(&id, &open)?;
                Ok(desktop)
            },
        );
        match outcome {
            Ok(desktop) => {
                taken.insert(&id);
                return Ok((desktop, entry, session_id));
            }
            Err(TxError::Abort(Taken)) => {
                taken.insert(&id);
                continue;
            }
            Err(TxError::Store(e)) => return Err(e.into()),
            Err(TxError::Conflict(_)) => continue,
        }
    }
}

/// Why one assignment attempt did not commit: someone else holds the desktop (or it vanished).
#[derive(Debug)]
struct Taken;

/// Releases a desktop and ends its open sessions, saving a notice for each (numbered from
/// `first`); returns the desktop and the notices.
fn release(
    s: &Store,
    user: &UserKey,
    id: &str,
    first: u64,
    refuse_until: i64,
) -> Result<(Desktop, Vec<EndedSession>)> {
    let user_key = user.key();
    let tree = [
        Desktop::TREE,
        HeldDesktops::TREE,
        OpenSessions::TREE,
        DesktopSession::TREE,
        EndedSession::TREE,
    ];
    let released = s.transact(&tree, |tx| {
        let Some(mut desktop) = tx.get::<Desktop, BrokerError>(id)? else {
            return Err(TxError::Abort(BrokerError::NotYours));
        };
        if desktop.assigned_user.as_deref() != Some(user_key.as_str()) {
            return Err(TxError::Abort(BrokerError::NotYours));
        }
        desktop.assigned_user = None;
        desktop.assigned_at = None;
        desktop.last_released = Some(Utc::now());
        tx.put(id, &desktop)?;
        let mut mine: HeldDesktops = tx.get(&user_key)?.unwrap_or_default();
        mine.desktops.retain(|d| d != id);
        if mine.desktops.is_empty() {
            tx.delete::<HeldDesktops, BrokerError>(&user_key)?;
        } else {
            tx.put(&user_key, &mine)?;
        }
        let open: OpenSessions = tx.get(id)?.unwrap_or_default();
        let mut ended = Vec::with_capacity(open.ids.len());
        for session_id in &open.ids {
            if let Some(mut session) = tx.get::<DesktopSession, BrokerError>(session_id)?
                && session.ended.is_none()
            {
                session.ended = Some(Utc::now());
                tx.put(session_id, &session)?;
            }
        }
        for (seq, session) in (first..).zip(&open.ids) {
            let end = EndedSession {
                seq,
                session: session.clone(),
                refuse_until,
            };
            tx.put(&EndedSession::key(seq), &end)?;
            ended.push(end);
        }
        tx.put(id, &OpenSessions::default())?;
        Ok((desktop, ended))
    })?;
    Ok(released)
}

/// The broker's ticket-signing key, made once per installation (restored with backups, so a
/// restored broker keeps signing for the same gateways).
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BrokerKey {
    pub secret_hex: String,
}

impl std::fmt::Debug for BrokerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerKey(<secret>)")
    }
}

impl Record for BrokerKey {
    const TREE: &'static str = "settings";
}

impl crate::store::Singleton for BrokerKey {
    const KEY: &'static str = "broker_key";
}

/// Puts what must exist from the start into the store, each only if missing: the built-in
/// roles, the "All" location, the default plans and policy, and the ticket-signing key.
pub fn seed(store: &Store) -> Result<SigningKey> {
    use crate::model::location::ALL_LOCATION_ID;
    use crate::model::plan::{PowerPlan, ReleasePlan};
    for role in crate::model::role::built_in() {
        if store.get::<Role>(&role.id)?.is_none() {
            store.put(&role.id.clone(), &role)?;
        }
    }
    if store.get::<Location>(ALL_LOCATION_ID)?.is_none() {
        store.put(ALL_LOCATION_ID, &Location::all())?;
    }
    if store.get::<ProtocolPlan>(DEFAULT_PLAN_ID)?.is_none() {
        store.put(DEFAULT_PLAN_ID, &ProtocolPlan::default_plan())?;
    }
    if store.get::<PowerPlan>(DEFAULT_PLAN_ID)?.is_none() {
        store.put(DEFAULT_PLAN_ID, &PowerPlan::default_plan())?;
    }
    if store.get::<ReleasePlan>(DEFAULT_PLAN_ID)?.is_none() {
        store.put(DEFAULT_PLAN_ID, &ReleasePlan::default_plan())?;
    }
    if store
        .get::<Policy>(crate::model::policy::DEFAULT_POLICY_ID)?
        .is_none()
    {
        let policy = Policy::default_policy();
        store.put(&policy.id.clone(), &policy)?;
    }
    let mut key = store.get_one::<BrokerKey>()?;
    let secret = match hex::decode(&key.secret_hex)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
    {
        Some(secret) => secret,
        None => {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
            key.secret_hex = hex::encode(secret);
            store.put_one(&key)?;
            secret
        }
    };
    Ok(connect::signing_key(&secret))
}

/// Client sessions by token (the portal and the client API), in memory.
#[derive(Default)]
pub struct ClientSessions {
    map: Mutex<HashMap<[u8; 32], ClientSession>>,
}

impl ClientSessions {
    /// Sessions older than this are dropped when new ones arrive.
    pub const MAX_AGE_HOURS: i64 = 12;

    pub fn insert(&self, session: ClientSession) -> String {
        let token = crate::auth::random_token();
        let mut map = self.lock();
        // Sweep at each doubling, so abandoned sessions do not pile up.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            let oldest = Utc::now() - chrono::Duration::hours(Self::MAX_AGE_HOURS);
            map.retain(|_, s| s.created > oldest);
        }
        map.insert(crate::auth::token_key(&token), session);
        token
    }

    pub fn get(&self, token: &str) -> Option<ClientSession> {
        self.lock().get(&crate::auth::token_key(token)).cloned()
    }

    pub fn remove(&self, token: &str) {
        self.lock().remove(&crate::auth::token_key(token));
    }

    /// Ends every client session (after a restore: the assignments they stood on changed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ClientSession>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saves notices for `sessions` as a release would: in one transaction, then published.
    fn end(ends: &SessionEnds, store: &Store, sessions: &[&str], refuse_until: i64) {
        ends.record(store, |first| {
            let saved = (first..)
                .zip(sessions)
                .map(|(seq, session)| EndedSession {
                    seq,
                    session: session.to_string(),
                    refuse_until,
                })
                .collect::<Vec<_>>();
            store
                .transact(&[EndedSession::TREE], |tx| {
                    for e in &saved {
                        tx.put::<_, StoreError>(&EndedSession::key(e.seq), e)?;
                    }
                    Ok(())
                })
                .map_err(|e| match e {
                    TxError::Store(e) | TxError::Abort(e) => e,
                    TxError::Conflict(_) => StoreError::Engine("conflict".into()),
                })?;
            Ok::<_, StoreError>(((), saved))
        })
        .expect("recorded");
    }

    fn seqs(ends: &[EndedSession]) -> Vec<u64> {
        ends.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn notice_numbers_go_on_after_a_restart_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let soon = Utc::now().timestamp() + 60;
        {
            let store = Store::open(dir.path()).expect("store");
            let ends = SessionEnds::load(&store).expect("load");
            assert_eq!(*ends.subscribe().borrow(), 0);
            end(&ends, &store, &["s1", "s2"], soon);
            end(&ends, &store, &["s3"], soon);
            assert_eq!(seqs(&ends.since(0)), [1, 2, 3]);
            assert_eq!(seqs(&ends.since(2)), [3]);
        }
        // Restarted: the kept notices are there, and the next one is number 4, so a gateway
        // that saw 3 before the restart gets it.
        let store = Store::open(dir.path()).expect("store");
        let ends = SessionEnds::load(&store).expect("load");
        assert_eq!(*ends.subscribe().borrow(), 3);
        assert_eq!(ends.since(1)[0].session, "s2");
        end(&ends, &store, &["s4"], soon);
        let after = ends.since(3);
        assert_eq!(seqs(&after), [4]);
        assert_eq!(after[0].session, "s4");
        assert_eq!(*ends.subscribe().borrow(), 4);
        // A change that fails numbers nothing.
        let failed = ends.record(&store, |_| {
            Err::<((), Vec<EndedSession>), _>(StoreError::Engine("no".into()))
        });
        assert!(failed.is_err());
        end(&ends, &store, &["s5"], soon);
        assert_eq!(seqs(&ends.since(4)), [5]);
    }

    #[test]
    fn old_notices_beyond_the_newest_ones_kept_are_pruned_from_memory_and_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let ends = SessionEnds::load(&store).expect("load");
        let long_ago = Utc::now().timestamp() - SessionEnds::KEEP_SECONDS - 10;
        let many: Vec<String> = (0..SessionEnds::KEEP + 3)
            .map(|i| format!("old{i}"))
            .collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        end(&ends, &store, &names, long_ago);
        // Old, and more than KEEP of them: only the newest KEEP stay.
        let kept = ends.since(0);
        assert_eq!(kept.len(), SessionEnds::KEEP);
        assert_eq!(kept[0].seq, 4);
        assert_eq!(
            store.count::<EndedSession>().expect("count"),
            SessionEnds::KEEP
        );
        // Recent ones stay whatever their number.
        let recent = Utc::now().timestamp() + 60;
        end(&ends, &store, &["new1", "new2"], recent);
        let kept = ends.since(0);
        assert_eq!(kept.len(), SessionEnds::KEEP);
        assert_eq!(
            kept.last().map(|e| e.seq),
            Some(SessionEnds::KEEP as u64 + 5)
        );
        let reloaded = SessionEnds::load(&store).expect("load");
        assert_eq!(seqs(&reloaded.since(0)), seqs(&kept));
    }

    /// A directory that answers every sign-in with the same result and keeps the names it
    /// was asked for.
    struct Scripted {
        answer: std::result::Result<DirectoryUser, DirectoryError>,
        asked: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(answer: std::result::Result<DirectoryUser, DirectoryError>) -> Arc<Self> {
            Arc::new(Self {
                answer,
                asked: Mutex::new(Vec::new()),
            })
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl Directory for Scripted {
        fn authenticate<'a>(
            &'a self,
            user: &'a str,
            _password: &'a str,
        ) -> crate::auth::BoxFuture<'a, std::result::Result<DirectoryUser, DirectoryError>>
        {
            self.asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(user.to_string());
            let answer = self.answer.clone();
            Box::pin(async move { answer })
        }
        fn lookup<'a>(
            &'a self,
            _user: &'a str,
        ) -> crate::auth::BoxFuture<'a, std::result::Result<Option<DirectoryUser>, DirectoryError>>
        {
            Box::pin(async { Ok(None) })
        }
        fn is_enabled<'a>(
            &'a self,
            _user: &'a str,
        ) -> crate::auth::BoxFuture<'a, std::result::Result<bool, DirectoryError>> {
            Box::pin(async { Ok(true) })
        }
    }

    fn server(id: &str, order: u32) -> AuthServer {
        AuthServer {
            id: id.into(),
            name: id.into(),
            order,
            ..AuthServer::defaults_for(crate::model::directory::DirectoryKind::ActiveDirectory)
        }
    }

    fn user_of(server_id: &str, username: &str) -> DirectoryUser {
        DirectoryUser {
            server_id: server_id.into(),
            username: username.into(),
            dn: format!("CN={username},DC=example,DC=com"),
            display_name: username.into(),
            email: None,
            groups: Vec::new(),
            group_dns: Vec::new(),
            disabled: false,
        }
    }

    fn broker_over(store: &Store, dirs: Vec<(AuthServer, Arc<Scripted>)>) -> Broker {
        let broker = Broker::new(
            store.clone(),
            BrokerSettings {
                gateway_url: "wss://gateway.example/tunnel".into(),
                ticket_seconds: 60,
            },
            connect::signing_key(&[7u8; 32]),
        )
        .expect("broker");
        broker.set_directories(
            dirs.into_iter()
                .map(|(s, d)| (s, d as Arc<dyn Directory>))
                .collect(),
        );
        broker
    }

    #[tokio::test]
    async fn an_expired_password_is_told_as_such_and_no_other_server_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let expired = Scripted::new(Err(DirectoryError::PasswordExpired));
        let next = Scripted::new(Ok(user_of("next", "alice")));
        let broker = broker_over(
            &store,
            vec![
                (server("ad", 1), expired.clone()),
                (server("next", 2), next.clone()),
            ],
        );
        let facts = ClientFacts::from_address([192, 0, 2, 1].into());
        let refused = broker.sign_in("alice", "pw", None, &facts).await;
        assert!(
            matches!(refused, Err(BrokerError::PasswordExpired)),
            "{refused:?}"
        );
        assert_eq!(expired.asked(), ["alice"]);
        assert!(next.asked().is_empty(), "the next server is not asked");
        let message = BrokerError::PasswordExpired.to_string();
        assert!(message.contains("expired or must be changed"), "{message}");
        assert!(!message.contains("cannot be reached"), "{message}");
    }
}
