//! Local console authentication: argon2id password hashes, password rules, console sessions
//! with their CSRF tokens, and the throttle that slows and locks out repeated failed sign-ins
//! per account and per client address.
//!
//! Sessions and throttle counters live in memory: a restart signs everyone out and forgets
//! failures, which is the safe direction. Tokens are compared in constant time and only their
//! SHA-256 is kept as a map key. This module decides who someone is, never what they may do.
//!
//! `ldap` signs directory users in against Active Directory and OpenLDAP.

pub mod ldap;

pub use ldap::{DirectoryError, DirectoryGroup, DirectoryUser, LdapDirectory};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// argon2id memory cost in KiB: OWASP's 46 MiB, 1 pass, 1 lane profile (the same strength
/// class as 19 MiB with 2 passes). Its working memory is above glibc's largest mmap threshold
/// (32 MiB), so every hash maps it and unmaps it when done: an idle appliance does not keep
/// tens of MiB of freed heap after a sign-in.
pub const ARGON2_M_COST_KIB: u32 = 46 * 1024;
pub const ARGON2_T_COST: u32 = 1;
pub const ARGON2_P_COST: u32 = 1;

fn hasher() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with argon2id and a fresh random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string; a malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters come from the stored hash itself.
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the account does not exist, so that the answer takes as long
/// as for a real account.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password for unknown accounts").unwrap_or_default())
}

/// The rules a new administrator password must meet; each broken rule is one sentence.
pub fn password_problems(
    password: &str,
    confirm: &str,
    username: &str,
    min_len: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if password != confirm {
        problems.push("The two passwords differ: type the same password twice.".to_string());
    }
    if password.chars().count() < min_len {
        problems.push(format!("Use at least {min_len} characters."));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if classes < 3 {
        problems.push(
            "Mix at least three of: lower-case letters, upper-case letters, digits, symbols."
                .to_string(),
        );
    }
    let lower = password.to_lowercase();
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        problems.push("Do not include the user name.".to_string());
    }
    if lower.contains(crate::model::FACTORY_PASSWORD) && lower.len() < min_len + 3 {
        problems.push("Do not build on the factory password.".to_string());
    }
    problems
}

/// The length of a generated password when the configured minimum is shorter.
pub const GENERATED_PASSWORD_LEN: usize = 22;

/// A random password for `username` that meets [`password_problems`] with `min_len` (for
/// `admin reset-password`): [`GENERATED_PASSWORD_LEN`] characters, or `min_len` when that is
/// longer.
pub fn generate_password(username: &str, min_len: usize) -> String {
    let len = min_len.max(GENERATED_PASSWORD_LEN);
    let mut password = String::new();
    // A random draw can break a rule (hold the user name, say) by chance: draw again. The
    // chance is tiny, so the bound only guards against a rule no password can meet.
    for _ in 0..100 {
        // 3 bytes make 4 base64 characters; 3 more than needed leave room to cut.
        let mut bytes = vec![0u8; len.div_ceil(4) * 3 + 3];
        rand::rng().fill_bytes(&mut bytes);
        let mut text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // base64 gives upper, lower and digits; the suffix guarantees a digit and a symbol.
        text.truncate(len.saturating_sub(2));
        password = format!("{text}-7");
        if password_problems(&password, &password, username, min_len).is_empty() {
            break;
        }
    }
    password
}

/// A random, URL-safe token of 256 bits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The map key of a token: its SHA-256, so a memory dump holds no usable token.
pub fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two secrets without an early exit.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One browser's console session. Anonymous until someone signs in, so the sign-in form has a
/// CSRF token too.
#[derive(Debug, Clone)]
pub struct Session {
    pub username: Option<String>,
    pub csrf: String,
    /// Signed in with the factory password: only the wizard is open.
    pub factory: bool,
    pub must_change: bool,
    /// A directory user's console access per area (from their role at sign-in, or at the last
    /// check against the directory); `None` for a local account, which has full access. What
    /// the access allows is decided in `http`.
    pub console: Option<ConsoleAccess>,
    created: Instant,
    last_seen: Instant,
    /// When a directory user's standing was last confirmed (sign-in, then each check).
    checked: Instant,
}

/// How much of each console area a directory user sees (their role's map at sign-in).
pub type ConsoleAccess =
    std::collections::BTreeMap<crate::model::role::Area, crate::model::role::Access>;

