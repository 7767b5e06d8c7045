//! Provisioning and inventory against the scripted OpenStack ([`Fake`]), for the failures a
//! real cloud cannot be made to produce on demand: quota refusals and server errors on
//! create, builds that end in ERROR or never end, and an inventory that fails part-way.
//!
//! Time is the broker's clock, moved on by the test: nothing here waits for the wall clock.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};

use crate::openstack_fake::{Build, Failure, Fake, FakeOptions};
use crate::provisioning::{broker, desktops, pool};
use gatehouse::centers::{CenterError, Centers};
use gatehouse::model::AuditEntry;
use gatehouse::model::alert::Alert;
use gatehouse::model::center::Center;
use gatehouse::model::desktop::PowerState;
use gatehouse::model::pool::Pool;
use gatehouse::model::provisioning::BUILD_TIMEOUT;
use gatehouse::store::Store;

/// The fake's m1.tiny flavor and cirros image.
const FLAVOR: &str = "31611de0-81bf-460f-9cc7-5a7e51764da9";
const IMAGE: &str = "0058f54d-19ce-4f3f-abda-e6669e785392";

const NO_HOST: &str = "No valid host was found. There are not enough hosts available.";

struct Setup {
    fake: Fake,
    store: Store,
    centers: Arc<Centers>,
    pool: Pool,
    /// The broker's clock, which the test moves on.
    now: Arc<Mutex<DateTime<Utc>>>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// A store with the fake's center and a pool provisioning `vdi-…` machines in it (one at
    /// a time: start below 1, stop at 2), turning itself off after `failure_limit` failures.
    fn new(failure_limit: u32) -> Setup {
        let fake = Fake::start(FakeOptions::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let center: Center = fake.center();
        store.put(&center.id, &center).expect("center");
        let mut pool = pool("vdi", FLAVOR, IMAGE);
        pool.provisioning.center = center.id.clone();
        pool.provisioning.availability_zone.clear();
        pool.provisioning.start_below = 1;
        pool.provisioning.stop_at = 2;
        pool.provisioning.failure_limit = failure_limit;
        store.put(&pool.id, &pool).expect("pool");
        let broker = broker(&store);
        let now = Arc::new(Mutex::new(Utc::now()));
        let clock = now.clone();
        broker.set_clock(Arc::new(move || *clock.lock().expect("clock")));
        let centers = Arc::new(Centers::new(store.clone(), broker));
        Setup {
            fake,
            store,
            centers,
            pool,
            now,
            _dir: dir,
        }
    }

    fn pool(&self) -> Pool {
        self.store
            .get(&self.pool.id)
            .expect("read")
            .expect("the pool")
    }

    fn advance(&self, by: TimeDelta) {
        *self.now.lock().expect("clock") += by;
    }

    async fn refresh(&self) -> gatehouse::centers::Refreshed {
        self.centers.refresh("fake").await.expect("refresh")
    }

    fn audit(&self, action: &str) -> Vec<AuditEntry> {
        self.store
            .list::<AuditEntry>()
            .expect("audit")
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| a.action == action)
            .collect()
    }

    fn alerts(&self) -> Vec<Alert> {
        self.store.values::<Alert>().expect("alerts")
    }

    /// An administrator turns provisioning on again (as a save of the pool does).
    fn turn_on(&self) {
        let mut pool = self.pool();
        let old = pool.provisioning.clone();
        pool.provisioning.enabled = true;
        pool.provisioning.keep_status(&old);
        self.store.put(&pool.id, &pool).expect("pool");
    }
}

