//! The appliance's administration rules: the first-run wizard's steps, the admin account,
//! licence activation, the console certificate, backups and restores, and the audit trail
//! every one of them writes.
//!
//! Both front ends call these functions: the console (`http`) and the command line (`cli`,
//! e.g. `gatehouse setup` runs the wizard's steps unattended). They block (argon2, sled,
//! file I/O): async callers go through `Store::call`. No HTTP types here.

use chrono::{DateTime, Utc};

use crate::auth;
use crate::backup::{self, BackupError, SnapshotMeta};
use crate::config::Config;
use crate::licence::{self, Licence, LicenceError, LicenceState, Verifier};
use crate::model::{
    ADMIN_USER, AdminAccount, AuditEntry, Certificate, FACTORY_PASSWORD, LicenceKey, SetupState,
    WizardStep,
};
use crate::store::{Record, Singleton, Store, StoreError, Tx, TxError};
use crate::tls::{self, CertInfo, CertPem, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Licence(#[from] LicenceError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("The new password is not accepted: {}", .0.join(" "))]
    WeakPassword(Vec<String>),
    #[error("The current password is wrong.")]
    WrongPassword,
    #[error("Accept the licence agreement to continue.")]
    AgreementRequired,
    #[error("Paste a licence key, upload a key file, or choose the 30-day evaluation.")]
    NoLicenceKey,
    #[error("That step of the setup wizard is not open now: {0}")]
    WizardOrder(String),
    #[error("The account `{0}` does not exist.")]
    NoSuchAccount(String),
    #[error(transparent)]
    Schedule(#[from] crate::scheduler::ScheduleError),
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

impl From<TxError<AdminError>> for AdminError {
    fn from(e: TxError<AdminError>) -> Self {
        match e {
            TxError::Abort(e) => e,
            TxError::Store(e) => AdminError::Store(e),
            TxError::Conflict(_) => {
                AdminError::Store(StoreError::Engine("transaction conflict".into()))
            }
        }
    }
}

/// Who did something and from where, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub source: String,
}

impl Actor {
    pub fn cli() -> Self {
        Self {
            name: "cli".into(),
            source: String::new(),
        }
    }
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            source: String::new(),
        }
    }
}

fn entry(actor: &Actor, action: &str, detail: impl Into<String>, ok: bool) -> AuditEntry {
    AuditEntry {
        at: Utc::now(),
        actor: actor.name.clone(),
        source: actor.source.clone(),
        action: action.to_string(),
        detail: detail.into(),
        ok,
    }
}

/// Appends one line to the audit trail.
pub fn audit(
    store: &Store,
    actor: &Actor,
    action: &str,
    detail: impl Into<String>,
    ok: bool,
) -> Result<()> {
    let key = store.next_key()?;
    store.put(&key, &entry(actor, action, detail, ok))?;
    Ok(())
}

/// Prepares a store for use: the factory admin account, the wizard state with the evaluation
/// clock, and a generated certificate, each only if missing. Returns the certificate to serve.
pub fn initialise(store: &Store, config: &Config) -> Result<Certificate> {
    if store.get::<AdminAccount>(ADMIN_USER)?.is_none() {
        store.put(
            ADMIN_USER,
            &AdminAccount {
                username: ADMIN_USER.into(),
                password_hash: auth::hash_password(FACTORY_PASSWORD)?,
                factory: true,
                must_change: false,
                password_changed: Utc::now(),
            },
        )?;
    }
    let mut setup = store.get_one::<SetupState>()?;
    if setup.evaluation_started.is_none() || setup.wizard_step == 0 {
        setup.evaluation_started.get_or_insert_with(licence::today);
        setup.wizard_step = setup.wizard_step.max(WizardStep::Password as u8);
        store.put_one(&setup)?;
    }
    let cert = store.get_one::<Certificate>()?;
    if !cert.cert_chain_pem.is_empty() {
        return Ok(cert);
    }
    let pem = tls::generate_self_signed(&config.server.hostnames)?;
    let cert = Certificate {
        cert_chain_pem: pem.cert_chain_pem.clone(),
        key_pem: pem.key_pem.clone(),
        generated: true,
        updated: Some(Utc::now()),
    };
    store.put_one(&cert)?;
    tracing::info!("generated a self-signed certificate for the console");
    Ok(cert)
}

