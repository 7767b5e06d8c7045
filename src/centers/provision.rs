//! Provisioning runs: growing a pool with new machines in its cloud center while it has fewer
//! unassigned desktops than its `start_below` and fewer desktops than its `stop_at`.
//!
//! - At most one run per pool at a time; a check asked for while one runs makes that run look
//!   again before it ends, so no trigger is lost.
//! - The pool's desktops are counted as stored, machines being created included: each new
//!   machine's desktop is written first (power state `building`, no address, no server id),
//!   then the cloud is asked, then the server id is stored. A burst of sign-ins therefore
//!   never takes the pool past `stop_at`.
//! - A create that gets no answer in time keeps its desktop: the cloud may have made the
//!   machine, which the inventory then links to it by name; never listed within the build
//!   timeout, it is a failed build. A desktop whose server id was never stored (a restart
//!   between the create and its answer) is found the same way.
//! - A refused create removes its desktop and counts a failure, as does a first build that
//!   ends in ERROR or takes too long (seen by the inventory refresh, which then deletes the
//!   machine and its desktop); a machine whose first build is over resets the count. At the
//!   pool's `failure_limit` provisioning turns itself off, keeps the cloud's message on the
//!   pool, writes an audit line and raises an alert, until an administrator turns it on.
//! - A licence without provisioning: an enabled pool creates nothing and says why on the pool.
//!
//! Called after an assignment (the broker's hook), after a pool is saved, and by the
//! `pool_stats` job through [`Centers::provision_all`].

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::merge::FailedBuild;
use super::{CenterError, Centers, lock, tx_error};
use crate::admin::{self, Actor};
use crate::licence::Capability;
use crate::model::alert::Alert;
use crate::model::center::Center;
use crate::model::desktop::{Desktop, name_key};
use crate::model::pool::{CompiledPools, Pool};
use crate::model::provisioning::{Provisioning, to_create};
use crate::openstack::{BootVolume, Networks, NewServer};
use crate::store::{Record, Store, StoreError};

/// A create that got no answer in time: the cloud may have made the machine.
fn is_timeout(e: &CenterError) -> bool {
    matches!(
        e,
        CenterError::Cloud(crate::openstack::Error::Timeout { .. })
    )
}

/// What one provisioning check did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Provisioned {
    pub pool: String,
    /// Names of the machines asked for, in order.
    pub created: Vec<String>,
    /// The cloud's refusals, in order.
    pub failed: Vec<String>,
    /// Provisioning turned itself off during this check.
    pub turned_off: bool,
    /// Another check of this pool was running: it looks again instead.
    pub busy: bool,
    /// Why nothing (more) was created, when there is a reason to say.
    pub note: String,
}

/// Ends a pool's run if it stops early (an error): the pool may be checked again.
struct Running<'a> {
    centers: &'a Centers,
    pool: String,
    armed: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.centers.provisioning).remove(&self.pool);
        }
        self.centers.provisioning_ended.notify_waiters();
    }
}

/// The pool, all pools and all desktops as they stand.
type Snapshot = (Option<Pool>, Vec<Pool>, Vec<Desktop>);

impl Centers {
    /// Has the broker start a provisioning check of the pool after each assignment from it,
    /// beside the sign-in, never in its way.
    pub fn watch_assignments(self: &Arc<Self>) {
        // Weak: the centers hold the broker.
        let weak = Arc::downgrade(self);
        self.broker.set_on_assigned(Arc::new(move |pool: &str| {
            let (Some(centers), Ok(runtime)) =
                (weak.upgrade(), tokio::runtime::Handle::try_current())
            else {
                return;
            };
            let pool = pool.to_string();
            runtime.spawn(async move {
                if let Err(e) = centers.provision_check(&pool).await {
                    tracing::warn!(pool = %pool, error = %e, "provisioning after an assignment failed");
                }
            });
        }));
    }

