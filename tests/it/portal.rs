//! The client API and the user portal against the real server and a real directory (slapd):
//! sign-in, offer, connect, release, sign-out, the refusals users read, and a user disabled in
//! the directory losing access at the next request.

use std::path::Path;

use gatehouse::model::directory::Security;
use gatehouse::store::Store;
use serde_json::{Value, json};

use crate::common::{self, Server};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const ADMIN_PASSWORD: &str = "Portal-Test-Password-1";

/// A data folder holding the slapd authentication server, `desktops` RDP desktops
/// (`lab-000` at 10.0.0.10, …) in the pool "Lab", a policy offering one of them, an assignment
/// table giving the `generated` group that policy with the built-in `user` role, and a finished
/// setup wizard. Then the server, started on it.
pub fn appliance(slapd: &Slapd, dir: &Path, desktops: usize) -> Server {
    appliance_with(slapd, dir, desktops, 1)
}

/// As [`appliance`], with the directory's connect and search timeouts in seconds.
pub fn appliance_with(slapd: &Slapd, dir: &Path, desktops: usize, timeout_secs: u32) -> Server {
    let data = seed_data(slapd, dir, desktops, timeout_secs);
    common::finish_setup(&data, ADMIN_PASSWORD);
    Server::start(&data, None)
}

/// As [`appliance`], with a licence (`issue_flags`: e.g. `--max-users 2`; none: no limit on
/// users, unlike the evaluation's 10) instead of the evaluation.
pub fn licensed_appliance(
    slapd: &Slapd,
    dir: &Path,
    desktops: usize,
    timeout_secs: u32,
    issue_flags: &[&str],
) -> (Server, common::Licensing) {
    let data = seed_data(slapd, dir, desktops, timeout_secs);
    let licensing = common::Licensing::new();
    let config = common::finish_setup_licensed(&data, ADMIN_PASSWORD, &licensing, issue_flags);
    (Server::start(&data, Some(&config)), licensing)
}

/// The data folder [`appliance`] starts on, before the wizard.
fn seed_data(slapd: &Slapd, dir: &Path, desktops: usize, timeout_secs: u32) -> std::path::PathBuf {
    let data = dir.join("data");
    {
        let store = Store::open(&data).expect("store");
        let mut server = slapd.auth_server(Security::Ldaps);
        // A paused directory answers nothing: give up on it quickly.
        server.connect_timeout_secs = timeout_secs;
        server.search_timeout_secs = timeout_secs;
        store.put(&server.id.clone(), &server).expect("auth server");
        crate::lab::seed(&store, &server.id, desktops, &[("generated", "user")]);
    }
    data
}

