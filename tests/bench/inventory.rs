//! Inventory refresh speed against the bar: one refresh of a center with 10,000
//! servers in under 2 s of appliance CPU.
//!
//! Run with `cargo bench --bench inventory` (release build). The bench starts itself again
//! (`--serve`) as a scripted OpenStack in a second process, so that the cloud's work
//! is not counted as the appliance's: Keystone v3 (a project-scoped token whose catalog points
//! back at it), Nova with 10,000 servers listed over pages of 1,000 (Nova's default
//! `max_limit`, with `servers_links` to the next page), and the flavors, zones, images,
//! networks and security groups of the recorded samples in `tests/fixtures/openstack/`. The
//! servers are the recorded server sample with their own id, name, address and metadata.
//!
//! This process is the appliance: a store in a temporary folder, a broker and `Centers` with
//! one center pointing at the scripted cloud. It measures its own CPU time (user + system, all
//! threads, from `/proc/self/stat`) and the wall time of
//! 1. the first refresh, which writes 10,000 new desktops;
//! 2. five more refreshes that find nothing new (every desktop's fields set again), median.
//!
//! It asserts nothing about time; it exits non-zero only if the store does not end up with
//! one desktop per server. Owns nothing outside its two processes and its temporary folder.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use gatehouse::centers::Centers;
use gatehouse::model::desktop::Desktop;
use gatehouse::store::Store;

#[path = "../fixtures/broker.rs"]
mod fixture;
#[path = "../fixtures/openstack/samples.rs"]
mod samples;
use samples::sample;

const SERVERS: usize = 10_000;
const PAGE: usize = 1_000;
const AGAIN: usize = 5;
const BAR: Duration = Duration::from_secs(2);
const TOKEN: &str = "bench-token";

// ---- The scripted cloud (the second process) -------------------------------------------------

/// Every answer, made once: the token and each page of servers.
struct Cloud {
    token: String,
    pages: Vec<String>,
    /// Page index by the marker that asks for it (the last id of the page before).
    after: std::collections::HashMap<String, usize>,
    flavors: String,
    zones: String,
    images: String,
    networks: String,
    security_groups: String,
}

