//! Directory sign-in against a real OpenLDAP (`slapd`, started per test by `slapd.rs`):
//! LDAPS and StartTLS, wrong and empty passwords, unknown users, filter injection, failover,
//! TLS verification, pooled connections, disabled accounts, referrals, "Test connection", and
//! Active Directory's primary group against the fixture's Active Directory-like entries.

use std::time::Duration;

use gatehouse::auth::ldap::{DirectoryError, LdapDirectory};
use gatehouse::model::directory::{self, HostPort, Security};

use crate::slapd::{self, Slapd, SlapdOptions, password_of};

/// A guard against a hang turning into a stuck test run (never a timing assertion).
async fn guarded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the directory call came back")
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test]
async fn sign_in_over_ldaps_returns_the_user_and_their_groups() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    let user = guarded(dir.authenticate("alice", &password_of("alice")))
        .await
        .expect("alice signs in");
    assert_eq!(user.username, "alice");
    assert_eq!(user.server_id, "slapd");
    assert_eq!(user.dn, "uid=alice,ou=people,dc=example,dc=com");
    assert_eq!(user.display_name, "Alice Liddell");
    assert_eq!(user.email.as_deref(), Some("alice@example.com"));
    assert_eq!(user.groups, vec!["admins", "staff"], "groups via memberOf");
    assert_eq!(
        user.group_dns,
        vec![
            "cn=admins,ou=groups,dc=example,dc=com",
            "cn=staff,ou=groups,dc=example,dc=com"
        ]
    );
    assert!(!user.disabled);
}

#[tokio::test]
async fn nested_groups_count_when_the_option_is_on() {
    let slapd = Slapd::start();
    let mut server = slapd.auth_server(Security::Ldaps);
    let flat = LdapDirectory::new(server.clone());
    let bob = guarded(flat.authenticate("bob", &password_of("bob")))
        .await
        .expect("bob");
    assert_eq!(bob.groups, vec!["staff"]);

    server.nested_groups = true;
    let nested = LdapDirectory::new(server);
    let bob = guarded(nested.authenticate("bob", &password_of("bob")))
        .await
        .expect("bob");
    assert_eq!(bob.groups, vec!["all-staff", "staff"]);
    let alice = guarded(nested.lookup("alice"))
        .await
        .expect("lookup")
        .expect("alice exists");
    assert_eq!(alice.groups, vec!["admins", "all-staff", "staff"]);
}

#[tokio::test]
async fn wrong_empty_and_unknown_are_told_apart() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    assert_eq!(
        guarded(dir.authenticate("alice", "not-her-password")).await,
        Err(DirectoryError::WrongPassword)
    );
    assert_eq!(
        guarded(dir.authenticate("nobody", "whatever")).await,
        Err(DirectoryError::UnknownUser)
    );
    let opened = dir.connections_opened();
    // An empty password would be an anonymous bind, which slapd accepts: it must never be sent.
    assert_eq!(
        guarded(dir.authenticate("alice", "")).await,
        Err(DirectoryError::EmptyPassword)
    );
    assert_eq!(
        dir.connections_opened(),
        opened,
        "no connection for an empty password"
    );
}

#[tokio::test]
async fn a_user_in_no_group_signs_in_with_no_groups() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    let carol = guarded(dir.authenticate("carol", &password_of("carol")))
        .await
        .expect("carol signs in");
    assert!(carol.groups.is_empty(), "{:?}", carol.groups);
    assert!(carol.group_dns.is_empty());
}

#[tokio::test]
async fn filter_injection_finds_nobody_and_special_characters_still_work() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    for attempt in ["*)(uid=*", "*", "alice)(|(uid=*", "al*"] {
        assert_eq!(
            guarded(dir.authenticate(attempt, &password_of("alice"))).await,
            Err(DirectoryError::UnknownUser),
            "{attempt}"
        );
        assert_eq!(guarded(dir.lookup(attempt)).await, Ok(None), "{attempt}");
    }
    // A real login holding a filter metacharacter is found, literally.
    let user = guarded(dir.authenticate("o*brien", &password_of("o*brien")))
        .await
        .expect("o*brien signs in");
    assert_eq!(user.username, "o*brien");
}