/// The licence verifier: the configured public key if one is named, else the built-in one.
pub fn verifier(config: &Config) -> Result<Verifier> {
    match &config.licence.public_key_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                LicenceError::PublicKey(format!("cannot read {}: {e}", path.display()))
            })?;
            Ok(Verifier::from_pem(&pem)?)
        }
        None => Ok(Verifier::builtin()?),
    }
}

pub fn installation_code(store: &Store) -> String {
    licence::installation_code(&store.installation_id())
}

/// What a successful sign-in found.
#[derive(Debug, Clone, Copy)]
pub struct SignedIn {
    pub factory: bool,
    pub must_change: bool,
}

/// Checks an account's password (argon2id; an unknown account takes as long as a known one).
/// The factory password opens only the wizard: once the wizard is done it is refused.
pub fn check_password(store: &Store, username: &str, password: &str) -> Result<SignedIn> {
    let account = store.get::<AdminAccount>(username)?;
    let hash = account
        .as_ref()
        .map(|a| a.password_hash.as_str())
        .unwrap_or(auth::decoy_hash());
    let matches = auth::verify_password(password, hash);
    let Some(account) = account.filter(|_| matches) else {
        return Err(AdminError::WrongPassword);
    };
    if account.factory && store.get_one::<SetupState>()?.wizard_done {
        return Err(AdminError::WrongPassword);
    }
    Ok(SignedIn {
        factory: account.factory,
        must_change: account.must_change,
    })
}

fn new_account(
    username: &str,
    password: &str,
    confirm: &str,
    min_len: usize,
) -> Result<AdminAccount> {
    let problems = auth::password_problems(password, confirm, username, min_len);
    if !problems.is_empty() {
        return Err(AdminError::WeakPassword(problems));
    }
    Ok(AdminAccount {
        username: username.to_string(),
        password_hash: auth::hash_password(password)?,
        factory: false,
        must_change: false,
        password_changed: Utc::now(),
    })
}

/// Inside the wizard, a step opens only after the ones before it; once the wizard is done the
/// same actions (new licence, new certificate) are open any time.
fn require_step(
    setup: &SetupState,
    needed: WizardStep,
) -> std::result::Result<(), TxError<AdminError>> {
    if !setup.wizard_done && setup.step() < needed {
        return Err(TxError::Abort(AdminError::WizardOrder(format!(
            "finish the steps before {needed:?} first"
        ))));
    }
    Ok(())
}

