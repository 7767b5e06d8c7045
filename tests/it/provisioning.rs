//! Pool provisioning against the real OpenStack lab: a check creates machines up to the
//! thresholds, named in sequence, and never past `stop_at`, even under 50 concurrent
//! sign-ins; a cloud that refuses turns provisioning off after `failure_limit` failures, with
//! its message on the pool, an audit line and an alert; turning it on again works; a licence
//! without provisioning refuses enabling it.
//!
//! Machines are named `gh-test-<random>-…` and deleted at the end, passed or not. The lab's
//! Nova is slow and may fail builds under load: provisioning promises the desktop with its
//! server id, so that is what is asserted, never ACTIVE.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Licensing, Server};
use crate::openstack::{lab, lab_builds, unique};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};
use gatehouse::broker::Broker;
use gatehouse::centers::Centers;
use gatehouse::centers::provision::Provisioned;
use gatehouse::model::AuditEntry;
use gatehouse::model::Protocol;
use gatehouse::model::alert::Alert;
use gatehouse::model::center::Center;
use gatehouse::model::desktop::{Desktop, DesktopInput, PowerState};
use gatehouse::model::directory::Security;
use gatehouse::model::location::ClientFacts;
use gatehouse::model::pool::{Attribute, Condition, Pool, Rule};
use gatehouse::model::provisioning::Provisioning;
use gatehouse::openstack::Cloud;
use gatehouse::store::Store;

/// Deletes every lab server whose name starts with the prefix when the test ends.
struct ByPrefix {
    center: Center,
    prefix: String,
}

impl Drop for ByPrefix {
    fn drop(&mut self) {
        let (center, prefix) = (self.center.clone(), self.prefix.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let cloud = Cloud::new(&center).expect("cloud");
                match cloud.servers().await {
                    Ok(servers) => {
                        for s in servers.iter().filter(|s| s.name.starts_with(&prefix)) {
                            if let Err(e) = cloud.delete_server(&s.id).await {
                                eprintln!("cleanup: server {} not deleted: {e}", s.name);
                            }
                        }
                    }
                    Err(e) => eprintln!("cleanup: servers not listed: {e}"),
                }
            });
        });
        let _ = done.join();
    }
}

/// The lab's m1.tiny flavor id and fake-cirros image id.
async fn flavor_and_image(center: &Center) -> (String, String) {
    let cloud = Cloud::new(center).expect("cloud");
    let flavor = cloud
        .flavors()
        .await
        .expect("flavors")
        .into_iter()
        .find(|f| f.name == "m1.tiny")
        .expect("m1.tiny");
    let image = cloud
        .images()
        .await
        .expect("images")
        .into_iter()
        .find(|i| i.name == "fake-cirros")
        .expect("fake-cirros");
    (flavor.id, image.id)
}

/// A pool of the machines named `<prefix>-…`, provisioning them in the lab.
pub(crate) fn pool(prefix: &str, flavor: &str, image: &str) -> Pool {
    let mut pool = Pool::new(format!("Provisioned {prefix}"));
    pool.rules = vec![Rule::new(
        Attribute::Name,
        Condition::BeginsWith,
        format!("{prefix}-"),
    )];
    pool.provisioning = Provisioning {
        enabled: true,
        start_below: 2,
        stop_at: 4,
        center: "lab".into(),
        name: format!("{prefix}-{{SEQUENCE}}"),
        sequence_start: 1,
        sequence_width: 3,
        availability_zone: "nova".into(),
        flavor: flavor.into(),
        image: image.into(),
        ..Provisioning::default()
    };
    pool
}

pub(crate) fn broker(store: &Store) -> Arc<Broker> {
    Arc::new(crate::fixture::broker(store))
}

/// The stored desktops whose name starts with `prefix`, by name.
pub(crate) fn desktops(store: &Store, prefix: &str) -> Vec<Desktop> {
    let mut out: Vec<Desktop> = store
        .list::<Desktop>()
        .expect("desktops")
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.name.starts_with(prefix))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn names(desktops: &[Desktop]) -> Vec<String> {
    desktops.iter().map(|d| d.name.clone()).collect()
}

