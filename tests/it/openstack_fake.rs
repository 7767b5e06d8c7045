//! A loopback OpenStack for what the real lab cannot show: listings over several pages,
//! tokens that expire or are revoked, TLS with a private CA, a catalog without a service or
//! region, a cloud that is too old, the clouds' own error messages, and failures on command:
//! an answer replaced by an error (500, quota exceeded, …) or by no answer at all, and builds
//! that end in ERROR or never end.
//!
//! [`Fake`] is an actix-web server on 127.0.0.1:0 (plain or TLS) answering with the samples
//! in `tests/fixtures/openstack/` (the providers' published shapes, recorded from the lab),
//! and keeping state: tokens it issued, servers created, stopped, started and deleted, and a
//! log of every request. Keystone is at `/identity/v3`; the catalog points at `/compute/v2.1`,
//! `/image/v2/` (the client strips the version), `/network/` and `/volume/v3/{project}`.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use gatehouse::model::center::{Center, Interface};
use gatehouse::model::desktop::PowerState;
use gatehouse::openstack::{
    BootVolume, Cloud, Error, Networks, NewServer, PowerAction, RENEW_BEFORE, Service, Timeouts,
    test_connection,
};

use crate::common::install_crypto;

#[path = "../fixtures/openstack/samples.rs"]
mod samples;
use samples::sample;

const PROJECT_ID: &str = "36c5ee8a36ae4ce5bd8be4acbacb251b";
const USER: &str = "vdi-user";
const PASSWORD: &str = "secret";
const DOMAIN: &str = "vdi";
const PROJECT: &str = "vdi-project";

/// How the fake behaves.
#[derive(Clone)]
pub struct FakeOptions {
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<(String, String)>,
    /// Nova's `max_limit` and Glance's page size.
    pub page_size: usize,
    pub token_lifetime: Duration,
    /// The catalog's service types.
    pub services: Vec<&'static str>,
    /// Nova's newest microversion (minor part of 2.x).
    pub max_microversion: u32,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            tls: None,
            page_size: 1000,
            token_lifetime: Duration::hours(4),
            services: vec!["compute", "image", "network"],
            max_microversion: 104,
        }
    }
}

