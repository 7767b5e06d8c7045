//! The scheduler's jobs, the plans' timers, desktop agents and pool statistics against the
//! real server: the job list, "Run now" (waiting for the run's end instead of sleeping),
//! schedules set in the API and the console (refused when unreadable, kept across restarts),
//! a failing job; a client's disconnect releasing a desktop after the release plan's minutes,
//! a reconnect cancelling it, a due timer surviving a kill; agent events with the right and
//! wrong tokens; pool counts, history, the dashboard chart and the /metrics gauges.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use gatehouse::model::desktop::Desktop;
use gatehouse::model::directory::Security;
use gatehouse::model::plan::{PowerAction, PowerPlan, PowerRule, ReleasePlan};
use gatehouse::model::policy::Policy;
use gatehouse::store::Store;

use crate::common::{self, Server};
use crate::portal::Api as ClientApi;
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

const PASSWORD: &str = "Gatehouse-Jobs-42!";

/// The plan timers never run on their own here: each test runs them with "Run now".
const QUIET: &str = "[jobs]\nplan_timers = \"\"\n";

struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

struct Reply {
    status: u16,
    body: Value,
    text: String,
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

impl Admin {
    async fn new(server: &Server) -> Admin {
        let client = common::client();
        let resp = client
            .post(format!("{}/api/v1/tokens", server.base))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .expect("token");
        let r = reply(resp).await;
        assert_eq!(r.status, 200, "{}", r.text);
        Admin {
            client,
            base: server.base.clone(),
            token: r.body["token"].as_str().expect("token").to_string(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        reply(req.send().await.expect("request")).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// Runs a job and waits for this run's end; returns its status. A scheduled run of the
    /// same job that happens to be going (`pool_stats` runs every minute) is waited for first:
    /// a job never runs twice at once.
    async fn run(&self, job: &str) -> Value {
        for _ in 0..10 {
            let r = self
                .call(
                    Method::POST,
                    &format!("/api/v1/jobs/{job}/run?wait=true"),
                    None,
                )
                .await;
            if r.status == 409 && r.body["error"] == "conflict" {
                for _ in 0..5_000 {
                    if self.job(job).await["running"] == false {
                        break;
                    }
                }
                continue;
            }
            assert_eq!(r.status, 200, "{job}: {}", r.text);
            assert_eq!(r.body["running"], false, "{}", r.text);
            return r.body;
        }
        panic!("{job} was running every time it was asked to run");
    }

    async fn job(&self, name: &str) -> Value {
        let r = self.get("/api/v1/jobs").await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no job {name}: {}", r.text))
    }

    async fn timers(&self, desktop: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/v1/timers?desktop={desktop}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body.as_array().cloned().unwrap_or_default()
    }

    async fn history(&self, desktop: &str) -> Vec<String> {
        let r = self
            .get(&format!("/api/v1/desktops/{desktop}/history"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
            .as_array()
            .expect("a list")
            .iter()
            .map(|h| h["action"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// A data folder with the Lab (`desktops` desktops), `seed` applied to its store, a finished
/// setup and a config file holding `config`; then the server started on it.
fn appliance(
    dir: &Path,
    desktops: usize,
    config: &str,
    seed: impl FnOnce(&Store),
) -> (Server, PathBuf, PathBuf) {
    let data = dir.join("data");
    {
        let store = Store::open(&data).expect("store");
        crate::lab::seed(&store, "slapd", desktops, &[("generated", "user")]);
        seed(&store);
    }
    common::finish_setup(&data, PASSWORD);
    let config_path = dir.join("gatehouse.toml");
    std::fs::write(&config_path, config).expect("config");
    let server = Server::start(&data, Some(&config_path));
    (server, data, config_path)
}

#[tokio::test]
async fn jobs_are_listed_run_now_and_rescheduled_from_the_api_and_the_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, data, config) = appliance(dir.path(), 1, QUIET, |_| {});
    let admin = Admin::new(&server).await;

    let r = admin.get("/api/v1/jobs").await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "backup",
            "inventory",
            "plan_timers",
            "pool_history_stats",
            "pool_stats"
        ]
    );
    let timers = admin.job("plan_timers").await;
    assert_eq!(
        (&timers["schedule"], &timers["next_start"]),
        (&json!(""), &Value::Null),
        "off in this config"
    );
    let stats = admin.job("pool_stats").await;
    assert_eq!(stats["schedule"], "* * * * *");
    assert_eq!(stats["overridden"], false);

    // Run now, waiting for the end: the result and the duration are there.
    let done = admin.run("pool_stats").await;
    assert_eq!(done["last_ok"], true, "{done}");
    assert!(
        done["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("1 pool(s) counted")),
        "{done}"
    );
    assert!(done["last_duration_ms"].is_u64() && done["last_start"].is_string());
    // Without waiting: 202.
    let r = admin
        .call(Method::POST, "/api/v1/jobs/pool_history_stats/run", None)
        .await;
    assert!(r.status == 202 || r.status == 409, "{}", r.text);
    let r = admin
        .call(Method::POST, "/api/v1/jobs/no_such_job/run", None)
        .await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (404, &json!("not_found")),
        "{}",
        r.text
    );

    // A schedule that cannot be read is refused with the reason, and nothing changes.
    let r = admin
        .call(
            Method::PUT,
            "/api/v1/jobs/pool_stats",
            Some(json!({"schedule": "61 * * * *"})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (400, &json!("invalid")),
        "{}",
        r.text
    );
    assert_eq!(r.body["fields"][0]["field"], "schedule", "{}", r.text);
    assert!(r.text.contains("61 * * * *"), "{}", r.text);
    assert_eq!(admin.job("pool_stats").await["schedule"], "* * * * *");
    let r = admin
        .call(
            Method::PUT,
            "/api/v1/jobs/pool_stats",
            Some(json!({"schedule": "*/10 * * * *"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.body["schedule"], &r.body["overridden"]),
        (&json!("*/10 * * * *"), &json!(true))
    );
    assert!(r.body["next_start"].is_string());

    // The console: the list, a refused schedule on the form, turning a job off, and back.
    let mut c = server.console();
    assert_eq!(c.sign_in("admin", PASSWORD).await.status, 303);
    let page = c.get("/admin/system/jobs").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("*/10 * * * * (set in the console)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("ok: 1 pool(s) counted"), "{}", page.body);
    c.get("/admin/system/jobs/pool_history_stats").await;
    let a = c
        .post(
            "/admin/system/jobs/pool_history_stats",
            &[("schedule", "every day")],
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("is not a schedule"), "{}", a.body);
    assert!(
        a.body.contains("every day"),
        "what was typed stays in the form"
    );
    assert_eq!(
        admin.job("pool_history_stats").await["schedule"],
        "*/5 * * * *"
    );
    let a = c
        .post("/admin/system/jobs/pool_history_stats", &[("schedule", "")])
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin/system/jobs?notice=saved"),
        "{}",
        a.body
    );
    let off = admin.job("pool_history_stats").await;
    assert_eq!(
        (&off["schedule"], &off["next_start"]),
        (&json!(""), &Value::Null)
    );
    let page = c.get("/admin/system/jobs/pool_history_stats").await;
    assert!(
        page.body.contains("Use the configured schedule"),
        "{}",
        page.body
    );
    let a = c
        .post("/admin/system/jobs/pool_history_stats/configured", &[])
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(admin.job("pool_history_stats").await["overridden"], false);
    c.get("/admin/system/jobs").await;
    let a = c
        .post("/admin/system/jobs/run", &[("name", "pool_stats")])
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let audit = c.get("/admin/system/audit").await.body;
    assert!(
        audit.contains("job.schedule") && audit.contains("job.run"),
        "{audit}"
    );
    assert!(
        audit.contains("refused `every day`"),
        "refusals are audited too"
    );

    // A schedule set in the console outlives a restart.
    server.kill();
    let server = Server::start(&data, Some(&config));
    let admin = Admin::new(&server).await;
    let kept = admin.job("pool_stats").await;
    assert_eq!(
        (&kept["schedule"], &kept["overridden"]),
        (&json!("*/10 * * * *"), &json!(true))
    );
}

#[tokio::test]
async fn a_failing_job_shows_its_error_and_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A backup folder that cannot be made.
    let config = format!("{QUIET}[backup]\ndir = \"/proc/gatehouse-no-backups-here\"\n");
    let (server, _data, _config) = appliance(dir.path(), 1, &config, |_| {});
    let admin = Admin::new(&server).await;
    let first = admin.run("backup").await;
    assert_eq!(first["last_ok"], false, "{first}");
    assert!(
        first["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("gatehouse-no-backups-here")),
        "{first}"
    );
    let second = admin.run("backup").await;
    assert_eq!(
        (&second["last_ok"], &second["runs"]),
        (&json!(false), &json!(2)),
        "a failed job runs again"
    );
    let mut c = server.console();
    c.sign_in("admin", PASSWORD).await;
    let page = c.get("/admin/system/jobs").await.body;
    assert!(
        page.contains("failed: ") && page.contains("gatehouse-no-backups-here"),
        "{page}"
    );
}

/// A release plan releasing a desktop as soon as its user disconnects, for the Lab's policy.
fn release_at_disconnect(store: &Store) {
    let plan = ReleasePlan {
        id: "quick".into(),
        name: "Quick".into(),
        logout_after_disconnect_minutes: None,
        release_after_logout_minutes: Some(0),
        release_after_disconnect_minutes: Some(0),
        delete_after_release_minutes: None,
    };
    store.put("quick", &plan).expect("plan");
    let mut policy: Policy = store.get("lab").expect("get").expect("policy");
    policy.entries[0].release_plan = "quick".into();
    store.put("lab", &policy).expect("policy");
}

fn slapd_server(store: &Store, slapd: &Slapd) {
    let server = slapd.auth_server(Security::Ldaps);
    store.put(&server.id.clone(), &server).expect("auth server");
}

#[tokio::test]
async fn a_disconnect_releases_after_the_plan_s_minutes_unless_the_user_comes_back() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 2,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, data, config) = appliance(dir.path(), 1, QUIET, |s| {
        slapd_server(s, &slapd);
        release_at_disconnect(s);
    });
    let admin = Admin::new(&server).await;
    let client = ClientApi::new(&server);
    let login = client
        .login("user00001", GENERATED_PASSWORD, "laptop")
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let token = login.body["token"].as_str().expect("token").to_string();
    let desk = login.body["desktops"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let connect = format!("/api/v1/client/desktops/{desk}/connect");
    let disconnect = format!("/api/v1/client/desktops/{desk}/disconnect");
    assert_eq!(client.call(&token, &connect, false).await.status, 200);

    // Someone else cannot report for this desktop.
    let bob = client.login("user00002", GENERATED_PASSWORD, "b").await;
    let bob = bob.body["token"].as_str().expect("token").to_string();
    let r = client.call(&bob, &disconnect, false).await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (404, &json!("not_yours")),
        "{}",
        r.body
    );

    // Disconnect: the session ends and the release is set for now.
    let r = client.call(&token, &disconnect, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sessions_ended"], 1, "{}", r.body);
    assert_eq!(r.body["timers_set"][0]["action"], "release", "{}", r.body);
    assert_eq!(admin.timers(&desk).await.len(), 1);
    // The user comes back before the timer runs: it is cancelled, and the run finds nothing.
    assert_eq!(client.call(&token, &connect, false).await.status, 200);
    assert!(admin.timers(&desk).await.is_empty());
    let run = admin.run("plan_timers").await;
    assert_eq!(run["last_result"], "no timer was due", "{run}");
    let mine = client.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(mine.body["desktops"][0]["yours"], true, "{}", mine.body);

    // Disconnected for good: the next run releases the desktop.
    assert_eq!(client.call(&token, &disconnect, false).await.status, 200);
    let run = admin.run("plan_timers").await;
    assert_eq!(run["last_result"], "1 timer run", "{run}");
    let offer = client.call(&token, "/api/v1/client/desktops", true).await;
    assert_eq!(
        offer.body["desktops"][0]["id"],
        desk.as_str(),
        "{}",
        offer.body
    );
    assert_eq!(
        offer.body["desktops"][0]["yours"], false,
        "released: {}",
        offer.body
    );
    let history = admin.history(&desk).await;
    assert_eq!(
        history.first().map(String::as_str),
        Some("timer.release"),
        "{history:?}"
    );
    assert!(
        history.contains(&"event.connect".to_string()),
        "the cancellation: {history:?}"
    );

    // A timer due when the appliance is killed runs at the first run after the start, once.
    assert_eq!(client.call(&token, &connect, false).await.status, 200);
    assert_eq!(client.call(&token, &disconnect, false).await.status, 200);
    server.kill();
    let server = Server::start(&data, Some(&config));
    let admin = Admin::new(&server).await;
    assert_eq!(admin.timers(&desk).await.len(), 1, "kept across the kill");
    assert_eq!(admin.run("plan_timers").await["last_result"], "1 timer run");
    assert_eq!(
        admin.run("plan_timers").await["last_result"],
        "no timer was due"
    );
    let releases = admin
        .history(&desk)
        .await
        .iter()
        .filter(|a| *a == "timer.release")
        .count();
    assert_eq!(releases, 2, "one release per disconnect");
    let desktop: Value = admin.get(&format!("/api/v1/desktops/{desk}")).await.body;
    assert_eq!(desktop["assigned_user"], Value::Null, "{desktop}");
    // The desktop's page shows its history and the pending timers.
    let mut c = server.console();
    c.sign_in("admin", PASSWORD).await;
    let page = c
        .get(&format!("/admin/resources/desktops/{desk}"))
        .await
        .body;
    assert!(
        page.contains("id=\"detail-history\"") && page.contains("timer.release"),
        "{page}"
    );
    let audit = c.get("/admin/system/audit").await.body;
    assert!(audit.contains("plan.release"), "{audit}");
}

#[tokio::test]
async fn agent_events_need_the_desktop_s_own_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _data, _config) = appliance(dir.path(), 2, QUIET, |s| {
        // Power a desktop off after 20 idle minutes (the static center cannot: it says so).
        let mut power = PowerPlan::default_plan();
        power.on_idle = PowerRule {
            after_minutes: 20,
            action: PowerAction::PowerOff,
        };
        s.put("default", &power).expect("power plan");
    });
    let admin = Admin::new(&server).await;
    let desktops = admin.get("/api/v1/desktops").await.body;
    let id = |i: usize| desktops[i]["id"].as_str().expect("id").to_string();
    let (a, b) = (id(0), id(1));
    let issue = |d: String| {
        let admin = &admin;
        async move {
            let r = admin
                .call(
                    Method::POST,
                    &format!("/api/v1/desktops/{d}/agent-token"),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["desktop"], d.as_str());
            r.body["token"].as_str().expect("token").to_string()
        }
    };
    let token_a = issue(a.clone()).await;
    let token_b = issue(b.clone()).await;
    assert!(token_a.starts_with("ghag_") && token_a != token_b);
    let http = common::client();
    let events = format!("{}/api/v1/agent/events", server.base);
    let send = |token: Option<&str>, body: Value| {
        let mut req = http.post(&events).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { reply(req.send().await.expect("request")).await }
    };

    let r = send(None, json!({"event": "login"})).await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (401, &json!("agent_token_required")),
        "{}",
        r.text
    );
    let r = send(Some("ghag_not-a-token"), json!({"event": "login"})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    // What the agent is asked to do: nothing yet; and only with its token.
    let instructions = format!("{}/api/v1/agent/instructions", server.base);
    let r = reply(
        http.get(&instructions)
            .bearer_auth(&token_a)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"desktop": a, "logout": null})),
        "{}",
        r.text
    );
    let r = reply(http.get(&instructions).send().await.expect("request")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    // A bad body: every wrong field named, nothing recorded.
    let before = admin.history(&a).await.len();
    let r = send(Some(&token_a), json!({"event": "idle", "colour": "red"})).await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (400, &json!("invalid")),
        "{}",
        r.text
    );
    let fields: Vec<&str> = r.body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert_eq!(fields, ["colour", "seconds"], "{}", r.text);
    assert_eq!(admin.history(&a).await.len(), before, "store unchanged");
    // One desktop cannot report for another.
    let r = send(Some(&token_a), json!({"event": "login", "desktop": b})).await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (403, &json!("forbidden")),
        "{}",
        r.text
    );

    // The right token: an idle report sets the idle rule's timer, due at once (idle 20 min).
    let r = send(
        Some(&token_a),
        json!({"event": "idle", "seconds": 1200, "user": "alice"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.body["desktop"], &r.body["event"]),
        (&json!(a), &json!("idle"))
    );
    assert_eq!(
        r.body["timers_set"][0]["action"], "power: power off",
        "{}",
        r.text
    );
    let r = send(Some(&token_b), json!({"event": "lock", "desktop": b})).await;
    assert_eq!(
        (r.status, &r.body["desktop"]),
        (200, &json!(b)),
        "{}",
        r.text
    );
    assert!(admin.history(&b).await.contains(&"event.lock".to_string()));

    // A new token for A: the old one stops working.
    let newer = issue(a.clone()).await;
    let r = send(Some(&token_a), json!({"event": "unlock"})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        send(Some(&newer), json!({"event": "lock"})).await.status,
        200
    );

    // The idle timer runs; the static center cannot power machines off, and says so.
    // The run shows as failed, and the action is tried again later.
    let run = admin.run("plan_timers").await;
    let said = run["last_result"].as_str().unwrap_or_default();
    assert!(
        said.contains("1 failed") && said.contains("not supported by the static center"),
        "{run}"
    );
    assert_eq!(run["last_ok"], false, "{run}");
    assert_eq!(admin.timers(&a).await.len(), 1, "tried again later");
    let mut c = server.console();
    c.sign_in("admin", PASSWORD).await;
    let page = c.get(&format!("/admin/resources/desktops/{a}")).await;
    assert!(page.body.contains("Issue agent token"), "{}", page.body);
    assert!(
        page.body.contains("timer.power")
            && page.body.contains("not supported by the static center"),
        "{}",
        page.body
    );
    let shown = c
        .post(&format!("/admin/resources/desktops/{a}/agent-token"), &[])
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let at = shown.body.find("ghag_").expect("the token is shown once");
    let from_console: String = shown.body[at..].chars().take_while(|c| *c != '<').collect();
    assert_eq!(
        send(Some(&from_console), json!({"event": "login"}))
            .await
            .status,
        200
    );
    assert_eq!(
        send(Some(&newer), json!({"event": "login"})).await.status,
        401
    );
}

#[tokio::test]
async fn pool_statistics_are_counted_kept_drawn_and_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _data, _config) = appliance(dir.path(), 3, QUIET, |s| {
        let (id, mut d) = s.list::<Desktop>().expect("desktops").remove(0);
        d.assigned_user = Some("slapd/alice".into());
        s.put(&id, &d).expect("desktop");
    });
    let admin = Admin::new(&server).await;
    let pools = admin.get("/api/v1/pools").await.body;
    let pool = pools[0]["id"].as_str().expect("pool id").to_string();