/// The live sessions, keyed by the SHA-256 of their cookie token. A signed-in session ends
/// after `idle` without a request and, however active, `max_age` after signing in.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    /// How long a signed-in session lasts at most, however active.
    max_age: Duration,
}

/// Anonymous sessions (sign-in page visits) expire quickly and are capped in number.
const ANONYMOUS_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_SESSIONS: usize = 10_000;

impl Session {
    /// Why this session is over at `now`, if it is: idle too long, or (signed in) older than
    /// `max_age`.
    fn over(&self, now: Instant, idle: Duration, max_age: Duration) -> Option<&'static str> {
        if self.username.is_none() {
            return (now.duration_since(self.last_seen) >= ANONYMOUS_TTL).then_some("idle");
        }
        if now.duration_since(self.created) >= max_age {
            Some("reached its maximum age")
        } else if now.duration_since(self.last_seen) >= idle {
            Some("idle")
        } else {
            None
        }
    }
}

impl Sessions {
    /// Sessions that end after `idle` without a request, and `max_age` after signing in.
    pub fn new(idle: Duration, max_age: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle,
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an anonymous session; returns its cookie token.
    pub fn start(&self) -> (String, Session) {
        let token = random_token();
        let now = Instant::now();
        let session = Session {
            username: None,
            csrf: random_token(),
            factory: false,
            must_change: false,
            console: None,
            created: now,
            last_seen: now,
            checked: now,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            self.sweep(&mut map, now);
            if map.len() >= MAX_SESSIONS {
                // Still full: drop the anonymous sessions first, oldest first.
                let mut anon: Vec<([u8; 32], Instant)> = map
                    .iter()
                    .filter(|(_, s)| s.username.is_none())
                    .map(|(k, s)| (*k, s.created))
                    .collect();
                anon.sort_by_key(|(_, t)| *t);
                for (k, _) in anon.into_iter().take(MAX_SESSIONS / 10) {
                    map.remove(&k);
                }
            }
        }
        map.insert(token_key(&token), session.clone());
        (token, session)
    }

    fn sweep(&self, map: &mut HashMap<[u8; 32], Session>, now: Instant) {
        map.retain(|_, s| s.over(now, self.idle, self.max_age).is_none());
    }

    /// The live session under `key`; one that is over is removed (and its end logged).
    fn live<'m>(
        &self,
        map: &'m mut HashMap<[u8; 32], Session>,
        key: &[u8; 32],
        now: Instant,
    ) -> Option<&'m mut Session> {
        let reason = map.get(key)?.over(now, self.idle, self.max_age);
        if let Some(reason) = reason {
            if let Some(ended) = map.remove(key)
                && let Some(user) = ended.username
            {
                tracing::info!(user = %user, "console session ended: {reason}");
            }
            return None;
        }
        map.get_mut(key)
    }

    /// The session for a cookie token, if it is live; touching it keeps it alive.
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = self.live(&mut map, &token_key(token), now)?;
        session.last_seen = now;
        Some(session.clone())
    }

    /// The user name (`server_id/username`) of a live directory user's session whose last
    /// check against the directory is `every` or longer ago; `None` for any other token.
    pub fn due_for_check(&self, token: &str, every: Duration) -> Option<String> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = self.live(&mut map, &token_key(token), now)?;
        if session.console.is_none() || now.duration_since(session.checked) < every {
            return None;
        }
        session.username.clone()
    }

    /// Records a check of a directory user's session: their role's console access as it now
    /// stands.
    pub fn checked(&self, token: &str, console: ConsoleAccess) {
        if let Some(s) = self.lock().get_mut(&token_key(token)) {
            s.console = Some(console);
            s.checked = Instant::now();
        }
    }

    /// Signs in: the old token is dropped and a new one issued (no session fixation).
    pub fn sign_in(
        &self,
        old_token: Option<&str>,
        username: &str,
        factory: bool,
        must_change: bool,
    ) -> String {
        self.insert_signed_in(old_token, username, factory, must_change, None)
    }

    /// Signs a directory user in (`server_id/username`) with their role's console access.
    pub fn sign_in_directory(
        &self,
        old_token: Option<&str>,
        username: &str,
        console: ConsoleAccess,
    ) -> String {
        self.insert_signed_in(old_token, username, false, false, Some(console))
    }

    fn insert_signed_in(
        &self,
        old_token: Option<&str>,
        username: &str,
        factory: bool,
        must_change: bool,
        console: Option<ConsoleAccess>,
    ) -> String {
        let mut map = self.lock();
        if let Some(old) = old_token {
            map.remove(&token_key(old));
        }
        let token = random_token();
        let now = Instant::now();
        map.insert(
            token_key(&token),
            Session {
                username: Some(username.to_string()),
                csrf: random_token(),
                factory,
                must_change,
                console,
                created: now,
                last_seen: now,
                checked: now,
            },
        );
        token
    }

    /// Updates the flags of a signed-in session (after the password was changed).
    pub fn update(&self, token: &str, factory: bool, must_change: bool) {
        if let Some(s) = self.lock().get_mut(&token_key(token)) {
            s.factory = factory;
            s.must_change = must_change;
        }
    }

    pub fn end(&self, token: &str) {
        self.lock().remove(&token_key(token));
    }

    /// Ends every session but `keep`'s (after a restore: accounts and roles changed).
    pub fn end_all_except(&self, keep: &str) {
        let keep = token_key(keep);
        self.lock().retain(|k, _| *k == keep);
    }

    /// Ends every session of one account except `keep` (after its password changed).
    pub fn end_all_for(&self, username: &str, keep: Option<&str>) {
        let keep = keep.map(token_key);
        self.lock()
            .retain(|k, s| s.username.as_deref() != Some(username) || Some(*k) == keep);
    }
}