fn assign_all(store: &Store, prefix: &str) {
    for mut d in desktops(store, prefix) {
        d.assigned_user = Some(format!("slapd/{}", d.name));
        store.put(&d.id, &d).expect("assign");
    }
}

/// Runs checks until one was not turned away by a run already going (so every run started
/// before it has ended), waiting for each such run's end.
async fn settle(centers: &Centers, pool: &str) -> Provisioned {
    loop {
        centers.provisioning_settled(pool).await;
        let p = centers.provision_check(pool).await.expect("check");
        if !p.busy {
            return p;
        }
    }
}

/// What each lab provisioning test starts from: the lab's build turn, its machines named
/// `<prefix>-…` (deleted when it ends, before the turn passes on), the lab's m1.tiny and
/// fake-cirros ids, and a store holding the lab center.
struct LabRun {
    _cleanup: ByPrefix,
    _builds: tokio::sync::MutexGuard<'static, ()>,
    center: Center,
    prefix: String,
    flavor: String,
    image: String,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn lab_run(name: &str) -> LabRun {
    let builds = lab_builds().await;
    let center = lab();
    let prefix = unique(name);
    let cleanup = ByPrefix {
        center: center.clone(),
        prefix: prefix.clone(),
    };
    let (flavor, image) = flavor_and_image(&center).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    store.put(&center.id, &center).expect("center");
    LabRun {
        _cleanup: cleanup,
        _builds: builds,
        center,
        prefix,
        flavor,
        image,
        store,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_check_creates_up_to_the_thresholds_in_sequence_and_never_past_stop_at() {
    let t = lab_run("prov").await;
    let LabRun {
        prefix,
        flavor,
        image,
        store,
        ..
    } = &t;
    let pool = pool(prefix, flavor, image);
    assert!(pool.validate(&[]).is_empty(), "{:?}", pool.validate(&[]));
    store.put(&pool.id, &pool).expect("pool");
    let centers = Arc::new(Centers::new(store.clone(), broker(store)));

    // Empty pool: 0 unassigned < 2, so two machines, in order.
    let first = centers.provision_check(&pool.id).await.expect("check");
    assert_eq!(
        first.created,
        [format!("{prefix}-001"), format!("{prefix}-002")],
        "{first:?}"
    );
    let made = desktops(store, prefix);
    assert_eq!(names(&made), first.created);
    for d in &made {
        assert!(!d.server_id.is_empty(), "{d:?}");
        assert!(d.deletable && d.center == "lab", "{d:?}");
        assert_eq!(d.power_state, PowerState::Building);
    }
    // Two unassigned: nothing to do.
    let again = centers.provision_check(&pool.id).await.expect("check");
    assert!(again.created.is_empty(), "{again:?}");

    // Both taken: two more, up to stop_at and not one past it.
    assign_all(store, prefix);
    let more = centers.provision_check(&pool.id).await.expect("check");
    assert_eq!(
        more.created,
        [format!("{prefix}-003"), format!("{prefix}-004")],
        "{more:?}"
    );
    assign_all(store, prefix);
    let full = centers.provision_check(&pool.id).await.expect("check");
    assert!(full.created.is_empty(), "{full:?}");
    assert_eq!(desktops(store, prefix).len(), 4);

    // The inventory takes the machines over and keeps them (assigned, same desktops). The
    // lab's Nova may fail a build under load: that machine is then a provisioning failure,
    // counted once, and its desktop goes when the lab lets it be deleted.
    let refreshed = centers.refresh("lab").await.expect("refresh");
    let after = desktops(store, prefix);
    let stored: Pool = store.get(&pool.id).expect("read").expect("pool");
    assert!(stored.provisioning.last_run.is_some());
    let failed = refreshed.failed_builds.len();
    assert_eq!(
        stored.provisioning.failures as usize, failed,
        "{refreshed:?}"
    );
    let all: Vec<String> = (1..=4).map(|n| format!("{prefix}-{n:03}")).collect();
    if failed == 0 {
        assert_eq!(names(&after), all);
    } else {
        eprintln!(
            "the lab failed {failed} build(s): {:?}",
            refreshed.failed_builds
        );
        assert!(names(&after).iter().all(|n| all.contains(n)), "{after:?}");
        assert!(after.len() >= 4 - failed, "{after:?}");
    }
    assert!(after.iter().all(|d| d.assigned_user.is_some()));
}

#[tokio::test]
async fn fifty_concurrent_sign_ins_never_overshoot_stop_at_nor_share_a_desktop() {
    let t = lab_run("rush").await;
    let LabRun {
        center,
        prefix,
        flavor,
        image,
        store,
        ..
    } = &t;
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 50,
        ..SlapdOptions::default()
    });
    // The Lab policy and assignments, on a pool of this test's machines: two ready desktops
    // (so 2 unassigned: no provisioning yet), growing to 4.
    let seeded = crate::lab::seed(store, "slapd", 0, &[("generated", "user")]);
    let mut pool = pool(prefix, flavor, image);
    pool.id = seeded.id.clone();
    store.put(&pool.id, &pool).expect("pool");
    for i in 1..=2 {
        let d = Desktop::from_input(
            DesktopInput {
                name: format!("{prefix}-ready-{i}"),
                display_name: String::new(),
                address: format!("10.9.0.{i}"),
                port: None,
                protocol: Protocol::Rdp,
                os: String::new(),
            },
            chrono::Utc::now(),
        );
        store.put(&d.id, &d).expect("desktop");
    }
    let broker = broker(store);
    let server = slapd.auth_server(Security::Ldaps);
    let directory: Arc<dyn gatehouse::auth::Directory> =
        Arc::new(gatehouse::auth::LdapDirectory::new(server.clone()));
    broker.set_directories(vec![(server, directory)]);
    let centers = Arc::new(Centers::new(store.clone(), broker.clone()));
    centers.watch_assignments();

    let address: IpAddr = "192.0.2.10".parse().expect("ip");
    let mut tasks = Vec::new();
    for i in 1..=50 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("user{i:05}");
            let facts = ClientFacts::from_address(address);
            let decision = broker
                .sign_in(&user, GENERATED_PASSWORD, None, &facts)
                .await
                .expect("signed in");
            let offer = broker.offer(&decision).await.expect("offer");
            let first = offer.desktops.first()?;
            match broker.connect(&decision, &first.id, address).await {
                Ok((desktop, _)) => Some((user, desktop.id)),
                Err(_) => None,
            }
        }));
    }
    let mut given: Vec<(String, String)> = Vec::new();
    for t in tasks {
        if let Some(g) = t.await.expect("task") {
            given.push(g);
        }
    }
    settle(&centers, &pool.id).await;

    // Only the two ready desktops can be connected to (new machines have no address yet),
    // each to one user.
    let ids: HashSet<&str> = given.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(ids.len(), given.len(), "a desktop given twice: {given:?}");
    assert_eq!(given.len(), 2, "{given:?}");
    // Both taken: provisioning filled the pool up to stop_at, and never past it.
    let all = desktops(store, prefix);
    assert_eq!(all.len(), 4, "{:?}", names(&all));
    let made: Vec<&Desktop> = all.iter().filter(|d| !d.server_id.is_empty()).collect();
    assert_eq!(
        made.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        [format!("{prefix}-001"), format!("{prefix}-002")]
    );
    let cloud = Cloud::new(center).expect("cloud");
    let servers = cloud.servers().await.expect("servers");
    assert_eq!(
        servers
            .iter()
            .filter(|s| s.name.starts_with(prefix.as_str()))
            .count(),
        2,
        "the cloud holds exactly the machines provisioned"
    );
}

