//! The broker against a real directory (slapd): sign-in, offer, connect, release, and the race
//! for the last desktops.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use gatehouse::auth::{Directory, LdapDirectory};
use gatehouse::broker::{Broker, BrokerError, HeldDesktops};
use gatehouse::model::Protocol;
use gatehouse::model::desktop::{Desktop, DesktopInput};
use gatehouse::model::directory::Security;
use gatehouse::model::location::ClientFacts;
use gatehouse::model::pool::Pool;
use gatehouse::store::Store;

use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions, password_of};

const CLIENT: &str = "192.0.2.10";

fn facts() -> ClientFacts {
    ClientFacts::from_address(CLIENT.parse().expect("ip"))
}

/// A store with `n` RDP desktops in one pool, a policy offering one desktop from it, and an
/// assignment table giving the `generated` group that policy.
fn seed(store: &Store, server_id: &str, n: usize) -> Pool {
    crate::lab::seed(store, server_id, n, &[("generated", "user")])
}

fn broker(store: &Store, slapd: &Slapd) -> Arc<Broker> {
    let broker = crate::fixture::broker(store);
    let server = slapd.auth_server(Security::Ldaps);
    let directory: Arc<dyn Directory> = Arc::new(LdapDirectory::new(server.clone()));
    broker.set_directories(vec![(server, directory)]);
    Arc::new(broker)
}

#[tokio::test]
async fn a_user_principal_name_login_keeps_its_suffix_through_the_broker() {
    let slapd = Slapd::start();
    slapd.modify_ldif(
        "dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: modify\nadd: objectClass\nobjectClass: extensibleObject\n-\nadd: userPrincipalName\nuserPrincipalName: alice@example.com\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    crate::lab::seed(&store, "slapd", 1, &[("staff", "user")]);
    let broker = crate::fixture::broker(&store);
    let mut server = slapd.auth_server(Security::Ldaps);
    server.login_attribute = "userPrincipalName".into();
    let directory: Arc<dyn Directory> = Arc::new(LdapDirectory::new(server.clone()));
    broker.set_directories(vec![(server, directory)]);

    // `example.com` chooses the server; the directory is asked for all of what was typed.
    let alice = broker
        .sign_in("alice@example.com", &password_of("alice"), None, &facts())
        .await
        .expect("alice signs in with her user principal name");
    assert_eq!(alice.user.username, "alice@example.com");
    assert_eq!(alice.groups, ["admins", "staff"]);
    broker
        .still_valid(&alice.user)
        .await
        .expect("her session is checked under the same name");
    let looked_up = broker
        .look_up("alice@example.com", None, &facts())
        .await
        .expect("test login finds her too");
    assert_eq!(looked_up.user, alice.user);
    // The bare name is no user principal name.
    let bare = broker
        .sign_in("alice", &password_of("alice"), None, &facts())
        .await;
    assert!(matches!(bare, Err(BrokerError::UnknownUser(_))), "{bare:?}");
}

#[tokio::test]
async fn sign_in_offer_connect_and_the_same_desktop_from_another_device() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 3,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    seed(&store, "slapd", 3);
    let broker = broker(&store, &slapd);
    let address: IpAddr = CLIENT.parse().expect("ip");

    let alice = broker
        .sign_in("EXAMPLE\\user00001", GENERATED_PASSWORD, None, &facts())
        .await
        .expect("signed in");
    assert_eq!(alice.user.username, "user00001");
    assert_eq!(alice.policy.id, "lab");
    let offer = broker.offer(&alice).await.expect("offer");
    assert_eq!(offer.desktops.len(), 1);
    assert!(!offer.desktops[0].yours);
    let (desk, params) = broker
        .connect(&alice, &offer.desktops[0].id, address)
        .await
        .expect("connected");
    assert_eq!(desk.name, "lab-000", "by-name order picks the first");
    let file = params.file.expect("an .rdp file");
    assert!(
        file.contains(&format!("full address:s:{}:3389", desk.address)),
        "{file}"
    );
    assert!(
        file.contains("username:s:user00001\r\n"),
        "the login name, not the store key: {file}"
    );
    let plans = params
        .plans
        .as_ref()
        .expect("the plans come with the desktop");
    assert_eq!(
        (plans.power.id.as_str(), plans.release.id.as_str()),
        ("default", "default")
    );
    assert_eq!(plans.release.release_after_logout_minutes, Some(0));

    // From another device, signing in again: the same desktop, offered first and marked yours.
    let again = broker
        .sign_in("user00001@example.com", GENERATED_PASSWORD, None, &facts())
        .await
        .expect("signed in again");
    let offer = broker.offer(&again).await.expect("offer");
    assert!(
        offer.desktops[0].yours && offer.desktops[0].id == desk.id,
        "{offer:?}"
    );
    let (same, _) = broker
        .connect(&again, &desk.id, address)
        .await
        .expect("reconnect");
    assert_eq!(same.id, desk.id);

    // Someone else asking for that very desktop gets another one of the pool.
    let bob = broker
        .sign_in("user00002", GENERATED_PASSWORD, None, &facts())
        .await
        .expect("bob");
    // A desktop offered a moment ago whose machine is now being deleted is not given out,
    // whatever the (stale) membership the broker holds says.
    let bob_offer = broker.offer(&bob).await.expect("offer");
    let offered = bob_offer.desktops[0].id.clone();
    let mut going: Desktop = store.get(&offered).expect("read").expect("desktop");
    going.power_state = gatehouse::model::desktop::PowerState::Deleting;
    store.put(&offered, &going).expect("mark");
    let (given, _) = broker
        .connect(&bob, &offered, address)
        .await
        .expect("another desktop");
    assert_ne!(given.id, offered, "a desktop being deleted was assigned");
    let still: Desktop = store.get(&offered).expect("read").expect("desktop");
    assert_eq!(still.assigned_user, None);
    broker
        .release(&bob.user, &given.id)
        .await
        .expect("released");
    let (bobs, _) = broker
        .connect(&bob, &desk.id, address)
        .await
        .expect("bob connects");
    assert_ne!(bobs.id, desk.id);
    // Bob cannot release Alice's desktop; Alice can, and then it is free again.
    assert!(matches!(
        broker.release(&bob.user, &desk.id).await,
        Err(BrokerError::NotYours)
    ));
    broker
        .release(&alice.user, &desk.id)
        .await
        .expect("released");
    let offer = broker.offer(&alice).await.expect("offer");
    assert!(offer.desktops.iter().all(|d| !d.yours));

    // Wrong and empty passwords.
    assert!(matches!(
        broker.sign_in("user00003", "wrong", None, &facts()).await,
        Err(BrokerError::WrongPassword)
    ));
    assert!(matches!(
        broker.sign_in("user00003", "", None, &facts()).await,
        Err(BrokerError::EmptyPassword)
    ));
    // A desktop outside the user's policy cannot be asked for by id.
    let stray = Desktop::from_input(
        DesktopInput {
            name: "elsewhere".into(),
            display_name: String::new(),
            address: "10.9.9.9".into(),
            port: None,
            protocol: Protocol::Rdp,
            os: String::new(),
        },
        chrono::Utc::now(),
    );
    let other_pool = Pool {
        rules: vec![gatehouse::model::pool::Rule::new(
            gatehouse::model::pool::Attribute::Name,
            gatehouse::model::pool::Condition::Equals,
            "elsewhere",
        )],
        ..Pool::new("Elsewhere")
    };
    store.put(&stray.id, &stray).expect("put");
    store.put(&other_pool.id, &other_pool).expect("put");
    broker.invalidate_membership();
    // The Lab pool has no rules, so it holds every desktop; a policy without that pool is needed.
    let mut narrow = alice.clone();
    narrow.policy.entries[0].pool_id = other_pool.id.clone();
    let desk_id = offer.desktops[0].id.clone();
    assert!(matches!(
        broker.connect(&narrow, &desk_id, address).await,
        Err(BrokerError::NotOffered)
    ));
}