/// The account name a typed sign-in name counts against in the [`Throttle`]: the user name
/// without its domain, so that `alice`, `EXAMPLE\alice` and `alice@example.com` share one
/// budget (the throttle ignores case as well). Every sign-in (console, API, portal) keys its
/// failures with this.
pub fn throttle_account(typed: &str) -> String {
    crate::model::directory::split_login(typed).1
}

/// Failed sign-ins counted per account and per client address.
pub struct Throttle {
    state: Mutex<HashMap<ThrottleKey, Failures>>,
    per_account: u32,
    per_address: u32,
    lockout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Account(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// A refusal during this lockout was already answered as the first.
    refused: bool,
}

/// The longest user name (with its domain) a sign-in takes, in bytes.
pub const MAX_NAME: usize = 256;
/// The longest password a sign-in takes, in bytes.
pub const MAX_PASSWORD: usize = 1024;

/// Whether a typed user name or password is longer than any sign-in takes: refused before
/// the throttle, the directory or the audit log see it.
pub fn too_long(user: &str, password: &str) -> bool {
    user.len() > MAX_NAME || password.len() > MAX_PASSWORD
}

/// The throttle's verdict before a password is even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; answer a failure no sooner than this delay.
    Allowed { delay: Duration },
    /// Refuse without checking the password. `first`: the first refusal of this lockout,
    /// the one worth an audit line (the rest are counted, so a flood of attempts cannot fill
    /// the audit log).
    Locked { for_: Duration, first: bool },
}

impl Throttle {
    pub fn new(per_account: u32, per_address: u32, lockout: Duration) -> Self {
        Self {
            state: Mutex::new(HashMap::new()),
            per_account,
            per_address,
            lockout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(account: &str, address: IpAddr) -> [ThrottleKey; 2] {
        [
            ThrottleKey::Account(account.to_lowercase()),
            ThrottleKey::Address(address),
        ]
    }

    pub fn check(&self, account: &str, address: IpAddr) -> Verdict {
        let now = Instant::now();
        let mut map = self.lock();
        let mut failures = 0;
        for key in Self::keys(account, address) {
            if let Some(f) = map.get_mut(&key) {
                match f.locked_until {
                    Some(until) if until > now => {
                        let first = !f.refused;
                        f.refused = true;
                        return Verdict::Locked {
                            for_: until - now,
                            first,
                        };
                    }
                    Some(_) => {
                        map.remove(&key);
                    }
                    None if now.duration_since(f.last) > self.lockout => {
                        map.remove(&key);
                    }
                    None => failures = failures.max(f.count),
                }
            }
        }
        // Each failure in a row adds a quarter second, up to two seconds.
        Verdict::Allowed {
            delay: Duration::from_millis(250 * u64::from(failures.min(8))),
        }
    }

    /// Counts a failure; says whether it locked the account or the address.
    pub fn failure(&self, account: &str, address: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() > 100_000 {
            let lockout = self.lockout;
            map.retain(|_, f| now.duration_since(f.last) < lockout);
        }
        let mut locked = false;
        for key in Self::keys(account, address) {
            let limit = match key {
                ThrottleKey::Account(_) => self.per_account,
                ThrottleKey::Address(_) => self.per_address,
            };
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
                refused: false,
            });
            f.count += 1;
            f.last = now;
            if f.count >= limit {
                f.locked_until = Some(now + self.lockout);
                locked = true;
            }
        }
        locked
    }