#[tokio::test]
async fn domain_backslash_user_and_user_at_domain_sign_in() {
    let slapd = Slapd::start();
    let server = slapd.auth_server(Security::Ldaps);
    let servers = vec![server];
    for typed in ["EXAMPLE\\alice", "alice@example.com", "example\\alice"] {
        let (domain, _) = directory::split_login(typed);
        let chosen = directory::choose(&servers, domain.as_deref());
        assert_eq!(chosen.len(), 1, "{typed} chooses the server");
        let dir = LdapDirectory::new(chosen[0].clone());
        let user = guarded(dir.authenticate(typed, &password_of("alice")))
            .await
            .unwrap_or_else(|e| panic!("{typed}: {e}"));
        assert_eq!(user.username, "alice");
    }
    assert!(directory::choose(&servers, Some("OTHER")).is_empty());
}

#[tokio::test]
async fn the_next_host_is_tried_when_the_first_is_down() {
    let slapd = Slapd::start();
    let mut server = slapd.auth_server(Security::Ldaps);
    server
        .hosts
        .insert(0, HostPort::new("127.0.0.1", dead_port()));
    let dir = LdapDirectory::new(server);
    let user = guarded(dir.authenticate("bob", &password_of("bob")))
        .await
        .expect("signed in through the second host");
    assert_eq!(user.username, "bob");
}