/// One change to the setup state (and the settings beside it) with its audit line, in one
/// transaction: `f` checks and changes the state and writes what else it needs.
fn change_setup(
    store: &Store,
    line: AuditEntry,
    also: &[&'static str],
    f: impl Fn(&Tx<'_>, &mut SetupState) -> std::result::Result<(), TxError<AdminError>>,
) -> Result<()> {
    let audit_key = store.next_key()?;
    let mut trees = vec![SetupState::TREE, AuditEntry::TREE];
    trees.extend_from_slice(also);
    store.transact(&trees, |tx| {
        let mut setup: SetupState = tx.get(SetupState::KEY)?.unwrap_or_default();
        f(tx, &mut setup)?;
        tx.put(SetupState::KEY, &setup)?;
        tx.put(&audit_key, &line)?;
        Ok(())
    })?;
    Ok(())
}

/// Wizard step 1: the admin's own password replaces the factory one.
pub fn wizard_password(
    store: &Store,
    actor: &Actor,
    password: &str,
    confirm: &str,
    min_len: usize,
) -> Result<()> {
    let account = new_account(ADMIN_USER, password, confirm, min_len)?;
    let line = entry(actor, "wizard.password", "administrator password set", true);
    change_setup(store, line, &[AdminAccount::TREE], |tx, setup| {
        if setup.wizard_done {
            return Err(TxError::Abort(AdminError::WizardOrder(
                "the wizard is already finished".into(),
            )));
        }
        setup.wizard_step = setup.wizard_step.max(WizardStep::Licence as u8);
        tx.put(ADMIN_USER, &account)?;
        Ok(())
    })
}

/// My options: change one's own password, knowing the current one.
pub fn change_password(
    store: &Store,
    actor: &Actor,
    current: &str,
    password: &str,
    confirm: &str,
    min_len: usize,
) -> Result<()> {
    let username = actor.name.as_str();
    let stored = store
        .get::<AdminAccount>(username)?
        .ok_or_else(|| AdminError::NoSuchAccount(username.to_string()))?;
    if !auth::verify_password(current, &stored.password_hash) {
        audit(
            store,
            actor,
            "password.change",
            "current password wrong",
            false,
        )?;
        return Err(AdminError::WrongPassword);
    }
    if current == password {
        return Err(AdminError::WeakPassword(vec![
            "Choose a password different from the current one.".into(),
        ]));
    }
    let account = new_account(username, password, confirm, min_len)?;
    let audit_key = store.next_key()?;
    let line = entry(actor, "password.change", "password changed", true);
    store.transact(&[AdminAccount::TREE, AuditEntry::TREE], |tx| {
        tx.put(username, &account)?;
        tx.put(&audit_key, &line)?;
        Ok(())
    })?;
    Ok(())
}

/// `gatehouse admin reset-password`: a one-time password that must be changed at sign-in.
pub fn reset_password(store: &Store, config: &Config) -> Result<String> {
    initialise(store, config)?;
    let min_len = config.security.min_password_length;
    let password = auth::generate_password(ADMIN_USER, min_len);
    let mut account = new_account(ADMIN_USER, &password, &password, min_len)?;
    account.must_change = true;
    // A reset before the wizard ran keeps the wizard ahead: the one-time password opens it.
    account.factory = !store.get_one::<SetupState>()?.wizard_done;
    store.put(ADMIN_USER, &account)?;
    audit(
        store,
        &Actor::cli(),
        "password.reset",
        "one-time administrator password issued",
        true,
    )?;
    Ok(password)
}

/// The licence as it stands today: a stored key is verified again on every read.
pub fn licence_state(store: &Store, verifier: &Verifier) -> Result<LicenceState> {
    let setup = store.get_one::<SetupState>()?;
    let key = store.get_one::<LicenceKey>()?;
    let code = installation_code(store);
    let licence = match key.key_text.as_deref() {
        Some(text) => match verifier.check(text, &code) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("the stored licence key is no longer valid: {e}");
                None
            }
        },
        None => None,
    };
    let started = setup.evaluation_started.unwrap_or_else(licence::today);
    Ok(LicenceState::current(
        licence.as_ref(),
        started,
        licence::today(),
    ))
}

/// Activates a licence key (wizard step 2 or System > Licence). Refused keys leave the store
/// as it was.
pub fn activate_licence(
    store: &Store,
    verifier: &Verifier,
    actor: &Actor,
    key_text: &str,
    agreed: bool,
) -> Result<Licence> {
    if !agreed {
        return Err(AdminError::AgreementRequired);
    }
    if key_text.trim().is_empty() {
        return Err(AdminError::NoLicenceKey);
    }
    let licence = match verifier.verify(key_text, &installation_code(store), licence::today()) {
        Ok(l) => l,
        Err(e) => {
            audit(store, actor, "licence.refused", e.to_string(), false)?;
            return Err(e.into());
        }
    };
    let line = entry(
        actor,
        "licence.activated",
        format!("serial {} for {}", licence.serial(), licence.customer()),
        true,
    );
    let stored = LicenceKey {
        key_text: Some(licence.key_text().to_string()),
        activated: Some(Utc::now()),
    };
    licence_step(store, actor, line, true, |tx| {
        tx.put(LicenceKey::KEY, &stored)?;
        Ok(())
    })?;
    Ok(licence)
}

