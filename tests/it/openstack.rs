//! The OpenStack client against a real OpenStack: the lab of `up.sh` (Keystone, Nova with the
//! fake virt driver, Glance, Neutron, Placement on 127.0.0.1; see the lab's README). The
//! fixture starts it once per test binary (idempotent: quick when it is already up) and fails
//! the tests when it cannot. Where the lab cannot go (pagination, token expiry, TLS, a
//! missing service), `openstack_fake` stands in.
//!
//! Servers made here are named `gh-test-<random>-…` and deleted at the end, even when a test
//! fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gatehouse::model::center::Center;
use gatehouse::model::desktop::PowerState;
use gatehouse::openstack::{
    Cloud, Error, NewServer, PowerAction, Server, Timeouts, test_connection, test_connection_with,
};

use crate::common::install_crypto;

/// Where the lab keeps its state (venv, databases, logs); `GATEHOUSE_OS_LAB` overrides.
const LAB_DIR: &str = "/tmp/gatehouse-oslab";
/// The lab's bring-up script; `GATEHOUSE_OS_LAB_UP` overrides.
const LAB_UP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openstack/up.sh");
const KEYSTONE: &str = "http://127.0.0.1:5000/v3";

/// Runs the lab's `up.sh` once for the whole test binary; panics with its output's end when it
/// fails.
pub(crate) fn lab() -> Center {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let script = std::env::var("GATEHOUSE_OS_LAB_UP").unwrap_or_else(|_| LAB_UP.to_string());
        let dir = std::env::var("GATEHOUSE_OS_LAB").unwrap_or_else(|_| LAB_DIR.to_string());
        let out = Command::new(PathBuf::from(&script))
            .env("OS_LAB", &dir)
            .output()
            .map_err(|e| format!("{script} cannot run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            Err(format!(
                "{script} failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    });
    if let Err(e) = up {
        panic!("the OpenStack lab did not start: {e}");
    }
    install_crypto();
    center()
}

/// Held by each test that builds servers in the lab, so that one builds at a time: the lab's
/// Nova keeps its state in SQLite and, on two busy cores, fails builds and deletes ("database
/// is locked") when several tests build at once. Taken first, so that it is given back last,
/// after the test's own clean-up.
pub(crate) async fn lab_builds() -> tokio::sync::MutexGuard<'static, ()> {
    static BUILDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    BUILDS.lock().await
}

/// vdi-user of domain vdi, in vdi-project of domain vdi.
fn center() -> Center {
    crate::fixture::center("lab", "Lab cloud", KEYSTONE)
}

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "gh-test-{}-{prefix}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deletes what a test made when it ends, passed or not (from a thread of its own: `Drop`
/// cannot wait for the test's runtime).
pub(crate) struct Cleanup {
    center: Center,
    pub(crate) servers: Vec<String>,
    networks: Vec<String>,
}

impl Cleanup {
    pub(crate) fn new(center: &Center) -> Self {
        Cleanup {
            center: center.clone(),
            servers: Vec::new(),
            networks: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.servers.is_empty() && self.networks.is_empty() {
            return;
        }
        let center = self.center.clone();
        let servers = std::mem::take(&mut self.servers);
        let networks = std::mem::take(&mut self.networks);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let cloud = Cloud::new(&center).expect("cloud");
                for id in servers {
                    if let Err(e) = cloud.delete_server(&id).await {
                        eprintln!("cleanup: server {id} not deleted: {e}");
                    }
                }
                for id in networks {
                    if let Err(e) = raw::delete_network(&center, &id).await {
                        eprintln!("cleanup: network {id} not deleted: {e}");
                    }
                }
            });
        });
        let _ = done.join();
    }
}

/// Calls the lab outside the client under test, to set up what the client only reads.
mod raw {
    use gatehouse::model::center::Center;
    use serde_json::{Value, json};

