//! The admin JSON API against the real server: tokens, CRUD of every resource, validation and
//! referential refusals, the CSV import, test login against a real directory, the OpenAPI
//! document against the routes served, and the console pages built on the same resources.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Server};
use crate::slapd::{Slapd, SlapdOptions};

const PASSWORD: &str = "Gatehouse-Api-42!";

/// A server whose wizard was completed by `gatehouse setup`, and an API client holding an
/// administrator's token.
struct Api {
    _dir: tempfile::TempDir,
    server: Server,
    client: reqwest::Client,
    token: String,
}

struct Reply {
    status: u16,
    body: Value,
    text: String,
}

impl Api {
    async fn start() -> Api {
        let (dir, data) = common::fresh_data();
        common::finish_setup(&data, PASSWORD);
        let server = Server::start(&data, None);
        let client = common::client();
        let mut api = Api {
            _dir: dir,
            server,
            client,
            token: String::new(),
        };
        let r = api
            .raw(
                Method::POST,
                "/api/v1/tokens",
                None,
                Some(json!({"username": "admin", "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["token_type"], "Bearer");
        assert!(r.body["expires_in"].as_u64().is_some_and(|s| s > 0));
        api.token = r.body["token"].as_str().expect("token").to_string();
        api
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.server.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        reply(req.send().await.expect("request")).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.raw(method, path, Some(&self.token), body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends a body as it is, with a content type.
    async fn send_text(&self, path: &str, content_type: &str, body: &str) -> Reply {
        let req = self
            .client
            .post(format!("{}{path}", self.server.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body.to_string());
        reply(req.send().await.expect("request")).await
    }

    async fn count(&self, path: &str) -> usize {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.body.as_array().expect("a list").len()
    }
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Asserts an API refusal: status, code, a message, and (for invalid bodies) the field.
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"], code, "{}", r.text);
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
}

fn field_of(r: &Reply, field: &str) -> String {
    r.body["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == field))
        .and_then(|f| f["reason"].as_str())
        .unwrap_or_else(|| panic!("no field {field} in {}", r.text))
        .to_string()
}

#[tokio::test]
async fn tokens_are_required_and_a_failed_sign_in_is_a_json_401() {
    let api = Api::start().await;

    let r = api
        .raw(
            Method::POST,
            "/api/v1/tokens",
            None,
            Some(json!({"username": "admin", "password": "wrong-password"})),
        )
        .await;
    refused(&r, 401, "sign_in_failed");
    let r = api
        .raw(
            Method::POST,
            "/api/v1/tokens",
            None,
            Some(json!({"username": "nobody", "password": PASSWORD})),
        )
        .await;
    refused(&r, 401, "sign_in_failed");

    let r = api.raw(Method::GET, "/api/v1/pools", None, None).await;
    refused(&r, 401, "token_required");
    let r = api
        .raw(Method::GET, "/api/v1/pools", Some("not-a-token"), None)
        .await;
    refused(&r, 401, "token_required");
    let r = api.get("/api/v1/pools").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Malformed sign-in bodies name the problem.
    let r = api
        .send_text("/api/v1/tokens", "application/json", "{\"username\": ")
        .await;
    refused(&r, 400, "malformed_json");

    // The failed sign-in is in the audit trail, the token's use too.
    let mut console = api.server.console();
    console.sign_in("admin", PASSWORD).await;
    let audit = console.get("/admin/system/audit").await.body;
    assert!(audit.contains("api.signin.failed"), "{audit}");
    assert!(audit.contains("api.token"), "{audit}");
}

/// A create body, and a change to make to it, for each resource.
fn samples() -> Vec<(&'static str, Value, Value)> {
    vec![
        (
            "auth-servers",
            json!({"name": "Head office", "kind": "openldap", "domain": "EXAMPLE",
                   "hosts": [{"host": "ldap.example.com", "port": 636}], "security": "ldaps",
                   "bind_dn": "cn=search,dc=example,dc=com", "bind_password": "s3cret",
                   "base_dn": "dc=example,dc=com"}),
            json!({"name": "Head office LDAP"}),
        ),
        (
            "locations",
            json!({"name": "Lab", "order": 10, "ranges": ["10.1.0.0/16"]}),
            json!({"name": "Lab floor 2"}),
        ),
        (
            "roles",
            json!({"name": "Helpdesk", "console": {"resources": "view"}, "may_connect": true}),
            json!({"name": "Help desk"}),
        ),
        (
            "protocol-plans",
            json!({"name": "RDP only", "protocols": [{"protocol": "rdp", "priority": 1}]}),
            json!({"name": "RDP first"}),
        ),
        (
            "power-plans",
            json!({"name": "Suspend idle", "on_idle": {"after_minutes": 30, "action": "suspend"}}),
            json!({"name": "Suspend when idle"}),
        ),
        (
            "release-plans",
            json!({"name": "Keep a day", "release_after_logout_minutes": 1440}),
            json!({"name": "Keep one day"}),
        ),
        (
            "policies",
            json!({"name": "Nothing yet", "entries": []}),
            json!({"name": "Empty"}),
        ),
        (
            "pools",
            json!({"name": "Windows", "rules": [{"attribute": "os", "condition": "contains",
                   "value": "windows"}]}),
            json!({"name": "Windows desktops"}),
        ),
        (
            "desktops",
            json!({"name": "lab-001", "address": "10.1.0.5", "protocol": "rdp"}),
            json!({"name": "lab-001b"}),
        ),
    ]
}

#[tokio::test]
async fn every_resource_round_trips() {
    let api = Api::start().await;
    for (path, body, change) in samples() {
        let collection = format!("/api/v1/{path}");
        let before = api.count(&collection).await;
        let created = api.post(&collection, body.clone()).await;
        assert_eq!(created.status, 201, "{path}: {}", created.text);
        let id = created.body["id"].as_str().expect("an id").to_string();
        assert!(!id.is_empty());
        assert_eq!(created.body["name"], body["name"], "{path}");
        let item = format!("{collection}/{id}");

        let got = api.get(&item).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text);
        assert_eq!(
            got.body, created.body,
            "{path}: what was saved is what is read"
        );
        assert_eq!(api.count(&collection).await, before + 1, "{path}");

        let mut changed = got.body.clone();
        for (k, v) in change.as_object().expect("object") {
            changed[k] = v.clone();
        }
        let put = api.put(&item, changed.clone()).await;
        assert_eq!(put.status, 200, "{path}: {}", put.text);
        assert_eq!(put.body["name"], change["name"], "{path}");
        let got = api.get(&item).await;
        assert_eq!(got.body["name"], change["name"], "{path}");

        let deleted = api.delete(&item).await;
        assert_eq!(deleted.status, 204, "{path}: {}", deleted.text);
        refused(&api.get(&item).await, 404, "not_found");
        refused(&api.delete(&item).await, 404, "not_found");
        assert_eq!(api.count(&collection).await, before, "{path}");
    }

    // A chosen id is kept, and cannot be taken twice.
    let r = api
        .post(
            "/api/v1/locations",
            json!({"id": "branch", "name": "Branch", "order": 5}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["id"], "branch");
    let r = api
        .post(
            "/api/v1/locations",
            json!({"id": "branch", "name": "Branch 2", "order": 6}),
        )
        .await;
    refused(&r, 409, "conflict");
    // The id in the path wins; a different one in the body is refused.
    let r = api
        .put(
            "/api/v1/locations/branch",
            json!({"id": "other", "name": "Branch", "order": 5}),
        )
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "id");

    // Every change is in the audit trail.
    let mut console = api.server.console();
    console.sign_in("admin", PASSWORD).await;
    let audit = console.get("/admin/system/audit").await.body;
    for action in [
        "pool.created",
        "pool.updated",
        "pool.deleted",
        "auth_server.created",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log"
        );
    }
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_and_nothing_is_saved() {
    let api = Api::start().await;
    let policies = api.count("/api/v1/policies").await;

    // What actix answers itself is JSON like every other API error.
    refused(&api.get("/api/v1/no-such-thing").await, 404, "no_such_path");
    refused(
        &api.delete("/api/v1/tokens").await,
        405,
        "method_not_allowed",
    );
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(9 << 20));
    let r = api
        .send_text("/api/v1/policies", "application/json", &huge)
        .await;
    refused(&r, 413, "payload_too_large");

    // Malformed JSON names the parser's problem.
    let r = api
        .send_text(
            "/api/v1/policies",
            "application/json",
            "{\"name\": \"x\",,}",
        )
        .await;
    refused(&r, 400, "malformed_json");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("line 1"),
        "{}",
        r.text
    );

    // A field of the wrong type.
    let r = api
        .post(
            "/api/v1/policies",
            json!({"name": "P", "entries": [{"pool_id": "x", "offer": "three"}]}),
        )
        .await;
    refused(&r, 400, "invalid");
    assert!(
        field_of(&r, "entries").contains("invalid type"),
        "{}",
        r.text
    );

    // A missing field, and an unknown enum value.
    let r = api.post("/api/v1/roles", json!({"console": {}})).await;
    refused(&r, 400, "invalid");
    assert!(field_of(&r, "name").contains("missing"), "{}", r.text);
    let r = api
        .post(
            "/api/v1/desktops",
            json!({"name": "d", "address": "10.0.0.1", "protocol": "telnet"}),
        )
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "protocol");

    // A rule of the model, and a reference to something missing.
    let r = api
        .post("/api/v1/policies", json!({"name": " ", "entries": []}))
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "name");
    let r = api
        .post(
            "/api/v1/policies",
            json!({"name": "P", "entries": [{"pool_id": "no-such-pool", "offer": 1}]}),
        )
        .await;
    refused(&r, 400, "invalid");
    assert!(field_of(&r, "entries[0].pool_id").contains("no-such-pool"));
    assert_eq!(
        api.count("/api/v1/policies").await,
        policies,
        "nothing saved"
    );

    // An update that is refused leaves the stored record as it was.
    let pool = api.post("/api/v1/pools", json!({"name": "Lab"})).await;
    let id = pool.body["id"].as_str().expect("id").to_string();
    let r = api
        .put(
            &format!("/api/v1/pools/{id}"),
            json!({"name": "Lab", "rules": [{"attribute": "name", "condition": "matches_regex",
                   "value": "(unclosed"}]}),
        )
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "rules[0].value");
    let stored = api.get(&format!("/api/v1/pools/{id}")).await;
    assert_eq!(stored.body, pool.body);

    // Desktop names are unique, whatever the case.
    let r = api
        .post(
            "/api/v1/desktops",
            json!({"name": "PC-1", "address": "10.0.0.1", "protocol": "rdp"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .post(
            "/api/v1/desktops",
            json!({"name": "pc-1", "address": "10.0.0.2", "protocol": "rdp"}),
        )
        .await;
    refused(&r, 400, "invalid");
    assert!(field_of(&r, "name").contains("already exists"));
    assert_eq!(api.count("/api/v1/desktops").await, 1);
}

#[tokio::test]
async fn deleting_what_is_in_use_or_built_in_is_refused() {
    let api = Api::start().await;
    let pool = api.post("/api/v1/pools", json!({"name": "Lab"})).await;
    let pool_id = pool.body["id"].as_str().expect("id").to_string();
    let plan = api
        .post("/api/v1/power-plans", json!({"name": "Keep on"}))
        .await;
    let plan_id = plan.body["id"].as_str().expect("id").to_string();
    let policy = api
        .post(
            "/api/v1/policies",
            json!({"name": "Lab users", "entries": [{"pool_id": pool_id, "offer": 1,
                   "power_plan": plan_id}]}),
        )
        .await;
    assert_eq!(policy.status, 201, "{}", policy.text);
    let policy_id = policy.body["id"].as_str().expect("id").to_string();

    let r = api.delete(&format!("/api/v1/pools/{pool_id}")).await;
    refused(&r, 409, "conflict");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("Lab users"),
        "{}",
        r.text
    );
    let r = api.delete(&format!("/api/v1/power-plans/{plan_id}")).await;
    refused(&r, 409, "conflict");

    // Built-ins stay.
    refused(
        &api.delete("/api/v1/roles/administrator").await,
        409,
        "conflict",
    );
    refused(&api.delete("/api/v1/locations/all").await, 409, "conflict");
    refused(
        &api.delete("/api/v1/protocol-plans/default").await,
        409,
        "conflict",
    );
    let r = api
        .put(
            "/api/v1/roles/user",
            json!({"name": "Renamed", "built_in": true}),
        )
        .await;
    refused(&r, 400, "invalid");

    // An assignment row keeps its role, location and policy.
    let location = api
        .post("/api/v1/locations", json!({"name": "Lab", "order": 1}))
        .await;
    let location_id = location.body["id"].as_str().expect("id").to_string();
    let server = api
        .post(
            "/api/v1/auth-servers",
            json!({"id": "ad", "name": "AD", "kind": "openldap", "domain": "EXAMPLE",
                   "hosts": [{"host": "127.0.0.1", "port": 1636}],
                   "base_dn": "dc=example,dc=com"}),
        )
        .await;
    assert_eq!(server.status, 201, "{}", server.text);
    let r = api
        .put(
            "/api/v1/assignments/ad",
            json!({"rows": [{"group": "staff", "location_id": location_id, "role_id": "nope",
                   "policy_id": policy_id}]}),
        )
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "rows[0].role_id");
    let r = api
        .put(
            "/api/v1/assignments/ad",
            json!({"rows": [{"group": "staff", "location_id": location_id, "role_id": "user",
                   "policy_id": policy_id}], "otherwise": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.delete(&format!("/api/v1/policies/{policy_id}")).await;
    refused(&r, 409, "conflict");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("AD"),
        "{}",
        r.text
    );
    refused(
        &api.delete(&format!("/api/v1/locations/{location_id}"))
            .await,
        409,
        "conflict",
    );
    refused(
        &api.get("/api/v1/assignments/no-such-server").await,
        404,
        "not_found",
    );

    // Deleting the server takes its table with it; then the policy can go, then the pool.
    assert_eq!(api.delete("/api/v1/auth-servers/ad").await.status, 204);
    assert_eq!(
        api.delete(&format!("/api/v1/policies/{policy_id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/v1/pools/{pool_id}")).await.status,
        204
    );
}

#[tokio::test]
async fn csv_import_takes_every_line_or_none() {
    let api = Api::start().await;
    let bad = "name,address,port,protocol\nok-1,10.0.0.1,,rdp\nbad-1,10.0.0.2,99999,rdp\n\
               bad-2,not an address,,rdp\n";
    let r = api
        .send_text("/api/v1/desktops/import", "text/csv", bad)
        .await;
    refused(&r, 400, "invalid");
    assert!(field_of(&r, "line 3").contains("port"), "{}", r.text);
    field_of(&r, "line 4");
    assert_eq!(api.count("/api/v1/desktops").await, 0, "nothing imported");

    let good = "name,address,protocol,os\nlab-1,10.0.0.1,rdp,Windows 11\nlab-2,10.0.0.2,vnc,\n";
    let r = api
        .send_text("/api/v1/desktops/import", "text/csv", good)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["imported"], 2);
    assert_eq!(api.count("/api/v1/desktops").await, 2);

    // The JSON form; a name taken by an imported desktop refuses the whole file.
    let r = api
        .post(
            "/api/v1/desktops/import",
            json!({"csv": "name,address\nlab-3,10.0.0.3\nLAB-1,10.0.0.9\n"}),
        )
        .await;
    refused(&r, 400, "invalid");
    assert!(
        field_of(&r, "line 3").contains("already exists"),
        "{}",
        r.text
    );
    assert_eq!(api.count("/api/v1/desktops").await, 2);
}

#[tokio::test]
async fn test_login_reports_the_whole_decision_and_assigns_nothing() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let api = Api::start().await;

    let mut server =
        serde_json::to_value(slapd.auth_server(gatehouse::model::directory::Security::Ldaps))
            .expect("json");
    let r = api.post("/api/v1/auth-servers", server.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["bind_password"], "", "the password is write-only");
    assert!(!r.text.contains(crate::slapd::SEARCH_PASSWORD));
    let got = api.get("/api/v1/auth-servers/slapd").await;
    assert!(
        !got.text.contains(crate::slapd::SEARCH_PASSWORD),
        "{}",
        got.text
    );
    let list = api.get("/api/v1/auth-servers").await;
    assert!(!list.text.contains(crate::slapd::SEARCH_PASSWORD));
    // An update without the password keeps it (test login below binds with it).
    server["bind_password"] = json!("");
    server["name"] = json!("Directory");
    // ... but never sends it to other hosts: moving them asks for the password again.
    let mut moved = server.clone();
    moved["hosts"] = json!([{"host": "203.0.113.9", "port": 636}]);
    let r = api.put("/api/v1/auth-servers/slapd", moved).await;
    refused(&r, 400, "invalid");
    assert!(
        field_of(&r, "bind_password").contains("type the password again"),
        "{}",
        r.text
    );
    let r = api.put("/api/v1/auth-servers/slapd", server).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let check = api.get("/api/v1/auth-servers/slapd/test").await;
    assert_eq!(check.status, 200, "{}", check.text);
    assert_eq!(check.body["ok"], true, "{}", check.text);
    let groups = api.get("/api/v1/auth-servers/slapd/groups").await;
    assert_eq!(groups.status, 200, "{}", groups.text);
    assert!(
        groups
            .body
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "generated")),
        "{}",
        groups.text
    );

    let location = api
        .post(
            "/api/v1/locations",
            json!({"id": "lab", "name": "Lab", "order": 1, "ranges": ["192.0.2.0/24"]}),
        )
        .await;
    assert_eq!(location.status, 201, "{}", location.text);
    let pool = api
        .post(
            "/api/v1/pools",
            json!({"id": "all-desktops", "name": "All"}),
        )
        .await;
    assert_eq!(pool.status, 201, "{}", pool.text);
    let r = api
        .send_text(
            "/api/v1/desktops/import",
            "text/csv",
            "name,address\nlab-1,10.0.0.1\nlab-2,10.0.0.2\n",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let policy = api
        .post(
            "/api/v1/policies",
            json!({"id": "lab", "name": "Lab", "entries": [{"pool_id": "all-desktops",
                   "offer": 1, "order": "by_name"}]}),
        )
        .await;
    assert_eq!(policy.status, 201, "{}", policy.text);
    let r = api
        .put(
            "/api/v1/assignments/slapd",
            json!({"rows": [
                {"group": "staff", "location_id": null, "role_id": "auditor", "policy_id": "default"},
                {"group": "generated", "location_id": "lab", "role_id": "user", "policy_id": "lab"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = api
        .post(
            "/api/v1/test-login",
            json!({"username": "EXAMPLE\\user00001", "client": {"address": "192.0.2.7"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let report = &r.body;
    assert_eq!(report["found"], true, "{}", r.text);
    assert_eq!(report["problem"], Value::Null, "{}", r.text);
    assert_eq!(report["server"]["id"], "slapd");
    assert_eq!(report["server"]["name"], "Directory");
    assert!(
        report["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "generated"))
    );
    assert_eq!(report["location"]["id"], "lab");
    assert_eq!(report["assignment"]["row"], 2);
    assert_eq!(report["assignment"]["group"], "generated");
    assert_eq!(report["role"]["id"], "user");
    assert_eq!(report["policy"]["id"], "lab");
    let desktops = report["desktops"].as_array().expect("desktops");
    assert_eq!(desktops.len(), 1, "{}", r.text);
    assert_eq!(desktops[0]["name"], "lab-1");
    assert_eq!(desktops[0]["yours"], false);

    // Nothing was assigned, no session started, the user is not remembered.
    let all = api.get("/api/v1/desktops").await;
    assert!(
        all.body
            .as_array()
            .expect("list")
            .iter()
            .all(|d| d["assigned_user"].is_null()),
        "{}",
        all.text
    );
    assert_eq!(api.count("/api/v1/sessions").await, 0);
    assert_eq!(api.count("/api/v1/users").await, 0);

    // From another address the Lab row does not match: no access, said as such.
    let r = api
        .post(
            "/api/v1/test-login",
            json!({"username": "user00002", "client": {"address": "198.51.100.1"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["problem"]["code"], "no_access", "{}", r.text);
    // Found but given nothing: the report still says who, from which server, in which groups
    // and location, so the administrator can see which row is missing.
    assert_eq!(r.body["found"], true, "{}", r.text);
    assert_eq!(r.body["server"]["id"], "slapd", "{}", r.text);
    assert_eq!(r.body["location"]["id"], "all", "{}", r.text);
    assert!(
        r.body["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "generated")),
        "{}",
        r.text
    );
    assert_eq!(r.body["assignment"], Value::Null, "{}", r.text);
    let r = api
        .post("/api/v1/test-login", json!({"username": "nobody-here"}))
        .await;
    assert_eq!(r.body["found"], false, "{}", r.text);
    assert_eq!(r.body["problem"]["code"], "unknown_user", "{}", r.text);
    let r = api
        .post(
            "/api/v1/test-login",
            json!({"username": "user00001", "client": {"address": "not-an-ip"}}),
        )
        .await;
    refused(&r, 400, "invalid");
    field_of(&r, "client.address");

    // The console's Users > Test login shows the same report.
    let mut c = api.server.console();
    c.sign_in("admin", PASSWORD).await;
    c.get("/admin/resources/users").await;
    let page = c
        .post(
            "/admin/resources/users/test",
            &[("username", "user00001"), ("address", "192.0.2.9")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    for expected in [
        "Directory (slapd)",
        "generated",
        "Lab (lab)",
        "row 2",
        "User (user)",
        "lab-1",
    ] {
        assert!(page.body.contains(expected), "{expected}: {}", page.body);
    }
    assert!(page.body.contains("Nothing was assigned"), "{}", page.body);
    assert_eq!(api.count("/api/v1/sessions").await, 0);
}

/// Fills a documented path's parameters.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "no-such-thing"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the server serves a route: anything but 405, or a 404 without the API's JSON
/// error (actix's own 404 for an unknown path has an empty body).
fn served(r: &Reply) -> bool {
    r.status != 405 && r.body["error"] != "no_such_path"
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes_served() {
    let api = Api::start().await;
    let doc = api.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    // Every path of the issue is there.
    for p in [
        "auth-servers",
        "locations",
        "roles",
        "protocol-plans",
        "power-plans",
        "release-plans",
        "policies",
        "pools",
        "desktops",
    ] {
        let collection = format!("/api/v1/{p}");
        for m in ["get", "post"] {
            assert!(paths[&collection][m].is_object(), "{m} {collection}");
        }
        let item = format!("{collection}/{{id}}");
        for m in ["get", "put", "delete"] {
            assert!(paths[&item][m].is_object(), "{m} {item}");
        }
    }
    for (m, p) in [
        ("post", "/api/v1/tokens"),
        ("get", "/api/v1/users"),
        ("get", "/api/v1/sessions"),
        ("post", "/api/v1/test-login"),
        ("post", "/api/v1/desktops/import"),
        ("get", "/api/v1/assignments/{server_id}"),
        ("put", "/api/v1/assignments/{server_id}"),
        ("post", "/api/v1/client/login"),
        ("get", "/api/v1/client/desktops"),
        ("post", "/api/v1/client/desktops/{id}/connect"),
        ("post", "/api/v1/client/desktops/{id}/release"),
        ("post", "/api/v1/client/logout"),
    ] {
        assert!(paths[p][m].is_object(), "{m} {p}");
    }

    // Every documented operation is served.
    let mut checked = 0;
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = matches!(m, Method::POST | Method::PUT).then(|| json!({}));
            let r = api.call(m, &concrete(path), body).await;
            assert!(served(&r), "{method} {path}: {} {}", r.status, r.text);
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} operations");

    // The check can fail: an undocumented path or method is not served.
    let r = api.get("/api/v1/no-such-endpoint").await;
    assert!(!served(&r), "{} {}", r.status, r.text);
    let r = api.call(Method::PATCH, "/api/v1/pools", None).await;
    assert!(!served(&r), "{} {}", r.status, r.text);

    // Every schema reference resolves.
    let schemas = doc.body["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for part in doc.text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| *c != '"').collect();
        assert!(schemas.contains_key(&name), "{name}");
    }
}

#[tokio::test]
async fn console_pages_list_create_refuse_and_delete_through_the_same_rules() {
    let api = Api::start().await;
    let mut c = api.server.console();
    let a = c.sign_in("admin", PASSWORD).await;
    assert_eq!(a.status, 303, "{}", a.body);

    let list = c.get("/admin/configuration/pools").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("New pool"), "{}", list.body);
    assert!(
        list.body.contains("/admin/configuration/assignments"),
        "the menu lists the pages"
    );
    let form = c.get("/admin/configuration/pools/new").await;
    assert_eq!(form.status, 200, "{}", form.body);

    // Without the CSRF token nothing is saved.
    let r = c
        .post_raw(
            "/admin/configuration/pools/new",
            &[("name", "Lab"), ("rules", "[]"), ("match_all", "on")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(api.count("/api/v1/pools").await, 0);

    // A refused field comes back on the form, with what was typed.
    let r = c
        .post(
            "/admin/configuration/pools/new",
            &[
                ("name", "Lab"),
                ("rules[0]", ""),
                ("rules[0].attribute", "name"),
                ("rules[0].condition", "matches_regex"),
                ("rules[0].value", "(unclosed"),
                ("description", "typed"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("data-field=\"rules[0].value\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("value=\"typed\""), "{}", r.body);
    let r = c
        .post(
            "/admin/configuration/pools/new",
            &[("name", " "), ("rules", "[]"), ("description", "")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("data-field=\"name\""), "{}", r.body);
    assert_eq!(api.count("/api/v1/pools").await, 0, "nothing saved");

    let r = c
        .post(
            "/admin/configuration/pools/new",
            &[
                ("name", "Lab"),
                ("rules", "[]"),
                ("match_all", "on"),
                ("description", ""),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location, "/admin/configuration/pools?notice=created");
    let pools = api.get("/api/v1/pools").await;
    let pool_id = pools.body[0]["id"].as_str().expect("saved").to_string();
    assert_eq!(pools.body[0]["name"], "Lab");
    let list = c.get("/admin/configuration/pools?notice=created").await;
    assert!(list.body.contains("Created."), "{}", list.body);
    assert!(list.body.contains("Available"), "pool counts are listed");

    // The edit form shows the stored values; saving goes through the same validation.
    let edit = c
        .get(&format!("/admin/configuration/pools/{pool_id}"))
        .await;
    assert!(edit.body.contains("value=\"Lab\""), "{}", edit.body);
    let r = c
        .post(
            &format!("/admin/configuration/pools/{pool_id}"),
            &[("name", "Lab pool"), ("rules", "[]"), ("description", "")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        api.get(&format!("/api/v1/pools/{pool_id}")).await.body["name"],
        "Lab pool"
    );

    // Delete with confirmation; refused while a policy uses the pool.
    let policy = api
        .post(
            "/api/v1/policies",
            json!({"name": "Lab users", "entries": [{"pool_id": pool_id, "offer": 1}]}),
        )
        .await;
    let policy_id = policy.body["id"].as_str().expect("id").to_string();
    let confirm = c
        .get(&format!("/admin/configuration/pools/{pool_id}/delete"))
        .await;
    assert!(
        confirm.body.contains("Delete the pool `Lab pool`?"),
        "{}",
        confirm.body
    );
    let r = c
        .post(&format!("/admin/configuration/pools/{pool_id}/delete"), &[])
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("Lab users"), "{}", r.body);
    c.get(&format!("/admin/configuration/policies/{policy_id}/delete"))
        .await;
    let r = c
        .post(
            &format!("/admin/configuration/policies/{policy_id}/delete"),
            &[],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = c
        .post(&format!("/admin/configuration/pools/{pool_id}/delete"), &[])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(api.count("/api/v1/pools").await, 0);

    // The audit trail names the console user's changes.
    let audit = c.get("/admin/system/audit").await.body;
    assert!(audit.contains("pool.deleted") && audit.contains("policy.deleted"));

    // Desktops: the CSV import is all or nothing here too.
    c.get("/admin/resources/desktops").await;
    let r = c
        .post_multipart(
            "/admin/resources/desktops/import",
            &[("csv", "name,address\nlab-1,10.0.0.1\nlab-2,10.0.0.300\n")],
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("line 3"), "{}", r.body);
    assert_eq!(api.count("/api/v1/desktops").await, 0);
    let r = c
        .post_multipart(
            "/admin/resources/desktops/import",
            &[],
            &[(
                "csv_file",
                "desktops.csv",
                b"name,address\nlab-1,10.0.0.1\nlab-2,10.0.0.2\n".to_vec(),
            )],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let list = c.get("/admin/resources/desktops").await;
    assert!(list.body.contains("lab-2"), "{}", list.body);

    // Authentication servers: the password is never on the page; the assignments page lets
    // rows be added and says when the directory's groups cannot be read.
    let r = api
        .post(
            "/api/v1/auth-servers",
            json!({"id": "dir", "name": "Directory", "kind": "openldap", "domain": "EXAMPLE",
                   "hosts": [{"host": "127.0.0.1", "port": 1}], "base_dn": "dc=example,dc=com",
                   "bind_dn": "cn=search,dc=example,dc=com", "bind_password": "Sekr1t-pw",
                   "connect_timeout_secs": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let edit = c.get("/admin/setup/auth-servers/dir").await;
    assert_eq!(edit.status, 200, "{}", edit.body);
    assert!(!edit.body.contains("Sekr1t-pw"));
    assert!(edit.body.contains("Test connection"));
    let r = c.post("/admin/setup/auth-servers/dir/test", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("FAILED"), "{}", r.body);

    let list = c.get("/admin/configuration/assignments").await;
    assert!(list.body.contains("Directory"), "{}", list.body);
    let form = c.get("/admin/configuration/assignments/dir").await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(
        form.body.contains("groups could not be read"),
        "{}",
        form.body
    );
    let r = c
        .post(
            "/admin/configuration/assignments/dir",
            &[
                ("rows[0]", ""),
                ("rows[0].group", "staff"),
                ("rows[0].location_id", ""),
                ("rows[0].role_id", "nope"),
                ("rows[0].policy_id", "default"),
                ("otherwise.role_id", ""),
                ("otherwise.policy_id", ""),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("there is no role"), "{}", r.body);
    let r = c
        .post(
            "/admin/configuration/assignments/dir",
            &[
                ("rows[0]", ""),
                ("rows[0].group", "staff"),
                ("rows[0].location_id", ""),
                ("rows[0].role_id", "user"),
                ("rows[0].policy_id", "default"),
                ("otherwise.role_id", "auditor"),
                ("otherwise.policy_id", "default"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let table = api.get("/api/v1/assignments/dir").await;
    assert_eq!(
        table.body["rows"].as_array().map(Vec::len),
        Some(1),
        "{}",
        table.text
    );
    assert_eq!(table.body["rows"][0]["group"], "staff");
    assert_eq!(table.body["otherwise"], json!(["auditor", "default"]));

    // A built-in role can be edited (not renamed) on its form.
    let form = c.get("/admin/configuration/roles/user").await;
    assert!(form.body.contains("value=\"User\""), "{}", form.body);
    let fields = [
        ("name", "User"),
        ("may_connect", "on"),
        ("may_restart", "on"),
        ("console.dashboard", "none"),
        ("console.setup", "none"),
        ("console.configuration", "none"),
        ("console.resources", "none"),
        ("console.system", "none"),
    ];
    let r = c.post("/admin/configuration/roles/user", &fields).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let role = api.get("/api/v1/roles/user").await;
    assert_eq!(role.body["built_in"], true);
    assert_eq!(role.body["may_restart"], true);
    assert_eq!(role.body["may_release"], false);
    let r = c
        .post("/admin/configuration/roles/user", &[("name", "Renamed")])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("cannot be renamed"), "{}", r.body);

    let users = c.get("/admin/resources/users").await;
    assert_eq!(users.status, 200, "{}", users.body);
    assert!(users.body.contains("Test login"), "{}", users.body);
}

#[tokio::test]
async fn racing_changes_never_leave_a_policy_naming_a_deleted_pool() {
    let api = std::sync::Arc::new(Api::start().await);
    for round in 0..15 {
        let pool = api
            .post("/api/v1/pools", json!({"name": format!("Race {round}")}))
            .await;
        assert_eq!(pool.status, 201, "{}", pool.text);
        let pool_id = pool.body["id"].as_str().expect("pool id").to_string();
        let (deleter, creator) = (api.clone(), api.clone());
        let path = format!("/api/v1/pools/{pool_id}");
        let delete = tokio::spawn(async move { deleter.delete(&path).await.status });
        let policy = json!({
            "name": format!("Race policy {round}"),
            "entries": [{"pool_id": pool_id, "offer": 1}]
        });
        let create =
            tokio::spawn(async move { creator.post("/api/v1/policies", policy).await.status });
        let (deleted, created) = (delete.await.expect("task"), create.await.expect("task"));
        // One of the two wins; never both.
        assert!(
            (deleted == 204 && created == 400) || (created == 201 && deleted == 409),
            "round {round}: delete {deleted}, create {created}"
        );
    }
    let pools = api.get("/api/v1/pools").await.body;
    let ids: Vec<&str> = pools
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    for policy in api
        .get("/api/v1/policies")
        .await
        .body
        .as_array()
        .expect("policies")
    {
        for entry in policy["entries"].as_array().expect("entries") {
            let pool = entry["pool_id"].as_str().expect("pool id");
            assert!(
                ids.contains(&pool),
                "policy {} names deleted pool {pool}",
                policy["name"]
            );
        }
    }
}