/// A client of the JSON API.
pub struct Api {
    client: reqwest::Client,
    base: String,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Self {
            client: common::client(),
            base: server.base.clone(),
        }
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Reply { status, body }
    }

    pub async fn login(&self, user: &str, password: &str, device: &str) -> Reply {
        self.post_json(
            "/api/v1/client/login",
            &json!({
                "username": user,
                "password": password,
                "client": {"name": device, "device_type": "laptop", "os": "Linux"}
            }),
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        Self::reply(resp).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> Reply {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("POST");
        Self::reply(resp).await
    }

    /// POST (or GET with `get`) with a bearer token.
    pub async fn call(&self, token: &str, path: &str, get: bool) -> Reply {
        let url = format!("{}{path}", self.base);
        let req = if get {
            self.client.get(url)
        } else {
            self.client.post(url)
        };
        let resp = req.bearer_auth(token).send().await.expect("request");
        Self::reply(resp).await
    }
}

fn token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn the_client_api_signs_in_offers_connects_releases_and_signs_out() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 3,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = appliance(&slapd, dir.path(), 2);
    let api = Api::new(&server);

    // Sign in: a token, who and where, and one desktop on offer.
    let first = api.login("user00001", GENERATED_PASSWORD, "laptop-1").await;
    let token = token_of(&first);
    let b = &first.body;
    assert_eq!(b["user"]["username"], "user00001", "{b}");
    assert_eq!(b["user"]["server_id"], "slapd");
    assert!(b["user"]["display_name"].is_string());
    assert_eq!(b["location"], "All");
    assert_eq!(b["role"], "user");
    assert_eq!(b["notices"], json!([]));
    let offered = b["desktops"].as_array().expect("desktops");
    assert_eq!(offered.len(), 1, "{b}");
    assert_eq!(offered[0]["name"], "lab-000");
    assert_eq!(offered[0]["pool_name"], "Lab");
    assert_eq!(offered[0]["yours"], false);
    let desk = offered[0]["id"].as_str().expect("id").to_string();

    // Connect: the desktop and an .rdp file naming its address.
    let c = api
        .call(
            &token,
            &format!("/api/v1/client/desktops/{desk}/connect"),
            false,
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["desktop"]["id"], desk.as_str());
    assert_eq!(c.body["desktop"]["name"], "lab-000");
    assert_eq!(c.body["desktop"]["display_name"], "lab-000");
    assert_eq!(c.body["connection"]["protocol"], "rdp");
    assert_eq!(c.body["connection"]["file_name"], "lab-000.rdp");
    let file = c.body["connection"]["file"].as_str().expect("file");
    assert!(file.contains("full address:s:10.0.0.10:3389"), "{file}");

    // Signing in again from another device: the same desktop first, marked as theirs, and
    // connecting to it again resolves to it.
    let second = api
        .login("EXAMPLE\\user00001", GENERATED_PASSWORD, "phone")
        .await;
    let token2 = token_of(&second);
    assert_ne!(token, token2);
    assert_eq!(second.body["desktops"][0]["id"], desk.as_str());
    assert_eq!(second.body["desktops"][0]["yours"], true);
    let again = api
        .call(
            &token2,
            &format!("/api/v1/client/desktops/{desk}/connect"),
            false,
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["desktop"]["id"], desk.as_str());
    let offer = api.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(offer.status, 200, "{}", offer.body);
    assert_eq!(offer.body["desktops"][0]["yours"], true);

    // A second user gets the other desktop; a third finds none free.
    let bob = token_of(&api.login("user00002", GENERATED_PASSWORD, "b").await);
    let bobs = api.call(&bob, "/api/v1/client/desktops", true).await;
    let other = bobs.body["desktops"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(other, desk);
    let c = api
        .call(
            &bob,
            &format!("/api/v1/client/desktops/{other}/connect"),
            false,
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let carol = api.login("user00003", GENERATED_PASSWORD, "c").await;
    let carol_token = token_of(&carol);
    assert_eq!(carol.body["desktops"], json!([]));
    assert!(
        carol.body["notices"][0]
            .as_str()
            .is_some_and(|n| n.contains("No desktop is available in pool Lab")),
        "{}",
        carol.body
    );
    let taken = api
        .call(
            &carol_token,
            &format!("/api/v1/client/desktops/{desk}/connect"),
            false,
        )
        .await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert_eq!(taken.body["error"], "no_desktop_available");
    assert!(
        taken.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("No desktop is available in pool Lab")),
        "{}",
        taken.body
    );
    // Nor can she release someone else's desktop.
    let not_hers = api
        .call(
            &carol_token,
            &format!("/api/v1/client/desktops/{desk}/release"),
            false,
        )
        .await;
    assert_eq!(not_hers.status, 404, "{}", not_hers.body);
    assert_eq!(not_hers.body["error"], "not_yours");

    // Released, the desktop is free again: Carol is offered it.
    let r = api
        .call(
            &token2,
            &format!("/api/v1/client/desktops/{desk}/release"),
            false,
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"released": desk})));
    let offer = api
        .call(&carol_token, "/api/v1/client/desktops", true)
        .await;
    assert_eq!(
        offer.body["desktops"][0]["id"],
        desk.as_str(),
        "{}",
        offer.body
    );

    // Signing out ends that token only.
    let out = api.call(&token, "/api/v1/client/logout", false).await;
    assert_eq!(out.status, 204);
    let gone = api.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(gone.status, 401, "{}", gone.body);
    assert_eq!(gone.body["error"], "not_signed_in");
    assert_eq!(
        api.call(&token2, "/api/v1/client/desktops", true)
            .await
            .status,
        200
    );
    let none = api
        .post_json("/api/v1/client/desktops/x/connect", &json!({}))
        .await;
    assert_eq!(none.status, 401, "no token: {}", none.body);
}