    /// Creates machines for the pool up to its thresholds (see the module's description).
    pub async fn provision_check(&self, pool_id: &str) -> Result<Provisioned, CenterError> {
        {
            let mut running = lock(&self.provisioning);
            if let Some(again) = running.get_mut(pool_id) {
                *again = true;
                return Ok(Provisioned {
                    pool: pool_id.to_string(),
                    busy: true,
                    ..Provisioned::default()
                });
            }
            running.insert(pool_id.to_string(), false);
        }
        let mut guard = Running {
            centers: self,
            pool: pool_id.to_string(),
            armed: true,
        };
        let mut out = Provisioned {
            pool: pool_id.to_string(),
            ..Provisioned::default()
        };
        loop {
            self.provision_run(pool_id, &mut out).await?;
            let mut running = lock(&self.provisioning);
            match running.get_mut(pool_id) {
                Some(again) if *again => *again = false,
                _ => {
                    running.remove(pool_id);
                    guard.armed = false;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Waits until no provisioning run of the pool is going (at once when none is).
    pub async fn provisioning_settled(&self, pool_id: &str) {
        loop {
            let ended = self.provisioning_ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so an end between the look and the wait is seen.
            ended.as_mut().enable();
            if !lock(&self.provisioning).contains_key(pool_id) {
                return;
            }
            ended.await;
        }
    }

    /// Checks every pool with provisioning on: for the `pool_stats` job. The result names
    /// what was created and what failed.
    pub async fn provision_all(&self) -> Result<String, String> {
        let pools: Vec<Pool> = self
            .store
            .call(|s| s.list::<Pool>())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.provisioning.enabled)
            .collect();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for pool in pools {
            match self.provision_check(&pool.id).await {
                Ok(p) => {
                    if !p.created.is_empty() {
                        done.push(format!("{}: created {}", pool.name, p.created.join(", ")));
                    }
                    if !p.failed.is_empty() {
                        failed.push(format!("{}: {}", pool.name, p.failed.join("; ")));
                    }
                }
                Err(e) => failed.push(format!("{}: {e}", pool.name)),
            }
        }
        if failed.is_empty() {
            Ok(if done.is_empty() {
                "no pool needed a machine".to_string()
            } else {
                done.join("; ")
            })
        } else {
            Err(failed.join("; "))
        }
    }

    /// Whether the licence in force allows provisioning (always, when no verifier was set).
    async fn provisioning_allowed(&self) -> bool {
        let Some(verifier) = lock(&self.verifier).clone() else {
            return true;
        };
        match self
            .store
            .call(move |s| admin::licence_state(s, &verifier))
            .await
        {
            Ok(state) => state.allows(Capability::Provisioning),
            Err(e) => {
                tracing::warn!(error = %e, "the licence could not be read: no provisioning");
                false
            }
        }
    }

    /// One pass: create while the counts say so, one machine at a time.
    async fn provision_run(&self, pool_id: &str, out: &mut Provisioned) -> Result<(), CenterError> {
        let mut allowed = None;
        loop {
            let id = pool_id.to_string();
            let (pool, pools, desktops): Snapshot = self
                .store
                .call(move |s| {
                    let pools: Vec<Pool> = s.values::<Pool>()?;
                    let desktops: Vec<Desktop> = s.values::<Desktop>()?;
                    let pool = pools.iter().find(|p| p.id == id).cloned();
                    Ok::<_, StoreError>((pool, pools, desktops))
                })
                .await?;
            let Some(pool) = pool else {
                out.note = "the pool no longer exists".into();
                return Ok(());
            };
            let p = pool.provisioning.clone();
            if !p.enabled {
                if out.note.is_empty() {
                    out.note = "provisioning is off for this pool".into();
                }
                return Ok(());
            }
            let compiled = CompiledPools::new(&pools);
            let (mut total, mut unassigned) = (0u32, 0u32);
            for d in desktops.iter().filter(|d| compiled.matches(pool_id, d)) {
                total = total.saturating_add(1);
                if d.assigned_user.is_none() {
                    unassigned = unassigned.saturating_add(1);
                }
            }
            if to_create(total, unassigned, p.start_below, p.stop_at) == 0 {
                let note = format!(
                    "{total} desktops, {unassigned} unassigned: nothing to create (start below {}, stop at {})",
                    p.start_below, p.stop_at
                );
                if out.created.is_empty() && out.failed.is_empty() {
                    self.record_status(pool_id, &note, None).await?;
                }
                out.note = note;
                return Ok(());
            }
            if allowed.is_none() {
                allowed = Some(self.provisioning_allowed().await);
            }
            if allowed == Some(false) {
                let note = "the licence in force does not allow provisioning: nothing is created until a licence that allows it is activated (System > Licence)".to_string();
                self.record_status(pool_id, &note, None).await?;
                out.note = note;
                return Ok(());
            }
            let names: HashSet<String> = desktops.iter().map(|d| name_key(&d.name)).collect();
            let Some(n) = next_free(&p, &names) else {
                let note = "no free sequence number for a new name".to_string();
                self.record_status(pool_id, &note, None).await?;
                out.note = note;
                return Ok(());
            };
            let mut placeholder = p.placeholder(pool_id, n, self.broker.now());
            if let Ok(center) = self.center(p.center.trim()).await {
                placeholder.protocol = center.protocol;
            }
            if !compiled.matches(pool_id, &placeholder) {
                // Its rules (or a parent's, or the center's protocol) changed since the pool
                // was saved: the pool would never count the machine and create without end.
                let message = crate::model::pool::not_a_member(&placeholder);
                self.record_failure(&pool, &message, true).await?;
                out.turned_off = true;
                out.note = format!("provisioning turned itself off: {message}");
                return Ok(());
            }
            let name = placeholder.name.clone();
            // Written first, so that every count from now on sees it.
            if !self.insert_placeholder(&placeholder).await? {
                // Someone took the name between the read and the write: read again.
                continue;
            }
            self.broker.invalidate_membership();
            match self.create_machine(&p, &name).await {
                Ok(server_id) => {
                    lock(&self.building).insert(server_id.clone());
                    self.set_server_id(&placeholder.id, &server_id).await?;
                    out.created.push(name.clone());
                    tracing::info!(pool = %pool.name, machine = %name, server = %server_id, "provisioned");
                    // Not a success yet: the count resets when its first build is over.
                    self.record_status(pool_id, &format!("created {name}"), None)
                        .await?;
                }
                Err(e) => {
                    let message = e.to_string();
                    if is_timeout(&e) {
                        // The cloud may have made it all the same: the desktop stays, for the
                        // inventory to link to its server by name, or to give up on after the
                        // build timeout. It counts as a failure only then.
                        tracing::warn!(pool = %pool.name, machine = %name, error = %message, "no answer to a create: the inventory will look for the machine");
                        out.failed.push(message);
                        return Ok(());
                    }
                    let id = placeholder.id.clone();
                    self.store.call(move |s| s.delete::<Desktop>(&id)).await?;
                    self.broker.invalidate_membership();
                    tracing::warn!(pool = %pool.name, machine = %name, error = %message, "provisioning failed");
                    out.failed.push(message.clone());
                    if self.record_failure(&pool, &message, false).await? {
                        out.turned_off = true;
                        out.note = format!("provisioning turned itself off: {message}");
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Asks the pool's center for the machine; its server id.
    async fn create_machine(&self, p: &Provisioning, name: &str) -> Result<String, CenterError> {
        let center = self.center(p.center.trim()).await?;
        let cloud = self.cloud(&center)?;
        Ok(cloud.create_server(&new_server(p, name)).await?)
    }

    /// Stores a new machine's desktop unless a desktop of that name exists; whether it did.
    async fn insert_placeholder(&self, desktop: &Desktop) -> Result<bool, CenterError> {
        let desktop = desktop.clone();
        Ok(self
            .store
            .call(move |s| {
                let key = name_key(&desktop.name);
                let taken = s
                    .list::<Desktop>()?
                    .iter()
                    .any(|(_, d)| name_key(&d.name) == key);
                if taken {
                    return Ok::<_, StoreError>(false);
                }
                s.put(&desktop.id, &desktop)?;
                Ok(true)
            })
            .await?)
    }

    async fn set_server_id(&self, desktop_id: &str, server_id: &str) -> Result<(), CenterError> {
        let (id, server) = (desktop_id.to_string(), server_id.to_string());
        self.store
            .call(move |s| {
                s.transact(&[Desktop::TREE], |tx| {
                    if let Some(mut d) = tx.get::<Desktop, ()>(&id)? {
                        d.server_id = server.clone();
                        tx.put(&id, &d)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        Ok(())
    }

    /// Stores the last run's result on the pool as it stands; `success` resets the failures.
    pub(super) async fn record_status(
        &self,
        pool_id: &str,
        result: &str,
        success: Option<bool>,
    ) -> Result<(), CenterError> {
        let (id, result, now) = (pool_id.to_string(), result.to_string(), self.broker.now());
        self.store
            .call(move |s| {
                s.transact(&[Pool::TREE], |tx| {
                    if let Some(mut pool) = tx.get::<Pool, ()>(&id)? {
                        let p = &mut pool.provisioning;
                        p.last_run = Some(now);
                        p.last_result = result.clone();
                        if success == Some(true) {
                            p.failures = 0;
                        }
                        tx.put(&id, &pool)?;
                    }
                    Ok(())
                })
                .map_err(tx_error)
            })
            .await?;
        Ok(())
    }

    /// Counts a failed first build against its pool and deletes the machine and its desktop.
    /// A warning when the machine could not be deleted: its desktop then stays, in error, for
    /// an administrator to look at.
    pub(super) async fn fail_build(
        &self,
        center: &Center,
        failed: &FailedBuild,
    ) -> Result<Option<String>, CenterError> {
        let machine = &failed.desktop;
        tracing::warn!(pool = %failed.pool, machine = %machine.name, error = %failed.message, "a provisioned machine's build failed");
        let id = failed.pool.clone();
        if let Some(pool) = self.store.call(move |s| s.get::<Pool>(&id)).await? {
            self.record_failure(&pool, &failed.message, false).await?;
        }
        let deleted = match self.cloud(center) {
            // Never listed: nothing to delete in the cloud.
            _ if machine.server_id.is_empty() => Ok(()),
            Ok(cloud) => match cloud.delete_server(&machine.server_id).await {
                Err(e) if !e.is_not_found() => Err(e.to_string()),
                _ => Ok(()),
            },
            Err(e) => Err(e.to_string()),
        };
        let (detail, ok, warning) = match &deleted {
            Ok(()) => (
                format!(
                    "{}; the machine {} ({}) was deleted",
                    failed.message, machine.name, machine.server_id
                ),
                true,
                None,
            ),
            Err(e) => {
                let warning = format!("the failed machine {} was not deleted: {e}", machine.name);
                (
                    format!("{}; {warning}", failed.message),
                    false,
                    Some(warning),
                )
            }
        };
        self.store
            .call(move |s| {
                admin::audit(s, &Actor::system(), "desktop.build_failed", detail, ok)
                    .map_err(|e| StoreError::Engine(e.to_string()))
            })
            .await?;
        if deleted.is_ok() {
            self.remove_desktop(machine).await?;
        }
        Ok(warning)
    }

    /// Counts a failure on the pool; at its limit (or `at_once`: a failure no retry
    /// mends) turns provisioning off with the message, writes the audit line and the alert.
    /// Whether it turned off.
    async fn record_failure(
        &self,
        pool: &Pool,
        message: &str,
        at_once: bool,
    ) -> Result<bool, CenterError> {
        let (id, text, now) = (pool.id.clone(), message.to_string(), self.broker.now());
        let turned_off = self
            .store
            .call(move |s| {
                s.transact(&[Pool::TREE], |tx| {
                    let Some(mut pool) = tx.get::<Pool, ()>(&id)? else {
                        return Ok(false);
                    };
                    let p = &mut pool.provisioning;
                    p.failures = p.failures.saturating_add(1);
                    p.last_run = Some(now);
                    p.last_result = format!("failed: {text}");
                    let off = p.enabled && (at_once || p.failures >= p.failure_limit.max(1));
                    if off {
                        p.enabled = false;
                        p.disabled_reason = Some(text.clone());
                    }
                    tx.put(&id, &pool)?;
                    Ok(off)
                })
                .map_err(tx_error)
            })
            .await?;
        if turned_off {
            let why = if at_once {
                String::new()
            } else {
                format!(
                    " after {} failures in a row",
                    pool.provisioning.failure_limit.max(1)
                )
            };
            let detail = format!(
                "provisioning of pool `{}` ({}) turned itself off{why}: {message}",
                pool.name, pool.id,
            );
            tracing::error!(pool = %pool.name, error = %message, "provisioning turned itself off");
            let alert = Alert {
                at: self.broker.now(),
                kind: "provisioning".into(),
                subject: pool.id.clone(),
                message: format!(
                    "{detail}. Fix the provisioning settings (or the cloud), then turn provisioning on again."
                ),
                acknowledged: false,
            };
            let store: Store = self.store.clone();
            let written = store
                .call(move |s| {
                    admin::audit(
                        s,
                        &Actor::system(),
                        "pool.provisioning_disabled",
                        detail,
                        false,
                    )
                    .map_err(|e| StoreError::Engine(e.to_string()))?;
                    let key = s.next_key()?;
                    s.put(&key, &alert)
                })
                .await;
            if let Err(e) = written {
                tracing::error!(error = %e, "the provisioning alert could not be stored");
            }
        }
        Ok(turned_off)
    }
}

/// The first sequence number from the pool's start whose name no desktop has.
fn next_free(p: &Provisioning, names: &HashSet<String>) -> Option<u64> {
    let start = u64::from(p.sequence_start);
    let tries = names.len() as u64 + u64::from(p.stop_at) + 1;
    (start..start.saturating_add(tries)).find(|n| !names.contains(&name_key(&p.name_for(*n))))
}

/// The cloud's request for machine `name`.
fn new_server(p: &Provisioning, name: &str) -> NewServer {
    let mut new = NewServer::new(name, p.flavor.trim(), p.image.trim());
    let zone = p.availability_zone.trim();
    new.availability_zone = (!zone.is_empty()).then(|| zone.to_string());
    new.networks = if p.networks.is_empty() {
        Networks::None
    } else {
        Networks::Ids(p.networks.clone())
    };
    new.security_groups = p.security_groups.clone();
    new.metadata = p.metadata.clone();
    new.boot_volume = p.new_volume.enabled.then(|| BootVolume {
        size_gb: p.new_volume.size_gb,
        volume_type: Some(p.new_volume.volume_type.trim().to_string()).filter(|t| !t.is_empty()),
        delete_on_termination: p.new_volume.delete_on_termination,
    });
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_name_skips_those_taken() {
        let p = Provisioning {
            name: "vdi-{SEQUENCE}".into(),
            sequence_start: 1,
            sequence_width: 3,
            stop_at: 4,
            ..Provisioning::default()
        };
        let names: HashSet<String> = ["VDI-001", "vdi-002", "vdi-004"]
            .iter()
            .map(|n| name_key(n))
            .collect();
        assert_eq!(next_free(&p, &names), Some(3));
        assert_eq!(next_free(&p, &HashSet::new()), Some(1));
        let fixed = Provisioning {
            name: "kiosk".into(),
            ..p
        };
        assert_eq!(next_free(&fixed, &[name_key("kiosk")].into()), None);
    }

    #[test]
    fn the_request_follows_the_settings() {
        let mut p = Provisioning {
            flavor: "f1".into(),
            image: "img".into(),
            availability_zone: " nova ".into(),
            ..Provisioning::default()
        };
        let new = new_server(&p, "vdi-001");
        assert_eq!(new.networks, Networks::None);
        assert_eq!(new.availability_zone.as_deref(), Some("nova"));
        assert!(new.boot_volume.is_none());
        p.networks = vec!["net-1".into()];
        p.new_volume.enabled = true;
        p.new_volume.size_gb = 30;
        p.availability_zone.clear();
        let new = new_server(&p, "vdi-002");
        assert_eq!(new.networks, Networks::Ids(vec!["net-1".into()]));
        assert_eq!(new.availability_zone, None);
        let volume = new.boot_volume.expect("a volume");
        assert_eq!((volume.size_gb, volume.volume_type), (30, None));
    }
}
