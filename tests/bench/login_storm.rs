//! The login storm: N directory users (2,000 by default) sign in and connect at once through
//! the client API, against a pool with a desktop for each of them, measured against the bars
//! of the issue: at least 500 sign-ins per second with a p99 sign-in latency under 100 ms, on
//! this machine with slapd included, and zero double assignments.
//!
//! Run with `cargo bench --bench login_storm` (release build). It starts a real OpenLDAP server
//! (the integration tests' fixture, `tests/it/slapd.rs`) holding `user00001` … in the group
//! `generated`, builds a data folder through the library (the authentication server, N
//! desktops in one pool, a policy offering one desktop, an assignment table giving the group
//! that policy), finishes the wizard with `gatehouse setup`, and starts the release
//! `gatehouse serve`. Then a multi-threaded tokio runtime drives the client API over HTTP/1.1
//! keep-alive connections with a bounded number of users in flight: each user posts
//! `/api/v1/client/login` and connects to the first desktop offered. It prints latencies,
//! rates, the server's memory and the CPU time each process used, and ends with a Markdown
//! summary table. It asserts nothing about time; it exits non-zero when something does not
//! work: a request that fails, or a desktop given twice (checked both from what the clients
//! were told and by reading the data folder with the library after the server stopped).
//!
//! Environment: `LOGIN_STORM_USERS` (default 2000), `LOGIN_STORM_CONCURRENCY` (users in
//! flight, default 64), `LOGIN_STORM_ORDER` (the policy's pick order: `random`, the product's
//! default, or `by_name` / `least_recently_used`), `LOGIN_STORM_BINARY` (another `gatehouse`
//! binary to run, e.g. one built with symbols for profiling).
//!
//! Owns nothing but its temporary folders and the processes it starts (slapd, the server);
//! it writes nothing into the repository.

#[path = "../it/slapd.rs"]
mod slapd;

#[path = "shared.rs"]
mod shared;
use shared::{Server, available_cpus, gatehouse, ms, path_str};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gatehouse::broker::HeldDesktops;
use gatehouse::model::Protocol;
use gatehouse::model::desktop::{Desktop, DesktopInput};
use gatehouse::model::directory::{AuthServer, Security};
use gatehouse::model::policy::{AssignmentRow, AssignmentTable, PickOrder, Policy, PolicyEntry};
use gatehouse::model::pool::Pool;
use gatehouse::store::{Record, Store};
use serde_json::{Value, json};

use slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The `gatehouse` binary to run: [`BINARY`], or `LOGIN_STORM_BINARY` (e.g. a build with
/// symbols and frame pointers for `perf`).
fn binary() -> String {
    std::env::var("LOGIN_STORM_BINARY").unwrap_or_else(|_| BINARY.to_string())
}
const ADMIN_PASSWORD: &str = "Bench-Console-Pass-47";
const DEFAULT_USERS: usize = 2_000;
const DEFAULT_CONCURRENCY: usize = 64;
/// Desktops written per store transaction while seeding.
const SEED_BATCH: usize = 500;
const POLICY_ID: &str = "storm";
/// A guard against a hung request only: no healthy request comes near it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server is left alone after the storm before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the server's resident memory is sampled during the storm.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Requests whose failure text is printed in full (the rest are counted).
const ERRORS_SHOWN: usize = 5;

const MIB: f64 = 1_048_576.0;

// The bars of the issue.
const BAR_RATE: f64 = 500.0;
const BAR_P99: Duration = Duration::from_millis(100);

/// One line of the summary table; `met` is `None` for figures without a bar.
struct Figure {
    name: String,
    measured: String,
    bar: String,
    met: Option<bool>,
}

impl Figure {
    fn new(name: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            measured: measured.into(),
            bar: "—".into(),
            met: None,
        }
    }

    fn bar(mut self, bar: impl Into<String>, met: bool) -> Self {
        self.bar = bar.into();
        self.met = Some(met);
        self
    }

    fn print(&self) {
        match self.met {
            Some(met) => println!(
                "  => {}: {} (bar: {}) {}",
                self.name,
                self.measured,
                self.bar,
                if met { "MET" } else { "NOT MET" }
            ),
            None => println!("  => {}: {}", self.name, self.measured),
        }
    }
}

