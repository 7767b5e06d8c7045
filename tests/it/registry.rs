//! Standalone gateways registered with the broker, against the real server: created in the
//! API and the console (the token shown once, refused when wrong), the gateway API (key,
//! session-end notices, tunnel reports, bad bodies), and the registry link run in-process as a
//! gateway would: its tunnel shows in the console, and releasing the desktop on the broker
//! closes it on the gateway. The licence's limit on how many gateways may be registered.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use gatehouse::broker::Ticket;
use gatehouse::gateway::client::Trust;
use gatehouse::gateway::registry::{self, BrokerLink};
use gatehouse::gateway::{Gateway, GatewaySettings, Refusal};
use gatehouse::model::directory::Security;
use gatehouse::model::plan::ProtocolPlan;
use gatehouse::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Server};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const PASSWORD: &str = "Registry-Test-Password-1";

struct Reply {
    status: u16,
    body: Value,
    text: String,
}

async fn send(
    client: &reqwest::Client,
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = client.request(method, format!("{}{path}", server.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

async fn admin_token(client: &reqwest::Client, server: &Server) -> String {
    let r = send(
        client,
        server,
        Method::POST,
        "/api/v1/tokens",
        None,
        Some(json!({"username": "admin", "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["token"].as_str().expect("token").to_string()
}

/// Waiting for something to happen gives up after this.
const PATIENCE: Duration = Duration::from_secs(30);

/// Between two looks at something that has not happened yet.
async fn pause(what: &str, deadline: Instant) {
    assert!(Instant::now() < deadline, "gave up waiting: {what}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The status a gateway call with `token` gets.
async fn status_with(client: &reqwest::Client, server: &Server, token: &str) -> u16 {
    let path = "/api/v1/gateway/session-ends?wait=0";
    send(client, server, Method::GET, path, Some(token), None)
        .await
        .status
}

/// A data folder with the slapd directory, one Lab desktop whose RDP goes through the
/// gateway, and a finished setup; then the server on it.
fn appliance(slapd: &Slapd, dir: &Path) -> Server {
    let data = dir.join("data");
    {
        let store = Store::open(&data).expect("store");
        let server = slapd.auth_server(Security::Ldaps);
        store.put(&server.id.clone(), &server).expect("auth server");
        crate::lab::seed(&store, &server.id, 1, &[("generated", "user")]);
        let mut plan = ProtocolPlan::default_plan();
        for p in &mut plan.protocols {
            p.via_gateway = true;
        }
        store.put(&plan.id.clone(), &plan).expect("plan");
    }
    common::finish_setup(&data, PASSWORD);
    Server::start(&data, None)
}

#[tokio::test]
async fn a_registered_gateway_reports_its_tunnels_and_closes_them_when_the_broker_ends_the_session()
{
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = appliance(&slapd, dir.path());
    let client = common::client();
    let admin = admin_token(&client, &server).await;

    // Created through the API: the token comes once, with the gateway.
    let r = send(
        &client,
        &server,
        Method::POST,
        "/api/v1/gateways",
        Some(&admin),
        Some(
            json!({"name": "DMZ", "public_address": "gw.example.com:443",
            "internal_url": "https://10.0.0.2:8443", "methods": {"tunnel": true},
            "token_hash": "0000000000000000000000000000000000000000000000000000000000000000"}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("ghgw_"), "{token}");
    let id = r.body["gateway"]["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["gateway"]["token_hash"], "");
    let stored = send(
        &client,
        &server,
        Method::GET,
        &format!("/api/v1/gateways/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body["name"], "DMZ");
    assert!(!stored.text.contains(&token), "{}", stored.text);

    // The token opens the gateway API; a wrong one, an administrator's, or none do not.
    let ends = "/api/v1/gateway/session-ends?after=0&wait=0";
    let r = send(&client, &server, Method::GET, ends, Some(&token), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"latest": 0, "ended": []}));
    for wrong in [Some("ghgw_wrong"), Some(admin.as_str()), None] {
        let r = send(&client, &server, Method::GET, ends, wrong, None).await;
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.text);
        assert_eq!(r.body["error"], "gateway_token_required", "{}", r.text);
        assert!(
            r.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Setup > Gateways"))
        );
    }
    // (The body's "token_hash" was not taken: the issued token is the one that works.)
    let r = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway/session-ends?after=x",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["fields"][0]["field"], "after", "{}", r.text);

    // The key, public, is the broker's.
    let r = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway/key",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let key = VerifyingKey::from_public_key_pem(r.text.trim()).expect("a PEM public key");

    // A report by hand: stored, and shown in the API and the console.
    let opened = chrono::Utc::now().to_rfc3339();
    let r = send(
        &client,
        &server,
        Method::POST,
        "/api/v1/gateway/report",
        Some(&token),
        Some(
            json!({"tunnels": [{"id": 1, "kind": "tunnel", "session": "s-by-hand",
            "user": "hand-made", "target": "10.9.9.9:3389", "client": "192.0.2.44",
            "opened": opened, "bytes_up": 2048, "bytes_down": 4096}]}),
        ),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let reports = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway-reports",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(reports.status, 200, "{}", reports.text);
    let list = reports.body.as_array().expect("list");
    assert_eq!(list[0]["name"], "Built-in");
    assert_eq!(list[0]["id"], Value::Null);
    assert_eq!(list[1]["id"], id.as_str());
    assert_eq!(list[1]["connected"], true);
    assert_eq!(list[1]["tunnels"][0]["user"], "hand-made");
    assert_eq!(list[1]["tunnels"][0]["bytes_down"], 4096);
    // And /metrics: the report's tunnel and bytes, the gateway reporting; the built-in one
    // with no tunnel.
    let metrics = server.metrics().await;
    let dmz = format!(r#"gateway_id="{id}",gateway_name="DMZ""#);
    for line in [
        format!("gatehouse_gateway_tunnels{{{dmz}}} 1"),
        format!("gatehouse_gateway_connected{{{dmz}}} 1"),
        format!(r#"gatehouse_gateway_tunnel_bytes{{{dmz},direction="up"}} 2048"#),
        format!(r#"gatehouse_gateway_tunnel_bytes{{{dmz},direction="down"}} 4096"#),
        r#"gatehouse_gateway_tunnels{gateway_id="builtin",gateway_name="Built-in"} 0"#.into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    let page = console.get("/admin/setup/gateways").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for shown in [
        "DMZ",
        "gw.example.com:443",
        "https://10.0.0.2:8443",
        "hand-made",
        "10.9.9.9:3389",
        "192.0.2.44",
        "4.0 KiB",
        "connected,",
    ] {
        assert!(page.body.contains(shown), "{shown} missing: {}", page.body);
    }
    assert!(page.body.contains("Built-in"), "{}", page.body);

    // Bad report bodies are refused, naming the field.
    for (body, code, field) in [
        (
            json!({"tunnels": [{"id": "one"}]}),
            "invalid",
            Some("tunnels"),
        ),
        (json!({"tunnel": []}), "invalid", Some("tunnels")),
    ] {
        let r = send(
            &client,
            &server,
            Method::POST,
            "/api/v1/gateway/report",
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["error"], code, "{}", r.text);
        if let Some(field) = field {
            assert_eq!(r.body["fields"][0]["field"], field, "{}", r.text);
        }
    }
    let r = client
        .post(format!("{}/api/v1/gateway/report", server.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"tunnels\": [")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let r: Value = r.json().await.expect("json");
    assert_eq!(r["error"], "malformed_json", "{r}");

    // The registry link, in-process, as `gatehouse gateway --broker` runs it.
    let gateway = Arc::new(Gateway::new(GatewaySettings::default(), key));
    let mut link = BrokerLink::new(&server.base, &token, Trust::Insecure).expect("a broker link");
    link.timings.report_every = Duration::from_millis(200);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(registry::run(gateway.clone(), link, stopped));

    // A user connects through the gateway: the broker's ticket, and the tunnel it opens.
    let c = send(
        &client,
        &server,
        Method::POST,
        "/api/v1/client/login",
        None,
        Some(json!({"username": "user00001", "password": GENERATED_PASSWORD})),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let user_token = c.body["token"].as_str().expect("client token").to_string();
    let desk = c.body["desktops"][0]["id"]
        .as_str()
        .expect("desktop")
        .to_string();
    let c = send(
        &client,
        &server,
        Method::POST,
        &format!("/api/v1/client/desktops/{desk}/connect"),
        Some(&user_token),
        None,
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let ticket_text = c.body["connection"]["gateway"]["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("a gateway ticket: {}", c.text))
        .to_string();
    let ticket = Ticket::verify(&ticket_text, &key, chrono::Utc::now()).expect("the broker's");
    let from: IpAddr = ticket.client.expect("bound to the client");
    let guard = gateway
        .register(ticket.clone(), from)
        .expect("under the session's limit");

    // Its report reaches the console.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let page = console.get("/admin/setup/gateways").await.body;
        if page.contains("user00001")
            && page.contains("10.0.0.10:3389")
            && !page.contains("hand-made")
        {
            break;
        }
        pause("the tunnel shows in the console", deadline).await;
    }
    let reports = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway-reports",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        reports.body[1]["tunnels"][0]["session"],
        ticket.session.as_str()
    );
    assert!(!guard.shared.is_closed());

    // Releasing the desktop ends the session on the broker; the gateway closes the tunnel
    // and refuses the ticket from then on.
    let r = send(
        &client,
        &server,
        Method::POST,
        &format!("/api/v1/client/desktops/{desk}/release"),
        Some(&user_token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let deadline = Instant::now() + PATIENCE;
    while !guard.shared.is_closed() {
        pause("the gateway closes the released session's tunnel", deadline).await;
    }
    assert_eq!(
        gateway.check(Some(&ticket_text), from, None, chrono::Utc::now()),
        Err(Refusal::SessionEnded)
    );
    let r = send(&client, &server, Method::GET, ends, Some(&token), None).await;
    assert_eq!(r.body["latest"], 1, "{}", r.text);
    assert_eq!(r.body["ended"][0]["session"], ticket.session.as_str());
    // A number from before a broker restart (ahead of the latest) gets every notice kept.
    let r = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway/session-ends?after=99&wait=0",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.body["latest"], 1, "{}", r.text);
    assert_eq!(
        r.body["ended"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );

    // Told to stop, the link stops.
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the link stops when told")
        .expect("the link ran");

    let audit = console.get("/admin/system/audit").await.body;
    assert!(audit.contains("gateway.created"), "{audit}");
    assert!(!audit.contains(&token), "the token is never written down");
    assert!(!server.logs().contains(&token), "the token is never logged");
}

/// The `href` of the first link to a gateway's own page.
fn gateway_id(html: &str) -> String {
    let marker = "href=\"/admin/setup/gateways/";
    html.match_indices(marker)
        .map(|(at, _)| {
            html[at + marker.len()..]
                .split('"')
                .next()
                .unwrap_or_default()
        })
        .find(|id| *id != "new" && !id.contains('/'))
        .expect("a link to the gateway")
        .to_string()
}

/// The token shown in the page's token box.
fn shown_token(html: &str) -> String {
    let marker = "<code id=\"token\">";
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no token shown: {html}"));
    html[at + marker.len()..]
        .split('<')
        .next()
        .expect("token")
        .to_string()
}

#[tokio::test]
async fn the_console_shows_a_gateway_s_token_once_and_a_new_token_replaces_it() {
    let (_dir, data) = common::fresh_data();
    common::finish_setup(&data, PASSWORD);
    let server = Server::start(&data, None);
    let client = common::client();
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    let list = console.get("/admin/setup/gateways").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        list.body.contains("href=\"/admin/setup/gateways\""),
        "in the menu"
    );
    assert!(list.body.contains("Built-in"), "{}", list.body);

    // A refused form comes back with the reason on its field, and nothing is created.
    console.get("/admin/setup/gateways/new").await;
    let refused = console
        .post(
            "/admin/setup/gateways/new",
            &[
                ("name", "Edge"),
                ("public_address", "edge.example.com"),
                ("internal_url", "10.0.0.3:8443"),
                ("methods.tunnel", "on"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("https://"), "{}", refused.body);
    assert!(!refused.body.contains("id=\"token\""), "{}", refused.body);

    // Created: the token is on the answer, once.
    let created = console
        .post(
            "/admin/setup/gateways/new",
            &[
                ("name", "Edge"),
                ("public_address", "edge.example.com"),
                ("internal_url", "https://10.0.0.3:8443"),
                ("methods.tunnel", "on"),
                ("methods.forwarded_port", "on"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let token = shown_token(&created.body);
    assert!(token.starts_with("ghgw_"), "{token}");
    assert!(
        created.body.contains("--gateway-token-file"),
        "{}",
        created.body
    );
    let id = gateway_id(&created.body);

    // Not on any page after that, nor in the API.
    let list = console.get("/admin/setup/gateways").await;
    assert!(list.body.contains("Edge") && list.body.contains("tunnel, forwarded port"));
    assert!(list.body.contains("never"), "no report yet: {}", list.body);
    assert!(!list.body.contains(&token) && !list.body.contains("id=\"token\""));
    let edit = console.get(&format!("/admin/setup/gateways/{id}")).await;
    assert_eq!(edit.status, 200, "{}", edit.body);
    assert!(!edit.body.contains(&token), "{}", edit.body);
    assert!(edit.body.contains("New token"), "{}", edit.body);
    let admin = admin_token(&client, &server).await;
    let api = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateways",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(api.status, 200, "{}", api.text);
    assert_eq!(api.body[0]["token_hash"], "", "{}", api.text);
    assert!(!api.text.contains(&token));

    // Saving the form keeps the token.
    let saved = console
        .post(
            &format!("/admin/setup/gateways/{id}"),
            &[
                ("name", "Edge 1"),
                ("public_address", "edge.example.com:8443"),
                ("internal_url", "https://10.0.0.3:8443"),
                ("methods.tunnel", "on"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(status_with(&client, &server, &token).await, 200);

    // A new token: shown once, and the old one stops working.
    console.get(&format!("/admin/setup/gateways/{id}")).await;
    let renewed = console
        .post(&format!("/admin/setup/gateways/{id}/token"), &[])
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let new_token = shown_token(&renewed.body);
    assert_ne!(new_token, token);
    assert_eq!(status_with(&client, &server, &token).await, 401);
    assert_eq!(status_with(&client, &server, &new_token).await, 200);
    let list = console.get("/admin/setup/gateways").await;
    assert!(!list.body.contains(&new_token));

    // The API's new token too, for administrators only.
    let r = send(
        &client,
        &server,
        Method::POST,
        &format!("/api/v1/gateways/{id}/token"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let api_token = r.body["token"].as_str().expect("token").to_string();
    assert_eq!(status_with(&client, &server, &new_token).await, 401);
    assert_eq!(status_with(&client, &server, &api_token).await, 200);
    let r = send(
        &client,
        &server,
        Method::POST,
        &format!("/api/v1/gateways/{id}/token"),
        Some(&api_token),
        None,
    )
    .await;
    assert_eq!(
        r.status, 401,
        "a gateway's token is no administrator's: {}",
        r.text
    );

    // Deleted: its token no longer works.
    console
        .get(&format!("/admin/setup/gateways/{id}/delete"))
        .await;
    let deleted = console
        .post(&format!("/admin/setup/gateways/{id}/delete"), &[])
        .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    assert_eq!(status_with(&client, &server, &api_token).await, 401);

    let audit = console.get("/admin/system/audit").await.body;
    for action in [
        "gateway.created",
        "gateway.updated",
        "gateway.new_token",
        "gateway.deleted",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log"
        );
    }
    for t in [&token, &new_token, &api_token] {
        assert!(!audit.contains(t.as_str()), "a token in the audit log");
        assert!(!server.logs().contains(t.as_str()), "a token in the logs");
    }
}

#[tokio::test]
async fn before_setup_the_gateway_api_answers_for_itself_not_with_the_wizard() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let client = common::client();
    let r = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateway/key",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        VerifyingKey::from_public_key_pem(r.text.trim()).is_ok(),
        "{}",
        r.text
    );
    assert_eq!(status_with(&client, &server, "ghgw_none").await, 401);
    // The administrator's API still waits for the wizard.
    let r = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateways",
        None,
        None,
    )
    .await;
    assert_eq!(r.body["error"], "setup_required", "{}", r.text);
}

#[tokio::test]
async fn the_licence_limits_how_many_gateways_can_be_registered() {
    let vendor = common::Licensing::new();
    let (dir, data) = common::fresh_data();
    let config = vendor.config_file(dir.path(), "");
    common::finish_setup(&data, PASSWORD);
    let code = common::installation_code(&data);
    let key = vendor.issue("S-GW2", &code, &["--gateways", "2"]);
    let server = Server::start(&data, Some(&config));
    let client = common::client();
    let admin = admin_token(&client, &server).await;
    let create = |name: &str| {
        let body = json!({"name": name, "public_address": "gw.example.com",
            "internal_url": "https://10.0.0.2:8443", "methods": {"tunnel": true}});
        let (client, server, admin) = (&client, &server, &admin);
        async move {
            send(
                client,
                server,
                Method::POST,
                "/api/v1/gateways",
                Some(admin),
                Some(body),
            )
            .await
        }
    };
    let names = || async {
        let r = send(
            &client,
            &server,
            Method::GET,
            "/api/v1/gateways",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let mut names: Vec<String> = r
            .body
            .as_array()
            .expect("list")
            .iter()
            .map(|g| g["name"].as_str().expect("name").to_string())
            .collect();
        names.sort();
        names
    };

    // The evaluation allows one gateway: the second is refused, and nothing is saved.
    let r = create("DMZ 1").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = create("DMZ 2").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["error"], "licence_limit", "{}", r.text);
    let message = r.body["message"].as_str().expect("message");
    assert!(message.contains("allows 1 gateway"), "{message}");
    assert!(message.contains("System > Licence"), "{message}");
    assert!(r.body.get("token").is_none(), "{}", r.text);
    assert_eq!(names().await, ["DMZ 1"]);

    // A licence for two: one more, then the console's form is refused the same way.
    let mut console = server.console();
    console.sign_in("admin", PASSWORD).await;
    console.get("/admin/system/licence").await;
    let a = console
        .post_multipart(
            "/admin/system/licence",
            &[("key", key.trim()), ("agree", "yes")],
            &[],
        )
        .await;
    assert!(a.body.contains("Licence S-GW2 activated"), "{}", a.body);
    let r = create("DMZ 2").await;
    assert_eq!(r.status, 201, "{}", r.text);
    console.get("/admin/setup/gateways/new").await;
    let refused = console
        .post(
            "/admin/setup/gateways/new",
            &[
                ("name", "DMZ 3"),
                ("public_address", "gw3.example.com"),
                ("internal_url", "https://10.0.0.3:8443"),
                ("methods.tunnel", "on"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("allows 2 gateways and 2"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("id=\"token\""), "{}", refused.body);
    let r = create("DMZ 3").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["error"], "licence_limit", "{}", r.text);
    assert_eq!(names().await, ["DMZ 1", "DMZ 2"]);

    // Deleting one makes room again.
    let list = send(
        &client,
        &server,
        Method::GET,
        "/api/v1/gateways",
        Some(&admin),
        None,
    )
    .await;
    let first = list.body[0]["id"].as_str().expect("id").to_string();
    let r = send(
        &client,
        &server,
        Method::DELETE,
        &format!("/api/v1/gateways/{first}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = create("DMZ 3").await;
    assert_eq!(r.status, 201, "{}", r.text);
}
