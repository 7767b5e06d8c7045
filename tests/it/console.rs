//! The console over real HTTPS: the wizard, its gate, CSRF, sign-in throttling, licences,
//! certificates, My options, the audit log and metrics, and nested lists edited as row groups
//! without a browser.

use serde_json::{Value, json};

use crate::common::{self, Console, Licensing, Server};

const PASSWORD: &str = "Gatehouse-Test-42!";

#[tokio::test]
async fn wizard_end_to_end_then_factory_password_is_refused() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();

    // Before the wizard every console page and API leads to it.
    for path in [
        "/admin",
        "/admin/system/licence",
        "/admin/system/backups",
        "/admin/me",
    ] {
        let a = c.get(path).await;
        assert_eq!(
            (a.status, a.location.as_str()),
            (303, "/admin/wizard"),
            "{path}"
        );
    }
    let api = c.get("/api/v1/anything").await;
    assert_eq!(api.status, 303);
    let json: serde_json::Value = serde_json::from_str(&api.body).expect("json error body");
    assert_eq!(json["error"], "setup_required");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("wizard"))
    );
    // The wizard itself needs a signed-in administrator.
    let a = c.get("/admin/wizard").await;
    assert_eq!((a.status, a.location.as_str()), (303, "/admin/login"));

    c.complete_wizard(PASSWORD, None).await;
    let dash = c.get("/admin").await;
    assert_eq!(dash.status, 200, "{}", dash.body);
    assert!(dash.body.contains("Signed in as admin"));
    assert!(
        dash.body.contains("Evaluation"),
        "evaluation is shown as such"
    );
    for area in [
        "Dashboard",
        "Setup",
        "System",
        "Licence",
        "Backups",
        "Audit log",
    ] {
        assert!(dash.body.contains(area), "menu has {area}");
    }
    for area in [
        "Configuration",
        "Resources",
        "Pools",
        "Desktops",
        "Authentication Servers",
    ] {
        assert!(dash.body.contains(area), "menu has {area}");
    }

    // The factory password no longer opens anything.
    let mut other = server.console();
    let a = other.sign_in("admin", "leo").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("Wrong user name or password"));
    // The new one does.
    let mut again = server.console();
    let a = again.sign_in("admin", PASSWORD).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/admin"));

    // After a restart the wizard stays done.
    drop(server);
    let server = Server::start(&data, None);
    let mut c = server.console();
    let a = c.sign_in("admin", PASSWORD).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/admin"));
}