#[tokio::test]
async fn failed_client_sign_ins_say_why_without_revealing_names() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = appliance(&slapd, dir.path(), 1);
    let api = Api::new(&server);

    let wrong = api.login("user00001", "not-the-password", "x").await;
    let unknown = api.login("nobody-here", "not-the-password", "x").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert_eq!(
        wrong.body,
        json!({"error": "wrong_password", "message": "Wrong user name or password."})
    );
    assert_eq!(unknown.body, wrong.body, "the same answer for both");

    let empty = api.login("user00001", "", "x").await;
    assert_eq!(empty.status, 401, "{}", empty.body);
    assert_eq!(empty.body["error"], "empty_password");

    // Malformed bodies are refused, naming the problem.
    let missing = api
        .post_json("/api/v1/client/login", &json!({"username": "user00001"}))
        .await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert_eq!(missing.body["error"], "malformed_json");
    assert!(
        missing.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("password")),
        "{}",
        missing.body
    );
    let garbled = api
        .post_raw(
            "/api/v1/client/login",
            "application/json",
            "{\"username\": ",
        )
        .await;
    assert_eq!(garbled.status, 400, "{}", garbled.body);
    assert_eq!(garbled.body["error"], "malformed_json");
    let huge = api
        .post_json(
            "/api/v1/client/login",
            &json!({"username": "user00001", "password": "x".repeat(64 * 1024)}),
        )
        .await;
    assert_eq!(huge.status, 400, "{}", huge.body);

    // The directory frozen: a clear 503, not a wrong password.
    slapd.pause();
    let down = api.login("user00001", GENERATED_PASSWORD, "x").await;
    slapd.resume();
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["error"], "directory_unreachable");
    assert!(
        down.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("The directory cannot be reached right now")),
        "{}",
        down.body
    );
    assert!(
        !down.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1")
                || m.contains(&slapd.ldap_port.to_string())
                || m.contains(&slapd.ldaps_port.to_string())),
        "the directory's address stays in the log: {}",
        down.body
    );
    // Back: signing in works again.
    token_of(&api.login("user00001", GENERATED_PASSWORD, "x").await);
}

#[tokio::test]
async fn a_user_disabled_in_the_directory_loses_access_at_the_next_request() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = appliance(&slapd, dir.path(), 2);
    let api = Api::new(&server);
    let token = token_of(&api.login("user00001", GENERATED_PASSWORD, "x").await);
    let other = token_of(&api.login("user00002", GENERATED_PASSWORD, "y").await);
    let mut portal = server.console();
    portal.get("/").await;
    let a = portal
        .post(
            "/portal/login",
            &[("username", "user00001"), ("password", GENERATED_PASSWORD)],
        )
        .await;
    assert_eq!((a.status, a.location.as_str()), (303, "/"), "{}", a.body);
    assert!(portal.get("/").await.body.contains("lab-000"));

    // While the directory cannot answer, requests are refused but sessions are kept.
    slapd.pause();
    let frozen = api.call(&token, "/api/v1/client/desktops", true).await;
    slapd.resume();
    assert_eq!(frozen.status, 503, "{}", frozen.body);
    assert_eq!(frozen.body["error"], "directory_unreachable");
    assert_eq!(
        api.call(&token, "/api/v1/client/desktops", true)
            .await
            .status,
        200
    );

    slapd.modify_ldif(
        "dn: uid=user00001,ou=people,dc=example,dc=com\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n",
    );
    let refused = api.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled in the directory")),
        "{}",
        refused.body
    );
    // The session is over: the next request does not even reach the directory.
    let again = api.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.body["message"], "Sign in first.");
    // The portal session ends too, back at the sign-in form with the reason.
    let page = portal.get("/").await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(
        page.body.contains("disabled in the directory"),
        "{}",
        page.body
    );
    assert!(page.body.contains("action=\"/portal/login\""));
    // Signing in again is refused; others are not affected.
    let blocked = api.login("user00001", GENERATED_PASSWORD, "x").await;
    assert_eq!(blocked.status, 403, "{}", blocked.body);
    assert_eq!(blocked.body["error"], "account_disabled");
    assert_eq!(
        api.call(&other, "/api/v1/client/desktops", true)
            .await
            .status,
        200
    );
}