#[tokio::test]
async fn a_host_that_accepts_but_never_answers_times_out_and_the_next_is_used() {
    let slapd = Slapd::start();
    // The kernel completes the TCP handshake from the backlog; nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let silent_port = silent.local_addr().expect("addr").port();
    let mut server = slapd.auth_server(Security::Ldaps);
    server.connect_timeout_secs = 1;
    server
        .hosts
        .insert(0, HostPort::new("127.0.0.1", silent_port));
    let dir = LdapDirectory::new(server.clone());
    let user = guarded(dir.authenticate("bob", &password_of("bob")))
        .await
        .expect("signed in past the silent host");
    assert_eq!(user.username, "bob");

    // Alone, the silent host gives an error naming it, not a hang.
    server.hosts.truncate(1);
    let dir = LdapDirectory::new(server);
    match guarded(dir.authenticate("bob", &password_of("bob"))).await {
        Err(DirectoryError::Unreachable { host, reason }) => {
            assert!(host.contains(&silent_port.to_string()), "{host}");
            assert!(reason.contains("within 1 s"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_frozen_server_never_hangs_a_request_past_its_timeout() {
    let slapd = Slapd::start();
    let mut server = slapd.auth_server(Security::Ldaps);
    server.search_timeout_secs = 1;
    let dir = LdapDirectory::new(server);
    guarded(dir.lookup("alice"))
        .await
        .expect("lookup")
        .expect("alice");
    slapd.pause();
    let frozen = guarded(dir.lookup("alice")).await;
    let frozen_signin = guarded(dir.authenticate("alice", &password_of("alice"))).await;
    slapd.resume();
    assert!(
        matches!(frozen, Err(DirectoryError::Timeout { secs: 1, .. })),
        "{frozen:?}"
    );
    assert!(frozen_signin.is_err(), "{frozen_signin:?}");
    // Once it is back, a fresh connection replaces the one that timed out.
    let back = guarded(dir.lookup("alice"))
        .await
        .expect("lookup after resume");
    assert!(back.is_some());
}

#[tokio::test]
async fn tls_verification_fails_on_a_wrong_ca_and_can_be_turned_off() {
    let slapd = Slapd::start();
    let mut server = slapd.auth_server(Security::Ldaps);
    server.ca_cert_pem = Some(slapd::other_ca_pem());
    let dir = LdapDirectory::new(server.clone());
    match guarded(dir.authenticate("alice", &password_of("alice"))).await {
        Err(DirectoryError::Tls(reason)) => {
            assert!(reason.contains("not signed by a trusted CA"), "{reason}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }

    server.verify_tls = false;
    assert!(
        !server.warnings().is_empty(),
        "verification off is a warning"
    );
    let dir = LdapDirectory::new(server);
    guarded(dir.authenticate("alice", &password_of("alice")))
        .await
        .expect("signs in without verification");
    let report = guarded(dir.test_connection()).await;
    assert!(report.ok(), "{report:#?}");
    assert!(!report.warnings.is_empty());
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.detail.contains("NOT verified")),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_starttls_server_signs_users_in() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::StartTls));
    let user = guarded(dir.authenticate("alice", &password_of("alice")))
        .await
        .expect("alice over StartTLS");
    assert_eq!(user.groups, vec!["admins", "staff"]);
    let report = guarded(dir.test_connection()).await;
    assert!(report.ok(), "{report:#?}");
    let tls = report
        .steps
        .iter()
        .find(|s| s.name == "TLS")
        .expect("a TLS step");
    assert!(tls.detail.contains("StartTLS"), "{}", tls.detail);
    assert!(tls.detail.contains("pasted CA"), "{}", tls.detail);
}

#[tokio::test]
async fn an_ipv6_literal_host_is_verified_against_its_address_over_ldaps_and_starttls() {
    let slapd = Slapd::start();
    for security in [Security::Ldaps, Security::StartTls] {
        let mut server = slapd.auth_server(security);
        let port = server.hosts[0].port;
        server.hosts = vec![HostPort::new("::1", port)];
        let dir = LdapDirectory::new(server.clone());
        let user = guarded(dir.authenticate("alice", &password_of("alice")))
            .await
            .unwrap_or_else(|e| panic!("alice over {security:?} to [::1]: {e}"));
        assert_eq!(user.groups, vec!["admins", "staff"]);
        // The certificate names ::1, so the check is real: another CA is still refused.
        server.ca_cert_pem = Some(slapd::other_ca_pem());
        let err = guarded(LdapDirectory::new(server).authenticate("alice", &password_of("alice")))
            .await
            .expect_err("a certificate from another CA");
        assert!(matches!(err, DirectoryError::Tls(_)), "{security:?}: {err}");
    }
}

#[tokio::test]
async fn plain_binds_refused_by_the_server_name_the_fix() {
    let slapd = Slapd::start_with(&SlapdOptions {
        require_tls_for_binds: true,
        ..SlapdOptions::default()
    });
    let plain = LdapDirectory::new(slapd.auth_server(Security::Plain));
    let report = guarded(plain.test_connection()).await;
    let failed = report.first_failure().expect("a failing step");
    assert_eq!(failed.name, "Bind", "{report:#?}");
    assert!(
        failed.detail.contains("LDAPS or StartTLS"),
        "{}",
        failed.detail
    );

    let tls = LdapDirectory::new(slapd.auth_server(Security::StartTls));
    guarded(tls.authenticate("bob", &password_of("bob")))
        .await
        .expect("StartTLS satisfies the server");
}

#[tokio::test]
async fn test_connection_names_the_step_that_failed() {
    let slapd = Slapd::start();
    let good = slapd.auth_server(Security::Ldaps);

    let report = guarded(LdapDirectory::new(good.clone()).test_connection()).await;
    assert!(report.ok(), "{report:#?}");
    let names: Vec<&str> = report.steps.iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["DNS", "TCP", "TLS", "Bind", "Search base"]);
    assert!(report.warnings.is_empty());

    let failing_step = |server: directory::AuthServer| async move {
        let report = guarded(LdapDirectory::new(server).test_connection()).await;
        let failed = report
            .first_failure()
            .unwrap_or_else(|| panic!("something fails: {report:#?}"))
            .clone();
        assert_eq!(report.steps.last(), Some(&failed), "stops at the failure");
        failed
    };

    let mut s = good.clone();
    s.hosts = vec![HostPort::new("directory.invalid", 636)];
    let failed = failing_step(s).await;
    assert_eq!(failed.name, "DNS", "{failed:?}");
    assert!(failed.detail.contains("directory.invalid"), "{failed:?}");

    let mut s = good.clone();
    s.hosts = vec![HostPort::new("127.0.0.1", dead_port())];
    let failed = failing_step(s).await;
    assert_eq!(failed.name, "TCP", "{failed:?}");
    assert!(failed.detail.contains("refused"), "{failed:?}");

    let mut s = good.clone();
    s.ca_cert_pem = Some(slapd::other_ca_pem());
    let failed = failing_step(s).await;
    assert_eq!(failed.name, "TLS", "{failed:?}");
    assert!(failed.detail.contains("CA"), "{failed:?}");

    // LDAPS against the plain port: not TLS.
    let mut s = good.clone();
    s.hosts = vec![HostPort::new("127.0.0.1", slapd.ldap_port)];
    assert_eq!(failing_step(s).await.name, "TLS");

    let mut s = good.clone();
    s.bind_password = "wrong".into();
    let failed = failing_step(s).await;
    assert_eq!(failed.name, "Bind", "{failed:?}");
    assert!(failed.detail.contains("invalid credentials"), "{failed:?}");
    assert!(
        !failed.detail.contains("wrong"),
        "never the password: {failed:?}"
    );

    let mut s = good.clone();
    s.base_dn = "ou=nowhere,dc=example,dc=com".into();
    let failed = failing_step(s).await;
    assert_eq!(failed.name, "Search base", "{failed:?}");
    assert!(failed.detail.contains("does not exist"), "{failed:?}");

    // Two hosts: the dead one's failure and the live one's success are both reported.
    let mut s = good.clone();
    s.hosts.insert(0, HostPort::new("127.0.0.1", dead_port()));
    let report = guarded(LdapDirectory::new(s).test_connection()).await;
    assert_eq!(
        report.steps.iter().filter(|s| !s.ok).count(),
        1,
        "{report:#?}"
    );
    assert_eq!(
        report.steps.last().map(|s| (s.name, s.ok)),
        Some(("Search base", true))
    );
}

#[tokio::test]
async fn disabled_accounts_are_refused_and_seen_by_lookup() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    for uid in ["dave", "erin"] {
        // slapd itself accepts their binds: the refusal is ours.
        assert_eq!(
            guarded(dir.authenticate(uid, &password_of(uid))).await,
            Err(DirectoryError::Disabled),
            "{uid}"
        );
        let seen = guarded(dir.lookup(uid)).await.expect("lookup").expect(uid);
        assert!(seen.disabled, "{uid}");
        assert_eq!(seen.groups, vec!["former"]);
    }
    assert_eq!(guarded(dir.lookup("nobody")).await, Ok(None));

    // Alice is fine, then her account expires in the directory: the next lookup sees it.
    let alice = guarded(dir.lookup("alice"))
        .await
        .expect("lookup")
        .expect("alice");
    assert!(!alice.disabled);
    slapd.modify_ldif(
        "dn: uid=alice,ou=people,dc=example,dc=com\nchangetype: modify\nadd: shadowExpire\nshadowExpire: 1\n",
    );
    let alice = guarded(dir.lookup("EXAMPLE\\alice"))
        .await
        .expect("lookup")
        .expect("alice");
    assert!(alice.disabled);
    assert_eq!(
        guarded(dir.authenticate("alice", &password_of("alice"))).await,
        Err(DirectoryError::Disabled)
    );
}

#[tokio::test]
async fn search_connections_are_pooled_and_reused() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    for _ in 0..5 {
        guarded(dir.authenticate("alice", &password_of("alice")))
            .await
            .expect("alice");
        guarded(dir.lookup("bob"))
            .await
            .expect("lookup")
            .expect("bob");
    }
    // One search connection and one bind connection, for ten operations.
    assert_eq!(dir.connections_opened(), 2);

    // Concurrent sign-ins share at most the pool size of each kind.
    let dir = std::sync::Arc::new(LdapDirectory::with_pool_size(
        slapd.auth_server(Security::Ldaps),
        3,
    ));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            dir.authenticate("bob", &password_of("bob")).await
        }));
    }
    for task in tasks {
        guarded(task).await.expect("task").expect("bob signs in");
    }
    assert!(
        dir.connections_opened() <= 6,
        "{}",
        dir.connections_opened()
    );
}