#[tokio::test]
async fn wizard_steps_cannot_be_skipped_and_weak_passwords_are_refused() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.sign_in("admin", "leo").await;
    c.get("/admin/wizard").await;
    // Step 2 and 3 before step 1: refused.
    let a = c
        .post_multipart(
            "/admin/wizard/licence",
            &[("agree", "yes"), ("choice", "evaluation")],
            &[],
        )
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = c
        .post_multipart("/admin/wizard/certificate", &[("choice", "keep")], &[])
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = c.post("/admin/wizard/finish", &[]).await;
    assert_eq!(a.status, 409, "{}", a.body);
    // Weak and mismatched passwords.
    let a = c
        .post(
            "/admin/wizard/password",
            &[("password", "short"), ("confirm", "short")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("at least 12"), "{}", a.body);
    let a = c
        .post(
            "/admin/wizard/password",
            &[("password", PASSWORD), ("confirm", "Gatehouse-Test-43!")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("differ"));
    // Nothing changed: the factory password still signs in.
    let mut other = server.console();
    assert_eq!(
        other.sign_in("admin", "leo").await.location,
        "/admin/wizard"
    );
    // The licence step without the agreement checkbox.
    c.post(
        "/admin/wizard/password",
        &[("password", PASSWORD), ("confirm", PASSWORD)],
    )
    .await;
    c.get("/admin/wizard").await;
    let a = c
        .post_multipart("/admin/wizard/licence", &[("choice", "evaluation")], &[])
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("Accept the licence agreement"));
    // The certificate step is still closed.
    let a = c
        .post_multipart("/admin/wizard/certificate", &[("choice", "keep")], &[])
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.get("/admin/login").await;
    // Sign-in form: missing token, wrong token.
    let a = c
        .post_raw(
            "/admin/login",
            &[("username", "admin"), ("password", "leo")],
        )
        .await;
    assert_eq!(a.status, 403);
    let a = c
        .post_raw(
            "/admin/login",
            &[
                ("username", "admin"),
                ("password", "leo"),
                ("csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("csrf_failed"));
    // A signed-in form with a token from another session.
    let a = c.sign_in("admin", "leo").await;
    assert_eq!(a.status, 303);
    let mut other = server.console();
    other.get("/admin/login").await;
    let foreign = other.csrf.clone();
    c.get("/admin/wizard").await;
    let a = c
        .post_raw(
            "/admin/wizard/password",
            &[
                ("password", PASSWORD),
                ("confirm", PASSWORD),
                ("csrf", &foreign),
            ],
        )
        .await;
    assert_eq!(a.status, 403);
    let a = c.post_multipart("/admin/wizard/licence", &[], &[]).await;
    assert_ne!(a.status, 403, "the right token passes the check");
    // The refused password change did not happen.
    let mut third = server.console();
    assert_eq!(third.sign_in("admin", "leo").await.status, 303);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_then_locked_out() {
    let (dir, data) = common::fresh_data();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(&config, "[security]\nmax_failures_per_account = 3\n").expect("config");
    let server = Server::start(&data, Some(&config));
    let mut c = server.console();
    // Names and passwords longer than any account's are refused before anything counts them.
    let long = "x".repeat(10_000);
    let a = c.sign_in(&long, "wrong").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("too long"), "{}", a.body);
    // One account however it is typed: the three spellings share one budget.
    for name in ["admin", "EXAMPLE\\admin", "Admin@example.com"] {
        let a = c.sign_in(name, "wrong").await;
        assert_eq!(a.status, 401, "failure as {name}");
    }
    // Locked: even the right password is refused, with a clear message.
    let a = c.sign_in("admin", "leo").await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("Too many failed sign-ins"));
    // Every attempt while locked is refused; the audit log says so once.
    for _ in 0..3 {
        assert_eq!(c.sign_in("admin", "leo").await.status, 429);
    }
    let metrics = c.get("/metrics").await.body;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_signin_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sign-in failure counter");
    assert_eq!(failures, 7, "every refusal is counted");
    assert!(metrics.contains("route=\"/admin/login\""), "{metrics}");
    assert!(metrics.contains("gatehouse_process_resident_memory_bytes"));
    let health = c.get("/healthz").await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    drop(server);
    let store = gatehouse::store::Store::open(&data).expect("store");
    let audit: Vec<gatehouse::model::AuditEntry> = store.values().expect("audit");
    let count = |action: &str| audit.iter().filter(|a| a.action == action).count();
    assert_eq!(count("signin.failed"), 3, "{audit:?}");
    assert_eq!(count("signin.locked"), 1, "{audit:?}");
    assert!(
        audit.iter().all(|a| a.actor.len() < 1_000),
        "no over-long name reached the audit log"
    );
}

#[tokio::test]
async fn licence_keys_are_checked_with_a_clear_error_for_each_fault() {
    let (dir, data) = common::fresh_data();
    let vendor = Licensing::new();
    let stranger = Licensing::new();
    let config = vendor.config_file(dir.path(), "");
    let server = Server::start(&data, Some(&config));
    let code = common::installation_code(&data);
    let mut c = server.console();
    c.sign_in("admin", "leo").await;
    c.get("/admin/wizard").await;
    c.post(
        "/admin/wizard/password",
        &[("password", PASSWORD), ("confirm", PASSWORD)],
    )
    .await;
    let page = c.get("/admin/wizard").await;
    assert!(
        page.body.contains(&code),
        "the wizard shows the installation code"
    );

    let other_code = {
        let (_d, other) = common::fresh_data();
        drop(Server::start(&other, None));
        common::installation_code(&other)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed",
            "this is not a licence key".into(),
            "could not be read",
        ),
        (
            "bad signature",
            stranger.issue("S-1", &code, &[]),
            "signature does not match",
        ),
        (
            "other installation",
            vendor.issue("S-2", &other_code, &[]),
            "issued for installation",
        ),
        (
            "expired",
            vendor.issue(
                "S-3",
                &code,
                &["--issued", "2020-01-01", "--expires", "2020-01-31"],
            ),
            "expired on 2020-01-31",
        ),
    ];
    for (what, key, message) in cases {
        let a = c
            .post_multipart(
                "/admin/wizard/licence",
                &[("key", &key), ("agree", "yes"), ("choice", "key")],
                &[],
            )
            .await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert!(
            a.body.contains(message),
            "{what}: expected {message:?} in {}",
            a.body
        );
        assert!(
            a.body.contains("id=\"licence-form\""),
            "{what}: still on the licence step"
        );
    }
    // A good key, uploaded as a file.
    let good = vendor.issue(
        "S-GOOD",
        &code,
        &["--max-users", "250", "--expires", "2099-12-31"],
    );
    let a = c
        .post_multipart(
            "/admin/wizard/licence",
            &[("agree", "yes"), ("choice", "key")],
            &[("key_file", "licence.txt", good.into_bytes())],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    c.get("/admin/wizard").await;
    c.post_multipart("/admin/wizard/certificate", &[("choice", "keep")], &[])
        .await;
    c.get("/admin/wizard").await;
    c.post("/admin/wizard/finish", &[]).await;
    let page = c.get("/admin/system/licence").await;
    assert_eq!(page.status, 200);
    for fact in [
        "S-GOOD",
        "ACME Test",
        "2099-12-31",
        "250",
        "accepted by admin on",
    ] {
        assert!(page.body.contains(fact), "licence page shows {fact}");
    }
    assert!(
        !page.body.contains("id=\"licence-banner\""),
        "no evaluation banner once licensed"
    );
    // System > Licence refuses a bad key later too, and keeps the good one.
    let a = c
        .post_multipart(
            "/admin/system/licence",
            &[("key", "garbage"), ("agree", "yes")],
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("S-GOOD"));
    let audit = c.get("/admin/system/audit").await.body;
    assert!(
        audit.contains("licence.refused") && audit.contains("licence.activated"),
        "{audit}"
    );
}

#[tokio::test]
async fn uploaded_certificates_are_validated_and_applied_without_restart() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).expect("fixture");
    let (ec_cert, ec_key, rsa_key) = (
        read("ec-cert.pem"),
        read("ec-key-sec1.pem"),
        read("rsa-key-pkcs1.pem"),
    );

    // A client that trusts only the fixture certificate.
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let strict = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ec_cert.as_bytes()).expect("pem")])
        .build()
        .expect("client");
    let health = format!("https://localhost:{port}/healthz");
    assert!(
        strict.get(&health).send().await.is_err(),
        "the generated certificate is not the fixture"
    );

    c.get("/admin/setup/certificate").await;
    let a = c
        .post_multipart(
            "/admin/setup/certificate",
            &[("cert", &ec_cert), ("key", &rsa_key)],
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.body.contains("does not belong to this certificate"),
        "{}",
        a.body
    );
    assert!(
        strict.get(&health).send().await.is_err(),
        "a refused upload changes nothing"
    );

    let a = c
        .post_multipart(
            "/admin/setup/certificate",
            &[],
            &[
                ("cert_file", "c.pem", ec_cert.clone().into_bytes()),
                ("key_file", "k.pem", ec_key.into_bytes()),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("The new certificate is in use"));
    let resp = strict
        .get(&health)
        .send()
        .await
        .expect("new certificate served without restart");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn my_options_changes_the_password_and_reset_password_forces_a_change() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    c.get("/admin/me").await;
    let a = c
        .post(
            "/admin/me/password",
            &[
                ("current", "wrong"),
                ("password", "Another-Pass-77!"),
                ("confirm", "Another-Pass-77!"),
            ],
        )
        .await;
    assert_eq!(a.status, 401);
    let a = c
        .post(
            "/admin/me/password",
            &[
                ("current", PASSWORD),
                ("password", "Another-Pass-77!"),
                ("confirm", "Another-Pass-77!"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("Your password has been changed"));
    assert_eq!(
        server.console().sign_in("admin", PASSWORD).await.status,
        401
    );

    // reset-password needs the server stopped, and says so.
    let (ok, _, err) = common::run(&[
        "admin",
        "reset-password",
        "--data",
        data.to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(err.contains("in use"), "{err}");
    drop(server);
    let (ok, out, err) = common::run(&[
        "admin",
        "reset-password",
        "--data",
        data.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    let one_time = out
        .lines()
        .find_map(|l| l.strip_prefix("One-time password for admin: "))
        .expect("password printed")
        .to_string();
    let server = Server::start(&data, None);
    let mut c = server.console();
    let a = c.sign_in("admin", &one_time).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/admin/me"));
    let a = c.get("/admin/system/audit").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin/me"),
        "nothing else until changed"
    );
    c.get("/admin/me").await;
    let a = c
        .post(
            "/admin/me/password",
            &[
                ("current", &one_time),
                ("password", "Third-Pass-99!"),
                ("confirm", "Third-Pass-99!"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let audit = c.get("/admin/system/audit").await;
    assert_eq!(audit.status, 200);
    for action in [
        "password.reset",
        "password.change",
        "wizard.finished",
        "signin",
    ] {
        assert!(audit.body.contains(action), "audit has {action}");
    }
}

#[tokio::test]
async fn plain_http_port_redirects_to_https() {
    let (dir, data) = common::fresh_data();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let plain = free.local_addr().expect("addr");
    drop(free);
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!("[server]\nhttp_redirect_listen = \"{plain}\"\n"),
    )
    .expect("config");
    let server = Server::start(&data, Some(&config));
    let resp = common::client()
        .get(format!("http://{plain}/admin/login?x=1"))
        .send()
        .await
        .expect("plain port answers");
    assert_eq!(resp.status(), 308);
    let to = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(to, format!("{}/admin/login?x=1", server.base));
}

#[tokio::test]
async fn sigterm_stops_the_appliance_cleanly_and_removes_its_console_socket() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    // One request through the TLS port, so the gateway's connection threads have served.
    let health = common::client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("the appliance answers");
    assert_eq!(health.status(), 200);
    let logs = server.logs();
    let socket = logs
        .split('"')
        .find(|part| part.ends_with("console.sock"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("the console socket is in the log: {logs}"));
    assert!(socket.exists(), "{} exists while serving", socket.display());
    let stderr = server.stderr.clone();

    let status = server.stop();

    let logs = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM: {logs}"
    );
    assert!(
        !logs.contains("panicked"),
        "no panic on the way out: {logs}"
    );
    assert!(logs.contains("Gatehouse stopped"), "{logs}");
    assert!(!socket.exists(), "{} is removed", socket.display());
}

#[tokio::test]
async fn session_cookie_is_secure_httponly_strict() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let resp = common::client()
        .get(format!("{}/admin/login", server.base))
        .send()
        .await
        .expect("login page");
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    for part in [
        "__Host-gatehouse=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
}

#[test]
fn bad_config_is_refused_at_start_with_file_key_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 3\n",
    )
    .expect("write");
    let (ok, _, err) = common::run(&[
        "config",
        "check",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("bad.toml") && err.contains("listen_port"),
        "{err}"
    );
    std::fs::write(&config, "[backup]\nkeep = 0\n").expect("write");
    let data = dir.path().join("data");
    let (ok, _, err) = common::run(&[
        "serve",
        "--config",
        config.to_str().expect("utf8"),
        "--data",
        data.to_str().expect("utf8"),
    ]);
    assert!(!ok, "the server does not start");
    assert!(
        err.contains("backup.keep") && err.contains("at least 1"),
        "{err}"
    );
    assert!(!data.exists(), "nothing was written");
    let (ok, out, _) = common::run(&["config", "default"]);
    assert!(ok && out.contains("[server]") && out.contains("# listen ="));
    let default = dir.path().join("default.toml");
    std::fs::write(&default, out).expect("write");
    let (ok, _, err) = common::run(&[
        "config",
        "check",
        "--config",
        default.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn unattended_setup_runs_the_wizard_steps() {
    let (dir, data) = common::fresh_data();
    let vendor = Licensing::new();
    let config = vendor.config_file(dir.path(), "");
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write");
    let cfg = config.to_str().expect("utf8");
    let d = data.to_str().expect("utf8");
    let pw = password_file.to_str().expect("utf8");

    // A weak password stops setup before anything is saved past the first start.
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "short\n").expect("write");
    let (ok, _, err) = common::run(&[
        "setup",
        "--config",
        cfg,
        "--data",
        d,
        "--admin-password-file",
        weak.to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(err.contains("at least 12"), "{err}");

    // A licence file needs the agreement.
    let code = common::installation_code(&data);
    let key_file = dir.path().join("licence.txt");
    std::fs::write(&key_file, vendor.issue("S-CLI", &code, &[])).expect("write");
    let kf = key_file.to_str().expect("utf8");
    let (ok, _, err) = common::run(&[
        "setup",
        "--config",
        cfg,
        "--data",
        d,
        "--admin-password-file",
        pw,
        "--licence-file",
        kf,
    ]);
    assert!(!ok);
    assert!(err.contains("--accept-licence"), "{err}");

    let (ok, out, err) = common::run(&[
        "setup",
        "--config",
        cfg,
        "--data",
        d,
        "--admin-password-file",
        pw,
        "--licence-file",
        kf,
        "--accept-licence",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Licence S-CLI") && out.contains("Setup complete"),
        "{out}"
    );

    let server = Server::start(&data, Some(&config));
    let mut c = server.console();
    assert_eq!(
        c.sign_in("admin", "leo").await.status,
        401,
        "the factory password is gone"
    );
    let a = c.sign_in("admin", PASSWORD).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin"),
        "the wizard is done"
    );
    let licence = c.get("/admin/system/licence").await.body;
    assert!(
        licence.contains("S-CLI") && licence.contains("accepted by cli on"),
        "{licence}"
    );

    let (ok, out, _) = common::run(&["version"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
}

// ---- Row groups -------------------------------------------------------------------------------

const POOLS: &str = "/admin/configuration/pools";
const POLICIES: &str = "/admin/configuration/policies";
const PROTOCOL_PLANS: &str = "/admin/configuration/protocol-plans";

/// A configuration list as the API serves it, read with an administrator's token.
async fn api_list(server: &Server, path: &str) -> Vec<Value> {
    let http = common::client();
    let token: Value = http
        .post(format!("{}/api/v1/tokens", server.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .expect("POST tokens")
        .json()
        .await
        .expect("a token");
    let token = token["token"].as_str().expect("token");
    let list: Value = http
        .get(format!("{}/api/v1/{path}", server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET list")
        .json()
        .await
        .expect("a list");
    list.as_array().expect("a list").clone()
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|i| i["name"] == name)
}

/// The `<select>` named `name` in a page, from its tag to its end.
fn select_of<'b>(body: &'b str, name: &str) -> &'b str {
    let start = body
        .find(&format!("<select name=\"{name}\">"))
        .unwrap_or_else(|| panic!("no select {name} in {body}"));
    let end = start + body[start..].find("</select>").expect("the select's end");
    &body[start..end]
}

/// Whether the select `name` has the option `value` selected.
fn chosen(body: &str, name: &str, value: &str) -> bool {
    select_of(body, name).contains(&format!("<option value=\"{value}\" selected>"))
}

/// The fields of one policy entry row, as a browser submits them.
fn entry(i: usize, pool: &str, offer: &str, running: bool) -> Vec<(String, String)> {
    let at = |k: &str| format!("entries[{i}]{k}");
    let mut fields = vec![
        (at(""), String::new()),
        (at(".pool_id"), pool.to_string()),
        (at(".offer"), offer.to_string()),
        (at(".order"), "by_name".to_string()),
        (at(".protocol_plan"), "default".to_string()),
        (at(".power_plan"), "default".to_string()),
        (at(".release_plan"), "default".to_string()),
    ];
    if running {
        fields.push((at(".running_only"), "on".to_string()));
    }
    fields
}

/// Posts a policy form: its name, rows and any further fields (a button).
async fn post_policy(
    c: &mut Console,
    path: &str,
    rows: &[Vec<(String, String)>],
    more: &[(&str, &str)],
) -> common::Answer {
    let mut fields: Vec<(&str, &str)> = vec![("name", "Staff")];
    for row in rows {
        fields.extend(row.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    fields.extend_from_slice(more);
    c.post(path, &fields).await
}

#[tokio::test]
async fn nested_lists_are_edited_as_rows_and_a_bad_row_saves_nothing() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;

    // A pool with two rules, each a row; "Add rule" shows the form again, saving nothing.
    let new_pool = format!("{POOLS}/new");
    let form = c.get(&new_pool).await;
    assert!(
        form.body.contains("name=\"add_row\" value=\"rules\""),
        "{}",
        form.body
    );
    let a = c
        .post(
            &new_pool,
            &[("name", "Lab"), ("match_all", "off"), ("add_row", "rules")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("Not saved yet"), "{}", a.body);
    assert!(chosen(&a.body, "rules[0].attribute", "name"), "{}", a.body);
    assert!(chosen(&a.body, "match_all", "off"), "kept as chosen");
    assert!(a.body.contains("value=\"Lab\""), "kept as typed");
    assert!(named(&api_list(&server, "pools").await, "Lab").is_none());
    let a = c
        .post(
            &new_pool,
            &[
                ("name", "Lab"),
                ("match_all", "off"),
                ("rules[0]", ""),
                ("rules[0].attribute", "name"),
                ("rules[0].metadata_key", ""),
                ("rules[0].condition", "begins_with"),
                ("rules[0].value", "lab-"),
                ("rules[1]", ""),
                ("rules[1].attribute", "metadata"),
                ("rules[1].metadata_key", "dept"),
                ("rules[1].condition", "equals"),
                ("rules[1].value", "eng"),
            ],
        )
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin/configuration/pools?notice=created"),
        "{}",
        a.body
    );
    let a = c
        .post(&new_pool, &[("name", "Spare"), ("match_all", "on")])
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let pools = api_list(&server, "pools").await;
    let lab = named(&pools, "Lab").expect("Lab saved");
    assert_eq!(
        lab["rules"],
        json!([
            {"attribute": "name", "condition": "begins_with", "value": "lab-"},
            {"attribute": {"metadata": "dept"}, "condition": "equals", "value": "eng"},
        ])
    );
    assert_eq!(lab["match_all"], false);
    let lab = lab["id"].as_str().expect("id").to_string();
    let spare = named(&pools, "Spare").expect("Spare saved")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Shown again, each rule is its row.
    let page = c.get(&format!("{POOLS}/{lab}")).await;
    assert!(chosen(&page.body, "rules[1].attribute", "metadata"));
    assert!(
        page.body
            .contains("name=\"rules[1].metadata_key\" value=\"dept\"")
    );

    // A policy: rows added, removed and moved with the buttons; nothing is saved meanwhile.
    let new_policy = format!("{POLICIES}/new");
    let a = post_policy(&mut c, &new_policy, &[], &[("add_row", "entries")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        chosen(&a.body, "entries[0].pool_id", ""),
        "no pool chosen yet"
    );
    assert!(select_of(&a.body, "entries[0].pool_id").contains(">Spare</option>"));
    let rows = [entry(0, &lab, "1", true), entry(1, &spare, "2", false)];
    let a = post_policy(&mut c, &new_policy, &rows, &[("add_row", "entries")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("name=\"entries[2].pool_id\""), "{}", a.body);
    let three = [rows[0].clone(), rows[1].clone(), entry(2, "", "1", false)];
    let a = post_policy(&mut c, &new_policy, &three, &[("remove_row", "entries[2]")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.body.contains("name=\"entries[2]"), "{}", a.body);
    let a = post_policy(&mut c, &new_policy, &rows, &[("move_up", "entries[1]")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(chosen(&a.body, "entries[0].pool_id", &spare), "{}", a.body);
    assert!(chosen(&a.body, "entries[1].pool_id", &lab), "{}", a.body);
    assert!(
        a.body.contains("name=\"entries[0].offer\" value=\"2\""),
        "what was typed moves with its row"
    );
    assert!(
        a.body
            .contains("name=\"entries[1].running_only\" value=\"on\" checked"),
        "{}",
        a.body
    );
    assert!(named(&api_list(&server, "policies").await, "Staff").is_none());

    // A bad row: refused on its row and field, kept as typed, nothing saved.
    let bad = [entry(0, &spare, "2", false), entry(1, "nope", "0", true)];
    let a = post_policy(&mut c, &new_policy, &bad, &[]).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body
            .contains("data-field=\"entries[1].pool_id\">there is no pool `nope`<"),
        "{}",
        a.body
    );
    assert!(
        a.body
            .contains("data-field=\"entries[1].offer\">offer at least 1 desktop<"),
        "{}",
        a.body
    );
    assert!(
        a.body
            .contains("entries[1].pool_id: there is no pool `nope`"),
        "the message above the form names the row and field: {}",
        a.body
    );
    assert!(
        a.body
            .contains("<option value=\"nope\" selected>nope (missing)</option>")
    );
    assert!(a.body.contains("name=\"entries[1].offer\" value=\"0\""));
    let typo = [entry(0, &spare, "2", false), entry(1, &lab, "lots", false)];
    let a = post_policy(&mut c, &new_policy, &typo, &[]).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body
            .contains("data-field=\"entries[1].offer\">`lots` is not a whole number<"),
        "{}",
        a.body
    );
    assert!(named(&api_list(&server, "policies").await, "Staff").is_none());

    // Saved in the order shown.
    let moved = [entry(0, &spare, "2", false), entry(1, &lab, "1", true)];
    let a = post_policy(&mut c, &new_policy, &moved, &[]).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin/configuration/policies?notice=created"),
        "{}",
        a.body
    );
    let policies = api_list(&server, "policies").await;
    let staff = named(&policies, "Staff").expect("saved");
    let pools_of = |p: &Value| -> Vec<String> {
        p["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["pool_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(pools_of(staff), [spare.clone(), lab.clone()]);
    assert_eq!(staff["entries"][0]["offer"], 2);
    assert_eq!(staff["entries"][1]["running_only"], true);
    let id = staff["id"].as_str().expect("id").to_string();

    // Editing: the stored rows come back; moving one is saved only with Save.
    let edit = format!("{POLICIES}/{id}");
    let page = c.get(&edit).await;
    assert!(
        chosen(&page.body, "entries[0].pool_id", &spare),
        "{}",
        page.body
    );
    let a = post_policy(&mut c, &edit, &moved, &[("move_down", "entries[0]")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(chosen(&a.body, "entries[0].pool_id", &lab));
    let stored = api_list(&server, "policies").await;
    assert_eq!(
        pools_of(named(&stored, "Staff").expect("kept")),
        [spare.clone(), lab.clone()]
    );
    let swapped = [entry(0, &lab, "1", true), entry(1, &spare, "2", false)];
    let a = post_policy(&mut c, &edit, &swapped, &[]).await;
    assert_eq!(a.status, 303, "{}", a.body);
    let stored = api_list(&server, "policies").await;
    assert_eq!(
        pools_of(named(&stored, "Staff").expect("kept")),
        [lab, spare]
    );

    // A protocol plan: one row per protocol, connection file lines in a textarea.
    let a = c
        .post(
            &format!("{PROTOCOL_PLANS}/new"),
            &[
                ("name", "Thin"),
                ("protocols[0]", ""),
                ("protocols[0].protocol", "rdp"),
                ("protocols[0].priority", "1"),
                (
                    "protocols[0].file_lines",
                    "audiomode:i:2\r\nredirectclipboard:i:0\r\n",
                ),
                ("protocols[0].command_line", "/f"),
                ("protocols[0].via_gateway", "on"),
                ("protocols[0].gateway_method", "forwarded_port"),
                ("protocols[1]", ""),
                ("protocols[1].protocol", "vnc"),
                ("protocols[1].priority", "0"),
                ("protocols[1].file_lines", ""),
                ("protocols[1].command_line", ""),
            ],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let plans = api_list(&server, "protocol-plans").await;
    assert_eq!(
        named(&plans, "Thin").expect("saved")["protocols"],
        json!([
            {"protocol": "rdp", "priority": 1, "command_line": "/f", "via_gateway": true,
             "gateway_method": "forwarded_port",
             "file_lines": ["audiomode:i:2", "redirectclipboard:i:0"]},
            {"protocol": "vnc", "priority": 0, "command_line": "", "via_gateway": false,
             "gateway_method": "tunnel", "file_lines": []},
        ])
    );
}
