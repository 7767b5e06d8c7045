//! Centers at work: one OpenStack connection per configured center, the inventory refresh
//! that keeps the stored desktops in step with each cloud, and the actions administrators,
//! plans and the broker take on a desktop's machine.
//!
//! - A refresh reads the whole inventory first and writes only if it succeeded: an
//!   unreachable cloud leaves the last known desktops in place, marks the center as failing
//!   with the error, and is tried again with a growing delay (30 s doubling, at most the
//!   center's refresh interval).
//! - Desktops keep their assignment across refreshes (fields are set on the desktop as it
//!   stands inside the write's transaction); a server deleted in the cloud takes its desktop
//!   out of every pool, after the broker has released it (which ends its sessions).
//! - Refreshes of one center never overlap: the `inventory` job skips a center being
//!   refreshed, and "Refresh now" waits for that refresh's end, then reads again.
//! - A provisioned machine whose first build ends in ERROR (or is still building after
//!   [`crate::model::provisioning::BUILD_TIMEOUT`]) is a failure of its pool's provisioning:
//!   it is counted as a refused create is, and the machine and its desktop are deleted (it
//!   never was a desktop anyone used), so that the pool can grow again.
//!
//! Times are the broker's clock ([`Broker::now`]), which tests move on.
//! [`merge`] decides what a refresh writes; `openstack` does the talking.

pub mod merge;
pub mod provision;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::broker::{Broker, UserKey};
use crate::model::center::Center;
use crate::model::desktop::{Desktop, PowerState};
use crate::openstack::{self, Cloud, PowerAction};
use crate::store::{Record, Store, StoreError, TxError};

/// The first delay after a failed refresh; it doubles with each failure in a row.
const FIRST_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CenterError {
    #[error("there is no center `{0}`")]
    NoSuchCenter(String),
    #[error("there is no desktop `{0}`")]
    NoSuchDesktop(String),
    #[error("{0}")]
    Cloud(#[from] openstack::Error),
    #[error("the desktop {0} is entered by hand: it has no cloud machine to act on")]
    Static(String),
    #[error(
        "the desktop {0} is not marked deletable: only machines Gatehouse provisioned (or marked deletable) are deleted"
    )]
    NotDeletable(String),
    #[error("the desktop {desktop} is assigned to {user}: release it first")]
    Assigned { desktop: String, user: String },
    #[error("a refresh of this center is already running")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an action on a desktop's machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineAction {
    Start,
    /// Asks the guest to shut down.
    Shutdown,
    /// Nova's stop: the same as a shutdown for the cloud's API.
    PowerOff,
    Reboot,
    HardReboot,
    Suspend,
    Resume,
    /// Deletes the machine (deletable desktops only) and its desktop.
    Delete,
}