impl Cloud {
    fn new(base: &str) -> Cloud {
        let mut token = sample("token");
        let now = chrono::Utc::now();
        token["token"]["issued_at"] = json!(now.to_rfc3339());
        token["token"]["expires_at"] = json!((now + chrono::Duration::hours(4)).to_rfc3339());
        let endpoint = |url: String| {
            json!([{"id": "e", "interface": "public", "region": "RegionOne",
                "region_id": "RegionOne", "url": url}])
        };
        token["token"]["catalog"] = json!([
            {"type": "identity", "name": "keystone", "id": "k",
             "endpoints": endpoint(format!("{base}/identity/v3/"))},
            {"type": "compute", "name": "nova", "id": "c",
             "endpoints": endpoint(format!("{base}/compute/v2.1"))},
            {"type": "image", "name": "glance", "id": "i",
             "endpoints": endpoint(format!("{base}/image/v2/"))},
            {"type": "network", "name": "neutron", "id": "n",
             "endpoints": endpoint(format!("{base}/network/"))},
        ]);
        let template = sample("server");
        let servers: Vec<Value> = (0..SERVERS)
            .map(|n| {
                let mut s = template.clone();
                s["id"] = json!(format!("{:08x}-0000-4000-8000-{n:012x}", n));
                s["name"] = json!(format!("vdi-{n:05}"));
                s["addresses"] = json!({"private": [{"version": 4,
                    "addr": format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256),
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": format!("fa:16:3e:00:{:02x}:{:02x}", n / 256 % 256, n % 256)}]});
                s["metadata"] = json!({"department": format!("dept-{}", n % 10), "gatehouse-pool": "bench"});
                s
            })
            .collect();
        let mut pages = Vec::new();
        let mut after = std::collections::HashMap::new();
        for (i, chunk) in servers.chunks(PAGE).enumerate() {
            let mut body = json!({ "servers": chunk });
            let last = chunk.last().expect("a page")["id"]
                .as_str()
                .expect("an id")
                .to_string();
            if (i + 1) * PAGE < servers.len() {
                body["servers_links"] = json!([{"rel": "next", "href": format!(
                    "https://nova.example.invalid/v2.1/servers/detail?limit={PAGE}&marker={last}")}]);
            }
            after.insert(last, i + 1);
            pages.push(body.to_string());
        }
        Cloud {
            token: token.to_string(),
            pages,
            after,
            flavors: sample("flavors").to_string(),
            zones: sample("zones").to_string(),
            images: json!({"images": sample("images")["images"], "first": "/v2/images"})
                .to_string(),
            networks: sample("networks").to_string(),
            security_groups: sample("security_groups").to_string(),
        }
    }
}

fn ok_json(body: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.to_string())
}

async fn answer(req: HttpRequest, cloud: web::Data<Cloud>) -> HttpResponse {
    let path = req.path();
    if path == "/identity/v3/auth/tokens" && req.method() == "POST" {
        return HttpResponse::Created()
            .insert_header(("X-Subject-Token", TOKEN))
            .content_type("application/json")
            .body(cloud.token.clone());
    }
    let token = req
        .headers()
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok());
    if token != Some(TOKEN) {
        return HttpResponse::Unauthorized().finish();
    }
    match path {
        "/compute/v2.1/servers/detail" => {
            let query: Vec<(String, String)> =
                serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
            let page = match query.iter().find(|(k, _)| k == "marker") {
                Some((_, marker)) => cloud.after.get(marker).copied(),
                None => Some(0),
            };
            match page.and_then(|p| cloud.pages.get(p)) {
                Some(body) => ok_json(body),
                None => HttpResponse::BadRequest().body("marker not found"),
            }
        }
        "/compute/v2.1/flavors/detail" => ok_json(&cloud.flavors),
        "/compute/v2.1/os-availability-zone" => ok_json(&cloud.zones),
        "/image/v2/images" => ok_json(&cloud.images),
        "/network/v2.0/networks" => ok_json(&cloud.networks),
        "/network/v2.0/security-groups" => ok_json(&cloud.security_groups),
        _ => HttpResponse::NotFound().body(format!("no {path}")),
    }
}

/// The second process: serves the scripted cloud on a loopback port, which it prints first.
fn serve() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let cloud = web::Data::new(Cloud::new(&format!("http://127.0.0.1:{port}")));
    println!("{port}");
    actix_web::rt::System::new().block_on(
        HttpServer::new(move || {
            App::new()
                .app_data(cloud.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .listen(listener)?
        .run(),
    )
}

// ---- The appliance (this process) -------------------------------------------------------------

/// This process's CPU time so far (user + system, every thread).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct Scripted(Child);

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the scripted cloud; its port once it listens.
fn start_cloud() -> (Scripted, u16) {
    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .arg("--serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the scripted cloud starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("its output");
    let cloud = Scripted(child);
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the scripted cloud's port");
    let port = line.trim().parse().expect("a port number");
    (cloud, port)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        return match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("the scripted cloud failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo bench` passes `--bench`; nothing else is read.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (_cloud, port) = start_cloud();
    let store = Store::open(&dir.path().join("data")).expect("a store");
    let center = fixture::center(
        "bench",
        "Scripted cloud",
        &format!("http://127.0.0.1:{port}/identity/v3"),
    );
    store.put(&center.id, &center).expect("the center");
    let broker = Arc::new(fixture::broker(&store));
    let centers = Centers::new(store.clone(), broker);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    let measure = |what: &str| {
        let (cpu0, wall0) = (cpu(), Instant::now());
        let refreshed = runtime
            .block_on(centers.refresh(&center.id))
            .unwrap_or_else(|e| panic!("{what}: the refresh failed: {e}"));
        (cpu() - cpu0, wall0.elapsed(), refreshed)
    };

    println!(
        "inventory refresh, {SERVERS} servers over pages of {PAGE}, scripted OpenStack in a second process"
    );
    let (first_cpu, first_wall, first) = measure("first refresh");
    println!(
        "first refresh ({} added): {:.2} s of appliance CPU, {:.2} s wall (bar {} s of CPU): {}",
        first.added,
        first_cpu.as_secs_f64(),
        first_wall.as_secs_f64(),
        BAR.as_secs(),
        if first_cpu < BAR { "MET" } else { "NOT MET" }
    );
    let mut again: Vec<(Duration, Duration)> = (0..AGAIN)
        .map(|_| {
            let (c, w, r) = measure("a later refresh");
            assert_eq!((r.added, r.updated), (0, SERVERS), "{r:?}");
            (c, w)
        })
        .collect();
    again.sort();
    let (median_cpu, median_wall) = again[AGAIN / 2];
    println!(
        "later refreshes (nothing new, {SERVERS} updated), median of {AGAIN}: {:.2} s of appliance CPU, {:.2} s wall: {}",
        median_cpu.as_secs_f64(),
        median_wall.as_secs_f64(),
        if median_cpu < BAR { "MET" } else { "NOT MET" }
    );

    let desktops: Vec<Desktop> = store.values::<Desktop>().expect("desktops");
    let linked = desktops
        .iter()
        .filter(|d| d.center == center.id && !d.server_id.is_empty() && !d.address.is_empty())
        .count();
    if first.added != SERVERS || desktops.len() != SERVERS || linked != SERVERS {
        eprintln!(
            "wrong result: {} added, {} desktops stored, {linked} linked to their server with an address",
            first.added,
            desktops.len()
        );
        return ExitCode::FAILURE;
    }
    println!("checked: {SERVERS} desktops stored, each with its server id and address");
    ExitCode::SUCCESS
}