/// The `data-desktop` ids of the rows of the portal's desktop list.
fn desktop_ids(html: &str) -> Vec<String> {
    html.split("data-desktop=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_portal_signs_in_lists_connects_releases_and_signs_out() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = appliance(&slapd, dir.path(), 1);
    let mut portal = server.console();

    let form = portal.get("/").await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(
        form.body.contains("action=\"/portal/login\""),
        "{}",
        form.body
    );
    assert!(
        !form.body.contains("/admin"),
        "a user's page has no console links"
    );
    let csrf = portal.csrf.clone();
    assert!(!csrf.is_empty());

    // No CSRF token: refused.
    let a = portal
        .post_raw(
            "/portal/login",
            &[("username", "user00001"), ("password", GENERATED_PASSWORD)],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    portal.get("/").await;
    let a = portal
        .post(
            "/portal/login",
            &[("username", "user00001"), ("password", "wrong")],
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.body.contains("Wrong user name or password."),
        "{}",
        a.body
    );

    let a = portal
        .post(
            "/portal/login",
            &[
                ("username", "user00001"),
                ("password", GENERATED_PASSWORD),
                ("domain", "EXAMPLE"),
            ],
        )
        .await;
    assert_eq!((a.status, a.location.as_str()), (303, "/"), "{}", a.body);
    let page = portal.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("lab-000"), "{}", page.body);
    let ids = desktop_ids(&page.body);
    assert_eq!(ids.len(), 1, "{}", page.body);
    let desk = &ids[0];

    // Connect without the CSRF token: refused, nothing assigned.
    let a = portal
        .post_raw(&format!("/portal/desktops/{desk}/connect"), &[])
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(!portal.get("/").await.body.contains("(yours)"));

    // Connect: the .rdp file as a download.
    let resp = portal
        .client
        .post(format!("{}/portal/desktops/{desk}/connect", server.base))
        .form(&[("csrf", portal.csrf.as_str())])
        .send()
        .await
        .expect("connect");
    assert_eq!(resp.status().as_u16(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "application/x-rdp");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"lab-000.rdp\""
    );
    let file = resp.text().await.expect("file");
    assert!(file.contains("full address:s:10.0.0.10:3389\r\n"), "{file}");

    // Now it is theirs, with a Release button; the pool is empty for others.
    let page = portal.get("/").await;
    assert!(page.body.contains("(yours)"), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("action=\"/portal/desktops/{desk}/release\"")),
        "{}",
        page.body
    );
    let mut other = server.console();
    other.get("/").await;
    other
        .post(
            "/portal/login",
            &[("username", "user00002"), ("password", GENERATED_PASSWORD)],
        )
        .await;
    let theirs = other.get("/").await;
    assert!(
        theirs
            .body
            .contains("No desktop is available in pool Lab right now"),
        "{}",
        theirs.body
    );
    let a = other
        .post(&format!("/portal/desktops/{desk}/connect"), &[])
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("No desktop is available in pool Lab"));

    // Release.
    let a = portal
        .post(&format!("/portal/desktops/{desk}/release"), &[])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("lab-000 was released."), "{}", a.body);
    assert!(!a.body.contains("(yours)"));

    // Sign out: back to the form, and the old cookie no longer opens the list.
    let a = portal.post("/portal/logout", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("You have signed out."), "{}", a.body);
    let page = portal.get("/").await;
    assert!(
        page.body.contains("action=\"/portal/login\""),
        "{}",
        page.body
    );
    assert!(desktop_ids(&page.body).is_empty());
}

