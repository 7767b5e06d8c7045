//! Console access by role, against the real server and a real directory (slapd): an auditor
//! (view only) reads every area and changes nothing, in the console and through the API; a
//! directory administrator changes things; a user whose role has no console is refused like a
//! wrong password; the local `admin` keeps full access; audit lines name `server/user`; a row
//! naming the administrators' group by DN is not given to members of a same-named group.

use std::path::Path;

use gatehouse::model::directory::Security;
use gatehouse::store::Store;
use serde_json::{Value, json};

use crate::common::{self, Console, Server};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions, password_of};

const ADMIN_PASSWORD: &str = "Roles-Test-Password-1";

/// The slapd authentication server, one pool and policy, and an assignment table: `admins`
/// (alice) → Administrator, `staff` (bob) → Auditor, `generated` → User. Returns the server
/// and the authentication server's id.
fn appliance(slapd: &Slapd, dir: &Path) -> (Server, String) {
    appliance_with(slapd, dir, None)
}

/// As [`appliance`], started with `config` (TOML) when given.
fn appliance_with(slapd: &Slapd, dir: &Path, config: Option<&str>) -> (Server, String) {
    let data = dir.join("data");
    let server_id;
    {
        let store = Store::open(&data).expect("store");
        let server = slapd.auth_server(Security::Ldaps);
        server_id = server.id.clone();
        store.put(&server.id.clone(), &server).expect("auth server");
        crate::lab::seed(
            &store,
            &server.id,
            0,
            &[
                ("admins", "administrator"),
                ("staff", "auditor"),
                ("generated", "user"),
            ],
        );
    }
    common::finish_setup(&data, ADMIN_PASSWORD);
    let config = config.map(|text| {
        let path = dir.join("gatehouse.toml");
        std::fs::write(&path, text).expect("config written");
        path
    });
    (Server::start(&data, config.as_deref()), server_id)
}

/// `POST /api/v1/tokens`: (status, body).
async fn token(server: &Server, user: &str, password: &str) -> (u16, Value) {
    let resp = common::client()
        .post(format!("{}/api/v1/tokens", server.base))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("POST tokens");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An API token of directory user `user` (signed in with their password).
async fn directory_token(server: &Server, user: &str) -> String {
    let (status, body) = token(server, user, &password_of(user)).await;
    assert_eq!(status, 200, "{user}: {body}");
    body["token"].as_str().expect("token").to_string()
}

/// A console signed in as directory user `user`, on the dashboard.
async fn signed_in(server: &Server, user: &str) -> Console {
    let mut console = server.console();
    let a = console.sign_in(user, &password_of(user)).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin"),
        "{user}: {}",
        a.body
    );
    console
}

