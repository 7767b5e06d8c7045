//! A real browser walks the console: Debian's chromium, driven by chromedriver through
//! fantoccini, signs in with the factory password, goes through the first-run wizard (a refused
//! weak password first), looks at the dashboard (and saves a screenshot of it to
//! `tests/artifacts/dashboard.png`), signs out, signs in with the new password and sees the
//! factory password refused. This module owns its chromedriver process group and the browser
//! session; it must not touch the server's data folder other than through the console.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const NEW_PASSWORD: &str = "Browser-Test-Pass-42!";

/// A free TCP port on 127.0.0.1 (bound, then released for chromedriver to take).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A running chromedriver in its own process group; the whole group (chromedriver and every
/// chromium process it started) is killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it says it listens and its `/status` says ready.
    async fn start() -> Self {
        let port = free_port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chromedriver starts (is chromium-driver installed? tests/run.sh installs it)");
        let stdout = child.stdout.take().expect("chromedriver stdout");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // chromedriver prints this line once its listening socket is open.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("chromedriver did not report that it started");
        driver.wait_ready().await;
        driver
    }

    /// Polls `GET /status` a bounded number of times until it answers `ready: true`.
    async fn wait_ready(&self) {
        common::install_crypto();
        let http = reqwest::Client::new();
        let mut last = String::new();
        for _ in 0..500 {
            match http.get(format!("{}/status", self.url)).send().await {
                Ok(resp) => {
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    if body["value"]["ready"] == json!(true) {
                        return;
                    }
                    last = body.to_string();
                }
                Err(e) => last = e.to_string(),
            }
            tokio::task::yield_now().await;
        }
        panic!("chromedriver never became ready: {last}");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // `process_group(0)` made the group id equal to chromedriver's pid.
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

/// Headless chromium that trusts the appliance's self-signed certificate and stays off the
/// network except for the console under test.
fn capabilities(profile: &std::path::Path) -> Capabilities {
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    match caps {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The page's URL and a piece of its HTML, for failure messages.
async fn where_am_i(c: &Client) -> String {
    let url = c
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    let source = c.source().await.unwrap_or_default();
    let cut: String = source.chars().take(4000).collect();
    format!("at {url}:\n{cut}")
}

/// The element for a CSS selector; the session's implicit wait lets it appear after a
/// navigation.
async fn find(c: &Client, css: &str) -> Element {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => panic!("no `{css}` ({e}) {}", where_am_i(c).await),
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.expect("element text")
}

async fn path(c: &Client) -> String {
    c.current_url()
        .await
        .expect("current url")
        .path()
        .to_string()
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let field = find(c, css).await;
    field.clear().await.expect("clear field");
    field.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.expect("click");
}

/// Fills the sign-in form and submits it.
async fn sign_in(c: &Client, user: &str, password: &str) {
    type_into(c, "#username", user).await;
    type_into(c, "#password", password).await;
    click(c, "#sign-in").await;
}

async fn sign_out(c: &Client) {
    click(c, "header form[action='/admin/logout'] button").await;
    // Only the sign-in page has the user name field.
    find(c, "#username").await;
    assert_eq!(path(c).await, "/admin/login", "{}", where_am_i(c).await);
}

/// Makes the window as tall as the page, then saves a PNG of it.
async fn full_page_screenshot(c: &Client, to: &PathBuf) {
    let height = c
        .execute(
            "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)",
            vec![],
        )
        .await
        .expect("page height")
        .as_u64()
        .expect("a number");
    let chrome = c
        .execute("return window.outerHeight - window.innerHeight", vec![])
        .await
        .expect("window chrome")
        .as_u64()
        .unwrap_or(0);
    let height = u32::try_from(height + chrome)
        .expect("sane height")
        .max(600);
    c.set_window_size(1280, height)
        .await
        .expect("resize window");
    let png = c.screenshot().await.expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG"
    );
    std::fs::create_dir_all(to.parent().expect("artifacts folder"))
        .expect("create artifacts folder");
    std::fs::write(to, &png).expect("write screenshot");
    println!(
        "dashboard screenshot: {} ({} bytes)",
        to.display(),
        png.len()
    );
}

/// The whole walk through the console, in a browser.
async fn walk(c: Client, base: String) {
    c.set_window_size(1280, 900).await.expect("window size");
    c.update_timeouts(TimeoutConfiguration::new(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(60)),
        Some(Duration::from_secs(15)),
    ))
    .await
    .expect("timeouts");

    // Not signed in: the console sends the browser to the sign-in page.
    c.goto(&format!("{base}/admin"))
        .await
        .expect("open the console");
    find(&c, "#username").await;
    assert!(
        c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("/admin/login"),
        "{}",
        where_am_i(&c).await
    );

    // The factory password opens the wizard at step 1.
    sign_in(&c, "admin", "leo").await;
    find(&c, "#new-password").await;
    assert_eq!(path(&c).await, "/admin/wizard", "{}", where_am_i(&c).await);

    // A weak password is refused, with the reason shown.
    type_into(&c, "#new-password", "short").await;
    type_into(&c, "#confirm-password", "short").await;
    click(&c, "#save-password").await;
    let error = text_of(&c, "#error").await;
    assert!(
        error.contains("at least") && error.contains("characters"),
        "the refusal explains the length rule: {error:?}"
    );
    // Still on step 1.
    find(&c, "#new-password").await;

    type_into(&c, "#new-password", NEW_PASSWORD).await;
    type_into(&c, "#confirm-password", NEW_PASSWORD).await;
    click(&c, "#save-password").await;

    // Step 2: the licence; take the evaluation.
    let agree = find(&c, "#agree").await;
    agree.click().await.expect("tick the agreement");
    assert!(
        agree.is_selected().await.expect("checkbox state"),
        "the agreement is ticked"
    );
    click(&c, "#evaluate").await;

    // Step 3: keep the self-signed certificate.
    click(&c, "#keep-certificate").await;

    // Step 4: done.
    click(&c, "#finish").await;

    // The dashboard.
    find(&c, "#dashboard-facts").await;
    assert_eq!(path(&c).await, "/admin", "{}", where_am_i(&c).await);
    assert!(
        c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("/admin"),
        "{}",
        where_am_i(&c).await
    );
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.contains("admin"), "signed in as admin: {who:?}");
    let banner = text_of(&c, "#licence-banner").await;
    assert!(
        banner.contains("Evaluation"),
        "the evaluation banner: {banner:?}"
    );
    let facts = text_of(&c, "#dashboard-facts").await;
    assert!(!facts.trim().is_empty(), "the dashboard lists some facts");

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/dashboard.png");
    full_page_screenshot(&c, &shot).await;
    c.set_window_size(1280, 900).await.expect("window size");

    // Sign out, and back in with the new password.
    sign_out(&c).await;
    sign_in(&c, "admin", NEW_PASSWORD).await;
    find(&c, "#dashboard-facts").await;
    assert_eq!(path(&c).await, "/admin", "{}", where_am_i(&c).await);
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.contains("admin"), "signed in as admin again: {who:?}");

    // The factory password no longer opens the console.
    sign_out(&c).await;
    sign_in(&c, "admin", "leo").await;
    let error = text_of(&c, "#error").await;
    assert!(!error.trim().is_empty(), "the refusal is shown");
    assert_eq!(path(&c).await, "/admin/login", "{}", where_am_i(&c).await);
    assert!(
        c.find(Locator::Css("#signed-in-as")).await.is_err(),
        "not signed in after the factory password: {}",
        where_am_i(&c).await
    );
}

#[tokio::test]
async fn console_in_a_real_browser() {
    let (_dir, data) = common::fresh_data();
    let server = common::Server::start(&data, None);

    let health = common::client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200, "/healthz answers");

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities(profile.path()))
        .connect(&driver.url)
        .await
        .expect("a chromium session");

    // The walk runs as its own task so that a failed assertion still lets the session close
    // (and chromium exit) before the panic is passed on; `driver` kills what is left on drop.
    let outcome = tokio::spawn(walk(client.clone(), server.base.clone())).await;
    let closed = client.close().await;
    if let Err(e) = outcome {
        eprintln!("server log:\n{}", server.logs());
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the browser walk did not finish: {e}"),
        }
    }
    closed.expect("close the browser session");
    drop(driver);
}