#[tokio::test]
async fn server_errors_and_quota_refusals_turn_provisioning_off_with_the_cloud_s_message() {
    let t = Setup::new(3);
    let quota = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances";
    t.fake.fail(
        "POST /compute/v2.1/servers",
        1,
        Failure::Status(500, "computeFault", "Unexpected API Error.".into()),
    );
    t.fake.fail(
        "POST /compute/v2.1/servers",
        2,
        Failure::Status(403, "forbidden", quota.into()),
    );

    let first = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert!(first.failed[0].contains("HTTP 500"), "{first:?}");
    assert!(!first.turned_off);
    assert_eq!(t.pool().provisioning.failures, 1);
    assert!(
        desktops(&t.store, "vdi-").is_empty(),
        "no placeholder stays"
    );

    let second = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert!(second.failed[0].contains(quota), "{second:?}");
    assert!(!second.turned_off);
    let third = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert!(third.turned_off, "{third:?}");

    let off = t.pool().provisioning;
    assert!(!off.enabled);
    assert_eq!(off.failures, 3);
    let reason = off.disabled_reason.expect("the reason");
    assert!(reason.contains(quota), "{reason}");
    assert_eq!(off.last_result, format!("failed: {reason}"));
    let alerts = t.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].message.contains(quota) && alerts[0].message.contains("3 failures"),
        "{}",
        alerts[0].message
    );
    assert_eq!(t.audit("pool.provisioning_disabled").len(), 1);
    assert!(t.fake.servers().is_empty(), "the cloud created nothing");

    // Off: nothing is asked of the cloud until an administrator turns it on again.
    let posts = t.fake.requests("POST /compute").len();
    let idle = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert!(
        idle.created.is_empty() && idle.failed.is_empty(),
        "{idle:?}"
    );
    assert_eq!(t.fake.requests("POST /compute").len(), posts);
    t.turn_on();
    let on = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(on.created, ["vdi-001"], "{on:?}");
    assert_eq!(t.fake.servers().len(), 1);
}

#[tokio::test]
async fn builds_that_end_in_error_are_failures_their_machines_deleted_and_a_good_build_resets_the_count()
 {
    let t = Setup::new(2);
    t.fake.set_build(Build::Error(NO_HOST));

    let created = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(created.created, ["vdi-001"], "{created:?}");
    assert_eq!(t.pool().provisioning.failures, 0, "accepted is not failed");
    let stored = desktops(&t.store, "vdi-");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].first_build.as_deref(), Some(t.pool.id.as_str()));

    // The inventory sees the build in ERROR: a failure, and the machine goes.
    let refreshed = t.refresh().await;
    assert_eq!(
        refreshed.failed_builds,
        [format!("the build of vdi-001 ended in ERROR: {NO_HOST}")],
        "{refreshed:?}"
    );
    assert!(t.fake.servers().is_empty(), "the failed machine is deleted");
    assert!(desktops(&t.store, "vdi-").is_empty(), "and its desktop");
    let pool = t.pool().provisioning;
    assert_eq!((pool.failures, pool.enabled), (1, true));
    let audit = t.audit("desktop.build_failed");
    assert_eq!(audit.len(), 1);
    assert!(
        audit[0].ok && audit[0].detail.contains(NO_HOST),
        "{audit:?}"
    );
    assert!(audit[0].detail.contains("was deleted"), "{audit:?}");

    // Counted once: another refresh changes nothing.
    assert!(t.refresh().await.failed_builds.is_empty());
    assert_eq!(t.pool().provisioning.failures, 1);

    // The second failed build reaches the limit: provisioning turns itself off.
    let again = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(
        again.created,
        ["vdi-001"],
        "the name is free again: {again:?}"
    );
    assert_eq!(t.refresh().await.failed_builds.len(), 1);
    let off = t.pool().provisioning;
    assert!(!off.enabled, "{off:?}");
    assert!(
        off.disabled_reason
            .as_deref()
            .is_some_and(|r| r.contains(NO_HOST)),
        "{off:?}"
    );
    assert_eq!(t.alerts().len(), 1);

    // Fixed in the cloud and turned on again: a good build resets the count.
    t.fake.set_build(Build::Active);
    t.turn_on();
    let good = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(good.created, ["vdi-001"], "{good:?}");
    let refreshed = t.refresh().await;
    assert!(refreshed.failed_builds.is_empty(), "{refreshed:?}");
    let built = desktops(&t.store, "vdi-");
    assert_eq!(built.len(), 1);
    assert_eq!(built[0].power_state, PowerState::Running);
    assert_eq!(built[0].first_build, None, "the first build is over");
    let on = t.pool().provisioning;
    assert_eq!(on.failures, 0);
    assert_eq!(on.last_result, "vdi-001 is built");
}