#[tokio::test]
async fn repeated_refusals_turn_provisioning_off_with_the_cloud_s_message_until_turned_on() {
    let t = lab_run("fail").await;
    let LabRun {
        prefix,
        flavor,
        image,
        store,
        ..
    } = &t;
    let mut pool = pool(prefix, "no-such-flavor", image);
    pool.provisioning.failure_limit = 2;
    pool.provisioning.start_below = 1;
    store.put(&pool.id, &pool).expect("pool");
    let centers = Arc::new(Centers::new(store.clone(), broker(store)));

    let first = centers.provision_check(&pool.id).await.expect("check");
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert!(!first.turned_off);
    let read = |store: &Store| -> Pool { store.get(&pool.id).expect("read").expect("pool") };
    assert_eq!(read(store).provisioning.failures, 1);
    assert!(read(store).provisioning.enabled);
    assert!(desktops(store, prefix).is_empty(), "the placeholder goes");

    let second = centers.provision_check(&pool.id).await.expect("check");
    assert!(second.turned_off, "{second:?}");
    let off = read(store).provisioning;
    assert!(!off.enabled);
    let reason = off.disabled_reason.clone().expect("the cloud's message");
    assert!(reason.contains("no-such-flavor"), "{reason}");
    assert_eq!(reason, second.failed[0]);
    let audit: Vec<AuditEntry> = store.values::<AuditEntry>().expect("audit");
    let line = audit
        .iter()
        .find(|a| a.action == "pool.provisioning_disabled")
        .expect("an audit line");
    assert!(line.detail.contains(&reason) && !line.ok, "{line:?}");
    let alerts: Vec<Alert> = store.values::<Alert>().expect("alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].subject, pool.id);
    assert!(alerts[0].message.contains(&reason));

    // Off: checks create nothing.
    let idle = centers.provision_check(&pool.id).await.expect("check");
    assert!(
        idle.created.is_empty() && idle.failed.is_empty(),
        "{idle:?}"
    );

    // The administrator fixes the flavor and turns it on again (as a save does).
    let mut fixed = read(store);
    let old = fixed.provisioning.clone();
    fixed.provisioning.flavor = flavor.clone();
    fixed.provisioning.enabled = true;
    fixed.provisioning.keep_status(&old);
    assert_eq!(
        (
            fixed.provisioning.failures,
            &fixed.provisioning.disabled_reason
        ),
        (0, &None)
    );
    store.put(&fixed.id, &fixed).expect("pool");
    let on = centers.provision_check(&pool.id).await.expect("check");
    assert_eq!(on.created, [format!("{prefix}-001")], "{on:?}");
    assert_eq!(desktops(store, prefix).len(), 1);
}

/// A pool whose machines would not belong to it (its rule names RDP machines; its center was
/// switched to VNC after the pool was saved) must not create at all: it would never count
/// them and would create until the cloud's quota runs out.
#[tokio::test]
async fn a_pool_that_would_not_count_its_machines_turns_provisioning_off_before_creating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut center = lab();
    center.protocol = Protocol::Rdp;
    let prefix = unique("proto");
    let mut pool = pool(&prefix, "f", "i");
    pool.rules
        .push(Rule::new(Attribute::Protocol, Condition::Equals, "rdp"));
    assert_eq!(
        pool.provisioned_name_problem(&[], center.protocol),
        None,
        "valid as saved"
    );
    // The center changed since; its address is nobody's, so a create could not even reach a
    // cloud.
    center.protocol = Protocol::Vnc;
    center.auth_url = "http://127.0.0.1:9/v3".into();
    store.put(&center.id, &center).expect("center");
    store.put(&pool.id, &pool).expect("pool");
    let centers = Arc::new(Centers::new(store.clone(), broker(&store)));

    let run = centers.provision_check(&pool.id).await.expect("check");
    assert!(run.turned_off, "{run:?}");
    assert!(run.created.is_empty() && run.failed.is_empty(), "{run:?}");
    assert!(desktops(&store, &prefix).is_empty(), "no placeholder stays");
    let stored: Pool = store.get(&pool.id).expect("read").expect("pool");
    assert!(!stored.provisioning.enabled);
    let reason = stored.provisioning.disabled_reason.expect("why");
    assert!(
        reason.contains(&format!(
            "`{prefix}-001` (vnc) would not belong to this pool"
        )),
        "{reason}"
    );
    let alerts: Vec<Alert> = store.values::<Alert>().expect("alerts");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].message.contains(&reason), "{alerts:?}");
    let again = centers.provision_check(&pool.id).await.expect("check");
    assert!(
        again.created.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );
}

