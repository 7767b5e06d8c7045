//! flexVDI routing against a real OpenLDAP (`slapd`, started per test by `slapd.rs`): a
//! configuration file as flexVDI writes it, each user sent to the manager named in their
//! entry, the fallback to `ManagerIP`, one-level and subtree searches, filter injection, the
//! answer cache, and a directory that is frozen, refuses the bind or is not there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::gateway::flexvdi::{self, FlexVdiConfig, ManagerRouter, RouteError};

use crate::slapd::{BASE, SEARCH_DN, SEARCH_PASSWORD, Slapd};

const MANAGER_IP: &str = "10.0.0.2";

/// A guard against a hang turning into a stuck test run (never a timing assertion).
async fn guarded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the routing call came back")
}

fn people() -> String {
    format!("ou=people,{BASE}")
}

/// A flexVDI gateway configuration routing by `description`, searched from `base` with the
/// fixture's search account, plus `extra` keys (JSON members, each followed by a comma).
fn config(slapd: &Slapd, base: &str, extra: &str) -> FlexVdiConfig {
    let text = format!(
        r#"{{
            {extra}
            "ManagerIP": "{MANAGER_IP}",
            "LDAPServer": "127.0.0.1",
            "LDAPPort": {port},
            "LDAPUsername": "{SEARCH_DN}",
            "LDAPPassword": "{SEARCH_PASSWORD}",
            "LDAPBaseDN": "{base}",
            "LDAPSearchRDN": "uid",
            "LDAPAttribute": "description"
        }}"#,
        port = slapd.ldap_port,
    );
    let (config, warnings) = flexvdi::parse(&text).expect("the configuration parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    config
}

/// Adds a user under `ou_dn`, with `manager` in their `description` if given.
fn add_user(slapd: &Slapd, uid: &str, ou_dn: &str, manager: Option<&str>) {
    let description = manager
        .map(|m| format!("description: {m}\n"))
        .unwrap_or_default();
    slapd.add_ldif(&format!(
        "dn: uid={uid},{ou_dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
         {description}\n"
    ));
}

fn set_manager(slapd: &Slapd, dn: &str, manager: &str) {
    slapd.modify_ldif(&format!(
        "dn: {dn}\nchangetype: modify\nreplace: description\ndescription: {manager}\n"
    ));
}