#[tokio::test]
async fn a_build_still_going_after_the_timeout_is_a_failure_and_its_machine_deleted() {
    let t = Setup::new(3);
    t.fake.set_build(Build::Stuck);
    let created = t.centers.provision_check(&t.pool.id).await.expect("check");
    assert_eq!(created.created, ["vdi-001"]);

    // Building for a while is no failure.
    t.advance(BUILD_TIMEOUT - TimeDelta::minutes(1));
    let refreshed = t.refresh().await;
    assert!(refreshed.failed_builds.is_empty(), "{refreshed:?}");
    let stored = desktops(&t.store, "vdi-");
    assert_eq!(stored[0].power_state, PowerState::Building);
    assert!(stored[0].first_build.is_some());

    t.advance(TimeDelta::minutes(1));
    let refreshed = t.refresh().await;
    assert_eq!(
        refreshed.failed_builds,
        ["vdi-001 was still building 30 minutes after it was asked for"],
        "{refreshed:?}"
    );
    assert!(t.fake.servers().is_empty());
    assert!(desktops(&t.store, "vdi-").is_empty());
    assert_eq!(t.pool().provisioning.failures, 1);
}

#[tokio::test]
async fn a_failed_machine_the_cloud_will_not_delete_stays_in_error_and_is_counted_once() {
    let t = Setup::new(3);
    t.fake.set_build(Build::Error(NO_HOST));
    t.centers.provision_check(&t.pool.id).await.expect("check");
    t.fake.fail(
        "DELETE /compute/v2.1/servers/",
        1,
        Failure::Status(500, "computeFault", "Unexpected API Error.".into()),
    );
    let refreshed = t.refresh().await;
    assert_eq!(refreshed.failed_builds.len(), 1);
    assert!(
        refreshed
            .warnings
            .iter()
            .any(|w| w.starts_with("the failed machine vdi-001 was not deleted")),
        "{refreshed:?}"
    );
    let stored = desktops(&t.store, "vdi-");
    assert_eq!(stored.len(), 1, "the desktop stays for an administrator");
    assert_eq!(stored[0].power_state, PowerState::Error);
    assert_eq!(stored[0].first_build, None);
    let audit = t.audit("desktop.build_failed");
    assert!(audit.len() == 1 && !audit[0].ok, "{audit:?}");

    assert!(t.refresh().await.failed_builds.is_empty());
    assert_eq!(t.pool().provisioning.failures, 1, "counted once");
}

#[tokio::test]
async fn an_inventory_that_fails_part_way_keeps_the_last_desktops_and_names_the_error() {
    let t = Setup::new(3);
    t.centers.provision_check(&t.pool.id).await.expect("check");
    let before = t.refresh().await;
    assert_eq!(before.servers, 1);
    let kept = desktops(&t.store, "vdi-");
    assert_eq!(kept.len(), 1);

    // The server listing fails after Keystone and the catalog answered.
    t.fake.fail(
        "GET /compute/v2.1/servers/detail",
        1,
        Failure::Status(500, "computeFault", "Unexpected API Error.".into()),
    );
    match t.centers.refresh("fake").await {
        Err(CenterError::Cloud(e)) => assert!(e.to_string().contains("HTTP 500"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(desktops(&t.store, "vdi-"), kept, "the last inventory stays");
    let center: Center = t.store.get("fake").expect("read").expect("center");
    let error = center.last_error.clone().expect("the center is failing");
    assert!(error.contains("HTTP 500"), "{error}");

    // The next refresh works and clears the error.
    t.refresh().await;
    let center: Center = t.store.get("fake").expect("read").expect("center");
    assert_eq!(center.last_error, None);
}