#[tokio::test]
async fn two_hundred_users_race_for_fifty_desktops() {
    const USERS: usize = 200;
    const DESKTOPS: usize = 50;
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: USERS,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    seed(&store, "slapd", DESKTOPS);
    let broker = broker(&store, &slapd);
    let address: IpAddr = CLIENT.parse().expect("ip");

    let tasks: Vec<_> = (1..=USERS)
        .map(|n| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let user = format!("user{n:05}");
                let decision = broker
                    .sign_in(&user, GENERATED_PASSWORD, None, &facts())
                    .await
                    .expect("sign-in");
                let offer = broker.offer(&decision).await.expect("offer");
                let Some(first) = offer.desktops.first() else {
                    return (user, Err(offer.notices.join(" ")));
                };
                match broker.connect(&decision, &first.id, address).await {
                    Ok((desktop, _)) => (user, Ok(desktop.id)),
                    Err(e @ BrokerError::NoDesktopAvailable { .. }) => (user, Err(e.to_string())),
                    Err(e) => panic!("unexpected: {e}"),
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (user, Ok(desktop)) => got.push((user, desktop)),
            (_, Err(message)) => refused.push(message),
        }
    }
    assert_eq!(
        got.len(),
        DESKTOPS,
        "exactly as many users as desktops got one"
    );
    let distinct: HashSet<&String> = got.iter().map(|(_, d)| d).collect();
    assert_eq!(distinct.len(), DESKTOPS, "no desktop given twice");
    assert_eq!(refused.len(), USERS - DESKTOPS);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("No desktop is available in pool Lab")),
        "{refused:?}"
    );

    // After a restart the assignments are all still there, and agree with the user index.
    drop(broker);
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    let desktops: Vec<Desktop> = store.values::<Desktop>().expect("list");
    let assigned: Vec<&Desktop> = desktops
        .iter()
        .filter(|d| d.assigned_user.is_some())
        .collect();
    assert_eq!(assigned.len(), DESKTOPS);
    for (user, desktop_id) in &got {
        let held = store
            .get::<HeldDesktops>(&format!("slapd/{user}"))
            .expect("get")
            .expect("the user holds a desktop");
        assert_eq!(&held.desktops, &vec![desktop_id.clone()]);
    }
}