#[tokio::test]
async fn each_user_goes_to_the_manager_in_their_entry_or_falls_back() {
    let slapd = Slapd::start();
    add_user(&slapd, "anna", &people(), Some("manager-b.example.com"));
    add_user(&slapd, "ben", &people(), Some("  10.0.0.31 "));
    let router = config(&slapd, &people(), r#""LDAPCacheSecs": 0,"#).router();
    assert_eq!(
        guarded(router.manager_for("anna")).await,
        Ok("manager-b.example.com".to_string())
    );
    assert_eq!(
        guarded(router.manager_for("ben")).await,
        Ok("10.0.0.31".to_string()),
        "the value is trimmed"
    );
    // alice exists but has no description; nobody does not exist: both fall back.
    assert_eq!(
        guarded(router.manager_for("alice")).await,
        Ok(MANAGER_IP.to_string())
    );
    assert_eq!(
        guarded(router.manager_for("nobody")).await,
        Ok(MANAGER_IP.to_string())
    );
    assert_eq!(
        guarded(router.manager_for("")).await,
        Ok(MANAGER_IP.to_string())
    );
}

#[tokio::test]
async fn without_fallback_a_missing_manager_or_user_is_an_error() {
    let slapd = Slapd::start();
    add_user(&slapd, "anna", &people(), Some("manager-b.example.com"));
    let router = config(&slapd, &people(), r#""LDAPFallback": false,"#).router();
    assert_eq!(
        guarded(router.manager_for("anna")).await,
        Ok("manager-b.example.com".to_string())
    );
    let e = guarded(router.manager_for("alice"))
        .await
        .expect_err("alice has no manager");
    assert_eq!(
        e,
        RouteError::NoManager {
            user: "alice".into(),
            attribute: "description".into()
        }
    );
    assert!(e.to_string().contains("turn LDAPFallback on"), "{e}");
    let e = guarded(router.manager_for("nobody"))
        .await
        .expect_err("nobody is not in the directory");
    assert!(
        matches!(&e, RouteError::UnknownUser { user, filter, .. }
            if user == "nobody" && filter == "(uid=nobody)"),
        "{e:?}"
    );
    // Errors are not cached: once alice has a manager she is routed to it.
    set_manager(&slapd, &format!("uid=alice,{}", people()), "manager-c");
    assert_eq!(
        guarded(router.manager_for("alice")).await,
        Ok("manager-c".to_string())
    );
}

#[tokio::test]
async fn one_shot_searches_only_directly_under_the_base() {
    let slapd = Slapd::start();
    let site = format!("ou=site2,{}", people());
    slapd.add_ldif(&format!(
        "dn: {site}\nobjectClass: organizationalUnit\nou: site2\n"
    ));
    add_user(&slapd, "sam", &site, Some("manager-site2"));
    add_user(&slapd, "tom", &people(), Some("manager-top"));

    let subtree = config(&slapd, &people(), r#""LDAPFallback": false,"#).router();
    assert_eq!(
        guarded(subtree.manager_for("sam")).await,
        Ok("manager-site2".to_string())
    );
    let one_level = config(
        &slapd,
        &people(),
        r#""LDAPFallback": false, "LDAPOneShot": true,"#,
    )
    .router();
    assert_eq!(
        guarded(one_level.manager_for("tom")).await,
        Ok("manager-top".to_string())
    );
    assert!(
        matches!(
            guarded(one_level.manager_for("sam")).await,
            Err(RouteError::UnknownUser { .. })
        ),
        "sam is in a sub-OU, below one level"
    );

    // A second tom in the sub-OU: one level still finds one, the subtree two.
    add_user(&slapd, "tom", &site, Some("manager-other"));
    assert_eq!(
        guarded(one_level.manager_for("tom")).await,
        Ok("manager-top".to_string())
    );
    let e = guarded(subtree.manager_for("tom"))
        .await
        .expect_err("two entries match");
    assert!(matches!(e, RouteError::Ambiguous { count: 2, .. }), "{e:?}");
}

#[tokio::test]
async fn a_subtree_search_from_the_root_skips_continuation_references() {
    let slapd = Slapd::start();
    // The root holds ou=remote, a referral: the search returns a continuation reference.
    set_manager(
        &slapd,
        &format!("uid=bea,ou=branch,{BASE}"),
        "manager-branch",
    );
    let router = config(&slapd, BASE, r#""LDAPFallback": false,"#).router();
    assert_eq!(
        guarded(router.manager_for("bea")).await,
        Ok("manager-branch".to_string())
    );
}

#[tokio::test]
async fn filter_injection_finds_nobody_and_special_characters_still_work() {
    let slapd = Slapd::start();
    add_user(&slapd, "anna", &people(), Some("manager-b"));
    set_manager(&slapd, &format!("uid=o*brien,{}", people()), "manager-pat");
    let router = config(&slapd, &people(), r#""LDAPFallback": false,"#).router();
    for attempt in ["*)(uid=*", "*", "anna)(|(uid=*", "*)(description=*"] {
        let answer = guarded(router.manager_for(attempt)).await;
        assert!(
            matches!(answer, Err(RouteError::UnknownUser { .. })),
            "{attempt:?} must match nobody, got {answer:?}"
        );
    }
    assert_eq!(
        guarded(router.manager_for("o*brien")).await,
        Ok("manager-pat".to_string())
    );
}

#[tokio::test]
async fn answers_are_cached_for_ldap_cache_secs() {
    let slapd = Slapd::start();
    add_user(&slapd, "anna", &people(), Some("manager-1"));
    let anna = format!("uid=anna,{}", people());
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let cached = config(&slapd, &people(), r#""LDAPCacheSecs": 60,"#)
        .router()
        .with_clock(Arc::new(move || *clock.lock().expect("clock")));
    let uncached = config(&slapd, &people(), r#""LDAPCacheSecs": 0,"#).router();

    assert_eq!(
        guarded(cached.manager_for("anna")).await,
        Ok("manager-1".to_string())
    );
    assert_eq!(cached.cached_users(), 1);
    set_manager(&slapd, &anna, "manager-2");
    // Within LDAPCacheSecs the cached answer stands; without a cache the change is seen.
    *now.lock().expect("clock") += Duration::from_secs(59);
    assert_eq!(
        guarded(cached.manager_for("anna")).await,
        Ok("manager-1".to_string())
    );
    assert_eq!(
        guarded(uncached.manager_for("anna")).await,
        Ok("manager-2".to_string())
    );
    assert_eq!(uncached.cached_users(), 0);
    // Once LDAPCacheSecs have passed the directory is asked again.
    *now.lock().expect("clock") += Duration::from_secs(1);
    assert_eq!(
        guarded(cached.manager_for("anna")).await,
        Ok("manager-2".to_string())
    );
    // Clearing the cache forgets every answer at once.
    set_manager(&slapd, &anna, "manager-3");
    assert_eq!(
        guarded(cached.manager_for("anna")).await,
        Ok("manager-2".to_string())
    );
    cached.clear_cache();
    assert_eq!(
        guarded(cached.manager_for("anna")).await,
        Ok("manager-3".to_string())
    );
}

#[tokio::test]
async fn a_frozen_directory_times_out_instead_of_hanging() {
    let slapd = Slapd::start();
    add_user(&slapd, "anna", &people(), Some("manager-b"));
    let router = config(&slapd, &people(), "")
        .router()
        .with_timeouts(Duration::from_secs(1), Duration::from_secs(1));
    slapd.pause();
    let answer = guarded(router.manager_for("anna")).await;
    slapd.resume();
    assert!(
        matches!(answer, Err(RouteError::Timeout { .. })),
        "a frozen directory is a timeout, got {answer:?}"
    );
    assert_eq!(
        guarded(router.manager_for("anna")).await,
        Ok("manager-b".to_string()),
        "the timeout was not cached"
    );
}

#[tokio::test]
async fn a_wrong_bind_password_or_base_or_port_is_reported() {
    let slapd = Slapd::start();
    let mut ldap = config(&slapd, &people(), "").ldap.expect("LDAP routing");

    ldap.password = "not-the-password".into();
    let router = ManagerRouter::new(MANAGER_IP, Some(ldap.clone()));
    let e = guarded(router.manager_for("alice"))
        .await
        .expect_err("the bind is refused");
    assert!(matches!(e, RouteError::Bind { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("invalid credentials"), "{msg}");
    assert!(!msg.contains("not-the-password"), "{msg}");

    ldap.password = SEARCH_PASSWORD.into();
    ldap.base_dn = format!("ou=nowhere,{BASE}");
    let router = ManagerRouter::new(MANAGER_IP, Some(ldap.clone()));
    let e = guarded(router.manager_for("alice"))
        .await
        .expect_err("no such base");
    assert!(matches!(e, RouteError::Search { .. }), "{e:?}");
    assert!(e.to_string().contains("LDAPBaseDN"), "{e}");

    ldap.base_dn = people();
    ldap.port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let router = ManagerRouter::new(MANAGER_IP, Some(ldap));
    let e = guarded(router.manager_for("alice"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, RouteError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("connection refused"), "{e}");
}