    /// A good sign-in clears the account's count (not the address's: one good password must
    /// not reset an attacker's budget for other accounts).
    pub fn success(&self, account: &str) {
        self.lock()
            .remove(&ThrottleKey::Account(account.to_lowercase()));
    }
}

/// A future that may be kept in a trait object.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A directory that signs users in: what the broker needs of an authentication server.
///
/// `user` is the name as typed: `user`, `DOMAIN\user` or `user@domain`. Each directory takes
/// from it the name its login attribute holds (a `userPrincipalName` login keeps the suffix).
pub trait Directory: Send + Sync {
    /// Checks the password and returns the user with their groups.
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<DirectoryUser, DirectoryError>>;
    /// Finds a user without a password (test login).
    fn lookup<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<DirectoryUser>, DirectoryError>>;
    /// Whether the user still exists and is enabled (checked on every request).
    fn is_enabled<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, DirectoryError>>;
}

impl Directory for LdapDirectory {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<DirectoryUser, DirectoryError>> {
        Box::pin(LdapDirectory::authenticate(self, user, password))
    }
    fn lookup<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<DirectoryUser>, DirectoryError>> {
        Box::pin(LdapDirectory::lookup(self, user))
    }
    fn is_enabled<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(LdapDirectory::is_enabled(self, user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_and_differ() {
        let a = hash_password("Correct horse 9").expect("hash");
        let b = hash_password("Correct horse 9").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify_password("Correct horse 9", &a));
        assert!(!verify_password("correct horse 9", &a));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn password_rules_name_each_problem() {
        assert!(password_problems("Tr0ub4dor&3xyz", "Tr0ub4dor&3xyz", "admin", 12).is_empty());
        let p = password_problems("short", "other", "admin", 12);
        assert!(p.iter().any(|s| s.contains("differ")));
        assert!(p.iter().any(|s| s.contains("at least 12")));
        assert!(p.iter().any(|s| s.contains("three")));
        let p = password_problems("Admin-Password-1", "Admin-Password-1", "admin", 12);
        assert!(p.iter().any(|s| s.contains("user name")), "{p:?}");
        let generated = generate_password("admin", 12);
        assert!(
            password_problems(&generated, &generated, "admin", 12).is_empty(),
            "{generated}"
        );
    }

    #[test]
    fn generated_passwords_are_as_long_as_the_configured_minimum() {
        let short = generate_password("admin", 8);
        assert_eq!(short.chars().count(), GENERATED_PASSWORD_LEN, "{short}");
        for min_len in [22, 23, 30, 64, 100] {
            let generated = generate_password("admin", min_len);
            assert_eq!(generated.chars().count(), min_len, "{generated}");
            assert!(
                password_problems(&generated, &generated, "admin", min_len).is_empty(),
                "{min_len}: {generated}"
            );
        }
    }

    #[test]
    fn a_directory_session_keeps_its_console_access_and_a_local_one_has_none_recorded() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (anon, _) = s.start();
        let access = crate::model::role::Role::auditor().console;
        let token = s.sign_in_directory(Some(&anon), "srv/bob", access.clone());
        assert!(s.get(&anon).is_none(), "old token is gone");
        let live = s.get(&token).expect("live");
        assert_eq!(live.username.as_deref(), Some("srv/bob"));
        assert_eq!(live.console, Some(access));
        let local = s.sign_in(None, "admin", false, false);
        assert_eq!(s.get(&local).expect("live").console, None);
    }

    #[test]
    fn sessions_rotate_on_sign_in_and_end() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (anon, first) = s.start();
        assert!(first.username.is_none());
        let token = s.sign_in(Some(&anon), "admin", false, false);
        assert!(s.get(&anon).is_none(), "old token is gone");
        let live = s.get(&token).expect("live");
        assert_eq!(live.username.as_deref(), Some("admin"));
        assert_ne!(
            live.csrf, first.csrf,
            "a new CSRF token comes with the new session"
        );
        let other = s.sign_in(None, "admin", false, false);
        s.end_all_for("admin", Some(&token));
        assert!(s.get(&other).is_none());
        assert!(s.get(&token).is_some());
        s.end(&token);
        assert!(s.get(&token).is_none());
    }

