//! The appliance's own records: the console admin account, the audit trail, the wizard state,
//! the licence key and the console certificate.
//!
//! Each type says which tree holds it (`store::Record`); the store decides how it is encoded.
//! Nothing here does I/O.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Record, Singleton};

/// The built-in administrator's name.
pub const ADMIN_USER: &str = "admin";
/// The factory password administrators of this product class expect. It opens the first-run
/// wizard and nothing else.
pub const FACTORY_PASSWORD: &str = "leo";

/// A local console account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminAccount {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Still the factory password: only the wizard may be entered.
    pub factory: bool,
    /// Set by `gatehouse admin reset-password`: the one-time password must be changed first.
    pub must_change: bool,
    pub password_changed: DateTime<Utc>,
}

impl Record for AdminAccount {
    const TREE: &'static str = "admin_by_name";
}

/// One line of the audit trail: who did what, from where, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The account, `cli` for command-line actions, `system` for scheduled work.
    pub actor: String,
    /// Client address, empty for local actions.
    pub source: String,
    /// A stable dotted name: `signin.failed`, `licence.activated`, `backup.imported`, …
    pub action: String,
    pub detail: String,
    pub ok: bool,
}

impl Record for AuditEntry {
    const TREE: &'static str = "audit_by_time";
}

/// Where the first-run wizard stands, and when the evaluation started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SetupState {
    /// The wizard step to show next (1 password, 2 licence, 3 certificate, 4 done).
    pub wizard_step: u8,
    pub wizard_done: bool,
    pub evaluation_started: Option<NaiveDate>,
    /// When the licence agreement was accepted, and by whom.
    pub agreement_accepted: Option<(DateTime<Utc>, String)>,
}

impl Record for SetupState {
    const TREE: &'static str = "settings";
}
impl Singleton for SetupState {
    const KEY: &'static str = "setup";
}

/// The wizard's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WizardStep {
    Password = 1,
    Licence = 2,
    Certificate = 3,
    Done = 4,
}

impl SetupState {
    pub fn step(&self) -> WizardStep {
        match self.wizard_step {
            0 | 1 => WizardStep::Password,
            2 => WizardStep::Licence,
            3 => WizardStep::Certificate,
            _ => WizardStep::Done,
        }
    }
}

/// The activated licence key, as pasted (it is verified again whenever it is loaded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LicenceKey {
    pub key_text: Option<String>,
    pub activated: Option<DateTime<Utc>>,
}

impl Record for LicenceKey {
    const TREE: &'static str = "settings";
}
impl Singleton for LicenceKey {
    const KEY: &'static str = "licence";
}

/// The console's certificate and key, in PEM.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Certificate {
    pub cert_chain_pem: String,
    pub key_pem: String,
    /// Made by Gatehouse itself (self-signed) rather than uploaded.
    pub generated: bool,
    pub updated: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("generated", &self.generated)
            .field("updated", &self.updated)
            .finish_non_exhaustive()
    }
}

impl Record for Certificate {
    const TREE: &'static str = "settings";
}
impl Singleton for Certificate {
    const KEY: &'static str = "certificate";
}