impl MachineAction {
    pub const ALL: [MachineAction; 8] = [
        MachineAction::Start,
        MachineAction::Shutdown,
        MachineAction::PowerOff,
        MachineAction::Reboot,
        MachineAction::HardReboot,
        MachineAction::Suspend,
        MachineAction::Resume,
        MachineAction::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineAction::Start => "start",
            MachineAction::Shutdown => "shutdown",
            MachineAction::PowerOff => "power_off",
            MachineAction::Reboot => "reboot",
            MachineAction::HardReboot => "hard_reboot",
            MachineAction::Suspend => "suspend",
            MachineAction::Resume => "resume",
            MachineAction::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<MachineAction> {
        MachineAction::ALL
            .into_iter()
            .find(|a| a.as_str() == text.trim())
    }

    fn power(self) -> Option<PowerAction> {
        Some(match self {
            MachineAction::Start => PowerAction::Start,
            // Nova has one "stop" (ACPI shutdown, then power off after a grace time).
            MachineAction::Shutdown | MachineAction::PowerOff => PowerAction::Stop,
            MachineAction::Reboot => PowerAction::Reboot,
            MachineAction::HardReboot => PowerAction::HardReboot,
            MachineAction::Suspend => PowerAction::Suspend,
            MachineAction::Resume => PowerAction::Resume,
            MachineAction::Delete => return None,
        })
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Refreshed {
    pub center: String,
    pub servers: usize,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Servers that could not become desktops, and parts of the inventory that could not be
    /// read, each with the reason.
    pub warnings: Vec<String>,
    /// Provisioned machines whose first build failed, each with why.
    pub failed_builds: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    next_try: Option<DateTime<Utc>>,
}

/// Every center's connection and refresh state.
pub struct Centers {
    store: Store,
    broker: Arc<Broker>,
    /// Connections by center id, with the settings they were made from.
    clouds: Mutex<HashMap<String, (Center, Arc<Cloud>)>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    refreshing: Mutex<HashSet<String>>,
    /// Told each time a refresh ends.
    refresh_ended: tokio::sync::Notify,
    /// Servers being created (by server id): a listing that does not show them yet does not
    /// make their desktops gone.
    pub(crate) building: Mutex<HashSet<String>>,
    /// Pools with a provisioning run going, each with whether another check was asked for
    /// meanwhile (the run then looks again).
    provisioning: Mutex<HashMap<String, bool>>,
    /// Told each time a provisioning run ends.
    provisioning_ended: tokio::sync::Notify,
    /// Checks the licence before provisioning; none: provisioning is allowed.
    verifier: Mutex<Option<crate::licence::Verifier>>,
}

/// Removes a center from the "refreshing" set when its refresh ends, and says so.
struct Refreshing<'a>(&'a Centers, String);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        lock(&self.0.refreshing).remove(&self.1);
        self.0.refresh_ended.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Centers {
    pub fn new(store: Store, broker: Arc<Broker>) -> Centers {
        Centers {
            store,
            broker,
            clouds: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
            refresh_ended: tokio::sync::Notify::new(),
            building: Mutex::new(HashSet::new()),
            provisioning: Mutex::new(HashMap::new()),
            provisioning_ended: tokio::sync::Notify::new(),
            verifier: Mutex::new(None),
        }
    }

    /// Makes provisioning ask the licence in force (checked with `verifier`) first.
    pub fn set_verifier(&self, verifier: crate::licence::Verifier) {
        *lock(&self.verifier) = Some(verifier);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The center's connection, made anew when its settings changed (the token cache goes
    /// with the old one).
    pub fn cloud(&self, center: &Center) -> Result<Arc<Cloud>, CenterError> {
        let mut clouds = lock(&self.clouds);
        if let Some((settings, cloud)) = clouds.get(&center.id)
            && same_connection(settings, center)
        {
            return Ok(cloud.clone());
        }
        let cloud = Arc::new(Cloud::new(center)?);
        clouds.insert(center.id.clone(), (center.clone(), cloud.clone()));
        Ok(cloud)
    }

    /// The stored center.
    pub async fn center(&self, id: &str) -> Result<Center, CenterError> {
        let id = id.to_string();
        self.store
            .call(move |s| s.get::<Center>(&id)?.ok_or(CenterError::NoSuchCenter(id)))
            .await
    }

    /// Reads the center's inventory and brings its desktops in step; records how it went on
    /// the center. A refresh of the center already running (the `inventory` job's) is waited
    /// for first, so that what this one returns is read after it was asked for.
    pub async fn refresh(&self, id: &str) -> Result<Refreshed, CenterError> {
        loop {
            let ended = self.refresh_ended.notified();
            tokio::pin!(ended);
            // Registered before the try, so an end between the try and the wait is seen.
            ended.as_mut().enable();
            match self.try_refresh(id).await {
                Err(CenterError::Busy) => ended.await,
                other => return other,
            }
        }
    }

    /// [`Centers::refresh`], or [`CenterError::Busy`] at once when one is running.
    pub async fn try_refresh(&self, id: &str) -> Result<Refreshed, CenterError> {
        if !lock(&self.refreshing).insert(id.to_string()) {
            return Err(CenterError::Busy);
        }
        let _running = Refreshing(self, id.to_string());
        let center = self.center(id).await?;
        let read = match self.cloud(&center) {
            Ok(cloud) => cloud.inventory().await.map_err(CenterError::from),
            Err(e) => Err(e),
        };
        let now = self.broker.now();
        let inventory = match read {
            Ok(inventory) => inventory,
            Err(e) => {
                let failures = {
                    let mut backoff = lock(&self.backoff);
                    let b = backoff.entry(id.to_string()).or_default();
                    b.failures = b.failures.saturating_add(1);
                    b.next_try = Some(now + retry_delay(b.failures, &center));
                    b.failures
                };
                tracing::warn!(center = %center.name, failures, error = %e, "inventory failed; the last known desktops stay");
                self.record(id, now, Some(e.to_string())).await?;
                return Err(e);
            }
        };
        lock(&self.backoff).insert(
            id.to_string(),
            Backoff {
                failures: 0,
                next_try: Some(now + interval(&center)),
            },
        );
        let mut refreshed = self.merge(&center, &inventory, now).await?;
        refreshed
            .warnings
            .extend(inventory.warnings.iter().cloned());
        self.record(id, now, None).await?;
        tracing::info!(center = %center.name, servers = refreshed.servers, added = refreshed.added, removed = refreshed.removed, "inventory refreshed");
        Ok(refreshed)
    }

    /// Refreshes every center whose time has come (its interval, or its retry delay after a
    /// failure): the `inventory` job. The result names each center's outcome.
    pub async fn refresh_due(&self) -> Result<String, String> {
        let centers: Vec<Center> = self
            .store
            .call(|s| s.list::<Center>())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let now = self.broker.now();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for center in centers {
            let due = lock(&self.backoff)
                .get(&center.id)
                .and_then(|b| b.next_try)
                .is_none_or(|t| t <= now);
            if !due {
                continue;
            }
            match self.try_refresh(&center.id).await {
                Ok(r) => done.push(format!("{}: {} servers", center.name, r.servers)),
                Err(CenterError::Busy) => {}
                Err(e) => failed.push(format!("{}: {e}", center.name)),
            }
        }
        if failed.is_empty() {
            Ok(if done.is_empty() {
                "no center due".to_string()
            } else {
                done.join("; ")
            })
        } else {
            Err(failed.join("; "))
        }
    }

    /// Stores how the last refresh went, on the center as it stands (an edit made meanwhile
    /// stays).
    async fn record(
        &self,
        id: &str,
        now: DateTime<Utc>,
        error: Option<String>,
    ) -> Result<(), CenterError> {
        let id = id.to_string();
        self.store
            .call(move |s| {
                s.transact(&[Center::TREE], |tx| {
                    if let Some(mut center) = tx.get::<Center, ()>(&id)? {
                        match &error {
                            None => center.record_success(now),
                            Some(e) => center.record_failure(now, e.clone()),
                        }
                        tx.put(&id, &center)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await
            .map_err(CenterError::Store)
    }

    async fn merge(
        &self,
        center: &Center,
        inventory: &openstack::Inventory,
        now: DateTime<Utc>,
    ) -> Result<Refreshed, CenterError> {
        let desktops: Vec<Desktop> = self
            .store
            .call(|s| s.list::<Desktop>())
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let building = {
            let mut building = lock(&self.building);
            // Listed now: the inventory takes over.
            let listed: HashSet<&str> = inventory.servers.iter().map(|s| s.id.as_str()).collect();
            building.retain(|id| !listed.contains(id.as_str()));
            building.clone()
        };
        let plan = merge::plan(center, &desktops, inventory, &building, now);
        let mut refreshed = Refreshed {
            center: center.id.clone(),
            servers: inventory.servers.len(),
            added: plan.added.len(),
            updated: plan.updates.len(),
            removed: 0,
            warnings: plan.skipped.clone(),
            failed_builds: Vec::new(),
        };
        let (updates, added) = (plan.updates, plan.added);
        // Counted once: the failed first build ends here, whatever state the machine is in.
        let failed: HashSet<String> = plan
            .failed_builds
            .iter()
            .map(|f| f.desktop.id.clone())
            .collect();
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    for (id, fields) in &updates {
                        if let Some(mut desktop) = tx.get::<Desktop, ()>(id)? {
                            fields.apply(&mut desktop);
                            if failed.contains(id) {
                                desktop.first_build = None;
                            }
                            tx.put(id, &desktop)?;
                        }
                    }
                    for desktop in &added {
                        tx.put(&desktop.id, desktop)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        for desktop in plan.gone {
            match self.remove_desktop(&desktop).await {
                Ok(()) => refreshed.removed += 1,
                Err(e) => refreshed
                    .warnings
                    .push(format!("desktop {} not removed: {e}", desktop.name)),
            }
        }
        for (pool, name) in plan.built {
            self.record_status(&pool, &format!("{name} is built"), Some(true))
                .await?;
        }
        for failed in plan.failed_builds {
            if let Some(warning) = self.fail_build(center, &failed).await? {
                refreshed.warnings.push(warning);
            } else {
                refreshed.removed += 1;
            }
            refreshed.failed_builds.push(failed.message);
        }
        self.broker.invalidate_membership();
        Ok(refreshed)
    }

    /// Takes a desktop out of the store (its machine is gone or deleted), releasing it first
    /// if it is assigned so that its sessions end.
    async fn remove_desktop(&self, desktop: &Desktop) -> Result<(), CenterError> {
        let current = {
            let id = desktop.id.clone();
            self.store.call(move |s| s.get::<Desktop>(&id)).await?
        };
        let Some(current) = current else {
            return Ok(());
        };
        if let Some(user) = &current.assigned_user
            && let Some((server_id, username)) = user.split_once('/')
        {
            let key = UserKey {
                server_id: server_id.to_string(),
                username: username.to_string(),
            };
            if let Err(e) = self.broker.release(&key, &current.id).await {
                tracing::warn!(desktop = %current.name, error = %e, "release before removal failed");
            }
        }
        let id = current.id.clone();
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    // Only if nobody took it in between (a machine being deleted is not
                    // offered, but an assignment may have raced the release).
                    match tx.get::<Desktop, ()>(&id)? {
                        Some(d) if d.assigned_user.is_none() => {
                            tx.delete::<Desktop, ()>(&id)?;
                        }
                        _ => {}
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        self.broker.invalidate_membership();
        Ok(())
    }

    /// Acts on a desktop's machine in its cloud. A delete takes the desktop out too.
    pub async fn act(&self, desktop_id: &str, action: MachineAction) -> Result<(), CenterError> {
        let desktop = {
            let id = desktop_id.to_string();
            self.store
                .call(move |s| s.get::<Desktop>(&id)?.ok_or(CenterError::NoSuchDesktop(id)))
                .await?
        };
        if desktop.server_id.is_empty() {
            return Err(CenterError::Static(desktop.name));
        }
        let center = self.center(&desktop.center).await?;
        let cloud = self.cloud(&center)?;
        match action.power() {
            Some(power) => {
                cloud.power(&desktop.server_id, power).await?;
                self.set_power_hint(&desktop.id, action).await?;
            }
            None => {
                if !desktop.deletable {
                    return Err(CenterError::NotDeletable(desktop.name));
                }
                // Marked in the same transaction that finds it free, so nobody is given it
                // while the cloud deletes the machine.
                let before = self.mark_deleting(&desktop).await?;
                if let Err(e) = cloud.delete_server(&desktop.server_id).await {
                    self.unmark_deleting(&desktop.id, before).await?;
                    return Err(e.into());
                }
                self.remove_desktop(&desktop).await?;
            }
        }
        Ok(())
    }

    /// Marks a free desktop as being deleted (never offered from now on); its power state
    /// before. Refused when someone holds it.
    async fn mark_deleting(&self, desktop: &Desktop) -> Result<PowerState, CenterError> {
        let (id, name) = (desktop.id.clone(), desktop.name.clone());
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    let Some(mut d) = tx.get::<Desktop, CenterError>(&id)? else {
                        return Err(TxError::Abort(CenterError::NoSuchDesktop(name.clone())));
                    };
                    if let Some(user) = d.assigned_user.clone() {
                        return Err(TxError::Abort(CenterError::Assigned {
                            desktop: d.name,
                            user,
                        }));
                    }
                    let before = d.power_state;
                    d.power_state = PowerState::Deleting;
                    tx.put(&id, &d)?;
                    Ok(before)
                })
                .map_err(|e| match e {
                    TxError::Abort(e) => e,
                    TxError::Store(e) => e.into(),
                    TxError::Conflict(_) => {
                        StoreError::Engine("transaction conflict".into()).into()
                    }
                })
            })
            .await
    }

    /// A delete the cloud refused: the desktop is offered again as it was.
    async fn unmark_deleting(&self, id: &str, before: PowerState) -> Result<(), CenterError> {
        let id = id.to_string();
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    if let Some(mut d) = tx.get::<Desktop, ()>(&id)?
                        && d.power_state == PowerState::Deleting
                    {
                        d.power_state = before;
                        tx.put(&id, &d)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        self.broker.invalidate_membership();
        Ok(())
    }

    /// Until the next inventory: a machine asked to stop is no longer offered as running.
    async fn set_power_hint(&self, id: &str, action: MachineAction) -> Result<(), CenterError> {
        let state = match action {
            MachineAction::Shutdown | MachineAction::PowerOff => PowerState::Stopped,
            MachineAction::Suspend => PowerState::Suspended,
            _ => return Ok(()),
        };
        let id = id.to_string();
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    if let Some(mut d) = tx.get::<Desktop, ()>(&id)? {
                        d.power_state = state;
                        tx.put(&id, &d)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        Ok(())
    }

    /// Forgets a deleted center's connection and retry state.
    pub fn forget(&self, id: &str) {
        lock(&self.clouds).remove(id);
        lock(&self.backoff).remove(id);
    }
}

fn tx_error(e: TxError<()>) -> StoreError {
    match e {
        TxError::Store(e) => e,
        TxError::Abort(()) => StoreError::Engine("transaction aborted".into()),
        TxError::Conflict(e) => StoreError::Engine(format!("transaction conflict: {e:?}")),
    }
}

fn interval(center: &Center) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(center.refresh_interval_secs.max(1)))
}

/// 30 s, 60 s, 120 s … after 1, 2, 3 … failures in a row, at most the refresh interval.
fn retry_delay(failures: u32, center: &Center) -> chrono::Duration {
    let first = chrono::Duration::from_std(FIRST_RETRY).unwrap_or_default();
    let grown = first * 2i32.saturating_pow(failures.saturating_sub(1).min(16));
    grown
        .min(interval(center))
        .max(chrono::Duration::seconds(1))
}

/// Whether two versions of a center connect the same way (so the logged-in connection and
/// its token can be kept).
fn same_connection(a: &Center, b: &Center) -> bool {
    a.auth_url == b.auth_url
        && a.region == b.region
        && a.project_domain == b.project_domain
        && a.project == b.project
        && a.user_domain == b.user_domain
        && a.username == b.username
        && a.password == b.password
        && a.interface == b.interface
        && a.ca_pem == b.ca_pem
        && a.insecure == b.insecure
}

/// The plans' timers act on machines through their centers; a static desktop gets the static
/// center's refusal.
impl crate::broker::control::DesktopControl for Centers {
    fn act<'a>(
        &'a self,
        desktop: &'a Desktop,
        action: crate::broker::control::DesktopAction,
    ) -> crate::broker::control::ControlFuture<'a> {
        use crate::broker::control::{DesktopAction as A, StaticControl};
        if desktop.server_id.is_empty() {
            return StaticControl.act(desktop, action);
        }
        let machine = match action {
            A::Start => MachineAction::Start,
            A::Shutdown => MachineAction::Shutdown,
            A::PowerOff => MachineAction::PowerOff,
            A::RebootSoft => MachineAction::Reboot,
            A::RebootHard => MachineAction::HardReboot,
            A::Suspend => MachineAction::Suspend,
            A::Resume => MachineAction::Resume,
            A::Delete => MachineAction::Delete,
        };
        Box::pin(async move {
            self.act(&desktop.id, machine)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The `pool_stats` job's provisioning check: every pool that provisions.
impl crate::broker::stats::Provisioner for Centers {
    fn check<'a>(
        &'a self,
        _stats: &'a [crate::model::stats::PoolStats],
    ) -> crate::broker::stats::ProvisionFuture<'a> {
        Box::pin(self.provision_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_thirty_seconds_up_to_the_interval() {
        let center = Center {
            refresh_interval_secs: 300,
            ..Center::default()
        };
        let secs = |n| retry_delay(n, &center).num_seconds();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(4), secs(5), secs(40)],
            [30, 60, 120, 240, 300, 300]
        );
    }

    #[test]
    fn actions_round_trip_by_name_and_map_to_nova() {
        for a in MachineAction::ALL {
            assert_eq!(MachineAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(MachineAction::parse("explode"), None);
        assert_eq!(MachineAction::Delete.power(), None);
        assert_eq!(MachineAction::PowerOff.power(), Some(PowerAction::Stop));
    }

    #[test]
    fn a_changed_password_or_url_makes_a_new_connection() {
        let a = Center {
            auth_url: "https://cloud:5000/v3".into(),
            password: "one".into(),
            ..Center::default()
        };
        let mut b = a.clone();
        b.name = "renamed".into();
        b.refresh_interval_secs = 60;
        assert!(same_connection(&a, &b));
        b.password = "two".into();
        assert!(!same_connection(&a, &b));
    }
}