#[tokio::test]
async fn continuation_references_are_skipped_or_followed() {
    let slapd = Slapd::start();
    // From the root, the search meets the ou=remote reference: sign-ins still work.
    let root = LdapDirectory::new(slapd.auth_server(Security::StartTls));
    guarded(root.authenticate("alice", &password_of("alice")))
        .await
        .expect("a continuation reference does not break a sign-in");

    let mut branch = slapd.auth_server(Security::StartTls);
    branch.base_dn = "ou=branch,dc=example,dc=com".into();
    let skipping = LdapDirectory::new(branch.clone());
    guarded(skipping.authenticate("bea", &password_of("bea")))
        .await
        .expect("bea lives in the branch");
    assert_eq!(
        guarded(skipping.authenticate("zed", &password_of("zed"))).await,
        Err(DirectoryError::UnknownUser),
        "zed is only behind the reference"
    );

    branch.follow_referrals = true;
    let following = LdapDirectory::new(branch);
    let zed = guarded(following.authenticate("zed", &password_of("zed")))
        .await
        .expect("zed through the followed reference");
    assert_eq!(zed.dn, "uid=zed,ou=hidden,dc=example,dc=com");
    assert_eq!(
        guarded(following.authenticate("zed", "wrong")).await,
        Err(DirectoryError::WrongPassword)
    );
}