/// What the fake does with a request it was told to fail (see [`Fake::fail`]).
#[derive(Clone, Debug)]
pub enum Failure {
    /// Answers with Nova's error shape: status, kind and message.
    Status(u16, &'static str, String),
    /// Never answers.
    Hang,
}

/// How new servers' builds go.
#[derive(Clone, Debug, Default)]
pub enum Build {
    /// ACTIVE at once (as the lab's fake driver is, a moment later).
    #[default]
    Active,
    /// BUILD for ever.
    Stuck,
    /// ERROR, with this fault message.
    Error(&'static str),
}

#[derive(Default)]
struct State {
    tokens: HashSet<String>,
    logins: usize,
    /// Services refuse every token (Keystone still issues them).
    refuse_all: bool,
    servers: Vec<Value>,
    /// The last `POST /servers` body.
    last_create: Option<Value>,
    /// Requests to fail: (part of `METHOD path`, times left, how).
    failures: Vec<(String, usize, Failure)>,
    build: Build,
    /// `METHOD path?query STATUS`, in order.
    log: Vec<String>,
}

struct Shared {
    options: FakeOptions,
    base: String,
    state: Mutex<State>,
}

pub struct Fake {
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    pub fn start(options: FakeOptions) -> Fake {
        install_crypto();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("address").port();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let shared = Arc::new(Shared {
            base: format!("{scheme}://127.0.0.1:{port}"),
            options: options.clone(),
            state: Mutex::new(State::default()),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals();
        let server = match &options.tls {
            Some((chain, key)) => server
                .listen_rustls_0_23(listener, server_tls(chain, key))
                .expect("TLS listener"),
            None => server.listen(listener).expect("listener"),
        }
        .run();
        let handle = server.handle();
        let thread = std::thread::spawn(move || {
            let _ = actix_web::rt::System::new().block_on(server);
        });
        Fake {
            shared,
            handle,
            thread: Some(thread),
        }
    }

    /// Keystone's v3 address.
    pub fn keystone(&self) -> String {
        format!("{}/identity/v3", self.shared.base)
    }

    /// A center for the fake's user and project.
    pub fn center(&self) -> Center {
        Center {
            id: "fake".into(),
            name: "Fake cloud".into(),
            auth_url: self.keystone(),
            project_domain: DOMAIN.into(),
            project: PROJECT.into(),
            user_domain: DOMAIN.into(),
            username: USER.into(),
            password: PASSWORD.into(),
            ..Center::default()
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("fake state")
    }

    pub fn logins(&self) -> usize {
        self.state().logins
    }

    /// Forgets every token issued so far (as a Keystone restart with new keys does).
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    pub fn refuse_all_tokens(&self) {
        self.state().refuse_all = true;
    }

    /// The requests so far whose line contains `part`.
    pub fn requests(&self, part: &str) -> Vec<String> {
        self.state()
            .log
            .iter()
            .filter(|l| l.contains(part))
            .cloned()
            .collect()
    }

    pub fn last_create(&self) -> Option<Value> {
        self.state().last_create.clone()
    }

    /// Fails the next `times` requests whose `METHOD path` contains `part`.
    pub fn fail(&self, part: &str, times: usize, failure: Failure) {
        self.state()
            .failures
            .push((part.to_string(), times, failure));
    }

    /// Makes the builds of servers created from now on go as `build` says.
    pub fn set_build(&self, build: Build) {
        self.state().build = build;
    }

    /// The servers the fake holds: (id, name, status).
    pub fn servers(&self) -> Vec<(String, String, String)> {
        self.state()
            .servers
            .iter()
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                (field("id"), field("name"), field("status"))
            })
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        // The stop command is sent when `stop` is called; its future only waits for the end.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn server_tls(chain: &str, key: &str) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config")
}

/// A private CA and a server certificate it signed for `names`: (CA PEM, chain PEM, key PEM).
pub fn private_ca(names: &[&str]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse Test Cloud CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("server params");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

// ---- The fake's answers ----------------------------------------------------------------------

struct Reply {
    status: u16,
    body: Option<Value>,
    subject_token: Option<String>,
    location: Option<String>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body: Some(body),
        subject_token: None,
        location: None,
    }
}

fn empty(status: u16) -> Reply {
    Reply {
        status,
        body: None,
        subject_token: None,
        location: None,
    }
}

/// Nova's, Cinder's error shape: `{"<kind>": {"code": …, "message": …}}`.
fn fault(status: u16, kind: &str, message: &str) -> Reply {
    reply(
        status,
        json!({ kind: {"code": status, "message": message} }),
    )
}

fn unauthorized() -> Reply {
    reply(
        401,
        json!({"error": {"code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}}),
    )
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = {
        let mut state = shared.state.lock().expect("fake state");
        let request = format!("{} {}", req.method(), req.path());
        let scripted = state
            .failures
            .iter_mut()
            .find(|(part, left, _)| *left > 0 && request.contains(part.as_str()))
            .map(|(_, left, failure)| {
                *left -= 1;
                failure.clone()
            });
        let reply = match scripted {
            Some(Failure::Hang) => None,
            Some(Failure::Status(status, kind, message)) => Some(fault(status, kind, &message)),
            None => Some(route(&shared, &mut state, &req, &query, &body)),
        };
        let status = reply
            .as_ref()
            .map_or("hung".to_string(), |r| r.status.to_string());
        state
            .log
            .push(format!("{} {} {status}", req.method(), req.uri()));
        reply
    };
    let Some(reply) = reply else {
        // Told to hang: the caller's timeout ends it.
        std::future::pending::<()>().await;
        unreachable!("a pending future never ends")
    };
    let mut out =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).expect("status"));
    if let Some(token) = reply.subject_token {
        out.insert_header(("X-Subject-Token", token));
    }
    if let Some(location) = reply.location {
        out.insert_header(("Location", location));
    }
    match reply.body {
        Some(body) => out.json(body),
        None => out.finish(),
    }
}

fn route(
    shared: &Shared,
    state: &mut State,
    req: &HttpRequest,
    query: &[(String, String)],
    body: &Value,
) -> Reply {
    let method = req.method().as_str();
    let path = req.path();
    if path == "/identity/v3/auth/tokens" && method == "POST" {
        return login(shared, state, body);
    }
    // An old address that moved (as http:// moving to https:// does).
    if let Some(rest) = path.strip_prefix("/moved") {
        return Reply {
            location: Some(format!("{}{rest}", shared.base)),
            ..empty(301)
        };
    }
    let token = req
        .headers()
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token_ok = state.tokens.contains(token);
    if path == "/identity/v3/auth/projects" {
        return if token_ok {
            reply(200, sample("projects"))
        } else {
            unauthorized()
        };
    }
    if !token_ok || state.refuse_all {
        return unauthorized();
    }
    if let Some(rest) = path.strip_prefix("/compute/v2.1") {
        let version = req
            .headers()
            .get("OpenStack-API-Version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("compute 2."))
            .and_then(|v| v.parse::<u32>().ok());
        let Some(minor) = version else {
            return fault(
                400,
                "badRequest",
                "the fake needs an OpenStack-API-Version header",
            );
        };
        if minor > shared.options.max_microversion {
            return fault(
                406,
                "computeFault",
                &format!(
                    "Version 2.{minor} is not supported by the API. Minimum is 2.1 and maximum \
                     is 2.{}.",
                    shared.options.max_microversion
                ),
            );
        }
        return compute(shared, state, method, rest, query, body);
    }
    if path == "/image/v2/images" && method == "GET" {
        return images(shared, query);
    }
    if path == "/network/v2.0/networks" && method == "GET" {
        return reply(200, sample("networks"));
    }
    if path == "/network/v2.0/security-groups" && method == "GET" {
        let Some((_, project)) = query.iter().find(|(k, _)| k == "project_id") else {
            return fault(400, "NeutronError", "the fake wants a project_id filter");
        };
        let mut groups = sample("security_groups");
        if let Some(list) = groups["security_groups"].as_array_mut() {
            list.retain(|g| g["project_id"] == project.as_str());
        }
        return reply(200, groups);
    }
    if path == format!("/volume/v3/{PROJECT_ID}/types") && method == "GET" {
        return reply(200, sample("volume_types"));
    }
    reply(
        404,
        json!({"error": {"code": 404, "message": format!("the fake has no {method} {path}")}}),
    )
}

fn login(shared: &Shared, state: &mut State, body: &Value) -> Reply {
    let user = &body["auth"]["identity"]["password"]["user"];
    if user["name"] != USER || user["domain"]["name"] != DOMAIN || user["password"] != PASSWORD {
        return unauthorized();
    }
    let scope = &body["auth"]["scope"]["project"];
    let scoped = !scope.is_null();
    if scoped && (scope["name"] != PROJECT || scope["domain"]["name"] != DOMAIN) {
        return unauthorized();
    }
    state.logins += 1;
    let value = format!("fake-token-{}", uuid::Uuid::new_v4().simple());
    state.tokens.insert(value.clone());
    let mut token = sample("token");
    let now = Utc::now();
    token["token"]["issued_at"] = json!(now.to_rfc3339());
    token["token"]["expires_at"] = json!((now + shared.options.token_lifetime).to_rfc3339());
    if scoped {
        token["token"]["catalog"] = catalog(shared);
    } else {
        let t = token["token"].as_object_mut().expect("token object");
        t.remove("project");
        t.remove("catalog");
    }
    Reply {
        status: 201,
        body: Some(token),
        subject_token: Some(value),
        location: None,
    }
}

fn catalog(shared: &Shared) -> Value {
    let base = &shared.base;
    let endpoint = |url: String| {
        json!([{"id": uuid::Uuid::new_v4().simple().to_string(), "interface": "public",
                "region": "RegionOne", "region_id": "RegionOne", "url": url}])
    };
    let mut entries = vec![json!({"type": "identity", "name": "keystone", "id": "k",
        "endpoints": endpoint(format!("{base}/identity/v3/"))})];
    for service in &shared.options.services {
        let url = match *service {
            "compute" => format!("{base}/compute/v2.1"),
            "image" => format!("{base}/image/v2/"),
            "network" => format!("{base}/network/"),
            "volumev3" => format!("{base}/volume/v3/{PROJECT_ID}"),
            other => panic!("the fake has no {other} service"),
        };
        entries.push(json!({"type": service, "name": service, "id": service,
            "endpoints": endpoint(url)}));
    }
    Value::Array(entries)
}

fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One page of `items` after `marker`, at most `limit` (capped at the page size) long; `None`
/// when the marker is unknown. The bool says whether more follow.
fn page(
    items: &[Value],
    shared: &Shared,
    query: &[(String, String)],
) -> Option<(Vec<Value>, bool)> {
    let limit = param(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX)
        .min(shared.options.page_size);
    let start = match param(query, "marker") {
        Some(marker) => items.iter().position(|s| s["id"] == marker)? + 1,
        None => 0,
    };
    let end = (start + limit).min(items.len());
    Some((items[start..end].to_vec(), end < items.len()))
}

fn images(shared: &Shared, query: &[(String, String)]) -> Reply {
    let all = sample("images")["images"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some((items, more)) = page(&all, shared, query) else {
        return reply(400, json!({"message": "marker not found"}));
    };
    let mut body = json!({"images": items, "first": "/v2/images", "schema": "/v2/schemas/images"});
    if more && let Some(last) = items.last() {
        body["next"] = json!(format!(
            "/v2/images?marker={}",
            last["id"].as_str().unwrap_or("")
        ));
    }
    reply(200, body)
}

fn compute(
    shared: &Shared,
    state: &mut State,
    method: &str,
    rest: &str,
    query: &[(String, String)],
    body: &Value,
) -> Reply {
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["servers", "detail"]) => {
            let Some((items, more)) = page(&state.servers, shared, query) else {
                let marker = param(query, "marker").unwrap_or_default();
                return fault(400, "badRequest", &format!("marker [{marker}] not found"));
            };
            let mut body = json!({ "servers": items });
            if more && let Some(last) = items.last() {
                // The host is the one Nova believes it has: not the caller's.
                let limit = param(query, "limit")
                    .map(|l| format!("limit={l}&"))
                    .unwrap_or_default();
                body["servers_links"] = json!([{"rel": "next", "href": format!(
                    "https://nova.behind-a-proxy.invalid/v2.1/servers/detail?{limit}marker={}",
                    last["id"].as_str().unwrap_or_default()
                )}]);
            }
            reply(200, body)
        }
        ("GET", ["servers", id]) => match state.servers.iter().find(|s| s["id"] == *id) {
            Some(s) => reply(200, json!({ "server": s })),
            None => not_found(id),
        },
        ("POST", ["servers"]) => create(state, body),
        ("POST", ["servers", id, "action"]) => action(state, id, body),
        ("DELETE", ["servers", id]) => {
            let before = state.servers.len();
            state.servers.retain(|s| s["id"] != *id);
            if state.servers.len() < before {
                empty(204)
            } else {
                not_found(id)
            }
        }
        ("GET", ["flavors", "detail"]) => reply(200, sample("flavors")),
        ("GET", ["os-availability-zone"]) => reply(200, sample("zones")),
        _ => fault(
            404,
            "itemNotFound",
            &format!("the fake has no {method} {rest}"),
        ),
    }
}

fn not_found(id: &str) -> Reply {
    fault(
        404,
        "itemNotFound",
        &format!("Instance {id} could not be found."),
    )
}

fn create(state: &mut State, body: &Value) -> Reply {
    state.last_create = Some(body.clone());
    let new = &body["server"];
    let flavors = sample("flavors");
    let Some(flavor) = flavors["flavors"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["id"] == new["flavorRef"]))
        .cloned()
    else {
        return fault(400, "badRequest", "Invalid flavorRef provided.");
    };
    if new["networks"].is_null() {
        return fault(
            400,
            "badRequest",
            "Invalid input for field/attribute server. Value: … 'networks' is a required \
             property",
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut server = sample("server");
    server["id"] = json!(id);
    server["name"] = new["name"].clone();
    server["metadata"] = if new["metadata"].is_object() {
        new["metadata"].clone()
    } else {
        json!({})
    };
    server["OS-EXT-AZ:availability_zone"] =
        json!(new["availability_zone"].as_str().unwrap_or("nova"));
    server["flavor"] = json!({"vcpus": flavor["vcpus"], "ram": flavor["ram"],
        "disk": flavor["disk"], "ephemeral": 0, "swap": 0,
        "original_name": flavor["name"], "extra_specs": {}});
    server["image"] = match new["imageRef"].as_str() {
        Some(image) => json!({"id": image, "links": []}),
        None => json!(""),
    };
    if new["networks"] == "none" {
        server["addresses"] = json!({});
    }
    match &state.build {
        Build::Active => {}
        Build::Stuck => {
            server["status"] = json!("BUILD");
            server["OS-EXT-STS:vm_state"] = json!("building");
            server["OS-EXT-STS:task_state"] = json!("spawning");
            server["OS-EXT-STS:power_state"] = json!(0);
            server["addresses"] = json!({});
        }
        Build::Error(message) => {
            server["status"] = json!("ERROR");
            server["OS-EXT-STS:vm_state"] = json!("error");
            server["OS-EXT-STS:power_state"] = json!(0);
            server["addresses"] = json!({});
            server["fault"] = json!({"code": 500, "message": message,
                "created": Utc::now().to_rfc3339()});
        }
    }
    state.servers.push(server);
    reply(
        202,
        json!({"server": {"id": id, "links": [], "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}], "adminPass": "fake-pass"}}),
    )
}

fn action(state: &mut State, id: &str, body: &Value) -> Reply {
    let Some(server) = state.servers.iter_mut().find(|s| s["id"] == id) else {
        return not_found(id);
    };
    let Some(name) = body.as_object().and_then(|o| o.keys().next()).cloned() else {
        return fault(400, "badRequest", "no action");
    };
    // (needed status, new status, new vm_state, new power state)
    let (needs, status, vm, power) = match name.as_str() {
        "os-stop" => ("ACTIVE", "SHUTOFF", "stopped", 4),
        "os-start" => ("SHUTOFF", "ACTIVE", "active", 1),
        "reboot" => ("ACTIVE", "ACTIVE", "active", 1),
        "suspend" => ("ACTIVE", "SUSPENDED", "suspended", 7),
        "resume" => ("SUSPENDED", "ACTIVE", "active", 1),
        other => return fault(400, "badRequest", &format!("unknown action {other}")),
    };
    if server["status"] != needs {
        let short = name.trim_start_matches("os-");
        return fault(
            409,
            "conflictingRequest",
            &format!(
                "Cannot '{short}' instance {id} while it is in vm_state {}",
                server["OS-EXT-STS:vm_state"].as_str().unwrap_or("unknown")
            ),
        );
    }
    server["status"] = json!(status);
    server["OS-EXT-STS:vm_state"] = json!(vm);
    server["OS-EXT-STS:power_state"] = json!(power);
    empty(202)
}

// ---- Tests -----------------------------------------------------------------------------------

fn tiny_cirros(n: usize) -> NewServer {
    NewServer::new(
        format!("pc-{n:02}"),
        "31611de0-81bf-460f-9cc7-5a7e51764da9",
        "0058f54d-19ce-4f3f-abda-e6669e785392",
    )
}

#[tokio::test]
async fn fake_listings_follow_every_page() {
    let fake = Fake::start(FakeOptions {
        page_size: 2,
        ..FakeOptions::default()
    });
    let cloud = Cloud::new(&fake.center()).expect("cloud");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(cloud.create_server(&tiny_cirros(n)).await.expect("created"));
    }

    let servers = cloud.servers().await.expect("servers");
    let listed: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(listed, ids, "all five, in order, once each");
    let pages = fake.requests("/servers/detail");
    assert_eq!(pages.len(), 3, "2 + 2 + 1: {pages:#?}");
    assert!(
        pages[1].contains(&format!("marker={}", ids[1])),
        "{pages:#?}"
    );
    assert!(
        pages[2].contains(&format!("marker={}", ids[3])),
        "{pages:#?}"
    );
    assert!(
        !pages.iter().any(|p| p.contains("behind-a-proxy")),
        "the next link's host is not followed"
    );

    // Glance's own kind of next link, from the service root.
    let images = cloud.images().await.expect("images");
    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["fake-cirros", "Ubuntu 24.04 desktop", "Windows 11 golden"]
    );
    assert_eq!(fake.requests("GET /image/v2/images").len(), 2);

    // The whole inventory: the other project's network is left out, the external one kept,
    // and the other project's security group filtered by the cloud.
    let inventory = cloud.inventory().await.expect("inventory");
    assert_eq!(inventory.servers.len(), 5);
    let networks: Vec<&str> = inventory.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(networks, ["desktops", "public"]);
    let groups: Vec<&str> = inventory
        .security_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(groups, ["default", "rdp"]);
    let fields = inventory.desktop_fields(&inventory.servers[0]);
    assert_eq!(fields.image, "fake-cirros");
    assert_eq!(fields.flavor, "m1.tiny");
    assert_eq!(
        inventory.servers[0].flavor_id.as_deref(),
        Some("31611de0-81bf-460f-9cc7-5a7e51764da9")
    );
    assert_eq!(fake.logins(), 1, "one token for everything");
}

#[tokio::test]
async fn fake_a_token_is_kept_until_near_its_expiry() {
    // Long-lived tokens: one login for many calls.
    let fake = Fake::start(FakeOptions::default());
    let cloud = Cloud::new(&fake.center()).expect("cloud");
    cloud.zones().await.expect("zones");
    cloud.flavors().await.expect("flavors");
    cloud.servers().await.expect("servers");
    assert_eq!(fake.logins(), 1);

    // Tokens that live less than the renewal margin: renewed before each use.
    let fake = Fake::start(FakeOptions {
        token_lifetime: RENEW_BEFORE - Duration::minutes(1),
        ..FakeOptions::default()
    });
    let cloud = Cloud::new(&fake.center()).expect("cloud");
    cloud.zones().await.expect("zones");
    assert_eq!(fake.logins(), 1);
    cloud.zones().await.expect("zones");
    cloud.flavors().await.expect("flavors");
    assert_eq!(fake.logins(), 3, "renewed before each call");
    assert!(
        fake.requests(" 401").is_empty(),
        "renewal happens before a call, not after a refusal"
    );
}

#[tokio::test]
async fn fake_a_refused_token_is_renewed_and_the_call_repeated_once() {
    let fake = Fake::start(FakeOptions::default());
    let cloud = Cloud::new(&fake.center()).expect("cloud");
    let id = cloud.create_server(&tiny_cirros(1)).await.expect("created");
    assert_eq!(fake.logins(), 1);

    fake.revoke_tokens();
    cloud
        .power(&id, PowerAction::Stop)
        .await
        .expect("stopped after a new login");
    assert_eq!(fake.logins(), 2);
    let stops = fake.requests(&format!("POST /compute/v2.1/servers/{id}/action"));
    assert_eq!(stops.len(), 2, "{stops:#?}");
    assert!(stops[0].ends_with(" 401") && stops[1].ends_with(" 202"));
    let server = cloud.server(&id).await.expect("read").expect("exists");
    assert_eq!(server.power_state, PowerState::Stopped);

    // A cloud that refuses every token: one more login, one repeat, then the error.
    fake.refuse_all_tokens();
    let err = cloud.zones().await.expect_err("refused");
    match &err {
        Error::Cloud {
            service, status, ..
        } => assert_eq!((*service, *status), (Service::Compute, 401)),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.logins(), 3, "no loop of logins");
    assert_eq!(fake.requests("os-availability-zone").len(), 2);
}

#[tokio::test]
async fn fake_tls_with_a_private_ca() {
    let (ca, chain, key) = private_ca(&["localhost", "127.0.0.1"]);
    let fake = Fake::start(FakeOptions {
        tls: Some((chain, key)),
        ..FakeOptions::default()
    });
    assert!(fake.keystone().starts_with("https://"));

    // The system's CAs do not know it.
    let err = test_connection(&fake.center())
        .await
        .expect_err("untrusted");
    match &err {
        Error::Tls { url, detail } => {
            assert!(url.starts_with(&fake.keystone()), "{url}");
            assert!(
                detail.contains("authority Gatehouse does not know"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "tls");
    assert!(err.to_string().contains("paste the cloud's CA certificate"));

    // Another CA is no better.
    let mut center = fake.center();
    center.ca_pem = Some(private_ca(&["localhost"]).0);
    let err = test_connection(&center).await.expect_err("untrusted");
    assert_eq!(err.code(), "tls", "{err}");

    // Its own CA pasted: everything works over TLS.
    let mut center = fake.center();
    center.ca_pem = Some(ca);
    let summary = test_connection(&center).await.expect("trusted");
    assert!(summary.compute_url.starts_with("https://127.0.0.1:"));
    assert_eq!(summary.flavors, 4);
    assert!(summary.warnings.iter().all(|w| !w.contains("plain http")));

    // "Do not verify": works, with a warning.
    let mut center = fake.center();
    center.insecure = true;
    let summary = test_connection(&center).await.expect("unchecked");
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("verification is off")),
        "{:?}",
        summary.warnings
    );
}

#[tokio::test]
async fn fake_tls_certificate_for_another_name() {
    let (ca, chain, key) = private_ca(&["cloud.example.com"]);
    let fake = Fake::start(FakeOptions {
        tls: Some((chain, key)),
        ..FakeOptions::default()
    });
    let mut center = fake.center();
    center.ca_pem = Some(ca);
    match test_connection(&center).await {
        Err(Error::Tls { detail, .. }) => {
            assert!(
                detail.contains("not made out to this host name"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn fake_catalog_without_a_service_region_or_interface() {
    let fake = Fake::start(FakeOptions {
        services: vec!["compute", "image"],
        ..FakeOptions::default()
    });
    let err = test_connection(&fake.center())
        .await
        .expect_err("no network");
    match &err {
        Error::MissingService { service } => assert_eq!(*service, Service::Network),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("Neutron (network)"), "{err}");

    let fake = Fake::start(FakeOptions::default());
    let mut center = fake.center();
    center.region = "RegionTwo".into();
    let err = test_connection(&center).await.expect_err("no such region");
    match &err {
        Error::Catalog {
            service,
            region,
            offered,
            ..
        } => {
            assert_eq!(*service, Service::Compute);
            assert_eq!(region, "RegionTwo");
            assert_eq!(offered, "RegionOne/public");
        }
        other => panic!("{other:?}"),
    }
    let mut center = fake.center();
    center.interface = Interface::Internal;
    let err = test_connection(&center)
        .await
        .expect_err("no internal endpoints");
    assert_eq!(err.code(), "catalog", "{err}");
    assert!(err.to_string().contains("interface `internal`"), "{err}");
}

#[tokio::test]
async fn fake_block_storage_is_optional() {
    let fake = Fake::start(FakeOptions::default());
    let summary = test_connection(&fake.center()).await.expect("works");
    assert_eq!(summary.volume_url, None);
    assert_eq!(summary.volume_types, 0);
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("no block storage")),
        "{:?}",
        summary.warnings
    );

    let fake = Fake::start(FakeOptions {
        services: vec!["compute", "image", "network", "volumev3"],
        ..FakeOptions::default()
    });
    let cloud = Cloud::new(&fake.center()).expect("cloud");
    let types = cloud.volume_types().await.expect("types");
    let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["__DEFAULT__", "ssd"]);

    // A desktop on a new volume of type ssd: the mapping Nova gets.
    let mut new = tiny_cirros(7);
    new.networks = Networks::Ids(vec!["f65d3b8c-0dd5-4092-beeb-2edba937a5be".into()]);
    new.security_groups = vec!["rdp".into()];
    new.boot_volume = Some(BootVolume {
        size_gb: 30,
        volume_type: Some("ssd".into()),
        delete_on_termination: true,
    });
    cloud.create_server(&new).await.expect("created");
    let sent = fake.last_create().expect("a create");
    let bdm = &sent["server"]["block_device_mapping_v2"][0];
    assert_eq!(bdm["volume_type"], "ssd");
    assert_eq!(bdm["volume_size"], 30);
    assert_eq!(bdm["source_type"], "image");
    assert_eq!(bdm["destination_type"], "volume");
    assert!(sent["server"].get("imageRef").is_none());
    assert_eq!(
        sent["server"]["networks"],
        json!([{"uuid": "f65d3b8c-0dd5-4092-beeb-2edba937a5be"}])
    );
}

#[tokio::test]
async fn fake_cloud_messages_come_through() {
    let fake = Fake::start(FakeOptions::default());
    let cloud = Cloud::new(&fake.center()).expect("cloud");

    let mut bad = tiny_cirros(1);
    bad.flavor = "no-such-flavor".into();
    match cloud.create_server(&bad).await {
        Err(Error::Cloud {
            service,
            status,
            message,
        }) => {
            assert_eq!((service, status), (Service::Compute, 400));
            assert_eq!(message, "Invalid flavorRef provided.");
        }
        other => panic!("{other:?}"),
    }

    match cloud.power("no-such-server", PowerAction::Start).await {
        Err(e) => {
            assert!(e.is_not_found(), "{e}");
            assert_eq!(
                e.to_string(),
                "Nova (compute) refused the request (HTTP 404): Instance no-such-server \
                 could not be found."
            );
        }
        Ok(()) => panic!("started a server that does not exist"),
    }
    assert_eq!(
        cloud.server("no-such-server").await.expect("read"),
        None,
        "an unknown server is none, not an error"
    );

    let id = cloud.create_server(&tiny_cirros(2)).await.expect("created");
    match cloud.power(&id, PowerAction::Resume).await {
        Err(Error::Cloud {
            status: 409,
            message,
            ..
        }) => assert!(message.contains("Cannot 'resume' instance"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Refused before anything is sent.
    let before = fake.requests("POST /compute").len();
    let err = cloud
        .create_server(&NewServer::new("", "", ""))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), "invalid");
    assert_eq!(fake.requests("POST /compute").len(), before);
}

#[tokio::test]
async fn fake_a_redirect_is_named_not_followed() {
    let fake = Fake::start(FakeOptions::default());
    let mut center = fake.center();
    center.auth_url = fake.keystone().replace("/identity", "/moved/identity");
    let err = test_connection(&center).await.expect_err("moved");
    match &err {
        Error::BadUrl { reason, .. } => {
            assert!(
                reason.contains(&format!("HTTP 301 to {}/auth/tokens", fake.keystone())),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.logins(), 0, "the password was not sent on");
}

#[tokio::test]
async fn fake_an_old_nova_is_named_with_its_limit() {
    let fake = Fake::start(FakeOptions {
        max_microversion: 60,
        ..FakeOptions::default()
    });
    let err = test_connection(&fake.center()).await.expect_err("too old");
    match &err {
        Error::Unsupported { service, message } => {
            assert_eq!(*service, Service::Compute);
            assert!(message.contains("maximum is 2.60"), "{message}");
            assert!(message.contains("microversion 2.79"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn fake_a_cloud_that_does_not_answer_times_out_and_the_next_call_works() {
    let fake = Fake::start(FakeOptions::default());
    let timeouts = Timeouts {
        connect: std::time::Duration::from_secs(5),
        request: std::time::Duration::from_secs(1),
    };
    let cloud = Cloud::with_timeouts(&fake.center(), timeouts).expect("cloud");
    fake.fail("GET /compute/v2.1/servers/detail", 1, Failure::Hang);
    let err = cloud.servers().await.expect_err("no answer");
    match &err {
        Error::Timeout { service, secs, .. } => {
            assert_eq!((*service, *secs), (Service::Compute, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "timeout");
    assert!(err.is_transient(), "worth trying again: {err}");
    assert_eq!(fake.requests("servers/detail").len(), 1);
    assert!(fake.requests("servers/detail")[0].ends_with("hung"));
    // The next call is answered (and the token was kept).
    assert!(cloud.servers().await.expect("answered").is_empty());
    assert_eq!(fake.logins(), 1);
}