const PASSWORD: &str = "Provisioning-Test-Password-1";

async fn send(server: &Server, method: Method, path: &str, token: &str, body: Value) -> Value {
    let r = common::client()
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    json!({"status": status, "body": body})
}

#[tokio::test]
async fn a_licence_without_provisioning_refuses_enabling_it() {
    let (_dir, data) = common::fresh_data();
    drop(Store::open(&data).expect("a new store"));
    let vendor = Licensing::new();
    let config = common::finish_setup_licensed(&data, PASSWORD, &vendor, &["--no-provisioning"]);
    let server = Server::start(&data, Some(&config));
    let r = common::client()
        .post(format!("{}/api/v1/tokens", server.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .expect("token");
    let token: Value = r.json().await.expect("json");
    let token = token["token"].as_str().expect("token").to_string();

    let center = send(
        &server,
        Method::POST,
        "/api/v1/centers",
        &token,
        json!({"id": "lab", "name": "Lab", "auth_url": "http://127.0.0.1:5000/v3",
            "region": "RegionOne", "project_domain": "vdi", "project": "vdi-project",
            "user_domain": "vdi", "username": "vdi-user", "password": "secret",
            "interface": "public", "ca_pem": null, "insecure": false,
            "refresh_interval_secs": 300}),
    )
    .await;
    assert_eq!(center["status"], 201, "{center}");
    let mut body = serde_json::to_value(pool("gh-licence", "f", "i")).expect("json");
    body.as_object_mut().expect("object").remove("id");
    let refused = send(&server, Method::POST, "/api/v1/pools", &token, body.clone()).await;
    assert_eq!(refused["status"], 400, "{refused}");
    let fields = refused["body"]["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 1, "{refused}");
    assert_eq!(fields[0]["field"], "provisioning.enabled");
    assert!(
        fields[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not allow provisioning")),
        "{refused}"
    );
    // Machines the pool would not count (the center makes RDP ones) are refused by name.
    let mut vnc_only = pool("gh-vnc", "f", "i");
    vnc_only
        .rules
        .push(Rule::new(Attribute::Protocol, Condition::Equals, "vnc"));
    let mut vnc_body = serde_json::to_value(vnc_only).expect("json");
    vnc_body.as_object_mut().expect("object").remove("id");
    let refused = send(&server, Method::POST, "/api/v1/pools", &token, vnc_body).await;
    assert_eq!(refused["status"], 400, "{refused}");
    let fields = refused["body"]["fields"].as_array().expect("fields");
    assert!(
        fields.iter().any(|f| f["field"] == "provisioning.name"
            && f["reason"]
                .as_str()
                .is_some_and(|r| r.contains("`gh-vnc-001` (rdp) would not belong"))),
        "{refused}"
    );
    // Off, the same pool is saved, with its settings kept.
    body["provisioning"]["enabled"] = json!(false);
    let saved = send(&server, Method::POST, "/api/v1/pools", &token, body).await;
    assert_eq!(saved["status"], 201, "{saved}");
    assert_eq!(saved["body"]["provisioning"]["stop_at"], 4);
    assert_eq!(saved["body"]["provisioning"]["enabled"], false);
}

#[tokio::test]
async fn an_alert_shows_on_the_dashboard_until_an_administrator_acknowledges_it() {
    let (_dir, data) = common::fresh_data();
    common::finish_setup(&data, PASSWORD);
    let message = "Provisioning of pool Lab turned itself off: flavor not found";
    {
        let store = Store::open(&data).expect("store");
        let key = store.next_key().expect("key");
        let alert = Alert {
            at: chrono::Utc::now(),
            kind: "provisioning".into(),
            subject: "lab".into(),
            message: message.into(),
            acknowledged: false,
        };
        store.put(&key, &alert).expect("alert");
    }
    let server = Server::start(&data, None);
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    let page = console.get("/admin").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(message), "{}", page.body);
    let at = page
        .body
        .find("/admin/system/alerts/")
        .expect("an acknowledge button");
    let action: String = page.body[at..].chars().take_while(|c| *c != '"').collect();
    // Without the form's CSRF token nothing changes.
    let r = console.post_raw(&action, &[("csrf", "forged")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(console.get("/admin").await.body.contains(message));
    let r = console.post(&action, &[]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = console.get("/admin").await;
    assert!(!page.body.contains(message), "{}", page.body);
    let audit = console.get("/admin/system/audit").await.body;
    assert!(audit.contains("alert.acknowledged"), "{audit}");
}