    async fn token(center: &Center) -> Result<String, String> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": center.username, "domain": {"name": center.user_domain},
                "password": center.password}}},
            "scope": {"project": {"name": center.project, "domain": {"name": center.project_domain}}}
        }});
        let resp = reqwest::Client::new()
            .post(format!("{}/auth/tokens", super::KEYSTONE))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("no token: HTTP {}", resp.status()))
    }

    pub async fn create_network(center: &Center, name: &str) -> Result<String, String> {
        let resp = reqwest::Client::new()
            .post("http://127.0.0.1:9696/v2.0/networks")
            .header("X-Auth-Token", token(center).await?)
            .json(&json!({"network": {"name": name}}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        body["network"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no network made: {body}"))
    }

    pub async fn delete_network(center: &Center, id: &str) -> Result<(), String> {
        reqwest::Client::new()
            .delete(format!("http://127.0.0.1:9696/v2.0/networks/{id}"))
            .header("X-Auth-Token", token(center).await?)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Sends a request to the lab, and again when its Nova answers with a transient error (HTTP
/// 5xx: its SQLite says "database is locked" now and then on two busy cores), as an
/// administrator would: three times at most, a second apart.
pub(crate) async fn lab_call<T, Fut>(what: &str, call: impl Fn() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    for attempt in 1..=3 {
        match call().await {
            Ok(v) => return v,
            Err(e) if e.is_transient() && attempt < 3 => {
                eprintln!("{what}: {e}; sending it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    unreachable!("the loop returns or fails")
}

/// Reads the server until `done` says so; fails at the deadline or when it goes to ERROR.
pub(crate) async fn wait_for(
    cloud: &Cloud,
    id: &str,
    what: &str,
    done: impl Fn(Option<&Server>) -> bool,
) -> Option<Server> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let server = lab_call("read the server", || cloud.server(id)).await;
        if done(server.as_ref()) {
            return server;
        }
        if let Some(s) = &server {
            assert_ne!(
                s.status, "ERROR",
                "{what}: the server failed: {:?}",
                s.fault
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within 120 s; last seen {server:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the server and waits until it is ACTIVE. The lab's Nova (SQLite, two busy cores)
/// now and then fails a build, leaving the server in ERROR or in BUILD for good (see the
/// lab's README, "SQLite and Nova"): such a server is deleted and the build tried once more.
pub(crate) async fn create_active(cloud: &Cloud, new: &NewServer, cleanup: &mut Cleanup) -> Server {
    for attempt in 1..=2 {
        let id = lab_call("create the server", || cloud.create_server(new)).await;
        cleanup.servers.push(id.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = loop {
            let server = lab_call("read the server", || cloud.server(&id)).await;
            match server {
                Some(s) if s.status == "ACTIVE" && s.task_state.is_none() => return s,
                Some(s) if s.status == "ERROR" => break Some(s),
                other if Instant::now() > deadline => break other,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        assert!(
            attempt < 2,
            "the server did not become ACTIVE twice; last seen {last:?}"
        );
        eprintln!("the lab failed a build ({last:?}); deleting it and trying once more");
        lab_call("delete the failed server", || cloud.delete_server(&id)).await;
    }
    unreachable!("the loop returns or fails")
}

/// Deletes the server and waits until Nova no longer knows it. The lab's Nova now and then
/// fails a delete under load (the server goes to ERROR with a RemoteError from the conductor's
/// SQLite): the delete is then sent once more, as an administrator would.
pub(crate) async fn delete_until_gone(cloud: &Cloud, id: &str) {
    for attempt in 1..=2 {
        lab_call("delete the server", || cloud.delete_server(id)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = loop {
            match lab_call("read the server", || cloud.server(id)).await {
                None => return,
                // Failed (a server in ERROR before the delete stays so while it is deleted).
                Some(s) if s.status == "ERROR" && s.task_state.is_none() => break Some(s),
                other if Instant::now() > deadline => break other,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        assert!(
            attempt < 2,
            "the server was not deleted twice; last seen {last:?}"
        );
        eprintln!("the lab failed a delete ({last:?}); deleting once more");
    }
}

/// Sends a power action. The lab's Nova, on two busy cores, may still be finishing the last
/// action's bookkeeping and answer 409 ("in task_state …") although the server reads as
/// settled, or answer 500 (its SQLite is locked): the action is sent again, as an
/// administrator would, up to three times.
pub(crate) async fn power_settled(cloud: &Cloud, id: &str, action: PowerAction) {
    for attempt in 1..=3 {
        match cloud.power(id, action).await {
            Ok(()) => return,
            Err(Error::Cloud {
                status: 409,
                message,
                ..
            }) if attempt < 3 => {
                eprintln!("{action:?} refused for now ({message}); sending it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) if e.is_transient() && attempt < 3 => {
                eprintln!("{action:?}: {e}; sending it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{action:?}: {e}"),
        }
    }
}

/// Settled in `status`: no task under way.
pub(crate) fn settled(status: &'static str) -> impl Fn(Option<&Server>) -> bool {
    move |s| s.is_some_and(|s| s.status == status && s.task_state.is_none())
}

#[tokio::test]
async fn lab_login_catalog_and_inventory() {
    let center = lab();
    let mut cleanup = Cleanup::new(&center);
    let network_name = unique("net");
    let network = raw::create_network(&center, &network_name)
        .await
        .expect("a network is made for the listing");
    cleanup.networks.push(network.clone());

    let cloud = Cloud::new(&center).expect("cloud");
    let token = cloud
        .login()
        .await
        .expect("vdi-user logs in to vdi-project");
    assert!(!token.project_id.is_empty());
    assert!(token.expires_at > chrono::Utc::now());
    let endpoints = &token.endpoints;
    assert_eq!(endpoints.compute, "http://127.0.0.1:8774/v2.1");
    assert_eq!(endpoints.image, "http://127.0.0.1:9292");
    assert_eq!(endpoints.network, "http://127.0.0.1:9696");
    assert_eq!(endpoints.volume, None, "the lab runs no Cinder");

    let inventory = cloud.inventory().await.expect("inventory");
    let flavors: Vec<&str> = inventory.flavors.iter().map(|f| f.name.as_str()).collect();
    for name in ["m1.tiny", "m1.small", "m1.medium", "vdi.standard"] {
        assert!(flavors.contains(&name), "{name} in {flavors:?}");
    }
    let tiny = inventory
        .flavors
        .iter()
        .find(|f| f.name == "m1.tiny")
        .expect("m1.tiny");
    assert_eq!((tiny.vcpus, tiny.ram_mb, tiny.disk_gb), (1, 512, 1));
    let cirros = inventory
        .images
        .iter()
        .find(|i| i.name == "fake-cirros")
        .expect("the fake-cirros image");
    assert_eq!(cirros.status, "active");
    assert_eq!(cirros.visibility, "public");
    assert!(
        inventory
            .zones
            .iter()
            .any(|z| z.name == "nova" && z.available),
        "{:?}",
        inventory.zones
    );
    assert!(
        inventory
            .security_groups
            .iter()
            .any(|g| g.name == "default"),
        "{:?}",
        inventory.security_groups
    );
    let net = inventory
        .networks
        .iter()
        .find(|n| n.id == network)
        .expect("the project's network is listed");
    assert_eq!(net.name, network_name);
    assert!(inventory.volume_types.is_empty());
    assert!(inventory.warnings.is_empty(), "{:?}", inventory.warnings);

    let summary = test_connection(&center).await.expect("the test passes");
    assert_eq!(summary.project_id, token.project_id);
    assert!(summary.flavors >= 4);
    assert!(summary.images >= 1);
    assert_eq!(summary.volume_url, None);
    assert!(
        summary.warnings.iter().any(|w| w.contains("block storage")),
        "{:?}",
        summary.warnings
    );
    assert!(
        summary.warnings.iter().any(|w| w.contains("plain http")),
        "{:?}",
        summary.warnings
    );
}

#[tokio::test]
async fn lab_server_create_stop_start_reboot_suspend_delete() {
    let _builds = lab_builds().await;
    let center = lab();
    let mut cleanup = Cleanup::new(&center);
    let cloud = Cloud::new(&center).expect("cloud");
    let flavors = cloud.flavors().await.expect("flavors");
    let tiny = flavors
        .iter()
        .find(|f| f.name == "m1.tiny")
        .expect("m1.tiny");
    let images = cloud.images().await.expect("images");
    let cirros = images
        .iter()
        .find(|i| i.name == "fake-cirros")
        .expect("fake-cirros");

    let name = unique("pc");
    let mut new = NewServer::new(&name, &tiny.id, &cirros.id);
    new.availability_zone = Some("nova".into());
    new.metadata.insert("gatehouse-pool".into(), "lab".into());
    let server = create_active(&cloud, &new, &mut cleanup).await;
    let id = server.id.clone();
    assert_eq!(server.name, name);
    assert_eq!(server.power_state, PowerState::Running);
    assert_eq!(server.availability_zone.as_deref(), Some("nova"));
    assert_eq!(server.image_id.as_deref(), Some(cirros.id.as_str()));
    assert_eq!(server.flavor_name.as_deref(), Some("m1.tiny"));
    assert_eq!(server.metadata["gatehouse-pool"], "lab");
    assert!(server.addresses.is_empty(), "created without a network");

    // The listing has it, with its flavor id filled in from the flavor list.
    let inventory = cloud.inventory().await.expect("inventory");
    let listed = inventory
        .servers
        .iter()
        .find(|s| s.id == id)
        .expect("listed");
    assert_eq!(listed.flavor_id.as_deref(), Some(tiny.id.as_str()));
    let fields = inventory.desktop_fields(listed);
    assert_eq!(fields.image, "fake-cirros");
    assert_eq!(fields.flavor, "m1.tiny");
    assert_eq!(fields.address, None);

    lab_call("stop", || cloud.power(&id, PowerAction::Stop)).await;
    let s = wait_for(&cloud, &id, "SHUTOFF after stop", settled("SHUTOFF")).await;
    assert_eq!(s.expect("exists").power_state, PowerState::Stopped);

    // Stopping a stopped server: Nova's own refusal comes through.
    match cloud.power(&id, PowerAction::Stop).await {
        Err(Error::Cloud {
            status: 409,
            message,
            ..
        }) => assert!(message.contains("vm_state stopped"), "{message}"),
        other => panic!("expected Nova's conflict, got {other:?}"),
    }

    lab_call("start", || cloud.power(&id, PowerAction::Start)).await;
    let s = wait_for(&cloud, &id, "ACTIVE after start", settled("ACTIVE")).await;
    assert_eq!(s.expect("exists").power_state, PowerState::Running);

    power_settled(&cloud, &id, PowerAction::Reboot).await;
    wait_for(&cloud, &id, "ACTIVE after reboot", settled("ACTIVE")).await;
    power_settled(&cloud, &id, PowerAction::HardReboot).await;
    wait_for(&cloud, &id, "ACTIVE after hard reboot", settled("ACTIVE")).await;

    power_settled(&cloud, &id, PowerAction::Suspend).await;
    let s = wait_for(&cloud, &id, "SUSPENDED", settled("SUSPENDED")).await;
    assert_eq!(s.expect("exists").power_state, PowerState::Suspended);
    power_settled(&cloud, &id, PowerAction::Resume).await;
    wait_for(&cloud, &id, "ACTIVE after resume", settled("ACTIVE")).await;

    // Nova logged every action, in order (newest first).
    let actions: Vec<String> = cloud
        .instance_actions(&id)
        .await
        .expect("actions")
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(
        actions,
        [
            "resume", "suspend", "reboot", "reboot", "start", "stop", "create"
        ],
        "the failed second stop is refused before it is logged"
    );

    delete_until_gone(&cloud, &id).await;
    cloud
        .delete_server(&id)
        .await
        .expect("deleting a deleted server is done already");
    cleanup.servers.clear();
}

#[tokio::test]
async fn lab_wrong_password_is_a_credentials_error() {
    let mut center = lab();
    center.password = "not-the-password".into();
    let err = test_connection(&center).await.expect_err("refused");
    assert_eq!(err.code(), "credentials", "{err}");
    match &err {
        Error::Credentials { user, domain, .. } => {
            assert_eq!((user.as_str(), domain.as_str()), ("vdi-user", "vdi"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().contains("not-the-password"));

    // A user in the wrong domain is the same refusal.
    let mut center = lab();
    center.user_domain = "Default".into();
    let err = test_connection(&center).await.expect_err("refused");
    assert_eq!(err.code(), "credentials", "{err}");
}

#[tokio::test]
async fn lab_wrong_project_or_domain_is_a_scope_error_listing_the_right_ones() {
    for (project, domain) in [
        ("no-such-project", "vdi"),
        ("vdi-project", "Default"),
        ("admin", "Default"),
    ] {
        let mut center = lab();
        center.project = project.into();
        center.project_domain = domain.into();
        let err = test_connection(&center).await.expect_err("refused");
        match &err {
            Error::Scope {
                project: p,
                domain: d,
                available,
                ..
            } => {
                assert_eq!((p.as_str(), d.as_str()), (project, domain));
                assert_eq!(available, &["vdi-project"], "{err}");
            }
            other => panic!("{project}@{domain}: expected a scope error, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains("the user can work in: vdi-project"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn bad_urls_and_unreachable_ports_are_named() {
    let center = lab();

    let mut c = center.clone();
    c.auth_url = "ftp://127.0.0.1/v3".into();
    let err = test_connection(&c).await.expect_err("refused");
    assert_eq!(err.code(), "bad_url", "{err}");
    assert!(err.to_string().contains("https://"), "{err}");

    // Nova's port is not Keystone: it answers, but not to a login.
    let mut c = center.clone();
    c.auth_url = "http://127.0.0.1:8774".into();
    let err = test_connection(&c).await.expect_err("refused");
    assert_eq!(err.code(), "bad_url", "{err}");
    assert!(
        err.to_string().contains("it is not Keystone's v3 address"),
        "{err}"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut c = center.clone();
    c.auth_url = format!("http://127.0.0.1:{port}/v3");
    let err = test_connection(&c).await.expect_err("refused");
    match &err {
        Error::Unreachable { url, detail, .. } => {
            assert_eq!(url, &format!("http://127.0.0.1:{port}/v3/auth/tokens"));
            assert!(detail.contains("refused"), "{detail}");
        }
        other => panic!("{other:?}"),
    }

    let mut c = center.clone();
    c.auth_url = "http://no-such-host.invalid:5000/v3".into();
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        request: Duration::from_secs(20),
    };
    let err = test_connection_with(&c, timeouts)
        .await
        .expect_err("refused");
    match &err {
        Error::Unreachable { detail, .. } => {
            assert!(detail.contains("does not resolve"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}