    #[test]
    fn a_restore_ends_every_session_but_the_restorer_s() {
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(3600));
        let mine = s.sign_in(None, "admin", false, false);
        let other_admin = s.sign_in(None, "admin", false, false);
        let directory = s.sign_in_directory(None, "slapd/alice", ConsoleAccess::default());
        s.end_all_except(&mine);
        assert!(s.get(&mine).is_some());
        assert!(s.get(&other_admin).is_none());
        assert!(s.get(&directory).is_none());
    }

    #[test]
    fn signed_in_sessions_end_at_their_maximum_age_however_active() {
        let s = Sessions::new(Duration::from_secs(600), Duration::ZERO);
        let local = s.sign_in(None, "admin", false, false);
        assert!(s.get(&local).is_none(), "a local account's session");
        let directory = s.sign_in_directory(None, "slapd/bob", ConsoleAccess::default());
        assert!(s.get(&directory).is_none(), "a directory user's session");
        assert!(s.due_for_check(&directory, Duration::ZERO).is_none());
        let (anonymous, _) = s.start();
        assert!(
            s.get(&anonymous).is_some(),
            "a sign-in form's session keeps its own limit"
        );
    }

    #[test]
    fn only_directory_sessions_come_due_for_a_check_and_a_check_updates_the_access() {
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(3600));
        let local = s.sign_in(None, "admin", false, false);
        let bob = s.sign_in_directory(None, "slapd/bob", ConsoleAccess::default());
        let (anonymous, _) = s.start();
        assert_eq!(s.due_for_check(&local, Duration::ZERO), None);
        assert_eq!(s.due_for_check(&anonymous, Duration::ZERO), None);
        assert_eq!(s.due_for_check("not-a-token", Duration::ZERO), None);
        assert_eq!(
            s.due_for_check(&bob, Duration::ZERO).as_deref(),
            Some("slapd/bob")
        );
        assert_eq!(
            s.due_for_check(&bob, Duration::from_secs(600)),
            None,
            "just signed in: not due"
        );
        let auditor = crate::model::role::Role::auditor().console;
        s.checked(&bob, auditor.clone());
        assert_eq!(s.get(&bob).expect("live").console, Some(auditor));
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new(Duration::ZERO, Duration::from_secs(3600));
        let token = s.sign_in(None, "admin", false, false);
        assert!(s.get(&token).is_none());
    }

    #[test]
    fn throttle_slows_then_locks_per_account_and_per_address() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other_ip: IpAddr = "192.0.2.8".parse().expect("ip");
        let t = Throttle::new(3, 5, Duration::from_secs(600));
        assert_eq!(
            t.check("admin", ip),
            Verdict::Allowed {
                delay: Duration::ZERO
            }
        );
        assert!(!t.failure("admin", ip));
        assert!(
            matches!(t.check("admin", ip), Verdict::Allowed { delay } if delay > Duration::ZERO)
        );
        assert!(!t.failure("admin", ip));
        assert!(t.failure("ADMIN", ip), "third failure locks the account");
        assert!(
            matches!(
                t.check("admin", other_ip),
                Verdict::Locked { first: true, .. }
            ),
            "account lock holds from anywhere"
        );
        assert!(
            matches!(t.check("admin", ip), Verdict::Locked { first: false, .. }),
            "one refusal per lockout is the first"
        );
        // The address: 5 failures across accounts.
        let t = Throttle::new(100, 5, Duration::from_secs(600));
        for n in 0..5 {
            t.failure(&format!("user{n}"), ip);
        }
        assert!(matches!(
            t.check("someone-else", ip),
            Verdict::Locked { .. }
        ));
        assert!(matches!(
            t.check("someone-else", other_ip),
            Verdict::Allowed { .. }
        ));
        t.success("user0");
        assert!(
            matches!(t.check("user0", ip), Verdict::Locked { .. }),
            "success does not unlock the address"
        );
        // However the name is typed, it is one account.
        let t = Throttle::new(2, 100, Duration::from_secs(600));
        assert!(!t.failure(&throttle_account("EXAMPLE\\Bob"), ip));
        assert!(t.failure(&throttle_account("bob@example.com"), ip));
        assert!(matches!(
            t.check(&throttle_account(" bob "), other_ip),
            Verdict::Locked { .. }
        ));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