#[tokio::test]
async fn two_hundred_simultaneous_client_sign_ins_race_for_fifty_desktops_over_https() {
    const USERS: usize = 200;
    const DESKTOPS: usize = 50;
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: USERS,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    // A licence without a user limit: the evaluation allows 10 users at once.
    let (server, licensing) = licensed_appliance(&slapd, dir.path(), DESKTOPS, 30, &[]);
    let api = std::sync::Arc::new(Api::new(&server));
    let tasks: Vec<_> = (1..=USERS)
        .map(|n| {
            let api = api.clone();
            tokio::spawn(async move {
                let user = format!("user{n:05}");
                let login = api.login(&user, GENERATED_PASSWORD, "storm").await;
                let token = token_of(&login);
                let Some(first) = login.body["desktops"][0]["id"].as_str() else {
                    return (user, None, login.body["notices"].to_string());
                };
                let path = format!("/api/v1/client/desktops/{first}/connect");
                let r = api.call(&token, &path, false).await;
                match r.status {
                    200 => {
                        let id = r.body["desktop"]["id"].as_str().expect("id").to_string();
                        (user, Some(id), String::new())
                    }
                    409 => (user, None, r.body["message"].to_string()),
                    other => panic!("connect answered {other}: {}", r.body),
                }
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refusals = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (user, Some(desktop), _) => winners.push((user, desktop)),
            (_, None, message) => refusals.push(message),
        }
    }
    assert_eq!(winners.len(), DESKTOPS, "exactly one user per desktop");
    let distinct: std::collections::HashSet<&String> = winners.iter().map(|(_, d)| d).collect();
    assert_eq!(distinct.len(), DESKTOPS, "no desktop given twice");
    assert_eq!(refusals.len(), USERS - DESKTOPS);
    assert!(
        refusals
            .iter()
            .all(|m| m.contains("No desktop is available in pool Lab")),
        "{refusals:?}"
    );

    // Restart the server (SIGKILL): every winner signs in again and is offered the same desktop.
    let data = server.data.clone();
    server.kill();
    let config = licensing.config_file(dir.path(), "");
    let server = Server::start(&data, Some(&config));
    let api = Api::new(&server);
    for (user, desktop) in &winners {
        let login = api.login(user, GENERATED_PASSWORD, "after-restart").await;
        assert_eq!(login.status, 200, "{}", login.body);
        assert_eq!(
            login.body["desktops"][0]["id"].as_str(),
            Some(desktop.as_str()),
            "{user}"
        );
        assert_eq!(login.body["desktops"][0]["yours"], true);
    }
    let loser = (1..=USERS)
        .map(|n| format!("user{n:05}"))
        .find(|u| !winners.iter().any(|(w, _)| w == u))
        .expect("a user without a desktop");
    let login = api.login(&loser, GENERATED_PASSWORD, "after-restart").await;
    assert_eq!(
        login.body["desktops"].as_array().map(Vec::len),
        Some(0),
        "{}",
        login.body
    );
}

/// Signs `user` in and connects them to the first desktop offered: the connect's answer.
async fn sign_in_and_connect(api: &Api, user: &str) -> Reply {
    let login = api.login(user, GENERATED_PASSWORD, "licence").await;
    assert_eq!(login.status, 200, "{}", login.body);
    let token = token_of(&login);
    let first = login.body["desktops"][0]["id"]
        .as_str()
        .expect("a desktop on offer")
        .to_string();
    api.call(
        &token,
        &format!("/api/v1/client/desktops/{first}/connect"),
        false,
    )
    .await
}

#[tokio::test]
async fn the_licence_limits_who_gets_a_desktop() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 3,
        ..SlapdOptions::default()
    });

    // Two users at once: the third is refused until one of the two gives theirs back; a user
    // who holds a desktop may always come back to it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _licensing) = licensed_appliance(&slapd, dir.path(), 3, 5, &["--max-users", "2"]);
    let api = Api::new(&server);
    for user in ["user00001", "user00002"] {
        let r = sign_in_and_connect(&api, user).await;
        assert_eq!(r.status, 200, "{user}: {}", r.body);
    }
    let r = sign_in_and_connect(&api, "user00003").await;
    assert_licence_limit(&r, "allows 2 users at once");
    let again = sign_in_and_connect(&api, "user00001").await;
    assert_eq!(again.status, 200, "{}", again.body);
    let login = api.login("user00001", GENERATED_PASSWORD, "licence").await;
    let token = token_of(&login);
    let held = again.body["desktop"]["id"].as_str().expect("id");
    let r = api
        .call(
            &token,
            &format!("/api/v1/client/desktops/{held}/release"),
            false,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = sign_in_and_connect(&api, "user00003").await;
    assert_eq!(r.status, 200, "a place was given back: {}", r.body);

    // An evaluation that has ended gives no desktop to anyone.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = seed_data(&slapd, dir.path(), 1, 5);
    common::finish_setup(&data, ADMIN_PASSWORD);
    {
        let store = Store::open(&data).expect("store");
        let mut setup: gatehouse::model::SetupState = store.get_one().expect("setup state");
        setup.evaluation_started = Some(chrono::Utc::now().date_naive() - chrono::Days::new(40));
        store.put_one(&setup).expect("setup state");
    }
    let server = Server::start(&data, None);
    let api = Api::new(&server);
    let r = sign_in_and_connect(&api, "user00001").await;
    assert_licence_limit(&r, "licence has ended");
}

/// A connect the licence refused: 403 `licence_limit`, its message saying `why`.
fn assert_licence_limit(r: &Reply, why: &str) {
    assert_eq!(
        (r.status, &r.body["error"]),
        (403, &json!("licence_limit")),
        "{}",
        r.body
    );
    let said = r.body["message"].as_str().unwrap_or_default();
    assert!(said.contains(why), "{said}");
}