/// The licence step's common part: the agreement is recorded (when it was accepted) and the
/// wizard moves on.
fn licence_step(
    store: &Store,
    actor: &Actor,
    line: AuditEntry,
    agreed: bool,
    f: impl Fn(&Tx<'_>) -> std::result::Result<(), TxError<AdminError>>,
) -> Result<()> {
    change_setup(store, line, &[], |tx, setup| {
        require_step(setup, WizardStep::Licence)?;
        if agreed {
            setup.agreement_accepted = Some((Utc::now(), actor.name.clone()));
        }
        if !setup.wizard_done {
            setup.wizard_step = setup.wizard_step.max(WizardStep::Certificate as u8);
        }
        f(tx)
    })
}

/// Wizard step 2 without a key: the 30-day evaluation, counted from the first start.
pub fn choose_evaluation(store: &Store, actor: &Actor, agreed: bool) -> Result<()> {
    if !agreed {
        return Err(AdminError::AgreementRequired);
    }
    let line = entry(
        actor,
        "licence.evaluation",
        "continuing with the evaluation",
        true,
    );
    licence_step(store, actor, line, true, |_| Ok(()))
}

/// The licence step of an unattended setup without a key: the evaluation runs, and the
/// agreement is recorded as accepted only when the operator said so (`--accept-licence`);
/// otherwise it is accepted with the first licence key.
pub fn choose_evaluation_unattended(store: &Store, actor: &Actor, agreed: bool) -> Result<()> {
    let said = if agreed {
        "continuing with the evaluation"
    } else {
        "continuing with the evaluation; the licence agreement is not accepted yet"
    };
    let line = entry(actor, "licence.evaluation", said, true);
    licence_step(store, actor, line, agreed, |_| Ok(()))
}

/// Wizard step 3 or Setup > Certificate: keep the current certificate (`None`) or replace it
/// with an uploaded one, validated first. Returns what is now served; the caller applies it.
pub fn choose_certificate(
    store: &Store,
    actor: &Actor,
    upload: Option<CertPem>,
) -> Result<(Certificate, CertInfo)> {
    let current = store.get_one::<Certificate>()?;
    let (cert, info, detail) = match upload {
        None => {
            let info = tls::describe(&current.cert_chain_pem)?;
            let detail = format!("kept certificate {}", info.sha256_fingerprint);
            (current, info, detail)
        }
        Some(pem) => {
            let info = match tls::validate(&pem, Utc::now()) {
                Ok(info) => info,
                Err(e) => {
                    audit(store, actor, "certificate.refused", e.to_string(), false)?;
                    return Err(e.into());
                }
            };
            let detail = format!(
                "installed certificate for {} ({})",
                info.subject, info.sha256_fingerprint
            );
            let cert = Certificate {
                cert_chain_pem: pem.cert_chain_pem.clone(),
                key_pem: pem.key_pem.clone(),
                generated: false,
                updated: Some(Utc::now()),
            };
            (cert, info, detail)
        }
    };
    let line = entry(actor, "certificate.set", detail, true);
    change_setup(store, line, &[], |tx, setup| {
        require_step(setup, WizardStep::Certificate)?;
        if !setup.wizard_done {
            setup.wizard_step = setup.wizard_step.max(WizardStep::Done as u8);
        }
        tx.put(Certificate::KEY, &cert)?;
        Ok(())
    })?;
    Ok((cert, info))
}

/// Wizard step 4: the console opens. Every earlier step must be done.
pub fn finish_wizard(store: &Store, actor: &Actor) -> Result<()> {
    let line = entry(actor, "wizard.finished", "first-run setup completed", true);
    change_setup(store, line, &[AdminAccount::TREE], |tx, setup| {
        if setup.step() < WizardStep::Done {
            return Err(TxError::Abort(AdminError::WizardOrder(
                "finish the earlier steps first".into(),
            )));
        }
        let admin: Option<AdminAccount> = tx.get(ADMIN_USER)?;
        if admin.is_none_or(|a| a.factory) {
            return Err(TxError::Abort(AdminError::WizardOrder(
                "set the administrator password first".into(),
            )));
        }
        setup.wizard_done = true;
        Ok(())
    })
}

/// A snapshot of the whole store, encrypted when a passphrase is given.
pub fn export_backup(
    store: &Store,
    actor: &Actor,
    passphrase: Option<&str>,
) -> Result<(Vec<u8>, SnapshotMeta)> {
    let records = store.export_records()?;
    let meta = SnapshotMeta {
        format_version: backup::FORMAT_VERSION,
        schema_version: store.schema_version()?,
        installation_id: store.installation_id(),
        created: Utc::now(),
        encrypted: passphrase.is_some(),
        record_count: records.len() as u64,
    };
    let bytes = backup::encode(&meta, &records, passphrase)?;
    audit(
        store,
        actor,
        "backup.exported",
        format!(
            "{} records{}",
            records.len(),
            if passphrase.is_some() {
                ", encrypted"
            } else {
                ""
            }
        ),
        true,
    )?;
    Ok((bytes, meta))
}

/// How each stored record is read: its tree, the key for the `settings` tree's singletons,
/// and the check that its value reads as that record. A snapshot's records are checked
/// against it before a restore, so a file holding a record this version cannot read (a newer
/// Gatehouse's, or a damaged one that kept its checksum) changes nothing.
type RecordCheck = (
    &'static str,
    Option<&'static str>,
    fn(&[u8], &[u8]) -> Result<(), StoreError>,
);

fn record_checks() -> Vec<RecordCheck> {
    use crate::broker::{
        BrokerKey, DesktopSession, EndedSession, HeldDesktops, KnownUser, OpenSessions,
    };
    use crate::model::alert::Alert;
    use crate::model::center::Center;
    use crate::model::desktop::Desktop;
    use crate::model::directory::AuthServer;
    use crate::model::gateway::{GatewayRecord, LastReport};
    use crate::model::history::{AgentToken, AgentTokenHash, HistoryEntry, JobSchedule};
    use crate::model::location::Location;
    use crate::model::plan::{PowerPlan, ProtocolPlan, ReleasePlan};
    use crate::model::policy::{AssignmentTable, Policy};
    use crate::model::pool::Pool;
    use crate::model::role::Role;
    use crate::model::stats::{PoolSample, PoolStats};
    use crate::model::timer::{AssignedPlans, DesktopTimers, DesktopUse, LogoutRequest, PlanTimer};
    fn one<T: Record>() -> RecordCheck {
        (T::TREE, None, crate::store::check_value::<T>)
    }
    fn single<T: Singleton>() -> RecordCheck {
        (T::TREE, Some(T::KEY), crate::store::check_value::<T>)
    }
    vec![
        one::<AdminAccount>(),
        one::<AuditEntry>(),
        single::<SetupState>(),
        single::<LicenceKey>(),
        single::<Certificate>(),
        single::<BrokerKey>(),
        one::<Alert>(),
        one::<Center>(),
        one::<Desktop>(),
        one::<AuthServer>(),
        one::<GatewayRecord>(),
        one::<LastReport>(),
        one::<HistoryEntry>(),
        one::<AgentToken>(),
        one::<AgentTokenHash>(),
        one::<JobSchedule>(),
        one::<Location>(),
        one::<ProtocolPlan>(),
        one::<PowerPlan>(),
        one::<ReleasePlan>(),
        one::<Policy>(),
        one::<AssignmentTable>(),
        one::<Pool>(),
        one::<Role>(),
        one::<PoolStats>(),
        one::<PoolSample>(),
        one::<PlanTimer>(),
        one::<DesktopTimers>(),
        one::<AssignedPlans>(),
        one::<DesktopUse>(),
        one::<LogoutRequest>(),
        one::<HeldDesktops>(),
        one::<KnownUser>(),
        one::<DesktopSession>(),
        one::<OpenSessions>(),
        one::<EndedSession>(),
    ]
}

/// Checks that every record of a snapshot reads as this version stores it. Trees and
/// settings this version does not know are left to the restore as they are.
fn check_records(records: &[backup::Record]) -> Result<()> {
    let checks = record_checks();
    for r in records {
        let check = checks.iter().find(|(tree, key, _)| {
            *tree == r.tree && key.is_none_or(|k| k.as_bytes() == r.key.as_slice())
        });
        if let Some((_, _, check)) = check {
            check(&r.key, &r.value).map_err(|e| BackupError::UnreadableRecord(e.to_string()))?;
        }
    }
    Ok(())
}

/// Verifies a whole snapshot (checksum, passphrase, schema, every record) without changing
/// anything.
pub fn verify_backup(
    bytes: &[u8],
    passphrase: Option<&str>,
) -> Result<(SnapshotMeta, Vec<backup::Record>)> {
    let (meta, records) = backup::decode(bytes, passphrase)?;
    backup::check_schema(&meta, crate::store::SCHEMA_VERSION)?;
    check_records(&records)?;
    Ok((meta, records))
}

/// Replaces the store with a snapshot after verifying all of it; an error anywhere leaves the
/// store as it was.
pub fn restore_backup(
    store: &Store,
    actor: &Actor,
    bytes: &[u8],
    passphrase: Option<&str>,
) -> Result<SnapshotMeta> {
    let (meta, records) = match verify_backup(bytes, passphrase) {
        Ok(v) => v,
        Err(e) => {
            audit(store, actor, "backup.refused", e.to_string(), false)?;
            return Err(e);
        }
    };
    restore_verified(store, actor, meta, &records)
}

/// Replaces the store with records that [`verify_backup`] accepted. Two things a restore does
/// not roll back: the audit trail (lines written since the snapshot are kept) and the
/// session-end notices (the live ones replace the snapshot's, so their numbering never goes
/// back and gateways following it miss nothing).
pub fn restore_verified(
    store: &Store,
    actor: &Actor,
    meta: SnapshotMeta,
    records: &[backup::Record],
) -> Result<SnapshotMeta> {
    let in_snapshot: std::collections::HashSet<&[u8]> = records
        .iter()
        .filter(|r| r.tree == AuditEntry::TREE)
        .map(|r| r.key.as_slice())
        .collect();
    let newer: Vec<backup::Record> = store
        .export_tree(AuditEntry::TREE)?
        .into_iter()
        .filter(|r| !in_snapshot.contains(r.key.as_slice()))
        .collect();
    let ends = crate::broker::EndedSession::TREE;
    let live_ends = store.export_tree(ends)?;
    let merged: Vec<backup::Record> = records
        .iter()
        .filter(|r| r.tree != ends)
        .cloned()
        .chain(newer)
        .chain(live_ends)
        .collect();
    store.replace_all(&merged)?;
    let foreign = if meta.installation_id == store.installation_id() {
        String::new()
    } else {
        format!(", from installation {}", meta.installation_id)
    };
    audit(
        store,
        actor,
        "backup.imported",
        format!(
            "{} records made {}{foreign}",
            meta.record_count,
            meta.created.format("%Y-%m-%d %H:%M UTC")
        ),
        true,
    )?;
    Ok(meta)
}

/// The scheduled backup job: a snapshot into the configured folder, then rotation.
/// Sets a job's schedule in place of the configured one (`Some("")`: off), or puts the
/// configured one back (`None`). A schedule that cannot be read is refused with the reason and
/// nothing is saved. Kept in the store, so it outlives restarts; audited either way.
pub fn set_job_schedule(
    store: &Store,
    scheduler: &crate::scheduler::Scheduler,
    actor: &Actor,
    name: &str,
    text: Option<&str>,
) -> Result<crate::scheduler::JobStatus> {
    use crate::model::history::JobSchedule;
    use crate::scheduler::{ScheduleError, parse_schedule};
    if scheduler.status(name).is_none() {
        return Err(ScheduleError::UnknownJob(name.to_string()).into());
    }
    let text = text.map(str::trim);
    if let Some(t) = text
        && let Err(e) = parse_schedule(t)
    {
        audit(
            store,
            actor,
            "job.schedule",
            format!("{name}: refused `{t}`: {e}"),
            false,
        )?;
        return Err(e.into());
    }
    match text {
        Some(t) => store.put(
            name,
            &JobSchedule {
                schedule: t.to_string(),
                set_by: actor.name.clone(),
                set_at: Utc::now(),
            },
        )?,
        None => {
            store.delete::<JobSchedule>(name)?;
        }
    }
    let status = scheduler.set_schedule(name, text)?;
    let detail = match text {
        None => format!(
            "{name}: back to the configured schedule `{}`",
            status.schedule
        ),
        Some("") => format!("{name}: turned off"),
        Some(t) => format!("{name}: schedule `{t}`"),
    };
    audit(store, actor, "job.schedule", detail, true)?;
    Ok(status)
}

/// Puts the registered jobs on the schedules set in the console, and the others back on their
/// configured ones (at start, and after a backup was restored). A stored schedule this build
/// cannot read is skipped with a warning.
pub fn apply_job_schedules(store: &Store, scheduler: &crate::scheduler::Scheduler) -> Result<()> {
    use crate::model::history::JobSchedule;
    let set: std::collections::HashMap<String, JobSchedule> =
        store.list::<JobSchedule>()?.into_iter().collect();
    for job in scheduler.statuses() {
        let text = set.get(&job.name).map(|s| s.schedule.as_str());
        if let Err(e) = scheduler.set_schedule(&job.name, text) {
            tracing::warn!(job = %job.name, "the schedule set in the console is not used: {e}");
            let _ = scheduler.set_schedule(&job.name, None);
        }
    }
    Ok(())
}

pub fn scheduled_backup(store: &Store, config: &Config) -> Result<String> {
    let passphrase = match &config.backup.passphrase_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| BackupError::Io {
                    action: "reading the backup passphrase file",
                    path: path.clone(),
                    source: e,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => None,
    };
    let (bytes, meta) = export_backup(store, &Actor::system(), passphrase.as_deref())?;
    let saved = backup::save_to_dir(
        &config.backup_dir(),
        meta.created,
        &bytes,
        config.backup.keep,
    )?;
    Ok(format!(
        "saved {} ({} records), removed {} old",
        saved.path.display(),
        meta.record_count,
        saved.deleted.len()
    ))
}

/// The scheduled backups present in the backup folder, newest first.
pub fn list_backups(config: &Config) -> Vec<(String, u64, DateTime<Utc>)> {
    let dir = config.backup_dir();
    let mut out: Vec<(String, u64, DateTime<Utc>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let created = backup::parse_file_name(&name)?;
            let size = e.metadata().ok()?.len();
            Some((name, size, created))
        })
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.2));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string literals after `const NAME: &'static str = ` in the crate's sources (test
    /// records of the store's own tests left out).
    fn declared(name: &str) -> std::collections::BTreeSet<String> {
        fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read src").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let needle = format!("const {name}: &'static str = \"");
        let mut out = std::collections::BTreeSet::new();
        for file in files.iter().filter(|f| !f.ends_with("store.rs")) {
            let text = std::fs::read_to_string(file).expect("source");
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix(&needle)
                    && let Some((literal, _)) = rest.split_once('"')
                {
                    out.insert(literal.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn every_stored_record_is_checked_before_a_restore() {
        let checks = record_checks();
        let trees: std::collections::BTreeSet<String> =
            checks.iter().map(|(t, _, _)| t.to_string()).collect();
        let keys: std::collections::BTreeSet<String> = checks
            .iter()
            .filter_map(|(_, k, _)| k.map(str::to_string))
            .collect();
        let declared_trees = declared("TREE");
        assert!(declared_trees.len() >= 30, "{declared_trees:?}");
        let missing: Vec<_> = declared_trees.difference(&trees).collect();
        assert!(
            missing.is_empty(),
            "add these trees to record_checks: {missing:?}"
        );
        let missing: Vec<_> = declared("KEY").difference(&keys).cloned().collect();
        assert!(
            missing.is_empty(),
            "add these settings to record_checks: {missing:?}"
        );
    }

    #[test]
    fn reset_password_meets_a_minimum_longer_than_the_usual_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut config = Config::default();
        config.security.min_password_length = 40;
        let password = reset_password(&store, &config).expect("a one-time password");
        assert_eq!(password.chars().count(), 40, "{password}");
        let signed_in = check_password(&store, ADMIN_USER, &password).expect("it signs in");
        assert!(signed_in.must_change);
    }

    #[test]
    fn a_record_this_version_cannot_read_is_named() {
        let desktop = crate::model::desktop::Desktop::from_input(
            crate::model::desktop::DesktopInput {
                name: "d1".into(),
                display_name: String::new(),
                address: "10.0.0.1".into(),
                port: None,
                protocol: crate::model::Protocol::Rdp,
                os: String::new(),
            },
            Utc::now(),
        );
        let mut value = u16::MAX.to_le_bytes().to_vec();
        value.extend(serde_json::to_vec(&desktop).expect("json"));
        let record = |value: Vec<u8>| backup::Record {
            tree: crate::model::desktop::Desktop::TREE.into(),
            key: b"d1".to_vec(),
            value,
        };
        let Err(AdminError::Backup(BackupError::UnreadableRecord(reason))) =
            check_records(&[record(value.clone())])
        else {
            panic!("a newer record was accepted");
        };
        assert!(
            reason.contains("desktop_by_id") && reason.contains("newer"),
            "{reason}"
        );
        value[..2].copy_from_slice(&crate::model::desktop::Desktop::VERSION.to_le_bytes());
        check_records(&[record(value)]).expect("the current version reads");
        // Trees this version does not know are left as they are.
        let unknown = backup::Record {
            tree: "some_future_tree".into(),
            key: b"k".to_vec(),
            value: b"?".to_vec(),
        };
        check_records(&[unknown]).expect("unknown trees pass");
    }
}