async fn api(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = common::client()
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn pool_names(server: &Server, admin_token: &str) -> Vec<String> {
    let (status, body) = api(
        server,
        admin_token,
        reqwest::Method::GET,
        "/api/v1/pools",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn create_pool(c: &mut Console, name: &str) -> common::Answer {
    c.get("/admin/configuration/pools").await;
    c.post(
        "/admin/configuration/pools/new",
        &[
            ("name", name),
            ("rules", "[]"),
            ("match_all", "on"),
            ("description", ""),
        ],
    )
    .await
}

#[tokio::test]
async fn roles_decide_what_directory_users_see_and_change() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, server_id) = appliance(&slapd, dir.path());
    let (status, body) = token(&server, &"x".repeat(100_000), "wrong").await;
    assert_eq!(status, 400, "a name longer than any account's: {body}");
    assert_eq!(body["error"], "bad_request", "{body}");
    let (status, body) = token(&server, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let admin_token = body["token"].as_str().expect("token").to_string();
    assert_eq!(pool_names(&server, &admin_token).await, ["Lab"]);

    // The auditor (bob, group staff) sees every area and no edit controls.
    let mut auditor = signed_in(&server, "bob").await;
    let page = auditor.get("/admin").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for path in [
        "/admin/setup/auth-servers",
        "/admin/configuration/pools",
        "/admin/resources/desktops",
        "/admin/system/audit",
    ] {
        assert!(page.body.contains(path), "the menu lists {path}");
    }
    let pools = auditor.get("/admin/configuration/pools").await;
    assert_eq!(pools.status, 200, "{}", pools.body);
    assert!(pools.body.contains("Lab"), "{}", pools.body);
    assert!(
        !pools.body.contains("id=\"new\""),
        "no New button: {}",
        pools.body
    );
    let backups = auditor.get("/admin/system/backups").await;
    assert_eq!(backups.status, 200, "{}", backups.body);
    assert!(!backups.body.contains("export-form"), "{}", backups.body);
    let licence = auditor.get("/admin/system/licence").await;
    assert_eq!(licence.status, 200, "{}", licence.body);
    assert!(!licence.body.contains("Enter a new licence key"));
    assert!(
        licence.body.contains("not accepted yet"),
        "an unattended setup without --accept-licence accepted nothing: {}",
        licence.body
    );

    // The server refuses the change all the same, with the CSRF token right.
    let r = create_pool(&mut auditor, "Auditor pool").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-code=\"forbidden\""), "{}", r.body);
    for path in [
        "/%61dmin/configuration/pools/new",
        "/admin/%63onfiguration/pools/new",
    ] {
        let r = auditor
            .post(
                path,
                &[
                    ("name", "Escaped pool"),
                    ("rules", "[]"),
                    ("match_all", "on"),
                    ("description", ""),
                ],
            )
            .await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    let r = auditor.get("/%61dmin/system/backups/files/x.ghbak").await;
    assert_eq!(
        r.status, 403,
        "downloading a backup is an export: {}",
        r.body
    );
    let r = auditor
        .post("/admin/system/jobs/run", &[("name", "backup")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = auditor.get("/admin/wizard").await;
    assert_eq!(
        r.status, 403,
        "the wizard's steps are for the local account"
    );
    assert_eq!(
        pool_names(&server, &admin_token).await,
        ["Lab"],
        "nothing saved"
    );

    // My options: a directory user changes their password in the directory.
    let me = auditor.get("/admin/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(
        me.body.contains("change your password there"),
        "{}",
        me.body
    );
    assert!(!me.body.contains("id=\"change-password\""));
    let r = auditor
        .post(
            "/admin/me/password",
            &[("current", "x"), ("password", "y"), ("confirm", "y")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The same through an API token.
    let bob = directory_token(&server, "bob").await;
    let (status, body) = api(&server, &bob, reqwest::Method::GET, "/api/v1/pools", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (status, body) = api(
        &server,
        &bob,
        reqwest::Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "API auditor pool"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    // The router decodes percent-escapes; the role gate decides on the same path.
    for path in ["/%61pi/v1/pools", "/api/v1/%70ools", "/api/%76%31/pools"] {
        let (status, body) = api(
            &server,
            &bob,
            reqwest::Method::POST,
            path,
            Some(json!({"name": "Escaped auditor pool"})),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"], "forbidden", "{path}: {body}");
    }
    let (status, body) = api(
        &server,
        &bob,
        reqwest::Method::GET,
        &format!("/api/v1/auth-servers/{server_id}/test"),
        None,
    )
    .await;
    assert_eq!(
        status, 403,
        "testing a connection is a change-level action: {body}"
    );
    assert_eq!(
        pool_names(&server, &admin_token).await,
        ["Lab"],
        "nothing saved"
    );

    // A directory administrator (alice, group admins) changes things; CSRF still holds.
    let mut alice = signed_in(&server, "alice").await;
    let pools = alice.get("/admin/configuration/pools").await;
    assert!(pools.body.contains("id=\"new\""), "{}", pools.body);
    let r = alice
        .post_raw(
            "/admin/configuration/pools/new",
            &[("name", "No CSRF"), ("rules", "[]"), ("match_all", "on")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-code=\"csrf_failed\""), "{}", r.body);
    let r = create_pool(&mut alice, "Alice pool").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let alice_token = directory_token(&server, "alice").await;
    let (status, body) = api(
        &server,
        &alice_token,
        reqwest::Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "Alice API pool"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // A user whose role has no console reads what a wrong password reads.
    let mut user = server.console();
    let no_console = user.sign_in("user00001", GENERATED_PASSWORD).await;
    assert_eq!(no_console.status, 401, "{}", no_console.body);
    assert!(no_console.body.contains("Wrong user name or password."));
    let wrong = user.sign_in("bob", "not-bobs-password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("Wrong user name or password."));
    let (status, body) = token(&server, "user00001", GENERATED_PASSWORD).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(user.get("/admin").await.status, 303, "not signed in");

    // The local admin keeps full access.
    let mut admin = server.console();
    let a = admin.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin"),
        "{}",
        a.body
    );
    let r = create_pool(&mut admin, "Admin pool").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let mut names = pool_names(&server, &admin_token).await;
    names.sort();
    assert_eq!(names, ["Admin pool", "Alice API pool", "Alice pool", "Lab"]);

    // Audit lines name the directory user as `server/user`.
    let audit = admin.get("/admin/system/audit").await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    assert!(
        audit.body.contains(&format!("{server_id}/bob")),
        "{}",
        audit.body
    );
    assert!(audit.body.contains(&format!("{server_id}/alice")));

    // Roles and assignments grant access: changing them takes Edit in every area. Alice (an
    // administrator) makes a role with Configuration's Edit only and gives it to `staff`.
    let mut console = serde_json::Map::new();
    for area in ["dashboard", "setup", "resources", "system"] {
        console.insert(area.into(), json!("view"));
    }
    console.insert("configuration".into(), json!("edit"));
    let (status, body) = api(
        &server,
        &alice_token,
        reqwest::Method::POST,
        "/api/v1/roles",
        Some(json!({"id": "configurator", "name": "Configurator", "console": console})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let table = |staff_role: &str| {
        json!({"rows": [
            {"group": "admins", "location_id": null, "role_id": "administrator", "policy_id": "lab"},
            {"group": "staff", "location_id": null, "role_id": staff_role, "policy_id": "lab"},
            {"group": "generated", "location_id": null, "role_id": "user", "policy_id": "lab"},
        ], "otherwise": null})
    };
    let assignments = format!("/api/v1/assignments/{server_id}");
    let (status, body) = api(
        &server,
        &alice_token,
        reqwest::Method::PUT,
        &assignments,
        Some(table("configurator")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Bob, signed in again, now changes Configuration, but not what roles grant.
    let bob = directory_token(&server, "bob").await;
    let (status, body) = api(
        &server,
        &bob,
        reqwest::Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "Configurator pool"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api(
        &server,
        &bob,
        reqwest::Method::PUT,
        &assignments,
        Some(table("administrator")),
    )
    .await;
    assert_eq!(
        status, 403,
        "bob must not make himself an administrator: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Edit in every area")),
        "{body}"
    );
    let (status, body) = api(
        &server,
        &bob,
        reqwest::Method::PUT,
        "/api/v1/roles/configurator",
        Some(
            json!({"name": "Configurator", "console": {"setup": "edit", "configuration": "edit"}}),
        ),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let mut bob_console = server.console();
    bob_console.sign_in("bob", &password_of("bob")).await;
    let page = bob_console.get("/admin/configuration/roles").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("id=\"new\""),
        "no New button where saving is refused: {}",
        page.body
    );
    let page = bob_console.get("/admin/configuration/pools").await;
    assert!(page.body.contains("id=\"new\""), "{}", page.body);
}

/// An assignment table for the slapd server giving `admins` and `staff` these roles.
fn roles_table(admins: &str, staff: &str) -> Value {
    json!({"rows": [
        {"group": "admins", "location_id": null, "role_id": admins, "policy_id": "lab"},
        {"group": "staff", "location_id": null, "role_id": staff, "policy_id": "lab"},
    ], "otherwise": null})
}

#[tokio::test]
async fn directory_users_are_checked_again_and_lose_the_console_with_their_directory_standing() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Checked on every request, so the test needs no clock.
    let (server, server_id) = appliance_with(
        &slapd,
        dir.path(),
        Some("[security]\ndirectory_recheck_seconds = 0\n"),
    );
    let data = dir.path().join("data");
    let (status, body) = token(&server, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let admin_token = body["token"].as_str().expect("token").to_string();
    let get = reqwest::Method::GET;
    let pools = "/api/v1/pools";

    // Bob (staff: Auditor) and Alice (admins: Administrator) sign in to the console and take
    // API tokens.
    let mut bob = signed_in(&server, "bob").await;
    let bob_token = directory_token(&server, "bob").await;
    let mut alice = signed_in(&server, "alice").await;
    let alice_token = directory_token(&server, "alice").await;
    assert_eq!(bob.get("/admin/configuration/pools").await.status, 200);
    assert_eq!(
        api(&server, &bob_token, get.clone(), pools, None).await.0,
        200
    );

    // While the directory cannot answer, requests are refused (not served unchecked) but the
    // sessions are kept.
    slapd.pause();
    let page = bob.get("/admin/configuration/pools").await;
    let (status, body) = api(&server, &bob_token, get.clone(), pools, None).await;
    slapd.resume();
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.body.contains("data-code=\"directory_unreachable\""),
        "{}",
        page.body
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "directory_unreachable", "{body}");
    assert_eq!(bob.get("/admin/configuration/pools").await.status, 200);
    assert_eq!(
        api(&server, &bob_token, get.clone(), pools, None).await.0,
        200
    );

    // Bob is disabled in the directory: his next console request goes back to the sign-in
    // form, his token is refused with the reason, and both stay ended.
    slapd.modify_ldif(
        "dn: uid=bob,ou=people,dc=example,dc=com\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n",
    );
    let page = bob.get("/admin/configuration/pools").await;
    assert_eq!(
        (page.status, page.location.as_str()),
        (303, "/admin/login"),
        "{}",
        page.body
    );
    let (status, body) = api(&server, &bob_token, get.clone(), pools, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "session_ended", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled or no longer exists")),
        "{body}"
    );
    let (status, body) = api(&server, &bob_token, get.clone(), pools, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "token_required", "the token is gone: {body}");
    let page = bob.get("/admin/configuration/pools").await;
    assert_eq!((page.status, page.location.as_str()), (303, "/admin/login"));

    // Alice's groups now give the Auditor: her next request has the Auditor's access.
    let assignments = format!("/api/v1/assignments/{server_id}");
    let (status, body) = api(
        &server,
        &admin_token,
        reqwest::Method::PUT,
        &assignments,
        Some(roles_table("auditor", "auditor")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        &server,
        &alice_token,
        reqwest::Method::POST,
        pools,
        Some(json!({"name": "Demoted pool"})),
    )
    .await;
    assert_eq!(status, 403, "the role is derived again: {body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    assert_eq!(
        api(&server, &alice_token, get.clone(), pools, None).await.0,
        200
    );
    let page = alice.get("/admin/configuration/pools").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("id=\"new\""), "{}", page.body);

    // Then a role without the console: her session and token end.
    let (status, body) = api(
        &server,
        &admin_token,
        reqwest::Method::PUT,
        &assignments,
        Some(roles_table("user", "user")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(&server, &alice_token, get.clone(), pools, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "session_ended", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no console access")),
        "{body}"
    );
    let page = alice.get("/admin").await;
    assert_eq!(
        (page.status, page.location.as_str()),
        (303, "/admin/login"),
        "{}",
        page.body
    );
    // The local account is never checked against a directory.
    assert_eq!(pool_names(&server, &admin_token).await, ["Lab"]);

    // Each end is in the audit trail with its reason.
    drop(server);
    let store = Store::open(&data).expect("store");
    let audit: Vec<gatehouse::model::AuditEntry> = store.values().expect("audit");
    let ended = |who: &str, why: &str| {
        audit.iter().any(|a| {
            a.action == "session.ended"
                && a.actor == format!("{server_id}/{who}")
                && a.detail.contains(why)
        })
    };
    assert!(ended("bob", "disabled or no longer exists"), "{audit:?}");
    assert!(ended("alice", "no console access"), "{audit:?}");
}

/// A group named like the administrators' group, in another OU, with bob in it: what anyone
/// allowed to create groups somewhere under the search base can make.
const IMPOSTOR_ADMINS: &str = "cn=admins,ou=helpdesk,dc=example,dc=com";
const ADMINS: &str = "cn=admins,ou=groups,dc=example,dc=com";

/// `POST /api/v1/test-login` for `user`: the report.
async fn test_login(server: &Server, admin_token: &str, user: &str) -> Value {
    let (status, body) = api(
        server,
        admin_token,
        reqwest::Method::POST,
        "/api/v1/test-login",
        Some(json!({"username": user})),
    )
    .await;
    assert_eq!(status, 200, "{user}: {body}");
    body
}

#[tokio::test]
async fn a_row_naming_the_admins_group_by_dn_ignores_a_same_named_group_elsewhere() {
    let slapd = Slapd::start();
    slapd.add_ldif(&format!(
        "dn: ou=helpdesk,dc=example,dc=com\nobjectClass: organizationalUnit\nou: helpdesk\n\n\
         dn: {IMPOSTOR_ADMINS}\nobjectClass: groupOfNames\ncn: admins\n\
         member: uid=bob,ou=people,dc=example,dc=com\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    // Checked on every request, so a changed table applies to open sessions without a clock.
    let (server, server_id) = appliance_with(
        &slapd,
        dir.path(),
        Some("[security]\ndirectory_recheck_seconds = 0\n"),
    );
    let (status, body) = token(&server, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let admin_token = body["token"].as_str().expect("token").to_string();
    let get = reqwest::Method::GET;

    // The old listing keeps its shape (names, each once); the new one tells the two apart.
    let (status, names) = api(
        &server,
        &admin_token,
        get.clone(),
        &format!("/api/v1/auth-servers/{server_id}/groups"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{names}");
    assert_eq!(
        names,
        json!(["admins", "all-staff", "former", "staff"]),
        "{names}"
    );
    let (status, listed) = api(
        &server,
        &admin_token,
        get.clone(),
        &format!("/api/v1/auth-servers/{server_id}/group-dns"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let admins: Vec<&Value> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|g| g["name"] == "admins")
        .collect();
    assert_eq!(
        admins,
        [
            &json!({"name": "admins", "dn": ADMINS}),
            &json!({"name": "admins", "dn": IMPOSTOR_ADMINS})
        ],
        "{listed}"
    );

    // A row naming `admins` by name (the seeded table) is fooled: bob is an administrator.
    let report = test_login(&server, &admin_token, "bob").await;
    assert_eq!(report["role"]["id"], "administrator", "{report}");
    assert_eq!(report["assignment"]["group"], "admins", "{report}");
    assert!(
        report["group_dns"]
            .as_array()
            .is_some_and(|dns| dns.contains(&json!(IMPOSTOR_ADMINS))),
        "{report}"
    );
    let mut bob = signed_in(&server, "bob").await;
    let pools = bob.get("/admin/configuration/pools").await;
    assert!(pools.body.contains("id=\"new\""), "{}", pools.body);
    let alice_token = directory_token(&server, "alice").await;

    // The console offers each group by DN, labelled with its name, and says which rows still
    // name a group by name.
    let mut admin = server.console();
    admin.sign_in("admin", ADMIN_PASSWORD).await;
    let page_path = format!("/admin/configuration/assignments/{server_id}");
    let form = admin.get(&page_path).await;
    assert_eq!(form.status, 200, "{}", form.body);
    for dn in [ADMINS, IMPOSTOR_ADMINS] {
        assert!(
            form.body
                .contains(&format!("<option value=\"{dn}\" label=\"admins\">")),
            "{dn}: {}",
            form.body
        );
    }
    assert!(
        form.body
            .contains("Row(s) 1 (`admins`), 2 (`staff`), 3 (`generated`) name a group"),
        "{}",
        form.body
    );
    let rows = |admins_group: &'static str| {
        vec![
            ("rows[0]", ""),
            ("rows[0].group", admins_group),
            ("rows[0].location_id", ""),
            ("rows[0].role_id", "administrator"),
            ("rows[0].policy_id", "lab"),
            ("rows[1]", ""),
            ("rows[1].group", "cn=staff,ou=groups,dc=example,dc=com"),
            ("rows[1].location_id", ""),
            ("rows[1].role_id", "auditor"),
            ("rows[1].policy_id", "lab"),
            ("otherwise.role_id", ""),
            ("otherwise.policy_id", ""),
        ]
    };

    // A group with `=` that is no DN is refused on its field, and nothing is stored.
    let refused = admin
        .post(&page_path, &rows("cn=admins,,dc=example,dc=com"))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("data-field=\"rows[0].group\"")
            && refused.body.contains("is not a distinguished name"),
        "{}",
        refused.body
    );
    let assignments = format!("/api/v1/assignments/{server_id}");
    let (_, stored) = api(&server, &admin_token, get.clone(), &assignments, None).await;
    assert_eq!(stored["rows"][0]["group"], "admins", "unchanged: {stored}");
    assert_eq!(stored["rows"].as_array().map(Vec::len), Some(3), "{stored}");

    // The administrators' row by DN (spelt another way than the directory spells it).
    let saved = admin
        .post(
            &page_path,
            &rows("CN=Admins, OU=Groups, DC=example, DC=com"),
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, stored) = api(&server, &admin_token, get.clone(), &assignments, None).await;
    assert_eq!(
        stored["rows"][0]["group"], "CN=Admins, OU=Groups, DC=example, DC=com",
        "{stored}"
    );
    let form = admin.get(&page_path).await;
    assert!(!form.body.contains("name a group by name"), "{}", form.body);

    // Bob's open session is decided again: the same-named group gives nothing, staff gives
    // the Auditor.
    let pools = bob.get("/admin/configuration/pools").await;
    assert_eq!(pools.status, 200, "{}", pools.body);
    assert!(!pools.body.contains("id=\"new\""), "{}", pools.body);
    let report = test_login(&server, &admin_token, "bob").await;
    assert_eq!(report["role"]["id"], "auditor", "{report}");
    assert_eq!(report["assignment"]["row"], 2, "{report}");
    let bob_token = directory_token(&server, "bob").await;
    let (status, body) = api(
        &server,
        &bob_token,
        reqwest::Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "Helpdesk pool"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Alice, a real member, keeps the row, in her open session and at a new sign-in.
    let report = test_login(&server, &admin_token, "alice").await;
    assert_eq!(report["role"]["id"], "administrator", "{report}");
    assert_eq!(
        (&report["assignment"]["row"], &report["assignment"]["group"]),
        (
            &json!(1),
            &json!("CN=Admins, OU=Groups, DC=example, DC=com")
        ),
        "{report}"
    );
    let tokens = [alice_token, directory_token(&server, "alice").await];
    for (n, token) in tokens.iter().enumerate() {
        let (status, body) = api(
            &server,
            token,
            reqwest::Method::POST,
            "/api/v1/pools",
            Some(json!({"name": format!("Alice pool {n}")})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    // The change is audited.
    let audit = admin.get("/admin/system/audit").await;
    assert!(audit.body.contains("assignments.updated"), "{}", audit.body);
}