/// What the storm is run with.
struct Settings {
    users: usize,
    concurrency: usize,
    order: PickOrder,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let number = |name: &str, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Ok(v) => {
                    let n: usize = v
                        .trim()
                        .parse()
                        .with_context(|| format!("{name}={v} is not a number"))?;
                    ensure!(n > 0, "{name} must be at least 1");
                    Ok(n)
                }
                Err(_) => Ok(default),
            }
        };
        let order = match std::env::var("LOGIN_STORM_ORDER").as_deref() {
            Err(_) | Ok("random") => PickOrder::Random,
            Ok("by_name") => PickOrder::ByName,
            Ok("least_recently_used") => PickOrder::LeastRecentlyUsed,
            Ok(other) => {
                bail!("LOGIN_STORM_ORDER={other}: use random, by_name or least_recently_used")
            }
        };
        let users = number("LOGIN_STORM_USERS", DEFAULT_USERS)?;
        ensure!(users < 99_999, "LOGIN_STORM_USERS must be below 99,999");
        Ok(Self {
            users,
            concurrency: number("LOGIN_STORM_CONCURRENCY", DEFAULT_CONCURRENCY)?,
            order,
        })
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the settings come from the environment.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run() {
        Ok((figures, failures)) => {
            print_summary(&figures);
            if !failures.is_empty() {
                eprintln!();
                for f in &failures {
                    eprintln!("login storm check failed: {f}");
                }
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("login storm bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<(Vec<Figure>, Vec<String>)> {
    let settings = Settings::from_env()?;
    let n = settings.users;
    println!("gatehouse binary: {}", binary());
    println!("machine: {} CPUs available", available_cpus());
    println!(
        "storm: {n} users, {} in flight, pick order {:?}",
        settings.concurrency, settings.order
    );
    println!();

    // One more directory user than desktops: the warm-up sign-in (it never connects).
    println!("# 1. Directory, data folder, server");
    let started = Instant::now();
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: n + 1,
        ..SlapdOptions::default()
    });
    println!(
        "  slapd with {} generated users started in {:.1} s (pid {})",
        n + 1,
        started.elapsed().as_secs_f64(),
        slapd.pid()
    );
    let tmp = tempfile::tempdir().context("temporary folder")?;
    let data = tmp.path().join("data");
    let server_record = slapd.auth_server(Security::Ldaps);
    let started = Instant::now();
    seed(&data, &server_record, n, settings.order)?;
    println!(
        "  data folder seeded through the library in {:.1} s: {n} desktops in one pool, policy `{POLICY_ID}` offering 1",
        started.elapsed().as_secs_f64()
    );
    let password_file = tmp.path().join("admin-password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).context("password file")?;
    // A licence without a user limit (the evaluation gives desktops to 10 users at once),
    // signed with a vendor key made for this run.
    let config = licence_without_user_limit(tmp.path(), &data)?;
    let out = gatehouse(
        &binary(),
        &[
            "setup",
            "--config",
            path_str(&config.file)?,
            "--data",
            path_str(&data)?,
            "--admin-password-file",
            path_str(&password_file)?,
            "--licence-file",
            path_str(&config.key)?,
            "--accept-licence",
        ],
    )?;
    println!("  setup: {}", out.lines().last().unwrap_or_default());

    let server = Server::start_with(&binary(), &data, tmp.path(), "serve", Some(&config.file))?;
    let pid = server.pid();
    println!("  server: {} (pid {pid})", server.base);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let client = client(settings.concurrency)?;

    // One sign-in before the clock starts: it opens the first LDAP connections and computes
    // the pool membership, which the storm would otherwise pay for in its first requests.
    let warm = rt.block_on(login(&client, &server.base, &user_name(n + 1)))?;
    println!(
        "  warm-up sign-in of {}: {:.1} ms, offered {}",
        user_name(n + 1),
        ms(warm.latency),
        warm.desktop_id.as_deref().unwrap_or("nothing")
    );
    let before = memory(pid)?;
    println!(
        "  server before the storm: VmRSS {:.1} MiB (peak so far {:.1} MiB), {} threads",
        before.rss as f64 / MIB,
        before.hwm as f64 / MIB,
        before.threads
    );
    println!();

    println!("# 2. The storm");
    let storm = storm(&rt, &client, &server.base, &settings, pid, slapd.pid())?;
    drop(client);
    std::thread::sleep(SETTLE);
    let after = memory(pid)?;
    let io = proc_io(pid);
    println!(
        "  server {:.0} s after the storm: VmRSS {:.1} MiB (anonymous {:.1}), peak VmHWM {:.1} MiB, {} threads",
        SETTLE.as_secs_f64(),
        after.rss as f64 / MIB,
        after.anon as f64 / MIB,
        after.hwm as f64 / MIB,
        after.threads
    );
    if let Some((written, syscw)) = io {
        println!(
            "  server disk writes since start: {:.1} MB in {syscw} write calls",
            written as f64 / 1e6
        );
    }
    let stop = server.stop()?;
    println!("  server stopped in {:.0} ms", ms(stop));
    println!();

    println!("# 3. Assignments");
    let check = verify(&data, &storm.results, n)?;
    for line in &check.report {
        println!("  {line}");
    }
    println!();

    println!("# 4. The directory alone (diagnostic)");
    let directory = directory_alone(&rt, &server_record, &settings, slapd.pid())?;
    println!();

    let mut failures = check.failures.clone();
    if storm.errors > 0 {
        failures.push(format!(
            "{} requests failed (see the first ones above)",
            storm.errors
        ));
    }
    let mut figures = figures(&settings, &storm, &before, &after, &check);
    for f in &figures {
        f.print();
    }
    figures.extend(directory);
    drop(slapd);
    Ok((figures, failures))
}

fn user_name(i: usize) -> String {
    format!("user{i:05}")
}

// ---------------------------------------------------------------- seeding

/// The data folder: the authentication server under its id, `n` RDP desktops in one pool
/// (written in transactions of [`SEED_BATCH`]), a policy offering one of them, and an
/// assignment table giving the `generated` group that policy.
fn seed(data: &Path, server: &AuthServer, n: usize, order: PickOrder) -> Result<()> {
    let store = Store::open(data).context("open the data folder")?;
    store
        .put(&server.id, server)
        .context("authentication server")?;
    let pool = Pool::new("Storm");
    store.put(&pool.id, &pool).context("pool")?;
    let now = chrono::Utc::now();
    let desktops: Vec<Desktop> = (0..n)
        .map(|i| {
            Desktop::from_input(
                DesktopInput {
                    name: format!("storm-{i:05}"),
                    display_name: String::new(),
                    address: format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1),
                    port: None,
                    protocol: Protocol::Rdp,
                    os: "Windows 11".into(),
                },
                now,
            )
        })
        .collect();
    for batch in desktops.chunks(SEED_BATCH) {
        store
            .transact(&[Desktop::TREE], |tx| {
                for d in batch {
                    tx.put::<Desktop, String>(&d.id, d)?;
                }
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("desktops: {e}"))?;
    }
    let policy = Policy {
        id: POLICY_ID.into(),
        name: "Storm".into(),
        entries: vec![PolicyEntry {
            pool_id: pool.id.clone(),
            offer: 1,
            running_only: false,
            order,
            protocol_plan: "default".into(),
            power_plan: "default".into(),
            release_plan: "default".into(),
        }],
    };
    store.put(&policy.id, &policy).context("policy")?;
    let table = AssignmentTable {
        rows: vec![AssignmentRow {
            group: Some("generated".into()),
            location_id: None,
            role_id: "user".into(),
            policy_id: POLICY_ID.into(),
        }],
        otherwise: None,
    };
    store.put(&server.id, &table).context("assignment table")?;
    ensure!(
        store.count::<Desktop>()? == n,
        "the seeded store does not hold {n} desktops"
    );
    Ok(())
}

// ---------------------------------------------------------------- the client API

/// What one sign-in answered.
struct LoginAnswer {
    latency: Duration,
    token: String,
    /// The first desktop offered.
    desktop_id: Option<String>,
}

async fn login(client: &reqwest::Client, base: &str, user: &str) -> Result<LoginAnswer> {
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/api/v1/client/login"))
        .json(&json!({"username": user, "password": GENERATED_PASSWORD, "client": {}}))
        .send()
        .await
        .with_context(|| format!("POST /api/v1/client/login as {user}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("login answer for {user}"))?;
    let latency = started.elapsed();
    ensure!(
        status == 200,
        "POST /api/v1/client/login as {user} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("login answer for {user} is not JSON"))?;
    let token = v["token"]
        .as_str()
        .with_context(|| format!("no token in the login answer for {user}: {v}"))?
        .to_string();
    let desktop_id = v["desktops"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| d["id"].as_str())
        .map(str::to_string);
    Ok(LoginAnswer {
        latency,
        token,
        desktop_id,
    })
}

/// What one connect answered: the desktop, or `None` for 409 (nothing free).
async fn connect(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    desktop_id: &str,
) -> Result<(Duration, Option<String>)> {
    let started = Instant::now();
    let resp = client
        .post(format!(
            "{base}/api/v1/client/desktops/{desktop_id}/connect"
        ))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("POST /api/v1/client/desktops/{desktop_id}/connect"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.context("connect answer")?;
    let latency = started.elapsed();
    if status == 409 {
        return Ok((latency, None));
    }
    ensure!(
        status == 200,
        "POST /api/v1/client/desktops/{desktop_id}/connect answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).context("connect answer is not JSON")?;
    let id = v["desktop"]["id"]
        .as_str()
        .with_context(|| format!("no desktop.id in the connect answer: {v}"))?
        .to_string();
    ensure!(
        v["connection"].is_object(),
        "no connection object in the connect answer: {v}"
    );
    Ok((latency, Some(id)))
}

/// An HTTP/1.1 keep-alive client for the appliance's self-signed certificate, keeping up to
/// `idle` connections.
fn client(idle: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(idle)
        .tcp_nodelay(true)
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("HTTPS client")
}

// ---------------------------------------------------------------- the storm

/// One user's run.
#[derive(Default)]
struct UserResult {
    user: String,
    login: Option<Duration>,
    connect: Option<Duration>,
    offered: Option<String>,
    /// The desktop the connect answer named.
    got: Option<String>,
    /// Connect answered 409.
    refused: bool,
    error: Option<String>,
}

struct Storm {
    results: Vec<UserResult>,
    wall: Duration,
    errors: usize,
    /// CPU seconds used during the storm: server, slapd, this process.
    cpu_server: f64,
    cpu_slapd: f64,
    cpu_client: f64,
    /// The highest VmRSS sampled during the storm, in bytes.
    sampled_rss_max: u64,
    /// Users in flight at once.
    concurrency: usize,
}

fn storm(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    settings: &Settings,
    server_pid: u32,
    slapd_pid: u32,
) -> Result<Storm> {
    let n = settings.users;
    let tick = clock_ticks();
    let cpu = |pid: &str| cpu_seconds(pid, tick);
    let (s0, l0, c0) = (
        cpu(&server_pid.to_string()),
        cpu(&slapd_pid.to_string()),
        cpu("self"),
    );

    // Samples the server's memory while the storm runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let done = done.clone();
        let max_rss = max_rss.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = memory(server_pid) {
                    max_rss.fetch_max(m.rss, Ordering::Relaxed);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };

    let next = Arc::new(AtomicUsize::new(1));
    let started = Instant::now();
    let results: Vec<UserResult> = rt.block_on(async {
        let workers: Vec<_> = (0..settings.concurrency.min(n))
            .map(|_| {
                let client = client.clone();
                let base = base.to_string();
                let next = next.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i > n {
                            break;
                        }
                        mine.push(one_user(&client, &base, i).await);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            match w.await {
                Ok(mine) => all.extend(mine),
                Err(e) => all.push(UserResult {
                    error: Some(format!("a client task failed: {e}")),
                    ..UserResult::default()
                }),
            }
        }
        all
    });
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (s1, l1, c1) = (
        cpu(&server_pid.to_string()),
        cpu(&slapd_pid.to_string()),
        cpu("self"),
    );

    let errors: Vec<&UserResult> = results.iter().filter(|r| r.error.is_some()).collect();
    for r in errors.iter().take(ERRORS_SHOWN) {
        println!(
            "  FAILED {}: {}",
            r.user,
            r.error.as_deref().unwrap_or_default()
        );
    }
    if errors.len() > ERRORS_SHOWN {
        println!("  … and {} more failures", errors.len() - ERRORS_SHOWN);
    }
    println!(
        "  {} users in {:.2} s: {} signed in, {} connected, {} refused (409), {} failed",
        results.len(),
        wall.as_secs_f64(),
        results.iter().filter(|r| r.login.is_some()).count(),
        results.iter().filter(|r| r.got.is_some()).count(),
        results.iter().filter(|r| r.refused).count(),
        errors.len()
    );
    Ok(Storm {
        errors: errors.len(),
        results,
        wall,
        cpu_server: s1 - s0,
        cpu_slapd: l1 - l0,
        cpu_client: c1 - c0,
        sampled_rss_max: max_rss.load(Ordering::Relaxed),
        concurrency: settings.concurrency.min(n),
    })
}

async fn one_user(client: &reqwest::Client, base: &str, i: usize) -> UserResult {
    let user = user_name(i);
    let mut r = UserResult {
        user: user.clone(),
        ..UserResult::default()
    };
    let answer = match login(client, base, &user).await {
        Ok(a) => a,
        Err(e) => {
            r.error = Some(format!("{e:#}"));
            return r;
        }
    };
    r.login = Some(answer.latency);
    let Some(offered) = answer.desktop_id else {
        r.error = Some("signed in but offered no desktop".into());
        return r;
    };
    r.offered = Some(offered.clone());
    match connect(client, base, &answer.token, &offered).await {
        Ok((latency, got)) => {
            r.connect = Some(latency);
            r.refused = got.is_none();
            r.got = got;
        }
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r
}

// ---------------------------------------------------------------- the directory alone

/// The same users, the same concurrency, straight to slapd through the library's
/// `LdapDirectory` (the server's code, its default pool of connections), with no HTTP and no
/// store: first every password check as a sign-in does it (`authenticate`: find the user,
/// bind as them, expand nested groups), then every lookup as each connect does it
/// (`lookup`, the broker's `still_valid`). This is the directory's share of a sign-in and the
/// ceiling the appliance cannot pass on this machine.
fn directory_alone(
    rt: &tokio::runtime::Runtime,
    server: &AuthServer,
    settings: &Settings,
    slapd_pid: u32,
) -> Result<Vec<Figure>> {
    use gatehouse::auth::LdapDirectory;
    let n = settings.users;
    let directory = Arc::new(LdapDirectory::new(server.clone()));
    let tick = clock_ticks();
    let slapd_cpu = || cpu_seconds(&slapd_pid.to_string(), tick);
    let mut figures = Vec::new();
    for step in ["authenticate", "lookup"] {
        let cpu0 = (slapd_cpu(), cpu_seconds("self", tick));
        let next = Arc::new(AtomicUsize::new(1));
        let started = Instant::now();
        let outcome: Result<Vec<Duration>> = rt.block_on(async {
            let workers: Vec<_> = (0..settings.concurrency.min(n))
                .map(|_| {
                    let directory = directory.clone();
                    let next = next.clone();
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i > n {
                                break;
                            }
                            let user = user_name(i);
                            let t = Instant::now();
                            let ok = if step == "authenticate" {
                                directory
                                    .authenticate(&user, GENERATED_PASSWORD)
                                    .await
                                    .map(|u| u.groups)
                            } else {
                                directory
                                    .lookup(&user)
                                    .await
                                    .map(|u| u.map(|u| u.groups).unwrap_or_default())
                            };
                            match ok {
                                Ok(groups) if groups.iter().any(|g| g == "generated") => {
                                    mine.push(t.elapsed());
                                }
                                Ok(groups) => {
                                    return Err(anyhow::anyhow!(
                                        "{step} {user}: groups {groups:?} lack `generated`"
                                    ));
                                }
                                Err(e) => return Err(anyhow::anyhow!("{step} {user}: {e}")),
                            }
                        }
                        Ok(mine)
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for w in workers {
                all.extend(w.await.context("directory task")??);
            }
            Ok(all)
        });
        let wall = started.elapsed().as_secs_f64();
        let mut times = outcome?;
        let cpu1 = (slapd_cpu(), cpu_seconds("self", tick));
        let (p50, p99, _) = percentiles(&mut times);
        let per_op = |cpu: f64| 1000.0 * cpu / times.len().max(1) as f64;
        let f = Figure::new(
            format!(
                "directory alone: `{step}`, {} in flight",
                settings.concurrency.min(n)
            ),
            format!(
                "{:.0}/s, p50 {:.1} ms, p99 {:.1} ms; CPU per call: slapd {:.2} ms, LDAP client {:.2} ms",
                times.len() as f64 / wall,
                ms(p50),
                ms(p99),
                per_op(cpu1.0 - cpu0.0),
                per_op(cpu1.1 - cpu0.1)
            ),
        );
        f.print();
        figures.push(f);
    }
    println!(
        "  (connections opened by this LdapDirectory: {})",
        directory.connections_opened()
    );
    Ok(figures)
}

// ---------------------------------------------------------------- verification

struct Check {
    report: Vec<String>,
    failures: Vec<String>,
    /// Desktops given to more than one user, users holding more than one desktop, and
    /// disagreements between what a client was told and what the store holds.
    double_assignments: usize,
}

/// Opens the stopped server's data folder with the library and checks that every storm user
/// who was told "connected" holds exactly that desktop, and that no desktop went twice.
fn verify(data: &Path, results: &[UserResult], n: usize) -> Result<Check> {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut doubles = 0;

    // What the clients were told.
    let told: Vec<(&str, &str)> = results
        .iter()
        .filter_map(|r| Some((r.user.as_str(), r.got.as_deref()?)))
        .collect();
    let mut by_desktop: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, desktop) in &told {
        by_desktop.entry(desktop).or_default().push(user);
    }
    let given_twice: Vec<_> = by_desktop.iter().filter(|(_, u)| u.len() > 1).collect();
    doubles += given_twice.iter().map(|(_, u)| u.len() - 1).sum::<usize>();
    report.push(format!(
        "clients: {} connected, {} distinct desktop ids, {} desktops named to more than one user",
        told.len(),
        by_desktop.len(),
        given_twice.len()
    ));
    for (desktop, users) in given_twice.iter().take(ERRORS_SHOWN) {
        failures.push(format!("desktop {desktop} was given to {users:?}"));
    }
    let switched = results
        .iter()
        .filter(|r| r.got.is_some() && r.got != r.offered)
        .count();
    report.push(format!(
        "clients: {switched} connected to another desktop than the one offered (taken meanwhile)"
    ));

    // What the store holds.
    let store = Store::open(data).context("open the data folder after the storm")?;
    let desktops: BTreeMap<String, Desktop> = store
        .list::<Desktop>()
        .context("list the desktops")?
        .into_iter()
        .collect();
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for (id, d) in &desktops {
        if let Some(user) = &d.assigned_user {
            holders.entry(user.clone()).or_default().push(id.clone());
        }
    }
    let assigned: usize = holders.values().map(Vec::len).sum();
    let holding_two: Vec<_> = holders.iter().filter(|(_, d)| d.len() > 1).collect();
    doubles += holding_two.iter().map(|(_, d)| d.len() - 1).sum::<usize>();
    report.push(format!(
        "store: {} desktops, {assigned} assigned, to {} distinct users; {} users hold more than one",
        desktops.len(),
        holders.len(),
        holding_two.len()
    ));
    for (user, ids) in holding_two.iter().take(ERRORS_SHOWN) {
        failures.push(format!("{user} holds {ids:?} in the store"));
    }
    if assigned != n {
        failures.push(format!(
            "{assigned} desktops are assigned in the store, not {n} (one per storm user)"
        ));
    }
    let storm_users: HashSet<String> = (1..=n).map(|i| format!("slapd/{}", user_name(i))).collect();
    let strangers = holders.keys().filter(|u| !storm_users.contains(*u)).count();
    if strangers > 0 {
        failures.push(format!(
            "{strangers} desktops are assigned to someone outside the storm"
        ));
    }

    // Both agree, and the user index beside the desktops says the same.
    let mut disagree = 0;
    for (user, desktop) in &told {
        let key = format!("slapd/{user}");
        let in_store = desktops.get(*desktop).and_then(|d| d.assigned_user.clone());
        let held = store
            .get::<HeldDesktops>(&key)
            .with_context(|| format!("the desktops of {key}"))?
            .map(|h| h.desktops)
            .unwrap_or_default();
        if in_store.as_deref() != Some(key.as_str()) || held != vec![desktop.to_string()] {
            disagree += 1;
            if disagree <= ERRORS_SHOWN {
                failures.push(format!(
                    "{user} was told {desktop}; the store says that desktop is held by {in_store:?} and {key} holds {held:?}"
                ));
            }
        }
    }
    doubles += disagree;
    report.push(format!(
        "clients and store: {disagree} disagreements (desktop holder and the user index)"
    ));
    if told.len() != n {
        failures.push(format!(
            "{} of {n} users were told they are connected",
            told.len()
        ));
    }
    if doubles > 0 {
        failures.push(format!("{doubles} double assignments"));
    }
    Ok(Check {
        report,
        failures,
        double_assignments: doubles,
    })
}

// ---------------------------------------------------------------- figures

fn figures(
    settings: &Settings,
    storm: &Storm,
    before: &Memory,
    after: &Memory,
    check: &Check,
) -> Vec<Figure> {
    let wall = storm.wall.as_secs_f64();
    let mut logins: Vec<Duration> = storm.results.iter().filter_map(|r| r.login).collect();
    let mut connects: Vec<Duration> = storm.results.iter().filter_map(|r| r.connect).collect();
    let mut totals: Vec<Duration> = storm
        .results
        .iter()
        .filter_map(|r| Some(r.login? + r.connect?))
        .collect();
    let both = storm
        .results
        .iter()
        .filter(|r| r.login.is_some() && r.got.is_some())
        .count();
    let rate = logins.len() as f64 / wall;
    let (l50, l99, lmax) = percentiles(&mut logins);
    let (c50, c99, cmax) = percentiles(&mut connects);
    let (t50, t99, tmax) = percentiles(&mut totals);
    let login_share = {
        let l: f64 = logins.iter().map(Duration::as_secs_f64).sum();
        let t: f64 = totals.iter().map(Duration::as_secs_f64).sum();
        if t > 0.0 { 100.0 * l / t } else { 0.0 }
    };
    let cpus = available_cpus() as f64;
    let cpu = |s: f64| {
        format!(
            "{s:.2} s ({:.0}% of {cpus:.0} CPUs)",
            100.0 * s / (wall * cpus)
        )
    };
    vec![
        Figure::new(
            "storm",
            format!(
                "{} users, {} in flight, HTTP/1.1 keep-alive, pick order {:?}",
                settings.users, storm.concurrency, settings.order
            ),
        ),
        Figure::new("wall time", format!("{wall:.2} s")),
        Figure::new(
            "sign-ins per second (logins completed ÷ wall time)",
            format!("{rate:.0}/s"),
        )
        .bar(format!("≥ {BAR_RATE:.0}/s"), rate >= BAR_RATE),
        Figure::new(
            "sign-in (login) latency p50",
            format!("{:.1} ms (max {:.1} ms)", ms(l50), ms(lmax)),
        ),
        Figure::new("sign-in (login) latency p99", format!("{:.1} ms", ms(l99))).bar(
            format!("< {} ms", BAR_P99.as_millis()),
            l99 < BAR_P99 && !logins.is_empty(),
        ),
        Figure::new(
            "connect latency p50 / p99",
            format!(
                "{:.1} / {:.1} ms (max {:.1} ms)",
                ms(c50),
                ms(c99),
                ms(cmax)
            ),
        ),
        Figure::new(
            "login + connect per user p50 / p99",
            format!(
                "{:.1} / {:.1} ms (max {:.1} ms; login is {login_share:.0}% of it)",
                ms(t50),
                ms(t99),
                ms(tmax)
            ),
        ),
        Figure::new(
            "login + connect per second",
            format!("{:.0}/s ({both} users)", both as f64 / wall),
        ),
        Figure::new(
            "server memory (VmRSS) before / after the storm",
            format!(
                "{:.1} / {:.1} MiB (after = {:.0} s later)",
                before.rss as f64 / MIB,
                after.rss as f64 / MIB,
                SETTLE.as_secs_f64()
            ),
        ),
        Figure::new(
            "server memory peak (VmHWM)",
            format!(
                "{:.1} MiB (highest sampled VmRSS during the storm {:.1} MiB)",
                after.hwm as f64 / MIB,
                storm.sampled_rss_max as f64 / MIB
            ),
        ),
        Figure::new(
            "CPU during the storm: gatehouse serve",
            cpu(storm.cpu_server),
        ),
        Figure::new("CPU during the storm: slapd", cpu(storm.cpu_slapd)),
        Figure::new(
            "CPU during the storm: this benchmark (the clients)",
            cpu(storm.cpu_client),
        ),
        Figure::new("double assignments", check.double_assignments.to_string())
            .bar("0", check.double_assignments == 0),
    ]
}

/// (p50, p99, max) by nearest rank; zeros when empty.
fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let rank = |p: f64| -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    (
        rank(0.50),
        rank(0.99),
        v.last().copied().unwrap_or_default(),
    )
}

fn print_summary(figures: &[Figure]) {
    println!();
    println!(
        "## Summary ({})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
    println!("| figure | measured | bar | met? |");
    println!("|---|---|---|---|");
    for f in figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!("| {} | {} | {} | {met} |", f.name, f.measured, f.bar);
    }
}

// ---------------------------------------------------------------- /proc

struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    threads: String,
}

fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: kib("VmRSS")?,
        hwm: kib("VmHWM")?,
        anon: kib("RssAnon")?,
        threads: status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default(),
    })
}

/// User + system CPU seconds of a process (`self` or a pid), 0 when unreadable.
fn cpu_seconds(pid: &str, ticks_per_second: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th and stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks_per_second
}

/// Bytes the process caused to be written to storage, and its write calls.
fn proc_io(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("write_bytes")?, field("syscw")?))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------- the server and the CLI

/// A configuration file trusting a vendor key made for this run, and a licence key it signed
/// for `data`'s installation, without a user limit.
struct Licensed {
    file: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn licence_without_user_limit(tmp: &std::path::Path, data: &std::path::Path) -> Result<Licensed> {
    let vendor = tmp.join("vendor");
    gatehouse(
        &binary(),
        &["licence", "keygen", "--out", path_str(&vendor)?],
    )?;
    let code = gatehouse(&binary(), &["licence", "code", "--data", path_str(data)?])?;
    let signing_key = vendor.join("licence-signing.key");
    let key_text = gatehouse(
        &binary(),
        &[
            "licence",
            "issue",
            "--signing-key",
            path_str(&signing_key)?,
            "--serial",
            "GH-BENCH-1",
            "--installation-code",
            code.trim(),
            "--customer",
            "Login storm",
        ],
    )?;
    let key = tmp.join("licence.key");
    std::fs::write(&key, key_text).context("licence key file")?;
    let file = tmp.join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[licence]\npublic_key_file = \"{}\"\n",
            vendor.join("licence-signing.pub").display()
        ),
    )
    .context("config file")?;
    Ok(Licensed { file, key })
}