#[tokio::test]
async fn groups_lists_the_group_names_under_the_base() {
    let slapd = Slapd::start();
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    let groups = guarded(dir.groups()).await.expect("groups");
    assert_eq!(groups, vec!["admins", "all-staff", "former", "staff"]);
}

#[tokio::test]
async fn groups_are_found_under_their_own_base_when_users_are_searched_under_another() {
    let slapd = Slapd::start();
    let mut server = slapd.auth_server(Security::Ldaps);
    // Users under ou=people; a directory whose users carry no memberOf (here: the group
    // attribute names one nobody has), so the groups themselves are asked.
    server.base_dn = "ou=people,dc=example,dc=com".into();
    server.group_attribute = "businessCategory".into();
    server.nested_groups = true;
    let users_base_only = LdapDirectory::new(server.clone());
    let bob = guarded(users_base_only.authenticate("bob", &password_of("bob")))
        .await
        .expect("bob");
    assert!(bob.groups.is_empty(), "no group lives under ou=people");
    assert!(
        guarded(users_base_only.groups())
            .await
            .expect("groups")
            .is_empty()
    );

    server.group_base_dn = "ou=groups,dc=example,dc=com".into();
    let with_group_base = LdapDirectory::new(server);
    let bob = guarded(with_group_base.authenticate("bob", &password_of("bob")))
        .await
        .expect("bob");
    assert_eq!(
        bob.groups,
        vec!["all-staff", "staff"],
        "members asked, nested too"
    );
    assert_eq!(
        guarded(with_group_base.groups()).await.expect("groups"),
        vec!["admins", "all-staff", "former", "staff"]
    );
}

#[tokio::test]
async fn generated_users_load_fast_for_bigger_tests() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 300,
        ..SlapdOptions::default()
    });
    let dir = LdapDirectory::new(slapd.auth_server(Security::Ldaps));
    let user = guarded(dir.authenticate("user00042", slapd::GENERATED_PASSWORD))
        .await
        .expect("a generated user signs in");
    assert_eq!(user.groups, vec!["generated"]);
    assert!(
        guarded(dir.lookup("user00300"))
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        guarded(dir.lookup("user00301"))
            .await
            .expect("lookup")
            .is_none()
    );
}

#[tokio::test]
async fn an_active_directory_users_primary_group_counts_though_memberof_leaves_it_out() {
    let slapd = Slapd::start();
    let mut server = slapd.ad_auth_server(Security::Ldaps);
    let dir = LdapDirectory::new(server.clone());
    let ada = guarded(dir.authenticate("ada", &password_of("ada")))
        .await
        .expect("ada signs in");
    assert_eq!(ada.dn, "cn=Ada Lovelace,ou=ad,dc=example,dc=com");
    assert_eq!(ada.groups, vec!["Domain Users", "Engineers"]);
    assert_eq!(
        ada.group_dns,
        vec![
            "cn=Domain Users,ou=ad,dc=example,dc=com",
            "cn=Engineers,ou=ad,dc=example,dc=com"
        ]
    );
    assert!(!ada.disabled);
    let seen = guarded(dir.lookup("EXAMPLE\\ada"))
        .await
        .expect("lookup")
        .expect("ada exists");
    assert_eq!(
        seen.groups, ada.groups,
        "lookup finds the primary group too"
    );

    // No objectSid or primaryGroupID: no primary group, and the sign-in still works.
    let ned = guarded(dir.authenticate("ned", &password_of("ned")))
        .await
        .expect("ned signs in");
    assert_eq!(ned.groups, vec!["Engineers"]);

    // The console's group list offers the primary group like any other group.
    assert_eq!(
        guarded(dir.groups()).await.expect("groups"),
        vec!["Domain Users", "Engineers"]
    );

    // With nested groups on, the primary group is still found. (The groups containing it are
    // asked with Active Directory's in-chain matching rule, which slapd does not implement, so
    // that part cannot be checked here.)
    server.nested_groups = true;
    let nested = LdapDirectory::new(server);
    let ada = guarded(nested.authenticate("ada", &password_of("ada")))
        .await
        .expect("ada signs in with nested groups on");
    assert!(
        ada.groups.iter().any(|g| g == "Domain Users"),
        "{:?}",
        ada.groups
    );
}