    admin.run("pool_stats").await;
    let r = admin.get(&format!("/api/v1/pools/{pool}/stats")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let counts = &r.body["current"]["counts"];
    assert_eq!(
        (&counts["total"], &counts["assigned"], &counts["unassigned"]),
        (&json!(3), &json!(1), &json!(2)),
        "{}",
        r.text
    );
    assert_eq!(counts["available"], 2, "{}", r.text);
    assert_eq!(r.body["pool_name"], "Lab");
    assert_eq!(r.body["history"], json!([]));

    let sampled = admin.run("pool_history_stats").await;
    assert!(
        sampled["last_result"]
            .as_str()
            .is_some_and(|s| s.starts_with("1 sample(s) added")),
        "{sampled}"
    );
    let r = admin.get(&format!("/api/v1/pools/{pool}/stats")).await;
    assert_eq!(
        r.body["history"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    assert_eq!(r.body["history"][0]["counts"]["total"], 3);
    let r = admin
        .get(&format!(
            "/api/v1/pools/{pool}/stats?since=2999-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(r.body["history"], json!([]), "{}", r.text);
    let r = admin
        .get(&format!("/api/v1/pools/{pool}/stats?since=yesterday"))
        .await;
    assert_eq!(
        (r.status, &r.body["fields"][0]["field"]),
        (400, &json!("since")),
        "{}",
        r.text
    );
    assert_eq!(admin.get("/api/v1/pools/nope/stats").await.status, 404);

    let metrics = server.metrics().await;
    for (state, n) in [
        ("total", 3),
        ("assigned", 1),
        ("available", 2),
        ("connected", 0),
    ] {
        let line = format!(
            "gatehouse_pool_desktops{{pool_id=\"{pool}\",pool_name=\"Lab\",state=\"{state}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }

    let mut c = server.console();
    c.sign_in("admin", PASSWORD).await;
    let page = c.get("/admin/dashboard/pools").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Pool Statistics") && page.body.contains("<svg"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(">Lab<") && page.body.contains("Users connected"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<polyline") || page.body.contains("<circle"),
        "the sample is drawn: {}",
        page.body
    );
    assert_eq!(c.get("/admin/dashboard/pools?days=90").await.status, 200);
}

#[tokio::test]
async fn a_job_never_runs_twice_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The backup reads its passphrase from a named pipe: it stays running until the test
    // writes to it.
    let fifo = dir.path().join("passphrase");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let config = format!(
        "{QUIET}[backup]\npassphrase_file = \"{}\"\n",
        fifo.display()
    );
    let (server, data, _config) = appliance(dir.path(), 1, &config, |_| {});
    let admin = std::sync::Arc::new(Admin::new(&server).await);
    let run = |admin: std::sync::Arc<Admin>| async move {
        admin
            .call(Method::POST, "/api/v1/jobs/backup/run?wait=true", None)
            .await
    };
    let mut first = tokio::spawn(run(admin.clone()));
    let mut second = tokio::spawn(run(admin.clone()));
    // One of the two starts the job, which waits on the pipe; the other is refused.
    let (refused, running) = tokio::select! {
        r = &mut first => (r.expect("request"), second),
        r = &mut second => (r.expect("request"), first),
    };
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (409, &json!("conflict")),
        "{}",
        refused.text
    );
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("running"))
    );
    assert_eq!(admin.job("backup").await["running"], true);
    std::fs::write(&fifo, "a passphrase for the test\n").expect("write to the pipe");
    let done = running.await.expect("request");
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(
        (&done.body["last_ok"], &done.body["runs"]),
        (&json!(true), &json!(1)),
        "{}",
        done.text
    );
    assert_eq!(
        std::fs::read_dir(data.join("backups"))
            .expect("backups")
            .count(),
        1,
        "one run, one file"
    );
}
